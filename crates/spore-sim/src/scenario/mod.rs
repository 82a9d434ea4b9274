//! Scenarios: a network, a timeline and the metrics to collect, written as a TOML file and run
//! by [`run`].
//!
//! A scenario builds a network of `nodes` spore nodes that join one after another through a few
//! bootstrap nodes, lets it settle, then runs a measured phase of `duration` in which any of
//! these workloads and events happen together:
//!
//! - `[lookups]`: random-key lookups from random online nodes, spread evenly over `over`; each
//!   is checked against the true closest nodes, computed from the simulator's global view.
//! - `[values]`: values put at the start, then read back every `get_every` by random nodes.
//! - `[churn]`: every non-bootstrap node alternates exponentially distributed sessions and
//!   downtimes; it rejoins with its stored records and remembered peers.
//! - `[partition]`: a split into two groups at `at` for `duration`, then a merge; probes across
//!   the split measure when the halves find each other again.
//! - `[pubsub]`: honest nodes subscribe to a topic as they join; random subscribers publish
//!   messages at a steady rate, optionally while a share of the network crashes; every
//!   delivery is traced to its hop count and latency.
//! - `[swarm]`: seeders serve one blob and leechers of several bandwidth classes fetch it,
//!   some of them free riders that never upload; each leecher's completion time is measured,
//!   contributors against free riders.
//! - `[superpeers]`: which public nodes may serve as super-peers, and removals of a share of
//!   those serving at once; the share of leaves holding their super-peers is sampled, and how
//!   long it takes to recover after each removal.
//! - `[adversary]`: an eclipse attack by Sybils from one /16, record poisoners, message
//!   droppers or free riders, and for pub/sub gossip droppers and spammers, each running the
//!   real node code behind a rewriting filter.
//! - `[[variants]]` run the same scenario again with other node settings (e.g. defences off),
//!   other adversaries or a pub/sub crash; `sizes` runs it at several network sizes.
//! - `[[expect]]` states bounds on the results; [`Report::checks`] says which hold.
//!
//! Every random choice comes from `seed`, so a scenario file and a seed give one run and one
//! [trace hash](crate::Sim::trace_hash). The shipped scenarios in `scenarios/` are examples of
//! every section; `docs/simulator.md` describes the format field by field.

mod adversary;
mod draw;
mod format;
mod pubsub;
mod report;
mod run;
mod superpeer;
mod swarm;
mod truth;

pub use format::{
    AdversaryRole, AdversarySpec, BandwidthClass, ByteSize, ChurnSpec, CrashSpec, Dur, Expect,
    JoinSpec, LatencySpec, LookupSpec, NatMix, NetworkSpec, NodeSettings, PartitionSpec,
    PubSubSpec, Rate, RemovalSpec, Scenario, ScenarioError, SpamKind, SuperPeerSpec, SwarmSpec,
    ValueSpec, Variant,
};
pub use report::{Check, LeecherResult, Report, RunReport, Sample};
pub use run::{Progress, run};

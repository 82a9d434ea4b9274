//! # spore-sim
//!
//! A deterministic discrete-event simulator that drives the *same* [`spore_core::Node`]s as the
//! runtime, over a modelled network, in virtual time.
//!
//! A [`Sim`] holds N nodes, a clock and a queue of pending events — connections opening and
//! closing, frames arriving, node timers — ordered by (time, sequence number), so that events
//! due at the same instant run in the order they were scheduled. Processing an event feeds one
//! node one input, then drives it by spore-core's contract: drain `poll_transmit` (each message
//! is encoded with the real wire code, handed to the network model and scheduled for delivery,
//! where it is decoded again), drain `poll_event` (an [`Event::Close`](spore_core::node::Event)
//! closes the connection on both sides), and reschedule the node's one timer from
//! `poll_timeout`.
//!
//! Everything random comes from [`SimConfig::seed`]: node keys and node RNG seeds from one
//! ChaCha20 stream, the network's latency and loss draws from another. Nothing reads a clock
//! or iterates a hash map to make a decision, so a seed and a sequence of commands give one
//! run, bit for bit. [`Sim::trace_hash`] checks it: a BLAKE3 digest over every processed event
//! (its time, the nodes involved, its kind and, for a delivery, the encoded frame).
//!
//! ## Example
//!
//! ```
//! use std::time::Duration;
//! use spore_sim::{Latency, NetworkConfig, NodeIndex, Sim, SimConfig};
//!
//! # fn main() -> Result<(), spore_sim::SimError> {
//! let config = SimConfig {
//!     seed: 7,
//!     nodes: 3,
//!     network: NetworkConfig {
//!         latency: Latency::Fixed(Duration::from_millis(20)),
//!         ..NetworkConfig::default()
//!     },
//!     ..SimConfig::default()
//! };
//! let mut sim = Sim::new(config.clone())?;
//! let (a, b, c) = (NodeIndex(0), NodeIndex(1), NodeIndex(2));
//! sim.connect(a, b)?;
//! sim.connect(b, c)?;
//! sim.run_for(Duration::from_secs(1));
//!
//! // Both handshakes completed, and ping has measured each round trip.
//! let view = sim.node(a).peer(&sim.peer_id(b)).expect("connected");
//! assert!(view.ready);
//! assert_eq!(view.rtt, Some(Duration::from_millis(40)));
//! assert_eq!(sim.event_counts(b).peer_ready, 2);
//!
//! // The same seed and the same commands replay the same run.
//! let mut again = Sim::new(config)?;
//! again.connect(a, b)?;
//! again.connect(b, c)?;
//! again.run_for(Duration::from_secs(1));
//! assert_eq!(again.trace_hash(), sim.trace_hash());
//! # Ok(())
//! # }
//! ```
//!
//! ## The network model
//!
//! Version 1 ([`NetworkConfig`]): each connection's one-way latency is drawn from a
//! distribution when it opens; each message adds jitter and may be lost; messages on one
//! connection stay in order. Node `i` lives at a unique public-looking address on port 4000 ([`node_addr`]), which is also
//! the address its peers observe. Connections are opened and closed by the caller
//! ([`Sim::connect`], [`Sim::disconnect`]) or closed by a node.
//!
//! What later versions add — churn, NAT types, bandwidth, partitions, adversaries, scenario
//! files and plots — plugs in at the same places: the [`NetworkConfig`] and its per-message
//! decision, the address a peer is observed at, and commands issued between calls to
//! [`Sim::run_until`].

pub mod blobs;
mod config;
mod metrics;
mod network;
pub mod plot;
mod queue;
pub mod scenario;
mod sim;
mod trace;

pub use config::{Bandwidth, Latency, NatType, NetworkConfig, NodeSpec, SimConfig};
pub use metrics::{EventCounts, EventLog, Metrics};
pub use network::{SIM_PORT, node_addr};
pub use sim::{
    MAX_NODES, NodeIndex, PubSubObservation, QueryOutcome, Sim, SimError, SwarmObservation, Tamper,
};

#[cfg(test)]
mod tests;

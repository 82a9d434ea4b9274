//! The engine: nodes, virtual time, the event queue and the loop that drives them.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use spore_core::identity::{Keypair, PeerId};
use spore_core::kad;
use spore_core::node::{ConnectionEvent, Direction, Event, Node, Transmit};
use spore_core::pow::{Stamp, StampError};
use spore_core::pubsub::{self, MessageId, SignedMessage};
use spore_core::swarm;
use spore_core::time::Instant;
use spore_core::wire::{Message, encode_frame};

use crate::config::{NatType, NodeSpec, SimConfig};
use crate::metrics::{EventCounts, EventLog, Metrics};
use crate::network::{LinkState, Lost, Network, Refusal, node_addr, private_addr};
use crate::queue::{Pending, Queue};
use crate::trace::{Tag, Trace};

/// Most nodes one simulation can hold (each needs a distinct simulated address).
pub const MAX_NODES: usize = (1 << 24) - 1;

/// ChaCha20 stream of the simulation seed from which node keys and node RNG seeds are drawn.
const IDENTITY_STREAM: u64 = 1;
/// ChaCha20 stream of the simulation seed from which the network model draws.
const NETWORK_STREAM: u64 = 2;
/// ChaCha20 stream from which restarted nodes draw their new RNG seeds.
const RESTART_STREAM: u64 = 3;
/// How long a dial to an address where no node listens takes to fail (a handshake timeout).
const DIAL_FAILURE_DELAY: Duration = Duration::from_secs(3);
/// How many remembered peers a restarted node dials to rejoin (the runtime's `rejoin_peers`).
const REJOIN_PEERS: usize = 8;

/// A node's position in the simulation, from 0 in creation order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeIndex(pub u32);

impl NodeIndex {
    /// The index as a `usize`, for indexing slices.
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

impl fmt::Display for NodeIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// Why the simulator refused a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SimError {
    /// The configuration is inconsistent.
    #[error("invalid simulation config: {0}")]
    InvalidConfig(String),
    /// There is no node with this index.
    #[error("no node {0} in the simulation")]
    UnknownNode(NodeIndex),
    /// A node was asked to connect to itself.
    #[error("node {0} cannot connect to itself")]
    SelfConnection(NodeIndex),
    /// The two nodes already have a connection (open or opening).
    #[error("nodes {0} and {1} are already connected")]
    AlreadyConnected(NodeIndex, NodeIndex),
    /// The network does not let the first node open a connection to the second: it is offline,
    /// behind a NAT, or across a partition.
    #[error("node {0} cannot reach node {1}: {2}")]
    Unreachable(NodeIndex, NodeIndex, &'static str),
    /// The simulation is full.
    #[error("a simulation holds at most {MAX_NODES} nodes")]
    TooManyNodes,
    /// A node could not be created.
    #[error("node {index} could not be created: {source}")]
    Node {
        /// The node that was being created.
        index: NodeIndex,
        /// Why.
        source: StampError,
    },
}

struct Slot {
    node: Node,
    /// Whether the node is running; an offline node keeps its last state, untouched.
    online: bool,
    /// What a restart needs besides the node's own configuration: identity, stamp, kept peers.
    key: Keypair,
    stamp: Stamp,
    kept: Vec<NodeIndex>,
    /// When the node wants its next `handle_timeout`.
    timer: Option<Instant>,
    /// The one queue entry that stands for this node's timer: its time and generation. Entries
    /// with another generation are stale and skipped. While it is due no later than `timer`, a
    /// later wish needs no new entry: when it fires early it is pushed on to `timer`. So a node
    /// whose wake-up keeps moving later (the usual case) leaves no trail of stale entries.
    queued: Option<(Instant, u64)>,
    counts: EventCounts,
    log: EventLog,
    /// Rewrites (or drops) what this node sends: an adversary.
    tamper: Option<Tamper>,
}

impl fmt::Debug for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Slot")
            .field("node", &self.node)
            .field("timer", &self.timer)
            .field("adversary", &self.tamper.is_some())
            .finish_non_exhaustive()
    }
}

/// Rewrites a message a node is about to send; returning `false` drops it. This is how
/// adversaries are modelled — a record poisoner rewrites answers, a message dropper drops them —
/// while the node itself still runs the real protocol code.
pub type Tamper = Box<dyn FnMut(PeerId, &mut Message) -> bool + Send>;

/// A deterministic simulation of spore nodes on a modelled network. See the [crate
/// docs](crate) for a tour.
pub struct Sim {
    config: SimConfig,
    now: Instant,
    slots: Vec<Slot>,
    by_id: HashMap<PeerId, NodeIndex>,
    identities: ChaCha20Rng,
    restarts: ChaCha20Rng,
    network: Network,
    queue: Queue,
    trace: Trace,
    metrics: Metrics,
    partition_generation: u64,
    next_timer_generation: u64,
    in_flight: usize,
    scratch_transmits: Vec<Transmit>,
    scratch_events: Vec<Event>,
    query_results: Vec<QueryOutcome>,
    pubsub: Vec<PubSubObservation>,
    swarm: Vec<SwarmObservation>,
}

/// Something a node's swarm reported, kept when [`SimConfig::collect_swarm`] is set (progress
/// comes at most once per swarm tick, a second by default).
#[derive(Debug, Clone)]
pub struct SwarmObservation {
    /// The node.
    pub node: NodeIndex,
    /// When.
    pub at: Instant,
    /// What.
    pub event: swarm::Event,
}

/// What pub/sub did at one node, kept when [`SimConfig::collect_pubsub`] is set.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum PubSubObservation {
    /// A publish frame arrived at `node` (before any check: duplicates, forgeries and frames the
    /// node will drop included).
    Frame {
        /// The receiving node.
        node: NodeIndex,
        /// The sending node.
        from: NodeIndex,
        /// When it arrived.
        at: Instant,
        /// The message as it arrived.
        message: SignedMessage,
    },
    /// `node`'s application got a message ([`pubsub::Event::Message`]).
    Delivered {
        /// The node.
        node: NodeIndex,
        /// When.
        at: Instant,
        /// The message's id.
        id: MessageId,
        /// The peer it arrived from.
        from: PeerId,
        /// Its payload.
        data: bytes::Bytes,
    },
}

/// A DHT query that finished, kept when [`SimConfig::collect_queries`] is set.
#[derive(Debug, Clone)]
pub struct QueryOutcome {
    /// The node that ran it.
    pub node: NodeIndex,
    /// When it finished.
    pub at: Instant,
    /// Its id at that node.
    pub id: kad::QueryId,
    /// What it found.
    pub result: kad::QueryResult,
    /// How it went.
    pub stats: kad::QueryStats,
}

impl fmt::Debug for Sim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sim")
            .field("now", &self.now)
            .field("nodes", &self.slots.len())
            .field("queued", &self.queue.len())
            .finish_non_exhaustive()
    }
}

fn rng_stream(seed: u64, stream: u64) -> ChaCha20Rng {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    rng.set_stream(stream);
    rng
}

impl Sim {
    /// A simulation at time zero with `config.nodes` nodes and no connections.
    pub fn new(config: SimConfig) -> Result<Sim, SimError> {
        config.validate()?;
        let network = Network::new(
            config.network.clone(),
            rng_stream(config.seed, NETWORK_STREAM),
        );
        let mut sim = Sim {
            identities: rng_stream(config.seed, IDENTITY_STREAM),
            restarts: rng_stream(config.seed, RESTART_STREAM),
            network,
            now: Instant::ZERO,
            slots: Vec::with_capacity(config.nodes),
            by_id: HashMap::with_capacity(config.nodes),
            queue: Queue::default(),
            trace: Trace::default(),
            metrics: Metrics::default(),
            partition_generation: 0,
            next_timer_generation: 0,
            in_flight: 0,
            scratch_transmits: Vec::new(),
            scratch_events: Vec::new(),
            query_results: Vec::new(),
            pubsub: Vec::new(),
            swarm: Vec::new(),
            config,
        };
        for _ in 0..sim.config.nodes {
            sim.add_node()?;
        }
        Ok(sim)
    }

    /// Makes room for `additional` more nodes at once, so that growing to a large network does
    /// not copy every node each time the node table doubles (and keep up to twice its size).
    pub fn reserve_nodes(&mut self, additional: usize) {
        let additional = additional.min(MAX_NODES.saturating_sub(self.slots.len()));
        self.slots.reserve_exact(additional);
        self.by_id.reserve(additional);
        self.network.reserve_hosts(additional);
    }

    /// Adds a public node with the default configuration, created now. Its secret key and RNG
    /// seed are the next 64 bytes of the seed's identity stream, so node `i` of a seed is always
    /// the same node.
    pub fn add_node(&mut self) -> Result<NodeIndex, SimError> {
        self.add_node_with(NodeSpec::default())
    }

    /// Adds a node made to `spec`, created now and online.
    pub fn add_node_with(&mut self, spec: NodeSpec) -> Result<NodeIndex, SimError> {
        if self.slots.len() >= MAX_NODES {
            return Err(SimError::TooManyNodes);
        }
        let index = NodeIndex(u32::try_from(self.slots.len()).map_err(|_| SimError::TooManyNodes)?);
        let mut secret = [0u8; 32];
        let mut rng_seed = [0u8; 32];
        self.identities.fill_bytes(&mut secret);
        self.identities.fill_bytes(&mut rng_seed);
        let key = spec
            .keypair
            .unwrap_or_else(|| Keypair::from_secret_bytes(secret));
        let id = key.peer_id();
        let mut config = spec.config.unwrap_or_else(|| self.config.node.clone());
        let stamp = Stamp::mint(&id, config.difficulty);
        let addr = spec.addr.unwrap_or_else(|| node_addr(index));
        // A node behind a NAT announces the only address it knows: its private one.
        config.listen_addrs = vec![match spec.nat {
            NatType::Public => addr,
            _ => private_addr(index),
        }];
        let node = Node::new(key.clone(), stamp, config, rng_seed, self.now)
            .map_err(|source| SimError::Node { index, source })?;
        let region_draw = u64::from_le_bytes(rng_seed[..8].try_into().unwrap_or_default());
        self.network
            .add_host(addr, spec.nat, spec.bandwidth, region_draw);
        // Two equal keys out of a CSPRNG do not happen; if they did, the later node would be
        // unreachable by id, which the index map makes visible rather than silent.
        self.by_id.entry(id).or_insert(index);
        self.slots.push(Slot {
            node,
            online: true,
            key,
            stamp,
            kept: Vec::new(),
            timer: None,
            queued: None,
            counts: EventCounts::default(),
            log: EventLog::new(self.config.event_log),
            tamper: None,
        });
        self.reschedule(index, false);
        Ok(index)
    }

    // --- Getters ---

    /// The current virtual time.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// The configuration the simulation was built with.
    pub fn config(&self) -> &SimConfig {
        &self.config
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether there are no nodes.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Every node's index, in order.
    pub fn indices(&self) -> impl Iterator<Item = NodeIndex> + use<> {
        // `MAX_NODES` fits in a u32, so the cast is lossless.
        (0..self.slots.len() as u32).map(NodeIndex)
    }

    /// Node `i`, to inspect. Inputs go through [`command`](Self::command), which drains the
    /// node's outputs afterwards as the driving contract requires.
    ///
    /// # Panics
    /// If there is no node `i`.
    pub fn node(&self, i: NodeIndex) -> &Node {
        &self.slots[i.index()].node
    }

    /// Node `i`'s identity.
    ///
    /// # Panics
    /// If there is no node `i`.
    pub fn peer_id(&self, i: NodeIndex) -> PeerId {
        self.node(i).peer_id()
    }

    /// The node with identity `id`.
    pub fn index_of(&self, id: &PeerId) -> Option<NodeIndex> {
        self.by_id.get(id).copied()
    }

    /// Node `i`'s public address: where it listens, or its NAT's address (see [`node_addr`]).
    ///
    /// # Panics
    /// If there is no node `i`.
    pub fn addr(&self, i: NodeIndex) -> SocketAddr {
        self.network.host(i).addr
    }

    /// How node `i` is attached.
    ///
    /// # Panics
    /// If there is no node `i`.
    pub fn nat(&self, i: NodeIndex) -> NatType {
        self.network.host(i).nat
    }

    /// Whether node `i` is running.
    ///
    /// # Panics
    /// If there is no node `i`.
    pub fn is_online(&self, i: NodeIndex) -> bool {
        self.slots[i.index()].online
    }

    /// Number of nodes running.
    pub fn online_count(&self) -> usize {
        self.slots.iter().filter(|s| s.online).count()
    }

    /// Node `i`'s partition group (0 unless [`partition`](Self::partition) moved it).
    ///
    /// # Panics
    /// If there is no node `i`.
    pub fn group(&self, i: NodeIndex) -> u16 {
        self.network.host(i).group
    }

    /// Number of connections (open or opening) node `i` has.
    ///
    /// # Panics
    /// If there is no node `i`.
    pub fn degree(&self, i: NodeIndex) -> usize {
        self.network.host(i).links.len()
    }

    /// Counts of the events node `i` has reported.
    ///
    /// # Panics
    /// If there is no node `i`.
    pub fn event_counts(&self, i: NodeIndex) -> &EventCounts {
        &self.slots[i.index()].counts
    }

    /// Node `i`'s most recent events (empty unless [`SimConfig::event_log`] is set).
    ///
    /// # Panics
    /// If there is no node `i`.
    pub fn event_log(&self, i: NodeIndex) -> &EventLog {
        &self.slots[i.index()].log
    }

    /// The DHT queries that finished since the last call, in order (empty unless
    /// [`SimConfig::collect_queries`] is set).
    pub fn take_query_results(&mut self) -> Vec<QueryOutcome> {
        std::mem::take(&mut self.query_results)
    }

    /// What pub/sub did since the last call, in order (empty unless
    /// [`SimConfig::collect_pubsub`] is set).
    pub fn take_pubsub(&mut self) -> Vec<PubSubObservation> {
        std::mem::take(&mut self.pubsub)
    }

    /// What the nodes' swarms reported since the last call, in order (empty unless
    /// [`SimConfig::collect_swarm`] is set).
    pub fn take_swarm(&mut self) -> Vec<SwarmObservation> {
        std::mem::take(&mut self.swarm)
    }

    /// Network-wide counters.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// BLAKE3 digest of every event processed so far, in order (see the [crate docs](crate)).
    /// Two runs with the same seed and the same inputs have the same hash.
    pub fn trace_hash(&self) -> [u8; 32] {
        self.trace.hash()
    }

    /// Whether `a` and `b` have an established connection.
    pub fn is_connected(&self, a: NodeIndex, b: NodeIndex) -> bool {
        self.network
            .link(a, b)
            .is_some_and(|l| l.state == LinkState::Up)
    }

    /// The one-way latency of the connection between `a` and `b`, open or opening.
    pub fn link_latency(&self, a: NodeIndex, b: NodeIndex) -> Option<Duration> {
        self.network.link(a, b).map(|l| l.latency)
    }

    /// Established connections as `(dialer, listener)`, ordered by node indices.
    pub fn connections(&self) -> impl Iterator<Item = (NodeIndex, NodeIndex)> + '_ {
        self.network
            .links()
            .filter(|(_, l)| l.state == LinkState::Up)
            .map(|(&(lo, hi), l)| if l.dialer == lo { (lo, hi) } else { (hi, lo) })
    }

    /// Messages sent and neither delivered, dropped nor lost yet.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Entries in the event queue, superseded timers that have not come due included.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// When the next queued event is due (possibly a stale timer, which does nothing).
    pub fn next_event_time(&self) -> Option<Instant> {
        self.queue.peek_time()
    }

    // --- Commands ---

    /// Makes node `i` an adversary: everything it sends passes through `tamper` first.
    ///
    /// # Panics
    /// If there is no node `i`.
    pub fn set_tamper(&mut self, i: NodeIndex, tamper: Tamper) {
        self.slots[i.index()].tamper = Some(tamper);
    }

    /// Makes node `from` send `message` to `to` over their connection, as if its own code had
    /// sent it: for adversaries that send what the protocol never would (forged or unwanted
    /// messages). The node's [tamper](Self::set_tamper) does not see it. Returns false if the two
    /// have no established connection or `from` is offline. Part of the trace, like a command.
    ///
    /// # Panics
    /// If there is no node `from` or `to`.
    pub fn inject(&mut self, from: NodeIndex, to: NodeIndex, message: Message) -> bool {
        if !self.is_online(from) || !self.is_connected(from, to) {
            return false;
        }
        self.trace
            .record(Tag::Command, self.now, from, Some(to), &[]);
        let t = Transmit {
            to: self.peer_id(to),
            message,
        };
        self.transmit(from, t);
        true
    }

    /// Opens a connection from `dialer` to `listener`, as the runtime does when told to dial.
    /// After one latency both get [`ConnectionEvent::Connected`], the dialer first. Refused if
    /// either is offline, or the network model does not let `dialer` reach `listener`.
    pub fn connect(&mut self, dialer: NodeIndex, listener: NodeIndex) -> Result<(), SimError> {
        self.check(dialer)?;
        self.check(listener)?;
        if dialer == listener {
            return Err(SimError::SelfConnection(dialer));
        }
        if !self.is_online(dialer) || !self.is_online(listener) {
            return Err(SimError::Unreachable(dialer, listener, "offline"));
        }
        match self.network.can_dial(dialer, listener) {
            Ok(()) => {}
            Err(Refusal::Nat) => {
                self.metrics.dials_refused_nat += 1;
                return Err(SimError::Unreachable(dialer, listener, "NAT"));
            }
            Err(Refusal::Partition) => {
                return Err(SimError::Unreachable(dialer, listener, "partition"));
            }
        }
        let now = self.now;
        let link = self
            .network
            .open(dialer, listener, now)
            .ok_or(SimError::AlreadyConnected(dialer, listener))?;
        let (conn, latency) = (link.conn, link.latency);
        let open = self.network.link_count() as u64;
        self.metrics.connections_peak = self.metrics.connections_peak.max(open);
        let pending = Pending::LinkUp {
            conn,
            a: dialer,
            b: listener,
        };
        self.queue.push(now + latency, pending);
        Ok(())
    }

    /// Closes the connection between `a` and `b`, if there is one: `a` learns of it now, `b`
    /// one latency later, and messages in flight are dropped. Returns whether there was one.
    pub fn disconnect(&mut self, a: NodeIndex, b: NodeIndex) -> bool {
        let Some(link) = self.network.close(a, b) else {
            return false;
        };
        if link.state == LinkState::Up {
            self.metrics.connections_closed += 1;
            self.queue
                .push(self.now, Pending::Closed { node: a, peer: b });
            self.queue.push(
                self.now + link.latency,
                Pending::Closed { node: b, peer: a },
            );
        }
        true
    }

    /// Makes node `i` keep a connection to node `peer` ([`Node::keep_connected`]), now and after
    /// every restart, as a node keeps its configured bootstrap peers.
    pub fn keep(&mut self, i: NodeIndex, peer: NodeIndex) -> Result<(), SimError> {
        self.check(i)?;
        self.check(peer)?;
        if i == peer {
            return Err(SimError::SelfConnection(i));
        }
        self.slots[i.index()].kept.push(peer);
        if self.is_online(i) {
            let (id, addr) = (self.peer_id(peer), self.addr(peer));
            let _ = self.command(i, |n, now| n.keep_connected(now, id, vec![addr]));
        }
        Ok(())
    }

    /// Takes node `i` offline. A `crash` is silent: its peers notice when the connection's idle
    /// timeout expires. Otherwise it closes its connections, and peers learn of it one latency
    /// later. The node's state stays as it was, for inspection and for [`restart`](Self::restart).
    /// Returns false if it was already offline.
    pub fn stop(&mut self, i: NodeIndex, crash: bool) -> bool {
        if !self.slots.get(i.index()).is_some_and(|s| s.online) {
            return false;
        }
        self.trace
            .record(Tag::Offline, self.now, i, None, &[u8::from(crash)]);
        self.metrics.departures += 1;
        let slot = &mut self.slots[i.index()];
        slot.online = false;
        slot.timer = None;
        slot.queued = None;
        let peers = self.network.host(i).links.clone();
        let notice = self.network.config().idle_timeout;
        for j in peers {
            if let Some(link) = self.network.close(i, j)
                && link.state == LinkState::Up
            {
                self.metrics.connections_closed += 1;
                let at = self.now + if crash { notice } else { link.latency };
                self.queue.push(at, Pending::Closed { node: j, peer: i });
            }
        }
        true
    }

    /// Restarts node `i` as its process would restart: same identity and configuration, the DHT
    /// records it had stored, a fresh RNG, no connections. It then dials its kept peers and up
    /// to eight peers it remembers (its routing table when it stopped, most recently seen first)
    /// — what the runtime does with its peer book. Returns false if it was already online.
    pub fn restart(&mut self, i: NodeIndex) -> Result<bool, SimError> {
        self.check(i)?;
        if self.is_online(i) {
            return Ok(false);
        }
        self.trace.record(Tag::Online, self.now, i, None, &[]);
        self.metrics.arrivals += 1;
        let mut rng_seed = [0u8; 32];
        self.restarts.fill_bytes(&mut rng_seed);
        let now = self.now;
        let slot = &mut self.slots[i.index()];
        let mut remembered: Vec<_> = slot
            .node
            .kad()
            .table()
            .iter()
            .map(|e| (e.last_seen, e.contact.peer))
            .collect();
        remembered.sort_by(|a, b| b.cmp(a));
        let store = slot.node.take_store();
        slot.node = Node::with_store(
            slot.key.clone(),
            slot.stamp,
            slot.node.config().clone(),
            store,
            rng_seed,
            now,
        )
        .map_err(|source| SimError::Node { index: i, source })?;
        slot.online = true;
        let kept = slot.kept.clone();
        self.reschedule(i, false);
        for j in kept {
            let (id, addr) = (self.peer_id(j), self.addr(j));
            let _ = self.command(i, |n, now| n.keep_connected(now, id, vec![addr]));
        }
        let mut dialed = 0;
        for (_, peer) in remembered {
            if dialed == REJOIN_PEERS {
                break;
            }
            // A remembered peer that is gone is a dial that fails; it costs the node nothing.
            if let Some(j) = self.index_of(&peer) {
                dialed += 1;
                let _ = self.connect(i, j);
            }
        }
        Ok(true)
    }

    /// Splits the network: node `i` goes to group `group_of(i)`. Messages between groups are
    /// lost and connections between them cannot be opened; connections already open across
    /// the split close when their idle timeout expires, unless [`heal`](Self::heal) comes
    /// first.
    pub fn partition(&mut self, group_of: impl Fn(NodeIndex) -> u16) {
        self.partition_generation += 1;
        for i in self.indices() {
            let g = group_of(i);
            self.network.set_group(i, g);
        }
        self.trace.record(
            Tag::Partition,
            self.now,
            NodeIndex(0),
            None,
            &self.partition_generation.to_le_bytes(),
        );
        let at = self.now + self.network.config().idle_timeout;
        let generation = self.partition_generation;
        self.queue.push(at, Pending::PartitionCut { generation });
    }

    /// Ends a partition: every node is back in group 0.
    pub fn heal(&mut self) {
        self.partition(|_| 0);
    }

    /// Runs `f` on node `i` at the current time — a local command such as
    /// [`Node::ping`] — then drains its outputs. Commands are part of the trace. An offline
    /// node's state can be changed this way, but it sends nothing until it restarts.
    ///
    /// # Panics
    /// If there is no node `i`.
    pub fn command<R>(&mut self, i: NodeIndex, f: impl FnOnce(&mut Node, Instant) -> R) -> R {
        self.trace.record(Tag::Command, self.now, i, None, &[]);
        let now = self.now;
        let result = f(&mut self.slots[i.index()].node, now);
        self.drain(i, false);
        result
    }

    // --- Running ---

    /// Processes the next queued event, advancing time to it. Returns false if the queue is
    /// empty.
    pub fn step(&mut self) -> bool {
        let Some((at, pending)) = self.queue.pop() else {
            return false;
        };
        self.now = self.now.max(at);
        self.process(pending);
        true
    }

    /// Processes every event due at or before `end`, then sets the time to `end` (time never
    /// goes back: an `end` in the past only processes what is due now).
    pub fn run_until(&mut self, end: Instant) {
        while self.queue.peek_time().is_some_and(|t| t <= end) {
            self.step();
        }
        self.now = self.now.max(end);
    }

    /// Runs for `d` of virtual time.
    pub fn run_for(&mut self, d: Duration) {
        self.run_until(self.now + d);
    }

    // --- The loop's insides ---

    fn check(&self, i: NodeIndex) -> Result<(), SimError> {
        if i.index() < self.slots.len() {
            Ok(())
        } else {
            Err(SimError::UnknownNode(i))
        }
    }

    fn process(&mut self, pending: Pending) {
        let now = self.now;
        match pending {
            Pending::LinkUp { conn, a, b } => {
                if self.network.establish(a, b, conn).is_none() {
                    return; // closed while opening
                }
                self.metrics.events_processed += 1;
                self.metrics.connections_opened += 1;
                self.trace.record(Tag::LinkUp, now, a, Some(b), &[]);
                let (id_a, id_b) = (self.peer_id(a), self.peer_id(b));
                let (addr_a, addr_b) = (
                    self.network.observed_addr(a, conn),
                    self.network.observed_addr(b, conn),
                );
                self.input(a, false, |n| {
                    n.handle_connection_event(
                        now,
                        ConnectionEvent::Connected {
                            peer: id_b,
                            addr: addr_b,
                            direction: Direction::Outbound,
                        },
                    )
                });
                self.input(b, false, |n| {
                    n.handle_connection_event(
                        now,
                        ConnectionEvent::Connected {
                            peer: id_a,
                            addr: addr_a,
                            direction: Direction::Inbound,
                        },
                    )
                });
            }
            Pending::Deliver {
                conn,
                from,
                to,
                frame,
            } => {
                self.in_flight -= 1;
                self.metrics.events_processed += 1;
                if !self.network.is_up(from, to, conn) {
                    self.metrics.messages_unroutable += 1;
                    self.trace
                        .record(Tag::Unroutable, now, to, Some(from), &frame);
                    return;
                }
                self.metrics.messages_delivered += 1;
                self.metrics.bytes_delivered += frame.len() as u64;
                self.trace.record(Tag::Deliver, now, to, Some(from), &frame);
                match decode(&frame) {
                    Some(msg) => {
                        if self.config.collect_pubsub
                            && let Message::PubSub(pubsub::Message::Publish(m)) = &msg
                        {
                            self.pubsub.push(PubSubObservation::Frame {
                                node: to,
                                from,
                                at: now,
                                message: m.clone(),
                            });
                        }
                        let from_id = self.peer_id(from);
                        self.input(to, false, |n| n.handle_message(now, from_id, msg));
                    }
                    None => {
                        self.metrics.codec_errors += 1;
                        self.disconnect(to, from);
                    }
                }
            }
            Pending::Closed { node, peer } => {
                if !self.is_online(node) {
                    return; // nobody there to tell
                }
                // A newer connection between the two is up: this close is old news.
                if self.is_connected(node, peer) {
                    self.metrics.closes_superseded += 1;
                    return;
                }
                self.metrics.events_processed += 1;
                self.trace.record(Tag::Closed, now, node, Some(peer), &[]);
                let peer = self.peer_id(peer);
                self.input(node, false, |n| {
                    n.handle_connection_event(now, ConnectionEvent::Closed { peer })
                });
            }
            Pending::DialFailed { node, peer } => {
                if !self.is_online(node) {
                    return;
                }
                self.metrics.events_processed += 1;
                self.trace
                    .record(Tag::DialFailed, now, node, None, peer.as_bytes());
                self.input(node, false, |n| {
                    n.handle_connection_event(now, ConnectionEvent::DialFailed { peer })
                });
            }
            Pending::Timer { node, generation } => {
                let slot = &mut self.slots[node.index()];
                if slot.queued.map(|(_, g)| g) != Some(generation) {
                    return; // superseded
                }
                slot.queued = None;
                match slot.timer {
                    Some(t) if t <= now => {}
                    // Woken early: the node now wants a later time (or none).
                    Some(_) => return self.reschedule_entry(node),
                    None => return,
                }
                slot.timer = None;
                self.metrics.events_processed += 1;
                self.metrics.timers_fired += 1;
                self.trace.record(Tag::Timer, now, node, None, &[]);
                self.input(node, true, |n| n.handle_timeout(now));
            }
            Pending::PartitionCut { generation } => {
                if generation != self.partition_generation {
                    return; // the partition changed since
                }
                self.metrics.events_processed += 1;
                for (a, b) in self.network.links_across_groups() {
                    if self.disconnect(a, b) {
                        self.metrics.connections_cut += 1;
                    }
                }
            }
        }
    }

    /// Feeds node `i` one input, then drains it.
    fn input(&mut self, i: NodeIndex, is_timeout: bool, f: impl FnOnce(&mut Node)) {
        f(&mut self.slots[i.index()].node);
        self.drain(i, is_timeout);
    }

    /// The driving contract: after every input, take every transmit and event, then reschedule
    /// the node's timer from `poll_timeout`.
    fn drain(&mut self, i: NodeIndex, after_timeout: bool) {
        let mut transmits = std::mem::take(&mut self.scratch_transmits);
        let mut events = std::mem::take(&mut self.scratch_events);
        let node = &mut self.slots[i.index()].node;
        transmits.extend(std::iter::from_fn(|| node.poll_transmit()));
        events.extend(std::iter::from_fn(|| node.poll_event()));
        for t in transmits.drain(..) {
            self.send(i, t);
        }
        for e in events.drain(..) {
            self.observe(i, e);
        }
        self.scratch_transmits = transmits;
        self.scratch_events = events;
        self.reschedule(i, after_timeout);
    }

    fn send(&mut self, from: NodeIndex, mut t: Transmit) {
        if let Some(tamper) = &mut self.slots[from.index()].tamper
            && !tamper(t.to, &mut t.message)
        {
            self.metrics.messages_sent += 1;
            self.metrics.messages_dropped_by_adversary += 1;
            return;
        }
        self.transmit(from, t);
    }

    /// Encodes `t` and hands it to the network model.
    fn transmit(&mut self, from: NodeIndex, t: Transmit) {
        self.metrics.messages_sent += 1;
        let Ok(frame) = encode_frame(&t.message) else {
            self.metrics.codec_errors += 1;
            return;
        };
        self.metrics.bytes_sent += frame.len() as u64;
        if let Message::PubSub(m) = &t.message {
            self.metrics.pubsub_bytes_sent += frame.len() as u64;
            if matches!(m, pubsub::Message::Publish(_)) {
                self.metrics.pubsub_publish_frames_sent += 1;
                self.metrics.pubsub_publish_bytes_sent += frame.len() as u64;
            }
        }
        if let Message::Swarm(m) = &t.message {
            self.metrics.swarm_bytes_sent += frame.len() as u64;
            if matches!(m, swarm::Message::Data { .. }) {
                self.metrics.swarm_data_frames_sent += 1;
                self.metrics.swarm_data_bytes_sent += frame.len() as u64;
            }
        }
        let to = match self.index_of(&t.to) {
            Some(to) if self.is_connected(from, to) => to,
            _ => {
                self.metrics.messages_unroutable += 1;
                return;
            }
        };
        match self.network.transmit(from, to, frame.len(), self.now) {
            Ok((conn, at)) => {
                self.in_flight += 1;
                let deliver = Pending::Deliver {
                    conn,
                    from,
                    to,
                    frame,
                };
                self.queue.push(at, deliver);
            }
            Err(Lost::Random) => self.metrics.messages_lost += 1,
            Err(Lost::Partition) => self.metrics.messages_partitioned += 1,
            Err(Lost::NoLink) => self.metrics.messages_unroutable += 1,
        }
    }

    fn observe(&mut self, i: NodeIndex, event: Event) {
        self.metrics.events.count(&event);
        let slot = &mut self.slots[i.index()];
        slot.counts.count(&event);
        match &event {
            Event::Close { peer, .. } => {
                if let Some(j) = self.index_of(peer) {
                    self.disconnect(i, j);
                }
            }
            Event::Dial { peer, addrs } => {
                // Connect if some node has that id and the address is really its own; a dial
                // to a connection already opening is satisfied by it.
                let target = self
                    .index_of(peer)
                    .filter(|j| *j != i && addrs.contains(&self.addr(*j)));
                let ok = match target {
                    Some(j) => match self.connect(i, j) {
                        // A connection already open or opening satisfies the dial.
                        Ok(()) | Err(SimError::AlreadyConnected(..)) => true,
                        Err(_) => false,
                    },
                    None => false,
                };
                if !ok {
                    self.metrics.dials_failed += 1;
                    let at = self.now + DIAL_FAILURE_DELAY;
                    let failed = Pending::DialFailed {
                        node: i,
                        peer: *peer,
                    };
                    self.queue.push(at, failed);
                }
            }
            Event::Kad(kad::Event::QueryDone { id, result, stats })
                if self.config.collect_queries =>
            {
                self.query_results.push(QueryOutcome {
                    node: i,
                    at: self.now,
                    id: *id,
                    result: result.clone(),
                    stats: *stats,
                });
            }
            Event::PubSub(pubsub::Event::Message { id, from, data, .. })
                if self.config.collect_pubsub =>
            {
                self.pubsub.push(PubSubObservation::Delivered {
                    node: i,
                    at: self.now,
                    id: *id,
                    from: *from,
                    data: data.clone(),
                });
            }
            Event::Swarm(e) if self.config.collect_swarm => {
                self.swarm.push(SwarmObservation {
                    node: i,
                    at: self.now,
                    event: e.clone(),
                });
            }
            _ => {}
        }
        self.slots[i.index()].log.push(self.now, event);
    }

    fn reschedule(&mut self, i: NodeIndex, after_timeout: bool) {
        let now = self.now;
        let slot = &mut self.slots[i.index()];
        let mut want = slot.node.poll_timeout().map(|t| t.max(now));
        if after_timeout && want == Some(now) {
            // The node was just woken for `now` and wants `now` again: it would spin forever.
            want = Some(now + Duration::from_micros(1));
            self.metrics.timers_deferred += 1;
        }
        slot.timer = want;
        self.reschedule_entry(i);
    }

    /// Makes sure a queue entry will wake node `i` no later than its timer.
    fn reschedule_entry(&mut self, i: NodeIndex) {
        let slot = &mut self.slots[i.index()];
        let Some(t) = slot.timer else { return };
        if slot.queued.is_some_and(|(at, _)| at <= t) {
            return;
        }
        let generation = self.next_timer_generation;
        self.next_timer_generation += 1;
        slot.queued = Some((t, generation));
        self.queue.push(
            t,
            Pending::Timer {
                node: i,
                generation,
            },
        );
    }
}

/// Decodes one whole frame, as the runtime's stream decoder would.
fn decode(frame: &[u8]) -> Option<Message> {
    spore_core::wire::decode_frame(frame).ok()
}

//! The sans-IO [`Node`]: one identity, its connections' handshake state, and its sub-protocols.
//!
//! # The contract
//!
//! A driver (the runtime in `spore-net`, or the simulator) owns a `Node` and:
//!
//! 1. feeds it inputs, each stamped with the current [`Instant`]:
//!    [`handle_connection_event`](Node::handle_connection_event) when a connection opens or
//!    closes or a requested dial fails, [`handle_message`](Node::handle_message) for every
//!    message decoded from a peer,
//!    [`handle_timeout`](Node::handle_timeout) when [`poll_timeout`](Node::poll_timeout) is
//!    reached, and local commands such as [`ping`](Node::ping);
//! 2. after **every** input, drains [`poll_transmit`](Node::poll_transmit) (messages to send) and
//!    [`poll_event`](Node::poll_event) (what happened, including requests to dial a peer or close
//!    a connection), then asks [`poll_timeout`](Node::poll_timeout) for the next wake-up.
//!
//! The node never reads a clock or an OS RNG: time arrives as a parameter, and randomness comes
//! from a ChaCha20 RNG seeded by the driver. The same seed and the same inputs give the same
//! outputs, bit for bit; the simulator depends on it. Maps that decide behaviour are `BTreeMap`s,
//! so iteration order is deterministic too.
//!
//! # Adding a protocol
//!
//! Write a module with a `Message` type, a `Config` and a state machine implementing
//! [`Protocol`]; add one variant to [`Message`](crate::wire::Message) and one field here, and
//! route its variant in [`Node::handle_message`] and list it in `Node::protocols` and
//! `Node::for_each_protocol`.

pub mod keep;
pub mod outbound;
mod protocol;

pub use keep::KeepError;
pub use protocol::{Context, PeerEvent, Protocol, Transmit};

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

use crate::doc::{self, Access, Change, DocId, Edit, sync::DocSync, sync::SyncError};
use crate::gossip::{self, Gossip, SearchError, ShareError};
use crate::identity::{Keypair, PeerId};
use crate::kad::record::OwnRecord;
use crate::kad::store::{MemoryStore, RecordStore};
use crate::kad::{self, Kad, KadError, Key, QueryId};
use crate::pex::{self, Pex};
use crate::ping::{self, Ping, PingError};
use crate::pow::{Difficulty, Stamp};
use crate::pubsub::{self, PubSub, PubSubError, Published};
use crate::swarm::{self, BlobAccess, Swarm, SwarmError};
use crate::time::Instant;
use crate::trust::reputation::{self, Observation, Reputation, Standing};
use crate::trust::wot::{self, TrustError, WebOfTrust};
use crate::wire::{Capabilities, Hello, MAX_AGENT_LEN, MAX_LISTEN_ADDRS, Message};

use keep::Keeper;
use protocol::{Link, OutputLimits, Outputs};

/// The [`Context`] protocols get, borrowing the node's clock, RNG and outputs (a macro, so the
/// node's other fields stay borrowable alongside).
macro_rules! context {
    ($node:ident) => {
        Context {
            now: $node.now,
            rng: &mut $node.rng,
            out: &mut $node.out,
        }
    };
}

/// The application protocol version carried in `Hello`.
pub const PROTOCOL_VERSION: u16 = 1;

/// Node-wide settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Proof-of-work difficulty required of every peer's id (a network parameter).
    pub difficulty: Difficulty,
    /// Roles this node offers.
    pub capabilities: Capabilities,
    /// Addresses this node listens on, announced in `Hello`.
    pub listen_addrs: Vec<SocketAddr>,
    /// A peer that has not sent a valid `Hello` this long after connecting is disconnected.
    pub hello_timeout: Duration,
    /// Most connected peers (ready or handshaking); further connections are closed.
    pub max_peers: usize,
    /// Connection count the node prunes down to: above it, connections idle for `idle_after`
    /// are closed, the longest idle first. Lookups open connections to many peers; this is what
    /// keeps them from piling up. Overlay neighbours and pub/sub mesh members are never closed
    /// as idle: they are what keeps the overlays connected.
    pub target_peers: usize,
    /// How long a connection must carry no protocol traffic (pings and peer exchange do not
    /// count) before it may be pruned.
    pub idle_after: Duration,
    /// At `max_peers`, a new connection replaces the longest-idle one if that has carried no
    /// protocol traffic for this long; otherwise the new one is refused. A bootstrap node that
    /// thousands of nodes pass through stays open to newcomers this way.
    pub replace_idle_after: Duration,
    /// Bound on each output queue between two drains.
    pub max_queued_outputs: usize,
    /// Software name sent in `Hello`.
    pub agent: String,
    /// How long a requested dial may take before messages waiting for it are dropped.
    pub dial_timeout: Duration,
    /// Most peers with messages waiting for a dial or handshake to finish.
    pub max_waiting_peers: usize,
    /// Most messages waiting per such peer.
    pub max_waiting_messages: usize,
    /// Ping settings.
    pub ping: ping::Config,
    /// Hole punching (upgrading relayed connections to direct ones).
    pub punch: crate::nat::punch::Config,
    /// Kademlia settings.
    pub kad: kad::Config,
    /// Peer-exchange settings.
    pub pex: pex::Config,
    /// Kept peers (dialed while the node is short of peers).
    pub keep: keep::Config,
    /// Outbound diversity: how many outbound connections the node keeps, across network groups.
    pub outbound: outbound::Config,
    /// Overlay membership and keyword search settings.
    pub gossip: gossip::Config,
    /// Pub/sub settings.
    pub pubsub: pubsub::Config,
    /// Swarming settings (blob downloads and serving).
    pub swarm: swarm::Config,
    /// Document replication settings.
    pub docs: doc::sync::Config,
    /// Reputation settings: when a peer is distrusted, how fast evidence fades.
    pub reputation: reputation::Config,
    /// Web-of-trust settings: how deep the graph reaches, how often statements are refreshed.
    pub trust: wot::Config,
    /// Super-peers: when this node serves as one, and how many it holds when behind a NAT.
    pub superpeer: crate::superpeer::Config,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            difficulty: Difficulty::DEFAULT,
            capabilities: Capabilities::empty(),
            listen_addrs: Vec::new(),
            hello_timeout: Duration::from_secs(10),
            max_peers: 1024,
            target_peers: 128,
            idle_after: Duration::from_secs(120),
            replace_idle_after: Duration::from_secs(10),
            max_queued_outputs: 65_536,
            agent: concat!("spore/", env!("CARGO_PKG_VERSION")).to_string(),
            dial_timeout: Duration::from_secs(15),
            max_waiting_peers: 256,
            max_waiting_messages: 32,
            ping: ping::Config::default(),
            punch: crate::nat::punch::Config::default(),
            kad: kad::Config::default(),
            pex: pex::Config::default(),
            keep: keep::Config::default(),
            outbound: outbound::Config::default(),
            superpeer: crate::superpeer::Config::default(),
            gossip: gossip::Config::default(),
            pubsub: pubsub::Config::default(),
            swarm: swarm::Config::default(),
            docs: doc::sync::Config::default(),
            reputation: reputation::Config::default(),
            trust: wot::Config::default(),
        }
    }
}

/// Which side opened a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// We dialed.
    Outbound,
    /// They dialed.
    Inbound,
}

/// A connection opened or closed; reported by the driver.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectionEvent {
    /// An authenticated connection to `peer` is up (the transport has verified its key).
    Connected {
        /// The peer, as authenticated by the transport.
        peer: PeerId,
        /// The address the connection comes from (our view of the peer's address).
        addr: SocketAddr,
        /// Who dialed.
        direction: Direction,
    },
    /// The transport replaced a ready peer's connection by a direct one that a hole punch
    /// opened. If an upgrade for the peer is under way, protocol state survives: the peer stays
    /// ready; each side sends a fresh `Hello` on the new connection, accepted while the upgrade
    /// lasts.
    /// Otherwise it is handled as [`Connected`](Self::Connected) (the old state is dropped).
    Replaced {
        /// The peer.
        peer: PeerId,
        /// The new connection's address.
        addr: SocketAddr,
        /// Who dialed the new connection.
        direction: Direction,
    },
    /// The connection to `peer` closed.
    Closed {
        /// The peer.
        peer: PeerId,
    },
    /// A dial the node asked for ([`Event::Dial`]) failed.
    DialFailed {
        /// The peer.
        peer: PeerId,
    },
}

/// What the node reports to its driver.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A peer's `Hello` verified: it is ready for protocol messages.
    PeerReady {
        /// The peer.
        peer: PeerId,
        /// What it told us about itself.
        info: PeerInfo,
    },
    /// A ready peer went away.
    PeerGone {
        /// The peer.
        peer: PeerId,
    },
    /// The driver must connect to `peer` at one of `addrs` (in order of preference) and report
    /// [`ConnectionEvent::Connected`] or [`ConnectionEvent::DialFailed`].
    Dial {
        /// The peer.
        peer: PeerId,
        /// Where to reach it.
        addrs: Vec<SocketAddr>,
    },
    /// The driver must close the connection to `peer`.
    Close {
        /// The peer.
        peer: PeerId,
        /// Why; sent to the peer in the close frame.
        reason: CloseReason,
    },
    /// A ping result.
    Ping(ping::Event),
    /// Hole punching: dial a peer directly now, or how an upgrade ended.
    Punch(crate::nat::punch::Event),
    /// A Kademlia result.
    Kad(kad::Event),
    /// Peer records learned by peer exchange.
    Pex(pex::Event),
    /// Overlay membership changes and search results.
    /// Overlay membership changes and search results.
    Gossip(gossip::Event),
    /// A pub/sub message.
    PubSub(pubsub::Event),
    /// Blob download progress, completion, failure and bad peers.
    Swarm(swarm::Event),
    /// Document replication: remote changes applied, syncs finished, misbehaving peers.
    Doc(doc::sync::Event),
}

impl From<kad::Event> for Event {
    fn from(e: kad::Event) -> Self {
        Event::Kad(e)
    }
}

impl From<pex::Event> for Event {
    fn from(e: pex::Event) -> Self {
        Event::Pex(e)
    }
}

impl From<gossip::Event> for Event {
    fn from(e: gossip::Event) -> Self {
        Event::Gossip(e)
    }
}

impl From<pubsub::Event> for Event {
    fn from(e: pubsub::Event) -> Self {
        Event::PubSub(e)
    }
}

impl From<doc::sync::Event> for Event {
    fn from(e: doc::sync::Event) -> Self {
        Event::Doc(e)
    }
}

impl From<swarm::Event> for Event {
    fn from(e: swarm::Event) -> Self {
        Event::Swarm(e)
    }
}

impl From<crate::nat::punch::Event> for Event {
    fn from(e: crate::nat::punch::Event) -> Self {
        Event::Punch(e)
    }
}

impl From<ping::Event> for Event {
    fn from(e: ping::Event) -> Self {
        Event::Ping(e)
    }
}

/// Why the node asks for a connection to be closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CloseReason {
    /// The peer broke the protocol (e.g. a message before `Hello`, a second `Hello`).
    #[error("protocol violation: {0}")]
    Violation(String),
    /// The peer's `Hello` was unacceptable (version, stamp).
    #[error("bad hello: {0}")]
    BadHello(String),
    /// No `Hello` in time.
    #[error("no hello within the handshake timeout")]
    HelloTimeout,
    /// This node is at its peer limit.
    #[error("too many peers")]
    TooManyPeers,
    /// The connection was idle while the node had more than its target number of peers.
    #[error("idle")]
    Idle,
    /// The peer is distrusted for what it did (bad data, invalid messages, violations).
    #[error("distrusted")]
    Distrusted,
}

/// What a node knows about a connected peer.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PeerInfo {
    /// The peer.
    pub peer: PeerId,
    /// Its address as this node sees it.
    pub addr: SocketAddr,
    /// Who dialed.
    pub direction: Direction,
    /// When the connection came up.
    pub connected_at: Instant,
    /// Addresses it listens on (from its `Hello`); one is kept inline, as nearly every peer
    /// announces one and a node holds this for every connection.
    pub listen_addrs: crate::kad::Addrs,
    /// The address at which it sees *us* (from its `Hello`).
    pub observed_us: Option<SocketAddr>,
    /// Its roles.
    pub capabilities: Capabilities,
    /// Its software.
    pub agent: String,
    /// Its proof-of-work stamp (from its `Hello`; verified).
    pub stamp: Option<Stamp>,
    /// Whether its `Hello` has been verified.
    pub ready: bool,
    /// Last measured round-trip time.
    pub rtt: Option<Duration>,
    /// Whether a hole punch moved this connection off a relay (its path is direct now).
    pub punched: bool,
}

#[derive(Debug)]
struct Peer {
    info: PeerInfo,
    hello_deadline: Option<Instant>,
    /// Last protocol traffic either way (see [`Config::idle_after`]).
    last_active: Instant,
}

/// Counters of things the node noticed and discarded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Stats {
    /// Messages from peers with no open connection (a driver race; harmless).
    pub messages_from_unknown: u64,
    /// Outputs dropped because a queue was at its bound.
    pub outputs_dropped: u64,
    /// Connections closed for a protocol violation or bad hello.
    pub violations: u64,
    /// Messages for peers that were neither connected nor dialable.
    pub unroutable: u64,
    /// Connections closed because they were idle while the node was above its target count.
    pub idle_closed: u64,
    /// Connections refused or closed because the peer is distrusted.
    pub distrusted_refused: u64,
    /// Dials made to keep the minimum of outbound connections (see [`outbound`]).
    #[serde(default)]
    pub outbound_dials: u64,
}

/// A spore node's protocol core. See the [module docs](self) for the driving contract.
pub struct Node {
    keypair: Keypair,
    stamp: Stamp,
    config: Config,
    rng: ChaCha20Rng,
    now: Instant,
    peers: BTreeMap<PeerId, Peer>,
    /// `Hello` deadlines of handshaking peers, earliest first (so `poll_timeout` is cheap).
    hello_deadlines: std::collections::BTreeSet<(Instant, PeerId)>,
    out: Outputs,
    stats: Stats,
    ping: Ping,
    punch: crate::nat::punch::Punch,
    kad: Kad,
    pex: Pex,
    gossip: Gossip,
    pubsub: PubSub,
    swarm: Swarm,
    docs: DocSync,
    keeper: Keeper,
    superpeers: crate::superpeer::SuperPeers,
    /// When to look for idle connections to prune; set while above the target count.
    next_prune: Option<Instant>,
    /// When to check the outbound connections next (see [`outbound`]).
    next_outbound: Option<Instant>,
    /// DHT lookups of trust statements under way, and whose statement each looks for.
    trust_queries: BTreeMap<QueryId, PeerId>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("id", &self.keypair.peer_id())
            .field("peers", &self.peers.len())
            .finish_non_exhaustive()
    }
}

impl Node {
    /// A node with identity `keypair`, whose `stamp` must meet `config.difficulty`, whose
    /// randomness comes from `rng_seed`, and which keeps DHT records in memory.
    pub fn new(
        keypair: Keypair,
        stamp: Stamp,
        config: Config,
        rng_seed: [u8; 32],
        now: Instant,
    ) -> Result<Self, crate::pow::StampError> {
        let store = Box::new(MemoryStore::new(config.kad.store));
        Self::with_store(keypair, stamp, config, store, rng_seed, now)
    }

    /// Like [`new`](Self::new), with DHT records kept in `store` (the runtime passes a persistent
    /// one).
    pub fn with_store(
        keypair: Keypair,
        stamp: Stamp,
        config: Config,
        store: Box<dyn RecordStore + Send>,
        rng_seed: [u8; 32],
        now: Instant,
    ) -> Result<Self, crate::pow::StampError> {
        stamp.verify(&keypair.peer_id(), config.difficulty)?;
        let mut config = config;
        if config.kad.mode == kad::Mode::Server {
            config.capabilities = config.capabilities | Capabilities::DHT_SERVER;
        }
        // Keep our own Hello within the bounds every receiver enforces.
        config.listen_addrs.truncate(MAX_LISTEN_ADDRS);
        truncate_utf8(&mut config.agent, MAX_AGENT_LEN);
        let ping = Ping::new(config.ping.clone());
        let punch =
            crate::nat::punch::Punch::new(config.punch.clone(), config.listen_addrs.clone());
        let mut kad = Kad::new(
            keypair.clone(),
            stamp,
            config.difficulty,
            config.kad.clone(),
            store,
        );
        kad.set_listen_addrs(config.listen_addrs.clone());
        let mut pex = Pex::new(
            keypair.clone(),
            stamp,
            config.difficulty,
            config.pex.clone(),
        );
        pex.set_listen_addrs(config.listen_addrs.clone());
        let gossip = Gossip::new(keypair.clone(), config.difficulty, config.gossip.clone());
        let mut docs = DocSync::new(keypair.peer_id(), config.docs.clone());
        docs.set_signer(keypair.clone());
        let pubsub = PubSub::new(
            keypair.clone(),
            stamp,
            config.difficulty,
            config.pubsub.clone(),
        );
        let mut swarm = Swarm::new(keypair.peer_id(), config.difficulty, config.swarm.clone());
        swarm.set_signer(keypair.clone());
        let mut own = OwnRecord::new(keypair.clone(), stamp, config.pex.record_ttl);
        own.set_addrs(config.listen_addrs.clone());
        let out = Outputs::new(
            OutputLimits {
                queue: config.max_queued_outputs,
                waiting_peers: config.max_waiting_peers,
                waiting_messages: config.max_waiting_messages,
            },
            own,
            Reputation::new(config.reputation.clone()),
            WebOfTrust::new(keypair.peer_id(), config.trust.clone()),
        );
        Ok(Self {
            keypair,
            stamp,
            rng: ChaCha20Rng::from_seed(rng_seed),
            now,
            peers: BTreeMap::new(),
            hello_deadlines: std::collections::BTreeSet::new(),
            out,
            stats: Stats::default(),
            ping,
            punch,
            kad,
            pex,
            gossip,
            pubsub,
            swarm,
            docs,
            keeper: Keeper::new(config.keep.clone()),
            superpeers: {
                let mut s = crate::superpeer::SuperPeers::new(config.superpeer.clone(), now);
                s.set_listen_addrs(&config.listen_addrs);
                s
            },
            next_prune: None,
            next_outbound: (config.outbound.min_outbound > 0)
                .then(|| now + config.outbound.interval),
            trust_queries: BTreeMap::new(),
            config,
        })
    }

    /// This node's identity.
    pub fn peer_id(&self) -> PeerId {
        self.keypair.peer_id()
    }

    /// This node's settings.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Replaces the announced listen addresses (e.g. once the socket is bound).
    pub fn set_listen_addrs(&mut self, mut addrs: Vec<SocketAddr>) {
        addrs.truncate(MAX_LISTEN_ADDRS);
        self.kad.set_listen_addrs(addrs.clone());
        self.pex.set_listen_addrs(addrs.clone());
        self.punch.set_listen_addrs(addrs.clone());
        self.superpeers.set_listen_addrs(&addrs);
        self.out.own.set_addrs(addrs.clone());
        self.config.listen_addrs = addrs;
    }

    /// Replaces the announced addresses while the node runs (e.g. a port mapping the gateway
    /// granted or withdrew). Once the node has joined the DHT its peer record, signed again
    /// with the new addresses, is stored anew so that lookups find them. False if nothing
    /// changed.
    pub fn update_listen_addrs(&mut self, now: Instant, mut addrs: Vec<SocketAddr>) -> bool {
        addrs.truncate(MAX_LISTEN_ADDRS);
        if addrs == self.config.listen_addrs {
            return false;
        }
        self.set_listen_addrs(addrs);
        if self.kad.is_bootstrapped() {
            // Best effort: with too many lookups running, the periodic republish carries it.
            let _ = self.with_kad(now, |kad, cx| kad.publish_peer_record(cx));
        }
        true
    }

    /// Adds address candidates for hole punching that the node cannot see itself (e.g. the
    /// reflexive addresses STUN reported).
    pub fn set_punch_candidates(&mut self, addrs: Vec<SocketAddr>) {
        self.punch.set_extra_candidates(addrs);
    }

    /// Sets how the NAT in front of the node maps (from STUN): hole punching tells peers, and
    /// it decides whether a punch uses birthday probing.
    pub fn set_nat_mapping(&mut self, mapping: crate::nat::Mapping) {
        self.punch.set_mapping(mapping);
    }

    /// Whether a hole punch to `peer` is under way or just ended on a direct path: while it
    /// lasts, a replaced connection keeps the peer's state.
    pub fn punch_in_progress(&self, peer: &PeerId, now: Instant) -> bool {
        self.punch.is_upgrading(peer, now)
    }

    /// Hole punching's counters.
    pub fn punch_stats(&self) -> crate::nat::punch::Stats {
        self.punch.stats()
    }

    /// Names the relays that hold a reservation for this node in its signed peer record, so
    /// that peers that cannot dial it directly can reach it through one of them.
    pub fn set_relays(&mut self, relays: Vec<PeerId>) {
        self.out.own.set_relays(relays);
    }

    /// Connected peers, handshaking ones included, in id order.
    pub fn peers(&self) -> impl Iterator<Item = PeerInfo> + '_ {
        self.peers.values().map(|p| {
            let mut info = p.info.clone();
            info.rtt = self.ping.rtt(&info.peer);
            info
        })
    }

    /// One connected peer.
    pub fn peer(&self, id: &PeerId) -> Option<PeerInfo> {
        self.peers.get(id).map(|p| {
            let mut info = p.info.clone();
            info.rtt = self.ping.rtt(id);
            info
        })
    }

    /// Counters of discarded inputs and outputs.
    pub fn stats(&self) -> Stats {
        Stats {
            outputs_dropped: self.out.dropped,
            unroutable: self.out.unroutable,
            ..self.stats
        }
    }

    /// Input: a connection opened or closed.
    pub fn handle_connection_event(&mut self, now: Instant, event: ConnectionEvent) {
        self.advance(now);
        match event {
            ConnectionEvent::Connected {
                peer,
                addr,
                direction,
            } => {
                if self.out.reputation.is_distrusted(now, &peer) {
                    self.stats.distrusted_refused += 1;
                    self.out.push_event(Event::Close {
                        peer,
                        reason: CloseReason::Distrusted,
                    });
                    return;
                }
                if self.peers.contains_key(&peer) {
                    // The driver keeps one connection per peer; a second Connected means it
                    // replaced the connection. Start the handshake afresh.
                    self.remove_peer(peer);
                } else if self.peers.len() >= self.config.max_peers {
                    match self.longest_idle(self.config.replace_idle_after) {
                        Some(idle) => self.close_idle(idle),
                        None => {
                            self.out.push_event(Event::Close {
                                peer,
                                reason: CloseReason::TooManyPeers,
                            });
                            return;
                        }
                    }
                }
                let info = PeerInfo {
                    peer,
                    addr,
                    direction,
                    connected_at: now,
                    listen_addrs: crate::kad::Addrs::new(),
                    observed_us: None,
                    capabilities: Capabilities::empty(),
                    agent: String::new(),
                    stamp: None,
                    ready: false,
                    rtt: None,
                    punched: false,
                };
                let hello_deadline = Some(now + self.config.hello_timeout);
                self.hello_deadlines
                    .insert((now + self.config.hello_timeout, peer));
                self.out.set_link(peer, Link::Handshaking);
                self.peers.insert(
                    peer,
                    Peer {
                        info,
                        hello_deadline,
                        last_active: now,
                    },
                );
                if self.peers.len() > self.config.target_peers && self.next_prune.is_none() {
                    // Older connections may be idle already: look now.
                    self.next_prune = Some(now);
                }
                let hello = self.hello(addr);
                self.send(peer, Message::Hello(hello));
            }
            ConnectionEvent::Replaced {
                peer,
                addr,
                direction,
            } => {
                // Only a path change that a hole punch under way explains keeps the peer's
                // state; otherwise the new connection may come from a restarted process, which
                // must start afresh.
                let upgrading = self.punch.is_upgrading(&peer, now);
                let Some(p) = self
                    .peers
                    .get_mut(&peer)
                    .filter(|p| p.info.ready && upgrading)
                else {
                    // Nothing to keep: an ordinary new connection.
                    return self.handle_connection_event(
                        now,
                        ConnectionEvent::Connected {
                            peer,
                            addr,
                            direction,
                        },
                    );
                };
                p.info.addr = addr;
                p.info.direction = direction;
                p.info.punched = !crate::nat::relay::is_relayed_addr(&addr);
                let info = p.info.clone();
                let hello = self.hello(addr);
                self.send(peer, Message::Hello(hello));
                let mut cx = context!(self);
                self.punch.path_changed(&mut cx, &info);
            }
            ConnectionEvent::Closed { peer } => self.remove_peer(peer),
            ConnectionEvent::DialFailed { peer } => {
                if self.out.links.get(&peer) == Some(&Link::Dialing) {
                    self.unreachable(peer);
                }
            }
        }
    }

    /// Input: a message decoded from `from`'s connection.
    pub fn handle_message(&mut self, now: Instant, from: PeerId, msg: Message) {
        self.advance(now);
        let Some(peer) = self.peers.get_mut(&from) else {
            self.stats.messages_from_unknown += 1;
            return;
        };
        let ready = peer.info.ready;
        if !is_housekeeping(&msg) {
            peer.last_active = now.max(peer.last_active);
        }
        match msg {
            Message::Hello(hello) if !ready => self.handle_hello(from, hello),
            // Both ends of a hole punch replace connections (relayed by direct, and one of two
            // direct ones by the other), sending a fresh Hello on each: accepted while the
            // upgrade lasts.
            Message::Hello(hello) if self.punch.is_upgrading(&from, now) => {
                self.handle_rehello(from, hello);
            }
            Message::Hello(_) => self.violation(from, "second hello"),
            other if !ready => {
                let what = format!("{} before hello", other.kind());
                self.violation(from, &what);
            }
            Message::Ping(m) => {
                let mut cx = context!(self);
                self.ping.handle_message(&mut cx, from, m);
            }
            Message::Kad(m) => {
                let mut cx = context!(self);
                self.kad.handle_message(&mut cx, from, m);
            }
            Message::Pex(m) => {
                let mut cx = context!(self);
                self.pex.handle_message(&mut cx, from, m);
            }
            Message::Gossip(m) => {
                let mut cx = context!(self);
                self.gossip.handle_message(&mut cx, from, m);
            }
            Message::PubSub(m) => {
                let mut cx = context!(self);
                self.pubsub.handle_message(&mut cx, from, m);
                self.take_live_doc_changes();
            }
            Message::Swarm(m) => {
                let mut cx = context!(self);
                self.swarm.handle_message(&mut cx, from, m);
            }
            Message::Doc(m) => {
                let mut cx = context!(self);
                Protocol::handle_message(&mut self.docs, &mut cx, from, m);
            }
            Message::Punch(m) => {
                let mut cx = context!(self);
                self.punch.handle_message(&mut cx, from, m);
            }
            Message::SuperPeer(m) => {
                let mut cx = context!(self);
                self.superpeers.handle_message(&mut cx, from, m);
            }
        }
        self.after_input();
    }

    /// Input: the time returned by [`poll_timeout`](Self::poll_timeout) has come.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.advance(now);
        let expired: Vec<PeerId> = self
            .hello_deadlines
            .iter()
            .take_while(|(d, _)| *d <= now)
            .map(|(_, p)| *p)
            .collect();
        for peer in expired {
            self.remove_peer(peer);
            self.out.push_event(Event::Close {
                peer,
                reason: CloseReason::HelloTimeout,
            });
        }
        let dial_timeout = self.config.dial_timeout;
        let stuck: Vec<PeerId> = self
            .out
            .waiting
            .iter()
            .filter(|(_, w)| w.since + dial_timeout <= now)
            .map(|(p, _)| *p)
            .collect();
        for peer in stuck {
            // The driver never reported the dial's outcome, or the handshake stalled: give up on
            // what was waiting. A handshaking peer is closed by its hello timeout.
            if self.out.links.get(&peer) == Some(&Link::Dialing) {
                self.unreachable(peer);
            } else if self.out.waiting.remove(&peer).is_some() {
                self.for_each_protocol(|p, cx| {
                    p.handle_peer_event(cx, &PeerEvent::Unreachable { peer })
                });
            }
        }
        self.for_each_protocol(|p, cx| {
            if p.poll_timeout().is_some_and(|t| t <= cx.now) {
                p.handle_timeout(cx);
            }
        });
        if self.next_prune.is_some_and(|t| t <= now) {
            self.prune_idle();
        }
        if self.next_outbound.is_some_and(|t| t <= now) {
            self.fill_outbound();
        }
        if let Some(n) = self.superpeers.take_wants_candidates() {
            self.meet_superpeer_candidates(n);
        }
        if self.out.wot.poll_timeout().is_some_and(|t| t <= now) {
            self.fetch_trust_statements();
        }
        self.after_input();
    }

    /// What every input ends with: peers that became distrusted are disconnected, and what
    /// the DHT and pub/sub brought for the web of trust goes to it.
    fn after_input(&mut self) {
        self.disconnect_distrusted();
        self.take_trust_events();
    }

    /// Closes the connections of peers that became distrusted while the last input was handled.
    fn disconnect_distrusted(&mut self) {
        if self.out.distrusted.is_empty() {
            return;
        }
        for peer in std::mem::take(&mut self.out.distrusted) {
            if self.peers.contains_key(&peer) {
                self.stats.distrusted_refused += 1;
                self.remove_peer(peer);
                self.out.push_event(Event::Close {
                    peer,
                    reason: CloseReason::Distrusted,
                });
            }
        }
    }

    /// The reputation table: what this node has seen each peer do.
    pub fn reputation(&self) -> &Reputation {
        &self.out.reputation
    }

    /// `peer`'s standing in the reputation table at the node's current time.
    pub fn standing(&self, peer: &PeerId) -> Standing {
        self.out.reputation.standing(self.now, peer)
    }

    /// Input: the driver observed something of `peer` that the protocols cannot see (e.g. a
    /// relay that did or did not carry a circuit). A peer this distrusts is disconnected.
    pub fn observe(&mut self, now: Instant, peer: PeerId, what: Observation) {
        self.advance(now);
        let mut cx = context!(self);
        cx.observe(peer, what);
        self.disconnect_distrusted();
    }

    /// The web of trust: whom this node vouches for, the statements it holds.
    pub fn trust(&self) -> &WebOfTrust {
        &self.out.wot
    }

    /// Command: vouch for `subject`. The new statement is stored in the DHT and published on
    /// the trust topic. False if the node already vouched for it.
    pub fn trust_vouch(&mut self, now: Instant, subject: PeerId) -> Result<bool, TrustError> {
        self.advance(now);
        let changed = self.out.wot.vouch(now, subject)?;
        if changed {
            self.publish_trust_statement();
        }
        Ok(changed)
    }

    /// Command: withdraw the vouch for `subject`; the new statement spreads as a vouch does.
    /// False if there was none.
    pub fn trust_revoke(&mut self, now: Instant, subject: &PeerId) -> bool {
        self.advance(now);
        let changed = self.out.wot.revoke(now, subject);
        if changed {
            self.publish_trust_statement();
        }
        changed
    }

    /// Command: set whom the node vouches for, as saved before a restart; the statement is
    /// published again (with a higher sequence number than any before).
    pub fn set_trust_vouches(
        &mut self,
        now: Instant,
        subjects: std::collections::BTreeSet<PeerId>,
    ) -> Result<(), TrustError> {
        self.advance(now);
        self.out.wot.set_vouches(now, subjects)?;
        if self.out.wot.is_active() {
            self.publish_trust_statement();
        }
        Ok(())
    }

    /// Command: close `topic` to authors this node does not trust within `depth` vouches (see
    /// [`PubSub::close_topic`]). The node follows the trust topic from then on, so that
    /// revocations reach it at once.
    pub fn close_topic(&mut self, now: Instant, topic: &str, depth: u8) -> Result<(), PubSubError> {
        self.advance(now);
        self.pubsub.close_topic(topic, depth)?;
        self.follow_trust_topic();
        Ok(())
    }

    /// Stores this node's statement in the DHT and publishes it on the trust topic (best
    /// effort: the DHT's republishing and the others' refreshes carry it if either fails now).
    fn publish_trust_statement(&mut self) {
        let value = self.out.wot.own_statement();
        let now = self.now;
        let _ = self.with_kad(now, |kad, cx| kad.put_value(cx, wot::STATEMENT_NAME, value));
        let key = kad::record::ValueRecord::key_for(&self.peer_id(), wot::STATEMENT_NAME);
        self.follow_trust_topic();
        if let Some(record) = self.kad.store().get_value(&key, now)
            && let Ok(bytes) = postcard::to_allocvec(&record)
        {
            let _ = self.with_pubsub(now, |p, cx| p.publish(cx, wot::TOPIC, bytes.into()));
        }
    }

    /// Subscribes to the trust topic (idempotent).
    fn follow_trust_topic(&mut self) {
        let now = self.now;
        let _ = self.with_pubsub(now, |p, cx| p.subscribe(cx, wot::TOPIC));
    }

    /// Starts DHT lookups for the trust statements that are missing or due for a refresh.
    fn fetch_trust_statements(&mut self) {
        let now = self.now;
        for issuer in self.out.wot.due(now) {
            match self.with_kad(now, |kad, cx| {
                kad.get_value(cx, issuer, wot::STATEMENT_NAME)
            }) {
                Ok(id) => {
                    self.trust_queries.insert(id, issuer);
                }
                Err(_) => {
                    let limits = self.kad.record_limits();
                    self.out.wot.fetched(now, issuer, None, &limits);
                }
            }
        }
    }

    /// Takes the events that belong to the web of trust out of the event queue: the ends of
    /// statement lookups, and statements published on the trust topic.
    fn take_trust_events(&mut self) {
        if self.trust_queries.is_empty() && !self.pubsub.is_subscribed(wot::TOPIC) {
            return;
        }
        let queries = &mut self.trust_queries;
        let mut found = Vec::new();
        let mut published = Vec::new();
        self.out.events.retain(|e| match e {
            Event::Kad(kad::Event::QueryDone { id, result, .. }) => match queries.remove(id) {
                Some(issuer) => {
                    let record = match result {
                        kad::QueryResult::GetValue { record, .. } => record.clone(),
                        _ => None,
                    };
                    found.push((issuer, record));
                    false
                }
                None => true,
            },
            Event::PubSub(pubsub::Event::Message { topic, data, .. }) if topic == wot::TOPIC => {
                published.push(data.clone());
                false
            }
            _ => true,
        });
        let (now, limits) = (self.now, self.kad.record_limits());
        for (issuer, record) in found {
            self.out.wot.fetched(now, issuer, record.as_ref(), &limits);
        }
        for data in published {
            if let Ok(record) = postcard::from_bytes::<kad::record::ValueRecord>(&data) {
                let _ = self.out.wot.learn(now, &record, &limits);
            }
        }
    }

    /// The peer idle longest, if it has been idle for at least `min`.
    fn longest_idle(&self, min: Duration) -> Option<PeerId> {
        self.peers
            .iter()
            .filter(|(id, p)| p.last_active + min <= self.now && !self.is_structural(id))
            .min_by_key(|(id, p)| (p.last_active, **id))
            .map(|(id, _)| *id)
    }

    /// Whether `peer` holds the overlays together (an active-view neighbour, or a pub/sub mesh
    /// member): such connections are quiet by nature and are never closed as idle.
    fn is_structural(&self, peer: &PeerId) -> bool {
        self.gossip.active_view().any(|p| p == peer)
            || self.pubsub.in_any_mesh(peer)
            || self.superpeers.is_structural(peer)
    }

    /// Routing-table contacts this node is not connected to and does not distrust, with their
    /// addresses: whom it may dial to widen its view.
    fn dialable_contacts(&self) -> Vec<(PeerId, Vec<SocketAddr>)> {
        self.kad
            .table()
            .iter()
            .filter(|e| !self.peers.contains_key(&e.contact.peer))
            .filter(|e| !self.out.reputation.is_distrusted(self.now, &e.contact.peer))
            .map(|e| (e.contact.peer, e.contact.addrs.to_vec()))
            .collect()
    }

    /// Dials up to `n` routing-table contacts this node is not connected to, at random: a
    /// leaf that knows too few super-peers meets more (their `Hello` says whether they serve).
    fn meet_superpeer_candidates(&mut self, n: usize) {
        let contacts = self.dialable_contacts();
        let picked = crate::random::sample(&mut self.rng, contacts, n);
        self.superpeers.discovery_dialed(picked.len());
        let mut cx = context!(self);
        for (peer, addrs) in picked {
            cx.dial(peer, &addrs);
        }
    }

    /// Super-peer election and choice: whether this node serves, its leaves, its super-peers.
    pub fn superpeers(&self) -> &crate::superpeer::SuperPeers {
        &self.superpeers
    }

    /// Counters and the current picture of super-peer election and choice.
    pub fn superpeer_stats(&self) -> crate::superpeer::Stats {
        self.superpeers.stats(self.now)
    }

    /// The `min_outbound` longest-connected ready outbound peers: kept, never pruned as idle.
    fn kept_outbound(&self) -> std::collections::BTreeSet<PeerId> {
        let mut outbound: Vec<(Instant, PeerId)> = self
            .peers
            .iter()
            .filter(|(_, p)| p.info.ready && p.info.direction == Direction::Outbound)
            .map(|(id, p)| (p.info.connected_at, *id))
            .collect();
        outbound.sort();
        outbound.truncate(self.config.outbound.min_outbound);
        outbound.into_iter().map(|(_, id)| id).collect()
    }

    /// Dials routing-table contacts, across network groups, while the node has fewer ready
    /// outbound connections than [`outbound::Config::min_outbound`] (see [`outbound`]).
    fn fill_outbound(&mut self) {
        use crate::trust::eviction::NetGroup;
        let config = self.config.outbound.clone();
        self.next_outbound = (config.min_outbound > 0).then(|| self.now + config.interval);
        let mut groups: BTreeMap<NetGroup, usize> = BTreeMap::new();
        let mut outbound = 0;
        for p in self.peers.values() {
            if p.info.direction == Direction::Outbound {
                *groups.entry(NetGroup::of(p.info.addr.ip())).or_default() += 1;
                outbound += 1;
            }
        }
        let want = config.min_outbound.saturating_sub(outbound);
        if want == 0 {
            return;
        }
        let candidates = self.dialable_contacts();
        let picked = outbound::pick(
            &groups,
            candidates,
            want,
            config.max_per_group,
            &mut self.rng,
        );
        let mut cx = context!(self);
        for (peer, addrs) in picked {
            cx.dial(peer, &addrs);
            self.stats.outbound_dials += 1;
        }
    }

    /// Drops `peer` for being idle and asks the driver to close its connection.
    fn close_idle(&mut self, peer: PeerId) {
        self.stats.idle_closed += 1;
        self.remove_peer(peer);
        self.out.push_event(Event::Close {
            peer,
            reason: CloseReason::Idle,
        });
    }

    /// Shortest time between two looks for idle connections (each look scans every peer): a
    /// connection is closed at most a quarter of `idle_after` late.
    fn min_prune_gap(&self) -> Duration {
        (self.config.idle_after / 4).clamp(Duration::from_millis(100), Duration::from_secs(30))
    }

    /// Closes connections idle for `idle_after`, longest idle first, until the node is back at
    /// its target count (or nothing more is idle). While still above it, looks again when the
    /// next connection becomes idle enough to close.
    fn prune_idle(&mut self) {
        let excess = self.peers.len().saturating_sub(self.config.target_peers);
        let kept_outbound = self.kept_outbound();
        let mut candidates: Vec<(Instant, PeerId)> = self
            .peers
            .iter()
            .filter(|(id, _)| !self.is_structural(id) && !kept_outbound.contains(id))
            .map(|(id, p)| (p.last_active, *id))
            .collect();
        candidates.sort();
        let idle = candidates
            .iter()
            .take_while(|(last, _)| *last + self.config.idle_after <= self.now)
            .count()
            .min(excess);
        for &(_, peer) in &candidates[..idle] {
            self.close_idle(peer);
        }
        self.next_prune = (self.peers.len() > self.config.target_peers).then(|| {
            let earliest = self.now + self.min_prune_gap();
            // The longest-idle connection left open is the next that may go; if every one is
            // structural, look again later (neighbours and mesh members change).
            let next = candidates
                .get(idle)
                .map_or(self.now + self.config.idle_after, |(last, _)| {
                    *last + self.config.idle_after
                });
            next.max(earliest)
        });
    }

    /// Command: ping `peer` now. The answer arrives as [`Event::Ping`].
    pub fn ping(&mut self, now: Instant, peer: PeerId) -> Result<u64, PingError> {
        self.advance(now);
        let mut cx = context!(self);
        self.ping.ping(&mut cx, peer)
    }

    /// Command: keep a connection to `peer`: while this node has fewer than
    /// [`keep::Config::min_peers`] ready peers, dial it at `addrs` (now, and again with backoff)
    /// whenever it is not connected. Bootstrap peers are kept. See [`keep`].
    pub fn keep_connected(
        &mut self,
        now: Instant,
        peer: PeerId,
        addrs: Vec<SocketAddr>,
    ) -> Result<(), KeepError> {
        self.advance(now);
        if peer == self.peer_id() {
            return Err(KeepError::SelfPeer);
        }
        let mut cx = context!(self);
        self.keeper.keep(&mut cx, peer, addrs)
    }

    /// Command: stop keeping `peer` (its connection, if any, stays). False if it was not kept.
    pub fn forget_kept(&mut self, peer: &PeerId) -> bool {
        self.keeper.forget(peer)
    }

    /// The peers this node keeps connected.
    pub fn kept_peers(&self) -> impl Iterator<Item = &PeerId> {
        self.keeper.peers()
    }

    /// Kademlia's state: routing table, records, counters.
    pub fn kad(&self) -> &Kad {
        &self.kad
    }

    /// Takes the DHT record store out (the node keeps an empty one), so that a restarted node
    /// can continue from it, as the runtime's on-disk store outlives the process.
    pub fn take_store(&mut self) -> Box<dyn RecordStore + Send> {
        self.kad.take_store()
    }

    /// Peer exchange's state: cached records, counters.
    pub fn pex(&self) -> &Pex {
        &self.pex
    }

    /// Command: join the DHT (look up our own id, then refresh farther buckets).
    pub fn bootstrap(&mut self, now: Instant) -> Result<QueryId, KadError> {
        self.with_kad(now, |kad, cx| kad.bootstrap(cx))
    }

    /// Command: find the k closest nodes to `target`.
    pub fn find_node(&mut self, now: Instant, target: Key) -> Result<QueryId, KadError> {
        self.with_kad(now, |kad, cx| kad.find_node(cx, target))
    }

    /// Command: find `peer`'s signed record (its addresses).
    pub fn find_peer(&mut self, now: Instant, peer: PeerId) -> Result<QueryId, KadError> {
        self.with_kad(now, |kad, cx| kad.find_peer(cx, peer))
    }

    /// Command: sign `value` under `name` and store it in the DHT.
    pub fn put_value(
        &mut self,
        now: Instant,
        name: &str,
        value: bytes::Bytes,
    ) -> Result<QueryId, KadError> {
        self.with_kad(now, |kad, cx| kad.put_value(cx, name, value))
    }

    /// Command: read the value `publisher` stored under `name`.
    pub fn get_value(
        &mut self,
        now: Instant,
        publisher: PeerId,
        name: &str,
    ) -> Result<QueryId, KadError> {
        self.with_kad(now, |kad, cx| kad.get_value(cx, publisher, name))
    }

    /// Command: announce that this node provides the content with hash `content`.
    pub fn provide(&mut self, now: Instant, content: [u8; 32]) -> Result<QueryId, KadError> {
        self.with_kad(now, |kad, cx| kad.provide(cx, content))
    }

    /// Command: find providers of `content`.
    pub fn find_providers(&mut self, now: Instant, content: [u8; 32]) -> Result<QueryId, KadError> {
        self.with_kad(now, |kad, cx| kad.find_providers(cx, content))
    }

    /// The unstructured overlay's state: active and passive views, counters.
    pub fn gossip(&self) -> &Gossip {
        &self.gossip
    }

    /// Command: search the unstructured overlay for names containing every one of `words`;
    /// hits arrive as [`Event::Gossip`] until the query's timeout.
    pub fn search(&mut self, now: Instant, words: &[String]) -> Result<u64, SearchError> {
        self.advance(now);
        let mut cx = context!(self);
        self.gossip.search(&mut cx, words)
    }

    /// Command: answer searches for `name` with `content` (a BLAKE3 hash) of `size` bytes.
    pub fn share_name(
        &mut self,
        name: String,
        content: [u8; 32],
        size: u64,
    ) -> Result<(), ShareError> {
        self.gossip.share(name, content, size)
    }

    /// Command: stop answering searches with `content`. False if it was not shared.
    pub fn unshare_name(&mut self, content: &[u8; 32]) -> bool {
        self.gossip.unshare(content)
    }

    /// Pub/sub's state: subscriptions, meshes, scores, counters.
    pub fn pubsub(&self) -> &PubSub {
        &self.pubsub
    }

    /// Sets the application's check of pub/sub messages, run before a message is delivered or
    /// forwarded.
    pub fn set_pubsub_validator(&mut self, validator: Box<dyn pubsub::Validator>) {
        self.pubsub.set_validator(validator);
    }

    /// Command: subscribe to `topic`; its messages arrive as [`Event::PubSub`].
    pub fn subscribe(&mut self, now: Instant, topic: &str) -> Result<(), PubSubError> {
        self.with_pubsub(now, |p, cx| p.subscribe(cx, topic))
    }

    /// Command: leave `topic`. False if not subscribed.
    pub fn unsubscribe(&mut self, now: Instant, topic: &str) -> bool {
        self.with_pubsub(now, |p, cx| p.unsubscribe(cx, topic))
    }

    /// Command: sign and publish `data` on `topic`.
    pub fn publish(
        &mut self,
        now: Instant,
        topic: &str,
        data: bytes::Bytes,
    ) -> Result<Published, PubSubError> {
        self.with_pubsub(now, |p, cx| p.publish(cx, topic, data))
    }

    /// Document replication's state: the replicated documents, sessions, counters.
    pub fn docs(&self) -> &DocSync {
        &self.docs
    }

    /// Plugs in the store documents persist through (the runtime passes its redb store), restores
    /// the documents it holds and follows their live changes; returns how many were restored.
    /// Use it before creating or opening documents: those replicated so far are dropped.
    pub fn set_doc_store(
        &mut self,
        store: Box<dyn doc::sync::DocStore + Send>,
    ) -> Result<usize, doc::sync::StoreError> {
        let mut docs = DocSync::with_store(self.keypair.peer_id(), self.config.docs.clone(), store);
        docs.set_signer(self.keypair.clone());
        let loaded = docs.load()?;
        self.docs = docs;
        let ids: Vec<DocId> = self.docs.docs().map(|d| d.id()).collect();
        for id in ids {
            self.follow_doc(id);
        }
        Ok(loaded)
    }

    /// Command: create a document owned by this node (`nonce` makes its id unique among this
    /// node's documents) and follow its live changes.
    pub fn doc_create(&mut self, now: Instant, nonce: u64) -> Result<DocId, SyncError> {
        self.advance(now);
        let id = self.docs.create(&self.keypair, nonce)?;
        self.follow_doc(id);
        Ok(id)
    }

    /// Command: replicate the document `access` describes (from a ticket), syncing with
    /// `peers`, and follow its live changes.
    pub fn doc_open(
        &mut self,
        now: Instant,
        access: Access,
        peers: &[PeerId],
    ) -> Result<DocId, SyncError> {
        self.advance(now);
        let id = self.docs.open(self.now, access, peers)?;
        self.follow_doc(id);
        self.drain_docs();
        Ok(id)
    }

    /// Command: edit a document as this node (a writer); the change is applied, persisted and
    /// published live on the document's topic. Replicas that miss it get it by sync.
    pub fn doc_edit(
        &mut self,
        now: Instant,
        doc: &DocId,
        edits: Vec<Edit>,
    ) -> Result<Change, SyncError> {
        self.advance(now);
        let change = self.docs.edit(&self.keypair, doc, edits)?;
        // Live delivery is best effort: with no topic peer yet, sync brings the change.
        let _ = self.publish(self.now, &doc.topic(), change.encode().into());
        self.drain_docs();
        Ok(change)
    }

    /// Command: as the owner of `doc`, admit `peer` as a writer.
    pub fn doc_add_writer(
        &mut self,
        now: Instant,
        doc: &DocId,
        peer: PeerId,
    ) -> Result<Access, SyncError> {
        self.advance(now);
        let access = self.docs.add_writer(self.now, &self.keypair, doc, peer)?;
        self.drain_docs();
        Ok(access)
    }

    /// Command: close `doc` to peers this node does not trust within `depth` vouches (see
    /// [`DocSync::close`]); its live topic is closed to untrusted authors too, and the node
    /// follows the trust topic so that revocations reach it at once.
    pub fn doc_close(&mut self, now: Instant, doc: &DocId, depth: u8) -> Result<(), SyncError> {
        self.advance(now);
        self.docs.close(doc, depth)?;
        let _ = self.pubsub.close_topic(&doc.topic(), depth);
        self.follow_trust_topic();
        Ok(())
    }

    /// Command: reconcile `doc` with `peer` now.
    pub fn doc_sync(&mut self, now: Instant, peer: PeerId, doc: DocId) -> Result<(), SyncError> {
        self.advance(now);
        self.docs.sync_with(self.now, peer, doc)?;
        self.drain_docs();
        Ok(())
    }

    /// Subscribes to a document's live topic (at most [`pubsub::MAX_TOPICS`] topics: beyond,
    /// the document is kept current by sync alone).
    fn follow_doc(&mut self, doc: DocId) {
        let _ = self.subscribe(self.now, &doc.topic());
    }

    fn drain_docs(&mut self) {
        let mut cx = context!(self);
        self.docs.drain(&mut cx);
    }

    /// Pub/sub messages on document topics are changes for the document layer, not the
    /// application: take them out of the events and apply them.
    fn take_live_doc_changes(&mut self) {
        let is_doc = |e: &Event| {
            matches!(e, Event::PubSub(pubsub::Event::Message { topic, .. })
                if topic.starts_with(doc::DOC_TOPIC_PREFIX))
        };
        if !self.out.events.iter().any(is_doc) {
            return;
        }
        let events = std::mem::take(&mut self.out.events);
        for e in events {
            match e {
                Event::PubSub(pubsub::Event::Message {
                    topic, data, from, ..
                }) if topic.starts_with(doc::DOC_TOPIC_PREFIX) => {
                    let id = topic[doc::DOC_TOPIC_PREFIX.len()..].parse::<DocId>();
                    let change = postcard::from_bytes::<Change>(&data);
                    if let (Ok(id), Ok(change)) = (id, change) {
                        // An invalid change is refused by the document; sync repairs gaps.
                        let _ = self.docs.live(self.now, from, id, change);
                    }
                }
                other => self.out.events.push_back(other),
            }
        }
        self.drain_docs();
    }

    /// Swarming's state: swarms, their peers, byte counts per peer, counters.
    pub fn swarm(&self) -> &Swarm {
        &self.swarm
    }

    /// Plugs in the blob storage the swarm reads and writes (the runtime passes an adapter
    /// over its on-disk store; a new node has an empty [`swarm::MemoryBlobs`]).
    pub fn set_blob_access(&mut self, blobs: Box<dyn BlobAccess>) {
        self.swarm.set_blobs(blobs);
    }

    /// Restores the swarm's credit ledger saved before a restart (see
    /// [`Swarm::restore_ledger`]).
    pub fn restore_ledger(&mut self, entries: impl IntoIterator<Item = swarm::LedgerEntry>) {
        self.swarm.restore_ledger(entries);
    }

    /// Command: download blob `hash` from `providers` (from a ticket or DHT provider
    /// records; peer exchange inside the swarm finds more), or add providers to a download in
    /// progress. Progress, completion and failure arrive as [`Event::Swarm`]; the blob is then
    /// served to others (seeding) until [`cancel_blob`](Self::cancel_blob).
    pub fn fetch(
        &mut self,
        now: Instant,
        hash: swarm::Hash,
        providers: Vec<(PeerId, Vec<SocketAddr>)>,
    ) -> Result<(), SwarmError> {
        self.with_swarm(now, |s, cx| s.fetch(cx, hash, providers))
    }

    /// Command: serve blob `hash`, complete in the blob storage, to peers that ask.
    pub fn serve(&mut self, now: Instant, hash: swarm::Hash) -> Result<(), SwarmError> {
        self.with_swarm(now, |s, cx| s.serve(cx, hash))
    }

    /// Command: stop downloading or serving `hash`. False if it had no swarm.
    pub fn cancel_blob(&mut self, now: Instant, hash: &swarm::Hash) -> bool {
        self.with_swarm(now, |s, cx| s.cancel(cx, hash))
    }

    /// Output: the next message to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        let Some(t) = self.out.transmits.pop_front() else {
            release_burst(&mut self.out.transmits);
            return None;
        };
        if !is_housekeeping(&t.message)
            && let Some(peer) = self.peers.get_mut(&t.to)
        {
            peer.last_active = self.now.max(peer.last_active);
        }
        Some(t)
    }

    /// Output: the next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        let event = self.out.events.pop_front();
        if event.is_none() {
            release_burst(&mut self.out.events);
        }
        event
    }

    /// Output: when to call [`handle_timeout`](Self::handle_timeout) next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let hello = self.hello_deadlines.first().map(|(d, _)| *d);
        let waiting = self
            .out
            .waiting
            .values()
            .map(|w| w.since + self.config.dial_timeout)
            .min();
        let hello = hello
            .into_iter()
            .chain(waiting)
            .chain(self.next_prune)
            .chain(self.next_outbound)
            .chain(self.out.wot.poll_timeout())
            .min();
        let protocols = self
            .protocols()
            .into_iter()
            .filter_map(|p| p.poll_timeout());
        hello.into_iter().chain(protocols).min()
    }

    fn advance(&mut self, now: Instant) {
        // Time never runs backwards inside the node, whatever the driver does.
        self.now = self.now.max(now);
    }

    /// Sends a node-level message (`Hello`) on a connection that need not be ready yet.
    fn send(&mut self, to: PeerId, message: Message) {
        self.out.push_transmit(Transmit { to, message });
    }

    fn handle_hello(&mut self, from: PeerId, hello: Hello) {
        if !hello.versions.contains(&PROTOCOL_VERSION) {
            let reason = format!(
                "no common protocol version (they speak {:?}, we speak {PROTOCOL_VERSION})",
                hello.versions
            );
            return self.reject(from, CloseReason::BadHello(reason));
        }
        if let Err(e) = hello.stamp.verify(&from, self.config.difficulty) {
            return self.reject(from, CloseReason::BadHello(e.to_string()));
        }
        let Some(peer) = self.peers.get_mut(&from) else {
            return;
        };
        if let Some(d) = peer.hello_deadline.take() {
            self.hello_deadlines.remove(&(d, from));
        }
        let info = &mut peer.info;
        info.ready = true;
        info.listen_addrs = hello.listen_addrs.into_iter().collect();
        info.observed_us = Some(hello.observed_addr);
        info.capabilities = hello.capabilities;
        info.agent = hello.agent;
        info.stamp = Some(hello.stamp);
        let info = info.clone();
        self.out.set_link(from, Link::Ready(info.addr.ip()));
        self.out.flush(from);
        let event = PeerEvent::Ready(Box::new(info.clone()));
        self.out.push_event(Event::PeerReady { peer: from, info });
        self.for_each_protocol(|p, cx| p.handle_peer_event(cx, &event));
    }

    /// Our `Hello` for a connection that comes from `observed`.
    fn hello(&self, observed: SocketAddr) -> Hello {
        let capabilities = if self.superpeers.is_serving() {
            self.config.capabilities | Capabilities::SUPER_PEER
        } else {
            self.config.capabilities
        };
        Hello {
            versions: vec![PROTOCOL_VERSION],
            capabilities,
            listen_addrs: self.config.listen_addrs.clone(),
            observed_addr: observed,
            stamp: self.stamp,
            agent: self.config.agent.clone(),
        }
    }

    /// The `Hello` a ready peer sends on a connection that replaced its old one: checked like
    /// the first; it refreshes what the peer says about itself.
    fn handle_rehello(&mut self, from: PeerId, hello: Hello) {
        if let Err(e) = hello.stamp.verify(&from, self.config.difficulty) {
            return self.reject(from, CloseReason::BadHello(e.to_string()));
        }
        let Some(peer) = self.peers.get_mut(&from) else {
            return;
        };
        let info = &mut peer.info;
        info.listen_addrs = hello.listen_addrs.into_iter().collect();
        info.observed_us = Some(hello.observed_addr);
        info.capabilities = hello.capabilities;
        info.agent = hello.agent;
    }

    fn violation(&mut self, from: PeerId, what: &str) {
        self.reject(from, CloseReason::Violation(what.to_string()));
    }

    fn reject(&mut self, peer: PeerId, reason: CloseReason) {
        self.stats.violations += 1;
        self.out
            .reputation
            .observe(self.now, peer, Observation::Violation);
        self.remove_peer(peer);
        self.out.push_event(Event::Close { peer, reason });
    }

    fn remove_peer(&mut self, peer: PeerId) {
        let Some(p) = self.peers.remove(&peer) else {
            return;
        };
        if let Some(d) = p.hello_deadline {
            self.hello_deadlines.remove(&(d, peer));
        }
        self.out.remove_link(&peer);
        if p.info.ready {
            self.out.push_event(Event::PeerGone { peer });
            let event = PeerEvent::Gone { peer };
            self.for_each_protocol(|p, cx| p.handle_peer_event(cx, &event));
        } else if self.out.waiting.remove(&peer).is_some() {
            let event = PeerEvent::Unreachable { peer };
            self.for_each_protocol(|p, cx| p.handle_peer_event(cx, &event));
        }
    }

    /// A peer we were dialing cannot be reached.
    fn unreachable(&mut self, peer: PeerId) {
        self.out.remove_link(&peer);
        self.out.waiting.remove(&peer);
        let event = PeerEvent::Unreachable { peer };
        self.for_each_protocol(|p, cx| p.handle_peer_event(cx, &event));
    }

    /// Runs a Kademlia command with a context.
    fn with_kad<R>(&mut self, now: Instant, f: impl FnOnce(&mut Kad, &mut Context<'_>) -> R) -> R {
        self.advance(now);
        let mut cx = context!(self);
        f(&mut self.kad, &mut cx)
    }

    /// Runs a pub/sub command with a context.
    fn with_pubsub<R>(
        &mut self,
        now: Instant,
        f: impl FnOnce(&mut PubSub, &mut Context<'_>) -> R,
    ) -> R {
        self.advance(now);
        let mut cx = context!(self);
        f(&mut self.pubsub, &mut cx)
    }

    /// Runs a swarm command with a context.
    fn with_swarm<R>(
        &mut self,
        now: Instant,
        f: impl FnOnce(&mut Swarm, &mut Context<'_>) -> R,
    ) -> R {
        self.advance(now);
        let mut cx = context!(self);
        f(&mut self.swarm, &mut cx)
    }

    /// Every sub-protocol, in a fixed order. This and [`for_each_protocol`](Self::for_each_protocol)
    /// are the two places that list them.
    fn protocols(&self) -> [&dyn AnyProtocol; 10] {
        [
            &self.ping,
            &self.punch,
            &self.kad,
            &self.pex,
            &self.gossip,
            &self.pubsub,
            &self.swarm,
            &self.docs,
            &self.keeper,
            &self.superpeers,
        ]
    }

    /// Runs `f` on every sub-protocol, in the order of [`protocols`](Self::protocols).
    fn for_each_protocol(&mut self, mut f: impl FnMut(&mut dyn AnyProtocol, &mut Context<'_>)) {
        let mut cx = context!(self);
        f(&mut self.ping, &mut cx);
        f(&mut self.punch, &mut cx);
        f(&mut self.kad, &mut cx);
        f(&mut self.pex, &mut cx);
        f(&mut self.gossip, &mut cx);
        f(&mut self.pubsub, &mut cx);
        f(&mut self.swarm, &mut cx);
        f(&mut self.docs, &mut cx);
        f(&mut self.keeper, &mut cx);
        f(&mut self.superpeers, &mut cx);
    }
}

/// Entries a drained output queue keeps room for between drains.
const KEPT_QUEUE_ROOM: usize = 4;

/// Gives back the room a burst of outputs made (a joining node sends dozens of requests at
/// once) when the queue has been drained: a simulator holds a hundred thousand nodes whose
/// queues are empty nearly all the time.
fn release_burst<T>(queue: &mut std::collections::VecDeque<T>) {
    if queue.capacity() > KEPT_QUEUE_ROOM {
        queue.shrink_to(KEPT_QUEUE_ROOM);
    }
}

/// Messages that keep a connection alive but do not make it useful: they do not reset its
/// idle time.
fn is_housekeeping(msg: &Message) -> bool {
    matches!(msg, Message::Ping(_) | Message::Pex(_))
}

/// Shortens `s` to at most `max` bytes without splitting a character.
fn truncate_utf8(s: &mut String, max: usize) {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
}

/// [`Protocol`] without its message type, so protocols can be visited uniformly.
trait AnyProtocol {
    fn handle_peer_event(&mut self, cx: &mut Context<'_>, event: &PeerEvent);
    fn handle_timeout(&mut self, cx: &mut Context<'_>);
    fn poll_timeout(&self) -> Option<Instant>;
}

impl<P: Protocol> AnyProtocol for P {
    fn handle_peer_event(&mut self, cx: &mut Context<'_>, event: &PeerEvent) {
        Protocol::handle_peer_event(self, cx, event);
    }
    fn handle_timeout(&mut self, cx: &mut Context<'_>) {
        Protocol::handle_timeout(self, cx);
    }
    fn poll_timeout(&self) -> Option<Instant> {
        Protocol::poll_timeout(self)
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
pub(crate) mod tests_support;

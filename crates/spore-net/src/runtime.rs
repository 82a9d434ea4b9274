//! The driver task: owns the sans-IO [`Node`], the QUIC connections and the timers.
//!
//! One task runs [`Runtime::run`]. Everything that happens — a connection established, a frame
//! decoded, a command from a [`NodeHandle`](crate::NodeHandle), the node's timer — arrives as an
//! [`Input`] on one bounded channel or as the timer firing. After each input the runtime drains
//! the node's transmits and events, as spore-core's driving contract requires. Connection tasks
//! feed the channel with `send().await`, so a busy runtime slows readers down and QUIC flow
//! control pushes back on the peers; nothing grows without bound.
//!
//! Outgoing frames go to a bounded queue per connection. When a peer reads too slowly the queue
//! fills: past three quarters full, pub/sub messages and gossip are shed first (gossip from other
//! peers repairs them); when it is full, any frame is dropped.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use spore_core::doc::sync::SyncError;
use spore_core::doc::{Access, Change, DocId, Document, Edit};
use spore_core::gossip::{self, SearchError, ShareError};
use spore_core::kad::{self, Key, QueryId, QueryResult, QueryStats};
use spore_core::nat::punch;
use spore_core::node::{CloseReason, ConnectionEvent, Direction, Event, PeerInfo, Stats};
use spore_core::pubsub::{self, PubSubError, Published};
use spore_core::swarm::{self, PeerView, SwarmError, SwarmInfo};
use spore_core::time::Instant;
use spore_core::trust::reputation::{Observation, Standing};
use spore_core::trust::wot::{self, GraphEntry, TrustError};
use spore_core::wire::{Message, WireError};
use spore_core::{Keypair, Node, PeerId};
use spore_core::{pex, ping};
use tokio::sync::{broadcast, mpsc, oneshot};
use tracing::{debug, info, warn};

use crate::config::{Limits, NetConfig};
use crate::conn::{self, close_code};
use crate::error::{DialError, RequestError};
use crate::resources::{Memory, Scope, Use, Windows};
use crate::search::{SearchStream, Searches};

/// Everything the runtime reacts to.
// Messages are most inputs; boxing them would cost an allocation each.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Input {
    /// A connection finished its TLS handshake; the peer's key is verified.
    Connected {
        conn: quinn::Connection,
        peer: PeerId,
        direction: Direction,
    },
    /// An outbound dial failed before a connection existed.
    DialFailed { peer: PeerId, error: DialError },
    /// A connection closed.
    Closed {
        peer: PeerId,
        conn_id: usize,
        reason: String,
        /// The peer closed it as the duplicate of a simultaneous dial: the connection both
        /// sides keep is already up at the peer and on its way here.
        duplicate: bool,
    },
    /// A message decoded from a connection's control stream.
    Message {
        peer: PeerId,
        conn_id: usize,
        msg: Message,
        /// The memory the message holds until it is handled.
        memory: crate::resources::Reservation,
    },
    /// Bytes from a peer were not valid wire format.
    WireError {
        peer: PeerId,
        conn_id: usize,
        error: WireError,
    },
    /// A request from a handle.
    Command(Command),
}

/// The web of trust, as [`NodeHandle::trust_status`](crate::NodeHandle::trust_status) reports it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TrustStatus {
    /// The identities this node vouches for.
    pub vouches: Vec<PeerId>,
    /// How many links from this node its graph reaches.
    pub depth: u8,
    /// Every identity the node trusts within `depth`, nearest first, with who vouches for it.
    pub graph: Vec<GraphEntry>,
    /// Statements held (the node's own and those of identities within `depth - 1`).
    pub statements: usize,
    /// Closed pub/sub topics and the trust depth each requires.
    pub closed_topics: Vec<(String, u8)>,
    /// Counters.
    pub stats: wot::Stats,
}

/// Requests from [`NodeHandle`](crate::NodeHandle)s.
pub(crate) enum Command {
    /// Keep a connection to `peer` (dialed at `addrs` with backoff), like a bootstrap peer.
    Keep {
        peer: PeerId,
        addrs: Vec<SocketAddr>,
        reply: oneshot::Sender<Result<(), spore_core::node::KeepError>>,
    },
    SetRelays {
        relays: Vec<PeerId>,
    },
    SetPunchCandidates {
        addrs: Vec<SocketAddr>,
        mapping: spore_core::nat::Mapping,
    },
    /// The TURN server allocated `addr` for us (or the allocation is gone).
    SetTurnCandidate {
        addr: Option<SocketAddr>,
    },
    /// Birthday probing found a way to `addr`: dial `peer` there.
    BirthdayDial {
        peer: PeerId,
        addr: SocketAddr,
    },
    /// The gateway now forwards `addr` to us (or no longer forwards anything).
    SetMappedAddr {
        addr: Option<SocketAddr>,
    },
    Dial {
        peer: PeerId,
        addr: SocketAddr,
        reply: oneshot::Sender<Result<(), DialError>>,
    },
    Ping {
        peer: PeerId,
        reply: oneshot::Sender<Result<Duration, RequestError>>,
    },
    Peers {
        reply: oneshot::Sender<Vec<PeerInfo>>,
    },
    /// The credit ledger.
    Ledger {
        reply: oneshot::Sender<Vec<swarm::LedgerEntry>>,
    },
    /// Every peer in the reputation table, with its standing now.
    Reputation {
        reply: oneshot::Sender<Vec<(PeerId, Standing)>>,
    },
    TrustVouch {
        peer: PeerId,
        reply: oneshot::Sender<Result<bool, TrustError>>,
    },
    TrustRevoke {
        peer: PeerId,
        reply: oneshot::Sender<bool>,
    },
    TrustChain {
        peer: PeerId,
        depth: u8,
        reply: oneshot::Sender<Result<Option<Vec<PeerId>>, TrustError>>,
    },
    TrustStatus {
        reply: oneshot::Sender<TrustStatus>,
    },
    CloseTopic {
        topic: String,
        depth: u8,
        reply: oneshot::Sender<Result<(), PubSubError>>,
    },
    /// Something the runtime saw a peer do (e.g. relay for us).
    Observe {
        peer: PeerId,
        what: Observation,
    },
    Status {
        reply: oneshot::Sender<Status>,
    },
    Connection {
        peer: PeerId,
        /// The caller will move bulk data on it (an application stream): grow its windows.
        bulk: bool,
        reply: oneshot::Sender<Result<quinn::Connection, RequestError>>,
    },
    Kad {
        op: KadOp,
        reply: oneshot::Sender<Result<KadAnswer, RequestError>>,
    },
    Subscribe {
        topic: String,
        reply: oneshot::Sender<Result<(), PubSubError>>,
    },
    Unsubscribe {
        topic: String,
        reply: oneshot::Sender<bool>,
    },
    Publish {
        topic: String,
        data: Bytes,
        reply: oneshot::Sender<Result<Published, PubSubError>>,
    },
    Share {
        name: String,
        content: [u8; 32],
        size: u64,
        reply: oneshot::Sender<Result<(), ShareError>>,
    },
    Unshare {
        content: [u8; 32],
        reply: oneshot::Sender<bool>,
    },
    Search {
        words: Vec<String>,
        reply: oneshot::Sender<Result<SearchStream, SearchError>>,
    },
    FetchBlob {
        hash: swarm::Hash,
        providers: Vec<(PeerId, Vec<SocketAddr>)>,
        reply: oneshot::Sender<Result<(), SwarmError>>,
    },
    ServeBlob {
        hash: swarm::Hash,
        reply: oneshot::Sender<Result<(), SwarmError>>,
    },
    CancelBlob {
        hash: swarm::Hash,
        reply: oneshot::Sender<bool>,
    },
    SwarmInfo {
        hash: swarm::Hash,
        reply: oneshot::Sender<Option<(SwarmInfo, Vec<PeerView>)>>,
    },
    Doc(DocOp),
    SendRaw {
        peer: PeerId,
        msg: Box<Message>,
        reply: oneshot::Sender<Result<(), RequestError>>,
    },
    Shutdown {
        reply: oneshot::Sender<()>,
    },
}

/// A document command from a handle.
pub(crate) enum DocOp {
    Create {
        nonce: u64,
        reply: oneshot::Sender<Result<DocId, SyncError>>,
    },
    Open {
        access: Box<Access>,
        peers: Vec<PeerId>,
        reply: oneshot::Sender<Result<DocId, SyncError>>,
    },
    Edit {
        doc: DocId,
        edits: Vec<Edit>,
        reply: oneshot::Sender<Result<Change, SyncError>>,
    },
    AddWriter {
        doc: DocId,
        peer: PeerId,
        reply: oneshot::Sender<Result<Access, SyncError>>,
    },
    Sync {
        peer: PeerId,
        doc: DocId,
        reply: oneshot::Sender<Result<(), SyncError>>,
    },
    Get {
        doc: DocId,
        reply: oneshot::Sender<Option<Box<Document>>>,
    },
    Close {
        doc: DocId,
        depth: u8,
        reply: oneshot::Sender<Result<(), SyncError>>,
    },
}

/// A Kademlia command from a handle.
pub(crate) enum KadOp {
    Bootstrap,
    FindNode(Key),
    FindPeer(PeerId),
    PutValue { name: String, value: bytes::Bytes },
    GetValue { publisher: PeerId, name: String },
    Provide([u8; 32]),
    FindProviders([u8; 32]),
}

/// A finished Kademlia lookup: its result and how it went.
pub type KadAnswer = (QueryResult, QueryStats);

/// A snapshot of the node's state.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Status {
    /// This node's id.
    pub peer_id: PeerId,
    /// Addresses the QUIC endpoints are bound to.
    pub listen_addrs: Vec<SocketAddr>,
    /// Addresses peers have told us they see us at (our reflexive addresses), most reported
    /// first.
    pub observed_addrs: Vec<SocketAddr>,
    /// Open connections (handshaking ones included).
    pub connections: usize,
    /// Peers whose `Hello` was verified.
    pub ready_peers: usize,
    /// Time since the node started.
    pub uptime_secs: u64,
    /// Counters kept by the protocol core.
    pub core: Stats,
    /// The DHT: routing table, records, counters.
    pub dht: DhtStatus,
    /// Counters kept by the runtime.
    pub runtime: RuntimeStats,
    /// Pub/sub: subscriptions, meshes, counters.
    #[serde(default)]
    pub pubsub: PubSubStatus,
    /// The gossip overlay: neighbors, passive view, counters.
    #[serde(default)]
    pub overlay: OverlayStatus,
    /// Blob swarms: downloads and blobs served, counters.
    #[serde(default)]
    pub swarm: SwarmStatus,
    /// NAT behaviour as STUN servers report it, and the STUN this node answered.
    #[serde(default)]
    pub nat: crate::nat::NatStatus,
    /// Relaying: what this node relays for others, and where it holds reservations.
    #[serde(default)]
    pub relay: crate::relay::RelayStatus,
    /// Hole punching: relayed connections upgraded to direct paths.
    #[serde(default)]
    pub punch: spore_core::nat::punch::Stats,
    /// Super-peers: whether this node serves as one (and its leaves), or the ones it holds.
    #[serde(default)]
    pub superpeer: spore_core::superpeer::Stats,
    /// Port mapping at the gateway (UPnP-IGD, NAT-PMP, PCP).
    #[serde(default)]
    pub port_map: crate::portmap::PortMapStatus,
    /// The TURN allocation, if a TURN server is configured.
    #[serde(default)]
    pub turn: crate::turn::TurnStatus,
    /// Every limit, with what is in use against it.
    #[serde(default)]
    pub resources: ResourceStatus,
    /// Bootstrap peers found in DNS TXT records, if names are configured.
    #[serde(default)]
    pub dns: Option<crate::dns::DnsStatus>,
}

/// The resource manager's part of [`Status`]: the memory budget by use, and every limit the
/// node enforces with what is in use against it.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct ResourceStatus {
    /// The memory budget (see [`crate::resources`]).
    pub memory: crate::resources::MemoryUse,
    /// Every limit.
    pub limits: Vec<LimitUse>,
}

/// One limit in [`ResourceStatus`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LimitUse {
    /// What is limited.
    pub name: String,
    /// Where the limit applies: `node`, `connection`, `peer`, `IP`, `swarm`, `circuit`, ….
    pub scope: String,
    /// In use now (for a per-scope limit, the most any one holds); `None` where the runtime
    /// cannot see it.
    pub used: Option<u64>,
    /// The limit.
    pub limit: u64,
    /// The unit of `used` and `limit`.
    pub unit: String,
}

impl LimitUse {
    fn new(name: &str, scope: &str, used: Option<u64>, limit: u64, unit: &str) -> Self {
        Self {
            name: name.into(),
            scope: scope.into(),
            used,
            limit,
            unit: unit.into(),
        }
    }
}

/// The blob swarms' part of [`Status`].
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct SwarmStatus {
    /// Every swarm: downloads in progress and blobs served.
    pub swarms: Vec<SwarmSummary>,
    /// Counters: bytes up and down, requests, bad data, ….
    pub stats: swarm::Stats,
}

/// One swarm in [`SwarmStatus`].
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SwarmSummary {
    /// The blob's hash, hex.
    pub hash: String,
    /// Its size, once proven.
    pub size: Option<u64>,
    /// Bytes verified here.
    pub verified_bytes: u64,
    /// Still downloading (false: serving only).
    pub fetching: bool,
    /// Peers in the swarm.
    pub peers: usize,
    /// Peers dropped for bad data.
    pub bad_peers: usize,
}

/// The gossip overlay's part of [`Status`].
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct OverlayStatus {
    /// Whether the overlay runs (`gossip::Config::enabled`); when not, the views stay empty and
    /// searches fail.
    pub enabled: bool,
    /// The active view: the neighbors queries travel over, in id order. Symmetric: each of them
    /// has this node in its own active view.
    pub active: Vec<PeerId>,
    /// Records in the passive view: candidates to replace neighbors that fail.
    pub passive: usize,
    /// Counters: joins, neighbor requests, shuffles, queries and hits sent, received, dropped.
    pub stats: gossip::Stats,
}

/// The pub/sub part of [`Status`].
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct PubSubStatus {
    /// The topics this node subscribes to, by name.
    pub topics: Vec<TopicStatus>,
    /// Counters: published, delivered, duplicates suppressed, invalid, rejected, ….
    pub stats: pubsub::Stats,
}

/// One subscribed topic in [`PubSubStatus`].
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct TopicStatus {
    /// The topic's name.
    pub topic: String,
    /// Peers in this node's mesh for the topic: they get every message in full.
    pub mesh_peers: usize,
    /// Connected peers that announced the topic.
    pub topic_peers: usize,
}

/// The DHT part of [`Status`].
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct DhtStatus {
    /// Server or client.
    pub mode: kad::Mode,
    /// Whether a bootstrap lookup has reached other nodes.
    pub bootstrapped: bool,
    /// Entries in the routing table.
    pub table_size: usize,
    /// `(bucket index, entries)` for the non-empty buckets, nearest first.
    pub buckets: Vec<(usize, usize)>,
    /// Records stored for the network.
    pub records: kad::store::StoreCounts,
    /// Lookups running.
    pub running_queries: usize,
    /// Counters.
    pub stats: kad::KadStats,
}

/// Counters kept by the runtime.
#[derive(Debug, Clone, Copy, Default, serde::Serialize, serde::Deserialize)]
pub struct RuntimeStats {
    /// Connections closed because the peer sent bytes that are not valid wire format.
    pub wire_errors: u64,
    /// Control frames dropped because a connection's send queue was full.
    pub frames_dropped: u64,
    /// Pub/sub frames (messages and gossip) shed because a connection's send queue was more
    /// than three quarters full.
    #[serde(default)]
    pub pubsub_frames_shed: u64,
    /// Connections closed as duplicates of another connection to the same peer.
    pub duplicates_closed: u64,
    /// Incoming connections refused by a limit.
    pub refused: u64,
    /// Inbound connections closed to make room for a newcomer (see
    /// [`spore_core::trust::eviction`]).
    #[serde(default)]
    pub evicted: u64,
}

/// Connection counts shared with the accept loops, which refuse over-limit connections before
/// their handshake costs anything.
#[derive(Debug, Default)]
pub(crate) struct ConnTable {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
    pub(crate) refused: u64,
}

impl ConnTable {
    /// Whether one more connection from `ip` fits. The per-IP limit does not apply to loopback
    /// addresses: every node on this machine shares them, and whoever can send from them is
    /// already inside the machine.
    pub(crate) fn admits(&self, ip: IpAddr, limits: &Limits) -> bool {
        self.total < limits.max_connections
            && (ip.is_loopback() || self.per_ip.get(&ip).copied().unwrap_or(0) < limits.max_per_ip)
    }

    fn add(&mut self, ip: IpAddr) {
        self.total += 1;
        *self.per_ip.entry(ip).or_default() += 1;
    }

    fn remove(&mut self, ip: IpAddr) {
        self.total = self.total.saturating_sub(1);
        if let Some(n) = self.per_ip.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                self.per_ip.remove(&ip);
            }
        }
    }
}

pub(crate) fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

struct Entry {
    conn: quinn::Connection,
    direction: Direction,
    frames: mpsc::Sender<conn::Queued>,
    /// Swarm data, on its own stream so that bulk bytes never hold up control messages.
    bulk: mpsc::Sender<conn::Queued>,
    /// The connection's QUIC windows and what they reserve.
    windows: Arc<Windows>,
    /// The connection's memory scope (its frames, both ways).
    scope: Scope,
    /// When the connection was taken in.
    since: tokio::time::Instant,
}

/// Maps the runtime's clock to spore-core's [`Instant`]: microseconds since the UNIX epoch, read
/// once from the wall clock at start and advanced by the monotonic clock, so it never jumps.
/// How long a replaced connection stays open to deliver what was in flight on it.
const DRAIN_GRACE: Duration = Duration::from_secs(2);
/// Anchor peers saved (Bitcoin Core keeps two).
const ANCHORS: usize = 2;
/// How often the credit ledger and the anchor peers are saved while the node runs.
const LEDGER_SAVE_EVERY: Duration = Duration::from_secs(60);

#[derive(Clone, Copy)]
pub(crate) struct Clock {
    start: tokio::time::Instant,
    start_unix_micros: u64,
}

impl Clock {
    pub(crate) fn new() -> Self {
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let start_unix_micros = u64::try_from(unix.as_micros()).unwrap_or(u64::MAX);
        Self {
            start: tokio::time::Instant::now(),
            start_unix_micros,
        }
    }

    pub(crate) fn now(&self) -> Instant {
        let elapsed = u64::try_from(self.start.elapsed().as_micros()).unwrap_or(u64::MAX);
        Instant::from_micros(self.start_unix_micros.saturating_add(elapsed))
    }

    pub(crate) fn to_tokio(self, t: Instant) -> tokio::time::Instant {
        let offset = t.as_micros().saturating_sub(self.start_unix_micros);
        self.start + Duration::from_micros(offset)
    }

    fn uptime(&self) -> Duration {
        self.start.elapsed()
    }
}

pub(crate) struct Runtime {
    pub(crate) node: Node,
    pub(crate) keypair: Keypair,
    pub(crate) config: NetConfig,
    pub(crate) clock: Clock,
    pub(crate) endpoints: Vec<quinn::Endpoint>,
    pub(crate) inputs: mpsc::Sender<Input>,
    pub(crate) table: Arc<Mutex<ConnTable>>,
    pub(crate) events: broadcast::Sender<Event>,
    pub(crate) app_streams: mpsc::Sender<(PeerId, quinn::RecvStream)>,
    conns: BTreeMap<PeerId, Entry>,
    dials: BTreeMap<PeerId, Vec<oneshot::Sender<Result<(), DialError>>>>,
    /// Connections replaced by another to the same peer, closing after a grace period in which
    /// what was in flight on them still arrives: connection id → peer.
    draining: BTreeMap<usize, PeerId>,
    /// Dial attempts under way per peer (a direct one and a relayed one may run at once); a
    /// failure fails the waiting dials only when it was the last.
    attempts: BTreeMap<PeerId, usize>,
    pings: BTreeMap<(PeerId, u64), oneshot::Sender<Result<Duration, RequestError>>>,
    queries: BTreeMap<QueryId, oneshot::Sender<Result<KadAnswer, RequestError>>>,
    searches: Searches,
    /// Blobs this node has announced itself as a provider of (swarms hold verified data).
    provided: std::collections::BTreeSet<swarm::Hash>,
    pub(crate) peer_book: Option<spore_store::records::PeerBook>,
    /// What the STUN sockets and the NAT probe report.
    pub(crate) nat: Arc<crate::nat::NatShared>,
    /// Relay state shared with the relay streams' tasks.
    pub(crate) relay: Arc<crate::relay::RelayShared>,
    /// The gateway's port mapping, if the node asked for one.
    pub(crate) port_map: crate::portmap::PortMap,
    /// The addresses announced from the bound sockets alone; a mapped address goes before them.
    bound_announced: Vec<SocketAddr>,
    /// The IPv4 endpoint's socket, where birthday probing sends and redirects.
    pub(crate) socket_v4: Option<Arc<crate::nat::NodeSocket>>,
    /// One birthday-probing session at a time.
    birthday_permits: Arc<tokio::sync::Semaphore>,
    /// Reflexive addresses from STUN, and the TURN relayed address: the candidates the node
    /// cannot see itself, in that order.
    stun_candidates: Vec<SocketAddr>,
    turn_candidate: Option<SocketAddr>,
    /// The TURN task, if TURN is on, and what it shows in `status`.
    pub(crate) turn: Option<mpsc::Sender<crate::turn::TurnCommand>>,
    pub(crate) turn_status: Arc<Mutex<crate::turn::TurnStatus>>,
    /// What DNS bootstrap found, when names are configured.
    pub(crate) dns_status: Option<Arc<Mutex<crate::dns::DnsStatus>>>,
    /// The memory budget (see [`crate::resources`]).
    pub(crate) memory: Memory,
    /// Orders network groups for inbound eviction; secret, so peers cannot predict it.
    eviction_key: u64,
    stats: RuntimeStats,
}

impl Runtime {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        node: Node,
        keypair: Keypair,
        config: NetConfig,
        clock: Clock,
        endpoints: Vec<quinn::Endpoint>,
        inputs: mpsc::Sender<Input>,
        table: Arc<Mutex<ConnTable>>,
        events: broadcast::Sender<Event>,
        app_streams: mpsc::Sender<(PeerId, quinn::RecvStream)>,
    ) -> Self {
        let bound_announced = node.config().listen_addrs.clone();
        let memory = Memory::new(config.limits.max_memory);
        Self {
            node,
            keypair,
            config,
            clock,
            endpoints,
            inputs,
            table,
            events,
            app_streams,
            conns: BTreeMap::new(),
            dials: BTreeMap::new(),
            attempts: BTreeMap::new(),
            draining: BTreeMap::new(),
            pings: BTreeMap::new(),
            queries: BTreeMap::new(),
            searches: Searches::default(),
            provided: Default::default(),
            peer_book: None,
            nat: Arc::default(),
            relay: Arc::new(crate::relay::RelayShared::new(
                &crate::relay::RelayConfig::default(),
                None,
                clock,
                memory.clone(),
            )),
            port_map: crate::portmap::PortMap::off(),
            bound_announced,
            socket_v4: None,
            birthday_permits: Arc::new(tokio::sync::Semaphore::new(1)),
            stun_candidates: Vec::new(),
            turn_candidate: None,
            turn: None,
            turn_status: Arc::default(),
            dns_status: None,
            memory,
            eviction_key: rand_core::RngCore::next_u64(&mut rand_core::OsRng),
            stats: RuntimeStats::default(),
        }
    }

    pub(crate) async fn run(mut self, mut inputs: mpsc::Receiver<Input>) {
        // Whatever the node asked for before the runtime started (dials to kept peers).
        self.drain();
        let mut next_ledger_save = tokio::time::Instant::now() + LEDGER_SAVE_EVERY;
        loop {
            if tokio::time::Instant::now() >= next_ledger_save {
                next_ledger_save += LEDGER_SAVE_EVERY;
                self.save_ledger();
                self.save_anchors();
            }
            let wake = self.node.poll_timeout().map(|t| self.clock.to_tokio(t));
            let input = tokio::select! {
                input = inputs.recv() => input,
                _ = sleep_until(wake) => {
                    self.node.handle_timeout(self.clock.now());
                    self.drain();
                    continue;
                }
            };
            match input {
                Some(Input::Command(Command::Shutdown { reply })) => {
                    self.shutdown().await;
                    let _ = reply.send(());
                    return;
                }
                Some(input) => self.handle_input(input),
                None => return,
            }
            self.drain();
        }
    }

    fn handle_input(&mut self, input: Input) {
        let now = self.clock.now();
        match input {
            Input::Connected {
                conn,
                peer,
                direction,
            } => {
                if direction == Direction::Outbound
                    && let Some(n) = self.attempts.get_mut(&peer)
                {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        self.attempts.remove(&peer);
                    }
                }
                self.register(conn, peer, direction);
            }
            Input::DialFailed { peer, error } => {
                debug!(%peer, %error, "dial failed");
                let left = self.attempts.get_mut(&peer).map(|n| {
                    *n = n.saturating_sub(1);
                    *n
                });
                if left == Some(0) {
                    self.attempts.remove(&peer);
                }
                if left.unwrap_or(0) == 0 {
                    self.dial_failed(peer, error);
                }
            }
            Input::Closed {
                peer,
                conn_id,
                reason,
                duplicate,
            } => {
                self.draining.remove(&conn_id);
                if self
                    .conns
                    .get(&peer)
                    .is_some_and(|e| e.conn.stable_id() == conn_id)
                {
                    debug!(%peer, %reason, "connection closed");
                    self.relay.peer_gone(&peer);
                    self.unregister(peer);
                    self.node
                        .handle_connection_event(now, ConnectionEvent::Closed { peer });
                    // After a simultaneous dial the kept connection answers waiting dials
                    // when its peer is ready; only a real close fails them.
                    if !duplicate {
                        self.finish_dials(peer, Err(DialError::Closed { peer, reason }));
                    }
                }
            }
            Input::Message {
                peer,
                conn_id,
                msg,
                memory: _memory,
            } => {
                // A replaced connection still delivers what was in flight on it.
                let current = self
                    .conns
                    .get(&peer)
                    .is_some_and(|e| e.conn.stable_id() == conn_id);
                let draining = self.draining.get(&conn_id) == Some(&peer)
                    && self.node.punch_in_progress(&peer, now);
                if current || draining {
                    self.node.handle_message(now, peer, msg);
                }
            }
            Input::WireError {
                peer,
                conn_id,
                error,
            } => {
                if self
                    .conns
                    .get(&peer)
                    .is_some_and(|e| e.conn.stable_id() == conn_id)
                {
                    warn!(%peer, %error, "closing connection: invalid wire data");
                    self.stats.wire_errors += 1;
                    self.close(peer, close_code::PROTOCOL, &error.to_string());
                }
            }
            Input::Command(cmd) => self.handle_command(cmd),
        }
    }

    fn handle_command(&mut self, cmd: Command) {
        let now = self.clock.now();
        match cmd {
            Command::Dial { peer, addr, reply } => self.dial(peer, vec![addr], Some(reply)),
            Command::Kad { op, reply } => {
                let started = match op {
                    KadOp::Bootstrap => self.node.bootstrap(now),
                    KadOp::FindNode(key) => self.node.find_node(now, key),
                    KadOp::FindPeer(peer) => self.node.find_peer(now, peer),
                    KadOp::PutValue { name, value } => self.node.put_value(now, &name, value),
                    KadOp::GetValue { publisher, name } => {
                        self.node.get_value(now, publisher, &name)
                    }
                    KadOp::Provide(content) => self.node.provide(now, content),
                    KadOp::FindProviders(content) => self.node.find_providers(now, content),
                };
                match started {
                    Ok(id) => {
                        self.queries.insert(id, reply);
                    }
                    Err(e) => {
                        let _ = reply.send(Err(RequestError::Refused(e.to_string())));
                    }
                }
            }
            Command::Subscribe { topic, reply } => {
                let _ = reply.send(self.node.subscribe(now, &topic));
            }
            Command::Unsubscribe { topic, reply } => {
                let _ = reply.send(self.node.unsubscribe(now, &topic));
            }
            Command::Publish { topic, data, reply } => {
                let _ = reply.send(self.node.publish(now, &topic, data));
            }
            Command::Share {
                name,
                content,
                size,
                reply,
            } => {
                let _ = reply.send(self.node.share_name(name, content, size));
            }
            Command::Unshare { content, reply } => {
                let _ = reply.send(self.node.unshare_name(&content));
            }
            Command::Search { words, reply } => {
                let started = self.node.search(now, &words).map(|query| {
                    let max_hits = self.node.config().gossip.max_hits_per_query;
                    self.searches.open(query, max_hits)
                });
                // A handle that went away drops the stream; its channel is forgotten later.
                let _ = reply.send(started);
            }
            Command::FetchBlob {
                hash,
                providers,
                reply,
            } => {
                let _ = reply.send(self.node.fetch(now, hash, providers));
            }
            Command::ServeBlob { hash, reply } => {
                let served = self.node.serve(now, hash);
                if served.is_ok() {
                    self.announce(hash);
                }
                let _ = reply.send(served);
            }
            Command::CancelBlob { hash, reply } => {
                self.provided.remove(&hash);
                let _ = reply.send(self.node.cancel_blob(now, &hash));
            }
            Command::SwarmInfo { hash, reply } => {
                let s = self.node.swarm();
                let _ = reply.send(s.info(&hash).map(|i| (i, s.peers(&hash))));
            }
            Command::Doc(op) => self.doc_command(op),
            Command::SendRaw { peer, msg, reply } => {
                let result = if self.conns.contains_key(&peer) {
                    self.transmit(peer, &msg);
                    Ok(())
                } else {
                    Err(RequestError::NotConnected(peer))
                };
                let _ = reply.send(result);
            }
            Command::Ping { peer, reply } => match self.node.ping(now, peer) {
                Ok(nonce) => {
                    self.pings.insert((peer, nonce), reply);
                }
                Err(ping::PingError::NotConnected(_)) => {
                    let _ = reply.send(Err(RequestError::NotConnected(peer)));
                }
                Err(e) => {
                    let _ = reply.send(Err(RequestError::Refused(e.to_string())));
                }
            },
            Command::Peers { reply } => {
                let _ = reply.send(self.node.peers().collect());
            }
            Command::Ledger { reply } => {
                let _ = reply.send(self.node.swarm().ledger());
            }
            Command::Reputation { reply } => {
                let now = self.clock.now();
                let _ = reply.send(self.node.reputation().iter(now).collect());
            }
            Command::TrustVouch { peer, reply } => {
                let _ = reply.send(self.node.trust_vouch(now, peer));
            }
            Command::TrustRevoke { peer, reply } => {
                let _ = reply.send(self.node.trust_revoke(now, &peer));
            }
            Command::TrustChain { peer, depth, reply } => {
                let _ = reply.send(self.node.trust().chain(&peer, depth));
            }
            Command::TrustStatus { reply } => {
                let wot = self.node.trust();
                let _ = reply.send(TrustStatus {
                    vouches: wot.vouches().iter().copied().collect(),
                    depth: wot.config().depth,
                    graph: wot.graph(),
                    statements: wot.held(),
                    closed_topics: self
                        .node
                        .pubsub()
                        .closed_topics()
                        .map(|(t, d)| (t.to_string(), d))
                        .collect(),
                    stats: wot.stats(),
                });
            }
            Command::CloseTopic {
                topic,
                depth,
                reply,
            } => {
                let _ = reply.send(self.node.close_topic(now, &topic, depth));
            }
            Command::Observe { peer, what } => {
                self.node.observe(self.clock.now(), peer, what);
            }
            Command::Status { reply } => {
                let _ = reply.send(self.status());
            }
            Command::Keep { peer, addrs, reply } => {
                let _ = reply.send(self.node.keep_connected(now, peer, addrs));
            }
            Command::SetRelays { relays } => self.node.set_relays(relays),
            Command::SetPunchCandidates { addrs, mapping } => {
                self.stun_candidates = addrs;
                self.update_punch_candidates();
                self.node.set_nat_mapping(mapping);
            }
            Command::SetTurnCandidate { addr } => {
                self.turn_candidate = addr;
                self.update_punch_candidates();
            }
            Command::BirthdayDial { peer, addr } => {
                info!(%peer, %addr, "birthday probing found a path; dialing");
                self.punch_dial(peer, &[addr]);
            }
            Command::SetMappedAddr { addr } => {
                let mut addrs: Vec<SocketAddr> = addr.into_iter().collect();
                for a in &self.bound_announced {
                    if !addrs.contains(a) {
                        addrs.push(*a);
                    }
                }
                self.node.update_listen_addrs(self.clock.now(), addrs);
            }
            Command::Connection { peer, bulk, reply } => {
                let ready = self.node.peer(&peer).is_some_and(|p| p.ready);
                let entry = self.conns.get(&peer).filter(|_| ready);
                if bulk && let Some(e) = entry {
                    e.windows.bulk();
                }
                let conn = entry.map(|e| e.conn.clone());
                let _ = reply.send(conn.ok_or(RequestError::NotConnected(peer)));
            }
            Command::Shutdown { .. } => unreachable!("handled in run"),
        }
    }

    fn doc_command(&mut self, op: DocOp) {
        let now = self.clock.now();
        match op {
            DocOp::Create { nonce, reply } => {
                let _ = reply.send(self.node.doc_create(now, nonce));
            }
            DocOp::Open {
                access,
                peers,
                reply,
            } => {
                let _ = reply.send(self.node.doc_open(now, *access, &peers));
            }
            DocOp::Edit { doc, edits, reply } => {
                let _ = reply.send(self.node.doc_edit(now, &doc, edits));
            }
            DocOp::AddWriter { doc, peer, reply } => {
                let _ = reply.send(self.node.doc_add_writer(now, &doc, peer));
            }
            DocOp::Sync { peer, doc, reply } => {
                let _ = reply.send(self.node.doc_sync(now, peer, doc));
            }
            DocOp::Get { doc, reply } => {
                let _ = reply.send(self.node.docs().doc(&doc).cloned().map(Box::new));
            }
            DocOp::Close { doc, depth, reply } => {
                let _ = reply.send(self.node.doc_close(now, &doc, depth));
            }
        }
    }

    fn status(&self) -> Status {
        let mut observed: BTreeMap<SocketAddr, usize> = BTreeMap::new();
        let mut ready = 0;
        for p in self.node.peers() {
            if p.ready {
                ready += 1;
            }
            if let Some(addr) = p.observed_us {
                *observed.entry(canonical(addr)).or_default() += 1;
            }
        }
        let mut observed: Vec<_> = observed.into_iter().collect();
        observed.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let refused = self.table.lock().map(|t| t.refused).unwrap_or(0);
        Status {
            peer_id: self.keypair.peer_id(),
            listen_addrs: self
                .endpoints
                .iter()
                .filter_map(|e| e.local_addr().ok())
                .collect(),
            observed_addrs: observed.into_iter().map(|(a, _)| a).collect(),
            connections: self.conns.len(),
            ready_peers: ready,
            uptime_secs: self.clock.uptime().as_secs(),
            core: self.node.stats(),
            dht: {
                let kad = self.node.kad();
                DhtStatus {
                    mode: self.node.config().kad.mode,
                    bootstrapped: kad.is_bootstrapped(),
                    table_size: kad.table().len(),
                    buckets: kad.table().bucket_fill(),
                    records: kad.store().len(),
                    running_queries: kad.running_queries(),
                    stats: kad.stats(),
                }
            },
            runtime: RuntimeStats {
                refused,
                ..self.stats
            },
            pubsub: {
                let p = self.node.pubsub();
                PubSubStatus {
                    topics: p
                        .subscriptions()
                        .map(|topic| TopicStatus {
                            topic: topic.to_string(),
                            mesh_peers: p.mesh(topic).count(),
                            topic_peers: p.topic_peers(topic).count(),
                        })
                        .collect(),
                    stats: p.stats(),
                }
            },
            swarm: {
                let s = self.node.swarm();
                SwarmStatus {
                    swarms: s
                        .hashes()
                        .filter_map(|h| s.info(h))
                        .map(|i| SwarmSummary {
                            hash: spore_store::blobs::Hash::from_bytes(i.hash).to_hex(),
                            size: i.size,
                            verified_bytes: i.verified_bytes,
                            fetching: i.fetching,
                            peers: i.peers,
                            bad_peers: i.bad_peers,
                        })
                        .collect(),
                    stats: s.stats(),
                }
            },
            overlay: {
                let g = self.node.gossip();
                OverlayStatus {
                    enabled: g.config().enabled,
                    active: g.active_view().copied().collect(),
                    passive: g.passive_view().count(),
                    stats: g.stats(),
                }
            },
            nat: self.nat.status(&self.config.nat),
            relay: self.relay.status(),
            punch: self.node.punch_stats(),
            superpeer: self.node.superpeer_stats(),
            port_map: self.port_map.status(),
            turn: self
                .turn_status
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            resources: self.resources(),
            dns: self
                .dns_status
                .as_ref()
                .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).clone()),
        }
    }

    /// Every limit with its use, for `status`.
    fn resources(&self) -> ResourceStatus {
        let l = &self.config.limits;
        let n = |x: usize| x as u64;
        let most = |f: &dyn Fn(&Entry) -> usize| n(self.conns.values().map(f).max().unwrap_or(0));
        let (per_ip, inbound) = {
            let mut ips: HashMap<IpAddr, usize> = HashMap::new();
            let mut inbound = 0;
            for e in self.conns.values() {
                let ip = canonical(e.conn.remote_address()).ip();
                if !ip.is_loopback() {
                    *ips.entry(ip).or_default() += 1;
                }
                inbound += usize::from(e.direction == Direction::Inbound);
            }
            (ips.values().copied().max().unwrap_or(0), inbound)
        };
        let memory = self.memory.usage();
        let mut rows = vec![
            LimitUse::new(
                "connections",
                "node",
                Some(n(self.conns.len())),
                n(l.max_connections),
                "connections",
            ),
            LimitUse::new(
                "inbound connections",
                "node",
                Some(n(inbound)),
                n(l.max_inbound),
                "connections",
            ),
            LimitUse::new(
                "connections per IP (loopback exempt)",
                "IP",
                Some(n(per_ip)),
                n(l.max_per_ip),
                "connections",
            ),
            LimitUse::new(
                "handshakes in progress",
                "node",
                None,
                n(l.max_pending_handshakes),
                "handshakes",
            ),
            LimitUse::new("memory", "node", Some(memory.used), memory.limit, "bytes"),
            LimitUse::new(
                "frame memory",
                "connection",
                Some(most(&|e| e.scope.used())),
                n(l.connection_memory),
                "bytes",
            ),
            LimitUse::new(
                "receive window",
                "connection",
                Some(most(&|e| e.windows.current().0 as usize)),
                u64::from(self.config.transport.receive_window),
                "bytes",
            ),
            LimitUse::new(
                "send window",
                "connection",
                Some(most(&|e| e.windows.current().1 as usize)),
                self.config.transport.send_window,
                "bytes",
            ),
            LimitUse::new(
                "control messages per second",
                "connection",
                None,
                u64::from(l.max_messages_per_sec),
                "msg/s",
            ),
            LimitUse::new(
                "queued control frames",
                "connection",
                Some(most(&|e| e.frames.max_capacity() - e.frames.capacity())),
                n(l.max_queued_frames),
                "frames",
            ),
            LimitUse::new(
                "queued bulk frames",
                "connection",
                Some(most(&|e| e.bulk.max_capacity() - e.bulk.capacity())),
                n(l.max_queued_bulk_frames),
                "frames",
            ),
            LimitUse::new(
                "unidirectional streams",
                "connection",
                None,
                u64::from(l.max_uni_streams),
                "streams",
            ),
            LimitUse::new(
                "relay streams",
                "connection",
                None,
                u64::from(l.max_relay_streams),
                "streams",
            ),
            LimitUse::new(
                "application streams waiting",
                "node",
                Some(n(
                    self.app_streams.max_capacity() - self.app_streams.capacity()
                )),
                n(l.max_pending_app_streams),
                "streams",
            ),
            LimitUse::new(
                "inputs waiting for the runtime",
                "node",
                Some(n(self.inputs.max_capacity() - self.inputs.capacity())),
                n(self.inputs.max_capacity()),
                "inputs",
            ),
        ];
        let core = self.node.config();
        rows.push(LimitUse::new(
            "outbound connections (a minimum)",
            "node",
            Some(n(self.conns.len() - inbound)),
            n(core.outbound.min_outbound),
            "connections",
        ));
        rows.push(LimitUse::new(
            "peers known",
            "node",
            Some(n(self.node.peers().count())),
            n(core.max_peers),
            "peers",
        ));
        let store = self.node.kad().store();
        if let Some(sl) = store.limits() {
            let c = store.len();
            rows.push(LimitUse::new(
                "DHT value records",
                "node",
                Some(n(c.values)),
                n(sl.max_values),
                "records",
            ));
            rows.push(LimitUse::new(
                "DHT value records per publisher",
                "peer",
                None,
                n(sl.max_values_per_publisher),
                "records",
            ));
            rows.push(LimitUse::new(
                "DHT provider keys",
                "node",
                Some(n(c.provider_keys)),
                n(sl.max_provider_keys),
                "keys",
            ));
            rows.push(LimitUse::new(
                "DHT providers per key",
                "key",
                None,
                n(sl.max_providers_per_key),
                "records",
            ));
            rows.push(LimitUse::new(
                "DHT peer records",
                "node",
                Some(n(c.peers)),
                n(sl.max_peer_records),
                "records",
            ));
        }
        let pubsub = self.node.pubsub().config();
        rows.push(LimitUse::new(
            "pub/sub messages per second",
            "peer",
            None,
            u64::from(pubsub.max_messages_per_sec),
            "msg/s",
        ));
        rows.push(LimitUse::new(
            "pub/sub message size",
            "message",
            None,
            n(pubsub.max_message_size),
            "bytes",
        ));
        rows.push(LimitUse::new(
            "pub/sub messages cached",
            "node",
            None,
            n(pubsub.max_cached),
            "messages",
        ));
        let swarm = self.node.swarm();
        let sc = swarm.config();
        rows.push(LimitUse::new(
            "swarms",
            "node",
            Some(n(swarm.hashes().count())),
            n(sc.max_swarms),
            "swarms",
        ));
        rows.push(LimitUse::new(
            "peers per swarm",
            "swarm",
            None,
            n(sc.max_peers),
            "peers",
        ));
        rows.push(LimitUse::new(
            "blob size",
            "blob",
            None,
            sc.max_blob_size,
            "bytes",
        ));
        if let Some(rate) = sc.upload_rate {
            rows.push(LimitUse::new("upload rate", "node", None, rate, "bytes/s"));
        }
        if let Some(store) = &self.config.blobs {
            let used = store.used_bytes();
            rows.push(LimitUse::new(
                "blob store",
                "node",
                Some(used),
                store.limits().quota_bytes,
                "bytes",
            ));
        }
        let docs = self.node.docs();
        rows.push(LimitUse::new(
            "documents",
            "node",
            Some(n(docs.docs().count())),
            n(docs.config().max_docs),
            "documents",
        ));
        rows.push(LimitUse::new(
            "document sync sessions",
            "node",
            Some(n(docs.sessions())),
            n(docs.config().max_sessions),
            "sessions",
        ));
        let reputation = self.node.reputation();
        rows.push(LimitUse::new(
            "reputation entries",
            "node",
            Some(n(reputation.len())),
            n(reputation.config().max_peers),
            "peers",
        ));
        let trust = self.node.trust();
        rows.push(LimitUse::new(
            "trust statements held",
            "node",
            Some(n(trust.held())),
            n(trust.config().max_statements),
            "statements",
        ));
        if let Some(relay) = self.relay.limits() {
            let status = self.relay.status();
            rows.push(LimitUse::new(
                "relay reservations",
                "node",
                Some(n(status.reservations)),
                n(relay.max_reservations),
                "reservations",
            ));
            rows.push(LimitUse::new(
                "relay circuits",
                "node",
                Some(n(status.circuits)),
                n(relay.max_circuits),
                "circuits",
            ));
            rows.push(LimitUse::new(
                "relay circuits per peer",
                "peer",
                None,
                n(relay.max_circuits_per_peer),
                "circuits",
            ));
            rows.push(LimitUse::new(
                "relay bytes per circuit",
                "circuit",
                None,
                relay.circuit_bytes,
                "bytes",
            ));
            if let Some(rate) = relay.circuit_rate {
                rows.push(LimitUse::new(
                    "relay rate per circuit",
                    "circuit",
                    None,
                    rate,
                    "bytes/s",
                ));
            }
        }
        ResourceStatus {
            memory,
            limits: rows,
        }
    }

    /// Connects to `peer`, trying `addrs` in order; `reply` (if any) learns when the peer is
    /// ready or the dial failed.
    fn dial(
        &mut self,
        peer: PeerId,
        addrs: Vec<SocketAddr>,
        reply: Option<oneshot::Sender<Result<(), DialError>>>,
    ) {
        if peer == self.keypair.peer_id() {
            if let Some(reply) = reply {
                let _ = reply.send(Err(DialError::SelfDial));
            }
            return;
        }
        if self.node.peer(&peer).is_some_and(|p| p.ready) {
            if let Some(reply) = reply {
                let _ = reply.send(Ok(()));
            }
            return;
        }
        let in_progress = self.dials.contains_key(&peer) || self.conns.contains_key(&peer);
        self.dials.entry(peer).or_default().extend(reply);
        // A relayed path is tried even while a direct dial is under way (that one may never
        // answer); whichever connects first serves every waiting dial.
        let relayed = addrs.iter().any(crate::relay::is_relayed);
        if in_progress && !relayed {
            return;
        }
        if self.conns.len() >= self.config.limits.max_connections {
            let limit = self.config.limits.max_connections;
            return self.dial_failed(peer, DialError::Limit(limit));
        }
        let targets: Vec<(quinn::Endpoint, SocketAddr)> = addrs
            .iter()
            .map(|a| canonical(*a))
            .filter_map(|a| self.endpoint_for(a).map(|e| (e, a)))
            .collect();
        if targets.is_empty() {
            let Some(&addr) = addrs.first() else {
                let reason = "no address to dial".to_string();
                return self.dial_failed(peer, DialError::Closed { peer, reason });
            };
            let family = if addr.is_ipv4() { "IPv4" } else { "IPv6" };
            return self.dial_failed(peer, DialError::NoEndpoint { family, addr });
        }
        let transport = self.config.transport.to_quinn(&self.config.limits);
        let keypair = self.keypair.clone();
        let inputs = self.inputs.clone();
        let timeout = self.config.dial_timeout;
        *self.attempts.entry(peer).or_default() += 1;
        tokio::spawn(async move {
            let mut last = DialError::Timeout(peer);
            for (endpoint, addr) in targets {
                let transport = transport.clone();
                match connect_within(&endpoint, &keypair, peer, addr, transport, timeout, &inputs)
                    .await
                {
                    Ok(()) => return,
                    Err(e) => last = e,
                }
            }
            let _ = inputs.send(Input::DialFailed { peer, error: last }).await;
        });
    }

    /// Dials `peer` at each of `addrs` at once, beside the relayed connection it has: the
    /// simultaneous open of a hole punch. A connection that succeeds replaces the relayed one
    /// (see `register`); failures are the punch protocol's to retry.
    fn punch_dial(&mut self, peer: PeerId, addrs: &[SocketAddr]) {
        let transport = self.config.transport.to_quinn(&self.config.limits);
        for addr in addrs.iter().map(|a| canonical(*a)) {
            let Some(endpoint) = self.endpoint_for(addr) else {
                continue;
            };
            let keypair = self.keypair.clone();
            let inputs = self.inputs.clone();
            let transport = transport.clone();
            let timeout = self.config.node.punch.attempt_timeout;
            tokio::spawn(async move {
                let attempt =
                    connect_within(&endpoint, &keypair, peer, addr, transport, timeout, &inputs);
                if let Err(e) = attempt.await {
                    debug!(%peer, %addr, error = %e, "punch dial failed");
                }
            });
        }
    }

    /// Gives the node the candidates it cannot see itself: STUN's, then TURN's.
    fn update_punch_candidates(&mut self) {
        let mut addrs = self.stun_candidates.clone();
        addrs.extend(self.turn_candidate);
        self.node.set_punch_candidates(addrs);
    }

    /// Starts this side's part of birthday probing with `peer` (see [`crate::birthday`]),
    /// unless a session is running already.
    fn birthday(&mut self, peer: PeerId, attempt: u32, role: punch::BirthdayRole) {
        let Some(socket) = self.socket_v4.clone() else {
            return;
        };
        let Ok(permit) = self.birthday_permits.clone().try_acquire_owned() else {
            debug!(%peer, "birthday probing skipped: another session is running");
            return;
        };
        debug!(%peer, attempt, ?role, "birthday probing");
        match role {
            punch::BirthdayRole::Open { target, sockets } if target.is_ipv4() => {
                let inputs = self.inputs.clone();
                tokio::spawn(crate::birthday::open(
                    socket, peer, target, sockets, inputs, permit,
                ));
            }
            punch::BirthdayRole::Probe { ip, probes } if ip.is_ipv4() => {
                tokio::spawn(crate::birthday::probe(socket, peer, ip, probes, permit));
            }
            _ => {}
        }
    }

    fn dial_failed(&mut self, peer: PeerId, error: DialError) {
        self.finish_dials(peer, Err(error));
        let now = self.clock.now();
        self.node
            .handle_connection_event(now, ConnectionEvent::DialFailed { peer });
    }

    fn endpoint_for(&self, addr: SocketAddr) -> Option<quinn::Endpoint> {
        self.endpoints
            .iter()
            .find(|e| e.local_addr().is_ok_and(|l| l.is_ipv4() == addr.is_ipv4()))
            .cloned()
    }

    fn finish_dials(&mut self, peer: PeerId, result: Result<(), DialError>) {
        for reply in self.dials.remove(&peer).unwrap_or_default() {
            let _ = reply.send(result.clone());
        }
    }

    /// Takes an authenticated connection into the table, keeping one connection per peer.
    fn register(&mut self, conn: quinn::Connection, peer: PeerId, direction: Direction) {
        let me = self.keypair.peer_id();
        if peer == me {
            conn.close(close_code::REJECTED.into(), b"self connection");
            return self.finish_dials(peer, Err(DialError::SelfDial));
        }
        if let Some(existing) = self.conns.get(&peer) {
            if existing.conn.stable_id() == conn.stable_id() {
                return;
            }
            // A direct path beats a relayed one, on both sides alike; between two of the same
            // kind the rule below decides.
            let existing_relayed = crate::relay::is_relayed(&existing.conn.remote_address());
            let new_relayed = crate::relay::is_relayed(&conn.remote_address());
            if existing_relayed != new_relayed {
                self.stats.duplicates_closed += 1;
                if new_relayed {
                    debug!(%peer, "keeping the direct connection over a new relayed one");
                    conn.close(close_code::DUPLICATE.into(), b"direct connection exists");
                    if self.node.peer(&peer).is_some_and(|p| p.ready) {
                        self.finish_dials(peer, Ok(()));
                    }
                    return;
                }
                info!(%peer, "direct connection replaces the relayed one");
                if let Some(old) = self.unregister(peer) {
                    self.retire(peer, old.conn, b"direct connection");
                }
                return self.register_new(conn, peer, direction, true);
            }
            // Simultaneous dials: both sides keep the connection dialed by the smaller PeerId,
            // so they agree without talking. A redial in the same direction replaces the old
            // connection, which is likely dead.
            let keeper_dialer = me.min(peer);
            let dialer_of = |d: Direction| if d == Direction::Outbound { me } else { peer };
            let keep_existing =
                existing.direction != direction && dialer_of(existing.direction) == keeper_dialer;
            self.stats.duplicates_closed += 1;
            if keep_existing {
                debug!(%peer, "closing duplicate connection");
                if self.node.punch_in_progress(&peer, self.clock.now()) {
                    // Both ends of a hole punch dial, and the peer may have used this one before
                    // it saw ours: what it sent still arrives during the grace period.
                    tokio::spawn(conn::accept_streams(
                        conn.clone(),
                        peer,
                        self.inputs.clone(),
                        self.app_streams.clone(),
                        self.reader(&Scope::new(self.config.limits.connection_memory), None),
                    ));
                    self.retire(peer, conn, b"duplicate connection");
                } else {
                    conn.close(close_code::DUPLICATE.into(), b"duplicate connection");
                }
                if self.node.peer(&peer).is_some_and(|p| p.ready) {
                    self.finish_dials(peer, Ok(()));
                }
                return;
            }
            debug!(%peer, "replacing connection with the one both sides keep");
            if let Some(old) = self.unregister(peer) {
                if self.node.punch_in_progress(&peer, self.clock.now()) {
                    self.retire(peer, old.conn, b"duplicate connection");
                } else {
                    old.conn
                        .close(close_code::DUPLICATE.into(), b"duplicate connection");
                }
            }
            // Both ends of a hole punch dial: the node keeps the peer's state if that explains
            // the second connection, and starts afresh otherwise (a restarted peer redialing).
            return self.register_new(conn, peer, direction, true);
        } else if let Err(limit) = self.make_room(direction) {
            conn.close(close_code::LIMIT.into(), b"connection limit");
            return self.finish_dials(peer, Err(DialError::Limit(limit)));
        }
        self.register_new(conn, peer, direction, false);
    }

    /// Whether a new connection in `direction` fits: below the connection limits and with room
    /// in the memory budget for its windows. A newcomer that finds the inbound slots (or the
    /// budget) full evicts an inbound connection if the eviction policy finds one unprotected.
    /// `Err` carries the connection limit to report.
    fn make_room(&mut self, direction: Direction) -> Result<(), usize> {
        let limits = &self.config.limits;
        let total = self.conns.len();
        if total >= limits.max_connections {
            return Err(limits.max_connections);
        }
        let inbound = self
            .conns
            .values()
            .filter(|e| e.direction == Direction::Inbound)
            .count();
        let memory_short = !self
            .memory
            .has_room(Windows::admission(limits, &self.config.transport));
        let inbound_full = direction == Direction::Inbound && inbound >= limits.max_inbound;
        if !inbound_full && !memory_short {
            return Ok(());
        }
        if direction == Direction::Inbound
            && let Some(victim) = self.eviction_victim()
        {
            info!(peer = %victim, "evicting an inbound connection for a newcomer");
            self.stats.evicted += 1;
            let windows = self.conns.get(&victim).map(|e| e.windows.clone());
            self.close(victim, close_code::LIMIT, "evicted for a newcomer");
            // Closed now: its windows go back at once (the watcher would, a moment later),
            // so the newcomer finds the memory free.
            if let Some(w) = windows {
                w.release();
            }
            return Ok(());
        }
        Err(if inbound_full {
            limits.max_inbound
        } else {
            limits.max_connections
        })
    }

    /// The inbound connection [`spore_core::trust::eviction`] would evict now.
    fn eviction_victim(&self) -> Option<PeerId> {
        use spore_core::trust::eviction::{self, Candidate, NetGroup};
        let kept: std::collections::BTreeSet<PeerId> = self.node.kept_peers().copied().collect();
        let candidates: Vec<Candidate> = self
            .conns
            .iter()
            .filter(|(_, e)| e.direction == Direction::Inbound)
            .map(|(peer, e)| {
                let standing = self.node.standing(peer);
                Candidate {
                    peer: *peer,
                    group: NetGroup::of(e.conn.remote_address().ip()),
                    connected_for: e.since.elapsed(),
                    rtt: Some(e.conn.rtt()),
                    useful: standing.good,
                    score: standing.score,
                    protected: kept.contains(peer),
                }
            })
            .collect();
        eviction::choose(&candidates, self.eviction_key)
    }

    /// Takes `conn` into the table as `peer`'s connection (any other already removed);
    /// `replaced` when it takes over from a connection to the same peer, whose protocol state
    /// then carries on.
    fn register_new(
        &mut self,
        conn: quinn::Connection,
        peer: PeerId,
        direction: Direction,
        replaced: bool,
    ) {
        let addr = canonical(conn.remote_address());
        let Some(windows) = Windows::admit(
            &self.memory,
            &conn,
            &self.config.limits,
            &self.config.transport,
        ) else {
            debug!(%peer, "no memory for another connection");
            conn.close(close_code::LIMIT.into(), b"memory limit");
            if replaced {
                self.node
                    .handle_connection_event(self.clock.now(), ConnectionEvent::Closed { peer });
            }
            let limit = self.config.limits.max_connections;
            return self.finish_dials(peer, Err(DialError::Limit(limit)));
        };
        self.table
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .add(addr.ip());
        let scope = Scope::new(self.config.limits.connection_memory);
        let (frames, frames_rx) = mpsc::channel(self.config.limits.max_queued_frames);
        tokio::spawn(conn::write_frames(
            conn.clone(),
            conn::StreamKind::Control,
            frames_rx,
            None,
        ));
        let (bulk, bulk_rx) = mpsc::channel(self.config.limits.max_queued_bulk_frames);
        tokio::spawn(conn::write_frames(
            conn.clone(),
            conn::StreamKind::Bulk,
            bulk_rx,
            Some(windows.clone()),
        ));
        tokio::spawn(conn::accept_streams(
            conn.clone(),
            peer,
            self.inputs.clone(),
            self.app_streams.clone(),
            self.reader(&scope, Some(windows.clone())),
        ));
        tokio::spawn(conn::accept_bidi_streams(
            conn.clone(),
            peer,
            self.relay.clone(),
        ));
        let watcher = conn.clone();
        let inputs = self.inputs.clone();
        let idle_windows = windows.clone();
        let closing_scope = scope.clone();
        tokio::spawn(async move {
            let closed = watcher.closed();
            tokio::pin!(closed);
            let moved = |c: &quinn::Connection| {
                let s = c.stats();
                s.udp_tx.bytes + s.udp_rx.bytes
            };
            let mut last = moved(&watcher);
            let error = loop {
                tokio::select! {
                    error = &mut closed => break error,
                    _ = tokio::time::sleep(crate::resources::WINDOW_IDLE / 2) => {
                        // Grown windows stay grown while the connection keeps moving bulk
                        // (an application stream, a relay circuit), and shrink once it stops.
                        let now = moved(&watcher);
                        idle_windows.busy(now.saturating_sub(last));
                        last = now;
                        idle_windows.shrink_if_idle();
                    }
                }
            };
            idle_windows.release();
            closing_scope.close();
            let duplicate = matches!(
                &error,
                quinn::ConnectionError::ApplicationClosed(c)
                    if c.error_code == quinn::VarInt::from_u32(close_code::DUPLICATE)
            );
            let conn_id = watcher.stable_id();
            let _ = inputs
                .send(Input::Closed {
                    peer,
                    conn_id,
                    reason: error.to_string(),
                    duplicate,
                })
                .await;
        });
        debug!(%peer, %addr, ?direction, "connection up");
        self.conns.insert(
            peer,
            Entry {
                conn,
                direction,
                frames,
                bulk,
                windows,
                scope,
                since: tokio::time::Instant::now(),
            },
        );
        let now = self.clock.now();
        let event = if replaced {
            ConnectionEvent::Replaced {
                peer,
                addr,
                direction,
            }
        } else {
            ConnectionEvent::Connected {
                peer,
                addr,
                direction,
            }
        };
        self.node.handle_connection_event(now, event);
        if replaced {
            if self.node.peer(&peer).is_some_and(|p| p.ready) {
                self.finish_dials(peer, Ok(()));
            } else {
                // The node started the peer afresh (no hole punch explains the new path): what
                // the old connection still carries would arrive before the new Hello.
                self.draining.retain(|_, p| *p != peer);
            }
        }
    }

    /// Closes a replaced connection after a grace period: frames already queued on it are sent,
    /// and what the peer had in flight on it is still delivered.
    fn retire(&mut self, peer: PeerId, conn: quinn::Connection, reason: &'static [u8]) {
        self.draining.insert(conn.stable_id(), peer);
        let inputs = self.inputs.clone();
        tokio::spawn(async move {
            tokio::time::sleep(DRAIN_GRACE).await;
            conn.close(close_code::DUPLICATE.into(), reason);
            // Ends the draining (the runtime ignores it for a connection it no longer holds).
            let closed = Input::Closed {
                peer,
                conn_id: conn.stable_id(),
                reason: "replaced".into(),
                duplicate: true,
            };
            let _ = inputs.send(closed).await;
        });
    }

    /// What the readers of a connection with `scope` and `windows` need.
    fn reader(&self, scope: &Scope, windows: Option<Arc<Windows>>) -> conn::Reader {
        conn::Reader {
            memory: self.memory.clone(),
            scope: scope.clone(),
            windows,
            rate: self.config.limits.max_messages_per_sec,
        }
    }

    fn unregister(&mut self, peer: PeerId) -> Option<Entry> {
        let entry = self.conns.remove(&peer)?;
        // The windows and the frame scope stay until the connection is closed (the watcher
        // releases them): a retired connection still delivers what was in flight on it.
        let addr = entry.conn.remote_address();
        if let Some(socket) = self.relay.socket.clone()
            && crate::relay::is_relayed(&addr)
        {
            // The relayed path ends (and with it the circuit), after a moment in which the
            // connection's close can still travel over it.
            tokio::spawn(async move {
                tokio::time::sleep(DRAIN_GRACE + Duration::from_secs(1)).await;
                socket.close_path(&addr);
            });
        }
        let ip = canonical(addr).ip();
        self.table
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(ip);
        for key in self
            .pings
            .keys()
            .filter(|(p, _)| *p == peer)
            .copied()
            .collect::<Vec<_>>()
        {
            if let Some(reply) = self.pings.remove(&key) {
                let _ = reply.send(Err(RequestError::NotConnected(peer)));
            }
        }
        Some(entry)
    }

    fn close(&mut self, peer: PeerId, code: u32, reason: &str) {
        if let Some(entry) = self.unregister(peer) {
            entry.conn.close(code.into(), reason.as_bytes());
            let now = self.clock.now();
            self.node
                .handle_connection_event(now, ConnectionEvent::Closed { peer });
            self.finish_dials(
                peer,
                Err(DialError::Closed {
                    peer,
                    reason: reason.to_string(),
                }),
            );
        }
    }

    /// Keeps a verified peer record in the peer book, for rejoining later.
    fn remember(&self, record: kad::record::PeerRecord) {
        if let Some(book) = &self.peer_book
            && let Err(e) = book.remember(record, self.clock.now())
        {
            warn!(error = %e, "cannot update the peer book");
        }
    }

    /// Announces this node in the DHT as a provider of `hash`, once per swarm (the DHT
    /// republishes the record while the node runs).
    fn announce(&mut self, hash: swarm::Hash) {
        if self.node.swarm().info(&hash).is_none() || !self.provided.insert(hash) {
            return;
        }
        if let Err(e) = self.node.provide(self.clock.now(), hash) {
            debug!(error = %e, "cannot announce a blob in the DHT");
        }
    }

    /// Carries out the node's outputs. Called after every input.
    fn drain(&mut self) {
        loop {
            let mut progressed = false;
            while let Some(t) = self.node.poll_transmit() {
                progressed = true;
                self.transmit(t.to, &t.message);
            }
            while let Some(event) = self.node.poll_event() {
                progressed = true;
                self.handle_event(event);
            }
            if !progressed {
                break;
            }
        }
    }

    fn transmit(&mut self, to: PeerId, msg: &Message) {
        let Some(entry) = self.conns.get_mut(&to) else {
            return;
        };
        // Shed pub/sub load before the queue is full, so that a flood of messages to a slow
        // peer cannot crowd out its DHT answers, pings and mesh control.
        let reserve = self.config.limits.max_queued_frames / 4;
        if sheddable(msg) && entry.frames.capacity() < reserve {
            self.stats.pubsub_frames_shed += 1;
            debug!(peer = %to, kind = msg.kind(), "send queue filling; pub/sub frame shed");
            return;
        }
        let frame = match conn::encode(msg) {
            Ok(f) => f,
            Err(e) => {
                warn!(peer = %to, error = %e, kind = msg.kind(), "cannot encode message");
                return;
            }
        };
        let queue = if matches!(msg, Message::Swarm(swarm::Message::Data { .. })) {
            &entry.bulk
        } else {
            &entry.frames
        };
        let Some(memory) = self
            .memory
            .try_reserve(Use::Outbound, frame.len(), Some(&entry.scope))
        else {
            self.stats.frames_dropped += 1;
            debug!(peer = %to, kind = msg.kind(), "no memory for the frame; dropped");
            return;
        };
        if queue.try_send((frame, memory)).is_err() {
            // The peer is not reading fast enough: drop, as the network would. Protocols
            // tolerate loss; holding frames without bound would not be tolerable.
            self.stats.frames_dropped += 1;
            debug!(peer = %to, kind = msg.kind(), "send queue full; frame dropped");
        }
    }

    fn handle_event(&mut self, event: Event) {
        match &event {
            Event::PeerReady { peer, info } => {
                info!(%peer, addr = %info.addr, agent = %info.agent, "peer ready");
                self.finish_dials(*peer, Ok(()));
            }
            Event::PeerGone { peer } => debug!(%peer, "peer gone"),
            Event::Close { peer, reason } => {
                // Pruning an idle connection is routine; every other close is a refusal.
                let code = if *reason == CloseReason::Idle {
                    debug!(%peer, "closing idle connection");
                    close_code::NORMAL
                } else {
                    info!(%peer, %reason, "closing connection");
                    close_code::REJECTED
                };
                let peer = *peer;
                let reason = reason.to_string();
                if let Some(entry) = self.unregister(peer) {
                    entry.conn.close(code.into(), reason.as_bytes());
                }
                self.finish_dials(peer, Err(DialError::Closed { peer, reason }));
            }
            Event::Ping(ping::Event::Pong { peer, nonce, rtt }) => {
                if let Some(reply) = self.pings.remove(&(*peer, *nonce)) {
                    let _ = reply.send(Ok(*rtt));
                }
            }
            Event::Dial { peer, addrs } => self.dial(*peer, addrs.clone(), None),
            Event::Punch(punch::Event::Dial {
                peer,
                addrs,
                attempt,
            }) => {
                debug!(%peer, ?addrs, attempt, "punching");
                if let Some(turn) = &self.turn {
                    // The peer may dial our relayed address: let it through the server.
                    let ips = addrs.iter().map(|a| a.ip()).collect();
                    let _ = turn.try_send(crate::turn::TurnCommand::Permit(ips));
                }
                self.punch_dial(*peer, addrs);
            }
            Event::Punch(punch::Event::Birthday {
                peer,
                attempt,
                role,
            }) => self.birthday(*peer, *attempt, *role),
            Event::Punch(punch::Event::Direct {
                peer,
                attempts,
                took,
            }) => info!(%peer, attempts, ?took, "relayed connection upgraded to a direct path"),
            Event::Punch(punch::Event::GaveUp { peer }) => {
                info!(%peer, "hole punching failed; the connection stays relayed");
            }
            Event::Kad(kad::Event::QueryDone { id, result, stats }) => {
                if let Some(reply) = self.queries.remove(id) {
                    let _ = reply.send(Ok((result.clone(), *stats)));
                }
            }
            Event::Kad(kad::Event::PeerRecord { record }) => self.remember(record.clone()),
            // Downloaders announce themselves as soon as they hold verified data.
            Event::Swarm(swarm::Event::Progress {
                hash,
                verified_bytes,
                ..
            }) if *verified_bytes > 0 => {
                if !self.provided.contains(hash) {
                    let short: String = hash[..8].iter().map(|b| format!("{b:02x}")).collect();
                    info!(
                        blob = %short,
                        verified_bytes,
                        "first verified data of a download"
                    );
                }
                self.announce(*hash);
            }
            Event::Swarm(swarm::Event::Complete { hash, .. }) => self.announce(*hash),
            Event::Swarm(swarm::Event::Failed { hash, .. }) => {
                self.provided.remove(hash);
            }
            Event::Pex(pex::Event::Discovered { records, .. }) => {
                for record in records {
                    self.remember(record.clone());
                }
            }
            Event::Gossip(gossip::Event::SearchHits {
                query,
                responder,
                hits,
            }) => self.searches.hits(*query, responder, hits),
            Event::Gossip(gossip::Event::SearchFinished { query, .. }) => {
                self.searches.finish(*query);
            }
            Event::Ping(ping::Event::Timeout { peer, nonce }) => {
                if let Some(reply) = self.pings.remove(&(*peer, *nonce)) {
                    let _ = reply.send(Err(RequestError::Timeout(*peer)));
                }
            }
            _ => {}
        }
        // Nobody listening is fine; a lagging listener loses old events, never blocks us.
        let _ = self.events.send(event);
    }

    /// Writes the credit ledger to its file, if it has one (a minute's exchanges are lost at
    /// worst if the process is killed).
    fn save_ledger(&self) {
        let Some(path) = &self.config.ledger else {
            return;
        };
        let entries = self.node.swarm().ledger();
        if let Err(e) = spore_store::credit::save_ledger(path, &entries) {
            warn!(error = %e, "cannot save the credit ledger");
        }
    }

    /// Saves the anchor peers: up to [`ANCHORS`] ready outbound peers on direct paths, the
    /// longest connected first, from distinct network groups where possible. An empty list
    /// leaves the last saved anchors in place.
    fn save_anchors(&self) {
        use spore_core::trust::eviction::NetGroup;
        let Some(path) = &self.config.anchors else {
            return;
        };
        let mut outbound: Vec<(tokio::time::Instant, PeerId, SocketAddr)> = self
            .conns
            .iter()
            .filter(|(_, e)| e.direction == Direction::Outbound)
            .filter(|(_, e)| !crate::relay::is_relayed(&e.conn.remote_address()))
            .filter(|(p, _)| self.node.peer(p).is_some_and(|i| i.ready))
            .map(|(p, e)| (e.since, *p, canonical(e.conn.remote_address())))
            .collect();
        outbound.sort();
        let mut groups = Vec::new();
        let (mut anchors, mut rest) = (Vec::new(), Vec::new());
        for (_, peer, addr) in outbound {
            let group = NetGroup::of(addr.ip());
            if groups.contains(&group) {
                rest.push((peer, addr));
            } else {
                groups.push(group);
                anchors.push((peer, addr));
            }
        }
        anchors.extend(rest);
        anchors.truncate(ANCHORS);
        if anchors.is_empty() {
            return;
        }
        if let Err(e) = spore_store::anchors::save_anchors(path, &anchors) {
            warn!(error = %e, "cannot save the anchor peers");
        }
    }

    async fn shutdown(&mut self) {
        info!("shutting down");
        self.save_ledger();
        self.save_anchors();
        self.port_map.release().await;
        if let Some(turn) = self.turn.take() {
            let _ = turn.send(crate::turn::TurnCommand::Close).await;
        }
        for (_, entry) in std::mem::take(&mut self.conns) {
            entry.conn.close(close_code::NORMAL.into(), b"shutdown");
        }
        for endpoint in &self.endpoints {
            endpoint.close(close_code::NORMAL.into(), b"shutdown");
        }
        for endpoint in &self.endpoints {
            let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
        }
        for (_, replies) in std::mem::take(&mut self.dials) {
            for reply in replies {
                let _ = reply.send(Err(DialError::Shutdown));
            }
        }
    }
}

/// Frames dropped first when a peer's send queue fills: published messages (gossip repairs
/// their loss) and pub/sub control that carries only gossip. GRAFT and PRUNE change the mesh
/// and subscriptions change who gets what, so they are kept.
fn sheddable(msg: &Message) -> bool {
    match msg {
        Message::PubSub(pubsub::Message::Publish(_)) => true,
        Message::PubSub(pubsub::Message::Control(c)) => c.graft.is_empty() && c.prune.is_empty(),
        _ => false,
    }
}

/// One outbound connection attempt within `timeout`; on success the runtime learns of the
/// connection as `Input::Connected`.
async fn connect_within(
    endpoint: &quinn::Endpoint,
    keypair: &Keypair,
    peer: PeerId,
    addr: SocketAddr,
    transport: Arc<quinn::TransportConfig>,
    timeout: Duration,
    inputs: &mpsc::Sender<Input>,
) -> Result<(), DialError> {
    let attempt = crate::dial::connect(endpoint, keypair, peer, addr, transport);
    let conn = tokio::time::timeout(timeout, attempt)
        .await
        .map_err(|_| DialError::Timeout(peer))??;
    let direction = Direction::Outbound;
    let connected = Input::Connected {
        conn,
        peer,
        direction,
    };
    let _ = inputs.send(connected).await;
    Ok(())
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pubsub_messages_and_gossip_are_shed_first_but_mesh_control_is_not() {
        use spore_core::pow::{Difficulty, Stamp};
        let keypair = Keypair::generate(&mut rand_core::OsRng);
        let stamp = Stamp::mint(&keypair.peer_id(), Difficulty(4));
        let m = pubsub::SignedMessage::new(&keypair, stamp, "t".into(), 1, Bytes::new());
        let control = |c: pubsub::Control| Message::PubSub(pubsub::Message::Control(c));
        assert!(sheddable(&Message::PubSub(pubsub::Message::Publish(
            m.clone()
        ))));
        let gossip = pubsub::Control {
            ihave: vec![("t".into(), vec![m.id()])],
            iwant: vec![m.id()],
            idontwant: vec![m.id()],
            ..Default::default()
        };
        assert!(sheddable(&control(gossip.clone())));
        let graft = pubsub::Control {
            graft: vec!["t".into()],
            ..gossip.clone()
        };
        assert!(!sheddable(&control(graft)));
        let prune = pubsub::Control {
            prune: vec![pubsub::Prune {
                topic: "t".into(),
                backoff: 60,
                px: Vec::new(),
            }],
            ..gossip
        };
        assert!(!sheddable(&control(prune)));
        let subscribe = pubsub::Message::Subscribe {
            topics: vec![("t".into(), true)],
            record: None,
        };
        assert!(!sheddable(&Message::PubSub(subscribe)));
        assert!(!sheddable(&Message::Ping(ping::Message::Ping { nonce: 1 })));
    }

    #[test]
    fn per_ip_limit_counts_each_address_but_exempts_loopback() {
        let limits = Limits {
            max_connections: 100,
            max_per_ip: 2,
            ..Limits::default()
        };
        let mut table = ConnTable::default();
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let other: IpAddr = "192.0.2.8".parse().unwrap();
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        for _ in 0..2 {
            assert!(table.admits(ip, &limits));
            table.add(ip);
        }
        assert!(
            !table.admits(ip, &limits),
            "third connection from one address"
        );
        assert!(table.admits(other, &limits));
        for _ in 0..10 {
            assert!(table.admits(lo, &limits));
            table.add(lo);
        }
        table.remove(ip);
        assert!(table.admits(ip, &limits));
        let full = Limits {
            max_connections: table.total,
            ..limits
        };
        assert!(
            !table.admits(lo, &full),
            "the total limit applies to loopback too"
        );
    }
}

//! Runtime settings: sockets, connection limits, QUIC transport parameters.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use spore_core::PeerId;
use spore_core::doc::sync::DocStore;
use spore_core::pubsub;
use spore_core::swarm::BlobAccess;

/// Settings of a running node.
#[derive(Debug, Clone)]
pub struct NetConfig {
    /// UDP addresses to bind QUIC endpoints on (one endpoint each; use `0.0.0.0:PORT` and
    /// `[::]:PORT` for IPv4 and IPv6). Port 0 picks a free port.
    pub listen: Vec<SocketAddr>,
    /// Peers to connect to at start and to keep reconnecting to with backoff.
    pub bootstrap: Vec<(PeerId, SocketAddr)>,
    /// More bootstrap peers, listed in DNS TXT records (see [`crate::dns`]); `None` (the
    /// default) sends no DNS query.
    pub dns_bootstrap: Option<crate::dns::DnsBootstrap>,
    /// Protocol-core settings.
    pub node: spore_core::node::Config,
    /// Connection limits.
    pub limits: Limits,
    /// QUIC transport parameters.
    pub transport: TransportParams,
    /// How long a dial may take, handshake and `Hello` included.
    pub dial_timeout: Duration,
    /// Where to keep DHT records and the peer book (a redb file, e.g.
    /// `<data-dir>/records.redb`); `None` keeps records in memory and remembers no peers.
    pub records: Option<PathBuf>,
    /// Peers from the peer book to dial at start, so a node that has joined once can rejoin
    /// when every bootstrap node is gone.
    pub rejoin_peers: usize,
    /// Discover peers on the local network by mDNS; `None` (the default) sends no multicast.
    pub mdns: Option<crate::mdns::MdnsConfig>,
    /// Most dials started at once for peers found by mDNS.
    pub mdns_max_dials: usize,
    /// The application's check of pub/sub messages, installed in the node before it starts, so
    /// no message escapes it. `None` accepts every message with a valid signature.
    pub pubsub_validator: Option<PubSubValidator>,
    /// The blob store the node swarms from and into (`<data-dir>/blobs`). `None` keeps blobs
    /// in memory (nothing survives a restart).
    pub blobs: Option<spore_store::blobs::BlobStore>,
    /// Replaces the swarm's storage with the application's own [`BlobAccess`] (which must
    /// verify what it stores and serves). `None` uses [`blobs`](Self::blobs).
    pub blob_access: Option<BlobAccessMaker>,
    /// Where documents persist (e.g. spore-store's redb document store); the node restores
    /// them at start. `None` keeps documents in memory.
    pub doc_store: Option<DocStoreMaker>,
    /// STUN: which servers to ask for our reflexive address and NAT behaviour, and whether to
    /// answer STUN on the QUIC socket.
    pub nat: crate::nat::NatConfig,
    /// Relaying: whether this node relays for others, and its quotas.
    pub relay: crate::relay::RelayConfig,
    /// Ask the gateway to forward the node's IPv4 UDP port (UPnP-IGD, NAT-PMP, PCP) and
    /// announce the mapped address; `None` (the default) sends nothing to the gateway.
    pub port_map: Option<crate::portmap::PortMapConfig>,
    /// Where the credit ledger is kept (bytes exchanged per peer and their signed receipts,
    /// e.g. `<data-dir>/credits.bin`): loaded at start, saved every minute and at shutdown.
    /// `None` keeps it in memory.
    pub ledger: Option<PathBuf>,
    /// Where the anchor peers are kept (e.g. `<data-dir>/anchors.txt`): the longest-lived
    /// outbound peers, saved every minute and at shutdown, and kept connected (dialed first)
    /// at the next start. `None` keeps no anchors.
    pub anchors: Option<PathBuf>,
    /// The identities this node vouches for, as saved before a restart (see
    /// [`spore_core::trust::wot`]); the statement is published again at start.
    pub vouches: std::collections::BTreeSet<PeerId>,
}

impl Default for NetConfig {
    fn default() -> Self {
        Self {
            listen: vec![SocketAddr::from(([0, 0, 0, 0], 0))],
            bootstrap: Vec::new(),
            dns_bootstrap: None,
            node: spore_core::node::Config::default(),
            limits: Limits::default(),
            transport: TransportParams::default(),
            dial_timeout: Duration::from_secs(10),
            records: None,
            rejoin_peers: 8,
            mdns: None,
            mdns_max_dials: 8,
            pubsub_validator: None,
            blobs: None,
            blob_access: None,
            doc_store: None,
            nat: crate::nat::NatConfig::default(),
            relay: crate::relay::RelayConfig::default(),
            port_map: None,
            ledger: None,
            anchors: None,
            vouches: std::collections::BTreeSet::new(),
        }
    }
}

/// Makes the swarm's blob storage of each node started from a [`NetConfig`] (a config can
/// start several nodes).
#[derive(Clone)]
pub struct BlobAccessMaker(Arc<dyn Fn() -> Box<dyn BlobAccess> + Send + Sync>);

impl BlobAccessMaker {
    /// A maker calling `make` once per node.
    pub fn new(make: impl Fn() -> Box<dyn BlobAccess> + Send + Sync + 'static) -> Self {
        Self(Arc::new(make))
    }

    pub(crate) fn make(&self) -> Box<dyn BlobAccess> {
        (self.0)()
    }
}

impl std::fmt::Debug for BlobAccessMaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BlobAccessMaker(..)")
    }
}

/// Opens the document store of each node started from a [`NetConfig`].
#[derive(Clone)]
pub struct DocStoreMaker(MakeDocStore);

type MakeDocStore = Arc<dyn Fn() -> Result<Box<dyn DocStore + Send>, String> + Send + Sync>;

impl DocStoreMaker {
    /// A maker calling `open` once per node (an error stops the node's start).
    pub fn new(
        open: impl Fn() -> Result<Box<dyn DocStore + Send>, String> + Send + Sync + 'static,
    ) -> Self {
        Self(Arc::new(open))
    }

    pub(crate) fn make(&self) -> Result<Box<dyn DocStore + Send>, String> {
        (self.0)()
    }
}

impl std::fmt::Debug for DocStoreMaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DocStoreMaker(..)")
    }
}

/// Makes the [`pubsub::Validator`] of each node started from a [`NetConfig`].
///
/// The validator runs on the node's runtime task, on every new pub/sub message whose signature
/// verifies, before the message is delivered or forwarded; it must be quick (it holds up the
/// node) and `Send`. A config can start several nodes, so it holds a maker rather than one
/// validator.
///
/// ```
/// use spore_core::{PeerId, pubsub::Validation};
/// use spore_net::{NetConfig, PubSubValidator};
///
/// let no_empty = |_topic: &str, _author: &PeerId, data: &[u8]| {
///     if data.is_empty() { Validation::Reject } else { Validation::Accept }
/// };
/// let config = NetConfig {
///     pubsub_validator: Some(PubSubValidator::new(no_empty)),
///     ..NetConfig::default()
/// };
/// ```
#[derive(Clone)]
pub struct PubSubValidator(Arc<dyn Fn() -> Box<dyn pubsub::Validator> + Send + Sync>);

impl PubSubValidator {
    /// Every node started from the config gets its own clone of `validator`; to share state
    /// among them or with the application, keep it behind an `Arc` inside the validator.
    pub fn new<V: pubsub::Validator + Clone + Sync + 'static>(validator: V) -> Self {
        Self(Arc::new(move || Box::new(validator.clone())))
    }

    /// Calls `make` once for each node started from the config.
    pub fn from_fn(make: impl Fn() -> Box<dyn pubsub::Validator> + Send + Sync + 'static) -> Self {
        Self(Arc::new(make))
    }

    /// A validator for one node.
    pub(crate) fn make(&self) -> Box<dyn pubsub::Validator> {
        (self.0)()
    }
}

impl std::fmt::Debug for PubSubValidator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PubSubValidator(..)")
    }
}

/// Bounds on connections, streams, queues and memory. Incoming connections over a limit are
/// refused before the handshake where the limit allows it; see [`crate::resources`] for how
/// memory is accounted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Most established connections in total (a hard limit: further ones are refused).
    pub max_connections: usize,
    /// Most connections peers opened to us. When they are all taken, a new one evicts an
    /// existing inbound connection chosen by [`spore_core::trust::eviction`] (long-lived,
    /// fast, useful, well-reputed and network-diverse peers are protected), or is refused if
    /// every one is protected. The slots between this and `max_connections` stay free for
    /// connections this node opens, so peers cannot fill all of them.
    pub max_inbound: usize,
    /// The memory budget, in bytes, for everything peers can make the node buffer:
    /// connection state, QUIC windows, frames read and not yet handled, frames queued and not
    /// yet sent. A connection that does not fit is refused, a frame that does not fit is
    /// dropped (outbound) or waited for (inbound, which stops reading and so the peer).
    pub max_memory: usize,
    /// Most memory, in bytes, one connection's frames (inbound and outbound) may hold at once.
    /// At least twice the largest frame (2 MiB) is needed to make progress.
    pub connection_memory: usize,
    /// Each way's QUIC window of a connection that carries no bulk data, in bytes: what the
    /// peer may have in flight to us, and we to it. A connection grows to the transport's full
    /// windows while swarm data flows, as far as `max_memory` allows.
    pub base_window: u32,
    /// Most control messages a peer may send per second on one connection (with a burst of
    /// as many); beyond that the node stops reading from it until the rate allows.
    pub max_messages_per_sec: u32,
    /// Connections the node is happy to keep open; above this, idle ones are closed.
    pub target_connections: usize,
    /// How long a connection must carry no control message to count as idle.
    pub idle_after: Duration,
    /// Most established connections from one IP address (loopback addresses are exempt).
    pub max_per_ip: usize,
    /// Most incoming handshakes in progress at once.
    pub max_pending_handshakes: usize,
    /// Most queued control frames per connection before further frames to it are dropped.
    /// Pub/sub traffic is shed first: once a queue is more than three quarters full, published
    /// messages and gossip-only pub/sub control (IHAVE, IWANT, IDONTWANT) to that peer are
    /// dropped, keeping the last quarter for everything else (DHT, pings, subscriptions, GRAFT
    /// and PRUNE). Lost pub/sub frames are repaired by gossip from other peers.
    pub max_queued_frames: usize,
    /// Most queued swarm data frames (up to ~130 KiB each: chunk groups with their proof) per
    /// connection, on the connection's bulk stream; further ones are dropped and re-requested
    /// by the downloader after its request timeout. The swarm itself bounds what it queues per
    /// peer (16 requests per swarm), so this is only reached by many swarms at once.
    pub max_queued_bulk_frames: usize,
    /// Most unidirectional streams a peer may have open towards us at once.
    pub max_uni_streams: u32,
    /// Most relay streams (bidirectional: reservations and circuits) a peer may have open
    /// towards us at once; a relay's own limits on circuits apply on top.
    pub max_relay_streams: u32,
    /// Most application streams waiting for the application to accept them.
    pub max_pending_app_streams: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 512,
            max_inbound: 448,
            max_memory: 1 << 30,
            connection_memory: 8 << 20,
            base_window: 512 << 10,
            max_messages_per_sec: 2000,
            target_connections: 128,
            idle_after: Duration::from_secs(120),
            max_per_ip: 8,
            max_pending_handshakes: 64,
            max_queued_frames: 1024,
            max_queued_bulk_frames: 128,
            max_uni_streams: 16,
            max_relay_streams: 8,
            max_pending_app_streams: 64,
        }
    }
}

/// QUIC transport parameters.
///
/// The flow-control windows must cover the bandwidth-delay product of the paths spore runs on:
/// quinn's defaults are sized for 100 Mbit/s at 100 ms, and a window capped too low caps
/// throughput at window / RTT however fast the link is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransportParams {
    /// A connection with no traffic for this long is closed.
    pub idle_timeout: Duration,
    /// Send a keep-alive after this much silence, so NAT bindings and the idle timer stay fresh.
    pub keep_alive: Duration,
    /// Receive window per stream, in bytes.
    pub stream_receive_window: u32,
    /// Receive window per connection, in bytes.
    pub receive_window: u32,
    /// Send buffer per connection, in bytes.
    pub send_window: u64,
}

impl Default for TransportParams {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(30),
            keep_alive: Duration::from_secs(10),
            stream_receive_window: 16 << 20,
            receive_window: 32 << 20,
            send_window: 32 << 20,
        }
    }
}

impl TransportParams {
    /// The quinn transport configuration these parameters and `limits` describe.
    pub fn to_quinn(&self, limits: &Limits) -> Arc<quinn::TransportConfig> {
        let mut t = quinn::TransportConfig::default();
        let idle = quinn::IdleTimeout::try_from(self.idle_timeout)
            .unwrap_or_else(|_| quinn::IdleTimeout::from(quinn::VarInt::from_u32(30_000)));
        t.max_idle_timeout(Some(idle))
            .keep_alive_interval(Some(self.keep_alive))
            .stream_receive_window(quinn::VarInt::from_u32(self.stream_receive_window))
            // A connection starts with the base windows (what the resource manager reserves
            // for it at admission) and grows towards the full ones while bulk data flows.
            .receive_window(quinn::VarInt::from_u32(
                limits.base_window.min(self.receive_window),
            ))
            .send_window(u64::from(limits.base_window).min(self.send_window))
            .max_concurrent_uni_streams(quinn::VarInt::from_u32(limits.max_uni_streams))
            .max_concurrent_bidi_streams(quinn::VarInt::from_u32(limits.max_relay_streams))
            .datagram_receive_buffer_size(None);
        Arc::new(t)
    }
}

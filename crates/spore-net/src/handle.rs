//! Starting a node and talking to it.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use spore_core::node::{Event, PeerInfo};
use spore_core::pow::Stamp;
use spore_core::pubsub::Published;
use spore_core::swarm::{PeerView, SwarmInfo};
use spore_core::trust::reputation::{Observation, Standing};
use spore_core::wire::{Capabilities, Message};
use spore_core::{Keypair, Node, PeerId};
use tokio::sync::{Semaphore, broadcast, mpsc, oneshot};
use tracing::{debug, info, warn};

use crate::config::NetConfig;
use crate::conn::StreamKind;
use crate::error::{DialError, RequestError, StartError};
use crate::nat::{NatConfig, NatShared, NodeSocket};
use crate::relay::RelayShared;
use crate::runtime::{
    Clock, Command, ConnTable, DocOp, Input, KadAnswer, KadOp, Runtime, Status, TrustStatus,
    canonical,
};
use crate::search::{SearchHit, SearchStream};
use bytes::Bytes;
use quinn::AsyncUdpSocket as _;
use spore_core::doc::{Access, Change, DocId, Document, Edit};
use spore_core::kad::Key;
use spore_store::records::RedbStore;

/// Capacity of the runtime's input channel. Connection readers wait when it is full.
const INPUT_QUEUE: usize = 1024;
/// Events kept for slow subscribers before the oldest are dropped.
const EVENT_QUEUE: usize = 1024;

/// A running node. Cheap to clone; every clone talks to the same runtime task.
#[derive(Clone, Debug)]
pub struct NodeHandle {
    peer_id: PeerId,
    listen_addrs: Vec<SocketAddr>,
    inputs: mpsc::Sender<Input>,
    events: broadcast::Sender<Event>,
    /// The runtime's relay state (weak: the relay state holds a handle itself).
    relay: std::sync::Weak<RelayShared>,
    /// The address the gateway forwards to this node, while it does.
    mapped: tokio::sync::watch::Receiver<crate::portmap::MapState>,
}

/// Application streams opened by peers (see [`NodeHandle::open_stream`]), in arrival order.
/// Bounded: while nobody accepts, further streams are refused.
#[derive(Debug)]
pub struct AppStreams {
    rx: mpsc::Receiver<(PeerId, quinn::RecvStream)>,
}

impl AppStreams {
    /// The next stream a peer opened, or `None` once the node has stopped.
    pub async fn accept(&mut self) -> Option<(PeerId, quinn::RecvStream)> {
        self.rx.recv().await
    }
}

/// Starts a node: binds its QUIC endpoints, spawns the runtime on the current tokio runtime and
/// begins dialing the bootstrap peers.
pub async fn start(
    keypair: Keypair,
    stamp: Stamp,
    config: NetConfig,
) -> Result<(NodeHandle, AppStreams), StartError> {
    if config.listen.is_empty() {
        return Err(StartError::NoListenAddr);
    }
    let transport = config.transport.to_quinn(&config.limits);
    let server = crate::tls::server_config(&keypair, transport)
        .map_err(|e| StartError::Tls(e.to_string()))?;
    let clock = Clock::new();
    let nat = Arc::new(NatShared::default());
    let mut endpoints = Vec::new();
    let mut relay_socket = None;
    let mut probes = Vec::new();
    for &addr in &config.listen {
        let (endpoint, socket, responses) = bind(addr, server.clone(), &config.nat, &nat)
            .map_err(|source| StartError::Bind { addr, source })?;
        endpoints.push(endpoint);
        if addr.is_ipv4() && relay_socket.is_none() {
            relay_socket = Some(socket.clone());
        }
        probes.push((Arc::downgrade(&socket), responses));
    }
    let listen_addrs: Vec<SocketAddr> = endpoints
        .iter()
        .filter_map(|e| e.local_addr().ok())
        .collect();

    let mut node_config = config.node.clone();
    node_config.listen_addrs = announced(&listen_addrs);
    // The node decides which idle connections to close; the runtime carries it out.
    node_config.target_peers = config.limits.target_connections;
    node_config.idle_after = config.limits.idle_after;
    if config.relay.serve {
        node_config.capabilities = node_config.capabilities | Capabilities::RELAY;
    }
    // A super-peer must have upload to spare: a configured upload limit is what it has.
    if let Some(rate) = node_config.swarm.upload_rate {
        node_config.superpeer.upload_capacity = Some(rate);
    }
    let mut seed = [0u8; 32];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut seed);
    let (mut node, peer_book) = match &config.records {
        Some(path) => {
            let store = RedbStore::open(path, node_config.kad.store, clock.now())
                .map_err(|e| StartError::Records(e.to_string()))?;
            let book = store.peer_book();
            let node = Node::with_store(
                keypair.clone(),
                stamp,
                node_config,
                Box::new(store),
                seed,
                clock.now(),
            )?;
            (node, Some(book))
        }
        None => (
            Node::new(keypair.clone(), stamp, node_config, seed, clock.now())?,
            None,
        ),
    };

    if let Some(validator) = &config.pubsub_validator {
        node.set_pubsub_validator(validator.make());
    }
    node.set_trust_vouches(clock.now(), config.vouches.clone())?;
    if let Some(path) = &config.ledger {
        let entries = spore_store::credit::load_ledger(path)
            .map_err(|e| StartError::Ledger(e.to_string()))?;
        debug!(peers = entries.len(), "credit ledger restored");
        node.restore_ledger(entries);
    }
    if let Some(maker) = &config.doc_store {
        let store = maker.make().map_err(StartError::Docs)?;
        let loaded = node
            .set_doc_store(store)
            .map_err(|e| StartError::Docs(e.to_string()))?;
        debug!(loaded, "documents restored");
    }
    if let Some(maker) = &config.blob_access {
        node.set_blob_access(maker.make());
    } else if let Some(store) = &config.blobs {
        node.set_blob_access(Box::new(crate::blobs::StoreBlobs::new(store.clone())));
    }
    let (inputs, inputs_rx) = mpsc::channel(INPUT_QUEUE);
    for (socket, responses) in probes {
        tokio::spawn(crate::nat::probe_loop(
            socket,
            responses,
            config.nat.clone(),
            clock,
            nat.clone(),
            inputs.clone(),
        ));
    }
    let (events, _) = broadcast::channel(EVENT_QUEUE);
    let (app_tx, app_rx) = mpsc::channel(config.limits.max_pending_app_streams);
    let table = Arc::new(Mutex::new(ConnTable::default()));
    let handshakes = Arc::new(Semaphore::new(config.limits.max_pending_handshakes));
    let memory = crate::resources::Memory::new(config.limits.max_memory);
    for endpoint in &endpoints {
        tokio::spawn(accept_loop(
            endpoint.clone(),
            config.clone(),
            table.clone(),
            handshakes.clone(),
            memory.clone(),
            inputs.clone(),
        ));
    }
    // Anchors (the longest-lived outbound peers of the last run) are kept like bootstrap
    // peers, so a restart brings back peers this node chose rather than whoever dials it.
    if let Some(path) = &config.anchors {
        match spore_store::anchors::load_anchors(path) {
            Ok(anchors) => {
                for (peer, addr) in anchors {
                    if let Err(e) = node.keep_connected(clock.now(), peer, vec![addr]) {
                        warn!(%peer, %addr, error = %e, "cannot keep this anchor peer");
                    }
                }
            }
            Err(e) => warn!(error = %e, "cannot read the anchor peers"),
        }
    }
    // Bootstrap peers are kept: the node dials them, with backoff, while it is short of peers.
    for (peer, addr) in &config.bootstrap {
        if let Err(e) = node.keep_connected(clock.now(), *peer, vec![*addr]) {
            warn!(%peer, %addr, error = %e, "cannot keep this bootstrap peer");
        }
    }
    let rejoin = match &peer_book {
        Some(book) => book.recent(config.rejoin_peers).unwrap_or_else(|e| {
            warn!(error = %e, "cannot read the peer book");
            Vec::new()
        }),
        None => Vec::new(),
    };
    let mdns_config = config.mdns.clone();
    let mdns_max_dials = config.mdns_max_dials;
    let dns_bootstrap = config.dns_bootstrap.clone().filter(|d| !d.names.is_empty());
    let mut runtime = Runtime::new(
        node,
        keypair.clone(),
        config,
        clock,
        endpoints,
        inputs.clone(),
        table,
        events.clone(),
        app_tx,
    );
    runtime.peer_book = peer_book;
    runtime.memory = memory;
    runtime.nat = nat;
    runtime.socket_v4 = relay_socket.clone();
    let dns_status = dns_bootstrap.as_ref().map(|d| {
        Arc::new(Mutex::new(crate::dns::DnsStatus {
            names: d.names.clone(),
            ..Default::default()
        }))
    });
    runtime.dns_status = dns_status.clone();
    if let Some(turn) = runtime.config.nat.turn.clone() {
        let socket = relay_socket
            .clone()
            .filter(|_| turn.server.is_ipv4())
            .ok_or(StartError::Turn(turn.server))?;
        let (datagrams_tx, datagrams) = mpsc::channel(crate::turn::DATAGRAM_QUEUE);
        socket.set_turn(turn.server, datagrams_tx);
        let (commands_tx, commands) = mpsc::channel(16);
        runtime.turn = Some(commands_tx);
        tokio::spawn(crate::turn::run(
            turn,
            socket,
            datagrams,
            commands,
            inputs.clone(),
            runtime.turn_status.clone(),
            clock,
        ));
    }
    let bound_v4 = crate::portmap::mappable(&listen_addrs);
    let (port_map, mapped) =
        crate::portmap::PortMap::start(runtime.config.port_map.as_ref(), bound_v4, inputs.clone());
    runtime.port_map = port_map;
    if runtime.config.relay.serve
        && let Some(socket) = &relay_socket
    {
        // Relays also accept TCP on their QUIC port, for nodes whose UDP is blocked.
        let addr = socket.local_addr().map_err(|source| StartError::Bind {
            addr: listen_addrs[0],
            source,
        })?;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::Bind { addr, source })?;
        tokio::spawn(crate::relay::serve_tcp(listener, socket.clone()));
    }
    let relay = Arc::new(RelayShared::new(
        &runtime.config.relay,
        relay_socket,
        clock,
        runtime.memory.clone(),
    ));
    runtime.relay = relay.clone();
    tokio::spawn(runtime.run(inputs_rx));
    info!(peer_id = %keypair.peer_id(), addrs = ?listen_addrs, "node started");

    let handle = NodeHandle {
        peer_id: keypair.peer_id(),
        listen_addrs,
        inputs,
        events,
        relay: Arc::downgrade(&relay),
        mapped,
    };
    let _ = relay.handle.set(handle.clone());
    for record in rejoin {
        let handle = handle.clone();
        tokio::spawn(async move {
            for addr in record.addrs() {
                if handle.dial(*record.peer(), *addr).await.is_ok() {
                    debug!(peer = %record.peer(), %addr, "rejoined through a remembered peer");
                    break;
                }
            }
        });
    }
    if let (Some(config), Some(status)) = (dns_bootstrap, dns_status) {
        tokio::spawn(crate::dns::run(handle.clone(), config, status));
    }
    if let Some(mdns_config) = mdns_config {
        let port = handle.listen_addrs.first().map(|a| a.port()).unwrap_or(0);
        let (mdns, found) = crate::mdns::Mdns::start(handle.peer_id, port, mdns_config)
            .map_err(|e| StartError::Mdns(e.to_string()))?;
        tokio::spawn(dial_discovered(handle.clone(), mdns, found, mdns_max_dials));
    }
    Ok((handle, AppStreams { rx: app_rx }))
}

/// A bound endpoint, the STUN-aware socket under it, and the STUN responses that arrive on it.
type Bound = (quinn::Endpoint, Arc<NodeSocket>, crate::nat::Responses);

/// Binds a QUIC endpoint on a socket that also speaks STUN (see [`crate::nat`]). IPv6 sockets
/// are IPv6-only, so `0.0.0.0:P` and `[::]:P` can both be bound and each family has its own
/// endpoint.
fn bind(
    addr: SocketAddr,
    server: quinn::ServerConfig,
    nat: &NatConfig,
    shared: &Arc<NatShared>,
) -> std::io::Result<Bound> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.bind(&addr.into())?;
    let runtime = quinn::default_runtime()
        .ok_or_else(|| std::io::Error::other("no async runtime for quinn"))?;
    let (socket, responses) = NodeSocket::new(socket.into(), nat.answer_stun, shared.clone())?;
    // STUN and QUIC share the socket by the first byte of each datagram (RFC 9443): QUIC's fixed
    // bit must stay set, so it is not greased.
    let mut config = quinn::EndpointConfig::default();
    config.grease_quic_bit(false);
    let endpoint =
        quinn::Endpoint::new_with_abstract_socket(config, Some(server), socket.clone(), runtime)?;
    Ok((endpoint, socket, responses))
}

/// Addresses worth announcing: wildcard binds are not dialable, so they are left out here;
/// peers learn our reflexive address from their side of the connection.
fn announced(addrs: &[SocketAddr]) -> Vec<SocketAddr> {
    addrs
        .iter()
        .filter(|a| !a.ip().is_unspecified())
        .copied()
        .collect()
}

async fn accept_loop(
    endpoint: quinn::Endpoint,
    config: NetConfig,
    table: Arc<Mutex<ConnTable>>,
    handshakes: Arc<Semaphore>,
    memory: crate::resources::Memory,
    inputs: mpsc::Sender<Input>,
) {
    while let Some(incoming) = endpoint.accept().await {
        let ip = canonical(incoming.remote_address()).ip();
        let admitted = {
            let mut t = table.lock().unwrap_or_else(|e| e.into_inner());
            let ok = t.admits(ip, &config.limits);
            if !ok {
                t.refused += 1;
            }
            ok
        };
        // A handshake in progress holds QUIC state too: it is charged like a connection's.
        let Some(permit) = admitted
            .then(|| handshakes.clone().try_acquire_owned().ok())
            .flatten()
            .and_then(|p| {
                let charge = crate::resources::CONNECTION_STATE;
                let state = memory.try_reserve(crate::resources::Use::State, charge, None)?;
                Some((p, state))
            })
        else {
            debug!(%ip, "refusing incoming connection: limit reached");
            incoming.refuse();
            continue;
        };
        let inputs = inputs.clone();
        let timeout = config.dial_timeout;
        tokio::spawn(async move {
            let _permit = permit;
            let connecting = match incoming.accept() {
                Ok(c) => c,
                Err(e) => return debug!(error = %e, "incoming connection failed"),
            };
            let conn = match tokio::time::timeout(timeout, connecting).await {
                Ok(Ok(conn)) => conn,
                Ok(Err(e)) => return debug!(error = %e, "incoming handshake failed"),
                Err(_) => return debug!("incoming handshake timed out"),
            };
            match crate::tls::peer_id_of(&conn) {
                Ok(peer) => {
                    let direction = spore_core::node::Direction::Inbound;
                    let _ = inputs
                        .send(Input::Connected {
                            conn,
                            peer,
                            direction,
                        })
                        .await;
                }
                Err(e) => conn.close(
                    crate::conn::close_code::PROTOCOL.into(),
                    e.to_string().as_bytes(),
                ),
            }
        });
    }
}

/// Dials peers found by mDNS, skipping connected ones, with at most `max_dials` at once. Owns
/// the mDNS daemon, which stops (sending goodbyes) when the node does.
async fn dial_discovered(
    handle: NodeHandle,
    mdns: crate::mdns::Mdns,
    mut found: mpsc::Receiver<crate::mdns::Discovered>,
    max_dials: usize,
) {
    let slots = Arc::new(Semaphore::new(max_dials.max(1)));
    while let Some(d) = found.recv().await {
        let Ok(peers) = handle.peers().await else {
            break;
        };
        if peers.iter().any(|p| p.peer == d.peer) {
            continue;
        }
        debug!(peer = %d.peer, addrs = ?d.addrs, "found a peer by mDNS");
        let Ok(permit) = slots.clone().acquire_owned().await else {
            break;
        };
        let handle = handle.clone();
        tokio::spawn(async move {
            let _permit = permit;
            for addr in d.addrs {
                if handle.dial(d.peer, addr).await.is_ok() {
                    break;
                }
            }
        });
    }
    mdns.shutdown();
}

impl NodeHandle {
    /// This node's id.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// The addresses the node's endpoints are bound to.
    pub fn listen_addrs(&self) -> &[SocketAddr] {
        &self.listen_addrs
    }

    /// The address the gateway forwards to this node (see [`NetConfig::port_map`]). While the
    /// node is still asking the gateway for its first mapping, waits up to `wait` for it;
    /// `None` if there is none, or port mapping is off.
    ///
    /// [`NetConfig::port_map`]: crate::NetConfig::port_map
    pub async fn port_mapping(&self, wait: Duration) -> Option<SocketAddr> {
        use crate::portmap::MapState;
        let mut mapped = self.mapped.clone();
        let settled = tokio::time::timeout(wait, mapped.wait_for(|m| *m != MapState::Trying));
        let _ = settled.await;
        match *mapped.borrow() {
            MapState::Mapped(addr) => Some(addr),
            MapState::Trying | MapState::Unmapped => None,
        }
    }

    /// Events from the protocol core (peers ready and gone, pings, closes, overlay neighbors and
    /// search hits), and the messages on subscribed pub/sub topics ([`Event::PubSub`], see
    /// [`subscribe_topic`](Self::subscribe_topic)).
    /// Each receiver holds up to 1024 events: one that falls further behind loses the oldest
    /// and learns how many from [`broadcast::error::RecvError::Lagged`]; the node never waits
    /// for a slow receiver.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    async fn request<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Option<T> {
        let (tx, rx) = oneshot::channel();
        self.inputs.send(Input::Command(make(tx))).await.ok()?;
        rx.await.ok()
    }

    /// Connects to `peer` at `addr` and waits until its `Hello` is verified. Fails if the remote's
    /// key is not `peer`: then no application data has been exchanged.
    pub async fn dial(&self, peer: PeerId, addr: SocketAddr) -> Result<(), DialError> {
        self.request(|reply| Command::Dial { peer, addr, reply })
            .await
            .unwrap_or(Err(DialError::Shutdown))
    }

    /// Keeps a connection to `peer`, dialed at `addrs` now and again with backoff whenever it
    /// is lost while the node is short of peers, as bootstrap peers are kept.
    pub async fn keep_connected(
        &self,
        peer: PeerId,
        addrs: Vec<SocketAddr>,
    ) -> Result<(), RequestError> {
        self.request(|reply| Command::Keep { peer, addrs, reply })
            .await
            .ok_or(RequestError::Shutdown)?
            .map_err(|e| RequestError::Refused(e.to_string()))
    }

    /// Pings a connected peer and returns the round-trip time.
    pub async fn ping(&self, peer: PeerId) -> Result<Duration, RequestError> {
        self.request(|reply| Command::Ping { peer, reply })
            .await
            .unwrap_or(Err(RequestError::Shutdown))
    }

    /// Connected peers.
    pub async fn peers(&self) -> Result<Vec<PeerInfo>, RequestError> {
        self.request(|reply| Command::Peers { reply })
            .await
            .ok_or(RequestError::Shutdown)
    }

    /// The credit ledger: per peer, the bytes exchanged with it over all swarms and its latest
    /// signed receipt, in id order.
    pub async fn ledger(&self) -> Result<Vec<spore_core::swarm::LedgerEntry>, RequestError> {
        self.request(|reply| Command::Ledger { reply })
            .await
            .ok_or(RequestError::Shutdown)
    }

    /// Every peer in the node's reputation table with its standing, in id order: what this
    /// node has seen each peer do (see [`spore_core::trust::reputation`]).
    pub async fn reputation(&self) -> Result<Vec<(PeerId, Standing)>, RequestError> {
        self.request(|reply| Command::Reputation { reply })
            .await
            .ok_or(RequestError::Shutdown)
    }

    /// Tells the node what `peer` did, for its reputation table (a peer this distrusts is
    /// disconnected and refused).
    pub async fn observe(&self, peer: PeerId, what: Observation) {
        let _ = self
            .inputs
            .send(Input::Command(Command::Observe { peer, what }))
            .await;
    }

    /// Vouches for `peer` in this node's web of trust; the new signed statement goes to the
    /// DHT and the trust topic. `Ok(false)` if the node already vouched for it.
    pub async fn trust_vouch(&self, peer: PeerId) -> Result<bool, RequestError> {
        self.request(|reply| Command::TrustVouch { peer, reply })
            .await
            .ok_or(RequestError::Shutdown)?
            .map_err(|e| RequestError::Refused(e.to_string()))
    }

    /// Withdraws this node's vouch for `peer`; the revocation spreads as a vouch does.
    /// `false` if there was none.
    pub async fn trust_revoke(&self, peer: PeerId) -> Result<bool, RequestError> {
        self.request(|reply| Command::TrustRevoke { peer, reply })
            .await
            .ok_or(RequestError::Shutdown)
    }

    /// A shortest chain of vouches from this node to `peer` of at most `depth` links (this
    /// node first, `peer` last), or `None` if the node does not trust it within `depth`.
    pub async fn trust_chain(
        &self,
        peer: PeerId,
        depth: u8,
    ) -> Result<Option<Vec<PeerId>>, RequestError> {
        self.request(|reply| Command::TrustChain { peer, depth, reply })
            .await
            .ok_or(RequestError::Shutdown)?
            .map_err(|e| RequestError::Refused(e.to_string()))
    }

    /// The web of trust as the node holds it: its vouches, every identity it trusts within
    /// its configured depth, and the closed topics.
    pub async fn trust_status(&self) -> Result<TrustStatus, RequestError> {
        self.request(|reply| Command::TrustStatus { reply })
            .await
            .ok_or(RequestError::Shutdown)
    }

    /// Closes pub/sub `topic` to authors this node does not trust within `depth` vouches:
    /// their messages are neither delivered nor forwarded.
    pub async fn close_topic(&self, topic: &str, depth: u8) -> Result<(), RequestError> {
        let topic = topic.to_string();
        self.request(|reply| Command::CloseTopic {
            topic,
            depth,
            reply,
        })
        .await
        .ok_or(RequestError::Shutdown)?
        .map_err(RequestError::from)
    }

    /// A snapshot of the node's state.
    pub async fn status(&self) -> Result<Status, RequestError> {
        self.request(|reply| Command::Status { reply })
            .await
            .ok_or(RequestError::Shutdown)
    }

    /// The QUIC connection to a connected, ready peer.
    pub(crate) async fn connection(&self, peer: PeerId) -> Result<quinn::Connection, RequestError> {
        self.request(|reply| Command::Connection {
            peer,
            bulk: false,
            reply,
        })
        .await
        .unwrap_or(Err(RequestError::Shutdown))
    }

    /// The runtime's relay state, while the node runs.
    pub(crate) fn relay_shared(&self) -> Result<Arc<RelayShared>, RequestError> {
        self.relay.upgrade().ok_or(RequestError::Shutdown)
    }

    /// Names the relays that hold a reservation for this node in its signed peer record.
    pub(crate) async fn set_relays(&self, relays: Vec<PeerId>) {
        let _ = self
            .inputs
            .send(Input::Command(Command::SetRelays { relays }))
            .await;
    }

    /// Opens an application byte stream to a connected peer; the peer receives it from
    /// [`AppStreams::accept`]. Bulk data travels this way, beside (not inside) the control
    /// stream.
    pub async fn open_stream(&self, peer: PeerId) -> Result<quinn::SendStream, RequestError> {
        let conn = self
            .request(|reply| Command::Connection {
                peer,
                bulk: true,
                reply,
            })
            .await
            .unwrap_or(Err(RequestError::Shutdown))?;
        let mut send = conn
            .open_uni()
            .await
            .map_err(|e| RequestError::Stream(e.to_string()))?;
        send.write_all(&[StreamKind::App as u8])
            .await
            .map_err(|e| RequestError::Stream(e.to_string()))?;
        Ok(send)
    }

    async fn kad(&self, op: KadOp) -> Result<KadAnswer, RequestError> {
        self.request(|reply| Command::Kad { op, reply })
            .await
            .unwrap_or(Err(RequestError::Shutdown))
    }

    /// Joins the DHT: looks up this node's own id and refreshes the farther buckets. Runs by
    /// itself when the first DHT server connects; call it to retry by hand.
    pub async fn bootstrap(&self) -> Result<KadAnswer, RequestError> {
        self.kad(KadOp::Bootstrap).await
    }

    /// The k closest nodes to `key`.
    pub async fn find_node(&self, key: Key) -> Result<KadAnswer, RequestError> {
        self.kad(KadOp::FindNode(key)).await
    }

    /// Finds `peer`'s signed record (its addresses) in the DHT.
    pub async fn find_peer(&self, peer: PeerId) -> Result<KadAnswer, RequestError> {
        self.kad(KadOp::FindPeer(peer)).await
    }

    /// Signs `value` under `name` and stores it on the k closest nodes.
    pub async fn put_value(&self, name: &str, value: Bytes) -> Result<KadAnswer, RequestError> {
        self.kad(KadOp::PutValue {
            name: name.to_string(),
            value,
        })
        .await
    }

    /// Reads the value `publisher` stored under `name`.
    pub async fn get_value(
        &self,
        publisher: PeerId,
        name: &str,
    ) -> Result<KadAnswer, RequestError> {
        self.kad(KadOp::GetValue {
            publisher,
            name: name.to_string(),
        })
        .await
    }

    /// Announces that this node provides the content with BLAKE3 hash `content`.
    pub async fn provide(&self, content: [u8; 32]) -> Result<KadAnswer, RequestError> {
        self.kad(KadOp::Provide(content)).await
    }

    /// Finds providers of the content with BLAKE3 hash `content`.
    pub async fn find_providers(&self, content: [u8; 32]) -> Result<KadAnswer, RequestError> {
        self.kad(KadOp::FindProviders(content)).await
    }

    /// Downloads blob `hash` from `providers` (a ticket's peer, DHT provider records) and
    /// whoever they lead to, into the node's blob store, or adds providers to a download in
    /// progress. Every chunk group is verified before it is stored; groups verified earlier
    /// (also before a crash) are not fetched again. Progress, completion and failure arrive as
    /// [`Event::Swarm`] on [`subscribe`](Self::subscribe) ([`swarm_info`](Self::swarm_info)
    /// polls the same); as soon as it holds verified data the node serves it and announces
    /// itself in the DHT as a provider. A blob already complete reports completion at once.
    pub async fn fetch_blob(
        &self,
        hash: [u8; 32],
        providers: Vec<(PeerId, Vec<SocketAddr>)>,
    ) -> Result<(), RequestError> {
        self.request(|reply| Command::FetchBlob {
            hash,
            providers,
            reply,
        })
        .await
        .ok_or(RequestError::Shutdown)?
        .map_err(RequestError::from)
    }

    /// Serves blob `hash`, complete in the blob store, to every peer that asks (seeding), and
    /// announces this node in the DHT as its provider.
    pub async fn serve_blob(&self, hash: [u8; 32]) -> Result<(), RequestError> {
        self.request(|reply| Command::ServeBlob { hash, reply })
            .await
            .ok_or(RequestError::Shutdown)?
            .map_err(RequestError::from)
    }

    /// Stops downloading or serving `hash` (what was verified stays in the store). `false` if
    /// it had no swarm.
    pub async fn cancel_blob(&self, hash: [u8; 32]) -> Result<bool, RequestError> {
        self.request(|reply| Command::CancelBlob { hash, reply })
            .await
            .ok_or(RequestError::Shutdown)
    }

    /// The swarm of `hash` and its peers, or `None` if it has none.
    pub async fn swarm_info(
        &self,
        hash: [u8; 32],
    ) -> Result<Option<(SwarmInfo, Vec<PeerView>)>, RequestError> {
        self.request(|reply| Command::SwarmInfo { hash, reply })
            .await
            .ok_or(RequestError::Shutdown)
    }

    async fn doc<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> DocOp,
    ) -> Result<T, RequestError> {
        self.request(|reply| Command::Doc(make(reply)))
            .await
            .ok_or(RequestError::Shutdown)
    }

    /// Creates a document owned by this node (`nonce` makes its id unique among this node's
    /// documents), replicated to whoever opens it and kept current by live changes and sync.
    pub async fn doc_create(&self, nonce: u64) -> Result<DocId, RequestError> {
        Ok(self.doc(|reply| DocOp::Create { nonce, reply }).await??)
    }

    /// Replicates the document `access` describes (its owner-signed access list, as a ticket
    /// carries it), syncing with `peers` (replicas to start from) and following live changes.
    pub async fn doc_open(
        &self,
        access: Access,
        peers: Vec<PeerId>,
    ) -> Result<DocId, RequestError> {
        let access = Box::new(access);
        Ok(self
            .doc(|reply| DocOp::Open {
                access,
                peers,
                reply,
            })
            .await??)
    }

    /// Edits a document as this node (which must be a writer): the change is signed, applied,
    /// persisted and published live; replicas that miss it get it by sync.
    pub async fn doc_edit(&self, doc: DocId, edits: Vec<Edit>) -> Result<Change, RequestError> {
        Ok(self
            .doc(|reply| DocOp::Edit { doc, edits, reply })
            .await??)
    }

    /// As the document's owner, admits `peer` as a writer; returns the new access list.
    pub async fn doc_add_writer(&self, doc: DocId, peer: PeerId) -> Result<Access, RequestError> {
        Ok(self
            .doc(|reply| DocOp::AddWriter { doc, peer, reply })
            .await??)
    }

    /// Closes `doc` to peers this node does not trust within `depth` vouches: nothing about it
    /// goes to them and nothing from them is taken, on sync and on its live topic alike.
    pub async fn doc_close(&self, doc: DocId, depth: u8) -> Result<(), RequestError> {
        Ok(self
            .doc(|reply| DocOp::Close { doc, depth, reply })
            .await??)
    }

    /// Reconciles `doc` with `peer` now (sync also runs by itself on connection and
    /// periodically).
    pub async fn doc_sync(&self, peer: PeerId, doc: DocId) -> Result<(), RequestError> {
        Ok(self.doc(|reply| DocOp::Sync { peer, doc, reply }).await??)
    }

    /// A copy of this node's replica of `doc`, or `None` if it does not replicate it.
    pub async fn doc_get(&self, doc: DocId) -> Result<Option<Document>, RequestError> {
        Ok(self
            .doc(|reply| DocOp::Get { doc, reply })
            .await?
            .map(|d| *d))
    }

    /// Subscribes to a pub/sub topic (1 to 256 bytes of name, at most 64 topics): tells the
    /// connected peers and builds the topic's mesh. The topic's messages then arrive once each
    /// on [`subscribe`](Self::subscribe) as [`Event::PubSub`]. Subscribing twice is harmless.
    pub async fn subscribe_topic(&self, topic: &str) -> Result<(), RequestError> {
        let topic = topic.to_string();
        self.request(|reply| Command::Subscribe { topic, reply })
            .await
            .ok_or(RequestError::Shutdown)?
            .map_err(RequestError::from)
    }

    /// Leaves a pub/sub topic. `false` if the node was not subscribed.
    pub async fn unsubscribe_topic(&self, topic: &str) -> Result<bool, RequestError> {
        let topic = topic.to_string();
        self.request(|reply| Command::Unsubscribe { topic, reply })
            .await
            .ok_or(RequestError::Shutdown)
    }

    /// Signs `data` with this node's key and publishes it on `topic`; the node need not be
    /// subscribed. [`Published::peers`] says to how many peers it went directly; 0 means no
    /// connected peer announced the topic yet, and nobody will get the message.
    pub async fn publish(&self, topic: &str, data: Bytes) -> Result<Published, RequestError> {
        let topic = topic.to_string();
        self.request(|reply| Command::Publish { topic, data, reply })
            .await
            .ok_or(RequestError::Shutdown)?
            .map_err(RequestError::from)
    }

    /// Shares `name` in this node's search index: searches that reach this node through the
    /// overlay and whose every word occurs in `name` (case-insensitive) are answered with it,
    /// `content` (the BLAKE3 hash of the content) and `size` (in bytes). One name per content:
    /// sharing a content again renames it. Names are 1 to 256 bytes, without control characters;
    /// the index holds at most `gossip::Config::max_shared` names. Only the name is announced,
    /// and only to searchers: serving the content is up to the application.
    pub async fn share_name(
        &self,
        name: &str,
        content: [u8; 32],
        size: u64,
    ) -> Result<(), RequestError> {
        let name = name.to_string();
        self.request(|reply| Command::Share {
            name,
            content,
            size,
            reply,
        })
        .await
        .ok_or(RequestError::Shutdown)?
        .map_err(RequestError::from)
    }

    /// Removes the name shared for `content` from the search index. `false` if there was none.
    pub async fn unshare_name(&self, content: [u8; 32]) -> Result<bool, RequestError> {
        self.request(|reply| Command::Unshare { content, reply })
            .await
            .ok_or(RequestError::Shutdown)
    }

    /// Searches the overlay for names containing every one of `words` (case-insensitive; 1 to 8
    /// words of at most 64 bytes) and returns the hits as they arrive, one responder at a time.
    /// Fails at once if the node has no overlay neighbor yet ([`SearchError::NoPeers`]) or gossip
    /// is disabled. See [`SearchStream`] for when the stream ends.
    ///
    /// [`SearchError::NoPeers`]: spore_core::gossip::SearchError::NoPeers
    pub async fn search_stream(&self, words: Vec<String>) -> Result<SearchStream, RequestError> {
        self.request(|reply| Command::Search { words, reply })
            .await
            .ok_or(RequestError::Shutdown)?
            .map_err(RequestError::from)
    }

    /// Searches the overlay like [`search_stream`](Self::search_stream) and collects the hits
    /// until `timeout` has passed or the search is over (the node's search timeout, 10 s by
    /// default), whichever comes first; at most `gossip::Config::max_hits_per_query` hits. An
    /// empty list means nobody answered in time: it is not an error.
    pub async fn search(
        &self,
        words: Vec<String>,
        timeout: Duration,
    ) -> Result<Vec<SearchHit>, RequestError> {
        Ok(self.search_stream(words).await?.collect(timeout).await)
    }

    /// For tests: sends `msg` to a connected peer as it is, bypassing the protocol core (a
    /// forged pub/sub message, say). Subject to the send queue's limits like any frame.
    #[doc(hidden)]
    pub async fn send_raw(&self, peer: PeerId, msg: Message) -> Result<(), RequestError> {
        let msg = Box::new(msg);
        self.request(|reply| Command::SendRaw { peer, msg, reply })
            .await
            .unwrap_or(Err(RequestError::Shutdown))
    }

    /// Closes every connection and the endpoints, then stops the runtime.
    pub async fn shutdown(&self) {
        let _ = self.request(|reply| Command::Shutdown { reply }).await;
    }
}

//! Relays in the runtime: serving reservations and circuits (when this node relays), holding
//! reservations at relays (when it is behind a NAT), and carrying an end-to-end QUIC connection
//! over a circuit. What a relay admits and how much a circuit may carry is decided by
//! `spore_core::nat::relay`; this module moves the bytes.
//!
//! A relay stream is a bidirectional QUIC stream whose first byte is
//! [`StreamKind::Relay`](crate::conn::StreamKind::Relay), then one length-prefixed
//! [`Header`], answered by one length-prefixed [`Reply`]. After an `Ok` to `Connect` or
//! `Incoming`, the stream carries QUIC packets, each prefixed by its length (2 bytes, big
//! endian). The relay splices the asker's stream to the target's byte for byte and never parses
//! them: they are the two nodes' own end-to-end QUIC connection.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use spore_core::PeerId;
use spore_core::nat::relay::{
    self, CircuitBudget, Header, MAX_HEADER_LEN, RelayLimits, RelayServer, RelayStats, Reply,
};
use spore_core::trust::reputation::Observation;
use tracing::{debug, info};

use crate::conn::StreamKind;
use crate::error::RequestError;
use crate::handle::NodeHandle;
use crate::nat::{NodeSocket, PathEnds};
use crate::runtime::Clock;

/// How long a relay waits for the reserved node to accept a circuit, and a node for a relay's
/// answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
/// A circuit with no packet either way for this long is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Relay settings.
#[derive(Debug, Clone, Default)]
pub struct RelayConfig {
    /// Serve as a relay for others (a public node that opts in). Default off.
    pub serve: bool,
    /// What this relay allows, when it serves.
    pub limits: RelayLimits,
}

/// The relay part of `Status`.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct RelayStatus {
    /// Whether this node relays for others.
    pub serving: bool,
    /// Reservations held here now (when serving).
    pub reservations: usize,
    /// Circuits open through this node now (when serving).
    pub circuits: usize,
    /// Counters of the relay (when serving).
    pub stats: RelayStats,
    /// Relays at which this node holds a reservation (its relayed addresses).
    pub reserved_at: Vec<PeerId>,
}

/// What relay tasks share with the runtime.
pub(crate) struct RelayShared {
    pub(crate) server: Option<Mutex<RelayServer>>,
    /// The memory budget: circuits keep the windows of the connections they ride on grown.
    memory: crate::resources::Memory,
    /// Relays where this node holds a reservation, with the reservation's end.
    pub(crate) reserved_at: Mutex<std::collections::BTreeMap<PeerId, tokio::time::Instant>>,
    /// The IPv4 socket that carries relayed paths (virtual addresses are IPv4).
    pub(crate) socket: Option<Arc<NodeSocket>>,
    pub(crate) clock: Clock,
    /// The node's own handle, set once it exists (to find connections and dial).
    pub(crate) handle: OnceLock<NodeHandle>,
}

impl std::fmt::Debug for RelayShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayShared")
            .field("serving", &self.server.is_some())
            .finish_non_exhaustive()
    }
}

impl RelayShared {
    pub(crate) fn new(
        config: &RelayConfig,
        socket: Option<Arc<NodeSocket>>,
        clock: Clock,
        memory: crate::resources::Memory,
    ) -> Self {
        Self {
            memory,
            server: config
                .serve
                .then(|| Mutex::new(RelayServer::new(config.limits.clone()))),
            reserved_at: Mutex::new(std::collections::BTreeMap::new()),
            socket,
            clock,
            handle: OnceLock::new(),
        }
    }

    pub(crate) fn status(&self) -> RelayStatus {
        let mut status = RelayStatus {
            serving: self.server.is_some(),
            reserved_at: self
                .reserved_at
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .keys()
                .copied()
                .collect(),
            ..RelayStatus::default()
        };
        if let Some(server) = &self.server {
            let server = server.lock().unwrap_or_else(|e| e.into_inner());
            status.reservations = server.reservations();
            status.circuits = server.circuits();
            status.stats = server.stats();
        }
        status
    }

    /// The limits this relay serves under, when it serves.
    pub(crate) fn limits(&self) -> Option<spore_core::nat::relay::RelayLimits> {
        let server = self.server.as_ref()?;
        Some(
            server
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .limits()
                .clone(),
        )
    }

    /// A peer's connection closed: its reservation here ends.
    pub(crate) fn peer_gone(&self, peer: &PeerId) {
        if let Some(server) = &self.server {
            server
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .release(peer);
        }
    }

    fn server(&self) -> Option<std::sync::MutexGuard<'_, RelayServer>> {
        self.server
            .as_ref()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// Writes a length-prefixed header or reply.
async fn write_msg<T: serde::Serialize>(
    send: &mut quinn::SendStream,
    msg: &T,
) -> Result<(), RequestError> {
    let bytes = relay::encode(msg);
    let mut frame = Vec::with_capacity(bytes.len() + 2);
    frame.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
    frame.extend_from_slice(&bytes);
    send.write_all(&frame)
        .await
        .map_err(|e| RequestError::Stream(e.to_string()))
}

/// Reads a length-prefixed header or reply (at most [`MAX_HEADER_LEN`] bytes).
async fn read_msg<T: serde::de::DeserializeOwned>(
    recv: &mut quinn::RecvStream,
) -> Result<T, RequestError> {
    let mut len = [0u8; 2];
    recv.read_exact(&mut len)
        .await
        .map_err(|e| RequestError::Stream(e.to_string()))?;
    let len = usize::from(u16::from_be_bytes(len));
    if len > MAX_HEADER_LEN {
        return Err(RequestError::Stream(format!(
            "relay header of {len} bytes (at most {MAX_HEADER_LEN})"
        )));
    }
    let mut buf = vec![0u8; len];
    recv.read_exact(&mut buf)
        .await
        .map_err(|e| RequestError::Stream(e.to_string()))?;
    relay::decode(&buf).map_err(|e| RequestError::Stream(e.to_string()))
}

/// Opens a relay stream to a connected peer and sends `header`; returns the stream and the
/// peer's reply.
async fn ask(
    conn: &quinn::Connection,
    header: &Header,
) -> Result<(quinn::SendStream, quinn::RecvStream, Reply), RequestError> {
    let (mut send, mut recv) = conn
        .open_bi()
        .await
        .map_err(|e| RequestError::Stream(e.to_string()))?;
    send.write_all(&[StreamKind::Relay as u8])
        .await
        .map_err(|e| RequestError::Stream(e.to_string()))?;
    write_msg(&mut send, header).await?;
    let reply = tokio::time::timeout(ANSWER_TIMEOUT, read_msg::<Reply>(&mut recv))
        .await
        .map_err(|_| RequestError::RelayTimeout)??;
    Ok((send, recv, reply))
}

/// Serves a relay stream `peer` opened to us (its kind byte already read).
pub(crate) async fn serve_stream(
    shared: Arc<RelayShared>,
    conn: quinn::Connection,
    peer: PeerId,
    send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let header = match tokio::time::timeout(ANSWER_TIMEOUT, read_msg::<Header>(&mut recv)).await {
        Ok(Ok(h)) => h,
        Ok(Err(e)) => {
            debug!(%peer, error = %e, "bad relay header");
            return;
        }
        Err(_) => return,
    };
    // A circuit carries a relayed connection's packets: the connection it rides on needs
    // the windows of a bulk transfer for as long as it runs.
    let _hold = match header {
        Header::Reserve => None,
        Header::Connect { .. } | Header::Incoming { .. } => shared.memory.hold(conn.stable_id()),
    };
    match header {
        Header::Reserve => serve_reserve(&shared, conn, peer, send).await,
        Header::Connect { target } => serve_connect(&shared, peer, target, send, recv).await,
        Header::Incoming { from } => accept_incoming(&shared, peer, from, send, recv).await,
    }
    .unwrap_or_else(|e| debug!(%peer, error = %e, "relay stream ended"));
}

async fn serve_reserve(
    shared: &RelayShared,
    conn: quinn::Connection,
    peer: PeerId,
    mut send: quinn::SendStream,
) -> Result<(), RequestError> {
    let now = shared.clock.now();
    let granted = match shared.server() {
        None => Err(relay::Refusal::NotARelay),
        Some(mut server) => server
            .reserve(now, peer)
            .map(|expires| expires.saturating_duration_since(now)),
    };
    let reply = match granted {
        Ok(ttl) => Reply::Ok {
            secs: ttl.as_secs(),
            bytes: 0,
        },
        Err(refusal) => Reply::Refused(refusal),
    };
    write_msg(&mut send, &reply).await?;
    let _ = send.finish();
    if matches!(reply, Reply::Ok { .. }) {
        debug!(%peer, "reservation granted");
        // The reservation lives as long as the connection (or until it expires).
        conn.closed().await;
        shared.peer_gone(&peer);
    }
    Ok(())
}

async fn serve_connect(
    shared: &RelayShared,
    from: PeerId,
    target: PeerId,
    mut send: quinn::SendStream,
    recv: quinn::RecvStream,
) -> Result<(), RequestError> {
    let admitted = match shared.server() {
        None => Err(relay::Refusal::NotARelay),
        Some(mut server) => server.connect(shared.clock.now(), from, target),
    };
    let (id, budget) = match admitted {
        Ok(a) => a,
        Err(refusal) => {
            debug!(%from, %target, %refusal, "circuit refused");
            write_msg(&mut send, &Reply::Refused(refusal)).await?;
            let _ = send.finish();
            return Ok(());
        }
    };
    // Ask the target over its own connection to us.
    let target_conn = match shared.handle.get() {
        Some(h) => h.connection(target).await.ok(),
        None => None,
    };
    let _hold = target_conn
        .as_ref()
        .and_then(|c| shared.memory.hold(c.stable_id()));
    let answer = match target_conn {
        Some(conn) => ask(&conn, &Header::Incoming { from }).await.ok(),
        None => None,
    };
    let Some((t_send, t_recv, Reply::Ok { .. })) = answer else {
        if let Some(mut server) = shared.server() {
            server.refused_by_target(id);
        }
        write_msg(&mut send, &Reply::Refused(relay::Refusal::TargetRefused)).await?;
        let _ = send.finish();
        return Ok(());
    };
    let reply = Reply::Ok {
        secs: budget
            .deadline()
            .saturating_duration_since(shared.clock.now())
            .as_secs(),
        bytes: budget.remaining(),
    };
    write_msg(&mut send, &reply).await?;
    info!(%from, %target, "circuit open");
    let budget = Arc::new(Mutex::new(budget));
    let forward = splice(shared, recv, t_send, budget.clone(), 0);
    let back = splice(shared, t_recv, send, budget.clone(), 1);
    // Either direction ending (a close, a quota, idleness) ends the circuit.
    tokio::select! {
        () = forward => {}
        () = back => {}
    }
    let budget = budget.lock().unwrap_or_else(|e| e.into_inner()).clone();
    info!(%from, %target, carried = budget.carried(), cut = ?budget.cut(), "circuit closed");
    if let Some(mut server) = shared.server() {
        server.close(id, &budget);
    }
    Ok(())
}

/// Copies one direction of a circuit within its budget.
async fn splice(
    shared: &RelayShared,
    mut from: quinn::RecvStream,
    mut to: quinn::SendStream,
    budget: Arc<Mutex<CircuitBudget>>,
    direction: usize,
) {
    loop {
        let chunk = match tokio::time::timeout(IDLE_TIMEOUT, from.read_chunk(16 * 1024, true)).await
        {
            Ok(Ok(Some(chunk))) => chunk.bytes,
            _ => break,
        };
        loop {
            let verdict = budget.lock().unwrap_or_else(|e| e.into_inner()).take(
                shared.clock.now(),
                direction,
                chunk.len(),
            );
            match verdict {
                Ok(None) => break,
                Ok(Some(wait)) => tokio::time::sleep(wait).await,
                Err(cut) => {
                    debug!(%cut, "circuit quota reached");
                    let _ = to.reset(quinn::VarInt::from_u32(1));
                    let _ = from.stop(quinn::VarInt::from_u32(1));
                    return;
                }
            }
        }
        if to.write_chunk(chunk).await.is_err() {
            break;
        }
    }
    let _ = to.finish();
}

/// A relay tells us `from` wants to connect: accept if we reserved there, and carry the
/// circuit on a relayed path.
async fn accept_incoming(
    shared: &RelayShared,
    relay_peer: PeerId,
    from: PeerId,
    mut send: quinn::SendStream,
    recv: quinn::RecvStream,
) -> Result<(), RequestError> {
    let reserved = shared
        .reserved_at
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .contains_key(&relay_peer);
    let Some(socket) = shared.socket.clone().filter(|_| reserved) else {
        write_msg(&mut send, &Reply::Refused(relay::Refusal::NotReserved)).await?;
        let _ = send.finish();
        return Ok(());
    };
    write_msg(&mut send, &Reply::Ok { secs: 0, bytes: 0 }).await?;
    let path = socket.open_path();
    debug!(%from, relay = %relay_peer, addr = %path.addr, "incoming circuit");
    pump(socket, path, recv, send).await;
    Ok(())
}

impl NodeHandle {
    /// Reserves a slot at `relay` (a connected peer that relays), so that others can reach
    /// this node through it; the relay is named in this node's signed peer record and the
    /// reservation is renewed until the connection to the relay closes. Returns how long the
    /// relay granted.
    pub async fn reserve_relay(&self, relay: PeerId) -> Result<Duration, RequestError> {
        let shared = self.relay_shared()?;
        let conn = self.connection(relay).await?;
        let ttl = match reserve_once(&conn).await {
            Ok(ttl) => {
                self.observe(relay, Observation::RelayServed).await;
                ttl
            }
            Err(e) => {
                self.observe(relay, Observation::RelayFailed).await;
                return Err(e);
            }
        };
        let until = tokio::time::Instant::now() + ttl;
        shared
            .reserved_at
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(relay, until);
        self.publish_relays(&shared).await;
        info!(%relay, ?ttl, "reserved at relay");
        let handle = self.clone();
        tokio::spawn(async move {
            let mut ttl = ttl;
            loop {
                tokio::select! {
                    _ = conn.closed() => break,
                    () = tokio::time::sleep(ttl.mul_f64(0.75).max(Duration::from_secs(1))) => {
                        match reserve_once(&conn).await {
                            Ok(t) => ttl = t,
                            Err(e) => {
                                debug!(%relay, error = %e, "reservation not renewed");
                                break;
                            }
                        }
                    }
                }
            }
            shared
                .reserved_at
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&relay);
            handle.publish_relays(&shared).await;
        });
        Ok(ttl)
    }

    /// Connects to `peer` through `relay` (a connected peer where `peer` holds a reservation):
    /// opens a circuit and runs the end-to-end QUIC connection over it. The relay sees only
    /// ciphertext. Fails with the relay's reason if it refuses.
    pub async fn dial_relayed(&self, peer: PeerId, relay: PeerId) -> Result<(), RequestError> {
        let shared = self.relay_shared()?;
        let Some(socket) = shared.socket.clone() else {
            return Err(RequestError::Stream(
                "relayed connections need an IPv4 listen address".into(),
            ));
        };
        let conn = self.connection(relay).await?;
        let asked = ask(&conn, &Header::Connect { target: peer }).await;
        let Ok((send, recv, reply)) = asked else {
            self.observe(relay, Observation::RelayFailed).await;
            return asked.map(|_| ());
        };
        if let Reply::Refused(refusal) = reply {
            // A refusal is the relay's right (the target holds no reservation, a quota is
            // spent): no mark against it.
            return Err(RequestError::Relay(refusal));
        }
        let path = socket.open_path();
        let addr = path.addr;
        let hold = shared.memory.hold(conn.stable_id());
        let pumped = socket.clone();
        tokio::spawn(async move {
            let _hold = hold;
            pump(pumped, path, recv, send).await
        });
        let result = self.dial(peer, addr).await;
        if let Err(e) = &result {
            socket.close_path(&addr);
            return Err(RequestError::Stream(format!("dial over the relay: {e}")));
        }
        self.observe(relay, Observation::RelayServed).await;
        Ok(())
    }

    /// Connects to the relay `peer` at `addr` over TCP, for a node whose UDP is blocked: the
    /// QUIC connection to the relay runs inside the TCP link (relays accept TCP on their QUIC
    /// port). Reservations and circuits then work over it as over UDP.
    pub async fn dial_relay_tcp(&self, peer: PeerId, addr: SocketAddr) -> Result<(), RequestError> {
        let shared = self.relay_shared()?;
        dial_tcp(self, &shared, peer, addr).await
    }

    /// Puts the relays where this node holds reservations into its signed record.
    async fn publish_relays(&self, shared: &RelayShared) {
        let relays: Vec<PeerId> = shared
            .reserved_at
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .copied()
            .collect();
        self.set_relays(relays).await;
    }
}

/// Asks a relay for a reservation (or its renewal): how long it lasts.
async fn reserve_once(conn: &quinn::Connection) -> Result<Duration, RequestError> {
    let (_send, _recv, reply) = ask(conn, &Header::Reserve).await?;
    match reply {
        Reply::Ok { secs, .. } => Ok(Duration::from_secs(secs)),
        Reply::Refused(refusal) => Err(RequestError::Relay(refusal)),
    }
}

/// Most TCP links a relay carries at once (UDP-blocked nodes reaching it over TCP).
pub(crate) const MAX_TCP_LINKS: usize = 64;

/// Accepts TCP links on a relay's listen address: each carries one QUIC connection's packets
/// (2-byte length, packet) from a node whose UDP is blocked, received on a relayed path of the
/// relay's socket. The QUIC connection inside is authenticated as usual; TCP adds nothing to
/// trust. At most [`MAX_TCP_LINKS`] at once; more are refused by closing them.
pub(crate) async fn serve_tcp(listener: tokio::net::TcpListener, socket: Arc<NodeSocket>) {
    let links = Arc::new(tokio::sync::Semaphore::new(MAX_TCP_LINKS));
    loop {
        let Ok((stream, from)) = listener.accept().await else {
            continue;
        };
        let Ok(permit) = links.clone().try_acquire_owned() else {
            debug!(%from, "TCP link refused: at the limit");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let path = socket.open_path();
        debug!(%from, addr = %path.addr, "TCP link up");
        let socket = socket.clone();
        tokio::spawn(async move {
            let (read, write) = stream.into_split();
            pump(socket, path, read, write).await;
            drop(permit);
        });
    }
}

/// Reaches the relay at `addr` over TCP (for a node whose UDP is blocked) and dials `peer`
/// (the relay's id) through that link: the QUIC connection runs inside it.
pub(crate) async fn dial_tcp(
    handle: &NodeHandle,
    shared: &RelayShared,
    peer: PeerId,
    addr: SocketAddr,
) -> Result<(), RequestError> {
    let Some(socket) = shared.socket.clone() else {
        return Err(RequestError::Stream(
            "a TCP link needs an IPv4 listen address".into(),
        ));
    };
    let stream = tokio::time::timeout(ANSWER_TIMEOUT, tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| RequestError::Stream(format!("TCP connect to {addr} timed out")))?
        .map_err(|e| RequestError::Stream(format!("TCP connect to {addr}: {e}")))?;
    let _ = stream.set_nodelay(true);
    let path = socket.open_path();
    let path_addr = path.addr;
    let (read, write) = stream.into_split();
    tokio::spawn(pump(socket.clone(), path, read, write));
    if let Err(e) = handle.dial(peer, path_addr).await {
        socket.close_path(&path_addr);
        return Err(RequestError::Stream(format!("dial over TCP: {e}")));
    }
    Ok(())
}

/// Carries a relayed path over a byte stream (a circuit's QUIC streams, or a TCP link):
/// quinn's packets for the path go out framed, framed packets that come in are received as if
/// from the path's address. Ends when either direction does, or after [`IDLE_TIMEOUT`] without
/// a packet.
async fn pump(
    socket: Arc<NodeSocket>,
    path: PathEnds,
    mut read: impl tokio::io::AsyncRead + Unpin,
    mut write: impl tokio::io::AsyncWrite + Unpin,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let PathEnds {
        addr,
        mut outgoing,
        incoming,
    } = path;
    let up = async {
        while let Some(packet) = outgoing.recv().await {
            let mut frame = Vec::with_capacity(packet.len() + 2);
            frame.extend_from_slice(&(packet.len() as u16).to_be_bytes());
            frame.extend_from_slice(&packet);
            if write.write_all(&frame).await.is_err() {
                break;
            }
        }
    };
    let down = async {
        loop {
            let mut len = [0u8; 2];
            match tokio::time::timeout(IDLE_TIMEOUT, read.read_exact(&mut len)).await {
                Ok(Ok(_)) => {}
                _ => break,
            }
            let len = usize::from(u16::from_be_bytes(len));
            if len == 0 || len > relay::MAX_PACKET_LEN {
                break;
            }
            let mut packet = vec![0u8; len];
            if read.read_exact(&mut packet).await.is_err() {
                break;
            }
            if incoming.send((addr, Bytes::from(packet))).await.is_err() {
                break;
            }
        }
    };
    tokio::select! {
        () = up => {}
        () = down => {}
    }
    socket.close_path(&addr);
    debug!(%addr, "relayed path closed");
}

/// The address of a relayed path is not a place anyone can dial.
pub(crate) fn is_relayed(addr: &SocketAddr) -> bool {
    relay::is_relayed_addr(addr)
}

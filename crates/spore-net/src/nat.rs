//! STUN on the QUIC socket: the socket wrapper that takes STUN datagrams out of quinn's way and
//! answers Binding requests, and the task that probes the configured STUN servers and keeps the
//! latest [`NatReport`] for `status`. What to send and what the answers mean is decided in
//! `spore_core::nat`; this module only moves datagrams and keeps time.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};

use bytes::Bytes;
use std::time::Duration;

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};
use spore_core::nat::relay::{is_relayed_addr, relayed_addr};
use spore_core::nat::stun::{self, Incoming, Response};
use spore_core::nat::{NatReport, Probe, ProbeConfig, ProbeEvent};
use tokio::sync::mpsc;
use tracing::{debug, info};

use crate::runtime::{Clock, Command, Input};

/// STUN responses waiting for the probe; more are dropped (the probe retransmits).
const RESPONSE_QUEUE: usize = 64;

/// NAT behaviour discovery settings.
#[derive(Debug, Clone)]
pub struct NatConfig {
    /// STUN servers to ask for our reflexive address: spore nodes (every node answers on its
    /// QUIC port) or any standard server. At most 8 are asked. Empty: no probing.
    pub stun_servers: Vec<SocketAddr>,
    /// How often the probe runs again (mappings expire and networks change). Default 10 min.
    pub probe_interval: Duration,
    /// Whether this node answers STUN Binding requests on its QUIC socket. Default on.
    pub answer_stun: bool,
    /// A TURN server to allocate a relayed address on (long-term credentials); the address
    /// becomes a hole-punching candidate. Default none.
    pub turn: Option<spore_core::nat::turn::TurnConfig>,
}

impl Default for NatConfig {
    fn default() -> Self {
        Self {
            stun_servers: Vec::new(),
            probe_interval: Duration::from_secs(600),
            answer_stun: true,
            turn: None,
        }
    }
}

/// The NAT part of `Status`.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct NatStatus {
    /// The STUN servers configured.
    pub stun_servers: Vec<SocketAddr>,
    /// The latest probe's findings, if one has finished.
    pub report: Option<NatReport>,
    /// Seconds since that probe finished.
    pub report_age_secs: Option<u64>,
    /// STUN Binding requests this node answered.
    pub stun_answered: u64,
    /// STUN datagrams dropped: responses nobody waited for, or more than the queue holds.
    pub stun_dropped: u64,
}

/// What the sockets and the probe task share with the runtime's `status`.
#[derive(Debug, Default)]
pub(crate) struct NatShared {
    answered: AtomicU64,
    dropped: AtomicU64,
    latest: Mutex<Option<(NatReport, tokio::time::Instant)>>,
}

impl NatShared {
    pub(crate) fn status(&self, config: &NatConfig) -> NatStatus {
        let latest = self
            .latest
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        NatStatus {
            stun_servers: config.stun_servers.clone(),
            report_age_secs: latest.as_ref().map(|(_, at)| at.elapsed().as_secs()),
            report: latest.map(|(r, _)| r),
            stun_answered: self.answered.load(Ordering::Relaxed),
            stun_dropped: self.dropped.load(Ordering::Relaxed),
        }
    }
}

/// The STUN responses that arrive on a socket, with the address each came from.
pub(crate) type Responses = mpsc::Receiver<(SocketAddr, Response)>;

/// The UDP socket under a QUIC endpoint, with STUN taken out: Binding requests are answered
/// here, Binding responses go to the probe, and everything else reaches quinn untouched.
pub(crate) struct NodeSocket {
    inner: Arc<dyn AsyncUdpSocket>,
    answer: bool,
    responses: mpsc::Sender<(SocketAddr, Response)>,
    shared: Arc<NatShared>,
    paths: Paths,
    /// Which source `poll_recv` reads first, alternated so neither starves the other.
    relayed_first: AtomicBool,
    /// Real addresses whose packets leave another way: by another socket (a path found by
    /// birthday probing, see `crate::birthday`) or through the TURN server (`crate::turn`).
    /// Empty nearly always, so checked by a flag first.
    redirects: Mutex<BTreeMap<SocketAddr, Redirect>>,
    has_redirects: AtomicBool,
    /// The TURN server, and where the datagrams it sends us go (set once, when TURN is on).
    turn: std::sync::OnceLock<(SocketAddr, mpsc::Sender<Bytes>)>,
}

/// Where packets for a redirected address go.
#[derive(Debug, Clone)]
enum Redirect {
    /// A pump of its own (a birthday socket).
    Pump(mpsc::Sender<Bytes>),
    /// A pump shared by many addresses, which needs to know each packet's destination (TURN).
    Shared(mpsc::Sender<(SocketAddr, Bytes)>),
}

impl Redirect {
    fn is_closed(&self) -> bool {
        match self {
            Redirect::Pump(tx) => tx.is_closed(),
            Redirect::Shared(tx) => tx.is_closed(),
        }
    }
}

/// Relayed paths: QUIC packets to and from addresses in 240.0.0.0/4 that stand for a circuit
/// through a relay. quinn sends to them like to any address; the socket hands the packets to
/// the circuit's pump instead of the network, and packets the pumps bring back are received as
/// if from that address.
struct Paths {
    /// Per path, the queue of packets for its pump; a full queue drops (like a full link).
    out: Mutex<BTreeMap<SocketAddr, mpsc::Sender<Bytes>>>,
    incoming_tx: mpsc::Sender<(SocketAddr, Bytes)>,
    incoming: Mutex<mpsc::Receiver<(SocketAddr, Bytes)>>,
    next: AtomicU64,
}

/// Packets queued per relayed path in each direction.
const PATH_QUEUE: usize = 256;

/// Most addresses redirected at once (birthday paths and peers reached through TURN).
const MAX_REDIRECTS: usize = 64;

/// Hands `transmit`'s datagrams (one per segment) to `queue` until it refuses one (a full
/// queue drops the rest, like a full link).
fn queue_segments(transmit: &Transmit, mut queue: impl FnMut(Bytes) -> bool) {
    let size = transmit
        .segment_size
        .unwrap_or(transmit.contents.len())
        .max(1);
    for segment in transmit.contents.chunks(size) {
        if !queue(Bytes::copy_from_slice(segment)) {
            break;
        }
    }
}

/// The pump's ends of a relayed path: packets quinn sent to it, and where to deliver packets
/// that arrive on it.
pub(crate) struct PathEnds {
    /// The path's address, as quinn knows it.
    pub(crate) addr: SocketAddr,
    /// Packets quinn sent on the path.
    pub(crate) outgoing: mpsc::Receiver<Bytes>,
    /// Deliver packets that arrived on the path (with the path's address).
    pub(crate) incoming: mpsc::Sender<(SocketAddr, Bytes)>,
}

impl fmt::Debug for NodeSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeSocket")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl NodeSocket {
    /// Wraps `socket`; the receiver gets the STUN responses that arrive on it.
    pub(crate) fn new(
        socket: UdpSocket,
        answer: bool,
        shared: Arc<NatShared>,
    ) -> io::Result<(Arc<Self>, Responses)> {
        let runtime = quinn::default_runtime()
            .ok_or_else(|| io::Error::other("no async runtime for quinn"))?;
        let inner = runtime.wrap_udp_socket(socket)?;
        let (responses, rx) = mpsc::channel(RESPONSE_QUEUE);
        let (incoming_tx, incoming) = mpsc::channel(PATH_QUEUE);
        let socket = Arc::new(Self {
            inner,
            answer,
            responses,
            shared,
            paths: Paths {
                out: Mutex::new(BTreeMap::new()),
                incoming_tx,
                incoming: Mutex::new(incoming),
                next: AtomicU64::new(0),
            },
            relayed_first: AtomicBool::new(false),
            redirects: Mutex::new(BTreeMap::new()),
            has_redirects: AtomicBool::new(false),
            turn: std::sync::OnceLock::new(),
        });
        Ok((socket, rx))
    }

    /// Opens a relayed path: quinn may dial (or be dialed from) `PathEnds::addr` once a pump
    /// carries the packets. Close it with [`close_path`](Self::close_path).
    pub(crate) fn open_path(&self) -> PathEnds {
        let n = self.paths.next.fetch_add(1, Ordering::Relaxed);
        let addr = relayed_addr(n);
        let (tx, outgoing) = mpsc::channel(PATH_QUEUE);
        self.paths
            .out
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(addr, tx);
        PathEnds {
            addr,
            outgoing,
            incoming: self.paths.incoming_tx.clone(),
        }
    }

    /// Forgets a relayed path: packets quinn still sends to it are dropped.
    pub(crate) fn close_path(&self, addr: &SocketAddr) {
        self.paths
            .out
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(addr);
    }

    /// Sends what quinn sends to `addr` (a real address) through another socket's pump from
    /// now on; packets the pump brings back are received as if from `addr` on this socket. At
    /// most [`MAX_REDIRECTS`], one per address; `None` when that many are in use or `addr` has
    /// a live one. It ends when the pump drops its ends; [`end_redirect`](Self::end_redirect)
    /// then forgets it.
    pub(crate) fn redirect(&self, addr: SocketAddr) -> Option<PathEnds> {
        let (tx, outgoing) = mpsc::channel(PATH_QUEUE);
        if !self.add_redirect(addr, Redirect::Pump(tx)) {
            return None;
        }
        Some(PathEnds {
            addr,
            outgoing,
            incoming: self.paths.incoming_tx.clone(),
        })
    }

    /// Like [`redirect`](Self::redirect), into a pump shared by several addresses (`pump`
    /// gets each packet with its destination); false when no more redirects fit or `addr` has
    /// a live one. Undo with [`unredirect`](Self::unredirect).
    pub(crate) fn redirect_shared(
        &self,
        addr: SocketAddr,
        pump: mpsc::Sender<(SocketAddr, Bytes)>,
    ) -> bool {
        self.add_redirect(addr, Redirect::Shared(pump))
    }

    /// Adds a redirect of `addr` (dead ones are dropped first); false when [`MAX_REDIRECTS`]
    /// are in use or `addr` has a live one.
    fn add_redirect(&self, addr: SocketAddr, redirect: Redirect) -> bool {
        let mut redirects = self.redirects.lock().unwrap_or_else(|e| e.into_inner());
        redirects.retain(|_, r| !r.is_closed());
        if redirects.len() >= MAX_REDIRECTS || redirects.contains_key(&addr) {
            return false;
        }
        redirects.insert(addr, redirect);
        self.has_redirects.store(true, Ordering::Release);
        true
    }

    /// Sends to `addr` from this socket again, whatever carried it.
    pub(crate) fn unredirect(&self, addr: &SocketAddr) {
        let mut redirects = self.redirects.lock().unwrap_or_else(|e| e.into_inner());
        redirects.remove(addr);
        self.has_redirects
            .store(!redirects.is_empty(), Ordering::Release);
    }

    /// Delivers `packet` to quinn as if it had arrived from `from` (a pump's catch); a full
    /// queue drops it, like a full link.
    pub(crate) fn inject(&self, from: SocketAddr, packet: Bytes) {
        let _ = self.paths.incoming_tx.try_send((from, packet));
    }

    /// Routes what `server` (the TURN server) sends us to `datagrams`, except STUN Binding
    /// responses, which stay with the NAT probe (a TURN server is a STUN server too). Once.
    pub(crate) fn set_turn(&self, server: SocketAddr, datagrams: mpsc::Sender<Bytes>) {
        let _ = self.turn.set((server, datagrams));
    }

    /// Hands a datagram from the TURN server to the TURN task; whether it was taken.
    fn take_turn(&self, datagram: &[u8], meta: &RecvMeta) -> bool {
        let Some((server, datagrams)) = self.turn.get() else {
            return false;
        };
        if meta.addr != *server || meta.stride != meta.len || datagram.len() < 20 {
            return false;
        }
        // STUN's first byte is 0–3; Binding success and error responses are 0x0101, 0x0111.
        let kind = u16::from_be_bytes([datagram[0], datagram[1]]);
        if datagram[0] > 3 || kind == 0x0101 || kind == 0x0111 {
            return false;
        }
        if datagrams
            .try_send(Bytes::copy_from_slice(datagram))
            .is_err()
        {
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
        }
        true
    }

    /// Sends to `addr` from this socket again, once the pump that carried it has dropped its
    /// ends (a newer redirect of the same address is kept).
    pub(crate) fn end_redirect(&self, addr: &SocketAddr) {
        let mut redirects = self.redirects.lock().unwrap_or_else(|e| e.into_inner());
        if redirects.get(addr).is_some_and(Redirect::is_closed) {
            redirects.remove(addr);
        }
        self.has_redirects
            .store(!redirects.is_empty(), Ordering::Release);
    }

    /// The pump `transmit` goes to instead of the network, if its destination is redirected.
    fn redirected(&self, transmit: &Transmit) -> Option<Redirect> {
        if !self.has_redirects.load(Ordering::Acquire) {
            return None;
        }
        let redirects = self.redirects.lock().unwrap_or_else(|e| e.into_inner());
        redirects.get(&transmit.destination).cloned()
    }

    /// Queues quinn's packets for a relayed path, one per segment.
    fn send_relayed(&self, transmit: &Transmit) {
        let out = self.paths.out.lock().unwrap_or_else(|e| e.into_inner());
        let Some(tx) = out.get(&transmit.destination) else {
            return;
        };
        queue_segments(transmit, |packet| tx.try_send(packet).is_ok());
    }

    /// Moves packets that arrived on relayed paths into quinn's buffers.
    fn poll_relayed(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> usize {
        let mut incoming = self
            .paths
            .incoming
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let mut n = 0;
        while n < bufs.len().min(meta.len()) {
            let Poll::Ready(Some((addr, packet))) = incoming.poll_recv(cx) else {
                break;
            };
            let len = packet.len();
            if len == 0 || len > bufs[n].len() {
                continue;
            }
            bufs[n][..len].copy_from_slice(&packet);
            meta[n] = RecvMeta {
                addr,
                len,
                stride: len,
                ecn: None,
                dst_ip: None,
            };
            n += 1;
        }
        n
    }

    /// Sends one datagram; a full socket buffer drops it (STUN retransmits).
    pub(crate) fn send_to(&self, destination: SocketAddr, contents: &[u8]) {
        self.send(destination, contents, None);
    }

    fn send(&self, destination: SocketAddr, contents: &[u8], src_ip: Option<IpAddr>) {
        let transmit = Transmit {
            destination,
            ecn: None,
            contents,
            segment_size: None,
            src_ip,
        };
        if let Err(e) = self.inner.try_send(&transmit) {
            debug!(%destination, error = %e, "STUN datagram not sent");
        }
    }

    /// Handles a datagram if it is STUN; returns whether it was.
    fn take_stun(&self, datagram: &[u8], meta: &RecvMeta) -> bool {
        if meta.stride != meta.len || !stun::is_stun(datagram) {
            return false;
        }
        match stun::handle(datagram, meta.addr) {
            Incoming::Request { reply } if self.answer => {
                self.send(meta.addr, &reply, meta.dst_ip);
                self.shared.answered.fetch_add(1, Ordering::Relaxed);
            }
            Incoming::Response(response) => {
                if self.responses.try_send((meta.addr, response)).is_err() {
                    self.shared.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
            _ => {
                self.shared.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
        true
    }
}

impl AsyncUdpSocket for NodeSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        if is_relayed_addr(&transmit.destination) {
            self.send_relayed(transmit);
            return Ok(());
        }
        match self.redirected(transmit) {
            Some(Redirect::Pump(pump)) => {
                queue_segments(transmit, |packet| pump.try_send(packet).is_ok());
                return Ok(());
            }
            Some(Redirect::Shared(pump)) => {
                let to = transmit.destination;
                queue_segments(transmit, |packet| pump.try_send((to, packet)).is_ok());
                return Ok(());
            }
            None => {}
        }
        self.inner.try_send(transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        // Relayed packets first every other call, so neither source starves the other.
        let relayed_first = !self.relayed_first.fetch_xor(true, Ordering::Relaxed);
        if relayed_first {
            let n = self.poll_relayed(cx, bufs, meta);
            if n > 0 {
                return Poll::Ready(Ok(n));
            }
        }
        loop {
            let n = match self.inner.poll_recv(cx, bufs, meta) {
                Poll::Ready(result) => result?,
                Poll::Pending if relayed_first => return Poll::Pending,
                Poll::Pending => {
                    let n = self.poll_relayed(cx, bufs, meta);
                    return if n > 0 {
                        Poll::Ready(Ok(n))
                    } else {
                        Poll::Pending
                    };
                }
            };
            // Keep the non-STUN datagrams, moved down over the ones taken out.
            let mut kept = 0;
            for i in 0..n {
                let len = meta[i].len;
                if self.take_turn(&bufs[i][..len], &meta[i])
                    || self.take_stun(&bufs[i][..len], &meta[i])
                {
                    continue;
                }
                if kept != i {
                    let (lo, hi) = bufs.split_at_mut(i);
                    lo[kept][..len].copy_from_slice(&hi[0][..len]);
                    meta[kept] = meta[i];
                }
                kept += 1;
            }
            if kept > 0 {
                return Poll::Ready(Ok(kept));
            }
            // Only STUN arrived: read again, which registers for wakeup if nothing is left.
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

/// The address the OS would send from towards `server` (a UDP connect sends nothing), with our
/// socket's port: what the server would see if there were no NAT.
fn host_address(socket: &NodeSocket, server: SocketAddr) -> Option<SocketAddr> {
    let local = socket.local_addr().ok()?;
    if !local.ip().is_unspecified() {
        return Some(local);
    }
    let bind: SocketAddr = if server.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let probe = UdpSocket::bind(bind).ok()?;
    probe.connect(server).ok()?;
    Some(SocketAddr::new(probe.local_addr().ok()?.ip(), local.port()))
}

/// Probes the STUN servers from `socket` now and every `probe_interval`, keeping the latest
/// report in `shared`. Runs until the socket's endpoint is gone.
/// Holds the socket weakly: when the endpoint drops it, the response channel closes and the
/// loop ends.
pub(crate) async fn probe_loop(
    socket: Weak<NodeSocket>,
    mut responses: Responses,
    config: NatConfig,
    clock: Clock,
    shared: Arc<NatShared>,
    inputs: mpsc::Sender<Input>,
) {
    let servers: Vec<(SocketAddr, Option<SocketAddr>)> = {
        let Some(socket) = socket.upgrade() else {
            return;
        };
        let family = socket.local_addr().map(|a| a.is_ipv4()).unwrap_or(true);
        config
            .stun_servers
            .iter()
            .filter(|s| s.is_ipv4() == family)
            .map(|s| (*s, host_address(&socket, *s)))
            .collect()
    };
    if servers.is_empty() {
        // Keep draining so that unsolicited responses never pile up.
        while responses.recv().await.is_some() {
            shared.dropped.fetch_add(1, Ordering::Relaxed);
        }
        return;
    }
    let mut rng = rand_core::OsRng;
    loop {
        let mut probe = Probe::start(clock.now(), ProbeConfig::default(), &servers, &mut rng);
        let report = loop {
            while let Some((to, datagram)) = probe.poll_transmit() {
                let Some(socket) = socket.upgrade() else {
                    return;
                };
                socket.send_to(to, &datagram);
            }
            let mut finished = None;
            while let Some(event) = probe.poll_event() {
                match event {
                    ProbeEvent::Mapped { server, mapped } => {
                        debug!(%server, %mapped, "STUN server saw us");
                    }
                    ProbeEvent::Failed { server, code } => {
                        debug!(%server, ?code, "STUN server did not answer");
                    }
                    ProbeEvent::Done(report) => finished = Some(report),
                }
            }
            if let Some(report) = finished {
                break report;
            }
            let deadline = probe
                .poll_timeout()
                .map_or_else(tokio::time::Instant::now, |t| clock.to_tokio(t));
            tokio::select! {
                received = responses.recv() => {
                    let Some((from, response)) = received else { return };
                    if !probe.handle_response(clock.now(), from, &response, &mut rng) {
                        shared.dropped.fetch_add(1, Ordering::Relaxed);
                    }
                }
                () = tokio::time::sleep_until(deadline) => probe.handle_timeout(clock.now(), &mut rng),
            }
        };
        info!(
            reflexive = ?report.reflexive,
            mapping = ?report.mapping,
            filtering = ?report.filtering,
            answered = report.answered,
            asked = report.asked,
            "NAT probe finished"
        );
        // The reflexive addresses are hole-punching candidates.
        let command = Command::SetPunchCandidates {
            addrs: report.reflexive.clone(),
            mapping: report.mapping,
        };
        if inputs.send(Input::Command(command)).await.is_err() {
            return;
        }
        *shared.latest.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((report, tokio::time::Instant::now()));
        let next = tokio::time::Instant::now() + config.probe_interval;
        loop {
            tokio::select! {
                received = responses.recv() => {
                    if received.is_none() { return }
                    shared.dropped.fetch_add(1, Ordering::Relaxed);
                }
                () = tokio::time::sleep_until(next) => break,
            }
        }
    }
}

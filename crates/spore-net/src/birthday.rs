//! Birthday probing, the runtime's part: hole punching between a NAT that maps per destination
//! (symmetric) and one that maps endpoint-independently. Who does what, and when, is decided in
//! `spore_core::nat::punch` (see its module docs for the arithmetic); this module opens the
//! sockets, sends the probes, and turns the socket that was hit into a path of the node's
//! QUIC socket.
//!
//! - **Open** (the symmetric side): `sockets` new UDP sockets each send a STUN Binding request
//!   to the peer's one outside address every second; each gets its own port at our NAT. The
//!   first socket that hears anything STUN from that address wins: either a probe of the peer
//!   reached it, or our request passed the peer's NAT (opened by a probe) and the peer's node
//!   answered it. The node's socket then sends everything for that address through the winning
//!   socket ([`NodeSocket::redirect`]) and the node dials the peer: quinn sees the peer's real
//!   address, so the connection counts as direct like any punched one.
//! - **Probe** (the endpoint-independent side): `probes` Binding requests from the node's own
//!   socket to as many random ports of the peer's IP, paced, each opening our NAT to that port.
//!
//! Bounds: one birthday session at a time per node (the runtime holds a permit), at most
//! [`MAX_SOCKETS`] sockets and [`MAX_PROBES`] probes per session whatever the protocol asks,
//! probes at about [`PROBE_RATE`] per second, sockets open for at most [`OPEN_FOR`]. A peer can
//! thus direct at most 1,024 small packets (about 100 kB) per attempt at an address of its
//! choosing, and three attempts per relayed connection.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use rand_core::RngCore;
use spore_core::PeerId;
use spore_core::nat::stun;
use tokio::net::UdpSocket;
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tracing::{debug, info};

use crate::nat::{NodeSocket, PathEnds};
use crate::runtime::{Command, Input};

/// Most sockets one session opens.
pub(crate) const MAX_SOCKETS: usize = 512;
/// Most ports one session probes.
pub(crate) const MAX_PROBES: usize = 4096;
/// Probes per second.
pub(crate) const PROBE_RATE: u32 = 1000;
/// How long the opened sockets wait to be hit: less than a punch attempt's timeout, so the
/// next attempt finds the session over and can open new ones.
pub(crate) const OPEN_FOR: Duration = Duration::from_secs(4);
/// How often each opened socket sends its request again.
const RESEND: Duration = Duration::from_secs(1);
/// A found path with nothing received for this long is closed (QUIC keeps a live connection
/// talking every 10 s).
const PATH_IDLE: Duration = Duration::from_secs(60);
/// Probes sent back to back before a pause.
const PROBE_BATCH: usize = 16;

/// The symmetric side: opens up to `sockets` sockets towards `target`; if one is hit, redirects
/// `target` through it on `node_socket` and asks the runtime to dial `peer` there, then carries
/// the path's packets until it goes idle.
pub(crate) async fn open(
    node_socket: Arc<NodeSocket>,
    peer: PeerId,
    target: SocketAddr,
    sockets: u16,
    inputs: mpsc::Sender<Input>,
    permit: OwnedSemaphorePermit,
) {
    let bind: SocketAddr = if target.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let mut opened = Vec::new();
    for _ in 0..usize::from(sockets).min(MAX_SOCKETS) {
        match UdpSocket::bind(bind).await {
            Ok(socket) => opened.push(Arc::new(socket)),
            Err(e) => {
                debug!(error = %e, opened = opened.len(), "cannot open more birthday sockets");
                break;
            }
        }
    }
    let count = opened.len();
    let done = Arc::new(AtomicBool::new(false));
    let (hit_tx, mut hit_rx) = mpsc::channel::<usize>(1);
    let deadline = tokio::time::Instant::now() + OPEN_FOR;
    for (i, socket) in opened.iter().enumerate() {
        let socket = socket.clone();
        let done = done.clone();
        let hit_tx = hit_tx.clone();
        tokio::spawn(async move {
            let mut transaction = [0u8; 12];
            rand_core::OsRng.fill_bytes(&mut transaction);
            let request = stun::binding_request(transaction, None);
            let mut buf = [0u8; stun::MAX_MESSAGE_LEN];
            while !done.load(Ordering::Relaxed) && tokio::time::Instant::now() < deadline {
                let _ = socket.send_to(&request, target).await;
                let heard = tokio::time::timeout(RESEND, socket.recv_from(&mut buf)).await;
                if let Ok(Ok((len, from))) = heard
                    && from == target
                    && stun::is_stun(&buf[..len])
                {
                    let _ = hit_tx.try_send(i);
                    return;
                }
            }
        });
    }
    drop(hit_tx);
    debug!(%peer, %target, sockets = count, "birthday probing: sockets open");
    let hit = tokio::time::timeout_at(deadline, hit_rx.recv()).await;
    done.store(true, Ordering::Relaxed);
    let Ok(Some(index)) = hit else {
        debug!(%peer, %target, "birthday probing: no socket was hit");
        return;
    };
    let winner = opened.swap_remove(index);
    drop(opened);
    let Some(ends) = node_socket.redirect(target) else {
        debug!(%peer, %target, "birthday probing: too many redirected paths");
        return;
    };
    info!(%peer, %target, socket = index, of = count, "birthday probing: a socket was hit");
    drop(permit);
    let dial = Command::BirthdayDial { peer, addr: target };
    if inputs.send(Input::Command(dial)).await.is_ok() {
        carry(winner, ends).await;
    } else {
        drop(ends);
    }
    node_socket.end_redirect(&target);
    debug!(%peer, %target, "birthday path closed");
}

/// Carries a found path's packets: what quinn sends to its address goes out of `socket`, what
/// arrives there from that address goes to quinn. Ends when nothing arrives for [`PATH_IDLE`].
async fn carry(socket: Arc<UdpSocket>, mut ends: PathEnds) {
    let target = ends.addr;
    let mut buf = vec![0u8; 65_536];
    loop {
        tokio::select! {
            out = ends.outgoing.recv() => {
                let Some(packet) = out else { return };
                let _ = socket.send_to(&packet, target).await;
            }
            got = tokio::time::timeout(PATH_IDLE, socket.recv_from(&mut buf)) => {
                let Ok(Ok((len, from))) = got else { return };
                // The peer's late probes and answers are STUN, not QUIC.
                if from != target || len == 0 || stun::is_stun(&buf[..len]) {
                    continue;
                }
                // A full queue drops the packet, like a full link; QUIC recovers.
                let _ = ends.incoming.try_send((target, Bytes::copy_from_slice(&buf[..len])));
            }
        }
    }
}

/// The endpoint-independent side: sends up to `probes` STUN Binding requests from the node's
/// socket to distinct random ports of `ip`, at about [`PROBE_RATE`] per second.
pub(crate) async fn probe(
    node_socket: Arc<NodeSocket>,
    peer: PeerId,
    ip: IpAddr,
    probes: u16,
    permit: OwnedSemaphorePermit,
) {
    let count = usize::from(probes).min(MAX_PROBES);
    let ports = random_ports(count, &mut rand_core::OsRng);
    let mut transaction = [0u8; 12];
    rand_core::OsRng.fill_bytes(&mut transaction);
    let pause = Duration::from_secs(1) * PROBE_BATCH as u32 / PROBE_RATE;
    debug!(%peer, %ip, probes = count, "birthday probing: probing");
    for (k, port) in ports.into_iter().enumerate() {
        transaction[..4].copy_from_slice(&(k as u32).to_be_bytes());
        let request = stun::binding_request(transaction, None);
        node_socket.send_to(SocketAddr::new(ip, port), &request);
        if k % PROBE_BATCH == PROBE_BATCH - 1 {
            tokio::time::sleep(pause).await;
        }
    }
    drop(permit);
}

/// `count` distinct ports from 1024–65535 (the range NATs map into), in random order.
fn random_ports(count: usize, rng: &mut impl RngCore) -> Vec<u16> {
    let count = count.min(65_536 - 1024);
    let mut seen = BTreeSet::new();
    let mut out = Vec::with_capacity(count);
    while out.len() < count {
        let port = 1024 + (rng.next_u32() % (65_536 - 1024)) as u16;
        if seen.insert(port) {
            out.push(port);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use rand_core::SeedableRng;

    #[test]
    fn probed_ports_are_distinct_and_outside_the_system_range() {
        let mut rng = rand_chacha::ChaCha20Rng::from_seed([7; 32]);
        let ports = random_ports(1024, &mut rng);
        assert_eq!(ports.len(), 1024);
        assert_eq!(ports.iter().collect::<BTreeSet<_>>().len(), 1024);
        assert!(ports.iter().all(|p| *p >= 1024));
        // Asking for more than there are gives every port once.
        assert_eq!(random_ports(70_000, &mut rng).len(), 65_536 - 1024);
    }
}

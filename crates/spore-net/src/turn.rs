//! TURN on the node's socket: the task that drives `spore_core::nat::turn`'s client over the
//! QUIC socket, so the relayed address it allocates is one more way to reach this node.
//!
//! - The allocation is made from the node's own socket (the TURN server's datagrams are taken
//!   out before quinn sees them, [`NodeSocket::set_turn`]); its relayed address becomes a
//!   hole-punching candidate, so a peer that cannot reach us otherwise dials it.
//! - Permissions: when a punch dials a peer, the peer's candidate IPs get a permission, so its
//!   dial to our relayed address passes the server.
//! - Data: a peer's packets arrive in Data indications and are handed to quinn as if they came
//!   from the peer's address (as the server saw it); from then on, what quinn sends to that
//!   address goes back through the server in Send indications ([`NodeSocket::redirect_shared`]).
//!   A peer not heard from for [`PEER_IDLE`] is forgotten. At most [`MAX_PEERS`] at once.
//! - Stopping the node releases the allocation.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use spore_core::nat::turn::{Handled, TurnClient, TurnConfig, TurnEvent};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::nat::NodeSocket;
use crate::runtime::{Clock, Command, Input};

/// Datagrams from the server waiting for the task.
pub(crate) const DATAGRAM_QUEUE: usize = 256;
/// Peers reached through the server at once.
pub(crate) const MAX_PEERS: usize = 32;
/// A peer not heard from through the server for this long is forgotten.
const PEER_IDLE: Duration = Duration::from_secs(60);
/// Packets from quinn waiting to be wrapped for the server.
const OUT_QUEUE: usize = 256;

/// What the runtime asks of the TURN task.
#[derive(Debug)]
pub(crate) enum TurnCommand {
    /// Let these peers send to our relayed address.
    Permit(Vec<IpAddr>),
    /// Release the allocation and stop.
    Close,
}

/// The TURN part of `Status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TurnStatus {
    /// The TURN server, if one is configured.
    pub server: Option<SocketAddr>,
    /// The relayed address it allocated for us.
    pub relayed: Option<SocketAddr>,
    /// Why there is none, when known.
    pub problem: Option<String>,
    /// Peer IPs with a permission.
    pub permitted: usize,
    /// Peers whose packets come and go through the server now.
    pub peers: usize,
}

impl TurnStatus {
    /// One line for `spore status`.
    pub fn summary(&self) -> String {
        match (self.server, self.relayed, &self.problem) {
            (None, _, _) => {
                "off (--turn USER:PASSWORD@HOST:PORT allocates a relayed address)".into()
            }
            (Some(server), Some(relayed), _) => format!(
                "relayed address {relayed} on {server} ({} peers permitted, {} through it)",
                self.permitted, self.peers
            ),
            (Some(server), None, Some(problem)) => format!("none from {server}: {problem}"),
            (Some(server), None, None) => format!("asking {server}…"),
        }
    }
}

/// Runs the TURN client of `config` on `socket` until the runtime asks it to close or is gone.
pub(crate) async fn run(
    config: TurnConfig,
    socket: Arc<NodeSocket>,
    mut datagrams: mpsc::Receiver<Bytes>,
    mut commands: mpsc::Receiver<TurnCommand>,
    inputs: mpsc::Sender<Input>,
    status: Arc<Mutex<TurnStatus>>,
    clock: Clock,
) {
    let server = config.server;
    let mut rng = rand_core::OsRng;
    let mut client = TurnClient::new(config, clock.now(), &mut rng);
    let (out_tx, mut out_rx) = mpsc::channel::<(SocketAddr, Bytes)>(OUT_QUEUE);
    let mut peers: BTreeMap<SocketAddr, tokio::time::Instant> = BTreeMap::new();
    let set =
        |f: &dyn Fn(&mut TurnStatus)| f(&mut status.lock().unwrap_or_else(|e| e.into_inner()));
    set(&|s| s.server = Some(server));
    loop {
        while let Some(datagram) = client.poll_transmit() {
            socket.send_to(server, &datagram);
        }
        while let Some(event) = client.poll_event() {
            let candidate = match event {
                TurnEvent::Allocated { relayed, .. } => {
                    info!(%relayed, %server, "TURN relayed address allocated");
                    set(&|s| {
                        s.relayed = Some(relayed);
                        s.problem = None;
                    });
                    Some(Some(relayed))
                }
                TurnEvent::Failed { reason } => {
                    warn!(%server, %reason, "no TURN allocation");
                    set(&|s| {
                        s.relayed = None;
                        s.problem = Some(reason.clone());
                    });
                    Some(None)
                }
                TurnEvent::Permitted { ips } => {
                    debug!(?ips, "TURN permissions granted");
                    None
                }
            };
            if let Some(addr) = candidate {
                let command = Command::SetTurnCandidate { addr };
                if inputs.send(Input::Command(command)).await.is_err() {
                    return;
                }
            }
        }
        let peer_count = peers.len();
        let permitted = client.permitted();
        set(&|s| {
            s.peers = peer_count;
            s.permitted = permitted;
        });
        let now = tokio::time::Instant::now();
        let next_sweep = peers.values().min().map(|at| *at + PEER_IDLE);
        let deadline = client
            .poll_timeout()
            .map(|t| clock.to_tokio(t))
            .into_iter()
            .chain(next_sweep)
            .min()
            .unwrap_or(now + Duration::from_secs(60));
        tokio::select! {
            datagram = datagrams.recv() => {
                let Some(datagram) = datagram else { return };
                let handled = client.handle(&datagram, clock.now(), &mut rng);
                if let Handled::Data { peer, data } = handled {
                    if !peers.contains_key(&peer) {
                        if peers.len() >= MAX_PEERS || !socket.redirect_shared(peer, out_tx.clone()) {
                            debug!(%peer, "TURN peer dropped: too many");
                            continue;
                        }
                        debug!(%peer, "a peer reaches us through TURN");
                    }
                    peers.insert(peer, tokio::time::Instant::now());
                    socket.inject(peer, Bytes::from(data));
                }
            }
            out = out_rx.recv() => {
                let Some((peer, packet)) = out else { return };
                if let Some(indication) = client.wrap(peer, &packet, &mut rng) {
                    socket.send_to(server, &indication);
                }
            }
            command = commands.recv() => match command {
                Some(TurnCommand::Permit(ips)) => client.permit(&ips, clock.now(), &mut rng),
                Some(TurnCommand::Close) | None => {
                    client.close(clock.now(), &mut rng);
                    while let Some(datagram) = client.poll_transmit() {
                        socket.send_to(server, &datagram);
                    }
                    for peer in peers.keys() {
                        socket.unredirect(peer);
                    }
                    return;
                }
            },
            () = tokio::time::sleep_until(deadline) => {
                client.handle_timeout(clock.now(), &mut rng);
                let now = tokio::time::Instant::now();
                peers.retain(|peer, at| {
                    let live = *at + PEER_IDLE > now;
                    if !live {
                        socket.unredirect(peer);
                    }
                    live
                });
            }
        }
    }
}

/// Reads `USER:PASSWORD@HOST:PORT` (the password may hold `:` but not `@`).
pub fn parse_turn(s: &str) -> Result<TurnConfig, String> {
    let (credentials, server) = s
        .rsplit_once('@')
        .ok_or_else(|| format!("expected USER:PASSWORD@HOST:PORT, got {s:?} (no '@')"))?;
    let (username, password) = credentials
        .split_once(':')
        .ok_or_else(|| "expected USER:PASSWORD before '@' (no ':')".to_string())?;
    if username.is_empty() {
        return Err("the TURN user name is empty".into());
    }
    let server = server
        .parse()
        .map_err(|_| format!("invalid TURN server {server:?}: expected IP:PORT"))?;
    Ok(TurnConfig {
        server,
        username: username.into(),
        password: password.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn turn_settings_read_user_password_and_server() {
        let c = parse_turn("alice:pa:ss@192.0.2.1:3478").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.username, "alice");
        assert_eq!(c.password, "pa:ss");
        assert_eq!(
            c.server,
            "192.0.2.1:3478".parse().unwrap_or_else(|e| panic!("{e}"))
        );
        for bad in [
            "192.0.2.1:3478",
            "alice@192.0.2.1:3478",
            ":p@192.0.2.1:3478",
            "a:p@host",
        ] {
            assert!(parse_turn(bad).is_err(), "{bad}");
        }
    }
}

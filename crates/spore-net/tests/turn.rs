//! spore's TURN client (`spore_core::nat::turn`) against Debian's coturn on 127.0.0.1, with
//! long-term credentials: it allocates a relayed address, gives a peer permission, and data
//! crosses the relay both ways (a Data indication in, a Send indication out); a wrong password
//! is refused with coturn's 401 and reported. The client is sans-IO; here a plain UDP socket
//! and the wall clock drive it. Needs `turnserver` (Debian's coturn); without it the test
//! prints `skipping: …` and passes.

#![allow(clippy::unwrap_used)] // helpers of tests; a panic is how they fail

use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use spore_core::nat::turn::{Handled, TurnClient, TurnConfig, TurnEvent};
use spore_core::time::Instant;

/// coturn, killed when dropped.
struct Coturn(Child);

impl Drop for Coturn {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const USER: &str = "spore";
const PASSWORD: &str = "correct horse";
const REALM: &str = "spore.test";
/// coturn's relay ports for this test.
const RELAY_PORTS: (u16, u16) = (50_700, 50_799);

fn installed(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|d| d.join(program).is_file()))
}

/// A free UDP port on 127.0.0.1 (bound and released).
fn free_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_coturn(port: u16) -> Coturn {
    let child = Command::new("turnserver")
        .args(["-n", "--lt-cred-mech", "--no-tls", "--no-dtls", "--no-cli"])
        .args(["--user", &format!("{USER}:{PASSWORD}"), "--realm", REALM])
        .args(["--listening-ip", "127.0.0.1", "--relay-ip", "127.0.0.1"])
        .args(["--listening-port", &port.to_string()])
        .args(["--min-port", &RELAY_PORTS.0.to_string()])
        .args(["--max-port", &RELAY_PORTS.1.to_string()])
        // The peer of this test is on loopback too.
        .args([
            "--allow-loopback-peers",
            "--log-file",
            "stdout",
            "--simple-log",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start turnserver");
    // Give it a moment to bind.
    std::thread::sleep(Duration::from_millis(500));
    Coturn(child)
}

/// The client, its socket, and a clock for the sans-IO core.
struct Driver {
    client: TurnClient,
    socket: UdpSocket,
    started: std::time::Instant,
    rng: rand_core::OsRng,
}

impl Driver {
    fn new(server: SocketAddr, password: &str) -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let config = TurnConfig {
            server,
            username: USER.into(),
            password: password.into(),
        };
        let mut rng = rand_core::OsRng;
        let client = TurnClient::new(config, Instant::ZERO, &mut rng);
        Self {
            client,
            socket,
            started: std::time::Instant::now(),
            rng,
        }
    }

    fn now(&self) -> Instant {
        Instant::ZERO + self.started.elapsed()
    }

    /// Sends what the client wants sent, reads one datagram (or times out), and returns the
    /// client's events and the peer data that arrived.
    fn turn(&mut self) -> (Vec<TurnEvent>, Vec<(SocketAddr, Vec<u8>)>) {
        while let Some(datagram) = self.client.poll_transmit() {
            self.socket
                .send_to(&datagram, self.client.server())
                .unwrap();
        }
        let now = self.now();
        let wait = self
            .client
            .poll_timeout()
            .map_or(Duration::from_millis(200), |t| {
                t.saturating_duration_since(now)
            })
            .clamp(Duration::from_millis(1), Duration::from_millis(200));
        self.socket.set_read_timeout(Some(wait)).unwrap();
        let mut data = Vec::new();
        let mut buf = [0u8; 8192];
        if let Ok((len, from)) = self.socket.recv_from(&mut buf) {
            assert_eq!(from, self.client.server());
            let now = self.now();
            if let Handled::Data { peer, data: d } =
                self.client.handle(&buf[..len], now, &mut self.rng)
            {
                data.push((peer, d));
            }
        }
        let now = self.now();
        self.client.handle_timeout(now, &mut self.rng);
        let events = std::iter::from_fn(|| self.client.poll_event()).collect();
        (events, data)
    }

    /// Turns until an event `want` accepts, for up to 10 s.
    fn until(&mut self, want: impl Fn(&TurnEvent) -> bool) -> TurnEvent {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            let (events, _) = self.turn();
            if let Some(e) = events.into_iter().find(|e| want(e)) {
                return e;
            }
        }
        panic!("no such TURN event within 10 s");
    }
}

/// coturn on a free port of 127.0.0.1 and its address; `None` (after saying why) without it.
fn coturn() -> Option<(Coturn, SocketAddr)> {
    if !installed("turnserver") {
        println!("skipping: `turnserver` (Debian's coturn) is not installed");
        return None;
    }
    let port = free_port();
    Some((start_coturn(port), ([127, 0, 0, 1], port).into()))
}

#[test]
fn coturn_relays_data_both_ways_for_a_permitted_peer() {
    let Some((_coturn, server)) = coturn() else {
        return;
    };

    let mut turn = Driver::new(server, PASSWORD);
    let TurnEvent::Allocated {
        relayed,
        mapped,
        lifetime,
    } = turn.until(|e| matches!(e, TurnEvent::Allocated { .. }))
    else {
        unreachable!()
    };
    println!("relayed {relayed}, mapped {mapped:?}, lifetime {lifetime:?}");
    assert!(relayed.ip().is_loopback());
    assert!(
        (RELAY_PORTS.0..=RELAY_PORTS.1).contains(&relayed.port()),
        "{relayed}"
    );
    assert_eq!(mapped, Some(turn.socket.local_addr().unwrap()));
    assert!(lifetime >= Duration::from_secs(60), "{lifetime:?}");

    // A peer without permission is not relayed; with one, its datagram arrives.
    let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
    let peer_addr = peer.local_addr().unwrap();
    peer.send_to(b"not yet", relayed).unwrap();
    for _ in 0..5 {
        let (_, data) = turn.turn();
        assert!(data.is_empty(), "relayed without a permission: {data:?}");
    }
    turn.client
        .permit(&[peer_addr.ip()], turn.now(), &mut turn.rng);
    let permitted = turn.until(|e| matches!(e, TurnEvent::Permitted { .. }));
    assert_eq!(
        permitted,
        TurnEvent::Permitted {
            ips: vec![peer_addr.ip()]
        }
    );
    peer.send_to(b"hello through the relay", relayed).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let got = loop {
        let (_, data) = turn.turn();
        if let Some(d) = data.into_iter().next() {
            break d;
        }
        assert!(std::time::Instant::now() < deadline, "no Data indication");
    };
    assert_eq!(got, (peer_addr, b"hello through the relay".to_vec()));

    // And back: a Send indication leaves the relay from the relayed address.
    let send = turn
        .client
        .wrap(peer_addr, b"and back again", &mut turn.rng)
        .unwrap();
    turn.socket.send_to(&send, server).unwrap();
    peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 100];
    let (len, from) = peer.recv_from(&mut buf).unwrap();
    assert_eq!((&buf[..len], from), (&b"and back again"[..], relayed));

    // Releasing it: a Refresh with lifetime 0, answered.
    turn.client.close(turn.now(), &mut turn.rng);
    for _ in 0..10 {
        turn.turn();
    }
    assert_eq!(turn.client.relayed(), None);
}

#[test]
fn a_wrong_password_is_refused_and_reported() {
    let Some((_coturn, server)) = coturn() else {
        return;
    };
    let mut turn = Driver::new(server, "wrong");
    let failed = turn.until(|e| matches!(e, TurnEvent::Failed { .. }));
    println!("{failed:?}");
    let TurnEvent::Failed { reason } = failed else {
        unreachable!()
    };
    assert!(reason.starts_with("401"), "{reason}");
    assert_eq!(turn.client.relayed(), None);
}

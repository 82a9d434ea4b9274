//! Real nodes on 127.0.0.1: connection setup, identity checks, limits, and hostile input.

#![allow(clippy::unwrap_used)] // helpers of tests; a panic is how they fail

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use spore_core::node::{Event, PeerInfo};
use spore_core::pow::{Difficulty, Stamp};
use spore_core::wire::{self, Message};
use spore_core::{Keypair, ping};
use spore_net::{AppStreams, DialError, NetConfig, NodeHandle, close_code, tls};

const DIFFICULTY: Difficulty = Difficulty(8);

fn config(listen: &str) -> NetConfig {
    let mut config = NetConfig {
        listen: vec![listen.parse().unwrap()],
        ..NetConfig::default()
    };
    config.node.difficulty = DIFFICULTY;
    config
}

async fn node_with(config: NetConfig) -> (NodeHandle, AppStreams) {
    let keypair = Keypair::generate(&mut rand_core::OsRng);
    let stamp = Stamp::mint(&keypair.peer_id(), DIFFICULTY);
    spore_net::start(keypair, stamp, config).await.unwrap()
}

async fn node() -> NodeHandle {
    node_with(config("127.0.0.1:0")).await.0
}

fn addr(n: &NodeHandle) -> SocketAddr {
    n.listen_addrs()[0]
}

async fn ready_peers(n: &NodeHandle) -> Vec<PeerInfo> {
    n.peers()
        .await
        .unwrap()
        .into_iter()
        .filter(|p| p.ready)
        .collect()
}

/// Polls `check` until it holds or 5 s pass.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..250 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for: {what}");
}

#[tokio::test]
async fn two_nodes_connect_and_see_each_others_addresses() {
    let (a, b) = (node().await, node().await);
    a.dial(b.peer_id(), addr(&b)).await.unwrap();
    let a_view = ready_peers(&a).await;
    assert_eq!(a_view.len(), 1);
    assert_eq!(a_view[0].peer, b.peer_id());
    assert_eq!(a_view[0].addr, addr(&b));
    eventually("b sees a", || async { ready_peers(&b).await.len() == 1 }).await;
    let b_view = ready_peers(&b).await;
    assert_eq!(b_view[0].peer, a.peer_id());
    // b sees a's connection coming from a's socket, and a learns that address from b's Hello.
    assert_eq!(b_view[0].addr, addr(&a));
    assert_eq!(a_view[0].observed_us, Some(addr(&a)));
    assert!(a.ping(b.peer_id()).await.unwrap() < Duration::from_secs(1));
    let status = a.status().await.unwrap();
    assert_eq!(status.observed_addrs, vec![addr(&a)]);
}

#[tokio::test]
async fn wrong_peer_id_fails_naming_both_ids() {
    let (a, b) = (node().await, node().await);
    let mut b_events = b.subscribe();
    let wrong = Keypair::generate(&mut rand_core::OsRng).peer_id();
    let err = a.dial(wrong, addr(&b)).await.unwrap_err();
    match &err {
        DialError::PeerIdMismatch {
            expected, actual, ..
        } => {
            assert_eq!(*expected, wrong);
            assert_eq!(*actual, b.peer_id());
        }
        other => panic!("expected a mismatch, got {other:?}"),
    }
    let text = err.to_string();
    assert!(
        text.contains(&wrong.to_string()) && text.contains(&b.peer_id().to_string()),
        "{text}"
    );
    // No application data: neither side ever had a peer ready, and b's core saw no connection.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(a.peers().await.unwrap().is_empty());
    assert!(b.peers().await.unwrap().is_empty());
    assert!(
        b_events.try_recv().is_err(),
        "b's core must not have seen anything"
    );
}

#[tokio::test]
async fn simultaneous_dials_leave_one_connection() {
    for _ in 0..5 {
        let (a, b) = (node().await, node().await);
        let (ra, rb) = tokio::join!(a.dial(b.peer_id(), addr(&b)), b.dial(a.peer_id(), addr(&a)));
        ra.unwrap();
        rb.unwrap();
        eventually("one ready connection each", || async {
            a.status().await.unwrap().connections == 1
                && b.status().await.unwrap().connections == 1
                && ready_peers(&a).await.len() == 1
                && ready_peers(&b).await.len() == 1
        })
        .await;
        a.ping(b.peer_id()).await.unwrap();
        b.ping(a.peer_id()).await.unwrap();
    }
}

#[tokio::test]
async fn connection_limit_refuses_extra_connections() {
    // (The per-IP limit exempts loopback; it is unit-tested in the runtime.)
    let mut cfg = config("127.0.0.1:0");
    cfg.limits.max_connections = 1;
    let (b, _s) = node_with(cfg).await;
    let (a, c) = (node().await, node().await);
    a.dial(b.peer_id(), addr(&b)).await.unwrap();
    let err = c.dial(b.peer_id(), addr(&b)).await.unwrap_err();
    assert!(matches!(err, DialError::Connect { .. }), "{err:?}");
    assert_eq!(b.status().await.unwrap().runtime.refused, 1);
    // The admitted peer is unaffected.
    a.ping(b.peer_id()).await.unwrap();
}

#[tokio::test]
async fn app_streams_carry_bytes() {
    let a = node().await;
    let (b, mut b_streams) = node_with(config("127.0.0.1:0")).await;
    a.dial(b.peer_id(), addr(&b)).await.unwrap();
    let mut send = a.open_stream(b.peer_id()).await.unwrap();
    send.write_all(b"hello over a bulk stream").await.unwrap();
    send.finish().unwrap();
    let (from, mut recv) = b_streams.accept().await.unwrap();
    assert_eq!(from, a.peer_id());
    assert_eq!(
        recv.read_to_end(1024).await.unwrap(),
        b"hello over a bulk stream"
    );
}

#[tokio::test]
async fn shutdown_is_seen_by_the_peer() {
    let (a, b) = (node().await, node().await);
    a.dial(b.peer_id(), addr(&b)).await.unwrap();
    eventually("b ready", || async { ready_peers(&b).await.len() == 1 }).await;
    a.shutdown().await;
    eventually("b notices", || async {
        b.peers().await.unwrap().is_empty()
    })
    .await;
    assert!(a.peers().await.is_err(), "a stopped");
}

#[tokio::test]
async fn ipv6_loopback() {
    if std::net::UdpSocket::bind("[::1]:0").is_err() {
        eprintln!("skipping ipv6_loopback: this machine has no IPv6 loopback");
        return;
    }
    let (a, _) = node_with(config("[::1]:0")).await;
    let (b, _) = node_with(config("[::1]:0")).await;
    a.dial(b.peer_id(), addr(&b)).await.unwrap();
    assert_eq!(ready_peers(&a).await[0].observed_us, Some(addr(&a)));
    // An IPv4-only node says why it cannot dial an IPv6 address.
    let c = node().await;
    let err = c.dial(b.peer_id(), addr(&b)).await.unwrap_err();
    assert!(
        matches!(err, DialError::NoEndpoint { family: "IPv6", .. }),
        "{err:?}"
    );
}

/// A client that completes the real TLS handshake with a valid identity, then misbehaves.
struct RawPeer {
    conn: quinn::Connection,
    _endpoint: quinn::Endpoint,
}

impl RawPeer {
    async fn connect(target: &NodeHandle) -> RawPeer {
        let keypair = Keypair::generate(&mut rand_core::OsRng);
        let transport = Arc::new(quinn::TransportConfig::default());
        let client = tls::client_config(&keypair, target.peer_id(), transport).unwrap();
        let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        let conn = endpoint
            .connect_with(client, addr(target), tls::SERVER_NAME)
            .unwrap()
            .await
            .unwrap();
        RawPeer {
            conn,
            _endpoint: endpoint,
        }
    }

    /// Opens a uni stream and writes `bytes` to it.
    async fn send(&self, bytes: &[u8]) {
        let mut s = self.conn.open_uni().await.unwrap();
        s.write_all(bytes).await.unwrap();
        let _ = s.finish();
    }

    /// Waits for the node to close the connection; returns the application close code.
    async fn closed_with(&self) -> u32 {
        let err = tokio::time::timeout(Duration::from_secs(5), self.conn.closed())
            .await
            .expect("node should close the connection");
        match err {
            quinn::ConnectionError::ApplicationClosed(c) => c.error_code.into_inner() as u32,
            other => panic!("unexpected close: {other:?}"),
        }
    }
}

fn control(frames: &[&[u8]]) -> Vec<u8> {
    let mut out = vec![0u8]; // control stream kind
    for f in frames {
        out.extend_from_slice(f);
    }
    out
}

#[tokio::test]
async fn hostile_input_closes_only_the_offending_connection() {
    let b = node().await;
    let honest = node().await;
    honest.dial(b.peer_id(), addr(&b)).await.unwrap();

    // Garbage datagrams at the QUIC socket: ignored.
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    for i in 0..500u32 {
        let junk: Vec<u8> = (0..(i % 1400))
            .map(|j| (i.wrapping_mul(7) ^ j) as u8)
            .collect();
        sock.send_to(&junk, addr(&b)).unwrap();
    }

    let ping_frame = wire::encode_frame(&Message::Ping(ping::Message::Ping { nonce: 1 })).unwrap();
    let oversized = ((wire::MAX_FRAME_LEN + 1) as u32).to_be_bytes();
    let cases: Vec<(&str, Vec<u8>, u32)> = vec![
        (
            "malformed body",
            control(&[&[0, 0, 0, 3, 1, 0xff, 0xff]]),
            close_code::PROTOCOL,
        ),
        (
            "wrong version",
            control(&[&[0, 0, 0, 2, 9, 0]]),
            close_code::PROTOCOL,
        ),
        (
            "oversized frame",
            control(&[&oversized]),
            close_code::PROTOCOL,
        ),
        (
            "empty frame",
            control(&[&[0, 0, 0, 0]]),
            close_code::PROTOCOL,
        ),
        (
            "unknown stream kind",
            vec![0x7f, 1, 2, 3],
            close_code::PROTOCOL,
        ),
        (
            "malformed frame on the bulk stream",
            [&[0x02u8][..], &[0, 0, 0, 3, 1, 0xff, 0xff]].concat(),
            close_code::PROTOCOL,
        ),
        (
            "oversized frame on the bulk stream",
            [&[0x02u8][..], &oversized].concat(),
            close_code::PROTOCOL,
        ),
        (
            "truncated frame",
            control(&[&[0, 0, 0, 50, 1, 0]]),
            close_code::PROTOCOL,
        ),
        (
            "message before hello",
            control(&[&ping_frame]),
            close_code::REJECTED,
        ),
    ];
    for (what, bytes, code) in cases {
        let raw = RawPeer::connect(&b).await;
        raw.send(&bytes).await;
        assert_eq!(raw.closed_with().await, code, "{what}");
    }

    // The honest peer never noticed.
    honest.ping(b.peer_id()).await.unwrap();
    let status = b.status().await.unwrap();
    assert_eq!(status.runtime.wire_errors, 8);
    assert_eq!(status.core.violations, 1);
    assert_eq!(ready_peers(&b).await.len(), 1);
}

#[tokio::test]
async fn silent_peer_is_dropped_after_hello_timeout() {
    let mut cfg = config("127.0.0.1:0");
    cfg.node.hello_timeout = Duration::from_millis(300);
    let (b, _s) = node_with(cfg).await;
    let mut events = b.subscribe();
    let raw = RawPeer::connect(&b).await;
    assert_eq!(raw.closed_with().await, close_code::REJECTED);
    let event = tokio::time::timeout(Duration::from_secs(2), events.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(event, Event::Close { .. }), "{event:?}");
}

#[tokio::test]
async fn idle_connections_are_pruned_above_the_target() {
    let mut cfg = config("127.0.0.1:0");
    cfg.limits.target_connections = 1;
    cfg.limits.idle_after = Duration::from_millis(200);
    // Overlay neighbours are never pruned as idle (they keep the overlay connected): this is
    // about plain connections.
    cfg.node.gossip.enabled = false;
    // The hub dials every spoke, and the minimum of outbound connections would keep them.
    cfg.node.outbound.min_outbound = 0;
    let (hub, _s) = node_with(cfg.clone()).await;
    let spokes = [node().await, node().await, node().await];
    for s in &spokes {
        hub.dial(s.peer_id(), addr(s)).await.unwrap();
    }
    eventually("the hub prunes down to its target", || async {
        hub.status().await.unwrap().connections <= 1
    })
    .await;
    assert!(hub.status().await.unwrap().core.idle_closed >= 2);

    // With a minimum of two outbound connections, pruning stops at two.
    cfg.node.outbound.min_outbound = 2;
    let (hub, _s) = node_with(cfg).await;
    for s in &spokes {
        hub.dial(s.peer_id(), addr(s)).await.unwrap();
    }
    eventually("the hub prunes down to its outbound minimum", || async {
        hub.status().await.unwrap().connections <= 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(hub.status().await.unwrap().connections, 2);
}

/// The longest-lived outbound peers are saved as anchors at shutdown, and a restarted node with
/// no bootstrap peers dials them by itself.
#[tokio::test]
async fn anchors_bring_back_outbound_peers_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("anchors.txt");
    let (a, c) = (node().await, node().await);
    let keypair = Keypair::generate(&mut rand_core::OsRng);
    let stamp = Stamp::mint(&keypair.peer_id(), DIFFICULTY);
    let mut cfg = config("127.0.0.1:0");
    cfg.anchors = Some(path.clone());
    let (b, _) = spore_net::start(keypair.clone(), stamp, cfg.clone())
        .await
        .unwrap();
    b.dial(a.peer_id(), addr(&a)).await.unwrap();
    b.dial(c.peer_id(), addr(&c)).await.unwrap();
    b.shutdown().await;
    let saved = spore_store::anchors::load_anchors(&path).unwrap();
    let mut ids: Vec<_> = saved.iter().map(|(p, _)| *p).collect();
    ids.sort();
    let mut expected = vec![a.peer_id(), c.peer_id()];
    expected.sort();
    assert_eq!(ids, expected, "both outbound peers are anchors");

    let (b, _) = spore_net::start(keypair, stamp, cfg).await.unwrap();
    eventually("the restarted node reconnects to its anchors", || async {
        ready_peers(&b).await.len() == 2
    })
    .await;
    b.shutdown().await;
}

/// A peer that writes control messages faster than `max_messages_per_sec` is read no faster
/// than that: all of its pings are answered (held back, not dropped), at the limited rate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_is_held_to_its_message_rate() {
    use spore_core::node::PROTOCOL_VERSION;
    use spore_core::wire::{Capabilities, FrameDecoder, Hello};
    const RATE: u32 = 100;
    const PINGS: u64 = 300;
    let mut cfg = config("127.0.0.1:0");
    cfg.limits.max_messages_per_sec = RATE;
    let (b, _s) = node_with(cfg).await;

    let keypair = Keypair::generate(&mut rand_core::OsRng);
    let transport = Arc::new(quinn::TransportConfig::default());
    let client = tls::client_config(&keypair, b.peer_id(), transport).unwrap();
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let conn = endpoint
        .connect_with(client, addr(&b), tls::SERVER_NAME)
        .unwrap()
        .await
        .unwrap();
    let hello = Hello {
        versions: vec![PROTOCOL_VERSION],
        capabilities: Capabilities::empty(),
        listen_addrs: vec![],
        observed_addr: addr(&b),
        stamp: Stamp::mint(&keypair.peer_id(), DIFFICULTY),
        agent: "fast".into(),
    };
    let mut bytes = vec![0u8];
    bytes.extend_from_slice(&wire::encode_frame(&Message::Hello(hello)).unwrap());
    for nonce in 0..PINGS {
        let ping = Message::Ping(ping::Message::Ping { nonce });
        bytes.extend_from_slice(&wire::encode_frame(&ping).unwrap());
    }
    let mut control = conn.open_uni().await.unwrap();
    control.write_all(&bytes).await.unwrap();

    let mut answers = conn.accept_uni().await.unwrap();
    let mut kind = [0u8; 1];
    answers.read_exact(&mut kind).await.unwrap();
    let mut decoder = FrameDecoder::new();
    let (mut pongs, mut first) = (0, None);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while pongs < PINGS {
        let chunk = tokio::time::timeout_at(deadline, answers.read_chunk(64 << 10, true))
            .await
            .expect("every ping is answered in time")
            .unwrap()
            .expect("the node keeps its control stream open");
        decoder.extend(&chunk.bytes);
        while let Some(msg) = decoder.next_message().unwrap() {
            if matches!(msg, Message::Ping(ping::Message::Pong { .. })) {
                pongs += 1;
                first.get_or_insert_with(tokio::time::Instant::now);
            }
        }
    }
    // A burst of RATE, then RATE per second: the last 200 take about two seconds.
    let spread = first.unwrap().elapsed();
    assert!(
        spread >= Duration::from_millis(1500),
        "{PINGS} pings answered within {spread:?} at {RATE} per second"
    );
    conn.close(0u32.into(), b"done");
}

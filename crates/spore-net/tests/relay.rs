//! Relayed connections over real QUIC on 127.0.0.1: a node reserves a slot at a relay, another
//! reaches it through the relay with an end-to-end QUIC connection carried inside the circuit,
//! and the relay's quotas refuse or cut with clear reasons while existing circuits keep working.

#![allow(clippy::unwrap_used)] // helpers of tests; a panic is how they fail

use std::time::Duration;

use spore_core::Keypair;
use spore_core::nat::relay::{Refusal, RelayLimits, is_relayed_addr};
use spore_core::pow::{Difficulty, Stamp};
use spore_net::{AppStreams, NetConfig, NodeHandle, RequestError};

const DIFFICULTY: Difficulty = Difficulty(8);

async fn start(relay: Option<RelayLimits>) -> (NodeHandle, AppStreams) {
    start_with(relay, false).await
}

/// A node; with `punch`, relayed connections it dials are upgraded to direct ones when they
/// can be (on loopback, always).
async fn start_with(relay: Option<RelayLimits>, punch: bool) -> (NodeHandle, AppStreams) {
    let keypair = Keypair::generate(&mut rand_core::OsRng);
    let stamp = Stamp::mint(&keypair.peer_id(), DIFFICULTY);
    let mut config = NetConfig {
        listen: vec!["127.0.0.1:0".parse().unwrap()],
        ..NetConfig::default()
    };
    config.node.difficulty = DIFFICULTY;
    config.node.kad.auto_bootstrap = false;
    config.node.ping.interval = None;
    // No overlay and no peer exchange: on loopback they would connect everyone directly, and
    // these tests need B reachable only through the relay.
    config.node.gossip.enabled = false;
    config.node.pex.enabled = false;
    config.node.punch.enabled = punch;
    if let Some(limits) = relay {
        config.relay.serve = true;
        config.relay.limits = limits;
    }
    spore_net::start(keypair, stamp, config).await.unwrap()
}

async fn connect(from: &NodeHandle, to: &NodeHandle) {
    from.dial(to.peer_id(), to.listen_addrs()[0]).await.unwrap();
}

/// Sends `len` bytes on an application stream from `from` to `to` and checks they all arrive.
async fn transfer(
    from: &NodeHandle,
    to: spore_core::PeerId,
    streams: &mut AppStreams,
    len: usize,
) -> Duration {
    let started = tokio::time::Instant::now();
    let mut send = from.open_stream(to).await.unwrap();
    let data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
    let expected = data.clone();
    let writer = tokio::spawn(async move {
        send.write_all(&data).await.unwrap();
        send.finish().unwrap();
        let _ = send.stopped().await;
    });
    let (_, mut recv) = tokio::time::timeout(Duration::from_secs(20), streams.accept())
        .await
        .unwrap()
        .unwrap();
    let got = recv.read_to_end(len + 1).await.unwrap();
    assert_eq!(got.len(), len);
    assert!(got == expected, "every byte arrived intact");
    writer.await.unwrap();
    started.elapsed()
}

#[tokio::test(flavor = "current_thread")]
async fn a_node_behind_a_relay_is_reached_through_it_and_quotas_hold() {
    let limits = RelayLimits {
        max_circuits: 1,
        ..RelayLimits::default()
    };
    let (relay, _) = start(Some(limits)).await;
    let (b, mut b_streams) = start(None).await;
    let (a, _) = start(None).await;
    let (c, _) = start(None).await;

    // B reserves at the relay; A cannot ask a non-relay, nor for a node without reservation.
    connect(&b, &relay).await;
    let ttl = b.reserve_relay(relay.peer_id()).await.unwrap();
    assert_eq!(ttl, Duration::from_secs(3600));
    assert_eq!(
        b.status().await.unwrap().relay.reserved_at,
        vec![relay.peer_id()]
    );
    connect(&a, &relay).await;
    connect(&c, &relay).await;
    connect(&a, &c).await;
    assert_eq!(
        a.dial_relayed(b.peer_id(), c.peer_id()).await.unwrap_err(),
        RequestError::Relay(Refusal::NotARelay)
    );
    assert_eq!(
        a.dial_relayed(c.peer_id(), relay.peer_id())
            .await
            .unwrap_err(),
        RequestError::Relay(Refusal::NoReservation)
    );

    // A reaches B through the relay: one end-to-end connection, authenticated as B.
    a.dial_relayed(b.peer_id(), relay.peer_id()).await.unwrap();
    let peers = a.peers().await.unwrap();
    let via = peers.iter().find(|p| p.peer == b.peer_id()).unwrap();
    assert!(is_relayed_addr(&via.addr), "{}", via.addr);
    let rtt = a.ping(b.peer_id()).await.unwrap();
    let took = transfer(&a, b.peer_id(), &mut b_streams, 4 << 20).await;
    println!("relayed: ping {rtt:?}, 4 MiB in {took:?}");

    // The relay is full (one circuit): C is refused, and A's circuit keeps working.
    assert_eq!(
        c.dial_relayed(b.peer_id(), relay.peer_id())
            .await
            .unwrap_err(),
        RequestError::Relay(Refusal::CircuitsFull)
    );
    a.ping(b.peer_id()).await.unwrap();
    let status = relay.status().await.unwrap().relay;
    assert!(status.serving);
    assert_eq!((status.reservations, status.circuits), (1, 1));
    assert_eq!(status.stats.circuits_opened, 1);
    assert!(status.stats.circuits_refused >= 2, "{status:?}");

    // B's connection to the relay closes: its reservation and its record's relay go.
    for n in [a, b, c, relay] {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_circuit_is_cut_at_its_byte_quota() {
    let limits = RelayLimits {
        circuit_bytes: 256 << 10,
        ..RelayLimits::default()
    };
    let (relay, _) = start(Some(limits)).await;
    let (b, mut b_streams) = start(None).await;
    let (a, _) = start(None).await;
    connect(&b, &relay).await;
    b.reserve_relay(relay.peer_id()).await.unwrap();
    connect(&a, &relay).await;
    a.dial_relayed(b.peer_id(), relay.peer_id()).await.unwrap();
    a.ping(b.peer_id()).await.unwrap();

    // 1 MiB does not fit in 256 KiB: the relay cuts the circuit and the data stops.
    let mut send = a.open_stream(b.peer_id()).await.unwrap();
    let sender = tokio::spawn(async move {
        let _ = send.write_all(&vec![7u8; 1 << 20]).await;
        let _ = send.finish();
    });
    let received = tokio::time::timeout(Duration::from_secs(3), async {
        let (_, mut recv) = b_streams.accept().await.unwrap();
        recv.read_to_end(2 << 20)
            .await
            .map(|d| d.len())
            .unwrap_or(0)
    })
    .await
    .unwrap_or(0);
    assert!(
        received < 1 << 20,
        "the whole megabyte passed a 256 KiB quota"
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let status = relay.status().await.unwrap().relay;
        if status.stats.circuits_cut == 1 {
            assert!(status.stats.bytes_relayed <= 256 << 10, "{status:?}");
            assert_eq!(status.circuits, 0);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not cut: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    sender.abort();
    for n in [a, b, relay] {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_relayed_connection_moves_to_a_direct_path_by_hole_punching() {
    let (relay, _) = start_with(Some(RelayLimits::default()), true).await;
    let (b, mut b_streams) = start_with(None, true).await;
    let (a, _) = start_with(None, true).await;
    connect(&b, &relay).await;
    b.reserve_relay(relay.peer_id()).await.unwrap();
    connect(&a, &relay).await;
    let started = tokio::time::Instant::now();
    a.dial_relayed(b.peer_id(), relay.peer_id()).await.unwrap();

    // Candidates go over the relayed connection, both sides dial at the synchronized moment,
    // and the direct connection replaces the relayed one.
    let deadline = started + Duration::from_secs(20);
    loop {
        let peers = a.peers().await.unwrap();
        if let Some(p) = peers.iter().find(|p| p.peer == b.peer_id() && p.ready)
            && !is_relayed_addr(&p.addr)
        {
            assert_eq!(p.addr, b.listen_addrs()[0]);
            assert!(p.punched, "a punched path, not a plain direct one: {p:?}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still relayed: {peers:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = started.elapsed();
    let stats = a.status().await.unwrap().punch;
    assert_eq!(
        (stats.started, stats.succeeded, stats.first_attempt),
        (1, 1, 1),
        "{stats:?}"
    );
    // The circuit closes once the relayed connection is gone; the direct one carries data.
    let transferred = transfer(&a, b.peer_id(), &mut b_streams, 1 << 20).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while relay.status().await.unwrap().relay.circuits > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the circuit stays open"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("direct after {took:?}; 1 MiB direct in {transferred:?}");
    for n in [a, b, relay] {
        n.shutdown().await;
    }
}

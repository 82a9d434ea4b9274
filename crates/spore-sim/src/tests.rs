use std::time::Duration;

use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use spore_core::node::{CloseReason, Event};
use spore_core::time::Instant;

use super::*;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn config(seed: u64, nodes: usize) -> SimConfig {
    let mut config = SimConfig {
        seed,
        nodes,
        network: NetworkConfig {
            latency: Latency::Uniform {
                min: ms(10),
                max: ms(50),
            },
            jitter: ms(1),
            loss: 0.0,
            ..NetworkConfig::default()
        },
        ..SimConfig::default()
    };
    // These tests are about the engine: keep Kademlia from opening connections by itself.
    config.node.kad.auto_bootstrap = false;
    config.node.kad.peer_record_fetches = 0;
    // Nor the HyParView overlay, which dials neighbours of its own.
    config.node.gossip.enabled = false;
    config
}

/// Connects node i to i+1 (mod n), then adds `chords` random extra connections, all drawn from
/// `seed`. Returns the connections made.
fn ring_with_chords(sim: &mut Sim, chords: usize, seed: u64) -> Vec<(NodeIndex, NodeIndex)> {
    let n = sim.len() as u32;
    let mut edges = Vec::new();
    for i in 0..n {
        let (a, b) = (NodeIndex(i), NodeIndex((i + 1) % n));
        sim.connect(a, b).unwrap();
        edges.push((a, b));
    }
    let mut rng = ChaCha20Rng::seed_from_u64(seed ^ 0xc0ffee);
    let mut made = 0;
    while made < chords {
        let a = NodeIndex(rng.next_u32() % n);
        let b = NodeIndex(rng.next_u32() % n);
        match sim.connect(a, b) {
            Ok(()) => {
                edges.push((a, b));
                made += 1;
            }
            Err(SimError::SelfConnection(_) | SimError::AlreadyConnected(..)) => {}
            Err(e) => panic!("{e}"),
        }
    }
    edges
}

fn assert_all_ready(sim: &Sim, edges: &[(NodeIndex, NodeIndex)]) {
    for &(a, b) in edges {
        assert!(sim.is_connected(a, b), "{a}-{b} not connected");
        for (x, y) in [(a, b), (b, a)] {
            let view = sim.node(x).peer(&sim.peer_id(y));
            assert!(view.is_some_and(|p| p.ready), "{x} does not see {y} ready");
        }
    }
    // Each node became ready with exactly its neighbours.
    let mut degree = vec![0u64; sim.len()];
    for &(a, b) in edges {
        degree[a.index()] += 1;
        degree[b.index()] += 1;
    }
    for i in sim.indices() {
        assert_eq!(sim.event_counts(i).peer_ready, degree[i.index()], "{i}");
        assert_eq!(sim.node(i).peers().count() as u64, degree[i.index()], "{i}");
    }
}

#[test]
fn ring_with_chords_handshakes_and_measures_rtt() {
    let mut sim = Sim::new(config(1, 50)).unwrap();
    let edges = ring_with_chords(&mut sim, 25, 1);
    sim.run_for(Duration::from_secs(60));
    assert_eq!(sim.now(), Instant::from_micros(60_000_000));
    assert_all_ready(&sim, &edges);
    assert_eq!(sim.connections().count(), edges.len());

    let jitter = sim.config().network.jitter;
    for &(a, b) in &edges {
        let latency = sim.link_latency(a, b).unwrap();
        assert!((ms(10)..=ms(50)).contains(&latency));
        for (x, y) in [(a, b), (b, a)] {
            let rtt = sim.node(x).peer(&sim.peer_id(y)).unwrap().rtt.unwrap();
            // Two one-way trips, each delayed by at most the jitter.
            assert!(
                rtt >= 2 * latency && rtt <= 2 * (latency + jitter),
                "{x}->{y}: rtt {rtt:?}, latency {latency:?}"
            );
        }
    }
    let m = sim.metrics();
    assert_eq!(m.messages_lost, 0);
    assert_eq!(m.messages_unroutable, 0);
    assert_eq!(m.codec_errors, 0);
    assert_eq!(
        m.messages_sent,
        m.messages_delivered + sim.in_flight() as u64
    );
    assert_eq!(m.connections_opened, edges.len() as u64);
    // All were opened up front and none closed.
    assert_eq!(m.connections_peak, edges.len() as u64);
    assert_eq!(m.events.close, 0);
    // Pinged at t=0, 15, 30, 45 and 60 s (the last may be in flight).
    assert!(m.events.pong >= 8 * edges.len() as u64, "{m:?}");
    assert_eq!(m.events.ping_timeout, 0);
    assert!(m.bytes_delivered > 0);
}

#[test]
fn timers_do_not_pile_up() {
    let mut sim = Sim::new(config(2, 50)).unwrap();
    ring_with_chords(&mut sim, 25, 2);
    sim.run_for(Duration::from_secs(120));
    // At most one live timer per node, plus messages in flight and superseded timers that have
    // not yet come due: nowhere near one entry per event processed.
    let queued = sim.queued();
    assert!(queued < 4 * sim.len(), "{queued} queued");
    assert!(sim.metrics().events_processed > 20 * sim.len() as u64);
}

fn scenario_hash(seed: u64) -> ([u8; 32], Metrics) {
    let mut sim = Sim::new(config(seed, 50)).unwrap();
    ring_with_chords(&mut sim, 25, 99);
    sim.run_for(Duration::from_secs(20));
    // A command and a disconnect mid-run are part of the trace too.
    let (a, b) = (NodeIndex(0), NodeIndex(1));
    let b_id = sim.peer_id(b);
    sim.command(a, |node, now| node.ping(now, b_id)).unwrap();
    sim.disconnect(NodeIndex(2), NodeIndex(3));
    sim.run_for(Duration::from_secs(20));
    (sim.trace_hash(), *sim.metrics())
}

#[test]
fn same_seed_same_trace_different_seed_different_trace() {
    let (h1, m1) = scenario_hash(42);
    let (h2, m2) = scenario_hash(42);
    assert_eq!(h1, h2);
    assert_eq!(m1, m2);
    let (h3, _) = scenario_hash(43);
    assert_ne!(h1, h3);
}

#[test]
fn identities_derive_from_the_seed() {
    let small = Sim::new(config(5, 3)).unwrap();
    let mut big = Sim::new(config(5, 10)).unwrap();
    for i in small.indices() {
        assert_eq!(small.peer_id(i), big.peer_id(i));
        assert_eq!(big.index_of(&big.peer_id(i)), Some(i));
    }
    let extra = big.add_node().unwrap();
    assert_eq!(extra, NodeIndex(10));
    let other = Sim::new(config(6, 3)).unwrap();
    assert_ne!(other.peer_id(NodeIndex(0)), small.peer_id(NodeIndex(0)));
    assert_eq!(
        small.node(NodeIndex(1)).config().listen_addrs,
        vec![node_addr(NodeIndex(1))]
    );
}

#[test]
fn total_loss_means_no_handshake_and_hello_timeouts() {
    let mut cfg = config(3, 20);
    cfg.network.loss = 1.0;
    cfg.event_log = 16;
    let hello_timeout = cfg.node.hello_timeout;
    let mut sim = Sim::new(cfg).unwrap();
    let edges = ring_with_chords(&mut sim, 10, 3);
    sim.run_for(hello_timeout + Duration::from_secs(1));

    let m = *sim.metrics();
    assert_eq!(m.events.peer_ready, 0);
    assert_eq!(m.messages_delivered, 0);
    assert_eq!(m.messages_lost, m.messages_sent);
    assert_eq!(m.connections_opened, edges.len() as u64);
    assert_eq!(m.connections_closed, edges.len() as u64);
    assert_eq!(sim.connections().count(), 0);
    for i in sim.indices() {
        assert!(sim.event_counts(i).close_hello_timeout > 0, "{i}");
        assert_eq!(sim.node(i).peers().count(), 0, "{i}");
        assert!(sim.event_log(i).iter().any(|(_, e)| matches!(
            e,
            Event::Close {
                reason: CloseReason::HelloTimeout,
                ..
            }
        )));
    }
    // Each connection timed out at one end or both; every end learned it closed.
    let closes = m.events.close_hello_timeout;
    assert!(closes >= edges.len() as u64 && closes <= 2 * edges.len() as u64);
}

#[test]
fn partial_loss_is_counted() {
    let mut cfg = config(4, 30);
    cfg.network.loss = 0.2;
    let mut sim = Sim::new(cfg).unwrap();
    ring_with_chords(&mut sim, 10, 4);
    sim.run_for(Duration::from_secs(60));
    let m = sim.metrics();
    assert!(m.messages_lost > 0 && m.messages_delivered > 0, "{m:?}");
    let rate = m.messages_lost as f64 / m.messages_sent as f64;
    assert!((0.1..0.3).contains(&rate), "loss rate {rate}");
}

#[test]
fn disconnect_tells_both_sides_and_reconnect_works() {
    let mut cfg = config(5, 2);
    cfg.network.latency = Latency::Fixed(ms(30));
    cfg.network.jitter = Duration::ZERO;
    cfg.event_log = 32;
    let mut sim = Sim::new(cfg).unwrap();
    let (a, b) = (NodeIndex(0), NodeIndex(1));
    sim.connect(a, b).unwrap();
    assert!(!sim.is_connected(a, b), "still opening");
    sim.run_for(ms(29));
    assert!(!sim.is_connected(a, b));
    sim.run_for(ms(1));
    assert!(sim.is_connected(a, b));
    assert_eq!(sim.connections().collect::<Vec<_>>(), [(a, b)]);
    let view = sim.node(b).peer(&sim.peer_id(a)).unwrap();
    assert_eq!(view.addr, node_addr(a));
    sim.run_for(ms(100));
    assert_eq!(sim.event_counts(a).peer_ready, 1);

    // A ping is in flight when the connection goes down: it is dropped.
    let b_id = sim.peer_id(b);
    sim.command(a, |n, now| n.ping(now, b_id)).unwrap();
    assert!(sim.disconnect(b, a));
    assert!(!sim.disconnect(b, a), "already gone");
    sim.run_for(ms(100));
    assert_eq!(sim.event_counts(a).peer_gone, 1);
    assert_eq!(sim.event_counts(b).peer_gone, 1);
    assert_eq!(sim.metrics().messages_unroutable, 1);

    // A connection closed while opening is never heard of; the next one works.
    sim.connect(a, b).unwrap();
    sim.disconnect(a, b); // closed while opening: nobody hears of it
    sim.connect(b, a).unwrap();
    sim.run_for(Duration::from_secs(1));
    assert!(sim.is_connected(a, b));
    assert_eq!(sim.connections().collect::<Vec<_>>(), [(b, a)]);
    for (x, y) in [(a, b), (b, a)] {
        assert!(sim.node(x).peer(&sim.peer_id(y)).unwrap().ready);
        assert_eq!(sim.event_counts(x).peer_ready, 2);
    }
    let close_seen = |i| {
        sim.event_log(i)
            .iter()
            .filter(|(_, e)| matches!(e, Event::PeerGone { .. }))
            .count()
    };
    assert_eq!(close_seen(a), 1);
    assert_eq!(close_seen(b), 1);
}

#[test]
fn stale_close_does_not_kill_a_newer_connection() {
    let mut sim = Sim::new(config(6, 2)).unwrap();
    let (a, b) = (NodeIndex(0), NodeIndex(1));
    for round in 0..12 {
        sim.connect(a, b).unwrap();
        sim.run_for(ms(200));
        // `b` hears of this close one (old) latency later; when the new connection's latency
        // is shorter, it is up at `b` before the old close arrives, which must then be ignored.
        sim.disconnect(a, b);
        sim.run_for(Duration::ZERO);
        sim.connect(a, b).unwrap();
        sim.run_for(ms(200));
        assert!(sim.is_connected(a, b), "round {round}");
        for (x, y) in [(a, b), (b, a)] {
            let view = sim.node(x).peer(&sim.peer_id(y));
            assert!(view.is_some_and(|p| p.ready), "round {round}: {x} -> {y}");
        }
        sim.disconnect(b, a);
        sim.run_for(ms(200));
    }
    assert!(
        sim.metrics().closes_superseded > 0,
        "the case was exercised"
    );
}

#[test]
fn connect_errors() {
    let mut sim = Sim::new(config(7, 2)).unwrap();
    let (a, b) = (NodeIndex(0), NodeIndex(1));
    assert_eq!(sim.connect(a, a), Err(SimError::SelfConnection(a)));
    assert_eq!(
        sim.connect(a, NodeIndex(2)),
        Err(SimError::UnknownNode(NodeIndex(2)))
    );
    sim.connect(a, b).unwrap();
    assert_eq!(sim.connect(b, a), Err(SimError::AlreadyConnected(b, a)));
    assert!(!sim.disconnect(a, NodeIndex(9)));
}

#[test]
fn invalid_config_is_refused() {
    let mut cfg = config(0, 1);
    cfg.network.loss = 1.5;
    assert!(matches!(Sim::new(cfg), Err(SimError::InvalidConfig(_))));
    let mut cfg = config(0, 1);
    cfg.network.latency = Latency::Uniform {
        min: ms(5),
        max: ms(1),
    };
    assert!(matches!(Sim::new(cfg), Err(SimError::InvalidConfig(_))));
}

#[test]
fn event_log_is_bounded() {
    let mut cfg = config(8, 5);
    cfg.event_log = 3;
    let mut sim = Sim::new(cfg).unwrap();
    ring_with_chords(&mut sim, 0, 8);
    sim.run_for(Duration::from_secs(60));
    let log = sim.event_log(NodeIndex(0));
    assert_eq!(log.len(), 3);
    assert!(log.evicted() > 0);
    let times: Vec<_> = log.iter().map(|(t, _)| *t).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]));
}

#[test]
fn a_thousand_nodes() {
    let mut sim = Sim::new(config(9, 1000)).unwrap();
    let edges = ring_with_chords(&mut sim, 1000, 9);
    sim.run_for(Duration::from_secs(30));
    assert_all_ready(&sim, &edges);
    let m = sim.metrics();
    assert_eq!(m.events.peer_ready, 2 * edges.len() as u64);
    assert_eq!(m.events.close, 0);
    assert_eq!(m.events.ping_timeout, 0);
}

fn spec(nat: NatType) -> NodeSpec {
    NodeSpec {
        nat,
        ..NodeSpec::default()
    }
}

#[test]
fn nat_decides_who_can_dial_whom() {
    let mut sim = Sim::new(config(5, 0)).unwrap();
    let public = sim.add_node_with(spec(NatType::Public)).unwrap();
    let cone = sim.add_node_with(spec(NatType::Cone)).unwrap();
    let symmetric = sim.add_node_with(spec(NatType::Symmetric)).unwrap();
    let blocked = sim.add_node_with(spec(NatType::UdpBlocked)).unwrap();
    // Only the public node accepts connections, and only from nodes with UDP.
    for to in [cone, symmetric, blocked] {
        assert!(matches!(
            sim.connect(public, to),
            Err(SimError::Unreachable(_, _, "NAT"))
        ));
    }
    assert!(sim.connect(blocked, public).is_err());
    sim.connect(cone, public).unwrap();
    sim.connect(symmetric, public).unwrap();
    sim.run_for(ms(500));
    assert!(sim.is_connected(cone, public) && sim.is_connected(symmetric, public));
    assert_eq!(sim.metrics().dials_refused_nat, 4);
    // A node behind a NAT announces a private address; the public node sees the NAT's, with a
    // per-connection port for the symmetric one.
    let seen = |sim: &Sim, i| sim.node(public).peer(&sim.peer_id(i)).unwrap();
    let cone_seen = seen(&sim, cone);
    assert_eq!(cone_seen.addr, sim.addr(cone));
    assert!(cone_seen.listen_addrs[0].to_string().starts_with("10."));
    let sym_seen = seen(&sim, symmetric);
    assert_eq!(sym_seen.addr.ip(), sim.addr(symmetric).ip());
    assert_ne!(sym_seen.addr.port(), sim.addr(symmetric).port());
}

#[test]
fn bandwidth_delays_bulk_messages() {
    let mut cfg = config(6, 2);
    cfg.network.latency = Latency::Fixed(ms(10));
    cfg.network.jitter = Duration::ZERO;
    let base = {
        let mut sim = Sim::new(cfg.clone()).unwrap();
        sim.connect(NodeIndex(0), NodeIndex(1)).unwrap();
        sim.run_for(Duration::from_secs(1));
        sim.node(NodeIndex(0))
            .peer(&sim.peer_id(NodeIndex(1)))
            .unwrap()
            .rtt
    };
    // 10 kB/s each way: a few-hundred-byte hello and ping take tens of milliseconds more.
    cfg.network.bandwidth = Bandwidth {
        up: Some(10_000),
        down: Some(10_000),
    };
    let mut sim = Sim::new(cfg).unwrap();
    sim.connect(NodeIndex(0), NodeIndex(1)).unwrap();
    sim.run_for(Duration::from_secs(1));
    let slow = sim
        .node(NodeIndex(0))
        .peer(&sim.peer_id(NodeIndex(1)))
        .unwrap()
        .rtt;
    assert_eq!(base, Some(ms(20)));
    assert!(slow.unwrap() > ms(22), "{slow:?}");
}

#[test]
fn partitions_cut_connections_after_the_idle_timeout_and_heal() {
    let mut sim = Sim::new(config(7, 4)).unwrap();
    sim.connect(NodeIndex(0), NodeIndex(1)).unwrap();
    sim.connect(NodeIndex(2), NodeIndex(3)).unwrap();
    sim.connect(NodeIndex(0), NodeIndex(2)).unwrap();
    sim.run_for(Duration::from_secs(1));
    sim.partition(|i| u16::from(i.0 >= 2));
    assert!(sim.connect(NodeIndex(1), NodeIndex(3)).is_err());
    sim.run_for(Duration::from_secs(10));
    assert!(
        sim.is_connected(NodeIndex(0), NodeIndex(2)),
        "not yet timed out"
    );
    sim.run_for(Duration::from_secs(25));
    assert!(!sim.is_connected(NodeIndex(0), NodeIndex(2)));
    assert!(sim.is_connected(NodeIndex(0), NodeIndex(1)));
    assert_eq!(sim.metrics().connections_cut, 1);
    sim.heal();
    sim.connect(NodeIndex(1), NodeIndex(3)).unwrap();
    sim.run_for(Duration::from_secs(1));
    assert!(sim.is_connected(NodeIndex(1), NodeIndex(3)));
}

#[test]
fn a_stopped_node_restarts_with_its_records_and_rejoins() {
    let mut cfg = config(8, 6);
    cfg.node.kad.auto_bootstrap = true;
    cfg.node.kad.peer_record_fetches = 32;
    let mut sim = Sim::new(cfg).unwrap();
    for i in 1..6 {
        sim.connect(NodeIndex(i), NodeIndex(0)).unwrap();
    }
    sim.run_for(Duration::from_secs(30));
    let n = NodeIndex(3);
    sim.command(n, |node, now| {
        node.put_value(now, "x", bytes::Bytes::from_static(b"v"))
    })
    .unwrap();
    sim.run_for(Duration::from_secs(10));
    let stored = sim.node(NodeIndex(4)).kad().store().len();
    assert!(stored.values > 0, "{stored:?}");
    let degree = sim.degree(NodeIndex(4));
    assert!(degree > 0);
    assert!(sim.stop(NodeIndex(4), false));
    assert!(!sim.stop(NodeIndex(4), false));
    assert_eq!(sim.degree(NodeIndex(4)), 0);
    assert_eq!(sim.online_count(), 5);
    sim.run_for(Duration::from_secs(5));
    assert!(sim.restart(NodeIndex(4)).unwrap());
    sim.run_for(Duration::from_secs(5));
    assert!(sim.degree(NodeIndex(4)) > 0, "dialed remembered peers");
    assert_eq!(sim.node(NodeIndex(4)).kad().store().len(), stored);
    assert_eq!((sim.metrics().departures, sim.metrics().arrivals), (1, 1));
}

#[test]
fn kept_peers_are_redialed_after_a_crash() {
    let mut sim = Sim::new(config(9, 2)).unwrap();
    sim.keep(NodeIndex(1), NodeIndex(0)).unwrap();
    sim.run_for(Duration::from_secs(1));
    assert!(sim.is_connected(NodeIndex(1), NodeIndex(0)));
    sim.stop(NodeIndex(0), true);
    sim.run_for(Duration::from_secs(40)); // the crash is noticed after the idle timeout
    sim.restart(NodeIndex(0)).unwrap();
    sim.run_for(Duration::from_secs(70)); // backoff is at most a minute
    assert!(sim.is_connected(NodeIndex(1), NodeIndex(0)));
    assert!(sim.metrics().dials_failed >= 1);
}

#[test]
fn region_latencies_come_from_the_matrix() {
    let mut cfg = config(10, 0);
    cfg.network.latency = Latency::Regions {
        weights: vec![1, 1],
        one_way: vec![vec![ms(5), ms(80)], vec![ms(80), ms(7)]],
    };
    let mut sim = Sim::new(cfg).unwrap();
    let nodes: Vec<NodeIndex> = (0..40).map(|_| sim.add_node().unwrap()).collect();
    let mut seen = std::collections::BTreeSet::new();
    for pair in nodes.windows(2) {
        sim.connect(pair[0], pair[1]).unwrap();
        seen.insert(sim.link_latency(pair[0], pair[1]).unwrap());
    }
    // Both regions are populated: all three latencies of the matrix occur, and nothing else.
    let expected: std::collections::BTreeSet<Duration> = [ms(5), ms(7), ms(80)].into();
    assert_eq!(seen, expected);
    let bad = SimConfig {
        network: NetworkConfig {
            latency: Latency::Regions {
                weights: vec![1, 1],
                one_way: vec![vec![ms(5)]],
            },
            ..NetworkConfig::default()
        },
        ..SimConfig::default()
    };
    assert!(matches!(Sim::new(bad), Err(SimError::InvalidConfig(_))));
}

#[test]
fn injected_messages_arrive_and_pubsub_is_observed() {
    use spore_core::pubsub;
    use spore_core::wire::Message;
    let mut cfg = config(11, 3);
    cfg.collect_pubsub = true;
    let mut sim = Sim::new(cfg).unwrap();
    let (a, b, c) = (NodeIndex(0), NodeIndex(1), NodeIndex(2));
    sim.connect(a, b).unwrap();
    sim.connect(b, c).unwrap();
    sim.run_for(Duration::from_secs(1));
    // What a's own code never sent: a subscription announcement, made up by the caller.
    let subscribe = pubsub::Message::Subscribe {
        topics: vec![("t".into(), true)],
        record: None,
    };
    assert!(sim.inject(a, b, Message::PubSub(subscribe.clone())));
    assert!(
        !sim.inject(a, c, Message::PubSub(subscribe)),
        "not connected"
    );
    sim.run_for(Duration::from_secs(1));
    let a_id = sim.peer_id(a);
    assert!(sim.node(b).pubsub().topic_peers("t").any(|p| *p == a_id));
    // A real message from c reaches b's application; both the frame and the delivery are seen.
    for i in [b, c] {
        sim.command(i, |n, now| n.subscribe(now, "t")).unwrap();
    }
    sim.run_for(Duration::from_secs(3));
    let _ = sim.take_pubsub();
    let data = bytes::Bytes::from_static(b"hello");
    let published = sim
        .command(c, |n, now| n.publish(now, "t", data.clone()))
        .unwrap();
    assert_eq!(published.peers, 1);
    sim.run_for(Duration::from_secs(1));
    let seen = sim.take_pubsub();
    assert!(seen.iter().any(|o| matches!(o,
        PubSubObservation::Frame { node, from, message, .. }
            if *node == b && *from == c && message.id() == published.id)));
    assert!(seen.iter().any(|o| matches!(o,
        PubSubObservation::Delivered { node, id, data: d, .. }
            if *node == b && *id == published.id && *d == data)));
    assert!(sim.metrics().pubsub_publish_frames_sent >= 1);
}

use std::time::Duration;

use super::tests_support::{Pair, test_config, test_node};
use super::*;
use crate::ping;
use crate::pow::Difficulty;
use crate::trust::reputation::Observation;

#[test]
fn handshake_reports_observed_addresses() {
    let mut pair = Pair::new(Duration::from_millis(10));
    pair.handshake();
    let a_view = pair.a.peer(&pair.b.peer_id()).unwrap();
    assert_eq!(a_view.observed_us, Some("10.0.0.1:1000".parse().unwrap()));
    let b_view = pair.b.peer(&pair.a.peer_id()).unwrap();
    assert_eq!(b_view.observed_us, Some("10.0.0.2:2000".parse().unwrap()));
    assert!(matches!(pair.a_events[0], Event::PeerReady { .. }));
}

#[test]
fn message_before_hello_closes() {
    let mut pair = Pair::new(Duration::from_millis(10));
    pair.connect();
    pair.inject_to_b(Message::Ping(ping::Message::Ping { nonce: 1 }));
    let a = pair.a.peer_id();
    assert!(pair.b_events.iter().any(|e| matches!(
        e,
        Event::Close { peer, reason: CloseReason::Violation(_) } if *peer == a
    )));
    assert!(pair.b.peer(&a).is_none());
    assert_eq!(pair.b.stats().violations, 1);
}

#[test]
fn a_violator_is_refused_until_its_record_fades() {
    let mut n = test_node(1, test_config());
    let bad = test_node(2, test_config()).peer_id();
    let t0 = Instant::ZERO;
    inbound(&mut n, bad, t0);
    n.handle_message(t0, bad, Message::Ping(ping::Message::Ping { nonce: 1 }));
    assert!(n.standing(&bad).distrusted);
    while n.poll_event().is_some() {}
    let refused = |n: &mut Node, at: Instant| {
        inbound(n, bad, at);
        let closed = std::iter::from_fn(|| n.poll_event()).any(
            |e| matches!(e, Event::Close { peer, reason: CloseReason::Distrusted } if peer == bad),
        );
        closed && n.peer(&bad).is_none()
    };
    assert!(refused(&mut n, t0 + Duration::from_secs(60)));
    assert_eq!(n.stats().distrusted_refused, 1);
    // A violation weighs 8; distrust needs 3, so it lifts after log2(8/3) half-lives.
    let half = n.config().reputation.half_life;
    assert!(!refused(&mut n, t0 + half.mul_f64(1.5)));
    assert!(n.peer(&bad).is_some());
}

#[test]
fn an_observation_that_distrusts_a_connected_peer_closes_it() {
    let mut pair = Pair::new(Duration::from_millis(10));
    pair.handshake();
    let a = pair.a.peer_id();
    let now = pair.now;
    pair.b.observe(now, a, Observation::RelayFailed);
    assert!(pair.b.peer(&a).is_some(), "soft evidence never distrusts");
    pair.b.observe(now, a, Observation::BadData);
    assert!(pair.b.peer(&a).is_none());
    let closed = std::iter::from_fn(|| pair.b.poll_event())
        .any(|e| matches!(e, Event::Close { peer, reason: CloseReason::Distrusted } if peer == a));
    assert!(closed);
}

#[test]
fn second_hello_closes() {
    let mut pair = Pair::new(Duration::from_millis(10));
    pair.handshake();
    let hello = Hello {
        versions: vec![PROTOCOL_VERSION],
        capabilities: Capabilities::empty(),
        listen_addrs: vec![],
        observed_addr: "10.0.0.2:2000".parse().unwrap(),
        stamp: Stamp::mint(&pair.a.peer_id(), Difficulty(4)),
        agent: String::new(),
    };
    pair.inject_to_b(Message::Hello(hello));
    assert!(
        pair.b_events
            .iter()
            .any(|e| matches!(e, Event::Close { .. }))
    );
    assert!(
        pair.b_events
            .iter()
            .any(|e| matches!(e, Event::PeerGone { .. }))
    );
}

#[test]
fn weak_stamp_rejected() {
    let strict = Config {
        difficulty: Difficulty(12),
        ..test_config()
    };
    // `a` only has a 4-bit stamp; `b` demands 12. (A 4-bit minimum stamp rarely has 12 bits.)
    let a = test_node(1, test_config());
    let b = test_node(2, strict);
    let mut pair = Pair::with_nodes(a, b, Duration::from_millis(10));
    pair.connect();
    pair.run_for(Duration::from_millis(10));
    assert!(
        pair.b_events.iter().any(|e| matches!(
            e,
            Event::Close {
                reason: CloseReason::BadHello(_),
                ..
            }
        )),
        "{:?}",
        pair.b_events
    );
}

#[test]
fn silent_peer_times_out() {
    let mut pair = Pair::new(Duration::from_millis(10));
    pair.drop_b_to_a = true;
    pair.connect();
    pair.run_for(Duration::from_secs(11));
    assert!(pair.a_events.iter().any(|e| matches!(
        e,
        Event::Close {
            reason: CloseReason::HelloTimeout,
            ..
        }
    )));
}

/// A node with room for one peer, and two would-be peers.
fn one_slot_node() -> (Node, PeerId, PeerId) {
    let config = Config {
        max_peers: 1,
        ..test_config()
    };
    let n = test_node(1, config);
    let p2 = test_node(2, test_config()).peer_id();
    let p3 = test_node(3, test_config()).peer_id();
    (n, p2, p3)
}

fn inbound(n: &mut Node, peer: PeerId, at: Instant) {
    let addr = "10.0.0.9:9".parse().unwrap();
    n.handle_connection_event(
        at,
        ConnectionEvent::Connected {
            peer,
            addr,
            direction: Direction::Inbound,
        },
    );
}

#[test]
fn peer_limit_enforced() {
    let (mut n, p2, p3) = one_slot_node();
    inbound(&mut n, p2, Instant::ZERO);
    inbound(&mut n, p3, Instant::ZERO);
    let events: Vec<_> = std::iter::from_fn(|| n.poll_event()).collect();
    assert_eq!(
        events,
        vec![Event::Close {
            peer: p3,
            reason: CloseReason::TooManyPeers
        }]
    );
}

#[test]
fn at_the_peer_limit_a_long_idle_peer_makes_room() {
    let (mut n, p2, p3) = one_slot_node();
    inbound(&mut n, p2, Instant::ZERO);
    let _ = std::iter::from_fn(|| n.poll_event()).count();
    let later = Instant::ZERO + n.config().replace_idle_after;
    inbound(&mut n, p3, later);
    let events: Vec<_> = std::iter::from_fn(|| n.poll_event()).collect();
    assert!(
        events.contains(&Event::Close {
            peer: p2,
            reason: CloseReason::Idle
        }),
        "{events:?}"
    );
    assert!(n.peer(&p3).is_some() && n.peer(&p2).is_none());
    assert_eq!(n.stats().idle_closed, 1);
}

#[test]
fn above_the_target_an_idle_connection_closes_when_its_idle_time_is_up() {
    let idle_after = Duration::from_secs(40);
    let config = Config {
        target_peers: 1,
        idle_after,
        hello_timeout: Duration::from_secs(3600),
        ..test_config()
    };
    let mut n = test_node(1, config);
    let p2 = test_node(2, test_config()).peer_id();
    let p3 = test_node(3, test_config()).peer_id();
    let t0 = Instant::ZERO;
    inbound(&mut n, p2, t0);
    // p3 takes the node above its target 25 s later, when p2 is not idle long enough yet.
    inbound(&mut n, p3, t0 + Duration::from_secs(25));
    let mut closed_at = None;
    while let Some(at) = n.poll_timeout() {
        if at > t0 + Duration::from_secs(300) {
            break;
        }
        n.handle_timeout(at);
        let closed = std::iter::from_fn(|| n.poll_event()).any(|e| {
            e == Event::Close {
                peer: p2,
                reason: CloseReason::Idle,
            }
        });
        if closed {
            closed_at = Some(at);
            break;
        }
    }
    let closed_at = closed_at.expect("the idle connection was closed");
    assert!(
        closed_at >= t0 + idle_after && closed_at <= t0 + idle_after + idle_after / 4,
        "closed {:?} after it went idle",
        closed_at - t0
    );
    assert!(
        n.peer(&p3).is_some(),
        "the newer one stays: the node is at its target"
    );
}

#[test]
fn same_seed_same_outputs() {
    let run = || {
        let mut pair = Pair::new(Duration::from_millis(7));
        pair.handshake();
        pair.run_for(Duration::from_secs(60));
        format!("{:?}{:?}", pair.a_events, pair.b_events)
    };
    assert_eq!(run(), run());
}

#[test]
fn oversized_config_still_sends_a_valid_hello() {
    let listen_addrs = (0..40)
        .map(|i| format!("10.0.0.{i}:1").parse().unwrap())
        .collect();
    let config = Config {
        listen_addrs,
        agent: "é".repeat(100),
        ..test_config()
    };
    let a = test_node(1, config);
    let mut pair = Pair::with_nodes(a, test_node(2, test_config()), Duration::from_millis(10));
    pair.handshake();
    let seen = pair.b.peer(&pair.a.peer_id()).unwrap();
    assert_eq!(seen.listen_addrs.len(), crate::wire::MAX_LISTEN_ADDRS);
    assert!(seen.agent.len() <= crate::wire::MAX_AGENT_LEN);
}

#[test]
fn a_pubsub_mesh_member_is_not_closed_as_idle_to_make_room() {
    let config = Config {
        max_peers: 1,
        ..test_config()
    };
    let mut pair = Pair::with_nodes(
        test_node(1, config),
        test_node(2, test_config()),
        Duration::from_millis(5),
    );
    pair.handshake();
    let now = pair.now;
    pair.a.subscribe(now, "t").unwrap();
    pair.b.subscribe(now, "t").unwrap();
    pair.run_for(Duration::from_secs(2));
    let b = pair.b.peer_id();
    assert!(pair.a.pubsub().in_any_mesh(&b));
    // Long after the replacement threshold, a newcomer does not displace the mesh member.
    let later = pair.now + pair.a.config().replace_idle_after * 3;
    let p3 = test_node(3, test_config()).peer_id();
    inbound(&mut pair.a, p3, later);
    let events: Vec<_> = std::iter::from_fn(|| pair.a.poll_event()).collect();
    assert!(
        events.contains(&Event::Close {
            peer: p3,
            reason: CloseReason::TooManyPeers
        }),
        "{events:?}"
    );
    assert!(pair.a.peer(&b).is_some());
}

#[test]
fn two_nodes_replicate_a_document_by_sync_and_live_changes() {
    use crate::doc::{Edit, Value};
    let mut pair = Pair::new(Duration::from_millis(5));
    pair.handshake();
    let (a_id, b_id) = (pair.a.peer_id(), pair.b.peer_id());
    let now = pair.now;
    let doc = pair.a.doc_create(now, 1).unwrap();
    pair.a
        .doc_edit(
            now,
            &doc,
            vec![Edit::Set("title".into(), Value::Str("hi".into()))],
        )
        .unwrap();
    pair.a.doc_add_writer(now, &doc, b_id).unwrap();
    let access = pair.a.docs().doc(&doc).unwrap().access().clone();
    // The joiner opens the document from its access list and syncs with the owner.
    pair.b.doc_open(now, access, &[a_id]).unwrap();
    pair.run_for(Duration::from_secs(3));
    let b_doc = pair.b.docs().doc(&doc).unwrap();
    assert_eq!(b_doc.get("title"), Some(&Value::Str("hi".into())));
    // Edits on either side now reach the other (live over pub/sub, or by sync).
    let now = pair.now;
    pair.b
        .doc_edit(now, &doc, vec![Edit::Increment("n".into(), 2)])
        .unwrap();
    pair.a
        .doc_edit(now, &doc, vec![Edit::Increment("n".into(), 3)])
        .unwrap();
    pair.run_for(Duration::from_secs(3));
    let (ra, rb) = (
        pair.a.docs().doc(&doc).unwrap().render(),
        pair.b.docs().doc(&doc).unwrap().render(),
    );
    assert_eq!(ra, rb);
    assert_eq!(pair.a.docs().doc(&doc).unwrap().counter("n"), 5);
    // Document changes are not handed to the application as pub/sub messages.
    assert!(!pair.b_events.iter().any(|e| matches!(e, Event::PubSub(_))));
}

#[test]
fn updated_listen_addresses_are_announced_to_new_peers() {
    let mut pair = Pair::new(Duration::from_millis(10));
    // A port mapping the gateway granted goes before the socket's own address.
    let mapped: SocketAddr = "198.51.100.1:7070".parse().unwrap();
    let mut addrs = vec![mapped];
    addrs.extend(pair.a.config().listen_addrs.iter().copied());
    assert!(pair.a.update_listen_addrs(Instant::ZERO, addrs.clone()));
    assert!(
        !pair.a.update_listen_addrs(Instant::ZERO, addrs.clone()),
        "nothing changed"
    );
    pair.handshake();
    let b_view = pair.b.peer(&pair.a.peer_id()).unwrap();
    assert_eq!(b_view.listen_addrs.to_vec(), addrs);
}

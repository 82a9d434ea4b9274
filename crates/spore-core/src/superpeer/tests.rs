use std::net::SocketAddr;
use std::time::Duration;

use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

use super::*;
use crate::identity::Keypair;
use crate::node::tests_support::Harness;
use crate::wire::Message as Wire;

fn peer(n: u8) -> PeerId {
    Keypair::from_secret_bytes([n; 32]).peer_id()
}

fn at(secs: u64) -> Instant {
    Instant::ZERO + Duration::from_secs(secs)
}

/// A peer of network group `g` (IPv4 /16 `g.1.0.0`).
fn addr(g: u8, host: u8) -> SocketAddr {
    SocketAddr::from(([g, 1, 0, host], 7070))
}

fn config() -> Config {
    Config {
        min_uptime: Duration::from_secs(600),
        leaf_after: Duration::from_secs(60),
        interval: Duration::from_secs(30),
        ..Config::default()
    }
}

/// `peer` ready, its connection from `from`, as `tweak` makes it.
fn ready(
    h: &mut Harness,
    peer: PeerId,
    now: Instant,
    from: SocketAddr,
    tweak: impl FnOnce(&mut PeerInfo),
) -> PeerEvent {
    match h.ready_from(peer, now, from) {
        PeerEvent::Ready(mut info) => {
            info.listen_addrs = std::iter::once(from).collect();
            tweak(&mut info);
            PeerEvent::Ready(info)
        }
        other => other,
    }
}

fn tick(s: &mut SuperPeers, h: &mut Harness, now: Instant) {
    h.with(now, |cx| {
        if s.poll_timeout().is_some_and(|t| t <= now) {
            s.handle_timeout(cx);
        }
    });
}

fn sent(h: &mut Harness) -> Vec<(PeerId, Message)> {
    h.transmits()
        .into_iter()
        .filter_map(|t| match t.message {
            Wire::SuperPeer(m) => Some((t.to, m)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_node_serves_only_once_three_groups_dialed_it_and_it_is_old_enough() {
    let mut h = Harness::new();
    let mut s = SuperPeers::new(config(), Instant::ZERO);
    let inbound = |info: &mut PeerInfo| info.direction = Direction::Inbound;
    // Two groups dial in directly; a punched connection and a relayed one do not count, nor
    // does a connection this node dialed.
    for (n, from, tweak) in [
        (1, addr(1, 1), inbound as fn(&mut PeerInfo)),
        (2, addr(2, 1), inbound),
        (3, addr(3, 1), |i: &mut PeerInfo| {
            i.direction = Direction::Inbound;
            i.punched = true;
        }),
        (4, "240.0.0.7:1".parse().unwrap(), inbound),
        (5, addr(5, 1), |_: &mut PeerInfo| {}),
    ] {
        let e = ready(&mut h, peer(n), at(1), from, tweak);
        h.with(at(1), |cx| s.handle_peer_event(cx, &e));
    }
    assert_eq!(s.stats(at(1)).confirmations, 2);
    tick(&mut s, &mut h, at(700));
    assert!(!s.is_serving(), "two groups are not enough");

    let e = ready(&mut h, peer(6), at(701), addr(6, 1), inbound);
    h.with(at(701), |cx| s.handle_peer_event(cx, &e));
    assert!(s.is_confirmed_public(at(701)));
    s.set_listen_addrs(&[addr(99, 1)]);
    tick(&mut s, &mut h, at(731));
    assert!(s.is_serving());
    // Every connected peer hears that it serves now (their Hello from it had no bit).
    let offers = sent(&mut h)
        .into_iter()
        .filter(|(_, m)| matches!(m, Message::Offer { load: 0, addrs } if *addrs == [addr(99, 1)]))
        .count();
    assert_eq!(offers, 6);

    // Confirmations fade: an hour later, with nobody dialing in, it stops serving.
    tick(&mut s, &mut h, at(701 + 3600));
    assert!(!s.is_serving());
}

#[test]
fn too_young_or_too_slow_a_node_does_not_serve() {
    let inbound = |info: &mut PeerInfo| info.direction = Direction::Inbound;
    for (config, when, serves) in [
        (config(), 300, false),
        (config(), 700, true),
        (
            Config {
                upload_capacity: Some(100_000),
                ..config()
            },
            700,
            false,
        ),
        (
            Config {
                serve: false,
                ..config()
            },
            700,
            false,
        ),
    ] {
        let mut h = Harness::new();
        let mut s = SuperPeers::new(config, Instant::ZERO);
        for g in 1..=3 {
            let e = ready(&mut h, peer(g), at(when - 1), addr(g, 1), inbound);
            h.with(at(when - 1), |cx| s.handle_peer_event(cx, &e));
        }
        // Checks run every 30 s from the start: the one at `when` decides.
        let mut t = 30;
        while t <= when {
            tick(&mut s, &mut h, at(t));
            t += 30;
        }
        assert_eq!(s.is_serving(), serves, "at {when} s");
    }
}

#[test]
fn max_leaves_holds_whatever_the_overload_mark() {
    let mut h = Harness::new();
    // An overload mark above 100 % never refuses by load: the count alone must.
    let mut s = SuperPeers::new(
        Config {
            max_leaves: 2,
            overload: 200,
            ..config()
        },
        Instant::ZERO,
    );
    let inbound = |info: &mut PeerInfo| info.direction = Direction::Inbound;
    for g in 1..=3 {
        let e = ready(&mut h, peer(g), at(1), addr(g, 1), inbound);
        h.with(at(1), |cx| s.handle_peer_event(cx, &e));
    }
    tick(&mut s, &mut h, at(600));
    for n in 1..=3 {
        h.with(at(601), |cx| s.handle_message(cx, peer(n), Message::Join));
    }
    assert_eq!(s.leaves().count(), 2);
    assert!(matches!(
        sent(&mut h).last(),
        Some((_, Message::Refuse { .. }))
    ));
}

#[test]
fn a_full_super_peer_refuses_and_tells_its_load() {
    let mut h = Harness::new();
    let mut s = SuperPeers::new(
        Config {
            max_leaves: 2,
            overload: 101,
            ..config()
        },
        Instant::ZERO,
    );
    let inbound = |info: &mut PeerInfo| info.direction = Direction::Inbound;
    for g in 1..=3 {
        let e = ready(&mut h, peer(g), at(1), addr(g, 1), inbound);
        h.with(at(1), |cx| s.handle_peer_event(cx, &e));
    }
    tick(&mut s, &mut h, at(600));
    assert!(s.is_serving());
    for n in 1..=3 {
        h.with(at(601), |cx| s.handle_message(cx, peer(n), Message::Join));
    }
    assert_eq!(
        sent(&mut h),
        [
            (peer(1), Message::Accept { load: 50 }),
            (peer(2), Message::Accept { load: 100 }),
            (peer(3), Message::Refuse { load: 100 }),
        ]
    );
    assert!(s.is_structural(&peer(1)) && !s.is_structural(&peer(3)));
    // A leaf that goes frees its place.
    let gone = h.gone(peer(1));
    h.with(at(602), |cx| s.handle_peer_event(cx, &gone));
    h.with(at(603), |cx| s.handle_message(cx, peer(3), Message::Join));
    assert_eq!(sent(&mut h), [(peer(3), Message::Accept { load: 100 })]);
}

/// A leaf (seen behind a NAT by two groups) and candidates 10..=19: 10 and 11 share a group.
fn leaf_with_candidates() -> (SuperPeers, Harness) {
    let mut h = Harness::new();
    let mut s = SuperPeers::new(config(), Instant::ZERO);
    s.set_listen_addrs(&["10.0.0.5:7070".parse().unwrap()]);
    for n in 10..=19 {
        let group = if n == 11 { 10 } else { n };
        let e = ready(&mut h, peer(n), at(1), addr(group, n), |i| {
            i.capabilities = Capabilities::SUPER_PEER;
            i.observed_us = Some("198.51.100.9:40000".parse().unwrap());
        });
        h.with(at(1), |cx| s.handle_peer_event(cx, &e));
    }
    assert!(s.is_behind_nat());
    (s, h)
}

fn joins(out: &[(PeerId, Message)]) -> Vec<PeerId> {
    out.iter()
        .filter(|(_, m)| *m == Message::Join)
        .map(|(p, _)| *p)
        .collect()
}

#[test]
fn a_leaf_holds_three_super_peers_and_rotates_away_from_bad_ones() {
    let (mut s, mut h) = leaf_with_candidates();
    tick(&mut s, &mut h, at(30));
    assert!(sent(&mut h).is_empty(), "no choice before leaf_after");
    tick(&mut s, &mut h, at(60));
    // Twice the three it lacks, at once, never 10 and 11 together (distinct groups first).
    let asked = joins(&sent(&mut h));
    assert_eq!(asked.len(), 6);
    assert!(!(asked.contains(&peer(10)) && asked.contains(&peer(11))));
    // Three accept, one of them overloaded; a fourth accepts too late and is left; two never
    // answer.
    h.with(at(61), |cx| {
        s.handle_message(cx, asked[0], Message::Accept { load: 10 });
        s.handle_message(cx, asked[1], Message::Accept { load: 20 });
        s.handle_message(cx, asked[2], Message::Accept { load: 95 });
        s.handle_message(cx, asked[3], Message::Accept { load: 0 });
    });
    assert_eq!(s.held().count(), 3);
    assert_eq!(sent(&mut h), [(asked[3], Message::Leave)]);
    // The silent two time out; the overloaded one is left and replaced (two asks for one).
    tick(&mut s, &mut h, at(66));
    let out = sent(&mut h);
    assert!(out.contains(&(asked[2], Message::Leave)), "{out:?}");
    let replacements = joins(&out);
    assert_eq!(replacements.len(), 2, "{out:?}");
    for bad in [asked[2], asked[4], asked[5]] {
        assert!(!replacements.contains(&bad), "{bad} was banned");
    }
    h.with(at(67), |cx| {
        s.handle_message(cx, replacements[0], Message::Accept { load: 0 });
        s.handle_message(cx, replacements[1], Message::Refuse { load: 89 });
    });
    assert_eq!(s.held().count(), 3);

    // A held super-peer disconnects: the leaf looks again at once, and not at it.
    let gone = h.gone(asked[0]);
    h.with(at(100), |cx| s.handle_peer_event(cx, &gone));
    assert!(s.poll_timeout() <= Some(at(100)));
    tick(&mut s, &mut h, at(100));
    let again = joins(&sent(&mut h));
    assert_eq!(again.len(), 2);
    assert!(!again.contains(&asked[0]) && !again.contains(&replacements[1]));
    let stats = s.stats(at(100));
    assert!(stats.leaf);
    // Two silent, one overloaded, one refusal, one gone.
    assert_eq!(stats.rotations, 5);
}

#[test]
fn a_leaf_learns_of_a_connected_peer_that_starts_serving() {
    let mut h = Harness::new();
    let mut s = SuperPeers::new(config(), Instant::ZERO);
    s.set_listen_addrs(&["10.0.0.5:7070".parse().unwrap()]);
    for n in 1..=2 {
        let e = ready(&mut h, peer(n), at(1), addr(n, 1), |i| {
            i.observed_us = Some("198.51.100.9:40000".parse().unwrap());
        });
        h.with(at(1), |cx| s.handle_peer_event(cx, &e));
    }
    assert_eq!(s.stats(at(1)).candidates, 0);
    h.with(at(70), |cx| {
        s.handle_message(
            cx,
            peer(1),
            Message::Offer {
                load: 10,
                addrs: vec![addr(1, 1)],
            },
        );
        // A peer that is not connected cannot offer itself.
        s.handle_message(
            cx,
            peer(7),
            Message::Offer {
                load: 0,
                addrs: vec![addr(7, 1)],
            },
        );
    });
    assert_eq!(s.stats(at(70)).candidates, 1);
    tick(&mut s, &mut h, at(70));
    assert_eq!(sent(&mut h), [(peer(1), Message::Join)]);
}

#[test]
fn a_reachable_node_is_no_leaf() {
    let (mut s, mut h) = leaf_with_candidates();
    let inbound = |info: &mut PeerInfo| info.direction = Direction::Inbound;
    for g in 1..=3 {
        let e = ready(&mut h, peer(g), at(2), addr(g, 1), inbound);
        h.with(at(2), |cx| s.handle_peer_event(cx, &e));
    }
    tick(&mut s, &mut h, at(60));
    assert!(sent(&mut h).is_empty());
    assert!(!s.stats(at(60)).leaf);
}

#[test]
fn choose_takes_distinct_groups_first_and_varies_among_the_best() {
    let ranked = |n: u8, group: u8, score: f64| Ranked {
        peer: peer(n),
        group: NetGroup::of(addr(group, n).ip()),
        score,
    };
    // The six best share one group; the rest are worse, in groups of their own.
    let mut candidates: Vec<Ranked> = (0..6).map(|n| ranked(n, 1, 0.9)).collect();
    candidates.extend((6..30).map(|n| ranked(n, n + 10, 0.5 - f64::from(n) * 0.01)));
    let mut seen = std::collections::BTreeSet::new();
    for seed in 0..50u8 {
        let mut rng = ChaCha20Rng::from_seed([seed; 32]);
        let picked = choose(candidates.clone(), &[], 3, 2, &mut rng);
        assert_eq!(picked.len(), 3);
        let groups: std::collections::BTreeSet<NetGroup> = picked
            .iter()
            .map(|p| candidates.iter().find(|c| c.peer == *p).unwrap().group)
            .collect();
        assert_eq!(groups.len(), 3, "three groups when three exist");
        // Never the worst: only the best 4 × 3 of the group-distinct pass are eligible (group
        // 1's best, then candidates 6 to 16).
        assert!(picked.iter().all(|p| !(17..30).any(|n| peer(n) == *p)));
        seen.insert(picked);
    }
    assert!(
        seen.len() > 5,
        "random among the best: {} choices",
        seen.len()
    );

    // With one group only, at most max_per_group of it.
    let one_group: Vec<Ranked> = (0..6).map(|n| ranked(n, 1, 0.9)).collect();
    let mut rng = ChaCha20Rng::from_seed([1; 32]);
    assert_eq!(choose(one_group, &[], 3, 2, &mut rng).len(), 2);
}

#[test]
fn load_over_100_is_invalid_on_the_wire() {
    assert!(Message::Accept { load: 101 }.validate().is_err());
    let addrs = vec![addr(1, 1); 5];
    assert!(Message::Offer { load: 0, addrs }.validate().is_err());
    assert!(Message::Refuse { load: 100 }.validate().is_ok());
}

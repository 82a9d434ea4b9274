use std::time::Duration;

use bytes::Bytes;

use super::*;
use crate::node::tests_support::Harness;
use crate::node::{Event as NodeEvent, Transmit};
use crate::wire::Message as Wire;

const D: Difficulty = Difficulty(4);
const TOPIC: &str = "news";

fn key(n: u8) -> Keypair {
    Keypair::from_secret_bytes([n; 32])
}

fn stamp(k: &Keypair) -> Stamp {
    Stamp::mint(&k.peer_id(), D)
}

fn id(n: u8) -> PeerId {
    key(n).peer_id()
}

fn at(secs: u64) -> Instant {
    Instant::from_micros(secs * 1_000_000)
}

/// A node (key 1) with `peers` ready peers (keys 10..), each at its own IP and subscribed to
/// TOPIC, and subscribed itself, after one heartbeat.
struct Setup {
    h: Harness,
    ps: PubSub,
    peers: Vec<PeerId>,
    now: Instant,
}

impl Setup {
    fn new(peers: u8, config: Config) -> Self {
        let me = key(1);
        let mut s = Setup {
            h: Harness::new(),
            ps: PubSub::new(me.clone(), stamp(&me), D, config),
            peers: (10..10 + peers).map(id).collect(),
            now: at(1),
        };
        for (i, peer) in s.peers.clone().into_iter().enumerate() {
            s.connect(peer, i as u8);
            let k = key(10 + i as u8);
            let addr = format!("10.0.0.{i}:4000").parse().unwrap();
            let record = PeerRecord::new(&k, stamp(&k), vec![addr], vec![], 1, 3600);
            s.recv(
                peer,
                Message::Subscribe {
                    topics: vec![(TOPIC.into(), true)],
                    record: Some(record),
                },
            );
        }
        let now = s.now;
        s.h.with(now, |cx| s.ps.subscribe(cx, TOPIC)).unwrap();
        s.h.transmits();
        s
    }

    fn connect(&mut self, peer: PeerId, ip: u8) {
        let addr = format!("10.0.0.{ip}:4000").parse().unwrap();
        let event = self.h.ready_from(peer, self.now, addr);
        let now = self.now;
        self.h.with(now, |cx| self.ps.handle_peer_event(cx, &event));
    }

    fn recv(&mut self, from: PeerId, msg: Message) {
        let now = self.now;
        self.h.with(now, |cx| self.ps.handle_message(cx, from, msg));
    }

    fn tick(&mut self, by: Duration) {
        self.now = self.now + by;
        let now = self.now;
        self.h.with(now, |cx| self.ps.handle_timeout(cx));
    }

    fn sent(&mut self) -> Vec<(PeerId, Message)> {
        self.h
            .transmits()
            .into_iter()
            .filter_map(|Transmit { to, message }| match message {
                Wire::PubSub(m) => Some((to, m)),
                _ => None,
            })
            .collect()
    }

    fn delivered(&mut self) -> Vec<Event> {
        self.h
            .events()
            .into_iter()
            .filter_map(|e| match e {
                NodeEvent::PubSub(e) => Some(e),
                _ => None,
            })
            .collect()
    }

    fn mesh(&self) -> Vec<PeerId> {
        self.ps.mesh(TOPIC).copied().collect()
    }
}

fn message(author: u8, seq: u64, data: &'static [u8]) -> SignedMessage {
    let k = key(author);
    SignedMessage::new(&k, stamp(&k), TOPIC.into(), seq, Bytes::from_static(data))
}

fn publishes(sent: &[(PeerId, Message)]) -> Vec<PeerId> {
    sent.iter()
        .filter(|(_, m)| matches!(m, Message::Publish(_)))
        .map(|(p, _)| *p)
        .collect()
}

#[test]
fn subscribing_grafts_d_topic_peers_and_heartbeats_keep_the_mesh_within_bounds() {
    let mut s = Setup::new(20, Config::default());
    assert_eq!(s.mesh().len(), 6);
    // Everyone learnt of the subscription.
    // Losing mesh members below d_lo makes the next heartbeat graft back up to d.
    for peer in s.mesh().into_iter().take(3) {
        let now = s.now;
        s.h.with(now, |cx| {
            s.ps.handle_peer_event(cx, &PeerEvent::Gone { peer })
        });
    }
    assert_eq!(s.mesh().len(), 3);
    s.tick(Duration::from_secs(1));
    assert_eq!(s.mesh().len(), 6);
    let grafts = s
        .sent()
        .into_iter()
        .filter(|(_, m)| matches!(m, Message::Control(c) if c.graft == [TOPIC]))
        .count();
    assert_eq!(grafts, 3);
}

#[test]
fn a_message_is_delivered_once_and_forwarded_to_the_mesh_but_not_back() {
    let mut s = Setup::new(10, Config::default());
    let mesh = s.mesh();
    let from = mesh[0];
    s.recv(from, Message::Publish(message(50, 7, b"hello")));
    let delivered = s.delivered();
    assert!(
        matches!(&delivered[..], [Event::Message { data, from: f, seq: 7, .. }]
        if &data[..] == b"hello" && *f == from)
    );
    let to = publishes(&s.sent());
    assert_eq!(to.len(), mesh.len() - 1);
    assert!(!to.contains(&from));
    // The same message again, from anyone: a duplicate, not delivered, not forwarded.
    s.recv(mesh[1], Message::Publish(message(50, 7, b"hello")));
    assert!(s.delivered().is_empty());
    assert!(publishes(&s.sent()).is_empty());
    assert_eq!(s.ps.stats().duplicates, 1);
    assert_eq!(s.ps.stats().delivered, 1);
}

#[test]
fn a_forged_message_is_dropped_penalised_and_does_not_shadow_the_real_one() {
    let mut s = Setup::new(10, Config::default());
    let mesh = s.mesh();
    let real = message(50, 1, b"real");
    let forged = real.clone().with_data(Bytes::from_static(b"forged"));
    s.recv(mesh[0], Message::Publish(forged));
    assert!(s.delivered().is_empty());
    assert!(publishes(&s.sent()).is_empty());
    assert_eq!(s.ps.stats().invalid, 1);
    assert!(s.ps.score(&mesh[0], s.now) < 0.0);
    // The genuine message with the same id still gets through.
    s.recv(mesh[1], Message::Publish(real));
    assert_eq!(s.delivered().len(), 1);
    // Three forgeries graylist the sender: it is ignored entirely.
    for seq in 2..4 {
        let forged = message(50, seq, b"x").with_data(Bytes::from_static(b"y"));
        s.recv(mesh[0], Message::Publish(forged));
    }
    assert!(s.ps.score(&mesh[0], s.now) < s.ps.config().score.graylist_threshold);
    s.recv(mesh[0], Message::Publish(message(51, 1, b"fine")));
    assert!(s.delivered().is_empty());
    assert_eq!(s.ps.stats().graylisted, 1);
    // The next heartbeat prunes it from the mesh.
    s.tick(Duration::from_secs(1));
    assert!(!s.mesh().contains(&mesh[0]));
}

#[test]
fn the_validator_decides_before_delivery_and_forwarding() {
    let mut s = Setup::new(10, Config::default());
    s.ps.set_validator(Box::new(|_: &str, _: &PeerId, data: &[u8]| match data {
        b"spam" => Validation::Reject,
        b"meh" => Validation::Ignore,
        _ => Validation::Accept,
    }));
    let mesh = s.mesh();
    s.recv(mesh[0], Message::Publish(message(50, 1, b"spam")));
    s.recv(mesh[1], Message::Publish(message(50, 2, b"meh")));
    assert!(s.delivered().is_empty());
    assert!(publishes(&s.sent()).is_empty());
    let stats = s.ps.stats();
    assert_eq!((stats.rejected, stats.ignored), (1, 1));
    assert!(
        s.ps.score(&mesh[0], s.now) < 0.0,
        "rejecting blames the sender"
    );
    assert_eq!(s.ps.score(&mesh[1], s.now), 0.0, "ignoring does not");
    s.recv(mesh[1], Message::Publish(message(50, 3, b"ok")));
    assert_eq!(s.delivered().len(), 1);
}

#[test]
fn large_messages_send_idontwant_and_idontwant_suppresses_forwarding() {
    let mut s = Setup::new(10, Config::default());
    let mesh = s.mesh();
    static BIG: [u8; 2000] = [7; 2000];
    let m = message(50, 1, &BIG);
    // mesh[1] already told us it has this message.
    s.recv(
        mesh[1],
        Message::Control(Control {
            idontwant: vec![m.id()],
            ..Control::default()
        }),
    );
    s.recv(mesh[0], Message::Publish(m.clone()));
    let sent = s.sent();
    let told: Vec<PeerId> = sent
        .iter()
        .filter(|(_, msg)| matches!(msg, Message::Control(c) if c.idontwant == [m.id()]))
        .map(|(p, _)| *p)
        .collect();
    assert_eq!(told.len(), mesh.len() - 1);
    let to = publishes(&sent);
    assert_eq!(to.len(), mesh.len() - 2);
    assert!(!to.contains(&mesh[1]));
    assert_eq!(s.ps.stats().idontwant_saved, 1);
}

#[test]
fn graft_during_backoff_is_refused_and_penalised() {
    let mut s = Setup::new(10, Config::default());
    let peer = s.mesh()[0];
    // Unsubscribing prunes the mesh with a backoff...
    let now = s.now;
    s.h.with(now, |cx| s.ps.unsubscribe(cx, TOPIC));
    let now = s.now;
    s.h.with(now, |cx| s.ps.subscribe(cx, TOPIC)).unwrap();
    assert!(
        !s.mesh().contains(&peer),
        "no re-graft of a peer we back off from"
    );
    s.sent();
    // ...and a peer that grafts us while we back off from it gets a PRUNE and a penalty.
    let graft = Control {
        graft: vec![TOPIC.into()],
        ..Control::default()
    };
    for _ in 0..3 {
        s.recv(peer, Message::Control(graft.clone()));
    }
    let prunes = s
        .sent()
        .into_iter()
        .filter(|(p, m)| *p == peer && matches!(m, Message::Control(c) if c.prune.len() == 1))
        .count();
    assert_eq!(prunes, 3);
    assert_eq!(s.ps.stats().graft_during_backoff, 3);
    assert!(s.ps.score(&peer, s.now) < 0.0);
    assert!(!s.mesh().contains(&peer));
}

#[test]
fn ihave_leads_to_iwant_and_a_broken_promise_costs_score() {
    let mut s = Setup::new(10, Config::default());
    let outsider = *s
        .ps
        .topic_peers(TOPIC)
        .find(|p| !s.mesh().contains(p))
        .unwrap();
    let ids: Vec<MessageId> = (1..=3).map(|seq| message(50, seq, b"x").id()).collect();
    s.recv(
        outsider,
        Message::Control(Control {
            ihave: vec![(TOPIC.into(), ids.clone())],
            ..Control::default()
        }),
    );
    let iwant: Vec<MessageId> = s
        .sent()
        .into_iter()
        .filter_map(|(p, m)| match m {
            Message::Control(c) if p == outsider => Some(c.iwant),
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(iwant.len(), 3);
    // Nothing arrives: after the follow-up time the promise is broken. Three broken
    // promises exceed the tolerated behaviour penalty.
    for round in 0..3u64 {
        if round > 0 {
            let ids = vec![message(50, 10 + round, b"x").id()];
            s.recv(
                outsider,
                Message::Control(Control {
                    ihave: vec![(TOPIC.into(), ids)],
                    ..Control::default()
                }),
            );
        }
        for _ in 0..4 {
            s.tick(Duration::from_secs(1));
        }
    }
    assert_eq!(s.ps.stats().broken_promises, 3);
    assert!(s.ps.score(&outsider, s.now) < 0.0);
}

#[test]
fn iwant_is_answered_from_the_cache_a_bounded_number_of_times() {
    let mut s = Setup::new(10, Config::default());
    let p = s.mesh()[0];
    let m = message(50, 1, b"cached");
    s.recv(p, Message::Publish(m.clone()));
    s.sent();
    let asker = s.peers[9];
    for _ in 0..5 {
        s.recv(
            asker,
            Message::Control(Control {
                iwant: vec![m.id()],
                ..Control::default()
            }),
        );
    }
    assert_eq!(publishes(&s.sent()).len(), 3, "gossip_retransmission");
    // After history_length heartbeats the message has left the cache.
    for _ in 0..6 {
        s.tick(Duration::from_secs(1));
    }
    s.recv(
        s.peers[8],
        Message::Control(Control {
            iwant: vec![m.id()],
            ..Control::default()
        }),
    );
    assert!(publishes(&s.sent()).is_empty());
}

#[test]
fn heartbeat_gossips_ihave_to_topic_peers_outside_the_mesh() {
    let mut s = Setup::new(20, Config::default());
    let mesh = s.mesh();
    s.recv(mesh[0], Message::Publish(message(50, 1, b"news")));
    s.sent();
    s.tick(Duration::from_secs(1));
    let ihave: Vec<PeerId> = s
        .sent()
        .into_iter()
        .filter(|(_, m)| matches!(m, Message::Control(c) if !c.ihave.is_empty()))
        .map(|(p, _)| p)
        .collect();
    assert_eq!(ihave.len(), 6);
    assert!(ihave.iter().all(|p| !s.mesh().contains(p)));
}

#[test]
fn a_peer_over_its_rate_limit_is_cut_off_for_the_rest_of_the_second() {
    let config = Config {
        max_messages_per_sec: 5,
        ..Config::default()
    };
    let mut s = Setup::new(10, config);
    let p = s.mesh()[0];
    for seq in 0..8 {
        s.recv(p, Message::Publish(message(50, seq, b"burst")));
    }
    assert_eq!(s.delivered().len(), 5);
    assert_eq!(s.ps.stats().rate_limited, 3);
    s.tick(Duration::from_secs(1));
    s.recv(p, Message::Publish(message(50, 100, b"later")));
    assert_eq!(s.delivered().len(), 1);
}

#[test]
fn a_full_mesh_refuses_grafts_with_peer_exchange() {
    let mut s = Setup::new(20, Config::default());
    let outsiders: Vec<PeerId> =
        s.ps.topic_peers(TOPIC)
            .filter(|p| !s.mesh().contains(p))
            .copied()
            .collect();
    let graft = Control {
        graft: vec![TOPIC.into()],
        ..Control::default()
    };
    // Up to d_hi = 12 grafts are accepted; the 13th is pruned, with signed records of other
    // topic peers to try instead.
    for p in outsiders.iter().take(7) {
        s.recv(*p, Message::Control(graft.clone()));
    }
    assert_eq!(s.mesh().len(), 12);
    let prunes: Vec<Prune> = s
        .sent()
        .into_iter()
        .filter_map(|(to, m)| match m {
            Message::Control(mut c) if to == outsiders[6] => c.prune.pop(),
            _ => None,
        })
        .collect();
    assert_eq!(prunes.len(), 1);
    let px = &prunes[0].px;
    assert!(!px.is_empty() && px.len() <= MAX_PX);
    assert!(px.iter().all(|r| *r.peer() != outsiders[6]));
    assert!(px.iter().all(|r| r.verify(s.now, &s.ps.limits).is_ok()));
    // The pruned side follows the peer exchange: it dials the records' peers it lacks.
    let mut other = Setup::new(2, Config::default());
    let now = other.now;
    other.h.with(now, |cx| {
        other.ps.handle_message(
            cx,
            other.peers[0],
            Message::Control(Control {
                prune: prunes.clone(),
                ..Control::default()
            }),
        )
    });
    assert!(other.ps.stats().px_dialed > 0);
}

#[test]
fn publishing_floods_to_topic_peers_and_without_peers_reports_zero() {
    let mut s = Setup::new(10, Config::default());
    let now = s.now;
    let p =
        s.h.with(now, |cx| s.ps.publish(cx, TOPIC, Bytes::from_static(b"hi")))
            .unwrap();
    assert_eq!(p.peers, 10);
    assert_eq!(publishes(&s.sent()).len(), 10);
    let now = s.now;
    let p =
        s.h.with(now, |cx| {
            s.ps.publish(cx, "empty", Bytes::from_static(b"hi"))
        })
        .unwrap();
    assert_eq!(p.peers, 0);
    let big = Bytes::from(vec![0; 70_000]);
    let now = s.now;
    let err =
        s.h.with(now, |cx| s.ps.publish(cx, TOPIC, big))
            .unwrap_err();
    assert!(matches!(err, PubSubError::TooLarge { .. }));
    let now = s.now;
    let err =
        s.h.with(now, |cx| s.ps.publish(cx, "", Bytes::new()))
            .unwrap_err();
    assert_eq!(err, PubSubError::BadTopic);
}

#[test]
fn validate_bounds_every_list() {
    let long = "t".repeat(MAX_TOPIC_LEN + 1);
    let sub = Message::Subscribe {
        topics: vec![(long.clone(), true)],
        record: None,
    };
    assert!(sub.validate().is_err());
    let many = Message::Subscribe {
        topics: (0..=MAX_TOPICS).map(|i| (i.to_string(), true)).collect(),
        record: None,
    };
    assert!(many.validate().is_err());
    let ids = vec![MessageId([0; 20]); MAX_IDS + 1];
    for c in [
        Control {
            iwant: ids.clone(),
            ..Control::default()
        },
        Control {
            idontwant: ids.clone(),
            ..Control::default()
        },
        Control {
            ihave: vec![("t".into(), ids.clone())],
            ..Control::default()
        },
        Control {
            graft: vec![long.clone()],
            ..Control::default()
        },
    ] {
        assert!(Message::Control(c).validate().is_err());
    }
    assert!(Message::Publish(message(1, 1, b"ok")).validate().is_ok());
}

#[test]
fn peers_get_state_when_they_speak_pubsub_or_are_told_our_subscriptions() {
    let me = key(1);
    let mut h = Harness::new();
    let mut ps = PubSub::new(me.clone(), stamp(&me), D, Config::default());
    let now = at(1);
    let peers: Vec<PeerId> = (10..13).map(id).collect();
    for (i, peer) in peers.iter().enumerate() {
        let addr = format!("10.0.0.{i}:4000").parse().unwrap();
        let event = h.ready_from(*peer, now, addr);
        h.with(now, |cx| ps.handle_peer_event(cx, &event));
    }
    assert_eq!(ps.tracked_peers(), 0, "connecting alone makes no state");
    assert!(
        h.transmits().is_empty(),
        "nothing to tell while unsubscribed"
    );

    // A peer that announces a topic gets state, and is a topic peer.
    let subscribe = Message::Subscribe {
        topics: vec![(TOPIC.into(), true)],
        record: None,
    };
    h.with(now, |cx| ps.handle_message(cx, peers[0], subscribe));
    assert_eq!(ps.tracked_peers(), 1);
    assert_eq!(ps.topic_peers(TOPIC).collect::<Vec<_>>(), vec![&peers[0]]);

    // Subscribing tells every ready peer, with our record the first time.
    h.with(now, |cx| ps.subscribe(cx, TOPIC)).unwrap();
    let mut told: Vec<PeerId> = h
        .transmits()
        .into_iter()
        .filter(|t| matches!(t.message, Wire::PubSub(Message::Subscribe { .. })))
        .map(|t| t.to)
        .collect();
    told.sort();
    let mut all = peers.clone();
    all.sort();
    assert_eq!(told, all);
    assert_eq!(ps.tracked_peers(), 3);

    // A peer that is not ready gets no state from a stray message.
    let stranger = id(99);
    let subscribe = Message::Subscribe {
        topics: vec![(TOPIC.into(), true)],
        record: None,
    };
    h.with(now, |cx| ps.handle_message(cx, stranger, subscribe));
    assert_eq!(ps.tracked_peers(), 3);

    let gone = h.gone(peers[1]);
    h.with(now, |cx| ps.handle_peer_event(cx, &gone));
    assert_eq!(ps.tracked_peers(), 2);
}

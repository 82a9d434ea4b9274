use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

use super::message::sign_hits;
use super::{
    Config, Event, Gossip, Hit, MAX_HIT_NAME_LEN, MAX_HITS, MAX_SHUFFLE_RECORDS, MAX_TTL,
    MAX_WORD_LEN, MAX_WORDS, Message, SearchError, ShareError,
};
use crate::identity::{Keypair, PeerId, Signature};
use crate::kad::record::{PeerRecord, RecordLimits};
use crate::node::tests_support::Harness;
use crate::node::{self, Direction, Protocol, Transmit};
use crate::pow::{Difficulty, Stamp};
use crate::time::Instant;
use crate::wire::{self, WireError};

const D: Difficulty = Difficulty(4);
const T0: Instant = Instant::from_micros(1_000 * 1_000_000);

fn key(seed: u8) -> Keypair {
    Keypair::from_secret_bytes([seed; 32])
}

fn id(seed: u8) -> PeerId {
    key(seed).peer_id()
}

fn addr(seed: u8) -> SocketAddr {
    SocketAddr::from(([10, 2, 0, seed], 4000))
}

fn stamp(seed: u8) -> Stamp {
    Stamp::mint(&id(seed), D)
}

/// A valid record of peer `seed`, at `addr(seed)`, expiring an hour after `now`.
fn record(seed: u8, now: Instant) -> PeerRecord {
    record_until(seed, 1, now.as_secs() + 3600)
}

fn record_until(seed: u8, seq: u64, expires: u64) -> PeerRecord {
    PeerRecord::new(
        &key(seed),
        stamp(seed),
        vec![addr(seed)],
        Vec::new(),
        seq,
        expires,
    )
}

fn limits() -> RecordLimits {
    RecordLimits {
        difficulty: D,
        ..RecordLimits::default()
    }
}

/// The gossip messages among `transmits`, with their recipients.
fn gossip(transmits: Vec<Transmit>) -> Vec<(PeerId, Message)> {
    transmits
        .into_iter()
        .filter_map(|t| match t.message {
            wire::Message::Gossip(m) => Some((t.to, m)),
            _ => None,
        })
        .collect()
}

fn to(out: &[(PeerId, Message)], peer: PeerId) -> Vec<Message> {
    out.iter()
        .filter(|(p, _)| *p == peer)
        .map(|(_, m)| m.clone())
        .collect()
}

fn reply(accepted: bool) -> Message {
    Message::NeighborReply { accepted }
}

/// One gossip state machine with an identity and an address, driven by a [`Harness`].
struct Machine {
    g: Gossip,
    h: Harness,
    now: Instant,
    events: Vec<node::Event>,
}

impl Machine {
    fn new(seed: u8, config: Config) -> Self {
        Self {
            g: Gossip::new(key(seed), D, config),
            h: Harness::with_identity(key(seed), stamp(seed), vec![addr(seed)]),
            now: T0,
            events: Vec::new(),
        }
    }

    fn id(&self) -> PeerId {
        self.g.local
    }

    fn input(
        &mut self,
        f: impl FnOnce(&mut Gossip, &mut node::Context<'_>),
    ) -> Vec<(PeerId, Message)> {
        let now = self.now;
        let g = &mut self.g;
        self.h.with(now, |cx| f(g, cx));
        self.events.extend(self.h.events());
        gossip(self.h.transmits())
    }

    fn ready(&mut self, peer: PeerId, direction: Direction) -> Vec<(PeerId, Message)> {
        let event = self.h.ready_with(peer, self.now, direction);
        self.input(|g, cx| g.handle_peer_event(cx, &event))
    }

    fn gone(&mut self, peer: PeerId) -> Vec<(PeerId, Message)> {
        let event = self.h.gone(peer);
        self.input(|g, cx| g.handle_peer_event(cx, &event))
    }

    fn unreachable(&mut self, peer: PeerId) -> Vec<(PeerId, Message)> {
        let event = node::PeerEvent::Unreachable { peer };
        self.input(|g, cx| g.handle_peer_event(cx, &event))
    }

    fn recv(&mut self, from: PeerId, msg: Message) -> Vec<(PeerId, Message)> {
        assert!(msg.validate().is_ok(), "{msg:?}");
        self.input(|g, cx| g.handle_message(cx, from, msg))
    }

    /// Advances to `now` and runs the timer if it is due.
    fn tick(&mut self, now: Instant) -> Vec<(PeerId, Message)> {
        self.now = self.now.max(now);
        if self.g.poll_timeout().is_some_and(|t| t <= self.now) {
            self.input(|g, cx| g.handle_timeout(cx))
        } else {
            Vec::new()
        }
    }

    fn search(&mut self, words: &[&str]) -> (Result<u64, SearchError>, Vec<(PeerId, Message)>) {
        let words: Vec<String> = words.iter().map(|w| w.to_string()).collect();
        let mut result = None;
        let out = self.input(|g, cx| result = Some(g.search(cx, &words)));
        (result.expect("ran"), out)
    }

    fn own_record(&mut self) -> PeerRecord {
        let now = self.now;
        self.h
            .with(now, |cx| cx.own_record())
            .expect("has addresses")
    }

    /// Gossip's events since the last call.
    fn take_events(&mut self) -> Vec<Event> {
        self.events
            .drain(..)
            .filter_map(|e| match e {
                node::Event::Gossip(e) => Some(e),
                _ => None,
            })
            .collect()
    }

    /// Peers the machine asked the driver to dial since the last call (other events dropped).
    fn take_dials(&mut self) -> Vec<(PeerId, Vec<SocketAddr>)> {
        self.events
            .drain(..)
            .filter_map(|e| match e {
                node::Event::Dial { peer, addrs } => Some((peer, addrs)),
                _ => None,
            })
            .collect()
    }

    /// Makes `seed` a neighbor (it connects to us and asks).
    fn befriend(&mut self, seed: u8) {
        self.ready(id(seed), Direction::Inbound);
        let now = self.now;
        let out = self.recv(
            id(seed),
            Message::Neighbor {
                high_priority: false,
                record: Some(record(seed, now)),
            },
        );
        assert_eq!(to(&out, id(seed)), vec![reply(true)]);
        self.events.clear();
    }

    fn active(&self) -> Vec<PeerId> {
        self.g.active_view().copied().collect()
    }

    fn passive(&self) -> Vec<PeerId> {
        self.g.passive_view().map(|r| *r.peer()).collect()
    }

    /// Puts `seed`'s record in the passive view: it becomes a neighbor, then disconnects us.
    fn add_passive(&mut self, seed: u8) {
        self.befriend(seed);
        self.recv(id(seed), Message::Disconnect);
        self.events.clear();
        assert!(self.passive().contains(&id(seed)));
    }
}

fn small(active_size: usize) -> Config {
    Config {
        active_size,
        ..Config::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Membership

#[test]
fn join_is_sent_on_the_first_outbound_connection_only() {
    let mut m = Machine::new(1, Config::default());
    assert!(m.ready(id(3), Direction::Inbound).is_empty());
    let out = m.ready(id(2), Direction::Outbound);
    let own = m.own_record();
    assert_eq!(out, vec![(id(2), Message::Join { record: own })]);
    // A join is pending: a second outbound connection does not join again.
    assert!(m.ready(id(4), Direction::Outbound).is_empty());
    // The contact accepts: it is our first neighbor.
    assert!(m.recv(id(2), reply(true)).is_empty());
    assert_eq!(m.active(), vec![id(2)]);
    assert_eq!(m.take_events(), vec![Event::NeighborUp { peer: id(2) }]);
    assert_eq!(m.g.stats().joins_sent, 1);
}

#[test]
fn unanswered_join_is_abandoned_and_retried_through_a_contact() {
    let mut m = Machine::new(1, Config::default());
    assert_eq!(m.ready(id(2), Direction::Outbound).len(), 1);
    assert!(m.tick(T0 + Duration::from_secs(5)).is_empty());
    // After 10 s the join is given up; alone with an empty passive view, the machine joins
    // again through a connected peer.
    let out = m.tick(T0 + Duration::from_secs(11));
    assert_eq!(out.len(), 1);
    assert!(matches!(out[0], (p, Message::Join { .. }) if p == id(2)));
    assert_eq!(m.g.stats().neighbor_timeouts, 1);
    assert_eq!(m.g.stats().joins_sent, 2);
}

#[test]
fn contact_adds_the_joiner_and_forwards_the_join_to_its_other_neighbors() {
    let mut m = Machine::new(1, Config::default());
    for seed in [2, 3, 4] {
        m.befriend(seed);
    }
    m.ready(id(5), Direction::Inbound);
    let joiner = record(5, m.now);
    let out = m.recv(
        id(5),
        Message::Join {
            record: joiner.clone(),
        },
    );
    assert_eq!(to(&out, id(5)), vec![reply(true)]);
    for seed in [2, 3, 4] {
        assert_eq!(
            to(&out, id(seed)),
            vec![Message::ForwardJoin {
                record: joiner.clone(),
                ttl: 6
            }]
        );
    }
    assert_eq!(out.len(), 4);
    assert!(m.active().contains(&id(5)));
    assert_eq!(m.take_events(), vec![Event::NeighborUp { peer: id(5) }]);
    assert_eq!(m.g.stats().joins, 1);
}

#[test]
fn join_with_another_peers_record_or_from_an_unready_peer_is_ignored() {
    let mut m = Machine::new(1, Config::default());
    m.ready(id(5), Direction::Inbound);
    let now = m.now;
    let out = m.recv(
        id(5),
        Message::Join {
            record: record(6, now),
        },
    );
    assert!(out.is_empty());
    // Peer 7 is not connected.
    assert!(
        m.recv(
            id(7),
            Message::Join {
                record: record(7, now)
            }
        )
        .is_empty()
    );
    assert!(m.active().is_empty());
    assert_eq!(m.g.stats().ignored, 2);
}

#[test]
fn contact_with_a_full_view_evicts_a_random_neighbor_for_the_joiner() {
    let mut m = Machine::new(1, small(2));
    m.befriend(2);
    m.befriend(3);
    m.ready(id(5), Direction::Inbound);
    let now = m.now;
    let out = m.recv(
        id(5),
        Message::Join {
            record: record(5, now),
        },
    );
    let evicted: Vec<PeerId> = out
        .iter()
        .filter(|(_, msg)| *msg == Message::Disconnect)
        .map(|(p, _)| *p)
        .collect();
    assert_eq!(evicted.len(), 1);
    let survivor = if evicted[0] == id(2) { id(3) } else { id(2) };
    assert_eq!(
        m.active().into_iter().collect::<BTreeSet<_>>(),
        BTreeSet::from([survivor, id(5)])
    );
    assert_eq!(m.passive(), evicted, "the evicted neighbor goes to passive");
    assert_eq!(to(&out, survivor).len(), 1, "the walk goes to the survivor");
    assert_eq!(m.g.stats().evictions, 1);
}

#[test]
fn forward_join_walks_on_and_leaves_the_record_in_passive_at_prwl() {
    let mut m = Machine::new(1, Config::default());
    m.befriend(2);
    m.befriend(3);
    let joiner = record(5, m.now);
    let out = m.recv(
        id(2),
        Message::ForwardJoin {
            record: joiner.clone(),
            ttl: 3,
        },
    );
    assert_eq!(
        out,
        vec![(
            id(3),
            Message::ForwardJoin {
                record: joiner,
                ttl: 2
            }
        )]
    );
    assert_eq!(m.passive(), vec![id(5)]);
    assert_eq!(m.g.stats().forward_joins, 1);
}

#[test]
fn forward_join_ends_with_a_neighbor_request_to_the_joiner() {
    let mut m = Machine::new(1, Config::default());
    m.befriend(2);
    // Our only neighbor is the sender: the walk ends here, whatever its ttl.
    let out = m.recv(
        id(2),
        Message::ForwardJoin {
            record: record(5, m.now),
            ttl: 4,
        },
    );
    // The joiner is not connected: the request waits for the dial.
    assert!(out.is_empty());
    assert_eq!(m.take_dials(), vec![(id(5), vec![addr(5)])]);
    let own = m.own_record();
    let out = m.ready(id(5), Direction::Outbound);
    assert_eq!(
        out,
        vec![(
            id(5),
            Message::Neighbor {
                high_priority: true,
                record: Some(own)
            }
        )],
        "no join: the dialed peer is a pending neighbor"
    );
    m.recv(id(5), reply(true));
    let active: BTreeSet<PeerId> = m.active().into_iter().collect();
    assert_eq!(active, BTreeSet::from([id(2), id(5)]));
}

#[test]
fn forward_join_with_ttl_zero_ends_the_walk() {
    let mut m = Machine::new(1, Config::default());
    m.befriend(2);
    m.befriend(3);
    m.ready(id(5), Direction::Inbound);
    let out = m.recv(
        id(2),
        Message::ForwardJoin {
            record: record(5, m.now),
            ttl: 0,
        },
    );
    assert!(matches!(
        to(&out, id(5)).as_slice(),
        [Message::Neighbor {
            high_priority: true,
            ..
        }]
    ));
}

#[test]
fn walks_from_non_neighbors_are_ignored() {
    let mut m = Machine::new(1, Config::default());
    m.befriend(2);
    m.ready(id(3), Direction::Inbound);
    let now = m.now;
    let fj = Message::ForwardJoin {
        record: record(5, now),
        ttl: 0,
    };
    assert!(m.recv(id(3), fj).is_empty());
    let shuffle = Message::Shuffle {
        origin: record(3, now),
        records: vec![record(6, now)],
        ttl: 1,
    };
    assert!(m.recv(id(3), shuffle).is_empty());
    assert!(m.take_dials().is_empty());
    assert!(m.passive().is_empty());
    assert_eq!(m.g.stats().ignored, 2);
}

#[test]
fn neighbor_requests_are_accepted_while_there_is_room_then_only_high_priority() {
    let mut m = Machine::new(1, small(2));
    m.befriend(2);
    m.befriend(3);
    let now = m.now;
    m.ready(id(4), Direction::Inbound);
    let out = m.recv(
        id(4),
        Message::Neighbor {
            high_priority: false,
            record: Some(record(4, now)),
        },
    );
    assert_eq!(out, vec![(id(4), reply(false))]);
    assert_eq!(
        m.passive(),
        vec![id(4)],
        "a refused requester is a passive candidate"
    );
    assert_eq!(m.g.stats().neighbors_refused, 1);

    m.ready(id(5), Direction::Inbound);
    let out = m.recv(
        id(5),
        Message::Neighbor {
            high_priority: true,
            record: Some(record(5, now)),
        },
    );
    assert!(out.contains(&(id(5), reply(true))));
    let evicted: Vec<PeerId> = out
        .iter()
        .filter(|(_, msg)| *msg == Message::Disconnect)
        .map(|(p, _)| *p)
        .collect();
    assert_eq!(evicted.len(), 1);
    assert!(m.active().contains(&id(5)));
    assert_eq!(m.active().len(), 2);
    assert!(m.passive().contains(&evicted[0]));
    let events = m.take_events();
    assert!(events.contains(&Event::NeighborUp { peer: id(5) }));
    assert!(events.contains(&Event::NeighborDown { peer: evicted[0] }));
    // A request carrying someone else's record is ignored.
    m.ready(id(6), Direction::Inbound);
    let out = m.recv(
        id(6),
        Message::Neighbor {
            high_priority: true,
            record: Some(record(7, now)),
        },
    );
    assert!(out.is_empty());
}

#[test]
fn disconnect_moves_the_neighbor_to_passive() {
    let mut m = Machine::new(1, Config::default());
    m.befriend(2);
    m.recv(id(2), Message::Disconnect);
    assert!(m.active().is_empty());
    assert_eq!(m.passive(), vec![id(2)]);
    assert_eq!(m.take_events(), vec![Event::NeighborDown { peer: id(2) }]);
    assert_eq!(m.g.stats().disconnects, 1);
    // A disconnect from a stranger changes nothing.
    m.recv(id(9), Message::Disconnect);
    assert_eq!(m.g.stats().disconnects, 1);
}

#[test]
fn a_failed_neighbor_is_dropped_and_repair_asks_a_passive_peer() {
    let mut m = Machine::new(1, Config::default());
    m.add_passive(3);
    m.befriend(2);
    m.take_dials();
    let out = m.gone(id(2));
    assert!(m.active().is_empty());
    assert!(
        !m.passive().contains(&id(2)),
        "a failed neighbor is not a candidate"
    );
    assert_eq!(m.g.stats().neighbors_failed, 1);
    // Repair ran at once: peer 3 is still connected, so the request goes straight out, with
    // high priority because we have no neighbor left.
    let own = m.own_record();
    assert_eq!(
        out,
        vec![(
            id(3),
            Message::Neighbor {
                high_priority: true,
                record: Some(own)
            }
        )]
    );
    assert!(m.passive().is_empty(), "pending, no longer passive");
    m.recv(id(3), reply(true));
    assert_eq!(m.active(), vec![id(3)]);
}

#[test]
fn repair_dials_passive_peers_and_forgets_unreachable_ones() {
    let mut m = Machine::new(1, Config::default());
    m.add_passive(3);
    m.add_passive(4);
    m.add_passive(5);
    // Not connected any more.
    for seed in [3, 4, 5] {
        m.gone(id(seed));
    }
    assert_eq!(m.passive().len(), 3);
    m.take_dials();
    let due = m.g.poll_timeout().expect("repair is due");
    m.tick(due);
    let dials = m.take_dials();
    assert_eq!(dials.len(), 2, "at most two requests pending");
    for (peer, addrs) in &dials {
        assert_eq!(m.g.passive.get(peer), None);
        assert_eq!(addrs.len(), 1);
    }
    assert_eq!(m.g.stats().neighbor_requests, 2);
    // One dial fails: its record is dropped, and repair moves on to the last passive peer.
    let failed = dials[0].0;
    m.unreachable(failed);
    assert!(!m.passive().contains(&failed));
    let next = m.take_dials();
    assert_eq!(next.len(), 1);
    assert!(!dials.iter().any(|(p, _)| *p == next[0].0));
    // Requests unanswered for 10 s are forgotten.
    m.tick(m.now + Duration::from_secs(11));
    assert_eq!(m.g.stats().neighbor_timeouts, 2);
    assert!(m.g.pending.is_empty());
}

#[test]
fn refused_request_returns_the_peer_to_passive() {
    let mut m = Machine::new(1, Config::default());
    m.add_passive(3);
    m.befriend(2);
    // Below active_size with a passive peer: repair asks it (low priority: we have a neighbor).
    let due = m.g.poll_timeout().expect("due");
    let out = m.tick(due);
    assert!(matches!(
        to(&out, id(3)).as_slice(),
        [Message::Neighbor {
            high_priority: false,
            ..
        }]
    ));
    m.recv(id(3), reply(false));
    assert_eq!(m.passive(), vec![id(3)]);
    assert_eq!(m.g.stats().neighbor_refusals, 1);
    assert_eq!(m.active(), vec![id(2)]);
}

#[test]
fn repeated_refusals_slow_repair_down_until_a_neighbor_changes() {
    let mut m = Machine::new(1, Config::default());
    m.add_passive(3);
    m.befriend(2);
    let mut asked = Vec::new();
    while asked.len() < 8 {
        let due = m.g.poll_timeout().expect("repair is due");
        let out = m.tick(due);
        if !to(&out, id(3)).is_empty() {
            asked.push(m.now);
            m.recv(id(3), reply(false));
        }
    }
    let gaps: Vec<u64> = asked.windows(2).map(|w| (w[1] - w[0]).as_secs()).collect();
    assert_eq!(gaps, vec![2, 4, 8, 16, 30, 30, 30]);
    // Losing a neighbor resets the pace (and repairs at once).
    let out = m.gone(id(2));
    assert_eq!(to(&out, id(3)).len(), 1);
    m.recv(id(3), reply(false));
    let before = m.now;
    let out = m.tick(m.g.poll_timeout().expect("due"));
    assert_eq!(to(&out, id(3)).len(), 1);
    assert_eq!((m.now - before).as_secs(), 2);
}

#[test]
fn late_acceptance_is_taken_if_there_is_room_and_declined_otherwise() {
    let mut m = Machine::new(1, small(1));
    m.ready(id(2), Direction::Inbound);
    m.recv(id(2), reply(true));
    assert_eq!(m.active(), vec![id(2)]);
    m.ready(id(3), Direction::Inbound);
    let out = m.recv(id(3), reply(true));
    assert_eq!(out, vec![(id(3), Message::Disconnect)]);
    assert_eq!(m.active(), vec![id(2)]);
}

#[test]
fn shuffle_is_sent_periodically_to_a_neighbor() {
    let mut m = Machine::new(1, Config::default());
    m.add_passive(5);
    m.add_passive(6);
    m.befriend(2);
    m.befriend(3);
    let first = m.g.next_shuffle.expect("scheduled at the first input");
    assert!(first < T0 + Duration::from_secs(30));
    let out = m.tick(first);
    let own = m.own_record();
    let (target, msg) = out
        .iter()
        .find(|(_, msg)| matches!(msg, Message::Shuffle { .. }))
        .expect("a shuffle")
        .clone();
    let Message::Shuffle {
        origin,
        records,
        ttl,
    } = msg
    else {
        unreachable!()
    };
    assert_eq!(origin, own);
    assert_eq!(ttl, 6);
    let peers: BTreeSet<PeerId> = records.iter().map(|r| *r.peer()).collect();
    let other = if target == id(2) { id(3) } else { id(2) };
    assert_eq!(peers, BTreeSet::from([other, id(5), id(6)]));
    assert_eq!(m.g.stats().shuffles_sent, 1);
    assert_eq!(m.g.next_shuffle, Some(first + Duration::from_secs(30)));

    // The reply is integrated once; a second, unsolicited one is ignored.
    let now = m.now;
    m.ready(id(9), Direction::Inbound);
    m.recv(
        id(9),
        Message::ShuffleReply {
            records: vec![record(7, now), record(1, now)],
        },
    );
    assert!(m.passive().contains(&id(7)));
    assert!(!m.passive().contains(&id(1)), "never ourselves");
    m.recv(
        id(9),
        Message::ShuffleReply {
            records: vec![record(8, now)],
        },
    );
    assert!(!m.passive().contains(&id(8)));
    assert_eq!(m.g.stats().shuffle_replies, 1);
}

#[test]
fn shuffle_walk_is_forwarded_while_its_ttl_lasts() {
    let mut m = Machine::new(1, Config::default());
    m.befriend(2);
    m.befriend(3);
    let now = m.now;
    let msg = Message::Shuffle {
        origin: record(9, now),
        records: vec![record(10, now)],
        ttl: 5,
    };
    let out = m.recv(id(2), msg);
    assert_eq!(
        out,
        vec![(
            id(3),
            Message::Shuffle {
                origin: record(9, now),
                records: vec![record(10, now)],
                ttl: 4
            }
        )]
    );
    assert!(m.passive().is_empty());
    assert_eq!(m.g.stats().shuffles_forwarded, 1);
}

#[test]
fn shuffle_at_the_end_of_its_walk_is_answered_and_integrated_never_with_ourselves() {
    let mut m = Machine::new(1, Config::default());
    for seed in [20, 21, 22, 23] {
        m.add_passive(seed);
    }
    m.befriend(2);
    let now = m.now;
    let msg = Message::Shuffle {
        origin: record(9, now),
        records: vec![record(1, now), record(10, now), record(11, now)],
        ttl: 1,
    };
    let out = m.recv(id(2), msg);
    assert!(out.is_empty(), "the reply waits for the dial to the origin");
    assert_eq!(m.take_dials(), vec![(id(9), vec![addr(9)])]);
    let out = m.ready(id(9), Direction::Outbound);
    let [(peer, Message::ShuffleReply { records })] = out.as_slice() else {
        panic!("{out:?}")
    };
    assert_eq!(*peer, id(9));
    assert_eq!(records.len(), 3, "as many as received");
    for r in records {
        assert!([id(20), id(21), id(22), id(23)].contains(r.peer()));
    }
    let passive: BTreeSet<PeerId> = m.passive().into_iter().collect();
    assert!(passive.contains(&id(9)) && passive.contains(&id(10)) && passive.contains(&id(11)));
    assert!(!passive.contains(&id(1)));
    assert_eq!(m.g.stats().shuffles_received, 1);
}

#[test]
fn full_passive_view_evicts_the_records_just_sent_first() {
    let config = Config {
        passive_size: 4,
        ..Config::default()
    };
    let mut m = Machine::new(1, config);
    for seed in [20, 21, 22, 23] {
        m.add_passive(seed);
    }
    m.befriend(2);
    m.ready(id(9), Direction::Inbound);
    let now = m.now;
    let out = m.recv(
        id(2),
        Message::Shuffle {
            origin: record(9, now),
            records: vec![record(10, now)],
            ttl: 1,
        },
    );
    // Origin 9 is connected, so the reply (one record) went out at once.
    let [(_, Message::ShuffleReply { records })] = out.as_slice() else {
        panic!("{out:?}")
    };
    let sent = *records[0].peer();
    let passive: BTreeSet<PeerId> = m.passive().into_iter().collect();
    assert_eq!(passive.len(), 4);
    assert!(
        !passive.contains(&sent),
        "the record just sent away is evicted first"
    );
    assert!(passive.contains(&id(9)) && passive.contains(&id(10)));
}

#[test]
fn passive_view_is_bounded() {
    let config = Config {
        passive_size: 5,
        ..Config::default()
    };
    let mut m = Machine::new(1, config);
    m.befriend(2);
    let now = m.now;
    let records: Vec<PeerRecord> = (30..30 + MAX_SHUFFLE_RECORDS as u8)
        .map(|s| record(s, now))
        .collect();
    m.recv(
        id(2),
        Message::Shuffle {
            origin: record(9, now),
            records,
            ttl: 1,
        },
    );
    assert_eq!(m.passive().len(), 5);
}

#[test]
fn invalid_records_are_rejected_and_counted() {
    let mut m = Machine::new(1, Config::default());
    m.befriend(2);
    let now = m.now;
    let expired = record_until(10, 1, now.as_secs());
    let eternal = record_until(11, 1, now.as_secs() + 365 * 24 * 3600);
    let weak = {
        let k = key(12);
        let weak = (0..)
            .map(|nonce| Stamp { nonce })
            .find(|s| s.work(&k.peer_id()) < u32::from(D.0))
            .expect("some nonce is weak");
        PeerRecord::new(&k, weak, vec![addr(12)], Vec::new(), 1, now.as_secs() + 60)
    };
    for bad in [&expired, &eternal, &weak] {
        assert!(bad.verify(now, &limits()).is_err());
    }
    m.recv(
        id(2),
        Message::Shuffle {
            origin: record(9, now),
            records: vec![expired.clone(), eternal, weak, record(13, now)],
            ttl: 1,
        },
    );
    assert_eq!(m.g.stats().invalid_records, 3);
    let passive: BTreeSet<PeerId> = m.passive().into_iter().collect();
    assert_eq!(passive, BTreeSet::from([id(9), id(13)]));
    // A shuffle from an invalid origin is dropped whole.
    m.recv(
        id(2),
        Message::Shuffle {
            origin: expired.clone(),
            records: vec![record(14, now)],
            ttl: 1,
        },
    );
    assert!(!m.passive().contains(&id(14)));
    // So are joins and walks with invalid records.
    m.ready(id(10), Direction::Inbound);
    assert!(
        m.recv(
            id(10),
            Message::Join {
                record: expired.clone()
            }
        )
        .is_empty()
    );
    assert!(
        m.recv(
            id(2),
            Message::ForwardJoin {
                record: expired,
                ttl: 0
            }
        )
        .is_empty()
    );
    assert_eq!(m.g.stats().invalid_records, 6);
    assert_eq!(m.active(), vec![id(2)]);
}

#[test]
fn a_newer_record_supersedes_the_stored_one_and_an_older_does_not() {
    let mut m = Machine::new(1, Config::default());
    m.befriend(2);
    let now = m.now;
    let shuffle = |r: PeerRecord| Message::Shuffle {
        origin: record(9, now),
        records: vec![r],
        ttl: 1,
    };
    m.recv(id(2), shuffle(record_until(10, 5, now.as_secs() + 60)));
    m.recv(id(2), shuffle(record_until(10, 3, now.as_secs() + 60)));
    assert_eq!(m.g.passive[&id(10)].seq(), 5);
    m.recv(id(2), shuffle(record_until(10, 7, now.as_secs() + 60)));
    assert_eq!(m.g.passive[&id(10)].seq(), 7);
}

#[test]
fn disabled_gossip_is_silent() {
    let config = Config {
        enabled: false,
        ..Config::default()
    };
    let mut m = Machine::new(1, config);
    assert!(m.ready(id(2), Direction::Outbound).is_empty());
    let now = m.now;
    let out = m.recv(
        id(2),
        Message::Neighbor {
            high_priority: true,
            record: Some(record(2, now)),
        },
    );
    assert!(out.is_empty());
    assert!(m.active().is_empty());
    assert_eq!(m.g.poll_timeout(), None);
    assert_eq!(m.search(&["x"]).0, Err(SearchError::Disabled));
}

// ---------------------------------------------------------------------------------------------
// Search

fn query(id: u64, words: &[&str], ttl: u8) -> Message {
    Message::Query {
        id,
        words: words.iter().map(|w| w.to_string()).collect(),
        ttl,
    }
}

fn hits(id: u64, responder: u8, now: Instant, names: &[&str]) -> Message {
    let hits: Vec<Hit> = names
        .iter()
        .enumerate()
        .map(|(i, n)| Hit {
            name: n.to_string(),
            content: [i as u8; 32],
            size: 100,
        })
        .collect();
    Message::Hits {
        id,
        responder: record(responder, now),
        signature: sign_hits(&key(responder), id, &hits),
        hits,
    }
}

#[test]
fn query_is_answered_from_the_local_index_and_forwarded() {
    let mut m = Machine::new(1, Config::default());
    m.befriend(2);
    m.befriend(3);
    m.g.share("Holiday Photos 2024.zip".into(), [7; 32], 1234)
        .unwrap();
    m.g.share("holiday video.mp4".into(), [8; 32], 99).unwrap();
    let out = m.recv(id(2), query(42, &["PHOTOS", "holi"], 3));
    let own = m.own_record();
    let answers = to(&out, id(2));
    let [
        Message::Hits {
            id: qid,
            responder,
            hits,
            signature,
        },
    ] = answers.as_slice()
    else {
        panic!("{out:?}")
    };
    assert_eq!(*qid, 42);
    assert_eq!(*responder, own);
    assert_eq!(
        *hits,
        vec![Hit {
            name: "Holiday Photos 2024.zip".into(),
            content: [7; 32],
            size: 1234
        }]
    );
    assert!(super::message::verify_hits(&id(1), 42, hits, signature));
    assert_eq!(to(&out, id(3)), vec![query(42, &["PHOTOS", "holi"], 2)]);
    assert_eq!(m.g.stats().hits_sent, 1);
    assert_eq!(m.g.stats().queries_forwarded, 1);

    // No match, ttl 1: nothing is sent at all.
    let out = m.recv(id(2), query(43, &["nothing"], 1));
    assert!(out.is_empty());
    // Empty words match nothing.
    let out = m.recv(id(2), query(44, &[""], 1));
    assert!(out.is_empty());
    // Unshared names are not found.
    assert!(m.g.unshare(&[7; 32]));
    assert!(!m.g.unshare(&[7; 32]));
    let out = m.recv(id(2), query(45, &["photos"], 1));
    assert!(out.is_empty());
}

#[test]
fn duplicate_query_is_ignored() {
    let mut m = Machine::new(1, Config::default());
    m.befriend(2);
    m.befriend(3);
    let out = m.recv(id(2), query(7, &["foo"], 3));
    assert_eq!(out, vec![(id(3), query(7, &["foo"], 2))]);
    assert!(m.recv(id(3), query(7, &["foo"], 3)).is_empty());
    assert!(m.recv(id(2), query(7, &["foo"], 3)).is_empty());
    assert_eq!(m.g.stats().queries_duplicate, 2);
    assert_eq!(m.g.stats().queries_received, 1);
    // Once the id expires it is a new query again.
    m.tick(m.now + Duration::from_secs(11));
    m.recv(id(2), query(1, &["foo"], 1));
    assert_eq!(m.recv(id(3), query(7, &["foo"], 2)).len(), 1);
}

#[test]
fn query_from_a_non_neighbor_is_ignored() {
    let mut m = Machine::new(1, Config::default());
    m.befriend(2);
    m.ready(id(3), Direction::Inbound);
    m.g.share("foo".into(), [1; 32], 1).unwrap();
    assert!(m.recv(id(3), query(7, &["foo"], 3)).is_empty());
    assert_eq!(m.g.stats().ignored, 1);
}

#[test]
fn hits_are_routed_back_along_the_reverse_path() {
    let mut m = Machine::new(1, Config::default());
    m.befriend(2);
    m.befriend(3);
    m.recv(id(2), query(7, &["foo"], 3));
    let h = hits(7, 9, m.now, &["foo.txt", "foobar"]);
    let out = m.recv(id(3), h.clone());
    assert_eq!(out, vec![(id(2), h)]);
    assert_eq!(m.g.stats().hits_received, 1);
    assert_eq!(m.g.stats().hits_forwarded, 1);
    // Hits for an id we never saw are dropped.
    assert!(m.recv(id(3), hits(8, 9, m.now, &["foo"])).is_empty());
    assert_eq!(m.g.stats().hits_unknown, 1);
    // The way back is gone: dropped.
    m.gone(id(2));
    assert!(m.recv(id(3), hits(7, 10, m.now, &["foo"])).is_empty());
    assert_eq!(m.g.stats().hits_dropped, 1);
    assert!(
        m.take_events()
            .iter()
            .all(|e| !matches!(e, Event::SearchHits { .. })),
        "hits for others are not reported"
    );
}

#[test]
fn forged_hit_signatures_are_dropped() {
    let mut m = Machine::new(1, Config::default());
    m.befriend(2);
    m.befriend(3);
    m.recv(id(2), query(7, &["foo"], 3));
    let now = m.now;
    // Signed by someone else than the responder.
    let Message::Hits {
        id: qid,
        hits: list,
        ..
    } = hits(7, 9, now, &["foo"])
    else {
        unreachable!()
    };
    let forged = Message::Hits {
        id: qid,
        responder: record(9, now),
        signature: sign_hits(&key(8), qid, &list),
        hits: list.clone(),
    };
    assert!(m.recv(id(3), forged).is_empty());
    // Hits altered after signing.
    let Message::Hits {
        responder,
        signature,
        mut hits,
        ..
    } = hits(7, 9, now, &["foo"])
    else {
        unreachable!()
    };
    hits[0].size += 1;
    let altered = Message::Hits {
        id: 7,
        responder,
        hits,
        signature,
    };
    assert!(m.recv(id(3), altered).is_empty());
    // A signature moved to another query id.
    let moved = Message::Hits {
        id: 7,
        responder: record(9, now),
        signature: sign_hits(&key(9), 8, &list),
        hits: list.clone(),
    };
    assert!(m.recv(id(3), moved).is_empty());
    // An invalid responder record.
    let expired = Message::Hits {
        id: 7,
        responder: record_until(9, 1, now.as_secs()),
        signature: sign_hits(&key(9), 7, &list),
        hits: list,
    };
    assert!(m.recv(id(3), expired).is_empty());
    // An all-zero signature.
    let zero = Message::Hits {
        id: 7,
        responder: record(9, now),
        signature: Signature([0; 64]),
        hits: vec![],
    };
    assert!(m.recv(id(3), zero).is_empty());
    assert_eq!(m.g.stats().hits_invalid, 5);
    assert_eq!(m.g.stats().hits_forwarded, 0);
}

#[test]
fn own_search_reports_hits_up_to_the_cap_then_finishes() {
    let config = Config {
        max_hits_per_query: 3,
        ..Config::default()
    };
    let mut m = Machine::new(1, config);
    for seed in 2..8 {
        m.befriend(seed);
    }
    let (qid, out) = m.search(&["Foo", "bar"]);
    let qid = qid.unwrap();
    assert_eq!(out.len(), 4, "search_fanout neighbors");
    for (_, msg) in &out {
        assert_eq!(*msg, query(qid, &["foo", "bar"], 4));
    }
    assert_eq!(m.g.stats().queries_sent, 1);
    // Our own query coming back is a duplicate.
    assert!(m.recv(id(2), query(qid, &["foo", "bar"], 2)).is_empty());

    let now = m.now;
    m.recv(id(2), hits(qid, 20, now, &["foo bar 1", "foo bar 2"]));
    m.recv(id(3), hits(qid, 21, now, &["foo bar 3", "foo bar 4"]));
    m.recv(id(4), hits(qid, 22, now, &["foo bar 5"]));
    let events = m.take_events();
    assert_eq!(events.len(), 2, "{events:?}");
    let Event::SearchHits {
        query,
        responder,
        hits: first,
    } = &events[0]
    else {
        panic!()
    };
    assert_eq!((*query, *responder.peer(), first.len()), (qid, id(20), 2));
    let Event::SearchHits { hits: second, .. } = &events[1] else {
        panic!()
    };
    assert_eq!(second.len(), 1, "capped at max_hits_per_query");
    assert_eq!(m.g.stats().hits_dropped, 1);

    assert!(
        m.g.poll_timeout()
            .is_some_and(|t| t <= now + Duration::from_secs(10))
    );
    m.tick(now + Duration::from_secs(10));
    assert_eq!(
        m.take_events(),
        vec![Event::SearchFinished {
            query: qid,
            hits: 3
        }]
    );
    // Hits after the end are unknown.
    m.recv(id(5), hits(qid, 23, m.now, &["foo bar"]));
    assert_eq!(m.g.stats().hits_unknown, 1);
}

#[test]
fn oldest_query_is_forgotten_when_the_table_is_full() {
    let config = Config {
        max_queries: 2,
        ..Config::default()
    };
    let mut m = Machine::new(1, config);
    m.befriend(2);
    let (own, _) = m.search(&["a"]);
    let own = own.unwrap();
    m.recv(id(2), query(100, &["b"], 1));
    m.recv(id(2), query(101, &["c"], 1));
    // Our search was the oldest: it ends early.
    assert_eq!(
        m.take_events(),
        vec![Event::SearchFinished {
            query: own,
            hits: 0
        }]
    );
    // 100 is still remembered, so it is a duplicate; then 102 pushes it out.
    m.recv(id(2), query(100, &["b"], 1));
    assert_eq!(m.g.stats().queries_duplicate, 1);
    m.recv(id(2), query(102, &["d"], 1));
    m.recv(id(2), query(100, &["b"], 1));
    assert_eq!(m.g.stats().queries_duplicate, 1);
    assert_eq!(m.g.stats().queries_received, 4);
}

#[test]
fn queries_beyond_the_rate_are_ignored() {
    let config = Config {
        query_rate: 10,
        ..Config::default()
    };
    let mut m = Machine::new(1, config);
    m.befriend(2);
    for qid in 0..25 {
        m.recv(id(2), query(qid, &["x"], 1));
    }
    assert_eq!(
        m.g.stats().queries_received,
        20,
        "a burst of twice the rate"
    );
    assert_eq!(m.g.stats().queries_rate_limited, 5);
    // Half a second refills five.
    m.now = m.now + Duration::from_millis(500);
    for qid in 100..110 {
        m.recv(id(2), query(qid, &["x"], 1));
    }
    assert_eq!(m.g.stats().queries_received, 25);
    assert_eq!(m.g.stats().queries_rate_limited, 10);
    // Another neighbor has its own allowance.
    m.befriend(3);
    m.recv(id(3), query(200, &["x"], 1));
    assert_eq!(m.g.stats().queries_received, 26);
}

#[test]
fn search_and_share_check_their_arguments() {
    let mut m = Machine::new(1, Config::default());
    assert_eq!(m.search(&["x"]).0, Err(SearchError::NoPeers));
    m.befriend(2);
    assert_eq!(m.search(&[]).0, Err(SearchError::NoWords));
    assert_eq!(m.search(&["a", ""]).0, Err(SearchError::EmptyWord));
    let many = ["w"; MAX_WORDS + 1];
    assert_eq!(
        m.search(&many).0,
        Err(SearchError::TooManyWords {
            count: MAX_WORDS + 1,
            max: MAX_WORDS
        })
    );
    let long = "x".repeat(MAX_WORD_LEN + 1);
    assert!(matches!(
        m.search(&[&long]).0,
        Err(SearchError::WordTooLong { .. })
    ));
    assert!(m.search(&["x".repeat(MAX_WORD_LEN).as_str()]).0.is_ok());

    let mut g = Gossip::new(
        key(1),
        D,
        Config {
            max_shared: 2,
            ..Config::default()
        },
    );
    assert_eq!(
        g.share(String::new(), [0; 32], 0),
        Err(ShareError::EmptyName)
    );
    assert!(matches!(
        g.share("n".repeat(MAX_HIT_NAME_LEN + 1), [0; 32], 0),
        Err(ShareError::NameTooLong { .. })
    ));
    assert_eq!(
        g.share("a\nb".into(), [0; 32], 0),
        Err(ShareError::ControlCharacter)
    );
    g.share("n".repeat(MAX_HIT_NAME_LEN), [1; 32], 0).unwrap();
    g.share("b".into(), [2; 32], 0).unwrap();
    assert_eq!(g.share("c".into(), [3; 32], 0), Err(ShareError::Full(2)));
    // Renaming a shared content does not need room.
    g.share("b2".into(), [2; 32], 0).unwrap();
}

// ---------------------------------------------------------------------------------------------
// Messages

#[test]
fn validate_enforces_the_bounds() {
    let now = T0;
    let r = record(2, now);
    let bounds = |m: &Message| match m.validate() {
        Err(WireError::Bounds { field, .. }) => Some(field),
        Ok(()) => None,
        Err(e) => panic!("{e}"),
    };
    let records = |n: usize| vec![r.clone(); n];
    let shuffle = |n, ttl| Message::Shuffle {
        origin: r.clone(),
        records: records(n),
        ttl,
    };
    assert_eq!(bounds(&shuffle(MAX_SHUFFLE_RECORDS, MAX_TTL)), None);
    assert_eq!(
        bounds(&shuffle(MAX_SHUFFLE_RECORDS + 1, 1)),
        Some("gossip.records")
    );
    assert_eq!(bounds(&shuffle(1, MAX_TTL + 1)), Some("gossip.ttl"));
    let reply = |n| Message::ShuffleReply {
        records: records(n),
    };
    assert_eq!(bounds(&reply(MAX_SHUFFLE_RECORDS)), None);
    assert_eq!(
        bounds(&reply(MAX_SHUFFLE_RECORDS + 1)),
        Some("gossip.records")
    );
    let fj = |ttl| Message::ForwardJoin {
        record: r.clone(),
        ttl,
    };
    assert_eq!(bounds(&fj(MAX_TTL)), None);
    assert_eq!(bounds(&fj(MAX_TTL + 1)), Some("gossip.ttl"));
    let q = |n: usize, len: usize, ttl| Message::Query {
        id: 1,
        words: vec!["w".repeat(len); n],
        ttl,
    };
    assert_eq!(bounds(&q(MAX_WORDS, MAX_WORD_LEN, MAX_TTL)), None);
    assert_eq!(bounds(&q(MAX_WORDS + 1, 1, 1)), Some("gossip.words"));
    assert_eq!(bounds(&q(1, MAX_WORD_LEN + 1, 1)), Some("gossip.word"));
    assert_eq!(bounds(&q(1, 1, MAX_TTL + 1)), Some("gossip.ttl"));
    let h = |n: usize, len: usize| Message::Hits {
        id: 1,
        responder: r.clone(),
        hits: vec![
            Hit {
                name: "n".repeat(len),
                content: [0; 32],
                size: 0
            };
            n
        ],
        signature: Signature([0; 64]),
    };
    assert_eq!(bounds(&h(MAX_HITS, MAX_HIT_NAME_LEN)), None);
    assert_eq!(bounds(&h(MAX_HITS + 1, 1)), Some("gossip.hits"));
    assert_eq!(bounds(&h(1, MAX_HIT_NAME_LEN + 1)), Some("gossip.hit.name"));
    // Records' own lists are bounded as in PEX.
    let k = key(3);
    let fat = PeerRecord::new(
        &k,
        stamp(3),
        (0..9)
            .map(|i| SocketAddr::from(([10, 0, 0, i], 1)))
            .collect(),
        Vec::new(),
        1,
        now.as_secs() + 60,
    );
    assert_eq!(
        bounds(&Message::Join {
            record: fat.clone()
        }),
        Some("gossip.record.addrs")
    );
    assert_eq!(
        bounds(&Message::Neighbor {
            high_priority: false,
            record: Some(fat)
        }),
        Some("gossip.record.addrs")
    );
    assert_eq!(bounds(&Message::Disconnect), None);
}

#[test]
fn messages_round_trip_through_the_wire_format() {
    let now = T0;
    let all = vec![
        Message::Join {
            record: record(2, now),
        },
        Message::ForwardJoin {
            record: record(2, now),
            ttl: 3,
        },
        Message::Neighbor {
            high_priority: true,
            record: None,
        },
        Message::NeighborReply { accepted: true },
        Message::Disconnect,
        Message::Shuffle {
            origin: record(2, now),
            records: vec![record(3, now)],
            ttl: 6,
        },
        Message::ShuffleReply { records: vec![] },
        query(5, &["a", "b"], 4),
        hits(5, 9, now, &["a b"]),
    ];
    let mut kinds = BTreeSet::new();
    for m in all {
        let wire_msg = wire::Message::from(m.clone());
        assert!(wire_msg.validate().is_ok());
        assert!(kinds.insert(wire_msg.kind()));
        assert!(wire_msg.kind().starts_with("gossip-"));
        let frame = wire::encode_frame(&wire_msg).unwrap();
        let back = wire::decode_frame(&frame).unwrap();
        assert_eq!(back, wire_msg);
    }
}

// ---------------------------------------------------------------------------------------------
// A network of machines

/// Machines wired by an in-test pump: messages are delivered at once, in the order sent, and
/// every dial succeeds at once (both sides become ready).
struct Net {
    nodes: BTreeMap<PeerId, Machine>,
    queue: VecDeque<(PeerId, PeerId, Message)>,
    dials: VecDeque<(PeerId, PeerId)>,
    /// Crashed nodes: dials to them fail, messages to them are lost.
    dead: BTreeSet<PeerId>,
    now: Instant,
    delivered: u64,
}

impl Net {
    fn new(seeds: impl IntoIterator<Item = u8>, config: &Config) -> Self {
        let nodes = seeds
            .into_iter()
            .map(|s| {
                let m = Machine::new(s, config.clone());
                (m.id(), m)
            })
            .collect();
        Self {
            nodes,
            queue: VecDeque::new(),
            dials: VecDeque::new(),
            dead: BTreeSet::new(),
            now: T0,
            delivered: 0,
        }
    }

    fn node(&mut self, peer: PeerId) -> &mut Machine {
        self.nodes.get_mut(&peer).expect("a node of the net")
    }

    fn collect(&mut self, from: PeerId, out: Vec<(PeerId, Message)>) {
        for (to, msg) in out {
            self.queue.push_back((from, to, msg));
        }
        let m = self.node(from);
        let dials: Vec<PeerId> = m
            .events
            .iter()
            .filter_map(|e| match e {
                node::Event::Dial { peer, .. } => Some(*peer),
                _ => None,
            })
            .collect();
        m.events.retain(|e| !matches!(e, node::Event::Dial { .. }));
        for peer in dials {
            self.dials.push_back((from, peer));
        }
    }

    /// `a` connects to `b`: both become ready, `a`'s waiting messages go out.
    fn connect(&mut self, a: PeerId, b: PeerId) {
        let now = self.now;
        let ma = self.node(a);
        ma.now = now;
        let out = ma.ready(b, Direction::Outbound);
        self.collect(a, out);
        let mb = self.node(b);
        mb.now = now;
        let out = mb.ready(a, Direction::Inbound);
        self.collect(b, out);
    }

    /// Delivers everything until the net is quiet.
    fn run(&mut self) {
        loop {
            if let Some((a, b)) = self.dials.pop_front() {
                if self.dead.contains(&b) {
                    let out = self.node(a).unreachable(b);
                    self.collect(a, out);
                } else {
                    self.connect(a, b);
                }
                continue;
            }
            let Some((from, to, msg)) = self.queue.pop_front() else {
                break;
            };
            if self.dead.contains(&to) {
                continue;
            }
            self.delivered += 1;
            assert!(self.delivered < 10_000_000, "the net does not settle");
            let now = self.now;
            let m = self.node(to);
            m.now = now;
            let out = m.recv(from, msg);
            self.collect(to, out);
        }
    }

    /// Runs timers in order until `until`.
    fn advance(&mut self, until: Instant) {
        loop {
            self.run();
            let next = self.nodes.values().filter_map(|m| m.g.poll_timeout()).min();
            match next {
                Some(t) if t <= until => {
                    self.now = self.now.max(t);
                    let due: Vec<PeerId> = self
                        .nodes
                        .iter()
                        .filter(|(_, m)| m.g.poll_timeout().is_some_and(|t| t <= self.now))
                        .map(|(p, _)| *p)
                        .collect();
                    for p in due {
                        let now = self.now;
                        let out = self.node(p).tick(now);
                        self.collect(p, out);
                    }
                }
                _ => break,
            }
        }
        self.now = until;
    }

    fn active(&self, p: &PeerId) -> BTreeSet<PeerId> {
        self.nodes[p].g.active_view().copied().collect()
    }

    /// Hop counts from `from` over active views.
    fn distances(&self, from: PeerId) -> BTreeMap<PeerId, usize> {
        let mut dist = BTreeMap::from([(from, 0)]);
        let mut queue = VecDeque::from([from]);
        while let Some(p) = queue.pop_front() {
            let d = dist[&p];
            for q in self.active(&p) {
                if let Entry::Vacant(e) = dist.entry(q) {
                    e.insert(d + 1);
                    queue.push_back(q);
                }
            }
        }
        dist
    }

    fn check_overlay(&self, config: &Config) {
        for (p, m) in &self.nodes {
            let active = self.active(p);
            assert!(!active.is_empty(), "{p:?} has no neighbor");
            assert!(active.len() <= config.active_size);
            assert!(!active.contains(p));
            assert!(m.g.passive_view().count() <= config.passive_size);
            assert!(m.g.passive_view().all(|r| r.peer() != p));
            for q in &active {
                assert!(
                    self.active(q).contains(p),
                    "{p:?} has {q:?} as a neighbor, not the other way round"
                );
            }
        }
        assert_eq!(
            self.distances(*self.nodes.keys().next().expect("nodes"))
                .len(),
            self.nodes.len(),
            "the overlay is connected"
        );
    }
}

#[test]
fn thirty_nodes_joining_through_one_form_a_symmetric_connected_searchable_overlay() {
    // A small active view, so that the overlay has paths of three hops and more, and a fanout
    // of the whole view, so that a search floods every path within its ttl.
    let config = Config {
        active_size: 4,
        passive_size: 16,
        search_fanout: 4,
        search_ttl: 8,
        ..Config::default()
    };
    let seeds = 1..=30u8;
    let mut net = Net::new(seeds.clone(), &config);
    let contact = id(1);
    for seed in seeds.skip(1) {
        net.connect(id(seed), contact);
        net.run();
        let t = net.now + Duration::from_millis(200);
        net.advance(t);
    }
    net.advance(net.now + Duration::from_secs(300));
    net.check_overlay(&config);
    let degrees: Vec<usize> = net.nodes.keys().map(|p| net.active(p).len()).collect();
    let total: usize = degrees.iter().sum();
    assert!(
        total >= 2 * net.nodes.len(),
        "average degree at least 2: {degrees:?}"
    );
    assert!(
        net.nodes.values().all(|m| m.g.passive_view().count() > 0),
        "shuffles fill passive views"
    );
    assert!(
        net.nodes
            .values()
            .map(|m| m.g.stats().shuffles_received)
            .sum::<u64>()
            > 0
    );

    // A search from one node finds a name shared by the farthest node (three hops or more: with
    // at most four neighbors each, only 17 nodes are within two hops).
    let searcher = id(2);
    let dist = net.distances(searcher);
    let (&far, &hops) = dist.iter().max_by_key(|(p, d)| (**d, **p)).expect("nodes");
    assert!(hops >= 3, "{hops} hops");
    assert!(hops <= usize::from(config.search_ttl));
    net.node(far)
        .g
        .share("Holiday Photos 2024.zip".into(), [42; 32], 1 << 20)
        .unwrap();
    net.node(searcher).take_events();
    let (qid, out) = net.node(searcher).search(&["holiday", "PHOTOS"]);
    let qid = qid.unwrap();
    net.collect(searcher, out);
    net.run();
    let found: Vec<Event> = net
        .node(searcher)
        .take_events()
        .into_iter()
        .filter(|e| matches!(e, Event::SearchHits { .. }))
        .collect();
    assert_eq!(found.len(), 1, "{found:?}");
    let Event::SearchHits {
        query,
        responder,
        hits,
    } = &found[0]
    else {
        unreachable!()
    };
    assert_eq!(*query, qid);
    assert_eq!(*responder.peer(), far);
    assert_eq!(hits[0].content, [42; 32]);
    let forwarded: u64 = net.nodes.values().map(|m| m.g.stats().hits_forwarded).sum();
    assert_eq!(forwarded as usize, hops - 1, "back along the query's path");
    net.advance(net.now + Duration::from_secs(11));
    assert!(
        net.node(searcher)
            .take_events()
            .contains(&Event::SearchFinished {
                query: qid,
                hits: 1
            })
    );
    // The overlay is still sound after all that.
    net.check_overlay(&config);
}

#[test]
fn overlay_heals_after_nodes_fail() {
    let config = Config {
        active_size: 4,
        passive_size: 16,
        ..Config::default()
    };
    let mut net = Net::new(1..=20u8, &config);
    for seed in 2..=20u8 {
        net.connect(id(seed), id(1));
        net.run();
    }
    net.advance(net.now + Duration::from_secs(120));
    net.check_overlay(&config);
    // Five nodes crash: their connections close at every peer.
    let dead: Vec<PeerId> = (16..=20u8).map(id).collect();
    for d in &dead {
        net.nodes.remove(d);
        net.dead.insert(*d);
    }
    let alive: Vec<PeerId> = net.nodes.keys().copied().collect();
    for p in alive {
        for d in &dead {
            if net.node(p).h.with(T0, |cx| cx.is_ready(d)) {
                let out = net.node(p).gone(*d);
                net.collect(p, out);
            }
        }
    }
    net.advance(net.now + Duration::from_secs(60));
    net.check_overlay(&config);
    for m in net.nodes.values() {
        assert!(m.g.active_view().all(|p| !dead.contains(p)));
    }
}

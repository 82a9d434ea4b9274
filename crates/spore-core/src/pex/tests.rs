use std::net::SocketAddr;
use std::time::Duration;

use super::{Config, Event as PexEvent, MAX_RECORDS, Message, Pex};
use crate::identity::{Keypair, PeerId};
use crate::kad::record::{PeerRecord, RecordLimits};
use crate::node::tests_support::{Harness, Pair, test_config, test_node};
use crate::node::{self, Event, PeerEvent, Protocol, Transmit};
use crate::pow::{Difficulty, Stamp};
use crate::time::Instant;
use crate::wire::{self, WireError};

/// The difficulty of `test_config`.
const D: Difficulty = Difficulty(4);
const LATENCY: Duration = Duration::from_millis(10);
const MINUTE: Duration = Duration::from_secs(60);

fn key(seed: u8) -> Keypair {
    Keypair::from_secret_bytes([seed; 32])
}

fn id(seed: u8) -> PeerId {
    key(seed).peer_id()
}

fn addr(seed: u8) -> SocketAddr {
    SocketAddr::from(([10, 1, 0, seed], 4000))
}

fn secs(s: u64) -> Instant {
    Instant::from_micros(s * 1_000_000)
}

/// A valid record of peer `seed`, at `addr(seed)`, expiring an hour after `now`.
fn record(seed: u8, seq: u64, now: Instant) -> PeerRecord {
    record_until(seed, seq, now.as_secs() + 3600)
}

fn record_until(seed: u8, seq: u64, expires: u64) -> PeerRecord {
    let k = key(seed);
    let stamp = Stamp::mint(&k.peer_id(), D);
    PeerRecord::new(&k, stamp, vec![addr(seed)], Vec::new(), seq, expires)
}

/// Record limits at the test difficulty.
fn limits() -> RecordLimits {
    RecordLimits {
        difficulty: D,
        ..RecordLimits::default()
    }
}

fn node_config(addr: &str) -> node::Config {
    node::Config {
        listen_addrs: vec![addr.parse().unwrap()],
        ..test_config()
    }
}

/// Two nodes that announce addresses (so they have records to exchange).
fn pair() -> Pair {
    pair_with(|_| {})
}

fn pair_with(f: impl Fn(&mut node::Config)) -> Pair {
    let mut a = node_config("10.0.0.1:1000");
    let mut b = node_config("10.0.0.2:2000");
    f(&mut a);
    f(&mut b);
    Pair::with_nodes(test_node(1, a), test_node(2, b), LATENCY)
}

fn discovered(events: &[Event]) -> Vec<(PeerId, Vec<PeerRecord>)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Pex(PexEvent::Discovered { from, records }) => Some((*from, records.clone())),
            _ => None,
        })
        .collect()
}

/// A PEX state machine for peer `seed` (with an address), driven by a [`Harness`].
struct Machine {
    pex: Pex,
    h: Harness,
    /// The latest input's time: like a node, the machine never sees time run backwards.
    now: Instant,
}

impl Machine {
    fn new(seed: u8, config: Config) -> Self {
        let k = key(seed);
        let stamp = Stamp::mint(&k.peer_id(), D);
        let mut pex = Pex::new(k, stamp, D, config);
        pex.set_listen_addrs(vec![addr(seed)]);
        Self {
            pex,
            h: Harness::new(),
            now: Instant::ZERO,
        }
    }

    fn ready(&mut self, peer: PeerId, now: Instant) -> Vec<Transmit> {
        self.now = self.now.max(now);
        let event = self.h.ready(peer, now);
        self.h
            .with(now, |cx| self.pex.handle_peer_event(cx, &event));
        self.h.transmits()
    }

    fn gone(&mut self, peer: PeerId, now: Instant) {
        self.now = self.now.max(now);
        let event = PeerEvent::Gone { peer };
        self.h
            .with(now, |cx| self.pex.handle_peer_event(cx, &event));
    }

    /// Delivers `records` from `from`; returns what was discovered.
    fn receive(&mut self, from: PeerId, records: Vec<PeerRecord>, now: Instant) -> Vec<PeerRecord> {
        self.now = self.now.max(now);
        self.h.with(now, |cx| {
            self.pex.handle_message(cx, from, Message::Records(records))
        });
        let found = discovered(&self.h.events());
        assert!(found.len() <= 1);
        found
            .into_iter()
            .inspect(|(f, _)| assert_eq!(*f, from))
            .flat_map(|(_, r)| r)
            .collect()
    }

    /// Fires every timeout up to `now`; returns what was sent.
    fn advance(&mut self, now: Instant) -> Vec<Transmit> {
        while let Some(t) = self.pex.poll_timeout().filter(|t| *t <= now) {
            self.now = self.now.max(t);
            let at = self.now;
            self.h.with(at, |cx| self.pex.handle_timeout(cx));
        }
        self.now = self.now.max(now);
        self.h.transmits()
    }

    fn cached(&self) -> Vec<PeerId> {
        self.pex.records().map(|r| *r.peer()).collect()
    }
}

fn records_of(t: &Transmit) -> &[PeerRecord] {
    match &t.message {
        wire::Message::Pex(Message::Records(r)) => r,
        other => panic!("not a pex message: {other:?}"),
    }
}

fn peers_in(t: &Transmit) -> Vec<PeerId> {
    records_of(t).iter().map(|r| *r.peer()).collect()
}

// ---- two real nodes ------------------------------------------------------------------------

#[test]
fn peers_exchange_their_own_records_on_handshake() {
    let mut pair = pair();
    pair.handshake();
    pair.run_for(LATENCY);
    let (a, b) = (pair.a.peer_id(), pair.b.peer_id());

    let at_a = discovered(&pair.a_events);
    assert_eq!(at_a.len(), 1, "{:?}", pair.a_events);
    assert_eq!(at_a[0].0, b);
    assert_eq!(at_a[0].1.len(), 1);
    let rec_b = &at_a[0].1[0];
    assert_eq!(*rec_b.peer(), b);
    assert_eq!(rec_b.addrs(), ["10.0.0.2:2000".parse().unwrap()]);
    assert!(rec_b.relays().is_empty());
    assert_eq!(pair.a.pex().record(&b), Some(rec_b));

    let at_b = discovered(&pair.b_events);
    assert_eq!(at_b.len(), 1, "{:?}", pair.b_events);
    assert_eq!(at_b[0].0, a);
    assert_eq!(at_b[0].1[0].addrs(), ["10.0.0.1:1000".parse().unwrap()]);
    assert_eq!(pair.b.pex().recent(10), at_b[0].1);

    for node in [&pair.a, &pair.b] {
        let s = node.pex().stats();
        assert_eq!((s.sent, s.received, s.learned), (1, 1, 1), "{s:?}");
        assert_eq!((s.invalid_records, s.rate_limited), (0, 0));
    }
}

#[test]
fn a_settled_pair_goes_quiet() {
    let mut pair = pair();
    pair.handshake();
    pair.run_for(Duration::from_secs(600));
    // Nothing new after the first exchange, so no more messages, and one discovery each.
    for node in [&pair.a, &pair.b] {
        let s = node.pex().stats();
        assert_eq!((s.sent, s.received, s.rate_limited), (1, 1, 0), "{s:?}");
    }
    assert_eq!(discovered(&pair.a_events).len(), 1);
    assert_eq!(discovered(&pair.b_events).len(), 1);
}

#[test]
fn own_record_is_re_signed_once_a_quarter_of_its_lifetime_has_passed() {
    let mut pair = pair_with(|c| c.pex.record_ttl = Duration::from_secs(240));
    pair.handshake();
    pair.run_for(LATENCY);
    let first = pair.b.pex().record(&pair.a.peer_id()).unwrap().clone();
    assert_eq!(first.expires(), 240);
    // The periodic exchange at 60 s carries the re-signed record.
    pair.run_for(MINUTE);
    assert_eq!(pair.a.pex().stats().sent, 2);
    assert_eq!(pair.b.pex().stats().received, 2);
    let second = pair.b.pex().record(&pair.a.peer_id()).unwrap().clone();
    assert!(second.supersedes(&first));
    assert!(second.seq() > first.seq());
    assert_eq!(second.expires(), 60 + 240);
    let found = discovered(&pair.b_events);
    assert_eq!(found.len(), 2, "the re-signed record is news");
    assert_eq!(found[1].1, [second]);
}

#[test]
fn an_exchange_sooner_than_half_the_interval_is_ignored_and_counted() {
    let mut pair = pair();
    pair.handshake();
    pair.run_for(LATENCY);
    let a = pair.a.peer_id();
    let extra = record(9, 1, pair.now);

    pair.inject_to_b(wire::Message::Pex(Message::Records(vec![extra.clone()])));
    pair.run_for(Duration::from_secs(29));
    pair.inject_to_b(wire::Message::Pex(Message::Records(vec![extra.clone()])));
    let s = pair.b.pex().stats();
    assert_eq!((s.received, s.rate_limited), (1, 2), "{s:?}");
    assert!(pair.b.pex().record(extra.peer()).is_none());

    // Half an interval after the last accepted exchange, the peer may send again.
    pair.run_for(Duration::from_secs(1));
    pair.inject_to_b(wire::Message::Pex(Message::Records(vec![extra.clone()])));
    assert_eq!(pair.b.pex().stats().received, 2);
    assert_eq!(pair.b.pex().record(extra.peer()), Some(&extra));
    assert_eq!(discovered(&pair.b_events).last(), Some(&(a, vec![extra])));
}

#[test]
fn disabled_pex_sends_nothing_and_ignores_exchanges() {
    let mut pair = pair_with(|c| c.pex.enabled = false);
    pair.handshake();
    pair.inject_to_b(wire::Message::Pex(Message::Records(vec![record(
        9, 1, pair.now,
    )])));
    pair.run_for(Duration::from_secs(300));
    for node in [&pair.a, &pair.b] {
        assert_eq!(node.pex().stats(), super::Stats::default());
        assert_eq!(node.pex().records().count(), 0);
        assert_eq!(node.pex().poll_timeout(), None);
    }
}

#[test]
fn nodes_without_addresses_send_nothing_until_they_have_one() {
    let mut pair = Pair::new(LATENCY);
    pair.handshake();
    pair.run_for(LATENCY);
    assert_eq!(pair.a.pex().stats().sent, 0);
    pair.a
        .set_listen_addrs(vec!["10.0.0.1:1000".parse().unwrap()]);
    pair.run_for(MINUTE);
    assert_eq!(pair.a.pex().stats().sent, 1);
    let rec = pair.b.pex().record(&pair.a.peer_id()).unwrap();
    assert_eq!(rec.addrs(), ["10.0.0.1:1000".parse().unwrap()]);
}

// ---- the state machine ---------------------------------------------------------------------

#[test]
fn invalid_records_are_rejected_and_never_cached() {
    let now = secs(1_000);
    let mut m = Machine::new(10, Config::default());
    m.ready(id(1), now);

    // Forged: one bit of the signature flipped.
    let mut bytes = postcard::to_allocvec(&record(2, 1, now)).unwrap();
    *bytes.last_mut().unwrap() ^= 1;
    let forged: PeerRecord = postcard::from_bytes(&bytes).unwrap();
    // Expired, and expiring beyond the allowed 48 h.
    let expired = record_until(3, 1, now.as_secs());
    let eternal = record_until(4, 1, now.as_secs() + 49 * 3600);
    // A stamp short of the difficulty.
    let k = key(5);
    let weak = (0..)
        .map(|nonce| Stamp { nonce })
        .find(|s| s.work(&k.peer_id()) < u32::from(D.0))
        .unwrap();
    let weak = PeerRecord::new(&k, weak, vec![addr(5)], Vec::new(), 1, now.as_secs() + 60);
    // Too many addresses (a peer would not get this past the wire bounds).
    let fat = PeerRecord::new(
        &key(6),
        Stamp::mint(&id(6), D),
        (0..9).map(|i| addr(i + 100)).collect(),
        Vec::new(),
        1,
        now.as_secs() + 60,
    );
    let good = record(7, 1, now);

    let found = m.receive(
        id(1),
        vec![forged, expired, eternal, weak, fat, good.clone()],
        now,
    );
    assert_eq!(found, [good]);
    assert_eq!(m.cached(), [id(7)]);
    let s = m.pex.stats();
    assert_eq!((s.invalid_records, s.learned), (5, 1), "{s:?}");
}

#[test]
fn a_record_learned_from_one_peer_is_offered_to_another() {
    let t0 = secs(1_000);
    let mut m = Machine::new(10, Config::default());
    let sent = m.ready(id(1), t0);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].to, id(1));
    assert_eq!(
        peers_in(&sent[0]),
        [id(10)],
        "our own record, nothing else yet"
    );
    assert_eq!(records_of(&sent[0])[0].addrs(), [addr(10)]);

    let (rec_1, rec_3) = (record(1, 1, t0), record(3, 1, t0));
    let found = m.receive(id(1), vec![rec_1.clone(), rec_3.clone()], t0);
    assert_eq!(found, [rec_1.clone(), rec_3.clone()]);

    // Peer 2 connects: our record first, then the most recently seen: 1 (which was in touch
    // after its records were stored), then 3. All of them verify.
    let sent = m.ready(id(2), t0 + Duration::from_secs(5));
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].to, id(2));
    assert_eq!(peers_in(&sent[0]), [id(10), id(1), id(3)]);
    for r in records_of(&sent[0]) {
        r.verify(t0, &limits()).unwrap();
    }

    // Peer 2 sends its record and 1's (the same version): 2 is news, 1 is not, and hearing of
    // 1 from someone else does not count as seeing it.
    let rec_2 = record(2, 1, t0);
    let found = m.receive(
        id(2),
        vec![rec_2.clone(), rec_1.clone()],
        t0 + Duration::from_secs(6),
    );
    assert_eq!(found, [rec_2]);
    assert_eq!(m.cached(), [id(2), id(1), id(3)]);
    // Peer 1 sends its own record again: that is a sighting.
    let found = m.receive(id(1), vec![rec_1], t0 + Duration::from_secs(40));
    assert!(found.is_empty());
    assert_eq!(m.cached(), [id(1), id(2), id(3)]);

    // New records are passed on in first exchanges only: nothing is scheduled for 1 or 2, and
    // peer 5, connecting, gets everything but 5's own record.
    assert!(m.advance(t0 + Duration::from_secs(200)).is_empty());
    let sent = m.ready(id(5), t0 + Duration::from_secs(200));
    assert_eq!(peers_in(&sent[0]), [id(10), id(1), id(2), id(3)]);

    // An update from its own peer reaches every other ready peer at its next exchange: 1 at
    // once (its last exchange was long ago), 5 a minute after its first; 2 made it.
    let rec_2b = record(2, 2, t0);
    let found = m.receive(id(2), vec![rec_2b.clone()], t0 + Duration::from_secs(201));
    assert_eq!(found, std::slice::from_ref(&rec_2b));
    let sent = m.advance(t0 + Duration::from_secs(300));
    let to: Vec<PeerId> = sent.iter().map(|t| t.to).collect();
    assert_eq!(to, [id(1), id(5)]);
    assert!(
        sent.iter()
            .all(|t| records_of(t) == std::slice::from_ref(&rec_2b))
    );

    // An update relayed by a third peer is passed on in first exchanges only.
    let rec_3b = record(3, 2, t0);
    let found = m.receive(id(1), vec![rec_3b.clone()], t0 + Duration::from_secs(301));
    assert_eq!(found, [rec_3b]);
    assert!(m.advance(t0 + Duration::from_secs(1_000)).is_empty());
    assert_eq!(m.pex.stats().sent, 5);
    // Nothing is new any more: no exchange is even scheduled.
    assert_eq!(
        m.pex.poll_timeout(),
        Some(secs(4_600)),
        "only the first expiry"
    );
}

#[test]
fn only_superseding_records_replace_cached_ones() {
    let now = secs(1_000);
    let mut m = Machine::new(10, Config::default());
    m.ready(id(1), now);
    m.ready(id(2), now);
    let (v5, v3, v7) = (record(4, 5, now), record(4, 3, now), record(4, 7, now));
    assert_eq!(
        m.receive(id(1), vec![v5.clone(), v3.clone()], now),
        std::slice::from_ref(&v5)
    );
    assert_eq!(m.pex.record(&id(4)), Some(&v5));
    assert_eq!(
        m.receive(id(2), vec![v7.clone(), v3], now),
        std::slice::from_ref(&v7)
    );
    assert_eq!(m.pex.record(&id(4)), Some(&v7));
    assert_eq!(m.cached(), [id(4)]);
    assert_eq!(m.pex.stats().invalid_records, 0);
}

#[test]
fn our_own_record_is_never_cached() {
    let now = secs(1_000);
    let mut m = Machine::new(10, Config::default());
    let sent = m.ready(id(1), now);
    let ours = records_of(&sent[0])[0].clone();
    assert!(
        m.receive(id(1), vec![ours, record(10, 99, now)], now)
            .is_empty()
    );
    assert_eq!(m.pex.records().count(), 0);
    assert_eq!(m.pex.stats().invalid_records, 0);
}

#[test]
fn the_cache_keeps_the_most_recently_seen_within_its_bound() {
    let config = Config {
        cache_size: 8,
        ..Config::default()
    };
    let mut m = Machine::new(10, config);
    let mut now = secs(1_000);
    m.ready(id(1), now);
    let mut fed = Vec::new();
    for round in 0..3u8 {
        let records: Vec<PeerRecord> = (0..16)
            .map(|i| record(20 + round * 16 + i, 1, now))
            .collect();
        fed.extend(records.iter().map(|r| *r.peer()));
        let found = m.receive(id(1), records, now);
        assert_eq!(found.len(), 16, "every record is news when it arrives");
        assert_eq!(m.pex.records().count(), 8);
        now = now + Duration::from_secs(30);
    }
    let newest: Vec<PeerId> = fed.iter().rev().take(8).copied().collect();
    assert_eq!(m.cached(), newest);
    assert_eq!(
        m.pex.recent(3),
        m.pex.records().take(3).cloned().collect::<Vec<_>>()
    );
}

#[test]
fn messages_carry_at_most_max_per_message_records() {
    let now = secs(1_000);
    for (max, expect) in [(16, 16), (4, 4), (100, MAX_RECORDS), (1, 1)] {
        let config = Config {
            max_per_message: max,
            ..Config::default()
        };
        let mut m = Machine::new(10, config);
        // Feed 40 records from 40 different peers (one message each; no rate limit applies).
        for i in 0..40u8 {
            let from = id(100 + i);
            m.ready(from, now);
            m.receive(from, vec![record(100 + i, 1, now)], now);
        }
        let sent = m.ready(id(1), now);
        assert_eq!(records_of(&sent[0]).len(), expect, "max {max}");
        assert_eq!(peers_in(&sent[0])[0], id(10), "our own record comes first");
    }
    // Only the first max_per_message records of a message are looked at.
    let mut m = Machine::new(
        10,
        Config {
            max_per_message: 2,
            ..Config::default()
        },
    );
    m.ready(id(1), now);
    let found = m.receive(id(1), (20..25).map(|i| record(i, 1, now)).collect(), now);
    assert_eq!(found.len(), 2);
}

#[test]
fn expired_records_leave_the_cache_when_they_expire() {
    let now = secs(1_000);
    let mut m = Machine::new(10, Config::default());
    m.ready(id(1), now);
    let short = record_until(2, 1, 1_100);
    m.receive(id(1), vec![short, record(3, 1, now)], now);
    // Relayed records call for no exchange: the next thing due is the expiry.
    assert_eq!(m.pex.poll_timeout(), Some(secs(1_100)));
    m.advance(secs(1_100));
    assert_eq!(m.cached(), [id(3)]);
}

#[test]
fn a_peer_that_reconnects_starts_afresh_and_gone_peers_get_nothing() {
    let now = secs(1_000);
    let mut m = Machine::new(10, Config::default());
    m.ready(id(1), now);
    m.receive(id(1), vec![record(1, 1, now)], now);
    m.gone(id(1), now + Duration::from_secs(1));
    assert_eq!(
        m.pex.poll_timeout(),
        Some(secs(4_600)),
        "only the record's expiry left"
    );
    assert!(m.advance(secs(1_200)).is_empty());
    // Back: an exchange at once, and its first message is not rate-limited.
    let sent = m.ready(id(1), secs(1_200));
    assert_eq!(sent.len(), 1);
    m.receive(id(1), vec![record(1, 2, now)], secs(1_200));
    assert_eq!(m.pex.stats().rate_limited, 0);
    assert_eq!(m.pex.record(&id(1)).map(|r| r.seq()), Some(2));
}

// ---- the wire ------------------------------------------------------------------------------

#[test]
fn message_bounds() {
    let now = secs(1_000);
    let records: Vec<PeerRecord> = (0..=MAX_RECORDS as u8).map(|i| record(i, 1, now)).collect();
    let at_limit = Message::Records(records[..MAX_RECORDS].to_vec());
    assert_eq!(at_limit.validate(), Ok(()));
    let msg = wire::Message::Pex(at_limit);
    let frame = wire::encode_frame(&msg).unwrap();
    let mut decoder = wire::FrameDecoder::new();
    decoder.extend(&frame);
    assert_eq!(decoder.next_message(), Ok(Some(msg)));

    let over = Message::Records(records);
    assert_eq!(
        over.validate(),
        Err(WireError::Bounds {
            field: "pex.records",
            found: MAX_RECORDS + 1,
            max: MAX_RECORDS
        })
    );
    assert!(wire::encode_frame(&wire::Message::Pex(over)).is_err());
}

#[test]
fn the_re_signed_own_record_reaches_every_ready_peer_and_nothing_spins() {
    let config = Config {
        record_ttl: Duration::from_secs(400),
        ..Config::default()
    };
    let mut m = Machine::new(10, config);
    let first = m.ready(id(1), secs(1_000));
    m.ready(id(2), secs(1_010));
    let first = records_of(&first[0])[0].clone();
    // A quarter of the record's lifetime later, both peers get the re-signed record.
    assert_eq!(m.pex.poll_timeout(), Some(secs(1_100)));
    let sent = m.advance(secs(1_100));
    assert_eq!(sent.len(), 2);
    for t in &sent {
        let [own] = records_of(t) else {
            panic!("{t:?}")
        };
        assert!(own.supersedes(&first));
        assert_eq!(own.expires(), 1_500);
    }
    // With nobody connected, the next refresh finds no one to tell, and the machine sleeps.
    m.gone(id(1), secs(1_150));
    m.gone(id(2), secs(1_150));
    assert!(m.advance(secs(10_000)).is_empty());
    assert_eq!(m.pex.poll_timeout(), None);
}

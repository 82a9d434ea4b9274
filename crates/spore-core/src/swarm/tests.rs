//! Swarm tests: full nodes over an in-memory network in virtual time ([`Net`]), and the state
//! machine alone with imaginary peers ([`Harness`]).

// Ranges are the protocol's currency here: one-range lists are meant, and so is an inverted
// range fed to the machine as a peer's mistake.
#![allow(clippy::single_range_in_vec_init, clippy::reversed_empty_ranges)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};

use super::*;
use crate::identity::Keypair;
use crate::kad::record::PeerRecord;
use crate::node::tests_support::{Harness, test_config, test_node};
use crate::node::{
    CloseReason, ConnectionEvent, Direction, Event as NodeEvent, Node, Protocol, Transmit,
};
use crate::pow::{Difficulty, Stamp};
use crate::swarm;
use crate::time::Instant;
use crate::wire::{Message as Wire, WireError, decode_frame, encode_frame};

fn data(len: usize, seed: u8) -> Vec<u8> {
    let mut v = vec![0u8; len];
    ChaCha20Rng::from_seed([seed; 32]).fill_bytes(&mut v);
    v
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

// ---------------------------------------------------------------------------------------------
// An N-node network in virtual time.

enum Delivery {
    Message {
        from: usize,
        to: usize,
        msg: Box<Wire>,
    },
    Connect {
        from: usize,
        to: usize,
    },
    DialFailed {
        node: usize,
        peer: crate::PeerId,
    },
}

/// Full [`Node`]s joined by links of fixed one-way latency. Dials connect after one latency;
/// messages on a link arrive in order. Always advances to the earliest delivery or timeout.
struct Net {
    nodes: Vec<Node>,
    blobs: Vec<MemoryBlobs>,
    addrs: Vec<SocketAddr>,
    now: Instant,
    latency: Duration,
    seq: u64,
    queue: BTreeMap<(Instant, u64), Delivery>,
    links: BTreeSet<(usize, usize)>,
    events: Vec<Vec<swarm::Event>>,
    /// Nodes whose `Data` is altered in transit (a flipped bit in the last byte).
    corrupt: BTreeSet<usize>,
    /// Every transmit, hashed in order: the same seed must give the same trace.
    trace: blake3::Hasher,
}

impl Net {
    fn new(n: usize, config: impl Fn(usize) -> swarm::Config) -> Self {
        let mut nodes = Vec::new();
        let mut blobs = Vec::new();
        let mut addrs = Vec::new();
        for i in 0..n {
            let addr: SocketAddr = format!("10.1.0.{}:4000", i + 1).parse().unwrap();
            let mut c = test_config();
            c.listen_addrs = vec![addr];
            c.swarm = config(i);
            let mut node = test_node(i as u8 + 1, c);
            let b = MemoryBlobs::new();
            node.set_blob_access(Box::new(b.clone()));
            nodes.push(node);
            blobs.push(b);
            addrs.push(addr);
        }
        Self {
            nodes,
            blobs,
            addrs,
            now: Instant::ZERO,
            latency: Duration::from_millis(20),
            seq: 0,
            queue: BTreeMap::new(),
            links: BTreeSet::new(),
            events: vec![Vec::new(); n],
            corrupt: BTreeSet::new(),
            trace: blake3::Hasher::new(),
        }
    }

    fn id(&self, i: usize) -> crate::PeerId {
        self.nodes[i].peer_id()
    }

    fn index(&self, peer: &crate::PeerId) -> Option<usize> {
        self.nodes.iter().position(|n| n.peer_id() == *peer)
    }

    fn provider(&self, i: usize) -> (crate::PeerId, Vec<SocketAddr>) {
        (self.id(i), vec![self.addrs[i]])
    }

    fn link(a: usize, b: usize) -> (usize, usize) {
        (a.min(b), a.max(b))
    }

    fn schedule(&mut self, at: Instant, d: Delivery) {
        self.seq += 1;
        self.queue.insert((at, self.seq), d);
    }

    /// Moves node `i`'s outputs onto the network.
    fn drain(&mut self, i: usize) {
        let at = self.now + self.latency;
        while let Some(Transmit { to, mut message }) = self.nodes[i].poll_transmit() {
            let Some(j) = self.index(&to) else { continue };
            if !self.links.contains(&Self::link(i, j)) {
                continue;
            }
            if self.corrupt.contains(&i)
                && let Wire::Swarm(Message::Data { encoded, .. }) = &mut message
            {
                let mut v = encoded.to_vec();
                if let Some(last) = v.last_mut() {
                    *last ^= 1;
                }
                *encoded = Bytes::from(v);
            }
            self.trace.update(&self.now.as_micros().to_le_bytes());
            self.trace.update(&[i as u8, j as u8]);
            self.trace.update(&encode_frame(&message).unwrap());
            self.schedule(
                at,
                Delivery::Message {
                    from: i,
                    to: j,
                    msg: Box::new(message),
                },
            );
        }
        while let Some(e) = self.nodes[i].poll_event() {
            match e {
                NodeEvent::Dial { peer, .. } => match self.index(&peer) {
                    Some(j) => self.schedule(at, Delivery::Connect { from: i, to: j }),
                    None => self.schedule(at, Delivery::DialFailed { node: i, peer }),
                },
                NodeEvent::Close { peer, .. } => {
                    if let Some(j) = self.index(&peer)
                        && self.links.remove(&Self::link(i, j))
                    {
                        let me = self.id(i);
                        self.nodes[j].handle_connection_event(
                            self.now,
                            ConnectionEvent::Closed { peer: me },
                        );
                        self.drain(j);
                    }
                }
                NodeEvent::Swarm(e) => self.events[i].push(e),
                _ => {}
            }
        }
    }

    fn deliver(&mut self, d: Delivery) {
        match d {
            Delivery::Message { from, to, msg } => {
                if !self.links.contains(&Self::link(from, to)) {
                    return;
                }
                let id = self.id(from);
                self.nodes[to].handle_message(self.now, id, *msg);
                self.drain(to);
            }
            Delivery::Connect { from, to } => {
                if !self.links.insert(Self::link(from, to)) {
                    return;
                }
                let (a, b) = (self.id(from), self.id(to));
                let (addr_a, addr_b) = (self.addrs[from], self.addrs[to]);
                self.nodes[from].handle_connection_event(
                    self.now,
                    ConnectionEvent::Connected {
                        peer: b,
                        addr: addr_b,
                        direction: Direction::Outbound,
                    },
                );
                self.nodes[to].handle_connection_event(
                    self.now,
                    ConnectionEvent::Connected {
                        peer: a,
                        addr: addr_a,
                        direction: Direction::Inbound,
                    },
                );
                self.drain(from);
                self.drain(to);
            }
            Delivery::DialFailed { node, peer } => {
                self.nodes[node]
                    .handle_connection_event(self.now, ConnectionEvent::DialFailed { peer });
                self.drain(node);
            }
        }
    }

    /// Runs until `done` holds (true) or `limit` of virtual time passes (false).
    fn run_until(&mut self, limit: Duration, mut done: impl FnMut(&Net) -> bool) -> bool {
        let end = self.now + limit;
        loop {
            if done(self) {
                return true;
            }
            let next_msg = self.queue.keys().next().map(|(t, _)| *t);
            let next_timeout = self.nodes.iter().filter_map(Node::poll_timeout).min();
            let Some(next) = next_msg.into_iter().chain(next_timeout).min() else {
                return false;
            };
            if next > end {
                self.now = end;
                return done(self);
            }
            self.now = self.now.max(next);
            if next_msg == Some(next) {
                let Some((_, d)) = self.queue.pop_first() else {
                    continue;
                };
                self.deliver(d);
            } else {
                for i in 0..self.nodes.len() {
                    if self.nodes[i].poll_timeout().is_some_and(|t| t <= self.now) {
                        self.nodes[i].handle_timeout(self.now);
                        self.drain(i);
                    }
                }
            }
        }
    }

    fn completed(&self, i: usize, hash: &Hash) -> bool {
        self.events[i]
            .iter()
            .any(|e| matches!(e, swarm::Event::Complete { hash: h, .. } if h == hash))
    }

    fn fetch(&mut self, i: usize, hash: Hash, providers: Vec<usize>) {
        let providers = providers.into_iter().map(|p| self.provider(p)).collect();
        self.nodes[i].fetch(self.now, hash, providers).unwrap();
        self.drain(i);
    }

    fn serve(&mut self, i: usize, data: &[u8]) -> Hash {
        let hash = self.blobs[i].insert(data);
        self.nodes[i].serve(self.now, hash).unwrap();
        self.drain(i);
        hash
    }
}

fn paced(rate: u64) -> swarm::Config {
    swarm::Config {
        upload_rate: Some(rate),
        ..swarm::Config::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Whole downloads.

#[test]
fn one_seeder_one_leecher() {
    let mut net = Net::new(2, |_| swarm::Config::default());
    // Not a multiple of the group size: the last group is short.
    let blob = data(1024 * 1024 + 1234, 1);
    let hash = net.serve(0, &blob);
    assert_eq!(hash, *blake3::hash(&blob).as_bytes());
    net.fetch(1, hash, vec![0]);
    assert!(net.run_until(secs(30), |n| n.completed(1, &hash)));
    assert_eq!(net.blobs[1].get(&hash).unwrap(), blob);
    let leecher = net.nodes[1].swarm();
    let stats = leecher.stats();
    assert_eq!(stats.completed, 1);
    assert_eq!(stats.bad_data + stats.unrequested + stats.malformed, 0);
    // Every group requested once: 65 groups (the last, first, then 64 more).
    assert_eq!(stats.groups_requested, group_count(blob.len() as u64));
    let seeder = net.id(0);
    assert!(leecher.totals(&seeder).downloaded > blob.len() as u64);
    assert_eq!(
        net.nodes[0].swarm().totals(&net.id(1)).uploaded,
        leecher.totals(&seeder).downloaded
    );
    // Progress ends at the size, then Complete.
    let progress: Vec<u64> = net.events[1]
        .iter()
        .filter_map(|e| match e {
            swarm::Event::Progress { verified_bytes, .. } => Some(*verified_bytes),
            _ => None,
        })
        .collect();
    assert_eq!(progress.last(), Some(&(blob.len() as u64)));
    // The leecher now seeds.
    let info = leecher.info(&hash).unwrap();
    assert!(!info.fetching && info.verified_bytes == blob.len() as u64);
}

#[test]
fn a_leecher_signs_receipts_the_seeder_keeps_and_the_ledger_survives_a_restore() {
    let mut net = Net::new(2, |_| swarm::Config::default());
    let blob = data(5 * 1024 * 1024 + 100, 7);
    let hash = net.serve(0, &blob);
    net.fetch(1, hash, vec![0]);
    assert!(net.run_until(secs(60), |n| n.completed(1, &hash)));
    let (seeder, leecher) = (net.id(0), net.id(1));
    let got = net.nodes[1].swarm().totals(&seeder).downloaded;
    let given = net.nodes[0].swarm().totals(&leecher);
    // A receipt each time another MiB has arrived: the last covers all but less than a MiB and
    // a message (a data message is at most ~130 KiB).
    let receipt = net.nodes[0].swarm().receipt(&leecher).unwrap().clone();
    assert!(receipt.verify() && receipt.receiver() == &leecher && receipt.giver() == &seeder);
    assert_eq!(given.receipted, receipt.bytes());
    let lag = got - receipt.bytes();
    assert!(
        lag < swarm::credit::RECEIPT_EVERY + (256 << 10),
        "{got} {receipt:?}"
    );
    let receipts = net.nodes[0].swarm().stats().receipts;
    assert!((4..=5).contains(&receipts), "{receipts}");

    // A forged receipt (signed by someone else) is refused and counts against the sender.
    let forged = swarm::Receipt::new(&key(99), seeder, given.uploaded, 1);
    net.nodes[0].handle_message(
        net.now,
        leecher,
        Wire::Swarm(Message::Receipt {
            hash,
            receipt: forged,
        }),
    );
    assert_eq!(net.nodes[0].swarm().stats().receipts_invalid, 1);
    assert_eq!(
        net.nodes[0].swarm().totals(&leecher).receipted,
        receipt.bytes()
    );
    // A genuine receipt for more than the seeder sent, or for less than the last one said,
    // is ignored. (Node 1 of the net has the key of seed 2.)
    let leecher_key = key(2);
    assert_eq!(leecher_key.peer_id(), leecher);
    for bytes in [given.uploaded + 1, receipt.bytes() - 1] {
        let r = swarm::Receipt::new(&leecher_key, seeder, bytes, 2);
        net.nodes[0].handle_message(
            net.now,
            leecher,
            Wire::Swarm(Message::Receipt { hash, receipt: r }),
        );
    }
    assert_eq!(net.nodes[0].swarm().stats().receipts_ignored, 2);
    assert_eq!(
        net.nodes[0].swarm().totals(&leecher).receipted,
        receipt.bytes()
    );

    // Saved and restored into a fresh swarm of the same identity, the ledger comes back
    // whole; a receipt tampered with on disk is dropped with its claim.
    let ledger = net.nodes[0].swarm().ledger();
    let mut restored = Swarm::new(seeder, D, swarm::Config::default());
    restored.restore_ledger(ledger.clone());
    assert_eq!(restored.ledger(), ledger);
    let mut tampered = ledger.clone();
    for e in &mut tampered {
        e.receipt = Some(swarm::Receipt::new(&key(98), seeder, 1 << 30, 1));
    }
    let mut restored = Swarm::new(seeder, D, swarm::Config::default());
    restored.restore_ledger(tampered);
    assert!(
        restored
            .ledger()
            .iter()
            .all(|e| e.receipt.is_none() && e.totals.receipted == 0)
    );
}

/// Runs one seeder and `leechers` leechers, all uploading at `rate`; returns the net.
fn swarm_of(leechers: usize, size: usize, rate: u64) -> (Net, Hash, Vec<u8>) {
    let mut net = Net::new(leechers + 1, |_| paced(rate));
    let blob = data(size, 9);
    let hash = net.serve(0, &blob);
    for i in 1..=leechers {
        net.fetch(i, hash, vec![0]);
    }
    (net, hash, blob)
}

#[test]
fn a_full_seeder_points_newcomers_to_members() {
    // Swarms of at most 3 peers, 12 leechers who all know only the seeder: those it refuses
    // learn members from its refusal and get the blob from them.
    let mut net = Net::new(13, |_| swarm::Config {
        max_peers: 3,
        ..paced(1 << 20)
    });
    let blob = data(512 * 1024, 4);
    let hash = net.serve(0, &blob);
    for i in 1..=12 {
        net.fetch(i, hash, vec![0]);
    }
    let all = |n: &Net| (1..=12).all(|i| n.completed(i, &hash));
    let done = net.run_until(secs(300), all);
    let failed: Vec<usize> = (1..=12).filter(|&i| !net.completed(i, &hash)).collect();
    assert!(done, "not every leecher completed: {failed:?}");
    assert!(net.nodes[0].swarm().stats().refused > 0);
    let learned: u64 = (1..=12)
        .map(|i| net.nodes[i].swarm().stats().pex_learned)
        .sum();
    assert!(learned > 0);
}

#[test]
fn leechers_serve_each_other() {
    let size = 4 << 20;
    let (mut net, hash, blob) = swarm_of(8, size, 1 << 20);
    let all = |n: &Net| (1..=8).all(|i| n.completed(i, &hash));
    assert!(net.run_until(secs(120), all), "not all completed");
    for i in 1..=8 {
        assert_eq!(net.blobs[i].get(&hash).unwrap(), blob, "leecher {i}");
    }
    let seeder_up = net.nodes[0].swarm().stats().bytes_uploaded;
    let ratio = seeder_up as f64 / size as f64;
    let leecher_up: u64 = (1..=8)
        .map(|i| net.nodes[i].swarm().stats().bytes_uploaded)
        .sum();
    println!(
        "1 seeder + 8 leechers, {} MiB at 1 MiB/s each: seeder uploaded {:.2} × the size, \
         leechers {:.2} ×, done at {:.1} s",
        size >> 20,
        ratio,
        leecher_up as f64 / size as f64,
        net.now.as_micros() as f64 / 1e6
    );
    assert!(ratio < 4.0, "seeder uploaded {ratio:.2} × the size");
    // Leechers found each other through peer exchange.
    assert!(net.nodes[8].swarm().stats().pex_learned > 0);
}

#[test]
fn corrupting_provider_cannot_corrupt_the_download() {
    let mut net = Net::new(3, |_| swarm::Config::default());
    let blob = data(512 * 1024, 3);
    let hash = net.serve(0, &blob);
    net.serve(1, &blob);
    net.corrupt.insert(1);
    net.fetch(2, hash, vec![1, 0]);
    assert!(net.run_until(secs(60), |n| n.completed(2, &hash)));
    assert_eq!(net.blobs[2].get(&hash).unwrap(), blob);
    let liar = net.id(1);
    assert!(
        net.events[2]
            .iter()
            .any(|e| matches!(e, swarm::Event::BadPeer { peer, .. } if *peer == liar))
    );
    let s = net.nodes[2].swarm();
    assert!(s.is_bad(&hash, &liar));
    assert_eq!(s.stats().bad_peers, 1);
    assert!(s.stats().bad_data >= 1);
    assert!(s.peers(&hash).iter().all(|p| p.peer != liar));
    // The node distrusts it: the connection was closed, and a new one is refused.
    assert!(net.nodes[2].standing(&liar).distrusted);
    while net.nodes[2].poll_event().is_some() {}
    net.nodes[2].handle_connection_event(
        net.now,
        ConnectionEvent::Connected {
            peer: liar,
            addr: "10.0.0.2:1".parse().unwrap(),
            direction: Direction::Inbound,
        },
    );
    assert!(matches!(
        net.nodes[2].poll_event(),
        Some(NodeEvent::Close {
            reason: CloseReason::Distrusted,
            ..
        })
    ));
}

#[test]
fn endgame_requests_the_rest_twice_and_cancels_duplicates() {
    // A fast and a slow seeder; 8 pieces. The slow one's pieces end up asked of the fast one
    // as well, and the slow one is told to cancel.
    let mut net = Net::new(3, |i| swarm::Config {
        upload_rate: Some(if i == 1 { 16 * 1024 } else { 4 << 20 }),
        upload_burst: 16 * 1024,
        ..swarm::Config::default()
    });
    let blob = data(512 * 1024, 4);
    let hash = net.serve(0, &blob);
    net.serve(1, &blob);
    net.fetch(2, hash, vec![0, 1]);
    assert!(net.run_until(secs(60), |n| n.completed(2, &hash)));
    assert_eq!(net.blobs[2].get(&hash).unwrap(), blob);
    let s = net.nodes[2].swarm().stats();
    assert!(s.endgame_requests > 0, "{s:?}");
    assert!(s.cancels_sent > 0, "{s:?}");
    // Duplicates were cancelled before the slow seeder sent them all.
    let slow = net.nodes[1].swarm().stats();
    assert!(slow.bytes_uploaded < blob.len() as u64 / 2, "{slow:?}");
    assert!(s.duplicates <= s.endgame_requests);
}

#[test]
fn resume_requests_only_missing_groups() {
    let mut net = Net::new(2, |_| swarm::Config::default());
    let blob = data(2 << 20, 5);
    let n = group_count(blob.len() as u64);
    let hash = net.serve(0, &blob);
    // The leecher verified groups 0..20, 50..60 and the last before it stopped.
    net.blobs[1].insert_partial(&blob, &[0..20, 50..60, n - 1..n]);
    net.fetch(1, hash, vec![0]);
    assert!(net.run_until(secs(30), |n| n.completed(1, &hash)));
    assert_eq!(net.blobs[1].get(&hash).unwrap(), blob);
    let s = net.nodes[1].swarm().stats();
    assert_eq!(s.groups_requested, n - 31, "{s:?}");
}

#[test]
fn unknown_size_is_proven_first() {
    // A leecher whose store has groups but not the last: it fetches the last first, and then
    // only what it lacks.
    let mut net = Net::new(2, |_| swarm::Config::default());
    let blob = data(300 * 1024, 6);
    let n = group_count(blob.len() as u64);
    let hash = net.serve(0, &blob);
    net.blobs[1].insert_partial(&blob, &[0..5]);
    net.fetch(1, hash, vec![0]);
    assert!(net.run_until(secs(30), |n| n.completed(1, &hash)));
    assert_eq!(net.blobs[1].get(&hash).unwrap(), blob);
    assert_eq!(net.nodes[1].swarm().stats().groups_requested, n - 5);
}

#[test]
fn fails_when_no_provider_is_left() {
    let mut net = Net::new(2, |_| swarm::Config::default());
    let hash = *blake3::hash(b"nobody has this").as_bytes();
    // A provider that does not exist, and one that does not have it.
    let ghost = Keypair::from_secret_bytes([99; 32]).peer_id();
    let providers = vec![
        (ghost, vec!["10.9.9.9:1".parse().unwrap()]),
        net.provider(0),
    ];
    net.nodes[1].fetch(net.now, hash, providers).unwrap();
    net.drain(1);
    let failed = |n: &Net| {
        n.events[1].iter().any(|e| {
            matches!(
                e,
                swarm::Event::Failed {
                    reason: FailReason::NoProviders,
                    ..
                }
            )
        })
    };
    assert!(net.run_until(secs(60), failed));
    assert!(net.nodes[1].swarm().info(&hash).is_none());
    assert_eq!(net.nodes[1].swarm().stats().failed, 1);
}

#[test]
fn empty_blob_and_complete_blob_finish_at_once() {
    let mut net = Net::new(1, |_| swarm::Config::default());
    let empty = empty_hash();
    net.fetch(0, empty, vec![]);
    let have = net.blobs[0].insert(b"already here");
    net.fetch(0, have, vec![]);
    assert!(net.completed(0, &empty) && net.completed(0, &have));
    assert_eq!(net.nodes[0].swarm().hashes().count(), 0);
    assert_eq!(
        net.nodes[0].serve(net.now, empty_hash()),
        Err(SwarmError::NotComplete)
    );
}

#[test]
fn same_seed_same_transmits() {
    let run = || {
        let (mut net, hash, _) = swarm_of(3, 1 << 20, 1 << 20);
        assert!(net.run_until(secs(60), |n| (1..=3).all(|i| n.completed(i, &hash))));
        (net.trace.finalize(), net.now)
    };
    let (a, ta) = run();
    let (b, tb) = run();
    assert_eq!(a, b);
    assert_eq!(ta, tb);
}

// ---------------------------------------------------------------------------------------------
// The state machine with imaginary peers.

const D: Difficulty = Difficulty(4);

fn key(n: u8) -> Keypair {
    Keypair::from_secret_bytes([n; 32])
}

fn at(ms: u64) -> Instant {
    Instant::from_micros(ms * 1000)
}

/// A [`Swarm`] machine (key 1) driven directly, with peers that are ready at once.
struct Machine {
    h: Harness,
    s: Swarm,
    blobs: MemoryBlobs,
    now: Instant,
}

impl Machine {
    fn new(config: swarm::Config) -> Self {
        let me = key(1);
        let stamp = Stamp::mint(&me.peer_id(), D);
        let h = Harness::with_identity(me.clone(), stamp, vec!["10.0.0.1:4000".parse().unwrap()]);
        let mut s = Swarm::new(me.peer_id(), D, config);
        let blobs = MemoryBlobs::new();
        s.set_blobs(Box::new(blobs.clone()));
        Self {
            h,
            s,
            blobs,
            now: at(0),
        }
    }

    fn connect(&mut self, peer: crate::PeerId) {
        let ev = self.h.ready(peer, self.now);
        let now = self.now;
        self.h.with(now, |cx| self.s.handle_peer_event(cx, &ev));
    }

    fn recv(&mut self, from: crate::PeerId, msg: Message) {
        let now = self.now;
        self.h.with(now, |cx| self.s.handle_message(cx, from, msg));
    }

    /// Advances to `t`, running every timeout on the way.
    fn advance(&mut self, t: Instant) {
        while let Some(next) = self.s.poll_timeout().filter(|n| *n <= t) {
            self.now = next.max(self.now);
            let now = self.now;
            self.h.with(now, |cx| self.s.handle_timeout(cx));
        }
        self.now = t.max(self.now);
    }

    fn sent(&mut self) -> Vec<(crate::PeerId, Message)> {
        self.h
            .transmits()
            .into_iter()
            .filter_map(|t| match t.message {
                Wire::Swarm(m) => Some((t.to, m)),
                _ => None,
            })
            .collect()
    }

    fn events(&mut self) -> Vec<swarm::Event> {
        self.h
            .events()
            .into_iter()
            .filter_map(|e| match e {
                NodeEvent::Swarm(e) => Some(e),
                _ => None,
            })
            .collect()
    }

    fn slot(&self, hash: &Hash, peer: &crate::PeerId) -> Option<Slot> {
        self.s
            .peers(hash)
            .into_iter()
            .find(|v| v.peer == *peer)
            .and_then(|v| v.slot)
    }
}

fn have(hash: Hash, size: u64, ranges: Vec<std::ops::Range<u64>>) -> Message {
    Message::Have {
        hash,
        size: Some(size),
        ranges,
        record: None,
    }
}

/// A leecher with the first half of a blob, and peers: four reciprocators that have the
/// second half and answer its requests, and two free-riders that have nothing and never
/// upload. Every peer is interested in the leecher.
#[test]
fn free_riders_get_only_optimistic_slots() {
    let config = swarm::Config {
        give_up_after: secs(3600),
        ..swarm::Config::default()
    };
    let mut m = Machine::new(config);
    let blob = data(32 << 20, 7);
    let size = blob.len() as u64;
    let n = group_count(size);
    let source = MemoryBlobs::new();
    let hash = source.insert(&blob);
    m.blobs.insert_partial(&blob, &[0..n / 2, n - 1..n]);
    let now = m.now;
    m.h.with(now, |cx| m.s.fetch(cx, hash, vec![])).unwrap();
    let givers: Vec<crate::PeerId> = (10..14).map(|k| key(k).peer_id()).collect();
    let riders: Vec<crate::PeerId> = (20..22).map(|k| key(k).peer_id()).collect();
    for &p in givers.iter().chain(&riders) {
        m.connect(p);
        let ranges = if givers.contains(&p) {
            vec![n / 2..n]
        } else {
            vec![]
        };
        m.recv(p, have(hash, size, ranges));
        m.recv(p, Message::Interested { hash });
    }
    for &p in &givers {
        m.recv(p, Message::Unchoke { hash });
    }
    // Each giver answers one request every 2 s.
    let mut pending: BTreeMap<crate::PeerId, Vec<std::ops::Range<u64>>> = BTreeMap::new();
    let mut rider_optimistic = 0;
    let mut source = source;
    for step in 1..=140u64 {
        for (to, msg) in m.sent() {
            if let Message::Request { groups, .. } = msg {
                pending.entry(to).or_default().push(groups);
            }
        }
        if step % 4 == 0 {
            for &g in &givers {
                if let Some(groups) = pending
                    .get_mut(&g)
                    .filter(|v| !v.is_empty())
                    .map(|v| v.remove(0))
                {
                    let encoded = source.read(&hash, groups.clone()).unwrap();
                    m.recv(
                        g,
                        Message::Data {
                            hash,
                            groups,
                            encoded,
                        },
                    );
                }
            }
        }
        m.advance(at(step * 500));
        // From the first rechoke on, the riders never hold a regular slot.
        if m.now >= at(10_500) {
            for r in &riders {
                let slot = m.slot(&hash, r);
                assert_ne!(slot, Some(Slot::Regular), "at {:?}", m.now);
                rider_optimistic += usize::from(slot == Some(Slot::Optimistic));
            }
            for g in &givers {
                assert_eq!(m.slot(&hash, g), Some(Slot::Regular), "at {:?}", m.now);
            }
        }
    }
    assert!(rider_optimistic > 0);
    let info = m.s.info(&hash).unwrap();
    assert!(
        info.fetching,
        "the leecher must still be leeching: {info:?}"
    );
}

#[test]
fn a_snubbing_peer_loses_its_regular_slot() {
    let config = swarm::Config {
        give_up_after: secs(3600),
        ..swarm::Config::default()
    };
    let mut m = Machine::new(config);
    let blob = data(4 << 20, 8);
    let size = blob.len() as u64;
    let n = group_count(size);
    let mut source = MemoryBlobs::new();
    let hash = source.insert(&blob);
    m.blobs.insert_partial(&blob, &[0..n / 2, n - 1..n]);
    let now = m.now;
    m.h.with(now, |cx| m.s.fetch(cx, hash, vec![])).unwrap();
    let giver = key(10).peer_id();
    let snubber = key(11).peer_id();
    for p in [giver, snubber] {
        m.connect(p);
        m.recv(p, have(hash, size, vec![n / 2..n]));
        m.recv(p, Message::Interested { hash });
        m.recv(p, Message::Unchoke { hash });
    }
    // Only two candidates for four slots: both regular at first.
    assert_eq!(m.slot(&hash, &giver), Some(Slot::Regular));
    assert_eq!(m.slot(&hash, &snubber), Some(Slot::Regular));
    let mut pending = Vec::new();
    for step in 1..=150u64 {
        for (to, msg) in m.sent() {
            if let (true, Message::Request { groups, .. }) = (to == giver, msg) {
                pending.push(groups);
            }
        }
        // The giver answers one request every 4 s, so the download lasts.
        if step % 8 == 0 && !pending.is_empty() {
            let groups = pending.remove(0);
            let encoded = source.read(&hash, groups.clone()).unwrap();
            m.recv(
                giver,
                Message::Data {
                    hash,
                    groups,
                    encoded,
                },
            );
        }
        m.advance(at(step * 500));
    }
    let snub =
        m.s.peers(&hash)
            .into_iter()
            .find(|v| v.peer == snubber)
            .unwrap();
    assert!(snub.snubbed && snub.am_interested);
    assert_ne!(snub.slot, Some(Slot::Regular));
    assert_eq!(m.slot(&hash, &giver), Some(Slot::Regular));
}

#[test]
fn malformed_messages_are_counted_not_fatal() {
    let mut m = Machine::new(swarm::Config::default());
    let blob = data(100 * 1024, 2);
    let hash = m.blobs.insert(&blob);
    let size = blob.len() as u64;
    let now = m.now;
    m.h.with(now, |cx| m.s.serve(cx, hash)).unwrap();
    let p = key(10).peer_id();
    m.connect(p);
    // Before the handshake: a request is refused, anything else counted.
    m.recv(p, Message::Request { hash, groups: 0..1 });
    m.recv(p, Message::Unchoke { hash });
    let before = m.s.stats();
    assert_eq!(before.requests_rejected, 1);
    assert_eq!(before.malformed, 1);
    m.recv(p, have(hash, size, vec![]));
    let sent = m.sent();
    assert!(
        sent.iter()
            .any(|(_, msg)| matches!(msg, Message::Have { size: Some(s), .. } if *s == size))
    );
    m.recv(p, Message::Interested { hash });
    assert!(
        m.sent()
            .iter()
            .any(|(_, msg)| matches!(msg, Message::Unchoke { .. }))
    );
    // A huge range, an empty one, one past the end.
    m.recv(
        p,
        Message::Request {
            hash,
            groups: 0..(1 << 40),
        },
    );
    m.recv(p, Message::Request { hash, groups: 3..3 });
    m.recv(p, Message::Request { hash, groups: 6..9 });
    m.recv(
        p,
        Message::HaveUpdate {
            hash,
            ranges: vec![5..1, 0..1000],
        },
    );
    // Overlapping ranges in a bitfield: the whole message is refused.
    m.recv(
        p,
        Message::HaveUpdate {
            hash,
            ranges: vec![0..4, 2..6],
        },
    );
    assert_eq!(m.s.stats().malformed, before.malformed + 5);
    // A blob it has no swarm of.
    let other = [7u8; 32];
    m.recv(
        p,
        Message::Request {
            hash: other,
            groups: 0..1,
        },
    );
    m.recv(p, Message::Choke { hash: other });
    assert_eq!(m.s.stats().unknown_swarm, 2);
    // Data nobody asked for is not even looked at.
    m.recv(
        p,
        Message::Data {
            hash,
            groups: 0..1,
            encoded: Bytes::from_static(b"junk"),
        },
    );
    assert_eq!(m.s.stats().unrequested, 1);
    // Peer exchange with a forged record, then too soon.
    let k = key(30);
    let record = PeerRecord::new(
        &k,
        Stamp::mint(&k.peer_id(), D),
        vec!["10.3.0.1:1".parse().unwrap()],
        vec![],
        1,
        3600,
    );
    // The same record with its signature's last byte changed.
    let mut bytes = postcard::to_allocvec(&record).unwrap();
    *bytes.last_mut().unwrap() ^= 1;
    let forged: PeerRecord = postcard::from_bytes(&bytes).unwrap();
    m.recv(
        p,
        Message::Peers {
            hash,
            records: vec![forged],
        },
    );
    m.recv(
        p,
        Message::Peers {
            hash,
            records: vec![record],
        },
    );
    let s = m.s.stats();
    assert_eq!(s.pex_invalid, 1);
    assert_eq!(s.pex_ignored, 1);
    // A size claim that contradicts ours is a lie.
    m.recv(p, have(hash, size + 1, vec![]));
    assert!(m.s.is_bad(&hash, &p));
    assert!(
        m.events()
            .iter()
            .any(|e| matches!(e, swarm::Event::BadPeer { .. }))
    );
    // The machine still serves others.
    let q = key(11).peer_id();
    m.connect(q);
    m.recv(q, have(hash, size, vec![]));
    m.recv(q, Message::Interested { hash });
    m.recv(q, Message::Request { hash, groups: 6..7 });
    assert!(
        m.sent()
            .iter()
            .any(|(to, msg)| *to == q && matches!(msg, Message::Data { .. }))
    );
}

#[test]
fn a_false_size_claim_fails_the_size_proof() {
    let mut m = Machine::new(swarm::Config::default());
    let blob = data(100 * 1024, 2);
    let hash = *blake3::hash(&blob).as_bytes();
    let now = m.now;
    m.h.with(now, |cx| m.s.fetch(cx, hash, vec![])).unwrap();
    let liar = key(10).peer_id();
    let honest = key(11).peer_id();
    // First a claim too large for the store (1 GiB here): its last group cannot even be
    // stored. The claimant is dropped; the download goes on.
    let huge = key(12).peer_id();
    let huge_size = 8u64 << 30;
    let huge_n = group_count(huge_size);
    m.connect(huge);
    m.recv(huge, have(hash, huge_size, vec![huge_n - 1..huge_n]));
    m.recv(huge, Message::Unchoke { hash });
    assert!(m.sent().iter().any(|(to, msg)| *to == huge
        && matches!(msg, Message::Request { groups, .. } if groups.start == huge_n - 1)));
    m.recv(
        huge,
        Message::Data {
            hash,
            groups: huge_n - 1..huge_n,
            encoded: Bytes::from_static(b"x"),
        },
    );
    assert_eq!(m.s.stats().store_errors, 1);
    assert!(m.s.peers(&hash).iter().all(|v| v.peer != huge));
    assert!(m.s.info(&hash).unwrap().fetching);
    m.connect(liar);
    // It claims a blob one group longer and serves a last group of other bytes.
    let fake = data(116 * 1024, 3);
    let fake_n = group_count(fake.len() as u64);
    m.recv(liar, have(hash, fake.len() as u64, vec![0..fake_n]));
    m.recv(liar, Message::Unchoke { hash });
    let req = m.sent().into_iter().find_map(|(_, msg)| match msg {
        Message::Request { groups, .. } => Some(groups),
        _ => None,
    });
    assert_eq!(req, Some(fake_n - 1..fake_n), "the last group first");
    let mut fake_store = MemoryBlobs::new();
    let fake_hash = fake_store.insert(&fake);
    let encoded = fake_store.read(&fake_hash, fake_n - 1..fake_n).unwrap();
    m.recv(
        liar,
        Message::Data {
            hash,
            groups: fake_n - 1..fake_n,
            encoded,
        },
    );
    assert!(m.s.is_bad(&hash, &liar));
    // An honest peer then proves the real size.
    let n = group_count(blob.len() as u64);
    let mut real = MemoryBlobs::new();
    real.insert(&blob);
    m.connect(honest);
    m.recv(honest, have(hash, blob.len() as u64, vec![0..n]));
    m.recv(honest, Message::Unchoke { hash });
    for _ in 0..20 {
        let reqs: Vec<_> = m
            .sent()
            .into_iter()
            .filter_map(|(_, msg)| match msg {
                Message::Request { groups, .. } => Some(groups),
                _ => None,
            })
            .collect();
        for groups in reqs {
            let encoded = real.read(&hash, groups.clone()).unwrap();
            m.recv(
                honest,
                Message::Data {
                    hash,
                    groups,
                    encoded,
                },
            );
        }
    }
    assert!(
        m.events().iter().any(
            |e| matches!(e, swarm::Event::Complete { size, .. } if *size == blob.len() as u64)
        )
    );
    assert_eq!(m.blobs.get(&hash).unwrap(), blob);
}

// ---------------------------------------------------------------------------------------------
// Messages.

fn all_messages() -> Vec<Message> {
    let hash = [5u8; 32];
    let k = key(40);
    let record = PeerRecord::new(
        &k,
        Stamp::mint(&k.peer_id(), D),
        vec!["10.4.0.1:1".parse().unwrap()],
        vec![],
        1,
        3600,
    );
    vec![
        Message::Have {
            hash,
            size: Some(123_456),
            ranges: vec![0..3, 5..8],
            record: Some(record.clone()),
        },
        Message::HaveUpdate {
            hash,
            ranges: vec![9..10],
        },
        Message::Interested { hash },
        Message::NotInterested { hash },
        Message::Choke { hash },
        Message::Unchoke { hash },
        Message::Request { hash, groups: 4..8 },
        Message::Cancel { hash, groups: 4..8 },
        Message::Data {
            hash,
            groups: 4..8,
            encoded: Bytes::from(vec![1u8; 70_000]),
        },
        Message::Reject {
            hash,
            groups: Some(4..8),
            reason: RejectReason::Busy,
        },
        Message::Peers {
            hash,
            records: vec![record],
        },
        Message::Leave { hash },
        Message::Receipt {
            hash,
            receipt: swarm::Receipt::new(&k, key(41).peer_id(), 3 << 20, 1_000),
        },
    ]
}

#[test]
fn messages_round_trip() {
    for m in all_messages() {
        m.validate().unwrap();
        let wire = Wire::Swarm(m);
        let frame = encode_frame(&wire).unwrap();
        assert!(frame.len() < 100_000);
        let decoded = decode_frame(&frame).unwrap();
        assert_eq!(decoded, wire);
        assert!(wire.kind().starts_with("swarm-"));
    }
}

/// The example in docs/protocol.md §5.8.
#[test]
fn documented_example_frame() {
    let frame = encode_frame(&Wire::Swarm(Message::Interested { hash: [0xab; 32] })).unwrap();
    let mut expected = vec![0x00, 0x00, 0x00, 0x23, 0x01, 0x06, 0x02];
    expected.extend([0xab; 32]);
    assert_eq!(&frame[..], &expected[..]);
}

#[test]
fn message_bounds() {
    let hash = [5u8; 32];
    let bad = [
        Message::Have {
            hash,
            size: Some(MAX_BLOB_SIZE + 1),
            ranges: vec![],
            record: None,
        },
        Message::Have {
            hash,
            size: None,
            ranges: vec![0..1; MAX_RANGES + 1],
            record: None,
        },
        Message::HaveUpdate {
            hash,
            ranges: vec![0..MAX_GROUPS + 1],
        },
        Message::Request {
            hash,
            groups: 0..MAX_REQUEST_GROUPS + 1,
        },
        Message::Cancel {
            hash,
            groups: MAX_GROUPS..MAX_GROUPS + 1,
        },
        Message::Data {
            hash,
            groups: 0..1,
            encoded: Bytes::from(vec![0u8; MAX_ENCODED_LEN + 1]),
        },
        Message::Reject {
            hash,
            groups: Some(0..MAX_GROUPS + 1),
            reason: RejectReason::Busy,
        },
        Message::Peers {
            hash,
            records: vec![all_peer_record(); MAX_PEERS + 1],
        },
    ];
    for m in bad {
        assert!(
            matches!(m.validate(), Err(WireError::Bounds { .. })),
            "{}",
            m.kind()
        );
        assert!(Wire::Swarm(m).validate().is_err());
    }
    // The largest legal data message fits a frame.
    let big = Wire::Swarm(Message::Data {
        hash,
        groups: 0..MAX_REQUEST_GROUPS,
        encoded: Bytes::from(vec![0u8; MAX_ENCODED_LEN]),
    });
    big.validate().unwrap();
    assert!(encode_frame(&big).unwrap().len() <= crate::wire::MAX_FRAME_LEN);
}

fn all_peer_record() -> PeerRecord {
    let k = key(41);
    PeerRecord::new(&k, Stamp::mint(&k.peer_id(), D), vec![], vec![], 1, 3600)
}

#[test]
fn memory_blobs_verify() {
    let blob = data(200 * 1024 + 7, 11);
    let mut src = MemoryBlobs::new();
    let hash = src.insert(&blob);
    let n = group_count(blob.len() as u64);
    let mut dst = MemoryBlobs::new();
    let size = blob.len() as u64;
    // The last group first: it proves the size.
    let last = src.read(&hash, n - 1..n).unwrap();
    let w = dst.write(&hash, size, n - 1..n, &last).unwrap();
    assert_eq!(w.groups, vec![n - 1..n]);
    assert!(matches!(dst.status(&hash), BlobStatus::Partial { size: Some(s), .. } if s == size));
    // A tampered response is refused and nothing of it is kept.
    src.set_tamper(true);
    let bad = src.read(&hash, 0..4).unwrap();
    assert!(matches!(
        dst.write(&hash, size, 0..4, &bad),
        Err(WriteError::Bad(_))
    ));
    src.set_tamper(false);
    // Trailing bytes are refused too.
    let mut extra = src.read(&hash, 0..4).unwrap().to_vec();
    extra.push(0);
    assert!(matches!(
        dst.write(&hash, size, 0..4, &extra),
        Err(WriteError::Bad(_))
    ));
    for start in (0..n - 1).step_by(4) {
        let r = start..(start + 4).min(n - 1);
        let enc = src.read(&hash, r.clone()).unwrap();
        dst.write(&hash, size, r, &enc).unwrap();
    }
    assert_eq!(dst.status(&hash), BlobStatus::Complete { size });
    assert_eq!(dst.get(&hash).unwrap(), blob);
    // What is not verified is not served.
    let partial = MemoryBlobs::new();
    partial.insert_partial(&blob, &[0..2]);
    let mut partial = partial;
    assert_eq!(
        partial.read(&hash, 0..2),
        Err(ReadError::NotAvailable),
        "size not proven"
    );
    assert!(
        MemoryBlobs::with_limit(10)
            .write(&hash, size, 0..1, &[])
            .is_err()
    );
}

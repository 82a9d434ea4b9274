use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::LazyLock;
use std::time::Duration;

use proptest::prelude::*;

use super::*;
use crate::identity::Keypair;
use crate::kad::MAX_CONTACT_ADDRS;
use crate::pow::Stamp;

// ---- helpers ------------------------------------------------------------------------------

fn peer(seed: u64) -> PeerId {
    let mut secret = [0x5a; 32];
    secret[..8].copy_from_slice(&seed.to_le_bytes());
    Keypair::from_secret_bytes(secret).peer_id()
}

fn local() -> PeerId {
    peer(0)
}

fn contact(peer: PeerId) -> Contact {
    Contact {
        peer,
        stamp: Stamp { nonce: 0 },
        addrs: Default::default(),
    }
}

fn secs(s: u64) -> Instant {
    Instant::from_micros(s * 1_000_000)
}

fn v4(a: u8, b: u8, c: u8, d: u8) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(a, b, c, d)), 4000)
}

fn v6(text: &str) -> SocketAddr {
    SocketAddr::new(IpAddr::V6(text.parse::<Ipv6Addr>().unwrap()), 4000)
}

/// A distinct public address for `i`, each in its own /16.
fn unique_addr(i: usize) -> SocketAddr {
    v4(20 + (i / 256) as u8, (i % 256) as u8, 0, 1)
}

/// `count` peers (in seed order) whose keys land in bucket `index` of `local()`.
fn in_bucket(index: usize, count: usize) -> Vec<PeerId> {
    let local_key = Key::for_peer(&local());
    (1u64..)
        .map(peer)
        .filter(|p| local_key.bucket_index(&Key::for_peer(p)) == Some(index))
        .take(count)
        .collect()
}

fn table(config: Config) -> RoutingTable {
    RoutingTable::new(local(), config)
}

/// The default settings, except that a full bucket pings its least-recently-seen entry for every
/// newcomer however recently it was seen: what the eviction tests exercise.
fn eager() -> Config {
    Config {
        stale_after: Duration::ZERO,
        ..Config::default()
    }
}

fn small(k: usize, replacement_cache: usize) -> Config {
    Config {
        k,
        replacement_cache,
        ..eager()
    }
}

fn bucket_peers(t: &RoutingTable, index: usize) -> Vec<PeerId> {
    t.buckets
        .get(index)
        .map(|b| b.entries.iter().map(|e| e.contact.peer).collect())
        .unwrap_or_default()
}

fn candidate_peers(t: &RoutingTable, index: usize) -> Vec<PeerId> {
    t.buckets
        .get(index)
        .map(|b| b.candidates.iter().map(|e| e.contact.peer).collect())
        .unwrap_or_default()
}

/// Fills bucket 255 with `config.k` entries at distinct addresses, at times 1, 2, ... s, and
/// returns them (least-recently-seen first) and the peers left over for candidates.
fn fill_255(t: &mut RoutingTable, extra: usize) -> (Vec<PeerId>, Vec<PeerId>) {
    let k = t.config.k;
    let mut peers = in_bucket(255, k + extra);
    let rest = peers.split_off(k);
    for (i, p) in peers.iter().enumerate() {
        let outcome = t.insert(contact(*p), unique_addr(i), secs(i as u64 + 1));
        assert_eq!(outcome, InsertOutcome::Inserted);
    }
    (peers, rest)
}

// ---- an independent model of the IP rules, for checking -------------------------------

/// The canonical, non-loopback address the limits count, computed without the table's code.
fn limited_ip(addr: &SocketAddr) -> Option<IpAddr> {
    let ip = match addr.ip() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        ip => ip,
    };
    let loopback = match ip {
        IpAddr::V4(v4) => v4.octets()[0] == 127,
        IpAddr::V6(v6) => v6 == Ipv6Addr::LOCALHOST,
    };
    (!loopback).then_some(ip)
}

/// `ip` masked to `v4_bits` or `v6_bits`, tagged with its family.
fn net(ip: IpAddr, v4_bits: u32, v6_bits: u32) -> (u8, u128) {
    match ip {
        IpAddr::V4(v4) => (4, u128::from(u32::from(v4) & (u32::MAX << (32 - v4_bits)))),
        IpAddr::V6(v6) => (6, u128::from(v6) & (u128::MAX << (128 - v6_bits))),
    }
}

/// The per-bucket rules among `group`.
fn assert_group_limits(group: &[Entry], config: &Config) {
    let ips: Vec<IpAddr> = group.iter().filter_map(|e| limited_ip(&e.addr())).collect();
    let unique: BTreeSet<IpAddr> = ips.iter().copied().collect();
    assert_eq!(
        unique.len(),
        ips.len(),
        "two nodes at one IP in a group: {ips:?}"
    );
    let mut nets: BTreeMap<(u8, u128), usize> = BTreeMap::new();
    for ip in ips {
        *nets.entry(net(ip, 24, 48)).or_default() += 1;
    }
    for ((family, _), n) in nets {
        let limit = if family == 4 {
            config.max_per_ipv4_24_in_bucket
        } else {
            config.max_per_ipv6_48_in_bucket
        };
        assert!(n <= limit, "{n} nodes from one /24 or /48 in a group");
    }
}

/// Every structural invariant of the table.
fn check_invariants(t: &RoutingTable) {
    let config = &t.config;
    assert_eq!(t.buckets.base + t.buckets.v.len(), BUCKETS);
    let mut seen = BTreeSet::new();
    let mut total = 0;
    let mut per_table_net: BTreeMap<(u8, u128), usize> = BTreeMap::new();
    for (i, bucket) in t.buckets.indexed() {
        assert!(bucket.entries.len() <= config.k, "bucket {i} over k");
        assert!(
            bucket.candidates.len() <= config.replacement_cache,
            "cache {i} over capacity"
        );
        for e in bucket.entries.iter().chain(&bucket.candidates) {
            assert_eq!(e.key, Key::for_peer(&e.contact.peer));
            assert_eq!(
                t.local_key.bucket_index(&e.key),
                Some(i),
                "entry in wrong bucket"
            );
            assert_ne!(e.contact.peer, t.local);
            assert!(
                seen.insert(e.contact.peer),
                "duplicate {:?}",
                e.contact.peer
            );
            assert!(e.added <= e.last_seen);
        }
        for pair in bucket.entries.windows(2) {
            assert!(
                pair[0].last_seen <= pair[1].last_seen,
                "bucket {i} out of order"
            );
        }
        if let Some(p) = bucket.pending {
            assert!(bucket.entry_pos(&p.peer).is_some(), "ping to a non-entry");
        }
        if config.ip_limits {
            assert_group_limits(&bucket.entries, config);
            assert_group_limits(&bucket.candidates, config);
        }
        for e in &bucket.entries {
            if let Some(ip) = limited_ip(&e.addr()) {
                *per_table_net.entry(net(ip, 16, 32)).or_default() += 1;
            }
        }
        total += bucket.entries.len();
    }
    assert_eq!(t.len(), total);
    assert_eq!(t.is_empty(), total == 0);
    assert_eq!(t.iter().count(), total);
    assert_eq!(
        t.bucket_fill().iter().map(|&(_, n)| n).sum::<usize>(),
        total
    );
    if config.ip_limits {
        for (&(family, _), &n) in &per_table_net {
            let limit = if family == 4 {
                config.max_per_ipv4_16_in_table
            } else {
                config.max_per_ipv6_32_in_table
            };
            assert!(n <= limit, "{n} nodes from one /16 or /32 in the table");
        }
    }
    // The table's own counters agree with the recount.
    let internal: BTreeMap<(u8, u128), usize> = t
        .prefixes
        .iter()
        .map(|(prefix, &n)| {
            let key = match *prefix {
                TablePrefix::V4([a, b]) => (4, u128::from(u32::from_be_bytes([a, b, 0, 0]))),
                TablePrefix::V6([a, b, c, d]) => {
                    let mut bytes = [0u8; 16];
                    bytes[..4].copy_from_slice(&[a, b, c, d]);
                    (6, u128::from_be_bytes(bytes))
                }
            };
            (key, n)
        })
        .collect();
    assert_eq!(internal, per_table_net);
    for e in t.iter() {
        assert_eq!(t.get(&e.contact.peer), Some(e));
    }
    for c in t.candidates() {
        assert!(!t.contains(&c.contact.peer));
    }
}

fn check_closest(t: &RoutingTable, target: &Key, n: usize) {
    let got: Vec<PeerId> = t
        .closest(target, n)
        .iter()
        .map(|e| e.contact.peer)
        .collect();
    let mut all: Vec<&Entry> = t.iter().collect();
    all.sort_by_key(|e| target.distance(&e.key));
    let want: Vec<PeerId> = all.iter().take(n).map(|e| e.contact.peer).collect();
    assert_eq!(got, want, "closest({target:?}, {n})");
}

// ---- basics -------------------------------------------------------------------------------

#[test]
fn own_key_is_rejected() {
    let mut t = table(Config::default());
    let outcome = t.insert(contact(local()), v4(1, 2, 3, 4), secs(1));
    assert_eq!(outcome, InsertOutcome::Rejected(Rejection::OwnKey));
    assert!(t.is_empty());
    assert_eq!(t.stats().rejected(Rejection::OwnKey), 1);
    assert_eq!(t.local_key(), Key::for_peer(&local()));
    assert_eq!(t.local_peer(), local());
}

#[test]
fn insert_then_update_moves_to_most_recently_seen_end() {
    let mut t = table(Config::default());
    let peers = in_bucket(255, 3);
    for (i, p) in peers.iter().enumerate() {
        assert_eq!(
            t.insert(contact(*p), unique_addr(i), secs(1)),
            InsertOutcome::Inserted
        );
    }
    assert_eq!(t.len(), 3);
    assert_eq!(bucket_peers(&t, 255), peers);

    let outcome = t.insert(contact(peers[0]), unique_addr(7), secs(5));
    assert_eq!(outcome, InsertOutcome::Updated);
    assert_eq!(bucket_peers(&t, 255), vec![peers[1], peers[2], peers[0]]);
    let e = t.get(&peers[0]).unwrap();
    assert_eq!(
        (e.addr(), e.added, e.last_seen),
        (unique_addr(7), secs(1), secs(5))
    );

    t.mark_seen(&peers[1], secs(6));
    assert_eq!(bucket_peers(&t, 255), vec![peers[2], peers[0], peers[1]]);
    assert_eq!(t.get(&peers[1]).unwrap().last_seen, secs(6));
    assert_eq!(t.stats().inserted, 3);
    assert_eq!(t.stats().updated, 1);
    check_invariants(&t);
}

#[test]
fn unknown_peers_are_ignored() {
    let mut t = table(Config::default());
    let stranger = peer(999);
    t.mark_seen(&stranger, secs(1));
    assert_eq!(t.ping_failed(&stranger, secs(1)), None);
    assert_eq!(t.remove(&stranger), None);
    assert_eq!(t.remove(&local()), None);
    assert!(!t.contains(&stranger));
    assert!(t.is_empty());
}

// ---- eviction -----------------------------------------------------------------------------

#[test]
fn full_bucket_asks_once_for_a_ping_to_the_least_recently_seen() {
    let mut t = table(eager());
    let (entries, candidates) = fill_255(&mut t, 3);
    let now = secs(100);
    let outcome = t.insert(contact(candidates[0]), v4(1, 0, 0, 1), now);
    assert_eq!(outcome, InsertOutcome::Pending { ping: entries[0] });
    assert_eq!(outcome.ping(), Some(entries[0]));
    assert_eq!(t.poll_timeout(), Some(now + Duration::from_secs(10)));
    // While that ping is out, further candidates are only cached.
    let outcome = t.insert(contact(candidates[1]), v4(2, 0, 0, 1), secs(101));
    assert_eq!(outcome, InsertOutcome::Cached);
    assert_eq!(outcome.ping(), None);
    assert_eq!(t.len(), 20);
    assert_eq!(candidate_peers(&t, 255), candidates[..2].to_vec());
    assert!(!t.contains(&candidates[0]));
    assert_eq!(t.stats().pings_started, 1);
    assert_eq!(t.stats().cached, 2);
    check_invariants(&t);
}

#[test]
fn recently_seen_entries_are_not_pinged_for_newcomers() {
    let mut t = table(Config::default());
    let stale_after = t.config.stale_after;
    let (entries, candidates) = fill_255(&mut t, 3);
    // Every entry was seen within `stale_after`: the newcomer waits in the cache, unpinged.
    let outcome = t.insert(contact(candidates[0]), v4(1, 0, 0, 1), secs(100));
    assert_eq!(outcome, InsertOutcome::Cached);
    assert_eq!(t.poll_timeout(), None);
    assert_eq!(t.stats().pings_started, 0);
    // Once the least-recently-seen entry (seen at 1 s) has been quiet that long, it is pinged.
    let later = secs(1) + stale_after;
    let outcome = t.insert(contact(candidates[1]), v4(2, 0, 0, 1), later);
    assert_eq!(outcome, InsertOutcome::Pending { ping: entries[0] });
    // An answer makes it fresh again; the next entry in line was seen at 2 s.
    t.mark_seen(&entries[0], later);
    let outcome = t.insert(contact(candidates[2]), v4(3, 0, 0, 1), later);
    assert_eq!(outcome, InsertOutcome::Cached);
    let outcome = t.insert(
        contact(candidates[2]),
        v4(3, 0, 0, 1),
        secs(2) + stale_after,
    );
    assert_eq!(outcome, InsertOutcome::Pending { ping: entries[1] });
    assert_eq!(t.len(), 20);
    check_invariants(&t);
}

#[test]
fn answered_ping_keeps_the_entry_and_the_candidates() {
    let mut t = table(eager());
    let (entries, candidates) = fill_255(&mut t, 3);
    t.insert(contact(candidates[0]), v4(1, 0, 0, 1), secs(100));
    t.insert(contact(candidates[1]), v4(2, 0, 0, 1), secs(101));

    t.mark_seen(&entries[0], secs(102));
    assert!(t.contains(&entries[0]));
    assert_eq!(bucket_peers(&t, 255).last(), Some(&entries[0]));
    assert_eq!(t.poll_timeout(), None);
    assert_eq!(candidate_peers(&t, 255), candidates[..2].to_vec());
    // The next candidate starts a ping to the new least-recently-seen entry.
    let outcome = t.insert(contact(candidates[2]), v4(3, 0, 0, 1), secs(103));
    assert_eq!(outcome, InsertOutcome::Pending { ping: entries[1] });
    check_invariants(&t);
}

#[test]
fn update_answers_the_ping_too() {
    let mut t = table(Config::default());
    let (entries, candidates) = fill_255(&mut t, 1);
    t.insert(contact(candidates[0]), v4(1, 0, 0, 1), secs(100));
    assert_eq!(
        t.insert(contact(entries[0]), unique_addr(0), secs(101)),
        InsertOutcome::Updated
    );
    assert_eq!(t.poll_timeout(), None);
    assert!(t.handle_timeout(secs(1000)).is_empty());
    assert!(t.contains(&entries[0]));
}

#[test]
fn failed_ping_evicts_and_promotes_the_oldest_candidate() {
    let mut t = table(eager());
    let (entries, candidates) = fill_255(&mut t, 3);
    assert_eq!(
        t.insert(contact(candidates[0]), v4(1, 0, 0, 1), secs(100)),
        InsertOutcome::Pending { ping: entries[0] }
    );
    t.insert(contact(candidates[1]), v4(2, 0, 0, 1), secs(101));
    t.insert(contact(candidates[2]), v4(3, 0, 0, 1), secs(102));
    // Seeing a newer candidate again does not make it older than the first.
    t.insert(contact(candidates[1]), v4(2, 0, 0, 1), secs(103));

    t.mark_seen(&entries[1], secs(103));
    let promoted = t.ping_failed(&entries[0], secs(104)).unwrap();
    assert_eq!(promoted.contact.peer, candidates[0]);
    assert_eq!(promoted.added, secs(100));
    assert_eq!(promoted.addr(), v4(1, 0, 0, 1));
    assert!(!t.contains(&entries[0]));
    assert!(t.contains(&candidates[0]));
    assert_eq!(t.len(), 20);
    assert_eq!(candidate_peers(&t, 255), vec![candidates[1], candidates[2]]);
    assert_eq!(t.poll_timeout(), None);
    assert_eq!(t.stats().evicted, 1);
    assert_eq!(t.stats().promoted, 1);
    // Promoted with an older last_seen than entries seen since, it goes ahead of them.
    let order = bucket_peers(&t, 255);
    assert_eq!(order[order.len() - 2..], [candidates[0], entries[1]]);
    check_invariants(&t);
}

#[test]
fn expired_ping_evicts() {
    let mut t = table(eager());
    let (entries, candidates) = fill_255(&mut t, 1);
    let start = secs(100);
    t.insert(contact(candidates[0]), v4(1, 0, 0, 1), start);
    let deadline = start + Duration::from_secs(10);
    assert_eq!(t.poll_timeout(), Some(deadline));
    assert!(
        t.handle_timeout(Instant::from_micros(deadline.as_micros() - 1))
            .is_empty()
    );
    assert!(t.contains(&entries[0]));
    assert_eq!(t.handle_timeout(deadline), vec![entries[0]]);
    assert!(!t.contains(&entries[0]));
    assert!(t.contains(&candidates[0]));
    assert_eq!(t.poll_timeout(), None);
    assert!(
        t.handle_timeout(deadline + Duration::from_secs(60))
            .is_empty()
    );
    check_invariants(&t);
}

#[test]
fn ping_timeout_is_configurable() {
    let config = Config {
        ping_timeout: Duration::from_secs(3),
        ..eager()
    };
    let mut t = table(config);
    let (_, candidates) = fill_255(&mut t, 1);
    t.insert(contact(candidates[0]), v4(1, 0, 0, 1), secs(100));
    assert_eq!(t.poll_timeout(), Some(secs(103)));
}

#[test]
fn failed_request_to_any_entry_evicts() {
    let mut t = table(eager());
    let (entries, candidates) = fill_255(&mut t, 1);
    t.insert(contact(candidates[0]), v4(1, 0, 0, 1), secs(100));
    // Not the entry being pinged: the ping stays outstanding.
    let promoted = t.ping_failed(&entries[5], secs(101)).unwrap();
    assert_eq!(promoted.contact.peer, candidates[0]);
    assert!(!t.contains(&entries[5]));
    assert_eq!(t.poll_timeout(), Some(secs(110)));
    // Without candidates, a failure just leaves a gap.
    assert_eq!(t.ping_failed(&entries[6], secs(102)), None);
    assert_eq!(t.len(), 19);
    check_invariants(&t);
}

#[test]
fn failed_candidate_is_forgotten() {
    let mut t = table(Config::default());
    let (_, candidates) = fill_255(&mut t, 2);
    t.insert(contact(candidates[0]), v4(1, 0, 0, 1), secs(100));
    t.insert(contact(candidates[1]), v4(2, 0, 0, 1), secs(100));
    assert_eq!(t.ping_failed(&candidates[0], secs(101)), None);
    assert_eq!(candidate_peers(&t, 255), vec![candidates[1]]);
}

#[test]
fn remove_forgets_without_promoting() {
    let mut t = table(Config::default());
    let (entries, candidates) = fill_255(&mut t, 2);
    t.insert(contact(candidates[0]), v4(1, 0, 0, 1), secs(100));
    t.insert(contact(candidates[1]), v4(2, 0, 0, 1), secs(100));
    let removed = t.remove(&entries[0]).unwrap();
    assert_eq!(removed.contact.peer, entries[0]);
    assert_eq!(
        t.poll_timeout(),
        None,
        "the ping to a removed entry is moot"
    );
    assert_eq!(t.len(), 19);
    assert_eq!(t.remove(&candidates[1]), None);
    assert_eq!(candidate_peers(&t, 255), vec![candidates[0]]);
    // A cached candidate seen again moves into the free slot, keeping its age.
    assert_eq!(
        t.insert(contact(candidates[0]), v4(1, 0, 0, 1), secs(200)),
        InsertOutcome::Inserted
    );
    let e = t.get(&candidates[0]).unwrap();
    assert_eq!((e.added, e.last_seen), (secs(100), secs(200)));
    assert!(t.candidates().next().is_none());
    check_invariants(&t);
}

// ---- replacement cache ------------------------------------------------------------------

#[test]
fn cached_candidate_is_refreshed_in_place() {
    let mut t = table(Config::default());
    let (_, candidates) = fill_255(&mut t, 2);
    t.insert(contact(candidates[0]), v4(1, 0, 0, 1), secs(100));
    t.insert(contact(candidates[1]), v4(2, 0, 0, 1), secs(101));
    assert_eq!(
        t.insert(contact(candidates[0]), v4(5, 0, 0, 1), secs(150)),
        InsertOutcome::Cached
    );
    t.mark_seen(&candidates[1], secs(160));
    let cached: Vec<_> = t.candidates().cloned().collect();
    assert_eq!(cached[0].contact.peer, candidates[0]);
    assert_eq!(
        (cached[0].addr(), cached[0].added, cached[0].last_seen),
        (v4(5, 0, 0, 1), secs(100), secs(150))
    );
    assert_eq!(cached[1].last_seen, secs(160));
    check_invariants(&t);
}

#[test]
fn full_cache_keeps_its_oldest_candidates() {
    let mut t = table(small(1, 2));
    let (entries, candidates) = fill_255(&mut t, 3);
    assert_eq!(
        t.insert(contact(candidates[0]), v4(1, 0, 0, 1), secs(100)),
        InsertOutcome::Pending { ping: entries[0] }
    );
    assert_eq!(
        t.insert(contact(candidates[1]), v4(2, 0, 0, 1), secs(101)),
        InsertOutcome::Cached
    );
    assert_eq!(
        t.insert(contact(candidates[2]), v4(3, 0, 0, 1), secs(102)),
        InsertOutcome::Dropped { ping: None }
    );
    assert_eq!(candidate_peers(&t, 255), candidates[..2].to_vec());
    // A dropped candidate still triggers a ping when none is outstanding.
    t.mark_seen(&entries[0], secs(103));
    let outcome = t.insert(contact(candidates[2]), v4(3, 0, 0, 1), secs(104));
    assert_eq!(
        outcome,
        InsertOutcome::Dropped {
            ping: Some(entries[0])
        }
    );
    assert_eq!(outcome.ping(), Some(entries[0]));
    assert_eq!(t.stats().dropped, 2);
    assert_eq!(t.stats().pings_started, 2);
    check_invariants(&t);
}

#[test]
fn promotion_skips_candidates_that_break_ip_limits() {
    let mut t = table(small(2, 4));
    let (entries, candidates) = fill_255(&mut t, 2);
    t.insert(contact(candidates[0]), v4(3, 0, 0, 1), secs(100));
    t.insert(contact(candidates[1]), v4(4, 0, 0, 1), secs(101));
    // entries[1] moves to the older candidate's address: that candidate can no longer join.
    assert_eq!(
        t.insert(contact(entries[1]), v4(3, 0, 0, 1), secs(102)),
        InsertOutcome::Updated
    );
    let promoted = t.ping_failed(&entries[0], secs(103)).unwrap();
    assert_eq!(promoted.contact.peer, candidates[1]);
    assert_eq!(candidate_peers(&t, 255), vec![candidates[0]]);
    // With nobody admissible left, the slot stays free.
    assert_eq!(t.ping_failed(&candidates[1], secs(104)), None);
    assert_eq!(t.len(), 1);
    check_invariants(&t);
}

#[test]
fn unpromotable_candidate_gives_way_in_a_full_cache() {
    let mut t = table(small(1, 1));
    let (entries, candidates) = fill_255(&mut t, 2);
    t.insert(contact(candidates[0]), v4(2, 0, 0, 1), secs(100));
    t.insert(contact(entries[0]), v4(2, 0, 0, 1), secs(101));
    assert_eq!(
        t.insert(contact(candidates[1]), v4(5, 0, 0, 1), secs(102)),
        InsertOutcome::Pending { ping: entries[0] }
    );
    assert_eq!(candidate_peers(&t, 255), vec![candidates[1]]);
    check_invariants(&t);
}

#[test]
fn zero_capacities_never_panic() {
    let mut t = table(small(0, 0));
    let peers = in_bucket(255, 3);
    for (i, p) in peers.iter().enumerate() {
        let outcome = t.insert(contact(*p), unique_addr(i), secs(1));
        assert_eq!(outcome, InsertOutcome::Dropped { ping: None });
    }
    assert!(t.is_empty());
    assert_eq!(t.poll_timeout(), None);
    assert!(t.closest(&t.local_key(), 5).is_empty());

    let mut t = table(small(1, 0));
    let (entries, candidates) = fill_255(&mut t, 1);
    let outcome = t.insert(contact(candidates[0]), v4(1, 0, 0, 1), secs(50));
    assert_eq!(
        outcome,
        InsertOutcome::Dropped {
            ping: Some(entries[0])
        }
    );
    assert_eq!(t.handle_timeout(secs(60)), vec![entries[0]]);
    assert!(t.is_empty());
    check_invariants(&t);
}

// ---- IP limits ----------------------------------------------------------------------------

#[test]
fn one_node_per_ip_in_a_bucket_but_not_across_buckets() {
    let mut t = table(Config::default());
    let a = in_bucket(255, 2);
    let b = in_bucket(254, 1);
    let ip = v4(192, 168, 1, 10);
    assert_eq!(
        t.insert(contact(a[0]), ip, secs(1)),
        InsertOutcome::Inserted
    );
    let other_port = SocketAddr::new(ip.ip(), 5000);
    assert_eq!(
        t.insert(contact(a[1]), other_port, secs(1)),
        InsertOutcome::Rejected(Rejection::SameIpInBucket)
    );
    assert_eq!(
        t.insert(contact(b[0]), ip, secs(1)),
        InsertOutcome::Inserted
    );
    assert_eq!(t.stats().rejected_same_ip_in_bucket, 1);
    check_invariants(&t);
}

#[test]
fn ipv4_24_limit_per_bucket() {
    let mut t = table(Config::default());
    let a = in_bucket(255, 3);
    let b = in_bucket(254, 1);
    assert_eq!(
        t.insert(contact(a[0]), v4(8, 8, 8, 1), secs(1)),
        InsertOutcome::Inserted
    );
    assert_eq!(
        t.insert(contact(a[1]), v4(8, 8, 8, 2), secs(1)),
        InsertOutcome::Inserted
    );
    assert_eq!(
        t.insert(contact(a[2]), v4(8, 8, 8, 3), secs(1)),
        InsertOutcome::Rejected(Rejection::IpLimitBucket)
    );
    assert_eq!(
        t.insert(contact(a[2]), v4(8, 8, 9, 3), secs(1)),
        InsertOutcome::Inserted
    );
    assert_eq!(
        t.insert(contact(b[0]), v4(8, 8, 8, 3), secs(1)),
        InsertOutcome::Inserted
    );
    check_invariants(&t);
}

#[test]
fn ipv4_16_limit_across_the_table() {
    let mut t = table(Config::default());
    // Spread over buckets 255 and 254, each node in its own /24.
    let mut peers = in_bucket(255, 6);
    peers.extend(in_bucket(254, 6));
    let mut outcomes = Vec::new();
    for (i, p) in peers.iter().enumerate() {
        outcomes.push(t.insert(contact(*p), v4(44, 1, i as u8, 1), secs(1)));
    }
    let inserted = outcomes
        .iter()
        .filter(|o| **o == InsertOutcome::Inserted)
        .count();
    assert_eq!(inserted, 10);
    assert_eq!(
        outcomes[10..],
        [
            InsertOutcome::Rejected(Rejection::IpLimitTable),
            InsertOutcome::Rejected(Rejection::IpLimitTable)
        ]
    );
    assert_eq!(t.stats().rejected(Rejection::IpLimitTable), 2);
    // Another /16 is fine.
    assert_eq!(
        t.insert(contact(peers[11]), v4(44, 2, 0, 1), secs(1)),
        InsertOutcome::Inserted
    );
    // Removing one frees a slot.
    t.remove(&peers[0]);
    assert_eq!(
        t.insert(contact(peers[10]), v4(44, 1, 200, 1), secs(1)),
        InsertOutcome::Inserted
    );
    check_invariants(&t);
}

#[test]
fn ipv6_limits() {
    let mut t = table(Config::default());
    let a = in_bucket(255, 4);
    assert_eq!(
        t.insert(contact(a[0]), v6("2001:db8:1::1"), secs(1)),
        InsertOutcome::Inserted
    );
    assert_eq!(
        t.insert(contact(a[1]), v6("2001:db8:1::1"), secs(1)),
        InsertOutcome::Rejected(Rejection::SameIpInBucket)
    );
    assert_eq!(
        t.insert(contact(a[1]), v6("2001:db8:1:ff::2"), secs(1)),
        InsertOutcome::Inserted
    );
    assert_eq!(
        t.insert(contact(a[2]), v6("2001:db8:1:77::3"), secs(1)),
        InsertOutcome::Rejected(Rejection::IpLimitBucket)
    );
    assert_eq!(
        t.insert(contact(a[2]), v6("2001:db8:2::3"), secs(1)),
        InsertOutcome::Inserted
    );

    // /32 across the table.
    let mut t = table(Config::default());
    let mut peers = in_bucket(255, 6);
    peers.extend(in_bucket(254, 6));
    let inserted = peers
        .iter()
        .enumerate()
        .filter(|(i, p)| {
            let addr = v6(&format!("2001:db8:{i:x}::1"));
            t.insert(contact(**p), addr, secs(1)) == InsertOutcome::Inserted
        })
        .count();
    assert_eq!(inserted, 10);
    check_invariants(&t);
}

#[test]
fn ipv4_mapped_ipv6_counts_as_ipv4() {
    let mut t = table(Config::default());
    let a = in_bucket(255, 4);
    assert_eq!(
        t.insert(contact(a[0]), v4(9, 9, 9, 9), secs(1)),
        InsertOutcome::Inserted
    );
    assert_eq!(
        t.insert(contact(a[1]), v6("::ffff:9.9.9.9"), secs(1)),
        InsertOutcome::Rejected(Rejection::SameIpInBucket)
    );
    assert_eq!(
        t.insert(contact(a[1]), v6("::ffff:9.9.9.10"), secs(1)),
        InsertOutcome::Inserted
    );
    assert_eq!(
        t.insert(contact(a[2]), v4(9, 9, 9, 11), secs(1)),
        InsertOutcome::Rejected(Rejection::IpLimitBucket)
    );
    // Table-wide, mapped and plain addresses share one /16 count.
    let mut t = table(Config::default());
    let mut peers = in_bucket(255, 6);
    peers.extend(in_bucket(254, 6));
    for (i, p) in peers.iter().enumerate() {
        let addr = if i % 2 == 0 {
            v4(9, 9, i as u8, 1)
        } else {
            v6(&format!("::ffff:9.9.{i}.1"))
        };
        t.insert(contact(*p), addr, secs(1));
    }
    assert_eq!(t.len(), 10);
    check_invariants(&t);
}

#[test]
fn loopback_is_exempt_but_private_ranges_are_not() {
    let mut t = table(Config::default());
    let peers = in_bucket(255, 24);
    let loopbacks = [
        "127.0.0.1:4000",
        "127.0.0.1:4001",
        "127.0.0.1:4002",
        "127.9.9.9:4000",
        "[::1]:4000",
        "[::1]:4001",
        "[::ffff:127.0.0.1]:4000",
    ];
    for (i, p) in peers.iter().take(20).enumerate() {
        let addr: SocketAddr = loopbacks[i % loopbacks.len()].parse().unwrap();
        let addr = SocketAddr::new(addr.ip(), 4000 + i as u16);
        assert_eq!(
            t.insert(contact(*p), addr, secs(1)),
            InsertOutcome::Inserted,
            "{addr}"
        );
    }
    assert_eq!(t.len(), 20);
    // Candidates on the loopback are not limited either.
    for p in &peers[20..] {
        let outcome = t.insert(contact(*p), "127.0.0.1:9000".parse().unwrap(), secs(2));
        assert!(matches!(
            outcome,
            InsertOutcome::Pending { .. } | InsertOutcome::Cached
        ));
    }
    assert_eq!(t.candidates().count(), 4);

    let mut t = table(Config::default());
    let a = in_bucket(255, 3);
    assert_eq!(
        t.insert(contact(a[0]), v4(192, 168, 0, 5), secs(1)),
        InsertOutcome::Inserted
    );
    assert_eq!(
        t.insert(contact(a[1]), "192.168.0.5:4001".parse().unwrap(), secs(1)),
        InsertOutcome::Rejected(Rejection::SameIpInBucket)
    );
    assert_eq!(
        t.insert(contact(a[1]), v4(10, 0, 0, 1), secs(1)),
        InsertOutcome::Inserted
    );
    assert_eq!(
        t.insert(contact(a[2]), v4(10, 0, 0, 1), secs(1)),
        InsertOutcome::Rejected(Rejection::SameIpInBucket)
    );
    check_invariants(&t);
}

#[test]
fn limits_can_be_turned_off() {
    let config = Config {
        ip_limits: false,
        ..Config::default()
    };
    let mut t = table(config);
    let peers = in_bucket(255, 20);
    for p in &peers {
        assert_eq!(
            t.insert(contact(*p), v4(6, 6, 6, 6), secs(1)),
            InsertOutcome::Inserted
        );
    }
    assert_eq!(t.len(), 20);
    check_invariants(&t);
}

#[test]
fn address_change_must_pass_the_limits() {
    let mut t = table(Config::default());
    let a = in_bucket(255, 3);
    t.insert(contact(a[0]), v4(1, 1, 1, 1), secs(1));
    t.insert(contact(a[1]), v4(1, 1, 1, 2), secs(2));
    t.insert(contact(a[2]), v4(9, 9, 9, 9), secs(3));
    assert_eq!(
        t.insert(contact(a[2]), v4(1, 1, 1, 3), secs(4)),
        InsertOutcome::Rejected(Rejection::IpLimitBucket)
    );
    assert_eq!(
        t.insert(contact(a[2]), v4(1, 1, 1, 1), secs(4)),
        InsertOutcome::Rejected(Rejection::SameIpInBucket)
    );
    let e = t.get(&a[2]).unwrap();
    assert_eq!((e.addr(), e.last_seen), (v4(9, 9, 9, 9), secs(3)));
    assert_eq!(bucket_peers(&t, 255), a);
    // Moving within its own /24, or to the same IP on another port, is fine.
    assert_eq!(
        t.insert(contact(a[1]), v4(1, 1, 1, 7), secs(5)),
        InsertOutcome::Updated
    );
    let moved = SocketAddr::new(v4(9, 9, 9, 9).ip(), 5555);
    assert_eq!(
        t.insert(contact(a[2]), moved, secs(6)),
        InsertOutcome::Updated
    );
    assert_eq!(t.get(&a[2]).unwrap().addr(), moved);
    check_invariants(&t);
}

#[test]
fn address_change_within_a_full_16_is_allowed() {
    let mut t = table(Config::default());
    let mut peers = in_bucket(255, 5);
    peers.extend(in_bucket(254, 5));
    for (i, p) in peers.iter().enumerate() {
        t.insert(contact(*p), v4(50, 50, i as u8, 1), secs(1));
    }
    assert_eq!(t.len(), 10);
    assert_eq!(
        t.insert(contact(peers[0]), v4(50, 50, 100, 1), secs(2)),
        InsertOutcome::Updated
    );
    check_invariants(&t);
}

#[test]
fn sybil_burst_from_one_16_gets_at_most_10_entries() {
    let mut t = table(Config::default());
    // Some honest nodes first, each in its own /16.
    let honest: Vec<PeerId> = (1_000_000u64..1_000_060).map(peer).collect();
    for (i, p) in honest.iter().enumerate() {
        t.insert(contact(*p), unique_addr(i), secs(1));
    }
    let before: Vec<PeerId> = t.iter().map(|e| e.contact.peer).collect();
    // 1,000 Sybils from 10.7.0.0/16, every one at its own IP, over all 256 /24s.
    let sybils: Vec<PeerId> = (1u64..=1000).map(peer).collect();
    for (i, p) in sybils.iter().enumerate() {
        let addr = v4(10, 7, (i % 256) as u8, (i / 256 + 1) as u8);
        t.insert(contact(*p), addr, secs(2));
        check_limits_only(&t);
    }
    let sybil_net = net(IpAddr::V4(Ipv4Addr::new(10, 7, 0, 0)), 16, 32);
    let from_16 = |t: &RoutingTable| {
        t.iter()
            .filter(|e| limited_ip(&e.addr()).map(|ip| net(ip, 16, 32)) == Some(sybil_net))
            .count()
    };
    assert!(from_16(&t) <= 10, "{} Sybils in the table", from_16(&t));
    // Ping-before-evict: no honest entry was displaced by the burst.
    for p in &before {
        assert!(t.contains(p));
    }
    assert_eq!(t.len(), before.len() + from_16(&t));
    assert!(t.stats().rejected(Rejection::IpLimitTable) > 900);
    // Even as every honest node fails and candidates are promoted, the limit holds.
    for p in &honest {
        t.ping_failed(p, secs(3));
        assert!(from_16(&t) <= 10);
    }
    assert!(t.handle_timeout(secs(1000)).len() <= BUCKETS);
    assert!(from_16(&t) <= 10);
    check_invariants(&t);
}

/// The cheap part of [`check_invariants`], for loops.
fn check_limits_only(t: &RoutingTable) {
    let mut per_16: BTreeMap<(u8, u128), usize> = BTreeMap::new();
    for e in t.iter() {
        if let Some(ip) = limited_ip(&e.addr()) {
            *per_16.entry(net(ip, 16, 32)).or_default() += 1;
        }
    }
    assert!(
        per_16
            .values()
            .all(|&n| n <= t.config.max_per_ipv4_16_in_table)
    );
}

// ---- queries ------------------------------------------------------------------------------

#[test]
fn closest_is_exact() {
    let mut t = table(Config::default());
    let peers: Vec<PeerId> = (1u64..=300).map(peer).collect();
    for (i, p) in peers.iter().enumerate() {
        t.insert(contact(*p), unique_addr(i), secs(1));
    }
    assert!(t.len() > 50);
    let mut targets = vec![t.local_key(), Key([0; 32]), Key([0xff; 32])];
    targets.extend(peers.iter().take(20).map(Key::for_peer));
    targets.extend(
        (0..BUCKETS)
            .step_by(17)
            .map(|i| t.local_key().random_in_bucket(i, [7; 32])),
    );
    for target in &targets {
        for n in [0, 1, 3, 20, 21, 1000] {
            check_closest(&t, target, n);
        }
    }
    assert!(t.closest(&t.local_key(), 0).is_empty());
    assert_eq!(t.closest(&Key([1; 32]), 10_000).len(), t.len());
}

#[test]
fn bucket_fill_lists_non_empty_buckets() {
    let mut t = table(Config::default());
    assert!(t.bucket_fill().is_empty());
    let a = in_bucket(255, 3);
    let b = in_bucket(253, 1);
    for (i, p) in a.iter().chain(&b).enumerate() {
        t.insert(contact(*p), unique_addr(i), secs(1));
    }
    assert_eq!(t.bucket_fill(), vec![(253, 1), (255, 3)]);
}

#[test]
fn stale_buckets_run_from_the_lowest_non_empty_one() {
    let refresh = Duration::from_secs(600);
    let mut t = table(Config::default());
    assert!(t.stale_buckets(secs(10_000), refresh).is_empty());

    let a = in_bucket(255, 1);
    let b = in_bucket(252, 1);
    t.insert(contact(a[0]), unique_addr(0), secs(100));
    assert!(t.stale_buckets(secs(100), refresh).is_empty());
    assert_eq!(t.stale_buckets(secs(700), refresh), vec![255]);

    t.insert(contact(b[0]), unique_addr(1), secs(100));
    // 253 and 254 were never active: stale at once.
    assert_eq!(t.stale_buckets(secs(100), refresh), vec![253, 254]);
    t.mark_bucket_refreshed(253, secs(200));
    t.mark_bucket_refreshed(9999, secs(200));
    assert_eq!(t.stale_buckets(secs(699), refresh), vec![254]);
    assert_eq!(t.stale_buckets(secs(700), refresh), vec![252, 254, 255]);
    // An answer counts as activity.
    t.mark_seen(&a[0], secs(650));
    assert_eq!(t.stale_buckets(secs(800), refresh), vec![252, 253, 254]);
}

#[test]
fn rejections_read_well() {
    let texts = [
        Rejection::OwnKey,
        Rejection::SameIpInBucket,
        Rejection::IpLimitBucket,
        Rejection::IpLimitTable,
    ]
    .map(|r| r.to_string());
    assert_eq!(texts[0], "the contact is this node itself");
    assert!(texts[2].contains("/24"));
    assert!(texts[3].contains("/16"));
    let unique: BTreeSet<_> = texts.iter().collect();
    assert_eq!(unique.len(), 4);
}

#[test]
fn default_config_matches_the_design() {
    let c = Config::default();
    assert_eq!((c.k, c.replacement_cache), (20, 20));
    assert_eq!(
        (
            c.max_per_ipv4_24_in_bucket,
            c.max_per_ipv4_16_in_table,
            c.max_per_ipv6_48_in_bucket,
            c.max_per_ipv6_32_in_table
        ),
        (2, 10, 2, 10)
    );
    assert!(c.ip_limits);
    assert_eq!(c.ping_timeout, Duration::from_secs(10));
}

// ---- properties ---------------------------------------------------------------------------

/// Peers the property tests draw from.
static POOL: LazyLock<Vec<PeerId>> = LazyLock::new(|| (1u64..=48).map(peer).collect());

/// Addresses the property tests draw from: few enough to collide on IPs and prefixes.
static ADDRS: LazyLock<Vec<SocketAddr>> = LazyLock::new(|| {
    let mut addrs = Vec::new();
    for a in [10u8, 11] {
        for b in 0u8..2 {
            for c in 0u8..3 {
                for d in 1u8..3 {
                    addrs.push(v4(a, b, c, d));
                }
            }
        }
    }
    for text in [
        "[::ffff:10.0.0.1]:4000",
        "[::ffff:10.0.0.9]:4000",
        "[::ffff:11.1.2.9]:4000",
        "127.0.0.1:4000",
        "127.0.0.1:4001",
        "127.3.0.1:4000",
        "[::1]:4000",
        "[::ffff:127.0.0.1]:4000",
        "[2001:db8::1]:4000",
        "[2001:db8::2]:4000",
        "[2001:db8:0:1::1]:4000",
        "[2001:db8:1::1]:4000",
        "[2001:db8:1:1::1]:4000",
        "[2001:db9::1]:4000",
        "[2001:db9:5::1]:4000",
        "10.0.0.1:5000",
    ] {
        addrs.push(text.parse().unwrap());
    }
    addrs
});

#[derive(Debug, Clone)]
enum Op {
    Insert { peer: usize, addr: usize },
    InsertOwn,
    Seen { peer: usize },
    Failed { peer: usize },
    Remove { peer: usize },
    Advance { millis: u64 },
    Timeout,
    Closest { target: [u8; 32], n: usize },
    ClosestToPeer { peer: usize, n: usize },
}

fn op() -> impl Strategy<Value = Op> {
    let peers = 0..POOL.len();
    let addrs = 0..ADDRS.len();
    prop_oneof![
        8 => (peers.clone(), addrs).prop_map(|(peer, addr)| Op::Insert { peer, addr }),
        1 => Just(Op::InsertOwn),
        2 => peers.clone().prop_map(|peer| Op::Seen { peer }),
        2 => peers.clone().prop_map(|peer| Op::Failed { peer }),
        1 => peers.clone().prop_map(|peer| Op::Remove { peer }),
        3 => (0u64..4000).prop_map(|millis| Op::Advance { millis }),
        2 => Just(Op::Timeout),
        1 => (any::<[u8; 32]>(), 0usize..12).prop_map(|(target, n)| Op::Closest { target, n }),
        1 => (peers, 0usize..12).prop_map(|(peer, n)| Op::ClosestToPeer { peer, n }),
    ]
}

fn config() -> impl Strategy<Value = Config> {
    (
        (0usize..5, 0usize..4),
        (0usize..3, 0usize..5, 0usize..3, 0usize..5),
        any::<bool>(),
        (1u64..6, 0u64..6000),
    )
        .prop_map(
            |((k, cache), (p24, p16, p48, p32), ip_limits, (timeout, stale))| Config {
                k,
                replacement_cache: cache,
                max_per_ipv4_24_in_bucket: p24,
                max_per_ipv4_16_in_table: p16,
                max_per_ipv6_48_in_bucket: p48,
                max_per_ipv6_32_in_table: p32,
                ip_limits,
                ping_timeout: Duration::from_secs(timeout),
                stale_after: Duration::from_millis(stale),
            },
        )
}

/// Everything observable about a table, for comparisons.
fn snapshot(t: &RoutingTable) -> (Vec<Entry>, Vec<Entry>, Option<Instant>) {
    (
        t.iter().cloned().collect(),
        t.candidates().cloned().collect(),
        t.poll_timeout(),
    )
}

/// Applies `op`, checking what each call promises about its own result.
fn apply(t: &mut RoutingTable, now: &mut Instant, op: &Op) {
    let anywhere = |t: &RoutingTable, p: &PeerId| {
        t.contains(p) || t.candidates().any(|c| c.contact.peer == *p)
    };
    match *op {
        Op::Insert { peer, addr } => {
            let (p, addr) = (POOL[peer], ADDRS[addr]);
            let before = snapshot(t);
            let was_cached = t.candidates().any(|c| c.contact.peer == p);
            let outcome = t.insert(contact(p), addr, *now);
            match &outcome {
                InsertOutcome::Inserted | InsertOutcome::Updated => {
                    let e = t.get(&p).expect("inserted entries are in the table");
                    assert_eq!((e.addr(), e.last_seen), (addr, *now));
                    assert_eq!(
                        t.buckets
                            .get(t.index_of(&p).unwrap())
                            .unwrap()
                            .entries
                            .last()
                            .unwrap()
                            .contact
                            .peer,
                        p
                    );
                }
                InsertOutcome::Pending { ping } => {
                    assert!(t.contains(ping));
                    assert!(t.candidates().any(|c| c.contact.peer == p));
                    assert_eq!(
                        t.poll_timeout().map(|d| d <= *now + t.config.ping_timeout),
                        Some(true)
                    );
                }
                InsertOutcome::Cached => {
                    assert!(t.candidates().any(|c| c.contact.peer == p));
                }
                InsertOutcome::Dropped { ping } => {
                    assert!(!was_cached && !anywhere(t, &p));
                    if let Some(ping) = ping {
                        assert!(t.contains(ping));
                    }
                }
                InsertOutcome::Rejected(reason) => {
                    assert_ne!(*reason, Rejection::OwnKey);
                    assert!(t.config.ip_limits, "rejected with limits off: {reason}");
                    assert_eq!(snapshot(t), before, "a rejection changed the table");
                }
            }
        }
        Op::InsertOwn => {
            let before = snapshot(t);
            let outcome = t.insert(contact(local()), ADDRS[0], *now);
            assert_eq!(outcome, InsertOutcome::Rejected(Rejection::OwnKey));
            assert_eq!(snapshot(t), before);
        }
        Op::Seen { peer } => {
            let p = POOL[peer];
            let was_in = t.contains(&p);
            t.mark_seen(&p, *now);
            assert_eq!(t.contains(&p), was_in);
            if was_in {
                assert_eq!(t.get(&p).unwrap().last_seen, *now);
            }
        }
        Op::Failed { peer } => {
            let p = POOL[peer];
            let len = t.len();
            let was_in = t.contains(&p);
            let promoted = t.ping_failed(&p, *now);
            assert!(!anywhere(t, &p));
            if let Some(e) = &promoted {
                assert!(was_in);
                assert_eq!(t.get(&e.contact.peer), Some(e));
                assert_eq!(t.len(), len);
            } else {
                assert_eq!(t.len(), len - usize::from(was_in));
            }
        }
        Op::Remove { peer } => {
            let p = POOL[peer];
            let was_in = t.contains(&p);
            let removed = t.remove(&p);
            assert_eq!(removed.is_some(), was_in);
            assert!(!anywhere(t, &p));
        }
        Op::Advance { millis } => *now = *now + Duration::from_millis(millis),
        Op::Timeout => {
            let due = t.poll_timeout().is_some_and(|d| d <= *now);
            let evicted = t.handle_timeout(*now);
            assert_eq!(due, !evicted.is_empty());
            for p in &evicted {
                assert!(!t.contains(p));
            }
            assert!(t.poll_timeout().is_none_or(|d| d > *now));
        }
        Op::Closest { target, n } => check_closest(t, &Key(target), n),
        Op::ClosestToPeer { peer, n } => {
            check_closest(t, &Key::for_peer(&POOL[peer]), n);
            check_closest(t, &t.local_key(), n);
        }
    }
}

proptest! {
    #[test]
    fn invariants_hold_under_any_operations(
        config in config(),
        ops in proptest::collection::vec(op(), 1..200),
    ) {
        let mut t = RoutingTable::new(local(), config);
        let mut now = secs(1);
        for op in &ops {
            apply(&mut t, &mut now, op);
            check_invariants(&t);
        }
        for n in [0, 1, 5, 100] {
            check_closest(&t, &t.local_key(), n);
        }
    }

    #[test]
    fn same_inputs_give_the_same_table(
        config in config(),
        ops in proptest::collection::vec(op(), 1..100),
    ) {
        let (mut a, mut b) = (RoutingTable::new(local(), config.clone()), RoutingTable::new(local(), config));
        let (mut now_a, mut now_b) = (secs(1), secs(1));
        for op in &ops {
            apply(&mut a, &mut now_a, op);
            apply(&mut b, &mut now_b, op);
        }
        prop_assert_eq!(snapshot(&a), snapshot(&b));
        prop_assert_eq!(a.stats(), b.stats());
        prop_assert_eq!(a.bucket_fill(), b.bucket_fill());
    }

    #[test]
    fn many_peers_fill_buckets_within_limits(
        seeds in proptest::collection::vec(any::<u64>(), 1..120),
        ips in proptest::collection::vec((0u8..4, 0u8..4, 0u8..4), 120),
    ) {
        let mut t = table(small(4, 2));
        for (i, seed) in seeds.iter().enumerate() {
            let (b, c, d) = ips[i];
            t.insert(contact(peer(*seed)), v4(30, b, c, d), secs(i as u64));
        }
        check_invariants(&t);
        let target = Key::for_peer(&peer(seeds[0]));
        check_closest(&t, &target, 7);
    }
}

#[test]
fn an_entry_lists_its_confirmed_address_first_and_once() {
    let mut t = table(Config::default());
    let p = in_bucket(255, 1)[0];
    let (confirmed, other) = (v4(9, 9, 9, 9), v4(8, 8, 8, 8));
    // Announced second: moved to the front, not repeated.
    let mut c = contact(p);
    c.addrs = smallvec::smallvec![other, confirmed];
    assert_eq!(t.insert(c, confirmed, secs(1)), InsertOutcome::Inserted);
    let e = t.get(&p).unwrap();
    assert_eq!(e.addr(), confirmed);
    assert_eq!(e.contact.addrs.to_vec(), vec![confirmed, other]);

    // Not announced at all, with the announced list full: it goes first, the list stays bounded.
    let moved = v4(9, 9, 9, 10);
    let mut c = contact(p);
    c.addrs = (1..=MAX_CONTACT_ADDRS as u8)
        .map(|i| v4(7, 7, 7, i))
        .collect();
    assert_eq!(t.insert(c, moved, secs(2)), InsertOutcome::Updated);
    let e = t.get(&p).unwrap();
    assert_eq!(e.addr(), moved);
    assert_eq!(e.contact.addrs.len(), MAX_CONTACT_ADDRS);
    check_invariants(&t);
}

//! Kademlia at scale, in virtual time: the real spore-core nodes, joined through three bootstrap
//! nodes, must find the true k closest nodes for nearly every random key.

#![allow(clippy::unwrap_used)] // helpers of tests; a panic is how they fail

use std::time::Duration;

use bytes::Bytes;
use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use spore_core::kad::record::ValueRecord;
use spore_core::kad::{self, Key, QueryId, QueryResult};
use spore_core::node::Event;
use spore_core::wire::Message;
use spore_core::{Keypair, PeerId};
use spore_sim::{NodeIndex, Sim, SimConfig};

/// Builds a network of `n` nodes that joined one by one through nodes 0..3.
fn joined_network(n: usize, seed: u64) -> Sim {
    let mut config = SimConfig {
        seed,
        nodes: n,
        event_log: 512,
        ..SimConfig::default()
    };
    // Kademlia keeps its own liveness checks; periodic pings would only add traffic here.
    config.node.ping.interval = None;
    // Peer exchange is not part of what these tests measure; it only adds signature checks.
    config.node.pex.enabled = false;
    let mut sim = Sim::new(config).unwrap();
    for i in 0..3u32 {
        for j in (i + 1)..3 {
            sim.connect(NodeIndex(i), NodeIndex(j)).unwrap();
        }
    }
    sim.run_for(Duration::from_secs(1));
    for i in 3..n as u32 {
        sim.connect(NodeIndex(i), NodeIndex(i % 3)).unwrap();
        sim.run_for(Duration::from_millis(20));
    }
    // Let bootstrap lookups and bucket refreshes finish.
    sim.run_for(Duration::from_secs(120));
    sim
}

fn query_result(sim: &Sim, node: NodeIndex, id: QueryId) -> Option<(QueryResult, kad::QueryStats)> {
    sim.event_log(node).iter().find_map(|(_, e)| match e {
        Event::Kad(kad::Event::QueryDone {
            id: done,
            result,
            stats,
        }) if *done == id => Some((result.clone(), *stats)),
        _ => None,
    })
}

fn percentile(sorted: &[u32], p: f64) -> u32 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[test]
fn lookups_find_the_true_k_closest() {
    // 1,000 nodes in an optimized build (CI runs it so); a debug build runs 300 to stay quick.
    let default = if cfg!(debug_assertions) { 300 } else { 1000 };
    let n: usize = std::env::var("KAD_NODES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default);
    let mut sim = joined_network(n, 7);
    let ids: Vec<PeerId> = sim.indices().map(|i| sim.peer_id(i)).collect();
    let mut rng = ChaCha20Rng::seed_from_u64(99);
    if std::env::var("KAD_DEBUG").is_ok() {
        let node = sim.node(NodeIndex(5));
        println!(
            "node 5 kad stats {:?} table {}",
            node.kad().stats(),
            node.kad().table().len()
        );
        let t = Key([3; 32]);
        let got: Vec<PeerId> = node
            .kad()
            .table()
            .closest(&t, 20)
            .iter()
            .map(|e| e.contact.peer)
            .collect();
        let mut all: Vec<PeerId> = node.kad().table().iter().map(|e| e.contact.peer).collect();
        all.sort_by_key(|p| t.distance(&Key::for_peer(p)));
        all.truncate(20);
        println!("table closest correct: {}", got == all);
        println!("metrics {:?}", sim.metrics());
    }
    let lookups = 200;
    let (mut exact, mut hops, mut requests) = (0, Vec::new(), Vec::new());
    for _ in 0..lookups {
        let origin = NodeIndex(rng.next_u32() % n as u32);
        let mut target = [0u8; 32];
        rng.fill_bytes(&mut target);
        let target = Key(target);
        let id = sim
            .command(origin, |node, now| node.find_node(now, target))
            .unwrap();
        sim.run_for(Duration::from_secs(30));
        let Some((result, stats)) = query_result(&sim, origin, id) else {
            let node = sim.node(origin);
            panic!(
                "lookup did not finish: table {} running {} kad {:?} metrics {:?}",
                node.kad().table().len(),
                node.kad().running_queries(),
                node.kad().stats(),
                sim.metrics()
            );
        };
        let QueryResult::FindNode { closest } = result else {
            panic!("wrong result")
        };
        let mut truth: Vec<PeerId> = ids
            .iter()
            .copied()
            .filter(|p| *p != sim.peer_id(origin))
            .collect();
        truth.sort_by_key(|p| target.distance(&Key::for_peer(p)));
        truth.truncate(20);
        let found: Vec<PeerId> = closest.iter().map(|c| c.peer).collect();
        if found == truth {
            exact += 1;
        } else if std::env::var("KAD_DEBUG").is_ok() {
            let common = found.iter().filter(|p| truth.contains(p)).count();
            println!(
                "found {} of which {common} in truth; first found {:?} truth {:?}",
                found.len(),
                found.first(),
                truth.first()
            );
        }
        hops.push(stats.hops);
        requests.push(stats.requests);
    }
    hops.sort();
    requests.sort();
    let rate = exact as f64 / lookups as f64;
    println!(
        "{n} nodes, {lookups} lookups: exact k closest {:.1} %, hops p50 {} p99 {}, requests p50 {} p99 {}",
        rate * 100.0,
        percentile(&hops, 0.5),
        percentile(&hops, 0.99),
        percentile(&requests, 0.5),
        percentile(&requests, 0.99),
    );
    assert!(
        rate >= 0.99,
        "only {:.1} % of lookups found the true k closest",
        rate * 100.0
    );
    let fill: usize = sim.indices().map(|i| sim.node(i).kad().table().len()).sum();
    println!("mean routing-table size {:.1}", fill as f64 / n as f64);
}

fn get_value(
    sim: &mut Sim,
    reader: NodeIndex,
    publisher: PeerId,
    name: &str,
) -> Option<ValueRecord> {
    let id = sim
        .command(reader, |node, now| node.get_value(now, publisher, name))
        .unwrap();
    sim.run_for(Duration::from_secs(30));
    match query_result(sim, reader, id) {
        Some((QueryResult::GetValue { record, .. }, _)) => record,
        other => panic!("get_value did not finish: {other:?}"),
    }
}

/// Re-encodes `record` with some of its bytes replaced: the only way to build a record its
/// publisher never signed, as a forger would.
fn patched(record: &ValueRecord, patch: impl FnOnce(&mut Vec<u8>)) -> ValueRecord {
    let mut bytes = postcard::to_allocvec(record).unwrap();
    patch(&mut bytes);
    postcard::from_bytes(&bytes).unwrap()
}

#[test]
fn forged_unsigned_and_stale_answers_change_no_get_result() {
    let mut sim = joined_network(60, 11);
    let publisher = NodeIndex(7);
    let publisher_id = sim.peer_id(publisher);
    let put = |sim: &mut Sim, value: &'static [u8]| {
        sim.command(publisher, |node, now| {
            node.put_value(now, "news", Bytes::from_static(value))
        })
        .unwrap();
        sim.run_for(Duration::from_secs(30));
    };
    put(&mut sim, b"old");
    let stale = get_value(&mut sim, NodeIndex(20), publisher_id, "news").unwrap();
    sim.run_for(Duration::from_secs(2));
    put(&mut sim, b"new");
    let good = get_value(&mut sim, NodeIndex(21), publisher_id, "news").unwrap();
    assert_eq!(good.value().as_ref(), b"new");
    assert!(good.seq() > stale.seq());

    // A forgery: the real publisher's id on a record signed by someone else.
    let liar = Keypair::from_secret_bytes([66; 32]);
    let lie = ValueRecord::new(
        &liar,
        "news",
        Bytes::from_static(b"evil"),
        good.seq() + 100,
        good.expires(),
    );
    let forged = patched(&lie, |b| b[..32].copy_from_slice(publisher_id.as_bytes()));
    // An unsigned record: the right fields, an all-zero signature.
    let unsigned = patched(&good, |b| {
        let n = b.len();
        b[n - 64..].fill(0);
    });
    let lies = [forged, unsigned, stale.clone()];

    // The adversaries: the ten nodes closest to the key (they hold the record) and five more.
    let key = ValueRecord::key_for(&publisher_id, "news");
    let mut by_distance: Vec<NodeIndex> = sim.indices().collect();
    by_distance.sort_by_key(|i| key.distance(&Key::for_peer(&sim.peer_id(*i))));
    let adversaries: Vec<NodeIndex> = by_distance
        .iter()
        .take(10)
        .chain(by_distance.iter().skip(30).take(5))
        .copied()
        .collect();
    for (n, &a) in adversaries.iter().enumerate() {
        let lie = lies[n % lies.len()].clone();
        sim.set_tamper(
            a,
            Box::new(move |_, msg| {
                if let Message::Kad(kad::Message::Response {
                    response: kad::Response::Value { record, .. },
                    ..
                }) = msg
                {
                    *record = Some(lie.clone());
                }
                true
            }),
        );
    }

    let honest: Vec<NodeIndex> = sim
        .indices()
        .filter(|i| !adversaries.contains(i) && *i != publisher)
        .collect();
    let before: u64 = honest
        .iter()
        .map(|i| sim.node(*i).kad().stats().invalid_records)
        .sum();
    for &reader in &honest {
        let got = get_value(&mut sim, reader, publisher_id, "news");
        assert_eq!(got.as_ref(), Some(&good), "node {reader} was misled");
    }
    let after: u64 = honest
        .iter()
        .map(|i| sim.node(*i).kad().stats().invalid_records)
        .sum();
    assert!(after > before, "the lies were seen and rejected");
}

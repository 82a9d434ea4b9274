//! Kademlia at scale, in virtual time: the real spore-core nodes, joined through three bootstrap
//! nodes, must find the true k closest nodes for nearly every random key.

#![allow(clippy::unwrap_used)] // helpers of tests; a panic is how they fail

use std::time::Duration;

use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use spore_core::kad::{self, Key, QueryResult};
use spore_core::node::Event;
use spore_core::{PeerId, kad::QueryId};
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
fn lookups_find_the_true_k_closest_in_1000_nodes() {
    let n: usize = std::env::var("KAD_NODES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
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

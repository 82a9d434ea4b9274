//! Kademlia over real QUIC connections: 30 nodes on 127.0.0.1, all bootstrapped from one.

#![allow(clippy::unwrap_used)] // helpers of tests; a panic is how they fail

use std::time::Duration;

use bytes::Bytes;
use spore_core::kad::QueryResult;
use spore_core::pow::{Difficulty, Stamp};
use spore_core::{Keypair, PeerId};
use spore_net::{NetConfig, NodeHandle};
use tokio::task::JoinSet;

const DIFFICULTY: Difficulty = Difficulty(8);

async fn start(bootstrap: Option<&NodeHandle>) -> NodeHandle {
    let keypair = Keypair::generate(&mut rand_core::OsRng);
    let stamp = Stamp::mint(&keypair.peer_id(), DIFFICULTY);
    let mut config = NetConfig {
        listen: vec!["127.0.0.1:0".parse().unwrap()],
        ..NetConfig::default()
    };
    config.node.difficulty = DIFFICULTY;
    config.node.ping.interval = None;
    if let Some(b) = bootstrap {
        config.bootstrap = vec![(b.peer_id(), b.listen_addrs()[0])];
    }
    spore_net::start(keypair, stamp, config).await.unwrap().0
}

async fn wait_bootstrapped(nodes: &[NodeHandle]) {
    for _ in 0..500 {
        let mut all = true;
        for n in nodes {
            all &= n.status().await.unwrap().dht.bootstrapped;
        }
        if all {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("not every node bootstrapped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_nodes_find_each_other_and_share_values() {
    let first = start(None).await;
    let mut nodes = vec![first.clone()];
    for _ in 1..30 {
        nodes.push(start(Some(&first)).await);
    }
    wait_bootstrapped(&nodes[1..]).await;
    let ids: Vec<PeerId> = nodes.iter().map(|n| n.peer_id()).collect();

    // Every node finds every other by id, with its listen address.
    let mut tasks = JoinSet::new();
    for node in nodes.clone() {
        let targets: Vec<(PeerId, std::net::SocketAddr)> = nodes
            .iter()
            .map(|n| (n.peer_id(), n.listen_addrs()[0]))
            .collect();
        tasks.spawn(async move {
            let mut missing = Vec::new();
            for (peer, addr) in targets.into_iter().filter(|(p, _)| *p != node.peer_id()) {
                // A node stores its own record once it has bootstrapped; a lookup racing that
                // store finds no record yet, so each gets a few tries.
                let mut last = String::new();
                for attempt in 0..5 {
                    if attempt > 0 {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    match node.find_peer(peer).await {
                        Ok((
                            QueryResult::FindPeer {
                                record: Some(r), ..
                            },
                            _,
                        )) if r.addrs().contains(&addr) => {
                            last.clear();
                            break;
                        }
                        other => last = format!("{other:?}"),
                    }
                }
                if !last.is_empty() {
                    missing.push((peer, last));
                }
            }
            (node.peer_id(), missing)
        });
    }
    while let Some(done) = tasks.join_next().await {
        let (who, missing) = done.unwrap();
        assert!(
            missing.is_empty(),
            "{who} could not find {} peers: {missing:?}",
            missing.len()
        );
    }

    // A value put by one node is read by all others...
    let publisher = nodes[5].clone();
    let (put, _) = publisher
        .put_value("greeting", Bytes::from_static(b"hello, dht"))
        .await
        .unwrap();
    let QueryResult::PutValue { stored, .. } = put else {
        panic!("{put:?}")
    };
    assert!(stored >= 10, "stored on only {stored} nodes");
    let others: Vec<NodeHandle> = nodes
        .iter()
        .filter(|n| n.peer_id() != ids[5])
        .cloned()
        .collect();
    read_all(others.clone(), ids[5]).await;

    // ...and still after the publisher has stopped.
    publisher.shutdown().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    read_all(others, ids[5]).await;
}

async fn read_all(readers: Vec<NodeHandle>, publisher: PeerId) {
    let mut tasks = JoinSet::new();
    for reader in readers {
        tasks.spawn(async move {
            let (got, _) = reader.get_value(publisher, "greeting").await.unwrap();
            let QueryResult::GetValue {
                record: Some(r), ..
            } = got
            else {
                panic!("{} read nothing: {got:?}", reader.peer_id())
            };
            assert_eq!(r.value().as_ref(), b"hello, dht");
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_rejoins_through_its_peer_book_when_bootstrap_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let records = dir.path().join("records.redb");
    let keypair = Keypair::generate(&mut rand_core::OsRng);
    let stamp = Stamp::mint(&keypair.peer_id(), DIFFICULTY);
    let config = |bootstrap: Option<&NodeHandle>| {
        let mut config = NetConfig {
            listen: vec!["127.0.0.1:0".parse().unwrap()],
            ..NetConfig::default()
        };
        config.node.difficulty = DIFFICULTY;
        config.records = Some(records.clone());
        if let Some(b) = bootstrap {
            config.bootstrap = vec![(b.peer_id(), b.listen_addrs()[0])];
        }
        config
    };

    let boot = start(None).await;
    let other = start(Some(&boot)).await;
    wait_bootstrapped(std::slice::from_ref(&other)).await;
    let (node, _) = spore_net::start(keypair.clone(), stamp, config(Some(&boot)))
        .await
        .unwrap();
    wait_bootstrapped(std::slice::from_ref(&node)).await;
    // The node learned `other`'s signed record (it asks every new routing-table entry for it).
    for _ in 0..250 {
        if node.status().await.unwrap().dht.table_size >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    node.shutdown().await;
    boot.shutdown().await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Restarted with no bootstrap peer at all, it finds its way back through the peer book.
    let (node, _) = spore_net::start(keypair, stamp, config(None))
        .await
        .unwrap();
    for _ in 0..250 {
        let peers = node.peers().await.unwrap();
        if peers.iter().any(|p| p.peer == other.peer_id() && p.ready) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the node did not rejoin through its peer book");
}

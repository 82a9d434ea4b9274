//! The gossip overlay and keyword search over real QUIC connections on 127.0.0.1: twelve nodes
//! join through one, form a connected, symmetric overlay, find each other's shared names, and
//! keep doing so after three of them stop.

#![allow(clippy::unwrap_used)] // helpers of tests; a panic is how they fail

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use spore_core::gossip::{SearchError, ShareError};
use spore_core::pow::{Difficulty, Stamp};
use spore_core::{Keypair, PeerId};
use spore_net::{NetConfig, NodeHandle, RequestError, SearchHit, Status};
use tokio::task::JoinSet;
use tokio::time::Instant;

const DIFFICULTY: Difficulty = Difficulty(8);
const NODES: usize = 12;
/// How long the overlay may take to form or heal; generous for slow, shared CI machines.
const DEADLINE: Duration = Duration::from_secs(20);
/// The nodes' own search timeout: when a search is over and `SearchFinished` comes.
const SEARCH_TIMEOUT: Duration = Duration::from_secs(3);

/// A node on 127.0.0.1 with the gossip overlay on and tuned for a small network: at most 4
/// neighbors (so that twelve nodes make a real graph rather than a clique), quick repair and
/// shuffles. No DHT bootstrap (which would connect every node to every other) and no pings.
async fn start() -> NodeHandle {
    let keypair = Keypair::generate(&mut rand_core::OsRng);
    let stamp = Stamp::mint(&keypair.peer_id(), DIFFICULTY);
    let mut config = NetConfig {
        listen: vec!["127.0.0.1:0".parse().unwrap()],
        ..NetConfig::default()
    };
    config.node.difficulty = DIFFICULTY;
    config.node.ping.interval = None;
    config.node.kad.auto_bootstrap = false;
    let gossip = &mut config.node.gossip;
    assert!(gossip.enabled, "the overlay is on by default");
    gossip.active_size = 4;
    gossip.passive_size = 16;
    gossip.repair_interval = Duration::from_millis(500);
    gossip.shuffle_interval = Duration::from_secs(2);
    gossip.search_timeout = SEARCH_TIMEOUT;
    // The test checks that every sharer is found, so a query must reach every node: with the
    // largest ttl a query arrives first by a path of at most 11 hops (nodes never forward an id
    // twice) with hops to spare, so it floods the whole overlay whatever its diameter. The
    // default ttl of 4 is made for large overlays, where a search samples rather than covers.
    gossip.search_ttl = spore_core::gossip::MAX_TTL;
    let (handle, _) = spore_net::start(keypair, stamp, config).await.unwrap();
    handle
}

/// The overlay as the nodes report it: each live node's active view.
async fn views(nodes: &[Option<NodeHandle>]) -> BTreeMap<PeerId, BTreeSet<PeerId>> {
    let mut views = BTreeMap::new();
    for n in nodes.iter().flatten() {
        let status: Status = n.status().await.unwrap();
        assert!(status.overlay.enabled);
        views.insert(n.peer_id(), status.overlay.active.into_iter().collect());
    }
    views
}

/// What is wrong with the overlay, if anything: a node without neighbors, a neighbor that is
/// not a live node, a one-sided link, or a graph in more than one piece.
fn overlay_fault(views: &BTreeMap<PeerId, BTreeSet<PeerId>>) -> Option<String> {
    for (node, active) in views {
        if active.is_empty() {
            return Some(format!("{} has no neighbor", node.short()));
        }
        for peer in active {
            match views.get(peer) {
                None => return Some(format!("{} keeps a stopped neighbor", node.short())),
                Some(theirs) if !theirs.contains(node) => {
                    return Some(format!(
                        "{} has {} as neighbor, not the other way round",
                        node.short(),
                        peer.short()
                    ));
                }
                Some(_) => {}
            }
        }
    }
    let start = *views.keys().next()?;
    let mut reached = BTreeSet::from([start]);
    let mut todo = vec![start];
    while let Some(node) = todo.pop() {
        for peer in &views[&node] {
            if reached.insert(*peer) {
                todo.push(*peer);
            }
        }
    }
    (reached.len() < views.len())
        .then(|| format!("only {} of {} nodes connected", reached.len(), views.len()))
}

/// Polls the nodes' status until the overlay is sound; returns its views.
async fn wait_for_overlay(
    nodes: &[Option<NodeHandle>],
    what: &str,
) -> BTreeMap<PeerId, BTreeSet<PeerId>> {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let views = views(nodes).await;
        let Some(fault) = overlay_fault(&views) else {
            return views;
        };
        assert!(
            Instant::now() < deadline,
            "{what}: timed out; {fault}; active view sizes: {:?}",
            views.values().map(BTreeSet::len).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn words(text: &str) -> Vec<String> {
    text.split_whitespace().map(String::from).collect()
}

/// A shared name: (node index, name, content, size).
type Shared = (usize, &'static str, [u8; 32], u64);

/// Checks that `hits` are exactly the `expected` shared names, each from the node sharing it.
fn assert_hits(nodes: &[Option<NodeHandle>], hits: &[SearchHit], expected: &[&Shared]) {
    let mut got: Vec<(String, [u8; 32], u64, PeerId)> = hits
        .iter()
        .map(|h| (h.name.clone(), h.content, h.size, h.responder))
        .collect();
    got.sort();
    let mut want: Vec<(String, [u8; 32], u64, PeerId)> = expected
        .iter()
        .map(|(i, name, content, size)| {
            let node = nodes[*i].as_ref().unwrap();
            (name.to_string(), *content, *size, node.peer_id())
        })
        .collect();
    want.sort();
    assert_eq!(got, want);
    for hit in hits {
        let node = nodes
            .iter()
            .flatten()
            .find(|n| n.peer_id() == hit.responder);
        assert_eq!(
            hit.addrs,
            node.unwrap().listen_addrs(),
            "the responder's signed record says where to dial it"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twelve_nodes_form_an_overlay_find_shared_names_and_heal_after_three_stop() {
    let test_started = Instant::now();
    let mut nodes = Vec::new();
    for _ in 0..NODES {
        nodes.push(Some(start().await));
    }
    let node = |nodes: &[Option<NodeHandle>], i: usize| nodes[i].clone().unwrap();
    let searcher = node(&nodes, 11);

    // Alone, a node has nobody to ask; bad names and words are refused before anything is sent.
    let alone = searcher
        .search(words("photos"), Duration::from_secs(1))
        .await;
    assert_eq!(
        alone.unwrap_err(),
        RequestError::Search(SearchError::NoPeers)
    );
    assert_eq!(
        searcher.share_name("", [1; 32], 1).await.unwrap_err(),
        RequestError::Share(ShareError::EmptyName)
    );
    assert_eq!(
        searcher.share_name("a\nb", [1; 32], 1).await.unwrap_err(),
        RequestError::Share(ShareError::ControlCharacter)
    );

    // Everyone joins through node 0; the overlay forms by Join, ForwardJoin and Neighbor.
    let boot = node(&nodes, 0);
    for n in nodes[1..].iter().flatten() {
        n.dial(boot.peer_id(), boot.listen_addrs()[0])
            .await
            .unwrap();
    }
    let overlay = wait_for_overlay(&nodes, "forming the overlay").await;
    let formed = test_started.elapsed();
    let sizes: Vec<usize> = overlay.values().map(BTreeSet::len).collect();
    assert!(sizes.iter().all(|s| (1..=4).contains(s)), "{sizes:?}");

    let shared: [Shared; 3] = [
        (3, "holiday-photos-2026.tar", [3; 32], 4_200_000_000),
        (5, "rust-book.pdf", [5; 32], 3_141_592),
        (7, "Photos-of-Cats.zip", [7; 32], 65_536),
    ];
    for (i, name, content, size) in &shared {
        node(&nodes, *i)
            .share_name(name, *content, *size)
            .await
            .unwrap();
    }
    // Also shared by the searcher itself, which never answers its own query.
    searcher
        .share_name("my-photos.txt", [11; 32], 1)
        .await
        .unwrap();

    // A search runs until the node's search timeout ends it (the caller's 10 s are not needed).
    let asked = Instant::now();
    let hits = searcher
        .search(words("photos"), Duration::from_secs(10))
        .await
        .unwrap();
    let took = asked.elapsed();
    assert_hits(&nodes, &hits, &[&shared[0], &shared[2]]);
    assert!(
        took >= SEARCH_TIMEOUT - Duration::from_millis(100) && took < Duration::from_secs(8),
        "ended by SearchFinished after {took:?}"
    );

    // Every word must match, in any case; the caller's timeout ends this one.
    let asked = Instant::now();
    let hits = searcher
        .search(words("PHOTOS cats"), Duration::from_millis(1500))
        .await
        .unwrap();
    assert!(asked.elapsed() < SEARCH_TIMEOUT, "{:?}", asked.elapsed());
    assert_hits(&nodes, &hits, &[&shared[2]]);
    let none = searcher
        .search(words("nomatch"), Duration::from_millis(1500))
        .await
        .unwrap();
    assert!(none.is_empty(), "{none:?}");

    let counters = searcher.status().await.unwrap().overlay.stats;
    assert_eq!(counters.queries_sent, 3);
    for (i, answered) in [(3, 1), (7, 2)] {
        let counters = node(&nodes, i).status().await.unwrap().overlay.stats;
        assert_eq!(counters.hits_sent, answered, "node {i}: {counters:?}");
    }

    // Three nodes stop (the bootstrap node among them; neither the searcher nor a sharer). Their
    // neighbors see the connections close, drop them, and refill their active views from the
    // passive ones.
    let stop = [0, 4, 9];
    let stopped: BTreeSet<PeerId> = stop.iter().map(|i| node(&nodes, *i).peer_id()).collect();
    let before = views(&nodes).await;
    let cut = before
        .iter()
        .filter(|(n, _)| !stopped.contains(n))
        .map(|(_, active)| active.intersection(&stopped).count())
        .sum::<usize>();
    assert!(cut > 0, "the stopped nodes were someone's neighbors");
    let stopped_at = Instant::now();
    let mut stopping = JoinSet::new();
    for i in stop {
        let n = nodes[i].take().unwrap();
        stopping.spawn(async move { n.shutdown().await });
    }
    while stopping.join_next().await.is_some() {}
    let healed = wait_for_overlay(&nodes, "healing the overlay").await;
    let heal_time = stopped_at.elapsed();
    assert_eq!(healed.len(), NODES - 3);
    let mut failed = 0;
    for n in nodes.iter().flatten() {
        failed += n.status().await.unwrap().overlay.stats.neighbors_failed;
    }
    assert!(failed >= 1, "{cut} links cut, {failed} neighbors failed");

    // The search still finds both, streamed as the answers come.
    let mut stream = searcher.search_stream(words("photos")).await.unwrap();
    let mut hits = Vec::new();
    while hits.len() < 2 {
        let batch = tokio::time::timeout(SEARCH_TIMEOUT * 2, stream.next())
            .await
            .expect("the stream ends with the search")
            .expect("both sharers answer before the search is over");
        hits.extend(batch);
    }
    assert_hits(&nodes, &hits, &[&shared[0], &shared[2]]);

    // An unshared name is no longer found.
    assert!(node(&nodes, 7).unshare_name([7; 32]).await.unwrap());
    assert!(!node(&nodes, 7).unshare_name([7; 32]).await.unwrap());
    let hits = searcher
        .search(words("photos"), Duration::from_secs(2))
        .await
        .unwrap();
    assert_hits(&nodes, &hits, &[&shared[0]]);

    println!(
        "overlay formed in {formed:?} (active views {sizes:?}); {cut} links cut, healed in \
         {heal_time:?} (active views {:?}); test took {:?}",
        healed.values().map(BTreeSet::len).collect::<Vec<_>>(),
        test_started.elapsed()
    );
    let mut stopping = JoinSet::new();
    for n in nodes.into_iter().flatten() {
        stopping.spawn(async move { n.shutdown().await });
    }
    while stopping.join_next().await.is_some() {}
}

//! The web of trust over real QUIC connections on 127.0.0.1: vouch chains at and beyond the
//! depth limit, a closed topic that drops an untrusted publisher's messages, and a revocation
//! that reaches the node through the trust topic.

#![allow(clippy::unwrap_used)] // helpers of tests; a panic is how they fail

use std::collections::BTreeSet;
use std::time::Duration;

use bytes::Bytes;
use spore_core::node::Event;
use spore_core::pow::{Difficulty, Stamp};
use spore_core::pubsub;
use spore_core::{Keypair, PeerId};
use spore_net::{NetConfig, NodeHandle};
use tokio::sync::broadcast;
use tokio::task::JoinSet;
use tokio::time::Instant;

const DIFFICULTY: Difficulty = Difficulty(8);
/// Closed to authors trusted within two vouches.
const CLUB: &str = "club";
/// Closed to authors trusted within one vouch.
const INNER: &str = "inner";
/// How long every wait in these tests may take; generous for slow, shared CI machines.
const DEADLINE: Duration = Duration::from_secs(30);

/// A node on 127.0.0.1 with the DHT on (so that statements can be looked up), no gossip
/// overlay, no pings, no mDNS.
async fn start() -> NodeHandle {
    let keypair = Keypair::generate(&mut rand_core::OsRng);
    let stamp = Stamp::mint(&keypair.peer_id(), DIFFICULTY);
    let mut config = NetConfig {
        listen: vec!["127.0.0.1:0".parse().unwrap()],
        ..NetConfig::default()
    };
    config.node.difficulty = DIFFICULTY;
    config.node.ping.interval = None;
    config.node.gossip.enabled = false;
    config.node.pubsub.heartbeat = Duration::from_millis(250);
    spore_net::start(keypair, stamp, config).await.unwrap().0
}

/// Dials every `(from, to)` pair at once and waits for all of them.
async fn connect(nodes: &[NodeHandle], edges: &[(usize, usize)]) {
    let mut dials = JoinSet::new();
    for &(from, to) in edges {
        let (a, b) = (nodes[from].clone(), nodes[to].clone());
        dials.spawn(async move { a.dial(b.peer_id(), b.listen_addrs()[0]).await });
    }
    while let Some(done) = dials.join_next().await {
        done.unwrap().unwrap();
    }
}

/// Waits until `node` finds `want` for the chain to `peer` within `depth`; returns how long
/// that took.
async fn wait_chain(node: &NodeHandle, peer: PeerId, depth: u8, want: bool) -> Duration {
    let started = Instant::now();
    loop {
        let chain = node.trust_chain(peer, depth).await.unwrap();
        if chain.is_some() == want {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < DEADLINE,
            "the chain to {peer} within {depth} is still {chain:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The pub/sub messages `events` delivers until `until`: (topic, data as text).
async fn delivered(
    events: &mut broadcast::Receiver<Event>,
    until: Instant,
) -> Vec<(String, String)> {
    let mut got = Vec::new();
    while let Ok(event) = tokio::time::timeout_at(until, events.recv()).await {
        if let Event::PubSub(pubsub::Event::Message { topic, data, .. }) = event.unwrap() {
            got.push((topic, String::from_utf8_lossy(&data).into_owned()));
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_topic_admits_trusted_authors_only_and_a_revocation_shuts_one_out() {
    // a holds the closed topics; b is vouched for by a; c by b; d by nobody; e only carries
    // DHT records.
    let nodes = [
        start().await,
        start().await,
        start().await,
        start().await,
        start().await,
    ];
    let [a, b, c, d, _e] = &nodes;
    connect(
        &nodes,
        &[(1, 0), (2, 0), (3, 0), (4, 0), (2, 1), (3, 2), (4, 3)],
    )
    .await;
    // The DHT needs routing tables: every node bootstraps through its first dial.
    tokio::time::sleep(Duration::from_millis(500)).await;

    assert!(b.trust_vouch(c.peer_id()).await.unwrap());
    assert!(
        !b.trust_vouch(c.peer_id()).await.unwrap(),
        "vouched already"
    );
    assert!(
        a.trust_vouch(a.peer_id()).await.is_err(),
        "a node cannot vouch for itself"
    );
    for (topic, depth) in [(CLUB, 2), (INNER, 1)] {
        a.close_topic(topic, depth).await.unwrap();
        a.subscribe_topic(topic).await.unwrap();
    }
    assert!(a.trust_vouch(b.peer_id()).await.unwrap());
    // a fetches b's statement from the DHT: c is two links away.
    let learned = wait_chain(a, c.peer_id(), 2, true).await;
    println!(
        "a trusts c through b {} ms after vouching for b",
        learned.as_millis()
    );
    assert_eq!(
        a.trust_chain(c.peer_id(), 2).await.unwrap().unwrap(),
        vec![a.peer_id(), b.peer_id(), c.peer_id()]
    );
    // At the depth limit and beyond it.
    assert!(a.trust_chain(c.peer_id(), 1).await.unwrap().is_none());
    assert!(a.trust_chain(d.peer_id(), 4).await.unwrap().is_none());
    assert!(
        a.trust_chain(c.peer_id(), 9).await.is_err(),
        "deeper than the limit"
    );
    let status = a.trust_status().await.unwrap();
    assert_eq!(status.vouches, vec![b.peer_id()]);
    assert_eq!(
        status
            .closed_topics
            .iter()
            .cloned()
            .collect::<BTreeSet<_>>(),
        [(CLUB.to_string(), 2), (INNER.to_string(), 1)].into()
    );

    // c (trusted within 2, not 1) and d (untrusted) publish on both topics until a has
    // c's message on the club, and a little longer.
    let mut events = a.subscribe();
    let mut got = Vec::new();
    let deadline = Instant::now() + DEADLINE;
    let mut k = 0;
    while !got
        .iter()
        .any(|(t, m): &(String, String)| t == CLUB && m.starts_with("c "))
    {
        assert!(
            Instant::now() < deadline,
            "a never delivered c's message: {got:?}"
        );
        for (node, name) in [(c, "c"), (d, "d")] {
            for topic in [CLUB, INNER] {
                let _ = node
                    .publish(topic, Bytes::from(format!("{name} {k}")))
                    .await;
            }
        }
        k += 1;
        got.extend(delivered(&mut events, Instant::now() + Duration::from_millis(300)).await);
    }
    got.extend(delivered(&mut events, Instant::now() + Duration::from_secs(1)).await);
    println!("a delivered {got:?} after {k} rounds");
    assert!(
        got.iter().all(|(t, m)| t == CLUB && m.starts_with("c ")),
        "only c's club messages may pass: {got:?}"
    );
    let untrusted = a.status().await.unwrap().pubsub.stats.untrusted;
    assert!(
        untrusted > 0,
        "d's and c's inner messages were dropped as untrusted"
    );

    // b revokes c: a hears of it on the trust topic, well within the deadline and so long
    // before its next refresh of b's statement (ten minutes).
    let fetches = a.trust_status().await.unwrap().stats.fetches;
    assert!(b.trust_revoke(c.peer_id()).await.unwrap());
    let revoked = wait_chain(a, c.peer_id(), 2, false).await;
    println!(
        "a stopped trusting c {} ms after b revoked it",
        revoked.as_millis()
    );
    assert_eq!(
        a.trust_status().await.unwrap().stats.fetches,
        fetches,
        "no lookup needed"
    );
    for k in 0..5 {
        let _ = c.publish(CLUB, Bytes::from(format!("c after {k}"))).await;
    }
    let after = delivered(&mut events, Instant::now() + Duration::from_secs(1)).await;
    assert!(
        after.is_empty(),
        "a delivered {after:?} after the revocation"
    );

    let mut stops = JoinSet::new();
    for n in nodes {
        stops.spawn(async move { n.shutdown().await });
    }
    while stops.join_next().await.is_some() {}
}

/// A document closed to peers trusted within one vouch: the owner vouches for b, not for c;
/// both open the document (from its access list) and sync with the owner. b gets the text, c
/// gets nothing, and the owner takes nothing from c.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_document_replicates_to_trusted_peers_only() {
    use spore_core::doc::Edit;
    let nodes = [start().await, start().await, start().await];
    let (owner, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    connect(&nodes, &[(1, 0), (2, 0)]).await;
    let doc = owner.doc_create(7).await.unwrap();
    owner.doc_close(doc, 1).await.unwrap();
    owner.trust_vouch(b.peer_id()).await.unwrap();
    wait_chain(owner, b.peer_id(), 1, true).await;
    owner
        .doc_edit(
            doc,
            vec![Edit::Insert("notes".into(), 0, "members only".into())],
        )
        .await
        .unwrap();
    let access = owner.doc_get(doc).await.unwrap().unwrap().access().clone();
    for reader in [b, c] {
        reader
            .doc_open(access.clone(), vec![owner.peer_id()])
            .await
            .unwrap();
        reader.doc_sync(owner.peer_id(), doc).await.unwrap();
    }
    let started = Instant::now();
    loop {
        let text = b.doc_get(doc).await.unwrap().unwrap().text("notes");
        if text.as_deref() == Some("members only") {
            break;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "b never got the text: {text:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Give c as long as b needed and more: it still has nothing.
    tokio::time::sleep(started.elapsed() * 2 + Duration::from_millis(500)).await;
    let text = c.doc_get(doc).await.unwrap().unwrap().text("notes");
    assert_eq!(text, None, "c, untrusted, got the document");
}

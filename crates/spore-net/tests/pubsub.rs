//! Pub/sub over real QUIC connections on 127.0.0.1: delivery exactly once across 50 nodes, and
//! forged or rejected messages stopped at the first hop.

#![allow(clippy::unwrap_used)] // helpers of tests; a panic is how they fail

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use bytes::Bytes;
use spore_core::node::Event;
use spore_core::pow::{Difficulty, Stamp};
use spore_core::pubsub::{self, MessageId, Validation};
use spore_core::wire::Message;
use spore_core::{Keypair, PeerId};
use spore_net::{NetConfig, NodeHandle, PubSubValidator, Status};
use tokio::sync::broadcast;
use tokio::task::JoinSet;
use tokio::time::Instant;

const DIFFICULTY: Difficulty = Difficulty(8);
const TOPIC: &str = "spore/test";
/// How long every wait in these tests may take; generous for slow, shared CI machines.
const DEADLINE: Duration = Duration::from_secs(30);
const HEARTBEAT: Duration = Duration::from_millis(250);

struct TestNode {
    handle: NodeHandle,
    keypair: Keypair,
    stamp: Stamp,
}

/// A node on 127.0.0.1 that connects only where the test tells it to: no DHT bootstrap (which
/// would connect every node to every other in a network this small), no gossip overlay, no
/// pings, no mDNS.
async fn start(validator: Option<PubSubValidator>) -> TestNode {
    let keypair = Keypair::generate(&mut rand_core::OsRng);
    let stamp = Stamp::mint(&keypair.peer_id(), DIFFICULTY);
    let mut config = NetConfig {
        listen: vec!["127.0.0.1:0".parse().unwrap()],
        pubsub_validator: validator,
        ..NetConfig::default()
    };
    config.node.difficulty = DIFFICULTY;
    config.node.ping.interval = None;
    config.node.kad.auto_bootstrap = false;
    config.node.gossip.enabled = false;
    config.node.pubsub.heartbeat = HEARTBEAT;
    let (handle, _) = spore_net::start(keypair.clone(), stamp, config)
        .await
        .unwrap();
    TestNode {
        handle,
        keypair,
        stamp,
    }
}

/// Dials every `(from, to)` pair at once and waits for all of them.
async fn connect(nodes: &[TestNode], edges: &[(usize, usize)]) {
    let mut dials = JoinSet::new();
    for &(from, to) in edges {
        let (a, b) = (nodes[from].handle.clone(), nodes[to].handle.clone());
        dials.spawn(async move { a.dial(b.peer_id(), b.listen_addrs()[0]).await });
    }
    while let Some(done) = dials.join_next().await {
        done.unwrap().unwrap();
    }
}

/// Stops every node at once (each waits up to a second for its peers to see the close).
async fn shutdown(nodes: &[TestNode]) {
    let mut tasks = JoinSet::new();
    for n in nodes {
        let handle = n.handle.clone();
        tasks.spawn(async move { handle.shutdown().await });
    }
    while tasks.join_next().await.is_some() {}
}

/// Polls every node's status until `check` accepts all of them.
async fn wait_all(nodes: &[TestNode], what: &str, check: impl Fn(usize, &Status) -> bool) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let mut failing = Vec::new();
        for (i, n) in nodes.iter().enumerate() {
            let status = n.handle.status().await.unwrap();
            if !check(i, &status) {
                failing.push((i, topic(&status)));
            }
        }
        if failing.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; (node, (mesh, topic peers)) failing: {failing:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `(mesh peers, topic peers)` of [`TOPIC`].
fn topic(status: &Status) -> (usize, usize) {
    status
        .pubsub
        .topics
        .iter()
        .find(|t| t.topic == TOPIC)
        .map_or((0, 0), |t| (t.mesh_peers, t.topic_peers))
}

async fn stats(node: &TestNode) -> pubsub::Stats {
    node.handle.status().await.unwrap().pubsub.stats
}

/// Counts the pub/sub messages delivered to the application on `events` until every id in
/// `expected` has arrived, then for `settle` more, so that a late duplicate would be counted.
async fn count_deliveries(
    mut events: broadcast::Receiver<Event>,
    expected: BTreeSet<MessageId>,
    settle: Duration,
) -> BTreeMap<MessageId, usize> {
    let mut counts: BTreeMap<MessageId, usize> = BTreeMap::new();
    let deadline = Instant::now() + DEADLINE;
    let mut settled: Option<Instant> = None;
    loop {
        if settled.is_none() && expected.iter().all(|id| counts.contains_key(id)) {
            settled = Some(Instant::now() + settle);
        }
        let until = settled.unwrap_or(deadline);
        match tokio::time::timeout_at(until, events.recv()).await {
            Ok(Ok(Event::PubSub(pubsub::Event::Message { id, topic, .. }))) => {
                assert_eq!(topic, TOPIC);
                *counts.entry(id).or_default() += 1;
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("event receiver failed: {e}"),
            Err(_) => return counts,
        }
    }
}

/// A small deterministic generator for the random overlay (the test needs no real randomness).
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) % n as u64) as usize
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_nodes_deliver_every_message_exactly_once() {
    const N: usize = 50;
    let started = std::time::Instant::now();
    let mut nodes = Vec::with_capacity(N);
    for _ in 0..N {
        nodes.push(start(None).await);
    }
    // Each node dials four distinct earlier nodes (or all of them, for the first few): a
    // connected overlay in which every node has at least four peers.
    let mut rng = Lcg(0x5eed);
    let mut edges = Vec::new();
    for i in 1..N {
        let mut targets = BTreeSet::new();
        while targets.len() < i.min(4) {
            targets.insert(rng.below(i));
        }
        edges.extend(targets.into_iter().map(|t| (i, t)));
    }
    connect(&nodes, &edges).await;
    for n in &nodes {
        n.handle.subscribe_topic(TOPIC).await.unwrap();
    }
    wait_all(&nodes, "four topic peers and a mesh everywhere", |_, s| {
        let (mesh, peers) = topic(s);
        peers >= 4 && mesh >= 4
    })
    .await;
    let ready = started.elapsed();

    let receivers: Vec<_> = nodes.iter().map(|n| n.handle.subscribe()).collect();
    let mut published: Vec<(MessageId, usize)> = Vec::new();
    for k in 0..10 {
        let author = 3 + 5 * k;
        let data = Bytes::from(format!("message {k} from node {author}"));
        let p = nodes[author].handle.publish(TOPIC, data).await.unwrap();
        assert!(p.peers >= 4, "node {author} sent to only {} peers", p.peers);
        published.push((p.id, author));
    }
    let mut tasks = JoinSet::new();
    for (i, events) in receivers.into_iter().enumerate() {
        let expected: BTreeSet<MessageId> = published
            .iter()
            .filter(|(_, author)| *author != i)
            .map(|(id, _)| *id)
            .collect();
        tasks.spawn(async move {
            let counts = count_deliveries(events, expected.clone(), 2 * HEARTBEAT).await;
            (i, expected, counts)
        });
    }
    while let Some(done) = tasks.join_next().await {
        let (i, expected, counts) = done.unwrap();
        let missing: Vec<_> = expected
            .iter()
            .filter(|id| !counts.contains_key(id))
            .collect();
        assert!(missing.is_empty(), "node {i} never got {missing:?}");
        for (id, n) in &counts {
            assert!(expected.contains(id), "node {i} got its own message {id}");
            assert_eq!(*n, 1, "node {i} got {id} {n} times");
        }
    }

    let mut duplicates = 0;
    for (i, n) in nodes.iter().enumerate() {
        let s = stats(n).await;
        let own = published.iter().filter(|(_, a)| *a == i).count() as u64;
        assert_eq!(s.published, own, "node {i}");
        assert_eq!(s.delivered, 10 - own, "node {i}");
        assert_eq!(s.invalid + s.rejected, 0, "node {i}");
        duplicates += s.duplicates;
    }
    eprintln!(
        "50 nodes: overlay and meshes ready in {:.1} s; 10 messages delivered 490 times, each \
         exactly once; {duplicates} duplicate copies suppressed; {:.1} s in all",
        ready.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    shutdown(&nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_rejected_messages_stop_at_the_first_hop() {
    // Honest nodes 1..=9 form a ring with chords; node 0, the misbehaving one, is connected to
    // nodes 1 and 2 only. Every honest node rejects data starting with "bad".
    let validator = PubSubValidator::new(|_: &str, _: &PeerId, data: &[u8]| {
        if data.starts_with(b"bad") {
            Validation::Reject
        } else {
            Validation::Accept
        }
    });
    let mut nodes = vec![start(None).await];
    for _ in 1..10 {
        nodes.push(start(Some(validator.clone())).await);
    }
    let mut edges = vec![(0, 1), (0, 2)];
    for i in 1..=9 {
        let next = |k: usize| (i - 1 + k) % 9 + 1;
        edges.push((i, next(1)));
        edges.push((i, next(3)));
    }
    connect(&nodes, &edges).await;
    for n in &nodes {
        n.handle.subscribe_topic(TOPIC).await.unwrap();
    }
    let degree = |i: usize| edges.iter().filter(|(a, b)| *a == i || *b == i).count();
    wait_all(&nodes, "every peer's subscription known", |i, s| {
        let (mesh, peers) = topic(s);
        peers == degree(i) && mesh >= 1
    })
    .await;
    let mut events: Vec<_> = nodes.iter().map(|n| n.handle.subscribe()).collect();

    // A message with a signature that does not match its data, sent raw to both neighbours.
    let evil = &nodes[0];
    let forged = pubsub::SignedMessage::new(
        &evil.keypair,
        evil.stamp,
        TOPIC.to_string(),
        7,
        Bytes::from_static(b"hello"),
    )
    .with_data(Bytes::from_static(b"hello, forged"));
    for target in [1, 2] {
        let msg = Message::PubSub(pubsub::Message::Publish(forged.clone()));
        let peer = nodes[target].handle.peer_id();
        evil.handle.send_raw(peer, msg).await.unwrap();
    }
    // A correctly signed message that the validator rejects.
    let bad = evil
        .handle
        .publish(TOPIC, Bytes::from_static(b"bad news"))
        .await
        .unwrap();
    assert_eq!(bad.peers, 2);

    let direct = |i: usize| i == 1 || i == 2;
    wait_all(
        &nodes[1..3],
        "both neighbours to drop both messages",
        |_, s| s.pubsub.stats.invalid == 1 && s.pubsub.stats.rejected == 1,
    )
    .await;
    // Wrongly forwarded frames, or gossip about the messages, would arrive within a few
    // heartbeats; give them that long to show.
    tokio::time::sleep(4 * HEARTBEAT).await;
    for (i, n) in nodes.iter().enumerate().skip(1) {
        let s = stats(n).await;
        assert_eq!(s.delivered, 0, "node {i} delivered a bad message");
        assert_eq!(s.forwarded, 0, "node {i} forwarded a bad message");
        let (received, invalid, rejected) = if direct(i) { (2, 1, 1) } else { (0, 0, 0) };
        assert_eq!(
            (s.received, s.invalid, s.rejected),
            (received, invalid, rejected),
            "node {i}: (publish frames received, invalid, rejected)"
        );
    }
    for (i, rx) in events.iter_mut().enumerate() {
        while let Ok(event) = rx.try_recv() {
            assert!(
                !matches!(event, Event::PubSub(_)),
                "node {i} delivered {event:?}"
            );
        }
    }

    // The honest network still works: a good message reaches every other honest node once.
    let good = nodes[5]
        .handle
        .publish(TOPIC, Bytes::from_static(b"good news"))
        .await
        .unwrap();
    let mut tasks = JoinSet::new();
    for (i, rx) in events
        .into_iter()
        .enumerate()
        .skip(1)
        .filter(|(i, _)| *i != 5)
    {
        let expected = BTreeSet::from([good.id]);
        tasks.spawn(async move { (i, count_deliveries(rx, expected, HEARTBEAT).await) });
    }
    while let Some(done) = tasks.join_next().await {
        let (i, counts) = done.unwrap();
        assert_eq!(counts, BTreeMap::from([(good.id, 1)]), "node {i}");
    }
    shutdown(&nodes).await;
}

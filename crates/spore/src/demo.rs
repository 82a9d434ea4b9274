//! `spore demo`: a small network of real nodes on 127.0.0.1, in one process.
//!
//! Every step really runs over QUIC on the loopback interface: the nodes mint their ids' proof of
//! work, join through a bootstrap node, verify each other's keys, exchange pings, share a value
//! through the DHT, publish on a pub/sub topic, find each other's shared names by keyword over
//! the gossip overlay, swarm a file from one node to all the others (each with its own on-disk
//! blob store in a temporary directory, removed at the end), edit one shared document at once
//! (node 0 owns it and admits up to three other nodes as writers; each writes a register, a
//! counter, a set and a text, and every replica converges to the same state), and shrug off a
//! dial to the wrong identity and a burst of garbage datagrams. Nothing leaves the machine.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use spore_core::Keypair;
use spore_core::doc::{Edit, Value};
use spore_core::node::Event;
use spore_core::pow::{Difficulty, Stamp};
use spore_core::pubsub::{self, MessageId};
use spore_net::{DialError, NetConfig, NodeHandle};
use spore_store::blobs::{self, BlobLimits, BlobStore};
use tokio::sync::broadcast;
use tokio::task::JoinSet;

use crate::cli::DemoArgs;

struct DemoNode {
    handle: NodeHandle,
    addr: SocketAddr,
    store: BlobStore,
}

/// The demo's blob stores, one per node, removed when dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs the demo and prints its report.
pub async fn run(args: DemoArgs) -> Result<()> {
    let started = Instant::now();
    let n = usize::from(args.nodes);
    let difficulty = Difficulty::DEFAULT;
    println!("spore demo: {n} nodes on 127.0.0.1 — nothing leaves this machine\n");

    println!(
        "[1/9] starting {n} nodes (each id carries a {}-bit proof of work)",
        difficulty.0
    );
    let tmp = TempDir(std::env::temp_dir().join(format!("spore-demo-{}", std::process::id())));
    let mut nodes = Vec::with_capacity(n);
    for i in 0..n {
        let store = BlobStore::open(tmp.0.join(format!("node{i}")), BlobLimits::default())
            .context("opening a demo blob store")?;
        let (handle, _streams) = start_node(difficulty, Some(store.clone())).await?;
        let addr = handle.listen_addrs()[0];
        println!("      node {i}: {}  udp {addr}", handle.peer_id());
        nodes.push(DemoNode {
            handle,
            addr,
            store,
        });
    }

    println!(
        "\n[2/9] nodes 1..{} join through node 0, then each dials its ring neighbour",
        n - 1
    );
    let boot = (nodes[0].handle.peer_id(), nodes[0].addr);
    for node in &nodes[1..] {
        node.handle
            .dial(boot.0, boot.1)
            .await
            .context("joining through node 0")?;
    }
    for i in 1..n {
        let next = if i + 1 < n { i + 1 } else { 1 };
        if next != i {
            let target = &nodes[next];
            nodes[i]
                .handle
                .dial(target.handle.peer_id(), target.addr)
                .await?;
        }
    }
    let mut connections = 0;
    for (i, node) in nodes.iter().enumerate() {
        let peers = node.handle.peers().await?;
        let ready = peers.iter().filter(|p| p.ready).count();
        connections += ready;
        let seen: Vec<String> = peers
            .iter()
            .filter_map(|p| p.observed_us)
            .map(|a| a.to_string())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        println!(
            "      node {i}: {ready} peers, observed by them at {}",
            seen.join(", ")
        );
    }
    println!(
        "      {} connections in all (DHT bootstrap lookups opened the rest), one per peer pair,\n      \
         every one TLS 1.3 with both keys verified",
        connections / 2
    );

    println!(
        "\n[3/9] every node pings each of its peers {} times",
        args.pings
    );
    let mut rtts = Vec::new();
    let mut sent = 0;
    for _ in 0..args.pings {
        for node in &nodes {
            for peer in node.handle.peers().await?.iter().filter(|p| p.ready) {
                sent += 1;
                if let Ok(rtt) = node.handle.ping(peer.peer).await {
                    rtts.push(rtt);
                }
            }
        }
    }
    rtts.sort();
    let pct = |p: f64| {
        rtts.get(((rtts.len() as f64 - 1.0) * p).round() as usize)
            .copied()
    };
    println!(
        "      {}/{} pongs, rtt p50 {} p99 {}",
        rtts.len(),
        sent,
        fmt_ms(pct(0.5)),
        fmt_ms(pct(0.99))
    );

    println!("\n[4/9] the DHT: signed values and peer records, found by key");
    let dht = dht_tour(&nodes).await?;

    println!("\n[5/9] pub/sub: every node subscribes to a topic; two of them publish");
    let ps = pubsub_tour(&nodes).await?;

    println!("\n[6/9] keyword search over the gossip overlay");
    let search = search_tour(&nodes).await?;

    println!("\n[7/9] a file swarmed from node 0 to every other node, BitTorrent-style");
    let swarm = swarm_tour(&nodes).await?;

    println!(
        "\n[8/9] a shared document: {} writers edit it at once, each replica converges",
        docs_writers(n)
    );
    let docs = doc_tour(&nodes).await?;

    println!("\n[9/9] what a hostile network cannot do");
    // A newcomer, connected to nobody yet, is told node 1 is at node 2's address.
    let (visitor, _streams) = start_node(difficulty, None).await?;
    match visitor.dial(nodes[1].handle.peer_id(), nodes[2].addr).await {
        Err(DialError::PeerIdMismatch {
            expected, actual, ..
        }) => println!(
            "      a newcomer dials node 2's address expecting node 1's id: refused during the\n        \
             TLS handshake (expected {}…, the remote proved {}…); no data exchanged",
            expected.short(),
            actual.short()
        ),
        other => bail!("a dial to the wrong identity should fail, got {other:?}"),
    }
    visitor.shutdown().await;
    let garbage = UdpSocket::bind("127.0.0.1:0")?;
    for i in 0..1000u32 {
        let junk: Vec<u8> = (0..(i % 1200))
            .map(|j| (i.wrapping_mul(31) ^ j) as u8)
            .collect();
        garbage.send_to(&junk, nodes[0].addr)?;
    }
    let survivor = &nodes[1];
    let rtt = survivor.handle.ping(nodes[0].handle.peer_id()).await?;
    println!(
        "      1000 garbage datagrams to node 0: ignored; it still answers pings ({})",
        fmt_ms(Some(rtt))
    );

    let status = nodes[0].handle.status().await?;
    println!("\nreport");
    println!("      nodes            {n}");
    println!("      connections      {}", connections / 2);
    println!("      pings answered   {}/{sent}", rtts.len());
    println!(
        "      rtt p50 / p99    {} / {}",
        fmt_ms(pct(0.5)),
        fmt_ms(pct(0.99))
    );
    println!(
        "      dht lookups      {} hops, {} requests (get_value)",
        dht.hops, dht.requests
    );
    println!(
        "      pub/sub          {} messages, {}/{} deliveries, each exactly once; {} duplicate \
         copies suppressed",
        ps.messages, ps.delivered, ps.expected, ps.duplicates
    );
    println!(
        "      search           {} hits for \"photos\" from {} nodes, first after {}",
        search.hits,
        search.responders,
        fmt_ms(search.first)
    );
    println!(
        "      swarm            {} to {} nodes in {:.2} s, every chunk verified; the seeder \
         uploaded {:.2}x the file",
        crate::commands::human_size(swarm.size),
        swarm.leechers,
        swarm.elapsed.as_secs_f64(),
        swarm.seeder_upload
    );
    let changes = if docs.concurrent == docs.changes {
        format!("{} concurrent changes", docs.changes)
    } else {
        format!("{} changes ({} concurrent)", docs.changes, docs.concurrent)
    };
    println!(
        "      documents        {} writers, {changes}, converged in {:.1} ms",
        docs.writers,
        docs.elapsed.as_secs_f64() * 1e3
    );
    println!(
        "      node 0 counters  {} wire errors, {} violations (the garbage never got past QUIC)",
        status.runtime.wire_errors, status.core.violations
    );
    println!(
        "      elapsed          {:.2} s",
        started.elapsed().as_secs_f64()
    );

    for node in &nodes {
        node.handle.shutdown().await;
    }
    drop(nodes);
    drop(tmp);
    if rtts.len() != sent {
        bail!("{} of {sent} pings went unanswered", sent - rtts.len());
    }
    Ok(())
}

struct DhtFigures {
    hops: u32,
    requests: u32,
}

/// Puts a signed value from one node, reads it from another, and finds a node by id alone.
async fn dht_tour(nodes: &[DemoNode]) -> Result<DhtFigures> {
    use spore_core::kad::QueryResult;
    // The DHT bootstraps by itself once a node knows a server; wait until all have joined.
    let deadline = Instant::now() + Duration::from_secs(10);
    for node in nodes {
        while !node.handle.status().await?.dht.bootstrapped {
            if Instant::now() > deadline {
                bail!("node {} did not join the DHT", node.handle.peer_id());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let mut sizes = Vec::new();
    for node in nodes {
        sizes.push(node.handle.status().await?.dht.table_size);
    }
    println!(
        "      every node joined; routing tables hold {} to {} nodes",
        sizes.iter().min().copied().unwrap_or(0),
        sizes.iter().max().copied().unwrap_or(0)
    );

    let (writer, reader) = (&nodes[1], &nodes[nodes.len() - 1]);
    let value = bytes::Bytes::from_static(b"hello from node 1");
    let (put, _) = writer.handle.put_value("greeting", value.clone()).await?;
    let QueryResult::PutValue { stored, seq, .. } = put else {
        bail!("unexpected {put:?}")
    };
    println!("      node 1 signs \"greeting\" (seq {seq}) and stores it on {stored} nodes");
    let (got, stats) = reader
        .handle
        .get_value(writer.handle.peer_id(), "greeting")
        .await?;
    let QueryResult::GetValue {
        record: Some(record),
        ..
    } = got
    else {
        bail!("node {} could not read the value back", nodes.len() - 1)
    };
    if record.value() != &value {
        bail!("read back a different value");
    }
    println!(
        "      node {} reads it: {:?} — signature checked, {} hops, {} requests, {:.1} ms",
        nodes.len() - 1,
        String::from_utf8_lossy(record.value()),
        stats.hops,
        stats.requests,
        stats.duration.as_secs_f64() * 1e3
    );
    let (target, seeker) = (&nodes[nodes.len() - 1], &nodes[2]);
    let (found, stats) = seeker.handle.find_peer(target.handle.peer_id()).await?;
    let QueryResult::FindPeer {
        record: Some(peer), ..
    } = found
    else {
        bail!("node 2 could not find node {} by id", nodes.len() - 1)
    };
    println!(
        "      node 2 finds node {} by its id alone: {:?} ({} hops)",
        nodes.len() - 1,
        peer.addrs(),
        stats.hops
    );
    Ok(DhtFigures {
        hops: stats.hops,
        requests: stats.requests,
    })
}

struct PubSubFigures {
    messages: usize,
    expected: usize,
    delivered: usize,
    duplicates: u64,
}

/// Subscribes every node to a topic, publishes three messages from each of two nodes, and checks
/// that every other node got each exactly once.
async fn pubsub_tour(nodes: &[DemoNode]) -> Result<PubSubFigures> {
    const TOPIC: &str = "demo/chat";
    for node in nodes {
        node.handle.subscribe_topic(TOPIC).await?;
    }
    // Wait until every node knows which of its peers subscribed, and has a mesh to send along.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut meshes = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        loop {
            let status = node.handle.status().await?;
            let (mesh, peers) = status
                .pubsub
                .topics
                .iter()
                .find(|t| t.topic == TOPIC)
                .map_or((0, 0), |t| (t.mesh_peers, t.topic_peers));
            if peers >= 1 && peers >= status.ready_peers && mesh >= peers.min(4) {
                meshes.push(mesh);
                break;
            }
            if Instant::now() > deadline {
                bail!("node {i} has not formed its mesh for {TOPIC}: {mesh} of {peers} peers");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    println!(
        "      every node subscribed to {TOPIC:?}; each sends messages on to a mesh of {} to {} \
         peers",
        meshes.iter().min().copied().unwrap_or(0),
        meshes.iter().max().copied().unwrap_or(0)
    );

    let receivers: Vec<_> = nodes.iter().map(|n| n.handle.subscribe()).collect();
    let authors = [1, nodes.len() - 1];
    let mut published: Vec<(MessageId, usize)> = Vec::new();
    for k in 1..=3 {
        for &author in &authors {
            let text = format!("hello #{k} from node {author}");
            let p = nodes[author]
                .handle
                .publish(TOPIC, bytes::Bytes::from(text.clone()))
                .await?;
            if k == 1 {
                println!(
                    "      node {author} signs and publishes {text:?}: sent directly to {} peers",
                    p.peers
                );
            }
            published.push((p.id, author));
        }
    }
    let mut tasks = JoinSet::new();
    for (i, events) in receivers.into_iter().enumerate() {
        let expected: BTreeSet<MessageId> = published
            .iter()
            .filter(|(_, author)| *author != i)
            .map(|(id, _)| *id)
            .collect();
        tasks.spawn(async move { (i, expected.clone(), deliveries(events, expected).await) });
    }
    let (mut expected_total, mut delivered, mut twice) = (0, 0, 0);
    let mut missing = Vec::new();
    while let Some(done) = tasks.join_next().await {
        let (i, expected, counts) = done?;
        expected_total += expected.len();
        delivered += counts.values().filter(|n| **n >= 1).count();
        twice += counts.values().filter(|n| **n > 1).count();
        let lost = expected
            .iter()
            .filter(|id| !counts.contains_key(id))
            .count();
        if lost > 0 {
            missing.push(format!("node {i} missed {lost}"));
        }
    }
    let mut duplicates = 0;
    for node in nodes {
        duplicates += node.handle.status().await?.pubsub.stats.duplicates;
    }
    println!(
        "      {} messages: {delivered}/{expected_total} deliveries, {twice} delivered twice; \
         the nodes dropped {duplicates} duplicate copies that reached them by other paths",
        published.len()
    );
    if !missing.is_empty() {
        bail!("not every message arrived: {}", missing.join(", "));
    }
    if twice > 0 {
        bail!("{twice} messages were delivered more than once");
    }
    Ok(PubSubFigures {
        messages: published.len(),
        expected: expected_total,
        delivered,
        duplicates,
    })
}

struct SearchFigures {
    hits: usize,
    responders: usize,
    first: Option<Duration>,
}

/// Waits until every node has overlay neighbors, shares names on nodes 0 and 1, and searches
/// for "photos" from the last node, printing the hits as they come.
async fn search_tour(nodes: &[DemoNode]) -> Result<SearchFigures> {
    // Nodes joined the overlay as they connected (Join, ForwardJoin, Neighbor); the last
    // links may still be settling.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut active = Vec::new();
    let mut passive = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        loop {
            let overlay = node.handle.status().await?.overlay;
            if !overlay.active.is_empty() {
                active.push(overlay.active.len());
                passive.push(overlay.passive);
                break;
            }
            if !overlay.enabled {
                bail!("node {i} runs without the gossip overlay");
            }
            if Instant::now() > deadline {
                bail!("node {i} has no overlay neighbor");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let range = |v: &[usize]| {
        let (min, max) = (v.iter().min().copied(), v.iter().max().copied());
        format!("{} to {}", min.unwrap_or(0), max.unwrap_or(0))
    };
    println!(
        "      every node keeps {} overlay neighbors (its active view) and {} peers in reserve",
        range(&active),
        range(&passive)
    );

    let shared = [
        (0, "rust-book.pdf", 3_141_592),
        (0, "holiday-photos-2026.tar", 4_200_000_000),
        (1, "photos-of-cats.zip", 65_536),
    ];
    for (i, name, size) in shared {
        // A stand-in for the BLAKE3 hash of the file: the demo has no real files.
        let content = spore_core::kad::Key::hash("spore-demo/content", &[name.as_bytes()]).0;
        nodes[i].handle.share_name(name, content, size).await?;
        println!(
            "      node {i} shares {name:?} ({})",
            crate::commands::human_size(size)
        );
    }

    let searcher = nodes.len() - 1;
    let index: BTreeMap<spore_core::PeerId, usize> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.handle.peer_id(), i))
        .collect();
    println!("      node {searcher} searches for \"photos\":");
    let asked = Instant::now();
    let mut stream = nodes[searcher]
        .handle
        .search_stream(vec!["photos".into()])
        .await?;
    let (mut hits, mut responders, mut first) = (0, BTreeSet::new(), None);
    // Two nodes share matching names; stop listening once both answered.
    while responders.len() < 2 {
        let Ok(Some(batch)) = tokio::time::timeout(Duration::from_secs(5), stream.next()).await
        else {
            break;
        };
        first.get_or_insert(asked.elapsed());
        for hit in batch {
            let from = index
                .get(&hit.responder)
                .map_or_else(|| hit.responder.short(), |i| format!("node {i}"));
            println!(
                "        {:<24} {:>9}  content {}…  from {from} ({:.1} ms)",
                hit.name,
                crate::commands::human_size(hit.size),
                &hit.content_hex()[..12],
                asked.elapsed().as_secs_f64() * 1e3
            );
            hits += 1;
            responders.insert(hit.responder);
        }
    }
    if hits != 2 {
        bail!("the search found {hits} of the 2 names containing \"photos\"");
    }
    Ok(SearchFigures {
        hits,
        responders: responders.len(),
        first,
    })
}

/// Counts the messages delivered on `events` until all of `expected` have arrived (and a moment
/// longer, so a duplicate would show) or 10 s have passed.
async fn deliveries(
    mut events: broadcast::Receiver<Event>,
    expected: BTreeSet<MessageId>,
) -> BTreeMap<MessageId, usize> {
    let mut counts: BTreeMap<MessageId, usize> = BTreeMap::new();
    let mut until = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut complete = false;
    loop {
        if !complete && expected.iter().all(|id| counts.contains_key(id)) {
            complete = true;
            until = tokio::time::Instant::now() + Duration::from_millis(300);
        }
        match tokio::time::timeout_at(until, events.recv()).await {
            Ok(Ok(Event::PubSub(pubsub::Event::Message { id, .. }))) => {
                *counts.entry(id).or_default() += 1;
            }
            Ok(Ok(_)) | Ok(Err(broadcast::error::RecvError::Lagged(_))) => {}
            Ok(Err(broadcast::error::RecvError::Closed)) | Err(_) => return counts,
        }
    }
}

struct SwarmFigures {
    size: u64,
    leechers: usize,
    elapsed: Duration,
    seeder_upload: f64,
}

/// Node 0 shares a file of random bytes; every other node fetches it, told only of node 0.
/// Leechers find each other inside the swarm and trade verified pieces.
async fn swarm_tour(nodes: &[DemoNode]) -> Result<SwarmFigures> {
    const SIZE: usize = 16 << 20;
    let mut data = vec![0u8; SIZE];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut data);
    let seeder = &nodes[0];
    let imported = seeder.store.import_bytes(&data)?;
    let hash = imported.hash;
    seeder.store.pin("demo", hash)?;
    drop(imported.lease);
    seeder.handle.serve_blob(*hash.as_bytes()).await?;
    println!(
        "      node 0 shares {} of random bytes, BLAKE3 {}…",
        crate::commands::human_size(SIZE as u64),
        &hash.to_hex()[..16]
    );
    let provider = (seeder.handle.peer_id(), vec![seeder.addr]);
    let started = Instant::now();
    for node in &nodes[1..] {
        node.handle
            .fetch_blob(*hash.as_bytes(), vec![provider.clone()])
            .await?;
    }
    let deadline = started + Duration::from_secs(60);
    loop {
        let done = nodes[1..]
            .iter()
            .filter(|n| matches!(n.store.have(&hash), Ok(blobs::BlobStatus::Complete { .. })))
            .count();
        if done == nodes.len() - 1 {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "only {done} of {} nodes got the file in 60 s",
                nodes.len() - 1
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = started.elapsed();
    let mut uploads = Vec::new();
    for node in nodes {
        let status = node.handle.status().await?;
        uploads.push(status.swarm.stats.bytes_uploaded);
    }
    let seeder_upload = uploads[0] as f64 / SIZE as f64;
    let served_by_leechers = uploads[1..].iter().filter(|&&u| u > 0).count();
    for (i, node) in nodes.iter().enumerate().skip(1) {
        if !node.store.verify(&hash)?.is_ok() {
            bail!("node {i}'s copy does not verify");
        }
    }
    println!(
        "      all {} nodes hold it in {:.2} s; node 0 uploaded {:.2}x the file, {} of the \
         downloaders\n      served pieces to each other (peer exchange inside the swarm); every \
         copy re-verifies against the root",
        nodes.len() - 1,
        elapsed.as_secs_f64(),
        seeder_upload,
        served_by_leechers
    );
    Ok(SwarmFigures {
        size: SIZE as u64,
        leechers: nodes.len() - 1,
        elapsed,
        seeder_upload,
    })
}

/// How many nodes write the demo's document: the owner (node 0) and up to three others.
fn docs_writers(n: usize) -> usize {
    1 + 3.min(n - 1)
}

struct DocFigures {
    writers: usize,
    changes: usize,
    concurrent: usize,
    elapsed: Duration,
}

/// Node 0 creates a document and admits up to three other nodes as writers; they open it from
/// the access list. All of them then edit at once — a register, a counter, a set and a text —
/// and the demo waits until every replica renders the same state, with every change applied.
async fn doc_tour(nodes: &[DemoNode]) -> Result<DocFigures> {
    const WORDS: [&str; 4] = ["spores", "drift", "and", "settle"];
    let writers = docs_writers(nodes.len());
    let owner = &nodes[0].handle;
    let doc = owner.doc_create(1).await?;
    let mut access = None;
    for node in &nodes[1..writers] {
        access = Some(owner.doc_add_writer(doc, node.handle.peer_id()).await?);
    }
    let access = access.context("the document has no writer besides its owner")?;
    for node in &nodes[1..writers] {
        node.handle
            .doc_open(access.clone(), vec![owner.peer_id()])
            .await?;
    }
    println!(
        "      node 0 creates document {}… and signs an access list (version {}) admitting \
         nodes 1..{}; they open it",
        &doc.to_string()[..16],
        access.version(),
        writers - 1
    );

    // Live changes travel on the document's pub/sub topic: wait until node 0, connected to
    // every writer, has them all in its mesh for it and each writer has a mesh too.
    let topic = doc.topic();
    let opened = Instant::now();
    let deadline = opened + Duration::from_secs(10);
    for (i, node) in nodes[..writers].iter().enumerate() {
        let want = if i == 0 { writers - 1 } else { 1 };
        loop {
            let status = node.handle.status().await?;
            let (mesh, peers) = status
                .pubsub
                .topics
                .iter()
                .find(|t| t.topic == topic)
                .map_or((0, 0), |t| (t.mesh_peers, t.topic_peers));
            if mesh >= want && peers >= want {
                break;
            }
            if Instant::now() > deadline {
                bail!("node {i} has {mesh} peers in its mesh for the document's topic, not {want}");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    println!(
        "      they subscribe to the document's pub/sub topic; node 0's mesh for it reaches all \
         {} in {:.1} ms",
        writers - 1,
        opened.elapsed().as_secs_f64() * 1e3
    );

    // Every writer edits at the same moment: the edits are handed to the nodes within one poll,
    // so none has seen another's change when it makes its own (the demo says so if one had).
    // Yielding first gives this task a fresh cooperative budget: a budget spent by the waits
    // above would let the first send through and park the others until after its delivery.
    tokio::task::yield_now().await;
    let started = Instant::now();
    let edits = nodes[..writers].iter().enumerate().map(|(i, node)| {
        let edits = vec![
            Edit::Set("title".into(), Value::Str(format!("node {i} was here"))),
            Edit::Increment("visits".into(), i as i64 + 1),
            Edit::Add("writers".into(), Value::Str(format!("node {i}"))),
            Edit::Insert("text".into(), 0, format!("{} ", WORDS[i % WORDS.len()])),
        ];
        node.handle.doc_edit(doc, edits)
    });
    let mut changes = Vec::with_capacity(writers);
    for (i, change) in futures_util::future::join_all(edits)
        .await
        .into_iter()
        .enumerate()
    {
        changes.push((i, change.with_context(|| format!("node {i}'s edit"))?));
    }
    println!(
        "      each signs its change and publishes it live on the document's pub/sub topic \
         (sync by set\n      reconciliation fills any gap):"
    );
    for (i, change) in &changes {
        println!(
            "        node {i} (writer #{}, Lamport clock {}): title \"node {i} was here\", \
             visits +{}, adds \"node {i}\", inserts {:?} at 0",
            change.author(),
            change.lamport(),
            i + 1,
            WORDS[i % WORDS.len()]
        );
    }
    // A writer's first change that depends on no other writer's was made without seeing any.
    let concurrent = changes.iter().filter(|(_, c)| c.deps().is_empty()).count();
    if concurrent == changes.len() {
        println!("      no change depends on another: none of the writers had seen another's edit");
    } else {
        println!(
            "      {concurrent} of the {} changes were made before seeing any other; the rest \
             had seen some",
            changes.len()
        );
    }

    // Converged: every replica holds every change and renders the same state.
    let deadline = started + Duration::from_secs(10);
    let state = loop {
        let mut replicas = Vec::with_capacity(writers);
        for node in &nodes[..writers] {
            replicas.push(node.handle.doc_get(doc).await?);
        }
        let renders: Vec<_> = replicas
            .iter()
            .map(|r| r.as_ref().map(|d| (d.applied() as usize, d.render())))
            .collect();
        if renders
            .iter()
            .all(|r| r.as_ref().is_some_and(|(len, _)| *len == changes.len()))
            && renders.iter().all(|r| r == &renders[0])
        {
            break replicas
                .swap_remove(0)
                .context("node 0 lost the document")?;
        }
        if Instant::now() > deadline {
            let held: Vec<String> = renders
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    r.as_ref()
                        .map_or(format!("node {i}: no replica"), |(len, _)| {
                            format!("node {i}: {len} changes")
                        })
                })
                .collect();
            bail!(
                "the {writers} replicas of the document did not converge within 10 s ({} of {} \
                 changes each: {}; {} distinct states)",
                renders
                    .iter()
                    .flatten()
                    .map(|(len, _)| *len)
                    .min()
                    .unwrap_or(0),
                changes.len(),
                held.join(", "),
                renders.iter().collect::<BTreeSet<_>>().len()
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let elapsed = started.elapsed();

    let title = state.get("title").map(Value::to_string).unwrap_or_default();
    let winner = changes
        .iter()
        .max_by_key(|(_, c)| (c.lamport(), c.author()))
        .map(|(i, _)| *i);
    if winner.map(|i| format!("node {i} was here")) != Some(title.clone()) {
        bail!("the title {title:?} is not the write with the highest stamp");
    }
    let visits = state.counter("visits");
    let expected: i64 = (1..=writers as i64).sum();
    if visits != expected {
        bail!("the counter reads {visits}, the writers added {expected}");
    }
    let members: Vec<String> = state.set("writers").iter().map(|v| v.to_string()).collect();
    let text = state.text("text").unwrap_or_default();
    println!(
        "      all {writers} replicas converged in {:.1} ms, {} changes each, identical state:",
        elapsed.as_secs_f64() * 1e3,
        state.applied()
    );
    println!(
        "        title    {title:?}: last writer wins (highest Lamport clock, then writer number)"
    );
    println!(
        "        visits   {visits} (= {}: every increment counted once)",
        (1..=writers)
            .map(|k| k.to_string())
            .collect::<Vec<_>>()
            .join(" + ")
    );
    println!("        writers  {{{}}}", members.join(", "));
    println!(
        "        text     {:?}: all {writers} words inserted at 0 kept, in one order everywhere",
        text.trim_end()
    );
    Ok(DocFigures {
        writers,
        changes: changes.len(),
        concurrent,
        elapsed,
    })
}

async fn start_node(
    difficulty: Difficulty,
    blobs: Option<BlobStore>,
) -> Result<(NodeHandle, spore_net::AppStreams)> {
    let keypair = Keypair::generate(&mut rand_core::OsRng);
    let stamp = Stamp::mint(&keypair.peer_id(), difficulty);
    let mut config = NetConfig {
        listen: vec!["127.0.0.1:0".parse()?],
        blobs,
        ..NetConfig::default()
    };
    config.node.difficulty = difficulty;
    config.node.ping.interval = Some(Duration::from_secs(1));
    Ok(spore_net::start(keypair, stamp, config).await?)
}

fn fmt_ms(d: Option<Duration>) -> String {
    d.map(|d| format!("{:.3} ms", d.as_secs_f64() * 1e3))
        .unwrap_or_else(|| "-".into())
}

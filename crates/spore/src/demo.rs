//! `spore demo`: a small network of real nodes on 127.0.0.1, in one process.
//!
//! Every step really runs over QUIC on the loopback interface: the nodes mint their ids' proof of
//! work, join through a bootstrap node, verify each other's keys, exchange pings, share a value
//! through the DHT, publish on a pub/sub topic, find each other's shared names by keyword over
//! the gossip overlay, swarm a file from one node to all the others (each with its own on-disk
//! blob store in a temporary directory, removed at the end), and shrug off a dial to the wrong
//! identity and a burst of garbage datagrams. Nothing leaves the machine.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use spore_core::Keypair;
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
        "[1/8] starting {n} nodes (each id carries a {}-bit proof of work)",
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
        "\n[2/8] nodes 1..{} join through node 0, then each dials its ring neighbour",
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
        "\n[3/8] every node pings each of its peers {} times",
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

    println!("\n[4/8] the DHT: signed values and peer records, found by key");
    let dht = dht_tour(&nodes).await?;

    println!("\n[5/8] pub/sub: every node subscribes to a topic; two of them publish");
    let ps = pubsub_tour(&nodes).await?;

    println!("\n[6/8] keyword search over the gossip overlay");
    let search = search_tour(&nodes).await?;

    println!("\n[7/8] a file swarmed from node 0 to every other node, BitTorrent-style");
    let swarm = swarm_tour(&nodes).await?;

    println!("\n[8/8] what a hostile network cannot do");
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

//! Blob swarming between real nodes on 127.0.0.1, each with its own on-disk blob store: a
//! provider that corrupts what it serves cannot corrupt a download; a seeder with eight
//! leechers uploads far less than eight copies because the leechers serve each other; providers
//! are found in the DHT, where downloaders announce themselves too.
//!
//! `SWARM_MIB=256 cargo test --release -p spore-net --test swarm -- --nocapture` runs the
//! seeder test at the size the README reports.

#![allow(clippy::unwrap_used)] // helpers of tests; a panic is how they fail

use std::ops::Range;
use std::time::Duration;

use bytes::Bytes;
use spore_core::pow::{Difficulty, Stamp};
use spore_core::swarm::{BlobAccess, BlobStatus, Hash, ReadError, WriteError, Written};
use spore_core::{Keypair, PeerId};
use spore_net::{BlobAccessMaker, NetConfig, NodeHandle, StoreBlobs};
use spore_store::blobs::{self, BlobLimits, BlobStore};
use tokio::task::JoinSet;
use tokio::time::Instant;

const DIFFICULTY: Difficulty = Difficulty(8);

struct TestNode {
    handle: NodeHandle,
    store: BlobStore,
    _dir: tempfile::TempDir,
}

impl TestNode {
    fn provider(&self) -> (PeerId, Vec<std::net::SocketAddr>) {
        (self.handle.peer_id(), self.handle.listen_addrs().to_vec())
    }
}

/// A node on 127.0.0.1 with its own blob store and no DHT; `corrupt` makes it flip a byte of
/// every response it serves.
async fn start(corrupt: bool) -> TestNode {
    start_in(corrupt, None).await
}

/// A node that joins the DHT through `bootstrap`, if given.
async fn start_in(corrupt: bool, bootstrap: Option<(PeerId, std::net::SocketAddr)>) -> TestNode {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(dir.path().join("blobs"), BlobLimits::default()).unwrap();
    let keypair = Keypair::generate(&mut rand_core::OsRng);
    let stamp = Stamp::mint(&keypair.peer_id(), DIFFICULTY);
    let mut config = NetConfig {
        listen: vec!["127.0.0.1:0".parse().unwrap()],
        blobs: Some(store.clone()),
        ..NetConfig::default()
    };
    if corrupt {
        let store = store.clone();
        config.blob_access = Some(BlobAccessMaker::new(move || {
            Box::new(Corrupting(StoreBlobs::new(store.clone())))
        }));
    }
    config.node.difficulty = DIFFICULTY;
    config.node.ping.interval = None;
    config.node.kad.auto_bootstrap = bootstrap.is_some();
    config.bootstrap.extend(bootstrap);
    config.node.gossip.enabled = false;
    let (handle, _) = spore_net::start(keypair, stamp, config).await.unwrap();
    TestNode {
        handle,
        store,
        _dir: dir,
    }
}

/// Serves bytes that do not match the hash: one bit of every response's last byte flipped.
struct Corrupting(StoreBlobs);

impl BlobAccess for Corrupting {
    fn status(&self, hash: &Hash) -> BlobStatus {
        self.0.status(hash)
    }

    fn read(&mut self, hash: &Hash, groups: Range<u64>) -> Result<Bytes, ReadError> {
        let mut bytes = self.0.read(hash, groups)?.to_vec();
        if let Some(last) = bytes.last_mut() {
            *last ^= 0x01;
        }
        Ok(Bytes::from(bytes))
    }

    fn write(
        &mut self,
        hash: &Hash,
        size: u64,
        groups: Range<u64>,
        encoded: &[u8],
    ) -> Result<Written, WriteError> {
        self.0.write(hash, size, groups, encoded)
    }
}

fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    use rand_core::{RngCore, SeedableRng};
    let mut v = vec![0u8; len];
    rand_chacha::ChaCha8Rng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

/// Waits until every store in `nodes` holds `hash` complete.
async fn wait_complete(nodes: &[&TestNode], hash: blobs::Hash, deadline: Duration) {
    let until = Instant::now() + deadline;
    loop {
        let done = nodes
            .iter()
            .filter(|n| matches!(n.store.have(&hash), Ok(blobs::BlobStatus::Complete { .. })))
            .count();
        if done == nodes.len() {
            return;
        }
        assert!(
            Instant::now() < until,
            "{done} of {} downloads complete after {deadline:?}",
            nodes.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn export(store: &BlobStore, hash: &blobs::Hash) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out");
    store.export(hash, &path).unwrap();
    std::fs::read(path).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupting_provider_cannot_corrupt_a_download() {
    let honest = start(false).await;
    let liar = start(true).await;
    let leecher = start(false).await;
    let data = random_bytes(3 << 20, 1);
    let hash = honest.store.import_bytes(&data).unwrap().hash;
    let _kept = liar.store.import_bytes(&data).unwrap();
    honest.handle.serve_blob(*hash.as_bytes()).await.unwrap();
    liar.handle.serve_blob(*hash.as_bytes()).await.unwrap();

    // The liar first, so it is asked for data before the honest provider is.
    let providers = vec![liar.provider(), honest.provider()];
    leecher
        .handle
        .fetch_blob(*hash.as_bytes(), providers)
        .await
        .unwrap();
    wait_complete(&[&leecher], hash, Duration::from_secs(60)).await;
    assert_eq!(export(&leecher.store, &hash), data);
    assert!(leecher.store.verify(&hash).unwrap().is_ok());

    let (info, peers) = leecher
        .handle
        .swarm_info(*hash.as_bytes())
        .await
        .unwrap()
        .expect("the swarm seeds after completing");
    assert_eq!(info.bad_peers, 1, "the liar is dropped as bad");
    assert!(peers.iter().all(|p| p.peer != liar.handle.peer_id()));
    let stats = leecher.handle.status().await.unwrap().swarm.stats;
    assert!(stats.bad_data >= 1);
    for n in [&honest, &liar, &leecher] {
        n.handle.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seeder_and_eight_leechers_share_the_upload() {
    let mib: usize = std::env::var("SWARM_MIB")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(24);
    let size = mib << 20;
    let seeder = start(false).await;
    let mut leechers = Vec::new();
    for _ in 0..8 {
        leechers.push(start(false).await);
    }
    let data = random_bytes(size, 2);
    let hash = seeder.store.import_bytes(&data).unwrap().hash;
    seeder.handle.serve_blob(*hash.as_bytes()).await.unwrap();

    let started = Instant::now();
    let mut fetches = JoinSet::new();
    for l in &leechers {
        let (handle, provider) = (l.handle.clone(), seeder.provider());
        fetches.spawn(async move {
            handle
                .fetch_blob(*hash.as_bytes(), vec![provider])
                .await
                .unwrap()
        });
    }
    while let Some(done) = fetches.join_next().await {
        done.unwrap();
    }
    let all: Vec<&TestNode> = leechers.iter().collect();
    wait_complete(&all, hash, Duration::from_secs(600)).await;
    let elapsed = started.elapsed();
    for l in &leechers {
        assert!(l.store.verify(&hash).unwrap().is_ok());
    }
    assert_eq!(export(&leechers[7].store, &hash), data);

    let seeder_up = seeder
        .handle
        .status()
        .await
        .unwrap()
        .swarm
        .stats
        .bytes_uploaded;
    let mut leecher_up = 0;
    for l in &leechers {
        leecher_up += l.handle.status().await.unwrap().swarm.stats.bytes_uploaded;
    }
    let ratio = seeder_up as f64 / size as f64;
    println!(
        "1 seeder + 8 leechers, {mib} MiB: all complete in {:.1} s; seeder uploaded {ratio:.2} × \
         the file, leechers {:.2} ×",
        elapsed.as_secs_f64(),
        leecher_up as f64 / size as f64,
    );
    assert!(
        ratio < 4.0,
        "the seeder uploaded {ratio:.2} × the file: the leechers did not serve each other"
    );
    seeder.handle.shutdown().await;
    for l in &leechers {
        l.handle.shutdown().await;
    }
}

/// Providers of `hash` the DHT knows, as `fetch_blob` takes them.
async fn dht_providers(
    node: &NodeHandle,
    hash: blobs::Hash,
) -> Vec<(PeerId, Vec<std::net::SocketAddr>)> {
    match node.find_providers(*hash.as_bytes()).await {
        Ok((spore_core::kad::QueryResult::GetProviders { providers, .. }, _)) => providers
            .iter()
            .map(|p| (*p.provider(), p.addrs().to_vec()))
            .collect(),
        _ => Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn providers_are_found_in_the_dht_and_downloaders_announce_themselves() {
    let boot = start_in(false, None).await;
    let boot_addr = Some((boot.handle.peer_id(), boot.handle.listen_addrs()[0]));
    let seeder = start_in(false, boot_addr).await;
    let first = start_in(false, boot_addr).await;
    let second = start_in(false, boot_addr).await;
    let data = random_bytes(1 << 20, 3);
    let hash = seeder.store.import_bytes(&data).unwrap().hash;
    seeder.handle.serve_blob(*hash.as_bytes()).await.unwrap();

    // Nobody tells the downloader who has it: it asks the DHT.
    let until = Instant::now() + Duration::from_secs(30);
    let providers = loop {
        let found = dht_providers(&first.handle, hash).await;
        if !found.is_empty() {
            break found;
        }
        assert!(
            Instant::now() < until,
            "no provider record found in the DHT"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(providers[0].0, seeder.handle.peer_id());
    first
        .handle
        .fetch_blob(*hash.as_bytes(), providers)
        .await
        .unwrap();
    wait_complete(&[&first], hash, Duration::from_secs(30)).await;
    assert_eq!(export(&first.store, &hash), data);

    // The downloader announced itself: the DHT now lists it too.
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let found = dht_providers(&second.handle, hash).await;
        if found.iter().any(|(p, _)| *p == first.handle.peer_id()) {
            break;
        }
        assert!(
            Instant::now() < until,
            "the downloader never announced itself: {found:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for n in [&boot, &seeder, &first, &second] {
        n.handle.shutdown().await;
    }
}

//! Blob swarming between real nodes over loopback, each node with its own on-disk blob store.
//!
//! Two cases, both moving BLAKE3-verified blobs of random bytes through
//! [`NodeHandle::fetch_blob`] into the downloader's [`BlobStore`]:
//!
//! - **1 → 1** (`one`): one seeder, one leecher, a 1 GiB blob. The seeder's store imports the
//!   blob before anything is timed (once per benchmark; every run starts a fresh seeder node on
//!   that store). Each run starts a fresh leecher with an empty store in a new temporary
//!   directory and times from `fetch_blob` (which also dials the seeder) until the leecher's
//!   store reports the blob [`Complete`](BlobStatus::Complete). In the same run, for the speed
//!   of the kernel's TCP on this machine, `iperf3 -c -n BYTES` over 127.0.0.1 moves as many
//!   bytes as a subprocess (left out, with a note, if `iperf3` is not installed), and the report
//!   gives spore / iperf3 TCP. iperf3 keeps nothing; spore hashes, verifies and writes every
//!   byte to disk, so the ratio is the whole cost of a verified download, not of the transport.
//! - **1 → N** (`swarm`): one seeder and N leechers (default 8), a 256 MiB blob. Every leecher
//!   is given only the seeder as provider, all fetches start together, and the run is timed
//!   until every leecher's store holds the blob complete. The report gives the time, the
//!   aggregate rate delivered (N × size / time), and how many copies of the file the seeder
//!   uploaded (its swarm stats' `bytes_uploaded` / size; well below N means the leechers served
//!   each other) and the leechers uploaded.
//!
//! Runs are interleaved (spore 1 → 1, iperf3, spore 1 → N, spore 1 → 1, ...) to spread the
//! machine's noise; the report gives median, min and max, as a markdown table and as one line of
//! JSON on stdout. Progress goes to stderr. All nodes run in this one process on a tokio runtime
//! with two workers (the machines we run on have two cores), so the 1 → N case measures how
//! much nine nodes sharing those cores can deliver, not what nine machines would.
//!
//! ```text
//! cargo bench -p spore-net --bench swarm -- --runs 3
//! ```
//!
//! Options (after `--`; environment variables in brackets):
//!
//! - `--bytes N` [`SPORE_BENCH_BYTES`]: blob size of the 1 → 1 case, with an optional K, M or G
//!   suffix (powers of 1024). Default 1G.
//! - `--swarm-bytes N` [`SPORE_BENCH_SWARM_BYTES`]: blob size of the 1 → N case. Default 256M.
//! - `--leechers N`: leechers of the 1 → N case. Default 8.
//! - `--runs R` [`SPORE_BENCH_RUNS`]: runs of each case. Default 3.
//! - `--only LIST`: comma-separated subset of `one,swarm`.
//!
//! Temporary directories go under the system's temporary directory (`TMPDIR`), so the disk
//! behind it, and its sync latency (downloads commit every
//! [`COMMIT_BATCH`](spore_net::StoreBlobs::COMMIT_BATCH) bytes), is part of what is measured;
//! `TMPDIR=/dev/shm` takes the disk out. It needs room for the seeder's blobs plus one run's
//! downloads (1.25 GiB + 2 GiB with the defaults). MB/s means 10^6 bytes per second.

mod support;

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use spore_core::Keypair;
use spore_core::node::Event;
use spore_core::pow::{Difficulty, Stamp};
use spore_core::swarm;
use spore_net::{NetConfig, NodeHandle};
use spore_store::blobs::{BlobLimits, BlobStatus, BlobStore, Hash, Imported};
use support::{Summary, iperf3_installed, iperf3_run, mb_per_sec, parse_size, summarize};
use tokio::sync::broadcast;
use tokio::task::JoinSet;

/// Proof-of-work difficulty of the benchmark nodes: minting must not dominate setup.
const DIFFICULTY: Difficulty = Difficulty(8);
/// Worker threads of the tokio runtime, matching the two-core machines we run on.
const WORKERS: usize = 2;
/// How often the leechers' stores are asked whether the blob is complete.
const POLL: Duration = Duration::from_millis(5);

fn main() -> Result<()> {
    let opts = Options::parse(std::env::args().skip(1))?;
    let iperf3 = opts.one && iperf3_installed();
    if opts.one && !iperf3 {
        eprintln!("iperf3 not installed: apt-get install -y iperf3 (leaving out the TCP baseline)");
    }

    let scratch = tempfile::Builder::new()
        .prefix("spore-bench-swarm-")
        .tempdir()
        .context("creating a temporary directory")?;
    eprintln!(
        "swarm: 1 → 1 {} bytes, 1 → {} {} bytes, {} runs; stores under {}",
        opts.bytes,
        opts.leechers,
        opts.swarm_bytes,
        opts.runs,
        scratch.path().display()
    );
    let seeder_store = BlobStore::open(scratch.path().join("seeder"), BlobLimits::default())
        .context("opening the seeder's store")?;
    // Imports happen here, before anything is timed; the leases keep the blobs from gc.
    let one_blob = opts
        .one
        .then(|| import_random(&seeder_store, scratch.path(), opts.bytes, 1))
        .transpose()?;
    let swarm_blob = opts
        .swarm
        .then(|| import_random(&seeder_store, scratch.path(), opts.swarm_bytes, 2))
        .transpose()?;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(WORKERS)
        .enable_all()
        .build()?;

    let mut results = Results::default();
    for run in 1..=opts.runs {
        let tag = format!("[run {run}/{}]", opts.runs);
        if let Some(blob) = &one_blob {
            eprint!("{tag} 1 → 1 spore       ... ");
            let secs = rt.block_on(one_run(&seeder_store, blob.hash, blob.size))?;
            let mbps = mb_per_sec(blob.size, secs);
            eprintln!("{mbps:>9.1} MB/s  ({secs:.2} s)");
            results.one_spore.push(mbps);
        }
        if iperf3 {
            eprint!("{tag} 1 → 1 iperf3 TCP  ... ");
            let mbps = iperf3_run(opts.bytes)?;
            eprintln!("{mbps:>9.1} MB/s");
            results.one_iperf3.push(mbps);
        }
        if let Some(blob) = &swarm_blob {
            eprint!("{tag} 1 → {} spore       ... ", opts.leechers);
            let s = rt.block_on(swarm_run(
                &seeder_store,
                blob.hash,
                blob.size,
                opts.leechers,
            ))?;
            let total = blob.size * opts.leechers as u64;
            let size = blob.size as f64;
            eprintln!(
                "{:>9.1} MB/s aggregate  (all complete in {:.2} s, first in {:.2} s; seeder \
                 uploaded {:.2} × the file, leechers {:.2} ×)",
                mb_per_sec(total, s.secs),
                s.secs,
                s.first_secs,
                s.seeder_uploaded as f64 / size,
                s.leechers_uploaded as f64 / size,
            );
            results.swarm_secs.push(s.secs);
            results.swarm_mbps.push(mb_per_sec(total, s.secs));
            results.seeder_ratio.push(s.seeder_uploaded as f64 / size);
            results
                .leecher_ratio
                .push(s.leechers_uploaded as f64 / size);
        }
    }
    drop(rt);
    report(&opts, &results);
    drop((one_blob, swarm_blob, seeder_store));
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Options

struct Options {
    bytes: u64,
    swarm_bytes: u64,
    leechers: usize,
    runs: usize,
    one: bool,
    swarm: bool,
}

impl Options {
    fn parse(mut args: impl Iterator<Item = String>) -> Result<Self> {
        let mut opts = Self {
            bytes: 1 << 30,
            swarm_bytes: 256 << 20,
            leechers: 8,
            runs: 3,
            one: true,
            swarm: true,
        };
        if let Ok(v) = std::env::var("SPORE_BENCH_BYTES") {
            opts.bytes = parse_size(&v).context("SPORE_BENCH_BYTES")?;
        }
        if let Ok(v) = std::env::var("SPORE_BENCH_SWARM_BYTES") {
            opts.swarm_bytes = parse_size(&v).context("SPORE_BENCH_SWARM_BYTES")?;
        }
        if let Ok(v) = std::env::var("SPORE_BENCH_RUNS") {
            opts.runs = v.parse().context("SPORE_BENCH_RUNS")?;
        }
        while let Some(arg) = args.next() {
            let (name, inline) = match arg.split_once('=') {
                Some((n, v)) => (n.to_owned(), Some(v.to_owned())),
                None => (arg, None),
            };
            // cargo passes `--bench` to every bench binary.
            if name == "--bench" {
                continue;
            }
            let mut value = || {
                inline
                    .clone()
                    .or_else(|| args.next())
                    .with_context(|| format!("{name} needs a value"))
            };
            match name.as_str() {
                "--bytes" => opts.bytes = parse_size(&value()?)?,
                "--swarm-bytes" => opts.swarm_bytes = parse_size(&value()?)?,
                "--leechers" => opts.leechers = value()?.parse().context("--leechers")?,
                "--runs" => opts.runs = value()?.parse().context("--runs")?,
                "--only" => {
                    (opts.one, opts.swarm) = (false, false);
                    for case in value()?.split(',') {
                        match case.trim() {
                            "one" => opts.one = true,
                            "swarm" => opts.swarm = true,
                            other => bail!("unknown case {other:?} (one, swarm)"),
                        }
                    }
                }
                "-h" | "--help" => {
                    eprintln!(
                        "usage: swarm [--bytes N[K|M|G]] [--swarm-bytes N[K|M|G]] \
                         [--leechers N] [--runs R] [--only one,swarm]"
                    );
                    std::process::exit(0);
                }
                other => bail!("unknown argument {other:?} (try --help)"),
            }
        }
        ensure!(opts.bytes > 0, "--bytes must be positive");
        ensure!(opts.swarm_bytes > 0, "--swarm-bytes must be positive");
        ensure!(opts.leechers > 0, "--leechers must be positive");
        ensure!(opts.runs > 0, "--runs must be positive");
        ensure!(opts.one || opts.swarm, "--only selected nothing");
        Ok(opts)
    }
}

// ---------------------------------------------------------------------------------------------
// Nodes

/// Writes `size` random bytes (ChaCha8 from `seed`) to a file under `scratch` and imports it
/// into `store`, streaming; the file is removed afterwards.
fn import_random(store: &BlobStore, scratch: &Path, size: u64, seed: u64) -> Result<Imported> {
    use rand_core::{RngCore, SeedableRng};
    let started = Instant::now();
    eprint!("importing {size} random bytes into the seeder's store ... ");
    let path = scratch.join(format!("random-{seed}"));
    {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut file = std::io::BufWriter::new(std::fs::File::create(&path)?);
        let mut buf = vec![0u8; 4 << 20];
        let mut left = size;
        while left > 0 {
            let n = usize::try_from(left.min(buf.len() as u64))?;
            rng.fill_bytes(&mut buf[..n]);
            file.write_all(&buf[..n])?;
            left -= n as u64;
        }
        file.flush()?;
    }
    let imported = store
        .import_file(&path, &mut |_| {})
        .context("importing the blob")?;
    std::fs::remove_file(&path)?;
    ensure!(imported.size == size, "imported {} bytes", imported.size);
    eprintln!("{:.1} s", started.elapsed().as_secs_f64());
    Ok(imported)
}

/// A node on 127.0.0.1 serving and storing blobs in `store`; background protocols that would
/// only add noise (pings, DHT bootstrap, gossip) are off.
async fn start_node(store: BlobStore) -> Result<NodeHandle> {
    let keypair = Keypair::generate(&mut rand_core::OsRng);
    let stamp = Stamp::mint(&keypair.peer_id(), DIFFICULTY);
    let mut config = NetConfig {
        listen: vec![SocketAddr::from(([127, 0, 0, 1], 0))],
        blobs: Some(store),
        ..NetConfig::default()
    };
    config.node.difficulty = DIFFICULTY;
    config.node.ping.interval = None;
    config.node.kad.auto_bootstrap = false;
    config.node.gossip.enabled = false;
    let (handle, _streams) = spore_net::start(keypair, stamp, config).await?;
    Ok(handle)
}

/// A downloading node with an empty store in a fresh temporary directory, removed on drop.
struct Leecher {
    handle: NodeHandle,
    store: BlobStore,
    events: broadcast::Receiver<Event>,
    _dir: tempfile::TempDir,
}

impl Leecher {
    async fn start() -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("spore-bench-leecher-")
            .tempdir()?;
        let store = BlobStore::open(dir.path().join("blobs"), BlobLimits::default())?;
        let handle = start_node(store.clone()).await?;
        let events = handle.subscribe();
        Ok(Self {
            handle,
            store,
            events,
            _dir: dir,
        })
    }
}

fn provider(node: &NodeHandle) -> (spore_core::PeerId, Vec<SocketAddr>) {
    (node.peer_id(), node.listen_addrs().to_vec())
}

/// Upper bound on one run, so a stall fails the benchmark instead of hanging it.
fn run_limit(bytes: u64) -> Duration {
    Duration::from_secs(60).max(Duration::from_secs(bytes / 5_000_000))
}

/// Polls the leechers' stores until every one holds `hash` complete; returns when each
/// completed. Fails if a download reports failure or `limit` passes.
async fn wait_complete(
    leechers: &mut [Leecher],
    hash: Hash,
    size: u64,
    limit: Duration,
) -> Result<Vec<Instant>> {
    let until = Instant::now() + limit;
    let mut done: Vec<Option<Instant>> = vec![None; leechers.len()];
    loop {
        for (l, at) in leechers.iter_mut().zip(&mut done) {
            if at.is_some() {
                continue;
            }
            match l.store.have(&hash)? {
                BlobStatus::Complete { size: s } => {
                    ensure!(s == size, "completed with size {s}, expected {size}");
                    *at = Some(Instant::now());
                }
                _ => loop {
                    match l.events.try_recv() {
                        Ok(Event::Swarm(swarm::Event::Failed { hash: h, reason }))
                            if h == *hash.as_bytes() =>
                        {
                            bail!("a download failed: {reason}")
                        }
                        Ok(_) | Err(broadcast::error::TryRecvError::Lagged(_)) => {}
                        Err(_) => break,
                    }
                },
            }
        }
        if done.iter().all(Option::is_some) {
            return Ok(done.into_iter().flatten().collect());
        }
        let complete = done.iter().filter(|d| d.is_some()).count();
        ensure!(
            Instant::now() < until,
            "{complete} of {} downloads complete after {limit:?}",
            leechers.len()
        );
        tokio::time::sleep(POLL).await;
    }
}

// ---------------------------------------------------------------------------------------------
// The two cases

/// One seeder on `seeder_store`, one fresh leecher: seconds from `fetch_blob` to complete.
async fn one_run(seeder_store: &BlobStore, hash: Hash, size: u64) -> Result<f64> {
    let seeder = start_node(seeder_store.clone()).await?;
    seeder.serve_blob(*hash.as_bytes()).await?;
    let mut leechers = [Leecher::start().await?];
    let started = Instant::now();
    leechers[0]
        .handle
        .fetch_blob(*hash.as_bytes(), vec![provider(&seeder)])
        .await
        .context("fetch_blob")?;
    let result = wait_complete(&mut leechers, hash, size, run_limit(size)).await;
    seeder.shutdown().await;
    leechers[0].handle.shutdown().await;
    Ok(result?[0].duration_since(started).as_secs_f64())
}

struct SwarmSample {
    /// Seconds until every leecher was complete.
    secs: f64,
    /// Seconds until the first leecher was complete.
    first_secs: f64,
    seeder_uploaded: u64,
    leechers_uploaded: u64,
}

/// One seeder on `seeder_store`, `n` fresh leechers fetching at once from the seeder.
async fn swarm_run(
    seeder_store: &BlobStore,
    hash: Hash,
    size: u64,
    n: usize,
) -> Result<SwarmSample> {
    let seeder = start_node(seeder_store.clone()).await?;
    seeder.serve_blob(*hash.as_bytes()).await?;
    let mut leechers = Vec::with_capacity(n);
    for _ in 0..n {
        leechers.push(Leecher::start().await?);
    }

    let started = Instant::now();
    let mut fetches = JoinSet::new();
    for l in &leechers {
        let (handle, provider) = (l.handle.clone(), provider(&seeder));
        fetches.spawn(async move { handle.fetch_blob(*hash.as_bytes(), vec![provider]).await });
    }
    let result = async {
        while let Some(fetched) = fetches.join_next().await {
            fetched
                .context("fetch task panicked")?
                .context("fetch_blob")?;
        }
        let limit = run_limit(size.saturating_mul(n as u64));
        let done = wait_complete(&mut leechers, hash, size, limit).await?;
        let last = done.iter().max().context("no leechers")?;
        let first = done.iter().min().context("no leechers")?;
        let seeder_uploaded = seeder.status().await?.swarm.stats.bytes_uploaded;
        let mut leechers_uploaded = 0;
        for l in &leechers {
            leechers_uploaded += l.handle.status().await?.swarm.stats.bytes_uploaded;
        }
        Ok(SwarmSample {
            secs: last.duration_since(started).as_secs_f64(),
            first_secs: first.duration_since(started).as_secs_f64(),
            seeder_uploaded,
            leechers_uploaded,
        })
    }
    .await;
    seeder.shutdown().await;
    for l in &leechers {
        l.handle.shutdown().await;
    }
    result
}

// ---------------------------------------------------------------------------------------------
// Report

#[derive(Default)]
struct Results {
    one_spore: Vec<f64>,
    one_iperf3: Vec<f64>,
    swarm_secs: Vec<f64>,
    swarm_mbps: Vec<f64>,
    seeder_ratio: Vec<f64>,
    leecher_ratio: Vec<f64>,
}

fn size_label(bytes: u64) -> String {
    if bytes >= 1 << 30 && bytes % (1 << 30) == 0 {
        format!("{} GiB", bytes >> 30)
    } else if bytes >= 1 << 20 && bytes % (1 << 20) == 0 {
        format!("{} MiB", bytes >> 20)
    } else {
        format!("{bytes} B")
    }
}

fn report(opts: &Options, r: &Results) {
    let n = opts.leechers;
    let one = size_label(opts.bytes);
    let many = size_label(opts.swarm_bytes);
    // (label, JSON key, decimals, samples)
    let rows: Vec<(String, &str, usize, &[f64])> = vec![
        (
            format!("1 → 1 spore, {one}, MB/s"),
            "one_spore_mbps",
            1,
            &r.one_spore,
        ),
        (
            format!("1 → 1 iperf3 TCP, {one}, MB/s"),
            "one_iperf3_tcp_mbps",
            1,
            &r.one_iperf3,
        ),
        (
            format!("1 → {n} spore, {many}, all complete, s"),
            "swarm_secs",
            2,
            &r.swarm_secs,
        ),
        (
            format!("1 → {n} spore, {many}, aggregate MB/s"),
            "swarm_aggregate_mbps",
            1,
            &r.swarm_mbps,
        ),
        (
            format!("1 → {n} seeder upload / file size"),
            "swarm_seeder_upload_ratio",
            2,
            &r.seeder_ratio,
        ),
        (
            format!("1 → {n} leechers' upload / file size"),
            "swarm_leechers_upload_ratio",
            2,
            &r.leecher_ratio,
        ),
    ];
    let rows: Vec<_> = rows
        .into_iter()
        .filter(|(_, _, _, v)| !v.is_empty())
        .map(|(label, key, prec, v)| (label, key, prec, summarize(v), v))
        .collect();
    let width = rows
        .iter()
        .map(|(l, ..)| l.chars().count())
        .max()
        .unwrap_or(0);

    println!();
    println!(
        "swarm over 127.0.0.1, on-disk stores, all nodes in one process, {WORKERS} tokio \
         workers, {} runs",
        opts.runs
    );
    println!();
    println!(
        "| {:<width$} |   median |      min |      max | runs |",
        "measurement"
    );
    println!(
        "|{}|---------:|---------:|---------:|-----:|",
        "-".repeat(width + 2)
    );
    for (label, _, prec, s, v) in &rows {
        println!(
            "| {label}{} | {:>8.prec$} | {:>8.prec$} | {:>8.prec$} | {:>4} |",
            " ".repeat(width - label.chars().count()),
            s.median,
            s.min,
            s.max,
            v.len()
        );
    }
    let ratio = (!r.one_spore.is_empty() && !r.one_iperf3.is_empty())
        .then(|| summarize(&r.one_spore).median / summarize(&r.one_iperf3).median);
    if let Some(ratio) = ratio {
        println!();
        println!("spore / iperf3 TCP (1 → 1, medians): {:.1}%", ratio * 100.0);
    }
    for (label, _, _, s, _) in &rows {
        if s.max > s.min * 1.25 {
            println!(
                "\nnote: {label} varied by more than 25% between runs; the machine is noisy, so \
                 trust the medians only with more --runs"
            );
        }
    }

    // One line for machines.
    let mut json = format!(
        "{{\"bench\":\"swarm\",\"runs\":{},\"workers\":{WORKERS},\"bytes\":{},\
         \"swarm_bytes\":{},\"leechers\":{n}",
        opts.runs, opts.bytes, opts.swarm_bytes
    );
    for (_, key, prec, s, v) in &rows {
        json.push_str(&stat_json(key, *prec, s, v));
    }
    if let Some(ratio) = ratio {
        json.push_str(&format!(",\"one_spore_over_iperf3_tcp\":{ratio:.4}"));
    }
    json.push('}');
    println!();
    println!("{json}");
}

fn stat_json(key: &str, prec: usize, s: &Summary, samples: &[f64]) -> String {
    let samples: Vec<String> = samples.iter().map(|x| format!("{x:.prec$}")).collect();
    format!(
        ",\"{key}\":{{\"median\":{:.prec$},\"min\":{:.prec$},\"max\":{:.prec$},\"samples\":[{}]}}",
        s.median,
        s.min,
        s.max,
        samples.join(",")
    )
}

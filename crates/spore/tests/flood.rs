//! A flood on 127.0.0.1: one attacker opens connections, streams and messages as fast as it can
//! against a `spore node` process with a memory limit, while honest peers keep pinging it.
//!
//! What is checked: the victim's resident memory grows by less than its configured limit, its
//! own accounting never exceeds the limit, and every honest ping is answered. The honest peers'
//! round-trip times before and during the flood are printed (`--nocapture`).

#![allow(clippy::unwrap_used)] // a panic is how a test fails

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{NodeProcess, SPORE, spore};
use spore_core::kad::{self, Key};
use spore_core::node::PROTOCOL_VERSION;
use spore_core::pow::{Difficulty, Stamp};
use spore_core::wire::{self, Message};
use spore_core::wire::{Capabilities, Hello};
use spore_core::{Keypair, PeerId, ping};
use spore_net::{NetConfig, NodeHandle, tls};

const DIFFICULTY: Difficulty = Difficulty(8);
/// The victim's memory budget, in MiB.
const LIMIT_MIB: u64 = 64;
/// How long the flood lasts.
const FLOOD: Duration = Duration::from_secs(12);
/// Attacker connections trying at once.
const ATTACK_CONNECTIONS: usize = 150;
const HONEST: usize = 3;

#[test]
fn a_flood_stays_under_the_memory_limit_and_honest_peers_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let limit = format!("{LIMIT_MIB}M");
    let child = Command::new(SPORE)
        .arg("--data-dir")
        .arg(dir.path())
        .args(["node", "--listen", "127.0.0.1:0", "--difficulty", "8"])
        .args(["--max-memory", &limit, "--max-inbound", "48"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let victim = NodeProcess(child);
    let pid = victim.0.id();
    let status = wait_status(dir.path());
    let victim_id: PeerId = status["peer_id"].as_str().unwrap().parse().unwrap();
    let victim_addr: SocketAddr = status["listen_addrs"][0].as_str().unwrap().parse().unwrap();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let mut honest = Vec::new();
        for _ in 0..HONEST {
            let node = honest_node().await;
            node.dial(victim_id, victim_addr).await.unwrap();
            honest.push(node);
        }
        let before = pings(&honest, victim_id, Duration::from_secs(3)).await;
        let baseline_kib = rss_kib(pid, "VmRSS");

        let stats = Arc::new(AttackStats::default());
        let deadline = Instant::now() + FLOOD;
        let attack = tokio::spawn(attack(victim_id, victim_addr, deadline, stats.clone()));
        // Let the flood build up, then measure the honest peers while it runs.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let during = pings(&honest, victim_id, FLOOD - Duration::from_secs(3)).await;
        let accounted = max_accounted(dir.path());
        attack.await.unwrap();
        let peak_kib = rss_kib(pid, "VmHWM");

        let status = status_json(dir.path());
        let limit_bytes = LIMIT_MIB << 20;
        let growth_kib = peak_kib.saturating_sub(baseline_kib);
        println!("flood against a node with max_memory {LIMIT_MIB} MiB, {FLOOD:?}:");
        println!(
            "  attacker: {} connections up, {} refused or failed, {} messages ({} MiB) written to QUIC",
            stats.connected.load(Ordering::Relaxed),
            stats.failed.load(Ordering::Relaxed),
            stats.messages.load(Ordering::Relaxed),
            stats.bytes.load(Ordering::Relaxed) >> 20,
        );
        println!(
            "  victim: RSS {} MiB before, peak {} MiB (growth {} MiB); accounted at most {} MiB; \
             {} evicted, {} frames dropped, {} reservations refused",
            baseline_kib >> 10,
            peak_kib >> 10,
            growth_kib >> 10,
            accounted >> 20,
            status["runtime"]["evicted"],
            status["runtime"]["frames_dropped"],
            status["resources"]["memory"]["refused"],
        );
        println!("  honest pings before: {}", before.summary());
        println!("  honest pings during: {}", during.summary());

        assert!(
            stats.messages.load(Ordering::Relaxed) > 10_000,
            "the attacker did not get to flood"
        );
        assert!(accounted <= limit_bytes, "accounted {accounted} > {limit_bytes}");
        assert!(
            growth_kib << 10 < limit_bytes,
            "RSS grew by {growth_kib} KiB, over the {LIMIT_MIB} MiB limit"
        );
        assert!(
            status["runtime"]["evicted"].as_u64().unwrap() > 0,
            "the attacker's newcomers never evicted anyone"
        );
        assert_eq!(during.lost, 0, "honest pings went unanswered during the flood");
        assert!(during.rtts.len() >= 30, "too few honest pings: {}", during.summary());
        for node in &honest {
            let peers = node.peers().await.unwrap();
            assert!(
                peers.iter().any(|p| p.peer == victim_id && p.ready),
                "an honest peer lost its connection"
            );
        }
        for node in honest {
            node.shutdown().await;
        }
    });
    drop(victim);
}

/// Polls the victim's status until it answers.
fn wait_status(data_dir: &Path) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = spore(data_dir, &["status", "--json"]);
        if out.status.success() {
            return serde_json::from_slice(&out.stdout).unwrap();
        }
        assert!(Instant::now() < deadline, "the node's API did not come up");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn status_json(data_dir: &Path) -> serde_json::Value {
    let out = spore(data_dir, &["status", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The most memory the victim accounted while the flood ran (sampled for a second).
fn max_accounted(data_dir: &Path) -> u64 {
    (0..5)
        .map(|_| {
            let s = status_json(data_dir);
            std::thread::sleep(Duration::from_millis(200));
            s["resources"]["memory"]["used"].as_u64().unwrap()
        })
        .max()
        .unwrap_or(0)
}

/// A line of `/proc/PID/status` in KiB (`VmRSS` now, `VmHWM` the peak).
fn rss_kib(pid: u32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    text.lines()
        .find_map(|l| {
            l.strip_prefix(field)?
                .trim_start_matches(':')
                .split_whitespace()
                .next()
        })
        .and_then(|v| v.parse().ok())
        .unwrap()
}

async fn honest_node() -> NodeHandle {
    let mut config = NetConfig {
        listen: vec!["127.0.0.1:0".parse().unwrap()],
        ..NetConfig::default()
    };
    config.node.difficulty = DIFFICULTY;
    let keypair = Keypair::generate(&mut rand_core::OsRng);
    let stamp = Stamp::mint(&keypair.peer_id(), DIFFICULTY);
    spore_net::start(keypair, stamp, config).await.unwrap().0
}

#[derive(Default)]
struct Pings {
    rtts: Vec<Duration>,
    lost: usize,
}

impl Pings {
    fn summary(&self) -> String {
        let mut r = self.rtts.clone();
        r.sort();
        let at = |q: f64| {
            r.get(((r.len() as f64 - 1.0) * q).round() as usize)
                .map_or("-".into(), |d| format!("{:.2} ms", d.as_secs_f64() * 1e3))
        };
        format!(
            "{} answered, {} lost; p50 {}, p99 {}, max {}",
            r.len(),
            self.lost,
            at(0.5),
            at(0.99),
            at(1.0)
        )
    }
}

/// Every honest node pings the victim every 50 ms for `span`.
async fn pings(honest: &[NodeHandle], victim: PeerId, span: Duration) -> Pings {
    let end = tokio::time::Instant::now() + span;
    let tasks: Vec<_> = honest
        .iter()
        .cloned()
        .map(|node| {
            tokio::spawn(async move {
                let mut out = Pings::default();
                while tokio::time::Instant::now() < end {
                    match tokio::time::timeout(Duration::from_secs(5), node.ping(victim)).await {
                        Ok(Ok(rtt)) => out.rtts.push(rtt),
                        _ => out.lost += 1,
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                out
            })
        })
        .collect();
    let mut all = Pings::default();
    for t in tasks {
        let p = t.await.unwrap();
        all.rtts.extend(p.rtts);
        all.lost += p.lost;
    }
    all
}

#[derive(Default)]
struct AttackStats {
    connected: AtomicU64,
    failed: AtomicU64,
    messages: AtomicU64,
    bytes: AtomicU64,
}

/// One attacker (one UDP socket) keeps up to [`ATTACK_CONNECTIONS`] connections trying, each
/// with a fresh identity, until `deadline`.
async fn attack(victim: PeerId, addr: SocketAddr, deadline: Instant, stats: Arc<AttackStats>) {
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let mut workers = Vec::new();
    for i in 0..ATTACK_CONNECTIONS {
        let (endpoint, stats) = (endpoint.clone(), stats.clone());
        workers.push(tokio::spawn(async move {
            let mut round = 0u64;
            while Instant::now() < deadline {
                round += 1;
                if flood_one(
                    &endpoint,
                    victim,
                    addr,
                    deadline,
                    &stats,
                    i as u64 * 1_000_000 + round,
                )
                .await
                .is_err()
                {
                    stats.failed.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }));
    }
    for w in workers {
        let _ = w.await;
    }
    endpoint.close(0u32.into(), b"done");
}

/// One connection: a valid handshake, then everything at once — a control stream of pings and
/// lookups as fast as QUIC takes them, a bulk stream holding a partial maximum-size frame,
/// application streams and bidirectional streams of junk. Never reads a byte back.
async fn flood_one(
    endpoint: &quinn::Endpoint,
    victim: PeerId,
    addr: SocketAddr,
    deadline: Instant,
    stats: &AttackStats,
    seed: u64,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let keypair = Keypair::generate(&mut rand_core::OsRng);
    let stamp = Stamp::mint(&keypair.peer_id(), DIFFICULTY);
    let transport = Arc::new(quinn::TransportConfig::default());
    let client = tls::client_config(&keypair, victim, transport)?;
    let conn = endpoint
        .connect_with(client, addr, tls::SERVER_NAME)?
        .await?;
    stats.connected.fetch_add(1, Ordering::Relaxed);
    let hello = Hello {
        versions: vec![PROTOCOL_VERSION],
        capabilities: Capabilities::DHT_SERVER,
        listen_addrs: vec![],
        observed_addr: addr,
        stamp,
        agent: "flood".into(),
    };
    let mut control = conn.open_uni().await?;
    control.write_all(&[0]).await?;
    control
        .write_all(&wire::encode_frame(&Message::Hello(hello))?)
        .await?;

    // A frame announced at the largest size, never completed.
    let side = conn.clone();
    tokio::spawn(async move {
        if let Ok(mut bulk) = side.open_uni().await {
            let mut head = vec![2u8];
            head.extend_from_slice(&(wire::MAX_FRAME_LEN as u32).to_be_bytes());
            head.resize(1 + 4 + wire::MAX_FRAME_LEN - 1, 0xAB);
            let _ = bulk.write_all(&head).await;
        }
        for _ in 0..32 {
            if let Ok(mut s) = side.open_uni().await {
                let _ = s.write_all(&[1u8; 64 << 10]).await;
            }
            if let Ok((mut s, _r)) = side.open_bi().await {
                let _ = s.write_all(&[3u8; 1024]).await;
            }
        }
    });

    let mut batch = Vec::new();
    let mut n = 0u64;
    while Instant::now() < deadline {
        batch.clear();
        for _ in 0..64 {
            n += 1;
            let msg = if n % 2 == 0 {
                Message::Ping(ping::Message::Ping { nonce: seed ^ n })
            } else {
                let mut target = [0u8; 32];
                target[..8].copy_from_slice(&(seed ^ n).to_le_bytes());
                Message::Kad(kad::Message::Request {
                    id: n,
                    request: kad::Request::FindNode {
                        target: Key(target),
                    },
                })
            };
            batch.extend_from_slice(&wire::encode_frame(&msg)?);
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(remaining, control.write_all(&batch)).await {
            Ok(Ok(())) => {
                stats.messages.fetch_add(64, Ordering::Relaxed);
                stats.bytes.fetch_add(batch.len() as u64, Ordering::Relaxed);
            }
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => break,
        }
    }
    conn.close(0u32.into(), b"done");
    Ok(())
}

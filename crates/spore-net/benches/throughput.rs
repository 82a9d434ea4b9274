//! Bulk throughput over loopback: a spore application stream against bare quinn and TCP.
//!
//! Three systems move the same number of bytes over 127.0.0.1, one stream each:
//!
//! - **spore**: two nodes (default [`NetConfig`], listening on 127.0.0.1, low proof-of-work
//!   difficulty); A dials B, writes the bytes on one [`NodeHandle::open_stream`] stream and
//!   finishes; B reads them from [`AppStreams::accept`](spore_net::AppStreams::accept).
//! - **quinn**: a plain quinn client and server with the same transport settings and the same TLS
//!   configurations ([`spore_net::tls`]), so crypto costs the same: the ratio spore / quinn is
//!   spore's own overhead.
//! - **iperf3 TCP**: `iperf3 -s -1` and `iperf3 -c -n BYTES -J` as subprocesses, for the speed of
//!   the kernel's TCP on this machine. Left out, with a note, if `iperf3` is not installed.
//!
//! Runs are interleaved (spore, quinn, iperf3, spore, ...) to spread the machine's noise over all
//! systems; the report gives median, min and max per system and the ratios of the medians, as a
//! markdown table and as one line of JSON. Progress goes to stderr.
//!
//! ```text
//! cargo bench -p spore-net --bench throughput -- --bytes 1G --runs 3
//! ```
//!
//! Options (after `--`; environment variables in brackets):
//!
//! - `--bytes N` [`SPORE_BENCH_BYTES`]: bytes per run, with an optional K, M or G suffix (powers
//!   of 1024). Default 1G.
//! - `--runs R` [`SPORE_BENCH_RUNS`]: runs per system. Default 3.
//! - `--only LIST`: comma-separated subset of `spore,quinn,iperf3`.
//! - `--stream-window N`, `--conn-window N`, `--send-window N`: override the
//!   [`TransportParams`] flow-control windows, for spore and bare quinn alike.
//! - `--quinn-udp-buffer N`: set SO_RCVBUF and SO_SNDBUF of the bare quinn sockets (spore's
//!   sockets keep the kernel default), to see what a larger buffer would give spore.
//!
//! Time runs from the sender's first payload write to the receiver's last payload byte;
//! connection setup is outside it. MB/s means 10^6 bytes per second.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use bytes::Bytes;
use spore_core::Keypair;
use spore_core::pow::{Difficulty, Stamp};
use spore_net::{Limits, NetConfig, NodeHandle, TransportParams, tls};
use support::{Summary, iperf3_installed, iperf3_run, mb_per_sec, parse_size, summarize};

/// Size of each `write_chunk`; one buffer is allocated and shared by every write.
const CHUNK: usize = 1 << 20;
/// Proof-of-work difficulty of the benchmark nodes: minting must not dominate setup.
const DIFFICULTY: Difficulty = Difficulty(8);
/// Worker threads of the tokio runtime, matching the two-core machines we run on.
const WORKERS: usize = 2;

fn main() -> Result<()> {
    let opts = Options::parse(std::env::args().skip(1))?;
    let mut systems = opts.systems.clone();
    if systems.contains(&System::Iperf3) && !iperf3_installed() {
        eprintln!("iperf3 not installed: apt-get install -y iperf3 (leaving out the TCP column)");
        systems.retain(|s| *s != System::Iperf3);
    }
    ensure!(!systems.is_empty(), "no system left to measure");

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(WORKERS)
        .enable_all()
        .build()?;
    eprintln!(
        "throughput: {} bytes x {} runs; transport {:?}",
        opts.bytes, opts.runs, opts.transport
    );

    let mut results: Vec<(System, Vec<f64>)> = systems.iter().map(|&s| (s, Vec::new())).collect();
    for run in 1..=opts.runs {
        for (system, samples) in &mut results {
            eprint!("[run {run}/{}] {:<10} ... ", opts.runs, system.label());
            let drops_before = udp_rcvbuf_errors();
            let mbps = match system {
                System::Spore => {
                    let secs = rt.block_on(spore_run(opts.bytes, &opts.transport))?;
                    mb_per_sec(opts.bytes, secs)
                }
                System::Quinn => {
                    let secs =
                        rt.block_on(quinn_run(opts.bytes, &opts.transport, opts.udp_buffer))?;
                    mb_per_sec(opts.bytes, secs)
                }
                System::Iperf3 => iperf3_run(opts.bytes)?,
            };
            match (drops_before, udp_rcvbuf_errors()) {
                (Some(a), Some(b)) if *system != System::Iperf3 => {
                    eprintln!(
                        "{mbps:>9.1} MB/s  (UDP receive-buffer drops: {})",
                        b.saturating_sub(a)
                    )
                }
                _ => eprintln!("{mbps:>9.1} MB/s"),
            }
            samples.push(mbps);
        }
    }
    report(&opts, &results);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Options

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum System {
    Spore,
    Quinn,
    Iperf3,
}

impl System {
    fn label(self) -> &'static str {
        match self {
            Self::Spore => "spore",
            Self::Quinn => "quinn",
            Self::Iperf3 => "iperf3 TCP",
        }
    }

    fn key(self) -> &'static str {
        match self {
            Self::Spore => "spore",
            Self::Quinn => "quinn",
            Self::Iperf3 => "iperf3_tcp",
        }
    }
}

struct Options {
    bytes: u64,
    runs: usize,
    systems: Vec<System>,
    transport: TransportParams,
    udp_buffer: Option<usize>,
}

impl Options {
    fn parse(mut args: impl Iterator<Item = String>) -> Result<Self> {
        let mut opts = Self {
            bytes: 1 << 30,
            runs: 3,
            systems: vec![System::Spore, System::Quinn, System::Iperf3],
            transport: TransportParams::default(),
            udp_buffer: None,
        };
        if let Ok(v) = std::env::var("SPORE_BENCH_BYTES") {
            opts.bytes = parse_size(&v).context("SPORE_BENCH_BYTES")?;
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
                "--runs" => opts.runs = value()?.parse().context("--runs")?,
                "--only" => {
                    opts.systems = value()?
                        .split(',')
                        .map(|s| match s.trim() {
                            "spore" => Ok(System::Spore),
                            "quinn" => Ok(System::Quinn),
                            "iperf3" | "tcp" => Ok(System::Iperf3),
                            other => bail!("unknown system {other:?} (spore, quinn, iperf3)"),
                        })
                        .collect::<Result<_>>()?;
                }
                "--stream-window" => {
                    opts.transport.stream_receive_window = window(&value()?)?;
                }
                "--conn-window" => opts.transport.receive_window = window(&value()?)?,
                "--send-window" => opts.transport.send_window = parse_size(&value()?)?,
                "--quinn-udp-buffer" => {
                    opts.udp_buffer = Some(usize::try_from(parse_size(&value()?)?)?);
                }
                "-h" | "--help" => {
                    eprintln!(
                        "usage: throughput [--bytes N[K|M|G]] [--runs R] \
                         [--only spore,quinn,iperf3] [--stream-window N] \
                         [--conn-window N] [--send-window N] [--quinn-udp-buffer N]"
                    );
                    std::process::exit(0);
                }
                other => bail!("unknown argument {other:?} (try --help)"),
            }
        }
        ensure!(opts.bytes > 0, "--bytes must be positive");
        ensure!(opts.runs > 0, "--runs must be positive");
        Ok(opts)
    }
}

fn window(text: &str) -> Result<u32> {
    u32::try_from(parse_size(text)?).with_context(|| format!("window {text:?} exceeds u32"))
}

// ---------------------------------------------------------------------------------------------
// The two QUIC measurements

/// Upper bound on one run, so a stall fails the benchmark instead of hanging it.
fn run_limit(bytes: u64) -> Duration {
    Duration::from_secs(60).max(Duration::from_secs(bytes / 5_000_000))
}

/// Two spore nodes on loopback: A dials B and sends `bytes` on one application stream.
/// Returns the seconds from A's first write to B's last byte.
async fn spore_run(bytes: u64, transport: &TransportParams) -> Result<f64> {
    let (a, _a_streams) = spore_node(transport).await?;
    let (b, mut b_streams) = spore_node(transport).await?;
    let b_addr = *b.listen_addrs().first().context("node B has no address")?;
    a.dial(b.peer_id(), b_addr).await.context("dial")?;

    let receiver = tokio::spawn(async move {
        let (_, recv) = b_streams.accept().await.context("node B stopped")?;
        receive(recv, bytes).await
    });
    let send = a.open_stream(b.peer_id()).await.context("open_stream")?;
    let sender = tokio::spawn(send_all(send, bytes));
    let result = measure(sender, receiver, bytes).await;
    a.shutdown().await;
    b.shutdown().await;
    result
}

async fn spore_node(transport: &TransportParams) -> Result<(NodeHandle, spore_net::AppStreams)> {
    let keypair = Keypair::generate(&mut rand_core::OsRng);
    let mut config = NetConfig {
        listen: vec![SocketAddr::from(([127, 0, 0, 1], 0))],
        transport: transport.clone(),
        ..NetConfig::default()
    };
    config.node.difficulty = DIFFICULTY;
    let stamp = Stamp::mint(&keypair.peer_id(), DIFFICULTY);
    Ok(spore_net::start(keypair, stamp, config).await?)
}

/// A bare quinn client and server with spore's transport settings and TLS, one uni stream.
async fn quinn_run(
    bytes: u64,
    transport: &TransportParams,
    udp_buffer: Option<usize>,
) -> Result<f64> {
    let (client_key, server_key) = (
        Keypair::generate(&mut rand_core::OsRng),
        Keypair::generate(&mut rand_core::OsRng),
    );
    let config = transport.to_quinn(&Limits::default());
    let server = quinn_endpoint(
        Some(tls::server_config(&server_key, config.clone())?),
        udp_buffer,
    )?;
    let server_addr = server.local_addr()?;
    let client = quinn_endpoint(None, udp_buffer)?;

    let accepting = server.clone();
    let accept = tokio::spawn(async move {
        let incoming = accepting.accept().await.context("server endpoint closed")?;
        Ok::<_, anyhow::Error>(incoming.await?)
    });
    let client_config = tls::client_config(&client_key, server_key.peer_id(), config)?;
    let conn = client
        .connect_with(client_config, server_addr, tls::SERVER_NAME)?
        .await?;
    let server_conn = accept.await??;

    let receiver = tokio::spawn(async move {
        let recv = server_conn.accept_uni().await?;
        receive(recv, bytes).await
    });
    let send = conn.open_uni().await?;
    let sender = tokio::spawn(send_all(send, bytes));
    let result = measure(sender, receiver, bytes).await;
    conn.close(0u32.into(), b"done");
    for endpoint in [&client, &server] {
        endpoint.close(0u32.into(), b"done");
        let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
    }
    result
}

/// A quinn endpoint on 127.0.0.1, bound like spore's (socket2, default `EndpointConfig`), with
/// the socket buffers set to `udp_buffer` bytes if given (the kernel caps them at
/// `net.core.rmem_max` / `wmem_max`).
fn quinn_endpoint(
    server: Option<quinn::ServerConfig>,
    udp_buffer: Option<usize>,
) -> Result<quinn::Endpoint> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    if let Some(size) = udp_buffer {
        socket.set_recv_buffer_size(size)?;
        socket.set_send_buffer_size(size)?;
    }
    socket.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())?;
    let runtime = quinn::default_runtime().context("no async runtime for quinn")?;
    Ok(quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        server,
        socket.into(),
        runtime,
    )?)
}

/// Writes `total` bytes in `CHUNK`-sized writes of one shared buffer, then finishes the stream.
/// Returns when the first write began, and the stream (dropping it early would be harmless, but
/// the caller keeps it until the receiver is done so nothing is torn down mid-measurement).
async fn send_all(mut send: quinn::SendStream, total: u64) -> Result<(Instant, quinn::SendStream)> {
    let buf = Bytes::from(vec![0x5a_u8; CHUNK]);
    // The first clone promotes the Vec into a shared allocation; do it outside the timed loop.
    let full = buf.clone();
    let start = Instant::now();
    let mut left = total;
    while left > 0 {
        let n = usize::try_from(left.min(CHUNK as u64))?;
        let piece = if n == CHUNK {
            full.clone()
        } else {
            full.slice(..n)
        };
        send.write_chunk(piece).await?;
        left -= n as u64;
    }
    send.finish()?;
    Ok((start, send))
}

/// Reads the stream to its end, counting bytes. Returns when the last expected byte arrived.
async fn receive(mut recv: quinn::RecvStream, expected: u64) -> Result<Instant> {
    let mut got = 0u64;
    let mut last = None;
    while let Some(chunk) = recv.read_chunk(usize::MAX, true).await? {
        got += chunk.bytes.len() as u64;
        if got >= expected && last.is_none() {
            last = Some(Instant::now());
        }
    }
    ensure!(got == expected, "received {got} bytes, expected {expected}");
    last.context("received nothing")
}

/// Waits for both sides and returns the seconds from the first write to the last byte read.
async fn measure(
    sender: tokio::task::JoinHandle<Result<(Instant, quinn::SendStream)>>,
    receiver: tokio::task::JoinHandle<Result<Instant>>,
    bytes: u64,
) -> Result<f64> {
    let (sent, received) =
        tokio::time::timeout(run_limit(bytes), async { tokio::join!(sender, receiver) })
            .await
            .context("run timed out")?;
    let (start, _send) = sent.context("sender panicked")?.context("sender")?;
    let end = received.context("receiver panicked")?.context("receiver")?;
    Ok(end.duration_since(start).as_secs_f64())
}

/// The kernel's count of UDP datagrams dropped for a full socket receive buffer (Linux only).
/// Such drops are losses to QUIC's congestion control, so they explain slow runs.
fn udp_rcvbuf_errors() -> Option<u64> {
    let snmp = std::fs::read_to_string("/proc/net/snmp").ok()?;
    let mut lines = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (names, values) = (lines.next()?, lines.next()?);
    let column = names.split_whitespace().position(|n| n == "RcvbufErrors")?;
    values.split_whitespace().nth(column)?.parse().ok()
}

// ---------------------------------------------------------------------------------------------
// Report

fn report(opts: &Options, results: &[(System, Vec<f64>)]) {
    let t = &opts.transport;
    println!();
    println!(
        "throughput over 127.0.0.1: {} bytes ({:.2} GiB) per run, {} runs, {WORKERS} tokio workers; \
         stream window {}, connection window {}, send window {}",
        opts.bytes,
        opts.bytes as f64 / f64::from(1u32 << 30),
        opts.runs,
        t.stream_receive_window,
        t.receive_window,
        t.send_window
    );
    println!();
    println!("| system     | median MB/s | min MB/s | max MB/s | runs |");
    println!("|------------|------------:|---------:|---------:|-----:|");
    let summaries: Vec<(System, Summary, &[f64])> = results
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(s, v)| (*s, summarize(v), v.as_slice()))
        .collect();
    for (system, s, v) in &summaries {
        println!(
            "| {:<10} | {:>11.1} | {:>8.1} | {:>8.1} | {:>4} |",
            system.label(),
            s.median,
            s.min,
            s.max,
            v.len()
        );
    }
    for (system, s, _) in &summaries {
        if s.max > s.min * 1.25 {
            println!(
                "\nnote: {} varied by more than 25% between runs; the machine is noisy, so \
                 trust the ratios only with more --runs",
                system.label()
            );
        }
    }
    let median = |sys: System| {
        summaries
            .iter()
            .find(|(s, _, _)| *s == sys)
            .map(|(_, s, _)| s.median)
    };
    let ratios: Vec<(&str, &str, f64)> = [
        ("spore / quinn", "spore_over_quinn", System::Quinn),
        (
            "spore / iperf3 TCP",
            "spore_over_iperf3_tcp",
            System::Iperf3,
        ),
        (
            "quinn / iperf3 TCP",
            "quinn_over_iperf3_tcp",
            System::Iperf3,
        ),
    ]
    .into_iter()
    .filter_map(|(label, key, base)| {
        let num = if key.starts_with("quinn") {
            median(System::Quinn)?
        } else {
            median(System::Spore)?
        };
        Some((label, key, num / median(base)?))
    })
    .collect();
    if !ratios.is_empty() {
        println!();
        println!("| ratio of medians   |  value |");
        println!("|--------------------|-------:|");
        for (label, _, r) in &ratios {
            println!("| {label:<18} | {:>5.1}% |", r * 100.0);
        }
    }

    // One line for machines.
    let mut json = format!(
        "{{\"bench\":\"throughput\",\"unit\":\"MB/s\",\"bytes\":{},\"runs\":{},\"workers\":{WORKERS},\
         \"transport\":{{\"stream_receive_window\":{},\"receive_window\":{},\"send_window\":{}}}",
        opts.bytes, opts.runs, t.stream_receive_window, t.receive_window, t.send_window
    );
    for (system, s, v) in &summaries {
        let samples: Vec<String> = v.iter().map(|x| format!("{x:.1}")).collect();
        json.push_str(&format!(
            ",\"{}\":{{\"median\":{:.1},\"min\":{:.1},\"max\":{:.1},\"samples\":[{}]}}",
            system.key(),
            s.median,
            s.min,
            s.max,
            samples.join(",")
        ));
    }
    for (_, key, r) in &ratios {
        json.push_str(&format!(",\"{key}\":{r:.4}"));
    }
    json.push('}');
    println!();
    println!("{json}");
}

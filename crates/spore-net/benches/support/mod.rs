//! Helpers shared by the spore-net benchmarks (`throughput`, `swarm`): size parsing, the iperf3
//! TCP baseline, and summaries of samples. A subdirectory's `mod.rs` is not a bench target of
//! its own; each bench includes it with `mod support;`.

use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// Parses `123`, `64K`, `1M`, `1G` (powers of 1024; a trailing `B` or `iB` is allowed).
pub(crate) fn parse_size(text: &str) -> Result<u64> {
    let t = text.trim().to_ascii_uppercase();
    let t = t
        .strip_suffix("IB")
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(&t);
    let (digits, shift) = match t.chars().last() {
        Some('K') => (&t[..t.len() - 1], 10),
        Some('M') => (&t[..t.len() - 1], 20),
        Some('G') => (&t[..t.len() - 1], 30),
        _ => (t, 0),
    };
    let n: u64 = digits
        .trim()
        .parse()
        .with_context(|| format!("bad size {text:?}"))?;
    n.checked_mul(1 << shift)
        .with_context(|| format!("size {text:?} too large"))
}

/// MB/s (10^6 bytes per second) for `bytes` moved in `secs`.
pub(crate) fn mb_per_sec(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / secs / 1e6
}

// ---------------------------------------------------------------------------------------------
// iperf3

pub(crate) fn iperf3_installed() -> bool {
    Command::new("iperf3")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// One `iperf3` TCP transfer of `bytes` over loopback; returns the receiver's MB/s.
pub(crate) fn iperf3_run(bytes: u64) -> Result<f64> {
    let port = TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port()
        .to_string();
    let mut server = Command::new("iperf3")
        .args(["-s", "-1", "-B", "127.0.0.1", "-p", &port])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting iperf3 server")?;
    let result = iperf3_client(&port, bytes);
    // `-1` makes the server exit after one test; make sure it does.
    let deadline = Instant::now() + Duration::from_secs(5);
    while server.try_wait()?.is_none() {
        if Instant::now() > deadline {
            let _ = server.kill();
            let _ = server.wait();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    result
}

fn iperf3_client(port: &str, bytes: u64) -> Result<f64> {
    let n = bytes.to_string();
    // The server needs a moment before it listens; a refused client did not start a test.
    for _ in 0..100 {
        let out = Command::new("iperf3")
            .args(["-c", "127.0.0.1", "-p", port, "-n", &n, "-J"])
            .stderr(Stdio::null())
            .output()
            .context("running iperf3 client")?;
        let json = String::from_utf8_lossy(&out.stdout);
        if let Some(bps) = json_number_after(&json, "\"sum_received\"", "\"bits_per_second\"") {
            return Ok(bps / 8.0 / 1e6);
        }
        if !json.contains("unable to connect") {
            bail!("iperf3 client failed: {}", json.trim());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("iperf3 server never accepted a connection on port {port}")
}

/// The number after `key` inside the object that follows `object` (iperf3's `sum_received` holds
/// no nested objects, so the object ends at the first `}`).
fn json_number_after(json: &str, object: &str, key: &str) -> Option<f64> {
    let rest = &json[json.find(object)? + object.len()..];
    let body = &rest[..rest.find('}')?];
    let value = body[body.find(key)? + key.len()..]
        .trim_start()
        .strip_prefix(':')?;
    let end = value.find([',', '\n', '}']).unwrap_or(value.len());
    value[..end].trim().parse().ok()
}

// ---------------------------------------------------------------------------------------------
// Summaries

pub(crate) struct Summary {
    pub(crate) median: f64,
    pub(crate) min: f64,
    pub(crate) max: f64,
}

/// Median, min and max of `samples` (which must not be empty).
pub(crate) fn summarize(samples: &[f64]) -> Summary {
    let mut s = samples.to_vec();
    s.sort_by(f64::total_cmp);
    let mid = s.len() / 2;
    let median = if s.len() % 2 == 1 {
        s[mid]
    } else {
        (s[mid - 1] + s[mid]) / 2.0
    };
    Summary {
        median,
        min: s[0],
        max: s[s.len() - 1],
    }
}

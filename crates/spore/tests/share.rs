//! `spore share` and `spore get` as a user runs them, as separate processes on 127.0.0.1: a file
//! and a directory arrive intact; a `get` killed with SIGKILL mid-download resumes and fetches
//! only what was not yet verified; `spore blobs` lists, keeps and removes; bad tickets get a
//! clear error.

#![allow(clippy::unwrap_used)] // helpers of tests; a panic is how they fail

mod common;

use common::{NodeProcess, SPORE, spore};

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Starts `spore share PATH --json` and returns the process and its ticket.
fn share(data_dir: &Path, path: &Path, extra: &[&str]) -> (NodeProcess, String) {
    let mut child = Command::new(SPORE)
        .arg("--data-dir")
        .arg(data_dir)
        .args([
            "share",
            "--json",
            "--listen",
            "127.0.0.1:0",
            "--difficulty",
            "8",
        ])
        .args(extra)
        .arg(path)
        .env_remove("SPORE_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start spore share");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let v: Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("spore share printed {line:?}: {e}"));
    (
        NodeProcess(child),
        v["ticket"].as_str().unwrap().to_string(),
    )
}

fn get_args<'a>(ticket: &'a str, out: &'a Path) -> Vec<&'a str> {
    vec![
        "get",
        ticket,
        "-o",
        out.to_str().unwrap(),
        "--json",
        "--listen",
        "127.0.0.1:0",
        "--difficulty",
        "8",
    ]
}

fn get(data_dir: &Path, ticket: &str, out: &Path) -> Value {
    let o = spore(data_dir, &get_args(ticket, out));
    assert!(
        o.status.success(),
        "spore get failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).unwrap()
}

fn random_file(path: &Path, len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let data: Vec<u8> = (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    std::fs::write(path, &data).unwrap();
    data
}

#[test]
fn a_file_and_a_directory_arrive_intact() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let file = tmp.path().join("notes.bin");
    let data = random_file(&file, 5 << 20, 1);
    let (mut sharer, ticket) = share(&a, &file, &[]);
    let out = tmp.path().join("got.bin");
    let report = get(&b, &ticket, &out);
    assert_eq!(std::fs::read(&out).unwrap(), data);
    assert_eq!(report["size"], 5 << 20);

    // Stopped, the sharer saves its credit ledger: what it gave the getter, and the getter's
    // signed receipts for most of it (one per MiB received).
    let term = Command::new("kill")
        .args(["-TERM", &sharer.0.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while sharer.0.try_wait().unwrap().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "the sharer did not stop"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let ledger =
        spore_store::credit::load_ledger(&a.join(spore_store::credit::LEDGER_FILE)).unwrap();
    let getter = ledger
        .iter()
        .find(|e| e.totals.uploaded >= 5 << 20)
        .unwrap_or_else(|| panic!("no peer got the file in {ledger:?}"));
    let receipt = getter.receipt.as_ref().unwrap();
    assert!(
        receipt.verify() && receipt.bytes() >= 4 << 20,
        "{receipt:?}"
    );
    assert_eq!(getter.totals.receipted, receipt.bytes());

    // A directory, nested, with an empty file.
    let dir = tmp.path().join("album");
    std::fs::create_dir_all(dir.join("2026/june")).unwrap();
    let one = random_file(&dir.join("cover.jpg"), 300_000, 2);
    let two = random_file(&dir.join("2026/june/beach.raw"), 2 << 20, 3);
    std::fs::write(dir.join("2026/empty.txt"), b"").unwrap();
    let (_dir_sharer, dir_ticket) = share(&tmp.path().join("c"), &dir, &[]);
    let out_dir = tmp.path().join("album-copy");
    get(&b, &dir_ticket, &out_dir);
    assert_eq!(std::fs::read(out_dir.join("cover.jpg")).unwrap(), one);
    assert_eq!(
        std::fs::read(out_dir.join("2026/june/beach.raw")).unwrap(),
        two
    );
    assert_eq!(std::fs::read(out_dir.join("2026/empty.txt")).unwrap(), b"");

    // Getting again into an existing path is refused before anything runs.
    let again = spore(&b, &get_args(&ticket, &out));
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));

    // The store keeps what was fetched, pinned; gc removes nothing pinned; rm removes.
    let list: Value =
        serde_json::from_slice(&spore(&b, &["blobs", "list", "--json"]).stdout).unwrap();
    let blobs = list.as_array().unwrap();
    assert!(blobs.iter().all(|b| b["complete"] == true));
    assert!(blobs.iter().any(|b| b["collection"] == true));
    let gc = spore(&b, &["blobs", "gc"]);
    assert!(String::from_utf8_lossy(&gc.stdout).contains("removed 0"));
    let file_hash = report["hash"].as_str().unwrap();
    let rm = spore(&b, &["blobs", "rm", file_hash]);
    assert!(
        rm.status.success(),
        "{}",
        String::from_utf8_lossy(&rm.stderr)
    );
    let list: Value =
        serde_json::from_slice(&spore(&b, &["blobs", "list", "--json"]).stdout).unwrap();
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .all(|b| b["hash"] != file_hash)
    );
}

/// Most bytes of data and proof for `bytes` of blob: each request of a 64 KiB piece carries
/// the piece's path from the root, two 32-byte hashes per tree level (under 20 levels here).
fn with_proof(bytes: u64) -> u64 {
    bytes + (bytes / (64 * 1024) + 1) * 20 * 64
}

#[test]
fn a_killed_get_resumes_and_fetches_only_what_was_not_verified() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let file = tmp.path().join("big.bin");
    let size = 48u64 << 20;
    let data = random_file(&file, size as usize, 4);
    // Slow enough to kill it half way: 8 MiB/s.
    let (_sharer, ticket) = share(&a, &file, &["--upload-limit", "8M"]);
    let out = tmp.path().join("big.copy");

    let getter = Command::new(SPORE)
        .arg("--data-dir")
        .arg(&b)
        .args(get_args(&ticket, &out))
        .env_remove("SPORE_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut getter = NodeProcess(getter);
    // Wait until more than a third has verified (the node's own count, through its API).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(Instant::now() < deadline, "the download made no progress");
        let o = spore(&b, &["status", "--json"]);
        if o.status.success() {
            let v: Value = serde_json::from_slice(&o.stdout).unwrap();
            let verified = v["swarm"]["swarms"][0]["verified_bytes"]
                .as_u64()
                .unwrap_or(0);
            if verified > size / 3 {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    getter.0.kill().unwrap(); // SIGKILL: no chance to commit anything more
    getter.0.wait().unwrap();
    drop(getter);
    assert!(!out.exists(), "nothing is written before it all verified");

    // What the store recorded as verified survived the kill.
    let kept = {
        let store = spore_store::blobs::BlobStore::open(
            b.join("blobs"),
            spore_store::blobs::BlobLimits::default(),
        )
        .unwrap();
        let hash = spore_store::blobs::Hash::of(&data);
        match store.have(&hash).unwrap() {
            spore_store::blobs::BlobStatus::Partial { groups, .. } => {
                groups.count_ones() * 16 * 1024
            }
            other => panic!("expected a partial download, found {other:?}"),
        }
    };
    assert!(kept > 0, "nothing verified was recorded before the kill");

    let report = get(&b, &ticket, &out);
    assert_eq!(std::fs::read(&out).unwrap(), data);
    let fetched = report["downloaded_bytes"].as_u64().unwrap();
    let missing = size - kept;
    println!(
        "killed at {:.0} % recorded; the second run fetched {fetched} bytes for {missing} \
         missing ({:.2} %)",
        kept as f64 * 100.0 / size as f64,
        fetched as f64 * 100.0 / missing as f64
    );
    assert!(fetched >= missing, "fetched {fetched} < missing {missing}");
    assert!(
        fetched <= with_proof(missing),
        "fetched {fetched} bytes, but only {missing} (plus proof) were not verified"
    );
}

#[test]
fn bad_tickets_get_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("x");
    for (ticket, says) in [
        ("hello", "a ticket starts with"),
        ("blob!!!!", "not base32"),
        ("blobaiaa", "damaged"),
        ("blobaeaa", "older spore"),
    ] {
        let o = spore(tmp.path(), &get_args(ticket, &out));
        assert!(!o.status.success());
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(says), "{ticket}: {err}");
    }
    let o = spore(tmp.path(), &["share", "/nonexistent/spore-test-path"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("/nonexistent/spore-test-path"));
}

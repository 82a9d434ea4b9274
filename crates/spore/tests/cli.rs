//! The `spore` binary as a user runs it: two `spore node` processes on 127.0.0.1, queried with
//! `spore peers --json` and `spore status --json`, talking through `spore pub` and `spore sub`,
//! finding each other's shared names with `spore search`, plus the CLI's error paths.

#![allow(clippy::unwrap_used)] // helpers of tests; a panic is how they fail

mod common;

use common::{NodeProcess, SPORE, spore};

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn start_node(data_dir: &Path, extra: &[&str]) -> NodeProcess {
    let mut args = vec!["node", "--listen", "127.0.0.1:0", "--difficulty", "8"];
    args.extend_from_slice(extra);
    let child = Command::new(SPORE)
        .arg("--data-dir")
        .arg(data_dir)
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start spore node");
    NodeProcess(child)
}

/// Polls `spore <args> --json` until `check` accepts the answer.
fn wait_json(data_dir: &Path, args: &[&str], what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = String::new();
    while Instant::now() < deadline {
        let out = spore(data_dir, args);
        if out.status.success() {
            let v: Value = serde_json::from_slice(&out.stdout).expect("valid JSON");
            if check(&v) {
                return v;
            }
            last = v.to_string();
        } else {
            last = stderr(&out);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out waiting for {what}; last answer: {last}");
}

fn listen_addr(status: &Value) -> SocketAddr {
    status["listen_addrs"][0].as_str().unwrap().parse().unwrap()
}

#[test]
fn two_node_processes_list_each_other() {
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a_id = stdout(&spore(a_dir.path(), &["id"])).trim().to_string();
    assert_eq!(a_id.len(), 52, "{a_id}");

    let _a = start_node(a_dir.path(), &[]);
    let a_status = wait_json(a_dir.path(), &["status", "--json"], "node a's API", |_| {
        true
    });
    assert_eq!(a_status["peer_id"], a_id.as_str());
    let a_addr = listen_addr(&a_status);

    let bootstrap = format!("{a_id}@{a_addr}");
    let _b = start_node(b_dir.path(), &["--bootstrap", &bootstrap]);
    let b_status = wait_json(b_dir.path(), &["status", "--json"], "node b's API", |_| {
        true
    });
    let b_id = b_status["peer_id"].as_str().unwrap().to_string();
    let b_addr = listen_addr(&b_status);

    let lists = |id: &str, addr: SocketAddr| {
        let id = id.to_string();
        move |v: &Value| {
            v.as_array().is_some_and(|peers| {
                peers.iter().any(|p| {
                    p["peer"] == id.as_str() && p["ready"] == true && p["addr"] == addr.to_string()
                })
            })
        }
    };
    let a_peers = wait_json(
        a_dir.path(),
        &["peers", "--json"],
        "a lists b",
        lists(&b_id, b_addr),
    );
    let b_peers = wait_json(
        b_dir.path(),
        &["peers", "--json"],
        "b lists a",
        lists(&a_id, a_addr),
    );
    // Each side also learned the address the other observes it at.
    assert_eq!(a_peers[0]["observed_us"], a_addr.to_string());
    assert_eq!(b_peers[0]["observed_us"], b_addr.to_string());

    // The text forms work too.
    let table = stdout(&spore(a_dir.path(), &["peers"]));
    assert!(
        table.contains(&b_id) && table.contains("inbound"),
        "{table}"
    );
    let status = stdout(&spore(a_dir.path(), &["status"]));
    assert!(status.contains("1 ready"), "{status}");

    // `spore ping` to a's real id works; to a wrong id it fails naming both ids.
    let ok = spore(
        a_dir.path(),
        &[
            "ping",
            &bootstrap,
            "--count",
            "2",
            "--interval",
            "0.1",
            "--difficulty",
            "8",
        ],
    );
    assert!(ok.status.success(), "{}", stderr(&ok));
    assert!(stdout(&ok).contains("2 received"), "{}", stdout(&ok));
    let wrong = format!("{b_id}@{a_addr}");
    let bad = spore(
        a_dir.path(),
        &["ping", &wrong, "--count", "1", "--difficulty", "8"],
    );
    assert!(!bad.status.success());
    let err = stderr(&bad);
    assert!(
        err.contains(&a_id) && err.contains(&b_id) && err.contains("mismatch"),
        "{err}"
    );

    // The DHT through the CLI: a value put on one node is read on the other, and each finds
    // the other's signed address record.
    wait_json(
        b_dir.path(),
        &["status", "--json"],
        "b joins the DHT",
        |v| v["dht"]["bootstrapped"] == true,
    );
    let put = spore(a_dir.path(), &["dht", "put", "motd", "hello from a"]);
    assert!(put.status.success(), "{}", stderr(&put));
    let got = spore(b_dir.path(), &["dht", "get", &format!("{a_id}/motd")]);
    assert!(got.status.success(), "{}", stderr(&got));
    assert_eq!(stdout(&got).trim(), "hello from a");
    let found = spore(b_dir.path(), &["find-peer", &a_id, "--json"]);
    assert!(found.status.success(), "{}", stderr(&found));
    let record: Value = serde_json::from_slice(&found.stdout).unwrap();
    assert!(
        record["addrs"]
            .as_array()
            .unwrap()
            .contains(&Value::from(a_addr.to_string()))
    );
    let missing = spore(
        b_dir.path(),
        &["dht", "get", &format!("{a_id}/nothing-here")],
    );
    assert!(!missing.status.success());
    assert!(stderr(&missing).contains("404"), "{}", stderr(&missing));
    let status = stdout(&spore(a_dir.path(), &["status"]));
    assert!(status.contains("routing table"), "{status}");

    // The API refuses requests without the token.
    let api: SocketAddr = std::fs::read_to_string(a_dir.path().join("api.addr"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let mut stream = std::net::TcpStream::connect(api).unwrap();
    use std::io::{Read, Write};
    write!(
        stream,
        "GET /v1/peers HTTP/1.1\r\nHost: {api}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
}

/// Starts node a, and node b joined through it; returns a's id.
fn two_joined_nodes(a_dir: &Path, b_dir: &Path) -> (String, NodeProcess, NodeProcess) {
    let a_id = stdout(&spore(a_dir, &["id"])).trim().to_string();
    let a = start_node(a_dir, &[]);
    let a_status = wait_json(a_dir, &["status", "--json"], "node a's API", |_| true);
    let bootstrap = format!("{a_id}@{}", listen_addr(&a_status));
    let b = start_node(b_dir, &["--bootstrap", &bootstrap]);
    wait_json(b_dir, &["status", "--json"], "b connects to a", |v| {
        v["ready_peers"] == 1
    });
    (a_id, a, b)
}

/// Runs `spore sub` on `sub_dir` and `spore pub` on `pub_dir` (again every second, until the
/// subscriber has its message: a publish can race the subscription's announcement); returns the
/// subscriber's output and the ids `spore pub --json` reported.
fn pub_until_received(
    sub_dir: &Path,
    sub_args: &[&str],
    pub_dir: &Path,
    pub_args: &[&str],
    stdin: Option<&[u8]>,
) -> (Output, Vec<String>) {
    let sub = Command::new(SPORE)
        .arg("--data-dir")
        .arg(sub_dir)
        .args(sub_args)
        .env_remove("SPORE_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start spore sub");
    let mut sub = NodeProcess(sub);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut ids = Vec::new();
    let mut last = String::new();
    while Instant::now() < deadline {
        let mut publisher = Command::new(SPORE)
            .arg("--data-dir")
            .arg(pub_dir)
            .args(pub_args)
            .arg("--json")
            .env_remove("SPORE_LOG")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run spore pub");
        {
            use std::io::Write;
            let mut input = publisher.stdin.take().unwrap();
            input.write_all(stdin.unwrap_or_default()).unwrap();
        }
        let out = publisher.wait_with_output().unwrap();
        last = stderr(&out);
        if let Ok(answer) = serde_json::from_slice::<Value>(&out.stdout) {
            ids.push(answer["id"].as_str().unwrap().to_string());
        }
        let wait = Instant::now() + Duration::from_secs(1);
        while Instant::now() < wait {
            if let Some(status) = sub.0.try_wait().unwrap() {
                use std::io::Read;
                let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
                sub.0
                    .stdout
                    .take()
                    .unwrap()
                    .read_to_end(&mut stdout)
                    .unwrap();
                sub.0
                    .stderr
                    .take()
                    .unwrap()
                    .read_to_end(&mut stderr)
                    .unwrap();
                let out = Output {
                    status,
                    stdout,
                    stderr,
                };
                return (out, ids);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    panic!("the subscriber got nothing in time; last `spore pub` said: {last}");
}

#[test]
fn pub_on_one_node_reaches_sub_on_the_other() {
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a_id, _a, _b) = two_joined_nodes(a_dir.path(), b_dir.path());

    let (out, ids) = pub_until_received(
        b_dir.path(),
        &["sub", "news/today", "--count", "1", "--json"],
        a_dir.path(),
        &["pub", "news/today", "hello from a"],
        None,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1, "{text}");
    let m: Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(m["topic"], "news/today");
    assert_eq!(m["data"], "hello from a");
    assert_eq!(m["encoding"], "utf8");
    assert_eq!(m["author"], a_id.as_str());
    assert_eq!(m["from"], a_id.as_str());
    assert!(m["seq"].is_u64());
    assert!(
        ids.contains(&m["id"].as_str().unwrap().to_string()),
        "{m} not in {ids:?}"
    );

    // Text lines, and a message read from standard input.
    let (out, _) = pub_until_received(
        b_dir.path(),
        &["sub", "news/today", "-n", "1"],
        a_dir.path(),
        &["pub", "news/today", "-"],
        Some(b"piped in\n"),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let line = stdout(&out);
    let short = &a_id[..10];
    assert!(
        line.starts_with(&format!("{short} ")) && line.ends_with(": piped in\n"),
        "{line:?}"
    );

    // Publishing where nobody listens fails, saying so.
    let lonely = spore(a_dir.path(), &["pub", "nobody-here", "hello?"]);
    assert!(!lonely.status.success());
    assert!(
        stderr(&lonely).contains("nobody got"),
        "{}",
        stderr(&lonely)
    );
}

#[test]
fn trust_vouch_check_and_revoke_decide_who_may_publish_on_a_closed_topic() {
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a_id, mut a, _b) = two_joined_nodes(a_dir.path(), b_dir.path());
    let b_id = stdout(&spore(b_dir.path(), &["id"])).trim().to_string();
    let a_path = a_dir.path();

    let check = spore(a_path, &["trust", "check", &b_id]);
    assert_eq!(check.status.code(), Some(1), "{}", stderr(&check));
    assert!(
        stdout(&check).contains("not trusted within 2"),
        "{}",
        stdout(&check)
    );
    let vouch = spore(a_path, &["trust", "vouch", &b_id]);
    assert!(vouch.status.success(), "{}", stderr(&vouch));
    assert!(stdout(&vouch).contains("vouched for"), "{}", stdout(&vouch));
    let check = spore(a_path, &["trust", "check", &b_id, "--depth", "1", "--json"]);
    assert!(check.status.success(), "{}", stderr(&check));
    let c: Value = serde_json::from_slice(&check.stdout).unwrap();
    assert_eq!(c["chain"], serde_json::json!([a_id, b_id]));
    let saved = std::fs::read_to_string(a_path.join("vouches.txt")).unwrap();
    assert!(saved.lines().any(|l| l == b_id), "{saved}");
    let myself = spore(a_path, &["trust", "vouch", &a_id]);
    assert!(!myself.status.success());
    assert!(
        stderr(&myself).contains("cannot vouch for itself"),
        "{}",
        stderr(&myself)
    );

    // The club admits authors a trusts within one vouch: b is one.
    let (out, _) = pub_until_received(
        a_path,
        &["sub", "club", "--trusted-within", "1", "-n", "1", "--json"],
        b_dir.path(),
        &["pub", "club", "b is in"],
        None,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let m: Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(
        (m["author"].as_str(), m["data"].as_str()),
        (Some(b_id.as_str()), Some("b is in"))
    );

    // Revoked, b is out: its messages no longer get through (the topic stays closed).
    let revoke = spore(a_path, &["trust", "revoke", &b_id]);
    assert!(revoke.status.success(), "{}", stderr(&revoke));
    let again = spore(a_path, &["trust", "revoke", &b_id]);
    assert!(!again.status.success());
    assert!(
        stderr(&again).contains("does not vouch"),
        "{}",
        stderr(&again)
    );
    let saved = std::fs::read_to_string(a_path.join("vouches.txt")).unwrap();
    assert!(!saved.contains(&b_id), "{saved}");
    let sub = Command::new(SPORE)
        .arg("--data-dir")
        .arg(a_path)
        .args(["sub", "club", "-n", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut sub = NodeProcess(sub);
    for k in 0..4 {
        let _ = spore(b_dir.path(), &["pub", "club", &format!("b is out {k}")]);
        std::thread::sleep(Duration::from_millis(500));
        assert!(
            sub.0.try_wait().unwrap().is_none(),
            "a delivered b's message"
        );
    }
    let show = wait_json(
        a_path,
        &["trust", "show", "--json"],
        "the club closed",
        |v| v["closed_topics"] == serde_json::json!([["club", 1]]),
    );
    assert_eq!(show["vouches"], serde_json::json!([]));

    // Vouches survive a restart.
    assert!(spore(a_path, &["trust", "vouch", &b_id]).status.success());
    drop(sub);
    let _ = a.0.kill();
    let _ = a.0.wait();
    let _a = start_node(a_path, &[]);
    let show = wait_json(a_path, &["trust", "show", "--json"], "a restarted", |v| {
        v["vouches"] == serde_json::json!([b_id])
    });
    assert!(show["reputation"].is_array());
}

#[test]
fn search_on_one_node_finds_names_shared_through_the_api_of_the_other() {
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a_id, _a, _b) = two_joined_nodes(a_dir.path(), b_dir.path());
    let is_neighbor = |id: &str| {
        let id = Value::from(id);
        move |v: &Value| {
            v["overlay"]["active"]
                .as_array()
                .is_some_and(|a| a.contains(&id))
        }
    };
    let b_status = wait_json(
        b_dir.path(),
        &["status", "--json"],
        "a in b's overlay",
        is_neighbor(&a_id),
    );
    let b_id = b_status["peer_id"].as_str().unwrap().to_string();
    wait_json(
        a_dir.path(),
        &["status", "--json"],
        "b in a's overlay",
        is_neighbor(&b_id),
    );
    let a_addr = {
        let a_status = wait_json(a_dir.path(), &["status", "--json"], "a", |_| true);
        listen_addr(&a_status)
    };

    // An application shares names on node a through its HTTP API.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let a_api = || {
        let dir = spore::store::DataDir::open(a_dir.path()).unwrap();
        spore::api::ApiClient::from_data_dir(&dir).unwrap()
    };
    let share = |name: &str, content: String, size: u64| spore::api::SharedName {
        name: name.into(),
        content,
        size,
    };
    runtime.block_on(async {
        let api = a_api();
        let shared: spore::api::SharedName = api
            .put_json(
                "/v1/shared",
                &share("Holiday-Photos-2026.tar", "AB".repeat(32), 4_200_000_000),
            )
            .await
            .unwrap();
        assert_eq!(shared.content, "ab".repeat(32), "normalised to lowercase");
        let _: spore::api::SharedName = api
            .put_json("/v1/shared", &share("rust-book.pdf", "cd".repeat(32), 1))
            .await
            .unwrap();
        let bad = api
            .put_json::<_, Value>("/v1/shared", &share("x", "abc".into(), 1))
            .await
            .unwrap_err();
        assert!(format!("{bad:#}").contains("400"), "{bad:#}");
        let overlay: Value = api.get("/v1/overlay").await.unwrap();
        assert_eq!(overlay["active"], serde_json::json!([b_id]), "{overlay}");
        assert!(overlay["passive"].is_u64() && overlay["enabled"] == true);
    });

    // `spore search` on node b finds it: a table, then JSON lines.
    let out = spore(b_dir.path(), &["search", "photos", "--timeout", "2s"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let table = stdout(&out);
    for expected in [
        "NAME",
        "Holiday-Photos-2026.tar",
        "3.9 GiB",
        "abababababab",
        &a_id[..10],
        "1 result from 1 peer",
    ] {
        assert!(
            table.contains(expected),
            "missing {expected:?} in:\n{table}"
        );
    }
    assert!(!table.contains("rust-book"), "{table}");

    let out = spore(
        b_dir.path(),
        &["search", "HOLIDAY", "photos", "-t", "1500ms", "--json"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1, "{text}");
    let hit: Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(hit["name"], "Holiday-Photos-2026.tar");
    assert_eq!(hit["content"], "ab".repeat(32));
    assert_eq!(hit["size"], 4_200_000_000u64);
    assert_eq!(hit["responder"], a_id.as_str());
    assert_eq!(hit["addrs"], serde_json::json!([a_addr.to_string()]));

    // Nothing found is an answer, not an error; an unshared name is gone.
    let out = spore(b_dir.path(), &["search", "nomatch", "--timeout", "1s"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("no results"), "{}", stdout(&out));
    runtime.block_on(async {
        let api = a_api();
        let path = format!("/v1/shared/{}", "cd".repeat(32));
        let gone: Value = api.delete(&path).await.unwrap();
        assert_eq!(gone["content"], "cd".repeat(32));
        let again = api.delete::<Value>(&path).await.unwrap_err();
        assert!(format!("{again:#}").contains("404"), "{again:#}");
    });
    let out = spore(
        b_dir.path(),
        &["search", "rust", "--timeout", "1s", "--json"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "");
    assert!(stderr(&out).contains("no results"), "{}", stderr(&out));

    let status = stdout(&spore(b_dir.path(), &["status"]));
    assert!(
        status.contains("overlay      1 neighbor (active view)"),
        "{status}"
    );
    assert!(status.contains("4 searches sent"), "{status}");
}

#[test]
fn world_readable_key_is_refused_with_the_fix() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    assert!(spore(dir.path(), &["id"]).status.success());
    let key = dir.path().join("identity.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = spore(dir.path(), &["id"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("chmod 600"), "{}", stderr(&out));
}

#[test]
fn clear_errors_for_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let out = spore(dir.path(), &["peers"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("spore node"), "{}", stderr(&out));
    for args in [
        &["pub", "t", "m"][..],
        &["sub", "t"][..],
        &["search", "t"][..],
    ] {
        let out = spore(dir.path(), args);
        assert!(!out.status.success());
        assert!(stderr(&out).contains("spore node"), "{}", stderr(&out));
    }

    let out = spore(dir.path(), &["search", "t", "--timeout", "1m"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("at most 25s"), "{}", stderr(&out));
    let out = spore(dir.path(), &["search"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("<WORDS>"), "{}", stderr(&out));

    let out = spore(dir.path(), &["ping", "not-a-peer"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("PEERID@IP:PORT"), "{}", stderr(&out));

    let out = spore(dir.path(), &["ping", "abc@127.0.0.1:1"]);
    assert!(
        stderr(&out).contains("52 base32 characters"),
        "{}",
        stderr(&out)
    );

    std::fs::write(dir.path().join("config.toml"), "listen = 5\n").unwrap();
    let out = spore(dir.path(), &["node"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("config.toml"), "{}", stderr(&out));
}

#[test]
fn demo_runs_and_reports() {
    let dir = tempfile::tempdir().unwrap();
    let out = spore(dir.path(), &["demo", "--nodes", "4", "--pings", "2"]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    let text = stdout(&out);
    for expected in [
        "refused during the",
        "still answers pings",
        "reads it: \"hello from node 1\"",
        "6 messages: 18/18 deliveries, 0 delivered twice",
        "each exactly once",
        "2 hits for \"photos\" from 2 nodes",
        "all 3 nodes hold it",
        "every copy re-verifies against the root",
        "all 4 replicas converged in",
        "visits   10 (= 1 + 2 + 3 + 4: every increment counted once)",
        "writers  {node 0, node 1, node 2, node 3}",
        "documents        4 writers, 4",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    let answered = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("pings answered"))
        .unwrap();
    let (ok, sent) = answered.trim().split_once('/').unwrap();
    assert_eq!(ok, sent, "every ping answered");
}

#[test]
fn sim_runs_a_scenario_and_writes_metrics_and_charts() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tiny.toml");
    std::fs::write(
        &file,
        r#"
name = "tiny"
nodes = 40
duration = "2m"
[node]
ping = false
pex = false
[join]
settle = "30s"
[lookups]
count = 50
over = "1m"
[[expect]]
metric = "lookup_success"
min = 0.9
"#,
    )
    .unwrap();
    let out_dir = dir.path().join("out");
    let file_arg = file.to_str().unwrap();
    let out_arg = out_dir.to_str().unwrap();
    let out = spore(dir.path(), &["sim", file_arg, "--out", out_arg, "--quiet"]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("PASS lookup_success"), "{text}");
    let metrics: Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("metrics.json")).unwrap())
            .unwrap();
    assert_eq!(metrics["scenario"], "tiny");
    assert_eq!(metrics["runs"][0]["summary"]["lookups"], 50.0);
    let svg = std::fs::read_to_string(out_dir.join("lookup-success.svg")).unwrap();
    assert!(svg.starts_with("<svg"));

    // The same file and seed, the same trace; JSON on stdout.
    let out = spore(dir.path(), &["sim", file_arg, "--out", out_arg, "--json"]);
    let again: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(
        again["runs"][0]["trace_hash"],
        metrics["runs"][0]["trace_hash"]
    );

    // A bound that fails makes the command fail, and says which.
    let strict = std::fs::read_to_string(&file)
        .unwrap()
        .replace("min = 0.9", "min = 1.5");
    std::fs::write(&file, strict).unwrap();
    let out = spore(dir.path(), &["sim", file_arg, "--out", out_arg, "--quiet"]);
    assert!(!out.status.success());
    assert!(
        stdout(&out).contains("FAIL lookup_success"),
        "{}",
        stdout(&out)
    );
    assert!(stderr(&out).contains("bounds failed"), "{}", stderr(&out));
}

#[test]
fn sim_explains_bad_scenarios() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(
        &file,
        "name = \"bad\"\nnodes = 40\nduration = \"2m\"\nlookup = 3\n",
    )
    .unwrap();
    let out = spore(dir.path(), &["sim", file.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("bad.toml") && err.contains("unknown field"),
        "{err}"
    );

    let out = spore(dir.path(), &["sim", "no/such/file.toml"]);
    assert!(
        stderr(&out).contains("cannot read scenario no/such/file.toml"),
        "{}",
        stderr(&out)
    );

    std::fs::write(&file, "name = \"bad\"\nnodes = 40\nduration = \"2m\"\n").unwrap();
    let out = spore(dir.path(), &["sim", file.to_str().unwrap(), "--nodes", "3"]);
    assert!(
        stderr(&out).contains("fewer than 2 honest"),
        "{}",
        stderr(&out)
    );
}

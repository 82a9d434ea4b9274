//! `spore doc` as a user runs it: two `spore node` processes on 127.0.0.1; one creates a
//! document, the other joins with the ticket, is admitted as a writer, and both edit (registers,
//! counters, sets, text through $EDITOR); `watch` sees the other's change; a restarted node
//! still has the document.

#![allow(clippy::unwrap_used)] // helpers of tests; a panic is how they fail

mod common;

use common::{NodeProcess, SPORE, spore};

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

fn ok(o: Output) -> String {
    assert!(
        o.status.success(),
        "spore failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn start_node(data_dir: &Path) -> NodeProcess {
    let _ = std::fs::remove_file(data_dir.join("api.addr"));
    let child = Command::new(SPORE)
        .arg("--data-dir")
        .arg(data_dir)
        .args(["node", "--listen", "127.0.0.1:0", "--difficulty", "8"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start spore node");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !spore(data_dir, &["status", "--json"]).status.success() {
        assert!(Instant::now() < deadline, "the node did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    NodeProcess(child)
}

/// Polls `spore doc get DOC --json` until `check` accepts the entries.
fn wait_doc(dir: &Path, doc: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = String::new();
    while Instant::now() < deadline {
        let o = spore(dir, &["doc", "get", doc, "--json"]);
        if o.status.success() {
            let v: Value = serde_json::from_slice(&o.stdout).unwrap();
            if check(&v["entries"]) {
                return v;
            }
            last = v.to_string();
        } else {
            last = String::from_utf8_lossy(&o.stderr).into_owned();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out waiting for {what}; last: {last}");
}

#[test]
fn two_nodes_share_and_edit_a_document() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let node_a = start_node(&a);
    let _node_b = start_node(&b);

    let created: Value = serde_json::from_str(&ok(spore(&a, &["doc", "new", "--json"]))).unwrap();
    let doc = created["doc"].as_str().unwrap().to_string();
    let ticket = created["ticket"].as_str().unwrap().to_string();
    ok(spore(&a, &["doc", "set", &doc, "title", "Trip plan"]));
    ok(spore(&a, &["doc", "set", &doc, "votes", "2", "--incr"]));

    // B joins with the ticket and reads.
    assert_eq!(ok(spore(&b, &["doc", "join", &ticket])).trim(), doc);
    wait_doc(&b, &doc, "B to read A's edits", |e| {
        e["Register:title"] == "Trip plan" && e["Counter:votes"] == "2"
    });
    // Not a writer yet: refused with a reason.
    let refused = spore(&b, &["doc", "set", &doc, "title", "mine"]);
    assert!(!refused.status.success());
    // The owner admits B; B writes; A sees it.
    let b_id = ok(spore(&b, &["id"])).trim().to_string();
    ok(spore(&a, &["doc", "allow", &doc, &b_id]));
    let until = Instant::now() + Duration::from_secs(20);
    while !spore(&b, &["doc", "set", &doc, "tags", "beach", "--add"])
        .status
        .success()
    {
        assert!(Instant::now() < until, "B never became a writer");
        std::thread::sleep(Duration::from_millis(200));
    }
    ok(spore(&b, &["doc", "set", &doc, "votes", "3", "--incr"]));
    wait_doc(&a, &doc, "A to see B's edits", |e| {
        e["Counter:votes"] == "5" && e["Set:tags"].as_str().unwrap_or("").contains("beach")
    });

    // Text through $EDITOR: a script stands in for the user.
    let editor = tmp.path().join("editor.sh");
    std::fs::write(&editor, "#!/bin/sh\nprintf 'day 1: swim\\n' >> \"$1\"\n").unwrap();
    std::fs::set_permissions(&editor, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let edited = Command::new(SPORE)
        .arg("--data-dir")
        .arg(&a)
        .args(["doc", "edit", &doc, "notes"])
        .env("EDITOR", &editor)
        .env_remove("VISUAL")
        .output()
        .unwrap();
    ok(edited);
    wait_doc(&b, &doc, "B to see the text", |e| {
        e["Text:notes"]
            .as_str()
            .unwrap_or("")
            .contains("day 1: swim")
    });

    // Watch on A prints the state, then B's next change.
    let watcher = Command::new(SPORE)
        .arg("--data-dir")
        .arg(&a)
        .args(["doc", "watch", &doc, "--count", "2"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    ok(spore(&b, &["doc", "set", &doc, "title", "Trip plan v2"]));
    let out = watcher.wait_with_output().unwrap();
    let lines: Vec<&str> = std::str::from_utf8(&out.stdout).unwrap().lines().collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(lines[1].contains("Trip plan v2"), "{lines:?}");

    // Closing the document to trusted peers: A vouches for nobody, so B's edits stop
    // reaching A while A's own still apply; a depth beyond 4 is refused.
    let closed = ok(spore(&a, &["doc", "close", &doc, "--trusted-within", "1"]));
    assert!(closed.contains("trusted within 1"), "{closed}");
    let too_deep = spore(&a, &["doc", "close", &doc, "--trusted-within", "9"]);
    assert!(!too_deep.status.success());
    ok(spore(&b, &["doc", "set", &doc, "title", "from outside"]));
    ok(spore(&a, &["doc", "set", &doc, "votes", "1", "--incr"]));
    std::thread::sleep(Duration::from_secs(1));
    let v: Value = serde_json::from_str(&ok(spore(&a, &["doc", "get", &doc, "--json"]))).unwrap();
    assert_eq!(v["entries"]["Register:title"], "Trip plan v2", "{v}");

    // A restarts: the document is still there (redb), with everything. (The closure lasted
    // only while A ran: once A meets B again, B's title may arrive.)
    drop(node_a);
    let _node_a = start_node(&a);
    let v = wait_doc(&a, &doc, "A to reload the document", |e| {
        let title = &e["Register:title"];
        (title == "Trip plan v2" || title == "from outside") && e["Counter:votes"] == "6"
    });
    assert!(v["writers"].as_array().unwrap().len() >= 2);
}

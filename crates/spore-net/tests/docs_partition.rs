//! Five real nodes edit one document, are partitioned into two groups by the kernel's firewall
//! (iptables drops every packet between 127.0.0.2 and 127.0.0.3), keep editing on both sides,
//! and converge to one state once the partition heals.
//!
//! Needs root (for iptables); skips with a message otherwise. CI runs it as root.

#![allow(clippy::unwrap_used)] // helpers of tests; a panic is how they fail

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use spore_core::doc::{DocId, Edit, Value};
use spore_core::pow::{Difficulty, Stamp};
use spore_core::{Keypair, PeerId};
use spore_net::{NetConfig, NodeHandle, TransportParams};
use tokio::time::Instant;

const DIFFICULTY: Difficulty = Difficulty(8);
const GROUP_A: &str = "127.0.0.2";
const GROUP_B: &str = "127.0.0.3";

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn have_iptables() -> bool {
    Command::new("iptables")
        .args(["-w", "-L", "INPUT", "-n"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The partition: DROP rules for both directions, removed when dropped.
struct Partition;

impl Partition {
    fn rule(action: &str, from: &str, to: &str) -> bool {
        // Removing a rule that is gone fails, by design of the loop in `drop`: keep it quiet.
        Command::new("iptables")
            .args(["-w", action, "INPUT", "-s", from, "-d", to, "-j", "DROP"])
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    fn start() -> Partition {
        assert!(Self::rule("-I", GROUP_A, GROUP_B));
        assert!(Self::rule("-I", GROUP_B, GROUP_A));
        Partition
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        while Self::rule("-D", GROUP_A, GROUP_B) {}
        while Self::rule("-D", GROUP_B, GROUP_A) {}
    }
}

struct TestNode {
    handle: NodeHandle,
    addr: SocketAddr,
}

/// A node on `ip` that keeps reconnecting to `keep` and notices a dead path within a second or
/// two (short idle timeout), so the partition really cuts its connections.
async fn start(ip: &str) -> TestNode {
    let keypair = Keypair::generate(&mut rand_core::OsRng);
    let stamp = Stamp::mint(&keypair.peer_id(), DIFFICULTY);
    let mut config = NetConfig {
        listen: vec![format!("{ip}:0").parse().unwrap()],
        transport: TransportParams {
            idle_timeout: Duration::from_secs(3),
            keep_alive: Duration::from_millis(500),
            ..TransportParams::default()
        },
        dial_timeout: Duration::from_secs(2),
        ..NetConfig::default()
    };
    config.node.difficulty = DIFFICULTY;
    config.node.ping.interval = None;
    config.node.kad.auto_bootstrap = false;
    config.node.gossip.enabled = false;
    let (handle, _) = spore_net::start(keypair, stamp, config).await.unwrap();
    let addr = handle.listen_addrs()[0];
    TestNode { handle, addr }
}

async fn render(node: &NodeHandle, doc: DocId) -> BTreeMap<String, String> {
    node.doc_get(doc)
        .await
        .unwrap()
        .map(|d| d.render())
        .unwrap_or_default()
}

/// Waits until `check` holds for the renders of every node in `nodes`.
async fn wait_for(
    nodes: &[&TestNode],
    doc: DocId,
    what: &str,
    check: impl Fn(&[BTreeMap<String, String>]) -> bool,
) {
    let started = Instant::now();
    let until = started + Duration::from_secs(60);
    loop {
        let mut states = Vec::new();
        for n in nodes {
            states.push(render(&n.handle, doc).await);
        }
        if check(&states) {
            eprintln!("{what}: {:.1} s", started.elapsed().as_secs_f64());
            return;
        }
        assert!(
            Instant::now() < until,
            "timed out waiting for {what}: {states:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn connected(a: &NodeHandle, b: PeerId) -> bool {
    a.peers()
        .await
        .unwrap()
        .iter()
        .any(|p| p.peer == b && p.ready)
}

fn set(key: &str, value: &str) -> Edit {
    Edit::Set(key.into(), Value::Str(value.into()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_partitioned_in_two_groups_converge_after_the_merge() {
    if !is_root() || !have_iptables() {
        eprintln!("skipped: needs root and iptables to partition the nodes (CI runs it as root)");
        return;
    }
    let mut nodes = Vec::new();
    for i in 0..5 {
        nodes.push(start(if i < 3 { GROUP_A } else { GROUP_B }).await);
    }
    // A full mesh.
    for i in 0..5 {
        for j in i + 1..5 {
            let (a, b) = (&nodes[i], &nodes[j]);
            a.handle.dial(b.handle.peer_id(), b.addr).await.unwrap();
        }
    }
    // Node 0 owns the document and admits the others as writers; they open it.
    let owner = &nodes[0].handle;
    let doc = owner.doc_create(1).await.unwrap();
    let mut access = None;
    for n in &nodes[1..] {
        access = Some(owner.doc_add_writer(doc, n.handle.peer_id()).await.unwrap());
    }
    let access = access.unwrap();
    for n in &nodes[1..] {
        n.handle
            .doc_open(access.clone(), vec![owner.peer_id()])
            .await
            .unwrap();
    }
    for (i, n) in nodes.iter().enumerate() {
        n.handle
            .doc_edit(
                doc,
                vec![
                    set(&format!("hello-{i}"), "before"),
                    Edit::Increment("count".into(), 1),
                ],
            )
            .await
            .unwrap();
    }
    let all: Vec<&TestNode> = nodes.iter().collect();
    wait_for(&all, doc, "the first edits everywhere", |s| {
        s.iter().all(|m| m == &s[0] && m.len() == 6)
    })
    .await;

    // The partition: group A (0, 1, 2) and group B (3, 4) lose each other.
    let partition = Partition::start();
    let until = Instant::now() + Duration::from_secs(60);
    while connected(&nodes[0].handle, nodes[3].handle.peer_id()).await
        || connected(&nodes[2].handle, nodes[4].handle.peer_id()).await
    {
        assert!(
            Instant::now() < until,
            "connections across the partition stay up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (i, n) in nodes.iter().enumerate() {
        let side = if i < 3 { "a" } else { "b" };
        let mut edits = vec![
            set("motto", &format!("written in {side} by {i}")),
            set(&format!("during-{i}"), side),
            Edit::Increment("count".into(), 10),
            Edit::Add("members".into(), Value::Int(i as i64)),
        ];
        if i == 0 || i == 3 {
            edits.push(Edit::Insert("notes".into(), 0, format!("[{side}]")));
        }
        n.handle.doc_edit(doc, edits).await.unwrap();
    }
    // Each side converges on its own, without the other's edits.
    let (a, b) = (&all[..3], &all[3..]);
    wait_for(a, doc, "group A to agree", |s| {
        s.iter().all(|m| m == &s[0]) && s[0].contains_key("Register:during-2")
    })
    .await;
    wait_for(b, doc, "group B to agree", |s| {
        s.iter().all(|m| m == &s[0]) && s[0].contains_key("Register:during-4")
    })
    .await;
    let side_a = render(&nodes[0].handle, doc).await;
    let side_b = render(&nodes[3].handle, doc).await;
    assert!(
        !side_a.contains_key("Register:during-3"),
        "the partition leaked"
    );
    assert!(
        !side_b.contains_key("Register:during-0"),
        "the partition leaked"
    );
    assert_ne!(side_a, side_b);

    // The merge: the firewall rules go, the nodes reconnect, and sync repairs the rest.
    drop(partition);
    for (i, j) in [(0, 3), (1, 4), (2, 3)] {
        let (x, y) = (&nodes[i], &nodes[j]);
        let until = Instant::now() + Duration::from_secs(60);
        while x.handle.dial(y.handle.peer_id(), y.addr).await.is_err() {
            assert!(Instant::now() < until, "cannot reconnect {i} and {j}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    wait_for(&all, doc, "all five to converge", |s| {
        s.iter().all(|m| m == &s[0])
            && (0..5).all(|i| s[0].contains_key(&format!("Register:during-{i}")))
    })
    .await;
    let merged = render(&nodes[4].handle, doc).await;
    println!("merged state: {merged:#?}");
    // Nothing lost on either side: every increment, every set member, both texts.
    assert_eq!(merged["Counter:count"], "55");
    assert_eq!(merged["Set:members"], "{0, 1, 2, 3, 4}");
    let notes = &merged["Text:notes"];
    assert!(notes.contains("[a]") && notes.contains("[b]"), "{notes}");
    for n in &nodes {
        n.handle.shutdown().await;
    }
}

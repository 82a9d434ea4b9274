//! Document compaction between real nodes on 127.0.0.1: the owner and a writer edit, the owner
//! folds what both applied into a checkpoint, the writer folds it too, and a reader that joins
//! afterwards receives the checkpoint's state and the changes beyond it.

#![allow(clippy::unwrap_used)] // helpers of tests; a panic is how they fail

use std::net::SocketAddr;
use std::time::Duration;

use spore_core::Keypair;
use spore_core::doc::{DocId, Document, Edit, Value};
use spore_core::pow::{Difficulty, Stamp};
use spore_net::{NetConfig, NodeHandle};
use tokio::time::Instant;

const DIFFICULTY: Difficulty = Difficulty(8);

struct TestNode {
    handle: NodeHandle,
    addr: SocketAddr,
}

/// A node on 127.0.0.1 whose documents are checkpointed as soon as anything is stable, and
/// synced with a replica peer every second or so (which is how the owner hears what writers
/// applied).
async fn start() -> TestNode {
    let keypair = Keypair::generate(&mut rand_core::OsRng);
    let stamp = Stamp::mint(&keypair.peer_id(), DIFFICULTY);
    let mut config = NetConfig {
        listen: vec!["127.0.0.1:0".parse().unwrap()],
        ..NetConfig::default()
    };
    config.node.difficulty = DIFFICULTY;
    config.node.ping.interval = None;
    config.node.kad.auto_bootstrap = false;
    config.node.gossip.enabled = false;
    config.node.docs.checkpoint_bytes = 1;
    config.node.docs.anti_entropy = Some(Duration::from_secs(1));
    let (handle, _) = spore_net::start(keypair, stamp, config).await.unwrap();
    let addr = handle.listen_addrs()[0];
    TestNode { handle, addr }
}

async fn doc(node: &TestNode, id: DocId) -> Document {
    node.handle.doc_get(id).await.unwrap().unwrap()
}

/// Waits until `check` holds for `node`'s replica of `id`.
async fn wait_for(node: &TestNode, id: DocId, what: &str, check: impl Fn(&Document) -> bool) {
    let started = Instant::now();
    loop {
        if let Some(d) = node.handle.doc_get(id).await.unwrap()
            && check(&d)
        {
            eprintln!("{what}: {:.1} s", started.elapsed().as_secs_f64());
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_joining_after_a_checkpoint_gets_the_state_and_the_rest() {
    let (owner, writer, reader) = (start().await, start().await, start().await);
    owner
        .handle
        .dial(writer.handle.peer_id(), writer.addr)
        .await
        .unwrap();
    let id = owner.handle.doc_create(1).await.unwrap();
    let access = owner
        .handle
        .doc_add_writer(id, writer.handle.peer_id())
        .await
        .unwrap();
    writer
        .handle
        .doc_open(access.clone(), vec![owner.handle.peer_id()])
        .await
        .unwrap();
    for i in 0..20 {
        let line = format!("line {i}, typed and then deleted\n");
        let n = line.chars().count();
        for node in [&owner, &writer] {
            let edits = vec![
                Edit::Insert("notes".into(), 0, line.clone()),
                Edit::Increment("edits".into(), 1),
            ];
            node.handle.doc_edit(id, edits).await.unwrap();
        }
        let text = doc(&owner, id).await.text("notes").unwrap_or_default();
        if text.chars().count() >= n {
            owner
                .handle
                .doc_edit(id, vec![Edit::Delete("notes".into(), 0, n)])
                .await
                .unwrap();
        }
    }
    owner
        .handle
        .doc_edit(
            id,
            vec![Edit::Set("title".into(), Value::Str("kept".into()))],
        )
        .await
        .unwrap();

    // Once the writer has told the owner what it applied, the owner folds it all in, and the
    // writer folds the same checkpoint after its next sync with the owner.
    wait_for(&owner, id, "the owner's checkpoint of everything", |d| {
        d.checkpoint().is_some() && d.is_empty() && d.applied() == 61
    })
    .await;
    let cp = doc(&owner, id).await.checkpoint().unwrap().clone();
    wait_for(&writer, id, "the writer to fold it", |d| {
        d.checkpoint().is_some_and(|c| c.number() >= cp.number()) && d.is_empty()
    })
    .await;
    writer
        .handle
        .doc_edit(id, vec![Edit::Increment("edits".into(), 1)])
        .await
        .unwrap();

    // The reader joins from the writer alone: it lacks every folded change, so it gets the
    // checkpoint's state, then the change made after it.
    reader
        .handle
        .dial(writer.handle.peer_id(), writer.addr)
        .await
        .unwrap();
    reader
        .handle
        .doc_open(access, vec![writer.handle.peer_id()])
        .await
        .unwrap();
    wait_for(&reader, id, "the reader to catch up", |d| d.applied() == 62).await;
    let (r, w) = (doc(&reader, id).await, doc(&writer, id).await);
    assert_eq!(r.render(), w.render());
    assert!(r.checkpoint().is_some());
    assert_eq!(r.counter("edits"), 41);
    assert_eq!(r.get("title"), Some(&Value::Str("kept".into())));
    for n in [owner, writer, reader] {
        n.handle.shutdown().await;
    }
}

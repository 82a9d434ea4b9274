use spore_core::doc::sync::{Config, DocSync};
use spore_core::doc::{Document, Edit, Limits, Value};
use spore_core::identity::Keypair;
use spore_core::time::Instant;

use super::*;

fn key(seed: u8) -> Keypair {
    Keypair::from_secret_bytes([seed; 32])
}

fn set(k: &str, v: &str) -> Vec<Edit> {
    vec![Edit::Set(k.into(), Value::Str(v.into()))]
}

/// A document of `owner` with `n` changes.
fn doc_with(owner: &Keypair, nonce: u64, n: usize) -> (Document, Vec<Change>) {
    let mut doc = Document::create(owner, nonce, Limits::default());
    let changes = (0..n)
        .map(|i| {
            doc.change(owner, set("k", &format!("v{i}")))
                .expect("owner edits")
        })
        .collect();
    (doc, changes)
}

fn sorted(mut changes: Vec<Change>) -> Vec<Change> {
    changes.sort_by_key(Change::id);
    changes
}

fn open(dir: &tempfile::TempDir) -> RedbDocStore {
    open_with(dir, DocLimits::default())
}

fn open_with(dir: &tempfile::TempDir, limits: DocLimits) -> RedbDocStore {
    RedbDocStore::open(&dir.path().join(DOCS_FILE), limits).expect("open")
}

#[test]
fn round_trip_across_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (key(1), key(2));
    let (doc1, changes1) = doc_with(&a, 1, 5);
    let (doc2, changes2) = doc_with(&b, 7, 3);
    let (doc3, _) = doc_with(&a, 2, 0);

    let mut store = open(&dir);
    for (doc, changes) in [(&doc1, &changes1), (&doc2, &changes2)] {
        store.save_access(doc.access()).unwrap();
        // In two batches, as document sync would.
        let (first, rest) = changes.split_at(2);
        store.save_changes(&doc.id(), first).unwrap();
        store.save_changes(&doc.id(), rest).unwrap();
    }
    store.save_access(doc3.access()).unwrap();
    assert_eq!(store.len().unwrap(), 3);
    drop(store);

    let mut store = open(&dir);
    let mut loaded = store.load().unwrap();
    loaded.sort_by_key(|(a, _)| a.doc());
    let mut expected = vec![
        (doc1.access().clone(), sorted(changes1)),
        (doc2.access().clone(), sorted(changes2)),
        (doc3.access().clone(), vec![]),
    ];
    expected.sort_by_key(|(a, _)| a.doc());
    let loaded: Vec<_> = loaded.into_iter().map(|(a, c)| (a, sorted(c))).collect();
    assert_eq!(loaded, expected);
    let report = store.last_load();
    assert_eq!((report.docs, report.changes, report.skipped()), (3, 8, 0));
    assert!(report.notes.is_empty());

    // The changes rebuild the document.
    let (access, changes) = loaded
        .into_iter()
        .find(|(a, _)| a.doc() == doc1.id())
        .unwrap();
    let mut rebuilt = Document::open(access, Limits::default()).unwrap();
    for c in changes {
        rebuilt.apply(c).unwrap();
    }
    assert_eq!(rebuilt.render(), doc1.render());
    assert_eq!(rebuilt.change_ids().ids(), doc1.change_ids().ids());
}

#[test]
fn a_newer_access_list_replaces_an_older_one_but_not_the_reverse() {
    let dir = tempfile::tempdir().unwrap();
    let owner = key(1);
    let mut doc = Document::create(&owner, 1, Limits::default());
    let v1 = doc.access().clone();
    let v2 = doc.add_writer(&owner, key(2).peer_id()).unwrap();
    let v3 = doc.add_writer(&owner, key(3).peer_id()).unwrap();
    assert_eq!((v1.version(), v2.version(), v3.version()), (1, 2, 3));

    let mut store = open(&dir);
    assert!(store.put_access(&v1).unwrap());
    assert!(store.put_access(&v3).unwrap());
    // Older ones, and the same one again, change nothing.
    assert!(!store.put_access(&v2).unwrap());
    assert!(!store.put_access(&v1).unwrap());
    assert!(!store.put_access(&v3).unwrap());
    store.save_access(&v2).unwrap();
    drop(store);

    let mut store = open(&dir);
    assert_eq!(store.load().unwrap(), vec![(v3, vec![])]);
    assert_eq!(store.len().unwrap(), 1);
}

#[test]
fn a_change_saved_twice_is_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let owner = key(1);
    let (doc, changes) = doc_with(&owner, 1, 3);
    let id = doc.id();
    let mut store = open(&dir);
    store.save_access(doc.access()).unwrap();

    assert_eq!(store.put_changes(&id, &changes[..2]).unwrap(), 2);
    let once = store.usage(&id);
    assert_eq!(once.changes, 2);
    // Again, again within one batch, and with a new one.
    assert_eq!(store.put_changes(&id, &changes[..2]).unwrap(), 0);
    let dup = [changes[0].clone(), changes[0].clone()];
    assert_eq!(store.put_changes(&id, &dup).unwrap(), 0);
    assert_eq!(store.usage(&id), once);
    assert_eq!(store.put_changes(&id, &changes).unwrap(), 1);
    store.save_changes(&id, &changes).unwrap();
    assert_eq!(store.usage(&id).changes, 3);
    drop(store);

    let mut store = open(&dir);
    assert_eq!(store.usage(&id).changes, 3);
    let loaded = store.load().unwrap();
    assert_eq!(loaded[0].1.len(), 3);
}

#[test]
fn remove_forgets_a_document_and_only_it() {
    let dir = tempfile::tempdir().unwrap();
    let owner = key(1);
    let (doc1, changes1) = doc_with(&owner, 1, 4);
    let (doc2, changes2) = doc_with(&owner, 2, 2);
    let mut store = open(&dir);
    for (doc, changes) in [(&doc1, &changes1), (&doc2, &changes2)] {
        store.save_access(doc.access()).unwrap();
        store.save_changes(&doc.id(), changes).unwrap();
    }

    store.remove(&doc1.id()).unwrap();
    assert_eq!(store.usage(&doc1.id()), DocUsage::default());
    assert!(!store.remove_doc(&doc1.id()).unwrap(), "already gone");
    // Changes of a removed document are refused until its access list is stored again.
    let err = store.put_changes(&doc1.id(), &changes1).unwrap_err();
    assert!(matches!(err, DocsError::NoAccess { .. }), "{err}");
    drop(store);

    let mut store = open(&dir);
    assert_eq!(store.len().unwrap(), 1);
    let loaded = store.load().unwrap();
    assert_eq!(
        loaded,
        vec![(doc2.access().clone(), sorted(changes2.clone()))]
    );
    drop(store);
    // Nothing of doc1 is left in the file.
    let db = Database::open(dir.path().join(DOCS_FILE)).unwrap();
    let txn = db.begin_read().unwrap();
    assert_eq!(txn.open_table(CHANGES).unwrap().len().unwrap(), 2);
    assert_eq!(txn.open_table(ACCESS).unwrap().len().unwrap(), 1);
}

#[test]
fn limits_are_refused_with_a_clear_error_and_hold_across_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let owner = key(1);
    let limits = DocLimits {
        max_docs: 2,
        max_changes_per_doc: 3,
        max_bytes_per_doc: 1 << 20,
    };
    let (doc1, changes1) = doc_with(&owner, 1, 5);
    let mut store = open_with(&dir, limits);
    store.save_access(doc1.access()).unwrap();
    store
        .save_access(doc_with(&owner, 2, 0).0.access())
        .unwrap();

    // A third document.
    let third = doc_with(&owner, 3, 0).0;
    let err = store.put_access(third.access()).unwrap_err();
    assert!(
        matches!(err, DocsError::TooManyDocs { limit: 2, .. }),
        "{err}"
    );
    let err = store.save_access(third.access()).unwrap_err();
    assert!(err.0.contains("DocLimits::max_docs"), "{err}");
    // A newer version of a stored document is not a new document.
    let mut d1 = doc1.clone();
    assert!(
        store
            .put_access(&d1.add_writer(&owner, key(2).peer_id()).unwrap())
            .unwrap()
    );

    // A batch that would go over the change limit is refused whole.
    let err = store.put_changes(&doc1.id(), &changes1[..4]).unwrap_err();
    assert!(
        matches!(
            err,
            DocsError::TooManyChanges {
                would: 4,
                new: 4,
                limit: 3,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(store.usage(&doc1.id()).changes, 0);
    let err = store.save_changes(&doc1.id(), &changes1[..4]).unwrap_err();
    assert!(
        err.0.contains("4 changes") && err.0.contains("DocLimits::max_changes_per_doc"),
        "{err}"
    );
    store.save_changes(&doc1.id(), &changes1[..3]).unwrap();
    drop(store);

    // The count survives a restart.
    let mut store = open_with(&dir, limits);
    assert_eq!(store.usage(&doc1.id()).changes, 3);
    let err = store.put_changes(&doc1.id(), &changes1[3..4]).unwrap_err();
    assert!(matches!(err, DocsError::TooManyChanges { .. }), "{err}");
    // Duplicates are not new, so they fit.
    assert_eq!(store.put_changes(&doc1.id(), &changes1[..3]).unwrap(), 0);
    drop(store);

    // Bytes.
    let bytes = changes1[0].encode().len() as u64;
    let mut store = open_with(
        &dir,
        DocLimits {
            max_bytes_per_doc: 4 * bytes - 1,
            max_changes_per_doc: 100,
            ..limits
        },
    );
    let err = store.put_changes(&doc1.id(), &changes1[3..]).unwrap_err();
    assert!(
        matches!(err, DocsError::TooManyBytes { new: 2, .. }),
        "{err}"
    );
    assert!(
        err.to_string().contains("DocLimits::max_bytes_per_doc"),
        "{err}"
    );
    assert_eq!(store.usage(&doc1.id()).changes, 3);
}

#[test]
fn changes_must_name_their_document_and_follow_its_access_list() {
    let dir = tempfile::tempdir().unwrap();
    let owner = key(1);
    let (doc1, changes1) = doc_with(&owner, 1, 1);
    let (doc2, changes2) = doc_with(&owner, 2, 1);
    let mut store = open(&dir);
    let err = store.put_changes(&doc1.id(), &changes1).unwrap_err();
    assert!(matches!(err, DocsError::NoAccess { .. }), "{err}");
    store.save_access(doc1.access()).unwrap();
    store.save_access(doc2.access()).unwrap();
    let err = store.put_changes(&doc1.id(), &changes2).unwrap_err();
    assert!(matches!(err, DocsError::WrongDocument { .. }), "{err}");
    assert_eq!(store.put_changes(&doc1.id(), &[]).unwrap(), 0);
}

#[test]
fn damaged_entries_are_skipped_and_counted_on_load() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(DOCS_FILE);
    let owner = key(1);
    let (good, good_changes) = doc_with(&owner, 1, 3);
    let (damaged, damaged_changes) = doc_with(&owner, 2, 2);
    // A change by a writer the stored access list does not name: it does not verify.
    let mut admitted = good.clone();
    let v2 = admitted.add_writer(&owner, key(2).peer_id()).unwrap();
    let mut replica = Document::open(v2, Limits::default()).unwrap();
    for c in &good_changes {
        replica.apply(c.clone()).unwrap();
    }
    let unknown_writer = replica.change(&key(2), set("w", "2")).unwrap();

    let mut store = open(&dir);
    store.save_access(good.access()).unwrap();
    store.save_changes(&good.id(), &good_changes).unwrap();
    store.save_changes(&good.id(), &[unknown_writer]).unwrap();
    store.save_access(damaged.access()).unwrap();
    store.save_changes(&damaged.id(), &damaged_changes).unwrap();
    drop(store);

    // Write garbage into the tables directly.
    {
        let db = Database::open(&path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut access = txn.open_table(ACCESS).unwrap();
            access.insert(&damaged.id().0[..], &b"garbage"[..]).unwrap();
            access.insert(&b"short key"[..], &b"x"[..]).unwrap();
            let mut changes = txn.open_table(CHANGES).unwrap();
            // Undecodable, under a well-formed key.
            changes
                .insert(&change_key(&good.id(), &[7; 32])[..], &b"garbage"[..])
                .unwrap();
            // A valid change under another change's id.
            changes
                .insert(
                    &change_key(&good.id(), &[8; 32])[..],
                    &good_changes[0].encode()[..],
                )
                .unwrap();
            // A malformed key.
            changes.insert(&[1u8, 2, 3][..], &b"x"[..]).unwrap();
        }
        txn.commit().unwrap();
    }

    let mut store = open(&dir);
    let loaded = store.load().unwrap();
    assert_eq!(
        loaded,
        vec![(good.access().clone(), sorted(good_changes.clone()))]
    );
    let report = store.last_load().clone();
    assert_eq!(report.docs, 1);
    assert_eq!(report.changes, 3);
    // The damaged access list and the short key.
    assert_eq!(report.skipped_docs, 2);
    // The unknown writer's change, the two bad values under good's id, the malformed key, and
    // the damaged document's two changes.
    assert_eq!(report.skipped_changes, 6);
    assert_eq!(report.notes.len(), 8);
    assert!(
        report.notes.iter().any(|n| n.contains("does not decode")),
        "{:?}",
        report.notes
    );
    assert!(
        report.notes.iter().any(|n| n.contains("unknown writer")),
        "{:?}",
        report.notes
    );

    // Loading does not write: the same again.
    assert_eq!(store.load().unwrap(), loaded);
    assert_eq!(store.last_load(), &report);

    // The damaged access list is replaced by the next save of that document, which makes its
    // changes load again.
    assert!(store.put_access(damaged.access()).unwrap());
    let loaded = store.load().unwrap();
    assert_eq!(loaded.len(), 2);
    assert_eq!(store.last_load().skipped_changes, 4);
    // And removing a document deletes its damaged entries too.
    store.remove(&good.id()).unwrap();
    store.load().unwrap();
    assert_eq!(
        store.last_load().skipped_changes,
        1,
        "only the malformed key"
    );
}

#[test]
fn a_file_that_is_not_a_database_is_refused_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(DOCS_FILE);
    std::fs::write(&path, vec![0x5a; 8192]).unwrap();
    let err = RedbDocStore::open(&path, DocLimits::default()).unwrap_err();
    assert!(matches!(err, DocsError::Open { .. }), "{err}");
    assert!(err.to_string().contains(DOCS_FILE), "{err}");
}

#[test]
fn the_file_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let mode = std::fs::metadata(store.path())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn doc_sync_reloads_its_documents_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(DOCS_FILE);
    let (owner, writer) = (key(1), key(2));
    let now = Instant::from_micros(1_000_000);
    let boxed = |p: &Path| -> Box<dyn DocStore + Send> {
        Box::new(RedbDocStore::open(p, DocLimits::default()).unwrap())
    };

    let mut sync = DocSync::with_store(owner.peer_id(), Config::default(), boxed(&path));
    assert_eq!(sync.load().unwrap(), 0);
    let id = sync.create(&owner, 1).unwrap();
    let gone = sync.create(&owner, 2).unwrap();
    sync.edit(&owner, &id, set("title", "hello")).unwrap();
    sync.edit(&owner, &id, vec![Edit::Increment("n".into(), 3)])
        .unwrap();
    sync.edit(
        &owner,
        &id,
        vec![Edit::Insert("t".into(), 0, "text".into())],
    )
    .unwrap();
    sync.add_writer(now, &owner, &id, writer.peer_id()).unwrap();
    sync.edit(&owner, &gone, set("x", "y")).unwrap();
    assert!(sync.remove(&gone));
    assert_eq!(sync.stats().store_errors, 0);
    let before = sync.doc(&id).unwrap().clone();
    drop(sync);

    let mut sync = DocSync::with_store(owner.peer_id(), Config::default(), boxed(&path));
    assert_eq!(sync.load().unwrap(), 1);
    assert!(sync.doc(&gone).is_none());
    let after = sync.doc(&id).unwrap();
    assert_eq!(after.render(), before.render());
    assert_eq!(after.change_ids().ids(), before.change_ids().ids());
    assert_eq!(after.access(), before.access());
    assert_eq!(after.access().version(), 2);
    assert_eq!(after.text("t").as_deref(), Some("text"));
    assert_eq!(sync.stats().load_refused, 0);

    // And it keeps persisting after the restart.
    sync.edit(&owner, &id, set("title", "again")).unwrap();
    assert_eq!(sync.stats().store_errors, 0);
    drop(sync);
    let mut store = RedbDocStore::open(&path, DocLimits::default()).unwrap();
    assert_eq!(store.load().unwrap()[0].1.len(), 4);
}

#[test]
fn a_checkpoint_replaces_the_changes_it_covers() {
    let dir = tempfile::tempdir().unwrap();
    let owner = key(1);
    let (mut doc, changes) = doc_with(&owner, 1, 10);
    let id = doc.id();
    let mut store = open(&dir);
    store.put_access(doc.access()).unwrap();
    store.put_changes(&id, &changes).unwrap();
    // The owner is the only writer: all ten changes are stable.
    let cp = doc.make_checkpoint(&owner, 0).unwrap().unwrap();
    let later = doc.change(&owner, set("k", "later")).unwrap();
    store
        .put_changes(&id, std::slice::from_ref(&later))
        .unwrap();
    let state = doc.snapshot().unwrap().1.to_vec();

    // A state that does not match, a checkpoint of another document: refused, nothing lost.
    let (mut other, _) = doc_with(&owner, 2, 1);
    store.put_access(other.access()).unwrap();
    let theirs = other.make_checkpoint(&owner, 0).unwrap().unwrap();
    assert!(matches!(
        store.put_checkpoint(&id, &cp, &state[1..]),
        Err(DocsError::BadCheckpoint { .. })
    ));
    assert!(matches!(
        store.put_checkpoint(&id, &theirs, other.snapshot().unwrap().1),
        Err(DocsError::BadCheckpoint { .. })
    ));
    assert_eq!(store.usage(&id).changes, 11);

    assert_eq!(store.put_checkpoint(&id, &cp, &state).unwrap(), Some(10));
    assert_eq!(store.put_checkpoint(&id, &cp, &state).unwrap(), None);
    assert_eq!(store.usage(&id).changes, 1);
    drop(store);

    let mut store = open(&dir);
    let loaded = store.load().unwrap();
    let ours = loaded.iter().find(|(a, _)| a.doc() == id).unwrap();
    assert_eq!(ours.1, vec![later]);
    assert_eq!(
        store.get_checkpoint(&id).unwrap(),
        Some((cp.clone(), state))
    );
    assert_eq!(store.last_load().skipped(), 0);
    drop(store);

    // Document sync restarts from the checkpoint and the change after it.
    let path = dir.path().join(DOCS_FILE);
    let store = RedbDocStore::open(&path, DocLimits::default()).unwrap();
    let mut sync = DocSync::with_store(owner.peer_id(), Config::default(), Box::new(store));
    assert_eq!(sync.load().unwrap(), 2);
    let restored = sync.doc(&id).unwrap();
    assert_eq!(restored.render(), doc.render());
    assert_eq!(restored.checkpoint(), Some(&cp));
    assert_eq!(restored.len(), 1);
    assert_eq!(restored.applied(), 11);
    assert_eq!(sync.stats().load_refused, 0);
}

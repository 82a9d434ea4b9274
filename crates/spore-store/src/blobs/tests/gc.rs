use std::fs;

use super::*;

#[test]
fn gc_keeps_pinned_referenced_and_leased_blobs() {
    let (tmp, store) = temp_store();
    let pinned = store.import_bytes(b"pinned").unwrap().hash;
    store.pin("p", pinned).unwrap();
    let loose = store.import_bytes(&random_bytes(50, 40_000)).unwrap().hash;
    let leased = store.import_bytes(b"leased").unwrap();

    let src = tmp.path().join("src");
    fs::create_dir_all(src.join("d")).unwrap();
    fs::write(src.join("d/one"), b"one").unwrap();
    fs::write(src.join("two"), b"two").unwrap();
    let kept_dir = store.import_dir(&src, &mut |_| {}).unwrap().hash;
    store.pin("dir", kept_dir).unwrap();
    let src2 = tmp.path().join("src2");
    fs::create_dir_all(&src2).unwrap();
    fs::write(src2.join("three"), b"three").unwrap();
    fs::write(src2.join("shared"), b"two").unwrap();
    let dropped_dir = store.import_dir(&src2, &mut |_| {}).unwrap().hash;

    // A download in progress, and one interrupted (its handle dropped).
    let (_ta, a) = temp_store();
    let active_hash = a.import_bytes(&random_bytes(51, 50_000)).unwrap().hash;
    let idle_hash = a.import_bytes(&random_bytes(52, 50_000)).unwrap().hash;
    let mut active = store.begin_download(active_hash, 50_000).unwrap();
    transfer(&a, &mut active, &[0..1]).unwrap();
    drop(store.begin_download(idle_hash, 50_000).unwrap());

    let before = store.used_bytes();
    let report = store.gc().unwrap();
    let gone = [loose, dropped_dir, Hash::of(b"three"), idle_hash];
    assert_eq!(report.removed_blobs, gone.len() as u64);
    let freed: u64 = [40_000, 0, 5, 50_000]
        .into_iter()
        .map(footprint)
        .sum::<u64>()
        + footprint(
            Collection::new(vec![
                CollectionEntry {
                    path: "shared".into(),
                    hash: Hash::of(b"two"),
                    size: 3,
                },
                CollectionEntry {
                    path: "three".into(),
                    hash: Hash::of(b"three"),
                    size: 5,
                },
            ])
            .unwrap()
            .to_bytes()
            .len() as u64,
        );
    assert_eq!(report.freed_bytes, freed);
    assert_eq!(store.used_bytes(), before - freed);
    for h in gone {
        assert_eq!(store.have(&h).unwrap(), BlobStatus::Missing, "{h}");
        assert!(!store.path().join("data").join(h.to_hex()).exists());
        assert!(!store.path().join("outboard").join(h.to_hex()).exists());
    }
    for h in [
        pinned,
        leased.hash,
        kept_dir,
        Hash::of(b"one"),
        Hash::of(b"two"),
        active_hash,
    ] {
        assert_ne!(store.have(&h).unwrap(), BlobStatus::Missing, "{h}");
    }

    // Once the lease and the download are gone, so are their blobs.
    drop(leased);
    drop(active);
    assert_eq!(store.gc().unwrap().removed_blobs, 2);
    // Unpinning the collection frees it and its files (`d/one`, and `two`, which the other
    // collection shared).
    assert_eq!(store.unpin("dir").unwrap(), Some(kept_dir));
    assert_eq!(store.gc().unwrap().removed_blobs, 3);
    let left: Vec<Hash> = store.list().unwrap().into_iter().map(|b| b.hash).collect();
    assert_eq!(left, vec![pinned]);
    assert_eq!(store.used_bytes(), footprint(6));
}

#[test]
fn gc_refuses_to_run_when_a_pinned_collection_is_unreadable() {
    let (tmp, store) = temp_store();
    let src = tmp.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("f"), b"file").unwrap();
    let dir = store.import_dir(&src, &mut |_| {}).unwrap().hash;
    store.pin("dir", dir).unwrap();
    let path = store.path().join("data").join(dir.to_hex());
    let mut bytes = fs::read(&path).unwrap();
    bytes[0] ^= 1;
    fs::write(&path, bytes).unwrap();
    let err = store.gc().unwrap_err();
    assert!(matches!(err, BlobError::Corrupt { .. }), "{err}");
    assert_ne!(store.have(&Hash::of(b"file")).unwrap(), BlobStatus::Missing);
}

#[test]
fn pins_and_list() {
    let tmp = tempfile::tempdir().unwrap();
    let limits = BlobLimits {
        max_pins: 2,
        ..BlobLimits::default()
    };
    let store = open_with(&tmp.path().join("blobs"), limits);
    let a = store.import_bytes(b"a").unwrap().hash;
    let b = store.import_bytes(b"b").unwrap().hash;
    assert_eq!(store.pin("x", a).unwrap(), None);
    assert_eq!(store.pin("x", b).unwrap(), Some(a));
    assert_eq!(store.pin("y", a).unwrap(), None);
    let err = store.pin("z", a).unwrap_err();
    assert!(matches!(err, BlobError::TooManyPins { max: 2 }), "{err}");
    // Re-pinning an existing name is not a new pin.
    store.pin("y", b).unwrap();
    assert_eq!(
        store.pins().unwrap(),
        vec![("x".to_string(), b), ("y".to_string(), b)]
    );
    for bad in ["", "a\nb", &"n".repeat(256)] {
        let err = store.pin(bad, a).unwrap_err();
        assert!(matches!(err, BlobError::BadPinName { .. }), "{err}");
    }
    let list = store.list().unwrap();
    let info = list.iter().find(|i| i.hash == b).unwrap();
    assert_eq!(info.pins, vec!["x".to_string(), "y".to_string()]);
    assert_eq!(info.state, BlobState::Complete);
    assert_eq!(info.size, 1);
    assert_eq!(store.unpin("x").unwrap(), Some(b));
    assert_eq!(store.unpin("x").unwrap(), None);
    // A pin may name a blob that is not here (yet).
    let absent = Hash::of(b"later");
    store.unpin("y").unwrap();
    store.pin("later", absent).unwrap();
    assert_eq!(store.gc().unwrap().removed_blobs, 2);
}

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;

use super::super::collection::encode_unchecked;
use super::*;

/// Every regular file under `root`: relative path → contents.
fn tree_of(root: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(root).unwrap().to_path_buf();
                out.insert(rel, fs::read(&p).unwrap());
            }
        }
    }
    out
}

fn sample_dir(root: &Path) {
    fs::create_dir_all(root.join("a/b/c")).unwrap();
    fs::create_dir_all(root.join("empty")).unwrap();
    fs::write(root.join("top.txt"), b"top").unwrap();
    fs::write(root.join("zero"), b"").unwrap();
    fs::write(root.join("a/big.bin"), random_bytes(40, 70_000)).unwrap();
    fs::write(root.join("a/b/c/deep.txt"), b"deep").unwrap();
    // The same content twice: one blob.
    fs::write(root.join("a/b/copy.txt"), b"top").unwrap();
}

#[test]
fn a_directory_round_trips_as_a_collection() {
    let (tmp, store) = temp_store();
    let src = tmp.path().join("src");
    sample_dir(&src);
    let mut last = 0;
    let imported = store.import_dir(&src, &mut |n| last = n).unwrap();
    assert_eq!(imported.size, 3 + 70_000 + 4 + 3);
    assert_eq!(last, imported.size);
    // The manifest and 4 distinct files (`top.txt` and `copy.txt` are one blob).
    assert_eq!(imported.lease.hashes().len(), 6);
    assert_eq!(store.list().unwrap().len(), 5);

    let c = store.collection(&imported.hash).unwrap();
    let paths: Vec<&str> = c.entries().iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "a/b/c/deep.txt",
            "a/b/copy.txt",
            "a/big.bin",
            "top.txt",
            "zero"
        ]
    );
    assert_eq!(c.entries()[4].hash, Hash::EMPTY);
    assert!(
        store
            .list()
            .unwrap()
            .iter()
            .any(|b| b.hash == imported.hash && b.collection)
    );

    let dest = tmp.path().join("out/here");
    assert_eq!(store.export_collection(&imported.hash, &dest).unwrap(), 5);
    assert_eq!(tree_of(&dest), tree_of(&src));
    // Importing again changes nothing.
    let again = store.import_dir(&src, &mut |_| {}).unwrap();
    assert_eq!(again.hash, imported.hash);
    assert_eq!(store.list().unwrap().len(), 5);
}

#[test]
fn malicious_manifests_are_refused() {
    let (tmp, store) = temp_store();
    let file = store.import_bytes(b"payload").unwrap().hash;
    let entry = |p: &str| (p.to_string(), *file.as_bytes(), 7u64);
    type Case = (Vec<(String, [u8; 32], u64)>, &'static str);
    let cases: Vec<Case> = vec![
        (vec![entry("../x")], "`..`"),
        (vec![entry("a/../../x")], "`..`"),
        (vec![entry("/etc/passwd")], "absolute"),
        (vec![entry("a//b")], "empty component"),
        (vec![entry("./a")], "`.`"),
        (vec![entry("")], "empty"),
        (vec![entry("a\\..\\x")], "NUL"),
        (vec![entry("b"), entry("a")], "not sorted"),
        (vec![entry("a"), entry("a")], "twice"),
        (vec![entry("a"), entry("a/b")], "cannot be under it"),
    ];
    for (entries, why) in cases {
        let manifest = encode_unchecked(MANIFEST_VERSION, entries.clone());
        let hash = store.import_bytes(&manifest).unwrap().hash;
        let err = store.register_collection(&hash).unwrap_err();
        assert!(
            matches!(err, BlobError::BadCollection { .. }),
            "{entries:?}: {err}"
        );
        assert!(err.to_string().contains(why), "{entries:?}: {err}");
        let dest = tmp.path().join("dest");
        let err = store.export_collection(&hash, &dest).unwrap_err();
        assert!(matches!(err, BlobError::BadCollection { .. }), "{err}");
        assert!(!dest.exists());
        assert!(!tmp.path().join("x").exists());
    }
    let future = encode_unchecked(2, vec![entry("a")]);
    let hash = store.import_bytes(&future).unwrap().hash;
    let err = store.collection(&hash).unwrap_err();
    assert!(err.to_string().contains("version 2"), "{err}");
    let hash = store.import_bytes(b"not a manifest at all").unwrap().hash;
    assert!(matches!(
        store.collection(&hash).unwrap_err(),
        BlobError::BadCollection { .. }
    ));
    let mut trailing = encode_unchecked(MANIFEST_VERSION, vec![entry("a")]);
    trailing.push(0);
    let hash = store.import_bytes(&trailing).unwrap().hash;
    assert!(
        store
            .collection(&hash)
            .unwrap_err()
            .to_string()
            .contains("follow")
    );
    // The store has no collection marks for any of these.
    assert!(store.list().unwrap().iter().all(|b| !b.collection));
}

#[test]
fn import_dir_refuses_symlinks_and_too_many_files() {
    let (tmp, store) = temp_store();
    let src = tmp.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("f"), b"f").unwrap();
    std::os::unix::fs::symlink("/etc/passwd", src.join("link")).unwrap();
    let err = store.import_dir(&src, &mut |_| {}).unwrap_err();
    assert!(matches!(err, BlobError::BadPath { .. }), "{err}");
    assert!(err.to_string().contains("symbolic link"), "{err}");
    assert!(store.list().unwrap().is_empty(), "refused before importing");

    fs::remove_file(src.join("link")).unwrap();
    fs::write(src.join("g"), b"g").unwrap();
    let limits = BlobLimits {
        max_collection_entries: 1,
        ..BlobLimits::default()
    };
    let small = open_with(&tmp.path().join("small"), limits);
    let err = small.import_dir(&src, &mut |_| {}).unwrap_err();
    assert!(err.to_string().contains("more than 1 files"), "{err}");
}

#[test]
fn export_collection_does_not_follow_symlinks_in_the_destination() {
    let (tmp, store) = temp_store();
    let src = tmp.path().join("src");
    fs::create_dir_all(src.join("sub")).unwrap();
    fs::write(src.join("sub/f"), b"f").unwrap();
    let hash = store.import_dir(&src, &mut |_| {}).unwrap().hash;
    let dest = tmp.path().join("dest");
    let elsewhere = tmp.path().join("elsewhere");
    fs::create_dir_all(&dest).unwrap();
    fs::create_dir_all(&elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, dest.join("sub")).unwrap();
    let err = store.export_collection(&hash, &dest).unwrap_err();
    assert!(matches!(err, BlobError::BadPath { .. }), "{err}");
    assert_eq!(fs::read_dir(&elsewhere).unwrap().count(), 0);
}

#[test]
fn export_collection_needs_every_file() {
    let (tmp, store) = temp_store();
    let missing = Hash::of(b"absent");
    let c = Collection::new(vec![CollectionEntry {
        path: "x".into(),
        hash: missing,
        size: 6,
    }])
    .unwrap();
    let hash = store.import_bytes(&c.to_bytes()).unwrap().hash;
    let dest = tmp.path().join("dest");
    let err = store.export_collection(&hash, &dest).unwrap_err();
    assert!(
        matches!(err, BlobError::NotFound { hash } if hash == missing),
        "{err}"
    );
    assert!(!dest.exists());
}

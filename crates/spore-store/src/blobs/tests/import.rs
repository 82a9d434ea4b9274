use std::fs;

use super::*;

#[test]
fn import_export_round_trip() {
    let (tmp, store) = temp_store();
    for (i, len) in [0, 1, 16 * 1024, 16 * 1024 + 1, 3 * 1024 * 1024 + 123]
        .into_iter()
        .enumerate()
    {
        let data = random_bytes(i as u64, len);
        let src = tmp.path().join(format!("src-{len}"));
        fs::write(&src, &data).unwrap();
        let mut seen = Vec::new();
        let imported = store.import_file(&src, &mut |n| seen.push(n)).unwrap();
        assert_eq!(imported.hash, Hash::of(&data), "len {len}");
        assert_eq!(imported.size, len as u64);
        assert!(seen.windows(2).all(|w| w[0] < w[1]), "progress increases");
        assert_eq!(seen.last().copied().unwrap_or(0), len as u64);
        assert_eq!(
            store.have(&imported.hash).unwrap(),
            BlobStatus::Complete { size: len as u64 }
        );
        assert_eq!(read_export(&store, &imported.hash), data, "len {len}");
        assert!(store.verify(&imported.hash).unwrap().is_ok());
    }
    assert_eq!(Hash::of(b""), Hash::EMPTY);
    // Nothing left behind in the temporary directory.
    assert_eq!(fs::read_dir(store.path().join("tmp")).unwrap().count(), 0);
}

#[test]
fn export_replaces_the_destination_atomically() {
    let (tmp, store) = temp_store();
    let data = random_bytes(1, 40_000);
    let hash = store.import_bytes(&data).unwrap().hash;
    let dest = tmp.path().join("dest");
    fs::write(&dest, b"old").unwrap();
    assert_eq!(store.export(&hash, &dest).unwrap(), 40_000);
    assert_eq!(fs::read(&dest).unwrap(), data);
    // Only the destination: no temporary file beside it.
    assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 2);
}

#[test]
fn importing_existing_content_is_a_no_op() {
    let (_tmp, store) = temp_store();
    let data = random_bytes(2, 100_000);
    let a = store.import_bytes(&data).unwrap();
    let used = store.used_bytes();
    assert_eq!(used, footprint(100_000));
    let b = store.import_bytes(&data).unwrap();
    assert_eq!(a.hash, b.hash);
    assert_eq!(store.used_bytes(), used);
    assert_eq!(store.list().unwrap().len(), 1);
}

#[test]
fn imports_are_durable_across_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("blobs");
    let data = random_bytes(3, 50_000);
    let hash = {
        let store = open(&dir);
        store.import_bytes(&data).unwrap().hash
    };
    let store = open(&dir);
    assert_eq!(store.open_report(), &OpenReport::default());
    assert_eq!(read_export(&store, &hash), data);
    assert_eq!(store.used_bytes(), footprint(50_000));
}

#[test]
fn quota_and_size_limits_refuse_imports() {
    let tmp = tempfile::tempdir().unwrap();
    let limits = BlobLimits {
        quota_bytes: 100_000,
        max_blob_size: 80_000,
        ..BlobLimits::default()
    };
    let store = open_with(&tmp.path().join("blobs"), limits);
    drop(store.import_bytes(&random_bytes(4, 60_000)).unwrap());
    let err = store.import_bytes(&random_bytes(5, 50_000)).unwrap_err();
    let free = 100_000 - footprint(60_000);
    assert!(
        matches!(err, BlobError::Quota { need, free: f } if need == footprint(50_000) && f == free),
        "{err}"
    );
    let err = store.import_bytes(&random_bytes(6, 90_000)).unwrap_err();
    assert!(
        matches!(
            err,
            BlobError::TooLarge {
                size: 90_000,
                max: 80_000
            }
        ),
        "{err}"
    );
    assert_eq!(store.list().unwrap().len(), 1);
    assert_eq!(store.used_bytes(), footprint(60_000));
    assert_eq!(fs::read_dir(store.path().join("tmp")).unwrap().count(), 0);
}

#[test]
fn open_removes_temp_files_and_orphans() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("blobs");
    let data = random_bytes(7, 30_000);
    let kept = {
        let store = open(&dir);
        store.import_bytes(&data).unwrap().hash
    };
    // What a crash leaves: an import's temporary files, and files written before the commit
    // that would have recorded them.
    fs::write(dir.join("tmp/import-0123456789abcdef.data"), b"partial").unwrap();
    let orphan = Hash::of(b"never recorded");
    fs::write(dir.join("data").join(orphan.to_hex()), b"never recorded").unwrap();
    fs::write(dir.join("outboard").join(orphan.to_hex()), b"").unwrap();
    let store = open(&dir);
    let report = store.open_report();
    assert_eq!(report.temp_files_removed, 1);
    assert_eq!(report.orphan_files_removed, 2);
    assert!(report.damaged.is_empty());
    assert!(!dir.join("data").join(orphan.to_hex()).exists());
    assert_eq!(read_export(&store, &kept), data);
}

#[test]
fn open_forgets_a_blob_whose_file_is_gone() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("blobs");
    let hash = {
        let store = open(&dir);
        let hash = store.import_bytes(&random_bytes(8, 30_000)).unwrap().hash;
        store.pin("keep", hash).unwrap();
        hash
    };
    fs::remove_file(dir.join("data").join(hash.to_hex())).unwrap();
    let store = open(&dir);
    assert_eq!(store.open_report().damaged, vec![hash]);
    assert_eq!(store.have(&hash).unwrap(), BlobStatus::Missing);
    assert_eq!(store.used_bytes(), 0);
    // The pin stays: fetching the blob again restores it.
    assert_eq!(store.pins().unwrap(), vec![("keep".to_string(), hash)]);
}

#[test]
fn corrupted_data_file_is_detected_and_repaired() {
    let (_tmp, a) = temp_store();
    let (_tmp2, b) = temp_store();
    let data = random_bytes(9, 100_000);
    let hash = a.import_bytes(&data).unwrap().hash;
    drop(b.import_bytes(&data).unwrap());
    let path = a.path().join("data").join(hash.to_hex());
    let mut bytes = fs::read(&path).unwrap();
    bytes[3 * 16 * 1024 + 5] ^= 1;
    fs::write(&path, &bytes).unwrap();

    let report = a.verify(&hash).unwrap();
    assert_eq!(report.bad_groups, vec![3..4]);
    assert_eq!(report.checked_groups, 7);
    assert_eq!(a.verify_all().unwrap(), vec![report.clone()]);

    // Neither exported nor served.
    let tmp = tempfile::tempdir().unwrap();
    let err = a.export(&hash, tmp.path().join("out")).unwrap_err();
    assert!(matches!(err, BlobError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("chunk group 3"), "{err}");
    assert!(!tmp.path().join("out").exists());
    let err = a.encode_ranges(&hash, &[3..4]).unwrap_err();
    assert!(matches!(err, BlobError::Corrupt { .. }), "{err}");
    a.encode_ranges(&hash, &[0..3, 4..7]).unwrap();

    // Repair forgets the group; a download fetches it again.
    a.repair(&report).unwrap();
    assert_eq!(groups_of(a.have(&hash).unwrap()), vec![0..3, 4..7]);
    let mut d = a.begin_download(hash, 100_000).unwrap();
    assert_eq!(d.missing_groups(), vec![3..4]);
    let written = fetch_rest(&b, &mut d).unwrap();
    assert_eq!(written.groups, vec![3..4]);
    assert!(written.complete);
    d.finish().unwrap();
    assert!(a.verify(&hash).unwrap().is_ok());
    assert_eq!(read_export(&a, &hash), data);
}

#[test]
fn corrupted_outboard_is_detected() {
    let (_tmp, store) = temp_store();
    let hash = store.import_bytes(&random_bytes(10, 200_000)).unwrap().hash;
    let path = store.path().join("outboard").join(hash.to_hex());
    let mut bytes = fs::read(&path).unwrap();
    bytes[0] ^= 1; // the first stored pair: the hashes of groups 0 and 1
    fs::write(&path, &bytes).unwrap();
    let report = store.verify(&hash).unwrap();
    assert_eq!(report.bad_groups, vec![0..2]);
}

#[test]
fn import_file_refuses_what_is_not_a_file() {
    let (tmp, store) = temp_store();
    let err = store.import_file(tmp.path(), &mut |_| {}).unwrap_err();
    assert!(matches!(err, BlobError::BadPath { .. }), "{err}");
    let err = store
        .import_file(tmp.path().join("missing"), &mut |_| {})
        .unwrap_err();
    assert!(matches!(err, BlobError::Io { .. }), "{err}");
    assert!(err.to_string().contains("missing"), "{err}");
}

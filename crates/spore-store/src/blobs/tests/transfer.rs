use std::fs;

use proptest::prelude::*;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use super::*;

const G: usize = GROUP_BYTES as usize;

/// Position of `needle` in `haystack` (random data: unique).
fn find(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .position(|w| w == needle)
        .unwrap()
}

#[test]
fn transfer_in_random_order_between_two_stores() {
    let (_ta, a) = temp_store();
    let (_tb, b) = temp_store();
    let data = random_bytes(20, 1024 * 1024 + 100);
    let hash = a.import_bytes(&data).unwrap().hash;
    let n = group_count(data.len() as u64);
    assert_eq!(n, 65);

    let mut d = b.begin_download(hash, data.len() as u64).unwrap();
    assert_eq!(d.missing_groups(), vec![0..n]);
    let mut rng = StdRng::seed_from_u64(21);
    let mut order: Vec<u64> = (0..n).collect();
    order.shuffle(&mut rng);
    let mut left = &order[..];
    while !left.is_empty() {
        let take = rng.gen_range(1..=7).min(left.len());
        let batch: Vec<Range<u64>> = left[..take].iter().map(|&g| g..g + 1).collect();
        left = &left[take..];
        let written = transfer(&a, &mut d, &batch).unwrap();
        let mut want = batch.clone();
        want.sort_by_key(|r| r.start);
        assert_eq!(
            Bitfield::from_ranges(n, &written.groups),
            Bitfield::from_ranges(n, &want)
        );
        assert_eq!(written.complete, left.is_empty());
    }
    assert!(d.size_verified());
    d.finish().unwrap();
    assert_eq!(
        b.have(&hash).unwrap(),
        BlobStatus::Complete {
            size: data.len() as u64
        }
    );
    assert_eq!(read_export(&b, &hash), data);
    assert!(b.verify(&hash).unwrap().is_ok());
}

#[test]
fn a_partial_store_serves_what_it_has_verified() {
    let (_ta, a) = temp_store();
    let (_tb, b) = temp_store();
    let (_tc, c) = temp_store();
    let data = random_bytes(22, 300_000);
    let size = data.len() as u64;
    let hash = a.import_bytes(&data).unwrap().hash;
    let mut db = b.begin_download(hash, size).unwrap();
    transfer(&a, &mut db, &[0..3, 10..12]).unwrap();

    // B serves exactly the requested groups it has.
    let enc = b.encode_ranges(&hash, &[0..19]).unwrap();
    assert_eq!(enc.groups, vec![0..3, 10..12]);
    assert_eq!(enc, a.encode_ranges(&hash, &[0..3, 10..12]).unwrap());
    let mut dc = c.begin_download(hash, size).unwrap();
    dc.write_encoded(&enc.groups, &enc.bytes).unwrap();
    assert_eq!(dc.verified_groups().ranges(), vec![0..3, 10..12]);
    fetch_rest(&a, &mut dc).unwrap();
    dc.finish().unwrap();
    assert_eq!(read_export(&c, &hash), data);

    // The streaming variant refuses what B lacks, before writing anything.
    let mut out = Vec::new();
    let err = b.encode_ranges_to(&hash, &[2..5], &mut out).unwrap_err();
    assert!(
        matches!(err, BlobError::NotAvailable { group: 3, .. }),
        "{err}"
    );
    assert!(out.is_empty());
    let n = b
        .encode_ranges_to(&hash, &[10..12, 0..3], &mut out)
        .unwrap();
    assert_eq!(n as usize, out.len());
    assert_eq!(out, enc.bytes);
    let err = b.encode_ranges(&Hash::of(b"nope"), &[0..1]).unwrap_err();
    assert!(matches!(err, BlobError::NotFound { .. }), "{err}");
}

#[test]
fn bad_data_in_a_response_is_refused_and_good_groups_before_it_kept() {
    let (_ta, a) = temp_store();
    let (_tb, b) = temp_store();
    let data = random_bytes(23, 1024 * 1024);
    let size = data.len() as u64;
    let hash = a.import_bytes(&data).unwrap().hash;
    let enc = a.encode_ranges(&hash, &[2..6]).unwrap();
    let pos4 = find(&enc.bytes, &data[4 * G..4 * G + 64]);

    // A flipped data byte in group 4.
    let mut bad = enc.bytes.clone();
    bad[pos4 + 100] ^= 0x20;
    let mut d = b.begin_download(hash, size).unwrap();
    let err = d.write_encoded(&enc.groups, &bad).unwrap_err();
    assert!(
        matches!(
            err,
            BlobError::Verification {
                group: 4,
                kind: BadData::Data,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(d.verified_groups().ranges(), vec![2..4]);
    assert_eq!(groups_of(b.have(&hash).unwrap()), vec![2..4]);
    // Nothing of group 4 reached the data file.
    let on_disk = fs::read(b.path().join("data").join(hash.to_hex())).unwrap();
    assert!(on_disk.len() <= 4 * G, "file is {} bytes", on_disk.len());

    // A flipped byte in the proof node just above groups 4 and 5.
    let mut bad = enc.bytes.clone();
    bad[pos4 - 1] ^= 0x20;
    let (_tc, c) = temp_store();
    let mut d = c.begin_download(hash, size).unwrap();
    let err = d.write_encoded(&enc.groups, &bad).unwrap_err();
    assert!(
        matches!(
            err,
            BlobError::Verification {
                group: 4,
                kind: BadData::Proof,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(d.verified_groups().ranges(), vec![2..4]);

    // A flipped byte in the root's pair: nothing verifies.
    let mut bad = enc.bytes.clone();
    bad[0] ^= 1;
    let (_td, e) = temp_store();
    let mut d = e.begin_download(hash, size).unwrap();
    let err = d.write_encoded(&enc.groups, &bad).unwrap_err();
    assert!(
        matches!(
            err,
            BlobError::Verification {
                group: 2,
                kind: BadData::Proof,
                ..
            }
        ),
        "{err}"
    );
    assert!(d.verified_groups().ranges().is_empty());
    assert!(groups_of(e.have(&hash).unwrap()).is_empty());
}

#[test]
fn truncated_and_overlong_responses() {
    let (_ta, a) = temp_store();
    let (_tb, b) = temp_store();
    let data = random_bytes(24, 1024 * 1024);
    let size = data.len() as u64;
    let hash = a.import_bytes(&data).unwrap().hash;
    let enc = a.encode_ranges(&hash, &[2..6]).unwrap();
    let pos5 = find(&enc.bytes, &data[5 * G..5 * G + 64]);

    let mut d = b.begin_download(hash, size).unwrap();
    let err = d
        .write_encoded(&enc.groups, &enc.bytes[..pos5 + 1000])
        .unwrap_err();
    assert!(
        matches!(
            err,
            BlobError::Verification {
                group: 5,
                kind: BadData::Truncated,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(d.verified_groups().ranges(), vec![2..5]);

    let mut long = enc.bytes.clone();
    long.extend_from_slice(b"extra");
    let err = d.write_encoded(&enc.groups, &long).unwrap_err();
    assert!(matches!(err, BlobError::Malformed { .. }), "{err}");
    assert!(err.to_string().contains("5 bytes follow"), "{err}");
    // What verified was kept all the same.
    assert_eq!(d.verified_groups().ranges(), vec![2..6]);

    // Too many ranges.
    let many: Vec<Range<u64>> = (0..2000).map(|i| i..i + 1).collect();
    let err = d.write_encoded(&many, &[]).unwrap_err();
    assert!(matches!(err, BlobError::Malformed { .. }), "{err}");
    let err = a.encode_ranges(&hash, &many).unwrap_err();
    assert!(matches!(err, BlobError::Malformed { .. }), "{err}");
}

#[test]
fn a_wrong_size_fails_verification() {
    let (_ta, a) = temp_store();
    let (_tb, b) = temp_store();
    let data = random_bytes(25, 200_000);
    let hash = a.import_bytes(&data).unwrap().hash;
    let enc = a.encode_ranges(&hash, &[0..13]).unwrap();
    for wrong in [199_999, 200_001, 100, 500_000] {
        let mut d = b.begin_download(hash, wrong).unwrap();
        let err = d.write_encoded(&enc.groups, &enc.bytes).unwrap_err();
        assert!(
            matches!(
                err,
                BlobError::Verification { .. } | BlobError::Malformed { .. }
            ),
            "{wrong}: {err}"
        );
        // Whatever verified under a wrong size is real data, but the last group never
        // verifies, so the size is never proven and the download never completes.
        assert!(!d.size_verified(), "{wrong}");
        assert!(!d.is_complete(), "{wrong}");
    }
    // The right size restarts the unproven one.
    let mut d = b.begin_download(hash, 200_000).unwrap();
    assert_eq!(d.verified_groups().count_ones(), 0);
    d.write_encoded(&enc.groups, &enc.bytes).unwrap();
    assert!(d.size_verified());
    d.finish().unwrap();
    assert_eq!(read_export(&b, &hash), data);
    // A complete (proven) size is not overridden.
    let err = b.begin_download(hash, 100).unwrap_err();
    assert!(
        matches!(
            err,
            BlobError::SizeMismatch {
                known: 200_000,
                claimed: 100,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn a_proven_size_survives_and_is_not_overridden() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("b");
    let (_ta, a) = temp_store();
    let data = random_bytes(26, 100_000);
    let hash = a.import_bytes(&data).unwrap().hash;
    {
        let b = open(&dir);
        let mut d = b.begin_download(hash, 100_000).unwrap();
        transfer(&a, &mut d, &[6..7]).unwrap();
        assert!(d.size_verified());
    }
    let b = open(&dir);
    let err = b.begin_download(hash, 100_001).unwrap_err();
    assert!(matches!(err, BlobError::SizeMismatch { .. }), "{err}");
    let d = b.begin_download(hash, 100_000).unwrap();
    assert!(d.size_verified());
    assert_eq!(d.verified_groups().ranges(), vec![6..7]);
}

#[test]
fn one_download_per_blob() {
    let (_ta, a) = temp_store();
    let hash = a.import_bytes(&random_bytes(27, 1000)).unwrap().hash;
    let (_tb, b) = temp_store();
    let d = b.begin_download(hash, 1000).unwrap();
    let err = b.begin_download(hash, 1000).unwrap_err();
    assert!(matches!(err, BlobError::DownloadInProgress { .. }), "{err}");
    drop(d);
    let mut d = b.begin_download(hash, 1000).unwrap();
    let err = d.write_encoded(&[], &[]);
    assert_eq!(err.unwrap().groups, Vec::<Range<u64>>::new());
    let err = b.begin_download(Hash::of(b"x"), 0).unwrap_err();
    assert!(matches!(err, BlobError::Verification { .. }), "{err}");
    transfer(&a, &mut d, &[0..1]).unwrap();
    d.finish().unwrap();
    // A complete blob: a download that is complete already.
    let d = b.begin_download(hash, 1000).unwrap();
    assert!(d.is_complete());
    d.finish().unwrap();
}

#[test]
fn the_empty_blob_and_a_single_group() {
    let (_ta, a) = temp_store();
    let (_tb, b) = temp_store();
    let d = b.begin_download(Hash::EMPTY, 0).unwrap();
    assert!(d.is_complete());
    d.finish().unwrap();
    assert_eq!(
        b.have(&Hash::EMPTY).unwrap(),
        BlobStatus::Complete { size: 0 }
    );
    assert_eq!(read_export(&b, &Hash::EMPTY), Vec::<u8>::new());
    assert_eq!(a.import_bytes(&[]).unwrap().hash, Hash::EMPTY);
    assert!(
        a.encode_ranges(&Hash::EMPTY, &[0..1])
            .unwrap()
            .bytes
            .is_empty()
    );

    let data = random_bytes(28, 100);
    let hash = a.import_bytes(&data).unwrap().hash;
    let mut d = b.begin_download(hash, 100).unwrap();
    let enc = a.encode_ranges(&hash, &[0..5]).unwrap();
    assert_eq!(enc.groups, vec![0..1]);
    assert_eq!(enc.bytes, data, "one group: the data alone, no proof nodes");
    assert!(d.write_encoded(&enc.groups, &enc.bytes).unwrap().complete);
    d.finish().unwrap();
    assert_eq!(read_export(&b, &hash), data);
}

#[test]
fn a_download_resumes_after_a_crash() {
    let (_ta, a) = temp_store();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("b");
    let data = random_bytes(29, 40 * G + 7);
    let size = data.len() as u64;
    let hash = a.import_bytes(&data).unwrap().hash;
    {
        let b = open(&dir);
        let mut d = b.begin_download(hash, size).unwrap();
        transfer(&a, &mut d, &[0..10, 30..35]).unwrap();
        // The store is dropped without finishing: as a process killed now.
    }
    let b = open(&dir);
    assert_eq!(b.open_report(), &OpenReport::default());
    assert_eq!(groups_of(b.have(&hash).unwrap()), vec![0..10, 30..35]);
    let mut d = b.begin_download(hash, size).unwrap();
    assert_eq!(d.verified_groups().ranges(), vec![0..10, 30..35]);
    assert_eq!(d.missing_groups(), vec![10..30, 35..41]);

    // A crash after the data of groups 10..15 was written and synced, before the commit that
    // records them: they are not counted as verified after the restart.
    d.crash_before_commit = true;
    transfer(&a, &mut d, &[10..15]).unwrap();
    drop(d);
    drop(b);
    let b = open(&dir);
    let mut d = b.begin_download(hash, size).unwrap();
    assert_eq!(d.verified_groups().ranges(), vec![0..10, 30..35]);
    // The rest, then the whole blob is there and right.
    fetch_rest(&a, &mut d).unwrap();
    d.finish().unwrap();
    assert_eq!(read_export(&b, &hash), data);
    assert!(b.verify(&hash).unwrap().is_ok());
    drop(b);
    let b = open(&dir);
    assert_eq!(b.have(&hash).unwrap(), BlobStatus::Complete { size });
}

#[test]
fn a_download_counts_against_the_quota() {
    let (_ta, a) = temp_store();
    let hash = a.import_bytes(&random_bytes(30, 100_000)).unwrap().hash;
    let tmp = tempfile::tempdir().unwrap();
    let limits = BlobLimits {
        quota_bytes: 150_000,
        ..BlobLimits::default()
    };
    let b = open_with(&tmp.path().join("b"), limits);
    let d = b.begin_download(hash, 100_000).unwrap();
    assert_eq!(b.used_bytes(), footprint(100_000));
    let other = a.import_bytes(&random_bytes(31, 60_000)).unwrap().hash;
    let err = b.begin_download(other, 60_000).unwrap_err();
    assert!(matches!(err, BlobError::Quota { .. }), "{err}");
    let err = b.import_bytes(&random_bytes(31, 60_000)).unwrap_err();
    assert!(matches!(err, BlobError::Quota { .. }), "{err}");
    drop(d);
    assert_eq!(b.gc().unwrap().freed_bytes, footprint(100_000));
    assert_eq!(b.used_bytes(), 0);
    b.begin_download(other, 60_000).unwrap();
}

#[test]
fn an_import_completes_a_partial_download() {
    let (_ta, a) = temp_store();
    let (_tb, b) = temp_store();
    let data = random_bytes(32, 90_000);
    let hash = a.import_bytes(&data).unwrap().hash;
    let mut d = b.begin_download(hash, 90_000).unwrap();
    transfer(&a, &mut d, &[0..2]).unwrap();
    drop(b.import_bytes(&data).unwrap());
    assert_eq!(
        b.have(&hash).unwrap(),
        BlobStatus::Complete { size: 90_000 }
    );
    assert!(transfer(&a, &mut d, &[2..4]).unwrap().complete);
    assert!(d.is_complete());
    d.finish().unwrap();
    assert_eq!(read_export(&b, &hash), data);
    assert_eq!(b.used_bytes(), footprint(90_000));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, .. ProptestConfig::default() })]

    /// Any set of ranges (overlapping, out of order, past the end) moves exactly the groups it
    /// names, and the receiver then serves them byte for byte as the sender does.
    #[test]
    fn random_range_requests(
        len in 0usize..200_000,
        ranges in proptest::collection::vec((0u64..16, 0u64..6), 0..5),
        seed in any::<u64>(),
    ) {
        let (_ta, a) = temp_store();
        let (_tb, b) = temp_store();
        let data = random_bytes(seed, len);
        let size = len as u64;
        let hash = a.import_bytes(&data).unwrap().hash;
        let ranges: Vec<Range<u64>> = ranges.into_iter().map(|(s, l)| s..s + l).collect();
        let enc = a.encode_ranges(&hash, &ranges).unwrap();
        let n = group_count(size);
        let want = bitfield::normalize(&ranges, n);
        prop_assert_eq!(&enc.groups, &want);
        let mut d = b.begin_download(hash, size).unwrap();
        let written = d.write_encoded(&enc.groups, &enc.bytes).unwrap();
        prop_assert_eq!(&written.groups, &want);
        prop_assert_eq!(d.verified_groups().ranges(), want.clone());
        prop_assert_eq!(b.encode_ranges(&hash, &ranges).unwrap(), enc);
        fetch_rest(&a, &mut d).unwrap();
        d.finish().unwrap();
        prop_assert_eq!(read_export(&b, &hash), data);
    }
}

#[test]
fn batched_commits_serve_at_once_and_record_on_flush_or_drop() {
    let (_ta, a) = temp_store();
    let (tb, b) = temp_store();
    let data = random_bytes(40, 40 * G + 7);
    let size = data.len() as u64;
    let hash = a.import_bytes(&data).unwrap().hash;
    let n = group_count(size);
    let mut d = b.begin_download(hash, size).unwrap();
    d.set_commit_batch(8 * GROUP_BYTES);
    // The last group (it proves the size), then four more: 5 groups pending, under the batch.
    transfer(&a, &mut d, &[n - 1..n]).unwrap();
    transfer(&a, &mut d, &[0..4]).unwrap();
    assert_eq!(d.pending_bytes(), 4 * GROUP_BYTES + 7);
    assert_eq!(d.verified_groups().count_ones(), 5);
    assert!(d.size_verified() || d.verified_groups().get(n - 1));
    // Not recorded yet: the store alone serves nothing of it...
    assert_eq!(b.encode_ranges(&hash, &[0..4]).unwrap().groups, vec![]);
    // ...but the download serves what it verified, and it checks against the hash.
    let served = d.encode_ranges(&[0..6]).unwrap();
    assert_eq!(served.groups, vec![0..4]);
    let (_tc, c) = temp_store();
    let mut dc = c.begin_download(hash, size).unwrap();
    dc.write_encoded(&served.groups, &served.bytes).unwrap();
    assert_eq!(dc.verified_groups().count_ones(), 4);
    // Crossing the batch commits everything pending, on a thread of its own; flush waits for it.
    transfer(&a, &mut d, &[4..8]).unwrap();
    assert_eq!(d.pending_bytes(), 0);
    d.flush().unwrap();
    assert_eq!(groups_of(b.have(&hash).unwrap()), vec![0..8, n - 1..n]);
    // Writes go on while a background commit runs; the next commit takes what it left.
    transfer(&a, &mut d, &[20..28]).unwrap();
    transfer(&a, &mut d, &[28..30]).unwrap();
    d.flush().unwrap();
    assert_eq!(
        groups_of(b.have(&hash).unwrap()),
        vec![0..8, 20..30, n - 1..n]
    );
    // Pending groups are recorded when the download is dropped.
    transfer(&a, &mut d, &[8..10]).unwrap();
    assert_eq!(d.pending_bytes(), 2 * GROUP_BYTES);
    drop(d);
    drop(b);
    let b = open(&tb.path().join("blobs"));
    assert_eq!(
        groups_of(b.have(&hash).unwrap()),
        vec![0..10, 20..30, n - 1..n]
    );
    // And a resumed download finishes: finish flushes what is pending.
    let mut d = b.begin_download(hash, size).unwrap();
    d.set_commit_batch(u64::MAX);
    transfer(&a, &mut d, &[10..20, 30..n - 1]).unwrap();
    d.finish().unwrap();
    assert_eq!(b.have(&hash).unwrap(), BlobStatus::Complete { size });
    assert_eq!(read_export(&b, &hash), data);
}

//! Tests of the blob store, on real files in temporary directories.

// `&[2..6]` is a list of one range of chunk groups here, as the API means.
#![allow(clippy::single_range_in_vec_init)]

mod collection;
mod gc;
mod import;
mod transfer;

use std::ops::Range;
use std::path::Path;

use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};

use super::*;

pub(super) fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    StdRng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

pub(super) fn open(dir: &Path) -> BlobStore {
    BlobStore::open(dir, BlobLimits::default()).unwrap()
}

pub(super) fn open_with(dir: &Path, limits: BlobLimits) -> BlobStore {
    BlobStore::open(dir, limits).unwrap()
}

/// A store in a fresh temporary directory.
pub(super) fn temp_store() -> (tempfile::TempDir, BlobStore) {
    let tmp = tempfile::tempdir().unwrap();
    let store = open(&tmp.path().join("blobs"));
    (tmp, store)
}

/// Moves `groups` from `from` into `download`, one response.
pub(super) fn transfer(
    from: &BlobStore,
    download: &mut Download,
    groups: &[Range<u64>],
) -> Result<WrittenGroups, BlobError> {
    let encoded = from.encode_ranges(&download.hash(), groups).unwrap();
    download.write_encoded(&encoded.groups, &encoded.bytes)
}

pub(super) fn read_export(store: &BlobStore, hash: &Hash) -> Vec<u8> {
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("out");
    store.export(hash, &dest).unwrap();
    std::fs::read(dest).unwrap()
}

pub(super) fn groups_of(status: BlobStatus) -> Vec<Range<u64>> {
    match status {
        BlobStatus::Partial { groups, .. } => groups.ranges(),
        other => panic!("expected a partial blob, got {other:?}"),
    }
}

/// Moves every group `download` still lacks from `from`, one response.
pub(super) fn fetch_rest(
    from: &BlobStore,
    download: &mut Download,
) -> Result<WrittenGroups, BlobError> {
    let missing = download.missing_groups();
    transfer(from, download, &missing)
}

#[test]
fn handles_cross_threads() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}
    send_sync::<BlobStore>();
    send_sync::<Lease>();
    send::<Download>();
}

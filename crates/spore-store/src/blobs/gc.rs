//! Garbage collection: removing blobs nothing keeps.

use std::collections::BTreeSet;

use redb::ReadableTable;

use super::files::remove_if_exists;
use super::meta::{self, BLOBS, COLLECTIONS, DbError, GROUPS, PINS};
use super::{BlobError, BlobStore, Hash, footprint};

/// What [`BlobStore::gc`] removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct GcReport {
    /// Blobs removed (complete or partial).
    pub removed_blobs: u64,
    /// Bytes of data and outboards freed under the quota.
    pub freed_bytes: u64,
}

impl BlobStore {
    /// Removes every blob that is not *live*. Live are: pinned blobs; every blob listed by a
    /// pinned, registered collection (and, recursively, by collections it lists); blobs held by
    /// a [`Lease`](super::Lease) (every import holds one until its caller drops it); and
    /// blobs with a live [`Download`](super::Download). Partial blobs are no exception: pin a
    /// blob before downloading it to keep an interrupted download's progress.
    ///
    /// Refuses to run, changing nothing, while a pinned collection's manifest cannot be read,
    /// since its files could not be told apart from garbage.
    pub fn gc(&self) -> Result<GcReport, BlobError> {
        let inner = &self.inner;
        let _catalog = inner.catalog();

        let read = || -> Result<(BTreeSet<Hash>, BTreeSet<Hash>), DbError> {
            let txn = inner.db.begin_read()?;
            let mut pinned = BTreeSet::new();
            for item in txn.open_table(PINS)?.iter()? {
                if let Some(h) = meta::hash_from_key(item?.1.value()) {
                    pinned.insert(h);
                }
            }
            let mut collections = BTreeSet::new();
            for item in txn.open_table(COLLECTIONS)?.iter()? {
                if let Some(h) = meta::hash_from_key(item?.0.value()) {
                    collections.insert(h);
                }
            }
            Ok((pinned, collections))
        };
        let (mut live, collections) = read().map_err(inner.db_err("read pins"))?;

        // Follow pinned collections. Each collection is read once, so this ends, and costs at
        // most one manifest read per registered collection.
        let mut queue: Vec<Hash> = live.intersection(&collections).copied().collect();
        let mut seen = BTreeSet::new();
        while let Some(c) = queue.pop() {
            if !seen.insert(c) {
                continue;
            }
            for e in inner.read_collection(&c)?.entries() {
                live.insert(e.hash);
                if collections.contains(&e.hash) {
                    queue.push(e.hash);
                }
            }
        }

        let state = inner.state();
        live.extend(state.leases.keys().copied());
        live.extend(state.downloads.iter().copied());
        let write = || -> Result<Vec<(Hash, u64)>, DbError> {
            let txn = inner.db.begin_write()?;
            let mut removed = Vec::new();
            {
                let mut blobs = txn.open_table(BLOBS)?;
                let mut groups = txn.open_table(GROUPS)?;
                let mut marks = txn.open_table(COLLECTIONS)?;
                let mut dead = Vec::new();
                for item in blobs.iter()? {
                    let (k, v) = item?;
                    let Some(hash) = meta::hash_from_key(k.value()) else {
                        continue;
                    };
                    if !live.contains(&hash) {
                        let size = meta::decode_entry(v.value()).map_or(0, |e| e.size);
                        dead.push((hash, footprint(size)));
                    }
                }
                for (hash, bytes) in dead {
                    blobs.remove(&hash.as_bytes()[..])?;
                    meta::delete_groups(&mut groups, &hash)?;
                    marks.remove(&hash.as_bytes()[..])?;
                    removed.push((hash, bytes));
                }
            }
            txn.commit()?;
            Ok(removed)
        };
        let removed = write().map_err(inner.db_err("remove collected blobs"))?;
        drop(state);

        // The entries are gone: the files are orphans now. A failure to remove one leaves it
        // for the next open to remove.
        let mut report = GcReport::default();
        for (hash, bytes) in removed {
            let _ = remove_if_exists(&inner.data_path(&hash));
            let _ = remove_if_exists(&inner.outboard_path(&hash));
            report.removed_blobs += 1;
            report.freed_bytes += bytes;
        }
        inner.release_used(report.freed_bytes);
        Ok(report)
    }
}

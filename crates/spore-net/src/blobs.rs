//! The swarm's view of the on-disk blob store: [`StoreBlobs`] implements spore-core's
//! [`BlobAccess`] over [`spore_store::blobs::BlobStore`].
//!
//! Every write is verified chunk group by chunk group against the blob's hash before a byte is
//! kept (the store's [`Download::write_encoded`]); every read re-verifies what it reads from
//! disk. Downloads commit in batches ([`StoreBlobs::COMMIT_BATCH`] bytes or
//! [`StoreBlobs::COMMIT_INTERVAL`], whichever comes first), each on a thread of its own
//! ([`Download::commit_in_background`]): a commit syncs two files and the metadata database,
//! tens of milliseconds for a batch, which would stall the node's task if it ran there. A crash
//! loses at most the last batches' records, which are fetched again; it never records a group
//! that is not durably written. Groups verified but not yet committed are served at once from
//! the download itself.

use std::collections::BTreeMap;
use std::ops::Range;
use std::time::{Duration, Instant};

use bytes::Bytes;
use spore_core::swarm::{BlobAccess, BlobStatus, Hash, ReadError, WriteError, Written};
use spore_store::blobs::{self, BlobError, BlobStore, Download};
use tracing::{debug, warn};

/// Blob storage for the swarm, backed by a [`BlobStore`].
#[derive(Debug)]
pub struct StoreBlobs {
    store: BlobStore,
    /// Downloads in progress, with when each last committed. At most one per swarm, and the
    /// swarm bounds its swarms.
    downloads: BTreeMap<Hash, (Download, Instant)>,
}

impl StoreBlobs {
    /// Pending bytes that make a download commit.
    pub const COMMIT_BATCH: u64 = 16 << 20;
    /// Longest a download leaves verified groups uncommitted while it receives data.
    pub const COMMIT_INTERVAL: Duration = Duration::from_secs(1);

    /// Storage over `store`.
    pub fn new(store: BlobStore) -> Self {
        Self {
            store,
            downloads: BTreeMap::new(),
        }
    }

    /// The store.
    pub fn store(&self) -> &BlobStore {
        &self.store
    }

    /// Commits every download's pending groups (also done on a timer by the runtime, and when
    /// a download completes or the node stops).
    pub fn flush(&mut self) {
        for (hash, (d, at)) in &mut self.downloads {
            if let Err(e) = d.flush() {
                warn!(blob = %blobs::Hash::from_bytes(*hash), error = %e, "cannot commit download");
            }
            *at = Instant::now();
        }
    }

    /// Starts a background commit of downloads that last committed more than
    /// [`COMMIT_INTERVAL`](Self::COMMIT_INTERVAL) ago.
    pub fn flush_due(&mut self) {
        let now = Instant::now();
        for (hash, (d, at)) in &mut self.downloads {
            if d.pending_bytes() > 0 && now.duration_since(*at) >= Self::COMMIT_INTERVAL {
                if let Err(e) = d.commit_in_background() {
                    warn!(blob = %blobs::Hash::from_bytes(*hash), error = %e, "cannot commit download");
                }
                *at = now;
            }
        }
    }

    /// Drops the download of `hash`, if any (committing what it verified), so that the store
    /// may be used for it directly (export, removal).
    pub fn release(&mut self, hash: &Hash) {
        self.downloads.remove(hash);
    }

    fn download(&mut self, hash: &Hash, size: u64) -> Result<&mut Download, WriteError> {
        if self
            .downloads
            .get(hash)
            .is_some_and(|(d, _)| d.size() != size)
        {
            // The swarm restarts a blob whose unproven size turned out wrong.
            self.downloads.remove(hash);
        }
        if !self.downloads.contains_key(hash) {
            let mut d = self
                .store
                .begin_download(blobs::Hash::from_bytes(*hash), size)
                .map_err(|e| match e {
                    BlobError::SizeMismatch { .. } | BlobError::Verification { .. } => {
                        WriteError::Bad(e.to_string())
                    }
                    e => WriteError::Other(e.to_string()),
                })?;
            d.set_commit_batch(Self::COMMIT_BATCH);
            self.downloads.insert(*hash, (d, Instant::now()));
        }
        match self.downloads.get_mut(hash) {
            Some((d, _)) => Ok(d),
            None => Err(WriteError::Other("download vanished".into())),
        }
    }
}

impl BlobAccess for StoreBlobs {
    fn status(&self, hash: &Hash) -> BlobStatus {
        if let Some((d, _)) = self.downloads.get(hash) {
            return if d.is_complete() {
                BlobStatus::Complete { size: d.size() }
            } else {
                BlobStatus::Partial {
                    size: d.size_verified().then_some(d.size()),
                    groups: d.verified_groups().ranges(),
                }
            };
        }
        match self.store.have(&blobs::Hash::from_bytes(*hash)) {
            Ok(blobs::BlobStatus::Complete { size }) => BlobStatus::Complete { size },
            Ok(blobs::BlobStatus::Partial {
                size,
                size_verified,
                groups,
            }) => BlobStatus::Partial {
                size: size_verified.then_some(size),
                groups: groups.ranges(),
            },
            Ok(_) => BlobStatus::Missing,
            Err(e) => {
                warn!(blob = %blobs::Hash::from_bytes(*hash), error = %e, "cannot read blob status");
                BlobStatus::Missing
            }
        }
    }

    fn read(&mut self, hash: &Hash, groups: Range<u64>) -> Result<Bytes, ReadError> {
        let want = groups.clone();
        let encoded = match self.downloads.get(hash) {
            Some((d, _)) => d.encode_ranges(&[groups]),
            None => self
                .store
                .encode_ranges(&blobs::Hash::from_bytes(*hash), &[groups]),
        };
        match encoded {
            Ok(e) if e.groups == [want] => Ok(Bytes::from(e.bytes)),
            Ok(_) | Err(BlobError::NotFound { .. } | BlobError::NotAvailable { .. }) => {
                Err(ReadError::NotAvailable)
            }
            Err(e) => {
                warn!(blob = %blobs::Hash::from_bytes(*hash), error = %e, "cannot serve blob");
                Err(ReadError::Other(e.to_string()))
            }
        }
    }

    fn write(
        &mut self,
        hash: &Hash,
        size: u64,
        groups: Range<u64>,
        encoded: &[u8],
    ) -> Result<Written, WriteError> {
        let d = self.download(hash, size)?;
        let result = d.write_encoded(&[groups], encoded);
        match result {
            Ok(w) => {
                let complete = w.complete;
                if complete && let Some((d, _)) = self.downloads.remove(hash) {
                    d.finish().map_err(|e| WriteError::Other(e.to_string()))?;
                    debug!(blob = %blobs::Hash::from_bytes(*hash), "download complete");
                } else {
                    self.flush_due();
                }
                Ok(Written {
                    groups: w.groups,
                    complete,
                })
            }
            Err(e @ (BlobError::Verification { .. } | BlobError::Malformed { .. })) => {
                Err(WriteError::Bad(e.to_string()))
            }
            Err(e) => Err(WriteError::Other(e.to_string())),
        }
    }
}

//! Serving and receiving chunk groups as bao-tree verified streams.

use std::fs::File;
use std::io::{self, Write};
use std::ops::Range;
use std::sync::Arc;

use bao_tree::io::outboard::PostOrderOutboard;
use bao_tree::io::sync::{DecodeResponseIter, OutboardMut, WriteAt, encode_ranges_validated};
use bao_tree::io::{BaoContentItem, DecodeError, EncodeError, Leaf, Parent};
use bao_tree::{BaoTree, TreeNode};

use super::bitfield::{Bitfield, normalize};
use super::files::{open_rw, sync_dir};
use super::meta::{self, BLOBS, DbError, Entry, GROUPS, State};
use super::{
    BadData, BlobError, BlobStore, GROUP_BYTES, Hash, Inner, Lease, chunk_ranges, footprint,
    group_count, group_len, group_of_chunk, group_of_offset, new_lease, tree,
};

/// A response built by [`BlobStore::encode_ranges`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    /// The chunk groups it holds: those requested that the store has verified. The receiver
    /// passes them to [`Download::write_encoded`] with `bytes`.
    pub groups: Vec<Range<u64>>,
    /// bao-tree's verified-stream encoding of those groups: in tree pre-order, each proof
    /// node (two 32-byte hashes) followed by what is under it, down to the groups' bytes.
    pub bytes: Vec<u8>,
}

/// What [`Download::write_encoded`] stored.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct WrittenGroups {
    /// Chunk groups verified and recorded by this call (not those verified before).
    pub groups: Vec<Range<u64>>,
    /// True once every group of the blob is verified: call [`Download::finish`].
    pub complete: bool,
}

impl BlobStore {
    /// Encodes the requested chunk groups (ranges of group numbers; clipped to the blob) that
    /// the store has verified, for a peer to check against `hash` as it reads. Every group is
    /// re-verified against the hash as it is read from disk, so a damaged disk is reported
    /// ([`BlobError::Corrupt`]) rather than served. At most
    /// [`max_encode_bytes`](super::BlobLimits::max_encode_bytes) are built in memory; see
    /// [`encode_ranges_to`](Self::encode_ranges_to) for a streaming variant.
    pub fn encode_ranges(&self, hash: &Hash, groups: &[Range<u64>]) -> Result<Encoded, BlobError> {
        let inner = &self.inner;
        let _lease = self.lease(*hash);
        let (size, _, served) = inner.servable(hash, groups)?;
        inner.encode_in_memory(hash, size, served)
    }

    /// Like [`encode_ranges`](Self::encode_ranges), streaming into `out`, with no size bound,
    /// but every requested group (clipped to the blob) must be verified here: otherwise
    /// [`BlobError::NotAvailable`] before anything is written. Use [`have`](Self::have) to know
    /// what to ask for. On an error after writing began, what was written is a prefix of the
    /// response: abort it. Returns the bytes written.
    pub fn encode_ranges_to(
        &self,
        hash: &Hash,
        groups: &[Range<u64>],
        out: &mut dyn Write,
    ) -> Result<u64, BlobError> {
        let inner = &self.inner;
        let _lease = self.lease(*hash);
        let (size, requested, served) = inner.servable(hash, groups)?;
        if served != requested {
            let have = Bitfield::from_ranges(group_count(size), &served);
            let group = requested
                .iter()
                .flat_map(|r| r.clone())
                .find(|g| !have.get(*g))
                .unwrap_or(0);
            return Err(BlobError::NotAvailable { hash: *hash, group });
        }
        let mut out = Tracked {
            w: out,
            limit: u64::MAX,
            written: 0,
            error: None,
            overflow: false,
        };
        inner.encode_into(hash, size, &served, &mut out)?;
        Ok(out.written)
    }

    /// Starts (or resumes) downloading blob `hash` of `size` bytes, as its senders claim. The
    /// groups verified before, even by a process that crashed, are reported by
    /// [`Download::verified_groups`] and need not be fetched again.
    ///
    /// The full size is counted against the quota from here on ([`BlobError::Quota`] if it does
    /// not fit). The size is only proven once the last chunk group verifies
    /// ([`Download::size_verified`]): fetch it first. A wrong size shows up as failed
    /// verification; resuming with a different size restarts the download if the size was not
    /// proven, and is refused ([`BlobError::SizeMismatch`]) if it was. A complete blob gives a
    /// download that is already complete. One download per blob at a time.
    pub fn begin_download(&self, hash: Hash, size: u64) -> Result<Download, BlobError> {
        let inner = &self.inner;
        inner.check_size(size)?;
        let mut empty = None;
        if size == 0 {
            if hash != Hash::EMPTY {
                return Err(BlobError::Verification {
                    hash,
                    group: 0,
                    kind: BadData::Data,
                });
            }
            // Held to the end, so GC cannot take it before the download's own lease.
            empty = Some(self.import_bytes(&[])?);
        }
        let n = group_count(size);
        let _catalog = inner.catalog();
        if inner.state().downloads.contains(&hash) {
            return Err(BlobError::DownloadInProgress { hash });
        }
        let data_path = inner.data_path(&hash);
        let ob_path = inner.outboard_path(&hash);
        let existing = inner.entry(&hash)?;
        let (verified, size_verified, complete) = match existing {
            Some(Entry {
                size: known,
                state: State::Complete,
            }) => {
                if known != size {
                    return Err(BlobError::SizeMismatch {
                        hash,
                        known,
                        claimed: size,
                    });
                }
                (Bitfield::full(n), true, true)
            }
            Some(Entry {
                size: known,
                state: State::Partial { size_verified },
            }) if known == size => {
                let read = || -> Result<Bitfield, DbError> {
                    let txn = inner.db.begin_read()?;
                    meta::load_groups(&txn.open_table(GROUPS)?, &hash, n)
                };
                let bits = read().map_err(inner.db_err("read verified groups"))?;
                (bits, size_verified, false)
            }
            Some(Entry {
                size: known,
                state: State::Partial {
                    size_verified: true,
                },
            }) => {
                return Err(BlobError::SizeMismatch {
                    hash,
                    known,
                    claimed: size,
                });
            }
            Some(Entry { size: known, .. }) => {
                // An unproven size: start over at the new one. Forget the groups first, then
                // drop their bytes: the recorded groups never outrun the data.
                let reservation =
                    inner.reserve(footprint(size).saturating_sub(footprint(known)))?;
                inner.write_partial(&hash, size, true)?;
                reservation.settle(footprint(size), footprint(known));
                truncate(&data_path, "blob data file")?;
                truncate(&ob_path, "blob outboard")?;
                (Bitfield::new(n), false, false)
            }
            None => {
                let reservation = inner.reserve(footprint(size))?;
                // Files first, then the entry: a crash in between leaves orphan files, which
                // the next open removes. Files left by a GC that could not remove them are
                // emptied: nothing vouches for their bytes.
                truncate(&data_path, "blob data file")?;
                truncate(&ob_path, "blob outboard")?;
                sync_dir(&inner.data_dir);
                sync_dir(&inner.outboard_dir);
                inner.write_partial(&hash, size, false)?;
                reservation.settle(footprint(size), 0);
                (Bitfield::new(n), false, false)
            }
        };
        let data = open_rw(&data_path, "blob data file")?;
        let ob = open_rw(&ob_path, "blob outboard")?;
        let lease = new_lease(inner, vec![hash]);
        inner.state().downloads.insert(hash);
        drop(empty);
        Ok(Download {
            inner: Arc::clone(inner),
            hash,
            size,
            tree: tree(size),
            data,
            outboard: PostOrderOutboard {
                root: hash.to_blake3(),
                tree: tree(size),
                data: ob,
            },
            verified,
            size_verified,
            complete,
            pending: Vec::new(),
            commit_batch: 0,
            inflight: None,
            _lease: lease,
            #[cfg(test)]
            crash_before_commit: false,
        })
    }
}

/// A commit on its own thread: whether the blob was found complete, and whether its size is
/// verified.
type Inflight = std::thread::JoinHandle<Result<(bool, bool), BlobError>>;

/// A download in progress: writes verified chunk groups of one blob into the store. Created by
/// [`BlobStore::begin_download`]; protects the blob from GC while it lives. Dropping it keeps
/// what was verified; [`finish`](Self::finish) marks the blob complete.
pub struct Download {
    inner: Arc<Inner>,
    hash: Hash,
    size: u64,
    tree: BaoTree,
    data: File,
    outboard: PostOrderOutboard<File>,
    /// Groups verified: recorded ones and `pending` ones.
    verified: Bitfield,
    size_verified: bool,
    complete: bool,
    /// Groups verified and written but not yet synced and recorded.
    pending: Vec<u64>,
    /// Bytes of pending groups that trigger a commit (0: commit every write).
    commit_batch: u64,
    /// The commit running in the background, with the groups it records.
    inflight: Option<(Inflight, Vec<u64>)>,
    _lease: Lease,
    /// Test hook: write and sync the data, then stop before the metadata commit, as a crash
    /// there would.
    #[cfg(test)]
    pub(crate) crash_before_commit: bool,
}

impl std::fmt::Debug for Download {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Download")
            .field("hash", &self.hash)
            .field("size", &self.size)
            .field("verified", &self.verified)
            .finish_non_exhaustive()
    }
}

impl Drop for Download {
    fn drop(&mut self) {
        // Best effort: a failure here only means those groups are fetched again.
        let _ = self.flush();
        self.inner.state().downloads.remove(&self.hash);
    }
}

impl Download {
    /// The blob.
    pub fn hash(&self) -> Hash {
        self.hash
    }

    /// The size it was begun with.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// True once the last chunk group verified (which proves the size), or the blob is complete.
    pub fn size_verified(&self) -> bool {
        self.size_verified
    }

    /// The chunk groups verified so far: recorded, or written and waiting for the next
    /// commit (see [`set_commit_batch`](Self::set_commit_batch)).
    pub fn verified_groups(&self) -> &Bitfield {
        &self.verified
    }

    /// Batches commits: from now on, verified groups are written at once but synced and
    /// recorded only when `bytes` of them are pending (in the background:
    /// [`commit_in_background`](Self::commit_in_background)), at [`flush`](Self::flush),
    /// [`finish`](Self::finish), or when the download is dropped. Each commit costs a few
    /// disk syncs (milliseconds), so committing every response caps a download at tens of
    /// MB/s; batching trades that for refetching at most `bytes` after a crash. Pending groups
    /// are already servable through [`encode_ranges`](Self::encode_ranges). 0 (the default)
    /// commits every write.
    pub fn set_commit_batch(&mut self, bytes: u64) {
        self.commit_batch = bytes;
    }

    /// Bytes of groups verified and written but not yet recorded.
    pub fn pending_bytes(&self) -> u64 {
        self.pending.iter().map(|&g| group_len(self.size, g)).sum()
    }

    /// Syncs and records the pending groups (nothing to do if none are pending).
    pub fn flush(&mut self) -> Result<(), BlobError> {
        self.join_inflight()?;
        if self.pending.is_empty() {
            return Ok(());
        }
        let mut pending = std::mem::take(&mut self.pending);
        pending.sort_unstable();
        let result = self.commit(&pending);
        if result.is_err() {
            self.pending = pending;
        }
        result
    }

    /// Encodes `groups` this download has verified (recorded or pending), like
    /// [`BlobStore::encode_ranges`], so a downloader serves what it holds at once. Groups
    /// not verified here are left out of the response ([`Encoded::groups`] says which are in).
    pub fn encode_ranges(&self, groups: &[Range<u64>]) -> Result<Encoded, BlobError> {
        let hash = self.hash;
        let inner = &self.inner;
        let max = inner.limits.max_request_ranges;
        if groups.len() > max {
            return Err(BlobError::Malformed {
                hash,
                reason: format!("{} ranges, more than the limit of {max}", groups.len()),
            });
        }
        let requested = normalize(groups, group_count(self.size));
        let served: Vec<u64> = requested
            .iter()
            .flat_map(|r| r.clone())
            .filter(|&g| self.verified.get(g))
            .collect();
        let served = Bitfield::from_groups(self.verified.len(), &served).ranges();
        inner.encode_in_memory(&hash, self.size, served)
    }

    /// The chunk groups still to fetch, as sorted ranges.
    pub fn missing_groups(&self) -> Vec<Range<u64>> {
        let mut out: Vec<Range<u64>> = Vec::new();
        let mut next = 0;
        for r in self.verified.ranges() {
            if next < r.start {
                out.push(next..r.start);
            }
            next = r.end;
        }
        if next < self.verified.len() {
            out.push(next..self.verified.len());
        }
        out
    }

    /// True once every chunk group is verified (or the blob was complete already).
    pub fn is_complete(&self) -> bool {
        self.complete || self.verified.is_full()
    }

    /// Decodes `encoded`, a response holding chunk groups `groups` (as
    /// [`Encoded::groups`] says; clipped to the blob), verifies every proof node and every
    /// chunk group against the hash before writing it, writes the groups not verified before,
    /// syncs, and then records them in one transaction (or, with a
    /// [commit batch](Self::set_commit_batch), once enough are pending).
    ///
    /// On bad data the first bad group is reported ([`BlobError::Verification`]): nothing from
    /// it on is written or recorded, and the groups before it in the response are kept
    /// (recorded before the error is returned). Bytes after a complete response are
    /// [`BlobError::Malformed`], again after keeping what verified.
    pub fn write_encoded(
        &mut self,
        groups: &[Range<u64>],
        encoded: &[u8],
    ) -> Result<WrittenGroups, BlobError> {
        let hash = self.hash;
        if self.is_complete() {
            return Ok(WrittenGroups {
                groups: Vec::new(),
                complete: true,
            });
        }
        let max = self.inner.limits.max_request_ranges;
        if groups.len() > max {
            return Err(BlobError::Malformed {
                hash,
                reason: format!("{} ranges, more than the limit of {max}", groups.len()),
            });
        }
        let ranges = normalize(groups, group_count(self.size));
        let chunks = chunk_ranges(&ranges);
        let mut cursor = io::Cursor::new(encoded);
        let mut new_groups = Vec::new();
        let mut failure = None;
        let iter = DecodeResponseIter::new(hash.to_blake3(), self.tree, &mut cursor, &chunks);
        for item in iter {
            match item {
                Ok(BaoContentItem::Parent(Parent { node, pair })) => {
                    // Verified against the hash above it: safe to keep even if a later part
                    // of the response fails.
                    self.outboard.save(node, &pair).map_err(|e| {
                        BlobError::io("write", "blob outboard", &self.inner.outboard_path(&hash))(e)
                    })?;
                }
                Ok(BaoContentItem::Leaf(Leaf { offset, data })) => {
                    let g = group_of_offset(offset);
                    if offset % GROUP_BYTES != 0 || data.len() as u64 != group_len(self.size, g) {
                        // Group-aligned requests decode into whole groups; anything else is a
                        // bug, and must not be recorded as a verified group.
                        failure = Some(BlobError::Malformed {
                            hash,
                            reason: format!("a leaf at byte {offset} is not one whole chunk group"),
                        });
                        break;
                    }
                    if !self.verified.get(g) {
                        self.data.write_all_at(offset, &data).map_err(|e| {
                            BlobError::io("write", "blob data file", &self.inner.data_path(&hash))(
                                e,
                            )
                        })?;
                        new_groups.push(g);
                    }
                }
                Err(e) => {
                    failure = Some(decode_failure(hash, &ranges, e));
                    break;
                }
            }
        }
        if failure.is_none() && (cursor.position() as usize) < encoded.len() {
            failure = Some(BlobError::Malformed {
                hash,
                reason: format!(
                    "{} bytes follow the end of the response",
                    encoded.len() - cursor.position() as usize
                ),
            });
        }
        if !new_groups.is_empty() {
            for &g in &new_groups {
                self.verified.set(g);
            }
            self.pending.extend_from_slice(&new_groups);
            let bad = failure.is_some();
            if bad || self.verified.is_full() || self.commit_batch == 0 {
                self.flush()?;
            } else if self.pending_bytes() >= self.commit_batch {
                self.commit_in_background()?;
            }
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(WrittenGroups {
                groups: Bitfield::from_groups(self.verified.len(), &new_groups).ranges(),
                complete: self.is_complete(),
            }),
        }
    }

    /// Makes the newly written groups durable, then records them (on this thread).
    fn commit(&mut self, new_groups: &[u64]) -> Result<(), BlobError> {
        #[cfg(test)]
        if self.crash_before_commit {
            let _ = self.data.sync_data();
            let _ = self.outboard.data.sync_data();
            return Ok(());
        }
        let (complete, size_verified) = record(
            &self.inner,
            self.hash,
            self.size,
            &self.verified,
            new_groups,
            self.size_verified,
            &self.data,
            &self.outboard.data,
        )?;
        self.recorded(complete, size_verified);
        Ok(())
    }

    /// Takes in what a commit recorded.
    fn recorded(&mut self, complete: bool, size_verified: bool) {
        if complete {
            self.complete = true;
            self.verified = Bitfield::full(self.verified.len());
        }
        self.size_verified |= size_verified;
    }

    /// Commits the pending groups on a background thread, so that the disk syncs (tens of
    /// milliseconds for a batch of megabytes) overlap with receiving more data. At most one
    /// such commit runs per download: while one does, this does nothing and the pending groups
    /// wait for the next call. Writes go on meanwhile; the commit records only the groups
    /// pending when it started, after syncing the files (which holds them and maybe more).
    /// [`flush`](Self::flush), [`finish`](Self::finish) and dropping wait for it.
    pub fn commit_in_background(&mut self) -> Result<(), BlobError> {
        if let Some((running, _)) = &self.inflight {
            if !running.is_finished() {
                return Ok(());
            }
            self.join_inflight()?;
        }
        if self.pending.is_empty() {
            return Ok(());
        }
        #[cfg(test)]
        if self.crash_before_commit {
            return self.flush();
        }
        let hash = self.hash;
        let data_path = self.inner.data_path(&hash);
        let ob_path = self.inner.outboard_path(&hash);
        let data =
            self.data
                .try_clone()
                .map_err(BlobError::io("reopen", "blob data file", &data_path))?;
        let outboard = self.outboard.data.try_clone().map_err(BlobError::io(
            "reopen",
            "blob outboard",
            &ob_path,
        ))?;
        let mut groups = std::mem::take(&mut self.pending);
        groups.sort_unstable();
        // Every group verified so far is recorded or in `groups`: nothing else is pending.
        let bits = self.verified.clone();
        let (inner, size, was) = (Arc::clone(&self.inner), self.size, self.size_verified);
        let new = groups.clone();
        let spawned = std::thread::Builder::new()
            .name("blob-commit".into())
            .spawn(move || record(&inner, hash, size, &bits, &new, was, &data, &outboard));
        match spawned {
            Ok(handle) => {
                self.inflight = Some((handle, groups));
                Ok(())
            }
            Err(e) => {
                self.pending = groups;
                Err(BlobError::io(
                    "start a thread to commit",
                    "blob data file",
                    &data_path,
                )(e))
            }
        }
    }

    /// Waits for the background commit, if any, and takes in its result.
    fn join_inflight(&mut self) -> Result<(), BlobError> {
        let Some((running, groups)) = self.inflight.take() else {
            return Ok(());
        };
        let result = running.join().unwrap_or_else(|_| {
            let path = self.inner.data_path(&self.hash);
            Err(BlobError::io("commit", "blob data file", &path)(
                io::Error::other("the commit thread panicked"),
            ))
        });
        match result {
            Ok((complete, size_verified)) => {
                self.recorded(complete, size_verified);
                Ok(())
            }
            Err(e) => {
                // Not recorded: try again with the next commit.
                self.pending.extend(groups);
                Err(e)
            }
        }
    }

    /// Marks the blob complete. Every chunk group must be verified
    /// ([`BlobError::Incomplete`] otherwise); the data and outboard were synced as the groups
    /// were recorded.
    pub fn finish(mut self) -> Result<(), BlobError> {
        self.flush()?;
        let hash = self.hash;
        let inner = &self.inner;
        let _catalog = inner.catalog();
        if self.complete
            || matches!(
                inner.entry(&hash)?,
                Some(Entry {
                    state: State::Complete,
                    ..
                })
            )
        {
            return Ok(());
        }
        if !self.verified.is_full() {
            return Err(BlobError::Incomplete {
                hash,
                missing_groups: self.verified.len() - self.verified.count_ones(),
            });
        }
        // Every group was written, and with it every proof node. Bytes past the end can only be
        // left from an earlier, wrong size: cut them.
        let data_path = inner.data_path(&hash);
        let ob_path = inner.outboard_path(&hash);
        exact_len(&self.data, &data_path, "blob data file", self.size, hash)?;
        exact_len(
            &self.outboard.data,
            &ob_path,
            "blob outboard",
            self.tree.outboard_size(),
            hash,
        )?;
        let write = || -> Result<(), DbError> {
            let txn = inner.db.begin_write()?;
            {
                let mut blobs = txn.open_table(BLOBS)?;
                if let Some(Entry {
                    size,
                    state: State::Partial { .. },
                }) = meta::get_entry(&blobs, &hash)?
                    && size == self.size
                {
                    let entry = Entry {
                        size,
                        state: State::Complete,
                    };
                    blobs.insert(&hash.as_bytes()[..], &meta::encode_entry(&entry)[..])?;
                    meta::delete_groups(&mut txn.open_table(GROUPS)?, &hash)?;
                }
            }
            txn.commit()?;
            Ok(())
        };
        write().map_err(inner.db_err("record a finished download"))
    }
}

/// Syncs `data` and `outboard`, then records `new_groups` (whose pages are taken from `bits`)
/// in one transaction; `was_size_verified` is what the entry says now. Returns whether the
/// blob turned out complete (imported meanwhile) and whether its size is now verified.
#[allow(clippy::too_many_arguments)]
fn record(
    inner: &Inner,
    hash: Hash,
    size: u64,
    bits: &Bitfield,
    new_groups: &[u64],
    was_size_verified: bool,
    data: &File,
    outboard: &File,
) -> Result<(bool, bool), BlobError> {
    let data_path = inner.data_path(&hash);
    let ob_path = inner.outboard_path(&hash);
    data.sync_data()
        .map_err(BlobError::io("sync", "blob data file", &data_path))?;
    outboard
        .sync_data()
        .map_err(BlobError::io("sync", "blob outboard", &ob_path))?;
    let last = bits.len().saturating_sub(1);
    let size_verified = was_size_verified || bits.get(last);
    let write = || -> Result<bool, DbError> {
        let txn = inner.db.begin_write()?;
        let complete = {
            let mut blobs = txn.open_table(BLOBS)?;
            match meta::get_entry(&blobs, &hash)? {
                // Imported meanwhile: nothing to record.
                Some(Entry {
                    state: State::Complete,
                    ..
                }) => true,
                Some(entry) if entry.size == size => {
                    meta::store_groups(&mut txn.open_table(GROUPS)?, &hash, bits, new_groups)?;
                    if size_verified != was_size_verified {
                        let entry = Entry {
                            size,
                            state: State::Partial { size_verified },
                        };
                        blobs.insert(&hash.as_bytes()[..], &meta::encode_entry(&entry)[..])?;
                    }
                    false
                }
                // Gone or restarted at another size: this download's writes are moot.
                _ => return Ok(false),
            }
        };
        txn.commit()?;
        Ok(complete)
    };
    let complete = write().map_err(inner.db_err("record verified groups"))?;
    Ok((complete, size_verified))
}

/// Empties (creating if missing) the file at `path`.
fn truncate(path: &std::path::Path, what: &'static str) -> Result<(), BlobError> {
    open_rw(path, what)?
        .set_len(0)
        .map_err(BlobError::io("truncate", what, path))
}

/// Makes `file` exactly `want` bytes long (synced), cutting what is past it; shorter is corrupt.
fn exact_len(
    file: &File,
    path: &std::path::Path,
    what: &'static str,
    want: u64,
    hash: Hash,
) -> Result<(), BlobError> {
    let len = file
        .metadata()
        .map_err(BlobError::io("inspect", what, path))?
        .len();
    if len < want {
        return Err(BlobError::Corrupt {
            hash,
            what,
            path: path.to_path_buf(),
            reason: format!("it is {len} bytes, {want} expected"),
        });
    }
    if len > want {
        file.set_len(want)
            .and_then(|()| file.sync_all())
            .map_err(BlobError::io("truncate", what, path))?;
    }
    Ok(())
}

/// The first requested group at or after chunk group `from`.
fn first_requested(ranges: &[Range<u64>], from: u64) -> u64 {
    ranges
        .iter()
        .find(|r| r.end > from)
        .map_or(from, |r| r.start.max(from))
}

fn node_group(ranges: &[Range<u64>], node: TreeNode) -> u64 {
    first_requested(ranges, group_of_chunk(node.chunk_range().start))
}

fn decode_failure(hash: Hash, ranges: &[Range<u64>], e: DecodeError) -> BlobError {
    let (group, kind) = match e {
        DecodeError::LeafHashMismatch(c) => (group_of_chunk(c), BadData::Data),
        DecodeError::LeafNotFound(c) => (group_of_chunk(c), BadData::Truncated),
        DecodeError::ParentHashMismatch(node) => (node_group(ranges, node), BadData::Proof),
        DecodeError::ParentNotFound(node) => (node_group(ranges, node), BadData::Truncated),
        DecodeError::Io(e) => {
            return BlobError::Malformed {
                hash,
                reason: e.to_string(),
            };
        }
    };
    BlobError::Verification { hash, group, kind }
}

/// A writer that counts, bounds, and remembers its own errors (so they are told apart from
/// errors reading the store).
struct Tracked<W> {
    w: W,
    limit: u64,
    written: u64,
    error: Option<io::Error>,
    overflow: bool,
}

impl<W: Write> Write for Tracked<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.written + buf.len() as u64 > self.limit {
            self.overflow = true;
            return Err(io::Error::other("response limit reached"));
        }
        match self.w.write(buf) {
            Ok(n) => {
                self.written += n as u64;
                Ok(n)
            }
            Err(e) => {
                self.error = Some(io::Error::new(e.kind(), e.to_string()));
                Err(e)
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.w.flush().inspect_err(|e| {
            self.error = Some(io::Error::new(e.kind(), e.to_string()));
        })
    }
}

/// A blob's size, the groups requested (normalized), and those of them verified here.
type Servable = (u64, Vec<Range<u64>>, Vec<Range<u64>>);

impl Inner {
    /// The blob's size, the requested groups normalized, and those of them verified here.
    fn servable(&self, hash: &Hash, groups: &[Range<u64>]) -> Result<Servable, BlobError> {
        let max = self.limits.max_request_ranges;
        if groups.len() > max {
            return Err(BlobError::Malformed {
                hash: *hash,
                reason: format!("{} ranges, more than the limit of {max}", groups.len()),
            });
        }
        let read = || -> Result<Option<(u64, Option<Bitfield>)>, DbError> {
            let txn = self.db.begin_read()?;
            let Some(entry) = meta::get_entry(&txn.open_table(BLOBS)?, hash)? else {
                return Ok(None);
            };
            let bits = match entry.state {
                State::Complete => None,
                State::Partial { .. } => Some(meta::load_groups(
                    &txn.open_table(GROUPS)?,
                    hash,
                    group_count(entry.size),
                )?),
            };
            Ok(Some((entry.size, bits)))
        };
        let (size, bits) = read()
            .map_err(self.db_err("read a blob entry"))?
            .ok_or(BlobError::NotFound { hash: *hash })?;
        let requested = normalize(groups, group_count(size));
        let served = match bits {
            None => requested.clone(),
            Some(bits) => {
                let mut out: Vec<Range<u64>> = Vec::new();
                for r in &requested {
                    for g in r.clone().filter(|g| bits.get(*g)) {
                        match out.last_mut() {
                            Some(last) if last.end == g => last.end = g + 1,
                            _ => out.push(g..g + 1),
                        }
                    }
                }
                out
            }
        };
        Ok((size, requested, served))
    }

    /// Encodes `served` (verified groups of `hash`, `size` bytes) into memory, refusing more
    /// than [`max_encode_bytes`](super::BlobLimits::max_encode_bytes).
    fn encode_in_memory(
        &self,
        hash: &Hash,
        size: u64,
        served: Vec<Range<u64>>,
    ) -> Result<Encoded, BlobError> {
        let limit = self.limits.max_encode_bytes;
        let data: u64 = served
            .iter()
            .flat_map(|r| r.clone())
            .map(|g| group_len(size, g))
            .sum();
        if data > limit as u64 {
            return Err(BlobError::ResponseTooLarge { hash: *hash, limit });
        }
        let mut out = Tracked {
            w: Vec::new(),
            limit: limit as u64,
            written: 0,
            error: None,
            overflow: false,
        };
        self.encode_into(hash, size, &served, &mut out)?;
        Ok(Encoded {
            groups: served,
            bytes: out.w,
        })
    }

    fn encode_into<W: Write>(
        &self,
        hash: &Hash,
        size: u64,
        served: &[Range<u64>],
        out: &mut Tracked<W>,
    ) -> Result<(), BlobError> {
        if served.is_empty() {
            return Ok(());
        }
        let data_path = self.data_path(hash);
        let ob_path = self.outboard_path(hash);
        let data =
            File::open(&data_path).map_err(BlobError::io("open", "blob data file", &data_path))?;
        let ob = File::open(&ob_path).map_err(BlobError::io("open", "blob outboard", &ob_path))?;
        let outboard = PostOrderOutboard {
            root: hash.to_blake3(),
            tree: tree(size),
            data: &ob,
        };
        let result = encode_ranges_validated(&data, &outboard, &chunk_ranges(served), &mut *out);
        let Err(e) = result else {
            return Ok(());
        };
        if out.overflow {
            return Err(BlobError::ResponseTooLarge {
                hash: *hash,
                limit: usize::try_from(out.limit).unwrap_or(usize::MAX),
            });
        }
        if let Some(source) = out.error.take() {
            return Err(BlobError::Output {
                hash: *hash,
                source,
            });
        }
        Err(match e {
            EncodeError::LeafHashMismatch(c) => BlobError::Corrupt {
                hash: *hash,
                what: "blob data file",
                path: data_path,
                reason: format!(
                    "chunk group {} does not match the hash (run verify)",
                    group_of_chunk(c)
                ),
            },
            EncodeError::ParentHashMismatch(node) => BlobError::Corrupt {
                hash: *hash,
                what: "blob outboard",
                path: ob_path,
                reason: format!(
                    "the proof above chunk group {} does not match the hash (run verify)",
                    group_of_chunk(node.chunk_range().start)
                ),
            },
            EncodeError::Io(e) if e.kind() == io::ErrorKind::UnexpectedEof => BlobError::Corrupt {
                hash: *hash,
                what: "blob data file",
                path: data_path,
                reason: "it is shorter than the groups recorded in it (run verify)".into(),
            },
            EncodeError::Io(e) => BlobError::io("read", "blob data file", &data_path)(e),
            other => BlobError::io("read", "blob outboard", &ob_path)(io::Error::other(
                other.to_string(),
            )),
        })
    }

    /// Records `hash` as a partial blob of `size` with no verified group (dropping any).
    fn write_partial(&self, hash: &Hash, size: u64, reset: bool) -> Result<(), BlobError> {
        let write = || -> Result<(), DbError> {
            let txn = self.db.begin_write()?;
            {
                let entry = Entry {
                    size,
                    state: State::Partial {
                        size_verified: false,
                    },
                };
                txn.open_table(BLOBS)?
                    .insert(&hash.as_bytes()[..], &meta::encode_entry(&entry)[..])?;
                if reset {
                    meta::delete_groups(&mut txn.open_table(GROUPS)?, hash)?;
                }
            }
            txn.commit()?;
            Ok(())
        };
        write().map_err(self.db_err("record a new download"))
    }
}

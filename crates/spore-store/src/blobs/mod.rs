//! The content-addressed blob store: files named by their BLAKE3 hash, verifiable piece by
//! piece, so that a swarm can fetch any part of a blob from anyone and check it before it is
//! stored or served.
//!
//! A blob's hash is the root of a binary hash tree over its bytes (BLAKE3's own tree, as the
//! [`bao-tree`](bao_tree) crate computes it). The store keeps the tree's upper nodes beside
//! every blob (its *outboard*), down to *chunk groups* of 16 KiB ([`GROUP_BYTES`]): the unit
//! that is requested, sent, verified, recorded and served. A response for some groups carries
//! them interleaved with the tree nodes that prove them against the hash, so a receiver
//! checks each group before it writes a byte of it.
//!
//! The API is synchronous and byte-oriented: the swarm logic (sans-IO, in spore-core) decides
//! what to ask whom; this store answers [`have`](BlobStore::have), builds responses
//! ([`encode_ranges`](BlobStore::encode_ranges)) and takes them in
//! ([`Download::write_encoded`]).
//!
//! ## Example
//!
//! ```
//! use spore_store::blobs::{BlobLimits, BlobStatus, BlobStore};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let tmp = tempfile::tempdir()?;
//! let alice = BlobStore::open(tmp.path().join("alice"), BlobLimits::default())?;
//! let bob = BlobStore::open(tmp.path().join("bob"), BlobLimits::default())?;
//!
//! // Alice imports something and pins it, so garbage collection keeps it.
//! let data = vec![7u8; 100_000];
//! let imported = alice.import_bytes(&data)?;
//! alice.pin("greeting", imported.hash)?;
//!
//! // Bob fetches it in two pieces, the last chunk group first (it proves the size).
//! let mut download = bob.begin_download(imported.hash, imported.size)?;
//! for groups in [vec![6..7], vec![0..6]] {
//!     let response = alice.encode_ranges(&imported.hash, &groups)?;
//!     download.write_encoded(&response.groups, &response.bytes)?;
//! }
//! assert!(download.is_complete());
//! download.finish()?;
//! assert_eq!(bob.have(&imported.hash)?, BlobStatus::Complete { size: 100_000 });
//!
//! bob.export(&imported.hash, tmp.path().join("copy"))?;
//! assert_eq!(std::fs::read(tmp.path().join("copy"))?, data);
//! # Ok(())
//! # }
//! ```
//!
//! ## Layout
//!
//! In the store's directory (a node's `<data-dir>/blobs/`, mode 0700; files mode 0600):
//!
//! | path | contents |
//! |---|---|
//! | `data/<hex hash>` | the blob's bytes, written and read with positioned I/O (`pwrite`/`pread`, no memory maps); sparse while partial |
//! | `outboard/<hex hash>` | the hash tree above the chunk groups, post-order, 64 bytes (two hashes) per node, no size prefix: 64 × (groups − 1) bytes |
//! | `tmp/` | imports in progress; emptied by [`BlobStore::open`] |
//! | `meta.redb` | the metadata, below |
//!
//! | redb table | key | value |
//! |---|---|---|
//! | `blobs_v1` | hash (32 bytes) | postcard `Entry { size, state: Complete \| Partial { size_verified } }` |
//! | `blob_groups_v1` | hash ‖ page (u32 big-endian) | the verified groups of a partial blob, a bitfield in pages of 8192 groups (1 KiB, 128 MiB of blob); only pages with a bit set |
//! | `pins_v1` | pin name | hash |
//! | `collections_v1` | hash of a collection manifest | `()` |
//!
//! A *collection* is a directory as one blob: its manifest lists every file's relative path,
//! hash and size (format in [`Collection`]); [`import_dir`](BlobStore::import_dir) and
//! [`export_collection`](BlobStore::export_collection) move directories in and out.
//!
//! ## Crash safety
//!
//! The rules, each an ordering of writes, so that whatever instant a crash stops the process:
//!
//! 1. **A blob recorded complete has its data and outboard durable.** An import writes both
//!    to `tmp/`, computing the hash as it reads, syncs them, renames them into place, syncs the
//!    directories, and only then commits the entry. An import returns after that commit.
//! 2. **A partial blob's recorded groups are a subset of what is durably written and
//!    verified.** [`Download::write_encoded`] verifies every proof node and chunk group against
//!    the hash before writing it, syncs data and outboard, and only then records the new groups
//!    in one redb transaction. A crash before the commit loses the record of those groups
//!    (they are fetched again), never the other way round. Forgetting groups (a restart at a
//!    new size, [`repair`](BlobStore::repair)) commits first and cuts the bytes after.
//! 3. **Files are created before their entry and removed after it.** A download creates its
//!    (empty) files before its entry; GC deletes entries, commits, then unlinks. So a crash
//!    leaves at worst files without an entry, which [`BlobStore::open`] removes, along with
//!    `tmp/`. An entry whose files are missing or of the wrong length (damage from outside) is
//!    forgotten at open and listed in [`OpenReport::damaged`].
//!
//! So reopening a store needs no re-hashing, and a resumed download
//! ([`begin_download`](BlobStore::begin_download) again) fetches nothing it had verified.
//! To find damage done behind the store's back, [`verify`](BlobStore::verify) and
//! [`verify_all`](BlobStore::verify_all) re-hash blobs; [`repair`](BlobStore::repair) forgets
//! the bad groups so a download fetches them again. Serving and exporting re-verify as they read
//! in any case, so damaged bytes are reported, never sent or written out.
//!
//! ## Garbage collection and leases
//!
//! [`gc`](BlobStore::gc) removes every blob that is not pinned, not listed by a pinned
//! collection, and not held by a [`Lease`] or a live [`Download`]. Every import holds a lease
//! and hands it to its caller in [`Imported`]: **pin what you want to keep before dropping
//! it**. A partial blob is removed like any other once its download is dropped: pin a blob
//! before downloading it to keep an interrupted download's progress.
//!
//! ## Limits
//!
//! [`BlobLimits`]: a quota on the bytes of data and outboards (a download counts at its full
//! size from its start; [`BlobError::Quota`] says how much was needed and how much is free),
//! the largest blob, collection sizes, the size of a response built in memory, ranges per
//! request, and pins. Imports stream with bounded buffers, whatever the file's size.
//!
//! ## Concurrency
//!
//! A [`BlobStore`] is cheap to clone and may be used from several threads. Each blob has at
//! most one [`Download`] at a time ([`BlobError::DownloadInProgress`]); an import of content
//! being downloaded completes the download.

mod bitfield;
mod collection;
mod error;
mod export;
mod files;
mod gc;
mod hash;
mod import;
mod meta;
mod transfer;

pub use bitfield::Bitfield;
pub use collection::{Collection, CollectionEntry, MANIFEST_MAGIC, MANIFEST_VERSION};
pub use error::{BadData, BlobError};
pub use export::VerifyReport;
pub use gc::GcReport;
pub use hash::{Hash, ParseHashError};
pub use import::Imported;
pub use transfer::{Download, Encoded, WrittenGroups};

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, OpenOptions};
use std::ops::Range;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bao_tree::{BaoTree, BlockSize};
use redb::{Database, ReadableTable, ReadableTableMetadata};

use files::{ensure_dir, file_len, remove_if_exists};
use meta::{BLOBS, COLLECTIONS, DbError, Entry, GROUPS, PINS, State};

/// Name of the blob directory in the data directory.
pub const BLOBS_DIR: &str = "blobs";
/// Name of the metadata database in the blob directory.
pub const META_FILE: &str = "meta.redb";
/// Bytes in a chunk group: the unit that is verified, recorded, requested and served (16
/// BLAKE3 chunks of 1 KiB). The last group of a blob may be shorter.
pub const GROUP_BYTES: u64 = 16 * 1024;
/// bao-tree's name for [`GROUP_BYTES`]: 2⁴ chunks.
pub(crate) const BLOCK_SIZE: BlockSize = BlockSize::from_chunk_log(4);
const GROUP_SHIFT: u32 = 14;
const CHUNKS_PER_GROUP_SHIFT: u32 = 4;

/// redb's page cache for the metadata: entries are small; this is a bound, where redb's
/// default would let the cache grow to 1 GiB.
const CACHE_BYTES: usize = 16 << 20;

/// Number of chunk groups in a blob of `size` bytes (0 for the empty blob).
pub fn group_count(size: u64) -> u64 {
    size.div_ceil(GROUP_BYTES)
}

/// Bytes a blob of `size` takes under the quota: its data and its outboard (64 bytes per chunk
/// group, less one).
pub fn footprint(size: u64) -> u64 {
    size.saturating_add(tree(size).outboard_size())
}

pub(crate) fn tree(size: u64) -> BaoTree {
    BaoTree::new(size, BLOCK_SIZE)
}

/// The store's limits. Every one is enforced; the defaults suit a desktop node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobLimits {
    /// Bytes of data and outboards the store may hold, partial downloads counted at their full
    /// size from [`BlobStore::begin_download`] on. Default 16 GiB.
    pub quota_bytes: u64,
    /// Largest blob accepted, imported or downloaded. Default 16 GiB.
    pub max_blob_size: u64,
    /// Most entries in a collection (imported or read). Default 100 000.
    pub max_collection_entries: usize,
    /// Largest collection manifest read. Default 16 MiB.
    pub max_manifest_bytes: u64,
    /// Largest response [`BlobStore::encode_ranges`] builds in memory. Default 8 MiB.
    pub max_encode_bytes: usize,
    /// Most ranges in one request or response. Default 1024.
    pub max_request_ranges: usize,
    /// Most pins. Default 100 000.
    pub max_pins: usize,
}

impl Default for BlobLimits {
    fn default() -> Self {
        BlobLimits {
            quota_bytes: 16 << 30,
            max_blob_size: 16 << 30,
            max_collection_entries: 100_000,
            max_manifest_bytes: 16 << 20,
            max_encode_bytes: 8 << 20,
            max_request_ranges: 1024,
            max_pins: 100_000,
        }
    }
}

/// What [`BlobStore::open`] cleaned up after an unclean shutdown.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct OpenReport {
    /// Temporary files of imports that never finished.
    pub temp_files_removed: u64,
    /// Data and outboard files with no metadata entry (an import or download that crashed
    /// before its commit, or a blob collected whose files were not yet removed).
    pub orphan_files_removed: u64,
    /// Blobs whose files were missing or had the wrong length: forgotten (their pins stay, so
    /// fetching them again restores them).
    pub damaged: Vec<Hash>,
}

/// What the store holds of a blob: [`BlobStore::have`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BlobStatus {
    /// Nothing.
    Missing,
    /// Some chunk groups, each verified against the hash.
    Partial {
        /// The size the download was begun with.
        size: u64,
        /// True once the last chunk group verified, which proves `size`.
        size_verified: bool,
        /// The verified chunk groups.
        groups: Bitfield,
    },
    /// All of it.
    Complete {
        /// Its size.
        size: u64,
    },
}

/// Whether a listed blob is whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BlobState {
    /// Data and outboard are whole.
    Complete,
    /// A download in progress (or interrupted).
    Partial {
        /// Chunk groups verified.
        verified_groups: u64,
        /// Chunk groups in the blob.
        groups: u64,
    },
}

/// One blob of [`BlobStore::list`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct BlobInfo {
    /// Its hash.
    pub hash: Hash,
    /// Its size in bytes.
    pub size: u64,
    /// Complete or partial.
    pub state: BlobState,
    /// Names pinning it (directly; not through a collection).
    pub pins: Vec<String>,
    /// True if it is a registered collection manifest.
    pub collection: bool,
}

/// The content-addressed blob store. See the [module docs](self). Cheap to clone: clones share
/// one database; the database stays open while any clone, [`Download`] or [`Lease`] lives.
#[derive(Clone)]
pub struct BlobStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for BlobStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobStore")
            .field("dir", &self.inner.dir)
            .finish_non_exhaustive()
    }
}

pub(crate) struct Inner {
    dir: PathBuf,
    data_dir: PathBuf,
    outboard_dir: PathBuf,
    tmp_dir: PathBuf,
    meta_path: PathBuf,
    db: Database,
    limits: BlobLimits,
    /// Held while the set of blobs or their files change (an import's commit, a download's
    /// begin or finish, GC, repair), so that those never interleave. Never taken while `state`
    /// is held or inside a redb write transaction.
    catalog: Mutex<()>,
    state: Mutex<Shared>,
    report: OpenReport,
}

#[derive(Default)]
struct Shared {
    /// Footprint of every blob in the metadata.
    used: u64,
    /// Footprint reserved by imports and downloads not yet committed.
    reserved: u64,
    leases: BTreeMap<Hash, usize>,
    /// Blobs with a live [`Download`].
    downloads: BTreeSet<Hash>,
}

/// Keeps blobs from garbage collection while it lives: taken by every import (and handed to
/// its caller in [`Imported`]) and every [`Download`]; [`BlobStore::lease`] takes one by hand.
#[must_use = "a lease protects its blobs only while it lives"]
pub struct Lease {
    inner: Arc<Inner>,
    hashes: Vec<Hash>,
}

impl Lease {
    /// The blobs it protects.
    pub fn hashes(&self) -> &[Hash] {
        &self.hashes
    }
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Lease").field(&self.hashes).finish()
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut state = self.inner.state();
        for h in &self.hashes {
            if let Some(n) = state.leases.get_mut(h) {
                *n -= 1;
                if *n == 0 {
                    state.leases.remove(h);
                }
            }
        }
    }
}

/// Quota bytes set aside for an operation until it commits (or fails).
pub(crate) struct Reservation<'a> {
    inner: &'a Inner,
    bytes: u64,
}

impl Reservation<'_> {
    /// The operation committed: a blob of footprint `added` replaced one of `replaced` (0 for
    /// none).
    pub(crate) fn settle(self, added: u64, replaced: u64) {
        let mut state = self.inner.state();
        state.reserved -= self.bytes;
        state.used = state.used.saturating_add(added).saturating_sub(replaced);
        drop(state);
        std::mem::forget(self);
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.inner.state().reserved -= self.bytes;
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Inner {
    fn state(&self) -> MutexGuard<'_, Shared> {
        lock(&self.state)
    }

    fn catalog(&self) -> MutexGuard<'_, ()> {
        lock(&self.catalog)
    }

    fn data_path(&self, hash: &Hash) -> PathBuf {
        self.data_dir.join(hash.to_hex())
    }

    fn outboard_path(&self, hash: &Hash) -> PathBuf {
        self.outboard_dir.join(hash.to_hex())
    }

    fn db_err(&self, action: &'static str) -> impl FnOnce(DbError) -> BlobError + use<> {
        let path = self.meta_path.clone();
        move |e| BlobError::Database {
            path,
            action,
            reason: e.0.to_string(),
        }
    }

    fn check_size(&self, size: u64) -> Result<(), BlobError> {
        let max = self.limits.max_blob_size;
        if size > max {
            return Err(BlobError::TooLarge { size, max });
        }
        Ok(())
    }

    /// Sets `need` bytes of quota aside, or refuses.
    fn reserve(&self, need: u64) -> Result<Reservation<'_>, BlobError> {
        let mut state = self.state();
        let taken = state.used.saturating_add(state.reserved);
        let free = self.limits.quota_bytes.saturating_sub(taken);
        if need > free {
            return Err(BlobError::Quota { need, free });
        }
        state.reserved += need;
        Ok(Reservation {
            inner: self,
            bytes: need,
        })
    }

    fn release_used(&self, bytes: u64) {
        let mut state = self.state();
        state.used = state.used.saturating_sub(bytes);
    }

    fn entry(&self, hash: &Hash) -> Result<Option<Entry>, BlobError> {
        let read = || -> Result<Option<Entry>, DbError> {
            let txn = self.db.begin_read()?;
            let table = txn.open_table(BLOBS)?;
            meta::get_entry(&table, hash)
        };
        read().map_err(self.db_err("read a blob entry"))
    }
}

fn new_lease(inner: &Arc<Inner>, hashes: Vec<Hash>) -> Lease {
    let mut state = inner.state();
    for h in &hashes {
        *state.leases.entry(*h).or_default() += 1;
    }
    drop(state);
    Lease {
        inner: Arc::clone(inner),
        hashes,
    }
}

impl BlobStore {
    /// Opens the blob store in `dir` (for a node, [`DataDir::blobs_path`](crate::DataDir::blobs_path)),
    /// creating it if missing, and cleans up after a crash: removes temporary files, files
    /// without metadata, and metadata whose files are gone (see [`OpenReport`]).
    ///
    /// A process can have a store open once: a second `open` of the same directory fails until
    /// every clone, [`Download`] and [`Lease`] of the first is dropped.
    pub fn open(dir: impl AsRef<Path>, limits: BlobLimits) -> Result<BlobStore, BlobError> {
        let dir = dir.as_ref().to_path_buf();
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs::create_dir_all(parent).map_err(BlobError::io("create", "directory", parent))?;
        }
        ensure_dir(&dir, "blob directory")?;
        let data_dir = dir.join("data");
        let outboard_dir = dir.join("outboard");
        let tmp_dir = dir.join("tmp");
        ensure_dir(&data_dir, "blob data directory")?;
        ensure_dir(&outboard_dir, "blob outboard directory")?;
        ensure_dir(&tmp_dir, "blob temporary directory")?;
        let meta_path = dir.join(META_FILE);
        let open_err = |reason: String| BlobError::Database {
            path: meta_path.clone(),
            action: "open",
            reason,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(files::FILE_MODE)
            .open(&meta_path)
            .map_err(|e| open_err(e.to_string()))?;
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create_file(file)
            .map_err(|e| open_err(e.to_string()))?;
        let mut inner = Inner {
            dir,
            data_dir,
            outboard_dir,
            tmp_dir,
            meta_path,
            db,
            limits,
            catalog: Mutex::new(()),
            state: Mutex::new(Shared::default()),
            report: OpenReport::default(),
        };
        inner.recover()?;
        Ok(BlobStore {
            inner: Arc::new(inner),
        })
    }

    /// The store's directory.
    pub fn path(&self) -> &Path {
        &self.inner.dir
    }

    /// The limits in force.
    pub fn limits(&self) -> &BlobLimits {
        &self.inner.limits
    }

    /// What [`open`](Self::open) cleaned up.
    pub fn open_report(&self) -> &OpenReport {
        &self.inner.report
    }

    /// Bytes counted against the quota: every blob's data and outboard (partial ones at their
    /// full size), and what running imports have set aside.
    pub fn used_bytes(&self) -> u64 {
        let s = self.inner.state();
        s.used.saturating_add(s.reserved)
    }

    /// Protects `hash` from [`gc`](Self::gc) until the lease is dropped. The blob need not be
    /// here yet.
    pub fn lease(&self, hash: Hash) -> Lease {
        new_lease(&self.inner, vec![hash])
    }

    /// What the store holds of `hash`.
    pub fn have(&self, hash: &Hash) -> Result<BlobStatus, BlobError> {
        let inner = &self.inner;
        let read = || -> Result<BlobStatus, DbError> {
            let txn = inner.db.begin_read()?;
            let blobs = txn.open_table(BLOBS)?;
            Ok(match meta::get_entry(&blobs, hash)? {
                None => BlobStatus::Missing,
                Some(Entry {
                    size,
                    state: State::Complete,
                }) => BlobStatus::Complete { size },
                Some(Entry {
                    size,
                    state: State::Partial { size_verified },
                }) => {
                    let groups =
                        meta::load_groups(&txn.open_table(GROUPS)?, hash, group_count(size))?;
                    BlobStatus::Partial {
                        size,
                        size_verified,
                        groups,
                    }
                }
            })
        };
        read().map_err(inner.db_err("read a blob entry"))
    }

    /// Every blob in the store, in hash order, with its pins.
    pub fn list(&self) -> Result<Vec<BlobInfo>, BlobError> {
        let inner = &self.inner;
        let read = || -> Result<Vec<BlobInfo>, DbError> {
            let txn = inner.db.begin_read()?;
            let blobs = txn.open_table(BLOBS)?;
            let groups = txn.open_table(GROUPS)?;
            let collections = txn.open_table(COLLECTIONS)?;
            let mut pins: BTreeMap<Hash, Vec<String>> = BTreeMap::new();
            for item in txn.open_table(PINS)?.iter()? {
                let (name, hash) = item?;
                if let Some(hash) = meta::hash_from_key(hash.value()) {
                    pins.entry(hash).or_default().push(name.value().to_string());
                }
            }
            let mut out = Vec::new();
            for item in blobs.iter()? {
                let (k, v) = item?;
                let (Some(hash), Some(entry)) = (
                    meta::hash_from_key(k.value()),
                    meta::decode_entry(v.value()),
                ) else {
                    continue;
                };
                let state = match entry.state {
                    State::Complete => BlobState::Complete,
                    State::Partial { .. } => {
                        let n = group_count(entry.size);
                        BlobState::Partial {
                            verified_groups: meta::load_groups(&groups, &hash, n)?.count_ones(),
                            groups: n,
                        }
                    }
                };
                out.push(BlobInfo {
                    hash,
                    size: entry.size,
                    state,
                    pins: pins.remove(&hash).unwrap_or_default(),
                    collection: collections.get(&hash.as_bytes()[..])?.is_some(),
                });
            }
            Ok(out)
        };
        read().map_err(inner.db_err("list blobs"))
    }

    /// Pins `hash` under `name` (replacing what `name` pinned before, which is returned):
    /// [`gc`](Self::gc) keeps pinned blobs and, for a collection, every blob it lists. The blob
    /// need not be here yet. Names are 1 to 255 bytes of UTF-8 without control characters.
    pub fn pin(&self, name: &str, hash: Hash) -> Result<Option<Hash>, BlobError> {
        check_pin_name(name)?;
        let inner = &self.inner;
        let max = inner.limits.max_pins;
        let write = || -> Result<Result<Option<Hash>, BlobError>, DbError> {
            let txn = inner.db.begin_write()?;
            let old = {
                let mut pins = txn.open_table(PINS)?;
                let old = pins.get(name)?.and_then(|v| meta::hash_from_key(v.value()));
                if old.is_none() && pins.len()? >= max as u64 {
                    return Ok(Err(BlobError::TooManyPins { max }));
                }
                pins.insert(name, &hash.as_bytes()[..])?;
                old
            };
            txn.commit()?;
            Ok(Ok(old))
        };
        write().map_err(inner.db_err("write a pin"))?
    }

    /// Removes the pin `name`, returning what it pinned. The blobs stay until the next
    /// [`gc`](Self::gc).
    pub fn unpin(&self, name: &str) -> Result<Option<Hash>, BlobError> {
        let inner = &self.inner;
        let write = || -> Result<Option<Hash>, DbError> {
            let txn = inner.db.begin_write()?;
            let old = txn
                .open_table(PINS)?
                .remove(name)?
                .and_then(|v| meta::hash_from_key(v.value()));
            txn.commit()?;
            Ok(old)
        };
        write().map_err(inner.db_err("remove a pin"))
    }

    /// Every pin, by name.
    pub fn pins(&self) -> Result<Vec<(String, Hash)>, BlobError> {
        let inner = &self.inner;
        let read = || -> Result<Vec<(String, Hash)>, DbError> {
            let txn = inner.db.begin_read()?;
            let mut out = Vec::new();
            for item in txn.open_table(PINS)?.iter()? {
                let (name, hash) = item?;
                if let Some(hash) = meta::hash_from_key(hash.value()) {
                    out.push((name.value().to_string(), hash));
                }
            }
            Ok(out)
        };
        read().map_err(inner.db_err("read pins"))
    }
}

fn check_pin_name(name: &str) -> Result<(), BlobError> {
    let bad = |reason| {
        Err(BlobError::BadPinName {
            name: name.chars().take(300).collect(),
            reason,
        })
    };
    if name.is_empty() {
        return bad("it is empty");
    }
    if name.len() > 255 {
        return bad("it is longer than 255 bytes");
    }
    if name.chars().any(char::is_control) {
        return bad("it holds control characters");
    }
    Ok(())
}

/// Converts ranges of chunk groups to bao-tree's chunk ranges.
pub(crate) fn chunk_ranges(groups: &[Range<u64>]) -> bao_tree::ChunkRanges {
    let mut out = bao_tree::ChunkRanges::empty();
    for r in groups {
        let start = bao_tree::ChunkNum(r.start << CHUNKS_PER_GROUP_SHIFT);
        let end = bao_tree::ChunkNum(r.end.saturating_mul(1 << CHUNKS_PER_GROUP_SHIFT));
        out |= bao_tree::ChunkRanges::from(start..end);
    }
    out
}

/// The chunk group holding byte `offset`.
pub(crate) fn group_of_offset(offset: u64) -> u64 {
    offset >> GROUP_SHIFT
}

/// The chunk group holding chunk `chunk`.
pub(crate) fn group_of_chunk(chunk: bao_tree::ChunkNum) -> u64 {
    chunk.0 >> CHUNKS_PER_GROUP_SHIFT
}

/// Bytes in group `g` of a blob of `size` bytes.
pub(crate) fn group_len(size: u64, g: u64) -> u64 {
    let start = g.saturating_mul(GROUP_BYTES);
    size.saturating_sub(start).min(GROUP_BYTES)
}

impl Inner {
    /// Crash recovery at open: see [`OpenReport`].
    fn recover(&mut self) -> Result<(), BlobError> {
        let mut report = OpenReport::default();
        let entries = fs::read_dir(&self.tmp_dir).map_err(BlobError::io(
            "list",
            "blob temporary directory",
            &self.tmp_dir,
        ))?;
        for e in entries.flatten() {
            let p = e.path();
            let removed = if p.is_dir() {
                fs::remove_dir_all(&p).is_ok()
            } else {
                remove_if_exists(&p).unwrap_or(false)
            };
            report.temp_files_removed += u64::from(removed);
        }

        // Check every entry against its files.
        // Every entry's key, and the entry if it decodes.
        type Listed = (Vec<u8>, Option<(Hash, Entry)>);
        let mut entries: Vec<Listed> = Vec::new();
        {
            let mut read = || -> Result<(), DbError> {
                let txn = self.db.begin_write()?;
                {
                    let blobs = txn.open_table(BLOBS)?;
                    txn.open_table(GROUPS)?;
                    txn.open_table(PINS)?;
                    txn.open_table(COLLECTIONS)?;
                    for item in blobs.iter()? {
                        let (k, v) = item?;
                        let parsed = meta::hash_from_key(k.value())
                            .filter(|_| k.value().len() == 32)
                            .zip(meta::decode_entry(v.value()));
                        entries.push((k.value().to_vec(), parsed));
                    }
                }
                txn.commit()?;
                Ok(())
            };
            read().map_err(self.db_err("read blob entries"))?;
        }
        let mut keep: BTreeMap<Hash, Entry> = BTreeMap::new();
        let mut drop_keys: Vec<Vec<u8>> = Vec::new();
        for (key, parsed) in entries {
            let Some((hash, entry)) = parsed else {
                drop_keys.push(key);
                continue;
            };
            let data = file_len(&self.data_path(&hash), "blob data file")?;
            let ob = file_len(&self.outboard_path(&hash), "blob outboard")?;
            let ok = match entry.state {
                State::Complete => {
                    data == Some(entry.size) && ob == Some(tree(entry.size).outboard_size())
                }
                // A partial blob's files are sparse: any length up to the full one.
                State::Partial { .. } => data.is_some() && ob.is_some(),
            };
            if ok {
                keep.insert(hash, entry);
            } else {
                report.damaged.push(hash);
                drop_keys.push(key);
            }
        }
        let write = || -> Result<(), DbError> {
            let txn = self.db.begin_write()?;
            {
                let mut blobs = txn.open_table(BLOBS)?;
                for k in &drop_keys {
                    blobs.remove(&k[..])?;
                }
                let partial = |k: &[u8]| {
                    meta::hash_from_key(k)
                        .and_then(|h| keep.get(&h))
                        .is_some_and(|e| matches!(e.state, State::Partial { .. }))
                };
                txn.open_table(GROUPS)?.retain(|k, _| partial(k))?;
                txn.open_table(COLLECTIONS)?.retain(|k, ()| {
                    meta::hash_from_key(k).is_some_and(|h| keep.contains_key(&h))
                })?;
            }
            txn.commit()?;
            Ok(())
        };
        write().map_err(self.db_err("clean up blob entries"))?;

        // Files nobody knows of.
        for dir in [&self.data_dir, &self.outboard_dir] {
            let list = fs::read_dir(dir).map_err(BlobError::io("list", "blob directory", dir))?;
            for e in list.flatten() {
                let name = e.file_name();
                let Some(hash) = name.to_str().and_then(|n| n.parse::<Hash>().ok()) else {
                    continue;
                };
                if !keep.contains_key(&hash) && remove_if_exists(&e.path()).unwrap_or(false) {
                    report.orphan_files_removed += 1;
                }
            }
        }

        self.state().used = keep.values().map(|e| footprint(e.size)).sum();
        self.report = report;
        Ok(())
    }
}

#[cfg(test)]
mod tests;

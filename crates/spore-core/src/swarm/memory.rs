//! [`MemoryBlobs`]: an in-memory [`BlobAccess`] that really verifies, for tests and the
//! simulator.

use std::collections::BTreeMap;
use std::io;
use std::ops::Range;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bao_tree::io::outboard::PostOrderMemOutboard;
use bao_tree::io::sync::{DecodeResponseIter, OutboardMut, encode_ranges_validated};
use bao_tree::io::{BaoContentItem, Leaf, Parent};
use bao_tree::{BaoTree, BlockSize, ChunkNum, ChunkRanges};
use bytes::Bytes;

use super::bitfield::Bitfield;
use super::store::{BlobAccess, BlobStatus, ReadError, WriteError, Written};
use super::{GROUP_BYTES, Hash, group_count, group_len};

/// bao-tree's name for a chunk group: 2⁴ chunks of 1 KiB (the blob store's block size).
const BLOCK_SIZE: BlockSize = BlockSize::from_chunk_log(4);
const CHUNKS_PER_GROUP_SHIFT: u32 = 4;

/// Blobs in memory, verified exactly as the on-disk store verifies them: a blob's hash is the
/// root of BLAKE3's own tree (computed with `bao-tree` at chunk groups of 16 KiB), every
/// response is decoded against that root before a group is kept, and what is read is
/// re-validated against the tree as it is encoded. So a simulated node that downloads from a
/// liar rejects the lie for the same reason a real one would.
///
/// Clones share the same blobs: a test or the simulator keeps a handle while the node owns
/// another. Bytes held are bounded by a limit ([`with_limit`](Self::with_limit); 1 GiB by
/// default); a download that would pass it fails with [`WriteError::Other`].
#[derive(Clone, Default)]
pub struct MemoryBlobs {
    inner: Arc<Mutex<Inner>>,
}

impl std::fmt::Debug for MemoryBlobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let inner = self.lock();
        f.debug_struct("MemoryBlobs")
            .field("blobs", &inner.blobs.len())
            .field("used", &inner.used)
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Inner {
    blobs: BTreeMap<Hash, Blob>,
    limit: Option<u64>,
    used: u64,
    tamper: bool,
}

struct Blob {
    size: u64,
    data: Vec<u8>,
    outboard: PostOrderMemOutboard,
    verified: Bitfield,
    size_proven: bool,
}

impl Blob {
    fn empty(hash: &Hash, size: u64) -> Self {
        let tree = BaoTree::new(size, BLOCK_SIZE);
        Blob {
            size,
            data: vec![0; usize::try_from(size).unwrap_or(0)],
            outboard: PostOrderMemOutboard {
                root: blake3::Hash::from_bytes(*hash),
                tree,
                data: vec![0; usize::try_from(tree.outboard_size()).unwrap_or(0)],
            },
            verified: Bitfield::new(group_count(size)),
            size_proven: size == 0,
        }
    }

    fn complete(data: &[u8]) -> (Hash, Self) {
        let outboard = PostOrderMemOutboard::create(data, BLOCK_SIZE);
        let hash = *outboard.root.as_bytes();
        let size = data.len() as u64;
        let blob = Blob {
            size,
            data: data.to_vec(),
            outboard,
            verified: Bitfield::full(group_count(size)),
            size_proven: true,
        };
        (hash, blob)
    }
}

fn chunk_ranges(groups: &Range<u64>) -> ChunkRanges {
    ChunkRanges::from(
        ChunkNum(groups.start << CHUNKS_PER_GROUP_SHIFT)
            ..ChunkNum(groups.end.saturating_mul(1 << CHUNKS_PER_GROUP_SHIFT)),
    )
}

const DEFAULT_LIMIT: u64 = 1 << 30;

impl MemoryBlobs {
    /// An empty store with the default limit (1 GiB).
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty store holding at most `bytes` of blob data.
    pub fn with_limit(bytes: u64) -> Self {
        let s = Self::default();
        s.lock().limit = Some(bytes);
        s
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds `data` as a complete blob; returns its hash (BLAKE3 of `data`).
    pub fn insert(&self, data: &[u8]) -> Hash {
        let (hash, blob) = Blob::complete(data);
        let mut inner = self.lock();
        let size = blob.size;
        if let Some(old) = inner.blobs.insert(hash, blob) {
            inner.used -= old.size;
        }
        inner.used += size;
        hash
    }

    /// Adds `data` as a partial blob holding only `groups` verified, as a download interrupted
    /// after fetching them would; the size counts as proven if the last group is among them.
    /// Returns the hash.
    pub fn insert_partial(&self, data: &[u8], groups: &[Range<u64>]) -> Hash {
        let (hash, mut blob) = Blob::complete(data);
        let n = group_count(blob.size);
        blob.verified = Bitfield::from_ranges(n, groups);
        blob.size_proven = n == 0 || blob.verified.get(n - 1);
        // Forget the bytes of the other groups, so that serving them would fail validation.
        for g in 0..n {
            if !blob.verified.get(g) {
                let start = usize::try_from(g * GROUP_BYTES).unwrap_or(usize::MAX);
                let end = usize::try_from(g * GROUP_BYTES + group_len(blob.size, g))
                    .unwrap_or(usize::MAX);
                blob.data[start..end].fill(0);
            }
        }
        let mut inner = self.lock();
        let size = blob.size;
        if let Some(old) = inner.blobs.insert(hash, blob) {
            inner.used -= old.size;
        }
        inner.used += size;
        hash
    }

    /// The bytes of a complete blob.
    pub fn get(&self, hash: &Hash) -> Option<Bytes> {
        let inner = self.lock();
        let b = inner.blobs.get(hash)?;
        b.verified
            .is_full()
            .then(|| Bytes::copy_from_slice(&b.data))
    }

    /// Forgets a blob; false if it was not held.
    pub fn remove(&self, hash: &Hash) -> bool {
        let mut inner = self.lock();
        match inner.blobs.remove(hash) {
            Some(b) => {
                inner.used -= b.size;
                true
            }
            None => false,
        }
    }

    /// For tests and simulated adversaries: when on, every [`read`](BlobAccess::read) flips a
    /// bit in the last byte of what it returns (a group's data), as a dishonest provider would.
    pub fn set_tamper(&self, on: bool) {
        self.lock().tamper = on;
    }
}

impl BlobAccess for MemoryBlobs {
    fn status(&self, hash: &Hash) -> BlobStatus {
        let inner = self.lock();
        match inner.blobs.get(hash) {
            None => BlobStatus::Missing,
            Some(b) if b.verified.is_full() && b.size_proven => {
                BlobStatus::Complete { size: b.size }
            }
            Some(b) => BlobStatus::Partial {
                size: b.size_proven.then_some(b.size),
                groups: b.verified.ranges(),
            },
        }
    }

    fn read(&mut self, hash: &Hash, groups: Range<u64>) -> Result<Bytes, ReadError> {
        let inner = self.lock();
        let b = inner.blobs.get(hash).ok_or(ReadError::NotAvailable)?;
        if !b.size_proven || !b.verified.all_in(groups.clone()) {
            return Err(ReadError::NotAvailable);
        }
        let mut out = Vec::new();
        encode_ranges_validated(&b.data[..], &b.outboard, &chunk_ranges(&groups), &mut out)
            .map_err(|e| ReadError::Other(e.to_string()))?;
        if inner.tamper
            && let Some(last) = out.last_mut()
        {
            *last ^= 1;
        }
        Ok(Bytes::from(out))
    }

    fn write(
        &mut self,
        hash: &Hash,
        size: u64,
        groups: Range<u64>,
        encoded: &[u8],
    ) -> Result<Written, WriteError> {
        let mut inner = self.lock();
        let restart = match inner.blobs.get(hash) {
            Some(b) if b.verified.is_full() && b.size_proven => {
                return Ok(Written {
                    groups: Vec::new(),
                    complete: true,
                });
            }
            Some(b) if b.size == size => false,
            Some(b) if b.size_proven => {
                return Err(WriteError::Other(format!(
                    "size {size} differs from the proven size {}",
                    b.size
                )));
            }
            _ => true,
        };
        if restart {
            let old = inner.blobs.get(hash).map_or(0, |b| b.size);
            let used = inner.used - old;
            let limit = inner.limit.unwrap_or(DEFAULT_LIMIT);
            if used.saturating_add(size) > limit {
                return Err(WriteError::Other(format!(
                    "a blob of {size} bytes does not fit the limit of {limit}"
                )));
            }
            if size == 0 && *hash != *blake3::hash(&[]).as_bytes() {
                return Err(WriteError::Bad("the empty blob has another hash".into()));
            }
            inner.blobs.insert(*hash, Blob::empty(hash, size));
            inner.used = used + size;
        }
        let Some(b) = inner.blobs.get_mut(hash) else {
            return Err(WriteError::Other("blob vanished".into()));
        };
        let n = group_count(size);
        let groups = groups.start..groups.end.min(n);
        if groups.is_empty() {
            return Err(WriteError::Bad("no groups of the blob".into()));
        }
        let tree = b.outboard.tree;
        let chunks = chunk_ranges(&groups);
        let mut cursor = io::Cursor::new(encoded);
        let mut new = Vec::new();
        let mut failure = None;
        let root = blake3::Hash::from_bytes(*hash);
        for item in DecodeResponseIter::new(root, tree, &mut cursor, &chunks) {
            match item {
                Ok(BaoContentItem::Parent(Parent { node, pair })) => {
                    // Verified against the node above it before it is yielded.
                    if let Err(e) = b.outboard.save(node, &pair) {
                        failure = Some(e.to_string());
                        break;
                    }
                }
                Ok(BaoContentItem::Leaf(Leaf { offset, data })) => {
                    let g = offset / GROUP_BYTES;
                    if offset % GROUP_BYTES != 0 || data.len() as u64 != group_len(size, g) {
                        failure = Some(format!("a leaf at byte {offset} is not one chunk group"));
                        break;
                    }
                    let start = usize::try_from(offset).unwrap_or(usize::MAX);
                    b.data[start..start + data.len()].copy_from_slice(&data);
                    if b.verified.set(g) {
                        new.push(g..g + 1);
                    }
                }
                Err(e) => {
                    failure = Some(e.to_string());
                    break;
                }
            }
        }
        if failure.is_none() && (cursor.position() as usize) < encoded.len() {
            failure = Some(format!(
                "{} bytes after the response",
                encoded.len() - cursor.position() as usize
            ));
        }
        if n > 0 && b.verified.get(n - 1) {
            b.size_proven = true;
        }
        if let Some(reason) = failure {
            return Err(WriteError::Bad(reason));
        }
        let mut merged: Vec<Range<u64>> = Vec::new();
        for r in new {
            match merged.last_mut() {
                Some(last) if last.end == r.start => last.end = r.end,
                _ => merged.push(r),
            }
        }
        Ok(Written {
            groups: merged,
            complete: b.verified.is_full() && b.size_proven,
        })
    }
}

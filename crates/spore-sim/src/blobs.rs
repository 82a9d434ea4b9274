//! Blob storage for simulated swarms: one reference copy of a blob shared by every node, and a
//! bitfield per node.
//!
//! spore-core's [`MemoryBlobs`] keeps a full copy of every blob per node and hashes every group
//! it is given. Five hundred nodes downloading a 32 MiB blob would hold 16 GiB and hash it all
//! again. [`SharedBlob`] holds the blob once, with its BLAKE3 tree (a [`MemoryBlobs`], so the
//! encoding is the real one); each node gets a [`SimBlobs`] — a [`BlobAccess`] that owns only
//! the set of groups the node has verified.
//!
//! This is a storage model, not protocol logic: the swarm state machine is untouched and still
//! asks the store to read and to write-and-verify. What changes is how the verification is
//! done. The response for a range of groups (bao-tree's verified-stream encoding) is a
//! function of the blob and the range alone, so `write` compares what it is given with the
//! reference encoding of that range, byte for byte: honest data matches and is kept, anything
//! else is [`WriteError::Bad`], as a real store would find it (where a real store may keep the
//! groups before the first bad one, this one keeps none of a bad write). `read` returns the
//! reference encoding of groups the node holds, from a cache shared by all nodes, so serving
//! costs no copy and no hashing.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use spore_core::swarm::{
    Bitfield, BlobAccess, BlobStatus, Hash, MemoryBlobs, ReadError, WriteError, Written,
    group_count,
};

/// One blob, held once for a whole simulation. Clones share it.
#[derive(Clone)]
pub struct SharedBlob {
    inner: Arc<Shared>,
}

struct Shared {
    hash: Hash,
    size: u64,
    groups: u64,
    /// The blob and its tree: the source of every encoding.
    reference: MemoryBlobs,
    /// Encodings already built, by range of groups.
    encodings: Mutex<HashMap<(u64, u64), Bytes>>,
}

impl std::fmt::Debug for SharedBlob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedBlob")
            .field("size", &self.inner.size)
            .finish_non_exhaustive()
    }
}

impl SharedBlob {
    /// The blob of bytes `data` (hashed once, here).
    pub fn new(data: &[u8]) -> Self {
        let reference = MemoryBlobs::with_limit(data.len() as u64);
        let hash = reference.insert(data);
        let size = data.len() as u64;
        Self {
            inner: Arc::new(Shared {
                hash,
                size,
                groups: group_count(size),
                reference,
                encodings: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Its hash.
    pub fn hash(&self) -> Hash {
        self.inner.hash
    }

    /// Its size in bytes.
    pub fn size(&self) -> u64 {
        self.inner.size
    }

    /// A store that holds the whole blob (a seeder's).
    pub fn complete(&self) -> SimBlobs {
        SimBlobs {
            blob: self.clone(),
            have: Bitfield::full(self.inner.groups),
        }
    }

    /// A store that holds none of it (a leecher's).
    pub fn empty(&self) -> SimBlobs {
        SimBlobs {
            blob: self.clone(),
            have: Bitfield::new(self.inner.groups),
        }
    }

    /// The reference encoding of `groups` (clipped to the blob), built once and shared.
    fn encoding(&self, groups: Range<u64>) -> Result<Bytes, ReadError> {
        let key = (groups.start, groups.end.min(self.inner.groups));
        let mut cache = self
            .inner
            .encodings
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(e) = cache.get(&key) {
            return Ok(e.clone());
        }
        let mut reference = self.inner.reference.clone();
        let e = reference.read(&self.inner.hash, key.0..key.1)?;
        cache.insert(key, e.clone());
        Ok(e)
    }
}

/// One node's store of a [`SharedBlob`]: which groups it has verified. Knows only that blob;
/// every other hash is missing.
#[derive(Debug, Clone)]
pub struct SimBlobs {
    blob: SharedBlob,
    have: Bitfield,
}

impl SimBlobs {
    /// Groups held.
    pub fn groups_held(&self) -> u64 {
        self.have.count_ones()
    }

    /// Whether the last group — the size proof — is held.
    fn size_proven(&self) -> bool {
        let n = self.have.len();
        n == 0 || self.have.get(n - 1)
    }
}

impl BlobAccess for SimBlobs {
    fn status(&self, hash: &Hash) -> BlobStatus {
        if *hash != self.blob.inner.hash || self.have.count_ones() == 0 {
            return BlobStatus::Missing;
        }
        if self.have.is_full() {
            return BlobStatus::Complete {
                size: self.blob.inner.size,
            };
        }
        BlobStatus::Partial {
            size: self.size_proven().then_some(self.blob.inner.size),
            groups: self.have.ranges(),
        }
    }

    fn read(&mut self, hash: &Hash, groups: Range<u64>) -> Result<Bytes, ReadError> {
        if *hash != self.blob.inner.hash
            || groups.is_empty()
            || !self.size_proven()
            || !self.have.all_in(groups.clone())
        {
            return Err(ReadError::NotAvailable);
        }
        self.blob.encoding(groups)
    }

    fn write(
        &mut self,
        hash: &Hash,
        size: u64,
        groups: Range<u64>,
        encoded: &[u8],
    ) -> Result<Written, WriteError> {
        let blob = &self.blob.inner;
        if *hash != blob.hash {
            return Err(WriteError::Other("not the simulated blob".into()));
        }
        if self.have.is_full() {
            return Ok(Written {
                groups: Vec::new(),
                complete: true,
            });
        }
        // Under another size the tree has another shape, and the proof of the last group
        // fails against the hash.
        if size != blob.size {
            return Err(WriteError::Bad(format!(
                "size {size} does not verify against the hash"
            )));
        }
        let groups = groups.start..groups.end.min(blob.groups);
        if groups.is_empty() {
            return Err(WriteError::Bad("no groups of the blob".into()));
        }
        let reference = self
            .blob
            .encoding(groups.clone())
            .map_err(|e| WriteError::Other(e.to_string()))?;
        if encoded != &reference[..] {
            return Err(WriteError::Bad(
                "the response does not verify against the hash".into(),
            ));
        }
        let mut new: Vec<Range<u64>> = Vec::new();
        for g in groups {
            if self.have.set(g) {
                match new.last_mut() {
                    Some(last) if last.end == g => last.end = g + 1,
                    _ => new.push(g..g + 1),
                }
            }
        }
        Ok(Written {
            groups: new,
            complete: self.have.is_full(),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::single_range_in_vec_init)]

    use super::*;
    use spore_core::swarm::GROUP_BYTES;

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    /// What the shared store answers is what `MemoryBlobs`, which really verifies, answers.
    #[test]
    fn agrees_with_memory_blobs() {
        let bytes = data(40 * GROUP_BYTES as usize + 1000);
        let blob = SharedBlob::new(&bytes);
        assert_eq!(blob.hash(), *blake3::hash(&bytes).as_bytes());
        let n = group_count(blob.size());
        let mut seeder = blob.complete();
        let mut leecher = blob.empty();
        let mut real = MemoryBlobs::new();
        assert_eq!(leecher.status(&blob.hash()), BlobStatus::Missing);
        // The size proof first, as a download does.
        let last = seeder.read(&blob.hash(), n - 1..n).unwrap();
        let w = leecher
            .write(&blob.hash(), blob.size(), n - 1..n, &last)
            .unwrap();
        assert_eq!(w.groups, vec![n - 1..n]);
        real.write(&blob.hash(), blob.size(), n - 1..n, &last)
            .unwrap();
        for start in (0..n - 1).step_by(4) {
            let r = start..(start + 4).min(n - 1);
            let e = seeder.read(&blob.hash(), r.clone()).unwrap();
            let w = leecher
                .write(&blob.hash(), blob.size(), r.clone(), &e)
                .unwrap();
            let w2 = real
                .write(&blob.hash(), blob.size(), r.clone(), &e)
                .unwrap();
            assert_eq!(w, w2);
            // Served again by the leecher: the same bytes.
            assert_eq!(leecher.read(&blob.hash(), r).unwrap(), e);
        }
        assert_eq!(
            leecher.status(&blob.hash()),
            BlobStatus::Complete { size: blob.size() }
        );
        assert_eq!(real.get(&blob.hash()).unwrap(), bytes);
    }

    #[test]
    fn refuses_what_would_not_verify() {
        let bytes = data(10 * GROUP_BYTES as usize);
        let blob = SharedBlob::new(&bytes);
        let (hash, size) = (blob.hash(), blob.size());
        let mut seeder = blob.complete();
        let mut leecher = blob.empty();
        // Nothing to serve before anything is held, and nothing before the size is proven.
        assert_eq!(leecher.read(&hash, 0..1), Err(ReadError::NotAvailable));
        let good = seeder.read(&hash, 0..2).unwrap();
        leecher.write(&hash, size, 0..2, &good).unwrap();
        assert!(matches!(
            leecher.status(&hash),
            BlobStatus::Partial { size: None, .. }
        ));
        assert_eq!(leecher.read(&hash, 0..1), Err(ReadError::NotAvailable));
        // A flipped bit, a wrong size, the wrong range.
        let mut bad = seeder.read(&hash, 4..6).unwrap().to_vec();
        *bad.last_mut().unwrap() ^= 1;
        assert!(matches!(
            leecher.write(&hash, size, 4..6, &bad),
            Err(WriteError::Bad(_))
        ));
        let e = seeder.read(&hash, 4..6).unwrap();
        assert!(matches!(
            leecher.write(&hash, size + 1, 4..6, &e),
            Err(WriteError::Bad(_))
        ));
        assert!(matches!(
            leecher.write(&hash, size, 6..8, &e),
            Err(WriteError::Bad(_))
        ));
        assert_eq!(leecher.groups_held(), 2);
        assert_eq!(leecher.status(&[0; 32]), BlobStatus::Missing);
    }
}

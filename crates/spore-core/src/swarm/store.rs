//! How the swarm reaches blob storage: the [`BlobAccess`] trait, implemented by the owner.
//!
//! The swarm decides what to ask whom and what to send; the store holds the bytes and does
//! all the hashing. A store implementation verifies every group it is given against the blob's
//! hash before keeping it, and re-verifies what it reads before handing it out, so a swarm
//! never stores or serves a byte that does not match. The runtime plugs in an adapter over
//! `spore_store::blobs::BlobStore` (`have` → [`status`](BlobAccess::status),
//! `encode_ranges` → [`read`](BlobAccess::read), `begin_download` + `Download::write_encoded`
//! → [`write`](BlobAccess::write), `Download::finish` once complete); tests and the simulator
//! use [`MemoryBlobs`](super::MemoryBlobs).

use std::ops::Range;

use bytes::Bytes;

use super::Hash;

/// What a store holds of a blob.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BlobStatus {
    /// Nothing.
    Missing,
    /// Some chunk groups, each verified against the hash.
    Partial {
        /// The blob's size, once proven (the last group verified); `None` before. Groups
        /// verified under a size that is not proven yet are listed but not served.
        size: Option<u64>,
        /// The verified groups, as sorted ranges.
        groups: Vec<Range<u64>>,
    },
    /// All of it.
    Complete {
        /// Its size.
        size: u64,
    },
}

/// What a [`write`](BlobAccess::write) kept.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Written {
    /// Groups verified and kept by this write (not those held before), as sorted ranges.
    pub groups: Vec<Range<u64>>,
    /// True once every group of the blob is verified (the store has finished it).
    pub complete: bool,
}

/// Why a [`write`](BlobAccess::write) failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WriteError {
    /// The data did not verify against the hash (or was malformed): the peer that sent it is
    /// at fault. Groups before the first bad one may have been kept; the swarm asks
    /// [`status`](BlobAccess::status) again.
    #[error("data failed verification: {0}")]
    Bad(String),
    /// A local failure (disk, quota): nobody's fault on the network.
    #[error("store failure: {0}")]
    Other(String),
}

/// Why a [`read`](BlobAccess::read) failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// The store does not hold all of those groups verified (or they no longer verify).
    #[error("groups not available")]
    NotAvailable,
    /// A local failure.
    #[error("store failure: {0}")]
    Other(String),
}

/// Blob storage as the swarm needs it. Implementations verify: [`write`](Self::write) keeps
/// only what checks against the hash, and [`read`](Self::read) never returns bytes that do
/// not. Calls are synchronous and should be quick (a few chunk groups at a time); the swarm
/// never asks for more than [`MAX_REQUEST_GROUPS`](super::MAX_REQUEST_GROUPS) groups at once.
pub trait BlobAccess: Send {
    /// What the store holds of `hash`.
    fn status(&self, hash: &Hash) -> BlobStatus;

    /// Encodes `groups` of `hash` for sending: bao-tree's verified-stream encoding, the groups'
    /// bytes interleaved with the proof nodes that check them against the hash (what
    /// `spore_store::blobs::BlobStore::encode_ranges` builds). Every group must be verified
    /// here, else [`ReadError::NotAvailable`].
    fn read(&mut self, hash: &Hash, groups: Range<u64>) -> Result<Bytes, ReadError>;

    /// Verifies `encoded`, the response for `groups` of blob `hash` of `size` bytes (as the
    /// swarm believes; the last group proves it), and keeps the groups that verify. A write
    /// with a size other than an unproven earlier one starts the blob afresh.
    fn write(
        &mut self,
        hash: &Hash,
        size: u64,
        groups: Range<u64>,
        encoded: &[u8],
    ) -> Result<Written, WriteError>;
}

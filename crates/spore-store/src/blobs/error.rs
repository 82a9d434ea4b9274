//! The blob store's error type.

use std::io;
use std::path::{Path, PathBuf};

use super::Hash;

/// What was wrong with data a peer sent ([`BlobError::Verification`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BadData {
    /// A chunk group's bytes do not hash to what the proof says.
    Data,
    /// A proof node (a pair of hashes) does not hash to its parent, or to the root.
    Proof,
    /// The response ended before this chunk group (or its proof) was complete.
    Truncated,
}

impl std::fmt::Display for BadData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BadData::Data => "its data does not match the hash",
            BadData::Proof => "a proof node does not match the hash above it",
            BadData::Truncated => "the response ends before it",
        })
    }
}

/// What went wrong in the [blob store](super). Errors about files name the file; errors about a
/// blob name its hash; errors caused by a peer's bytes ([`Verification`](Self::Verification),
/// [`Malformed`](Self::Malformed)) are distinct from errors about our own disk
/// ([`Corrupt`](Self::Corrupt)), so a caller knows whom to blame.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BlobError {
    /// An operating-system call on a file or directory failed.
    #[error("cannot {action} {what} {}: {source}", path.display())]
    Io {
        /// What we were doing: "create", "read", "write", …
        action: &'static str,
        /// What the file is: "blob data file", "outboard", …
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The metadata database failed.
    #[error("blob database {}: cannot {action}: {reason}", path.display())]
    Database {
        /// `meta.redb`.
        path: PathBuf,
        /// What we were doing.
        action: &'static str,
        /// Why it failed.
        reason: String,
    },
    /// Storing this would exceed [`BlobLimits::quota_bytes`](super::BlobLimits::quota_bytes).
    #[error(
        "blob store quota exceeded: {need} bytes needed, {free} free (raise quota_bytes, or unpin and collect garbage)"
    )]
    Quota {
        /// Bytes the operation needs (data and outboard).
        need: u64,
        /// Bytes left under the quota.
        free: u64,
    },
    /// A blob larger than [`BlobLimits::max_blob_size`](super::BlobLimits::max_blob_size).
    #[error("a blob of {size} bytes is larger than the limit of {max} bytes (max_blob_size)")]
    TooLarge {
        /// The blob's size.
        size: u64,
        /// The limit.
        max: u64,
    },
    /// The store has no blob with this hash.
    #[error("blob {hash} is not in the store")]
    NotFound {
        /// The blob.
        hash: Hash,
    },
    /// The blob is only partly here.
    #[error("blob {hash} is incomplete: {missing_groups} chunk groups are missing")]
    Incomplete {
        /// The blob.
        hash: Hash,
        /// Chunk groups not yet verified.
        missing_groups: u64,
    },
    /// A peer's data failed verification against the blob's hash. Nothing from this chunk group
    /// on was written or recorded; what verified before it in the same response was kept.
    #[error("blob {hash}: chunk group {group} failed verification: {kind}")]
    Verification {
        /// The blob.
        hash: Hash,
        /// The first chunk group that did not verify.
        group: u64,
        /// What was wrong.
        kind: BadData,
    },
    /// A request or response that is wrong in shape rather than in content.
    #[error("blob {hash}: malformed request or response: {reason}")]
    Malformed {
        /// The blob.
        hash: Hash,
        /// What is wrong.
        reason: String,
    },
    /// [`BlobStore::encode_ranges_to`](super::BlobStore::encode_ranges_to) was asked for a chunk
    /// group the store has not verified.
    #[error("blob {hash}: chunk group {group} is not available here")]
    NotAvailable {
        /// The blob.
        hash: Hash,
        /// The first requested group that is missing.
        group: u64,
    },
    /// A response would be larger than
    /// [`BlobLimits::max_encode_bytes`](super::BlobLimits::max_encode_bytes); ask for fewer
    /// chunk groups or use [`BlobStore::encode_ranges_to`](super::BlobStore::encode_ranges_to).
    #[error("blob {hash}: the response would exceed {limit} bytes (max_encode_bytes)")]
    ResponseTooLarge {
        /// The blob.
        hash: Hash,
        /// The limit.
        limit: usize,
    },
    /// Writing an encoded response to the caller's writer failed.
    #[error("blob {hash}: cannot write the encoded response: {source}")]
    Output {
        /// The blob.
        hash: Hash,
        /// The writer's error.
        source: io::Error,
    },
    /// A file of the store does not hold what the metadata says (disk damage or outside
    /// interference). [`BlobStore::verify`](super::BlobStore::verify) finds every bad group.
    #[error("blob {hash}: {what} {} is corrupt: {reason}", path.display())]
    Corrupt {
        /// The blob.
        hash: Hash,
        /// What the file is.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The size given for a blob contradicts the size the store already verified.
    #[error("blob {hash} is {known} bytes (verified), not {claimed}")]
    SizeMismatch {
        /// The blob.
        hash: Hash,
        /// The verified size.
        known: u64,
        /// The size given.
        claimed: u64,
    },
    /// Another [`Download`](super::Download) of this blob is alive.
    #[error("blob {hash} is already being downloaded (one Download per blob at a time)")]
    DownloadInProgress {
        /// The blob.
        hash: Hash,
    },
    /// A blob is not a valid collection manifest, or a manifest entry is unsafe.
    #[error("blob {hash} is not a valid collection: {reason}")]
    BadCollection {
        /// The manifest blob.
        hash: Hash,
        /// What is wrong.
        reason: String,
    },
    /// A file or directory given to an import or export cannot be used.
    #[error("{}: {reason}", path.display())]
    BadPath {
        /// The path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A pin name that is empty, too long or holds control characters.
    #[error("invalid pin name {name:?}: {reason}")]
    BadPinName {
        /// The name.
        name: String,
        /// Why.
        reason: &'static str,
    },
    /// [`BlobLimits::max_pins`](super::BlobLimits::max_pins) pins exist already.
    #[error("cannot pin: the store already has {max} pins (max_pins)")]
    TooManyPins {
        /// The limit.
        max: usize,
    },
}

impl BlobError {
    pub(crate) fn io(
        action: &'static str,
        what: &'static str,
        path: &Path,
    ) -> impl FnOnce(io::Error) -> BlobError {
        let path = path.to_path_buf();
        move |source| BlobError::Io {
            action,
            what,
            path,
            source,
        }
    }

    pub(crate) fn bad_path(path: &Path, reason: impl Into<String>) -> BlobError {
        BlobError::BadPath {
            path: path.to_path_buf(),
            reason: reason.into(),
        }
    }
}

//! # spore-store
//!
//! A spore node's persistent state: its data directory. It holds the node's identity, the files
//! that let local clients reach its HTTP API, DHT records and the peer book ([`records`], on
//! redb), and content-addressed blobs ([`blobs`]: BLAKE3-verified data with bao-tree outboards,
//! collections, pins and GC), and replicated documents ([`docs`]: access lists and signed
//! changes on redb).
//!
//! ## Layout
//!
//! The directory is created with mode 0700. Every file in it is written atomically (a temporary
//! file, flushed, then renamed or linked into place) and created with mode 0600.
//!
//! | file             | contents                                                       | secret |
//! |------------------|----------------------------------------------------------------|--------|
//! | `identity.key`   | the line `spore-identity-key-v1`, then the node's 32-byte Ed25519 secret seed as 64 hex digits | yes |
//! | `identity.stamp` | TOML: `peer_id`, `difficulty`, `nonce` — the proof-of-work stamp for the key; a cache, verified on every load and re-minted when it does not verify | no |
//! | `api.token`      | the HTTP API's bearer token: 32 random bytes as 64 hex digits   | yes    |
//! | `api.addr`       | `127.0.0.1:PORT`, where the running node's HTTP API listens; removed on shutdown | no |
//! | `records.redb`   | DHT records and the peer book ([`records`])                    | no     |
//! | `blobs/`         | the blob store ([`blobs`]): data, outboards, `meta.redb`        | no     |
//! | `docs.redb`      | documents: access lists and changes ([`docs`])                  | no     |
//! | `credits.bin`    | the credit ledger: bytes exchanged per peer and their signed receipts ([`credit`]) | no |
//! | `vouches.txt`    | the peer ids this node vouches for, one per line ([`trust`])     | no     |
//!
//! A secret file whose mode lets group or other users in is refused with an error that says
//! how to fix it (`chmod 600 …`): if it was readable, someone may have read it, and fixing the
//! mode silently would hide that. Unix only.
//!
//! ## Example
//!
//! ```
//! use spore_core::pow::Difficulty;
//! use spore_store::DataDir;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let tmp = tempfile::tempdir()?;
//! let dir = DataDir::open(tmp.path().join("spore"))?;
//! let first = dir.load_or_create_identity(Difficulty(8))?;
//! assert!(first.created);
//!
//! // The next start finds the same identity, and its cached stamp.
//! let again = dir.load_or_create_identity(Difficulty(8))?;
//! assert_eq!(again.keypair.peer_id(), first.keypair.peer_id());
//! assert!(!again.created && !again.stamp_minted);
//!
//! assert_eq!(dir.api_token()?, dir.api_token()?);
//! # Ok(())
//! # }
//! ```

pub mod anchors;
mod api;
pub mod blobs;
pub mod credit;
pub mod docs;
mod error;
mod fsutil;
mod identity;
pub mod records;
pub mod trust;

pub use error::StoreError;
pub use identity::{Identity, KEY_FILE_HEADER};

use std::fs::{DirBuilder, Permissions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Name of the secret key file in the data directory.
pub const IDENTITY_KEY_FILE: &str = "identity.key";
/// Name of the cached proof-of-work stamp.
pub const IDENTITY_STAMP_FILE: &str = "identity.stamp";
/// Name of the HTTP API token file.
pub const API_TOKEN_FILE: &str = "api.token";
/// Name of the file recording the HTTP API's address.
pub const API_ADDR_FILE: &str = "api.addr";

/// A node's data directory. See the [crate docs](crate) for what it holds.
#[derive(Debug, Clone)]
pub struct DataDir {
    path: PathBuf,
}

impl DataDir {
    /// Opens the data directory at `path`, creating it (mode 0700) and its parents if missing.
    /// An existing directory is used as it is.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        const WHAT: &str = "data directory";
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(StoreError::io("create", WHAT, parent))?;
        }
        match DirBuilder::new().mode(0o700).create(&path) {
            // The umask may have narrowed the mode; make it exact.
            Ok(()) => std::fs::set_permissions(&path, Permissions::from_mode(0o700))
                .map_err(StoreError::io("set the mode of", WHAT, &path))?,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(StoreError::io("create", WHAT, &path)(e)),
        }
        let meta = std::fs::metadata(&path).map_err(StoreError::io("inspect", WHAT, &path))?;
        if !meta.is_dir() {
            return Err(StoreError::NotADirectory { path });
        }
        Ok(Self { path })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Path of the secret key file.
    pub fn identity_key_path(&self) -> PathBuf {
        self.path.join(IDENTITY_KEY_FILE)
    }

    /// Path of the cached proof-of-work stamp.
    pub fn identity_stamp_path(&self) -> PathBuf {
        self.path.join(IDENTITY_STAMP_FILE)
    }

    /// Path of the HTTP API token file.
    pub fn api_token_path(&self) -> PathBuf {
        self.path.join(API_TOKEN_FILE)
    }

    /// Path of the HTTP API address file.
    pub fn api_addr_path(&self) -> PathBuf {
        self.path.join(API_ADDR_FILE)
    }

    /// Path of the [blob store](blobs) directory, `blobs/`.
    pub fn blobs_path(&self) -> PathBuf {
        self.path.join(blobs::BLOBS_DIR)
    }
}

#[cfg(test)]
mod tests;

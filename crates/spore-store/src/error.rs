//! The one error type of the crate.

use std::io;
use std::path::{Path, PathBuf};

/// What went wrong with the data directory. Every variant names the file it is about, and the
/// message says what to do where there is something to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// An operating-system call on a file or directory failed.
    #[error("cannot {action} {what} {}: {source}", path.display())]
    Io {
        /// What we were doing: "create", "read", "write", …
        action: &'static str,
        /// What the file is: "identity key", "API token", …
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The data directory path exists but is not a directory.
    #[error("data directory {} exists but is not a directory", path.display())]
    NotADirectory {
        /// The path.
        path: PathBuf,
    },
    /// A secret file can be read or written by users other than its owner. spore refuses to use
    /// it rather than silently fixing it: someone else may already have read it.
    #[error(
        "{what} {} is {} (mode {:04o}); run `chmod 600 {}`",
        path.display(),
        access_words(*mode),
        mode,
        shell_quote(path)
    )]
    InsecurePermissions {
        /// What the file is.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Its permission bits (`mode & 0o7777`).
        mode: u32,
    },
    /// A file exists but its contents are not what spore wrote there.
    #[error("{what} {} is corrupt: {reason}", path.display())]
    Corrupt {
        /// What the file is.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// [`DataDir::load_identity`](crate::DataDir::load_identity) found no key file.
    #[error(
        "no identity key at {} (a node creates one the first time it starts)",
        path.display()
    )]
    NoIdentity {
        /// Where the key was expected.
        path: PathBuf,
    },
}

impl StoreError {
    pub(crate) fn io(
        action: &'static str,
        what: &'static str,
        path: &Path,
    ) -> impl FnOnce(io::Error) -> StoreError {
        let path = path.to_path_buf();
        move |source| StoreError::Io {
            action,
            what,
            path,
            source,
        }
    }

    pub(crate) fn corrupt(what: &'static str, path: &Path, reason: impl Into<String>) -> Self {
        StoreError::Corrupt {
            what,
            path: path.to_path_buf(),
            reason: reason.into(),
        }
    }
}

fn access_words(mode: u32) -> &'static str {
    if mode & 0o044 != 0 {
        "readable by other users"
    } else {
        "accessible to other users"
    }
}

/// `path` as a shell word, quoted only when it needs to be, so the suggested command can be
/// pasted as is.
pub(crate) fn shell_quote(path: &Path) -> String {
    let s = path.display().to_string();
    let safe = |c: char| c.is_ascii_alphanumeric() || "/._-+,:@%".contains(c);
    if !s.is_empty() && s.chars().all(safe) {
        s
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

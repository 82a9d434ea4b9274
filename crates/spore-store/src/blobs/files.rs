//! File primitives of the blob store: private files and directories, temporary files that clean
//! up after themselves, directory syncs, and a sequential reader over positioned reads.

use std::fs::{self, DirBuilder, File, OpenOptions, Permissions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rand_core::{OsRng, RngCore};

use super::BlobError;

/// Mode of every file the store creates.
pub(crate) const FILE_MODE: u32 = 0o600;

/// Creates `path` (mode 0700) if missing.
pub(crate) fn ensure_dir(path: &Path, what: &'static str) -> Result<(), BlobError> {
    match DirBuilder::new().mode(0o700).create(path) {
        Ok(()) => fs::set_permissions(path, Permissions::from_mode(0o700)).map_err(BlobError::io(
            "set the mode of",
            what,
            path,
        )),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            if path.is_dir() {
                Ok(())
            } else {
                Err(BlobError::bad_path(path, "exists but is not a directory"))
            }
        }
        Err(e) => Err(BlobError::io("create", what, path)(e)),
    }
}

/// Opens `path` for reading and writing, creating it (mode 0600) if missing; never truncates.
pub(crate) fn open_rw(path: &Path, what: &'static str) -> Result<File, BlobError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(FILE_MODE)
        .open(path)
        .map_err(BlobError::io("open", what, path))
}

/// Makes renames and creations in `dir` durable. Best effort: some file systems cannot sync a
/// directory, and there is nothing better to do there.
pub(crate) fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// A random name for a temporary file.
pub(crate) fn temp_name(prefix: &str) -> String {
    format!("{prefix}{:016x}", OsRng.next_u64())
}

/// A file that is removed when dropped, unless [`persist`](TempFile::persist)ed.
#[derive(Debug)]
pub(crate) struct TempFile {
    pub(crate) path: PathBuf,
    pub(crate) file: File,
    what: &'static str,
    keep: bool,
}

impl TempFile {
    /// Creates a new file in `dir` named `<prefix><random><suffix>`: mode 0600 if `private`,
    /// else the usual 0666 less the umask (an exported file is the user's).
    pub(crate) fn create(
        dir: &Path,
        prefix: &str,
        suffix: &str,
        what: &'static str,
        private: bool,
    ) -> Result<TempFile, BlobError> {
        let path = dir.join(format!("{}{suffix}", temp_name(prefix)));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(if private { FILE_MODE } else { 0o666 })
            .open(&path)
            .map_err(BlobError::io("create", what, &path))?;
        if private {
            file.set_permissions(Permissions::from_mode(FILE_MODE))
                .map_err(BlobError::io("set the mode of", what, &path))?;
        }
        Ok(TempFile {
            path,
            file,
            what,
            keep: false,
        })
    }

    /// Flushes the file's data to disk.
    pub(crate) fn sync(&self) -> Result<(), BlobError> {
        self.file
            .sync_all()
            .map_err(BlobError::io("sync", self.what, &self.path))
    }

    /// Renames the file to `dest` (replacing it). The caller syncs the directory.
    pub(crate) fn persist(mut self, dest: &Path) -> Result<(), BlobError> {
        fs::rename(&self.path, dest).map_err(BlobError::io("rename", self.what, &self.path))?;
        self.keep = true;
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.keep {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// Reads `file` from `pos` to `end` with positioned reads (`pread`): no shared cursor, so any
/// number of readers can use one file at once.
pub(crate) struct PosReader<'a> {
    pub(crate) file: &'a File,
    pub(crate) pos: u64,
    pub(crate) end: u64,
}

impl Read for PosReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = usize::try_from(self.end.saturating_sub(self.pos)).unwrap_or(usize::MAX);
        let n = buf.len().min(left);
        if n == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..n], self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// Length of the file at `path`, `None` if it does not exist.
pub(crate) fn file_len(path: &Path, what: &'static str) -> Result<Option<u64>, BlobError> {
    match fs::metadata(path) {
        Ok(m) => Ok(Some(m.len())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(BlobError::io("inspect", what, path)(e)),
    }
}

/// Removes `path`; a missing file is not an error.
pub(crate) fn remove_if_exists(path: &Path) -> io::Result<bool> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Copies what it reads to `sink`, counting and reporting progress; remembers which side failed.
pub(crate) struct Tee<'a> {
    pub(crate) src: &'a mut dyn Read,
    pub(crate) sink: &'a mut dyn Write,
    pub(crate) done: u64,
    pub(crate) progress: &'a mut dyn FnMut(u64),
    pub(crate) failed: Option<Side>,
}

#[derive(Clone, Copy)]
pub(crate) enum Side {
    Source,
    Sink,
}

impl Read for Tee<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.src.read(buf).inspect_err(|_| {
            self.failed = Some(Side::Source);
        })?;
        self.sink.write_all(&buf[..n]).inspect_err(|_| {
            self.failed = Some(Side::Sink);
        })?;
        self.done += n as u64;
        if n > 0 {
            (self.progress)(self.done);
        }
        Ok(n)
    }
}

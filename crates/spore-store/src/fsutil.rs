//! Small file primitives: atomic writes with a fixed mode, and bounded reads of private files.

use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rand_core::{OsRng, RngCore};

use crate::StoreError;

/// Mode of every file spore creates in the data directory.
pub(crate) const FILE_MODE: u32 = 0o600;

/// What to do when the destination already exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Overwrite {
    /// Replace it atomically (caches, the API address).
    Replace,
    /// Keep it and report that nothing was written (keys: two processes creating an identity at
    /// once must end up with the same one).
    Never,
}

/// Writes `contents` to `path` atomically: a temporary file in the same directory, created with
/// `FILE_MODE` (and chmod-ed to it, whatever the umask), flushed to disk, then moved into place.
/// Readers see either the old file or the whole new one, never a partial one.
///
/// Returns `false` if `how` is [`Overwrite::Never`] and the file already existed.
pub(crate) fn write_atomic(
    path: &Path,
    what: &'static str,
    contents: &[u8],
    how: Overwrite,
) -> Result<bool, StoreError> {
    let tmp = temp_path(path);
    let result = write_temp(&tmp, contents).and_then(|()| match how {
        Overwrite::Replace => fs::rename(&tmp, path).map(|()| true),
        Overwrite::Never => link_new(&tmp, path),
    });
    // The temporary name is gone after a rename; after a link (or an error) it is removed.
    let _ = fs::remove_file(&tmp);
    let written = result.map_err(StoreError::io("write", what, path))?;
    if written {
        sync_parent(path);
    }
    Ok(written)
}

fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{:016x}", OsRng.next_u64()))
}

fn write_temp(tmp: &Path, contents: &[u8]) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(tmp)?;
    // The mode given at creation is filtered by the umask; make it exact.
    file.set_permissions(Permissions::from_mode(FILE_MODE))?;
    file.write_all(contents)?;
    file.sync_all()
}

/// Moves `tmp` to `path` unless `path` exists, atomically: a hard link fails if the name is
/// taken, where a rename would replace it.
fn link_new(tmp: &Path, path: &Path) -> io::Result<bool> {
    match fs::hard_link(tmp, path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        // A file system without hard links: fall back to check-then-rename, which is only racy
        // against another spore process creating the same file in the same instant.
        Err(_) if path.exists() => Ok(false),
        Err(_) => fs::rename(tmp, path).map(|()| true),
    }
}

/// Makes a rename durable. Best effort: some file systems cannot sync a directory.
fn sync_parent(path: &Path) {
    if let Some(dir) = path.parent()
        && let Ok(d) = File::open(dir)
    {
        let _ = d.sync_all();
    }
}

/// Reads a file of at most `max_len` bytes. `Ok(None)` if it does not exist. With `private`, the
/// file is refused if its mode lets anyone but its owner in; the check is made on the opened
/// file, so it is the file that is read that was checked.
pub(crate) fn read_bounded(
    path: &Path,
    what: &'static str,
    max_len: u64,
    private: bool,
) -> Result<Option<Vec<u8>>, StoreError> {
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StoreError::io("open", what, path)(e)),
    };
    let meta = file
        .metadata()
        .map_err(StoreError::io("inspect", what, path))?;
    if !meta.is_file() {
        return Err(StoreError::corrupt(what, path, "not a regular file"));
    }
    let mode = meta.permissions().mode() & 0o7777;
    if private && mode & 0o077 != 0 {
        return Err(StoreError::InsecurePermissions {
            what,
            path: path.to_path_buf(),
            mode,
        });
    }
    if meta.len() > max_len {
        return Err(StoreError::corrupt(
            what,
            path,
            format!("it is {} bytes, at most {max_len} expected", meta.len()),
        ));
    }
    let mut buf = Vec::new();
    // `take` guards against a file that grew after the check.
    (&mut file)
        .take(max_len + 1)
        .read_to_end(&mut buf)
        .map_err(StoreError::io("read", what, path))?;
    Ok(Some(buf))
}

/// Lowercase hex.
pub(crate) fn hex_encode(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    s
}

/// Decodes exactly `N` bytes of hex (either case), explaining what is wrong otherwise.
pub(crate) fn hex_decode<const N: usize>(text: &str) -> Result<[u8; N], String> {
    if text.len() != 2 * N {
        return Err(format!(
            "expected {} hex digits, found {} characters",
            2 * N,
            text.chars().count()
        ));
    }
    let digit = |i: usize, c: u8| {
        char::from(c)
            .to_digit(16)
            .map(|d| d as u8)
            .ok_or_else(|| format!("{:?} at position {} is not a hex digit", char::from(c), i))
    };
    let mut out = [0u8; N];
    let bytes = text.as_bytes();
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = digit(2 * i, bytes[2 * i])? << 4 | digit(2 * i + 1, bytes[2 * i + 1])?;
    }
    Ok(out)
}

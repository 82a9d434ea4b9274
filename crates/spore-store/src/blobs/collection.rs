//! Collections: a directory as one blob, its manifest, listing every file's relative path, hash
//! and size.

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use redb::ReadableTable;
use serde::{Deserialize, Serialize};

use super::meta::{COLLECTIONS, DbError, Entry, State};
use super::{BlobError, BlobStatus, BlobStore, Hash, Imported, Inner, footprint, new_lease};

/// First bytes of every collection manifest.
pub const MANIFEST_MAGIC: [u8; 16] = *b"spore-collection";
/// The manifest format this code writes and reads.
pub const MANIFEST_VERSION: u32 = 1;

const MAX_PATH_BYTES: usize = 4096;
const MAX_COMPONENT_BYTES: usize = 255;

/// One file of a [`Collection`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CollectionEntry {
    /// Its path relative to the collection's root, `/`-separated.
    pub path: String,
    /// Its blob.
    pub hash: Hash,
    /// Its size in bytes.
    pub size: u64,
}

/// A validated collection manifest: sorted entries whose paths are all safe to create under a
/// destination directory.
///
/// ## Manifest format, version 1
///
/// | bytes | contents |
/// |---|---|
/// | 16 | [`MANIFEST_MAGIC`], `spore-collection` in ASCII |
/// | varint | the format version, [`MANIFEST_VERSION`] (postcard `u32`) |
/// | rest | postcard `Vec<(String, [u8; 32], u64)>`: path, hash, size of every file |
///
/// Entries are sorted by path (bytewise) with no duplicates; a path is relative, UTF-8, `/`
/// separated, of at most 4096 bytes, with components of 1 to 255 bytes that are neither `.` nor
/// `..` and hold no `\` or NUL; no path is a directory of another (`a` and `a/b`). A manifest
/// that breaks any rule is refused as a whole, when it is read, not when it is exported.
/// Nothing follows the last entry. Empty directories are not recorded.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Collection {
    entries: Vec<CollectionEntry>,
}

type WireEntry = (String, [u8; 32], u64);

impl Collection {
    /// Builds a collection from entries in any order; refuses unsafe or duplicate paths.
    pub fn new(mut entries: Vec<CollectionEntry>) -> Result<Collection, String> {
        entries.sort_by(|a, b| a.path.cmp(&b.path));
        check_entries(&entries)?;
        Ok(Collection { entries })
    }

    /// The entries, sorted by path.
    pub fn entries(&self) -> &[CollectionEntry] {
        &self.entries
    }

    /// The sum of the files' sizes.
    pub fn total_size(&self) -> u64 {
        self.entries.iter().map(|e| e.size).sum()
    }

    /// The manifest's bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        encode_unchecked(
            MANIFEST_VERSION,
            self.entries
                .iter()
                .map(|e| (e.path.clone(), *e.hash.as_bytes(), e.size))
                .collect(),
        )
    }

    /// Parses and validates a manifest of at most `max_entries` entries.
    pub fn from_bytes(bytes: &[u8], max_entries: usize) -> Result<Collection, String> {
        let rest = bytes
            .strip_prefix(&MANIFEST_MAGIC[..])
            .ok_or("it does not start with the collection magic bytes")?;
        let (version, rest) = postcard::take_from_bytes::<u32>(rest)
            .map_err(|e| format!("cannot read the version: {e}"))?;
        if version != MANIFEST_VERSION {
            return Err(format!(
                "format version {version} is not supported (this is version {MANIFEST_VERSION})"
            ));
        }
        let (wire, rest) = postcard::take_from_bytes::<Vec<WireEntry>>(rest)
            .map_err(|e| format!("cannot decode the entries: {e}"))?;
        if !rest.is_empty() {
            return Err(format!("{} bytes follow the last entry", rest.len()));
        }
        if wire.len() > max_entries {
            return Err(format!(
                "it has {} entries, more than the limit of {max_entries}",
                wire.len()
            ));
        }
        let entries: Vec<CollectionEntry> = wire
            .into_iter()
            .map(|(path, hash, size)| CollectionEntry {
                path,
                hash: Hash::from(hash),
                size,
            })
            .collect();
        check_entries(&entries)?;
        Ok(Collection { entries })
    }
}

/// Encodes a manifest without checking it (tests build malicious ones with it).
pub(crate) fn encode_unchecked(version: u32, entries: Vec<WireEntry>) -> Vec<u8> {
    #[derive(Serialize, Deserialize)]
    struct Body(Vec<WireEntry>);
    let mut out = MANIFEST_MAGIC.to_vec();
    // Encoding integers, strings and arrays into a Vec cannot fail.
    out.extend(postcard::to_allocvec(&version).unwrap_or_default());
    out.extend(postcard::to_allocvec(&Body(entries)).unwrap_or_default());
    out
}

fn check_entries(entries: &[CollectionEntry]) -> Result<(), String> {
    let mut files = BTreeSet::new();
    for (i, e) in entries.iter().enumerate() {
        check_path(&e.path).map_err(|why| format!("entry path {:?} {why}", e.path))?;
        if i > 0 && entries[i - 1].path >= e.path {
            return Err(format!(
                "entries are not sorted, or {:?} appears twice",
                e.path
            ));
        }
        files.insert(e.path.as_str());
    }
    for e in entries {
        for (i, _) in e.path.match_indices('/') {
            if files.contains(&e.path[..i]) {
                return Err(format!(
                    "{:?} is a file, so {:?} cannot be under it",
                    &e.path[..i],
                    e.path
                ));
            }
        }
    }
    Ok(())
}

fn check_path(path: &str) -> Result<(), &'static str> {
    if path.is_empty() {
        return Err("is empty");
    }
    if path.len() > MAX_PATH_BYTES {
        return Err("is longer than 4096 bytes");
    }
    if path.starts_with('/') {
        return Err("is absolute");
    }
    for c in path.split('/') {
        match c {
            "" => return Err("has an empty component"),
            "." | ".." => return Err("has a `.` or `..` component"),
            c if c.len() > MAX_COMPONENT_BYTES => {
                return Err("has a component longer than 255 bytes");
            }
            c if c.contains(['\\', '\0']) => return Err("holds `\\` or NUL"),
            _ => {}
        }
    }
    Ok(())
}

impl BlobStore {
    /// Imports the directory at `path` as a collection: every regular file under it (recursively)
    /// is imported, then the manifest listing them, which is registered as a collection. The
    /// result's hash is the manifest's, its size the files' total, and its lease covers the
    /// manifest and every file. Symbolic links, special files and names that are not UTF-8 are
    /// refused, before anything is imported. `progress` gets the bytes read so far, over all files.
    pub fn import_dir(
        &self,
        path: impl AsRef<Path>,
        progress: &mut dyn FnMut(u64),
    ) -> Result<Imported, BlobError> {
        let root = path.as_ref();
        let files = walk(root, self.inner.limits.max_collection_entries)?;
        let mut manifest_bytes = MANIFEST_MAGIC.len() as u64 + 10;
        for (rel, abs) in &files {
            check_path(rel).map_err(|why| BlobError::bad_path(abs, format!("the name {why}")))?;
            // Path, its length, the hash and the size (varints at their longest).
            manifest_bytes += rel.len() as u64 + 3 + 32 + 10;
        }
        let max = self.inner.limits.max_manifest_bytes;
        if manifest_bytes > max {
            return Err(BlobError::bad_path(
                root,
                format!(
                    "its manifest would be about {manifest_bytes} bytes, more than the limit of {max} (max_manifest_bytes)"
                ),
            ));
        }
        // A quick refusal when the whole clearly does not fit; each file is checked again.
        let mut need = 0u64;
        for (_, abs) in &files {
            let len = fs::metadata(abs)
                .map_err(BlobError::io("inspect", "file to import", abs))?
                .len();
            need = need.saturating_add(footprint(len));
        }
        let free = self.limits().quota_bytes.saturating_sub(self.used_bytes());
        if need > free {
            return Err(BlobError::Quota { need, free });
        }

        let mut done = 0u64;
        let mut entries = Vec::with_capacity(files.len());
        let mut leases = Vec::with_capacity(files.len() + 1);
        for (rel, abs) in files {
            let base = done;
            let imported = self.import_file(&abs, &mut |n| progress(base + n))?;
            done += imported.size;
            entries.push(CollectionEntry {
                path: rel,
                hash: imported.hash,
                size: imported.size,
            });
            leases.push(imported.lease);
        }
        let collection =
            Collection::new(entries).map_err(|reason| BlobError::bad_path(root, reason))?;
        let manifest = self.import_bytes(&collection.to_bytes())?;
        self.inner.mark_collection(&manifest.hash)?;
        let mut hashes: Vec<Hash> = collection.entries.iter().map(|e| e.hash).collect();
        hashes.push(manifest.hash);
        let lease = new_lease(&self.inner, hashes);
        drop(leases);
        Ok(Imported {
            hash: manifest.hash,
            size: collection.total_size(),
            lease,
        })
    }

    /// Reads and validates the collection manifest `hash` (a complete blob).
    pub fn collection(&self, hash: &Hash) -> Result<Collection, BlobError> {
        self.inner.read_collection(hash)
    }

    /// Records that the complete blob `hash` is a collection manifest (after downloading one),
    /// so that a pin on it keeps its files; returns the parsed collection. Imports by
    /// [`import_dir`](Self::import_dir) are registered already.
    pub fn register_collection(&self, hash: &Hash) -> Result<Collection, BlobError> {
        let c = self.inner.read_collection(hash)?;
        self.inner.mark_collection(hash)?;
        Ok(c)
    }

    /// Writes every file of collection `hash` under `dest_dir` (created if missing), each as
    /// [`export`](Self::export) does. Every file must be complete here; that is checked before
    /// anything is written. Paths were validated when the manifest was read; in addition, a
    /// symbolic link or a file found on disk where a directory of the collection goes is refused,
    /// so nothing is written outside `dest_dir`. Returns the number of files written.
    pub fn export_collection(
        &self,
        hash: &Hash,
        dest_dir: impl AsRef<Path>,
    ) -> Result<u64, BlobError> {
        let dest_dir = dest_dir.as_ref();
        let c = self.collection(hash)?;
        for e in &c.entries {
            match self.have(&e.hash)? {
                BlobStatus::Complete { size } if size == e.size => {}
                BlobStatus::Complete { size } => {
                    return Err(BlobError::BadCollection {
                        hash: *hash,
                        reason: format!(
                            "{:?} is listed as {} bytes but its blob {} is {size}",
                            e.path, e.size, e.hash
                        ),
                    });
                }
                BlobStatus::Partial { groups, .. } => {
                    return Err(BlobError::Incomplete {
                        hash: e.hash,
                        missing_groups: groups.len() - groups.count_ones(),
                    });
                }
                _ => return Err(BlobError::NotFound { hash: e.hash }),
            }
        }
        fs::create_dir_all(dest_dir).map_err(BlobError::io("create", "directory", dest_dir))?;
        for e in &c.entries {
            let mut dir = dest_dir.to_path_buf();
            let mut parts: Vec<&str> = e.path.split('/').collect();
            let name = parts.pop().unwrap_or_default();
            for part in parts {
                dir.push(part);
                make_plain_dir(&dir)?;
            }
            let dest = dir.join(name);
            if let Ok(m) = fs::symlink_metadata(&dest)
                && !m.is_file()
            {
                return Err(BlobError::bad_path(
                    &dest,
                    "exists and is not a regular file (a directory or a symbolic link)",
                ));
            }
            self.export(&e.hash, &dest)?;
        }
        Ok(c.entries.len() as u64)
    }
}

/// Creates `dir` if missing; refuses anything but a real directory there (a symbolic link could
/// lead outside the destination).
fn make_plain_dir(dir: &Path) -> Result<(), BlobError> {
    match fs::symlink_metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(BlobError::bad_path(
            dir,
            "exists and is not a directory (a file or a symbolic link)",
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => match fs::create_dir(dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => make_plain_dir(dir),
            Err(e) => Err(BlobError::io("create", "directory", dir)(e)),
        },
        Err(e) => Err(BlobError::io("inspect", "directory", dir)(e)),
    }
}

/// Every regular file under `root`: (relative `/`-separated path, absolute path), sorted.
fn walk(root: &Path, max: usize) -> Result<Vec<(String, PathBuf)>, BlobError> {
    let meta = fs::metadata(root).map_err(BlobError::io("open", "directory to import", root))?;
    if !meta.is_dir() {
        return Err(BlobError::bad_path(root, "not a directory"));
    }
    let mut out = Vec::new();
    let mut stack = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, rel)) = stack.pop() {
        let list = fs::read_dir(&dir).map_err(BlobError::io("list", "directory", &dir))?;
        for item in list {
            let item = item.map_err(BlobError::io("list", "directory", &dir))?;
            let abs = item.path();
            let Some(name) = item.file_name().to_str().map(str::to_string) else {
                return Err(BlobError::bad_path(&abs, "the name is not UTF-8"));
            };
            let rel = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            let ft = item
                .file_type()
                .map_err(BlobError::io("inspect", "file", &abs))?;
            if ft.is_dir() {
                stack.push((abs, rel));
            } else if ft.is_file() {
                if out.len() == max {
                    return Err(BlobError::bad_path(
                        root,
                        format!("it holds more than {max} files (max_collection_entries)"),
                    ));
                }
                out.push((rel, abs));
            } else if ft.is_symlink() {
                return Err(BlobError::bad_path(
                    &abs,
                    "is a symbolic link; collections hold regular files only",
                ));
            } else {
                return Err(BlobError::bad_path(
                    &abs,
                    "is not a regular file or a directory",
                ));
            }
        }
    }
    out.sort();
    Ok(out)
}

impl Inner {
    pub(crate) fn read_collection(&self, hash: &Hash) -> Result<Collection, BlobError> {
        let bad = |reason: String| BlobError::BadCollection {
            hash: *hash,
            reason,
        };
        let size = match self.entry(hash)? {
            Some(Entry {
                size,
                state: State::Complete,
            }) => size,
            Some(Entry { size, .. }) => {
                return Err(BlobError::Incomplete {
                    hash: *hash,
                    missing_groups: super::group_count(size),
                });
            }
            None => return Err(BlobError::NotFound { hash: *hash }),
        };
        let max = self.limits.max_manifest_bytes;
        if size > max {
            return Err(bad(format!(
                "the manifest is {size} bytes, more than the limit of {max} (max_manifest_bytes)"
            )));
        }
        let path = self.data_path(hash);
        let file = fs::File::open(&path).map_err(BlobError::io("open", "blob data file", &path))?;
        let mut bytes = vec![0u8; size as usize];
        file.read_exact_at(&mut bytes, 0).map_err(BlobError::io(
            "read",
            "blob data file",
            &path,
        ))?;
        if Hash::of(&bytes) != *hash {
            return Err(BlobError::Corrupt {
                hash: *hash,
                what: "blob data file",
                path,
                reason: "its content does not match its hash (run verify)".into(),
            });
        }
        Collection::from_bytes(&bytes, self.limits.max_collection_entries).map_err(bad)
    }

    pub(crate) fn mark_collection(&self, hash: &Hash) -> Result<(), BlobError> {
        let write = || -> Result<(), DbError> {
            let txn = self.db.begin_write()?;
            {
                let mut t = txn.open_table(COLLECTIONS)?;
                if t.get(&hash.as_bytes()[..])?.is_none() {
                    t.insert(&hash.as_bytes()[..], ())?;
                }
            }
            txn.commit()?;
            Ok(())
        };
        write().map_err(self.db_err("register a collection"))
    }
}

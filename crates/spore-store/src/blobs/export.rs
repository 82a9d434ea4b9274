//! Exporting a blob to a file, and re-verifying what the store holds.

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::ops::Range;
use std::path::Path;

use bao_tree::io::EncodeError;
use bao_tree::io::outboard::PostOrderOutboard;
use bao_tree::io::sync::{encode_ranges_validated, outboard_post_order};

use super::bitfield::Bitfield;
use super::files::{PosReader, Side, Tee, TempFile, file_len, sync_dir};
use super::meta::{self, BLOBS, DbError, Entry, GROUPS, State};
use super::{
    BlobError, BlobStore, GROUP_BYTES, Hash, Inner, chunk_ranges, group_count, group_len,
    group_of_chunk, tree,
};

const EXPORT_BUFFER: usize = 256 << 10;

/// What [`BlobStore::verify`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct VerifyReport {
    /// The blob.
    pub hash: Hash,
    /// Its size.
    pub size: u64,
    /// Chunk groups re-hashed: all of a complete blob, the verified ones of a partial blob.
    pub checked_groups: u64,
    /// Groups whose data (or outboard) no longer matches the hash, as sorted ranges.
    pub bad_groups: Vec<Range<u64>>,
}

impl VerifyReport {
    /// True if nothing was bad.
    pub fn is_ok(&self) -> bool {
        self.bad_groups.is_empty()
    }
}

impl BlobStore {
    /// Writes blob `hash` (complete) to `dest`: to a temporary file beside it, which is renamed
    /// to `dest` (replacing it) only once everything read hashed to `hash` and the file is
    /// synced. So `dest` never holds data that did not verify. Returns the size.
    pub fn export(&self, hash: &Hash, dest: impl AsRef<Path>) -> Result<u64, BlobError> {
        let dest = dest.as_ref();
        let inner = &self.inner;
        let _lease = self.lease(*hash);
        let size = inner.complete_size(hash)?;
        let name = dest
            .file_name()
            .ok_or_else(|| BlobError::bad_path(dest, "has no file name"))?
            .to_string_lossy()
            .into_owned();
        let parent = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let data_path = inner.data_path(hash);
        let data =
            File::open(&data_path).map_err(BlobError::io("open", "blob data file", &data_path))?;
        let tmp = TempFile::create(
            parent,
            &format!(".{name}.spore-"),
            ".tmp",
            "temporary export file",
            false,
        )?;
        let mut w = BufWriter::with_capacity(EXPORT_BUFFER, &tmp.file);
        let mut src = PosReader {
            file: &data,
            pos: 0,
            end: size,
        };
        let mut tee = Tee {
            src: &mut src,
            sink: &mut w,
            done: 0,
            progress: &mut |_| {},
            failed: None,
        };
        let result = outboard_post_order((&mut tee).take(size), tree(size), io::sink());
        let root = match (result, tee.failed) {
            (Ok(root), _) => root,
            (Err(e), Some(Side::Sink)) => {
                return Err(BlobError::io("write", "exported file", &tmp.path)(e));
            }
            (Err(e), _) if e.kind() == io::ErrorKind::UnexpectedEof => {
                return Err(BlobError::Corrupt {
                    hash: *hash,
                    what: "blob data file",
                    path: data_path,
                    reason: format!("it is shorter than the blob's {size} bytes"),
                });
            }
            (Err(e), _) => return Err(BlobError::io("read", "blob data file", &data_path)(e)),
        };
        if Hash::from(root) != *hash {
            let report = self.verify(hash)?;
            let group = report.bad_groups.first().map_or(0, |r| r.start);
            return Err(BlobError::Corrupt {
                hash: *hash,
                what: "blob data file",
                path: data_path,
                reason: format!("chunk group {group} does not match the hash"),
            });
        }
        w.flush()
            .map_err(BlobError::io("write", "exported file", &tmp.path))?;
        drop(w);
        tmp.sync()?;
        tmp.persist(dest)?;
        sync_dir(parent);
        Ok(size)
    }

    /// Re-hashes what the store holds of `hash` (all of a complete blob, the verified groups of
    /// a partial one) against the hash, through the outboard, and reports the chunk groups that
    /// no longer match (bad data, or a bad outboard above them). Reports; changes nothing: see
    /// [`repair`](Self::repair).
    pub fn verify(&self, hash: &Hash) -> Result<VerifyReport, BlobError> {
        let _lease = self.lease(*hash);
        self.inner.verify(hash)
    }

    /// [`verify`](Self::verify)s every blob; returns the reports of those with bad groups.
    pub fn verify_all(&self) -> Result<Vec<VerifyReport>, BlobError> {
        let mut bad = Vec::new();
        for info in self.list()? {
            match self.verify(&info.hash) {
                Ok(r) if r.is_ok() => {}
                Ok(r) => bad.push(r),
                // Collected meanwhile.
                Err(BlobError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(bad)
    }

    /// Forgets the bad groups of `report`: a complete blob becomes partial, and a
    /// [`Download`](super::Download) can fetch those groups again. Refused while a download of
    /// the blob is alive.
    pub fn repair(&self, report: &VerifyReport) -> Result<(), BlobError> {
        let inner = &self.inner;
        let hash = report.hash;
        let _catalog = inner.catalog();
        if inner.state().downloads.contains(&hash) {
            return Err(BlobError::DownloadInProgress { hash });
        }
        let write = || -> Result<(), DbError> {
            let txn = inner.db.begin_write()?;
            {
                let mut blobs = txn.open_table(BLOBS)?;
                let mut groups = txn.open_table(GROUPS)?;
                let Some(entry) = meta::get_entry(&blobs, &hash)? else {
                    return Ok(());
                };
                if entry.size != report.size {
                    return Ok(());
                }
                let n = group_count(entry.size);
                let (mut bits, size_verified) = match entry.state {
                    State::Complete => (Bitfield::full(n), true),
                    State::Partial { size_verified } => {
                        (meta::load_groups(&groups, &hash, n)?, size_verified)
                    }
                };
                for r in &report.bad_groups {
                    for g in r.clone() {
                        bits.clear(g);
                    }
                }
                let entry = Entry {
                    size: entry.size,
                    state: State::Partial { size_verified },
                };
                blobs.insert(&hash.as_bytes()[..], &meta::encode_entry(&entry)[..])?;
                meta::replace_groups(&mut groups, &hash, &bits)?;
            }
            txn.commit()?;
            Ok(())
        };
        write().map_err(inner.db_err("record a repair"))
    }
}

impl Inner {
    /// The size of `hash` if it is complete.
    pub(crate) fn complete_size(&self, hash: &Hash) -> Result<u64, BlobError> {
        match self.entry(hash)? {
            Some(Entry {
                size,
                state: State::Complete,
            }) => Ok(size),
            Some(Entry { size, .. }) => {
                let read = || -> Result<u64, DbError> {
                    let txn = self.db.begin_read()?;
                    let n = group_count(size);
                    Ok(n - meta::load_groups(&txn.open_table(GROUPS)?, hash, n)?.count_ones())
                };
                let missing_groups = read().map_err(self.db_err("read verified groups"))?;
                Err(BlobError::Incomplete {
                    hash: *hash,
                    missing_groups,
                })
            }
            None => Err(BlobError::NotFound { hash: *hash }),
        }
    }

    fn verify(&self, hash: &Hash) -> Result<VerifyReport, BlobError> {
        let read = || -> Result<Option<(Entry, Bitfield)>, DbError> {
            let txn = self.db.begin_read()?;
            let Some(entry) = meta::get_entry(&txn.open_table(BLOBS)?, hash)? else {
                return Ok(None);
            };
            let n = group_count(entry.size);
            let bits = match entry.state {
                State::Complete => Bitfield::full(n),
                State::Partial { .. } => meta::load_groups(&txn.open_table(GROUPS)?, hash, n)?,
            };
            Ok(Some((entry, bits)))
        };
        let (entry, held) = read()
            .map_err(self.db_err("read a blob entry"))?
            .ok_or(BlobError::NotFound { hash: *hash })?;
        let size = entry.size;
        let n = group_count(size);
        let mut bad = Bitfield::new(n);
        let data_path = self.data_path(hash);
        let ob_path = self.outboard_path(hash);
        let data_len = file_len(&data_path, "blob data file")?.unwrap_or(0);

        // Groups the data file does not reach are bad without reading them.
        let mut remaining: Vec<Range<u64>> = Vec::new();
        for r in held.ranges() {
            for g in r {
                if g * GROUP_BYTES + group_len(size, g) > data_len {
                    bad.set(g);
                } else {
                    match remaining.last_mut() {
                        Some(last) if last.end == g => last.end = g + 1,
                        _ => remaining.push(g..g + 1),
                    }
                }
            }
        }
        if !remaining.is_empty() {
            let data = File::open(&data_path).map_err(BlobError::io(
                "open",
                "blob data file",
                &data_path,
            ))?;
            let ob =
                File::open(&ob_path).map_err(BlobError::io("open", "blob outboard", &ob_path))?;
            let outboard = PostOrderOutboard {
                root: hash.to_blake3(),
                tree: tree(size),
                data: &ob,
            };
            // Each pass stops at the first bad group; the next one starts after it, so the
            // whole costs about one read of the blob, however many groups are bad.
            while !remaining.is_empty() {
                let ranges = chunk_ranges(&remaining);
                let bad_span = match encode_ranges_validated(&data, &outboard, &ranges, io::sink())
                {
                    Ok(()) => break,
                    Err(EncodeError::LeafHashMismatch(chunk)) => {
                        let g = group_of_chunk(chunk);
                        g..g + 1
                    }
                    Err(EncodeError::ParentHashMismatch(node)) => {
                        let r = node.chunk_range();
                        group_of_chunk(r.start)..r.end.0.div_ceil(16).min(n)
                    }
                    Err(EncodeError::Io(e)) => {
                        return Err(BlobError::io("read", "blob data file", &data_path)(e));
                    }
                    Err(e) => {
                        return Err(BlobError::io("read", "blob outboard", &ob_path)(
                            io::Error::other(e.to_string()),
                        ));
                    }
                };
                for r in &remaining {
                    for g in r.start.max(bad_span.start)..r.end.min(bad_span.end) {
                        bad.set(g);
                    }
                }
                remaining = remaining
                    .into_iter()
                    .map(|r| r.start.max(bad_span.end)..r.end)
                    .filter(|r| r.start < r.end)
                    .collect();
            }
        }
        Ok(VerifyReport {
            hash: *hash,
            size,
            checked_groups: held.count_ones(),
            bad_groups: bad.ranges(),
        })
    }
}

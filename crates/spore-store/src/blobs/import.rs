//! Importing: a stream is copied to a temporary file while its outboard is computed, both are
//! synced, moved into place, and only then recorded.

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::Path;
use std::sync::Arc;

use bao_tree::io::sync::outboard_post_order;

use super::files::{Side, Tee, TempFile, sync_dir};
use super::meta::{self, BLOBS, DbError, Entry, GROUPS, State};
use super::{BlobError, BlobStore, Hash, Inner, Lease, footprint, new_lease, tree};

/// A finished import: the blob is durable and recorded.
#[derive(Debug)]
#[must_use = "the blob is protected from GC only while `lease` lives: pin it to keep it"]
pub struct Imported {
    /// The blob's hash (for a directory, the collection manifest's).
    pub hash: Hash,
    /// The blob's size in bytes (for a directory, the total of its files).
    pub size: u64,
    /// Protects the blob (for a directory, the manifest and every file) from
    /// [`gc`](BlobStore::gc) until dropped. [`pin`](BlobStore::pin) what you want to keep, then
    /// drop this.
    pub lease: Lease,
}

const DATA_BUFFER: usize = 256 << 10;
const OUTBOARD_BUFFER: usize = 64 << 10;

impl BlobStore {
    /// Imports `data`. See [`import_file`](Self::import_file).
    pub fn import_bytes(&self, data: &[u8]) -> Result<Imported, BlobError> {
        self.inner.import_stream(
            &mut &data[..],
            data.len() as u64,
            Path::new("<bytes>"),
            &mut |_| {},
        )
    }

    /// Imports the file at `path`, reading it once, start to end, with bounded memory; calls
    /// `progress` with the bytes read so far as it goes. Returns once the data, its outboard and
    /// the metadata are durable. Content the store already has completely is not written again.
    ///
    /// Refused before anything is written if the file is larger than
    /// [`max_blob_size`](super::BlobLimits::max_blob_size) or does not fit the quota. A file
    /// that changes size while it is read is refused.
    pub fn import_file(
        &self,
        path: impl AsRef<Path>,
        progress: &mut dyn FnMut(u64),
    ) -> Result<Imported, BlobError> {
        let path = path.as_ref();
        let mut file = File::open(path).map_err(BlobError::io("open", "file to import", path))?;
        let meta = file
            .metadata()
            .map_err(BlobError::io("inspect", "file to import", path))?;
        if !meta.is_file() {
            return Err(BlobError::bad_path(path, "not a regular file"));
        }
        self.inner
            .import_stream(&mut file, meta.len(), path, progress)
    }
}

impl Inner {
    pub(crate) fn import_stream(
        self: &Arc<Self>,
        src: &mut dyn Read,
        size: u64,
        source: &Path,
        progress: &mut dyn FnMut(u64),
    ) -> Result<Imported, BlobError> {
        self.check_size(size)?;
        let reservation = self.reserve(footprint(size))?;
        let data = TempFile::create(
            &self.tmp_dir,
            "import-",
            ".data",
            "temporary blob file",
            true,
        )?;
        let ob = TempFile::create(
            &self.tmp_dir,
            "import-",
            ".obao",
            "temporary outboard",
            true,
        )?;

        let mut data_w = BufWriter::with_capacity(DATA_BUFFER, &data.file);
        let mut ob_w = BufWriter::with_capacity(OUTBOARD_BUFFER, &ob.file);
        let mut tee = Tee {
            src,
            sink: &mut data_w,
            done: 0,
            progress,
            failed: None,
        };
        let result = outboard_post_order((&mut tee).take(size), tree(size), &mut ob_w);
        let (done, failed) = (tee.done, tee.failed);
        let root = match (result, failed) {
            (Ok(root), _) => root,
            (Err(e), Some(Side::Source)) => {
                return Err(BlobError::io("read", "file to import", source)(e));
            }
            (Err(e), Some(Side::Sink)) => {
                return Err(BlobError::io("write", "temporary blob file", &data.path)(e));
            }
            (Err(e), None) if e.kind() == io::ErrorKind::UnexpectedEof => {
                return Err(BlobError::bad_path(
                    source,
                    format!(
                        "it changed while it was imported: it ended after {done} of {size} bytes"
                    ),
                ));
            }
            (Err(e), None) => {
                return Err(BlobError::io("write", "temporary outboard", &ob.path)(e));
            }
        };
        let mut extra = [0u8; 1];
        if tee
            .src
            .read(&mut extra)
            .map_err(BlobError::io("read", "file to import", source))?
            > 0
        {
            return Err(BlobError::bad_path(
                source,
                format!("it changed while it was imported: it grew past {size} bytes"),
            ));
        }
        data_w
            .flush()
            .map_err(BlobError::io("write", "temporary blob file", &data.path))?;
        drop(data_w);
        ob_w.flush()
            .map_err(BlobError::io("write", "temporary outboard", &ob.path))?;
        drop(ob_w);
        data.sync()?;
        ob.sync()?;

        let hash = Hash::from(root);
        let lease = new_lease(self, vec![hash]);
        self.commit_complete(hash, size, data, ob, reservation)?;
        Ok(Imported { hash, size, lease })
    }

    /// Moves a verified, synced data file and outboard into place and records the blob as
    /// complete — unless it is complete already, in which case the temporary files are dropped.
    /// The caller holds a lease on `hash`.
    fn commit_complete(
        &self,
        hash: Hash,
        size: u64,
        data: TempFile,
        ob: TempFile,
        reservation: super::Reservation<'_>,
    ) -> Result<(), BlobError> {
        let _catalog = self.catalog();
        let existing = self.entry(&hash)?;
        if let Some(Entry {
            state: State::Complete,
            ..
        }) = existing
        {
            return Ok(());
        }
        let data_path = self.data_path(&hash);
        let ob_path = self.outboard_path(&hash);
        let moved = data.persist(&data_path).and_then(|()| ob.persist(&ob_path));
        if let Err(e) = moved {
            if existing.is_none() {
                // Nothing refers to these names: don't leave half a blob behind.
                let _ = std::fs::remove_file(&data_path);
            }
            return Err(e);
        }
        sync_dir(&self.data_dir);
        sync_dir(&self.outboard_dir);
        let write = || -> Result<(), DbError> {
            let txn = self.db.begin_write()?;
            {
                let mut blobs = txn.open_table(BLOBS)?;
                let entry = Entry {
                    size,
                    state: State::Complete,
                };
                blobs.insert(&hash.as_bytes()[..], &meta::encode_entry(&entry)[..])?;
                meta::delete_groups(&mut txn.open_table(GROUPS)?, &hash)?;
            }
            txn.commit()?;
            Ok(())
        };
        write().map_err(self.db_err("record an imported blob"))?;
        reservation.settle(footprint(size), existing.map_or(0, |e| footprint(e.size)));
        Ok(())
    }
}

//! Replicated documents, on redb.
//!
//! [`RedbDocStore`] implements spore-core's [`DocStore`], the persistence of document sync
//! ([`DocSync`](spore_core::doc::sync::DocSync)): a node keeps its documents' access lists and
//! change logs in one redb database, `<data-dir>/`[`DOCS_FILE`] (`docs.redb`, mode 0600),
//! opened with [`RedbDocStore::open`]. Hand it to
//! [`DocSync::with_store`](spore_core::doc::sync::DocSync::with_store), then call
//! [`DocSync::load`](spore_core::doc::sync::DocSync::load) to restore the documents.
//!
//! ## Layout
//!
//! | table | key | value |
//! |---|---|---|
//! | `doc_access_v1` | document id (32 bytes) | postcard [`Access`]: the newest version stored |
//! | `doc_changes_v1` | document id ‖ change id (64 bytes) | the change's encoding ([`Change::encode`], postcard) |
//! | `doc_checkpoint_v1` | document id (32 bytes) | postcard ([`Checkpoint`], state bytes): the newest checkpoint and the state it names |
//!
//! A change's id is the BLAKE3 hash of its encoding ([`Change::id`]), so a change saved twice
//! is one entry, and a value that does not hash to its key is known to be damaged.
//!
//! A checkpoint replaces the changes it covers: [`save_checkpoint`](DocStore::save_checkpoint)
//! stores it (only if newer than the stored one, only if it carries the owner's signature and
//! its state hashes as it says) and deletes the covered changes in the same transaction.
//!
//! Only one access list is kept per document: [`save_access`](DocStore::save_access) replaces
//! the stored one only with a higher [`version`](Access::version), so an older list arriving
//! late never undoes a newer one. Access lists are verified (the owner's signature) before
//! they are stored. Changes are stored as given (document sync verified them), but only for a
//! document whose access list is stored.
//!
//! ## Durability
//!
//! Unlike DHT records, documents may exist nowhere else, so every write is committed with
//! redb's `Immediate` durability: when `save_access`, `save_changes` or `remove` returns `Ok`,
//! the write is on disk (fsynced). Each call is one transaction: all of a `save_changes` batch
//! is stored or none of it, and `remove` deletes a document's access list and all its changes
//! together.
//!
//! ## Loading
//!
//! [`load`](DocStore::load) reads the whole file and returns every document with its changes,
//! checking everything, since the file could be damaged: an access list must decode, belong to
//! the document it is stored under and carry its owner's valid signature; a change must hash
//! to its key, decode, belong to the document and [verify](Change::verify) against the
//! document's access list (its author's signature, bounds, revocation). What fails is skipped,
//! never panicked on, and reported in [`RedbDocStore::last_load`] (counts, and the first few
//! reasons). The changes of a document whose access list is skipped are skipped too.
//!
//! Loading never writes: skipped entries stay in the file (a damaged file is left as found, and
//! data a newer version of spore could read is not destroyed by an older one). They are
//! deleted with their document by `remove`, and a damaged access list is replaced by the next
//! `save_access` of that document. Every change is verified twice on a restart — here and again
//! when `DocSync` applies it — an Ed25519 verification each.
//!
//! ## Limits
//!
//! [`DocLimits`] bound the file: documents ([`max_docs`](DocLimits::max_docs), default 1024,
//! document sync's own default), and per document changes
//! ([`max_changes_per_doc`](DocLimits::max_changes_per_doc), default 2²⁰) and bytes of changes
//! ([`max_bytes_per_doc`](DocLimits::max_bytes_per_doc), default 128 MiB: twice a document's
//! default quota, because changes waiting for their predecessors are stored too). A save that
//! would exceed a limit stores nothing and fails with a [`DocsError`] naming the limit (through
//! the trait, a [`StoreError`] with the same message). The limits are enforced on what the
//! file holds, counted again at every [`open`](RedbDocStore::open), so they hold across
//! restarts; opening a file that already exceeds smaller limits keeps its contents (only new
//! saves are refused).
//!
//! ## Example
//!
//! ```
//! use spore_core::doc::sync::DocStore;
//! use spore_core::doc::{Document, Edit, Limits, Value};
//! use spore_core::identity::Keypair;
//! use spore_store::docs::{DOCS_FILE, DocLimits, RedbDocStore};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let tmp = tempfile::tempdir()?;
//! let path = tmp.path().join(DOCS_FILE);
//! let owner = Keypair::from_secret_bytes([1; 32]);
//! let mut doc = Document::create(&owner, 1, Limits::default());
//! let change = doc.change(&owner, vec![Edit::Set("title".into(), Value::Str("hi".into()))])?;
//!
//! let mut store = RedbDocStore::open(&path, DocLimits::default())?;
//! store.save_access(doc.access())?;
//! store.save_changes(&doc.id(), &[change.clone()])?;
//! drop(store);
//!
//! let mut store = RedbDocStore::open(&path, DocLimits::default())?;
//! let docs = store.load()?;
//! assert_eq!(docs, vec![(doc.access().clone(), vec![change])]);
//! assert_eq!(store.last_load().skipped(), 0);
//! # Ok(())
//! # }
//! ```

use std::collections::{BTreeMap, btree_map};
use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use redb::{Database, Durability, ReadableTable, ReadableTableMetadata, TableDefinition};
use spore_core::doc::reconcile::Id;
use spore_core::doc::sync::{DocStore, StoreError};
use spore_core::doc::{Access, Change, Checkpoint, DocId};

/// Name of the document database in the data directory.
pub const DOCS_FILE: &str = "docs.redb";

/// redb's page cache for this database. Documents are read once, at load, and then only
/// written, so a small cache will do (redb's default would let it grow to 1 GiB).
const CACHE_BYTES: usize = 16 << 20;

/// How many reasons [`LoadReport::notes`] keeps.
const MAX_NOTES: usize = 16;

type BytesTable = TableDefinition<'static, &'static [u8], &'static [u8]>;

/// document id (32 bytes) → postcard [`Access`].
const ACCESS: BytesTable = TableDefinition::new("doc_access_v1");
/// document id ‖ change id (64 bytes) → [`Change::encode`].
const CHANGES: BytesTable = TableDefinition::new("doc_changes_v1");
/// document id (32 bytes) → postcard ([`Checkpoint`], state).
const CHECKPOINTS: BytesTable = TableDefinition::new("doc_checkpoint_v1");

/// Bounds of a [`RedbDocStore`]. See the [module docs](self).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DocLimits {
    /// Most documents stored. Default 1024 (document sync's own default
    /// [`Config::max_docs`](spore_core::doc::sync::Config::max_docs)).
    pub max_docs: usize,
    /// Most changes stored per document. Default 1 048 576 (2²⁰).
    pub max_changes_per_doc: usize,
    /// Most bytes of encoded changes stored per document. Default 128 MiB: twice a document's
    /// default [`quota_bytes`](spore_core::doc::Limits::quota_bytes), since changes waiting for
    /// their predecessors are stored too.
    pub max_bytes_per_doc: u64,
}

impl Default for DocLimits {
    fn default() -> Self {
        Self {
            max_docs: 1024,
            max_changes_per_doc: 1 << 20,
            max_bytes_per_doc: 128 << 20,
        }
    }
}

/// What went wrong with the document database.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DocsError {
    /// The database file could not be opened or created.
    #[error("cannot open document database {}: {reason}", path.display())]
    Open {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A read or write failed.
    #[error("document database: cannot {action}: {reason}")]
    Database {
        /// What we were doing.
        action: &'static str,
        /// Why it failed.
        reason: String,
    },
    /// A new document would exceed [`DocLimits::max_docs`].
    #[error(
        "document database holds {limit} documents, the most DocLimits::max_docs allows; \
         cannot store document {doc}"
    )]
    TooManyDocs {
        /// The document refused.
        doc: DocId,
        /// The limit.
        limit: usize,
    },
    /// Changes would exceed [`DocLimits::max_changes_per_doc`].
    #[error(
        "document {doc} would hold {would} changes, over the limit of {limit} \
         (DocLimits::max_changes_per_doc); none of the {new} new ones were stored"
    )]
    TooManyChanges {
        /// The document.
        doc: DocId,
        /// How many changes it would hold.
        would: u64,
        /// How many of the changes given were new.
        new: usize,
        /// The limit.
        limit: usize,
    },
    /// Changes would exceed [`DocLimits::max_bytes_per_doc`].
    #[error(
        "document {doc} would hold {would} bytes of changes, over the limit of {limit} \
         (DocLimits::max_bytes_per_doc); none of the {new} new changes were stored"
    )]
    TooManyBytes {
        /// The document.
        doc: DocId,
        /// How many bytes it would hold.
        would: u64,
        /// How many of the changes given were new.
        new: usize,
        /// The limit.
        limit: u64,
    },
    /// Changes of a document whose access list is not stored.
    #[error("changes for document {doc} before its access list")]
    NoAccess {
        /// The document.
        doc: DocId,
    },
    /// A change given for another document than the one named.
    #[error("a change of document {found} given as one of document {doc}")]
    WrongDocument {
        /// The document named.
        doc: DocId,
        /// The change's document.
        found: DocId,
    },
    /// An access list that does not verify.
    #[error("access list of document {doc} refused: {reason}")]
    BadAccess {
        /// The document.
        doc: DocId,
        /// Why.
        reason: String,
    },
    /// A checkpoint that is not the owner's or whose state does not match it.
    #[error("checkpoint of document {doc} refused: {reason}")]
    BadCheckpoint {
        /// The document.
        doc: DocId,
        /// Why.
        reason: String,
    },
}

impl From<DocsError> for StoreError {
    fn from(e: DocsError) -> Self {
        StoreError(e.to_string())
    }
}

/// Any redb error, boxed: redb's own error type is large, and this one travels through every
/// `?` of a transaction.
#[derive(Debug)]
struct DbError(Box<redb::Error>);

impl<E: Into<redb::Error>> From<E> for DbError {
    fn from(e: E) -> Self {
        DbError(Box::new(e.into()))
    }
}

fn db_error(action: &'static str) -> impl FnOnce(DbError) -> DocsError {
    move |e| DocsError::Database {
        action,
        reason: e.0.to_string(),
    }
}

/// A write that can fail on the database or on a rule of the store.
enum TxError {
    Db(DbError),
    Refused(DocsError),
}

impl<E: Into<redb::Error>> From<E> for TxError {
    fn from(e: E) -> Self {
        TxError::Db(DbError(Box::new(e.into())))
    }
}

fn tx_error(action: &'static str) -> impl FnOnce(TxError) -> DocsError {
    move |e| match e {
        TxError::Db(e) => db_error(action)(e),
        TxError::Refused(e) => e,
    }
}

/// What one document occupies in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DocUsage {
    /// Change entries stored (including any damaged ones).
    pub changes: u64,
    /// Bytes of their values.
    pub bytes: u64,
}

/// What the last [`load`](DocStore::load) returned and skipped.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LoadReport {
    /// Documents returned.
    pub docs: usize,
    /// Changes returned.
    pub changes: usize,
    /// Access-list entries skipped: undecodable, stored under another document's id, or not
    /// signed by the owner. Their documents are not returned.
    pub skipped_docs: usize,
    /// Change entries skipped: a malformed key, no valid access list for the document, a value
    /// that does not hash to its key or does not decode, or a change that does not verify.
    pub skipped_changes: usize,
    /// Checkpoints not returned: undecodable, not the owner's, or with a state that does not
    /// match. The document's changes beyond it are returned; a replica then fetches the
    /// state again from its peers.
    pub skipped_checkpoints: usize,
    /// Why, for the first few entries skipped (at most 16), to log.
    pub notes: Vec<String>,
}

impl LoadReport {
    /// Entries skipped, access lists and changes.
    pub fn skipped(&self) -> usize {
        self.skipped_docs + self.skipped_changes + self.skipped_checkpoints
    }

    fn note(&mut self, note: impl FnOnce() -> String) {
        if self.notes.len() < MAX_NOTES {
            self.notes.push(note());
        }
    }

    fn skip_doc(&mut self, note: impl FnOnce() -> String) {
        self.skipped_docs += 1;
        self.note(note);
    }

    fn skip_change(&mut self, note: impl FnOnce() -> String) {
        self.skipped_changes += 1;
        self.note(note);
    }
}

fn change_key(doc: &DocId, id: &Id) -> [u8; 64] {
    let mut k = [0u8; 64];
    k[..32].copy_from_slice(&doc.0);
    k[32..].copy_from_slice(id);
    k
}

fn doc_of_key(key: &[u8]) -> Option<DocId> {
    <[u8; 32]>::try_from(key.get(..32)?).ok().map(DocId)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The stored access list under `key`, if it decodes, belongs there and verifies.
fn check_access(key: &[u8], value: &[u8]) -> Result<Access, String> {
    let doc = <[u8; 32]>::try_from(key)
        .map(DocId)
        .map_err(|_| format!("access key {} is not 32 bytes", hex(key)))?;
    let access: Access = postcard::from_bytes(value)
        .map_err(|e| format!("access list of {doc} does not decode: {e}"))?;
    if access.doc() != doc {
        return Err(format!(
            "access list stored as {doc} belongs to {}",
            access.doc()
        ));
    }
    access
        .verify()
        .map_err(|e| format!("access list of {doc}: {e}"))?;
    Ok(access)
}

/// The stored change under `key` (whose document is `doc`), if it is the change its key
/// names, belongs to `doc` and verifies against `access`.
fn check_change(key: &[u8], value: &[u8], doc: &DocId, access: &Access) -> Result<Change, String> {
    let id: Id = key
        .get(32..)
        .and_then(|id| id.try_into().ok())
        .ok_or_else(|| format!("change key {} is not 64 bytes", hex(key)))?;
    let short = hex(&id[..8]);
    let change: Change = postcard::from_bytes(value)
        .map_err(|e| format!("change {short}… of {doc} does not decode: {e}"))?;
    if change.id() != id {
        return Err(format!("change {short}… of {doc} does not match its id"));
    }
    if change.doc() != *doc {
        return Err(format!(
            "change {short}… stored under {doc} belongs to {}",
            change.doc()
        ));
    }
    change
        .verify(access)
        .map_err(|e| format!("change {short}… of {doc}: {e}"))?;
    Ok(change)
}

/// Checks a checkpoint against its document's access list (the owner's signature) and its
/// state against the checkpoint (size and hash).
fn check_checkpoint(cp: &Checkpoint, state: &[u8], access: &Access) -> Result<(), String> {
    cp.verify(access).map_err(|e| e.to_string())?;
    if !cp.matches(state) {
        return Err("the state does not match the checkpoint".into());
    }
    Ok(())
}

/// The keys of `doc`'s change entries (any key that starts with its id).
fn change_keys_of(
    table: &impl ReadableTable<&'static [u8], &'static [u8]>,
    doc: &DocId,
) -> Result<Vec<Vec<u8>>, DbError> {
    let mut keys = Vec::new();
    for entry in table.range(&doc.0[..]..)? {
        let (k, _) = entry?;
        if !k.value().starts_with(&doc.0) {
            break;
        }
        keys.push(k.value().to_vec());
    }
    Ok(keys)
}

/// Replicated documents on redb. See the [module docs](self).
#[derive(Debug)]
pub struct RedbDocStore {
    db: Database,
    path: PathBuf,
    limits: DocLimits,
    /// What each document's change entries occupy, counted at open and kept up to date after
    /// every commit. Documents with no change entry may be missing.
    usage: BTreeMap<DocId, DocUsage>,
    last_load: LoadReport,
}

impl RedbDocStore {
    /// Opens (creating if missing, mode 0600) the document database at `path` — for a node,
    /// `<data-dir>/`[`DOCS_FILE`] — creating its tables, and counts what each document holds
    /// for `limits`. Nothing is verified yet: [`load`](DocStore::load) does that.
    ///
    /// A process can have a database open once: a second `open` of the same file fails until
    /// the first store is dropped.
    pub fn open(path: &Path, limits: DocLimits) -> Result<RedbDocStore, DocsError> {
        let open_error = |reason: String| DocsError::Open {
            path: path.to_path_buf(),
            reason,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(|e| open_error(e.to_string()))?;
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create_file(file)
            .map_err(|e| open_error(e.to_string()))?;
        let mut store = RedbDocStore {
            db,
            path: path.to_path_buf(),
            limits,
            usage: BTreeMap::new(),
            last_load: LoadReport::default(),
        };
        store
            .count()
            .map_err(db_error("count the stored changes"))?;
        Ok(store)
    }

    /// Creates missing tables and counts every document's change entries.
    fn count(&mut self) -> Result<(), DbError> {
        let txn = self.db.begin_write()?;
        {
            txn.open_table(ACCESS)?;
            txn.open_table(CHECKPOINTS)?;
            let changes = txn.open_table(CHANGES)?;
            for entry in changes.iter()? {
                let (k, v) = entry?;
                if let Some(doc) = doc_of_key(k.value()) {
                    let u = self.usage.entry(doc).or_default();
                    u.changes += 1;
                    u.bytes += v.value().len() as u64;
                }
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The limits the store enforces.
    pub fn limits(&self) -> &DocLimits {
        &self.limits
    }

    /// What `doc`'s changes occupy in the file.
    pub fn usage(&self, doc: &DocId) -> DocUsage {
        self.usage.get(doc).copied().unwrap_or_default()
    }

    /// How many documents (access-list entries) the file holds.
    pub fn len(&self) -> Result<usize, DocsError> {
        let read = || -> Result<u64, DbError> {
            let txn = self.db.begin_read()?;
            Ok(txn.open_table(ACCESS)?.len()?)
        };
        read()
            .map(|n| usize::try_from(n).unwrap_or(usize::MAX))
            .map_err(db_error("count the documents"))
    }

    /// Whether the file holds no document.
    pub fn is_empty(&self) -> Result<bool, DocsError> {
        self.len().map(|n| n == 0)
    }

    /// What the last [`load`](DocStore::load) returned and skipped (empty before the first).
    pub fn last_load(&self) -> &LoadReport {
        &self.last_load
    }

    /// Stores `access` unless the stored access list of its document is as new (an equal or
    /// higher version); returns whether it was stored. Refuses an access list that does not
    /// verify, and a new document beyond [`DocLimits::max_docs`]. Durable on return.
    pub fn put_access(&mut self, access: &Access) -> Result<bool, DocsError> {
        let doc = access.doc();
        access.verify().map_err(|e| DocsError::BadAccess {
            doc,
            reason: e.to_string(),
        })?;
        let bytes = postcard::to_allocvec(access).map_err(|e| DocsError::BadAccess {
            doc,
            reason: format!("does not encode: {e}"),
        })?;
        let write = || -> Result<bool, TxError> {
            let mut txn = self.db.begin_write()?;
            txn.set_durability(Durability::Immediate);
            {
                let mut table = txn.open_table(ACCESS)?;
                let old = table.get(&doc.0[..])?.map(|v| v.value().to_vec());
                match old {
                    // A damaged entry is replaced; a valid one only by a newer version.
                    Some(old) => {
                        if let Ok(old) = check_access(&doc.0, &old)
                            && old.version() >= access.version()
                        {
                            return Ok(false);
                        }
                    }
                    None => {
                        if table.len()? >= self.limits.max_docs as u64 {
                            return Err(TxError::Refused(DocsError::TooManyDocs {
                                doc,
                                limit: self.limits.max_docs,
                            }));
                        }
                    }
                }
                table.insert(&doc.0[..], &bytes[..])?;
            }
            txn.commit()?;
            Ok(true)
        };
        write().map_err(tx_error("store an access list"))
    }

    /// Stores the changes of `doc` it does not hold yet (by id), all in one transaction, durable
    /// on return; returns how many were new. Refuses the whole batch if `doc`'s access list is
    /// not stored, if a change belongs to another document, or if the new changes would take
    /// the document over [`DocLimits::max_changes_per_doc`] or
    /// [`DocLimits::max_bytes_per_doc`].
    pub fn put_changes(&mut self, doc: &DocId, changes: &[Change]) -> Result<usize, DocsError> {
        if let Some(c) = changes.iter().find(|c| c.doc() != *doc) {
            return Err(DocsError::WrongDocument {
                doc: *doc,
                found: c.doc(),
            });
        }
        if changes.is_empty() {
            return Ok(0);
        }
        let given: BTreeMap<Id, Vec<u8>> = changes.iter().map(|c| (c.id(), c.encode())).collect();
        let before = self.usage(doc);
        let limits = self.limits;
        let write = || -> Result<DocUsage, TxError> {
            let mut txn = self.db.begin_write()?;
            txn.set_durability(Durability::Immediate);
            let added = {
                if txn.open_table(ACCESS)?.get(&doc.0[..])?.is_none() {
                    return Err(TxError::Refused(DocsError::NoAccess { doc: *doc }));
                }
                let mut table = txn.open_table(CHANGES)?;
                let mut fresh = Vec::with_capacity(given.len());
                for (id, bytes) in &given {
                    let key = change_key(doc, id);
                    if table.get(&key[..])?.is_none() {
                        fresh.push((key, bytes));
                    }
                }
                let added = DocUsage {
                    changes: fresh.len() as u64,
                    bytes: fresh.iter().map(|(_, b)| b.len() as u64).sum(),
                };
                let would = before.changes + added.changes;
                if would > limits.max_changes_per_doc as u64 {
                    return Err(TxError::Refused(DocsError::TooManyChanges {
                        doc: *doc,
                        would,
                        new: fresh.len(),
                        limit: limits.max_changes_per_doc,
                    }));
                }
                let would = before.bytes + added.bytes;
                if would > limits.max_bytes_per_doc {
                    return Err(TxError::Refused(DocsError::TooManyBytes {
                        doc: *doc,
                        would,
                        new: fresh.len(),
                        limit: limits.max_bytes_per_doc,
                    }));
                }
                for (key, bytes) in &fresh {
                    table.insert(&key[..], &bytes[..])?;
                }
                added
            };
            if added.changes > 0 {
                txn.commit()?;
            }
            Ok(added)
        };
        let added = write().map_err(tx_error("store changes"))?;
        if added.changes > 0 {
            let u = self.usage.entry(*doc).or_default();
            u.changes += added.changes;
            u.bytes += added.bytes;
        }
        Ok(added.changes as usize)
    }

    /// Deletes `doc`'s access list and all its changes, in one transaction, durable on return;
    /// returns whether anything was stored.
    pub fn remove_doc(&mut self, doc: &DocId) -> Result<bool, DocsError> {
        let write = || -> Result<bool, DbError> {
            let mut txn = self.db.begin_write()?;
            txn.set_durability(Durability::Immediate);
            let found = {
                let mut access = txn.open_table(ACCESS)?;
                let mut changes = txn.open_table(CHANGES)?;
                txn.open_table(CHECKPOINTS)?.remove(&doc.0[..])?;
                let had_access = access.remove(&doc.0[..])?.is_some();
                let keys = change_keys_of(&changes, doc)?;
                for k in &keys {
                    changes.remove(&k[..])?;
                }
                had_access || !keys.is_empty()
            };
            if found {
                txn.commit()?;
            }
            Ok(found)
        };
        let found = write().map_err(db_error("remove a document"))?;
        self.usage.remove(doc);
        Ok(found)
    }

    /// Stores `checkpoint` with its `state` if newer than the stored checkpoint of `doc`, and
    /// deletes the changes it covers, in one transaction, durable on return; returns how many
    /// changes were deleted (`None` if the stored checkpoint was as new). Refuses a
    /// checkpoint of a document whose access list is not stored, one not signed by the owner,
    /// and a state that does not match it.
    pub fn put_checkpoint(
        &mut self,
        doc: &DocId,
        checkpoint: &Checkpoint,
        state: &[u8],
    ) -> Result<Option<u64>, DocsError> {
        let refused =
            |reason: String| TxError::Refused(DocsError::BadCheckpoint { doc: *doc, reason });
        let value =
            postcard::to_allocvec(&(checkpoint, state)).map_err(|e| DocsError::BadCheckpoint {
                doc: *doc,
                reason: format!("does not encode: {e}"),
            })?;
        let write = || -> Result<Option<DocUsage>, TxError> {
            let mut txn = self.db.begin_write()?;
            txn.set_durability(Durability::Immediate);
            let dropped = {
                let access = match txn.open_table(ACCESS)?.get(&doc.0[..])? {
                    Some(v) => check_access(&doc.0, v.value()).map_err(refused)?,
                    None => return Err(TxError::Refused(DocsError::NoAccess { doc: *doc })),
                };
                check_checkpoint(checkpoint, state, &access).map_err(refused)?;
                let mut table = txn.open_table(CHECKPOINTS)?;
                let stored = table.get(&doc.0[..])?.map(|v| v.value().to_vec());
                if let Some(old) =
                    stored.and_then(|v| postcard::from_bytes::<(Checkpoint, Vec<u8>)>(&v).ok())
                    && old.0.number() >= checkpoint.number()
                {
                    return Ok(None);
                }
                table.insert(&doc.0[..], &value[..])?;
                let mut changes = txn.open_table(CHANGES)?;
                let mut dropped = DocUsage::default();
                let keys = change_keys_of(&changes, doc).map_err(TxError::Db)?;
                for key in keys {
                    let covered = changes.get(&key[..])?.and_then(|v| {
                        let c: Change = postcard::from_bytes(v.value()).ok()?;
                        (c.seq() <= checkpoint.covers_of(c.author()))
                            .then_some(v.value().len() as u64)
                    });
                    if let Some(bytes) = covered {
                        changes.remove(&key[..])?;
                        dropped.changes += 1;
                        dropped.bytes += bytes;
                    }
                }
                dropped
            };
            txn.commit()?;
            Ok(Some(dropped))
        };
        let Some(dropped) = write().map_err(tx_error("store a checkpoint"))? else {
            return Ok(None);
        };
        if let Some(u) = self.usage.get_mut(doc) {
            u.changes -= dropped.changes.min(u.changes);
            u.bytes -= dropped.bytes.min(u.bytes);
        }
        Ok(Some(dropped.changes))
    }

    /// The stored checkpoint of `doc` and its state, if there is one and it checks out against
    /// the stored access list (a damaged one is reported in [`last_load`](Self::last_load) and
    /// not returned).
    pub fn get_checkpoint(
        &mut self,
        doc: &DocId,
    ) -> Result<Option<(Checkpoint, Vec<u8>)>, DocsError> {
        // The stored checkpoint and access list (empty if missing).
        let read = || -> Result<[Vec<u8>; 2], DbError> {
            let txn = self.db.begin_read()?;
            let get = |table: BytesTable| -> Result<Vec<u8>, DbError> {
                let v = txn.open_table(table)?.get(&doc.0[..])?;
                Ok(v.map(|v| v.value().to_vec()).unwrap_or_default())
            };
            Ok([get(CHECKPOINTS)?, get(ACCESS)?])
        };
        let [value, access] = read().map_err(db_error("read a checkpoint"))?;
        if value.is_empty() {
            return Ok(None);
        }
        let checked = || -> Result<(Checkpoint, Vec<u8>), String> {
            let access = check_access(&doc.0, &access)?;
            let (cp, state): (Checkpoint, Vec<u8>) = postcard::from_bytes(&value)
                .map_err(|e| format!("checkpoint of {doc} does not decode: {e}"))?;
            check_checkpoint(&cp, &state, &access)?;
            Ok((cp, state))
        };
        match checked() {
            Ok(found) => Ok(Some(found)),
            Err(reason) => {
                self.last_load.skipped_checkpoints += 1;
                self.last_load
                    .note(|| format!("checkpoint of {doc}: {reason}"));
                Ok(None)
            }
        }
    }

    /// Reads and checks every document; see the [module docs](self#loading).
    fn read_all(&self, report: &mut LoadReport) -> Result<Vec<(Access, Vec<Change>)>, DbError> {
        let txn = self.db.begin_read()?;
        let access_table = txn.open_table(ACCESS)?;
        let changes_table = txn.open_table(CHANGES)?;
        let mut docs: BTreeMap<DocId, (Access, Vec<Change>)> = BTreeMap::new();
        for entry in access_table.iter()? {
            let (k, v) = entry?;
            match check_access(k.value(), v.value()) {
                Ok(access) => {
                    docs.insert(access.doc(), (access, Vec::new()));
                }
                Err(reason) => report.skip_doc(|| reason),
            }
        }
        for entry in changes_table.iter()? {
            let (k, v) = entry?;
            let key = k.value();
            let Some(doc) = doc_of_key(key) else {
                report.skip_change(|| format!("change key {} is not 64 bytes", hex(key)));
                continue;
            };
            let btree_map::Entry::Occupied(mut stored) = docs.entry(doc) else {
                report.skip_change(|| format!("change of {doc}, which has no valid access list"));
                continue;
            };
            let (access, changes) = stored.get_mut();
            match check_change(key, v.value(), &doc, access) {
                Ok(change) => changes.push(change),
                Err(reason) => report.skip_change(|| reason),
            }
        }
        report.docs = docs.len();
        report.changes = docs.values().map(|(_, c)| c.len()).sum();
        Ok(docs.into_values().collect())
    }
}

impl DocStore for RedbDocStore {
    /// Every document that verifies, with its changes that verify, in document id order (the
    /// changes in id order); what was skipped is in [`RedbDocStore::last_load`].
    fn load(&mut self) -> Result<Vec<(Access, Vec<Change>)>, StoreError> {
        let mut report = LoadReport::default();
        let docs = self
            .read_all(&mut report)
            .map_err(db_error("load documents"))?;
        self.last_load = report;
        Ok(docs)
    }

    fn save_access(&mut self, access: &Access) -> Result<(), StoreError> {
        self.put_access(access)?;
        Ok(())
    }

    fn save_changes(&mut self, doc: &DocId, changes: &[Change]) -> Result<(), StoreError> {
        self.put_changes(doc, changes)?;
        Ok(())
    }

    fn save_checkpoint(
        &mut self,
        doc: &DocId,
        checkpoint: &Checkpoint,
        state: &[u8],
    ) -> Result<(), StoreError> {
        self.put_checkpoint(doc, checkpoint, state)?;
        Ok(())
    }

    fn load_checkpoint(
        &mut self,
        doc: &DocId,
    ) -> Result<Option<(Checkpoint, Vec<u8>)>, StoreError> {
        Ok(self.get_checkpoint(doc)?)
    }

    fn remove(&mut self, doc: &DocId) -> Result<(), StoreError> {
        self.remove_doc(doc)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests;

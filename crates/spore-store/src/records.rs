//! DHT records and the peer book, on redb.
//!
//! A node keeps both in one redb database, `<data-dir>/`[`RECORDS_FILE`] (`records.redb`,
//! mode 0600), opened with [`RedbStore::open`].
//!
//! ## The record store
//!
//! [`RedbStore`] implements spore-core's [`RecordStore`], so the Kademlia state machine uses it
//! exactly as it uses the in-memory store in tests and the simulator. It *is* that in-memory
//! store ([`MemoryStore`]) plus a write-through copy on disk:
//!
//! - reads are answered from memory, without touching the disk;
//! - every change goes to memory first, where the limits, quotas and conflict rules are
//!   enforced (one implementation of them, not two), then to redb in one transaction holding
//!   the new record and every record the change dropped (expired ones, a displaced provider);
//! - [`RedbStore::open`] loads the file back into memory through the same `put_*` calls, so a
//!   restart drops records that expired meanwhile and applies the limits in force now (which
//!   may be smaller than when the records were written); whatever is dropped is deleted from the
//!   file. Records are not re-verified: they were verified before they were first stored, and
//!   the file is the node's own. Entries that fail to decode are deleted.
//!
//! The in-memory copy costs what the limits allow (by default at most 10 000 values of at most
//! 1 KiB, and as many provider and peer records), which is what makes reads cheap.
//!
//! Records are soft state: their owners republish them. So writes are committed with redb's
//! `Eventual` durability (written, not fsynced on every put), and a failed write is reported as
//! [`StoreError::Backend`] while the record stays in memory: the worst case is a record
//! forgotten at the next restart. Deletions that fail are retried with the next write. The
//! node calls [`RedbStore::sync`] on shutdown to make everything durable.
//!
//! ## The peer book
//!
//! [`PeerBook`]: the signed records of peers this node has talked to, most recently seen first,
//! so that a node that has ever joined can rejoin when every bootstrap node is gone. Bounded
//! ([`DEFAULT_PEER_BOOK_CAPACITY`] entries by default), evicting the least recently seen. Unlike
//! the DHT store it keeps records past their expiry: their addresses are only hints to dial,
//! and the transport authenticates whoever answers.
//!
//! ## Layout
//!
//! | table | key | value |
//! |---|---|---|
//! | `kad_values_v1` | the record's DHT key (32 bytes) | postcard [`ValueRecord`] |
//! | `kad_providers_v1` | content hash ‖ provider id (64 bytes) | postcard [`ProviderRecord`] |
//! | `kad_peers_v1` | peer id (32 bytes) | postcard [`PeerRecord`] |
//! | `peer_book_v1` | peer id (32 bytes) | postcard `(last_seen_micros: u64, PeerRecord)` |
//! | `peer_book_by_time_v1` | last seen, µs, u64 big-endian ‖ peer id (40 bytes) | `()` |
//!
//! ## Example
//!
//! ```
//! use spore_core::identity::Keypair;
//! use spore_core::kad::record::ValueRecord;
//! use spore_core::kad::store::{RecordStore, StoreLimits};
//! use spore_core::time::Instant;
//! use spore_store::records::{RECORDS_FILE, RedbStore};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let tmp = tempfile::tempdir()?;
//! let path = tmp.path().join(RECORDS_FILE);
//! let now = Instant::from_micros(1_700_000_000 * 1_000_000);
//! let key = Keypair::from_secret_bytes([1; 32]);
//! let record = ValueRecord::new(&key, "greeting", &b"hello"[..], 1, 1_700_003_600);
//!
//! let mut store = RedbStore::open(&path, StoreLimits::default(), now)?;
//! store.put_value(record.clone(), now)?;
//! drop(store);
//!
//! let store = RedbStore::open(&path, StoreLimits::default(), now)?;
//! assert_eq!(store.get_value(&record.key(), now), Some(record));
//! # Ok(())
//! # }
//! ```

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{Database, Durability, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::Serialize;
use serde::de::DeserializeOwned;
use spore_core::identity::PeerId;
use spore_core::kad::Key;
use spore_core::kad::record::{PeerRecord, ProviderRecord, ValueRecord};
use spore_core::kad::store::{
    MemoryStore, RecordStore, Removal, StoreCounts, StoreError, StoreLimits,
};
use spore_core::time::Instant;

/// Name of the record database in the data directory.
pub const RECORDS_FILE: &str = "records.redb";

/// Default bound on the [`PeerBook`].
pub const DEFAULT_PEER_BOOK_CAPACITY: usize = 1_000;

/// redb's page cache for this database: ample for the default limits (about 11 MB of values),
/// and a bound, where redb's default would let it grow to 1 GiB.
const CACHE_BYTES: usize = 32 << 20;

type BytesTable = TableDefinition<'static, &'static [u8], &'static [u8]>;

const VALUES: BytesTable = TableDefinition::new("kad_values_v1");
const PROVIDERS: BytesTable = TableDefinition::new("kad_providers_v1");
const PEERS: BytesTable = TableDefinition::new("kad_peers_v1");
const BOOK: BytesTable = TableDefinition::new("peer_book_v1");
const BOOK_BY_TIME: TableDefinition<'static, &'static [u8], ()> =
    TableDefinition::new("peer_book_by_time_v1");

/// What went wrong with the record database.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecordsError {
    /// The database file could not be opened or created.
    #[error("cannot open record database {}: {reason}", path.display())]
    Open {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A read or write failed.
    #[error("record database: cannot {action}: {reason}")]
    Database {
        /// What we were doing.
        action: &'static str,
        /// Why it failed.
        reason: String,
    },
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

fn db_error(action: &'static str) -> impl FnOnce(DbError) -> RecordsError {
    move |e| RecordsError::Database {
        action,
        reason: e.0.to_string(),
    }
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    postcard::to_allocvec(value).map_err(|e| StoreError::Backend(format!("encode: {e}")))
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Option<T> {
    postcard::from_bytes(bytes).ok()
}

fn provider_key(content: &Key, provider: &PeerId) -> [u8; 64] {
    let mut k = [0u8; 64];
    k[..32].copy_from_slice(&content.0);
    k[32..].copy_from_slice(provider.as_bytes());
    k
}

/// A record to write along with a change's removals.
enum Put {
    Value(Key, Vec<u8>),
    Provider(Key, PeerId, Vec<u8>),
    Peer(PeerId, Vec<u8>),
}

/// The DHT record store on redb: a [`MemoryStore`] written through to disk. See the
/// [module docs](self).
#[derive(Debug)]
pub struct RedbStore {
    db: Arc<Database>,
    path: PathBuf,
    index: MemoryStore,
    /// Removals not yet written (a write failed); retried with the next one.
    pending: Vec<Removal>,
    dropped_at_open: usize,
}

impl RedbStore {
    /// Opens (creating if missing, mode 0600) the record database at `path` — for a node,
    /// `<data-dir>/records.redb` — and loads it into memory, dropping records expired at `now`
    /// and records beyond `limits`.
    ///
    /// A process can have a database open once: a second `open` of the same file fails until
    /// the store and every [`PeerBook`] taken from it are dropped.
    pub fn open(path: &Path, limits: StoreLimits, now: Instant) -> Result<RedbStore, RecordsError> {
        let open_error = |reason: String| RecordsError::Open {
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
        let mut store = RedbStore {
            db: Arc::new(db),
            path: path.to_path_buf(),
            index: MemoryStore::new(limits),
            pending: Vec::new(),
            dropped_at_open: 0,
        };
        store.index.track_removals();
        store.load(now).map_err(db_error("load records"))?;
        Ok(store)
    }

    /// Reads every table into the index in key order, then deletes from the file what the
    /// index refused or dropped, in the same transaction (which also creates missing tables).
    fn load(&mut self, now: Instant) -> Result<(), DbError> {
        let txn = self.db.begin_write()?;
        {
            let mut values = txn.open_table(VALUES)?;
            let mut providers = txn.open_table(PROVIDERS)?;
            let mut peers = txn.open_table(PEERS)?;
            txn.open_table(BOOK)?;
            txn.open_table(BOOK_BY_TIME)?;

            // Keys of entries the index refused (or that do not decode), per table.
            let mut refused: [Vec<Vec<u8>>; 3] = Default::default();
            for entry in values.iter()? {
                let (k, v) = entry?;
                let ok = decode::<ValueRecord>(v.value())
                    .filter(|r| r.key().0[..] == *k.value())
                    .is_some_and(|r| self.index.put_value(r, now).is_ok());
                if !ok {
                    refused[0].push(k.value().to_vec());
                }
            }
            for entry in providers.iter()? {
                let (k, v) = entry?;
                let ok = decode::<ProviderRecord>(v.value())
                    .filter(|r| provider_key(&r.key(), r.provider())[..] == *k.value())
                    .is_some_and(|r| self.index.put_provider(r, now).is_ok());
                if !ok {
                    refused[1].push(k.value().to_vec());
                }
            }
            for entry in peers.iter()? {
                let (k, v) = entry?;
                let ok = decode::<PeerRecord>(v.value())
                    .filter(|r| r.peer().as_bytes()[..] == *k.value())
                    .is_some_and(|r| self.index.put_peer(r, now).is_ok());
                if !ok {
                    refused[2].push(k.value().to_vec());
                }
            }

            let removals = self.index.take_removals();
            self.dropped_at_open = refused.iter().map(Vec::len).sum::<usize>() + removals.len();
            let [v, pr, pe] = refused;
            for (table, keys) in [(&mut values, v), (&mut providers, pr), (&mut peers, pe)] {
                for k in keys {
                    table.remove(&k[..])?;
                }
            }
            apply_removals(&removals, &mut values, &mut providers, &mut peers)?;
        }
        txn.commit()?;
        Ok(())
    }

    /// Writes `put` and every removal the index has made since the last write, in one
    /// transaction.
    fn persist(&mut self, put: Option<Put>) -> Result<(), StoreError> {
        self.pending.extend(self.index.take_removals());
        if put.is_none() && self.pending.is_empty() {
            return Ok(());
        }
        let write = || -> Result<(), DbError> {
            let mut txn = self.db.begin_write()?;
            txn.set_durability(Durability::Eventual);
            {
                let mut values = txn.open_table(VALUES)?;
                let mut providers = txn.open_table(PROVIDERS)?;
                let mut peers = txn.open_table(PEERS)?;
                apply_removals(&self.pending, &mut values, &mut providers, &mut peers)?;
                match &put {
                    Some(Put::Value(key, bytes)) => {
                        values.insert(&key.0[..], &bytes[..])?;
                    }
                    Some(Put::Provider(key, provider, bytes)) => {
                        providers.insert(&provider_key(key, provider)[..], &bytes[..])?;
                    }
                    Some(Put::Peer(peer, bytes)) => {
                        peers.insert(&peer.as_bytes()[..], &bytes[..])?;
                    }
                    None => {}
                }
            }
            txn.commit()?;
            Ok(())
        };
        match write() {
            Ok(()) => {
                self.pending.clear();
                Ok(())
            }
            Err(e) => Err(StoreError::Backend(e.0.to_string())),
        }
    }

    /// Makes every write so far durable (an fsync). The node calls it on shutdown.
    pub fn sync(&mut self) -> Result<(), RecordsError> {
        self.persist(None).map_err(|e| RecordsError::Database {
            action: "write records",
            reason: e.to_string(),
        })?;
        let mut txn = self
            .db
            .begin_write()
            .map_err(|e| db_error("sync")(e.into()))?;
        txn.set_durability(Durability::Immediate);
        txn.commit().map_err(|e| db_error("sync")(e.into()))
    }

    /// The peer book kept in the same database, with the default capacity
    /// ([`DEFAULT_PEER_BOOK_CAPACITY`]). Handles are cheap and share the database.
    pub fn peer_book(&self) -> PeerBook {
        PeerBook {
            db: Arc::clone(&self.db),
            capacity: DEFAULT_PEER_BOOK_CAPACITY,
        }
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The limits the store enforces.
    pub fn limits(&self) -> &StoreLimits {
        self.index.limits()
    }

    /// How many stored records [`open`](Self::open) dropped: expired, beyond the limits, or
    /// undecodable.
    pub fn dropped_at_open(&self) -> usize {
        self.dropped_at_open
    }
}

fn apply_removals(
    removals: &[Removal],
    values: &mut redb::Table<'_, &'static [u8], &'static [u8]>,
    providers: &mut redb::Table<'_, &'static [u8], &'static [u8]>,
    peers: &mut redb::Table<'_, &'static [u8], &'static [u8]>,
) -> Result<(), DbError> {
    for removal in removals {
        match removal {
            Removal::Value(key) => {
                values.remove(&key.0[..])?;
            }
            Removal::Provider { key, provider } => {
                providers.remove(&provider_key(key, provider)[..])?;
            }
            Removal::Peer(peer) => {
                peers.remove(&peer.as_bytes()[..])?;
            }
            // A kind of record this version does not persist.
            _ => {}
        }
    }
    Ok(())
}

impl RecordStore for RedbStore {
    fn limits(&self) -> Option<StoreLimits> {
        Some(*self.index.limits())
    }

    fn put_value(&mut self, record: ValueRecord, now: Instant) -> Result<(), StoreError> {
        let put = Put::Value(record.key(), encode(&record)?);
        self.index.put_value(record, now)?;
        self.persist(Some(put))
    }

    fn get_value(&self, key: &Key, now: Instant) -> Option<ValueRecord> {
        self.index.get_value(key, now)
    }

    fn put_provider(&mut self, record: ProviderRecord, now: Instant) -> Result<(), StoreError> {
        let put = Put::Provider(record.key(), *record.provider(), encode(&record)?);
        self.index.put_provider(record, now)?;
        self.persist(Some(put))
    }

    fn providers(&self, key: &Key, now: Instant) -> Vec<ProviderRecord> {
        self.index.providers(key, now)
    }

    fn put_peer(&mut self, record: PeerRecord, now: Instant) -> Result<(), StoreError> {
        let put = Put::Peer(*record.peer(), encode(&record)?);
        self.index.put_peer(record, now)?;
        self.persist(Some(put))
    }

    fn get_peer(&self, peer: &PeerId, now: Instant) -> Option<PeerRecord> {
        self.index.get_peer(peer, now)
    }

    fn expire(&mut self, now: Instant) -> usize {
        let n = self.index.expire(now);
        // A failed deletion stays pending and is retried with the next write; the records are
        // gone from memory either way.
        let _ = self.persist(None);
        n
    }

    fn values(&self) -> Vec<ValueRecord> {
        self.index.values()
    }

    fn provider_records(&self) -> Vec<ProviderRecord> {
        self.index.provider_records()
    }

    fn peer_records(&self) -> Vec<PeerRecord> {
        self.index.peer_records()
    }

    fn len(&self) -> StoreCounts {
        self.index.len()
    }
}

/// The peers this node has talked to, most recently seen first. See the [module docs](self).
///
/// Take one from [`RedbStore::peer_book`]; clones share the database.
#[derive(Debug, Clone)]
pub struct PeerBook {
    db: Arc<Database>,
    capacity: usize,
}

fn time_key(last_seen: u64, peer: &PeerId) -> [u8; 40] {
    let mut k = [0u8; 40];
    k[..8].copy_from_slice(&last_seen.to_be_bytes());
    k[8..].copy_from_slice(peer.as_bytes());
    k
}

impl PeerBook {
    /// The same book, bounded to `capacity` entries instead (the bound applies at the next
    /// [`remember`](Self::remember)).
    pub fn with_capacity(mut self, capacity: usize) -> Self {
        self.capacity = capacity;
        self
    }

    /// The most entries kept.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Notes that this node has just (at `now`) talked to `record`'s peer. The book keeps one
    /// record per peer: this one, unless the one it has
    /// [supersedes](PeerRecord::supersedes) it. When the book is over capacity, the least
    /// recently seen peers are forgotten.
    ///
    /// The caller has verified `record`.
    pub fn remember(&self, record: PeerRecord, now: Instant) -> Result<(), RecordsError> {
        let fail = db_error("remember a peer");
        let peer = *record.peer();
        let write = || -> Result<(), DbError> {
            let mut txn = self.db.begin_write()?;
            txn.set_durability(Durability::Eventual);
            {
                let mut book = txn.open_table(BOOK)?;
                let mut by_time = txn.open_table(BOOK_BY_TIME)?;
                let old = book
                    .get(&peer.as_bytes()[..])?
                    .and_then(|v| decode::<(u64, PeerRecord)>(v.value()));
                let (seen, keep) = match old {
                    Some((old_seen, old_record)) => {
                        by_time.remove(&time_key(old_seen, &peer)[..])?;
                        let keep = if old_record.supersedes(&record) {
                            old_record
                        } else {
                            record
                        };
                        (old_seen.max(now.as_micros()), keep)
                    }
                    None => (now.as_micros(), record),
                };
                let bytes = postcard::to_allocvec(&(seen, &keep))
                    .map_err(|e| redb::Error::Io(std::io::Error::other(e)))?;
                book.insert(&peer.as_bytes()[..], &bytes[..])?;
                by_time.insert(&time_key(seen, &peer)[..], ())?;
                while book.len()? > self.capacity as u64 {
                    let Some(oldest) = by_time.pop_first()?.map(|(k, _)| k.value().to_vec()) else {
                        break;
                    };
                    let (Some(seen), Some(peer)) = (oldest.get(..8), oldest.get(8..)) else {
                        continue;
                    };
                    // Only if the book's entry is the one this index entry points at (it is,
                    // unless an entry was corrupt).
                    let current = book
                        .get(peer)?
                        .and_then(|v| decode::<(u64, PeerRecord)>(v.value()))
                        .is_none_or(|(s, _)| s.to_be_bytes()[..] == *seen);
                    if current {
                        book.remove(peer)?;
                    }
                }
            }
            txn.commit()?;
            Ok(())
        };
        write().map_err(fail)
    }

    /// Up to `n` records, most recently seen first.
    pub fn recent(&self, n: usize) -> Result<Vec<PeerRecord>, RecordsError> {
        let read = || -> Result<Vec<PeerRecord>, DbError> {
            let txn = self.db.begin_read()?;
            let book = txn.open_table(BOOK)?;
            let by_time = txn.open_table(BOOK_BY_TIME)?;
            let mut out = Vec::with_capacity(n.min(self.capacity));
            for entry in by_time.iter()?.rev() {
                if out.len() >= n {
                    break;
                }
                let (k, _) = entry?;
                let (Some(seen), Some(peer)) = (k.value().get(..8), k.value().get(8..)) else {
                    continue;
                };
                // Skip index entries that do not match the book's (left by a corrupt entry).
                if let Some((_, record)) = book
                    .get(peer)?
                    .and_then(|v| decode::<(u64, PeerRecord)>(v.value()))
                    .filter(|(s, _)| s.to_be_bytes()[..] == *seen)
                {
                    out.push(record);
                }
            }
            Ok(out)
        };
        read().map_err(db_error("read the peer book"))
    }

    /// Forgets `peer`; returns whether it was in the book.
    pub fn forget(&self, peer: &PeerId) -> Result<bool, RecordsError> {
        let write = || -> Result<bool, DbError> {
            let mut txn = self.db.begin_write()?;
            txn.set_durability(Durability::Eventual);
            let found = {
                let mut book = txn.open_table(BOOK)?;
                let mut by_time = txn.open_table(BOOK_BY_TIME)?;
                let old = book
                    .remove(&peer.as_bytes()[..])?
                    .map(|v| decode::<(u64, PeerRecord)>(v.value()));
                if let Some(Some((seen, _))) = &old {
                    by_time.remove(&time_key(*seen, peer)[..])?;
                }
                old.is_some()
            };
            txn.commit()?;
            Ok(found)
        };
        write().map_err(db_error("forget a peer"))
    }

    /// How many peers the book holds.
    pub fn len(&self) -> Result<usize, RecordsError> {
        let read = || -> Result<u64, DbError> {
            let txn = self.db.begin_read()?;
            Ok(txn.open_table(BOOK)?.len()?)
        };
        read()
            .map(|n| usize::try_from(n).unwrap_or(usize::MAX))
            .map_err(db_error("read the peer book"))
    }

    /// Whether the book is empty.
    pub fn is_empty(&self) -> Result<bool, RecordsError> {
        self.len().map(|n| n == 0)
    }
}

#[cfg(test)]
mod tests;

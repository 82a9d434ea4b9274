//! The metadata database, `meta.redb`: tables, their encodings and small helpers on them.

use redb::{ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use super::Hash;
use super::bitfield::{Bitfield, PAGE_GROUPS};

pub(crate) type BytesTable = TableDefinition<'static, &'static [u8], &'static [u8]>;

/// hash (32 bytes) → postcard [`Entry`].
pub(crate) const BLOBS: BytesTable = TableDefinition::new("blobs_v1");
/// hash ‖ page number (u32 big-endian) → the page's bits (see [`Bitfield::page_bytes`]). Only
/// for partial blobs.
pub(crate) const GROUPS: BytesTable = TableDefinition::new("blob_groups_v1");
/// pin name → hash (32 bytes).
pub(crate) const PINS: TableDefinition<'static, &'static str, &'static [u8]> =
    TableDefinition::new("pins_v1");
/// hash of a blob known to be a collection manifest → ().
pub(crate) const COLLECTIONS: TableDefinition<'static, &'static [u8], ()> =
    TableDefinition::new("collections_v1");

/// What the store knows of one blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Entry {
    /// Its size in bytes (for a partial blob, the size the download was begun with).
    pub(crate) size: u64,
    pub(crate) state: State,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum State {
    /// Data and outboard are whole and durable.
    Complete,
    /// Some chunk groups are verified (listed in [`GROUPS`]). `size_verified` once the last
    /// group verified: that proves the size.
    Partial { size_verified: bool },
}

/// Any redb error, boxed (redb's error type is large).
#[derive(Debug)]
pub(crate) struct DbError(pub(crate) Box<redb::Error>);

impl<E: Into<redb::Error>> From<E> for DbError {
    fn from(e: E) -> Self {
        DbError(Box::new(e.into()))
    }
}

pub(crate) fn encode_entry(entry: &Entry) -> Vec<u8> {
    // An Entry always encodes: it is a few integers.
    postcard::to_allocvec(entry).unwrap_or_default()
}

pub(crate) fn decode_entry(bytes: &[u8]) -> Option<Entry> {
    postcard::from_bytes(bytes).ok()
}

pub(crate) fn get_entry(
    table: &impl ReadableTable<&'static [u8], &'static [u8]>,
    hash: &Hash,
) -> Result<Option<Entry>, DbError> {
    Ok(table
        .get(&hash.as_bytes()[..])?
        .and_then(|v| decode_entry(v.value())))
}

fn page_key(hash: &Hash, page: u64) -> [u8; 36] {
    let mut k = [0u8; 36];
    k[..32].copy_from_slice(hash.as_bytes());
    // Pages beyond u32 would be blobs over 512 PiB; max_blob_size is far below.
    k[32..].copy_from_slice(&u32::try_from(page).unwrap_or(u32::MAX).to_be_bytes());
    k
}

fn page_range(hash: &Hash) -> ([u8; 36], [u8; 36]) {
    (page_key(hash, 0), page_key(hash, u64::from(u32::MAX)))
}

/// The verified groups of a partial blob of `groups` chunk groups.
pub(crate) fn load_groups(
    table: &impl ReadableTable<&'static [u8], &'static [u8]>,
    hash: &Hash,
    groups: u64,
) -> Result<Bitfield, DbError> {
    let mut bits = Bitfield::new(groups);
    let (lo, hi) = page_range(hash);
    for item in table.range(&lo[..]..=&hi[..])? {
        let (k, v) = item?;
        let key = k.value();
        let page = u32::from_be_bytes([key[32], key[33], key[34], key[35]]);
        bits.apply_page(u64::from(page), v.value());
    }
    Ok(bits)
}

/// Writes the pages of `bits` that hold any of `changed` groups.
pub(crate) fn store_groups(
    table: &mut redb::Table<&'static [u8], &'static [u8]>,
    hash: &Hash,
    bits: &Bitfield,
    changed: &[u64],
) -> Result<(), DbError> {
    let mut pages: Vec<u64> = changed.iter().map(|g| g / PAGE_GROUPS).collect();
    pages.dedup();
    for page in pages {
        let bytes = bits.page_bytes(page);
        let key = page_key(hash, page);
        if bytes.is_empty() {
            table.remove(&key[..])?;
        } else {
            table.insert(&key[..], &bytes[..])?;
        }
    }
    Ok(())
}

/// Writes every page of `bits` (replacing what was stored).
pub(crate) fn replace_groups(
    table: &mut redb::Table<&'static [u8], &'static [u8]>,
    hash: &Hash,
    bits: &Bitfield,
) -> Result<(), DbError> {
    delete_groups(table, hash)?;
    let pages = bits.len().div_ceil(PAGE_GROUPS);
    let all: Vec<u64> = (0..pages).map(|p| p * PAGE_GROUPS).collect();
    store_groups(table, hash, bits, &all)
}

pub(crate) fn delete_groups(
    table: &mut redb::Table<&'static [u8], &'static [u8]>,
    hash: &Hash,
) -> Result<(), DbError> {
    let (lo, hi) = page_range(hash);
    table.retain_in(&lo[..]..=&hi[..], |_, _| false)?;
    Ok(())
}

pub(crate) fn hash_from_key(key: &[u8]) -> Option<Hash> {
    <[u8; 32]>::try_from(key.get(..32)?).ok().map(Hash::from)
}

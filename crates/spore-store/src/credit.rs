//! The credit ledger kept across restarts: per peer, the bytes exchanged with it and its
//! latest signed receipt ([`spore_core::swarm::LedgerEntry`]), in `credits.bin`.
//!
//! The file is the line `spore-ledger-v1`, then the postcard encoding of the entries. It is a
//! node's own bookkeeping, rewritten whole (atomically) when saved; receipts in it are checked
//! again when it is loaded into a node, so a damaged or edited file cannot grant credit.

use std::path::Path;

use spore_core::swarm::LedgerEntry;

use crate::StoreError;
use crate::fsutil::{Overwrite, read_bounded, write_atomic};

/// Name of the ledger file in the data directory.
pub const LEDGER_FILE: &str = "credits.bin";
const WHAT: &str = "credit ledger";
const MAGIC: &[u8] = b"spore-ledger-v1\n";
/// Far more than the swarm's default bound of 4,096 peers takes (about 200 bytes each).
const MAX_LEN: u64 = 16 << 20;

/// Reads the ledger at `path` (empty if the file does not exist).
pub fn load_ledger(path: &Path) -> Result<Vec<LedgerEntry>, StoreError> {
    let Some(bytes) = read_bounded(path, WHAT, MAX_LEN, false)? else {
        return Ok(Vec::new());
    };
    let body = bytes
        .strip_prefix(MAGIC)
        .ok_or_else(|| StoreError::corrupt(WHAT, path, "it does not start with spore-ledger-v1"))?;
    postcard::from_bytes(body).map_err(|e| StoreError::corrupt(WHAT, path, e.to_string()))
}

/// Replaces the ledger at `path` with `entries`.
pub fn save_ledger(path: &Path, entries: &[LedgerEntry]) -> Result<(), StoreError> {
    let mut bytes = MAGIC.to_vec();
    bytes.extend(
        postcard::to_allocvec(entries)
            .map_err(|e| StoreError::corrupt(WHAT, path, format!("cannot encode: {e}")))?,
    );
    write_atomic(path, WHAT, &bytes, Overwrite::Replace)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use spore_core::Keypair;
    use spore_core::swarm::{PeerTotals, Receipt};

    #[test]
    fn a_ledger_survives_a_save_and_load_and_garbage_is_named() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join(LEDGER_FILE);
        assert!(load_ledger(&path).unwrap().is_empty());
        let (me, peer) = (
            Keypair::from_secret_bytes([1; 32]),
            Keypair::from_secret_bytes([2; 32]),
        );
        let entries = vec![LedgerEntry {
            peer: peer.peer_id(),
            totals: PeerTotals {
                uploaded: 5 << 20,
                downloaded: 1 << 20,
                receipted: 4 << 20,
                receipt_sent: 1 << 20,
            },
            receipt: Some(Receipt::new(&peer, me.peer_id(), 4 << 20, 1_000)),
        }];
        save_ledger(&path, &entries).unwrap();
        assert_eq!(load_ledger(&path).unwrap(), entries);
        std::fs::write(&path, b"spore-ledger-v1\n\xff\xff\xff").unwrap();
        let err = load_ledger(&path).unwrap_err().to_string();
        assert!(
            err.contains("credit ledger") && err.contains("corrupt"),
            "{err}"
        );
        std::fs::write(&path, b"something else").unwrap();
        let err = load_ledger(&path).unwrap_err().to_string();
        assert!(err.contains("spore-ledger-v1"), "{err}");
    }
}

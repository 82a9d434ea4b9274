//! The identities a node vouches for, kept across restarts in `vouches.txt`: one peer id per
//! line, in the same form `spore id` prints. Lines starting with `#` and blank lines are
//! ignored, so the file can be edited by hand while no node runs.

use std::collections::BTreeSet;

use spore_core::PeerId;
use spore_core::trust::wot::MAX_VOUCHES;

use crate::fsutil::{Overwrite, read_bounded, write_atomic};
use crate::{DataDir, StoreError};

/// Name of the vouches file in the data directory.
pub const VOUCHES_FILE: &str = "vouches.txt";
const WHAT: &str = "vouches file";
/// A peer id is 52 characters; room for comments besides.
const MAX_LEN: u64 = 64 * 1024;

impl DataDir {
    /// The identities this node vouches for (none if the file does not exist).
    pub fn load_vouches(&self) -> Result<BTreeSet<PeerId>, StoreError> {
        let path = self.path().join(VOUCHES_FILE);
        let Some(bytes) = read_bounded(&path, WHAT, MAX_LEN, false)? else {
            return Ok(BTreeSet::new());
        };
        let text = std::str::from_utf8(&bytes)
            .map_err(|_| StoreError::corrupt(WHAT, &path, "it is not text"))?;
        let mut vouches = BTreeSet::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let peer: PeerId = line.parse().map_err(|e| {
                StoreError::corrupt(WHAT, &path, format!("line {}: {line:?}: {e}", n + 1))
            })?;
            vouches.insert(peer);
        }
        if vouches.len() > MAX_VOUCHES {
            return Err(StoreError::corrupt(
                WHAT,
                &path,
                format!("{} identities, at most {MAX_VOUCHES}", vouches.len()),
            ));
        }
        Ok(vouches)
    }

    /// Replaces the saved vouches with `vouches`.
    pub fn save_vouches(&self, vouches: &BTreeSet<PeerId>) -> Result<(), StoreError> {
        let path = self.path().join(VOUCHES_FILE);
        let mut text = String::from("# Identities this node vouches for (spore trust vouch).\n");
        for peer in vouches {
            text.push_str(&format!("{peer}\n"));
        }
        write_atomic(&path, WHAT, text.as_bytes(), Overwrite::Replace)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use spore_core::Keypair;

    #[test]
    fn vouches_survive_a_save_and_load_and_a_bad_line_is_named() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::open(tmp.path().join("d")).unwrap();
        assert!(dir.load_vouches().unwrap().is_empty());
        let peers: BTreeSet<PeerId> = (1..=3)
            .map(|n| Keypair::from_secret_bytes([n; 32]).peer_id())
            .collect();
        dir.save_vouches(&peers).unwrap();
        assert_eq!(dir.load_vouches().unwrap(), peers);
        let path = dir.path().join(VOUCHES_FILE);
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str("\n# a comment\n\nnot-a-peer\n");
        std::fs::write(&path, text).unwrap();
        let err = dir.load_vouches().unwrap_err().to_string();
        assert!(
            err.contains("line 8") && err.contains("not-a-peer"),
            "{err}"
        );
        // One more identity than a statement holds is refused, not cut short.
        let many: BTreeSet<PeerId> = (0..=MAX_VOUCHES as u8)
            .map(|n| Keypair::from_secret_bytes([n; 32]).peer_id())
            .collect();
        dir.save_vouches(&many).unwrap();
        let err = dir.load_vouches().unwrap_err().to_string();
        assert!(err.contains("31 identities, at most 30"), "{err}");
    }
}

//! Anchor peers kept across restarts, in `anchors.txt`: the few longest-lived outbound
//! connections a node had when it last ran, dialed first when it starts again.
//!
//! An attacker who can make a node restart would otherwise get a fresh chance to surround it
//! with its own peers; anchors (Bitcoin Core keeps two, in `anchors.dat`) bring back peers the
//! node chose itself and that served it for longest. One `PEERID@IP:PORT` per line; lines
//! starting with `#` and blank lines are ignored.

use std::net::SocketAddr;
use std::path::Path;

use spore_core::PeerId;

use crate::StoreError;
use crate::fsutil::{Overwrite, read_bounded, write_atomic};

/// Name of the anchors file in the data directory.
pub const ANCHORS_FILE: &str = "anchors.txt";
/// Most anchors a file may hold.
pub const MAX_ANCHORS: usize = 8;
const WHAT: &str = "anchors file";
const MAX_LEN: u64 = 16 * 1024;

/// Reads the anchors at `path` (none if the file does not exist).
pub fn load_anchors(path: &Path) -> Result<Vec<(PeerId, SocketAddr)>, StoreError> {
    let Some(bytes) = read_bounded(path, WHAT, MAX_LEN, false)? else {
        return Ok(Vec::new());
    };
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| StoreError::corrupt(WHAT, path, "it is not text"))?;
    let mut anchors = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad =
            |why: &str| StoreError::corrupt(WHAT, path, format!("line {}: {line:?}: {why}", n + 1));
        let (peer, addr) = line
            .split_once('@')
            .ok_or_else(|| bad("expected PEERID@IP:PORT"))?;
        let peer: PeerId = peer.parse().map_err(|e| bad(&format!("{e}")))?;
        let addr: SocketAddr = addr.parse().map_err(|_| bad("not an IP:PORT"))?;
        anchors.push((peer, addr));
    }
    if anchors.len() > MAX_ANCHORS {
        return Err(StoreError::corrupt(
            WHAT,
            path,
            format!("{} anchors, at most {MAX_ANCHORS}", anchors.len()),
        ));
    }
    Ok(anchors)
}

/// Replaces the anchors at `path` with `anchors`.
pub fn save_anchors(path: &Path, anchors: &[(PeerId, SocketAddr)]) -> Result<(), StoreError> {
    let mut text = String::from("# Outbound peers this node dials first when it starts.\n");
    for (peer, addr) in anchors.iter().take(MAX_ANCHORS) {
        text.push_str(&format!("{peer}@{addr}\n"));
    }
    write_atomic(path, WHAT, text.as_bytes(), Overwrite::Replace)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use spore_core::Keypair;

    #[test]
    fn anchors_survive_a_save_and_load_and_a_bad_line_is_named() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join(ANCHORS_FILE);
        assert!(load_anchors(&path).unwrap().is_empty());
        let anchors: Vec<(PeerId, SocketAddr)> = (1..=2u8)
            .map(|n| {
                let peer = Keypair::from_secret_bytes([n; 32]).peer_id();
                (peer, SocketAddr::from(([10, 0, 0, n], 4000)))
            })
            .collect();
        save_anchors(&path, &anchors).unwrap();
        assert_eq!(load_anchors(&path).unwrap(), anchors);
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str("\n# a comment\n\nnot-an-anchor\n");
        std::fs::write(&path, text).unwrap();
        let err = load_anchors(&path).unwrap_err().to_string();
        assert!(
            err.contains("line 7") && err.contains("PEERID@IP:PORT"),
            "{err}"
        );
    }
}

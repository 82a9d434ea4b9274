//! The trace hash: a BLAKE3 digest of every event the simulator processed, in order.
//!
//! Each event contributes a fixed-layout record — a tag byte, the time in microseconds, the node
//! indices involved and a 128-bit XXH3 fingerprint of its payload (for a delivery, the encoded
//! frame) — so two runs have the same hash exactly when they processed the same events in the
//! same order. Fingerprinting payloads first keeps the cost per delivered byte low: XXH3 reads
//! tens of gigabytes a second, while BLAKE3 only sees a few dozen bytes per event.

use spore_core::time::Instant;

use crate::NodeIndex;

/// Record tags. Part of the hash's definition: never renumber.
#[derive(Debug, Clone, Copy)]
#[repr(u8)]
pub(crate) enum Tag {
    LinkUp = 1,
    Deliver = 2,
    Closed = 3,
    Timer = 4,
    Command = 5,
    Unroutable = 6,
    DialFailed = 7,
    Offline = 8,
    Online = 9,
    Partition = 10,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct Trace {
    hasher: blake3::Hasher,
}

impl Trace {
    pub(crate) fn record(
        &mut self,
        tag: Tag,
        at: Instant,
        node: NodeIndex,
        peer: Option<NodeIndex>,
        payload: &[u8],
    ) {
        let peer = peer.map_or(u32::MAX, |p| p.0);
        let h = &mut self.hasher;
        h.update(&[tag as u8]);
        h.update(&at.as_micros().to_le_bytes());
        h.update(&node.0.to_le_bytes());
        h.update(&peer.to_le_bytes());
        h.update(&xxhash_rust::xxh3::xxh3_128(payload).to_le_bytes());
    }

    pub(crate) fn hash(&self) -> [u8; 32] {
        *self.hasher.finalize().as_bytes()
    }
}

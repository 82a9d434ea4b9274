//! Receipts: a receiver's signed word for the bytes a peer gave it.
//!
//! Every [`RECEIPT_EVERY`] verified bytes a peer sends us, we send it a [`Receipt`] — "I,
//! `receiver`, have received `bytes` verified bytes from you, `giver`, in total" — signed with
//! our key. The giver keeps the latest receipt from each peer with its byte counts
//! ([`PeerTotals::receipted`](super::PeerTotals::receipted)) and saves them with its ledger:
//! its own counts are its word, a receipt is the other side's, which it can show to anyone.
//! A receipt is checked before it is kept: signed by the peer that sent it, naming us as the
//! giver, no more than we uploaded to it, and newer (more bytes) than the one kept.

use serde::{Deserialize, Serialize};

use crate::identity::{Keypair, PeerId, Signature, signed_message};

/// Verified bytes between two receipts to one peer: 1 MiB.
pub const RECEIPT_EVERY: u64 = 1 << 20;
const CONTEXT: &str = "spore/swarm/receipt/v1";

/// A receiver's signed acknowledgement of the verified bytes a giver sent it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    giver: PeerId,
    receiver: PeerId,
    bytes: u64,
    issued: u64,
    signature: Signature,
}

impl Receipt {
    /// `keypair`'s receipt for `bytes` received from `giver` in total, at `issued` (UNIX
    /// seconds).
    pub fn new(keypair: &Keypair, giver: PeerId, bytes: u64, issued: u64) -> Receipt {
        let mut r = Receipt {
            giver,
            receiver: keypair.peer_id(),
            bytes,
            issued,
            signature: Signature([0; 64]),
        };
        r.signature = keypair.sign(&r.signed_message());
        r
    }

    fn signed_message(&self) -> Vec<u8> {
        signed_message(
            CONTEXT,
            &(&self.giver, &self.receiver, self.bytes, self.issued),
        )
    }

    /// Whether the receiver's signature covers the receipt.
    pub fn verify(&self) -> bool {
        self.receiver
            .verify(&self.signed_message(), &self.signature)
            .is_ok()
    }

    /// Who gave the bytes.
    pub fn giver(&self) -> &PeerId {
        &self.giver
    }

    /// Who received them and signed.
    pub fn receiver(&self) -> &PeerId {
        &self.receiver
    }

    /// Verified bytes received from the giver, in total.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// When it was signed, in UNIX seconds.
    pub fn issued(&self) -> u64 {
        self.issued
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_receipt_verifies_only_as_signed() {
        let (giver, receiver) = (
            Keypair::from_secret_bytes([1; 32]),
            Keypair::from_secret_bytes([2; 32]),
        );
        let r = Receipt::new(&receiver, giver.peer_id(), 5 << 20, 100);
        assert!(r.verify());
        assert_eq!(
            (r.giver(), r.receiver()),
            (&giver.peer_id(), &receiver.peer_id())
        );
        let mut inflated = r.clone();
        inflated.bytes += 1;
        assert!(!inflated.verify());
        // Signed by the giver itself: not the receiver's word.
        let mut forged = Receipt::new(&giver, giver.peer_id(), 5 << 20, 100);
        forged.receiver = receiver.peer_id();
        assert!(!forged.verify());
    }
}

//! The proof-of-work stamp that makes node ids cost something (S/Kademlia's static puzzle).
//!
//! A stamp is a nonce such that `blake3(public_key ‖ nonce_le64)` starts with at least `d` zero
//! bits. Minting one takes about `2^d` hashes; checking one takes a single hash. `d` is a network
//! parameter ([`Difficulty`]): every node of a network must agree on it, and the DHT admits no id
//! whose stamp falls short.

use serde::{Deserialize, Serialize};

use crate::identity::PeerId;

/// The number of leading zero bits a stamp's hash must have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Difficulty(pub u8);

impl Difficulty {
    /// The default for a spore network: about 65 thousand hashes (a few milliseconds) per id.
    /// Large enough to make millions of ids expensive, small enough for a laptop to join.
    pub const DEFAULT: Difficulty = Difficulty(16);
    /// No work at all; only for tests and closed networks.
    pub const NONE: Difficulty = Difficulty(0);
}

impl Default for Difficulty {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// A proof-of-work stamp for one public key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Stamp {
    /// The nonce appended to the public key.
    pub nonce: u64,
}

impl Stamp {
    /// Finds the smallest nonce that meets `difficulty` for `id`. Deterministic: the same id and
    /// difficulty always give the same stamp.
    pub fn mint(id: &PeerId, difficulty: Difficulty) -> Stamp {
        let mut nonce = 0u64;
        loop {
            let stamp = Stamp { nonce };
            if stamp.work(id) >= u32::from(difficulty.0) {
                return stamp;
            }
            nonce = nonce.wrapping_add(1);
        }
    }

    /// The number of leading zero bits of this stamp's hash for `id`.
    pub fn work(&self, id: &PeerId) -> u32 {
        let mut hasher = blake3::Hasher::new();
        hasher.update(id.as_bytes());
        hasher.update(&self.nonce.to_le_bytes());
        leading_zero_bits(hasher.finalize().as_bytes())
    }

    /// Checks the stamp for `id` against `difficulty` with one hash.
    pub fn verify(&self, id: &PeerId, difficulty: Difficulty) -> Result<(), StampError> {
        let found = self.work(id);
        if found >= u32::from(difficulty.0) {
            Ok(())
        } else {
            Err(StampError {
                found,
                required: difficulty.0,
            })
        }
    }
}

/// A stamp does not carry enough work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("proof-of-work stamp has {found} leading zero bits, the network requires {required}")]
pub struct StampError {
    /// Leading zero bits found.
    pub found: u32,
    /// Leading zero bits required.
    pub required: u8,
}

fn leading_zero_bits(bytes: &[u8]) -> u32 {
    let mut bits = 0;
    for &b in bytes {
        if b == 0 {
            bits += 8;
        } else {
            return bits + b.leading_zeros();
        }
    }
    bits
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Keypair;

    #[test]
    fn mint_then_verify() {
        let id = Keypair::from_secret_bytes([9; 32]).peer_id();
        for d in [0u8, 1, 8, 12] {
            let stamp = Stamp::mint(&id, Difficulty(d));
            stamp.verify(&id, Difficulty(d)).unwrap();
            assert_eq!(stamp, Stamp::mint(&id, Difficulty(d)), "deterministic");
        }
    }

    #[test]
    fn stamp_is_bound_to_its_key() {
        let a = Keypair::from_secret_bytes([1; 32]).peer_id();
        let b = Keypair::from_secret_bytes([2; 32]).peer_id();
        let stamp = Stamp::mint(&a, Difficulty(12));
        // A 12-bit stamp for `a` meets 12 bits for `b` with probability 1/4096; these keys don't.
        let err = stamp.verify(&b, Difficulty(12)).unwrap_err();
        assert_eq!(err.required, 12);
        assert!(err.found < 12);
    }

    #[test]
    fn leading_zeros() {
        assert_eq!(leading_zero_bits(&[0, 0, 0x80]), 16);
        assert_eq!(leading_zero_bits(&[0, 0x01]), 15);
        assert_eq!(leading_zero_bits(&[0; 4]), 32);
    }
}

//! The 256-bit Kademlia key space and the XOR metric.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::identity::PeerId;

/// A point in the 256-bit key space: a node's position (the BLAKE3 hash of its public key) or
/// the position of a record.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Key(pub [u8; 32]);

ord_by_bytes32!(Key);

impl Key {
    /// The position of a node: `blake3(public key)`. Hashing spreads ids uniformly even if keys
    /// were chosen to cluster.
    pub fn for_peer(peer: &PeerId) -> Key {
        Key(*blake3::hash(peer.as_bytes()).as_bytes())
    }

    /// The key of arbitrary bytes under a domain-separation tag.
    pub fn hash(domain: &str, parts: &[&[u8]]) -> Key {
        let mut h = blake3::Hasher::new_derive_key(domain);
        for p in parts {
            h.update(&(p.len() as u64).to_le_bytes());
            h.update(p);
        }
        Key(*h.finalize().as_bytes())
    }

    /// XOR distance to `other`.
    pub fn distance(&self, other: &Key) -> Distance {
        let mut d = [0u8; 32];
        for (i, byte) in d.iter_mut().enumerate() {
            *byte = self.0[i] ^ other.0[i];
        }
        Distance(d)
    }

    /// The index of the k-bucket `other` falls in from `self`'s point of view: 255 for keys that
    /// differ in the first bit, 0 for keys that differ only in the last; `None` for `self`.
    pub fn bucket_index(&self, other: &Key) -> Option<usize> {
        let zeros = self.distance(other).leading_zeros();
        (zeros < 256).then(|| 255 - zeros as usize)
    }

    /// A key in bucket `index` of `self` chosen from `random` bytes: it shares the first
    /// `255 - index` bits with `self` and differs in the next. Used to refresh a bucket.
    pub fn random_in_bucket(&self, index: usize, random: [u8; 32]) -> Key {
        let index = index.min(255);
        let prefix_bits = 255 - index; // bits equal to self
        let mut out = random;
        for bit in 0..=prefix_bits {
            let (byte, mask) = (bit / 8, 0x80u8 >> (bit % 8));
            let mine = self.0[byte] & mask;
            let value = if bit == prefix_bits {
                !mine & mask
            } else {
                mine
            };
            out[byte] = (out[byte] & !mask) | value;
        }
        Key(out)
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Key({:02x}{:02x}{:02x}{:02x}…)",
            self.0[0], self.0[1], self.0[2], self.0[3]
        )
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// The XOR distance between two keys; ordered as a 256-bit big-endian number.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Distance(pub [u8; 32]);

ord_by_bytes32!(Distance);

impl Distance {
    /// Leading zero bits (256 for distance zero).
    pub fn leading_zeros(&self) -> u32 {
        let mut n = 0;
        for &b in &self.0 {
            if b == 0 {
                n += 8;
            } else {
                return n + b.leading_zeros();
            }
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn random_in_bucket_lands_in_that_bucket(me in any::<[u8; 32]>(), r in any::<[u8; 32]>(), i in 0usize..256) {
            let me = Key(me);
            prop_assert_eq!(me.bucket_index(&me.random_in_bucket(i, r)), Some(i));
        }

        #[test]
        fn xor_is_a_metric(a in any::<[u8; 32]>(), b in any::<[u8; 32]>()) {
            let (a, b) = (Key(a), Key(b));
            prop_assert_eq!(a.distance(&b), b.distance(&a));
            prop_assert_eq!(a.distance(&a).leading_zeros(), 256);
            prop_assert_eq!(a == b, a.bucket_index(&b).is_none());
        }
    }
}

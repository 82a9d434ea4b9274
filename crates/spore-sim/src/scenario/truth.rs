//! Ground truth: the nodes truly closest to a key, from the simulator's global view.

use spore_core::kad::Key;

use crate::NodeIndex;

/// Every node's DHT key, sorted, so that the nodes closest to a key are found without a scan.
///
/// The nodes whose keys share the first `p` bits with a target form one contiguous range of the
/// sorted keys, and every one of them is closer to the target than every node outside it (they
/// differ from the target only below bit `p`). So the `k` closest eligible nodes lie in the
/// narrowest such range that holds `k` eligible nodes, which is found by widening from the
/// narrowest range holding `k` nodes at all.
#[derive(Debug, Default)]
pub(crate) struct KeyIndex {
    sorted: Vec<(Key, NodeIndex)>,
}

impl KeyIndex {
    pub(crate) fn new(mut keys: Vec<(Key, NodeIndex)>) -> Self {
        keys.sort();
        Self { sorted: keys }
    }

    /// The range of nodes whose keys share the first `bits` bits with `target`.
    fn block(&self, target: &Key, bits: u32) -> std::ops::Range<usize> {
        let (mut lo, mut hi) = (target.0, target.0);
        for bit in bits..256 {
            let (byte, mask) = ((bit / 8) as usize, 0x80u8 >> (bit % 8));
            lo[byte] &= !mask;
            hi[byte] |= mask;
        }
        let start = self.sorted.partition_point(|(k, _)| k.0 < lo);
        let end = self.sorted.partition_point(|(k, _)| k.0 <= hi);
        start..end
    }

    /// The `k` nodes closest to `target` among those `eligible` says yes to, closest first.
    pub(crate) fn closest(
        &self,
        target: &Key,
        k: usize,
        eligible: impl Fn(NodeIndex) -> bool,
    ) -> Vec<NodeIndex> {
        if k == 0 || self.sorted.is_empty() {
            return Vec::new();
        }
        // Narrowest block with at least k nodes at all (block sizes shrink as bits grow).
        let (mut lo, mut hi) = (0u32, 256u32);
        while lo < hi {
            let mid = (lo + hi).div_ceil(2);
            if self.block(target, mid).len() >= k {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        // Widen until it holds k eligible nodes (or is everything).
        let mut bits = lo;
        loop {
            let range = self.block(target, bits);
            let mut found: Vec<(spore_core::kad::Distance, NodeIndex)> = self.sorted[range]
                .iter()
                .filter(|(_, i)| eligible(*i))
                .map(|(key, i)| (target.distance(key), *i))
                .collect();
            if found.len() >= k || bits == 0 {
                found.sort();
                found.truncate(k);
                return found.into_iter().map(|(_, i)| i).collect();
            }
            bits -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_a_full_sort() {
        let keys: Vec<(Key, NodeIndex)> = (0..2000u32)
            .map(|i| {
                (
                    Key(*blake3::hash(&i.to_le_bytes()).as_bytes()),
                    NodeIndex(i),
                )
            })
            .collect();
        let index = KeyIndex::new(keys.clone());
        for t in 0..50u32 {
            let target = Key(*blake3::hash(&(t + 10_000).to_le_bytes()).as_bytes());
            let eligible = |i: NodeIndex| i.0 % 3 != 0;
            let mut all: Vec<_> = keys.iter().filter(|(_, i)| eligible(*i)).collect();
            all.sort_by_key(|(k, _)| target.distance(k));
            let want: Vec<NodeIndex> = all.iter().take(20).map(|(_, i)| *i).collect();
            assert_eq!(index.closest(&target, 20, eligible), want);
        }
        // Fewer eligible nodes than asked for: all of them.
        let few = index.closest(&keys[0].0, 20, |i| i.0 < 5);
        assert_eq!(few.len(), 5);
        assert_eq!(few[0], NodeIndex(0));
    }
}

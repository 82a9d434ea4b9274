//! Small draws from the node's seeded RNG (spore-core has no `rand`, only `rand_core`).

use rand_core::RngCore;

/// A uniform index below `n` (`n` > 0). The modulo bias is below 2⁻³² for any `n` a node meets.
pub(crate) fn index(rng: &mut impl RngCore, n: usize) -> usize {
    debug_assert!(n > 0);
    (rng.next_u64() % n as u64) as usize
}

/// Shuffles `items` in place (Fisher–Yates).
pub(crate) fn shuffle<T>(rng: &mut impl RngCore, items: &mut [T]) {
    for i in (1..items.len()).rev() {
        items.swap(i, index(rng, i + 1));
    }
}

/// Keeps `n` of `items`, chosen uniformly at random, in random order.
pub(crate) fn sample<T>(rng: &mut impl RngCore, mut items: Vec<T>, n: usize) -> Vec<T> {
    let n = n.min(items.len());
    for i in 0..n {
        let j = i + index(rng, items.len() - i);
        items.swap(i, j);
    }
    items.truncate(n);
    items
}

/// One of `items` at random, if there is any.
pub(crate) fn choose<'a, T>(rng: &mut impl RngCore, items: &'a [T]) -> Option<&'a T> {
    (!items.is_empty()).then(|| &items[index(rng, items.len())])
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    #[test]
    fn sample_takes_distinct_items_and_covers_all() {
        let mut rng = ChaCha20Rng::from_seed([7; 32]);
        let mut seen = [0u32; 10];
        for _ in 0..1000 {
            let s = sample(&mut rng, (0..10).collect(), 3);
            assert_eq!(s.len(), 3);
            assert!(s[0] != s[1] && s[1] != s[2] && s[0] != s[2]);
            for x in s {
                seen[x] += 1;
            }
        }
        // Each of 10 items is drawn ~300 times in 1000 draws of 3.
        assert!(seen.iter().all(|&c| (200..400).contains(&c)), "{seen:?}");
        assert_eq!(sample(&mut rng, vec![1, 2], 5).len(), 2);
        assert!(choose::<u8>(&mut rng, &[]).is_none());
    }
}

//! Random draws for workloads, from the scenario's seeded RNG.

use rand_chacha::ChaCha20Rng;
use rand_core::RngCore;

fn index(rng: &mut ChaCha20Rng, n: usize) -> usize {
    (rng.next_u64() % n as u64) as usize
}

/// `items` in a uniformly random order.
pub(crate) fn shuffle<T>(rng: &mut ChaCha20Rng, items: &mut [T]) {
    for i in (1..items.len()).rev() {
        items.swap(i, index(rng, i + 1));
    }
}

/// `n` of `items` chosen uniformly at random.
pub(crate) fn sample<T>(rng: &mut ChaCha20Rng, mut items: Vec<T>, n: usize) -> Vec<T> {
    let n = n.min(items.len());
    for i in 0..n {
        let j = i + index(rng, items.len() - i);
        items.swap(i, j);
    }
    items.truncate(n);
    items
}

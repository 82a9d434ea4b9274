//! Choking decisions: who gets an upload slot. Pure functions of the peers' rates, interest and
//! snub state, so they are easy to test and to reason about.

use rand_core::RngCore;

use crate::identity::PeerId;
use crate::random;

/// A peer as the choker sees it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Candidate {
    pub(crate) peer: PeerId,
    /// The rate it is ranked by: its upload to us (leeching), or ours to it (seeding).
    pub(crate) rate: u64,
    /// Eligible for a regular slot: interested in us and not snubbing us.
    pub(crate) regular: bool,
    /// Joined recently: thrice as likely to be picked for the optimistic unchoke.
    pub(crate) new: bool,
    /// Its reputation is below a stranger's (see [`SUSPECT_BELOW`]): it gets an optimistic
    /// unchoke only when nobody else wants one.
    pub(crate) suspect: bool,
    /// It is in debt to us beyond the credit allowance: regular slots go to others first.
    pub(crate) debtor: bool,
}

/// A peer whose reputation score is under this has more bad evidence against it than good (a
/// stranger scores 0.5): the optimistic unchoke, a gift, goes to others first.
pub(crate) const SUSPECT_BELOW: f64 = 0.45;

/// The `slots` best eligible peers: peers in good standing before debtors, each by rate; ties
/// (notably all-zero rates at the start) are broken at random so no peer id is favoured.
pub(crate) fn regular(cands: &[Candidate], slots: usize, rng: &mut impl RngCore) -> Vec<PeerId> {
    let mut eligible: Vec<&Candidate> = cands.iter().filter(|c| c.regular).collect();
    random::shuffle(rng, &mut eligible);
    eligible.sort_by_key(|c| (c.debtor, std::cmp::Reverse(c.rate)));
    eligible.into_iter().take(slots).map(|c| c.peer).collect()
}

/// An optimistic unchoke among `cands` that are not in `taken`: uniformly at random, newcomers
/// weighted thrice (they have nothing to reciprocate with yet, as in mainline BitTorrent);
/// suspects only when there is nobody else.
pub(crate) fn optimistic(
    cands: &[Candidate],
    taken: &[PeerId],
    rng: &mut impl RngCore,
) -> Option<PeerId> {
    let mut pool: Vec<&Candidate> = cands.iter().filter(|c| !taken.contains(&c.peer)).collect();
    if pool.iter().any(|c| !c.suspect) {
        pool.retain(|c| !c.suspect);
    }
    let weight = |c: &Candidate| if c.new { 3 } else { 1 };
    let total: u64 = pool.iter().map(|c| weight(c)).sum();
    if total == 0 {
        return None;
    }
    let mut x = rng.next_u64() % total;
    for c in pool {
        let w = weight(c);
        if x < w {
            return Some(c.peer);
        }
        x -= w;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Keypair;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    fn id(n: u8) -> PeerId {
        Keypair::from_secret_bytes([n; 32]).peer_id()
    }

    #[test]
    fn best_rates_win_and_snubbers_do_not() {
        let mut rng = ChaCha20Rng::from_seed([3; 32]);
        let cands: Vec<Candidate> = (1..=6)
            .map(|n| Candidate {
                peer: id(n),
                rate: u64::from(n) * 1000,
                regular: n != 6,
                new: false,
                suspect: false,
                debtor: false,
            })
            .collect();
        let r = regular(&cands, 4, &mut rng);
        // 6 is the fastest but snubs us; 1 is the slowest eligible.
        assert_eq!(r, vec![id(5), id(4), id(3), id(2)]);
        for _ in 0..20 {
            let o = optimistic(&cands, &r, &mut rng).unwrap();
            assert!(o == id(1) || o == id(6));
        }
        assert_eq!(optimistic(&cands[..1], &[id(1)], &mut rng), None);
    }

    #[test]
    fn suspects_get_the_optimistic_unchoke_only_when_nobody_else_is_left() {
        let mut rng = ChaCha20Rng::from_seed([4; 32]);
        let cands: Vec<Candidate> = (1..=4)
            .map(|n| Candidate {
                peer: id(n),
                rate: 0,
                regular: true,
                new: n == 1,
                suspect: n != 4,
                debtor: false,
            })
            .collect();
        for _ in 0..20 {
            assert_eq!(optimistic(&cands, &[], &mut rng), Some(id(4)));
        }
        let o = optimistic(&cands, &[id(4)], &mut rng).unwrap();
        assert_ne!(o, id(4));
    }

    #[test]
    fn debtors_get_the_regular_slots_left_over_however_fast_they_are() {
        let mut rng = ChaCha20Rng::from_seed([5; 32]);
        let cands: Vec<Candidate> = (1..=6)
            .map(|n| Candidate {
                peer: id(n),
                rate: u64::from(n) * 1000,
                regular: true,
                new: false,
                suspect: false,
                debtor: n >= 4,
            })
            .collect();
        assert_eq!(
            regular(&cands, 4, &mut rng),
            vec![id(3), id(2), id(1), id(6)]
        );
    }
}

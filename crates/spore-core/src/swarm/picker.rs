//! Piece picking: which chunk groups to ask a peer for next.
//!
//! A *piece* is a run of [`Config::piece_groups`](super::Config::piece_groups) chunk groups
//! (4 × 16 KiB = 64 KiB by default), the unit of rarity and of requests: a request asks one
//! peer for the groups of one piece that are neither verified nor requested yet. The picker
//! keeps every piece that still has such groups in one ordered index,
//!
//! ```text
//! (class, availability, tie, piece)    class 0 = partial, 1 = untouched
//! ```
//!
//! so that the first entry a peer has is the right pick: pieces already begun (some groups
//! verified or requested) come first, with strict priority, because finishing them is what
//! makes groups servable and keeps partial work from piling up; then the rarest pieces, whose
//! loss would hurt the swarm most; ties are broken by a per-swarm random `tie`, so that
//! different downloaders spread over different pieces. While fewer than
//! [`Config::random_first_pieces`](super::Config::random_first_pieces) pieces are verified, the
//! untouched pieces are picked at random instead of rarest first: a newcomer wants something to
//! reciprocate with quickly, and the rarest piece is often the slowest to get.
//!
//! Availability counts the peers that have a whole piece; peers holding part of one (a resumed
//! download) still serve what they hold, the piece just looks rarer than it is.

use std::collections::BTreeSet;
use std::ops::Range;

use rand_core::RngCore;

use super::bitfield::Bitfield;

/// How many untouched pieces a random pick considers: enough to spread newcomers, few enough
/// to keep a pick cheap on large blobs.
const RANDOM_SCAN: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    class: u8,
    availability: u32,
    tie: u32,
    piece: u64,
}

/// The picking state of one blob being downloaded.
#[derive(Debug)]
pub(crate) struct Picker {
    piece_groups: u64,
    have: Bitfield,
    requested: Bitfield,
    availability: Vec<u32>,
    wanted: BTreeSet<Key>,
    salt: u64,
}

impl Picker {
    /// A picker for a blob of `have.len()` groups, of which `have` are verified already.
    pub(crate) fn new(have: Bitfield, piece_groups: u64, salt: u64) -> Self {
        let piece_groups = piece_groups.max(1);
        let groups = have.len();
        let pieces = groups.div_ceil(piece_groups);
        let mut p = Self {
            piece_groups,
            requested: Bitfield::new(groups),
            have,
            availability: vec![0; usize::try_from(pieces).unwrap_or(0)],
            wanted: BTreeSet::new(),
            salt,
        };
        for piece in 0..pieces {
            if let Some(k) = p.key(piece) {
                p.wanted.insert(k);
            }
        }
        p
    }

    /// The verified groups.
    pub(crate) fn have(&self) -> &Bitfield {
        &self.have
    }

    /// Number of groups in the blob.
    pub(crate) fn groups(&self) -> u64 {
        self.have.len()
    }

    /// True when every group is verified.
    pub(crate) fn is_complete(&self) -> bool {
        self.have.is_full()
    }

    /// True when every missing group is requested from someone: the endgame.
    pub(crate) fn is_endgame(&self) -> bool {
        self.wanted.is_empty() && !self.is_complete()
    }

    /// Verified pieces (whole ones).
    #[cfg(test)]
    pub(crate) fn pieces_complete(&self) -> u64 {
        (0..self.availability.len() as u64)
            .filter(|&p| self.have.all_in(self.piece_range(p)))
            .count() as u64
    }

    /// The groups of piece `p`.
    pub(crate) fn piece_range(&self, p: u64) -> Range<u64> {
        let start = p * self.piece_groups;
        start..(start + self.piece_groups).min(self.have.len())
    }

    /// The pieces that groups `r` touch.
    pub(crate) fn pieces_of(&self, r: &Range<u64>) -> Range<u64> {
        let end = r.end.min(self.have.len());
        if r.start >= end {
            return 0..0;
        }
        r.start / self.piece_groups..(end - 1) / self.piece_groups + 1
    }

    /// The index key of piece `p`, or `None` if nothing of it is left to request.
    fn key(&self, p: u64) -> Option<Key> {
        let r = self.piece_range(p);
        let mut open = false;
        let mut touched = false;
        for g in r {
            if self.have.get(g) || self.requested.get(g) {
                touched = true;
            } else {
                open = true;
            }
        }
        open.then(|| Key {
            class: u8::from(!touched),
            availability: self.availability[p as usize],
            tie: tie(self.salt, p),
            piece: p,
        })
    }

    /// Runs `f` on the state of the pieces in `pieces`, keeping the index in step.
    fn update(&mut self, pieces: Range<u64>, f: impl FnOnce(&mut Self)) {
        for p in pieces.clone() {
            if let Some(k) = self.key(p) {
                self.wanted.remove(&k);
            }
        }
        f(self);
        for p in pieces {
            if let Some(k) = self.key(p) {
                self.wanted.insert(k);
            }
        }
    }

    /// A peer holding `has` joined: the pieces it has whole become more available.
    pub(crate) fn add_peer(&mut self, has: &Bitfield) {
        self.count_peer(has, true);
    }

    /// A peer holding `has` left.
    pub(crate) fn remove_peer(&mut self, has: &Bitfield) {
        self.count_peer(has, false);
    }

    fn count_peer(&mut self, has: &Bitfield, add: bool) {
        for r in has.ranges() {
            for p in self.pieces_of(&r) {
                if has.all_in(self.piece_range(p)) {
                    if add {
                        self.add_availability(p);
                    } else {
                        self.remove_availability(p);
                    }
                }
            }
        }
    }

    /// One more peer has all of piece `p`.
    pub(crate) fn add_availability(&mut self, p: u64) {
        self.update(p..p + 1, |s| {
            let a = &mut s.availability[p as usize];
            *a = a.saturating_add(1);
        });
    }

    /// One peer fewer has all of piece `p`.
    pub(crate) fn remove_availability(&mut self, p: u64) {
        self.update(p..p + 1, |s| {
            let a = &mut s.availability[p as usize];
            *a = a.saturating_sub(1);
        });
    }

    /// Groups `r` were requested from someone.
    pub(crate) fn mark_requested(&mut self, r: &Range<u64>) {
        let pieces = self.pieces_of(r);
        let r = r.clone();
        self.update(pieces, |s| {
            s.requested.set_range(r);
        });
    }

    /// Groups `r` are no longer requested from anyone.
    pub(crate) fn unmark_requested(&mut self, r: &Range<u64>) {
        let pieces = self.pieces_of(r);
        let r = r.clone();
        self.update(pieces, |s| {
            s.requested.clear_range(r);
        });
    }

    /// Groups `r` verified; returns how many were new.
    pub(crate) fn mark_have(&mut self, r: &Range<u64>) -> u64 {
        let pieces = self.pieces_of(r);
        let r = r.clone();
        let mut n = 0;
        self.update(pieces, |s| {
            n = s.have.set_range(r);
        });
        n
    }

    /// The next groups to request from a peer holding `has`: a run of groups of one piece that
    /// are neither verified nor requested and that the peer has. `random` picks untouched pieces
    /// at random rather than rarest first.
    pub(crate) fn pick(
        &self,
        has: &Bitfield,
        random: bool,
        rng: &mut impl RngCore,
    ) -> Option<Range<u64>> {
        let mut seen = 0u64;
        let mut choice: Option<u64> = None;
        for k in &self.wanted {
            if k.class == 1 && random {
                // Reservoir sampling over the first untouched pieces the peer has.
                if self.run_for(k.piece, has).is_some() {
                    seen += 1;
                    if rng.next_u64() % seen == 0 {
                        choice = Some(k.piece);
                    }
                    if seen as usize >= RANDOM_SCAN {
                        break;
                    }
                }
                continue;
            }
            if let Some(run) = self.run_for(k.piece, has) {
                return Some(run);
            }
        }
        choice.and_then(|p| self.run_for(p, has))
    }

    /// The first run of groups of piece `p` that are neither verified nor requested and that
    /// `has` holds.
    fn run_for(&self, p: u64, has: &Bitfield) -> Option<Range<u64>> {
        let mut run: Option<Range<u64>> = None;
        for g in self.piece_range(p) {
            let open = !self.have.get(g) && !self.requested.get(g) && has.get(g);
            match (&mut run, open) {
                (None, true) => run = Some(g..g + 1),
                (Some(r), true) => r.end = g + 1,
                (Some(_), false) => break,
                (None, false) => {}
            }
        }
        run
    }
}

/// A per-swarm pseudo-random tie-breaker for piece `p` (SplitMix64 of salt and piece).
fn tie(salt: u64, p: u64) -> u32 {
    let mut z = salt ^ p.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (z ^ (z >> 31)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    #[test]
    fn partial_first_then_rarest() {
        let mut rng = ChaCha20Rng::from_seed([1; 32]);
        // 8 pieces of 4 groups; group 9 (piece 2) verified already.
        let mut p = Picker::new(Bitfield::with_range(32, 9..10), 4, 7);
        let seed = Bitfield::full(32);
        // Piece 5 is held by a second peer too, so it is less rare; piece 6 by nobody else.
        let other = Bitfield::with_range(32, 20..24);
        p.add_peer(&seed);
        p.add_peer(&other);
        // The partial piece comes first: its missing groups 8 and 10..12 (the first run).
        assert_eq!(p.pick(&seed, false, &mut rng), Some(8..9));
        p.mark_requested(&(8..9));
        assert_eq!(p.pick(&seed, false, &mut rng), Some(10..12));
        p.mark_requested(&(10..12));
        // Then rarest first: never piece 5 while availability-1 pieces remain.
        let mut picked = Vec::new();
        while let Some(r) = p.pick(&seed, false, &mut rng) {
            picked.push(r.start / 4);
            p.mark_requested(&r);
        }
        assert_eq!(picked.len(), 7);
        assert_eq!(*picked.last().unwrap(), 5, "{picked:?}");
        assert!(p.is_endgame());
        // The other peer only has piece 5, which is requested: nothing for it.
        assert_eq!(p.pick(&other, false, &mut rng), None);
        p.unmark_requested(&(20..24));
        assert_eq!(p.pick(&other, false, &mut rng), Some(20..24));
        assert_eq!(p.mark_have(&(20..24)), 4);
        assert_eq!(p.pieces_complete(), 1);
    }

    #[test]
    fn random_first_spreads() {
        let mut counts = [0u32; 16];
        for seed in 0..200u8 {
            let mut rng = ChaCha20Rng::from_seed([seed; 32]);
            let p = Picker::new(Bitfield::new(64), 4, 3);
            let r = p.pick(&Bitfield::full(64), true, &mut rng).unwrap();
            counts[(r.start / 4) as usize] += 1;
        }
        assert!(counts.iter().all(|&c| c > 0), "{counts:?}");
    }

    #[test]
    fn short_last_piece() {
        let mut rng = ChaCha20Rng::from_seed([1; 32]);
        let p = Picker::new(Bitfield::new(5), 4, 0);
        let only_last = Bitfield::with_range(5, 4..5);
        assert_eq!(p.pick(&only_last, false, &mut rng), Some(4..5));
        assert_eq!(p.piece_range(1), 4..5);
    }
}

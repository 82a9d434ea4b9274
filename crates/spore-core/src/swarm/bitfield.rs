//! A fixed-length set of chunk groups, kept as bits and exchanged as ranges.

use std::ops::Range;

/// Which chunk groups of a blob someone has: `len` bits, one per group. On the wire it travels
/// as sorted ranges ([`ranges`](Self::ranges)), which is compact for what swarms hold: a seed is
/// one range, a leecher a few dozen.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bitfield {
    len: u64,
    words: Vec<u64>,
    ones: u64,
}

impl Bitfield {
    /// `len` groups, none set.
    pub fn new(len: u64) -> Self {
        Self {
            len,
            words: vec![0; words(len)],
            ones: 0,
        }
    }

    /// `len` groups, all set.
    pub fn full(len: u64) -> Self {
        let mut b = Self::new(len);
        b.set_range(0..len);
        b
    }

    /// `len` groups, those of `r` set (clipped to `len`).
    pub fn with_range(len: u64, r: Range<u64>) -> Self {
        let mut b = Self::new(len);
        b.set_range(r);
        b
    }

    /// `len` groups, those in `ranges` set (clipped to `len`; empty or inverted ranges ignored).
    pub fn from_ranges(len: u64, ranges: &[Range<u64>]) -> Self {
        let mut b = Self::new(len);
        for r in ranges {
            b.set_range(r.clone());
        }
        b
    }

    /// Number of groups.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True for a bitfield of no groups.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of groups set.
    pub fn count_ones(&self) -> u64 {
        self.ones
    }

    /// True if every group is set.
    pub fn is_full(&self) -> bool {
        self.ones == self.len
    }

    /// Whether group `i` is set (false past the end).
    pub fn get(&self, i: u64) -> bool {
        i < self.len && self.words[(i / 64) as usize] & (1 << (i % 64)) != 0
    }

    /// Sets group `i`; true if it was not set. Ignored past the end.
    pub fn set(&mut self, i: u64) -> bool {
        if i >= self.len {
            return false;
        }
        let w = &mut self.words[(i / 64) as usize];
        let bit = 1 << (i % 64);
        let new = *w & bit == 0;
        *w |= bit;
        self.ones += u64::from(new);
        new
    }

    /// Clears group `i`; true if it was set.
    pub fn clear(&mut self, i: u64) -> bool {
        if i >= self.len {
            return false;
        }
        let w = &mut self.words[(i / 64) as usize];
        let bit = 1 << (i % 64);
        let was = *w & bit != 0;
        *w &= !bit;
        self.ones -= u64::from(was);
        was
    }

    /// The words covering `r` (clipped), each with the mask of `r`'s bits in it.
    fn spans(&self, r: Range<u64>) -> impl Iterator<Item = (usize, u64)> + use<> {
        let end = r.end.min(self.len);
        let mut i = r.start;
        std::iter::from_fn(move || {
            if i >= end {
                return None;
            }
            let bit = i % 64;
            let n = (64 - bit).min(end - i);
            let mask = if n == 64 {
                u64::MAX
            } else {
                ((1u64 << n) - 1) << bit
            };
            let w = (i / 64) as usize;
            i += n;
            Some((w, mask))
        })
    }

    /// Sets every group of `r` (clipped); returns how many were newly set. Word by word: a
    /// peer's bitfield can span a million groups.
    pub fn set_range(&mut self, r: Range<u64>) -> u64 {
        let mut added = 0;
        for (w, mask) in self.spans(r) {
            added += u64::from((mask & !self.words[w]).count_ones());
            self.words[w] |= mask;
        }
        self.ones += added;
        added
    }

    /// Clears every group of `r` (clipped); returns how many were set.
    pub fn clear_range(&mut self, r: Range<u64>) -> u64 {
        let mut removed = 0;
        for (w, mask) in self.spans(r) {
            removed += u64::from((mask & self.words[w]).count_ones());
            self.words[w] &= !mask;
        }
        self.ones -= removed;
        removed
    }

    /// True if every group of `r` is set (and `r` is within the bitfield and not empty).
    pub fn all_in(&self, r: Range<u64>) -> bool {
        r.start < r.end
            && r.end <= self.len
            && self.spans(r).all(|(w, mask)| self.words[w] & mask == mask)
    }

    /// True if some group of `r` is set.
    pub fn any_in(&self, r: Range<u64>) -> bool {
        self.spans(r).any(|(w, mask)| self.words[w] & mask != 0)
    }

    /// True if `self` has a group that `other` lacks (groups past `other`'s end count as
    /// lacking). Word by word: this runs on every interest check.
    pub fn has_any_missing_from(&self, other: &Bitfield) -> bool {
        self.words.iter().enumerate().any(|(i, w)| {
            let theirs = other.words.get(i).copied().unwrap_or(0);
            w & !theirs != 0
        })
    }

    /// The set groups as sorted, disjoint, non-adjacent ranges.
    pub fn ranges(&self) -> Vec<Range<u64>> {
        let mut out: Vec<Range<u64>> = Vec::new();
        let mut i = 0;
        while i < self.len {
            let w = self.words[(i / 64) as usize];
            // Whole empty or whole full words at once.
            if i % 64 == 0 && (w == 0 || (w == u64::MAX && i + 64 <= self.len)) {
                if w != 0 {
                    match out.last_mut() {
                        Some(last) if last.end == i => last.end = i + 64,
                        _ => out.push(i..i + 64),
                    }
                }
                i += 64;
                continue;
            }
            if self.get(i) {
                match out.last_mut() {
                    Some(last) if last.end == i => last.end = i + 1,
                    _ => out.push(i..i + 1),
                }
            }
            i += 1;
        }
        out
    }
}

fn words(len: u64) -> usize {
    usize::try_from(len.div_ceil(64)).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_round_trip() {
        let mut b = Bitfield::new(200);
        assert_eq!(b.set_range(3..7), 4);
        assert_eq!(b.set_range(5..9), 2);
        b.set(64);
        b.set(65);
        b.set(199);
        assert_eq!(b.ranges(), vec![3..9, 64..66, 199..200]);
        assert_eq!(b.count_ones(), 9);
        assert_eq!(Bitfield::from_ranges(200, &b.ranges()), b);
        assert!(b.all_in(3..9) && !b.all_in(3..10) && !b.all_in(5..5));
        assert_eq!(b.clear_range(0..100), 8);
        assert_eq!(b.ranges(), vec![199..200]);
        assert!(!b.set(500));
        assert!(Bitfield::full(130).is_full());
    }

    #[test]
    fn word_wise_ranges_match_bits() {
        let mut b = Bitfield::new(300);
        assert_eq!(b.set_range(60..200), 140);
        assert_eq!(b.set_range(0..300), 160);
        assert!(b.is_full() && b.all_in(0..300) && !b.all_in(0..301));
        assert_eq!(b.ranges(), vec![0..300]);
        assert_eq!(b.clear_range(63..129), 66);
        assert_eq!(b.ranges(), vec![0..63, 129..300]);
        assert!(!b.any_in(63..129) && b.any_in(60..64) && b.all_in(129..192));
        assert_eq!(b.count_ones(), 234);
        assert_eq!(b.set_range(250..1000), 0);
    }

    #[test]
    fn missing_from() {
        let a = Bitfield::with_range(100, 10..20);
        let b = Bitfield::with_range(100, 0..50);
        assert!(!a.has_any_missing_from(&b));
        assert!(b.has_any_missing_from(&a));
        assert!(a.has_any_missing_from(&Bitfield::new(0)));
    }
}

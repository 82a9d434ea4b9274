//! Sets of chunk groups: in memory, a [`Bitfield`]; in redb, pages of it.

use std::fmt;
use std::ops::Range;

/// Chunk groups per stored page: 1 KiB of bits, 128 MiB of blob. A write rewrites only the
/// pages it touches, so recording a group costs the same for a small blob as for a huge one.
pub(crate) const PAGE_GROUPS: u64 = 8192;
const PAGE_BYTES: usize = (PAGE_GROUPS / 8) as usize;

/// A set of chunk groups of one blob, `0..len`: which ones are verified.
#[derive(Clone, PartialEq, Eq)]
pub struct Bitfield {
    len: u64,
    words: Vec<u64>,
}

impl Bitfield {
    /// `len` groups, none set.
    pub fn new(len: u64) -> Bitfield {
        let words = usize::try_from(len.div_ceil(64)).unwrap_or(usize::MAX);
        Bitfield {
            len,
            words: vec![0; words],
        }
    }

    /// `len` groups, all set.
    pub fn full(len: u64) -> Bitfield {
        let mut b = Bitfield::new(len);
        b.words.fill(u64::MAX);
        b.clear_tail();
        b
    }

    /// `len` groups, those in `ranges` set.
    pub(crate) fn from_ranges(len: u64, ranges: &[Range<u64>]) -> Bitfield {
        let mut b = Bitfield::new(len);
        for r in ranges {
            for g in r.clone() {
                b.set(g);
            }
        }
        b
    }

    /// `len` groups, those listed set.
    pub(crate) fn from_groups(len: u64, groups: &[u64]) -> Bitfield {
        let mut b = Bitfield::new(len);
        for &g in groups {
            b.set(g);
        }
        b
    }

    /// Number of groups (set or not).
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True if there are no groups at all (an empty blob).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether group `i` is set; false past the end.
    pub fn get(&self, i: u64) -> bool {
        i < self.len && self.words[(i / 64) as usize] & (1 << (i % 64)) != 0
    }

    /// Sets group `i`; ignored past the end.
    pub fn set(&mut self, i: u64) {
        if i < self.len {
            self.words[(i / 64) as usize] |= 1 << (i % 64);
        }
    }

    /// Clears group `i`; ignored past the end.
    pub fn clear(&mut self, i: u64) {
        if i < self.len {
            self.words[(i / 64) as usize] &= !(1 << (i % 64));
        }
    }

    /// Number of groups set.
    pub fn count_ones(&self) -> u64 {
        self.words.iter().map(|w| u64::from(w.count_ones())).sum()
    }

    /// True if every group is set (also for an empty bitfield).
    pub fn is_full(&self) -> bool {
        self.count_ones() == self.len
    }

    /// The first group not set.
    pub fn first_missing(&self) -> Option<u64> {
        self.words
            .iter()
            .enumerate()
            .find(|(_, w)| **w != u64::MAX)
            .map(|(i, w)| i as u64 * 64 + u64::from(w.trailing_ones()))
            .filter(|&i| i < self.len)
    }

    /// The set groups as sorted, disjoint, non-adjacent ranges.
    pub fn ranges(&self) -> Vec<Range<u64>> {
        let mut out: Vec<Range<u64>> = Vec::new();
        for (wi, &w) in self.words.iter().enumerate() {
            let mut w = w;
            while w != 0 {
                let start = wi as u64 * 64 + u64::from(w.trailing_zeros());
                // The run of ones starting there, within this word.
                let shifted = w >> (start % 64);
                let run = u64::from(shifted.trailing_ones());
                let end = start + run;
                match out.last_mut() {
                    Some(last) if last.end == start => last.end = end,
                    _ => out.push(start..end),
                }
                w = if end % 64 == 0 {
                    0
                } else {
                    w & !((1u64 << (end % 64)) - 1)
                };
            }
        }
        out
    }

    fn clear_tail(&mut self) {
        if self.len % 64 != 0
            && let Some(last) = self.words.last_mut()
        {
            *last &= (1u64 << (self.len % 64)) - 1;
        }
    }

    /// The bytes of page `page` (groups `page * PAGE_GROUPS ..`), bit `i % 8` of byte `i / 8`
    /// for group `i` of the page; trailing zero bytes dropped.
    pub(crate) fn page_bytes(&self, page: u64) -> Vec<u8> {
        let first = page * PAGE_GROUPS;
        let mut bytes = vec![0u8; PAGE_BYTES];
        for i in 0..PAGE_GROUPS.min(self.len.saturating_sub(first)) {
            if self.get(first + i) {
                bytes[(i / 8) as usize] |= 1 << (i % 8);
            }
        }
        while bytes.last() == Some(&0) {
            bytes.pop();
        }
        bytes
    }

    /// Sets the groups a stored page says are set. Bits past the end are ignored: a page is only
    /// ever written for this length.
    pub(crate) fn apply_page(&mut self, page: u64, bytes: &[u8]) {
        let first = page.saturating_mul(PAGE_GROUPS);
        for (bi, &b) in bytes.iter().take(PAGE_BYTES).enumerate() {
            for bit in 0..8 {
                if b & (1 << bit) != 0 {
                    self.set(first.saturating_add(bi as u64 * 8 + bit));
                }
            }
        }
    }
}

impl fmt::Debug for Bitfield {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Bitfield({}/{} set: {:?})",
            self.count_ones(),
            self.len,
            self.ranges()
        )
    }
}

/// Sorts, merges and clips ranges of groups to `0..len`, dropping empty ones.
pub(crate) fn normalize(ranges: &[Range<u64>], len: u64) -> Vec<Range<u64>> {
    let mut v: Vec<Range<u64>> = ranges
        .iter()
        .map(|r| r.start.min(len)..r.end.min(len))
        .filter(|r| r.start < r.end)
        .collect();
    v.sort_by_key(|r| r.start);
    let mut out: Vec<Range<u64>> = Vec::with_capacity(v.len());
    for r in v {
        match out.last_mut() {
            Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
            _ => out.push(r),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_and_pages_round_trip() {
        let mut b = Bitfield::new(20_000);
        for i in (0..64)
            .chain(100..101)
            .chain(8190..8200)
            .chain(19_999..20_000)
        {
            b.set(i);
        }
        assert_eq!(
            b.ranges(),
            vec![0..64, 100..101, 8190..8200, 19_999..20_000]
        );
        assert_eq!(b.first_missing(), Some(64));
        let mut c = Bitfield::new(20_000);
        for p in 0..3 {
            c.apply_page(p, &b.page_bytes(p));
        }
        assert_eq!(b, c);
        assert!(Bitfield::full(65).is_full());
        assert_eq!(Bitfield::full(65).ranges(), vec![0..65]);
        assert_eq!(Bitfield::full(65).first_missing(), None);
        assert!(Bitfield::new(0).is_full());
    }

    #[test]
    fn normalize_merges_and_clips() {
        assert_eq!(
            normalize(&[5..7, 0..2, 1..3, 9..9, 6..20], 10),
            vec![0..3, 5..10]
        );
    }
}

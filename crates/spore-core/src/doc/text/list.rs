//! The sequence itself: every item (visible or tombstone) in document order, in a chunked list.
//!
//! - An [`Item`] is a run of characters inserted together by one actor with consecutive
//!   counters. It keeps the origins of its first character; character `k > 0` of a run has the
//!   previous character as its left origin and shares the run's right origin, so a run splits
//!   anywhere without losing information.
//! - Items live in chunks of at most [`MAX_ITEMS`] items. A chunk also holds the visible text
//!   of its items, concatenated (tombstones keep no text), so the text needs no second
//!   structure. A chunk is split in half when it has too many items or too many bytes;
//!   chunks are never removed, since items never are.
//! - Each chunk caches the number of visible characters before it. The cache is valid for a
//!   prefix of the chunks and is extended lazily: an edit in chunk `c` invalidates the chunks
//!   after `c` only, and the next lookup near `c` recomputes little, which is what keeps typing
//!   in the middle of a long document cheap.
//! - `index` maps the first id of every item to a stable chunk key, and `key_pos` maps a key to
//!   the chunk's current place; the item is then found by a scan of that one chunk.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;

use super::{Actor, OpId};

/// "No origin" (the start or the end of the document). Never a real id: a character's counter
/// is always below `u32::MAX` (ids ranges must end at or below it).
pub(super) const NONE: OpId = OpId {
    counter: u32::MAX,
    actor: Actor::MAX,
};

/// Longest visible item, in characters (tombstones are unlimited: they hold no text). Bounds
/// the bytes of a chunk, and so the cost of editing its text.
#[cfg(not(test))]
const MAX_RUN: u32 = 256;
#[cfg(test)]
const MAX_RUN: u32 = 8;

/// Most items in a chunk before it is split in half.
#[cfg(not(test))]
const MAX_ITEMS: usize = 64;
#[cfg(test)]
const MAX_ITEMS: usize = 6;

/// Most bytes of text in a chunk (of two items or more) before it is split in half.
#[cfg(not(test))]
const MAX_CHUNK_BYTES: usize = 4096;
#[cfg(test)]
const MAX_CHUNK_BYTES: usize = 48;

/// A run of characters: ids `id.counter .. id.counter + len` of `id.actor`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Item {
    pub(super) id: OpId,
    pub(super) len: u32,
    /// The left origin of the first character, or [`NONE`].
    pub(super) left: OpId,
    /// The right origin of every character, or [`NONE`].
    pub(super) right: OpId,
    pub(super) deleted: bool,
}

impl Item {
    /// The id of character `off` (`off < len`, so this cannot overflow).
    pub(super) fn at(&self, off: u32) -> OpId {
        OpId {
            counter: self.id.counter + off,
            actor: self.id.actor,
        }
    }

    fn end(&self) -> u32 {
        self.id.counter + self.len
    }

    /// Whether `next`, placed right after `self`, is the continuation of the same run: merging
    /// them loses nothing.
    pub(super) fn continues(&self, next: &Item) -> bool {
        next.id.actor == self.id.actor
            && next.id.counter == self.end()
            && next.left == self.at(self.len - 1)
            && next.right == self.right
            && next.deleted == self.deleted
    }
}

/// Where an id sits: chunk, item in the chunk, character in the item. Ordered as the document.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Loc {
    pub(super) chunk: usize,
    pub(super) item: usize,
    pub(super) off: u32,
}

#[derive(Clone)]
struct Chunk {
    /// Never empty.
    items: Vec<Item>,
    /// The visible characters of `items`, in order.
    text: String,
    /// Visible characters (`text.chars().count()`).
    chars: usize,
    /// Visible characters before this chunk; valid only below `List::valid`.
    start: usize,
    /// Stable name of the chunk in `List::index`.
    key: u32,
}

/// The items of a text, in document order. See the module docs.
#[derive(Clone, Default)]
pub(super) struct List {
    chunks: Vec<Chunk>,
    /// Chunk key → index in `chunks`.
    key_pos: Vec<usize>,
    /// `chunks[..valid]` have a correct `start`.
    valid: usize,
    /// (actor, first counter) of every item → key of its chunk.
    index: BTreeMap<(Actor, u32), u32>,
    len: usize,
    tombstones: usize,
}

/// The byte offset of character `n` of `text`, which has `chars` characters.
fn byte_offset(text: &str, chars: usize, n: usize) -> usize {
    if text.len() == chars {
        return n.min(text.len());
    }
    text.char_indices().nth(n).map_or(text.len(), |(b, _)| b)
}

impl List {
    pub(super) fn len(&self) -> usize {
        self.len
    }

    pub(super) fn tombstones(&self) -> usize {
        self.tombstones
    }

    pub(super) fn item_count(&self) -> usize {
        self.index.len()
    }

    pub(super) fn chunk_count(&self) -> usize {
        self.chunks.len()
    }

    pub(super) fn write_text(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.chunks.iter().try_for_each(|c| f.write_str(&c.text))
    }

    pub(super) fn item(&self, loc: Loc) -> Item {
        self.chunks[loc.chunk].items[loc.item]
    }

    /// Where the character `id` is, if this replica has it.
    pub(super) fn find(&self, id: OpId) -> Option<Loc> {
        let (&(actor, start), &key) = self.index.range(..=(id.actor, id.counter)).next_back()?;
        if actor != id.actor {
            return None;
        }
        let c = *self.key_pos.get(key as usize)?;
        let items = &self.chunks.get(c)?.items;
        let i = items
            .iter()
            .position(|it| it.id.counter == start && it.id.actor == actor)?;
        let off = id.counter - start;
        (off < items[i].len).then_some(Loc {
            chunk: c,
            item: i,
            off,
        })
    }

    /// The first id of `id .. id + len` (same actor) that this replica lacks, if any.
    pub(super) fn first_missing(&self, id: OpId, len: u32) -> Option<OpId> {
        let end = id.counter.saturating_add(len);
        let mut counter = id.counter;
        while counter < end {
            let here = OpId {
                counter,
                actor: id.actor,
            };
            let Some(loc) = self.find(here) else {
                return Some(here);
            };
            counter += self.item(loc).len - loc.off;
        }
        None
    }

    /// Whether some item of `actor` starts in `from .. to`.
    pub(super) fn any_start_in(&self, actor: Actor, from: u32, to: u32) -> bool {
        from < to
            && self
                .index
                .range((actor, from)..(actor, to))
                .next()
                .is_some()
    }

    /// The item after `(chunk, item)`, if any.
    pub(super) fn next(&self, chunk: usize, item: usize) -> Option<(usize, usize)> {
        if item + 1 < self.chunks[chunk].items.len() {
            Some((chunk, item + 1))
        } else if chunk + 1 < self.chunks.len() {
            Some((chunk + 1, 0))
        } else {
            None
        }
    }

    /// The first item of the document, if any.
    pub(super) fn first(&self) -> Option<(usize, usize)> {
        (!self.chunks.is_empty()).then_some((0, 0))
    }

    /// The id of the item right after the gap before item `item` of chunk `chunk`
    /// (`item` may be the chunk's length), or [`NONE`] at the end of the document.
    pub(super) fn id_after_gap(&self, chunk: usize, item: usize) -> OpId {
        match self.chunks.get(chunk) {
            Some(c) if item < c.items.len() => c.items[item].id,
            Some(_) => self
                .chunks
                .get(chunk + 1)
                .and_then(|c| c.items.first())
                .map_or(NONE, |it| it.id),
            None => NONE,
        }
    }

    /// Visible characters before chunk `c`, extending the cache as needed.
    fn chunk_start(&mut self, c: usize) -> usize {
        while self.valid <= c {
            let v = self.valid;
            self.chunks[v].start = match v {
                0 => 0,
                _ => self.chunks[v - 1].start + self.chunks[v - 1].chars,
            };
            self.valid += 1;
        }
        self.chunks[c].start
    }

    /// Chunk `c` changed its visible length (or chunks were inserted after it).
    fn touch(&mut self, c: usize) {
        self.valid = self.valid.min(c + 1);
    }

    /// Where the visible character at `pos` is (`pos < len`).
    pub(super) fn find_visible(&mut self, pos: usize) -> Option<Loc> {
        if pos >= self.len {
            return None;
        }
        loop {
            let covered = self
                .valid
                .checked_sub(1)
                .map(|v| &self.chunks[v])
                .is_some_and(|last| pos < last.start + last.chars);
            if covered {
                break;
            }
            if self.valid >= self.chunks.len() {
                return None;
            }
            self.chunk_start(self.valid);
        }
        let c = self.chunks[..self.valid]
            .partition_point(|ch| ch.start <= pos)
            .saturating_sub(1);
        let chunk = &self.chunks[c];
        let mut rem = pos - chunk.start;
        for (i, it) in chunk.items.iter().enumerate() {
            if it.deleted {
                continue;
            }
            if rem < it.len as usize {
                return Some(Loc {
                    chunk: c,
                    item: i,
                    off: rem as u32,
                });
            }
            rem -= it.len as usize;
        }
        None
    }

    /// The id ranges of the `len` visible characters from `pos` (`pos + len <= self.len()`),
    /// contiguous ids merged.
    pub(super) fn visible_ranges(&mut self, pos: usize, len: usize) -> Vec<(OpId, u32)> {
        let mut ranges: Vec<(OpId, u32)> = Vec::new();
        let Some(loc) = self.find_visible(pos) else {
            return ranges;
        };
        let (mut c, mut i, mut off) = (loc.chunk, loc.item, loc.off);
        let mut left = len;
        while left > 0 {
            let it = self.chunks[c].items[i];
            if !it.deleted {
                let k = (it.len - off).min(u32::try_from(left).unwrap_or(u32::MAX));
                let id = it.at(off);
                match ranges.last_mut() {
                    Some((first, n))
                        if first.actor == id.actor && first.counter + *n == id.counter =>
                    {
                        *n += k
                    }
                    _ => ranges.push((id, k)),
                }
                left -= k as usize;
            }
            off = 0;
            match self.next(c, i) {
                Some((nc, ni)) => (c, i) = (nc, ni),
                None => break,
            }
        }
        ranges
    }

    /// Visible characters in chunk `c` before item `i`.
    fn chars_before(&self, c: usize, i: usize) -> usize {
        self.chunks[c].items[..i]
            .iter()
            .filter(|it| !it.deleted)
            .map(|it| it.len as usize)
            .sum()
    }

    /// Splits an item so that character `off` starts a new item (no-op at either end), and
    /// rebalances: locations found before may be stale.
    pub(super) fn split(&mut self, loc: Loc) {
        if self.split_item(loc) {
            self.balance(loc.chunk);
        }
    }

    fn split_item(&mut self, Loc { chunk, item, off }: Loc) -> bool {
        let c = &mut self.chunks[chunk];
        let it = c.items[item];
        if off == 0 || off >= it.len {
            return false;
        }
        let tail = Item {
            id: it.at(off),
            len: it.len - off,
            left: it.at(off - 1),
            right: it.right,
            deleted: it.deleted,
        };
        c.items[item].len = off;
        c.items.insert(item + 1, tail);
        self.index.insert((tail.id.actor, tail.id.counter), c.key);
        true
    }

    /// Merges item `i + 1` of chunk `c` into item `i` if it continues it.
    fn merge_next(&mut self, c: usize, i: usize) {
        let items = &mut self.chunks[c].items;
        let (Some(&a), Some(&b)) = (items.get(i), items.get(i + 1)) else {
            return;
        };
        if !a.continues(&b) || (!a.deleted && a.len + b.len > MAX_RUN) {
            return;
        }
        items[i].len += b.len;
        items.remove(i + 1);
        self.index.remove(&(b.id.actor, b.id.counter));
    }

    /// Splits chunk `c` (recursively) until no chunk is over its limits.
    fn balance(&mut self, c: usize) {
        let chunk = &self.chunks[c];
        let n = chunk.items.len();
        if n <= MAX_ITEMS && (n < 2 || chunk.text.len() <= MAX_CHUNK_BYTES) {
            return;
        }
        self.split_chunk(c, n / 2);
        self.balance(c + 1);
        self.balance(c);
    }

    /// Moves items `mid..` of chunk `c` to a new chunk after it.
    fn split_chunk(&mut self, c: usize, mid: usize) {
        let key = self.key_pos.len() as u32;
        let head_chars = self.chars_before(c, mid);
        let chunk = &mut self.chunks[c];
        let items = chunk.items.split_off(mid);
        let text = chunk
            .text
            .split_off(byte_offset(&chunk.text, chunk.chars, head_chars));
        // `split_off` leaves the head its whole capacity: give back what it no longer needs.
        chunk.items.shrink_to_fit();
        chunk.text.shrink_to_fit();
        let chars = chunk.chars - head_chars;
        chunk.chars = head_chars;
        for it in &items {
            self.index.insert((it.id.actor, it.id.counter), key);
        }
        self.chunks.insert(
            c + 1,
            Chunk {
                items,
                text,
                chars,
                start: 0,
                key,
            },
        );
        self.key_pos.push(c + 1);
        for (p, ch) in self.chunks.iter().enumerate().skip(c + 1) {
            self.key_pos[ch.key as usize] = p;
        }
        self.touch(c);
    }

    /// Inserts the run `new` (visible, `text` has `new.len` characters) into the gap before
    /// item `item` of chunk `chunk` (`item` may be the chunk's length; an empty document has
    /// only the gap `(0, 0)`). Extends the item before the gap when `new` continues it.
    pub(super) fn insert(&mut self, chunk: usize, item: usize, new: Item, text: &str) {
        self.ensure_chunk();
        let before = self.chars_before(chunk, item);
        let c = &mut self.chunks[chunk];
        let at = byte_offset(&c.text, c.chars, before);
        c.text.insert_str(at, text);
        c.chars += new.len as usize;
        self.len += new.len as usize;
        self.touch(chunk);

        let c = &mut self.chunks[chunk];
        let extends = item
            .checked_sub(1)
            .map(|p| &mut c.items[p])
            .filter(|prev| prev.continues(&new) && prev.len + new.len <= MAX_RUN);
        if let Some(prev) = extends {
            prev.len += new.len;
        } else {
            let mut pieces = Vec::with_capacity(new.len.div_ceil(MAX_RUN) as usize);
            let mut off = 0;
            while off < new.len {
                let len = MAX_RUN.min(new.len - off);
                pieces.push(Item {
                    id: new.at(off),
                    len,
                    left: if off == 0 { new.left } else { new.at(off - 1) },
                    right: new.right,
                    deleted: false,
                });
                off += len;
            }
            for p in &pieces {
                self.index.insert((p.id.actor, p.id.counter), c.key);
            }
            c.items.splice(item..item, pieces);
        }
        self.balance(chunk);
    }

    /// Gives an empty document its first (empty) chunk, where the first item goes.
    fn ensure_chunk(&mut self) {
        if self.chunks.is_empty() {
            self.chunks.push(Chunk {
                items: Vec::new(),
                text: String::new(),
                chars: 0,
                start: 0,
                key: 0,
            });
            self.key_pos = vec![0];
            self.valid = 0;
        }
    }

    /// Appends `new` at the end of the document: a visible run with its `text` (`new.len`
    /// characters), or a tombstone (no text). Builds a text back from its canonical form; the
    /// caller checks that the ids are new.
    pub(super) fn push(&mut self, new: Item, text: &str) {
        let c = self.chunks.len().saturating_sub(1);
        let i = self.chunks.last().map_or(0, |c| c.items.len());
        if !new.deleted {
            self.insert(c, i, new, text);
            return;
        }
        self.ensure_chunk();
        let c = self.chunks.len() - 1;
        let chunk = &mut self.chunks[c];
        match chunk.items.last_mut() {
            Some(prev) if prev.continues(&new) => prev.len += new.len,
            _ => {
                chunk.items.push(new);
                self.index.insert((new.id.actor, new.id.counter), chunk.key);
            }
        }
        self.tombstones += new.len as usize;
        self.balance(c);
    }

    /// Deletes `k` visible characters from `loc` on, all in `loc`'s item.
    pub(super) fn delete(&mut self, loc: Loc, k: u32) {
        let Loc {
            chunk, mut item, ..
        } = loc;
        if self.split_item(loc) {
            item += 1;
        }
        self.split_item(Loc {
            chunk,
            item,
            off: k,
        });
        let before = self.chars_before(chunk, item);
        let c = &mut self.chunks[chunk];
        let from = byte_offset(&c.text, c.chars, before);
        let to = if c.text.len() == c.chars {
            from + k as usize
        } else {
            c.text[from..]
                .char_indices()
                .nth(k as usize)
                .map_or(c.text.len(), |(b, _)| from + b)
        };
        c.text.replace_range(from..to, "");
        if c.text.capacity() > 2 * c.text.len() + 256 {
            // A large deletion: do not keep its bytes allocated.
            c.text.shrink_to(c.text.len() + c.text.len() / 2);
        }
        c.items[item].deleted = true;
        c.chars -= k as usize;
        self.len -= k as usize;
        self.tombstones += k as usize;
        self.merge_next(chunk, item);
        if let Some(prev) = item.checked_sub(1) {
            self.merge_next(chunk, prev);
        }
        self.touch(chunk);
        self.balance(chunk);
    }

    /// Deletes ids `id .. id + len` (which this replica has); already deleted ones stay so.
    pub(super) fn delete_ids(&mut self, id: OpId, len: u32) {
        let end = id.counter.saturating_add(len);
        let mut counter = id.counter;
        while counter < end {
            let Some(loc) = self.find(OpId {
                counter,
                actor: id.actor,
            }) else {
                return;
            };
            let it = self.item(loc);
            let k = (it.len - loc.off).min(end - counter);
            if !it.deleted {
                self.delete(loc, k);
            }
            counter += k;
        }
    }

    /// How an item's left origin compares, in document order, with the left origin `left`
    /// being integrated (`None`: the start of the document).
    pub(super) fn cmp_left(&self, origin: OpId, left: Option<Loc>) -> Ordering {
        match (origin == NONE, left) {
            (true, None) => Ordering::Equal,
            (true, Some(_)) => Ordering::Less,
            (false, None) => Ordering::Greater,
            (false, Some(l)) => self.find(origin).map_or(Ordering::Less, |o| o.cmp(&l)),
        }
    }

    /// How an item's right origin compares with the right origin `right` being integrated
    /// (`None`: the end of the document).
    pub(super) fn cmp_right(&self, origin: OpId, right: Option<Loc>) -> Ordering {
        match (origin == NONE, right) {
            (true, None) => Ordering::Equal,
            (true, Some(_)) => Ordering::Greater,
            (false, None) => Ordering::Less,
            (false, Some(r)) => self.find(origin).map_or(Ordering::Greater, |o| o.cmp(&r)),
        }
    }

    /// The gap before `(chunk, item)`, or the end of the document for `None`, written so that
    /// the item before it (if any) is in the same chunk.
    pub(super) fn gap_before(&self, at: Option<(usize, usize)>) -> (usize, usize) {
        match at {
            Some((c, 0)) if c > 0 => (c - 1, self.chunks[c - 1].items.len()),
            Some(p) => p,
            None => self
                .chunks
                .len()
                .checked_sub(1)
                .map_or((0, 0), |c| (c, self.chunks[c].items.len())),
        }
    }

    /// Every item in document order, continuation runs merged: two replicas that converged
    /// have equal canonical forms, however their items happen to be split.
    pub(super) fn canonical(&self) -> Vec<Item> {
        let mut out: Vec<Item> = Vec::new();
        for it in self.chunks.iter().flat_map(|c| &c.items) {
            match out.last_mut() {
                Some(last) if last.continues(it) => last.len += it.len,
                _ => out.push(*it),
            }
        }
        out
    }

    /// Panics if a structural invariant does not hold.
    #[cfg(test)]
    pub(super) fn check(&self) {
        let (mut len, mut dead, mut items) = (0, 0, 0);
        assert_eq!(self.key_pos.len(), self.chunks.len());
        for (p, c) in self.chunks.iter().enumerate() {
            assert!(!c.items.is_empty(), "empty chunk");
            assert!(c.items.len() <= MAX_ITEMS, "chunk too long");
            assert_eq!(self.key_pos[c.key as usize], p);
            assert_eq!(c.text.chars().count(), c.chars);
            if p < self.valid {
                assert_eq!(c.start, len, "stale start cache");
            }
            let mut chars = 0;
            for it in &c.items {
                assert!(it.len > 0);
                assert!(it.id.counter.checked_add(it.len).is_some());
                assert_eq!(self.index.get(&(it.id.actor, it.id.counter)), Some(&c.key));
                if it.deleted {
                    dead += it.len as usize;
                } else {
                    assert!(it.len <= MAX_RUN);
                    chars += it.len as usize;
                }
                items += 1;
            }
            assert_eq!(chars, c.chars);
            len += chars;
        }
        assert_eq!(items, self.index.len());
        assert_eq!(len, self.len);
        assert_eq!(dead, self.tombstones);
    }
}

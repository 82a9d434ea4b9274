//! Collaborative plain text: a sequence CRDT whose replicas converge to the same string
//! whatever order they receive each other's edits in.
//!
//! ```
//! use spore_core::doc::text::Text;
//!
//! let (mut alice, mut bob) = (Text::new(), Text::new());
//! let (mut alice_clock, mut bob_clock) = (0, 0);
//! let hello = alice.local_insert(1, 0, "hello", &mut alice_clock)?;
//! bob.apply(&hello)?;
//!
//! // Concurrent edits at the same place...
//! let a = alice.local_insert(1, 5, " world", &mut alice_clock)?;
//! let b = bob.local_insert(2, 5, " there", &mut bob_clock)?;
//! let d = bob.local_delete(0, 1)?;
//! // ...delivered in any order, twice even, converge without interleaving.
//! for op in [&b, &d, &b] { alice.apply(op)?; }
//! for op in [&a, &a] { bob.apply(op)?; }
//! assert_eq!(alice.to_string(), bob.to_string());
//! assert_eq!(alice.to_string(), "ello world there");
//! # Ok::<(), spore_core::doc::text::TextError>(())
//! ```
//!
//! # Design
//!
//! - **Identifiers.** Every inserted character has an [`OpId`]: the inserting actor and a
//!   counter. Actors are per-document `u32` indices (the document layer maps peers to them).
//!   Counters are Lamport timestamps: a local insertion takes counters above every counter the
//!   replica has seen ([`Text::next_counter`]) and above the caller's `clock`, which lets one
//!   clock serve every CRDT of a document. Ids order by (counter, actor).
//! - **Algorithm.** Each character remembers its *origins*, the characters left and right of
//!   it when it was inserted. A remote insertion is placed between its origins, among the
//!   characters inserted concurrently there, by the YjsMod rule (see `integrate.rs`), which
//!   orders items as FugueMax does. We chose it over RGA (Automerge) and plain YATA (Yjs)
//!   because those interleave concurrent passages in some cases (RGA when typing backwards,
//!   YATA in others), while FugueMax guarantees *maximal non-interleaving*: two people typing
//!   at the same place get their words one after the other, never mixed letter by letter. And
//!   it needs no tree: the state is a flat list plus two origins per run, which keeps it fast.
//! - **Runs.** Characters inserted together by one actor with consecutive counters form one
//!   item, split only when an edit lands inside it, and typing extends the item it continues.
//!   Memory follows the number of runs, not of characters.
//! - **Deletion** marks characters as tombstones: their ids stay (a concurrent insertion may
//!   use them as origins), their text does not. Adjacent tombstones of one run merge back into
//!   one item. A delete names id ranges, so deletes commute with everything and repeat
//!   harmlessly.
//! - **Operations.** [`TextOp`] is the unit replicated between peers. Applying one is
//!   idempotent. It must be *causally ready*: the origins of an insert, and the ids a delete
//!   names, must be known; otherwise [`Text::apply`] changes nothing and returns
//!   [`TextError::MissingDependency`], and the document layer buffers the operation and
//!   retries it after applying others. Positions are Unicode code points.
//! - **Bounds.** An insert carries at most [`MAX_INSERT_BYTES`] of text and a delete at most
//!   [`MAX_DELETE_RANGES`] ranges; counters must not overflow `u32`. Every check on a peer's
//!   operation runs before anything changes, so a rejected operation leaves the text as it was,
//!   and no input panics. What this module cannot check is that a peer chose truthful origins
//!   (adjacent ones): signatures on operations are the document layer's business.
//!
//! # Data structure and costs
//!
//! Items (visible runs and tombstones) sit in document order in a chunked list (at most 64
//! items and about 4 KiB of text per chunk), each chunk holding the text of its visible items
//! and caching how many visible characters precede it; an ordered index maps the first id of
//! each item to its chunk. With `n` items and `m = n / 64` chunks:
//!
//! - position → item: binary search over the cached prefix (`O(log m)`) plus a scan of one
//!   chunk; an edit invalidates the cache only after its own chunk, so editing near the last
//!   edit costs `O(1)` amortized to revalidate, a jump across the document `O(m)` once;
//! - id → item: `O(log n)` in the index plus a scan of one chunk;
//! - a chunk split (every ~32 inserted items) re-keys its items in the index and renumbers the
//!   chunks after it: `O(64 log n + m)`;
//! - a remote insertion costs one id lookup per item inserted concurrently between its origins
//!   (none without concurrency). As in every YATA-family CRDT, a peer that floods one place
//!   with concurrent insertions can make this scan long; the document layer rate-limits peers.
//!
//! Tombstones stay: a deleted character's id may still be named as an origin (a later local
//! insertion takes the item after it, tombstones included, as its right origin). They cost
//! one id range per deleted run and no text; [`Text::tombstones`] reports how many characters
//! they cover. What a document's compaction frees is the operations (the deleted text itself
//! among them): a checkpoint keeps this structure as a [`TextSnapshot`].

mod integrate;
mod list;
#[cfg(test)]
mod tests;

use std::fmt;

use serde::{Deserialize, Serialize};

use list::{Item, List, NONE};

/// An actor: a per-document index of a peer that edits the text.
pub type Actor = u32;

/// Most bytes of text in one insert operation (1 MiB).
pub const MAX_INSERT_BYTES: usize = 1 << 20;

/// Most id ranges in one delete operation.
pub const MAX_DELETE_RANGES: usize = 65_536;

/// The id of one inserted character: its actor and a Lamport counter. Ordered by counter, then
/// actor.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct OpId {
    /// The Lamport counter: above every counter the actor had seen when it inserted.
    pub counter: u32,
    /// The inserting actor.
    pub actor: Actor,
}

impl OpId {
    /// The id `counter` of `actor`.
    pub const fn new(actor: Actor, counter: u32) -> Self {
        OpId { counter, actor }
    }
}

/// An edit, as replicated between peers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum TextOp {
    /// Insert `text`; its characters get the ids `id`, `id + 1`, … (same actor).
    Insert {
        /// The id of the first character.
        id: OpId,
        /// The character left of the insertion point when it was made (`None`: the start).
        origin_left: Option<OpId>,
        /// The character (visible or deleted) right of the insertion point when it was made
        /// (`None`: the end).
        origin_right: Option<OpId>,
        /// The text, at most [`MAX_INSERT_BYTES`].
        text: String,
    },
    /// Delete the characters with these ids: each range is a first id and a length, covering
    /// consecutive counters of one actor. At most [`MAX_DELETE_RANGES`] ranges.
    Delete {
        /// `(first id, number of characters)`.
        ranges: Vec<(OpId, u32)>,
    },
}

/// Why an edit was refused. A refused operation changed nothing.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TextError {
    /// The operation names an id this replica has not seen: apply it again after the
    /// operation that inserted that id.
    #[error("the operation depends on {0:?}, not seen yet")]
    MissingDependency(OpId),
    /// A local edit's position or range is past the end of the text.
    #[error("position {pos} is past the end of the text ({len} characters)")]
    OutOfRange {
        /// The offending position (end of the range for a delete).
        pos: usize,
        /// The text's length.
        len: usize,
    },
    /// A local edit that inserts or deletes nothing.
    #[error("empty edit")]
    Empty,
    /// The operation exceeds a limit ([`MAX_INSERT_BYTES`], [`MAX_DELETE_RANGES`]).
    #[error("operation too large: {0}")]
    TooLarge(&'static str),
    /// The operation cannot have come from a correct replica.
    #[error("malformed operation: {0}")]
    Malformed(&'static str),
    /// An insert reuses ids that this replica already has for other characters.
    #[error("the ids from {0:?} are already in use")]
    Conflict(OpId),
    /// The `u32` counters are used up: the local insert would overflow them.
    #[error("operation counters exhausted")]
    CounterExhausted,
}

/// A text's whole state in canonical form, for document snapshots: every item in document
/// order (continuation runs merged), the visible text, and the next counter. Replicas that
/// applied the same operations have equal snapshots, however their items happen to be split.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TextSnapshot {
    next_counter: u32,
    items: Vec<SnapshotRun>,
    text: String,
}

/// One run of a [`TextSnapshot`]: first id, length, left origin, right origin, deleted.
type SnapshotRun = (OpId, u32, Option<OpId>, Option<OpId>, bool);

/// A replicated text. See the [module docs](self).
#[derive(Clone, Default)]
pub struct Text {
    list: List,
    next_counter: u32,
}

fn some(id: OpId) -> Option<OpId> {
    (id != NONE).then_some(id)
}

impl Text {
    /// An empty text.
    pub fn new() -> Self {
        Self::default()
    }

    /// The number of visible characters (Unicode code points).
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// Whether no character is visible.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The number of deleted characters still kept as tombstones.
    pub fn tombstones(&self) -> usize {
        self.list.tombstones()
    }

    /// One more than the highest counter of any id this replica has seen: the least counter a
    /// new local insertion may use.
    pub fn next_counter(&self) -> u32 {
        self.next_counter
    }

    /// Whether this replica has the character `id` (visible or deleted).
    pub fn contains(&self, id: OpId) -> bool {
        id != NONE && self.list.find(id).is_some()
    }

    /// The whole state in canonical form (see [`TextSnapshot`]).
    pub fn snapshot(&self) -> TextSnapshot {
        TextSnapshot {
            next_counter: self.next_counter,
            items: self
                .list
                .canonical()
                .into_iter()
                .map(|it| (it.id, it.len, some(it.left), some(it.right), it.deleted))
                .collect(),
            text: self.to_string(),
        }
    }

    /// Rebuilds a text from a snapshot, checking it as it would check operations: ids that do
    /// not overlap or overflow, origins that exist and precede their runs, text that fills the
    /// visible runs exactly. A snapshot that fails the checks builds nothing.
    pub fn from_snapshot(snapshot: &TextSnapshot) -> Result<Text, TextError> {
        let mut text = Text::new();
        let mut rest = snapshot.text.as_str();
        let mut max_end = 0u32;
        for &(id, len, left, right, deleted) in &snapshot.items {
            if len == 0 || id == NONE {
                return Err(TextError::Malformed("empty or reserved id in snapshot"));
            }
            let end = id
                .counter
                .checked_add(len)
                .ok_or(TextError::Malformed("id range overflows"))?;
            if text.list.find(id).is_some() || text.list.any_start_in(id.actor, id.counter, end) {
                return Err(TextError::Conflict(id));
            }
            if [left, right]
                .into_iter()
                .flatten()
                .any(|o| o == NONE || o.counter >= id.counter)
            {
                return Err(TextError::Malformed("origin does not precede the run"));
            }
            let mut run = "";
            if !deleted {
                let bytes = rest
                    .char_indices()
                    .nth(len as usize)
                    .map_or(rest.len(), |(b, _)| b);
                (run, rest) = rest.split_at(bytes);
                if run.chars().count() != len as usize {
                    return Err(TextError::Malformed("snapshot text shorter than its runs"));
                }
            }
            let item = Item {
                id,
                len,
                left: left.unwrap_or(NONE),
                right: right.unwrap_or(NONE),
                deleted,
            };
            text.list.push(item, run);
            max_end = max_end.max(end);
        }
        if !rest.is_empty() {
            return Err(TextError::Malformed("snapshot text longer than its runs"));
        }
        let origins = snapshot.items.iter().flat_map(|&(_, _, l, r, _)| [l, r]);
        if let Some(missing) = origins.flatten().find(|o| text.list.find(*o).is_none()) {
            return Err(TextError::MissingDependency(missing));
        }
        if snapshot.next_counter < max_end {
            return Err(TextError::Malformed("next counter below an id in use"));
        }
        text.next_counter = snapshot.next_counter;
        Ok(text)
    }

    /// Inserts `text` at code point `pos` as `actor`, and returns the operation to send to the
    /// other replicas. `clock` is the document's Lamport clock: the characters get counters
    /// from `max(*clock, self.next_counter())` on, and `clock` is left after the last one.
    pub fn local_insert(
        &mut self,
        actor: Actor,
        pos: usize,
        text: &str,
        clock: &mut u32,
    ) -> Result<TextOp, TextError> {
        let len = self.len();
        if pos > len {
            return Err(TextError::OutOfRange { pos, len });
        }
        if text.is_empty() {
            return Err(TextError::Empty);
        }
        if text.len() > MAX_INSERT_BYTES {
            return Err(TextError::TooLarge("insert text"));
        }
        let n = text.chars().count() as u32;
        let counter = (*clock).max(self.next_counter);
        let end = counter.checked_add(n).ok_or(TextError::CounterExhausted)?;
        let id = OpId { counter, actor };

        // The new run goes right after the visible character before `pos`, before whatever
        // follows it (tombstones included): its origins are adjacent, nothing to scan.
        let (left, (c, i)) = match pos.checked_sub(1) {
            None => (NONE, (0, 0)),
            Some(p) => {
                let mut loc = self
                    .list
                    .find_visible(p)
                    .ok_or(TextError::OutOfRange { pos, len })?;
                let left = self.list.item(loc).at(loc.off);
                if loc.off + 1 < self.list.item(loc).len {
                    self.list.split(list::Loc {
                        off: loc.off + 1,
                        ..loc
                    });
                    loc = self
                        .list
                        .find(left)
                        .ok_or(TextError::MissingDependency(left))?;
                }
                (left, (loc.chunk, loc.item + 1))
            }
        };
        let right = self.list.id_after_gap(c, i);
        let item = Item {
            id,
            len: n,
            left,
            right,
            deleted: false,
        };
        self.list.insert(c, i, item, text);
        self.next_counter = end;
        *clock = end;
        Ok(TextOp::Insert {
            id,
            origin_left: some(left),
            origin_right: some(right),
            text: text.to_owned(),
        })
    }

    /// Deletes `len` code points from `pos` on, and returns the operation to send to the other
    /// replicas. Fails with [`TextError::TooLarge`], deleting nothing, if the range spans more
    /// than [`MAX_DELETE_RANGES`] runs: delete it in parts.
    pub fn local_delete(&mut self, pos: usize, len: usize) -> Result<TextOp, TextError> {
        if len == 0 {
            return Err(TextError::Empty);
        }
        let end = pos.saturating_add(len);
        if end > self.len() {
            return Err(TextError::OutOfRange {
                pos: end,
                len: self.len(),
            });
        }
        let ranges = self.list.visible_ranges(pos, len);
        if ranges.len() > MAX_DELETE_RANGES {
            return Err(TextError::TooLarge("delete ranges"));
        }
        for &(id, n) in &ranges {
            self.list.delete_ids(id, n);
        }
        Ok(TextOp::Delete { ranges })
    }

    /// Applies another replica's operation. Applying one twice is a no-op; one that is not
    /// causally ready fails with [`TextError::MissingDependency`]. On any error nothing changed.
    pub fn apply(&mut self, op: &TextOp) -> Result<(), TextError> {
        match op {
            TextOp::Insert {
                id,
                origin_left,
                origin_right,
                text,
            } => self.apply_insert(*id, *origin_left, *origin_right, text),
            TextOp::Delete { ranges } => self.apply_delete(ranges),
        }
    }

    fn apply_insert(
        &mut self,
        id: OpId,
        origin_left: Option<OpId>,
        origin_right: Option<OpId>,
        text: &str,
    ) -> Result<(), TextError> {
        if text.is_empty() {
            return Err(TextError::Malformed("empty insert"));
        }
        if text.len() > MAX_INSERT_BYTES {
            return Err(TextError::TooLarge("insert text"));
        }
        let n = text.chars().count() as u32;
        let end = id
            .counter
            .checked_add(n)
            .ok_or(TextError::Malformed("id range overflows"))?;
        // Origins were seen before the insertion, so their Lamport counters are lower. This
        // also rules out an insert that names itself.
        if [origin_left, origin_right]
            .into_iter()
            .flatten()
            .any(|o| o.counter >= id.counter)
        {
            return Err(TextError::Malformed("origin does not precede the insert"));
        }
        if self.list.find(id).is_some() {
            return match self.list.first_missing(id, n) {
                None => Ok(()), // already applied
                Some(_) => Err(TextError::Conflict(id)),
            };
        }
        if self.list.any_start_in(id.actor, id.counter + 1, end) {
            return Err(TextError::Conflict(id));
        }
        let mut locs = [None, None];
        for (slot, origin) in locs.iter_mut().zip([origin_left, origin_right]) {
            if let Some(o) = origin {
                *slot = Some(self.list.find(o).ok_or(TextError::MissingDependency(o))?);
            }
        }
        if matches!(locs, [Some(l), Some(r)] if l >= r) {
            return Err(TextError::Malformed(
                "origin_right is not after origin_left",
            ));
        }
        self.next_counter = self.next_counter.max(end);
        let item = Item {
            id,
            len: n,
            left: origin_left.unwrap_or(NONE),
            right: origin_right.unwrap_or(NONE),
            deleted: false,
        };
        integrate::integrate(&mut self.list, item, text);
        Ok(())
    }

    fn apply_delete(&mut self, ranges: &[(OpId, u32)]) -> Result<(), TextError> {
        if ranges.len() > MAX_DELETE_RANGES {
            return Err(TextError::TooLarge("delete ranges"));
        }
        for &(id, n) in ranges {
            if n == 0 {
                return Err(TextError::Malformed("empty delete range"));
            }
            if id.counter.checked_add(n).is_none() {
                return Err(TextError::Malformed("id range overflows"));
            }
            if let Some(missing) = self.list.first_missing(id, n) {
                return Err(TextError::MissingDependency(missing));
            }
        }
        for &(id, n) in ranges {
            self.list.delete_ids(id, n);
        }
        Ok(())
    }
}

impl fmt::Display for Text {
    /// The visible text.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.list.write_text(f)
    }
}

impl fmt::Debug for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Text")
            .field("len", &self.len())
            .field("tombstones", &self.tombstones())
            .field("items", &self.list.item_count())
            .field("chunks", &self.list.chunk_count())
            .field("next_counter", &self.next_counter)
            .finish()
    }
}

//! Placing a remote insertion among concurrent ones: the YjsMod / FugueMax rule.
//!
//! The new run goes somewhere between its left origin `L` and right origin `R`, which were
//! adjacent when its author inserted it. Everything now between them was inserted
//! concurrently (or descends from such an insertion). The scan walks those items, looking only
//! at the first character of each (later characters of a run have the previous one as left
//! origin, which lies inside the scanned range, so they never decide anything):
//!
//! - an item whose left origin is before `L` is not a sibling: its subtree ended, stop there;
//! - an item whose left origin is `L` is a sibling. If its right origin is before `R`, we may
//!   go either before or after it (and its subtree), so remember the place and keep scanning;
//!   if its right origin is `R` too, the lower id goes first; if its right origin is after `R`,
//!   go after it;
//! - an item whose left origin is after `L` belongs to a subtree already being skipped.
//!
//! This is Gentle's modification of the Yjs integration (reference-crdts' `integrateYjsMod`,
//! the rule diamond-types uses), reported to order items exactly as FugueMax does (Weidner and
//! Kleppmann, "The Art of the Fugue", 2023): runs inserted concurrently at one place are not
//! interleaved, whether typed forwards or backwards. `concurrent_words_do_not_interleave` in
//! the tests checks both directions.
//!
//! Cost: one id lookup per scanned item (`O(log n + chunk)`), and nothing is scanned when no
//! concurrent insertion sits between the origins, which is the case for every local edit and
//! for remote edits that were not concurrent.

use std::cmp::Ordering;

use super::OpId;
use super::list::{Item, List, Loc, NONE};

/// Inserts `new` (validated: origins present, `left` before `right`, ids unused; `text` has
/// `new.len` characters) where the rule above puts it.
pub(super) fn integrate(list: &mut List, new: Item, text: &str) {
    let find = |list: &List, id: OpId| if id == NONE { None } else { list.find(id) };
    // Item boundaries right after the left origin and right before the right origin; then
    // look both up again, as splitting may have moved them.
    if let Some(l) = find(list, new.left) {
        list.split(Loc {
            off: l.off + 1,
            ..l
        });
    }
    if let Some(r) = find(list, new.right) {
        list.split(r);
    }
    let left = find(list, new.left);
    let right = find(list, new.right);
    let stop = right.map(|r| (r.chunk, r.item));
    let start = match left {
        Some(l) => list.next(l.chunk, l.item),
        None => list.first(),
    };

    let mut cur = start;
    let mut dest = start;
    let mut scanning = false;
    let mut decided = false;
    while let Some((c, i)) = cur {
        if cur == stop {
            break;
        }
        if !scanning {
            dest = cur;
        }
        let other = list.item(Loc {
            chunk: c,
            item: i,
            off: 0,
        });
        let ol = list.cmp_left(other.left, left);
        let or = list.cmp_right(other.right, right);
        if ol == Ordering::Less
            || (ol == Ordering::Equal && or == Ordering::Equal && new.id < other.id)
        {
            decided = true;
            break;
        }
        if ol == Ordering::Equal {
            scanning = or == Ordering::Less;
        }
        cur = list.next(c, i);
    }
    if !decided && !scanning {
        dest = cur;
    }
    let (c, i) = list.gap_before(dest);
    list.insert(c, i, new, text);
}

//! The event queue: a min-heap on (time, sequence number), so events at the same instant run in
//! the order they were scheduled and every run orders them the same way.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use bytes::Bytes;
use spore_core::time::Instant;

use crate::NodeIndex;
use spore_core::identity::PeerId;

/// Identifies one connection between two nodes (a reconnection gets a new id).
pub(crate) type ConnId = u64;

/// Something scheduled to happen.
#[derive(Debug)]
pub(crate) enum Pending {
    /// A connection finishes opening: both ends get `Connected`.
    LinkUp {
        conn: ConnId,
        a: NodeIndex,
        b: NodeIndex,
    },
    /// A frame arrives at `to`.
    Deliver {
        conn: ConnId,
        from: NodeIndex,
        to: NodeIndex,
        frame: Bytes,
    },
    /// `node` learns that its connection to `peer` closed.
    Closed { node: NodeIndex, peer: NodeIndex },
    /// `node`'s timer; stale unless `generation` is the node's current one.
    Timer { node: NodeIndex, generation: u64 },
    /// A dial `node` asked for found nobody to connect to.
    DialFailed { node: NodeIndex, peer: PeerId },
    /// Connections across partition `generation` reach their idle timeout.
    PartitionCut { generation: u64 },
}

#[derive(Debug)]
struct Entry {
    at: Instant,
    seq: u64,
    what: Pending,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}

impl Eq for Entry {}

impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Entry {
    /// Reversed, so that `BinaryHeap` (a max-heap) pops the earliest entry.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

/// The simulator's agenda.
#[derive(Debug, Default)]
pub(crate) struct Queue {
    heap: BinaryHeap<Entry>,
    next_seq: u64,
}

impl Queue {
    pub(crate) fn push(&mut self, at: Instant, what: Pending) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.heap.push(Entry { at, seq, what });
    }

    pub(crate) fn peek_time(&self) -> Option<Instant> {
        self.heap.peek().map(|e| e.at)
    }

    pub(crate) fn pop(&mut self) -> Option<(Instant, Pending)> {
        self.heap.pop().map(|e| (e.at, e.what))
    }

    pub(crate) fn len(&self) -> usize {
        self.heap.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn earliest_first_then_fifo() {
        let mut q = Queue::default();
        let timer = |n| Pending::Timer {
            node: NodeIndex(n),
            generation: 0,
        };
        q.push(Instant::from_micros(5), timer(0));
        q.push(Instant::from_micros(1), timer(1));
        q.push(Instant::from_micros(5), timer(2));
        q.push(Instant::from_micros(1), timer(3));
        let order: Vec<u32> = std::iter::from_fn(|| q.pop())
            .map(|(_, p)| match p {
                Pending::Timer { node, .. } => node.0,
                _ => u32::MAX,
            })
            .collect();
        assert_eq!(order, [1, 3, 0, 2]);
    }
}

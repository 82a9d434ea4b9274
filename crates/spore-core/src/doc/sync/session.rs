//! One sync session's state, and putting changes in causal order.

use std::collections::{BTreeSet, VecDeque};

use crate::doc::reconcile::Id;
use crate::doc::{Checkpoint, Document};
use crate::time::Instant;

/// Which side started the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Role {
    Initiator,
    Responder,
}

/// A session with one peer about one document: reconciliation rounds, then each side sends the
/// changes the other lacks, paced by acknowledgements.
#[derive(Debug)]
pub(super) struct Session {
    pub(super) role: Role,
    pub(super) last_active: Instant,
    /// A `Sync` from the peer arrived in this session.
    pub(super) answered: bool,
    /// Our access list went out in this session.
    pub(super) access_sent: bool,
    /// The version of the peer's access list, if it sent one.
    pub(super) peer_version: Option<u64>,
    /// Our clock went out in this session.
    pub(super) clock_sent: bool,
    /// The peer lacks changes our checkpoint covers: the number of the checkpoint whose state
    /// we are sending, and the offset of the next piece.
    pub(super) snapshot_out: Option<(u64, u64)>,
    /// A checkpoint's state arriving from the peer, so far.
    pub(super) snapshot_in: Option<(Checkpoint, Vec<u8>)>,
    /// Reconciliation is over; what we owe the peer is in `outbox`.
    pub(super) reconciled: bool,
    /// Changes the peer lacks, found so far.
    pub(super) to_send: BTreeSet<Id>,
    /// Changes the peer lacks, in causal order, not sent yet.
    pub(super) outbox: VecDeque<Id>,
    /// `Changes` messages sent and not acknowledged.
    pub(super) in_flight: usize,
    /// Our `Changes` with `last` went out.
    pub(super) sent_last: bool,
    /// The peer's `Changes` with `last` arrived.
    pub(super) peer_finished: bool,
    pub(super) rounds: u32,
    pub(super) sent_changes: u64,
    pub(super) received_changes: u64,
    pub(super) bytes_sent: u64,
    pub(super) bytes_received: u64,
}

impl Session {
    pub(super) fn new(role: Role, now: Instant) -> Self {
        Self {
            role,
            last_active: now,
            answered: false,
            access_sent: false,
            peer_version: None,
            clock_sent: false,
            snapshot_out: None,
            snapshot_in: None,
            reconciled: false,
            to_send: BTreeSet::new(),
            outbox: VecDeque::new(),
            in_flight: 0,
            sent_last: false,
            peer_finished: false,
            rounds: 0,
            sent_changes: 0,
            received_changes: 0,
            bytes_sent: 0,
            bytes_received: 0,
        }
    }

    /// Both directions delivered and acknowledged.
    pub(super) fn is_done(&self) -> bool {
        self.reconciled && self.sent_last && self.in_flight == 0 && self.peer_finished
    }

    /// Moves what was found to send into the outbox, in causal order.
    pub(super) fn flush(&mut self, doc: &Document) {
        let ids = std::mem::take(&mut self.to_send);
        self.outbox.extend(causal_order(doc, ids));
    }
}

/// The applied changes among `ids`, ordered so that every change comes after those it depends
/// on: a change's Lamport clock exceeds that of every change in its causal past, so sorting by
/// (Lamport, author, number) is a topological order, and a receiver that lacks exactly these
/// changes applies each one as it arrives, with nothing waiting.
pub(super) fn causal_order(doc: &Document, ids: impl IntoIterator<Item = Id>) -> Vec<Id> {
    let mut keyed: Vec<(u64, u32, u64, Id)> = ids
        .into_iter()
        .filter_map(|id| {
            doc.get_change(&id)
                .map(|c| (c.lamport(), c.author(), c.seq(), id))
        })
        .collect();
    keyed.sort_unstable();
    keyed.into_iter().map(|(.., id)| id).collect()
}

//! One sync session's state, and the pure helpers it uses: fitting a reconciliation reply into
//! a message's bounds, and putting changes in causal order.

use std::collections::{BTreeSet, VecDeque};

use crate::doc::reconcile::{Fingerprint, Id, IdSet, MAX_IDS, MAX_RANGES, Mode, Range};
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

/// Makes a reconciliation reply fit the bounds every receiver checks ([`MAX_RANGES`],
/// [`MAX_IDS`]); an answer to many mismatching ranges can exceed them (each splits into
/// `branches` sub-ranges). Two steps, each keeping reconciliation correct:
///
/// 1. lists of ids the peer lacks (`Ids` without `reply`) become `Skip`: we send those changes
///    anyway, so the peer need not hear their ids;
/// 2. if still too large, the first ranges are kept and the rest of the reply is covered by one
///    fingerprint of our ids there, which the peer splits again in a later round.
///
/// Returns an empty reply if nothing but `Skip` is left (the exchange is over), and whether the
/// reply had to be changed.
pub(super) fn fit(mut reply: Vec<Range>, set: &IdSet) -> (Vec<Range>, bool) {
    let cut = !fits(&reply);
    if cut {
        for r in &mut reply {
            if matches!(r.mode, Mode::Ids { reply: false, .. }) {
                r.mode = Mode::Skip;
            }
        }
        reply = merge_skips(reply);
    }
    if !fits(&reply) {
        let end = reply.last().and_then(|r| r.upper);
        let mut kept: Vec<Range> = Vec::new();
        let mut ids = 0;
        for r in reply {
            let n = id_count(&r);
            if kept.len() + 2 > MAX_RANGES || ids + n > MAX_IDS {
                break;
            }
            ids += n;
            kept.push(r);
        }
        let lower = kept.last().and_then(|r| r.upper);
        kept.push(Range {
            upper: end,
            mode: Mode::Fingerprint(fingerprint(set, lower.as_ref(), end.as_ref())),
        });
        reply = kept;
    }
    if reply.iter().all(|r| r.mode == Mode::Skip) {
        reply.clear();
    }
    (reply, cut)
}

fn id_count(r: &Range) -> usize {
    match &r.mode {
        Mode::Ids { ids, .. } => ids.len(),
        _ => 0,
    }
}

fn fits(reply: &[Range]) -> bool {
    reply.len() <= MAX_RANGES && reply.iter().map(id_count).sum::<usize>() <= MAX_IDS
}

fn merge_skips(ranges: Vec<Range>) -> Vec<Range> {
    let mut out: Vec<Range> = Vec::with_capacity(ranges.len());
    for r in ranges {
        if let Some(last) = out.last_mut()
            && last.mode == Mode::Skip
            && r.mode == Mode::Skip
        {
            last.upper = r.upper;
            continue;
        }
        out.push(r);
    }
    out
}

/// The reconciliation fingerprint of our ids in `[lower, upper)`, computed exactly as
/// [`reconcile`](crate::doc::reconcile) documents it: BLAKE3 over the 256-bit little-endian sum
/// of the ids and their count, first 16 bytes. (Linear in the range; only used for the rare
/// reply that must be cut short.)
pub(super) fn fingerprint(set: &IdSet, lower: Option<&Id>, upper: Option<&Id>) -> Fingerprint {
    let ids = set.ids();
    let from = lower.map_or(0, |l| ids.partition_point(|id| id < l));
    let to = upper
        .map_or(ids.len(), |u| ids.partition_point(|id| id < u))
        .max(from);
    let mut sum = [0u64; 4];
    for id in &ids[from..to] {
        let mut carry = false;
        for (i, limb) in sum.iter_mut().enumerate() {
            let mut b = [0u8; 8];
            b.copy_from_slice(&id[i * 8..i * 8 + 8]);
            let (s, c1) = limb.overflowing_add(u64::from_le_bytes(b));
            let (s, c2) = s.overflowing_add(u64::from(carry));
            *limb = s;
            carry = c1 || c2;
        }
    }
    let mut h = blake3::Hasher::new();
    for limb in sum {
        h.update(&limb.to_le_bytes());
    }
    h.update(&((to - from) as u64).to_le_bytes());
    let mut fp = [0u8; 16];
    fp.copy_from_slice(&h.finalize().as_bytes()[..16]);
    Fingerprint(fp)
}

//! What replicas say to each other while syncing.

use serde::{Deserialize, Serialize};

use crate::doc::change::{Access, Change, DocId, MAX_OPS, MAX_WRITERS};
use crate::doc::checkpoint::Checkpoint;
use crate::doc::crdt::Actor;
use crate::doc::reconcile::{self, Id, Range};
use crate::wire::{MAX_FRAME_LEN, WireError, check_bound};

/// Most changes in one [`Message::Changes`].
pub const MAX_CHANGES: usize = 256;
/// A sender starts a new [`Message::Changes`] before its changes exceed this many encoded bytes
/// (a single larger change travels alone).
pub const MAX_CHANGES_BYTES: usize = 512 * 1024;
/// Largest encoded change that can be sent at all: a frame's worth, less room for the message
/// around it. Larger ones are counted in [`Stats::oversized`](super::Stats::oversized) and not
/// sent.
pub const MAX_CHANGE_BYTES: usize = MAX_FRAME_LEN - 4096;
/// Most ids in one [`Message::Sync`]'s `want`.
pub const MAX_WANT: usize = reconcile::MAX_IDS;
/// Most bytes of state in one [`Message::Snapshot`].
pub const MAX_SNAPSHOT_CHUNK: usize = 256 * 1024;

/// Document sync's messages. All of them name the document; a session is the pair (peer, doc).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// One round of range-based reconciliation over the ids of the applied changes.
    Sync {
        /// The document.
        doc: DocId,
        /// The round: 0 starts a session, each answer counts one up.
        step: u32,
        /// The sender's access list: always in round 0, and in a responder's first answer if
        /// it is newer than the initiator's. A receiver adopts it if it extends its own.
        access: Option<Access>,
        /// The reconciliation message; empty means the sender is done reconciling (it sends
        /// the changes the peer lacks next, and expects the peer to do the same).
        ranges: Vec<Range>,
        /// Ids of changes the sender lacks and the receiver showed it has (in an id list the
        /// receiver sent): send them.
        want: Vec<Id>,
        /// How many changes of each writer the sender applied: in round 0 and in the
        /// responder's first answer. A receiver whose checkpoint covers changes this lacks
        /// sends the checkpoint's state; the owner learns what writers applied.
        clock: Option<Vec<(Actor, u64)>>,
        /// The sender's latest checkpoint, with its clock. A receiver folds it in once it
        /// has applied what it covers.
        checkpoint: Option<Box<Checkpoint>>,
    },
    /// Changes the receiver lacks, in causal order.
    Changes {
        /// The document.
        doc: DocId,
        /// The changes (at most [`MAX_CHANGES`]).
        changes: Vec<Change>,
        /// The sender's last batch of this session.
        last: bool,
    },
    /// One [`Message::Changes`] was processed; the sender may send another (flow control).
    Ack {
        /// The document.
        doc: DocId,
    },
    /// The sender does not replicate the document.
    Unknown {
        /// The document.
        doc: DocId,
    },
    /// The sender has no room for another session now; try later.
    Busy {
        /// The document.
        doc: DocId,
    },
    /// A piece of the state a checkpoint names, for a receiver that lacks changes it covers;
    /// sent before the session's changes, acknowledged like them.
    Snapshot {
        /// The document.
        doc: DocId,
        /// The checkpoint, in the first piece (offset 0) only.
        checkpoint: Option<Box<Checkpoint>>,
        /// Where the piece starts in the state.
        offset: u64,
        /// At most [`MAX_SNAPSHOT_CHUNK`] bytes.
        data: Vec<u8>,
    },
}

impl Message {
    /// The document the message is about.
    pub fn doc(&self) -> DocId {
        match self {
            Message::Sync { doc, .. }
            | Message::Snapshot { doc, .. }
            | Message::Changes { doc, .. }
            | Message::Ack { doc }
            | Message::Unknown { doc }
            | Message::Busy { doc } => *doc,
        }
    }

    /// Checks the bounds a decoder must enforce (counts; contents are verified on use).
    pub fn validate(&self) -> Result<(), WireError> {
        match self {
            Message::Sync {
                access,
                ranges,
                want,
                clock,
                checkpoint,
                ..
            } => {
                if let Some(a) = access {
                    check_bound("doc.sync.access.writers", a.writers().len(), MAX_WRITERS)?;
                }
                if let Some(c) = clock {
                    check_bound("doc.sync.clock", c.len(), MAX_WRITERS)?;
                }
                if let Some(c) = checkpoint {
                    check_bound("doc.sync.checkpoint", c.writers(), MAX_WRITERS)?;
                }
                reconcile::validate(ranges)?;
                check_bound("doc.sync.want", want.len(), MAX_WANT)
            }
            Message::Snapshot {
                checkpoint, data, ..
            } => {
                if let Some(c) = checkpoint {
                    check_bound("doc.snapshot.checkpoint", c.writers(), MAX_WRITERS)?;
                }
                check_bound("doc.snapshot.data", data.len(), MAX_SNAPSHOT_CHUNK)
            }
            Message::Changes { changes, .. } => {
                check_bound("doc.changes", changes.len(), MAX_CHANGES)?;
                for c in changes {
                    check_bound("doc.change.ops", c.ops().len(), MAX_OPS)?;
                    check_bound("doc.change.deps", c.deps().len(), MAX_WRITERS)?;
                }
                Ok(())
            }
            Message::Ack { .. } | Message::Unknown { .. } | Message::Busy { .. } => Ok(()),
        }
    }

    /// A short name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Sync { .. } => "doc-sync",
            Message::Snapshot { .. } => "doc-snapshot",
            Message::Changes { .. } => "doc-changes",
            Message::Ack { .. } => "doc-ack",
            Message::Unknown { .. } => "doc-unknown",
            Message::Busy { .. } => "doc-busy",
        }
    }
}

/// The postcard-encoded size of `value`, counted without allocating.
pub(super) fn encoded_len<T: Serialize>(value: &T) -> usize {
    postcard::serialize_with_flavor(value, postcard::ser_flavors::Size::default()).unwrap_or(0)
}

//! The swarm's wire messages and their bounds.

use std::ops::Range;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::{Hash, MAX_BLOB_SIZE, MAX_ENCODED_LEN, MAX_GROUPS, MAX_PEERS, MAX_RANGES};
use super::{MAX_REQUEST_GROUPS, RejectReason};
use crate::kad::record::{MAX_RECORD_ADDRS, MAX_RECORD_RELAYS, PeerRecord};
use crate::wire::{WireError, check_bound};

/// The swarm's messages. Every one names the blob (`hash`, its BLAKE3 root) it is about, so
/// one connection carries any number of swarms. Groups are numbered from 0 in units of
/// [`GROUP_BYTES`](super::GROUP_BYTES); ranges are half-open.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// The sender's bitfield: its claim of the blob's size (`None` until it has verified the
    /// last group, which proves the size) and the groups it has verified. The first `Have`
    /// between two peers is the handshake that puts each in the other's swarm: the peer that
    /// opens sends it, the other answers with its own (or [`Reject`](Message::Reject)). A
    /// later `Have` replaces the earlier one (sent when the size becomes known). Carries the
    /// sender's signed peer record, which the receiver may pass on in [`Peers`](Message::Peers).
    Have {
        /// The blob.
        hash: Hash,
        /// Its size in bytes, if the sender has proven it.
        size: Option<u64>,
        /// Verified groups; at most [`MAX_RANGES`] (a more fragmented bitfield is announced in
        /// part, the rest follows in [`HaveUpdate`](Message::HaveUpdate)s).
        ranges: Vec<Range<u64>>,
        /// The sender's signed record.
        record: Option<PeerRecord>,
    },
    /// Groups the sender has just verified (BitTorrent's HAVE).
    HaveUpdate {
        /// The blob.
        hash: Hash,
        /// The new groups; at most [`MAX_RANGES`].
        ranges: Vec<Range<u64>>,
    },
    /// The sender wants groups the receiver has: please unchoke me.
    Interested {
        /// The blob.
        hash: Hash,
    },
    /// The sender no longer wants anything the receiver has.
    NotInterested {
        /// The blob.
        hash: Hash,
    },
    /// The sender will not serve the receiver's requests, and has dropped those it had queued.
    Choke {
        /// The blob.
        hash: Hash,
    },
    /// The sender will serve the receiver's requests.
    Unchoke {
        /// The blob.
        hash: Hash,
    },
    /// Asks for `groups` (at most [`MAX_REQUEST_GROUPS`]).
    Request {
        /// The blob.
        hash: Hash,
        /// The groups.
        groups: Range<u64>,
    },
    /// Withdraws a request not answered yet.
    Cancel {
        /// The blob.
        hash: Hash,
        /// The groups, exactly as requested.
        groups: Range<u64>,
    },
    /// The answer to a request: bao-tree's verified-stream encoding of `groups` (each proof
    /// node, two 32-byte hashes, followed by what is under it, down to the groups' bytes), so
    /// the receiver checks every group against `hash` before it keeps a byte. At most
    /// [`MAX_ENCODED_LEN`] bytes.
    Data {
        /// The blob.
        hash: Hash,
        /// The groups, exactly as requested.
        groups: Range<u64>,
        /// Groups and proof.
        encoded: Bytes,
    },
    /// Refuses a request (`groups`), or with `groups: None` the swarm itself: the sender is
    /// not (or no longer) in a swarm of `hash` with the receiver.
    Reject {
        /// The blob.
        hash: Hash,
        /// The refused request, or `None` for the whole swarm.
        groups: Option<Range<u64>>,
        /// Why.
        reason: RejectReason,
    },
    /// Peer exchange within the swarm: signed records of other members (at most
    /// [`MAX_PEERS`]).
    Peers {
        /// The blob.
        hash: Hash,
        /// Their records.
        records: Vec<PeerRecord>,
    },
    /// The sender leaves the swarm (cancelled, or done and not seeding).
    Leave {
        /// The blob.
        hash: Hash,
    },
    /// The sender's signed acknowledgement of the verified bytes the receiver gave it, over
    /// all swarms (see [`credit`](super::credit)); `hash` is the swarm that prompted it.
    Receipt {
        /// The blob.
        hash: Hash,
        /// The receipt.
        receipt: super::credit::Receipt,
    },
}

fn usize_of(x: u64) -> usize {
    usize::try_from(x).unwrap_or(usize::MAX)
}

fn check_range(field: &'static str, r: &Range<u64>) -> Result<(), WireError> {
    check_bound(field, usize_of(r.end), usize_of(MAX_GROUPS))
}

fn check_request(field: &'static str, r: &Range<u64>) -> Result<(), WireError> {
    check_range(field, r)?;
    check_bound(
        field,
        usize_of(r.end.saturating_sub(r.start)),
        usize_of(MAX_REQUEST_GROUPS),
    )
}

fn check_ranges(field: &'static str, ranges: &[Range<u64>]) -> Result<(), WireError> {
    check_bound(field, ranges.len(), MAX_RANGES)?;
    ranges.iter().try_for_each(|r| check_range(field, r))
}

fn check_record(r: &PeerRecord) -> Result<(), WireError> {
    check_bound("swarm.record.addrs", r.addrs().len(), MAX_RECORD_ADDRS)?;
    check_bound("swarm.record.relays", r.relays().len(), MAX_RECORD_RELAYS)
}

impl Message {
    /// Checks the bounds a decoder must enforce: sizes at most [`MAX_BLOB_SIZE`], groups below
    /// [`MAX_GROUPS`], at most [`MAX_RANGES`] ranges, requests of at most
    /// [`MAX_REQUEST_GROUPS`], data of at most [`MAX_ENCODED_LEN`] bytes, at most
    /// [`MAX_PEERS`] records. (Empty or inverted ranges pass: the swarm ignores and counts
    /// them.)
    pub fn validate(&self) -> Result<(), WireError> {
        match self {
            Message::Have {
                size,
                ranges,
                record,
                ..
            } => {
                if let Some(size) = size {
                    check_bound("swarm.size", usize_of(*size), usize_of(MAX_BLOB_SIZE))?;
                }
                check_ranges("swarm.have.ranges", ranges)?;
                record.iter().try_for_each(check_record)
            }
            Message::HaveUpdate { ranges, .. } => check_ranges("swarm.have.ranges", ranges),
            Message::Request { groups, .. } | Message::Cancel { groups, .. } => {
                check_request("swarm.request.groups", groups)
            }
            Message::Data {
                groups, encoded, ..
            } => {
                check_request("swarm.data.groups", groups)?;
                check_bound("swarm.data.encoded", encoded.len(), MAX_ENCODED_LEN)
            }
            Message::Reject { groups, .. } => groups
                .iter()
                .try_for_each(|g| check_range("swarm.reject.groups", g)),
            Message::Peers { records, .. } => {
                check_bound("swarm.peers", records.len(), MAX_PEERS)?;
                records.iter().try_for_each(check_record)
            }
            Message::Interested { .. }
            | Message::NotInterested { .. }
            | Message::Choke { .. }
            | Message::Unchoke { .. }
            | Message::Leave { .. }
            | Message::Receipt { .. } => Ok(()),
        }
    }

    /// The blob the message is about.
    pub fn hash(&self) -> &Hash {
        match self {
            Message::Have { hash, .. }
            | Message::HaveUpdate { hash, .. }
            | Message::Interested { hash }
            | Message::NotInterested { hash }
            | Message::Choke { hash }
            | Message::Unchoke { hash }
            | Message::Request { hash, .. }
            | Message::Cancel { hash, .. }
            | Message::Data { hash, .. }
            | Message::Reject { hash, .. }
            | Message::Peers { hash, .. }
            | Message::Leave { hash }
            | Message::Receipt { hash, .. } => hash,
        }
    }

    /// A short name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Have { .. } => "swarm-have",
            Message::HaveUpdate { .. } => "swarm-have-update",
            Message::Interested { .. } => "swarm-interested",
            Message::NotInterested { .. } => "swarm-not-interested",
            Message::Choke { .. } => "swarm-choke",
            Message::Unchoke { .. } => "swarm-unchoke",
            Message::Request { .. } => "swarm-request",
            Message::Cancel { .. } => "swarm-cancel",
            Message::Data { .. } => "swarm-data",
            Message::Reject { .. } => "swarm-reject",
            Message::Peers { .. } => "swarm-peers",
            Message::Leave { .. } => "swarm-leave",
            Message::Receipt { .. } => "swarm-receipt",
        }
    }
}

//! The gossip messages, their bounds, and the signature over search hits.

use serde::{Deserialize, Serialize};

use crate::identity::{Keypair, PeerId, Signature, signed_message};
use crate::kad::record::{MAX_RECORD_ADDRS, MAX_RECORD_RELAYS, PeerRecord};
use crate::wire::{WireError, check_bound};

/// Most records in one [`Message::Shuffle`] or [`Message::ShuffleReply`].
pub const MAX_SHUFFLE_RECORDS: usize = 16;
/// Most words in one [`Message::Query`].
pub const MAX_WORDS: usize = 8;
/// Longest word of a [`Message::Query`], in bytes of UTF-8.
pub const MAX_WORD_LEN: usize = 64;
/// Most hits in one [`Message::Hits`].
pub const MAX_HITS: usize = 32;
/// Longest [`Hit::name`], in bytes of UTF-8; also the longest name [`share`](super::Gossip::share)
/// accepts.
pub const MAX_HIT_NAME_LEN: usize = 256;
/// Largest time-to-live of a random walk or a query; a message with more is a `Bounds` error.
pub const MAX_TTL: u8 = 16;

/// The context string of the signature over [`Message::Hits`].
const HITS_CONTEXT: &str = "spore-search-hits-v1";

/// Gossip's messages: membership (HyParView) and keyword search.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// "Let me into the overlay": sent once, to a peer we dialed, while our active view is
    /// empty. `record` is the joiner's own, so others can dial it.
    Join {
        /// The joiner's signed record.
        record: PeerRecord,
    },
    /// A random walk announcing a joiner; where it ends, the joiner is asked to be a neighbor.
    ForwardJoin {
        /// The joiner's signed record.
        record: PeerRecord,
        /// Remaining hops (at most [`MAX_TTL`]).
        ttl: u8,
    },
    /// "Make me your neighbor" (add me to your active view).
    Neighbor {
        /// Must be accepted, even if that evicts another neighbor: the sender has no neighbor
        /// left, or it answers a walk that announced a joiner.
        high_priority: bool,
        /// The sender's signed record, if it has one; kept so that, once the sender leaves our
        /// active view, it can go to the passive view.
        record: Option<PeerRecord>,
    },
    /// The answer to [`Message::Neighbor`], and to [`Message::Join`] (always accepted).
    NeighborReply {
        /// Whether the sender added us to its active view.
        accepted: bool,
    },
    /// "You are no longer in my active view." The connection stays; the node closes it when idle.
    Disconnect,
    /// A random walk carrying a sample of its origin's views; where it ends, the receiver answers
    /// with a sample of its own passive view.
    Shuffle {
        /// The record of the node that started the walk (the reply goes there).
        origin: PeerRecord,
        /// Records of the origin's active and passive members (at most [`MAX_SHUFFLE_RECORDS`]).
        records: Vec<PeerRecord>,
        /// Remaining hops (at most [`MAX_TTL`]).
        ttl: u8,
    },
    /// The answer to a [`Message::Shuffle`]: as many passive records as the shuffle carried.
    ShuffleReply {
        /// At most [`MAX_SHUFFLE_RECORDS`] records.
        records: Vec<PeerRecord>,
    },
    /// A keyword search, flooded over active views.
    Query {
        /// Chosen at random by the searcher; identifies the query along its whole path.
        id: u64,
        /// Lowercase words; a name matches if it contains every word (at most [`MAX_WORDS`],
        /// each at most [`MAX_WORD_LEN`] bytes).
        words: Vec<String>,
        /// Remaining hops including this one (at most [`MAX_TTL`]).
        ttl: u8,
    },
    /// Matches for a query, travelling back along the path the query came by.
    Hits {
        /// The query answered.
        id: u64,
        /// The record of the node that shares the names (it signed this message).
        responder: PeerRecord,
        /// The matches (at most [`MAX_HITS`]).
        hits: Vec<Hit>,
        /// The responder's signature over `postcard(("spore-search-hits-v1", id, hits))`.
        signature: Signature,
    },
}

/// One name a responder shares that matches a query.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hit {
    /// The shared name (at most [`MAX_HIT_NAME_LEN`] bytes).
    pub name: String,
    /// The BLAKE3 hash of the content.
    pub content: [u8; 32],
    /// The content's size in bytes.
    pub size: u64,
}

impl Message {
    /// Checks counts and sizes a decoder must bound: ttls at most [`MAX_TTL`], at most
    /// [`MAX_SHUFFLE_RECORDS`] records (each with at most [`MAX_RECORD_ADDRS`] addresses and
    /// [`MAX_RECORD_RELAYS`] relays), at most [`MAX_WORDS`] words of at most [`MAX_WORD_LEN`]
    /// bytes, at most [`MAX_HITS`] hits with names of at most [`MAX_HIT_NAME_LEN`] bytes.
    pub fn validate(&self) -> Result<(), WireError> {
        match self {
            Message::Join { record } => check_record(record),
            Message::ForwardJoin { record, ttl } => {
                check_ttl(*ttl)?;
                check_record(record)
            }
            Message::Neighbor { record, .. } => record.as_ref().map_or(Ok(()), check_record),
            Message::NeighborReply { .. } | Message::Disconnect => Ok(()),
            Message::Shuffle {
                origin,
                records,
                ttl,
            } => {
                check_ttl(*ttl)?;
                check_record(origin)?;
                check_records(records)
            }
            Message::ShuffleReply { records } => check_records(records),
            Message::Query { words, ttl, .. } => {
                check_ttl(*ttl)?;
                check_bound("gossip.words", words.len(), MAX_WORDS)?;
                for w in words {
                    check_bound("gossip.word", w.len(), MAX_WORD_LEN)?;
                }
                Ok(())
            }
            Message::Hits {
                responder, hits, ..
            } => {
                check_record(responder)?;
                check_bound("gossip.hits", hits.len(), MAX_HITS)?;
                for h in hits {
                    check_bound("gossip.hit.name", h.name.len(), MAX_HIT_NAME_LEN)?;
                }
                Ok(())
            }
        }
    }

    /// A short name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Join { .. } => "gossip-join",
            Message::ForwardJoin { .. } => "gossip-forward-join",
            Message::Neighbor { .. } => "gossip-neighbor",
            Message::NeighborReply { .. } => "gossip-neighbor-reply",
            Message::Disconnect => "gossip-disconnect",
            Message::Shuffle { .. } => "gossip-shuffle",
            Message::ShuffleReply { .. } => "gossip-shuffle-reply",
            Message::Query { .. } => "gossip-query",
            Message::Hits { .. } => "gossip-hits",
        }
    }
}

fn check_ttl(ttl: u8) -> Result<(), WireError> {
    check_bound("gossip.ttl", usize::from(ttl), usize::from(MAX_TTL))
}

fn check_record(r: &PeerRecord) -> Result<(), WireError> {
    check_bound("gossip.record.addrs", r.addrs().len(), MAX_RECORD_ADDRS)?;
    check_bound("gossip.record.relays", r.relays().len(), MAX_RECORD_RELAYS)
}

fn check_records(records: &[PeerRecord]) -> Result<(), WireError> {
    check_bound("gossip.records", records.len(), MAX_SHUFFLE_RECORDS)?;
    records.iter().try_for_each(check_record)
}

/// The message the signature of [`Message::Hits`] covers:
/// `postcard(("spore-search-hits-v1", id, hits))`.
fn hits_message(id: u64, hits: &[Hit]) -> Vec<u8> {
    signed_message(HITS_CONTEXT, &(id, hits))
}

/// Signs `hits` for query `id` with `keypair`.
pub(super) fn sign_hits(keypair: &Keypair, id: u64, hits: &[Hit]) -> Signature {
    keypair.sign(&hits_message(id, hits))
}

/// Whether `signature` is `responder`'s over `hits` for query `id`.
pub(super) fn verify_hits(
    responder: &PeerId,
    id: u64,
    hits: &[Hit],
    signature: &Signature,
) -> bool {
    responder.verify(&hits_message(id, hits), signature).is_ok()
}

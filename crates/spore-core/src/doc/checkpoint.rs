//! Checkpoints: a document's log folded into a snapshot of its state once every writer has
//! applied the changes it covers.
//!
//! A [`Checkpoint`] is signed by the document's owner. It names a causally closed set of
//! changes (a version vector: for each writer, its changes 1..=n), and the BLAKE3 hash and
//! size of the document's state after exactly those changes, in the canonical encoding of
//! this module. The owner makes one when the changes it covers are *causally stable* — every
//! live writer is known to have applied them ([`Document::stable`](super::Document::stable)) —
//! so no writer will ever need them again as single changes. Every replica that has applied
//! them computes the same state, checks it against the hash, and drops them from its log;
//! a replica that lacks some of them (a reader that was away, a new joiner) receives the
//! encoded state itself and checks it against the owner's signature and hash before use.
//!
//! What compaction frees: the changes themselves — the text that was deleted, overwritten
//! register values, removed set elements, every change's signature and causal context. What
//! stays: the state, which keeps one tombstone *id range* per deleted run of text (no text),
//! because a later insertion may name a deleted character as its right origin.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::change::{Access, DocError, DocId, MAX_WRITERS};
use super::crdt::{Actor, GCounter, LwwRegister, OrSet, PnCounter};
use super::document::{Entry, Kind};
use super::text::{Text, TextSnapshot};
use crate::identity::{Keypair, Signature, signed_message};

/// A version vector: for each writer, how many of its changes (1..=n).
pub type Clock = BTreeMap<Actor, u64>;

/// The owner's signed statement: "the state after exactly the changes in `clock` hashes to
/// `state`". See the [module docs](self).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    doc: DocId,
    number: u64,
    clock: Vec<(Actor, u64)>,
    state: [u8; 32],
    size: u64,
    signature: Signature,
}

impl Checkpoint {
    /// Signs checkpoint `number` of `doc` as its owner.
    pub(super) fn new(
        owner: &Keypair,
        doc: DocId,
        number: u64,
        clock: &Clock,
        state: &[u8],
    ) -> Self {
        let mut cp = Checkpoint {
            doc,
            number,
            clock: clock
                .iter()
                .filter(|(_, n)| **n > 0)
                .map(|(a, n)| (*a, *n))
                .collect(),
            state: *blake3::hash(state).as_bytes(),
            size: state.len() as u64,
            signature: Signature([0; 64]),
        };
        cp.signature = owner.sign(&cp.signed_bytes());
        cp
    }

    fn signed_bytes(&self) -> Vec<u8> {
        let fields = (&self.doc, self.number, &self.clock, &self.state, self.size);
        signed_message("spore-doc-checkpoint-v1", &fields)
    }

    /// Checks that it belongs to `access`'s document, is well formed (writers in order, no
    /// more than the document admits), and carries the owner's signature.
    pub fn verify(&self, access: &Access) -> Result<(), DocError> {
        if self.doc != access.doc() {
            return Err(DocError::WrongDocument);
        }
        if self.clock.len() > MAX_WRITERS {
            return Err(DocError::TooLarge("checkpoint clock"));
        }
        if !self.clock.windows(2).all(|w| w[0].0 < w[1].0) || self.clock.iter().any(|c| c.1 == 0) {
            return Err(DocError::Invalid("checkpoint clock not canonical"));
        }
        access
            .owner()
            .verify(&self.signed_bytes(), &self.signature)
            .map_err(|_| DocError::BadCheckpoint("not signed by the owner"))
    }

    /// The document.
    pub fn doc(&self) -> DocId {
        self.doc
    }

    /// Checkpoints of a document are numbered 1, 2, …; a higher number covers more.
    pub fn number(&self) -> u64 {
        self.number
    }

    /// The changes it covers: writer `a`'s changes `1..=clock[a]`.
    pub fn clock(&self) -> Clock {
        self.clock.iter().copied().collect()
    }

    /// Number of writers in its clock.
    pub fn writers(&self) -> usize {
        self.clock.len()
    }

    /// How many of `author`'s changes it covers.
    pub fn covers_of(&self, author: Actor) -> u64 {
        self.clock
            .binary_search_by_key(&author, |(a, _)| *a)
            .map_or(0, |i| self.clock[i].1)
    }

    /// Whether a replica that applied `clock` has every change it covers.
    pub fn is_covered_by(&self, clock: &Clock) -> bool {
        self.clock
            .iter()
            .all(|(a, n)| clock.get(a).copied().unwrap_or(0) >= *n)
    }

    /// Bytes of the encoded state.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Whether `state` is the state it names.
    pub fn matches(&self, state: &[u8]) -> bool {
        state.len() as u64 == self.size && *blake3::hash(state).as_bytes() == self.state
    }

    /// Changes it covers, over all writers.
    pub fn changes(&self) -> u64 {
        self.clock.iter().map(|(_, n)| n).sum()
    }
}

/// One entry of the encoded state.
#[derive(Serialize, Deserialize)]
enum EntryImage {
    Register(LwwRegister),
    Counter(PnCounter),
    GCounter(GCounter),
    Set(OrSet),
    Text(TextSnapshot),
}

/// The encoded state: the clock it is at, the Lamport clock, every entry in key order.
#[derive(Serialize, Deserialize)]
struct StateImage {
    clock: Vec<(Actor, u64)>,
    lamport: u64,
    entries: Vec<(Kind, String, EntryImage)>,
}

/// A document's state at one clock, decoded.
pub(super) struct State {
    pub(super) clock: Clock,
    pub(super) lamport: u64,
    pub(super) entries: BTreeMap<(Kind, String), Entry>,
}

/// The canonical encoding of a state (postcard; maps in key order, text in its canonical
/// form): replicas that applied the same changes encode equal bytes.
pub(super) fn encode(
    clock: &Clock,
    lamport: u64,
    entries: &BTreeMap<(Kind, String), Entry>,
) -> Vec<u8> {
    let image = StateImage {
        clock: clock
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(a, n)| (*a, *n))
            .collect(),
        lamport,
        entries: entries
            .iter()
            .map(|((kind, key), e)| {
                let e = match e {
                    Entry::Register(r) => EntryImage::Register(r.clone()),
                    Entry::Counter(c) => EntryImage::Counter(c.clone()),
                    Entry::GCounter(c) => EntryImage::GCounter(c.clone()),
                    Entry::Set(s) => EntryImage::Set(s.clone()),
                    Entry::Text(t) => EntryImage::Text(t.snapshot()),
                };
                (*kind, key.clone(), e)
            })
            .collect(),
    };
    postcard::to_allocvec(&image).unwrap_or_default()
}

/// Decodes a state, refusing anything but the canonical encoding of a well-formed one (so a
/// state that decodes re-encodes to the same bytes, and hashes as it did).
pub(super) fn decode(bytes: &[u8]) -> Result<State, DocError> {
    let bad = |_| DocError::BadCheckpoint("state does not decode");
    let image: StateImage = postcard::from_bytes(bytes).map_err(bad)?;
    let mut entries = BTreeMap::new();
    for (kind, key, e) in image.entries {
        let entry = match (kind, e) {
            (Kind::Register, EntryImage::Register(r)) => Entry::Register(r),
            (Kind::Counter, EntryImage::Counter(c)) => Entry::Counter(c),
            (Kind::GCounter, EntryImage::GCounter(c)) => Entry::GCounter(c),
            (Kind::Set, EntryImage::Set(s)) if s.is_well_formed() => Entry::Set(s),
            (Kind::Text, EntryImage::Text(t)) => Entry::Text(Box::new(
                Text::from_snapshot(&t)
                    .map_err(|_| DocError::BadCheckpoint("malformed text in state"))?,
            )),
            _ => return Err(DocError::BadCheckpoint("entry does not fit its kind")),
        };
        entries.insert((kind, key), entry);
    }
    let state = State {
        clock: image.clock.iter().copied().collect(),
        lamport: image.lamport,
        entries,
    };
    if encode(&state.clock, state.lamport, &state.entries) != bytes {
        return Err(DocError::BadCheckpoint("state not in canonical form"));
    }
    Ok(state)
}

//! What travels between replicas: the signed access list and signed changes.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::crdt::{Actor, Tag, Value};
use super::reconcile::Id;
use super::text::TextOp;
use crate::identity::{Keypair, PeerId, Signature, signed_message};

/// Prefix of the pub/sub topics of documents (followed by the [`DocId`]).
pub const DOC_TOPIC_PREFIX: &str = "spore/doc/";

/// Most writers a document admits.
pub const MAX_WRITERS: usize = 256;
/// Most operations in one change.
pub const MAX_OPS: usize = 1024;
/// Longest key, in bytes.
pub const MAX_KEY_LEN: usize = 256;
/// Largest value, in bytes.
pub const MAX_VALUE_LEN: usize = 64 * 1024;
/// Most adds one set remove may name.
pub const MAX_OBSERVED: usize = 1024;

/// A document's id: BLAKE3 over its owner and a nonce, so the id proves who owns it.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DocId(pub [u8; 32]);

impl DocId {
    /// The id of `owner`'s document made with `nonce`.
    pub fn derive(owner: &PeerId, nonce: u64) -> Self {
        let mut h = blake3::Hasher::new();
        h.update(b"spore-doc-id-v1");
        h.update(owner.as_bytes());
        h.update(&nonce.to_le_bytes());
        DocId(*h.finalize().as_bytes())
    }

    /// The pub/sub topic on which live changes of the document travel.
    pub fn topic(&self) -> String {
        format!("{DOC_TOPIC_PREFIX}{self}")
    }
}

impl fmt::Display for DocId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&data_encoding::BASE32_NOPAD.encode(&self.0).to_lowercase())
    }
}

impl fmt::Debug for DocId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DocId({self})")
    }
}

impl std::str::FromStr for DocId {
    type Err = &'static str;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bytes = data_encoding::BASE32_NOPAD
            .decode(s.trim().to_uppercase().as_bytes())
            .map_err(|_| "not base32")?;
        let id: [u8; 32] = bytes.try_into().map_err(|_| "not 32 bytes")?;
        Ok(DocId(id))
    }
}

/// One writer of a document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Writer {
    /// The writer's identity.
    pub peer: PeerId,
    /// `Some(n)`: the writer was revoked, and only its changes numbered up to `n` count.
    /// Fixing the cut by number, not by time of arrival, keeps replicas in agreement.
    pub until: Option<u64>,
}

/// Who may write a document, signed by its owner. Writers keep their index (their [`Actor`]) in
/// every later version: a new version only appends writers or revokes them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Access {
    owner: PeerId,
    nonce: u64,
    version: u64,
    writers: Vec<Writer>,
    signature: Signature,
}

impl Access {
    /// Signs version `version` of the access list of `owner`'s document `nonce`. The owner
    /// must be `writers[0]`.
    pub fn new(owner: &Keypair, nonce: u64, version: u64, writers: Vec<Writer>) -> Self {
        let mut a = Access {
            owner: owner.peer_id(),
            nonce,
            version,
            writers,
            signature: Signature([0; 64]),
        };
        a.signature = owner.sign(&a.signed_bytes());
        a
    }

    fn signed_bytes(&self) -> Vec<u8> {
        let fields = (&self.owner, self.nonce, self.version, &self.writers);
        signed_message("spore-doc-access-v1", &fields)
    }

    /// Checks the bounds, that the owner is writer 0, and the owner's signature.
    pub fn verify(&self) -> Result<(), DocError> {
        if self.writers.is_empty() || self.writers.len() > MAX_WRITERS {
            return Err(DocError::BadAccess("writer count out of bounds"));
        }
        if self.writers[0].peer != self.owner {
            return Err(DocError::BadAccess("the owner is not the first writer"));
        }
        self.owner
            .verify(&self.signed_bytes(), &self.signature)
            .map_err(|_| DocError::BadAccess("bad owner signature"))
    }

    /// Whether this version may replace `old`: same document, higher version, and every old
    /// writer still at its index (revocations may only be added or tightened).
    pub fn extends(&self, old: &Access) -> bool {
        self.doc() == old.doc()
            && self.version > old.version
            && self.writers.len() >= old.writers.len()
            && old.writers.iter().zip(&self.writers).all(|(o, n)| {
                o.peer == n.peer
                    && match (o.until, n.until) {
                        (None, _) => true,
                        (Some(a), Some(b)) => b <= a,
                        (Some(_), None) => false,
                    }
            })
    }

    /// The document's id.
    pub fn doc(&self) -> DocId {
        DocId::derive(&self.owner, self.nonce)
    }

    /// The owner.
    pub fn owner(&self) -> &PeerId {
        &self.owner
    }

    /// The nonce the id was derived with.
    pub fn nonce(&self) -> u64 {
        self.nonce
    }

    /// The version.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The writers; a writer's index is its [`Actor`].
    pub fn writers(&self) -> &[Writer] {
        &self.writers
    }

    /// The actor of `peer`, if it is a writer (revoked or not).
    pub fn actor_of(&self, peer: &PeerId) -> Option<Actor> {
        self.writers
            .iter()
            .position(|w| w.peer == *peer)
            .map(|i| i as Actor)
    }
}

/// One operation of a change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Writes a last-writer-wins register.
    Set {
        /// The register's key.
        key: String,
        /// The value.
        value: Value,
    },
    /// Adds `delta` to an up-and-down counter.
    Counter {
        /// The counter's key.
        key: String,
        /// The change.
        delta: i64,
    },
    /// Adds `by` to a grow-only counter.
    GCounter {
        /// The counter's key.
        key: String,
        /// The increment.
        by: u64,
    },
    /// Adds an element to an observed-remove set.
    SetAdd {
        /// The set's key.
        key: String,
        /// The element.
        element: Value,
    },
    /// Removes the adds of an element its author had seen.
    SetRemove {
        /// The set's key.
        key: String,
        /// The element.
        element: Value,
        /// The adds removed (at most [`MAX_OBSERVED`]).
        observed: Vec<Tag>,
    },
    /// Edits a text.
    Text {
        /// The text's key.
        key: String,
        /// The edit.
        op: TextOp,
    },
}

impl Op {
    /// The key the operation writes.
    pub fn key(&self) -> &str {
        match self {
            Op::Set { key, .. }
            | Op::Counter { key, .. }
            | Op::GCounter { key, .. }
            | Op::SetAdd { key, .. }
            | Op::SetRemove { key, .. }
            | Op::Text { key, .. } => key,
        }
    }

    fn check(&self) -> Result<(), DocError> {
        if self.key().len() > MAX_KEY_LEN {
            return Err(DocError::TooLarge("key"));
        }
        match self {
            Op::Set { value, .. } | Op::SetAdd { element: value, .. }
                if value.size() > MAX_VALUE_LEN =>
            {
                Err(DocError::TooLarge("value"))
            }
            Op::SetRemove {
                element, observed, ..
            } if element.size() > MAX_VALUE_LEN || observed.len() > MAX_OBSERVED => {
                Err(DocError::TooLarge("set remove"))
            }
            _ => Ok(()),
        }
    }
}

/// A change: operations by one writer, numbered, with the causal context they were made in,
/// signed by the writer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    doc: DocId,
    author: Actor,
    seq: u64,
    lamport: u64,
    deps: Vec<(Actor, u64)>,
    ops: Vec<Op>,
    signature: Signature,
}

impl Change {
    /// Builds and signs a change of `doc` by `keypair`, writer `author`.
    pub(super) fn new(
        keypair: &Keypair,
        doc: DocId,
        author: Actor,
        seq: u64,
        lamport: u64,
        deps: Vec<(Actor, u64)>,
        ops: Vec<Op>,
    ) -> Self {
        let mut c = Change {
            doc,
            author,
            seq,
            lamport,
            deps,
            ops,
            signature: Signature([0; 64]),
        };
        c.signature = keypair.sign(&c.signed_bytes());
        c
    }

    fn signed_bytes(&self) -> Vec<u8> {
        let fields = (
            &self.doc,
            self.author,
            self.seq,
            self.lamport,
            &self.deps,
            &self.ops,
        );
        signed_message("spore-doc-change-v1", &fields)
    }

    /// The change's id: BLAKE3 of its encoding.
    pub fn id(&self) -> Id {
        *blake3::hash(&self.encode()).as_bytes()
    }

    /// The encoding (postcard).
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).unwrap_or_default()
    }

    /// Checks the bounds and the author's signature against `access`.
    pub fn verify(&self, access: &Access) -> Result<(), DocError> {
        if self.doc != access.doc() {
            return Err(DocError::WrongDocument);
        }
        if self.ops.len() > MAX_OPS || self.deps.len() > MAX_WRITERS {
            return Err(DocError::TooLarge("change"));
        }
        if self.seq == 0 {
            return Err(DocError::Invalid("change number 0"));
        }
        let writer = access
            .writers
            .get(self.author as usize)
            .ok_or(DocError::UnknownWriter(self.author))?;
        if writer.until.is_some_and(|n| self.seq > n) {
            return Err(DocError::Revoked);
        }
        self.ops.iter().try_for_each(Op::check)?;
        writer
            .peer
            .verify(&self.signed_bytes(), &self.signature)
            .map_err(|_| DocError::BadSignature)
    }

    /// The document.
    pub fn doc(&self) -> DocId {
        self.doc
    }

    /// The author's index.
    pub fn author(&self) -> Actor {
        self.author
    }

    /// The author's change number.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The Lamport clock.
    pub fn lamport(&self) -> u64 {
        self.lamport
    }

    /// The causal context: for each writer, how many of its changes this one follows.
    pub fn deps(&self) -> &[(Actor, u64)] {
        &self.deps
    }

    /// The operations.
    pub fn ops(&self) -> &[Op] {
        &self.ops
    }
}

/// Why a document refused something.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DocError {
    /// The access list is malformed or not signed by the owner.
    #[error("bad access list: {0}")]
    BadAccess(&'static str),
    /// An access list that does not extend the current one.
    #[error("access list does not extend the current version")]
    StaleAccess,
    /// A change for another document.
    #[error("change belongs to another document")]
    WrongDocument,
    /// A change by a writer index the access list does not have (yet).
    #[error("unknown writer {0}")]
    UnknownWriter(Actor),
    /// A change by a revoked writer, past its cut.
    #[error("writer revoked")]
    Revoked,
    /// A change whose signature does not verify.
    #[error("bad change signature")]
    BadSignature,
    /// A size bound exceeded.
    #[error("{0} too large")]
    TooLarge(&'static str),
    /// Malformed content.
    #[error("invalid change: {0}")]
    Invalid(&'static str),
    /// The document would exceed its quota.
    #[error("document quota of {quota} bytes exceeded")]
    Quota {
        /// The quota.
        quota: usize,
    },
    /// Too many changes wait for their causal predecessors.
    #[error("too many changes waiting for their predecessors")]
    PendingFull,
    /// This node may not write the document.
    #[error("not a writer of this document")]
    NotAWriter,
    /// A checkpoint or the state it names is malformed, not the owner's, or does not match.
    #[error("bad checkpoint: {0}")]
    BadCheckpoint(&'static str),
    /// The key holds no text / a position is out of range.
    #[error("{0}")]
    Edit(String),
}

//! Sync between replicas: a node's replicated [`Document`]s, kept equal with the peers that
//! replicate them by set reconciliation, catch-up on reconnection, periodic anti-entropy and
//! live changes.
//!
//! **Sessions.** A session is one exchange between two peers about one document, at most one
//! per (peer, document). The initiator sends [`Message::Sync`] round 0 with its access list and
//! [`IdSet::initiate`] over the ids of its applied changes; each side answers the other's round
//! with [`IdSet::respond`] until one side's answer is empty, which it sends as a `Sync` with no
//! ranges ("done"). Along the way each side collects the changes the other lacks: the
//! `they_lack` of every step, plus the ids the peer asks for in `want`. (A side that receives
//! the peer's full id list for a range learns what it lacks there, but the peer does not, so
//! it asks; a side that receives a list of what the peer lacks needs not.) When a side sends or
//! receives "done", it sends what it owes in [`Message::Changes`], the last one marked `last`.
//! The session ends with [`Event::Synced`] once both sides' `last` went through and every
//! `Changes` was acknowledged.
//!
//! ```text
//!   A                                         B
//!   Sync{step 0, access, [fingerprint]}  →
//!                                        ←    Sync{step 1, [sub-range fingerprints…]}
//!   Sync{step 2, [ids…], want}           →
//!                                        ←    Sync{step 3, [], want}          (done)
//!                                        ←    Changes{…} … Changes{…, last}
//!   Changes{…, last}                     →    (A answers "done" with what it owes)
//!   Ack per Changes, both ways
//! ```
//!
//! - **Traffic grows with the difference.** Reconciliation costs a few rounds of fingerprints
//!   over the differing parts of the id space, then exactly the missing changes travel: two
//!   replicas of 100,000 changes that differ by 10 exchange about a quarter of a percent of the
//!   document's size (see the tests).
//! - **Causal order.** Changes go out sorted by (Lamport clock, author, number): a change's
//!   Lamport clock exceeds that of every change it depends on, so this is a topological order,
//!   and because reconciliation finds the whole difference, the receiver applies each change as
//!   it arrives; nothing waits in its bounded waiting room. Sending at the end of
//!   reconciliation, not as each round finds changes, is what makes the order global.
//! - **Access lists first.** Round 0 carries the initiator's access list and the responder's
//!   first answer carries its own if newer; a receiver adopts one that extends its own
//!   ([`Document::set_access`]). Both arrive before any change, so changes by newly admitted
//!   writers verify.
//! - **Verification.** Every change received is verified by [`Document::apply`] (writer,
//!   bounds, signature). A peer that sends an invalid one (bad signature, wrong document,
//!   malformed, oversized) is reported as [`Event::BadPeer`], its session ends and it is no
//!   longer a replica peer; the changes before the bad one are kept (each verified on its own).
//! - **Flow control.** At most [`Config::window`] `Changes` per session are unacknowledged, so
//!   a fresh replica catching up on a large document does not flood the connection's queue.
//! - **Collisions.** Two peers may start a session with each other at once (both see the
//!   connection come up). The session started by the smaller [`PeerId`] wins: its peer drops
//!   its own and answers; the winner ignores the loser's round 0 (after adopting its access).
//!
//! **Who syncs.** For each document the node keeps a bounded set of *replica peers*
//! ([`Config::max_replica_peers`], least recently heard evicted): those named when opening it
//! (a ticket's hints), peers that synced it or sent its changes, live or in sync. When a
//! replica peer becomes ready — a reconnection — every document shared with it is synced: this
//! is how the two sides of a partition merge. Every [`Config::anti_entropy`] (jittered ±50%)
//! each document is synced with one ready replica peer picked at random, which repairs lost
//! live updates. A peer that answers [`Message::Unknown`] is dropped from the set.
//!
//! **Live changes.** A local [`edit`](DocSync::edit) returns the change for the caller to
//! publish on [`DocId::topic`]. A change that arrives there is handed to
//! [`live`](DocSync::live): applied if causally ready, otherwise (a missed predecessor, or a
//! writer whose admission we have not seen) kept waiting while a session with the peer that
//! forwarded it fetches the gap.
//!
//! **The document id is a read capability.** Any peer that knows a [`DocId`] may sync the
//! document and so read all of it; nothing else is checked. Writing needs the owner's signed
//! admission in the access list. Share a document's id (its ticket) only with its readers.
//!
//! **Checkpoints.** Round 0 and the responder's first answer also carry the sender's clock and
//! its latest [`Checkpoint`]. The clock tells the document's owner what a writer applied; once
//! every live writer has applied enough of the log ([`Config::checkpoint_bytes`]), the owner's
//! node ([`set_signer`](DocSync::set_signer)) folds it into a new checkpoint
//! ([`Document::make_checkpoint`]). A replica that receives a checkpoint folds it once it has
//! applied what it covers, checking the state against the owner's hash ([`Document::fold`]). A
//! side whose checkpoint covers changes the peer's clock lacks sends the checkpoint's state
//! ([`Message::Snapshot`] pieces, under the same window) before its changes, and the peer
//! restores from it ([`Document::restore`]). Folding waits until no session on the document
//! runs. The store keeps the checkpoint and drops the changes it covers.
//!
//! **Bounds.** Documents ([`Config::max_docs`]), per-document [`Limits`], replica peers per
//! document, sessions ([`Config::max_sessions`], and [`Config::max_sessions_per_peer`]: ours
//! beyond it wait their turn, a peer asking for more is answered [`Message::Busy`]), rounds per session ([`Config::max_rounds`]; then "done", and the next
//! session continues), idle sessions dropped after [`Config::session_timeout`], message sizes
//! ([`Message::validate`]; a reconciliation reply that would exceed them is cut short with one
//! fingerprint over its tail), and the output queues.
//!
//! **Persistence** goes through [`DocStore`]: the access list whenever a document is created,
//! opened or gets a newer version, and every new verified change; [`DocSync::load`] restores
//! the documents, applying their changes again in causal order. [`MemoryStore`] keeps them in
//! memory. Store failures are reported ([`Event::StoreFailed`]), never panicked on.
//!
//! **Shape.** Like the other protocols, a deterministic state machine: inputs
//! [`handle_message`](DocSync::handle_message), [`peer_ready`](DocSync::peer_ready),
//! [`peer_gone`](DocSync::peer_gone), [`handle_timeout`](DocSync::handle_timeout) and the
//! commands; outputs polled from [`poll_transmit`](DocSync::poll_transmit),
//! [`poll_event`](DocSync::poll_event) and [`poll_timeout`](DocSync::poll_timeout), to be
//! drained after every input. Time and randomness are parameters. It talks only to peers it
//! was told are ready: making connections to replica peers is the owner's business
//! ([`replica_peers`](DocSync::replica_peers)).
//!
//! Known limits: a change whose encoding exceeds [`MAX_CHANGE_BYTES`] cannot be synced; the
//! reconciliation set of a document is rebuilt (O(n log n)) the first time it is needed after
//! the document changed; stored changes are verified again on load.

mod message;
mod session;
mod store;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use rand_core::RngCore;
use serde::{Deserialize, Serialize};

use super::change::{Access, Change, DocError, DocId};
use super::reconcile::{self, Id, IdSet, Mode};
use super::{Actor, Applied, Checkpoint, Document, Edit, Limits};
use crate::identity::{Keypair, PeerId};
use crate::random;
use crate::time::Instant;

use message::encoded_len;
pub use message::{
    MAX_CHANGE_BYTES, MAX_CHANGES, MAX_CHANGES_BYTES, MAX_SNAPSHOT_CHUNK, MAX_WANT, Message,
};
use session::{Role, Session};
pub use store::{DocStore, MemoryStore, StoreError};

/// Most outputs of each kind held between two drains; beyond it they are dropped and counted.
const MAX_QUEUED: usize = 65_536;

/// Most sessions waiting for a peer's session slots; beyond it, anti-entropy catches up.
const MAX_WAITING: usize = 4096;

/// Document sync's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Most documents replicated. Default 1024.
    pub max_docs: usize,
    /// Bounds of each document.
    pub limits: Limits,
    /// Most replica peers remembered per document. Default 32.
    pub max_replica_peers: usize,
    /// Most sessions at once, over all peers and documents. Default 64.
    pub max_sessions: usize,
    /// Most sessions at once with one peer. Default 16. Sessions this node would start beyond
    /// it wait in a queue and start as the peer's sessions end; a peer asking for more is
    /// answered [`Message::Busy`].
    pub max_sessions_per_peer: usize,
    /// Most reconciliation rounds in one session; then the session moves on to sending what
    /// it found. Default 32 (100,000 ids need about 6).
    pub max_rounds: u32,
    /// A session with no message for this long is dropped. Default 30 s.
    pub session_timeout: Duration,
    /// Mean interval of anti-entropy syncs (each document with one random replica peer);
    /// `None` turns them off. Default 30 s.
    pub anti_entropy: Option<Duration>,
    /// Most unacknowledged `Changes` (and `Snapshot`) messages per session. Default 32.
    pub window: usize,
    /// The owner folds causally stable changes into a checkpoint once they take this many
    /// bytes of the log. Default 1 MiB; `usize::MAX` never compacts.
    pub checkpoint_bytes: usize,
    /// Reconciliation tuning.
    pub reconcile: reconcile::Config,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_docs: 1024,
            limits: Limits::default(),
            max_replica_peers: 32,
            max_sessions: 64,
            max_sessions_per_peer: 16,
            max_rounds: 32,
            session_timeout: Duration::from_secs(30),
            anti_entropy: Some(Duration::from_secs(30)),
            window: 32,
            checkpoint_bytes: 1 << 20,
            reconcile: reconcile::Config::default(),
        }
    }
}

/// Why a session ended without [`Event::Synced`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FailReason {
    /// No message for [`Config::session_timeout`].
    Timeout,
    /// The peer disconnected.
    Gone,
    /// The peer does not replicate the document.
    Unknown,
    /// The peer had no room for another session.
    Busy,
}

/// What document sync reports.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// Changes from other replicas (or a newer access list) changed the document's state.
    Changed {
        /// The document.
        doc: DocId,
    },
    /// A session completed: both sides hold what the other had when it started.
    Synced {
        /// The document.
        doc: DocId,
        /// The peer.
        peer: PeerId,
        /// Changes sent to the peer.
        sent_changes: u64,
        /// New changes received from the peer.
        received_changes: u64,
        /// Encoded bytes of this session's messages sent.
        bytes_sent: u64,
        /// Encoded bytes of this session's messages received.
        bytes_received: u64,
        /// Reconciliation rounds received.
        rounds: u32,
    },
    /// A session ended without completing.
    SyncFailed {
        /// The document.
        doc: DocId,
        /// The peer.
        peer: PeerId,
        /// Why.
        reason: FailReason,
    },
    /// A peer sent an invalid change or access list; its session was ended. The owner may
    /// penalise or disconnect it.
    BadPeer {
        /// The document.
        doc: DocId,
        /// The peer.
        peer: PeerId,
        /// What was wrong.
        reason: DocError,
    },
    /// Persisting a document failed; the replica in memory is unaffected.
    StoreFailed {
        /// The document.
        doc: DocId,
        /// The store's error.
        error: StoreError,
    },
}

/// Why a command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SyncError {
    /// The document is not replicated here.
    #[error("unknown document")]
    UnknownDoc,
    /// The document is already replicated here.
    #[error("document already replicated")]
    Exists,
    /// Already replicating [`Config::max_docs`] documents.
    #[error("replicating the maximum number of documents")]
    TooManyDocs,
    /// Already running [`Config::max_sessions`] sessions.
    #[error("too many sync sessions")]
    TooManySessions,
    /// The peer is not ready; it is remembered as a replica peer and synced when it is.
    #[error("peer not ready")]
    NotReady,
    /// The document refused.
    #[error(transparent)]
    Doc(#[from] DocError),
}

/// Counters, for status, metrics and the simulator.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Local edits.
    pub edits: u64,
    /// Live changes handed in.
    pub live_received: u64,
    /// Changes applied because of live changes (with waiting ones they released).
    pub live_applied: u64,
    /// Live changes that were not causally ready (each may start a session).
    pub live_gaps: u64,
    /// Live changes refused as invalid.
    pub live_refused: u64,
    /// Sessions this node started.
    pub syncs_started: u64,
    /// Sessions peers started with this node.
    pub syncs_accepted: u64,
    /// Sessions completed.
    pub syncs_completed: u64,
    /// Sessions ended without completing.
    pub syncs_failed: u64,
    /// Sessions started by anti-entropy.
    pub anti_entropy_syncs: u64,
    /// Reconciliation rounds received.
    pub rounds: u64,
    /// Sessions cut short at `max_rounds`.
    pub round_limited: u64,
    /// Reconciliation replies cut to fit a message's bounds.
    pub replies_cut: u64,
    /// Sessions both peers started at once (one gave way).
    pub collisions: u64,
    /// Sync rounds for a session that had finished reconciling, ignored.
    pub stray: u64,
    /// Changes sent.
    pub changes_sent: u64,
    /// New changes received in sync.
    pub changes_received: u64,
    /// Changes received in sync that were known already.
    pub duplicates: u64,
    /// Changes received in sync and refused without blaming the sender (unknown writer,
    /// revoked, quota, waiting room full).
    pub changes_refused: u64,
    /// Peers reported as [`Event::BadPeer`].
    pub bad_peers: u64,
    /// Messages about documents not replicated here.
    pub unknown_docs: u64,
    /// Messages from or to peers the node does not trust enough for a closed document
    /// ([`DocSync::close`]), dropped.
    #[serde(default)]
    pub untrusted: u64,
    /// Sessions refused for lack of room (sent `Busy`).
    pub busy: u64,
    /// Newer access lists adopted.
    pub access_updates: u64,
    /// Messages sent.
    pub messages_sent: u64,
    /// Messages received.
    pub messages_received: u64,
    /// Encoded bytes of messages sent.
    pub bytes_sent: u64,
    /// Encoded bytes of messages received.
    pub bytes_received: u64,
    /// Messages out of bounds, ignored.
    pub invalid_messages: u64,
    /// Changes too large to send.
    pub oversized: u64,
    /// Store operations that failed.
    pub store_errors: u64,
    /// Stored changes that did not apply on load.
    pub load_refused: u64,
    /// Outputs dropped at the queue bound.
    pub dropped: u64,
    /// Checkpoints this node made, as the owner.
    pub checkpoints_made: u64,
    /// Checkpoints of other nodes' owners folded in (the state computed here matched).
    pub checkpoints_folded: u64,
    /// Changes dropped from logs by folding.
    pub changes_folded: u64,
    /// Checkpoints refused: not the owner's, not matching the state here, or cutting causal
    /// context.
    pub checkpoints_refused: u64,
    /// Checkpoint states sent whole to peers that lacked their changes.
    pub snapshots_sent: u64,
    /// Checkpoint states received and restored.
    pub snapshots_received: u64,
}

/// A replicated document and who else replicates it.
struct Replica {
    doc: Document,
    /// Replica peers, with when we last heard from them about this document.
    peers: BTreeMap<PeerId, Instant>,
    /// The reconciliation set and the log generation it was built at.
    ids: Option<(u64, IdSet)>,
    /// Closed to peers not trusted within this many vouches ([`DocSync::close`]).
    trusted_within: Option<u8>,
}

impl Replica {
    fn new(doc: Document) -> Self {
        Self {
            doc,
            peers: BTreeMap::new(),
            ids: None,
            trusted_within: None,
        }
    }

    fn ids(&mut self) -> &IdSet {
        let generation = self.doc.generation();
        if self.ids.as_ref().is_some_and(|(g, _)| *g != generation) {
            self.ids = None;
        }
        let (_, set) = self
            .ids
            .get_or_insert_with(|| (generation, self.doc.change_ids()));
        set
    }

    /// Remembers `peer` as a replica peer, evicting the least recently heard one if full.
    fn touch(&mut self, peer: PeerId, now: Instant, max: usize) {
        if let Some(t) = self.peers.get_mut(&peer) {
            *t = (*t).max(now);
            return;
        }
        if max == 0 {
            return;
        }
        if self.peers.len() >= max
            && let Some(old) = self
                .peers
                .iter()
                .min_by_key(|(p, t)| (**t, **p))
                .map(|(p, _)| *p)
        {
            self.peers.remove(&old);
        }
        self.peers.insert(peer, now);
    }
}

/// The output queues and counters, apart from the documents so both can be borrowed at once.
#[derive(Debug, Default)]
struct Out {
    transmits: VecDeque<(PeerId, Message)>,
    events: VecDeque<Event>,
    stats: Stats,
}

impl Out {
    fn send(&mut self, to: PeerId, msg: Message, session: Option<&mut Session>) {
        let bytes = encoded_len(&msg) as u64;
        self.stats.messages_sent += 1;
        self.stats.bytes_sent += bytes;
        if let Some(s) = session {
            s.bytes_sent += bytes;
        }
        if self.transmits.len() < MAX_QUEUED {
            self.transmits.push_back((to, msg));
        } else {
            self.stats.dropped += 1;
        }
    }

    fn emit(&mut self, event: Event) {
        if self.events.len() < MAX_QUEUED {
            self.events.push_back(event);
        } else {
            self.stats.dropped += 1;
        }
    }

    fn store_result(&mut self, doc: DocId, result: Result<(), StoreError>) {
        if let Err(error) = result {
            self.stats.store_errors += 1;
            self.emit(Event::StoreFailed { doc, error });
        }
    }
}

/// The document sync state machine. See the [module docs](self).
pub struct DocSync {
    local: PeerId,
    /// The node's key, to sign checkpoints of the documents it owns.
    signer: Option<Keypair>,
    config: Config,
    store: Box<dyn DocStore + Send>,
    docs: BTreeMap<DocId, Replica>,
    sessions: BTreeMap<(PeerId, DocId), Session>,
    /// Sessions to start once the peer has a session slot free.
    waiting: BTreeSet<(PeerId, DocId)>,
    ready: BTreeSet<PeerId>,
    out: Out,
    next_anti_entropy: Option<Instant>,
}

impl std::fmt::Debug for DocSync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DocSync")
            .field("local", &self.local)
            .field("docs", &self.docs.len())
            .field("sessions", &self.sessions.len())
            .field("stats", &self.out.stats)
            .finish_non_exhaustive()
    }
}

impl DocSync {
    /// Document sync for the node `local`, keeping documents in a [`MemoryStore`].
    pub fn new(local: PeerId, config: Config) -> Self {
        Self::with_store(local, config, Box::new(MemoryStore::new()))
    }

    /// Document sync for the node `local`, persisting through `store`. Call
    /// [`load`](Self::load) to restore what the store holds.
    pub fn with_store(local: PeerId, config: Config, store: Box<dyn DocStore + Send>) -> Self {
        Self {
            local,
            signer: None,
            config,
            store,
            docs: BTreeMap::new(),
            sessions: BTreeMap::new(),
            waiting: BTreeSet::new(),
            ready: BTreeSet::new(),
            out: Out::default(),
            next_anti_entropy: None,
        }
    }

    /// Gives document sync the node's key (whose id must be `local`), so that it makes
    /// checkpoints of the documents the node owns. Without it, it only follows the owners'.
    pub fn set_signer(&mut self, keypair: Keypair) {
        if keypair.peer_id() == self.local {
            self.signer = Some(keypair);
        }
    }

    /// Restores the store's documents (those not replicated already, up to
    /// [`Config::max_docs`]), applying their changes in causal order; returns how many.
    pub fn load(&mut self) -> Result<usize, StoreError> {
        let mut loaded = 0;
        for (access, mut changes) in self.store.load()? {
            let id = access.doc();
            if self.docs.contains_key(&id) || self.docs.len() >= self.config.max_docs {
                continue;
            }
            let Ok(mut doc) = Document::open(access, self.config.limits) else {
                self.out.stats.load_refused += changes.len() as u64;
                continue;
            };
            if let Some((cp, state)) = self.store.load_checkpoint(&id)?
                && doc.restore(cp, state).is_err()
            {
                // The changes it covered are gone from the store: the replica catches up from
                // its peers (a checkpoint's state is fetched whole when needed).
                self.out.stats.load_refused += 1;
            }
            changes.sort_by_key(|c| (c.lamport(), c.author(), c.seq()));
            for c in changes {
                if doc.apply(c).is_err() {
                    self.out.stats.load_refused += 1;
                }
            }
            self.docs.insert(id, Replica::new(doc));
            loaded += 1;
        }
        Ok(loaded)
    }

    /// This node's id.
    pub fn local(&self) -> &PeerId {
        &self.local
    }

    /// The settings.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        self.out.stats
    }

    /// The replicated documents, by id.
    pub fn docs(&self) -> impl Iterator<Item = &Document> {
        self.docs.values().map(|r| &r.doc)
    }

    /// A replicated document.
    pub fn doc(&self, id: &DocId) -> Option<&Document> {
        self.docs.get(id).map(|r| &r.doc)
    }

    /// The peers known to replicate `doc` (for the owner to keep connections to).
    pub fn replica_peers(&self, doc: &DocId) -> impl Iterator<Item = &PeerId> {
        self.docs.get(doc).into_iter().flat_map(|r| r.peers.keys())
    }

    /// Number of sessions running.
    pub fn sessions(&self) -> usize {
        self.sessions.len()
    }

    /// Whether a session with `peer` about `doc` is running.
    pub fn is_syncing(&self, peer: &PeerId, doc: &DocId) -> bool {
        self.sessions.contains_key(&(*peer, *doc))
    }

    /// Command: creates a document owned by `keypair` (`nonce` makes its id unique among the
    /// owner's). Returns the id of the existing replica if there is one.
    pub fn create(&mut self, keypair: &Keypair, nonce: u64) -> Result<DocId, SyncError> {
        let id = DocId::derive(&keypair.peer_id(), nonce);
        if self.docs.contains_key(&id) {
            return Ok(id);
        }
        self.check_room()?;
        let doc = Document::create(keypair, nonce, self.config.limits);
        let saved = self.store.save_access(doc.access());
        self.out.store_result(id, saved);
        self.docs.insert(id, Replica::new(doc));
        Ok(id)
    }

    /// Command: replicates the document `access` describes (joining from a ticket), with
    /// `peers` known to replicate it; syncs with those that are ready. For a document
    /// replicated already, adopts `access` if newer and adds the peers.
    pub fn open(
        &mut self,
        now: Instant,
        access: Access,
        peers: &[PeerId],
    ) -> Result<DocId, SyncError> {
        self.arm(now);
        let id = access.doc();
        match self.docs.get_mut(&id) {
            Some(replica) => {
                adopt_access(&mut *self.store, &mut self.out, replica, access)?;
            }
            None => {
                self.check_room()?;
                let doc = Document::open(access, self.config.limits)?;
                let saved = self.store.save_access(doc.access());
                self.out.store_result(id, saved);
                self.docs.insert(id, Replica::new(doc));
            }
        }
        self.add_peers(now, id, peers);
        Ok(id)
    }

    /// Command: adds a replica built elsewhere (imported, or restored by the owner), and
    /// persists it.
    pub fn insert(&mut self, doc: Document) -> Result<DocId, SyncError> {
        let id = doc.id();
        if self.docs.contains_key(&id) {
            return Err(SyncError::Exists);
        }
        self.check_room()?;
        let saved = self.store.save_access(doc.access());
        self.out.store_result(id, saved);
        let changes: Vec<Change> = doc.changes_since(&BTreeMap::new()).cloned().collect();
        let saved = self.store.save_changes(&id, &changes);
        self.out.store_result(id, saved);
        if let Some((cp, state)) = doc.snapshot() {
            let saved = self.store.save_checkpoint(&id, cp, state);
            self.out.store_result(id, saved);
        }
        self.docs.insert(id, Replica::new(doc));
        Ok(id)
    }

    /// Command: closes `doc` to peers this node does not trust within `depth` vouches (see
    /// [`crate::trust::wot`]): nothing about the document goes to them and nothing from them
    /// is taken, so only trusted peers replicate it through this node. Lasts while the node
    /// runs; [`open_to_all`](Self::open_to_all) lifts it.
    pub fn close(&mut self, doc: &DocId, depth: u8) -> Result<(), SyncError> {
        let replica = self.docs.get_mut(doc).ok_or(SyncError::UnknownDoc)?;
        replica.trusted_within = Some(depth);
        self.sessions.retain(|(_, d), _| d != doc);
        Ok(())
    }

    /// Command: opens a closed document to every peer again. False if it was not closed.
    pub fn open_to_all(&mut self, doc: &DocId) -> bool {
        self.docs
            .get_mut(doc)
            .and_then(|r| r.trusted_within.take())
            .is_some()
    }

    /// The depth of trust `doc` requires of peers, if it is closed.
    pub fn trusted_within(&self, doc: &DocId) -> Option<u8> {
        self.docs.get(doc).and_then(|r| r.trusted_within)
    }

    /// Command: stops replicating `doc`: ends its sessions and removes it from the store.
    /// False if it was not replicated.
    pub fn remove(&mut self, doc: &DocId) -> bool {
        if self.docs.remove(doc).is_none() {
            return false;
        }
        self.sessions.retain(|(_, d), _| d != doc);
        let removed = self.store.remove(doc);
        self.out.store_result(*doc, removed);
        true
    }

    /// Command: makes a change of `edits` as `keypair` (a writer), applies and persists it,
    /// and returns it, for the caller to publish on [`DocId::topic`].
    pub fn edit(
        &mut self,
        keypair: &Keypair,
        doc: &DocId,
        edits: Vec<Edit>,
    ) -> Result<Change, SyncError> {
        let replica = self.docs.get_mut(doc).ok_or(SyncError::UnknownDoc)?;
        let change = replica.doc.change(keypair, edits)?;
        let saved = self.store.save_changes(doc, std::slice::from_ref(&change));
        self.out.store_result(*doc, saved);
        self.out.stats.edits += 1;
        Ok(change)
    }

    /// Command: as the owner, admits `peer` as a writer of `doc`. The new access list is
    /// persisted and synced to every ready replica peer; `peer` becomes a replica peer.
    pub fn add_writer(
        &mut self,
        now: Instant,
        owner: &Keypair,
        doc: &DocId,
        peer: PeerId,
    ) -> Result<Access, SyncError> {
        let replica = self.docs.get_mut(doc).ok_or(SyncError::UnknownDoc)?;
        let access = replica.doc.add_writer(owner, peer)?;
        self.access_changed(now, *doc, &access, Some(peer));
        Ok(access)
    }

    /// Command: as the owner, revokes `peer` as a writer of `doc` (see
    /// [`Document::revoke_writer`]); the new access list is persisted and synced.
    pub fn revoke_writer(
        &mut self,
        now: Instant,
        owner: &Keypair,
        doc: &DocId,
        peer: &PeerId,
    ) -> Result<Access, SyncError> {
        let replica = self.docs.get_mut(doc).ok_or(SyncError::UnknownDoc)?;
        let access = replica.doc.revoke_writer(owner, peer)?;
        self.access_changed(now, *doc, &access, None);
        Ok(access)
    }

    /// Command: a change of `doc` that arrived live (over pub/sub), forwarded by `from`.
    /// Applied if causally ready; otherwise it waits, and a session with `from` fetches what
    /// is missing (also when its writer is not in our access list yet, or the waiting room is
    /// full). An invalid change is refused with the document's error, and nothing else
    /// happens: the pub/sub validator should reject it.
    pub fn live(
        &mut self,
        now: Instant,
        from: PeerId,
        doc: DocId,
        change: Change,
    ) -> Result<Applied, SyncError> {
        self.arm(now);
        if change.doc() != doc {
            return Err(DocError::WrongDocument.into());
        }
        let replica = self.docs.get_mut(&doc).ok_or(SyncError::UnknownDoc)?;
        self.out.stats.live_received += 1;
        let result = replica.doc.apply(change.clone());
        let gap = match &result {
            Ok(a) => {
                if !a.duplicate {
                    let saved = self.store.save_changes(&doc, std::slice::from_ref(&change));
                    self.out.store_result(doc, saved);
                }
                if a.applied > 0 {
                    self.out.stats.live_applied += a.applied as u64;
                    self.out.emit(Event::Changed { doc });
                }
                !a.duplicate && a.applied == 0
            }
            Err(DocError::UnknownWriter(_) | DocError::PendingFull) => true,
            Err(_) => {
                self.out.stats.live_refused += 1;
                false
            }
        };
        if from != self.local && (result.is_ok() || gap) {
            replica.touch(from, now, self.config.max_replica_peers);
        }
        if gap {
            self.out.stats.live_gaps += 1;
            if self.ready.contains(&from) {
                let _ = self.start(now, from, doc);
            }
        }
        result.map_err(SyncError::from)
    }

    /// Command: starts a session with `peer` about `doc` (nothing to do if one is running).
    /// `peer` becomes a replica peer; if it is not ready, the sync happens when it is.
    pub fn sync_with(&mut self, now: Instant, peer: PeerId, doc: DocId) -> Result<(), SyncError> {
        self.arm(now);
        let replica = self.docs.get_mut(&doc).ok_or(SyncError::UnknownDoc)?;
        if peer != self.local {
            replica.touch(peer, now, self.config.max_replica_peers);
        }
        if !self.ready.contains(&peer) {
            return Err(SyncError::NotReady);
        }
        self.start(now, peer, doc)
    }

    /// Command: remembers `peers` as replicas of `doc`, and syncs with those that are ready.
    pub fn add_replica_peers(
        &mut self,
        now: Instant,
        doc: &DocId,
        peers: &[PeerId],
    ) -> Result<(), SyncError> {
        if !self.docs.contains_key(doc) {
            return Err(SyncError::UnknownDoc);
        }
        self.add_peers(now, *doc, peers);
        Ok(())
    }

    /// Input: a message from `from`.
    pub fn handle_message(&mut self, now: Instant, from: PeerId, msg: Message) {
        self.arm(now);
        let bytes = encoded_len(&msg) as u64;
        self.out.stats.messages_received += 1;
        self.out.stats.bytes_received += bytes;
        if msg.validate().is_err() {
            self.out.stats.invalid_messages += 1;
            return;
        }
        let doc_of = msg.doc();
        let ended = !matches!(msg, Message::Sync { .. });
        match msg {
            Message::Sync {
                doc,
                step,
                access,
                ranges,
                want,
                clock,
                checkpoint,
            } => {
                let round = Round {
                    step,
                    access,
                    ranges,
                    want,
                    clock,
                    checkpoint,
                };
                self.on_sync(now, from, doc, round, bytes)
            }
            Message::Snapshot {
                doc,
                checkpoint,
                offset,
                data,
            } => self.on_snapshot(now, from, doc, checkpoint, offset, data, bytes),
            Message::Changes { doc, changes, last } => {
                self.on_changes(now, from, doc, changes, last, bytes)
            }
            Message::Ack { doc } => self.on_ack(now, from, doc, bytes),
            Message::Unknown { doc } => self.on_refused(from, doc, FailReason::Unknown),
            Message::Busy { doc } => self.on_refused(from, doc, FailReason::Busy),
        }
        self.settle(doc_of);
        if ended {
            self.start_waiting(now, from);
        }
    }

    /// Input: `peer` is ready (connected, `Hello` verified). Every document it is known to
    /// replicate is synced with it: the catch-up after a reconnection, and the merge after a
    /// partition. Documents beyond the session bound wait for anti-entropy.
    pub fn peer_ready(&mut self, now: Instant, peer: PeerId) {
        self.arm(now);
        self.ready.insert(peer);
        let shared: Vec<DocId> = self
            .docs
            .iter()
            .filter(|(_, r)| r.peers.contains_key(&peer))
            .map(|(id, _)| *id)
            .collect();
        for doc in shared {
            if self.start(now, peer, doc).is_err() {
                break;
            }
        }
    }

    /// Input: `peer` is gone; its sessions fail.
    pub fn peer_gone(&mut self, _now: Instant, peer: PeerId) {
        self.ready.remove(&peer);
        self.waiting.retain(|(p, _)| *p != peer);
        let ended: Vec<(PeerId, DocId)> = self
            .sessions
            .keys()
            .filter(|(p, _)| *p == peer)
            .copied()
            .collect();
        for key in ended {
            self.fail(key, FailReason::Gone);
            self.settle(key.1);
        }
    }

    /// Input: the time from [`poll_timeout`](Self::poll_timeout) has come. Drops idle
    /// sessions and runs anti-entropy when due.
    pub fn handle_timeout(&mut self, now: Instant, rng: &mut impl RngCore) {
        let timeout = self.config.session_timeout;
        let idle: Vec<(PeerId, DocId)> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.last_active + timeout <= now)
            .map(|(k, _)| *k)
            .collect();
        for key in idle {
            self.fail(key, FailReason::Timeout);
            self.settle(key.1);
            self.start_waiting(now, key.0);
        }
        let Some(interval) = self.config.anti_entropy else {
            return;
        };
        match self.next_anti_entropy {
            Some(t) if t <= now => {
                self.anti_entropy(now, rng);
                self.next_anti_entropy = Some(now + jittered(interval, rng));
            }
            None => self.next_anti_entropy = Some(now + jittered(interval, rng)),
            Some(_) => {}
        }
    }

    /// The next instant at which [`handle_timeout`](Self::handle_timeout) has work.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let timeout = self.config.session_timeout;
        let sessions = self
            .sessions
            .values()
            .map(|s| s.last_active + timeout)
            .min();
        let anti_entropy = self.next_anti_entropy.filter(|_| !self.docs.is_empty());
        match (sessions, anti_entropy) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Output: the next message to send.
    pub fn poll_transmit(&mut self) -> Option<(PeerId, Message)> {
        self.out.transmits.pop_front()
    }

    /// Output: the next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.out.events.pop_front()
    }

    /// Starts the sessions waiting for `peer`'s slots, as far as they allow.
    fn start_waiting(&mut self, now: Instant, peer: PeerId) {
        while sessions_with(&self.sessions, &peer) < self.config.max_sessions_per_peer
            && self.sessions.len() < self.config.max_sessions
        {
            let next = self.waiting.range(keys_of(&peer)).next().copied();
            let Some(key) = next else {
                return;
            };
            self.waiting.remove(&key);
            if self.ready.contains(&peer) && self.docs.contains_key(&key.1) {
                let _ = self.start(now, peer, key.1);
            }
        }
    }

    fn check_room(&self) -> Result<(), SyncError> {
        if self.docs.len() >= self.config.max_docs {
            Err(SyncError::TooManyDocs)
        } else {
            Ok(())
        }
    }

    /// Arms the anti-entropy timer the first time an input brings the time.
    fn arm(&mut self, now: Instant) {
        if self.next_anti_entropy.is_none()
            && let Some(interval) = self.config.anti_entropy
        {
            self.next_anti_entropy = Some(now + interval);
        }
    }

    fn add_peers(&mut self, now: Instant, doc: DocId, peers: &[PeerId]) {
        let Some(replica) = self.docs.get_mut(&doc) else {
            return;
        };
        for p in peers.iter().filter(|p| **p != self.local) {
            replica.touch(*p, now, self.config.max_replica_peers);
        }
        for p in peers {
            if self.ready.contains(p) && self.start(now, *p, doc).is_err() {
                break;
            }
        }
    }

    /// A new access list made here: persist it and tell the ready replica peers.
    fn access_changed(&mut self, now: Instant, doc: DocId, access: &Access, peer: Option<PeerId>) {
        let saved = self.store.save_access(access);
        self.out.store_result(doc, saved);
        let Some(replica) = self.docs.get_mut(&doc) else {
            return;
        };
        if let Some(p) = peer.filter(|p| *p != self.local) {
            replica.touch(p, now, self.config.max_replica_peers);
        }
        let peers: Vec<PeerId> = replica
            .peers
            .keys()
            .filter(|p| self.ready.contains(p))
            .copied()
            .collect();
        for p in peers {
            if self.start(now, p, doc).is_err() {
                break;
            }
        }
    }

    /// Starts a session as initiator (nothing if one is running).
    fn start(&mut self, now: Instant, peer: PeerId, doc: DocId) -> Result<(), SyncError> {
        if self.sessions.contains_key(&(peer, doc)) {
            return Ok(());
        }
        if self.sessions.len() >= self.config.max_sessions {
            return Err(SyncError::TooManySessions);
        }
        if sessions_with(&self.sessions, &peer) >= self.config.max_sessions_per_peer {
            if self.waiting.len() < MAX_WAITING {
                self.waiting.insert((peer, doc));
            }
            return Ok(());
        }
        let replica = self.docs.get_mut(&doc).ok_or(SyncError::UnknownDoc)?;
        let ranges = replica.ids().initiate(&self.config.reconcile);
        let mut session = Session::new(Role::Initiator, now);
        session.access_sent = true;
        session.clock_sent = true;
        let msg = Message::Sync {
            doc,
            step: 0,
            access: Some(replica.doc.access().clone()),
            ranges,
            want: Vec::new(),
            clock: Some(clock_vec(&replica.doc)),
            checkpoint: replica.doc.checkpoint().cloned().map(Box::new),
        };
        self.out.send(peer, msg, Some(&mut session));
        self.sessions.insert((peer, doc), session);
        self.out.stats.syncs_started += 1;
        Ok(())
    }

    fn anti_entropy(&mut self, now: Instant, rng: &mut impl RngCore) {
        let ids: Vec<DocId> = self.docs.keys().copied().collect();
        for doc in ids {
            let Some(replica) = self.docs.get(&doc) else {
                continue;
            };
            let candidates: Vec<PeerId> = replica
                .peers
                .keys()
                .filter(|p| self.ready.contains(p) && !self.sessions.contains_key(&(**p, doc)))
                .copied()
                .collect();
            let Some(&peer) = random::choose(rng, &candidates) else {
                continue;
            };
            if self.start(now, peer, doc).is_err() {
                break;
            }
            self.out.stats.anti_entropy_syncs += 1;
        }
    }

    fn on_sync(&mut self, now: Instant, from: PeerId, doc: DocId, round: Round, bytes: u64) {
        let Round {
            step,
            access,
            ranges,
            want,
            clock,
            checkpoint,
        } = round;
        let Self {
            local,
            config,
            store,
            docs,
            sessions,
            out,
            ..
        } = self;
        let Some(replica) = docs.get_mut(&doc) else {
            out.stats.unknown_docs += 1;
            out.send(from, Message::Unknown { doc }, None);
            return;
        };
        out.stats.rounds += 1;
        let peer_version = access.as_ref().map(Access::version);
        if let Some(a) = access
            && let Err(reason) = adopt_access(&mut **store, out, replica, a)
        {
            bad_peer(sessions, out, replica, from, doc, reason);
            return;
        }
        if let Some(cp) = checkpoint
            && let Err(reason) = replica.doc.offer_checkpoint(*cp)
        {
            out.stats.checkpoints_refused += 1;
            bad_peer(sessions, out, replica, from, doc, reason);
            return;
        }
        if let Some(c) = &clock
            && let Some(writer) = replica.doc.access().actor_of(&from)
        {
            replica.doc.note_clock(writer, c);
        }
        replica.touch(from, now, config.max_replica_peers);
        let key = (from, doc);
        let restart = match sessions.get(&key) {
            // Both started at once: the smaller id's session wins, and this is the loser's.
            Some(s) if step == 0 && s.role == Role::Initiator && !s.answered && *local < from => {
                out.stats.collisions += 1;
                return;
            }
            Some(s) if step > 0 && s.reconciled => {
                out.stats.stray += 1;
                return;
            }
            Some(_) => step == 0,
            None => true,
        };
        if restart {
            if let Some(old) = sessions.remove(&key)
                && old.role == Role::Initiator
            {
                out.stats.collisions += 1;
            }
            if sessions.len() >= config.max_sessions
                || sessions_with(sessions, &from) >= config.max_sessions_per_peer
            {
                out.stats.busy += 1;
                out.send(from, Message::Busy { doc }, None);
                return;
            }
            sessions.insert(key, Session::new(Role::Responder, now));
            out.stats.syncs_accepted += 1;
        }
        let Some(s) = sessions.get_mut(&key) else {
            return;
        };
        s.answered = true;
        s.last_active = now;
        s.bytes_received += bytes;
        s.rounds += 1;
        if peer_version.is_some() {
            s.peer_version = peer_version;
        }
        if let Some(c) = clock {
            let peer_clock: BTreeMap<Actor, u64> = c.into_iter().collect();
            if let Some(cp) = replica.doc.checkpoint()
                && !cp.is_covered_by(&peer_clock)
            {
                s.snapshot_out = Some((cp.number(), 0));
            }
        }
        for id in want {
            if replica.doc.get_change(&id).is_some() {
                s.to_send.insert(id);
            }
        }
        if ranges.is_empty() {
            // The peer is done reconciling: send what we owe.
            s.reconciled = true;
            s.flush(&replica.doc);
            pump(out, config, from, doc, &replica.doc, s);
            complete(sessions, out, key);
            return;
        }
        let set = replica.ids();
        let step_out = set.respond(&ranges, &config.reconcile);
        // Ids the peer listed in full: it does not know which of them we lack, so ask.
        let mut listed: Vec<&Id> = ranges
            .iter()
            .filter_map(|r| match &r.mode {
                Mode::Ids { ids, reply: true } => Some(ids),
                _ => None,
            })
            .flatten()
            .collect();
        listed.sort_unstable();
        let want: Vec<Id> = step_out
            .we_lack
            .into_iter()
            .filter(|id| listed.binary_search(&id).is_ok())
            .collect();
        s.to_send.extend(step_out.they_lack);
        let next = step.saturating_add(1);
        let mut reply = step_out.reply;
        out.stats.replies_cut += u64::from(step_out.cut);
        if next >= config.max_rounds && !reply.is_empty() {
            out.stats.round_limited += 1;
            reply.clear();
        }
        let done = reply.is_empty();
        let access = access_for(s, &replica.doc);
        let (clock, checkpoint) = if s.clock_sent {
            (None, None)
        } else {
            s.clock_sent = true;
            (
                Some(clock_vec(&replica.doc)),
                replica.doc.checkpoint().cloned().map(Box::new),
            )
        };
        let msg = Message::Sync {
            doc,
            step: next,
            access,
            ranges: reply,
            want,
            clock,
            checkpoint,
        };
        out.send(from, msg, Some(s));
        if done {
            s.reconciled = true;
            s.flush(&replica.doc);
            pump(out, config, from, doc, &replica.doc, s);
            complete(sessions, out, key);
        }
    }

    /// A piece of a checkpoint's state from the peer: collected, and restored once whole.
    #[allow(clippy::too_many_arguments)]
    fn on_snapshot(
        &mut self,
        now: Instant,
        from: PeerId,
        doc: DocId,
        checkpoint: Option<Box<Checkpoint>>,
        offset: u64,
        data: Vec<u8>,
        bytes: u64,
    ) {
        let Self {
            config,
            store,
            docs,
            sessions,
            out,
            ..
        } = self;
        let Some(replica) = docs.get_mut(&doc) else {
            out.stats.unknown_docs += 1;
            return;
        };
        let key = (from, doc);
        let Some(s) = sessions.get_mut(&key) else {
            out.stats.stray += 1;
            return;
        };
        s.last_active = now;
        s.bytes_received += bytes;
        if let Some(cp) = checkpoint {
            // A first piece (again, if the sender's checkpoint moved on): start over.
            s.snapshot_in = None;
            if offset != 0 {
                let reason = DocError::BadCheckpoint("checkpoint with a later piece");
                bad_peer(sessions, out, replica, from, doc, reason);
                return;
            }
            if cp.size() > config.limits.quota_bytes as u64 {
                // Not the sender's fault: our quota is smaller. The pieces are ignored.
                out.stats.changes_refused += 1;
            } else {
                let room = usize::try_from(cp.size()).unwrap_or(0).min(1 << 20);
                s.snapshot_in = Some((*cp, Vec::with_capacity(room)));
            }
        }
        let mut restored = None;
        if let Some((cp, state)) = &mut s.snapshot_in {
            if offset != state.len() as u64 || state.len() as u64 + data.len() as u64 > cp.size() {
                let reason = DocError::BadCheckpoint("state pieces out of order or too long");
                bad_peer(sessions, out, replica, from, doc, reason);
                return;
            }
            state.extend_from_slice(&data);
            if state.len() as u64 == cp.size() {
                restored = s.snapshot_in.take();
            }
        }
        if let Some((cp, state)) = restored {
            match replica.doc.restore(cp, state) {
                Ok(true) => {
                    out.stats.snapshots_received += 1;
                    if let Some((cp, state)) = replica.doc.snapshot() {
                        let saved = store.save_checkpoint(&doc, cp, state);
                        out.store_result(doc, saved);
                    }
                    out.emit(Event::Changed { doc });
                }
                Ok(false) => {}
                Err(e) if is_peer_fault(&e) => {
                    out.stats.checkpoints_refused += 1;
                    bad_peer(sessions, out, replica, from, doc, e);
                    return;
                }
                Err(_) => out.stats.changes_refused += 1,
            }
        }
        out.send(from, Message::Ack { doc }, sessions.get_mut(&key));
    }

    /// Once no session is running on `doc`: folds in the owner's checkpoint if this replica
    /// has what it covers, and, on the owner's node, makes a new one when enough of the log
    /// is stable. (Not during sessions, so a session's view of the log and of the checkpoint
    /// it may be sending stays put.)
    fn settle(&mut self, doc: DocId) {
        if self.sessions.keys().any(|(_, d)| *d == doc) {
            return;
        }
        let Some(replica) = self.docs.get_mut(&doc) else {
            return;
        };
        let before = replica.doc.len();
        let mut folded = false;
        if replica.doc.can_fold() {
            match replica.doc.fold() {
                Ok(_) => {
                    self.out.stats.checkpoints_folded += 1;
                    folded = true;
                }
                Err(_) => self.out.stats.checkpoints_refused += 1,
            }
        }
        if !folded
            && let Some(signer) = &self.signer
            && replica.doc.access().owner() == &signer.peer_id()
            && let Ok(Some(_)) = replica
                .doc
                .make_checkpoint(signer, self.config.checkpoint_bytes)
        {
            self.out.stats.checkpoints_made += 1;
            folded = true;
        }
        self.out.stats.changes_folded += before.saturating_sub(replica.doc.len()) as u64;
        if folded && let Some((cp, state)) = replica.doc.snapshot() {
            let saved = self.store.save_checkpoint(&doc, cp, state);
            self.out.store_result(doc, saved);
        }
    }

    fn on_changes(
        &mut self,
        now: Instant,
        from: PeerId,
        doc: DocId,
        changes: Vec<Change>,
        last: bool,
        bytes: u64,
    ) {
        let Self {
            config,
            store,
            docs,
            sessions,
            out,
            ..
        } = self;
        let Some(replica) = docs.get_mut(&doc) else {
            out.stats.unknown_docs += 1;
            return;
        };
        let mut fresh = Vec::new();
        let mut applied = 0;
        let mut bad = None;
        for c in changes {
            match replica.doc.apply(c.clone()) {
                Ok(a) if a.duplicate => out.stats.duplicates += 1,
                Ok(a) => {
                    applied += a.applied;
                    fresh.push(c);
                }
                Err(e) if is_peer_fault(&e) => {
                    bad = Some(e);
                    break;
                }
                Err(_) => out.stats.changes_refused += 1,
            }
        }
        out.stats.changes_received += fresh.len() as u64;
        if !fresh.is_empty() {
            let saved = store.save_changes(&doc, &fresh);
            out.store_result(doc, saved);
            replica.touch(from, now, config.max_replica_peers);
        }
        if applied > 0 {
            out.emit(Event::Changed { doc });
        }
        let key = (from, doc);
        if let Some(reason) = bad {
            bad_peer(sessions, out, replica, from, doc, reason);
            return;
        }
        out.send(from, Message::Ack { doc }, sessions.get_mut(&key));
        if let Some(s) = sessions.get_mut(&key) {
            s.last_active = now;
            s.bytes_received += bytes;
            s.received_changes += fresh.len() as u64;
            s.peer_finished |= last;
            complete(sessions, out, key);
        }
    }

    fn on_ack(&mut self, now: Instant, from: PeerId, doc: DocId, bytes: u64) {
        let key = (from, doc);
        let (Some(s), Some(replica)) = (self.sessions.get_mut(&key), self.docs.get(&doc)) else {
            return;
        };
        s.last_active = now;
        s.bytes_received += bytes;
        s.in_flight = s.in_flight.saturating_sub(1);
        pump(&mut self.out, &self.config, from, doc, &replica.doc, s);
        complete(&mut self.sessions, &mut self.out, key);
    }

    fn on_refused(&mut self, from: PeerId, doc: DocId, reason: FailReason) {
        if reason == FailReason::Unknown
            && let Some(replica) = self.docs.get_mut(&doc)
        {
            replica.peers.remove(&from);
        }
        self.fail((from, doc), reason);
    }

    fn fail(&mut self, key: (PeerId, DocId), reason: FailReason) {
        if self.sessions.remove(&key).is_some() {
            self.out.stats.syncs_failed += 1;
            self.out.emit(Event::SyncFailed {
                doc: key.1,
                peer: key.0,
                reason,
            });
        }
    }
}

/// Adopts `access` if it extends the replica's: persisted, and reported if it released
/// waiting changes. An older or unrelated version is ignored; an invalid one is the sender's
/// fault.
fn adopt_access(
    store: &mut (dyn DocStore + Send),
    out: &mut Out,
    replica: &mut Replica,
    access: Access,
) -> Result<(), DocError> {
    let before = replica.doc.len();
    match replica.doc.set_access(access) {
        Ok(true) => {
            let doc = replica.doc.id();
            let saved = store.save_access(replica.doc.access());
            out.store_result(doc, saved);
            out.stats.access_updates += 1;
            if replica.doc.len() > before {
                out.emit(Event::Changed { doc });
            }
            Ok(())
        }
        Ok(false) | Err(DocError::StaleAccess) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Errors that only a broken or malicious sender causes. Others (a writer we do not know yet,
/// a revocation the sender had not seen, our own quota or waiting room) are not its fault.
fn is_peer_fault(e: &DocError) -> bool {
    matches!(
        e,
        DocError::BadSignature
            | DocError::BadCheckpoint(_)
            | DocError::WrongDocument
            | DocError::TooLarge(_)
            | DocError::Invalid(_)
            | DocError::BadAccess(_)
    )
}

fn bad_peer(
    sessions: &mut BTreeMap<(PeerId, DocId), Session>,
    out: &mut Out,
    replica: &mut Replica,
    peer: PeerId,
    doc: DocId,
    reason: DocError,
) {
    sessions.remove(&(peer, doc));
    replica.peers.remove(&peer);
    out.stats.bad_peers += 1;
    out.emit(Event::BadPeer { doc, peer, reason });
}

/// Our access list for the peer, once per session, if the peer's is not as new.
fn access_for(s: &mut Session, doc: &Document) -> Option<Access> {
    let ours = doc.access();
    if s.access_sent || s.peer_version.is_some_and(|v| v >= ours.version()) {
        return None;
    }
    s.access_sent = true;
    Some(ours.clone())
}

/// Sends `Changes` from the outbox while the window allows; the last one is marked.
fn pump(
    out: &mut Out,
    config: &Config,
    peer: PeerId,
    doc_id: DocId,
    doc: &Document,
    s: &mut Session,
) {
    while s.reconciled && !s.sent_last && s.in_flight < config.window.max(1) {
        if let Some((number, offset)) = s.snapshot_out {
            let Some((cp, state)) = doc.snapshot() else {
                s.snapshot_out = None;
                continue;
            };
            // The checkpoint moved on (a newer state restored here): send the new one.
            let from = if cp.number() == number { offset } else { 0 };
            let start = usize::try_from(from).unwrap_or(usize::MAX).min(state.len());
            let end = (start + MAX_SNAPSHOT_CHUNK).min(state.len());
            let msg = Message::Snapshot {
                doc: doc_id,
                checkpoint: (start == 0).then(|| Box::new(cp.clone())),
                offset: start as u64,
                data: state[start..end].to_vec(),
            };
            out.send(peer, msg, Some(s));
            s.in_flight += 1;
            s.snapshot_out = (end < state.len()).then_some((cp.number(), end as u64));
            if end == state.len() {
                out.stats.snapshots_sent += 1;
            }
            continue;
        }
        let mut changes = Vec::new();
        let mut size = 0;
        while let Some(id) = s.outbox.front() {
            let Some(c) = doc.get_change(id) else {
                s.outbox.pop_front();
                continue;
            };
            let n = encoded_len(c);
            if n > MAX_CHANGE_BYTES {
                out.stats.oversized += 1;
                s.outbox.pop_front();
                continue;
            }
            if !changes.is_empty() && (changes.len() >= MAX_CHANGES || size + n > MAX_CHANGES_BYTES)
            {
                break;
            }
            changes.push(c.clone());
            size += n;
            s.outbox.pop_front();
        }
        let last = s.outbox.is_empty();
        s.sent_changes += changes.len() as u64;
        out.stats.changes_sent += changes.len() as u64;
        let msg = Message::Changes {
            doc: doc_id,
            changes,
            last,
        };
        out.send(peer, msg, Some(s));
        s.in_flight += 1;
        s.sent_last = last;
    }
}

/// Ends the session if both directions are through.
fn complete(
    sessions: &mut BTreeMap<(PeerId, DocId), Session>,
    out: &mut Out,
    key: (PeerId, DocId),
) {
    if !sessions.get(&key).is_some_and(Session::is_done) {
        return;
    }
    let Some(s) = sessions.remove(&key) else {
        return;
    };
    out.stats.syncs_completed += 1;
    out.emit(Event::Synced {
        doc: key.1,
        peer: key.0,
        sent_changes: s.sent_changes,
        received_changes: s.received_changes,
        bytes_sent: s.bytes_sent,
        bytes_received: s.bytes_received,
        rounds: s.rounds,
    });
}

/// Every (peer, document) key of `peer`, for ranges over sessions and waiting sessions.
fn keys_of(peer: &PeerId) -> std::ops::RangeInclusive<(PeerId, DocId)> {
    (*peer, DocId([0; 32]))..=(*peer, DocId([0xff; 32]))
}

/// Number of sessions running with `peer`.
fn sessions_with(sessions: &BTreeMap<(PeerId, DocId), Session>, peer: &PeerId) -> usize {
    sessions.range(keys_of(peer)).count()
}

/// A round of [`Message::Sync`], unpacked.
struct Round {
    step: u32,
    access: Option<Access>,
    ranges: Vec<reconcile::Range>,
    want: Vec<Id>,
    clock: Option<Vec<(Actor, u64)>>,
    checkpoint: Option<Box<Checkpoint>>,
}

/// The document's clock as it travels.
fn clock_vec(doc: &Document) -> Vec<(Actor, u64)> {
    doc.clock().iter().map(|(a, n)| (*a, *n)).collect()
}

/// `interval` scaled by a random factor in [0.5, 1.5), so replicas do not sync in lockstep.
fn jittered(interval: Duration, rng: &mut impl RngCore) -> Duration {
    let us = u64::try_from(interval.as_micros()).unwrap_or(u64::MAX);
    if us == 0 {
        return interval;
    }
    Duration::from_micros(us / 2 + rng.next_u64() % us)
}

impl crate::node::Protocol for DocSync {
    type Message = Message;

    fn handle_message(&mut self, cx: &mut crate::node::Context<'_>, from: PeerId, msg: Message) {
        if let Some(depth) = self.trusted_within(&msg.doc())
            && !cx.trusts(&from, depth)
        {
            self.out.stats.untrusted += 1;
            return;
        }
        DocSync::handle_message(self, cx.now, from, msg);
        self.drain(cx);
    }

    fn handle_peer_event(
        &mut self,
        cx: &mut crate::node::Context<'_>,
        event: &crate::node::PeerEvent,
    ) {
        use crate::node::PeerEvent;
        match event {
            PeerEvent::Ready(info) => self.peer_ready(cx.now, info.peer),
            PeerEvent::Gone { peer } | PeerEvent::Unreachable { peer } => {
                self.peer_gone(cx.now, *peer)
            }
        }
        self.drain(cx);
    }

    fn handle_timeout(&mut self, cx: &mut crate::node::Context<'_>) {
        DocSync::handle_timeout(self, cx.now, cx.rng);
        self.drain(cx);
    }

    fn poll_timeout(&self) -> Option<Instant> {
        DocSync::poll_timeout(self)
    }
}

impl DocSync {
    /// Moves the queued messages and events into the node's outputs.
    pub(crate) fn drain(&mut self, cx: &mut crate::node::Context<'_>) {
        while let Some((to, m)) = self.poll_transmit() {
            if let Some(depth) = self.trusted_within(&m.doc())
                && !cx.trusts(&to, depth)
            {
                self.out.stats.untrusted += 1;
                continue;
            }
            cx.send(to, m);
        }
        while let Some(e) = self.poll_event() {
            cx.emit(crate::node::Event::Doc(e));
        }
    }
}

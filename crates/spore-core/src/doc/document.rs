//! A document replica: the access list, the log of applied changes, changes waiting for their
//! causal predecessors, and the state the changes build.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::change::{Access, Change, DocError, DocId, MAX_WRITERS, Op, Writer};
use super::checkpoint::{self, Checkpoint, Clock};
use super::crdt::{Actor, GCounter, LwwRegister, OrSet, PnCounter, Stamp, Tag, Value};
use super::reconcile::{Id, IdSet};
use super::text::{MAX_INSERT_BYTES, Text, TextError, TextOp};
use crate::identity::{Keypair, PeerId};

/// Bounds of one document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most bytes of encoded changes the document holds. Default 64 MiB.
    pub quota_bytes: usize,
    /// Most changes waiting for their causal predecessors. Default 4096.
    pub max_pending: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            quota_bytes: 64 << 20,
            max_pending: 4096,
        }
    }
}

/// What kind of value a key holds. Keys of different kinds do not collide: the same key can
/// name a register and a text at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Kind {
    /// A last-writer-wins register.
    Register,
    /// An up-and-down counter.
    Counter,
    /// A grow-only counter.
    GCounter,
    /// An observed-remove set.
    Set,
    /// A text.
    Text,
}

#[derive(Clone)]
pub(super) enum Entry {
    Register(LwwRegister),
    Counter(PnCounter),
    GCounter(GCounter),
    Set(OrSet),
    Text(Box<Text>),
}

/// A local edit, turned into an [`Op`] by [`Document::change`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Edit {
    /// Write a register.
    Set(String, Value),
    /// Add to an up-and-down counter.
    Increment(String, i64),
    /// Add to a grow-only counter.
    GIncrement(String, u64),
    /// Add an element to a set.
    Add(String, Value),
    /// Remove an element (every add of it seen here) from a set.
    Remove(String, Value),
    /// Insert text at a code-point position.
    Insert(String, usize, String),
    /// Delete code points from a position.
    Delete(String, usize, usize),
}

/// What [`Document::apply`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Applied {
    /// Changes applied (the one given and any waiting ones it made ready).
    pub applied: usize,
    /// The change was already known (applied or waiting).
    pub duplicate: bool,
    /// Changes still waiting for predecessors.
    pub pending: usize,
}

/// A replica of a document. See the [module docs](super).
#[derive(Clone)]
pub struct Document {
    access: Access,
    limits: Limits,
    /// For each writer, how many of its changes are applied (they apply in order).
    clock: Clock,
    lamport: u64,
    /// Applied changes not folded into a checkpoint.
    log: BTreeMap<Id, Change>,
    /// The log's ids and encoded sizes by (author, seq), for catch-up by clock and folding.
    by_dot: BTreeMap<(Actor, u64), (Id, usize)>,
    pending: BTreeMap<Id, Change>,
    entries: BTreeMap<(Kind, String), Entry>,
    /// Bytes of the state at the checkpoint plus the log's changes (what the quota counts).
    bytes: usize,
    /// Operations that failed to apply (a writer referring to what its change did not depend
    /// on); skipped identically on every replica that delivers the same causal history.
    skipped_ops: u64,
    /// The checkpoint the log was last folded into, with the encoded state at it: served to
    /// replicas that lack changes it covers.
    base: Option<(Checkpoint, Vec<u8>)>,
    /// The owner's newer checkpoint, waiting to be folded in (see [`Document::fold`]).
    next: Option<Checkpoint>,
    /// What each writer is known to have applied, from its changes and from what it says when
    /// syncing: the owner's view of causal stability.
    seen: BTreeMap<Actor, Clock>,
    /// Counts changes of the log (growth and folds), so the caller knows when its
    /// reconciliation set is stale.
    generation: u64,
}

impl std::fmt::Debug for Document {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Document")
            .field("id", &self.id())
            .field("changes", &self.log.len())
            .field("checkpoint", &self.base.as_ref().map(|(c, _)| c.number()))
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

impl Document {
    /// A new document owned by `owner`; `nonce` makes its id unique among the owner's.
    pub fn create(owner: &Keypair, nonce: u64, limits: Limits) -> Self {
        let writers = vec![Writer {
            peer: owner.peer_id(),
            until: None,
        }];
        Self::open(Access::new(owner, nonce, 1, writers), limits)
            .expect("an access list we just signed verifies")
    }

    /// A replica of the document `access` describes (a joiner starts from the access list in
    /// its ticket, then syncs).
    pub fn open(access: Access, limits: Limits) -> Result<Self, DocError> {
        access.verify()?;
        Ok(Self {
            access,
            limits,
            clock: BTreeMap::new(),
            lamport: 0,
            log: BTreeMap::new(),
            by_dot: BTreeMap::new(),
            pending: BTreeMap::new(),
            entries: BTreeMap::new(),
            bytes: 0,
            skipped_ops: 0,
            base: None,
            next: None,
            seen: BTreeMap::new(),
            generation: 0,
        })
    }

    /// The document's id.
    pub fn id(&self) -> DocId {
        self.access.doc()
    }

    /// The access list.
    pub fn access(&self) -> &Access {
        &self.access
    }

    /// Replaces the access list with a newer version signed by the owner. Waiting changes by
    /// writers it adds become applicable. False if `access` is the current version.
    pub fn set_access(&mut self, access: Access) -> Result<bool, DocError> {
        if access == self.access {
            return Ok(false);
        }
        access.verify()?;
        if !access.extends(&self.access) {
            return Err(DocError::StaleAccess);
        }
        self.access = access;
        self.deliver_pending();
        Ok(true)
    }

    /// As the owner, admits `peer` as a writer; returns the new access list to share.
    pub fn add_writer(&mut self, owner: &Keypair, peer: PeerId) -> Result<Access, DocError> {
        self.update_writers(owner, |w| {
            if !w.iter().any(|x| x.peer == peer) {
                w.push(Writer { peer, until: None });
            }
        })
    }

    /// As the owner, revokes `peer`: its changes beyond those applied here no longer count.
    pub fn revoke_writer(&mut self, owner: &Keypair, peer: &PeerId) -> Result<Access, DocError> {
        let actor = self.access.actor_of(peer).ok_or(DocError::NotAWriter)?;
        if actor == 0 {
            return Err(DocError::Invalid("the owner cannot be revoked"));
        }
        let seen = self.clock.get(&actor).copied().unwrap_or(0);
        self.update_writers(owner, |w| {
            let x = &mut w[actor as usize];
            x.until = Some(x.until.map_or(seen, |u| u.min(seen)));
        })
    }

    fn update_writers(
        &mut self,
        owner: &Keypair,
        f: impl FnOnce(&mut Vec<Writer>),
    ) -> Result<Access, DocError> {
        if owner.peer_id() != *self.access.owner() {
            return Err(DocError::NotAWriter);
        }
        let mut writers = self.access.writers().to_vec();
        f(&mut writers);
        if writers.len() > MAX_WRITERS {
            return Err(DocError::TooLarge("writers"));
        }
        let access = Access::new(
            owner,
            self.access.nonce(),
            self.access.version() + 1,
            writers,
        );
        self.set_access(access.clone())?;
        Ok(access)
    }

    /// Makes a change of `edits` as `keypair` (which must be a writer), applies it, and returns
    /// it to send to the other replicas. Nothing changes if an edit is invalid.
    pub fn change(&mut self, keypair: &Keypair, edits: Vec<Edit>) -> Result<Change, DocError> {
        let actor = self
            .access
            .actor_of(&keypair.peer_id())
            .ok_or(DocError::NotAWriter)?;
        let seq = self.clock.get(&actor).copied().unwrap_or(0) + 1;
        if self.access.writers()[actor as usize]
            .until
            .is_some_and(|n| seq > n)
        {
            return Err(DocError::Revoked);
        }
        // The checks a text edit can fail come first, so an invalid edit changes nothing.
        // Edits then apply to the touched entries, moved out of the document (never copied:
        // a text can be large); should something else fail (the quota), the entries are
        // computed again from the checkpoint and the log.
        check_text_edits(&self.entries, &edits)?;
        let lamport = self.lamport + 1;
        let mut scratch: BTreeMap<(Kind, String), Entry> = BTreeMap::new();
        let build = || -> Result<(Change, usize), DocError> {
            let mut ops = Vec::with_capacity(edits.len());
            for (i, edit) in edits.into_iter().enumerate() {
                let at = (actor, seq, i as u32, lamport);
                ops.push(make_op(&mut self.entries, &mut scratch, at, edit)?);
            }
            let deps: Vec<(Actor, u64)> = self
                .clock
                .iter()
                .filter(|(a, _)| **a != actor)
                .map(|(a, n)| (*a, *n))
                .collect();
            let change = Change::new(keypair, self.id(), actor, seq, lamport, deps, ops);
            change.verify(&self.access)?;
            let size = change.encode().len();
            if self.bytes + size > self.limits.quota_bytes {
                return Err(DocError::Quota {
                    quota: self.limits.quota_bytes,
                });
            }
            Ok((change, size))
        };
        let built = build();
        self.entries.extend(scratch);
        match built {
            Ok((change, size)) => {
                self.record(change.clone(), size);
                Ok(change)
            }
            Err(e) => {
                self.rebuild();
                Err(e)
            }
        }
    }

    /// Computes the entries again from the checkpoint and the log, after a local edit failed
    /// half-way.
    fn rebuild(&mut self) {
        let clock = self.clock.clone();
        if let Ok(state) = self
            .state_at(&clock)
            .and_then(|bytes| checkpoint::decode(&bytes))
        {
            self.entries = state.entries;
        }
    }

    /// Takes a change from another replica: verifies it, ignores it if known, applies it if
    /// its causal predecessors are applied, and otherwise keeps it until they are.
    pub fn apply(&mut self, change: Change) -> Result<Applied, DocError> {
        let id = change.id();
        // A change numbered at or below its writer's applied count is known (in the log or a
        // checkpoint), or a second change its writer signed under a used number: either way
        // nothing to apply.
        if self.log.contains_key(&id)
            || self.pending.contains_key(&id)
            || change.seq() <= self.clock.get(&change.author()).copied().unwrap_or(0)
        {
            return Ok(Applied {
                duplicate: true,
                pending: self.pending.len(),
                ..Applied::default()
            });
        }
        if change.doc() != self.id() {
            return Err(DocError::WrongDocument);
        }
        // A change by a writer the access list does not name yet is refused rather than kept
        // unverified (anyone could fill the waiting room that way); sync sends the access list
        // first, so it arrives again once the writer is known.
        change.verify(&self.access)?;
        if self.pending.len() >= self.limits.max_pending {
            return Err(DocError::PendingFull);
        }
        self.pending.insert(id, change);
        let applied = self.deliver_pending();
        Ok(Applied {
            applied,
            duplicate: false,
            pending: self.pending.len(),
        })
    }

    /// Applies waiting changes until none is ready; returns how many were applied.
    fn deliver_pending(&mut self) -> usize {
        let mut applied = 0;
        loop {
            let ready: Vec<Id> = self
                .pending
                .iter()
                .filter(|(_, c)| self.is_ready(c))
                .map(|(id, _)| *id)
                .collect();
            if ready.is_empty() {
                return applied;
            }
            for id in ready {
                let Some(change) = self.pending.remove(&id) else {
                    continue;
                };
                // Re-check now that the writer is known, and against the quota.
                if change.verify(&self.access).is_err() || !self.is_ready(&change) {
                    continue;
                }
                let size = change.encode().len();
                if self.bytes + size > self.limits.quota_bytes {
                    continue;
                }
                self.skipped_ops += apply_change(&mut self.entries, &change);
                self.record(change, size);
                applied += 1;
            }
        }
    }

    fn is_ready(&self, c: &Change) -> bool {
        (c.author() as usize) < self.access.writers().len()
            && self.clock.get(&c.author()).copied().unwrap_or(0) + 1 == c.seq()
            && c.deps()
                .iter()
                .all(|(a, n)| self.clock.get(a).copied().unwrap_or(0) >= *n)
    }

    fn record(&mut self, change: Change, size: usize) {
        let id = change.id();
        self.clock.insert(change.author(), change.seq());
        self.lamport = self.lamport.max(change.lamport());
        // Its author had applied its causal context, and its own earlier changes.
        let seen = self.seen.entry(change.author()).or_default();
        for &(a, n) in change
            .deps()
            .iter()
            .chain([(change.author(), change.seq())].iter())
        {
            let e = seen.entry(a).or_default();
            *e = (*e).max(n);
        }
        self.by_dot
            .insert((change.author(), change.seq()), (id, size));
        self.bytes += size;
        self.log.insert(id, change);
        self.generation += 1;
    }

    /// How many changes of each writer are applied.
    pub fn clock(&self) -> &BTreeMap<Actor, u64> {
        &self.clock
    }

    /// Number of changes in the log: applied and not folded into a checkpoint.
    pub fn len(&self) -> usize {
        self.log.len()
    }

    /// Whether the log is empty.
    pub fn is_empty(&self) -> bool {
        self.log.is_empty()
    }

    /// Number of applied changes, folded ones included.
    pub fn applied(&self) -> u64 {
        self.clock.values().sum()
    }

    /// Changes since the replica was made whenever its log grew or was folded: a
    /// reconciliation set built at one generation is current while it stays.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Bytes of applied changes (what the quota counts).
    pub fn size(&self) -> usize {
        self.bytes
    }

    /// Changes waiting for predecessors.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Operations skipped because they could not apply.
    pub fn skipped_ops(&self) -> u64 {
        self.skipped_ops
    }

    /// The ids of the applied changes, for set reconciliation.
    pub fn change_ids(&self) -> IdSet {
        IdSet::new(self.log.keys().copied().collect())
    }

    /// An applied change.
    pub fn get_change(&self, id: &Id) -> Option<&Change> {
        self.log.get(id)
    }

    /// Changes of the log a replica at `clock` lacks, ordered by writer and number (for
    /// catch-up; a replica that lacks changes of the checkpoint needs its state first).
    pub fn changes_since<'a>(
        &'a self,
        clock: &'a BTreeMap<Actor, u64>,
    ) -> impl Iterator<Item = &'a Change> + 'a {
        self.by_dot
            .iter()
            .filter(|((a, s), _)| *s > clock.get(a).copied().unwrap_or(0))
            .filter_map(|(_, (id, _))| self.log.get(id))
    }

    /// What `writer` says it has applied (when syncing): taken into the owner's view of
    /// causal stability. Only ever raises what is known.
    pub fn note_clock(&mut self, writer: Actor, clock: &[(Actor, u64)]) {
        if (writer as usize) >= self.access.writers().len() {
            return;
        }
        let seen = self.seen.entry(writer).or_default();
        for &(a, n) in clock.iter().take(MAX_WRITERS) {
            if (a as usize) < self.access.writers().len() {
                let e = seen.entry(a).or_default();
                *e = (*e).max(n);
            }
        }
    }

    /// The causally stable changes, as the owner's replica sees them: those this replica and
    /// every writer not revoked are known to have applied. A writer never heard from holds
    /// everything back (revoke writers that are gone for good). Revoked writers make no new
    /// changes, so only their changes that others applied count.
    pub fn stable(&self) -> Clock {
        let mut stable = self.clock.clone();
        for (i, w) in self.access.writers().iter().enumerate().skip(1) {
            if w.until.is_some() {
                continue;
            }
            let seen = self.seen.get(&(i as Actor));
            for (a, n) in stable.iter_mut() {
                *n = (*n).min(seen.and_then(|s| s.get(a)).copied().unwrap_or(0));
            }
        }
        stable.retain(|_, n| *n > 0);
        stable
    }

    /// The checkpoint the log was last folded into.
    pub fn checkpoint(&self) -> Option<&Checkpoint> {
        self.base.as_ref().map(|(c, _)| c)
    }

    /// The checkpoint and the encoded state at it, for a replica that lacks its changes.
    pub fn snapshot(&self) -> Option<(&Checkpoint, &[u8])> {
        self.base.as_ref().map(|(c, s)| (c, s.as_slice()))
    }

    /// As the owner, folds the stable changes into a new checkpoint once they take at least
    /// `min_bytes` in the log. Returns the checkpoint, for the other replicas; `None` if there
    /// was not enough to fold.
    pub fn make_checkpoint(
        &mut self,
        owner: &Keypair,
        min_bytes: usize,
    ) -> Result<Option<Checkpoint>, DocError> {
        if owner.peer_id() != *self.access.owner() {
            return Err(DocError::NotAWriter);
        }
        let mut target = self.stable();
        if let Some((cp, _)) = &self.base {
            for (a, n) in cp.clock() {
                let e = target.entry(a).or_default();
                *e = (*e).max(n);
            }
        }
        self.close(&mut target);
        let foldable: usize = self
            .by_dot
            .iter()
            .filter(|((a, s), _)| *s <= target.get(a).copied().unwrap_or(0))
            .map(|(_, (_, size))| size)
            .sum();
        if foldable == 0 || foldable < min_bytes {
            return Ok(None);
        }
        let state = self.state_at(&target)?;
        let number = self.base.as_ref().map_or(0, |(c, _)| c.number()) + 1;
        let cp = Checkpoint::new(owner, self.id(), number, &target, &state);
        self.fold_into(cp.clone(), state);
        Ok(Some(cp))
    }

    /// Takes the owner's checkpoint, if newer than the last one seen: it is folded in by
    /// [`fold`](Self::fold) once this replica has applied every change it covers. True if it
    /// was new.
    pub fn offer_checkpoint(&mut self, cp: Checkpoint) -> Result<bool, DocError> {
        let newest = self
            .next
            .as_ref()
            .or(self.checkpoint())
            .map_or(0, |c| c.number());
        if cp.number() <= newest {
            return Ok(false);
        }
        cp.verify(&self.access)?;
        self.next = Some(cp);
        Ok(true)
    }

    /// Whether an offered checkpoint is ready to fold: every change it covers is applied.
    pub fn can_fold(&self) -> bool {
        self.next
            .as_ref()
            .is_some_and(|c| c.is_covered_by(&self.clock))
    }

    /// Folds the offered checkpoint in if ready: computes the state at it, checks it against
    /// the owner's hash and drops the changes it covers from the log. Returns how many were
    /// dropped. A state that does not match (a bug, or an owner that signed a false state)
    /// discards the checkpoint and keeps the log.
    pub fn fold(&mut self) -> Result<usize, DocError> {
        if !self.can_fold() {
            return Ok(0);
        }
        let Some(cp) = self.next.take() else {
            return Ok(0);
        };
        let clock = cp.clock();
        let mut closed = clock.clone();
        self.close(&mut closed);
        if closed != clock {
            return Err(DocError::BadCheckpoint(
                "covers a change but not its causal context",
            ));
        }
        let state = self.state_at(&clock)?;
        if !cp.matches(&state) {
            return Err(DocError::BadCheckpoint("state does not match the owner's"));
        }
        Ok(self.fold_into(cp, state))
    }

    /// Replaces the replica's state by a checkpoint's state received from another replica,
    /// for one that lacks changes the checkpoint covers. The checkpoint must be the owner's
    /// and newer than the replica's, and `state` must be the state it names. Changes of the
    /// log beyond it are applied again on top. False if the checkpoint was not newer.
    pub fn restore(&mut self, cp: Checkpoint, state: Vec<u8>) -> Result<bool, DocError> {
        if cp.number() <= self.checkpoint().map_or(0, |c| c.number()) {
            return Ok(false);
        }
        cp.verify(&self.access)?;
        if !cp.matches(&state) {
            return Err(DocError::BadCheckpoint(
                "state does not match the checkpoint",
            ));
        }
        if state.len() > self.limits.quota_bytes {
            return Err(DocError::Quota {
                quota: self.limits.quota_bytes,
            });
        }
        let decoded = checkpoint::decode(&state)?;
        if decoded.clock != cp.clock() {
            return Err(DocError::BadCheckpoint("state is at another clock"));
        }
        if cp.is_covered_by(&self.clock) {
            // Nothing is missing: fold as usual (same state, computed here).
            self.next = Some(cp);
            return self.fold().map(|_| true);
        }
        let covered = |c: &Change| c.seq() <= cp.covers_of(c.author());
        let mut keep: BTreeMap<Id, Change> = std::mem::take(&mut self.log)
            .into_iter()
            .chain(std::mem::take(&mut self.pending))
            .filter(|(_, c)| !covered(c))
            .collect();
        if keep.len() > self.limits.max_pending {
            // More than the waiting room takes: the newest by Lamport clock wait for sync.
            let mut order: Vec<(u64, Id)> = keep.iter().map(|(id, c)| (c.lamport(), *id)).collect();
            order.sort_unstable();
            for (_, id) in order.into_iter().skip(self.limits.max_pending) {
                keep.remove(&id);
            }
        }
        self.clock = decoded.clock;
        self.lamport = decoded.lamport;
        self.entries = decoded.entries;
        self.by_dot.clear();
        self.bytes = state.len();
        self.base = Some((cp, state));
        if self
            .next
            .as_ref()
            .is_some_and(|n| n.number() <= self.checkpoint().map_or(0, |c| c.number()))
        {
            self.next = None;
        }
        self.pending = keep;
        self.generation += 1;
        self.deliver_pending();
        Ok(true)
    }

    /// Lowers `target` (at or above the checkpoint's clock, at or below the applied one)
    /// until it is causally closed: every change it covers has its causal context covered
    /// too. What writers say they applied need not be closed, and a state must be.
    fn close(&self, target: &mut Clock) {
        let base = |a: Actor| self.checkpoint().map_or(0, |c| c.covers_of(a));
        loop {
            let mut lowered = false;
            for (a, n) in target.clone() {
                let mut m = n;
                while m > base(a) {
                    let fits = self
                        .by_dot
                        .get(&(a, m))
                        .and_then(|(id, _)| self.log.get(id))
                        .is_some_and(|c| {
                            c.deps()
                                .iter()
                                .all(|(b, k)| target.get(b).copied().unwrap_or(0) >= *k)
                        });
                    if fits {
                        break;
                    }
                    m -= 1;
                }
                if m != n {
                    target.insert(a, m);
                    lowered = true;
                }
            }
            if !lowered {
                target.retain(|_, n| *n > 0);
                return;
            }
        }
    }

    /// The encoded state after exactly the changes in `target` (which this replica has
    /// applied, and which includes the checkpoint's): the checkpoint's state with the log's
    /// changes up to `target` applied again, in causal order.
    fn state_at(&self, target: &Clock) -> Result<Vec<u8>, DocError> {
        let (mut entries, mut lamport) = match &self.base {
            Some((_, bytes)) => {
                let s = checkpoint::decode(bytes)?;
                (s.entries, s.lamport)
            }
            None => (BTreeMap::new(), 0),
        };
        let mut changes: Vec<&Change> = self
            .by_dot
            .iter()
            .filter(|((a, s), _)| *s <= target.get(a).copied().unwrap_or(0))
            .filter_map(|(_, (id, _))| self.log.get(id))
            .collect();
        changes.sort_by_key(|c| (c.lamport(), c.author(), c.seq()));
        for c in changes {
            apply_change(&mut entries, c);
            lamport = lamport.max(c.lamport());
        }
        Ok(checkpoint::encode(target, lamport, &entries))
    }

    /// Makes `cp` (with its verified `state`) the base and drops the changes it covers.
    fn fold_into(&mut self, cp: Checkpoint, state: Vec<u8>) -> usize {
        let covered: Vec<(Actor, u64)> = self
            .by_dot
            .keys()
            .filter(|(a, s)| *s <= cp.covers_of(*a))
            .copied()
            .collect();
        for dot in &covered {
            if let Some((id, size)) = self.by_dot.remove(dot) {
                self.log.remove(&id);
                self.bytes -= size;
            }
        }
        let old = self.base.as_ref().map_or(0, |(_, s)| s.len());
        self.bytes = self.bytes - old + state.len();
        self.base = Some((cp, state));
        self.generation += 1;
        covered.len()
    }

    /// The value of register `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self.entries.get(&(Kind::Register, key.to_string())) {
            Some(Entry::Register(r)) => r.value(),
            _ => None,
        }
    }

    /// The value of up-and-down counter `key` (0 if never written).
    pub fn counter(&self, key: &str) -> i64 {
        match self.entries.get(&(Kind::Counter, key.to_string())) {
            Some(Entry::Counter(c)) => c.value(),
            _ => 0,
        }
    }

    /// The value of grow-only counter `key`.
    pub fn gcounter(&self, key: &str) -> u64 {
        match self.entries.get(&(Kind::GCounter, key.to_string())) {
            Some(Entry::GCounter(c)) => c.value(),
            _ => 0,
        }
    }

    /// The elements of set `key`.
    pub fn set(&self, key: &str) -> Vec<&Value> {
        match self.entries.get(&(Kind::Set, key.to_string())) {
            Some(Entry::Set(s)) => s.iter().collect(),
            _ => Vec::new(),
        }
    }

    /// The text `key`.
    pub fn text(&self, key: &str) -> Option<String> {
        match self.entries.get(&(Kind::Text, key.to_string())) {
            Some(Entry::Text(t)) => Some(t.to_string()),
            _ => None,
        }
    }

    /// Every key and its kind, in order.
    pub fn keys(&self) -> impl Iterator<Item = (Kind, &str)> {
        self.entries.keys().map(|(k, s)| (*k, s.as_str()))
    }

    /// A canonical rendering of the whole state (every key with its value), for comparing
    /// replicas and for display.
    pub fn render(&self) -> BTreeMap<String, String> {
        self.entries
            .iter()
            .map(|((kind, key), e)| {
                let v = match e {
                    Entry::Register(r) => r.value().map_or("null".into(), |v| v.to_string()),
                    Entry::Counter(c) => c.value().to_string(),
                    Entry::GCounter(c) => c.value().to_string(),
                    Entry::Set(s) => {
                        let items: Vec<String> = s.iter().map(|v| v.to_string()).collect();
                        format!("{{{}}}", items.join(", "))
                    }
                    Entry::Text(t) => t.to_string(),
                };
                (format!("{kind:?}:{key}"), v)
            })
            .collect()
    }
}

fn new_entry(kind: Kind) -> Entry {
    match kind {
        Kind::Register => Entry::Register(LwwRegister::default()),
        Kind::Counter => Entry::Counter(PnCounter::default()),
        Kind::GCounter => Entry::GCounter(GCounter::default()),
        Kind::Set => Entry::Set(OrSet::default()),
        Kind::Text => Entry::Text(Box::default()),
    }
}

fn slot_of(op: &Op) -> (Kind, String) {
    let kind = match op {
        Op::Set { .. } => Kind::Register,
        Op::Counter { .. } => Kind::Counter,
        Op::GCounter { .. } => Kind::GCounter,
        Op::SetAdd { .. } | Op::SetRemove { .. } => Kind::Set,
        Op::Text { .. } => Kind::Text,
    };
    (kind, op.key().to_string())
}

/// Turns one local edit into an operation and applies it to the entry it touches, moved from
/// `entries` into `scratch` on first use. `at` is (actor, change number, index in the change,
/// Lamport clock).
fn make_op(
    entries: &mut BTreeMap<(Kind, String), Entry>,
    scratch: &mut BTreeMap<(Kind, String), Entry>,
    (actor, seq, index, lamport): (Actor, u64, u32, u64),
    edit: Edit,
) -> Result<Op, DocError> {
    let tag = Tag {
        actor,
        seq,
        op: index,
    };
    let stamp = Stamp {
        lamport,
        actor,
        op: index,
    };
    fn slot<'a>(
        entries: &mut BTreeMap<(Kind, String), Entry>,
        scratch: &'a mut BTreeMap<(Kind, String), Entry>,
        kind: Kind,
        key: &str,
    ) -> &'a mut Entry {
        let k = (kind, key.to_string());
        scratch
            .entry(k.clone())
            .or_insert_with(|| entries.remove(&k).unwrap_or_else(|| new_entry(kind)))
    }
    let op = match edit {
        Edit::Set(key, value) => Op::Set { key, value },
        Edit::Increment(key, delta) => Op::Counter { key, delta },
        Edit::GIncrement(key, by) => Op::GCounter { key, by },
        Edit::Add(key, element) => Op::SetAdd { key, element },
        Edit::Remove(key, element) => {
            let observed = match slot(entries, scratch, Kind::Set, &key) {
                Entry::Set(s) => s.tags(&element),
                _ => Vec::new(),
            };
            Op::SetRemove {
                key,
                element,
                observed,
            }
        }
        Edit::Insert(key, pos, text) => {
            let Entry::Text(t) = slot(entries, scratch, Kind::Text, &key) else {
                unreachable!("text slot holds a text")
            };
            let mut clock = t.next_counter();
            let op = t
                .local_insert(actor, pos, &text, &mut clock)
                .map_err(|e| DocError::Edit(e.to_string()))?;
            return Ok(Op::Text { key, op });
        }
        Edit::Delete(key, pos, len) => {
            let Entry::Text(t) = slot(entries, scratch, Kind::Text, &key) else {
                unreachable!("text slot holds a text")
            };
            let op = t
                .local_delete(pos, len)
                .map_err(|e| DocError::Edit(e.to_string()))?;
            return Ok(Op::Text { key, op });
        }
    };
    let (kind, key) = slot_of(&op);
    apply_op(slot(entries, scratch, kind, &key), &op, tag, stamp).map_err(DocError::Edit)?;
    Ok(op)
}

/// The checks a local text edit can fail, made before any edit applies: positions within the
/// text as the earlier edits of the same change leave it, nothing empty, inserts within
/// [`MAX_INSERT_BYTES`], counters that do not run out.
fn check_text_edits(
    entries: &BTreeMap<(Kind, String), Entry>,
    edits: &[Edit],
) -> Result<(), DocError> {
    let fail = |e: TextError| Err(DocError::Edit(e.to_string()));
    let mut texts: BTreeMap<&str, (usize, u32)> = BTreeMap::new();
    for edit in edits {
        let (Edit::Insert(key, ..) | Edit::Delete(key, ..)) = edit else {
            continue;
        };
        let (len, next) = texts.entry(key.as_str()).or_insert_with(|| {
            match entries.get(&(Kind::Text, key.clone())) {
                Some(Entry::Text(t)) => (t.len(), t.next_counter()),
                _ => (0, 0),
            }
        });
        match edit {
            Edit::Insert(_, pos, text) => {
                if *pos > *len {
                    return fail(TextError::OutOfRange {
                        pos: *pos,
                        len: *len,
                    });
                }
                if text.is_empty() {
                    return fail(TextError::Empty);
                }
                if text.len() > MAX_INSERT_BYTES {
                    return fail(TextError::TooLarge("insert text"));
                }
                let n = text.chars().count();
                let Some(end) = u32::try_from(n).ok().and_then(|n| next.checked_add(n)) else {
                    return fail(TextError::CounterExhausted);
                };
                (*len, *next) = (*len + n, end);
            }
            Edit::Delete(_, pos, n) => {
                if *n == 0 {
                    return fail(TextError::Empty);
                }
                let end = pos.saturating_add(*n);
                if end > *len {
                    return fail(TextError::OutOfRange {
                        pos: end,
                        len: *len,
                    });
                }
                *len -= n;
            }
            _ => {}
        }
    }
    Ok(())
}

/// Applies a change's operations to `entries`; returns how many could not apply.
fn apply_change(entries: &mut BTreeMap<(Kind, String), Entry>, change: &Change) -> u64 {
    let mut skipped = 0;
    for (i, op) in change.ops().iter().enumerate() {
        let tag = Tag {
            actor: change.author(),
            seq: change.seq(),
            op: i as u32,
        };
        let stamp = Stamp {
            lamport: change.lamport(),
            actor: change.author(),
            op: i as u32,
        };
        let (kind, key) = slot_of(op);
        let entry = entries
            .entry((kind, key))
            .or_insert_with(|| new_entry(kind));
        if apply_op(entry, op, tag, stamp).is_err() {
            skipped += 1;
        }
    }
    skipped
}

fn apply_op(entry: &mut Entry, op: &Op, tag: Tag, stamp: Stamp) -> Result<(), String> {
    match (entry, op) {
        (Entry::Register(r), Op::Set { value, .. }) => r.apply(stamp, value.clone()),
        (Entry::Counter(c), Op::Counter { delta, .. }) => c.apply(tag.actor, *delta),
        (Entry::GCounter(c), Op::GCounter { by, .. }) => c.apply(tag.actor, *by),
        (Entry::Set(s), Op::SetAdd { element, .. }) => s.add(tag, element.clone()),
        (
            Entry::Set(s),
            Op::SetRemove {
                element, observed, ..
            },
        ) => s.remove(element, observed),
        (Entry::Text(t), Op::Text { op, .. }) => apply_text(t, op)?,
        _ => return Err("operation does not fit its slot".into()),
    }
    Ok(())
}

fn apply_text(t: &mut Text, op: &TextOp) -> Result<(), String> {
    t.apply(op).map_err(|e| e.to_string())
}

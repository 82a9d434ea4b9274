//! A document replica: the access list, the log of applied changes, changes waiting for their
//! causal predecessors, and the state the changes build.

use std::collections::BTreeMap;

use super::change::{Access, Change, DocError, DocId, MAX_WRITERS, Op, Writer};
use super::crdt::{Actor, GCounter, LwwRegister, OrSet, PnCounter, Stamp, Tag, Value};
use super::reconcile::{Id, IdSet};
use super::text::{Text, TextOp};
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
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
enum Entry {
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
    clock: BTreeMap<Actor, u64>,
    lamport: u64,
    log: BTreeMap<Id, Change>,
    /// Applied change ids by (author, seq), for catch-up by clock.
    by_dot: BTreeMap<(Actor, u64), Id>,
    pending: BTreeMap<Id, Change>,
    entries: BTreeMap<(Kind, String), Entry>,
    bytes: usize,
    /// Operations that failed to apply (a writer referring to what its change did not depend
    /// on); skipped identically on every replica that delivers the same causal history.
    skipped_ops: u64,
}

impl std::fmt::Debug for Document {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Document")
            .field("id", &self.id())
            .field("changes", &self.log.len())
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
        // Edits are turned into operations against a scratch copy of the touched entries, so
        // an invalid edit leaves the document as it was.
        let lamport = self.lamport + 1;
        let mut scratch: BTreeMap<(Kind, String), Entry> = BTreeMap::new();
        let mut ops = Vec::with_capacity(edits.len());
        for (i, edit) in edits.into_iter().enumerate() {
            let op = self.make_op(&mut scratch, actor, seq, i as u32, edit)?;
            ops.push(op);
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
        for (key, entry) in scratch {
            self.entries.insert(key, entry);
        }
        self.record(change.clone(), size);
        Ok(change)
    }

    /// Turns one local edit into an operation, applying it to `scratch` (a copy of the entry).
    fn make_op(
        &self,
        scratch: &mut BTreeMap<(Kind, String), Entry>,
        actor: Actor,
        seq: u64,
        index: u32,
        edit: Edit,
    ) -> Result<Op, DocError> {
        let tag = Tag {
            actor,
            seq,
            op: index,
        };
        let stamp = Stamp {
            lamport: self.lamport + 1,
            actor,
            op: index,
        };
        let op = match edit {
            Edit::Set(key, value) => Op::Set { key, value },
            Edit::Increment(key, delta) => Op::Counter { key, delta },
            Edit::GIncrement(key, by) => Op::GCounter { key, by },
            Edit::Add(key, element) => Op::SetAdd { key, element },
            Edit::Remove(key, element) => {
                let slot = self.scratch_entry(scratch, Kind::Set, &key);
                let observed = match slot {
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
                let Entry::Text(t) = self.scratch_entry(scratch, Kind::Text, &key) else {
                    unreachable!("text slot holds a text")
                };
                let mut clock = t.next_counter();
                let op = t
                    .local_insert(actor, pos, &text, &mut clock)
                    .map_err(|e| DocError::Edit(e.to_string()))?;
                return Ok(Op::Text { key, op });
            }
            Edit::Delete(key, pos, len) => {
                let Entry::Text(t) = self.scratch_entry(scratch, Kind::Text, &key) else {
                    unreachable!("text slot holds a text")
                };
                let op = t
                    .local_delete(pos, len)
                    .map_err(|e| DocError::Edit(e.to_string()))?;
                return Ok(Op::Text { key, op });
            }
        };
        let (kind, key) = slot_of(&op);
        let entry = self.scratch_entry(scratch, kind, &key);
        apply_op(entry, &op, tag, stamp).map_err(DocError::Edit)?;
        Ok(op)
    }

    fn scratch_entry<'a>(
        &self,
        scratch: &'a mut BTreeMap<(Kind, String), Entry>,
        kind: Kind,
        key: &str,
    ) -> &'a mut Entry {
        scratch.entry((kind, key.to_string())).or_insert_with(|| {
            match self.entries.get(&(kind, key.to_string())) {
                Some(e) => e.clone(),
                None => new_entry(kind),
            }
        })
    }

    /// Takes a change from another replica: verifies it, ignores it if known, applies it if
    /// its causal predecessors are applied, and otherwise keeps it until they are.
    pub fn apply(&mut self, change: Change) -> Result<Applied, DocError> {
        let id = change.id();
        if self.log.contains_key(&id) || self.pending.contains_key(&id) {
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
                self.lamport = self.lamport.max(change.lamport());
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
                    let entry = self
                        .entries
                        .entry((kind, key))
                        .or_insert_with(|| new_entry(kind));
                    if apply_op(entry, op, tag, stamp).is_err() {
                        self.skipped_ops += 1;
                    }
                }
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
        self.by_dot.insert((change.author(), change.seq()), id);
        self.bytes += size;
        self.log.insert(id, change);
    }

    /// How many changes of each writer are applied.
    pub fn clock(&self) -> &BTreeMap<Actor, u64> {
        &self.clock
    }

    /// Number of applied changes.
    pub fn len(&self) -> usize {
        self.log.len()
    }

    /// Whether no change is applied.
    pub fn is_empty(&self) -> bool {
        self.log.is_empty()
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

    /// Applied changes a replica at `clock` lacks, in causal order (for catch-up).
    pub fn changes_since<'a>(
        &'a self,
        clock: &'a BTreeMap<Actor, u64>,
    ) -> impl Iterator<Item = &'a Change> + 'a {
        self.by_dot
            .iter()
            .filter(|((a, s), _)| *s > clock.get(a).copied().unwrap_or(0))
            .filter_map(|(_, id)| self.log.get(id))
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

//! Where replicas persist: a small trait, and an in-memory implementation for tests and the
//! simulator (the runtime implements it on redb).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use crate::doc::change::{Access, Change, DocId};
use crate::doc::checkpoint::Checkpoint;

/// A storage failure, reported (as [`Event::StoreFailed`](super::Event::StoreFailed) and in
/// [`Stats::store_errors`](super::Stats::store_errors)) rather than panicked on: the document
/// stays correct in memory, only its durability suffers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("document store: {0}")]
pub struct StoreError(pub String);

/// Persistence of replicated documents. [`DocSync`](super::DocSync) calls it whenever a
/// document's access list or log changes, with only what is new.
pub trait DocStore {
    /// Every stored document: its latest access list and its changes (in any order).
    fn load(&mut self) -> Result<Vec<(Access, Vec<Change>)>, StoreError>;
    /// Stores a document's access list (a new document, or a newer version).
    fn save_access(&mut self, access: &Access) -> Result<(), StoreError>;
    /// Appends verified changes to a document's log. They were new to the replica: applied,
    /// or waiting for their causal predecessors (loading applies them again, in causal order).
    fn save_changes(&mut self, doc: &DocId, changes: &[Change]) -> Result<(), StoreError>;
    /// Stores a document's newer checkpoint with the state it names (verified by document
    /// sync), replacing the older one, and drops the stored changes it covers (those of
    /// writer `a` numbered up to [`Checkpoint::covers_of`]`(a)`). One atomic step: a crash
    /// leaves either the old checkpoint with its changes or the new one without them.
    fn save_checkpoint(
        &mut self,
        doc: &DocId,
        checkpoint: &Checkpoint,
        state: &[u8],
    ) -> Result<(), StoreError>;
    /// A document's stored checkpoint and state, if any ([`load`](Self::load) returns the
    /// changes beyond it).
    fn load_checkpoint(&mut self, doc: &DocId)
    -> Result<Option<(Checkpoint, Vec<u8>)>, StoreError>;
    /// Forgets a document.
    fn remove(&mut self, doc: &DocId) -> Result<(), StoreError>;
}

type Docs = BTreeMap<DocId, (Access, Vec<Change>)>;
type Checkpoints = BTreeMap<DocId, (Checkpoint, Vec<u8>)>;

/// A [`DocStore`] in memory. Clones share their contents, so a test can keep one to inspect
/// what was saved, or hand it to a second [`DocSync`](super::DocSync) to model a restart.
#[derive(Debug, Clone, Default)]
pub struct MemoryStore {
    docs: Arc<Mutex<(Docs, Checkpoints)>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of changes stored for `doc`.
    pub fn changes(&self, doc: &DocId) -> usize {
        self.with(|d| Ok(d.get(doc).map_or(0, |(_, c)| c.len())))
            .unwrap_or(0)
    }

    /// The number of `doc`'s stored checkpoint, if any.
    pub fn checkpoint(&self, doc: &DocId) -> Option<u64> {
        let all = self.docs.lock().ok()?;
        all.1.get(doc).map(|(c, _)| c.number())
    }

    fn with<T>(&self, f: impl FnOnce(&mut Docs) -> Result<T, StoreError>) -> Result<T, StoreError> {
        self.with_all(|d, _| f(d))
    }

    fn with_all<T>(
        &self,
        f: impl FnOnce(&mut Docs, &mut Checkpoints) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut all = self
            .docs
            .lock()
            .map_err(|_| StoreError("memory store poisoned".into()))?;
        let (docs, checkpoints) = &mut *all;
        f(docs, checkpoints)
    }
}

impl DocStore for MemoryStore {
    fn load(&mut self) -> Result<Vec<(Access, Vec<Change>)>, StoreError> {
        self.with(|d| Ok(d.values().cloned().collect()))
    }

    fn save_access(&mut self, access: &Access) -> Result<(), StoreError> {
        self.with(|d| {
            d.entry(access.doc())
                .and_modify(|(a, _)| *a = access.clone())
                .or_insert_with(|| (access.clone(), Vec::new()));
            Ok(())
        })
    }

    fn save_changes(&mut self, doc: &DocId, changes: &[Change]) -> Result<(), StoreError> {
        self.with(|d| match d.get_mut(doc) {
            Some((_, log)) => {
                log.extend_from_slice(changes);
                Ok(())
            }
            None => Err(StoreError(format!(
                "changes for {doc} before its access list"
            ))),
        })
    }

    fn save_checkpoint(
        &mut self,
        doc: &DocId,
        checkpoint: &Checkpoint,
        state: &[u8],
    ) -> Result<(), StoreError> {
        self.with_all(|d, cps| {
            let Some((_, log)) = d.get_mut(doc) else {
                return Err(StoreError(format!(
                    "checkpoint for {doc} before its access list"
                )));
            };
            if cps
                .get(doc)
                .is_some_and(|(c, _)| c.number() >= checkpoint.number())
            {
                return Ok(());
            }
            log.retain(|c| c.seq() > checkpoint.covers_of(c.author()));
            cps.insert(*doc, (checkpoint.clone(), state.to_vec()));
            Ok(())
        })
    }

    fn load_checkpoint(
        &mut self,
        doc: &DocId,
    ) -> Result<Option<(Checkpoint, Vec<u8>)>, StoreError> {
        self.with_all(|_, cps| Ok(cps.get(doc).cloned()))
    }

    fn remove(&mut self, doc: &DocId) -> Result<(), StoreError> {
        self.with_all(|d, cps| {
            d.remove(doc);
            cps.remove(doc);
            Ok(())
        })
    }
}

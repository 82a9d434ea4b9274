//! Replicated documents: data that many peers edit concurrently, offline or across partitions,
//! and that converges with no coordinator.
//!
//! A document is owned by a key and identified by a [`DocId`] derived from that key, so the id
//! proves the owner. The owner signs the [`Access`] list: the writers, each with a fixed index
//! (its [`Actor`]), appended or revoked in later versions but never reordered. A writer edits by
//! making a [`Change`]: operations numbered per writer (1, 2, …), with the causal context they
//! were made in (how many changes of every other writer it had applied — a version vector, and
//! with the change's own number, a dotted one), a Lamport clock, and the writer's signature. A
//! peer may only write as itself: changes are verified against the access list before use.
//!
//! A [`Document`] delivers each change exactly once and in causal order: a change waits (in a
//! bounded room) until its writer's previous change and its causal context are applied;
//! duplicates are recognised by id. Under that delivery the CRDTs' concurrent operations
//! commute, so replicas that received the same set of changes — in any order, with duplicates
//! — are equal:
//!
//! - [`GCounter`](crdt::GCounter) and [`PnCounter`](crdt::PnCounter): totals per writer;
//! - [`LwwRegister`](crdt::LwwRegister): the write with the greatest (Lamport, writer, index)
//!   wins;
//! - [`OrSet`](crdt::OrSet): add-wins observed-remove set (a remove names the adds it saw);
//! - [`Text`](text::Text): a sequence CRDT for text (see [`text`]);
//! - the document itself is the map composing them: each key names one value per kind.
//!
//! Replicas find the changes they lack by [range-based set reconciliation](reconcile) over
//! change ids: traffic grows with the difference, not the document.
//!
//! Changes that every writer has applied are folded into an owner-signed [`Checkpoint`]: the
//! log keeps only what is newer, and a replica that lacks folded changes receives the state
//! itself (see [`checkpoint`]).
//!
//! Limits: a quota on the bytes of the checkpoint's state and the log, bounded operations per
//! change, key and value sizes, writers, and waiting changes. Known limits: a revocation cuts a
//! writer's changes at the number the owner had seen, and changes of that writer concurrent
//! with the revocation may be kept by replicas that applied them first.

pub mod change;
pub mod checkpoint;
pub mod crdt;
mod document;
pub mod reconcile;
pub mod sync;
pub mod text;

pub use change::{Access, Change, DOC_TOPIC_PREFIX, DocError, DocId, Op, Writer};
pub use checkpoint::Checkpoint;
pub use crdt::{Actor, Value};
pub use document::{Applied, Document, Edit, Kind, Limits};

#[cfg(test)]
mod tests;

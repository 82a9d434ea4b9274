//! The scalar CRDTs of a document: counters, a last-writer-wins register and an observed-remove
//! set. They are operation-based: the document delivers each operation exactly once and in
//! causal order (see [`Document`](super::Document)), and under that delivery concurrent
//! operations commute, so replicas that applied the same operations are equal.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// A writer's index in the document's access list: compact, and the same on every replica.
pub type Actor = u32;

/// Where an operation sits in causal history: its author, the author's change number, and the
/// operation's position in that change. Unique per operation.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct Tag {
    /// The author.
    pub actor: Actor,
    /// The author's change number (1, 2, …).
    pub seq: u64,
    /// The operation's index in the change.
    pub op: u32,
}

/// A register's timestamp: Lamport clock, then author, then position, so any two differ and
/// every replica orders them alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Serialize, Deserialize)]
pub struct Stamp {
    /// The change's Lamport clock.
    pub lamport: u64,
    /// The author.
    pub actor: Actor,
    /// The operation's index in its change.
    pub op: u32,
}

/// A value stored in a register or a set.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Value {
    /// No value (a cleared register).
    Null,
    /// A boolean.
    Bool(bool),
    /// A signed integer.
    Int(i64),
    /// UTF-8 text.
    Str(String),
    /// Bytes.
    Bytes(Vec<u8>),
}

impl Value {
    /// Bytes the value takes (for quotas).
    pub fn size(&self) -> usize {
        match self {
            Value::Null | Value::Bool(_) => 1,
            Value::Int(_) => 8,
            Value::Str(s) => s.len(),
            Value::Bytes(b) => b.len(),
        }
    }
}

impl std::fmt::Display for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Value::Null => write!(f, "null"),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Int(i) => write!(f, "{i}"),
            Value::Str(s) => write!(f, "{s}"),
            Value::Bytes(b) => {
                for x in b {
                    write!(f, "{x:02x}")?;
                }
                Ok(())
            }
        }
    }
}

/// A grow-only counter: one total per writer, the value is their sum.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GCounter {
    totals: BTreeMap<Actor, u64>,
}

impl GCounter {
    /// Applies `actor`'s increment by `by`.
    pub fn apply(&mut self, actor: Actor, by: u64) {
        let t = self.totals.entry(actor).or_default();
        *t = t.saturating_add(by);
    }

    /// The sum (saturating).
    pub fn value(&self) -> u64 {
        self.totals.values().fold(0u64, |a, b| a.saturating_add(*b))
    }
}

/// A counter that goes up and down: a pair of grow-only counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PnCounter {
    up: GCounter,
    down: GCounter,
}

impl PnCounter {
    /// Applies `actor`'s change by `delta`.
    pub fn apply(&mut self, actor: Actor, delta: i64) {
        if delta >= 0 {
            self.up.apply(actor, delta.unsigned_abs());
        } else {
            self.down.apply(actor, delta.unsigned_abs());
        }
    }

    /// Increments minus decrements (saturating at the bounds of `i64`).
    pub fn value(&self) -> i64 {
        let v = i128::from(self.up.value()) - i128::from(self.down.value());
        v.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
    }
}

/// A last-writer-wins register: the write with the greatest [`Stamp`] wins.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LwwRegister {
    current: Option<(Stamp, Value)>,
}

impl LwwRegister {
    /// Applies a write.
    pub fn apply(&mut self, stamp: Stamp, value: Value) {
        if self.current.as_ref().is_none_or(|(s, _)| stamp > *s) {
            self.current = Some((stamp, value));
        }
    }

    /// The winning value (`None` if never written).
    pub fn value(&self) -> Option<&Value> {
        self.current.as_ref().map(|(_, v)| v)
    }

    /// The winning write's stamp.
    pub fn stamp(&self) -> Option<Stamp> {
        self.current.as_ref().map(|(s, _)| *s)
    }
}

/// An observed-remove set: an element is present while some add of it has not been removed. A
/// remove takes away only the adds its author had seen, so an add concurrent with a remove
/// wins.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrSet {
    elements: BTreeMap<Value, BTreeSet<Tag>>,
}

impl OrSet {
    /// Applies an add of `element`, identified by `tag`.
    pub fn add(&mut self, tag: Tag, element: Value) {
        self.elements.entry(element).or_default().insert(tag);
    }

    /// Applies a remove of `element`'s adds `observed`.
    pub fn remove(&mut self, element: &Value, observed: &[Tag]) {
        if let Some(tags) = self.elements.get_mut(element) {
            for t in observed {
                tags.remove(t);
            }
            if tags.is_empty() {
                self.elements.remove(element);
            }
        }
    }

    /// The adds of `element` visible now (what a remove issued here must name).
    pub fn tags(&self, element: &Value) -> Vec<Tag> {
        self.elements
            .get(element)
            .map(|t| t.iter().copied().collect())
            .unwrap_or_default()
    }

    /// Whether `element` is present.
    pub fn contains(&self, element: &Value) -> bool {
        self.elements.contains_key(element)
    }

    /// The elements, in order.
    pub fn iter(&self) -> impl Iterator<Item = &Value> {
        self.elements.keys()
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.elements.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.elements.is_empty()
    }

    /// Whether every element has an add (what operations keep true; checked on decoding).
    pub(super) fn is_well_formed(&self) -> bool {
        self.elements.values().all(|tags| !tags.is_empty())
    }
}

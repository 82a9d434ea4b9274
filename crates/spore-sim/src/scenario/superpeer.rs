//! The `[superpeers]` workload: coverage of the leaves by super-peers, and its recovery when a
//! share of the super-peers crashes at once.

use std::collections::BTreeSet;
use std::time::Duration;

use rand_chacha::ChaCha20Rng;
use spore_core::time::Instant;
use spore_core::trust::eviction::NetGroup;

use super::draw::sample;
use super::format::SuperPeerSpec;
use crate::config::NatType;
use crate::{NodeIndex, Sim};

/// What one moment looks like.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Coverage {
    /// Leaves online (honest nodes behind NATs).
    pub(crate) leaves: usize,
    /// Share of them holding `want` super-peers from at least two network groups.
    pub(crate) share: f64,
    /// Super-peers serving, online.
    pub(crate) serving: usize,
}

/// One removal and what followed.
#[derive(Debug, Clone)]
pub(crate) struct Removal {
    pub(crate) at: Instant,
    pub(crate) share: f64,
    pub(crate) removed: usize,
    pub(crate) coverage_before: f64,
    pub(crate) coverage_min: f64,
    /// Time from the removal until coverage was back at its level before it.
    pub(crate) restored_after: Option<Duration>,
}

/// The workload's state during a run.
#[derive(Debug)]
pub(crate) struct SuperPeerRun {
    pub(crate) spec: SuperPeerSpec,
    pub(crate) removals: Vec<Removal>,
    pub(crate) last: Coverage,
    /// The lowest coverage seen before the first removal, from the first full coverage on.
    pub(crate) steady_min: Option<f64>,
    /// When coverage first reached 1.
    pub(crate) first_full: Option<Instant>,
    /// Random-key lookups started after the last removal: (finished, succeeded).
    pub(crate) lookups_after: (u64, u64),
    /// Most leaves one super-peer served at any sample.
    pub(crate) peak_leaves: usize,
}

impl SuperPeerRun {
    pub(crate) fn new(spec: SuperPeerSpec) -> Self {
        Self {
            spec,
            removals: Vec::new(),
            last: Coverage::default(),
            steady_min: None,
            first_full: None,
            lookups_after: (0, 0),
            peak_leaves: 0,
        }
    }

    /// Measures coverage now, and follows the recovery after removals.
    pub(crate) fn measure(&mut self, sim: &Sim, honest: &[NodeIndex], start: Instant) {
        let want = sim.config().node.superpeer.want.max(1);
        let mut covered = 0usize;
        let mut leaves = 0usize;
        for &i in honest {
            if !sim.is_online(i) || sim.nat(i) == NatType::Public {
                continue;
            }
            leaves += 1;
            let held: Vec<NodeIndex> = sim
                .node(i)
                .superpeers()
                .held()
                .filter_map(|p| sim.index_of(p))
                .filter(|j| sim.is_online(*j))
                .collect();
            let groups: BTreeSet<NetGroup> = held
                .iter()
                .map(|j| NetGroup::of(sim.addr(*j).ip()))
                .collect();
            if held.len() >= want && groups.len() >= 2 {
                covered += 1;
            }
        }
        let (mut serving, mut max_leaves) = (0, 0);
        for i in sim.indices() {
            let sp = sim.node(i).superpeers();
            if sim.is_online(i) && sp.is_serving() {
                serving += 1;
                max_leaves = max_leaves.max(sp.leaves().count());
            }
        }
        let share = if leaves == 0 {
            1.0
        } else {
            covered as f64 / leaves as f64
        };
        self.last = Coverage {
            leaves,
            share,
            serving,
        };
        self.peak_leaves = self.peak_leaves.max(max_leaves);
        let now = sim.now();
        if share >= 1.0 && self.first_full.is_none() && now >= start {
            self.first_full = Some(now);
        }
        if self.removals.is_empty() && self.first_full.is_some() {
            self.steady_min = Some(self.steady_min.map_or(share, |m| m.min(share)));
        }
        if let Some(r) = self.removals.last_mut() {
            r.coverage_min = r.coverage_min.min(share);
            if r.restored_after.is_none() && share >= r.coverage_before {
                r.restored_after = Some(now - r.at);
            }
        }
    }

    /// Crashes `share` of the super-peers serving now, chosen at random.
    pub(crate) fn remove(&mut self, sim: &mut Sim, share: f64, rng: &mut ChaCha20Rng) {
        let serving: Vec<NodeIndex> = sim
            .indices()
            .filter(|i| sim.is_online(*i) && sim.node(*i).superpeers().is_serving())
            .collect();
        let n = ((serving.len() as f64) * share).round() as usize;
        let removed = sample(rng, serving, n);
        for &i in &removed {
            sim.stop(i, true);
        }
        self.removals.push(Removal {
            at: sim.now(),
            share,
            removed: removed.len(),
            coverage_before: self.last.share,
            coverage_min: self.last.share,
            restored_after: None,
        });
    }

    /// Counts a random-key lookup that finished, if it started after the last removal.
    pub(crate) fn lookup_finished(&mut self, started: Instant, ok: bool) {
        if self.removals.last().is_some_and(|r| started >= r.at) {
            self.lookups_after.0 += 1;
            self.lookups_after.1 += u64::from(ok);
        }
    }
}

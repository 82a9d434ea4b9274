//! The swarm workload: seeders serve one blob, leechers of several bandwidth classes fetch it,
//! a share of them free-riding — and the measurement: each leecher's completion time, what
//! everyone uploaded, contributors against free riders.
//!
//! The blob is stored once for the whole run ([`SharedBlob`]); each node has a [`SimBlobs`]
//! over it. Free riders run the real node behind a filter that drops their `Unchoke` and `Data`
//! messages ([`adversary::swarm_free_rider`]). The runner plays the tracker: a leecher starts
//! with a random sample of the swarm's members, and gets another sample every
//! `announce_every` until it completes (restarting its fetch if it had failed for want of
//! peers).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use serde::Serialize;
use spore_core::identity::PeerId;
use spore_core::node;
use spore_core::swarm::{self, Stats};
use spore_core::time::Instant;

use super::adversary::{self, FreeRiding};
use super::draw::{sample, shuffle};
use super::format::SwarmSpec;
use crate::blobs::SharedBlob;
use crate::config::{Bandwidth, NetworkConfig};
use crate::{NodeIndex, Sim};

/// ChaCha20 stream of the scenario seed the blob's bytes come from.
const BLOB_STREAM: u64 = 11;

/// What a node is in the swarm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    Seeder,
    /// Leecher number `k`, in the order they start.
    Leecher(usize),
}

/// One leecher.
#[derive(Debug, Clone)]
struct Leecher {
    node: Option<NodeIndex>,
    class: usize,
    free_rider: bool,
    started: Option<Instant>,
    /// When it first held half of the blob.
    half: Option<Instant>,
    completed: Option<Instant>,
    /// Its fetch failed (no peer left); the next announce starts it again.
    failed: bool,
}

/// One leecher's outcome, in the report.
#[derive(Debug, Clone, Serialize)]
pub struct LeecherResult {
    /// Its node index.
    pub node: u32,
    /// Its bandwidth class.
    pub class: String,
    /// Whether it free-rides.
    pub free_rider: bool,
    /// When it started, seconds from the start of the measured phase.
    pub start_secs: f64,
    /// Start to holding half of the blob, seconds (absent if it never did).
    pub half_secs: Option<f64>,
    /// Start to completion, seconds; absent if it did not complete before the run ended.
    pub completion_secs: Option<f64>,
    /// Bytes it uploaded (data and proofs; 0 for a free rider, whose uploads are dropped).
    pub uploaded: u64,
    /// Bytes it downloaded that verified.
    pub downloaded: u64,
}

/// The swarm part of a scenario run.
pub(crate) struct SwarmRun {
    spec: SwarmSpec,
    blob: SharedBlob,
    /// The class names, in the file's order (one "all" class if the file has none).
    classes: Vec<String>,
    seeders: Vec<NodeIndex>,
    leechers: Vec<Leecher>,
    /// Per node index: its leecher number.
    leecher_of: BTreeMap<NodeIndex, usize>,
    /// Seeders and started leechers: what the tracker knows.
    members: Vec<NodeIndex>,
    free_riding: Arc<FreeRiding>,
    /// Unchoke slots given by contributors still downloading, summed over the samples:
    /// `[regular, optimistic]`, to free riders and to everyone.
    slots_to_free_riders: [u64; 2],
    slots_given: [u64; 2],
    failures: u64,
    restarts: u64,
    bad_peers: u64,
    announces: u64,
    fetch_errors: u64,
}

impl std::fmt::Debug for SwarmRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SwarmRun")
            .field("leechers", &self.leechers.len())
            .finish_non_exhaustive()
    }
}

/// What the swarm measurement adds to a run's report.
#[derive(Debug, Default)]
pub(crate) struct Results {
    pub(crate) summary: Vec<(String, f64)>,
    pub(crate) counters: Vec<(String, u64)>,
    pub(crate) leechers: Vec<LeecherResult>,
    pub(crate) classes: Vec<String>,
}

/// Progress of the swarm at one moment, for the time series.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Snapshot {
    /// Share of contributors complete.
    pub(crate) contributors_done: Option<f64>,
    /// Share of free riders complete.
    pub(crate) free_riders_done: Option<f64>,
    /// Mean share of the blob the contributors that have started hold.
    pub(crate) contributors_verified: Option<f64>,
    /// The same for free riders.
    pub(crate) free_riders_verified: Option<f64>,
}

impl SwarmRun {
    /// Plans the swarm for `leechers` leechers: the blob, and each leecher's class and whether
    /// it free-rides (the free riders spread over the classes in proportion, in random order).
    pub(crate) fn new(spec: SwarmSpec, seed: u64, leechers: usize, rng: &mut ChaCha20Rng) -> Self {
        let mut data = vec![0u8; usize::try_from(spec.size.0).unwrap_or(0)];
        let mut blob_rng = ChaCha20Rng::seed_from_u64(seed);
        blob_rng.set_stream(BLOB_STREAM);
        blob_rng.fill_bytes(&mut data);
        let blob = SharedBlob::new(&data);
        drop(data);
        let shares: Vec<f64> = if spec.classes.is_empty() {
            vec![1.0]
        } else {
            spec.classes.iter().map(|c| c.share).collect()
        };
        let classes = if spec.classes.is_empty() {
            vec!["all".to_string()]
        } else {
            spec.classes.iter().map(|c| c.name.clone()).collect()
        };
        let mut plan = Vec::with_capacity(leechers);
        let counts = apportion(&shares, leechers);
        let weights: Vec<f64> = counts.iter().map(|c| *c as f64).collect();
        let riders = (spec.free_riders * leechers as f64).round() as usize;
        let riders = apportion(&weights, riders);
        for (class, (count, riders)) in counts.into_iter().zip(riders).enumerate() {
            for k in 0..count {
                plan.push(Leecher {
                    node: None,
                    class,
                    free_rider: k < riders,
                    started: None,
                    half: None,
                    completed: None,
                    failed: false,
                });
            }
        }
        shuffle(rng, &mut plan);
        Self {
            spec,
            blob,
            classes,
            seeders: Vec::new(),
            leechers: plan,
            leecher_of: BTreeMap::new(),
            members: Vec::new(),
            free_riding: Arc::new(FreeRiding::default()),
            slots_to_free_riders: [0; 2],
            slots_given: [0; 2],
            failures: 0,
            restarts: 0,
            bad_peers: 0,
            announces: 0,
            fetch_errors: 0,
        }
    }

    /// The role of honest node number `n` (bootstrap nodes aside), in creation order: the
    /// seeders first, then the leechers.
    pub(crate) fn role(&self, n: usize) -> Option<Role> {
        if n < self.spec.seeders {
            Some(Role::Seeder)
        } else if n - self.spec.seeders < self.leechers.len() {
            Some(Role::Leecher(n - self.spec.seeders))
        } else {
            None
        }
    }

    /// The link of a node with `role`.
    pub(crate) fn bandwidth(&self, role: Role, network: &NetworkConfig) -> Bandwidth {
        let net = network.bandwidth;
        match role {
            Role::Seeder => Bandwidth {
                up: self.spec.seeder_upload.map(|r| r.0).or(net.up),
                down: self.spec.seeder_download.map(|r| r.0).or(net.down),
            },
            Role::Leecher(k) => match self.spec.classes.get(self.leechers[k].class) {
                Some(c) => Bandwidth {
                    up: Some(c.upload.0),
                    down: c.download.map(|r| r.0).or(net.down),
                },
                None => net,
            },
        }
    }

    /// `config` with the swarm's upload limit set from `bandwidth`.
    pub(crate) fn configure(&self, config: &mut node::Config, bandwidth: Bandwidth) {
        config.swarm.upload_rate = bandwidth
            .up
            .map(|up| ((up as f64 * self.spec.upload_limit) as u64).max(1));
    }

    /// Node `i` was created with `role`: its store, and for a seeder the blob it serves, for a
    /// free rider its filter.
    pub(crate) fn joined(&mut self, sim: &mut Sim, i: NodeIndex, role: Role) {
        let hash = self.blob.hash();
        match role {
            Role::Seeder => {
                let store = self.blob.complete();
                let served = sim.command(i, |n, now| {
                    n.set_blob_access(Box::new(store));
                    n.serve(now, hash)
                });
                if served.is_err() {
                    self.fetch_errors += 1;
                }
                self.seeders.push(i);
                self.members.push(i);
            }
            Role::Leecher(k) => {
                let store = self.blob.empty();
                sim.command(i, |n, _| n.set_blob_access(Box::new(store)));
                self.leechers[k].node = Some(i);
                self.leecher_of.insert(i, k);
                if self.leechers[k].free_rider {
                    sim.set_tamper(i, adversary::swarm_free_rider(self.free_riding.clone()));
                }
            }
        }
    }

    /// Number of leechers.
    pub(crate) fn leecher_count(&self) -> usize {
        self.leechers.len()
    }

    /// Leecher `k` starts its download with the tracker's sample of the swarm.
    pub(crate) fn start(&mut self, sim: &mut Sim, k: usize, rng: &mut ChaCha20Rng) {
        let Some(i) = self.leechers[k].node else {
            return;
        };
        self.leechers[k].started = Some(sim.now());
        self.fetch(sim, i, rng);
        self.members.push(i);
    }

    /// Every leecher that started and has not completed announces again: more peers, and a new
    /// fetch if the last one failed.
    pub(crate) fn announce(&mut self, sim: &mut Sim, rng: &mut ChaCha20Rng) {
        for k in 0..self.leechers.len() {
            let l = &self.leechers[k];
            let (Some(i), Some(_), None) = (l.node, l.started, l.completed) else {
                continue;
            };
            if !sim.is_online(i) {
                continue;
            }
            if l.failed {
                self.restarts += 1;
                self.leechers[k].failed = false;
            }
            self.announces += 1;
            self.fetch(sim, i, rng);
        }
    }

    /// `fetch` at node `i`, with `tracker_peers` random members other than itself.
    fn fetch(&mut self, sim: &mut Sim, i: NodeIndex, rng: &mut ChaCha20Rng) {
        let others: Vec<NodeIndex> = self.members.iter().copied().filter(|j| *j != i).collect();
        let providers: Vec<(PeerId, Vec<SocketAddr>)> =
            sample(rng, others, self.spec.tracker_peers)
                .into_iter()
                .map(|j| (sim.peer_id(j), vec![sim.addr(j)]))
                .collect();
        let hash = self.blob.hash();
        if sim
            .command(i, |n, now| n.fetch(now, hash, providers))
            .is_err()
        {
            self.fetch_errors += 1;
        }
    }

    /// Takes what the swarms reported since the last call.
    pub(crate) fn collect(&mut self, sim: &mut Sim) {
        let hash = self.blob.hash();
        for o in sim.take_swarm() {
            let k = self.leecher_of.get(&o.node).copied();
            match o.event {
                swarm::Event::Progress {
                    hash: h,
                    verified_bytes,
                    ..
                } if h == hash => {
                    if let Some(k) = k
                        && verified_bytes.saturating_mul(2) >= self.blob.size()
                    {
                        self.leechers[k].half.get_or_insert(o.at);
                    }
                }
                swarm::Event::Complete { hash: h, .. } if h == hash => {
                    if let Some(k) = k {
                        let l = &mut self.leechers[k];
                        l.half.get_or_insert(o.at);
                        l.completed.get_or_insert(o.at);
                    }
                }
                swarm::Event::Failed { hash: h, .. } if h == hash => {
                    self.failures += 1;
                    if let Some(k) = k {
                        self.leechers[k].failed = true;
                    }
                }
                swarm::Event::BadPeer { .. } => self.bad_peers += 1,
                _ => {}
            }
        }
    }

    /// Where the swarm is now; counts who holds the unchoke slots of the contributors still
    /// downloading (a free rider's own slots are never announced: its filter drops them).
    pub(crate) fn snapshot(&mut self, sim: &Sim) -> Snapshot {
        let hash = self.blob.hash();
        for l in self.leechers.iter().filter(|l| !l.free_rider) {
            let Some(i) = l.node else { continue };
            if !sim.node(i).swarm().info(&hash).is_some_and(|s| s.fetching) {
                continue;
            }
            for p in sim.node(i).swarm().peers(&hash) {
                let Some(slot) = p.slot else { continue };
                let o = usize::from(slot == swarm::Slot::Optimistic);
                self.slots_given[o] += 1;
                let rider = sim
                    .index_of(&p.peer)
                    .and_then(|j| self.leecher_of.get(&j))
                    .is_some_and(|k| self.leechers[*k].free_rider);
                self.slots_to_free_riders[o] += u64::from(rider);
            }
        }
        let size = self.blob.size().max(1) as f64;
        let group = |free: bool| {
            let members: Vec<&Leecher> = self
                .leechers
                .iter()
                .filter(|l| l.free_rider == free)
                .collect();
            if members.is_empty() {
                return (None, None);
            }
            let done = members.iter().filter(|l| l.completed.is_some()).count();
            let held: Vec<f64> = members
                .iter()
                .filter(|l| l.started.is_some())
                .filter_map(|l| l.node)
                .map(|i| {
                    sim.node(i)
                        .swarm()
                        .info(&hash)
                        .map_or(0.0, |s| s.verified_bytes as f64 / size)
                })
                .collect();
            (
                Some(done as f64 / members.len() as f64),
                (!held.is_empty()).then(|| held.iter().sum::<f64>() / held.len() as f64),
            )
        };
        let (contributors_done, contributors_verified) = group(false);
        let (free_riders_done, free_riders_verified) = group(true);
        Snapshot {
            contributors_done,
            free_riders_done,
            contributors_verified,
            free_riders_verified,
        }
    }

    /// The measurements, at the end of the run; `start` is the start of the measured phase.
    pub(crate) fn results(&self, sim: &Sim, start: Instant) -> Results {
        let mut r = Results {
            classes: self.classes.clone(),
            ..Results::default()
        };
        let end = sim.now();
        let size = self.blob.size() as f64;
        let secs = |a: Instant, b: Instant| (b - a).as_secs_f64();
        // Per group: completion times, incomplete ones counted up to the end (a lower bound).
        let mut times: BTreeMap<(Option<usize>, bool), Vec<f64>> = BTreeMap::new();
        let mut done: BTreeMap<bool, (u64, u64)> = BTreeMap::new();
        let mut uploads: BTreeMap<(Option<usize>, bool), Vec<f64>> = BTreeMap::new();
        let mut halves: BTreeMap<bool, Vec<f64>> = BTreeMap::new();
        let mut stats = Vec::new();
        for l in &self.leechers {
            let (Some(i), Some(started)) = (l.node, l.started) else {
                continue;
            };
            let s = sim.node(i).swarm().stats();
            stats.push(s);
            let t = secs(started, l.completed.unwrap_or(end));
            let uploaded = if l.free_rider { 0 } else { s.bytes_uploaded };
            for class in [None, Some(l.class)] {
                times.entry((class, l.free_rider)).or_default().push(t);
                uploads
                    .entry((class, l.free_rider))
                    .or_default()
                    .push(uploaded as f64 / size);
            }
            halves
                .entry(l.free_rider)
                .or_default()
                .push(secs(started, l.half.unwrap_or(end)));
            let d = done.entry(l.free_rider).or_default();
            d.0 += 1;
            d.1 += u64::from(l.completed.is_some());
            r.leechers.push(LeecherResult {
                node: i.0,
                class: self.classes[l.class].clone(),
                free_rider: l.free_rider,
                start_secs: secs(start, started),
                half_secs: l.half.map(|h| secs(started, h)),
                completion_secs: l.completed.map(|c| secs(started, c)),
                uploaded,
                downloaded: s.bytes_downloaded,
            });
        }
        for v in times.values_mut() {
            v.sort_by(f64::total_cmp);
        }
        let mut put = |k: &str, v: f64| r.summary.push((format!("swarm_{k}"), v));
        put("size_bytes", size);
        put("seeders", self.seeders.len() as f64);
        let (contributors, riders) = (done.get(&false), done.get(&true));
        put("contributors", contributors.map_or(0, |d| d.0) as f64);
        put("free_riders", riders.map_or(0, |d| d.0) as f64);
        let total: u64 = done.values().map(|d| d.0).sum();
        let complete: u64 = done.values().map(|d| d.1).sum();
        put("complete", ratio(complete, total));
        if let Some(d) = contributors {
            put("contributors_complete", ratio(d.1, d.0));
        }
        if let Some(d) = riders {
            put("free_riders_complete", ratio(d.1, d.0));
        }
        let group = |free: bool| if free { "free_rider" } else { "contributor" };
        for free in [false, true] {
            let Some(v) = times.get(&(None, free)) else {
                continue;
            };
            put(&format!("{}_p50_secs", group(free)), percentile(v, 0.5));
            put(&format!("{}_p90_secs", group(free)), percentile(v, 0.9));
            put(&format!("{}_max_secs", group(free)), percentile(v, 1.0));
        }
        for free in [false, true] {
            if let Some(v) = halves.get_mut(&free) {
                v.sort_by(f64::total_cmp);
                put(
                    &format!("{}_half_p50_secs", group(free)),
                    percentile(v, 0.5),
                );
            }
        }
        if let (Some(c), Some(f)) = (halves.get(&false), halves.get(&true)) {
            put(
                "free_rider_half_slowdown",
                percentile(f, 0.5) / percentile(c, 0.5).max(1e-9),
            );
        }
        if self.slots_given[0] > 0 {
            put("free_rider_share", ratio(riders.map_or(0, |d| d.0), total));
            put(
                "free_rider_regular_slot_share",
                ratio(self.slots_to_free_riders[0], self.slots_given[0]),
            );
            put(
                "free_rider_optimistic_slot_share",
                ratio(self.slots_to_free_riders[1], self.slots_given[1]),
            );
        }
        if let (Some(c), Some(f)) = (times.get(&(None, false)), times.get(&(None, true))) {
            let (c, f) = (percentile(c, 0.5), percentile(f, 0.5));
            put("free_rider_slowdown", f / c.max(1e-9));
            put("contributors_faster", f64::from(u8::from(c < f)));
        }
        for (k, name) in self.classes.iter().enumerate() {
            for free in [false, true] {
                if let Some(v) = times.get(&(Some(k), free)) {
                    put(
                        &format!("{name}_{}_p50_secs", group(free)),
                        percentile(v, 0.5),
                    );
                }
            }
            if let Some(u) = uploads.get(&(Some(k), false)) {
                put(
                    &format!("{name}_upload_ratio_mean"),
                    u.iter().sum::<f64>() / u.len() as f64,
                );
            }
        }
        if let Some(u) = uploads.get(&(None, false)) {
            put(
                "contributor_upload_ratio_mean",
                u.iter().sum::<f64>() / u.len() as f64,
            );
        }
        let seeded: u64 = self
            .seeders
            .iter()
            .map(|i| sim.node(*i).swarm().stats().bytes_uploaded)
            .sum();
        put("seeder_upload_ratio", seeded as f64 / size);
        let m = sim.metrics();
        put(
            "data_bytes_per_leecher_ratio",
            m.swarm_data_bytes_sent as f64 / (size * total.max(1) as f64),
        );
        put("failures", self.failures as f64);
        put("bad_peers", self.bad_peers as f64);
        put(
            "free_rider_unchokes_dropped",
            self.free_riding.unchokes.load(Ordering::Relaxed) as f64,
        );
        put(
            "free_rider_data_dropped",
            self.free_riding.data.load(Ordering::Relaxed) as f64,
        );
        let mut sum = serde_json::Map::new();
        for s in &stats {
            add_stats(&mut sum, s);
        }
        r.counters = sum
            .into_iter()
            .filter_map(|(k, v)| Some((format!("swarm_{k}"), v.as_u64()?)))
            .chain([
                ("swarm_bytes_sent".to_string(), m.swarm_bytes_sent),
                (
                    "swarm_data_frames_sent".to_string(),
                    m.swarm_data_frames_sent,
                ),
                ("swarm_data_bytes_sent".to_string(), m.swarm_data_bytes_sent),
                ("swarm_announces".to_string(), self.announces),
                ("swarm_restarts".to_string(), self.restarts),
                ("swarm_fetch_errors".to_string(), self.fetch_errors),
            ])
            .collect();
        r
    }
}

/// Adds the counters of `s` to the sums in `sum`, field by field.
fn add_stats(sum: &mut serde_json::Map<String, serde_json::Value>, s: &Stats) {
    let Ok(serde_json::Value::Object(fields)) = serde_json::to_value(s) else {
        return;
    };
    for (k, v) in fields {
        let add = v.as_u64().unwrap_or(0);
        let total = sum.get(&k).and_then(serde_json::Value::as_u64).unwrap_or(0);
        sum.insert(k, serde_json::Value::from(total + add));
    }
}

/// `n` items split by `shares` (largest remainders), so the counts sum to `n`.
fn apportion(shares: &[f64], n: usize) -> Vec<usize> {
    let total: f64 = shares.iter().sum();
    let exact: Vec<f64> = shares.iter().map(|s| s / total * n as f64).collect();
    let mut counts: Vec<usize> = exact.iter().map(|e| e.floor() as usize).collect();
    let mut order: Vec<usize> = (0..shares.len()).collect();
    order.sort_by(|a, b| {
        let (ra, rb) = (exact[*a].fract(), exact[*b].fract());
        rb.total_cmp(&ra).then(a.cmp(b))
    });
    let mut left = n.saturating_sub(counts.iter().sum());
    for i in order.into_iter().cycle() {
        if left == 0 {
            break;
        }
        counts[i] += 1;
        left -= 1;
    }
    counts
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 { 0.0 } else { a as f64 / b as f64 }
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apportion_keeps_the_total() {
        assert_eq!(apportion(&[12.0, 16.0, 12.0], 8), [3, 3, 2]);
        assert_eq!(apportion(&[0.3, 0.4, 0.3], 500), [150, 200, 150]);
        assert_eq!(apportion(&[1.0, 1.0, 1.0], 10), [4, 3, 3]);
        assert_eq!(apportion(&[1.0], 7), [7]);
        assert_eq!(apportion(&[0.5, 0.5], 0), [0, 0]);
    }
}

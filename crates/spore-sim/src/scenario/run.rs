//! Running a scenario: build the network, drive the timeline, measure.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use spore_core::identity::{Keypair, PeerId};
use spore_core::kad::{self, Contact, Key, QueryId, QueryResult};
use spore_core::pow::Stamp;
use spore_core::time::Instant;

use super::adversary;
use super::format::{AdversaryRole, NodeSettings, Scenario};
use super::pubsub::{self, PubSubRun, Spammer};
use super::report::{Report, RunReport, Sample};
use super::superpeer::SuperPeerRun;
use super::swarm::{Role, SwarmRun};
use super::truth::KeyIndex;
use crate::config::{NatType, NodeSpec, SimConfig};
use crate::network::SIM_PORT;
use crate::{NodeIndex, Sim, SimError};

/// ChaCha20 stream of the scenario seed that the timeline draws from (the simulator uses 1-3).
const SCENARIO_STREAM: u64 = 10;
/// How long lookups still running at the end of the measured phase may take to finish.
const GRACE: Duration = Duration::from_secs(60);

/// Where a scenario run is, for a progress display.
#[derive(Debug, Clone)]
pub struct Progress<'a> {
    /// The run's label.
    pub run: &'a str,
    /// Its position among the runs, from 0.
    pub run_index: usize,
    /// Number of runs.
    pub runs: usize,
    /// `"joining"`, `"settling"`, `"measuring"` or `"done"`.
    pub phase: &'static str,
    /// How far the run is, from 0 to 1, by virtual time.
    pub fraction: f64,
    /// Virtual time so far.
    pub virtual_time: Duration,
    /// Nodes online.
    pub online: usize,
}

/// Runs every run of `scenario` (variants times sizes), reporting progress as it goes.
pub fn run(
    scenario: &Scenario,
    progress: &mut dyn FnMut(&Progress<'_>),
) -> Result<Report, SimError> {
    let labels = scenario.run_labels();
    let mut runs = Vec::new();
    let each: Vec<Scenario> = std::iter::once(scenario.for_run(None))
        .chain(scenario.variants.iter().map(|v| scenario.for_run(Some(v))))
        .collect();
    let mut index = 0;
    for size in scenario.run_sizes() {
        for s in &each {
            let label = &labels[index];
            let mut runner = Runner::new(s, label, index, labels.len(), size, &s.node)?;
            runs.push(runner.run(progress)?);
            index += 1;
        }
    }
    let mut report = Report {
        scenario: scenario.name.clone(),
        description: scenario.description.clone(),
        seed: scenario.seed,
        runs,
        checks: Vec::new(),
    };
    report.check(&scenario.expect);
    Ok(report)
}

/// Something the timeline does at a point in virtual time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Action {
    Sample,
    Lookup,
    TargetLookup,
    PutValues,
    GetRound,
    ProbeRound,
    Split,
    Merge,
    Stop(NodeIndex),
    Restart(NodeIndex),
    Publish(usize),
    Crash,
    Spam,
    MeshSnapshot,
    SwarmStart(usize),
    SwarmAnnounce,
    Coverage,
    RemoveSuperPeers(usize),
}

/// What a running query was for.
#[derive(Debug, Clone)]
enum Purpose {
    Lookup { target: Key, started: Instant },
    Target,
    Put,
    Get { value: usize },
    Probe { target: PeerId, round: usize },
}

/// Counters of one sample interval.
#[derive(Debug, Default, Clone, Copy)]
struct Window {
    lookups: u64,
    lookup_ok: u64,
    gets: u64,
    gets_ok: u64,
    probes: u64,
    probes_ok: u64,
}

#[derive(Debug, Default)]
struct Totals {
    lookups: u64,
    lookup_ok: u64,
    overlap: f64,
    hops: Vec<u32>,
    messages: Vec<u32>,
    latency_ms: Vec<f64>,
    gets: u64,
    gets_ok: u64,
    forged_accepted: u64,
    puts: u64,
    replicas: u64,
    target_lookups: u64,
    target_ok: u64,
    honest_fraction: f64,
    abandoned: u64,
    unfinished: u64,
    /// Probe rounds: (start, issued, succeeded).
    rounds: Vec<(Instant, u64, u64)>,
    online_sum: f64,
    online_samples: u64,
}

struct Runner<'a> {
    scenario: &'a Scenario,
    label: &'a str,
    run_index: usize,
    runs: usize,
    size: usize,
    sim: Sim,
    rng: ChaCha20Rng,
    agenda: BinaryHeap<Reverse<(Instant, u64, Action)>>,
    next_seq: u64,
    pending: HashMap<(NodeIndex, QueryId), Purpose>,
    index: KeyIndex,
    k: usize,
    bootstrap: Vec<NodeIndex>,
    honest: Vec<NodeIndex>,
    is_adversary: Vec<bool>,
    is_server: Vec<bool>,
    /// Partition side of each node, decided at the start so probes before the split measure
    /// the same pairs.
    side: Vec<u16>,
    target: Key,
    values: Vec<(NodeIndex, String, bytes::Bytes)>,
    window: Window,
    totals: Totals,
    series: Vec<Sample>,
    start: Instant,
    end: Instant,
    merge_at: Option<Instant>,
    last_delivered: u64,
    last_sample: Instant,
    pubsub: Option<PubSubRun>,
    swarm: Option<SwarmRun>,
    superpeers: Option<SuperPeerRun>,
}

impl<'a> Runner<'a> {
    fn new(
        scenario: &'a Scenario,
        label: &'a str,
        run_index: usize,
        runs: usize,
        size: usize,
        settings: &NodeSettings,
    ) -> Result<Self, SimError> {
        let network = scenario.network_config().map_err(SimError::InvalidConfig)?;
        let mut node = settings.node_config();
        if let Some(sp) = &scenario.superpeers {
            let c = &mut node.superpeer;
            if let Some(d) = sp.min_uptime {
                c.min_uptime = d.0;
            }
            if let Some(n) = sp.want {
                c.want = n;
            }
            if let Some(n) = sp.max_leaves {
                c.max_leaves = n;
            }
            if let Some(d) = sp.interval {
                c.interval = d.0;
            }
        }
        let k = node.kad.k;
        let sim = Sim::new(SimConfig {
            seed: scenario.seed,
            nodes: 0,
            node,
            network,
            event_log: 0,
            collect_queries: true,
            collect_pubsub: scenario.pubsub.is_some(),
            collect_swarm: scenario.swarm.is_some(),
        })?;
        let mut rng = ChaCha20Rng::seed_from_u64(scenario.seed);
        rng.set_stream(SCENARIO_STREAM);
        let mut target = [0u8; 32];
        rng.fill_bytes(&mut target);
        let swarm = scenario.swarm.clone().map(|spec| {
            let adversaries = scenario.adversary.as_ref().map_or(0, |a| a.count_for(size));
            let honest = size.saturating_sub(scenario.join.bootstrap + adversaries);
            let (_, leechers) = spec.members(honest);
            SwarmRun::new(spec, scenario.seed, leechers, &mut rng)
        });
        Ok(Self {
            scenario,
            label,
            run_index,
            runs,
            size,
            sim,
            rng,
            agenda: BinaryHeap::new(),
            next_seq: 0,
            pending: HashMap::new(),
            index: KeyIndex::default(),
            k,
            bootstrap: Vec::new(),
            honest: Vec::new(),
            is_adversary: Vec::new(),
            is_server: Vec::new(),
            side: Vec::new(),
            target: Key(target),
            values: Vec::new(),
            window: Window::default(),
            totals: Totals::default(),
            series: Vec::new(),
            start: Instant::ZERO,
            end: Instant::ZERO,
            merge_at: None,
            last_delivered: 0,
            last_sample: Instant::ZERO,
            pubsub: scenario.pubsub.clone().map(PubSubRun::new),
            swarm,
            superpeers: scenario.superpeers.clone().map(SuperPeerRun::new),
        })
    }

    fn run(&mut self, progress: &mut dyn FnMut(&Progress<'_>)) -> Result<RunReport, SimError> {
        let wall = std::time::Instant::now();
        reset_peak_rss();
        // One thread runs every node: let it remember every node's records' signatures.
        spore_core::identity::verified::set_capacity(
            (8 * self.size).max(spore_core::identity::verified::DEFAULT_CAPACITY),
        );
        self.join(progress)?;
        self.measure(progress)?;
        let wall_secs = wall.elapsed().as_secs_f64();
        self.report(progress, wall_secs)
    }

    fn uniform(&mut self) -> f64 {
        crate::network::unit(&mut self.rng)
    }

    fn pick<T: Copy>(&mut self, from: &[T]) -> Option<T> {
        if from.is_empty() {
            return None;
        }
        let i = (self.rng.next_u64() % from.len() as u64) as usize;
        Some(from[i])
    }

    /// Exponentially distributed with the given median.
    fn exponential(&mut self, median: Duration) -> Duration {
        let mean = median.as_secs_f64() / std::f64::consts::LN_2;
        let u = 1.0 - self.uniform(); // in (0, 1]
        Duration::from_secs_f64((-u.ln() * mean).min(1e9))
    }

    fn schedule(&mut self, at: Instant, action: Action) {
        self.next_seq += 1;
        self.agenda.push(Reverse((at, self.next_seq, action)));
    }

    fn total_virtual(&self) -> Duration {
        let joins = (self.size - self.scenario.join.bootstrap) as f64 / self.scenario.join.rate;
        Duration::from_secs_f64(joins + 1.0)
            + self.scenario.join.settle.0
            + self.scenario.duration.0
            + GRACE
    }

    fn tell(&self, progress: &mut dyn FnMut(&Progress<'_>), phase: &'static str) {
        let now = Duration::from_micros(self.sim.now().as_micros());
        let total = self.total_virtual();
        progress(&Progress {
            run: self.label,
            run_index: self.run_index,
            runs: self.runs,
            phase,
            fraction: (now.as_secs_f64() / total.as_secs_f64()).min(1.0),
            virtual_time: now,
            online: self.sim.online_count(),
        });
    }

    // ---- building the network ------------------------------------------------------------

    fn join(&mut self, progress: &mut dyn FnMut(&Progress<'_>)) -> Result<(), SimError> {
        let s = self.scenario;
        let b = s.join.bootstrap;
        self.sim.reserve_nodes(self.size);
        for _ in 0..b {
            let i = self.sim.add_node()?;
            self.bootstrap.push(i);
            self.mark(i, false, true);
        }
        for x in 0..b {
            for y in (x + 1)..b {
                self.sim.connect(self.bootstrap[x], self.bootstrap[y])?;
            }
        }
        self.sim.run_for(Duration::from_secs(1));
        let adversaries = s.adversary.as_ref().map_or(0, |a| a.count_for(self.size));
        let honest = self.size - b - adversaries;
        let interval = Duration::from_secs_f64(1.0 / s.join.rate);
        let sybils = self.sybil_contacts(adversaries);
        for n in 0..(honest + adversaries) {
            let i = if n < honest {
                let role = self.swarm.as_ref().and_then(|w| w.role(n));
                let mut nat = self.draw_nat();
                if role == Some(Role::Seeder) {
                    // Seeders are where a swarm starts: reachable, like bootstrap nodes.
                    nat = NatType::Public;
                }
                let mut config = self.sim.config().node.clone();
                if nat != NatType::Public {
                    // What AutoNAT would conclude: unreachable nodes do not serve the DHT.
                    config.kad.mode = kad::Mode::Client;
                }
                if let Some(share) = s.superpeers.as_ref().map(|sp| sp.serve_share)
                    && nat == NatType::Public
                    && self.uniform() >= share
                {
                    // Its operator does not let it serve as a super-peer.
                    config.superpeer.serve = false;
                }
                let bandwidth = match (role, &self.swarm) {
                    (Some(role), Some(w)) => {
                        let b = w.bandwidth(role, &self.sim.config().network);
                        w.configure(&mut config, b);
                        Some(b)
                    }
                    _ => None,
                };
                let i = self.sim.add_node_with(NodeSpec {
                    nat,
                    bandwidth,
                    config: Some(config),
                    ..NodeSpec::default()
                })?;
                self.mark(i, false, nat == NatType::Public);
                if let (Some(role), Some(w)) = (role, self.swarm.as_mut()) {
                    w.joined(&mut self.sim, i, role);
                }
                i
            } else {
                self.add_adversary(n - honest, &sybils)?
            };
            for j in self.bootstrap.clone() {
                self.sim.keep(i, j)?;
            }
            self.join_pubsub(i, n < honest);
            self.sim.run_for(interval);
            if n % 64 == 0 {
                self.tell(progress, "joining");
            }
        }
        self.tell(progress, "settling");
        self.sim.run_for(s.join.settle.0);
        let keys = self
            .sim
            .indices()
            .map(|i| (Key::for_peer(&self.sim.peer_id(i)), i))
            .collect();
        self.index = KeyIndex::new(keys);
        Ok(())
    }

    /// Pub/sub for a node that just joined: its validator, its subscription (honest nodes by
    /// the `subscribers` share, pub/sub adversaries always) and its random dials.
    fn join_pubsub(&mut self, i: NodeIndex, honest: bool) {
        let Some(spec) = self.scenario.pubsub.as_ref() else {
            return;
        };
        let dials = spec.dial_random;
        let subscribe = if honest {
            // Drawn even when every node subscribes, so the share changes nothing else.
            self.uniform() < spec.subscribers
        } else {
            self.scenario
                .adversary
                .as_ref()
                .is_some_and(|a| a.role.is_pubsub())
        };
        if let Some(p) = self.pubsub.as_mut() {
            p.joined(&mut self.sim, i, subscribe, honest);
        }
        // A stand-in for overlay membership: a few random earlier nodes besides the bootstrap
        // nodes. Refusals (NAT) and repeats are simply skipped.
        let first = self.bootstrap.len() as u64;
        let before = u64::from(i.0);
        if before <= first {
            return;
        }
        for _ in 0..dials {
            let j = NodeIndex((first + self.rng.next_u64() % (before - first)) as u32);
            if self.sim.is_online(j) {
                let _ = self.sim.connect(i, j);
            }
        }
    }

    fn mark(&mut self, i: NodeIndex, adversary: bool, server: bool) {
        self.is_adversary.push(adversary);
        self.is_server.push(server);
        if !adversary && !self.bootstrap.contains(&i) {
            self.honest.push(i);
        }
    }

    fn draw_nat(&mut self) -> NatType {
        let m = &self.scenario.network.nat;
        let weights = [
            (NatType::Public, m.public),
            (NatType::Cone, m.cone),
            (NatType::Symmetric, m.symmetric),
            (NatType::UdpBlocked, m.udp_blocked),
        ];
        let total: f64 = weights.iter().map(|(_, w)| w).sum();
        let mut x = self.uniform() * total;
        for (nat, w) in weights {
            if x < w {
                return nat;
            }
            x -= w;
        }
        NatType::Public
    }

    /// Eclipse Sybils: identities ground so that their keys share `prefix_bits` leading bits
    /// with the target, and their contacts closest to the target first.
    fn sybil_contacts(&mut self, count: usize) -> Vec<(Keypair, Contact)> {
        let Some(spec) = &self.scenario.adversary else {
            return Vec::new();
        };
        let colluding = spec.role == AdversaryRole::Poisoner && spec.collude;
        if spec.role != AdversaryRole::Eclipse && !colluding {
            return Vec::new();
        }
        // Colluding poisoners have random ids: they attack every key, not one.
        let bits = if colluding { 0 } else { spec.prefix_bits };
        let [a, b, ..] = spec.subnet.octets();
        let difficulty = self.sim.config().node.difficulty;
        let mut out = Vec::with_capacity(count);
        for n in 0..count {
            let key = loop {
                let mut secret = [0u8; 32];
                self.rng.fill_bytes(&mut secret);
                let key = Keypair::from_secret_bytes(secret);
                if self
                    .target
                    .distance(&Key::for_peer(&key.peer_id()))
                    .leading_zeros()
                    >= bits
                {
                    break key;
                }
            };
            let host = u16::try_from(n + 1).unwrap_or(u16::MAX).to_be_bytes();
            let addr = SocketAddr::from((Ipv4Addr::new(a, b, host[0], host[1]), SIM_PORT));
            let id = key.peer_id();
            let contact = Contact {
                peer: id,
                stamp: Stamp::mint(&id, difficulty),
                addrs: [addr].into_iter().collect(),
            };
            out.push((key, contact));
        }
        out
    }

    fn add_adversary(
        &mut self,
        n: usize,
        sybils: &[(Keypair, Contact)],
    ) -> Result<NodeIndex, SimError> {
        let spec = self
            .scenario
            .adversary
            .as_ref()
            .ok_or_else(|| SimError::InvalidConfig("adversary without a section".into()))?;
        let (role, drop_rate, poison_rate) = (spec.role, spec.drop_rate, spec.poison_rate);
        let i = match sybils.get(n) {
            Some((key, contact)) => self.sim.add_node_with(NodeSpec {
                addr: contact.addrs.first().copied(),
                keypair: Some(key.clone()),
                ..NodeSpec::default()
            })?,
            None if role == AdversaryRole::GossipSpammer => {
                // Its key is the runner's, so the runner can sign its spam.
                let mut secret = [0u8; 32];
                self.rng.fill_bytes(&mut secret);
                let key = Keypair::from_secret_bytes(secret);
                let i = self.sim.add_node_with(NodeSpec {
                    keypair: Some(key.clone()),
                    ..NodeSpec::default()
                })?;
                let stamp = Stamp::mint(&key.peer_id(), self.sim.config().node.difficulty);
                let seq = self.rng.next_u64() >> 2;
                if let Some(p) = self.pubsub.as_mut() {
                    p.spammers.push(Spammer::new(i, key, stamp, seq));
                }
                i
            }
            None => self.sim.add_node()?,
        };
        self.mark(i, true, true);
        let tamper = match role {
            AdversaryRole::Eclipse => {
                let mut closest: Vec<Contact> = sybils.iter().map(|(_, c)| c.clone()).collect();
                let target = self.target;
                closest.sort_by_key(|c| target.distance(&Key::for_peer(&c.peer)));
                closest.truncate(self.k);
                adversary::eclipse(closest)
            }
            AdversaryRole::Poisoner => {
                let colluders: Vec<Contact> =
                    sybils.iter().take(self.k).map(|(_, c)| c.clone()).collect();
                adversary::poisoner(poison_rate, self.rng.next_u64(), colluders)
            }
            AdversaryRole::Dropper => adversary::dropper(drop_rate, self.rng.next_u64()),
            AdversaryRole::FreeRider => adversary::free_rider(),
            AdversaryRole::GossipDropper => adversary::gossip_dropper(),
            // Forwards as an honest node does; its spam is sent beside that.
            AdversaryRole::GossipSpammer => return Ok(i),
        };
        self.sim.set_tamper(i, tamper);
        Ok(i)
    }

    // ---- the measured phase ---------------------------------------------------------------

    fn measure(&mut self, progress: &mut dyn FnMut(&Progress<'_>)) -> Result<(), SimError> {
        let s = self.scenario;
        self.start = self.sim.now();
        self.end = self.start + s.duration.0;
        self.last_sample = self.start;
        self.last_delivered = self.sim.metrics().messages_delivered;
        let (start, end) = (self.start, self.end);
        let mut t = start + s.sample_every.0;
        while t <= end {
            self.schedule(t, Action::Sample);
            t = t + s.sample_every.0;
        }
        if let Some(l) = &s.lookups {
            for n in 0..l.count {
                let at = start + l.over.0.mul_f64(n as f64 / l.count as f64);
                self.schedule(at, Action::Lookup);
            }
        }
        if let Some(a) = &s.adversary
            && a.role == AdversaryRole::Eclipse
        {
            for n in 0..a.target_lookups {
                let at = start
                    + s.duration
                        .0
                        .mul_f64(n as f64 / a.target_lookups.max(1) as f64);
                self.schedule(at, Action::TargetLookup);
            }
        }
        if let Some(v) = &s.values {
            self.schedule(start, Action::PutValues);
            let mut t = start + v.get_every.0;
            while t <= end {
                self.schedule(t, Action::GetRound);
                t = t + v.get_every.0;
            }
        }
        if let Some(p) = &s.partition {
            self.side = (0..self.sim.len())
                .map(|_| u16::from(self.uniform() < p.split))
                .collect();
            self.schedule(start + p.at.0, Action::Split);
            let merge = start + p.at.0 + p.duration.0;
            self.merge_at = Some(merge);
            self.schedule(merge, Action::Merge);
            let mut t = start;
            while t < end {
                self.schedule(t, Action::ProbeRound);
                t = t + p.probe_every.0;
            }
        }
        if let Some(c) = &s.churn {
            for i in self.honest.clone() {
                let at = start + self.exponential(c.session_median.0);
                self.schedule(at, Action::Stop(i));
            }
        }
        if let Some(p) = &s.pubsub {
            let first = start + p.start.0;
            self.schedule(first, Action::MeshSnapshot);
            for n in 0..p.messages {
                let at = first + Duration::from_secs_f64(n as f64 / p.rate);
                self.schedule(at, Action::Publish(n));
            }
            if let Some(c) = &p.crash {
                self.schedule(first + c.at.0, Action::Crash);
            }
            if let Some(a) = s
                .adversary
                .as_ref()
                .filter(|a| a.role == AdversaryRole::GossipSpammer)
            {
                let every = Duration::from_secs_f64(1.0 / a.spam_rate);
                let stop = first + pubsub::publishing(p);
                let mut t = first;
                while t < stop {
                    self.schedule(t, Action::Spam);
                    t = t + every;
                }
            }
        }
        if let (Some(spec), Some(w)) = (&s.swarm, &self.swarm) {
            let first = start + spec.start.0;
            let n = w.leecher_count();
            for k in 0..n {
                let at = first + spec.spread.0.mul_f64(k as f64 / n as f64);
                self.schedule(at, Action::SwarmStart(k));
            }
            let mut t = first + spec.announce_every.0;
            while t <= end {
                self.schedule(t, Action::SwarmAnnounce);
                t = t + spec.announce_every.0;
            }
        }
        if let Some(sp) = &s.superpeers {
            let mut t = start;
            while t <= end {
                self.schedule(t, Action::Coverage);
                t = t + sp.coverage_every.0;
            }
            for (n, r) in sp.remove.iter().enumerate() {
                self.schedule(start + r.at.0, Action::RemoveSuperPeers(n));
            }
        }
        let mut told = 0u64;
        while let Some(Reverse((at, _, action))) = self.agenda.pop() {
            if at > end {
                break;
            }
            self.sim.run_until(at);
            self.collect();
            self.act(action)?;
            told += 1;
            if told % 32 == 0 {
                self.tell(progress, "measuring");
            }
        }
        self.sim.run_until(end);
        self.collect();
        if let Some(p) = self.pubsub.as_mut() {
            p.snapshot(&self.sim, true);
        }
        // Let lookups started near the end finish; nothing new starts.
        self.sim.run_for(GRACE);
        self.collect();
        self.totals.unfinished += self.pending.len() as u64;
        self.pending.clear();
        Ok(())
    }

    fn act(&mut self, action: Action) -> Result<(), SimError> {
        let now = self.sim.now();
        match action {
            Action::Sample => self.sample(),
            Action::Lookup => {
                let mut target = [0u8; 32];
                self.rng.fill_bytes(&mut target);
                let target = Key(target);
                if let Some(origin) = self.online_honest() {
                    self.start_query(
                        origin,
                        Purpose::Lookup {
                            target,
                            started: now,
                        },
                        |n, now| n.find_node(now, target),
                    );
                }
            }
            Action::TargetLookup => {
                let target = self.target;
                if let Some(origin) = self.online_honest() {
                    self.start_query(origin, Purpose::Target, |n, now| n.find_node(now, target));
                }
            }
            Action::PutValues => {
                let count = self.scenario.values.as_ref().map_or(0, |v| v.count);
                for v in 0..count {
                    let Some(publisher) = self.online_honest() else {
                        break;
                    };
                    let name = format!("value-{v}");
                    let value =
                        bytes::Bytes::from(format!("payload {v} of {}", self.scenario.name));
                    self.values.push((publisher, name.clone(), value.clone()));
                    self.start_query(publisher, Purpose::Put, |n, now| {
                        n.put_value(now, &name, value)
                    });
                }
            }
            Action::GetRound => {
                let gets = self.scenario.values.as_ref().map_or(0, |v| v.gets);
                for _ in 0..gets {
                    if self.values.is_empty() {
                        break;
                    }
                    let value = (self.rng.next_u64() % self.values.len() as u64) as usize;
                    let publisher = self.sim.peer_id(self.values[value].0);
                    let name = self.values[value].1.clone();
                    if let Some(reader) = self.online_honest() {
                        self.start_query(reader, Purpose::Get { value }, |n, now| {
                            n.get_value(now, publisher, &name)
                        });
                    }
                }
            }
            Action::ProbeRound => {
                let probes = self.scenario.partition.as_ref().map_or(0, |p| p.probes);
                let round = self.totals.rounds.len();
                self.totals.rounds.push((now, 0, 0));
                let (left, right): (Vec<NodeIndex>, Vec<NodeIndex>) = self
                    .honest
                    .iter()
                    .copied()
                    .filter(|i| self.sim.is_online(*i))
                    .partition(|i| self.side[i.index()] == 0);
                let right_servers: Vec<NodeIndex> = right
                    .iter()
                    .copied()
                    .filter(|i| self.is_server[i.index()])
                    .collect();
                for _ in 0..probes {
                    let (Some(origin), Some(target)) =
                        (self.pick(&left), self.pick(&right_servers))
                    else {
                        break;
                    };
                    let target = self.sim.peer_id(target);
                    self.totals.rounds[round].1 += 1;
                    self.start_query(origin, Purpose::Probe { target, round }, |n, now| {
                        n.find_node(now, Key::for_peer(&target))
                    });
                }
            }
            Action::Split => {
                let side = self.side.clone();
                self.sim.partition(|i| side[i.index()]);
            }
            Action::Merge => self.sim.heal(),
            Action::Stop(i) => {
                let Some(c) = self.scenario.churn.clone() else {
                    return Ok(());
                };
                let crash = self.uniform() < c.crash_fraction;
                self.sim.stop(i, crash);
                if let Some(p) = self.pubsub.as_mut() {
                    p.stopped(i, now);
                }
                let before = self.pending.len();
                self.pending.retain(|(n, _), _| *n != i);
                self.totals.abandoned += (before - self.pending.len()) as u64;
                let at = now + self.exponential(c.downtime_median.0);
                self.schedule(at, Action::Restart(i));
            }
            Action::Restart(i) => {
                let Some(c) = self.scenario.churn.clone() else {
                    return Ok(());
                };
                // The simulator re-keeps the bootstrap peers and dials remembered ones.
                if let Some(p) = self.pubsub.as_mut() {
                    p.restarting(&self.sim, i);
                }
                self.sim.restart(i)?;
                if let Some(p) = self.pubsub.as_mut() {
                    p.restarted(&mut self.sim, i);
                }
                let at = now + self.exponential(c.session_median.0);
                self.schedule(at, Action::Stop(i));
            }
            Action::Publish(n) => {
                let Some(mut p) = self.pubsub.take() else {
                    return Ok(());
                };
                let rng = &mut self.rng;
                if let Some(author) =
                    p.publisher(&self.sim, |len| (rng.next_u64() % len as u64) as usize)
                {
                    p.publish(&mut self.sim, author, n);
                }
                self.pubsub = Some(p);
            }
            Action::Crash => {
                let (Some(mut p), Some(fraction)) = (
                    self.pubsub.take(),
                    self.scenario
                        .pubsub
                        .as_ref()
                        .and_then(|s| s.crash.as_ref())
                        .map(|c| c.fraction),
                ) else {
                    return Ok(());
                };
                let rng = &mut self.rng;
                p.crash(&mut self.sim, &self.honest, fraction, |len| {
                    (rng.next_u64() % len as u64) as usize
                });
                self.pubsub = Some(p);
            }
            Action::Spam => {
                let kind = self.scenario.adversary.as_ref().map(|a| a.spam);
                if let (Some(p), Some(kind)) = (self.pubsub.as_mut(), kind) {
                    p.spam(&mut self.sim, kind);
                }
            }
            Action::MeshSnapshot => {
                if let Some(p) = self.pubsub.as_mut() {
                    p.snapshot(&self.sim, false);
                }
            }
            Action::SwarmStart(k) => {
                if let Some(w) = self.swarm.as_mut() {
                    w.start(&mut self.sim, k, &mut self.rng);
                }
            }
            Action::SwarmAnnounce => {
                if let Some(w) = self.swarm.as_mut() {
                    w.announce(&mut self.sim, &mut self.rng);
                }
            }
            Action::Coverage => {
                if let Some(sp) = self.superpeers.as_mut() {
                    sp.measure(&self.sim, &self.honest, self.start);
                }
            }
            Action::RemoveSuperPeers(n) => {
                if let Some(sp) = self.superpeers.as_mut() {
                    let share = sp.spec.remove[n].share;
                    // Coverage just before, then the crash.
                    sp.measure(&self.sim, &self.honest, self.start);
                    sp.remove(&mut self.sim, share, &mut self.rng);
                }
            }
        }
        Ok(())
    }

    fn online_honest(&mut self) -> Option<NodeIndex> {
        // Rejection sampling: cheap while a fair share of nodes is online.
        if self.honest.is_empty() {
            return None;
        }
        for _ in 0..64 {
            let i = self.honest[(self.rng.next_u64() % self.honest.len() as u64) as usize];
            if self.sim.is_online(i) {
                return Some(i);
            }
        }
        self.honest.iter().copied().find(|i| self.sim.is_online(*i))
    }

    fn start_query(
        &mut self,
        origin: NodeIndex,
        purpose: Purpose,
        f: impl FnOnce(&mut spore_core::Node, Instant) -> Result<QueryId, kad::KadError>,
    ) {
        match self.sim.command(origin, f) {
            Ok(id) => {
                self.pending.insert((origin, id), purpose);
            }
            // Refused (no peers, too many queries): a failed operation, counted as one.
            Err(_) => self.record_failure(purpose),
        }
    }

    fn record_failure(&mut self, purpose: Purpose) {
        match purpose {
            Purpose::Lookup { started, .. } => {
                self.window.lookups += 1;
                self.totals.lookups += 1;
                if let Some(sp) = self.superpeers.as_mut() {
                    sp.lookup_finished(started, false);
                }
            }
            Purpose::Target => self.totals.target_lookups += 1,
            Purpose::Put => self.totals.puts += 1,
            Purpose::Get { .. } => {
                self.window.gets += 1;
                self.totals.gets += 1;
            }
            Purpose::Probe { .. } => self.window.probes += 1,
        }
    }

    /// Takes finished queries and pub/sub observations from the simulator and scores them.
    fn collect(&mut self) {
        if let Some(p) = self.pubsub.as_mut() {
            p.collect(&mut self.sim, &self.is_adversary);
        }
        if let Some(w) = self.swarm.as_mut() {
            w.collect(&mut self.sim);
        }
        for outcome in self.sim.take_query_results() {
            let Some(purpose) = self.pending.remove(&(outcome.node, outcome.id)) else {
                continue; // the node's own bootstrap and refresh lookups
            };
            let origin = outcome.node;
            match (purpose, outcome.result) {
                (Purpose::Lookup { target, started }, QueryResult::FindNode { closest }) => {
                    let truth = self.truth(&target, origin);
                    let found: Vec<PeerId> = closest.iter().map(|c| c.peer).collect();
                    let ok = truth
                        .first()
                        .is_some_and(|t| found.contains(&self.sim.peer_id(*t)));
                    let overlap = truth
                        .iter()
                        .filter(|t| found.contains(&self.sim.peer_id(**t)))
                        .count() as f64
                        / truth.len().max(1) as f64;
                    let t = &mut self.totals;
                    t.lookups += 1;
                    t.lookup_ok += u64::from(ok);
                    t.overlap += overlap;
                    t.hops.push(outcome.stats.hops);
                    t.messages
                        .push(outcome.stats.requests + outcome.stats.responses);
                    t.latency_ms
                        .push((outcome.at - started).as_secs_f64() * 1000.0);
                    self.window.lookups += 1;
                    self.window.lookup_ok += u64::from(ok);
                    if let Some(sp) = self.superpeers.as_mut() {
                        sp.lookup_finished(started, ok);
                    }
                }
                (Purpose::Target, QueryResult::FindNode { closest }) => {
                    let truth = self.truth(&self.target.clone(), origin);
                    let honest = closest
                        .iter()
                        .filter(|c| {
                            self.sim
                                .index_of(&c.peer)
                                .is_some_and(|i| !self.is_adversary[i.index()])
                        })
                        .count();
                    let ok = truth
                        .first()
                        .is_some_and(|t| closest.iter().any(|c| c.peer == self.sim.peer_id(*t)));
                    let t = &mut self.totals;
                    t.target_lookups += 1;
                    t.target_ok += u64::from(ok);
                    t.honest_fraction += honest as f64 / closest.len().max(1) as f64;
                }
                (Purpose::Put, QueryResult::PutValue { stored, .. }) => {
                    self.totals.puts += 1;
                    self.totals.replicas += stored as u64;
                }
                (Purpose::Get { value }, QueryResult::GetValue { record, .. }) => {
                    let want = &self.values[value].2;
                    let ok = record.as_ref().is_some_and(|r| r.value() == want);
                    if record.as_ref().is_some_and(|r| r.value() != want) {
                        self.totals.forged_accepted += 1;
                    }
                    self.totals.gets += 1;
                    self.totals.gets_ok += u64::from(ok);
                    self.window.gets += 1;
                    self.window.gets_ok += u64::from(ok);
                }
                (Purpose::Probe { target, round }, QueryResult::FindNode { closest }) => {
                    let ok = closest.iter().any(|c| c.peer == target);
                    self.window.probes += 1;
                    self.window.probes_ok += u64::from(ok);
                    self.totals.rounds[round].2 += u64::from(ok);
                }
                (purpose, _) => self.record_failure(purpose),
            }
        }
    }

    /// The k closest online, honest DHT servers to `target`, other than `origin`.
    fn truth(&self, target: &Key, origin: NodeIndex) -> Vec<NodeIndex> {
        self.index.closest(target, self.k, |i| {
            i != origin
                && !self.is_adversary[i.index()]
                && self.is_server[i.index()]
                && self.sim.is_online(i)
        })
    }

    fn sample(&mut self) {
        let now = self.sim.now();
        let w = std::mem::take(&mut self.window);
        let rate = |ok: u64, n: u64| (n > 0).then(|| ok as f64 / n as f64);
        let delivered = self.sim.metrics().messages_delivered;
        let secs = (now - self.last_sample).as_secs_f64().max(1e-9);
        let online = self.sim.online_count();
        self.totals.online_sum += online as f64 / self.sim.len() as f64;
        self.totals.online_samples += 1;
        let swarm = self
            .swarm
            .as_mut()
            .map(|w| w.snapshot(&self.sim))
            .unwrap_or_default();
        self.series.push(Sample {
            swarm_contributors_done: swarm.contributors_done,
            swarm_free_riders_done: swarm.free_riders_done,
            swarm_contributors_verified: swarm.contributors_verified,
            swarm_free_riders_verified: swarm.free_riders_verified,
            superpeer_coverage: self.superpeers.as_ref().map(|sp| sp.last.share),
            superpeers_serving: self.superpeers.as_ref().map(|sp| sp.last.serving),
            t_secs: (now - self.start).as_secs_f64(),
            online,
            lookups: w.lookups,
            lookup_success: rate(w.lookup_ok, w.lookups),
            gets: w.gets,
            availability: rate(w.gets_ok, w.gets),
            probes: w.probes,
            probe_success: rate(w.probes_ok, w.probes),
            messages_per_sec: (delivered - self.last_delivered) as f64 / secs,
            ..Sample::default()
        });
        self.last_delivered = delivered;
        self.last_sample = now;
    }

    // ---- the report -----------------------------------------------------------------------

    fn report(
        &mut self,
        progress: &mut dyn FnMut(&Progress<'_>),
        wall_secs: f64,
    ) -> Result<RunReport, SimError> {
        self.tell(progress, "done");
        // What honest readers were handed: every value record in their lookups' answers, and
        // those that failed verification (forged).
        let (mut received, mut forged) = (0u64, 0u64);
        for i in self.sim.indices() {
            if !self.is_adversary[i.index()] {
                let k = self.sim.node(i).kad().stats();
                received += k.value_records_received;
                forged += k.invalid_records;
            }
        }
        let distrusted: u64 = self
            .sim
            .indices()
            .filter(|i| !self.is_adversary[i.index()])
            .map(|i| self.sim.node(i).reputation().stats().distrusted)
            .sum();
        let t = &mut self.totals;
        let mut summary = BTreeMap::new();
        let mut put = |k: &str, v: f64| {
            summary.insert(k.to_string(), v);
        };
        if self.scenario.lookups.is_some() {
            put("lookups", t.lookups as f64);
            put("lookup_success", ratio(t.lookup_ok, t.lookups));
            put("lookup_k_overlap", t.overlap / t.lookups.max(1) as f64);
            t.hops.sort_unstable();
            t.messages.sort_unstable();
            t.latency_ms.sort_by(f64::total_cmp);
            if !t.hops.is_empty() {
                put("hops_p50", f64::from(percentile(&t.hops, 0.5)));
                put("hops_p99", f64::from(percentile(&t.hops, 0.99)));
                put(
                    "messages_per_lookup_p50",
                    f64::from(percentile(&t.messages, 0.5)),
                );
                put(
                    "messages_per_lookup_p99",
                    f64::from(percentile(&t.messages, 0.99)),
                );
                put(
                    "messages_per_lookup_mean",
                    t.messages.iter().map(|m| f64::from(*m)).sum::<f64>() / t.messages.len() as f64,
                );
                put("latency_p50_ms", percentile(&t.latency_ms, 0.5));
                put("latency_p99_ms", percentile(&t.latency_ms, 0.99));
            }
        }
        if self.scenario.values.is_some() {
            put("puts", t.puts as f64);
            put("replicas_per_put", ratio(t.replicas, t.puts));
            put("gets", t.gets as f64);
            put("availability", ratio(t.gets_ok, t.gets));
            put("forged_values_accepted", t.forged_accepted as f64);
            put("value_records_received", received as f64);
            put("forged_records_received", forged as f64);
            put("forged_record_share", ratio(forged, received));
            put("peers_distrusted", distrusted as f64);
            if let Some(min) = self
                .series
                .iter()
                .filter_map(|s| s.availability)
                .min_by(f64::total_cmp)
            {
                put("availability_min", min);
            }
        }
        if let Some(sp) = &self.superpeers {
            put("superpeers_serving", sp.last.serving as f64);
            put("superpeer_leaves", sp.last.leaves as f64);
            put("superpeer_peak_leaves_per_superpeer", sp.peak_leaves as f64);
            put("superpeer_coverage_final", sp.last.share);
            if let Some(min) = sp.steady_min {
                put("superpeer_coverage_steady_min", min);
            }
            if let Some(at) = sp.first_full {
                put(
                    "superpeer_full_coverage_secs",
                    (at - self.start).as_secs_f64(),
                );
            }
            for (n, r) in sp.removals.iter().enumerate() {
                let n = n + 1;
                put(&format!("removal{n}_share"), r.share);
                put(&format!("removal{n}_removed"), r.removed as f64);
                put(&format!("removal{n}_coverage_before"), r.coverage_before);
                put(&format!("removal{n}_coverage_min"), r.coverage_min);
                // Absent when coverage never came back (as after removing every super-peer).
                if let Some(d) = r.restored_after {
                    put(&format!("removal{n}_restore_secs"), d.as_secs_f64());
                }
            }
            if !sp.removals.is_empty() {
                let (n, ok) = sp.lookups_after;
                put("lookups_after_last_removal", n as f64);
                put("lookup_success_after_last_removal", ratio(ok, n));
            }
        }
        if self.scenario.churn.is_some() {
            put(
                "online_share_mean",
                t.online_sum / t.online_samples.max(1) as f64,
            );
            put("queries_abandoned", t.abandoned as f64);
        }
        if let (Some(p), Some(merge)) = (&self.scenario.partition, self.merge_at) {
            let split = self.start + p.at.0;
            let mean = |rounds: Vec<&(Instant, u64, u64)>| {
                let (n, ok) = rounds.iter().fold((0, 0), |(n, ok), r| (n + r.1, ok + r.2));
                ratio(ok, n)
            };
            put(
                "probe_success_before",
                mean(t.rounds.iter().filter(|r| r.0 < split).collect()),
            );
            // Past the idle timeout, when the split has cut every connection across it.
            let cut = split + self.scenario.network.idle_timeout.0;
            put(
                "probe_success_during",
                mean(
                    t.rounds
                        .iter()
                        .filter(|r| r.0 >= cut && r.0 < merge)
                        .collect(),
                ),
            );
            put(
                "probe_success_after",
                mean(t.rounds.iter().filter(|r| r.0 >= merge).collect()),
            );
            let recovered = t
                .rounds
                .iter()
                .find(|r| r.0 >= merge && r.1 > 0 && ratio(r.2, r.1) >= p.recovered_at);
            // Not recovered by the end: report the time left, as a lower bound, and say so.
            match recovered {
                Some(r) => put("recovery_secs", (r.0 - merge).as_secs_f64()),
                None => put("recovered", 0.0),
            }
            if recovered.is_some() {
                put("recovered", 1.0);
            }
        }
        if self
            .scenario
            .adversary
            .as_ref()
            .is_some_and(|a| a.role == AdversaryRole::Eclipse)
        {
            put("target_lookups", t.target_lookups as f64);
            put(
                "honest_fraction",
                t.honest_fraction / t.target_lookups.max(1) as f64,
            );
            put("target_success", ratio(t.target_ok, t.target_lookups));
        }
        put("unfinished_queries", t.unfinished as f64);
        let pubsub = self
            .pubsub
            .as_ref()
            .map(|p| p.results(&self.sim))
            .unwrap_or_default();
        for (k, v) in &pubsub.summary {
            put(k, *v);
        }
        let swarm = self
            .swarm
            .as_ref()
            .map(|w| w.results(&self.sim, self.start))
            .unwrap_or_default();
        for (k, v) in &swarm.summary {
            put(k, *v);
        }
        if self.scenario.pubsub.is_some() {
            // Delivery of the messages published in each sample interval.
            let every = self.scenario.sample_every.0.as_secs_f64();
            for s in &mut self.series {
                let (mut n, mut expected, mut reached) = (0, 0, 0);
                for (at, e, r) in &pubsub.per_message {
                    let t = (*at - self.start).as_secs_f64();
                    if t <= s.t_secs && t > s.t_secs - every {
                        n += 1;
                        expected += e;
                        reached += r;
                    }
                }
                s.pubsub_published = n;
                s.pubsub_delivery = (expected > 0).then(|| reached as f64 / expected as f64);
            }
        }
        let m = self.sim.metrics();
        put(
            "messages_per_node_per_sec",
            self.series.iter().map(|s| s.messages_per_sec).sum::<f64>()
                / self.series.len().max(1) as f64
                / self.sim.len() as f64,
        );
        let mut hops: BTreeMap<u32, u64> = BTreeMap::new();
        for h in &t.hops {
            *hops.entry(*h).or_default() += 1;
        }
        let latency_cdf_ms = if t.latency_ms.is_empty() {
            Vec::new()
        } else {
            (0..=20)
                .map(|p| {
                    let q = f64::from(p) / 20.0;
                    (q * 100.0, percentile(&t.latency_ms, q))
                })
                .collect()
        };
        let mut counters = BTreeMap::from([
            ("messages_sent".to_string(), m.messages_sent),
            ("messages_delivered".to_string(), m.messages_delivered),
            ("messages_lost".to_string(), m.messages_lost),
            ("messages_partitioned".to_string(), m.messages_partitioned),
            ("messages_unroutable".to_string(), m.messages_unroutable),
            (
                "messages_dropped_by_adversary".to_string(),
                m.messages_dropped_by_adversary,
            ),
            ("bytes_delivered".to_string(), m.bytes_delivered),
            ("connections_opened".to_string(), m.connections_opened),
            ("connections_closed".to_string(), m.connections_closed),
            ("connections_peak".to_string(), m.connections_peak),
            ("connections_cut".to_string(), m.connections_cut),
            ("dials_failed".to_string(), m.dials_failed),
            ("dials_refused_nat".to_string(), m.dials_refused_nat),
            ("departures".to_string(), m.departures),
            ("arrivals".to_string(), m.arrivals),
            ("timers_fired".to_string(), m.timers_fired),
            ("codec_errors".to_string(), m.codec_errors),
        ]);
        counters.extend(pubsub.counters);
        counters.extend(swarm.counters);
        Ok(RunReport {
            label: self.label.to_string(),
            nodes: self.size,
            trace_hash: self
                .sim
                .trace_hash()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect(),
            wall_secs,
            peak_rss_bytes: peak_rss(),
            virtual_secs: self.sim.now().as_micros() as f64 / 1e6,
            events: m.events_processed,
            summary,
            series: std::mem::take(&mut self.series),
            hops_histogram: hops.into_iter().collect(),
            latency_cdf_ms,
            pubsub_hops_histogram: pubsub.hops_histogram,
            pubsub_latency_cdf_ms: pubsub.latency_cdf_ms,
            swarm_classes: swarm.classes,
            swarm_leechers: swarm.leechers,
            counters,
        })
    }
}

fn ratio(ok: u64, n: u64) -> f64 {
    if n == 0 { 0.0 } else { ok as f64 / n as f64 }
}

fn percentile<T: Copy>(sorted: &[T], q: f64) -> T {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// Peak resident set size of this process, from `/proc/self/status` (Linux only).
fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Resets the peak RSS so the next run's peak is its own (Linux only; ignored elsewhere).
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

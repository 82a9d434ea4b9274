//! The pub/sub workload: who subscribes, who publishes what and when, the spam, the crash —
//! and the measurement: which honest subscriber got which message, when, over how many hops.
//!
//! Hops are counted by the simulator, not the protocol: the author's hop is 0, and a node's hop
//! for a message is one more than the hop of the node it first got the message from (every
//! node delivers a message before it forwards it, so that hop is known by then).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use bytes::Bytes;
use spore_core::Keypair;
use spore_core::identity::PeerId;
use spore_core::pow::Stamp;
use spore_core::pubsub::{self, MessageId, SignedMessage, Stats, Validation, Validator};
use spore_core::time::Instant;
use spore_core::wire::Message;

use super::adversary;
use super::format::{PubSubSpec, SpamKind};
use crate::{NodeIndex, PubSubObservation, Sim};

/// What every spam message's data starts with. The honest nodes' validator rejects it, so a
/// delivery of data starting with it is a forgery or a spam message that got through.
pub(crate) const SPAM_MARKER: &[u8] = b"SPAM";

/// The honest nodes' validator: rejects data that starts with [`SPAM_MARKER`]. Deterministic:
/// the verdict depends on the data alone.
pub(crate) fn validator() -> Box<dyn Validator> {
    Box::new(|_: &str, _: &PeerId, data: &[u8]| {
        if data.starts_with(SPAM_MARKER) {
            Validation::Reject
        } else {
            Validation::Accept
        }
    })
}

/// Not (yet) delivered.
const NO_HOP: u8 = u8::MAX;
/// Delivered from a node whose own hop is unknown (never expected; counted if it happens).
const UNKNOWN_HOP: u8 = u8::MAX - 1;

/// One published message.
#[derive(Debug)]
struct Tracked {
    at: Instant,
    author: NodeIndex,
    /// Per node: its hop, or [`NO_HOP`].
    hops: Vec<u8>,
    /// Every delivery: the node and its latency in microseconds.
    deliveries: Vec<(NodeIndex, u32)>,
    /// Publish frames carrying this message (its real data) that arrived at any node.
    frames: u64,
}

/// A spammer and what it needs to sign its own messages.
#[derive(Debug)]
pub(crate) struct Spammer {
    pub(crate) node: NodeIndex,
    pub(crate) key: Keypair,
    pub(crate) stamp: Stamp,
    seq: u64,
}

impl Spammer {
    pub(crate) fn new(node: NodeIndex, key: Keypair, stamp: Stamp, seq: u64) -> Self {
        Self {
            node,
            key,
            stamp,
            seq,
        }
    }
}

/// Sums of the pub/sub counters of a set of nodes.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Counters(Stats);

impl Counters {
    pub(crate) fn add(&mut self, s: &Stats) {
        let t = &mut self.0;
        t.published += s.published;
        t.delivered += s.delivered;
        t.received += s.received;
        t.duplicates += s.duplicates;
        t.forwarded += s.forwarded;
        t.invalid += s.invalid;
        t.rejected += s.rejected;
        t.ignored += s.ignored;
        t.rate_limited += s.rate_limited;
        t.graylisted += s.graylisted;
        t.oversized += s.oversized;
        t.ihave_sent += s.ihave_sent;
        t.iwant_sent += s.iwant_sent;
        t.iwant_served += s.iwant_served;
        t.grafts_sent += s.grafts_sent;
        t.prunes_sent += s.prunes_sent;
        t.idontwant_sent += s.idontwant_sent;
        t.idontwant_saved += s.idontwant_saved;
        t.broken_promises += s.broken_promises;
        t.graft_during_backoff += s.graft_during_backoff;
        t.px_dialed += s.px_dialed;
        t.invalid_records += s.invalid_records;
    }

    fn fields(&self) -> [(&'static str, u64); 22] {
        let s = &self.0;
        [
            ("published", s.published),
            ("delivered", s.delivered),
            ("received", s.received),
            ("duplicates", s.duplicates),
            ("forwarded", s.forwarded),
            ("invalid", s.invalid),
            ("rejected", s.rejected),
            ("ignored", s.ignored),
            ("rate_limited", s.rate_limited),
            ("graylisted", s.graylisted),
            ("oversized", s.oversized),
            ("ihave_sent", s.ihave_sent),
            ("iwant_sent", s.iwant_sent),
            ("iwant_served", s.iwant_served),
            ("grafts_sent", s.grafts_sent),
            ("prunes_sent", s.prunes_sent),
            ("idontwant_sent", s.idontwant_sent),
            ("idontwant_saved", s.idontwant_saved),
            ("broken_promises", s.broken_promises),
            ("graft_during_backoff", s.graft_during_backoff),
            ("px_dialed", s.px_dialed),
            ("invalid_records", s.invalid_records),
        ]
    }
}

/// Mesh and topic-peer counts of the online honest subscribers at one moment.
#[derive(Debug, Default, Clone, Copy)]
struct MeshView {
    nodes: usize,
    mesh_sum: usize,
    mesh_min: usize,
    peers_sum: usize,
    peers_min: usize,
    below_d_lo: usize,
}

/// The pub/sub part of a scenario run.
#[derive(Debug)]
pub(crate) struct PubSubRun {
    spec: PubSubSpec,
    /// Per node: subscribed (honest or adversary).
    subscribed: Vec<bool>,
    /// Per node: counted as a receiver (an honest, non-bootstrap subscriber).
    receiver: Vec<bool>,
    /// Honest subscribers, the publishers' pool.
    publishers: Vec<NodeIndex>,
    /// Per node: its offline periods, `(from, until)`; `None` while still offline.
    offline: Vec<Vec<(Instant, Option<Instant>)>>,
    pub(crate) spammers: Vec<Spammer>,
    spam_rounds: u64,
    spam_sent: u64,
    spam_delivered: u64,
    publish_failed: u64,
    published_to: u64,
    messages: Vec<Tracked>,
    by_id: HashMap<MessageId, usize>,
    /// The newest real message seen on the wire: what spammers forge.
    latest: Option<(usize, SignedMessage)>,
    hops_unknown: u64,
    /// Counters of nodes replaced by a restart, summed.
    retired: Counters,
    at_start: Option<MeshView>,
    at_end: Option<MeshView>,
    crashed: usize,
}

/// What the pub/sub measurement adds to a run's report.
#[derive(Debug, Default)]
pub(crate) struct Results {
    pub(crate) summary: Vec<(String, f64)>,
    pub(crate) counters: Vec<(String, u64)>,
    pub(crate) hops_histogram: Vec<(u32, u64)>,
    pub(crate) latency_cdf_ms: Vec<(f64, f64)>,
    /// Per message: publication time, expected receivers, receivers reached.
    pub(crate) per_message: Vec<(Instant, u64, u64)>,
}

impl PubSubRun {
    pub(crate) fn new(spec: PubSubSpec) -> Self {
        Self {
            spec,
            subscribed: Vec::new(),
            receiver: Vec::new(),
            publishers: Vec::new(),
            offline: Vec::new(),
            spammers: Vec::new(),
            spam_rounds: 0,
            spam_sent: 0,
            spam_delivered: 0,
            publish_failed: 0,
            published_to: 0,
            messages: Vec::new(),
            by_id: HashMap::new(),
            latest: None,
            hops_unknown: 0,
            retired: Counters::default(),
            at_start: None,
            at_end: None,
            crashed: 0,
        }
    }

    /// A node was created: installs the validator, and subscribes it if `subscribe`. `receiver`
    /// says whether it counts as an honest receiver.
    pub(crate) fn joined(&mut self, sim: &mut Sim, i: NodeIndex, subscribe: bool, receiver: bool) {
        let n = i.index() + 1;
        if self.subscribed.len() < n {
            self.subscribed.resize(n, false);
            self.receiver.resize(n, false);
            self.offline.resize(n, Vec::new());
        }
        self.subscribed[i.index()] = subscribe;
        self.receiver[i.index()] = subscribe && receiver;
        if subscribe && receiver {
            self.publishers.push(i);
        }
        self.setup(sim, i);
    }

    /// Installs the validator and the subscription of node `i` (again after a restart, which
    /// starts the node afresh).
    fn setup(&self, sim: &mut Sim, i: NodeIndex) {
        let topic = self.spec.topic.clone();
        let subscribe = self.subscribed[i.index()];
        sim.command(i, |n, now| {
            n.set_pubsub_validator(validator());
            // The topic was checked when the scenario was loaded.
            if subscribe {
                let _ = n.subscribe(now, &topic);
            }
        });
    }

    /// Node `i` went offline.
    pub(crate) fn stopped(&mut self, i: NodeIndex, now: Instant) {
        if let Some(periods) = self.offline.get_mut(i.index()) {
            periods.push((now, None));
        }
    }

    /// Node `i` is about to restart: keep its counters, which the restart resets.
    pub(crate) fn restarting(&mut self, sim: &Sim, i: NodeIndex) {
        if self.receiver.get(i.index()) == Some(&true) {
            self.retired.add(&sim.node(i).pubsub().stats());
        }
    }

    /// Node `i` restarted.
    pub(crate) fn restarted(&mut self, sim: &mut Sim, i: NodeIndex) {
        if let Some((_, until @ None)) = self.offline.get_mut(i.index()).and_then(|p| p.last_mut())
        {
            *until = Some(sim.now());
        }
        if i.index() < self.subscribed.len() {
            self.setup(sim, i);
        }
    }

    /// An online honest subscriber, drawn by `pick` (an index into the pool).
    pub(crate) fn publisher(
        &self,
        sim: &Sim,
        mut pick: impl FnMut(usize) -> usize,
    ) -> Option<NodeIndex> {
        if self.publishers.is_empty() {
            return None;
        }
        for _ in 0..64 {
            let i = self.publishers[pick(self.publishers.len())];
            if sim.is_online(i) {
                return Some(i);
            }
        }
        self.publishers.iter().copied().find(|i| sim.is_online(*i))
    }

    /// Message number `n` is published by `author`.
    pub(crate) fn publish(&mut self, sim: &mut Sim, author: NodeIndex, n: usize) {
        let data = message_data(n, self.spec.size);
        let topic = self.spec.topic.clone();
        let now = sim.now();
        match sim.command(author, |node, now| node.publish(now, &topic, data)) {
            Ok(p) => {
                self.published_to += p.peers as u64;
                let mut hops = vec![NO_HOP; sim.len()];
                hops[author.index()] = 0;
                self.by_id.insert(p.id, self.messages.len());
                self.messages.push(Tracked {
                    at: now,
                    author,
                    hops,
                    deliveries: Vec::new(),
                    frames: 0,
                });
            }
            Err(_) => self.publish_failed += 1,
        }
    }

    /// Takes what the simulator observed since the last call.
    pub(crate) fn collect(&mut self, sim: &mut Sim, is_adversary: &[bool]) {
        for o in sim.take_pubsub() {
            match o {
                PubSubObservation::Frame { message, .. } => {
                    if message.data().starts_with(SPAM_MARKER) {
                        continue;
                    }
                    let Some(&m) = self.by_id.get(&message.id()) else {
                        continue;
                    };
                    self.messages[m].frames += 1;
                    if self.latest.as_ref().is_none_or(|(l, _)| *l < m) {
                        self.latest = Some((m, message));
                    }
                }
                PubSubObservation::Delivered {
                    node,
                    at,
                    id,
                    from,
                    data,
                } => {
                    if data.starts_with(SPAM_MARKER) {
                        if !is_adversary.get(node.index()).copied().unwrap_or(false) {
                            self.spam_delivered += 1;
                        }
                        continue;
                    }
                    let Some(&m) = self.by_id.get(&id) else {
                        continue;
                    };
                    let t = &mut self.messages[m];
                    if t.hops[node.index()] != NO_HOP {
                        continue; // again, after a restart emptied its seen-cache
                    }
                    let hop = match sim.index_of(&from).map(|f| t.hops[f.index()]) {
                        Some(h) if h < UNKNOWN_HOP - 1 => h + 1,
                        _ => {
                            self.hops_unknown += 1;
                            UNKNOWN_HOP
                        }
                    };
                    t.hops[node.index()] = hop;
                    let latency = (at - t.at).as_micros().min(u128::from(u32::MAX)) as u32;
                    t.deliveries.push((node, latency));
                }
            }
        }
    }

    /// The honest receivers' counters, summed (those of restarts included).
    fn honest_counters(&self, sim: &Sim) -> Counters {
        let mut c = self.retired;
        for i in sim.indices() {
            if self.receiver.get(i.index()) == Some(&true) {
                c.add(&sim.node(i).pubsub().stats());
            }
        }
        c
    }

    /// Records the meshes as they are now: at the start of publishing, or at the end.
    pub(crate) fn snapshot(&mut self, sim: &Sim, end: bool) {
        let d_lo = sim.config().node.pubsub.d_lo;
        let mut v = MeshView {
            mesh_min: usize::MAX,
            peers_min: usize::MAX,
            ..MeshView::default()
        };
        for i in sim.indices() {
            if self.receiver.get(i.index()) != Some(&true) || !sim.is_online(i) {
                continue;
            }
            let p = sim.node(i).pubsub();
            let mesh = p.mesh(&self.spec.topic).count();
            let peers = p.topic_peers(&self.spec.topic).count();
            v.nodes += 1;
            v.mesh_sum += mesh;
            v.mesh_min = v.mesh_min.min(mesh);
            v.peers_sum += peers;
            v.peers_min = v.peers_min.min(peers);
            v.below_d_lo += usize::from(mesh < d_lo);
        }
        if end {
            self.at_end = Some(v);
        } else {
            self.at_start = Some(v);
        }
    }

    /// Crashes `fraction` of `honest`, shuffled by `draw` (a random number below its argument).
    pub(crate) fn crash(
        &mut self,
        sim: &mut Sim,
        honest: &[NodeIndex],
        fraction: f64,
        mut draw: impl FnMut(usize) -> usize,
    ) {
        let mut online: Vec<NodeIndex> = honest
            .iter()
            .copied()
            .filter(|i| sim.is_online(*i))
            .collect();
        let count = (fraction * online.len() as f64).round() as usize;
        for k in 0..count.min(online.len()) {
            let j = k + draw(online.len() - k);
            online.swap(k, j);
            let i = online[k];
            if sim.stop(i, true) {
                self.stopped(i, sim.now());
                self.crashed += 1;
            }
        }
    }

    /// One round of spam: every online spammer sends one message to each of its topic peers.
    pub(crate) fn spam(&mut self, sim: &mut Sim, kind: SpamKind) {
        self.spam_rounds += 1;
        let forged = match kind {
            SpamKind::Forged => true,
            SpamKind::Invalid => false,
            SpamKind::Both => self.spam_rounds % 2 == 1,
        };
        let topic = &self.spec.topic;
        for s in &mut self.spammers {
            if !sim.is_online(s.node) {
                continue;
            }
            let marker = [SPAM_MARKER, b" spam"].concat();
            let own = || {
                SignedMessage::new(
                    &s.key,
                    s.stamp,
                    topic.clone(),
                    s.seq,
                    Bytes::from(marker.clone()),
                )
            };
            let m = if forged {
                // The newest real message, with changed data: if it arrives first, the
                // signature check must catch it (and must not mark the real one as seen).
                // Before there is one, its own message, changed after signing.
                match &self.latest {
                    Some((_, real)) => adversary::forge(real, SPAM_MARKER),
                    None => adversary::forge(&own(), SPAM_MARKER),
                }
            } else {
                own()
            };
            s.seq += 1;
            let peers: Vec<PeerId> = sim
                .node(s.node)
                .pubsub()
                .topic_peers(topic)
                .copied()
                .collect();
            for p in peers {
                let Some(j) = sim.index_of(&p) else { continue };
                let msg = Message::PubSub(pubsub::Message::Publish(m.clone()));
                if sim.inject(s.node, j, msg) {
                    self.spam_sent += 1;
                }
            }
        }
    }

    /// Whether node `i` was online throughout `[from, until]`.
    fn online_throughout(&self, i: NodeIndex, from: Instant, until: Instant) -> bool {
        self.offline[i.index()]
            .iter()
            .all(|(down, up)| *down > until || up.is_some_and(|u| u < from))
    }

    /// The measurements, at the end of the run.
    pub(crate) fn results(&self, sim: &Sim) -> Results {
        let mut r = Results::default();
        let lifetime = self.spec.lifetime.0;
        let mut latencies: Vec<u32> = Vec::new();
        let mut hops: BTreeMap<u32, u64> = BTreeMap::new();
        let (mut expected_all, mut reached_all) = (0u64, 0u64);
        let (mut complete, mut worst) = (0u64, 1.0f64);
        let (mut last_hop_sum, mut max_hop) = (0u64, 0u8);
        let (mut frames, mut deliveries) = (0u64, 0u64);
        let receivers: Vec<NodeIndex> = sim
            .indices()
            .filter(|i| self.receiver.get(i.index()) == Some(&true))
            .collect();
        let mut orphaned = 0u64;
        for t in &self.messages {
            let until = t.at + lifetime;
            if !self.online_throughout(t.author, t.at, until) {
                // Its author went offline while it spread, maybe before it left at all: not a
                // test of the gossip.
                orphaned += 1;
                continue;
            }
            let expected: Vec<NodeIndex> = receivers
                .iter()
                .copied()
                .filter(|i| *i != t.author && self.online_throughout(*i, t.at, until))
                .collect();
            let mut reached = 0u64;
            let mut last: Option<(u32, u8)> = None;
            for &i in &expected {
                let hop = t.hops[i.index()];
                if hop == NO_HOP {
                    continue;
                }
                reached += 1;
                if hop != UNKNOWN_HOP {
                    *hops.entry(u32::from(hop)).or_default() += 1;
                    max_hop = max_hop.max(hop);
                }
            }
            for &(i, latency) in &t.deliveries {
                if expected.binary_search(&i).is_ok() {
                    latencies.push(latency);
                    let hop = t.hops[i.index()];
                    if hop != UNKNOWN_HOP && last.is_none_or(|(l, _)| latency >= l) {
                        last = Some((latency, hop));
                    }
                }
            }
            last_hop_sum += last.map_or(0, |(_, h)| u64::from(h));
            frames += t.frames;
            deliveries += t.deliveries.len() as u64;
            let n = expected.len() as u64;
            expected_all += n;
            reached_all += reached;
            complete += u64::from(reached == n);
            if n > 0 {
                worst = worst.min(reached as f64 / n as f64);
            }
            r.per_message.push((t.at, n, reached));
        }
        latencies.sort_unstable();
        let ms = |us: u32| f64::from(us) / 1000.0;
        let mut put = |k: &str, v: f64| r.summary.push((format!("pubsub_{k}"), v));
        let published = self.messages.len() as u64 - orphaned;
        put("messages", self.messages.len() as f64);
        put("messages_orphaned", orphaned as f64);
        put("publish_failed", self.publish_failed as f64);
        put(
            "delivery",
            if expected_all == 0 {
                0.0
            } else {
                reached_all as f64 / expected_all as f64
            },
        );
        put("delivery_min", if published == 0 { 0.0 } else { worst });
        put("complete", ratio(complete, published));
        put("expected_receivers_mean", ratio(expected_all, published));
        if !latencies.is_empty() {
            put("latency_p50_ms", ms(percentile(&latencies, 0.5)));
            put("latency_p99_ms", ms(percentile(&latencies, 0.99)));
            put("latency_max_ms", ms(percentile(&latencies, 1.0)));
            let total: u64 = hops.iter().map(|(h, n)| u64::from(*h) * n).sum();
            let count: u64 = hops.values().sum();
            put("hops_mean", ratio(total, count));
            put("max_hop", f64::from(max_hop));
            put("last_delivery_hop_mean", ratio(last_hop_sum, published));
        }
        // Classic relative message redundancy: frames carrying a message / (nodes reached - 1)
        // - 1, where "nodes reached" counts the author, so the divisor is the deliveries.
        if deliveries > 0 {
            put("rmr", frames as f64 / deliveries as f64 - 1.0);
        }
        put(
            "published_to_mean",
            ratio(self.published_to, self.messages.len() as u64),
        );
        let honest = self.honest_counters(sim);
        let c = honest.0;
        put("rate_limited", c.rate_limited as f64);
        put("invalid", c.invalid as f64);
        put("rejected", c.rejected as f64);
        put("graylisted", c.graylisted as f64);
        if !self.spammers.is_empty() {
            put("spam_sent", self.spam_sent as f64);
        }
        put("spam_delivered", self.spam_delivered as f64);
        if self.spec.crash.is_some() {
            put("crashed", self.crashed as f64);
        }
        let m = sim.metrics();
        let nodes = sim.len().max(1) as f64;
        put("bytes_per_node", m.pubsub_bytes_sent as f64 / nodes);
        put(
            "publish_bytes_per_node",
            m.pubsub_publish_bytes_sent as f64 / nodes,
        );
        for (view, suffix) in [(&self.at_start, ""), (&self.at_end, "_end")] {
            if let Some(v) = view.filter(|v| v.nodes > 0) {
                let n = v.nodes as f64;
                put(&format!("mesh_mean{suffix}"), v.mesh_sum as f64 / n);
                put(&format!("mesh_min{suffix}"), v.mesh_min as f64);
                put(&format!("topic_peers_mean{suffix}"), v.peers_sum as f64 / n);
                put(&format!("topic_peers_min{suffix}"), v.peers_min as f64);
                put(&format!("mesh_below_d_lo{suffix}"), v.below_d_lo as f64);
            }
        }
        r.counters = honest
            .fields()
            .iter()
            .map(|(k, v)| (format!("pubsub_{k}"), *v))
            .chain([
                ("pubsub_hops_unknown".to_string(), self.hops_unknown),
                ("pubsub_bytes_sent".to_string(), m.pubsub_bytes_sent),
                (
                    "pubsub_publish_frames_sent".to_string(),
                    m.pubsub_publish_frames_sent,
                ),
            ])
            .collect();
        r.hops_histogram = hops.into_iter().collect();
        if !latencies.is_empty() {
            r.latency_cdf_ms = (0..=100)
                .map(|p| {
                    let q = f64::from(p) / 100.0;
                    (q * 100.0, ms(percentile(&latencies, q)))
                })
                .collect();
        }
        r
    }
}

/// The data of message `n`: its number, padded to `size` bytes. Never starts with the spam
/// marker.
fn message_data(n: usize, size: usize) -> Bytes {
    let mut data = format!("message {n} ").into_bytes();
    data.resize(size.max(data.len()), b'.');
    Bytes::from(data)
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 { 0.0 } else { a as f64 / b as f64 }
}

fn percentile<T: Copy>(sorted: &[T], q: f64) -> T {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// How long the spam goes on: while messages are published.
pub(crate) fn publishing(spec: &PubSubSpec) -> Duration {
    Duration::from_secs_f64(spec.messages as f64 / spec.rate)
}

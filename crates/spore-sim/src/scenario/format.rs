//! The scenario file format and its validation.

use std::net::Ipv4Addr;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer};
use spore_core::kad::Mode;
use spore_core::node;
use spore_core::pow::Difficulty;

use crate::config::{Bandwidth, Latency, NetworkConfig, SimConfig};

/// Why a scenario could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ScenarioError {
    /// The file could not be read.
    #[error("cannot read scenario {path}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML for a scenario.
    #[error("{origin}: {message}")]
    Parse {
        /// The file (or other origin) of the text.
        origin: String,
        /// What is wrong and where, as the TOML parser reports it.
        message: String,
    },
    /// A value is out of range or inconsistent with another.
    #[error("{origin}: {message}")]
    Invalid {
        /// The file (or other origin) of the text.
        origin: String,
        /// What is wrong.
        message: String,
    },
}

/// A duration written the human way: `"90s"`, `"10m"`, `"2h 30m"`, `"250ms"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text)
            .map(Dur)
            .map_err(|e| serde::de::Error::custom(format!("bad duration {text:?}: {e}")))
    }
}

/// A data rate: `"10Mbit"`, `"512kbit"`, `"2MB"`, `"125000B"` (per second; `B` is bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate(pub u64);

impl FromStr for Rate {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let t = text.trim().trim_end_matches("/s");
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (number, unit) = t.split_at(split);
        let number: f64 = number
            .parse()
            .map_err(|_| format!("bad rate {text:?}: expected a number and a unit"))?;
        let bytes_per_unit = match unit.trim() {
            "B" => 1.0,
            "kB" | "KB" => 1e3,
            "MB" => 1e6,
            "GB" => 1e9,
            "bit" => 1.0 / 8.0,
            "kbit" => 1e3 / 8.0,
            "Mbit" => 1e6 / 8.0,
            "Gbit" => 1e9 / 8.0,
            other => {
                return Err(format!(
                    "bad rate {text:?}: unknown unit {other:?} (use B, kB, MB, GB, bit, kbit, Mbit or Gbit)"
                ));
            }
        };
        let rate = number * bytes_per_unit;
        if !(1.0..1e15).contains(&rate) {
            return Err(format!("rate {text:?} is out of range"));
        }
        Ok(Rate(rate as u64))
    }
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A number of bytes: `16777216`, `"16MiB"`, `"64 MB"`, `"512KiB"`, `"1GiB"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl FromStr for ByteSize {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let t = text.trim();
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (number, unit) = t.split_at(split);
        let number: f64 = number
            .parse()
            .map_err(|_| format!("bad size {text:?}: expected a number and a unit"))?;
        let unit_bytes = match unit.trim() {
            "" | "B" => 1.0,
            "kB" | "KB" => 1e3,
            "MB" => 1e6,
            "GB" => 1e9,
            "KiB" => 1024.0,
            "MiB" => 1024.0 * 1024.0,
            "GiB" => 1024.0 * 1024.0 * 1024.0,
            other => {
                return Err(format!(
                    "bad size {text:?}: unknown unit {other:?} (use B, kB, MB, GB, KiB, MiB or GiB)"
                ));
            }
        };
        let bytes = number * unit_bytes;
        if !(0.0..1e15).contains(&bytes) || bytes.fract() != 0.0 {
            return Err(format!(
                "size {text:?} is not a whole number of bytes in range"
            ));
        }
        Ok(ByteSize(bytes as u64))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            Number(u64),
            Text(String),
        }
        match Either::deserialize(d)? {
            Either::Number(n) => Ok(ByteSize(n)),
            Either::Text(t) => t.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// A scenario, as written in a file. See the [module docs](super).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Short name; results go to a directory of that name.
    pub name: String,
    /// What the scenario shows.
    #[serde(default)]
    pub description: String,
    /// The seed of every random choice.
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Network size, bootstrap nodes and adversaries included.
    pub nodes: usize,
    /// Run once per size instead of once at `nodes` (the `scale` scenario).
    #[serde(default)]
    pub sizes: Vec<usize>,
    /// Length of the measured phase, after joining and settling.
    pub duration: Dur,
    /// Interval of the time series in the report.
    #[serde(default = "default_sample")]
    pub sample_every: Dur,
    /// The network model.
    #[serde(default)]
    pub network: NetworkSpec,
    /// Node settings (spore's defaults where absent).
    #[serde(default)]
    pub node: NodeSettings,
    /// How nodes join.
    #[serde(default)]
    pub join: JoinSpec,
    /// Random-key lookups.
    pub lookups: Option<LookupSpec>,
    /// Values put and read back.
    pub values: Option<ValueSpec>,
    /// Churn.
    pub churn: Option<ChurnSpec>,
    /// A partition and merge.
    pub partition: Option<PartitionSpec>,
    /// Adversaries.
    pub adversary: Option<AdversarySpec>,
    /// Topic publish/subscribe.
    pub pubsub: Option<PubSubSpec>,
    /// A swarm download of one blob.
    pub swarm: Option<SwarmSpec>,
    /// Super-peers: who may serve, how leaves choose, and super-peers removed at once.
    pub superpeers: Option<SuperPeerSpec>,
    /// Further runs with other node settings.
    #[serde(default)]
    pub variants: Vec<Variant>,
    /// Bounds the results should meet.
    #[serde(default)]
    pub expect: Vec<Expect>,
}

fn default_seed() -> u64 {
    1
}

fn default_sample() -> Dur {
    Dur(Duration::from_secs(60))
}

/// The network model (see [`NetworkConfig`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkSpec {
    /// One-way latency.
    #[serde(default)]
    pub latency: LatencySpec,
    /// Largest extra delay per message.
    #[serde(default)]
    pub jitter: Dur,
    /// Probability that a message is lost.
    #[serde(default)]
    pub loss: f64,
    /// Upload rate of every node (unlimited if absent).
    pub upload: Option<Rate>,
    /// Download rate of every node (unlimited if absent).
    pub download: Option<Rate>,
    /// How nodes are attached; the bootstrap nodes are always public.
    #[serde(default)]
    pub nat: NatMix,
    /// When a cut connection is noticed (QUIC's idle timeout).
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: Dur,
}

fn default_idle_timeout() -> Dur {
    Dur(Duration::from_secs(30))
}

impl Default for NetworkSpec {
    fn default() -> Self {
        Self {
            latency: LatencySpec::default(),
            jitter: Dur::default(),
            loss: 0.0,
            upload: None,
            download: None,
            nat: NatMix::default(),
            idle_timeout: default_idle_timeout(),
        }
    }
}

/// One-way latency: `{ fixed = "40ms" }`, `{ min = "10ms", max = "150ms" }`, or regions:
/// `{ regions = [40, 35, 25], one_way_ms = [[5, 45, 90], [45, 5, 80], [90, 80, 10]] }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LatencySpec {
    /// Every connection the same.
    pub fixed: Option<Dur>,
    /// Uniform lower bound.
    pub min: Option<Dur>,
    /// Uniform upper bound.
    pub max: Option<Dur>,
    /// Relative share of nodes per region.
    pub regions: Option<Vec<u32>>,
    /// One-way latency between regions, in milliseconds.
    pub one_way_ms: Option<Vec<Vec<u64>>>,
}

impl Default for LatencySpec {
    fn default() -> Self {
        Self {
            fixed: None,
            min: Some(Dur(Duration::from_millis(10))),
            max: Some(Dur(Duration::from_millis(150))),
            regions: None,
            one_way_ms: None,
        }
    }
}

/// Shares of nodes by attachment; they need not sum to one (they are weights).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatMix {
    /// Public addresses.
    #[serde(default)]
    pub public: f64,
    /// Behind a cone NAT.
    #[serde(default)]
    pub cone: f64,
    /// Behind a symmetric NAT.
    #[serde(default)]
    pub symmetric: f64,
    /// No UDP at all.
    #[serde(default)]
    pub udp_blocked: f64,
}

impl Default for NatMix {
    fn default() -> Self {
        Self {
            public: 1.0,
            cone: 0.0,
            symmetric: 0.0,
            udp_blocked: 0.0,
        }
    }
}

/// Node settings; anything absent keeps spore's default (the proof-of-work difficulty defaults
/// to the simulator's 8 bits).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSettings {
    /// Proof-of-work difficulty of ids.
    pub difficulty: Option<u8>,
    /// Periodic pings between connected peers.
    pub ping: Option<bool>,
    /// Peer exchange.
    pub pex: Option<bool>,
    /// The gossip overlay (HyParView membership and keyword search).
    pub gossip: Option<bool>,
    /// Kademlia bucket size and replication factor.
    pub k: Option<usize>,
    /// Lookup parallelism.
    pub alpha: Option<usize>,
    /// Disjoint lookup paths (1 turns the defence off).
    pub disjoint_paths: Option<usize>,
    /// Routing-table IP-prefix limits.
    pub ip_limits: Option<bool>,
    /// Replacement candidates kept per routing-table bucket.
    pub replacement_cache: Option<usize>,
    /// Connection count above which idle connections are pruned.
    pub target_peers: Option<usize>,
    /// Idle time before a connection may be pruned.
    pub idle_after: Option<Dur>,
    /// Bucket refresh interval.
    pub refresh_interval: Option<Dur>,
    /// Value republish interval.
    pub republish_interval: Option<Dur>,
    /// Lifetime of stored records.
    pub record_ttl: Option<Dur>,
    /// Per-request timeout of lookups.
    pub request_timeout: Option<Dur>,
    /// Pub/sub: target mesh degree `d`.
    pub pubsub_d: Option<usize>,
    /// Pub/sub: fewest mesh members before grafting more (`d_lo`).
    pub pubsub_d_lo: Option<usize>,
    /// Pub/sub: most mesh members before pruning (`d_hi`).
    pub pubsub_d_hi: Option<usize>,
    /// Pub/sub: peers sent IHAVE gossip per heartbeat (`d_lazy`).
    pub pubsub_d_lazy: Option<usize>,
    /// Pub/sub: whether authors send to every topic peer rather than their mesh.
    pub pubsub_flood_publish: Option<bool>,
    /// Pub/sub: mesh maintenance and gossip period.
    pub pubsub_heartbeat: Option<Dur>,
    /// Pub/sub: publish frames accepted per second from one peer.
    pub pubsub_rate_limit: Option<u32>,
    /// Pub/sub: peer exchange in PRUNE.
    pub pubsub_peer_exchange: Option<bool>,
    /// Swarm: most peers per swarm.
    pub swarm_max_peers: Option<usize>,
    /// Swarm: regular (tit-for-tat) unchoke slots.
    pub swarm_regular_slots: Option<usize>,
    /// Swarm: optimistic unchoke slots (0 or 1).
    pub swarm_optimistic_slots: Option<usize>,
    /// Swarm: whether a completed download keeps serving (seeding).
    pub swarm_seed: Option<bool>,
    /// Swarm: what the choker does with peers in debt beyond the allowance (`off`,
    /// `deprioritise`, `refuse`).
    pub swarm_credit: Option<spore_core::swarm::CreditMode>,
    /// Swarm: debt a peer may run up before the credit policy applies.
    pub swarm_credit_allowance: Option<ByteSize>,
    /// Reputation: whether nodes keep a reputation table (and distrust peers caught lying).
    pub reputation: Option<bool>,
}

impl NodeSettings {
    /// `self` with every field `other` sets replaced.
    pub(crate) fn overlay(&self, other: &NodeSettings) -> NodeSettings {
        macro_rules! pick {
            ($($f:ident),*) => { NodeSettings { $($f: other.$f.or(self.$f)),* } };
        }
        pick!(
            difficulty,
            ping,
            pex,
            gossip,
            k,
            alpha,
            disjoint_paths,
            ip_limits,
            replacement_cache,
            target_peers,
            idle_after,
            refresh_interval,
            republish_interval,
            record_ttl,
            request_timeout,
            pubsub_d,
            pubsub_d_lo,
            pubsub_d_hi,
            pubsub_d_lazy,
            pubsub_flood_publish,
            pubsub_heartbeat,
            pubsub_rate_limit,
            pubsub_peer_exchange,
            swarm_max_peers,
            swarm_regular_slots,
            swarm_optimistic_slots,
            swarm_seed,
            swarm_credit,
            swarm_credit_allowance,
            reputation
        )
    }

    /// The node configuration these settings describe.
    pub(crate) fn node_config(&self) -> node::Config {
        let mut c = SimConfig::default().node;
        if let Some(d) = self.difficulty {
            c.difficulty = Difficulty(d);
        }
        if self.ping == Some(false) {
            c.ping.interval = None;
        }
        if let Some(pex) = self.pex {
            c.pex.enabled = pex;
        }
        if let Some(on) = self.gossip {
            c.gossip.enabled = on;
        }
        if let Some(k) = self.k {
            c.kad.k = k;
            c.kad.table.k = k;
        }
        if let Some(a) = self.alpha {
            c.kad.alpha = a;
        }
        if let Some(d) = self.disjoint_paths {
            c.kad.disjoint_paths = d;
        }
        if let Some(on) = self.ip_limits {
            c.kad.table.ip_limits = on;
        }
        if let Some(n) = self.replacement_cache {
            c.kad.table.replacement_cache = n;
        }
        if let Some(t) = self.target_peers {
            c.target_peers = t;
        }
        if let Some(Dur(d)) = self.idle_after {
            c.idle_after = d;
        }
        if let Some(Dur(d)) = self.refresh_interval {
            c.kad.refresh_interval = d;
        }
        if let Some(Dur(d)) = self.republish_interval {
            c.kad.republish_interval = d;
        }
        if let Some(Dur(d)) = self.record_ttl {
            c.kad.record_ttl = d;
        }
        if let Some(Dur(d)) = self.request_timeout {
            c.kad.request_timeout = d;
        }
        let p = &mut c.pubsub;
        if let Some(d) = self.pubsub_d {
            p.d = d;
        }
        if let Some(d) = self.pubsub_d_lo {
            p.d_lo = d;
        }
        if let Some(d) = self.pubsub_d_hi {
            p.d_hi = d;
        }
        if let Some(d) = self.pubsub_d_lazy {
            p.d_lazy = d;
        }
        if let Some(on) = self.pubsub_flood_publish {
            p.flood_publish = on;
        }
        if let Some(Dur(d)) = self.pubsub_heartbeat {
            p.heartbeat = d;
        }
        if let Some(n) = self.pubsub_rate_limit {
            p.max_messages_per_sec = n;
        }
        if let Some(on) = self.pubsub_peer_exchange {
            p.peer_exchange = on;
        }
        let w = &mut c.swarm;
        if let Some(n) = self.swarm_max_peers {
            w.max_peers = n;
        }
        if let Some(n) = self.swarm_regular_slots {
            w.regular_slots = n;
        }
        if let Some(n) = self.swarm_optimistic_slots {
            w.optimistic_slots = n;
        }
        if let Some(on) = self.swarm_seed {
            w.seed_after_complete = on;
        }
        if let Some(mode) = self.swarm_credit {
            w.credit.mode = mode;
        }
        if let Some(ByteSize(bytes)) = self.swarm_credit_allowance {
            w.credit.allowance = bytes;
        }
        if self.reputation == Some(false) {
            c.reputation.max_peers = 0;
        }
        c.kad.mode = Mode::Server;
        c
    }

    /// Checks what the node configuration cannot hold.
    fn check(&self) -> Result<(), String> {
        let p = self.node_config().pubsub;
        if !(1 <= p.d_lo && p.d_lo <= p.d && p.d <= p.d_hi) {
            return Err(format!(
                "pub/sub mesh degrees need 1 <= pubsub_d_lo <= pubsub_d <= pubsub_d_hi, not {} <= {} <= {}",
                p.d_lo, p.d, p.d_hi
            ));
        }
        if p.heartbeat < Duration::from_millis(10) {
            return Err("pubsub_heartbeat must be at least 10ms".into());
        }
        if p.max_messages_per_sec == 0 {
            return Err("pubsub_rate_limit must be positive".into());
        }
        let w = self.node_config().swarm;
        if w.max_peers == 0 {
            return Err("swarm_max_peers must be at least 1".into());
        }
        if w.optimistic_slots > 1 {
            return Err("swarm_optimistic_slots must be 0 or 1".into());
        }
        if w.regular_slots + w.optimistic_slots == 0 {
            return Err(
                "swarm_regular_slots and swarm_optimistic_slots leave no unchoke slot".into(),
            );
        }
        Ok(())
    }
}

/// How the network is built.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinSpec {
    /// Bootstrap nodes: public, never churned, connected to each other first. Every other node
    /// keeps them as bootstrap peers.
    #[serde(default = "default_bootstrap")]
    pub bootstrap: usize,
    /// Nodes joining per second of virtual time.
    #[serde(default = "default_join_rate")]
    pub rate: f64,
    /// Time between the last join and the measured phase.
    #[serde(default = "default_settle")]
    pub settle: Dur,
}

fn default_bootstrap() -> usize {
    3
}

fn default_join_rate() -> f64 {
    50.0
}

fn default_settle() -> Dur {
    Dur(Duration::from_secs(120))
}

impl Default for JoinSpec {
    fn default() -> Self {
        Self {
            bootstrap: default_bootstrap(),
            rate: default_join_rate(),
            settle: default_settle(),
        }
    }
}

/// Random-key lookups.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LookupSpec {
    /// How many.
    pub count: usize,
    /// Spread evenly over this much time from the start of the measured phase.
    pub over: Dur,
}

/// Values put at the start of the measured phase and read back periodically.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValueSpec {
    /// Values put, each by a different random node.
    pub count: usize,
    /// Interval between rounds of reads.
    pub get_every: Dur,
    /// Reads per round, each of a random value by a random online node.
    pub gets: usize,
}

/// Churn: sessions and downtimes drawn from exponential distributions.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChurnSpec {
    /// Median session length.
    pub session_median: Dur,
    /// Median downtime.
    pub downtime_median: Dur,
    /// Share of departures that are crashes (noticed by peers only at the idle timeout) rather
    /// than clean shutdowns.
    #[serde(default = "default_crash_fraction")]
    pub crash_fraction: f64,
}

fn default_crash_fraction() -> f64 {
    0.5
}

/// Super-peer election and choice, measured: the share of leaves (honest nodes behind NATs)
/// that hold `want` super-peers from at least two network groups (*coverage*), sampled every
/// `coverage_every`, and how it recovers when super-peers are removed at once.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SuperPeerSpec {
    /// Share of public nodes whose operators let them serve; the others never do. Default 1.
    #[serde(default = "default_one")]
    pub serve_share: f64,
    /// How long a node must run before it may serve (spore's default: 30 min).
    pub min_uptime: Option<Dur>,
    /// Super-peers each leaf holds (default 3).
    pub want: Option<usize>,
    /// Most leaves per super-peer (default 64).
    pub max_leaves: Option<usize>,
    /// How often super-peers and leaves check (default 30 s).
    pub interval: Option<Dur>,
    /// How often coverage is measured. Default 1 s.
    #[serde(default = "default_coverage_every")]
    pub coverage_every: Dur,
    /// Super-peers removed at once: `share` of those serving crash at `at`.
    #[serde(default)]
    pub remove: Vec<RemovalSpec>,
}

/// A share of the serving super-peers crashing at once.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemovalSpec {
    /// When, from the start of the measured phase.
    pub at: Dur,
    /// Share of the super-peers serving then (1 removes all).
    pub share: f64,
}

fn default_one() -> f64 {
    1.0
}

fn default_coverage_every() -> Dur {
    Dur(Duration::from_secs(1))
}

/// A split into two groups, and the merge.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartitionSpec {
    /// When the split happens, from the start of the measured phase.
    pub at: Dur,
    /// How long it lasts.
    pub duration: Dur,
    /// Share of nodes in the second group.
    #[serde(default = "default_split")]
    pub split: f64,
    /// Interval between rounds of lookups across the split.
    #[serde(default = "default_probe_every")]
    pub probe_every: Dur,
    /// Lookups per round: from a node in one group for a node in the other.
    #[serde(default = "default_probes")]
    pub probes: usize,
    /// A round with at least this success rate counts as recovered.
    #[serde(default = "default_recovered")]
    pub recovered_at: f64,
}

fn default_split() -> f64 {
    0.5
}

fn default_probe_every() -> Dur {
    Dur(Duration::from_secs(10))
}

fn default_probes() -> usize {
    20
}

fn default_recovered() -> f64 {
    0.99
}

/// What the adversarial nodes do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AdversaryRole {
    /// Sybils with ids ground close to a target key, all in one /16, answer every lookup with
    /// each other and hide values: an eclipse attempt on the target.
    Eclipse,
    /// Answer every value read with a forged record (a changed value under the publisher's
    /// signature).
    Poisoner,
    /// Drop a share (`drop_rate`) of everything they send, handshakes aside.
    Dropper,
    /// Use the network but answer no request.
    FreeRider,
    /// Pub/sub: subscribe and stay in meshes, but forward nothing — no message, no IHAVE, no
    /// answer to IWANT.
    GossipDropper,
    /// Pub/sub: forward normally, and also send `spam_rate` messages a second to every topic
    /// peer: forged (a real message with its data changed, so its signature breaks) and/or
    /// validly signed ones the honest nodes' validator rejects (`spam`).
    GossipSpammer,
}

impl AdversaryRole {
    /// Whether the role attacks pub/sub (and needs a `[pubsub]` section).
    pub fn is_pubsub(self) -> bool {
        matches!(
            self,
            AdversaryRole::GossipDropper | AdversaryRole::GossipSpammer
        )
    }
}

/// What a gossip spammer sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SpamKind {
    /// Messages whose signature does not match their data.
    Forged,
    /// Validly signed messages the application's validator rejects.
    Invalid,
    /// Both, alternately.
    #[default]
    Both,
}

/// Adversarial nodes, added after the honest ones.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdversarySpec {
    /// What they do.
    pub role: AdversaryRole,
    /// How many (part of `nodes`).
    #[serde(default)]
    pub count: usize,
    /// Instead of `count`: this share of the network (rounded), at whatever size it runs.
    pub fraction: Option<f64>,
    /// Eclipse: the /16 all Sybils' addresses come from.
    #[serde(default = "default_subnet")]
    pub subnet: Ipv4Addr,
    /// Eclipse: leading bits of the target key every Sybil id shares (grinding costs 2^bits
    /// key generations per Sybil).
    #[serde(default = "default_prefix_bits")]
    pub prefix_bits: u32,
    /// Eclipse: lookups of the target key from random honest nodes, spread over the measured
    /// phase.
    #[serde(default = "default_target_lookups")]
    pub target_lookups: usize,
    /// Dropper: share of messages dropped.
    #[serde(default = "default_drop_rate")]
    pub drop_rate: f64,
    /// Poisoner: share of the values it hands out that it forges; below 1 it is camouflaged,
    /// honest the rest of the time.
    #[serde(default = "default_drop_rate")]
    pub poison_rate: f64,
    /// Poisoner: the poisoners collude, naming each other as the closest nodes in every answer
    /// so that lookups go from one to the next.
    #[serde(default)]
    pub collude: bool,
    /// Gossip spammer: what it sends.
    #[serde(default)]
    pub spam: SpamKind,
    /// Gossip spammer: messages a second each spammer sends (each to all its topic peers),
    /// while messages are being published.
    #[serde(default = "default_spam_rate")]
    pub spam_rate: f64,
}

impl AdversarySpec {
    /// How many adversaries a network of `size` nodes has.
    pub fn count_for(&self, size: usize) -> usize {
        match self.fraction {
            Some(f) => (f * size as f64).round() as usize,
            None => self.count,
        }
    }
}

fn default_spam_rate() -> f64 {
    1.0
}

/// Topic publish/subscribe: honest nodes subscribe to one topic when they join, and random
/// subscribers publish `messages` messages at `rate` from `start` into the measured phase.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PubSubSpec {
    /// The topic.
    #[serde(default = "default_topic")]
    pub topic: String,
    /// Share of honest nodes (bootstrap nodes aside) that subscribe; adversaries with a pub/sub
    /// role always do.
    #[serde(default = "default_subscribers")]
    pub subscribers: f64,
    /// Messages published, each by a random online honest subscriber.
    pub messages: usize,
    /// Messages per second, over the whole network.
    pub rate: f64,
    /// Bytes of data per message.
    #[serde(default = "default_message_size")]
    pub size: usize,
    /// When publishing starts, from the start of the measured phase.
    #[serde(default)]
    pub start: Dur,
    /// How long after its publication a message is expected at every honest subscriber: a
    /// subscriber counts as an expected receiver only if it is online for all of it.
    #[serde(default = "default_lifetime")]
    pub lifetime: Dur,
    /// Random online nodes each joining node dials, besides its bootstrap peers (0: none).
    #[serde(default)]
    pub dial_random: usize,
    /// A share of the honest nodes crashing at once.
    pub crash: Option<CrashSpec>,
}

/// Honest nodes (bootstrap nodes aside) that crash at one moment and do not come back.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CrashSpec {
    /// Share of them, chosen at random.
    pub fraction: f64,
    /// When, from the start of publishing.
    pub at: Dur,
}

fn default_topic() -> String {
    "sim".into()
}

fn default_subscribers() -> f64 {
    1.0
}

fn default_message_size() -> usize {
    256
}

fn default_lifetime() -> Dur {
    Dur(Duration::from_secs(30))
}

fn default_subnet() -> Ipv4Addr {
    Ipv4Addr::new(66, 77, 0, 0)
}

fn default_prefix_bits() -> u32 {
    8
}

fn default_target_lookups() -> usize {
    200
}

fn default_drop_rate() -> f64 {
    1.0
}

/// A swarm: `seeders` nodes serve one blob of `size` random bytes and `leechers` fetch it,
/// starting from `start` into the measured phase, spread evenly over `spread` (all at once if
/// zero). A share `free_riders` of the leechers download but never upload. Leechers get their
/// bandwidth from `classes` (the free riders spread over them in proportion), the seeders
/// theirs from `seeder_upload` and `seeder_download`. The runner plays the tracker: a leecher
/// starts with `tracker_peers` random members of the swarm (seeders included) and is given as
/// many again every `announce_every` until it completes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SwarmSpec {
    /// Bytes of the blob.
    pub size: ByteSize,
    /// Nodes that hold the blob from the start (public, created first).
    #[serde(default = "default_seeders")]
    pub seeders: usize,
    /// Nodes that fetch it; by default every honest node but the bootstrap nodes and the
    /// seeders.
    pub leechers: Option<usize>,
    /// When the first leecher starts, from the start of the measured phase.
    #[serde(default)]
    pub start: Dur,
    /// Leechers start evenly spread over this time (all at once if zero).
    #[serde(default)]
    pub spread: Dur,
    /// Share of the leechers that never upload.
    #[serde(default)]
    pub free_riders: f64,
    /// Bandwidth classes of the leechers (by default, one class with the network's bandwidth).
    #[serde(default)]
    pub classes: Vec<BandwidthClass>,
    /// The seeders' upload rate (the network's if absent).
    pub seeder_upload: Option<Rate>,
    /// The seeders' download rate (the network's if absent).
    pub seeder_download: Option<Rate>,
    /// Each node's swarm upload limit, as a share of its uplink: the client's pacing, which
    /// leaves room for its other traffic.
    #[serde(default = "default_upload_limit")]
    pub upload_limit: f64,
    /// Swarm members the tracker hands a leecher at each announce.
    #[serde(default = "default_tracker_peers")]
    pub tracker_peers: usize,
    /// How often a leecher that has not completed announces again.
    #[serde(default = "default_announce_every")]
    pub announce_every: Dur,
}

/// Leechers with one bandwidth.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BandwidthClass {
    /// Its name in the metrics (letters, digits, `-` and `_`).
    pub name: String,
    /// Relative share of the leechers in it.
    pub share: f64,
    /// Their upload rate.
    pub upload: Rate,
    /// Their download rate (the network's if absent).
    pub download: Option<Rate>,
}

fn default_seeders() -> usize {
    1
}

fn default_upload_limit() -> f64 {
    0.9
}

fn default_tracker_peers() -> usize {
    50
}

fn default_announce_every() -> Dur {
    Dur(Duration::from_secs(30))
}

impl SwarmSpec {
    /// Seeders and leechers among `honest` honest nodes (bootstrap nodes aside).
    pub fn members(&self, honest: usize) -> (usize, usize) {
        let leechers = self
            .leechers
            .unwrap_or_else(|| honest.saturating_sub(self.seeders));
        (self.seeders, leechers)
    }

    fn check(&self, duration: Duration) -> Result<(), String> {
        if !(1..=1 << 30).contains(&self.size.0) {
            return Err("swarm.size must be 1 byte to 1 GiB".into());
        }
        if self.seeders == 0 {
            return Err("swarm.seeders must be at least 1".into());
        }
        if self.leechers == Some(0) {
            return Err("swarm.leechers must be at least 1".into());
        }
        if !(0.0..1.0).contains(&self.free_riders) {
            return Err("swarm.free_riders must be in [0, 1)".into());
        }
        if self.start.0 + self.spread.0 >= duration {
            return Err(
                "swarm.start + swarm.spread must fall within the measured phase (duration)".into(),
            );
        }
        if !(self.upload_limit > 0.0 && self.upload_limit <= 1.0) {
            return Err("swarm.upload_limit must be in (0, 1]".into());
        }
        if self.tracker_peers == 0 {
            return Err("swarm.tracker_peers must be at least 1".into());
        }
        if self.announce_every.0 < Duration::from_secs(1) {
            return Err("swarm.announce_every must be at least 1s".into());
        }
        for (i, c) in self.classes.iter().enumerate() {
            if c.name.is_empty()
                || !c
                    .name
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_')
            {
                return Err(format!(
                    "swarm.classes: name {:?} must be non-empty letters, digits, '-' or '_'",
                    c.name
                ));
            }
            if self.classes[..i].iter().any(|o| o.name == c.name) {
                return Err(format!("swarm.classes: {:?} is named twice", c.name));
            }
            if !(c.share > 0.0 && c.share.is_finite()) {
                return Err(format!(
                    "swarm.classes: the share of {:?} must be positive",
                    c.name
                ));
            }
        }
        Ok(())
    }
}

/// Another run of the scenario with some node settings changed, or other adversaries, or a
/// pub/sub crash.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Variant {
    /// Its label in the report.
    pub name: String,
    /// Settings that differ.
    #[serde(default)]
    pub node: NodeSettings,
    /// Adversaries for this run, in place of the scenario's `[adversary]`.
    pub adversary: Option<AdversarySpec>,
    /// A crash for this run, in place of the scenario's `[pubsub]` `crash`.
    pub crash: Option<CrashSpec>,
    /// The share of free riders for this run, in place of the scenario's `[swarm]`
    /// `free_riders`.
    pub free_riders: Option<f64>,
}

/// A bound on a result: `metric` of the run `variant` (the first run if absent) is at least
/// `min` and at most `max`.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// A key of [`RunReport::summary`](super::RunReport::summary).
    pub metric: String,
    /// The run's label.
    pub variant: Option<String>,
    /// Lower bound.
    pub min: Option<f64>,
    /// Upper bound.
    pub max: Option<f64>,
}

impl PubSubSpec {
    fn check(&self, duration: Duration) -> Result<(), String> {
        if self.topic.is_empty() || self.topic.len() > spore_core::pubsub::MAX_TOPIC_LEN {
            return Err(format!(
                "pubsub.topic must be 1 to {} bytes",
                spore_core::pubsub::MAX_TOPIC_LEN
            ));
        }
        if !(self.subscribers > 0.0 && self.subscribers <= 1.0) {
            return Err("pubsub.subscribers must be in (0, 1]".into());
        }
        if self.messages == 0 {
            return Err("pubsub.messages must be at least 1".into());
        }
        if !(self.rate > 0.0 && self.rate.is_finite()) {
            return Err("pubsub.rate must be a positive number of messages a second".into());
        }
        let max = spore_core::pubsub::Config::default().max_message_size;
        if !(16..=max).contains(&self.size) {
            return Err(format!("pubsub.size must be 16 to {max} bytes"));
        }
        let publishing = Duration::from_secs_f64(self.messages as f64 / self.rate);
        if self.start.0 + publishing > duration {
            return Err(format!(
                "publishing {} messages at {}/s from {:?} does not end within the measured phase (duration)",
                self.messages, self.rate, self.start.0
            ));
        }
        if self.lifetime.0 < Duration::from_secs(1) {
            return Err("pubsub.lifetime must be at least 1s".into());
        }
        if let Some(c) = &self.crash {
            if !(0.0..1.0).contains(&c.fraction) {
                return Err("pubsub.crash.fraction must be in [0, 1)".into());
            }
            if self.start.0 + c.at.0 >= duration {
                return Err("pubsub.crash.at must fall within the measured phase".into());
            }
        }
        Ok(())
    }
}

impl Scenario {
    /// Parses and validates a scenario; `origin` names the text in errors.
    pub fn from_toml(text: &str, origin: &str) -> Result<Scenario, ScenarioError> {
        let scenario: Scenario = toml::from_str(text).map_err(|e| ScenarioError::Parse {
            origin: origin.to_string(),
            message: e.to_string(),
        })?;
        scenario.validate(origin)?;
        Ok(scenario)
    }

    /// Reads, parses and validates the scenario in `path`.
    pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Scenario::from_toml(&text, &path.display().to_string())
    }

    /// The sizes to run at.
    pub fn run_sizes(&self) -> Vec<usize> {
        if self.sizes.is_empty() {
            vec![self.nodes]
        } else {
            self.sizes.clone()
        }
    }

    /// The scenario one run executes: the base one (`None`) or `variant`'s — node settings
    /// overlaid, adversaries and crash replaced — with no variants and no bounds of its own.
    pub fn for_run(&self, variant: Option<&Variant>) -> Scenario {
        let mut s = self.clone();
        s.variants.clear();
        s.expect.clear();
        if let Some(v) = variant {
            s.node = self.node.overlay(&v.node);
            if let Some(a) = &v.adversary {
                s.adversary = Some(a.clone());
            }
            if let (Some(c), Some(p)) = (&v.crash, s.pubsub.as_mut()) {
                p.crash = Some(c.clone());
            }
            if let (Some(f), Some(w)) = (v.free_riders, s.swarm.as_mut()) {
                w.free_riders = f;
            }
        }
        s
    }

    /// The labels of the runs: one per variant (the base settings first), times one per size.
    pub fn run_labels(&self) -> Vec<String> {
        let mut labels = Vec::new();
        for size in self.run_sizes() {
            for variant in std::iter::once("base").chain(self.variants.iter().map(|v| &*v.name)) {
                labels.push(match self.sizes.is_empty() {
                    true => variant.to_string(),
                    false if self.variants.is_empty() => format!("{size} nodes"),
                    false => format!("{variant}, {size} nodes"),
                });
            }
        }
        labels
    }

    /// Checks values and their consistency (done by [`from_toml`](Self::from_toml); call it
    /// again after changing a scenario).
    pub fn validate(&self, origin: &str) -> Result<(), ScenarioError> {
        self.check().map_err(|message| ScenarioError::Invalid {
            origin: origin.to_string(),
            message,
        })
    }

    fn check(&self) -> Result<(), String> {
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(format!(
                "name {:?} must be non-empty letters, digits, '-' or '_' (it names the results directory)",
                self.name
            ));
        }
        for size in self.run_sizes() {
            let adversaries = self.adversary.as_ref().map_or(0, |a| a.count_for(size));
            if size > crate::MAX_NODES {
                return Err(format!("{size} nodes is more than the simulator holds"));
            }
            if size < self.join.bootstrap + adversaries + 2 {
                return Err(format!(
                    "{size} nodes leave fewer than 2 honest nodes besides {} bootstrap nodes and {adversaries} adversaries",
                    self.join.bootstrap
                ));
            }
        }
        if self.join.bootstrap == 0 {
            return Err("join.bootstrap must be at least 1".into());
        }
        if !(self.join.rate > 0.0 && self.join.rate.is_finite()) {
            return Err("join.rate must be a positive number of nodes per second".into());
        }
        if self.duration.0.is_zero() {
            return Err("duration must be positive".into());
        }
        if self.sample_every.0 < Duration::from_secs(1) {
            return Err("sample_every must be at least 1s".into());
        }
        let n = &self.network;
        if !(0.0..=1.0).contains(&n.loss) {
            return Err(format!("network.loss must be in [0, 1], not {}", n.loss));
        }
        let mix = &n.nat;
        let weights = [mix.public, mix.cone, mix.symmetric, mix.udp_blocked];
        if weights.iter().any(|w| !(*w >= 0.0 && w.is_finite()))
            || weights.iter().sum::<f64>() <= 0.0
        {
            return Err("network.nat shares must be non-negative with a positive sum".into());
        }
        self.network_config()?;
        if let Some(l) = &self.lookups
            && l.over.0.is_zero()
        {
            return Err("lookups.over must be positive".into());
        }
        if let Some(v) = &self.values {
            if v.get_every.0 < Duration::from_secs(1) {
                return Err("values.get_every must be at least 1s".into());
            }
            if v.count == 0 {
                return Err("values.count must be at least 1".into());
            }
        }
        if let Some(c) = &self.churn {
            if c.session_median.0 < Duration::from_secs(1)
                || c.downtime_median.0 < Duration::from_secs(1)
            {
                return Err("churn medians must be at least 1s".into());
            }
            if !(0.0..=1.0).contains(&c.crash_fraction) {
                return Err("churn.crash_fraction must be in [0, 1]".into());
            }
        }
        if let Some(p) = &self.partition {
            if !(p.split > 0.0 && p.split < 1.0) {
                return Err("partition.split must be strictly between 0 and 1".into());
            }
            if p.probe_every.0 < Duration::from_secs(1) {
                return Err("partition.probe_every must be at least 1s".into());
            }
            if p.at.0 + p.duration.0 > self.duration.0 {
                return Err("the partition must end within the measured phase (duration)".into());
            }
        }
        if let Some(sp) = &self.superpeers {
            if !(0.0..=1.0).contains(&sp.serve_share) {
                return Err("superpeers.serve_share must be in [0, 1]".into());
            }
            if sp.coverage_every.0 < Duration::from_millis(100) {
                return Err("superpeers.coverage_every must be at least 100ms".into());
            }
            if sp.want == Some(0) || sp.max_leaves == Some(0) {
                return Err("superpeers.want and superpeers.max_leaves must be positive".into());
            }
            if sp
                .interval
                .is_some_and(|i| i.0 < Duration::from_millis(100))
            {
                return Err("superpeers.interval must be at least 100ms".into());
            }
            for r in &sp.remove {
                if !(r.share > 0.0 && r.share <= 1.0) {
                    return Err("superpeers.remove.share must be in (0, 1]".into());
                }
                if r.at.0 >= self.duration.0 {
                    return Err("superpeers.remove.at must be within the measured phase".into());
                }
            }
        }
        if let Some(a) = &self.adversary {
            if a.fraction.is_some_and(|f| !(0.0..1.0).contains(&f)) {
                return Err("adversary.fraction must be in [0, 1)".into());
            }
            if a.prefix_bits > 20 {
                return Err("adversary.prefix_bits above 20 would take too long to grind".into());
            }
            if !(0.0..=1.0).contains(&a.drop_rate) {
                return Err("adversary.drop_rate must be in [0, 1]".into());
            }
            if a.subnet.octets()[2..] != [0, 0] {
                return Err(format!(
                    "adversary.subnet {} must be a /16 (x.y.0.0)",
                    a.subnet
                ));
            }
        }
        if let Some(p) = &self.pubsub {
            p.check(self.duration.0)?;
        }
        if let Some(w) = &self.swarm {
            w.check(self.duration.0)?;
            for size in self.run_sizes() {
                let adversaries = self.adversary.as_ref().map_or(0, |a| a.count_for(size));
                let honest = size.saturating_sub(self.join.bootstrap + adversaries);
                let (seeders, leechers) = w.members(honest);
                if leechers == 0 || seeders + leechers > honest {
                    return Err(format!(
                        "{size} nodes have {honest} honest nodes besides the bootstrap nodes and adversaries: too few for {seeders} seeders and {} leechers",
                        leechers.max(1)
                    ));
                }
            }
            if self.churn.is_some() {
                return Err(
                    "[swarm] cannot be combined with [churn]: a restarted node would start its download afresh"
                        .into(),
                );
            }
            if self.pubsub.as_ref().is_some_and(|p| p.crash.is_some()) {
                return Err("[swarm] cannot be combined with a pub/sub crash".into());
            }
        }
        if self.variants.iter().any(|v| v.crash.is_some()) && self.pubsub.is_none() {
            return Err("a variant's crash needs a [pubsub] section".into());
        }
        for v in &self.variants {
            if let Some(f) = v.free_riders {
                if self.swarm.is_none() {
                    return Err("a variant's free_riders needs a [swarm] section".into());
                }
                if !(0.0..1.0).contains(&f) {
                    return Err(format!(
                        "variant {:?}: free_riders must be in [0, 1)",
                        v.name
                    ));
                }
            }
        }
        if let Some(a) = &self.adversary {
            if a.role.is_pubsub() && self.pubsub.is_none() {
                return Err(format!(
                    "adversary role {:?} needs a [pubsub] section",
                    a.role
                ));
            }
            if !(a.spam_rate > 0.0 && a.spam_rate <= 1000.0) {
                return Err("adversary.spam_rate must be in (0, 1000] messages a second".into());
            }
        }
        self.node.check()?;
        let labels = self.run_labels();
        for v in &self.variants {
            if v.name.is_empty() || v.name == "base" {
                return Err("a variant needs a name other than \"base\"".into());
            }
            self.for_run(Some(v))
                .check()
                .map_err(|e| format!("variant {:?}: {e}", v.name))?;
        }
        for e in &self.expect {
            if let Some(v) = &e.variant
                && !labels.contains(v)
            {
                return Err(format!("expect names run {v:?}; the runs are {labels:?}"));
            }
            if e.min.is_none() && e.max.is_none() {
                return Err(format!("expect on {:?} needs min or max", e.metric));
            }
        }
        Ok(())
    }

    /// The simulator's network configuration.
    pub(crate) fn network_config(&self) -> Result<NetworkConfig, String> {
        let n = &self.network;
        let l = &n.latency;
        let latency = match (l.fixed, l.min, l.max, &l.regions, &l.one_way_ms) {
            (Some(Dur(d)), None, None, None, None) => Latency::Fixed(d),
            (None, Some(Dur(min)), Some(Dur(max)), None, None) if min <= max => {
                Latency::Uniform { min, max }
            }
            (None, None, None, Some(weights), Some(matrix)) => Latency::Regions {
                weights: weights.clone(),
                one_way: matrix
                    .iter()
                    .map(|row| row.iter().map(|ms| Duration::from_millis(*ms)).collect())
                    .collect(),
            },
            _ => {
                return Err(
                    "network.latency takes `fixed`, or `min` <= `max`, or `regions` with `one_way_ms`"
                        .into(),
                );
            }
        };
        let config = NetworkConfig {
            latency,
            jitter: n.jitter.0,
            loss: n.loss,
            bandwidth: Bandwidth {
                up: n.upload.map(|r| r.0),
                down: n.download.map(|r| r.0),
            },
            idle_timeout: n.idle_timeout.0,
        };
        SimConfig {
            network: config.clone(),
            ..SimConfig::default()
        }
        .validate()
        .map_err(|e| e.to_string())?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Scenario, ScenarioError> {
        Scenario::from_toml(text, "test.toml")
    }

    #[test]
    fn minimal_scenario_parses_with_defaults() {
        let s = parse("name = \"x\"\nnodes = 10\nduration = \"5m\"\n").unwrap();
        assert_eq!(s.seed, 1);
        assert_eq!(s.join.bootstrap, 3);
        assert_eq!(s.duration, Dur(Duration::from_secs(300)));
        assert_eq!(s.run_labels(), ["base"]);
    }

    #[test]
    fn rates_and_durations() {
        assert_eq!("10Mbit".parse::<Rate>().unwrap(), Rate(1_250_000));
        assert_eq!("2MB/s".parse::<Rate>().unwrap(), Rate(2_000_000));
        assert!("10 parsecs".parse::<Rate>().is_err());
        assert!("0B".parse::<Rate>().is_err());
        let err = parse("name = \"x\"\nnodes = 10\nduration = \"5 fortnights\"\n").unwrap_err();
        assert!(err.to_string().contains("bad duration"), "{err}");
    }

    #[test]
    fn errors_name_the_problem() {
        let cases = [
            (
                "name = \"x\"\nnodes = 10\nduration = \"5m\"\nbogus = 1\n",
                "unknown field",
            ),
            ("name = \"a b\"\nnodes = 10\nduration = \"5m\"\n", "name"),
            (
                "name = \"x\"\nnodes = 3\nduration = \"5m\"\n",
                "fewer than 2 honest",
            ),
            (
                "name = \"x\"\nnodes = 10\nduration = \"5m\"\n[network]\nloss = 2.0\n",
                "network.loss",
            ),
            (
                "name = \"x\"\nnodes = 10\nduration = \"5m\"\n[network.latency]\nmin = \"9ms\"\nmax = \"1ms\"\n",
                "network.latency",
            ),
            (
                "name = \"x\"\nnodes = 10\nduration = \"5m\"\n[partition]\nat = \"4m\"\nduration = \"2m\"\n",
                "within the measured phase",
            ),
            (
                "name = \"x\"\nnodes = 10\nduration = \"5m\"\n[[expect]]\nmetric = \"m\"\nvariant = \"nope\"\nmin = 1\n",
                "expect names run",
            ),
        ];
        for (text, needle) in cases {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.contains(needle), "{needle:?} not in {err:?}");
            assert!(err.starts_with("test.toml"), "{err}");
        }
    }

    #[test]
    fn swarm_sections_parse_and_errors_name_the_problem() {
        let base = "name = \"x\"\nnodes = 20\nduration = \"5m\"\n[join]\nbootstrap = 3\n[swarm]\n";
        let s = parse(&format!(
            "{base}size = \"2MiB\"\nfree_riders = 0.2\nclasses = [{{ name = \"dsl\", share = 1, upload = \"1Mbit\" }}]\n"
        ))
        .unwrap();
        let w = s.swarm.unwrap();
        assert_eq!(w.size, ByteSize(2 << 20));
        assert_eq!(w.seeders, 1);
        // Every honest node but the bootstrap nodes and the seeder leeches by default.
        assert_eq!(w.members(17), (1, 16));
        assert_eq!(w.classes[0].upload, Rate(125_000));
        assert_eq!("64 MB".parse::<ByteSize>().unwrap(), ByteSize(64_000_000));
        assert_eq!("512KiB".parse::<ByteSize>().unwrap(), ByteSize(512 << 10));
        assert!("1.5B".parse::<ByteSize>().is_err());
        assert!("2 parsecs".parse::<ByteSize>().is_err());
        let cases = [
            ("size = 0\n", "swarm.size"),
            ("size = \"2GiB\"\n", "swarm.size"),
            (
                "size = 1000\nleechers = 17\n",
                "too few for 1 seeders and 17 leechers",
            ),
            ("size = 1000\nseeders = 0\n", "swarm.seeders"),
            ("size = 1000\nfree_riders = 1.0\n", "swarm.free_riders"),
            (
                "size = 1000\nspread = \"5m\"\n",
                "within the measured phase",
            ),
            ("size = 1000\nupload_limit = 0\n", "swarm.upload_limit"),
            (
                "size = 1000\nclasses = [{ name = \"a\", share = 1, upload = \"1Mbit\" }, { name = \"a\", share = 1, upload = \"2Mbit\" }]\n",
                "named twice",
            ),
            (
                "size = 1000\nclasses = [{ name = \"a b\", share = 1, upload = \"1Mbit\" }]\n",
                "swarm.classes",
            ),
            (
                "size = 1000\nclasses = [{ name = \"a\", share = 0, upload = \"1Mbit\" }]\n",
                "must be positive",
            ),
            ("size = 1000\nbogus = 1\n", "unknown field"),
            (
                "size = 1000\n[churn]\nsession_median = \"1m\"\ndowntime_median = \"1m\"\n",
                "[churn]",
            ),
            (
                "size = 1000\n[node]\nswarm_optimistic_slots = 2\n",
                "0 or 1",
            ),
        ];
        for (extra, needle) in cases {
            let err = parse(&format!("{base}{extra}")).unwrap_err().to_string();
            assert!(err.contains(needle), "{needle:?} not in {err:?}");
        }
    }

    #[test]
    fn variants_overlay_the_base_settings() {
        let s = parse(
            "name = \"x\"\nnodes = 10\nduration = \"5m\"\n[node]\nk = 10\nip_limits = true\n\
             [[variants]]\nname = \"off\"\nnode = { ip_limits = false, disjoint_paths = 1 }\n",
        )
        .unwrap();
        let merged = s.node.overlay(&s.variants[0].node);
        let c = merged.node_config();
        assert_eq!(c.kad.k, 10);
        assert!(!c.kad.table.ip_limits);
        assert_eq!(c.kad.disjoint_paths, 1);
        assert_eq!(s.run_labels(), ["base", "off"]);
    }
}

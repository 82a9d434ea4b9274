//! What a simulation is made of: how many nodes, how they are configured, and the network model.

use std::net::SocketAddr;
use std::time::Duration;

use spore_core::Keypair;
use spore_core::node;
use spore_core::pow::Difficulty;

/// Settings of a [`Sim`](crate::Sim).
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// The one seed everything random in the run derives from: node keys, node RNGs, latencies,
    /// losses. Same seed and same inputs ⇒ same run, bit for bit.
    pub seed: u64,
    /// Nodes created by [`Sim::new`](crate::Sim::new); more can be added with
    /// [`Sim::add_node`](crate::Sim::add_node).
    pub nodes: usize,
    /// The configuration every node starts from. Its `listen_addrs` are replaced by the node's
    /// simulated address. The default uses [`SimConfig::DEFAULT_DIFFICULTY`], because minting
    /// ten thousand stamps at the network default would dominate the run.
    pub node: node::Config,
    /// The network between the nodes.
    pub network: NetworkConfig,
    /// How many of its most recent events each node's log keeps; 0 keeps none (the counters are
    /// always kept). Events hold peer information, so a large log on a large network costs
    /// memory.
    pub event_log: usize,
    /// Whether to keep every finished DHT query for [`Sim::take_query_results`]
    /// (crate::Sim::take_query_results); the caller must take them regularly.
    pub collect_queries: bool,
    /// Whether to keep what pub/sub does for [`Sim::take_pubsub`](crate::Sim::take_pubsub):
    /// every message delivered to a node's application and every publish frame that arrives at
    /// a node. The caller must take them regularly.
    pub collect_pubsub: bool,
    /// Whether to keep what the nodes' swarms report for [`Sim::take_swarm`]
    /// (crate::Sim::take_swarm): progress, completions, failures and bad peers. The caller
    /// must take them regularly.
    pub collect_swarm: bool,
}

impl SimConfig {
    /// Proof-of-work difficulty of simulated nodes unless configured otherwise.
    pub const DEFAULT_DIFFICULTY: Difficulty = Difficulty(8);
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            seed: 0,
            nodes: 0,
            node: node::Config {
                difficulty: Self::DEFAULT_DIFFICULTY,
                ..node::Config::default()
            },
            network: NetworkConfig::default(),
            event_log: 0,
            collect_queries: false,
            collect_pubsub: false,
            collect_swarm: false,
        }
    }
}

/// The network model.
///
/// Every connection gets a one-way latency from [`latency`](Self::latency) when it is opened,
/// the same in both directions (a path's propagation delay); each message adds a uniform jitter
/// in `[0, jitter]` and is lost with probability [`loss`](Self::loss). A message of `s` bytes
/// also waits for the sender's uplink and the receiver's downlink ([`Bandwidth`]): each is a
/// queue that serves `s / rate` seconds per message, so bulk transfers take their size over the
/// narrower link and crowd out whatever is sent after them. Messages on one connection arrive in
/// the order they were sent, as on a stream. Opening and closing connections is not subject to
/// loss.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkConfig {
    /// Distribution of a connection's one-way latency.
    pub latency: Latency,
    /// Largest extra delay added to each message.
    pub jitter: Duration,
    /// Probability in `[0, 1]` that a message is lost.
    pub loss: f64,
    /// Bandwidth of nodes that are not given their own ([`NodeSpec::bandwidth`]).
    pub bandwidth: Bandwidth,
    /// How long a connection whose path is cut (by a partition, or a peer that crashed) lingers
    /// before its ends notice and close it: QUIC's idle timeout.
    pub idle_timeout: Duration,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        Self {
            latency: Latency::Uniform {
                min: Duration::from_millis(10),
                max: Duration::from_millis(100),
            },
            jitter: Duration::ZERO,
            loss: 0.0,
            bandwidth: Bandwidth::UNLIMITED,
            idle_timeout: Duration::from_secs(30),
        }
    }
}

/// A distribution of one-way latencies.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Latency {
    /// Always the same.
    Fixed(Duration),
    /// Uniform in `[min, max]`, at microsecond resolution.
    Uniform {
        /// Smallest latency.
        min: Duration,
        /// Largest latency.
        max: Duration,
    },
    /// Nodes live in regions, node `i` in a region drawn by `weights` from the seed; a
    /// connection's latency is `one_way[region of a][region of b]`.
    Regions {
        /// Relative share of nodes in each region.
        weights: Vec<u32>,
        /// One-way latency between regions; square, `weights.len()` rows.
        one_way: Vec<Vec<Duration>>,
    },
}

/// A node's link capacity, in bytes per second each way; `None` is unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Bandwidth {
    /// Upload rate.
    pub up: Option<u64>,
    /// Download rate.
    pub down: Option<u64>,
}

impl Bandwidth {
    /// No limit either way.
    pub const UNLIMITED: Bandwidth = Bandwidth {
        up: None,
        down: None,
    };
}

/// How a node is attached to the internet, which decides who can open a connection to whom.
///
/// The simulator does not model NAT traversal yet (relays, hole punching, birthday probing and
/// port mapping run only on real sockets), so the model is the one that matters for a node
/// without them: a connection can be opened *to* a public node by any
/// node that has UDP, and to no one else. A node behind a NAT still takes part through the
/// connections it opens itself; what it announces is its private address, which nobody can
/// dial. The cone/symmetric distinction already shapes what peers observe: a cone NAT keeps one
/// public address per node, a symmetric NAT a different port per connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NatType {
    /// A public address: reachable by anyone.
    #[default]
    Public,
    /// Endpoint-independent mapping: one public address per node.
    Cone,
    /// Endpoint-dependent mapping: a new public port per connection.
    Symmetric,
    /// No UDP at all: cannot open QUIC connections either way.
    UdpBlocked,
}

/// How to create one node: everything left `None` comes from the [`SimConfig`] and the seed.
#[derive(Debug, Clone, Default)]
pub struct NodeSpec {
    /// The node's public address (the NAT's, for a node behind one); default
    /// [`node_addr`](crate::node_addr).
    pub addr: Option<SocketAddr>,
    /// Its attachment.
    pub nat: NatType,
    /// Its link capacity; default [`NetworkConfig::bandwidth`].
    pub bandwidth: Option<Bandwidth>,
    /// Its configuration; default [`SimConfig::node`]. Listen addresses are set by the
    /// simulator.
    pub config: Option<node::Config>,
    /// Its identity; default the next one of the seed's identity stream.
    pub keypair: Option<Keypair>,
}

impl SimConfig {
    pub(crate) fn validate(&self) -> Result<(), crate::SimError> {
        let bad = |why: String| Err(crate::SimError::InvalidConfig(why));
        let net = &self.network;
        if !(0.0..=1.0).contains(&net.loss) {
            return bad(format!("loss must be in [0, 1], it is {}", net.loss));
        }
        match &net.latency {
            Latency::Uniform { min, max } if min > max => {
                return bad(format!("latency min {min:?} exceeds max {max:?}"));
            }
            Latency::Regions { weights, one_way } => {
                if weights.is_empty() || weights.iter().all(|w| *w == 0) {
                    return bad("latency regions need a positive weight".into());
                }
                if one_way.len() != weights.len()
                    || one_way.iter().any(|r| r.len() != weights.len())
                {
                    return bad(format!(
                        "the latency matrix must be {n} x {n}, one row and column per region",
                        n = weights.len()
                    ));
                }
            }
            _ => {}
        }
        for (name, rate) in [("up", net.bandwidth.up), ("down", net.bandwidth.down)] {
            if rate == Some(0) {
                return bad(format!("{name}load bandwidth must be positive"));
            }
        }
        Ok(())
    }
}

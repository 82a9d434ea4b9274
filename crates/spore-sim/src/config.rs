//! What a simulation is made of: how many nodes, how they are configured, and the network model.

use std::time::Duration;

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
        }
    }
}

/// The network model.
///
/// Version 1: every connection gets a one-way latency drawn from [`latency`](Self::latency) when
/// it is opened, the same in both directions (a path's propagation delay); each message adds a
/// uniform jitter in `[0, jitter]` and is lost with probability [`loss`](Self::loss). Messages on
/// one connection arrive in the order they were sent, as on a stream. Opening and closing
/// connections is not subject to loss.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkConfig {
    /// Distribution of a connection's one-way latency.
    pub latency: Latency,
    /// Largest extra delay added to each message.
    pub jitter: Duration,
    /// Probability in `[0, 1]` that a message is lost.
    pub loss: f64,
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
}

impl SimConfig {
    pub(crate) fn validate(&self) -> Result<(), crate::SimError> {
        let bad = |why: String| Err(crate::SimError::InvalidConfig(why));
        let net = &self.network;
        if !(0.0..=1.0).contains(&net.loss) {
            return bad(format!("loss must be in [0, 1], it is {}", net.loss));
        }
        if let Latency::Uniform { min, max } = net.latency
            && min > max
        {
            return bad(format!("latency min {min:?} exceeds max {max:?}"));
        }
        Ok(())
    }
}

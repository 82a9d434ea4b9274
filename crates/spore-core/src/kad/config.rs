//! Kademlia's settings.

use std::time::Duration;

use super::store::StoreLimits;
use super::table;

/// Whether this node serves the DHT or only uses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Answers queries and stores records; advertises `dht-server` so others add it to their
    /// routing tables (once its address is confirmed reachable).
    Server,
    /// Uses the DHT without entering anyone's routing table: for nodes that cannot be reached
    /// from outside (behind NAT), so they do not pollute tables with unreachable entries.
    Client,
}

/// Kademlia's settings. Every bound the protocol enforces is here.
#[derive(Debug, Clone)]
pub struct Config {
    /// Replication parameter and bucket size: lookups converge on the `k` closest nodes and
    /// records are stored on them.
    pub k: usize,
    /// Requests in flight per lookup path.
    pub alpha: usize,
    /// Disjoint paths for value, provider and peer-record lookups (S/Kademlia); node lookups
    /// use one path.
    pub disjoint_paths: usize,
    /// How long to wait for an answer before treating the peer as failed for this request.
    pub request_timeout: Duration,
    /// Server or client.
    pub mode: Mode,
    /// Routing-table settings.
    pub table: table::Config,
    /// Record-store quotas.
    pub store: StoreLimits,
    /// Lifetime of records this node publishes.
    pub record_ttl: Duration,
    /// Records with an expiry further ahead than this are refused.
    pub max_record_ttl: Duration,
    /// How often this node republishes its own records (values, provider and peer records).
    pub republish_interval: Duration,
    /// A bucket with no activity for this long is refreshed with a lookup for a random key in it.
    pub refresh_interval: Duration,
    /// Bucket-refresh lookups running at once; the others wait their turn.
    pub parallel_refreshes: usize,
    /// First delay before retrying a bootstrap that found nobody; doubles up to
    /// `bootstrap_backoff_max`.
    pub bootstrap_backoff: Duration,
    /// Longest delay between bootstrap attempts.
    pub bootstrap_backoff_max: Duration,
    /// Most lookups running at once; further ones are refused.
    pub max_queries: usize,
    /// Most requests in flight at once, over all lookups.
    pub max_requests: usize,
    /// Consecutive failed requests after which a routing-table entry is evicted.
    pub max_failures: u32,
    /// How many new routing-table entries, per `refresh_interval`, are asked for their own signed
    /// peer record, reported as [`Event::PeerRecord`](super::Event::PeerRecord) so the runtime
    /// can keep a peer book; 0 asks none. A restart dials a handful of remembered peers, so a
    /// few dozen fresh records are plenty; asking every entry would add a request and an answer
    /// to each of the hundreds of entries a joining node inserts.
    pub peer_record_fetches: u32,
    /// Bootstrap by itself when the first DHT server enters the routing table. Turned off only
    /// by tests of other layers that want a node to stay quiet.
    pub auto_bootstrap: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            k: 20,
            alpha: 3,
            disjoint_paths: 4,
            request_timeout: Duration::from_secs(5),
            mode: Mode::Server,
            table: table::Config::default(),
            store: StoreLimits::default(),
            record_ttl: Duration::from_secs(4 * 3600),
            max_record_ttl: Duration::from_secs(48 * 3600),
            republish_interval: Duration::from_secs(3600),
            refresh_interval: Duration::from_secs(600),
            parallel_refreshes: 1,
            bootstrap_backoff: Duration::from_secs(1),
            bootstrap_backoff_max: Duration::from_secs(300),
            max_queries: 64,
            max_requests: 1024,
            max_failures: 2,
            peer_record_fetches: 32,
            auto_bootstrap: true,
        }
    }
}

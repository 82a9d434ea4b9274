//! The network model: simulated addresses, connections and what happens to each message.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use rand_chacha::ChaCha20Rng;
use rand_core::RngCore;
use spore_core::time::Instant;

use crate::NodeIndex;
use crate::config::{Latency, NetworkConfig};
use crate::queue::ConnId;

/// The UDP port every simulated node listens on.
pub const SIM_PORT: u16 = 4000;

/// The address of node `i`, on port 4000. Addresses are spread over the whole IPv4 space the way
/// a real network's are — consecutive nodes land in unrelated /16s — so the routing table's
/// IP-prefix limits see what they would see on the internet. The low 24 bits are a bijection of
/// the index (an odd multiplier modulo 2^24), so addresses are unique for up to 2^24 - 1 nodes;
/// the first octet is kept out of 0, 10 and 127 and below the multicast range. A node dials from
/// its listening socket (as a QUIC endpoint does), so this is also the address its peers see.
pub fn node_addr(i: NodeIndex) -> SocketAddr {
    let h = i.0.wrapping_add(1).wrapping_mul(0x9E37_79B1);
    let [top, x, y, z] = h.to_be_bytes();
    let first = match 1 + top % 223 {
        0 | 10 | 127 => 11,
        o => o,
    };
    SocketAddr::from((Ipv4Addr::new(first, x, y, z), SIM_PORT))
}

/// Whether a connection has finished opening.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LinkState {
    /// Opening: `Connected` not yet delivered.
    Opening,
    /// Both ends have been told `Connected`.
    Up,
}

/// One live connection between two nodes.
#[derive(Debug, Clone)]
pub(crate) struct Link {
    pub(crate) conn: ConnId,
    /// Who called `connect` (the `Outbound` side).
    pub(crate) dialer: NodeIndex,
    pub(crate) latency: Duration,
    pub(crate) state: LinkState,
    /// Latest arrival scheduled in each direction (low → high index, high → low), so that
    /// jitter never reorders a stream.
    last_arrival: [Instant; 2],
}

/// A pair of nodes in canonical order (lower index first): the key of a connection.
pub(crate) fn pair(a: NodeIndex, b: NodeIndex) -> (NodeIndex, NodeIndex) {
    if a <= b { (a, b) } else { (b, a) }
}

/// Live connections and the random draws of the network model.
#[derive(Debug)]
pub(crate) struct Network {
    config: NetworkConfig,
    rng: ChaCha20Rng,
    links: BTreeMap<(NodeIndex, NodeIndex), Link>,
    next_conn: ConnId,
}

impl Network {
    pub(crate) fn new(config: NetworkConfig, rng: ChaCha20Rng) -> Self {
        Self {
            config,
            rng,
            links: BTreeMap::new(),
            next_conn: 1,
        }
    }

    pub(crate) fn link(&self, a: NodeIndex, b: NodeIndex) -> Option<&Link> {
        self.links.get(&pair(a, b))
    }

    pub(crate) fn links(&self) -> impl Iterator<Item = (&(NodeIndex, NodeIndex), &Link)> {
        self.links.iter()
    }

    /// Starts opening a connection; `None` if one between them is already live.
    pub(crate) fn open(
        &mut self,
        dialer: NodeIndex,
        other: NodeIndex,
        now: Instant,
    ) -> Option<&Link> {
        let key = pair(dialer, other);
        if self.links.contains_key(&key) {
            return None;
        }
        let latency = self.sample_latency();
        let conn = self.next_conn;
        self.next_conn += 1;
        let link = Link {
            conn,
            dialer,
            latency,
            state: LinkState::Opening,
            last_arrival: [now; 2],
        };
        Some(self.links.entry(key).or_insert(link))
    }

    /// Marks connection `conn` up; false if it was closed while opening.
    pub(crate) fn establish(&mut self, a: NodeIndex, b: NodeIndex, conn: ConnId) -> Option<&Link> {
        let link = self.links.get_mut(&pair(a, b)).filter(|l| l.conn == conn)?;
        link.state = LinkState::Up;
        Some(link)
    }

    /// Removes the connection between `a` and `b`, returning it.
    pub(crate) fn close(&mut self, a: NodeIndex, b: NodeIndex) -> Option<Link> {
        self.links.remove(&pair(a, b))
    }

    /// Whether `conn` is the live, established connection between `a` and `b`.
    pub(crate) fn is_up(&self, a: NodeIndex, b: NodeIndex, conn: ConnId) -> bool {
        self.link(a, b)
            .is_some_and(|l| l.conn == conn && l.state == LinkState::Up)
    }

    /// Decides the fate of a message sent now from `from` to `to` over their established
    /// connection: `Some((conn, arrival))`, or `None` if it is lost.
    pub(crate) fn transmit(
        &mut self,
        from: NodeIndex,
        to: NodeIndex,
        now: Instant,
    ) -> Option<(ConnId, Instant)> {
        let loss = self.config.loss;
        if loss > 0.0 && unit(&mut self.rng) < loss {
            return None;
        }
        let jitter = uniform(&mut self.rng, Duration::ZERO, self.config.jitter);
        let link = self.links.get_mut(&pair(from, to))?;
        let dir = usize::from(from > to);
        let arrival = (now + link.latency + jitter).max(link.last_arrival[dir]);
        link.last_arrival[dir] = arrival;
        Some((link.conn, arrival))
    }

    fn sample_latency(&mut self) -> Duration {
        match self.config.latency {
            Latency::Fixed(d) => d,
            Latency::Uniform { min, max } => uniform(&mut self.rng, min, max),
        }
    }
}

/// Uniform in `[min, max]` at microsecond resolution. Draws nothing when the range is a point,
/// so that a zero jitter leaves the random stream as it was.
fn uniform(rng: &mut ChaCha20Rng, min: Duration, max: Duration) -> Duration {
    let lo = u64::try_from(min.as_micros()).unwrap_or(u64::MAX);
    let hi = u64::try_from(max.as_micros()).unwrap_or(u64::MAX);
    if hi <= lo {
        return min;
    }
    let span = hi - lo;
    // Modulo bias is below 2^-40 for any span a simulation uses.
    let offset = match span.checked_add(1) {
        Some(n) => rng.next_u64() % n,
        None => rng.next_u64(),
    };
    Duration::from_micros(lo + offset)
}

/// Uniform in `[0, 1)`.
fn unit(rng: &mut ChaCha20Rng) -> f64 {
    (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_distinct_and_stable() {
        let mut seen = std::collections::HashSet::new();
        for i in 0..200_000u32 {
            let addr = node_addr(NodeIndex(i));
            assert_eq!(addr, node_addr(NodeIndex(i)), "stable");
            assert!(seen.insert(addr.ip()), "{addr} given twice");
            let std::net::IpAddr::V4(ip) = addr.ip() else {
                panic!("IPv4 only")
            };
            let first = ip.octets()[0];
            assert!(!matches!(first, 0 | 10 | 127) && first < 224, "{ip}");
            assert_eq!(addr.port(), SIM_PORT);
        }
        // Consecutive nodes land in different /16s, as on the internet.
        let prefix = |i| match node_addr(NodeIndex(i)).ip() {
            std::net::IpAddr::V4(ip) => (ip.octets()[0], ip.octets()[1]),
            std::net::IpAddr::V6(_) => unreachable!(),
        };
        let distinct: std::collections::HashSet<_> = (0..100).map(prefix).collect();
        assert!(distinct.len() > 90);
    }
}

//! The network model: simulated addresses, connections and what happens to each message.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use rand_chacha::ChaCha20Rng;
use rand_core::RngCore;
use spore_core::time::Instant;

use crate::NodeIndex;
use crate::config::{Bandwidth, Latency, NatType, NetworkConfig};
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

/// The private address a node behind a NAT announces: in 10.0.0.0/8, dialable by nobody.
pub(crate) fn private_addr(i: NodeIndex) -> SocketAddr {
    let [_, x, y, z] = i.0.to_be_bytes();
    SocketAddr::from((Ipv4Addr::new(10, x, y, z), SIM_PORT))
}

/// What the network knows about one node.
#[derive(Debug, Clone)]
pub(crate) struct Host {
    /// Its public address (its NAT's, behind one).
    pub(crate) addr: SocketAddr,
    pub(crate) nat: NatType,
    bandwidth: Bandwidth,
    region: u16,
    /// Partition group: nodes in different groups cannot reach each other.
    pub(crate) group: u16,
    /// When its uplink and downlink queues are next free.
    up_free: Instant,
    down_free: Instant,
    /// Nodes it has a connection (open or opening) with.
    pub(crate) links: Vec<NodeIndex>,
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
    hosts: Vec<Host>,
    next_conn: ConnId,
}

impl Network {
    pub(crate) fn new(config: NetworkConfig, rng: ChaCha20Rng) -> Self {
        Self {
            config,
            rng,
            links: BTreeMap::new(),
            hosts: Vec::new(),
            next_conn: 1,
        }
    }

    pub(crate) fn config(&self) -> &NetworkConfig {
        &self.config
    }

    /// Makes room for `additional` more hosts.
    pub(crate) fn reserve_hosts(&mut self, additional: usize) {
        self.hosts.reserve_exact(additional);
    }

    /// Adds node `hosts.len()`; its region is drawn from `region_draw` (a number from the seed).
    pub(crate) fn add_host(
        &mut self,
        addr: SocketAddr,
        nat: NatType,
        bandwidth: Option<Bandwidth>,
        region_draw: u64,
    ) {
        let region = match &self.config.latency {
            Latency::Regions { weights, .. } => {
                let total: u64 = weights.iter().map(|w| u64::from(*w)).sum();
                let mut x = region_draw % total.max(1);
                let mut region = 0;
                for (r, w) in weights.iter().enumerate() {
                    if x < u64::from(*w) {
                        region = r;
                        break;
                    }
                    x -= u64::from(*w);
                }
                u16::try_from(region).unwrap_or(u16::MAX)
            }
            _ => 0,
        };
        self.hosts.push(Host {
            addr,
            nat,
            bandwidth: bandwidth.unwrap_or(self.config.bandwidth),
            region,
            group: 0,
            up_free: Instant::ZERO,
            down_free: Instant::ZERO,
            links: Vec::new(),
        });
    }

    pub(crate) fn host(&self, i: NodeIndex) -> &Host {
        &self.hosts[i.index()]
    }

    /// Whether `dialer` can open a connection to `listener` now: the listener is public, the
    /// dialer has UDP, and no partition lies between them.
    pub(crate) fn can_dial(&self, dialer: NodeIndex, listener: NodeIndex) -> Result<(), Refusal> {
        let (d, l) = (self.host(dialer), self.host(listener));
        if d.nat == NatType::UdpBlocked || l.nat != NatType::Public {
            return Err(Refusal::Nat);
        }
        if d.group != l.group {
            return Err(Refusal::Partition);
        }
        Ok(())
    }

    /// The address `observer` sees `node` at on connection `conn`.
    pub(crate) fn observed_addr(&self, node: NodeIndex, conn: ConnId) -> SocketAddr {
        let host = self.host(node);
        match host.nat {
            // A new mapping per destination: the port tells connections apart.
            NatType::Symmetric => {
                let port = 20_000 + u16::try_from(conn % 40_000).unwrap_or(0);
                SocketAddr::new(host.addr.ip(), port)
            }
            _ => host.addr,
        }
    }
    pub(crate) fn link(&self, a: NodeIndex, b: NodeIndex) -> Option<&Link> {
        self.links.get(&pair(a, b))
    }

    /// How many connections are open or opening.
    pub(crate) fn link_count(&self) -> usize {
        self.links.len()
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
        let latency = self.sample_latency(dialer, other);
        let conn = self.next_conn;
        self.next_conn += 1;
        let link = Link {
            conn,
            dialer,
            latency,
            state: LinkState::Opening,
            last_arrival: [now; 2],
        };
        self.hosts[dialer.index()].links.push(other);
        self.hosts[other.index()].links.push(dialer);
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
        let link = self.links.remove(&pair(a, b))?;
        for (x, y) in [(a, b), (b, a)] {
            let links = &mut self.hosts[x.index()].links;
            if let Some(pos) = links.iter().position(|n| *n == y) {
                links.swap_remove(pos);
            }
        }
        Some(link)
    }

    /// Whether `conn` is the live, established connection between `a` and `b`.
    pub(crate) fn is_up(&self, a: NodeIndex, b: NodeIndex, conn: ConnId) -> bool {
        self.link(a, b)
            .is_some_and(|l| l.conn == conn && l.state == LinkState::Up)
    }

    /// Decides the fate of a message of `size` bytes sent now from `from` to `to` over their
    /// established connection: `Ok((conn, arrival))`, or why it never arrives.
    pub(crate) fn transmit(
        &mut self,
        from: NodeIndex,
        to: NodeIndex,
        size: usize,
        now: Instant,
    ) -> Result<(ConnId, Instant), Lost> {
        if self.hosts[from.index()].group != self.hosts[to.index()].group {
            return Err(Lost::Partition);
        }
        let loss = self.config.loss;
        if loss > 0.0 && unit(&mut self.rng) < loss {
            return Err(Lost::Random);
        }
        let jitter = uniform(&mut self.rng, Duration::ZERO, self.config.jitter);
        let Some(link) = self.links.get_mut(&pair(from, to)) else {
            return Err(Lost::NoLink);
        };
        // The sender's uplink, the path, then the receiver's downlink.
        let size = size as u64;
        let sender = &mut self.hosts[from.index()];
        let sent = match sender.bandwidth.up {
            Some(rate) => {
                let done = sender.up_free.max(now) + serialization(size, rate);
                sender.up_free = done;
                done
            }
            None => now,
        };
        let mut arrival = sent + link.latency + jitter;
        let receiver = &mut self.hosts[to.index()];
        if let Some(rate) = receiver.bandwidth.down {
            arrival = receiver.down_free.max(arrival) + serialization(size, rate);
            receiver.down_free = arrival;
        }
        let dir = usize::from(from > to);
        let arrival = arrival.max(link.last_arrival[dir]);
        link.last_arrival[dir] = arrival;
        Ok((link.conn, arrival))
    }

    /// Moves node `i` into partition group `group`.
    pub(crate) fn set_group(&mut self, i: NodeIndex, group: u16) {
        self.hosts[i.index()].group = group;
    }

    /// Established or opening connections whose ends are in different partition groups.
    pub(crate) fn links_across_groups(&self) -> Vec<(NodeIndex, NodeIndex)> {
        self.links
            .keys()
            .filter(|(a, b)| self.hosts[a.index()].group != self.hosts[b.index()].group)
            .copied()
            .collect()
    }

    fn sample_latency(&mut self, a: NodeIndex, b: NodeIndex) -> Duration {
        match &self.config.latency {
            Latency::Fixed(d) => *d,
            Latency::Uniform { min, max } => uniform(&mut self.rng, *min, *max),
            Latency::Regions { one_way, .. } => {
                let (ra, rb) = (self.hosts[a.index()].region, self.hosts[b.index()].region);
                one_way
                    .get(usize::from(ra))
                    .and_then(|row| row.get(usize::from(rb)))
                    .copied()
                    .unwrap_or_default()
            }
        }
    }
}

/// Why a connection could not be opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The listener is behind a NAT, or the dialer has no UDP.
    Nat,
    /// A partition lies between them.
    Partition,
}

/// Why a message never arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lost {
    /// The loss model dropped it.
    Random,
    /// A partition lies between sender and receiver.
    Partition,
    /// The connection is gone.
    NoLink,
}

/// Time to put `size` bytes on a link of `rate` bytes per second, at microsecond resolution.
fn serialization(size: u64, rate: u64) -> Duration {
    Duration::from_micros(size.saturating_mul(1_000_000) / rate.max(1))
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
pub(crate) fn unit(rng: &mut ChaCha20Rng) -> f64 {
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

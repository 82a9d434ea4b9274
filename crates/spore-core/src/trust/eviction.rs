//! Inbound eviction: which inbound connection makes room for a new one when every inbound slot
//! is taken.
//!
//! Refusing newcomers when full lets whoever connects first keep the node forever, and an
//! attacker fills the slots once and stays. Evicting at random lets an attacker who opens
//! connections fast push honest peers out. Bitcoin Core's `SelectNodeToEvict` steers between
//! the two, and this is its shape: a series of protections, each keeping the connections that
//! are best by one measure an attacker finds hard to fake all at once, and then an eviction
//! from the network group with the most connections left — its youngest member.
//!
//! 1. Peers the node keeps connected on purpose (bootstrap, anchors) are never candidates.
//! 2. Network diversity: the longest-connected peer of each of up to [`PROTECT_GROUPS`] network
//!    groups, the groups taken in an order keyed by a local secret (so an attacker cannot
//!    choose prefixes that sort first).
//! 3. Latency: the [`PROTECT_RTT`] lowest round-trip times.
//! 4. Usefulness: the [`PROTECT_USEFUL`] peers with the most recent good evidence (verified
//!    data, answers), as the reputation table holds it.
//! 5. Reputation: the [`PROTECT_REPUTATION`] best scores.
//! 6. Age: half of those left, the longest connected.
//!
//! Whatever is left is evictable; the candidate evicted is the youngest of the network group
//! that has the most candidates left. If nothing is left, the new connection is refused.
//!
//! The choice is a pure function of its inputs; the runtime supplies them.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use crate::PeerId;

/// Network groups protected by diversity.
pub const PROTECT_GROUPS: usize = 4;
/// Peers protected by lowest round-trip time.
pub const PROTECT_RTT: usize = 8;
/// Peers protected by recent usefulness.
pub const PROTECT_USEFUL: usize = 4;
/// Peers protected by reputation.
pub const PROTECT_REPUTATION: usize = 4;

/// A network group: peers in one group are assumed to be one operator's. IPv4 /16 and IPv6
/// /32, as Bitcoin Core and the DHT's diversity rules use; every loopback address is one group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NetGroup([u8; 5]);

impl NetGroup {
    /// The group of `ip`.
    pub fn of(ip: IpAddr) -> Self {
        let ip = ip.to_canonical();
        if ip.is_loopback() {
            return Self([0, 127, 0, 0, 0]);
        }
        match ip {
            IpAddr::V4(v4) => {
                let o = v4.octets();
                Self([4, o[0], o[1], 0, 0])
            }
            IpAddr::V6(v6) => {
                let o = v6.octets();
                Self([6, o[0], o[1], o[2], o[3]])
            }
        }
    }

    fn keyed(&self, key: u64) -> u64 {
        let mut h = blake3::Hasher::new();
        h.update(&key.to_le_bytes());
        h.update(&self.0);
        let b = h.finalize();
        u64::from_le_bytes(b.as_bytes()[..8].try_into().unwrap_or([0; 8]))
    }
}

/// One inbound connection, as the eviction sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    /// The peer.
    pub peer: PeerId,
    /// Its network group.
    pub group: NetGroup,
    /// How long the connection has been up.
    pub connected_for: Duration,
    /// Its round-trip time; `None` if not measured yet (sorts last).
    pub rtt: Option<Duration>,
    /// Recent good evidence about the peer (decayed), from the reputation table.
    pub useful: f64,
    /// Its reputation score (0.5 for a stranger).
    pub score: f64,
    /// Kept connected on purpose (bootstrap, anchor): never evicted.
    pub protected: bool,
}

/// The connection to evict for a newcomer, or `None` when every one is protected (refuse the
/// newcomer). `key` is a local secret that orders network groups.
pub fn choose(candidates: &[Candidate], key: u64) -> Option<PeerId> {
    let mut left: Vec<&Candidate> = candidates.iter().filter(|c| !c.protected).collect();
    // Diversity: the longest-connected peer of each of the first groups in keyed order.
    // One hash per candidate, not one per comparison.
    left.sort_by_cached_key(|c| {
        (
            c.group.keyed(key),
            std::cmp::Reverse(c.connected_for),
            c.peer,
        )
    });
    let mut protected_groups = Vec::new();
    left.retain(|c| {
        if protected_groups.len() < PROTECT_GROUPS && !protected_groups.contains(&c.group) {
            protected_groups.push(c.group);
            false
        } else {
            true
        }
    });
    protect(&mut left, PROTECT_RTT, |a, b| {
        let rtt = |c: &Candidate| c.rtt.unwrap_or(Duration::MAX);
        rtt(a).cmp(&rtt(b))
    });
    protect(&mut left, PROTECT_USEFUL, |a, b| {
        b.useful.total_cmp(&a.useful)
    });
    protect(&mut left, PROTECT_REPUTATION, |a, b| {
        b.score.total_cmp(&a.score)
    });
    let half = left.len() / 2;
    protect(&mut left, half, |a, b| {
        b.connected_for.cmp(&a.connected_for)
    });
    // Evict the youngest of the most-connected group (ties: the group with the youngest).
    let mut groups: BTreeMap<NetGroup, Vec<&Candidate>> = BTreeMap::new();
    for c in left {
        groups.entry(c.group).or_default().push(c);
    }
    let youngest = |members: &Vec<&Candidate>| {
        members
            .iter()
            .min_by(|a, b| {
                a.connected_for
                    .cmp(&b.connected_for)
                    .then(a.peer.cmp(&b.peer))
            })
            .map(|c| (c.connected_for, c.peer))
    };
    groups
        .values()
        .max_by(|a, b| {
            a.len().cmp(&b.len()).then_with(|| {
                // The group whose youngest is younger wins the tie.
                youngest(b).cmp(&youngest(a))
            })
        })
        .and_then(youngest)
        .map(|(_, peer)| peer)
}

/// Removes from `left` the `n` best by `order` (best first); ties by peer id.
fn protect(
    left: &mut Vec<&Candidate>,
    n: usize,
    order: impl Fn(&Candidate, &Candidate) -> std::cmp::Ordering,
) {
    left.sort_by(|a, b| order(a, b).then(a.peer.cmp(&b.peer)));
    let n = n.min(left.len());
    left.drain(..n);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(i: u8) -> PeerId {
        crate::Keypair::from_secret_bytes([i; 32]).peer_id()
    }

    fn candidate(i: u8, ip: [u8; 4], secs: u64, rtt_ms: u64) -> Candidate {
        Candidate {
            peer: peer(i),
            group: NetGroup::of(IpAddr::from(ip)),
            connected_for: Duration::from_secs(secs),
            rtt: Some(Duration::from_millis(rtt_ms)),
            useful: 0.0,
            score: 0.5,
            protected: false,
        }
    }

    #[test]
    fn groups_are_slash_16_and_loopback_is_one() {
        let g = |s: &str| NetGroup::of(s.parse().unwrap());
        assert_eq!(g("10.1.2.3"), g("10.1.200.9"));
        assert_ne!(g("10.1.2.3"), g("10.2.2.3"));
        assert_eq!(g("127.0.0.1"), g("127.9.9.9"));
        assert_eq!(g("::1"), g("127.0.0.1"));
        assert_eq!(g("2001:db8:1::1"), g("2001:db8:2::1"));
        assert_eq!(g("::ffff:10.1.2.3"), g("10.1.9.9"));
    }

    #[test]
    fn nothing_to_evict_when_everyone_is_protected() {
        let few: Vec<_> = (0..6)
            .map(|i| candidate(i, [10, i, 0, 1], 100, 10))
            .collect();
        assert_eq!(choose(&few, 7), None);
        let kept: Vec<_> = (0..40)
            .map(|i| Candidate {
                protected: true,
                ..candidate(i, [10, 0, 0, i], 100, 10)
            })
            .collect();
        assert_eq!(choose(&kept, 7), None);
    }

    /// Honest peers spread over many groups, long connected; an attacker's many young, fast
    /// connections from one /16: one of the attacker's goes, whatever the key.
    #[test]
    fn a_flood_from_one_group_evicts_its_own_youngest() {
        let mut all: Vec<_> = (0..20)
            .map(|i| candidate(i, [20 + i, 1, 0, 1], 3600 + u64::from(i), 40))
            .collect();
        for i in 0..40u8 {
            all.push(candidate(100 + i, [66, 6, 0, i], 1 + u64::from(i), 5));
        }
        let attacker: Vec<_> = (100..140).map(peer).collect();
        for key in 0..50 {
            let evicted = choose(&all, key).unwrap();
            assert!(attacker.contains(&evicted), "key {key}");
        }
    }

    /// On loopback every peer is in one group: age, latency and usefulness still protect the
    /// honest peers that were there first.
    #[test]
    fn in_one_group_the_old_and_useful_stay() {
        let mut all = Vec::new();
        for i in 0..4u8 {
            all.push(Candidate {
                useful: 5.0,
                score: 0.9,
                ..candidate(i, [127, 0, 0, 1], 600, 3)
            });
        }
        for i in 0..60u8 {
            all.push(candidate(10 + i, [127, 0, 0, 1], u64::from(i), 1));
        }
        let evicted = choose(&all, 1).unwrap();
        assert_eq!(evicted, peer(10), "the youngest newcomer goes");
        // Repeated evictions (the newcomer taking the slot each time) never reach the four.
        let mut left = all.clone();
        for round in 0..200u64 {
            let gone = choose(&left, round).unwrap();
            assert!(
                !(0..4).map(peer).any(|p| p == gone),
                "evicted an honest peer"
            );
            left.retain(|c| c.peer != gone);
            left.push(candidate((100 + round % 150) as u8, [127, 0, 0, 1], 0, 1));
            left.dedup_by(|a, b| a.peer == b.peer);
        }
    }
}

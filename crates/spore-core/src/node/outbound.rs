//! Outbound diversity: the node keeps at least [`Config::min_outbound`] connections that it
//! opened itself, spread over network groups.
//!
//! Inbound connections are chosen by whoever dials; an attacker with many addresses can fill
//! them. Outbound connections are the node's own choice, so they are where eclipse resistance
//! lives (Bitcoin Core keeps 8 full-relay and 2 block-relay-only outbound connections, from
//! distinct /16s). Every [`Config::interval`], a node with fewer ready outbound connections
//! than the minimum dials contacts from its routing table: never one whose network group
//! ([`NetGroup`]: IPv4 /16, IPv6 /32) already holds [`Config::max_per_group`] of its outbound
//! connections, groups it has no outbound connection in first, at random within each pass.
//! The routing table has IP-prefix limits of its own; this rule applies to the connections
//! themselves, whatever fills the table. The `min_outbound` oldest outbound connections are
//! never pruned as idle.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use rand_chacha::ChaCha20Rng;

use crate::PeerId;
use crate::trust::eviction::NetGroup;

/// Settings of outbound diversity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Ready outbound connections the node keeps at least (0 turns the rule off).
    pub min_outbound: usize,
    /// How often the node checks.
    pub interval: Duration,
    /// Most outbound connections in one network group.
    pub max_per_group: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            min_outbound: 8,
            interval: Duration::from_secs(30),
            max_per_group: 2,
        }
    }
}

/// Picks at most `want` of `candidates` to dial, given how many outbound connections each
/// group holds: groups with none first, then groups below `max_per_group`; random order
/// within each pass (the candidates' own order carries no preference an attacker could use).
pub(crate) fn pick(
    groups: &BTreeMap<NetGroup, usize>,
    mut candidates: Vec<(PeerId, Vec<SocketAddr>)>,
    want: usize,
    max_per_group: usize,
    rng: &mut ChaCha20Rng,
) -> Vec<(PeerId, Vec<SocketAddr>)> {
    crate::random::shuffle(rng, &mut candidates);
    let mut counts = groups.clone();
    let mut picked = Vec::new();
    for pass_limit in [1, max_per_group] {
        for (peer, addrs) in &candidates {
            if picked.len() >= want {
                return picked;
            }
            let Some(first) = addrs.first() else { continue };
            let group = NetGroup::of(first.ip());
            let n = counts.entry(group).or_default();
            if *n < pass_limit && !picked.iter().any(|(p, _)| p == peer) {
                *n += 1;
                picked.push((*peer, addrs.clone()));
            }
        }
    }
    picked
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::SeedableRng;

    fn peer(i: u8) -> PeerId {
        crate::Keypair::from_secret_bytes([i; 32]).peer_id()
    }

    #[test]
    fn new_groups_first_and_never_more_than_the_group_limit() {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        // Twenty candidates from one /16, three from three others.
        let mut candidates: Vec<_> = (0..20u8)
            .map(|i| (peer(i), vec![SocketAddr::from(([66, 6, 0, i], 7070))]))
            .collect();
        for i in 0..3u8 {
            candidates.push((
                peer(100 + i),
                vec![SocketAddr::from(([10 + i, 1, 0, 1], 7070))],
            ));
        }
        let mut groups = BTreeMap::new();
        groups.insert(NetGroup::of([10, 0, 9, 9].into()), 1);
        let picked = pick(&groups, candidates.clone(), 8, 2, &mut rng);
        let from = |first_octet: u8| {
            picked
                .iter()
                .filter(|(_, a)| {
                    matches!(a[0].ip(), std::net::IpAddr::V4(v) if v.octets()[0] == first_octet)
                })
                .count()
        };
        assert_eq!(from(66), 2, "one /16 gets at most two");
        assert_eq!(from(11) + from(12), 2, "every new group is used");
        assert_eq!(
            from(10),
            1,
            "the group already held gets one more, up to two"
        );
        assert_eq!(picked.len(), 5, "nothing else is allowed");
    }

    #[test]
    fn picks_nothing_it_was_not_asked_for() {
        let mut rng = ChaCha20Rng::seed_from_u64(2);
        let candidates = vec![
            (peer(1), vec![]),
            (peer(2), vec!["10.0.0.1:1".parse().unwrap()]),
        ];
        assert_eq!(
            pick(&BTreeMap::new(), candidates.clone(), 0, 2, &mut rng),
            vec![]
        );
        let picked = pick(&BTreeMap::new(), candidates, 5, 2, &mut rng);
        assert_eq!(picked.len(), 1, "a candidate without an address is skipped");
    }

    /// A node whose routing table holds many servers from one /16 and four from others, none
    /// connected: at the check it dials one from every group and a second from the crowded
    /// one, and no more (a third from the crowded /16 would break the group limit).
    #[test]
    fn a_node_short_of_outbound_dials_across_groups() {
        use crate::node::tests_support::{test_config, test_node};
        use crate::node::{ConnectionEvent, Direction, Event, PROTOCOL_VERSION};
        use crate::pow::Stamp;
        use crate::time::Instant;
        use crate::wire::{Capabilities, Hello, Message};

        let mut config = test_config();
        // No record fetch in flight: its failure at the close would drop the contact.
        config.kad.peer_record_fetches = 0;
        // Checked before the DHT's own lookups start dialing.
        config.outbound.interval = Duration::from_millis(10);
        let difficulty = config.difficulty;
        let mut a = test_node(1, config);
        let mut now = Instant::ZERO;
        let mut addrs = Vec::new();
        for i in 0..24u8 {
            let ip = if i < 20 {
                [66, 6, 1, i]
            } else {
                [10 + i, 1, 0, 1]
            };
            addrs.push(SocketAddr::from((ip, 7070)));
        }
        for (i, addr) in addrs.iter().enumerate() {
            let key = crate::Keypair::from_secret_bytes([50 + i as u8; 32]);
            let peer = key.peer_id();
            a.handle_connection_event(
                now,
                ConnectionEvent::Connected {
                    peer,
                    addr: *addr,
                    direction: Direction::Inbound,
                },
            );
            let hello = Hello {
                versions: vec![PROTOCOL_VERSION],
                capabilities: Capabilities::DHT_SERVER,
                listen_addrs: vec![*addr],
                observed_addr: "10.9.9.9:1".parse().unwrap(),
                stamp: Stamp::mint(&peer, difficulty),
                agent: String::new(),
            };
            a.handle_message(now, peer, Message::Hello(hello));
            a.handle_connection_event(now, ConnectionEvent::Closed { peer });
        }
        // The table's own prefix limits keep only some of the crowded /16.
        assert!(a.kad().table().len() >= 8, "the servers are in the table");
        while a.poll_event().is_some() {}
        now = now + Duration::from_millis(10);
        a.handle_timeout(now);
        let dialed: Vec<SocketAddr> = std::iter::from_fn(|| a.poll_event())
            .filter_map(|e| match e {
                Event::Dial { addrs, .. } => Some(addrs[0]),
                _ => None,
            })
            .collect();
        assert_eq!(
            dialed.len(),
            6,
            "two from the crowded group, one from each other: {dialed:?}"
        );
        let crowded = dialed
            .iter()
            .filter(|a| a.ip().to_string().starts_with("66.6."))
            .count();
        assert_eq!(crowded, 2);
        assert_eq!(a.stats().outbound_dials, 6);
    }
}

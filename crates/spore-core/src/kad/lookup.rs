//! The iterative lookup: α parallel requests, k closest, optional disjoint paths (S/Kademlia).
//!
//! A lookup keeps, per path, the candidates it knows ordered by XOR distance to the target. It
//! asks the closest ones it has not asked, at most α at a time per path, and merges the contacts
//! each answer returns. A path is done when the k closest candidates it knows have all answered
//! (failed ones drop out and the next closest take their place), or when nothing is left to ask.
//!
//! With `d > 1` paths, the starting contacts are dealt round-robin to the paths, and a peer
//! contacted by one path is never contacted by another: a node that lies about its neighbours can
//! capture at most the paths that run into it, and value lookups take the best record any path
//! returned. The lookup itself is plain data; the Kademlia state machine sends the requests it
//! asks for and feeds it the answers.

use std::collections::BTreeMap;

use super::table::ip::{TablePrefix, limited};
use super::{Contact, Distance, Key};
use crate::identity::PeerId;
use crate::time::Instant;

/// Where a candidate stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    NotContacted,
    Waiting,
    Succeeded,
    Failed,
}

#[derive(Debug, Clone)]
struct Candidate {
    contact: Contact,
    state: State,
    /// Hops from the lookup's start: 0 for starting contacts, h + 1 for contacts returned by a
    /// hop-h peer.
    hop: u32,
}

#[derive(Debug, Default)]
struct Path {
    candidates: BTreeMap<Distance, Candidate>,
    waiting: usize,
}

/// One iterative lookup's progress.
#[derive(Debug)]
pub(crate) struct Lookup {
    target: Key,
    k: usize,
    alpha: usize,
    paths: Vec<Path>,
    /// Which path owns each peer ever added (disjointness), and its distance.
    owner: BTreeMap<PeerId, (usize, Distance)>,
    /// At most this many candidates per IPv4 /16 or IPv6 /32 (loopback exempt), if set.
    prefix_limit: Option<usize>,
    prefixes: BTreeMap<TablePrefix, usize>,
    pub(crate) started: Instant,
    pub(crate) requests: u32,
    pub(crate) responses: u32,
    /// Contacts not added because their network had reached `prefix_limit`.
    pub(crate) rejected_by_prefix: u32,
}

/// A request the lookup wants sent.
#[derive(Debug, Clone)]
pub(crate) struct Query {
    pub(crate) contact: Contact,
}

impl Lookup {
    /// Starts a lookup for `target` from `seeds` (closest known contacts, any order).
    pub(crate) fn new(
        target: Key,
        seeds: Vec<Contact>,
        k: usize,
        alpha: usize,
        paths: usize,
        prefix_limit: Option<usize>,
        now: Instant,
    ) -> Self {
        let paths_n = paths.max(1);
        let mut lookup = Lookup {
            target,
            k: k.max(1),
            alpha: alpha.max(1),
            paths: (0..paths_n).map(|_| Path::default()).collect(),
            owner: BTreeMap::new(),
            prefix_limit,
            prefixes: BTreeMap::new(),
            started: now,
            requests: 0,
            responses: 0,
            rejected_by_prefix: 0,
        };
        let mut seeds: Vec<(Distance, Contact)> = seeds
            .into_iter()
            .map(|c| (target.distance(&Key::for_peer(&c.peer)), c))
            .collect();
        seeds.sort_by_key(|a| a.0);
        for (i, (_, contact)) in seeds.into_iter().enumerate() {
            lookup.add(i % paths_n, contact, 0);
        }
        lookup
    }

    /// The key looked up.
    pub(crate) fn target(&self) -> &Key {
        &self.target
    }

    fn add(&mut self, path: usize, contact: Contact, hop: u32) {
        if self.owner.contains_key(&contact.peer) {
            return;
        }
        // The routing table's defence against one operator's many nodes, applied to what
        // answers bring in: a lookup takes at most `prefix_limit` nodes from one network, so
        // Sybils in one /16 cannot fill its result however close their ids are.
        if let Some(limit) = self.prefix_limit
            && let Some(ip) = contact.addrs.first().and_then(|a| limited(a.ip()))
        {
            let n = self.prefixes.entry(TablePrefix::of(ip)).or_insert(0);
            if *n >= limit {
                self.rejected_by_prefix += 1;
                return;
            }
            *n += 1;
        }
        let d = self.target.distance(&Key::for_peer(&contact.peer));
        self.owner.insert(contact.peer, (path, d));
        let p = &mut self.paths[path];
        p.candidates.insert(
            d,
            Candidate {
                contact,
                state: State::NotContacted,
                hop,
            },
        );
        // Keep each path's memory bounded: candidates beyond the closest 4k that nobody is
        // waiting on can never make it into the result.
        let cap = self.k * 4;
        while p.candidates.len() > cap {
            let Some((&far, c)) = p.candidates.iter().next_back() else {
                break;
            };
            if c.state == State::Waiting {
                break;
            }
            p.candidates.remove(&far);
        }
    }

    /// The requests to send now, marking them as in flight.
    pub(crate) fn poll_queries(&mut self) -> Vec<Query> {
        let mut out = Vec::new();
        for p in &mut self.paths {
            // Only the k closest not-failed candidates are worth asking.
            let mut budget = self.alpha.saturating_sub(p.waiting);
            for c in p
                .candidates
                .values_mut()
                .filter(|c| c.state != State::Failed)
                .take(self.k)
            {
                if budget == 0 {
                    break;
                }
                if c.state == State::NotContacted {
                    c.state = State::Waiting;
                    p.waiting += 1;
                    budget -= 1;
                    out.push(Query {
                        contact: c.contact.clone(),
                    });
                }
            }
        }
        self.requests += out.len() as u32;
        out
    }

    fn candidate_mut(&mut self, peer: &PeerId) -> Option<(usize, &mut Candidate)> {
        let &(path, d) = self.owner.get(peer)?;
        self.paths[path].candidates.get_mut(&d).map(|c| (path, c))
    }

    /// `peer` answered with `closer` contacts (already filtered by the caller).
    pub(crate) fn on_success(&mut self, peer: &PeerId, closer: Vec<Contact>) {
        let Some((path, c)) = self.candidate_mut(peer) else {
            return;
        };
        if c.state != State::Waiting {
            return;
        }
        c.state = State::Succeeded;
        let hop = c.hop + 1;
        self.paths[path].waiting -= 1;
        self.responses += 1;
        for contact in closer {
            self.add(path, contact, hop);
        }
    }

    /// The request to `peer` failed or timed out.
    pub(crate) fn on_failure(&mut self, peer: &PeerId) {
        let Some((path, c)) = self.candidate_mut(peer) else {
            return;
        };
        if c.state == State::Waiting {
            c.state = State::Failed;
            self.paths[path].waiting -= 1;
        }
    }

    /// Whether every path has finished: its k closest live candidates all answered, or nothing
    /// is left to ask or wait for.
    pub(crate) fn is_finished(&self) -> bool {
        self.paths.iter().all(|p| {
            let mut live = p
                .candidates
                .values()
                .filter(|c| c.state != State::Failed)
                .take(self.k);
            p.waiting == 0 && live.all(|c| c.state == State::Succeeded)
        })
    }

    /// The k closest contacts that answered, over all paths, closest first, with the hop count at
    /// which the closest was reached.
    pub(crate) fn closest(&self) -> (Vec<Contact>, u32) {
        let mut all: Vec<(&Distance, &Candidate)> = self
            .paths
            .iter()
            .flat_map(|p| p.candidates.iter())
            .filter(|(_, c)| c.state == State::Succeeded)
            .collect();
        all.sort_by(|a, b| a.0.cmp(b.0));
        let hops = all.first().map(|(_, c)| c.hop + 1).unwrap_or(0);
        (
            all.into_iter()
                .take(self.k)
                .map(|(_, c)| c.contact.clone())
                .collect(),
            hops,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Keypair;
    use crate::pow::Stamp;

    fn contact(seed: u16) -> Contact {
        let mut s = [0u8; 32];
        s[..2].copy_from_slice(&seed.to_le_bytes());
        let peer = Keypair::from_secret_bytes(s).peer_id();
        Contact {
            peer,
            stamp: Stamp { nonce: 0 },
            addrs: Default::default(),
        }
    }

    /// A lookup over a network where every node knows every other converges on the true k
    /// closest, asking at most α at a time per path.
    #[test]
    fn converges_on_true_closest() {
        let all: Vec<Contact> = (0..200).map(contact).collect();
        let target = Key([7; 32]);
        let mut truth = all.clone();
        truth.sort_by_key(|c| target.distance(&Key::for_peer(&c.peer)));
        let truth: Vec<PeerId> = truth.iter().take(20).map(|c| c.peer).collect();

        for paths in [1, 4] {
            let mut lookup =
                Lookup::new(target, all[..8].to_vec(), 20, 3, paths, None, Instant::ZERO);
            let mut rounds = 0;
            while !lookup.is_finished() {
                let queries = lookup.poll_queries();
                assert!(queries.len() <= 3 * paths);
                assert!(!queries.is_empty() || lookup.is_finished());
                for q in queries {
                    // Each node answers with the 20 closest to the target it knows (all nodes).
                    let mut closer = all.clone();
                    closer.sort_by_key(|c| target.distance(&Key::for_peer(&c.peer)));
                    closer.retain(|c| c.peer != q.contact.peer);
                    closer.truncate(20);
                    lookup.on_success(&q.contact.peer, closer);
                }
                rounds += 1;
                assert!(rounds < 100);
            }
            let (found, hops) = lookup.closest();
            let found: Vec<PeerId> = found.iter().map(|c| c.peer).collect();
            if paths == 1 {
                assert_eq!(found, truth);
            } else {
                // Disjoint paths each own part of the space; together they still find the
                // closest node.
                assert_eq!(found[0], truth[0]);
            }
            assert!(hops >= 1);
        }
    }

    #[test]
    fn failures_drop_out_and_paths_stay_disjoint() {
        let all: Vec<Contact> = (0..50).map(contact).collect();
        let mut lookup = Lookup::new(Key([1; 32]), all.clone(), 5, 3, 2, None, Instant::ZERO);
        let mut asked = std::collections::BTreeSet::new();
        while !lookup.is_finished() {
            for q in lookup.poll_queries() {
                assert!(
                    asked.insert(q.contact.peer),
                    "a peer is asked once, by one path"
                );
                if q.contact.peer.as_bytes()[0] % 2 == 0 {
                    lookup.on_failure(&q.contact.peer);
                } else {
                    lookup.on_success(&q.contact.peer, all.clone());
                }
            }
        }
        let (found, _) = lookup.closest();
        assert!(found.iter().all(|c| c.peer.as_bytes()[0] % 2 == 1));
    }

    #[test]
    fn one_network_supplies_at_most_the_prefix_limit() {
        // 100 nodes in 66.77.0.0/16 and 100 spread over other /16s; the first are all closer.
        let target = Key([7; 32]);
        let mut all: Vec<Contact> = (0..400).map(contact).collect();
        all.sort_by_key(|c| target.distance(&Key::for_peer(&c.peer)));
        all.truncate(200);
        for (i, c) in all.iter_mut().enumerate() {
            let i = i as u8;
            c.addrs = smallvec::smallvec![if i < 100 {
                std::net::SocketAddr::from(([66, 77, 0, i], 4000))
            } else {
                std::net::SocketAddr::from(([20 + i, 1, 0, 1], 4000))
            }];
        }
        for (limit, sybils_max) in [(None, 20), (Some(10), 10)] {
            let mut lookup = Lookup::new(
                target,
                all[100..110].to_vec(),
                20,
                3,
                1,
                limit,
                Instant::ZERO,
            );
            while !lookup.is_finished() {
                for q in lookup.poll_queries() {
                    lookup.on_success(
                        &q.contact.peer,
                        all[..20].iter().chain(&all[100..120]).cloned().collect(),
                    );
                }
            }
            let (found, _) = lookup.closest();
            let sybils = found
                .iter()
                .filter(|c| matches!(c.addrs[0].ip(), std::net::IpAddr::V4(v) if v.octets()[..2] == [66, 77]))
                .count();
            assert!(sybils <= sybils_max, "{limit:?}: {sybils}");
            assert_eq!(found.len(), 20);
            if limit.is_some() {
                assert!(lookup.rejected_by_prefix > 0);
            }
        }
    }
}

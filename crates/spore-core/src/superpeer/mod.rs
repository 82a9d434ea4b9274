//! Super-peers, sans-IO: which nodes coordinate, and which of them each node behind a NAT uses.
//!
//! spore is a hybrid network (the "super-peer" pattern): every node transfers, but a node that
//! others cannot dial needs help from one that they can — a relay, a rendezvous, a coordinator
//! for hole punches, an index for keyword search. This module decides who offers that help and
//! who takes it; the services themselves are the relay, punch and search protocols.
//!
//! **Who serves.** A node advertises itself as a super-peer (the [`Capabilities::SUPER_PEER`]
//! bit of its `Hello`) only while all of these hold:
//! - it may ([`Config::serve`]: an operator can opt out);
//! - other peers have *confirmed* that it is publicly reachable: in the last
//!   [`Config::confirm_window`], peers from at least [`Config::confirmations`] distinct network
//!   groups (IPv4 /16, IPv6 /32) dialed it directly — inbound connections, neither relayed nor
//!   made by a hole punch. Each is another node's successful dial-back to the address it
//!   announces; a node's belief about itself counts for nothing;
//! - it has run for [`Config::min_uptime`] (coordinators that come and go are worse than none);
//! - it has spare upload bandwidth: its known capacity, if any, is at least
//!   [`Config::min_upload`];
//! - it has room: fewer than [`Config::max_leaves`] leaves. Its **load** is leaves over that
//!   maximum, in percent; it tells each leaf its load when accepting and whenever it moves by
//!   10 points. It accepts a leaf only if its load stays below [`Config::overload`] with it, so
//!   the load its leaves see never makes them all leave at once.
//!
//! **Who uses them.** A node that does not serve, is not confirmed reachable, and is seen by
//! peers from two network groups at an address it does not listen on (the observed address in
//! their `Hello`: it is behind a NAT) is a **leaf** once it has run for [`Config::leaf_after`]:
//! it holds [`Config::want`] super-peers. Candidates are the peers whose `Hello` carried the bit
//! (every connection a node makes while it joins and looks things up shows it some), and the
//! connected peers that `Offer` themselves when they start serving; when it knows too few, it
//! dials a few of its routing table's contacts to meet more. It ranks candidates by reputation,
//! measured round-trip time and advertised load (and those it is connected to now above those
//! it may not reach), and picks **at random among the best `4 × want`** (so leaves spread over
//! super-peers of equal merit rather than all choosing the same one), taking network groups it
//! has no super-peer in first and never more than [`Config::max_per_group`] in one group — so no
//! single operator's address range can hold all of a leaf's super-peers, capture it or censor
//! it. It asks twice as many as it lacks at once and leaves the extra ones that accept. It
//! **rotates away** from a super-peer that disconnects, refuses, does not answer a `Join`
//! within [`Config::join_timeout`], reports a load of [`Config::overload`] or more, or becomes
//! distrusted (the reputation system disconnects it): that one is not chosen again for
//! [`Config::backoff`]. Both ends keep the connection open (it is never pruned as idle).
//!
//! **When they are gone.** Nothing else depends on super-peers being there: DHT lookups, direct
//! connections and hole punches coordinated by any peer both sides know keep working, so the
//! network degrades to plain peer-to-peer, and leaves go back to holding super-peers as soon as
//! some reappear.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::identity::PeerId;
use crate::nat::relay::is_relayed_addr;
use crate::node::{Context, Direction, PeerEvent, PeerInfo, Protocol};
use crate::time::Instant;
use crate::trust::eviction::NetGroup;
use crate::wire::{Capabilities, WireError};

#[cfg(test)]
mod tests;

/// Most addresses remembered per candidate.
const MAX_CANDIDATE_ADDRS: usize = 4;
/// Most network groups remembered as confirmations of reachability.
const MAX_CONFIRMATIONS: usize = 32;
/// Routing-table contacts dialed per check when a leaf knows too few candidates.
const DISCOVERY_DIALS: usize = 8;
/// A leaf picks at random among this many times as many of the best candidates as it needs.
const POOL: usize = 4;
/// A load change, in points, worth telling leaves about.
const LOAD_STEP: u8 = 10;
/// Network groups that must see this node at an address it does not listen on before it
/// counts as behind a NAT (one peer's word is not enough).
const NAT_REPORTS: usize = 2;

/// Settings of super-peer election and choice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Whether this node may serve as a super-peer when it qualifies. Default true.
    pub serve: bool,
    /// How long a node must have run before it may serve. Default 30 minutes.
    pub min_uptime: Duration,
    /// Distinct network groups that must have dialed this node directly within
    /// [`confirm_window`](Self::confirm_window) before it counts as publicly reachable.
    /// Default 3.
    pub confirmations: usize,
    /// How long a direct inbound connection counts as a confirmation. Default 1 hour.
    pub confirm_window: Duration,
    /// The upload capacity this node can give, bytes per second, if known (the runtime's
    /// upload limit, the simulator's modelled bandwidth). `None`: unknown, not held against it.
    pub upload_capacity: Option<u64>,
    /// Least upload capacity a super-peer must have, bytes per second. Default 1 MB/s.
    pub min_upload: u64,
    /// Most leaves a super-peer serves at once; its load is its leaves over this. Default 64.
    pub max_leaves: usize,
    /// Load (percent) at which a super-peer refuses new leaves and leaves rotate away.
    /// Default 90.
    pub overload: u8,
    /// Super-peers a leaf holds (0: never choose any). Default 3.
    pub want: usize,
    /// Most of a leaf's super-peers in one network group. Default 2 (distinct groups first).
    pub max_per_group: usize,
    /// How long a node runs before it decides it is a leaf (its reachability is confirmed, or
    /// not, in that time). Default 1 minute.
    pub leaf_after: Duration,
    /// How often both sides check. Default 30 s.
    pub interval: Duration,
    /// How long a leaf waits for the answer to its `Join` (the connection included) before it
    /// tries another. Default 5 s.
    pub join_timeout: Duration,
    /// How long a super-peer that failed a leaf is not chosen again. Default 10 minutes.
    pub backoff: Duration,
    /// Most candidates a leaf remembers. Default 128.
    pub max_candidates: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            serve: true,
            min_uptime: Duration::from_secs(30 * 60),
            confirmations: 3,
            confirm_window: Duration::from_secs(60 * 60),
            upload_capacity: None,
            min_upload: 1_000_000,
            max_leaves: 64,
            overload: 90,
            want: 3,
            max_per_group: 2,
            leaf_after: Duration::from_secs(60),
            interval: Duration::from_secs(30),
            join_timeout: Duration::from_secs(5),
            backoff: Duration::from_secs(10 * 60),
            max_candidates: 128,
        }
    }
}

/// Messages between a leaf and a super-peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// Leaf to super-peer: take me as a leaf.
    Join,
    /// Super-peer to leaf: taken (or still taken), at this load (percent). Sent again when the
    /// load moves.
    Accept {
        /// Leaves over the maximum, in percent.
        load: u8,
    },
    /// Super-peer to leaf: not taken — not serving, or full.
    Refuse {
        /// Its load, in percent (100 when not serving).
        load: u8,
    },
    /// Either way: the relationship ends.
    Leave,
    /// To every connected peer, when this node starts serving: it is a super-peer now (peers
    /// connected before saw no bit in its `Hello`), at this load, listening at `addrs`.
    Offer {
        /// Its load, in percent.
        load: u8,
        /// Where it listens (at most 4).
        addrs: Vec<SocketAddr>,
    },
}

impl Message {
    /// Checks the bounds the type system does not.
    pub fn validate(&self) -> Result<(), WireError> {
        match self {
            Message::Offer { addrs, .. } if addrs.len() > MAX_CANDIDATE_ADDRS => {
                Err(WireError::Bounds {
                    field: "superpeer.addrs",
                    found: addrs.len(),
                    max: MAX_CANDIDATE_ADDRS,
                })
            }
            Message::Accept { load } | Message::Refuse { load } | Message::Offer { load, .. }
                if *load > 100 =>
            {
                Err(WireError::Bounds {
                    field: "superpeer.load",
                    found: usize::from(*load),
                    max: 100,
                })
            }
            _ => Ok(()),
        }
    }

    /// A short name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Join => "superpeer-join",
            Message::Accept { .. } => "superpeer-accept",
            Message::Refuse { .. } => "superpeer-refuse",
            Message::Leave => "superpeer-leave",
            Message::Offer { .. } => "superpeer-offer",
        }
    }
}

/// What a leaf knows of a candidate super-peer.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    /// The candidate.
    pub peer: PeerId,
    /// Its network group (from the address its connection came from).
    pub group: NetGroup,
    /// Where it listens.
    pub addrs: Vec<SocketAddr>,
    /// Round trip of its last `Join`/`Accept`, if it was ever asked.
    pub rtt: Option<Duration>,
    /// Its last reported load, if any.
    pub load: Option<u8>,
    /// Not chosen before this time (it failed).
    pub banned_until: Option<Instant>,
}

/// One of a leaf's super-peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Held {
    /// `Join` sent at this time, no answer yet.
    Joining(Instant),
    /// Accepted at this time.
    Held(Instant),
}

/// Counters and the current picture, for status pages and the simulator.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Whether this node serves as a super-peer now.
    pub serving: bool,
    /// Whether this node is a leaf now (holds super-peers).
    pub leaf: bool,
    /// Leaves served now.
    pub leaves: usize,
    /// Load now, in percent.
    pub load: u8,
    /// Network groups that confirmed this node's reachability within the window.
    pub confirmations: usize,
    /// Super-peers held now (accepted).
    pub held: usize,
    /// Candidates known.
    pub candidates: usize,
    /// `Join`s sent.
    pub joins_sent: u64,
    /// Leaves accepted (by this node as super-peer).
    pub accepted: u64,
    /// `Join`s refused (by this node as super-peer).
    pub refused: u64,
    /// Super-peers this leaf moved away from: failed, refused, overloaded or silent.
    pub rotations: u64,
    /// Routing-table contacts dialed to meet more candidates.
    pub discovery_dials: u64,
}

/// Super-peer election (serving side) and choice (leaf side). One per node.
#[derive(Debug)]
pub struct SuperPeers {
    config: Config,
    started: Instant,
    next_check: Instant,
    /// When each network group last dialed this node directly.
    reach: BTreeMap<NetGroup, Instant>,
    /// Leaves served, with when they joined.
    leaves: BTreeMap<PeerId, Instant>,
    /// The load leaves were last told.
    told_load: u8,
    serving: bool,
    candidates: BTreeMap<PeerId, Candidate>,
    chosen: BTreeMap<PeerId, Held>,
    /// Set when a leaf knows too few candidates: the node dials routing-table contacts.
    wants_candidates: bool,
    /// The addresses this node listens on (an observed address elsewhere means a NAT).
    listen_addrs: Vec<SocketAddr>,
    /// Network groups of peers that saw this node at an IP it does not listen on.
    nat_reports: std::collections::BTreeSet<NetGroup>,
    stats: Stats,
}

impl SuperPeers {
    /// A node's super-peer state, started at `now`.
    pub fn new(config: Config, now: Instant) -> Self {
        Self {
            next_check: now + config.interval,
            config,
            started: now,
            reach: BTreeMap::new(),
            leaves: BTreeMap::new(),
            told_load: 0,
            serving: false,
            candidates: BTreeMap::new(),
            chosen: BTreeMap::new(),
            wants_candidates: false,
            listen_addrs: Vec::new(),
            nat_reports: std::collections::BTreeSet::new(),
            stats: Stats::default(),
        }
    }

    /// Sets the addresses this node listens on (an observed address elsewhere means a NAT).
    pub fn set_listen_addrs(&mut self, addrs: &[SocketAddr]) {
        self.listen_addrs = addrs.to_vec();
        self.nat_reports.clear();
    }

    /// Whether peers from enough network groups see this node at an address it does not
    /// listen on.
    pub fn is_behind_nat(&self) -> bool {
        self.nat_reports.len() >= NAT_REPORTS
    }

    /// Whether this node serves as a super-peer (and says so in its `Hello`).
    pub fn is_serving(&self) -> bool {
        self.serving
    }

    /// Whether this node's reachability has been confirmed by peers from enough groups.
    pub fn is_confirmed_public(&self, now: Instant) -> bool {
        self.confirmations(now) >= self.config.confirmations
    }

    fn confirmations(&self, now: Instant) -> usize {
        self.reach
            .values()
            .filter(|at| now < **at + self.config.confirm_window)
            .count()
    }

    /// The super-peers this leaf holds (accepted), in id order.
    pub fn held(&self) -> impl Iterator<Item = &PeerId> {
        self.chosen
            .iter()
            .filter(|(_, h)| matches!(h, Held::Held(_)))
            .map(|(p, _)| p)
    }

    /// The leaves this super-peer serves, in id order.
    pub fn leaves(&self) -> impl Iterator<Item = &PeerId> {
        self.leaves.keys()
    }

    /// Whether the connection to `peer` is part of the topology (a leaf of ours, or one of our
    /// super-peers, chosen or asked): never pruned as idle.
    pub fn is_structural(&self, peer: &PeerId) -> bool {
        self.leaves.contains_key(peer) || self.chosen.contains_key(peer)
    }

    /// Counters and the current picture.
    pub fn stats(&self, now: Instant) -> Stats {
        Stats {
            serving: self.serving,
            leaf: self.is_leaf(now),
            leaves: self.leaves.len(),
            load: self.load(),
            confirmations: self.confirmations(now),
            held: self.held().count(),
            candidates: self.candidates.len(),
            ..self.stats.clone()
        }
    }

    /// Takes the wish to meet more candidates (set when a leaf knows too few): the node then
    /// dials a few routing-table contacts, whose `Hello` says whether they serve.
    pub fn take_wants_candidates(&mut self) -> Option<usize> {
        std::mem::take(&mut self.wants_candidates).then_some(DISCOVERY_DIALS)
    }

    /// Counts dials made for [`take_wants_candidates`](Self::take_wants_candidates).
    pub fn discovery_dialed(&mut self, n: usize) {
        self.stats.discovery_dials += n as u64;
    }

    /// The addresses an `Offer` names: where this node listens (at most 4).
    fn offered_addrs(&self) -> Vec<SocketAddr> {
        self.listen_addrs
            .iter()
            .copied()
            .filter(|a| !a.ip().is_unspecified())
            .take(MAX_CANDIDATE_ADDRS)
            .collect()
    }

    fn load(&self) -> u8 {
        let max = self.config.max_leaves.max(1);
        u8::try_from((self.leaves.len() * 100 / max).min(100)).unwrap_or(100)
    }

    fn qualifies(&self, now: Instant) -> bool {
        let c = &self.config;
        c.serve
            && now >= self.started + c.min_uptime
            && self.is_confirmed_public(now)
            && c.upload_capacity.is_none_or(|up| up >= c.min_upload)
    }

    fn is_leaf(&self, now: Instant) -> bool {
        self.config.want > 0
            && !self.serving
            && now >= self.started + self.config.leaf_after
            && self.is_behind_nat()
            && !self.is_confirmed_public(now)
    }

    /// Notes where `info`'s peer sees this node.
    fn note_observed(&mut self, info: &PeerInfo) {
        let Some(observed) = info.observed_us else {
            return;
        };
        let ip = observed.ip().to_canonical();
        let listens = |l: &SocketAddr| {
            let l = l.ip().to_canonical();
            l.is_unspecified() || l == ip
        };
        if self.listen_addrs.iter().any(listens) {
            return;
        }
        if self.nat_reports.len() < MAX_CONFIRMATIONS {
            self.nat_reports.insert(NetGroup::of(info.addr.ip()));
        }
    }

    /// Records a direct inbound connection from `addr` as a confirmation of reachability.
    fn confirm(&mut self, now: Instant, addr: SocketAddr) {
        if is_relayed_addr(&addr) {
            return;
        }
        self.reach.insert(NetGroup::of(addr.ip()), now);
        if self.reach.len() > MAX_CONFIRMATIONS
            && let Some(oldest) = self
                .reach
                .iter()
                .min_by_key(|(g, at)| (**at, **g))
                .map(|(g, _)| *g)
        {
            self.reach.remove(&oldest);
        }
    }

    fn learn_candidate(&mut self, info: &PeerInfo) {
        if !info.capabilities.contains(Capabilities::SUPER_PEER) || info.listen_addrs.is_empty() {
            return;
        }
        let addrs: Vec<SocketAddr> = info.listen_addrs.iter().copied().collect();
        self.add_candidate(info.peer, NetGroup::of(info.addr.ip()), &addrs, None);
    }

    /// Remembers (or refreshes) a candidate, if there is room.
    fn add_candidate(
        &mut self,
        peer: PeerId,
        group: NetGroup,
        addrs: &[SocketAddr],
        load: Option<u8>,
    ) {
        if !self.candidates.contains_key(&peer)
            && self.candidates.len() >= self.config.max_candidates
        {
            // Make room by forgetting a banned one; otherwise keep what we have.
            let Some(banned) = self
                .candidates
                .iter()
                .find(|(p, c)| c.banned_until.is_some() && !self.chosen.contains_key(*p))
                .map(|(p, _)| *p)
            else {
                return;
            };
            self.candidates.remove(&banned);
        }
        let addrs: Vec<SocketAddr> = addrs
            .iter()
            .copied()
            .filter(|a| !is_relayed_addr(a))
            .take(MAX_CANDIDATE_ADDRS)
            .collect();
        let candidate = self.candidates.entry(peer).or_insert(Candidate {
            peer,
            group,
            addrs: Vec::new(),
            rtt: None,
            load: None,
            banned_until: None,
        });
        candidate.group = group;
        candidate.addrs = addrs;
        if load.is_some() {
            candidate.load = load;
        }
    }

    /// Drops `peer` from the leaf's choice and keeps it from being chosen for `backoff`.
    fn rotate_away(&mut self, now: Instant, peer: &PeerId, backoff: Duration) {
        if self.chosen.remove(peer).is_none() {
            return;
        }
        self.stats.rotations += 1;
        // Look again at once: a leaf short of super-peers should not wait a whole interval.
        self.next_check = self.next_check.min(now);
        if let Some(c) = self.candidates.get_mut(peer) {
            c.banned_until = Some(now + backoff);
        }
    }

    fn check_serving(&mut self, cx: &mut Context<'_>) {
        let now = cx.now;
        let serving = self.qualifies(now);
        if self.serving && !serving {
            for leaf in std::mem::take(&mut self.leaves).into_keys() {
                cx.send(leaf, Message::Leave);
            }
        }
        let addrs = self.offered_addrs();
        if serving && !self.serving && !addrs.is_empty() {
            // Peers connected before saw no bit in our Hello: tell them.
            let load = self.load();
            let peers: Vec<PeerId> = cx.ready_peer_ids().collect();
            for peer in peers {
                cx.send(
                    peer,
                    Message::Offer {
                        load,
                        addrs: addrs.clone(),
                    },
                );
            }
        }
        self.serving = serving;
        let load = self.load();
        if self.serving && load.abs_diff(self.told_load) >= LOAD_STEP {
            for leaf in self.leaves.keys() {
                cx.send(*leaf, Message::Accept { load });
            }
            self.told_load = load;
        }
    }

    fn check_leaf(&mut self, cx: &mut Context<'_>) {
        let now = cx.now;
        if !self.is_leaf(now) {
            // Serving, or reachable: a node others can dial needs no super-peer.
            for peer in std::mem::take(&mut self.chosen).into_keys() {
                cx.send(peer, Message::Leave);
            }
            return;
        }
        let silent_after = self.config.join_timeout;
        let silent: Vec<PeerId> = self
            .chosen
            .iter()
            .filter(|(_, h)| matches!(h, Held::Joining(at) if now >= *at + silent_after))
            .map(|(p, _)| *p)
            .collect();
        for peer in silent {
            self.rotate_away(now, &peer, self.config.backoff);
        }
        let overloaded: Vec<PeerId> = self
            .chosen
            .keys()
            .filter(|p| {
                self.candidates
                    .get(p)
                    .and_then(|c| c.load)
                    .is_some_and(|l| l >= self.config.overload)
            })
            .copied()
            .collect();
        for peer in overloaded {
            cx.send(peer, Message::Leave);
            self.rotate_away(now, &peer, self.config.backoff);
        }
        // Ask twice as many as are missing: after a crash half the candidates may be gone or
        // full, and the answers come in parallel. Accepts beyond `want` are left at once.
        let held = self.held().count();
        let joining = self.chosen.len() - held;
        let missing = self.config.want.saturating_sub(held);
        let ask = (missing * 2).saturating_sub(joining);
        if ask == 0 {
            return;
        }
        let held_groups: Vec<NetGroup> = self
            .chosen
            .keys()
            .filter_map(|p| self.candidates.get(p).map(|c| c.group))
            .collect();
        let available: Vec<Ranked> = self
            .candidates
            .values()
            .filter(|c| !self.chosen.contains_key(&c.peer))
            .filter(|c| c.banned_until.is_none_or(|t| now >= t))
            .filter(|c| c.load.is_none_or(|l| l < self.config.overload))
            .filter(|c| !cx.is_distrusted(&c.peer))
            .map(|c| Ranked {
                peer: c.peer,
                group: c.group,
                // A candidate connected now is certainly there: after a crash, candidates
                // that went with it would each cost a failed dial.
                score: score(c, cx.reputation(&c.peer))
                    + if cx.is_ready(&c.peer) { 0.25 } else { 0.0 },
            })
            .collect();
        if available.len() < missing * 2 {
            self.wants_candidates = true;
        }
        let picked = choose(
            available,
            &held_groups,
            ask,
            self.config.max_per_group,
            cx.rng,
        );
        for peer in picked {
            let Some(c) = self.candidates.get(&peer) else {
                continue;
            };
            cx.dial_and_send(peer, &c.addrs, Message::Join);
            self.chosen.insert(peer, Held::Joining(now));
            self.stats.joins_sent += 1;
        }
    }
}

/// A candidate with its score, for [`choose`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ranked {
    /// The candidate.
    pub peer: PeerId,
    /// Its network group.
    pub group: NetGroup,
    /// Higher is better.
    pub score: f64,
}

/// A candidate's merit: its reputation (0 to 1, 0.5 for a stranger), less up to 0.5 for load
/// and up to 0.5 for round-trip time (a second or more costs the full 0.5). Unknown load and
/// RTT cost half.
pub fn score(c: &Candidate, reputation: f64) -> f64 {
    let load = c.load.map_or(0.25, |l| f64::from(l.min(100)) / 200.0);
    let rtt = c.rtt.map_or(0.25, |r| r.as_secs_f64().min(1.0) / 2.0);
    reputation - load - rtt
}

/// Picks `want` of `candidates`: at random among the best `4 × want` (ties broken by id), groups
/// absent from `held` and from what is already picked first, then at most `max_per_group` per
/// group counting `held`. Random choice among equals spreads leaves over super-peers; the group
/// rule keeps one operator's address range from holding all of a leaf's super-peers.
pub fn choose(
    mut candidates: Vec<Ranked>,
    held: &[NetGroup],
    want: usize,
    max_per_group: usize,
    rng: &mut rand_chacha::ChaCha20Rng,
) -> Vec<PeerId> {
    candidates.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.peer.cmp(&b.peer)));
    let mut counts: BTreeMap<NetGroup, usize> = BTreeMap::new();
    for g in held {
        *counts.entry(*g).or_default() += 1;
    }
    let mut picked: Vec<PeerId> = Vec::new();
    for pass_limit in [1, max_per_group.max(1)] {
        // The best the group rule allows in this pass (in the first, each group's best only),
        // then a random few of them.
        let mut offered: BTreeMap<NetGroup, usize> = BTreeMap::new();
        let mut best: Vec<Ranked> = Vec::new();
        for c in &candidates {
            if best.len() >= want.saturating_sub(picked.len()) * POOL {
                break;
            }
            let held = counts.get(&c.group).copied().unwrap_or(0);
            let offered = offered.entry(c.group).or_default();
            if picked.contains(&c.peer) || held + *offered >= pass_limit {
                continue;
            }
            *offered += 1;
            best.push(*c);
        }
        crate::random::shuffle(rng, &mut best);
        for c in best {
            if picked.len() >= want {
                break;
            }
            let n = counts.entry(c.group).or_default();
            if *n < pass_limit {
                *n += 1;
                picked.push(c.peer);
            }
        }
    }
    picked
}

impl Protocol for SuperPeers {
    type Message = Message;

    fn handle_message(&mut self, cx: &mut Context<'_>, from: PeerId, msg: Message) {
        let now = cx.now;
        match msg {
            Message::Join => {
                let known = self.leaves.contains_key(&from);
                // Room means the load stays below `overload` with this leaf: a super-peer that
                // filled up to it would make all its leaves rotate away at once.
                let after = (self.leaves.len() + 1) * 100 / self.config.max_leaves.max(1);
                let room = self.leaves.len() < self.config.max_leaves
                    && after < usize::from(self.config.overload);
                if self.serving && (known || room) {
                    self.leaves.entry(from).or_insert(now);
                    self.stats.accepted += u64::from(!known);
                    cx.send(from, Message::Accept { load: self.load() });
                } else {
                    self.stats.refused += 1;
                    let load = if self.serving { self.load() } else { 100 };
                    cx.send(from, Message::Refuse { load });
                }
            }
            Message::Accept { load } => match self.chosen.get(&from).copied() {
                Some(held) => {
                    if let Some(c) = self.candidates.get_mut(&from) {
                        c.load = Some(load);
                        if let Held::Joining(sent) = held {
                            c.rtt = Some(now.saturating_duration_since(sent));
                        }
                    }
                    if let Held::Joining(_) = held {
                        if self.held().count() >= self.config.want {
                            // One of the extra asks: not needed after all.
                            self.chosen.remove(&from);
                            cx.send(from, Message::Leave);
                        } else {
                            self.chosen.insert(from, Held::Held(now));
                        }
                    }
                }
                // Not (or no longer) wanted.
                None => cx.send(from, Message::Leave),
            },
            Message::Refuse { load } => {
                if let Some(c) = self.candidates.get_mut(&from) {
                    c.load = Some(load);
                }
                self.rotate_away(now, &from, self.config.backoff);
                // A refusal ends the relationship, whether or not it was still wanted.
                if let Some(c) = self.candidates.get_mut(&from) {
                    c.banned_until = Some(now + self.config.backoff);
                }
            }
            Message::Offer { load, addrs } => {
                if let Some(ip) = cx.ready_ip(&from)
                    && !addrs.is_empty()
                {
                    self.add_candidate(from, NetGroup::of(ip), &addrs, Some(load));
                }
            }
            Message::Leave => {
                self.leaves.remove(&from);
                if self.chosen.contains_key(&from) {
                    self.rotate_away(now, &from, self.config.interval);
                }
            }
        }
    }

    fn handle_peer_event(&mut self, cx: &mut Context<'_>, event: &PeerEvent) {
        let now = cx.now;
        match event {
            PeerEvent::Ready(info) => {
                if info.direction == Direction::Inbound && !info.punched {
                    self.confirm(now, info.addr);
                }
                self.note_observed(info);
                self.learn_candidate(info);
            }
            PeerEvent::Gone { peer } | PeerEvent::Unreachable { peer } => {
                self.leaves.remove(peer);
                self.rotate_away(now, peer, self.config.backoff);
            }
        }
    }

    fn handle_timeout(&mut self, cx: &mut Context<'_>) {
        if cx.now < self.next_check {
            return;
        }
        self.check_serving(cx);
        self.check_leaf(cx);
        // After the checks: what they rotated away from is already replaced. A `Join` without
        // an answer is looked at again when it times out.
        let joining = self
            .chosen
            .values()
            .filter_map(|h| match h {
                Held::Joining(at) => Some(*at + self.config.join_timeout),
                Held::Held(_) => None,
            })
            .min();
        let next = cx.now + self.config.interval;
        self.next_check = joining.map_or(next, |j| j.min(next));
    }

    /// Quiet while time alone can change nothing: no peer has dialed in (so it cannot come to
    /// serve), it serves nobody, and nothing says it is behind a NAT (so it is no leaf).
    fn poll_timeout(&self) -> Option<Instant> {
        let active = (self.config.serve && !self.reach.is_empty())
            || self.serving
            || !self.chosen.is_empty()
            || (self.config.want > 0 && self.is_behind_nat());
        active.then_some(self.next_check)
    }
}

//! Hole punching, sans-IO: moving a relayed connection to a direct path by a coordinated
//! simultaneous open (DCUtR's scheme, over QUIC).
//!
//! When a connection that runs over a relay becomes ready, the side that dialed it (the
//! initiator) sends [`Message::Connect`] with its address candidates and notes the time; the
//! other side answers with its own. The round trip measures the relayed path's RTT. The
//! initiator then sends [`Message::Sync`] and, half an RTT later — when the `Sync` arrives at the
//! other side — both emit [`Event::Dial`]: the runtime dials the other side's candidates at once
//! from the node's own socket. Each side's outgoing packets open its NAT for the other's, so
//! when both NATs map endpoint-independently, the QUIC handshakes pass. The runtime keeps the
//! direct connection and closes the relayed one; the relayed connection stays usable until then.
//!
//! If no direct connection is up [`Config::attempt_timeout`] after a punch, the initiator tries
//! again, up to [`Config::max_attempts`] times with the wait doubling each time; then the
//! connection stays relayed ([`Event::GaveUp`]).
//!
//! Candidates: the node's announced addresses, the addresses directly connected peers observe
//! it at (its reflexive addresses — the relay's observation among them), and any the owner adds
//! (STUN). Relayed addresses are never candidates.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

use rand_core::RngCore;
use serde::{Deserialize, Serialize};

use super::relay::is_relayed_addr;
use crate::identity::PeerId;
use crate::node::{Context, Direction, PeerEvent, Protocol};
use crate::time::Instant;
use crate::wire::{WireError, check_bound};

/// Most candidates in a [`Message::Connect`].
pub const MAX_CANDIDATES: usize = 8;

/// Hole punching's messages (sent over the relayed connection).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// My address candidates, for punch `id`; answered with the responder's own.
    Connect {
        /// Chosen by the initiator; the answer repeats it.
        id: u64,
        /// Where the sender may be reached directly.
        addrs: Vec<SocketAddr>,
    },
    /// Dial now (the initiator dials half an RTT after sending this).
    Sync {
        /// The punch.
        id: u64,
    },
}

impl Message {
    /// Checks the bounds the types do not.
    pub fn validate(&self) -> Result<(), WireError> {
        match self {
            Message::Connect { addrs, .. } => {
                check_bound("punch.addrs", addrs.len(), MAX_CANDIDATES)
            }
            Message::Sync { .. } => Ok(()),
        }
    }

    /// A short name for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Connect { .. } => "punch-connect",
            Message::Sync { .. } => "punch-sync",
        }
    }
}

/// Hole punching's settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Try to upgrade relayed connections at all. Default on.
    pub enabled: bool,
    /// How long a punch may take before the next attempt. Default 5 s.
    pub attempt_timeout: Duration,
    /// Attempts per relayed connection. Default 3.
    pub max_attempts: u32,
    /// Relayed connections being upgraded at once; more wait for a later connection. Default 16.
    pub max_concurrent: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            enabled: true,
            attempt_timeout: Duration::from_secs(5),
            max_attempts: 3,
            max_concurrent: 16,
        }
    }
}

/// What hole punching asks of the runtime, or reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Dial `peer` directly at `addrs` now, beside the relayed connection (the runtime keeps a
    /// direct connection over a relayed one).
    Dial {
        /// The peer.
        peer: PeerId,
        /// Its candidates.
        addrs: Vec<SocketAddr>,
        /// Which attempt this is (1 = first).
        attempt: u32,
    },
    /// The connection to `peer` is now direct.
    Direct {
        /// The peer.
        peer: PeerId,
        /// Attempts it took.
        attempts: u32,
        /// From the relayed connection being ready to the direct one being ready.
        took: Duration,
    },
    /// Every attempt failed: the connection stays relayed.
    GaveUp {
        /// The peer.
        peer: PeerId,
    },
}

/// Counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Relayed connections an upgrade was tried on.
    pub started: u64,
    /// Punches (attempts) made.
    pub attempts: u64,
    /// Upgrades that ended on a direct path.
    pub succeeded: u64,
    /// Of those, how many on the first attempt.
    pub first_attempt: u64,
    /// Upgrades given up.
    pub gave_up: u64,
}

#[derive(Debug, Clone)]
enum State {
    /// Initiator: `Connect` sent at `sent`.
    AwaitReply { sent: Instant },
    /// Initiator: dial at `at` (half an RTT after `Sync`).
    Scheduled { at: Instant, addrs: Vec<SocketAddr> },
    /// A punch was made; the next attempt (initiator) or forgetting (responder) at `until`.
    Punched { until: Instant },
}

#[derive(Debug, Clone)]
struct Upgrade {
    id: u64,
    initiator: bool,
    attempt: u32,
    started: Instant,
    state: State,
}

/// The hole-punching protocol.
#[derive(Debug)]
pub struct Punch {
    config: Config,
    /// Relayed connections being upgraded.
    upgrades: BTreeMap<PeerId, Upgrade>,
    /// The latest distinct addresses directly connected peers saw us at, most recent first, at
    /// most [`MAX_CANDIDATES`]. Kept per address rather than per peer, so a node with thousands
    /// of connections keeps a few addresses, not one entry per connection; an address outlives
    /// the connection that reported it until newer reports push it out.
    observed: VecDeque<SocketAddr>,
    /// The node's announced addresses.
    listen: Vec<SocketAddr>,
    /// Candidates the owner added (e.g. STUN reflexive addresses).
    extra: BTreeSet<SocketAddr>,
    /// Peers whose connection went direct, and when (forgotten after an attempt timeout).
    upgraded: BTreeMap<PeerId, Instant>,
    stats: Stats,
}

impl Punch {
    /// A protocol with `config`; `listen` are the node's announced addresses.
    pub fn new(config: Config, listen: Vec<SocketAddr>) -> Self {
        Self {
            config,
            upgrades: BTreeMap::new(),
            observed: VecDeque::with_capacity(MAX_CANDIDATES),
            listen,
            extra: BTreeSet::new(),
            upgraded: BTreeMap::new(),
            stats: Stats::default(),
        }
    }

    /// Replaces the announced addresses.
    pub fn set_listen_addrs(&mut self, listen: Vec<SocketAddr>) {
        self.listen = listen;
    }

    /// Replaces the candidates the owner adds (e.g. STUN's reflexive addresses).
    pub fn set_extra_candidates(&mut self, addrs: Vec<SocketAddr>) {
        self.extra = addrs.into_iter().collect();
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Our candidates, at most [`MAX_CANDIDATES`]: reflexive addresses first (the ones that
    /// work across NATs), then announced ones; never a relayed address.
    pub fn candidates(&self) -> Vec<SocketAddr> {
        let mut out: Vec<SocketAddr> = Vec::new();
        for addr in self.extra.iter().chain(&self.observed).chain(&self.listen) {
            if !is_relayed_addr(addr) && !addr.ip().is_unspecified() && !out.contains(addr) {
                out.push(*addr);
            }
        }
        out.truncate(MAX_CANDIDATES);
        out
    }

    /// Notes that a directly connected peer sees us at `addr`.
    fn observe(&mut self, addr: SocketAddr) {
        self.observed.retain(|a| *a != addr);
        self.observed.push_front(addr);
        self.observed.truncate(MAX_CANDIDATES);
    }

    /// Whether an upgrade of the connection to `peer` is under way, or ended on a direct path
    /// moments ago (both sides dial, so a second direct connection may still arrive).
    pub fn is_upgrading(&self, peer: &PeerId, now: Instant) -> bool {
        self.upgrades.contains_key(peer)
            || self
                .upgraded
                .get(peer)
                .is_some_and(|at| now < *at + self.config.attempt_timeout)
    }

    /// The connection to a ready peer moved to a new path (the runtime replaced it): if it is
    /// direct now, an upgrade under way succeeded.
    pub fn path_changed(&mut self, cx: &mut Context<'_>, info: &crate::node::PeerInfo) {
        if !is_relayed_addr(&info.addr) {
            self.succeeded(cx, info.peer);
        }
    }

    /// The connection to `peer` is direct now: an upgrade under way ends well.
    fn succeeded(&mut self, cx: &mut Context<'_>, peer: PeerId) {
        if let Some(u) = self.upgrades.remove(&peer) {
            self.upgraded.insert(peer, cx.now);
            self.stats.succeeded += 1;
            if u.attempt == 1 {
                self.stats.first_attempt += 1;
            }
            cx.emit(Event::Direct {
                peer,
                attempts: u.attempt,
                took: cx.now.saturating_duration_since(u.started),
            });
        }
    }

    fn start(&mut self, cx: &mut Context<'_>, peer: PeerId) {
        if !self.config.enabled || self.upgrades.len() >= self.config.max_concurrent {
            return;
        }
        let id = cx.rng.next_u64();
        self.stats.started += 1;
        self.upgrades.insert(
            peer,
            Upgrade {
                id,
                initiator: true,
                attempt: 1,
                started: cx.now,
                state: State::AwaitReply { sent: cx.now },
            },
        );
        let addrs = self.candidates();
        cx.send(peer, Message::Connect { id, addrs });
    }

    fn punch(&mut self, cx: &mut Context<'_>, peer: PeerId, addrs: Vec<SocketAddr>) {
        let Some(u) = self.upgrades.get_mut(&peer) else {
            return;
        };
        self.stats.attempts += 1;
        let wait = self
            .config
            .attempt_timeout
            .saturating_mul(1 << (u.attempt - 1).min(8));
        u.state = State::Punched {
            until: cx.now + wait,
        };
        let addrs: Vec<SocketAddr> = addrs
            .into_iter()
            .filter(|a| !is_relayed_addr(a) && !a.ip().is_unspecified() && a.port() != 0)
            .collect();
        cx.emit(Event::Dial {
            peer,
            addrs,
            attempt: u.attempt,
        });
    }
}

impl Protocol for Punch {
    type Message = Message;

    fn handle_message(&mut self, cx: &mut Context<'_>, from: PeerId, msg: Message) {
        match msg {
            Message::Connect { id, addrs } => {
                let mine = self.upgrades.get(&from).map(|u| (u.id, u.initiator));
                match mine {
                    // The answer to our Connect: RTT measured; Sync, then dial in half an RTT.
                    Some((ours, true)) if ours == id => {
                        let Some(u) = self.upgrades.get_mut(&from) else {
                            return;
                        };
                        let State::AwaitReply { sent } = u.state else {
                            return;
                        };
                        let rtt = cx.now.saturating_duration_since(sent);
                        u.state = State::Scheduled {
                            at: cx.now + rtt / 2,
                            addrs,
                        };
                        cx.send(from, Message::Sync { id });
                    }
                    // Our own attempt for this peer is the other one's, or stale: ignore.
                    Some((_, true)) => {}
                    // The other side initiates (or retries): answer with our candidates.
                    _ => {
                        let attempt = self.upgrades.get(&from).map_or(1, |u| u.attempt + 1);
                        let started = self.upgrades.get(&from).map_or(cx.now, |u| u.started);
                        if !self.upgrades.contains_key(&from)
                            && self.upgrades.len() >= self.config.max_concurrent
                        {
                            return;
                        }
                        self.upgrades.insert(
                            from,
                            Upgrade {
                                id,
                                initiator: false,
                                attempt,
                                started,
                                // Waiting for Sync; forgotten if it never comes.
                                state: State::Scheduled {
                                    at: cx.now + self.config.attempt_timeout,
                                    addrs,
                                },
                            },
                        );
                        let addrs = self.candidates();
                        cx.send(from, Message::Connect { id, addrs });
                    }
                }
            }
            Message::Sync { id } => {
                let Some(u) = self.upgrades.get(&from) else {
                    return;
                };
                if u.initiator || u.id != id {
                    return;
                }
                let State::Scheduled { addrs, .. } = u.state.clone() else {
                    return;
                };
                self.punch(cx, from, addrs);
            }
        }
    }

    fn handle_peer_event(&mut self, cx: &mut Context<'_>, event: &PeerEvent) {
        match event {
            PeerEvent::Ready(info) => {
                let relayed = is_relayed_addr(&info.addr);
                if !relayed {
                    if let Some(observed) = info.observed_us
                        && !is_relayed_addr(&observed)
                    {
                        self.observe(observed);
                    }
                    // A direct connection replaced the relayed one: done.
                    self.succeeded(cx, info.peer);
                } else if info.direction == Direction::Outbound
                    && !self.upgrades.contains_key(&info.peer)
                {
                    self.start(cx, info.peer);
                }
            }
            PeerEvent::Gone { .. } | PeerEvent::Unreachable { .. } => {
                // A replaced connection comes back as Ready; keep the upgrade until then or
                // until its timeout.
            }
        }
    }

    fn handle_timeout(&mut self, cx: &mut Context<'_>) {
        let now = cx.now;
        let keep = self.config.attempt_timeout;
        self.upgraded.retain(|_, at| now < *at + keep);
        let due: Vec<PeerId> = self
            .upgrades
            .iter()
            .filter(|(_, u)| match &u.state {
                State::AwaitReply { sent } => *sent + self.config.attempt_timeout <= now,
                State::Scheduled { at, .. } | State::Punched { until: at } => *at <= now,
            })
            .map(|(p, _)| *p)
            .collect();
        for peer in due {
            let Some(u) = self.upgrades.get(&peer).cloned() else {
                continue;
            };
            match (u.initiator, u.state) {
                (true, State::Scheduled { addrs, .. }) => self.punch(cx, peer, addrs),
                (true, _) if u.attempt < self.config.max_attempts && cx.is_ready(&peer) => {
                    let id = cx.rng.next_u64();
                    if let Some(u) = self.upgrades.get_mut(&peer) {
                        u.id = id;
                        u.attempt += 1;
                        u.state = State::AwaitReply { sent: now };
                    }
                    let addrs = self.candidates();
                    cx.send(peer, Message::Connect { id, addrs });
                }
                (true, _) => {
                    self.upgrades.remove(&peer);
                    self.stats.gave_up += 1;
                    cx.emit(Event::GaveUp { peer });
                }
                (false, _) => {
                    self.upgrades.remove(&peer);
                }
            }
        }
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.upgrades
            .values()
            .map(|u| match &u.state {
                State::AwaitReply { sent } => *sent + self.config.attempt_timeout,
                State::Scheduled { at, .. } | State::Punched { until: at } => *at,
            })
            .chain(
                self.upgraded
                    .values()
                    .map(|at| *at + self.config.attempt_timeout),
            )
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Keypair;
    use crate::node::tests_support::Harness;
    use crate::time::Instant;

    /// A direct connection to a peer that sees us at `observed`.
    fn ready_seeing_us_at(h: &mut Harness, seed: u8, observed: SocketAddr) -> PeerEvent {
        let peer = Keypair::from_secret_bytes([seed; 32]).peer_id();
        match h.ready(peer, Instant::ZERO) {
            PeerEvent::Ready(mut info) => {
                info.observed_us = Some(observed);
                PeerEvent::Ready(info)
            }
            other => other,
        }
    }

    #[test]
    fn candidates_keep_the_latest_observed_addresses_not_one_per_peer() {
        let listen: SocketAddr = "192.0.2.1:4000".parse().unwrap();
        let mut punch = Punch::new(Config::default(), vec![listen]);
        let mut h = Harness::new();
        let seen = |port: u16| SocketAddr::from(([198, 51, 100, 7], port));
        // Forty peers, each seeing us at a different port (a symmetric NAT).
        for i in 0..40u8 {
            let event = ready_seeing_us_at(&mut h, i + 1, seen(5000 + u16::from(i)));
            h.with(Instant::ZERO, |cx| punch.handle_peer_event(cx, &event));
        }
        let expected: Vec<SocketAddr> =
            (0..MAX_CANDIDATES as u16).map(|i| seen(5039 - i)).collect();
        assert_eq!(
            punch.candidates(),
            expected,
            "the latest reports, newest first"
        );

        // A peer reporting an address already known moves it to the front, once.
        let event = ready_seeing_us_at(&mut h, 99, seen(5035));
        h.with(Instant::ZERO, |cx| punch.handle_peer_event(cx, &event));
        let candidates = punch.candidates();
        assert_eq!(candidates[0], seen(5035));
        assert_eq!(candidates.iter().filter(|a| **a == seen(5035)).count(), 1);
        assert_eq!(candidates.len(), MAX_CANDIDATES);
    }

    #[test]
    fn with_few_reports_the_listen_address_is_a_candidate_too() {
        let listen: SocketAddr = "192.0.2.1:4000".parse().unwrap();
        let mut punch = Punch::new(Config::default(), vec![listen]);
        let mut h = Harness::new();
        let observed: SocketAddr = "198.51.100.7:6000".parse().unwrap();
        let event = ready_seeing_us_at(&mut h, 1, observed);
        h.with(Instant::ZERO, |cx| punch.handle_peer_event(cx, &event));
        // The peer leaving does not take its report with it.
        let peer = Keypair::from_secret_bytes([1; 32]).peer_id();
        let gone = h.gone(peer);
        h.with(Instant::ZERO, |cx| punch.handle_peer_event(cx, &gone));
        assert_eq!(punch.candidates(), vec![observed, listen]);
    }
}

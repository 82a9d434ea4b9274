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
//!
//! **Birthday probing.** When one side's NAT maps per destination (symmetric) and the other's
//! maps endpoint-independently, a simultaneous open cannot work: the symmetric side's packets
//! leave from a port nobody can predict, and the other side's NAT lets in only what it sent to.
//! Each side sends its NAT's mapping (from STUN) in `Connect`; at the punch, besides dialing,
//! the symmetric side is told to [open](BirthdayRole::Open) many sockets towards the other's
//! one reflexive address (each gets a random port at its NAT), and the other side to
//! [probe](BirthdayRole::Probe) many random ports of the symmetric side's IP. With 256 ports
//! opened and 1,024 probed among ~64,000, some probe hits an open port with probability
//! 1 − (1 − 256/64,512)^1,024 ≈ 98 % (the arithmetic Tailscale published); the symmetric side
//! then dials from the socket that was hit. The runtime carries it out within those bounds.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

use rand_core::RngCore;
use serde::{Deserialize, Serialize};

use super::probe::Mapping;
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
        /// How the sender's NAT maps (from its STUN probe; `Unknown` without one).
        mapping: Mapping,
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
    /// Birthday probing between a symmetric and an endpoint-independent NAT. Default on.
    pub birthday: bool,
    /// Sockets the symmetric side opens per attempt. Default 256.
    pub birthday_sockets: u16,
    /// Ports the other side probes per attempt. Default 1,024.
    pub birthday_probes: u16,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            enabled: true,
            attempt_timeout: Duration::from_secs(5),
            max_attempts: 3,
            max_concurrent: 16,
            birthday: true,
            birthday_sockets: 256,
            birthday_probes: 1024,
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
    /// Birthday probing towards `peer` (see the module docs), beside the dial of the same
    /// attempt.
    Birthday {
        /// The peer.
        peer: PeerId,
        /// Which attempt this is (1 = first).
        attempt: u32,
        /// This side's part.
        role: BirthdayRole,
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

/// A side's part in birthday probing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BirthdayRole {
    /// The symmetric side: open `sockets` new sockets, each sending to `target` (the peer's
    /// reflexive address) now and again; the first that hears from `target` is the path, and
    /// dials the peer from there.
    Open {
        /// The peer's one outside address.
        target: SocketAddr,
        /// Sockets to open.
        sockets: u16,
    },
    /// The endpoint-independent side: send `probes` packets from the node's socket to as many
    /// random ports of `ip` (the peer's NAT), opening our NAT to each; one reaching a socket
    /// the peer opened lets it dial us.
    Probe {
        /// The peer's outside IP.
        ip: std::net::IpAddr,
        /// Ports to probe.
        probes: u16,
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
    /// Attempts that included birthday probing.
    #[serde(default)]
    pub birthday: u64,
}

#[derive(Debug, Clone)]
enum State {
    /// Initiator: `Connect` sent at `sent`.
    AwaitReply { sent: Instant },
    /// Initiator: dial at `at` (half an RTT after `Sync`). Responder: waiting for `Sync`
    /// until `at`. `addrs` and `mapping` are the peer's.
    Scheduled {
        at: Instant,
        addrs: Vec<SocketAddr>,
        mapping: Mapping,
    },
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
    /// Candidates the owner added, in its order (STUN reflexive addresses, then a TURN relayed
    /// one): the first is the one birthday probing aims at.
    extra: Vec<SocketAddr>,
    /// How our NAT maps, as the owner learned it (STUN).
    mapping: Mapping,
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
            extra: Vec::new(),
            mapping: Mapping::Unknown,
            upgraded: BTreeMap::new(),
            stats: Stats::default(),
        }
    }

    /// Replaces the announced addresses.
    pub fn set_listen_addrs(&mut self, listen: Vec<SocketAddr>) {
        self.listen = listen;
    }

    /// Sets how our NAT maps (from STUN), which decides our part in birthday probing.
    pub fn set_mapping(&mut self, mapping: Mapping) {
        self.mapping = mapping;
    }

    /// Replaces the candidates the owner adds (e.g. STUN's reflexive addresses).
    pub fn set_extra_candidates(&mut self, addrs: Vec<SocketAddr>) {
        self.extra.clear();
        for addr in addrs {
            if !self.extra.contains(&addr) && self.extra.len() < MAX_CANDIDATES {
                self.extra.push(addr);
            }
        }
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
        self.send_connect(cx, peer, id);
    }

    fn send_connect(&self, cx: &mut Context<'_>, peer: PeerId, id: u64) {
        let addrs = self.candidates();
        let mapping = self.mapping;
        cx.send(peer, Message::Connect { id, addrs, mapping });
    }

    /// Our part in birthday probing with a peer whose NAT maps as `theirs` and who gave
    /// `addrs`, if any: only between a symmetric NAT and an endpoint-independent one (a public
    /// side needs none: the symmetric side's dial reaches it).
    fn birthday_role(&self, theirs: Mapping, addrs: &[SocketAddr]) -> Option<BirthdayRole> {
        if !self.config.birthday {
            return None;
        }
        let target = *addrs.first()?;
        match (self.mapping, theirs) {
            (Mapping::Dependent, Mapping::EndpointIndependent) => Some(BirthdayRole::Open {
                target,
                sockets: self.config.birthday_sockets,
            }),
            (Mapping::EndpointIndependent, Mapping::Dependent) => Some(BirthdayRole::Probe {
                ip: target.ip(),
                probes: self.config.birthday_probes,
            }),
            _ => None,
        }
    }

    fn punch(
        &mut self,
        cx: &mut Context<'_>,
        peer: PeerId,
        addrs: Vec<SocketAddr>,
        mapping: Mapping,
    ) {
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
        let attempt = u.attempt;
        let addrs: Vec<SocketAddr> = addrs
            .into_iter()
            .filter(|a| !is_relayed_addr(a) && !a.ip().is_unspecified() && a.port() != 0)
            .collect();
        let birthday = self.birthday_role(mapping, &addrs);
        cx.emit(Event::Dial {
            peer,
            addrs,
            attempt,
        });
        if let Some(role) = birthday {
            self.stats.birthday += 1;
            cx.emit(Event::Birthday {
                peer,
                attempt,
                role,
            });
        }
    }
}

impl Protocol for Punch {
    type Message = Message;

    fn handle_message(&mut self, cx: &mut Context<'_>, from: PeerId, msg: Message) {
        match msg {
            Message::Connect { id, addrs, mapping } => {
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
                            mapping,
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
                                    mapping,
                                },
                            },
                        );
                        self.send_connect(cx, from, id);
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
                let State::Scheduled { addrs, mapping, .. } = u.state.clone() else {
                    return;
                };
                self.punch(cx, from, addrs, mapping);
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
                (true, State::Scheduled { addrs, mapping, .. }) => {
                    self.punch(cx, peer, addrs, mapping);
                }
                (true, _) if u.attempt < self.config.max_attempts && cx.is_ready(&peer) => {
                    let id = cx.rng.next_u64();
                    if let Some(u) = self.upgrades.get_mut(&peer) {
                        u.id = id;
                        u.attempt += 1;
                        u.state = State::AwaitReply { sent: now };
                    }
                    self.send_connect(cx, peer, id);
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

    /// The punch messages among `h`'s sends since the last call.
    fn punch_messages(h: &mut Harness) -> Vec<Message> {
        h.transmits()
            .into_iter()
            .filter_map(|t| match t.message {
                crate::wire::Message::Punch(m) => Some(m),
                _ => None,
            })
            .collect()
    }

    /// The punch events among `h`'s events since the last call.
    fn punch_events(h: &mut Harness) -> Vec<Event> {
        h.events()
            .into_iter()
            .filter_map(|e| match e {
                crate::node::Event::Punch(e) => Some(e),
                _ => None,
            })
            .collect()
    }

    /// Runs one punch between `a` (behind a NAT mapping as `a_mapping`, which dialed the
    /// relayed connection) and `b`; returns the events each side got at the punch.
    fn punch_between(a_mapping: Mapping, b_mapping: Mapping) -> (Vec<Event>, Vec<Event>) {
        let a_seen: SocketAddr = "198.51.100.1:40000".parse().unwrap();
        let b_seen: SocketAddr = "203.0.113.2:50000".parse().unwrap();
        let mut a = Punch::new(Config::default(), Vec::new());
        let mut b = Punch::new(Config::default(), Vec::new());
        a.set_mapping(a_mapping);
        a.set_extra_candidates(vec![a_seen]);
        b.set_mapping(b_mapping);
        b.set_extra_candidates(vec![b_seen]);
        let (a_id, b_id) = (
            Keypair::from_secret_bytes([1; 32]).peer_id(),
            Keypair::from_secret_bytes([2; 32]).peer_id(),
        );
        let (mut ha, mut hb) = (Harness::new(), Harness::new());
        let t0 = Instant::ZERO;
        let relayed = crate::nat::relay::relayed_addr(0);
        let ready = ha.ready_from(b_id, t0, relayed);
        ha.with(t0, |cx| a.handle_peer_event(cx, &ready));
        let ready = hb.ready_from(a_id, t0, relayed);
        let ready = match ready {
            PeerEvent::Ready(mut info) => {
                info.direction = Direction::Inbound;
                PeerEvent::Ready(info)
            }
            other => other,
        };
        hb.with(t0, |cx| b.handle_peer_event(cx, &ready));
        let t1 = t0 + Duration::from_millis(40);
        for m in punch_messages(&mut ha) {
            hb.with(t1, |cx| b.handle_message(cx, a_id, m));
        }
        let t2 = t1 + Duration::from_millis(40);
        for m in punch_messages(&mut hb) {
            ha.with(t2, |cx| a.handle_message(cx, b_id, m));
        }
        let t3 = t2 + Duration::from_millis(40);
        for m in punch_messages(&mut ha) {
            hb.with(t3, |cx| b.handle_message(cx, a_id, m));
        }
        let at = a.poll_timeout().unwrap();
        assert_eq!(
            at,
            t2 + Duration::from_millis(40),
            "half the RTT after Sync"
        );
        ha.with(at, |cx| a.handle_timeout(cx));
        (punch_events(&mut ha), punch_events(&mut hb))
    }

    #[test]
    fn a_symmetric_nat_opens_sockets_and_a_cone_probes_its_ports() {
        let (a, b) = punch_between(Mapping::Dependent, Mapping::EndpointIndependent);
        let b_seen: SocketAddr = "203.0.113.2:50000".parse().unwrap();
        assert!(matches!(a[0], Event::Dial { .. }), "{a:?}");
        assert_eq!(
            a[1],
            Event::Birthday {
                peer: Keypair::from_secret_bytes([2; 32]).peer_id(),
                attempt: 1,
                role: BirthdayRole::Open {
                    target: b_seen,
                    sockets: 256
                },
            }
        );
        assert!(matches!(b[0], Event::Dial { .. }), "{b:?}");
        assert_eq!(
            b[1],
            Event::Birthday {
                peer: Keypair::from_secret_bytes([1; 32]).peer_id(),
                attempt: 1,
                role: BirthdayRole::Probe {
                    ip: "198.51.100.1".parse().unwrap(),
                    probes: 1024
                },
            }
        );
    }

    #[test]
    fn no_birthday_probing_where_a_plain_punch_can_work_or_nothing_can() {
        use Mapping::*;
        for (x, y) in [
            (EndpointIndependent, EndpointIndependent),
            (Dependent, Dependent),
            (Dependent, None),
            (Dependent, Unknown),
            (Unknown, EndpointIndependent),
        ] {
            for (a, b) in [(x, y), (y, x)] {
                let (ea, eb) = punch_between(a, b);
                let birthdays = ea
                    .iter()
                    .chain(&eb)
                    .filter(|e| matches!(e, Event::Birthday { .. }))
                    .count();
                assert_eq!(birthdays, 0, "{a:?} ↔ {b:?}");
                assert!(matches!(ea[..], [Event::Dial { .. }]), "{ea:?}");
                assert!(matches!(eb[..], [Event::Dial { .. }]), "{eb:?}");
            }
        }
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

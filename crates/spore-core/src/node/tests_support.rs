//! Two nodes joined by a link with fixed one-way latency, driven in virtual time: the pattern of
//! quinn-proto's test `Pair`. Always advances to the earliest pending delivery or timeout.

use std::collections::VecDeque;
use std::time::Duration;

use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

use super::protocol::{Link, OutputLimits, Outputs};
use super::{
    Config, ConnectionEvent, Context, Direction, Event, Node, PeerEvent, PeerInfo, Transmit,
};
use crate::identity::{Keypair, PeerId};
use crate::pow::{Difficulty, Stamp};
use crate::time::Instant;
use crate::wire::{Capabilities, Message};

pub(crate) fn test_node(seed: u8, config: Config) -> Node {
    let key = Keypair::from_secret_bytes([seed; 32]);
    let stamp = Stamp::mint(&key.peer_id(), config.difficulty);
    Node::new(key, stamp, config, [seed; 32], Instant::ZERO).unwrap()
}

pub(crate) fn test_config() -> Config {
    Config {
        difficulty: Difficulty(4),
        ..Config::default()
    }
}

pub(crate) struct Pair {
    pub(crate) a: Node,
    pub(crate) b: Node,
    pub(crate) now: Instant,
    latency: Duration,
    /// (arrival, to_b, message)
    in_flight: VecDeque<(Instant, bool, Message)>,
    pub(crate) a_events: Vec<Event>,
    pub(crate) b_events: Vec<Event>,
    pub(crate) drop_b_to_a: bool,
}

impl Pair {
    pub(crate) fn new(latency: Duration) -> Self {
        Self::with_nodes(
            test_node(1, test_config()),
            test_node(2, test_config()),
            latency,
        )
    }

    pub(crate) fn with_nodes(a: Node, b: Node, latency: Duration) -> Self {
        Self {
            a,
            b,
            now: Instant::ZERO,
            latency,
            in_flight: VecDeque::new(),
            a_events: Vec::new(),
            b_events: Vec::new(),
            drop_b_to_a: false,
        }
    }

    pub(crate) fn connect(&mut self) {
        let addr_a = "10.0.0.1:1000".parse().unwrap();
        let addr_b = "10.0.0.2:2000".parse().unwrap();
        let (ida, idb) = (self.a.peer_id(), self.b.peer_id());
        self.a.handle_connection_event(
            self.now,
            ConnectionEvent::Connected {
                peer: idb,
                addr: addr_b,
                direction: Direction::Outbound,
            },
        );
        self.b.handle_connection_event(
            self.now,
            ConnectionEvent::Connected {
                peer: ida,
                addr: addr_a,
                direction: Direction::Inbound,
            },
        );
        self.drain();
    }

    /// Connects and runs until both `Hello`s have arrived.
    pub(crate) fn handshake(&mut self) {
        self.connect();
        self.run_for(self.latency);
        assert!(self.a.peer(&self.b.peer_id()).is_some_and(|p| p.ready));
        assert!(self.b.peer(&self.a.peer_id()).is_some_and(|p| p.ready));
    }

    /// Delivers one message directly, bypassing the link (for injecting what a peer might send).
    pub(crate) fn inject_to_b(&mut self, msg: Message) {
        let from = self.a.peer_id();
        self.b.handle_message(self.now, from, msg);
        self.drain();
    }

    /// Moves both nodes' outputs onto the link and into the event lists.
    pub(crate) fn drain(&mut self) {
        let arrival = self.now + self.latency;
        while let Some(t) = self.a.poll_transmit() {
            self.in_flight.push_back((arrival, true, t.message));
        }
        while let Some(t) = self.b.poll_transmit() {
            if !self.drop_b_to_a {
                self.in_flight.push_back((arrival, false, t.message));
            }
        }
        while let Some(e) = self.a.poll_event() {
            self.a_events.push(e);
        }
        while let Some(e) = self.b.poll_event() {
            self.b_events.push(e);
        }
    }

    pub(crate) fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        loop {
            let next_msg = self.in_flight.front().map(|(t, _, _)| *t);
            let next = [next_msg, self.a.poll_timeout(), self.b.poll_timeout()]
                .into_iter()
                .flatten()
                .min();
            match next {
                Some(t) if t <= end => {
                    self.now = self.now.max(t);
                    if next_msg == Some(t) {
                        let (_, to_b, msg) = self.in_flight.pop_front().unwrap();
                        let (ida, idb) = (self.a.peer_id(), self.b.peer_id());
                        if to_b {
                            self.b.handle_message(self.now, ida, msg);
                        } else {
                            self.a.handle_message(self.now, idb, msg);
                        }
                    } else {
                        self.a.handle_timeout(self.now);
                        self.b.handle_timeout(self.now);
                    }
                    self.drain();
                }
                _ => break,
            }
        }
        self.now = end;
    }
}

/// Drives one protocol's state machine directly, without a [`Node`]: for tests of its logic
/// with any number of (imaginary) peers.
pub(crate) struct Harness {
    rng: ChaCha20Rng,
    out: Outputs,
}

impl Harness {
    pub(crate) fn new() -> Self {
        Self {
            rng: ChaCha20Rng::from_seed([0; 32]),
            out: Outputs::new(
                OutputLimits {
                    queue: 1024,
                    waiting_peers: 16,
                    waiting_messages: 16,
                },
                {
                    let key = Keypair::from_secret_bytes([0xee; 32]);
                    let stamp = Stamp::mint(&key.peer_id(), Difficulty(4));
                    crate::kad::record::OwnRecord::new(key, stamp, Duration::from_secs(3600))
                },
                crate::trust::reputation::Reputation::new(Default::default()),
                crate::trust::wot::WebOfTrust::new(
                    Keypair::from_secret_bytes([0xee; 32]).peer_id(),
                    Default::default(),
                ),
            ),
        }
    }

    /// A harness whose own record (`cx.own_record()`) is `keypair`'s, at `addrs`, and whose RNG
    /// is seeded from the key.
    pub(crate) fn with_identity(
        keypair: Keypair,
        stamp: Stamp,
        addrs: Vec<std::net::SocketAddr>,
    ) -> Self {
        let mut h = Self::new();
        // A different random stream per identity, so machines in one test do not draw alike.
        h.rng = ChaCha20Rng::from_seed(keypair.secret_bytes());
        let mut own = crate::kad::record::OwnRecord::new(keypair, stamp, Duration::from_secs(3600));
        own.set_addrs(addrs);
        h.out.own = own;
        h
    }

    /// Like [`ready`](Self::ready) with the connection's `direction`; also sends the messages
    /// that were waiting for the peer (as the node does when a `Hello` verifies).
    pub(crate) fn ready_with(
        &mut self,
        peer: PeerId,
        now: Instant,
        direction: Direction,
    ) -> PeerEvent {
        let event = self.ready(peer, now);
        self.out.flush(peer);
        match event {
            PeerEvent::Ready(mut info) => {
                info.direction = direction;
                PeerEvent::Ready(info)
            }
            other => other,
        }
    }

    /// Marks `peer` gone (no longer ready) and returns the event protocols get.
    pub(crate) fn gone(&mut self, peer: PeerId) -> PeerEvent {
        self.out.remove_link(&peer);
        PeerEvent::Gone { peer }
    }

    /// Marks `peer` ready (so `cx.send` reaches it) and returns the event protocols get.
    pub(crate) fn ready(&mut self, peer: PeerId, now: Instant) -> PeerEvent {
        self.ready_from(peer, now, "10.9.9.9:9".parse().unwrap())
    }

    /// Like [`ready`](Self::ready), for a connection that comes from `addr`.
    pub(crate) fn ready_from(
        &mut self,
        peer: PeerId,
        now: Instant,
        addr: std::net::SocketAddr,
    ) -> PeerEvent {
        self.out.set_link(peer, Link::Ready(addr.ip()));
        PeerEvent::Ready(Box::new(PeerInfo {
            peer,
            addr,
            direction: Direction::Outbound,
            connected_at: now,
            listen_addrs: crate::kad::Addrs::new(),
            observed_us: None,
            capabilities: Capabilities::empty(),
            agent: String::new(),
            stamp: None,
            ready: true,
            rtt: None,
            punched: false,
        }))
    }

    /// Runs `f` with a context at `now`.
    pub(crate) fn with<R>(&mut self, now: Instant, f: impl FnOnce(&mut Context<'_>) -> R) -> R {
        let mut cx = Context {
            now,
            rng: &mut self.rng,
            out: &mut self.out,
        };
        f(&mut cx)
    }

    /// The messages sent since the last call.
    pub(crate) fn transmits(&mut self) -> Vec<Transmit> {
        self.out.transmits.drain(..).collect()
    }

    /// The events emitted since the last call.
    pub(crate) fn events(&mut self) -> Vec<Event> {
        self.out.events.drain(..).collect()
    }
}

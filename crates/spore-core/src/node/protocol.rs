//! The shape every sub-protocol has, and the context the [`Node`](super::Node) hands it.

use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, SocketAddr};

use rand_chacha::ChaCha20Rng;

use super::Event;
use crate::identity::PeerId;
use crate::kad::record::{OwnRecord, PeerRecord};
use crate::time::Instant;
use crate::trust::reputation::{Observation, Reputation};
use crate::trust::wot::WebOfTrust;
use crate::wire::Message;

/// A sub-protocol of the node: a deterministic state machine.
///
/// The [`Node`](super::Node) owns one value per protocol. It calls the `handle_*` methods with a
/// [`Context`] that carries the current time, the node's seeded RNG and the output queues, and it
/// asks [`poll_timeout`](Protocol::poll_timeout) after every input. A protocol never reads a clock,
/// touches a socket or uses a global RNG; that is what makes the simulator reproducible.
pub trait Protocol {
    /// The messages this protocol exchanges (one variant of [`Message`]).
    type Message;

    /// A peer sent us one of this protocol's messages. Only called for peers whose `Hello` has
    /// been verified.
    fn handle_message(&mut self, cx: &mut Context<'_>, from: PeerId, msg: Self::Message);

    /// A peer became ready (its `Hello` verified) or went away.
    fn handle_peer_event(&mut self, cx: &mut Context<'_>, event: &PeerEvent);

    /// Called when `cx.now` has reached the protocol's [`poll_timeout`](Protocol::poll_timeout).
    fn handle_timeout(&mut self, cx: &mut Context<'_>);

    /// The next instant at which the protocol wants [`handle_timeout`](Protocol::handle_timeout).
    fn poll_timeout(&self) -> Option<Instant>;
}

/// A change in the set of ready peers, as protocols see it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PeerEvent {
    /// The peer's `Hello` was verified; it may now be sent protocol messages.
    Ready(Box<super::PeerInfo>),
    /// The connection to a ready peer closed.
    Gone {
        /// The peer.
        peer: PeerId,
    },
    /// A peer that was never ready (being dialed, or handshaking) is gone, and the messages
    /// waiting for it were dropped. Protocols should fail what they were waiting for.
    Unreachable {
        /// The peer.
        peer: PeerId,
    },
}

/// What a [`Protocol`] may use while handling an input.
pub struct Context<'a> {
    /// The current time.
    pub now: Instant,
    /// The node's RNG; seeded by the node's owner, so runs are reproducible.
    pub rng: &'a mut ChaCha20Rng,
    pub(super) out: &'a mut Outputs,
}

impl Context<'_> {
    /// Sends `msg` to `to`. If `to` is connected but not yet ready, the message waits for its
    /// `Hello`; if `to` is not connected at all, the message is dropped (use
    /// [`dial_and_send`](Self::dial_and_send) to reach a peer that may not be connected).
    pub fn send(&mut self, to: PeerId, msg: impl Into<Message>) {
        self.out.send(to, msg.into(), None, self.now);
    }

    /// Sends `msg` to `to`, asking the driver to connect to one of `addrs` first if it is not
    /// connected. If the connection fails, protocols get [`PeerEvent::Unreachable`].
    pub fn dial_and_send(&mut self, to: PeerId, addrs: &[SocketAddr], msg: impl Into<Message>) {
        self.out.send(to, msg.into(), Some(addrs), self.now);
    }

    /// Whether `peer` is connected and its `Hello` verified.
    pub fn is_ready(&self, peer: &PeerId) -> bool {
        matches!(self.out.links.get(peer), Some(Link::Ready(_)))
    }

    /// The IP address a ready peer's connection comes from; `None` if it is not ready.
    pub fn ready_ip(&self, peer: &PeerId) -> Option<IpAddr> {
        match self.out.links.get(peer) {
            Some(Link::Ready(ip)) => Some(*ip),
            _ => None,
        }
    }

    /// The ready peers, in id order.
    pub fn ready_peer_ids(&self) -> impl Iterator<Item = PeerId> + '_ {
        self.out
            .links
            .iter()
            .filter(|(_, link)| matches!(link, Link::Ready(_)))
            .map(|(peer, _)| *peer)
    }

    /// Number of ready peers.
    pub fn ready_peers(&self) -> usize {
        self.out.ready
    }

    /// Whether a connection to `peer` is being dialed or handshaking (not ready yet).
    pub fn is_connecting(&self, peer: &PeerId) -> bool {
        matches!(
            self.out.links.get(peer),
            Some(Link::Dialing | Link::Handshaking)
        )
    }

    /// Asks the driver to connect to `peer` at one of `addrs`, unless a connection to it exists
    /// or is being made. A failed dial reaches protocols as [`PeerEvent::Unreachable`].
    pub fn dial(&mut self, peer: PeerId, addrs: &[SocketAddr]) {
        let _ = self.out.dial(peer, addrs, self.now);
    }

    /// This node's signed peer record (where it can be reached), re-signed as it ages; `None`
    /// while the node has no listen addresses.
    pub fn own_record(&mut self) -> Option<PeerRecord> {
        self.out.own.get(self.now)
    }

    /// Reports an event to the node's owner.
    pub fn emit(&mut self, event: impl Into<Event>) {
        self.out.push_event(event.into());
    }

    /// Records what `peer` did in the node's reputation table. A peer this makes distrusted is
    /// disconnected once the current input is handled.
    pub fn observe(&mut self, peer: PeerId, what: Observation) {
        if self.out.reputation.observe(self.now, peer, what) && self.out.distrusted.len() < 64 {
            self.out.distrusted.push(peer);
        }
    }

    /// `peer`'s reputation score: 0 (only bad evidence) to 1, 0.5 for a stranger.
    pub fn reputation(&self, peer: &PeerId) -> f64 {
        self.out.reputation.score(self.now, peer)
    }

    /// Whether the node refuses `peer` for what it did (see [`crate::trust::reputation`]).
    pub fn is_distrusted(&self, peer: &PeerId) -> bool {
        self.out.reputation.is_distrusted(self.now, peer)
    }

    /// Whether a chain of at most `depth` vouches leads from this node to `peer` (see
    /// [`crate::trust::wot`]).
    pub fn trusts(&self, peer: &PeerId, depth: u8) -> bool {
        self.out.wot.trusts(peer, depth)
    }
}

/// A message the driver must deliver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// The recipient.
    pub to: PeerId,
    /// The message.
    pub message: Message,
}

/// How far a connection to a peer has come.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Link {
    /// The driver was asked to connect.
    Dialing,
    /// Connected; waiting for the peer's `Hello`.
    Handshaking,
    /// `Hello` verified; the connection comes from this IP address.
    Ready(IpAddr),
}

/// Messages held for a peer that is not ready yet.
#[derive(Debug)]
pub(super) struct Waiting {
    pub(super) messages: VecDeque<Message>,
    pub(super) since: Instant,
}

/// The node's output queues and the link states that decide where a message goes. Everything is
/// bounded: the driver drains the queues after every input, so their bound is only reached by an
/// outsize burst, and what exceeds any bound is dropped and counted rather than held.
#[derive(Debug)]
pub(super) struct Outputs {
    pub(super) transmits: VecDeque<Transmit>,
    pub(super) events: VecDeque<Event>,
    pub(super) links: BTreeMap<PeerId, Link>,
    /// How many of `links` are [`Link::Ready`](Link); kept by [`set_link`](Self::set_link) and
    /// [`remove_link`](Self::remove_link), the only ways links change.
    ready: usize,
    pub(super) waiting: BTreeMap<PeerId, Waiting>,
    pub(super) limits: OutputLimits,
    pub(super) dropped: u64,
    pub(super) unroutable: u64,
    /// The node's own peer record, for protocols that hand it out.
    pub(super) own: OwnRecord,
    /// What every protocol observed of every peer.
    pub(super) reputation: Reputation,
    /// Peers that became distrusted during the current input, to disconnect after it (bounded:
    /// the rest are refused when they next say `Hello`).
    pub(super) distrusted: Vec<PeerId>,
    /// The web of trust.
    pub(super) wot: WebOfTrust,
}

/// Bounds of [`Outputs`].
#[derive(Debug, Clone, Copy)]
pub(super) struct OutputLimits {
    pub(super) queue: usize,
    pub(super) waiting_peers: usize,
    pub(super) waiting_messages: usize,
}

impl Outputs {
    pub(super) fn new(
        limits: OutputLimits,
        own: OwnRecord,
        reputation: Reputation,
        wot: WebOfTrust,
    ) -> Self {
        Self {
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            links: BTreeMap::new(),
            ready: 0,
            waiting: BTreeMap::new(),
            limits,
            dropped: 0,
            unroutable: 0,
            own,
            reputation,
            distrusted: Vec::new(),
            wot,
        }
    }

    fn send(&mut self, to: PeerId, message: Message, dial: Option<&[SocketAddr]>, now: Instant) {
        match (self.links.get(&to), dial) {
            (Some(Link::Ready(_)), _) => self.push_transmit(Transmit { to, message }),
            (Some(_), _) => self.wait(to, message, now),
            (None, Some(addrs)) if !addrs.is_empty() => {
                if self.dial(to, addrs, now) {
                    self.wait(to, message, now);
                }
            }
            (None, _) => self.unroutable += 1,
        }
    }

    /// Sets `peer`'s link state.
    pub(super) fn set_link(&mut self, peer: PeerId, link: Link) {
        let old = self.links.insert(peer, link);
        let is_ready = |l: Option<Link>| usize::from(matches!(l, Some(Link::Ready(_))));
        self.ready = self.ready + is_ready(Some(link)) - is_ready(old);
    }

    /// Forgets `peer`'s link.
    pub(super) fn remove_link(&mut self, peer: &PeerId) {
        if matches!(self.links.remove(peer), Some(Link::Ready(_))) {
            self.ready -= 1;
        }
    }

    /// Asks the driver to dial `to`, with an empty waiting entry so that the dial timeout covers
    /// the dial. False, and nothing asked, if there is no address, a link already exists, or
    /// the waiting peers are at their bound (counted as dropped).
    fn dial(&mut self, to: PeerId, addrs: &[SocketAddr], now: Instant) -> bool {
        if addrs.is_empty() || self.links.contains_key(&to) {
            return false;
        }
        if self.waiting.len() >= self.limits.waiting_peers {
            self.dropped += 1;
            return false;
        }
        self.set_link(to, Link::Dialing);
        self.waiting.entry(to).or_insert_with(|| Waiting {
            messages: VecDeque::new(),
            since: now,
        });
        self.push_event(Event::Dial {
            peer: to,
            addrs: addrs.to_vec(),
        });
        true
    }

    fn wait(&mut self, to: PeerId, message: Message, now: Instant) {
        let limit = self.limits.waiting_messages;
        if !self.waiting.contains_key(&to) && self.waiting.len() >= self.limits.waiting_peers {
            self.dropped += 1;
            return;
        }
        let w = self.waiting.entry(to).or_insert_with(|| Waiting {
            messages: VecDeque::new(),
            since: now,
        });
        if w.messages.len() < limit {
            w.messages.push_back(message);
        } else {
            self.dropped += 1;
        }
    }

    /// The peer became ready: its waiting messages go out.
    pub(super) fn flush(&mut self, peer: PeerId) {
        if let Some(w) = self.waiting.remove(&peer) {
            for message in w.messages {
                self.push_transmit(Transmit { to: peer, message });
            }
        }
    }

    pub(super) fn push_transmit(&mut self, t: Transmit) {
        if self.transmits.len() < self.limits.queue {
            self.transmits.push_back(t);
        } else {
            self.dropped += 1;
        }
    }

    pub(super) fn push_event(&mut self, e: Event) {
        if self.events.len() < self.limits.queue {
            self.events.push_back(e);
        } else {
            self.dropped += 1;
        }
    }
}

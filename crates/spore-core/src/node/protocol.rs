//! The shape every sub-protocol has, and the context the [`Node`](super::Node) hands it.

use std::collections::VecDeque;
use std::net::SocketAddr;

use rand_chacha::ChaCha20Rng;

use super::Event;
use crate::identity::PeerId;
use crate::time::Instant;
use crate::wire::{Capabilities, Message};

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
    Ready {
        /// The peer.
        peer: PeerId,
        /// The address its connection comes from, as this node sees it.
        addr: SocketAddr,
        /// What the peer offers.
        capabilities: Capabilities,
    },
    /// The connection to the peer closed.
    Gone {
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
    /// Queues `msg` for `to`.
    pub fn send(&mut self, to: PeerId, msg: impl Into<Message>) {
        self.out.push_transmit(Transmit {
            to,
            message: msg.into(),
        });
    }

    /// Reports an event to the node's owner.
    pub fn emit(&mut self, event: impl Into<Event>) {
        self.out.push_event(event.into());
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

/// The node's output queues. They are bounded: the driver drains them after every input, so the
/// bound is only reached if a single input produces an outsize burst, and what exceeds it is
/// dropped and counted rather than held.
#[derive(Debug)]
pub(super) struct Outputs {
    pub(super) transmits: VecDeque<Transmit>,
    pub(super) events: VecDeque<Event>,
    pub(super) limit: usize,
    pub(super) dropped: u64,
}

impl Outputs {
    pub(super) fn new(limit: usize) -> Self {
        Self {
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            limit,
            dropped: 0,
        }
    }

    fn push_transmit(&mut self, t: Transmit) {
        if self.transmits.len() < self.limit {
            self.transmits.push_back(t);
        } else {
            self.dropped += 1;
        }
    }

    pub(super) fn push_event(&mut self, e: Event) {
        if self.events.len() < self.limit {
            self.events.push_back(e);
        } else {
            self.dropped += 1;
        }
    }
}

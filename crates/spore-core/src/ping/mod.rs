//! Ping: liveness and round-trip time to each connected peer.
//!
//! Each ready peer is pinged every [`Config::interval`]; a pong within [`Config::timeout`] gives
//! its round-trip time, a missing one a [`Event::Timeout`]. [`Ping::ping`] sends one on demand.
//! This is also the smallest complete example of a protocol: messages, config, state machine.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use rand_core::RngCore;
use serde::{Deserialize, Serialize};

use crate::identity::PeerId;
use crate::node::{Context, PeerEvent, Protocol};
use crate::time::Instant;

/// Ping's messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// Please echo `nonce`.
    Ping {
        /// Chosen at random by the sender.
        nonce: u64,
    },
    /// The echo of a [`Message::Ping`].
    Pong {
        /// The nonce of the ping being answered.
        nonce: u64,
    },
}

/// Ping's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// How often each ready peer is pinged; `None` pings only on request.
    pub interval: Option<Duration>,
    /// How long to wait for a pong.
    pub timeout: Duration,
    /// Most pings in flight to one peer; more requests are refused.
    pub max_outstanding: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            interval: Some(Duration::from_secs(15)),
            timeout: Duration::from_secs(10),
            max_outstanding: 8,
        }
    }
}

/// What ping reports.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A pong arrived.
    Pong {
        /// Who answered.
        peer: PeerId,
        /// The ping's nonce.
        nonce: u64,
        /// Time from sending the ping to receiving the pong.
        rtt: Duration,
    },
    /// No pong within the timeout.
    Timeout {
        /// Who did not answer.
        peer: PeerId,
        /// The ping's nonce.
        nonce: u64,
    },
}

/// A ping request could not be sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PingError {
    /// The peer is not connected, or its `Hello` is not yet verified.
    #[error("peer {0} is not connected")]
    NotConnected(PeerId),
    /// Too many pings are already in flight to this peer.
    #[error("{0} pings already in flight to this peer")]
    TooManyOutstanding(usize),
}

#[derive(Debug, Default)]
struct PeerState {
    in_flight: VecDeque<(u64, Instant)>,
    next_ping: Option<Instant>,
    last_rtt: Option<Duration>,
    /// The entry of this peer in [`Ping::timers`].
    deadline: Option<Instant>,
}

/// The ping state machine.
#[derive(Debug)]
pub struct Ping {
    config: Config,
    peers: BTreeMap<PeerId, PeerState>,
    /// Each peer's next deadline (a ping due, or the oldest pong overdue), earliest first, so
    /// that `poll_timeout` and `handle_timeout` touch only the peers that are due.
    timers: BTreeSet<(Instant, PeerId)>,
    unexpected_pongs: u64,
}

impl Ping {
    /// A ping protocol with `config`.
    pub fn new(config: Config) -> Self {
        Self {
            config,
            peers: BTreeMap::new(),
            timers: BTreeSet::new(),
            unexpected_pongs: 0,
        }
    }

    /// Sends a ping to `peer` now; the answer arrives as an [`Event`].
    pub fn ping(&mut self, cx: &mut Context<'_>, peer: PeerId) -> Result<u64, PingError> {
        let max = self.config.max_outstanding;
        let state = match self.peers.entry(peer) {
            std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
            // Without periodic pings, peers get state only once someone pings them.
            std::collections::btree_map::Entry::Vacant(e) if cx.is_ready(&peer) => {
                e.insert(PeerState::default())
            }
            std::collections::btree_map::Entry::Vacant(_) => {
                return Err(PingError::NotConnected(peer));
            }
        };
        if state.in_flight.len() >= max {
            return Err(PingError::TooManyOutstanding(max));
        }
        let nonce = cx.rng.next_u64();
        state.in_flight.push_back((nonce, cx.now));
        cx.send(peer, Message::Ping { nonce });
        self.retime(peer);
        Ok(nonce)
    }

    /// The last measured round-trip time to `peer`.
    pub fn rtt(&self, peer: &PeerId) -> Option<Duration> {
        self.peers.get(peer).and_then(|s| s.last_rtt)
    }

    /// Pongs that matched no ping in flight (late, duplicated or forged).
    pub fn unexpected_pongs(&self) -> u64 {
        self.unexpected_pongs
    }

    /// Recomputes `peer`'s entry in the timer set after its state changed.
    fn retime(&mut self, peer: PeerId) {
        let Some(state) = self.peers.get_mut(&peer) else {
            return;
        };
        let expiry = state
            .in_flight
            .front()
            .map(|(_, sent)| *sent + self.config.timeout);
        let next = expiry.into_iter().chain(state.next_ping).min();
        if next != state.deadline {
            if let Some(old) = state.deadline {
                self.timers.remove(&(old, peer));
            }
            if let Some(new) = next {
                self.timers.insert((new, peer));
            }
            state.deadline = next;
        }
    }
}

impl Protocol for Ping {
    type Message = Message;

    fn handle_message(&mut self, cx: &mut Context<'_>, from: PeerId, msg: Message) {
        match msg {
            Message::Ping { nonce } => cx.send(from, Message::Pong { nonce }),
            Message::Pong { nonce } => {
                let Some(state) = self.peers.get_mut(&from) else {
                    return;
                };
                match state.in_flight.iter().position(|(n, _)| *n == nonce) {
                    Some(i) => {
                        let (_, sent) = state.in_flight.remove(i).unwrap_or((nonce, cx.now));
                        let rtt = cx.now - sent;
                        state.last_rtt = Some(rtt);
                        cx.emit(Event::Pong {
                            peer: from,
                            nonce,
                            rtt,
                        });
                        self.retime(from);
                    }
                    None => self.unexpected_pongs += 1,
                }
            }
        }
    }

    fn handle_peer_event(&mut self, cx: &mut Context<'_>, event: &PeerEvent) {
        match event {
            PeerEvent::Ready(info) => {
                // With no periodic pings there is nothing to keep per peer until a ping is
                // asked for: on a node with hundreds of connections that is real memory.
                let Some(next_ping) = self.config.interval.map(|_| cx.now) else {
                    if let Some(old) = self.peers.remove(&info.peer)
                        && let Some(d) = old.deadline
                    {
                        self.timers.remove(&(d, info.peer));
                    }
                    return;
                };
                let next_ping = Some(next_ping);
                if let Some(old) = self.peers.insert(
                    info.peer,
                    PeerState {
                        next_ping,
                        ..Default::default()
                    },
                ) && let Some(d) = old.deadline
                {
                    self.timers.remove(&(d, info.peer));
                }
                self.retime(info.peer);
            }
            PeerEvent::Gone { peer } | PeerEvent::Unreachable { peer } => {
                if let Some(state) = self.peers.remove(peer)
                    && let Some(d) = state.deadline
                {
                    self.timers.remove(&(d, *peer));
                }
            }
        }
    }

    fn handle_timeout(&mut self, cx: &mut Context<'_>) {
        let now = cx.now;
        let due: Vec<PeerId> = self
            .timers
            .iter()
            .take_while(|(t, _)| *t <= now)
            .map(|(_, p)| *p)
            .collect();
        for peer in due {
            let Some(state) = self.peers.get_mut(&peer) else {
                continue;
            };
            while let Some(&(nonce, sent)) = state.in_flight.front() {
                if sent + self.config.timeout > now {
                    break;
                }
                state.in_flight.pop_front();
                cx.emit(Event::Timeout { peer, nonce });
            }
            let ping_due = state.next_ping.is_some_and(|at| at <= now);
            if let (true, Some(interval)) = (ping_due, self.config.interval) {
                state.next_ping = Some(now + interval);
            }
            self.retime(peer);
            if ping_due {
                // A peer with the maximum in flight is already being timed out; skip this round.
                let _ = self.ping(cx, peer);
            }
        }
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.timers.first().map(|(t, _)| *t)
    }
}

#[cfg(test)]
mod tests;

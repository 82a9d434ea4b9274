//! Ping: liveness and round-trip time to each connected peer.
//!
//! Each ready peer is pinged every [`Config::interval`]; a pong within [`Config::timeout`] gives
//! its round-trip time, a missing one a [`Event::Timeout`]. [`Ping::ping`] sends one on demand.
//! This is also the smallest complete example of a protocol: messages, config, state machine.

use std::collections::{BTreeMap, VecDeque};
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
}

/// The ping state machine.
#[derive(Debug)]
pub struct Ping {
    config: Config,
    peers: BTreeMap<PeerId, PeerState>,
    unexpected_pongs: u64,
}

impl Ping {
    /// A ping protocol with `config`.
    pub fn new(config: Config) -> Self {
        Self {
            config,
            peers: BTreeMap::new(),
            unexpected_pongs: 0,
        }
    }

    /// Sends a ping to `peer` now; the answer arrives as an [`Event`].
    pub fn ping(&mut self, cx: &mut Context<'_>, peer: PeerId) -> Result<u64, PingError> {
        let max = self.config.max_outstanding;
        let state = self
            .peers
            .get_mut(&peer)
            .ok_or(PingError::NotConnected(peer))?;
        if state.in_flight.len() >= max {
            return Err(PingError::TooManyOutstanding(max));
        }
        let nonce = cx.rng.next_u64();
        state.in_flight.push_back((nonce, cx.now));
        cx.send(peer, Message::Ping { nonce });
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
                    }
                    None => self.unexpected_pongs += 1,
                }
            }
        }
    }

    fn handle_peer_event(&mut self, cx: &mut Context<'_>, event: &PeerEvent) {
        match event {
            PeerEvent::Ready { peer, .. } => {
                let next_ping = self.config.interval.map(|_| cx.now);
                self.peers.insert(
                    *peer,
                    PeerState {
                        next_ping,
                        ..Default::default()
                    },
                );
            }
            PeerEvent::Gone { peer } => {
                self.peers.remove(peer);
            }
        }
    }

    fn handle_timeout(&mut self, cx: &mut Context<'_>) {
        let now = cx.now;
        let mut due = Vec::new();
        for (peer, state) in &mut self.peers {
            while let Some(&(nonce, sent)) = state.in_flight.front() {
                if sent + self.config.timeout > now {
                    break;
                }
                state.in_flight.pop_front();
                cx.emit(Event::Timeout { peer: *peer, nonce });
            }
            if let (Some(at), Some(interval)) = (state.next_ping, self.config.interval)
                && at <= now
            {
                state.next_ping = Some(now + interval);
                due.push(*peer);
            }
        }
        for peer in due {
            // A peer with the maximum in flight is already being timed out; skip this round.
            let _ = self.ping(cx, peer);
        }
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.peers
            .values()
            .flat_map(|s| {
                let expiry = s
                    .in_flight
                    .front()
                    .map(|(_, sent)| *sent + self.config.timeout);
                expiry.into_iter().chain(s.next_ping)
            })
            .min()
    }
}

#[cfg(test)]
mod tests;

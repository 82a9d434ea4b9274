//! What a run measured: network-wide counters and each node's events.

use std::collections::VecDeque;

use spore_core::node::{CloseReason, Event};
use spore_core::ping;
use spore_core::time::Instant;

/// Network-wide counters of a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Metrics {
    /// Queue entries processed (stale timers excluded); what the trace hash covers.
    pub events_processed: u64,
    /// Messages nodes handed to the network.
    pub messages_sent: u64,
    /// Messages delivered to their recipient.
    pub messages_delivered: u64,
    /// Messages the loss model dropped.
    pub messages_lost: u64,
    /// Messages dropped because a partition lay between sender and receiver.
    pub messages_partitioned: u64,
    /// Messages an adversary ([`Sim::set_tamper`](crate::Sim::set_tamper)) dropped.
    pub messages_dropped_by_adversary: u64,
    /// Messages dropped because their connection was not (or no longer) up: sent to a peer with
    /// no established connection, or arriving after it closed.
    pub messages_unroutable: u64,
    /// Encoded frame bytes handed to the network.
    pub bytes_sent: u64,
    /// Encoded bytes of pub/sub frames (subscriptions, messages, control) handed to the network.
    pub pubsub_bytes_sent: u64,
    /// Pub/sub publish frames (messages, forwarded or first sent) handed to the network.
    pub pubsub_publish_frames_sent: u64,
    /// Their encoded bytes.
    pub pubsub_publish_bytes_sent: u64,
    /// Encoded bytes of swarm frames (handshakes, announcements, requests, data) handed to the
    /// network.
    pub swarm_bytes_sent: u64,
    /// Swarm `Data` frames (answers to requests) handed to the network.
    pub swarm_data_frames_sent: u64,
    /// Their encoded bytes.
    pub swarm_data_bytes_sent: u64,
    /// Encoded frame bytes delivered.
    pub bytes_delivered: u64,
    /// Messages that failed to encode or decode (a bug in the wire code; the connection is
    /// closed, as the runtime would).
    pub codec_errors: u64,
    /// Connections established (both ends told `Connected`).
    pub connections_opened: u64,
    /// Connections closed, by either end or by [`Sim::disconnect`](crate::Sim::disconnect).
    pub connections_closed: u64,
    /// The most connections (open or opening) at any one time: with the node count, what sets
    /// the simulation's peak memory.
    pub connections_peak: u64,
    /// Close notifications not delivered because a newer connection between the same two nodes
    /// was already up at the receiving end.
    pub closes_superseded: u64,
    /// Connections closed because a partition cut them for longer than the idle timeout.
    pub connections_cut: u64,
    /// Dials a node asked for that failed (nobody at that address, offline, NAT, partition).
    pub dials_failed: u64,
    /// Connection attempts refused because the listener is behind a NAT or the dialer has no
    /// UDP.
    pub dials_refused_nat: u64,
    /// Nodes taken offline ([`Sim::stop`](crate::Sim::stop)).
    pub departures: u64,
    /// Nodes restarted ([`Sim::restart`](crate::Sim::restart)).
    pub arrivals: u64,
    /// Node timers fired.
    pub timers_fired: u64,
    /// Times a node asked, right after its timer fired, to be woken at that same instant again;
    /// the simulator wakes it a microsecond later instead of spinning.
    pub timers_deferred: u64,
    /// Events reported by all nodes.
    pub events: EventCounts,
}

/// Counts of the [`Event`]s one node (or all nodes) reported.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct EventCounts {
    /// [`Event::PeerReady`].
    pub peer_ready: u64,
    /// [`Event::PeerGone`].
    pub peer_gone: u64,
    /// [`Event::Close`], for any reason.
    pub close: u64,
    /// [`Event::Close`] with [`CloseReason::HelloTimeout`].
    pub close_hello_timeout: u64,
    /// Ping answered.
    pub pong: u64,
    /// Ping unanswered.
    pub ping_timeout: u64,
    /// Events of kinds this version of the simulator does not count separately.
    pub other: u64,
}

impl EventCounts {
    pub(crate) fn count(&mut self, event: &Event) {
        match event {
            Event::PeerReady { .. } => self.peer_ready += 1,
            Event::PeerGone { .. } => self.peer_gone += 1,
            Event::Close { reason, .. } => {
                self.close += 1;
                if *reason == CloseReason::HelloTimeout {
                    self.close_hello_timeout += 1;
                }
            }
            Event::Ping(ping::Event::Pong { .. }) => self.pong += 1,
            Event::Ping(ping::Event::Timeout { .. }) => self.ping_timeout += 1,
            _ => self.other += 1,
        }
    }
}

/// The most recent events of one node, oldest first, bounded by
/// [`SimConfig::event_log`](crate::SimConfig::event_log).
#[derive(Debug, Clone, Default)]
pub struct EventLog {
    entries: VecDeque<(Instant, Event)>,
    capacity: usize,
    evicted: u64,
}

impl EventLog {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            entries: VecDeque::new(),
            capacity,
            evicted: 0,
        }
    }

    pub(crate) fn push(&mut self, at: Instant, event: Event) {
        if self.capacity == 0 {
            return;
        }
        if self.entries.len() == self.capacity {
            self.entries.pop_front();
            self.evicted += 1;
        }
        self.entries.push_back((at, event));
    }

    /// The kept events with the time each was reported, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &(Instant, Event)> {
        self.entries.iter()
    }

    /// Number of kept events.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no event is kept.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Events that were dropped to keep within the bound.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }
}

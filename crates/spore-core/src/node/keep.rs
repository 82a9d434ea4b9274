//! Kept peers: connections the node re-establishes while it has too few, such as its bootstrap
//! peers.
//!
//! A node that loses its connections is cut off from the network for good unless something
//! dials out again. The keeper owns that decision so that the runtime and the simulator make it
//! the same way: while the node has fewer than `min_peers` ready peers, for each kept peer that
//! is neither ready nor being connected to, it asks the driver to dial
//! ([`Event::Dial`](super::Event::Dial)), and retries with exponential backoff (`backoff_min`
//! doubling up to `backoff_max`) until the peer is ready again. A kept peer that drops is
//! redialed after `backoff_min` if the node is then short of peers.
//!
//! A node with enough peers leaves its kept peers alone, and may prune their connections when
//! idle like any other: ten thousand nodes that share three bootstrap nodes must not hold ten
//! thousand connections to each of them.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use crate::identity::PeerId;
use crate::time::Instant;

use super::{AnyProtocol, Context, PeerEvent};

/// Settings of the keeper.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Most peers kept at once; further requests are refused.
    pub max_peers: usize,
    /// Kept peers are dialed only while the node has fewer ready peers than this.
    pub min_peers: usize,
    /// First retry delay, and the delay before redialing a peer that dropped.
    pub backoff_min: Duration,
    /// Longest retry delay.
    pub backoff_max: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_peers: 64,
            min_peers: 8,
            backoff_min: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
        }
    }
}

/// Why a peer could not be kept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeepError {
    /// The node already keeps `max_peers` peers.
    #[error("already keeping {0} peers")]
    Full(usize),
    /// No address to dial.
    #[error("a kept peer needs at least one address")]
    NoAddress,
    /// The node cannot keep a connection to itself.
    #[error("a node cannot keep a connection to itself")]
    SelfPeer,
}

#[derive(Debug, Clone)]
struct Kept {
    addrs: Vec<SocketAddr>,
    backoff: Duration,
    /// When to dial next if the peer is still not ready; `None` while it is ready or the node
    /// has enough peers.
    retry_at: Option<Instant>,
}

/// The kept peers and their retry schedule.
#[derive(Debug)]
pub(super) struct Keeper {
    config: Config,
    peers: BTreeMap<PeerId, Kept>,
}

impl Keeper {
    pub(super) fn new(config: Config) -> Self {
        Self {
            config,
            peers: BTreeMap::new(),
        }
    }

    /// Starts keeping `peer` (or replaces its addresses); dials now unless it is connected.
    pub(super) fn keep(
        &mut self,
        cx: &mut Context<'_>,
        peer: PeerId,
        mut addrs: Vec<SocketAddr>,
    ) -> Result<(), KeepError> {
        if addrs.is_empty() {
            return Err(KeepError::NoAddress);
        }
        addrs.truncate(crate::wire::MAX_LISTEN_ADDRS);
        if !self.peers.contains_key(&peer) && self.peers.len() >= self.config.max_peers {
            return Err(KeepError::Full(self.config.max_peers));
        }
        let ready = cx.is_ready(&peer);
        let kept = self.peers.entry(peer).or_insert(Kept {
            addrs: Vec::new(),
            backoff: self.config.backoff_min,
            retry_at: None,
        });
        kept.addrs = addrs;
        kept.retry_at = (!ready).then_some(cx.now);
        self.handle_timeout(cx);
        Ok(())
    }

    /// Stops keeping `peer`; an open connection stays open.
    pub(super) fn forget(&mut self, peer: &PeerId) -> bool {
        self.peers.remove(peer).is_some()
    }

    /// The kept peers.
    pub(super) fn peers(&self) -> impl Iterator<Item = &PeerId> {
        self.peers.keys()
    }
}

/// The keeper has no messages of its own, but reacts to peers and time like a protocol.
impl AnyProtocol for Keeper {
    fn handle_peer_event(&mut self, cx: &mut Context<'_>, event: &PeerEvent) {
        match event {
            PeerEvent::Ready(info) => {
                if let Some(kept) = self.peers.get_mut(&info.peer) {
                    kept.backoff = self.config.backoff_min;
                    kept.retry_at = None;
                }
            }
            PeerEvent::Gone { .. } => {
                // Any peer leaving may leave the node short: wake the dormant kept peers.
                let dormant = self.peers.values().any(|k| k.retry_at.is_none());
                if dormant && cx.ready_peers() < self.config.min_peers {
                    let at = cx.now + self.config.backoff_min;
                    for kept in self.peers.values_mut() {
                        kept.retry_at.get_or_insert(at);
                    }
                }
            }
            // A failed dial keeps the retry time set when it was made.
            PeerEvent::Unreachable { .. } => {}
        }
    }

    fn handle_timeout(&mut self, cx: &mut Context<'_>) {
        let now = cx.now;
        let short = cx.ready_peers() < self.config.min_peers;
        for (peer, kept) in &mut self.peers {
            let Some(at) = kept.retry_at else { continue };
            if at > now {
                continue;
            }
            if cx.is_ready(peer) || !short {
                kept.retry_at = None;
                kept.backoff = self.config.backoff_min;
                continue;
            }
            if !cx.is_connecting(peer) {
                cx.dial(*peer, &kept.addrs);
            }
            kept.retry_at = Some(now + kept.backoff);
            kept.backoff = (kept.backoff * 2).min(self.config.backoff_max);
        }
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.peers.values().filter_map(|k| k.retry_at).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::tests_support::{Pair, test_config, test_node};
    use crate::node::{ConnectionEvent, Event};

    fn dials(node: &mut crate::node::Node) -> Vec<PeerId> {
        std::iter::from_fn(|| node.poll_event())
            .filter_map(|e| match e {
                Event::Dial { peer, .. } => Some(peer),
                _ => None,
            })
            .collect()
    }

    fn secs(s: u64) -> Instant {
        Instant::ZERO + Duration::from_secs(s)
    }

    #[test]
    fn failed_dials_back_off_then_a_drop_redials_quickly() {
        let mut a = test_node(1, test_config());
        let b = test_node(2, test_config()).peer_id();
        let addr: SocketAddr = "10.0.0.2:2000".parse().unwrap();
        a.keep_connected(secs(0), b, vec![addr]).unwrap();
        assert_eq!(dials(&mut a), [b], "dials at once");
        // Each failure waits twice as long as the one before: 1, 2, 4 s.
        let mut t = 0;
        for wait in [1, 2, 4] {
            a.handle_connection_event(secs(t), ConnectionEvent::DialFailed { peer: b });
            assert!(dials(&mut a).is_empty());
            assert_eq!(a.poll_timeout(), Some(secs(t + wait)));
            t += wait;
            a.handle_timeout(secs(t));
            assert_eq!(dials(&mut a), [b], "redial after {wait} s");
        }
        assert_eq!(a.kept_peers().collect::<Vec<_>>(), [&b]);
        assert!(a.forget_kept(&b));
        assert!(!a.forget_kept(&b));
    }

    #[test]
    fn a_ready_peer_that_drops_is_redialed_after_the_minimum_backoff() {
        let mut pair = Pair::new(Duration::from_millis(10));
        let b = pair.b.peer_id();
        let addr: SocketAddr = "10.0.0.2:2000".parse().unwrap();
        pair.handshake();
        let now = pair.now;
        pair.a.keep_connected(now, b, vec![addr]).unwrap();
        assert!(dials(&mut pair.a).is_empty(), "already connected");
        assert_eq!(pair.a.poll_timeout().filter(|t| *t <= now), None);
        pair.a
            .handle_connection_event(now, ConnectionEvent::Closed { peer: b });
        assert!(dials(&mut pair.a).is_empty());
        pair.a.handle_timeout(now + Duration::from_secs(1));
        assert_eq!(dials(&mut pair.a), [b]);
    }

    #[test]
    fn a_node_with_enough_peers_leaves_kept_peers_alone() {
        let mut config = test_config();
        config.keep.min_peers = 0;
        config.outbound.min_outbound = 0;
        let mut a = test_node(1, config);
        let b = test_node(2, test_config()).peer_id();
        let addr: SocketAddr = "10.0.0.2:2000".parse().unwrap();
        a.keep_connected(secs(0), b, vec![addr]).unwrap();
        assert!(dials(&mut a).is_empty());
        assert_eq!(a.poll_timeout(), None);
    }

    #[test]
    fn bounds_and_bad_requests_are_refused() {
        let mut config = test_config();
        config.keep.max_peers = 1;
        let mut a = test_node(1, config);
        let addr: SocketAddr = "10.0.0.2:2000".parse().unwrap();
        let (b, c) = (
            test_node(2, test_config()).peer_id(),
            test_node(3, test_config()).peer_id(),
        );
        assert_eq!(
            a.keep_connected(secs(0), b, vec![]),
            Err(KeepError::NoAddress)
        );
        assert_eq!(
            a.keep_connected(secs(0), a.peer_id(), vec![addr]),
            Err(KeepError::SelfPeer)
        );
        a.keep_connected(secs(0), b, vec![addr]).unwrap();
        a.keep_connected(secs(0), b, vec![addr]).unwrap();
        assert_eq!(
            a.keep_connected(secs(0), c, vec![addr]),
            Err(KeepError::Full(1))
        );
    }
}

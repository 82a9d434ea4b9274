//! # spore-core
//!
//! The protocol core of spore, written sans-IO: every protocol is a deterministic state machine
//! that takes inputs (messages, connection events, the current time) and produces outputs
//! (messages to send, events, the next timeout). No sockets, no clocks, no global RNG, no async
//! runtime. The runtime (`spore-net`) drives it over QUIC; the simulator (`spore-sim`) drives the
//! very same code over a modelled network.
//!
//! ```
//! use spore_core::identity::Keypair;
//! use spore_core::node::{Config, ConnectionEvent, Direction, Event, Node};
//! use spore_core::pow::{Difficulty, Stamp};
//! use spore_core::time::Instant;
//!
//! let config = Config { difficulty: Difficulty(8), ..Config::default() };
//! let make = |seed: u8| {
//!     let key = Keypair::from_secret_bytes([seed; 32]);
//!     let stamp = Stamp::mint(&key.peer_id(), config.difficulty);
//!     Node::new(key, stamp, config.clone(), [seed; 32], Instant::ZERO).unwrap()
//! };
//! let (mut a, mut b) = (make(1), make(2));
//! let addr = "127.0.0.1:4000".parse().unwrap();
//! let now = Instant::ZERO;
//!
//! // The transport reports an authenticated connection on both sides...
//! a.handle_connection_event(now, ConnectionEvent::Connected { peer: b.peer_id(), addr, direction: Direction::Outbound });
//! b.handle_connection_event(now, ConnectionEvent::Connected { peer: a.peer_id(), addr, direction: Direction::Inbound });
//! // ...and the driver carries each node's transmits to the other.
//! while let Some(t) = a.poll_transmit() { b.handle_message(now, a.peer_id(), t.message); }
//! while let Some(t) = b.poll_transmit() { a.handle_message(now, b.peer_id(), t.message); }
//!
//! assert!(matches!(a.poll_event(), Some(Event::PeerReady { .. })));
//! assert!(matches!(b.poll_event(), Some(Event::PeerReady { .. })));
//! ```
//!
//! Modules: [`identity`] (keys, [`PeerId`](identity::PeerId), signatures), [`pow`] (the id
//! stamp), [`wire`] (frames and messages), [`node`] (the composed state machine and the
//! [`Protocol`](node::Protocol) trait), [`ping`] (the first protocol), [`time`].

/// Orders a newtype over `[u8; 32]` by its bytes, as the derived order would, but compared as
/// two 128-bit numbers: much cheaper than a byte-slice comparison in the maps keyed by ids.
macro_rules! ord_by_bytes32 {
    ($t:ty) => {
        impl Ord for $t {
            fn cmp(&self, other: &Self) -> std::cmp::Ordering {
                crate::bytes32_cmp(&self.0, &other.0)
            }
        }

        impl PartialOrd for $t {
            fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
                Some(self.cmp(other))
            }
        }
    };
}

pub mod doc;
pub mod gossip;
pub mod group;
pub mod identity;
pub mod kad;
pub mod nat;
pub mod node;
pub mod pex;
pub mod ping;
pub mod pow;
pub mod pubsub;
mod random;
pub mod superpeer;
pub mod swarm;
pub mod time;
pub mod trust;
pub mod wire;

pub use identity::{Keypair, PeerId};
pub use node::Node;

/// Compares two 32-byte strings in byte order, as two big-endian 128-bit numbers.
#[inline]
pub(crate) fn bytes32_cmp(a: &[u8; 32], b: &[u8; 32]) -> std::cmp::Ordering {
    let half = |x: &[u8; 32], i: usize| {
        let mut h = [0u8; 16];
        h.copy_from_slice(&x[i * 16..i * 16 + 16]);
        u128::from_be_bytes(h)
    };
    half(a, 0)
        .cmp(&half(b, 0))
        .then_with(|| half(a, 1).cmp(&half(b, 1)))
}

#[cfg(test)]
mod order_tests {
    use super::bytes32_cmp;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn same_order_as_bytes(a in any::<[u8; 32]>(), b in any::<[u8; 32]>(), shared in 0usize..32) {
            let mut b = b;
            b[..shared].copy_from_slice(&a[..shared]);
            prop_assert_eq!(bytes32_cmp(&a, &b), a.cmp(&b));
            prop_assert_eq!(bytes32_cmp(&a, &a), std::cmp::Ordering::Equal);
        }
    }
}

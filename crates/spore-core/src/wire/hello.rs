//! The `Hello` handshake message.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::{WireError, check_bound};
use crate::pow::Stamp;

/// Most protocol versions a `Hello` may list.
pub const MAX_VERSIONS: usize = 8;
/// Most listen addresses a `Hello` may carry.
pub const MAX_LISTEN_ADDRS: usize = 16;
/// Longest agent string, in bytes.
pub const MAX_AGENT_LEN: usize = 64;

/// The first message each side sends on a connection.
///
/// The sender's identity is not in the message: the transport has already authenticated it (the
/// TLS certificate's key *is* the PeerId), and the stamp is checked against that key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Protocol versions the sender speaks, most preferred first.
    pub versions: Vec<u16>,
    /// What the sender offers the network.
    pub capabilities: Capabilities,
    /// Addresses the sender accepts connections on.
    pub listen_addrs: Vec<SocketAddr>,
    /// The address the sender sees this connection coming from: the receiver's reflexive
    /// address, as STUN would report it.
    pub observed_addr: SocketAddr,
    /// The sender's proof-of-work stamp.
    pub stamp: Stamp,
    /// Software name and version, for diagnostics only.
    pub agent: String,
}

impl Hello {
    pub(crate) fn validate(&self) -> Result<(), WireError> {
        check_bound("hello.versions", self.versions.len(), MAX_VERSIONS)?;
        check_bound(
            "hello.listen_addrs",
            self.listen_addrs.len(),
            MAX_LISTEN_ADDRS,
        )?;
        check_bound("hello.agent", self.agent.len(), MAX_AGENT_LEN)?;
        Ok(())
    }
}

/// Roles a node offers, as a bit set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct Capabilities(pub u32);

impl Capabilities {
    /// Answers DHT queries and stores records (a Kademlia server, not just a client).
    pub const DHT_SERVER: Capabilities = Capabilities(1 << 0);
    /// Relays traffic for peers that cannot connect directly.
    pub const RELAY: Capabilities = Capabilities(1 << 1);
    /// Believes itself reachable from the public internet.
    pub const PUBLIC: Capabilities = Capabilities(1 << 2);
    /// Serves as a super-peer: its reachability is confirmed by others, it has run long enough
    /// and has room for leaves (see [`crate::superpeer`]).
    pub const SUPER_PEER: Capabilities = Capabilities(1 << 3);

    /// No capabilities.
    pub const fn empty() -> Self {
        Capabilities(0)
    }

    /// Whether every bit of `other` is set.
    pub const fn contains(self, other: Capabilities) -> bool {
        self.0 & other.0 == other.0
    }

    /// The names of the known bits set, for display.
    pub fn names(self) -> Vec<&'static str> {
        [
            (Self::DHT_SERVER, "dht-server"),
            (Self::RELAY, "relay"),
            (Self::PUBLIC, "public"),
            (Self::SUPER_PEER, "super-peer"),
        ]
        .into_iter()
        .filter(|(c, _)| self.contains(*c))
        .map(|(_, n)| n)
        .collect()
    }
}

impl std::ops::BitOr for Capabilities {
    type Output = Capabilities;
    fn bitor(self, rhs: Self) -> Self {
        Capabilities(self.0 | rhs.0)
    }
}

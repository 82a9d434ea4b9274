//! What a node tells others about a third node in lookup answers.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

use crate::identity::PeerId;
use crate::pow::Stamp;

/// Most addresses carried per contact.
pub const MAX_CONTACT_ADDRS: usize = 4;

/// A contact's addresses. One is kept inline, as most nodes have one: routing tables hold
/// contacts by the hundred and lookup answers copy twenty at a time, so a heap block per
/// contact would cost an allocation and, worse, a cache miss each. The wire form is a
/// length-prefixed list, the same as a `Vec`'s.
pub type Addrs = SmallVec<[SocketAddr; 1]>;

/// A node's id, its proof-of-work stamp and where to reach it, as passed around in lookups.
///
/// Contacts are hints, not facts: they are unsigned, so a contact only enters a routing table
/// after this node has talked to the peer over an authenticated connection. The stamp lets a
/// receiver skip ids that carry no work with a single hash, before spending a connection on them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Contact {
    /// The node's id.
    pub peer: PeerId,
    /// Its proof-of-work stamp.
    pub stamp: Stamp,
    /// Addresses to dial, at most [`MAX_CONTACT_ADDRS`].
    pub addrs: Addrs,
}

impl Contact {
    /// This contact with `addr` as its first address (and no other copy of it), within
    /// [`MAX_CONTACT_ADDRS`]: how a routing-table entry keeps the address the node was confirmed
    /// at.
    pub fn confirmed_at(mut self, addr: SocketAddr) -> Contact {
        self.addrs.retain(|a| *a != addr);
        self.addrs.insert(0, addr);
        self.addrs.truncate(MAX_CONTACT_ADDRS);
        self
    }
}

//! What a node tells others about a third node in lookup answers.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::identity::PeerId;
use crate::pow::Stamp;

/// Most addresses carried per contact.
pub const MAX_CONTACT_ADDRS: usize = 4;

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
    pub addrs: Vec<SocketAddr>,
}

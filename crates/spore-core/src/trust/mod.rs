//! Trust: what this node believes about other peers.
//!
//! - [`reputation`]: a local, decaying score per peer, fed by every protocol's observations and
//!   used by the node to refuse peers that lie, and by the protocols to prefer good peers.
//! - [`eviction`]: which inbound connection makes room for a newcomer when the slots are full.
pub mod eviction;
pub mod reputation;
pub mod wot;

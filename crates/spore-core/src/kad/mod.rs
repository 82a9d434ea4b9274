//! Kademlia: the structured overlay that finds nodes and records by key.
//!
//! - [`Key`]s are 256-bit; a node sits at `blake3(public key)`, so nobody picks their position.
//! - The [`RoutingTable`](table::RoutingTable) keeps k = 20 nodes per bucket, pings the
//!   least-recently-seen entry before replacing it, keeps long-lived contacts in a replacement
//!   cache, and limits how many entries may share an IP prefix (eclipse resistance).
//! - Lookups ask α = 3 nodes at a time and stop when the k closest known nodes have all
//!   answered; value, provider and peer-record lookups run over d = 4 disjoint paths.
//! - Records ([`record`]) are signed, sequence-numbered and expire; every record from a peer is
//!   verified before it is stored or returned, and stores enforce quotas ([`store`]).
//! - Only nodes whose address is confirmed reachable, and whose id carries a valid proof-of-work
//!   stamp, enter routing tables; nodes in [`Mode::Client`] use the DHT without entering them.
//!
//! Parts: [`Config`], [`Message`], the state machine [`Kad`], and its results ([`Event`]).

mod config;
mod contact;
mod key;
mod lookup;
mod machine;
mod message;
pub mod record;
pub mod store;
pub mod table;

pub use config::{Config, Mode};
pub use contact::{Addrs, Contact, MAX_CONTACT_ADDRS};
pub use key::{Distance, Key};
pub use machine::{Kad, KadError, KadStats};
pub use message::{MAX_CONTACTS, MAX_PROVIDERS, MAX_REASON_LEN, Message, Request, Response};

use std::time::Duration;

use crate::identity::PeerId;
use record::{PeerRecord, ProviderRecord, ValueRecord};

/// Identifies one lookup started by a command; its result arrives as [`Event::QueryDone`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct QueryId(pub u64);

/// What Kademlia reports.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A lookup finished.
    QueryDone {
        /// Which one.
        id: QueryId,
        /// What it found.
        result: QueryResult,
        /// How it went.
        stats: QueryStats,
    },
    /// A routing-table peer's own signed record, verified: where it can be reached.
    PeerRecord {
        /// The record.
        record: PeerRecord,
    },
}

/// The result of a finished lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum QueryResult {
    /// The bootstrap lookup for our own id; `peers` nodes answered among the closest.
    Bootstrap {
        /// How many of the closest nodes answered.
        peers: usize,
    },
    /// A bucket refresh.
    Refresh,
    /// The k closest nodes that answered, closest first.
    FindNode {
        /// The nodes.
        closest: Vec<Contact>,
    },
    /// A peer's signed record, if any node had it (or the peer itself answered).
    FindPeer {
        /// The peer looked for.
        peer: PeerId,
        /// Its record.
        record: Option<PeerRecord>,
    },
    /// The best valid value found (highest sequence number).
    GetValue {
        /// The key.
        key: Key,
        /// The record.
        record: Option<ValueRecord>,
    },
    /// A value was stored on `stored` of the closest nodes.
    PutValue {
        /// The key.
        key: Key,
        /// The sequence number of the stored record.
        seq: u64,
        /// Acknowledged stores.
        stored: usize,
    },
    /// Providers found.
    GetProviders {
        /// The content key.
        key: Key,
        /// Verified provider records.
        providers: Vec<ProviderRecord>,
    },
    /// A provider record was stored on `stored` nodes.
    AddProvider {
        /// The content key.
        key: Key,
        /// Acknowledged stores.
        stored: usize,
    },
    /// This node's peer record was stored on `stored` nodes.
    PutPeer {
        /// Acknowledged stores.
        stored: usize,
    },
}

/// How a lookup went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueryStats {
    /// Hops to the closest node reached (1 = it was in our own table).
    pub hops: u32,
    /// Requests sent.
    pub requests: u32,
    /// Answers received.
    pub responses: u32,
    /// Time from start to finish.
    pub duration: Duration,
}

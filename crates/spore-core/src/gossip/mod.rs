//! Gossip: the unstructured overlay. HyParView membership keeps every node linked to a few
//! random neighbors, and keyword search floods queries over those links, Gnutella style.
//!
//! # Membership (HyParView)
//!
//! After Leitão, Pereira and Rodrigues, *HyParView: a membership protocol for reliable
//! gossip-based broadcast* (DSN 2007), adapted to spore: peers are [`PeerId`]s, the node makes
//! the connections (a protocol asks with [`Context::dial_and_send`]), and every ready peer has a
//! verified proof-of-work stamp.
//!
//! - The **active view** holds at most [`Config::active_size`] neighbors. It is symmetric: a
//!   node adds a peer only when the peer has agreed to add it too (or asked to be added), and
//!   tells a peer it drops with [`Message::Disconnect`]. Queries travel over it.
//! - The **passive view** holds at most [`Config::passive_size`] signed [`PeerRecord`]s of other
//!   peers: candidates to replace neighbors that fail. Every record is
//!   [verified](PeerRecord::verify) (expiry within [`Config::max_record_ttl`], stamp, signature)
//!   before it is stored; one that fails is dropped and counted in [`Stats::invalid_records`].
//!   Records without addresses, expired records and our own are never stored.
//! - **Join.** When a connection we dialed becomes ready while our active view is empty and no
//!   join is pending, we send the peer (the contact) [`Message::Join`] with our own record. The
//!   contact adds us to its active view (evicting a random neighbor if it is full), answers
//!   [`Message::NeighborReply`] `{ accepted: true }` (on which we add it), and sends
//!   [`Message::ForwardJoin`] with ttl [`Config::active_walk`] to each of its other neighbors.
//!   A join unanswered for 10 s is abandoned. A node that finds itself with no neighbor, nothing
//!   pending and an empty passive view joins again through a random connected peer.
//! - **ForwardJoin** is a random walk over active views. Where its ttl reaches 0, or at a node
//!   whose only neighbor is the sender, the joiner is asked to be a neighbor with a
//!   high-priority [`Message::Neighbor`]; at ttl [`Config::passive_walk`] the joiner's record
//!   goes into the passive view.
//! - **Neighbor** requests are accepted when they are high priority (evicting a random neighbor
//!   if need be) or when the active view has room; the answer is a `NeighborReply`, and the
//!   requester adds the peer when accepted. Each neighbor's record is kept when known, so that a
//!   neighbor we evict, or that disconnects us, moves to the passive view.
//! - **Failures.** A neighbor whose connection closes is dropped (not moved to passive: it
//!   failed) and repair runs at once. A peer that asked to be a neighbor cannot be reached, its
//!   record is dropped.
//! - **Repair.** Every [`Config::repair_interval`] while the active view is short (backing off
//!   after refusals), and at once after each failure, random passive peers are asked to be
//!   neighbors until active and pending requests together reach `active_size`, at most 2
//!   pending at a time (high priority if the active view is empty). A request unanswered for
//!   10 s is forgotten.
//! - **Shuffle.** Every [`Config::shuffle_interval`] (the first at a random offset within it, so
//!   nodes do not synchronise) a node sends a random neighbor [`Message::Shuffle`]: its own
//!   record, up to [`Config::shuffle_active`] records of neighbors and [`Config::shuffle_passive`]
//!   of passive peers, on a walk of [`Config::active_walk`] hops. Where the walk ends, the node
//!   dials the origin with [`Message::ShuffleReply`] (as many of its passive records as it got)
//!   and takes the records into its passive view; the origin does the same with the reply. A
//!   record replaces a stored one of the same peer only if it
//!   [supersedes](PeerRecord::supersedes) it; a full passive view evicts first the records just
//!   sent away, then random ones.
//! - Walks ([`Message::ForwardJoin`], [`Message::Shuffle`]) are accepted only from neighbors:
//!   they travel over active links, and a stranger cannot make us dial anyone through them.
//!
//! # Keyword search
//!
//! Names shared with [`Gossip::share`] form a bounded local index. [`Gossip::search`] sends
//! [`Message::Query`] (lowercase words, a random id, ttl [`Config::search_ttl`]) to up to
//! [`Config::search_fanout`] random neighbors. A node that gets a query from a neighbor:
//!
//! - ignores it if it has seen the id (counted in [`Stats::queries_duplicate`]) or if the
//!   neighbor exceeds [`Config::query_rate`] (a token bucket per neighbor, burst twice the rate;
//!   counted in [`Stats::queries_rate_limited`]);
//! - remembers the id and who sent it for [`Config::search_timeout`] (at most
//!   [`Config::max_queries`] ids, oldest dropped first);
//! - answers with [`Message::Hits`] if names in its index contain every word (case-insensitive
//!   substring match, at most [`MAX_HITS`] names): signed by the responder over
//!   `postcard(("spore-search-hits-v1", id, hits))`, with its own record;
//! - forwards the query with ttl − 1 to up to `search_fanout` random neighbors other than the
//!   sender, if the ttl was above 1.
//!
//! Hits travel back along the path the query came by: each node checks the responder's record
//! and signature (dropping and counting what fails) and passes the message, unchanged, to the
//! neighbor it got the query from. The searcher reports [`Event::SearchHits`], then
//! [`Event::SearchFinished`] when the query's id expires. At most
//! [`Config::max_hits_per_query`] hits per query are reported, and about as many forwarded (a
//! forwarding node passes whole messages, so it may exceed the bound by one message's hits).
//! A node without listen addresses has no record, so it can search but neither joins,
//! shuffles, nor answers queries.
//!
//! When [`Config::enabled`] is false the protocol sends nothing, ignores every message, and has
//! no timer.
//!
//! Parts: [`Config`], [`Message`], the state machine [`Gossip`], its results ([`Event`]) and
//! counters ([`Stats`]).

mod membership;
mod message;
mod search;

pub use message::{
    Hit, MAX_HIT_NAME_LEN, MAX_HITS, MAX_SHUFFLE_RECORDS, MAX_TTL, MAX_WORD_LEN, MAX_WORDS, Message,
};
pub use search::{SearchError, ShareError};

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::identity::{Keypair, PeerId};
use crate::kad::record::{PeerRecord, RecordLimits};
use crate::node::{Context, PeerEvent, Protocol};
use crate::pow::Difficulty;
use crate::time::Instant;

/// How long a neighbor request or a join may go unanswered before it is given up.
const PENDING_TIMEOUT: Duration = Duration::from_secs(10);

/// Most neighbor requests that repair keeps pending at a time.
const MAX_PENDING_REPAIRS: usize = 2;

/// Most connected peers remembered as contacts to join through again.
const MAX_CONTACTS: usize = 64;

/// Most doublings of the repair interval after refusals (see [`Config::repair_interval`]).
const MAX_REPAIR_BACKOFF: u32 = 4;

/// The shortest shuffle or repair interval honoured: a zero interval would wake the node forever.
const MIN_INTERVAL: Duration = Duration::from_millis(100);

/// Gossip's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Whether gossip runs at all. When `false` the node sends nothing and ignores every gossip
    /// message. Default `true`.
    pub enabled: bool,
    /// Most neighbors (the active view). Default 8.
    pub active_size: usize,
    /// Most passive records. Default 64.
    pub passive_size: usize,
    /// Hops of a join's and a shuffle's random walk (HyParView's ARWL; capped at [`MAX_TTL`]).
    /// Default 6.
    pub active_walk: u8,
    /// At which remaining ttl a join's walk leaves the joiner's record in the passive view
    /// (PRWL). Default 3.
    pub passive_walk: u8,
    /// Time between two shuffles. Default 30 s.
    pub shuffle_interval: Duration,
    /// Most neighbors' records in a shuffle (ka). Default 3.
    pub shuffle_active: usize,
    /// Most passive records in a shuffle (kp). Default 4.
    pub shuffle_passive: usize,
    /// How often the active view is topped up from the passive view while it is short.
    /// Each refused request (or unanswered join) doubles the wait, up to 16 times this or
    /// `shuffle_interval`, whichever is less, so that a node in a saturated overlay does not
    /// ask forever at full rate; losing or gaining a neighbor resets it. Default 2 s.
    pub repair_interval: Duration,
    /// Records expiring further ahead than this are rejected. Default 48 h (as the DHT's).
    pub max_record_ttl: Duration,
    /// Hops of a query (capped at [`MAX_TTL`]). Default 4.
    pub search_ttl: u8,
    /// Most neighbors a query is sent or forwarded to. Default 4.
    pub search_fanout: usize,
    /// How long a query's id is remembered and its hits accepted. Default 10 s.
    pub search_timeout: Duration,
    /// Most query ids remembered (ours and those we forward); the oldest is dropped first.
    /// Default 4096.
    pub max_queries: usize,
    /// Most hits reported, and about as many forwarded, per query; the rest are dropped.
    /// Default 100.
    pub max_hits_per_query: usize,
    /// Queries per second each neighbor may send us, with bursts of twice as many; the excess is
    /// ignored and counted. 0 ignores every query. Default 10.
    pub query_rate: u32,
    /// Most names in the local index ([`Gossip::share`]). Default 100 000.
    pub max_shared: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            enabled: true,
            active_size: 8,
            passive_size: 64,
            active_walk: 6,
            passive_walk: 3,
            shuffle_interval: Duration::from_secs(30),
            shuffle_active: 3,
            shuffle_passive: 4,
            repair_interval: Duration::from_secs(2),
            max_record_ttl: crate::kad::record::DEFAULT_MAX_TTL,
            search_ttl: 4,
            search_fanout: 4,
            search_timeout: Duration::from_secs(10),
            max_queries: 4096,
            max_hits_per_query: 100,
            query_rate: 10,
            max_shared: 100_000,
        }
    }
}

/// What gossip reports.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// `peer` joined the active view.
    NeighborUp {
        /// The new neighbor.
        peer: PeerId,
    },
    /// `peer` left the active view (evicted, disconnected us, or its connection closed).
    NeighborDown {
        /// The former neighbor.
        peer: PeerId,
    },
    /// Matches for one of our searches, from one responder.
    SearchHits {
        /// The id [`Gossip::search`] returned.
        query: u64,
        /// Who shares the names (verified), and where to reach it.
        responder: PeerRecord,
        /// The matching names.
        hits: Vec<Hit>,
    },
    /// One of our searches expired ([`Config::search_timeout`]); no more hits will come.
    SearchFinished {
        /// The id [`Gossip::search`] returned.
        query: u64,
        /// Hits reported for it in all.
        hits: usize,
    },
}

/// Counters, for status and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Stats {
    /// Joins we accepted as the contact.
    pub joins: u64,
    /// Joins we sent.
    pub joins_sent: u64,
    /// Join walks received from neighbors (and verified).
    pub forward_joins: u64,
    /// Neighbor requests we sent.
    pub neighbor_requests: u64,
    /// Neighbor requests we accepted.
    pub neighbors_accepted: u64,
    /// Neighbor requests we refused (active view full, not high priority).
    pub neighbors_refused: u64,
    /// Our neighbor requests that were refused.
    pub neighbor_refusals: u64,
    /// Our neighbor requests and joins left unanswered too long.
    pub neighbor_timeouts: u64,
    /// Disconnects received from neighbors.
    pub disconnects: u64,
    /// Neighbors we dropped to make room for another (each sent a `Disconnect`).
    pub evictions: u64,
    /// Neighbors lost because their connection closed.
    pub neighbors_failed: u64,
    /// Shuffles we started.
    pub shuffles_sent: u64,
    /// Shuffle walks we passed on.
    pub shuffles_forwarded: u64,
    /// Shuffle walks that ended here (answered and integrated).
    pub shuffles_received: u64,
    /// Replies to our shuffles integrated.
    pub shuffle_replies: u64,
    /// Records that failed verification (forged, expired, too long-lived, weak stamp, oversized).
    pub invalid_records: u64,
    /// Membership messages ignored: a walk or query from a peer that is not a neighbor, a join
    /// or neighbor request whose record is not the sender's, a reply nobody asked for.
    pub ignored: u64,
    /// Searches we started.
    pub queries_sent: u64,
    /// Queries received from neighbors and processed.
    pub queries_received: u64,
    /// Queries we passed on.
    pub queries_forwarded: u64,
    /// Queries ignored because their id was already seen.
    pub queries_duplicate: u64,
    /// Queries ignored because the neighbor sent too many.
    pub queries_rate_limited: u64,
    /// Hits messages we answered queries with.
    pub hits_sent: u64,
    /// Hits messages received and accepted (for our searches or to pass on).
    pub hits_received: u64,
    /// Hits messages passed on towards the searcher.
    pub hits_forwarded: u64,
    /// Hits messages with a bad responder record or signature.
    pub hits_invalid: u64,
    /// Hits messages for a query id we do not know (never seen, or expired).
    pub hits_unknown: u64,
    /// Hits dropped: the query had its fill, or the way back is gone.
    pub hits_dropped: u64,
}

/// A neighbor request we sent, awaiting its reply.
#[derive(Debug)]
struct Pending {
    since: Instant,
    /// The peer's record, kept for the active view (or back to passive on refusal).
    record: Option<PeerRecord>,
}

/// The gossip state machine. See the [module docs](self).
#[derive(Debug)]
pub struct Gossip {
    config: Config,
    keypair: Keypair,
    local: PeerId,
    limits: RecordLimits,
    /// Neighbors, with their records when known.
    active: BTreeMap<PeerId, Option<PeerRecord>>,
    passive: BTreeMap<PeerId, PeerRecord>,
    /// Neighbor requests awaiting a reply. Never holds an active or passive peer.
    pending: BTreeMap<PeerId, Pending>,
    /// The join we sent and when, awaiting the contact's reply.
    join: Option<(PeerId, Instant)>,
    /// Ready peers (at most [`MAX_CONTACTS`]): whom to join through again if we are left alone.
    contacts: BTreeSet<PeerId>,
    /// The records sent with our outstanding shuffle (preferred for eviction when its reply
    /// comes); `None` when no shuffle is outstanding.
    shuffle_sent: Option<Vec<PeerId>>,
    /// `None` until the first input, when the random first offset is drawn.
    next_shuffle: Option<Instant>,
    next_repair: Option<Instant>,
    /// Doublings of the repair interval since the last neighbor change.
    repair_backoff: u32,
    search: search::Search,
    stats: Stats,
}

impl Gossip {
    /// Gossip for the node with identity `keypair` (which signs our search hits), on a network
    /// of proof-of-work `difficulty` (which received records must meet).
    pub fn new(keypair: Keypair, difficulty: Difficulty, config: Config) -> Self {
        Self {
            local: keypair.peer_id(),
            limits: RecordLimits {
                max_ttl: config.max_record_ttl,
                difficulty,
            },
            search: search::Search::new(config.max_shared),
            config,
            keypair,
            active: BTreeMap::new(),
            passive: BTreeMap::new(),
            pending: BTreeMap::new(),
            join: None,
            contacts: BTreeSet::new(),
            shuffle_sent: None,
            next_shuffle: None,
            next_repair: None,
            repair_backoff: 0,
            stats: Stats::default(),
        }
    }

    /// The settings.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// The neighbors, in id order.
    pub fn active_view(&self) -> impl Iterator<Item = &PeerId> {
        self.active.keys()
    }

    /// The passive records, in id order.
    pub fn passive_view(&self) -> impl Iterator<Item = &PeerRecord> {
        self.passive.values()
    }

    /// Draws the first shuffle's random offset, at the first input.
    fn start(&mut self, cx: &mut Context<'_>) {
        if self.next_shuffle.is_none() {
            let interval = self.shuffle_interval();
            let micros = u64::try_from(interval.as_micros()).unwrap_or(u64::MAX);
            let offset = rand_core::RngCore::next_u64(cx.rng) % micros.max(1);
            self.next_shuffle = Some(cx.now + Duration::from_micros(offset));
            self.next_repair = Some(cx.now + self.repair_interval());
        }
    }

    fn shuffle_interval(&self) -> Duration {
        self.config.shuffle_interval.max(MIN_INTERVAL)
    }

    fn repair_interval(&self) -> Duration {
        self.config.repair_interval.max(MIN_INTERVAL)
    }

    /// The repair interval after backing off.
    fn repair_delay(&self) -> Duration {
        let base = self.repair_interval();
        let longest = self.shuffle_interval().max(base);
        (base * (1 << self.repair_backoff)).min(longest)
    }

    /// Whether the repair timer has anything to do: requests or a join to time out, or a short
    /// active view and someone to ask.
    fn needs_repair(&self) -> bool {
        !self.pending.is_empty()
            || self.join.is_some()
            || (self.active.len() < self.config.active_size
                && (!self.passive.is_empty()
                    || (self.active.is_empty() && !self.contacts.is_empty())))
    }
}

/// Reports `e` to the node's owner.
fn emit(cx: &mut Context<'_>, e: Event) {
    cx.emit(crate::node::Event::Gossip(e));
}

impl Protocol for Gossip {
    type Message = Message;

    fn handle_message(&mut self, cx: &mut Context<'_>, from: PeerId, msg: Message) {
        if !self.config.enabled || from == self.local {
            return;
        }
        self.start(cx);
        match msg {
            Message::Join { record } => self.on_join(cx, from, record),
            Message::ForwardJoin { record, ttl } => self.on_forward_join(cx, from, record, ttl),
            Message::Neighbor {
                high_priority,
                record,
            } => self.on_neighbor(cx, from, high_priority, record),
            Message::NeighborReply { accepted } => self.on_neighbor_reply(cx, from, accepted),
            Message::Disconnect => self.on_disconnect(cx, from),
            Message::Shuffle {
                origin,
                records,
                ttl,
            } => self.on_shuffle(cx, from, origin, records, ttl),
            Message::ShuffleReply { records } => self.on_shuffle_reply(cx, from, records),
            Message::Query { id, words, ttl } => self.on_query(cx, from, id, words, ttl),
            Message::Hits {
                id,
                responder,
                hits,
                signature,
            } => self.on_hits(cx, id, responder, hits, signature),
        }
    }

    fn handle_peer_event(&mut self, cx: &mut Context<'_>, event: &PeerEvent) {
        if !self.config.enabled {
            return;
        }
        self.start(cx);
        match event {
            PeerEvent::Ready(info) => self.on_ready(cx, info),
            PeerEvent::Gone { peer } => self.on_gone(cx, *peer),
            PeerEvent::Unreachable { peer } => self.on_unreachable(cx, *peer),
        }
    }

    fn handle_timeout(&mut self, cx: &mut Context<'_>) {
        if !self.config.enabled {
            return;
        }
        self.start(cx);
        self.expire_queries(cx);
        if self.next_shuffle.is_some_and(|t| t <= cx.now) {
            self.shuffle(cx);
        }
        if self.next_repair.is_some_and(|t| t <= cx.now) {
            self.repair(cx);
        }
    }

    fn poll_timeout(&self) -> Option<Instant> {
        if !self.config.enabled {
            return None;
        }
        let repair = self.next_repair.filter(|_| self.needs_repair());
        [self.next_shuffle, repair, self.search.next_expiry()]
            .into_iter()
            .flatten()
            .min()
    }
}

#[cfg(test)]
mod tests;

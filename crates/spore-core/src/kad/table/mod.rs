//! The Kademlia routing table: the nodes this node knows, bucketed by XOR distance.
//!
//! Like everything in spore-core the table is sans-IO and deterministic. It never sends a message
//! and never reads a clock: the Kademlia state machine feeds it what happened ([`insert`] when a
//! peer is confirmed at an address, [`mark_seen`] when one answers, [`ping_failed`] when one does
//! not) and the time, and the table tells it whom to ping ([`InsertOutcome::Pending`]) and when its
//! eviction pings expire ([`poll_timeout`] / [`handle_timeout`]).
//!
//! # Layout
//!
//! A flat array of [`BUCKETS`] buckets indexed by [`Key::bucket_index`]: bucket `i` holds the keys
//! whose XOR distance from ours lies in `[2^i, 2^(i+1))`. Buckets are not split on demand as in
//! the paper's tree-shaped table: the flat array is what that tree becomes when the bucket
//! covering our own key has been split all the way down, and it needs no splitting logic or
//! rebalancing. Only the top `log2(network size)` or so buckets ever fill: half of all keys fall in
//! bucket 255, a quarter in 254, and so on. Each bucket holds at most [`Config::k`] entries,
//! ordered least-recently-seen first, and a replacement cache of at most
//! [`Config::replacement_cache`] candidates.
//!
//! # Eviction: ping before evict
//!
//! A full bucket never drops a live entry for a newcomer. Stale tables, full of contacts that
//! left long ago, are the common failure of deployed DHTs, and the Kademlia paper's measurement
//! is that the longer a node has been up, the likelier it is to stay up. So when a bucket is full
//! the newcomer goes to the replacement cache and, if the least-recently-seen entry has not been
//! heard from for [`Config::stale_after`], the table asks the caller to ping it
//! ([`InsertOutcome::Pending`]), recording a deadline of [`Config::ping_timeout`]. An entry heard
//! from more recently is presumed alive, as BEP 5 treats a node that answered in the last 15
//! minutes as good: without that rule every newcomer to a full bucket costs a ping (and, with idle
//! connections closed, a handshake), and in a busy network each ping's own connection brings the
//! pinged node a newcomer of its own, so pings beget pings. An answer ([`mark_seen`]) keeps the
//! old entry and moves it to the most-recently-seen end; a failure ([`ping_failed`]) or the
//! deadline passing ([`handle_timeout`]) evicts it and promotes the best candidate. There is at
//! most one eviction ping outstanding per bucket: a newcomer arriving meanwhile is just cached
//! ([`InsertOutcome::Cached`]). Because the table only acts on evidence, an attacker cannot
//! displace live entries by flooding a bucket with new ids.
//!
//! # Replacement cache
//!
//! The cache prefers long-lived candidates too. Promotion picks the candidate that has been known
//! longest (smallest [`Entry::added`]) among those that pass the IP limits at that moment. When the
//! cache is full a newcomer is dropped ([`InsertOutcome::Dropped`]) rather than displacing an older
//! candidate: fresh ids are cheap to make, age is not. The one exception is a cached candidate
//! that could no longer be promoted because of the IP limits (the table changed since it was
//! cached): a newcomer that passes them takes its place, so unusable candidates do not block a
//! cache forever. A candidate seen again keeps its place and gets its `last_seen` and address
//! refreshed; a candidate whose request failed is forgotten.
//!
//! # IP limits (eclipse resistance)
//!
//! With [`Config::ip_limits`] on (the default), an attacker who controls one subnet cannot fill
//! the table however many ids it mints:
//!
//! - at most one entry per IP address in a bucket ([`Rejection::SameIpInBucket`]);
//! - at most [`Config::max_per_ipv4_24_in_bucket`] entries from one IPv4 /24 in a bucket, and
//!   [`Config::max_per_ipv6_48_in_bucket`] from one IPv6 /48 ([`Rejection::IpLimitBucket`]);
//! - at most [`Config::max_per_ipv4_16_in_table`] entries from one IPv4 /16 in the whole table,
//!   and [`Config::max_per_ipv6_32_in_table`] from one IPv6 /32 ([`Rejection::IpLimitTable`]).
//!
//! The same rules hold among the candidates of one replacement cache (so one subnet cannot fill a
//! cache either), a candidate is cached only if it could join its bucket were there room, and
//! promotion checks them again. Addresses are compared in canonical form: an IPv4-mapped IPv6
//! address counts as the IPv4 address it carries.
//!
//! Loopback addresses (`127.0.0.0/8`, `::1`) are exempt. Every node a machine runs shares them
//! (integration tests and the demo run dozens of nodes on 127.0.0.1), and an attacker who can
//! reach us from the loopback is already inside the machine. Private ranges are *not* exempt: a
//! network of nodes behind one NAT, or a hostile LAN, is exactly what the limits are for.
//!
//! # Bucket refresh
//!
//! The table records, per bucket, the last time an entry in it was inserted or seen, or the caller
//! refreshed it ([`mark_bucket_refreshed`]). [`stale_buckets`] lists the buckets a lookup should
//! refresh: those from the lowest non-empty bucket up to 255 with no activity within the refresh
//! interval. Empty buckets in that range are included (a lookup into them is how they fill, and
//! right after bootstrap this is the paper's join step: refresh every bucket farther than the
//! closest neighbour); buckets below the lowest non-empty one are not, since they are expected to
//! be empty and a lookup of our own key, which the caller does anyway, covers them.
//!
//! # Determinism
//!
//! Only `Vec`s and `BTreeMap`s, no randomness; ties are broken by position (insertion order) or
//! by [`PeerId`]. The same inputs give the same table.
//!
//! [`insert`]: RoutingTable::insert
//! [`mark_seen`]: RoutingTable::mark_seen
//! [`ping_failed`]: RoutingTable::ping_failed
//! [`poll_timeout`]: RoutingTable::poll_timeout
//! [`handle_timeout`]: RoutingTable::handle_timeout
//! [`stale_buckets`]: RoutingTable::stale_buckets
//! [`mark_bucket_refreshed`]: RoutingTable::mark_bucket_refreshed

pub(crate) mod ip;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::time::Duration;

use self::ip::{BucketPrefix, TablePrefix};
use super::key::Distance;
use super::{Contact, Key};
use crate::identity::PeerId;
use crate::time::Instant;

/// The number of buckets: one per bit of the key space.
pub const BUCKETS: usize = 256;

/// The routing table's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Bucket size: the most entries a bucket holds. Default 20, Kademlia's `k`.
    pub k: usize,
    /// The most candidates a bucket's replacement cache holds. Default 20 (`k`).
    pub replacement_cache: usize,
    /// The most entries from one IPv4 /24 in one bucket. Default 2.
    pub max_per_ipv4_24_in_bucket: usize,
    /// The most entries from one IPv4 /16 in the whole table. Default 10.
    pub max_per_ipv4_16_in_table: usize,
    /// The most entries from one IPv6 /48 in one bucket. Default 2.
    pub max_per_ipv6_48_in_bucket: usize,
    /// The most entries from one IPv6 /32 in the whole table. Default 10.
    pub max_per_ipv6_32_in_table: usize,
    /// Whether the IP limits apply at all. Default `true`; the simulator's eclipse scenario turns
    /// them off to measure what they buy.
    pub ip_limits: bool,
    /// How long an eviction ping may take before it counts as failed. Default 10 s. The table
    /// only records the deadline; the caller sends the ping.
    pub ping_timeout: Duration,
    /// A full bucket's least-recently-seen entry is pinged for a newcomer only if it has not been
    /// seen for this long. Default 15 min (BEP 5's "good node" window).
    pub stale_after: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            k: 20,
            replacement_cache: 20,
            max_per_ipv4_24_in_bucket: 2,
            max_per_ipv4_16_in_table: 10,
            max_per_ipv6_48_in_bucket: 2,
            max_per_ipv6_32_in_table: 10,
            ip_limits: true,
            ping_timeout: Duration::from_secs(10),
            stale_after: Duration::from_secs(15 * 60),
        }
    }
}

/// A node in the table or in a replacement cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The node as last presented to us; its first address is the one it was confirmed at
    /// ([`addr`](Self::addr)).
    pub contact: Contact,
    /// Its position in the key space, `Key::for_peer(&contact.peer)`.
    pub key: Key,
    /// When the table first learned of the node, in its bucket or its replacement cache; kept on
    /// promotion, so that a candidate's age carries over.
    pub added: Instant,
    /// When the node was last confirmed alive.
    pub last_seen: Instant,
}

impl Entry {
    /// The address the node was confirmed at: the one we dialed, or the one it connected from
    /// when that equals its listen address. Kept as the contact's first address rather than a
    /// field of its own: tables hold entries by the hundred, on every node of a simulation.
    pub fn addr(&self) -> SocketAddr {
        self.contact.addrs[0]
    }
}

/// What [`RoutingTable::insert`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum InsertOutcome {
    /// The node is a new entry in its bucket.
    Inserted,
    /// The node was already an entry: its contact, address and `last_seen` are refreshed and it
    /// moved to the most-recently-seen end. This also answers an eviction ping to it.
    Updated,
    /// The bucket is full: the node is kept in the replacement cache, and the caller should ping
    /// `ping`, the bucket's least-recently-seen entry, then report the answer with
    /// [`RoutingTable::mark_seen`] or [`RoutingTable::ping_failed`]. The table gives up on the
    /// ping after [`Config::ping_timeout`] ([`RoutingTable::handle_timeout`]).
    Pending {
        /// Whom to ping.
        ping: PeerId,
    },
    /// The bucket is full and the node is kept (or refreshed) in the replacement cache; an
    /// eviction ping for the bucket is already outstanding, or its least-recently-seen entry was
    /// seen within [`Config::stale_after`], so there is nothing to send.
    Cached,
    /// The bucket and its replacement cache are both full, and the cache keeps its older
    /// candidates: the node is not kept. If `ping` is `Some`, the table started an eviction ping
    /// exactly as for [`InsertOutcome::Pending`] and the caller should send it.
    Dropped {
        /// Whom to ping, if a ping was started.
        ping: Option<PeerId>,
    },
    /// The node was not admitted; the table is unchanged.
    Rejected(Rejection),
}

impl InsertOutcome {
    /// The eviction ping the caller should send, if any.
    pub fn ping(&self) -> Option<PeerId> {
        match self {
            Self::Pending { ping } | Self::Dropped { ping: Some(ping) } => Some(*ping),
            _ => None,
        }
    }
}

/// Why [`RoutingTable::insert`] refused a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum Rejection {
    /// The node is this node.
    #[error("the contact is this node itself")]
    OwnKey,
    /// Its bucket (or the bucket's replacement cache) already has a node at this IP address.
    #[error("its bucket already holds a node at this IP address")]
    SameIpInBucket,
    /// Its bucket (or the bucket's replacement cache) already has the most nodes allowed from
    /// this IPv4 /24 or IPv6 /48.
    #[error("its bucket already holds the most nodes allowed from this /24 (IPv4) or /48 (IPv6)")]
    IpLimitBucket,
    /// The table already has the most nodes allowed from this IPv4 /16 or IPv6 /32.
    #[error("the table already holds the most nodes allowed from this /16 (IPv4) or /32 (IPv6)")]
    IpLimitTable,
}

/// Counters for metrics. They only grow.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Inserts that added a new entry ([`InsertOutcome::Inserted`]).
    pub inserted: u64,
    /// Inserts that refreshed an entry ([`InsertOutcome::Updated`]).
    pub updated: u64,
    /// Inserts that kept a candidate in a replacement cache (`Pending` or `Cached`).
    pub cached: u64,
    /// Inserts whose candidate was not kept because the cache was full (`Dropped`).
    pub dropped: u64,
    /// Eviction pings started.
    pub pings_started: u64,
    /// Entries evicted after a failed request or an expired eviction ping.
    pub evicted: u64,
    /// Candidates promoted from a replacement cache into their bucket.
    pub promoted: u64,
    /// Inserts rejected with [`Rejection::OwnKey`].
    pub rejected_own_key: u64,
    /// Inserts rejected with [`Rejection::SameIpInBucket`].
    pub rejected_same_ip_in_bucket: u64,
    /// Inserts rejected with [`Rejection::IpLimitBucket`].
    pub rejected_ip_limit_bucket: u64,
    /// Inserts rejected with [`Rejection::IpLimitTable`].
    pub rejected_ip_limit_table: u64,
}

impl Stats {
    /// How many inserts were rejected for `reason`.
    pub fn rejected(&self, reason: Rejection) -> u64 {
        match reason {
            Rejection::OwnKey => self.rejected_own_key,
            Rejection::SameIpInBucket => self.rejected_same_ip_in_bucket,
            Rejection::IpLimitBucket => self.rejected_ip_limit_bucket,
            Rejection::IpLimitTable => self.rejected_ip_limit_table,
        }
    }

    fn record(&mut self, outcome: &InsertOutcome) {
        let counter = match outcome {
            InsertOutcome::Inserted => &mut self.inserted,
            InsertOutcome::Updated => &mut self.updated,
            InsertOutcome::Pending { .. } | InsertOutcome::Cached => &mut self.cached,
            InsertOutcome::Dropped { .. } => &mut self.dropped,
            InsertOutcome::Rejected(Rejection::OwnKey) => &mut self.rejected_own_key,
            InsertOutcome::Rejected(Rejection::SameIpInBucket) => {
                &mut self.rejected_same_ip_in_bucket
            }
            InsertOutcome::Rejected(Rejection::IpLimitBucket) => &mut self.rejected_ip_limit_bucket,
            InsertOutcome::Rejected(Rejection::IpLimitTable) => &mut self.rejected_ip_limit_table,
        };
        *counter = counter.saturating_add(1);
        if outcome.ping().is_some() {
            self.pings_started = self.pings_started.saturating_add(1);
        }
    }
}

/// An eviction ping the caller was asked to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PendingPing {
    /// The entry being checked; always an entry of the bucket.
    peer: PeerId,
    /// When the ping counts as failed.
    deadline: Instant,
}

#[derive(Debug, Default)]
struct Bucket {
    /// At most `k`, least-recently-seen first.
    entries: Vec<Entry>,
    /// The replacement cache, at most `replacement_cache`, in the order candidates arrived.
    candidates: Vec<Entry>,
    /// The outstanding eviction ping, if any.
    pending: Option<PendingPing>,
    /// The last insert, answer or refresh in this bucket.
    last_activity: Option<Instant>,
}

impl Bucket {
    fn entry_pos(&self, peer: &PeerId) -> Option<usize> {
        self.entries.iter().position(|e| e.contact.peer == *peer)
    }

    fn candidate_pos(&self, peer: &PeerId) -> Option<usize> {
        self.candidates.iter().position(|e| e.contact.peer == *peer)
    }

    /// Forgets the outstanding eviction ping if it was to `peer`.
    fn resolve_ping(&mut self, peer: &PeerId) {
        if self.pending.is_some_and(|p| p.peer == *peer) {
            self.pending = None;
        }
    }

    /// Starts an eviction ping to the least-recently-seen entry unless one is outstanding or
    /// that entry was seen within `stale_after`.
    fn start_ping(&mut self, config: &Config, now: Instant) -> Option<PeerId> {
        if self.pending.is_some() {
            return None;
        }
        let oldest = self.entries.first()?;
        if now.saturating_duration_since(oldest.last_seen) < config.stale_after {
            return None;
        }
        let peer = oldest.contact.peer;
        self.pending = Some(PendingPing {
            peer,
            deadline: now + config.ping_timeout,
        });
        Some(peer)
    }
}

/// How many table entries share each limited prefix.
type PrefixCounts = BTreeMap<TablePrefix, usize>;

/// The Kademlia routing table. See the [module docs](self) for its policies.
pub struct RoutingTable {
    local: PeerId,
    local_key: Key,
    config: Config,
    buckets: Buckets,
    /// Table entries per /16 (IPv4) or /32 (IPv6), loopback excluded. Kept whether or not the
    /// limits apply.
    prefixes: PrefixCounts,
    len: usize,
    stats: Stats,
}

/// Pushes `entry`, growing the vector by one slot at a time: a table holds thousands of small
/// vectors that fill once and then mostly stay full, so doubling would leave a third of their
/// memory unused.
fn push_tight(v: &mut Vec<Entry>, entry: Entry) {
    if v.len() == v.capacity() {
        v.reserve_exact(1);
    }
    v.push(entry);
}

/// The buckets from the lowest one ever needed up to 255. The low buckets hold nodes that share
/// more leading bits with us than the network's size makes likely, so in any real table they
/// stay empty; they take no memory (112 bytes each, 28 KiB for all 256) until a node lands there.
#[derive(Debug)]
struct Buckets {
    /// Index of `v[0]`.
    base: usize,
    v: Vec<Bucket>,
}

impl Buckets {
    fn new() -> Self {
        Self {
            base: BUCKETS,
            v: Vec::new(),
        }
    }

    fn get(&self, index: usize) -> Option<&Bucket> {
        self.v.get(index.checked_sub(self.base)?)
    }

    fn get_mut(&mut self, index: usize) -> Option<&mut Bucket> {
        self.v.get_mut(index.checked_sub(self.base)?)
    }

    /// Bucket `index`, created (with every empty one between it and the lowest so far) if need
    /// be; `None` only for an index past the last bucket.
    fn grow(&mut self, index: usize) -> Option<&mut Bucket> {
        if index >= BUCKETS {
            return None;
        }
        if index < self.base {
            let missing = self.base - index;
            self.v.splice(0..0, (0..missing).map(|_| Bucket::default()));
            self.base = index;
        }
        self.get_mut(index)
    }

    /// The buckets with indices in `range` that exist (the others are empty).
    fn range(&self, range: Range<usize>) -> &[Bucket] {
        let start = range.start.max(self.base);
        let end = range.end.min(BUCKETS);
        if start >= end {
            return &[];
        }
        &self.v[start - self.base..end - self.base]
    }

    fn iter(&self) -> impl Iterator<Item = &Bucket> {
        self.v.iter()
    }

    /// `(index, bucket)` in index order.
    fn indexed(&self) -> impl Iterator<Item = (usize, &Bucket)> {
        let base = self.base;
        self.v.iter().enumerate().map(move |(j, b)| (j + base, b))
    }
}

impl fmt::Debug for RoutingTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RoutingTable")
            .field("local", &self.local)
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl RoutingTable {
    /// An empty table for the node `local`.
    pub fn new(local: PeerId, config: Config) -> Self {
        Self {
            local,
            local_key: Key::for_peer(&local),
            config,
            buckets: Buckets::new(),
            prefixes: PrefixCounts::new(),
            len: 0,
            stats: Stats::default(),
        }
    }

    /// This node's id.
    pub fn local_peer(&self) -> PeerId {
        self.local
    }

    /// This node's position in the key space.
    pub fn local_key(&self) -> Key {
        self.local_key
    }

    /// The table's settings.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The table's counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Offers `contact`, confirmed at `addr` (the address we dialed, or the one it connected from
    /// when that equals its listen address), to the table. The caller has checked its stamp.
    ///
    /// A node already in the table is refreshed ([`InsertOutcome::Updated`]); if its address
    /// changed, the new one must pass the IP limits or the insert is rejected and the entry kept
    /// as it was. A node already in a replacement cache is refreshed there, or moves into its
    /// bucket if the bucket has room.
    pub fn insert(&mut self, contact: Contact, addr: SocketAddr, now: Instant) -> InsertOutcome {
        let outcome = self.insert_inner(contact, addr, now);
        self.stats.record(&outcome);
        outcome
    }

    fn insert_inner(&mut self, contact: Contact, addr: SocketAddr, now: Instant) -> InsertOutcome {
        let peer = contact.peer;
        if peer == self.local {
            return InsertOutcome::Rejected(Rejection::OwnKey);
        }
        let key = Key::for_peer(&peer);
        // Only our own key has no bucket.
        let Some(index) = self.local_key.bucket_index(&key) else {
            return InsertOutcome::Rejected(Rejection::OwnKey);
        };
        let Self {
            config,
            buckets,
            prefixes,
            len,
            ..
        } = self;
        let Some(bucket) = buckets.grow(index) else {
            return InsertOutcome::Rejected(Rejection::OwnKey);
        };
        let ip = addr.ip();

        if let Some(pos) = bucket.entry_pos(&peer) {
            let mut entry = bucket.entries.remove(pos);
            if entry.addr().ip().to_canonical() != ip.to_canonical() {
                let others = bucket.entries.iter().map(|e| e.addr().ip());
                let admitted = check_group(config, ip, others)
                    .and_then(|()| check_table(config, ip, prefixes, Some(entry.addr().ip())));
                if let Err(reason) = admitted {
                    bucket.entries.insert(pos, entry);
                    return InsertOutcome::Rejected(reason);
                }
            }
            uncount(prefixes, entry.addr().ip());
            count(prefixes, ip);
            entry.contact = contact.confirmed_at(addr);
            entry.last_seen = now;
            push_tight(&mut bucket.entries, entry);
            bucket.last_activity = Some(now);
            bucket.resolve_ping(&peer);
            return InsertOutcome::Updated;
        }

        // New to the bucket (perhaps cached): it must be able to join it, room or not.
        let cached = bucket.candidate_pos(&peer);
        let admitted = check_group(config, ip, bucket.entries.iter().map(|e| e.addr().ip()))
            .and_then(|()| check_table(config, ip, prefixes, None));
        if let Err(reason) = admitted {
            return InsertOutcome::Rejected(reason);
        }
        let added = cached
            .and_then(|pos| bucket.candidates.get(pos))
            .map_or(now, |c| c.added);
        let entry = Entry {
            contact: contact.confirmed_at(addr),
            key,
            added,
            last_seen: now,
        };

        if bucket.entries.len() < config.k {
            if let Some(pos) = cached {
                bucket.candidates.remove(pos);
            }
            count(prefixes, ip);
            push_tight(&mut bucket.entries, entry);
            bucket.last_activity = Some(now);
            *len += 1;
            return InsertOutcome::Inserted;
        }

        // The bucket is full: the replacement cache, whose candidates obey the bucket rules
        // among themselves.
        let other_candidates = bucket
            .candidates
            .iter()
            .enumerate()
            .filter(|&(i, _)| Some(i) != cached)
            .map(|(_, c)| c.addr().ip());
        if let Err(reason) = check_group(config, ip, other_candidates) {
            return InsertOutcome::Rejected(reason);
        }
        let kept = if let Some(slot) = cached.and_then(|pos| bucket.candidates.get_mut(pos)) {
            *slot = entry;
            true
        } else if bucket.candidates.len() < config.replacement_cache {
            push_tight(&mut bucket.candidates, entry);
            true
        } else if let Some(stuck) = bucket
            .candidates
            .iter()
            .position(|c| admissible(config, c.addr().ip(), &bucket.entries, prefixes).is_err())
        {
            bucket.candidates.remove(stuck);
            push_tight(&mut bucket.candidates, entry);
            true
        } else {
            false
        };
        let ping = bucket.start_ping(config, now);
        match (kept, ping) {
            (true, Some(ping)) => InsertOutcome::Pending { ping },
            (true, None) => InsertOutcome::Cached,
            (false, ping) => InsertOutcome::Dropped { ping },
        }
    }

    /// `peer` answered a request: refreshes its `last_seen` and moves it to the most-recently-seen
    /// end of its bucket. This answers an outstanding eviction ping to it; the candidates that
    /// prompted the ping stay cached for later. A cached candidate gets its `last_seen` refreshed.
    /// Unknown peers are ignored.
    pub fn mark_seen(&mut self, peer: &PeerId, now: Instant) {
        let Some(bucket) = self.bucket_of_mut(peer) else {
            return;
        };
        if let Some(pos) = bucket.entry_pos(peer) {
            let mut entry = bucket.entries.remove(pos);
            entry.last_seen = now;
            push_tight(&mut bucket.entries, entry);
            bucket.last_activity = Some(now);
            bucket.resolve_ping(peer);
        } else if let Some(candidate) = bucket
            .candidates
            .iter_mut()
            .find(|c| c.contact.peer == *peer)
        {
            candidate.last_seen = now;
        }
    }

    /// An eviction ping, or any other request, to `peer` failed: removes its entry and promotes
    /// the longest-known replacement candidate that passes the IP limits, returning the promoted
    /// entry. A failed cached candidate is forgotten (and `None` returned).
    ///
    /// `now` is part of every input's shape; eviction itself does not depend on it.
    pub fn ping_failed(&mut self, peer: &PeerId, now: Instant) -> Option<Entry> {
        let _ = now;
        let index = self.index_of(peer)?;
        if self.take_entry(index, peer).is_some() {
            self.stats.evicted = self.stats.evicted.saturating_add(1);
            return self.promote(index);
        }
        if let Some(bucket) = self.buckets.get_mut(index) {
            bucket.candidates.retain(|c| c.contact.peer != *peer);
        }
        None
    }

    /// Forgets `peer`, whether an entry or a cached candidate, and returns its entry if it had
    /// one. Unlike [`RoutingTable::ping_failed`], promotes no candidate: the next insert or
    /// eviction in the bucket fills the slot.
    pub fn remove(&mut self, peer: &PeerId) -> Option<Entry> {
        let index = self.index_of(peer)?;
        let entry = self.take_entry(index, peer);
        if let Some(bucket) = self.buckets.get_mut(index) {
            bucket.candidates.retain(|c| c.contact.peer != *peer);
        }
        entry
    }

    /// Eviction pings whose deadline is at or before `now` count as failed: their entries are
    /// evicted and replaced as by [`RoutingTable::ping_failed`]. Returns the evicted peers, in
    /// bucket order; promoted candidates can be seen with [`RoutingTable::get`].
    pub fn handle_timeout(&mut self, now: Instant) -> Vec<PeerId> {
        let mut evicted = Vec::new();
        for index in self.buckets.base..BUCKETS {
            let Some(bucket) = self.buckets.get_mut(index) else {
                continue;
            };
            let Some(expired) = bucket.pending.filter(|p| p.deadline <= now) else {
                continue;
            };
            bucket.pending = None;
            if self.take_entry(index, &expired.peer).is_some() {
                self.stats.evicted = self.stats.evicted.saturating_add(1);
                self.promote(index);
                evicted.push(expired.peer);
            }
        }
        evicted
    }

    /// The earliest eviction-ping deadline, when [`RoutingTable::handle_timeout`] should next be
    /// called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.buckets
            .iter()
            .filter_map(|b| b.pending.map(|p| p.deadline))
            .min()
    }

    /// The (at most) `n` entries closest to `target` by XOR distance, closest first.
    ///
    /// Exact, and cheaper than sorting the whole table: from `target`'s point of view the buckets
    /// fall into groups whose distances do not overlap. With `j` the bucket `target` falls in,
    /// bucket `j` holds everything closer than `2^j`, buckets `0..j` together hold distances in
    /// `[2^j, 2^(j+1))`, and each bucket `i > j` holds distances in `[2^i, 2^(i+1))`. The groups are
    /// visited in that order, each sorted, until `n` entries are found.
    pub fn closest(&self, target: &Key, n: usize) -> Vec<&Entry> {
        let mut out = Vec::with_capacity(n.min(self.len));
        let groups: Vec<Range<usize>> = match self.local_key.bucket_index(target) {
            // Distances to our own key are the bucket order itself.
            None => (0..BUCKETS).map(|i| i..i + 1).collect(),
            Some(j) => {
                let mut groups = vec![j..j + 1, 0..j];
                groups.extend((j + 1..BUCKETS).map(|i| i..i + 1));
                groups
            }
        };
        for group in groups {
            if out.len() >= n {
                break;
            }
            // Distances are computed once, and only the `room` nearest are sorted. Distinct
            // entries have distinct keys, so the distance alone orders them.
            let mut found: Vec<(Distance, &Entry)> = self
                .buckets
                .range(group)
                .iter()
                .flat_map(|b| b.entries.iter())
                .map(|e| (target.distance(&e.key), e))
                .collect();
            // `room` > 0: the loop stops once `out` holds `n`.
            let room = n - out.len();
            if found.len() > room {
                found.select_nth_unstable_by_key(room - 1, |&(d, _)| d);
                found.truncate(room);
            }
            found.sort_unstable_by_key(|&(d, _)| d);
            out.extend(found.into_iter().map(|(_, e)| e));
        }
        out
    }

    /// The entry for `peer`, if it is in the table (replacement candidates are not).
    pub fn get(&self, peer: &PeerId) -> Option<&Entry> {
        let bucket = self.buckets.get(self.index_of(peer)?)?;
        bucket.entries.iter().find(|e| e.contact.peer == *peer)
    }

    /// Whether `peer` is in the table (replacement candidates are not).
    pub fn contains(&self, peer: &PeerId) -> bool {
        self.get(peer).is_some()
    }

    /// The number of entries (replacement candidates not counted).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the table has no entries.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// All entries: bucket by bucket from the closest (0) to the farthest (255), each
    /// least-recently-seen first.
    pub fn iter(&self) -> impl Iterator<Item = &Entry> {
        self.buckets.iter().flat_map(|b| b.entries.iter())
    }

    /// All replacement candidates, in the same bucket order, each cache in arrival order.
    pub fn candidates(&self) -> impl Iterator<Item = &Entry> {
        self.buckets.iter().flat_map(|b| b.candidates.iter())
    }

    /// `(bucket index, entries)` for every non-empty bucket, in index order.
    pub fn bucket_fill(&self) -> Vec<(usize, usize)> {
        self.buckets
            .indexed()
            .filter(|(_, b)| !b.entries.is_empty())
            .map(|(i, b)| (i, b.entries.len()))
            .collect()
    }

    /// The buckets to refresh with a lookup: from the lowest non-empty bucket up to 255, those
    /// with no insert, answer or refresh within `refresh` before `now` (including those never
    /// active). Empty when the table is empty: there is nothing to look up through.
    pub fn stale_buckets(&self, now: Instant, refresh: Duration) -> Vec<usize> {
        let Some(lowest) = self
            .buckets
            .indexed()
            .find(|(_, b)| !b.entries.is_empty())
            .map(|(i, _)| i)
        else {
            return Vec::new();
        };
        self.buckets
            .indexed()
            .filter(|(i, _)| *i >= lowest)
            .filter(|(_, b)| b.last_activity.is_none_or(|t| t + refresh <= now))
            .map(|(i, _)| i)
            .collect()
    }

    /// A lookup refreshed bucket `index` at `now`. Out-of-range indices are ignored.
    pub fn mark_bucket_refreshed(&mut self, index: usize, now: Instant) {
        if let Some(bucket) = self.buckets.get_mut(index) {
            bucket.last_activity = Some(now);
        }
    }

    fn index_of(&self, peer: &PeerId) -> Option<usize> {
        self.local_key.bucket_index(&Key::for_peer(peer))
    }

    fn bucket_of_mut(&mut self, peer: &PeerId) -> Option<&mut Bucket> {
        let index = self.index_of(peer)?;
        self.buckets.get_mut(index)
    }

    /// Removes `peer`'s entry from bucket `index`, keeping the counts and the pending ping right.
    fn take_entry(&mut self, index: usize, peer: &PeerId) -> Option<Entry> {
        let bucket = self.buckets.get_mut(index)?;
        let pos = bucket.entry_pos(peer)?;
        let entry = bucket.entries.remove(pos);
        bucket.resolve_ping(peer);
        uncount(&mut self.prefixes, entry.addr().ip());
        self.len = self.len.saturating_sub(1);
        Some(entry)
    }

    /// Moves the longest-known admissible candidate of bucket `index` into it, if there is room.
    fn promote(&mut self, index: usize) -> Option<Entry> {
        let Self {
            config,
            buckets,
            prefixes,
            len,
            stats,
            ..
        } = self;
        let bucket = buckets.get_mut(index)?;
        if bucket.entries.len() >= config.k {
            return None;
        }
        let best = bucket
            .candidates
            .iter()
            .enumerate()
            .filter(|(_, c)| admissible(config, c.addr().ip(), &bucket.entries, prefixes).is_ok())
            // The first of equals: the earliest arrival.
            .min_by_key(|(_, c)| c.added)
            .map(|(i, _)| i)?;
        let entry = bucket.candidates.remove(best);
        // Keep the bucket ordered by last_seen: a candidate not heard from lately goes near the
        // front, where the next eviction ping checks it first.
        let at = bucket
            .entries
            .partition_point(|e| e.last_seen <= entry.last_seen);
        bucket.entries.insert(at, entry.clone());
        count(prefixes, entry.addr().ip());
        *len += 1;
        stats.promoted = stats.promoted.saturating_add(1);
        Some(entry)
    }
}

/// Whether a node at `ip` may join a bucket holding `entries` (of which it is not one).
fn admissible(
    config: &Config,
    ip: IpAddr,
    entries: &[Entry],
    prefixes: &PrefixCounts,
) -> Result<(), Rejection> {
    check_group(config, ip, entries.iter().map(|e| e.addr().ip()))
        .and_then(|()| check_table(config, ip, prefixes, None))
}

/// The per-bucket rules for a node at `ip` joining a group (a bucket's entries, or its
/// replacement cache) whose other members are at `others`.
fn check_group(
    config: &Config,
    ip: IpAddr,
    others: impl Iterator<Item = IpAddr>,
) -> Result<(), Rejection> {
    if !config.ip_limits {
        return Ok(());
    }
    let Some(ip) = ip::limited(ip) else {
        return Ok(());
    };
    let prefix = BucketPrefix::of(ip);
    let mut same_prefix = 0usize;
    for other in others.filter_map(ip::limited) {
        if other == ip {
            return Err(Rejection::SameIpInBucket);
        }
        if BucketPrefix::of(other) == prefix {
            same_prefix += 1;
        }
    }
    if same_prefix >= prefix.limit(config) {
        return Err(Rejection::IpLimitBucket);
    }
    Ok(())
}

/// The table-wide rule for a node at `ip`; `current` is the address it is counted under now if
/// it is already an entry.
fn check_table(
    config: &Config,
    ip: IpAddr,
    prefixes: &PrefixCounts,
    current: Option<IpAddr>,
) -> Result<(), Rejection> {
    if !config.ip_limits {
        return Ok(());
    }
    let Some(ip) = ip::limited(ip) else {
        return Ok(());
    };
    let prefix = TablePrefix::of(ip);
    if current.and_then(ip::limited).map(TablePrefix::of) == Some(prefix) {
        return Ok(());
    }
    if prefixes.get(&prefix).copied().unwrap_or(0) >= prefix.limit(config) {
        return Err(Rejection::IpLimitTable);
    }
    Ok(())
}

fn count(prefixes: &mut PrefixCounts, ip: IpAddr) {
    if let Some(ip) = ip::limited(ip) {
        let n = prefixes.entry(TablePrefix::of(ip)).or_default();
        *n = n.saturating_add(1);
    }
}

fn uncount(prefixes: &mut PrefixCounts, ip: IpAddr) {
    let Some(ip) = ip::limited(ip) else {
        return;
    };
    let prefix = TablePrefix::of(ip);
    if let Some(n) = prefixes.get_mut(&prefix) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            prefixes.remove(&prefix);
        }
    }
}

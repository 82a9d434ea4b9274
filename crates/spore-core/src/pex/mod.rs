//! Peer exchange (PEX): connected peers swap signed peer records, so a node learns where other
//! nodes are without asking the DHT, and keeps learning after every bootstrap node is gone.
//!
//! - When a peer becomes ready the node sends it [`Message::Records`]: its own signed
//!   [`PeerRecord`] first, then the most recently seen records of its cache, at most
//!   [`Config::max_per_message`] in all. After that, whenever something is new to the peer, it
//!   sends the peer what is new since their previous exchange, at most one message per
//!   [`Config::min_interval`]. New means: its own record re-signed (every quarter of
//!   [`Config::record_ttl`], and when its addresses change), or an *update*: a record that
//!   supersedes a cached one and came from its own peer. Other records are passed on only in
//!   first exchanges. So an update travels two hops by itself, a record that a full cache
//!   evicted and then heard of again starts no epidemic, and a settled network sends nothing.
//!   A node never sends a peer its own record, nor records it learned from that very peer, and
//!   it only sends to ready peers: PEX never dials.
//! - Only signed records travel, and every record is [verified](PeerRecord::verify) (size,
//!   expiry within [`Config::max_record_ttl`], proof-of-work stamp, signature) before it is
//!   cached or reported; a record that fails is dropped and counted.
//! - The cache holds at most [`Config::cache_size`] records, one per peer, ordered by when they
//!   were last seen. A sighting is a new or superseding record, or direct contact with the peer:
//!   its connection becoming ready or closing, and each exchange it sends. Records merely
//!   relayed again by a third peer are not sightings, so two
//!   nodes cannot keep a dead peer's record fresh by passing it back and forth. The least
//!   recently seen record is evicted first, and a cached record is only replaced by one that
//!   [supersedes](PeerRecord::supersedes) it. Expired records leave the cache when they expire.
//! - A peer that sends again sooner than half of [`Config::min_interval`] after its previous
//!   exchange is ignored for that message (and counted): honest peers send once per interval.
//!
//! Parts: [`Config`], [`Message`], the state machine [`Pex`], and its results ([`Event`]).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::identity::{Keypair, PeerId};
use crate::kad::record::{MAX_RECORD_ADDRS, MAX_RECORD_RELAYS, PeerRecord, RecordLimits};
use crate::node::{Context, PeerEvent, Protocol};
use crate::pow::{Difficulty, Stamp};
use crate::time::Instant;
use crate::wire::{WireError, check_bound};

/// Most records in one [`Message::Records`]; a message with more is a `Bounds` error.
pub const MAX_RECORDS: usize = 16;

/// The shortest exchange interval honoured: a zero interval would wake the node forever.
const MIN_INTERVAL_FLOOR: Duration = Duration::from_secs(1);

/// PEX's messages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// Signed peer records: the sender's own first (if it has addresses and the recipient has
    /// not got this version yet), then others it has seen recently. At most [`MAX_RECORDS`].
    Records(Vec<PeerRecord>),
}

impl Message {
    /// Checks counts a decoder must bound: at most [`MAX_RECORDS`] records, each with at most
    /// [`MAX_RECORD_ADDRS`] addresses and [`MAX_RECORD_RELAYS`] relays.
    pub fn validate(&self) -> Result<(), WireError> {
        let Message::Records(records) = self;
        check_bound("pex.records", records.len(), MAX_RECORDS)?;
        for r in records {
            check_bound("pex.record.addrs", r.addrs().len(), MAX_RECORD_ADDRS)?;
            check_bound("pex.record.relays", r.relays().len(), MAX_RECORD_RELAYS)?;
        }
        Ok(())
    }
}

/// PEX's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Whether PEX runs at all. When `false` the node neither sends nor accepts exchanges.
    /// Default `true`.
    pub enabled: bool,
    /// Most records sent in one message, our own included (capped at [`MAX_RECORDS`]); also
    /// the most taken from one received message. Default 16.
    pub max_per_message: usize,
    /// Least time between two exchanges sent to one peer (values below 1 s count as 1 s); what
    /// becomes new in between waits for the next. An exchange from a peer sooner than half this
    /// after its previous one is ignored and counted in [`Stats::rate_limited`]. Default 60 s.
    pub min_interval: Duration,
    /// Most records of other peers kept. Default 256.
    pub cache_size: usize,
    /// Records expiring further ahead than this are rejected. Default 48 h (as the DHT's).
    pub max_record_ttl: Duration,
    /// Lifetime of this node's own record. It is re-signed (next `seq`, new expiry) once a
    /// quarter of it has passed or the listen addresses change, so what peers pass on stays
    /// valid for a while. Must not exceed the peers' `max_record_ttl`. Default 4 h.
    pub record_ttl: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            enabled: true,
            max_per_message: MAX_RECORDS,
            min_interval: Duration::from_secs(60),
            cache_size: 256,
            max_record_ttl: crate::kad::record::DEFAULT_MAX_TTL,
            record_ttl: Duration::from_secs(4 * 60 * 60),
        }
    }
}

/// What PEX reports.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// `from` sent records that are new to us or supersede what we had: verified, and now
    /// cached. Where those peers can be reached.
    Discovered {
        /// The peer that sent them.
        from: PeerId,
        /// The new records, in the order received.
        records: Vec<PeerRecord>,
    },
}

/// Counters, for status and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Stats {
    /// Exchanges (messages) sent.
    pub sent: u64,
    /// Exchanges received and processed.
    pub received: u64,
    /// Records that were new or superseded a cached one.
    pub learned: u64,
    /// Records that failed verification (forged, expired, too long-lived, weak stamp, oversized).
    pub invalid_records: u64,
    /// Exchanges ignored because the peer sent again too soon.
    pub rate_limited: u64,
}

#[derive(Debug)]
struct PeerState {
    /// When we last sent this peer an exchange (or found nothing new for it).
    last_sent: Instant,
    last_received: Option<Instant>,
    /// The entry of this peer in [`Pex::timers`], if an exchange is scheduled.
    scheduled: Option<Instant>,
    /// The cache's [`Cache::clock`] at our last exchange with this peer (entries changed after
    /// it are new to the peer); `None` before the first.
    synced: Option<u64>,
    /// The `seq` of our own record the peer last got.
    own_sent: Option<u64>,
}

#[derive(Debug)]
struct Entry {
    record: PeerRecord,
    /// Who we got this version from (the peer itself, or a relaying peer).
    from: PeerId,
    /// Position in [`Cache::by_recency`]; higher is more recent.
    tick: u64,
    /// The tick at which this version was stored.
    changed: u64,
    /// This version superseded one we had and came from its own peer: an update worth
    /// passing on to every ready peer.
    update: bool,
}

/// Verified records of other peers, one per peer, bounded, least recently seen evicted first.
#[derive(Debug)]
struct Cache {
    entries: BTreeMap<PeerId, Entry>,
    by_recency: BTreeMap<u64, PeerId>,
    by_expiry: BTreeSet<(u64, PeerId)>,
    next_tick: u64,
    capacity: usize,
}

impl Cache {
    fn new(capacity: usize) -> Self {
        Self {
            entries: BTreeMap::new(),
            by_recency: BTreeMap::new(),
            by_expiry: BTreeSet::new(),
            next_tick: 0,
            capacity,
        }
    }

    fn get(&self, peer: &PeerId) -> Option<&Entry> {
        self.entries.get(peer)
    }

    fn tick(&mut self) -> u64 {
        self.next_tick += 1;
        self.next_tick
    }

    /// The latest tick handed out: every entry changed later is newer than this.
    fn clock(&self) -> u64 {
        self.next_tick
    }

    /// Marks `peer`'s record as seen now (the peer itself was in touch).
    fn touch(&mut self, peer: &PeerId) {
        if !self.entries.contains_key(peer) {
            return;
        }
        let tick = self.tick();
        if let Some(e) = self.entries.get_mut(peer) {
            self.by_recency.remove(&e.tick);
            self.by_recency.insert(tick, *peer);
            e.tick = tick;
        }
    }

    /// Stores `record` as the most recently seen, replacing the peer's previous one, and evicts
    /// the least recently seen if the cache is over capacity.
    fn insert(&mut self, record: PeerRecord, from: PeerId, update: bool) {
        let peer = *record.peer();
        self.remove(&peer);
        if self.capacity == 0 {
            return;
        }
        while self.entries.len() >= self.capacity {
            let Some((_, oldest)) = self.by_recency.first_key_value() else {
                break;
            };
            let oldest = *oldest;
            self.remove(&oldest);
        }
        let tick = self.tick();
        self.by_recency.insert(tick, peer);
        self.by_expiry.insert((record.expires(), peer));
        self.entries.insert(
            peer,
            Entry {
                record,
                from,
                tick,
                changed: tick,
                update,
            },
        );
    }

    fn remove(&mut self, peer: &PeerId) {
        if let Some(e) = self.entries.remove(peer) {
            self.by_recency.remove(&e.tick);
            self.by_expiry.remove(&(e.record.expires(), *peer));
        }
    }

    /// Drops every record expired at `now`.
    fn prune(&mut self, now: Instant) {
        while let Some(&(expires, peer)) = self.by_expiry.first() {
            if expires > now.as_secs() {
                break;
            }
            self.remove(&peer);
        }
    }

    /// When the next record expires.
    fn next_expiry(&self) -> Option<Instant> {
        self.by_expiry
            .first()
            .map(|(expires, _)| Instant::from_micros(expires.saturating_mul(1_000_000)))
    }

    /// Entries, most recently seen first.
    fn recent(&self) -> impl Iterator<Item = &Entry> + '_ {
        self.by_recency
            .values()
            .rev()
            .filter_map(|p| self.entries.get(p))
    }
}

/// The PEX state machine.
#[derive(Debug)]
pub struct Pex {
    config: Config,
    keypair: Keypair,
    stamp: Stamp,
    limits: RecordLimits,
    listen_addrs: Vec<SocketAddr>,
    /// Our own record and when it was signed; `None` until first needed or after the addresses
    /// changed.
    own: Option<(PeerRecord, Instant)>,
    own_seq: u64,
    /// When our own record is due to be re-signed and offered again.
    own_refresh: Option<Instant>,
    peers: BTreeMap<PeerId, PeerState>,
    /// Scheduled exchanges, earliest first. A peer has one only while something may be new to
    /// it, so a settled network has none.
    timers: BTreeSet<(Instant, PeerId)>,
    cache: Cache,
    stats: Stats,
}

impl Pex {
    /// PEX for the node with identity `keypair` and proof of work `stamp`, on a network of
    /// proof-of-work `difficulty`.
    pub fn new(keypair: Keypair, stamp: Stamp, difficulty: Difficulty, config: Config) -> Self {
        Self {
            limits: RecordLimits {
                max_ttl: config.max_record_ttl,
                difficulty,
            },
            cache: Cache::new(config.cache_size),
            config,
            keypair,
            stamp,
            listen_addrs: Vec::new(),
            own: None,
            own_seq: 0,
            own_refresh: None,
            peers: BTreeMap::new(),
            timers: BTreeSet::new(),
            stats: Stats::default(),
        }
    }

    /// Sets the addresses announced in this node's record (the first [`MAX_RECORD_ADDRS`]). The
    /// record is re-signed, and every ready peer gets it at its next exchange. With no
    /// addresses, no own record is sent.
    pub fn set_listen_addrs(&mut self, mut addrs: Vec<SocketAddr>) {
        addrs.truncate(MAX_RECORD_ADDRS);
        if addrs != self.listen_addrs {
            self.listen_addrs = addrs;
            self.own = None;
            self.schedule_all();
        }
    }

    /// Cached records of other peers, most recently seen first. A record stays until it
    /// expires, is evicted, or is superseded.
    pub fn records(&self) -> impl Iterator<Item = &PeerRecord> + '_ {
        self.cache.recent().map(|e| &e.record)
    }

    /// The `n` most recently seen records.
    pub fn recent(&self, n: usize) -> Vec<PeerRecord> {
        self.records().take(n).cloned().collect()
    }

    /// The cached record of `peer`.
    pub fn record(&self, peer: &PeerId) -> Option<&PeerRecord> {
        self.cache.get(peer).map(|e| &e.record)
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// The settings.
    pub fn config(&self) -> &Config {
        &self.config
    }

    fn interval(&self) -> Duration {
        self.config.min_interval.max(MIN_INTERVAL_FLOOR)
    }

    /// Our own record, re-signed if it is missing or a quarter of its lifetime has passed.
    fn own_record(&mut self, now: Instant) -> Option<PeerRecord> {
        if self.listen_addrs.is_empty() {
            return None;
        }
        let refresh = self.config.record_ttl / 4;
        let fresh = self
            .own
            .as_ref()
            .is_some_and(|(_, signed)| now < *signed + refresh);
        if !fresh {
            self.own_seq = self.own_seq.saturating_add(1).max(now.as_secs());
            let record = PeerRecord::new(
                &self.keypair,
                self.stamp,
                self.listen_addrs.clone(),
                Vec::new(),
                self.own_seq,
                (now + self.config.record_ttl).as_secs(),
            );
            self.own = Some((record, now));
            self.own_refresh = Some(now + refresh.max(MIN_INTERVAL_FLOOR));
        }
        self.own.as_ref().map(|(r, _)| r.clone())
    }

    /// Schedules an exchange with `peer` (if none is) at the earliest time the interval allows.
    fn schedule(&mut self, peer: PeerId) {
        let interval = self.interval();
        if let Some(state) = self.peers.get_mut(&peer)
            && state.scheduled.is_none()
        {
            let at = state.last_sent + interval;
            state.scheduled = Some(at);
            self.timers.insert((at, peer));
        }
    }

    /// Something new may be worth telling every ready peer.
    fn schedule_all(&mut self) {
        let peers: Vec<PeerId> = self.peers.keys().copied().collect();
        for peer in peers {
            self.schedule(peer);
        }
    }

    /// What is new to `to`: our record if it has not got this version, then the most recently
    /// seen records (in a first exchange, any; later, the updates received since the previous
    /// exchange), minus `to`'s own and those `to` gave us. What does not fit in one message is
    /// not sent later: PEX is best effort, freshest first.
    fn offer(&mut self, now: Instant, to: PeerId) -> Vec<PeerRecord> {
        let max = self.config.max_per_message.min(MAX_RECORDS);
        let Some(state) = self.peers.get(&to) else {
            return Vec::new();
        };
        let (synced, own_sent) = (state.synced, state.own_sent);
        if max == 0 {
            return Vec::new();
        }
        let mut records: Vec<PeerRecord> = self
            .own_record(now)
            .filter(|own| Some(own.seq()) != own_sent)
            .into_iter()
            .collect();
        let room = max - records.len();
        records.extend(
            self.cache
                .recent()
                .filter(|e| match synced {
                    None => true,
                    Some(synced) => e.changed > synced && e.update,
                })
                .filter(|e| *e.record.peer() != to && e.from != to)
                .take(room)
                .map(|e| e.record.clone()),
        );
        records
    }

    /// Sends `peer` what is new to it, if anything.
    fn exchange(&mut self, cx: &mut Context<'_>, peer: PeerId) {
        if !self.peers.contains_key(&peer) {
            return;
        }
        let local = self.keypair.peer_id();
        let records = self.offer(cx.now, peer);
        let own_sent = records
            .first()
            .filter(|r| *r.peer() == local)
            .map(|r| r.seq());
        if !records.is_empty() {
            cx.send(peer, Message::Records(records));
            self.stats.sent += 1;
        }
        let clock = self.cache.clock();
        if let Some(state) = self.peers.get_mut(&peer) {
            state.last_sent = cx.now;
            state.synced = Some(clock);
            state.own_sent = own_sent.or(state.own_sent);
        }
    }

    fn handle_records(&mut self, cx: &mut Context<'_>, from: PeerId, records: Vec<PeerRecord>) {
        let local = self.keypair.peer_id();
        let mut discovered = Vec::new();
        let mut updates = false;
        for record in records.into_iter().take(self.config.max_per_message) {
            let peer = *record.peer();
            if peer == local {
                continue;
            }
            if let Some(cached) = self.cache.get(&peer) {
                // Equal: already verified, and unexpired (the cache is pruned on every input).
                if cached.record == record || cached.record.supersedes(&record) {
                    continue;
                }
            }
            if record.verify(cx.now, &self.limits).is_err() {
                self.stats.invalid_records += 1;
                continue;
            }
            self.stats.learned += 1;
            let update = peer == from && self.cache.get(&peer).is_some();
            updates |= update;
            self.cache.insert(record.clone(), from, update);
            discovered.push(record);
        }
        // The sender was in touch: that is a sighting of it.
        self.cache.touch(&from);
        if updates {
            self.schedule_all();
        }
        if !discovered.is_empty() {
            cx.emit(Event::Discovered {
                from,
                records: discovered,
            });
        }
    }
}

impl Protocol for Pex {
    type Message = Message;

    fn handle_message(&mut self, cx: &mut Context<'_>, from: PeerId, msg: Message) {
        if !self.config.enabled {
            return;
        }
        self.cache.prune(cx.now);
        let half = self.interval() / 2;
        let Some(state) = self.peers.get_mut(&from) else {
            return;
        };
        if state.last_received.is_some_and(|t| cx.now < t + half) {
            self.stats.rate_limited += 1;
            return;
        }
        state.last_received = Some(cx.now);
        self.stats.received += 1;
        let Message::Records(records) = msg;
        self.handle_records(cx, from, records);
    }

    fn handle_peer_event(&mut self, cx: &mut Context<'_>, event: &PeerEvent) {
        if !self.config.enabled {
            return;
        }
        self.cache.prune(cx.now);
        match event {
            PeerEvent::Ready(info) => {
                let peer = info.peer;
                let state = PeerState {
                    last_sent: cx.now,
                    last_received: None,
                    scheduled: None,
                    synced: None,
                    own_sent: None,
                };
                if let Some(old) = self.peers.insert(peer, state)
                    && let Some(at) = old.scheduled
                {
                    self.timers.remove(&(at, peer));
                }
                self.cache.touch(&peer);
                self.exchange(cx, peer);
            }
            PeerEvent::Gone { peer } | PeerEvent::Unreachable { peer } => {
                if let Some(state) = self.peers.remove(peer) {
                    // Last seen now, as it leaves.
                    self.cache.touch(peer);
                    if let Some(at) = state.scheduled {
                        self.timers.remove(&(at, *peer));
                    }
                }
            }
        }
    }

    fn handle_timeout(&mut self, cx: &mut Context<'_>) {
        let now = cx.now;
        self.cache.prune(now);
        if self.own_refresh.is_some_and(|t| t <= now) {
            // Re-signed at the next exchange with each peer (or the next peer to connect).
            self.own_refresh = None;
            self.schedule_all();
        }
        while let Some(&(at, peer)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.remove(&(at, peer));
            if let Some(state) = self.peers.get_mut(&peer) {
                state.scheduled = None;
            }
            self.exchange(cx, peer);
        }
    }

    fn poll_timeout(&self) -> Option<Instant> {
        [
            self.timers.first().map(|(t, _)| *t),
            self.cache.next_expiry(),
            self.own_refresh,
        ]
        .into_iter()
        .flatten()
        .min()
    }
}

#[cfg(test)]
mod tests;

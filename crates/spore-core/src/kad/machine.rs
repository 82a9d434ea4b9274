//! The Kademlia state machine: routing table upkeep, lookups, records.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use rand_core::RngCore;

use super::lookup::Lookup;
use super::message::{MAX_CONTACTS, MAX_PROVIDERS, MAX_REASON_LEN, Message, Request, Response};
use super::record::{PeerRecord, ProviderRecord, RecordError, RecordLimits, ValueRecord};
use super::store::RecordStore;
use super::table::{InsertOutcome, RoutingTable};
use super::{Config, Contact, Event, Key, MAX_CONTACT_ADDRS, QueryId, QueryResult, QueryStats};
use crate::identity::{Keypair, PeerId};
use crate::node::{Context, Direction, PeerEvent, Protocol};
use crate::pow::{Difficulty, Stamp};
use crate::time::Instant;
use crate::trust::reputation::Observation;
use crate::wire::Capabilities;

/// Why a Kademlia command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KadError {
    /// Too many lookups are running.
    #[error("too many lookups running ({0}); try again shortly")]
    Busy(usize),
    /// The record is not valid (too large, bad name, …).
    #[error(transparent)]
    Record(#[from] RecordError),
}

#[derive(Debug, Clone)]
enum Kind {
    Bootstrap,
    Refresh,
    FindNode,
    FindPeer {
        peer: PeerId,
        found: Option<PeerRecord>,
    },
    GetValue {
        key: Key,
        best: Option<ValueRecord>,
        local: Option<ValueRecord>,
    },
    GetProviders {
        key: Key,
        found: BTreeMap<PeerId, ProviderRecord>,
    },
    PutValue {
        record: ValueRecord,
    },
    AddProvider {
        record: ProviderRecord,
    },
    PutPeer {
        record: PeerRecord,
    },
}

impl Kind {
    /// What a store query sends to the closest nodes once its lookup is over; `None` for
    /// queries that only look.
    fn store_request(&self) -> Option<Request> {
        match self {
            Kind::PutValue { record } => Some(Request::PutValue {
                record: record.clone(),
            }),
            Kind::AddProvider { record } => Some(Request::AddProvider {
                record: record.clone(),
            }),
            Kind::PutPeer { record } => Some(Request::PutPeer {
                record: record.clone(),
            }),
            _ => None,
        }
    }
}

#[derive(Debug)]
enum Phase {
    Lookup,
    /// Storing the record on the closest nodes: requests pending, stores acknowledged.
    Storing {
        pending: usize,
        stored: usize,
    },
}

#[derive(Debug)]
struct Query {
    kind: Kind,
    lookup: Lookup,
    phase: Phase,
}

#[derive(Debug, Clone, Copy)]
enum Purpose {
    Lookup(QueryId),
    Store(QueryId),
    EvictionPing,
    /// Asking a new routing-table entry for its own signed record, for the peer book.
    OwnRecord,
}

#[derive(Debug)]
struct Outbound {
    purpose: Purpose,
    deadline: Instant,
}

#[derive(Debug, Default)]
struct Bootstrap {
    /// A bootstrap lookup has found other nodes at least once.
    done: bool,
    running: Option<QueryId>,
    next_attempt: Option<Instant>,
    backoff: Duration,
}

/// Counters, for status and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KadStats {
    /// Requests sent.
    pub requests_sent: u64,
    /// Requests answered by us.
    pub requests_served: u64,
    /// Requests that failed or timed out.
    pub requests_failed: u64,
    /// Answers that matched no request of ours.
    pub unexpected_responses: u64,
    /// Value records in answers to our value lookups, valid or not.
    pub value_records_received: u64,
    /// Records from peers that failed verification.
    pub invalid_records: u64,
    /// Contacts from peers dropped (bad stamp, no address, our own id).
    pub invalid_contacts: u64,
    /// Lookups completed.
    pub queries_done: u64,
    /// Contacts that lookups left out because their network (IPv4 /16, IPv6 /32) already
    /// supplied as many as the routing table's per-network limit.
    pub contacts_over_prefix_limit: u64,
}

/// The Kademlia protocol.
pub struct Kad {
    config: Config,
    keypair: Keypair,
    stamp: Stamp,
    difficulty: Difficulty,
    local_key: Key,
    table: RoutingTable,
    store: Box<dyn RecordStore + Send>,
    listen_addrs: Vec<SocketAddr>,
    requests: BTreeMap<(PeerId, u64), Outbound>,
    /// The requests' deadlines, earliest first, so finding the next one costs no scan.
    deadlines: BTreeSet<(Instant, PeerId, u64)>,
    next_request: u64,
    queries: BTreeMap<QueryId, Query>,
    next_query: u64,
    failures: BTreeMap<PeerId, u32>,
    own_values: BTreeMap<Key, ValueRecord>,
    own_providers: BTreeMap<Key, ProviderRecord>,
    own_peer_seq: u64,
    /// Our signed peer record, reused until a quarter of its lifetime has passed or our
    /// addresses change: signing costs, and so does every peer's check of a record it has not
    /// seen before.
    own_peer_record: Option<(PeerRecord, Instant)>,
    bootstrap: Bootstrap,
    /// Peer-record fetches in the current window: when it started and how many were sent.
    record_fetches: (Instant, u32),
    next_republish: Option<Instant>,
    next_refresh: Option<Instant>,
    /// Buckets waiting for their refresh lookup, in order; each at most once.
    refresh_queue: VecDeque<usize>,
    /// Refresh lookups running (at most `Config::parallel_refreshes`).
    refreshes_running: usize,
    /// `run_refreshes` is on the stack (a refresh with nobody to ask finishes inside it).
    starting_refreshes: bool,
    stats: KadStats,
}

impl std::fmt::Debug for Kad {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kad")
            .field("table", &self.table.len())
            .field("queries", &self.queries.len())
            .field("requests", &self.requests.len())
            .finish_non_exhaustive()
    }
}

impl Kad {
    /// A Kademlia instance for the node `keypair`, storing records in `store`.
    pub fn new(
        keypair: Keypair,
        stamp: Stamp,
        difficulty: Difficulty,
        config: Config,
        store: Box<dyn RecordStore + Send>,
    ) -> Self {
        let local_key = Key::for_peer(&keypair.peer_id());
        let table = RoutingTable::new(keypair.peer_id(), config.table.clone());
        let bootstrap = Bootstrap {
            backoff: config.bootstrap_backoff,
            ..Bootstrap::default()
        };
        Self {
            config,
            keypair,
            stamp,
            difficulty,
            local_key,
            table,
            store,
            listen_addrs: Vec::new(),
            requests: BTreeMap::new(),
            deadlines: BTreeSet::new(),
            next_request: 0,
            queries: BTreeMap::new(),
            next_query: 0,
            failures: BTreeMap::new(),
            own_values: BTreeMap::new(),
            own_providers: BTreeMap::new(),
            own_peer_seq: 0,
            own_peer_record: None,
            bootstrap,
            record_fetches: (Instant::ZERO, 0),
            next_republish: None,
            next_refresh: None,
            refresh_queue: VecDeque::new(),
            refreshes_running: 0,
            starting_refreshes: false,
            stats: KadStats::default(),
        }
    }

    /// The routing table.
    pub fn table(&self) -> &RoutingTable {
        &self.table
    }

    /// The record store.
    pub fn store(&self) -> &dyn RecordStore {
        self.store.as_ref()
    }

    /// Takes the record store out, leaving an empty in-memory one: what a node shutting down
    /// leaves behind for its restart, as the daemon leaves its database.
    pub fn take_store(&mut self) -> Box<dyn RecordStore + Send> {
        let empty = Box::new(super::store::MemoryStore::new(self.config.store));
        std::mem::replace(&mut self.store, empty)
    }

    /// Counters.
    pub fn stats(&self) -> KadStats {
        self.stats
    }

    /// Lookups running.
    pub fn running_queries(&self) -> usize {
        self.queries.len()
    }

    /// Whether a bootstrap lookup has reached other nodes.
    pub fn is_bootstrapped(&self) -> bool {
        self.bootstrap.done
    }

    /// Sets the addresses this node announces in its peer record.
    pub fn set_listen_addrs(&mut self, addrs: Vec<SocketAddr>) {
        self.listen_addrs = addrs;
    }

    fn local_peer(&self) -> PeerId {
        self.keypair.peer_id()
    }

    // ---- commands ---------------------------------------------------------------------------

    /// Joins the network: looks up this node's own id (which fills the nearby buckets), then
    /// refreshes the farther buckets. Retries with backoff while nobody answers.
    pub fn bootstrap(&mut self, cx: &mut Context<'_>) -> Result<QueryId, KadError> {
        if let Some(id) = self.bootstrap.running {
            return Ok(id);
        }
        let id = self.start(cx, self.local_key, Kind::Bootstrap, 1)?;
        self.bootstrap.running = Some(id);
        self.bootstrap.next_attempt = None;
        Ok(id)
    }

    /// Finds the k closest nodes to `target`.
    pub fn find_node(&mut self, cx: &mut Context<'_>, target: Key) -> Result<QueryId, KadError> {
        self.start(cx, target, Kind::FindNode, 1)
    }

    /// Finds the signed record of `peer` (its addresses).
    pub fn find_peer(&mut self, cx: &mut Context<'_>, peer: PeerId) -> Result<QueryId, KadError> {
        let paths = self.config.disjoint_paths;
        self.start(
            cx,
            Key::for_peer(&peer),
            Kind::FindPeer { peer, found: None },
            paths,
        )
    }

    /// Signs `value` under `name` and stores it on the k closest nodes to its key. The sequence
    /// number increases with every put of the same name.
    pub fn put_value(
        &mut self,
        cx: &mut Context<'_>,
        name: &str,
        value: Bytes,
    ) -> Result<QueryId, KadError> {
        let key = ValueRecord::key_for(&self.local_peer(), name);
        let previous = self.own_values.get(&key).map(|r| r.seq()).unwrap_or(0);
        let seq = previous.max(cx.now.as_secs()).saturating_add(1);
        let expires = (cx.now + self.config.record_ttl).as_secs();
        let record = ValueRecord::new(&self.keypair, name, value, seq, expires);
        record.verify(cx.now, &self.record_limits())?;
        let _ = self.store.put_value(record.clone(), cx.now);
        self.own_values.insert(key, record.clone());
        self.schedule_republish(cx.now);
        self.start(cx, key, Kind::PutValue { record }, 1)
    }

    /// Looks up the value `publisher` stored under `name`, over disjoint paths; the result is the
    /// valid record with the highest sequence number any path returned.
    pub fn get_value(
        &mut self,
        cx: &mut Context<'_>,
        publisher: PeerId,
        name: &str,
    ) -> Result<QueryId, KadError> {
        let key = ValueRecord::key_for(&publisher, name);
        let local = self.store.get_value(&key, cx.now);
        let kind = Kind::GetValue {
            key,
            best: None,
            local,
        };
        let paths = self.config.disjoint_paths;
        self.start(cx, key, kind, paths)
    }

    /// Announces that this node provides the content with BLAKE3 hash `content`.
    pub fn provide(
        &mut self,
        cx: &mut Context<'_>,
        content: [u8; 32],
    ) -> Result<QueryId, KadError> {
        let expires = (cx.now + self.config.record_ttl).as_secs();
        let addrs = self.announced_addrs();
        let record = ProviderRecord::new(&self.keypair, self.stamp, content, addrs, expires);
        let key = Key(content);
        let _ = self.store.put_provider(record.clone(), cx.now);
        self.own_providers.insert(key, record.clone());
        self.schedule_republish(cx.now);
        self.start(cx, key, Kind::AddProvider { record }, 1)
    }

    /// Stops announcing `content` (existing records expire on their own).
    pub fn unprovide(&mut self, content: &[u8; 32]) {
        self.own_providers.remove(&Key(*content));
    }

    /// Finds nodes that provide `content`.
    pub fn find_providers(
        &mut self,
        cx: &mut Context<'_>,
        content: [u8; 32],
    ) -> Result<QueryId, KadError> {
        let key = Key(content);
        let mut found = BTreeMap::new();
        for r in self.store.providers(&key, cx.now) {
            found.insert(*r.provider(), r);
        }
        let paths = self.config.disjoint_paths;
        self.start(cx, key, Kind::GetProviders { key, found }, paths)
    }

    /// Publishes this node's signed peer record on the k closest nodes to its id.
    pub fn publish_peer_record(&mut self, cx: &mut Context<'_>) -> Result<QueryId, KadError> {
        let record = self.own_peer_record(cx.now);
        self.schedule_republish(cx.now);
        self.start(cx, self.local_key, Kind::PutPeer { record }, 1)
    }

    fn announced_addrs(&self) -> Vec<SocketAddr> {
        self.listen_addrs
            .iter()
            .take(MAX_CONTACT_ADDRS)
            .copied()
            .collect()
    }

    fn own_peer_record(&mut self, now: Instant) -> PeerRecord {
        let addrs = self.announced_addrs();
        if let Some((record, signed)) = &self.own_peer_record
            && record.addrs() == addrs.as_slice()
            && now < *signed + self.config.record_ttl / 4
        {
            return record.clone();
        }
        let record = self.sign_own_peer_record(now);
        self.own_peer_record = Some((record.clone(), now));
        record
    }

    fn sign_own_peer_record(&mut self, now: Instant) -> PeerRecord {
        self.own_peer_seq = self.own_peer_seq.max(now.as_secs()).saturating_add(1);
        let expires = (now + self.config.record_ttl).as_secs();
        PeerRecord::new(
            &self.keypair,
            self.stamp,
            self.announced_addrs(),
            Vec::new(),
            self.own_peer_seq,
            expires,
        )
    }

    fn schedule_republish(&mut self, now: Instant) {
        if self.next_republish.is_none() {
            self.next_republish = Some(now + self.config.republish_interval);
        }
    }

    /// What records from peers are checked against: this DHT's TTL bound and the network's
    /// difficulty.
    pub(crate) fn record_limits(&self) -> RecordLimits {
        RecordLimits {
            max_ttl: self.config.max_record_ttl,
            difficulty: self.difficulty,
        }
    }

    // ---- queries ----------------------------------------------------------------------------

    fn start(
        &mut self,
        cx: &mut Context<'_>,
        target: Key,
        kind: Kind,
        paths: usize,
    ) -> Result<QueryId, KadError> {
        if self.queries.len() >= self.config.max_queries {
            return Err(KadError::Busy(self.queries.len()));
        }
        let seeds: Vec<Contact> = self
            .table
            .closest(&target, self.config.k)
            .into_iter()
            .map(|e| e.contact.clone())
            .collect();
        let table = &self.config.table;
        let prefix_limit = table.ip_limits.then_some(table.max_per_ipv4_16_in_table);
        let lookup = Lookup::new(
            target,
            seeds,
            self.config.k,
            self.config.alpha,
            paths,
            prefix_limit,
            cx.now,
        );
        let id = QueryId(self.next_query);
        self.next_query += 1;
        self.queries.insert(
            id,
            Query {
                kind,
                lookup,
                phase: Phase::Lookup,
            },
        );
        self.step(cx, id);
        Ok(id)
    }

    /// Starts a store query whose closest nodes are already known (`closest`, answered in a
    /// lookup for the record's key that just finished): it goes straight to storing.
    fn store_at(
        &mut self,
        cx: &mut Context<'_>,
        kind: Kind,
        closest: &[Contact],
    ) -> Option<QueryId> {
        if self.queries.len() >= self.config.max_queries {
            return None;
        }
        let store = kind.store_request()?;
        let id = QueryId(self.next_query);
        self.next_query += 1;
        // No lookup runs: the seeds only make the query's bookkeeping whole.
        let lookup = Lookup::new(
            self.local_key,
            Vec::new(),
            self.config.k,
            1,
            1,
            None,
            cx.now,
        );
        self.queries.insert(
            id,
            Query {
                kind,
                lookup,
                phase: Phase::Storing {
                    pending: 0,
                    stored: 0,
                },
            },
        );
        self.store_on(cx, id, &store, closest);
        Some(id)
    }

    /// Sends query `id`'s `store` request to each of `closest`; the query finishes when every
    /// one sent has been answered or has failed.
    fn store_on(
        &mut self,
        cx: &mut Context<'_>,
        id: QueryId,
        store: &Request,
        closest: &[Contact],
    ) {
        let mut pending = 0;
        for contact in closest {
            if self.request(cx, contact, store.clone(), Purpose::Store(id)) {
                pending += 1;
            }
        }
        if let Some(q) = self.queries.get_mut(&id) {
            q.phase = Phase::Storing { pending, stored: 0 };
        }
        self.step(cx, id);
    }

    /// Sends what a query asks for, and finishes it when it is done.
    fn step(&mut self, cx: &mut Context<'_>, id: QueryId) {
        let Some(q) = self.queries.get_mut(&id) else {
            return;
        };
        if let Phase::Storing { pending, stored } = q.phase {
            if pending == 0 {
                self.finish(cx, id, stored);
            }
            return;
        }
        let early = matches!(q.kind, Kind::FindPeer { found: Some(_), .. });
        let queries = if early {
            Vec::new()
        } else {
            q.lookup.poll_queries()
        };
        let request = match &q.kind {
            Kind::Bootstrap | Kind::Refresh | Kind::FindNode => Request::FindNode {
                target: *q.lookup.target(),
            },
            Kind::PutValue { .. } | Kind::AddProvider { .. } | Kind::PutPeer { .. } => {
                Request::FindNode {
                    target: *q.lookup.target(),
                }
            }
            Kind::FindPeer { peer, .. } => Request::FindPeer { peer: *peer },
            Kind::GetValue { key, .. } => Request::GetValue { key: *key },
            Kind::GetProviders { key, .. } => Request::GetProviders { key: *key },
        };
        let mut failed = Vec::new();
        for query in queries {
            if !self.request(cx, &query.contact, request.clone(), Purpose::Lookup(id)) {
                failed.push(query.contact.peer);
            }
        }
        let Some(q) = self.queries.get_mut(&id) else {
            return;
        };
        for peer in failed {
            q.lookup.on_failure(&peer);
        }
        if !(early || q.lookup.is_finished()) {
            return;
        }
        // The lookup is over: either report, or store on the closest nodes found.
        let Some(store) = q.kind.store_request() else {
            return self.finish(cx, id, 0);
        };
        let (closest, _) = q.lookup.closest();
        self.store_on(cx, id, &store, &closest);
    }

    fn finish(&mut self, cx: &mut Context<'_>, id: QueryId, stored: usize) {
        let Some(q) = self.queries.remove(&id) else {
            return;
        };
        self.stats.queries_done += 1;
        self.stats.contacts_over_prefix_limit += u64::from(q.lookup.rejected_by_prefix);
        let (closest, hops) = q.lookup.closest();
        let stats = QueryStats {
            hops,
            requests: q.lookup.requests,
            responses: q.lookup.responses,
            duration: cx.now - q.lookup.started,
        };
        let result = match q.kind {
            Kind::Bootstrap => {
                self.bootstrap.running = None;
                if closest.is_empty() {
                    let delay = self.bootstrap.backoff;
                    self.bootstrap.next_attempt = Some(cx.now + delay);
                    self.bootstrap.backoff = (delay * 2).min(self.config.bootstrap_backoff_max);
                } else {
                    let first = !self.bootstrap.done;
                    self.bootstrap.done = true;
                    self.bootstrap.backoff = self.config.bootstrap_backoff;
                    if first {
                        self.next_refresh = Some(cx.now + self.config.refresh_interval);
                        self.schedule_republish(cx.now);
                        self.refresh_far_buckets(cx);
                        // The lookup just found the closest nodes to our own id: they are
                        // where our peer record belongs, so store it there without a second
                        // lookup for the same key.
                        let record = self.own_peer_record(cx.now);
                        self.store_at(cx, Kind::PutPeer { record }, &closest);
                    }
                }
                QueryResult::Bootstrap {
                    peers: closest.len(),
                }
            }
            Kind::Refresh => {
                self.refreshes_running = self.refreshes_running.saturating_sub(1);
                QueryResult::Refresh
            }
            Kind::FindNode => QueryResult::FindNode { closest },
            Kind::FindPeer { peer, found } => QueryResult::FindPeer {
                peer,
                record: found,
            },
            Kind::GetValue { key, best, local } => {
                let record = match (best, local) {
                    (Some(b), Some(l)) => Some(if l.supersedes(&b) { l } else { b }),
                    (b, l) => b.or(l),
                };
                QueryResult::GetValue { key, record }
            }
            Kind::GetProviders { key, found } => QueryResult::GetProviders {
                key,
                providers: found.into_values().collect(),
            },
            Kind::PutValue { record } => QueryResult::PutValue {
                key: record.key(),
                seq: record.seq(),
                stored,
            },
            Kind::AddProvider { record } => QueryResult::AddProvider {
                key: record.key(),
                stored,
            },
            Kind::PutPeer { .. } => QueryResult::PutPeer { stored },
        };
        cx.emit(Event::QueryDone { id, result, stats });
        // A lookup slot is free: a refresh waiting for one (or for the last refresh) may start.
        self.run_refreshes(cx);
    }

    /// After the first successful bootstrap: one lookup for a random key in each bucket farther
    /// than the closest neighbour, so the table learns the whole key space. Farthest first: the
    /// far buckets hold most of the network and carry the first hop of most lookups.
    fn refresh_far_buckets(&mut self, cx: &mut Context<'_>) {
        let nearest = self
            .table
            .bucket_fill()
            .first()
            .map(|(i, _)| *i)
            .unwrap_or(255);
        for index in ((nearest + 1)..=255).rev() {
            self.queue_refresh(index);
        }
        self.run_refreshes(cx);
    }

    /// Queues a refresh of bucket `index` (once, however often asked before it runs).
    fn queue_refresh(&mut self, index: usize) {
        if !self.refresh_queue.contains(&index) {
            self.refresh_queue.push_back(index);
        }
    }

    /// Starts queued refreshes while fewer than `parallel_refreshes` run. One at a time (as
    /// rust-libp2p's bootstrap does) makes each start from the table the previous ones filled,
    /// and keeps a joining node from opening connections to hundreds of peers at once.
    fn run_refreshes(&mut self, cx: &mut Context<'_>) {
        if self.starting_refreshes {
            return;
        }
        self.starting_refreshes = true;
        while self.refreshes_running < self.config.parallel_refreshes.max(1) {
            let Some(index) = self.refresh_queue.pop_front() else {
                break;
            };
            let mut random = [0u8; 32];
            cx.rng.fill_bytes(&mut random);
            let target = self.local_key.random_in_bucket(index, random);
            // Counted before it starts: one with nobody to ask finishes inside `start`.
            self.refreshes_running += 1;
            if self.start(cx, target, Kind::Refresh, 1).is_err() {
                // Too many lookups: it starts when one ends.
                self.refreshes_running -= 1;
                self.refresh_queue.push_front(index);
                break;
            }
            self.table.mark_bucket_refreshed(index, cx.now);
        }
        self.starting_refreshes = false;
    }

    /// Sends `request` to `contact`, dialing it if needed. False if no request could be sent.
    fn request(
        &mut self,
        cx: &mut Context<'_>,
        contact: &Contact,
        request: Request,
        purpose: Purpose,
    ) -> bool {
        if contact.peer == self.local_peer() || self.requests.len() >= self.config.max_requests {
            return false;
        }
        let id = self.next_request;
        self.next_request = self.next_request.wrapping_add(1);
        let deadline = cx.now + self.config.request_timeout;
        self.requests
            .insert((contact.peer, id), Outbound { purpose, deadline });
        self.deadlines.insert((deadline, contact.peer, id));
        self.stats.requests_sent += 1;
        cx.dial_and_send(
            contact.peer,
            &contact.addrs,
            Message::Request { id, request },
        );
        true
    }

    // ---- answers ----------------------------------------------------------------------------

    fn on_response(&mut self, cx: &mut Context<'_>, from: PeerId, id: u64, response: Response) {
        let Some(out) = self.take_request(from, id) else {
            self.stats.unexpected_responses += 1;
            return;
        };
        self.failures.remove(&from);
        self.table.mark_seen(&from, cx.now);
        cx.observe(from, Observation::Answered);
        match out.purpose {
            Purpose::EvictionPing => {}
            Purpose::OwnRecord => {
                if let Response::Peer {
                    record: Some(record),
                    ..
                } = response
                {
                    let limits = self.record_limits();
                    if record.peer() == &from && record.verify(cx.now, &limits).is_ok() {
                        cx.emit(Event::PeerRecord { record });
                    } else {
                        self.stats.invalid_records += 1;
                        cx.observe(from, Observation::Invalid);
                    }
                }
            }
            Purpose::Store(qid) => {
                if let Some(Query {
                    phase: Phase::Storing { pending, stored },
                    ..
                }) = self.queries.get_mut(&qid)
                {
                    *pending = pending.saturating_sub(1);
                    if response == Response::Stored {
                        *stored += 1;
                    }
                }
                self.step(cx, qid);
            }
            Purpose::Lookup(qid) => {
                let (mut closer, invalid, forged) = self.absorb(cx.now, qid, from, response);
                if forged > 0 {
                    cx.observe(from, Observation::Forged);
                } else if invalid > 0 {
                    cx.observe(from, Observation::Invalid);
                }
                // Peers this node refuses to talk to are not worth following.
                closer.retain(|c| !cx.is_distrusted(&c.peer));
                if let Some(q) = self.queries.get_mut(&qid) {
                    q.lookup.on_success(&from, closer);
                }
                self.step(cx, qid);
            }
        }
    }

    /// Takes what a lookup answer carries: verified records into the query, and the contacts
    /// worth following; and how many records and contacts in it were invalid.
    fn absorb(
        &mut self,
        now: Instant,
        qid: QueryId,
        from: PeerId,
        response: Response,
    ) -> (Vec<Contact>, u64, u64) {
        let limits = self.record_limits();
        let difficulty = self.difficulty;
        let mut forged = 0;
        let (closer, mut invalid) = match response {
            Response::Nodes { closer } => (closer, 0),
            Response::Value { record, closer } => {
                let mut invalid = 0;
                if let (
                    Some(r),
                    Some(Query {
                        kind: Kind::GetValue { key, best, .. },
                        ..
                    }),
                ) = (record, self.queries.get_mut(&qid))
                {
                    self.stats.value_records_received += 1;
                    let checked = r.verify(now, &limits);
                    if r.key() == *key && checked.is_ok() {
                        if best.as_ref().is_none_or(|b| r.supersedes(b)) {
                            *best = Some(r);
                        }
                    } else {
                        invalid += 1;
                        forged += u64::from(checked == Err(RecordError::BadSignature));
                    }
                }
                (closer, invalid)
            }
            Response::Providers { providers, closer } => {
                let mut invalid = 0;
                if let Some(Query {
                    kind: Kind::GetProviders { key, found },
                    ..
                }) = self.queries.get_mut(&qid)
                {
                    for r in providers.into_iter().take(MAX_PROVIDERS) {
                        if r.key() == *key && r.verify(now, &limits).is_ok() {
                            if found.len() < MAX_PROVIDERS || found.contains_key(r.provider()) {
                                found.insert(*r.provider(), r);
                            }
                        } else {
                            invalid += 1;
                        }
                    }
                }
                (closer, invalid)
            }
            Response::Peer { record, closer } => {
                let mut invalid = 0;
                if let (
                    Some(r),
                    Some(Query {
                        kind: Kind::FindPeer { peer, found },
                        ..
                    }),
                ) = (record, self.queries.get_mut(&qid))
                {
                    let checked = r.verify(now, &limits);
                    if r.peer() == peer && checked.is_ok() {
                        if found.as_ref().is_none_or(|f| r.supersedes(f)) {
                            *found = Some(r);
                        }
                    } else {
                        invalid += 1;
                        forged += u64::from(checked == Err(RecordError::BadSignature));
                    }
                }
                (closer, invalid)
            }
            _ => (Vec::new(), 0),
        };
        self.stats.invalid_records += invalid;
        let invalid_records = invalid;
        invalid = 0;
        let me = self.local_peer();
        let mut good = Vec::with_capacity(closer.len().min(MAX_CONTACTS));
        for c in closer.into_iter().take(MAX_CONTACTS) {
            if c.peer == me || c.peer == from || c.addrs.is_empty() {
                continue;
            }
            if c.stamp.verify(&c.peer, difficulty).is_err() {
                invalid += 1;
                continue;
            }
            good.push(c);
        }
        self.stats.invalid_contacts += invalid;
        (good, invalid_records + invalid, forged)
    }

    fn on_request(&mut self, cx: &mut Context<'_>, from: PeerId, id: u64, request: Request) {
        self.stats.requests_served += 1;
        let now = cx.now;
        let limits = self.record_limits();
        let invalid_before = self.stats.invalid_records;
        let response = match request {
            Request::Ping => Response::Pong,
            Request::FindNode { target } => Response::Nodes {
                closer: self.closer(&target),
            },
            Request::GetValue { key } => Response::Value {
                record: self.store.get_value(&key, now),
                closer: self.closer(&key),
            },
            Request::GetProviders { key } => {
                let mut providers = self.store.providers(&key, now);
                providers.truncate(MAX_PROVIDERS);
                Response::Providers {
                    providers,
                    closer: self.closer(&key),
                }
            }
            Request::FindPeer { peer } => {
                let record = if peer == self.local_peer() {
                    Some(self.own_peer_record(now))
                } else {
                    self.store.get_peer(&peer, now)
                };
                Response::Peer {
                    record,
                    closer: self.closer(&Key::for_peer(&peer)),
                }
            }
            Request::PutValue { record } => {
                let checked = record.verify(now, &limits);
                self.stored(checked.map(|()| record), |s, r| s.put_value(r, now))
            }
            Request::AddProvider { record } => {
                let checked = record.verify(now, &limits);
                self.stored(checked.map(|()| record), |s, r| s.put_provider(r, now))
            }
            Request::PutPeer { record } => {
                let checked = record.verify(now, &limits);
                self.stored(checked.map(|()| record), |s, r| s.put_peer(r, now))
            }
        };
        if self.stats.invalid_records > invalid_before {
            // A record that does not verify is nobody's honest mistake.
            cx.observe(from, Observation::Invalid);
        }
        cx.send(from, Message::Response { id, response });
    }

    fn stored<R>(
        &mut self,
        record: Result<R, RecordError>,
        put: impl FnOnce(&mut dyn RecordStore, R) -> Result<(), super::store::StoreError>,
    ) -> Response {
        let result = match record {
            Ok(r) => match put(self.store.as_mut(), r) {
                // The same version again (a republish, or a second path of one put): fine.
                Err(super::store::StoreError::Stale { have_seq, got_seq })
                    if have_seq == got_seq =>
                {
                    Ok(())
                }
                other => other.map_err(|e| e.to_string()),
            },
            Err(e) => {
                self.stats.invalid_records += 1;
                Err(e.to_string())
            }
        };
        match result {
            Ok(()) => Response::Stored,
            Err(mut reason) => {
                truncate(&mut reason, MAX_REASON_LEN);
                Response::Refused { reason }
            }
        }
    }

    fn closer(&self, target: &Key) -> Vec<Contact> {
        self.table
            .closest(target, self.config.k)
            .into_iter()
            .map(|e| e.contact.clone())
            .collect()
    }

    fn fail_request(&mut self, cx: &mut Context<'_>, peer: PeerId, id: u64) {
        let Some(out) = self.take_request(peer, id) else {
            return;
        };
        self.stats.requests_failed += 1;
        if self.table.contains(&peer) {
            let failures = self.failures.entry(peer).or_insert(0);
            *failures += 1;
            if *failures >= self.config.max_failures || matches!(out.purpose, Purpose::EvictionPing)
            {
                self.failures.remove(&peer);
                self.table.ping_failed(&peer, cx.now);
            }
        }
        match out.purpose {
            Purpose::EvictionPing | Purpose::OwnRecord => {}
            Purpose::Store(qid) => {
                if let Some(Query {
                    phase: Phase::Storing { pending, .. },
                    ..
                }) = self.queries.get_mut(&qid)
                {
                    *pending = pending.saturating_sub(1);
                }
                self.step(cx, qid);
            }
            Purpose::Lookup(qid) => {
                if let Some(q) = self.queries.get_mut(&qid) {
                    q.lookup.on_failure(&peer);
                }
                self.step(cx, qid);
            }
        }
    }

    /// Removes the request `id` to `peer` from the requests in flight.
    fn take_request(&mut self, peer: PeerId, id: u64) -> Option<Outbound> {
        let out = self.requests.remove(&(peer, id))?;
        self.deadlines.remove(&(out.deadline, peer, id));
        Some(out)
    }

    fn fail_all_to(&mut self, cx: &mut Context<'_>, peer: PeerId) {
        let ids: Vec<u64> = self
            .requests
            .range((peer, 0)..=(peer, u64::MAX))
            .map(|((_, id), _)| *id)
            .collect();
        for id in ids {
            self.fail_request(cx, peer, id);
        }
    }

    /// Whether the budget of [`Config::peer_record_fetches`] has room in the current window
    /// (starting a new window when the last one is over). The caller spends it with `record_fetches.1 += 1`
    /// once a request went out: a request refused (too many in flight) costs nothing.
    fn record_fetch_allowed(&mut self, now: Instant) -> bool {
        let (start, used) = &mut self.record_fetches;
        if now >= *start + self.config.refresh_interval {
            *start = now;
            *used = 0;
        }
        *used < self.config.peer_record_fetches
    }

    fn on_ready(&mut self, cx: &mut Context<'_>, info: &crate::node::PeerInfo) {
        if !info.capabilities.contains(Capabilities::DHT_SERVER) {
            return;
        }
        // Only confirmed-reachable servers enter the table: we dialed them, or the address we see
        // their connection come from is one they listen on (QUIC uses one socket for both, so
        // an untranslated address means no NAT in the way).
        // A connection over a relay says nothing about where the peer can be dialed.
        let reachable = (info.direction == Direction::Outbound
            || info.listen_addrs.contains(&info.addr))
            && !crate::nat::relay::is_relayed_addr(&info.addr);
        let Some(stamp) = info.stamp else { return };
        if !reachable {
            return;
        }
        let contact = Contact {
            peer: info.peer,
            stamp,
            addrs: info.listen_addrs.iter().copied().collect(),
        }
        .confirmed_at(info.addr);
        let was_empty = self.table.is_empty();
        let outcome = self.table.insert(contact.clone(), info.addr, cx.now);
        if outcome == InsertOutcome::Inserted && self.record_fetch_allowed(cx.now) {
            let request = Request::FindPeer { peer: info.peer };
            if self.request(cx, &contact, request, Purpose::OwnRecord) {
                self.record_fetches.1 += 1;
            }
        }
        if let Some(ping) = outcome.ping()
            && let Some(entry) = self.table.get(&ping)
        {
            let contact = entry.contact.clone();
            self.request(cx, &contact, Request::Ping, Purpose::EvictionPing);
        }
        if outcome == InsertOutcome::Inserted
            && was_empty
            && !self.bootstrap.done
            && self.config.auto_bootstrap
        {
            let _ = self.bootstrap(cx);
        }
    }
}

fn truncate(s: &mut String, max: usize) {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
}

impl Protocol for Kad {
    type Message = Message;

    fn handle_message(&mut self, cx: &mut Context<'_>, from: PeerId, msg: Message) {
        match msg {
            Message::Request { id, request } => self.on_request(cx, from, id, request),
            Message::Response { id, response } => self.on_response(cx, from, id, response),
        }
    }

    fn handle_peer_event(&mut self, cx: &mut Context<'_>, event: &PeerEvent) {
        match event {
            PeerEvent::Ready(info) => self.on_ready(cx, info),
            PeerEvent::Gone { peer } | PeerEvent::Unreachable { peer } => {
                self.fail_all_to(cx, *peer);
            }
        }
    }

    fn handle_timeout(&mut self, cx: &mut Context<'_>) {
        let now = cx.now;
        let expired: Vec<(PeerId, u64)> = self
            .deadlines
            .iter()
            .take_while(|(deadline, _, _)| *deadline <= now)
            .map(|&(_, peer, id)| (peer, id))
            .collect();
        for (peer, id) in expired {
            cx.observe(peer, Observation::Unanswered);
            self.fail_request(cx, peer, id);
        }
        self.table.handle_timeout(now);
        if self.bootstrap.next_attempt.is_some_and(|t| t <= now) && !self.table.is_empty() {
            let _ = self.bootstrap(cx);
        }
        if self.next_refresh.is_none_or(|t| t <= now) {
            self.next_refresh = Some(now + self.config.refresh_interval);
            if self.bootstrap.done {
                for index in self.table.stale_buckets(now, self.config.refresh_interval) {
                    self.queue_refresh(index);
                }
                self.run_refreshes(cx);
            }
        }
        if self.next_republish.is_some_and(|t| t <= now) {
            self.next_republish = Some(now + self.config.republish_interval);
            self.store.expire(now);
            self.republish(cx);
        }
    }

    fn poll_timeout(&self) -> Option<Instant> {
        let requests = self.deadlines.first().map(|(deadline, _, _)| *deadline);
        [
            requests,
            self.table.poll_timeout(),
            self.next_refresh,
            self.next_republish,
        ]
        .into_iter()
        .chain([self
            .bootstrap
            .next_attempt
            .filter(|_| !self.table.is_empty())])
        .flatten()
        .min()
    }
}

impl Kad {
    fn republish(&mut self, cx: &mut Context<'_>) {
        let now = cx.now;
        let ttl = self.config.record_ttl;
        let values: Vec<ValueRecord> = self.own_values.values().cloned().collect();
        for old in values {
            // Re-sign with a fresh expiry and the next sequence number.
            let seq = old.seq().saturating_add(1);
            let expires = (now + ttl).as_secs();
            let record =
                ValueRecord::new(&self.keypair, old.name(), old.value().clone(), seq, expires);
            let key = record.key();
            let _ = self.store.put_value(record.clone(), now);
            self.own_values.insert(key, record.clone());
            let _ = self.start(cx, key, Kind::PutValue { record }, 1);
        }
        let contents: Vec<[u8; 32]> = self.own_providers.values().map(|r| *r.content()).collect();
        for content in contents {
            let _ = self.provide(cx, content);
        }
        if self.bootstrap.done {
            let _ = self.publish_peer_record(cx);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::kad::store::{MemoryStore, StoreLimits};
    use crate::node::tests_support::Harness;
    use crate::wire::Message as WireMessage;

    fn kad(config: Config) -> Kad {
        let key = Keypair::from_secret_bytes([1; 32]);
        let stamp = Stamp::mint(&key.peer_id(), Difficulty(4));
        let store = Box::new(MemoryStore::new(StoreLimits::default()));
        Kad::new(key, stamp, Difficulty(4), config, store)
    }

    /// A DHT server that connected to us from the address it listens on: a table candidate.
    fn server_ready(h: &mut Harness, seed: u8, now: Instant) -> PeerEvent {
        let key = Keypair::from_secret_bytes([seed; 32]);
        let stamp = Stamp::mint(&key.peer_id(), Difficulty(4));
        match h.ready_with(key.peer_id(), now, Direction::Outbound) {
            PeerEvent::Ready(mut info) => {
                info.addr = SocketAddr::from(([10, seed, 0, 1], 4000));
                info.capabilities = Capabilities::DHT_SERVER;
                info.stamp = Some(stamp);
                PeerEvent::Ready(info)
            }
            other => other,
        }
    }

    /// Makes the servers of `seeds` ready at `now`, as `server_ready` describes them.
    fn servers_ready(kad: &mut Kad, h: &mut Harness, seeds: std::ops::Range<u8>, now: Instant) {
        for seed in seeds {
            let event = server_ready(h, seed, now);
            h.with(now, |cx| kad.handle_peer_event(cx, &event));
        }
    }

    fn record_fetches(h: &mut Harness) -> usize {
        h.transmits()
            .iter()
            .filter(|t| {
                matches!(
                    t.message,
                    WireMessage::Kad(Message::Request {
                        request: Request::FindPeer { .. },
                        ..
                    })
                )
            })
            .count()
    }

    #[test]
    fn new_table_entries_are_asked_for_their_records_within_a_budget_per_window() {
        let config = Config {
            peer_record_fetches: 3,
            auto_bootstrap: false,
            ..Config::default()
        };
        let window = config.refresh_interval;
        let mut kad = kad(config);
        let mut h = Harness::new();
        let t0 = Instant::ZERO + Duration::from_secs(1);
        servers_ready(&mut kad, &mut h, 10..15, t0);
        assert_eq!(kad.table().len(), 5, "every server entered the table");
        assert_eq!(
            record_fetches(&mut h),
            3,
            "only the budget's worth were asked"
        );

        // A new window brings a new budget.
        let t1 = t0 + window;
        servers_ready(&mut kad, &mut h, 15..20, t1);
        assert_eq!(kad.table().len(), 10);
        assert_eq!(record_fetches(&mut h), 3);
    }

    #[test]
    fn an_unanswered_request_fails_at_its_deadline_and_no_sooner() {
        let config = Config {
            peer_record_fetches: 1,
            auto_bootstrap: false,
            ..Config::default()
        };
        let timeout = config.request_timeout;
        let mut kad = kad(config);
        let mut h = Harness::new();
        let t0 = Instant::ZERO + Duration::from_secs(1);
        servers_ready(&mut kad, &mut h, 10..11, t0);
        assert_eq!(record_fetches(&mut h), 1);
        let deadline = t0 + timeout;
        assert!(kad.poll_timeout().is_some_and(|t| t <= deadline));

        let before = t0 + (timeout - Duration::from_millis(1));
        h.with(before, |cx| kad.handle_timeout(cx));
        assert_eq!(kad.stats().requests_failed, 0);
        h.with(deadline, |cx| kad.handle_timeout(cx));
        assert_eq!(kad.stats().requests_failed, 1);
        assert!(kad.poll_timeout().is_none_or(|t| t > deadline));
    }

    #[test]
    fn a_record_fetch_refused_for_want_of_request_slots_costs_no_budget() {
        let config = Config {
            peer_record_fetches: 2,
            max_requests: 1,
            auto_bootstrap: false,
            ..Config::default()
        };
        let timeout = config.request_timeout;
        let mut kad = kad(config);
        let mut h = Harness::new();
        let t0 = Instant::ZERO + Duration::from_secs(1);
        servers_ready(&mut kad, &mut h, 10..13, t0);
        assert_eq!(record_fetches(&mut h), 1, "one slot, one request");
        // The slot frees when the request times out; the budget still has one fetch.
        let t1 = t0 + timeout;
        h.with(t1, |cx| kad.handle_timeout(cx));
        servers_ready(&mut kad, &mut h, 13..14, t1);
        assert_eq!(record_fetches(&mut h), 1);
    }

    #[test]
    fn no_records_are_asked_for_with_a_budget_of_zero() {
        let mut kad = kad(Config {
            peer_record_fetches: 0,
            auto_bootstrap: false,
            ..Config::default()
        });
        let mut h = Harness::new();
        servers_ready(&mut kad, &mut h, 10..14, Instant::ZERO);
        assert_eq!(kad.table().len(), 4);
        assert_eq!(record_fetches(&mut h), 0);
    }

    /// The Kademlia requests among `transmits`, with the peer each goes to.
    fn kad_requests(transmits: Vec<crate::node::Transmit>) -> Vec<(PeerId, u64, Request)> {
        transmits
            .into_iter()
            .filter_map(|t| match t.message {
                WireMessage::Kad(Message::Request { id, request }) => Some((t.to, id, request)),
                _ => None,
            })
            .collect()
    }

    /// Answers every request: lookups learn nobody new, stores are acknowledged.
    fn answer(kad: &mut Kad, h: &mut Harness, now: Instant, requests: &[(PeerId, u64, Request)]) {
        for (peer, id, request) in requests {
            let response = match request {
                Request::PutPeer { .. } => Response::Stored,
                _ => Response::Nodes { closer: Vec::new() },
            };
            let msg = Message::Response { id: *id, response };
            h.with(now, |cx| kad.handle_message(cx, *peer, msg));
        }
    }

    #[test]
    fn a_bootstrap_stores_the_peer_record_where_it_looked_and_refreshes_one_bucket_at_a_time() {
        let mut kad = kad(Config {
            peer_record_fetches: 0,
            auto_bootstrap: false,
            ..Config::default()
        });
        let own = kad.local_key;
        let mut h = Harness::new();
        let mut now = Instant::ZERO;
        servers_ready(&mut kad, &mut h, 10..16, now);
        h.with(now, |cx| kad.bootstrap(cx)).unwrap();

        // Answer the self-lookup until it ends; then the record goes to the nodes it found.
        let mut refresh_targets = Vec::new();
        let mut stores = 0;
        let mut own_lookups_after_bootstrap = 0;
        for _ in 0..400 {
            let requests = kad_requests(h.transmits());
            if requests.is_empty() {
                break;
            }
            let mut targets = BTreeSet::new();
            for (_, _, request) in &requests {
                match request {
                    Request::FindNode { target } if *target == own && kad.is_bootstrapped() => {
                        own_lookups_after_bootstrap += 1;
                    }
                    Request::FindNode { target } if *target == own => {}
                    Request::FindNode { target } => {
                        targets.insert(*target);
                    }
                    Request::PutPeer { .. } => stores += 1,
                    _ => {}
                }
            }
            assert!(
                targets.len() <= 1,
                "one refresh lookup at a time, saw {} targets at once",
                targets.len()
            );
            refresh_targets.extend(targets);
            now = now + Duration::from_millis(100);
            answer(&mut kad, &mut h, now, &requests);
        }
        assert!(kad.is_bootstrapped());
        assert_eq!(
            stores, 6,
            "the record went to every node the self-lookup found"
        );
        assert_eq!(
            own_lookups_after_bootstrap, 0,
            "no second lookup for our own id"
        );
        refresh_targets.dedup();
        let nearest = kad.table().bucket_fill().first().map(|(i, _)| *i).unwrap();
        assert_eq!(
            refresh_targets.len(),
            255 - nearest,
            "every bucket farther than the nearest neighbour was refreshed"
        );
        assert_eq!(kad.running_queries(), 0);
    }
}

//! Topic publish/subscribe, GossipSub v1.1-style (with v1.2's IDONTWANT): messages spread along a
//! per-topic mesh of peers and are repaired by lazy gossip about what each node has seen.
//!
//! - **Subscriptions.** A node tells every ready peer which topics it subscribes to
//!   ([`Message::Subscribe`], with its own signed [`PeerRecord`] so peers can pass it on in peer
//!   exchange), and again whenever that changes. The peers that announced a topic are its
//!   *topic peers*; at most [`MAX_TOPICS`] topics are tracked per peer.
//!   Per-peer state (topics, rate limit, score) is made when a peer first sends a pub/sub
//!   message or is first told our subscriptions, not when it connects: most of a node's
//!   connections (DHT lookups, transfers) never carry pub/sub.
//! - **Mesh.** For each subscribed topic the node keeps a mesh of `d` topic peers (between
//!   `d_lo` and `d_hi`), set up with GRAFT and torn down with PRUNE. Every
//!   [`Config::heartbeat`] it drops mesh members with a negative score, grafts peers (best score
//!   first, then random) when below `d_lo`, and prunes down to `d` when above `d_hi`, keeping the
//!   `d_score` best-scored. A PRUNE carries a backoff (no re-GRAFT before it ends; a GRAFT during
//!   it is penalised) and peer exchange: signed records of other topic peers, which the pruned
//!   node may dial. rust-libp2p ships peer exchange off because its records are unsigned; these
//!   are verified before use.
//! - **Publishing.** A message is signed by its author ([`SignedMessage`]: topic, author, author's
//!   proof-of-work stamp, sequence number, data) and identified by `(author, seq)`
//!   ([`MessageId`]). The author sends it to every topic peer whose score reaches
//!   `publish_threshold` ([`Config::flood_publish`], the default) or to its mesh; a node that is
//!   not subscribed keeps a *fanout* set of `d` topic peers for `fanout_ttl` after publishing.
//! - **Receiving.** A message is checked in this order: the sender is not graylisted, it is
//!   within the sender's rate limit, it is new (a bounded, time-limited seen-cache), its stamp
//!   and signature verify (an invalid one is not remembered as seen, so a forger cannot shadow
//!   the real message), and the application's [`Validator`] accepts it. Only then is it delivered
//!   once to the application, cached, and forwarded to the mesh — minus the sender, the author
//!   and peers that said IDONTWANT. A message of `idontwant_threshold` bytes or more makes the
//!   node first send IDONTWANT to its other mesh members, so they do not send it back.
//! - **Gossip.** Each heartbeat the node sends IHAVE with the ids of recent messages
//!   (`history_gossip` of `history_length` heartbeats kept) to `d_lazy` topic peers outside its
//!   mesh; a peer missing some answers IWANT and gets them from the message cache. An IHAVE
//!   makes a promise: one id asked for must arrive within `iwant_followup`, or the promiser is
//!   penalised. IHAVE and IWANT are bounded per peer and heartbeat.
//! - **Scoring** (per peer, local, decaying each heartbeat): P1 time in mesh (capped), P2 first
//!   deliveries (capped), P4 invalid messages (squared, negative), P5 the node's reputation of
//!   the peer (its score in [`crate::trust::reputation`] less a stranger's), P6 IP colocation (more than
//!   `ip_colocation_threshold` peers from one IP address, squared, negative; loopback exempt),
//!   P7 behaviour penalty (GRAFT during backoff, broken IHAVE promises; squared, negative).
//!   Below `gossip_threshold` a peer gets no gossip and its gossip is ignored; below
//!   `publish_threshold` it gets no flood-published messages; below `graylist_threshold` all it
//!   sends is ignored. Negative scores outlive a disconnection for `retain_score`.
//! - **Bounds.** Per-peer rate limit on messages (token bucket), bounded seen-cache, message
//!   cache, IDONTWANT sets, promises, topic tables and control messages; the node's output
//!   queues and the runtime's per-connection send queues shed load from slow peers.
//!
//! Parts: [`Config`], [`Message`], [`SignedMessage`], the state machine [`PubSub`], its results
//! ([`Event`]) and counters ([`Stats`]).

mod score;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use bytes::Bytes;
use rand_core::RngCore;
use serde::{Deserialize, Serialize};

use crate::identity::{Keypair, PeerId, Signature, signed_message};
use crate::kad::record::{MAX_RECORD_ADDRS, MAX_RECORD_RELAYS, PeerRecord, RecordLimits};
use crate::node::{Context, PeerEvent, Protocol};
use crate::pow::{Difficulty, Stamp};
use crate::random;
use crate::time::Instant;
use crate::trust::reputation::Observation;
use crate::wire::{WireError, check_bound};

pub use score::ScoreParams;
use score::Scores;

/// Longest topic name, in bytes.
pub const MAX_TOPIC_LEN: usize = 256;
/// Largest message data accepted on the wire, in bytes ([`Config::max_message_size`] may be
/// lower).
pub const MAX_DATA_LEN: usize = 512 * 1024;
/// Most topics in one subscription message or control list, and most topics tracked per peer
/// and subscribed locally.
pub const MAX_TOPICS: usize = 64;
/// Most message ids in one IHAVE, IWANT or IDONTWANT list.
pub const MAX_IDS: usize = 5000;
/// Most peer records in one PRUNE's peer exchange.
pub const MAX_PX: usize = 16;

/// A message's id: the first 20 bytes of BLAKE3 over its author and sequence number.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct MessageId(pub [u8; 20]);

impl MessageId {
    /// The id of `author`'s message number `seq`.
    pub fn new(author: &PeerId, seq: u64) -> Self {
        let mut h = blake3::Hasher::new();
        h.update(b"spore-pubsub-id-v1");
        h.update(author.as_bytes());
        h.update(&seq.to_be_bytes());
        let mut id = [0u8; 20];
        id.copy_from_slice(&h.finalize().as_bytes()[..20]);
        MessageId(id)
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MessageId({self})")
    }
}

/// A published message, signed by its author.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedMessage {
    topic: String,
    author: PeerId,
    stamp: Stamp,
    seq: u64,
    data: Bytes,
    signature: Signature,
}

impl SignedMessage {
    /// Signs `data` on `topic` as message number `seq` of `keypair`'s peer.
    pub fn new(keypair: &Keypair, stamp: Stamp, topic: String, seq: u64, data: Bytes) -> Self {
        let mut m = SignedMessage {
            topic,
            author: keypair.peer_id(),
            stamp,
            seq,
            data,
            signature: Signature([0; 64]),
        };
        m.signature = keypair.sign(&m.signed_bytes());
        m
    }

    fn signed_bytes(&self) -> Vec<u8> {
        let fields = (
            &self.topic,
            &self.author,
            &self.stamp,
            self.seq,
            &self.data[..],
        );
        signed_message("spore-pubsub-message-v1", &fields)
    }

    /// Checks the author's proof of work against `difficulty` and the signature.
    pub fn verify(&self, difficulty: Difficulty) -> Result<(), &'static str> {
        self.stamp
            .verify(&self.author, difficulty)
            .map_err(|_| "author's stamp is too weak")?;
        self.author
            .verify(&self.signed_bytes(), &self.signature)
            .map_err(|_| "bad signature")
    }

    /// The message's id.
    pub fn id(&self) -> MessageId {
        MessageId::new(&self.author, self.seq)
    }

    /// The topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The author.
    pub fn author(&self) -> &PeerId {
        &self.author
    }

    /// The author's sequence number.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The payload.
    pub fn data(&self) -> &Bytes {
        &self.data
    }

    /// For tests and adversaries: the same message with other data (the signature no longer
    /// matches).
    pub fn with_data(mut self, data: Bytes) -> Self {
        self.data = data;
        self
    }
}

/// Topics a peer has in its mesh and wants us to leave.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Prune {
    /// The topic.
    pub topic: String,
    /// Seconds before we may GRAFT again.
    pub backoff: u32,
    /// Signed records of other peers on the topic (peer exchange).
    pub px: Vec<PeerRecord>,
}

/// Mesh and gossip control, piggybacked in one message per peer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Control {
    /// Ids of recent messages, per topic.
    pub ihave: Vec<(String, Vec<MessageId>)>,
    /// Ids of messages we want.
    pub iwant: Vec<MessageId>,
    /// Topics on which the sender added us to its mesh.
    pub graft: Vec<String>,
    /// Topics on which the sender removed us from its mesh.
    pub prune: Vec<Prune>,
    /// Ids of large messages the sender already has.
    pub idontwant: Vec<MessageId>,
}

impl Control {
    fn is_empty(&self) -> bool {
        self.ihave.is_empty()
            && self.iwant.is_empty()
            && self.graft.is_empty()
            && self.prune.is_empty()
            && self.idontwant.is_empty()
    }
}

/// Pub/sub's messages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// The sender's subscription changes (`true` = subscribed), and its own record.
    Subscribe {
        /// Topics and whether the sender is now subscribed.
        topics: Vec<(String, bool)>,
        /// The sender's signed record, for peer exchange; sent with the first announcement.
        record: Option<PeerRecord>,
    },
    /// A published message.
    Publish(SignedMessage),
    /// Mesh and gossip control.
    Control(Control),
}

impl Message {
    /// Checks the bounds a decoder must enforce.
    pub fn validate(&self) -> Result<(), WireError> {
        let topic = |t: &String| check_bound("pubsub.topic", t.len(), MAX_TOPIC_LEN);
        let record = |r: &PeerRecord| {
            check_bound("pubsub.record.addrs", r.addrs().len(), MAX_RECORD_ADDRS)?;
            check_bound("pubsub.record.relays", r.relays().len(), MAX_RECORD_RELAYS)
        };
        match self {
            Message::Subscribe { topics, record: r } => {
                check_bound("pubsub.subscribe", topics.len(), MAX_TOPICS)?;
                topics.iter().try_for_each(|(t, _)| topic(t))?;
                r.iter().try_for_each(record)
            }
            Message::Publish(m) => {
                topic(&m.topic)?;
                check_bound("pubsub.data", m.data.len(), MAX_DATA_LEN)
            }
            Message::Control(c) => {
                check_bound("pubsub.ihave", c.ihave.len(), MAX_TOPICS)?;
                let ids: usize = c.ihave.iter().map(|(_, ids)| ids.len()).sum();
                check_bound("pubsub.ihave.ids", ids, MAX_IDS)?;
                c.ihave.iter().try_for_each(|(t, _)| topic(t))?;
                check_bound("pubsub.iwant", c.iwant.len(), MAX_IDS)?;
                check_bound("pubsub.graft", c.graft.len(), MAX_TOPICS)?;
                c.graft.iter().try_for_each(topic)?;
                check_bound("pubsub.prune", c.prune.len(), MAX_TOPICS)?;
                for p in &c.prune {
                    topic(&p.topic)?;
                    check_bound("pubsub.prune.px", p.px.len(), MAX_PX)?;
                    p.px.iter().try_for_each(record)?;
                }
                check_bound("pubsub.idontwant", c.idontwant.len(), MAX_IDS)
            }
        }
    }

    /// A short name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Subscribe { .. } => "pubsub-subscribe",
            Message::Publish(_) => "pubsub-publish",
            Message::Control(_) => "pubsub-control",
        }
    }
}

/// The application's verdict on a message, given before it is delivered or forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validation {
    /// Deliver and forward.
    Accept,
    /// Neither deliver nor forward, without blaming the sender.
    Ignore,
    /// Neither deliver nor forward, and count it against the sender's score.
    Reject,
}

/// The application's check of messages, run on every new message with a valid signature.
pub trait Validator: Send {
    /// Judges `data` published by `author` on `topic`.
    fn validate(&mut self, topic: &str, author: &PeerId, data: &[u8]) -> Validation;
}

impl<F: FnMut(&str, &PeerId, &[u8]) -> Validation + Send> Validator for F {
    fn validate(&mut self, topic: &str, author: &PeerId, data: &[u8]) -> Validation {
        self(topic, author, data)
    }
}

/// Pub/sub's settings. The defaults are GossipSub v1.1's.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Whether pub/sub runs. When `false` the node announces nothing and ignores pub/sub
    /// messages. Default `true`.
    pub enabled: bool,
    /// Target mesh degree. Default 6.
    pub d: usize,
    /// Below this many mesh members, graft more. Default 4.
    pub d_lo: usize,
    /// Above this many, prune down to `d`. Default 12.
    pub d_hi: usize,
    /// Mesh members kept by score when pruning (the rest at random). Default 4.
    pub d_score: usize,
    /// Peers outside the mesh sent IHAVE each heartbeat, per topic. Default 6.
    pub d_lazy: usize,
    /// Mesh maintenance and gossip period. Default 1 s.
    pub heartbeat: Duration,
    /// How long a fanout set lives after the last publish. Default 60 s.
    pub fanout_ttl: Duration,
    /// Heartbeats a message stays in the message cache (answerable to IWANT). Default 5.
    pub history_length: usize,
    /// Heartbeats of the cache advertised in IHAVE. Default 3.
    pub history_gossip: usize,
    /// Most messages in the message cache. Default 10,000.
    pub max_cached: usize,
    /// How long a message id is remembered as seen. Default 120 s.
    pub seen_ttl: Duration,
    /// Most ids remembered as seen. Default 100,000.
    pub max_seen: usize,
    /// Largest message data published or accepted (at most [`MAX_DATA_LEN`]). Default 64 KiB.
    pub max_message_size: usize,
    /// Whether the author sends a new message to every topic peer above `publish_threshold`
    /// rather than only its mesh. Default `true`.
    pub flood_publish: bool,
    /// Backoff announced in a PRUNE. Default 60 s.
    pub prune_backoff: Duration,
    /// Backoff when leaving a topic. Default 10 s.
    pub unsubscribe_backoff: Duration,
    /// A GRAFT this soon after a PRUNE costs an extra behaviour penalty. Default 10 s.
    pub graft_flood_threshold: Duration,
    /// Messages at least this large make the node send IDONTWANT to its mesh. Default 1 KiB.
    pub idontwant_threshold: usize,
    /// Most IHAVE messages handled per peer and heartbeat. Default 10.
    pub max_ihave_messages: usize,
    /// Most ids asked for per peer and heartbeat in IWANT. Default 5000.
    pub max_ihave_length: usize,
    /// How long a peer has to deliver a message it advertised and we asked for. Default 3 s.
    pub iwant_followup: Duration,
    /// How often one message is sent to one peer in answer to IWANT. Default 3.
    pub gossip_retransmission: u8,
    /// Messages (publish frames, duplicates included) accepted per second from one peer.
    /// Default 1000.
    pub max_messages_per_sec: u32,
    /// Whether PRUNE carries peer exchange, and PX received is dialed. Default `true`.
    pub peer_exchange: bool,
    /// Scoring parameters and thresholds.
    pub score: ScoreParams,
    /// Records expiring further ahead than this are not accepted. Default 48 h.
    pub max_record_ttl: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            enabled: true,
            d: 6,
            d_lo: 4,
            d_hi: 12,
            d_score: 4,
            d_lazy: 6,
            heartbeat: Duration::from_secs(1),
            fanout_ttl: Duration::from_secs(60),
            history_length: 5,
            history_gossip: 3,
            max_cached: 10_000,
            seen_ttl: Duration::from_secs(120),
            max_seen: 100_000,
            max_message_size: 64 * 1024,
            flood_publish: true,
            prune_backoff: Duration::from_secs(60),
            unsubscribe_backoff: Duration::from_secs(10),
            graft_flood_threshold: Duration::from_secs(10),
            idontwant_threshold: 1024,
            max_ihave_messages: 10,
            max_ihave_length: 5000,
            iwant_followup: Duration::from_secs(3),
            gossip_retransmission: 3,
            max_messages_per_sec: 1000,
            peer_exchange: true,
            score: ScoreParams::default(),
            max_record_ttl: crate::kad::record::DEFAULT_MAX_TTL,
        }
    }
}

/// What pub/sub reports.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A new, valid, accepted message on a subscribed topic: delivered once.
    Message {
        /// The message's id.
        id: MessageId,
        /// Its topic.
        topic: String,
        /// Its author.
        author: PeerId,
        /// The author's sequence number.
        seq: u64,
        /// The payload.
        data: Bytes,
        /// The peer it arrived from.
        from: PeerId,
    },
}

/// Why a publish or subscribe was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PubSubError {
    /// Pub/sub is disabled.
    #[error("pub/sub is disabled")]
    Disabled,
    /// The topic name is empty or too long.
    #[error("topic must be 1 to {MAX_TOPIC_LEN} bytes")]
    BadTopic,
    /// The data exceeds [`Config::max_message_size`].
    #[error("message of {size} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// Already subscribed to [`MAX_TOPICS`] topics.
    #[error("subscribed to the maximum of {MAX_TOPICS} topics")]
    TooManyTopics,
}

/// A message this node published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    /// Its id.
    pub id: MessageId,
    /// Peers it was sent to directly (0: no known peer on the topic yet; gossip cannot help
    /// either, so publish again once peers are there).
    pub peers: usize,
}

/// Counters, for status, metrics and the simulator.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Stats {
    /// Messages this node published.
    pub published: u64,
    /// Messages delivered to the application.
    pub delivered: u64,
    /// Publish frames received (all, before any check).
    pub received: u64,
    /// Publish frames for messages already seen.
    pub duplicates: u64,
    /// Messages forwarded (one per recipient).
    pub forwarded: u64,
    /// Messages with a bad signature or stamp.
    pub invalid: u64,
    /// Messages the validator rejected.
    pub rejected: u64,
    /// Messages the validator ignored.
    pub ignored: u64,
    /// Messages on closed topics from authors this node does not trust, dropped.
    pub untrusted: u64,
    /// Publish frames dropped by the per-peer rate limit.
    pub rate_limited: u64,
    /// Messages from graylisted peers, ignored.
    pub graylisted: u64,
    /// Messages larger than `max_message_size`, dropped.
    pub oversized: u64,
    /// IHAVE sent (one per topic and peer).
    pub ihave_sent: u64,
    /// Ids asked for in IWANT.
    pub iwant_sent: u64,
    /// Messages sent in answer to IWANT.
    pub iwant_served: u64,
    /// GRAFTs sent.
    pub grafts_sent: u64,
    /// PRUNEs sent.
    pub prunes_sent: u64,
    /// IDONTWANT ids sent.
    pub idontwant_sent: u64,
    /// Sends skipped because the peer said IDONTWANT.
    pub idontwant_saved: u64,
    /// IHAVE promises not kept.
    pub broken_promises: u64,
    /// GRAFTs received during a backoff.
    pub graft_during_backoff: u64,
    /// Peer-exchange records dialed.
    pub px_dialed: u64,
    /// Records (subscribe or PX) that failed verification.
    pub invalid_records: u64,
}

#[derive(Debug)]
struct PeerState {
    topics: BTreeSet<String>,
    /// Boxed: most peers never send one, and every connection has a `PeerState`.
    record: Option<Box<PeerRecord>>,
    /// Whether we sent this peer our subscriptions with our record yet.
    told: bool,
    tokens: f64,
    refilled: Instant,
    /// Ids the peer said it does not want, with when to forget them.
    dont_send: HashMap<MessageId, Instant>,
    ihaves: usize,
    asked: usize,
}

/// Ids seen recently: a set for lookups and a FIFO for expiry.
#[derive(Debug, Default)]
struct SeenCache {
    set: HashSet<MessageId>,
    order: VecDeque<(Instant, MessageId)>,
}

impl SeenCache {
    fn contains(&self, id: &MessageId) -> bool {
        self.set.contains(id)
    }

    fn insert(&mut self, id: MessageId, now: Instant, max: usize) {
        if self.set.insert(id) {
            self.order.push_back((now, id));
            while self.order.len() > max.max(1) {
                if let Some((_, old)) = self.order.pop_front() {
                    self.set.remove(&old);
                }
            }
        }
    }

    fn expire(&mut self, before: Instant) {
        while let Some((t, id)) = self.order.front().copied() {
            if t >= before {
                break;
            }
            self.order.pop_front();
            self.set.remove(&id);
        }
    }
}

/// Recent messages by heartbeat window, answerable to IWANT.
#[derive(Debug, Default)]
struct MessageCache {
    messages: HashMap<MessageId, (SignedMessage, Vec<(PeerId, u8)>)>,
    windows: VecDeque<Vec<MessageId>>,
}

impl MessageCache {
    fn put(&mut self, m: SignedMessage, max: usize) {
        if self.messages.len() >= max {
            return;
        }
        let id = m.id();
        if self.messages.insert(id, (m, Vec::new())).is_none() {
            if self.windows.is_empty() {
                self.windows.push_back(Vec::new());
            }
            if let Some(w) = self.windows.back_mut() {
                w.push(id);
            }
        }
    }

    /// Ids of the last `windows` heartbeats on `topic`.
    fn gossip_ids(&self, topic: &str, windows: usize) -> Vec<MessageId> {
        self.windows
            .iter()
            .rev()
            .take(windows)
            .flatten()
            .filter(|id| self.messages.get(id).is_some_and(|(m, _)| m.topic == topic))
            .copied()
            .collect()
    }

    /// The message for `peer`'s IWANT, unless it was sent to it `max` times already.
    fn get_for(&mut self, id: &MessageId, peer: PeerId, max: u8) -> Option<SignedMessage> {
        let (m, served) = self.messages.get_mut(id)?;
        match served.iter_mut().find(|(p, _)| *p == peer) {
            Some((_, n)) if *n >= max => return None,
            Some((_, n)) => *n += 1,
            None => served.push((peer, 1)),
        }
        Some(m.clone())
    }

    fn shift(&mut self, keep: usize) {
        self.windows.push_back(Vec::new());
        while self.windows.len() > keep.max(1) {
            for id in self.windows.pop_front().unwrap_or_default() {
                self.messages.remove(&id);
            }
        }
    }
}

/// Most outstanding IHAVE promises.
const MAX_PROMISES: usize = 10_000;
/// Most IDONTWANT ids remembered per peer.
const MAX_DONT_SEND: usize = 1000;

/// The pub/sub state machine. See the [module docs](self).
pub struct PubSub {
    keypair: Keypair,
    stamp: Stamp,
    limits: RecordLimits,
    config: Config,
    next_seq: Option<u64>,
    subscriptions: BTreeSet<String>,
    peers: BTreeMap<PeerId, PeerState>,
    topic_peers: BTreeMap<String, BTreeSet<PeerId>>,
    mesh: BTreeMap<String, BTreeSet<PeerId>>,
    fanout: BTreeMap<String, (BTreeSet<PeerId>, Instant)>,
    backoff: BTreeMap<(String, PeerId), Instant>,
    seen: SeenCache,
    cache: MessageCache,
    scores: Scores,
    /// Message id → (peer that promised it, deadline).
    promises: BTreeMap<MessageId, (PeerId, Instant)>,
    pending: BTreeMap<PeerId, Control>,
    validator: Option<Box<dyn Validator>>,
    /// Closed topics: only messages whose author this node trusts within the depth are
    /// delivered or forwarded.
    closed: BTreeMap<String, u8>,
    next_heartbeat: Option<Instant>,
    stats: Stats,
}

impl fmt::Debug for PubSub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PubSub")
            .field("subscriptions", &self.subscriptions)
            .field("peers", &self.peers.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl PubSub {
    /// Pub/sub for `keypair`'s node with proof of work `stamp`, on a network of `difficulty`.
    pub fn new(keypair: Keypair, stamp: Stamp, difficulty: Difficulty, config: Config) -> Self {
        Self {
            keypair,
            stamp,
            limits: RecordLimits {
                max_ttl: config.max_record_ttl,
                difficulty,
            },
            scores: Scores::new(config.score.clone()),
            config,
            next_seq: None,
            subscriptions: BTreeSet::new(),
            peers: BTreeMap::new(),
            topic_peers: BTreeMap::new(),
            mesh: BTreeMap::new(),
            fanout: BTreeMap::new(),
            backoff: BTreeMap::new(),
            seen: SeenCache::default(),
            cache: MessageCache::default(),
            promises: BTreeMap::new(),
            pending: BTreeMap::new(),
            validator: None,
            closed: BTreeMap::new(),
            next_heartbeat: None,
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

    /// Whether this node subscribes to `topic`.
    pub fn is_subscribed(&self, topic: &str) -> bool {
        self.subscriptions.contains(topic)
    }

    /// Topics this node subscribes to.
    pub fn subscriptions(&self) -> impl Iterator<Item = &str> {
        self.subscriptions.iter().map(String::as_str)
    }

    /// The mesh members of `topic`.
    pub fn mesh(&self, topic: &str) -> impl Iterator<Item = &PeerId> {
        self.mesh.get(topic).into_iter().flatten()
    }

    /// Whether `peer` is in the mesh of any topic.
    pub fn in_any_mesh(&self, peer: &PeerId) -> bool {
        self.mesh.values().any(|m| m.contains(peer))
    }

    /// How many ready peers pub/sub keeps state for: those that sent it a message or that it
    /// told its subscriptions. A peer that does neither costs it nothing.
    pub fn tracked_peers(&self) -> usize {
        self.peers.len()
    }

    /// Ready peers that announced `topic`.
    pub fn topic_peers(&self, topic: &str) -> impl Iterator<Item = &PeerId> {
        self.topic_peers.get(topic).into_iter().flatten()
    }

    /// `peer`'s current score.
    pub fn score(&self, peer: &PeerId, now: Instant) -> f64 {
        self.scores.score(peer, now)
    }

    /// Closes `topic`: from now on only messages whose author this node trusts within `depth`
    /// vouches (see [`crate::trust::wot`]) are delivered and forwarded; others are dropped
    /// without a mark against the peer that forwarded them (its web of trust may differ).
    pub fn close_topic(&mut self, topic: &str, depth: u8) -> Result<(), PubSubError> {
        self.check_topic(topic)?;
        if !self.closed.contains_key(topic) && self.closed.len() >= MAX_TOPICS {
            return Err(PubSubError::TooManyTopics);
        }
        self.closed.insert(topic.to_string(), depth);
        Ok(())
    }

    /// Opens a closed topic again. False if it was not closed.
    pub fn open_topic(&mut self, topic: &str) -> bool {
        self.closed.remove(topic).is_some()
    }

    /// The closed topics and the trust depth each requires.
    pub fn closed_topics(&self) -> impl Iterator<Item = (&str, u8)> {
        self.closed.iter().map(|(t, d)| (t.as_str(), *d))
    }

    /// Sets the application's validator (replacing any earlier one).
    pub fn set_validator(&mut self, validator: Box<dyn Validator>) {
        self.validator = Some(validator);
    }

    /// Subscribes to `topic`: tells every ready peer and builds a mesh (from the fanout set if
    /// there is one). Subscribing twice is harmless.
    pub fn subscribe(&mut self, cx: &mut Context<'_>, topic: &str) -> Result<(), PubSubError> {
        self.check_topic(topic)?;
        if self.subscriptions.contains(topic) {
            return Ok(());
        }
        if self.subscriptions.len() >= MAX_TOPICS {
            return Err(PubSubError::TooManyTopics);
        }
        self.subscriptions.insert(topic.to_string());
        self.announce(cx, topic, true);
        let mut members = self
            .fanout
            .remove(topic)
            .map(|(peers, _)| peers)
            .unwrap_or_default();
        members.retain(|p| self.scores.score(p, cx.now) >= 0.0);
        let more = self.candidates(cx, topic, &members);
        let need = self.config.d.saturating_sub(members.len());
        members.extend(random::sample(cx.rng, more, need));
        for &peer in &members {
            self.graft(cx.now, topic, peer);
        }
        self.mesh.insert(topic.to_string(), members);
        self.schedule(cx.now);
        self.flush(cx);
        Ok(())
    }

    /// Leaves `topic`: tells every ready peer and prunes the mesh. False if not subscribed.
    pub fn unsubscribe(&mut self, cx: &mut Context<'_>, topic: &str) -> bool {
        if !self.subscriptions.remove(topic) {
            return false;
        }
        self.announce(cx, topic, false);
        let backoff = self.config.unsubscribe_backoff;
        for peer in self.mesh.remove(topic).unwrap_or_default() {
            self.scores.left_mesh(&peer, topic, cx.now);
            self.prune(cx, topic, peer, backoff, false);
        }
        self.flush(cx);
        true
    }

    /// Signs and sends `data` on `topic`. The node need not be subscribed.
    pub fn publish(
        &mut self,
        cx: &mut Context<'_>,
        topic: &str,
        data: Bytes,
    ) -> Result<Published, PubSubError> {
        self.check_topic(topic)?;
        let max = self.config.max_message_size.min(MAX_DATA_LEN);
        if data.len() > max {
            return Err(PubSubError::TooLarge {
                size: data.len(),
                max,
            });
        }
        // Start numbering at a random point, so a restarted node does not reuse the ids of its
        // earlier messages that peers still remember as seen.
        let seq = *self.next_seq.get_or_insert_with(|| cx.rng.next_u64() >> 2);
        self.next_seq = Some(seq + 1);
        let m = SignedMessage::new(&self.keypair, self.stamp, topic.to_string(), seq, data);
        let id = m.id();
        self.seen.insert(id, cx.now, self.config.max_seen);
        self.cache.put(m.clone(), self.config.max_cached);
        self.stats.published += 1;
        let recipients: Vec<PeerId> = if self.config.flood_publish {
            let threshold = self.config.score.publish_threshold;
            self.topic_peers(topic)
                .filter(|p| self.scores.score(p, cx.now) >= threshold)
                .copied()
                .collect()
        } else if let Some(mesh) = self.mesh.get(topic) {
            mesh.iter().copied().collect()
        } else {
            self.fanout_peers(cx, topic)
        };
        if !self.subscriptions.contains(topic) {
            let peers = self.fanout_peers(cx, topic);
            self.fanout
                .insert(topic.to_string(), (peers.into_iter().collect(), cx.now));
        }
        for &peer in &recipients {
            cx.send(peer, Message::Publish(m.clone()));
        }
        self.schedule(cx.now);
        Ok(Published {
            id,
            peers: recipients.len(),
        })
    }

    fn check_topic(&self, topic: &str) -> Result<(), PubSubError> {
        if !self.config.enabled {
            return Err(PubSubError::Disabled);
        }
        if topic.is_empty() || topic.len() > MAX_TOPIC_LEN {
            return Err(PubSubError::BadTopic);
        }
        Ok(())
    }

    /// The fanout set of `topic`, topped up to `d` from its topic peers.
    fn fanout_peers(&mut self, cx: &mut Context<'_>, topic: &str) -> Vec<PeerId> {
        let threshold = self.config.score.publish_threshold;
        let mut have: BTreeSet<PeerId> = self
            .fanout
            .get(topic)
            .map(|(p, _)| p.clone())
            .unwrap_or_default();
        have.retain(|p| {
            self.peers.get(p).is_some_and(|s| s.topics.contains(topic))
                && self.scores.score(p, cx.now) >= threshold
        });
        let more: Vec<PeerId> = self
            .topic_peers(topic)
            .filter(|p| !have.contains(p) && self.scores.score(p, cx.now) >= threshold)
            .copied()
            .collect();
        let need = self.config.d.saturating_sub(have.len());
        have.extend(random::sample(cx.rng, more, need));
        have.into_iter().collect()
    }

    /// Topic peers that may join the mesh of `topic`: not in `exclude`, not backing off, score
    /// not negative.
    fn candidates(&self, cx: &Context<'_>, topic: &str, exclude: &BTreeSet<PeerId>) -> Vec<PeerId> {
        self.topic_peers(topic)
            .filter(|p| {
                let backing_off = self
                    .backoff
                    .get(&(topic.to_string(), **p))
                    .is_some_and(|t| *t > cx.now);
                !exclude.contains(p) && !backing_off && self.scores.score(p, cx.now) >= 0.0
            })
            .copied()
            .collect()
    }

    /// Tells every ready peer that we (un)subscribed `topic`.
    fn announce(&mut self, cx: &mut Context<'_>, topic: &str, subscribed: bool) {
        let record = cx.own_record();
        let peers: Vec<PeerId> = cx.ready_peer_ids().collect();
        for peer in peers {
            let Some(state) = self.state(cx, peer) else {
                continue;
            };
            let record = if state.told { None } else { record.clone() };
            state.told = true;
            cx.send(
                peer,
                Message::Subscribe {
                    topics: vec![(topic.to_string(), subscribed)],
                    record,
                },
            );
        }
    }

    /// `peer`'s state, created if it is ready and has none yet: a peer gets state when it first
    /// sends a pub/sub message or when we first tell it our subscriptions, not when it connects.
    /// Most connections (DHT lookups, transfers) never carry pub/sub, and a node holds hundreds.
    fn state(&mut self, cx: &Context<'_>, peer: PeerId) -> Option<&mut PeerState> {
        if !self.peers.contains_key(&peer) {
            let ip = cx.ready_ip(&peer)?;
            self.scores.connected(&peer, ip, cx.now);
            let rate = f64::from(self.config.max_messages_per_sec.max(1));
            self.peers.insert(
                peer,
                PeerState {
                    topics: BTreeSet::new(),
                    record: None,
                    told: false,
                    tokens: rate,
                    refilled: cx.now,
                    dont_send: HashMap::new(),
                    ihaves: 0,
                    asked: 0,
                },
            );
        }
        self.peers.get_mut(&peer)
    }

    fn control(&mut self, peer: PeerId) -> &mut Control {
        self.pending.entry(peer).or_default()
    }

    fn graft(&mut self, now: Instant, topic: &str, peer: PeerId) {
        self.scores.joined_mesh(&peer, topic, now);
        self.stats.grafts_sent += 1;
        self.control(peer).graft.push(topic.to_string());
    }

    /// Queues a PRUNE of `topic` to `peer` and backs off from it ourselves.
    fn prune(
        &mut self,
        cx: &mut Context<'_>,
        topic: &str,
        peer: PeerId,
        backoff: Duration,
        px: bool,
    ) {
        self.stats.prunes_sent += 1;
        self.backoff
            .insert((topic.to_string(), peer), cx.now + backoff);
        let px = if px && self.config.peer_exchange {
            let records: Vec<PeerRecord> = self
                .topic_peers(topic)
                .filter(|p| **p != peer)
                .filter_map(|p| self.peers.get(p).and_then(|s| s.record.as_deref().cloned()))
                .collect();
            random::sample(cx.rng, records, MAX_PX)
        } else {
            Vec::new()
        };
        let c = self.control(peer);
        if c.prune.len() < MAX_TOPICS {
            c.prune.push(Prune {
                topic: topic.to_string(),
                backoff: backoff.as_secs().min(u64::from(u32::MAX)) as u32,
                px,
            });
        }
    }

    /// Sends the queued control messages.
    fn flush(&mut self, cx: &mut Context<'_>) {
        for (peer, c) in std::mem::take(&mut self.pending) {
            if !c.is_empty() && self.peers.contains_key(&peer) {
                cx.send(peer, Message::Control(c));
            }
        }
    }

    fn schedule(&mut self, now: Instant) {
        if self.next_heartbeat.is_none() {
            self.next_heartbeat = Some(now + self.heartbeat());
        }
    }

    fn heartbeat(&self) -> Duration {
        self.config.heartbeat.max(Duration::from_millis(10))
    }

    fn handle_subscribe(
        &mut self,
        cx: &mut Context<'_>,
        from: PeerId,
        topics: Vec<(String, bool)>,
        record: Option<PeerRecord>,
    ) {
        if let Some(r) = record {
            if *r.peer() == from && r.verify(cx.now, &self.limits).is_ok() {
                if let Some(s) = self.peers.get_mut(&from) {
                    s.record = Some(Box::new(r));
                }
            } else {
                self.stats.invalid_records += 1;
            }
        }
        for (topic, subscribed) in topics {
            let Some(state) = self.peers.get_mut(&from) else {
                return;
            };
            if subscribed {
                if state.topics.len() >= MAX_TOPICS && !state.topics.contains(&topic) {
                    continue;
                }
                state.topics.insert(topic.clone());
                self.topic_peers.entry(topic).or_default().insert(from);
            } else {
                state.topics.remove(&topic);
                self.forget_topic_peer(cx.now, &topic, &from);
            }
        }
        self.schedule(cx.now);
    }

    /// Drops `peer`'s state, if it has any: it disconnected.
    fn forget_peer(&mut self, now: Instant, peer: &PeerId) {
        let Some(state) = self.peers.remove(peer) else {
            return;
        };
        for topic in state.topics {
            self.forget_topic_peer(now, &topic, peer);
        }
        self.pending.remove(peer);
        self.scores.disconnected(peer, now);
    }

    fn forget_topic_peer(&mut self, now: Instant, topic: &str, peer: &PeerId) {
        if let Some(set) = self.topic_peers.get_mut(topic) {
            set.remove(peer);
            if set.is_empty() {
                self.topic_peers.remove(topic);
            }
        }
        if let Some(mesh) = self.mesh.get_mut(topic)
            && mesh.remove(peer)
        {
            self.scores.left_mesh(peer, topic, now);
        }
        if let Some((f, _)) = self.fanout.get_mut(topic) {
            f.remove(peer);
        }
    }

    fn handle_publish(&mut self, cx: &mut Context<'_>, from: PeerId, m: SignedMessage) {
        self.stats.received += 1;
        let now = cx.now;
        let Some(state) = self.peers.get_mut(&from) else {
            return;
        };
        // Token bucket: max_messages_per_sec, burst of one second's worth.
        let rate = f64::from(self.config.max_messages_per_sec.max(1));
        let elapsed = now.saturating_duration_since(state.refilled).as_secs_f64();
        state.tokens = (state.tokens + elapsed * rate).min(rate);
        state.refilled = now;
        if state.tokens < 1.0 {
            self.stats.rate_limited += 1;
            return;
        }
        state.tokens -= 1.0;
        if m.data.len() > self.config.max_message_size.min(MAX_DATA_LEN) {
            self.stats.oversized += 1;
            return;
        }
        let id = m.id();
        if self.promises.get(&id).is_some_and(|(p, _)| *p == from) {
            self.promises.remove(&id);
        }
        if self.seen.contains(&id) {
            self.stats.duplicates += 1;
            return;
        }
        if m.verify(self.limits.difficulty).is_err() {
            self.stats.invalid += 1;
            self.scores.invalid(&from, &m.topic, now);
            cx.observe(from, Observation::Invalid);
            return;
        }
        self.promises.remove(&id);
        self.seen.insert(id, now, self.config.max_seen);
        if m.author == self.keypair.peer_id() {
            return;
        }
        if let Some(&depth) = self.closed.get(&m.topic)
            && !cx.trusts(&m.author, depth)
        {
            self.stats.untrusted += 1;
            return;
        }
        let verdict = match &mut self.validator {
            Some(v) => v.validate(&m.topic, &m.author, &m.data),
            None => Validation::Accept,
        };
        match verdict {
            Validation::Accept => {}
            Validation::Ignore => {
                self.stats.ignored += 1;
                return;
            }
            Validation::Reject => {
                self.stats.rejected += 1;
                self.scores.invalid(&from, &m.topic, now);
                cx.observe(from, Observation::Invalid);
                return;
            }
        }
        self.scores.first_delivery(&from, &m.topic);
        self.cache.put(m.clone(), self.config.max_cached);
        if !self.subscriptions.contains(&m.topic) {
            return;
        }
        let mesh: Vec<PeerId> = self
            .mesh
            .get(&m.topic)
            .map(|s| {
                s.iter()
                    .filter(|p| **p != from && **p != m.author)
                    .copied()
                    .collect()
            })
            .unwrap_or_default();
        if m.data.len() >= self.config.idontwant_threshold {
            for &peer in &mesh {
                let c = self.control(peer);
                if c.idontwant.len() < MAX_IDS {
                    c.idontwant.push(id);
                    self.stats.idontwant_sent += 1;
                }
            }
            self.flush(cx);
        }
        for peer in mesh {
            if self
                .peers
                .get(&peer)
                .is_some_and(|s| s.dont_send.contains_key(&id))
            {
                self.stats.idontwant_saved += 1;
                continue;
            }
            self.stats.forwarded += 1;
            cx.send(peer, Message::Publish(m.clone()));
        }
        self.stats.delivered += 1;
        cx.emit(crate::node::Event::PubSub(Event::Message {
            id,
            topic: m.topic,
            author: m.author,
            seq: m.seq,
            data: m.data,
            from,
        }));
    }

    fn handle_control(&mut self, cx: &mut Context<'_>, from: PeerId, c: Control) {
        let now = cx.now;
        let score = self.scores.score(&from, now);
        if score >= self.config.score.gossip_threshold {
            self.handle_ihave(cx, from, c.ihave);
            self.handle_iwant(cx, from, c.iwant);
        }
        for topic in c.graft {
            self.handle_graft(cx, from, topic, score);
        }
        for prune in c.prune {
            self.handle_prune(cx, from, prune, score);
        }
        if let Some(state) = self.peers.get_mut(&from) {
            let forget = now + self.config.heartbeat * self.config.history_length as u32;
            for id in c.idontwant {
                if state.dont_send.len() >= MAX_DONT_SEND {
                    break;
                }
                state.dont_send.insert(id, forget);
            }
        }
    }

    fn handle_ihave(
        &mut self,
        cx: &mut Context<'_>,
        from: PeerId,
        ihave: Vec<(String, Vec<MessageId>)>,
    ) {
        let Some(state) = self.peers.get_mut(&from) else {
            return;
        };
        if ihave.is_empty() || state.ihaves >= self.config.max_ihave_messages {
            return;
        }
        state.ihaves += 1;
        let budget = self.config.max_ihave_length.saturating_sub(state.asked);
        let mut want: Vec<MessageId> = ihave
            .into_iter()
            .filter(|(t, _)| self.subscriptions.contains(t))
            .flat_map(|(_, ids)| ids)
            .filter(|id| !self.seen.contains(id) && !self.promises.contains_key(id))
            .collect();
        want.sort();
        want.dedup();
        let want = random::sample(cx.rng, want, budget.min(MAX_IDS));
        if want.is_empty() {
            return;
        }
        state.asked += want.len();
        if self.promises.len() < MAX_PROMISES
            && let Some(id) = random::choose(cx.rng, &want)
        {
            self.promises
                .insert(*id, (from, cx.now + self.config.iwant_followup));
        }
        self.stats.iwant_sent += want.len() as u64;
        let c = self.control(from);
        let room = MAX_IDS.saturating_sub(c.iwant.len());
        c.iwant.extend(want.into_iter().take(room));
    }

    fn handle_iwant(&mut self, cx: &mut Context<'_>, from: PeerId, iwant: Vec<MessageId>) {
        for id in iwant {
            if let Some(m) = self
                .cache
                .get_for(&id, from, self.config.gossip_retransmission)
            {
                self.stats.iwant_served += 1;
                cx.send(from, Message::Publish(m));
            }
        }
    }

    fn handle_graft(&mut self, cx: &mut Context<'_>, from: PeerId, topic: String, score: f64) {
        let now = cx.now;
        if !self.subscriptions.contains(&topic) {
            // Not ours: refuse without peer exchange, with no backoff penalty.
            self.prune(cx, &topic, from, self.config.prune_backoff, false);
            return;
        }
        if self.mesh.get(&topic).is_some_and(|m| m.contains(&from)) {
            return;
        }
        if let Some(until) = self.backoff.get(&(topic.clone(), from)).copied()
            && until > now
        {
            self.stats.graft_during_backoff += 1;
            self.scores.penalise(&from, 1.0);
            // The backoff started `prune_backoff` before it ends: a GRAFT within
            // `graft_flood_threshold` of its start is flooding.
            let left = until.saturating_duration_since(now);
            if left + self.config.graft_flood_threshold > self.config.prune_backoff {
                self.scores.penalise(&from, 1.0);
            }
            self.prune(cx, &topic, from, self.config.prune_backoff, false);
            return;
        }
        let full = self.mesh.get(&topic).map_or(0, BTreeSet::len) >= self.config.d_hi;
        if score < 0.0 || full {
            self.prune(cx, &topic, from, self.config.prune_backoff, full);
            return;
        }
        self.scores.joined_mesh(&from, &topic, now);
        self.mesh.entry(topic).or_default().insert(from);
    }

    fn handle_prune(&mut self, cx: &mut Context<'_>, from: PeerId, prune: Prune, score: f64) {
        let now = cx.now;
        if let Some(mesh) = self.mesh.get_mut(&prune.topic)
            && mesh.remove(&from)
        {
            self.scores.left_mesh(&from, &prune.topic, now);
        }
        let backoff = Duration::from_secs(u64::from(prune.backoff).min(3600)).max(
            self.config
                .unsubscribe_backoff
                .min(self.config.prune_backoff),
        );
        let until = now + backoff;
        let entry = self
            .backoff
            .entry((prune.topic.clone(), from))
            .or_insert(until);
        *entry = (*entry).max(until);
        if !self.config.peer_exchange
            || prune.px.is_empty()
            || score < self.config.score.accept_px_threshold
            || !self.subscriptions.contains(&prune.topic)
        {
            return;
        }
        let have = self.mesh.get(&prune.topic).map_or(0, BTreeSet::len);
        let want = self.config.d.saturating_sub(have);
        let me = self.keypair.peer_id();
        let mut dialed = 0;
        for r in prune.px {
            if dialed >= want {
                break;
            }
            if *r.peer() == me || cx.is_ready(r.peer()) || cx.is_connecting(r.peer()) {
                continue;
            }
            if r.verify(now, &self.limits).is_err() {
                self.stats.invalid_records += 1;
                continue;
            }
            cx.dial(*r.peer(), r.addrs());
            self.stats.px_dialed += 1;
            dialed += 1;
        }
    }

    fn heartbeat_tick(&mut self, cx: &mut Context<'_>) {
        let now = cx.now;
        self.scores.decay(now);
        self.scores
            .set_application(|peer| cx.reputation(peer) - 0.5);
        for state in self.peers.values_mut() {
            state.ihaves = 0;
            state.asked = 0;
            state.dont_send.retain(|_, t| *t > now);
        }
        self.backoff.retain(|_, t| *t > now);
        let broken: Vec<(MessageId, PeerId)> = self
            .promises
            .iter()
            .filter(|(_, (_, t))| *t <= now)
            .map(|(id, (p, _))| (*id, *p))
            .collect();
        for (id, peer) in broken {
            self.promises.remove(&id);
            self.stats.broken_promises += 1;
            self.scores.penalise(&peer, 1.0);
        }
        let topics: Vec<String> = self.subscriptions.iter().cloned().collect();
        for topic in &topics {
            self.maintain_mesh(cx, topic);
        }
        let ttl = self.config.fanout_ttl;
        self.fanout.retain(|_, (_, last)| *last + ttl > now);
        let fanout: Vec<String> = self.fanout.keys().cloned().collect();
        for topic in &fanout {
            let peers = self.fanout_peers(cx, topic);
            if let Some((set, _)) = self.fanout.get_mut(topic) {
                *set = peers.into_iter().collect();
            }
        }
        for topic in topics.iter().chain(&fanout) {
            self.emit_gossip(cx, topic);
        }
        self.cache.shift(self.config.history_length);
        self.seen.expire(Instant::from_micros(
            now.as_micros()
                .saturating_sub(self.config.seen_ttl.as_micros() as u64),
        ));
        self.flush(cx);
        let idle = self.subscriptions.is_empty()
            && self.fanout.is_empty()
            && self.promises.is_empty()
            && self.cache.messages.is_empty()
            && !self.scores.needs_decay();
        self.next_heartbeat = (!idle).then(|| now + self.heartbeat());
    }

    fn maintain_mesh(&mut self, cx: &mut Context<'_>, topic: &str) {
        let now = cx.now;
        let mut mesh = self.mesh.remove(topic).unwrap_or_default();
        let negative: Vec<PeerId> = mesh
            .iter()
            .filter(|p| self.scores.score(p, now) < 0.0)
            .copied()
            .collect();
        for peer in negative {
            mesh.remove(&peer);
            self.scores.left_mesh(&peer, topic, now);
            self.prune(cx, topic, peer, self.config.prune_backoff, false);
        }
        if mesh.len() < self.config.d_lo {
            let more = self.candidates(cx, topic, &mesh);
            let need = self.config.d - mesh.len();
            for peer in random::sample(cx.rng, more, need) {
                self.graft(now, topic, peer);
                mesh.insert(peer);
            }
        } else if mesh.len() > self.config.d_hi {
            let mut ranked: Vec<PeerId> = mesh.iter().copied().collect();
            random::shuffle(cx.rng, &mut ranked);
            ranked.sort_by(|a, b| {
                self.scores
                    .score(b, now)
                    .total_cmp(&self.scores.score(a, now))
            });
            let (best, rest) = ranked.split_at(self.config.d_score.min(self.config.d));
            let keep_random = self.config.d.saturating_sub(best.len());
            let mut rest = rest.to_vec();
            random::shuffle(cx.rng, &mut rest);
            for peer in rest.split_off(keep_random.min(rest.len())) {
                mesh.remove(&peer);
                self.scores.left_mesh(&peer, topic, now);
                self.prune(cx, topic, peer, self.config.prune_backoff, true);
            }
        }
        self.mesh.insert(topic.to_string(), mesh);
    }

    fn emit_gossip(&mut self, cx: &mut Context<'_>, topic: &str) {
        let ids = self.cache.gossip_ids(topic, self.config.history_gossip);
        if ids.is_empty() {
            return;
        }
        let threshold = self.config.score.gossip_threshold;
        let exclude: BTreeSet<PeerId> = self
            .mesh
            .get(topic)
            .into_iter()
            .flatten()
            .chain(self.fanout.get(topic).into_iter().flat_map(|(f, _)| f))
            .copied()
            .collect();
        let targets: Vec<PeerId> = self
            .topic_peers(topic)
            .filter(|p| !exclude.contains(p) && self.scores.score(p, cx.now) >= threshold)
            .copied()
            .collect();
        for peer in random::sample(cx.rng, targets, self.config.d_lazy) {
            let ids = random::sample(cx.rng, ids.clone(), MAX_IDS);
            self.stats.ihave_sent += 1;
            let c = self.control(peer);
            if c.ihave.len() < MAX_TOPICS {
                c.ihave.push((topic.to_string(), ids));
            }
        }
    }
}

impl Protocol for PubSub {
    type Message = Message;

    fn handle_message(&mut self, cx: &mut Context<'_>, from: PeerId, msg: Message) {
        if !self.config.enabled || self.state(cx, from).is_none() {
            return;
        }
        if self.scores.score(&from, cx.now) < self.config.score.graylist_threshold {
            self.stats.graylisted += 1;
            return;
        }
        self.schedule(cx.now);
        match msg {
            Message::Subscribe { topics, record } => {
                self.handle_subscribe(cx, from, topics, record)
            }
            Message::Publish(m) => self.handle_publish(cx, from, m),
            Message::Control(c) => self.handle_control(cx, from, c),
        }
        self.flush(cx);
    }

    fn handle_peer_event(&mut self, cx: &mut Context<'_>, event: &PeerEvent) {
        if !self.config.enabled {
            return;
        }
        match event {
            PeerEvent::Ready(info) => {
                let peer = info.peer;
                if self.subscriptions.is_empty() {
                    return;
                }
                if let Some(state) = self.state(cx, peer) {
                    state.told = true;
                    let record = cx.own_record();
                    let topics = self.subscriptions.iter().map(|t| (t.clone(), true));
                    cx.send(
                        peer,
                        Message::Subscribe {
                            topics: topics.collect(),
                            record,
                        },
                    );
                }
            }
            PeerEvent::Gone { peer } => self.forget_peer(cx.now, peer),
            PeerEvent::Unreachable { .. } => {}
        }
    }

    fn handle_timeout(&mut self, cx: &mut Context<'_>) {
        if self.next_heartbeat.is_some_and(|t| t <= cx.now) {
            self.heartbeat_tick(cx);
        }
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.next_heartbeat
    }
}

/// The IP a peer's score groups it by, unless it is exempt (loopback: every local test and
/// demo node shares it).
fn colocation_ip(ip: IpAddr) -> Option<IpAddr> {
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

#[cfg(test)]
mod tests;

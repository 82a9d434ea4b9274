//! Swarming of BLAKE3-verified blobs, BitTorrent-style: a blob is fetched from every peer that
//! has a piece of it, and every downloader serves what it has verified.
//!
//! - **Content.** A blob is named by its BLAKE3 hash, the root of a hash tree over its bytes.
//!   The unit of transfer is the *chunk group* of [`GROUP_BYTES`] (16 KiB, the blob store's),
//!   sent with the tree nodes that prove it against the root, so every group is verified before
//!   it is stored or served ([`BlobAccess`] does the hashing: the runtime's on-disk store, or
//!   [`MemoryBlobs`] in tests and the simulator). A *piece* is [`Config::piece_groups`] groups
//!   (64 KiB): the unit of rarity, and what one request asks one peer for.
//! - **Joining a swarm.** [`Swarm::fetch`] takes providers from the caller (a ticket's hints,
//!   DHT provider records) and sends each a [`Message::Have`] (dialing it if needed): the
//!   handshake, carrying the sender's bitfield as ranges and its signed peer record. The
//!   other side answers with its own `Have`, or [`Message::Reject`] (not serving it, swarm
//!   full, banned). Afterwards each side announces newly verified groups with
//!   [`Message::HaveUpdate`]. A member passes the records of the others to a newcomer
//!   ([`Message::Peers`], at most [`MAX_PEERS`], accepted once per `pex_interval` per peer and
//!   verified before use), so the swarm meshes by itself; at most `max_peers` per swarm, at most
//!   half of them by our own handshakes, so there is always room for newcomers. A swarm that
//!   is full sends a newcomer members to try (`Peers`) before refusing it (`Reject { Full }`):
//!   a crowd that knows only the sharer still finds the rest.
//! - **The size.** Only the last group proves the blob's size (the tree's shape depends on it),
//!   so a download fetches the last group first, from a peer that claims a size, and nothing
//!   else until it verifies. A peer whose claim is then contradicted, or whose data fails, is
//!   dropped as bad.
//! - **Picking.** Strict priority for pieces already begun; random pieces until
//!   [`Config::random_first_pieces`] are verified (a newcomer needs something to reciprocate
//!   with soon); then rarest first, ties broken at random per swarm so downloaders spread out.
//! - **Pipelining.** Each peer has a window of outstanding requests, sized to keep
//!   `window_queue_time` (2 s) of data at the peer's measured rate in flight, between
//!   `min_window` and `max_window` (2..16), starting at `initial_window` (4); a request
//!   unanswered for `request_timeout` is re-requested elsewhere and halves the window. Bytes in
//!   flight per swarm are bounded by `max_bytes_in_flight`.
//! - **Endgame.** Once every missing group is requested, an idle peer that has a requested
//!   piece is asked for it too (at most `endgame_duplicates` extra requests per piece); the
//!   first answer wins and the others are cancelled with [`Message::Cancel`]. Data arriving
//!   after its cancel is counted as a duplicate and dropped.
//! - **Choking** (per swarm, every `rechoke_interval`, 10 s): the `regular_slots` (4)
//!   interested peers that upload to us fastest are unchoked (tit-for-tat); a seed ranks by how
//!   fast it uploads to them instead. One *optimistic* unchoke, rotated every
//!   `optimistic_interval` (30 s) among choked interested peers (newcomers count thrice), lets
//!   a peer with nothing to offer yet get started and finds better partners. A peer we are
//!   interested in that has sent us nothing for `snub_timeout` (60 s) is *snubbing* us and
//!   gets no regular slot (anti-snubbing). Free slots are filled at once between rechokes.
//!   Choking a peer drops its queued requests (it frees them on `Choke`).
//! - **Serving.** A request is served only if the peer is unchoked, asks for at most
//!   [`MAX_REQUEST_GROUPS`] groups we have verified, and has fewer than
//!   `max_queued_requests` (16) waiting; otherwise it gets a `Reject` with the reason. Queued
//!   requests are answered round-robin across peers and swarms, at most `upload_rate` bytes
//!   per second if set (the simulator sets it from its bandwidth model; the runtime from the
//!   user's limit, else its transport's flow control paces it).
//! - **Bad data.** A write that fails verification blames the sender: it is dropped from the
//!   swarm, remembered as bad (never re-admitted, refused with `Reject { Banned }`) and
//!   reported ([`Event::BadPeer`]); what it was asked for goes to others.
//! - **Resume.** A fetch starts from what the store reports as verified: nothing verified is
//!   requested again.
//! - **Completion.** [`Event::Complete`] once every group verified; the swarm then seeds (by
//!   default, `seed_after_complete`). [`Event::Failed`] when no peer and no candidate has been
//!   left for `give_up_after` (verified groups stay in the store: fetch again to resume), or
//!   the store failed.
//! - **Accounting.** Bytes uploaded to and downloaded from each peer are counted (per swarm in
//!   [`PeerView`], in total in [`Swarm::totals`]) for the trust layer; rates are measured in the
//!   driver's virtual time.
//!
//! Everything is bounded: swarms, peers and candidates per swarm, requests in flight and
//! queued, ranges per message, records per exchange, bad peers remembered.
//!
//! Parts: [`Config`], [`Message`], the storage trait [`BlobAccess`] and [`MemoryBlobs`], the
//! state machine [`Swarm`], its results ([`Event`]), views and counters ([`Stats`]).

mod bitfield;
mod blob;
mod choke;
pub mod credit;
mod download;
mod machine;
mod members;
mod memory;
mod message;
mod picker;
mod rate;
mod store;
mod upload;

#[cfg(test)]
mod tests;

pub use bitfield::Bitfield;
pub use credit::Receipt;
pub use machine::Swarm;
pub use memory::MemoryBlobs;
pub use message::Message;
pub use store::{BlobAccess, BlobStatus, ReadError, WriteError, Written};

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::identity::PeerId;

/// A blob's name: the BLAKE3 hash of its bytes (the root of its hash tree).
pub type Hash = [u8; 32];

/// Bytes in a chunk group: the unit verified, requested, sent and announced (16 BLAKE3 chunks
/// of 1 KiB; the blob store's unit). The last group of a blob may be shorter.
pub const GROUP_BYTES: u64 = 16 * 1024;
/// Largest blob size a message may claim (1 TiB); [`Config::max_blob_size`] may be lower.
pub const MAX_BLOB_SIZE: u64 = 1 << 40;
/// Groups of the largest blob: no range on the wire ends past this.
pub const MAX_GROUPS: u64 = MAX_BLOB_SIZE / GROUP_BYTES;
/// Most ranges in one `Have` or `HaveUpdate`.
pub const MAX_RANGES: usize = 4096;
/// Most groups one request may ask for (128 KiB of data).
pub const MAX_REQUEST_GROUPS: u64 = 8;
/// Largest `Data` payload: [`MAX_REQUEST_GROUPS`] groups and their proof, with room to spare;
/// frames stay far below the 1 MiB frame limit.
pub const MAX_ENCODED_LEN: usize = 192 * 1024;
/// Most records in one `Peers` message.
pub const MAX_PEERS: usize = 16;

/// Number of chunk groups in a blob of `size` bytes (0 for the empty blob).
pub fn group_count(size: u64) -> u64 {
    size.div_ceil(GROUP_BYTES)
}

/// Bytes in group `g` of a blob of `size` bytes.
pub fn group_len(size: u64, g: u64) -> u64 {
    size.saturating_sub(g.saturating_mul(GROUP_BYTES))
        .min(GROUP_BYTES)
}

/// Whether `ranges` are non-empty, sorted, disjoint and end at most at `groups`: the shape
/// every announced bitfield must have (it bounds the work a message can cause).
pub(crate) fn well_formed(ranges: &[std::ops::Range<u64>], groups: u64) -> bool {
    let mut prev = 0;
    ranges.iter().all(|r| {
        let ok = r.start < r.end && r.start >= prev && r.end <= groups;
        prev = r.end;
        ok
    })
}

/// The hash of the empty blob, which is complete without any transfer.
pub fn empty_hash() -> Hash {
    *blake3::hash(&[]).as_bytes()
}

/// Why a request or a handshake was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RejectReason {
    /// The sender has no swarm of this blob (does not serve it), or the receiver is not in it.
    Unknown,
    /// The sender's swarm is at its peer limit.
    Full,
    /// The receiver sent bad data and is not welcome in this swarm.
    Banned,
    /// The receiver is choked.
    Choked,
    /// The sender does not have (all of) those groups.
    NotAvailable,
    /// The receiver has too many requests queued already.
    Busy,
}

/// Swarm settings. Defaults follow BitTorrent's mainline client where it has one.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Whether swarming runs. When `false`, commands fail and messages are ignored. Default
    /// `true`.
    pub enabled: bool,
    /// Most swarms (fetching or serving) at once. Default 64.
    pub max_swarms: usize,
    /// Most peers per swarm, connecting ones included. Default 32.
    pub max_peers: usize,
    /// Most handshakes in progress per swarm. Default 8.
    pub max_connecting: usize,
    /// Most known-but-unconnected peers kept per swarm (from the caller and from peer
    /// exchange). Default 128.
    pub max_candidates: usize,
    /// Most peers remembered as bad per swarm. Default 256.
    pub max_bad_peers: usize,
    /// Largest blob fetched; a larger claimed size is ignored. Default 16 GiB (the blob
    /// store's default limit).
    pub max_blob_size: u64,
    /// Groups per piece (the unit of rarity and of one request; at most
    /// [`MAX_REQUEST_GROUPS`]). Default 4 (64 KiB).
    pub piece_groups: u64,
    /// Pieces fetched at random (rather than rarest first) at the start. Default 4.
    pub random_first_pieces: u64,
    /// Outstanding requests per peer at first. Default 4.
    pub initial_window: usize,
    /// Fewest outstanding requests per peer. Default 2.
    pub min_window: usize,
    /// Most outstanding requests per peer. Default 16.
    pub max_window: usize,
    /// The window holds this much time's worth of data at the peer's rate. Default 2 s.
    pub window_queue_time: Duration,
    /// Most bytes requested and not yet received, per swarm. Default 8 MiB.
    pub max_bytes_in_flight: u64,
    /// A request unanswered this long is given up (and re-requested elsewhere). Default 30 s.
    pub request_timeout: Duration,
    /// A peer that does not answer our `Have` this long is dropped. Default 20 s.
    pub handshake_timeout: Duration,
    /// Extra peers a piece may be requested from in endgame. Default 2.
    pub endgame_duplicates: usize,
    /// Requests queued per peer for serving; more are rejected as `Busy`. Default 16.
    pub max_queued_requests: usize,
    /// Upload limit in bytes per second across all swarms, or `None` for none (serve at once,
    /// leaving pacing to the transport). Default `None`.
    pub upload_rate: Option<u64>,
    /// Burst allowed by `upload_rate`. Default 256 KiB.
    pub upload_burst: u64,
    /// Regular unchoke slots per swarm. Default 4.
    pub regular_slots: usize,
    /// Optimistic unchoke slots per swarm (0 or 1). Default 1.
    pub optimistic_slots: usize,
    /// How often regular slots are reassigned. Default 10 s.
    pub rechoke_interval: Duration,
    /// How often the optimistic unchoke rotates. Default 30 s.
    pub optimistic_interval: Duration,
    /// A peer we are interested in that sent nothing this long is snubbing us. Default 60 s.
    pub snub_timeout: Duration,
    /// Window of the rate meters. Default 20 s.
    pub rate_window: Duration,
    /// Housekeeping period of a swarm (timeouts, progress, dialing). Default 1 s.
    pub tick: Duration,
    /// A fetch with no peer and no candidate left this long fails. Default 10 s.
    pub give_up_after: Duration,
    /// A peer's `Peers` messages are accepted at most once per this interval. Default 60 s.
    pub pex_interval: Duration,
    /// Whether a completed download keeps serving (seeding). Default `true`.
    pub seed_after_complete: bool,
    /// Records expiring further ahead than this are not accepted. Default 48 h.
    pub max_record_ttl: Duration,
    /// Peers whose byte counts are kept ([`Swarm::totals`]); the least active are forgotten
    /// first. Default 4096.
    pub max_tracked_peers: usize,
    /// Credit: what the choker does with peers far in debt to this node. Default: a peer that
    /// took more than 16 MiB beyond what it gave is served after every peer in credit.
    pub credit: CreditPolicy,
}

/// Bilateral credit: each node counts, per peer and over all swarms, the verified bytes the
/// peer gave it and the bytes it gave the peer ([`PeerTotals`]). A peer's *debt* is what it
/// took beyond what it gave. Within `allowance` a peer is in good standing, so a newcomer with
/// nothing to give can start; beyond it the policy applies. The optimistic unchoke ignores
/// credit (it is how a newcomer gets its first pieces), except under
/// [`CreditMode::Refuse`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CreditPolicy {
    /// What happens beyond the allowance.
    pub mode: CreditMode,
    /// Debt, in bytes, a peer may run up before the policy applies. Default 16 MiB.
    pub allowance: u64,
}

impl Default for CreditPolicy {
    fn default() -> Self {
        Self {
            mode: CreditMode::Deprioritise,
            allowance: 16 << 20,
        }
    }
}

/// What the choker does with a peer in debt beyond the allowance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CreditMode {
    /// Nothing: slots by rate alone (plain BitTorrent).
    Off,
    /// Regular slots go to peers in good standing first; debtors get the ones left over.
    #[default]
    Deprioritise,
    /// Debtors get no slot at all until they give back.
    Refuse,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            enabled: true,
            max_swarms: 64,
            max_peers: 32,
            max_connecting: 8,
            max_candidates: 128,
            max_bad_peers: 256,
            max_blob_size: 16 << 30,
            piece_groups: 4,
            random_first_pieces: 4,
            initial_window: 4,
            min_window: 2,
            max_window: 16,
            window_queue_time: Duration::from_secs(2),
            max_bytes_in_flight: 8 << 20,
            request_timeout: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(20),
            endgame_duplicates: 2,
            max_queued_requests: 16,
            upload_rate: None,
            upload_burst: 256 * 1024,
            regular_slots: 4,
            optimistic_slots: 1,
            rechoke_interval: Duration::from_secs(10),
            optimistic_interval: Duration::from_secs(30),
            snub_timeout: Duration::from_secs(60),
            rate_window: Duration::from_secs(20),
            tick: Duration::from_secs(1),
            give_up_after: Duration::from_secs(10),
            pex_interval: Duration::from_secs(60),
            seed_after_complete: true,
            max_record_ttl: crate::kad::record::DEFAULT_MAX_TTL,
            max_tracked_peers: 4096,
            credit: CreditPolicy::default(),
        }
    }
}

/// What the swarm reports.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A download advanced (at most once per `tick`, and once more on completion).
    Progress {
        /// The blob.
        hash: Hash,
        /// Bytes verified so far.
        verified_bytes: u64,
        /// The blob's size, once proven.
        size: Option<u64>,
        /// Peers in the swarm (handshake done).
        peers: usize,
    },
    /// Every group of the blob is verified and stored.
    Complete {
        /// The blob.
        hash: Hash,
        /// Its size.
        size: u64,
    },
    /// A download stopped without completing; what was verified stays in the store.
    Failed {
        /// The blob.
        hash: Hash,
        /// Why.
        reason: FailReason,
    },
    /// A peer sent data that failed verification (or lied about the size); it was dropped from
    /// the swarm and will not be let back in.
    BadPeer {
        /// The blob.
        hash: Hash,
        /// The peer.
        peer: PeerId,
    },
}

/// Why a download failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FailReason {
    /// No peer and no candidate left for `give_up_after`.
    #[error("no providers left")]
    NoProviders,
    /// The store failed (disk, quota).
    #[error("store: {0}")]
    Store(String),
}

/// Why a command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SwarmError {
    /// Swarming is disabled.
    #[error("swarming is disabled")]
    Disabled,
    /// Already at `max_swarms`.
    #[error("at the limit of {0} swarms")]
    TooManySwarms(usize),
    /// `serve` needs the whole blob in the store.
    #[error("the blob is not complete in the store")]
    NotComplete,
}

/// Which kind of unchoke slot a peer holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Slot {
    /// Earned by reciprocation (or, for a seed, by download speed).
    Regular,
    /// The rotating optimistic unchoke.
    Optimistic,
}

/// One peer of a swarm, as [`Swarm::peers`] shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct PeerView {
    /// The peer.
    pub peer: PeerId,
    /// Handshake done.
    pub active: bool,
    /// Its unchoke slot, if we unchoke it.
    pub slot: Option<Slot>,
    /// We want something it has.
    pub am_interested: bool,
    /// It wants something we have.
    pub peer_interested: bool,
    /// It chokes us.
    pub peer_choking: bool,
    /// It snubs us (interested, nothing received for `snub_timeout`).
    pub snubbed: bool,
    /// Groups it has announced.
    pub groups: u64,
    /// Our requests to it not answered yet, and its window.
    pub outstanding: usize,
    /// Its current window.
    pub window: usize,
    /// Bytes we sent it in this swarm.
    pub uploaded: u64,
    /// Bytes it sent us in this swarm (verified).
    pub downloaded: u64,
    /// Upload rate to it, bytes per second.
    pub upload_rate: u64,
    /// Download rate from it, bytes per second.
    pub download_rate: u64,
}

/// One swarm, as [`Swarm::info`] shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct SwarmInfo {
    /// The blob.
    pub hash: Hash,
    /// Its size, once proven.
    pub size: Option<u64>,
    /// Bytes verified.
    pub verified_bytes: u64,
    /// Still downloading (false for a seed).
    pub fetching: bool,
    /// In endgame.
    pub endgame: bool,
    /// Peers with the handshake done.
    pub peers: usize,
    /// Known peers not connected.
    pub candidates: usize,
    /// Peers dropped as bad.
    pub bad_peers: usize,
}

/// Bytes exchanged with one peer over all swarms (for trust and credit accounting).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerTotals {
    /// Bytes we sent it (data and proof).
    pub uploaded: u64,
    /// Bytes it sent us that verified.
    pub downloaded: u64,
    /// Of `uploaded`, what the peer acknowledged in its latest signed receipt.
    pub receipted: u64,
    /// `downloaded` when we last sent the peer a receipt.
    pub receipt_sent: u64,
}

/// One peer's line of the credit ledger ([`Swarm::ledger`]), as saved across restarts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerEntry {
    /// The peer.
    pub peer: PeerId,
    /// Bytes exchanged with it.
    pub totals: PeerTotals,
    /// Its latest receipt for what we gave it.
    pub receipt: Option<credit::Receipt>,
}

impl PeerTotals {
    /// What the peer took from us beyond what it gave (0 if it gave more).
    pub fn debt(&self) -> u64 {
        self.uploaded.saturating_sub(self.downloaded)
    }
}

/// Counters, for status, metrics and the simulator.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Receipts kept (a peer's signed word for bytes we gave it).
    pub receipts: u64,
    /// Receipts that did not verify or named someone else.
    pub receipts_invalid: u64,
    /// Receipts from untracked peers, or not newer, or for more than we gave.
    pub receipts_ignored: u64,
    /// Fetches started.
    pub fetches: u64,
    /// Downloads completed.
    pub completed: u64,
    /// Downloads failed.
    pub failed: u64,
    /// Handshakes completed.
    pub handshakes: u64,
    /// Handshakes refused (swarm full, unknown blob, banned peer).
    pub refused: u64,
    /// Handshakes that timed out.
    pub handshake_timeouts: u64,
    /// Requests sent.
    pub requests_sent: u64,
    /// Groups asked for in those requests (endgame duplicates included).
    pub groups_requested: u64,
    /// Requests sent in endgame to a second (or third) peer.
    pub endgame_requests: u64,
    /// Cancels sent.
    pub cancels_sent: u64,
    /// Requests that timed out.
    pub timeouts: u64,
    /// Rejects received for our requests.
    pub rejects_received: u64,
    /// Data bytes received that verified.
    pub bytes_downloaded: u64,
    /// Data bytes sent.
    pub bytes_uploaded: u64,
    /// Requests served.
    pub requests_served: u64,
    /// Requests refused with `Reject`.
    pub requests_rejected: u64,
    /// Data for groups already verified (endgame losers, late answers), dropped.
    pub duplicates: u64,
    /// Data for a request that was cancelled or timed out but still useful, kept.
    pub late_data: u64,
    /// Data nobody asked that peer for, dropped unread.
    pub unrequested: u64,
    /// Writes that failed verification.
    pub bad_data: u64,
    /// Peers dropped as bad.
    pub bad_peers: u64,
    /// Messages about a blob we have no swarm of.
    pub unknown_swarm: u64,
    /// Messages that make no sense (empty or out-of-range groups, messages before the
    /// handshake, a size claim over the limit), ignored.
    pub malformed: u64,
    /// Store failures.
    pub store_errors: u64,
    /// Peers learned by peer exchange.
    pub pex_learned: u64,
    /// Peer-exchange records that failed verification.
    pub pex_invalid: u64,
    /// `Peers` messages ignored for coming too soon.
    pub pex_ignored: u64,
}

//! The state machine [`Swarm`]: one `BlobSwarm` per blob (`blob.rs`), the commands, routing of
//! messages and peer events to the right blob, timers, and the upload pacer that serves queued
//! requests round-robin across swarms and peers.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;

use rand_core::RngCore;

use super::LedgerEntry;
use super::bitfield::Bitfield;
use super::blob::BlobSwarm;
use super::credit::Receipt;
use super::memory::MemoryBlobs;
use super::picker::Picker;
use super::rate::Pacer;
use super::store::{BlobAccess, BlobStatus};
use super::{
    Config, Event, Hash, Message, PeerTotals, PeerView, RejectReason, Stats, SwarmError, SwarmInfo,
    empty_hash, group_count,
};
use crate::identity::{Keypair, PeerId};
use crate::kad::record::RecordLimits;
use crate::node::{Context, PeerEvent, Protocol};
use crate::pow::Difficulty;
use crate::time::Instant;
use crate::trust::reputation::Observation;

/// Byte counts per peer, bounded: when full, the peer with the fewest bytes either way is
/// forgotten.
#[derive(Debug, Default)]
pub(super) struct Totals {
    map: BTreeMap<PeerId, PeerTotals>,
    /// The latest receipt from each peer in `map` that sent one.
    receipts: BTreeMap<PeerId, Receipt>,
    max: usize,
}

impl Totals {
    pub(super) fn entry(&mut self, peer: PeerId) -> &mut PeerTotals {
        if !self.map.contains_key(&peer) && self.map.len() >= self.max.max(1) {
            let least = self
                .map
                .iter()
                .min_by_key(|(id, t)| (t.uploaded.saturating_add(t.downloaded), **id))
                .map(|(id, _)| *id);
            if let Some(least) = least {
                self.map.remove(&least);
                self.receipts.remove(&least);
            }
        }
        self.map.entry(peer).or_default()
    }

    pub(super) fn get(&self, peer: &PeerId) -> Option<&PeerTotals> {
        self.map.get(peer)
    }
}

/// What a blob swarm's handlers may use besides their own state.
pub(super) struct Env<'a, 'c> {
    pub(super) cx: &'a mut Context<'c>,
    pub(super) config: &'a Config,
    pub(super) limits: &'a RecordLimits,
    pub(super) blobs: &'a mut dyn BlobAccess,
    pub(super) stats: &'a mut Stats,
    pub(super) totals: &'a mut Totals,
    pub(super) local: PeerId,
    pub(super) signer: Option<&'a Keypair>,
}

impl Env<'_, '_> {
    pub(super) fn now(&self) -> Instant {
        self.cx.now
    }

    pub(super) fn send(&mut self, to: PeerId, msg: Message) {
        self.cx.send(to, msg);
    }
}

/// The swarm protocol: every blob this node fetches or serves. See the [module docs](super).
pub struct Swarm {
    local: PeerId,
    /// Signs receipts; without it the swarm sends none.
    signer: Option<Keypair>,
    config: Config,
    limits: RecordLimits,
    blobs: Box<dyn BlobAccess>,
    swarms: BTreeMap<Hash, BlobSwarm>,
    totals: Totals,
    pacer: Pacer,
    /// The last (swarm, peer) served, for round-robin.
    cursor: Option<(Hash, PeerId)>,
    /// The pacer's next wake-up while requests wait for it.
    pacer_wake: Option<Instant>,
    now: Instant,
    stats: Stats,
}

impl fmt::Debug for Swarm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Swarm")
            .field("swarms", &self.swarms.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Swarm {
    /// The swarm protocol of node `local` on a network of `difficulty`, with an empty
    /// [`MemoryBlobs`] until [`set_blobs`](Self::set_blobs) plugs in the real store.
    pub fn new(local: PeerId, difficulty: Difficulty, config: Config) -> Self {
        Self {
            local,
            limits: RecordLimits {
                max_ttl: config.max_record_ttl,
                difficulty,
            },
            blobs: Box::new(MemoryBlobs::new()),
            swarms: BTreeMap::new(),
            totals: Totals {
                map: BTreeMap::new(),
                receipts: BTreeMap::new(),
                max: config.max_tracked_peers,
            },
            signer: None,
            pacer: Pacer::new(config.upload_rate, config.upload_burst),
            cursor: None,
            pacer_wake: None,
            now: Instant::ZERO,
            stats: Stats::default(),
            config,
        }
    }

    /// Replaces the blob storage (the runtime passes its on-disk store). Swarms in progress
    /// keep their state; use it before the first fetch.
    pub fn set_blobs(&mut self, blobs: Box<dyn BlobAccess>) {
        self.blobs = blobs;
    }

    /// The blob storage.
    pub fn blobs(&self) -> &dyn BlobAccess {
        self.blobs.as_ref()
    }

    /// The settings.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Bytes exchanged with `peer` over all swarms.
    pub fn totals(&self, peer: &PeerId) -> PeerTotals {
        self.totals.map.get(peer).copied().unwrap_or_default()
    }

    /// Bytes exchanged with every peer tracked.
    pub fn all_totals(&self) -> impl Iterator<Item = (&PeerId, &PeerTotals)> {
        self.totals.map.iter()
    }

    /// Sets the key that signs this node's receipts (the node's own).
    pub fn set_signer(&mut self, keypair: Keypair) {
        self.signer = Some(keypair);
    }

    /// The credit ledger, to save: every peer tracked with its byte counts and its latest
    /// receipt.
    pub fn ledger(&self) -> Vec<LedgerEntry> {
        self.totals
            .map
            .iter()
            .map(|(peer, totals)| LedgerEntry {
                peer: *peer,
                totals: *totals,
                receipt: self.totals.receipts.get(peer).cloned(),
            })
            .collect()
    }

    /// Restores a saved ledger (before the node starts talking to peers): entries beyond the
    /// tracking bound are dropped, and a receipt that does not verify or names someone else is
    /// dropped with its claim.
    pub fn restore_ledger(&mut self, entries: impl IntoIterator<Item = LedgerEntry>) {
        for mut e in entries {
            let receipt = e
                .receipt
                .take()
                .filter(|r| r.receiver() == &e.peer && r.giver() == &self.local && r.verify());
            e.totals.receipted = receipt.as_ref().map_or(0, Receipt::bytes);
            *self.totals.entry(e.peer) = e.totals;
            if let Some(r) = receipt {
                self.totals.receipts.insert(e.peer, r);
            }
        }
    }

    /// The latest receipt `peer` signed for what we gave it.
    pub fn receipt(&self, peer: &PeerId) -> Option<&Receipt> {
        self.totals.receipts.get(peer)
    }

    /// A receipt from `from`: kept if it is `from`'s signed word for bytes we gave it, more
    /// than its last receipt said and no more than we sent.
    fn accept_receipt(&mut self, cx: &mut Context<'_>, from: PeerId, receipt: Receipt) {
        let Some(totals) = self.totals.map.get_mut(&from) else {
            self.stats.receipts_ignored += 1;
            return;
        };
        if receipt.receiver() != &from || receipt.giver() != &self.local || !receipt.verify() {
            self.stats.receipts_invalid += 1;
            cx.observe(from, Observation::Invalid);
            return;
        }
        if receipt.bytes() <= totals.receipted || receipt.bytes() > totals.uploaded {
            self.stats.receipts_ignored += 1;
            return;
        }
        totals.receipted = receipt.bytes();
        self.totals.receipts.insert(from, receipt);
        self.stats.receipts += 1;
    }

    /// The blobs with a swarm.
    pub fn hashes(&self) -> impl Iterator<Item = &Hash> {
        self.swarms.keys()
    }

    /// One swarm's state.
    pub fn info(&self, hash: &Hash) -> Option<SwarmInfo> {
        let s = self.swarms.get(hash)?;
        Some(SwarmInfo {
            hash: *hash,
            size: s.size,
            verified_bytes: s.verified_bytes(),
            fetching: s.fetching,
            endgame: s.fetching && s.picker.as_ref().is_some_and(Picker::is_endgame),
            peers: s.active_peers(),
            candidates: s.candidates.len(),
            bad_peers: s.bad.len(),
        })
    }

    /// One swarm's peers, in id order.
    pub fn peers(&self, hash: &Hash) -> Vec<PeerView> {
        self.swarms
            .get(hash)
            .map(|s| s.view(self.now, &self.config))
            .unwrap_or_default()
    }

    /// Whether `peer` was dropped from `hash`'s swarm as bad.
    pub fn is_bad(&self, hash: &Hash, peer: &PeerId) -> bool {
        self.swarms.get(hash).is_some_and(|s| s.bad.contains(peer))
    }

    fn split<'a, 'c>(
        &'a mut self,
        cx: &'a mut Context<'c>,
    ) -> (&'a mut BTreeMap<Hash, BlobSwarm>, Env<'a, 'c>) {
        let Swarm {
            local,
            signer,
            config,
            limits,
            blobs,
            swarms,
            totals,
            stats,
            ..
        } = self;
        let env = Env {
            cx,
            config,
            limits,
            blobs: blobs.as_mut(),
            stats,
            totals,
            local: *local,
            signer: signer.as_ref(),
        };
        (swarms, env)
    }

    /// Runs `f` on `hash`'s swarm, then removes it if it closed, serves, and reschedules.
    fn with_swarm(
        &mut self,
        cx: &mut Context<'_>,
        hash: &Hash,
        f: impl FnOnce(&mut BlobSwarm, &mut Env<'_, '_>),
    ) {
        {
            let (swarms, mut env) = self.split(cx);
            if let Some(s) = swarms.get_mut(hash) {
                f(s, &mut env);
                if s.closing {
                    swarms.remove(hash);
                }
            }
        }
        self.after(cx);
    }

    /// After every input: serve what the pacer allows, and note the next wake-up.
    fn after(&mut self, cx: &mut Context<'_>) {
        self.now = self.now.max(cx.now);
        self.serve_queued(cx);
    }

    /// Command: download `hash` from `providers` (and whoever they lead to), or add providers
    /// to a download in progress. A blob already complete in the store reports
    /// [`Event::Complete`] at once.
    pub fn fetch(
        &mut self,
        cx: &mut Context<'_>,
        hash: Hash,
        providers: Vec<(PeerId, Vec<SocketAddr>)>,
    ) -> Result<(), SwarmError> {
        if !self.config.enabled {
            return Err(SwarmError::Disabled);
        }
        let status = if hash == empty_hash() {
            BlobStatus::Complete { size: 0 }
        } else {
            self.blobs.status(&hash)
        };
        if let BlobStatus::Complete { size } = status {
            cx.emit(Event::Complete { hash, size });
            return Ok(());
        }
        if self.swarms.contains_key(&hash) {
            self.with_swarm(cx, &hash, |s, env| s.add_candidates(env, providers));
            return Ok(());
        }
        if self.swarms.len() >= self.config.max_swarms {
            return Err(SwarmError::TooManySwarms(self.config.max_swarms));
        }
        let salt = cx.rng.next_u64();
        let mut s = BlobSwarm::new(hash, true, cx.now, salt, &self.config);
        if let BlobStatus::Partial {
            size: Some(size),
            groups,
        } = status
        {
            let n = group_count(size);
            s.set_have(size, Bitfield::from_ranges(n, &groups), &self.config);
        }
        self.stats.fetches += 1;
        self.swarms.insert(hash, s);
        self.with_swarm(cx, &hash, |s, env| s.add_candidates(env, providers));
        Ok(())
    }

    /// Command: serve `hash`, which must be complete in the store, to whoever asks (seeding).
    /// Serving a blob being downloaded is implied and needs no call.
    pub fn serve(&mut self, cx: &mut Context<'_>, hash: Hash) -> Result<(), SwarmError> {
        if !self.config.enabled {
            return Err(SwarmError::Disabled);
        }
        if self.swarms.contains_key(&hash) {
            return Ok(());
        }
        let BlobStatus::Complete { size } = self.blobs.status(&hash) else {
            return Err(SwarmError::NotComplete);
        };
        if self.swarms.len() >= self.config.max_swarms {
            return Err(SwarmError::TooManySwarms(self.config.max_swarms));
        }
        let salt = cx.rng.next_u64();
        let mut s = BlobSwarm::new(hash, false, cx.now, salt, &self.config);
        s.set_have(size, Bitfield::full(group_count(size)), &self.config);
        self.swarms.insert(hash, s);
        self.after(cx);
        Ok(())
    }

    /// Command: leave `hash`'s swarm (stop downloading or serving it). What was verified stays
    /// in the store. False if there was no such swarm.
    pub fn cancel(&mut self, cx: &mut Context<'_>, hash: &Hash) -> bool {
        if !self.swarms.contains_key(hash) {
            return false;
        }
        self.with_swarm(cx, hash, |s, env| s.shutdown(env));
        true
    }

    /// Serves queued requests, round-robin over (swarm, peer), as the pacer allows.
    fn serve_queued(&mut self, cx: &mut Context<'_>) {
        let now = cx.now;
        loop {
            if !self.pacer.ready(now) {
                break;
            }
            let Some((hash, peer)) = self.next_queued() else {
                break;
            };
            self.cursor = Some((hash, peer));
            let sent = {
                let (swarms, mut env) = self.split(cx);
                match swarms.get_mut(&hash) {
                    Some(s) => s.serve_one(&mut env, peer),
                    None => break,
                }
            };
            self.pacer.spend(sent);
        }
        let waiting = self
            .swarms
            .values()
            .any(|s| s.peers.values().any(|p| !p.queue.is_empty()));
        self.pacer_wake = if waiting {
            self.pacer.next_ready()
        } else {
            None
        };
    }

    /// The next (swarm, peer) after the cursor with a request waiting.
    fn next_queued(&self) -> Option<(Hash, PeerId)> {
        let mut first = None;
        for (hash, s) in &self.swarms {
            for (peer, p) in &s.peers {
                if p.queue.is_empty() {
                    continue;
                }
                let key = (*hash, *peer);
                if first.is_none() {
                    first = Some(key);
                }
                if self.cursor.is_none_or(|c| key > c) {
                    return Some(key);
                }
            }
        }
        first
    }
}

impl Protocol for Swarm {
    type Message = Message;

    fn handle_message(&mut self, cx: &mut Context<'_>, from: PeerId, msg: Message) {
        if !self.config.enabled {
            return;
        }
        if let Message::Receipt { receipt, .. } = msg {
            return self.accept_receipt(cx, from, receipt);
        }
        let hash = *msg.hash();
        if !self.swarms.contains_key(&hash) {
            self.stats.unknown_swarm += 1;
            let reply = match msg {
                Message::Have { .. } => Some(None),
                Message::Request { groups, .. } => Some(Some(groups)),
                _ => None,
            };
            if let Some(groups) = reply {
                if groups.is_none() {
                    self.stats.refused += 1;
                } else {
                    self.stats.requests_rejected += 1;
                }
                cx.send(
                    from,
                    Message::Reject {
                        hash,
                        groups,
                        reason: RejectReason::Unknown,
                    },
                );
            }
            return;
        }
        self.with_swarm(cx, &hash, |s, env| s.handle(env, from, msg));
    }

    fn handle_peer_event(&mut self, cx: &mut Context<'_>, event: &PeerEvent) {
        let (PeerEvent::Gone { peer } | PeerEvent::Unreachable { peer }) = event else {
            return;
        };
        let peer = *peer;
        let hashes: Vec<Hash> = self
            .swarms
            .iter()
            .filter(|(_, s)| s.peers.contains_key(&peer))
            .map(|(h, _)| *h)
            .collect();
        for hash in hashes {
            self.with_swarm(cx, &hash, |s, env| s.remove_peer(env, peer));
        }
    }

    fn handle_timeout(&mut self, cx: &mut Context<'_>) {
        let due: Vec<Hash> = self
            .swarms
            .iter()
            .filter(|(_, s)| s.next_tick <= cx.now)
            .map(|(h, _)| *h)
            .collect();
        for hash in due {
            self.with_swarm(cx, &hash, |s, env| s.tick(env));
        }
        self.after(cx);
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.swarms
            .values()
            .map(|s| s.next_tick)
            .chain(self.pacer_wake)
            .min()
    }
}

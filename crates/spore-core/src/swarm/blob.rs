//! The state of one blob's swarm: its peers, requests in flight and timers; message dispatch
//! and housekeeping. Membership is in `members.rs`, downloading in `download.rs`, serving and
//! choking in `upload.rs`.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::ops::Range;

use super::bitfield::Bitfield;
use super::machine::Env;
use super::picker::Picker;
use super::rate::Rate;
use super::{
    Config, Event, FailReason, GROUP_BYTES, Hash, MAX_REQUEST_GROUPS, Message, PeerView,
    RejectReason, Slot, group_len,
};
use crate::identity::PeerId;
use crate::kad::record::PeerRecord;
use crate::time::Instant;

/// A request in flight: one piece's missing groups, asked of one or (in endgame) more peers.
#[derive(Debug)]
pub(super) struct Block {
    pub(super) end: u64,
    pub(super) bytes: u64,
    pub(super) requests: Vec<(PeerId, Instant)>,
}

/// One peer of one swarm.
#[derive(Debug)]
pub(super) struct SwarmPeer {
    /// Both `Have`s exchanged.
    pub(super) active: bool,
    /// When it joined (or we started the handshake).
    pub(super) since: Instant,
    /// We started the handshake (rather than it).
    pub(super) outbound: bool,
    /// Our `Have` went out, and how many groups it listed.
    pub(super) sent_have: Option<u64>,
    /// Its size claim.
    pub(super) claimed: Option<u64>,
    /// What it has (sized by its claim).
    pub(super) has: Bitfield,
    pub(super) am_choking: bool,
    pub(super) slot: Option<Slot>,
    pub(super) am_interested: bool,
    pub(super) interested_since: Instant,
    pub(super) peer_choking: bool,
    pub(super) peer_interested: bool,
    pub(super) last_data: Option<Instant>,
    /// Starts of the blocks we requested from it.
    pub(super) outstanding: BTreeSet<u64>,
    /// Requests given up (cancelled, timed out, choked) whose data may still come.
    pub(super) recent: VecDeque<Range<u64>>,
    pub(super) window: usize,
    /// Its requests waiting to be served.
    pub(super) queue: VecDeque<Range<u64>>,
    pub(super) down: Rate,
    pub(super) up: Rate,
    pub(super) downloaded: u64,
    pub(super) uploaded: u64,
    pub(super) record: Option<PeerRecord>,
    pub(super) addrs: Vec<SocketAddr>,
    pub(super) last_pex: Option<Instant>,
}

/// Most given-up requests remembered per peer.
pub(super) const MAX_RECENT: usize = 64;

impl SwarmPeer {
    pub(super) fn new(now: Instant, config: &Config, addrs: Vec<SocketAddr>) -> Self {
        Self {
            active: false,
            since: now,
            outbound: false,
            sent_have: None,
            claimed: None,
            has: Bitfield::new(0),
            am_choking: true,
            slot: None,
            am_interested: false,
            interested_since: now,
            peer_choking: true,
            peer_interested: false,
            last_data: None,
            outstanding: BTreeSet::new(),
            recent: VecDeque::new(),
            window: config.initial_window.max(1),
            queue: VecDeque::new(),
            down: Rate::new(now, config.rate_window),
            up: Rate::new(now, config.rate_window),
            downloaded: 0,
            uploaded: 0,
            record: None,
            addrs,
            last_pex: None,
        }
    }

    /// Whether it snubs us: we want something from it and it sent nothing for `timeout`.
    pub(super) fn snubbing(&self, now: Instant, timeout: std::time::Duration) -> bool {
        let since = self
            .last_data
            .map_or(self.interested_since, |t| t.max(self.interested_since));
        self.am_interested && since + timeout <= now
    }
}

/// The swarm of one blob.
#[derive(Debug)]
pub(super) struct BlobSwarm {
    pub(super) hash: Hash,
    /// Downloading (false: only serving).
    pub(super) fetching: bool,
    /// The proven size.
    pub(super) size: Option<u64>,
    /// Verified groups and picking state; present once the size is known.
    pub(super) picker: Option<Picker>,
    /// The size claim the last-group request in flight was made under.
    pub(super) sizing: Option<u64>,
    pub(super) blocks: BTreeMap<u64, Block>,
    pub(super) in_flight: u64,
    pub(super) peers: BTreeMap<PeerId, SwarmPeer>,
    pub(super) candidates: BTreeMap<PeerId, Vec<SocketAddr>>,
    pub(super) bad: BTreeSet<PeerId>,
    pub(super) optimistic: Option<PeerId>,
    pub(super) next_rechoke: Instant,
    pub(super) next_optimistic: Instant,
    pub(super) next_tick: Instant,
    pub(super) reported: Option<u64>,
    pub(super) alone_since: Option<Instant>,
    pub(super) salt: u64,
    /// The last store failure while the size was unproven, reported if the fetch fails.
    pub(super) store_error: Option<String>,
    /// Set when the swarm is over (failed, cancelled, done without seeding): the machine
    /// removes it.
    pub(super) closing: bool,
}

impl BlobSwarm {
    pub(super) fn new(
        hash: Hash,
        fetching: bool,
        now: Instant,
        salt: u64,
        config: &Config,
    ) -> Self {
        Self {
            hash,
            fetching,
            size: None,
            picker: None,
            sizing: None,
            blocks: BTreeMap::new(),
            in_flight: 0,
            peers: BTreeMap::new(),
            candidates: BTreeMap::new(),
            bad: BTreeSet::new(),
            optimistic: None,
            next_rechoke: now + config.rechoke_interval,
            next_optimistic: now + config.optimistic_interval,
            next_tick: now + tick(config),
            reported: None,
            alone_since: None,
            salt,
            store_error: None,
            closing: false,
        }
    }

    /// Sets the proven size and the verified groups.
    pub(super) fn set_have(&mut self, size: u64, have: Bitfield, config: &Config) {
        self.size = Some(size);
        let piece = config.piece_groups.clamp(1, MAX_REQUEST_GROUPS);
        self.picker = Some(Picker::new(have, piece, self.salt));
    }

    /// Bytes verified.
    pub(super) fn verified_bytes(&self) -> u64 {
        match (&self.picker, self.size) {
            (Some(p), Some(size)) => {
                let n = p.groups();
                let ones = p.have().count_ones();
                let short = if n > 0 && p.have().get(n - 1) {
                    GROUP_BYTES - group_len(size, n - 1)
                } else {
                    0
                };
                (ones * GROUP_BYTES).saturating_sub(short)
            }
            _ => 0,
        }
    }

    pub(super) fn is_complete(&self) -> bool {
        self.picker.as_ref().is_some_and(Picker::is_complete)
    }

    pub(super) fn active_peers(&self) -> usize {
        self.peers.values().filter(|p| p.active).count()
    }

    /// Leaves the swarm: tells every peer, and marks the swarm for removal.
    pub(super) fn shutdown(&mut self, env: &mut Env<'_, '_>) {
        for (&id, p) in &self.peers {
            if p.active || p.sent_have.is_some() {
                env.send(id, Message::Leave { hash: self.hash });
            }
        }
        self.closing = true;
    }

    /// Fails the download.
    pub(super) fn fail(&mut self, env: &mut Env<'_, '_>, reason: FailReason) {
        env.stats.failed += 1;
        env.cx.emit(Event::Failed {
            hash: self.hash,
            reason,
        });
        self.shutdown(env);
    }

    /// Housekeeping, every `tick`.
    pub(super) fn tick(&mut self, env: &mut Env<'_, '_>) {
        let now = env.now();
        self.next_tick = now + tick(env.config);
        let stale: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, p)| !p.active && p.since + env.config.handshake_timeout <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in stale {
            env.stats.handshake_timeouts += 1;
            self.remove_peer(env, id);
        }
        self.expire_requests(env);
        if now >= self.next_rechoke {
            let rotate = now >= self.next_optimistic;
            if rotate {
                self.next_optimistic = now + env.config.optimistic_interval;
            }
            self.next_rechoke = now + env.config.rechoke_interval;
            self.rechoke(env, rotate);
        }
        if self.fetching {
            self.report_progress(env);
            self.connect_more(env);
            if self.peers.is_empty() && self.candidates.is_empty() {
                let since = *self.alone_since.get_or_insert(now);
                if since + env.config.give_up_after <= now {
                    let reason = match self.store_error.take() {
                        Some(e) => FailReason::Store(e),
                        None => FailReason::NoProviders,
                    };
                    return self.fail(env, reason);
                }
            } else {
                self.alone_since = None;
            }
            self.fill_all(env);
        }
    }

    /// Emits `Progress` if anything was verified since the last one.
    pub(super) fn report_progress(&mut self, env: &mut Env<'_, '_>) {
        let verified = self.verified_bytes();
        if self.reported == Some(verified) {
            return;
        }
        self.reported = Some(verified);
        env.cx.emit(Event::Progress {
            hash: self.hash,
            verified_bytes: verified,
            size: self.size,
            peers: self.active_peers(),
        });
    }

    /// Handles one message of this swarm.
    pub(super) fn handle(&mut self, env: &mut Env<'_, '_>, from: PeerId, msg: Message) {
        if !matches!(msg, Message::Have { .. }) && !self.peers.get(&from).is_some_and(|p| p.active)
        {
            // Before the handshake only `Have` (or a refusal of ours) makes sense, and the
            // members a full swarm suggests before it refuses our handshake.
            match msg {
                Message::Peers { records, .. } if self.peers.contains_key(&from) => {
                    self.on_peers(env, from, records);
                }
                Message::Reject { groups: None, .. } | Message::Leave { .. } => {
                    if self.peers.contains_key(&from) {
                        env.stats.refused += 1;
                        self.remove_peer(env, from);
                    }
                }
                Message::Request { groups, .. } => {
                    env.stats.requests_rejected += 1;
                    env.send(
                        from,
                        Message::Reject {
                            hash: self.hash,
                            groups: Some(groups),
                            reason: RejectReason::Unknown,
                        },
                    );
                }
                _ => env.stats.malformed += 1,
            }
            return;
        }
        match msg {
            Message::Have {
                size,
                ranges,
                record,
                ..
            } => self.on_have(env, from, size, ranges, record),
            Message::HaveUpdate { ranges, .. } => self.on_have_update(env, from, ranges),
            Message::Interested { .. } => self.on_interested(env, from, true),
            Message::NotInterested { .. } => self.on_interested(env, from, false),
            Message::Choke { .. } => self.on_choke(env, from),
            Message::Unchoke { .. } => self.on_unchoke(env, from),
            Message::Request { groups, .. } => self.on_request(env, from, groups),
            Message::Cancel { groups, .. } => self.on_cancel(from, groups),
            Message::Data {
                groups, encoded, ..
            } => self.on_data(env, from, groups, encoded),
            Message::Reject { groups, reason, .. } => match groups {
                Some(g) => self.on_reject(env, from, g, reason),
                None => self.remove_peer(env, from),
            },
            Message::Peers { records, .. } => self.on_peers(env, from, records),
            Message::Leave { .. } => self.remove_peer(env, from),
            // Handled by the swarm machine before any blob swarm sees it.
            Message::Receipt { .. } => {}
        }
    }

    pub(super) fn view(&self, now: Instant, config: &Config) -> Vec<PeerView> {
        self.peers
            .iter()
            .map(|(id, p)| PeerView {
                peer: *id,
                active: p.active,
                slot: p.slot,
                am_interested: p.am_interested,
                peer_interested: p.peer_interested,
                peer_choking: p.peer_choking,
                snubbed: p.snubbing(now, config.snub_timeout),
                groups: p.has.count_ones(),
                outstanding: p.outstanding.len(),
                window: p.window,
                uploaded: p.uploaded,
                downloaded: p.downloaded,
                upload_rate: p.up.clone().per_sec(now),
                download_rate: p.down.clone().per_sec(now),
            })
            .collect()
    }
}

/// The housekeeping period, never so short that timers would spin.
fn tick(config: &Config) -> std::time::Duration {
    config.tick.max(std::time::Duration::from_millis(10))
}

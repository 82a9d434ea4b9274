//! HyParView: the active and passive views, joins, neighbor requests, repair and shuffles.

use crate::identity::PeerId;
use crate::kad::record::PeerRecord;
use crate::node::{Context, Direction, PeerInfo};
use crate::random;

use super::{
    Event, Gossip, MAX_CONTACTS, MAX_PENDING_REPAIRS, MAX_REPAIR_BACKOFF, MAX_SHUFFLE_RECORDS,
    MAX_TTL, Message, PENDING_TIMEOUT, Pending, emit,
};

impl Gossip {
    /// Whether `record` verifies; counts it if not.
    fn check(&mut self, cx: &Context<'_>, record: &PeerRecord) -> bool {
        let ok = record.verify(cx.now, &self.limits).is_ok();
        if !ok {
            self.stats.invalid_records += 1;
        }
        ok
    }

    fn walk_ttl(&self) -> u8 {
        self.config.active_walk.min(MAX_TTL)
    }

    /// Adds `peer` to the active view (evicting a random neighbor if it is full) and forgets it
    /// everywhere else, keeping the record we had of it if `record` is `None`. False if it
    /// cannot be added (it is us, or the active view holds none).
    fn add_active(
        &mut self,
        cx: &mut Context<'_>,
        peer: PeerId,
        record: Option<PeerRecord>,
    ) -> bool {
        if peer == self.local || self.config.active_size == 0 {
            return false;
        }
        let passive = self.passive.remove(&peer);
        let pending = self.pending.remove(&peer).and_then(|p| p.record);
        let record = record.or(passive).or(pending);
        if self.join.is_some_and(|(p, _)| p == peer) {
            self.join = None;
        }
        if let Some(known) = self.active.get_mut(&peer) {
            if record.is_some() {
                *known = record;
            }
            return true;
        }
        while self.active.len() >= self.config.active_size {
            self.evict(cx);
        }
        self.active.insert(peer, record);
        self.repair_backoff = 0;
        emit(cx, Event::NeighborUp { peer });
        true
    }

    /// Drops a random neighbor to make room: it is told, and moves to the passive view.
    fn evict(&mut self, cx: &mut Context<'_>) {
        let members: Vec<PeerId> = self.active.keys().copied().collect();
        let Some(&victim) = random::choose(cx.rng, &members) else {
            return;
        };
        self.stats.evictions += 1;
        cx.send(victim, Message::Disconnect);
        self.remove_active(cx, victim, true);
    }

    /// Removes `peer` from the active view; its record goes to passive if `to_passive`.
    fn remove_active(&mut self, cx: &mut Context<'_>, peer: PeerId, to_passive: bool) -> bool {
        let Some(record) = self.active.remove(&peer) else {
            return false;
        };
        self.search.forget_neighbor(&peer);
        // A neighbor is missing now: look for another at the normal pace.
        self.repair_backoff = 0;
        let soon = cx.now + self.repair_interval();
        self.next_repair = Some(self.next_repair.map_or(soon, |t| t.min(soon)));
        emit(cx, Event::NeighborDown { peer });
        if to_passive && let Some(record) = record {
            self.add_passive(cx, record, &[]);
        }
        true
    }

    /// Stores an already verified record in the passive view, unless it is ours, a neighbor's,
    /// pending, expired, unreachable (no address) or older than the stored one. A full view
    /// evicts a peer of `prefer` first, else a random one.
    fn add_passive(&mut self, cx: &mut Context<'_>, record: PeerRecord, prefer: &[PeerId]) {
        let peer = *record.peer();
        if peer == self.local
            || self.active.contains_key(&peer)
            || self.pending.contains_key(&peer)
            || record.is_expired(cx.now)
            || record.addrs().is_empty()
            || self.config.passive_size == 0
        {
            return;
        }
        if let Some(stored) = self.passive.get_mut(&peer) {
            if record.supersedes(stored) {
                *stored = record;
            }
            return;
        }
        if self.passive.len() >= self.config.passive_size {
            let victim = prefer
                .iter()
                .find(|p| self.passive.contains_key(p))
                .copied()
                .or_else(|| {
                    let all: Vec<PeerId> = self.passive.keys().copied().collect();
                    random::choose(cx.rng, &all).copied()
                });
            if let Some(victim) = victim {
                self.passive.remove(&victim);
            }
        }
        self.passive.insert(peer, record);
    }

    /// Takes received records into the passive view (see [`add_passive`](Self::add_passive)),
    /// verifying each that would be stored. A newer record of a neighbor replaces the one kept
    /// for it.
    fn integrate(&mut self, cx: &mut Context<'_>, records: Vec<PeerRecord>, prefer: &[PeerId]) {
        for record in records.into_iter().take(MAX_SHUFFLE_RECORDS + 1) {
            let peer = *record.peer();
            if peer == self.local || self.pending.contains_key(&peer) {
                continue;
            }
            if let Some(known) = self.active.get(&peer) {
                let newer = known.as_ref().is_none_or(|k| record.supersedes(k));
                if newer && self.check(cx, &record) {
                    self.active.insert(peer, Some(record));
                }
                continue;
            }
            if self
                .passive
                .get(&peer)
                .is_some_and(|stored| !record.supersedes(stored))
            {
                continue;
            }
            if self.check(cx, &record) {
                self.add_passive(cx, record, prefer);
            }
        }
    }

    /// Asks the peer of `record` to be a neighbor, remembering the request.
    fn request_neighbor(&mut self, cx: &mut Context<'_>, record: PeerRecord, high_priority: bool) {
        let peer = *record.peer();
        if record.addrs().is_empty() && !cx.is_ready(&peer) {
            return;
        }
        self.passive.remove(&peer);
        let own = cx.own_record();
        cx.dial_and_send(
            peer,
            record.addrs(),
            Message::Neighbor {
                high_priority,
                record: own,
            },
        );
        self.pending.insert(
            peer,
            Pending {
                since: cx.now,
                record: Some(record),
            },
        );
        self.stats.neighbor_requests += 1;
    }

    /// Sends `Join` to `contact`, if we have a record to join with.
    fn send_join(&mut self, cx: &mut Context<'_>, contact: PeerId) {
        if let Some(own) = cx.own_record() {
            cx.send(contact, Message::Join { record: own });
            self.join = Some((contact, cx.now));
            self.stats.joins_sent += 1;
        }
    }

    pub(super) fn on_ready(&mut self, cx: &mut Context<'_>, info: &PeerInfo) {
        let peer = info.peer;
        if peer == self.local {
            return;
        }
        if self.contacts.len() < MAX_CONTACTS {
            self.contacts.insert(peer);
        }
        if info.direction == Direction::Outbound
            && self.active.is_empty()
            && self.join.is_none()
            && !self.pending.contains_key(&peer)
        {
            self.send_join(cx, peer);
        }
    }

    pub(super) fn on_gone(&mut self, cx: &mut Context<'_>, peer: PeerId) {
        self.contacts.remove(&peer);
        self.search.forget_neighbor(&peer);
        if self.join.is_some_and(|(p, _)| p == peer) {
            self.join = None;
        }
        let was_pending = self.pending.remove(&peer).is_some();
        if was_pending {
            self.passive.remove(&peer);
        }
        let was_active = self.remove_active(cx, peer, false);
        if was_active {
            self.stats.neighbors_failed += 1;
        }
        if was_active || was_pending {
            self.repair(cx);
        }
    }

    pub(super) fn on_unreachable(&mut self, cx: &mut Context<'_>, peer: PeerId) {
        self.contacts.remove(&peer);
        if self.join.is_some_and(|(p, _)| p == peer) {
            self.join = None;
        }
        if self.pending.remove(&peer).is_some() {
            self.passive.remove(&peer);
            self.repair(cx);
        }
    }

    pub(super) fn on_join(&mut self, cx: &mut Context<'_>, from: PeerId, record: PeerRecord) {
        if !cx.is_ready(&from) || *record.peer() != from {
            self.stats.ignored += 1;
            return;
        }
        if !self.check(cx, &record) {
            return;
        }
        let new = !self.active.contains_key(&from);
        let accepted = self.add_active(cx, from, Some(record.clone()));
        cx.send(from, Message::NeighborReply { accepted });
        if !accepted || !new {
            return;
        }
        self.stats.joins += 1;
        let ttl = self.walk_ttl();
        let others: Vec<PeerId> = self
            .active
            .keys()
            .filter(|p| **p != from)
            .copied()
            .collect();
        for peer in others {
            cx.send(
                peer,
                Message::ForwardJoin {
                    record: record.clone(),
                    ttl,
                },
            );
        }
    }

    pub(super) fn on_forward_join(
        &mut self,
        cx: &mut Context<'_>,
        from: PeerId,
        record: PeerRecord,
        ttl: u8,
    ) {
        let joiner = *record.peer();
        if !self.active.contains_key(&from) || joiner == from {
            self.stats.ignored += 1;
            return;
        }
        if joiner == self.local || !self.check(cx, &record) {
            return;
        }
        self.stats.forward_joins += 1;
        let alone = self.active.len() == 1;
        let next = if ttl == 0 || alone {
            None
        } else {
            if ttl == self.config.passive_walk {
                self.add_passive(cx, record.clone(), &[]);
            }
            let others: Vec<PeerId> = self
                .active
                .keys()
                .filter(|p| **p != from && **p != joiner)
                .copied()
                .collect();
            random::choose(cx.rng, &others).copied()
        };
        match next {
            Some(next) => cx.send(
                next,
                Message::ForwardJoin {
                    record,
                    ttl: ttl.saturating_sub(1).min(MAX_TTL),
                },
            ),
            None => {
                // The walk ends here: invite the joiner (bounded, like the active view).
                if !self.active.contains_key(&joiner)
                    && !self.pending.contains_key(&joiner)
                    && self.pending.len() < self.config.active_size
                {
                    self.request_neighbor(cx, record, true);
                }
            }
        }
    }

    pub(super) fn on_neighbor(
        &mut self,
        cx: &mut Context<'_>,
        from: PeerId,
        high_priority: bool,
        record: Option<PeerRecord>,
    ) {
        if !cx.is_ready(&from) || record.as_ref().is_some_and(|r| *r.peer() != from) {
            self.stats.ignored += 1;
            return;
        }
        if let Some(r) = &record
            && !self.check(cx, r)
        {
            return;
        }
        let room = self.active.len() < self.config.active_size;
        let accept = self.active.contains_key(&from)
            || high_priority
            || room
            || self.pending.contains_key(&from);
        if accept && self.add_active(cx, from, record.clone()) {
            self.stats.neighbors_accepted += 1;
            cx.send(from, Message::NeighborReply { accepted: true });
        } else {
            self.stats.neighbors_refused += 1;
            cx.send(from, Message::NeighborReply { accepted: false });
            if let Some(r) = record {
                self.add_passive(cx, r, &[]);
            }
        }
    }

    pub(super) fn on_neighbor_reply(&mut self, cx: &mut Context<'_>, from: PeerId, accepted: bool) {
        if let Some(pending) = self.pending.remove(&from) {
            if accepted {
                self.add_active(cx, from, pending.record);
            } else {
                self.stats.neighbor_refusals += 1;
                self.back_off_repair();
                if let Some(r) = pending.record {
                    self.add_passive(cx, r, &[]);
                }
            }
            return;
        }
        if self.join.is_some_and(|(p, _)| p == from) {
            self.join = None;
            if accepted {
                self.add_active(cx, from, None);
            }
            return;
        }
        if self.active.contains_key(&from) {
            // A reply to a request that crossed the peer's own: already neighbors.
            return;
        }
        if accepted {
            // Accepted after we gave up waiting: the peer has us as a neighbor now, so take it
            // if there is room, or tell it otherwise, so that both views agree.
            if self.active.len() < self.config.active_size {
                self.add_active(cx, from, None);
            } else {
                cx.send(from, Message::Disconnect);
            }
            return;
        }
        // A refusal we no longer wait for.
        self.stats.ignored += 1;
    }

    pub(super) fn on_disconnect(&mut self, cx: &mut Context<'_>, from: PeerId) {
        if self.remove_active(cx, from, true) {
            self.stats.disconnects += 1;
        } else if let Some(pending) = self.pending.remove(&from) {
            // Our request crossed its decision to drop us: count it as refused.
            self.stats.neighbor_refusals += 1;
            if let Some(r) = pending.record {
                self.add_passive(cx, r, &[]);
            }
        } else {
            self.stats.ignored += 1;
        }
    }

    pub(super) fn on_shuffle(
        &mut self,
        cx: &mut Context<'_>,
        from: PeerId,
        origin: PeerRecord,
        records: Vec<PeerRecord>,
        ttl: u8,
    ) {
        if !self.active.contains_key(&from) {
            self.stats.ignored += 1;
            return;
        }
        let origin_peer = *origin.peer();
        let ours = origin_peer == self.local;
        if !ours && !self.check(cx, &origin) {
            return;
        }
        if ttl > 1 && self.active.len() > 1 {
            let others: Vec<PeerId> = self
                .active
                .keys()
                .filter(|p| **p != from)
                .copied()
                .collect();
            if let Some(&next) = random::choose(cx.rng, &others) {
                self.stats.shuffles_forwarded += 1;
                cx.send(
                    next,
                    Message::Shuffle {
                        origin,
                        records,
                        ttl: (ttl - 1).min(MAX_TTL),
                    },
                );
                return;
            }
        }
        self.stats.shuffles_received += 1;
        let mut records = records;
        records.truncate(MAX_SHUFFLE_RECORDS);
        if ours {
            self.integrate(cx, records, &[]);
            return;
        }
        let candidates: Vec<PeerRecord> = self
            .passive
            .values()
            .filter(|r| *r.peer() != origin_peer)
            .cloned()
            .collect();
        let reply = random::sample(cx.rng, candidates, records.len());
        let sent: Vec<PeerId> = reply.iter().map(|r| *r.peer()).collect();
        cx.dial_and_send(
            origin_peer,
            origin.addrs(),
            Message::ShuffleReply { records: reply },
        );
        records.insert(0, origin);
        self.integrate(cx, records, &sent);
    }

    pub(super) fn on_shuffle_reply(
        &mut self,
        cx: &mut Context<'_>,
        _from: PeerId,
        mut records: Vec<PeerRecord>,
    ) {
        let Some(sent) = self.shuffle_sent.take() else {
            self.stats.ignored += 1;
            return;
        };
        self.stats.shuffle_replies += 1;
        records.truncate(MAX_SHUFFLE_RECORDS);
        self.integrate(cx, records, &sent);
    }

    /// Starts a shuffle with a random neighbor, and schedules the next.
    pub(super) fn shuffle(&mut self, cx: &mut Context<'_>) {
        self.next_shuffle = Some(cx.now + self.shuffle_interval());
        self.prune_passive(cx);
        let members: Vec<PeerId> = self.active.keys().copied().collect();
        let Some(&target) = random::choose(cx.rng, &members) else {
            return;
        };
        let Some(own) = cx.own_record() else {
            return;
        };
        let neighbors: Vec<PeerRecord> = self
            .active
            .iter()
            .filter(|(p, _)| **p != target)
            .filter_map(|(_, r)| r.clone())
            .filter(|r| !r.is_expired(cx.now))
            .collect();
        let mut records = random::sample(cx.rng, neighbors, self.config.shuffle_active);
        let passive: Vec<PeerRecord> = self
            .passive
            .values()
            .filter(|r| *r.peer() != target)
            .cloned()
            .collect();
        records.extend(random::sample(cx.rng, passive, self.config.shuffle_passive));
        records.truncate(MAX_SHUFFLE_RECORDS);
        self.shuffle_sent = Some(records.iter().map(|r| *r.peer()).collect());
        self.stats.shuffles_sent += 1;
        cx.send(
            target,
            Message::Shuffle {
                origin: own,
                records,
                ttl: self.walk_ttl(),
            },
        );
    }

    fn prune_passive(&mut self, cx: &Context<'_>) {
        let now = cx.now;
        self.passive.retain(|_, r| !r.is_expired(now));
    }

    /// Times out requests, then asks passive peers to be neighbors while the active view is
    /// short; joins again through a connected peer if there is nobody else to ask.
    pub(super) fn repair(&mut self, cx: &mut Context<'_>) {
        let now = cx.now;
        let before = self.pending.len();
        self.pending.retain(|_, p| p.since + PENDING_TIMEOUT > now);
        self.stats.neighbor_timeouts += (before - self.pending.len()) as u64;
        if self.join.is_some_and(|(_, at)| at + PENDING_TIMEOUT <= now) {
            self.join = None;
            self.stats.neighbor_timeouts += 1;
            self.back_off_repair();
        }
        self.prune_passive(cx);
        while self.active.len() + self.pending.len() < self.config.active_size
            && self.pending.len() < MAX_PENDING_REPAIRS
        {
            let candidates: Vec<PeerId> = self.passive.keys().copied().collect();
            let Some(&peer) = random::choose(cx.rng, &candidates) else {
                break;
            };
            let Some(record) = self.passive.remove(&peer) else {
                break;
            };
            let high_priority = self.active.is_empty();
            self.request_neighbor(cx, record, high_priority);
        }
        if self.active.is_empty() && self.pending.is_empty() && self.join.is_none() {
            let contacts: Vec<PeerId> = self.contacts.iter().copied().collect();
            if let Some(&contact) = random::choose(cx.rng, &contacts) {
                self.send_join(cx, contact);
            }
        }
        self.next_repair = Some(now + self.repair_delay());
    }

    fn back_off_repair(&mut self) {
        self.repair_backoff = (self.repair_backoff + 1).min(MAX_REPAIR_BACKOFF);
    }
}

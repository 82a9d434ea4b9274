//! Swarm membership: the `Have` handshake, peer exchange inside the swarm, candidates and
//! dialing, and removing peers (for good, when they misbehave).

use std::net::SocketAddr;
use std::ops::Range;

use super::bitfield::Bitfield;
use super::blob::{BlobSwarm, SwarmPeer};
use super::machine::Env;
use super::picker::Picker;
use super::{
    Event, MAX_PEERS, MAX_RANGES, Message, RejectReason, empty_hash, group_count, well_formed,
};
use crate::identity::PeerId;
use crate::kad::record::PeerRecord;
use crate::trust::reputation::Observation;

impl BlobSwarm {
    /// Our `Have`: nothing until the size is proven (a claim we cannot back would mislead).
    fn have_message(&self, env: &mut Env<'_, '_>) -> (Message, Vec<Range<u64>>) {
        let mut ranges = self
            .picker
            .as_ref()
            .map(|p| p.have().ranges())
            .unwrap_or_default();
        let rest = if ranges.len() > MAX_RANGES {
            ranges.split_off(MAX_RANGES)
        } else {
            Vec::new()
        };
        let msg = Message::Have {
            hash: self.hash,
            size: self.size,
            ranges,
            record: env.cx.own_record(),
        };
        (msg, rest)
    }

    /// Sends our `Have` to `peer` (dialing it at its known addresses first if `dial`).
    pub(super) fn send_have(&mut self, env: &mut Env<'_, '_>, peer: PeerId, dial: bool) {
        let (msg, rest) = self.have_message(env);
        let ones = self.picker.as_ref().map_or(0, |p| p.have().count_ones());
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        p.sent_have = Some(ones);
        if dial {
            let addrs = p.addrs.clone();
            env.cx.dial_and_send(peer, &addrs, msg);
        } else {
            env.send(peer, msg);
        }
        for chunk in rest.chunks(MAX_RANGES) {
            env.send(
                peer,
                Message::HaveUpdate {
                    hash: self.hash,
                    ranges: chunk.to_vec(),
                },
            );
        }
    }

    /// A peer's `Have`: the handshake, or a new bitfield.
    pub(super) fn on_have(
        &mut self,
        env: &mut Env<'_, '_>,
        from: PeerId,
        size: Option<u64>,
        ranges: Vec<Range<u64>>,
        record: Option<PeerRecord>,
    ) {
        let hash = self.hash;
        if self.bad.contains(&from) {
            env.stats.refused += 1;
            return env.send(
                from,
                Message::Reject {
                    hash,
                    groups: None,
                    reason: RejectReason::Banned,
                },
            );
        }
        if !self.peers.contains_key(&from) {
            if self.peers.len() >= env.config.max_peers {
                env.stats.refused += 1;
                // Members to try instead, so a crowd that only knows this peer (a ticket's
                // sharer) still finds the swarm.
                self.send_peers(env, from);
                return env.send(
                    from,
                    Message::Reject {
                        hash,
                        groups: None,
                        reason: RejectReason::Full,
                    },
                );
            }
            let addrs = self.candidates.remove(&from).unwrap_or_default();
            self.peers
                .insert(from, SwarmPeer::new(env.now(), env.config, addrs));
        }
        if let Some(s) = size {
            let lie = match self.size {
                Some(ours) => s != ours,
                None => s == 0 && hash != empty_hash(),
            };
            if lie {
                return self.drop_bad(env, from);
            }
            if s > env.config.max_blob_size {
                env.stats.malformed += 1;
                return self.remove_peer(env, from);
            }
        }
        let groups = size.map_or(0, group_count);
        if !well_formed(&ranges, groups) {
            env.stats.malformed += 1;
            return self.remove_peer(env, from);
        }
        let record = record.filter(|r| {
            let ok = *r.peer() == from && r.verify(env.now(), env.limits).is_ok();
            if !ok {
                env.stats.pex_invalid += 1;
            }
            ok
        });
        let has = Bitfield::from_ranges(groups, &ranges);
        let ours = self.picker.as_ref().map(Picker::groups);
        let Some(p) = self.peers.get_mut(&from) else {
            return;
        };
        if let Some(picker) = &mut self.picker
            && p.active
            && Some(p.has.len()) == ours
        {
            picker.remove_peer(&p.has);
        }
        p.has = has;
        p.claimed = size;
        if record.is_some() {
            p.record = record;
        }
        if let Some(picker) = &mut self.picker
            && Some(p.has.len()) == ours
        {
            picker.add_peer(&p.has);
        }
        let newly = !p.active;
        p.active = true;
        let ones = self.picker.as_ref().map_or(0, |p| p.have().count_ones());
        let stale = p.sent_have != Some(ones);
        if stale {
            self.send_have(env, from, false);
        }
        if newly {
            env.stats.handshakes += 1;
            self.alone_since = None;
            self.send_peers(env, from);
        }
        self.update_interest(env, from);
        self.fill(env, from);
    }

    /// Records of other members for a newcomer, most recent members first.
    fn send_peers(&mut self, env: &mut Env<'_, '_>, to: PeerId) {
        let mut members: Vec<(&PeerId, &SwarmPeer)> = self
            .peers
            .iter()
            .filter(|(id, p)| **id != to && p.active && p.record.is_some())
            .collect();
        members.sort_by_key(|(id, p)| (std::cmp::Reverse(p.since), **id));
        let records: Vec<PeerRecord> = members
            .into_iter()
            .filter_map(|(_, p)| p.record.clone())
            .filter(|r| !r.is_expired(env.now()))
            .take(MAX_PEERS)
            .collect();
        if !records.is_empty() {
            env.send(
                to,
                Message::Peers {
                    hash: self.hash,
                    records,
                },
            );
        }
    }

    /// Peer exchange from a member: verified records become candidates.
    pub(super) fn on_peers(
        &mut self,
        env: &mut Env<'_, '_>,
        from: PeerId,
        records: Vec<PeerRecord>,
    ) {
        let now = env.now();
        // From a member, or from a peer we are handshaking with (a full swarm sends members
        // to try before it refuses us).
        let Some(p) = self.peers.get_mut(&from) else {
            env.stats.malformed += 1;
            return;
        };
        if p.last_pex
            .is_some_and(|t| now < t + env.config.pex_interval)
        {
            env.stats.pex_ignored += 1;
            return;
        }
        p.last_pex = Some(now);
        for r in records.into_iter().take(MAX_PEERS) {
            let id = *r.peer();
            if id == env.local
                || self.bad.contains(&id)
                || self.peers.contains_key(&id)
                || self.candidates.contains_key(&id)
            {
                continue;
            }
            if r.verify(now, env.limits).is_err() {
                env.stats.pex_invalid += 1;
                continue;
            }
            if self.candidates.len() >= env.config.max_candidates {
                break;
            }
            env.stats.pex_learned += 1;
            self.candidates.insert(id, r.addrs().to_vec());
        }
        self.connect_more(env);
    }

    /// Adds candidates (from the caller).
    pub(super) fn add_candidates(
        &mut self,
        env: &mut Env<'_, '_>,
        providers: Vec<(PeerId, Vec<SocketAddr>)>,
    ) {
        for (id, addrs) in providers {
            if id == env.local || self.bad.contains(&id) {
                continue;
            }
            if let Some(p) = self.peers.get_mut(&id) {
                if p.addrs.is_empty() {
                    p.addrs = addrs;
                }
                continue;
            }
            if self.candidates.len() >= env.config.max_candidates {
                break;
            }
            self.candidates.insert(id, addrs);
        }
        self.connect_more(env);
    }

    /// Starts handshakes with candidates while there is room (only while downloading: a seed
    /// waits to be found).
    pub(super) fn connect_more(&mut self, env: &mut Env<'_, '_>) {
        if !self.fetching {
            return;
        }
        // At most half the slots are filled by our own handshakes: the rest stay open for
        // newcomers, or a swarm whose members filled up with each other would refuse everyone
        // who arrives later.
        let max_outbound = (env.config.max_peers / 2).max(1);
        loop {
            let connecting = self.peers.values().filter(|p| !p.active).count();
            let outbound = self.peers.values().filter(|p| p.outbound).count();
            if self.peers.len() >= env.config.max_peers
                || outbound >= max_outbound
                || connecting >= env.config.max_connecting
                || self.candidates.is_empty()
            {
                break;
            }
            let keys: Vec<PeerId> = self.candidates.keys().copied().collect();
            let Some(&id) = crate::random::choose(env.cx.rng, &keys) else {
                break;
            };
            let addrs = self.candidates.remove(&id).unwrap_or_default();
            let mut peer = SwarmPeer::new(env.now(), env.config, addrs);
            peer.outbound = true;
            self.peers.insert(id, peer);
            self.send_have(env, id, true);
        }
    }

    /// Removes `peer` from the swarm (it left, its connection closed, or it misbehaved),
    /// returning its requests to the picker.
    pub(super) fn remove_peer(&mut self, env: &mut Env<'_, '_>, peer: PeerId) {
        let Some(p) = self.peers.get(&peer) else {
            return;
        };
        let starts: Vec<u64> = p.outstanding.iter().copied().collect();
        for start in starts {
            self.drop_request(peer, start, false);
        }
        let Some(p) = self.peers.remove(&peer) else {
            return;
        };
        if let Some(picker) = &mut self.picker
            && p.active
            && p.has.len() == picker.groups()
        {
            picker.remove_peer(&p.has);
        }
        if self.optimistic == Some(peer) {
            self.optimistic = None;
        }
        if p.slot.is_some() {
            self.fill_slots(env);
        }
        self.fill_all(env);
    }

    /// Drops `peer` for bad data or a false size claim: remembered, reported, refused.
    pub(super) fn drop_bad(&mut self, env: &mut Env<'_, '_>, peer: PeerId) {
        env.cx.observe(peer, Observation::BadData);
        self.remove_peer(env, peer);
        self.candidates.remove(&peer);
        if self.bad.len() >= env.config.max_bad_peers.max(1) {
            self.bad.pop_first();
        }
        self.bad.insert(peer);
        env.stats.bad_peers += 1;
        env.cx.emit(Event::BadPeer {
            hash: self.hash,
            peer,
        });
        env.send(
            peer,
            Message::Reject {
                hash: self.hash,
                groups: None,
                reason: RejectReason::Banned,
            },
        );
    }
}

//! Downloading: interest, requests and their window, the size proof, endgame, writing verified
//! data, and what a peer's answers (data, chokes, rejects) do to the requests in flight.

use std::ops::Range;

use bytes::Bytes;

use super::bitfield::Bitfield;
use super::blob::{BlobSwarm, Block, MAX_RECENT, SwarmPeer};
use super::credit::{RECEIPT_EVERY, Receipt};
use super::machine::Env;
use super::picker::Picker;
use super::store::{BlobStatus, WriteError, Written};
use super::{
    Event, FailReason, GROUP_BYTES, MAX_REQUEST_GROUPS, Message, RejectReason, group_count,
    group_len, well_formed,
};
use crate::identity::PeerId;
use crate::random;
use crate::trust::reputation::Observation;

impl BlobSwarm {
    /// Whether `p` has something we still want.
    fn wants(&self, p: &SwarmPeer) -> bool {
        if !self.fetching {
            return false;
        }
        match &self.picker {
            Some(picker) => {
                p.has.len() == picker.groups() && p.has.has_any_missing_from(picker.have())
            }
            // Before the size is known only the last group is wanted, from a peer that claims
            // a size and has it.
            None => p.claimed.is_some_and(|s| {
                let n = group_count(s);
                n > 0 && p.has.get(n - 1)
            }),
        }
    }

    /// Tells `peer` whether we are interested, if that changed.
    pub(super) fn update_interest(&mut self, env: &mut Env<'_, '_>, peer: PeerId) {
        let want = match self.peers.get(&peer) {
            Some(p) if p.active => self.wants(p),
            _ => return,
        };
        let now = env.now();
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        if want == p.am_interested {
            return;
        }
        p.am_interested = want;
        let hash = self.hash;
        if want {
            p.interested_since = now;
            env.send(peer, Message::Interested { hash });
        } else {
            env.send(peer, Message::NotInterested { hash });
        }
    }

    /// A peer's HAVE: more groups it can serve.
    pub(super) fn on_have_update(
        &mut self,
        env: &mut Env<'_, '_>,
        from: PeerId,
        ranges: Vec<Range<u64>>,
    ) {
        let ours = self.picker.as_ref().map(Picker::groups);
        let Some(p) = self.peers.get_mut(&from) else {
            return;
        };
        if !well_formed(&ranges, p.has.len()) {
            env.stats.malformed += 1;
            return;
        }
        for r in ranges {
            if p.has.all_in(r.clone()) {
                continue;
            }
            match &mut self.picker {
                Some(picker) if Some(p.has.len()) == ours => {
                    let before: Vec<u64> = picker
                        .pieces_of(&r)
                        .filter(|&q| !p.has.all_in(picker.piece_range(q)))
                        .collect();
                    p.has.set_range(r);
                    for q in before {
                        if p.has.all_in(picker.piece_range(q)) {
                            picker.add_availability(q);
                        }
                    }
                }
                _ => {
                    p.has.set_range(r);
                }
            }
        }
        self.update_interest(env, from);
        self.fill(env, from);
    }

    /// Requests from `peer` until its window is full or there is nothing it can give.
    pub(super) fn fill(&mut self, env: &mut Env<'_, '_>, peer: PeerId) {
        loop {
            let Some(p) = self.peers.get(&peer) else {
                return;
            };
            if !(self.fetching && p.active && !p.peer_choking && p.am_interested)
                || p.outstanding.len() >= p.window
                || self.in_flight >= env.config.max_bytes_in_flight
            {
                return;
            }
            let Some((range, endgame)) = self.next_pick(env, peer) else {
                return;
            };
            self.request(env, peer, range, endgame);
        }
    }

    /// [`fill`](Self::fill) for every peer that unchokes us, in random order (so that when
    /// little is left, no peer id is favoured).
    pub(super) fn fill_all(&mut self, env: &mut Env<'_, '_>) {
        if !self.fetching {
            return;
        }
        let mut ids: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, p)| p.active && !p.peer_choking && p.am_interested)
            .map(|(id, _)| *id)
            .collect();
        random::shuffle(env.cx.rng, &mut ids);
        for id in ids {
            self.fill(env, id);
        }
    }

    /// What to ask `peer` for next: the last group while the size is unproven; then the
    /// picker's choice; in endgame, a piece requested from others that `peer` has.
    fn next_pick(&self, env: &mut Env<'_, '_>, peer: PeerId) -> Option<(Range<u64>, bool)> {
        let p = self.peers.get(&peer)?;
        let Some(picker) = &self.picker else {
            if self.sizing.is_some() {
                return None;
            }
            let n = group_count(p.claimed?);
            return (n > 0 && p.has.get(n - 1)).then_some((n - 1..n, false));
        };
        let random = picker.have().count_ones()
            < env
                .config
                .random_first_pieces
                .saturating_mul(env.config.piece_groups);
        if let Some(r) = picker.pick(&p.has, random, env.cx.rng) {
            return Some((r, false));
        }
        if !picker.is_endgame() {
            return None;
        }
        self.blocks
            .iter()
            .filter(|(start, b)| {
                b.requests.len() <= env.config.endgame_duplicates
                    && !b.requests.iter().any(|(q, _)| *q == peer)
                    && p.has.all_in(**start..b.end)
            })
            .min_by_key(|(start, b)| (b.requests.len(), b.requests.first().map(|r| r.1), **start))
            .map(|(start, b)| (*start..b.end, true))
    }

    fn request(&mut self, env: &mut Env<'_, '_>, peer: PeerId, r: Range<u64>, endgame: bool) {
        let claimed = self.peers.get(&peer).and_then(|p| p.claimed);
        let size = self.size.or(claimed).unwrap_or(0);
        match &mut self.picker {
            None => self.sizing = Some(size),
            Some(picker) if !endgame => picker.mark_requested(&r),
            Some(_) => {}
        }
        let bytes: u64 = r.clone().map(|g| group_len(size, g)).sum();
        let now = env.now();
        self.blocks
            .entry(r.start)
            .or_insert(Block {
                end: r.end,
                bytes,
                requests: Vec::new(),
            })
            .requests
            .push((peer, now));
        self.in_flight += bytes;
        if let Some(p) = self.peers.get_mut(&peer) {
            p.outstanding.insert(r.start);
        }
        env.stats.requests_sent += 1;
        env.stats.groups_requested += r.end - r.start;
        if endgame {
            env.stats.endgame_requests += 1;
        }
        env.send(
            peer,
            Message::Request {
                hash: self.hash,
                groups: r,
            },
        );
    }

    /// Withdraws `peer`'s request for the block at `start` (remembering it as recent if its
    /// data may still come); the block is free again once nobody has it.
    pub(super) fn drop_request(&mut self, peer: PeerId, start: u64, recent: bool) {
        let Some(b) = self.blocks.get_mut(&start) else {
            return;
        };
        let before = b.requests.len();
        b.requests.retain(|(q, _)| *q != peer);
        if b.requests.len() == before {
            return;
        }
        self.in_flight = self.in_flight.saturating_sub(b.bytes);
        let range = start..b.end;
        let empty = b.requests.is_empty();
        if let Some(p) = self.peers.get_mut(&peer) {
            p.outstanding.remove(&start);
            if recent {
                remember(p, range.clone());
            }
        }
        if empty {
            self.blocks.remove(&start);
            match &mut self.picker {
                Some(picker) => picker.unmark_requested(&range),
                None => self.sizing = None,
            }
        }
    }

    /// `winner` delivered the block at `start`: every other request for it is cancelled.
    fn complete_block(&mut self, env: &mut Env<'_, '_>, start: u64, winner: PeerId) {
        let Some(b) = self.blocks.remove(&start) else {
            return;
        };
        let range = start..b.end;
        self.in_flight = self
            .in_flight
            .saturating_sub(b.bytes * b.requests.len() as u64);
        for (q, _) in b.requests {
            let Some(p) = self.peers.get_mut(&q) else {
                continue;
            };
            p.outstanding.remove(&start);
            if q != winner {
                remember(p, range.clone());
                env.stats.cancels_sent += 1;
                env.send(
                    q,
                    Message::Cancel {
                        hash: self.hash,
                        groups: range.clone(),
                    },
                );
            }
        }
        match &mut self.picker {
            Some(picker) => picker.unmark_requested(&range),
            None => self.sizing = None,
        }
    }

    /// A peer's `Data`.
    pub(super) fn on_data(
        &mut self,
        env: &mut Env<'_, '_>,
        from: PeerId,
        groups: Range<u64>,
        encoded: Bytes,
    ) {
        let Some(p) = self.peers.get_mut(&from) else {
            return;
        };
        let expected = p.outstanding.contains(&groups.start)
            && self
                .blocks
                .get(&groups.start)
                .is_some_and(|b| b.end == groups.end);
        let late = !expected && p.recent.contains(&groups);
        if !expected && !late {
            env.stats.unrequested += 1;
            return;
        }
        if late {
            p.recent.retain(|r| *r != groups);
        }
        let size = match (self.size, self.sizing) {
            (Some(s), _) => s,
            (None, Some(s)) if expected => s,
            _ => {
                env.stats.duplicates += 1;
                return;
            }
        };
        if late {
            let useful = self.fetching
                && self
                    .picker
                    .as_ref()
                    .is_some_and(|pk| !pk.have().all_in(groups.clone()));
            if !useful {
                env.stats.duplicates += 1;
                return;
            }
            env.stats.late_data += 1;
        }
        match env.blobs.write(&self.hash, size, groups.clone(), &encoded) {
            Ok(w) => {
                env.cx.observe(from, Observation::VerifiedData);
                self.on_written(env, from, groups, encoded.len() as u64, expected, size, w);
            }
            Err(WriteError::Bad(_)) => {
                env.stats.bad_data += 1;
                self.drop_bad(env, from);
                self.resync(env);
                self.fill_all(env);
            }
            Err(e) if self.picker.is_none() => {
                // The size is only a claim yet: a store that cannot take it (a liar's huge
                // size) must not end the download. Drop the claimant; if every provider goes
                // this way, the failure reports the store's reason.
                env.stats.store_errors += 1;
                self.store_error = Some(e.to_string());
                self.remove_peer(env, from);
            }
            Err(e) => {
                env.stats.store_errors += 1;
                self.fail(env, FailReason::Store(e.to_string()));
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn on_written(
        &mut self,
        env: &mut Env<'_, '_>,
        from: PeerId,
        groups: Range<u64>,
        len: u64,
        expected: bool,
        size: u64,
        w: Written,
    ) {
        let now = env.now();
        if let Some(p) = self.peers.get_mut(&from) {
            p.down.add(now, len);
            p.downloaded += len;
            p.last_data = Some(now);
            let rate = p.down.per_sec(now);
            let request_bytes = env.config.piece_groups.clamp(1, MAX_REQUEST_GROUPS) * GROUP_BYTES;
            let queue_ms = env.config.window_queue_time.as_millis() as u64;
            let want = rate.saturating_mul(queue_ms) / 1000 / request_bytes + 1;
            let min = env.config.min_window.max(1);
            p.window = usize::try_from(want)
                .unwrap_or(usize::MAX)
                .clamp(min, env.config.max_window.max(min));
        }
        let totals = env.totals.entry(from);
        totals.downloaded += len;
        let downloaded = totals.downloaded;
        if let Some(key) = env.signer
            && downloaded >= totals.receipt_sent + RECEIPT_EVERY
        {
            totals.receipt_sent = downloaded;
            let receipt = Receipt::new(key, from, downloaded, env.now().as_secs());
            env.send(
                from,
                Message::Receipt {
                    hash: self.hash,
                    receipt,
                },
            );
        }
        env.stats.bytes_downloaded += len;
        if expected {
            self.complete_block(env, groups.start, from);
        }
        if self.picker.is_none() {
            self.size_proven(env, size);
        } else if let Some(picker) = &mut self.picker {
            let new: Vec<Range<u64>> = w
                .groups
                .iter()
                .filter(|r| picker.mark_have(r) > 0)
                .cloned()
                .collect();
            self.announce(env, &new);
        }
        if w.complete && !self.is_complete() {
            self.resync(env);
        }
        if self.fetching && self.is_complete() {
            return self.finish(env);
        }
        self.fill_all(env);
    }

    /// The last group verified: the size is proven. Starts picking from what the store holds,
    /// drops peers whose claims it contradicts, and tells every peer.
    fn size_proven(&mut self, env: &mut Env<'_, '_>, size: u64) {
        let n = group_count(size);
        let have = match env.blobs.status(&self.hash) {
            BlobStatus::Complete { .. } => Bitfield::full(n),
            BlobStatus::Partial { groups, .. } => Bitfield::from_ranges(n, &groups),
            _ => Bitfield::with_range(n, n.saturating_sub(1)..n),
        };
        self.sizing = None;
        self.set_have(size, have, env.config);
        let mut liars = Vec::new();
        if let Some(picker) = &mut self.picker {
            for (id, p) in &self.peers {
                match p.claimed {
                    Some(s) if s == size && p.active => picker.add_peer(&p.has),
                    Some(s) if s != size => liars.push(*id),
                    _ => {}
                }
            }
        }
        for id in liars {
            self.drop_bad(env, id);
        }
        let active: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, p)| p.active)
            .map(|(id, _)| *id)
            .collect();
        for id in active {
            self.send_have(env, id, false);
            self.update_interest(env, id);
        }
    }

    /// Sends HAVE for newly verified `ranges` to every peer that lacks some of them.
    fn announce(&mut self, env: &mut Env<'_, '_>, ranges: &[Range<u64>]) {
        if ranges.is_empty() {
            return;
        }
        let mut lost_interest = Vec::new();
        for (id, p) in &self.peers {
            if !p.active {
                continue;
            }
            if p.am_interested && ranges.iter().any(|r| p.has.any_in(r.clone())) {
                lost_interest.push(*id);
            }
            if ranges.iter().all(|r| p.has.all_in(r.clone())) {
                continue;
            }
            env.send(
                *id,
                Message::HaveUpdate {
                    hash: self.hash,
                    ranges: ranges.to_vec(),
                },
            );
        }
        for id in lost_interest {
            self.update_interest(env, id);
        }
    }

    /// Reads back what the store holds (after a write that failed part-way, or a store that
    /// says complete when we did not think so).
    fn resync(&mut self, env: &mut Env<'_, '_>) {
        let Some(picker) = &mut self.picker else {
            return;
        };
        let n = picker.groups();
        let held = match env.blobs.status(&self.hash) {
            BlobStatus::Complete { .. } => Bitfield::full(n).ranges(),
            BlobStatus::Partial { groups, .. } => groups,
            _ => Vec::new(),
        };
        let mut new = Vec::new();
        for r in held {
            let r = r.start..r.end.min(n);
            if picker.mark_have(&r) > 0 {
                new.push(r);
            }
        }
        self.announce(env, &new);
        if self.fetching && self.is_complete() {
            self.finish(env);
        }
    }

    /// Every group verified: report, cancel what is still asked, stop being interested, and
    /// seed (or leave).
    fn finish(&mut self, env: &mut Env<'_, '_>) {
        let size = self.size.unwrap_or(0);
        self.report_progress(env);
        env.stats.completed += 1;
        env.cx.emit(Event::Complete {
            hash: self.hash,
            size,
        });
        let blocks = std::mem::take(&mut self.blocks);
        for (start, b) in blocks {
            for (q, _) in b.requests {
                if let Some(p) = self.peers.get_mut(&q) {
                    p.outstanding.remove(&start);
                    remember(p, start..b.end);
                }
                env.stats.cancels_sent += 1;
                env.send(
                    q,
                    Message::Cancel {
                        hash: self.hash,
                        groups: start..b.end,
                    },
                );
            }
        }
        self.in_flight = 0;
        self.sizing = None;
        self.fetching = false;
        let ids: Vec<PeerId> = self.peers.keys().copied().collect();
        for id in ids {
            self.update_interest(env, id);
        }
        if !env.config.seed_after_complete {
            self.shutdown(env);
        }
    }

    /// `Choke`: the peer dropped our requests; they go to others (its data may still come).
    pub(super) fn on_choke(&mut self, env: &mut Env<'_, '_>, from: PeerId) {
        let Some(p) = self.peers.get_mut(&from) else {
            return;
        };
        p.peer_choking = true;
        let starts: Vec<u64> = p.outstanding.iter().copied().collect();
        for start in starts {
            self.drop_request(from, start, true);
        }
        self.fill_all(env);
    }

    /// `Unchoke`: we may request.
    pub(super) fn on_unchoke(&mut self, env: &mut Env<'_, '_>, from: PeerId) {
        if let Some(p) = self.peers.get_mut(&from) {
            p.peer_choking = false;
        }
        self.fill(env, from);
    }

    /// A refused request: give it up, and learn from the reason.
    pub(super) fn on_reject(
        &mut self,
        env: &mut Env<'_, '_>,
        from: PeerId,
        groups: Range<u64>,
        reason: RejectReason,
    ) {
        let Some(p) = self.peers.get_mut(&from) else {
            return;
        };
        let ours = p.outstanding.contains(&groups.start)
            && self
                .blocks
                .get(&groups.start)
                .is_some_and(|b| b.end == groups.end);
        if !ours {
            return;
        }
        env.stats.rejects_received += 1;
        match reason {
            RejectReason::Choked => p.peer_choking = true,
            RejectReason::Busy => p.window = p.outstanding.len().saturating_sub(1).max(1),
            RejectReason::Unknown => return self.remove_peer(env, from),
            _ => {}
        }
        self.drop_request(from, groups.start, false);
        if reason == RejectReason::NotAvailable {
            self.forget_groups(from, groups);
        }
        self.fill_all(env);
    }

    /// The peer said it does not have `r` after all: stop counting on it for those groups.
    fn forget_groups(&mut self, peer: PeerId, r: Range<u64>) {
        let ours = self.picker.as_ref().map(Picker::groups);
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        if let Some(picker) = &mut self.picker
            && Some(p.has.len()) == ours
        {
            for q in picker.pieces_of(&r) {
                if p.has.all_in(picker.piece_range(q)) {
                    picker.remove_availability(q);
                }
            }
        }
        p.has.clear_range(r);
    }

    /// Gives up requests unanswered for `request_timeout`, halving the slow peer's window.
    pub(super) fn expire_requests(&mut self, env: &mut Env<'_, '_>) {
        let now = env.now();
        let timeout = env.config.request_timeout;
        let expired: Vec<(PeerId, u64)> = self
            .blocks
            .iter()
            .flat_map(|(start, b)| {
                b.requests
                    .iter()
                    .filter(|(_, t)| *t + timeout <= now)
                    .map(|(q, _)| (*q, *start))
            })
            .collect();
        for (q, start) in expired {
            env.stats.timeouts += 1;
            self.drop_request(q, start, true);
            if let Some(p) = self.peers.get_mut(&q) {
                p.window = (p.window / 2).max(env.config.min_window.max(1));
            }
        }
    }
}

fn remember(p: &mut SwarmPeer, r: Range<u64>) {
    if p.recent.len() >= MAX_RECENT {
        p.recent.pop_front();
    }
    p.recent.push_back(r);
}

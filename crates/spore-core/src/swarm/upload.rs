//! Serving: requests and their queue, and choking (who gets an upload slot).

use std::ops::Range;

use super::blob::{BlobSwarm, SwarmPeer};
use super::choke::{self, Candidate, SUSPECT_BELOW};
use super::machine::Env;
use super::store::ReadError;
use super::{CreditMode, MAX_REQUEST_GROUPS, Message, RejectReason, Slot};
use crate::identity::PeerId;

impl BlobSwarm {
    /// Seeding: nothing left to download, so peers are ranked by our upload to them.
    fn seeding(&self) -> bool {
        !self.fetching || self.is_complete()
    }

    /// The peers that want an upload slot, as the choker sees them.
    fn candidates(&self, env: &Env<'_, '_>) -> Vec<Candidate> {
        let now = env.now();
        let seeding = self.seeding();
        let credit = env.config.credit;
        let debtor = |peer: &PeerId| {
            credit.mode != CreditMode::Off
                && env
                    .totals
                    .get(peer)
                    .is_some_and(|t| t.debt() > credit.allowance)
        };
        self.peers
            .iter()
            .filter(|(_, p)| p.active && p.peer_interested)
            .filter(|(id, _)| credit.mode != CreditMode::Refuse || seeding || !debtor(id))
            .map(|(id, p)| Candidate {
                peer: *id,
                rate: if seeding {
                    p.up.clone().per_sec(now)
                } else {
                    p.down.clone().per_sec(now)
                },
                regular: !p.snubbing(now, env.config.snub_timeout),
                new: p.since + env.config.optimistic_interval > now,
                suspect: env.cx.reputation(id) < SUSPECT_BELOW,
                debtor: debtor(id),
            })
            .collect()
    }

    /// Every `rechoke_interval`: the regular slots go to the best peers, and (when `rotate`,
    /// or when it lapsed) the optimistic slot to a random other one.
    pub(super) fn rechoke(&mut self, env: &mut Env<'_, '_>, rotate: bool) {
        let cands = self.candidates(env);
        let regular = choke::regular(&cands, env.config.regular_slots, env.cx.rng);
        let keep = self
            .optimistic
            .filter(|o| !rotate && !regular.contains(o) && cands.iter().any(|c| c.peer == *o));
        let optimistic = if env.config.optimistic_slots == 0 {
            None
        } else if keep.is_some() {
            keep
        } else {
            choke::optimistic(&cands, &regular, env.cx.rng)
        };
        self.apply_slots(env, &regular, optimistic);
    }

    /// Between rechokes: a free regular slot goes to the best choked candidate at once, and a
    /// vacant optimistic slot to a random one, so new peers need not wait up to 10 s.
    pub(super) fn fill_slots(&mut self, env: &mut Env<'_, '_>) {
        let cands = self.candidates(env);
        let mut regular: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, p)| p.slot == Some(Slot::Regular))
            .map(|(id, _)| *id)
            .collect();
        let free = env.config.regular_slots.saturating_sub(regular.len());
        if free > 0 {
            let choked: Vec<Candidate> = cands
                .iter()
                .filter(|c| self.peers.get(&c.peer).is_some_and(|p| p.slot.is_none()))
                .copied()
                .collect();
            regular.extend(choke::regular(&choked, free, env.cx.rng));
        }
        let mut optimistic = self.optimistic.filter(|o| !regular.contains(o));
        if optimistic.is_none() && env.config.optimistic_slots > 0 {
            optimistic = choke::optimistic(&cands, &regular, env.cx.rng);
        }
        self.apply_slots(env, &regular, optimistic);
    }

    /// Unchokes exactly `regular` and `optimistic`, choking everyone else (which drops their
    /// queued requests, as BitTorrent does).
    fn apply_slots(
        &mut self,
        env: &mut Env<'_, '_>,
        regular: &[PeerId],
        optimistic: Option<PeerId>,
    ) {
        self.optimistic = optimistic;
        let hash = self.hash;
        for (id, p) in &mut self.peers {
            let slot = if regular.contains(id) {
                Some(Slot::Regular)
            } else if optimistic == Some(*id) {
                Some(Slot::Optimistic)
            } else {
                None
            };
            p.slot = slot;
            if slot.is_some() && p.am_choking {
                p.am_choking = false;
                env.send(*id, Message::Unchoke { hash });
            } else if slot.is_none() && !p.am_choking {
                choke(env, hash, *id, p);
            }
        }
    }

    /// `Interested` / `NotInterested`.
    pub(super) fn on_interested(&mut self, env: &mut Env<'_, '_>, from: PeerId, interested: bool) {
        let Some(p) = self.peers.get_mut(&from) else {
            return;
        };
        if p.peer_interested == interested {
            return;
        }
        p.peer_interested = interested;
        if !interested && p.slot.is_some() {
            // Its slot is wasted on it: give it to someone who wants one.
            p.slot = None;
            if self.optimistic == Some(from) {
                self.optimistic = None;
            }
        }
        self.fill_slots(env);
    }

    /// A peer's `Request`: queued if it may be served, else refused with the reason.
    pub(super) fn on_request(&mut self, env: &mut Env<'_, '_>, from: PeerId, groups: Range<u64>) {
        let hash = self.hash;
        let n = self.picker.as_ref().map_or(0, |p| p.groups());
        if groups.start >= groups.end
            || groups.end - groups.start > MAX_REQUEST_GROUPS
            || (n > 0 && groups.end > n)
        {
            env.stats.malformed += 1;
            return;
        }
        let Some(p) = self.peers.get_mut(&from) else {
            return;
        };
        let have = self
            .picker
            .as_ref()
            .is_some_and(|pk| pk.have().all_in(groups.clone()));
        let reason = if p.am_choking {
            RejectReason::Choked
        } else if !have {
            RejectReason::NotAvailable
        } else if p.queue.contains(&groups) {
            // Asked twice: it is queued already.
            return;
        } else if p.queue.len() >= env.config.max_queued_requests {
            RejectReason::Busy
        } else {
            p.queue.push_back(groups);
            return;
        };
        env.stats.requests_rejected += 1;
        env.send(
            from,
            Message::Reject {
                hash,
                groups: Some(groups),
                reason,
            },
        );
    }

    /// A peer's `Cancel`: drops the request if still queued.
    pub(super) fn on_cancel(&mut self, from: PeerId, groups: Range<u64>) {
        if let Some(p) = self.peers.get_mut(&from) {
            p.queue.retain(|g| *g != groups);
        }
    }

    /// Serves `peer`'s oldest queued request; returns the bytes sent.
    pub(super) fn serve_one(&mut self, env: &mut Env<'_, '_>, peer: PeerId) -> u64 {
        let hash = self.hash;
        let now = env.now();
        let seeding = self.seeding();
        let Some(p) = self.peers.get_mut(&peer) else {
            return 0;
        };
        let Some(groups) = p.queue.pop_front() else {
            return 0;
        };
        match env.blobs.read(&hash, groups.clone()) {
            Ok(encoded) => {
                let len = encoded.len() as u64;
                p.up.add(now, len);
                p.uploaded += len;
                let totals = env.totals.entry(peer);
                totals.uploaded += len;
                let credit = env.config.credit;
                let cut_off = credit.mode == CreditMode::Refuse
                    && !seeding
                    && totals.debt() > credit.allowance;
                env.stats.bytes_uploaded += len;
                env.stats.requests_served += 1;
                env.send(
                    peer,
                    Message::Data {
                        hash,
                        groups,
                        encoded,
                    },
                );
                if cut_off {
                    // Refused from this moment, not from the next rechoke: a slot held for
                    // ten seconds would hand a fast debtor megabytes.
                    p.slot = None;
                    choke(env, hash, peer, p);
                    if self.optimistic == Some(peer) {
                        self.optimistic = None;
                    }
                }
                len
            }
            Err(e) => {
                if matches!(e, ReadError::Other(_)) {
                    env.stats.store_errors += 1;
                }
                env.stats.requests_rejected += 1;
                env.send(
                    peer,
                    Message::Reject {
                        hash,
                        groups: Some(groups),
                        reason: RejectReason::NotAvailable,
                    },
                );
                0
            }
        }
    }
}

/// Chokes `peer`: its queued requests are dropped, as `Choke` tells it.
fn choke(env: &mut Env<'_, '_>, hash: super::Hash, peer: PeerId, p: &mut SwarmPeer) {
    p.am_choking = true;
    p.queue.clear();
    env.send(peer, Message::Choke { hash });
}

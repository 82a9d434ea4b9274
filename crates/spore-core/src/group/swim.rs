//! SWIM failure detection with Lifeguard's refinements, sans-IO: which members of a small group
//! are alive, which are suspected, which are gone — and whether the group has split.
//!
//! SWIM (Das, Gupta and Motivala, 2002): every protocol period each member probes one other,
//! in a shuffled round-robin order, with a `Ping`; without an `Ack` within the probe timeout it
//! asks [`Config::indirect`] other members to probe it (`PingReq`) and relay the `Ack`. A member
//! that answers neither way by the end of the period is **suspected**, and the suspicion is
//! spread by piggybacking it on later probes. A suspected member that hears of it **refutes**
//! the suspicion by raising its incarnation number; otherwise, when the suspicion times out, it
//! is **confirmed dead**. Updates (alive, suspect, dead, each with an incarnation) ride on every
//! message, each sent `retransmit_mult · ⌈log2(n + 1)⌉` times, newest first.
//!
//! Lifeguard (Dadgar, Phillips and Currey, 2018) makes a slow member less likely to accuse
//! healthy ones and a healthy one quicker to convict a dead one:
//! - **Local health**: a score from 0 to [`Config::max_health`] that rises when this member's
//!   own probes go unanswered or it has to refute a suspicion of itself, and falls with every
//!   answered probe. Probe timeouts and the period stretch by `score + 1`: a member that is
//!   itself overloaded or cut off waits longer before it blames others.
//! - **Dynamic suspicion**: a suspicion lasts from `max = suspicion_max_mult · min` down to
//!   `min = suspicion_mult · max(1, log10 n) · period`, shorter with each independent member that
//!   also suspects it: `max − (max − min) · log(c + 1) / log(k + 1)` after `c` of the `k`
//!   confirmations expected.
//!
//! **Partitions.** When half of the other members or more are dead, this member's side of the
//! group is cut off: [`Event::Partitioned`]. SWIM never probes the dead again; to notice a heal,
//! every [`Config::dead_probe_every`] periods a member pings one dead member at random. An
//! answer (or any message from a dead member with a higher incarnation) brings it back, and once
//! fewer than half are dead, [`Event::Healed`]: the time to re-sync what the halves wrote apart.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use rand_chacha::ChaCha20Rng;
use serde::{Deserialize, Serialize};

use crate::identity::PeerId;
use crate::time::Instant;

/// Most updates piggybacked on one message.
pub const MAX_UPDATES: usize = 8;
/// Most members a group's failure detector tracks.
pub const MAX_MEMBERS: usize = 256;

/// Settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The protocol period. Default 1 s.
    pub period: Duration,
    /// How long a direct probe waits for its `Ack` before asking others. Default 400 ms.
    pub probe_timeout: Duration,
    /// Members asked to probe indirectly. Default 3.
    pub indirect: usize,
    /// Suspicion lasts at least this many periods times max(1, log10 n). Default 4.
    pub suspicion_mult: u32,
    /// ... and at most this many times that minimum. Default 6.
    pub suspicion_max_mult: u32,
    /// Each update is piggybacked this many times ⌈log2(n + 1)⌉. Default 4.
    pub retransmit_mult: u32,
    /// Highest local-health score. Default 8.
    pub max_health: u32,
    /// Every this many periods, ping one dead member to notice a heal. Default 5.
    pub dead_probe_every: u32,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            period: Duration::from_secs(1),
            probe_timeout: Duration::from_millis(400),
            indirect: 3,
            suspicion_mult: 4,
            suspicion_max_mult: 6,
            retransmit_mult: 4,
            max_health: 8,
            dead_probe_every: 5,
        }
    }
}

/// What a member is believed to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum State {
    /// Answering.
    Alive,
    /// Did not answer; it may refute.
    Suspect,
    /// Suspected for too long.
    Dead,
}

/// A change in what one member is believed to be, as spread between members.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Update {
    /// The member.
    pub member: PeerId,
    /// Its incarnation: only the member raises it, to refute a suspicion.
    pub incarnation: u64,
    /// What it is believed to be.
    pub state: State,
}

/// Messages of the failure detector.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// Are you there?
    Ping {
        /// Matches the `Ack`.
        seq: u64,
        /// Piggybacked updates (at most [`MAX_UPDATES`]).
        updates: Vec<Update>,
    },
    /// Please probe `target` for me and pass on its answer.
    PingReq {
        /// Matches the `Ack` relayed back.
        seq: u64,
        /// The member to probe.
        target: PeerId,
        /// Piggybacked updates.
        updates: Vec<Update>,
    },
    /// Here I am (or: `of` answered my probe on your behalf).
    Ack {
        /// The `seq` of the `Ping` or `PingReq`.
        seq: u64,
        /// The member that answered (the sender, or the target of a `PingReq`).
        of: PeerId,
        /// Piggybacked updates.
        updates: Vec<Update>,
    },
}

impl Message {
    /// The updates this message carries.
    pub fn updates(&self) -> &[Update] {
        match self {
            Message::Ping { updates, .. }
            | Message::PingReq { updates, .. }
            | Message::Ack { updates, .. } => updates,
        }
    }
}

/// What the failure detector reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A member is suspected.
    Suspected(PeerId),
    /// A member is confirmed dead.
    Dead(PeerId),
    /// A suspected or dead member is alive.
    Alive(PeerId),
    /// Half of the other members or more are dead: this side is cut off from the rest.
    Partitioned {
        /// Members still alive or suspected, this one included.
        reachable: usize,
        /// Members dead.
        dead: usize,
    },
    /// Fewer than half are dead again after a partition.
    Healed,
}

#[derive(Debug, Clone)]
struct Member {
    incarnation: u64,
    state: State,
    /// When it became suspected, and the members that suspect it (its confirmations).
    suspicion: Option<(Instant, Vec<PeerId>)>,
}

/// A probe of ours in flight.
#[derive(Debug, Clone, Copy)]
struct Probe {
    target: PeerId,
    seq: u64,
    /// When to ask others (`None` once asked).
    indirect_at: Option<Instant>,
    /// When the period ends: no answer by then means suspicion.
    deadline: Instant,
}

/// One member's failure detector for its group.
#[derive(Debug)]
pub struct Swim {
    config: Config,
    me: PeerId,
    incarnation: u64,
    members: BTreeMap<PeerId, Member>,
    /// Probe order: a shuffled round of the members, refilled when used up.
    order: Vec<PeerId>,
    next_period: Instant,
    periods: u64,
    probe: Option<Probe>,
    /// `PingReq`s we are serving: our seq → (who asked, their seq, when). An answer later than
    /// a period is of no use to the asker, so older entries are dropped.
    relays: BTreeMap<u64, (PeerId, u64, Instant)>,
    seq: u64,
    health: u32,
    /// Updates to piggyback, with how many sends each has left.
    gossip: VecDeque<(Update, u32)>,
    partitioned: bool,
    out: VecDeque<(PeerId, Message)>,
    events: VecDeque<Event>,
}

impl Swim {
    /// The failure detector of member `me` of a group whose other members are `members`, all
    /// presumed alive, started at `now`.
    pub fn new(config: Config, me: PeerId, members: &[PeerId], now: Instant) -> Self {
        let mut swim = Self {
            next_period: now,
            config,
            me,
            incarnation: 0,
            members: BTreeMap::new(),
            order: Vec::new(),
            periods: 0,
            probe: None,
            relays: BTreeMap::new(),
            seq: 0,
            health: 0,
            gossip: VecDeque::new(),
            partitioned: false,
            out: VecDeque::new(),
            events: VecDeque::new(),
        };
        for m in members {
            swim.add(*m);
        }
        swim
    }

    /// Adds a member (presumed alive); false if the group is full or it is known.
    pub fn add(&mut self, member: PeerId) -> bool {
        if member == self.me
            || self.members.contains_key(&member)
            || self.members.len() >= MAX_MEMBERS
        {
            return false;
        }
        self.members.insert(
            member,
            Member {
                incarnation: 0,
                state: State::Alive,
                suspicion: None,
            },
        );
        true
    }

    /// Forgets a member (it left the group).
    pub fn remove(&mut self, member: &PeerId) {
        self.members.remove(member);
        self.order.retain(|m| m != member);
    }

    /// What `member` is believed to be; `None` for a stranger.
    pub fn state(&self, member: &PeerId) -> Option<State> {
        self.members.get(member).map(|m| m.state)
    }

    /// Every member with its state, in id order.
    pub fn members(&self) -> impl Iterator<Item = (PeerId, State)> + '_ {
        self.members.iter().map(|(p, m)| (*p, m.state))
    }

    /// This member's incarnation (raised each time it refutes a suspicion).
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// The local-health score (Lifeguard): 0 when this member's probes are answered.
    pub fn health(&self) -> u32 {
        self.health
    }

    /// Whether half of the others or more are dead.
    pub fn is_partitioned(&self) -> bool {
        self.partitioned
    }

    /// The next message to send.
    pub fn poll_transmit(&mut self) -> Option<(PeerId, Message)> {
        self.out.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) is due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let probe = self
            .probe
            .map(|p| p.indirect_at.map_or(p.deadline, |t| t.min(p.deadline)));
        let suspicions = self
            .members
            .values()
            .filter_map(|m| m.suspicion.as_ref().map(|(since, c)| (since, c.len())))
            .map(|(since, c)| *since + self.suspicion_timeout(c))
            .min();
        [Some(self.next_period), probe, suspicions]
            .into_iter()
            .flatten()
            .min()
    }

    fn scaled(&self, d: Duration) -> Duration {
        d * (self.health + 1)
    }

    /// Lifeguard's dynamic suspicion timeout after `confirmations` independent suspicions.
    fn suspicion_timeout(&self, confirmations: usize) -> Duration {
        let n = (self.members.len() + 1) as f64;
        let min = self
            .config
            .period
            .mul_f64(f64::from(self.config.suspicion_mult) * n.log10().max(1.0));
        let max = min * self.config.suspicion_max_mult;
        let k = self.config.indirect.max(1) as f64;
        let c = (confirmations as f64).min(k);
        let shrink = (c + 1.0).ln() / (k + 1.0).ln();
        max.saturating_sub((max - min).mul_f64(shrink)).max(min)
    }

    fn retransmits(&self) -> u32 {
        let n = (self.members.len() + 1) as f64;
        self.config.retransmit_mult * (n + 1.0).log2().ceil() as u32
    }

    /// Queues `update` for piggybacking, replacing older news of the same member.
    fn spread(&mut self, update: Update) {
        self.gossip.retain(|(u, _)| u.member != update.member);
        self.gossip.push_front((update, self.retransmits()));
    }

    /// Up to [`MAX_UPDATES`] updates for the next message, newest first.
    fn piggyback(&mut self) -> Vec<Update> {
        let mut updates = Vec::new();
        for (u, left) in self.gossip.iter_mut().take(MAX_UPDATES) {
            updates.push(*u);
            *left = left.saturating_sub(1);
        }
        self.gossip.retain(|(_, left)| *left > 0);
        updates
    }

    fn send(&mut self, to: PeerId, make: impl FnOnce(Vec<Update>) -> Message) {
        let updates = self.piggyback();
        self.out.push_back((to, make(updates)));
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// Lifeguard's local health: `worse` after a probe of ours went unanswered or a suspicion
    /// of us had to be refuted, better after an answered probe.
    fn health_event(&mut self, worse: bool) {
        self.health = if worse {
            (self.health + 1).min(self.config.max_health)
        } else {
            self.health.saturating_sub(1)
        };
    }

    /// Starts the next period: a probe of the next live member in the round, and now and then
    /// one of a dead member.
    fn start_period(&mut self, now: Instant, rng: &mut ChaCha20Rng) {
        self.periods += 1;
        let period = self.scaled(self.config.period);
        self.next_period = now + period;
        self.relays.retain(|_, (_, _, at)| now < *at + period);
        if self.order.is_empty() {
            self.order = self
                .members
                .iter()
                .filter(|(_, m)| m.state != State::Dead)
                .map(|(p, _)| *p)
                .collect();
            crate::random::shuffle(rng, &mut self.order);
        }
        if let Some(target) = self.order.pop() {
            let seq = self.next_seq();
            self.probe = Some(Probe {
                target,
                seq,
                indirect_at: Some(now + self.scaled(self.config.probe_timeout)),
                deadline: self.next_period,
            });
            self.send(target, |updates| Message::Ping { seq, updates });
        }
        if self.periods % u64::from(self.config.dead_probe_every.max(1)) == 0 {
            let dead: Vec<PeerId> = self
                .members
                .iter()
                .filter(|(_, m)| m.state == State::Dead)
                .map(|(p, _)| *p)
                .collect();
            if let Some(target) = crate::random::choose(rng, &dead).copied() {
                let seq = self.next_seq();
                self.send(target, |updates| Message::Ping { seq, updates });
            }
        }
    }

    /// Time passes.
    pub fn handle_timeout(&mut self, now: Instant, rng: &mut ChaCha20Rng) {
        // The probe in flight: ask others, or give up on it.
        if let Some(p) = self.probe {
            if p.indirect_at.is_some_and(|t| now >= t) {
                let mut helpers: Vec<PeerId> = self
                    .members
                    .iter()
                    .filter(|(id, m)| **id != p.target && m.state == State::Alive)
                    .map(|(id, _)| *id)
                    .collect();
                crate::random::shuffle(rng, &mut helpers);
                helpers.truncate(self.config.indirect);
                for h in helpers {
                    let (seq, target) = (p.seq, p.target);
                    self.send(h, |updates| Message::PingReq {
                        seq,
                        target,
                        updates,
                    });
                }
                self.probe = Some(Probe {
                    indirect_at: None,
                    ..p
                });
            }
            if now >= p.deadline {
                self.probe = None;
                self.health_event(true);
                self.suspect(now, p.target, self.me);
            }
        }
        // Suspicions that ran out.
        let expired: Vec<PeerId> = self
            .members
            .iter()
            .filter_map(|(id, m)| {
                let (since, c) = m.suspicion.as_ref()?;
                (now >= *since + self.suspicion_timeout(c.len())).then_some(*id)
            })
            .collect();
        for id in expired {
            let incarnation = self.members[&id].incarnation;
            self.apply(
                now,
                Update {
                    member: id,
                    incarnation,
                    state: State::Dead,
                },
                self.me,
            );
        }
        if now >= self.next_period {
            self.start_period(now, rng);
        }
        self.check_partition();
    }

    /// A message from member `from`.
    pub fn handle_message(&mut self, now: Instant, from: PeerId, msg: Message) {
        if !self.members.contains_key(&from) {
            return; // not in the group
        }
        for u in msg.updates().iter().take(MAX_UPDATES) {
            self.apply(now, *u, from);
        }
        // Hearing from a member is proof of life; a dead one's messages bring it back only with
        // a newer incarnation or as the answer to our probe, below.
        if self
            .members
            .get(&from)
            .is_some_and(|m| m.state == State::Suspect)
        {
            let incarnation = self.members[&from].incarnation;
            self.apply(
                now,
                Update {
                    member: from,
                    incarnation,
                    state: State::Alive,
                },
                from,
            );
        }
        match msg {
            Message::Ping { seq, .. } => {
                let me = self.me;
                self.send(from, |updates| Message::Ack {
                    seq,
                    of: me,
                    updates,
                });
                self.revive(now, from);
            }
            Message::PingReq { seq, target, .. } => {
                if !self.members.contains_key(&target) || self.relays.len() >= MAX_MEMBERS {
                    return;
                }
                let ours = self.next_seq();
                self.relays.insert(ours, (from, seq, now));
                self.send(target, |updates| Message::Ping { seq: ours, updates });
            }
            Message::Ack { seq, of, .. } => {
                if let Some((asker, their, _)) = self.relays.remove(&seq) {
                    self.send(asker, |updates| Message::Ack {
                        seq: their,
                        of,
                        updates,
                    });
                    return;
                }
                if self.probe.is_some_and(|p| p.seq == seq && p.target == of) {
                    self.probe = None;
                    self.health_event(false);
                }
                self.revive(now, of);
            }
        }
        self.check_partition();
    }

    /// `member` answered: a dead one is alive again (a heal), with a fresh incarnation so
    /// that the news outranks the old death.
    fn revive(&mut self, now: Instant, member: PeerId) {
        let Some(m) = self.members.get(&member) else {
            return;
        };
        if m.state == State::Dead {
            let incarnation = m.incarnation + 1;
            self.apply(
                now,
                Update {
                    member,
                    incarnation,
                    state: State::Alive,
                },
                member,
            );
        }
    }

    fn suspect(&mut self, now: Instant, member: PeerId, by: PeerId) {
        let Some(m) = self.members.get(&member) else {
            return;
        };
        let incarnation = m.incarnation;
        self.apply(
            now,
            Update {
                member,
                incarnation,
                state: State::Suspect,
            },
            by,
        );
    }

    /// Applies what `from` says of a member, by SWIM's precedence: a higher incarnation wins;
    /// at equal incarnations dead beats suspect beats alive.
    fn apply(&mut self, now: Instant, u: Update, from: PeerId) {
        if u.member == self.me {
            // About us: refute any suspicion or death by a newer incarnation.
            if u.state != State::Alive && u.incarnation >= self.incarnation {
                self.incarnation = u.incarnation + 1;
                self.health_event(true);
                self.spread(Update {
                    member: self.me,
                    incarnation: self.incarnation,
                    state: State::Alive,
                });
            }
            return;
        }
        let Some(m) = self.members.get_mut(&u.member) else {
            return;
        };
        let rank = |s: State| match s {
            State::Alive => 0,
            State::Suspect => 1,
            State::Dead => 2,
        };
        let newer = u.incarnation > m.incarnation
            || (u.incarnation == m.incarnation && rank(u.state) > rank(m.state));
        if !newer {
            // The same suspicion from another member: a Lifeguard confirmation.
            if u.state == State::Suspect
                && m.state == State::Suspect
                && u.incarnation == m.incarnation
                && let Some((_, confirmations)) = m.suspicion.as_mut()
                && !confirmations.contains(&from)
                && confirmations.len() < MAX_UPDATES
            {
                confirmations.push(from);
            }
            return;
        }
        let before = m.state;
        m.incarnation = u.incarnation;
        m.state = u.state;
        m.suspicion = match u.state {
            State::Suspect => Some((now, vec![from])),
            _ => None,
        };
        if u.state == State::Dead {
            self.order.retain(|p| *p != u.member);
        }
        self.spread(u);
        if before != u.state {
            self.events.push_back(match u.state {
                State::Alive => Event::Alive(u.member),
                State::Suspect => Event::Suspected(u.member),
                State::Dead => Event::Dead(u.member),
            });
        }
    }

    fn check_partition(&mut self) {
        let dead = self
            .members
            .values()
            .filter(|m| m.state == State::Dead)
            .count();
        let others = self.members.len();
        let cut = others > 0 && dead * 2 >= others;
        if cut && !self.partitioned {
            self.partitioned = true;
            self.events.push_back(Event::Partitioned {
                reachable: others - dead + 1,
                dead,
            });
        } else if !cut && self.partitioned {
            self.partitioned = false;
            self.events.push_back(Event::Healed);
        }
    }
}

#[cfg(test)]
mod tests;

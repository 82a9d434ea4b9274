//! Local reputation: what this node has seen each peer do, forgotten gradually.
//!
//! Every protocol reports what it observes about a peer ([`Observation`]): data that verified
//! or did not, a request answered or left to time out, a message that broke the rules. The table
//! weighs the good and the bad evidence and gives each peer a score, the expectation of a beta
//! distribution (the *beta reputation system* of Jøsang and Ismail, 2002):
//!
//! ```text
//! score = (good + 1) / (good + bad + 2)        a stranger scores 0.5
//! ```
//!
//! Evidence decays with a half-life ([`Config::half_life`]), so a peer is judged on what it did
//! lately: an honest peer that once timed out recovers, and a peer that behaved for a long time
//! cannot bank that to misbehave later for free.
//!
//! # Distrust
//!
//! A peer is *distrusted* when its score falls below [`Config::distrust_below`] **and** its
//! decayed *hard* evidence — bad data, invalid messages, protocol violations, which no honest
//! peer produces — reaches [`Config::min_hard_evidence`]. Timeouts alone never distrust a peer:
//! a peer that went offline is not a liar. The node closes connections to distrusted peers and
//! refuses new ones until decay lifts the peer back over the line (forgiveness is built in: at
//! the default half-life of one hour, one bad blob is forgiven after 25 minutes, two after 85).
//!
//! # Bounds
//!
//! The table holds at most [`Config::max_peers`] peers. When it is full, the eighth with the
//! least decayed evidence is forgotten at once (so the scan is paid once per eighth, not once
//! per newcomer). Observations that only vouch for a peer's ordinary manners
//! ([`Observation::Answered`]) update peers already in the table but never add one: a node
//! talks to thousands of DHT servers, and a stranger that answered scores much like a stranger.
//!
//! The table is local and never sent to anyone: there is no reputation gossip to poison, and a
//! colluding group can praise each other only to themselves.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::identity::PeerId;
use crate::time::Instant;

/// What a protocol saw a peer do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum Observation {
    /// It sent data that verified against its hash (one swarm group).
    VerifiedData,
    /// It sent data that failed verification, or lied about a blob's size.
    BadData,
    /// It answered a request of ours.
    Answered,
    /// A request of ours to it timed out.
    Unanswered,
    /// It sent a well-formed message with invalid content: a record or message whose signature
    /// fails, a contact whose stamp fails, a message the application rejected.
    Invalid,
    /// It handed us a record whose signature does not verify: something its signer never
    /// signed. Honest nodes verify records before they store or pass them on, so this is a
    /// lie, not a mistake.
    Forged,
    /// It broke the protocol (a message before `Hello`, a second `Hello`, a bad stamp).
    Violation,
    /// It relayed for us as promised (a reservation or circuit it accepted and carried).
    RelayServed,
    /// It failed to relay as promised.
    RelayFailed,
}

impl Observation {
    /// Weights of good, soft-bad and hard-bad evidence this observation adds.
    fn weights(self) -> (f32, f32, f32) {
        match self {
            Observation::VerifiedData => (0.25, 0.0, 0.0),
            Observation::BadData => (0.0, 0.0, 4.0),
            Observation::Answered => (0.1, 0.0, 0.0),
            Observation::Unanswered => (0.0, 0.5, 0.0),
            Observation::Invalid => (0.0, 0.0, 1.0),
            Observation::Forged => (0.0, 0.0, 4.0),
            Observation::Violation => (0.0, 0.0, 8.0),
            Observation::RelayServed => (1.0, 0.0, 0.0),
            Observation::RelayFailed => (0.0, 1.0, 0.0),
        }
    }

    /// Whether the observation may add a peer to the table (see the module docs).
    fn admits(self) -> bool {
        !matches!(self, Observation::Answered)
    }
}

/// Reputation settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Evidence halves in this time. Default one hour.
    pub half_life: Duration,
    /// Score under which a peer with enough hard evidence is distrusted. Default 0.2.
    pub distrust_below: f64,
    /// Decayed hard evidence a peer must have before it can be distrusted. Default 3: one bad
    /// blob, one protocol violation, or three invalid messages in a short time.
    pub min_hard_evidence: f64,
    /// Most peers in the table. Default 4096.
    pub max_peers: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            half_life: Duration::from_secs(60 * 60),
            distrust_below: 0.2,
            min_hard_evidence: 3.0,
            max_peers: 4096,
        }
    }
}

/// A peer's standing, as [`Reputation::standing`] reports it.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Standing {
    /// The score, from 0 (only bad evidence) through 0.5 (a stranger) to 1 (only good).
    pub score: f64,
    /// Decayed weight of good evidence.
    pub good: f64,
    /// Decayed weight of bad evidence (soft and hard).
    pub bad: f64,
    /// Whether the node refuses the peer.
    pub distrusted: bool,
}

impl Standing {
    /// A peer the node knows nothing about.
    pub const STRANGER: Standing = Standing {
        score: 0.5,
        good: 0.0,
        bad: 0.0,
        distrusted: false,
    };
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    good: f32,
    soft: f32,
    hard: f32,
    /// When the sums were last decayed.
    at: Instant,
}

impl Entry {
    /// The sums decayed to `now`.
    fn decayed(&self, now: Instant, half_life: Duration) -> Entry {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        let factor = if half_life.is_zero() {
            0.0
        } else {
            0.5f64.powf(dt / half_life.as_secs_f64()) as f32
        };
        Entry {
            good: self.good * factor,
            soft: self.soft * factor,
            hard: self.hard * factor,
            at: now.max(self.at),
        }
    }

    fn total(&self) -> f32 {
        self.good + self.soft + self.hard
    }

    fn standing(&self, config: &Config) -> Standing {
        let good = f64::from(self.good);
        let bad = f64::from(self.soft + self.hard);
        let score = (good + 1.0) / (good + bad + 2.0);
        Standing {
            score,
            good,
            bad,
            distrusted: score < config.distrust_below
                && f64::from(self.hard) >= config.min_hard_evidence,
        }
    }
}

/// Counters of the table's work.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Stats {
    /// Observations recorded.
    pub observations: u64,
    /// Times a peer became distrusted.
    pub distrusted: u64,
    /// Peers forgotten to make room.
    pub evicted: u64,
}

/// The reputation table. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct Reputation {
    config: Config,
    entries: BTreeMap<PeerId, Entry>,
    stats: Stats,
}

impl Reputation {
    /// An empty table.
    pub fn new(config: Config) -> Self {
        Self {
            config,
            entries: BTreeMap::new(),
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

    /// Peers in the table.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Records that `peer` did `what` at `now`. Returns `true` if this made the peer distrusted
    /// (it was not before).
    pub fn observe(&mut self, now: Instant, peer: PeerId, what: Observation) -> bool {
        if !self.entries.contains_key(&peer) {
            if !what.admits() || self.config.max_peers == 0 {
                return false;
            }
            if self.entries.len() >= self.config.max_peers {
                self.make_room(now);
            }
        }
        let half_life = self.config.half_life;
        let entry = self.entries.entry(peer).or_insert(Entry {
            good: 0.0,
            soft: 0.0,
            hard: 0.0,
            at: now,
        });
        let before = entry.decayed(now, half_life);
        let was = before.standing(&self.config).distrusted;
        let (good, soft, hard) = what.weights();
        *entry = Entry {
            good: before.good + good,
            soft: before.soft + soft,
            hard: before.hard + hard,
            at: before.at,
        };
        self.stats.observations += 1;
        let is = entry.standing(&self.config).distrusted;
        if is && !was {
            self.stats.distrusted += 1;
        }
        is && !was
    }

    /// `peer`'s standing at `now` ([`Standing::STRANGER`] if the table knows nothing of it).
    pub fn standing(&self, now: Instant, peer: &PeerId) -> Standing {
        self.entries.get(peer).map_or(Standing::STRANGER, |e| {
            e.decayed(now, self.config.half_life).standing(&self.config)
        })
    }

    /// `peer`'s score at `now` (0.5 for a stranger).
    pub fn score(&self, now: Instant, peer: &PeerId) -> f64 {
        self.standing(now, peer).score
    }

    /// Whether the node should refuse `peer` at `now`.
    pub fn is_distrusted(&self, now: Instant, peer: &PeerId) -> bool {
        self.standing(now, peer).distrusted
    }

    /// Every peer in the table with its standing at `now`, in id order.
    pub fn iter(&self, now: Instant) -> impl Iterator<Item = (PeerId, Standing)> + '_ {
        self.entries.iter().map(move |(peer, e)| {
            let standing = e.decayed(now, self.config.half_life).standing(&self.config);
            (*peer, standing)
        })
    }

    /// Forgets the eighth of the table with the least evidence left.
    fn make_room(&mut self, now: Instant) {
        let half_life = self.config.half_life;
        let mut weights: Vec<(f32, PeerId)> = self
            .entries
            .iter()
            .map(|(p, e)| (e.decayed(now, half_life).total(), *p))
            .collect();
        weights.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        let drop = (self.entries.len() / 8).max(1);
        for (_, peer) in weights.into_iter().take(drop) {
            self.entries.remove(&peer);
            self.stats.evicted += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Keypair;

    fn id(n: u8) -> PeerId {
        Keypair::from_secret_bytes([n; 32]).peer_id()
    }

    fn at(secs: u64) -> Instant {
        Instant::ZERO + Duration::from_secs(secs)
    }

    #[test]
    fn a_stranger_scores_one_half_and_answers_alone_do_not_add_it() {
        let mut r = Reputation::new(Config::default());
        assert_eq!(r.standing(at(0), &id(1)), Standing::STRANGER);
        assert!(!r.observe(at(0), id(1), Observation::Answered));
        assert!(r.is_empty());
        r.observe(at(0), id(1), Observation::VerifiedData);
        r.observe(at(0), id(1), Observation::Answered);
        let s = r.standing(at(0), &id(1));
        assert!(s.score > 0.5 && (s.good - 0.35).abs() < 1e-6, "{s:?}");
    }

    #[test]
    fn bad_data_distrusts_at_once_and_decay_forgives_it() {
        let config = Config::default();
        let mut r = Reputation::new(config.clone());
        assert!(r.observe(at(0), id(1), Observation::BadData));
        assert!(r.is_distrusted(at(0), &id(1)));
        // A second bad blob does not report the peer again.
        assert!(!r.observe(at(1), id(1), Observation::BadData));
        assert_eq!(r.stats().distrusted, 1);
        // Eight units of hard evidence decay under the three needed after log2(8/3) = 1.415
        // half-lives.
        let half = config.half_life.as_secs_f64();
        let lifted = 1 + (half * (8.0f64 / 3.0).log2()) as u64;
        assert!(r.is_distrusted(at(lifted - 60), &id(1)));
        assert!(!r.is_distrusted(at(lifted + 60), &id(1)));
    }

    #[test]
    fn timeouts_alone_never_distrust_however_many() {
        let mut r = Reputation::new(Config::default());
        for s in 0..1000 {
            assert!(!r.observe(at(s), id(1), Observation::Unanswered));
        }
        let s = r.standing(at(1000), &id(1));
        assert!(s.score < 0.01 && !s.distrusted, "{s:?}");
    }

    #[test]
    fn a_long_good_record_outweighs_one_invalid_message_but_not_a_pattern() {
        let mut r = Reputation::new(Config::default());
        for _ in 0..40 {
            r.observe(at(0), id(1), Observation::VerifiedData);
        }
        r.observe(at(0), id(1), Observation::Invalid);
        assert!(r.score(at(0), &id(1)) > 0.8);
        for _ in 0..60 {
            r.observe(at(0), id(1), Observation::Invalid);
        }
        assert!(r.is_distrusted(at(0), &id(1)));
    }

    #[test]
    fn a_camouflaged_peer_scores_below_an_honest_one_without_being_distrusted() {
        let mut r = Reputation::new(Config::default());
        for k in 0..100 {
            r.observe(at(k), id(1), Observation::VerifiedData);
            // One group in ten is bad (a whole blob's worth of verification failing).
            let what = if k % 10 == 0 {
                Observation::Invalid
            } else {
                Observation::VerifiedData
            };
            r.observe(at(k), id(2), what);
        }
        let (honest, camo) = (r.score(at(100), &id(1)), r.score(at(100), &id(2)));
        assert!(honest > 0.95 && camo < honest - 0.2, "{honest} {camo}");
    }

    #[test]
    fn a_full_table_forgets_the_peers_with_least_evidence_and_keeps_the_distrusted() {
        let config = Config {
            max_peers: 16,
            ..Config::default()
        };
        let mut r = Reputation::new(config);
        r.observe(at(0), id(0), Observation::Violation);
        for n in 1..16 {
            r.observe(at(0), id(n), Observation::Unanswered);
        }
        assert_eq!(r.len(), 16);
        r.observe(at(1), id(16), Observation::Unanswered);
        assert_eq!(r.len(), 15, "one eighth forgotten, one added");
        assert_eq!(r.stats().evicted, 2);
        assert!(r.is_distrusted(at(1), &id(0)));
        assert!(r.standing(at(1), &id(16)).bad > 0.0);
    }

    #[test]
    fn no_table_at_all_with_a_bound_of_zero() {
        let mut r = Reputation::new(Config {
            max_peers: 0,
            ..Config::default()
        });
        assert!(!r.observe(at(0), id(1), Observation::BadData));
        assert!(r.is_empty());
    }
}

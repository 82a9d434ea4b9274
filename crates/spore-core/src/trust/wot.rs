//! Web of trust: signed vouches between identities, followed to a bounded depth.
//!
//! A node *vouches* for a peer to say "I trust this identity" — a person met, a machine of one's
//! own, a member admitted to a group. The vouches an identity makes form one signed
//! *statement*: the full list of identities it vouches for, at most [`MAX_VOUCHES`], published
//! as a DHT value record named [`STATEMENT_NAME`] in the issuer's namespace
//! ([`ValueRecord::key_for`]`(issuer, STATEMENT_NAME)`). The record's sequence number orders
//! statements, so the newest replaces the older everywhere; nobody but the issuer can sign one.
//!
//! "Do I trust X within depth d?" asks for a chain of vouches from this node to X of at most
//! `d` links: depth 0 is the node itself, depth 1 those it vouched for, depth 2 those *they*
//! vouched for, and so on up to [`MAX_DEPTH`]. The answer is computed from the statements the
//! node holds; it holds those of every identity within [`Config::depth`]` - 1` links, which it
//! fetches from the DHT as they enter its graph and refreshes every [`Config::refresh`].
//! A query is a breadth-first search over at most [`Config::max_statements`] statements of at
//! most [`MAX_VOUCHES`] entries each: cheap enough to run for every pub/sub message of a closed
//! topic.
//!
//! # Revocation
//!
//! Revoking is publishing a new statement without the revoked identity. It propagates three
//! ways: at once to every node subscribed to the pub/sub topic [`TOPIC`] (nodes that use trust
//! subscribe), through the DHT (the new record supersedes the old on every replica), and by
//! the refresh of every node that holds the old one, within [`Config::refresh`]. A revocation
//! cuts every chain through the revoked link: statements the node held only because of that
//! link are dropped.
//!
//! # Bounds
//!
//! Statements are accepted only from issuers inside the node's graph (within `depth - 1`
//! links), at most [`Config::max_statements`] of them; at most [`Config::max_fetches`] DHT
//! lookups run at once.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use bytes::Bytes;

use crate::identity::PeerId;
use crate::kad::record::{RecordLimits, ValueRecord};
use crate::time::Instant;

/// The DHT value name of an identity's statement.
pub const STATEMENT_NAME: &str = "spore/trust/v1";
/// The pub/sub topic on which statements spread as soon as they change.
pub const TOPIC: &str = "spore/trust/v1";
/// Most identities one statement vouches for (so that it fits a DHT value of 1,024 bytes).
pub const MAX_VOUCHES: usize = 30;
/// Longest chain of vouches a query may follow.
pub const MAX_DEPTH: u8 = 4;

/// Web-of-trust settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// How many links from this node its graph reaches: statements are fetched for identities
    /// up to `depth - 1` links away, so queries of up to this depth can be answered. Default 3,
    /// at most [`MAX_DEPTH`].
    pub depth: u8,
    /// How often a held statement is fetched again from the DHT. Default 10 minutes.
    pub refresh: Duration,
    /// How long to wait before asking again for a statement the DHT did not have. Default 2
    /// minutes.
    pub retry_missing: Duration,
    /// Most statements held. Default 1024.
    pub max_statements: usize,
    /// Most statement lookups at once. Default 8.
    pub max_fetches: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            depth: 3,
            refresh: Duration::from_secs(600),
            retry_missing: Duration::from_secs(120),
            max_statements: 1024,
            max_fetches: 8,
        }
    }
}

/// Why a trust command or a statement was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TrustError {
    /// A node does not vouch for itself: it is trusted at depth 0 anyway.
    #[error("a node cannot vouch for itself")]
    SelfVouch,
    /// The statement is full.
    #[error("this node already vouches for {max} identities, the most one statement holds")]
    TooManyVouches {
        /// [`MAX_VOUCHES`].
        max: usize,
    },
    /// A statement that is not one.
    #[error("not a trust statement: {0}")]
    BadStatement(String),
    /// A query deeper than [`MAX_DEPTH`].
    #[error("trust depth {depth} is beyond the limit of {max}")]
    TooDeep {
        /// The depth asked for.
        depth: u8,
        /// [`MAX_DEPTH`].
        max: u8,
    },
}

/// Encodes a statement's list of identities as the value of its DHT record.
pub fn encode(subjects: &BTreeSet<PeerId>) -> Bytes {
    let list: Vec<PeerId> = subjects.iter().copied().collect();
    Bytes::from(postcard::to_allocvec(&list).unwrap_or_default())
}

/// The identities a statement vouches for, after checking it is one: the right name, a list
/// of at most [`MAX_VOUCHES`] distinct identities, none the issuer. Does not check the
/// signature (see [`ValueRecord::verify`]).
pub fn decode(record: &ValueRecord) -> Result<Vec<PeerId>, TrustError> {
    if record.name() != STATEMENT_NAME {
        return Err(TrustError::BadStatement(format!(
            "named {:?}, not {STATEMENT_NAME:?}",
            record.name()
        )));
    }
    let list: Vec<PeerId> = postcard::from_bytes(record.value())
        .map_err(|e| TrustError::BadStatement(format!("undecodable list: {e}")))?;
    if list.len() > MAX_VOUCHES {
        return Err(TrustError::BadStatement(format!(
            "{} vouches, more than {MAX_VOUCHES}",
            list.len()
        )));
    }
    if list.contains(record.publisher()) {
        return Err(TrustError::BadStatement(
            "the issuer vouches for itself".into(),
        ));
    }
    let distinct: BTreeSet<&PeerId> = list.iter().collect();
    if distinct.len() != list.len() {
        return Err(TrustError::BadStatement("an identity listed twice".into()));
    }
    Ok(list)
}

/// A statement the node holds (or the note that the DHT had none).
#[derive(Debug, Clone)]
struct Held {
    subjects: Vec<PeerId>,
    /// The record's sequence number; 0 if none was found.
    seq: u64,
    /// The record's expiry (UNIX seconds): a statement nobody republished is forgotten.
    expires: u64,
    /// When it was last fetched (or learned).
    checked: Instant,
}

/// Counters of the web of trust's work.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Stats {
    /// Statements accepted (new, or newer than the one held).
    pub learned: u64,
    /// Statements ignored: from outside the graph, not newer, or with the graph full.
    pub ignored: u64,
    /// Statements refused as invalid (signature, expiry, shape).
    pub invalid: u64,
    /// Statement lookups started.
    pub fetches: u64,
    /// Statements dropped because no chain reaches their issuer any more.
    pub dropped: u64,
}

/// One identity of the graph, as [`WebOfTrust::graph`] reports it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GraphEntry {
    /// The identity.
    pub peer: PeerId,
    /// Links from this node (1: this node vouches for it).
    pub depth: u8,
    /// Who vouches for it on a shortest chain.
    pub via: PeerId,
}

/// The node's web of trust. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct WebOfTrust {
    me: PeerId,
    config: Config,
    own: BTreeSet<PeerId>,
    held: BTreeMap<PeerId, Held>,
    /// Every identity within [`Config::depth`] links (one at least), with its distance and its predecessor
    /// on a shortest chain: the breadth-first search over `own` and `held`, redone whenever
    /// either changes, so that queries (one per message of a closed topic) are lookups.
    reach: BTreeMap<PeerId, (u8, PeerId)>,
    fetching: BTreeSet<PeerId>,
    next_check: Option<Instant>,
    stats: Stats,
}

impl WebOfTrust {
    /// The web of trust of `me`, vouching for nobody yet.
    pub fn new(me: PeerId, mut config: Config) -> Self {
        config.depth = config.depth.min(MAX_DEPTH);
        Self {
            me,
            config,
            own: BTreeSet::new(),
            held: BTreeMap::new(),
            reach: BTreeMap::from([(me, (0, me))]),
            fetching: BTreeSet::new(),
            next_check: None,
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

    /// The identities this node vouches for.
    pub fn vouches(&self) -> &BTreeSet<PeerId> {
        &self.own
    }

    /// Whether the node uses trust at all (vouches for someone).
    pub fn is_active(&self) -> bool {
        !self.own.is_empty()
    }

    /// Replaces the identities this node vouches for (e.g. as saved before a restart).
    pub fn set_vouches(
        &mut self,
        now: Instant,
        subjects: BTreeSet<PeerId>,
    ) -> Result<(), TrustError> {
        if subjects.contains(&self.me) {
            return Err(TrustError::SelfVouch);
        }
        if subjects.len() > MAX_VOUCHES {
            return Err(TrustError::TooManyVouches { max: MAX_VOUCHES });
        }
        self.own = subjects;
        self.changed(now);
        Ok(())
    }

    /// Vouches for `subject`. False if it already did.
    pub fn vouch(&mut self, now: Instant, subject: PeerId) -> Result<bool, TrustError> {
        if subject == self.me {
            return Err(TrustError::SelfVouch);
        }
        if self.own.contains(&subject) {
            return Ok(false);
        }
        if self.own.len() >= MAX_VOUCHES {
            return Err(TrustError::TooManyVouches { max: MAX_VOUCHES });
        }
        self.own.insert(subject);
        self.changed(now);
        Ok(true)
    }

    /// Withdraws the vouch for `subject`. False if there was none.
    pub fn revoke(&mut self, now: Instant, subject: &PeerId) -> bool {
        let removed = self.own.remove(subject);
        if removed {
            self.changed(now);
        }
        removed
    }

    /// This node's statement as the value of its DHT record.
    pub fn own_statement(&self) -> Bytes {
        encode(&self.own)
    }

    /// Takes a statement from the DHT or pub/sub. Returns whether the graph changed. Invalid
    /// statements are refused; valid ones from issuers outside the graph, or not newer than
    /// the one held, are ignored.
    pub fn learn(
        &mut self,
        now: Instant,
        record: &ValueRecord,
        limits: &RecordLimits,
    ) -> Result<bool, TrustError> {
        if record.name() != STATEMENT_NAME {
            return Err(TrustError::BadStatement(format!(
                "named {:?}, not {STATEMENT_NAME:?}",
                record.name()
            )));
        }
        if let Err(e) = record.verify(now, limits) {
            self.stats.invalid += 1;
            return Err(TrustError::BadStatement(e.to_string()));
        }
        let subjects = match decode(record) {
            Ok(s) => s,
            Err(e) => {
                self.stats.invalid += 1;
                return Err(e);
            }
        };
        let issuer = *record.publisher();
        let newer = self.held.get(&issuer).is_none_or(|h| record.seq() > h.seq);
        let room = self.held.contains_key(&issuer) || self.held.len() < self.config.max_statements;
        if issuer == self.me || !self.issues_in_graph(&issuer) || !newer || !room {
            self.stats.ignored += 1;
            if let Some(h) = self.held.get_mut(&issuer).filter(|h| h.seq == record.seq()) {
                h.checked = now;
            }
            return Ok(false);
        }
        self.held.insert(
            issuer,
            Held {
                subjects,
                seq: record.seq(),
                expires: record.expires(),
                checked: now,
            },
        );
        self.stats.learned += 1;
        self.changed(now);
        Ok(true)
    }

    /// The issuers whose statements the node should fetch now (missing, or due for a refresh),
    /// at most as many as there is room for lookups; each is marked as being fetched until
    /// [`fetched`](Self::fetched) reports the outcome.
    pub fn due(&mut self, now: Instant) -> Vec<PeerId> {
        let room = self.config.max_fetches.saturating_sub(self.fetching.len());
        let mut due: Vec<(u8, PeerId)> = self
            .issuers()
            .filter(|(peer, _)| !self.fetching.contains(peer))
            .filter(|(peer, _)| match self.held.get(peer) {
                None => true,
                Some(h) if h.seq == 0 => h.checked + self.config.retry_missing <= now,
                Some(h) => h.checked + self.config.refresh <= now,
            })
            .map(|(peer, depth)| (depth, peer))
            .collect();
        // Nearest first: they decide the most.
        due.sort();
        due.truncate(room);
        let due: Vec<PeerId> = due.into_iter().map(|(_, p)| p).collect();
        self.fetching.extend(due.iter().copied());
        self.stats.fetches += due.len() as u64;
        self.schedule(now);
        due
    }

    /// A statement lookup for `issuer` ended, with the record found (if any).
    pub fn fetched(
        &mut self,
        now: Instant,
        issuer: PeerId,
        record: Option<&ValueRecord>,
        limits: &RecordLimits,
    ) {
        self.fetching.remove(&issuer);
        let learned = record.is_some_and(|r| {
            r.publisher() == &issuer && self.learn(now, r, limits).is_ok_and(|changed| changed)
        });
        if !learned {
            let reachable = self.issues_in_graph(&issuer);
            let room = self.held.len() < self.config.max_statements;
            match self.held.get_mut(&issuer) {
                Some(h) => {
                    h.checked = now;
                    if h.expires <= now.as_secs() && !h.subjects.is_empty() {
                        // Its issuer stopped republishing it: its vouches lapse (the sequence
                        // number stays, so the old statement cannot come back).
                        h.subjects.clear();
                        self.changed(now);
                    }
                }
                None if reachable && room => {
                    self.held.insert(
                        issuer,
                        Held {
                            subjects: Vec::new(),
                            seq: 0,
                            expires: 0,
                            checked: now,
                        },
                    );
                }
                None => {}
            }
        }
        self.schedule(now);
    }

    /// When [`due`](Self::due) next has something (`None`: nothing to fetch, ever, until the
    /// graph changes).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.next_check
    }

    /// A shortest chain of vouches from this node to `subject` of at most `depth` links: the
    /// identities along it, this node first and `subject` last. `None` if there is none.
    pub fn chain(&self, subject: &PeerId, depth: u8) -> Result<Option<Vec<PeerId>>, TrustError> {
        if depth > MAX_DEPTH {
            return Err(TrustError::TooDeep {
                depth,
                max: MAX_DEPTH,
            });
        }
        if !self.trusts(subject, depth) {
            return Ok(None);
        }
        let mut chain = vec![*subject];
        let mut at = *subject;
        while at != self.me {
            at = self.reach[&at].1;
            chain.push(at);
        }
        chain.reverse();
        Ok(Some(chain))
    }

    /// Whether a chain of at most `depth` vouches leads from this node to `subject`. The
    /// graph reaches [`Config::depth`] links, so deeper queries find no more than that.
    pub fn trusts(&self, subject: &PeerId, depth: u8) -> bool {
        self.reach.get(subject).is_some_and(|(d, _)| *d <= depth)
    }

    /// Every identity this node trusts within [`Config::depth`], nearest first.
    pub fn graph(&self) -> Vec<GraphEntry> {
        let mut entries: Vec<GraphEntry> = self
            .reach
            .iter()
            .filter(|(peer, (d, _))| **peer != self.me && *d <= self.config.depth)
            .map(|(peer, (depth, via))| GraphEntry {
                peer: *peer,
                depth: *depth,
                via: *via,
            })
            .collect();
        entries.sort_by_key(|e| (e.depth, e.peer));
        entries
    }

    /// Statements held (including notes of statements the DHT did not have).
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// Whether `issuer`'s statement belongs to the graph: it is within `depth - 1` links, so
    /// whom it vouches for is within `depth`.
    fn issues_in_graph(&self, issuer: &PeerId) -> bool {
        self.reach
            .get(issuer)
            .is_some_and(|(d, _)| *d < self.config.depth)
    }

    /// The identities other than this node whose statements belong to the graph, with their
    /// distance.
    fn issuers(&self) -> impl Iterator<Item = (PeerId, u8)> + '_ {
        self.reach
            .iter()
            .filter(|(peer, (d, _))| **peer != self.me && *d < self.config.depth)
            .map(|(peer, (d, _))| (*peer, *d))
    }

    /// Breadth-first search from this node: every identity within `depth` links, with its
    /// distance and its predecessor on a shortest chain.
    fn distances(&self, depth: u8) -> BTreeMap<PeerId, (u8, PeerId)> {
        let mut reach = BTreeMap::new();
        reach.insert(self.me, (0u8, self.me));
        let mut queue = VecDeque::from([self.me]);
        while let Some(at) = queue.pop_front() {
            let d = reach[&at].0;
            if d >= depth {
                continue;
            }
            let next: &[PeerId] = if at == self.me {
                &[]
            } else {
                self.held.get(&at).map_or(&[], |h| &h.subjects)
            };
            let own = (at == self.me).then_some(&self.own).into_iter().flatten();
            for peer in own.chain(next.iter()) {
                if !reach.contains_key(peer) {
                    reach.insert(*peer, (d + 1, at));
                    queue.push_back(*peer);
                }
            }
        }
        reach
    }

    /// The graph changed: drop statements no chain reaches any more, and look for new fetches
    /// at once.
    fn changed(&mut self, now: Instant) {
        // Statements outside the graph extend it by nothing, so dropping them leaves the
        // search's answer as it is.
        // At least one link: the node's own vouches count whatever the configured depth.
        self.reach = self.distances(self.config.depth.max(1));
        let before = self.held.len();
        let depth = self.config.depth;
        let reach = &self.reach;
        self.held
            .retain(|peer, _| reach.get(peer).is_some_and(|(d, _)| *d < depth));
        self.stats.dropped += (before - self.held.len()) as u64;
        self.next_check = Some(now);
    }

    /// Sets [`poll_timeout`](Self::poll_timeout): the earliest time a statement in the graph
    /// is missing or due for a refresh.
    fn schedule(&mut self, now: Instant) {
        self.next_check = self
            .issuers()
            .filter(|(peer, _)| !self.fetching.contains(peer))
            .map(|(peer, _)| match self.held.get(&peer) {
                None => now,
                Some(h) if h.seq == 0 => h.checked + self.config.retry_missing,
                Some(h) => h.checked + self.config.refresh,
            })
            .min();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Keypair;
    use crate::pow::Difficulty;

    fn key(n: u8) -> Keypair {
        Keypair::from_secret_bytes([n; 32])
    }

    fn id(n: u8) -> PeerId {
        key(n).peer_id()
    }

    fn limits() -> RecordLimits {
        RecordLimits {
            max_ttl: Duration::from_secs(48 * 3600),
            difficulty: Difficulty(0),
        }
    }

    const T0: Instant = Instant::ZERO;

    /// `issuer`'s statement vouching for `subjects`, with sequence number `seq`.
    fn statement(issuer: u8, subjects: &[u8], seq: u64) -> ValueRecord {
        let set: BTreeSet<PeerId> = subjects.iter().map(|n| id(*n)).collect();
        ValueRecord::new(&key(issuer), STATEMENT_NAME, encode(&set), seq, 3600)
    }

    /// A chain 1 → 2 → 3 → 4 → 5 → 6 held by node 1 with the given depth.
    fn chain_of_six(depth: u8) -> WebOfTrust {
        let mut w = WebOfTrust::new(
            id(1),
            Config {
                depth,
                ..Config::default()
            },
        );
        w.vouch(T0, id(2)).unwrap();
        for n in 2..6 {
            let _ = w.learn(T0, &statement(n, &[n + 1], 1), &limits());
        }
        w
    }

    #[test]
    fn a_chain_counts_up_to_the_depth_asked_and_no_further() {
        let w = chain_of_six(4);
        assert!(w.trusts(&id(1), 0));
        assert!(!w.trusts(&id(2), 0));
        assert!(w.trusts(&id(2), 1));
        assert!(w.trusts(&id(4), 3));
        assert!(!w.trusts(&id(4), 2));
        assert!(w.trusts(&id(5), 4));
        // 6 is five links away: beyond the limit, whatever is asked.
        assert!(!w.trusts(&id(6), 4));
        assert!(!w.trusts(&id(6), 200));
        assert_eq!(
            w.chain(&id(4), 3).unwrap(),
            Some(vec![id(1), id(2), id(3), id(4)])
        );
        assert_eq!(w.chain(&id(4), 2).unwrap(), None);
        assert!(matches!(
            w.chain(&id(4), MAX_DEPTH + 1),
            Err(TrustError::TooDeep { .. })
        ));
    }

    #[test]
    fn statements_beyond_the_configured_depth_are_not_taken() {
        // Depth 2: only the statements of those node 1 vouches for matter.
        let w = chain_of_six(2);
        assert!(w.trusts(&id(3), 2));
        assert!(!w.trusts(&id(4), 3), "3's statement was never taken");
        assert_eq!(w.held(), 1);
        assert!(w.stats().ignored >= 3);
    }

    #[test]
    fn revocation_cuts_every_chain_through_the_link_and_drops_what_hung_on_it() {
        let mut w = chain_of_six(4);
        assert!(w.trusts(&id(5), 4));
        // 3 revokes 4: a newer statement without it.
        assert!(w.learn(T0, &statement(3, &[], 2), &limits()).unwrap());
        assert!(w.trusts(&id(3), 2));
        assert!(!w.trusts(&id(4), 4));
        assert!(!w.trusts(&id(5), 4));
        // 4's statement hung on that link alone.
        assert_eq!(w.held(), 2);
        // The old statement cannot come back.
        assert!(!w.learn(T0, &statement(3, &[4], 1), &limits()).unwrap());
        assert!(!w.trusts(&id(4), 4));
        // Node 1 revoking 2 leaves it trusting nobody.
        assert!(w.revoke(T0, &id(2)));
        assert!(!w.trusts(&id(2), 4));
        assert_eq!(w.held(), 0);
    }

    #[test]
    fn another_chain_keeps_trust_when_one_is_revoked() {
        let mut w = chain_of_six(4);
        w.vouch(T0, id(9)).unwrap();
        w.learn(T0, &statement(9, &[4], 1), &limits()).unwrap();
        assert_eq!(w.chain(&id(4), 4).unwrap(), Some(vec![id(1), id(9), id(4)]));
        w.learn(T0, &statement(3, &[], 2), &limits()).unwrap();
        assert!(w.trusts(&id(4), 2));
    }

    #[test]
    fn statements_stop_at_their_bound() {
        let mut w = WebOfTrust::new(
            id(1),
            Config {
                max_statements: 2,
                ..Config::default()
            },
        );
        for n in 2..5 {
            w.vouch(T0, id(n)).unwrap();
        }
        assert!(w.learn(T0, &statement(2, &[10], 1), &limits()).unwrap());
        assert!(w.learn(T0, &statement(3, &[11], 1), &limits()).unwrap());
        // Full: a third issuer is ignored, a newer statement of a held one still replaces it.
        assert!(!w.learn(T0, &statement(4, &[12], 1), &limits()).unwrap());
        assert_eq!(w.held(), 2);
        assert!(!w.trusts(&id(12), 2));
        assert!(w.learn(T0, &statement(3, &[13], 2), &limits()).unwrap());
        assert!(w.trusts(&id(13), 2) && !w.trusts(&id(11), 2));
        // A lookup that found nothing takes no room either.
        w.fetched(T0, id(4), None, &limits());
        assert_eq!(w.held(), 2);
    }

    #[test]
    fn forged_and_malformed_statements_are_refused() {
        let mut w = chain_of_six(4);
        // Signed by 7 but claiming to be 2's: the signature does not verify.
        let honest = statement(2, &[3], 5);
        let forged = ValueRecord::new(&key(7), STATEMENT_NAME, encode(&BTreeSet::new()), 5, 3600);
        let mut bytes = postcard::to_allocvec(&forged).unwrap();
        let honest_bytes = postcard::to_allocvec(&honest).unwrap();
        bytes[..32].copy_from_slice(&honest_bytes[..32]);
        let forged: ValueRecord = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(forged.publisher(), &id(2));
        assert!(w.learn(T0, &forged, &limits()).is_err());
        // Vouching for oneself, naming someone twice, too many, the wrong name, garbage.
        let selfish = ValueRecord::new(
            &key(2),
            STATEMENT_NAME,
            {
                let set: BTreeSet<PeerId> = [id(2)].into();
                encode(&set)
            },
            6,
            3600,
        );
        assert!(w.learn(T0, &selfish, &limits()).is_err());
        let twice = postcard::to_allocvec(&vec![id(3), id(3)]).unwrap();
        let twice = ValueRecord::new(&key(2), STATEMENT_NAME, twice, 6, 3600);
        assert!(w.learn(T0, &twice, &limits()).is_err());
        let many: Vec<PeerId> = (100..=130).map(id).collect();
        let many = ValueRecord::new(
            &key(2),
            STATEMENT_NAME,
            postcard::to_allocvec(&many).unwrap(),
            6,
            3600,
        );
        assert!(w.learn(T0, &many, &limits()).is_err());
        let other = ValueRecord::new(&key(2), "photos", encode(&BTreeSet::new()), 6, 3600);
        assert!(w.learn(T0, &other, &limits()).is_err());
        let garbage = ValueRecord::new(&key(2), STATEMENT_NAME, vec![0xff; 40], 6, 3600);
        assert!(w.learn(T0, &garbage, &limits()).is_err());
        assert_eq!(w.stats().invalid, 5);
        // Through all that, the graph is unchanged.
        assert!(w.trusts(&id(5), 4));
    }

    #[test]
    fn the_own_statement_is_bounded_and_never_names_the_node() {
        let mut w = WebOfTrust::new(id(1), Config::default());
        assert_eq!(w.vouch(T0, id(1)), Err(TrustError::SelfVouch));
        for n in 0..MAX_VOUCHES {
            assert_eq!(w.vouch(T0, id(100 + n as u8)), Ok(true));
        }
        assert_eq!(w.vouch(T0, id(100)), Ok(false));
        assert!(matches!(
            w.vouch(T0, id(2)),
            Err(TrustError::TooManyVouches { .. })
        ));
        // A full statement still fits a DHT value.
        let record = ValueRecord::new(&key(1), STATEMENT_NAME, w.own_statement(), 1, 3600);
        record.verify(T0, &limits()).unwrap();
        assert_eq!(decode(&record).unwrap().len(), MAX_VOUCHES);
    }

    #[test]
    fn fetches_go_nearest_first_within_their_bound_and_refresh_when_due() {
        let mut w = WebOfTrust::new(
            id(1),
            Config {
                max_fetches: 2,
                ..Config::default()
            },
        );
        for n in 2..6 {
            w.vouch(T0, id(n)).unwrap();
        }
        assert_eq!(w.poll_timeout(), Some(T0));
        let first = w.due(T0);
        assert_eq!(first.len(), 2);
        assert!(w.due(T0).is_empty(), "at the bound");
        // One found (it vouches for 7), one missing.
        let issuer = first[0];
        let n = (2..6).find(|n| id(*n) == issuer).unwrap();
        w.fetched(T0, issuer, Some(&statement(n, &[7], 2)), &limits());
        w.fetched(T0, first[1], None, &limits());
        assert!(w.trusts(&id(7), 2));
        // 7 is two links away: its statement is wanted too, after the remaining depth-1 ones.
        let next = w.due(T0);
        assert_eq!(next.len(), 2);
        assert!(next.iter().all(|p| *p != id(7) && !first.contains(p)));
        for p in next {
            w.fetched(T0, p, None, &limits());
        }
        assert_eq!(w.due(T0), vec![id(7)]);
        w.fetched(T0, id(7), None, &limits());
        // Nothing more until a retry or a refresh is due.
        let retry = T0 + Config::default().retry_missing;
        assert_eq!(w.poll_timeout(), Some(retry));
        assert!(w.due(T0 + Duration::from_secs(119)).is_empty());
        assert_eq!(w.due(retry).len(), 2);
    }
}

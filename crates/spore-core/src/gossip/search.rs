//! Keyword search: the local index, remembered queries, per-neighbor rate limits, and the
//! handling of `Query` and `Hits`.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use rand_core::RngCore;

use crate::identity::{PeerId, Signature};
use crate::kad::record::PeerRecord;
use crate::node::Context;
use crate::random;
use crate::time::Instant;

use super::message::{sign_hits, verify_hits};
use super::{
    Event, Gossip, Hit, MAX_HIT_NAME_LEN, MAX_HITS, MAX_TTL, MAX_WORD_LEN, MAX_WORDS, Message, emit,
};

/// A search could not be started.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SearchError {
    /// Gossip is disabled ([`Config::enabled`](super::Config::enabled)).
    #[error("gossip is disabled")]
    Disabled,
    /// The active view is empty: there is nobody to ask.
    #[error("no neighbors to search through")]
    NoPeers,
    /// No words were given.
    #[error("no search words")]
    NoWords,
    /// A word is empty.
    #[error("empty search word")]
    EmptyWord,
    /// More than [`MAX_WORDS`] words.
    #[error("{count} search words, at most {max} allowed")]
    TooManyWords {
        /// How many were given.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A word (lowercased) is longer than [`MAX_WORD_LEN`] bytes.
    #[error("search word of {len} bytes, at most {max} allowed")]
    WordTooLong {
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
}

/// A name could not be shared.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ShareError {
    /// The name is empty.
    #[error("empty name")]
    EmptyName,
    /// The name is longer than [`MAX_HIT_NAME_LEN`] bytes.
    #[error("name of {len} bytes, at most {max} allowed")]
    NameTooLong {
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The name holds a control character.
    #[error("name contains a control character")]
    ControlCharacter,
    /// The index holds [`Config::max_shared`](super::Config::max_shared) names already.
    #[error("the index is full ({0} names)")]
    Full(usize),
}

/// One query id we remember.
#[derive(Debug)]
struct Query {
    /// The neighbor it came from; `None` for our own searches.
    origin: Option<PeerId>,
    expires: Instant,
    /// Hits reported (ours) or forwarded (others') so far.
    hits: usize,
}

/// A shared name.
#[derive(Debug)]
struct Shared {
    name: String,
    /// `name` lowercased, for matching.
    lower: String,
    size: u64,
}

/// A neighbor's query allowance, in millionths of a query.
#[derive(Debug)]
struct Bucket {
    tokens: u64,
    at: Instant,
}

const TOKEN: u64 = 1_000_000;

impl Bucket {
    /// Refills at `rate` queries per second up to twice `rate`, then takes one query if there is.
    fn take(&mut self, now: Instant, rate: u32) -> bool {
        let rate = u64::from(rate);
        let capacity = rate.saturating_mul(2 * TOKEN);
        let elapsed =
            u64::try_from(now.saturating_duration_since(self.at).as_micros()).unwrap_or(u64::MAX);
        self.tokens = self
            .tokens
            .saturating_add(elapsed.saturating_mul(rate))
            .min(capacity);
        self.at = self.at.max(now);
        if self.tokens >= TOKEN {
            self.tokens -= TOKEN;
            true
        } else {
            false
        }
    }
}

/// Search state: everything bounded by the config.
#[derive(Debug)]
pub(super) struct Search {
    /// The local index, by content hash (one name per content).
    shared: BTreeMap<[u8; 32], Shared>,
    max_shared: usize,
    queries: BTreeMap<u64, Query>,
    /// Remembered ids in the order they were added: with one timeout for all, also the order
    /// in which they expire.
    order: VecDeque<(Instant, u64)>,
    /// Our own searches by expiry: the only ones with a timer (their end is reported).
    own: BTreeSet<(Instant, u64)>,
    /// Query allowances of neighbors (only neighbors may send queries).
    buckets: BTreeMap<PeerId, Bucket>,
}

impl Search {
    pub(super) fn new(max_shared: usize) -> Self {
        Self {
            shared: BTreeMap::new(),
            max_shared,
            queries: BTreeMap::new(),
            order: VecDeque::new(),
            own: BTreeSet::new(),
            buckets: BTreeMap::new(),
        }
    }

    /// When our earliest search expires.
    pub(super) fn next_expiry(&self) -> Option<Instant> {
        self.own.first().map(|(t, _)| *t)
    }

    /// `peer` left the active view.
    pub(super) fn forget_neighbor(&mut self, peer: &PeerId) {
        self.buckets.remove(peer);
    }

    /// Up to [`MAX_HITS`] shared names containing every word (lowercase, non-empty); none if
    /// there is no such word.
    fn matching(&self, words: &[String]) -> Vec<Hit> {
        let words: Vec<String> = words
            .iter()
            .filter(|w| !w.is_empty())
            .map(|w| w.to_lowercase())
            .collect();
        if words.is_empty() {
            return Vec::new();
        }
        self.shared
            .iter()
            .filter(|(_, s)| words.iter().all(|w| s.lower.contains(w.as_str())))
            .take(MAX_HITS)
            .map(|(content, s)| Hit {
                name: s.name.clone(),
                content: *content,
                size: s.size,
            })
            .collect()
    }
}

impl Gossip {
    /// Starts a search for names containing every one of `words` (case-insensitive): sends a
    /// query to up to [`Config::search_fanout`](super::Config::search_fanout) random
    /// neighbors. Results arrive as [`Event::SearchHits`], then [`Event::SearchFinished`].
    /// Returns the query's id.
    pub fn search(&mut self, cx: &mut Context<'_>, words: &[String]) -> Result<u64, SearchError> {
        if !self.config.enabled {
            return Err(SearchError::Disabled);
        }
        if words.is_empty() {
            return Err(SearchError::NoWords);
        }
        if words.len() > MAX_WORDS {
            return Err(SearchError::TooManyWords {
                count: words.len(),
                max: MAX_WORDS,
            });
        }
        let mut lower = Vec::with_capacity(words.len());
        for w in words {
            let w = w.to_lowercase();
            if w.is_empty() {
                return Err(SearchError::EmptyWord);
            }
            if w.len() > MAX_WORD_LEN {
                return Err(SearchError::WordTooLong {
                    len: w.len(),
                    max: MAX_WORD_LEN,
                });
            }
            lower.push(w);
        }
        if self.active.is_empty() {
            return Err(SearchError::NoPeers);
        }
        self.start(cx);
        self.expire_queries(cx);
        let id = loop {
            let id = cx.rng.next_u64();
            if !self.search.queries.contains_key(&id) {
                break id;
            }
        };
        self.remember(cx, id, None);
        let members: Vec<PeerId> = self.active.keys().copied().collect();
        let ttl = self.config.search_ttl.min(MAX_TTL);
        for peer in random::sample(cx.rng, members, self.config.search_fanout) {
            cx.send(
                peer,
                Message::Query {
                    id,
                    words: lower.clone(),
                    ttl,
                },
            );
        }
        self.stats.queries_sent += 1;
        Ok(id)
    }

    /// Adds `name` to the local index, for the content with BLAKE3 hash `content` of `size`
    /// bytes. Sharing a content again replaces its name. The index holds at most
    /// [`Config::max_shared`](super::Config::max_shared) names.
    pub fn share(&mut self, name: String, content: [u8; 32], size: u64) -> Result<(), ShareError> {
        if name.is_empty() {
            return Err(ShareError::EmptyName);
        }
        if name.len() > MAX_HIT_NAME_LEN {
            return Err(ShareError::NameTooLong {
                len: name.len(),
                max: MAX_HIT_NAME_LEN,
            });
        }
        if name.chars().any(char::is_control) {
            return Err(ShareError::ControlCharacter);
        }
        let index = &mut self.search;
        if !index.shared.contains_key(&content) && index.shared.len() >= index.max_shared {
            return Err(ShareError::Full(index.max_shared));
        }
        let lower = name.to_lowercase();
        index.shared.insert(content, Shared { name, lower, size });
        Ok(())
    }

    /// Removes the name shared for `content`; false if there was none.
    pub fn unshare(&mut self, content: &[u8; 32]) -> bool {
        self.search.shared.remove(content).is_some()
    }

    /// Remembers query `id`, from `origin` (`None`: ours), dropping the oldest if full.
    fn remember(&mut self, cx: &mut Context<'_>, id: u64, origin: Option<PeerId>) {
        let max = self.config.max_queries.max(1);
        while self.search.queries.len() >= max {
            if !self.pop_oldest_query(cx) {
                break;
            }
        }
        let expires = cx.now + self.config.search_timeout;
        self.search.queries.insert(
            id,
            Query {
                origin,
                expires,
                hits: 0,
            },
        );
        self.search.order.push_back((expires, id));
        if origin.is_none() {
            self.search.own.insert((expires, id));
        }
    }

    /// Forgets the oldest remembered query; reports its end if it was ours.
    fn pop_oldest_query(&mut self, cx: &mut Context<'_>) -> bool {
        let Some((_, id)) = self.search.order.pop_front() else {
            return false;
        };
        if let Some(q) = self.search.queries.remove(&id)
            && q.origin.is_none()
        {
            self.search.own.remove(&(q.expires, id));
            emit(
                cx,
                Event::SearchFinished {
                    query: id,
                    hits: q.hits,
                },
            );
        }
        true
    }

    /// Forgets expired queries.
    pub(super) fn expire_queries(&mut self, cx: &mut Context<'_>) {
        while self
            .search
            .order
            .front()
            .is_some_and(|(expires, _)| *expires <= cx.now)
        {
            self.pop_oldest_query(cx);
        }
    }

    pub(super) fn on_query(
        &mut self,
        cx: &mut Context<'_>,
        from: PeerId,
        id: u64,
        words: Vec<String>,
        ttl: u8,
    ) {
        if !self.active.contains_key(&from) {
            self.stats.ignored += 1;
            return;
        }
        self.expire_queries(cx);
        if self.search.queries.contains_key(&id) {
            self.stats.queries_duplicate += 1;
            return;
        }
        let rate = self.config.query_rate;
        let bucket = self.search.buckets.entry(from).or_insert(Bucket {
            tokens: u64::from(rate).saturating_mul(2 * TOKEN),
            at: cx.now,
        });
        if !bucket.take(cx.now, rate) {
            self.stats.queries_rate_limited += 1;
            return;
        }
        self.stats.queries_received += 1;
        self.remember(cx, id, Some(from));
        let hits = self.search.matching(&words);
        if !hits.is_empty()
            && let Some(responder) = cx.own_record()
        {
            let signature = sign_hits(&self.keypair, id, &hits);
            cx.send(
                from,
                Message::Hits {
                    id,
                    responder,
                    hits,
                    signature,
                },
            );
            self.stats.hits_sent += 1;
        }
        if ttl > 1 {
            let others: Vec<PeerId> = self
                .active
                .keys()
                .filter(|p| **p != from)
                .copied()
                .collect();
            let targets = random::sample(cx.rng, others, self.config.search_fanout);
            if !targets.is_empty() {
                self.stats.queries_forwarded += 1;
            }
            let ttl = (ttl - 1).min(MAX_TTL);
            for peer in targets {
                cx.send(
                    peer,
                    Message::Query {
                        id,
                        words: words.clone(),
                        ttl,
                    },
                );
            }
        }
    }

    pub(super) fn on_hits(
        &mut self,
        cx: &mut Context<'_>,
        id: u64,
        responder: PeerRecord,
        mut hits: Vec<Hit>,
        signature: Signature,
    ) {
        self.expire_queries(cx);
        let max = self.config.max_hits_per_query;
        let Some(query) = self.search.queries.get(&id) else {
            self.stats.hits_unknown += 1;
            return;
        };
        if query.hits >= max {
            self.stats.hits_dropped += 1;
            return;
        }
        if hits.is_empty()
            || hits.len() > MAX_HITS
            || responder.verify(cx.now, &self.limits).is_err()
            || !verify_hits(responder.peer(), id, &hits, &signature)
        {
            self.stats.hits_invalid += 1;
            return;
        }
        self.stats.hits_received += 1;
        let Some(query) = self.search.queries.get_mut(&id) else {
            return;
        };
        match query.origin {
            None => {
                hits.truncate(max - query.hits);
                query.hits += hits.len();
                emit(
                    cx,
                    Event::SearchHits {
                        query: id,
                        responder,
                        hits,
                    },
                );
            }
            Some(back) => {
                query.hits += hits.len();
                if cx.is_ready(&back) {
                    self.stats.hits_forwarded += 1;
                    cx.send(
                        back,
                        Message::Hits {
                            id,
                            responder,
                            hits,
                            signature,
                        },
                    );
                } else {
                    self.stats.hits_dropped += 1;
                }
            }
        }
    }
}

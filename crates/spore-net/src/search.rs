//! Keyword search over the gossip overlay, as the application sees it.
//!
//! The runtime starts a query in the node ([`Node::search`](spore_core::Node::search)) and keeps
//! a bounded channel for it: every [`SearchHits`](spore_core::gossip::Event::SearchHits) event
//! of that query goes down the channel (as well as to [`NodeHandle::subscribe`]'s receivers),
//! and the channel closes when the node reports
//! [`SearchFinished`](spore_core::gossip::Event::SearchFinished). A [`SearchStream`] reads it;
//! nothing is lost to a busy event broadcast.
//!
//! [`NodeHandle::subscribe`]: crate::NodeHandle::subscribe

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use spore_core::PeerId;
use spore_core::gossip::Hit;
use spore_core::kad::record::PeerRecord;
use tokio::sync::mpsc;
use tracing::debug;

/// Most batches of hits waiting in one search's channel. The node reports at most
/// `max_hits_per_query` hits per query, each batch at least one, so a channel this deep only
/// fills if that limit is set higher or the reader stalls; then further batches are dropped.
const MAX_QUEUED_BATCHES: usize = 1024;

/// One name found by a search, and who shares it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SearchHit {
    /// The shared name.
    pub name: String,
    /// The BLAKE3 hash of the content (64 hex digits in JSON).
    #[serde(with = "hex32")]
    pub content: [u8; 32],
    /// The content's size in bytes, as the responder states it.
    pub size: u64,
    /// The peer that answered (its signature over the hits was verified).
    pub responder: PeerId,
    /// Where to dial the responder, from its signed record.
    pub addrs: Vec<SocketAddr>,
}

impl SearchHit {
    fn new(responder: &PeerRecord, hit: Hit) -> Self {
        Self {
            name: hit.name,
            content: hit.content,
            size: hit.size,
            responder: *responder.peer(),
            addrs: responder.addrs().to_vec(),
        }
    }

    /// The content hash in lowercase hex.
    pub fn content_hex(&self) -> String {
        hex32::encode(&self.content)
    }
}

/// The hits of one search as they arrive, from [`NodeHandle::search_stream`].
///
/// Each [`next`](Self::next) yields the hits of one responder; the stream ends when the node's
/// search timeout (`gossip::Config::search_timeout`, 10 s by default) expires, after at most
/// `gossip::Config::max_hits_per_query` hits, or when the node stops. A hit repeated by the same
/// responder is reported once. Dropping the stream stops collecting; the query itself runs out
/// its time in the overlay.
///
/// [`NodeHandle::search_stream`]: crate::NodeHandle::search_stream
#[derive(Debug)]
pub struct SearchStream {
    query: u64,
    rx: mpsc::Receiver<Vec<SearchHit>>,
    max_hits: usize,
    seen: BTreeSet<(PeerId, [u8; 32])>,
}

impl SearchStream {
    /// The query's id (as in [`spore_core::gossip::Event::SearchHits::query`]).
    pub fn query(&self) -> u64 {
        self.query
    }

    /// The next responder's hits (never empty), or `None` once the search is over.
    pub async fn next(&mut self) -> Option<Vec<SearchHit>> {
        loop {
            if self.seen.len() >= self.max_hits {
                return None;
            }
            let mut batch = self.rx.recv().await?;
            batch.retain(|h| self.seen.insert((h.responder, h.content)));
            batch.truncate(self.max_hits.saturating_sub(self.seen.len() - batch.len()));
            if !batch.is_empty() {
                return Some(batch);
            }
        }
    }

    /// Every hit that arrives within `timeout`, or until the search is over if that is sooner.
    pub async fn collect(mut self, timeout: Duration) -> Vec<SearchHit> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut hits = Vec::new();
        while let Ok(Some(batch)) = tokio::time::timeout_at(deadline, self.next()).await {
            hits.extend(batch);
        }
        hits
    }
}

/// The runtime's side: a channel per running search of ours.
#[derive(Debug, Default)]
pub(crate) struct Searches {
    running: BTreeMap<u64, mpsc::Sender<Vec<SearchHit>>>,
}

impl Searches {
    /// Opens the channel of the search the node just started as `query`.
    pub(crate) fn open(&mut self, query: u64, max_hits: usize) -> SearchStream {
        // Forget searches whose reader went away and that got no hit since.
        self.running.retain(|_, tx| !tx.is_closed());
        let (tx, rx) = mpsc::channel(max_hits.clamp(1, MAX_QUEUED_BATCHES));
        self.running.insert(query, tx);
        SearchStream {
            query,
            rx,
            max_hits,
            seen: BTreeSet::new(),
        }
    }

    /// Hits of `query` from `responder`.
    pub(crate) fn hits(&mut self, query: u64, responder: &PeerRecord, hits: &[Hit]) {
        let Some(tx) = self.running.get(&query) else {
            return;
        };
        let batch = hits
            .iter()
            .map(|h| SearchHit::new(responder, h.clone()))
            .collect();
        match tx.try_send(batch) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                debug!(query, "search reader is behind; hits dropped");
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.running.remove(&query);
            }
        }
    }

    /// `query` is over: its stream ends once the reader has taken what is queued.
    pub(crate) fn finish(&mut self, query: u64) {
        self.running.remove(&query);
    }
}

/// `[u8; 32]` as 64 lowercase hex digits.
mod hex32 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn encode(bytes: &[u8; 32]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    pub(super) fn decode(text: &str) -> Option<[u8; 32]> {
        let digits = text.as_bytes();
        if digits.len() != 64 {
            return None;
        }
        let nibble = |d: u8| {
            char::from(d)
                .to_digit(16)
                .and_then(|v| u8::try_from(v).ok())
        };
        let mut out = [0u8; 32];
        for (byte, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
            *byte = nibble(pair[0])? << 4 | nibble(pair[1])?;
        }
        Some(out)
    }

    pub(super) fn serialize<S: Serializer>(bytes: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&encode(bytes))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let text = String::deserialize(d)?;
        decode(&text).ok_or_else(|| serde::de::Error::custom("expected 64 hex digits"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_hex_round_trips_and_rejects_malformed_text() {
        let content = [0xab; 32];
        assert_eq!(hex32::encode(&content), "ab".repeat(32));
        assert_eq!(hex32::decode(&"ab".repeat(32)), Some(content));
        assert_eq!(hex32::decode(&"AB".repeat(32)), Some(content));
        assert_eq!(hex32::decode("ab"), None);
        assert_eq!(hex32::decode(&"+1".repeat(32)), None);
        assert_eq!(hex32::decode(&"é".repeat(32)), None);
    }

    #[tokio::test]
    async fn a_stream_reports_each_hit_once_up_to_the_limit_and_ends_with_the_search() {
        use spore_core::pow::{Difficulty, Stamp};
        let keypair = spore_core::Keypair::generate(&mut rand_core::OsRng);
        let stamp = Stamp::mint(&keypair.peer_id(), Difficulty(4));
        let addr: SocketAddr = "127.0.0.1:7070".parse().unwrap();
        let record = PeerRecord::new(&keypair, stamp, vec![addr], vec![], 1, u64::MAX / 2);
        let hit = |i: u8| Hit {
            name: format!("file-{i}"),
            content: [i; 32],
            size: u64::from(i),
        };
        let mut searches = Searches::default();
        let mut stream = searches.open(7, 3);
        searches.hits(7, &record, &[hit(1), hit(2)]);
        searches.hits(7, &record, &[hit(2)]);
        searches.hits(8, &record, &[hit(9)]);
        searches.hits(7, &record, &[hit(3), hit(4)]);
        searches.finish(7);
        let first = stream.next().await.unwrap();
        assert_eq!(first.len(), 2);
        assert_eq!(first[0].responder, keypair.peer_id());
        assert_eq!(first[0].addrs, vec![addr]);
        assert_eq!(first[1].name, "file-2");
        let second = stream.next().await.unwrap();
        assert_eq!(second.iter().map(|h| h.size).collect::<Vec<_>>(), [3]);
        assert_eq!(stream.next().await, None);

        let stream = searches.open(9, 10);
        searches.hits(9, &record, &[hit(5)]);
        let hits = stream.collect(Duration::from_millis(50)).await;
        assert_eq!(hits.len(), 1, "collect ends at the timeout");
    }
}

//! Where a node keeps the DHT records it stores for others: the [`RecordStore`] trait, and
//! [`MemoryStore`], its in-memory implementation (tests, the simulator, and the index behind the
//! runtime's redb store in spore-store).
//!
//! A store holds verified records only: the caller runs [`verify`](super::record::ValueRecord::verify)
//! first, and the store decides what to keep.
//!
//! - **Conflicts.** One value per key, one peer record per peer, one provider record per
//!   (content, provider): a record replaces the one it [supersedes](super::record::ValueRecord::supersedes);
//!   an equal or older one is refused with [`StoreError::Stale`], so a replayed old record never
//!   rolls a value back.
//! - **Expiry.** `get_*` never return an expired record. [`RecordStore::expire`] drops them for
//!   good; the owner calls it periodically, and a full store also drops expired records before
//!   it refuses a new one.
//! - **Limits** ([`StoreLimits`]): totals per kind so memory is bounded; a per-publisher quota so
//!   one publisher cannot fill the value store; a cap on providers per key. When a key's
//!   provider set is full, a new provider displaces the one that expires soonest if the new one
//!   expires later, so fresh providers win over stale ones and a flood of short-lived records
//!   cannot push out long-lived ones.
//!
//! Everything is kept in `BTreeMap`s, so iteration order, and therefore every decision, is the
//! same on every run.

use std::collections::{BTreeMap, BTreeSet};

use super::Key;
use super::record::{PeerRecord, ProviderRecord, ValueRecord};
use crate::identity::PeerId;
use crate::time::Instant;

/// Bounds on what a [`RecordStore`] keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreLimits {
    /// Most value records in total. Default 10 000 (at most about 11 MB of values).
    pub max_values: usize,
    /// Most value records per publisher. Default 64.
    pub max_values_per_publisher: usize,
    /// Most distinct keys with provider records. Default 10 000.
    pub max_provider_keys: usize,
    /// Most providers kept per key. Default 20 (k: a lookup returns at most k anyway).
    pub max_providers_per_key: usize,
    /// Most peer records. Default 10 000.
    pub max_peer_records: usize,
}

impl Default for StoreLimits {
    fn default() -> Self {
        Self {
            max_values: 10_000,
            max_values_per_publisher: 64,
            max_provider_keys: 10_000,
            max_providers_per_key: 20,
            max_peer_records: 10_000,
        }
    }
}

/// How many records a store holds, per kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct StoreCounts {
    /// Value records.
    pub values: usize,
    /// Keys with at least one provider record.
    pub provider_keys: usize,
    /// Provider records, over all keys.
    pub providers: usize,
    /// Peer records.
    pub peers: usize,
}

/// Why a store did not keep a record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The store holds as many records of this kind as its limits allow.
    #[error("record store full: {0}")]
    Full(&'static str),
    /// The publisher already has its quota of values here.
    #[error("publisher {publisher} has reached its quota of stored values")]
    QuotaExceeded {
        /// The publisher.
        publisher: PeerId,
    },
    /// The store has the same or a newer version of the record. For provider records, which
    /// carry no sequence number, the two numbers are expiry times.
    #[error("stale record: the store has seq {have_seq}, the record has seq {got_seq}")]
    Stale {
        /// The sequence number of the stored record.
        have_seq: u64,
        /// The sequence number of the refused record.
        got_seq: u64,
    },
    /// The record has already expired.
    #[error("record expired at {expires}, now is {now} (UNIX seconds)")]
    Expired {
        /// The record's expiry.
        expires: u64,
        /// The current time.
        now: u64,
    },
    /// The storage behind the store failed.
    #[error("record store backend: {0}")]
    Backend(String),
}

/// Storage for the DHT records a node holds, as the Kademlia state machine sees it.
///
/// Records passed in must already be verified. `now` is the time of the call; expiry times are
/// compared with `now.as_secs()`.
pub trait RecordStore {
    /// Stores a value record, replacing the one it supersedes. An equal or older record is
    /// [`StoreError::Stale`].
    fn put_value(&mut self, record: ValueRecord, now: Instant) -> Result<(), StoreError>;
    /// The live value record stored under `key`.
    fn get_value(&self, key: &Key, now: Instant) -> Option<ValueRecord>;
    /// Stores a provider record in its key's set, replacing that provider's older record.
    fn put_provider(&mut self, record: ProviderRecord, now: Instant) -> Result<(), StoreError>;
    /// The live provider records of `key`.
    fn providers(&self, key: &Key, now: Instant) -> Vec<ProviderRecord>;
    /// Stores a peer record, replacing the one it supersedes.
    fn put_peer(&mut self, record: PeerRecord, now: Instant) -> Result<(), StoreError>;
    /// The live record of `peer`.
    fn get_peer(&self, peer: &PeerId, now: Instant) -> Option<PeerRecord>;
    /// Drops every record expired at `now`; returns how many.
    fn expire(&mut self, now: Instant) -> usize;
    /// Every value record held (for republishing; call [`expire`](Self::expire) first to leave
    /// out expired ones).
    fn values(&self) -> Vec<ValueRecord>;
    /// Every provider record held.
    fn provider_records(&self) -> Vec<ProviderRecord>;
    /// Every peer record held.
    fn peer_records(&self) -> Vec<PeerRecord>;
    /// How many records are held, per kind (expired ones not yet dropped included).
    fn len(&self) -> StoreCounts;
    /// Whether the store holds no record at all.
    fn is_empty(&self) -> bool {
        self.len() == StoreCounts::default()
    }
    /// The limits the store enforces, if it has these.
    fn limits(&self) -> Option<StoreLimits> {
        None
    }
}

/// A record a [`MemoryStore`] dropped (expired, or displaced by a newer provider), as reported
/// by [`MemoryStore::take_removals`] to a store that mirrors it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Removal {
    /// The value record under this key.
    Value(Key),
    /// The record of `provider` under `key`.
    Provider {
        /// The content key.
        key: Key,
        /// The provider.
        provider: PeerId,
    },
    /// The record of this peer.
    Peer(PeerId),
}

/// A [`RecordStore`] in memory, enforcing [`StoreLimits`]. Deterministic: `BTreeMap`s only.
///
/// Each kind also has an index by expiry, so [`expire`](RecordStore::expire) costs only the
/// records it drops, and a full store finds out in O(1) whether dropping expired records would
/// make room.
#[derive(Debug, Clone, Default)]
pub struct MemoryStore {
    limits: StoreLimits,
    values: BTreeMap<Key, ValueRecord>,
    value_expiry: BTreeSet<(u64, Key)>,
    per_publisher: BTreeMap<PeerId, usize>,
    providers: BTreeMap<Key, BTreeMap<PeerId, ProviderRecord>>,
    provider_expiry: BTreeSet<(u64, Key, PeerId)>,
    provider_count: usize,
    peers: BTreeMap<PeerId, PeerRecord>,
    peer_expiry: BTreeSet<(u64, PeerId)>,
    removals: Option<Vec<Removal>>,
}

impl MemoryStore {
    /// An empty store with these limits.
    pub fn new(limits: StoreLimits) -> Self {
        Self {
            limits,
            ..Self::default()
        }
    }

    /// The store's limits.
    pub fn limits(&self) -> &StoreLimits {
        &self.limits
    }

    /// Starts recording every record the store drops, for [`take_removals`](Self::take_removals).
    /// A store that mirrors this one elsewhere (spore-store's redb store) turns this on and
    /// drains the log after every call; nobody else needs it, and a log never drained would grow.
    pub fn track_removals(&mut self) {
        self.removals.get_or_insert_with(Vec::new);
    }

    /// The records dropped since the last call (always empty unless
    /// [`track_removals`](Self::track_removals) was called).
    pub fn take_removals(&mut self) -> Vec<Removal> {
        self.removals
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    fn log(&mut self, removal: Removal) {
        if let Some(log) = &mut self.removals {
            log.push(removal);
        }
    }

    // ---- values

    fn insert_value(&mut self, key: Key, record: ValueRecord) {
        // Replaced in place: not a removal for a mirror, which overwrites the key.
        self.remove_value(&key, false);
        *self.per_publisher.entry(*record.publisher()).or_default() += 1;
        self.value_expiry.insert((record.expires(), key));
        self.values.insert(key, record);
    }

    fn remove_value(&mut self, key: &Key, log: bool) -> Option<ValueRecord> {
        let old = self.values.remove(key)?;
        self.value_expiry.remove(&(old.expires(), *key));
        if let Some(n) = self.per_publisher.get_mut(old.publisher()) {
            *n -= 1;
            if *n == 0 {
                self.per_publisher.remove(old.publisher());
            }
        }
        if log {
            self.log(Removal::Value(*key));
        }
        Some(old)
    }

    fn expire_values(&mut self, now: u64) -> usize {
        let mut n = 0;
        while let Some(&(expires, key)) = self.value_expiry.first() {
            if expires > now {
                break;
            }
            self.remove_value(&key, true);
            n += 1;
        }
        n
    }

    // ---- providers

    fn insert_provider(&mut self, key: Key, record: ProviderRecord) {
        let provider = *record.provider();
        let entry = (record.expires(), key, provider);
        match self
            .providers
            .entry(key)
            .or_default()
            .insert(provider, record)
        {
            Some(old) => {
                self.provider_expiry.remove(&(old.expires(), key, provider));
            }
            None => self.provider_count += 1,
        }
        // After removing the old entry, which may be equal to this one.
        self.provider_expiry.insert(entry);
    }

    fn remove_provider(&mut self, key: &Key, provider: &PeerId) -> Option<ProviderRecord> {
        let set = self.providers.get_mut(key)?;
        let old = set.remove(provider)?;
        if set.is_empty() {
            self.providers.remove(key);
        }
        self.provider_count -= 1;
        self.provider_expiry
            .remove(&(old.expires(), *key, *provider));
        self.log(Removal::Provider {
            key: *key,
            provider: *provider,
        });
        Some(old)
    }

    fn expire_providers(&mut self, now: u64) -> usize {
        let mut n = 0;
        while let Some(&(expires, key, provider)) = self.provider_expiry.first() {
            if expires > now {
                break;
            }
            self.remove_provider(&key, &provider);
            n += 1;
        }
        n
    }

    // ---- peers

    fn insert_peer(&mut self, record: PeerRecord) {
        let peer = *record.peer();
        let entry = (record.expires(), peer);
        if let Some(old) = self.peers.insert(peer, record) {
            self.peer_expiry.remove(&(old.expires(), peer));
        }
        // After removing the old entry, which may be equal to this one.
        self.peer_expiry.insert(entry);
    }

    fn expire_peers(&mut self, now: u64) -> usize {
        let mut n = 0;
        while let Some(&(expires, peer)) = self.peer_expiry.first() {
            if expires > now {
                break;
            }
            self.peer_expiry.remove(&(expires, peer));
            self.peers.remove(&peer);
            self.log(Removal::Peer(peer));
            n += 1;
        }
        n
    }
}

fn check_live(expires: u64, now: Instant) -> Result<(), StoreError> {
    let now = now.as_secs();
    if expires <= now {
        Err(StoreError::Expired { expires, now })
    } else {
        Ok(())
    }
}

impl RecordStore for MemoryStore {
    fn limits(&self) -> Option<StoreLimits> {
        Some(self.limits)
    }

    fn put_value(&mut self, record: ValueRecord, now: Instant) -> Result<(), StoreError> {
        check_live(record.expires(), now)?;
        let key = record.key();
        match self.values.get(&key) {
            Some(have) if !have.is_expired(now) => {
                if !record.supersedes(have) {
                    return Err(StoreError::Stale {
                        have_seq: have.seq(),
                        got_seq: record.seq(),
                    });
                }
            }
            // An expired record under the same key makes way whatever its seq.
            Some(_) => {}
            None => {
                let publisher = *record.publisher();
                let count = |s: &Self| s.per_publisher.get(&publisher).copied().unwrap_or(0);
                if count(self) >= self.limits.max_values_per_publisher {
                    self.expire_values(now.as_secs());
                    if count(self) >= self.limits.max_values_per_publisher {
                        return Err(StoreError::QuotaExceeded { publisher });
                    }
                }
                if self.values.len() >= self.limits.max_values {
                    self.expire_values(now.as_secs());
                    if self.values.len() >= self.limits.max_values {
                        return Err(StoreError::Full("values"));
                    }
                }
            }
        }
        self.insert_value(key, record);
        Ok(())
    }

    fn get_value(&self, key: &Key, now: Instant) -> Option<ValueRecord> {
        self.values.get(key).filter(|r| !r.is_expired(now)).cloned()
    }

    fn put_provider(&mut self, record: ProviderRecord, now: Instant) -> Result<(), StoreError> {
        check_live(record.expires(), now)?;
        let key = record.key();
        let provider = *record.provider();
        let set_len = match self.providers.get(&key) {
            Some(set) => match set.get(&provider) {
                Some(have) if !have.is_expired(now) && !record.supersedes(have) => {
                    return Err(StoreError::Stale {
                        have_seq: have.expires(),
                        got_seq: record.expires(),
                    });
                }
                Some(_) => {
                    // Replaces this provider's own record: no new slot needed.
                    self.insert_provider(key, record);
                    return Ok(());
                }
                None => set.len(),
            },
            None => {
                if self.providers.len() >= self.limits.max_provider_keys {
                    self.expire_providers(now.as_secs());
                    if self.providers.len() >= self.limits.max_provider_keys {
                        return Err(StoreError::Full("provider keys"));
                    }
                }
                0
            }
        };
        if set_len >= self.limits.max_providers_per_key {
            // Expired providers of this key go first, then the one expiring soonest, if the
            // newcomer outlives it. Ties on expiry fall to the smaller PeerId: deterministic.
            let set = self.providers.get(&key).map(|s| s.values());
            let victim = set
                .into_iter()
                .flatten()
                .min_by_key(|r| (r.expires(), *r.provider()))
                .filter(|r| r.is_expired(now) || r.expires() < record.expires())
                .map(|r| *r.provider());
            match victim {
                Some(victim) => {
                    self.remove_provider(&key, &victim);
                }
                None => return Err(StoreError::Full("providers for this key")),
            }
        }
        self.insert_provider(key, record);
        Ok(())
    }

    fn providers(&self, key: &Key, now: Instant) -> Vec<ProviderRecord> {
        self.providers
            .get(key)
            .into_iter()
            .flat_map(|set| set.values())
            .filter(|r| !r.is_expired(now))
            .cloned()
            .collect()
    }

    fn put_peer(&mut self, record: PeerRecord, now: Instant) -> Result<(), StoreError> {
        check_live(record.expires(), now)?;
        match self.peers.get(record.peer()) {
            Some(have) if !have.is_expired(now) && !record.supersedes(have) => {
                return Err(StoreError::Stale {
                    have_seq: have.seq(),
                    got_seq: record.seq(),
                });
            }
            Some(_) => {}
            None => {
                if self.peers.len() >= self.limits.max_peer_records {
                    self.expire_peers(now.as_secs());
                    if self.peers.len() >= self.limits.max_peer_records {
                        return Err(StoreError::Full("peer records"));
                    }
                }
            }
        }
        self.insert_peer(record);
        Ok(())
    }

    fn get_peer(&self, peer: &PeerId, now: Instant) -> Option<PeerRecord> {
        self.peers.get(peer).filter(|r| !r.is_expired(now)).cloned()
    }

    fn expire(&mut self, now: Instant) -> usize {
        let now = now.as_secs();
        self.expire_values(now) + self.expire_providers(now) + self.expire_peers(now)
    }

    fn values(&self) -> Vec<ValueRecord> {
        self.values.values().cloned().collect()
    }

    fn provider_records(&self) -> Vec<ProviderRecord> {
        self.providers
            .values()
            .flat_map(|set| set.values())
            .cloned()
            .collect()
    }

    fn peer_records(&self) -> Vec<PeerRecord> {
        self.peers.values().cloned().collect()
    }

    fn len(&self) -> StoreCounts {
        StoreCounts {
            values: self.values.len(),
            provider_keys: self.providers.len(),
            providers: self.provider_count,
            peers: self.peers.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Keypair;
    use crate::pow::Stamp;
    use proptest::prelude::*;

    const NOW: u64 = 1_000_000;

    fn at(secs: u64) -> Instant {
        Instant::from_micros(secs * 1_000_000)
    }

    fn key(seed: u8) -> Keypair {
        Keypair::from_secret_bytes([seed; 32])
    }

    fn value(publisher: u8, name: &str, seq: u64, expires: u64) -> ValueRecord {
        ValueRecord::new(&key(publisher), name, &b"v"[..], seq, expires)
    }

    fn provider(who: u8, content: u8, expires: u64) -> ProviderRecord {
        ProviderRecord::new(
            &key(who),
            Stamp { nonce: 0 },
            [content; 32],
            vec![],
            expires,
        )
    }

    fn peer(who: u8, seq: u64, expires: u64) -> PeerRecord {
        PeerRecord::new(&key(who), Stamp { nonce: 0 }, vec![], vec![], seq, expires)
    }

    /// The indexes agree with the maps, and no limit is exceeded.
    fn check_invariants(s: &MemoryStore) {
        let l = s.limits;
        assert_eq!(s.value_expiry.len(), s.values.len());
        for (k, v) in &s.values {
            assert_eq!(*k, v.key());
            assert!(s.value_expiry.contains(&(v.expires(), *k)));
        }
        let mut per_publisher = BTreeMap::new();
        for v in s.values.values() {
            *per_publisher.entry(*v.publisher()).or_insert(0usize) += 1;
        }
        assert_eq!(per_publisher, s.per_publisher);
        assert!(s.values.len() <= l.max_values);
        assert!(
            s.per_publisher
                .values()
                .all(|&n| n <= l.max_values_per_publisher)
        );

        let providers: usize = s.providers.values().map(BTreeMap::len).sum();
        assert_eq!(providers, s.provider_count);
        assert_eq!(s.provider_expiry.len(), providers);
        for (k, set) in &s.providers {
            assert!(!set.is_empty() && set.len() <= l.max_providers_per_key);
            for (p, r) in set {
                assert!(s.provider_expiry.contains(&(r.expires(), *k, *p)));
            }
        }
        assert!(s.providers.len() <= l.max_provider_keys);

        assert_eq!(s.peer_expiry.len(), s.peers.len());
        for (p, r) in &s.peers {
            assert!(s.peer_expiry.contains(&(r.expires(), *p)));
        }
        assert!(s.peers.len() <= l.max_peer_records);
    }

    #[test]
    fn values_replace_only_with_newer() {
        let mut s = MemoryStore::default();
        let now = at(NOW);
        let v2 = value(1, "a", 2, NOW + 10);
        s.put_value(v2.clone(), now).unwrap();
        assert_eq!(s.get_value(&v2.key(), now), Some(v2.clone()));
        assert_eq!(
            s.put_value(value(1, "a", 1, NOW + 99), now),
            Err(StoreError::Stale {
                have_seq: 2,
                got_seq: 1
            })
        );
        assert_eq!(
            s.put_value(v2.clone(), now),
            Err(StoreError::Stale {
                have_seq: 2,
                got_seq: 2
            })
        );
        let v3 = value(1, "a", 3, NOW + 5);
        s.put_value(v3.clone(), now).unwrap();
        assert_eq!(s.get_value(&v3.key(), now), Some(v3));
        assert_eq!(s.len().values, 1);
        check_invariants(&s);
    }

    #[test]
    fn equal_seq_conflicts_resolve_the_same_way_in_any_order() {
        let a = ValueRecord::new(&key(1), "a", &b"x"[..], 7, NOW + 10);
        let b = ValueRecord::new(&key(1), "a", &b"y"[..], 7, NOW + 10);
        let now = at(NOW);
        let mut s1 = MemoryStore::default();
        let mut s2 = MemoryStore::default();
        let _ = s1.put_value(a.clone(), now);
        let _ = s1.put_value(b.clone(), now);
        let _ = s2.put_value(b.clone(), now);
        let _ = s2.put_value(a.clone(), now);
        assert_eq!(s1.get_value(&a.key(), now), s2.get_value(&a.key(), now));
    }

    #[test]
    fn an_expired_record_makes_way_for_any_version() {
        let mut s = MemoryStore::default();
        s.put_value(value(1, "a", 9, NOW + 10), at(NOW)).unwrap();
        let later = at(NOW + 10);
        assert_eq!(s.get_value(&value(1, "a", 0, 0).key(), later), None);
        s.put_value(value(1, "a", 1, NOW + 20), later).unwrap();
        assert_eq!(s.len().values, 1);
        check_invariants(&s);
    }

    #[test]
    fn expired_records_are_refused() {
        let mut s = MemoryStore::default();
        let now = at(NOW);
        let expired = Err(StoreError::Expired {
            expires: NOW,
            now: NOW,
        });
        assert_eq!(s.put_value(value(1, "a", 1, NOW), now), expired);
        assert_eq!(s.put_provider(provider(1, 1, NOW), now), expired);
        assert_eq!(s.put_peer(peer(1, 1, NOW), now), expired);
        assert!(s.is_empty());
    }

    #[test]
    fn per_publisher_quota() {
        let mut s = MemoryStore::new(StoreLimits {
            max_values_per_publisher: 3,
            ..StoreLimits::default()
        });
        let now = at(NOW);
        for name in ["a", "b", "c"] {
            s.put_value(value(1, name, 1, NOW + 10), now).unwrap();
        }
        assert_eq!(
            s.put_value(value(1, "d", 1, NOW + 10), now),
            Err(StoreError::QuotaExceeded {
                publisher: key(1).peer_id()
            })
        );
        // Updating a value it has is not a new one; other publishers are unaffected.
        s.put_value(value(1, "a", 2, NOW + 10), now).unwrap();
        s.put_value(value(2, "d", 1, NOW + 10), now).unwrap();
        check_invariants(&s);
        // Once one of its values expires, there is room again.
        s.put_value(value(1, "b", 2, NOW + 3), now).unwrap();
        let later = at(NOW + 3);
        s.put_value(value(1, "e", 1, NOW + 10), later).unwrap();
        assert_eq!(s.get_value(&value(1, "b", 0, 0).key(), later), None);
        assert_eq!(s.len().values, 4);
        check_invariants(&s);
    }

    #[test]
    fn total_values_limit() {
        let mut s = MemoryStore::new(StoreLimits {
            max_values: 3,
            ..StoreLimits::default()
        });
        let now = at(NOW);
        for p in 1..=3 {
            s.put_value(value(p, "a", 1, NOW + u64::from(p)), now)
                .unwrap();
        }
        assert_eq!(
            s.put_value(value(4, "a", 1, NOW + 10), now),
            Err(StoreError::Full("values"))
        );
        // At NOW + 1 the first has expired: dropped to make room.
        s.put_value(value(4, "a", 1, NOW + 10), at(NOW + 1))
            .unwrap();
        assert_eq!(s.len().values, 3);
        check_invariants(&s);
    }

    #[test]
    fn providers_per_key_keep_the_longest_lived() {
        let mut s = MemoryStore::new(StoreLimits {
            max_providers_per_key: 2,
            ..StoreLimits::default()
        });
        let now = at(NOW);
        s.put_provider(provider(1, 9, NOW + 10), now).unwrap();
        s.put_provider(provider(2, 9, NOW + 20), now).unwrap();
        // Expires no later than the soonest: refused.
        assert_eq!(
            s.put_provider(provider(3, 9, NOW + 10), now),
            Err(StoreError::Full("providers for this key"))
        );
        // Expires later: displaces provider 1.
        s.put_provider(provider(3, 9, NOW + 30), now).unwrap();
        let who: Vec<_> = s
            .providers(&Key([9; 32]), now)
            .iter()
            .map(|r| *r.provider())
            .collect();
        let mut expected = vec![key(2).peer_id(), key(3).peer_id()];
        expected.sort();
        assert_eq!(who, expected);
        // A provider refreshes its own record without needing a free slot...
        s.put_provider(provider(2, 9, NOW + 40), now).unwrap();
        // ...and cannot roll it back.
        assert_eq!(
            s.put_provider(provider(2, 9, NOW + 35), now),
            Err(StoreError::Stale {
                have_seq: NOW + 40,
                got_seq: NOW + 35
            })
        );
        // Other keys have their own sets.
        s.put_provider(provider(1, 8, NOW + 1), now).unwrap();
        assert_eq!(
            s.len(),
            StoreCounts {
                values: 0,
                provider_keys: 2,
                providers: 3,
                peers: 0
            }
        );
        // An expired provider gives up its slot even to a shorter-lived newcomer.
        s.put_provider(provider(4, 9, NOW + 31), at(NOW + 30))
            .unwrap();
        assert_eq!(s.providers(&Key([9; 32]), at(NOW + 30)).len(), 2);
        check_invariants(&s);
    }

    #[test]
    fn provider_keys_limit() {
        let mut s = MemoryStore::new(StoreLimits {
            max_provider_keys: 2,
            ..StoreLimits::default()
        });
        let now = at(NOW);
        s.put_provider(provider(1, 1, NOW + 10), now).unwrap();
        s.put_provider(provider(1, 2, NOW + 20), now).unwrap();
        // More providers for an existing key are fine; a third key is not.
        s.put_provider(provider(2, 2, NOW + 20), now).unwrap();
        assert_eq!(
            s.put_provider(provider(1, 3, NOW + 20), now),
            Err(StoreError::Full("provider keys"))
        );
        s.put_provider(provider(1, 3, NOW + 20), at(NOW + 10))
            .unwrap();
        assert!(s.providers(&Key([1; 32]), at(NOW + 10)).is_empty());
        check_invariants(&s);
    }

    #[test]
    fn peer_records() {
        let mut s = MemoryStore::new(StoreLimits {
            max_peer_records: 2,
            ..StoreLimits::default()
        });
        let now = at(NOW);
        s.put_peer(peer(1, 5, NOW + 10), now).unwrap();
        assert_eq!(
            s.put_peer(peer(1, 4, NOW + 10), now),
            Err(StoreError::Stale {
                have_seq: 5,
                got_seq: 4
            })
        );
        s.put_peer(peer(1, 6, NOW + 10), now).unwrap();
        assert_eq!(s.get_peer(&key(1).peer_id(), now).map(|r| r.seq()), Some(6));
        s.put_peer(peer(2, 1, NOW + 20), now).unwrap();
        assert_eq!(
            s.put_peer(peer(3, 1, NOW + 20), now),
            Err(StoreError::Full("peer records"))
        );
        assert_eq!(s.get_peer(&key(1).peer_id(), at(NOW + 10)), None);
        s.put_peer(peer(3, 1, NOW + 20), at(NOW + 10)).unwrap();
        assert_eq!(s.len().peers, 2);
        check_invariants(&s);
    }

    #[test]
    fn expire_drops_and_counts_and_reports() {
        let mut s = MemoryStore::default();
        s.track_removals();
        let now = at(NOW);
        s.put_value(value(1, "a", 1, NOW + 1), now).unwrap();
        s.put_value(value(1, "b", 1, NOW + 5), now).unwrap();
        s.put_provider(provider(1, 1, NOW + 1), now).unwrap();
        s.put_peer(peer(1, 1, NOW + 2), now).unwrap();
        assert_eq!(s.take_removals(), vec![]);
        assert_eq!(s.expire(at(NOW)), 0);
        assert_eq!(s.expire(at(NOW + 2)), 3);
        assert_eq!(
            s.take_removals(),
            vec![
                Removal::Value(value(1, "a", 0, 0).key()),
                Removal::Provider {
                    key: Key([1; 32]),
                    provider: key(1).peer_id()
                },
                Removal::Peer(key(1).peer_id()),
            ]
        );
        assert_eq!(
            s.len(),
            StoreCounts {
                values: 1,
                ..StoreCounts::default()
            }
        );
        assert_eq!(s.expire(at(NOW + 2)), 0);
        check_invariants(&s);
    }

    #[test]
    fn untracked_removals_are_not_kept() {
        let mut s = MemoryStore::default();
        s.put_value(value(1, "a", 1, NOW + 1), at(NOW)).unwrap();
        assert_eq!(s.expire(at(NOW + 1)), 1);
        assert!(s.removals.is_none());
        assert_eq!(s.take_removals(), vec![]);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Value {
            publisher: u8,
            name: u8,
            seq: u64,
            ttl: u64,
        },
        Provider {
            provider: u8,
            content: u8,
            ttl: u64,
        },
        Peer {
            peer: u8,
            seq: u64,
            ttl: u64,
        },
        Tick(u64),
        Expire,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u8..4, 0u8..4, 0u64..4, 0u64..20).prop_map(|(publisher, name, seq, ttl)| Op::Value {
                publisher,
                name,
                seq,
                ttl
            }),
            (0u8..6, 0u8..4, 0u64..20).prop_map(|(provider, content, ttl)| Op::Provider {
                provider,
                content,
                ttl
            }),
            (0u8..4, 0u64..4, 0u64..20).prop_map(|(peer, seq, ttl)| Op::Peer { peer, seq, ttl }),
            (0u64..5).prop_map(Op::Tick),
            Just(Op::Expire),
        ]
    }

    /// Runs `ops`, checking invariants after each; returns the results and final contents.
    fn run(ops: &[Op]) -> (Vec<Result<(), StoreError>>, MemoryStore) {
        let mut s = MemoryStore::new(StoreLimits {
            max_values: 6,
            max_values_per_publisher: 2,
            max_provider_keys: 3,
            max_providers_per_key: 2,
            max_peer_records: 3,
        });
        let mut t = NOW;
        let mut results = Vec::new();
        for op in ops {
            let now = at(t);
            let r = match op {
                Op::Value {
                    publisher,
                    name,
                    seq,
                    ttl,
                } => s.put_value(value(*publisher, &name.to_string(), *seq, t + ttl), now),
                Op::Provider {
                    provider: p,
                    content,
                    ttl,
                } => s.put_provider(provider(*p, *content, t + ttl), now),
                Op::Peer { peer: p, seq, ttl } => s.put_peer(peer(*p, *seq, t + ttl), now),
                Op::Tick(d) => {
                    t += d;
                    Ok(())
                }
                Op::Expire => {
                    s.expire(now);
                    Ok(())
                }
            };
            check_invariants(&s);
            // Nothing expired is ever returned.
            for v in s.values() {
                if let Some(got) = s.get_value(&v.key(), at(t)) {
                    assert!(!got.is_expired(at(t)));
                }
            }
            results.push(r);
        }
        (results, s)
    }

    proptest! {
        #[test]
        fn invariants_hold_and_runs_are_deterministic(ops in proptest::collection::vec(op(), 0..60)) {
            let (r1, s1) = run(&ops);
            let (r2, s2) = run(&ops);
            prop_assert_eq!(r1, r2);
            prop_assert_eq!(s1.values(), s2.values());
            prop_assert_eq!(s1.provider_records(), s2.provider_records());
            prop_assert_eq!(s1.peer_records(), s2.peer_records());
        }
    }
}

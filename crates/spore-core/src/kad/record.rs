//! Signed DHT records: where a peer is, a named value, who provides some content.
//!
//! Everything the DHT stores on behalf of others is one of three record types. Each is signed by
//! the node it speaks for, so a node storing or relaying a record cannot alter it, and nobody can
//! publish in another node's name (the model is BEP 44's mutable items).
//!
//! | record | stored under | signed by | supersedes another when |
//! |---|---|---|---|
//! | [`PeerRecord`]: a peer's stamp, addresses and relays | [`Key::for_peer`] | the peer | same peer, higher `seq` |
//! | [`ValueRecord`]: up to [`MAX_VALUE_LEN`] bytes under a name | [`ValueRecord::key_for`]`(publisher, name)` | the publisher | same publisher and name, higher `seq` |
//! | [`ProviderRecord`]: "I serve this BLAKE3 content hash" | `Key(content)` | the provider | same content and provider, later `expires` |
//!
//! Between two versions with the same `seq` (or, for provider records, the same `expires`), the
//! one whose signature bytes are greater wins. Only the signer can make two such versions, and
//! the tiebreak lets every node pick the same one, so replicas converge.
//!
//! ## What is signed
//!
//! Every field except the signature, in declaration order, preceded by a context string that
//! names the record type and its version, all in postcard: the signed message is
//! `postcard((context, (field₁, …, fieldₙ)))`, that is `varint(len(context)) ‖ context ‖` the
//! record's own postcard encoding without its trailing signature. The contexts are
//! `spore/kad/peer-record/v1`, `spore/kad/value-record/v1` and `spore/kad/provider-record/v1`,
//! so a signature over one kind of record (or over anything else the key signs) never verifies
//! as another.
//!
//! ## Parse, don't validate
//!
//! Fields are private: a record is either built by a constructor, which signs it, or decoded
//! from a peer, after which [`verify`](ValueRecord::verify) must pass before it is stored,
//! served or believed. `verify` checks, cheapest first: sizes (at most [`MAX_RECORD_ADDRS`]
//! addresses, [`MAX_RECORD_RELAYS`] relays, a name of at most [`MAX_NAME_LEN`] bytes with no
//! control characters, a value of at most [`MAX_VALUE_LEN`] bytes); expiry (`expires` is in UNIX
//! seconds, must be after `now` and no more than [`RecordLimits::max_ttl`] after it, so nobody
//! stores eternal records); the proof-of-work stamp against the network's difficulty (peer and
//! provider records, so ids without work cannot fill the DHT); and the signature. It never
//! panics, whatever the bytes were.
//!
//! Constructors sign what they are given without checking it: a caller that builds an oversized
//! or already expired record finds out from `verify`, as its peers would.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::{Contact, Key, MAX_CONTACT_ADDRS};
use crate::identity::{Keypair, PeerId, Signature, signed_message};
use crate::pow::{Difficulty, Stamp, StampError};
use crate::time::Instant;

/// Most addresses in a peer or provider record.
pub const MAX_RECORD_ADDRS: usize = 8;
/// Most relays in a peer record.
pub const MAX_RECORD_RELAYS: usize = 4;
/// Longest value name, in bytes of UTF-8.
pub const MAX_NAME_LEN: usize = 64;
/// Largest value, in bytes.
pub const MAX_VALUE_LEN: usize = 1024;
/// Default for [`RecordLimits::max_ttl`]: 48 hours.
pub const DEFAULT_MAX_TTL: Duration = Duration::from_secs(48 * 60 * 60);

const PEER_CONTEXT: &str = "spore/kad/peer-record/v1";
const VALUE_CONTEXT: &str = "spore/kad/value-record/v1";
const PROVIDER_CONTEXT: &str = "spore/kad/provider-record/v1";
/// Derive-key domain of [`ValueRecord::key_for`].
const VALUE_KEY_DOMAIN: &str = "spore/kad/value/v1";

/// The network parameters a record is checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordLimits {
    /// How far past `now` a record may expire. Default [`DEFAULT_MAX_TTL`] (48 h): long enough
    /// that a publisher republishing every few hours never lets its record lapse, short enough
    /// that a record whose publisher has gone disappears within two days.
    pub max_ttl: Duration,
    /// The proof-of-work difficulty of the network; peer and provider records whose stamp falls
    /// short are rejected. Default [`Difficulty::DEFAULT`].
    pub difficulty: Difficulty,
}

impl Default for RecordLimits {
    fn default() -> Self {
        Self {
            max_ttl: DEFAULT_MAX_TTL,
            difficulty: Difficulty::DEFAULT,
        }
    }
}

/// Why a record is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// The signature does not verify for the signer named in the record.
    #[error("bad record signature")]
    BadSignature,
    /// The record expired at or before `now`.
    #[error("record expired at {expires}, now is {now} (UNIX seconds)")]
    Expired {
        /// The record's expiry.
        expires: u64,
        /// The time it was checked at.
        now: u64,
    },
    /// The record expires further in the future than the network allows.
    #[error("record expires at {expires}, later than the allowed {max} (UNIX seconds)")]
    TooFarInFuture {
        /// The record's expiry.
        expires: u64,
        /// The latest acceptable expiry (`now + max_ttl`).
        max: u64,
    },
    /// A list or byte string is longer than its bound.
    #[error("{field} has {size} entries/bytes, at most {max} allowed")]
    TooLarge {
        /// Which field.
        field: &'static str,
        /// Its size.
        size: usize,
        /// The bound.
        max: usize,
    },
    /// A value name is empty or holds a control character.
    #[error("bad value name: {reason}")]
    BadName {
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The signer's proof-of-work stamp falls short of the network's difficulty.
    #[error(transparent)]
    BadStamp(StampError),
}

fn check_size(field: &'static str, size: usize, max: usize) -> Result<(), RecordError> {
    if size > max {
        Err(RecordError::TooLarge { field, size, max })
    } else {
        Ok(())
    }
}

fn check_expiry(expires: u64, now: Instant, limits: &RecordLimits) -> Result<(), RecordError> {
    let now = now.as_secs();
    if expires <= now {
        return Err(RecordError::Expired { expires, now });
    }
    let max = now.saturating_add(limits.max_ttl.as_secs());
    if expires > max {
        return Err(RecordError::TooFarInFuture { expires, max });
    }
    Ok(())
}

fn check_name(name: &str) -> Result<(), RecordError> {
    check_size("name", name.len(), MAX_NAME_LEN)?;
    if name.is_empty() {
        return Err(RecordError::BadName { reason: "empty" });
    }
    if name.chars().any(char::is_control) {
        return Err(RecordError::BadName {
            reason: "contains a control character",
        });
    }
    Ok(())
}

fn verify_signature(
    signer: &PeerId,
    message: &[u8],
    signature: &Signature,
) -> Result<(), RecordError> {
    signer
        .verify(message, signature)
        .map_err(|_| RecordError::BadSignature)
}

fn expired(expires: u64, now: Instant) -> bool {
    expires <= now.as_secs()
}

/// Version order shared by the three record types: a higher `rank` (`seq`, or `expires` for
/// provider records) wins; equal ranks fall to the greater signature.
fn newer(rank: u64, signature: &Signature, other_rank: u64, other_signature: &Signature) -> bool {
    (rank, signature.0) > (other_rank, other_signature.0)
}

/// Where a peer can be reached, signed by the peer. Stored under [`Key::for_peer`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerRecord {
    peer: PeerId,
    stamp: Stamp,
    addrs: Vec<SocketAddr>,
    relays: Vec<PeerId>,
    seq: u64,
    expires: u64,
    signature: Signature,
}

/// This node's own [`PeerRecord`], signed when first asked for and signed again (next `seq`, new
/// expiry) once a quarter of its lifetime has passed or its addresses changed, so that what peers
/// pass on stays valid for a while. With no addresses there is no record.
#[derive(Debug)]
pub struct OwnRecord {
    keypair: Keypair,
    stamp: Stamp,
    addrs: Vec<SocketAddr>,
    relays: Vec<PeerId>,
    ttl: Duration,
    seq: u64,
    signed: Option<(PeerRecord, Instant)>,
}

impl OwnRecord {
    /// The record of `keypair`'s peer, valid for `ttl` after each signing.
    pub fn new(keypair: Keypair, stamp: Stamp, ttl: Duration) -> Self {
        Self {
            keypair,
            stamp,
            addrs: Vec::new(),
            relays: Vec::new(),
            ttl: ttl.max(Duration::from_secs(4)),
            seq: 0,
            signed: None,
        }
    }

    /// Sets the announced addresses (the first [`MAX_RECORD_ADDRS`]); the next
    /// [`get`](Self::get) signs a new version if they changed.
    pub fn set_addrs(&mut self, mut addrs: Vec<SocketAddr>) {
        addrs.truncate(MAX_RECORD_ADDRS);
        if addrs != self.addrs {
            self.addrs = addrs;
            self.signed = None;
        }
    }

    /// Sets the relays that hold a reservation for this node (the first
    /// [`MAX_RECORD_RELAYS`]); the next [`get`](Self::get) signs a new version if they changed.
    pub fn set_relays(&mut self, mut relays: Vec<PeerId>) {
        relays.truncate(MAX_RECORD_RELAYS);
        if relays != self.relays {
            self.relays = relays;
            self.signed = None;
        }
    }

    /// The current record, signed afresh if needed; `None` with neither addresses nor relays.
    pub fn get(&mut self, now: Instant) -> Option<PeerRecord> {
        if self.addrs.is_empty() && self.relays.is_empty() {
            return None;
        }
        let fresh = self
            .signed
            .as_ref()
            .is_some_and(|(_, at)| now < *at + self.ttl / 4);
        if !fresh {
            self.seq = self.seq.saturating_add(1).max(now.as_secs());
            let record = PeerRecord::new(
                &self.keypair,
                self.stamp,
                self.addrs.clone(),
                self.relays.clone(),
                self.seq,
                (now + self.ttl).as_secs(),
            );
            self.signed = Some((record, now));
        }
        self.signed.as_ref().map(|(r, _)| r.clone())
    }
}

impl PeerRecord {
    /// Builds and signs the record of `keypair`'s peer. `stamp` is its proof of work, `addrs`
    /// where to dial it (at most [`MAX_RECORD_ADDRS`]), `relays` nodes through which it can be
    /// reached when it cannot be dialled directly (at most [`MAX_RECORD_RELAYS`]), `seq` a
    /// number higher than that of any earlier record of this peer, `expires` a UNIX time.
    pub fn new(
        keypair: &Keypair,
        stamp: Stamp,
        addrs: Vec<SocketAddr>,
        relays: Vec<PeerId>,
        seq: u64,
        expires: u64,
    ) -> PeerRecord {
        let mut record = PeerRecord {
            peer: keypair.peer_id(),
            stamp,
            addrs,
            relays,
            seq,
            expires,
            signature: Signature([0; 64]),
        };
        record.signature = keypair.sign(&record.signed_message());
        record
    }

    fn signed_message(&self) -> Vec<u8> {
        signed_message(
            PEER_CONTEXT,
            &(
                &self.peer,
                &self.stamp,
                &self.addrs,
                &self.relays,
                self.seq,
                self.expires,
            ),
        )
    }

    /// Checks sizes, expiry, the stamp and the signature (see the [module docs](self)).
    pub fn verify(&self, now: Instant, limits: &RecordLimits) -> Result<(), RecordError> {
        check_size("addrs", self.addrs.len(), MAX_RECORD_ADDRS)?;
        check_size("relays", self.relays.len(), MAX_RECORD_RELAYS)?;
        check_expiry(self.expires, now, limits)?;
        self.stamp
            .verify(&self.peer, limits.difficulty)
            .map_err(RecordError::BadStamp)?;
        verify_signature(&self.peer, &self.signed_message(), &self.signature)
    }

    /// The DHT key the record is stored under: [`Key::for_peer`] of the peer.
    pub fn key(&self) -> Key {
        Key::for_peer(&self.peer)
    }

    /// Whether this record should replace `other`: same peer, and a higher `seq` (equal `seq`:
    /// greater signature bytes). Never true of a record and itself.
    pub fn supersedes(&self, other: &PeerRecord) -> bool {
        self.peer == other.peer && newer(self.seq, &self.signature, other.seq, &other.signature)
    }

    /// Whether the record has expired at `now`.
    pub fn is_expired(&self, now: Instant) -> bool {
        expired(self.expires, now)
    }

    /// The record as a lookup [`Contact`], keeping the first [`MAX_CONTACT_ADDRS`] addresses.
    pub fn to_contact(&self) -> Contact {
        Contact {
            peer: self.peer,
            stamp: self.stamp,
            addrs: self.addrs.iter().take(MAX_CONTACT_ADDRS).copied().collect(),
        }
    }

    /// The peer the record describes, which signed it.
    pub fn peer(&self) -> &PeerId {
        &self.peer
    }

    /// The peer's proof-of-work stamp.
    pub fn stamp(&self) -> Stamp {
        self.stamp
    }

    /// Addresses to dial the peer at.
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// Relays through which the peer can be reached.
    pub fn relays(&self) -> &[PeerId] {
        &self.relays
    }

    /// The sequence number: higher replaces lower.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Expiry, in UNIX seconds.
    pub fn expires(&self) -> u64 {
        self.expires
    }

    /// The peer's signature.
    pub fn signature(&self) -> &Signature {
        &self.signature
    }
}

/// A small named value, signed by its publisher. Stored under
/// [`ValueRecord::key_for`]`(publisher, name)`, so each publisher has its own namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValueRecord {
    publisher: PeerId,
    name: String,
    value: Bytes,
    seq: u64,
    expires: u64,
    signature: Signature,
}

impl ValueRecord {
    /// Builds and signs `keypair`'s value `value` under `name` (at most [`MAX_NAME_LEN`] bytes,
    /// no control characters; the value at most [`MAX_VALUE_LEN`] bytes). `seq` must exceed that
    /// of any earlier value of this name for the new one to replace it; `expires` is a UNIX time.
    pub fn new(
        keypair: &Keypair,
        name: impl Into<String>,
        value: impl Into<Bytes>,
        seq: u64,
        expires: u64,
    ) -> ValueRecord {
        let mut record = ValueRecord {
            publisher: keypair.peer_id(),
            name: name.into(),
            value: value.into(),
            seq,
            expires,
            signature: Signature([0; 64]),
        };
        record.signature = keypair.sign(&record.signed_message());
        record
    }

    fn signed_message(&self) -> Vec<u8> {
        signed_message(
            VALUE_CONTEXT,
            &(
                &self.publisher,
                &self.name,
                &self.value,
                self.seq,
                self.expires,
            ),
        )
    }

    /// The DHT key of `publisher`'s value `name`:
    /// `Key::hash("spore/kad/value/v1", [publisher, name])`.
    pub fn key_for(publisher: &PeerId, name: &str) -> Key {
        Key::hash(VALUE_KEY_DOMAIN, &[publisher.as_bytes(), name.as_bytes()])
    }

    /// The DHT key this record is stored under.
    pub fn key(&self) -> Key {
        Self::key_for(&self.publisher, &self.name)
    }

    /// Checks sizes, the name, expiry and the signature (see the [module docs](self)).
    pub fn verify(&self, now: Instant, limits: &RecordLimits) -> Result<(), RecordError> {
        check_name(&self.name)?;
        check_size("value", self.value.len(), MAX_VALUE_LEN)?;
        check_expiry(self.expires, now, limits)?;
        verify_signature(&self.publisher, &self.signed_message(), &self.signature)
    }

    /// Whether this record should replace `other`: same publisher and name (so the same key),
    /// and a higher `seq` (equal `seq`: greater signature bytes). Never true of a record and
    /// itself.
    pub fn supersedes(&self, other: &ValueRecord) -> bool {
        self.publisher == other.publisher
            && self.name == other.name
            && newer(self.seq, &self.signature, other.seq, &other.signature)
    }

    /// Whether the record has expired at `now`.
    pub fn is_expired(&self, now: Instant) -> bool {
        expired(self.expires, now)
    }

    /// The node that published and signed the value.
    pub fn publisher(&self) -> &PeerId {
        &self.publisher
    }

    /// The value's name in its publisher's namespace.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The value.
    pub fn value(&self) -> &Bytes {
        &self.value
    }

    /// The sequence number: higher replaces lower.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Expiry, in UNIX seconds.
    pub fn expires(&self) -> u64 {
        self.expires
    }

    /// The publisher's signature.
    pub fn signature(&self) -> &Signature {
        &self.signature
    }
}

/// A node's statement that it serves the content with BLAKE3 hash `content`, signed by that
/// node so that nobody can claim another node provides something. Stored under `Key(content)`.
///
/// Provider records carry no sequence number: a provider refreshes its record by publishing one
/// that expires later, which replaces the earlier one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderRecord {
    content: [u8; 32],
    provider: PeerId,
    stamp: Stamp,
    addrs: Vec<SocketAddr>,
    expires: u64,
    signature: Signature,
}

impl ProviderRecord {
    /// Builds and signs the statement that `keypair`'s node, with proof of work `stamp`,
    /// serves `content` at `addrs` (at most [`MAX_RECORD_ADDRS`]) until `expires` (UNIX time).
    pub fn new(
        keypair: &Keypair,
        stamp: Stamp,
        content: [u8; 32],
        addrs: Vec<SocketAddr>,
        expires: u64,
    ) -> ProviderRecord {
        let mut record = ProviderRecord {
            content,
            provider: keypair.peer_id(),
            stamp,
            addrs,
            expires,
            signature: Signature([0; 64]),
        };
        record.signature = keypair.sign(&record.signed_message());
        record
    }

    fn signed_message(&self) -> Vec<u8> {
        signed_message(
            PROVIDER_CONTEXT,
            &(
                &self.content,
                &self.provider,
                &self.stamp,
                &self.addrs,
                self.expires,
            ),
        )
    }

    /// The DHT key the record is stored under: the content hash itself.
    pub fn key(&self) -> Key {
        Key(self.content)
    }

    /// Checks sizes, expiry, the stamp and the signature (see the [module docs](self)).
    pub fn verify(&self, now: Instant, limits: &RecordLimits) -> Result<(), RecordError> {
        check_size("addrs", self.addrs.len(), MAX_RECORD_ADDRS)?;
        check_expiry(self.expires, now, limits)?;
        self.stamp
            .verify(&self.provider, limits.difficulty)
            .map_err(RecordError::BadStamp)?;
        verify_signature(&self.provider, &self.signed_message(), &self.signature)
    }

    /// Whether this record should replace `other`: same content and provider, and a later
    /// expiry (equal expiry: greater signature bytes). Never true of a record and itself.
    pub fn supersedes(&self, other: &ProviderRecord) -> bool {
        self.content == other.content
            && self.provider == other.provider
            && newer(
                self.expires,
                &self.signature,
                other.expires,
                &other.signature,
            )
    }

    /// Whether the record has expired at `now`.
    pub fn is_expired(&self, now: Instant) -> bool {
        expired(self.expires, now)
    }

    /// The BLAKE3 hash of the content provided.
    pub fn content(&self) -> &[u8; 32] {
        &self.content
    }

    /// The node that serves the content and signed the record.
    pub fn provider(&self) -> &PeerId {
        &self.provider
    }

    /// The provider's proof-of-work stamp.
    pub fn stamp(&self) -> Stamp {
        self.stamp
    }

    /// Addresses to dial the provider at.
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// Expiry, in UNIX seconds.
    pub fn expires(&self) -> u64 {
        self.expires
    }

    /// The provider's signature.
    pub fn signature(&self) -> &Signature {
        &self.signature
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const NOW: u64 = 1_700_000_000;
    const D: Difficulty = Difficulty(8);

    /// A named change to a record.
    type Tamper<'a, T> = (&'static str, Box<dyn Fn(&mut T) + 'a>);

    fn now() -> Instant {
        Instant::from_micros(NOW * 1_000_000)
    }

    fn limits() -> RecordLimits {
        RecordLimits {
            difficulty: D,
            ..RecordLimits::default()
        }
    }

    fn key(seed: u8) -> Keypair {
        Keypair::from_secret_bytes([seed; 32])
    }

    fn stamp(k: &Keypair) -> Stamp {
        Stamp::mint(&k.peer_id(), D)
    }

    fn addrs(n: usize) -> Vec<SocketAddr> {
        (0..n)
            .map(|i| SocketAddr::from(([192, 0, 2, 1], 4000 + i as u16)))
            .collect()
    }

    fn peer_record(seq: u64) -> PeerRecord {
        let k = key(1);
        PeerRecord::new(
            &k,
            stamp(&k),
            addrs(2),
            vec![key(2).peer_id()],
            seq,
            NOW + 3600,
        )
    }

    fn value_record(seq: u64) -> ValueRecord {
        ValueRecord::new(&key(1), "profile", &b"hello"[..], seq, NOW + 3600)
    }

    fn provider_record(expires: u64) -> ProviderRecord {
        let k = key(1);
        ProviderRecord::new(&k, stamp(&k), [7; 32], addrs(1), expires)
    }

    #[test]
    fn signed_records_verify() {
        peer_record(1).verify(now(), &limits()).unwrap();
        value_record(1).verify(now(), &limits()).unwrap();
        provider_record(NOW + 60).verify(now(), &limits()).unwrap();
    }

    #[test]
    fn keys() {
        let p = peer_record(1);
        assert_eq!(p.key(), Key::for_peer(&key(1).peer_id()));
        let v = value_record(1);
        assert_eq!(v.key(), ValueRecord::key_for(&key(1).peer_id(), "profile"));
        assert_ne!(v.key(), ValueRecord::key_for(&key(2).peer_id(), "profile"));
        assert_ne!(v.key(), ValueRecord::key_for(&key(1).peer_id(), "profile2"));
        assert_eq!(provider_record(NOW + 60).key(), Key([7; 32]));
    }

    #[test]
    fn tampering_with_any_peer_record_field_breaks_the_signature() {
        let l = RecordLimits {
            difficulty: Difficulty::NONE,
            ..limits()
        };
        let good = peer_record(5);
        let other = key(3);
        let tampered: Vec<Tamper<'_, PeerRecord>> = vec![
            ("peer", Box::new(|r| r.peer = other.peer_id())),
            ("stamp", Box::new(|r| r.stamp.nonce ^= 1)),
            ("addrs", Box::new(|r| r.addrs[0].set_port(1))),
            ("addrs len", Box::new(|r| r.addrs.push(addrs(3)[2]))),
            ("relays", Box::new(|r| r.relays.clear())),
            ("seq", Box::new(|r| r.seq += 1)),
            ("expires", Box::new(|r| r.expires += 1)),
            ("signature", Box::new(|r| r.signature.0[10] ^= 1)),
        ];
        for (field, f) in tampered {
            let mut r = good.clone();
            f(&mut r);
            assert_eq!(
                r.verify(now(), &l),
                Err(RecordError::BadSignature),
                "{field}"
            );
        }
    }

    #[test]
    fn tampering_with_any_value_record_field_breaks_the_signature() {
        let good = value_record(5);
        let other = key(3);
        let tampered: Vec<Tamper<'_, ValueRecord>> = vec![
            ("publisher", Box::new(|r| r.publisher = other.peer_id())),
            ("name", Box::new(|r| r.name.push('x'))),
            (
                "value",
                Box::new(|r| r.value = Bytes::from_static(b"hellO")),
            ),
            ("seq", Box::new(|r| r.seq -= 1)),
            ("expires", Box::new(|r| r.expires -= 1)),
            ("signature", Box::new(|r| r.signature.0[63] ^= 0x10)),
        ];
        for (field, f) in tampered {
            let mut r = good.clone();
            f(&mut r);
            assert_eq!(
                r.verify(now(), &limits()),
                Err(RecordError::BadSignature),
                "{field}"
            );
        }
    }

    #[test]
    fn tampering_with_any_provider_record_field_breaks_the_signature() {
        let l = RecordLimits {
            difficulty: Difficulty::NONE,
            ..limits()
        };
        let good = provider_record(NOW + 60);
        let other = key(3);
        let tampered: Vec<Tamper<'_, ProviderRecord>> = vec![
            ("content", Box::new(|r| r.content[31] ^= 1)),
            ("provider", Box::new(|r| r.provider = other.peer_id())),
            ("stamp", Box::new(|r| r.stamp.nonce += 1)),
            ("addrs", Box::new(|r| r.addrs.clear())),
            ("expires", Box::new(|r| r.expires += 100)),
            ("signature", Box::new(|r| r.signature.0[0] ^= 0x80)),
        ];
        for (field, f) in tampered {
            let mut r = good.clone();
            f(&mut r);
            assert_eq!(
                r.verify(now(), &l),
                Err(RecordError::BadSignature),
                "{field}"
            );
        }
    }

    #[test]
    fn a_signature_does_not_carry_over_to_another_record_type() {
        // Same signer, same bytes after the context: only the context differs.
        let k = key(1);
        let p = PeerRecord::new(&k, stamp(&k), vec![], vec![], 1, NOW + 60);
        let mut forged = p.clone();
        forged.signature = k.sign(&signed_message(
            VALUE_CONTEXT,
            &(&p.peer, &p.stamp, &p.addrs, &p.relays, p.seq, p.expires),
        ));
        assert_eq!(
            forged.verify(now(), &limits()),
            Err(RecordError::BadSignature)
        );
    }

    #[test]
    fn expiry_bounds() {
        let k = key(1);
        let at = |expires| ValueRecord::new(&k, "n", Bytes::new(), 1, expires);
        assert_eq!(
            at(NOW).verify(now(), &limits()),
            Err(RecordError::Expired {
                expires: NOW,
                now: NOW
            })
        );
        assert!(at(NOW).is_expired(now()));
        assert!(!at(NOW + 1).is_expired(now()));
        at(NOW + 1).verify(now(), &limits()).unwrap();
        let max = NOW + 48 * 3600;
        at(max).verify(now(), &limits()).unwrap();
        assert_eq!(
            at(max + 1).verify(now(), &limits()),
            Err(RecordError::TooFarInFuture {
                expires: max + 1,
                max
            })
        );
        // No overflow at the end of time, or with an unbounded TTL.
        let end = Instant::from_micros(u64::MAX);
        assert!(matches!(
            at(u64::MAX).verify(end, &limits()),
            Err(RecordError::TooFarInFuture { .. })
        ));
        let unbounded = RecordLimits {
            max_ttl: Duration::MAX,
            ..limits()
        };
        at(u64::MAX).verify(end, &unbounded).unwrap();
        assert!(matches!(
            at(end.as_secs()).verify(end, &unbounded),
            Err(RecordError::Expired { .. })
        ));
        let p = PeerRecord::new(&k, stamp(&k), vec![], vec![], 1, u64::MAX);
        assert!(matches!(
            p.verify(now(), &limits()),
            Err(RecordError::TooFarInFuture { .. })
        ));
    }

    #[test]
    fn oversized_fields_are_rejected() {
        let k = key(1);
        let s = stamp(&k);
        let e = NOW + 60;
        let too_large = |field, size, max| Err(RecordError::TooLarge { field, size, max });
        let p = PeerRecord::new(&k, s, addrs(9), vec![], 1, e);
        assert_eq!(p.verify(now(), &limits()), too_large("addrs", 9, 8));
        PeerRecord::new(&k, s, addrs(8), vec![], 1, e)
            .verify(now(), &limits())
            .unwrap();
        let relays = (0..5).map(|i| key(i).peer_id()).collect();
        let p = PeerRecord::new(&k, s, vec![], relays, 1, e);
        assert_eq!(p.verify(now(), &limits()), too_large("relays", 5, 4));
        let v = ValueRecord::new(&k, "n", vec![0u8; 1025], 1, e);
        assert_eq!(v.verify(now(), &limits()), too_large("value", 1025, 1024));
        ValueRecord::new(&k, "n", vec![0u8; 1024], 1, e)
            .verify(now(), &limits())
            .unwrap();
        let v = ValueRecord::new(&k, "é".repeat(33), Bytes::new(), 1, e);
        assert_eq!(v.verify(now(), &limits()), too_large("name", 66, 64));
        ValueRecord::new(&k, "a".repeat(64), Bytes::new(), 1, e)
            .verify(now(), &limits())
            .unwrap();
        let pr = ProviderRecord::new(&k, s, [0; 32], addrs(9), e);
        assert_eq!(pr.verify(now(), &limits()), too_large("addrs", 9, 8));
    }

    #[test]
    fn bad_names_are_rejected() {
        let k = key(1);
        for name in ["", "a\nb", "tab\there", "\u{7f}", "c1\u{85}"] {
            let v = ValueRecord::new(&k, name, Bytes::new(), 1, NOW + 60);
            assert!(
                matches!(v.verify(now(), &limits()), Err(RecordError::BadName { .. })),
                "{name:?}"
            );
        }
        for name in ["files/photos", "ünïcödé ✓", "a b"] {
            ValueRecord::new(&k, name, Bytes::new(), 1, NOW + 60)
                .verify(now(), &limits())
                .unwrap();
        }
    }

    #[test]
    fn weak_stamps_are_rejected() {
        let k = key(1);
        // Find a nonce that falls short of the difficulty (half of all nonces do at d = 1).
        let weak = (0..)
            .map(|nonce| Stamp { nonce })
            .find(|s| s.work(&k.peer_id()) < u32::from(D.0))
            .unwrap();
        let p = PeerRecord::new(&k, weak, vec![], vec![], 1, NOW + 60);
        assert!(matches!(
            p.verify(now(), &limits()),
            Err(RecordError::BadStamp(_))
        ));
        let pr = ProviderRecord::new(&k, weak, [1; 32], vec![], NOW + 60);
        assert!(matches!(
            pr.verify(now(), &limits()),
            Err(RecordError::BadStamp(_))
        ));
        // The same records are fine on a network that asks for no work.
        let none = RecordLimits {
            difficulty: Difficulty::NONE,
            ..limits()
        };
        p.verify(now(), &none).unwrap();
        pr.verify(now(), &none).unwrap();
    }

    #[test]
    fn supersedes() {
        let (v1, v2) = (value_record(1), value_record(2));
        assert!(v2.supersedes(&v1));
        assert!(!v1.supersedes(&v2));
        assert!(!v1.supersedes(&v1));
        // Equal seq, different contents: exactly one of the two wins, on every node.
        let other = ValueRecord::new(&key(1), "profile", &b"bye"[..], 1, NOW + 3600);
        assert!(other.supersedes(&v1) != v1.supersedes(&other));
        // A different name or publisher never supersedes, whatever the seq.
        let renamed = ValueRecord::new(&key(1), "other", Bytes::new(), 9, NOW + 3600);
        assert!(!renamed.supersedes(&v1));
        let foreign = ValueRecord::new(&key(2), "profile", Bytes::new(), 9, NOW + 3600);
        assert!(!foreign.supersedes(&v1));

        let (p1, p2) = (peer_record(1), peer_record(2));
        assert!(p2.supersedes(&p1) && !p1.supersedes(&p2) && !p1.supersedes(&p1));
        let k = key(2);
        let q = PeerRecord::new(&k, stamp(&k), vec![], vec![], 9, NOW + 60);
        assert!(!q.supersedes(&p1));
        let p1b = PeerRecord::new(&key(1), stamp(&key(1)), addrs(1), vec![], 1, NOW + 60);
        assert!(p1b.supersedes(&p1) != p1.supersedes(&p1b));

        let (a, b) = (provider_record(NOW + 60), provider_record(NOW + 120));
        assert!(b.supersedes(&a) && !a.supersedes(&b) && !a.supersedes(&a));
        let other_content =
            ProviderRecord::new(&key(1), stamp(&key(1)), [8; 32], vec![], NOW + 999);
        assert!(!other_content.supersedes(&a));
    }

    #[test]
    fn contact_keeps_the_first_addresses() {
        let k = key(1);
        let p = PeerRecord::new(&k, stamp(&k), addrs(8), vec![], 1, NOW + 60);
        let c = p.to_contact();
        assert_eq!(c.peer, k.peer_id());
        assert_eq!(c.stamp, stamp(&k));
        assert_eq!(c.addrs.to_vec(), addrs(MAX_CONTACT_ADDRS));
    }

    #[test]
    fn postcard_round_trip() {
        let p = peer_record(3);
        let back: PeerRecord = postcard::from_bytes(&postcard::to_allocvec(&p).unwrap()).unwrap();
        assert_eq!(back, p);
        back.verify(now(), &limits()).unwrap();

        let v = value_record(3);
        let back: ValueRecord = postcard::from_bytes(&postcard::to_allocvec(&v).unwrap()).unwrap();
        assert_eq!(back, v);
        back.verify(now(), &limits()).unwrap();

        let pr = provider_record(NOW + 5);
        let back: ProviderRecord =
            postcard::from_bytes(&postcard::to_allocvec(&pr).unwrap()).unwrap();
        assert_eq!(back, pr);
        back.verify(now(), &limits()).unwrap();
    }

    #[test]
    fn the_signed_message_is_the_context_then_the_encoding_without_signature() {
        // Documented so another implementation can reproduce it.
        let v = value_record(3);
        let encoded = postcard::to_allocvec(&v).unwrap();
        let body = &encoded[..encoded.len() - 65]; // 1 length byte + 64 signature bytes
        let mut expected = vec![VALUE_CONTEXT.len() as u8];
        expected.extend_from_slice(VALUE_CONTEXT.as_bytes());
        expected.extend_from_slice(body);
        assert_eq!(v.signed_message(), expected);
    }

    fn any_decoded<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Option<T> {
        postcard::from_bytes(bytes).ok()
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_verify(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let none = RecordLimits { difficulty: Difficulty::NONE, max_ttl: Duration::MAX };
            let early = Instant::ZERO;
            if let Some(r) = any_decoded::<PeerRecord>(&bytes) {
                prop_assert!(r.verify(early, &none).is_err());
                prop_assert!(r.verify(now(), &limits()).is_err());
            }
            if let Some(r) = any_decoded::<ValueRecord>(&bytes) {
                prop_assert!(r.verify(early, &none).is_err());
                prop_assert!(r.verify(now(), &limits()).is_err());
            }
            if let Some(r) = any_decoded::<ProviderRecord>(&bytes) {
                prop_assert!(r.verify(early, &none).is_err());
                prop_assert!(r.verify(now(), &limits()).is_err());
            }
        }

        #[test]
        fn flipping_a_byte_of_a_signed_record_never_verifies(
            which in 0usize..3, pos in any::<prop::sample::Index>(), bit in 0u8..8,
        ) {
            let l = RecordLimits { difficulty: Difficulty::NONE, ..limits() };
            let mut bytes = match which {
                0 => postcard::to_allocvec(&peer_record(1)).unwrap(),
                1 => postcard::to_allocvec(&value_record(1)).unwrap(),
                _ => postcard::to_allocvec(&provider_record(NOW + 60)).unwrap(),
            };
            let i = pos.index(bytes.len());
            bytes[i] ^= 1 << bit;
            let ok = match which {
                0 => any_decoded::<PeerRecord>(&bytes).is_some_and(|r| r.verify(now(), &l).is_ok()),
                1 => any_decoded::<ValueRecord>(&bytes).is_some_and(|r| r.verify(now(), &l).is_ok()),
                _ => any_decoded::<ProviderRecord>(&bytes).is_some_and(|r| r.verify(now(), &l).is_ok()),
            };
            prop_assert!(!ok);
        }
    }
}

//! Node identity: an Ed25519 keypair, the [`PeerId`] derived from it, and signatures.
//!
//! A [`PeerId`] *is* the 32-byte Ed25519 public key. Its text form is lowercase RFC 4648 base32
//! without padding (52 characters), which is case-insensitive to read and safe in URLs, file names
//! and DNS labels.

use std::fmt;
use std::str::FromStr;

use data_encoding::{Encoding, Specification};
use ed25519_dalek::Signer;
use serde::{Deserialize, Serialize};

/// Length of a [`PeerId`] in bytes.
pub const PEER_ID_LEN: usize = 32;
/// Length of a [`PeerId`] in its text form.
pub const PEER_ID_TEXT_LEN: usize = 52;

static BASE32: std::sync::LazyLock<Encoding> = std::sync::LazyLock::new(|| {
    let mut spec = Specification::new();
    spec.symbols.push_str("abcdefghijklmnopqrstuvwxyz234567");
    // Accept upper case on input; we always print lower case.
    spec.translate.from.push_str("ABCDEFGHIJKLMNOPQRSTUVWXYZ");
    spec.translate.to.push_str("abcdefghijklmnopqrstuvwxyz");
    spec.encoding()
        .expect("static base32 specification is valid")
});

fn base32() -> &'static Encoding {
    &BASE32
}

/// The identity of a node: its Ed25519 public key.
///
/// [`PeerId::from_bytes`] and text parsing check that the bytes are a valid Ed25519 public key
/// (a point on the curve), so ids typed by people fail early; ids decoded from the wire are not
/// checked (see the `Deserialize` impl), and [`PeerId::verify`] rejects any signature for an id
/// that is not a point.
///
/// Serialized as its text form in human-readable formats (JSON, TOML) and as 32 raw bytes in
/// binary ones (the wire format).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PeerId([u8; PEER_ID_LEN]);

ord_by_bytes32!(PeerId);

impl Serialize for PeerId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.collect_str(self)
        } else {
            self.0.serialize(s)
        }
    }
}

impl<'de> Deserialize<'de> for PeerId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
            s.parse().map_err(serde::de::Error::custom)
        } else {
            // Binary (wire) form: taken as is. Checking that the bytes are a curve point costs a
            // field inversion per id, and lookups carry dozens of ids per message; nothing is
            // trusted on the strength of an id alone anyway — a signature check or the TLS
            // handshake rejects a non-point — so the check would buy nothing.
            Ok(Self(<[u8; PEER_ID_LEN]>::deserialize(d)?))
        }
    }
}

impl PeerId {
    /// Builds a `PeerId` from raw public-key bytes, checking they are a valid Ed25519 key.
    pub fn from_bytes(bytes: [u8; PEER_ID_LEN]) -> Result<Self, PeerIdError> {
        ed25519_dalek::VerifyingKey::from_bytes(&bytes).map_err(|_| PeerIdError::NotAKey)?;
        Ok(Self(bytes))
    }

    /// The raw 32 bytes of the public key.
    pub fn as_bytes(&self) -> &[u8; PEER_ID_LEN] {
        &self.0
    }

    /// Checks `signature` over `message` against this public key (strict verification: no
    /// malleable or small-order signatures).
    ///
    /// Signatures that verified recently are remembered (see [`verified`]), so a record that
    /// arrives again — from another peer, in another answer — costs a hash instead of a
    /// verification.
    pub fn verify(&self, message: &[u8], signature: &Signature) -> Result<(), SignatureError> {
        let digest = verified::digest(self, message, signature);
        if verified::contains(&digest) {
            return Ok(());
        }
        let key = ed25519_dalek::VerifyingKey::from_bytes(&self.0)
            .map_err(|_| SignatureError::Invalid)?;
        let sig = ed25519_dalek::Signature::from_bytes(&signature.0);
        key.verify_strict(message, &sig)
            .map_err(|_| SignatureError::Invalid)?;
        verified::insert(digest);
        Ok(())
    }

    /// A short prefix of the text form, for logs and tables.
    pub fn short(&self) -> String {
        let mut s = self.to_string();
        s.truncate(10);
        s
    }
}

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&base32().encode(&self.0))
    }
}

impl fmt::Debug for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PeerId({})", self.short())
    }
}

impl FromStr for PeerId {
    type Err = PeerIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != PEER_ID_TEXT_LEN {
            return Err(PeerIdError::Length { found: s.len() });
        }
        let enc = base32();
        let bytes = enc.decode(s.as_bytes()).map_err(|e| match e.kind {
            data_encoding::DecodeKind::Trailing => PeerIdError::NonCanonical,
            _ => PeerIdError::Character {
                position: e.position,
            },
        })?;
        let bytes: [u8; PEER_ID_LEN] = bytes
            .try_into()
            .map_err(|_| PeerIdError::Length { found: s.len() })?;
        Self::from_bytes(bytes)
    }
}

/// Why a text or byte string is not a [`PeerId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PeerIdError {
    /// The text has the wrong length.
    #[error("a peer id is {PEER_ID_TEXT_LEN} base32 characters, this one has {found}")]
    Length {
        /// How many characters were given.
        found: usize,
    },
    /// The text holds a character outside the base32 alphabet.
    #[error("invalid character at position {position} (a peer id uses a-z and 2-7)")]
    Character {
        /// Byte offset of the first bad character.
        position: usize,
    },
    /// The text decodes but is not the canonical spelling of its bytes.
    #[error("the last character of the peer id has stray low bits; it is not a canonical id")]
    NonCanonical,
    /// The bytes are not a valid Ed25519 public key.
    #[error("the bytes are not a valid Ed25519 public key")]
    NotAKey,
}

/// The message a signature covers: `postcard((context, fields))`, the context naming what is
/// signed so that a signature over one kind of object never verifies as another. Every signed
/// object in spore (records, pub/sub messages, search hits, document changes) uses it.
pub(crate) fn signed_message<T: Serialize>(context: &'static str, fields: &T) -> Vec<u8> {
    // Encoding plain data (integers, byte arrays, strings, Vecs) into a Vec cannot fail; if it
    // ever did, the fallback is a message no real signature covers, so nothing verifies,
    // rather than a panic.
    postcard::to_allocvec(&(context, fields)).unwrap_or_else(|_| context.as_bytes().to_vec())
}

/// An Ed25519 signature (64 bytes).
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature(#[serde(with = "sig_bytes")] pub [u8; 64]);

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Signature({:02x}{:02x}{:02x}{:02x}…)",
            self.0[0], self.0[1], self.0[2], self.0[3]
        )
    }
}

mod sig_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(v: &[u8; 64], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 64], D::Error> {
        let v: &[u8] = <&[u8]>::deserialize(d)?;
        v.try_into()
            .map_err(|_| serde::de::Error::invalid_length(v.len(), &"64 bytes"))
    }
}

/// A signature did not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignatureError {
    /// The signature is not valid for this key and message.
    #[error("invalid signature")]
    Invalid,
}

/// A node's secret key and its public [`PeerId`].
#[derive(Clone)]
pub struct Keypair {
    secret: ed25519_dalek::SigningKey,
    id: PeerId,
}

impl Keypair {
    /// Builds a keypair from a 32-byte secret seed. The caller supplies the randomness (an OS RNG
    /// in the runtime, a seeded RNG in tests and the simulator).
    pub fn from_secret_bytes(secret: [u8; 32]) -> Self {
        let secret = ed25519_dalek::SigningKey::from_bytes(&secret);
        let id = PeerId(secret.verifying_key().to_bytes());
        Self { secret, id }
    }

    /// Generates a keypair from an RNG.
    pub fn generate(rng: &mut impl rand_core::CryptoRngCore) -> Self {
        let mut seed = [0u8; 32];
        rng.fill_bytes(&mut seed);
        Self::from_secret_bytes(seed)
    }

    /// The 32-byte secret seed, for storage. Handle with care.
    pub fn secret_bytes(&self) -> [u8; 32] {
        self.secret.to_bytes()
    }

    /// The PKCS#8 v2 DER encoding of the key, as TLS libraries take it.
    pub fn to_pkcs8_der(&self) -> Vec<u8> {
        use ed25519_dalek::pkcs8::EncodePrivateKey;
        // Encoding a valid in-memory key into a Vec cannot fail.
        self.secret
            .to_pkcs8_der()
            .map(|doc| doc.as_bytes().to_vec())
            .unwrap_or_default()
    }

    /// This node's public identity.
    pub fn peer_id(&self) -> PeerId {
        self.id
    }

    /// Signs `message`.
    pub fn sign(&self, message: &[u8]) -> Signature {
        Signature(self.secret.sign(message).to_bytes())
    }
}

impl fmt::Debug for Keypair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keypair")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(seed: u8) -> Keypair {
        Keypair::from_secret_bytes([seed; 32])
    }

    #[test]
    fn text_round_trip() {
        let id = key(7).peer_id();
        let text = id.to_string();
        assert_eq!(text.len(), PEER_ID_TEXT_LEN);
        assert_eq!(text, text.to_lowercase());
        assert_eq!(text.parse::<PeerId>().unwrap(), id);
        assert_eq!(text.to_uppercase().parse::<PeerId>().unwrap(), id);
    }

    #[test]
    fn parse_errors_are_specific() {
        assert_eq!(
            "abc".parse::<PeerId>(),
            Err(PeerIdError::Length { found: 3 })
        );
        let mut bad = key(1).peer_id().to_string();
        bad.replace_range(5..6, "1");
        assert_eq!(
            bad.parse::<PeerId>(),
            Err(PeerIdError::Character { position: 5 })
        );
        let mut stray = key(1).peer_id().to_string();
        // The last character carries 4 padding bits; 'z' sets some of them.
        stray.replace_range(51..52, "z");
        assert_eq!(stray.parse::<PeerId>(), Err(PeerIdError::NonCanonical));
    }

    #[test]
    fn sign_and_verify() {
        let k = key(3);
        let sig = k.sign(b"hello");
        k.peer_id().verify(b"hello", &sig).unwrap();
        assert!(k.peer_id().verify(b"hellO", &sig).is_err());
        assert!(key(4).peer_id().verify(b"hello", &sig).is_err());
    }

    proptest! {
        #[test]
        fn any_seed_round_trips(seed in any::<[u8; 32]>()) {
            let id = Keypair::from_secret_bytes(seed).peer_id();
            prop_assert_eq!(id.to_string().parse::<PeerId>().unwrap(), id);
            prop_assert_eq!(PeerId::from_bytes(*id.as_bytes()).unwrap(), id);
        }

        #[test]
        fn parsing_never_panics(s in "\\PC{0,80}") {
            let _ = s.parse::<PeerId>();
        }
    }
}

/// A bounded memory of signatures that verified, per thread.
///
/// Verifying an Ed25519 signature costs tens of microseconds; the same signed record reaches a
/// node many times (every lookup that passes it, every peer exchange that carries it). Only
/// successful verifications are remembered, under a BLAKE3 digest of public key, message and
/// signature, so a hit means exactly these bytes verified before: the answer is the same as
/// verifying again. Two generations of at most [`capacity`](set_capacity) digests each: when the
/// current one is full it becomes the previous one, and a hit in the previous one is carried
/// over, so memory stays bounded and recently used entries survive.
pub mod verified {
    use std::cell::RefCell;
    use std::collections::HashSet;

    use super::{PeerId, Signature};

    /// Default digests per generation: about 1 MiB per thread in all.
    pub const DEFAULT_CAPACITY: usize = 16_384;

    struct Memory {
        current: HashSet<[u8; 32]>,
        previous: HashSet<[u8; 32]>,
        capacity: usize,
    }

    thread_local! {
        static MEMORY: RefCell<Memory> = RefCell::new(Memory {
            current: HashSet::new(),
            previous: HashSet::new(),
            capacity: DEFAULT_CAPACITY,
        });
    }

    /// Sets this thread's capacity per generation (0 turns the memory off). A simulator that
    /// runs thousands of nodes on one thread wants more than a single node does.
    pub fn set_capacity(capacity: usize) {
        MEMORY.with(|m| {
            let mut m = m.borrow_mut();
            m.capacity = capacity;
            m.current.clear();
            m.previous.clear();
        });
    }

    pub(super) fn digest(key: &PeerId, message: &[u8], signature: &Signature) -> [u8; 32] {
        let mut h = blake3::Hasher::new_derive_key("spore/identity/verified/v1");
        h.update(key.as_bytes());
        h.update(&signature.0);
        h.update(&(message.len() as u64).to_le_bytes());
        h.update(message);
        *h.finalize().as_bytes()
    }

    pub(super) fn contains(digest: &[u8; 32]) -> bool {
        MEMORY.with(|m| {
            let mut m = m.borrow_mut();
            if m.current.contains(digest) {
                return true;
            }
            if m.previous.remove(digest) {
                insert_into(&mut m, *digest);
                return true;
            }
            false
        })
    }

    pub(super) fn insert(digest: [u8; 32]) {
        MEMORY.with(|m| insert_into(&mut m.borrow_mut(), digest));
    }

    fn insert_into(m: &mut Memory, digest: [u8; 32]) {
        if m.capacity == 0 {
            return;
        }
        if m.current.len() >= m.capacity {
            m.previous = std::mem::take(&mut m.current);
        }
        m.current.insert(digest);
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use crate::identity::Keypair;

        #[test]
        fn remembers_only_what_verified_and_stays_bounded() {
            set_capacity(4);
            let key = Keypair::from_secret_bytes([3; 32]);
            let sig = key.sign(b"message");
            let id = key.peer_id();
            assert!(id.verify(b"message", &sig).is_ok());
            assert!(contains(&digest(&id, b"message", &sig)));
            // A bad signature is never remembered, and a remembered one does not excuse it.
            let mut bad = sig;
            bad.0[0] ^= 1;
            assert!(id.verify(b"message", &bad).is_err());
            assert!(id.verify(b"other", &sig).is_err());
            assert!(!contains(&digest(&id, b"message", &bad)));
            for n in 0..20u8 {
                let m = [n];
                let s = key.sign(&m);
                assert!(id.verify(&m, &s).is_ok());
            }
            MEMORY.with(|m| {
                let m = m.borrow();
                assert!(m.current.len() <= 4 && m.previous.len() <= 4);
            });
            set_capacity(DEFAULT_CAPACITY);
        }
    }
}

//! Adversarial behaviour: filters on what an adversarial node sends. The node itself runs the
//! real protocol code; only its outgoing messages are rewritten or dropped.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use spore_core::kad::record::ValueRecord;
use spore_core::kad::{self, Contact, Response};
use spore_core::pubsub::{self, SignedMessage};
use spore_core::swarm;
use spore_core::wire::Message;

use crate::Tamper;

/// The answer of a kad response, if `msg` is one.
fn response(msg: &mut Message) -> Option<&mut Response> {
    match msg {
        Message::Kad(kad::Message::Response { response, .. }) => Some(response),
        _ => None,
    }
}

/// An eclipse Sybil: every answer names the Sybils closest to the target as the closest nodes
/// it knows, and no answer carries a record.
pub(crate) fn eclipse(sybils: Vec<Contact>) -> Tamper {
    Box::new(move |_, msg| {
        if let Some(r) = response(msg) {
            match r {
                Response::Nodes { closer } => *closer = sybils.clone(),
                Response::Value { record, closer } => {
                    *record = None;
                    *closer = sybils.clone();
                }
                Response::Providers { providers, closer } => {
                    providers.clear();
                    *closer = sybils.clone();
                }
                Response::Peer { record, closer } => {
                    *record = None;
                    *closer = sybils.clone();
                }
                _ => {}
            }
        }
        true
    })
}

/// A record poisoner: a share `rate` of the values it hands out (all of them at 1; below 1 it
/// is camouflaged) have their value changed under the publisher's signature, decided by its
/// own seeded coin. With `colluders`, every answer names them as the closest nodes, so lookups
/// are steered from one poisoner to the next.
pub(crate) fn poisoner(rate: f64, seed: u64, colluders: Vec<Contact>) -> Tamper {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    Box::new(move |_, msg| {
        if let Some(r) = response(msg) {
            if let Response::Value {
                record: record @ Some(_),
                ..
            } = r
                && crate::network::unit(&mut rng) < rate
            {
                *record = record.as_ref().and_then(forged);
            }
            if !colluders.is_empty()
                && let Response::Nodes { closer } | Response::Value { closer, .. } = r
            {
                *closer = colluders.clone();
            }
        }
        true
    })
}

/// `record` with one byte of its value (or, for an empty value, of its signature) flipped: the
/// only way to make a record its publisher never signed.
fn forged(record: &ValueRecord) -> Option<ValueRecord> {
    let mut bytes = postcard::to_allocvec(record).ok()?;
    let needle: &[u8] = if record.value().is_empty() {
        &record.signature().0
    } else {
        record.value()
    };
    let at = bytes.windows(needle.len()).position(|w| w == needle)?;
    bytes[at] ^= 0x01;
    postcard::from_bytes(&bytes).ok()
}

/// Drops a share `rate` of everything it sends except its handshake, decided by its own seeded
/// coin.
pub(crate) fn dropper(rate: f64, seed: u64) -> Tamper {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    Box::new(move |_, msg| {
        if matches!(msg, Message::Hello(_)) {
            return true;
        }
        crate::network::unit(&mut rng) >= rate
    })
}

/// A free rider: sends its own requests, answers none.
pub(crate) fn free_rider() -> Tamper {
    Box::new(|_, msg| {
        !matches!(
            msg,
            Message::Kad(kad::Message::Response { .. }) | Message::Pex(_)
        )
    })
}

/// A gossip dropper: subscribes, grafts and prunes like an honest node, so it stays in meshes,
/// but sends no message — neither forwarded nor in answer to IWANT — and no IHAVE.
pub(crate) fn gossip_dropper() -> Tamper {
    Box::new(|_, msg| match msg {
        Message::PubSub(pubsub::Message::Publish(_)) => false,
        Message::PubSub(pubsub::Message::Control(c)) => {
            c.ihave.clear();
            !(c.iwant.is_empty()
                && c.graft.is_empty()
                && c.prune.is_empty()
                && c.idontwant.is_empty())
        }
        _ => true,
    })
}

/// What swarm free riders' filters dropped, summed over all of them.
#[derive(Debug, Default)]
pub(crate) struct FreeRiding {
    /// `Unchoke` messages dropped.
    pub(crate) unchokes: AtomicU64,
    /// `Data` messages dropped.
    pub(crate) data: AtomicU64,
}

/// A swarm free rider, as BitTorrent's are: it takes part in the swarm like any leecher — the
/// handshake with its bitfield, announcements of what it verified (so peers want its pieces and
/// count it as a partner), interest, requests, peer exchange — but never uploads. It never
/// unchokes anyone (the `Unchoke` its choker decides on is dropped, so peers believe they are
/// choked and do not ask), and should a request reach it all the same, the `Data` it would
/// answer with is dropped too. Its peers see a member that has pieces and keeps them choked;
/// what it downloads it gets from optimistic unchokes and from seeds.
pub(crate) fn swarm_free_rider(counts: Arc<FreeRiding>) -> Tamper {
    Box::new(move |_, msg| match msg {
        Message::Swarm(swarm::Message::Unchoke { .. }) => {
            counts.unchokes.fetch_add(1, Ordering::Relaxed);
            false
        }
        Message::Swarm(swarm::Message::Data { .. }) => {
            counts.data.fetch_add(1, Ordering::Relaxed);
            false
        }
        _ => true,
    })
}

/// `message` with `marker` put in front of its data: a message its author never signed.
pub(crate) fn forge(message: &SignedMessage, marker: &[u8]) -> SignedMessage {
    let mut data = Vec::with_capacity(marker.len() + message.data().len());
    data.extend_from_slice(marker);
    data.extend_from_slice(message.data());
    message.clone().with_data(Bytes::from(data))
}

#[cfg(test)]
mod tests {
    use super::*;
    use spore_core::Keypair;
    use spore_core::kad::record::RecordLimits;
    use spore_core::time::Instant;
    use std::time::Duration;

    #[test]
    fn forged_records_fail_verification() {
        let key = Keypair::from_secret_bytes([7; 32]);
        let now = Instant::ZERO + Duration::from_secs(1_000_000);
        let expires = now.as_secs() + 3600;
        let record = ValueRecord::new(
            &key,
            "name",
            bytes::Bytes::from_static(b"value"),
            1,
            expires,
        );
        let limits = RecordLimits::default();
        record.verify(now, &limits).unwrap();
        let bad = forged(&record).unwrap();
        assert_ne!(bad.value(), record.value());
        assert!(bad.verify(now, &limits).is_err());
    }

    #[test]
    fn forged_messages_fail_verification() {
        use spore_core::pow::{Difficulty, Stamp};
        let key = Keypair::from_secret_bytes([9; 32]);
        let stamp = Stamp::mint(&key.peer_id(), Difficulty(4));
        let m = SignedMessage::new(&key, stamp, "t".into(), 7, Bytes::from_static(b"hello"));
        m.verify(Difficulty(4)).unwrap();
        let bad = forge(&m, b"SPAM");
        assert_eq!(bad.id(), m.id());
        assert_eq!(&bad.data()[..], b"SPAMhello");
        assert!(bad.verify(Difficulty(4)).is_err());
    }

    #[test]
    #[allow(clippy::single_range_in_vec_init)] // a one-range announcement is meant
    fn swarm_free_rider_never_uploads() {
        let counts = Arc::new(FreeRiding::default());
        let mut tamper = swarm_free_rider(counts.clone());
        let peer = Keypair::from_secret_bytes([1; 32]).peer_id();
        let hash = [7; 32];
        let mut keep = [
            swarm::Message::Interested { hash },
            swarm::Message::HaveUpdate {
                hash,
                ranges: vec![0..4],
            },
            swarm::Message::Request { hash, groups: 0..4 },
            swarm::Message::Choke { hash },
        ];
        for m in &mut keep {
            let mut msg = Message::Swarm(m.clone());
            assert!(tamper(peer, &mut msg), "{m:?}");
        }
        let mut drop = [
            swarm::Message::Unchoke { hash },
            swarm::Message::Data {
                hash,
                groups: 0..1,
                encoded: Bytes::from_static(b"x"),
            },
        ];
        for m in &mut drop {
            let mut msg = Message::Swarm(m.clone());
            assert!(!tamper(peer, &mut msg), "{m:?}");
        }
        assert_eq!(counts.unchokes.load(Ordering::Relaxed), 1);
        assert_eq!(counts.data.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn gossip_dropper_keeps_mesh_control_only() {
        let mut tamper = gossip_dropper();
        let peer = Keypair::from_secret_bytes([1; 32]).peer_id();
        let mut control = pubsub::Control::default();
        control.ihave.push(("t".into(), Vec::new()));
        let mut msg = Message::PubSub(pubsub::Message::Control(control.clone()));
        assert!(!tamper(peer, &mut msg), "an IHAVE alone is dropped");
        control.graft.push("t".into());
        let mut msg = Message::PubSub(pubsub::Message::Control(control));
        assert!(tamper(peer, &mut msg));
        let Message::PubSub(pubsub::Message::Control(c)) = msg else {
            unreachable!()
        };
        assert!(c.ihave.is_empty());
        assert_eq!(c.graft, ["t"]);
    }
}

//! Adversarial behaviour: filters on what an adversarial node sends. The node itself runs the
//! real protocol code; only its outgoing messages are rewritten or dropped.

use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use spore_core::kad::record::ValueRecord;
use spore_core::kad::{self, Contact, Response};
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

/// A record poisoner: every value it hands out has its value changed under the publisher's
/// signature.
pub(crate) fn poisoner() -> Tamper {
    Box::new(|_, msg| {
        if let Some(Response::Value {
            record: record @ Some(_),
            ..
        }) = response(msg)
        {
            *record = record.as_ref().and_then(forged);
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
}

//! STUN (RFC 8489) on the QUIC socket: telling STUN from QUIC, answering Binding requests, and
//! building and reading the client's requests. The wire format is `stun_codec`'s; this module
//! only decides what to say.
//!
//! A spore node answers STUN on the UDP socket its QUIC endpoint uses, so the address a STUN
//! server reports is the address at which QUIC packets from that socket leave the NAT. The two
//! protocols share the socket by the first byte of each datagram (RFC 7983, RFC 9443): STUN
//! messages start with 0–3, QUIC packets with the fixed bit `0x40` set — as long as the QUIC bit
//! is not greased, which the runtime turns off.

use std::net::SocketAddr;

use bytecodec::{DecodeExt, EncodeExt};
use stun_codec::Attribute as _;
use stun_codec::rfc5389::attributes::{
    AlternateServer, ErrorCode, Fingerprint, MappedAddress, MessageIntegrity, Nonce, Realm,
    Software, UnknownAttributes, Username, XorMappedAddress, XorMappedAddress2,
};
use stun_codec::rfc5389::errors::UnknownAttribute;
use stun_codec::rfc5389::methods::BINDING;
use stun_codec::rfc5780::attributes::{ChangeRequest, OtherAddress, ResponseOrigin, ResponsePort};
use stun_codec::{Message, MessageClass, MessageDecoder, MessageEncoder, TransactionId};

stun_codec::define_attribute_enums!(
    Attribute,
    AttributeDecoder,
    AttributeEncoder,
    [
        MappedAddress,
        Username,
        MessageIntegrity,
        ErrorCode,
        UnknownAttributes,
        Realm,
        Nonce,
        XorMappedAddress,
        XorMappedAddress2,
        Software,
        AlternateServer,
        Fingerprint,
        ResponseOrigin,
        ResponsePort,
        OtherAddress
    ]
);

// CHANGE-REQUEST is only encoded through `stun_codec`: its decoder reads the flags one bit too
// low (0x2 as "change IP", 0x1 as "change port"; RFC 5780 §7.2 says 0x4 and 0x2) while its
// encoder is right. Received, it stays a raw attribute that `answer` reads itself.
stun_codec::define_attribute_enums!(
    RequestAttribute,
    RequestAttributeDecoder,
    RequestAttributeEncoder,
    [ChangeRequest]
);

/// RFC 5780 CHANGE-REQUEST flags.
const CHANGE_IP: u32 = 0x4;
const CHANGE_PORT: u32 = 0x2;

/// The magic cookie every RFC 5389/8489 message carries in bytes 4..8.
const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xa4, 0x42];
/// A STUN header: type, length, cookie, transaction id.
const HEADER_LEN: usize = 20;
/// The largest STUN message we read or write; Binding messages are far smaller.
pub const MAX_MESSAGE_LEN: usize = 548;
/// What a spore node says it is in its answers.
const SOFTWARE: &str = "spore";

/// Whether a datagram is a STUN message rather than QUIC: first byte 0–3 (RFC 7983), the magic
/// cookie, a length that is a multiple of 4 and matches the datagram. Anything else goes to QUIC,
/// which drops what it cannot read.
pub fn is_stun(datagram: &[u8]) -> bool {
    datagram.len() >= HEADER_LEN
        && datagram.len() <= MAX_MESSAGE_LEN
        && datagram[0] < 4
        && datagram[4..8] == MAGIC_COOKIE
        && usize::from(u16::from_be_bytes([datagram[2], datagram[3]])) == datagram.len() - 20
        && datagram.len() % 4 == 0
}

/// A STUN message that [`is_stun`] let through, sorted by what to do with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// A Binding request: send `reply` back to where the request came from.
    Request {
        /// The answer (a success with the sender's address, or an error).
        reply: Vec<u8>,
    },
    /// A Binding response for the client (see [`super::probe`]).
    Response(Response),
    /// Something we do not answer (indications, other methods, undecodable messages).
    Ignored,
}

/// A Binding response as the client reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The transaction it answers.
    pub transaction: [u8; 12],
    /// What the response says.
    pub outcome: Outcome,
}

/// The substance of a Binding response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The server saw us at `mapped`.
    Success {
        /// Our server-reflexive address (XOR-MAPPED-ADDRESS, or MAPPED-ADDRESS from old servers).
        mapped: SocketAddr,
        /// The server's other address for NAT behaviour discovery (RFC 5780 OTHER-ADDRESS).
        other: Option<SocketAddr>,
        /// The address the response was sent from, as the server says (RESPONSE-ORIGIN).
        origin: Option<SocketAddr>,
    },
    /// An error response (e.g. 420 to a CHANGE-REQUEST from a server without a second address).
    Error {
        /// The STUN error code.
        code: u16,
    },
    /// A success without a mapped address: unusable.
    Malformed,
}

/// Reads a datagram that [`is_stun`] accepted. A Binding request gets its answer: the sender's
/// address as seen here (`from`), or 420 when the request asks for something this socket cannot
/// do — a CHANGE-REQUEST (a node has one address and port, not the second pair RFC 5780 needs) or
/// any comprehension-required attribute we do not know. Never panics on a peer's bytes.
pub fn handle(datagram: &[u8], from: SocketAddr) -> Incoming {
    if !is_stun(datagram) {
        return Incoming::Ignored;
    }
    let Ok(Ok(message)) = MessageDecoder::<Attribute>::new().decode_from_bytes(datagram) else {
        return Incoming::Ignored;
    };
    if message.method() != BINDING {
        return Incoming::Ignored;
    }
    let transaction = *message.transaction_id().as_bytes();
    match message.class() {
        MessageClass::Request => Incoming::Request {
            reply: answer(&message, from),
        },
        MessageClass::SuccessResponse => Incoming::Response(Response {
            transaction,
            outcome: success(&message),
        }),
        MessageClass::ErrorResponse => Incoming::Response(Response {
            transaction,
            outcome: Outcome::Error {
                code: message
                    .get_attribute::<ErrorCode>()
                    .map_or(500, ErrorCode::code),
            },
        }),
        MessageClass::Indication => Incoming::Ignored,
    }
}

fn success(message: &Message<Attribute>) -> Outcome {
    let mapped = message
        .get_attribute::<XorMappedAddress>()
        .map(XorMappedAddress::address)
        .or_else(|| {
            message
                .get_attribute::<XorMappedAddress2>()
                .map(XorMappedAddress2::address)
        })
        .or_else(|| {
            message
                .get_attribute::<MappedAddress>()
                .map(MappedAddress::address)
        });
    match mapped {
        Some(mapped) => Outcome::Success {
            mapped,
            other: message
                .get_attribute::<OtherAddress>()
                .map(OtherAddress::address),
            origin: message
                .get_attribute::<ResponseOrigin>()
                .map(ResponseOrigin::address),
        },
        None => Outcome::Malformed,
    }
}

fn answer(request: &Message<Attribute>, from: SocketAddr) -> Vec<u8> {
    let id = request.transaction_id();
    // A CHANGE-REQUEST asking for no change is an ordinary request (RFC 5780 §7.2); one asking
    // for a change is an attribute we cannot honour.
    let unknown: Vec<_> = request
        .unknown_attributes()
        .filter(|a| {
            if a.get_type().as_u16() != ChangeRequest::CODEPOINT {
                return true;
            }
            let flags = <[u8; 4]>::try_from(a.value()).map_or(u32::MAX, u32::from_be_bytes);
            flags & (CHANGE_IP | CHANGE_PORT) != 0
        })
        .map(|a| a.get_type())
        .filter(|t| t.is_comprehension_required())
        .take(8)
        .collect();
    let mut reply = if unknown.is_empty() {
        let mut m = Message::<Attribute>::new(MessageClass::SuccessResponse, BINDING, id);
        m.add_attribute(XorMappedAddress::new(from));
        m
    } else {
        let mut m = Message::<Attribute>::new(MessageClass::ErrorResponse, BINDING, id);
        m.add_attribute(ErrorCode::from(UnknownAttribute));
        m.add_attribute(UnknownAttributes::new(unknown));
        m
    };
    reply.add_attribute(Software::new_static(SOFTWARE));
    encode(reply)
}

/// A Binding request with transaction id `transaction`; with `change`, an RFC 5780
/// CHANGE-REQUEST asking the server to answer from its other IP and/or port.
pub fn binding_request(transaction: [u8; 12], change: Option<(bool, bool)>) -> Vec<u8> {
    let mut m = Message::<RequestAttribute>::new(
        MessageClass::Request,
        BINDING,
        TransactionId::new(transaction),
    );
    if let Some((ip, port)) = change {
        m.add_attribute(ChangeRequest::new(ip, port));
    }
    encode(m)
}

fn encode<A: stun_codec::Attribute>(message: Message<A>) -> Vec<u8> {
    // Our messages hold a handful of fixed-size attributes: encoding cannot fail.
    MessageEncoder::new()
        .encode_into_bytes(message)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn a_binding_request_is_answered_with_the_senders_address() {
        let request = binding_request([7; 12], None);
        assert!(is_stun(&request));
        assert_eq!(request.len(), 20, "a bare Binding request is only a header");
        for from in [addr("198.51.100.7:40000"), addr("[2001:db8::1]:443")] {
            let Incoming::Request { reply } = handle(&request, from) else {
                panic!("a request is answered")
            };
            assert!(is_stun(&reply));
            let Incoming::Response(r) = handle(&reply, addr("192.0.2.1:3478")) else {
                panic!("the answer is a response")
            };
            assert_eq!(r.transaction, [7; 12]);
            assert_eq!(
                r.outcome,
                Outcome::Success {
                    mapped: from,
                    other: None,
                    origin: None
                }
            );
        }
    }

    #[test]
    fn a_change_request_is_refused_with_420() {
        for change in [(true, true), (false, true), (true, false)] {
            let request = binding_request([1; 12], Some(change));
            let Incoming::Request { reply } = handle(&request, addr("10.0.0.1:1")) else {
                panic!("a request is answered")
            };
            let Incoming::Response(r) = handle(&reply, addr("10.0.0.2:2")) else {
                panic!("the answer is a response")
            };
            assert_eq!(r.outcome, Outcome::Error { code: 420 });
        }
        // A CHANGE-REQUEST that asks for no change is an ordinary request (RFC 5780 §7.2).
        let request = binding_request([1; 12], Some((false, false)));
        let Incoming::Request { reply } = handle(&request, addr("10.0.0.1:1")) else {
            panic!("a request is answered")
        };
        let Incoming::Response(r) = handle(&reply, addr("10.0.0.2:2")) else {
            panic!("the answer is a response")
        };
        assert!(matches!(r.outcome, Outcome::Success { .. }));
    }

    #[test]
    fn quic_packets_are_not_stun() {
        // A QUIC long header (Initial) and a short header: the fixed bit 0x40 is set in both.
        let mut long = vec![0xc3, 0, 0, 0, 1];
        long.resize(1200, 0);
        let mut short = vec![0x41];
        short.resize(60, 7);
        assert!(!is_stun(&long) && !is_stun(&short));
        // A STUN header whose length field disagrees with the datagram, or without the cookie.
        let mut request = binding_request([2; 12], None);
        request.extend_from_slice(&[0; 4]);
        assert!(!is_stun(&request));
        let mut request = binding_request([2; 12], None);
        request[4] = 0;
        assert!(!is_stun(&request));
    }

    /// RFC 5769 §2.2: a sample IPv4 response (with SOFTWARE, MESSAGE-INTEGRITY and
    /// FINGERPRINT), decoded to its mapped address 192.0.2.1:32853.
    #[test]
    fn rfc5769_sample_ipv4_response() {
        let hex = "0101003c2112a442b7e7a701bc34d686fa87dfae8022000b\
                   7465737420766563746f7220002000080001a147e112a643\
                   000800142b91f599fd9e90c38c7489f92af9ba53f06be7d7\
                   80280004c07d4c96";
        let bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap_or(0))
            .collect();
        assert!(is_stun(&bytes));
        let Incoming::Response(r) = handle(&bytes, addr("192.0.2.99:3478")) else {
            panic!("the sample is a Binding success response")
        };
        assert_eq!(
            r.outcome,
            Outcome::Success {
                mapped: addr("192.0.2.1:32853"),
                other: None,
                origin: None
            }
        );
    }

    proptest::proptest! {
        /// Whatever arrives, the codec neither panics nor answers what is not a request.
        #[test]
        fn arbitrary_datagrams_never_panic(
            mut bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200),
            stunlike in proptest::prelude::any::<bool>(),
        ) {
            if stunlike && bytes.len() >= 20 {
                bytes.truncate(bytes.len() / 4 * 4);
                bytes[0] &= 3;
                bytes[4..8].copy_from_slice(&MAGIC_COOKIE);
                let len = (bytes.len() - 20) as u16;
                bytes[2..4].copy_from_slice(&len.to_be_bytes());
            }
            let _ = handle(&bytes, addr("10.0.0.1:1"));
        }
    }
}

//! Property tests of the wire codec: any valid [`Message`] survives encode → decode, whole, split
//! at any byte, and concatenated with others; plus the exact bytes that `docs/protocol.md` shows,
//! so the document cannot drift from the encoder.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};

use proptest::prelude::*;
use proptest::sample::Index;
use spore_core::identity::Keypair;
use spore_core::ping;
use spore_core::pow::{Difficulty, Stamp};
use spore_core::pubsub::{self, Control, MessageId, Prune, SignedMessage};
use spore_core::wire::{
    Capabilities, FrameDecoder, Hello, MAX_AGENT_LEN, MAX_LISTEN_ADDRS, MAX_VERSIONS, Message,
    WIRE_VERSION, WireError, encode_frame,
};

// ---------------------------------------------------------------------------------------------
// Helpers

/// Decodes a complete byte stream fed in the given pieces; fails on any error or leftover bytes.
fn decode_pieces<'a>(
    pieces: impl IntoIterator<Item = &'a [u8]>,
) -> Result<Vec<Message>, WireError> {
    let mut decoder = FrameDecoder::new();
    let mut out = Vec::new();
    for piece in pieces {
        decoder.extend(piece);
        while let Some(msg) = decoder.next_message()? {
            out.push(msg);
        }
    }
    decoder.finish()?;
    Ok(out)
}

fn encode(msg: &Message) -> Vec<u8> {
    encode_frame(msg).expect("a valid message encodes").to_vec()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    let digits: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    digits
        .chunks(2)
        .map(|pair| {
            let pair = std::str::from_utf8(pair).expect("ascii");
            u8::from_str_radix(pair, 16).expect("hex digit pair")
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Strategies

/// Any IPv4 or IPv6 socket address the wire can carry. IPv6 flow info and scope id are not part
/// of the encoding (see `ipv6_flowinfo_and_scope_id_are_not_sent`), so they are left at zero.
fn socket_addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>())
            .prop_map(|(ip, port)| SocketAddr::new(Ipv4Addr::from(ip).into(), port)),
        (any::<[u8; 16]>(), any::<u16>())
            .prop_map(|(ip, port)| SocketAddr::new(Ipv6Addr::from(ip).into(), port)),
    ]
}

/// Agent strings up to [`MAX_AGENT_LEN`] bytes: ASCII up to the limit exactly, and arbitrary
/// Unicode (including control characters) of at most 16 chars × 4 bytes.
fn agent() -> impl Strategy<Value = String> {
    prop_oneof![
        proptest::string::string_regex(&format!("[ -~]{{0,{MAX_AGENT_LEN}}}"))
            .expect("valid regex"),
        prop::collection::vec(any::<char>(), 0..=MAX_AGENT_LEN / 4)
            .prop_map(|chars| chars.into_iter().collect()),
    ]
}

fn hello() -> impl Strategy<Value = Hello> {
    (
        prop::collection::vec(any::<u16>(), 0..=MAX_VERSIONS),
        any::<u32>(),
        prop::collection::vec(socket_addr(), 0..=MAX_LISTEN_ADDRS),
        socket_addr(),
        any::<u64>(),
        agent(),
    )
        .prop_map(
            |(versions, caps, listen_addrs, observed_addr, nonce, agent)| Hello {
                versions,
                capabilities: Capabilities(caps),
                listen_addrs,
                observed_addr,
                stamp: Stamp { nonce },
                agent,
            },
        )
}

fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        hello().prop_map(Message::Hello),
        any::<u64>().prop_map(|nonce| Message::Ping(ping::Message::Ping { nonce })),
        any::<u64>().prop_map(|nonce| Message::Ping(ping::Message::Pong { nonce })),
        pubsub_message().prop_map(Message::PubSub),
    ]
}

fn topic() -> impl Strategy<Value = String> {
    "[a-z0-9/._-]{1,24}"
}

fn pubsub_message() -> impl Strategy<Value = pubsub::Message> {
    let ids = || prop::collection::vec(any::<[u8; 20]>().prop_map(MessageId), 0..6);
    let control = (
        prop::collection::vec((topic(), ids()), 0..3),
        ids(),
        prop::collection::vec(topic(), 0..3),
        prop::collection::vec((topic(), any::<u32>()), 0..3),
        ids(),
    )
        .prop_map(|(ihave, iwant, graft, prune, idontwant)| Control {
            ihave,
            iwant,
            graft,
            prune: prune
                .into_iter()
                .map(|(topic, backoff)| Prune {
                    topic,
                    backoff,
                    px: Vec::new(),
                })
                .collect(),
            idontwant,
        });
    prop_oneof![
        prop::collection::vec((topic(), any::<bool>()), 0..4).prop_map(|topics| {
            pubsub::Message::Subscribe {
                topics,
                record: None,
            }
        }),
        (
            topic(),
            any::<u64>(),
            prop::collection::vec(any::<u8>(), 0..64)
        )
            .prop_map(|(topic, seq, data)| {
                let key = Keypair::from_secret_bytes([3; 32]);
                let m = SignedMessage::new(&key, Stamp { nonce: 1 }, topic, seq, data.into());
                pubsub::Message::Publish(m)
            }),
        control.prop_map(pubsub::Message::Control),
    ]
}

// ---------------------------------------------------------------------------------------------
// Round trips

proptest! {
    #[test]
    fn any_message_round_trips(msg in message()) {
        let frame = encode(&msg);
        let len = u32::from_be_bytes(frame[..4].try_into().expect("4 bytes")) as usize;
        prop_assert_eq!(len, frame.len() - 4, "length prefix covers version byte + body");
        prop_assert_eq!(frame[4], WIRE_VERSION);
        prop_assert_eq!(decode_pieces([frame.as_slice()]), Ok(vec![msg]));
    }

    #[test]
    fn round_trip_survives_a_split_anywhere(msg in message(), at in any::<Index>()) {
        let frame = encode(&msg);
        let at = at.index(frame.len() + 1);
        let (head, tail) = frame.split_at(at);
        let mut decoder = FrameDecoder::new();
        decoder.extend(head);
        if at < frame.len() {
            prop_assert_eq!(decoder.next_message(), Ok(None), "no message from a partial frame");
            let ended_here = if at == 0 { Ok(()) } else { Err(WireError::Truncated(at)) };
            prop_assert_eq!(decoder.finish(), ended_here);
        }
        decoder.extend(tail);
        prop_assert_eq!(decoder.next_message(), Ok(Some(msg)));
        prop_assert_eq!(decoder.next_message(), Ok(None));
        prop_assert_eq!(decoder.finish(), Ok(()));
    }

    #[test]
    fn concatenated_frames_decode_in_order(
        msgs in prop::collection::vec(message(), 1..8),
        cuts in prop::collection::vec(any::<Index>(), 0..6),
    ) {
        let stream: Vec<u8> = msgs.iter().flat_map(encode).collect();
        // Whole, then cut at arbitrary points (which may fall inside or between frames).
        prop_assert_eq!(decode_pieces([stream.as_slice()]), Ok(msgs.clone()));
        let mut points: Vec<usize> = cuts.iter().map(|c| c.index(stream.len() + 1)).collect();
        points.sort_unstable();
        let mut pieces = Vec::new();
        let mut start = 0;
        for p in points {
            pieces.push(&stream[start..p]);
            start = p;
        }
        pieces.push(&stream[start..]);
        prop_assert_eq!(decode_pieces(pieces), Ok(msgs));
    }

    #[test]
    fn byte_at_a_time_decodes_the_same(msgs in prop::collection::vec(message(), 1..4)) {
        let stream: Vec<u8> = msgs.iter().flat_map(encode).collect();
        prop_assert_eq!(decode_pieces(stream.chunks(1)), Ok(msgs));
    }

    #[test]
    fn encoding_is_canonical(msg in message()) {
        // The encoder is deterministic, so decode(frame) re-encodes to the very same bytes.
        let frame = encode(&msg);
        let back = decode_pieces([frame.as_slice()]).expect("decodes");
        prop_assert_eq!(encode(&back[0]), frame);
    }
}

// ---------------------------------------------------------------------------------------------
// The bytes shown in docs/protocol.md. If one of these fails, the encoding changed: update the
// document (and think about compatibility) before updating the constant.

/// Secret seed of the identity used in the document's examples.
const EXAMPLE_SECRET: [u8; 32] = [7; 32];
const EXAMPLE_PUBLIC_KEY_HEX: &str =
    "ea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c";
const EXAMPLE_PEER_ID: &str = "5jfgyy7ctrjavpxvkb5rglwf7gkuo5vox27hxescd3vgsfcg2iwa";
/// The smallest nonce meeting the default difficulty (16 bits) for the example key.
const EXAMPLE_STAMP_NONCE: u64 = 36916;
const EXAMPLE_STAMP_HASH_HEX: &str =
    "0000e3e5c88d81d046fc8e3e29f9490161790ee55b09418eb7f0f75259960b34";

/// `Message::Ping(ping::Message::Ping { nonce: 0x0123_4567_89ab_cdef })`.
const PING_FRAME_HEX: &str = "0000000c010100ef9bafcdf8acd19101";

/// The example `Hello`; see [`example_hello`].
const HELLO_FRAME_HEX: &str = "00000037010001010502\
                               00cb007107d122\
                               0120010db8000000000000000000000007d122\
                               00c6336414d08603\
                               b4a002\
                               0b73706f72652f302e312e30";

fn example_ping() -> Message {
    Message::Ping(ping::Message::Ping {
        nonce: 0x0123_4567_89ab_cdef,
    })
}

fn example_hello() -> Message {
    let addr = |s: &str| s.parse::<SocketAddr>().expect("valid address");
    Message::Hello(Hello {
        versions: vec![1],
        capabilities: Capabilities::DHT_SERVER | Capabilities::PUBLIC,
        listen_addrs: vec![addr("203.0.113.7:4433"), addr("[2001:db8::7]:4433")],
        observed_addr: addr("198.51.100.20:50000"),
        stamp: Stamp {
            nonce: EXAMPLE_STAMP_NONCE,
        },
        agent: "spore/0.1.0".into(),
    })
}

fn protocol_doc() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/protocol.md");
    std::fs::read_to_string(path).expect("docs/protocol.md exists")
}

#[test]
fn documented_ping_frame_bytes() {
    assert_eq!(hex(&encode(&example_ping())), PING_FRAME_HEX);
    assert_eq!(
        decode_pieces([unhex(PING_FRAME_HEX).as_slice()]),
        Ok(vec![example_ping()])
    );
}

#[test]
fn documented_hello_frame_bytes() {
    let expected: String = HELLO_FRAME_HEX.split_whitespace().collect();
    assert_eq!(hex(&encode(&example_hello())), expected);
    assert_eq!(
        decode_pieces([unhex(HELLO_FRAME_HEX).as_slice()]),
        Ok(vec![example_hello()])
    );
}

#[test]
fn documented_stamp_example() {
    let id = Keypair::from_secret_bytes(EXAMPLE_SECRET).peer_id();
    assert_eq!(hex(id.as_bytes()), EXAMPLE_PUBLIC_KEY_HEX);
    assert_eq!(id.to_string(), EXAMPLE_PEER_ID);
    let stamp = Stamp::mint(&id, Difficulty::DEFAULT);
    assert_eq!(stamp.nonce, EXAMPLE_STAMP_NONCE);
    // The document's formula, computed by hand: blake3(public key ‖ nonce as u64 little-endian).
    let mut input = id.as_bytes().to_vec();
    input.extend_from_slice(&EXAMPLE_STAMP_NONCE.to_le_bytes());
    let hash = blake3::hash(&input);
    assert_eq!(hex(hash.as_bytes()), EXAMPLE_STAMP_HASH_HEX);
    assert_eq!(&hash.as_bytes()[..2], &[0, 0], "16 leading zero bits");
    assert_eq!(stamp.verify(&id, Difficulty::DEFAULT), Ok(()));
}

#[test]
fn protocol_doc_shows_the_real_bytes() {
    let doc = protocol_doc();
    let compact = |s: &str| s.split_whitespace().collect::<String>();
    for (what, bytes) in [
        ("ping frame", compact(PING_FRAME_HEX)),
        ("hello frame", compact(HELLO_FRAME_HEX)),
        ("public key", EXAMPLE_PUBLIC_KEY_HEX.to_string()),
        ("peer id", EXAMPLE_PEER_ID.to_string()),
        ("stamp hash", EXAMPLE_STAMP_HASH_HEX.to_string()),
    ] {
        assert!(
            doc.contains(&bytes),
            "docs/protocol.md lacks the {what} `{bytes}`"
        );
    }
    assert!(doc.contains(&format!("nonce {EXAMPLE_STAMP_NONCE}")));
}

/// The bytes of the annotated dump in the first ```text block after `heading`: on each line, the
/// leading two-digit hex tokens (the annotation after them is ignored).
fn annotated_dump(doc: &str, heading: &str) -> String {
    let section = &doc[doc.find(heading).expect("heading present")..];
    let block = section
        .split("```text\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("a text block in the section");
    block
        .lines()
        .flat_map(|line| {
            line.split_whitespace()
                .take_while(|t| t.len() == 2 && t.bytes().all(|b| b.is_ascii_hexdigit()))
        })
        .collect()
}

#[test]
fn protocol_doc_annotated_dumps_are_the_real_bytes() {
    let doc = protocol_doc();
    assert_eq!(annotated_dump(&doc, "### 8.2"), PING_FRAME_HEX);
    assert_eq!(annotated_dump(&doc, "### 8.3"), HELLO_FRAME_HEX);
}

// ---------------------------------------------------------------------------------------------
// Encoding details the document spells out.

#[test]
fn socket_addr_encoding() {
    let v4: SocketAddr = "192.0.2.1:80".parse().expect("valid");
    // variant 0 (V4), 4 raw octets, port as varint.
    assert_eq!(
        hex(&postcard::to_allocvec(&v4).expect("encodes")),
        "00c000020150"
    );
    let v6: SocketAddr = "[::1]:443".parse().expect("valid");
    // variant 1 (V6), 16 raw octets, port 443 = varint bb 03.
    assert_eq!(
        hex(&postcard::to_allocvec(&v6).expect("encodes")),
        "0100000000000000000000000000000001bb03"
    );
}

#[test]
fn ipv6_flowinfo_and_scope_id_are_not_sent() {
    let scoped = SocketAddr::V6(SocketAddrV6::new(
        Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1),
        9,
        5,
        3,
    ));
    let bytes = postcard::to_allocvec(&scoped).expect("encodes");
    let back: SocketAddr = postcard::from_bytes(&bytes).expect("decodes");
    assert_eq!(back, "[fe80::1]:9".parse::<SocketAddr>().expect("valid"));
    assert_ne!(back, scoped);
}

#[test]
fn primitive_encodings() {
    let enc = |v: &dyn erased::Enc| hex(&v.enc());
    assert_eq!(enc(&300u16), "ac02", "unsigned: LEB128 varint");
    assert_eq!(enc(&u64::MAX), "ffffffffffffffffff01");
    assert_eq!(enc(&-1i32), "01", "signed: zigzag then varint");
    assert_eq!(enc(&150i32), "ac02");
    assert_eq!(enc(&-2i64), "03");
    assert_eq!(enc(&200u8), "c8", "u8: one raw byte");
    assert_eq!(enc(&true), "01");
    assert_eq!(enc(&None::<u16>), "00");
    assert_eq!(enc(&Some(300u16)), "01ac02");
    assert_eq!(
        enc(&vec![1u16, 2]),
        "020102",
        "Vec: varint count, then items"
    );
    assert_eq!(
        enc(&"hé".to_string()),
        "0368c3a9",
        "String: varint byte length, UTF-8"
    );
    assert_eq!(enc(&[1u8, 2, 3]), "010203", "fixed array: no length");
}

#[test]
fn decoders_accept_overlong_varints() {
    // Encoders must emit the shortest form; this decoder (postcard) also accepts padded ones,
    // up to the type's maximum varint length.
    let padded_ping = [0x01, 0x00, 0x81, 0x80, 0x00];
    assert_eq!(
        postcard::from_bytes::<Message>(&padded_ping).ok(),
        Some(Message::Ping(ping::Message::Ping { nonce: 1 }))
    );
    assert!(postcard::from_bytes::<u16>(&[0xff, 0xff, 0x03]).is_ok());
    assert!(
        postcard::from_bytes::<u16>(&[0xff, 0xff, 0x04]).is_err(),
        "a u16 varint is at most 3 bytes and must fit in 16 bits"
    );
}

/// Object-safe postcard encoding, so `primitive_encodings` can list mixed types.
mod erased {
    pub(super) trait Enc {
        fn enc(&self) -> Vec<u8>;
    }
    impl<T: serde::Serialize> Enc for T {
        fn enc(&self) -> Vec<u8> {
            postcard::to_allocvec(self).expect("encodes")
        }
    }
}

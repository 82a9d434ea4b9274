//! Malformed input for [`FrameDecoder`]: the checked-in fuzz corpus replayed as a normal test, a
//! hand-built list of broken frames with the exact [`WireError`] each must produce, and seeded
//! random streams. The decoder must never panic, must reject every broken frame, and must stay
//! failed after its first error.

use std::net::SocketAddr;
use std::path::PathBuf;

use spore_core::ping;
use spore_core::pow::Stamp;
use spore_core::wire::{
    Capabilities, FrameDecoder, Hello, MAX_AGENT_LEN, MAX_FRAME_LEN, MAX_LISTEN_ADDRS,
    MAX_VERSIONS, Message, WIRE_VERSION, WireError, encode_frame,
};

// ---------------------------------------------------------------------------------------------
// Helpers

/// A frame with an honest length prefix around `version` and `body`.
fn raw_frame(version: u8, body: &[u8]) -> Vec<u8> {
    let len = u32::try_from(1 + body.len()).expect("small test frame");
    let mut out = len.to_be_bytes().to_vec();
    out.push(version);
    out.extend_from_slice(body);
    out
}

/// A version-1 frame around `body`.
fn frame(body: &[u8]) -> Vec<u8> {
    raw_frame(WIRE_VERSION, body)
}

/// The postcard body of `msg`, without any validation (so out-of-bounds messages can be built).
fn body_of(msg: &Message) -> Vec<u8> {
    postcard::to_allocvec(msg).expect("serializes")
}

fn ping_frame(nonce: u64) -> Vec<u8> {
    encode_frame(&Message::Ping(ping::Message::Ping { nonce }))
        .expect("encodes")
        .to_vec()
}

fn valid_hello() -> Hello {
    Hello {
        versions: vec![1],
        capabilities: Capabilities::RELAY,
        listen_addrs: vec!["192.0.2.1:4433".parse().expect("valid")],
        observed_addr: "[2001:db8::2]:50000".parse().expect("valid"),
        stamp: Stamp { nonce: 42 },
        agent: "test".into(),
    }
}

/// What feeding a whole stream produced.
#[derive(Debug)]
struct Outcome {
    messages: Vec<Message>,
    /// The first error, if any; otherwise the verdict of `finish`.
    end: Result<(), WireError>,
}

/// Feeds `pieces` one by one, draining after each; stops at the first error and checks the
/// decoder stays failed, even when a valid frame follows.
fn run<'a>(pieces: impl IntoIterator<Item = &'a [u8]>) -> Outcome {
    let mut decoder = FrameDecoder::new();
    let mut messages = Vec::new();
    for piece in pieces {
        decoder.extend(piece);
        loop {
            match decoder.next_message() {
                Ok(Some(msg)) => messages.push(msg),
                Ok(None) => break,
                Err(e) => {
                    assert_stays_failed(&mut decoder);
                    return Outcome {
                        messages,
                        end: Err(e),
                    };
                }
            }
        }
    }
    Outcome {
        messages,
        end: decoder.finish(),
    }
}

fn assert_stays_failed(decoder: &mut FrameDecoder) {
    assert!(decoder.next_message().is_err(), "failed decoder recovered");
    decoder.extend(&ping_frame(1));
    assert!(
        decoder.next_message().is_err(),
        "failed decoder accepted a valid frame"
    );
}

/// The error `stream` (fed whole) must produce; panics if it decodes cleanly.
fn error_of(stream: &[u8]) -> WireError {
    match run([stream]).end {
        Err(e) => e,
        Ok(()) => panic!("stream {stream:02x?} decoded without error"),
    }
}

fn assert_malformed(what: &str, stream: &[u8]) {
    let err = error_of(stream);
    assert!(
        matches!(err, WireError::Malformed(_)),
        "{what}: expected Malformed, got {err:?}"
    );
}

/// Every message a decoder yields is valid and survives a second encode → decode.
fn assert_round_trips(msg: &Message) {
    assert_eq!(msg.validate(), Ok(()), "decoder yielded an invalid message");
    let again = run([encode_frame(msg).expect("re-encodes").as_ref()]);
    assert_eq!(again.messages, std::slice::from_ref(msg));
    assert_eq!(again.end, Ok(()));
}

/// A tiny deterministic generator (xorshift64*), so the random tests need no `rand`.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// Cuts `stream` into pieces at `cuts` random points.
fn random_pieces<'a>(rng: &mut XorShift, stream: &'a [u8], cuts: usize) -> Vec<&'a [u8]> {
    let mut points: Vec<usize> = (0..cuts).map(|_| rng.below(stream.len() + 1)).collect();
    points.sort_unstable();
    let mut pieces = Vec::new();
    let mut start = 0;
    for p in points {
        pieces.push(&stream[start..p]);
        start = p;
    }
    pieces.push(&stream[start..]);
    pieces
}

// ---------------------------------------------------------------------------------------------
// The fuzz corpus, replayed.

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/frame_decoder")
}

/// The chunking of `fuzz/fuzz_targets/frame_decoder.rs` (keep the two in step): the first byte
/// `split` picks the chunk sizes, the rest is the stream.
fn fuzz_chunks(input: &[u8]) -> Vec<&[u8]> {
    let Some((&split, mut rest)) = input.split_first() else {
        return Vec::new();
    };
    let max = u32::from(split);
    let mut state = 0x9e37_79b9 ^ max;
    let mut chunks = Vec::new();
    while !rest.is_empty() {
        let n = if max == 0 {
            rest.len()
        } else {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            (1 + state % max) as usize
        };
        let (chunk, tail) = rest.split_at(n.min(rest.len()));
        chunks.push(chunk);
        rest = tail;
    }
    chunks
}

/// Short name of an outcome, for the corpus summary.
fn verdict(outcome: &Outcome) -> &'static str {
    match &outcome.end {
        Ok(()) => "clean end",
        Err(WireError::TooLarge { .. }) => "too large",
        Err(WireError::Empty) => "empty",
        Err(WireError::Version(_)) => "version",
        Err(WireError::Malformed(_)) => "malformed",
        Err(WireError::Trailing(_)) => "trailing",
        Err(WireError::Bounds { .. }) => "bounds",
        Err(WireError::Truncated(_)) => "truncated",
        Err(_) => "other",
    }
}

#[test]
fn fuzz_corpus_replays_without_panics() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(corpus_dir())
        .expect("fuzz/corpus/frame_decoder exists")
        .map(|entry| entry.expect("readable directory").path())
        .collect();
    files.sort();
    assert!(
        files.len() >= 20,
        "the corpus has only {} files; was it deleted?",
        files.len()
    );

    let mut verdicts = std::collections::BTreeMap::<&str, usize>::new();
    let mut kinds = std::collections::BTreeSet::new();
    for path in &files {
        let input = std::fs::read(path).expect("readable corpus file");
        // As the fuzz target feeds it, and the same stream all at once: same verdict either way.
        let chunked = run(fuzz_chunks(&input));
        let whole = run([input.get(1..).unwrap_or_default()]);
        assert_eq!(
            chunked.messages,
            whole.messages,
            "{}: chunking changed the messages",
            path.display()
        );
        assert_eq!(
            chunked.end,
            whole.end,
            "{}: chunking changed the verdict",
            path.display()
        );
        for msg in &chunked.messages {
            assert_round_trips(msg);
            kinds.insert(msg.kind());
        }
        *verdicts.entry(verdict(&chunked)).or_default() += 1;
    }
    println!(
        "{} corpus files: {verdicts:?}; message kinds seen: {kinds:?}",
        files.len()
    );
    // The corpus must keep covering the interesting paths, not just any bytes.
    for kind in ["hello", "ping", "pong"] {
        assert!(kinds.contains(kind), "no corpus file decodes a {kind}");
    }
    for v in [
        "clean end",
        "too large",
        "empty",
        "version",
        "malformed",
        "trailing",
        "bounds",
    ] {
        assert!(verdicts.contains_key(v), "no corpus file ends in `{v}`");
    }
}

// ---------------------------------------------------------------------------------------------
// Framing errors.

#[test]
fn zero_length_frame_is_empty() {
    assert_eq!(error_of(&[0, 0, 0, 0]), WireError::Empty);
    // Also after a good frame.
    let mut stream = ping_frame(5);
    stream.extend_from_slice(&[0, 0, 0, 0]);
    let outcome = run([stream.as_slice()]);
    assert_eq!(outcome.messages.len(), 1);
    assert_eq!(outcome.end, Err(WireError::Empty));
}

#[test]
fn length_above_max_is_rejected_from_the_prefix_alone() {
    for len in [MAX_FRAME_LEN + 1, u32::MAX as usize] {
        let prefix = u32::try_from(len).expect("fits").to_be_bytes();
        assert_eq!(
            error_of(&prefix),
            WireError::TooLarge {
                len,
                max: MAX_FRAME_LEN
            }
        );
    }
}

#[test]
fn length_at_max_waits_for_the_body() {
    let prefix = u32::try_from(MAX_FRAME_LEN).expect("fits").to_be_bytes();
    let mut decoder = FrameDecoder::new();
    decoder.extend(&prefix);
    assert_eq!(decoder.next_message(), Ok(None));
    assert_eq!(decoder.finish(), Err(WireError::Truncated(4)));
}

#[test]
fn lower_limit_applies_and_higher_limit_is_clamped() {
    let frame = ping_frame(u64::MAX); // length 13: version, 2 variant bytes, 10-byte varint
    assert_eq!(frame.len(), 4 + 13);
    let mut small = FrameDecoder::with_max_len(12);
    small.extend(&frame);
    assert_eq!(
        small.next_message(),
        Err(WireError::TooLarge { len: 13, max: 12 })
    );

    let mut clamped = FrameDecoder::with_max_len(usize::MAX);
    clamped.extend(&u32::MAX.to_be_bytes());
    assert_eq!(
        clamped.next_message(),
        Err(WireError::TooLarge {
            len: u32::MAX as usize,
            max: MAX_FRAME_LEN
        })
    );
}

#[test]
fn wrong_version_byte() {
    let body = body_of(&Message::Ping(ping::Message::Pong { nonce: 3 }));
    for version in [0, 2, 0x7f, 0xff] {
        assert_eq!(
            error_of(&raw_frame(version, &body)),
            WireError::Version(version)
        );
    }
    // A frame of just a bad version byte: the version is checked before the (empty) body.
    assert_eq!(error_of(&[0, 0, 0, 1, 9]), WireError::Version(9));
}

#[test]
fn version_byte_without_body_is_malformed() {
    assert_malformed("no body", &frame(&[]));
}

#[test]
fn stream_ending_inside_a_frame_is_truncated() {
    let whole = ping_frame(0x0123_4567_89ab_cdef);
    for cut in 1..whole.len() {
        let outcome = run([&whole[..cut]]);
        assert!(outcome.messages.is_empty());
        assert_eq!(outcome.end, Err(WireError::Truncated(cut)), "cut at {cut}");
    }
    // Leftover bytes after a complete frame are a truncated next frame.
    let mut stream = whole.clone();
    stream.extend_from_slice(&[0xde, 0xad]);
    let outcome = run([stream.as_slice()]);
    assert_eq!(outcome.messages.len(), 1);
    assert_eq!(outcome.end, Err(WireError::Truncated(2)));
}

#[test]
fn length_prefix_shorter_than_the_message_is_malformed() {
    // A ping whose nonce is cut off by an honest-looking length: the body ends mid-message.
    let body = body_of(&Message::Ping(ping::Message::Ping { nonce: u64::MAX }));
    for keep in 0..body.len() {
        assert_malformed(&format!("body cut to {keep}"), &frame(&body[..keep]));
    }
    let hello = body_of(&Message::Hello(valid_hello()));
    for keep in 0..hello.len() {
        assert_malformed(&format!("hello cut to {keep}"), &frame(&hello[..keep]));
    }
}

#[test]
fn trailing_bytes_inside_a_frame() {
    for garbage in [&[0u8][..], &[1, 2, 3], &[0xff; 100]] {
        let mut body = body_of(&Message::Ping(ping::Message::Ping { nonce: 9 }));
        body.extend_from_slice(garbage);
        assert_eq!(error_of(&frame(&body)), WireError::Trailing(garbage.len()));

        let mut body = body_of(&Message::Hello(valid_hello()));
        body.extend_from_slice(garbage);
        assert_eq!(error_of(&frame(&body)), WireError::Trailing(garbage.len()));
    }
}

// ---------------------------------------------------------------------------------------------
// Postcard-level errors.

#[test]
fn unknown_variant_indices() {
    // Message has two variants (0 Hello, 1 Ping); ping::Message two (0 Ping, 1 Pong).
    assert_malformed("Message variant 2", &frame(&[2]));
    assert_malformed("Message variant 127", &frame(&[0x7f, 0, 0]));
    assert_malformed(
        "Message variant u32::MAX",
        &frame(&[0xff, 0xff, 0xff, 0xff, 0x0f]),
    );
    assert_malformed(
        "variant varint overflows u32",
        &frame(&[0xff, 0xff, 0xff, 0xff, 0x10]),
    );
    assert_malformed("unterminated variant varint", &frame(&[0x80, 0x80]));
    assert_malformed("ping::Message variant 2", &frame(&[1, 2, 5]));

    // SocketAddr has two variants (0 V4, 1 V6): make the observed address variant 2.
    let mut hello = valid_hello();
    hello.listen_addrs.clear();
    hello.observed_addr = "192.0.2.9:1".parse().expect("valid");
    let body = body_of(&Message::Hello(hello));
    // 00 Hello | 01 01 versions | 02 caps | 00 listen_addrs | 00 c0 00 02 09 01 observed | …
    assert_eq!(&body[..6], &[0, 1, 1, 2, 0, 0]);
    let mut bad = body.clone();
    bad[5] = 2;
    assert_malformed("SocketAddr variant 2", &frame(&bad));
}

#[test]
fn oversized_integers_are_malformed() {
    // Ping nonce: a u64 varint of 11 bytes, and one of 10 whose last byte exceeds 1 bit.
    let mut eleven = vec![1, 0];
    eleven.extend_from_slice(&[0x80; 10]);
    eleven.push(0x01);
    assert_malformed("11-byte u64 varint", &frame(&eleven));
    let mut too_big = vec![1, 0];
    too_big.extend_from_slice(&[0xff; 9]);
    too_big.push(0x02);
    assert_malformed("u64 varint above u64::MAX", &frame(&too_big));

    // Hello with a u16 port of 65536 (varint 80 80 04).
    let mut hello = valid_hello();
    hello.versions.clear();
    hello.listen_addrs.clear();
    hello.observed_addr = "192.0.2.9:65535".parse().expect("valid");
    let body = body_of(&Message::Hello(hello));
    // 00 | 00 versions | 02 caps | 00 addrs | 00 c0 00 02 09 | ff ff 03 port | …
    assert_eq!(&body[9..12], &[0xff, 0xff, 0x03]);
    let mut bad = body.clone();
    bad[11] = 0x04;
    assert_malformed("port 65536", &frame(&bad));
}

#[test]
fn huge_length_prefixes_inside_small_frames() {
    // Hello whose first field, `versions`, claims u64::MAX, 2^32 or 1000 entries in a frame of a
    // few bytes: the decoder must fail cleanly (and not allocate for the claimed count).
    for count in [
        &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01][..],
        &[0x80, 0x80, 0x80, 0x80, 0x10],
        &[0xe8, 0x07],
    ] {
        let mut body = vec![0];
        body.extend_from_slice(count);
        body.extend_from_slice(&[1, 2, 3]);
        assert_malformed(&format!("versions count {count:02x?}"), &frame(&body));
    }
    // `listen_addrs` and `agent` with a 2^32 count.
    let huge = [0x80, 0x80, 0x80, 0x80, 0x10];
    let mut body = vec![0, 0, 0];
    body.extend_from_slice(&huge);
    body.extend_from_slice(&[0, 1, 2, 3, 4, 5]);
    assert_malformed("listen_addrs count 2^32", &frame(&body));

    let mut hello = valid_hello();
    hello.agent.clear();
    let mut body = body_of(&Message::Hello(hello));
    assert_eq!(body.pop(), Some(0), "empty agent is the last byte");
    body.extend_from_slice(&huge);
    body.extend_from_slice(b"spore");
    assert_malformed("agent length 2^32", &frame(&body));
}

#[test]
fn agent_must_be_utf8() {
    let mut hello = valid_hello();
    hello.agent = "abc".into();
    let mut body = body_of(&Message::Hello(hello));
    let n = body.len();
    body[n - 2] = 0xff; // "a\xffc"
    assert_malformed("agent not UTF-8", &frame(&body));
}

// ---------------------------------------------------------------------------------------------
// Bounds.

/// Sets one of a `Hello`'s bounded fields to `n` entries (or bytes).
type SetCount = Box<dyn Fn(&mut Hello, usize)>;

#[test]
fn hello_bounds_are_enforced_one_past_the_limit() {
    let cases: [(&str, SetCount, usize); 3] = [
        (
            "hello.versions",
            Box::new(|h, n| h.versions = vec![1; n]),
            MAX_VERSIONS,
        ),
        (
            "hello.listen_addrs",
            Box::new(|h, n| {
                h.listen_addrs = vec!["[2001:db8::1]:1".parse::<SocketAddr>().expect("valid"); n]
            }),
            MAX_LISTEN_ADDRS,
        ),
        (
            "hello.agent",
            Box::new(|h, n| h.agent = "a".repeat(n)),
            MAX_AGENT_LEN,
        ),
    ];
    for (field, set, max) in cases {
        let mut at_limit = valid_hello();
        set(&mut at_limit, max);
        let at_limit = Message::Hello(at_limit);
        let outcome = run([frame(&body_of(&at_limit)).as_slice()]);
        assert_eq!(outcome.messages, [at_limit], "{field} at its limit is fine");
        assert_eq!(outcome.end, Ok(()));

        for over in [max + 1, max * 4] {
            let mut hello = valid_hello();
            set(&mut hello, over);
            assert_eq!(
                error_of(&frame(&body_of(&Message::Hello(hello)))),
                WireError::Bounds {
                    field,
                    found: over,
                    max
                }
            );
        }
    }
}

#[test]
fn agent_bound_counts_bytes_not_chars() {
    let mut hello = valid_hello();
    hello.agent = "é".repeat(MAX_AGENT_LEN / 2 + 1); // 33 chars, 66 bytes
    assert_eq!(
        error_of(&frame(&body_of(&Message::Hello(hello)))),
        WireError::Bounds {
            field: "hello.agent",
            found: MAX_AGENT_LEN + 2,
            max: MAX_AGENT_LEN
        }
    );
}

// ---------------------------------------------------------------------------------------------
// After an error.

#[test]
fn decoder_stays_failed_after_each_kind_of_error() {
    let mut trailing = frame(&body_of(&Message::Ping(ping::Message::Ping { nonce: 1 })));
    trailing.push(0);
    let len = u32::try_from(trailing.len() - 4).expect("small");
    trailing[..4].copy_from_slice(&len.to_be_bytes());
    let mut too_many = valid_hello();
    too_many.versions = vec![1; MAX_VERSIONS + 1];
    for bad in [
        vec![0, 0, 0, 0],
        u32::MAX.to_be_bytes().to_vec(),
        raw_frame(2, &[1, 0, 1]),
        frame(&[9]),
        trailing,
        frame(&body_of(&Message::Hello(too_many))),
    ] {
        // Bad frame and a good one in the same chunk, then a good one alone.
        let mut decoder = FrameDecoder::new();
        let mut stream = bad.clone();
        stream.extend_from_slice(&ping_frame(2));
        decoder.extend(&stream);
        assert!(decoder.next_message().is_err(), "{bad:02x?} accepted");
        for _ in 0..3 {
            decoder.extend(&ping_frame(3));
            assert!(
                decoder.next_message().is_err(),
                "decoder recovered after {bad:02x?}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Seeded random input.

#[test]
fn random_streams_never_panic() {
    let mut rng = XorShift(0x5eed_f00d_5b0e);
    let mut ended_with_error = 0;
    for _ in 0..5_000 {
        let len = rng.below(64);
        let stream = rng.bytes(len);
        let cuts = rng.below(4);
        let outcome = run(random_pieces(&mut rng, &stream, cuts));
        outcome.messages.iter().for_each(assert_round_trips);
        ended_with_error += usize::from(outcome.end.is_err());
    }
    // Random bytes almost never form a valid stream; empty streams are the clean exceptions.
    assert!(ended_with_error > 4_500, "only {ended_with_error} errors");
}

#[test]
fn random_bodies_in_valid_frames_never_panic() {
    // Honest framing around random bodies reaches the postcard decoder every time.
    let mut rng = XorShift(0x00b0_d1e5);
    let mut verdicts = std::collections::BTreeMap::<&str, usize>::new();
    for _ in 0..20_000 {
        let len = rng.below(48);
        let mut body = rng.bytes(len);
        // Bias towards real variant indices so Hello and Ping decoding get deep: Message index
        // 0..=2, then a small second byte (the ping::Message index, or the Hello's version count).
        if let Some(first) = body.first_mut() {
            *first %= 3;
        }
        if let Some(second) = body.get_mut(1) {
            *second %= 2;
        }
        let outcome = run([frame(&body).as_slice()]);
        outcome.messages.iter().for_each(assert_round_trips);
        *verdicts.entry(verdict(&outcome)).or_default() += 1;
    }
    // Every path is taken: clean pings, trailing bytes, postcard errors.
    for v in ["clean end", "trailing", "malformed"] {
        assert!(
            verdicts.contains_key(v),
            "no random body ended in `{v}`: {verdicts:?}"
        );
    }
}

#[test]
fn mutated_valid_frames_never_panic() {
    let mut hello = valid_hello();
    hello.listen_addrs.push("[::1]:9".parse().expect("valid"));
    let mut stream = encode_frame(&Message::Hello(hello))
        .expect("encodes")
        .to_vec();
    stream.extend_from_slice(&ping_frame(77));
    let mut rng = XorShift(0xf1_1b);
    for _ in 0..20_000 {
        let mut mutated = stream.clone();
        for _ in 0..1 + rng.below(3) {
            let i = rng.below(mutated.len());
            mutated[i] = rng.next() as u8;
        }
        let cuts = rng.below(3);
        let outcome = run(random_pieces(&mut rng, &mutated, cuts));
        outcome.messages.iter().for_each(assert_round_trips);
    }
}

// ---------------------------------------------------------------------------------------------
// Regression tests for bugs the fuzzing work found.

#[test]
fn default_decoder_accepts_frames() {
    let mut decoder = FrameDecoder::default();
    decoder.extend(&ping_frame(1));
    assert_eq!(
        decoder.next_message(),
        Ok(Some(Message::Ping(ping::Message::Ping { nonce: 1 })))
    );
}

#[test]
fn encode_frame_refuses_what_the_decoder_rejects() {
    let mut hello = valid_hello();
    hello.agent = "a".repeat(MAX_AGENT_LEN + 1);
    let msg = Message::Hello(hello);
    assert!(msg.validate().is_err());
    assert!(
        encode_frame(&msg).is_err(),
        "encode_frame produced a frame the peer will reject"
    );
}

#[test]
fn failed_decoder_stops_buffering() {
    let mut decoder = FrameDecoder::new();
    decoder.extend(&[0, 0, 0, 0]);
    assert_eq!(decoder.next_message(), Err(WireError::Empty));
    for _ in 0..16 {
        decoder.extend(&[0; 64 * 1024]);
    }
    assert_eq!(decoder.buffered(), 0, "input after the error is kept");
}

// ---------------------------------------------------------------------------------------------
// Peer exchange.

/// A signed peer record of `seed` with `addrs` addresses (validity does not matter to the wire).
fn pex_record(seed: u8, addrs: usize) -> spore_core::kad::record::PeerRecord {
    let key = spore_core::Keypair::from_secret_bytes([seed; 32]);
    let addrs = (0..addrs)
        .map(|i| SocketAddr::from(([192, 0, 2, seed], 4000 + i as u16)))
        .collect();
    spore_core::kad::record::PeerRecord::new(&key, Stamp { nonce: 0 }, addrs, vec![], 1, 60)
}

#[test]
fn pex_bounds_are_enforced_one_past_the_limit() {
    use spore_core::kad::record::MAX_RECORD_ADDRS;
    use spore_core::pex::{self, MAX_RECORDS};

    // Variant 3 is Pex; an empty `Records` is a valid message.
    let outcome = run([frame(&[3, 0, 0]).as_slice()]);
    assert_eq!(
        outcome.messages,
        [Message::Pex(pex::Message::Records(vec![]))]
    );
    assert_eq!(outcome.end, Ok(()));
    assert_malformed("pex::Message variant 1", &frame(&[3, 1, 0]));

    let records: Vec<_> = (0..=MAX_RECORDS as u8).map(|i| pex_record(i, 1)).collect();
    let at_limit = Message::Pex(pex::Message::Records(records[..MAX_RECORDS].to_vec()));
    let outcome = run([frame(&body_of(&at_limit)).as_slice()]);
    assert_eq!(outcome.messages, [at_limit]);
    assert_eq!(outcome.end, Ok(()));
    let over = Message::Pex(pex::Message::Records(records));
    assert_eq!(
        error_of(&frame(&body_of(&over))),
        WireError::Bounds {
            field: "pex.records",
            found: MAX_RECORDS + 1,
            max: MAX_RECORDS
        }
    );

    let fat = Message::Pex(pex::Message::Records(vec![pex_record(
        1,
        MAX_RECORD_ADDRS + 1,
    )]));
    assert_eq!(
        error_of(&frame(&body_of(&fat))),
        WireError::Bounds {
            field: "pex.record.addrs",
            found: MAX_RECORD_ADDRS + 1,
            max: MAX_RECORD_ADDRS
        }
    );
}

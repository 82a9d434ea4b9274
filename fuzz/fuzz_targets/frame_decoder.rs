//! Feeds arbitrary bytes to [`FrameDecoder`], in chunks whose sizes derive from the input, and
//! checks that every message it yields re-encodes and decodes back to the same value.
//!
//! Input layout: `split:u8 stream…`. `split == 0` feeds the whole stream at once; otherwise chunk
//! sizes come from a xorshift generator seeded with `split`, each in `1..=split`. Files of
//! `corpus/frame_decoder/` use the same layout, and `crates/spore-core/tests/malformed_frames.rs`
//! replays them the same way (keep `chunk_sizes` in step with `chunked` there).

#![no_main]

use libfuzzer_sys::fuzz_target;
use spore_core::wire::{FrameDecoder, MAX_FRAME_LEN, Message, encode_frame};

fuzz_target!(|data: &[u8]| {
    let Some((&split, stream)) = data.split_first() else {
        return;
    };
    let mut decoder = FrameDecoder::new();
    let mut rest = stream;
    let mut sizes = ChunkSizes::new(split);
    while !rest.is_empty() {
        let n = sizes.next_size().unwrap_or(rest.len()).min(rest.len());
        let (chunk, tail) = rest.split_at(n);
        rest = tail;
        decoder.extend(chunk);
        loop {
            match decoder.next_message() {
                Ok(Some(msg)) => check_round_trip(&msg),
                Ok(None) => break,
                Err(_) => {
                    assert!(
                        decoder.next_message().is_err(),
                        "a failed decoder must stay failed"
                    );
                    return;
                }
            }
        }
    }
    // Whatever is still buffered is one partial frame (never more than the limit), which
    // `finish` must report.
    assert!(decoder.buffered() < 4 + MAX_FRAME_LEN);
    assert_eq!(decoder.finish().is_ok(), decoder.buffered() == 0);
});

/// A decoded message is valid, so it must encode, and its encoding must decode to itself.
fn check_round_trip(msg: &Message) {
    msg.validate()
        .expect("the decoder yielded an invalid message");
    let frame = encode_frame(msg).expect("a decoded message must re-encode");
    let mut decoder = FrameDecoder::new();
    decoder.extend(&frame);
    let again = decoder
        .next_message()
        .expect("re-encoded frame must decode")
        .expect("re-encoded frame is complete");
    assert_eq!(&again, msg, "round trip changed the message");
    assert_eq!(decoder.next_message(), Ok(None));
    assert_eq!(decoder.finish(), Ok(()));
}

/// Chunk sizes for one input: `None` means "everything at once".
struct ChunkSizes {
    max: u32,
    state: u32,
}

impl ChunkSizes {
    fn new(split: u8) -> Self {
        Self {
            max: u32::from(split),
            state: 0x9e37_79b9 ^ u32::from(split),
        }
    }

    fn next_size(&mut self) -> Option<usize> {
        if self.max == 0 {
            return None;
        }
        // xorshift32
        self.state ^= self.state << 13;
        self.state ^= self.state >> 17;
        self.state ^= self.state << 5;
        Some((1 + self.state % self.max) as usize)
    }
}

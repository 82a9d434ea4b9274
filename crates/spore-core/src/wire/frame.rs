//! Frame encoding and the streaming decoder.

use bytes::{Buf, Bytes, BytesMut};

use super::{MAX_FRAME_LEN, Message, WIRE_VERSION, WireError};

const LEN_PREFIX: usize = 4;

/// Encodes `msg` as one frame: length prefix, version byte, postcard body.
///
/// A message that a receiver would reject (see [`Message::validate`]) is refused here too, so a
/// node never sends what its peers must drop.
pub fn encode_frame(msg: &Message) -> Result<Bytes, WireError> {
    msg.validate()?;
    // The body is written straight after a placeholder prefix and the version byte, in one
    // buffer sized for most messages, and the prefix filled in after.
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(&[0; LEN_PREFIX]);
    out.push(WIRE_VERSION);
    let mut out = postcard::to_extend(msg, out).map_err(|e| WireError::Malformed(e.to_string()))?;
    let len = out.len() - LEN_PREFIX;
    if len > MAX_FRAME_LEN {
        return Err(WireError::TooLarge {
            len,
            max: MAX_FRAME_LEN,
        });
    }
    // `len` ≤ MAX_FRAME_LEN < u32::MAX.
    out[..LEN_PREFIX].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(Bytes::from(out))
}

/// Decodes exactly one whole frame (length prefix included), as [`FrameDecoder`] would, without
/// copying it into a buffer first: for a caller that already holds frames whole.
pub fn decode_frame(frame: &[u8]) -> Result<Message, WireError> {
    let (prefix, body) = frame.split_at_checked(LEN_PREFIX).ok_or(WireError::Empty)?;
    let len = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
    if len == 0 {
        return Err(WireError::Empty);
    }
    if len > MAX_FRAME_LEN {
        return Err(WireError::TooLarge {
            len,
            max: MAX_FRAME_LEN,
        });
    }
    if body.len() != len {
        return Err(WireError::Trailing(body.len().abs_diff(len)));
    }
    decode_body(body)
}

/// Decodes one frame's contents (version byte and body, without the length prefix).
fn decode_body(frame: &[u8]) -> Result<Message, WireError> {
    let (&version, body) = frame.split_first().ok_or(WireError::Empty)?;
    if version != WIRE_VERSION {
        return Err(WireError::Version(version));
    }
    let (msg, rest): (Message, &[u8]) =
        postcard::take_from_bytes(body).map_err(|e| WireError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(WireError::Trailing(rest.len()));
    }
    msg.validate()?;
    Ok(msg)
}

/// Turns a byte stream into [`Message`]s.
///
/// Feed it whatever arrives with [`extend`](Self::extend), then call
/// [`next_message`](Self::next_message) until it returns `Ok(None)`. The decoder holds at most one
/// partial frame plus the last chunk fed; a length prefix above [`MAX_FRAME_LEN`] is an error
/// before any of the frame is buffered. After an error the stream is unusable: close it.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: BytesMut,
    max_len: usize,
    failed: bool,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameDecoder {
    /// A decoder with the protocol's [`MAX_FRAME_LEN`].
    pub fn new() -> Self {
        Self::with_max_len(MAX_FRAME_LEN)
    }

    /// A decoder with a lower frame limit (values above [`MAX_FRAME_LEN`] are clamped).
    pub fn with_max_len(max_len: usize) -> Self {
        Self {
            buf: BytesMut::new(),
            max_len: max_len.min(MAX_FRAME_LEN),
            failed: false,
        }
    }

    /// Appends bytes received from the stream. Ignored once the decoder has failed.
    pub fn extend(&mut self, data: &[u8]) {
        if !self.failed {
            self.buf.extend_from_slice(data);
        }
    }

    /// Bytes buffered and not yet decoded.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next complete message, `Ok(None)` if more bytes are needed.
    pub fn next_message(&mut self) -> Result<Option<Message>, WireError> {
        if self.failed {
            return Err(WireError::Malformed("decoder already failed".into()));
        }
        let result = self.next_inner();
        if result.is_err() {
            self.failed = true;
            self.buf = BytesMut::new();
        }
        result
    }

    fn next_inner(&mut self) -> Result<Option<Message>, WireError> {
        if self.buf.len() < LEN_PREFIX {
            return Ok(None);
        }
        let len = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as usize;
        if len == 0 {
            return Err(WireError::Empty);
        }
        if len > self.max_len {
            return Err(WireError::TooLarge {
                len,
                max: self.max_len,
            });
        }
        if self.buf.len() < LEN_PREFIX + len {
            return Ok(None);
        }
        self.buf.advance(LEN_PREFIX);
        let frame = self.buf.split_to(len);
        decode_body(&frame).map(Some)
    }

    /// Call when the stream has ended: an error if it ended inside a frame.
    pub fn finish(&self) -> Result<(), WireError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(WireError::Truncated(self.buf.len()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ping;

    fn ping(nonce: u64) -> Message {
        Message::Ping(ping::Message::Ping { nonce })
    }

    #[test]
    fn decode_frame_takes_exactly_one_whole_frame() {
        let frame = encode_frame(&ping(9)).unwrap();
        assert_eq!(decode_frame(&frame).unwrap(), ping(9));
        // Cut short, padded, empty, claiming more than the limit: refused, never a panic.
        for bad in [&frame[..frame.len() - 1], &frame[..3], &[][..]] {
            assert!(decode_frame(bad).is_err(), "{bad:?}");
        }
        let mut padded = frame.to_vec();
        padded.push(0);
        assert!(matches!(decode_frame(&padded), Err(WireError::Trailing(1))));
        let mut huge = frame.to_vec();
        huge[..4].copy_from_slice(&(MAX_FRAME_LEN as u32 + 1).to_be_bytes());
        assert!(matches!(
            decode_frame(&huge),
            Err(WireError::TooLarge { .. })
        ));
        assert!(matches!(decode_frame(&[0, 0, 0, 0]), Err(WireError::Empty)));
    }

    #[test]
    fn frames_split_anywhere() {
        let msgs = [
            ping(1),
            ping(u64::MAX),
            Message::Ping(ping::Message::Pong { nonce: 7 }),
        ];
        let mut stream = Vec::new();
        for m in &msgs {
            stream.extend_from_slice(&encode_frame(m).unwrap());
        }
        for split in 0..stream.len() {
            let mut dec = FrameDecoder::new();
            let mut got = Vec::new();
            for part in [&stream[..split], &stream[split..]] {
                dec.extend(part);
                while let Some(m) = dec.next_message().unwrap() {
                    got.push(m);
                }
            }
            assert_eq!(got, msgs);
            dec.finish().unwrap();
        }
    }

    #[test]
    fn oversized_rejected_before_buffering() {
        let mut dec = FrameDecoder::new();
        dec.extend(&((MAX_FRAME_LEN + 1) as u32).to_be_bytes());
        assert_eq!(
            dec.next_message(),
            Err(WireError::TooLarge {
                len: MAX_FRAME_LEN + 1,
                max: MAX_FRAME_LEN
            })
        );
        assert!(dec.next_message().is_err(), "a failed decoder stays failed");
    }

    #[test]
    fn wrong_version_and_trailing_bytes() {
        let mut frame = encode_frame(&ping(3)).unwrap().to_vec();
        frame[4] = 9;
        let mut dec = FrameDecoder::new();
        dec.extend(&frame);
        assert_eq!(dec.next_message(), Err(WireError::Version(9)));

        let mut frame = encode_frame(&ping(3)).unwrap().to_vec();
        frame.push(0);
        let len = (frame.len() - 4) as u32;
        frame[..4].copy_from_slice(&len.to_be_bytes());
        let mut dec = FrameDecoder::new();
        dec.extend(&frame);
        assert_eq!(dec.next_message(), Err(WireError::Trailing(1)));
    }

    #[test]
    fn truncated_stream_reported() {
        let frame = encode_frame(&ping(3)).unwrap();
        let mut dec = FrameDecoder::new();
        dec.extend(&frame[..frame.len() - 1]);
        assert_eq!(dec.next_message(), Ok(None));
        assert!(matches!(dec.finish(), Err(WireError::Truncated(_))));
    }
}

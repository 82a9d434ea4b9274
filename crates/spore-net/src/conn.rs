//! Per-connection tasks: the control-stream writer and the stream acceptor/reader.
//!
//! Each side opens one unidirectional stream whose first byte is [`StreamKind::Control`] and then
//! carries frames; further unidirectional streams start with another kind byte. A reader turns
//! the peer's control stream into messages for the runtime; nothing from the peer is buffered
//! beyond one frame, and any decoding error closes the connection.

use bytes::Bytes;
use spore_core::PeerId;
use spore_core::wire::{FrameDecoder, Message, WireError};
use tokio::sync::mpsc;
use tracing::debug;

use crate::resources::{Memory, Reservation, Scope, Use, Windows};
use crate::runtime::Input;

/// What a connection's readers need besides the stream: the memory they reserve from, the
/// windows bulk data grows, and the peer's message rate.
#[derive(Clone)]
pub(crate) struct Reader {
    pub(crate) memory: Memory,
    pub(crate) scope: Scope,
    pub(crate) windows: Option<std::sync::Arc<Windows>>,
    /// Control messages per second (and burst); 0 is unlimited.
    pub(crate) rate: u32,
}

/// The first byte of every unidirectional stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum StreamKind {
    /// Frames of [`Message`]s; exactly one per direction per connection.
    Control = 0x00,
    /// An application byte stream, handed to the embedding program.
    App = 0x01,
    /// Frames of bulk messages (swarm data); at most one per direction per connection, opened
    /// when the first is sent. Decoded like the control stream, so that a large data frame
    /// never waits in front of a ping or a DHT answer.
    Bulk = 0x02,
    /// A relay stream (bidirectional): a reservation, or a circuit carrying a relayed
    /// connection's packets (see [`crate::relay`]).
    Relay = 0x03,
}

impl StreamKind {
    fn from_byte(b: u8) -> Option<Self> {
        match b {
            0x00 => Some(Self::Control),
            0x01 => Some(Self::App),
            0x02 => Some(Self::Bulk),
            0x03 => Some(Self::Relay),
            _ => None,
        }
    }
}

/// Application error codes used when closing connections.
pub mod close_code {
    /// Normal shutdown.
    pub const NORMAL: u32 = 0;
    /// The peer broke the wire protocol (malformed or oversized frame, unknown stream kind).
    pub const PROTOCOL: u32 = 1;
    /// A second connection to the same peer; the other one is kept.
    pub const DUPLICATE: u32 = 2;
    /// A connection limit was reached.
    pub const LIMIT: u32 = 3;
    /// The protocol core asked for the close (bad hello, violation, timeout).
    pub const REJECTED: u32 = 4;
}

/// Most bytes a reader takes from a stream at once.
const READ_CHUNK: usize = 64 * 1024;

/// Error code for stopping an application stream nobody is accepting.
const STREAM_REFUSED: u32 = 1;

/// A queued frame and the memory it holds until written.
pub(crate) type Queued = (Bytes, Reservation);

/// Writes queued frames to a stream of `kind` (control or bulk) until the queue closes or the
/// stream fails. The control stream is opened at once; the bulk stream with its first frame.
/// Bulk frames grow the connection's windows (see [`crate::resources`]).
pub(crate) async fn write_frames(
    conn: quinn::Connection,
    kind: StreamKind,
    mut frames: mpsc::Receiver<Queued>,
    windows: Option<std::sync::Arc<Windows>>,
) {
    let bulk = |w: &Option<std::sync::Arc<Windows>>| {
        if let Some(w) = w {
            w.bulk();
        }
    };
    let mut first = None;
    if kind == StreamKind::Bulk {
        match frames.recv().await {
            Some(frame) => first = Some(frame),
            None => return,
        }
    }
    let mut send = match conn.open_uni().await {
        Ok(s) => s,
        Err(e) => {
            debug!(error = %e, ?kind, "cannot open stream");
            return;
        }
    };
    if send.write_all(&[kind as u8]).await.is_err() {
        return;
    }
    if let Some((frame, _memory)) = first {
        bulk(&windows);
        if send.write_chunk(frame).await.is_err() {
            return;
        }
    }
    while let Some((frame, _memory)) = frames.recv().await {
        if kind == StreamKind::Bulk {
            bulk(&windows);
        }
        if let Err(e) = send.write_chunk(frame).await {
            debug!(error = %e, ?kind, "stream write failed");
            return;
        }
    }
    let _ = send.finish();
}

/// Accepts the peer's unidirectional streams and dispatches them by kind.
pub(crate) async fn accept_streams(
    conn: quinn::Connection,
    peer: PeerId,
    inputs: mpsc::Sender<Input>,
    app_streams: mpsc::Sender<(PeerId, quinn::RecvStream)>,
    reader: Reader,
) {
    let conn_id = conn.stable_id();
    let mut have_control = false;
    let mut have_bulk = false;
    loop {
        let mut recv = match conn.accept_uni().await {
            Ok(r) => r,
            Err(_) => return, // connection closed; the runtime learns it from its watcher
        };
        let mut kind = [0u8; 1];
        if recv.read_exact(&mut kind).await.is_err() {
            continue;
        }
        match StreamKind::from_byte(kind[0]) {
            Some(StreamKind::Control) if !have_control => {
                have_control = true;
                let r = reader.clone();
                tokio::spawn(read_frames(recv, peer, conn_id, inputs.clone(), r, false));
            }
            Some(StreamKind::Bulk) if !have_bulk => {
                have_bulk = true;
                let r = reader.clone();
                tokio::spawn(read_frames(recv, peer, conn_id, inputs.clone(), r, true));
            }
            Some(kind @ (StreamKind::Control | StreamKind::Bulk)) => {
                let err = WireError::Malformed(format!("second {kind:?} stream"));
                return report(&inputs, peer, conn_id, err).await;
            }
            Some(StreamKind::Relay) => {
                let err = WireError::Malformed("relay stream opened unidirectional".into());
                return report(&inputs, peer, conn_id, err).await;
            }
            Some(StreamKind::App) => {
                // An application stream is bulk by nature: grow the windows for it.
                if let Some(w) = &reader.windows {
                    w.bulk();
                }
                if let Err(mpsc::error::TrySendError::Full((_, mut recv))) =
                    app_streams.try_send((peer, recv))
                {
                    debug!(%peer, "application stream refused: queue full");
                    let _ = recv.stop(quinn::VarInt::from_u32(STREAM_REFUSED));
                }
            }
            None => {
                let err = WireError::Malformed(format!("unknown stream kind {:#04x}", kind[0]));
                return report(&inputs, peer, conn_id, err).await;
            }
        }
    }
}

/// Tells the runtime that `peer`'s connection broke the stream rules (it closes the connection).
async fn report(inputs: &mpsc::Sender<Input>, peer: PeerId, conn_id: usize, error: WireError) {
    let _ = inputs
        .send(Input::WireError {
            peer,
            conn_id,
            error,
        })
        .await;
}

/// Accepts the peer's bidirectional streams: relay streams only (reservations and circuits);
/// anything else is refused. At most `Limits::max_relay_streams` are open at once (QUIC's own
/// stream limit).
pub(crate) async fn accept_bidi_streams(
    conn: quinn::Connection,
    peer: PeerId,
    relay: std::sync::Arc<crate::relay::RelayShared>,
) {
    loop {
        let (send, mut recv) = match conn.accept_bi().await {
            Ok(s) => s,
            Err(_) => return,
        };
        let relay = relay.clone();
        let conn = conn.clone();
        tokio::spawn(async move {
            let mut kind = [0u8; 1];
            if recv.read_exact(&mut kind).await.is_err() {
                return;
            }
            if kind[0] != StreamKind::Relay as u8 {
                debug!(%peer, kind = kind[0], "bidirectional stream of unknown kind refused");
                let _ = recv.stop(quinn::VarInt::from_u32(STREAM_REFUSED));
                return;
            }
            crate::relay::serve_stream(relay, conn, peer, send, recv).await;
        });
    }
}

/// Decodes frames from the peer's control or bulk stream. What is read is reserved from the
/// connection's scope and the node's budget first, and stays reserved until the runtime has
/// handled the message; both that and the bounded `inputs` channel are backpressure: while
/// either is short, this task stops reading and QUIC flow control stops the peer. Control
/// messages are also held to the peer's rate.
async fn read_frames(
    mut recv: quinn::RecvStream,
    peer: PeerId,
    conn_id: usize,
    inputs: mpsc::Sender<Input>,
    reader: Reader,
    bulk: bool,
) {
    let mut decoder = FrameDecoder::new();
    // What the decoder holds: the partial frame and the chunk being decoded.
    let mut held = reader.memory.empty(Use::Inbound);
    let mut rate = (!bulk && reader.rate > 0).then(|| TokenBucket::new(reader.rate));
    loop {
        // Reserve before reading, so that nothing read is ever unaccounted; what the chunk
        // does not use goes back at once.
        let Some(mut room) = reader
            .memory
            .reserve(Use::Inbound, READ_CHUNK, &reader.scope)
            .await
        else {
            return; // the connection is gone
        };
        let chunk = match recv.read_chunk(READ_CHUNK, true).await {
            Ok(Some(chunk)) => chunk.bytes,
            Ok(None) => {
                if let Err(error) = decoder.finish() {
                    report(&inputs, peer, conn_id, error).await;
                }
                return;
            }
            Err(_) => return,
        };
        held.merge(room.split(chunk.len()));
        drop(room);
        if bulk && let Some(w) = &reader.windows {
            w.bulk();
        }
        decoder.extend(&chunk);
        loop {
            let before = decoder.buffered();
            match decoder.next_message() {
                Ok(Some(msg)) => {
                    let used = before - decoder.buffered();
                    let memory = held.split(used);
                    if let Some(bucket) = &mut rate {
                        bucket.take().await;
                    }
                    let input = Input::Message {
                        peer,
                        conn_id,
                        msg,
                        memory,
                    };
                    if inputs.send(input).await.is_err() {
                        return;
                    }
                }
                Ok(None) => break,
                Err(error) => {
                    report(&inputs, peer, conn_id, error).await;
                    return;
                }
            }
        }
        // Decoded bytes are gone; keep only what the decoder still buffers.
        let excess = held.bytes().saturating_sub(decoder.buffered());
        drop(held.split(excess));
    }
}

/// A token bucket of messages: `rate` per second, holding at most `rate`.
struct TokenBucket {
    rate: f64,
    tokens: f64,
    at: tokio::time::Instant,
}

impl TokenBucket {
    fn new(rate: u32) -> Self {
        Self {
            rate: f64::from(rate),
            tokens: f64::from(rate),
            at: tokio::time::Instant::now(),
        }
    }

    /// Takes a token, waiting for one if the bucket is empty.
    async fn take(&mut self) {
        let now = tokio::time::Instant::now();
        self.tokens =
            (self.tokens + now.duration_since(self.at).as_secs_f64() * self.rate).min(self.rate);
        self.at = now;
        if self.tokens < 1.0 {
            let wait = (1.0 - self.tokens) / self.rate;
            tokio::time::sleep(std::time::Duration::from_secs_f64(wait)).await;
            self.tokens = 1.0;
            self.at = tokio::time::Instant::now();
        }
        self.tokens -= 1.0;
    }
}

/// Encodes a message for the control stream.
pub(crate) fn encode(msg: &Message) -> Result<Bytes, WireError> {
    spore_core::wire::encode_frame(msg)
}

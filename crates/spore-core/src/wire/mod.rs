//! The wire format: versioned, length-prefixed frames carrying one [`Message`] each.
//!
//! ```text
//! frame   = length:u32be  version:u8  body
//! length  = 1 + len(body)             (at most MAX_FRAME_LEN)
//! body    = postcard(Message)
//! ```
//!
//! A decoder never trusts a peer: the length is checked against [`MAX_FRAME_LEN`] before anything
//! is buffered, the version must be [`WIRE_VERSION`], the body must decode to exactly one message
//! with no trailing bytes, and the message must pass [`Message::validate`] (counts and sizes).
//! `docs/protocol.md` describes the format byte by byte.

mod frame;
mod hello;

pub use frame::{FrameDecoder, decode_frame, encode_frame};
pub use hello::{Capabilities, Hello, MAX_AGENT_LEN, MAX_LISTEN_ADDRS, MAX_VERSIONS};

use serde::{Deserialize, Serialize};

use crate::{gossip, kad, pex, ping, pubsub, swarm};

/// The frame format version this implementation speaks.
pub const WIRE_VERSION: u8 = 1;

/// Hard upper bound on `length` (version byte plus body), in bytes. No frame larger than this is
/// ever buffered, sent or accepted.
pub const MAX_FRAME_LEN: usize = 1 << 20;

/// Everything a spore node says on a connection's control stream.
///
/// Variants are only ever appended: the postcard encoding of an enum is its variant index, so the
/// order is part of the wire format. Each sub-protocol owns exactly one variant holding its own
/// message type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Message {
    /// The first message on every connection, in both directions.
    Hello(Hello),
    /// Liveness and round-trip time.
    Ping(ping::Message),
    /// Kademlia: node and record lookups.
    Kad(kad::Message),
    /// Peer exchange: signed peer records.
    Pex(pex::Message),
    /// Gossip: overlay membership and keyword search.
    Gossip(gossip::Message),
    /// Topic publish/subscribe.
    PubSub(pubsub::Message),
    /// Swarming of verified blobs.
    Swarm(swarm::Message),
    /// Document sync: reconciliation and changes.
    Doc(crate::doc::sync::Message),
    /// Hole punching: moving a relayed connection to a direct path.
    Punch(crate::nat::punch::Message),
    /// Super-peers: leaves joining and leaving them.
    SuperPeer(crate::superpeer::Message),
}

impl Message {
    /// Checks the bounds that the type system does not: list lengths, string sizes.
    pub fn validate(&self) -> Result<(), WireError> {
        match self {
            Message::Hello(h) => h.validate(),
            Message::Ping(_) => Ok(()),
            Message::Kad(m) => m.validate(),
            Message::Pex(m) => m.validate(),
            Message::Gossip(m) => m.validate(),
            Message::PubSub(m) => m.validate(),
            Message::Swarm(m) => m.validate(),
            Message::Doc(m) => m.validate(),
            Message::Punch(m) => m.validate(),
            Message::SuperPeer(m) => m.validate(),
        }
    }

    /// A short name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Hello(_) => "hello",
            Message::Ping(ping::Message::Ping { .. }) => "ping",
            Message::Ping(ping::Message::Pong { .. }) => "pong",
            Message::Kad(kad::Message::Request { .. }) => "kad-request",
            Message::Kad(kad::Message::Response { .. }) => "kad-response",
            Message::Pex(pex::Message::Records(_)) => "pex-records",
            Message::Gossip(m) => m.kind(),
            Message::PubSub(m) => m.kind(),
            Message::Swarm(m) => m.kind(),
            Message::Doc(m) => m.kind(),
            Message::Punch(m) => m.kind(),
            Message::SuperPeer(m) => m.kind(),
        }
    }
}

impl From<Hello> for Message {
    fn from(h: Hello) -> Self {
        Message::Hello(h)
    }
}

impl From<kad::Message> for Message {
    fn from(m: kad::Message) -> Self {
        Message::Kad(m)
    }
}

impl From<pex::Message> for Message {
    fn from(m: pex::Message) -> Self {
        Message::Pex(m)
    }
}

impl From<gossip::Message> for Message {
    fn from(m: gossip::Message) -> Self {
        Message::Gossip(m)
    }
}

impl From<pubsub::Message> for Message {
    fn from(m: pubsub::Message) -> Self {
        Message::PubSub(m)
    }
}

impl From<crate::doc::sync::Message> for Message {
    fn from(m: crate::doc::sync::Message) -> Self {
        Message::Doc(m)
    }
}

impl From<swarm::Message> for Message {
    fn from(m: swarm::Message) -> Self {
        Message::Swarm(m)
    }
}

impl From<crate::superpeer::Message> for Message {
    fn from(m: crate::superpeer::Message) -> Self {
        Message::SuperPeer(m)
    }
}

impl From<crate::nat::punch::Message> for Message {
    fn from(m: crate::nat::punch::Message) -> Self {
        Message::Punch(m)
    }
}

impl From<ping::Message> for Message {
    fn from(m: ping::Message) -> Self {
        Message::Ping(m)
    }
}

/// Why bytes from a peer are not a valid frame or message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// The length prefix exceeds [`MAX_FRAME_LEN`].
    #[error("frame of {len} bytes exceeds the maximum of {max}")]
    TooLarge {
        /// Announced length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The length prefix is zero (no room for the version byte).
    #[error("empty frame")]
    Empty,
    /// The frame's version byte is not one we speak.
    #[error("unsupported wire version {0} (this node speaks {WIRE_VERSION})")]
    Version(u8),
    /// The body is not a valid postcard encoding of a [`Message`].
    #[error("malformed message: {0}")]
    Malformed(String),
    /// The body decoded but left bytes unread.
    #[error("{0} trailing bytes after the message")]
    Trailing(usize),
    /// A field is out of bounds.
    #[error("{field} has {found} entries/bytes, at most {max} allowed")]
    Bounds {
        /// Which field.
        field: &'static str,
        /// Its size.
        found: usize,
        /// The limit.
        max: usize,
    },
    /// The stream ended in the middle of a frame.
    #[error("stream ended inside a frame ({0} bytes buffered)")]
    Truncated(usize),
}

pub(crate) fn check_bound(field: &'static str, found: usize, max: usize) -> Result<(), WireError> {
    if found > max {
        Err(WireError::Bounds { field, found, max })
    } else {
        Ok(())
    }
}

//! Kademlia's messages: requests and responses matched by id.

use serde::{Deserialize, Serialize};

use super::record::{PeerRecord, ProviderRecord, ValueRecord};
use super::{Contact, Key, MAX_CONTACT_ADDRS};
use crate::identity::PeerId;
use crate::wire::{WireError, check_bound};

/// Most contacts in one answer (k).
pub const MAX_CONTACTS: usize = 20;
/// Most provider records in one answer.
pub const MAX_PROVIDERS: usize = 20;
/// Longest refusal reason, in bytes.
pub const MAX_REASON_LEN: usize = 128;

/// A Kademlia message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// A question; the answer carries the same `id`.
    Request {
        /// Chosen by the asker, unique among its requests in flight to this peer.
        id: u64,
        /// The question.
        request: Request,
    },
    /// The answer to the request with `id`.
    Response {
        /// The request's id.
        id: u64,
        /// The answer.
        response: Response,
    },
}

/// Questions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Request {
    /// Are you there? (Used before evicting a routing-table entry.) Answered by `Pong`.
    Ping,
    /// Which nodes do you know closest to `target`? Answered by `Nodes`.
    FindNode {
        /// The key looked up.
        target: Key,
    },
    /// The value stored under `key`, or closer nodes. Answered by `Value`.
    GetValue {
        /// The value's key.
        key: Key,
    },
    /// Store this signed value. Answered by `Stored` or `Refused`.
    PutValue {
        /// The record.
        record: ValueRecord,
    },
    /// Who provides `key`, or closer nodes. Answered by `Providers`.
    GetProviders {
        /// The content key.
        key: Key,
    },
    /// Remember that the signer provides some content. Answered by `Stored` or `Refused`.
    AddProvider {
        /// The record.
        record: ProviderRecord,
    },
    /// The signed record of `peer`, or closer nodes. Answered by `Peer`.
    FindPeer {
        /// The peer looked for.
        peer: PeerId,
    },
    /// Store this signed peer record. Answered by `Stored` or `Refused`.
    PutPeer {
        /// The record.
        record: PeerRecord,
    },
}

/// Answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Response {
    /// Answer to `Ping`.
    Pong,
    /// Answer to `FindNode`: the closest nodes the responder knows.
    Nodes {
        /// At most [`MAX_CONTACTS`].
        closer: Vec<Contact>,
    },
    /// Answer to `GetValue`.
    Value {
        /// The record, if the responder holds one.
        record: Option<ValueRecord>,
        /// Closer nodes.
        closer: Vec<Contact>,
    },
    /// Answer to `GetProviders`.
    Providers {
        /// Provider records held, at most [`MAX_PROVIDERS`].
        providers: Vec<ProviderRecord>,
        /// Closer nodes.
        closer: Vec<Contact>,
    },
    /// Answer to `FindPeer`.
    Peer {
        /// The peer's signed record, if the responder holds one.
        record: Option<PeerRecord>,
        /// Closer nodes.
        closer: Vec<Contact>,
    },
    /// The record was stored.
    Stored,
    /// The request was refused.
    Refused {
        /// Why, for diagnostics (at most [`MAX_REASON_LEN`] bytes).
        reason: String,
    },
}

impl Message {
    /// Checks counts and sizes a decoder must bound.
    pub fn validate(&self) -> Result<(), WireError> {
        let Message::Response { response, .. } = self else {
            return Ok(());
        };
        let closer = match response {
            Response::Nodes { closer }
            | Response::Value { closer, .. }
            | Response::Peer { closer, .. } => closer,
            Response::Providers { providers, closer } => {
                check_bound("kad.providers", providers.len(), MAX_PROVIDERS)?;
                closer
            }
            Response::Refused { reason } => {
                return check_bound("kad.reason", reason.len(), MAX_REASON_LEN);
            }
            Response::Pong | Response::Stored => return Ok(()),
        };
        check_bound("kad.closer", closer.len(), MAX_CONTACTS)?;
        for c in closer {
            check_bound("kad.contact.addrs", c.addrs.len(), MAX_CONTACT_ADDRS)?;
        }
        Ok(())
    }
}

//! Errors of the runtime's public API.

use std::net::SocketAddr;

use spore_core::PeerId;

/// A node could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// A UDP socket could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The TLS configuration could not be built from the identity.
    #[error("cannot build TLS configuration: {0}")]
    Tls(String),
    /// The identity's proof-of-work stamp is too weak for the configured difficulty.
    #[error(transparent)]
    Stamp(#[from] spore_core::pow::StampError),
    /// No listen address was given.
    #[error("no listen address configured")]
    NoListenAddr,
    /// The TURN server is IPv4 (IPv6 TURN is not supported) and no IPv4 address is bound.
    #[error("the TURN server {0} needs an IPv4 listen address")]
    Turn(SocketAddr),
    /// The record store could not be opened.
    #[error("cannot open the record store: {0}")]
    Records(String),
    /// mDNS could not start.
    #[error("cannot start mDNS: {0}")]
    Mdns(String),
    /// The document store could not be opened or read.
    #[error("cannot open the document store: {0}")]
    Docs(String),
    /// The credit ledger could not be read.
    #[error("cannot read the credit ledger: {0}")]
    Ledger(String),
    /// The saved vouches are not a valid statement.
    #[error("cannot restore the vouches: {0}")]
    Trust(#[from] spore_core::trust::wot::TrustError),
}

/// A dial failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DialError {
    /// The remote presented a different key than the PeerId we dialed. No application data was
    /// exchanged.
    #[error("peer id mismatch: dialed {expected}, but {addr} presented {actual}")]
    PeerIdMismatch {
        /// The PeerId we dialed.
        expected: PeerId,
        /// The PeerId the remote's certificate carries.
        actual: PeerId,
        /// The address dialed.
        addr: SocketAddr,
    },
    /// The QUIC or TLS handshake failed.
    #[error("cannot connect to {addr}: {reason}")]
    Connect {
        /// The address dialed.
        addr: SocketAddr,
        /// What went wrong.
        reason: String,
    },
    /// No socket of the address family of the target.
    #[error("no {family} socket to dial {addr} from; add a --listen address of that family")]
    NoEndpoint {
        /// "IPv4" or "IPv6".
        family: &'static str,
        /// The address dialed.
        addr: SocketAddr,
    },
    /// The dial, handshake and `Hello` did not complete in time.
    #[error("timed out connecting to {0}")]
    Timeout(PeerId),
    /// The connection was closed before the peer became ready.
    #[error("connection to {peer} closed during the handshake: {reason}")]
    Closed {
        /// The peer.
        peer: PeerId,
        /// Why.
        reason: String,
    },
    /// The node is at its connection limit.
    #[error("connection limit reached ({0} connections)")]
    Limit(usize),
    /// The PeerId is this node's own.
    #[error("refusing to dial this node's own id")]
    SelfDial,
    /// The node is shutting down.
    #[error("the node is shutting down")]
    Shutdown,
}

/// A request to the running node failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// The peer is not connected (or not yet ready).
    #[error("peer {0} is not connected")]
    NotConnected(PeerId),
    /// No answer in time.
    #[error("no answer from {0} in time")]
    Timeout(PeerId),
    /// The protocol core refused the request.
    #[error("{0}")]
    Refused(String),
    /// Opening a stream failed.
    #[error("stream error: {0}")]
    Stream(String),
    /// Pub/sub refused a subscription or a message.
    #[error(transparent)]
    PubSub(#[from] spore_core::pubsub::PubSubError),
    /// The overlay could not start a search (no neighbors, gossip disabled, bad words).
    #[error(transparent)]
    Search(#[from] spore_core::gossip::SearchError),
    /// A name could not be shared (empty, too long, control characters, index full).
    #[error(transparent)]
    Share(#[from] spore_core::gossip::ShareError),
    /// The swarm refused a blob command (disabled, too many swarms, blob not complete).
    #[error(transparent)]
    Swarm(#[from] spore_core::swarm::SwarmError),
    /// Document replication refused a command (unknown document, not a writer, limits).
    #[error(transparent)]
    Doc(#[from] spore_core::doc::sync::SyncError),
    /// A relay (or the node behind it) refused a reservation or circuit.
    #[error("relay refused: {0}")]
    Relay(spore_core::nat::relay::Refusal),
    /// A relay did not answer in time.
    #[error("the relay did not answer in time")]
    RelayTimeout,
    /// The node is shutting down.
    #[error("the node is shutting down")]
    Shutdown,
}

//! # spore-net
//!
//! The runtime that drives spore-core's sans-IO [`Node`](spore_core::Node) over real sockets:
//! QUIC endpoints (quinn), TLS 1.3 authenticated by each node's Ed25519 key, one connection per
//! peer pair, connection limits, and the task that feeds the node its inputs and carries out its
//! outputs.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use spore_core::{Keypair, pow::Stamp};
//! use spore_net::NetConfig;
//!
//! let keypair = Keypair::generate(&mut rand_core::OsRng);
//! let config = NetConfig { listen: vec!["127.0.0.1:0".parse()?], ..NetConfig::default() };
//! let stamp = Stamp::mint(&keypair.peer_id(), config.node.difficulty);
//! let (node, _streams) = spore_net::start(keypair, stamp, config).await?;
//! println!("listening on {:?} as {}", node.listen_addrs(), node.peer_id());
//! # Ok(()) }
//! ```

mod config;
mod conn;
mod dial;
mod error;
mod handle;
pub mod mdns;
mod runtime;
pub mod tls;

pub use config::{Limits, NetConfig, TransportParams};
pub use conn::{StreamKind, close_code};
pub use error::{DialError, RequestError, StartError};
pub use handle::{AppStreams, NodeHandle, start};
pub use runtime::{DhtStatus, KadAnswer, RuntimeStats, Status};

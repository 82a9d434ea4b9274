//! # spore-net
//!
//! The runtime that drives spore-core's sans-IO [`Node`](spore_core::Node) over real sockets:
//! QUIC endpoints (quinn), TLS 1.3 authenticated by each node's Ed25519 key, one connection per
//! peer pair, connection limits, and the task that feeds the node its inputs and carries out its
//! outputs. A [`NodeHandle`] is the application's side: dial, ping, DHT lookups, application
//! streams, and pub/sub topics ([`NodeHandle::subscribe_topic`], [`NodeHandle::publish`], with
//! messages arriving as [`Event::PubSub`](spore_core::node::Event::PubSub) on
//! [`NodeHandle::subscribe`], checked first by a [`PubSubValidator`] if the config has one),
//! and keyword search over the gossip overlay ([`NodeHandle::share_name`] feeds this node's
//! index, [`NodeHandle::search`] asks the others; [`Status::overlay`] shows the neighbors).
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use spore_core::{Keypair, pow::Stamp};
//! use spore_net::NetConfig;
//! use std::time::Duration;
//!
//! let keypair = Keypair::generate(&mut rand_core::OsRng);
//! let config = NetConfig { listen: vec!["127.0.0.1:0".parse()?], ..NetConfig::default() };
//! let stamp = Stamp::mint(&keypair.peer_id(), config.node.difficulty);
//! let (node, _streams) = spore_net::start(keypair, stamp, config).await?;
//! println!("listening on {:?} as {}", node.listen_addrs(), node.peer_id());
//!
//! node.subscribe_topic("news").await?;
//! let mut events = node.subscribe();
//! node.publish("news", bytes::Bytes::from_static(b"hello")).await?;
//! while let Ok(event) = events.recv().await {
//!     if let spore_core::node::Event::PubSub(spore_core::pubsub::Event::Message { data, .. }) =
//!         event
//!     {
//!         println!("news: {}", String::from_utf8_lossy(&data));
//!         break;
//!     }
//! }
//!
//! node.share_name("holiday-photos.tar", [7; 32], 1 << 20).await?;
//! for hit in node.search(vec!["photos".into()], Duration::from_secs(5)).await? {
//!     println!("{} ({} bytes) at {} {:?}", hit.name, hit.size, hit.responder, hit.addrs);
//! }
//! # Ok(()) }
//! ```

mod birthday;
mod blobs;
mod config;
mod conn;
mod dial;
pub mod dns;
mod error;
mod handle;
pub mod mdns;
mod nat;
mod portmap;
mod relay;
pub mod resources;
mod runtime;
mod search;
pub mod tls;
mod turn;

pub use blobs::StoreBlobs;
pub use config::{
    BlobAccessMaker, DocStoreMaker, Limits, NetConfig, PubSubValidator, TransportParams,
};
pub use conn::{StreamKind, close_code};
pub use error::{DialError, RequestError, StartError};
pub use handle::{AppStreams, NodeHandle, start};
pub use nat::{NatConfig, NatStatus};
pub use portmap::{PortMapConfig, PortMapStatus};
pub use relay::{RelayConfig, RelayStatus};
pub use runtime::{
    DhtStatus, KadAnswer, LimitUse, OverlayStatus, PubSubStatus, ResourceStatus, RuntimeStats,
    Status, SwarmStatus, SwarmSummary, TopicStatus, TrustStatus,
};
pub use search::{SearchHit, SearchStream};
pub use turn::{TurnStatus, parse_turn};

//! # spore
//!
//! A peer-to-peer node and library: send files, publish to topics and share documents with no
//! central server, through NATs, with every connection encrypted and every byte verified.
//!
//! This crate is the facade: it re-exports the layers and adds the product surface (the CLI's
//! commands, the node's local HTTP API, the demo).
//!
//! - [`core`] — spore-core: identity, wire format, and the sans-IO protocol state machines;
//! - [`net`] — spore-net: the QUIC runtime that drives them over real sockets;
//! - [`store`] — spore-store: the data directory and persistence;
//! - [`simulator`] — spore-sim: the deterministic simulator that runs the same nodes at
//!   10,000+ peers in virtual time.
//!
//! Embedding a node takes a few lines:
//!
//! ```no_run
//! # async fn run() -> anyhow::Result<()> {
//! use spore::core::{Keypair, pow::Stamp};
//! use spore::net::NetConfig;
//!
//! let keypair = Keypair::generate(&mut rand_core::OsRng);
//! let config = NetConfig { listen: vec!["127.0.0.1:0".parse()?], ..NetConfig::default() };
//! let stamp = Stamp::mint(&keypair.peer_id(), config.node.difficulty);
//! let (node, _streams) = spore::net::start(keypair, stamp, config).await?;
//! let peer = "<52-character peer id>".parse()?;
//! node.dial(peer, "127.0.0.1:7070".parse()?).await?;
//! println!("rtt {:?}", node.ping(peer).await?);
//! # Ok(()) }
//! ```

pub use spore_core as core;
pub use spore_net as net;
pub use spore_sim as simulator;
pub use spore_store as store;

pub mod api;
pub mod cli;
pub mod commands;
pub mod demo;
pub mod docs;
pub mod settings;
pub mod share;
pub mod sim;
pub mod ticket;

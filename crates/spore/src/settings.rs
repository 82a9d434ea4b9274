//! Node settings from a TOML file, environment variables and flags.
//!
//! Precedence, lowest to highest: built-in defaults, the config file (`<data-dir>/config.toml` or
//! `--config`), `SPORE_*` environment variables, command-line flags. Environment variables and
//! flags are merged by clap (a flag beats its variable); the file fills in whatever neither set.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use serde::Deserialize;
use spore_core::PeerId;

/// The `[node]`-less flat TOML file. Every field is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// UDP listen addresses.
    pub listen: Option<Vec<SocketAddr>>,
    /// Bootstrap peers as `PEERID@IP:PORT`.
    pub bootstrap: Option<Vec<String>>,
    /// DNS names whose TXT records list bootstrap peers (`spore=PEERID@IP:PORT`).
    pub bootstrap_dns: Option<Vec<String>>,
    /// The DNS server for `bootstrap_dns` (default: the system's resolvers).
    pub dns_server: Option<SocketAddr>,
    /// HTTP API address (must be a loopback address).
    pub api_listen: Option<SocketAddr>,
    /// Proof-of-work difficulty of the network.
    pub difficulty: Option<u8>,
    /// Connection limit, total.
    pub max_connections: Option<usize>,
    /// Connection limit per IP address.
    pub max_connections_per_ip: Option<usize>,
    /// Inbound connection limit (eviction beyond it).
    pub max_inbound: Option<usize>,
    /// Memory budget for network buffers, e.g. `"256M"`.
    pub max_memory: Option<String>,
    /// Discover peers on the local network by mDNS.
    pub mdns: Option<bool>,
    /// `server` or `client`.
    pub dht_mode: Option<crate::cli::DhtMode>,
    /// STUN servers as `HOST:PORT`.
    pub stun: Option<Vec<String>>,
    /// Relay for others.
    pub relay: Option<bool>,
    /// Relays to reserve a slot at, as `PEERID@IP:PORT`.
    pub relay_via: Option<Vec<String>>,
    /// Ask the gateway to forward the node's port (UPnP-IGD, NAT-PMP, PCP).
    pub port_map: Option<bool>,
    /// A TURN server, as `USER:PASSWORD@IP:PORT`.
    pub turn: Option<String>,
}

impl FileConfig {
    /// Reads `path`; a missing file is an empty config unless `required`.
    pub fn load(path: &Path, required: bool) -> Result<Self> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
                return Ok(Self::default());
            }
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        toml::from_str(&text).with_context(|| format!("invalid config file {}", path.display()))
    }
}

/// A peer address in the form `PEERID@IP:PORT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerAddr {
    /// The peer's id.
    pub peer: PeerId,
    /// Where to reach it.
    pub addr: SocketAddr,
}

impl std::str::FromStr for PeerAddr {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        let Some((id, addr)) = s.split_once('@') else {
            bail!("expected PEERID@IP:PORT, got {s:?} (no '@')");
        };
        // Causes go into the message itself: clap prints only the top-level text.
        let peer = id
            .parse()
            .map_err(|e| anyhow::anyhow!("invalid peer id {id:?}: {e}"))?;
        let addr = addr.parse().map_err(|_| {
            anyhow::anyhow!("invalid address {addr:?}: expected IP:PORT, e.g. 127.0.0.1:7070")
        })?;
        Ok(Self { peer, addr })
    }
}

impl std::fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.peer, self.addr)
    }
}

/// The data directory: `--data-dir`, `SPORE_DATA_DIR`, or the platform's data directory.
pub fn data_dir(flag: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(dir) = flag {
        return Ok(dir);
    }
    let base = dirs::data_local_dir()
        .context("cannot find a data directory for this platform; pass --data-dir")?;
    Ok(base.join("spore"))
}

//! Bootstrap peers published in DNS TXT records, so that a node whose configured bootstrap peers
//! are gone (and that has no peer book yet) still finds a way in: the operator of a network
//! changes a DNS record instead of every node's configuration.
//!
//! A name (for example `_spore.example.org`) holds one TXT record per bootstrap peer, each
//! `spore=PEERID@IP:PORT`. Records without the `spore=` prefix are someone else's (SPF, site
//! verification) and are ignored; a `spore=` record that does not parse is reported in the
//! status and skipped. The peers found are kept connected like configured bootstrap peers
//! (dialed with backoff while the node is short of peers), at most [`MAX_DNS_PEERS`] of them.
//! Nothing found in DNS is trusted beyond that: each connection still proves the peer's key in
//! its TLS handshake, so a forged record costs a failed dial, not a false peer.
//!
//! The names are resolved at start and again every [`DnsBootstrap::refresh`]; after a failure,
//! sooner (from 5 s, doubling up to the refresh interval). The resolver is hickory's, with the
//! system's configuration or the one server given.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::{Resolver, TokioResolver};
use spore_core::PeerId;
use tracing::{debug, info, warn};

use crate::handle::NodeHandle;

/// Most peers taken from DNS: more would only be more dials for the same purpose.
pub const MAX_DNS_PEERS: usize = 16;
/// What a TXT record naming a spore bootstrap peer starts with.
pub const TXT_PREFIX: &str = "spore=";
/// The first retry after a failed resolution; it doubles up to the refresh interval.
const FIRST_RETRY: Duration = Duration::from_secs(5);

/// Where to look for bootstrap peers in DNS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsBootstrap {
    /// Names whose TXT records list bootstrap peers (e.g. `_spore.example.org`).
    pub names: Vec<String>,
    /// The DNS server to ask (UDP, then TCP); `None` uses the system's resolver configuration
    /// (`/etc/resolv.conf`).
    pub server: Option<SocketAddr>,
    /// How often the names are resolved again. Default 10 minutes.
    pub refresh: Duration,
}

impl DnsBootstrap {
    /// Resolve `names` with the system's resolver configuration, every 10 minutes.
    pub fn new(names: Vec<String>) -> Self {
        Self {
            names,
            server: None,
            refresh: Duration::from_secs(600),
        }
    }
}

/// What DNS bootstrap found, for `Status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DnsStatus {
    /// The names resolved.
    pub names: Vec<String>,
    /// The peers found (and kept connected), as `PEERID@IP:PORT`.
    pub peers: Vec<String>,
    /// Resolutions that succeeded.
    pub resolved: u64,
    /// The last problem: a name that did not resolve, or a record that did not parse.
    pub last_error: Option<String>,
}

impl DnsStatus {
    /// One line for `spore status`: the names, the peers found, the last problem.
    pub fn summary(&self) -> String {
        let mut line = format!(
            "{}: {} bootstrap peer{} found",
            self.names.join(", "),
            self.peers.len(),
            if self.peers.len() == 1 { "" } else { "s" }
        );
        if self.resolved == 0 {
            line.push_str(", not resolved yet");
        }
        if let Some(e) = &self.last_error {
            line.push_str(&format!("; last problem: {e}"));
        }
        line
    }
}

/// Reads one TXT record's text: `None` if it is not a spore record, otherwise the peer it names
/// or why it names none.
pub fn parse_txt(text: &str) -> Option<Result<(PeerId, SocketAddr), String>> {
    let rest = text.trim().strip_prefix(TXT_PREFIX)?;
    let parsed = (|| {
        let (peer, addr) = rest
            .split_once('@')
            .ok_or("expected spore=PEERID@IP:PORT")?;
        let peer: PeerId = peer.parse().map_err(|e| format!("peer id {peer:?}: {e}"))?;
        let addr: SocketAddr = addr
            .parse()
            .map_err(|_| format!("address {addr:?}: expected IP:PORT"))?;
        Ok((peer, addr))
    })();
    Some(parsed.map_err(|e: String| format!("TXT record {text:?}: {e}")))
}

/// The resolver `config` asks for.
fn resolver(config: &DnsBootstrap) -> Result<TokioResolver, String> {
    let provider = TokioRuntimeProvider::default();
    let builder = match config.server {
        Some(server) => {
            let mut udp = ConnectionConfig::udp();
            udp.port = server.port();
            let mut tcp = ConnectionConfig::tcp();
            tcp.port = server.port();
            let ns = NameServerConfig::new(server.ip(), true, vec![udp, tcp]);
            Resolver::builder_with_config(ResolverConfig::from_name_servers(vec![ns]), provider)
        }
        None => Resolver::builder(provider)
            .map_err(|e| format!("cannot read the system's DNS configuration: {e}"))?,
    };
    builder
        .build()
        .map_err(|e| format!("cannot start the DNS resolver: {e}"))
}

/// The peers listed at `name`, and the problems met (records that did not parse).
async fn lookup(
    resolver: &TokioResolver,
    name: &str,
) -> Result<(Vec<(PeerId, SocketAddr)>, Vec<String>), String> {
    let answer = resolver
        .txt_lookup(name)
        .await
        .map_err(|e| format!("{name}: {e}"))?;
    let mut peers = Vec::new();
    let mut problems = Vec::new();
    for record in answer.answers() {
        let RData::TXT(txt) = &record.data else {
            continue;
        };
        // A record's character-strings are one text (RFC 7208 §3.3 reads them the same way).
        let text: String = txt
            .txt_data
            .iter()
            .map(|part| String::from_utf8_lossy(part))
            .collect();
        match parse_txt(&text) {
            Some(Ok(peer)) => peers.push(peer),
            Some(Err(e)) => problems.push(format!("{name}: {e}")),
            None => {}
        }
    }
    Ok((peers, problems))
}

/// Resolves the names now and then, and keeps every peer found connected.
pub(crate) async fn run(handle: NodeHandle, config: DnsBootstrap, status: Arc<Mutex<DnsStatus>>) {
    let set_error = |e: String| {
        warn!(error = %e, "DNS bootstrap");
        status.lock().unwrap_or_else(|p| p.into_inner()).last_error = Some(e);
    };
    let resolver = match resolver(&config) {
        Ok(r) => r,
        Err(e) => return set_error(e),
    };
    let refresh = config.refresh.max(FIRST_RETRY);
    let mut kept: BTreeMap<PeerId, SocketAddr> = BTreeMap::new();
    let mut retry = FIRST_RETRY;
    loop {
        let mut failed = false;
        for name in &config.names {
            match lookup(&resolver, name).await {
                Ok((peers, problems)) => {
                    status.lock().unwrap_or_else(|p| p.into_inner()).resolved += 1;
                    for problem in problems {
                        set_error(problem);
                    }
                    for (peer, addr) in peers {
                        if peer == handle.peer_id() || kept.get(&peer) == Some(&addr) {
                            continue;
                        }
                        if !kept.contains_key(&peer) && kept.len() >= MAX_DNS_PEERS {
                            debug!(%peer, "DNS bootstrap: enough peers already");
                            continue;
                        }
                        match handle.keep_connected(peer, vec![addr]).await {
                            Ok(()) => {
                                info!(%peer, %addr, %name, "bootstrap peer from DNS");
                                kept.insert(peer, addr);
                            }
                            Err(e) => set_error(format!("{name}: peer {peer}: {e}")),
                        }
                    }
                }
                Err(e) => {
                    failed = true;
                    set_error(e);
                }
            }
        }
        status.lock().unwrap_or_else(|p| p.into_inner()).peers = kept
            .iter()
            .map(|(peer, addr)| format!("{peer}@{addr}"))
            .collect();
        let wait = if failed {
            let wait = retry;
            retry = (retry * 2).min(refresh);
            wait
        } else {
            retry = FIRST_RETRY;
            refresh
        };
        tokio::time::sleep(wait).await;
        if handle.status().await.is_err() {
            return; // the node stopped
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spore_records_parse_and_others_are_ignored() {
        let peer = spore_core::identity::Keypair::from_secret_bytes([7; 32]).peer_id();
        let text = format!("spore={peer}@192.0.2.1:4433");
        assert_eq!(
            parse_txt(&text),
            Some(Ok((peer, "192.0.2.1:4433".parse().unwrap())))
        );
        assert_eq!(parse_txt("v=spf1 -all"), None);
        let bad = parse_txt("spore=nonsense@192.0.2.1:4433")
            .unwrap()
            .unwrap_err();
        assert!(bad.contains("peer id"), "{bad}");
        let bad = parse_txt(&format!("spore={peer}@host:4433"))
            .unwrap()
            .unwrap_err();
        assert!(bad.contains("IP:PORT"), "{bad}");
        let bad = parse_txt(&format!("spore={peer}")).unwrap().unwrap_err();
        assert!(bad.contains("PEERID@IP:PORT"), "{bad}");
    }
}

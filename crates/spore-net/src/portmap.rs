//! Port mapping: asking the local gateway to forward the node's UDP port, so that nodes on the
//! other side of the NAT can dial this one directly.
//!
//! The protocols — UPnP-IGD (SSDP discovery, then SOAP over HTTP), NAT-PMP (RFC 6886) and PCP
//! (RFC 6887) — are spoken by the `portmapper` crate (iroh's), which probes the gateway, prefers
//! PCP, then NAT-PMP, then UPnP, renews a mapping at half its lifetime and gets a new one when
//! it expires. This module decides when to map, feeds the mapped address to the node (it is
//! announced first: in `Hello`, the signed peer record, tickets and hole-punch candidates),
//! keeps what `status` shows, and deletes the mapping when the node stops.
//!
//! Off by default, like mDNS: it sends SSDP multicast on the local network and requests to the
//! default gateway, which a node should do only when asked to.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU16;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tracing::{debug, info};

use crate::runtime::{Command, Input};

/// How long a probe of the gateway may take (each protocol gives up after about a second).
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the node waits at shutdown for the gateway to confirm a mapping was deleted.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(2);

/// How long after asking a gateway that speaks a mapping protocol the first attempt counts as
/// failed if no mapping came (the client keeps trying; this only ends the wait for one).
const FIRST_MAPPING_WAIT: Duration = Duration::from_secs(10);

/// Where the mapping stands, as those who wait for one see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MapState {
    /// Asking the gateway; a mapping may come any moment.
    Trying,
    /// The gateway forwards this address to us.
    Mapped(SocketAddr),
    /// No mapping: off, refused, or nobody to ask.
    Unmapped,
}

/// Port mapping settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortMapConfig {
    /// Ask by UPnP-IGD.
    pub upnp: bool,
    /// Ask by PCP.
    pub pcp: bool,
    /// Ask by NAT-PMP.
    pub nat_pmp: bool,
    /// How often the gateway is probed again and, while there is no mapping, asked again.
    /// Default 5 minutes. A mapping that exists is renewed by its own lifetime, not by this.
    pub retry_interval: Duration,
}

impl Default for PortMapConfig {
    fn default() -> Self {
        Self {
            upnp: true,
            pcp: true,
            nat_pmp: true,
            retry_interval: Duration::from_secs(300),
        }
    }
}

/// The port-mapping part of `Status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PortMapStatus {
    /// Whether the node asks its gateway for a mapping.
    pub enabled: bool,
    /// The local UDP port being mapped.
    pub local_port: Option<u16>,
    /// The address the gateway forwards to us, once it granted one.
    pub external: Option<SocketAddr>,
    /// Protocols the gateway answered in the latest probe (`upnp`, `nat-pmp`, `pcp`).
    pub gateway_speaks: Vec<String>,
    /// Why there is no mapping, when that is known (no gateway, bound to loopback, …).
    pub problem: Option<String>,
}

impl PortMapStatus {
    /// One line for `spore status`.
    pub fn summary(&self) -> String {
        if !self.enabled {
            return "off (--port-map asks the gateway by UPnP, NAT-PMP or PCP)".into();
        }
        let speaks = if self.gateway_speaks.is_empty() {
            "no port-mapping protocol answered".to_string()
        } else {
            format!("gateway speaks {}", self.gateway_speaks.join(", "))
        };
        match (self.external, &self.problem) {
            (Some(addr), _) => format!("{addr} ({speaks})"),
            (None, Some(problem)) => format!("none: {problem}"),
            (None, None) => format!("none yet ({speaks})"),
        }
    }
}

/// A running port mapping: the client that holds it and the state `status` reads.
#[derive(Debug)]
pub(crate) struct PortMap {
    client: Option<portmapper::Client>,
    status: Arc<Mutex<PortMapStatus>>,
}

impl PortMap {
    /// Port mapping turned off.
    pub(crate) fn off() -> Self {
        Self {
            client: None,
            status: Arc::default(),
        }
    }

    /// Starts mapping the port of `bound` (the node's IPv4 socket) if `config` asks for it;
    /// changes of the mapped address go to the runtime through `inputs`. Returns the mapping
    /// and a watch of the mapped address (always `None` when nothing is mapped).
    pub(crate) fn start(
        config: Option<&PortMapConfig>,
        bound: Option<SocketAddr>,
        inputs: mpsc::Sender<Input>,
    ) -> (Self, watch::Receiver<MapState>) {
        let (mapped_tx, mapped_rx) = watch::channel(MapState::Unmapped);
        let Some(config) = config else {
            return (Self::off(), mapped_rx);
        };
        let status = Arc::new(Mutex::new(PortMapStatus {
            enabled: true,
            ..PortMapStatus::default()
        }));
        let port = bound.and_then(|addr| NonZeroU16::new(addr.port()));
        let (Some(bound), Some(port)) = (bound, port) else {
            set(&status, |s| {
                s.problem = Some("no IPv4 socket to map".into())
            });
            return (Self::off_with(status), mapped_rx);
        };
        if bound.ip().is_loopback() {
            set(&status, |s| {
                s.problem = Some(format!("bound to {bound}, which no gateway can forward to"));
            });
            return (Self::off_with(status), mapped_rx);
        }
        let client = portmapper::Client::new(portmapper::Config {
            enable_upnp: config.upnp,
            enable_pcp: config.pcp,
            enable_nat_pmp: config.nat_pmp,
            protocol: portmapper::Protocol::Udp,
        });
        set(&status, |s| s.local_port = Some(port.get()));
        mapped_tx.send_replace(MapState::Trying);
        tokio::spawn(watch_mapping(
            client.clone(),
            port,
            config.retry_interval,
            status.clone(),
            mapped_tx,
            inputs,
        ));
        (
            Self {
                client: Some(client),
                status,
            },
            mapped_rx,
        )
    }

    fn off_with(status: Arc<Mutex<PortMapStatus>>) -> Self {
        Self {
            client: None,
            status,
        }
    }

    pub(crate) fn status(&self) -> PortMapStatus {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Deletes the mapping at the gateway (waiting a little for it to confirm), so the port
    /// is not left forwarded to a node that is gone.
    pub(crate) async fn release(&mut self) {
        let Some(client) = self.client.take() else {
            return;
        };
        if client.watch_external_address().borrow().is_none() {
            return;
        }
        client.deactivate();
        // The client's task handles requests one at a time, and deleting the mapping is part
        // of handling `deactivate`: a probe asked for after it is answered only once the
        // gateway was told (the address watch turns empty before that).
        let answered = client.probe();
        match tokio::time::timeout(RELEASE_TIMEOUT, answered).await {
            Ok(Ok(_)) => info!("port mapping deleted"),
            _ => debug!("the gateway did not confirm the port mapping's deletion in time"),
        }
    }
}

fn set(status: &Mutex<PortMapStatus>, f: impl FnOnce(&mut PortMapStatus)) {
    f(&mut status.lock().unwrap_or_else(|e| e.into_inner()));
}

/// Probes the gateway, asks for a mapping of `port`, and passes every change of the mapped
/// address on; probes and asks again every `retry` while there is no mapping. Ends when the
/// runtime is gone.
async fn watch_mapping(
    client: portmapper::Client,
    port: NonZeroU16,
    retry: Duration,
    status: Arc<Mutex<PortMapStatus>>,
    mapped: watch::Sender<MapState>,
    inputs: mpsc::Sender<Input>,
) {
    let mut external = client.watch_external_address();
    // Probing first lets the first request go to the protocol the gateway speaks.
    if !probe(&client, &status).await {
        mapped.send_if_modified(give_up_waiting);
    }
    client.update_local_port(port);
    let first_wait = tokio::time::sleep(FIRST_MAPPING_WAIT);
    tokio::pin!(first_wait);
    let mut retry_at = tokio::time::Instant::now() + retry;
    loop {
        tokio::select! {
            () = &mut first_wait, if *mapped.borrow() == MapState::Trying => {
                debug!("no port mapping yet; not waiting for one any longer");
                mapped.send_if_modified(give_up_waiting);
            }
            changed = external.changed() => {
                if changed.is_err() {
                    return;
                }
                let addr = external.borrow_and_update().map(SocketAddr::V4);
                match addr {
                    Some(addr) => info!(%addr, "the gateway maps our port"),
                    None => info!("the port mapping is gone"),
                }
                set(&status, |s| {
                    s.external = addr;
                    if addr.is_some() {
                        s.problem = None;
                    }
                });
                mapped.send_replace(addr.map_or(MapState::Unmapped, MapState::Mapped));
                let command = Command::SetMappedAddr { addr };
                if inputs.send(Input::Command(command)).await.is_err() {
                    return;
                }
            }
            () = tokio::time::sleep_until(retry_at) => {
                retry_at = tokio::time::Instant::now() + retry;
                probe(&client, &status).await;
                if external.borrow().is_none() {
                    client.procure_mapping();
                }
                if inputs.is_closed() {
                    return;
                }
            }
        }
    }
}

/// Ends the wait for a first mapping (`Trying` becomes `Unmapped`); true if it changed.
fn give_up_waiting(state: &mut MapState) -> bool {
    let trying = *state == MapState::Trying;
    if trying {
        *state = MapState::Unmapped;
    }
    trying
}

/// Asks the gateway which protocols it speaks, for `status` (the client keeps the answer to
/// choose a protocol). False if it speaks none or cannot be asked.
async fn probe(client: &portmapper::Client, status: &Mutex<PortMapStatus>) -> bool {
    let answer = tokio::time::timeout(PROBE_TIMEOUT, client.probe()).await;
    match answer {
        Ok(Ok(Ok(found))) => {
            let mut speaks = Vec::new();
            for (yes, name) in [
                (found.upnp, "upnp"),
                (found.nat_pmp, "nat-pmp"),
                (found.pcp, "pcp"),
            ] {
                if yes {
                    speaks.push(name.to_string());
                }
            }
            debug!(?speaks, "gateway probed for port mapping");
            let any = !speaks.is_empty();
            set(status, |s| {
                if !any && s.external.is_none() {
                    s.problem = Some("the gateway answers none of UPnP, NAT-PMP and PCP".into());
                }
                s.gateway_speaks = speaks;
            });
            any
        }
        Ok(Ok(Err(e))) => {
            debug!(error = %e, "cannot probe the gateway for port mapping");
            set(status, |s| s.problem = Some(e.to_string()));
            false
        }
        Ok(Err(_)) => false,
        Err(_) => {
            debug!("the gateway probe for port mapping timed out");
            false
        }
    }
}

/// The address of `addrs` to map: the first IPv4 one.
pub(crate) fn mappable(addrs: &[SocketAddr]) -> Option<SocketAddr> {
    addrs
        .iter()
        .find(|a| matches!(a.ip(), IpAddr::V4(_)))
        .copied()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn status_lines_say_what_is_mapped_or_why_not() {
        let off = PortMapStatus::default();
        assert!(off.summary().starts_with("off"));
        let mut on = PortMapStatus {
            enabled: true,
            gateway_speaks: vec!["upnp".into(), "pcp".into()],
            ..PortMapStatus::default()
        };
        assert_eq!(on.summary(), "none yet (gateway speaks upnp, pcp)");
        on.external = Some("198.51.100.1:7070".parse().unwrap());
        assert_eq!(on.summary(), "198.51.100.1:7070 (gateway speaks upnp, pcp)");
        on.external = None;
        on.problem = Some("no gateway".into());
        assert_eq!(on.summary(), "none: no gateway");
    }

    #[tokio::test]
    async fn a_node_bound_to_loopback_asks_no_gateway() {
        let (inputs, _rx) = mpsc::channel(1);
        let bound = "127.0.0.1:7070".parse().ok();
        let (map, mapped) = PortMap::start(Some(&PortMapConfig::default()), bound, inputs);
        assert!(map.client.is_none());
        assert_eq!(*mapped.borrow(), MapState::Unmapped);
        let status = map.status();
        assert!(status.enabled);
        assert!(status.problem.unwrap().contains("127.0.0.1:7070"));
    }
}

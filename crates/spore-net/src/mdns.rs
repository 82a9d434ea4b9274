//! Discovery on the local network by multicast DNS (RFC 6762 / RFC 6763), with the `mdns-sd`
//! crate.
//!
//! A node announces one service instance of type [`SERVICE_TYPE`]: the instance name and the TXT
//! record's `id` are its [`PeerId`], `v=1` is the version of this announcement format, and the
//! SRV record carries the port it listens on. The A/AAAA records are those of the interfaces mDNS
//! runs on, kept up to date by `mdns-sd` as addresses come and go. At the same time the node
//! browses for other instances and hands each one it resolves to the application as a
//! [`Discovered`] peer, for the dialer to connect to (the QUIC handshake then proves the key).
//!
//! Everything that arrives is untrusted LAN input: an announcement counts only if its instance
//! name and its `id` are the same valid [`PeerId`], its `v` is `1`, its port is not 0, and at
//! least one of its addresses is usable (see [`usable_addr`]). The same announcement resolved
//! again within [`MdnsConfig::dedup_window`] is not passed on again, and the queue to the
//! application is bounded: what does not fit is dropped and counted ([`MdnsStats::dropped`]).
//!
//! ```no_run
//! # async fn run(peer: spore_core::PeerId) -> Result<(), spore_net::mdns::MdnsError> {
//! use spore_net::mdns::{Mdns, MdnsConfig};
//!
//! let (mdns, mut found) = Mdns::start(peer, 7070, MdnsConfig::default())?;
//! while let Some(d) = found.recv().await {
//!     println!("{} at {:?}", d.peer, d.addrs); // dial d.peer at each of d.addrs
//! }
//! mdns.shutdown();
//! # Ok(()) }
//! ```
//!
//! mDNS sends multicast on every interface it runs on; [`MdnsConfig::interface`] restricts it to
//! one. Loopback interfaces are always left out (a peer's loopback address is useless to us).
//! The restriction is applied just after the daemon starts, and `mdns-sd` first joins the mDNS
//! group on every interface that is up: in that instant the kernel may send IGMP/MLD membership
//! reports on the others, though no mDNS packet goes out there. Where no multicast at all may
//! leave an interface, do not start mDNS in that network namespace.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, SocketAddrV6};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mdns_sd::{IfKind, ResolvedService, ScopedIp, ServiceDaemon, ServiceEvent, ServiceInfo};
use spore_core::PeerId;
use tokio::sync::mpsc;
use tracing::{debug, warn};

/// The DNS-SD service type spore nodes announce and browse for.
pub const SERVICE_TYPE: &str = "_spore._udp.local.";

/// The version of the announcement format, sent as TXT `v`.
const FORMAT_VERSION: &str = "1";

/// How long [`Mdns::shutdown`] waits for the daemon to send its goodbyes and stop.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(1);

/// Settings of mDNS discovery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MdnsConfig {
    /// Run mDNS only on the interface with this name (e.g. `"eth0"`); `None` runs it on every
    /// interface that is up, loopback excepted. A name that matches no interface leaves mDNS
    /// with none: nothing is announced or found.
    pub interface: Option<String>,
    /// Capacity of the queue of discoveries to the application. When it is full, further
    /// discoveries are dropped and counted in [`MdnsStats::dropped`]. Default 64.
    pub queue: usize,
    /// A peer resolved again with the same addresses within this window is not passed on again.
    /// After it, a repeat is passed on, so a node can find again a peer it lost. Default 10 s.
    pub dedup_window: Duration,
    /// Most peers remembered for de-duplication; past it, the one passed on longest ago is
    /// forgotten. Default 1024.
    pub max_tracked: usize,
    /// Most addresses passed on per peer (IPv4 first); the rest of a longer list is ignored.
    /// Default 8.
    pub max_addrs: usize,
}

impl Default for MdnsConfig {
    fn default() -> Self {
        Self {
            interface: None,
            queue: 64,
            dedup_window: Duration::from_secs(10),
            max_tracked: 1024,
            max_addrs: 8,
        }
    }
}

/// A peer found on the local network. Nothing about it is verified yet: dialing `peer` at one of
/// `addrs` proves (or disproves) that the remote holds its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discovered {
    /// The peer's id, from its announcement.
    pub peer: PeerId,
    /// Where it says it listens, sorted, IPv4 first; never empty. IPv6 link-local addresses
    /// carry the scope id of the interface they were found on.
    pub addrs: Vec<SocketAddr>,
}

/// Counters of what mDNS discovery did with the announcements it resolved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MdnsStats {
    /// Discoveries passed on to the application.
    pub forwarded: u64,
    /// Repeats of a discovery within the de-duplication window, not passed on.
    pub duplicates: u64,
    /// Announcements that were malformed or unusable (or our own), not passed on.
    pub ignored: u64,
    /// Discoveries dropped because the application's queue was full.
    pub dropped: u64,
}

/// Why mDNS discovery could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MdnsError {
    /// The `mdns-sd` daemon refused a request (or could not start).
    #[error("mDNS: {0}")]
    Daemon(String),
    /// The thread that reads the daemon's events could not be spawned.
    #[error("mDNS: cannot spawn the event thread: {0}")]
    Thread(#[source] std::io::Error),
    /// Port 0 was given: there is nothing to announce.
    #[error("mDNS: cannot announce port 0")]
    NoPort,
}

impl From<mdns_sd::Error> for MdnsError {
    fn from(e: mdns_sd::Error) -> Self {
        Self::Daemon(e.to_string())
    }
}

#[derive(Debug, Default)]
struct Counters {
    forwarded: AtomicU64,
    duplicates: AtomicU64,
    ignored: AtomicU64,
    dropped: AtomicU64,
}

impl Counters {
    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// mDNS discovery: announces this node and reports the others. Owns the `mdns-sd` daemon (and
/// its thread); dropping it stops the daemon, which first sends goodbye packets for our service.
pub struct Mdns {
    daemon: Option<ServiceDaemon>,
    counters: Arc<Counters>,
    worker: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Mdns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mdns")
            .field("running", &self.daemon.is_some())
            .field("stats", &self.stats())
            .finish()
    }
}

impl Mdns {
    /// Announces `peer` listening on `port` at every address of the interfaces mDNS runs on,
    /// and browses for other spore nodes. Discoveries arrive on the returned receiver, bounded
    /// by [`MdnsConfig::queue`]; our own announcement is never among them.
    ///
    /// Does not need a tokio runtime: the daemon and the event reader are threads.
    pub fn start(
        peer: PeerId,
        port: u16,
        config: MdnsConfig,
    ) -> Result<(Mdns, mpsc::Receiver<Discovered>), MdnsError> {
        if port == 0 {
            return Err(MdnsError::NoPort);
        }
        let daemon = ServiceDaemon::new()?;
        let mut mdns = Mdns {
            daemon: Some(daemon),
            counters: Arc::new(Counters::default()),
            worker: None,
        };
        // On any error below, dropping `mdns` stops the daemon.
        let rx = mdns.announce_and_browse(peer, port, config)?;
        Ok((mdns, rx))
    }

    fn announce_and_browse(
        &mut self,
        peer: PeerId,
        port: u16,
        config: MdnsConfig,
    ) -> Result<mpsc::Receiver<Discovered>, MdnsError> {
        let Some(daemon) = &self.daemon else {
            return Err(MdnsError::Daemon("the daemon is not running".into()));
        };
        // Selections apply in order, the last match winning.
        match &config.interface {
            Some(name) => {
                daemon.disable_interface(IfKind::All)?;
                daemon.enable_interface(IfKind::Name(name.clone()))?;
            }
            None => daemon.disable_interface(vec![IfKind::LoopbackV4, IfKind::LoopbackV6])?,
        }

        let id = peer.to_string();
        let properties = [("id", id.as_str()), ("v", FORMAT_VERSION)];
        // The host name is the id too, so that several nodes on one machine do not claim each
        // other's address records.
        let mut info = ServiceInfo::new(
            SERVICE_TYPE,
            &id,
            &format!("{id}.local."),
            "",
            port,
            &properties[..],
        )?
        .enable_addr_auto();
        if let Some(name) = &config.interface {
            info.set_interfaces(vec![IfKind::Name(name.clone())]);
        }
        let events = daemon.browse(SERVICE_TYPE)?;
        daemon.register(info)?;

        let (tx, rx) = mpsc::channel(config.queue.max(1));
        let counters = self.counters.clone();
        let worker = std::thread::Builder::new()
            .name("spore-mdns".into())
            .spawn(move || forward(events, peer, config, counters, tx))
            .map_err(MdnsError::Thread)?;
        self.worker = Some(worker);
        Ok(rx)
    }

    /// What discovery has done so far.
    pub fn stats(&self) -> MdnsStats {
        let c = &self.counters;
        MdnsStats {
            forwarded: c.forwarded.load(Ordering::Relaxed),
            duplicates: c.duplicates.load(Ordering::Relaxed),
            ignored: c.ignored.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
        }
    }

    /// Withdraws our announcement (goodbye packets) and stops the daemon, waiting up to a second
    /// for it. Blocks; from async code, prefer `spawn_blocking` or simply dropping the value,
    /// which does the same without waiting.
    pub fn shutdown(mut self) {
        self.stop(true);
    }

    fn stop(&mut self, wait: bool) {
        let Some(daemon) = self.daemon.take() else {
            return;
        };
        match daemon.shutdown() {
            Ok(done) if wait => {
                let _ = done.recv_timeout(SHUTDOWN_WAIT);
            }
            Ok(_) => {}
            Err(e) => debug!(error = %e, "mDNS daemon shutdown"),
        }
        // The worker ends once the daemon has dropped the browse channel.
        if let Some(worker) = self.worker.take() {
            if wait && worker.is_finished() {
                let _ = worker.join();
            }
        }
    }
}

impl Drop for Mdns {
    fn drop(&mut self) {
        self.stop(false);
    }
}

/// The event thread: parses resolved services and passes new ones on, until the daemon stops
/// or the application drops its receiver.
fn forward(
    events: mdns_sd::Receiver<ServiceEvent>,
    own: PeerId,
    config: MdnsConfig,
    counters: Arc<Counters>,
    tx: mpsc::Sender<Discovered>,
) {
    let mut dedup = Dedup::new(config.dedup_window, config.max_tracked);
    while let Ok(event) = events.recv() {
        let ServiceEvent::ServiceResolved(service) = event else {
            continue;
        };
        let found = match parse_resolved(&service, config.max_addrs) {
            Ok(found) if found.peer == own => {
                Counters::bump(&counters.ignored);
                continue;
            }
            Ok(found) => found,
            Err(why) => {
                debug!(name = %service.fullname, ?why, "ignoring mDNS announcement");
                Counters::bump(&counters.ignored);
                continue;
            }
        };
        let now = Instant::now();
        if !dedup.admit(now, &found) {
            Counters::bump(&counters.duplicates);
            continue;
        }
        let peer = found.peer;
        match tx.try_send(found) {
            Ok(()) => {
                debug!(%peer, "found a peer by mDNS");
                Counters::bump(&counters.forwarded);
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                // Not passed on, so a later resolution may try again.
                dedup.forget(&peer);
                Counters::bump(&counters.dropped);
                warn!(%peer, "mDNS discovery queue full; dropped a discovery");
            }
            Err(mpsc::error::TrySendError::Closed(_)) => return,
        }
    }
}

/// Why an announcement was not used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ignored {
    /// Not an instance of [`SERVICE_TYPE`].
    OtherType,
    /// The instance name is not a PeerId.
    BadInstance,
    /// TXT `id` is missing or not a PeerId.
    BadId,
    /// Instance name and TXT `id` name different peers.
    IdMismatch,
    /// TXT `v` is missing or not a version we read.
    Version,
    /// The port is 0.
    NoPort,
    /// No usable address.
    NoAddrs,
}

/// Reads a resolved service from `mdns-sd`.
fn parse_resolved(service: &ResolvedService, max_addrs: usize) -> Result<Discovered, Ignored> {
    let addrs = service.get_addresses().iter().map(|ip| match ip {
        ScopedIp::V6(v6) => (IpAddr::V6(*v6.addr()), v6.scope_id().index),
        other => (other.to_ip_addr(), 0),
    });
    parse_announcement(
        &service.fullname,
        service.get_property_val_str("id"),
        service.get_property_val_str("v"),
        service.port,
        addrs,
        max_addrs,
    )
}

/// Checks an announcement: `fullname` is `<instance>._spore._udp.local.`, `id` and `version`
/// are the TXT values, `addrs` the resolved IPs with the index of the interface each was found
/// on (used as the scope of IPv6 link-local addresses; 0 if unknown).
fn parse_announcement(
    fullname: &str,
    id: Option<&str>,
    version: Option<&str>,
    port: u16,
    addrs: impl IntoIterator<Item = (IpAddr, u32)>,
    max_addrs: usize,
) -> Result<Discovered, Ignored> {
    let instance = instance_name(fullname).ok_or(Ignored::OtherType)?;
    let named = PeerId::from_str(instance).map_err(|_| Ignored::BadInstance)?;
    let peer = id
        .and_then(|id| PeerId::from_str(id).ok())
        .ok_or(Ignored::BadId)?;
    if named != peer {
        return Err(Ignored::IdMismatch);
    }
    if version != Some(FORMAT_VERSION) {
        return Err(Ignored::Version);
    }
    if port == 0 {
        return Err(Ignored::NoPort);
    }
    let mut addrs: Vec<SocketAddr> = addrs
        .into_iter()
        .filter_map(|(ip, scope)| usable_addr(ip, scope, port))
        .collect();
    addrs.sort();
    addrs.dedup();
    addrs.truncate(max_addrs);
    if addrs.is_empty() {
        return Err(Ignored::NoAddrs);
    }
    Ok(Discovered { peer, addrs })
}

/// The instance label of `fullname`, if it is an instance of [`SERVICE_TYPE`] (DNS names compare
/// case-insensitively).
fn instance_name(fullname: &str) -> Option<&str> {
    let split = fullname.len().checked_sub(SERVICE_TYPE.len() + 1)?;
    let (instance, rest) = (fullname.get(..split)?, fullname.get(split..)?);
    let suffix = rest.strip_prefix('.')?;
    (suffix.eq_ignore_ascii_case(SERVICE_TYPE) && !instance.is_empty()).then_some(instance)
}

/// The address to dial for an announced `ip`, or `None` if it is not worth dialing: unspecified,
/// loopback (it would be ourselves), multicast or broadcast addresses, and IPv6 link-local
/// addresses whose interface (`scope`) is unknown. IPv4-mapped IPv6 addresses become IPv4.
pub fn usable_addr(ip: IpAddr, scope: u32, port: u16) -> Option<SocketAddr> {
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            let bad =
                v4.is_unspecified() || v4.is_loopback() || v4.is_multicast() || v4.is_broadcast();
            (!bad).then(|| SocketAddr::from((v4, port)))
        }
        IpAddr::V6(v6) => {
            if v6.is_unspecified() || v6.is_loopback() || v6.is_multicast() {
                return None;
            }
            if v6.is_unicast_link_local() {
                (scope != 0).then(|| SocketAddr::V6(SocketAddrV6::new(v6, port, 0, scope)))
            } else {
                Some(SocketAddr::V6(SocketAddrV6::new(v6, port, 0, 0)))
            }
        }
    }
}

/// Remembers what was passed on lately, so that the same peer with the same addresses is passed
/// on at most once per window. Bounded by `max` peers.
#[derive(Debug)]
struct Dedup {
    window: Duration,
    max: usize,
    seen: HashMap<PeerId, (Vec<SocketAddr>, Instant)>,
}

impl Dedup {
    fn new(window: Duration, max: usize) -> Self {
        Self {
            window,
            max: max.max(1),
            seen: HashMap::new(),
        }
    }

    /// Whether `found` should be passed on at `now`; if so, it is remembered as passed on.
    fn admit(&mut self, now: Instant, found: &Discovered) -> bool {
        if let Some((addrs, at)) = self.seen.get_mut(&found.peer) {
            if *addrs == found.addrs && now.saturating_duration_since(*at) < self.window {
                return false;
            }
            addrs.clone_from(&found.addrs);
            *at = now;
            return true;
        }
        if self.seen.len() >= self.max {
            let window = self.window;
            self.seen
                .retain(|_, (_, at)| now.saturating_duration_since(*at) < window);
        }
        if self.seen.len() >= self.max {
            let oldest = self
                .seen
                .iter()
                .min_by_key(|(_, (_, at))| *at)
                .map(|(p, _)| *p);
            if let Some(oldest) = oldest {
                self.seen.remove(&oldest);
            }
        }
        self.seen.insert(found.peer, (found.addrs.clone(), now));
        true
    }

    /// Forgets `peer`, so its next resolution is passed on.
    fn forget(&mut self, peer: &PeerId) {
        self.seen.remove(peer);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::net::{Ipv4Addr, Ipv6Addr};

    use spore_core::Keypair;

    use super::*;

    fn peer() -> PeerId {
        Keypair::generate(&mut rand_core::OsRng).peer_id()
    }

    fn v4(a: [u8; 4]) -> (IpAddr, u32) {
        (IpAddr::from(a), 0)
    }

    fn parse(
        fullname: &str,
        id: Option<&str>,
        version: Option<&str>,
        addrs: Vec<(IpAddr, u32)>,
    ) -> Result<Discovered, Ignored> {
        parse_announcement(fullname, id, version, 7070, addrs, 8)
    }

    #[test]
    fn a_well_formed_announcement_is_read() {
        let p = peer();
        let name = format!("{p}.{SERVICE_TYPE}");
        let id = p.to_string();
        let d = parse(
            &name,
            Some(&id),
            Some("1"),
            vec![
                (
                    IpAddr::from(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
                    3,
                ),
                v4([10, 0, 0, 2]),
                v4([10, 0, 0, 2]),
                (IpAddr::from(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 7)), 3),
            ],
        )
        .unwrap();
        assert_eq!(d.peer, p);
        assert_eq!(
            d.addrs,
            vec![
                "10.0.0.2:7070".parse().unwrap(),
                "[2001:db8::1]:7070".parse().unwrap(),
                SocketAddr::V6(SocketAddrV6::new(
                    Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 7),
                    7070,
                    0,
                    3
                )),
            ]
        );
        // DNS names are case-insensitive, and so is the PeerId's base32.
        let upper = format!("{}.{}", id.to_uppercase(), SERVICE_TYPE.to_uppercase());
        assert_eq!(
            parse(&upper, Some(&id), Some("1"), vec![v4([10, 0, 0, 2])])
                .unwrap()
                .peer,
            p
        );
    }

    #[test]
    fn invalid_announcements_are_ignored() {
        let (p, q) = (peer(), peer());
        let name = format!("{p}.{SERVICE_TYPE}");
        let id = p.to_string();
        let addr = || vec![v4([192, 168, 1, 9])];
        let check = |fullname: &str, id: Option<&str>, version: Option<&str>, why: Ignored| {
            let got = parse(fullname, id, version, addr());
            assert_eq!(got, Err(why), "{fullname} {id:?} {version:?}");
        };
        let (id, q) = (Some(id.as_str()), q.to_string());
        let v1 = Some("1");
        check(
            &format!("{p}._other._udp.local."),
            id,
            v1,
            Ignored::OtherType,
        );
        check(SERVICE_TYPE, id, v1, Ignored::OtherType);
        check(&format!(".{SERVICE_TYPE}"), id, v1, Ignored::OtherType);
        check("x", id, v1, Ignored::OtherType);
        // Non-ASCII text must not panic the suffix split.
        check(
            &format!("é{}", &SERVICE_TYPE[1..]),
            id,
            v1,
            Ignored::OtherType,
        );
        // A name renamed after a conflict is not a PeerId.
        check(
            &format!("{p} (2).{SERVICE_TYPE}"),
            id,
            v1,
            Ignored::BadInstance,
        );
        check(&format!("abc.{SERVICE_TYPE}"), id, v1, Ignored::BadInstance);
        check(&name, None, v1, Ignored::BadId);
        check(&name, Some(""), v1, Ignored::BadId);
        check(&name, Some(&format!("{p}x")), v1, Ignored::BadId);
        check(&name, Some(&q), v1, Ignored::IdMismatch);
        check(&name, id, None, Ignored::Version);
        check(&name, id, Some("2"), Ignored::Version);
        assert_eq!(
            parse_announcement(&name, id, v1, 0, addr(), 8),
            Err(Ignored::NoPort)
        );
    }

    #[test]
    fn only_dialable_addresses_are_kept() {
        let p = peer();
        let name = format!("{p}.{SERVICE_TYPE}");
        let id = p.to_string();
        let useless = vec![
            v4([0, 0, 0, 0]),
            v4([127, 0, 0, 1]),
            v4([224, 0, 0, 251]),
            v4([255, 255, 255, 255]),
            (IpAddr::from(Ipv6Addr::UNSPECIFIED), 2),
            (IpAddr::from(Ipv6Addr::LOCALHOST), 2),
            (
                IpAddr::from(Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0xfb)),
                2,
            ),
            // Link-local without a known interface cannot be dialed.
            (IpAddr::from(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1)), 0),
        ];
        assert_eq!(
            parse(&name, Some(&id), Some("1"), useless.clone()),
            Err(Ignored::NoAddrs)
        );
        assert_eq!(
            parse(&name, Some(&id), Some("1"), vec![]),
            Err(Ignored::NoAddrs)
        );
        let mut some = useless;
        some.push((IpAddr::from(Ipv4Addr::new(10, 1, 2, 3).to_ipv6_mapped()), 0));
        let d = parse(&name, Some(&id), Some("1"), some).unwrap();
        assert_eq!(d.addrs, vec!["10.1.2.3:7070".parse().unwrap()]);
        // IPv4 link-local needs no scope.
        assert_eq!(
            usable_addr(IpAddr::from([169, 254, 0, 5]), 0, 1),
            Some("169.254.0.5:1".parse().unwrap())
        );
    }

    #[test]
    fn address_lists_are_capped() {
        let p = peer();
        let name = format!("{p}.{SERVICE_TYPE}");
        let id = p.to_string();
        let many: Vec<_> = (1..=200u8).map(|i| v4([10, 0, 0, i])).collect();
        let d = parse_announcement(&name, Some(&id), Some("1"), 1, many, 8).unwrap();
        assert_eq!(d.addrs.len(), 8);
        assert_eq!(d.addrs[0], "10.0.0.1:1".parse().unwrap());
    }

    #[test]
    fn repeats_within_the_window_are_suppressed() {
        let t0 = Instant::now();
        let window = Duration::from_secs(10);
        let mut dedup = Dedup::new(window, 16);
        let a = Discovered {
            peer: peer(),
            addrs: vec!["10.0.0.1:7070".parse().unwrap()],
        };
        assert!(dedup.admit(t0, &a));
        assert!(!dedup.admit(t0 + Duration::from_secs(1), &a));
        assert!(!dedup.admit(t0 + Duration::from_secs(9), &a));
        // New addresses are news at once.
        let moved = Discovered {
            addrs: vec!["10.0.0.9:7070".parse().unwrap()],
            ..a.clone()
        };
        assert!(dedup.admit(t0 + Duration::from_secs(9), &moved));
        assert!(!dedup.admit(t0 + Duration::from_secs(10), &moved));
        // After the window, a repeat is passed on again.
        assert!(dedup.admit(t0 + Duration::from_secs(19), &moved));
        // A dropped discovery is forgotten so that the next one is tried.
        dedup.forget(&a.peer);
        assert!(dedup.admit(t0 + Duration::from_secs(20), &moved));
        // Time going backwards does not panic.
        assert!(!dedup.admit(t0, &moved));
    }

    #[test]
    fn dedup_memory_is_bounded() {
        let t0 = Instant::now();
        let mut dedup = Dedup::new(Duration::from_secs(10), 4);
        let found: Vec<Discovered> = (0..10)
            .map(|_| Discovered {
                peer: peer(),
                addrs: vec!["10.0.0.1:7070".parse().unwrap()],
            })
            .collect();
        for (i, d) in found.iter().enumerate() {
            assert!(dedup.admit(t0 + Duration::from_millis(i as u64), d));
            assert!(dedup.seen.len() <= 4);
        }
        // The most recent are remembered; the oldest were evicted and count as new again.
        assert!(!dedup.admit(t0 + Duration::from_millis(20), &found[9]));
        assert!(dedup.admit(t0 + Duration::from_millis(20), &found[0]));
    }
}

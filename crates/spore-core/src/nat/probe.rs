//! The STUN client and NAT behaviour discovery, sans-IO: the runtime hands it datagrams and the
//! time, sends what it polls, and reads the [`NatReport`] at the end.
//!
//! A probe asks every configured server (at most [`MAX_SERVERS`]) for our reflexive address,
//! retransmitting each request on the RFC 8489 schedule (RTO doubling from
//! [`ProbeConfig::rto`], [`ProbeConfig::attempts`] sends). Then, RFC 5780 style:
//!
//! - **Mapping**: one reflexive address seen by servers at different IPs means the NAT maps
//!   endpoint-independently (what hole punching needs); different addresses mean it maps per
//!   destination. A reflexive address equal to our own host address means no NAT at all.
//! - **Filtering**, when a server names its other address (RFC 5780 OTHER-ADDRESS — coturn with
//!   two IPs does; a spore node, with one socket, does not): a CHANGE-REQUEST for the other IP and
//!   port answered means anyone may send to our mapping; otherwise one for the other port only
//!   answered means the NAT filters by address; neither means by address and port.

use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use rand_core::RngCore;
use serde::{Deserialize, Serialize};

use super::stun::{self, Incoming, Outcome};
use crate::time::Instant;

/// Most servers one probe asks.
pub const MAX_SERVERS: usize = 8;

/// How a probe runs.
#[derive(Debug, Clone)]
pub struct ProbeConfig {
    /// The first retransmission timeout; doubled after every send. Default 250 ms.
    pub rto: Duration,
    /// Sends per request before it counts as unanswered. Default 5 (about 7.75 s).
    pub attempts: u32,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        Self {
            rto: Duration::from_millis(250),
            attempts: 5,
        }
    }
}

/// How the NAT in front of us maps our socket to outside addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mapping {
    /// No NAT: a server sees our own address.
    None,
    /// One outside address for every destination ("cone"): hole punching works.
    EndpointIndependent,
    /// A new outside address per destination ("symmetric").
    Dependent,
    /// Not known: fewer than two servers at different IPs answered.
    Unknown,
}

/// Which senders the NAT lets through to a mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Filtering {
    /// Anyone may send to our mapping.
    EndpointIndependent,
    /// Only addresses we sent to.
    AddressDependent,
    /// Only the exact address and port we sent to.
    AddressAndPortDependent,
    /// Not known: no server that can answer from another address (RFC 5780) answered.
    Unknown,
}

/// What a probe found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NatReport {
    /// Our server-reflexive addresses, most reported first.
    pub reflexive: Vec<SocketAddr>,
    /// The NAT's mapping behaviour.
    pub mapping: Mapping,
    /// The NAT's filtering behaviour.
    pub filtering: Filtering,
    /// Servers that answered, of those asked.
    pub answered: usize,
    /// Servers asked.
    pub asked: usize,
}

/// A step of a probe worth logging.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeEvent {
    /// `server` saw us at `mapped`.
    Mapped {
        /// The server asked.
        server: SocketAddr,
        /// Our address as it saw it.
        mapped: SocketAddr,
    },
    /// `server` never answered, or answered with an error.
    Failed {
        /// The server asked.
        server: SocketAddr,
        /// The STUN error code, or `None` for no answer.
        code: Option<u16>,
    },
    /// The probe is over.
    Done(NatReport),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Purpose {
    /// An ordinary Binding request to a configured server.
    Map,
    /// A CHANGE-REQUEST to a server that named its other address: (change ip, change port).
    Filter { ip: bool, port: bool },
}

#[derive(Debug)]
struct Transaction {
    server: SocketAddr,
    purpose: Purpose,
    request: Vec<u8>,
    sends: u32,
    next: Instant,
    rto: Duration,
}

/// One run of NAT behaviour discovery over a set of servers.
#[derive(Debug)]
pub struct Probe {
    config: ProbeConfig,
    /// Our host address towards each server (what the OS would send from), to spot "no NAT".
    local: BTreeMap<SocketAddr, SocketAddr>,
    transactions: BTreeMap<[u8; 12], Transaction>,
    mapped: BTreeMap<SocketAddr, SocketAddr>,
    failed: usize,
    asked: usize,
    /// The RFC 5780 server used for the filtering test: (server, its other address).
    filter_server: Option<(SocketAddr, SocketAddr)>,
    filtering: Filtering,
    out: VecDeque<(SocketAddr, Vec<u8>)>,
    events: VecDeque<ProbeEvent>,
    done: bool,
}

impl Probe {
    /// Starts a probe of `servers` (each with our host address towards it, if the runtime knows
    /// it), sending the first requests at once. Duplicates and servers beyond [`MAX_SERVERS`]
    /// are left out.
    pub fn start(
        now: Instant,
        config: ProbeConfig,
        servers: &[(SocketAddr, Option<SocketAddr>)],
        rng: &mut impl RngCore,
    ) -> Self {
        let mut probe = Self {
            config,
            local: BTreeMap::new(),
            transactions: BTreeMap::new(),
            mapped: BTreeMap::new(),
            failed: 0,
            asked: 0,
            filter_server: None,
            filtering: Filtering::Unknown,
            out: VecDeque::new(),
            events: VecDeque::new(),
            done: false,
        };
        let mut seen = Vec::new();
        for (server, local) in servers {
            if seen.contains(server) || seen.len() == MAX_SERVERS {
                continue;
            }
            seen.push(*server);
            if let Some(local) = local {
                probe.local.insert(*server, *local);
            }
            probe.asked += 1;
            probe.send(now, *server, Purpose::Map, rng);
        }
        probe.check_done();
        probe
    }

    fn send(&mut self, now: Instant, server: SocketAddr, purpose: Purpose, rng: &mut impl RngCore) {
        let mut id = [0u8; 12];
        rng.fill_bytes(&mut id);
        let change = match purpose {
            Purpose::Map => None,
            Purpose::Filter { ip, port } => Some((ip, port)),
        };
        let request = stun::binding_request(id, change);
        self.out.push_back((server, request.clone()));
        self.transactions.insert(
            id,
            Transaction {
                server,
                purpose,
                request,
                sends: 1,
                next: now + self.config.rto,
                rto: self.config.rto,
            },
        );
    }

    /// A STUN datagram from `from`. Returns whether it answered one of our transactions.
    pub fn handle_response(
        &mut self,
        now: Instant,
        from: SocketAddr,
        response: &stun::Response,
        rng: &mut impl RngCore,
    ) -> bool {
        let Some(t) = self.transactions.get(&response.transaction) else {
            return false;
        };
        // A filtering test is answered from the server's other address by design; an ordinary
        // request must be answered by the server we asked.
        if t.purpose == Purpose::Map && from != t.server {
            return false;
        }
        let Some(t) = self.transactions.remove(&response.transaction) else {
            return false;
        };
        match (t.purpose, &response.outcome) {
            (Purpose::Map, Outcome::Success { mapped, other, .. }) => {
                self.mapped.insert(t.server, *mapped);
                self.events.push_back(ProbeEvent::Mapped {
                    server: t.server,
                    mapped: *mapped,
                });
                if let Some(other) = other
                    && self.filter_server.is_none()
                    && other.ip() != t.server.ip()
                    && other.port() != t.server.port()
                {
                    self.filter_server = Some((t.server, *other));
                    self.send(
                        now,
                        t.server,
                        Purpose::Filter {
                            ip: true,
                            port: true,
                        },
                        rng,
                    );
                }
            }
            (Purpose::Map, outcome) => {
                self.failed += 1;
                self.events.push_back(ProbeEvent::Failed {
                    server: t.server,
                    code: match outcome {
                        Outcome::Error { code } => Some(*code),
                        _ => None,
                    },
                });
            }
            (Purpose::Filter { ip, .. }, Outcome::Success { .. }) => {
                self.filtering = if ip {
                    Filtering::EndpointIndependent
                } else {
                    Filtering::AddressDependent
                };
            }
            (Purpose::Filter { .. }, _) => {
                // The server cannot change after all: filtering stays unknown.
                self.filter_server = None;
            }
        }
        self.check_done();
        true
    }

    /// Retransmits what is due and gives up on requests that used all their sends.
    pub fn handle_timeout(&mut self, now: Instant, rng: &mut impl RngCore) {
        let due: Vec<[u8; 12]> = self
            .transactions
            .iter()
            .filter(|(_, t)| t.next <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            let Some(t) = self.transactions.get_mut(&id) else {
                continue;
            };
            if t.sends < self.config.attempts {
                t.sends += 1;
                t.rto = t.rto.saturating_mul(2);
                t.next = now + t.rto;
                self.out.push_back((t.server, t.request.clone()));
                continue;
            }
            let Some(t) = self.transactions.remove(&id) else {
                continue;
            };
            match t.purpose {
                Purpose::Map => {
                    self.failed += 1;
                    self.events.push_back(ProbeEvent::Failed {
                        server: t.server,
                        code: None,
                    });
                }
                // No answer from the other IP and port: try the other port alone.
                Purpose::Filter {
                    ip: true,
                    port: true,
                } => self.send(
                    now,
                    t.server,
                    Purpose::Filter {
                        ip: false,
                        port: true,
                    },
                    rng,
                ),
                Purpose::Filter { .. } => {
                    self.filtering = Filtering::AddressAndPortDependent;
                }
            }
        }
        self.check_done();
    }

    fn check_done(&mut self) {
        if self.done || !self.transactions.is_empty() {
            return;
        }
        self.done = true;
        let report = self.report();
        self.events.push_back(ProbeEvent::Done(report));
    }

    /// What the probe has found so far.
    pub fn report(&self) -> NatReport {
        let mut counts: BTreeMap<SocketAddr, usize> = BTreeMap::new();
        for mapped in self.mapped.values() {
            *counts.entry(*mapped).or_default() += 1;
        }
        let mut reflexive: Vec<(SocketAddr, usize)> = counts.into_iter().collect();
        reflexive.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let public = self
            .mapped
            .iter()
            .any(|(server, mapped)| self.local.get(server) == Some(mapped));
        let ips: Vec<IpAddr> = {
            let mut ips: Vec<IpAddr> = self.mapped.keys().map(SocketAddr::ip).collect();
            ips.dedup();
            ips.sort();
            ips.dedup();
            ips
        };
        let mapping = if public {
            Mapping::None
        } else if reflexive.len() > 1 {
            // Servers at the same IP (other ports) seeing different mappings also prove it.
            Mapping::Dependent
        } else if ips.len() >= 2 {
            Mapping::EndpointIndependent
        } else {
            Mapping::Unknown
        };
        NatReport {
            reflexive: reflexive.into_iter().map(|(a, _)| a).collect(),
            mapping,
            filtering: if public {
                Filtering::EndpointIndependent
            } else {
                self.filtering
            },
            answered: self.mapped.len(),
            asked: self.asked,
        }
    }

    /// Whether every request has been answered or given up.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// When [`handle_timeout`](Self::handle_timeout) is next due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.transactions.values().map(|t| t.next).min()
    }

    /// The next datagram to send: (server, bytes).
    pub fn poll_transmit(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        self.out.pop_front()
    }

    /// The next step worth logging; [`ProbeEvent::Done`] last.
    pub fn poll_event(&mut self) -> Option<ProbeEvent> {
        self.events.pop_front()
    }
}

/// Reads a datagram for a probe: `Some` when it is a STUN response.
pub fn response(datagram: &[u8], from: SocketAddr) -> Option<stun::Response> {
    match stun::handle(datagram, from) {
        Incoming::Response(r) => Some(r),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::ChaCha8Rng;
    use rand_core::SeedableRng;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    /// A scripted network: each server answers Binding requests with the mapping `nat` gives
    /// the client for that server, from the address the reply is sent from.
    struct Net {
        /// The client's outside address per destination server (the NAT's mapping).
        nat: Box<dyn Fn(SocketAddr) -> SocketAddr>,
        /// Servers that drop everything.
        dead: Vec<SocketAddr>,
        /// RFC 5780 servers: primary → other address.
        other: BTreeMap<SocketAddr, SocketAddr>,
        /// Which reply sources the NAT lets in for a mapping made towards `dest`.
        filter: Filtering,
    }

    impl Net {
        fn run(&self, probe: &mut Probe, rng: &mut ChaCha8Rng) -> NatReport {
            let mut now = Instant::ZERO;
            for _ in 0..200 {
                while let Some((server, request)) = probe.poll_transmit() {
                    if self.dead.contains(&server) {
                        continue;
                    }
                    let Incoming::Request { reply } = stun::handle(&request, (self.nat)(server))
                    else {
                        panic!("requests are requests")
                    };
                    let Some(mut r) = response(&reply, server) else {
                        panic!("a reply is a response")
                    };
                    let mut source = server;
                    if let Some(other) = self.other.get(&server) {
                        // An RFC 5780 server: it adds OTHER-ADDRESS and honours CHANGE-REQUEST
                        // instead of refusing it.
                        let change = request_change(&request);
                        if let Some((ip, port)) = change {
                            r.outcome = Outcome::Success {
                                mapped: (self.nat)(server),
                                other: Some(*other),
                                origin: None,
                            };
                            source = SocketAddr::new(
                                if ip { other.ip() } else { server.ip() },
                                if port { other.port() } else { server.port() },
                            );
                        } else if let Outcome::Success { other: o, .. } = &mut r.outcome {
                            *o = Some(*other);
                        }
                    }
                    let allowed = match self.filter {
                        Filtering::EndpointIndependent | Filtering::Unknown => true,
                        Filtering::AddressDependent => source.ip() == server.ip(),
                        Filtering::AddressAndPortDependent => source == server,
                    };
                    if allowed {
                        probe.handle_response(now, source, &r, rng);
                    }
                }
                while let Some(event) = probe.poll_event() {
                    if let ProbeEvent::Done(report) = event {
                        return report;
                    }
                }
                now = probe.poll_timeout().expect("a running probe has a timeout");
                probe.handle_timeout(now, rng);
            }
            panic!("the probe never finished")
        }
    }

    fn request_change(request: &[u8]) -> Option<(bool, bool)> {
        // CHANGE-REQUEST is the only attribute our requests carry: type 0x0003, flags in byte 27.
        (request.len() == 28).then(|| (request[27] & 4 != 0, request[27] & 2 != 0))
    }

    const A: &str = "203.0.113.1:3478";
    const B: &str = "203.0.113.2:3478";
    const A_OTHER: &str = "203.0.113.9:3479";

    fn probe(servers: &[&str], local: Option<&str>, rng: &mut ChaCha8Rng) -> Probe {
        let servers: Vec<_> = servers.iter().map(|s| (addr(s), local.map(addr))).collect();
        Probe::start(Instant::ZERO, ProbeConfig::default(), &servers, rng)
    }

    fn net(nat: impl Fn(SocketAddr) -> SocketAddr + 'static) -> Net {
        Net {
            nat: Box::new(nat),
            dead: Vec::new(),
            other: BTreeMap::new(),
            filter: Filtering::Unknown,
        }
    }

    #[test]
    fn one_mapping_seen_by_two_servers_is_endpoint_independent() {
        let rng = &mut ChaCha8Rng::seed_from_u64(1);
        let mut p = probe(&[A, B], Some("10.0.0.2:5000"), rng);
        let report = net(|_| addr("198.51.100.1:6000")).run(&mut p, rng);
        assert_eq!(report.mapping, Mapping::EndpointIndependent);
        assert_eq!(report.filtering, Filtering::Unknown);
        assert_eq!(report.reflexive, vec![addr("198.51.100.1:6000")]);
        assert_eq!((report.answered, report.asked), (2, 2));
    }

    #[test]
    fn a_mapping_per_destination_is_dependent() {
        let rng = &mut ChaCha8Rng::seed_from_u64(2);
        let mut p = probe(&[A, B], Some("10.0.0.2:5000"), rng);
        let nat = |server: SocketAddr| {
            let port = if server == addr(B) { 6001 } else { 6000 };
            SocketAddr::new(addr("198.51.100.1:0").ip(), port)
        };
        let report = net(nat).run(&mut p, rng);
        assert_eq!(report.mapping, Mapping::Dependent);
        assert_eq!(report.reflexive.len(), 2);
    }

    #[test]
    fn our_own_address_means_no_nat_and_one_server_knows_nothing_of_the_mapping() {
        let rng = &mut ChaCha8Rng::seed_from_u64(3);
        let mut p = probe(&[A, B], Some("198.51.100.1:6000"), rng);
        let report = net(|_| addr("198.51.100.1:6000")).run(&mut p, rng);
        assert_eq!(report.mapping, Mapping::None);
        assert_eq!(report.filtering, Filtering::EndpointIndependent);

        let mut p = probe(&[A], Some("10.0.0.2:5000"), rng);
        let report = net(|_| addr("198.51.100.1:6000")).run(&mut p, rng);
        assert_eq!(report.mapping, Mapping::Unknown);
        assert_eq!(report.reflexive, vec![addr("198.51.100.1:6000")]);
    }

    #[test]
    fn a_dead_server_is_retried_then_given_up() {
        let rng = &mut ChaCha8Rng::seed_from_u64(4);
        let mut p = probe(&[A, B], None, rng);
        let mut n = net(|_| addr("198.51.100.1:6000"));
        n.dead.push(addr(B));
        let report = n.run(&mut p, rng);
        assert_eq!((report.answered, report.asked), (1, 2));
        assert_eq!(report.mapping, Mapping::Unknown);
        let mut failed = Vec::new();
        // The events came before Done; re-run to count sends to the dead server.
        let mut p = probe(&[B], None, rng);
        let mut sends = 0;
        let mut now = Instant::ZERO;
        loop {
            while p.poll_transmit().is_some() {
                sends += 1;
            }
            while let Some(e) = p.poll_event() {
                failed.push(e);
            }
            let Some(next) = p.poll_timeout() else { break };
            assert!(next > now);
            now = next;
            p.handle_timeout(now, rng);
        }
        while let Some(e) = p.poll_event() {
            failed.push(e);
        }
        assert_eq!(sends, ProbeConfig::default().attempts);
        // 250 + 500 + 1000 + 2000 + 4000 ms.
        assert_eq!(now, Instant::ZERO + Duration::from_millis(7750));
        assert!(matches!(failed[0], ProbeEvent::Failed { code: None, .. }));
        assert!(p.is_done());
    }

    #[test]
    fn filtering_is_found_with_an_rfc5780_server() {
        for (filter, expect) in [
            (
                Filtering::EndpointIndependent,
                Filtering::EndpointIndependent,
            ),
            (Filtering::AddressDependent, Filtering::AddressDependent),
            (
                Filtering::AddressAndPortDependent,
                Filtering::AddressAndPortDependent,
            ),
        ] {
            let rng = &mut ChaCha8Rng::seed_from_u64(5);
            let mut p = probe(&[A, B], Some("10.0.0.2:5000"), rng);
            let mut n = net(|_| addr("198.51.100.1:6000"));
            n.other.insert(addr(A), addr(A_OTHER));
            n.filter = filter;
            let report = n.run(&mut p, rng);
            assert_eq!(report.filtering, expect, "{filter:?}");
            assert_eq!(report.mapping, Mapping::EndpointIndependent);
        }
    }

    #[test]
    fn responses_from_strangers_or_to_unknown_transactions_are_ignored() {
        let rng = &mut ChaCha8Rng::seed_from_u64(6);
        let mut p = probe(&[A], None, rng);
        let (server, request) = p.poll_transmit().expect("a request");
        let Incoming::Request { reply } = stun::handle(&request, addr("198.51.100.1:1")) else {
            panic!()
        };
        let r = response(&reply, server).expect("a response");
        assert!(!p.handle_response(Instant::ZERO, addr("192.0.2.66:3478"), &r, rng));
        let mut forged = r.clone();
        forged.transaction = [0; 12];
        assert!(!p.handle_response(Instant::ZERO, server, &forged, rng));
        assert!(p.handle_response(Instant::ZERO, server, &r, rng));
        assert!(
            !p.handle_response(Instant::ZERO, server, &r, rng),
            "only once"
        );
    }
}

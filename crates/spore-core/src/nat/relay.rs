//! Relays, sans-IO: what a relay admits (reservations, circuits) and how much a circuit may
//! carry (bytes, duration, rate), and the header that opens a relay stream.
//!
//! A node behind a NAT that nobody can dial **reserves** a slot at a public node that runs a
//! relay, over an ordinary spore connection, and names that relay in its signed peer record. A
//! peer that wants to reach it asks the relay to **connect** it; the relay opens a stream to the
//! reserved node (**incoming**), and when that node accepts, it splices the two streams. Each end
//! then runs an ordinary end-to-end QUIC connection (TLS 1.3 between the two nodes' own keys)
//! whose packets travel framed inside the spliced streams: the relay carries ciphertext it
//! cannot read or alter unnoticed, and counts it against the circuit's quota.
//!
//! Limits (all configurable, [`RelayLimits`]): reservations, circuits in total and per peer,
//! bytes and duration per circuit, and bandwidth per circuit. A full relay refuses with a
//! [`Refusal`] the asking node can show; circuits already open are never cut to make room.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::identity::PeerId;
use crate::time::Instant;
use crate::wire::WireError;

/// Most bytes of an encoded [`Header`] or [`Reply`].
pub const MAX_HEADER_LEN: usize = 256;
/// Most bytes of one packet framed on a circuit (a QUIC datagram; 2-byte length prefix).
pub const MAX_PACKET_LEN: usize = 65_527;

/// The first frame on a relay stream (stream kind `0x03`), from the side that opened it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Header {
    /// To a relay: keep a slot for me, so others can reach me through you.
    Reserve,
    /// To a relay: connect me to `target`, which holds a reservation here.
    Connect {
        /// The node to reach.
        target: PeerId,
    },
    /// From a relay to the node holding a reservation: `from` asks to connect.
    Incoming {
        /// The node asking.
        from: PeerId,
    },
}

/// The answer to a [`Header`], on the same stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    /// Granted. For `Reserve`: the reservation lasts `secs` (renew before). For `Connect` and
    /// `Incoming`: the circuit is open for at most `secs` and `bytes`, and what follows on the
    /// stream are framed packets.
    Ok {
        /// Seconds the reservation or circuit lasts.
        secs: u64,
        /// Bytes the circuit may carry (both directions together); 0 for a reservation.
        bytes: u64,
    },
    /// Refused, and why.
    Refused(Refusal),
}

/// Why a relay (or the node behind it) said no.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Refusal {
    /// This node does not run a relay.
    #[error("this node does not relay")]
    NotARelay,
    /// Every reservation slot is taken.
    #[error("the relay has no free reservation slot")]
    ReservationsFull,
    /// The target holds no reservation here.
    #[error("the target holds no reservation at this relay")]
    NoReservation,
    /// The relay carries as many circuits as it allows.
    #[error("the relay carries as many circuits as it allows")]
    CircuitsFull,
    /// The asking node, or the target, has as many circuits as one peer may.
    #[error("too many circuits for one peer at this relay")]
    PeerCircuitsFull,
    /// A node cannot connect to itself.
    #[error("a node cannot relay to itself")]
    SelfTarget,
    /// The reserved node did not accept (or could not be reached in time).
    #[error("the target did not accept the circuit")]
    TargetRefused,
    /// The node received a circuit it did not reserve for.
    #[error("no reservation was made at this relay")]
    NotReserved,
}

/// Encodes a header or reply (postcard).
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    postcard::to_allocvec(value).unwrap_or_default()
}

/// Decodes a header or reply, refusing anything longer than [`MAX_HEADER_LEN`] or with bytes
/// left over.
pub fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, WireError> {
    crate::wire::check_bound("relay.header", bytes.len(), MAX_HEADER_LEN)?;
    let (value, rest) =
        postcard::take_from_bytes(bytes).map_err(|e| WireError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(WireError::Trailing(rest.len()));
    }
    Ok(value)
}

/// Addresses that stand for relayed paths in the runtime: 240.0.0.0/4, reserved and never
/// routed (RFC 1112), so they cannot be anyone's real address. They never leave the node: a
/// relayed connection's address is not announced, stored or given to the DHT.
pub fn is_relayed_addr(addr: &SocketAddr) -> bool {
    match addr.ip() {
        IpAddr::V4(ip) => ip.octets()[0] >= 240 && ip != Ipv4Addr::BROADCAST,
        IpAddr::V6(_) => false,
    }
}

/// The `n`th relayed-path address (`n` < 2^28 · 65,535 is plenty; it wraps).
pub fn relayed_addr(n: u64) -> SocketAddr {
    let host = (n / 65_535) as u32 & 0x0fff_ffff;
    let ip = Ipv4Addr::from(0xf000_0000 | host);
    // Never broadcast, never port 0.
    let ip = if ip == Ipv4Addr::BROADCAST {
        Ipv4Addr::new(240, 0, 0, 1)
    } else {
        ip
    };
    SocketAddr::new(IpAddr::V4(ip), (n % 65_535) as u16 + 1)
}

/// What a relay allows.
#[derive(Debug, Clone)]
pub struct RelayLimits {
    /// Nodes holding a reservation at once. Default 128.
    pub max_reservations: usize,
    /// How long a reservation lasts before it must be renewed. Default 1 h.
    pub reservation_ttl: Duration,
    /// Circuits open at once. Default 64.
    pub max_circuits: usize,
    /// Circuits one node may have open at once (as asker or target). Default 8.
    pub max_circuits_per_peer: usize,
    /// Bytes one circuit may carry, both directions together. Default 1 GiB.
    pub circuit_bytes: u64,
    /// How long one circuit may stay open. Default 1 h.
    pub circuit_duration: Duration,
    /// Bytes per second one circuit may carry (each direction); `None` for no limit. Default
    /// 8 MiB/s.
    pub circuit_rate: Option<u64>,
}

impl Default for RelayLimits {
    fn default() -> Self {
        Self {
            max_reservations: 128,
            reservation_ttl: Duration::from_secs(3600),
            max_circuits: 64,
            max_circuits_per_peer: 8,
            circuit_bytes: 1 << 30,
            circuit_duration: Duration::from_secs(3600),
            circuit_rate: Some(8 << 20),
        }
    }
}

/// A circuit the relay admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CircuitId(u64);

#[derive(Debug, Clone)]
struct Circuit {
    from: PeerId,
    target: PeerId,
}

/// Counters a relay keeps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayStats {
    /// Reservations granted (renewals included).
    pub reservations_granted: u64,
    /// Reservations refused.
    pub reservations_refused: u64,
    /// Circuits opened.
    pub circuits_opened: u64,
    /// Circuits refused, for any reason.
    pub circuits_refused: u64,
    /// Circuits ended by their byte or time quota.
    pub circuits_cut: u64,
    /// Bytes carried on all circuits.
    pub bytes_relayed: u64,
}

/// A relay's admission state: who holds a reservation, which circuits are open.
#[derive(Debug)]
pub struct RelayServer {
    limits: RelayLimits,
    reservations: BTreeMap<PeerId, Instant>,
    circuits: BTreeMap<CircuitId, Circuit>,
    next_id: u64,
    stats: RelayStats,
}

impl RelayServer {
    /// A relay with `limits`.
    pub fn new(limits: RelayLimits) -> Self {
        Self {
            limits,
            reservations: BTreeMap::new(),
            circuits: BTreeMap::new(),
            next_id: 0,
            stats: RelayStats::default(),
        }
    }

    /// The limits it enforces.
    pub fn limits(&self) -> &RelayLimits {
        &self.limits
    }

    /// `peer` asks for (or renews) a reservation: its expiry, or why not.
    pub fn reserve(&mut self, now: Instant, peer: PeerId) -> Result<Instant, Refusal> {
        self.expire(now);
        if !self.reservations.contains_key(&peer)
            && self.reservations.len() >= self.limits.max_reservations
        {
            self.stats.reservations_refused += 1;
            return Err(Refusal::ReservationsFull);
        }
        let expires = now + self.limits.reservation_ttl;
        self.reservations.insert(peer, expires);
        self.stats.reservations_granted += 1;
        Ok(expires)
    }

    /// `peer` gave its reservation up (or its connection closed).
    pub fn release(&mut self, peer: &PeerId) {
        self.reservations.remove(peer);
    }

    /// Whether `peer` holds a reservation now.
    pub fn is_reserved(&self, now: Instant, peer: &PeerId) -> bool {
        self.reservations.get(peer).is_some_and(|e| *e > now)
    }

    /// Reservations held now.
    pub fn reservations(&self) -> usize {
        self.reservations.len()
    }

    /// Circuits open now.
    pub fn circuits(&self) -> usize {
        self.circuits.len()
    }

    /// Counters.
    pub fn stats(&self) -> RelayStats {
        self.stats
    }

    fn expire(&mut self, now: Instant) {
        self.reservations.retain(|_, e| *e > now);
    }

    fn circuits_of(&self, peer: &PeerId) -> usize {
        self.circuits
            .values()
            .filter(|c| c.from == *peer || c.target == *peer)
            .count()
    }

    /// `from` asks for a circuit to `target`: admitted with its budget, or refused. The budget
    /// is the circuit's; call [`close`](Self::close) when it ends, however it ends.
    pub fn connect(
        &mut self,
        now: Instant,
        from: PeerId,
        target: PeerId,
    ) -> Result<(CircuitId, CircuitBudget), Refusal> {
        self.expire(now);
        let refused = if from == target {
            Some(Refusal::SelfTarget)
        } else if !self.is_reserved(now, &target) {
            Some(Refusal::NoReservation)
        } else if self.circuits.len() >= self.limits.max_circuits {
            Some(Refusal::CircuitsFull)
        } else if self.circuits_of(&from) >= self.limits.max_circuits_per_peer
            || self.circuits_of(&target) >= self.limits.max_circuits_per_peer
        {
            Some(Refusal::PeerCircuitsFull)
        } else {
            None
        };
        if let Some(refusal) = refused {
            self.stats.circuits_refused += 1;
            return Err(refusal);
        }
        let id = CircuitId(self.next_id);
        self.next_id += 1;
        self.circuits.insert(id, Circuit { from, target });
        self.stats.circuits_opened += 1;
        Ok((id, CircuitBudget::new(now, &self.limits)))
    }

    /// The target did not accept: the circuit never opened.
    pub fn refused_by_target(&mut self, id: CircuitId) {
        if self.circuits.remove(&id).is_some() {
            self.stats.circuits_opened -= 1;
            self.stats.circuits_refused += 1;
        }
    }

    /// A circuit ended; `budget` says how much it carried and whether a quota cut it.
    pub fn close(&mut self, id: CircuitId, budget: &CircuitBudget) {
        if self.circuits.remove(&id).is_some() {
            self.stats.bytes_relayed += budget.carried;
            if budget.cut.is_some() {
                self.stats.circuits_cut += 1;
            }
        }
    }
}

/// Why a circuit's quota ended it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Cut {
    /// It carried all the bytes it may.
    #[error("the circuit used its byte quota")]
    Bytes,
    /// It was open as long as it may be.
    #[error("the circuit reached its time limit")]
    Duration,
}

/// What one circuit may still carry: a byte quota, a deadline, and a token bucket per
/// direction (one second of burst).
#[derive(Debug, Clone)]
pub struct CircuitBudget {
    remaining: u64,
    carried: u64,
    deadline: Instant,
    rate: Option<u64>,
    /// Tokens and last refill, per direction (0: asker → target, 1: target → asker).
    buckets: [(f64, Instant); 2],
    cut: Option<Cut>,
}

impl CircuitBudget {
    fn new(now: Instant, limits: &RelayLimits) -> Self {
        let burst = limits.circuit_rate.unwrap_or(0) as f64;
        Self {
            remaining: limits.circuit_bytes,
            carried: 0,
            deadline: now + limits.circuit_duration,
            rate: limits.circuit_rate,
            buckets: [(burst, now), (burst, now)],
            cut: None,
        }
    }

    /// When the circuit must end at the latest.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Bytes it may still carry.
    pub fn remaining(&self) -> u64 {
        self.remaining
    }

    /// Bytes carried so far.
    pub fn carried(&self) -> u64 {
        self.carried
    }

    /// Asks to pass `len` bytes in `direction` (0: asker → target, 1: back). `Ok(None)`: pass
    /// them now (they are counted); `Ok(Some(wait))`: ask again after `wait`; `Err`: the
    /// circuit is over.
    pub fn take(
        &mut self,
        now: Instant,
        direction: usize,
        len: usize,
    ) -> Result<Option<Duration>, Cut> {
        if let Some(cut) = self.cut {
            return Err(cut);
        }
        if now >= self.deadline {
            self.cut = Some(Cut::Duration);
            return Err(Cut::Duration);
        }
        let len = len as u64;
        if len > self.remaining {
            self.cut = Some(Cut::Bytes);
            return Err(Cut::Bytes);
        }
        if let Some(rate) = self.rate {
            let (tokens, last) = &mut self.buckets[direction.min(1)];
            let elapsed = now.saturating_duration_since(*last).as_secs_f64();
            *tokens = (*tokens + elapsed * rate as f64).min(rate as f64);
            *last = now;
            let need = len as f64;
            if *tokens < need && *tokens < rate as f64 {
                let wait = (need.min(rate as f64) - *tokens) / rate as f64;
                return Ok(Some(
                    Duration::from_secs_f64(wait).max(Duration::from_micros(100)),
                ));
            }
            *tokens -= need;
        }
        self.remaining -= len;
        self.carried += len;
        Ok(None)
    }

    /// Whether a quota ended the circuit.
    pub fn cut(&self) -> Option<Cut> {
        self.cut
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Keypair;

    fn peer(n: u8) -> PeerId {
        Keypair::from_secret_bytes([n; 32]).peer_id()
    }

    fn at(secs: u64) -> Instant {
        Instant::ZERO + Duration::from_secs(secs)
    }

    #[test]
    fn headers_round_trip_and_garbage_is_refused() {
        for h in [
            Header::Reserve,
            Header::Connect { target: peer(1) },
            Header::Incoming { from: peer(2) },
        ] {
            assert_eq!(decode::<Header>(&encode(&h)).unwrap_or(Header::Reserve), h);
        }
        let r = Reply::Refused(Refusal::CircuitsFull);
        assert_eq!(decode::<Reply>(&encode(&r)).ok(), Some(r));
        assert!(decode::<Header>(&[9, 9, 9]).is_err());
        let mut long = encode(&Header::Reserve);
        long.push(0);
        assert_eq!(decode::<Header>(&long), Err(WireError::Trailing(1)));
        assert!(decode::<Header>(&[0; 300]).is_err());
    }

    #[test]
    fn relayed_addresses_are_recognisable_and_distinct() {
        let mut seen = std::collections::BTreeSet::new();
        for n in [0, 1, 65_534, 65_535, 65_536, 1 << 40] {
            let a = relayed_addr(n);
            assert!(is_relayed_addr(&a), "{a}");
            assert_ne!(a.port(), 0);
            assert!(seen.insert(a));
        }
        for real in [
            "127.0.0.1:1",
            "10.0.0.1:7070",
            "[::1]:7070",
            "255.255.255.255:1",
        ] {
            let a: SocketAddr = real.parse().unwrap_or_else(|_| relayed_addr(0));
            assert!(!is_relayed_addr(&a), "{real}");
        }
    }

    #[test]
    fn reservations_are_bounded_and_expire() {
        let limits = RelayLimits {
            max_reservations: 2,
            reservation_ttl: Duration::from_secs(60),
            ..RelayLimits::default()
        };
        let mut relay = RelayServer::new(limits);
        assert!(relay.reserve(at(0), peer(1)).is_ok());
        assert!(relay.reserve(at(0), peer(2)).is_ok());
        assert_eq!(
            relay.reserve(at(1), peer(3)),
            Err(Refusal::ReservationsFull)
        );
        // A renewal is always granted and moves the expiry.
        assert_eq!(relay.reserve(at(30), peer(1)), Ok(at(90)));
        // Peer 2's expired at 60: there is room again.
        assert!(relay.reserve(at(61), peer(3)).is_ok());
        assert!(!relay.is_reserved(at(61), &peer(2)));
        relay.release(&peer(1));
        assert!(!relay.is_reserved(at(61), &peer(1)));
        assert_eq!(relay.stats().reservations_refused, 1);
    }

    #[test]
    fn circuits_need_a_reservation_and_respect_the_quotas() {
        let limits = RelayLimits {
            max_circuits: 2,
            max_circuits_per_peer: 1,
            ..RelayLimits::default()
        };
        let mut relay = RelayServer::new(limits);
        let (a, b, c, d) = (peer(1), peer(2), peer(3), peer(4));
        assert_eq!(
            relay.connect(at(0), a, b).map(|_| ()),
            Err(Refusal::NoReservation)
        );
        relay.reserve(at(0), b).unwrap_or(at(0));
        relay.reserve(at(0), d).unwrap_or(at(0));
        assert_eq!(
            relay.connect(at(0), b, b).map(|_| ()),
            Err(Refusal::SelfTarget)
        );
        let (first, budget) = relay.connect(at(0), a, b).expect("admitted");
        // b already has its one circuit.
        assert_eq!(
            relay.connect(at(0), c, b).map(|_| ()),
            Err(Refusal::PeerCircuitsFull)
        );
        let (second, _) = relay.connect(at(0), c, d).expect("admitted");
        // The relay is full; the open circuits are untouched.
        relay.reserve(at(0), a).unwrap_or(at(0));
        assert_eq!(
            relay.connect(at(0), peer(5), a).map(|_| ()),
            Err(Refusal::CircuitsFull)
        );
        assert_eq!(relay.circuits(), 2);
        relay.close(first, &budget);
        relay.refused_by_target(second);
        assert_eq!(relay.circuits(), 0);
        assert_eq!(relay.stats().circuits_opened, 1);
        assert_eq!(relay.stats().circuits_refused, 5);
    }

    #[test]
    fn a_budget_limits_bytes_time_and_rate() {
        let limits = RelayLimits {
            circuit_bytes: 10_000,
            circuit_duration: Duration::from_secs(100),
            circuit_rate: Some(4_000),
            ..RelayLimits::default()
        };
        let mut b = CircuitBudget::new(at(0), &limits);
        // One second of burst, then wait for tokens; each direction has its own bucket.
        assert_eq!(b.take(at(0), 0, 4_000), Ok(None));
        let wait = b
            .take(at(0), 0, 2_000)
            .expect("not over")
            .expect("must wait");
        assert_eq!(wait, Duration::from_millis(500));
        assert_eq!(b.take(at(0), 1, 2_000), Ok(None));
        assert_eq!(b.take(at(1), 0, 2_000), Ok(None));
        assert_eq!(b.carried(), 8_000);
        // The byte quota: 2,000 left.
        assert_eq!(b.take(at(2), 1, 2_500), Err(Cut::Bytes));
        assert_eq!(
            b.take(at(2), 1, 1),
            Err(Cut::Bytes),
            "a cut circuit stays cut"
        );

        let mut b = CircuitBudget::new(at(0), &limits);
        assert_eq!(b.take(at(100), 0, 1), Err(Cut::Duration));
    }
}

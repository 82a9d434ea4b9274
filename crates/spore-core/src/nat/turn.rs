//! A TURN client (RFC 8656), sans-IO: a relayed address allocated on a TURN server, kept alive,
//! with permissions for the peers that may send to it, and data to and from peers carried in
//! Send and Data indications.
//!
//! The owner moves datagrams: [`TurnClient::poll_transmit`] gives what to send to the server
//! (from the socket the allocation belongs to), [`TurnClient::handle`] takes what the server
//! sent, [`TurnClient::handle_timeout`] drives retransmissions and refreshes at
//! [`TurnClient::poll_timeout`]. Time is given, never read.
//!
//! Long-term credentials (RFC 8489 §9.2): the first Allocate goes without; the server's 401
//! brings its realm and nonce, and every later request carries USERNAME, REALM, NONCE and a
//! MESSAGE-INTEGRITY keyed by MD5(username:realm:password). A 438 (stale nonce) brings a new
//! nonce and the request is sent again. Requests are retransmitted on RFC 8489's schedule (500
//! ms doubling, 5 sends).
//!
//! Data travels in Send and Data indications rather than channels: channel data would start
//! with a byte in 0x40–0x7f, which on the node's socket is a QUIC packet (RFC 7983 leaves no
//! room for both), while an indication is a STUN message, told apart by its first byte.

use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytecodec::{DecodeExt, EncodeExt};
use rand_core::RngCore;
use stun_codec::rfc5389::attributes::{
    ErrorCode, MessageIntegrity, Nonce, Realm, Software, Username, XorMappedAddress,
};
use stun_codec::rfc5766::attributes::{
    Data, Lifetime, RequestedTransport, XorPeerAddress, XorRelayAddress,
};
use stun_codec::rfc5766::methods::{ALLOCATE, CREATE_PERMISSION, DATA, REFRESH, SEND};
use stun_codec::{Message, MessageClass, MessageDecoder, MessageEncoder, Method, TransactionId};

use crate::time::Instant;

stun_codec::define_attribute_enums!(
    Attribute,
    AttributeDecoder,
    AttributeEncoder,
    [
        Username,
        MessageIntegrity,
        ErrorCode,
        Realm,
        Nonce,
        XorMappedAddress,
        Software,
        Lifetime,
        XorPeerAddress,
        Data,
        XorRelayAddress,
        RequestedTransport
    ]
);

/// The IANA protocol number of UDP, for REQUESTED-TRANSPORT.
const UDP: u8 = 17;
/// Most peer IPs with a permission; asking for more drops the oldest.
pub const MAX_PERMISSIONS: usize = 64;
/// Most bytes of peer data in one indication (a QUIC packet is at most ~1,500).
pub const MAX_DATA: usize = 4096;
/// A permission lasts 300 s at the server (RFC 8656 §9); it is renewed after this long.
const PERMISSION_RENEW: Duration = Duration::from_secs(240);
/// Retransmission: first wait, and sends in all.
const RTO: Duration = Duration::from_millis(500);
const SENDS: u32 = 5;
/// Allocation lifetime asked for, and the floor under which a refresh is not worth it.
const LIFETIME: Duration = Duration::from_secs(600);
/// Most requests in flight.
const MAX_PENDING: usize = 16;

/// Where the TURN server is, and who we are to it.
#[derive(Clone, PartialEq, Eq)]
pub struct TurnConfig {
    /// The server's address.
    pub server: SocketAddr,
    /// Long-term credential: user name.
    pub username: String,
    /// Long-term credential: password.
    pub password: String,
}

impl std::fmt::Debug for TurnConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TurnConfig")
            .field("server", &self.server)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// What the client reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TurnEvent {
    /// The server allocated `relayed` for us (or refreshed it): peers with a permission may
    /// send to it. `mapped` is our address as the server saw it.
    Allocated {
        /// The relayed transport address.
        relayed: SocketAddr,
        /// Our server-reflexive address, if the server said.
        mapped: Option<SocketAddr>,
        /// How long the allocation lives unless refreshed (the client refreshes it).
        lifetime: Duration,
    },
    /// Peers at `ips` may now send to the relayed address.
    Permitted {
        /// The peers' IPs.
        ips: Vec<IpAddr>,
    },
    /// The allocation failed or was lost; the client asks again later (5 s, doubling to 5 min).
    Failed {
        /// What went wrong (the server's error code and reason, or no answer).
        reason: String,
    },
}

/// A datagram the client took in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handled {
    /// Data a peer sent to our relayed address.
    Data {
        /// The peer, as the server saw it.
        peer: SocketAddr,
        /// What it sent.
        data: Vec<u8>,
    },
    /// A response to one of our requests, or something to ignore.
    Consumed,
    /// Not a TURN message of ours.
    NotTurn,
}

#[derive(Debug, Clone)]
enum Request {
    Allocate,
    Refresh { lifetime: Duration },
    Permission { ips: Vec<IpAddr> },
}

impl Request {
    fn method(&self) -> Method {
        match self {
            Request::Allocate => ALLOCATE,
            Request::Refresh { .. } => REFRESH,
            Request::Permission { .. } => CREATE_PERMISSION,
        }
    }
}

#[derive(Debug)]
struct Pending {
    request: Request,
    bytes: Vec<u8>,
    sends: u32,
    next: Instant,
    /// Sent again after a 401 or 438 already: a second one is a failure.
    reauthenticated: bool,
}

/// The TURN client of one allocation.
#[derive(Debug)]
pub struct TurnClient {
    config: TurnConfig,
    realm: Option<Realm>,
    nonce: Option<Nonce>,
    relayed: Option<SocketAddr>,
    refresh_at: Option<Instant>,
    /// When to try allocating again after a failure.
    retry_at: Option<Instant>,
    retry_wait: Duration,
    permissions: BTreeMap<IpAddr, Instant>,
    pending: BTreeMap<[u8; 12], Pending>,
    out: VecDeque<Vec<u8>>,
    events: VecDeque<TurnEvent>,
}

impl TurnClient {
    /// A client for `config`; it asks for an allocation at once.
    pub fn new(config: TurnConfig, now: Instant, rng: &mut dyn RngCore) -> Self {
        let mut client = Self {
            config,
            realm: None,
            nonce: None,
            relayed: None,
            refresh_at: None,
            retry_at: None,
            retry_wait: Duration::from_secs(5),
            permissions: BTreeMap::new(),
            pending: BTreeMap::new(),
            out: VecDeque::new(),
            events: VecDeque::new(),
        };
        client.request(Request::Allocate, now, rng);
        client
    }

    /// The server.
    pub fn server(&self) -> SocketAddr {
        self.config.server
    }

    /// The relayed address, once allocated.
    pub fn relayed(&self) -> Option<SocketAddr> {
        self.relayed
    }

    /// How many peer IPs have (or are being given) a permission.
    pub fn permitted(&self) -> usize {
        self.permissions.len()
    }

    /// Lets peers at `ips` send to our relayed address (renewed while the allocation lives; at
    /// most [`MAX_PERMISSIONS`], the oldest dropped). IPs of the wrong family are ignored.
    pub fn permit(&mut self, ips: &[IpAddr], now: Instant, rng: &mut dyn RngCore) {
        let family = self.config.server.is_ipv4();
        let new: Vec<IpAddr> = ips
            .iter()
            .filter(|ip| ip.is_ipv4() == family && !self.permissions.contains_key(ip))
            .copied()
            .collect();
        if new.is_empty() {
            return;
        }
        for ip in &new {
            if self.permissions.len() >= MAX_PERMISSIONS
                && let Some(oldest) = self
                    .permissions
                    .iter()
                    .min_by_key(|(_, at)| **at)
                    .map(|(ip, _)| *ip)
            {
                self.permissions.remove(&oldest);
            }
            // Renewed from `now + PERMISSION_RENEW`; counted as wanted from now.
            self.permissions.insert(*ip, now);
        }
        if self.relayed.is_some() {
            self.request(Request::Permission { ips: new }, now, rng);
        }
    }

    /// A Send indication carrying `data` to `peer` through the relayed address (send it to
    /// the server). `None` if `data` is larger than [`MAX_DATA`].
    pub fn wrap(&self, peer: SocketAddr, data: &[u8], rng: &mut dyn RngCore) -> Option<Vec<u8>> {
        if data.len() > MAX_DATA {
            return None;
        }
        let mut m = Message::<Attribute>::new(MessageClass::Indication, SEND, transaction(rng));
        m.add_attribute(XorPeerAddress::new(peer));
        m.add_attribute(Data::new(data.to_vec()).ok()?);
        encode(m)
    }

    /// Takes a datagram that came from the server.
    pub fn handle(&mut self, datagram: &[u8], now: Instant, rng: &mut dyn RngCore) -> Handled {
        let Ok(Ok(message)) = MessageDecoder::<Attribute>::new().decode_from_bytes(datagram) else {
            return Handled::NotTurn;
        };
        if message.class() == MessageClass::Indication && message.method() == DATA {
            let peer = message
                .get_attribute::<XorPeerAddress>()
                .map(|a| a.address());
            let data = message.get_attribute::<Data>().map(|d| d.data().to_vec());
            return match (peer, data) {
                (Some(peer), Some(data)) if data.len() <= MAX_DATA => Handled::Data { peer, data },
                _ => Handled::Consumed,
            };
        }
        let id = *message.transaction_id().as_bytes();
        let Some(pending) = self.pending.remove(&id) else {
            return Handled::NotTurn;
        };
        match message.class() {
            MessageClass::SuccessResponse => self.succeeded(pending.request, &message, now, rng),
            MessageClass::ErrorResponse => self.errored(pending, &message, now, rng),
            _ => {
                self.pending.insert(id, pending);
                return Handled::NotTurn;
            }
        }
        Handled::Consumed
    }

    fn succeeded(
        &mut self,
        request: Request,
        message: &Message<Attribute>,
        now: Instant,
        rng: &mut dyn RngCore,
    ) {
        match request {
            Request::Allocate | Request::Refresh { .. } => {
                let lifetime = message
                    .get_attribute::<Lifetime>()
                    .map_or(LIFETIME, |l| l.lifetime());
                if matches!(request, Request::Refresh { lifetime } if lifetime.is_zero()) {
                    self.relayed = None;
                    self.refresh_at = None;
                    return;
                }
                if let Some(relayed) = message.get_attribute::<XorRelayAddress>() {
                    self.relayed = Some(relayed.address());
                }
                let Some(relayed) = self.relayed else {
                    self.fail("the server allocated no relayed address".into(), now);
                    return;
                };
                self.retry_wait = Duration::from_secs(5);
                self.refresh_at = Some(now + lifetime / 2);
                let mapped = message
                    .get_attribute::<XorMappedAddress>()
                    .map(|a| a.address());
                self.events.push_back(TurnEvent::Allocated {
                    relayed,
                    mapped,
                    lifetime,
                });
                if matches!(request, Request::Allocate) && !self.permissions.is_empty() {
                    let ips = self.permissions.keys().copied().collect();
                    self.request(Request::Permission { ips }, now, rng);
                }
            }
            Request::Permission { ips } => {
                for ip in &ips {
                    if let Some(at) = self.permissions.get_mut(ip) {
                        *at = now;
                    }
                }
                self.events.push_back(TurnEvent::Permitted { ips });
            }
        }
    }

    fn errored(
        &mut self,
        pending: Pending,
        message: &Message<Attribute>,
        now: Instant,
        rng: &mut dyn RngCore,
    ) {
        let code = message.get_attribute::<ErrorCode>();
        let number = code.map_or(0, |c| c.code());
        // 401: credentials wanted (or wrong); 438: our nonce went stale.
        if (number == 401 || number == 438) && !pending.reauthenticated {
            if let Some(realm) = message.get_attribute::<Realm>() {
                self.realm = Some(realm.clone());
            }
            if let Some(nonce) = message.get_attribute::<Nonce>() {
                self.nonce = Some(nonce.clone());
            }
            if self.realm.is_some() && self.nonce.is_some() {
                self.send_request(pending.request, true, now, rng);
                return;
            }
        }
        let reason = code.map_or_else(
            || "an error without a code".to_string(),
            |c| format!("{} {}", c.code(), c.reason_phrase()),
        );
        match pending.request {
            Request::Permission { ips } => {
                for ip in ips {
                    self.permissions.remove(&ip);
                }
            }
            // 437: the allocation is gone (e.g. after a server restart): start again.
            Request::Refresh { .. } | Request::Allocate => self.fail(reason, now),
        }
    }

    fn fail(&mut self, reason: String, now: Instant) {
        self.relayed = None;
        self.refresh_at = None;
        self.retry_at = Some(now + self.retry_wait);
        self.retry_wait = (self.retry_wait * 2).min(Duration::from_secs(300));
        self.events.push_back(TurnEvent::Failed { reason });
    }

    /// Releases the allocation (a Refresh with lifetime 0); nothing is relayed after.
    pub fn close(&mut self, now: Instant, rng: &mut dyn RngCore) {
        if self.relayed.is_some() {
            self.request(
                Request::Refresh {
                    lifetime: Duration::ZERO,
                },
                now,
                rng,
            );
        }
        self.retry_at = None;
    }

    /// Retransmits, refreshes and renews what is due at `now`.
    pub fn handle_timeout(&mut self, now: Instant, rng: &mut dyn RngCore) {
        let due: Vec<[u8; 12]> = self
            .pending
            .iter()
            .filter(|(_, p)| p.next <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            let Some(p) = self.pending.get_mut(&id) else {
                continue;
            };
            if p.sends >= SENDS {
                let Some(p) = self.pending.remove(&id) else {
                    continue;
                };
                match p.request {
                    Request::Permission { ips } => {
                        for ip in ips {
                            self.permissions.remove(&ip);
                        }
                    }
                    Request::Refresh { lifetime } if lifetime.is_zero() => {}
                    _ => self.fail("the TURN server did not answer".into(), now),
                }
                continue;
            }
            p.next = now + RTO * (1 << p.sends);
            p.sends += 1;
            self.out.push_back(p.bytes.clone());
        }
        if self.retry_at.is_some_and(|t| t <= now) {
            self.retry_at = None;
            self.request(Request::Allocate, now, rng);
        }
        if self.refresh_at.is_some_and(|t| t <= now) {
            self.refresh_at = None;
            self.request(Request::Refresh { lifetime: LIFETIME }, now, rng);
        }
        if self.relayed.is_some() {
            let stale: Vec<IpAddr> = self
                .permissions
                .iter()
                .filter(|(_, at)| **at + PERMISSION_RENEW <= now)
                .map(|(ip, _)| *ip)
                .collect();
            if !stale.is_empty() {
                for ip in &stale {
                    // Not asked again until this round is answered or fails.
                    self.permissions.insert(*ip, now);
                }
                self.request(Request::Permission { ips: stale }, now, rng);
            }
        }
    }

    /// When [`handle_timeout`](Self::handle_timeout) should run next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let renew = self
            .relayed
            .and(self.permissions.values().min())
            .map(|at| *at + PERMISSION_RENEW);
        self.pending
            .values()
            .map(|p| p.next)
            .chain(self.retry_at)
            .chain(self.refresh_at)
            .chain(renew)
            .min()
    }

    /// The next datagram to send to the server.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.out.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<TurnEvent> {
        self.events.pop_front()
    }

    fn request(&mut self, request: Request, now: Instant, rng: &mut dyn RngCore) {
        self.send_request(request, false, now, rng);
    }

    /// Sends `request`, with credentials once the server has told us its realm and nonce;
    /// `retry` marks the one resend after a 401 or 438.
    fn send_request(&mut self, request: Request, retry: bool, now: Instant, rng: &mut dyn RngCore) {
        if self.pending.len() >= MAX_PENDING {
            return;
        }
        let id = transaction(rng);
        let mut m = Message::<Attribute>::new(MessageClass::Request, request.method(), id);
        match &request {
            Request::Allocate => {
                m.add_attribute(RequestedTransport::new(UDP));
                if let Ok(l) = Lifetime::new(LIFETIME) {
                    m.add_attribute(l);
                }
            }
            Request::Refresh { lifetime } => {
                if let Ok(l) = Lifetime::new(*lifetime) {
                    m.add_attribute(l);
                }
            }
            Request::Permission { ips } => {
                for ip in ips {
                    m.add_attribute(XorPeerAddress::new(SocketAddr::new(*ip, 0)));
                }
            }
        }
        if let (Some(realm), Some(nonce)) = (self.realm.clone(), self.nonce.clone())
            && let Ok(username) = Username::new(self.config.username.clone())
        {
            m.add_attribute(username.clone());
            m.add_attribute(realm.clone());
            m.add_attribute(nonce);
            match MessageIntegrity::new_long_term_credential(
                &m,
                &username,
                &realm,
                &self.config.password,
            ) {
                Ok(integrity) => m.add_attribute(integrity),
                Err(_) => return,
            }
        }
        let Some(bytes) = encode(m) else {
            return;
        };
        self.out.push_back(bytes.clone());
        self.pending.insert(
            *id.as_bytes(),
            Pending {
                request,
                bytes,
                sends: 1,
                next: now + RTO,
                reauthenticated: retry,
            },
        );
    }
}

fn transaction(rng: &mut dyn RngCore) -> TransactionId {
    let mut id = [0u8; 12];
    rng.fill_bytes(&mut id);
    TransactionId::new(id)
}

fn encode(message: Message<Attribute>) -> Option<Vec<u8>> {
    MessageEncoder::new().encode_into_bytes(message).ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    fn client() -> (TurnClient, ChaCha20Rng) {
        let mut rng = ChaCha20Rng::from_seed([3; 32]);
        let config = TurnConfig {
            server: "192.0.2.1:3478".parse().unwrap(),
            username: "u".into(),
            password: "p".into(),
        };
        (TurnClient::new(config, Instant::ZERO, &mut rng), rng)
    }

    fn decode(bytes: &[u8]) -> Message<Attribute> {
        MessageDecoder::<Attribute>::new()
            .decode_from_bytes(bytes)
            .unwrap()
            .unwrap()
    }

    /// The server's error `code` to `request`, with a realm and `nonce`.
    fn error(request: &Message<Attribute>, code: u16, nonce: &str) -> Vec<u8> {
        let mut m = Message::<Attribute>::new(
            MessageClass::ErrorResponse,
            request.method(),
            request.transaction_id(),
        );
        m.add_attribute(ErrorCode::new(code, "no".into()).unwrap());
        m.add_attribute(Realm::new("r".into()).unwrap());
        m.add_attribute(Nonce::new(nonce.into()).unwrap());
        encode(m).unwrap()
    }

    #[test]
    fn a_challenge_then_a_stale_nonce_are_answered_with_credentials() {
        let (mut c, mut rng) = client();
        let first = decode(&c.poll_transmit().unwrap());
        assert_eq!(first.method(), ALLOCATE);
        assert!(first.get_attribute::<MessageIntegrity>().is_none());
        let now = Instant::ZERO;
        assert_eq!(
            c.handle(&error(&first, 401, "n1"), now, &mut rng),
            Handled::Consumed
        );
        let second = decode(&c.poll_transmit().unwrap());
        assert_eq!(second.get_attribute::<Nonce>().unwrap().value(), "n1");
        let integrity = second.get_attribute::<MessageIntegrity>().unwrap();
        let username = Username::new("u".into()).unwrap();
        let realm = Realm::new("r".into()).unwrap();
        assert!(
            integrity
                .check_long_term_credential(&username, &realm, "p")
                .is_ok()
        );
        // A second 401 to the answered challenge is a failure, not a loop.
        c.handle(&error(&second, 401, "n2"), now, &mut rng);
        assert!(
            matches!(c.poll_event(), Some(TurnEvent::Failed { reason }) if reason.starts_with("401"))
        );
        assert!(c.poll_transmit().is_none());
        // The retry after the backoff: a stale nonce is answered once with the new one.
        c.handle_timeout(now + Duration::from_secs(5), &mut rng);
        let third = decode(&c.poll_transmit().unwrap());
        c.handle(&error(&third, 438, "n3"), now, &mut rng);
        let fourth = decode(&c.poll_transmit().unwrap());
        assert_eq!(fourth.get_attribute::<Nonce>().unwrap().value(), "n3");
    }

    #[test]
    fn an_unanswered_allocation_is_retransmitted_then_reported() {
        let (mut c, mut rng) = client();
        let first = c.poll_transmit().unwrap();
        let mut now = Instant::ZERO;
        let mut sends = 1;
        while let Some(at) = c.poll_timeout() {
            now = at;
            c.handle_timeout(now, &mut rng);
            if let Some(again) = c.poll_transmit() {
                assert_eq!(again, first, "the same request");
                sends += 1;
            }
            if c.poll_event().is_some() {
                break;
            }
        }
        assert_eq!(sends, SENDS);
        // 0.5 + 1 + 2 + 4 + 8 s.
        assert_eq!(now, Instant::ZERO + Duration::from_millis(15_500));
    }

    #[test]
    fn bad_datagrams_are_not_turn_and_data_is_bounded() {
        let (mut c, mut rng) = client();
        for junk in [
            &b""[..],
            &[0u8; 20][..],
            &[0x40; 1200][..],
            &[1, 1, 0, 4][..],
        ] {
            assert_eq!(c.handle(junk, Instant::ZERO, &mut rng), Handled::NotTurn);
        }
        let peer: SocketAddr = "198.51.100.2:4000".parse().unwrap();
        assert!(c.wrap(peer, &[0; MAX_DATA + 1], &mut rng).is_none());
        let send = c.wrap(peer, b"x", &mut rng).unwrap();
        let m = decode(&send);
        assert_eq!((m.class(), m.method()), (MessageClass::Indication, SEND));
        assert_eq!(m.get_attribute::<XorPeerAddress>().unwrap().address(), peer);
    }

    #[test]
    fn data_from_the_server_is_read_within_its_bound() {
        let (mut c, mut rng) = client();
        let peer: SocketAddr = "198.51.100.2:4000".parse().unwrap();
        let indication = |len: usize, rng: &mut ChaCha20Rng| {
            let mut m = Message::<Attribute>::new(MessageClass::Indication, DATA, transaction(rng));
            m.add_attribute(XorPeerAddress::new(peer));
            m.add_attribute(Data::new(vec![7; len]).unwrap());
            encode(m).unwrap()
        };
        let fits = indication(MAX_DATA, &mut rng);
        assert_eq!(
            c.handle(&fits, Instant::ZERO, &mut rng),
            Handled::Data {
                peer,
                data: vec![7; MAX_DATA]
            }
        );
        let too_big = indication(MAX_DATA + 1, &mut rng);
        assert_eq!(
            c.handle(&too_big, Instant::ZERO, &mut rng),
            Handled::Consumed
        );
    }

    #[test]
    fn permissions_are_bounded_and_wait_for_the_allocation() {
        let (mut c, mut rng) = client();
        let _ = c.poll_transmit();
        let ips: Vec<IpAddr> = (0..100u8).map(|i| IpAddr::from([10, 0, 0, i])).collect();
        c.permit(&ips, Instant::ZERO, &mut rng);
        assert_eq!(c.permissions.len(), MAX_PERMISSIONS);
        assert!(
            c.poll_transmit().is_none(),
            "nothing to permit on before an allocation"
        );
        // An IPv6 peer cannot use an IPv4 relay.
        c.permit(&["2001:db8::1".parse().unwrap()], Instant::ZERO, &mut rng);
        assert_eq!(c.permissions.len(), MAX_PERMISSIONS);
    }
}

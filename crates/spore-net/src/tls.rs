//! TLS for spore's QUIC transport: every connection is mutually authenticated by node key.
//!
//! # The scheme
//!
//! - Each node presents one **self-signed X.509 certificate made from its Ed25519 node key**. The
//!   certificate is only an envelope for the key: it is regenerated at every start and carries a
//!   fixed name ([`SERVER_NAME`]) that nobody checks.
//! - A [`PeerId`] *is* that Ed25519 public key, so the certificate's key is the peer's identity.
//!   There is no CA: a CA would vouch for names, but a spore address already names the key, so a
//!   third party could only add a way to be wrong. What a certificate check must establish is
//!   that the peer holds the private key of the id, and the TLS 1.3 `CertificateVerify` signature
//!   over the handshake transcript proves exactly that.
//! - **The dialer** knows whom it dials: [`client_config`] takes the expected [`PeerId`] and the
//!   handshake fails unless the server's key is that id (see [`peer_id_mismatch`] to recover the
//!   ids from the resulting [`quinn::ConnectionError`]).
//! - **The listener** requires a client certificate (mutual authentication) and learns who
//!   connected with [`peer_id_of`].
//! - TLS 1.3 only (forward secrecy from its ephemeral key exchange), Ed25519 signatures only, ALPN
//!   [`ALPN`]. Session resumption and 0-RTT are off: a resumed session skips the certificate
//!   check, and with a fixed server name a ticket from one peer could stand in for another.
//!
//! ```no_run
//! # async fn demo(
//! #     me: spore_core::identity::Keypair,
//! #     them: spore_core::identity::PeerId,
//! #     addr: std::net::SocketAddr,
//! # ) -> anyhow::Result<()> {
//! use std::sync::Arc;
//! use spore_net::tls;
//!
//! let transport = Arc::new(quinn::TransportConfig::default());
//! let endpoint = quinn::Endpoint::server(
//!     tls::server_config(&me, transport.clone())?,
//!     "0.0.0.0:0".parse()?,
//! )?;
//! let config = tls::client_config(&me, them, transport)?;
//! match endpoint.connect_with(config, addr, tls::SERVER_NAME)?.await {
//!     Ok(conn) => assert_eq!(tls::peer_id_of(&conn)?, them),
//!     Err(err) => match tls::peer_id_mismatch(&err) {
//!         Some(mismatch) => eprintln!("{mismatch}"),
//!         None => eprintln!("connection failed: {err}"),
//!     },
//! }
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::sync::Arc;

use quinn::crypto::rustls::{NoInitialCipherSuite, QuicClientConfig, QuicServerConfig};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{NoServerSessionStorage, ParsedCertificate};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, PeerIncompatible,
    PeerMisbehaved, SignatureScheme,
};
use spore_core::identity::{Keypair, PEER_ID_LEN, PEER_ID_TEXT_LEN, PeerId, PeerIdError};

/// The ALPN protocol id of spore's QUIC connections.
pub const ALPN: &[u8] = b"spore/1";

/// The name in every spore certificate, and the server name to pass to
/// [`quinn::Endpoint::connect_with`]. It is never verified: identity is the key, not a name.
pub const SERVER_NAME: &str = "spore";

/// The DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410 §4): SEQUENCE { SEQUENCE { OID
/// 1.3.101.112 }, BIT STRING (0 unused bits) }, followed by the 32 key bytes. RFC 8410 requires
/// the algorithm parameters to be absent, so DER admits exactly this one encoding.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// Why a TLS configuration could not be built, or why a peer's certificate was refused.
#[derive(thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// rcgen could not make this node's certificate from its key.
    #[error("cannot make the node certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    /// rustls refused the configuration (for example, a key it cannot use).
    #[error("cannot build the TLS configuration: {0}")]
    Config(#[source] rustls::Error),
    /// The crypto provider lacks the cipher suite QUIC needs for its initial packets.
    #[error("cannot build the QUIC crypto configuration: {0}")]
    Quic(#[from] NoInitialCipherSuite),
    /// The connection carries no peer certificate (it never completed a handshake).
    #[error("the connection has no peer certificate")]
    NoCertificate,
    /// The peer sent a chain; spore peers send exactly one self-signed certificate.
    #[error("the peer sent {0} certificates; a spore peer sends exactly one")]
    ChainLength(usize),
    /// The peer's certificate is not well-formed X.509.
    #[error("malformed peer certificate: {0}")]
    Malformed(#[source] rustls::Error),
    /// The peer's certificate holds a key that is not Ed25519.
    #[error("the peer certificate's key is not an Ed25519 key")]
    NotEd25519,
    /// The peer's certificate holds 32 bytes that are not a valid Ed25519 public key.
    #[error("the peer certificate's key is not a valid peer id: {0}")]
    InvalidKey(#[source] PeerIdError),
    /// The dialed node presented a different key than the one dialed.
    #[error("peer id mismatch: dialed {expected}, remote presented {actual}")]
    PeerIdMismatch {
        /// The id the dialer expected.
        expected: PeerId,
        /// The id the remote's certificate carries.
        actual: PeerId,
    },
}

// rustls prints `CertificateError::Other` with `{:?}`, and that text is all quinn keeps of a
// failed handshake. The derived form would abbreviate the ids (`PeerId`'s Debug is short), so
// Debug prints the full message, which also lets `peer_id_mismatch` read the ids back.
impl fmt::Debug for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl TlsError {
    /// Wraps a refusal so rustls reports it as a bad certificate and keeps the typed error.
    fn into_rustls(self) -> rustls::Error {
        match self {
            // Already a rustls certificate error; pass it on unchanged.
            Self::Malformed(err) => err,
            other => rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(
                Arc::new(other),
            ))),
        }
    }
}

/// Builds the listener's QUIC configuration: presents this node's certificate and requires every
/// client to present one (read the client's id with [`peer_id_of`]).
pub fn server_config(
    keypair: &Keypair,
    transport: Arc<quinn::TransportConfig>,
) -> Result<quinn::ServerConfig, TlsError> {
    let (cert, key) = certificate(keypair)?;
    let verifier = Arc::new(ClientVerifier {
        algorithms: provider().signature_verification_algorithms,
    });
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(TlsError::Config)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![cert], key)
        .map_err(TlsError::Config)?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    // No resumption: see the module docs.
    tls.session_storage = Arc::new(NoServerSessionStorage {});
    tls.send_tls13_tickets = 0;
    tls.max_early_data_size = 0;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(tls)?));
    config.transport_config(transport);
    Ok(config)
}

/// Builds the dialer's QUIC configuration for one peer: the handshake succeeds only if the remote
/// holds the key of `expected`. This node presents its own certificate too.
///
/// Connect with [`SERVER_NAME`] as the server name. On a wrong key the connection fails with a
/// [`quinn::ConnectionError`] that names both ids; [`peer_id_mismatch`] extracts them.
pub fn client_config(
    keypair: &Keypair,
    expected: PeerId,
    transport: Arc<quinn::TransportConfig>,
) -> Result<quinn::ClientConfig, TlsError> {
    let (cert, key) = certificate(keypair)?;
    let verifier = Arc::new(ServerVerifier {
        expected,
        algorithms: provider().signature_verification_algorithms,
    });
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(TlsError::Config)?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(vec![cert], key)
        .map_err(TlsError::Config)?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    // No resumption, hence no 0-RTT: see the module docs.
    tls.resumption = rustls::client::Resumption::disabled();
    tls.enable_early_data = false;
    let mut config = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls)?));
    config.transport_config(transport);
    Ok(config)
}

/// The [`PeerId`] of the remote end of an established connection, read from its certificate.
///
/// Both sides authenticate, so this works for dialed and accepted connections alike; the
/// handshake has already checked that the remote holds this id's private key.
pub fn peer_id_of(conn: &quinn::Connection) -> Result<PeerId, TlsError> {
    let identity = conn.peer_identity().ok_or(TlsError::NoCertificate)?;
    let certs = identity
        .downcast::<Vec<CertificateDer<'static>>>()
        .map_err(|_| TlsError::NoCertificate)?;
    match certs.as_slice() {
        [cert] => peer_id_from_cert(cert),
        [] => Err(TlsError::NoCertificate),
        chain => Err(TlsError::ChainLength(chain.len())),
    }
}

/// If `err` is a dial that failed because the remote presented another key than the one dialed,
/// returns [`TlsError::PeerIdMismatch`] with both ids.
///
/// quinn keeps only the text of a TLS error, so this reads the ids back from that text. Only
/// errors raised by our own TLS stack are considered; a reason sent by the remote is never
/// believed.
pub fn peer_id_mismatch(err: &quinn::ConnectionError) -> Option<TlsError> {
    // A remote's CONNECTION_CLOSE arrives as `ConnectionClosed`; `TransportError` is local.
    let quinn::ConnectionError::TransportError(err) = err else {
        return None;
    };
    // TLS failures use the CRYPTO_ERROR codes 0x100..=0x1ff (RFC 9000 §20.1).
    if !(0x100..0x200).contains(&u64::from(err.code)) {
        return None;
    }
    mismatch_in(&err.reason)
}

/// Reads a [`TlsError::PeerIdMismatch`] back from an error text that contains its Display form.
fn mismatch_in(text: &str) -> Option<TlsError> {
    let rest = text.split_once("peer id mismatch: dialed ")?.1;
    let expected = rest.get(..PEER_ID_TEXT_LEN)?.parse().ok()?;
    let rest = rest
        .get(PEER_ID_TEXT_LEN..)?
        .strip_prefix(", remote presented ")?;
    let actual = rest.get(..PEER_ID_TEXT_LEN)?.parse().ok()?;
    Some(TlsError::PeerIdMismatch { expected, actual })
}

/// The ring provider; every config and verifier uses it.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// This node's self-signed certificate and the private key for TLS.
fn certificate(
    keypair: &Keypair,
) -> Result<(CertificateDer<'static>, PrivateKeyDer<'static>), TlsError> {
    let pkcs8 = PrivatePkcs8KeyDer::from(keypair.to_pkcs8_der());
    let key = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&pkcs8, &rcgen::PKCS_ED25519)?;
    let mut params = rcgen::CertificateParams::new(vec![SERVER_NAME.to_owned()])?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, SERVER_NAME);
    let cert = params.self_signed(&key)?;
    Ok((cert.der().clone(), PrivateKeyDer::Pkcs8(pkcs8)))
}

/// The [`PeerId`] a certificate carries: its SubjectPublicKeyInfo must be an Ed25519 key that is a
/// valid curve point.
///
/// Neither the certificate's self-signature nor its validity dates are checked. The
/// self-signature would only show that someone holding the key signed the certificate once; the
/// TLS 1.3 `CertificateVerify` signature (checked by the verifiers below over this handshake's
/// transcript) proves the peer holds the key now, which is all the identity needs. Dates carry no
/// meaning: certificates are regenerated at every start and the identity is the key, which does
/// not expire.
fn peer_id_from_cert(cert: &CertificateDer<'_>) -> Result<PeerId, TlsError> {
    let parsed = ParsedCertificate::try_from(cert).map_err(TlsError::Malformed)?;
    let spki = parsed.subject_public_key_info();
    let key = spki
        .as_ref()
        .strip_prefix(&ED25519_SPKI_PREFIX[..])
        .and_then(|key| <[u8; PEER_ID_LEN]>::try_from(key).ok())
        .ok_or(TlsError::NotEd25519)?;
    PeerId::from_bytes(key).map_err(TlsError::InvalidKey)
}

/// Reads the peer's id from its certificate list, as both verifiers do.
fn verify_single_cert(
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
) -> Result<PeerId, rustls::Error> {
    if !intermediates.is_empty() {
        return Err(TlsError::ChainLength(intermediates.len() + 1).into_rustls());
    }
    peer_id_from_cert(end_entity).map_err(TlsError::into_rustls)
}

/// Checks the handshake signature against the certificate's key. Only Ed25519 is accepted.
fn verify_signature(
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
    algorithms: &WebPkiSupportedAlgorithms,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    if dss.scheme != SignatureScheme::ED25519 {
        return Err(PeerMisbehaved::SignedHandshakeWithUnadvertisedSigScheme.into());
    }
    rustls::crypto::verify_tls13_signature(message, cert, dss, algorithms)
}

/// The dialer's check of the server: its key must be the dialed [`PeerId`].
#[derive(Debug)]
struct ServerVerifier {
    expected: PeerId,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for ServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let actual = verify_single_cert(end_entity, intermediates)?;
        if actual != self.expected {
            return Err(TlsError::PeerIdMismatch {
                expected: self.expected,
                actual,
            }
            .into_rustls());
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(PeerIncompatible::Tls13RequiredForQuic.into())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

/// The listener's check of a client: a certificate is mandatory and must carry an Ed25519 key;
/// any such key is accepted, since the listener learns who connected rather than choosing.
#[derive(Debug)]
struct ClientVerifier {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for ClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        verify_single_cert(end_entity, intermediates)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(PeerIncompatible::Tls13RequiredForQuic.into())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::time::Duration;

    use rustls::sign::CertifiedKey;

    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(10);

    fn key(seed: u8) -> Keypair {
        Keypair::from_secret_bytes([seed; 32])
    }

    fn transport() -> Arc<quinn::TransportConfig> {
        Arc::new(quinn::TransportConfig::default())
    }

    fn server(keypair: &Keypair, addr: &str) -> std::io::Result<quinn::Endpoint> {
        let config = server_config(keypair, transport()).expect("server config");
        quinn::Endpoint::server(config, addr.parse().expect("socket address"))
    }

    fn client(addr: &str) -> quinn::Endpoint {
        quinn::Endpoint::client(addr.parse().expect("socket address")).expect("client endpoint")
    }

    async fn dial(
        endpoint: &quinn::Endpoint,
        config: quinn::ClientConfig,
        to: SocketAddr,
    ) -> Result<quinn::Connection, quinn::ConnectionError> {
        let connecting = endpoint
            .connect_with(config, to, SERVER_NAME)
            .expect("connect");
        tokio::time::timeout(TIMEOUT, connecting)
            .await
            .expect("dial timed out")
    }

    /// Accepts one incoming connection and returns how its handshake ended.
    async fn accept_one(endpoint: &quinn::Endpoint) -> Result<quinn::Connection, String> {
        let incoming = tokio::time::timeout(TIMEOUT, endpoint.accept())
            .await
            .expect("accept timed out")
            .expect("endpoint open");
        tokio::time::timeout(TIMEOUT, incoming)
            .await
            .expect("handshake timed out")
            .map_err(|e| e.to_string())
    }

    /// Two endpoints on `ip` connect, learn each other's ids and echo bytes over a stream.
    async fn connect_and_echo(server_ep: quinn::Endpoint, client_addr: &str) {
        let (a, b) = (key(1), key(2));
        let server_addr = server_ep.local_addr().expect("addr");
        let server_task = tokio::spawn(async move {
            let conn = accept_one(&server_ep).await.expect("server handshake");
            let (mut send, mut recv) = conn.accept_bi().await.expect("accept stream");
            let data = recv.read_to_end(1024).await.expect("read");
            send.write_all(&data).await.expect("echo");
            send.finish().expect("finish");
            // Keep the connection open until the client has read the echo.
            let _ = conn.closed().await;
            peer_id_of(&conn).expect("client id")
        });

        let client_ep = client(client_addr);
        let config = client_config(&b, a.peer_id(), transport()).expect("client config");
        let conn = dial(&client_ep, config, server_addr)
            .await
            .expect("handshake");
        assert_eq!(peer_id_of(&conn).expect("server id"), a.peer_id());
        assert_eq!(
            conn.handshake_data()
                .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
                .and_then(|d| d.protocol),
            Some(ALPN.to_vec())
        );

        let (mut send, mut recv) = conn.open_bi().await.expect("open stream");
        send.write_all(b"hello spore").await.expect("write");
        send.finish().expect("finish");
        let echoed = recv.read_to_end(1024).await.expect("read echo");
        assert_eq!(echoed, b"hello spore");
        conn.close(0u32.into(), b"done");

        let seen = tokio::time::timeout(TIMEOUT, server_task)
            .await
            .expect("server timed out")
            .expect("server task");
        assert_eq!(seen, b.peer_id());
    }

    #[tokio::test]
    async fn mutual_auth_and_echo_over_ipv4() {
        let server_ep = server(&key(1), "127.0.0.1:0").expect("bind 127.0.0.1");
        connect_and_echo(server_ep, "127.0.0.1:0").await;
    }

    #[tokio::test]
    async fn mutual_auth_and_echo_over_ipv6() {
        let server_ep = match server(&key(1), "[::1]:0") {
            Ok(ep) => ep,
            Err(e) => {
                eprintln!("skipping: cannot bind [::1] ({e}); no IPv6 loopback here");
                return;
            }
        };
        connect_and_echo(server_ep, "[::1]:0").await;
    }

    #[tokio::test]
    async fn wrong_expected_id_fails_naming_both_ids() {
        let (a, b, c) = (key(1), key(2), key(3));
        let server_ep = server(&a, "127.0.0.1:0").expect("bind");
        let server_addr = server_ep.local_addr().expect("addr");
        let server_task = tokio::spawn(async move { accept_one(&server_ep).await });

        let client_ep = client("127.0.0.1:0");
        // Dial `a`'s address believing it is `c`.
        let config = client_config(&b, c.peer_id(), transport()).expect("client config");
        let err = dial(&client_ep, config, server_addr)
            .await
            .expect_err("handshake must fail");
        let text = err.to_string();
        assert!(text.contains(&c.peer_id().to_string()), "{text}");
        assert!(text.contains(&a.peer_id().to_string()), "{text}");

        match peer_id_mismatch(&err) {
            Some(TlsError::PeerIdMismatch { expected, actual }) => {
                assert_eq!(expected, c.peer_id());
                assert_eq!(actual, a.peer_id());
            }
            other => panic!("expected a mismatch, got {other:?} from {err}"),
        }

        // The server never gets a connection it could read application data from.
        let accepted = server_task.await.expect("server task");
        assert!(accepted.is_err(), "server accepted a connection");
    }

    #[tokio::test]
    async fn client_without_certificate_is_refused() {
        let a = key(1);
        let server_ep = server(&a, "127.0.0.1:0").expect("bind");
        let server_addr = server_ep.local_addr().expect("addr");
        let server_task = tokio::spawn(async move { accept_one(&server_ep).await });

        let mut tls = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("tls13")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ServerVerifier {
                expected: a.peer_id(),
                algorithms: provider().signature_verification_algorithms,
            }))
            .with_no_client_auth();
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let config = quinn::ClientConfig::new(Arc::new(
            QuicClientConfig::try_from(tls).expect("quic config"),
        ));
        let client_ep = client("127.0.0.1:0");
        // The client may consider its side done before the server refuses; either way the
        // connection must end without the server accepting it.
        if let Ok(conn) = dial(&client_ep, config, server_addr).await {
            let closed = tokio::time::timeout(TIMEOUT, conn.closed()).await;
            assert!(closed.is_ok(), "refused connection stayed open");
        }
        let accepted = server_task.await.expect("server task");
        let err = accepted.expect_err("server must refuse a client without certificate");
        assert!(err.contains("no certificates"), "{err}");
    }

    /// Presents `victim`'s certificate but signs the handshake with `signer`'s key, as someone
    /// who copied a certificate off the wire would.
    #[derive(Debug)]
    struct Impostor(Arc<CertifiedKey>);

    impl Impostor {
        fn new(victim: &Keypair, signer: &Keypair) -> Self {
            let (cert, _) = certificate(victim).expect("victim cert");
            let key = PrivatePkcs8KeyDer::from(signer.to_pkcs8_der());
            let key = rustls::crypto::ring::sign::any_eddsa_type(&key).expect("signing key");
            Self(Arc::new(CertifiedKey::new(vec![cert], key)))
        }
    }

    impl rustls::server::ResolvesServerCert for Impostor {
        fn resolve(&self, _: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
            Some(self.0.clone())
        }
    }

    impl rustls::client::ResolvesClientCert for Impostor {
        fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
            Some(self.0.clone())
        }

        fn has_certs(&self) -> bool {
            true
        }
    }

    #[tokio::test]
    async fn server_with_copied_certificate_is_refused() {
        let (victim, attacker, dialer) = (key(1), key(9), key(2));
        let mut tls = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("tls13")
            .with_client_cert_verifier(Arc::new(ClientVerifier {
                algorithms: provider().signature_verification_algorithms,
            }))
            .with_cert_resolver(Arc::new(Impostor::new(&victim, &attacker)));
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let config = quinn::ServerConfig::with_crypto(Arc::new(
            QuicServerConfig::try_from(tls).expect("quic config"),
        ));
        let server_ep =
            quinn::Endpoint::server(config, "127.0.0.1:0".parse().expect("addr")).expect("bind");
        let server_addr = server_ep.local_addr().expect("addr");
        let server_task = tokio::spawn(async move { accept_one(&server_ep).await });

        let client_ep = client("127.0.0.1:0");
        let config = client_config(&dialer, victim.peer_id(), transport()).expect("config");
        let err = dial(&client_ep, config, server_addr)
            .await
            .expect_err("a copied certificate must not authenticate");
        assert!(peer_id_mismatch(&err).is_none(), "{err}");
        assert!(server_task.await.expect("server task").is_err());
    }

    #[tokio::test]
    async fn client_with_copied_certificate_is_refused() {
        let (victim, attacker, listener) = (key(1), key(9), key(2));
        let server_ep = server(&listener, "127.0.0.1:0").expect("bind");
        let server_addr = server_ep.local_addr().expect("addr");
        let server_task = tokio::spawn(async move { accept_one(&server_ep).await });

        let mut tls = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("tls13")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ServerVerifier {
                expected: listener.peer_id(),
                algorithms: provider().signature_verification_algorithms,
            }))
            .with_client_cert_resolver(Arc::new(Impostor::new(&victim, &attacker)));
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let config = quinn::ClientConfig::new(Arc::new(
            QuicClientConfig::try_from(tls).expect("quic config"),
        ));
        let client_ep = client("127.0.0.1:0");
        if let Ok(conn) = dial(&client_ep, config, server_addr).await {
            let closed = tokio::time::timeout(TIMEOUT, conn.closed()).await;
            assert!(closed.is_ok(), "refused connection stayed open");
        }
        let err = server_task
            .await
            .expect("server task")
            .expect_err("a copied client certificate must not authenticate");
        assert!(err.to_lowercase().contains("signature"), "{err}");
    }

    #[test]
    fn certificate_carries_the_node_key() {
        let k = key(5);
        let (cert, _) = certificate(&k).expect("cert");
        assert_eq!(peer_id_from_cert(&cert).expect("peer id"), k.peer_id());
    }

    #[test]
    fn non_ed25519_certificates_are_refused() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("p256 key");
        let params = rcgen::CertificateParams::new(vec![SERVER_NAME.to_owned()]).expect("params");
        let cert = params.self_signed(&key).expect("cert");
        assert!(matches!(
            peer_id_from_cert(cert.der()),
            Err(TlsError::NotEd25519)
        ));
        let garbage = CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x00]);
        assert!(matches!(
            peer_id_from_cert(&garbage),
            Err(TlsError::Malformed(_))
        ));
    }

    #[test]
    fn chains_are_refused() {
        let (cert, _) = certificate(&key(1)).expect("cert");
        let err = verify_single_cert(&cert, std::slice::from_ref(&cert)).expect_err("chain");
        assert!(err.to_string().contains("2 certificates"), "{err}");
    }

    #[test]
    fn mismatch_text_round_trips() {
        let (expected, actual) = (key(1).peer_id(), key(2).peer_id());
        // What quinn keeps of the failed handshake is the rustls error's Display.
        let text = TlsError::PeerIdMismatch { expected, actual }
            .into_rustls()
            .to_string();
        match mismatch_in(&text) {
            Some(TlsError::PeerIdMismatch {
                expected: e,
                actual: a,
            }) => assert_eq!((e, a), (expected, actual)),
            other => panic!("no mismatch read back from {text}: {other:?}"),
        }
        assert!(mismatch_in("peer id mismatch: dialed nonsense").is_none());
        assert!(peer_id_mismatch(&quinn::ConnectionError::TimedOut).is_none());
    }
}

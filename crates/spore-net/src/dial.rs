//! Outbound connections: QUIC + TLS handshake that only succeeds with the expected key.

use std::net::SocketAddr;
use std::sync::Arc;

use spore_core::{Keypair, PeerId};

use crate::error::DialError;
use crate::tls;

/// Connects to `addr`, requiring the remote to prove it holds `expected`'s key.
pub(crate) async fn connect(
    endpoint: &quinn::Endpoint,
    keypair: &Keypair,
    expected: PeerId,
    addr: SocketAddr,
    transport: Arc<quinn::TransportConfig>,
) -> Result<quinn::Connection, DialError> {
    let connect_err = |reason: String| DialError::Connect { addr, reason };
    let config =
        tls::client_config(keypair, expected, transport).map_err(|e| connect_err(e.to_string()))?;
    let connecting = endpoint
        .connect_with(config, addr, tls::SERVER_NAME)
        .map_err(|e| connect_err(e.to_string()))?;
    let conn = connecting
        .await
        .map_err(|e| match tls::peer_id_mismatch(&e) {
            Some(tls::TlsError::PeerIdMismatch { expected, actual }) => DialError::PeerIdMismatch {
                expected,
                actual,
                addr,
            },
            _ => connect_err(e.to_string()),
        })?;
    // The verifier already checked this; re-derive it so a bug there cannot go unnoticed.
    match tls::peer_id_of(&conn) {
        Ok(actual) if actual == expected => Ok(conn),
        Ok(actual) => {
            conn.close(
                crate::conn::close_code::REJECTED.into(),
                b"peer id mismatch",
            );
            Err(DialError::PeerIdMismatch {
                expected,
                actual,
                addr,
            })
        }
        Err(e) => Err(connect_err(e.to_string())),
    }
}

//! Tickets: what `spore share` prints and `spore get` takes.
//!
//! A ticket names the content by its BLAKE3 root hash (so whatever is downloaded with it is
//! checked against that root, whoever serves it) and tells where to start: the sharer's PeerId,
//! the addresses it listens on, and the relays that hold a reservation for it (for a sharer
//! behind a NAT). More providers are found in the DHT and inside the swarm.
//!
//! Text form: `blob` followed by lowercase base32 (no padding) of the postcard encoding of
//! [`Ticket`] (a version byte first). Upper case is accepted when reading. Document tickets
//! (`doc…`, [`crate::api::DocTicket`]) share the form through [`to_text`] and [`from_text`].

use std::net::SocketAddr;
use std::str::FromStr;

use data_encoding::{Encoding, Specification};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use spore_core::PeerId;

/// The text every ticket starts with.
pub const PREFIX: &str = "blob";
/// The encoding version this build writes and reads, for every kind of ticket (2 added the
/// sharer's relays).
const VERSION: u8 = 2;
/// Most relays in a ticket.
pub const MAX_RELAYS: usize = 4;
/// Most addresses in a ticket.
pub const MAX_ADDRS: usize = 16;
/// Longest name in a ticket, in bytes.
pub const MAX_NAME: usize = 255;

/// What a ticket's hash names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    /// One file's bytes.
    Blob,
    /// A directory: the hash is its collection manifest's, which lists every file's.
    Collection,
}

/// A ticket: a content hash and where to find it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ticket {
    /// The content's BLAKE3 root hash.
    pub hash: [u8; 32],
    /// A file or a directory.
    pub kind: Kind,
    /// The content's size in bytes (for a directory, its files' total), as the sharer says;
    /// the download proves it.
    pub size: u64,
    /// The shared file's or directory's name, the default output name of `spore get`.
    pub name: String,
    /// The sharer.
    pub peer: PeerId,
    /// Where the sharer listens.
    pub addrs: Vec<SocketAddr>,
    /// Relays where the sharer holds a reservation, and where they listen: the way in when
    /// its own addresses cannot be dialed.
    pub relays: Vec<(PeerId, SocketAddr)>,
}

fn base32() -> Encoding {
    let mut spec = Specification::new();
    spec.symbols.push_str("abcdefghijklmnopqrstuvwxyz234567");
    spec.translate.from.push_str("ABCDEFGHIJKLMNOPQRSTUVWXYZ");
    spec.translate.to.push_str("abcdefghijklmnopqrstuvwxyz");
    #[allow(clippy::expect_used)]
    spec.encoding().expect("a valid base32 specification")
}

/// Why a ticket could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TicketError {
    /// It does not start with its kind's prefix ([`PREFIX`] for blobs).
    #[error("a ticket starts with {0:?} (copy the whole line it was printed on)")]
    Prefix(&'static str),
    /// The rest is not base32.
    #[error("the ticket is damaged: not base32 at character {0}")]
    Base32(usize),
    /// The bytes do not decode.
    #[error("the ticket is damaged or truncated: {0}")]
    Decode(String),
    /// A newer encoding.
    #[error("ticket version {0} is not supported by this spore (it reads version {VERSION})")]
    Version(u8),
    /// An older encoding.
    #[error(
        "this ticket (version {0}) was made by an older spore; this one reads version {VERSION}: \
         ask for a new ticket"
    )]
    OldVersion(u8),
    /// A field out of bounds.
    #[error("the ticket is invalid: {0}")]
    Invalid(String),
}

impl Ticket {
    /// Checks the bounds a ticket must keep (also checked when one is read).
    fn check(&self) -> Result<(), TicketError> {
        if self.addrs.len() > MAX_ADDRS {
            return Err(TicketError::Invalid(format!(
                "{} addresses, more than {MAX_ADDRS}",
                self.addrs.len()
            )));
        }
        if self.relays.len() > MAX_RELAYS {
            return Err(TicketError::Invalid(format!(
                "{} relays, more than {MAX_RELAYS}",
                self.relays.len()
            )));
        }
        if self.name.len() > MAX_NAME {
            return Err(TicketError::Invalid(format!(
                "a name of {} bytes, more than {MAX_NAME}",
                self.name.len()
            )));
        }
        Ok(())
    }
}

/// `prefix` followed by lowercase base32 of the postcard encoding of (version, `value`).
pub(crate) fn to_text<T: Serialize>(prefix: &str, value: &T) -> Result<String, std::fmt::Error> {
    let bytes = postcard::to_allocvec(&(VERSION, value)).map_err(|_| std::fmt::Error)?;
    Ok(format!("{prefix}{}", base32().encode(&bytes)))
}

/// Reads what [`to_text`] wrote (surrounding whitespace and upper case allowed): the prefix,
/// base32, the version, and exactly one `T` with nothing after it.
pub(crate) fn from_text<T: DeserializeOwned>(
    prefix: &'static str,
    s: &str,
) -> Result<T, TicketError> {
    let s = s.trim();
    let body = s
        .strip_prefix(prefix)
        .or_else(|| s.strip_prefix(&prefix.to_uppercase()))
        .ok_or(TicketError::Prefix(prefix))?;
    let bytes = base32()
        .decode(body.as_bytes())
        .map_err(|e| TicketError::Base32(e.position + prefix.len()))?;
    let version = *bytes.first().ok_or(TicketError::Decode("empty".into()))?;
    if version < VERSION {
        return Err(TicketError::OldVersion(version));
    }
    if version != VERSION {
        return Err(TicketError::Version(version));
    }
    let ((_, value), rest): ((u8, T), _) =
        postcard::take_from_bytes(&bytes).map_err(|e| TicketError::Decode(e.to_string()))?;
    if !rest.is_empty() {
        return Err(TicketError::Decode(format!(
            "{} bytes after the end",
            rest.len()
        )));
    }
    Ok(value)
}

impl std::fmt::Display for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&to_text(PREFIX, self)?)
    }
}

impl FromStr for Ticket {
    type Err = TicketError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ticket: Ticket = from_text(PREFIX, s)?;
        ticket.check()?;
        Ok(ticket)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ticket() -> Ticket {
        let peer = spore_core::Keypair::generate(&mut rand_core::OsRng).peer_id();
        Ticket {
            hash: [7; 32],
            kind: Kind::Collection,
            size: 123_456,
            name: "holiday photos".into(),
            peer,
            addrs: vec![
                "127.0.0.1:7070".parse().unwrap(),
                "[::1]:7070".parse().unwrap(),
            ],
            relays: vec![(peer, "127.0.0.1:7071".parse().unwrap())],
        }
    }

    #[test]
    fn round_trips_and_reads_upper_case() {
        let t = ticket();
        let text = t.to_string();
        assert!(text.starts_with(PREFIX));
        assert_eq!(text.parse::<Ticket>().unwrap(), t);
        assert_eq!(text.to_uppercase().parse::<Ticket>().unwrap(), t);
        assert_eq!(format!("  {text}\n").parse::<Ticket>().unwrap(), t);
    }

    #[test]
    fn damaged_tickets_say_what_is_wrong() {
        let text = ticket().to_string();
        assert_eq!("x".parse::<Ticket>(), Err(TicketError::Prefix(PREFIX)));
        assert!(matches!(
            format!("{PREFIX}!!").parse::<Ticket>(),
            Err(TicketError::Base32(_))
        ));
        let truncated = &text[..text.len() - 10];
        assert!(truncated.parse::<Ticket>().is_err());
        let mut bytes = postcard::to_allocvec(&(VERSION, ticket())).unwrap();
        bytes[0] = 9;
        let newer = format!("{PREFIX}{}", base32().encode(&bytes));
        assert_eq!(newer.parse::<Ticket>(), Err(TicketError::Version(9)));
        let mut many = ticket();
        many.addrs = vec!["127.0.0.1:1".parse().unwrap(); MAX_ADDRS + 1];
        assert!(matches!(
            many.to_string().parse::<Ticket>(),
            Err(TicketError::Invalid(_))
        ));
        let mut many = ticket();
        many.relays = vec![many.relays[0]; MAX_RELAYS + 1];
        assert!(matches!(
            many.to_string().parse::<Ticket>(),
            Err(TicketError::Invalid(_))
        ));
    }
}

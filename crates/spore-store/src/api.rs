//! The files through which local clients find and authenticate to a running node's HTTP API.

use std::net::SocketAddr;

use rand_core::{OsRng, RngCore};

use crate::fsutil::{Overwrite, hex_decode, hex_encode, read_bounded, write_atomic};
use crate::{DataDir, StoreError};

const TOKEN_WHAT: &str = "API token";
const ADDR_WHAT: &str = "API address file";
const SMALL_FILE_MAX: u64 = 1024;

impl DataDir {
    /// The bearer token of the local HTTP API: 32 random bytes as 64 hex digits, read from
    /// `api.token`, which is created (mode 0600, from the OS RNG) if missing. The same token is
    /// returned on every call until the file is removed. Refused if other users can read it.
    pub fn api_token(&self) -> Result<String, StoreError> {
        if let Some(token) = self.read_api_token()? {
            return Ok(token);
        }
        let mut bytes = [0u8; 32];
        OsRng.fill_bytes(&mut bytes);
        let token = hex_encode(&bytes);
        let path = self.api_token_path();
        if write_atomic(
            &path,
            TOKEN_WHAT,
            format!("{token}\n").as_bytes(),
            Overwrite::Never,
        )? {
            return Ok(token);
        }
        // Someone else created it meanwhile; theirs is the token.
        self.read_api_token()?.ok_or_else(|| {
            StoreError::corrupt(TOKEN_WHAT, &path, "it vanished while being created")
        })
    }

    fn read_api_token(&self) -> Result<Option<String>, StoreError> {
        let path = self.api_token_path();
        let Some(bytes) = read_bounded(&path, TOKEN_WHAT, SMALL_FILE_MAX, true)? else {
            return Ok(None);
        };
        let text = std::str::from_utf8(&bytes)
            .map_err(|_| StoreError::corrupt(TOKEN_WHAT, &path, "it is not text"))?
            .trim();
        hex_decode::<32>(text).map_err(|why| StoreError::corrupt(TOKEN_WHAT, &path, why))?;
        Ok(Some(text.to_ascii_lowercase()))
    }

    /// Records where the running node's HTTP API listens, in `api.addr` (replacing any old one).
    pub fn write_api_addr(&self, addr: SocketAddr) -> Result<(), StoreError> {
        let path = self.api_addr_path();
        write_atomic(
            &path,
            ADDR_WHAT,
            format!("{addr}\n").as_bytes(),
            Overwrite::Replace,
        )?;
        Ok(())
    }

    /// Where the running node's HTTP API listens, or `None` if no node has recorded one (or it
    /// removed it on shutdown). A node that crashed leaves a stale address: callers should
    /// expect the connection to fail.
    pub fn read_api_addr(&self) -> Result<Option<SocketAddr>, StoreError> {
        let path = self.api_addr_path();
        let Some(bytes) = read_bounded(&path, ADDR_WHAT, SMALL_FILE_MAX, false)? else {
            return Ok(None);
        };
        let text = std::str::from_utf8(&bytes)
            .map_err(|_| StoreError::corrupt(ADDR_WHAT, &path, "it is not text"))?
            .trim();
        text.parse().map(Some).map_err(|_| {
            StoreError::corrupt(
                ADDR_WHAT,
                &path,
                format!("{text:?} is not an address such as 127.0.0.1:7272"),
            )
        })
    }

    /// Removes `api.addr` (on shutdown). Not an error if it is already gone.
    pub fn remove_api_addr(&self) -> Result<(), StoreError> {
        let path = self.api_addr_path();
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StoreError::io("remove", ADDR_WHAT, &path)(e)),
        }
    }
}

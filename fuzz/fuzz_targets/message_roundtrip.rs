//! Builds arbitrary [`Message`] values (within and beyond the `Hello` bounds), encodes them and
//! checks the decoder's verdict: valid messages come back unchanged, whether fed whole or split,
//! and out-of-bounds ones are rejected with [`WireError::Bounds`].

#![no_main]

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use spore_core::ping;
use spore_core::pow::Stamp;
use spore_core::wire::{Capabilities, FrameDecoder, Hello, Message, WireError, encode_frame};

#[derive(Debug, Arbitrary)]
enum Addr {
    V4([u8; 4], u16),
    V6([u8; 16], u16),
}

impl From<Addr> for SocketAddr {
    fn from(a: Addr) -> Self {
        // Built with `SocketAddr::new`: the wire carries no IPv6 flow info or scope id.
        match a {
            Addr::V4(ip, port) => SocketAddr::new(Ipv4Addr::from(ip).into(), port),
            Addr::V6(ip, port) => SocketAddr::new(Ipv6Addr::from(ip).into(), port),
        }
    }
}

#[derive(Debug, Arbitrary)]
enum Input {
    Hello {
        versions: Vec<u16>,
        capabilities: u32,
        listen_addrs: Vec<Addr>,
        observed_addr: Addr,
        stamp: u64,
        agent: String,
    },
    Ping(u64),
    Pong(u64),
}

#[derive(Debug, Arbitrary)]
struct Case {
    input: Input,
    split: u16,
}

fuzz_target!(|case: Case| {
    let msg: Message = match case.input {
        Input::Hello {
            versions,
            capabilities,
            listen_addrs,
            observed_addr,
            stamp,
            agent,
        } => Hello {
            versions,
            capabilities: Capabilities(capabilities),
            listen_addrs: listen_addrs.into_iter().map(Into::into).collect(),
            observed_addr: observed_addr.into(),
            stamp: Stamp { nonce: stamp },
            agent,
        }
        .into(),
        Input::Ping(nonce) => ping::Message::Ping { nonce }.into(),
        Input::Pong(nonce) => ping::Message::Pong { nonce }.into(),
    };
    // What a receiver would reject is refused by the encoder with the same error.
    let frame = match (msg.validate(), encode_frame(&msg)) {
        (Ok(()), Ok(frame)) => frame,
        (Err(expected @ WireError::Bounds { .. }), Err(got)) => {
            assert_eq!(got, expected);
            return;
        }
        (valid, encoded) => panic!("validate: {valid:?}, encoded: {encoded:?}"),
    };
    let split = usize::from(case.split) % (frame.len() + 1);
    let mut decoder = FrameDecoder::new();
    decoder.extend(&frame[..split]);
    if split < frame.len() {
        assert_eq!(
            decoder.next_message(),
            Ok(None),
            "a partial frame is not a message"
        );
    }
    decoder.extend(&frame[split..]);
    assert_eq!(decoder.next_message(), Ok(Some(msg)));
    assert_eq!(decoder.finish(), Ok(()));
});

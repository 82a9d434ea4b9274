//! NAT traversal decisions, sans-IO: telling STUN from QUIC on the shared socket, answering
//! STUN Binding requests ([`stun`]), and finding our reflexive addresses and the NAT's mapping
//! and filtering behaviour ([`probe`]), what relays admit ([`relay`]), and when to punch a hole
//! to move a relayed connection to a direct path ([`punch`]), and a TURN client for a relayed
//! address on a standard TURN server ([`turn`]). The runtime owns the sockets and the clock.

pub mod probe;
pub mod punch;
pub mod relay;
pub mod stun;
pub mod turn;

pub use probe::{Filtering, Mapping, NatReport, Probe, ProbeConfig, ProbeEvent};

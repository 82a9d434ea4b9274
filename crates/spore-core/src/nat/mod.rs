//! NAT traversal decisions, sans-IO: telling STUN from QUIC on the shared socket, answering
//! STUN Binding requests ([`stun`]), and finding our reflexive addresses and the NAT's mapping
//! and filtering behaviour ([`probe`]), and what relays admit ([`relay`]). The runtime owns the
//! sockets and the clock.

pub mod probe;
pub mod relay;
pub mod stun;

pub use probe::{Filtering, Mapping, NatReport, Probe, ProbeConfig, ProbeEvent};

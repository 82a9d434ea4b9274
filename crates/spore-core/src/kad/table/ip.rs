//! The address classes the routing table's eclipse limits count.
//!
//! Addresses are compared in canonical form: an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) is the
//! IPv4 address `a.b.c.d`, otherwise a dual-stack attacker could count each of its IPv4 hosts
//! twice. Loopback addresses are exempt (see the module docs of [`super`]).

use std::net::IpAddr;

use super::Config;

/// The address the limits count for `ip`, or `None` if `ip` is exempt from them (loopback).
pub(crate) fn limited(ip: IpAddr) -> Option<IpAddr> {
    let ip = ip.to_canonical();
    (!ip.is_loopback()).then_some(ip)
}

/// The prefix limited per bucket: an IPv4 /24 or an IPv6 /48.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum BucketPrefix {
    V4([u8; 3]),
    V6([u8; 6]),
}

/// The prefix limited across the whole table: an IPv4 /16 or an IPv6 /32.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum TablePrefix {
    V4([u8; 2]),
    V6([u8; 4]),
}

impl BucketPrefix {
    /// The prefix of a canonical address.
    pub(super) fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => {
                let [a, b, c, _] = v4.octets();
                Self::V4([a, b, c])
            }
            IpAddr::V6(v6) => {
                let o = v6.octets();
                Self::V6([o[0], o[1], o[2], o[3], o[4], o[5]])
            }
        }
    }

    /// How many entries of one bucket may share this prefix.
    pub(super) fn limit(&self, config: &Config) -> usize {
        match self {
            Self::V4(_) => config.max_per_ipv4_24_in_bucket,
            Self::V6(_) => config.max_per_ipv6_48_in_bucket,
        }
    }
}

impl TablePrefix {
    /// The prefix of a canonical address.
    pub(crate) fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => {
                let [a, b, _, _] = v4.octets();
                Self::V4([a, b])
            }
            IpAddr::V6(v6) => {
                let o = v6.octets();
                Self::V6([o[0], o[1], o[2], o[3]])
            }
        }
    }

    /// How many entries of the whole table may share this prefix.
    pub(super) fn limit(&self, config: &Config) -> usize {
        match self {
            Self::V4(_) => config.max_per_ipv4_16_in_table,
            Self::V6(_) => config.max_per_ipv6_32_in_table,
        }
    }
}

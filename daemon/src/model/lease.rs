//! A DHCP lease: decided by `dhcp`, kept by `store`.

use std::net::Ipv4Addr;

use super::MacAddr;

/// A client's hold on an address until `expires`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lease {
    pub ip: Ipv4Addr,
    pub mac: MacAddr,
    /// Unix seconds.
    pub expires: u64,
}

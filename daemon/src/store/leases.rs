//! DHCP leases: one record per address (the holder's MAC and the expiry), mirrored in memory
//! by address and by MAC for the DHCP loop's per-packet questions.

use super::{Store, StoreError, lock};
use crate::model::{Lease, MacAddr};

/// Leases in memory: by address, and each client's address. An entry holds the MAC and the
/// expiry as bytes (18 bytes with its key, alignment 1, where a [`Lease`] beside its key takes
/// 32: in full mode every discovered machine has one; issue #16).
#[derive(Default)]
pub(super) struct LeaseView {
    by_ip: std::collections::HashMap<std::net::Ipv4Addr, Held>,
    by_mac: std::collections::HashMap<MacAddr, std::net::Ipv4Addr>,
}

#[derive(Clone, Copy)]
struct Held {
    mac: MacAddr,
    expires: [u8; 8],
}

impl LeaseView {
    pub(super) fn insert(&mut self, lease: Lease) {
        if let Some(old) = self.by_mac.insert(lease.mac, lease.ip)
            && old != lease.ip
        {
            self.by_ip.remove(&old);
        }
        let held = Held {
            mac: lease.mac,
            expires: lease.expires.to_ne_bytes(),
        };
        if let Some(previous) = self.by_ip.insert(lease.ip, held)
            && previous.mac != lease.mac
            && self.by_mac.get(&previous.mac) == Some(&lease.ip)
        {
            self.by_mac.remove(&previous.mac);
        }
    }

    pub(super) fn remove(&mut self, ip: std::net::Ipv4Addr) {
        if let Some(l) = self.by_ip.remove(&ip)
            && self.by_mac.get(&l.mac) == Some(&ip)
        {
            self.by_mac.remove(&l.mac);
        }
    }

    /// The lease on `ip`.
    pub(super) fn at(&self, ip: std::net::Ipv4Addr) -> Option<Lease> {
        self.by_ip.get(&ip).map(|h| Lease {
            ip,
            mac: h.mac,
            expires: u64::from_ne_bytes(h.expires),
        })
    }

    /// The address `mac` holds a lease on.
    pub(super) fn address_of(&self, mac: MacAddr) -> Option<std::net::Ipv4Addr> {
        self.by_mac.get(&mac).copied()
    }

    /// `mac`'s lease.
    pub(super) fn of(&self, mac: MacAddr) -> Option<Lease> {
        self.at(self.address_of(mac)?)
    }
}

impl Store {
    /// Stores a lease, replacing the client's previous one (a client holds one). Visible at
    /// once; written and durable by the next [`Store::flush`] (the DHCP loop flushes before it
    /// sends the ACK). Returns whether this is a new lease rather than the renewal of an
    /// unexpired one on the same address.
    pub fn stage_lease(&self, lease: Lease, now: u64) -> Result<bool, StoreError> {
        let mut view = self.lease_view.write().unwrap_or_else(|e| e.into_inner());
        let renewal = view
            .of(lease.mac)
            .is_some_and(|old| old.ip == lease.ip && old.expires > now);
        let mut staged = lock(&self.staged);
        if let Some(old) = view.address_of(lease.mac)
            && old != lease.ip
        {
            staged.leases.remove(&old.octets());
        }
        let mut value = lease.mac.octets().to_vec();
        value.extend_from_slice(&lease.expires.to_be_bytes());
        staged.leases.insert(&lease.ip.octets(), value);
        staged.lease_ops += 1;
        view.insert(lease);
        Ok(!renewal)
    }

    /// Ends a client's lease on `ip`, if it holds it (written and durable by the next
    /// [`Store::flush`]).
    pub fn stage_release(&self, mac: MacAddr, ip: std::net::Ipv4Addr) -> bool {
        let mut view = self.lease_view.write().unwrap_or_else(|e| e.into_inner());
        if view.at(ip).is_none_or(|l| l.mac != mac) {
            return false;
        }
        let mut staged = lock(&self.staged);
        staged.leases.remove(&ip.octets());
        staged.lease_ops += 1;
        view.remove(ip);
        true
    }

    pub fn lease_of(&self, mac: MacAddr) -> Option<Lease> {
        let view = self.lease_view.read().unwrap_or_else(|e| e.into_inner());
        view.of(mac)
    }

    pub fn lease_at(&self, ip: std::net::Ipv4Addr) -> Option<Lease> {
        self.lease_view
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .at(ip)
    }
}

//! Raw bytes through the whole DHCP decision path as the server runs it (decode, client facts,
//! decide, encode) against a fixed snapshot, without sockets: for the cargo-fuzz target in
//! `fuzz/` and the mutation test that CI runs.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use dhcproto::{Encodable, Encoder};

use super::boot::client_facts;
use super::decide::{MemorySnapshot, Reservation, decide};
use super::settings::{BootFiles, Mode, Settings, UnknownClients};
use crate::model::{Lease, MacAddr};

/// The reply bytes the server would send for `bytes`, in full (`proxy == false`) or proxy
/// mode; `None` when it would send nothing.
pub fn decide_bytes(bytes: &[u8], proxy: bool) -> Option<Vec<u8>> {
    let msg = super::parse(bytes).ok()?;
    let facts = client_facts(&msg).ok()?;
    let mut reservations = HashMap::new();
    reservations.insert(
        MacAddr::new([0x52, 0x54, 0, 0, 0, 1]),
        Reservation {
            ip: Ipv4Addr::new(10, 0, 0, 21),
            boot_file: None,
        },
    );
    let snap = MemorySnapshot {
        reservations,
        leases: vec![Lease {
            ip: Ipv4Addr::new(10, 0, 0, 100),
            mac: MacAddr::new([0x52, 0x54, 0, 0, 0, 2]),
            expires: 2_000_000,
        }],
    };
    let settings = Settings {
        mode: if proxy { Mode::Proxy } else { Mode::Full },
        server_ip: Ipv4Addr::new(10, 0, 0, 1),
        subnet: "10.0.0.0/24".parse().expect("valid"),
        router: Some(Ipv4Addr::new(10, 0, 0, 254)),
        dns_servers: vec![Ipv4Addr::new(10, 0, 0, 1)],
        domain: "lacave".into(),
        lease_time: 600,
        pool: Some((Ipv4Addr::new(10, 0, 0, 100), Ipv4Addr::new(10, 0, 0, 102))),
        unknown_clients: UnknownClients::Discover,
        files: BootFiles::default(),
        relays: vec![Ipv4Addr::new(10, 9, 0, 1)],
    };
    let decision = decide(&msg, &facts, &snap, &settings, 1_000_000);
    let (reply, _) = decision.reply?;
    let mut out = Vec::new();
    reply.encode(&mut Encoder::new(&mut out)).ok()?;
    Some(out)
}

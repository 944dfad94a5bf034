//! The whole DHCP decision: given a request, what the registry and the leases say about its
//! client, and the settings, which reply (if any) goes where, and which lease changes. Pure:
//! the caller persists lease changes before sending the reply.

use std::net::Ipv4Addr;

use dhcproto::v4::{DhcpOption, Flags, Message, MessageType, Opcode, OptionCode, UnknownOption};

use super::boot::{BootTarget, ClientFacts, boot_target};
use super::settings::{Mode, Settings, UnknownClients};
use crate::model::{Lease, MacAddr};

/// A registered node's address and boot override.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reservation {
    pub ip: Ipv4Addr,
    pub boot_file: Option<String>,
}

/// What the caller knows: the registry and the leases, as of this packet.
pub trait Snapshot {
    /// The reservation of a registered node with this MAC.
    fn reservation(&self, mac: MacAddr) -> Option<Reservation>;
    /// Whether some registered node holds this address.
    fn is_reserved(&self, ip: Ipv4Addr) -> bool;
    fn lease_of(&self, mac: MacAddr) -> Option<Lease>;
    fn lease_at(&self, ip: Ipv4Addr) -> Option<Lease>;
    /// Where to start looking for a free pool address (round-robin allocation keeps a busy
    /// pool from being scanned from its start for every client).
    fn pool_cursor(&self) -> Option<Ipv4Addr> {
        None
    }
}

/// A snapshot held in memory: for tests and the fuzz entry point.
#[derive(Clone, Debug, Default)]
pub struct MemorySnapshot {
    pub reservations: std::collections::HashMap<MacAddr, Reservation>,
    pub leases: Vec<Lease>,
}

impl Snapshot for MemorySnapshot {
    fn reservation(&self, mac: MacAddr) -> Option<Reservation> {
        self.reservations.get(&mac).cloned()
    }
    fn is_reserved(&self, ip: Ipv4Addr) -> bool {
        self.reservations.values().any(|r| r.ip == ip)
    }
    fn lease_of(&self, mac: MacAddr) -> Option<Lease> {
        self.leases.iter().find(|l| l.mac == mac).copied()
    }
    fn lease_at(&self, ip: Ipv4Addr) -> Option<Lease> {
        self.leases.iter().find(|l| l.ip == ip).copied()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Destination {
    /// To the relay agent's address, port 67.
    Relay(Ipv4Addr),
    /// To the client's own address, port 68.
    Unicast(Ipv4Addr),
    /// Broadcast on the interface, port 68.
    Broadcast,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaseChange {
    Bind(Lease),
    Release {
        mac: MacAddr,
        ip: Ipv4Addr,
    },
    /// The client found the address in use: keep it out of the pool until `until`.
    Decline {
        ip: Ipv4Addr,
        until: u64,
    },
}

#[derive(Debug, PartialEq)]
pub struct Decision {
    pub reply: Option<(Message, Destination)>,
    pub lease: Option<LeaseChange>,
    /// An unregistered machine to record as `discovered`.
    pub discovered: bool,
    /// Why there is no reply, for the log.
    pub note: &'static str,
}

impl Decision {
    fn none(note: &'static str) -> Decision {
        Decision {
            reply: None,
            lease: None,
            discovered: false,
            note,
        }
    }
}

fn is_free<S: Snapshot>(s: &Settings, snap: &S, ip: Ipv4Addr, mac: MacAddr, now: u64) -> bool {
    ip != s.server_ip
        && !snap.is_reserved(ip)
        && Some(ip) != s.router
        && s.subnet.contains(&ip)
        && ip != s.subnet.network()
        && ip != s.subnet.broadcast()
        && snap
            .lease_at(ip)
            .is_none_or(|l| l.mac == mac || l.expires <= now)
}

/// The address this client should have in full mode, if any.
fn address_for<S: Snapshot>(
    s: &Settings,
    snap: &S,
    facts: &ClientFacts,
    reservation: Option<&Reservation>,
    now: u64,
) -> Option<Ipv4Addr> {
    if let Some(r) = reservation {
        return Some(r.ip);
    }
    if s.unknown_clients == UnknownClients::Ignore {
        return None;
    }
    let (start, end) = s.pool?;
    if let Some(l) = snap.lease_of(facts.mac)
        && l.expires > now
        && is_free(s, snap, l.ip, facts.mac, now)
        && (start..=end).contains(&l.ip)
    {
        return Some(l.ip);
    }
    let (first, last) = (u32::from(start), u32::from(end));
    let from = snap
        .pool_cursor()
        .map(u32::from)
        .filter(|c| (first..=last).contains(c))
        .unwrap_or(first);
    (from..=last)
        .chain(first..from)
        .map(Ipv4Addr::from)
        .find(|ip| is_free(s, snap, *ip, facts.mac, now))
}

fn requested_ip(req: &Message) -> Option<Ipv4Addr> {
    match req.opts().get(OptionCode::RequestedIpAddress) {
        Some(DhcpOption::RequestedIpAddress(ip)) => Some(*ip),
        _ if !req.ciaddr().is_unspecified() => Some(req.ciaddr()),
        _ => None,
    }
}

/// Decides what `req` gets. `facts` come from [`super::boot::client_facts`].
pub fn decide<S: Snapshot>(
    req: &Message,
    facts: &ClientFacts,
    snap: &S,
    s: &Settings,
    now: u64,
) -> Decision {
    if req.opcode() != Opcode::BootRequest {
        return Decision::none("not a request");
    }
    let Some(kind) = req.opts().msg_type() else {
        return Decision::none("no message type (BOOTP is not served)");
    };
    // A reply goes to `giaddr`: answering any value would let a spoofed packet aim replies at
    // a third host. Only relays on the nodes' subnet, or listed, are answered.
    let giaddr = req.giaddr();
    if !giaddr.is_unspecified() && !s.subnet.contains(&giaddr) && !s.relays.contains(&giaddr) {
        return Decision::none("relay agent not allowed (dhcp.relays)");
    }
    let reservation = snap.reservation(facts.mac);
    let known = reservation.is_some();
    let discovered = !known && s.unknown_clients == UnknownClients::Discover;
    if !known && s.unknown_clients == UnknownClients::Ignore {
        return Decision::none("unknown client ignored (unknown_clients = \"ignore\")");
    }
    // A REQUEST naming another server is that server's business.
    if let Some(DhcpOption::ServerIdentifier(id)) = req.opts().get(OptionCode::ServerIdentifier)
        && *id != s.server_ip
    {
        return Decision {
            discovered,
            ..Decision::none("the client chose another server")
        };
    }
    let boot = boot_target(
        facts,
        s.server_ip,
        &s.files,
        reservation.as_ref().and_then(|r| r.boot_file.as_deref()),
    );
    match s.mode {
        Mode::Proxy => {
            if !(facts.is_pxe || facts.is_ipxe) || boot == BootTarget::None {
                return Decision {
                    discovered,
                    ..Decision::none("proxy mode answers PXE clients only")
                };
            }
            let reply_type = match kind {
                MessageType::Discover => MessageType::Offer,
                MessageType::Request | MessageType::Inform => MessageType::Ack,
                _ => return Decision::none("nothing to answer in proxy mode"),
            };
            let reply = build(req, s, reply_type, Ipv4Addr::UNSPECIFIED, &boot, false);
            Decision {
                reply: Some((reply, destination(req, reply_type))),
                lease: None,
                discovered,
                note: "",
            }
        }
        Mode::Full => match kind {
            MessageType::Discover => match address_for(s, snap, facts, reservation.as_ref(), now) {
                Some(ip) => {
                    let reply = build(req, s, MessageType::Offer, ip, &boot, true);
                    Decision {
                        reply: Some((reply, destination(req, MessageType::Offer))),
                        lease: None,
                        discovered,
                        note: "",
                    }
                }
                None => Decision {
                    discovered,
                    ..Decision::none("no address for this client (no pool, or pool exhausted)")
                },
            },
            MessageType::Request => {
                let wanted = requested_ip(req);
                let ours = address_for(s, snap, facts, reservation.as_ref(), now);
                match (wanted, ours) {
                    (Some(w), Some(o)) if w == o => {
                        let reply = build(req, s, MessageType::Ack, o, &boot, true);
                        Decision {
                            reply: Some((reply, destination(req, MessageType::Ack))),
                            lease: Some(LeaseChange::Bind(Lease {
                                ip: o,
                                mac: facts.mac,
                                expires: now + u64::from(s.lease_time),
                            })),
                            discovered,
                            note: "",
                        }
                    }
                    _ => {
                        let reply = nak(req, s);
                        Decision {
                            reply: Some((reply, destination(req, MessageType::Nak))),
                            lease: None,
                            discovered,
                            note: "the requested address is not this client's",
                        }
                    }
                }
            }
            MessageType::Release => match snap.lease_of(facts.mac) {
                Some(l) if l.ip == req.ciaddr() => Decision {
                    lease: Some(LeaseChange::Release {
                        mac: facts.mac,
                        ip: l.ip,
                    }),
                    ..Decision::none("released")
                },
                _ => Decision::none("release of an address this client does not hold"),
            },
            // Only the client holding the address (its lease, the offer made to it, or its
            // reservation) may say it is in use: anyone else could erase a live lease.
            MessageType::Decline => match requested_ip(req) {
                Some(ip)
                    if s.subnet.contains(&ip)
                        && (snap.lease_at(ip).is_some_and(|l| l.mac == facts.mac)
                            || snap.reservation(facts.mac).is_some_and(|r| r.ip == ip)) =>
                {
                    Decision {
                        lease: Some(LeaseChange::Decline {
                            ip,
                            until: now + u64::from(s.lease_time),
                        }),
                        ..Decision::none("declined: the address is in use on the network")
                    }
                }
                Some(_) => Decision::none("decline from a client that does not hold the address"),
                None => Decision::none("decline without an address"),
            },
            MessageType::Inform if !req.ciaddr().is_unspecified() => {
                let reply = build(req, s, MessageType::Ack, Ipv4Addr::UNSPECIFIED, &boot, true);
                Decision {
                    reply: Some((reply, destination(req, MessageType::Ack))),
                    lease: None,
                    discovered,
                    note: "",
                }
            }
            _ => Decision::none("message type not served"),
        },
    }
}

fn destination(req: &Message, kind: MessageType) -> Destination {
    if !req.giaddr().is_unspecified() {
        Destination::Relay(req.giaddr())
    } else if !req.ciaddr().is_unspecified() && kind != MessageType::Nak {
        Destination::Unicast(req.ciaddr())
    } else {
        Destination::Broadcast
    }
}

fn base_reply(req: &Message, s: &Settings, kind: MessageType) -> Message {
    let mut m = Message::default();
    m.set_opcode(Opcode::BootReply)
        .set_xid(req.xid())
        .set_flags(req.flags())
        .set_giaddr(req.giaddr())
        .set_chaddr(req.chaddr());
    m.opts_mut().insert(DhcpOption::MessageType(kind));
    m.opts_mut()
        .insert(DhcpOption::ServerIdentifier(s.server_ip));
    m
}

fn nak(req: &Message, s: &Settings) -> Message {
    let mut m = base_reply(req, s, MessageType::Nak);
    // A NAK is broadcast when there is no relay: the client's address may be wrong.
    m.set_flags(Flags::default().set_broadcast());
    m
}

/// The `file` field holds 128 bytes with its terminating NUL: a longer name is left out (and
/// logged) rather than cut, which would send the client to the wrong file.
fn set_file(m: &mut Message, file: &str) {
    if file.len() < 128 {
        m.set_fname_str(file);
    } else {
        tracing::warn!(
            file,
            "boot file name longer than 127 bytes left out of the reply"
        );
    }
}

fn build(
    req: &Message,
    s: &Settings,
    kind: MessageType,
    yiaddr: Ipv4Addr,
    boot: &BootTarget,
    with_address_options: bool,
) -> Message {
    let mut m = base_reply(req, s, kind);
    m.set_yiaddr(yiaddr).set_ciaddr(req.ciaddr());
    let opts = m.opts_mut();
    if with_address_options {
        if !yiaddr.is_unspecified() {
            opts.insert(DhcpOption::AddressLeaseTime(s.lease_time));
            opts.insert(DhcpOption::Renewal(s.lease_time / 2));
            opts.insert(DhcpOption::Rebinding(s.lease_time / 8 * 7));
        }
        opts.insert(DhcpOption::SubnetMask(s.subnet.netmask()));
        if let Some(r) = s.router {
            opts.insert(DhcpOption::Router(vec![r]));
        }
        if !s.dns_servers.is_empty() {
            opts.insert(DhcpOption::DomainNameServer(s.dns_servers.clone()));
        }
        if !s.domain.is_empty() {
            opts.insert(DhcpOption::DomainName(s.domain.clone()));
        }
    }
    match boot {
        BootTarget::Tftp(file) => {
            m.set_siaddr(s.server_ip);
            set_file(&mut m, file);
            if s.mode == Mode::Proxy {
                m.opts_mut()
                    .insert(DhcpOption::ClassIdentifier(b"PXEClient".to_vec()));
            }
        }
        BootTarget::Http(url) => {
            m.set_siaddr(s.server_ip);
            set_file(&mut m, url);
            m.opts_mut()
                .insert(DhcpOption::ClassIdentifier(b"HTTPClient".to_vec()));
        }
        BootTarget::Ipxe(url) => {
            m.set_siaddr(s.server_ip);
            set_file(&mut m, url);
            // iPXE's encapsulated options: 176 (no-pxedhcp) = 1, so that it does not wait
            // about 3 s for ProxyDHCP offers.
            m.opts_mut().insert(DhcpOption::Unknown(UnknownOption::new(
                OptionCode::Unknown(175),
                vec![176, 1, 1],
            )));
            if s.mode == Mode::Proxy {
                m.opts_mut()
                    .insert(DhcpOption::ClassIdentifier(b"PXEClient".to_vec()));
            }
        }
        BootTarget::None => {}
    }
    m
}

#[cfg(test)]
mod tests;

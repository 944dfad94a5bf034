use dhcproto::v4::{Architecture, Message};

use super::*;
use crate::dhcp::boot::client_facts;
use crate::dhcp::settings::BootFiles;

const NOW: u64 = 1_000_000;

type Snap = MemorySnapshot;

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn mac(last: u8) -> MacAddr {
    MacAddr::new([0x52, 0x54, 0, 0, 0, last])
}

fn settings(mode: Mode) -> Settings {
    Settings {
        mode,
        server_ip: ip("192.168.1.10"),
        subnet: "192.168.1.0/24".parse().unwrap(),
        router: Some(ip("192.168.1.1")),
        dns_servers: vec![ip("192.168.1.10")],
        domain: "lacave".into(),
        lease_time: 3600,
        pool: Some((ip("192.168.1.100"), ip("192.168.1.102"))),
        unknown_clients: UnknownClients::Discover,
        files: BootFiles::default(),
        relays: vec![ip("10.20.0.1")],
    }
}

fn packet(kind: MessageType, m: MacAddr, arch: Option<u16>) -> Message {
    let mut msg = Message::new(
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        &m.octets(),
    );
    msg.opts_mut().insert(DhcpOption::MessageType(kind));
    if let Some(a) = arch {
        msg.opts_mut()
            .insert(DhcpOption::ClientSystemArchitecture(Architecture::from(a)));
        msg.opts_mut().insert(DhcpOption::ClassIdentifier(
            format!("PXEClient:Arch:{a:05}").into_bytes(),
        ));
    }
    msg
}

fn run(msg: &Message, snap: &Snap, s: &Settings) -> Decision {
    decide(msg, &client_facts(msg).unwrap(), snap, s, NOW)
}

fn reply(d: &Decision) -> &Message {
    &d.reply.as_ref().expect("a reply").0
}

fn opt(m: &Message, code: OptionCode) -> Option<&DhcpOption> {
    m.opts().get(code)
}

fn registered() -> Snap {
    let mut snap = Snap::default();
    snap.reservations.insert(
        mac(1),
        Reservation {
            ip: ip("192.168.1.21"),
            boot_file: None,
        },
    );
    snap
}

#[test]
fn a_registered_node_gets_its_address_and_network_options() {
    let snap = registered();
    let s = settings(Mode::Full);
    let d = run(&packet(MessageType::Discover, mac(1), Some(0)), &snap, &s);
    let offer = reply(&d);
    assert_eq!(offer.yiaddr(), ip("192.168.1.21"));
    assert_eq!(offer.opts().msg_type(), Some(MessageType::Offer));
    assert_eq!(
        opt(offer, OptionCode::ServerIdentifier),
        Some(&DhcpOption::ServerIdentifier(ip("192.168.1.10")))
    );
    assert_eq!(
        opt(offer, OptionCode::Router),
        Some(&DhcpOption::Router(vec![ip("192.168.1.1")]))
    );
    assert_eq!(
        opt(offer, OptionCode::DomainName),
        Some(&DhcpOption::DomainName("lacave".into()))
    );
    assert_eq!(
        opt(offer, OptionCode::AddressLeaseTime),
        Some(&DhcpOption::AddressLeaseTime(3600))
    );
    assert_eq!(offer.siaddr(), ip("192.168.1.10"));
    assert_eq!(offer.fname_str().unwrap().unwrap(), "undionly.kpxe");
    assert_eq!(d.reply.as_ref().unwrap().1, Destination::Broadcast);
    assert!(d.lease.is_none(), "an offer binds nothing");
    assert!(!d.discovered);

    let mut req = packet(MessageType::Request, mac(1), Some(0));
    req.opts_mut()
        .insert(DhcpOption::RequestedIpAddress(ip("192.168.1.21")));
    req.opts_mut()
        .insert(DhcpOption::ServerIdentifier(ip("192.168.1.10")));
    let d = run(&req, &snap, &s);
    assert_eq!(reply(&d).opts().msg_type(), Some(MessageType::Ack));
    assert_eq!(
        d.lease,
        Some(LeaseChange::Bind(Lease {
            ip: ip("192.168.1.21"),
            mac: mac(1),
            expires: NOW + 3600
        }))
    );
}

#[test]
fn the_pool_never_hands_out_reserved_server_or_held_addresses() {
    let mut snap = registered();
    // The pool's first address is reserved for a node, the second is leased to someone else.
    snap.reservations.insert(
        mac(9),
        Reservation {
            ip: ip("192.168.1.100"),
            boot_file: None,
        },
    );
    snap.leases.push(Lease {
        ip: ip("192.168.1.101"),
        mac: mac(8),
        expires: NOW + 10,
    });
    let mut s = settings(Mode::Full);
    let d = run(&packet(MessageType::Discover, mac(2), Some(7)), &snap, &s);
    assert_eq!(reply(&d).yiaddr(), ip("192.168.1.102"));
    assert!(d.discovered, "an unknown machine is recorded");
    // Pool exhausted: no answer.
    snap.leases.push(Lease {
        ip: ip("192.168.1.102"),
        mac: mac(7),
        expires: NOW + 10,
    });
    assert!(
        run(&packet(MessageType::Discover, mac(2), Some(7)), &snap, &s)
            .reply
            .is_none()
    );
    // An expired lease frees its address.
    snap.leases[0].expires = NOW - 1;
    assert_eq!(
        reply(&run(
            &packet(MessageType::Discover, mac(2), Some(7)),
            &snap,
            &s
        ))
        .yiaddr(),
        ip("192.168.1.101")
    );
    // The server's own address is never pooled.
    s.pool = Some((ip("192.168.1.10"), ip("192.168.1.10")));
    assert!(
        run(
            &packet(MessageType::Discover, mac(3), Some(7)),
            &Snap::default(),
            &s
        )
        .reply
        .is_none()
    );
    // unknown_clients = ignore: no answer, nothing recorded.
    s.unknown_clients = UnknownClients::Ignore;
    let d = run(
        &packet(MessageType::Discover, mac(3), Some(7)),
        &Snap::default(),
        &s,
    );
    assert!(d.reply.is_none() && !d.discovered);
}

#[test]
fn requests_for_someone_elses_address_are_naked_and_other_servers_are_left_alone() {
    let snap = registered();
    let s = settings(Mode::Full);
    let mut req = packet(MessageType::Request, mac(1), None);
    req.opts_mut()
        .insert(DhcpOption::RequestedIpAddress(ip("192.168.1.50")));
    let d = run(&req, &snap, &s);
    assert_eq!(reply(&d).opts().msg_type(), Some(MessageType::Nak));
    assert!(reply(&d).flags().broadcast());
    assert!(d.lease.is_none());
    let mut other = packet(MessageType::Request, mac(1), None);
    other
        .opts_mut()
        .insert(DhcpOption::ServerIdentifier(ip("192.168.1.1")));
    assert!(run(&other, &snap, &s).reply.is_none());
}

#[test]
fn release_decline_and_inform() {
    let mut snap = registered();
    snap.leases.push(Lease {
        ip: ip("192.168.1.21"),
        mac: mac(1),
        expires: NOW + 100,
    });
    let s = settings(Mode::Full);
    let mut rel = packet(MessageType::Release, mac(1), None);
    rel.set_ciaddr(ip("192.168.1.21"));
    let d = run(&rel, &snap, &s);
    assert!(d.reply.is_none());
    assert_eq!(
        d.lease,
        Some(LeaseChange::Release {
            mac: mac(1),
            ip: ip("192.168.1.21")
        })
    );
    let mut dec = packet(MessageType::Decline, mac(1), None);
    dec.opts_mut()
        .insert(DhcpOption::RequestedIpAddress(ip("192.168.1.21")));
    assert_eq!(
        run(&dec, &snap, &s).lease,
        Some(LeaseChange::Decline {
            ip: ip("192.168.1.21"),
            until: NOW + 3600
        })
    );
    let mut inform = packet(MessageType::Inform, mac(1), None);
    inform.set_ciaddr(ip("192.168.1.21"));
    let d = run(&inform, &snap, &s);
    assert_eq!(reply(&d).yiaddr(), Ipv4Addr::UNSPECIFIED);
    assert_eq!(
        d.reply.as_ref().unwrap().1,
        Destination::Unicast(ip("192.168.1.21"))
    );
}

#[test]
fn relays_off_the_subnet_are_answered_only_when_listed() {
    let s = settings(Mode::Full);
    let snap = MemorySnapshot::default();
    for (giaddr, answered) in [
        ("10.20.0.1", true),
        ("10.20.0.2", false),
        ("192.168.1.254", true),
    ] {
        let mut req = packet(MessageType::Discover, mac(9), Some(0));
        req.set_giaddr(ip(giaddr));
        let facts = client_facts(&req).unwrap();
        let d = decide(&req, &facts, &snap, &s, 0);
        assert_eq!(d.reply.is_some(), answered, "{giaddr}: {}", d.note);
    }
}

#[test]
fn relayed_requests_are_answered_at_the_relay() {
    let snap = registered();
    let s = settings(Mode::Full);
    let mut req = packet(MessageType::Discover, mac(1), Some(7));
    req.set_giaddr(ip("192.168.1.254"));
    let d = run(&req, &snap, &s);
    assert_eq!(
        d.reply.as_ref().unwrap().1,
        Destination::Relay(ip("192.168.1.254"))
    );
    assert_eq!(reply(&d).giaddr(), ip("192.168.1.254"));
}

#[test]
fn proxy_mode_gives_boot_information_to_pxe_clients_only() {
    let snap = registered();
    let s = settings(Mode::Proxy);
    let d = run(&packet(MessageType::Discover, mac(1), Some(7)), &snap, &s);
    let offer = reply(&d);
    assert_eq!(offer.yiaddr(), Ipv4Addr::UNSPECIFIED, "never an address");
    assert_eq!(
        opt(offer, OptionCode::ClassIdentifier),
        Some(&DhcpOption::ClassIdentifier(b"PXEClient".to_vec()))
    );
    assert_eq!(offer.fname_str().unwrap().unwrap(), "ipxe.efi");
    assert_eq!(offer.siaddr(), ip("192.168.1.10"));
    assert!(opt(offer, OptionCode::AddressLeaseTime).is_none());
    // A plain DHCP client (no PXE class) is left to the network's own server.
    assert!(
        run(&packet(MessageType::Discover, mac(1), None), &snap, &s)
            .reply
            .is_none()
    );
    // The request on port 4011 is acknowledged the same way.
    let d = run(&packet(MessageType::Request, mac(1), Some(7)), &snap, &s);
    assert_eq!(reply(&d).opts().msg_type(), Some(MessageType::Ack));
    assert!(d.lease.is_none());
}

#[test]
fn ipxe_clients_get_their_script_and_no_pxedhcp() {
    let snap = registered();
    let s = settings(Mode::Full);
    let mut req = packet(MessageType::Discover, mac(1), Some(0));
    req.opts_mut()
        .insert(DhcpOption::UserClass(b"\x04iPXE".to_vec()));
    let offer = reply(&run(&req, &snap, &s)).clone();
    assert_eq!(
        offer.fname_str().unwrap().unwrap(),
        "http://192.168.1.10:8080/ipxe/52-54-00-00-00-01"
    );
    assert_eq!(
        opt(&offer, OptionCode::Unknown(175)),
        Some(&DhcpOption::Unknown(UnknownOption::new(
            OptionCode::Unknown(175),
            vec![176, 1, 1]
        )))
    );
}

#[test]
fn an_overlong_boot_file_is_left_out_not_a_panic() {
    let mut snap = registered();
    snap.reservations.get_mut(&mac(1)).unwrap().boot_file = Some("x".repeat(200));
    let s = settings(Mode::Full);
    let offer = reply(&run(
        &packet(MessageType::Discover, mac(1), Some(7)),
        &snap,
        &s,
    ))
    .clone();
    assert!(offer.fname().is_none());
    assert_eq!(offer.yiaddr(), ip("192.168.1.21"));
}

//! Which boot file a client gets, from what its DHCP request says about it: option 93 (client
//! system architecture, RFC 4578), option 60 (vendor class: `PXEClient` or `HTTPClient`),
//! option 77 (user class `iPXE`) and option 175 (iPXE's encapsulated options).

use std::net::Ipv4Addr;

use dhcproto::v4::{DhcpOption, Message, OptionCode};

use super::settings::BootFiles;

/// How much of a vendor class (option 60, at most 255 bytes) is kept.
const VENDOR_CLASS_MAX: usize = 64;
use crate::model::MacAddr;

/// What a request tells about the machine that sent it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientFacts {
    pub mac: MacAddr,
    /// Option 93, when present.
    pub arch: Option<u16>,
    /// Option 60, as text (lossy).
    pub vendor_class: Option<String>,
    /// Option 60 starts with `PXEClient` or `HTTPClient`: a network-boot client.
    pub is_pxe: bool,
    /// Option 60 starts with `HTTPClient`: UEFI HTTP boot.
    pub is_http_client: bool,
    /// Already running iPXE: user class `iPXE`, or option 175 present.
    pub is_ipxe: bool,
}

/// Why a packet cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error("hardware address of {0} bytes; only 6-byte Ethernet addresses are served")]
    HardwareAddress(usize),
    #[error("hardware address {0} is not a unicast Ethernet address")]
    NotUnicast(String),
}

/// Reads the facts the boot decision needs from a request.
pub fn client_facts(msg: &Message) -> Result<ClientFacts, Malformed> {
    // dhcproto's chaddr() slices by hlen and panics above 16: check hlen first.
    if msg.hlen() != 6 {
        return Err(Malformed::HardwareAddress(usize::from(msg.hlen())));
    }
    let chaddr = msg.chaddr();
    if chaddr.len() < 6 {
        return Err(Malformed::HardwareAddress(chaddr.len()));
    }
    let octets: [u8; 6] = chaddr[..6].try_into().expect("six bytes");
    let mac = MacAddr::unicast(octets)
        .map_err(|_| Malformed::NotUnicast(MacAddr::new(octets).to_string()))?;
    let opts = msg.opts();
    let arch = match opts.get(OptionCode::ClientSystemArchitecture) {
        Some(DhcpOption::ClientSystemArchitecture(a)) => Some(u16::from(*a)),
        _ => None,
    };
    let vendor_class = match opts.get(OptionCode::ClassIdentifier) {
        // Shown to operators later (`node show`): printable ASCII only, bounded.
        Some(DhcpOption::ClassIdentifier(v)) => Some(crate::model::printable(
            &String::from_utf8_lossy(v),
            VENDOR_CLASS_MAX,
        )),
        _ => None,
    };
    let is_http_client = vendor_class
        .as_deref()
        .is_some_and(|v| v.starts_with("HTTPClient"));
    let is_pxe = is_http_client
        || vendor_class
            .as_deref()
            .is_some_and(|v| v.starts_with("PXEClient"));
    // RFC 3004 user classes are length-prefixed; iPXE sends the single class "iPXE". Some
    // clients send the bare string: accept both.
    let user_class_ipxe = match opts.get(OptionCode::UserClass) {
        Some(DhcpOption::UserClass(data)) => {
            data.as_slice() == b"iPXE" || data.get(1..).is_some_and(|d| d.starts_with(b"iPXE"))
        }
        _ => false,
    };
    let has_175 = opts.get(OptionCode::Unknown(175)).is_some();
    Ok(ClientFacts {
        mac,
        arch,
        vendor_class,
        is_pxe,
        is_http_client,
        is_ipxe: user_class_ipxe || has_175,
    })
}

/// Where a client boots from next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BootTarget {
    /// A file from our TFTP server (`siaddr` = the server, file = the name).
    Tftp(String),
    /// A URL for UEFI HTTP boot (the reply also carries option 60 `HTTPClient`).
    Http(String),
    /// iPXE is running: its script URL (the reply also carries 175.176 = 1, no-pxedhcp).
    Ipxe(String),
    /// Not a network-boot client: no boot file.
    None,
}

/// The boot file for a client. `node_override` is a node's own boot file, which wins for
/// firmware (not for a client already running iPXE, which always gets its script).
pub fn boot_target(
    facts: &ClientFacts,
    server_ip: Ipv4Addr,
    files: &BootFiles,
    node_override: Option<&str>,
) -> BootTarget {
    let http = |path: &str| format!("http://{server_ip}:{}/{path}", files.http_port);
    if facts.is_ipxe {
        // The machine's own script, known from its MAC: no generic `boot.ipxe` round trip.
        return BootTarget::Ipxe(http(&format!("ipxe/{}", facts.mac.hexhyp())));
    }
    if !facts.is_pxe && facts.arch.is_none() {
        return BootTarget::None;
    }
    // UEFI HTTP boot: arch 15 (x86 HTTP), 16 (x64 HTTP), 19 (ARM64 HTTP), or an HTTPClient.
    let http_boot = facts.is_http_client || matches!(facts.arch, Some(15 | 16 | 19));
    let file = match (node_override, facts.arch) {
        (Some(own), _) => own.to_string(),
        (None, Some(0)) => files.bios.clone(),
        (None, Some(11 | 19)) => files.arm64.clone(),
        (None, _) => files.efi.clone(),
    };
    if http_boot {
        // Served from the TFTP root by the HTTP listener's `/boot/` (api/boot.rs).
        BootTarget::Http(http(&format!("boot/{file}")))
    } else {
        BootTarget::Tftp(file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dhcproto::v4::{Architecture, MessageType, UnknownOption};

    fn discover(arch: Option<u16>, class: Option<&str>, user_class: Option<&[u8]>) -> Message {
        let mac = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
        let mut m = Message::new(
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            &mac,
        );
        m.opts_mut()
            .insert(DhcpOption::MessageType(MessageType::Discover));
        if let Some(a) = arch {
            m.opts_mut()
                .insert(DhcpOption::ClientSystemArchitecture(Architecture::from(a)));
        }
        if let Some(c) = class {
            m.opts_mut()
                .insert(DhcpOption::ClassIdentifier(c.as_bytes().to_vec()));
        }
        if let Some(u) = user_class {
            m.opts_mut().insert(DhcpOption::UserClass(u.to_vec()));
        }
        m
    }

    #[test]
    fn each_client_kind_gets_its_boot_file() {
        let server: Ipv4Addr = "192.168.1.10".parse().unwrap();
        let files = BootFiles::default();
        // (option 93, option 60, option 77, expected target)
        type Case<'a> = (Option<u16>, Option<&'a str>, Option<&'a [u8]>, BootTarget);
        let cases: &[Case] = &[
            (
                Some(0),
                Some("PXEClient:Arch:00000:UNDI:002001"),
                None,
                BootTarget::Tftp("undionly.kpxe".into()),
            ),
            (
                Some(6),
                Some("PXEClient:Arch:00006"),
                None,
                BootTarget::Tftp("ipxe.efi".into()),
            ),
            (
                Some(7),
                Some("PXEClient:Arch:00007:UNDI:003000"),
                None,
                BootTarget::Tftp("ipxe.efi".into()),
            ),
            (
                Some(9),
                Some("PXEClient:Arch:00009"),
                None,
                BootTarget::Tftp("ipxe.efi".into()),
            ),
            (
                Some(11),
                Some("PXEClient:Arch:00011"),
                None,
                BootTarget::Tftp("ipxe-arm64.efi".into()),
            ),
            (
                Some(16),
                Some("HTTPClient:Arch:00016"),
                None,
                BootTarget::Http("http://192.168.1.10:8080/boot/ipxe.efi".into()),
            ),
            (
                Some(19),
                Some("HTTPClient:Arch:00019"),
                None,
                BootTarget::Http("http://192.168.1.10:8080/boot/ipxe-arm64.efi".into()),
            ),
            (
                Some(0),
                Some("PXEClient"),
                Some(b"\x04iPXE"),
                BootTarget::Ipxe("http://192.168.1.10:8080/ipxe/52-54-00-12-34-56".into()),
            ),
            (
                Some(7),
                None,
                Some(b"iPXE"),
                BootTarget::Ipxe("http://192.168.1.10:8080/ipxe/52-54-00-12-34-56".into()),
            ),
            (None, Some("MSFT 5.0"), None, BootTarget::None),
            (None, None, None, BootTarget::None),
        ];
        for (arch, class, user, want) in cases {
            let facts = client_facts(&discover(*arch, *class, *user)).unwrap();
            assert_eq!(
                &boot_target(&facts, server, &files, None),
                want,
                "{arch:?} {class:?} {user:?}"
            );
        }
    }

    #[test]
    fn option_175_marks_ipxe_and_a_node_override_wins_for_firmware() {
        let mut m = discover(Some(0), Some("PXEClient"), None);
        m.opts_mut().insert(DhcpOption::Unknown(UnknownOption::new(
            OptionCode::Unknown(175),
            vec![19, 1, 1],
        )));
        assert!(client_facts(&m).unwrap().is_ipxe);
        let server: Ipv4Addr = "10.0.0.1".parse().unwrap();
        let facts = client_facts(&discover(Some(7), Some("PXEClient"), None)).unwrap();
        assert_eq!(
            boot_target(&facts, server, &BootFiles::default(), Some("snponly.efi")),
            BootTarget::Tftp("snponly.efi".into())
        );
    }

    #[test]
    fn a_hostile_hardware_address_length_is_refused_not_a_panic() {
        use dhcproto::{Decodable, Decoder};
        let m = Message::decode(&mut Decoder::new(&[0xff; 300])).unwrap();
        assert_eq!(client_facts(&m), Err(Malformed::HardwareAddress(255)));
    }

    #[test]
    fn odd_hardware_addresses_are_refused() {
        let mut m = discover(Some(0), Some("PXEClient"), None);
        m.set_chaddr(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
        assert!(matches!(client_facts(&m), Err(Malformed::NotUnicast(_))));
    }
}

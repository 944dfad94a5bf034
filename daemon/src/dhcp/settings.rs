//! The `[dhcp]` section: its file format, the validated settings of the DHCP service (the
//! pure decision's [`Settings`] and the socket loop's [`DhcpConfig`]) and their checks. Below
//! `config` (which assembles the file) and above `model` only.

use std::net::Ipv4Addr;

use serde::Deserialize;

use crate::dns::settings::DnsConfig;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Assign addresses: the only DHCP server of the provisioning network.
    Full,
    /// Beside another DHCP server: answer PXE clients with boot information only.
    Proxy,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnknownClients {
    Ignore,
    /// Record them as `discovered` (and, in full mode, lend a pool address).
    Discover,
}

#[derive(Clone, Debug)]
pub struct Settings {
    pub mode: Mode,
    pub server_ip: Ipv4Addr,
    pub subnet: ipnet::Ipv4Net,
    pub router: Option<Ipv4Addr>,
    pub dns_servers: Vec<Ipv4Addr>,
    pub domain: String,
    pub lease_time: u32,
    /// Dynamic addresses for unregistered machines, inclusive.
    pub pool: Option<(Ipv4Addr, Ipv4Addr)>,
    pub unknown_clients: UnknownClients,
    pub files: BootFiles,
    /// Relay agents answered besides those on `subnet` (`giaddr` values).
    pub relays: Vec<Ipv4Addr>,
}

/// The boot binaries, by client kind (names relative to the TFTP root).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootFiles {
    /// Legacy BIOS PXE (arch 0).
    pub bios: String,
    /// UEFI x86 (arch 6, 7, 9).
    pub efi: String,
    /// UEFI ARM64 (arch 11).
    pub arm64: String,
    /// The HTTP port of the daemon (iPXE scripts, HTTP boot).
    pub http_port: u16,
}

impl Default for BootFiles {
    fn default() -> Self {
        BootFiles {
            bios: "undionly.kpxe".into(),
            efi: "ipxe.efi".into(),
            arm64: "ipxe-arm64.efi".into(),
            http_port: 8080,
        }
    }
}

#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RawDhcp {
    /// `off`, `full` (the provisioning network's only DHCP server) or `proxy` (beside a router's
    /// DHCP: boot information for PXE clients only, never an address).
    ///
    /// Default: `"off"`.
    mode: Option<String>,
    /// The interface to serve and broadcast replies on (strongly advised).
    ///
    /// Default: all.
    interface: Option<String>,
    /// The server's port (tests use others).
    ///
    /// Default: `67`.
    server_port: Option<u16>,
    /// The clients' port.
    ///
    /// Default: `68`.
    client_port: Option<u16>,
    /// The proxyDHCP port.
    ///
    /// Default: `4011`.
    proxy_port: Option<u16>,
    /// The provisioning network, e.g. `192.168.1.0/24`; must contain `server_ip`.
    ///
    /// Default: required in full mode.
    subnet: Option<String>,
    /// Option 3.
    ///
    /// Default: none.
    router: Option<String>,
    /// Option 6.
    ///
    /// Default: `[server_ip]`.
    dns_servers: Option<Vec<String>>,
    /// Option 15.
    ///
    /// Default: the DNS zone.
    domain: Option<String>,
    /// Lease time in seconds.
    ///
    /// Default: `3600`.
    lease_time: Option<u32>,
    /// `"192.168.1.100-192.168.1.150"`: addresses for unregistered machines (never a registered
    /// node's, the server's or a live lease's).
    ///
    /// Default: none.
    pool: Option<String>,
    /// `ignore` unknown MACs, or `discover`: record them as `discovered` (and lend a pool address
    /// in full mode); they never install.
    ///
    /// Default: `"ignore"`.
    unknown_clients: Option<String>,
    /// Relay agents (`giaddr`) answered besides those on `subnet`; a relayed packet from any
    /// other address gets no reply.
    ///
    /// Default: `[]`.
    relays: Option<Vec<String>>,
    /// The boot file of BIOS clients (option 93 arch 0); a node's `boot_file` wins.
    ///
    /// Default: `"undionly.kpxe"`.
    bios_file: Option<String>,
    /// The boot file of UEFI x86 clients.
    ///
    /// Default: `"ipxe.efi"`.
    efi_file: Option<String>,
    /// The boot file of UEFI ARM64 clients.
    ///
    /// Default: `"ipxe-arm64.efi"`.
    arm64_file: Option<String>,
    /// Answer IPv6 router solicitations on `interface` with an advertisement that configures
    /// nothing (lifetime 0, no prefix), which saves iPXE ~13 s per boot.
    ///
    /// Default: `true` in full mode with an `interface`.
    router_advertisements: Option<bool>,
}

/// The DHCP service, when on.
#[derive(Clone, Debug)]
pub struct DhcpConfig {
    pub settings: Settings,
    /// The interface replies are broadcast on (and the only one listened on).
    pub interface: Option<String>,
    pub server_port: u16,
    pub client_port: u16,
    pub proxy_port: u16,
    /// Answer IPv6 router solicitations on `interface` with an advertisement that configures
    /// nothing, so iPXE stops waiting for IPv6 (`dhcp/ra.rs`).
    pub router_advertisements: bool,
}

/// Checks `[dhcp]`; `None` when DHCP is off. The domain handed out defaults to the DNS zone.
pub fn validate(
    raw: RawDhcp,
    server_ip: Ipv4Addr,
    http_port: u16,
    dns: &DnsConfig,
    problem: &mut impl FnMut(&str, String),
) -> Option<DhcpConfig> {
    let mode = match raw.mode.as_deref().unwrap_or("off") {
        "off" => return None,
        "full" => Mode::Full,
        "proxy" => Mode::Proxy,
        other => {
            problem(
                "dhcp.mode",
                format!("{other:?} is not a mode (expected \"off\", \"proxy\" or \"full\")"),
            );
            return None;
        }
    };
    let ip = |key: &str, text: &str, problem: &mut dyn FnMut(&str, String)| {
        text.parse::<Ipv4Addr>()
            .map_err(|_| problem(key, format!("{text:?} is not an IPv4 address")))
            .ok()
    };
    let subnet = match raw.subnet.as_deref() {
        Some(text) => match text.parse::<ipnet::Ipv4Net>() {
            Ok(net) => Some(net.trunc()),
            Err(_) => {
                problem(
                    "dhcp.subnet",
                    format!("{text:?} is not a CIDR block (e.g. \"192.168.1.0/24\")"),
                );
                None
            }
        },
        None if mode == Mode::Full => {
            problem(
                "dhcp.subnet",
                "missing: full mode assigns addresses in this subnet".into(),
            );
            None
        }
        None => None,
    };
    let subnet = subnet.unwrap_or_else(|| ipnet::Ipv4Net::new(server_ip, 32).expect("a /32"));
    if mode == Mode::Full && !subnet.contains(&server_ip) {
        problem(
            "dhcp.subnet",
            format!("{subnet} does not contain server_ip {server_ip}"),
        );
    }
    let router = raw
        .router
        .as_deref()
        .and_then(|t| ip("dhcp.router", t, problem));
    let dns_servers = match raw.dns_servers {
        Some(list) => list
            .iter()
            .filter_map(|t| ip("dhcp.dns_servers", t, problem))
            .collect(),
        None => vec![server_ip],
    };
    let pool = raw.pool.as_deref().and_then(|text| {
        let parsed = text.split_once('-').and_then(|(a, b)| {
            Some((a.trim().parse::<Ipv4Addr>().ok()?, b.trim().parse::<Ipv4Addr>().ok()?))
        });
        match parsed {
            Some((a, b)) if a <= b && subnet.contains(&a) && subnet.contains(&b) => Some((a, b)),
            _ => {
                problem(
                    "dhcp.pool",
                    format!("{text:?} is not a range inside {subnet} (e.g. \"192.168.1.100-192.168.1.150\")"),
                );
                None
            }
        }
    });
    let unknown_clients = match raw.unknown_clients.as_deref().unwrap_or("ignore") {
        "ignore" => UnknownClients::Ignore,
        "discover" => UnknownClients::Discover,
        other => {
            problem(
                "dhcp.unknown_clients",
                format!("{other:?} is not a policy (expected \"ignore\" or \"discover\")"),
            );
            UnknownClients::Ignore
        }
    };
    let relays = raw
        .relays
        .unwrap_or_default()
        .iter()
        .filter_map(|t| ip("dhcp.relays", t, problem))
        .collect();
    let lease_time = raw.lease_time.unwrap_or(3600);
    if !(60..=604_800).contains(&lease_time) {
        problem(
            "dhcp.lease_time",
            format!("{lease_time} is not between 60 and 604800 seconds"),
        );
    }
    let file =
        |key: &str, v: Option<String>, default: &str, problem: &mut dyn FnMut(&str, String)| {
            let f = v.unwrap_or_else(|| default.to_string());
            if f.is_empty() || f.len() > 127 || f.contains("..") || f.starts_with('/') {
                problem(
                    key,
                    format!("{f:?} is not a file name inside the TFTP root"),
                );
            }
            f
        };
    let files = BootFiles {
        bios: file("dhcp.bios_file", raw.bios_file, "undionly.kpxe", problem),
        efi: file("dhcp.efi_file", raw.efi_file, "ipxe.efi", problem),
        arm64: file("dhcp.arm64_file", raw.arm64_file, "ipxe-arm64.efi", problem),
        http_port,
    };
    Some(DhcpConfig {
        settings: Settings {
            mode,
            server_ip,
            subnet,
            router,
            dns_servers,
            domain: raw
                .domain
                .unwrap_or_else(|| dns.zone.to_string().trim_end_matches('.').to_string()),
            lease_time,
            pool,
            unknown_clients,
            files,
            relays,
        },
        router_advertisements: match (raw.router_advertisements, &raw.interface) {
            (Some(true), None) => {
                problem(
                    "dhcp.router_advertisements",
                    "needs dhcp.interface: advertisements go out on one link".into(),
                );
                false
            }
            (Some(on), _) => on,
            (None, iface) => mode == Mode::Full && iface.is_some(),
        },
        interface: raw.interface,
        server_port: raw.server_port.unwrap_or(67),
        client_port: raw.client_port.unwrap_or(68),
        proxy_port: raw.proxy_port.unwrap_or(4011),
    })
}

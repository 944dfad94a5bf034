//! The daemon's configuration: a TOML file read into raw serde structs (unknown keys are
//! errors), then checked into a validated [`Config`]. Every problem names the file, the key and
//! the reason, and all problems of a file are reported at once.
//!
//! With no file at all, [`Config::embedded_defaults`] is safe on any machine: state in the
//! user's state directory, HTTP on 127.0.0.1:8080, every network-boot service off.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::dns::records::RecordSpec;
use crate::model::{InstallDisk, Role};
use crate::pki::{CaSettings, KeyType, validate_dns_name};

/// Where the systemd unit and the CLI look for the configuration.
pub const SYSTEM_CONFIG_PATH: &str = "/etc/lacave/lacave.toml";
const DEFAULT_HTTP_LISTEN: &str = "127.0.0.1:8080";
const DEFAULT_INSTALL_DISK: &str = "/dev/sda";

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    state_dir: Option<PathBuf>,
    server_ip: Option<String>,
    #[serde(default)]
    http: RawHttp,
    #[serde(default)]
    api: RawApi,
    #[serde(default)]
    flatcar: RawFlatcar,
    #[serde(default)]
    pki: RawPki,
    #[serde(default)]
    dns: RawDns,
    #[serde(default)]
    tftp: RawTftp,
    #[serde(default)]
    dhcp: RawDhcp,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDhcp {
    mode: Option<String>,
    interface: Option<String>,
    server_port: Option<u16>,
    client_port: Option<u16>,
    proxy_port: Option<u16>,
    subnet: Option<String>,
    router: Option<String>,
    dns_servers: Option<Vec<String>>,
    domain: Option<String>,
    lease_time: Option<u32>,
    pool: Option<String>,
    unknown_clients: Option<String>,
    bios_file: Option<String>,
    efi_file: Option<String>,
    arm64_file: Option<String>,
    router_advertisements: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawTftp {
    listen: Option<String>,
    root: Option<PathBuf>,
    follow_links_into: Option<Vec<PathBuf>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    listen: Option<String>,
    mirror_listen: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawApi {
    token_file: Option<PathBuf>,
    listen: Option<String>,
    tls: Option<bool>,
    tls_names: Option<Vec<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDns {
    listen: Option<String>,
    zone: Option<String>,
    ttl: Option<u32>,
    cluster_name: Option<String>,
    cluster_roles: Option<Vec<String>>,
    forwarders: Option<Vec<String>>,
    allow_recursion_from: Option<Vec<String>>,
    axfr_allow: Option<Vec<String>>,
    #[serde(default)]
    records: Vec<RawRecord>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRecord {
    name: String,
    #[serde(rename = "type")]
    rtype: String,
    value: String,
    ttl: Option<u32>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawPki {
    common_name: Option<String>,
    organization: Option<String>,
    key_type: Option<String>,
    validity_days: Option<u32>,
    leaf_validity_days: Option<u32>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawFlatcar {
    install_disk: Option<String>,
    channel: Option<String>,
    version: Option<String>,
    board: Option<String>,
    mirror_dir: Option<PathBuf>,
    ssh_authorized_keys: Option<Vec<String>>,
    kernel_args: Option<Vec<String>>,
    autologin: Option<bool>,
    local_boot: Option<String>,
    templates_dir: Option<PathBuf>,
    node_prefix: Option<u8>,
    node_gateway: Option<String>,
    unknown_retry_secs: Option<u32>,
    check_peer: Option<bool>,
}

/// A validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// The file it came from; `None` for embedded defaults.
    pub source: Option<PathBuf>,
    /// Where the registry, the API token and (later) keys live.
    pub state_dir: PathBuf,
    /// The address nodes use to reach this host, in every URL handed to them.
    pub server_ip: Ipv4Addr,
    pub http: HttpConfig,
    pub api: ApiConfig,
    pub flatcar: FlatcarConfig,
    pub pki: PkiConfig,
    pub dns: DnsConfig,
    pub tftp: TftpConfig,
    /// `None`: DHCP is off (`[dhcp] mode = "off"`, the default).
    pub dhcp: Option<DhcpConfig>,
}

/// The DHCP service, when on.
#[derive(Clone, Debug)]
pub struct DhcpConfig {
    pub settings: crate::dhcp::decide::Settings,
    /// The interface replies are broadcast on (and the only one listened on).
    pub interface: Option<String>,
    pub server_port: u16,
    pub client_port: u16,
    pub proxy_port: u16,
    /// Answer IPv6 router solicitations on `interface` with an advertisement that configures
    /// nothing, so iPXE stops waiting for IPv6 (`dhcp/ra.rs`).
    pub router_advertisements: bool,
}

/// The read-only TFTP service.
#[derive(Clone, Debug)]
pub struct TftpConfig {
    /// `None`: TFTP is off.
    pub listen: Option<SocketAddr>,
    /// Where the iPXE binaries are (`/usr/lib/ipxe` from Debian's and Ubuntu's `ipxe`).
    pub root: PathBuf,
    /// Directories links in the root may lead into (`/boot`: Debian links `ipxe.efi` there).
    pub follow_links_into: Vec<PathBuf>,
}

/// The authoritative DNS service.
#[derive(Clone, Debug)]
pub struct DnsConfig {
    /// UDP and TCP on this address; `None`: DNS is off.
    pub listen: Option<SocketAddr>,
    /// The cluster zone, fully qualified (`lacave.`).
    pub zone: hickory_proto::rr::Name,
    pub ttl: u32,
    /// The round-robin name over the cluster's nodes (`kube` → `kube.lacave`).
    pub cluster_name: String,
    pub cluster_roles: Vec<Role>,
    /// Upstream resolvers for names outside our zones (port 53 unless given).
    pub forwarders: Vec<SocketAddr>,
    /// Clients that may use the forwarders; everyone else is refused names outside our zones.
    pub allow_recursion_from: Vec<ipnet::IpNet>,
    /// Addresses allowed to transfer the zone (AXFR over TCP).
    pub axfr_allow: Vec<IpAddr>,
    /// Static records (`[[dns.records]]`).
    pub records: Vec<RecordSpec>,
}

#[derive(Clone, Debug)]
pub struct HttpConfig {
    /// Node-facing endpoints, `/healthz`, `/metrics` and the API.
    pub listen: SocketAddr,
    /// The image mirror's own listener (sendfile); `None`: `/mirror/` on `listen`.
    pub mirror_listen: Option<SocketAddr>,
}

#[derive(Clone, Debug)]
pub struct ApiConfig {
    /// A file holding the API token, managed by the operator. `None`: the daemon generates
    /// `<state_dir>/api-token` on first start.
    pub token_file: Option<PathBuf>,
    /// A listener of its own for `/api/`; `None`: the API shares `[http] listen`.
    pub listen: Option<SocketAddr>,
    /// Serve the API listener over HTTPS with a certificate from the cluster CA.
    pub tls: bool,
    /// DNS names (beyond this host's name, `localhost` and the listen/server addresses) that
    /// the API's certificate carries.
    pub tls_names: Vec<String>,
}

#[derive(Clone, Debug)]
pub struct PkiConfig {
    /// How a new CA is made (on first start or `lacave pki init`).
    pub ca: CaSettings,
    /// Validity of leaf certificates when a request gives none.
    pub leaf_validity_days: u32,
}

#[derive(Clone, Debug)]
pub struct FlatcarConfig {
    /// The disk `flatcar-install` writes to when a node does not name one.
    pub install_disk: InstallDisk,
    /// `stable`, `beta`, `alpha` or `lts`.
    pub channel: String,
    /// A release (`4081.2.0`) or `current`.
    pub version: String,
    /// `amd64-usr` or `arm64-usr`.
    pub board: String,
    /// The image mirror: `<mirror_dir>/<channel>/<board>/<version>/…`, served at `/mirror/`.
    pub mirror_dir: PathBuf,
    /// Operator keys for root on every node (OpenSSH one-line form), checked at load.
    pub ssh_authorized_keys: Vec<String>,
    /// Extra kernel arguments for the PXE boot (`console=…`).
    pub kernel_args: Vec<String>,
    /// Add `flatcar.autologin` to the PXE kernel command line.
    pub autologin: bool,
    pub local_boot: LocalBoot,
    /// Operator templates overriding the embedded ones (`ignition-templates/` layout).
    pub templates_dir: Option<PathBuf>,
    /// The nodes' network prefix length and gateway, for their static network file.
    pub node_prefix: u8,
    pub node_gateway: Option<Ipv4Addr>,
    /// How long the script for an unknown MAC waits before asking again.
    pub unknown_retry_secs: u32,
    /// Serve a node's scripts, configs and callbacks only to that node (its registered
    /// address, or its MAC in the kernel's neighbour table). Off only for tests on loopback.
    pub check_peer: bool,
}

/// What an installed node's iPXE script does to boot from its disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LocalBoot {
    /// `exit` (BIOS) / `exit 1` (UEFI): the firmware moves on to the next boot device.
    Exit,
    /// `sanboot --no-describe --drive 0x80` on BIOS; UEFI still uses `exit 1`.
    Sanboot,
}

/// One thing wrong with a configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The dotted key (`http.listen`), or empty when the file as a whole is at fault.
    pub key: String,
    pub reason: String,
}

/// Everything wrong with one configuration file.
#[derive(Clone, Debug, thiserror::Error)]
pub struct ConfigError {
    pub file: String,
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            if p.key.is_empty() {
                write!(f, "{}: {}", self.file, p.reason)?;
            } else {
                write!(f, "{}: {}: {}", self.file, p.key, p.reason)?;
            }
        }
        Ok(())
    }
}

/// The state directory used when no configuration names one: `$XDG_STATE_HOME/lacave`,
/// else `~/.local/state/lacave`, else `./lacave-state`.
pub fn default_state_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("lacave");
    }
    if let Some(home) = std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(home).join(".local/state/lacave");
    }
    PathBuf::from("lacave-state")
}

impl Config {
    /// The configuration used when no file is given.
    pub fn embedded_defaults() -> Config {
        Self::validate(RawConfig::default(), None).expect("embedded defaults are valid")
    }

    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            problems: vec![Problem {
                key: String::new(),
                reason: format!("cannot read the file: {e}"),
            }],
        })?;
        Self::from_toml(&text, path)
    }

    /// Parses and validates configuration text; `path` is used in messages and as `source`.
    pub fn from_toml(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let raw = parse_raw(text).map_err(|problem| ConfigError {
            file: file.clone(),
            problems: vec![problem],
        })?;
        Self::validate(raw, Some(path.to_path_buf()))
    }

    fn validate(raw: RawConfig, source: Option<PathBuf>) -> Result<Config, ConfigError> {
        let mut problems = Vec::new();
        let mut problem = |key: &str, reason: String| {
            problems.push(Problem {
                key: key.to_string(),
                reason,
            })
        };

        let state_dir = match raw.state_dir {
            Some(dir) if dir.as_os_str().is_empty() => {
                problem("state_dir", "must not be empty".into());
                PathBuf::new()
            }
            Some(dir) if !dir.is_absolute() => {
                problem(
                    "state_dir",
                    format!(
                        "{} is relative; give an absolute path so the daemon does not depend on its working directory",
                        dir.display()
                    ),
                );
                dir
            }
            Some(dir) => dir,
            None => default_state_dir(),
        };

        let listen_text = raw.http.listen.as_deref().unwrap_or(DEFAULT_HTTP_LISTEN);
        let listen = match listen_text.parse::<SocketAddr>() {
            Ok(addr) => addr,
            Err(_) => {
                problem(
                    "http.listen",
                    format!("{listen_text:?} is not an address and port (e.g. \"0.0.0.0:8080\")"),
                );
                SocketAddr::from(([127, 0, 0, 1], 8080))
            }
        };

        let mirror_listen =
            raw.http
                .mirror_listen
                .as_deref()
                .and_then(|text| match text.parse::<SocketAddr>() {
                    Ok(addr) if addr == listen => {
                        problem(
                            "http.mirror_listen",
                            format!("{addr} is http.listen already; give another port"),
                        );
                        None
                    }
                    Ok(addr) => Some(addr),
                    Err(_) => {
                        problem(
                            "http.mirror_listen",
                            format!("{text:?} is not an address and port (e.g. \"0.0.0.0:8081\")"),
                        );
                        None
                    }
                });

        let server_ip = match raw.server_ip.as_deref() {
            Some(text) => match text.parse::<Ipv4Addr>() {
                Ok(ip) if ip.is_unspecified() || ip.is_multicast() || ip.is_broadcast() => {
                    problem(
                        "server_ip",
                        format!(
                            "{ip} cannot be reached by nodes; give this host's address on the provisioning network"
                        ),
                    );
                    ip
                }
                Ok(ip) => ip,
                Err(_) => {
                    problem("server_ip", format!("{text:?} is not an IPv4 address"));
                    Ipv4Addr::LOCALHOST
                }
            },
            None => match listen.ip() {
                IpAddr::V4(ip) if !ip.is_unspecified() => ip,
                _ => {
                    problem(
                        "server_ip",
                        format!(
                            "missing: http.listen ({listen}) does not name one IPv4 address, so give the address nodes use to reach this host"
                        ),
                    );
                    Ipv4Addr::LOCALHOST
                }
            },
        };

        if let Some(path) = &raw.api.token_file
            && !path.is_absolute()
        {
            problem(
                "api.token_file",
                format!("{} is relative; give an absolute path", path.display()),
            );
        }

        let api_listen = match raw.api.listen.as_deref() {
            None => None,
            Some(text) => match text.parse::<SocketAddr>() {
                Ok(addr) if addr == listen && addr.port() != 0 => {
                    problem(
                        "api.listen",
                        format!(
                            "{addr} is also http.listen; give the API its own port (e.g. 8443)"
                        ),
                    );
                    None
                }
                Ok(addr) => Some(addr),
                Err(_) => {
                    problem(
                        "api.listen",
                        format!("{text:?} is not an address and port (e.g. \"0.0.0.0:8443\")"),
                    );
                    None
                }
            },
        };
        let api_tls = match (raw.api.tls, &raw.api.listen) {
            (Some(true), None) => {
                problem(
                    "api.tls",
                    "needs api.listen: HTTPS is served on the API's own listener, so that iPXE keeps plain HTTP on http.listen".into(),
                );
                false
            }
            (tls, Some(_)) => tls.unwrap_or(true),
            (_, None) => false,
        };
        let mut tls_names = Vec::new();
        for name in raw.api.tls_names.unwrap_or_default() {
            match validate_dns_name(&name) {
                Ok(n) => tls_names.push(n),
                Err(e) => problem("api.tls_names", e.to_string()),
            }
        }

        let common_name = raw
            .pki
            .common_name
            .unwrap_or_else(|| "Lacave Root CA".to_string());
        if common_name.trim().is_empty() || common_name.len() > 64 {
            problem("pki.common_name", "must be 1 to 64 characters".into());
        }
        let key_type = match raw
            .pki
            .key_type
            .as_deref()
            .unwrap_or("ecdsa-p256")
            .parse::<KeyType>()
        {
            Ok(k) => k,
            Err(e) => {
                problem("pki.key_type", e);
                KeyType::EcdsaP256
            }
        };
        let ca_days = raw.pki.validity_days.unwrap_or(3650);
        if !(1..=36_500).contains(&ca_days) {
            problem(
                "pki.validity_days",
                format!("{ca_days} is not between 1 and 36500"),
            );
        }
        let leaf_days = raw.pki.leaf_validity_days.unwrap_or(365);
        if leaf_days == 0 || leaf_days >= ca_days {
            problem(
                "pki.leaf_validity_days",
                format!(
                    "{leaf_days} must be at least 1 and less than pki.validity_days ({ca_days})"
                ),
            );
        }

        let disk_text = raw
            .flatcar
            .install_disk
            .as_deref()
            .unwrap_or(DEFAULT_INSTALL_DISK);
        let install_disk = match disk_text.parse::<InstallDisk>() {
            Ok(d) => d,
            Err(e) => {
                problem("flatcar.install_disk", e.to_string());
                DEFAULT_INSTALL_DISK.parse().expect("default disk is valid")
            }
        };

        let dns = validate_dns(raw.dns, listen, &mut problem);

        let dhcp = validate_dhcp(raw.dhcp, server_ip, listen.port(), &dns, &mut problem);
        let flatcar = validate_flatcar(
            raw.flatcar,
            install_disk,
            &state_dir,
            dhcp.as_ref(),
            &mut problem,
        );

        let tftp_listen =
            raw.tftp
                .listen
                .as_deref()
                .and_then(|text| match text.parse::<SocketAddr>() {
                    Ok(addr) => Some(addr),
                    Err(_) => {
                        problem(
                            "tftp.listen",
                            format!("{text:?} is not an address and port (e.g. \"0.0.0.0:69\")"),
                        );
                        None
                    }
                });
        let tftp_root = raw
            .tftp
            .root
            .unwrap_or_else(|| PathBuf::from("/usr/lib/ipxe"));
        if !tftp_root.is_absolute() {
            problem(
                "tftp.root",
                format!("{} is relative; give an absolute path", tftp_root.display()),
            );
        } else if tftp_listen.is_some() && !tftp_root.is_dir() {
            problem(
                "tftp.root",
                format!(
                    "{} is not a directory (Debian and Ubuntu: apt install ipxe)",
                    tftp_root.display()
                ),
            );
        }
        let follow_links_into = raw
            .tftp
            .follow_links_into
            .unwrap_or_else(|| vec![PathBuf::from("/boot")]);
        for dir in &follow_links_into {
            if !dir.is_absolute() {
                problem(
                    "tftp.follow_links_into",
                    format!("{} is relative; give an absolute path", dir.display()),
                );
            }
        }

        if !problems.is_empty() {
            return Err(ConfigError {
                file: source
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| "<embedded defaults>".into()),
                problems,
            });
        }
        Ok(Config {
            source,
            state_dir,
            server_ip,
            http: HttpConfig {
                listen,
                mirror_listen,
            },
            api: ApiConfig {
                token_file: raw.api.token_file,
                listen: api_listen,
                tls: api_tls,
                tls_names,
            },
            flatcar,
            pki: PkiConfig {
                ca: CaSettings {
                    common_name,
                    organization: raw.pki.organization,
                    key_type,
                    validity_days: ca_days,
                },
                leaf_validity_days: leaf_days,
            },
            dns,
            tftp: TftpConfig {
                listen: tftp_listen,
                root: tftp_root,
                follow_links_into,
            },
            dhcp,
        })
    }

    /// The file holding the API token.
    pub fn token_path(&self) -> PathBuf {
        self.api
            .token_file
            .clone()
            .unwrap_or_else(|| self.state_dir.join("api-token"))
    }

    /// Where the registry's database lives.
    pub fn registry_dir(&self) -> PathBuf {
        self.state_dir.join("registry")
    }

    /// Where the cluster CA and the API's certificate live.
    pub fn pki_dir(&self) -> PathBuf {
        self.state_dir.join("pki")
    }
}

fn validate_flatcar(
    raw: RawFlatcar,
    install_disk: InstallDisk,
    state_dir: &std::path::Path,
    dhcp: Option<&DhcpConfig>,
    problem: &mut impl FnMut(&str, String),
) -> FlatcarConfig {
    let one_of = |key: &str,
                  v: Option<String>,
                  default: &str,
                  allowed: &[&str],
                  problem: &mut dyn FnMut(&str, String)| {
        let v = v.unwrap_or_else(|| default.to_string());
        if !allowed.contains(&v.as_str()) {
            problem(key, format!("{v:?} is not one of {}", allowed.join(", ")));
        }
        v
    };
    let channel = one_of(
        "flatcar.channel",
        raw.channel,
        "stable",
        &["stable", "beta", "alpha", "lts"],
        problem,
    );
    let board = one_of(
        "flatcar.board",
        raw.board,
        "amd64-usr",
        &["amd64-usr", "arm64-usr"],
        problem,
    );
    let version = raw.version.unwrap_or_else(|| "current".into());
    let release = |v: &str| {
        let parts: Vec<&str> = v.split('.').collect();
        parts.len() == 3
            && parts
                .iter()
                .all(|p| !p.is_empty() && p.len() <= 6 && p.bytes().all(|b| b.is_ascii_digit()))
    };
    if version != "current" && !release(&version) {
        problem(
            "flatcar.version",
            format!("{version:?} is neither \"current\" nor a release like \"4081.2.0\""),
        );
    }
    // (A relative default follows a relative state_dir, which is reported on its own.)
    let explicit_mirror = raw.mirror_dir.is_some();
    let mirror_dir = raw.mirror_dir.unwrap_or_else(|| state_dir.join("mirror"));
    if explicit_mirror && !mirror_dir.is_absolute() {
        problem(
            "flatcar.mirror_dir",
            format!(
                "{} is relative; give an absolute path",
                mirror_dir.display()
            ),
        );
    }
    let ssh_authorized_keys = raw.ssh_authorized_keys.unwrap_or_default();
    for (i, key) in ssh_authorized_keys.iter().enumerate() {
        if let Err(e) = ssh_key::PublicKey::from_openssh(key.trim()) {
            problem(
                &format!("flatcar.ssh_authorized_keys[{i}]"),
                format!("not an OpenSSH public key (\"ssh-ed25519 AAAA… comment\"): {e}"),
            );
        }
    }
    let kernel_args = raw
        .kernel_args
        .unwrap_or_else(|| vec!["console=tty0".into(), "console=ttyS0,115200n8".into()]);
    for (i, arg) in kernel_args.iter().enumerate() {
        let plain = |c: char| c.is_ascii_graphic() && !"\"'$`\\;&|<>{}".contains(c);
        if arg.is_empty() || !arg.chars().all(plain) {
            problem(
                &format!("flatcar.kernel_args[{i}]"),
                format!(
                    "{arg:?} must be one word of printable characters without quotes, '$', '{{', '}}' or shell operators"
                ),
            );
        }
    }
    let local_boot = match raw.local_boot.as_deref().unwrap_or("exit") {
        "exit" => LocalBoot::Exit,
        "sanboot" => LocalBoot::Sanboot,
        other => {
            problem(
                "flatcar.local_boot",
                format!("{other:?} is not \"exit\" or \"sanboot\""),
            );
            LocalBoot::Exit
        }
    };
    if let Some(dir) = &raw.templates_dir
        && !dir.is_dir()
    {
        problem(
            "flatcar.templates_dir",
            format!("{} is not a directory", dir.display()),
        );
    }
    let full = dhcp.filter(|d| d.settings.mode == crate::dhcp::decide::Mode::Full);
    let node_prefix = raw
        .node_prefix
        .or_else(|| full.map(|d| d.settings.subnet.prefix_len()))
        .unwrap_or(24);
    if !(8..=30).contains(&node_prefix) {
        problem(
            "flatcar.node_prefix",
            format!("{node_prefix} is not a prefix length between 8 and 30"),
        );
    }
    let node_gateway = match raw.node_gateway.as_deref() {
        Some(text) => match text.parse::<Ipv4Addr>() {
            Ok(ip) => Some(ip),
            Err(_) => {
                problem(
                    "flatcar.node_gateway",
                    format!("{text:?} is not an IPv4 address"),
                );
                None
            }
        },
        None => full.and_then(|d| d.settings.router),
    };
    let unknown_retry_secs = raw.unknown_retry_secs.unwrap_or(30);
    if !(1..=3600).contains(&unknown_retry_secs) {
        problem(
            "flatcar.unknown_retry_secs",
            format!("{unknown_retry_secs} is not between 1 and 3600"),
        );
    }
    FlatcarConfig {
        install_disk,
        channel,
        version,
        board,
        mirror_dir,
        ssh_authorized_keys,
        kernel_args,
        autologin: raw.autologin.unwrap_or(false),
        local_boot,
        templates_dir: raw.templates_dir,
        node_prefix,
        node_gateway,
        unknown_retry_secs,
        check_peer: raw.check_peer.unwrap_or(true),
    }
}

fn validate_dhcp(
    raw: RawDhcp,
    server_ip: Ipv4Addr,
    http_port: u16,
    dns: &DnsConfig,
    problem: &mut impl FnMut(&str, String),
) -> Option<DhcpConfig> {
    use crate::dhcp::decide::{Mode, Settings, UnknownClients};
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
    let files = crate::dhcp::BootFiles {
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

fn validate_dns(
    raw: RawDns,
    http_listen: SocketAddr,
    problem: &mut impl FnMut(&str, String),
) -> DnsConfig {
    let listen = raw
        .listen
        .as_deref()
        .and_then(|text| match text.parse::<SocketAddr>() {
            Ok(addr) => Some(addr),
            Err(_) => {
                problem(
                    "dns.listen",
                    format!("{text:?} is not an address and port (e.g. \"0.0.0.0:53\")"),
                );
                None
            }
        });
    let zone_text = raw.zone.unwrap_or_else(|| "lacave".into());
    let zone = match validate_dns_name(zone_text.trim_end_matches('.')) {
        // Every name in the zone is a label of up to 63 characters plus the zone: keep room.
        Ok(z) if z.len() > 180 => {
            problem(
                "dns.zone",
                format!(
                    "{} characters: at most 180, so that every host name fits in a DNS name",
                    z.len()
                ),
            );
            hickory_proto::rr::Name::root()
        }
        Ok(z) if !z.starts_with("*.") => {
            let mut n = hickory_proto::rr::Name::from_ascii(&z).expect("a validated name");
            n.set_fqdn(true);
            n
        }
        Ok(_) => {
            problem("dns.zone", "a zone cannot be a wildcard".into());
            hickory_proto::rr::Name::root()
        }
        Err(e) => {
            problem("dns.zone", e.to_string());
            hickory_proto::rr::Name::root()
        }
    };
    let ttl = raw.ttl.unwrap_or(300);
    if !(1..=86_400).contains(&ttl) {
        problem(
            "dns.ttl",
            format!("{ttl} is not between 1 and 86400 seconds"),
        );
    }
    let cluster_name = raw.cluster_name.unwrap_or_else(|| "kube".into());
    if cluster_name.parse::<crate::model::Hostname>().is_err() {
        problem(
            "dns.cluster_name",
            format!("{cluster_name:?} is not one DNS label (letters, digits, '-')"),
        );
    }
    let mut cluster_roles = Vec::new();
    for r in raw
        .cluster_roles
        .unwrap_or_else(|| vec!["control-plane".into()])
    {
        match r.parse::<Role>() {
            Ok(role) => cluster_roles.push(role),
            Err(e) => problem("dns.cluster_roles", e.to_string()),
        }
    }
    let mut forwarders = Vec::new();
    for f in raw.forwarders.unwrap_or_default() {
        let parsed = f
            .parse::<SocketAddr>()
            .or_else(|_| f.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)));
        match parsed {
            Ok(addr) if Some(addr) == listen || addr == http_listen => problem(
                "dns.forwarders",
                format!("{addr} is this daemon: forwarding to itself would loop"),
            ),
            Ok(addr) => forwarders.push(addr),
            Err(_) => problem(
                "dns.forwarders",
                format!("{f:?} is not an IP address (optionally with :port)"),
            ),
        }
    }
    let mut allow_recursion_from = Vec::new();
    for c in raw.allow_recursion_from.unwrap_or_default() {
        let parsed = c
            .parse::<ipnet::IpNet>()
            .or_else(|_| c.parse::<IpAddr>().map(ipnet::IpNet::from));
        match parsed {
            Ok(net) => allow_recursion_from.push(net),
            Err(_) => problem(
                "dns.allow_recursion_from",
                format!("{c:?} is not a CIDR block (e.g. \"192.168.1.0/24\")"),
            ),
        }
    }
    if !allow_recursion_from.is_empty() && forwarders.is_empty() {
        problem(
            "dns.allow_recursion_from",
            "recursion needs dns.forwarders: this daemon forwards, it does not resolve from the root".into(),
        );
    }
    let mut axfr_allow = Vec::new();
    for a in raw.axfr_allow.unwrap_or_default() {
        match a.parse::<IpAddr>() {
            Ok(ip) => axfr_allow.push(ip),
            Err(_) => problem("dns.axfr_allow", format!("{a:?} is not an IP address")),
        }
    }
    let mut records = Vec::new();
    for (i, r) in raw.records.into_iter().enumerate() {
        match RecordSpec::parse(&r.name, &r.rtype, &r.value, r.ttl, &zone) {
            Ok(spec) => records.push(spec),
            Err(errors) => {
                for e in errors {
                    problem(&format!("dns.records[{i}].{}", e.field), e.reason);
                }
            }
        }
    }
    DnsConfig {
        listen,
        zone,
        ttl,
        cluster_name: cluster_name.to_ascii_lowercase(),
        cluster_roles,
        forwarders,
        allow_recursion_from,
        axfr_allow,
        records,
    }
}

/// Parses the TOML into raw structs, naming the key and line of the first error.
fn parse_raw(text: &str) -> Result<RawConfig, Problem> {
    let line_of = |span: Option<std::ops::Range<usize>>| {
        span.map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1)
    };
    let de = toml::Deserializer::parse(text).map_err(|e| Problem {
        key: String::new(),
        reason: match line_of(e.span()) {
            Some(line) => format!("line {line}: invalid TOML: {}", e.message().trim()),
            None => format!("invalid TOML: {}", e.message().trim()),
        },
    })?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        let inner = e.inner();
        let line = line_of(inner.span());
        let message = inner.message().trim().to_string();
        Problem {
            key: if key == "." { String::new() } else { key },
            reason: match line {
                Some(line) => format!("line {line}: {message}"),
                None => message,
            },
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml(text, Path::new("/etc/lacave/lacave.toml"))
    }

    #[test]
    fn embedded_defaults_are_local_and_safe() {
        let c = Config::embedded_defaults();
        assert_eq!(c.http.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.server_ip, Ipv4Addr::LOCALHOST);
        assert_eq!(c.flatcar.install_disk.as_str(), "/dev/sda");
        assert!(c.token_path().ends_with("api-token"));
    }

    #[test]
    fn a_full_file_is_read() {
        let c = load(
            r#"
            state_dir = "/var/lib/lacave"
            server_ip = "192.168.1.10"
            [http]
            listen = "0.0.0.0:8080"
            [api]
            token_file = "/etc/lacave/api-token"
            [flatcar]
            install_disk = "/dev/nvme0n1"
            "#,
        )
        .unwrap();
        assert_eq!(c.state_dir, PathBuf::from("/var/lib/lacave"));
        assert_eq!(c.server_ip, Ipv4Addr::new(192, 168, 1, 10));
        assert_eq!(c.token_path(), PathBuf::from("/etc/lacave/api-token"));
        assert_eq!(c.flatcar.install_disk.as_str(), "/dev/nvme0n1");
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = load("[http]\nlisten = \"127.0.0.1:1\"\nlistne = \"x\"\n").unwrap_err();
        assert_eq!(e.problems.len(), 1);
        assert_eq!(e.problems[0].key, "http.listne");
        assert!(e.problems[0].reason.contains("unknown field"), "{e}");
        assert!(
            e.to_string()
                .starts_with("/etc/lacave/lacave.toml: http.listne: line 3"),
            "{e}"
        );
    }

    #[test]
    fn sections_of_later_features_are_unknown_for_now() {
        let e = load("[dhcpp]\nmode = \"full\"\n").unwrap_err();
        assert!(e.to_string().contains("unknown field `dhcpp`"), "{e}");
    }

    #[test]
    fn wrong_types_are_named() {
        let e = load("state_dir = 5\n").unwrap_err();
        assert_eq!(e.problems[0].key, "state_dir");
    }

    #[test]
    fn syntax_errors_give_the_line() {
        let e = load("state_dir = \"/x\"\n[http\n").unwrap_err();
        assert!(e.to_string().contains("line 2"), "{e}");
    }

    #[test]
    fn flatcar_settings_are_checked_by_name() {
        let e = load(
            r#"
            state_dir = "/x"
            [flatcar]
            channel = "nightly"
            version = "4081.2"
            board = "riscv"
            ssh_authorized_keys = ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFQ7o4JPTa6wVZ7Gt7DkTdfyR3dQZs8gdXSXGA4cFwhu ok", "ssh-rsa garbage"]
            kernel_args = ["console=ttyS0", "a b", "${evil}"]
            local_boot = "reboot"
            node_prefix = 31
            "#,
        )
        .unwrap_err();
        let keys: Vec<&str> = e.problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "flatcar.channel",
                "flatcar.board",
                "flatcar.version",
                "flatcar.ssh_authorized_keys[1]",
                "flatcar.kernel_args[1]",
                "flatcar.kernel_args[2]",
                "flatcar.local_boot",
                "flatcar.node_prefix",
            ],
            "{e}"
        );
        let c = load("state_dir = \"/x\"\n").unwrap();
        assert_eq!(c.flatcar.mirror_dir, PathBuf::from("/x/mirror"));
        assert_eq!(c.flatcar.version, "current");
        assert!(c.flatcar.check_peer);
    }

    #[test]
    fn every_semantic_problem_is_reported_at_once() {
        let e = load(
            r#"
            state_dir = "relative/dir"
            server_ip = "not-an-ip"
            [http]
            listen = "8080"
            [api]
            token_file = "token"
            [flatcar]
            install_disk = "sda"
            "#,
        )
        .unwrap_err();
        let keys: Vec<&str> = e.problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "state_dir",
                "http.listen",
                "server_ip",
                "api.token_file",
                "flatcar.install_disk"
            ]
        );
    }

    #[test]
    fn api_listener_and_pki_settings() {
        let c = load(
            "state_dir = \"/x\"\n[api]\nlisten = \"127.0.0.1:8443\"\ntls_names = [\"Lacave.Lan\"]\n[pki]\nkey_type = \"rsa3072\"\nvalidity_days = 1000\n",
        )
        .unwrap();
        assert!(c.api.tls, "an API listener is HTTPS unless told otherwise");
        assert_eq!(c.api.tls_names, ["lacave.lan"]);
        assert_eq!(c.pki.ca.key_type, KeyType::Rsa3072);
        let e = load(
            "state_dir = \"/x\"\n[api]\ntls = true\ntls_names = [\"bad_name\"]\n[pki]\nkey_type = \"dsa\"\nvalidity_days = 10\nleaf_validity_days = 10\n",
        )
        .unwrap_err();
        let keys: Vec<&str> = e.problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "api.tls",
                "api.tls_names",
                "pki.key_type",
                "pki.leaf_validity_days"
            ]
        );
        let e = load("state_dir = \"/x\"\n[http]\nlisten = \"127.0.0.1:8080\"\n[api]\nlisten = \"127.0.0.1:8080\"\n").unwrap_err();
        assert_eq!(e.problems[0].key, "api.listen");
    }

    #[test]
    fn dns_section() {
        let c = load(
            r#"
            state_dir = "/x"
            [dns]
            listen = "127.0.0.1:5353"
            zone = "Lacave."
            forwarders = ["192.168.1.1", "10.0.0.1:5300"]
            allow_recursion_from = ["192.168.1.0/24", "127.0.0.1"]
            [[dns.records]]
            name = "login.kube"
            type = "CNAME"
            value = "kube"
            "#,
        )
        .unwrap();
        assert_eq!(c.dns.zone.to_string(), "lacave.");
        assert_eq!(c.dns.forwarders[0].to_string(), "192.168.1.1:53");
        assert_eq!(c.dns.records.len(), 1);
        assert!(
            Config::embedded_defaults().dns.listen.is_none(),
            "DNS is off by default"
        );
        let e = load(
            r#"
            state_dir = "/x"
            [dns]
            zone = "bad_zone"
            cluster_roles = ["boss"]
            allow_recursion_from = ["10.0.0.0/33"]
            [[dns.records]]
            name = "x"
            type = "A"
            value = "nope"
            "#,
        )
        .unwrap_err();
        let keys: Vec<&str> = e.problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "dns.zone",
                "dns.cluster_roles",
                "dns.allow_recursion_from",
                "dns.records[0].value"
            ]
        );
    }

    #[test]
    fn wildcard_listen_needs_server_ip() {
        let e = load("state_dir = \"/x\"\n[http]\nlisten = \"0.0.0.0:8080\"\n").unwrap_err();
        assert_eq!(e.problems[0].key, "server_ip");
        assert!(
            load(
                "state_dir = \"/x\"\nserver_ip = \"10.1.1.1\"\n[http]\nlisten = \"0.0.0.0:8080\"\n"
            )
            .is_ok()
        );
    }
}

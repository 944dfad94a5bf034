//! The daemon's configuration: a TOML file read into raw serde structs (unknown keys are
//! errors), then checked into a validated [`Config`]. Every problem names the file, the key and
//! the reason, and all problems of a file are reported at once.
//!
//! This module owns the file format as a whole (its sections, the top-level keys and
//! `[http]`), the unknown-key and syntax errors, and the assembly. Each service's section — its
//! raw struct, validated settings type and checks — lives with the service in a `settings`
//! module (`dhcp::settings`, `dns::settings`, …) that depends only on `model` (and on another
//! section it derives defaults from), so this module depends on nothing above it.
//!
//! With no file at all, [`Config::embedded_defaults`] is safe on any machine: state in the
//! user's state directory, HTTP on 127.0.0.1:8080, every network-boot service off.

pub mod reference;

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::addons::settings::{self as addons_settings, AddonsConfig, RawAddons};
use crate::api::settings::{self as api_settings, ApiConfig, RawApi};
use crate::boot::settings::{self as flatcar_settings, FlatcarConfig, RawFlatcar};
use crate::cluster::settings::{self as cluster_settings, ClusterConfig, RawCluster};
use crate::dhcp::settings::{self as dhcp_settings, DhcpConfig, RawDhcp};
use crate::dns::settings::{self as dns_settings, DnsConfig, RawDns};
use crate::identity::settings::{self as identity_settings, IdentityConfig, RawIdentity};
use crate::pki::settings::{self as pki_settings, PkiConfig, RawPki};
use crate::power::settings::{self as power_settings, PowerConfig, RawPower};
use crate::store::settings::{
    self as discovery_settings, DiscoveryLimits, HistoryLimits, RawDiscovery, RawHistory,
};
use crate::tftp::settings::{self as tftp_settings, RawTftp, TftpConfig};
use crate::updates::settings::{self as updates_settings, RawUpdates, UpdatesConfig};

/// Where the systemd unit and the CLI look for the configuration.
pub const SYSTEM_CONFIG_PATH: &str = "/etc/lacave/lacave.toml";
const DEFAULT_HTTP_LISTEN: &str = "127.0.0.1:8080";

#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    /// Where the registry, the API token and the keys live. Absolute. Created 0700; an existing
    /// one that group or others can use is refused at start (exit 64, `chmod 700 DIR`).
    ///
    /// Default: `$XDG_STATE_HOME/lacave`, else `~/.local/state/lacave`.
    #[schema(value_type = Option<String>)]
    state_dir: Option<PathBuf>,
    /// The address nodes use to reach this host: it goes into every URL handed to nodes.
    ///
    /// Default: the `[http] listen` address, if it names one IPv4 address.
    server_ip: Option<String>,
    /// The HTTP listeners.
    #[serde(default)]
    http: RawHttp,
    /// The operator API.
    #[serde(default)]
    api: RawApi,
    /// What nodes install and how they boot.
    #[serde(default)]
    flatcar: RawFlatcar,
    /// The cluster's root certificate authority.
    #[serde(default)]
    pki: RawPki,
    /// The authoritative DNS server of the cluster zone.
    #[serde(default)]
    dns: RawDns,
    /// The TFTP server of the boot binaries.
    #[serde(default)]
    tftp: RawTftp,
    /// The DHCP server (full or proxy).
    #[serde(default)]
    dhcp: RawDhcp,
    /// Bounds on the machines recorded as `discovered`.
    #[serde(default)]
    discovery: RawDiscovery,
    /// How much of each node's history is kept.
    #[serde(default)]
    history: RawHistory,
    /// The Kubernetes cluster the daemon builds.
    #[serde(default)]
    cluster: RawCluster,
    /// Power control through the nodes' BMCs.
    #[serde(default)]
    power: RawPower,
    /// Single sign-on: the Keycloak realm the daemon declares and the API server trusts.
    #[serde(default)]
    identity: RawIdentity,
    /// Flatcar updates served to the nodes (Omaha), and their reboot strategy.
    #[serde(default)]
    updates: RawUpdates,
    /// The cluster add-ons.
    #[serde(default)]
    #[schema(value_type = addons_settings::AddonsKeys)]
    addons: RawAddons,
}

#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    /// The node-facing endpoints, `/healthz`, `/metrics` and, unless `[api] listen` is set, the
    /// API and the console.
    ///
    /// Default: `"127.0.0.1:8080"`.
    listen: Option<String>,
    /// The image mirror's own listener (e.g. `0.0.0.0:8081`), which sends files with
    /// `sendfile(2)`; boot scripts and install configs then point there.
    ///
    /// Default: unset (`/mirror/` on `[http] listen`).
    mirror_listen: Option<String>,
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
    /// Bounds on machines recorded as `discovered`.
    pub discovery: DiscoveryLimits,
    /// How much of each node's history is kept.
    pub history: HistoryLimits,
    /// `None`: DHCP is off (`[dhcp] mode = "off"`, the default).
    pub dhcp: Option<DhcpConfig>,
    pub cluster: ClusterConfig,
    pub addons: AddonsConfig,
    pub power: PowerConfig,
    pub identity: IdentityConfig,
    pub updates: UpdatesConfig,
}

#[derive(Clone, Debug)]
pub struct HttpConfig {
    /// Node-facing endpoints, `/healthz`, `/metrics` and the API.
    pub listen: SocketAddr,
    /// The image mirror's own listener (sendfile); `None`: `/mirror/` on `listen`.
    pub mirror_listen: Option<SocketAddr>,
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
        let (raw, mut problems) = parse_raw(text).map_err(|problems| ConfigError {
            file: file.clone(),
            problems,
        })?;
        // Keys that could not be read (unknown, wrong type) are reported with the problems of
        // the rest of the file, which is checked as if they were absent.
        match Self::validate(raw, Some(path.to_path_buf())) {
            Ok(config) if problems.is_empty() => Ok(config),
            Ok(_) => Err(ConfigError { file, problems }),
            Err(mut e) => {
                problems.append(&mut e.problems);
                e.problems = problems;
                Err(e)
            }
        }
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
            Some(dir) if dir.as_os_str().as_encoded_bytes().contains(&0) => {
                problem(
                    "state_dir",
                    "contains a NUL character, which no path can hold".into(),
                );
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

        let api = api_settings::validate(raw.api, listen, &mut problem);
        let pki = pki_settings::validate(raw.pki, &mut problem);
        let install_disk = flatcar_settings::validate_install_disk(&raw.flatcar, &mut problem);
        let dns = dns_settings::validate(raw.dns, listen, &mut problem);
        // DNS over TCP and HTTP cannot share one address and port.
        if dns.listen == Some(listen) && listen.port() != 0 {
            problem(
                "dns.listen",
                format!("{listen} is http.listen already; give DNS its own port (53)"),
            );
        }
        let dhcp = dhcp_settings::validate(raw.dhcp, server_ip, listen.port(), &dns, &mut problem);
        let flatcar = flatcar_settings::validate(
            raw.flatcar,
            install_disk,
            &state_dir,
            dhcp.as_ref(),
            &mut problem,
        );
        let tftp = tftp_settings::validate(raw.tftp, &mut problem);
        let discovery = discovery_settings::validate(raw.discovery, &mut problem);
        let history = discovery_settings::validate_history(raw.history, &mut problem);
        let node_subnet = dhcp
            .as_ref()
            .filter(|d| d.settings.mode == crate::dhcp::settings::Mode::Full)
            .map(|d| d.settings.subnet);
        let mut cluster = cluster_settings::validate(raw.cluster, &dns, node_subnet, &mut problem);
        let mut identity = identity_settings::validate(
            raw.identity,
            &state_dir,
            cluster.enabled,
            &format!("{}.{}", dns.cluster_name, cluster.zone),
            &mut problem,
        );
        if identity.enabled {
            cluster_settings::trust_identity(&mut cluster, &identity, &mut problem);
        }
        let mut addons =
            addons_settings::validate(raw.addons, cluster.oidc.is_some(), &mut problem);
        if addons.enabled.contains("keycloak") && !identity.enabled {
            problem(
                "addons.keycloak.enabled",
                "needs [identity] enabled = true: the daemon declares Keycloak's realm and keeps its administrator's password there".into(),
            );
        }
        if identity.enabled {
            identity.tenants = addons.tenants.iter().map(|t| t.namespace.clone()).collect();
            identity_settings::check_users(&identity, &identity.tenants, &mut problem);
            addons_settings::bind_identity(&mut addons, &identity);
        }
        let power = power_settings::validate(raw.power, &mut problem);
        let updates = updates_settings::validate(raw.updates, &flatcar.channel, &mut problem);

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
            api,
            flatcar,
            pki,
            dns,
            tftp,
            dhcp,
            discovery,
            history,
            cluster,
            addons,
            power,
            identity,
            updates,
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

/// Parses the TOML into raw structs, naming the key and line of the first error.
/// Reads the file into the raw structs. A syntax error stops there; a key that cannot be read
/// (unknown, or of the wrong type) is reported and left out, and the rest is read again, so
/// that one run names every such key and the caller still checks the values of the others.
fn parse_raw(text: &str) -> Result<(RawConfig, Vec<Problem>), Vec<Problem>> {
    let line_of = |span: Option<std::ops::Range<usize>>| {
        span.map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1)
    };
    let syntax = |e: toml::de::Error| Problem {
        key: String::new(),
        reason: match line_of(e.span()) {
            Some(line) => format!("line {line}: invalid TOML: {}", e.message().trim()),
            None => format!("invalid TOML: {}", e.message().trim()),
        },
    };
    let de = toml::Deserializer::parse(text).map_err(|e| vec![syntax(e)])?;
    let first = match serde_path_to_error::deserialize::<_, RawConfig>(de) {
        Ok(raw) => return Ok((raw, Vec::new())),
        Err(e) => e,
    };
    let mut table: toml::Table = text.parse().map_err(|e| vec![syntax(e)])?;
    let mut problems = Vec::new();
    let mut error = (
        first.path().to_string(),
        first.inner().message().trim().to_string(),
        line_of(first.inner().span()),
    );
    for _ in 0..100 {
        let (path, message, line) = error;
        let path = if path == "." { String::new() } else { path };
        // "unknown field `x`, expected …" names the table in the path and the key in the
        // message; other errors name the key itself.
        let unknown = message
            .strip_prefix("unknown field `")
            .and_then(|rest| rest.split('`').next())
            .map(str::to_string);
        // The path may or may not end with the unknown field's own name.
        let path = match &unknown {
            Some(field) if path != *field && !path.ends_with(&format!(".{field}")) => {
                if path.is_empty() {
                    field.clone()
                } else {
                    format!("{path}.{field}")
                }
            }
            _ => path,
        };
        let (parent, key) = match path.rsplit_once('.') {
            Some((parent, key)) => (parent.to_string(), key.to_string()),
            None => (String::new(), path.clone()),
        };
        let shown = if parent.is_empty() {
            key.clone()
        } else {
            format!("{parent}.{key}")
        };
        let line = line.or_else(|| line_of_key(text, &parent, &key));
        problems.push(Problem {
            key: shown.clone(),
            reason: match line {
                Some(line) => format!("line {line}: {message}"),
                None => message,
            },
        });
        if key.is_empty() || !remove_key(&mut table, &parent, &key) {
            return Err(problems);
        }
        match serde_path_to_error::deserialize::<_, RawConfig>(toml::Value::Table(table.clone())) {
            Ok(raw) => return Ok((raw, problems)),
            Err(e) => {
                error = (
                    e.path().to_string(),
                    e.inner().message().trim().to_string(),
                    None,
                );
            }
        }
    }
    Err(problems)
}

/// Removes `parent.key` from the document (`parent` dotted, possibly with `[i]` indexes).
fn remove_key(table: &mut toml::Table, parent: &str, key: &str) -> bool {
    let mut current = table;
    for part in parent.split('.').filter(|p| !p.is_empty()) {
        let (name, index) = match part.split_once('[') {
            Some((name, rest)) => (name, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (part, None),
        };
        let next = match (current.get_mut(name), index) {
            (Some(toml::Value::Table(t)), None) => t,
            (Some(toml::Value::Array(items)), Some(i)) => match items.get_mut(i) {
                Some(toml::Value::Table(t)) => t,
                _ => return false,
            },
            _ => return false,
        };
        current = next;
    }
    current.remove(key).is_some()
}

/// The line where `key` is set in section `parent` (`dhcp`, or empty for the top level), for
/// problems found after the first: a best effort over the text.
fn line_of_key(text: &str, parent: &str, key: &str) -> Option<usize> {
    let parent: String = parent
        .split('.')
        .map(|p| p.split('[').next().unwrap_or(p))
        .collect::<Vec<_>>()
        .join(".");
    let mut section = String::new();
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if let Some(header) = t.strip_prefix('[') {
            section = header
                .trim_matches(|c| c == '[' || c == ']')
                .trim()
                .to_string();
            if section == format!("{parent}.{key}").trim_start_matches('.') {
                return Some(i + 1); // a whole unknown section
            }
            continue;
        }
        if section == parent
            && let Some(rest) = t.strip_prefix(key)
            && rest.trim_start().starts_with('=')
        {
            return Some(i + 1);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::settings::KeyType;

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
    fn unknown_keys_wrong_types_and_bad_values_are_all_reported_at_once() {
        let e = load(
            r#"
            state_dir = "relative"
            colour = "blue"
            [http]
            listen = "nowhere"
            [tftp]
            max_transfers_per_client = "eight"
            [dhcpp]
            mode = "full"
            "#,
        )
        .unwrap_err();
        let text = e.to_string();
        for wanted in [
            "line 3: unknown field `colour`",
            "tftp.max_transfers_per_client: line 7: invalid type",
            "unknown field `dhcpp`",
            "http.listen: \"nowhere\" is not an address",
            "state_dir: relative is relative",
        ] {
            assert!(text.contains(wanted), "{wanted:?} missing from:\n{text}");
        }
        assert_eq!(e.problems.len(), 5, "{text}");
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
    fn identity_makes_the_api_server_trust_its_realm_and_binds_its_groups() {
        let c = load(
            r#"
            state_dir = "/x"
            [cluster]
            enabled = true
            [identity]
            enabled = true
            [[identity.users]]
            name = "bob"
            groups = ["team-a-namespace-edit"]
            [addons]
            [[addons.tenants]]
            namespace = "team-a"
            edit_groups = ["devs"]
            "#,
        )
        .unwrap();
        let oidc = c.cluster.oidc.as_ref().unwrap();
        assert_eq!(oidc.issuer_url, "https://login.kube.lacave/realms/lacave");
        assert_eq!(oidc.client_id, "kubeapi");
        assert_eq!(oidc.username_claim, "preferred_username");
        assert_eq!(c.cluster.oidc_prefix, "oidc:");
        assert_eq!(c.identity.tenants, ["team-a"]);
        assert_eq!(c.addons.oidc_admin_groups, ["cluster-admin"]);
        let t = &c.addons.tenants[0];
        assert_eq!(t.admin_groups, ["team-a-namespace-admin"]);
        assert_eq!(t.edit_groups, ["devs", "team-a-namespace-edit"]);
        assert_eq!(t.view_groups, ["team-a-namespace-view"]);
        assert!(c.addons.enabled.contains("tenants"));

        // Set twice, a group of Kubernetes' own, no prefix, a group no tenant has: named.
        let e = load(
            r#"
            state_dir = "/x"
            [cluster]
            enabled = true
            oidc_issuer_url = "https://elsewhere.example/realms/x"
            oidc_client_id = "x"
            oidc_prefix = ""
            [identity]
            enabled = true
            [[identity.users]]
            name = "bob"
            groups = ["team-z-namespace-edit"]
            [addons]
            oidc_admin_groups = ["system:masters"]
            "#,
        )
        .unwrap_err();
        let keys: Vec<&str> = e.problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "cluster.oidc_prefix",
                "cluster.oidc_issuer_url",
                "addons.oidc_admin_groups",
                "identity.users[0].groups[0]"
            ],
            "{e}"
        );
    }

    #[test]
    fn cluster_section() {
        let c = load("state_dir = \"/x\"\n[cluster]\nenabled = true\n").unwrap();
        assert!(c.cluster.enabled);
        assert_eq!(c.cluster.endpoint(), "kube.lacave:6443");
        assert_eq!(c.cluster.kubernetes_version, "v1.37.2");
        assert!(
            !Config::embedded_defaults().cluster.enabled,
            "no join unless asked"
        );
        let c = load(
            r#"
            state_dir = "/x"
            [cluster]
            control_plane_endpoint = "10.0.0.5:443"
            api_server_sans = ["Api.Example.com", "192.168.1.5"]
            oidc_issuer_url = "https://login.kube.lacave/auth/realms/master"
            oidc_client_id = "kubeapi"
            kubelet_config = { failCgroupV1 = false, evictionHard = { "memory.available" = "100Mi" } }
            "#,
        )
        .unwrap();
        assert_eq!(c.cluster.endpoint(), "10.0.0.5:443");
        assert_eq!(
            c.cluster.api_server_sans,
            ["api.example.com", "192.168.1.5"]
        );
        assert_eq!(c.cluster.oidc.as_ref().unwrap().groups_claim, "groups");
        assert_eq!(c.cluster.kubelet_config["failCgroupV1"], false);
        let e = load(
            r#"
            state_dir = "/x"
            server_ip = "10.244.0.1"
            [dhcp]
            mode = "full"
            subnet = "10.244.0.0/24"
            [cluster]
            enabled = true
            kubernetes_version = "1.37"
            control_plane_endpoint = "kube.lacave"
            service_cidr = "10.96.0.1/12"
            api_server_sans = ["bad_name"]
            oidc_issuer_url = "http://login"
            ssh_port = 0
            cri_socket = "/run/containerd.sock"
            ignore_preflight_errors = ["all; rm"]
            kubelet_config = { kind = "x" }
            join_timeout_secs = 5
            "#,
        )
        .unwrap_err();
        let keys: Vec<&str> = e.problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "cluster.kubernetes_version",
                "cluster.control_plane_endpoint",
                "cluster.service_cidr",
                "cluster.pod_cidr",
                "cluster.api_server_sans",
                "cluster.oidc_client_id",
                "cluster.cri_socket",
                "cluster.ignore_preflight_errors",
                "cluster.kubelet_config.kind",
                "cluster.join_timeout_secs",
                "cluster.ssh_port",
            ],
            "{e}"
        );
    }

    #[test]
    fn a_site_without_a_cluster_may_number_its_nodes_inside_the_default_service_range() {
        let lan = r#"
            state_dir = "/x"
            server_ip = "10.97.3.1"
            [dhcp]
            mode = "full"
            subnet = "10.97.3.0/24"
            "#;
        load(lan).unwrap();
        let e = load(&format!("{lan}[cluster]\nenabled = true\n")).unwrap_err();
        assert_eq!(e.problems.len(), 1, "{e}");
        assert_eq!(e.problems[0].key, "cluster.service_cidr");
        assert!(e.problems[0].reason.contains("overlaps the nodes' network"));
    }

    #[test]
    fn the_sysext_comes_over_https_unless_a_test_says_otherwise() {
        let e = load(
            "state_dir = \"/x\"\n[cluster]\nsysext_base_url = \"http://mirror.example/sysext\"\n",
        )
        .unwrap_err();
        assert_eq!(e.problems[0].key, "cluster.sysext_base_url");
        assert!(e.problems[0].reason.contains("plain HTTP"), "{e}");
        load("state_dir = \"/x\"\n[cluster]\nsysext_base_url = \"http://127.0.0.1:1/sysext\"\nallow_http_sysext = true\n")
            .unwrap();
        load(
            "state_dir = \"/x\"\n[cluster]\nsysext_base_url = \"https://mirror.example/sysext\"\n",
        )
        .unwrap();
    }

    #[test]
    fn what_serve_would_refuse_check_config_refuses() {
        let e = load(
            "state_dir = \"/x\\u0000y\"\n[http]\nlisten = \"127.0.0.1:8053\"\n[dns]\nlisten = \"127.0.0.1:8053\"\n[[dns.records]]\nname = \"@\"\ntype = \"CNAME\"\nvalue = \"elsewhere.example.\"\n",
        )
        .unwrap_err();
        let keys: Vec<&str> = e.problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            ["state_dir", "dns.records[0].name", "dns.listen"],
            "{e}"
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

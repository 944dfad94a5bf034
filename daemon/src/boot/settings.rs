//! The `[flatcar]` section: its file format, the validated settings of the boot flow (what
//! nodes install, how they boot, which templates render their configs) and their checks. Below
//! `config` (which assembles the file) and above `model` only.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use serde::Deserialize;

use crate::dhcp::settings::{DhcpConfig, Mode};
use crate::model::InstallDisk;

const DEFAULT_INSTALL_DISK: &str = "/dev/sda";

#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RawFlatcar {
    /// The disk `flatcar-install` writes to when a node names none.
    ///
    /// Default: `"/dev/sda"`.
    install_disk: Option<String>,
    /// The Flatcar channel: `stable`, `beta`, `alpha` or `lts`.
    ///
    /// Default: `"stable"`.
    channel: Option<String>,
    /// A release (`4081.2.0`) or `current`.
    ///
    /// Default: `"current"`.
    version: Option<String>,
    /// `amd64-usr` or `arm64-usr`.
    ///
    /// Default: `"amd64-usr"`.
    board: Option<String>,
    /// The mirror, in the release server's layout: `<channel>/<board>/<version>/…` and
    /// `<channel>/<board>/current`.
    ///
    /// Default: `<state_dir>/mirror`.
    #[schema(value_type = Option<String>)]
    mirror_dir: Option<PathBuf>,
    /// Operator keys for root on every node (checked at load); the daemon's own key is always
    /// added.
    ///
    /// Default: `[]`.
    ssh_authorized_keys: Option<Vec<String>>,
    /// Extra PXE kernel arguments (one word each; no quotes, `$`, braces or shell operators).
    ///
    /// Default: `["console=tty0", "console=ttyS0,115200n8"]`.
    kernel_args: Option<Vec<String>>,
    /// Add `flatcar.autologin` to the kernel arguments.
    ///
    /// Default: `false`.
    autologin: Option<bool>,
    /// How an installed BIOS machine leaves iPXE for its disk: `exit` or `sanboot` (`sanboot
    /// --no-describe --drive 0x80`); UEFI always gets `exit 1`.
    ///
    /// Default: `"exit"`.
    local_boot: Option<String>,
    /// The operator's Ignition templates (see `ignition-templates/README.md`).
    ///
    /// Default: unset (the embedded templates).
    #[schema(value_type = Option<String>)]
    templates_dir: Option<PathBuf>,
    /// The prefix length of the nodes' static network.
    ///
    /// Default: the full-mode DHCP subnet's prefix, else 24.
    node_prefix: Option<u8>,
    /// The gateway of the nodes' static network.
    ///
    /// Default: the full-mode DHCP subnet's router, else none.
    node_gateway: Option<String>,
    /// How long an unknown machine's script waits before asking again.
    ///
    /// Default: `30`.
    unknown_retry_secs: Option<u32>,
    /// Serve a node's script, configs and callbacks only to that machine, by its MAC in the
    /// neighbour table; `false` only for tests on loopback.
    ///
    /// Default: `true`.
    check_peer: Option<bool>,
    /// Also accept a node's registered address when it has no neighbour entry (nodes behind a
    /// router); anyone who can route packets from that address then gets the node's configs and
    /// secret.
    ///
    /// Default: `false`.
    trust_routed_peers: Option<bool>,
    /// Where `lacave mirror fetch flatcar` downloads releases from (without the board): Flatcar's
    /// servers or an internal mirror.
    ///
    /// Default: `https://<channel>.release.flatcar-linux.net`.
    release_base_url: Option<String>,
    /// A newer copy of the image-signing key (its subkeys rotate yearly); its primary must be
    /// `signing_key_fingerprint`.
    ///
    /// Default: unset (the embedded Flatcar key).
    #[schema(value_type = Option<String>)]
    signing_key_file: Option<PathBuf>,
    /// The trusted primary key; change it only for tests and private Flatcar builds.
    ///
    /// Default: Flatcar's `F88CFEDE…0593B34A`.
    signing_key_fingerprint: Option<String>,
    /// How long a release server may send nothing before a fetch gives up (the next run resumes).
    ///
    /// Default: `30`.
    fetch_stall_secs: Option<u32>,
    /// Free space a fetch always leaves on the mirror's file system: it stops (exit 73) before
    /// going under it.
    ///
    /// Default: `1024`.
    fetch_min_free_mb: Option<u64>,
    /// Hosts a release server may redirect a fetch to, beyond `release_base_url`'s own (never
    /// https → http).
    ///
    /// Default: `[]`.
    release_redirect_hosts: Option<Vec<String>>,
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
    /// Serve a node's scripts, configs and callbacks only to that node: the kernel's
    /// neighbour table must map the peer's address to the node's MAC. Off only for tests on
    /// loopback and simulated machines sharing one interface.
    pub check_peer: bool,
    /// Also serve a node from its registered address when that address is not on this link
    /// (no neighbour entry: it comes through a router). Anyone able to route packets from
    /// that address then gets the node's configs and callback secret: off by default.
    pub trust_routed_peers: bool,
    /// Where `lacave mirror fetch flatcar` downloads releases from (without the board):
    /// `https://<channel>.release.flatcar-linux.net` by default, or an internal mirror.
    pub release_base_url: String,
    /// A newer copy of the signing key (its subkeys rotate yearly); its primary must be
    /// `signing_key_fingerprint`.
    pub signing_key_file: Option<PathBuf>,
    /// The trusted signing key's primary fingerprint: Flatcar's unless changed, for tests and
    /// private Flatcar builds only.
    pub signing_key_fingerprint: Option<String>,
    /// How long a release server may send nothing before a fetch gives up.
    pub fetch_stall_secs: u32,
    /// Free space a fetch always leaves on the mirror's file system (by default the registry's
    /// too): it stops before writing past it.
    pub fetch_min_free_mb: u64,
    /// Hosts a release server may redirect a fetch to, beyond `release_base_url`'s own.
    pub release_redirect_hosts: Vec<String>,
}

/// What an installed node's iPXE script does to boot from its disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LocalBoot {
    /// `exit` (BIOS) / `exit 1` (UEFI): the firmware moves on to the next boot device.
    Exit,
    /// `sanboot --no-describe --drive 0x80` on BIOS; UEFI still uses `exit 1`.
    Sanboot,
}

/// Checks `flatcar.install_disk` (reported before the other sections, as the file reads).
pub fn validate_install_disk(
    raw: &RawFlatcar,
    problem: &mut impl FnMut(&str, String),
) -> InstallDisk {
    let disk_text = raw.install_disk.as_deref().unwrap_or(DEFAULT_INSTALL_DISK);
    match disk_text.parse::<InstallDisk>() {
        Ok(d) => d,
        Err(e) => {
            problem("flatcar.install_disk", e.to_string());
            DEFAULT_INSTALL_DISK.parse().expect("default disk is valid")
        }
    }
}

/// Checks the rest of `[flatcar]`; node network defaults follow `[dhcp]` in full mode.
pub fn validate(
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
    let full = dhcp.filter(|d| d.settings.mode == Mode::Full);
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
    let release_base_url = raw
        .release_base_url
        .unwrap_or_else(|| format!("https://{channel}.release.flatcar-linux.net"));
    if !(release_base_url.starts_with("https://") || release_base_url.starts_with("http://")) {
        problem(
            "flatcar.release_base_url",
            format!("{release_base_url:?} is not an http(s):// URL"),
        );
    }
    if let Some(file) = &raw.signing_key_file
        && !file.is_file()
    {
        problem(
            "flatcar.signing_key_file",
            format!("{} is not a file", file.display()),
        );
    }
    let signing_key_fingerprint = raw.signing_key_fingerprint.map(|f| {
        let hex: String = f.chars().filter(|c| !c.is_whitespace()).collect();
        if hex.len() != 40 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
            problem(
                "flatcar.signing_key_fingerprint",
                format!("{f:?} is not a 40-hex-digit OpenPGP v4 fingerprint"),
            );
        }
        hex
    });
    if signing_key_fingerprint.is_some() && raw.signing_key_file.is_none() {
        problem(
            "flatcar.signing_key_fingerprint",
            "needs signing_key_file: the key with that primary fingerprint".into(),
        );
    }
    let fetch_stall_secs = raw.fetch_stall_secs.unwrap_or(30);
    if !(1..=3600).contains(&fetch_stall_secs) {
        problem(
            "flatcar.fetch_stall_secs",
            format!("{fetch_stall_secs} is not between 1 and 3600"),
        );
    }
    let fetch_min_free_mb = raw.fetch_min_free_mb.unwrap_or(1024);
    if fetch_min_free_mb > 1 << 30 {
        problem(
            "flatcar.fetch_min_free_mb",
            format!("{fetch_min_free_mb} is more than a petabyte"),
        );
    }
    let release_redirect_hosts = raw.release_redirect_hosts.unwrap_or_default();
    for host in &release_redirect_hosts {
        if host.is_empty()
            || !host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        {
            problem(
                "flatcar.release_redirect_hosts",
                format!("{host:?} is not a host name (e.g. \"cdn.example.com\")"),
            );
        }
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
        trust_routed_peers: raw.trust_routed_peers.unwrap_or(false),
        release_base_url,
        signing_key_file: raw.signing_key_file,
        signing_key_fingerprint,
        fetch_stall_secs,
        fetch_min_free_mb,
        release_redirect_hosts,
    }
}

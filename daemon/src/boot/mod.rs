//! The boot flow's logic: what a machine gets when it network-boots (its iPXE script), the
//! install and final Ignition configs rendered from the operator's templates, the daemon's own
//! SSH key, which peer may fetch a node's data, and byte ranges of mirror files. HTTP is
//! `api/boot.rs`'s business; this module is pure or touches only files.

pub mod ignition;
pub mod ipxe;
pub mod settings;
pub mod templates;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::config::Config;
use crate::model::{MacAddr, Node, NodeState, Role};
use crate::secrets::{self, SecretError};
pub use templates::{Kind, Templates};

/// What the boot flow needs at run time, built once at start.
#[derive(Debug)]
pub struct Boot {
    pub templates: Templates,
    /// The daemon's own SSH public key (OpenSSH line), given to root on every node.
    pub ssh_public_key: String,
}

/// The variables a template sees. Documented in `ignition-templates/README.md`.
#[derive(Debug, Serialize)]
pub struct Context {
    pub node: NodeVars,
    pub server: ServerVars,
    pub flatcar: FlatcarVars,
    pub urls: Urls,
    pub callback_secret: String,
    pub ssh_authorized_keys: Vec<String>,
    pub ca_pem: String,
    /// Set when the daemon joins nodes to Kubernetes (`[cluster] enabled`): what the final
    /// config installs for it.
    pub kubernetes: Option<KubernetesVars>,
    /// Set with `[updates] enabled`: the node's `update_engine` asks the daemon.
    pub updates: Option<UpdatesVars>,
}

/// What the final config tells Flatcar's `update_engine` and `locksmithd`.
#[derive(Debug, Serialize)]
pub struct UpdatesVars {
    /// The daemon's Omaha endpoint: `<server.url>/v1/update/`.
    pub server: String,
    /// The node's update group: its label `lacave.io/update-group`, else `[updates] group`.
    pub group: String,
    /// `None`: Flatcar's default.
    pub reboot_strategy: Option<String>,
    /// `/etc/flatcar/update.conf`, whole.
    pub update_conf: String,
}

/// Kubernetes on Flatcar, as Flatcar documents it: the `kubernetes` systemd-sysext image of
/// the configured release (kubeadm, kubelet, kubectl and kubelet.service), from the mirror.
#[derive(Debug, Serialize)]
pub struct KubernetesVars {
    pub version: String,
    /// `kubernetes-v1.37.2-x86-64.raw`, as Flatcar's sysext-bakery names it.
    pub sysext: String,
    /// Where nodes fetch it: `<mirror>/kubernetes/<sysext>`.
    pub sysext_url: String,
    /// Its SHA-256 (hex) as `lacave mirror fetch kubernetes` checked it against the release's
    /// `SHA256SUMS` and recorded it (`<sysext>.sha256` beside it); Ignition verifies the
    /// download against it. `None` while the mirror lacks the image (start-up names it).
    pub sysext_sha256: Option<String>,
    /// The registries containerd pulls through the daemon (`hosts.toml` each).
    pub registries: Vec<RegistryMirror>,
    /// `/etc/containerd/config.toml`: Flatcar's own settings plus the CRI's `config_path`,
    /// which Flatcar's `/usr/share/containerd/config.toml` leaves unset (so `hosts.toml` would
    /// be ignored by the kubelet's pulls).
    pub containerd_config: &'static str,
}

/// Flatcar's containerd settings (its `/usr/share/containerd/config.toml`: version 2, systemd
/// cgroups, runc v2, SELinux labels) and the registry hosts directory. containerd 2.x reads a
/// version 2 file and migrates it. Flatcar's unit reads `$CONTAINERD_CONFIG`; the final
/// Ignition's drop-in points it here.
pub const CONTAINERD_CONFIG: &str = r#"# Written by lacave's final Ignition: Flatcar's containerd settings, plus the registry
# mirrors in /etc/containerd/certs.d (the lacave daemon serves the images).
version = 2
root = "/var/lib/containerd"
state = "/run/containerd"
subreaper = true
oom_score = -999

[grpc]
address = "/run/containerd/containerd.sock"

[plugins."io.containerd.grpc.v1.cri"]
enable_selinux = true

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
runtime_type = "io.containerd.runc.v2"

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
SystemdCgroup = true

[plugins."io.containerd.grpc.v1.cri".registry]
config_path = "/etc/containerd/certs.d"
"#;

/// A registry whose images nodes pull from the daemon (`mirror images add`).
#[derive(Debug, Serialize)]
pub struct RegistryMirror {
    /// As image names spell it: `registry.k8s.io`, `docker.io`.
    pub name: String,
    /// Where it really is: `https://registry-1.docker.io` for docker.io.
    pub upstream: String,
    /// containerd's `/etc/containerd/certs.d/<name>/hosts.toml`.
    pub hosts_toml: String,
}

/// containerd's `hosts.toml` for a registry pulled through the daemon at `url`: the daemon
/// first (pull and resolve), the upstream `server` only if the node can reach it.
pub fn hosts_toml(upstream: &str, url: &str) -> String {
    format!(
        "server = \"{upstream}\"\n\n[host.\"{url}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
    )
}

/// The registries the add-ons and the join pull from, through the daemon at `url`.
pub fn registry_mirrors(url: &str) -> Vec<RegistryMirror> {
    ["registry.k8s.io", "docker.io", "quay.io", "ghcr.io"]
        .into_iter()
        .map(|name| {
            let upstream = match name {
                "docker.io" => "https://registry-1.docker.io".to_string(),
                other => format!("https://{other}"),
            };
            RegistryMirror {
                name: name.into(),
                hosts_toml: hosts_toml(&upstream, url),
                upstream,
            }
        })
        .collect()
}

/// Where nodes fetch mirror files (`<base>/mirror/…`): the mirror listener when there is one,
/// else the HTTP listener.
pub fn node_mirror_base(config: &Config) -> String {
    match config.http.mirror_listen {
        Some(addr) => format!("http://{}:{}", config.server_ip, addr.port()),
        None => base_url(config),
    }
}

/// The SHA-256 the mirror recorded for sysext image `image` (`kubernetes/<image>.sha256`,
/// written by `lacave mirror fetch kubernetes` after checking the release's `SHA256SUMS`), if
/// it holds one that is well-formed.
pub fn sysext_sha256(mirror_dir: &Path, image: &str) -> Option<String> {
    let path = mirror_file(mirror_dir, &format!("kubernetes/{image}.sha256")).ok()?;
    let text = std::fs::read_to_string(path).ok()?;
    let hex = text.split_whitespace().next()?.to_ascii_lowercase();
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then_some(hex)
}

/// The sysext image of `version` for `board`, as Flatcar's sysext-bakery names it.
pub fn kubernetes_sysext(version: &str, board: &str) -> String {
    let arch = if board.starts_with("arm64") {
        "arm64"
    } else {
        "x86-64"
    };
    format!("kubernetes-{version}-{arch}.raw")
}

#[derive(Debug, Serialize)]
pub struct NodeVars {
    pub hostname: String,
    pub fqdn: String,
    pub mac: String,
    pub ip: String,
    pub prefix: u8,
    pub gateway: Option<String>,
    pub role: String,
    pub labels: BTreeMap<String, String>,
    pub install_disk: String,
}

#[derive(Debug, Serialize)]
pub struct ServerVars {
    pub ip: String,
    /// `http://<server_ip>:<port>`: where nodes reach the daemon.
    pub url: String,
    /// The DNS zone without its final dot (`lacave`): the nodes' search domain.
    pub domain: String,
}

#[derive(Debug, Serialize)]
pub struct FlatcarVars {
    pub channel: String,
    pub version: String,
    pub board: String,
    /// The `-b` base URL for `flatcar-install` (`…/mirror/<channel>/<board>`).
    pub mirror_url: String,
}

#[derive(Debug, Serialize)]
pub struct Urls {
    pub install_ignition: String,
    pub final_ignition: String,
    pub installed: String,
    pub booted: String,
}

/// The base URL nodes use for the daemon's node-facing endpoints.
pub fn base_url(config: &Config) -> String {
    format!("http://{}:{}", config.server_ip, config.http.listen.port())
}

/// The URL of a machine's own iPXE script (`GET /ipxe/{mac}`): what DHCP hands a client
/// running iPXE, and what the script fetches to ask again.
pub fn script_url(config: &Config, mac: MacAddr) -> String {
    format!("{}/ipxe/{}", base_url(config), mac.hexhyp())
}

/// The mirror's base URL for this channel and board: on the mirror's own listener when it
/// has one (sendfile), else on the main one.
pub fn mirror_url(config: &Config) -> String {
    let base = match config.http.mirror_listen {
        Some(addr) => format!("http://{}:{}", config.server_ip, addr.port()),
        None => base_url(config),
    };
    format!(
        "{base}/mirror/{}/{}",
        config.flatcar.channel, config.flatcar.board
    )
}

impl Boot {
    /// Loads the templates and the daemon's SSH key (created on first start, private half
    /// 0600), then renders every template for every role with a sample node: a broken template
    /// stops start-up and `check-config`, never a node's boot.
    pub fn load(config: &Config, ca_pem: &str) -> Result<Boot, Vec<String>> {
        let templates = Templates::load(config.flatcar.templates_dir.as_deref())?;
        let ssh_public_key = load_or_create_ssh_key(&config.state_dir.join("ssh"))
            .map_err(|e| vec![e.to_string()])?;
        let boot = Boot {
            templates,
            ssh_public_key,
        };
        boot.check(config, ca_pem)?;
        Ok(boot)
    }

    /// Templates only, with a stand-in key: what `check-config` can verify without touching
    /// the state directory.
    pub fn check_templates(config: &Config) -> Result<(), Vec<String>> {
        let boot = Boot {
            templates: Templates::load(config.flatcar.templates_dir.as_deref())?,
            ssh_public_key: SAMPLE_KEY.to_string(),
        };
        boot.check(config, SAMPLE_CA)
    }

    fn check(&self, config: &Config, ca_pem: &str) -> Result<(), Vec<String>> {
        let mut errors = Vec::new();
        let mut samples: Vec<(String, Role)> = Role::ALL
            .iter()
            .map(|r| (format!("sample-{}", r.as_str()), *r))
            .collect();
        for host in self.templates.node_overrides() {
            for role in Role::ALL {
                samples.push((host.clone(), role));
            }
        }
        for (host, role) in samples {
            let node = sample_node(&host, role);
            let cx = self.context(
                config,
                &node,
                "sample-secret",
                ca_pem,
                &config.cluster.kubernetes_version,
            );
            for kind in Kind::ALL {
                if let Err(e) = self.templates.render(kind, &host, role.as_str(), &cx) {
                    let e = format!("{e} (rendering for a {role} node named {host})");
                    if !errors.contains(&e) {
                        errors.push(e);
                    }
                }
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    /// The template variables for `node` (which must be registered: it has a hostname, an
    /// address and a role).
    /// `kubernetes_version`: the release the node joins at (the one the cluster runs).
    pub fn context(
        &self,
        config: &Config,
        node: &Node,
        secret: &str,
        ca_pem: &str,
        kubernetes_version: &str,
    ) -> Context {
        let base = base_url(config);
        let seg = node.mac.hexhyp();
        let hostname = node
            .hostname
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default();
        let domain = config
            .dns
            .zone
            .to_string()
            .trim_end_matches('.')
            .to_string();
        let mut keys = config.flatcar.ssh_authorized_keys.clone();
        keys.push(self.ssh_public_key.clone());
        Context {
            node: NodeVars {
                fqdn: format!("{hostname}.{domain}"),
                hostname,
                mac: node.mac.to_string(),
                ip: node.ip.map(|ip| ip.to_string()).unwrap_or_default(),
                prefix: config.flatcar.node_prefix,
                gateway: config.flatcar.node_gateway.map(|g| g.to_string()),
                role: node
                    .role
                    .map(|r| r.as_str().to_string())
                    .unwrap_or_default(),
                labels: node.labels.clone(),
                install_disk: node
                    .install_disk
                    .clone()
                    .unwrap_or_else(|| config.flatcar.install_disk.clone())
                    .to_string(),
            },
            server: ServerVars {
                ip: config.server_ip.to_string(),
                url: base.clone(),
                domain,
            },
            flatcar: FlatcarVars {
                channel: config.flatcar.channel.clone(),
                version: config.flatcar.version.clone(),
                board: config.flatcar.board.clone(),
                mirror_url: mirror_url(config),
            },
            urls: Urls {
                install_ignition: format!("{base}/ignition/{seg}/install"),
                final_ignition: format!("{base}/ignition/{seg}/final"),
                installed: format!("{base}/callback/{seg}/installed"),
                booted: format!("{base}/callback/{seg}/booted"),
            },
            callback_secret: secret.to_string(),
            ssh_authorized_keys: keys,
            ca_pem: ca_pem.to_string(),
            kubernetes: config.cluster.enabled.then(|| {
                let sysext = kubernetes_sysext(kubernetes_version, &config.flatcar.board);
                KubernetesVars {
                    version: kubernetes_version.to_string(),
                    sysext_url: format!("{}/mirror/kubernetes/{sysext}", node_mirror_base(config)),
                    sysext_sha256: sysext_sha256(&config.flatcar.mirror_dir, &sysext),
                    sysext,
                    registries: registry_mirrors(&base_url(config)),
                    containerd_config: CONTAINERD_CONFIG,
                }
            }),
            updates: config.updates.enabled.then(|| {
                let server = format!("{base}/v1/update/");
                let group = config.updates.group_of(node);
                let mut update_conf = format!("SERVER={server}\nGROUP={group}\n");
                if let Some(strategy) = &config.updates.reboot_strategy {
                    update_conf.push_str(&format!("REBOOT_STRATEGY={strategy}\n"));
                }
                UpdatesVars {
                    server,
                    group,
                    reboot_strategy: config.updates.reboot_strategy.clone(),
                    update_conf,
                }
            }),
        }
    }

    /// The iPXE script for a machine, by its state (`None`: not in the registry).
    pub fn script_for(&self, config: &Config, mac: MacAddr, node: Option<&Node>) -> ipxe::Script {
        let base = base_url(config);
        let again_url = script_url(config, mac);
        let Some(node) = node.filter(|n| n.state != NodeState::Discovered) else {
            return ipxe::Script::Unknown {
                mac: mac.to_string(),
                retry_secs: config.flatcar.unknown_retry_secs,
                again_url,
            };
        };
        let hostname = node.display_name();
        match node.state {
            NodeState::Registered | NodeState::Installing => {
                let dir = format!("{}/{}", mirror_url(config), config.flatcar.version);
                let initrd_name = "flatcar_production_pxe_image.cpio.gz".to_string();
                let mut kernel_args = vec![
                    format!("initrd={initrd_name}"),
                    "flatcar.first_boot=1".to_string(),
                    format!(
                        "ignition.config.url={base}/ignition/{}/install",
                        mac.hexhyp()
                    ),
                ];
                kernel_args.extend(config.flatcar.kernel_args.iter().cloned());
                if config.flatcar.autologin {
                    kernel_args.push("flatcar.autologin".into());
                }
                ipxe::Script::Install {
                    hostname,
                    mac: mac.to_string(),
                    kernel_url: format!("{dir}/flatcar_production_pxe.vmlinuz"),
                    initrd_url: format!("{dir}/{initrd_name}"),
                    initrd_name,
                    kernel_args,
                    again_url,
                }
            }
            NodeState::Failed => ipxe::Script::Local {
                hostname,
                note: "failed (lacave node show; lacave node reinstall)".into(),
                local_boot: config.flatcar.local_boot,
            },
            state => ipxe::Script::Local {
                hostname,
                note: format!("is {state}"),
                local_boot: config.flatcar.local_boot,
            },
        }
    }
}

const SAMPLE_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl sample";
const SAMPLE_CA: &str = "-----BEGIN CERTIFICATE-----\nsample\n-----END CERTIFICATE-----\n";

/// A registered node of `role` named `hostname`, for checking templates.
pub fn sample_node(hostname: &str, role: Role) -> Node {
    let at = time::OffsetDateTime::UNIX_EPOCH;
    Node {
        hostname: hostname.parse().ok(),
        ip: "10.0.0.11".parse().ok(),
        role: Some(role),
        labels: BTreeMap::from([("example.com/zone".to_string(), "a".to_string())]),
        state: NodeState::Registered,
        ..Node::discovered("52:54:00:00:00:01".parse().expect("a valid MAC"), at)
    }
}

/// Loads `<dir>/id_ed25519.pub`, creating the key pair on first start (private half 0600 in a
/// 0700 directory).
pub fn load_or_create_ssh_key(dir: &Path) -> Result<String, SecretError> {
    let private = dir.join("id_ed25519");
    let public = dir.join("id_ed25519.pub");
    if private.exists() {
        secrets::check_private(&private)?;
        // The key the join logs in with: a damaged or foreign one is a start-up error, not a
        // failure at the first node's join.
        let read = |path: &Path| {
            std::fs::read_to_string(path).map_err(|source| SecretError::Read {
                path: path.to_path_buf(),
                source,
            })
        };
        let key = ssh_key::PrivateKey::from_openssh(read(&private)?.trim()).map_err(|e| {
            SecretError::BadKey {
                path: private.clone(),
                why: e.to_string(),
            }
        })?;
        let text = read(&public)?;
        let listed =
            ssh_key::PublicKey::from_openssh(text.trim()).map_err(|e| SecretError::BadKey {
                path: public.clone(),
                why: e.to_string(),
            })?;
        if listed.key_data() != key.public_key().key_data() {
            return Err(SecretError::BadKey {
                path: public.clone(),
                why: format!("it is not the public half of {}", private.display()),
            });
        }
        return Ok(text.trim().to_string());
    }
    secrets::create_private_dir(dir).map_err(|source| SecretError::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    let key =
        ssh_key::PrivateKey::random(&mut ssh_key::rand_core::OsRng, ssh_key::Algorithm::Ed25519)
            .expect("Ed25519 key generation does not fail");
    let pem = key
        .to_openssh(ssh_key::LineEnding::LF)
        .expect("an Ed25519 key encodes");
    let mut public_key = key.public_key().clone();
    public_key.set_comment("lacave");
    let line = public_key.to_openssh().expect("a public key encodes");
    secrets::write_private(&private, pem.as_bytes())?;
    secrets::write_atomic(&public, format!("{line}\n").as_bytes(), 0o644)?;
    tracing::info!(path = %private.display(), "created the daemon's SSH key");
    Ok(line)
}

/// Why a request for a node's data is not that node's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WrongPeer {
    /// The neighbour table maps the peer's address to another MAC: another machine on this
    /// link (which may have taken the node's published address).
    OtherMac(MacAddr),
    /// The peer is not on this link (no neighbour entry) and is not the node's registered
    /// address, or routed peers are not trusted (`[flatcar] trust_routed_peers`).
    OffLink { registered: bool },
    /// Not IPv4 (nodes boot over IPv4).
    NotIpv4,
}

impl std::fmt::Display for WrongPeer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WrongPeer::OtherMac(other) => write!(
                f,
                "the address belongs to another machine on this link (MAC {other})"
            ),
            WrongPeer::OffLink { registered: true } => f.write_str(
                "the node's registered address, but not on this link; set [flatcar] \
                 trust_routed_peers = true to serve nodes behind a router (see its risk in the documentation, Security model)",
            ),
            WrongPeer::OffLink { registered: false } => {
                f.write_str("neither the node's MAC on this link nor its registered address")
            }
            WrongPeer::NotIpv4 => f.write_str("not an IPv4 peer"),
        }
    }
}

/// Whether `peer` is the machine with this MAC: on this link, the kernel's neighbour table
/// (`/proc/net/arp` text in `table`) must map its address to `mac`, whatever address the
/// node is registered with (a machine PXE-booting beside a home router has another one), so
/// a machine that took a node's published address is refused. Only a peer with no neighbour
/// entry (routed) may be recognised by its registered address alone, and only with
/// `trust_routed`.
pub fn check_peer(
    peer: IpAddr,
    mac: MacAddr,
    registered: Option<Ipv4Addr>,
    trust_routed: bool,
    table: &str,
) -> Result<(), WrongPeer> {
    let peer = match peer {
        IpAddr::V4(v4) => v4,
        IpAddr::V6(v6) => v6.to_ipv4_mapped().ok_or(WrongPeer::NotIpv4)?,
    };
    match neighbour_mac(table, peer) {
        Some(seen) if seen == mac => Ok(()),
        Some(other) => Err(WrongPeer::OtherMac(other)),
        None if trust_routed && registered == Some(peer) => Ok(()),
        None => Err(WrongPeer::OffLink {
            registered: registered == Some(peer),
        }),
    }
}

/// The kernel's neighbour table, as `check_peer` reads it.
pub fn neighbour_table() -> String {
    std::fs::read_to_string("/proc/self/net/arp").unwrap_or_default()
}

/// The MAC `/proc/net/arp` gives for `ip` (complete entries only).
pub fn neighbour_mac(table: &str, ip: Ipv4Addr) -> Option<MacAddr> {
    table.lines().skip(1).find_map(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        let (addr, flags, hw) = (cols.first()?, cols.get(2)?, cols.get(3)?);
        if addr.parse::<Ipv4Addr>().ok()? != ip || *flags == "0x0" {
            return None;
        }
        hw.parse().ok()
    })
}

/// A byte range of a file of `len` bytes, from a `Range` header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Range {
    /// No usable `Range`: the whole file.
    Full,
    /// Bytes `start..=end`.
    Part { start: u64, end: u64 },
    /// Nothing of the file matches: 416.
    Unsatisfiable,
}

/// RFC 9110 single ranges (`bytes=a-b`, `bytes=a-`, `bytes=-n`). Multiple ranges and other
/// units are answered with the whole file, which the RFC allows.
pub fn parse_range(header: Option<&str>, len: u64) -> Range {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return Range::Full;
    };
    if spec.contains(',') {
        return Range::Full;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return Range::Full;
    };
    let (a, b) = (a.trim(), b.trim());
    let parsed = match (a.is_empty(), b.is_empty()) {
        (true, true) => return Range::Full,
        (true, false) => match b.parse::<u64>() {
            Ok(0) => return Range::Unsatisfiable,
            Ok(n) => (len.saturating_sub(n), len.saturating_sub(1)),
            Err(_) => return Range::Full,
        },
        (false, _) => {
            let Ok(start) = a.parse::<u64>() else {
                return Range::Full;
            };
            let end = if b.is_empty() {
                len.saturating_sub(1)
            } else {
                match b.parse::<u64>() {
                    Ok(e) if e >= start => e.min(len.saturating_sub(1)),
                    _ => return Range::Full,
                }
            };
            (start, end)
        }
    };
    let (start, end) = parsed;
    if len == 0 || start >= len {
        return Range::Unsatisfiable;
    }
    Range::Part { start, end }
}

/// The files of the configured release an install fetches that the mirror does not hold,
/// as paths relative to `mirror_dir` (empty when all are there).
pub fn missing_mirror_files(config: &Config) -> Vec<String> {
    let f = &config.flatcar;
    let base = format!("{}/{}", f.channel, f.board);
    let mut wanted: Vec<String> = [
        "flatcar_production_pxe.vmlinuz",
        "flatcar_production_pxe_image.cpio.gz",
        "flatcar_production_image.bin.bz2",
        "flatcar_production_image.bin.bz2.sig",
    ]
    .iter()
    .map(|file| format!("{base}/{}/{file}", f.version))
    .collect();
    if f.version == "current" {
        wanted.push(format!("{base}/current/version.txt"));
    }
    if config.cluster.enabled {
        wanted.push(format!(
            "kubernetes/{}",
            kubernetes_sysext(&config.cluster.kubernetes_version, &f.board)
        ));
    }
    wanted
        .into_iter()
        .filter(|rel| mirror_file(&f.mirror_dir, rel).is_err())
        .collect()
}

/// The mirror file a URL path names: inside `mirror_dir`, no `..`, no link leading out (the
/// TFTP service's rules, with no directory to follow links into).
pub fn mirror_file(mirror_dir: &Path, requested: &str) -> Result<PathBuf, String> {
    crate::tftp::resolve::resolve(mirror_dir, &[], Path::new(requested)).map_err(|r| r.to_string())
}

#[cfg(test)]
mod tests;

//! The `[cluster]` section: its file format, the validated settings of the Kubernetes join and
//! their checks. Below `config` (which assembles the file) and above `model` only.

use std::net::{IpAddr, Ipv4Addr};

use serde::Deserialize;

use crate::dns::settings::DnsConfig;
use crate::model::validate_dns_name;

/// The Kubernetes release joined nodes run unless the configuration names another.
pub const DEFAULT_KUBERNETES_VERSION: &str = "v1.37.2";

#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RawCluster {
    /// Join `booted` nodes with a role to Kubernetes (off: nodes stop at `booted`).
    ///
    /// Default: `false`.
    enabled: Option<bool>,
    /// kubeadm's `clusterName`, in kubeconfigs.
    ///
    /// Default: `[dns] cluster_name`.
    name: Option<String>,
    /// The release a new cluster runs (what kubeadm installs, and the sysext nodes get); once the
    /// cluster exists, nodes join at the release it runs and only `lacave cluster upgrade` moves
    /// it.
    ///
    /// Default: `"v1.37.2"`.
    kubernetes_version: Option<String>,
    /// Where nodes and clients reach the API server.
    ///
    /// Default: `<cluster_name>.<zone>:6443`, the DNS name the daemon serves over Ready control planes.
    control_plane_endpoint: Option<String>,
    /// The pods' network; must not overlap `service_cidr` or, with the cluster enabled, the
    /// nodes' subnet.
    ///
    /// Default: `"10.244.0.0/16"`.
    pod_cidr: Option<String>,
    /// The services' network.
    ///
    /// Default: `"10.96.0.0/12"`.
    service_cidr: Option<String>,
    /// Extra names and addresses in the API server's certificate.
    ///
    /// Default: `[]`.
    api_server_sans: Option<Vec<String>>,
    /// The API server's OpenID Connect issuer (https; with `oidc_client_id`, or neither).
    ///
    /// Default: unset (no OIDC).
    oidc_issuer_url: Option<String>,
    /// The OIDC client id the API server accepts tokens for.
    ///
    /// Default: unset.
    oidc_client_id: Option<String>,
    /// The claim the user name is taken from.
    ///
    /// Default: `"email"`.
    oidc_username_claim: Option<String>,
    /// The claim the groups are taken from.
    ///
    /// Default: `"groups"`.
    oidc_groups_claim: Option<String>,
    /// The CA of the issuer, on the control planes.
    ///
    /// Default: `"/etc/kubernetes/ssl/lacave-root.pem"`.
    oidc_ca_file: Option<String>,
    /// Put before every user and group name an OIDC token gives the API server (and before
    /// the groups `[addons]` binds), so that no token can name one of Kubernetes' own
    /// (`system:masters`). Not empty, not `system:…`.
    ///
    /// Default: `"oidc:"`.
    oidc_prefix: Option<String>,
    /// The nodes' sshd port.
    ///
    /// Default: `22`.
    ssh_port: Option<u16>,
    /// kubeadm's `criSocket`.
    ///
    /// Default: `"unix:///run/containerd/containerd.sock"`.
    cri_socket: Option<String>,
    /// kubeadm preflight checks to ignore on every node (e.g. `SystemVerification` on a cgroup-v1
    /// kernel).
    ///
    /// Default: `[]`.
    ignore_preflight_errors: Option<Vec<String>>,
    /// Fields added to every node's `KubeletConfiguration` (`[cluster.kubelet_config]`, over the
    /// defaults `cgroupDriver = "systemd"` and Flatcar's `volumePluginDir`).
    ///
    /// Default: `{}`.
    #[schema(value_type = Option<Object>)]
    kubelet_config: Option<toml::Table>,
    /// How long a node's whole join may take, `booted` to `ready` (60–7200).
    ///
    /// Default: `900`.
    join_timeout_secs: Option<u32>,
    /// The life of the daemon's own cluster client certificate, renewed at two thirds of it
    /// without a restart (120 s – 366 days).
    ///
    /// Default: `7776000`.
    daemon_cert_lifetime_secs: Option<u64>,
    /// The fraction of their life after which the control planes' kubeadm certificates are
    /// renewed (checked hourly; between 0 and 1).
    ///
    /// Default: `0.67`.
    cert_renew_fraction: Option<f64>,
    /// Where `lacave mirror fetch kubernetes` finds `kubernetes-<version>/<image>` and its
    /// `SHA256SUMS`; must be `https://`.
    ///
    /// Default: `"https://github.com/flatcar/sysext-bakery/releases/download"`.
    sysext_base_url: Option<String>,
    /// Accept an `http://` `sysext_base_url` (tests, a lab's own server only).
    ///
    /// Default: `false`.
    allow_http_sysext: Option<bool>,
    /// Scheduled etcd snapshots (`[cluster.etcd_snapshot]`).
    etcd_snapshot: Option<RawEtcdSnapshot>,
}

/// `[cluster.etcd_snapshot]`.
#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RawEtcdSnapshot {
    /// An etcd snapshot every so many minutes once the cluster exists (0: only on request; at
    /// most 10080).
    ///
    /// Default: `360`.
    interval_minutes: Option<u32>,
    /// How many snapshots are kept, the oldest removed first (1–1000).
    ///
    /// Default: `28`.
    keep: Option<u32>,
    /// Where they are written (absolute; made 0700).
    ///
    /// Default: `<state_dir>/etcd-snapshots`.
    dir: Option<String>,
}

/// Scheduled snapshots of the cluster's etcd (`snapshot.rs`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EtcdSnapshotConfig {
    /// How often one is taken (0: only on request). 360 (6 hours) by default.
    pub interval_minutes: u32,
    /// How many are kept (the oldest go first). 28 (a week at the default interval).
    pub keep: u32,
    /// Where they are written; `<state_dir>/etcd-snapshots` when unset.
    pub dir: Option<std::path::PathBuf>,
}

/// The cluster the daemon builds from `booted` nodes.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// Join `booted` nodes to Kubernetes. Off: nodes stop at `booted`, as before the join.
    pub enabled: bool,
    /// kubeadm's `clusterName`, the name kubeconfigs carry.
    pub name: String,
    /// `v1.37.2`: what kubeadm installs, and the systemd-sysext image nodes get.
    pub kubernetes_version: String,
    /// Where `lacave mirror fetch kubernetes` finds the sysext images: a directory per release
    /// (`kubernetes-<version>/`) holding the image and `SHA256SUMS`, as the GitHub releases of
    /// Flatcar's sysext-bakery do.
    pub sysext_base_url: String,
    /// The daemon's DNS zone (`[dns] zone`, without the final dot): nodes are
    /// `<hostname>.<zone>` there.
    pub zone: String,
    /// Host (DNS name or address) and port every node and client reaches the API server at.
    pub endpoint_host: String,
    pub endpoint_port: u16,
    pub pod_cidr: ipnet::IpNet,
    pub service_cidr: ipnet::IpNet,
    /// Extra names and addresses in the API server's certificate.
    pub api_server_sans: Vec<String>,
    pub oidc: Option<Oidc>,
    /// Before every OIDC user and group name (`oidc:`).
    pub oidc_prefix: String,
    /// The port of every node's sshd.
    pub ssh_port: u16,
    /// The container runtime's socket on the nodes (kubeadm's `criSocket`).
    pub cri_socket: String,
    /// kubeadm preflight checks to ignore on every node (e.g. `SystemVerification` on a
    /// cgroup-v1 host); none by default.
    pub ignore_preflight_errors: Vec<String>,
    /// Fields added to every node's `KubeletConfiguration` (JSON object).
    pub kubelet_config: serde_json::Map<String, serde_json::Value>,
    /// How long one node's join (init, join, then Ready) may take before it fails.
    pub join_timeout_secs: u32,
    /// How long the daemon's own client certificate (user `lacave`) lives; it is renewed,
    /// and the API connection made again with it, at two thirds of that. 90 days by
    /// default; a test sets minutes.
    pub daemon_cert_lifetime_secs: u64,
    /// The fraction of their life after which the control planes' kubeadm certificates are
    /// renewed (checked hourly): 0.67 by default, as kubelet and cert-manager do.
    pub cert_renew_fraction: f64,
    pub etcd_snapshot: EtcdSnapshotConfig,
}

/// The API server's OpenID Connect settings (for the OIDC add-on).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Oidc {
    pub issuer_url: String,
    pub client_id: String,
    pub username_claim: String,
    pub groups_claim: String,
    /// The CA bundle on the nodes that signs the issuer's certificate.
    pub ca_file: String,
}

/// Where the final Ignition puts the lacave root CA on every node.
pub const DEFAULT_OIDC_CA_FILE: &str = "/etc/kubernetes/ssl/lacave-root.pem";

/// With `[identity]` on, the API server trusts its realm: the issuer, the client, the user
/// name from `preferred_username`, the groups from `groups`, the lacave root CA.
pub fn trust_identity(
    cluster: &mut ClusterConfig,
    identity: &crate::identity::settings::IdentityConfig,
    problem: &mut impl FnMut(&str, String),
) {
    if cluster.oidc.is_some() {
        problem(
            "cluster.oidc_issuer_url",
            "[identity] is on and makes the API server trust its realm: leave [cluster] oidc_issuer_url and oidc_client_id unset".into(),
        );
        return;
    }
    cluster.oidc = Some(Oidc {
        issuer_url: identity.issuer(),
        client_id: identity.client_id.clone(),
        username_claim: "preferred_username".into(),
        groups_claim: "groups".into(),
        ca_file: DEFAULT_OIDC_CA_FILE.into(),
    });
}

impl ClusterConfig {
    /// `host:port`, as kubeadm's `controlPlaneEndpoint`.
    pub fn endpoint(&self) -> String {
        format!("{}:{}", self.endpoint_host, self.endpoint_port)
    }
}

fn parse_version(v: &str) -> bool {
    let Some(rest) = v.strip_prefix("v1.") else {
        return false;
    };
    let parts: Vec<&str> = rest.split('.').collect();
    parts.len() == 2
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()))
}

/// Checks `[cluster]`. The endpoint defaults to the round-robin name the DNS serves over
/// control-plane nodes (`<dns.cluster_name>.<zone>:6443`); `node_subnet` is the provisioning
/// network, which the pod and service ranges must not overlap.
pub fn validate(
    raw: RawCluster,
    dns: &DnsConfig,
    node_subnet: Option<ipnet::Ipv4Net>,
    problem: &mut impl FnMut(&str, String),
) -> ClusterConfig {
    let name = raw.name.unwrap_or_else(|| dns.cluster_name.clone());
    if name.parse::<crate::model::Hostname>().is_err() {
        problem(
            "cluster.name",
            format!("{name:?} is not one DNS label (letters, digits, '-')"),
        );
    }
    let kubernetes_version = raw
        .kubernetes_version
        .unwrap_or_else(|| DEFAULT_KUBERNETES_VERSION.into());
    if !parse_version(&kubernetes_version) {
        problem(
            "cluster.kubernetes_version",
            format!("{kubernetes_version:?} is not a release like \"v1.37.2\""),
        );
    }
    let sysext_base_url = raw
        .sysext_base_url
        .unwrap_or_else(|| "https://github.com/flatcar/sysext-bakery/releases/download".into());
    // The sysext's only check is the release's SHA256SUMS, fetched from the same place and
    // not signed: over plain HTTP whoever is on the path could swap both. Plain HTTP only
    // when asked for by name (tests, a lab's local server).
    let allow_http_sysext = raw.allow_http_sysext.unwrap_or(false);
    if sysext_base_url.starts_with("http://") && !allow_http_sysext {
        problem(
            "cluster.sysext_base_url",
            format!(
                "{sysext_base_url:?} is plain HTTP, and the sysext is checked only against a SHA256SUMS fetched beside it: use https:// (or set cluster.allow_http_sysext = true for a test server)"
            ),
        );
    } else if !(sysext_base_url.starts_with("https://") || sysext_base_url.starts_with("http://")) {
        problem(
            "cluster.sysext_base_url",
            format!("{sysext_base_url:?} is not an https:// URL"),
        );
    }
    let default_host = format!(
        "{}.{}",
        dns.cluster_name,
        dns.zone.to_string().trim_end_matches('.')
    );
    let (endpoint_host, endpoint_port) = match raw.control_plane_endpoint.as_deref() {
        None => (default_host, 6443),
        Some(text) => match split_endpoint(text) {
            Ok(pair) => pair,
            Err(why) => {
                problem("cluster.control_plane_endpoint", why);
                (default_host, 6443)
            }
        },
    };
    let cidr =
        |key: &str, text: Option<String>, default: &str, problem: &mut dyn FnMut(&str, String)| {
            let text = text.unwrap_or_else(|| default.to_string());
            match text.parse::<ipnet::IpNet>() {
                Ok(net) if net.trunc() == net => net,
                Ok(net) => {
                    problem(
                        key,
                        format!("{text:?} has host bits set: write {}", net.trunc()),
                    );
                    net.trunc()
                }
                Err(_) => {
                    problem(
                        key,
                        format!("{text:?} is not a CIDR block (e.g. \"{default}\")"),
                    );
                    default.parse().expect("a valid default")
                }
            }
        };
    let pod_cidr = cidr("cluster.pod_cidr", raw.pod_cidr, "10.244.0.0/16", problem);
    let service_cidr = cidr(
        "cluster.service_cidr",
        raw.service_cidr,
        "10.96.0.0/12",
        problem,
    );
    if overlaps(&pod_cidr, &service_cidr) {
        problem(
            "cluster.service_cidr",
            format!("{service_cidr} overlaps cluster.pod_cidr {pod_cidr}"),
        );
    }
    // The ranges matter only to a cluster the daemon builds: a site without one may use any
    // network for its nodes (10.97.3.0/24 is inside the default service range).
    let enabled = raw.enabled.unwrap_or(false);
    if let Some(subnet) = node_subnet.map(ipnet::IpNet::V4).filter(|_| enabled) {
        for (key, net) in [
            ("cluster.pod_cidr", pod_cidr),
            ("cluster.service_cidr", service_cidr),
        ] {
            if overlaps(&net, &subnet) {
                problem(
                    key,
                    format!("{net} overlaps the nodes' network {subnet} (dhcp.subnet)"),
                );
            }
        }
    }
    let mut api_server_sans = Vec::new();
    for san in raw.api_server_sans.unwrap_or_default() {
        if san.parse::<IpAddr>().is_ok() {
            api_server_sans.push(san);
            continue;
        }
        match validate_dns_name(&san) {
            Ok(name) => api_server_sans.push(name),
            Err(e) => problem("cluster.api_server_sans", e.to_string()),
        }
    }
    let oidc_prefix = raw.oidc_prefix.unwrap_or_else(|| "oidc:".into());
    if oidc_prefix.is_empty()
        || oidc_prefix.starts_with("system:")
        || oidc_prefix
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
    {
        problem(
            "cluster.oidc_prefix",
            format!(
                "{oidc_prefix:?}: the prefix must be a non-empty word that is not system:… (without one, a token's group could be system:masters)"
            ),
        );
    }
    let oidc = match (raw.oidc_issuer_url, raw.oidc_client_id) {
        (None, None) => {
            for (key, set) in [
                (
                    "cluster.oidc_username_claim",
                    raw.oidc_username_claim.is_some(),
                ),
                ("cluster.oidc_groups_claim", raw.oidc_groups_claim.is_some()),
                ("cluster.oidc_ca_file", raw.oidc_ca_file.is_some()),
            ] {
                if set {
                    problem(
                        key,
                        "needs cluster.oidc_issuer_url and cluster.oidc_client_id".into(),
                    );
                }
            }
            None
        }
        (Some(issuer_url), Some(client_id)) => {
            if !issuer_url.starts_with("https://")
                || issuer_url.len() <= "https://".len()
                || issuer_url.contains(char::is_whitespace)
            {
                problem(
                    "cluster.oidc_issuer_url",
                    format!(
                        "{issuer_url:?} is not an https:// URL (the API server requires HTTPS)"
                    ),
                );
            }
            if client_id.is_empty() || client_id.contains(char::is_whitespace) {
                problem(
                    "cluster.oidc_client_id",
                    format!("{client_id:?} must be one word"),
                );
            }
            let ca_file = raw
                .oidc_ca_file
                .unwrap_or_else(|| DEFAULT_OIDC_CA_FILE.into());
            if !ca_file.starts_with('/') {
                problem(
                    "cluster.oidc_ca_file",
                    format!("{ca_file:?} is a path on the nodes: give it absolute"),
                );
            }
            Some(Oidc {
                issuer_url,
                client_id,
                username_claim: raw.oidc_username_claim.unwrap_or_else(|| "email".into()),
                groups_claim: raw.oidc_groups_claim.unwrap_or_else(|| "groups".into()),
                ca_file,
            })
        }
        (Some(_), None) => {
            problem(
                "cluster.oidc_client_id",
                "missing: cluster.oidc_issuer_url is set, and the API server needs both".into(),
            );
            None
        }
        (None, Some(_)) => {
            problem(
                "cluster.oidc_issuer_url",
                "missing: cluster.oidc_client_id is set, and the API server needs both".into(),
            );
            None
        }
    };
    let cri_socket = raw
        .cri_socket
        .unwrap_or_else(|| "unix:///run/containerd/containerd.sock".into());
    if !cri_socket.starts_with("unix:///") {
        problem(
            "cluster.cri_socket",
            format!("{cri_socket:?} is not a unix:/// socket URL"),
        );
    }
    let ignore_preflight_errors = raw.ignore_preflight_errors.unwrap_or_default();
    for check in &ignore_preflight_errors {
        if check.is_empty() || !check.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            problem(
                "cluster.ignore_preflight_errors",
                format!(
                    "{check:?} is not a kubeadm preflight check name (e.g. \"SystemVerification\")"
                ),
            );
        }
    }
    let mut kubelet_config = serde_json::Map::new();
    for (key, value) in raw.kubelet_config.unwrap_or_default() {
        if matches!(key.as_str(), "apiVersion" | "kind") {
            problem(
                &format!("cluster.kubelet_config.{key}"),
                "is set by the daemon (kubelet.config.k8s.io/v1beta1 KubeletConfiguration)".into(),
            );
            continue;
        }
        match serde_json::to_value(value) {
            Ok(v) => {
                kubelet_config.insert(key, v);
            }
            Err(e) => problem(&format!("cluster.kubelet_config.{key}"), e.to_string()),
        }
    }
    let join_timeout_secs = raw.join_timeout_secs.unwrap_or(900);
    if !(60..=7200).contains(&join_timeout_secs) {
        problem(
            "cluster.join_timeout_secs",
            format!("{join_timeout_secs} is not between 60 and 7200 seconds"),
        );
    }
    let daemon_cert_lifetime_secs = raw.daemon_cert_lifetime_secs.unwrap_or(90 * 86_400);
    if !(120..=366 * 86_400).contains(&daemon_cert_lifetime_secs) {
        problem(
            "cluster.daemon_cert_lifetime_secs",
            format!(
                "{daemon_cert_lifetime_secs} is not between 120 seconds and 366 days (31622400)"
            ),
        );
    }
    let cert_renew_fraction = raw.cert_renew_fraction.unwrap_or(0.67);
    if !(cert_renew_fraction > 0.0 && cert_renew_fraction < 1.0) {
        problem(
            "cluster.cert_renew_fraction",
            format!(
                "{cert_renew_fraction} is not between 0 and 1 (exclusive): the fraction of a certificate's life after which it is renewed (default 0.67)"
            ),
        );
    }
    let raw_snapshot = raw.etcd_snapshot.unwrap_or_default();
    let interval_minutes = raw_snapshot.interval_minutes.unwrap_or(360);
    if interval_minutes > 7 * 24 * 60 {
        problem(
            "cluster.etcd_snapshot.interval_minutes",
            format!(
                "{interval_minutes} is more than a week (10080): a snapshot that old is no way back (0 takes them only on request)"
            ),
        );
    }
    let keep = raw_snapshot.keep.unwrap_or(28);
    if !(1..=1000).contains(&keep) {
        problem(
            "cluster.etcd_snapshot.keep",
            format!("{keep} is not between 1 and 1000"),
        );
    }
    let snapshot_dir = raw_snapshot.dir.map(std::path::PathBuf::from);
    if let Some(dir) = snapshot_dir.as_ref().filter(|d| !d.is_absolute()) {
        problem(
            "cluster.etcd_snapshot.dir",
            format!("{:?} is not an absolute path", dir.display().to_string()),
        );
    }
    ClusterConfig {
        etcd_snapshot: EtcdSnapshotConfig {
            interval_minutes,
            keep,
            dir: snapshot_dir,
        },
        enabled,
        zone: dns.zone.to_string().trim_end_matches('.').to_string(),
        daemon_cert_lifetime_secs,
        cert_renew_fraction,
        name,
        kubernetes_version,
        sysext_base_url,
        endpoint_host,
        endpoint_port,
        pod_cidr,
        service_cidr,
        api_server_sans,
        oidc,
        oidc_prefix,
        ssh_port: match raw.ssh_port {
            Some(0) => {
                problem("cluster.ssh_port", "0 is not a port".into());
                22
            }
            Some(p) => p,
            None => 22,
        },
        cri_socket,
        ignore_preflight_errors,
        kubelet_config,
        join_timeout_secs,
    }
}

fn overlaps(a: &ipnet::IpNet, b: &ipnet::IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// `host:port` with a DNS name or an IPv4 address.
fn split_endpoint(text: &str) -> Result<(String, u16), String> {
    let bad = || format!("{text:?} is not host:port (e.g. \"kube.lacave:6443\")");
    let (host, port) = text.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().ok().filter(|p| *p != 0).ok_or_else(bad)?;
    if host.parse::<Ipv4Addr>().is_ok() {
        return Ok((host.to_string(), port));
    }
    let host = validate_dns_name(host).map_err(|e| e.to_string())?;
    if host.starts_with("*.") {
        return Err(bad());
    }
    Ok((host, port))
}

/// `v1.37.2` (or `v1.37.2-rc.0+abc`) → (1, 37, 2).
pub fn version_triple(text: &str) -> Option<(u32, u32, u32)> {
    let mut parts = text.strip_prefix('v')?.splitn(3, '.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    let patch = parts.next()?;
    let digits: String = patch.chars().take_while(char::is_ascii_digit).collect();
    Some((major, minor, digits.parse().ok()?))
}

/// Why nodes must not join at `configured` (`[cluster] kubernetes_version`) a cluster whose
/// API server runs `running`, by Kubernetes' skew policy: a kubelet is never newer than the
/// API server, nor more than three minor releases older. `None` when they may.
pub fn join_skew(configured: &str, running: &str) -> Option<String> {
    let (Some(want), Some(have)) = (version_triple(configured), version_triple(running)) else {
        return None;
    };
    let fix = format!(
        "a configuration edit does not upgrade a running cluster: set [cluster] kubernetes_version back to {running}, or upgrade the cluster to {configured} first"
    );
    if want > have {
        Some(format!(
            "[cluster] kubernetes_version is {configured} but the cluster's API server runs {running}: a node joining now would run a kubelet newer than its API server; {fix}"
        ))
    } else if want.0 != have.0 || have.1 > want.1 + 3 {
        Some(format!(
            "[cluster] kubernetes_version is {configured} but the cluster's API server runs {running}: more than three minor releases apart; {fix}"
        ))
    } else {
        None
    }
}

#[cfg(test)]
mod version_tests {
    use crate::cluster::settings::{join_skew, version_triple};

    #[test]
    fn joins_follow_kubernetes_skew_policy() {
        assert_eq!(version_triple("v1.37.2"), Some((1, 37, 2)));
        assert_eq!(version_triple("v1.38.0-rc.1+abc"), Some((1, 38, 0)));
        assert_eq!(version_triple("1.37.2"), None);
        assert_eq!(join_skew("v1.37.2", "v1.37.2"), None);
        // Older kubelets are fine, up to three minors.
        assert_eq!(join_skew("v1.36.4", "v1.37.2"), None);
        assert_eq!(join_skew("v1.34.0", "v1.37.2"), None);
        let newer = join_skew("v1.38.0", "v1.37.2").unwrap();
        assert!(newer.contains("newer than its API server"), "{newer}");
        assert!(newer.contains("set [cluster] kubernetes_version back to v1.37.2"));
        assert!(join_skew("v1.37.3", "v1.37.2").is_some());
        assert!(
            join_skew("v1.33.0", "v1.37.2")
                .unwrap()
                .contains("three minor")
        );
        assert_eq!(join_skew("garbage", "v1.37.2"), None);
    }
}

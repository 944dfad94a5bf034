//! What kubeadm is given: bootstrap tokens, the template context of its configurations, and
//! the commands run on a node. Pure: no SSH, no API.

use serde::Serialize;

use super::settings::ClusterConfig;
use crate::model::{Node, Role};

/// A bootstrap token (`[a-z0-9]{6}.[a-z0-9]{16}`), as kubeadm and the API server expect.
#[derive(Clone, PartialEq, Eq)]
pub struct BootstrapToken {
    pub id: String,
    pub secret: String,
}

impl std::fmt::Debug for BootstrapToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The secret half never reaches a log.
        write!(f, "BootstrapToken({}.****)", self.id)
    }
}

impl BootstrapToken {
    pub fn generate() -> BootstrapToken {
        const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
        let pick = |n: usize| -> String {
            let mut bytes = vec![0u8; n];
            getrandom::fill(&mut bytes).expect("the operating system's random generator works");
            // 252 = 7 × 36: rejecting above it keeps every character equally likely.
            let mut out = String::with_capacity(n);
            let mut i = 0;
            while out.len() < n {
                if i == bytes.len() {
                    getrandom::fill(&mut bytes).expect("random bytes");
                    i = 0;
                }
                if bytes[i] < 252 {
                    out.push(ALPHABET[usize::from(bytes[i]) % 36] as char);
                }
                i += 1;
            }
            out
        };
        BootstrapToken {
            id: pick(6),
            secret: pick(16),
        }
    }

    /// `id.secret`, what kubeadm takes.
    pub fn text(&self) -> String {
        format!("{}.{}", self.id, self.secret)
    }
}

#[derive(Serialize)]
struct NodeContext<'a> {
    hostname: &'a str,
    ip: String,
    role: &'a str,
}

#[derive(Serialize)]
struct OidcContext<'a> {
    issuer_url: &'a str,
    client_id: &'a str,
    username_claim: &'a str,
    groups_claim: &'a str,
    ca_file: &'a str,
    prefix: &'a str,
}

#[derive(Serialize)]
struct ClusterContext<'a> {
    name: &'a str,
    kubernetes_version: &'a str,
    endpoint: String,
    pod_cidr: String,
    service_cidr: String,
    cert_sans: Vec<String>,
    oidc: Option<OidcContext<'a>>,
    cri_socket: &'a str,
    ignore_preflight_errors: &'a [String],
    flex_volume_dir: &'static str,
}

/// The context of `kubeadm-init.yaml.j2` and `kubeadm-join.yaml.j2`.
#[derive(Serialize)]
pub struct Context<'a> {
    node: NodeContext<'a>,
    cluster: ClusterContext<'a>,
    kubelet_config: serde_json::Value,
    token: String,
    ca_cert_hash: &'a str,
    control_plane: bool,
}

/// The context for `node` (which has a hostname, an address and a role: the join loop only
/// takes such nodes).
pub fn context<'a>(
    cluster: &'a ClusterConfig,
    node: &'a Node,
    token: &BootstrapToken,
    ca_cert_hash: &'a str,
) -> Context<'a> {
    let role = node.role.unwrap_or(Role::Worker);
    let mut cert_sans = vec![cluster.endpoint_host.clone()];
    cert_sans.extend(cluster.api_server_sans.iter().cloned());
    let mut kubelet_config = serde_json::Map::new();
    kubelet_config.insert("apiVersion".into(), "kubelet.config.k8s.io/v1beta1".into());
    kubelet_config.insert("kind".into(), "KubeletConfiguration".into());
    // Flatcar's containerd uses systemd's cgroup driver; the kubelet must match it.
    kubelet_config.insert("cgroupDriver".into(), "systemd".into());
    // Flatcar's /usr is read-only: volume plugins live under /opt (as Flatcar documents).
    kubelet_config.insert("volumePluginDir".into(), FLEX_VOLUME_DIR.into());
    // Serving certificates from the cluster CA, through CSRs the daemon approves against its
    // registry (`csr.rs`), instead of self-signed ones nobody can check.
    kubelet_config.insert("serverTLSBootstrap".into(), true.into());
    kubelet_config.extend(cluster.kubelet_config.clone());
    Context {
        node: NodeContext {
            hostname: node.hostname.as_ref().map_or("", |h| h.as_str()),
            ip: node.ip.map(|ip| ip.to_string()).unwrap_or_default(),
            role: role.as_str(),
        },
        cluster: ClusterContext {
            name: &cluster.name,
            kubernetes_version: &cluster.kubernetes_version,
            endpoint: cluster.endpoint(),
            pod_cidr: cluster.pod_cidr.to_string(),
            service_cidr: cluster.service_cidr.to_string(),
            cert_sans,
            oidc: cluster.oidc.as_ref().map(|o| OidcContext {
                issuer_url: &o.issuer_url,
                client_id: &o.client_id,
                username_claim: &o.username_claim,
                groups_claim: &o.groups_claim,
                ca_file: &o.ca_file,
                prefix: &cluster.oidc_prefix,
            }),
            cri_socket: &cluster.cri_socket,
            ignore_preflight_errors: &cluster.ignore_preflight_errors,
            flex_volume_dir: FLEX_VOLUME_DIR,
        },
        kubelet_config: serde_json::Value::Object(kubelet_config),
        token: token.text(),
        ca_cert_hash,
        control_plane: role == Role::ControlPlane,
    }
}

/// Where kubelet and controller-manager look for volume plugins on Flatcar.
pub const FLEX_VOLUME_DIR: &str = "/opt/libexec/kubernetes/kubelet-plugins/volume/exec/";

/// Where the rendered configuration waits on the node (0600: it holds the token); removed
/// once kubeadm ran.
pub const CONFIG_PATH: &str = "/var/lib/lacave/kubeadm.yaml";

/// The label a node's role gets (kubeadm labels control planes itself).
pub fn role_labels(role: Option<Role>) -> Vec<(String, String)> {
    match role {
        Some(Role::Worker) => vec![("node-role.kubernetes.io/worker".into(), "worker".into())],
        _ => Vec::new(),
    }
}

/// The ClusterRoleBinding that gives the daemon's own user cluster-admin (its client
/// certificate is not in `system:masters`), applied with the first control plane's
/// admin.conf right after `kubeadm init`.
pub const DAEMON_USER: &str = "lacave";

pub fn daemon_binding_yaml() -> String {
    format!(
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata:\n  name: lacave:cluster-admin\nroleRef:\n  apiGroup: rbac.authorization.k8s.io\n  kind: ClusterRole\n  name: cluster-admin\nsubjects:\n  - apiGroup: rbac.authorization.k8s.io\n    kind: User\n    name: {DAEMON_USER}\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_have_kubeadms_shape_and_differ() {
        let a = BootstrapToken::generate();
        let b = BootstrapToken::generate();
        assert_ne!(a, b);
        let ok = |s: &str, n: usize| {
            s.len() == n
                && s.bytes()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        };
        assert!(ok(&a.id, 6) && ok(&a.secret, 16), "{}", a.text());
        assert!(!format!("{a:?}").contains(&a.secret));
    }
}

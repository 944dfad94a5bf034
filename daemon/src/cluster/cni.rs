//! The cluster's network plugin: nodes become Ready only with one. The daemon applies
//! flannel (vendored unmodified in `resources/cni/flannel/`, see its SOURCE.md) right after
//! `kubeadm init`, with the pod network set to `[cluster] pod_cidr`.

const FLANNEL: &str = include_str!("../../../resources/cni/flannel/kube-flannel.yml");
/// The pod network line of the upstream manifest's `net-conf.json`.
const UPSTREAM_NETWORK: &str = "\"Network\": \"10.244.0.0/16\"";

/// The manifest to apply for a cluster whose pods use `pod_cidr`.
pub fn flannel_manifest(pod_cidr: &ipnet::IpNet) -> String {
    FLANNEL.replacen(UPSTREAM_NETWORK, &format!("\"Network\": \"{pod_cidr}\""), 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pod_network_is_the_clusters() {
        assert_eq!(
            FLANNEL.matches(UPSTREAM_NETWORK).count(),
            1,
            "the vendored manifest changed shape"
        );
        let m = flannel_manifest(&"10.32.0.0/16".parse().unwrap());
        assert!(m.contains("\"Network\": \"10.32.0.0/16\""));
        assert!(!m.contains("10.244.0.0/16"));
        assert!(m.contains("kind: DaemonSet"));
    }
}

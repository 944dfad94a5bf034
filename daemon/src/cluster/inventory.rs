//! A kubespray inventory (`hosts.yaml`) from the registry, for those who keep the original
//! project's playbook: every registered node with an address and a role, in kubespray's
//! groups, reached as root with the daemon's own SSH key. Pure.

use serde_json::{Map, Value, json};

use crate::model::{Node, NodeState, Role};

/// The inventory as YAML. `key_path` is the daemon's private key on this host.
pub fn kubespray(nodes: &[Node], key_path: &str) -> String {
    let mut hosts = Map::new();
    let mut control = Map::new();
    let mut workers = Map::new();
    for node in nodes {
        let (Some(host), Some(ip), Some(role)) = (&node.hostname, node.ip, node.role) else {
            continue;
        };
        if node.state == NodeState::Discovered {
            continue;
        }
        let ip = ip.to_string();
        hosts.insert(
            host.to_string(),
            json!({ "ansible_host": ip, "ip": ip, "access_ip": ip }),
        );
        match role {
            Role::ControlPlane => control.insert(host.to_string(), json!({})),
            Role::Worker => workers.insert(host.to_string(), json!({})),
        };
    }
    let inventory = json!({
        "all": {
            "hosts": hosts,
            "vars": {
                "ansible_user": "root",
                "ansible_ssh_private_key_file": key_path,
                // Flatcar: kubespray lays its binaries and Python under /opt/bin.
                "bin_dir": "/opt/bin",
                "ansible_python_interpreter": "/opt/bin/python",
            },
            "children": {
                "kube_control_plane": { "hosts": control.clone() },
                "etcd": { "hosts": control },
                "kube_node": { "hosts": workers },
                "k8s_cluster": { "children": { "kube_control_plane": {}, "kube_node": {} } },
                "calico_rr": { "hosts": {} },
            },
        }
    });
    let mut out = String::from(
        "# kubespray inventory written by lacave from its registry (lacave cluster inventory)\n",
    );
    out.push_str(
        &serde_yaml::to_string(&Value::Object(match inventory {
            Value::Object(m) => m,
            _ => Map::new(),
        }))
        .expect("an inventory serializes"),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_follow_roles() {
        let node = |host: &str, ip: &str, role| Node {
            hostname: Some(host.parse().unwrap()),
            ip: Some(ip.parse().unwrap()),
            role: Some(role),
            state: NodeState::Ready,
            ..Node::discovered(
                "52:54:00:00:00:01".parse().unwrap(),
                time::OffsetDateTime::UNIX_EPOCH,
            )
        };
        let text = kubespray(
            &[
                node("kube01", "10.0.0.1", Role::ControlPlane),
                node("kube04", "10.0.0.4", Role::Worker),
            ],
            "/var/lib/lacave/ssh/id_ed25519",
        );
        let v: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
        let children = &v["all"]["children"];
        assert!(children["kube_control_plane"]["hosts"]["kube01"].is_mapping());
        assert!(children["etcd"]["hosts"]["kube01"].is_mapping());
        assert!(children["kube_node"]["hosts"]["kube04"].is_mapping());
        assert_eq!(v["all"]["hosts"]["kube04"]["ip"], "10.0.0.4");
    }
}

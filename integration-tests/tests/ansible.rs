//! The README's worked example of driving lacave from a configuration-management tool: the
//! real `ansible-playbook` (Debian's ansible-core) runs `deploy/examples/ansible-nodes.yml`
//! against a daemon on loopback: it registers nodes, changes nothing on a second run, updates
//! what differs and removes a node marked absent; the API token never appears in its output.

use std::path::Path;
use std::process::Command;

use lacave_integration_tests::DaemonProcess;

fn playbook(url: &str, token: &str, vars: &serde_json::Value) -> (String, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("nodes.json");
    std::fs::write(&file, vars.to_string()).unwrap();
    let out = Command::new("ansible-playbook")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/ansible-nodes.yml"))
        .arg("-e")
        .arg(format!("@{}", file.display()))
        .arg("-vvv")
        .env("LACAVE_URL", url)
        .env("LACAVE_TOKEN", token)
        .env("ANSIBLE_LOCAL_TEMP", dir.path())
        .env("ANSIBLE_HOME", dir.path())
        .env("ANSIBLE_NOCOLOR", "1")
        .env("ANSIBLE_LOCALHOST_WARNING", "false")
        .env("ANSIBLE_INVENTORY_UNPARSED_WARNING", "false")
        .output()
        .expect("ansible-playbook runs (Debian: ansible-core; scripts/prereqs.sh installs it)");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "ansible-playbook failed:\n{stdout}\n{stderr}"
    );
    assert!(
        !stdout.contains(token) && !stderr.contains(token),
        "the token was printed:\n{stdout}"
    );
    let recap = stdout
        .lines()
        .find(|l| l.starts_with("localhost"))
        .unwrap_or_default()
        .to_string();
    (recap, stdout)
}

fn changed(recap: &str) -> u32 {
    recap
        .split_whitespace()
        .find_map(|w| w.strip_prefix("changed="))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no changed= in {recap:?}"))
}

#[test]
fn the_ansible_example_registers_updates_and_removes_nodes_idempotently() {
    let state = tempfile::tempdir().unwrap();
    let daemon = DaemonProcess::start(state.path());
    let token = std::fs::read_to_string(state.path().join("api-token"))
        .unwrap()
        .trim()
        .to_string();
    let api = |method: &str, path: &str| {
        let out = Command::new("curl")
            .args(["-sS", "-X", method, "-H"])
            .arg(format!("Authorization: Bearer {token}"))
            .arg(format!("{}{path}", daemon.url))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let nodes = |kube01_labels: serde_json::Value, kube02_absent: bool| {
        serde_json::json!({"lacave_nodes": [
            {"hostname": "kube01", "mac": "52:54:00:00:10:01", "ip": "192.168.1.21",
             "role": "control-plane", "labels": kube01_labels},
            if kube02_absent {
                serde_json::json!({"hostname": "kube02", "absent": true})
            } else {
                serde_json::json!({"hostname": "kube02", "mac": "52:54:00:00:10:02",
                                   "ip": "192.168.1.22", "role": "worker"})
            },
        ]})
    };

    let (recap, out) = playbook(
        &daemon.url,
        &token,
        &nodes(serde_json::json!({"disktype": "ssd"}), false),
    );
    // Ansible counts changed tasks: one (the registration of both).
    assert_eq!(changed(&recap), 1, "{out}");
    let kube01: serde_json::Value =
        serde_json::from_str(&api("GET", "/api/v1/nodes/kube01")).unwrap();
    assert_eq!(kube01["labels"]["disktype"], "ssd", "{kube01}");
    assert_eq!(kube01["role"], "control-plane");
    assert!(api("GET", "/api/v1/nodes").contains("kube02"));

    // The same list again: nothing to change.
    let (recap, out) = playbook(
        &daemon.url,
        &token,
        &nodes(serde_json::json!({"disktype": "ssd"}), false),
    );
    assert_eq!(changed(&recap), 0, "{out}");

    // kube01's labels change, kube02 goes.
    let (recap, out) = playbook(
        &daemon.url,
        &token,
        &nodes(serde_json::json!({"disktype": "hdd", "rack": "r2"}), true),
    );
    // Two tasks changed something: the update of kube01, the removal of kube02.
    assert_eq!(changed(&recap), 2, "{out}");
    let kube01: serde_json::Value =
        serde_json::from_str(&api("GET", "/api/v1/nodes/kube01")).unwrap();
    assert_eq!(
        kube01["labels"],
        serde_json::json!({"disktype": "hdd", "rack": "r2"}),
        "{kube01}"
    );
    assert!(!api("GET", "/api/v1/nodes").contains("kube02"));
    let (recap, out) = playbook(
        &daemon.url,
        &token,
        &nodes(serde_json::json!({"disktype": "hdd", "rack": "r2"}), true),
    );
    assert_eq!(changed(&recap), 0, "{out}");
}

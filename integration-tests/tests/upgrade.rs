//! `lacave cluster upgrade` against real Kubernetes: a control plane and a worker joined at
//! an older release (`$K8S_UPGRADE_FROM`, v1.36.3 by default, built like the lab's default
//! one by `k8s/build.sh`) are upgraded to the lab's default release (v1.37.2) by the daemon,
//! unmodified: the skew rules and the mirror are checked first; a control plane whose
//! kubeadm fails stops the run with that node named, left cordoned and the worker untouched;
//! `--resume` then finishes. Every Node then reports the new kubelet, `kubectl version` the
//! new server, and the workloads (an object, a static pod, a Deployment's pod) survive.
//!
//! The nodes are the cluster test's (`k8s/node.sh`: real sshd, containerd, kubelet and
//! kubeadm in namespaces of their own, nothing out of the test LAN). The new release reaches
//! them as on Flatcar: a Kubernetes sysext image (squashfs, made here with mksquashfs from the
//! new release's binaries) in the daemon's mirror, fetched by the node over HTTP, checked
//! against the SHA-256 the mirror recorded, linked as `/etc/extensions/kubernetes.raw` and
//! merged by `systemd-sysext refresh` (a stand-in here, `k8s/systemd-sysext`: the nodes have
//! no systemd, and their binaries live in /usr/local/bin).

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use lacave_integration_tests::DaemonProcess;
use lacave_integration_tests::k8slab::{self, Lab, TestNode, kubectl, wait_for};
use lacave_integration_tests::netns::require_root;

const TO: &str = "v1.37.2";

fn from_version() -> String {
    std::env::var("K8S_UPGRADE_FROM").unwrap_or_else(|_| "v1.36.3".into())
}

/// A Kubernetes sysext image of `bin`'s kubeadm, kubelet and kubectl, as sysext-bakery makes
/// them (squashfs; usr/bin and an extension-release file), into the daemon's mirror with the
/// SHA-256 `lacave mirror fetch kubernetes` records.
fn put_sysext(mirror: &Path, bin: &str, version: &str) {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("usr/bin")).unwrap();
    std::fs::create_dir_all(root.path().join("usr/lib/extension-release.d")).unwrap();
    for b in ["kubeadm", "kubelet", "kubectl"] {
        std::fs::copy(Path::new(bin).join(b), root.path().join("usr/bin").join(b)).unwrap();
    }
    std::fs::write(
        root.path()
            .join("usr/lib/extension-release.d/extension-release.kubernetes"),
        "ID=flatcar\nSYSEXT_LEVEL=1.0\n",
    )
    .unwrap();
    let dir = mirror.join("kubernetes");
    std::fs::create_dir_all(&dir).unwrap();
    let image = dir.join(format!("kubernetes-{version}-x86-64.raw"));
    let out = Command::new("mksquashfs")
        .arg(root.path())
        .arg(&image)
        .args(["-all-root", "-noappend", "-quiet", "-comp", "gzip"])
        .output()
        .expect("mksquashfs (squashfs-tools; scripts/prereqs.sh installs it)");
    assert!(
        out.status.success(),
        "mksquashfs: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sum = Command::new("sha256sum").arg(&image).output().unwrap();
    let sum = String::from_utf8_lossy(&sum.stdout);
    std::fs::write(
        dir.join(format!("kubernetes-{version}-x86-64.raw.sha256")),
        format!("{}\n", sum.split_whitespace().next().unwrap()),
    )
    .unwrap();
}

#[test]
fn the_daemon_upgrades_kubernetes_one_node_at_a_time() {
    require_root("the upgrade test");
    let from = from_version();
    let old_bin = k8slab::script_for(Some(&from), "build.sh", &[]);
    let old_images = k8slab::script_for(Some(&from), "images.sh", &[&old_bin]);
    let new_bin = k8slab::script("build.sh", &[]);
    let new_images = k8slab::script("images.sh", &[&new_bin]);
    let Lab {
        bin,
        images,
        lan,
        state,
        daemon,
        api,
        key,
        config,
        ..
    } = Lab::start_on(
        old_bin,
        // The control planes hold both releases' images (nothing can be pulled here).
        format!("{old_images}:{new_images}"),
        &format!("kubernetes_version = \"{from}\""),
        k8slab::NO_ADDONS,
    );
    let cp1 = TestNode::start(&lan, 1, "cp1", true, &bin, &images, &key);
    // One worker, or $LACAVE_UPGRADE_WORKERS (bench/upgrade.sh: a control plane and two).
    let count: u8 = std::env::var("LACAVE_UPGRADE_WORKERS")
        .ok()
        .and_then(|n| n.parse().ok())
        .filter(|n| (1..=4).contains(n))
        .unwrap_or(1);
    let workers: Vec<TestNode> = (1..=count)
        .map(|i| TestNode::start(&lan, 1 + i, &format!("w{i}"), false, &bin, &images, &key))
        .collect();
    let w1 = &workers[0];
    let names: Vec<String> = std::iter::once("cp1".to_string())
        .chain(workers.iter().map(|w| w.name.clone()))
        .collect();
    let mut nodes: Vec<(&TestNode, &str)> = vec![(&cp1, "control-plane")];
    nodes.extend(workers.iter().map(|w| (w, "worker")));
    for (node, role) in nodes.iter().copied() {
        let body = serde_json::json!({
            "mac": node.mac, "hostname": node.name, "ip": node.ip, "role": role,
        });
        let out = api.call(&lan, "POST", "/api/v1/nodes", Some(&body.to_string()));
        assert!(out.contains(&node.name), "{out}");
    }
    for (node, _) in &nodes {
        node.boot(&node.host_key());
    }
    let all_ready = |what: &str, daemon: &DaemonProcess| {
        wait_for(
            what,
            600,
            || daemon.log(),
            || {
                names
                    .iter()
                    .all(|n| api.node(&lan, n)["state"] == "ready")
                    .then_some(())
            },
        )
    };
    all_ready("cp1 and w1 ready", &daemon);

    let cli = |args: &[&str]| api.cli(&lan, args);
    let kubeconfig = state.path().join("test.kubeconfig");
    let k = |args: &[&str]| {
        let text = std::fs::read_to_string(state.path().join("cluster/lacave.kubeconfig"))
            .unwrap()
            .replace("https://kube.lacave:6443", "https://10.123.0.11:6443");
        k8slab::assert_servers_inside("the daemon's kubeconfig", &text);
        std::fs::write(&kubeconfig, text).unwrap();
        kubectl(&lan, &kubeconfig, args, &new_bin)
    };
    let kubelet_of = |name: &str| {
        let (ok, out) = k(&[
            "get",
            "node",
            name,
            "-o",
            "jsonpath={.status.nodeInfo.kubeletVersion} {.spec.unschedulable}",
        ]);
        assert!(ok, "{out}");
        out.trim().to_string()
    };
    assert_eq!(kubelet_of("cp1"), from);
    for w in &workers {
        assert_eq!(kubelet_of(&w.name), from);
    }
    let status: serde_json::Value =
        serde_json::from_str(&api.call(&lan, "GET", "/api/v1/cluster", None)).unwrap();
    assert_eq!(status["joins_at"], from.as_str(), "{status}");

    // Workloads that must survive: an object, a static pod on the worker, a Deployment.
    let (ok, out) = k(&["create", "configmap", "kept", "--from-literal=when=before"]);
    assert!(ok, "{out}");
    std::fs::write(
        w1.dir.path().join("etc-up/kubernetes/manifests/survivor.yaml"),
        "apiVersion: v1\nkind: Pod\nmetadata: {name: survivor, namespace: default}\nspec:\n  containers: [{name: pause, image: \"registry.k8s.io/pause:3.10.2\"}]\n",
    )
    .unwrap();
    let (ok, out) = k(&[
        "create",
        "deployment",
        "moved",
        "--image=registry.k8s.io/pause:3.10.2",
    ]);
    assert!(ok, "{out}");
    let running = |what: &str, daemon: &DaemonProcess| {
        wait_for(
            what,
            300,
            || daemon.log(),
            || {
                let (_, pods) = k(&[
                    "get",
                    "pods",
                    "-o",
                    "jsonpath={range .items[*]}{.metadata.name}={.status.phase} {end}",
                ]);
                let up = |prefix: &str| {
                    pods.split_whitespace()
                        .any(|p| p.starts_with(prefix) && p.ends_with("=Running"))
                };
                (up("survivor-w1=") && up("moved-")).then_some(pods)
            },
        )
    };
    eprintln!(
        "workloads before: {}",
        running("workloads running", &daemon)
    );

    // Refusals, each naming why: two minors at once, and a release the mirror lacks.
    let (ok, _, err) = cli(&["cluster", "upgrade", "--to", "v1.38.0", "--dry-run"]);
    assert!(!ok && err.contains("one minor release at a time"), "{err}");
    let (ok, _, err) = cli(&["cluster", "upgrade", "--to", TO, "--dry-run"]);
    assert!(
        !ok && err.contains(&format!("does not hold kubernetes-{TO}-x86-64.raw")),
        "{err}"
    );
    let (ok, _, err) = cli(&["cluster", "upgrade", "--to", "latest"]);
    assert!(
        !ok && err.contains("to") && err.contains("not a Kubernetes release"),
        "{err}"
    );
    put_sysext(&state.path().join("mirror"), &new_bin, TO);
    let (ok, plan, err) = cli(&["cluster", "upgrade", "--to", TO, "--dry-run"]);
    assert!(ok, "{err}");
    let cp1_row = plan
        .lines()
        .find(|l| l.starts_with("cp1 "))
        .expect("cp1 planned");
    assert!(
        cp1_row.contains(&format!("kubeadm upgrade apply {TO}")),
        "{plan}"
    );
    let w1_row = plan
        .lines()
        .find(|l| l.starts_with("w1 "))
        .expect("w1 planned");
    assert!(w1_row.contains("kubeadm upgrade node"), "{plan}");
    assert!(
        plan.find("cp1 ").unwrap() < plan.find("w1 ").unwrap(),
        "control planes first: {plan}"
    );
    assert_eq!(kubelet_of("cp1"), from, "a dry run changes nothing");

    // A control plane whose kubeadm fails (no admin.conf): the run stops there, named, the
    // node left cordoned (said so), the worker untouched.
    cp1.exec("mv /etc/kubernetes/admin.conf /etc/kubernetes/admin.conf.away");
    let (ok, out, err) = cli(&["cluster", "upgrade", "--to", TO]);
    assert!(!ok, "{out}{err}");
    assert!(
        err.contains("cp1") && err.contains(&format!("kubeadm upgrade apply {TO}")),
        "{err}"
    );
    assert!(
        err.contains("left cordoned") && err.contains("not touched: w1"),
        "{err}"
    );
    let record: serde_json::Value =
        serde_json::from_str(&api.call(&lan, "GET", "/api/v1/cluster/upgrade", None)).unwrap();
    assert_eq!(record["state"], "failed", "{record}");
    assert_eq!(record["failed_node"], "cp1", "{record}");
    assert!(
        record["snapshot"].as_str().is_some(),
        "a snapshot first: {record}"
    );
    assert_eq!(record["nodes"][1]["state"], "pending", "{record}");
    assert_eq!(kubelet_of("cp1"), format!("{from} true"), "cp1 cordoned");
    assert_eq!(kubelet_of("w1"), from, "w1 untouched and schedulable");
    let w1_history = api.call(&lan, "GET", "/api/v1/nodes/w1/events", None);
    assert!(!w1_history.contains("\"upgrade\""), "{w1_history}");
    let cp1_history = api.call(&lan, "GET", "/api/v1/nodes/cp1/events", None);
    assert!(
        cp1_history.contains("admin.conf"),
        "the failure's output: {cp1_history}"
    );
    // A new run to another release is refused while this one is stopped.
    let (ok, _, err) = cli(&["cluster", "upgrade", "--to", "v1.37.3", "--dry-run"]);
    assert!(!ok && err.contains("--resume"), "{err}");

    // Fixed, resumed: every node upgraded, one at a time. The daemon is SIGKILLed once cp1 is
    // done and w1 under way; restarted, it resumes the run from w1 on its own.
    cp1.exec("mv /etc/kubernetes/admin.conf.away /etc/kubernetes/admin.conf");
    let started = Instant::now();
    let (ok, out, err) = cli(&["cluster", "upgrade", "--resume", "--no-wait"]);
    assert!(ok, "{out}{err}");
    let record = || -> serde_json::Value {
        serde_json::from_str(&api.call(&lan, "GET", "/api/v1/cluster/upgrade", None))
            .unwrap_or_default()
    };
    let w1_step = wait_for(
        "cp1 upgraded and w1 under way",
        900,
        || daemon.log(),
        || {
            let r = record();
            assert_ne!(r["state"], "failed", "{r}\n{}", daemon.log());
            (r["nodes"][0]["state"] == "done" && r["nodes"][1]["state"] == "running")
                .then(|| r["nodes"][1]["step"].as_str().unwrap_or("").to_string())
        },
    );
    eprintln!(
        "cp1 upgraded in {:.0} s; SIGKILL of the daemon during w1's step {w1_step:?}",
        started.elapsed().as_secs_f32()
    );
    drop(daemon);
    let daemon = DaemonProcess::start_custom(state.path(), &config, Some(&lan), &[]);
    wait_for(
        "the upgrade resumed and done after the daemon's restart",
        900,
        || daemon.log(),
        || {
            let r = record();
            assert_ne!(r["state"], "failed", "{r}\n{}", daemon.log());
            (r["state"] == "done").then_some(())
        },
    );
    let upgrade_secs = started.elapsed().as_secs_f32();
    eprintln!(
        "upgrade of {} to {TO}: {upgrade_secs:.0} s (a daemon restart included)",
        names.join(", ")
    );
    let log = daemon.log();
    assert!(
        log.contains("was interrupted") && log.contains("resuming the interrupted upgrade"),
        "{log}"
    );
    assert_eq!(kubelet_of("cp1"), TO);
    for w in &workers {
        assert_eq!(kubelet_of(&w.name), TO);
    }
    let (ok, version) = k(&["version", "-o", "json"]);
    assert!(ok, "{version}");
    let version: serde_json::Value = serde_json::from_str(&version).unwrap();
    assert_eq!(version["serverVersion"]["gitVersion"], TO, "{version}");
    let (ok, out) = k(&["get", "configmap", "kept", "-o", "jsonpath={.data.when}"]);
    assert!(ok && out == "before", "{out}");
    eprintln!(
        "workloads after: {}",
        running("workloads running after the upgrade", &daemon)
    );
    all_ready("cp1 and w1 ready after the upgrade", &daemon);
    // The record, the histories, and the release new nodes join at.
    let record: serde_json::Value =
        serde_json::from_str(&api.call(&lan, "GET", "/api/v1/cluster/upgrade", None)).unwrap();
    assert_eq!(record["state"], "done", "{record}");
    let status: serde_json::Value =
        serde_json::from_str(&api.call(&lan, "GET", "/api/v1/cluster", None)).unwrap();
    assert_eq!(status["joins_at"], TO, "{status}");
    for name in &names {
        let history = api.call(&lan, "GET", &format!("/api/v1/nodes/{name}/events"), None);
        let events: Vec<serde_json::Value> = serde_json::from_str(&history).unwrap();
        for e in events.iter().filter(|e| {
            e["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("upgraded to"))
        }) {
            eprintln!("{name}: {}", e["message"].as_str().unwrap_or_default());
        }
    }
    let w1_history = api.call(&lan, "GET", "/api/v1/nodes/w1/events", None);
    for step in [
        "systemd-sysext refresh",
        "kubeadm upgrade node",
        "upgraded to",
    ] {
        assert!(w1_history.contains(step), "{step}: {w1_history}");
    }
    // A machine registered now is given the new release's sysext by its final config.
    let late = TestNode::start(&lan, 9, "late", false, &bin, &images, &key);
    let body = serde_json::json!({
        "mac": late.mac, "hostname": "late", "ip": late.ip, "role": "worker",
    });
    let out = api.call(&lan, "POST", "/api/v1/nodes", Some(&body.to_string()));
    assert!(out.contains("late"), "{out}");
    let seg = late.mac.replace(':', "-");
    // Its install script first: the final config is served only during an install.
    late.curl(&[&format!("http://{}:8080/ipxe/{seg}", k8slab::SERVER)]);
    let ignition = late.curl(&[&format!(
        "http://{}:8080/ignition/{seg}/final",
        k8slab::SERVER
    )]);
    assert!(
        ignition.contains(&format!("kubernetes-{TO}-x86-64.raw"))
            && !ignition.contains(&format!("kubernetes-{from}-x86-64.raw")),
        "a node joining now gets {TO}: {ignition}"
    );
    let log = daemon.log();
    assert!(log.contains("cluster upgraded"), "{log}");
    // Nothing secret in what the upgrade wrote: no bootstrap-token-shaped string and not the
    // API token in any history, the record or the daemon's log.
    let mut texts = vec![
        ("the daemon's log".to_string(), log),
        ("the upgrade record".to_string(), record.to_string()),
    ];
    for name in &names {
        texts.push((
            format!("{name}'s history"),
            api.call(&lan, "GET", &format!("/api/v1/nodes/{name}/events"), None),
        ));
    }
    for (what, text) in &texts {
        assert!(
            k8slab::token_shaped(text).is_none() && !text.contains(&api.token),
            "{what} holds a secret: {:?}",
            k8slab::token_shaped(text)
        );
    }
    // kubeadm upgrade rewrote the nodes' kubeconfigs: each still names the lab only.
    cp1.assert_kubeconfigs_inside();
    for w in &workers {
        w.assert_kubeconfigs_inside();
    }
}

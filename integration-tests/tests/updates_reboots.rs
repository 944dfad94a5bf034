//! Coordinated reboots for Flatcar updates, with the real kubelet and API server of the
//! cluster lab (`k8s/node.sh`: nodes as namespaces with sshd, containerd, kubelet, kubeadm,
//! nothing out of the test LAN): a control plane and two workers report an update applied to
//! the daemon's Omaha endpoint through Flatcar's own Go Omaha library; the daemon reboots them
//! one at a time (the control plane first), each cordoned and drained before and uncordoned
//! after, waiting for each to come back Ready and report the new release (a reboot is the
//! node's services restarting, `k8s/systemctl`; the node's `update_engine_client` stand-in
//! reports as update_engine does after a boot). The daemon is killed while the first node is
//! being rebooted: restarted, it follows that reboot and starts no other early. A worker that
//! does not come back stops the rollout with it named and left cordoned, and the other worker
//! is not rebooted until `lacave updates resume`.

use std::path::Path;

use lacave_integration_tests::DaemonProcess;
use lacave_integration_tests::k8slab::{self, Lab, kubectl, wait_for};
use lacave_integration_tests::netns::require_root;

const OLD: &str = "4230.2.3";
const NEW: &str = "4459.2.1";

/// A release held in the mirror with its update payload, its record as `lacave mirror fetch`
/// writes it (the fetch itself is `tests/mirror_fetch.rs`'s).
fn put_release(mirror: &Path) {
    let dir = mirror.join(format!("stable/amd64-usr/{NEW}"));
    std::fs::create_dir_all(&dir).unwrap();
    let payload = dir.join("flatcar_production_update.gz");
    std::fs::write(&payload, vec![7u8; 100_000]).unwrap();
    let p = lacave::release::fetch::UpdatePayload::of_file(&payload).unwrap();
    let record = serde_json::json!({
        "version": NEW, "signer": "test", "verified_at": "", "sha512": {}, "signed_at": {},
        "update": p,
    });
    std::fs::write(dir.join(".verified"), record.to_string()).unwrap();
    std::os::unix::fs::symlink(NEW, mirror.join("stable/amd64-usr/current")).unwrap();
}

fn omaha_client() -> String {
    std::env::var("LACAVE_OMAHA_CLIENT").expect(
        "LACAVE_OMAHA_CLIENT (scripts/test builds the Omaha test client: ensure_omaha_client)",
    )
}

#[test]
fn applied_updates_are_rebooted_one_node_at_a_time_and_a_lost_node_stops_the_rollout() {
    require_root("the coordinated reboots test");
    let omaha = omaha_client();
    // bench/rollout.sh: every node comes back and the daemon is not killed; the times printed.
    let bench = std::env::var("LACAVE_ROLLOUT_BENCH").is_ok();
    let addons = format!("{}[updates]\nreboot_timeout_secs = 60\n", k8slab::NO_ADDONS);
    let mut lab = Lab::start_with(&addons);
    put_release(&lab.state.path().join("mirror"));
    let lab_nodes = vec![
        (lab.node(1, "cp1", true), "control-plane"),
        (lab.node(2, "w1", false), "worker"),
        (lab.node(3, "w2", false), "worker"),
    ];
    let (lan, api, state, bin, config) = (
        &lab.lan,
        &lab.api,
        lab.state.path().to_path_buf(),
        lab.bin.clone(),
        lab.config.clone(),
    );
    for (node, role) in &lab_nodes {
        lab.register(node, role, serde_json::json!({}));
        node.boot(&node.host_key());
    }
    let all_ready = |what: &str, daemon: &DaemonProcess| {
        wait_for(
            what,
            600,
            || daemon.log(),
            || {
                lab_nodes
                    .iter()
                    .all(|(n, _)| api.node(lan, &n.name)["state"] == "ready")
                    .then_some(())
            },
        )
    };
    all_ready("cp1, w1 and w2 ready", &lab.daemon);
    // Every kubeconfig kubeadm wrote points inside the lab (K8S-LAB.md, network safety).
    for (node, _) in &lab_nodes {
        node.assert_kubeconfigs_inside();
    }

    // Each node runs OLD and has NEW applied, waiting for a reboot: what update_engine
    // reports after an update (offered, downloading, downloaded, installed).
    let url = "http://10.123.0.1:8080/v1/update/";
    for (node, _) in &lab_nodes {
        node.exec(&format!(
            "mkdir -p /var/lib/lacave-test && cd /var/lib/lacave-test && echo {OLD} > version && echo {NEW} > staged && echo {omaha} > omaha && echo {url} > server"
        ));
        let client = |args: &[&str]| {
            let out = node
                .ns
                .command(&omaha)
                .args(args)
                .args(["-server", url, "-version", OLD, "-machine", &node.name])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        let answer = client(&["check"]);
        assert!(
            answer.contains(&format!("\"version\":\"{NEW}\"")),
            "{answer}"
        );
        if node.name == "w1" && !bench {
            // w1 will not come back from its reboot.
            node.exec("touch /var/lib/lacave-test/no-return");
        }
        for (kind, result) in [("13", "1"), ("14", "1"), ("800", "1")] {
            client(&["event", "-type", kind, "-result", result]);
        }
    }
    let status = || -> serde_json::Value {
        serde_json::from_str(&api.call(lan, "GET", "/api/v1/updates", None)).unwrap()
    };
    let node_state = |s: &serde_json::Value, name: &str| -> String {
        s["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["node"] == name)
            .map(|n| n["state"].as_str().unwrap_or_default().to_string())
            .unwrap_or_default()
    };

    // The control plane goes first; the daemon is killed while it reboots and restarted.
    wait_for(
        "cp1 being rebooted",
        120,
        || lab.daemon.log(),
        || {
            let s = status();
            let running = s["reboots"]["running"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            (running.len() == 1 && running[0]["hostname"] == "cp1" && running[0]["step"] == "wait")
                .then_some(())
        },
    );
    if bench {
        let s = wait_for(
            "every node rebooted into the new release",
            600,
            || lab.daemon.log(),
            || {
                let s = status();
                (["cp1", "w1", "w2"]
                    .iter()
                    .all(|n| node_state(&s, n) == "up-to-date")
                    && s["reboots"]["running"]
                        .as_array()
                        .is_some_and(Vec::is_empty))
                .then_some(s)
            },
        );
        let at = |v: &serde_json::Value| {
            time::OffsetDateTime::parse(
                v.as_str().unwrap(),
                &time::format_description::well_known::Rfc3339,
            )
            .unwrap()
        };
        let runs = s["reboots"]["finished"].as_array().unwrap();
        for r in runs {
            eprintln!(
                "{}: cordoned, drained, rebooted, back Ready on {NEW}, uncordoned in {:.1} s",
                r["hostname"].as_str().unwrap(),
                (at(&r["finished_at"]) - at(&r["started_at"])).as_seconds_f64()
            );
        }
        eprintln!(
            "rollout of cp1, w1 and w2: {:.1} s from the first cordon to the last uncordon",
            (at(&runs[runs.len() - 1]["finished_at"]) - at(&runs[0]["started_at"]))
                .as_seconds_f64()
        );
        return;
    }
    lab.daemon.kill();
    lab.daemon = DaemonProcess::start_custom(&state, &config, Some(lan), &[]);
    wait_for(
        "cp1 rebooted into the new release",
        300,
        || lab.daemon.log(),
        || {
            let s = status();
            (node_state(&s, "cp1") == "up-to-date"
                && s["reboots"]["finished"].as_array().is_some_and(|f| {
                    f.iter()
                        .any(|r| r["hostname"] == "cp1" && r["step"] == "done")
                }))
            .then_some(())
        },
    );

    // Then w1, which does not come back: the rollout stops, w2 untouched.
    let stopped = wait_for(
        "the rollout stopped at w1",
        300,
        || lab.daemon.log(),
        || status()["reboots"]["stopped"].as_str().map(str::to_string),
    );
    assert!(stopped.contains("w1: reboot into Flatcar"), "{stopped}");
    assert!(stopped.contains("not back within 60 s"), "{stopped}");
    assert!(stopped.contains("left cordoned"), "{stopped}");
    let (w1, w2) = (&lab_nodes[1].0, &lab_nodes[2].0);
    std::thread::sleep(std::time::Duration::from_secs(12));
    assert!(
        w2.reboots().is_empty(),
        "w2 was rebooted after the rollout stopped"
    );
    assert_eq!(node_state(&status(), "w2"), "applied");

    // w1 mended (its services back, on the new release); resumed, w2 goes.
    w1.exec("rm /var/lib/lacave-test/no-return");
    w1.exec(
        "cd /var/lib/lacave-test && mv version previous && mv staged version && systemctl start kubelet && update_engine_client -check_for_update",
    );
    let kubeconfig = state.join("test.kubeconfig");
    let k = |args: &[&str]| {
        let text = std::fs::read_to_string(state.join("cluster/lacave.kubeconfig"))
            .unwrap()
            .replace("https://kube.lacave:6443", "https://10.123.0.11:6443");
        k8slab::assert_servers_inside("the daemon's kubeconfig", &text);
        std::fs::write(&kubeconfig, text).unwrap();
        kubectl(lan, &kubeconfig, args, &bin)
    };
    let (ok, out) = k(&["uncordon", "w1"]);
    assert!(ok, "{out}");
    let (ok, _, err) = api.cli(lan, &["updates", "resume"]);
    assert!(ok, "{err}");
    wait_for(
        "w2 rebooted into the new release",
        300,
        || lab.daemon.log(),
        || {
            let s = status();
            (node_state(&s, "w2") == "up-to-date"
                && s["reboots"]["running"]
                    .as_array()
                    .is_some_and(Vec::is_empty))
            .then_some(())
        },
    );

    // One reboot each, never two at once, each drained before and uncordoned after.
    let mut spans: Vec<(f64, f64, String)> = Vec::new();
    for (node, _) in &lab_nodes {
        let r = node.reboots();
        assert_eq!(r.len(), 1, "{}: {r:?}", node.name);
        spans.push((r[0].0, r[0].1, node.name.clone()));
    }
    spans.sort_by(|a, b| a.0.total_cmp(&b.0));
    assert_eq!(
        spans.iter().map(|s| s.2.as_str()).collect::<Vec<_>>(),
        ["cp1", "w1", "w2"]
    );
    for pair in spans.windows(2) {
        // w1 never ended its reboot (its end is infinite): it was mended by hand after the
        // stop; w2 started only after the resume.
        assert!(
            pair[1].0 > pair[0].1 || pair[0].2 == "w1",
            "{} rebooted while {} was: {spans:?}",
            pair[1].2,
            pair[0].2
        );
    }
    for name in ["cp1", "w2"] {
        let shown = api.call(lan, "GET", &format!("/api/v1/nodes/{name}/events"), None);
        assert!(
            shown.contains("cordoned and drained for the reboot into Flatcar"),
            "{shown}"
        );
        assert!(shown.contains("back Ready, uncordoned"), "{shown}");
        k8slab::assert_no_secret_in("the events", &shown, &state);
    }
    let (ok, out) = k(&[
        "get",
        "nodes",
        "-o",
        "jsonpath={range .items[*]}{.metadata.name}={.spec.unschedulable} {end}",
    ]);
    assert!(ok, "{out}");
    assert!(!out.contains("true"), "a node left cordoned: {out}");
    let s = status();
    for name in ["cp1", "w1", "w2"] {
        assert_eq!(node_state(&s, name), "up-to-date", "{s}");
    }
    k8slab::assert_no_secret_in("the daemon's log", &lab.daemon.log(), &state);
    drop(lab_nodes);
}

//! The cluster join against real Kubernetes: the daemon, unmodified, takes `booted` nodes
//! through a real `kubeadm init` and `kubeadm join` over SSH, to `ready` in the registry and
//! Ready in the API server, with the registry's labels.
//!
//! Each node is a network namespace on a test LAN (a bridge inside the daemon's namespace,
//! with no route out) plus its own PID, mount and UTS namespaces (`k8s/node.sh`): a real sshd,
//! containerd, kubelet and kubeadm, with images made from binaries built from source
//! (`k8s/build.sh`, `k8s/images.sh`; cached outside the clone). Nodes reach `booted` through
//! the daemon's real boot endpoints and callbacks, posting their own SSH host key. Every
//! kubeconfig the test uses is checked to point inside the test LAN.

use std::process::Command;
use std::time::Instant;

use lacave_integration_tests::DaemonProcess;
use lacave_integration_tests::k8slab::{
    Api, Lab, TestNode, booted_to_ready, kubectl, token_shaped, wait_for,
};
use lacave_integration_tests::netns::{Netns, require_root, sh};

#[test]
fn booted_nodes_become_ready_kubernetes_nodes() {
    require_root("the cluster test");
    let Lab {
        bin,
        images,
        lan,
        state,
        config,
        daemon,
        api,
        key: daemon_key,
    } = Lab::start_custom(
        // The daemon's own certificate renews (at two thirds: 120 s) while the test runs.
        "daemon_cert_lifetime_secs = 180",
        lacave_integration_tests::k8slab::NO_ADDONS,
    );
    let first_credential =
        std::fs::read_to_string(state.path().join("cluster/lacave.kubeconfig")).unwrap();

    let nodes = [
        TestNode::start(&lan, 1, "cp1", true, &bin, &images, daemon_key.trim()),
        TestNode::start(&lan, 2, "w1", false, &bin, &images, daemon_key.trim()),
        // A second control plane: kubeadm join --control-plane with the daemon's PKI.
        TestNode::start(&lan, 6, "cp2", true, &bin, &images, daemon_key.trim()),
    ];
    for (node, role) in nodes
        .iter()
        .zip(["control-plane", "worker", "control-plane"])
    {
        let body = serde_json::json!({
            "mac": node.mac, "hostname": node.name, "ip": node.ip, "role": role,
            "labels": {"disktype": "ssd"},
        });
        let created = api.call(&lan, "POST", "/api/v1/nodes", Some(&body.to_string()));
        assert!(created.contains(&node.name), "{created}");
    }
    let started = Instant::now();
    for node in &nodes {
        node.boot(&node.host_key());
    }

    for node in &nodes {
        wait_for(
            &format!("{} ready", node.name),
            600,
            || daemon.log(),
            || {
                let n = api.node(&lan, &node.name);
                match n["state"].as_str() {
                    Some("ready") => Some(()),
                    Some("failed") => panic!(
                        "{} failed: {}\n--- history ---\n{}\n--- daemon log ---\n{}",
                        node.name,
                        n["failure"],
                        api.call(
                            &lan,
                            "GET",
                            &format!("/api/v1/nodes/{}/events", node.name),
                            None
                        ),
                        daemon.log()
                    ),
                    _ => None,
                }
            },
        );
    }
    eprintln!(
        "all nodes ready {:.1} s after booted",
        started.elapsed().as_secs_f32()
    );
    for node in &nodes {
        eprintln!(
            "{}: booted → ready in {:.1} s",
            node.name,
            booted_to_ready(&api, &lan, &node.name)
        );
    }

    // The Kubernetes API agrees, with the registry's labels; kubectl runs inside the LAN
    // with the daemon's own credential, its server checked to be the control plane there.
    let kubeconfig = state.path().join("test.kubeconfig");
    // The daemon's credential lives 180 s here (renewed at 120 s): a copy is taken again
    // before each later use.
    let daemon_kubeconfig = || {
        let text = std::fs::read_to_string(state.path().join("cluster/lacave.kubeconfig"))
            .unwrap()
            .replace("https://kube.lacave:6443", "https://10.123.0.11:6443");
        std::fs::write(&kubeconfig, &text).unwrap();
        text
    };
    let text = daemon_kubeconfig();
    // Every kubeconfig kubeadm generated on the nodes names the lab only.
    for node in &nodes {
        node.assert_kubeconfigs_inside();
    }
    for line in text.lines().filter(|l| l.contains("\"server\"")) {
        assert!(
            line.contains("https://10.123.0.11:6443"),
            "a server outside the test LAN: {line}"
        );
    }
    std::fs::write(&kubeconfig, text).unwrap();
    let (ok, out) = kubectl(&lan, &kubeconfig, &["get", "nodes", "-o", "json"], &bin);
    assert!(ok, "{out}");
    let list: serde_json::Value = serde_json::from_str(&out).unwrap();
    for node in &nodes {
        let k = list["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["metadata"]["name"] == node.name.as_str())
            .unwrap_or_else(|| panic!("{} is a Node", node.name));
        let ready = k["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True");
        assert!(ready, "{} Ready", node.name);
        assert_eq!(k["metadata"]["labels"]["disktype"], "ssd", "{}", node.name);
    }
    // w1's labels as the API server has them.
    let w1_labels = || {
        let (_, out) = kubectl(
            &lan,
            &kubeconfig,
            &["get", "node", "w1", "-o", "json"],
            &bin,
        );
        let v: serde_json::Value = serde_json::from_str(&out).ok()?;
        Some(v["metadata"]["labels"].clone())
    };
    let labels = wait_for(
        "the worker's role label",
        30,
        || daemon.log(),
        || w1_labels().filter(|l| l["node-role.kubernetes.io/worker"] == "worker"),
    );
    assert_eq!(labels["disktype"], "ssd");

    // The network plugin was applied right after kubeadm init, by the daemon, with the
    // cluster's pod network (its pods cannot pull images here: the nodes' own bridge
    // configuration makes them Ready).
    let (ok, out) = kubectl(
        &lan,
        &kubeconfig,
        &[
            "-n",
            "kube-flannel",
            "get",
            "daemonset",
            "kube-flannel-ds",
            "-o",
            "json",
            "--show-managed-fields",
        ],
        &bin,
    );
    assert!(ok, "{out}");
    assert!(
        out.contains("\"manager\": \"lacave\""),
        "applied by the daemon: {out}"
    );
    let (ok, out) = kubectl(
        &lan,
        &kubeconfig,
        &[
            "-n",
            "kube-flannel",
            "get",
            "configmap",
            "kube-flannel-cfg",
            "-o",
            "jsonpath={.data.net-conf\\.json}",
        ],
        &bin,
    );
    assert!(ok && out.contains("10.245.0.0/16"), "{out}");

    // Every bootstrap token the daemon made is gone once its node is Ready.
    let (ok, out) = kubectl(
        &lan,
        &kubeconfig,
        &[
            "-n",
            "kube-system",
            "get",
            "secrets",
            "--field-selector",
            "type=bootstrap.kubernetes.io/token",
            "-o",
            "name",
        ],
        &bin,
    );
    assert!(ok, "{out}");
    assert!(out.trim().is_empty(), "tokens left: {out}");

    // The registry's labels stay in step with the Node.
    let patched = api.call(
        &lan,
        "PATCH",
        "/api/v1/nodes/w1",
        Some(r#"{"labels": {"disktype": "hdd", "zone": "b"}}"#),
    );
    assert!(patched.contains("hdd"), "{patched}");
    wait_for(
        "new labels on the Node",
        30,
        || daemon.log(),
        || {
            w1_labels().filter(|l| {
                l["disktype"] == "hdd"
                    && l["zone"] == "b"
                    && l["node-role.kubernetes.io/worker"] == "worker"
            })
        },
    );

    // A machine whose sshd does not hold the key its node pinned is never joined.
    let impostor = TestNode::start(&lan, 3, "w2", false, &bin, &images, daemon_key.trim());
    let body = serde_json::json!({
        "mac": impostor.mac, "hostname": "w2", "ip": impostor.ip, "role": "worker",
    });
    api.call(&lan, "POST", "/api/v1/nodes", Some(&body.to_string()));
    let other_key = tempfile::tempdir().unwrap();
    let key_path = other_key.path().join("k");
    sh(
        "ssh-keygen",
        &[
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-f",
            key_path.to_str().unwrap(),
        ],
    );
    impostor.boot(&std::fs::read_to_string(key_path.with_extension("pub")).unwrap());
    let failure = failure_of(&lan, &api, "w2", &daemon);
    assert_eq!(failure["phase"], "join");
    let reason = failure["reason"].as_str().unwrap();
    assert!(reason.contains("not the pinned"), "{reason}");
    let (_, out) = kubectl(&lan, &kubeconfig, &["get", "node", "w2"], &bin);
    assert!(
        out.contains("NotFound") || out.contains("not found"),
        "{out}"
    );

    // A join killed halfway (kubeadm dies on the node) fails the node, with the command; an
    // operator's rejoin resets the node and joins it.
    let w3 = TestNode::start(&lan, 4, "w3", false, &bin, &images, daemon_key.trim());
    boot_with_join_held(&lan, &api, &w3, &daemon);
    w3.exec("pkill -KILL -f '^kubeadm join'");
    let failure = failure_of(&lan, &api, "w3", &daemon);
    assert_eq!(failure["phase"], "join");
    w3.exec("iptables -D OUTPUT -p tcp --dport 6443 -j DROP");
    assert!(
        failure["reason"].as_str().unwrap().contains("kubeadm join"),
        "{failure}"
    );
    let rejoined = api.call(&lan, "POST", "/api/v1/nodes/w3/rejoin", None);
    assert!(rejoined.contains("\"booted\""), "{rejoined}");
    wait_for(
        "w3 ready after rejoin",
        180,
        || daemon.log(),
        || (api.node(&lan, "w3")["state"] == "ready").then_some(()),
    );
    let events = api.call(&lan, "GET", "/api/v1/nodes/w3/events", None);
    assert_eq!(
        events.matches("kubeadm reset -f").count(),
        2,
        "the rejoin reset the node: {events}"
    );

    // The daemon SIGKILLed in the middle of a join: the restarted daemon retries it.
    let w4 = TestNode::start(&lan, 5, "w4", false, &bin, &images, daemon_key.trim());
    boot_with_join_held(&lan, &api, &w4, &daemon);
    drop(daemon);
    w4.exec("iptables -D OUTPUT -p tcp --dport 6443 -j DROP");
    assert_eq!(
        api.node(&lan, "w4"),
        serde_json::Value::Null,
        "the daemon is gone"
    );
    let daemon = DaemonProcess::start_custom(state.path(), &config, Some(&lan), &[]);
    wait_for(
        "w4 ready after the daemon's restart",
        180,
        || daemon.log(),
        || match api.node(&lan, "w4")["state"].as_str() {
            Some("ready") => Some(()),
            Some("failed") => panic!(
                "w4 failed: {}",
                api.call(&lan, "GET", "/api/v1/nodes/w4/events", None)
            ),
            _ => None,
        },
    );
    let events = api.call(&lan, "GET", "/api/v1/nodes/w4/events", None);
    assert!(
        events.contains("interrupted"),
        "the retry is in w4's history: {events}"
    );
    // The kubeadm join the killed daemon left running on w4 was stopped before the reset.
    assert!(
        events.contains("stopped 1 command(s) an earlier try left running"),
        "the leftover kubeadm was stopped: {events}"
    );
    let (_, out) = kubectl(&lan, &kubeconfig, &["get", "nodes"], &bin);
    assert_eq!(
        out.lines().filter(|l| l.contains(" Ready ")).count(),
        5,
        "{out}"
    );
    // The endpoint names both Ready control planes.
    let dig = |name: &str| {
        let out = lan
            .command("dig")
            .args(["+short", "@10.123.0.1", name])
            .output()
            .unwrap();
        let mut ips: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect();
        ips.sort();
        ips
    };
    assert_eq!(dig("kube.lacave"), ["10.123.0.11", "10.123.0.16"]);

    // Ready is not forever: cp2's API server stops (its static pod's manifest taken away);
    // within 30 s the endpoint names cp1 alone and cp2 is notready, with /metrics saying so.
    // Started again, cp2 is back in the endpoint.
    let stopped = Instant::now();
    nodes[2].exec(
        "mv /etc/kubernetes/manifests/kube-apiserver.yaml /etc/kubernetes/kube-apiserver.yaml.off",
    );
    wait_for(
        "cp2 out of the endpoint",
        30,
        || daemon.log(),
        || (dig("kube.lacave") == ["10.123.0.11"]).then_some(()),
    );
    eprintln!(
        "cp2's API server stopped: out of the endpoint after {:.1} s",
        stopped.elapsed().as_secs_f32()
    );
    let cp2 = api.node(&lan, "cp2");
    assert_eq!(cp2["state"], "notready", "{cp2}");
    assert!(
        lan.http_get("http://10.123.0.1:8080/metrics")
            .contains("lacave_nodes{state=\"notready\"} 1"),
        "/metrics counts the notready node"
    );
    let restarted = Instant::now();
    nodes[2].exec(
        "mv /etc/kubernetes/kube-apiserver.yaml.off /etc/kubernetes/manifests/kube-apiserver.yaml",
    );
    wait_for(
        "cp2 back in the endpoint",
        120,
        || daemon.log(),
        || (dig("kube.lacave") == ["10.123.0.11", "10.123.0.16"]).then_some(()),
    );
    eprintln!(
        "cp2's API server started again: back in the endpoint after {:.1} s (the API server's own start included)",
        restarted.elapsed().as_secs_f32()
    );
    assert_eq!(api.node(&lan, "cp2")["state"], "ready");
    let events = api.call(&lan, "GET", "/api/v1/nodes/cp2/events", None);
    assert!(events.contains("does not answer /readyz"), "{events}");

    // The operator's view: `lacave cluster status` shows what the registry and the API
    // server say of every node.
    let cli = |args: &[&str]| api.cli(&lan, args);
    let (ok, status, err) = cli(&["cluster", "status"]);
    assert!(ok, "{err}");
    let w1_row = status
        .lines()
        .find(|l| l.starts_with("w1 "))
        .expect("w1 in the status");
    for word in ["worker", "ready", "Ready", "v1.37.2", "disktype=hdd"] {
        assert!(w1_row.contains(word), "{word} in {w1_row}");
    }
    assert!(status.contains("initialized by cp1"), "{status}");

    // Every certificate that can expire, with days left (issue #26): kubeadm's report on each
    // control plane, each node's kubelet client and serving certificates, the cluster's CAs
    // and the daemon's own; in /metrics too.
    let (ok, certs, err) = cli(&["cluster", "certs", "--refresh", "--json"]);
    assert!(ok, "{err}");
    let report: serde_json::Value = serde_json::from_str(&certs).unwrap();
    assert_eq!(report["errors"], serde_json::json!([]), "{certs}");
    let cert = |node: &str, name: &str| {
        report["certificates"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["node"] == node && c["cert"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("{name} on {node} in {certs}"))
    };
    for cp in ["cp1", "cp2"] {
        for name in [
            "apiserver",
            "apiserver-kubelet-client",
            "etcd-server",
            "front-proxy-client",
            "admin.conf",
            "ca",
        ] {
            let c = cert(cp, name);
            assert!(c["days_left"].as_i64().unwrap() >= 360, "{c}");
        }
    }
    for node in ["cp1", "cp2", "w1"] {
        for name in ["kubelet-client", "kubelet-serving"] {
            assert!(cert(node, name)["days_left"].as_i64().unwrap() >= 300);
        }
        // Serving certificates from the cluster CA (serverTLSBootstrap), their CSRs approved
        // by the daemon against its registry, not self-signed.
        assert_eq!(
            cert(node, "kubelet-serving")["authority"],
            "kubernetes",
            "{node}"
        );
    }
    let (ok, csrs) = kubectl(&lan, &kubeconfig, &["get", "csr", "-o", "json"], &bin);
    assert!(ok, "{csrs}");
    let csrs: serde_json::Value = serde_json::from_str(&csrs).unwrap();
    let approved = csrs["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| {
            c["spec"]["signerName"] == "kubernetes.io/kubelet-serving"
                && c["status"]["conditions"][0]["type"] == "Approved"
                && c["status"]["conditions"][0]["reason"] == "LacaveRegistry"
        })
        .count();
    assert!(approved >= 3, "{csrs}");
    // A serving CSR not from a node's kubelet (here the daemon's own credential) is denied,
    // with the reason.
    let key = std::process::Command::new("openssl")
        .args([
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ])
        .args([
            "-keyout",
            "/dev/null",
            "-subj",
            "/O=system:nodes/CN=system:node:w1",
        ])
        .args(["-addext", "subjectAltName=DNS:w1,IP:10.123.0.99"])
        .output()
        .unwrap();
    assert!(
        key.status.success(),
        "{}",
        String::from_utf8_lossy(&key.stderr)
    );
    let request = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &key.stdout);
    let forged = serde_json::json!({
        "apiVersion": "certificates.k8s.io/v1",
        "kind": "CertificateSigningRequest",
        "metadata": {"name": "forged-w1-serving"},
        "spec": {
            "request": request,
            "signerName": "kubernetes.io/kubelet-serving",
            "usages": ["digital signature", "server auth"],
        }
    });
    let forged_path = state.path().join("forged-csr.json");
    std::fs::write(&forged_path, forged.to_string()).unwrap();
    daemon_kubeconfig();
    let (ok, out) = kubectl(
        &lan,
        &kubeconfig,
        &["create", "-f", forged_path.to_str().unwrap()],
        &bin,
    );
    assert!(ok, "{out}");
    wait_for(
        "the forged serving CSR denied",
        30,
        || daemon.log(),
        || {
            daemon_kubeconfig();
            let (_, out) = kubectl(
                &lan,
                &kubeconfig,
                &["get", "csr", "forged-w1-serving", "-o", "json"],
                &bin,
            );
            let csr: serde_json::Value = serde_json::from_str(&out).ok()?;
            let c = &csr["status"]["conditions"][0];
            (c["type"] == "Denied").then(|| c["message"].as_str().unwrap_or_default().to_string())
        },
    );
    for name in ["cluster-ca", "front-proxy-ca", "etcd-ca"] {
        assert!(cert("lacave", name)["days_left"].as_i64().unwrap() >= 3600);
    }
    // The daemon's own lasts daemon_cert_lifetime_secs (180 s here).
    assert_eq!(cert("lacave", "lacave-client")["days_left"], 0);
    let (ok, table, err) = cli(&["cluster", "certs"]);
    assert!(
        ok && table.contains("DAYS LEFT") && table.contains("kubelet-serving"),
        "{table}{err}"
    );
    let metrics = lan.http_get("http://10.123.0.1:8080/metrics");
    assert!(
        metrics.contains("lacave_cluster_cert_expiry_seconds{node=\"cp1\",cert=\"apiserver\"}"),
        "{metrics}"
    );

    // Renewal on request: each control plane in turn runs `kubeadm certs renew all` and
    // restarts its static pods one at a time, each waited for; the report then shows the new
    // dates, and the cluster still works.
    let apiserver_until = |report: &serde_json::Value, cp: &str| {
        report["certificates"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["node"] == cp && c["cert"] == "apiserver")
            .and_then(|c| c["not_after"].as_str())
            .unwrap_or_default()
            .to_string()
    };
    let (before1, before2) = (
        apiserver_until(&report, "cp1"),
        apiserver_until(&report, "cp2"),
    );
    // While the control planes renew one at a time, is the API still served? Both API
    // servers' /readyz are polled every 0.25 s from the LAN; the longest time neither
    // answered ok is the outage a client of the endpoint could see.
    let stop = state.path().join("probe.stop");
    let probe_log = state.path().join("probe.log");
    let mut probe = lan
        .command("sh")
        .arg("-c")
        .arg(format!(
            "while [ ! -f {stop} ]; do t=$(date +%s.%N); a=$(curl -sk --max-time 1 https://10.123.0.11:6443/readyz); b=$(curl -sk --max-time 1 https://10.123.0.16:6443/readyz); echo \"$t ${{a:-down}} ${{b:-down}}\"; sleep 0.25; done > {log}",
            stop = stop.display(),
            log = probe_log.display()
        ))
        .spawn()
        .unwrap();
    let renew_started = std::time::Instant::now();
    let (ok, said, err) = cli(&["cluster", "certs", "--renew"]);
    assert!(ok && said.contains("renewal started"), "{said}{err}");
    wait_for(
        "both control planes' certificates renewed",
        600,
        || daemon.log(),
        || {
            let (ok, out, _) = cli(&["cluster", "certs", "--json"]);
            let now: serde_json::Value = serde_json::from_str(&out).ok()?;
            (ok && apiserver_until(&now, "cp1") > before1 && apiserver_until(&now, "cp2") > before2)
                .then_some(())
        },
    );
    eprintln!(
        "certificates of two control planes renewed in {:.0} s",
        renew_started.elapsed().as_secs_f32()
    );
    std::fs::write(&stop, "").unwrap();
    probe.wait().unwrap();
    let (mut longest, mut down_since, mut polls) = (0.0f64, None::<f64>, 0);
    for line in std::fs::read_to_string(&probe_log).unwrap().lines() {
        let mut words = line.split_whitespace();
        let Some(t) = words.next().and_then(|t| t.parse::<f64>().ok()) else {
            continue;
        };
        polls += 1;
        if words.any(|w| w == "ok") {
            if let Some(since) = down_since.take() {
                longest = longest.max(t - since);
            }
        } else {
            down_since.get_or_insert(t);
        }
    }
    eprintln!(
        "API during the renewal of two control planes: {polls} polls, longest time neither API server was ready: {longest:.1} s"
    );
    assert!(polls > 20, "the probe ran: {polls} polls");
    // etcd reloads its renewed certificate at each handshake and is not restarted (stopping
    // one of two members would lose quorum): one API server is always ready.
    assert!(
        longest < 2.0,
        "neither API server ready for {longest:.1} s during the renewal"
    );
    let cp1_events = api.call(&lan, "GET", "/api/v1/nodes/cp1/events", None);
    for step in [
        "kubeadm certs renew all",
        "etcd: serving the renewed certificate",
        "read at each handshake: not restarted",
        "restart kube-apiserver",
        "restart kube-scheduler",
    ] {
        assert!(
            cp1_events.contains(step),
            "{step} in cp1's history: {cp1_events}"
        );
    }
    // The API server answered locally at each restart; the daemon's own probes and its
    // connection follow within seconds.
    wait_for(
        "cp1 Ready again in the daemon's view after the renewal",
        120,
        || cli(&["cluster", "status"]).1,
        || {
            let (ok, status, _) = cli(&["cluster", "status"]);
            (ok && status
                .lines()
                .any(|l| l.starts_with("cp1 ") && l.contains(" ready ") && l.contains(" Ready ")))
            .then_some(())
        },
    );

    snapshot_and_restore(
        &lan,
        &api,
        &daemon,
        &state,
        &config,
        &kubeconfig,
        &bin,
        &cli,
        &daemon_kubeconfig,
    );

    // The workers had no pause image: their kubelets pull it through the daemon's registry
    // for the first pod sandbox (the network DaemonSet's).
    let pulls = || {
        lan.http_get("http://10.123.0.1:8080/metrics")
            .lines()
            .filter(|l| {
                l.starts_with(
                    "lacave_http_requests_total{route=\"/v2/{*rest}\",method=\"GET\",status=\"200\"}",
                )
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum::<u64>()
    };
    let pulled = wait_for(
        "a worker's kubelet pulling pause through the daemon",
        120,
        || {
            kubectl(
                &lan,
                &kubeconfig,
                &["get", "pods", "-A", "-o", "wide"],
                &bin,
            )
            .1
        },
        || (pulls() >= 3).then(pulls),
    );
    eprintln!("{pulled} registry GETs (manifest, config, layer) answered for the workers' pause");

    // What a cluster node's installed system gets: Kubernetes as Flatcar's sysext, from the
    // daemon's mirror, with kubelet.service enabled; valid for the real ignition-validate.
    let (ok, final_config, err) = cli(&["render", "final", "w1"]);
    assert!(ok, "{err}");
    assert!(
        final_config
            .contains("http://10.123.0.1:8080/mirror/kubernetes/kubernetes-v1.37.2-x86-64.raw"),
        "{final_config}"
    );
    assert!(final_config.contains("/etc/extensions/kubernetes.raw"));
    // containerd pulls registry.k8s.io, docker.io, quay.io and ghcr.io through the daemon:
    // Flatcar's unit is pointed at a config whose CRI reads those hosts.toml files.
    assert!(
        final_config.contains("/etc/containerd/config.toml"),
        "{final_config}"
    );
    assert!(
        final_config.contains("CONTAINERD_CONFIG=/etc/containerd/config.toml"),
        "{final_config}"
    );
    for registry in ["registry.k8s.io", "docker.io", "quay.io", "ghcr.io"] {
        assert!(
            final_config.contains(&format!("/etc/containerd/certs.d/{registry}/hosts.toml")),
            "{registry}: {final_config}"
        );
    }
    let final_path = state.path().join("w1-final.ign");
    std::fs::write(&final_path, &final_config).unwrap();
    let out = Command::new("ignition-validate")
        .arg(&final_path)
        .output()
        .unwrap();
    let said =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && said.trim().is_empty(),
        "ignition-validate: {said}"
    );
    assert!(
        daemon
            .log()
            .contains("kubernetes/kubernetes-v1.37.2-x86-64.raw"),
        "start-up names the sysext the mirror lacks"
    );

    // A person's kubeconfig: its own user, through the endpoint name.
    let (ok, alice, err) = cli(&["cluster", "kubeconfig", "--user", "alice", "--ttl", "1h"]);
    assert!(ok, "{err}");
    assert!(alice.contains("https://kube.lacave:6443"), "{alice}");
    let alice = alice.replace("https://kube.lacave:6443", "https://10.123.0.11:6443");
    for line in alice.lines().filter(|l| l.contains("\"server\"")) {
        assert!(line.contains("https://10.123.0.11:6443"), "{line}");
    }
    let alice_path = state.path().join("alice.kubeconfig");
    std::fs::write(&alice_path, alice).unwrap();
    let (ok, out) = kubectl(&lan, &alice_path, &["auth", "whoami", "-o", "json"], &bin);
    assert!(ok, "{out}");
    assert!(out.contains("\"alice\""), "{out}");
    let (ok, out) = kubectl(&lan, &alice_path, &["get", "nodes"], &bin);
    assert!(ok, "alice is a cluster admin: {out}");
    let (ok, _, err) = cli(&["cluster", "kubeconfig", "--group", "system:masters"]);
    assert!(!ok && err.contains("system:masters"), "{err}");

    // kubespray's view of the registry, read by the real ansible-inventory.
    let (ok, inventory, err) = cli(&["cluster", "inventory", "--format", "kubespray"]);
    assert!(ok, "{err}");
    let inventory_path = state.path().join("hosts.yaml");
    std::fs::write(&inventory_path, &inventory).unwrap();
    let out = Command::new("ansible-inventory")
        .arg("-i")
        .arg(&inventory_path)
        .arg("--list")
        .env("ANSIBLE_LOCAL_TEMP", state.path())
        .env("ANSIBLE_HOME", state.path())
        .output()
        .expect("ansible-inventory runs (Debian: ansible-core)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let parsed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        parsed["kube_control_plane"]["hosts"],
        serde_json::json!(["cp1", "cp2"])
    );
    assert_eq!(parsed["etcd"]["hosts"], serde_json::json!(["cp1", "cp2"]));
    let workers = parsed["kube_node"]["hosts"].as_array().unwrap();
    assert_eq!(workers.len(), 4, "{parsed}");
    assert_eq!(
        parsed["_meta"]["hostvars"]["w1"]["ansible_host"],
        "10.123.0.12"
    );
    assert_eq!(parsed["_meta"]["hostvars"]["w1"]["ansible_user"], "root");

    // Removal: a worker is drained and deleted, then reset; the last control plane is not
    // removed without --force.
    let (ok, _, err) = cli(&["node", "rm", "w4"]);
    assert!(ok, "{err}");
    daemon_kubeconfig();
    let (_, out) = kubectl(&lan, &kubeconfig, &["get", "node", "w4"], &bin);
    assert!(
        out.contains("NotFound") || out.contains("not found"),
        "{out}"
    );
    assert!(
        api.node(&lan, "w4")["state"].is_null(),
        "gone from the registry"
    );
    assert!(
        !w4.dir.path().join("kubelet/config.yaml").exists(),
        "kubeadm reset ran on w4"
    );
    // A control plane that no longer answers leaves: its kubelet dies (the registry says
    // notready once its Node is NotReady) and its sshd is out of reach, so kubeadm reset
    // cannot run there; the daemon removes its etcd member through the etcd API of cp1,
    // with a certificate from the etcd CA it owns. The cluster goes on with cp1, which the
    // endpoint alone names now.
    nodes[2].exec("pkill -x kubelet; iptables -A INPUT -p tcp --dport 22 -j DROP");
    wait_for(
        "cp2 notready once its kubelet is gone",
        120,
        || daemon.log(),
        || (api.node(&lan, "cp2")["state"] == "notready").then_some(()),
    );
    let (ok, _, err) = cli(&["node", "rm", "cp2"]);
    assert!(ok, "{err}");
    assert!(
        daemon
            .log()
            .contains("removed the node's etcd member through the etcd API"),
        "{}",
        daemon.log()
    );
    nodes[2].exec("iptables -D INPUT -p tcp --dport 22 -j DROP");
    assert_eq!(dig("kube.lacave"), ["10.123.0.11"]);
    // etcd elects a leader among what is left: the API answers again within seconds.
    let out = wait_for(
        "the API after cp2 left",
        90,
        || daemon.log(),
        || {
            daemon_kubeconfig();
            let (ok, out) = kubectl(&lan, &kubeconfig, &["get", "nodes", "--no-headers"], &bin);
            ok.then_some(out)
        },
    );
    assert!(!out.contains("cp2"), "{out}");
    // A member left behind would leave two-member etcd without quorum: the API server's
    // etcd check proves it was removed, and stays so.
    std::thread::sleep(std::time::Duration::from_secs(5));
    daemon_kubeconfig();
    let (ok, out) = kubectl(&lan, &kubeconfig, &["get", "--raw", "/readyz/etcd"], &bin);
    assert!(ok && out.trim() == "ok", "etcd has its quorum: {out}");
    // The only Ready control plane is neither reset nor removed on request.
    let refused = api.call(&lan, "POST", "/api/v1/nodes/cp1/rejoin", None);
    assert!(refused.contains("last_control_plane"), "{refused}");
    let (ok, _, err) = cli(&["node", "rm", "cp1"]);
    assert!(!ok && err.contains("last control plane"), "{err}");
    assert_eq!(api.node(&lan, "cp1")["state"], "ready");

    // A person cannot be issued the daemon's own name; every person's kubeconfig is listed.
    let (ok, _, err) = cli(&["cluster", "kubeconfig", "--user", "lacave"]);
    assert!(!ok && err.contains("the daemon or kubeadm"), "{err}");
    let (ok, listed, err) = cli(&["cluster", "kubeconfigs"]);
    assert!(ok, "{err}");
    let alice_row = listed
        .lines()
        .find(|l| l.starts_with("alice "))
        .expect("alice listed");
    assert!(
        alice_row.contains("kubeadm:cluster-admins") && alice_row.contains("valid"),
        "{listed}"
    );

    // The daemon renewed its own client certificate without a restart, and still talks to
    // the API server with it (cluster status reads the Node cache the connection feeds).
    wait_for(
        "the daemon's certificate renewal",
        200,
        || daemon.log(),
        || {
            daemon
                .log()
                .contains("client certificate was renewed")
                .then_some(())
        },
    );
    let renewed = std::fs::read_to_string(state.path().join("cluster/lacave.kubeconfig")).unwrap();
    assert_ne!(
        renewed, first_credential,
        "a new certificate in lacave.kubeconfig"
    );
    wait_for(
        "the API connection with the renewed certificate",
        60,
        || daemon.log(),
        || {
            let (ok, status, _) = cli(&["cluster", "status"]);
            (ok && status
                .lines()
                .any(|l| l.starts_with("w1 ") && l.contains(" Ready ")))
            .then_some(())
        },
    );

    // The last control plane removed with --force ends the cluster: the daemon forgets it,
    // the workers go back to booted, and the next control plane initializes a new cluster
    // that they join.
    // cp1's history (its kubeadm init among it), kept for the secret check below.
    let cp1_history = api.call(&lan, "GET", "/api/v1/nodes/cp1/events", None);
    assert!(
        cp1_history.contains("kubeadm init --skip-token-print"),
        "cp1's history shows its init: {cp1_history}"
    );
    let (ok, out, err) = cli(&["node", "rm", "--force", "cp1"]);
    assert!(ok, "{out}{err}");
    assert_eq!(api.node(&lan, "w1")["state"], "booted");
    let (_, status, _) = cli(&["cluster", "status"]);
    assert!(status.contains("initialized by -"), "{status}");
    let body = serde_json::json!({
        "mac": nodes[2].mac, "hostname": "cp2", "ip": nodes[2].ip, "role": "control-plane",
    });
    api.call(&lan, "POST", "/api/v1/nodes", Some(&body.to_string()));
    nodes[2].boot(&nodes[2].host_key());
    for name in ["cp2", "w1"] {
        wait_for(
            &format!("{name} ready in the new cluster"),
            600,
            || daemon.log(),
            || match api.node(&lan, name)["state"].as_str() {
                Some("ready") => Some(()),
                Some("failed") => panic!(
                    "{name} failed: {}",
                    api.call(&lan, "GET", &format!("/api/v1/nodes/{name}/events"), None)
                ),
                _ => None,
            },
        );
    }
    let (_, status, _) = cli(&["cluster", "status"]);
    assert!(status.contains("initialized by cp2"), "{status}");

    // No bootstrap token (nor any token-shaped string) in any history, the daemon's log or
    // a backup, though kubeadm init ran twice and every node joined with one.
    let mut texts = vec![
        ("the daemon's log".to_string(), daemon.log()),
        ("cp1's history".to_string(), cp1_history),
    ];
    for name in ["w1", "cp2", "w2", "w3"] {
        texts.push((
            format!("{name}'s history"),
            api.call(&lan, "GET", &format!("/api/v1/nodes/{name}/events"), None),
        ));
    }
    let backup = lan
        .command("curl")
        .args(["-sf", "-H", &format!("Authorization: Bearer {}", api.token)])
        .arg(format!("{}/api/v1/backup", api.url))
        .output()
        .unwrap();
    assert!(
        backup.status.success() && !backup.stdout.is_empty(),
        "a backup"
    );
    texts.push((
        "a backup".into(),
        String::from_utf8_lossy(&backup.stdout).into_owned(),
    ));
    for (what, text) in &texts {
        assert!(
            token_shaped(text).is_none(),
            "{what} holds a bootstrap-token-shaped string: {:?}",
            token_shaped(text)
        );
    }
    assert!(
        texts[3].1.contains("kubeadm init --skip-token-print"),
        "cp2's history shows the new cluster's init: {}",
        texts[3].1
    );
    drop(daemon);
}

/// The first match of `[a-z0-9]{6}\.[a-z0-9]{16}` in `text`.
/// Runs `lacave` with the test's URL and token: (success, stdout, stderr).
type CliRun<'a> = dyn Fn(&[&str]) -> (bool, String, String) + 'a;

/// etcd snapshots (issue #26): one taken through etcd's API with a certificate from the etcd
/// CA the daemon owns, written 0600 with its SHA-256, a file the real etcdutl reads; a cut
/// one refused; then a restore brings the cluster back to the snapshot: an object deleted
/// after it is back, one made after it is gone, cp2 is reset and joins again, every node is
/// Ready.
#[allow(clippy::too_many_arguments)]
fn snapshot_and_restore(
    lan: &Netns,
    api: &Api,
    daemon: &DaemonProcess,
    state: &tempfile::TempDir,
    config: &str,
    kubeconfig: &std::path::Path,
    bin: &str,
    cli: &CliRun<'_>,
    daemon_kubeconfig: &dyn Fn() -> String,
) {
    use std::os::unix::fs::PermissionsExt;
    let k = |args: &[&str]| {
        daemon_kubeconfig();
        kubectl(lan, kubeconfig, args, bin)
    };
    let (ok, out) = k(&["create", "configmap", "kept", "--from-literal=when=before"]);
    assert!(ok, "{out}");
    let started = Instant::now();
    let (ok, name, err) = cli(&["cluster", "snapshot", "save"]);
    assert!(ok, "{err}");
    let saved_in = started.elapsed().as_secs_f32();
    let name = name.trim().to_string();
    let file = state.path().join("etcd-snapshots").join(&name);
    let meta = std::fs::metadata(&file).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{name}");
    eprintln!(
        "etcd snapshot {name}: {} bytes in {saved_in:.2} s",
        meta.len()
    );
    let (ok, list, err) = cli(&["cluster", "snapshot", "list", "--json"]);
    assert!(ok, "{err}");
    let list: serde_json::Value = serde_json::from_str(&list).unwrap();
    let info = list["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name.as_str())
        .unwrap_or_else(|| panic!("{name} listed: {list}"))
        .clone();
    let sum = Command::new("sha256sum").arg(&file).output().unwrap();
    let sum = String::from_utf8_lossy(&sum.stdout);
    assert_eq!(
        info["sha256"].as_str().unwrap(),
        sum.split_whitespace().next().unwrap()
    );
    assert!(info["revision"].as_i64().unwrap() > 0, "{info}");
    // The real etcdutl reads it as its own (checking etcd's appended SHA-256).
    let status = Command::new(format!("{bin}/etcdutl"))
        .args(["snapshot", "status", "-w", "json"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "etcdutl snapshot status: {}",
        String::from_utf8_lossy(&status.stderr)
    );
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert!(status["totalKey"].as_u64().unwrap() > 100, "{status}");
    let metrics = lan.http_get("http://10.123.0.1:8080/metrics");
    assert!(
        metrics.contains("lacave_etcd_snapshot_last_success_timestamp_seconds ")
            && !metrics.contains("lacave_etcd_snapshots_total{result=\"ok\"} 0"),
        "{metrics}"
    );
    // The schedule took one when the cluster came up (every 360 minutes by default).
    assert!(
        list["snapshots"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["trigger"] == "schedule"),
        "{list}"
    );

    // A cut file is refused with the reason, and nothing is touched.
    let bytes = std::fs::read(&file).unwrap();
    let cut = state.path().join("etcd-snapshots/etcd-cut.db");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let (ok, _, err) = cli(&["cluster", "snapshot", "restore", "etcd-cut.db", "--yes"]);
    assert!(!ok && err.contains("etcd-cut.db"), "{err}");
    assert!(
        err.contains("truncated") || err.contains("do not match"),
        "{err}"
    );
    let status = api.call(lan, "GET", "/api/v1/cluster/restore", None);
    assert!(status.contains("\"idle\""), "{status}");
    let cp2 = api.call(lan, "GET", "/api/v1/nodes/cp2/events", None);
    assert!(!cp2.contains("before the restore"), "{cp2}");
    // A path outside the daemon's directory is refused by the CLI.
    let (ok, _, err) = cli(&["cluster", "snapshot", "restore", "/etc/passwd", "--yes"]);
    assert!(!ok && err.contains("snapshot directory"), "{err}");

    // After the snapshot: one object deleted, one made. The restore puts the first back and
    // the second away.
    let (ok, out) = k(&["delete", "configmap", "kept"]);
    assert!(ok, "{out}");
    let (ok, out) = k(&["create", "configmap", "late", "--from-literal=when=after"]);
    assert!(ok, "{out}");
    // Waits until cp1, cp2 and w1 are all `ready` in the registry.
    let all_ready = |what: &str, secs: u64| {
        wait_for(
            what,
            secs,
            || daemon.log(),
            || {
                ["cp1", "cp2", "w1"]
                    .iter()
                    .all(|n| api.node(lan, n)["state"] == "ready")
                    .then_some(())
            },
        )
    };
    // From a settled cluster (the renewal before restarted cp2's static pods).
    all_ready("every node ready before the restore", 180);
    let started = Instant::now();
    let (ok, out, err) = cli(&[
        "cluster",
        "snapshot",
        "restore",
        file.to_str().unwrap(),
        "--yes",
    ]);
    assert!(ok, "{out}{err}\n--- daemon log ---\n{}", daemon.log());
    eprintln!(
        "etcd restored onto cp1 in {:.0} s:\n{err}",
        started.elapsed().as_secs_f32()
    );
    let (ok, out) = k(&["get", "configmap", "kept", "-o", "jsonpath={.data.when}"]);
    assert!(ok && out == "before", "{out}");
    let (ok, out) = k(&["get", "configmap", "late"]);
    assert!(!ok && out.contains("NotFound"), "{out}");
    all_ready("cp2 joined again after the restore, every node ready", 600);
    eprintln!(
        "restore to every node ready again: {:.0} s",
        started.elapsed().as_secs_f32()
    );
    let (ok, out) = k(&["get", "nodes", "--no-headers"]);
    // Every Node the snapshot held (the workers registered earlier too) is Ready.
    assert!(ok && out.lines().count() >= 3, "{out}");
    assert!(
        out.lines()
            .all(|l| l.split_whitespace().nth(1) == Some("Ready")),
        "{out}"
    );
    let cp1 = api.call(lan, "GET", "/api/v1/nodes/cp1/events", None);
    assert!(cp1.contains("etcd snapshot restore"), "{cp1}");
    let cp2 = api.call(lan, "GET", "/api/v1/nodes/cp2/events", None);
    assert!(cp2.contains("before the restore of"), "{cp2}");
    let restore = api.call(lan, "GET", "/api/v1/cluster/restore", None);
    assert!(restore.contains("\"done\""), "{restore}");

    // The site's whole state in one command: the registry, an etcd snapshot taken now, the
    // state directory's keys and files, and a manifest saying what is not in it.
    let config_file = state.path().join("lacave.toml");
    std::fs::write(&config_file, config).unwrap();
    let site = state.path().join("site-backup.tar");
    // Runs `lacave backup --site` into the state directory: (its output, the tar's listing).
    let site_backup = || {
        let (ok, out, err) = cli(&[
            "--config",
            config_file.to_str().unwrap(),
            "backup",
            "--site",
            "-o",
            site.to_str().unwrap(),
        ]);
        assert!(ok, "{out}{err}");
        let listing = Command::new("tar").arg("-tf").arg(&site).output().unwrap();
        (out, String::from_utf8_lossy(&listing.stdout).into_owned())
    };
    let (out, listing) = site_backup();
    assert!(
        out.contains("registry.backup") && out.contains("not in it"),
        "{out}"
    );
    let meta = std::fs::metadata(&site).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    for entry in [
        "registry.backup",
        "MANIFEST.txt",
        "state/cluster/pki/ca.key",
        "state/ssh/id_ed25519",
        "state/api-token",
    ] {
        assert!(listing.lines().any(|l| l == entry), "{entry} in {listing}");
    }
    assert!(
        listing
            .lines()
            .any(|l| l.starts_with("etcd/etcd-") && l.ends_with(".db")),
        "{listing}"
    );
    assert!(
        !listing.lines().any(|l| l.starts_with("state/registry")),
        "{listing}"
    );
    // Written into the state directory itself, it does not take itself (or the backup it
    // replaces) in: a second run is about the size of the first.
    let first = meta.len();
    let (_, listing) = site_backup();
    let second = std::fs::metadata(&site).unwrap().len();
    assert!(
        second < first + first / 2,
        "a second site backup of {second} bytes after one of {first}"
    );
    assert!(!listing.contains("site-backup"), "{listing}");
}

/// Registers `node` as a worker and boots it with its API traffic held by a firewall rule in
/// its own namespace, so that its `kubeadm join` surely runs (and hangs in discovery) until the
/// test lets it go with `iptables -D OUTPUT -p tcp --dport 6443 -j DROP`.
fn boot_with_join_held(lan: &Netns, api: &Api, node: &TestNode, daemon: &DaemonProcess) {
    let body = serde_json::json!({
        "mac": node.mac, "hostname": node.name, "ip": node.ip, "role": "worker",
    });
    api.call(lan, "POST", "/api/v1/nodes", Some(&body.to_string()));
    node.exec("iptables -A OUTPUT -p tcp --dport 6443 -j DROP");
    node.boot(&node.host_key());
    wait_for(
        &format!("kubeadm join running on {}", node.name),
        60,
        || daemon.log(),
        || (!node.exec("pgrep -f '^kubeadm join'").trim().is_empty()).then_some(()),
    );
}

/// Waits (a minute at most) for `name` to fail; its failure (phase, reason).
fn failure_of(lan: &Netns, api: &Api, name: &str, daemon: &DaemonProcess) -> serde_json::Value {
    wait_for(
        &format!("{name}'s join to fail"),
        60,
        || daemon.log(),
        || {
            let n = api.node(lan, name);
            (n["state"] == "failed").then(|| n["failure"].clone())
        },
    )
}

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

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use lacave_integration_tests::DaemonProcess;
use lacave_integration_tests::netns::{Netns, require_root, sh};

const SERVER: &str = "10.123.0.1";
const LAN: &str = "10.123.0.0/24";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

/// Runs a lab script and returns its last output line (a directory).
fn script(name: &str, args: &[&str]) -> String {
    let out = Command::new(repo().join("k8s").join(name))
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("k8s/{name}: {e}"));
    assert!(out.status.success(), "k8s/{name} failed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .to_string()
}

/// One test node (see `k8s/node.sh`); everything of it ends on drop.
struct TestNode {
    name: String,
    ip: String,
    mac: String,
    ns: Netns,
    dir: tempfile::TempDir,
    init: Child,
}

impl TestNode {
    #[allow(clippy::too_many_arguments)]
    fn start(
        lan: &Netns,
        index: u8,
        name: &str,
        control_plane: bool,
        bin: &str,
        images: &str,
        daemon_key: &str,
    ) -> TestNode {
        let ns = Netns::new("k8snode");
        let ip = format!("10.123.0.{}", 10 + index);
        let veth = format!("lcvk{index}-{}", std::process::id() % 10000);
        sh(
            "ip",
            &[
                "-n", &lan.name, "link", "add", &veth, "type", "veth", "peer", "name", "eth0",
                "netns", &ns.name,
            ],
        );
        sh(
            "ip",
            &["-n", &lan.name, "link", "set", &veth, "master", "br0", "up"],
        );
        ns.add_addr("eth0", &format!("{ip}/24"));
        sh("ip", &["-n", &ns.name, "link", "set", "eth0", "up"]);
        sh(
            "ip",
            &["-n", &ns.name, "route", "add", "default", "via", SERVER],
        );
        let dir = tempfile::tempdir().unwrap();
        // nsenter, not `ip netns exec`: the latter mounts a sysfs of its own over /sys, which
        // hides the cgroup hierarchies the kubelet needs.
        let init = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", ns.name))
            .args([
                "unshare",
                "-m",
                "-p",
                "-f",
                "-u",
                "--propagation",
                "private",
                "--mount-proc",
            ])
            .arg(repo().join("k8s/node.sh"))
            .arg(dir.path())
            .args([
                name,
                &ip,
                SERVER,
                bin,
                images,
                daemon_key,
                if control_plane { "1" } else { "0" },
                &format!("10.245.{index}.0/24"),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("unshare runs (util-linux)");
        let node = TestNode {
            name: name.to_string(),
            mac: format!("52:54:00:7b:00:{index:02x}"),
            ip,
            ns,
            dir,
            init,
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        while !node.dir.path().join("up").exists() {
            assert!(Instant::now() < deadline, "node {name} did not come up");
            std::thread::sleep(Duration::from_millis(200));
        }
        node
    }

    fn host_key(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("ssh_host_ed25519_key.pub")).unwrap()
    }

    fn curl(&self, args: &[&str]) -> String {
        let out = self
            .ns
            .command("curl")
            .args(["-sS", "--fail-with-body", "-m", "20"])
            .args(args)
            .output()
            .expect("curl runs");
        assert!(
            out.status.success(),
            "curl {args:?} from {}: {}{}",
            self.name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// What the installed system does: fetch its configs, report `installed`, then `booted`
    /// with `host_key` (its own, unless the test plays an impostor).
    fn boot(&self, host_key: &str) {
        let seg = self.mac.replace(':', "-");
        let base = format!("http://{SERVER}:8080");
        self.curl(&[&format!("{base}/ipxe/{seg}")]);
        let config: serde_json::Value =
            serde_json::from_str(&self.curl(&[&format!("{base}/ignition/{seg}/final")])).unwrap();
        let env = config["storage"]["files"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["path"] == "/etc/lacave/callback.env")
            .and_then(|f| f["contents"]["source"].as_str())
            .and_then(|s| s.split_once(','))
            .map(|(_, data)| {
                base64::engine::general_purpose::STANDARD
                    .decode(data)
                    .unwrap()
            })
            .expect("the final config carries the callback secret");
        let env = String::from_utf8(env).unwrap();
        let secret = env.trim().strip_prefix("LACAVE_CALLBACK_SECRET=").unwrap();
        let bearer = format!("Authorization: Bearer {secret}");
        self.curl(&[
            "-X",
            "POST",
            "-H",
            &bearer,
            &format!("{base}/callback/{seg}/installed"),
        ]);
        self.curl(&[
            "-X",
            "POST",
            "-H",
            &bearer,
            "--data-binary",
            host_key,
            &format!("{base}/callback/{seg}/booted"),
        ]);
    }
}

impl TestNode {
    /// Runs a shell command in the node's namespaces (as a process of the node).
    fn exec(&self, command: &str) -> String {
        let pid1 = Command::new("pgrep")
            .args(["-P", &self.init.id().to_string()])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        let out = Command::new("nsenter")
            .args([
                "-t",
                pid1.lines().next().unwrap_or_default(),
                "-m",
                "-p",
                "-n",
                "-u",
                "sh",
                "-c",
                command,
            ])
            .output()
            .expect("nsenter runs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for log in ["kubelet.log", "containerd.log", "sshd.log"] {
                let text = std::fs::read_to_string(self.dir.path().join("log").join(log))
                    .unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                eprintln!(
                    "--- {} {log} (last 40 lines) ---\n{}",
                    self.name,
                    lines[lines.len().saturating_sub(40)..].join("\n")
                );
            }
        }
        // Killing the node's PID 1 ends every process in its PID namespace (sshd, containerd,
        // kubelet, the containers), and with them its mounts.
        let children = Command::new("pgrep")
            .args(["-P", &self.init.id().to_string()])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        for pid in children.split_whitespace() {
            let _ = Command::new("kill").args(["-KILL", pid]).status();
        }
        let _ = self.init.kill();
        let _ = self.init.wait();
        std::thread::sleep(Duration::from_millis(500));
        // The kubelet's cgroup subtree (see node.sh).
        if let Ok(controllers) = std::fs::read_dir("/sys/fs/cgroup") {
            for c in controllers.flatten() {
                remove_cgroup(&c.path().join(format!("lacave-{}", self.name)));
            }
        }
    }
}

fn remove_cgroup(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.path().is_dir() {
                remove_cgroup(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

struct Api {
    url: String,
    token: String,
}

impl Api {
    fn call(&self, lan: &Netns, method: &str, path: &str, body: Option<&str>) -> String {
        let mut c = lan.command("curl");
        c.args(["-sS", "-m", "20", "-X", method])
            .arg("-H")
            .arg(format!("Authorization: Bearer {}", self.token))
            .args(["-H", "Content-Type: application/json"]);
        if let Some(b) = body {
            c.args(["--data-binary", b]);
        }
        let out = c.arg(format!("{}{path}", self.url)).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn node(&self, lan: &Netns, name: &str) -> serde_json::Value {
        serde_json::from_str(&self.call(lan, "GET", &format!("/api/v1/nodes/{name}"), None))
            .unwrap_or_default()
    }
}

/// kubectl inside the test LAN with the daemon's own kubeconfig, pointed at `server`.
fn kubectl(lan: &Netns, kubeconfig: &Path, args: &[&str], bin: &str) -> (bool, String) {
    let out = lan
        .command(format!("{bin}/kubectl"))
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["--request-timeout", "10s"])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn wait_for<T>(
    what: &str,
    secs: u64,
    log: impl Fn() -> String,
    mut f: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > deadline {
            panic!(
                "timed out after {secs} s waiting for {what}\n--- daemon log ---\n{}",
                log()
            );
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

#[test]
fn booted_nodes_become_ready_kubernetes_nodes() {
    require_root("the cluster test");
    let bin = script("build.sh", &[]);
    let images = script("images.sh", &[&bin]);

    let lan = Netns::new("k8slan");
    sh(
        "ip",
        &["-n", &lan.name, "link", "add", "br0", "type", "bridge"],
    );
    lan.add_addr("br0", &format!("{SERVER}/24"));
    sh("ip", &["-n", &lan.name, "link", "set", "br0", "up"]);

    let state = tempfile::tempdir().unwrap();
    let config = format!(
        r#"state_dir = "{state}"
server_ip = "{SERVER}"
[http]
listen = "{SERVER}:8080"
[api]
listen = "{SERVER}:8443"
tls = false
[dns]
listen = "{SERVER}:53"
[cluster]
enabled = true
pod_cidr = "10.245.0.0/16"
join_timeout_secs = 600
# This kernel has cgroup v1 and no systemd in the nodes; nothing can be pulled (kube-proxy and
# CoreDNS images are absent).
ignore_preflight_errors = ["SystemVerification", "ImagePull", "Swap", "FileExisting-crictl"]
[cluster.kubelet_config]
cgroupDriver = "cgroupfs"
failCgroupV1 = false
failSwapOn = false
imageGCHighThresholdPercent = 100
imageGCLowThresholdPercent = 99
evictionHard = {{ "memory.available" = "100Mi", "nodefs.available" = "1%", "imagefs.available" = "1%" }}
"#,
        state = state.path().display()
    );
    let daemon = DaemonProcess::start_custom(state.path(), &config, Some(&lan), &[]);
    let api = Api {
        url: format!("http://{SERVER}:8443"),
        token: std::fs::read_to_string(state.path().join("api-token"))
            .unwrap()
            .trim()
            .to_string(),
    };
    let daemon_key = std::fs::read_to_string(state.path().join("ssh/id_ed25519.pub")).unwrap();

    let nodes = [
        TestNode::start(&lan, 1, "cp1", true, &bin, &images, daemon_key.trim()),
        TestNode::start(&lan, 2, "w1", false, &bin, &images, daemon_key.trim()),
    ];
    for (node, role) in nodes.iter().zip(["control-plane", "worker"]) {
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
        "both nodes ready {:.1} s after booted",
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
    let text = std::fs::read_to_string(state.path().join("cluster/lacave.kubeconfig")).unwrap();
    let kubeconfig = state.path().join("test.kubeconfig");
    let text = text.replace("https://kube.lacave:6443", "https://10.123.0.11:6443");
    for line in text.lines().filter(|l| l.contains("\"server\"")) {
        assert!(
            line.contains("https://10.123.0.11:6443"),
            "a server outside the test LAN: {line}"
        );
    }
    assert!(LAN.starts_with("10.123.0."));
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
    let worker = wait_for(
        "the worker's role label",
        30,
        || daemon.log(),
        || {
            let (_, out) = kubectl(
                &lan,
                &kubeconfig,
                &["get", "node", "w1", "-o", "json"],
                &bin,
            );
            let v: serde_json::Value = serde_json::from_str(&out).ok()?;
            (v["metadata"]["labels"]["node-role.kubernetes.io/worker"] == "worker").then_some(v)
        },
    );
    assert_eq!(worker["metadata"]["labels"]["disktype"], "ssd");

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
            let (_, out) = kubectl(
                &lan,
                &kubeconfig,
                &["get", "node", "w1", "-o", "json"],
                &bin,
            );
            let v: serde_json::Value = serde_json::from_str(&out).ok()?;
            let l = &v["metadata"]["labels"];
            (l["disktype"] == "hdd"
                && l["zone"] == "b"
                && l["node-role.kubernetes.io/worker"] == "worker")
                .then_some(())
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
    let failure = wait_for(
        "the impostor's join to fail",
        60,
        || daemon.log(),
        || {
            let n = api.node(&lan, "w2");
            (n["state"] == "failed").then(|| n["failure"].clone())
        },
    );
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
    let body = serde_json::json!({"mac": w3.mac, "hostname": "w3", "ip": w3.ip, "role": "worker"});
    api.call(&lan, "POST", "/api/v1/nodes", Some(&body.to_string()));
    // Its join cannot reach the API server (a firewall rule inside its own namespace), so it
    // is surely running when it is killed.
    w3.exec("iptables -A OUTPUT -p tcp --dport 6443 -j DROP");
    w3.boot(&w3.host_key());
    wait_for(
        "kubeadm join running on w3",
        60,
        || daemon.log(),
        || (!w3.exec("pgrep -f '^kubeadm join'").trim().is_empty()).then_some(()),
    );
    w3.exec("pkill -KILL -f '^kubeadm join'");
    let failure = wait_for(
        "w3's killed join to fail",
        60,
        || daemon.log(),
        || {
            let n = api.node(&lan, "w3");
            (n["state"] == "failed").then(|| n["failure"].clone())
        },
    );
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
    // The only Ready control plane is not reset on request.
    let refused = api.call(&lan, "POST", "/api/v1/nodes/cp1/rejoin", None);
    assert!(refused.contains("last_control_plane"), "{refused}");

    // The daemon SIGKILLed in the middle of a join: the restarted daemon retries it.
    let w4 = TestNode::start(&lan, 5, "w4", false, &bin, &images, daemon_key.trim());
    let body = serde_json::json!({"mac": w4.mac, "hostname": "w4", "ip": w4.ip, "role": "worker"});
    api.call(&lan, "POST", "/api/v1/nodes", Some(&body.to_string()));
    w4.exec("iptables -A OUTPUT -p tcp --dport 6443 -j DROP");
    w4.boot(&w4.host_key());
    wait_for(
        "kubeadm join running on w4",
        60,
        || daemon.log(),
        || (!w4.exec("pgrep -f '^kubeadm join'").trim().is_empty()).then_some(()),
    );
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
    let (_, out) = kubectl(&lan, &kubeconfig, &["get", "nodes"], &bin);
    assert_eq!(
        out.lines().filter(|l| l.contains(" Ready ")).count(),
        4,
        "{out}"
    );

    // The operator's view: `lacave cluster status` shows what the registry and the API
    // server say of every node.
    let cli = |args: &[&str]| {
        let out = lan
            .command(lacave_integration_tests::lacave_bin())
            .args(args)
            .env("LACAVE_URL", &api.url)
            .env("LACAVE_TOKEN", &api.token)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
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
        serde_json::json!(["cp1"])
    );
    assert_eq!(parsed["etcd"]["hosts"], serde_json::json!(["cp1"]));
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
    let (ok, _, err) = cli(&["node", "rm", "cp1"]);
    assert!(!ok && err.contains("last control plane"), "{err}");
    assert_eq!(api.node(&lan, "cp1")["state"], "ready");
    drop(daemon);
}

/// Seconds from a node's `booted` transition to its `ready` one, from its history.
fn booted_to_ready(api: &Api, lan: &Netns, name: &str) -> f64 {
    let events: Vec<serde_json::Value> =
        serde_json::from_str(&api.call(lan, "GET", &format!("/api/v1/nodes/{name}/events"), None))
            .unwrap();
    let at = |to: &str| {
        events
            .iter()
            .rfind(|e| e["kind"] == "transition" && e["to"] == to)
            .and_then(|e| e["at"].as_str())
            .and_then(|t| {
                time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
            })
            .unwrap_or_else(|| panic!("{name} has a {to} transition"))
    };
    (at("ready") - at("booted")).as_seconds_f64()
}

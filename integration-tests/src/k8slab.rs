//! The cluster lab: a test LAN (a bridge inside the daemon's network namespace, no route out)
//! and nodes on it, each a set of namespaces running Debian's sshd and containerd with
//! kubelet and kubeadm built from source (`k8s/node.sh`), for the cluster test and the join
//! benchmark. Everything a node runs ends when it is dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;

use crate::netns::{Netns, sh};

pub const SERVER: &str = "10.123.0.1";
pub const LAN: &str = "10.123.0.0/24";

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

/// Runs a lab script and returns its last output line (a directory).
pub fn script(name: &str, args: &[&str]) -> String {
    script_for(None, name, args)
}

/// [`script`] for Kubernetes release `version` (`K8S_VERSION`; the scripts' default when
/// `None`).
pub fn script_for(version: Option<&str>, name: &str, args: &[&str]) -> String {
    let mut command = Command::new(repo().join("k8s").join(name));
    if let Some(v) = version {
        command.env("K8S_VERSION", v);
    }
    let out = command
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
pub struct TestNode {
    pub name: String,
    pub ip: String,
    pub mac: String,
    pub ns: Netns,
    pub dir: tempfile::TempDir,
    pub init: Child,
}

/// The daemon's SSH public key (made at its first start), for the nodes' authorized keys.
pub fn daemon_ssh_key(state: &Path) -> String {
    std::fs::read_to_string(state.join("ssh/id_ed25519.pub"))
        .unwrap()
        .trim()
        .to_string()
}

/// Panics if `text` (a daemon's log, events, answers) holds the daemon's API token or any
/// line of its SSH private key, both read from its state directory `state`.
pub fn assert_no_secret_in(what: &str, text: &str, state: &Path) {
    let token = std::fs::read_to_string(state.join("api-token")).unwrap();
    assert!(!text.contains(token.trim()), "the API token in {what}");
    let key = std::fs::read_to_string(state.join("ssh/id_ed25519")).unwrap();
    for line in key
        .lines()
        .filter(|l| !l.starts_with("-----") && l.len() > 16)
    {
        assert!(!text.contains(line), "the SSH private key in {what}");
    }
}

impl TestNode {
    /// The reboots its stand-in `systemctl` logged: (start, end) in seconds, `end` infinite
    /// while it has not come back.
    pub fn reboots(&self) -> Vec<(f64, f64)> {
        let log =
            std::fs::read_to_string(self.dir.path().join("log/reboots.log")).unwrap_or_default();
        let mut out = Vec::new();
        for line in log.lines() {
            let mut f = line.split_whitespace();
            let (_, what, at) = (f.next(), f.next(), f.next().and_then(|t| t.parse().ok()));
            match (what, at) {
                (Some("start"), Some(t)) => out.push((t, f64::INFINITY)),
                (Some("end"), Some(t)) => {
                    if let Some(last) = out.last_mut() {
                        last.1 = t;
                    }
                }
                _ => {}
            }
        }
        out
    }

    #[allow(clippy::too_many_arguments)]
    pub fn start(
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
        // The node's interface has its registered MAC: the daemon serves a node's configs and
        // callbacks only to the MAC its neighbour table shows for the peer.
        let mac = format!("52:54:00:7b:00:{index:02x}");
        sh(
            "ip",
            &[
                "-n", &lan.name, "link", "add", &veth, "type", "veth", "peer", "name", "eth0",
                "address", &mac, "netns", &ns.name,
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
        // containerd pulls registry.k8s.io images through the daemon, with the very hosts.toml
        // a Flatcar node's final Ignition writes (workers get no preloaded pause image).
        std::fs::write(
            dir.path().join("registry-hosts.toml"),
            lacave::boot::hosts_toml("https://registry.k8s.io", &format!("http://{SERVER}:8080")),
        )
        .unwrap();
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
            mac,
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

    pub fn host_key(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("ssh_host_ed25519_key.pub")).unwrap()
    }

    pub fn curl(&self, args: &[&str]) -> String {
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
    pub fn boot(&self, host_key: &str) {
        let seg = self.mac.replace(':', "-");
        let base = format!("http://{SERVER}:8080");
        self.curl(&[&format!("{base}/ipxe/{seg}")]);
        let config: serde_json::Value =
            serde_json::from_str(&self.curl(&[&format!("{base}/ignition/{seg}/final")])).unwrap();
        // A file of the final config, as Ignition writes it (data URLs in base64).
        let file = |path: &str| {
            config["storage"]["files"]
                .as_array()
                .unwrap()
                .iter()
                .find(|f| f["path"] == path)
                .and_then(|f| f["contents"]["source"].as_str())
                .and_then(|s| s.split_once(','))
                .map(|(_, data)| {
                    String::from_utf8(
                        base64::engine::general_purpose::STANDARD
                            .decode(data)
                            .unwrap(),
                    )
                    .unwrap()
                })
        };
        let env =
            file("/etc/lacave/callback.env").expect("the final config carries the callback secret");
        // The root CA where the final config puts it for the API server (the CA of its OIDC
        // issuer): what Ignition writes there, the lab writes too.
        let root = file("/etc/kubernetes/ssl/lacave-root.pem")
            .expect("the final config carries the root CA for the API server");
        assert!(!root.contains('\''), "a PEM has no quote");
        self.exec(&format!(
            "mkdir -p /etc/kubernetes/ssl && printf '%s' '{root}' > /etc/kubernetes/ssl/lacave-root.pem"
        ));
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
    pub fn exec(&self, command: &str) -> String {
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

pub fn remove_cgroup(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.path().is_dir() {
                remove_cgroup(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

pub struct Api {
    pub url: String,
    pub token: String,
}

impl Api {
    /// The API of a daemon whose state directory is `state` (its token file), on the lab LAN.
    pub fn of_state(state: &Path) -> Api {
        Api {
            url: format!("http://{SERVER}:8443"),
            token: std::fs::read_to_string(state.join("api-token"))
                .unwrap()
                .trim()
                .to_string(),
        }
    }

    pub fn call(&self, lan: &Netns, method: &str, path: &str, body: Option<&str>) -> String {
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

    /// Runs the `lacave` CLI inside `lan` against this API: (success, stdout, stderr).
    pub fn cli(&self, lan: &Netns, args: &[&str]) -> (bool, String, String) {
        let out = lan
            .command(crate::lacave_bin())
            .args(args)
            .env("LACAVE_URL", &self.url)
            .env("LACAVE_TOKEN", &self.token)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    pub fn node(&self, lan: &Netns, name: &str) -> serde_json::Value {
        serde_json::from_str(&self.call(lan, "GET", &format!("/api/v1/nodes/{name}"), None))
            .unwrap_or_default()
    }
}

/// kubectl inside the test LAN with the daemon's own kubeconfig, pointed at `server`.
pub fn kubectl(lan: &Netns, kubeconfig: &Path, args: &[&str], bin: &str) -> (bool, String) {
    kubectl_env(lan, kubeconfig, args, bin, &[])
}

/// [`kubectl`] with more environment (`PATH` for an exec credential plugin, say).
pub fn kubectl_env(
    lan: &Netns,
    kubeconfig: &Path,
    args: &[&str],
    bin: &str,
    env: &[(&str, &str)],
) -> (bool, String) {
    let out = lan
        .command(format!("{bin}/kubectl"))
        .envs(env.iter().copied())
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

pub fn wait_for<T>(
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

/// Seconds from a node's `booted` transition to its `ready` one, from its history.
pub fn booted_to_ready(api: &Api, lan: &Netns, name: &str) -> f64 {
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

/// The test LAN: a new network namespace with a bridge `br0` holding `SERVER`; nodes' veths
/// join the bridge. Nothing routes out of it.
pub fn lan() -> Netns {
    let lan = Netns::new("k8slan");
    sh(
        "ip",
        &["-n", &lan.name, "link", "add", "br0", "type", "bridge"],
    );
    lan.add_addr("br0", &format!("{SERVER}/24"));
    sh("ip", &["-n", &lan.name, "link", "set", "br0", "up"]);

    lan
}

/// The daemon's configuration in the lab, with its state in `state`: listeners on `SERVER`,
/// the cluster join on, and what this machine's kernel and the test nodes need (cgroup v1,
/// no systemd in the nodes, no image pulls).
pub fn daemon_config(state: &Path, addons: &str) -> String {
    daemon_config_with(state, "", addons)
}

/// [`daemon_config`] with more `[cluster]` keys (`cluster_extra`, TOML lines).
pub fn daemon_config_with(state: &Path, cluster_extra: &str, addons: &str) -> String {
    format!(
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
{cluster_extra}
[cluster.kubelet_config]
cgroupDriver = "cgroupfs"
failCgroupV1 = false
failSwapOn = false
imageGCHighThresholdPercent = 100
imageGCLowThresholdPercent = 99
evictionHard = {{ "memory.available" = "100Mi", "nodefs.available" = "1%", "imagefs.available" = "1%" }}
{addons}
"#,
        state = state.display()
    )
}

/// `[addons]` for tests of the join alone: none (tests/addons.rs turns them on). The
/// network plugin stays on with `enabled = false` (a running cluster's pod network), so it
/// is turned off by name: the join applies it at `kubeadm init`, and nothing keeps it in
/// step here.
pub const NO_ADDONS: &str = "[addons]\nenabled = false\n[addons.cni]\nenabled = false\n";

/// Seconds from a node's last `booted` transition to each later transition and join step,
/// from its history: where the time of a join goes.
pub fn phases(api: &Api, lan: &Netns, name: &str) -> Vec<(String, f64)> {
    let events: Vec<serde_json::Value> =
        serde_json::from_str(&api.call(lan, "GET", &format!("/api/v1/nodes/{name}/events"), None))
            .unwrap_or_default();
    let at = |e: &serde_json::Value| {
        e["at"].as_str().and_then(|t| {
            time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
        })
    };
    let Some(start) = events
        .iter()
        .rposition(|e| e["kind"] == "transition" && e["to"] == "booted")
    else {
        return Vec::new();
    };
    let t0 = at(&events[start]).expect("a time");
    events[start + 1..]
        .iter()
        .filter_map(|e| {
            let what = match e["kind"].as_str()? {
                "transition" => format!("→ {}", e["to"].as_str()?),
                "step" => e["command"]
                    .as_str()?
                    .split_whitespace()
                    .take(2)
                    .collect::<Vec<_>>()
                    .join(" "),
                _ => return None,
            };
            Some((what, (at(e)? - t0).as_seconds_f64()))
        })
        .collect()
}

/// The lab ready for joins: Kubernetes built, the LAN up, the daemon running in it with the
/// cluster join on, and what a test needs of it.
pub struct Lab {
    pub bin: String,
    pub images: String,
    pub lan: Netns,
    pub state: tempfile::TempDir,
    pub config: String,
    pub daemon: crate::DaemonProcess,
    pub api: Api,
    /// The daemon's SSH public key, for the nodes' root.
    pub key: String,
}

impl Lab {
    pub fn start() -> Lab {
        Lab::start_with(NO_ADDONS)
    }

    /// The lab with `addons` as the daemon's `[addons]` section.
    pub fn start_with(addons: &str) -> Lab {
        Lab::start_custom("", addons)
    }

    /// The lab with more `[cluster]` keys and `addons` as the `[addons]` section.
    pub fn start_custom(cluster_extra: &str, addons: &str) -> Lab {
        let bin = script("build.sh", &[]);
        let images = script("images.sh", &[&bin]);
        Lab::start_on(bin, images, cluster_extra, addons)
    }

    /// The lab with nodes at Kubernetes release `version` (binaries `bin`), their control
    /// planes preloaded with the images of every directory in `images` (colon-separated).
    pub fn start_on(bin: String, images: String, cluster_extra: &str, addons: &str) -> Lab {
        let lan = lan();
        let state = tempfile::tempdir().unwrap();
        let config = daemon_config_with(state.path(), cluster_extra, addons);
        let daemon = crate::DaemonProcess::start_custom(state.path(), &config, Some(&lan), &[]);
        // The pause image the workers' kubelets pull through the daemon's registry.
        let out = lan
            .command(crate::lacave_bin())
            .args(["mirror", "images", "add"])
            .arg(Path::new(images.split(':').next().unwrap_or_default()).join("pause.tar"))
            .arg("--config")
            .arg(&daemon.config_path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "lacave mirror images add pause.tar: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let api = Api::of_state(state.path());
        let key = daemon_ssh_key(state.path());
        Lab {
            bin,
            images,
            lan,
            state,
            config,
            daemon,
            api,
            key,
        }
    }

    /// A node on the LAN (index → address 10.123.0.(10 + index)).
    pub fn node(&self, index: u8, name: &str, control_plane: bool) -> TestNode {
        TestNode::start(
            &self.lan,
            index,
            name,
            control_plane,
            &self.bin,
            &self.images,
            &self.key,
        )
    }

    /// Registers `node` with `role` and `labels` through the API.
    pub fn register(&self, node: &TestNode, role: &str, labels: serde_json::Value) {
        let body = serde_json::json!({
            "mac": node.mac, "hostname": node.name, "ip": node.ip, "role": role, "labels": labels,
        });
        let out = self
            .api
            .call(&self.lan, "POST", "/api/v1/nodes", Some(&body.to_string()));
        assert!(out.contains(&node.name), "{out}");
    }
}

/// Panics unless every `server:` of a kubeconfig is the control-plane endpoint name (which only
/// the lab's DNS resolves, to lab addresses) or an address on the lab's LAN: nothing may point
/// a component or a client out of the test's namespaces (K8S-LAB.md, network safety).
pub fn assert_servers_inside(what: &str, kubeconfig: &str) {
    let servers: Vec<&str> = kubeconfig
        .lines()
        .filter(|l| l.contains("server"))
        .collect();
    assert!(!servers.is_empty(), "{what}: no server in it");
    for line in servers {
        let inside = line.contains("https://kube.lacave:6443")
            || line.split("https://10.123.0.").nth(1).is_some_and(|rest| {
                rest.split(':')
                    .next()
                    .is_some_and(|h| h.parse::<u8>().is_ok())
            });
        assert!(inside, "{what}: a server outside the test LAN: {line}");
    }
}

impl TestNode {
    /// Checks every kubeconfig kubeadm wrote on this node (admin, kubelet, controller-manager,
    /// scheduler, …) with [`assert_servers_inside`].
    pub fn assert_kubeconfigs_inside(&self) {
        let dir = self.dir.path().join("etc-up/kubernetes");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if entry.path().extension().is_some_and(|e| e == "conf") {
                let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
                assert_servers_inside(&format!("{}:{}", self.name, entry.path().display()), &text);
                seen += 1;
            }
        }
        assert!(
            seen > 0,
            "{}: kubeadm wrote no kubeconfig in {}",
            self.name,
            dir.display()
        );
    }
}

/// A bootstrap-token-shaped string in `text` (`[a-z0-9]{6}.[a-z0-9]{16}`), if any: no history,
/// log or backup may hold one.
pub fn token_shaped(text: &str) -> Option<&str> {
    let b = text.as_bytes();
    let word = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    (0..b.len().saturating_sub(22))
        .find(|&i| {
            b[i..i + 6].iter().all(|c| word(*c))
                && b[i + 6] == b'.'
                && b[i + 7..i + 23].iter().all(|c| word(*c))
        })
        .map(|i| &text[i..i + 23])
}

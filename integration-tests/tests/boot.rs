//! The boot flow over HTTP, from a "node" namespace linked by veth to the daemon's
//! (10.69.0.0/24, nowhere else): scripts by state, the install and final Ignition configs
//! checked by the real `ignition-validate` and applied by the real Ignition binary (Debian's
//! `ignition`) to a directory, the callbacks, the mirror with ranges, and hostile requests.

use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine;
use lacave_integration_tests::netns::{Netns, require_root, sh};
use lacave_integration_tests::{DaemonProcess, lacave_bin, lacave_in};

const SERVER: &str = "10.69.0.1";
const BASE: &str = "http://10.69.0.1:8080";
/// The mirror's own (sendfile) listener.
const MIRROR: &str = "http://10.69.0.1:8081";
/// The node namespace's MAC, registered as kube01 with another address: it is recognised by
/// the kernel's neighbour table, as a machine PXE-booting beside a home router would be.
const MAC: &str = "52:54:00:69:00:01";
const SEG: &str = "52-54-00-69-00-01";
const IGNITION: &str = "/usr/lib/dracut/modules.d/30ignition/ignition";

struct Lab {
    srv: Netns,
    node: Netns,
    node_if: String,
    work: tempfile::TempDir,
    daemon: DaemonProcess,
}

impl Lab {
    fn new() -> Lab {
        require_root("the boot-flow tests");
        let srv = Netns::new("boots");
        let node = Netns::new("bootn");
        let (_, node_if) = srv.link_machine(&format!("{SERVER}/24"), &node, "10.69.0.50/24", MAC);
        let work = tempfile::tempdir().unwrap();
        let mirror = work.path().join("mirror/stable/amd64-usr");
        std::fs::create_dir_all(mirror.join("4081.2.0")).unwrap();
        std::fs::write(
            mirror.join("4081.2.0/version.txt"),
            "FLATCAR_VERSION=4081.2.0\nFLATCAR_VERSION_ID=4081.2.0\n",
        )
        .unwrap();
        let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(
            mirror.join("4081.2.0/flatcar_production_image.bin.bz2"),
            &big,
        )
        .unwrap();
        std::os::unix::fs::symlink("4081.2.0", mirror.join("current")).unwrap();
        std::os::unix::fs::symlink("/etc/shadow", mirror.join("leak")).unwrap();
        let config = format!(
            r#"state_dir = "{state}"
server_ip = "{SERVER}"
[http]
listen = "{SERVER}:8080"
mirror_listen = "{SERVER}:8081"
[flatcar]
mirror_dir = "{mirror}"
version = "current"
node_prefix = 24
node_gateway = "10.69.0.254"
ssh_authorized_keys = ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFQ7o4JPTa6wVZ7Gt7DkTdfyR3dQZs8gdXSXGA4cFwhu operator@laptop"]
"#,
            state = work.path().join("state").display(),
            mirror = work.path().join("mirror").display(),
        );
        let daemon =
            DaemonProcess::start_custom(&work.path().join("state"), &config, Some(&srv), &[]);
        Lab {
            srv,
            node,
            node_if,
            work,
            daemon,
        }
    }

    fn state(&self) -> PathBuf {
        self.work.path().join("state")
    }

    fn lacave(&self, args: &[&str]) -> String {
        lacave_in(&self.srv, BASE, &self.state(), args)
    }

    fn node_state(&self, name: &str) -> String {
        let json: serde_json::Value =
            serde_json::from_str(&self.lacave(&["node", "show", name, "--json"])).unwrap();
        json["node"]["state"]
            .as_str()
            .or(json["state"].as_str())
            .unwrap_or_default()
            .to_string()
    }
}

/// curl from a namespace: (status, body).
fn curl(ns: &Netns, args: &[&str]) -> (u16, Vec<u8>) {
    let out = ns
        .command("curl")
        .args(["-sS", "--path-as-is", "-o", "-", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("curl runs");
    let mut body = out.stdout;
    let split = body.iter().rposition(|b| *b == b'\n').unwrap();
    let code = String::from_utf8_lossy(&body[split + 1..]).parse().unwrap();
    body.truncate(split);
    (code, body)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Applies an Ignition config to `root` with the real Ignition binary, as Flatcar's initramfs
/// does (fetch-offline, then files).
fn apply_ignition(config: &Path, root: &Path) {
    let stubs = root.with_extension("bin");
    std::fs::create_dir_all(&stubs).unwrap();
    std::fs::write(stubs.join("setfiles"), "#!/bin/sh\ncat >/dev/null\n").unwrap();
    sh("chmod", &["+x", stubs.join("setfiles").to_str().unwrap()]);
    std::fs::create_dir_all(root.join("etc/selinux")).unwrap();
    std::fs::create_dir_all(root.join("root")).unwrap();
    std::fs::write(root.join("etc/selinux/config"), "SELINUXTYPE=targeted\n").unwrap();
    for f in ["passwd", "group", "shadow", "gshadow"] {
        std::fs::copy(Path::new("/etc").join(f), root.join("etc").join(f)).unwrap();
    }
    for stage in ["fetch-offline", "files"] {
        let out = Command::new(IGNITION)
            .args(["--platform=file", "--log-to-stdout"])
            .arg(format!("--root={}", root.display()))
            .arg(format!("--stage={stage}"))
            .env("IGNITION_CONFIG_FILE", config)
            .env("IGNITION_WRITE_AUTHORIZED_KEYS_FRAGMENT", "false")
            .env(
                "PATH",
                format!("{}:/usr/sbin:/usr/bin:/sbin:/bin", stubs.display()),
            )
            .output()
            .expect("ignition runs");
        assert!(
            out.status.success(),
            "ignition --stage={stage}: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
    }
}

/// `ignition-validate` must accept the config with no warning at all.
fn validate(config: &Path) {
    let out = Command::new("ignition-validate")
        .arg(config)
        .output()
        .expect("ignition-validate runs");
    let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(
        out.status.success() && said.trim().is_empty(),
        "{}: {said}",
        config.display()
    );
}

/// The file a data URL in an applied config wrote, read back from the rendered JSON.
fn data_file(config: &serde_json::Value, path: &str) -> String {
    let file = config["storage"]["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"] == path)
        .unwrap_or_else(|| panic!("{path} in the config"));
    let source = file["contents"]["source"].as_str().unwrap();
    let data = source.split_once(',').unwrap().1;
    text(
        &base64::engine::general_purpose::STANDARD
            .decode(data)
            .unwrap(),
    )
}

#[test]
fn a_registered_node_installs_reports_and_then_boots_locally() {
    let lab = Lab::new();
    assert!(Path::new(IGNITION).exists(), "Debian's ignition package");

    // Before registration: recorded as discovered, told so, never installed.
    let (code, body) = curl(&lab.node, &[&format!("{BASE}/ipxe/{SEG}")]);
    assert_eq!(code, 200);
    assert!(text(&body).contains("is not registered"), "{}", text(&body));
    assert!(lab.lacave(&["node", "list"]).contains("discovered"));

    lab.lacave(&[
        "node",
        "add",
        "--mac",
        MAC,
        "--hostname",
        "kube01",
        "--ip",
        "10.69.0.11",
        "--role",
        "worker",
    ]);
    // The generic script puts the per-MAC one in its place.
    let (code, body) = curl(&lab.node, &[&format!("{BASE}/boot.ipxe")]);
    assert_eq!(code, 200);
    assert!(text(&body).contains(&format!(
        "chain --replace --autofree {BASE}/ipxe/${{mac:hexhyp}}"
    )));

    // Nothing to install until the script starts the install.
    let (code, _) = curl(&lab.node, &[&format!("{BASE}/ignition/{SEG}/install")]);
    assert_eq!(code, 409);

    let (code, body) = curl(&lab.node, &[&format!("{BASE}/ipxe/{SEG}")]);
    let script = text(&body);
    assert_eq!(code, 200, "{script}");
    assert!(script.contains(&format!(
        "kernel {MIRROR}/mirror/stable/amd64-usr/current/flatcar_production_pxe.vmlinuz initrd=flatcar_production_pxe_image.cpio.gz flatcar.first_boot=1 ignition.config.url={BASE}/ignition/{SEG}/install"
    )), "{script}");
    assert_eq!(lab.node_state("kube01"), "installing");

    // Install config: valid for the real validator, applied by the real Ignition.
    let dir = lab.work.path();
    let (code, install) = curl(&lab.node, &[&format!("{BASE}/ignition/{SEG}/install")]);
    assert_eq!(code, 200, "{}", text(&install));
    std::fs::write(dir.join("install.ign"), &install).unwrap();
    validate(&dir.join("install.ign"));
    apply_ignition(&dir.join("install.ign"), &dir.join("live"));
    let installer = std::fs::read_to_string(dir.join("live/opt/lacave/install.sh")).unwrap();
    assert!(
        installer.contains(&format!(
            "flatcar-install -d '/dev/sda' -C 'stable' -V 'current' -b '{MIRROR}/mirror/stable/amd64-usr' -i /tmp/final.ign"
        )),
        "{installer}"
    );
    assert!(
        dir.join("live/etc/systemd/system/lacave-install.service")
            .exists()
    );
    let env = std::fs::read_to_string(dir.join("live/etc/lacave/callback.env")).unwrap();
    let secret = env
        .trim()
        .strip_prefix("LACAVE_CALLBACK_SECRET=")
        .unwrap()
        .to_string();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(dir.join("live/etc/lacave/callback.env"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );

    // The installer's steps: fetch the final config, "install" it (apply it to the disk's
    // root), report `installed`.
    let (code, fin) = curl(&lab.node, &[&format!("{BASE}/ignition/{SEG}/final")]);
    assert_eq!(code, 200);
    std::fs::write(dir.join("final.ign"), &fin).unwrap();
    validate(&dir.join("final.ign"));
    apply_ignition(&dir.join("final.ign"), &dir.join("disk"));
    let disk = dir.join("disk");
    assert_eq!(
        std::fs::read_to_string(disk.join("etc/hostname")).unwrap(),
        "kube01\n"
    );
    let network =
        std::fs::read_to_string(disk.join("etc/systemd/network/00-lacave.network")).unwrap();
    for line in [
        &format!("MACAddress={MAC}"),
        "Address=10.69.0.11/24",
        "Gateway=10.69.0.254",
        &format!("DNS={SERVER}"),
    ] {
        assert!(network.contains(line), "{line} in {network}");
    }
    let keys = std::fs::read_to_string(disk.join("root/.ssh/authorized_keys")).unwrap();
    let daemon_key = std::fs::read_to_string(lab.state().join("ssh/id_ed25519.pub")).unwrap();
    assert!(keys.contains("operator@laptop"), "{keys}");
    assert!(keys.contains(daemon_key.trim()), "{keys}");
    let ca = lab.srv.http_get(&format!("{BASE}/ca.pem"));
    for f in [
        "etc/ssl/certs/lacave-root.pem",
        "etc/kubernetes/ssl/lacave-root.pem",
    ] {
        assert_eq!(std::fs::read_to_string(disk.join(f)).unwrap(), ca, "{f}");
    }
    for unit in ["lacave-ca.service", "lacave-booted.service"] {
        assert!(
            disk.join("etc/systemd/system").join(unit).exists(),
            "{unit}"
        );
    }
    let fin_json: serde_json::Value = serde_json::from_slice(&fin).unwrap();
    assert_eq!(
        data_file(&fin_json, "/etc/lacave/callback.env").trim(),
        format!("LACAVE_CALLBACK_SECRET={secret}")
    );

    // Callbacks: a wrong secret, or the right one from another machine, change nothing.
    let installed = format!("{BASE}/callback/{SEG}/installed");
    let (code, _) = curl(
        &lab.node,
        &["-X", "POST", "-H", "Authorization: Bearer nope", &installed],
    );
    assert_eq!(code, 401);
    let bearer = format!("Authorization: Bearer {secret}");
    let (code, body) = curl(&lab.srv, &["-X", "POST", "-H", &bearer, &installed]);
    assert_eq!(code, 403, "{}", text(&body));
    assert_eq!(lab.node_state("kube01"), "installing");
    let (code, body) = curl(&lab.node, &["-X", "POST", "-H", &bearer, &installed]);
    assert_eq!(code, 204, "{}", text(&body));
    assert_eq!(lab.node_state("kube01"), "installed");

    // The installed system, on its registered address, reports `booted` with its host key.
    lab.node.add_addr(&lab.node_if, "10.69.0.11/24");
    let host_key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl root@kube01";
    let booted = format!("{BASE}/callback/{SEG}/booted");
    let post_booted = |key: &str| {
        let from = ["--interface", "10.69.0.11", "-X", "POST", "-H", &bearer];
        let (code, body) = curl(
            &lab.node,
            &[&from[..], &["--data-binary", key, &booted]].concat(),
        );
        (code, text(&body))
    };
    let (code, body) = post_booted("not a key");
    assert_eq!(code, 422, "{body}");
    let (code, body) = post_booted(host_key);
    assert_eq!(code, 204, "{body}");
    let shown: serde_json::Value =
        serde_json::from_str(&lab.lacave(&["node", "show", "kube01", "--json"])).unwrap();
    assert!(
        shown.to_string().contains("root@kube01"),
        "host key pinned: {shown}"
    );
    assert!(
        !shown.to_string().contains(&secret),
        "the API never shows the secret"
    );
    assert_eq!(lab.node_state("kube01"), "booted");

    // Configs are not served outside an install; a second PXE boot boots the disk.
    let (code, _) = curl(&lab.node, &[&format!("{BASE}/ignition/{SEG}/install")]);
    assert_eq!(code, 409);
    let (code, body) = curl(&lab.node, &[&format!("{BASE}/ipxe/{SEG}")]);
    assert_eq!(code, 200);
    assert!(
        text(&body).contains("booting from the local disk"),
        "{}",
        text(&body)
    );
    let events = lab.lacave(&["node", "show", "kube01"]);
    for step in [
        "install script served",
        "installed callback",
        "booted callback",
    ] {
        assert!(events.contains(step), "{step}: {events}");
    }

    // A reinstall rotates the secret: the old one no longer works.
    lab.lacave(&["node", "reinstall", "kube01"]);
    curl(&lab.node, &[&format!("{BASE}/ipxe/{SEG}")]);
    let (code, _) = curl(&lab.node, &["-X", "POST", "-H", &bearer, &installed]);
    assert_eq!(code, 401);

    // `lacave render` shows what a node gets; every template for every role passes the real
    // validator.
    let rendered = lab.lacave(&["render", "final", "kube01"]);
    assert!(rendered.contains("\"version\": \"3.3.0\""), "{rendered}");
    lab.lacave(&[
        "node",
        "add",
        "--mac",
        "52:54:00:69:00:09",
        "--hostname",
        "cp01",
        "--ip",
        "10.69.0.9",
        "--role",
        "control-plane",
        "--label",
        "topology.kubernetes.io/zone=a",
    ]);
    for node in ["kube01", "cp01"] {
        for what in ["install", "final"] {
            let path = dir.join(format!("{node}-{what}.ign"));
            std::fs::write(&path, lab.lacave(&["render", what, node])).unwrap();
            validate(&path);
        }
    }
    let script = lab.lacave(&["render", "ipxe", "cp01"]);
    assert!(
        script.starts_with("#!ipxe") && script.contains("kernel "),
        "{script}"
    );
    assert_eq!(
        lab.node_state("cp01"),
        "registered",
        "render changes nothing"
    );
}

#[test]
fn hostile_requests_get_clear_errors_and_change_nothing() {
    let lab = Lab::new();
    lab.lacave(&[
        "node",
        "add",
        "--mac",
        "52:54:00:69:00:02",
        "--hostname",
        "kube02",
        "--ip",
        "10.69.0.12",
        "--role",
        "worker",
    ]);
    // Another machine's script or configs: refused, and the node does not start installing.
    let (code, body) = curl(&lab.node, &[&format!("{BASE}/ipxe/52-54-00-69-00-02")]);
    assert_eq!(code, 403, "{}", text(&body));
    assert!(text(&body).contains("served only to that machine"));
    assert_eq!(lab.node_state("kube02"), "registered");
    assert!(
        lab.daemon
            .log()
            .contains("refused: the request does not come from that machine")
    );

    // A machine that took a node's published address (the node namespace is 10.69.0.50 with
    // MAC :01; kube03 is registered at 10.69.0.50 with MAC :03): refused, with an event on
    // the node, and nothing starts.
    lab.lacave(&[
        "node",
        "add",
        "--mac",
        "52:54:00:69:00:03",
        "--hostname",
        "kube03",
        "--ip",
        "10.69.0.50",
        "--role",
        "worker",
    ]);
    for (method, path) in [
        ("GET", "ipxe/52-54-00-69-00-03"),
        ("GET", "ignition/52-54-00-69-00-03/final"),
        ("POST", "callback/52-54-00-69-00-03/booted"),
    ] {
        let (code, body) = curl(
            &lab.node,
            &[
                "-X",
                method,
                "-d",
                "ssh-ed25519 AAAA x",
                &format!("{BASE}/{path}"),
            ],
        );
        assert_eq!(code, 403, "{path}: {}", text(&body));
        assert!(
            text(&body).contains("another machine on this link (MAC 52:54:00:69:00:01)"),
            "{path}: {}",
            text(&body)
        );
    }
    assert_eq!(lab.node_state("kube03"), "registered");
    let shown = lab.lacave(&["node", "show", "kube03"]);
    assert!(shown.contains("refused 10.69.0.50"), "{shown}");
    assert!(
        shown.contains("the iPXE script refused to 10.69.0.50"),
        "{shown}"
    );
    // Addresses a node cannot have.
    let token = std::fs::read_to_string(lab.state().join("api-token")).unwrap();
    for (ip, why) in [
        (
            "10.69.0.1",
            "the provisioning server's own address (server_ip)",
        ),
        ("10.69.0.0", "the network address of 10.69.0.0/24"),
        ("10.69.0.255", "the broadcast address of 10.69.0.0/24"),
    ] {
        let out = lab
            .srv
            .command(lacave_bin())
            .args([
                "node",
                "add",
                "--mac",
                "52:54:00:69:00:09",
                "--hostname",
                "kube09",
            ])
            .args(["--ip", ip, "--role", "worker"])
            .env("LACAVE_URL", BASE)
            .env("LACAVE_TOKEN", token.trim())
            .output()
            .unwrap();
        let said = text(&out.stderr);
        assert!(!out.status.success() && said.contains(why), "{ip}: {said}");
    }

    let (code, body) = curl(&lab.node, &[&format!("{BASE}/ipxe/zz-not-a-mac")]);
    assert_eq!(code, 400);
    assert!(text(&body).contains("not a MAC address"), "{}", text(&body));
    let (code, _) = curl(&lab.node, &[&format!("{BASE}/ignition/{SEG}/other")]);
    assert_eq!(code, 404);

    // The mirror, on the main listener (streamed) and on its own (sendfile): whole files,
    // ranges, several requests on one connection, nothing outside it.
    for base in [BASE, MIRROR] {
        let file =
            format!("{base}/mirror/stable/amd64-usr/current/flatcar_production_image.bin.bz2");
        let (code, body) = curl(&lab.node, &[&file]);
        assert_eq!((code, body.len()), (200, 3_000_000), "{base}");
        let want: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        assert!(body == want, "{base}: the bytes differ");
        let (code, body) = curl(&lab.node, &["-r", "1000-1009", &file]);
        assert_eq!(code, 206, "{base}");
        assert_eq!(body, want[1000..1010], "{base}");
        let (code, body) = curl(&lab.node, &["-r", "-5", &file]);
        assert_eq!((code, body.as_slice()), (206, &want[2_999_995..]), "{base}");
        let (code, body) = curl(&lab.node, &["-r", "3000000-", &file]);
        assert_eq!(code, 416, "{base}: {}", text(&body));
        let (code, body) = curl(&lab.node, &["-I", &file]);
        assert_eq!(code, 200, "{base}");
        assert!(
            text(&body)
                .to_lowercase()
                .contains("content-length: 3000000"),
            "{base}: {}",
            text(&body)
        );
        // Two requests on one keep-alive connection.
        let version = format!("{base}/mirror/stable/amd64-usr/current/version.txt");
        let (code, body) = curl(&lab.node, &[&version, &version]);
        assert_eq!(code, 200, "{base}");
        assert_eq!(
            text(&body).matches("FLATCAR_VERSION=4081.2.0").count(),
            2,
            "{base}: {}",
            text(&body)
        );
        for bad in [
            "/mirror/../../../../etc/passwd",
            "/mirror/%2e%2e/%2e%2e/etc/passwd",
            "/mirror/stable/amd64-usr/leak",
            "/mirror/nothing",
        ] {
            let (code, body) = curl(&lab.node, &[&format!("{base}{bad}")]);
            assert!(
                code == 404 || code == 400,
                "{base}{bad}: {code} {}",
                text(&body)
            );
            assert!(!text(&body).contains("root:"), "{base}{bad}");
            // Not even where a link leads: the body says "not found", the log says why.
            assert!(
                !text(&body).contains("/etc/shadow") && !text(&body).contains("leads"),
                "{base}{bad}: {}",
                text(&body)
            );
        }
        let (code, _) = curl(&lab.node, &["-X", "PUT", "-d", "x", &version]);
        assert!(code == 405 || code == 404, "{base}: PUT gave {code}");
    }
    // Garbage to the mirror's own listener: an error, and it keeps serving.
    let out = lab
        .node
        .command("sh")
        .args([
            "-c",
            r"printf '\000\001 nonsense\r\n\r\n' | busybox nc -w 2 10.69.0.1 8081",
        ])
        .output()
        .unwrap();
    assert!(
        text(&out.stdout).starts_with("HTTP/1.1 400"),
        "{}",
        text(&out.stdout)
    );
    // Still serving.
    let (code, _) = curl(&lab.node, &[&format!("{BASE}/boot.ipxe")]);
    assert_eq!(code, 200);
}

#[test]
fn a_broken_template_stops_check_config_and_start() {
    let work = tempfile::tempdir().unwrap();
    let templates = work.path().join("templates");
    std::fs::create_dir_all(templates.join("roles/control-plane")).unwrap();
    std::fs::write(
        templates.join("roles/control-plane/final.ign.j2"),
        "{\"ignition\": {\"version\": \"3.3.0\"}, \"storage\": {\"files\": [{\"path\": {{ node.hostname | tojson }}}]}}",
    )
    .unwrap();
    let config = work.path().join("lacave.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = \"{}\"\n[http]\nlisten = \"127.0.0.1:0\"\n[flatcar]\ntemplates_dir = \"{}\"\n",
            work.path().join("state").display(),
            templates.display()
        ),
    )
    .unwrap();
    for args in [vec!["check-config", "--config"], vec!["serve", "--config"]] {
        let out = Command::new(lacave_bin())
            .args(&args)
            .arg(&config)
            .output()
            .unwrap();
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {err}");
        assert!(
            err.contains("roles/control-plane/final.ign.j2")
                && err.contains("not an absolute, normalised path"),
            "{args:?}: {err}"
        );
    }
}

/// A cluster node's final config verifies the Kubernetes sysext with the SHA-256 the
/// mirror checked (`kubernetes/<image>.sha256`, as `lacave mirror fetch kubernetes` writes
/// it), and the real `ignition-validate` accepts it.
#[test]
fn a_cluster_nodes_final_config_verifies_its_sysext_and_validates() {
    let state = tempfile::tempdir().unwrap();
    let mirror = state.path().join("mirror");
    let config = lacave::config::Config::from_toml(
        &format!(
            "state_dir = \"{}\"\nserver_ip = \"10.0.0.1\"\n[http]\nlisten = \"0.0.0.0:8080\"\n\
             [flatcar]\nversion = \"4081.2.0\"\nmirror_dir = \"{}\"\nnode_gateway = \"10.0.0.254\"\n\
             [cluster]\nenabled = true\n",
            state.path().display(),
            mirror.display()
        ),
        Path::new("test.toml"),
    )
    .unwrap();
    let image =
        lacave::boot::kubernetes_sysext(&config.cluster.kubernetes_version, &config.flatcar.board);
    let hex = "5e".repeat(32);
    std::fs::create_dir_all(mirror.join("kubernetes")).unwrap();
    std::fs::write(
        mirror.join(format!("kubernetes/{image}.sha256")),
        format!("{hex}\n"),
    )
    .unwrap();
    let ca = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
    let boot = lacave::boot::Boot::load(&config, ca).unwrap();
    let mut node = lacave::boot::sample_node("kube01", lacave::model::Role::Worker);
    node.state = lacave::model::NodeState::Installed;
    let cx = boot.context(
        &config,
        &node,
        "0123456789abcdef",
        ca,
        &config.cluster.kubernetes_version,
    );
    let text = boot
        .templates
        .render(lacave::boot::Kind::Final, "kube01", "worker", &cx)
        .unwrap();
    let parsed: serde_json::Value = serde_json::from_str(&text).unwrap();
    let sysext = parsed["storage"]["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"] == format!("/opt/extensions/kubernetes/{image}"))
        .expect("the sysext in the final config");
    assert_eq!(
        sysext["contents"]["verification"]["hash"],
        format!("sha256-{hex}")
    );
    let path = state.path().join("final.ign");
    std::fs::write(&path, &text).unwrap();
    validate(&path);
}

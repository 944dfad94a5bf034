//! Power control through real BMC software: OpenIPMI's `ipmi_sim` (a BMC speaking IPMI v2.0
//! over LAN, Debian's `openipmi`), with `ipmitool` (the reference client) reading the same
//! BMC; and a Redfish service from sushy-tools' emulator (PyPI, pinned, `$LACAVE_PYTOOLS`)
//! over HTTPS with a pinned certificate. Everything on loopback.
//!
//! The daemon drives them through `lacave node bmc|power|reinstall --power`: status, on,
//! off, cycle, PXE once; a wrong password, a dead BMC, a certificate that is not the pinned
//! one and a BMC address already another node's are each a clear error naming the node, in
//! bounded time, and no password is ever shown or logged.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lacave_integration_tests::{DaemonProcess, free_port, lacave_bin};

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const PASSWORD: &str = "Ipmi-s3cret-7";

/// `ipmi_sim` on 127.0.0.1:`port`, its chassis (power, boot device) a directory of files the
/// test reads: what a real machine's power and boot order would be.
fn ipmi_sim(dir: &Path, port: u16) -> lacave_integration_tests::ipmi::IpmiSim {
    let state = dir.join("chassis");
    std::fs::create_dir_all(&state).unwrap();
    let script = dir.join("chassis.sh");
    std::fs::write(
        &script,
        format!(
            r#"#!/bin/sh
# ipmi_sim's chassis_control program: DEVICE get|set|check PARM [VALUE]...
state={state}
shift; op=$1; shift
case $op in
get) for p in "$@"; do
        case $p in
        power) echo "power:$(cat $state/power 2>/dev/null || echo 0)" ;;
        boot) echo "boot:$(cat $state/boot 2>/dev/null || echo default)" ;;
        esac
     done ;;
set) while [ $# -ge 2 ]; do echo "$2" > "$state/$1"; echo "$1 $2" >> "$state/log"; shift 2; done ;;
esac
exit 0
"#,
            state = state.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let sim = lacave_integration_tests::ipmi::start(
        Command::new("ipmi_sim"),
        dir,
        "127.0.0.1",
        port,
        PASSWORD,
        &script,
    );
    // Ready when ipmitool gets an answer.
    let deadline = Instant::now() + Duration::from_secs(10);
    while ipmitool(port, PASSWORD, &["chassis", "power", "status"]).is_none() {
        assert!(Instant::now() < deadline, "ipmi_sim did not start");
        std::thread::sleep(Duration::from_millis(200));
    }
    sim
}

/// The reference client's view; `None` when it fails.
fn ipmitool(port: u16, password: &str, args: &[&str]) -> Option<String> {
    let out = Command::new("ipmitool")
        .args(["-I", "lanplus", "-C", "3", "-H", "127.0.0.1", "-p"])
        .arg(port.to_string())
        .args(["-U", "admin", "-P", password, "-N", "1", "-R", "1"])
        .args(args)
        .output()
        .expect("ipmitool runs (scripts/prereqs.sh installs it)");
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `lacave …` against the daemon: exit status, standard output and error.
fn lacave(daemon: &DaemonProcess, token: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(lacave_bin())
        .args(args)
        .env("LACAVE_URL", &daemon.url)
        .env("LACAVE_TOKEN", token)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn ok(daemon: &DaemonProcess, token: &str, args: &[&str]) -> String {
    let (success, out, err) = lacave(daemon, token, args);
    assert!(success, "lacave {args:?} failed:\n{out}{err}");
    out
}

fn read(path: PathBuf) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .trim()
        .to_string()
}

#[test]
fn the_daemon_drives_an_ipmi_bmc_as_ipmitool_sees_it() {
    let work = tempfile::tempdir().unwrap();
    let port = free_port();
    let _sim = ipmi_sim(work.path(), port);
    let chassis = work.path().join("chassis");
    let state = tempfile::tempdir().unwrap();
    let daemon = DaemonProcess::start(state.path());
    let token = daemon.token(state.path());
    ok(
        &daemon,
        &token,
        &[
            "node",
            "add",
            "--mac",
            "52:54:00:aa:00:01",
            "--hostname",
            "kube01",
            "--ip",
            "192.168.1.21",
            "--role",
            "worker",
        ],
    );
    ok(
        &daemon,
        &token,
        &[
            "node",
            "add",
            "--mac",
            "52:54:00:aa:00:02",
            "--hostname",
            "kube02",
            "--ip",
            "192.168.1.22",
            "--role",
            "worker",
        ],
    );
    let password_file = work.path().join("bmc-password");
    std::fs::write(&password_file, format!("{PASSWORD}\n")).unwrap();
    let url = format!("ipmi://127.0.0.1:{port}");
    ok(
        &daemon,
        &token,
        &[
            "node",
            "bmc",
            "kube01",
            &url,
            "--user",
            "admin",
            "--password-file",
            password_file.to_str().unwrap(),
        ],
    );
    // Kept 0600, shown without its password.
    use std::os::unix::fs::PermissionsExt;
    let kept = state.path().join("bmc/52-54-00-aa-00-01.json");
    assert_eq!(
        std::fs::metadata(&kept).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let shown = ok(&daemon, &token, &["node", "bmc", "kube01"]);
    assert!(shown.contains(&url) && shown.contains("admin"), "{shown}");
    assert!(!shown.contains(PASSWORD), "{shown}");

    // Status, on, PXE once, cycle, off: the BMC's chassis and ipmitool agree with lacave.
    assert_eq!(
        ok(&daemon, &token, &["node", "power", "kube01", "status"]).trim(),
        "off"
    );
    assert!(
        ipmitool(port, PASSWORD, &["chassis", "power", "status"])
            .unwrap()
            .contains("off")
    );
    ok(&daemon, &token, &["node", "power", "kube01", "on"]);
    assert_eq!(read(chassis.join("power")), "1");
    assert!(
        ipmitool(port, PASSWORD, &["chassis", "power", "status"])
            .unwrap()
            .contains("on")
    );
    assert_eq!(
        ok(&daemon, &token, &["node", "power", "kube01", "status"]).trim(),
        "on"
    );
    ok(&daemon, &token, &["node", "power", "kube01", "pxe-once"]);
    assert_eq!(read(chassis.join("boot")), "pxe");
    ok(&daemon, &token, &["node", "power", "kube01", "off"]);
    assert_eq!(read(chassis.join("power")), "0");
    std::fs::remove_file(chassis.join("log")).unwrap();

    // A reinstall with --power: PXE next boot, then a cycle (on, from off).
    std::fs::write(chassis.join("boot"), "default\n").unwrap();
    let said = ok(&daemon, &token, &["node", "reinstall", "kube01", "--power"]);
    assert!(said.contains("registered"), "{said}");
    let log = read(chassis.join("log"));
    assert!(log.starts_with("boot pxe"), "{log}");
    assert!(log.contains("power 1"), "{log}");
    // A cycle of a machine that is on: off, then on again a second later (ipmi_sim's timer).
    ok(&daemon, &token, &["node", "power", "kube01", "cycle"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !read(chassis.join("log")).ends_with("power 0\npower 1") {
        assert!(Instant::now() < deadline, "{}", read(chassis.join("log")));
        std::thread::sleep(Duration::from_millis(200));
    }

    // /metrics has what the BMC said.
    let metrics = String::from_utf8(
        Command::new("curl")
            .args(["-sS", &format!("{}/metrics", daemon.url)])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert!(
        metrics.contains("lacave_node_power_on{node=\"kube01\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("lacave_bmc_up{node=\"kube01\"} 1"),
        "{metrics}"
    );

    // The same BMC for another node: refused, the owner named.
    let (success, out, err) = lacave(
        &daemon,
        &token,
        &[
            "node",
            "bmc",
            "kube02",
            &url,
            "--user",
            "admin",
            "--password-file",
            password_file.to_str().unwrap(),
        ],
    );
    assert!(!success, "{out}");
    assert!(err.contains("kube01"), "{err}");

    // A wrong password: a clear error naming the node, quickly, never the password.
    let wrong_file = work.path().join("wrong");
    std::fs::write(&wrong_file, "not-the-password\n").unwrap();
    ok(
        &daemon,
        &token,
        &[
            "node",
            "bmc",
            "kube02",
            &format!("ipmi://127.0.0.2:{port}"),
            "--user",
            "admin",
            "--password-file",
            wrong_file.to_str().unwrap(),
        ],
    );
    ok(
        &daemon,
        &token,
        &[
            "node",
            "bmc",
            "kube01",
            &url,
            "--user",
            "admin",
            "--password-file",
            wrong_file.to_str().unwrap(),
        ],
    );
    let started = Instant::now();
    let (success, out, err) = lacave(&daemon, &token, &["node", "power", "kube01", "on"]);
    assert!(!success, "{out}");
    assert!(
        err.contains("kube01") && err.contains("refused the user name or password"),
        "{err}"
    );
    assert!(!err.contains("not-the-password"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );

    // A BMC that does not answer (nothing on 127.0.0.2's port): an error in bounded time,
    // while the other node's BMC answers meanwhile.
    let started = Instant::now();
    let (success, _, err) = lacave(&daemon, &token, &["node", "power", "kube02", "status"]);
    assert!(!success);
    assert!(
        err.contains("kube02") && err.contains("does not answer"),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "{:?}",
        started.elapsed()
    );

    // A site backup says that it holds the BMCs' credentials.
    let site = work.path().join("site.tar");
    let out = Command::new(lacave_bin())
        .args(["backup", "--site", "-o"])
        .arg(&site)
        .arg("--config")
        .arg(&daemon.config_path)
        .env("LACAVE_URL", &daemon.url)
        .env("LACAVE_TOKEN", &token)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let manifest = Command::new("tar")
        .arg("-xOf")
        .arg(&site)
        .arg("MANIFEST.txt")
        .output()
        .unwrap();
    let manifest = String::from_utf8_lossy(&manifest.stdout);
    assert!(
        manifest.contains("2 nodes' BMC addresses WITH their user names and passwords"),
        "{manifest}"
    );

    // Neither node's history (power operations, failures included) holds a password.
    for node in ["kube01", "kube02"] {
        let history = ok(&daemon, &token, &["node", "show", node, "--output", "json"]);
        // kube01's operations are there, its failed one with why (a status is not recorded).
        if node == "kube01" {
            assert!(
                history.contains("refused the user name or password"),
                "{history}"
            );
        }
        assert!(
            !history.contains(PASSWORD) && !history.contains("not-the-password"),
            "{history}"
        );
    }

    // Removing a node forgets its BMC; the log never held a password.
    ok(&daemon, &token, &["node", "rm", "kube02"]);
    assert!(!state.path().join("bmc/52-54-00-aa-00-02.json").exists());
    let log = daemon.log();
    assert!(
        !log.contains(PASSWORD) && !log.contains("not-the-password"),
        "{log}"
    );
}

#[test]
fn the_daemon_drives_a_redfish_service_with_a_pinned_certificate() {
    let tools = std::env::var("LACAVE_PYTOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            std::fs::read_dir("/var/cache/lacave-tests")
                .unwrap()
                .flatten()
                .map(|e| e.path().join("bin"))
                .find(|p| p.join("sushy-emulator").exists())
                .expect("no sushy-emulator: run scripts/test (ensure_pytools)")
        });
    let work = tempfile::tempdir().unwrap();
    // The BMC's own certificate, self-signed: pinned by its SHA-256.
    let (cert, key) = (work.path().join("bmc.pem"), work.path().join("bmc.key"));
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=bmc",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(made.status.success());
    let der = Command::new("openssl")
        .args(["x509", "-outform", "der", "-in"])
        .arg(&cert)
        .output()
        .unwrap()
        .stdout;
    use sha2::Digest;
    let sha256: String = sha2::Sha256::digest(&der)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let port = free_port();
    let _emulator = Killed(
        Command::new(tools.join("sushy-emulator"))
            .args([
                "--fake",
                "-i",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "--ssl-certificate",
            ])
            .arg(&cert)
            .arg("--ssl-key")
            .arg(&key)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let emulator = |path: &str| -> serde_json::Value {
        let out = Command::new("curl")
            .args(["-sS", "-k", &format!("https://127.0.0.1:{port}{path}")])
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while emulator("/redfish/v1/Systems")["Members"]
        .as_array()
        .is_none_or(|m| m.is_empty())
    {
        assert!(Instant::now() < deadline, "sushy-emulator did not start");
        std::thread::sleep(Duration::from_millis(300));
    }
    let system = emulator("/redfish/v1/Systems")["Members"][0]["@odata.id"]
        .as_str()
        .unwrap()
        .to_string();

    let state = tempfile::tempdir().unwrap();
    let daemon = DaemonProcess::start(state.path());
    let token = daemon.token(state.path());
    ok(
        &daemon,
        &token,
        &[
            "node",
            "add",
            "--mac",
            "52:54:00:bb:00:01",
            "--hostname",
            "rf01",
            "--ip",
            "192.168.1.31",
            "--role",
            "worker",
        ],
    );
    let password_file = work.path().join("pw");
    std::fs::write(&password_file, "redfish-pw\n").unwrap();
    let set = |url: &str| {
        ok(
            &daemon,
            &token,
            &[
                "node",
                "bmc",
                "rf01",
                url,
                "--user",
                "admin",
                "--password-file",
                password_file.to_str().unwrap(),
            ],
        );
    };
    set(&format!("redfish://127.0.0.1:{port}?sha256={sha256}"));
    ok(&daemon, &token, &["node", "power", "rf01", "on"]);
    assert_eq!(emulator(&system)["PowerState"], "On");
    assert_eq!(
        ok(&daemon, &token, &["node", "power", "rf01", "status"]).trim(),
        "on"
    );
    ok(&daemon, &token, &["node", "power", "rf01", "pxe-once"]);
    let boot = &emulator(&system)["Boot"];
    assert_eq!(boot["BootSourceOverrideTarget"], "Pxe", "{boot}");
    // lacave asks for "Once"; the emulator keeps every override "Continuous" (its libvirt
    // model has no one-time boot device, main.py says so), so that part is not checked here.
    ok(&daemon, &token, &["node", "power", "rf01", "off"]);
    assert_eq!(emulator(&system)["PowerState"], "Off");
    ok(&daemon, &token, &["node", "power", "rf01", "cycle"]);
    // The emulator, like a BMC, applies a reset a little after accepting it.
    let deadline = Instant::now() + Duration::from_secs(15);
    while emulator(&system)["PowerState"] != "On" {
        assert!(Instant::now() < deadline, "the cycle never powered it on");
        std::thread::sleep(Duration::from_millis(300));
    }

    // A BMC that accepts a power-on and never shows it: an error saying so, in bounded time.
    let stuck_port = free_port();
    let _stuck = Killed(
        Command::new("python3")
            .arg(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("power/stuck_redfish.py"))
            .arg(stuck_port.to_string())
            .arg(&cert)
            .arg(&key)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    std::thread::sleep(Duration::from_millis(500));
    set(&format!("redfish://127.0.0.1:{stuck_port}?sha256={sha256}"));
    let started = Instant::now();
    let (success, _, err) = lacave(&daemon, &token, &["node", "power", "rf01", "on"]);
    assert!(!success);
    assert!(
        err.contains("rf01") && err.contains("still did not say on"),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(21),
        "{:?}",
        started.elapsed()
    );

    // Another certificate than the pinned one: refused, said so.
    set(&format!(
        "redfish://127.0.0.1:{port}?sha256={}",
        "0".repeat(64)
    ));
    let (success, _, err) = lacave(&daemon, &token, &["node", "power", "rf01", "status"]);
    assert!(!success);
    assert!(err.contains("rf01") && err.contains("certificate"), "{err}");
    // Without a pin the lacave CA must have signed it: it did not.
    set(&format!("redfish://127.0.0.1:{port}"));
    let (success, _, err) = lacave(&daemon, &token, &["node", "power", "rf01", "status"]);
    assert!(!success);
    assert!(err.contains("certificate"), "{err}");
    assert!(!daemon.log().contains("redfish-pw"));
}

#[test]
fn cluster_power_on_powers_control_planes_then_workers_and_names_a_dead_bmc() {
    let (cp_dir, w_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (cp_port, w_port) = (free_port(), free_port());
    let _cp = ipmi_sim(cp_dir.path(), cp_port);
    let _w = ipmi_sim(w_dir.path(), w_port);
    let state = tempfile::tempdir().unwrap();
    let daemon = DaemonProcess::start(state.path());
    let token = daemon.token(state.path());
    let password_file = cp_dir.path().join("pw");
    std::fs::write(&password_file, format!("{PASSWORD}\n")).unwrap();
    for (i, (host, role, bmc)) in [
        (
            "cp01",
            "control-plane",
            Some(format!("ipmi://127.0.0.1:{cp_port}")),
        ),
        ("w01", "worker", Some(format!("ipmi://127.0.0.1:{w_port}"))),
        // A BMC that does not answer.
        ("w02", "worker", Some(format!("ipmi://127.0.0.3:{w_port}"))),
        // No BMC: left alone.
        ("w03", "worker", None),
    ]
    .into_iter()
    .enumerate()
    {
        let (mac, ip) = (format!("52:54:00:cc:00:0{i}"), format!("192.168.1.4{i}"));
        let mut add = vec![
            "node",
            "add",
            "--mac",
            &mac,
            "--hostname",
            host,
            "--ip",
            &ip,
            "--role",
            role,
        ];
        let password = password_file.to_str().unwrap();
        match (&bmc, host) {
            // The BMC given with the registration…
            (Some(url), "cp01" | "w02") => {
                add.extend(["--bmc", url, "--bmc-user", "admin"]);
                add.extend(["--bmc-password-file", password]);
                ok(&daemon, &token, &add);
            }
            // …or afterwards, with an edit that changes nothing else.
            (Some(url), _) => {
                ok(&daemon, &token, &add);
                ok(
                    &daemon,
                    &token,
                    &[
                        "node",
                        "edit",
                        host,
                        "--bmc",
                        url,
                        "--bmc-user",
                        "admin",
                        "--bmc-password-file",
                        password,
                    ],
                );
            }
            (None, _) => {
                ok(&daemon, &token, &add);
            }
        }
    }
    let (success, out, err) = lacave(&daemon, &token, &["cluster", "power-on"]);
    assert!(!success, "a dead BMC is a failure:\n{out}{err}");
    // The control plane first, then the workers; the dead one named, the others on.
    let cp_at = out
        .find("cp01 (control plane): on")
        .unwrap_or_else(|| panic!("{out}"));
    let w_at = out
        .find("w01 (worker): on")
        .unwrap_or_else(|| panic!("{out}"));
    assert!(cp_at < w_at, "{out}");
    assert!(
        err.contains("w02") && err.contains("does not answer"),
        "{err}"
    );
    assert!(!out.contains("w03") && !err.contains("w03"), "{out}{err}");
    assert_eq!(read(cp_dir.path().join("chassis/power")), "1");
    assert_eq!(read(w_dir.path().join("chassis/power")), "1");
    // Each node's history has what was done to it.
    let history = ok(
        &daemon,
        &token,
        &["node", "show", "w01", "--output", "json"],
    );
    assert!(history.contains("power on"), "{history}");
}

//! DHCP in full mode against real clients, ISC dhclient and busybox udhcpc, in a client
//! namespace linked by veth to the daemon's namespace (10.67.0.0/24, nowhere else).

use std::path::{Path, PathBuf};
use std::time::Duration;

use lacave_integration_tests::netns::{Netns, require_root, sh};
use lacave_integration_tests::{DaemonProcess, lacave_bin};

const SERVER: &str = "10.67.0.1";

struct Lab {
    srv: Netns,
    cli: Netns,
    srv_if: String,
    cli_if: String,
    work: tempfile::TempDir,
    daemon: Option<DaemonProcess>,
}

impl Lab {
    fn new() -> Lab {
        require_root("the DHCP tests");
        let srv = Netns::new("dhcps");
        let cli = Netns::new("dhcpc");
        let (srv_if, cli_if) = srv.link(&format!("{SERVER}/24"), &cli, "");
        let mut lab = Lab {
            srv,
            cli,
            srv_if,
            cli_if,
            work: tempfile::tempdir().unwrap(),
            daemon: None,
        };
        lab.start();
        lab
    }

    fn state(&self) -> PathBuf {
        self.work.path().join("state")
    }

    fn start(&mut self) {
        let config = format!(
            r#"state_dir = "{}"
server_ip = "{SERVER}"
[http]
listen = "{SERVER}:8080"
[dhcp]
mode = "full"
interface = "{}"
subnet = "10.67.0.0/24"
router = "10.67.0.254"
dns_servers = ["{SERVER}"]
domain = "lacave"
lease_time = 600
pool = "10.67.0.100-10.67.0.101"
unknown_clients = "discover"
"#,
            self.state().display(),
            self.srv_if
        );
        self.daemon = Some(DaemonProcess::start_custom(
            &self.state(),
            &config,
            Some(&self.srv),
            &[],
        ));
    }

    fn restart(&mut self) {
        assert!(self.daemon.as_mut().unwrap().terminate().success());
        self.start();
    }

    fn lacave(&self, args: &[&str]) -> String {
        let token = std::fs::read_to_string(self.state().join("api-token")).unwrap();
        let out = self
            .srv
            .command(lacave_bin())
            .args(args)
            .env("LACAVE_URL", format!("http://{SERVER}:8080"))
            .env("LACAVE_TOKEN", token.trim())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn set_mac(&self, mac: &str) {
        sh(
            "ip",
            &["-n", &self.cli.name, "link", "set", &self.cli_if, "down"],
        );
        sh(
            "ip",
            &[
                "-n",
                &self.cli.name,
                "link",
                "set",
                &self.cli_if,
                "address",
                mac,
            ],
        );
        sh(
            "ip",
            &["-n", &self.cli.name, "link", "set", &self.cli_if, "up"],
        );
    }

    /// A script that writes what the client was given, one `key=value` per line, and, like
    /// dhclient-script, puts a bound address on the interface (a RELEASE is sent from it).
    fn recorder(&self, name: &str, vars: &[&str]) -> (PathBuf, PathBuf) {
        let out = self.work.path().join(format!("{name}.out"));
        let script = self.work.path().join(format!("{name}.sh"));
        let mut text = String::from("#!/bin/sh\n");
        for v in vars {
            text.push_str(&format!("echo \"{v}=${v}\" >> {}\n", out.display()));
        }
        // dhclient gives its script almost no environment: no PATH.
        let ip = ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("ip (iproute2)");
        text.push_str(&format!(
            "case \"$reason\" in BOUND|RENEW|REBIND|REBOOT) {ip} addr flush dev \"$interface\"; {ip} addr add \"$new_ip_address/24\" dev \"$interface\";; esac\n"
        ));
        text.push_str(&format!("echo --- >> {}\n", out.display()));
        std::fs::write(&script, text).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        (script, out)
    }

    fn dhclient(&self, args: &[&str], script: &Path) {
        let lf = self.work.path().join("dhclient.leases");
        let pf = self.work.path().join("dhclient.pid");
        // `dhclient -1` stays in the background once bound; a machine runs one at a time.
        if !args.contains(&"-r") {
            let pids = sh("ip", &["netns", "pids", &self.cli.name]);
            for pid in String::from_utf8_lossy(&pids.stdout).split_whitespace() {
                let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                if comm.trim() == "dhclient" {
                    let _ = std::process::Command::new("kill").arg(pid).status();
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let out = self
            .cli
            .command("timeout")
            .args(["20", "dhclient", "-1", "-sf"])
            .arg(script)
            .arg("-lf")
            .arg(&lf)
            .arg("-pf")
            .arg(&pf)
            .args(args)
            .arg(&self.cli_if)
            .output()
            .expect("dhclient runs (package isc-dhcp-client)");
        assert!(
            out.status.success(),
            "dhclient: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn value(out: &str, key: &str) -> String {
    out.lines()
        .rev()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or("")
        .to_string()
}

#[test]
fn dhclient_and_udhcpc_get_registered_and_pool_addresses() {
    let mut lab = Lab::new();
    lab.lacave(&[
        "node",
        "add",
        "--mac",
        "52:54:00:67:00:21",
        "--hostname",
        "kube01",
        "--ip",
        "10.67.0.21",
        "--role",
        "control-plane",
    ]);

    // A registered MAC gets its own address with router, DNS, domain and lease time.
    lab.set_mac("52:54:00:67:00:21");
    let (script, out) = lab.recorder(
        "isc",
        &[
            "reason",
            "new_ip_address",
            "new_routers",
            "new_domain_name_servers",
            "new_domain_name",
            "new_dhcp_lease_time",
            "new_dhcp_server_identifier",
        ],
    );
    lab.dhclient(&[], &script);
    let got = std::fs::read_to_string(&out).unwrap();
    assert_eq!(value(&got, "reason"), "BOUND", "{got}");
    assert_eq!(value(&got, "new_ip_address"), "10.67.0.21", "{got}");
    assert_eq!(value(&got, "new_routers"), "10.67.0.254");
    assert_eq!(value(&got, "new_domain_name_servers"), SERVER);
    assert_eq!(value(&got, "new_domain_name"), "lacave");
    assert_eq!(value(&got, "new_dhcp_lease_time"), "600");
    assert_eq!(value(&got, "new_dhcp_server_identifier"), SERVER);

    // busybox udhcpc, same MAC, same answer.
    let (uscript, uout) = lab.recorder("udhcpc", &["ip", "router", "dns", "domain", "lease"]);
    let r = lab
        .cli
        .command("timeout")
        .args([
            "20",
            "busybox",
            "udhcpc",
            "-f",
            "-q",
            "-n",
            "-t",
            "3",
            "-i",
            &lab.cli_if,
            "-s",
        ])
        .arg(&uscript)
        .output()
        .expect("busybox runs");
    let got = std::fs::read_to_string(&uout).unwrap_or_default();
    assert_eq!(
        value(&got, "ip"),
        "10.67.0.21",
        "{got}{}",
        String::from_utf8_lossy(&r.stderr)
    );
    assert_eq!(value(&got, "router"), "10.67.0.254");
    assert_eq!(value(&got, "domain"), "lacave");
    assert_eq!(value(&got, "lease"), "600");

    // An unknown MAC gets a pool address and is recorded as discovered.
    lab.set_mac("52:54:00:67:00:99");
    let (script, out) = lab.recorder("pool", &["reason", "new_ip_address"]);
    lab.dhclient(&[], &script);
    let got = std::fs::read_to_string(&out).unwrap();
    assert_eq!(value(&got, "new_ip_address"), "10.67.0.100", "{got}");
    let listed = lab.lacave(&["node", "list"]);
    assert!(
        listed.contains("52:54:00:67:00:99") && listed.contains("discovered"),
        "{listed}"
    );

    // Leases survive a restart: the same client keeps its address; another gets the next.
    lab.restart();
    let (script, out) = lab.recorder("again", &["reason", "new_ip_address"]);
    lab.dhclient(&[], &script);
    assert_eq!(
        value(&std::fs::read_to_string(&out).unwrap(), "new_ip_address"),
        "10.67.0.100"
    );

    // RELEASE frees the lease: the pool's first address goes to the next newcomer.
    let (rscript, _) = lab.recorder("release", &["reason"]);
    lab.dhclient(&["-r"], &rscript);
    std::thread::sleep(Duration::from_millis(300));
    std::thread::sleep(Duration::from_millis(300));
    lab.set_mac("52:54:00:67:00:98");
    let (script, out) = lab.recorder("next", &["reason", "new_ip_address"]);
    lab.dhclient(&[], &script);
    assert_eq!(
        value(&std::fs::read_to_string(&out).unwrap(), "new_ip_address"),
        "10.67.0.100",
        "after release: {}",
        lab.daemon.as_ref().unwrap().log()
    );

    let metrics = lab
        .srv
        .command("curl")
        .args(["-s", &format!("http://{SERVER}:8080/metrics")])
        .output()
        .unwrap();
    let metrics = String::from_utf8_lossy(&metrics.stdout);
    assert!(
        metrics.contains("lacave_dhcp_messages_total{type=\"discover\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("lacave_dhcp_messages_total{type=\"release\"}"),
        "{metrics}"
    );
}

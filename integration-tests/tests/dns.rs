//! The cluster zone against real DNS peers, in network namespaces the test creates: `dig`
//! (bind9-dnsutils) as the client, BIND's `named` as a second authoritative server for
//! another zone, reached through our forwarder by an allowed client only.
//!
//! Addresses (all inside the test's namespaces): our daemon 10.53.0.1 (DNS and API); clients
//! 10.53.0.10 (may recurse), 10.53.0.20 (may not), 10.53.0.30 (may transfer); named 10.53.1.2
//! in a second namespace behind a veth pair.

use std::path::Path;
use std::time::{Duration, Instant};

use lacave_integration_tests::DaemonProcess;
use lacave_integration_tests::netns::{Netns, require_root};

const DAEMON: &str = "10.53.0.1";
const ALLOWED: &str = "10.53.0.10";
const DENIED: &str = "10.53.0.20";
const TRANSFER: &str = "10.53.0.30";
const UPSTREAM: &str = "10.53.1.2";

struct Lab {
    srv: Netns,
    _up: Netns,
    _named: Named,
    work: tempfile::TempDir,
    daemon: Option<DaemonProcess>,
}

impl Lab {
    fn new() -> Lab {
        require_root("the DNS tests");
        let srv = Netns::new("dns");
        let up = Netns::new("up");
        for addr in [DAEMON, ALLOWED, DENIED, TRANSFER] {
            srv.add_addr("lo", &format!("{addr}/32"));
        }
        srv.link("10.53.1.1/24", &up, &format!("{UPSTREAM}/24"));
        let work = tempfile::tempdir().unwrap();
        let named = start_named(&up, work.path());
        let mut lab = Lab {
            srv,
            _up: up,
            _named: named,
            work,
            daemon: None,
        };
        lab.start_daemon();
        lab
    }

    fn state(&self) -> std::path::PathBuf {
        self.work.path().join("state")
    }

    fn start_daemon(&mut self) {
        let config = format!(
            r#"state_dir = "{}"
server_ip = "{DAEMON}"
[http]
listen = "{DAEMON}:8080"
[dns]
listen = "{DAEMON}:53"
forwarders = ["{UPSTREAM}"]
allow_recursion_from = ["{ALLOWED}/32"]
axfr_allow = ["{TRANSFER}"]
[[dns.records]]
name = "nexus"
type = "CNAME"
value = "kube"
[[dns.records]]
name = "@"
type = "MX"
value = "10 mail"
"#,
            self.state().display()
        );
        self.daemon = Some(DaemonProcess::start_custom(
            &self.state(),
            &config,
            Some(&self.srv),
            &[],
        ));
    }

    fn restart(&mut self) {
        let status = self.daemon.as_mut().unwrap().terminate();
        assert!(status.success());
        self.start_daemon();
    }

    /// `lacave …` inside the namespace, against the daemon's API.
    fn lacave(&self, args: &[&str]) -> String {
        lacave_integration_tests::lacave_in(
            &self.srv,
            &format!("http://{DAEMON}:8080"),
            &self.state(),
            args,
        )
    }

    /// `dig` inside the namespace from `src`; returns its whole output.
    fn dig(&self, src: &str, args: &[&str]) -> String {
        let out = self
            .srv
            .command("dig")
            .args(["-b", src, &format!("@{DAEMON}"), "+tries=1", "+time=3"])
            .args(args)
            .output()
            .expect("dig runs (package bind9-dnsutils)");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The answer's records, sorted. Without a DNS cookie (dig makes a new one per run), so
    /// that the same question is the same bytes each time and repeated ones are answered
    /// from the answers already sent: the checks below that the zone follows the registry
    /// then hold for those too.
    fn short(&self, args: &[&str]) -> Vec<String> {
        let mut v: Vec<String> = self
            .dig(ALLOWED, &[args, &["+short", "+nocookie"]].concat())
            .lines()
            .map(str::to_string)
            .collect();
        v.sort();
        v
    }

    fn serial(&self) -> u32 {
        self.short(&["lacave", "SOA"])[0]
            .split_whitespace()
            .nth(2)
            .unwrap()
            .parse()
            .unwrap()
    }
}

fn status(dig_output: &str) -> &str {
    dig_output
        .split("status: ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .unwrap_or("NO ANSWER")
}

fn flags(dig_output: &str) -> Vec<&str> {
    dig_output
        .split("flags: ")
        .nth(1)
        .and_then(|s| s.split(';').next())
        .map(|s| s.split_whitespace().collect())
        .unwrap_or_default()
}

/// `named`, stopped and reaped when dropped.
struct Named(std::process::Child);

impl Drop for Named {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// BIND serving `example.test` in the upstream namespace.
fn start_named(ns: &Netns, dir: &Path) -> Named {
    let zone = "$TTL 60\n@ IN SOA ns.example.test. hostmaster.example.test. 1 3600 600 86400 60\n@ IN NS ns.example.test.\nns IN A 10.53.1.2\nwww IN A 10.53.9.9\n";
    std::fs::write(dir.join("example.test.zone"), zone).unwrap();
    let d = dir.display();
    std::fs::write(
        dir.join("named.conf"),
        format!(
            "options {{ directory \"{d}\"; pid-file \"{d}/named.pid\"; session-keyfile \"{d}/session.key\"; listen-on port 53 {{ {UPSTREAM}; }}; listen-on-v6 {{ none; }}; recursion no; dnssec-validation no; allow-query {{ any; }}; }};\nzone \"example.test\" {{ type primary; file \"{d}/example.test.zone\"; }};\n"
        ),
    )
    .unwrap();
    let child = Named(
        ns.command("named")
            .args(["-g", "-c"])
            .arg(dir.join("named.conf"))
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.join("named.log")).unwrap())
            .spawn()
            .expect("named runs (package bind9)"),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = ns
            .command("dig")
            .args([
                &format!("@{UPSTREAM}"),
                "www.example.test",
                "+short",
                "+time=1",
                "+tries=1",
            ])
            .output()
            .unwrap();
        if String::from_utf8_lossy(&out.stdout).contains("10.53.9.9") {
            return child;
        }
        assert!(
            Instant::now() < deadline,
            "named did not start: {}",
            std::fs::read_to_string(dir.join("named.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn the_zone_follows_the_registry_and_answers_authoritatively() {
    let mut lab = Lab::new();
    lab.lacave(&[
        "node",
        "add",
        "--mac",
        "52:54:00:00:00:01",
        "--hostname",
        "kube01",
        "--ip",
        "192.168.1.21",
        "--role",
        "control-plane",
    ]);
    lab.lacave(&[
        "node",
        "add",
        "--mac",
        "52:54:00:00:00:02",
        "--hostname",
        "kube02",
        "--ip",
        "192.168.1.22",
        "--role",
        "worker",
    ]);

    let out = lab.dig(DENIED, &["kube01.lacave", "A"]);
    assert_eq!(status(&out), "NOERROR", "{out}");
    assert!(
        flags(&out).contains(&"aa"),
        "authoritative answers go to anyone: {out}"
    );
    assert_eq!(lab.short(&["kube01.lacave"]), ["192.168.1.21"]);
    assert_eq!(
        lab.short(&["KuBe01.LaCaVe"]),
        ["192.168.1.21"],
        "case-insensitive"
    );
    assert_eq!(
        lab.short(&["kube.lacave"]),
        ["192.168.1.21"],
        "control-plane only"
    );
    assert_eq!(lab.short(&["-x", "192.168.1.22"]), ["kube02.lacave."]);
    assert_eq!(lab.short(&["ns.lacave"]), [DAEMON]);
    assert_eq!(lab.short(&["lacave", "NS"]), ["ns.lacave."]);

    // kube.lacave gains and loses addresses; the serial grows with each change.
    let s1 = lab.serial();
    lab.lacave(&[
        "node",
        "add",
        "--mac",
        "52:54:00:00:00:03",
        "--hostname",
        "kube03",
        "--ip",
        "192.168.1.23",
        "--role",
        "control-plane",
    ]);
    assert_eq!(
        lab.short(&["kube.lacave"]),
        ["192.168.1.21", "192.168.1.23"]
    );
    let s2 = lab.serial();
    assert!(s2 > s1, "{s2} > {s1}");
    lab.lacave(&["node", "rm", "kube01"]);
    assert_eq!(lab.short(&["kube.lacave"]), ["192.168.1.23"]);
    let out = lab.dig(ALLOWED, &["kube01.lacave"]);
    assert_eq!(status(&out), "NXDOMAIN", "{out}");
    let s3 = lab.serial();
    assert!(s3 > s2, "{s3} > {s2}");

    // NXDOMAIN and NODATA, both with the SOA in the authority section.
    let nx = lab.dig(ALLOWED, &["nothing.lacave", "A"]);
    assert_eq!(status(&nx), "NXDOMAIN");
    assert!(
        nx.contains("AUTHORITY: 1") && nx.contains("IN\tSOA"),
        "{nx}"
    );
    let nodata = lab.dig(ALLOWED, &["kube02.lacave", "AAAA"]);
    assert_eq!(status(&nodata), "NOERROR");
    assert!(
        nodata.contains("ANSWER: 0") && nodata.contains("AUTHORITY: 1"),
        "{nodata}"
    );

    // Every record kind, from the configuration and through the CLI; CNAMEs resolve.
    lab.lacave(&["dns", "add", "login.kube", "CNAME", "kube"]);
    lab.lacave(&["dns", "add", "docker", "AAAA", "fd00::53"]);
    lab.lacave(&["dns", "add", "docker", "A", "192.168.1.50"]);
    lab.lacave(&["dns", "add", "@", "TXT", "lacave cluster"]);
    lab.lacave(&["dns", "add", "_https._tcp.kube", "SRV", "10 5 443 kube"]);
    lab.lacave(&["dns", "add", "mail", "A", "192.168.1.60"]);
    assert_eq!(
        lab.short(&["login.kube.lacave"]),
        ["192.168.1.23", "kube.lacave."]
    );
    assert_eq!(
        lab.short(&["nexus.lacave"]),
        ["192.168.1.23", "kube.lacave."]
    );
    assert_eq!(lab.short(&["docker.lacave", "AAAA"]), ["fd00::53"]);
    assert_eq!(lab.short(&["docker.lacave", "A"]), ["192.168.1.50"]);
    assert_eq!(lab.short(&["lacave", "TXT"]), ["\"lacave cluster\""]);
    assert_eq!(
        lab.short(&["_https._tcp.kube.lacave", "SRV"]),
        ["10 5 443 kube.lacave."]
    );
    assert_eq!(lab.short(&["lacave", "MX"]), ["10 mail.lacave."]);
    let listed = lab.lacave(&["dns", "list"]);
    assert!(
        listed.contains("nexus.lacave.") && listed.contains("config"),
        "{listed}"
    );
    let id = listed
        .lines()
        .find(|l| l.contains("docker.lacave.") && l.contains("AAAA"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .to_string();
    lab.lacave(&["dns", "rm", &id]);
    assert!(lab.short(&["docker.lacave", "AAAA"]).is_empty());

    // Answers over TCP, and truncation with TCP fallback for a large answer.
    assert_eq!(lab.short(&["+tcp", "kube02.lacave"]), ["192.168.1.22"]);
    for i in 0..12 {
        lab.lacave(&[
            "dns",
            "add",
            "big",
            "TXT",
            &format!("{i:02} {}", "x".repeat(90)),
        ]);
    }
    let truncated = lab.dig(ALLOWED, &["big.lacave", "TXT", "+noedns", "+ignore"]);
    assert!(flags(&truncated).contains(&"tc"), "{truncated}");
    let full = lab.short(&["big.lacave", "TXT"]);
    assert_eq!(full.len(), 12, "dig retried over TCP");
    let edns = lab.dig(ALLOWED, &["big.lacave", "TXT", "+bufsize=4096", "+ignore"]);
    assert!(
        !flags(&edns).contains(&"tc") && edns.contains("ANSWER: 12"),
        "EDNS0 fits it: {edns}"
    );

    // Zone transfers: refused, but for the allowed address over TCP.
    let refused = lab.dig(ALLOWED, &["lacave", "AXFR"]);
    assert!(
        refused.contains("Transfer failed") || status(&refused) == "REFUSED",
        "{refused}"
    );
    let axfr = lab.dig(TRANSFER, &["lacave", "AXFR"]);
    assert!(
        axfr.contains("kube02.lacave.") && axfr.matches("IN\tSOA").count() == 2,
        "{axfr}"
    );

    let metrics = lab.srv.http_get(&format!("http://{DAEMON}:8080/metrics"));
    assert!(
        metrics.contains("lacave_dns_queries_total{type=\"A\",rcode=\"NXDOMAIN\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("lacave_dns_queries_total{type=\"AXFR\",rcode=\"REFUSED\"}"),
        "{metrics}"
    );

    // The serial never goes backwards across a restart, and moves only on a change.
    let before = lab.serial();
    lab.restart();
    assert_eq!(lab.serial(), before, "same content, same serial");
    lab.lacave(&[
        "node",
        "add",
        "--mac",
        "52:54:00:00:00:04",
        "--hostname",
        "kube04",
        "--ip",
        "192.168.1.24",
        "--role",
        "worker",
    ]);
    assert!(lab.serial() > before);
}

#[test]
fn names_outside_the_zone_are_forwarded_for_allowed_clients_only() {
    let lab = Lab::new();
    let out = lab.dig(ALLOWED, &["www.example.test"]);
    assert_eq!(status(&out), "NOERROR", "{out}");
    assert!(out.contains("10.53.9.9"), "{out}");
    assert!(flags(&out).contains(&"ra"), "{out}");
    let nx = lab.dig(ALLOWED, &["missing.example.test"]);
    assert_eq!(status(&nx), "NXDOMAIN", "{nx}");
    // Not an open resolver.
    let refused = lab.dig(DENIED, &["www.example.test"]);
    assert_eq!(status(&refused), "REFUSED", "{refused}");
    assert!(!refused.contains("10.53.9.9"));
    // Our own zone still answers the refused client.
    lab.lacave(&[
        "node",
        "add",
        "--mac",
        "52:54:00:00:00:01",
        "--hostname",
        "kube01",
        "--ip",
        "192.168.1.21",
        "--role",
        "worker",
    ]);
    assert!(lab.dig(DENIED, &["kube01.lacave"]).contains("192.168.1.21"));
    // Other classes get no IN data and are not forwarded: REFUSED.
    for args in [
        &["-c", "CH", "kube01.lacave", "A"][..],
        &["-c", "CH", "version.bind", "TXT"],
        &["-c", "HS", "www.example.test", "A"],
    ] {
        let out = lab.dig(ALLOWED, args);
        assert_eq!(status(&out), "REFUSED", "{args:?}: {out}");
        assert!(
            !out.contains("192.168.1.21") && !out.contains("10.53.9.9"),
            "{out}"
        );
    }
}

#[test]
fn malformed_queries_neither_crash_nor_stall_the_server() {
    let lab = Lab::new();
    // Random and damaged packets, sent with a real socket tool from inside the namespace.
    let script = format!(
        r#"
import random, socket
random.seed(7)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
good = bytes.fromhex("abcd01000001000000000000066b7562653031066c616361766500000100 01".replace(" ", ""))
for i in range(3000):
    kind = i % 4
    if kind == 0:
        pkt = bytes(random.getrandbits(8) for _ in range(random.randint(0, 600)))
    elif kind == 1:
        pkt = good[:random.randint(0, len(good))]
    else:
        b = bytearray(good)
        for _ in range(random.randint(1, 6)):
            b[random.randrange(len(b))] = random.getrandbits(8)
        pkt = bytes(b)
    s.sendto(pkt, ("{DAEMON}", 53))
t = socket.create_connection(("{DAEMON}", 53))
t.sendall(b"\xff\xff" + bytes(100))
t.close()
"#
    );
    let out = lab
        .srv
        .command("python3")
        .args(["-c", &script])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Still serving, quickly.
    lab.lacave(&[
        "node",
        "add",
        "--mac",
        "52:54:00:00:00:01",
        "--hostname",
        "kube01",
        "--ip",
        "192.168.1.21",
        "--role",
        "worker",
    ]);
    assert_eq!(lab.short(&["kube01.lacave"]), ["192.168.1.21"]);
    assert_eq!(lab.short(&["+tcp", "kube01.lacave"]), ["192.168.1.21"]);
}

#[tokio::test]
async fn network_services_are_off_unless_configured() {
    // A daemon on the minimal configuration binds HTTP on loopback and nothing else.
    let d = lacave_integration_tests::TestDaemon::start().await;
    assert!(d.daemon().dns_addr().is_none());
    assert!(d.daemon().tftp_addr().is_none());
    assert!(d.daemon().api_listener().is_none());
    assert!(d.daemon().http_addr().ip().is_loopback());
    let defaults = lacave::config::Config::embedded_defaults();
    assert!(defaults.dns.listen.is_none() && defaults.tftp.listen.is_none());
    assert!(defaults.http.listen.ip().is_loopback());
}

//! DHCP in full mode against real clients, ISC dhclient and busybox udhcpc, in a client
//! namespace linked by veth to the daemon's namespace (10.67.0.0/24, nowhere else).

use std::path::{Path, PathBuf};
use std::time::Duration;

use lacave_integration_tests::DaemonProcess;
use lacave_integration_tests::netns::{Netns, require_root, sh};

const SERVER: &str = "10.67.0.1";

struct Lab {
    srv: Netns,
    cli: Netns,
    srv_if: String,
    cli_if: String,
    work: tempfile::TempDir,
    daemon: Option<DaemonProcess>,
    mode: &'static str,
    /// Whole sections added to the configuration.
    extra: &'static str,
}

impl Lab {
    fn new() -> Lab {
        Self::with_mode("full")
    }

    fn with_mode(mode: &'static str) -> Lab {
        Self::with(mode, "")
    }

    fn with(mode: &'static str, extra: &'static str) -> Lab {
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
            mode,
            extra,
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
mode = "{}"
interface = "{}"
subnet = "10.67.0.0/24"
router = "10.67.0.254"
dns_servers = ["{SERVER}"]
domain = "lacave"
lease_time = 600
pool = "10.67.0.100-10.67.0.101"
unknown_clients = "discover"
{}"#,
            self.state().display(),
            self.mode,
            self.srv_if,
            self.extra,
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

    /// SIGKILL and start again: only what was on disk survives.
    fn crash_restart(&mut self) {
        self.daemon.as_mut().unwrap().kill();
        self.start();
    }

    fn lacave(&self, args: &[&str]) -> String {
        lacave_integration_tests::lacave_in(
            &self.srv,
            &format!("http://{SERVER}:8080"),
            &self.state(),
            args,
        )
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
    register(&lab);

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
    // The lease is in the node's history.
    let shown = lab.lacave(&["node", "show", "kube01"]);
    assert!(
        shown.contains("lease") && shown.contains("DHCP lease on 10.67.0.21"),
        "{shown}"
    );

    // busybox udhcpc, same MAC, same answer; it says it is a UEFI x64 PXE client (options 60
    // and 93), which the node's last sighting shows.
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
            "-V",
            "PXEClient:Arch:00007:UNDI:003016",
            "-x",
            "0x5d:0007",
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
    let shown = lab.lacave(&["node", "show", "kube01"]);
    assert!(
        shown.lines().any(|l| l.starts_with("last seen:")
            && l.ends_with("(arch 7, vendor class PXEClient:Arch:00007:UNDI:003016)")),
        "{shown}"
    );

    // A spoofed vendor class full of terminal escapes (clear screen, bell, a carriage return
    // and a fake line) reaches neither the registry nor the operator's terminal.
    let hostile = "PXE\x1b[2J\x07\rstate: ready\x1b]0;owned\x07";
    let (hscript, _) = lab.recorder("hostile", &["ip"]);
    let _ = lab
        .cli
        .command("timeout")
        .args([
            "20", "busybox", "udhcpc", "-f", "-q", "-n", "-t", "3", "-V", hostile,
        ])
        .args(["-x", "0x5d:0000", "-i", &lab.cli_if, "-s"])
        .arg(&hscript)
        .output()
        .expect("busybox runs");
    let shown = lab.lacave(&["node", "show", "kube01"]);
    assert!(
        !shown.contains('\x1b') && !shown.contains('\x07') && !shown.contains('\r'),
        "control characters reached the terminal: {shown:?}"
    );
    assert!(
        shown.contains("vendor class PXE?[2J??state: ready?]0;owned?)"),
        "{shown}"
    );
    assert_eq!(
        shown.lines().filter(|l| l.starts_with("state:")).count(),
        1,
        "no forged line: {shown}"
    );

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

    // An ACKed lease survives a crash (it was on disk before the ACK left): a newcomer gets
    // the next address, the same client keeps its own; so does a clean restart.
    lab.crash_restart();
    lab.set_mac("52:54:00:67:00:97");
    let (script, out) = lab.recorder("newcomer", &["reason", "new_ip_address"]);
    lab.dhclient(&[], &script);
    assert_eq!(
        value(&std::fs::read_to_string(&out).unwrap(), "new_ip_address"),
        "10.67.0.101"
    );
    lab.restart();
    lab.set_mac("52:54:00:67:00:99");
    let (script, out) = lab.recorder("again", &["reason", "new_ip_address"]);
    lab.dhclient(&[], &script);
    assert_eq!(
        value(&std::fs::read_to_string(&out).unwrap(), "new_ip_address"),
        "10.67.0.100"
    );

    // RELEASE frees the lease: the pool's first address goes to the next newcomer.
    let (rscript, _) = lab.recorder("release", &["reason"]);
    lab.dhclient(&["-r"], &rscript);
    std::thread::sleep(Duration::from_millis(600));
    let shown = lab.lacave(&["node", "show", "52:54:00:67:00:99"]);
    assert!(
        shown.contains("DHCP lease on 10.67.0.100 released"),
        "{shown}"
    );
    lab.set_mac("52:54:00:67:00:98");
    let (script, out) = lab.recorder("next", &["reason", "new_ip_address"]);
    lab.dhclient(&[], &script);
    assert_eq!(
        value(&std::fs::read_to_string(&out).unwrap(), "new_ip_address"),
        "10.67.0.100",
        "after release: {}",
        lab.daemon.as_ref().unwrap().log()
    );

    let metrics = lab.srv.http_get(&format!("http://{SERVER}:8080/metrics"));
    assert!(
        metrics.contains("lacave_dhcp_messages_total{type=\"discover\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("lacave_dhcp_messages_total{type=\"release\"}"),
        "{metrics}"
    );
}

use dhcproto::v4::{Architecture, DhcpOption, Message, MessageType, OptionCode, UnknownOption};
use dhcproto::{Decodable, Decoder, Encodable, Encoder};

fn packet(kind: MessageType, mac: [u8; 6], arch: Option<u16>, class: Option<&str>) -> Message {
    let z = std::net::Ipv4Addr::UNSPECIFIED;
    let mut m = Message::new(z, z, z, z, &mac);
    m.opts_mut().insert(DhcpOption::MessageType(kind));
    if let Some(a) = arch {
        m.opts_mut()
            .insert(DhcpOption::ClientSystemArchitecture(Architecture::from(a)));
    }
    if let Some(c) = class {
        m.opts_mut()
            .insert(DhcpOption::ClassIdentifier(c.as_bytes().to_vec()));
    }
    m
}

/// The probe's output: a `<source> <hex>` line per reply.
fn replies(stdout: &[u8]) -> Vec<(String, Message)> {
    String::from_utf8_lossy(stdout)
        .lines()
        .map(|line| {
            let (from, h) = line.split_once(' ').unwrap();
            let bytes: Vec<u8> = (0..h.len() / 2)
                .map(|i| u8::from_str_radix(&h[2 * i..2 * i + 2], 16).unwrap())
                .collect();
            (
                from.to_string(),
                Message::decode(&mut Decoder::new(&bytes)).unwrap(),
            )
        })
        .collect()
}

/// `m` as relayed by an agent at 10.67.0.77 (which the test puts on the client side).
fn relayed(mut m: Message) -> Message {
    m.set_giaddr("10.67.0.77".parse::<std::net::Ipv4Addr>().unwrap());
    m.set_hops(1);
    m
}

fn hex(m: &Message) -> String {
    let mut out = Vec::new();
    m.encode(&mut Encoder::new(&mut out)).unwrap();
    out.iter().map(|b| format!("{b:02x}")).collect()
}

impl Lab {
    /// The probe, in the client namespace, set to send `packets` (hex) from `bind` to `to`.
    fn probe_command(&self, bind: &str, to: &str, packets: &[String]) -> std::process::Command {
        let mut c = self.cli.command(env!("CARGO_BIN_EXE_lacave-dhcp-probe"));
        c.args(["--iface", &self.cli_if, "--bind", bind, "--to", to]);
        for p in packets {
            c.args(["--packet", p]);
        }
        c
    }

    /// Sends `packet` (hex) from the client namespace; the reply and where it came from.
    fn probe(&self, bind: &str, to: &str, packet: &str) -> Option<(String, Message)> {
        let out = self
            .probe_command(bind, to, &[packet.to_string()])
            .output()
            .unwrap();
        if !out.status.success() {
            return None;
        }
        replies(&out.stdout).into_iter().next()
    }

    fn broadcast(&self, m: &Message) -> Option<Message> {
        self.probe("0.0.0.0:68", "255.255.255.255:67", &hex(m))
            .map(|(_, m)| m)
    }
}

const NODE: [u8; 6] = [0x52, 0x54, 0, 0x67, 0, 0x21];

fn register(lab: &Lab) {
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
        "worker",
    ]);
}

/// The `file` field as a client reads it: up to its NUL.
fn file(m: &Message) -> String {
    let bytes = m.fname().unwrap_or_default();
    let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

#[test]
fn crafted_discovers_get_the_boot_file_of_their_kind() {
    let lab = Lab::new();
    register(&lab);
    for (arch, class, want) in [
        (
            Some(0),
            Some("PXEClient:Arch:00000:UNDI:002001"),
            "undionly.kpxe",
        ),
        (
            Some(7),
            Some("PXEClient:Arch:00007:UNDI:003016"),
            "ipxe.efi",
        ),
        (
            Some(9),
            Some("PXEClient:Arch:00009:UNDI:003016"),
            "ipxe.efi",
        ),
        (
            Some(11),
            Some("PXEClient:Arch:00011:UNDI:003000"),
            "ipxe-arm64.efi",
        ),
        (
            Some(16),
            Some("HTTPClient:Arch:00016:UNDI:003001"),
            "http://10.67.0.1:8080/boot/ipxe.efi",
        ),
    ] {
        let offer = lab
            .broadcast(&packet(MessageType::Discover, NODE, arch, class))
            .unwrap_or_else(|| panic!("no offer for arch {arch:?}"));
        assert_eq!(offer.opts().msg_type(), Some(MessageType::Offer));
        assert_eq!(file(&offer), want, "arch {arch:?}");
        assert_eq!(offer.siaddr().to_string(), SERVER);
        assert_eq!(offer.yiaddr().to_string(), "10.67.0.21");
        assert_eq!(
            offer.opts().get(OptionCode::ServerIdentifier),
            Some(&DhcpOption::ServerIdentifier(SERVER.parse().unwrap()))
        );
        if class.is_some_and(|c| c.starts_with("HTTPClient")) {
            assert_eq!(
                offer.opts().get(OptionCode::ClassIdentifier),
                Some(&DhcpOption::ClassIdentifier(b"HTTPClient".to_vec()))
            );
        }
    }
    // The HTTP-boot URL serves the binary itself, byte-identical to the TFTP root's; nothing
    // outside the root.
    let out = lab
        .srv
        .command("curl")
        .args(["-sSf", "http://10.67.0.1:8080/boot/ipxe.efi"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout == std::fs::read("/usr/lib/ipxe/ipxe.efi").unwrap());
    let out = lab
        .srv
        .command("curl")
        .args([
            "-s",
            "--path-as-is",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "http://10.67.0.1:8080/boot/../../../etc/passwd",
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "404");

    // A node's own boot file wins for its firmware, whatever the arch.
    lab.lacave(&[
        "node",
        "add",
        "--mac",
        "52:54:00:67:00:22",
        "--hostname",
        "kube02",
        "--ip",
        "10.67.0.22",
        "--role",
        "worker",
        "--boot-file",
        "snponly.efi",
    ]);
    let own = [0x52, 0x54, 0, 0x67, 0, 0x22];
    for arch in [0, 7] {
        let offer = lab
            .broadcast(&packet(
                MessageType::Discover,
                own,
                Some(arch),
                Some("PXEClient"),
            ))
            .expect("an offer for the node with its own boot file");
        assert_eq!(file(&offer), "snponly.efi", "arch {arch}");
        assert_eq!(offer.yiaddr().to_string(), "10.67.0.22");
    }
    // A client already running iPXE gets its own script's URL and 175.176 = 1 (no-pxedhcp).
    let mut ipxe = packet(MessageType::Discover, NODE, Some(0), Some("PXEClient"));
    ipxe.opts_mut()
        .insert(DhcpOption::UserClass(b"\x04iPXE".to_vec()));
    let offer = lab.broadcast(&ipxe).unwrap();
    assert_eq!(file(&offer), "http://10.67.0.1:8080/ipxe/52-54-00-67-00-21");
    assert_eq!(
        offer.opts().get(OptionCode::Unknown(175)),
        Some(&DhcpOption::Unknown(UnknownOption::new(
            OptionCode::Unknown(175),
            vec![176, 1, 1]
        )))
    );

    // Malformed packets get nothing, and the server keeps answering.
    for bad in [
        "00",
        "0101060000000000",
        &"ff".repeat(300),
        &hex(&packet(MessageType::Discover, NODE, Some(0), None))[..200],
    ] {
        assert!(
            lab.probe("0.0.0.0:68", "255.255.255.255:67", bad).is_none(),
            "{bad}"
        );
    }
    assert!(
        lab.broadcast(&packet(
            MessageType::Discover,
            NODE,
            Some(0),
            Some("PXEClient")
        ))
        .is_some()
    );
    let metrics = lab.srv.http_get(&format!("http://{SERVER}:8080/metrics"));
    assert!(metrics.contains("lacave_dhcp_messages_total{type=\"malformed\"}"));

    // A DECLINE (the address answers for another machine) lands in the node's history.
    let mut decline = packet(MessageType::Decline, NODE, None, None);
    decline.opts_mut().insert(DhcpOption::RequestedIpAddress(
        "10.67.0.21".parse().unwrap(),
    ));
    assert!(lab.broadcast(&decline).is_none(), "a DECLINE gets no reply");
    let shown = lab.lacave(&["node", "show", "kube01"]);
    assert!(
        shown.contains("declined 10.67.0.21: another machine answers for it"),
        "{shown}"
    );
}

/// A full exchange for `mac` from the client namespace: DISCOVER, then REQUEST of the offered
/// address; the address ACKed (`None` if there was no offer or no ACK).
fn lease_for(lab: &Lab, mac: [u8; 6]) -> Option<std::net::Ipv4Addr> {
    let offer = lab.broadcast(&packet(MessageType::Discover, mac, None, None))?;
    let mut req = packet(MessageType::Request, mac, None, None);
    req.opts_mut()
        .insert(DhcpOption::RequestedIpAddress(offer.yiaddr()));
    req.opts_mut()
        .insert(DhcpOption::ServerIdentifier(SERVER.parse().unwrap()));
    let ack = lab.broadcast(&req)?;
    (ack.opts().msg_type() == Some(MessageType::Ack)).then_some(ack.yiaddr())
}

#[test]
fn a_decline_counts_only_from_the_holder_and_every_declined_address_is_held() {
    let lab = Lab::new(); // pool: 10.67.0.100-10.67.0.101
    let (a, b, c, x) = (
        [0x52, 0x54, 0, 0x67, 1, 0xa],
        [0x52, 0x54, 0, 0x67, 1, 0xb],
        [0x52, 0x54, 0, 0x67, 1, 0xc],
        [0x52, 0x54, 0, 0x67, 1, 0xee],
    );
    let first = lease_for(&lab, a).expect("A gets a pool address");
    let second = lease_for(&lab, c).expect("C gets the other");
    assert_ne!(first, second);
    let decline = |mac: [u8; 6], ip: std::net::Ipv4Addr| {
        let mut d = packet(MessageType::Decline, mac, None, None);
        d.opts_mut().insert(DhcpOption::RequestedIpAddress(ip));
        assert!(lab.broadcast(&d).is_none(), "a DECLINE gets no reply");
    };
    // An attacker declines both leased addresses: nothing changes.
    decline(x, first);
    decline(x, second);
    assert_eq!(
        lab.broadcast(&packet(MessageType::Discover, b, None, None))
            .map(|o| o.yiaddr()),
        None,
        "B must not be offered an address A or C still holds"
    );
    assert_eq!(lease_for(&lab, a), Some(first), "A renews its own address");
    // The holders themselves decline (the addresses answer for another machine): both are
    // held out of the pool, not only the last one.
    decline(a, first);
    decline(c, second);
    assert_eq!(
        lab.broadcast(&packet(MessageType::Discover, b, None, None))
            .map(|o| o.yiaddr()),
        None,
        "both declined addresses are held"
    );
}

#[test]
fn relayed_requests_are_answered_at_the_relay() {
    let lab = Lab::new();
    register(&lab);
    lab.cli.add_addr(&lab.cli_if, "10.67.0.77/24");
    let relayed = relayed(packet(
        MessageType::Discover,
        NODE,
        Some(7),
        Some("PXEClient"),
    ));
    let (from, offer) = lab
        .probe("10.67.0.77:67", &format!("{SERVER}:67"), &hex(&relayed))
        .expect("the reply reaches the relay on port 67");
    assert_eq!(from, format!("{SERVER}:67"));
    assert_eq!(offer.giaddr().to_string(), "10.67.0.77");
    assert_eq!(offer.yiaddr().to_string(), "10.67.0.21");
    // A relay address off the nodes' subnet and not in dhcp.relays is not answered: a spoofed
    // giaddr would otherwise aim replies at a third host. (That host is here the client
    // namespace, reachable on-link from the server's, so an answer would be seen.)
    lab.cli.add_addr(&lab.cli_if, "10.99.0.77/24");
    sh(
        "ip",
        &[
            "-n",
            &lab.srv.name,
            "route",
            "add",
            "10.99.0.0/24",
            "dev",
            &lab.srv_if,
        ],
    );
    let mut spoofed = relayed.clone();
    spoofed.set_giaddr("10.99.0.77".parse::<std::net::Ipv4Addr>().unwrap());
    assert!(
        lab.probe("10.99.0.77:67", &format!("{SERVER}:67"), &hex(&spoofed))
            .is_none(),
        "a reply was reflected to an unlisted relay address"
    );
}

#[test]
fn proxy_mode_never_assigns_and_answers_on_4011() {
    let lab = Lab::with_mode("proxy");
    register(&lab);
    let offer = lab
        .broadcast(&packet(
            MessageType::Discover,
            NODE,
            Some(7),
            Some("PXEClient:Arch:00007"),
        ))
        .expect("a proxy offer");
    assert_eq!(
        offer.yiaddr(),
        std::net::Ipv4Addr::UNSPECIFIED,
        "no address"
    );
    assert_eq!(file(&offer), "ipxe.efi");
    assert_eq!(
        offer.opts().get(OptionCode::ClassIdentifier),
        Some(&DhcpOption::ClassIdentifier(b"PXEClient".to_vec()))
    );
    assert!(offer.opts().get(OptionCode::AddressLeaseTime).is_none());
    // A plain DHCP client is left to the network's own server.
    assert!(
        lab.broadcast(&packet(MessageType::Discover, NODE, None, None))
            .is_none()
    );
    // The PXE request on port 4011, from the address the router gave the client.
    lab.cli.add_addr(&lab.cli_if, "10.67.0.50/24");
    let mut req = packet(
        MessageType::Request,
        NODE,
        Some(7),
        Some("PXEClient:Arch:00007"),
    );
    req.set_ciaddr("10.67.0.50".parse::<std::net::Ipv4Addr>().unwrap());
    let (from, ack) = lab
        .probe("10.67.0.50:68", &format!("{SERVER}:4011"), &hex(&req))
        .expect("an answer on 4011");
    assert_eq!(from, format!("{SERVER}:4011"));
    assert_eq!(ack.opts().msg_type(), Some(MessageType::Ack));
    assert_eq!(file(&ack), "ipxe.efi");
    assert_eq!(ack.yiaddr(), std::net::Ipv4Addr::UNSPECIFIED);
}

#[test]
fn full_mode_ends_ipxes_ipv6_wait_with_an_empty_router_advertisement() {
    let lab = Lab::new();
    // Full mode answers IPv6 router solicitations with an advertisement that configures
    // nothing (so iPXE stops waiting for IPv6): rdisc6 is the soliciting host.
    // (The client's link-local address must have finished duplicate address detection.)
    let mut said = String::new();
    for _ in 0..10 {
        let out = lab
            .cli
            .command("rdisc6")
            .args(["-1", "-r", "2", "-w", "1000", &lab.cli_if])
            .output()
            .expect("rdisc6 runs (package ndisc6)");
        said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if said.contains("Router lifetime") {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let lifetime = said
        .lines()
        .find(|l| l.starts_with("Router lifetime"))
        .unwrap_or_else(|| {
            panic!(
                "no advertisement: {said}\n{}",
                lab.daemon.as_ref().unwrap().log()
            )
        });
    assert!(lifetime.contains("(0x00000000)"), "{said}");
    assert!(!said.contains("Prefix"), "no prefix advertised: {said}");
    assert!(
        said.contains("Stateful address conf.    :           No"),
        "{said}"
    );

    let metrics = lab.srv.http_get(&format!("http://{SERVER}:8080/metrics"));
    assert!(
        metrics.contains("lacave_dhcp_messages_total{type=\"ipv6_router_solicitation\"}"),
        "{metrics}"
    );
}

#[test]
fn a_backlog_sheds_discovers_and_still_acks_requests() {
    // The discovery rate (120 a minute by default) is lifted: this test is about the backlog.
    let lab = Lab::with("full", "[discovery]\nnew_per_minute = 10000\n");
    register(&lab);
    lab.cli.add_addr(&lab.cli_if, "10.67.0.77/24");
    // 140 new machines, then the registered node's REQUEST: read in one go, the DISCOVERs past
    // the 128th are shed, the REQUEST (not a DISCOVER) is answered.
    const FLOOD: usize = 140;
    let mut packets: Vec<String> = (0..FLOOD)
        .map(|i| {
            let mac = [0x02, 0, 0, 0x67, (i >> 8) as u8, i as u8];
            hex(&relayed(packet(
                MessageType::Discover,
                mac,
                Some(7),
                Some("PXEClient"),
            )))
        })
        .collect();
    let mut request = packet(MessageType::Request, NODE, Some(7), Some("PXEClient"));
    let ip: std::net::Ipv4Addr = "10.67.0.21".parse().unwrap();
    request
        .opts_mut()
        .insert(DhcpOption::RequestedIpAddress(ip));
    request
        .opts_mut()
        .insert(DhcpOption::ServerIdentifier(SERVER.parse().unwrap()));
    packets.push(hex(&relayed(request)));

    // A stopped daemon reads nothing, so the whole flood waits on its socket at once.
    let pid = lab.daemon.as_ref().unwrap().child.id().to_string();
    assert!(sh("kill", &["-STOP", &pid]).status.success());
    let probe = lab
        .probe_command("10.67.0.77:67", &format!("{SERVER}:67"), &packets)
        .args(["--all", "--timeout-ms", "3000"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    assert!(sh("kill", &["-CONT", &pid]).status.success());
    let replies = replies(&probe.wait_with_output().unwrap().stdout);
    assert!(
        replies
            .iter()
            .any(|(_, m)| m.opts().msg_type() == Some(MessageType::Ack) && m.yiaddr() == ip),
        "the REQUEST behind the flood is ACKed: {} replies\n{}",
        replies.len(),
        lab.daemon.as_ref().unwrap().log()
    );

    let metrics = lab.srv.http_get(&format!("http://{SERVER}:8080/metrics"));
    let count = |kind: &str| -> usize {
        let key = format!("lacave_dhcp_messages_total{{type=\"{kind}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&key))
            .map_or(0, |v| v.trim().parse().unwrap())
    };
    assert_eq!(count("discover"), FLOOD, "{metrics}");
    assert_eq!(count("shed"), FLOOD - 128, "{metrics}");
    // Shed machines are not recorded; the others are, as discovered.
    let listed = lab.lacave(&["node", "list"]);
    let discovered = listed.lines().filter(|l| l.contains("discovered")).count();
    assert_eq!(discovered, 128, "{listed}");
    // What an operator adopting one sees of it: first and last seen, arch, vendor class.
    let shown = lab.lacave(&["node", "show", "02:00:00:67:00:05"]);
    let last_seen = shown
        .lines()
        .find(|l| l.starts_with("last seen:"))
        .unwrap_or_else(|| panic!("{shown}"));
    assert!(
        last_seen.ends_with("(arch 7, vendor class PXEClient)"),
        "{shown}"
    );
    assert!(shown.lines().any(|l| l.starts_with("created:")), "{shown}");
}

#[test]
fn random_mac_discovers_leave_a_bounded_registry() {
    // 1,000 DISCOVERs from random MACs against a cap of 100 machines and 300 new a minute.
    let lab = Lab::with(
        "full",
        "[discovery]\nmax_machines = 100\nnew_per_minute = 300\n",
    );
    register(&lab);
    lab.cli.add_addr(&lab.cli_if, "10.67.0.77/24");
    const FLOOD: usize = 1000;
    let mut rng = lacave_integration_tests::Rng(0x5eed_d15c);
    for batch in 0..FLOOD / 100 {
        let packets: Vec<String> = (0..100)
            .map(|_| {
                let mut mac = [0u8; 6];
                mac.copy_from_slice(&rng.next_u64().to_be_bytes()[..6]);
                mac[0] = (mac[0] & 0xfe) | 0x02; // unicast, locally administered
                hex(&relayed(packet(
                    MessageType::Discover,
                    mac,
                    Some(7),
                    Some("PXEClient"),
                )))
            })
            .collect();
        let out = lab
            .probe_command("10.67.0.77:67", &format!("{SERVER}:67"), &packets)
            .args(["--all", "--timeout-ms", "300"])
            .output()
            .unwrap();
        assert!(out.status.success() || batch > 0, "the probe runs");
    }
    let metrics = lab.srv.http_get(&format!("http://{SERVER}:8080/metrics"));
    let outcome = |o: &str| -> u64 {
        let key = format!("lacave_discovered_machines_total{{outcome=\"{o}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&key))
            .map_or(0, |v| v.trim().parse().unwrap())
    };
    let (recorded, limited, evicted) = (
        outcome("recorded"),
        outcome("rate_limited"),
        outcome("evicted"),
    );
    eprintln!("recorded {recorded}, rate limited {limited}, evicted {evicted}");
    // The burst of 300, plus what refilled during the test (5 a second).
    assert!((300..=400).contains(&recorded), "{metrics}");
    assert!(limited >= 600, "{metrics}");
    assert_eq!(evicted, recorded - 100, "{metrics}");
    let listed = lab.lacave(&["node", "list"]);
    let discovered = listed.lines().filter(|l| l.contains("discovered")).count();
    assert_eq!(discovered, 100, "the cap holds");
    assert!(
        listed.contains("kube01"),
        "a registered node is never evicted"
    );
    // The registered node is still served.
    let reply = lab.broadcast(&packet(
        MessageType::Discover,
        NODE,
        Some(7),
        Some("PXEClient"),
    ));
    assert_eq!(
        reply.map(|m| m.yiaddr().to_string()),
        Some("10.67.0.21".to_string())
    );
}

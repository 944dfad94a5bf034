//! Beside another DHCP server: dnsmasq (DHCP and router advertisements) gives every iPXE the
//! same URL, `boot.ipxe`, as an existing LAN's DHCP server would, and the daemon serves only
//! HTTP. Real firmware (SeaBIOS with QEMU's iPXE ROM, QEMU TCG) in a namespace this test
//! creates: `boot.ipxe` puts the machine's own script in its place (`chain --replace`), the
//! machine installs the stand-in image and reports `booted`; its second network boot gets the
//! local-boot script, whose `exit` then leaves iPXE (it is iPXE's image, not a chained one).

use std::process::Stdio;
use std::time::{Duration, Instant};

use lacave_integration_tests::DaemonProcess;
use lacave_integration_tests::netns::require_root;
use lacave_integration_tests::qemu::{
    Machine, add_worker, flatcar_section, lab, node_json, node_state, printed, standin_mirror,
};

const SERVER: &str = "10.72.0.1";
const MAC: &str = "52:54:00:72:00:01";
const NODE_IP: &str = "10.72.0.11";

/// A child process killed on drop.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_machine_told_boot_ipxe_by_another_dhcp_server_installs_then_boots_locally() {
    require_root("the QEMU boot tests");
    let work = tempfile::tempdir().unwrap();
    // A unique-local prefix for dnsmasq's router advertisements (iPXE waits for IPv6 routers
    // otherwise), inside the namespace only.
    let ns = lab(
        "pxefd",
        &[&format!("{SERVER}/24"), "fd72::1/64"],
        &["tap0", "tap1"],
    );
    let mirror = standin_mirror(work.path());

    // The daemon without DHCP: HTTP, and TFTP that nothing here asks for.
    let state = work.path().join("state");
    let config = format!(
        r#"state_dir = "{state}"
server_ip = "{SERVER}"
[http]
listen = "{SERVER}:8080"
[tftp]
listen = "{SERVER}:69"
{flatcar}"#,
        state = state.display(),
        flatcar = flatcar_section(&mirror),
    );
    let daemon = DaemonProcess::start_custom(
        &state,
        &config,
        Some(&ns),
        &[("LACAVE_LOG", "info,lacave::api=debug")],
    );
    let url = format!("http://{SERVER}:8080");
    add_worker(&ns, &url, &state, MAC, "kube-foreign", NODE_IP);

    // The LAN's DHCP server: a reservation for the node, every iPXE sent to boot.ipxe.
    let _dnsmasq = Killed(
        ns.command("dnsmasq")
            .args([
                "-d",
                "-k",
                "--conf-file=/dev/null",
                "--port=0",
                "--interface=br0",
                "--bind-interfaces",
                "--dhcp-range=10.72.0.100,10.72.0.200,255.255.255.0,1h",
                "--dhcp-authoritative",
                "--no-ping",
                &format!("--dhcp-host={MAC},{NODE_IP}"),
                &format!(
                    "--dhcp-leasefile={}",
                    work.path().join("dnsmasq.leases").display()
                ),
                "--dhcp-match=set:ipxe,175",
                &format!("--dhcp-boot=tag:ipxe,{url}/boot.ipxe"),
                "--enable-ra",
                "--dhcp-range=::,constructor:br0,ra-only",
                &format!(
                    "--log-facility={}",
                    work.path().join("dnsmasq.log").display()
                ),
                "--log-dhcp",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("dnsmasq runs (package dnsmasq-base, installed by scripts/test)"),
    );

    let limit = Duration::from_secs(420);
    let booted = || node_state(&node_json(&ns, &url, &state, "kube-foreign")) == "booted";
    let mut machine = Machine::start(&ns, work.path(), "tap0", MAC, false, "foreign");
    let t = machine.wait_for(limit, booted);
    machine.wait_off(limit);
    let console = machine.console();
    let dnsmasq_log = std::fs::read_to_string(work.path().join("dnsmasq.log")).unwrap_or_default();
    assert!(
        dnsmasq_log.contains(&format!("{url}/boot.ipxe")),
        "dnsmasq did not hand out boot.ipxe; its log:\n{dnsmasq_log}"
    );
    assert!(
        console.contains("standin: done"),
        "the machine did not finish; console:\n{console}\n\ndaemon log:\n{}",
        daemon.log()
    );
    assert_eq!(printed(&console, "/etc/hostname"), "kube-foreign");
    let network = printed(&console, "/etc/systemd/network/00-lacave.network");
    assert!(
        network.contains(&format!("Address={NODE_IP}/24")),
        "{network}"
    );
    println!(
        "power-on → booted through boot.ipxe: {:.1} s (QEMU TCG)",
        t.as_secs_f64()
    );

    // A second network boot: boot.ipxe again, then the local-boot script, which leaves iPXE
    // instead of returning to boot.ipxe (which would fetch it again).
    let before = daemon.log().matches("local-boot script served").count();
    let _again = Machine::start(&ns, work.path(), "tap1", MAC, false, "foreign2");
    let t0 = Instant::now();
    while daemon.log().matches("local-boot script served").count() == before {
        assert!(
            t0.elapsed() < Duration::from_secs(240),
            "no local-boot script served; daemon log:\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    std::thread::sleep(Duration::from_secs(12));
    assert_eq!(
        daemon.log().matches("local-boot script served").count(),
        before + 1,
        "the machine fetched its local-boot script again instead of leaving iPXE"
    );
    assert_eq!(
        node_state(&node_json(&ns, &url, &state, "kube-foreign")),
        "booted"
    );
}

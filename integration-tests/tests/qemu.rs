//! Real firmware network-boots from the daemon alone (its DHCP, TFTP and HTTP) under QEMU's
//! software emulation, inside a namespace this test creates: a BIOS machine (SeaBIOS with
//! QEMU's iPXE ROM) and a UEFI machine (OVMF's own PXE client, which fetches `ipxe.efi` over
//! TFTP). Each installs the stand-in Flatcar image (`integration-tests/standin/`: Debian's
//! kernel, busybox and the real Ignition) and reports back; a second PXE boot gets the
//! local-boot script. Power-on → `booted` times are printed (`--nocapture`).

use std::time::{Duration, Instant};

use lacave_integration_tests::netns::{Netns, require_root};
use lacave_integration_tests::qemu::{
    Machine, add_worker, flatcar_section, lab, node_state, printed, standin_mirror,
};
use lacave_integration_tests::{DaemonProcess, lacave_in};

const SERVER: &str = "10.70.0.1";
const BIOS_MAC: &str = "52:54:00:70:00:01";
const UEFI_MAC: &str = "52:54:00:70:00:02";

fn node_json(lab_ns: &Netns, state: &std::path::Path, name: &str) -> serde_json::Value {
    lacave_integration_tests::qemu::node_json(lab_ns, &format!("http://{SERVER}:8080"), state, name)
}

#[test]
fn bios_and_uefi_machines_install_and_report_then_boot_locally() {
    require_root("the QEMU boot tests");
    let work = tempfile::tempdir().unwrap();
    let ns = lab(
        "pxe",
        &[&format!("{SERVER}/24")],
        &["tap0", "tap1", "tap2", "tap3"],
    );
    let mirror = standin_mirror(work.path());

    let state = work.path().join("state");
    let config = format!(
        r#"state_dir = "{state}"
server_ip = "{SERVER}"
[http]
listen = "{SERVER}:8080"
mirror_listen = "{SERVER}:8081"
[tftp]
listen = "{SERVER}:69"
[dhcp]
mode = "full"
interface = "br0"
subnet = "10.70.0.0/24"
lease_time = 600
{flatcar}"#,
        state = state.display(),
        flatcar = flatcar_section(&mirror),
    );
    let daemon = DaemonProcess::start_custom(
        &state,
        &config,
        Some(&ns),
        &[("LACAVE_LOG", "info,lacave::dhcp=debug,lacave::api=debug")],
    );
    let url = format!("http://{SERVER}:8080");
    for (mac, host, ip) in [
        (BIOS_MAC, "kube-bios", "10.70.0.11"),
        (UEFI_MAC, "kube-uefi", "10.70.0.12"),
    ] {
        add_worker(&ns, &url, &state, mac, host, ip);
    }

    // Both at once, or one after the other for timing (bench/boot-qemu.sh).
    let sequential = std::env::var_os("LACAVE_QEMU_SEQUENTIAL").is_some();
    let limit = Duration::from_secs(420);
    let booted = |host: &str| node_state(&node_json(&ns, &state, host)) == "booted";
    let mut bios = Machine::start(&ns, work.path(), "tap0", BIOS_MAC, false, "bios");
    let (t_bios, mut uefi, t_uefi) = if sequential {
        let t_bios = bios.wait_for(limit, || booted("kube-bios"));
        bios.wait_off(limit);
        let mut uefi = Machine::start(&ns, work.path(), "tap1", UEFI_MAC, true, "uefi");
        let t_uefi = uefi.wait_for(limit, || booted("kube-uefi"));
        (t_bios, uefi, t_uefi)
    } else {
        let uefi = Machine::start(&ns, work.path(), "tap1", UEFI_MAC, true, "uefi");
        let (mut t_bios, mut t_uefi) = (None, None);
        while t_bios.is_none() || t_uefi.is_none() {
            for (m, host, t) in [
                (&bios, "kube-bios", &mut t_bios),
                (&uefi, "kube-uefi", &mut t_uefi),
            ] {
                if t.is_none() && booted(host) {
                    *t = Some(m.started.elapsed());
                }
                assert!(
                    m.started.elapsed() < limit,
                    "{host} did not boot within {limit:?}; its console:\n{}",
                    m.console()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        (t_bios.unwrap(), uefi, t_uefi.unwrap())
    };
    bios.wait_off(limit);
    uefi.wait_off(limit);
    let ca = ns.http_get(&format!("{url}/ca.pem"));
    let daemon_key = std::fs::read_to_string(state.join("ssh/id_ed25519.pub")).unwrap();
    for (m, host, ip, mac) in [
        (&bios, "kube-bios", "10.70.0.11", BIOS_MAC),
        (&uefi, "kube-uefi", "10.70.0.12", UEFI_MAC),
    ] {
        let console = m.console();
        assert!(
            console.contains("standin: done"),
            "{host} did not finish; console:\n{console}\n\ndaemon log:\n{}",
            daemon.log()
        );
        assert!(console.contains("Ignition applied the install config"));
        assert!(console.contains(
            "flatcar-install -d /dev/sda: stable 4081.2.0, 1048576 bytes from the mirror"
        ));
        assert_eq!(printed(&console, "/etc/hostname"), host);
        let network = printed(&console, "/etc/systemd/network/00-lacave.network");
        assert!(network.contains(&format!("MACAddress={mac}")), "{network}");
        assert!(network.contains(&format!("Address={ip}/24")), "{network}");
        let keys = printed(&console, "/root/.ssh/authorized_keys");
        assert!(keys.contains("operator@laptop") && keys.contains(daemon_key.trim()));
        for f in [
            "/etc/ssl/certs/lacave-root.pem",
            "/etc/kubernetes/ssl/lacave-root.pem",
        ] {
            assert_eq!(printed(&console, f), ca.trim(), "{f}");
        }
        let node = node_json(&ns, &state, host);
        assert_eq!(node_state(&node), "booted", "{node}");
        let shown = lacave_in(&ns, &url, &state, &["node", "show", host]);
        let order: Vec<usize> = ["registered", "installing", "installed", "booted"]
            .iter()
            .map(|s| {
                shown
                    .find(&format!("→ {s}"))
                    .or_else(|| shown.find(&format!("-> {s}")))
                    .or_else(|| shown.find(s))
                    .unwrap_or_else(|| panic!("{s} in {shown}"))
            })
            .collect();
        assert!(shown.contains("root@standin"), "host key pinned: {shown}");
        assert!(order.windows(2).all(|w| w[0] <= w[1]), "{shown}");
    }
    println!(
        "power-on → booted ({}): BIOS {:.1} s, UEFI {:.1} s (QEMU TCG)",
        if sequential {
            "one at a time"
        } else {
            "both at once"
        },
        t_bios.as_secs_f64(),
        t_uefi.as_secs_f64()
    );

    if std::env::var_os("LACAVE_QEMU_LOG").is_some() {
        println!("{}", daemon.log());
    }

    // A second PXE boot of each gets the local-boot script, and stays `booted`.
    let before = daemon.log().matches("local-boot script served").count();
    let _bios2 = Machine::start(&ns, work.path(), "tap2", BIOS_MAC, false, "bios2");
    let uefi2 = Machine::start(&ns, work.path(), "tap3", UEFI_MAC, true, "uefi2");
    let t0 = Instant::now();
    while daemon.log().matches("local-boot script served").count() < before + 2 {
        assert!(
            t0.elapsed() < Duration::from_secs(240),
            "no local-boot script served to both; daemon log:\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    for host in ["kube-bios", "kube-uefi"] {
        assert_eq!(node_state(&node_json(&ns, &state, host)), "booted");
    }
    // iPXE then leaves for the disk instead of fetching the script again (the script is
    // iPXE's top-level image: DHCP hands out its URL, so its `exit` leaves iPXE).
    std::thread::sleep(Duration::from_secs(12));
    assert_eq!(
        daemon.log().matches("local-boot script served").count(),
        before + 2,
        "a machine fetched its local-boot script again instead of leaving iPXE"
    );
    let console = uefi2.console();
    assert!(
        console.contains("No more network devices"),
        "iPXE did not exit on UEFI; console:\n{console}"
    );
}

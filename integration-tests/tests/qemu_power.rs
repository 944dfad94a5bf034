//! A machine nobody touches: the daemon powers it on through its BMC and it network-boots,
//! installs and reports `booted`. The BMC is OpenIPMI's `ipmi_sim` speaking IPMI v2.0 over LAN
//! inside the test's namespace; its chassis is the QEMU machine itself (its chassis-control
//! program starts QEMU on "power on", stops it on "power off", reports whether it runs, and
//! records the boot device asked for). The daemon asks for a network boot and powers the
//! machine on (`lacave node power … pxe-once`, then `on`); the machine (SeaBIOS with QEMU's
//! iPXE ROM) then goes through the whole boot flow against the daemon alone. The power-on →
//! `booted` time is printed (`--nocapture`, `bench/power.sh`).

use std::time::{Duration, Instant};

use lacave_integration_tests::netns::require_root;
use lacave_integration_tests::qemu::{
    add_worker, flatcar_section, lab, node_json, node_state, standin_mirror,
};
use lacave_integration_tests::{DaemonProcess, lacave_in};

const SERVER: &str = "10.71.0.1";

const MAC: &str = "52:54:00:71:00:01";
const PASSWORD: &str = "bmc-Pw-71";

#[test]
fn the_daemon_powers_a_machine_on_through_its_bmc_and_it_installs() {
    require_root("the QEMU power test");
    let work = tempfile::tempdir().unwrap();
    let ns = lab("pwr", &[&format!("{SERVER}/24")], &["tap0"]);
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
subnet = "10.71.0.0/24"
lease_time = 600
{flatcar}"#,
        state = state.display(),
        flatcar = flatcar_section(&mirror),
    );
    let daemon = DaemonProcess::start_custom(&state, &config, Some(&ns), &[]);
    let url = format!("http://{SERVER}:8080");
    add_worker(&ns, &url, &state, MAC, "kube-pwr", "10.71.0.11");

    // The BMC: ipmi_sim in the namespace, its chassis the QEMU machine.
    let bmc = work.path().join("bmc");
    std::fs::create_dir_all(bmc.join("sim")).unwrap();
    let serial = work.path().join("machine.serial");
    let script = bmc.join("chassis.sh");
    std::fs::write(
        &script,
        format!(
            r#"#!/bin/sh
# ipmi_sim's chassis_control program: DEVICE get|set|check PARM [VALUE]...
dir={dir}
running() {{ [ -f $dir/pid ] && kill -0 "$(cat $dir/pid)" 2>/dev/null; }}
shift; op=$1; shift
case $op in
get) for p in "$@"; do
        case $p in
        power) if running; then echo power:1; else echo power:0; fi ;;
        boot) echo "boot:$(cat $dir/boot 2>/dev/null || echo default)" ;;
        esac
     done ;;
set) while [ $# -ge 2 ]; do
        echo "$(date +%s.%N) $1 $2" >> $dir/log
        case "$1 $2" in
        "power 1") running || {{
            setsid qemu-system-x86_64 -accel tcg -m 1024 -smp 1 -no-reboot \
                -display none -monitor none -serial file:{serial} \
                -netdev tap,id=n0,ifname=tap0,script=no,downscript=no \
                -device virtio-net-pci,netdev=n0,mac={MAC},bootindex=1 \
                </dev/null >/dev/null 2>&1 &
            echo $! > $dir/pid; }} ;;
        "power 0") running && kill "$(cat $dir/pid)"; rm -f $dir/pid ;;
        boot*) echo "$2" > $dir/boot ;;
        esac
        shift 2
     done ;;
esac
exit 0
"#,
            dir = bmc.display(),
            serial = serial.display(),
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let _sim = lacave_integration_tests::ipmi::start(
        ns.command("ipmi_sim"),
        &bmc,
        SERVER,
        623,
        PASSWORD,
        &script,
    );
    let password = work.path().join("bmc-password");
    std::fs::write(&password, format!("{PASSWORD}\n")).unwrap();
    lacave_in(
        &ns,
        &url,
        &state,
        &[
            "node",
            "bmc",
            "kube-pwr",
            &format!("ipmi://{SERVER}:623"),
            "--user",
            "admin",
            "--password-file",
            password.to_str().unwrap(),
        ],
    );
    // ipmi_sim takes a moment to listen: ask until it answers.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let out = ns
            .command(lacave_integration_tests::lacave_bin())
            .args(["node", "power", "kube-pwr", "status"])
            .env("LACAVE_URL", &url)
            .env("LACAVE_TOKEN", daemon.token(&state))
            .output()
            .unwrap();
        if out.status.success() {
            assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "off");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the BMC never answered: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(300));
    }

    // Nobody at the rack: network boot next, power on.
    let powered = Instant::now();
    let powered_at = time::OffsetDateTime::now_utc();
    lacave_in(
        &ns,
        &url,
        &state,
        &["node", "power", "kube-pwr", "pxe-once"],
    );
    lacave_in(&ns, &url, &state, &["node", "power", "kube-pwr", "on"]);
    let limit = Duration::from_secs(420);
    let booted = loop {
        if node_state(&node_json(&ns, &url, &state, "kube-pwr")) == "booted" {
            break powered.elapsed();
        }
        assert!(
            powered.elapsed() < limit,
            "not booted within {limit:?}; the machine's console:\n{}\nthe BMC's log:\n{}",
            std::fs::read_to_string(&serial).unwrap_or_default(),
            std::fs::read_to_string(bmc.join("log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    println!(
        "power-on through the BMC → booted: {:.1} s",
        booted.as_secs_f64()
    );
    let log = std::fs::read_to_string(bmc.join("log")).unwrap();
    // Where the time went: the BMC (the request to the machine's power-on), then the phases
    // the node's history dates (its first lease, the installer's script, the callbacks).
    let on_at = log
        .lines()
        .find(|l| l.ends_with("power 1"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|t| t.parse::<f64>().ok())
        .expect("a dated power-on in the BMC's log");
    let events = node_json(&ns, &url, &state, "kube-pwr")["events"].clone();
    let seconds = |e: &serde_json::Value| -> f64 {
        let t = time::OffsetDateTime::parse(
            e["at"].as_str().unwrap(),
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap();
        t.unix_timestamp_nanos() as f64 / 1e9
    };
    let start = powered_at.unix_timestamp_nanos() as f64 / 1e9;
    let at = |pred: &dyn Fn(&serde_json::Value) -> bool| -> f64 {
        events
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| seconds(e) >= start - 1.0)
            .find(|e| pred(e))
            .map(seconds)
            .unwrap_or_else(|| panic!("an event missing from {events}"))
    };
    let lease = at(&|e| e["kind"] == "lease");
    let installing = at(&|e| e["kind"] == "transition" && e["to"] == "installing");
    let installed = at(&|e| e["kind"] == "transition" && e["to"] == "installed");
    let booted_at = at(&|e| e["kind"] == "transition" && e["to"] == "booted");
    let total = booted_at - start;
    for (phase, from, to) in [
        ("BMC: asked → machine powered", start, on_at),
        ("firmware → first DHCP lease", on_at, lease),
        ("iPXE → install script served", lease, installing),
        (
            "the PXE kernel boots (TCG), Ignition, flatcar-install from the mirror",
            installing,
            installed,
        ),
        ("first boot → booted callback", installed, booted_at),
    ] {
        let d = (to - from).max(0.0);
        println!("  {phase}: {d:.1} s ({:.0} %)", 100.0 * d / total);
    }
    let boot_at = log
        .find("boot pxe")
        .expect("the BMC was asked for a network boot");
    let power_at = log.find("power 1").expect("the BMC was asked to power on");
    assert!(
        boot_at < power_at,
        "network boot set before the power-on: {log}"
    );
    let console = std::fs::read_to_string(&serial).unwrap();
    assert!(
        console.contains("Ignition applied the install config"),
        "{console}"
    );
    // The power operations are in the node's history, with what the BMC said.
    let shown = lacave_in(&ns, &url, &state, &["node", "show", "kube-pwr"]);
    assert!(shown.contains("power on"), "{shown}");
    assert!(shown.contains("power pxe-once"), "{shown}");
    // The stand-in powers itself off at the end; the BMC then says off.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let state_now = lacave_in(&ns, &url, &state, &["node", "power", "kube-pwr", "status"]);
        if state_now.trim() == "off" {
            break;
        }
        assert!(Instant::now() < deadline, "the machine never powered off");
        std::thread::sleep(Duration::from_secs(1));
    }
}

//! Real firmware under QEMU's software emulation (TCG) for the boot tests: a machine on a tap
//! device of a test's namespace, its serial console in a file, and the stand-in Flatcar image.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::lacave_in;
use crate::netns::{Netns, sh};

/// Where `scripts/test` builds the stand-in image (`integration-tests/standin/build.sh`).
pub fn standin_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/standin");
    assert!(
        dir.join("flatcar_production_pxe_image.cpio.gz").exists(),
        "the stand-in Flatcar image is missing: run `sudo scripts/test` (or integration-tests/standin/build.sh {})",
        dir.display()
    );
    dir
}

pub struct Machine {
    child: Child,
    serial: PathBuf,
    pub started: Instant,
}

impl Drop for Machine {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Machine {
    pub fn start(ns: &Netns, work: &Path, tap: &str, mac: &str, uefi: bool, tag: &str) -> Machine {
        let serial = work.join(format!("{tag}.serial"));
        let mut cmd = ns.command("qemu-system-x86_64");
        cmd.args(["-accel", "tcg", "-m", "1024", "-smp", "1", "-no-reboot"])
            .args(["-display", "none", "-monitor", "none"])
            .arg("-serial")
            .arg(format!("file:{}", serial.display()))
            .args([
                "-netdev",
                &format!("tap,id=n0,ifname={tap},script=no,downscript=no"),
            ]);
        if uefi {
            let vars = work.join(format!("{tag}-vars.fd"));
            std::fs::copy("/usr/share/OVMF/OVMF_VARS_4M.fd", &vars).unwrap();
            cmd.args([
                "-drive",
                "if=pflash,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd",
                "-drive",
                &format!("if=pflash,format=raw,file={}", vars.display()),
                "-device",
                &format!("virtio-net-pci,netdev=n0,mac={mac},romfile=,bootindex=1"),
            ]);
        } else {
            cmd.args([
                "-device",
                &format!("virtio-net-pci,netdev=n0,mac={mac},bootindex=1"),
            ]);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("qemu-system-x86_64 runs (package qemu-system-x86)");
        Machine {
            child,
            serial,
            started: Instant::now(),
        }
    }

    pub fn console(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.serial).unwrap_or_default()).into_owned()
    }

    /// Time from power-on until `done` holds (polled every 200 ms).
    pub fn wait_for(&mut self, limit: Duration, mut done: impl FnMut() -> bool) -> Duration {
        loop {
            if done() {
                return self.started.elapsed();
            }
            assert!(
                self.started.elapsed() < limit,
                "the machine did not get there within {limit:?}; its console:\n{}",
                self.console()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits for the machine to power itself off.
    pub fn wait_off(&mut self, limit: Duration) -> Duration {
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "qemu: {status}");
                return self.started.elapsed();
            }
            assert!(
                self.started.elapsed() < limit,
                "the machine did not finish within {limit:?}; its console:\n{}",
                self.console()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// The file the stand-in printed between its markers.
pub fn printed(console: &str, path: &str) -> String {
    let begin = format!("standin-file-begin {path}");
    let end = format!("standin-file-end {path}");
    let from = console
        .find(&begin)
        .unwrap_or_else(|| panic!("{path} not printed; console:\n{console}"))
        + begin.len();
    let to = console[from..].find(&end).unwrap() + from;
    console[from..to].replace('\r', "").trim().to_string()
}

/// A node as `lacave node show NAME --json` prints it, asked inside the lab's namespace.
pub fn node_json(lab_ns: &Netns, url: &str, state: &Path, name: &str) -> serde_json::Value {
    serde_json::from_str(&lacave_in(
        lab_ns,
        url,
        state,
        &["node", "show", name, "--json"],
    ))
    .unwrap()
}

pub fn node_state(v: &serde_json::Value) -> String {
    v["node"]["state"]
        .as_str()
        .or(v["state"].as_str())
        .unwrap_or_default()
        .to_string()
}

/// A namespace for QEMU machines: a bridge `br0` with the server's `addresses`, and `taps`
/// (tap devices on the bridge, one per machine started).
pub fn lab(name: &str, addresses: &[&str], taps: &[&str]) -> Netns {
    let ns = Netns::new(name);
    let ip = |args: &[&str]| {
        let mut full = vec!["-n", ns.name.as_str()];
        full.extend_from_slice(args);
        sh("ip", &full);
    };
    ip(&["link", "add", "br0", "type", "bridge"]);
    for address in addresses {
        if address.contains(':') {
            // Usable at once, without duplicate address detection.
            ip(&["addr", "add", address, "dev", "br0", "nodad"]);
        } else {
            ip(&["addr", "add", address, "dev", "br0"]);
        }
    }
    ip(&["link", "set", "br0", "up"]);
    for tap in taps {
        ip(&["tuntap", "add", "dev", tap, "mode", "tap"]);
        ip(&["link", "set", tap, "master", "br0"]);
        ip(&["link", "set", tap, "up"]);
    }
    ns
}

/// The stand-in image as a Flatcar mirror under `work/mirror` (stable, amd64-usr, 4081.2.0 and
/// `current`, a 1 MiB disk image for the installer); returns `work/mirror`.
pub fn standin_mirror(work: &Path) -> PathBuf {
    let standin = standin_dir();
    let root = work.join("mirror");
    let release = root.join("stable/amd64-usr/4081.2.0");
    std::fs::create_dir_all(&release).unwrap();
    for f in [
        "flatcar_production_pxe.vmlinuz",
        "flatcar_production_pxe_image.cpio.gz",
    ] {
        std::fs::copy(standin.join(f), release.join(f)).unwrap();
    }
    std::fs::write(
        release.join("version.txt"),
        "FLATCAR_VERSION=4081.2.0\nFLATCAR_VERSION_ID=4081.2.0\n",
    )
    .unwrap();
    std::fs::write(
        release.join("flatcar_production_image.bin.bz2"),
        vec![0x42u8; 1 << 20],
    )
    .unwrap();
    std::os::unix::fs::symlink("4081.2.0", release.with_file_name("current")).unwrap();
    root
}

/// The `[flatcar]` section of the labs' daemons: the stand-in mirror, a serial console for the
/// guests, an operator's key.
pub fn flatcar_section(mirror: &Path) -> String {
    format!(
        r#"[flatcar]
mirror_dir = "{}"
kernel_args = ["console=ttyS0,115200n8"]
ssh_authorized_keys = ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFQ7o4JPTa6wVZ7Gt7DkTdfyR3dQZs8gdXSXGA4cFwhu operator@laptop"]
"#,
        mirror.display()
    )
}

/// Registers a worker node with the CLI, inside the lab's namespace.
pub fn add_worker(lab_ns: &Netns, url: &str, state: &Path, mac: &str, host: &str, ip: &str) {
    lacave_in(
        lab_ns,
        url,
        state,
        &[
            "node",
            "add",
            "--mac",
            mac,
            "--hostname",
            host,
            "--ip",
            ip,
            "--role",
            "worker",
        ],
    );
}

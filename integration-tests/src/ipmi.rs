//! OpenIPMI's `ipmi_sim` as a test BMC (IPMI v2.0 over LAN): its configuration for one admin
//! user and a chassis-control program, and the running simulator, stopped (killed and
//! reaped) when dropped.

use std::path::Path;
use std::process::{Child, Command, Stdio};

/// A running `ipmi_sim`.
pub struct IpmiSim(Child);

impl Drop for IpmiSim {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `ipmi_sim` (through `cmd`: `Command::new("ipmi_sim")`, or a namespace's) with its
/// files in `dir`: listening on `addr:port`, user `admin` with `password` (administrator),
/// `chassis` run as its chassis-control program (`chassis 0x20 get|set|check …`).
pub fn start(
    mut cmd: Command,
    dir: &Path,
    addr: &str,
    port: u16,
    password: &str,
    chassis: &Path,
) -> IpmiSim {
    std::fs::create_dir_all(dir.join("sim")).unwrap();
    std::fs::write(
        dir.join("lan.conf"),
        format!(
            r#"name "lacave-test"
set_working_mc 0x20
  startlan 1
    addr {addr} {port}
    priv_limit admin
    allowed_auths_callback none md2 md5 straight
    allowed_auths_user none md2 md5 straight
    allowed_auths_operator none md2 md5 straight
    allowed_auths_admin none md2 md5 straight
    guid a123456789abcdefa123456789abcdef
  endlan
  chassis_control "{chassis} 0x20"
  user 2 true "admin" "{password}" admin 10 none md2 md5 straight
"#,
            chassis = chassis.display()
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("cmds"),
        "mc_setbmc 0x20\nmc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02\nmc_enable 0x20\n",
    )
    .unwrap();
    // ipmi_sim reads commands on standard input and stops at its end: keep it open.
    let child = cmd
        .arg("-c")
        .arg(dir.join("lan.conf"))
        .arg("-f")
        .arg(dir.join("cmds"))
        .arg("-s")
        .arg(dir.join("sim"))
        .arg("-n")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("ipmi_sim runs (Debian: openipmi; scripts/prereqs.sh installs it)");
    IpmiSim(child)
}

//! The daemon under a real systemd (Debian bookworm, systemd 252 as PID 1 under
//! `systemd-nspawn --boot`, private network): installed with `deploy/install.sh` and as the
//! Debian package from `deploy/deb/build.sh`. The checks are in `systemd/nspawn.sh`; this test
//! builds what it installs and runs it. The root file system is made once by
//! `scripts/prereqs.sh` (`ensure_nspawn_rootfs`) and cached under /var/cache/lacave-tests.

use std::path::Path;
use std::process::Command;

use lacave_integration_tests::lacave_bin;
use lacave_integration_tests::netns::require_root;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

fn bash(script: &str) -> String {
    let out = Command::new("bash")
        .args(["-c", script])
        .current_dir(repo())
        .output()
        .expect("bash runs");
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn installer_unit_and_package_work_under_a_real_systemd() {
    require_root("the systemd test (systemd-nspawn)");
    let rootfs = bash(". scripts/prereqs.sh && ensure_nspawn_rootfs");
    let bin = lacave_bin();
    let out = tempfile::tempdir().unwrap();
    let deb = bash(&format!(
        "deploy/deb/build.sh --binary {} --out {}",
        bin.display(),
        out.path().display()
    ));
    let status = Command::new(repo().join("integration-tests/systemd/nspawn.sh"))
        .args([rootfs.as_str(), bin.to_str().unwrap(), deb.as_str()])
        .status()
        .expect("nspawn.sh runs");
    assert!(
        status.success(),
        "the systemd test failed (its output above)"
    );
}

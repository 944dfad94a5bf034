//! Fake Flatcar releases for `lacave mirror fetch`: files of the right names and sizes,
//! signed by OpenPGP keys GnuPG makes here (a primary and a signing subkey, as Flatcar's), with
//! the signed `DIGESTS` of the disk image and the update payload, and the small server that
//! serves them (`mirror/release-server.py`) inside a test's namespace.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const IMAGE: &str = "flatcar_production_image.bin.bz2";
pub const UPDATE: &str = "flatcar_production_update.gz";

/// Runs `cmd`, failing the test with its stderr unless it succeeds.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("runs");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A GnuPG home with a primary key and a signing subkey; (home, primary fingerprint).
pub fn gpg_key(dir: &Path, name: &str) -> (PathBuf, String) {
    let home = dir.join(format!("gnupg-{name}"));
    std::fs::create_dir_all(&home).unwrap();
    let gpg = |args: &[&str]| {
        run(Command::new("gpg")
            .env("GNUPGHOME", &home)
            .args(["--batch", "--pinentry-mode", "loopback", "--passphrase", ""])
            .args(args))
    };
    // Made in 2019, so that signatures can be dated back (a stale release's are).
    gpg(&[
        "--faked-system-time",
        "20190101T000000",
        "--quick-gen-key",
        &format!("{name} Release Signing <{name}@example.invalid>"),
        "rsa2048",
        "cert",
        "never",
    ]);
    let listed = gpg(&["--list-keys", "--with-colons"]);
    let fpr = String::from_utf8_lossy(&listed.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("fpr:::::::::"))
        .map(|f| f.trim_end_matches(':').to_string())
        .expect("a fingerprint");
    gpg(&[
        "--faked-system-time",
        "20190101T000100",
        "--quick-add-key",
        &fpr,
        "rsa2048",
        "sign",
        "never",
    ]);
    (home, fpr)
}

/// A detached signature made at `when` (gpg's `--faked-system-time`), or now.
pub fn sign_at(home: &Path, file: &Path, when: Option<&str>) {
    let mut cmd = Command::new("gpg");
    cmd.env("GNUPGHOME", home).arg("--batch");
    if let Some(when) = when {
        cmd.args(["--faked-system-time", when]);
    }
    run(cmd
        .args(["--yes", "--detach-sign", "-o"])
        .arg(file.with_file_name(format!(
            "{}.sig",
            file.file_name().unwrap().to_string_lossy()
        )))
        .arg(file));
}

pub fn sha512(path: &Path) -> String {
    lacave::release::verify::sha512_file(path).unwrap()
}

/// A release directory: version.txt, kernel, initramfs, a disk image of `mb` MB and the
/// update payload, each signed
/// by `home`, and a signed DIGESTS file.
pub fn make_release(root: &Path, version: &str, home: &Path, mb: usize) -> PathBuf {
    make_release_signed(root, version, home, mb, &|_| None)
}

/// [`make_release`] with each file signed when `when(file)` says (now when `None`).
pub fn make_release_signed(
    root: &Path,
    version: &str,
    home: &Path,
    mb: usize,
    when: &dyn Fn(&str) -> Option<&'static str>,
) -> PathBuf {
    let dir = root.join("amd64-usr").join(version);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("version.txt"),
        format!("FLATCAR_BUILD=1\nFLATCAR_VERSION={version}\nFLATCAR_VERSION_ID={version}\n"),
    )
    .unwrap();
    // Distinct per version (a plain digit sum made 4459.2.5 and 4459.3.4 byte-identical).
    let seed: u8 = version
        .bytes()
        .enumerate()
        .map(|(i, b)| (i as u32 * 7 + 1) * b as u32)
        .sum::<u32>() as u8;
    for (name, len) in [
        ("flatcar_production_pxe.vmlinuz", 300_000),
        ("flatcar_production_pxe_image.cpio.gz", 900_000),
        (IMAGE, mb * 1_000_000),
        (UPDATE, 700_000),
    ] {
        let bytes: Vec<u8> = (0..len)
            .map(|i| (i as u8).wrapping_mul(31) ^ seed)
            .collect();
        std::fs::write(dir.join(name), bytes).unwrap();
        sign_at(home, &dir.join(name), when(name));
    }
    let digests = format!(
        "# MD5 HASH\n00000000000000000000000000000000  {IMAGE}\n# SHA512 HASH\n{}  {IMAGE}\n",
        sha512(&dir.join(IMAGE))
    );
    std::fs::write(dir.join(format!("{IMAGE}.DIGESTS")), digests).unwrap();
    sign_at(home, &dir.join(format!("{IMAGE}.DIGESTS")), when("DIGESTS"));
    dir
}

/// Exports `fingerprint`'s public key from `home` into `file` (what `[flatcar]
/// signing_key_file` names).
pub fn export_key(home: &Path, fingerprint: &str, file: &Path) {
    let exported =
        run(Command::new("gpg")
            .env("GNUPGHOME", home)
            .args(["--armor", "--export", fingerprint]));
    std::fs::write(file, exported.stdout).unwrap();
}

/// Starts `mirror/release-server.py` over `root` in `ns` (on its loopback): the child and
/// its port.
pub fn serve(ns: &crate::netns::Netns, root: &Path, work: &Path) -> (std::process::Child, u16) {
    let portfile = work.join("release-port");
    let child = ns
        .command("python3")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("mirror/release-server.py"))
        .arg(root)
        .arg(&portfile)
        .stdin(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !portfile.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the release server did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    std::thread::sleep(std::time::Duration::from_millis(50));
    let port = std::fs::read_to_string(&portfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    (child, port)
}

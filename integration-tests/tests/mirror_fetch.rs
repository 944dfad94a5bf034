//! `lacave mirror fetch flatcar` against a release server in a network namespace of its own
//! (loopback only), serving fake releases signed by keys GnuPG makes here (a primary and a
//! signing subkey, as Flatcar's): a good release is fetched, verified and made `current`; a
//! flipped byte, another signer, a connection cut mid-file, a server that stalls, and a fetch
//! killed mid-file each end with a clear error and `current` unchanged, the last two resumed by
//! the next run. The result passes GnuPG's own check, as `flatcar-install` runs it.
//!
//! Then what a stale or hostile server can try (issue #31, items 10–12): another release's
//! files under a newer version's name (byte-identical, or signed before an older release
//! held), files of two releases mixed (signatures days apart), `current` moved back to an
//! older release, a body that never ends (stopped at the disk's reserve, exit 73, on a small
//! tmpfs), a Content-Length past the file's cap, a redirect to another host (refused) or on the
//! same host (followed). And the daemon's mirror listener answers an unsatisfiable Range with
//! 416 and `Content-Range`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lacave_integration_tests::lacave_bin;
use lacave_integration_tests::netns::{Netns, require_root};
use lacave_integration_tests::release::{
    IMAGE, UPDATE, gpg_key, make_release, make_release_signed, run, sha512,
};

struct Lab {
    ns: Netns,
    work: tempfile::TempDir,
    server: std::process::Child,
    port: u16,
    key_file: PathBuf,
    fingerprint: String,
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

impl Lab {
    fn mirror(&self) -> PathBuf {
        self.work.path().join("mirror")
    }

    fn current(&self) -> Option<String> {
        std::fs::read_link(self.mirror().join("stable/amd64-usr/current"))
            .ok()
            .map(|p| p.to_string_lossy().into_owned())
    }

    fn command(&self, mode: &str, args: &[&str]) -> Command {
        self.command_on(mode, &self.mirror(), "", args)
    }

    /// A `lacave mirror` command with the mirror at `mirror` and `extra` lines in `[flatcar]`.
    fn command_on(&self, mode: &str, mirror: &Path, extra: &str, args: &[&str]) -> Command {
        let config = self.work.path().join(format!("lacave-{mode}.toml"));
        std::fs::write(
            &config,
            format!(
                r#"state_dir = "{state}"
[flatcar]
mirror_dir = "{mirror}"
release_base_url = "http://127.0.0.1:{port}/{mode}"
signing_key_file = "{key}"
signing_key_fingerprint = "{fpr}"
fetch_stall_secs = 2
{extra}
[cluster]
sysext_base_url = "http://127.0.0.1:{port}/{mode}/sysext"
allow_http_sysext = true
"#,
                state = self.work.path().join("state").display(),
                mirror = mirror.display(),
                port = self.port,
                key = self.key_file.display(),
                fpr = self.fingerprint,
            ),
        )
        .unwrap();
        let mut c = self.ns.command(lacave_bin());
        c.arg("mirror").args(args).arg("--config").arg(&config);
        c
    }

    fn fetch(&self, mode: &str, version: &str) -> (Option<i32>, String) {
        self.fetch_with(mode, version, &[])
    }

    fn fetch_with(&self, mode: &str, version: &str, more: &[&str]) -> (Option<i32>, String) {
        let mut args = vec!["fetch", "flatcar", "--version", version];
        args.extend(more);
        self.output(self.command(mode, &args))
    }

    fn output(&self, mut command: Command) -> (Option<i32>, String) {
        let out = command.output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code(), text)
    }
}

#[test]
fn releases_are_fetched_verified_and_switched_only_when_whole_and_signed() {
    require_root("the mirror fetch test (network namespace)");
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("release");
    let (trusted, fingerprint) = gpg_key(work.path(), "trusted");
    let (other, _) = gpg_key(work.path(), "other");
    let key_file = work.path().join("trusted.asc");
    let exported = run(Command::new("gpg").env("GNUPGHOME", &trusted).args([
        "--armor",
        "--export",
        &fingerprint,
    ]));
    std::fs::write(&key_file, exported.stdout).unwrap();

    make_release(&root, "4459.2.1", &trusted, 4);
    std::os::unix::fs::symlink("4459.2.1", root.join("amd64-usr/current")).unwrap();
    // A byte flipped after signing; another signer; good ones for the cut, stall and kill cases.
    let flipped = make_release(&root, "4459.2.2", &trusted, 4);
    let mut bytes = std::fs::read(flipped.join(IMAGE)).unwrap();
    bytes[1_234_567] ^= 0x01;
    std::fs::write(flipped.join(IMAGE), bytes).unwrap();
    make_release(&root, "4459.2.3", &other, 4);
    make_release(&root, "4459.2.4", &trusted, 4);
    make_release(&root, "4459.2.5", &trusted, 4);
    make_release(&root, "4459.2.6", &trusted, 8);
    // Another release's files under a newer name: 4459.2.6's bytes (and signatures).
    let same = root.join("amd64-usr/4459.2.7");
    std::fs::create_dir_all(&same).unwrap();
    for entry in std::fs::read_dir(root.join("amd64-usr/4459.2.6")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), same.join(entry.file_name())).unwrap();
    }
    std::fs::write(
        same.join("version.txt"),
        "FLATCAR_BUILD=1\nFLATCAR_VERSION=4459.2.7\nFLATCAR_VERSION_ID=4459.2.7\n",
    )
    .unwrap();
    // A newer version signed in 2020 (before the releases held), and one whose kernel was
    // signed a year before its other files.
    make_release_signed(&root, "4459.3.0", &trusted, 2, &|_| Some("20200101T000000"));
    make_release_signed(&root, "4459.3.1", &trusted, 2, &|f| {
        (f == "flatcar_production_pxe.vmlinuz").then_some("20210101T000000")
    });
    for v in ["4459.3.2", "4459.3.3", "4459.3.4"] {
        make_release(&root, v, &trusted, 4);
    }
    // Two sysext releases, the second with a SHA256SUMS that does not match its image.
    for (version, honest) in [("v1.37.2", true), ("v1.37.3", false)] {
        let dir = root.join(format!("sysext/kubernetes-{version}"));
        std::fs::create_dir_all(&dir).unwrap();
        let image = format!("kubernetes-{version}-x86-64.raw");
        std::fs::write(dir.join(&image), vec![0x5a; 2_500_000]).unwrap();
        let out = run(Command::new("sha256sum").arg(&image).current_dir(&dir));
        let mut sums = String::from_utf8(out.stdout).unwrap();
        if !honest {
            sums = sums.replacen('0', "1", 1).replacen('a', "b", 1);
        }
        std::fs::write(dir.join("SHA256SUMS"), sums).unwrap();
    }

    let ns = Netns::new("relfetch");
    let portfile = work.path().join("port");
    let server = ns
        .command("python3")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("mirror/release-server.py"))
        .arg(&root)
        .arg(&portfile)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !portfile.exists() {
        assert!(
            Instant::now() < deadline,
            "the release server did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let port = std::fs::read_to_string(&portfile).unwrap().parse().unwrap();
    let lab = Lab {
        ns,
        work,
        server,
        port,
        key_file,
        fingerprint: fingerprint.clone(),
    };

    // A good release: fetched, verified, made current; the files are the server's.
    let (code, text) = lab.fetch("good", "current");
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("Flatcar 4459.2.1 verified"), "{text}");
    assert_eq!(lab.current().as_deref(), Some("4459.2.1"));
    let held = lab.mirror().join("stable/amd64-usr/4459.2.1");
    for f in ["version.txt", IMAGE, "flatcar_production_pxe.vmlinuz"] {
        assert_eq!(
            std::fs::read(held.join(f)).unwrap(),
            std::fs::read(root.join("amd64-usr/4459.2.1").join(f)).unwrap(),
            "{f}"
        );
    }
    // The update payload came with it, and its record holds what an Omaha answer gives:
    // size, SHA-1 and SHA-256 in base64, as sha1sum and sha256sum compute them.
    let verified: serde_json::Value =
        serde_json::from_slice(&std::fs::read(held.join(".verified")).unwrap()).unwrap();
    let b64 = |tool: &str| {
        let out = run(Command::new(tool).arg(held.join(UPDATE)));
        let hex = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .unwrap()
            .to_string();
        let bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, bytes)
    };
    assert_eq!(verified["update"]["file"], UPDATE, "{verified}");
    assert_eq!(verified["update"]["size"], 700_000);
    assert_eq!(verified["update"]["sha1_base64"], b64("sha1sum").as_str());
    assert_eq!(
        verified["update"]["sha256_base64"],
        b64("sha256sum").as_str()
    );
    assert!(verified["signed_at"][UPDATE].is_u64(), "{verified}");
    // A release held from a lacave that did not fetch payloads gets it on the next fetch,
    // checked like the rest; nothing else is downloaded again.
    let mut old = verified.clone();
    old.as_object_mut().unwrap().remove("update");
    old["signed_at"].as_object_mut().unwrap().remove(UPDATE);
    old["sha512"].as_object_mut().unwrap().remove(UPDATE);
    std::fs::write(held.join(".verified"), old.to_string()).unwrap();
    std::fs::remove_file(held.join(UPDATE)).unwrap();
    std::fs::remove_file(held.join(format!("{UPDATE}.sig"))).unwrap();
    let (code, text) = lab.fetch("good", "4459.2.1");
    assert_eq!(code, Some(0), "{text}");
    let again: serde_json::Value =
        serde_json::from_slice(&std::fs::read(held.join(".verified")).unwrap()).unwrap();
    assert_eq!(again["update"], verified["update"], "{text}");
    assert_eq!(
        std::fs::read(held.join(UPDATE)).unwrap(),
        std::fs::read(root.join("amd64-usr/4459.2.1").join(UPDATE)).unwrap()
    );
    assert!(
        !lab.mirror()
            .join("stable/amd64-usr/.incoming-4459.2.1")
            .exists()
    );
    // GnuPG's own check on the result, as flatcar-install runs it (`gpg --verify`).
    let check = tempfile::tempdir().unwrap();
    run(Command::new("gpg")
        .env("GNUPGHOME", check.path())
        .args(["--batch", "--import"])
        .arg(&lab.key_file));
    run(Command::new("gpg")
        .env("GNUPGHOME", check.path())
        .args(["--batch", "--trusted-key", &fingerprint[24..], "--verify"])
        .arg(held.join(format!("{IMAGE}.sig")))
        .arg(held.join(IMAGE)));
    // Again: already held, nothing downloaded.
    let (code, text) = lab.fetch("good", "4459.2.1");
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("already held and verified"), "{text}");

    // A flipped byte and another signer: refused (65), nothing switched or kept.
    let (code, text) = lab.fetch("good", "4459.2.2");
    eprintln!("a flipped byte:\n{text}");
    assert_eq!(code, Some(65), "{text}");
    assert!(
        text.contains("BAD SIGNATURE") && text.contains(IMAGE),
        "{text}"
    );
    let (code, text) = lab.fetch("good", "4459.2.3");
    assert_eq!(code, Some(65), "{text}");
    assert!(text.contains("not signed by the trusted key"), "{text}");
    assert!(text.contains("nothing was switched"), "{text}");
    assert_eq!(lab.current().as_deref(), Some("4459.2.1"));
    for refused in [
        "4459.2.2",
        "4459.2.3",
        ".incoming-4459.2.2",
        ".incoming-4459.2.3",
    ] {
        assert!(
            !lab.mirror().join("stable/amd64-usr").join(refused).exists(),
            "{refused} is kept"
        );
    }

    // Cut mid-file: an error (69), current unchanged; the next run resumes and finishes.
    let (code, text) = lab.fetch("cut", "4459.2.4");
    assert_eq!(code, Some(69), "{text}");
    assert!(text.contains("the connection ended after"), "{text}");
    assert_eq!(lab.current().as_deref(), Some("4459.2.1"));
    let (code, text) = lab.fetch("good", "4459.2.4");
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("resuming after"), "{text}");
    assert_eq!(lab.current().as_deref(), Some("4459.2.4"));

    // A server that stops sending: given up after fetch_stall_secs (2 s).
    let started = Instant::now();
    let (code, text) = lab.fetch("stall", "4459.2.5");
    assert_eq!(code, Some(69), "{text}");
    assert!(text.contains("sent nothing for 2 s"), "{text}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(lab.current().as_deref(), Some("4459.2.4"));

    // Killed mid-file: the next run resumes from what was written.
    let mut child = lab
        .command("slow", &["fetch", "flatcar", "--version", "4459.2.6"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let partial = lab
        .mirror()
        .join("stable/amd64-usr/.incoming-4459.2.6")
        .join(IMAGE);
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::fs::metadata(&partial).map_or(0, |m| m.len()) < 1_000_000 {
        assert!(Instant::now() < deadline, "the slow download did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(lab.current().as_deref(), Some("4459.2.4"));
    let (code, text) = lab.fetch("good", "4459.2.6");
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("resuming after"), "{text}");
    assert_eq!(lab.current().as_deref(), Some("4459.2.6"));
    assert_eq!(
        sha512(&lab.mirror().join("stable/amd64-usr/4459.2.6").join(IMAGE)),
        sha512(&root.join("amd64-usr/4459.2.6").join(IMAGE))
    );

    // The Kubernetes sysext: checked against SHA256SUMS, then in place; a wrong sum refused.
    let out = run(&mut lab.command("good", &["fetch", "kubernetes", "--version", "v1.37.2"]));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("checked against SHA256SUMS"), "{said}");
    let sysext = lab
        .mirror()
        .join("kubernetes/kubernetes-v1.37.2-x86-64.raw");
    assert_eq!(
        std::fs::read(&sysext).unwrap(),
        std::fs::read(root.join("sysext/kubernetes-v1.37.2/kubernetes-v1.37.2-x86-64.raw"))
            .unwrap()
    );
    let out = lab
        .command("good", &["fetch", "kubernetes", "--version", "v1.37.3"])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(65), "{said}");
    assert!(said.contains("does not match SHA256SUMS"), "{said}");
    assert!(
        !lab.mirror()
            .join("kubernetes/kubernetes-v1.37.3-x86-64.raw")
            .exists()
    );

    // list and prune.
    let out = run(&mut lab.command("good", &["list"]));
    let listed = String::from_utf8_lossy(&out.stdout);
    eprintln!("{listed}");
    for want in [
        "4459.2.1",
        "4459.2.4",
        "4459.2.6",
        "current",
        "verified",
        "kubernetes-v1.37.2-x86-64.raw",
        "SHA-256 checked",
    ] {
        assert!(listed.contains(want), "{want}: {listed}");
    }
    assert!(
        listed.contains("partial") && listed.contains("4459.2.5"),
        "{listed}"
    );
    let out = run(&mut lab.command("good", &["prune"]));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("2 releases removed"), "{said}");
    assert!(lab.mirror().join("stable/amd64-usr/4459.2.6").exists());
    assert!(!lab.mirror().join("stable/amd64-usr/4459.2.1").exists());

    hostile_servers(&lab);
}

/// What a stale or hostile release server can try, each refused with `current` unchanged and
/// nothing kept (issue #31, items 10–12).
fn hostile_servers(lab: &Lab) {
    let board = lab.mirror().join("stable/amd64-usr");
    let refused = |mode: &str, version: &str, code: i32, says: &str| {
        let (got, text) = lab.fetch(mode, version);
        eprintln!("{mode} {version}:\n{text}");
        assert_eq!(got, Some(code), "{text}");
        assert!(text.contains(says), "{text:?} should say {says:?}");
        assert!(!board.join(version).exists(), "{version} was kept");
        assert!(!board.join(format!(".incoming-{version}")).exists());
        assert_eq!(lab.current().as_deref(), Some("4459.2.6"));
    };
    refused("good", "4459.2.7", 65, "byte for byte stable 4459.2.6");
    refused(
        "good",
        "4459.3.0",
        65,
        "signed before the older release 4459.2.6",
    );
    refused("good", "4459.3.1", 65, "hours apart");
    refused("huge", "4459.3.3", 65, "the most a release file may be");
    refused("away", "4459.3.4", 69, "outside release_base_url's host");
    // A redirect on the same host is followed.
    let (code, text) = lab.fetch("hop", "4459.3.4");
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(lab.current().as_deref(), Some("4459.3.4"));

    // An older release is verified and kept, but current does not move back unless asked.
    let (code, text) = lab.fetch("good", "4459.2.5");
    assert_eq!(code, Some(65), "{text}");
    assert!(text.contains("older than 4459.3.4"), "{text}");
    assert!(text.contains("--allow-downgrade"), "{text}");
    assert_eq!(lab.current().as_deref(), Some("4459.3.4"));
    let (code, text) = lab.fetch_with("good", "4459.2.5", &["--allow-downgrade"]);
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(lab.current().as_deref(), Some("4459.2.5"));

    // A body that never ends, into a 64 MB tmpfs with a 16 MB reserve: stopped before the
    // reserve (exit 73) with what to do, the partial file kept for a resume.
    let disk = lacave_integration_tests::SmallDisk::new("64m");
    let mirror = disk.path().join("mirror");
    let (code, text) = lab.output(lab.command_on(
        "endless",
        &mirror,
        "fetch_min_free_mb = 16",
        &["fetch", "flatcar", "--version", "4459.3.2"],
    ));
    eprintln!("endless:\n{text}");
    assert_eq!(code, Some(73), "{text}");
    assert!(
        text.contains("fetch_min_free_mb") && text.contains("free space"),
        "{text}"
    );
    let df = Command::new("df")
        .args(["--output=avail", "-B1"])
        .arg(disk.path())
        .output()
        .unwrap();
    let free: u64 = String::from_utf8_lossy(&df.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .unwrap();
    assert!(free >= 16 << 20, "{free} bytes left: the reserve was eaten");
}

/// The mirror listener (hand-written HTTP) and `[http] listen` answer a Range past a file's
/// end with 416 and `Content-Range: bytes */<length>`, as RFC 9110 says; a satisfiable one
/// with 206.
#[test]
fn an_unsatisfiable_range_gets_416_with_content_range() {
    let state = tempfile::tempdir().unwrap();
    let mirror = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(mirror.path().join("stable")).unwrap();
    std::fs::write(mirror.path().join("stable/file"), vec![7u8; 100]).unwrap();
    std::fs::write(mirror.path().join("stable/empty"), b"").unwrap();
    let config = format!(
        "state_dir = \"{}\"\n[http]\nlisten = \"127.0.0.1:0\"\nmirror_listen = \"127.0.0.3:0\"\n[flatcar]\nmirror_dir = \"{}\"\n",
        state.path().display(),
        mirror.path().display()
    );
    let d = lacave_integration_tests::DaemonProcess::start_custom(state.path(), &config, None, &[]);
    for listener in ["image mirror listening", "http listening"] {
        let at = d.listening(listener);
        for (file, range, status, content_range) in [
            ("file", "bytes=100-", "416", Some("bytes */100")),
            ("file", "bytes=500-600", "416", Some("bytes */100")),
            ("file", "bytes=-0", "416", Some("bytes */100")),
            ("empty", "bytes=0-", "416", Some("bytes */0")),
            ("file", "bytes=90-", "206", Some("bytes 90-99/100")),
            ("file", "bytes=-10", "206", Some("bytes 90-99/100")),
            ("file", "bytes=50-10", "200", None),
        ] {
            let out = Command::new("curl")
                .args(["-sS", "-o", "/dev/null", "-D", "-", "-H"])
                .arg(format!("Range: {range}"))
                .arg(format!("http://{at}/mirror/stable/{file}"))
                .output()
                .unwrap();
            let head = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
            let first = head.lines().next().unwrap_or_default().to_string();
            assert!(first.contains(status), "{listener} {range}: {head}");
            match content_range {
                Some(want) => assert!(
                    head.contains(&format!("content-range: {want}")),
                    "{listener} {range}: {head}"
                ),
                None => assert!(
                    !head.contains("content-range"),
                    "{listener} {range}: {head}"
                ),
            }
        }
    }
}

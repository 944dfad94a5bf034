//! The daemon as an OCI registry for nodes without internet: an image imported with
//! `lacave mirror images add` is pulled by Debian's containerd (`ctr image pull --hosts-dir`
//! with a `hosts.toml` that mirrors registry.k8s.io to the daemon) and run; a blob damaged in
//! the store is refused by the client (digest mismatch), and importing again repairs it.
//! Everything runs in a network namespace of its own (loopback), containerd with its own root.

use std::path::Path;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use lacave_integration_tests::netns::{Netns, require_root};
use lacave_integration_tests::{DaemonProcess, lacave_bin};

const IMAGES: &str = "/var/cache/lacave-tests/k8s-v1.37.2/images";

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

struct Containerd {
    child: std::process::Child,
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn containerd_pulls_through_the_daemon_and_refuses_a_damaged_blob() {
    require_root("the registry test (network namespace, containerd)");
    let pause = Path::new(IMAGES).join("pause.tar");
    assert!(
        pause.exists(),
        "{} (scripts/prereqs.sh ensure_k8s builds it)",
        pause.display()
    );
    let reference = std::fs::read_to_string(Path::new(IMAGES).join("pause-ref")).unwrap();
    let reference = reference.trim();
    let work = tempfile::tempdir().unwrap();
    let ns = Netns::new("registry");
    let state = work.path().join("state");
    let config = format!(
        "state_dir = \"{}\"\n[http]\nlisten = \"127.0.0.1:8080\"\nmirror_listen = \"127.0.0.1:8081\"\n",
        state.display()
    );
    let daemon = DaemonProcess::start_custom(&state, &config, Some(&ns), &[]);
    let lacave = |args: &[&str]| {
        ns.command(lacave_bin())
            .args(args)
            .arg("--config")
            .arg(&daemon.config_path)
            .output()
            .unwrap()
    };
    let out = lacave(&["mirror", "images", "add", pause.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains(reference), "{}", text(&out));
    let out = lacave(&["mirror", "images", "list"]);
    assert!(text(&out).contains(reference), "{}", text(&out));

    // containerd, its own root and socket, no CRI.
    let c = work.path().join("containerd");
    std::fs::create_dir_all(&c).unwrap();
    let socket = c.join("containerd.sock");
    std::fs::write(
        c.join("config.toml"),
        format!(
            "version = 2\nroot = \"{}/root\"\nstate = \"{}/state\"\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n[grpc]\naddress = \"{}\"\n",
            c.display(),
            c.display(),
            socket.display()
        ),
    )
    .unwrap();
    // nsenter, not `ip netns exec`: the latter mounts a sysfs of its own over /sys, which
    // hides the cgroup hierarchies runc needs.
    let in_ns = |program: &str| {
        let mut c = std::process::Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", ns.name)).arg(program);
        c
    };
    let _containerd = Containerd {
        child: in_ns("containerd")
            .arg("--config")
            .arg(c.join("config.toml"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    };
    // containerd keeps a failed download's bytes for a resume: the pull after the repair
    // runs in a namespace of its own.
    let namespace = std::cell::Cell::new("refused");
    let ctr = |args: &[&str]| {
        in_ns("ctr")
            .arg("--address")
            .arg(&socket)
            .args(["--namespace", namespace.get()])
            .args(args)
            .output()
            .unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ctr(&["version"]).status.success() {
        assert!(Instant::now() < deadline, "containerd did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    // The hosts.toml the nodes' final Ignition writes for registry.k8s.io.
    let hosts = work.path().join("certs.d/registry.k8s.io");
    std::fs::create_dir_all(&hosts).unwrap();
    std::fs::write(
        hosts.join("hosts.toml"),
        lacave::boot::hosts_toml("https://registry.k8s.io", "http://127.0.0.1:8080"),
    )
    .unwrap();
    let hosts_dir = work.path().join("certs.d");
    let pull = || {
        ctr(&[
            "image",
            "pull",
            "--hosts-dir",
            hosts_dir.to_str().unwrap(),
            reference,
        ])
    };

    // A layer damaged in the store: the client refuses it.
    let blobs = state.join("images/blobs/sha256");
    let biggest = std::fs::read_dir(&blobs)
        .unwrap()
        .flatten()
        .max_by_key(|e| e.metadata().unwrap().len())
        .unwrap()
        .path();
    let good = std::fs::read(&biggest).unwrap();
    let mut bad = good.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0xff;
    std::fs::write(&biggest, &bad).unwrap();
    let out = pull();
    assert!(
        !out.status.success(),
        "a damaged blob was accepted: {}",
        text(&out)
    );
    let said = text(&out).to_lowercase();
    assert!(
        said.contains("digest") || said.contains("mismatch"),
        "{said}"
    );
    // Importing again replaces the damaged blob.
    let out = lacave(&["mirror", "images", "add", pause.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(std::fs::read(&biggest).unwrap(), good);

    namespace.set("lacave-test");
    let out = pull();
    assert!(
        out.status.success(),
        "pull through the daemon: {}",
        text(&out)
    );
    let out = ctr(&["image", "ls", "-q"]);
    assert!(text(&out).contains(reference), "{}", text(&out));
    // And it runs.
    let out = ctr(&["run", "-d", reference, "pause-from-lacave"]);
    assert!(out.status.success(), "ctr run: {}", text(&out));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = ctr(&["task", "ls"]);
        if text(&out).contains("RUNNING") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the task did not run: {}",
            text(&out)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = ctr(&["task", "kill", "-s", "SIGKILL", "pause-from-lacave"]);
    std::thread::sleep(Duration::from_millis(500));
    let _ = ctr(&["task", "delete", "pause-from-lacave"]);
    let _ = ctr(&["container", "delete", "pause-from-lacave"]);

    // The same through the mirror listener (blobs sent with sendfile), in a namespace of its own.
    let hosts = work.path().join("certs.d-mirror/registry.k8s.io");
    std::fs::create_dir_all(&hosts).unwrap();
    std::fs::write(
        hosts.join("hosts.toml"),
        lacave::boot::hosts_toml("https://registry.k8s.io", "http://127.0.0.1:8081"),
    )
    .unwrap();
    namespace.set("via-mirror-listener");
    let out = ctr(&[
        "image",
        "pull",
        "--hosts-dir",
        work.path().join("certs.d-mirror").to_str().unwrap(),
        reference,
    ]);
    assert!(
        out.status.success(),
        "pull through the mirror listener: {}",
        text(&out)
    );

    // What the daemon says of what it does not hold: the specification's error.
    let out = ns
        .command("curl")
        .args(["-sS", "-w", "\n%{http_code}"])
        .arg("http://127.0.0.1:8080/v2/nothing/manifests/1.0?ns=registry.k8s.io")
        .output()
        .unwrap();
    let missing = text(&out);
    assert!(
        missing.contains("MANIFEST_UNKNOWN") && missing.ends_with("404"),
        "{missing}"
    );
    drop(daemon);
}

//! The cluster join's SSH client against a real OpenSSH server (Debian's sshd) on loopback:
//! it runs commands and writes files only on the host whose key was pinned, refuses any other
//! host key before authenticating, and never connects without a pinned key.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use lacave::cluster::ssh::{SshClient, SshError};
use lacave_integration_tests::free_port;

/// An sshd on 127.0.0.1 with its own host key, letting `authorized` in as root.
struct Sshd {
    child: Child,
    port: u16,
    host_key_pub: String,
    _dir: tempfile::TempDir,
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn keygen(path: &Path) -> String {
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "test", "-f"])
        .arg(path)
        .status()
        .expect("ssh-keygen runs (Debian: openssh-client)");
    assert!(status.success());
    std::fs::read_to_string(path.with_extension("pub")).unwrap()
}

fn start_sshd(authorized: &str) -> Sshd {
    let sshd = Path::new("/usr/sbin/sshd");
    assert!(
        sshd.exists(),
        "/usr/sbin/sshd is missing: apt install openssh-server (scripts/test does)"
    );
    let dir = tempfile::tempdir().unwrap();
    let host_key = dir.path().join("host_ed25519");
    let host_key_pub = keygen(&host_key);
    let keys = dir.path().join("authorized_keys");
    std::fs::write(&keys, authorized).unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::create_dir_all("/run/sshd").unwrap();
    // Another test's sshd may be handed the same free port: ours then cannot bind and exits,
    // and the probe below would reach theirs. Start again on another port then.
    for _ in 0..5 {
        if let Some((child, port)) = try_sshd(sshd, dir.path(), &host_key, &keys) {
            return Sshd {
                child,
                port,
                host_key_pub,
                _dir: dir,
            };
        }
    }
    panic!("sshd did not start on any of 5 ports");
}

/// sshd on a free port, once it listens and is still running; `None` if it exited.
fn try_sshd(
    sshd: &Path,
    dir: &Path,
    host_key: &Path,
    keys: &Path,
) -> Option<(std::process::Child, u16)> {
    let port = free_port();
    let config = dir.join("sshd_config");
    std::fs::write(
        &config,
        format!(
            "ListenAddress 127.0.0.1:{port}\nHostKey {}\nAuthorizedKeysFile {}\nPermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nPidFile none\n",
            host_key.display(),
            keys.display()
        ),
    )
    .unwrap();
    let child = Command::new(sshd)
        .args(["-D", "-e", "-f"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("sshd starts");
    let mut child = child;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if child.try_wait().ok().flatten().is_some() {
            return None;
        }
        assert!(std::time::Instant::now() < deadline, "sshd did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(100));
    if child.try_wait().ok().flatten().is_some() {
        return None;
    }
    Some((child, port))
}

struct Keys {
    dir: tempfile::TempDir,
    public: String,
}

fn client_key() -> Keys {
    let dir = tempfile::tempdir().unwrap();
    let public = keygen(&dir.path().join("id_ed25519"));
    Keys { dir, public }
}

const LOOPBACK: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

#[tokio::test]
async fn commands_and_files_reach_only_the_pinned_host() {
    let keys = client_key();
    let sshd = start_sshd(&keys.public);
    let client = SshClient::load(&keys.dir.path().join("id_ed25519"), sshd.port).unwrap();
    let t = Duration::from_secs(20);

    let session = client
        .connect(LOOPBACK, Some(&sshd.host_key_pub), t)
        .await
        .unwrap();
    let out = session
        .run("echo hello; echo oops >&2; exit 3", None, t)
        .await
        .unwrap();
    assert_eq!(out.status, Some(3));
    assert_eq!(out.stdout, b"hello\n");
    assert_eq!(out.stderr, b"oops\n");
    assert_eq!(out.tail(5), "hello\noops");

    // stdin reaches the command; a large stdin too.
    let big = vec![b'x'; 3 * 1024 * 1024];
    let out = session.run("wc -c", Some(&big), t).await.unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        big.len().to_string()
    );

    // Files land atomically with their mode, in new directories, whatever their name.
    let target = tempfile::tempdir().unwrap();
    let path = target.path().join("pki/etcd/it's a key");
    session
        .upload(path.to_str().unwrap(), 0o600, b"secret\n")
        .await
        .unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"secret\n");
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let leftovers: Vec<_> = std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers.len(), 1, "no temporary file left: {leftovers:?}");
    session.close().await;
}

#[tokio::test]
async fn another_host_key_is_refused_before_authentication() {
    let keys = client_key();
    let sshd = start_sshd(&keys.public);
    let client = SshClient::load(&keys.dir.path().join("id_ed25519"), sshd.port).unwrap();
    let t = Duration::from_secs(20);
    // The key a real machine pinned; an impostor at its address presents its own.
    let other = client_key();
    match client.connect(LOOPBACK, Some(&other.public), t).await {
        Err(SshError::HostKeyMismatch {
            presented, pinned, ..
        }) => {
            assert!(presented.starts_with("SHA256:"), "{presented}");
            assert_ne!(presented, pinned);
            let expected = Command::new("ssh-keygen")
                .args(["-l", "-f", "-"])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .and_then(|mut c| {
                    use std::io::Write;
                    c.stdin
                        .take()
                        .unwrap()
                        .write_all(sshd.host_key_pub.as_bytes())?;
                    c.wait_with_output()
                })
                .unwrap();
            let expected = String::from_utf8_lossy(&expected.stdout);
            assert!(expected.contains(&presented), "{expected} vs {presented}");
        }
        other => panic!("expected a host key mismatch, got {other:?}"),
    }
    // No pinned key: no connection at all.
    assert!(matches!(
        client.connect(LOOPBACK, None, t).await,
        Err(SshError::NotPinned)
    ));
    // The right host, a key it does not authorize.
    let stranger = client_key();
    let stranger = SshClient::load(&stranger.dir.path().join("id_ed25519"), sshd.port).unwrap();
    assert!(matches!(
        stranger
            .connect(LOOPBACK, Some(&sshd.host_key_pub), t)
            .await,
        Err(SshError::AuthRefused { .. })
    ));
}

/// Whether a process whose command line holds `marker` runs on this host.
fn running(marker: &str) -> bool {
    Command::new("pgrep")
        .args(["-f", marker])
        .stdout(Stdio::null())
        .status()
        .unwrap()
        .success()
}

/// Waits (without blocking the test's runtime, which runs the stop) for `marker` to go.
async fn wait_gone(marker: &str, what: &str) {
    for _ in 0..100 {
        if !running(marker) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what}: a process with {marker} still runs");
}

#[tokio::test]
async fn a_command_that_times_out_or_is_abandoned_is_stopped_on_the_node() {
    let keys = client_key();
    let sshd = start_sshd(&keys.public);
    // A step directory of this test's own: the host is every test's "node".
    let steps = tempfile::tempdir().unwrap();
    let client = SshClient::load(&keys.dir.path().join("id_ed25519"), sshd.port)
        .unwrap()
        .with_step_dir(steps.path().to_str().unwrap());
    let t = Duration::from_secs(20);
    let session = client
        .connect(LOOPBACK, Some(&sshd.host_key_pub), t)
        .await
        .unwrap();
    let marker = format!("lacave-step-{}", std::process::id());

    // Timed out: the command and its children (a pipeline, a subshell) are stopped.
    let command = format!("sh -c 'sleep 300; echo {marker}-a' | cat; (sleep 301; echo {marker}-a)");
    match session.run(&command, None, Duration::from_secs(2)).await {
        Err(SshError::Timeout { what, secs }) => {
            assert_eq!(secs, 2);
            assert!(what.contains("stopped on the node"), "{what}");
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    wait_gone(&format!("{marker}-a"), "after a timeout").await;
    assert_eq!(
        std::fs::read_dir(steps.path()).unwrap().count(),
        0,
        "no pid file left"
    );

    // Abandoned: the caller drops the future (a cancelled join) and the group is stopped.
    let long = format!("sleep 302; echo {marker}-b");
    let abandoned = tokio::time::timeout(
        Duration::from_secs(2),
        session.run(&long, None, Duration::from_secs(600)),
    )
    .await;
    assert!(abandoned.is_err());
    wait_gone(&format!("{marker}-b"), "after the caller gave up").await;

    // Left by a daemon that died mid-step: the next try stops it first.
    let left = std::process::Command::new("setsid")
        .args(["sh", "-c"])
        .arg(format!(
            "echo $$ > {}/left.pid; sleep 303; : {marker}-c",
            steps.path().display()
        ))
        .spawn();
    let _ = left;
    let mut waited = 0;
    while !running(&format!("{marker}-c")) && waited < 50 {
        std::thread::sleep(Duration::from_millis(100));
        waited += 1;
    }
    assert_eq!(session.stop_leftover_steps().await.unwrap(), 1);
    wait_gone(&format!("{marker}-c"), "after stop_leftover_steps").await;
    assert_eq!(session.stop_leftover_steps().await.unwrap(), 0);

    // A command that ends by itself leaves nothing behind and keeps its status.
    let out = session.run("exit 7", None, t).await.unwrap();
    assert_eq!(out.status, Some(7));
    let out = session.run("echo out; false", None, t).await.unwrap();
    assert_eq!(
        (out.status, out.stdout.as_slice()),
        (Some(1), &b"out\n"[..])
    );
    assert_eq!(std::fs::read_dir(steps.path()).unwrap().count(), 0);
    session.close().await;
}

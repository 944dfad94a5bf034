//! Nothing acknowledged is lost: across a clean restart, and across SIGKILL of the real
//! daemon process while clients are registering nodes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lacave::cli::{Client, ClientError, Target};
use std::process::{Command, Stdio};

use lacave_integration_tests::{
    DaemonProcess, TestDaemon, lacave_bin, node_request, test_config_text,
};

#[tokio::test]
async fn nodes_events_and_token_survive_a_restart() {
    let mut d = TestDaemon::start().await;
    let token = d.token();
    let client = d.client();
    for i in 0..20 {
        client.create_node(&node_request(i)).await.unwrap();
    }
    client.reinstall_node("node3", false).await.unwrap();
    let before = client.list_nodes().await.unwrap();
    let events_before = client.node_events("node3").await.unwrap();

    d.restart().await;
    assert_eq!(d.token(), token, "the generated token is kept");
    let client = d.client();
    assert_eq!(client.list_nodes().await.unwrap(), before);
    assert_eq!(client.node_events("node3").await.unwrap(), events_before);
    // Unique indexes came back too.
    let err = client.create_node(&node_request(5)).await.unwrap_err();
    assert!(
        matches!(err, ClientError::Refused { status: 409, .. }),
        "{err}"
    );
    // New event sequence numbers keep growing after a restart.
    client.reinstall_node("node3", false).await.unwrap();
    let events = client.node_events("node3").await.unwrap();
    assert!(events.last().unwrap().seq > events_before.last().unwrap().seq);
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Outcome {
    Acknowledged,
    Rejected,
    /// The connection died with the daemon: the write may or may not have committed.
    InDoubt,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_registrations_loses_no_acknowledged_node() {
    let state = tempfile::tempdir().unwrap();
    let state_dir = state.path().join("state");
    let mut daemon = DaemonProcess::start(&state_dir);
    let target = Target {
        url: daemon.url.clone(),
        token: daemon.token(&state_dir),
        token_source: "test".into(),
        ca_pem: None,
    };
    let outcomes: Arc<Mutex<BTreeMap<u32, Outcome>>> = Arc::default();

    // Eight writers register until the daemon dies under them. Every tenth request reuses
    // an earlier hostname and must be rejected; a rejected node must never appear.
    let mut writers = Vec::new();
    for w in 0..8u32 {
        let client = Client::new(target.clone()).unwrap();
        let outcomes = outcomes.clone();
        writers.push(tokio::spawn(async move {
            for n in 0.. {
                let i = w * 100_000 + n + 1;
                let mut req = node_request(i);
                if n % 10 == 9 {
                    req.hostname = format!("node{}", w * 100_000 + 1);
                }
                let outcome = match client.create_node(&req).await {
                    Ok(_) => Outcome::Acknowledged,
                    Err(ClientError::Refused { status: 409, .. }) => Outcome::Rejected,
                    Err(ClientError::Unreachable { .. }) => Outcome::InDoubt,
                    Err(e) => panic!("unexpected error: {e}"),
                };
                outcomes.lock().unwrap().insert(i, outcome);
                if outcome == Outcome::InDoubt {
                    return;
                }
            }
        }));
    }
    // Let a few hundred registrations through, then kill without warning.
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if outcomes.lock().unwrap().len() > 300 {
            break;
        }
    }
    daemon.kill();
    for w in writers {
        w.await.unwrap();
    }

    let daemon = DaemonProcess::start(&state_dir);
    let client = Client::new(Target {
        url: daemon.url.clone(),
        ..target
    })
    .unwrap();
    let stored: BTreeSet<String> = client
        .list_nodes()
        .await
        .unwrap()
        .into_iter()
        .map(|n| n.mac)
        .collect();
    let outcomes = outcomes.lock().unwrap();
    let mac_of = |i: u32| node_request(i).mac;
    let mut acked = 0;
    let mut in_doubt = 0;
    for (&i, &outcome) in outcomes.iter() {
        match outcome {
            Outcome::Acknowledged => {
                acked += 1;
                assert!(
                    stored.contains(&mac_of(i)),
                    "acknowledged node {i} was lost"
                );
            }
            Outcome::Rejected => {
                assert!(!stored.contains(&mac_of(i)), "rejected node {i} was stored");
            }
            Outcome::InDoubt => in_doubt += 1,
        }
    }
    let known: BTreeSet<String> = outcomes.keys().map(|&i| mac_of(i)).collect();
    assert!(stored.is_subset(&known), "a node nobody sent was stored");
    assert!(
        in_doubt <= 8,
        "at most one request per writer was in flight"
    );
    assert!(stored.len() >= acked && stored.len() <= acked + in_doubt);
    assert!(acked > 250, "the test exercised enough writes ({acked})");
}

#[test]
fn a_damaged_registry_is_reported_not_a_crash() {
    let state = tempfile::tempdir().unwrap();
    {
        let mut daemon = DaemonProcess::start(state.path());
        let token = daemon.token(state.path());
        for i in 0..200 {
            let out = Command::new(lacave_bin())
                .args(["node", "add", "--mac"])
                .arg(format!("52:54:00:00:{:02x}:{:02x}", i / 256, i % 256))
                .args(["--hostname", &format!("n{i}"), "--ip"])
                .arg(format!("10.9.{}.{}", i / 200, 1 + i % 200))
                .args(["--role", "worker"])
                .env("LACAVE_URL", &daemon.url)
                .env("LACAVE_TOKEN", &token)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        assert!(daemon.terminate().success());
    }
    let db = state.path().join("registry/db");
    let whole = std::fs::read(&db).unwrap();
    let config = state.path().with_extension("toml");
    std::fs::write(&config, test_config_text(state.path())).unwrap();
    let mut refused = 0;
    // Cuts in the data (50, 80, 85, 90 %) and a header alone.
    for keep in [
        whole.len() / 2,
        whole.len() * 8 / 10,
        whole.len() * 85 / 100,
        whole.len() * 9 / 10,
        4096,
    ] {
        std::fs::write(&db, &whole[..keep.min(whole.len())]).unwrap();
        let mut child = Command::new(lacave_bin())
            .args(["serve", "--config"])
            .arg(&config)
            .env_remove("NOTIFY_SOCKET")
            .env("LACAVE_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Its log, and the URL once it says it is ready.
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let log = std::thread::spawn(move || {
            let mut all = String::new();
            for line in
                std::io::BufRead::lines(std::io::BufReader::new(stderr)).map_while(Result::ok)
            {
                if line.contains("lacave is ready")
                    && let Some(url) = line.split("url=").nth(1)
                {
                    let _ = tx.send(url.split_whitespace().next().unwrap_or("").to_string());
                }
                all.push_str(&line);
                all.push('\n');
            }
            all
        });
        if let Ok(url) = rx.recv_timeout(Duration::from_secs(10)) {
            // sled recovered its log whole (the cut took only preallocated space): every
            // acknowledged node must be there. A cut that loses any is refused (issue #31,
            // item 13: `store/acked.rs`), never served with fewer nodes.
            let token = std::fs::read_to_string(state.path().join("api-token")).unwrap();
            let out = Command::new(lacave_bin())
                .args(["node", "list", "--json", "--url", &url])
                .env("LACAVE_TOKEN", token.trim())
                .output()
                .unwrap();
            let _ = child.kill();
            let _ = child.wait();
            let nodes: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            assert_eq!(
                nodes.as_array().map(Vec::len),
                Some(200),
                "{keep} of {} bytes kept: the daemon started with fewer nodes than it acknowledged ({})",
                whole.len(),
                String::from_utf8_lossy(&out.stderr)
            );
            eprintln!("{keep} of {} bytes kept: every node recovered", whole.len());
            continue;
        }
        let status = child.wait().unwrap();
        let stderr = log.join().unwrap();
        assert!(!stderr.contains("panicked"), "{keep} bytes: {stderr}");
        assert_eq!(status.code(), Some(65), "{keep} bytes: {stderr}");
        assert!(
            stderr.contains("registry") && stderr.contains("backup"),
            "{keep} bytes: {stderr}"
        );
        eprintln!(
            "{keep} of {} bytes kept: refused, {}",
            whole.len(),
            stderr
                .lines()
                .rev()
                .find(|l| l.contains("registry"))
                .unwrap_or_default()
        );
        refused += 1;
    }
    // The header alone: sled opens it as an empty database, which used to become a fresh,
    // empty registry silently; it is now refused.
    assert!(
        refused > 0,
        "no truncation was detected: the test proves nothing"
    );
}

fn healthz(url: &str) -> (u16, String) {
    let out = Command::new("curl")
        .args([
            "-sS",
            "-m",
            "5",
            "-w",
            "\n%{http_code}",
            &format!("{url}/healthz"),
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.parse().unwrap_or(0), body.to_string())
}

/// On a full disk: clear errors, `/healthz` 503, nothing acknowledged lost; when space
/// returns the daemon goes on, or exits 75 to be restarted (as the unit does) and then
/// works, with every acknowledged node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_health_and_recovers_once_space_returns() {
    let disk = lacave_integration_tests::SmallDisk::new("6m");
    let state_dir = disk.path().join("state");
    let mut daemon = DaemonProcess::start(&state_dir);
    let target = |url: &str| Target {
        url: url.to_string(),
        token: daemon_token(&state_dir),
        token_source: "test".into(),
        ca_pem: None,
    };
    let client = Client::new(target(&daemon.url)).unwrap();
    let mut acknowledged = Vec::new();
    for i in 0..5 {
        client.create_node(&node_request(i)).await.unwrap();
        acknowledged.push(i);
    }
    assert_eq!(healthz(&daemon.url).0, 200);

    // Fill the disk, then keep registering until writes fail.
    let filler = disk.path().join("filler");
    let _ = Command::new("dd")
        .args(["if=/dev/zero", "bs=64k"])
        .arg(format!("of={}", filler.display()))
        .stderr(Stdio::null())
        .status();
    let mut failure = None;
    for i in 5..400 {
        match client.create_node(&node_request(i)).await {
            Ok(_) => acknowledged.push(i),
            Err(e) => {
                failure = Some(e.to_string());
                break;
            }
        }
    }
    let failure = failure.expect("a write fails on a full disk");
    eprintln!("the failing write said: {failure}");
    assert!(
        failure.contains("no storage space") && failure.contains("free space"),
        "{failure}"
    );
    let (code, body) = healthz(&daemon.url);
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("registry writes are failing"), "{body}");
    // Reads still work.
    assert_eq!(client.list_nodes().await.unwrap().len(), acknowledged.len());

    // Space returns: within ~10 s the daemon is healthy again, or has exited 75.
    std::fs::remove_file(&filler).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let exited = loop {
        if let Some(status) = daemon.child.try_wait().unwrap() {
            break Some(status);
        }
        if healthz(&daemon.url).0 == 200 {
            break None;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "neither healthy nor restarted:\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    if let Some(status) = exited {
        assert_eq!(status.code(), Some(75), "{}", daemon.log());
        assert!(daemon.log().contains("restarting to reopen the registry"));
        // What systemd's Restart=on-failure does.
        daemon = DaemonProcess::start(&state_dir);
    }
    eprintln!(
        "after space returned: {}",
        if exited.is_some() {
            "restarted (exit 75)"
        } else {
            "recovered in place"
        }
    );
    let client = Client::new(target(&daemon.url)).unwrap();
    assert_eq!(healthz(&daemon.url).0, 200);
    let listed = client.list_nodes().await.unwrap();
    for i in &acknowledged {
        let host = node_request(*i).hostname;
        assert!(
            listed
                .iter()
                .any(|n| n.hostname.as_deref() == Some(host.as_str())),
            "{host} was acknowledged and is lost"
        );
    }
    client
        .create_node(&node_request(1000))
        .await
        .expect("writes work again");
    drop(daemon);
}

/// An API client of a daemon process, with its token.
fn client_of(daemon: &DaemonProcess, state_dir: &std::path::Path) -> Client {
    Client::new(Target {
        url: daemon.url.clone(),
        token: daemon.token(state_dir),
        token_source: "test".into(),
        ca_pem: None,
    })
    .unwrap()
}

fn daemon_token(state_dir: &std::path::Path) -> String {
    std::fs::read_to_string(state_dir.join("api-token"))
        .unwrap()
        .trim()
        .to_string()
}

/// `lacave backup` of a running daemon, a SIGKILL of the daemon in the middle of backups, and
/// `lacave restore` into the stopped daemon's state directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_while_running_survives_a_sigkill_and_restores() {
    let state = tempfile::tempdir().unwrap();
    let state_dir = state.path().join("state");
    let mut daemon = DaemonProcess::start(&state_dir);
    let client = client_of(&daemon, &state_dir);
    for i in 0..1500 {
        client.create_node(&node_request(i)).await.unwrap();
    }
    let before = client.list_nodes().await.unwrap();
    // The daemon's config file goes with each DaemonProcess: keep a copy for `restore`.
    let config_path = state.path().join("restore.toml");
    std::fs::copy(&daemon.config_path, &config_path).unwrap();
    let token = daemon.token(&state_dir);
    let backup = |out: &std::path::Path, url: &str| {
        Command::new(lacave_bin())
            .args(["backup", "--output"])
            .arg(out)
            .env("LACAVE_URL", url)
            .env("LACAVE_TOKEN", &token)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let good = state.path().join("good.json");
    let out = backup(&good, &daemon.url).wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&good).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "a backup holds secrets");

    // The daemon killed while backups run: each ends with a complete, restorable file or
    // with an error and no file at all.
    let mut failed = 0;
    for delay_ms in [0u64, 20, 60, 150, 400] {
        let out_path = state.path().join(format!("killed-{delay_ms}.json"));
        let child = backup(&out_path, &daemon.url);
        std::thread::sleep(Duration::from_millis(delay_ms));
        daemon.kill();
        let out = child.wait_with_output().unwrap();
        if out.status.success() {
            let bytes = std::fs::read(&out_path).unwrap();
            let dir = tempfile::tempdir().unwrap();
            lacave::store::Store::restore(&dir.path().join("r"), &bytes)
                .expect("a backup that says it succeeded is complete");
        } else {
            failed += 1;
            assert!(
                !out_path.exists(),
                "a failed backup left {}",
                out_path.display()
            );
        }
        daemon = DaemonProcess::start(&state_dir);
        assert_eq!(
            client_of(&daemon, &state_dir)
                .list_nodes()
                .await
                .unwrap()
                .len(),
            before.len(),
            "the registry is intact after a kill during a backup"
        );
    }
    eprintln!("{failed} of 5 backups were cut by the kill");

    // Restore: refused while the daemon runs, then done with it stopped.
    let restore = |file: &std::path::Path| {
        Command::new(lacave_bin())
            .args(["restore"])
            .arg(file)
            .arg("--config")
            .arg(&config_path)
            .output()
            .unwrap()
    };
    let out = restore(&good);
    assert_eq!(
        out.status.code(),
        Some(69),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("stop the daemon first"));
    assert!(daemon.terminate().success());
    // Something changed after the backup, in a registry about to be replaced.
    let out = Command::new(lacave_bin())
        .args(["restore"])
        .arg(&good)
        .arg("--config")
        .arg(&config_path)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains("restored 1500 nodes"), "{said}");
    assert!(said.contains("is kept in"), "{said}");
    let daemon = DaemonProcess::start(&state_dir);
    let client = client_of(&daemon, &state_dir);
    assert_eq!(client.list_nodes().await.unwrap(), before);
    // A truncated backup is refused (exit 65), naming the problem.
    let cut = state.path().join("cut.json");
    let bytes = std::fs::read(&good).unwrap();
    std::fs::write(&cut, &bytes[..bytes.len() / 3]).unwrap();
    drop(daemon);
    let out = Command::new(lacave_bin())
        .args(["restore"])
        .arg(&cut)
        .arg("--config")
        .arg(&config_path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(65));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("truncated"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

//! The `lacave` binary as an operator uses it: `node` commands against a running daemon,
//! their error messages and exit codes, `check-config`, and `serve`'s start-up and shutdown.

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output};

use lacave_integration_tests::{DaemonProcess, TestDaemon, lacave_bin, test_config_text};

fn lacave(url: &str, token: &str, args: &[&str]) -> Output {
    Command::new(lacave_bin())
        .args(args)
        .env("LACAVE_URL", url)
        .env("LACAVE_TOKEN", token)
        .env_remove("LACAVE_CONFIG")
        .output()
        .expect("lacave runs")
}

/// `lacave serve --config FILE` run to its end (the tests give it files it refuses).
fn serve(config: &std::path::Path) -> Output {
    Command::new(lacave_bin())
        .args(["serve", "--config"])
        .arg(config)
        .output()
        .expect("lacave runs")
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_commands_against_a_running_daemon() {
    let d = TestDaemon::start().await;
    let (url, token) = (d.url(), d.token());
    let run = move |args: Vec<&'static str>| {
        let (url, token) = (url.clone(), token.clone());
        tokio::task::spawn_blocking(move || lacave(&url, &token, &args))
    };

    let out = run(vec![
        "node",
        "add",
        "--mac",
        "52-54-00-AA-00-01",
        "--hostname",
        "kube01",
        "--ip",
        "192.168.1.21",
        "--role",
        "control-plane",
        "--label",
        "disktype=ssd",
        "--disk",
        "/dev/vda",
    ])
    .await
    .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.contains("registered kube01 (52:54:00:aa:00:01"),
        "{stdout}"
    );

    run(vec![
        "node",
        "add",
        "--mac",
        "52:54:00:aa:00:02",
        "--hostname",
        "kube02",
        "--ip",
        "192.168.1.22",
        "--role",
        "worker",
    ])
    .await
    .unwrap();

    let out = run(vec!["node", "list"]).await.unwrap();
    let (stdout, _) = text(&out);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    assert!(lines[0].starts_with("HOSTNAME  MAC"), "{stdout}");
    assert!(lines[1].starts_with("kube01") && lines[1].contains("disktype=ssd"));
    assert!(lines[2].starts_with("kube02") && lines[2].contains("worker"));

    let out = run(vec!["node", "list", "--json"]).await.unwrap();
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json[0]["install_disk"], "/dev/vda");
    // --output json is --json; --output yaml is the same data as YAML; the two together are a
    // usage error (2).
    let out = run(vec!["node", "list", "--output", "json"]).await.unwrap();
    let same: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(same, json);
    let out = run(vec!["node", "list", "--output", "yaml"]).await.unwrap();
    assert!(out.status.success(), "{:?}", text(&out));
    let yaml: serde_json::Value = serde_yaml::from_slice(&out.stdout).unwrap();
    assert_eq!(yaml, json, "{}", text(&out).0);
    let out = run(vec!["node", "show", "kube01", "--output", "yaml"])
        .await
        .unwrap();
    let yaml: serde_json::Value = serde_yaml::from_slice(&out.stdout).unwrap();
    assert_eq!(yaml["node"]["hostname"], "kube01");
    let out = run(vec!["dns", "list", "--output", "yaml"]).await.unwrap();
    assert!(out.status.success(), "{:?}", text(&out));
    assert!(serde_yaml::from_slice::<serde_json::Value>(&out.stdout).is_ok());
    let out = run(vec!["node", "list", "--json", "--output", "yaml"])
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{:?}", text(&out));
    let out = run(vec!["node", "list", "--output", "xml"]).await.unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out).1.contains("table, json, yaml"),
        "{:?}",
        text(&out)
    );

    let out = run(vec!["node", "reinstall", "kube01"]).await.unwrap();
    assert!(out.status.success());
    let out = run(vec!["node", "show", "52:54:00:aa:00:01"])
        .await
        .unwrap();
    let (stdout, _) = text(&out);
    assert!(stdout.contains("hostname:      kube01"), "{stdout}");
    assert!(stdout.contains("created (registered)"), "{stdout}");
    assert!(stdout.contains("registered → registered"), "{stdout}");

    // A refused registration names the field and exits 65.
    let out = run(vec![
        "node",
        "add",
        "--mac",
        "52:54:00:aa:00:03",
        "--hostname",
        "kube01",
        "--ip",
        "192.168.1.23",
        "--role",
        "worker",
    ])
    .await
    .unwrap();
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(65));
    assert!(
        stderr.contains("hostname kube01 is already used by node kube01"),
        "{stderr}"
    );
    let out = run(vec![
        "node",
        "add",
        "--mac",
        "nope",
        "--hostname",
        "k_3",
        "--ip",
        "1.2.3",
        "--role",
        "boss",
    ])
    .await
    .unwrap();
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(65));
    for field in ["mac:", "hostname:", "ip:", "role:"] {
        assert!(stderr.contains(field), "{field} in {stderr}");
    }
    let out = run(vec![
        "node",
        "add",
        "--mac",
        "52:54:00:aa:00:04",
        "--hostname",
        "k4",
        "--ip",
        "10.0.0.4",
        "--role",
        "worker",
        "--label",
        "bad label",
    ])
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(65));
    assert!(text(&out).1.contains("--label"));

    let out = run(vec!["node", "rm", "kube02"]).await.unwrap();
    assert!(out.status.success());
    let out = run(vec!["node", "show", "kube02"]).await.unwrap();
    assert_eq!(out.status.code(), Some(65));
    assert!(text(&out).1.contains("no node named kube02"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_errors_say_what_is_wrong() {
    let d = TestDaemon::start().await;
    let url = d.url();
    let out = tokio::task::spawn_blocking(move || {
        lacave(&url, "not-the-token-not-the-token", &["node", "list"])
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(77));
    assert!(
        text(&out).1.contains("refused the API token"),
        "{}",
        text(&out).1
    );

    // Nothing listens on a port we just released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let down = format!("http://127.0.0.1:{port}");
    let out = lacave(&down, "whatever-whatever", &["node", "list"]);
    assert_eq!(out.status.code(), Some(69));
    let (_, stderr) = text(&out);
    assert!(
        stderr.contains("cannot reach the lacave daemon"),
        "{stderr}"
    );
    assert!(stderr.contains("is it running?"), "{stderr}");

    // Several bad fields: every one, one line each, from the daemon's list.
    let (url, token) = (d.url(), d.token());
    let out = tokio::task::spawn_blocking(move || {
        lacave(
            &url,
            &token,
            &[
                "node",
                "add",
                "--mac",
                "zz",
                "--hostname",
                "BAD_",
                "--ip",
                "999",
                "--role",
                "king",
            ],
        )
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(65));
    let (_, stderr) = text(&out);
    assert!(stderr.contains("4 fields are invalid:"), "{stderr}");
    for field in ["\n  mac: ", "\n  hostname: ", "\n  ip: ", "\n  role: "] {
        assert!(stderr.contains(field), "{field:?} missing: {stderr}");
    }
    assert!(
        stderr.contains("or aabbccddeeff"),
        "all four MAC forms: {stderr}"
    );
}

#[test]
fn the_cli_finds_the_daemon_and_token_from_its_config() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let daemon = DaemonProcess::start(&state);
    // No URL or token given: both come from the daemon's own config file. The config asks
    // for port 0, so only the URL is passed explicitly here.
    let out = Command::new(lacave_bin())
        .args(["node", "list", "--config"])
        .arg(&daemon.config_path)
        .env("LACAVE_URL", &daemon.url)
        .env_remove("LACAVE_TOKEN")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out).1);
    assert!(text(&out).0.contains("no nodes"));
    // The start-up banner's suggestion names this daemon's configuration.
    let log = daemon.log();
    assert!(
        log.contains(&format!(
            "--config {} node list",
            daemon.config_path.display()
        )),
        "{log}"
    );

    // An unreadable token file is reported as such.
    let out = Command::new(lacave_bin())
        .args(["node", "list", "--token-file", "/nonexistent/token"])
        .env("LACAVE_URL", &daemon.url)
        .env_remove("LACAVE_TOKEN")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(77));
    assert!(text(&out).1.contains("cannot read /nonexistent/token"));
}

fn check_config(path: &std::path::Path) -> Output {
    Command::new(lacave_bin())
        .args(["check-config", "--config"])
        .arg(path)
        .output()
        .expect("lacave runs")
}

#[test]
fn the_shipped_example_config_is_valid() {
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/lacave.toml");
    let out = check_config(&example);
    assert!(out.status.success(), "{}", text(&out).1);
}

#[test]
fn check_config_renders_the_kubeadm_templates_when_the_join_is_on() {
    let dir = tempfile::tempdir().unwrap();
    let templates = dir.path().join("templates/roles/worker");
    std::fs::create_dir_all(&templates).unwrap();
    std::fs::write(
        templates.join("kubeadm-join.yaml.j2"),
        "apiVersion: x\nkind: [\n",
    )
    .unwrap();
    let config = dir.path().join("lacave.toml");
    let text_of = |templates: bool| {
        format!(
            "state_dir = \"{}/state\"\n[cluster]\nenabled = true\n{}",
            dir.path().display(),
            if templates {
                format!(
                    "[flatcar]\ntemplates_dir = \"{}/templates\"\n",
                    dir.path().display()
                )
            } else {
                String::new()
            }
        )
    };
    std::fs::write(&config, text_of(false)).unwrap();
    let out = check_config(&config);
    assert!(
        out.status.success(),
        "the shipped kubeadm templates render: {}",
        text(&out).1
    );
    std::fs::write(&config, text_of(true)).unwrap();
    let out = check_config(&config);
    assert_eq!(out.status.code(), Some(64));
    let (_, stderr) = text(&out);
    assert!(
        stderr.contains("roles/worker/kubeadm-join.yaml.j2: renders invalid YAML"),
        "{stderr}"
    );
}

#[test]
fn check_config_accepts_good_files_and_names_problems() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        "state_dir = \"/var/lib/lacave\"\nserver_ip = \"192.168.1.10\"\n[http]\nlisten = \"0.0.0.0:8080\"\n",
    )
    .unwrap();
    let out = check_config(&good);
    assert!(out.status.success(), "{}", text(&out).1);

    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "state_dir = \"rel\"\n[http]\nlisten = \"nope\"\nport = 1\n",
    )
    .unwrap();
    let out = check_config(&bad);
    assert_eq!(out.status.code(), Some(64));
    let (_, stderr) = text(&out);
    assert!(
        stderr.contains(&format!(
            "{}: http.port: line 4: unknown field `port`",
            bad.display()
        )),
        "{stderr}"
    );
    // …and, in the same run, the bad values of the keys it could read.
    assert!(
        stderr.contains(&format!("{}: state_dir: rel is relative", bad.display()))
            && stderr.contains("http.listen: \"nope\" is not an address"),
        "{stderr}"
    );

    std::fs::write(&bad, "state_dir = \"rel\"\n[http]\nlisten = \"nope\"\n").unwrap();
    let out = check_config(&bad);
    assert_eq!(out.status.code(), Some(64));
    let (_, stderr) = text(&out);
    assert!(
        stderr.contains(&format!("{}: state_dir: rel is relative", bad.display())),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "{}: http.listen: \"nope\" is not an address",
            bad.display()
        )),
        "{stderr}"
    );

    // serve refuses the same file with the same exit code, and a missing file too.
    let out = serve(&bad);
    assert_eq!(out.status.code(), Some(64));
    let out = Command::new(lacave_bin())
        .args(["serve", "--config", "/nonexistent.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(
        text(&out)
            .1
            .contains("/nonexistent.toml: cannot read the file")
    );
}

#[test]
fn serve_notifies_systemd_and_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let notify_path = dir.path().join("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    let state = dir.path().join("state");
    let mut daemon =
        DaemonProcess::start_with_env(&state, &[("NOTIFY_SOCKET", notify_path.to_str().unwrap())]);
    let mut buf = [0u8; 512];
    let n = notify.recv(&mut buf).unwrap();
    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(msg.starts_with("READY=1\n"), "{msg}");
    assert!(msg.contains(&daemon.url), "{msg}");

    // Files holding secrets are private.
    let mode = std::fs::metadata(state.join("api-token"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let mode = std::fs::metadata(&state).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700);

    let status = daemon.terminate();
    assert!(status.success(), "exit status {status:?}");
    let n = notify.recv(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("STOPPING=1"));
    let log = daemon.log();
    assert!(
        log.contains("received SIGTERM") && log.contains("stopped"),
        "{log}"
    );
    assert!(
        log.contains("http listening"),
        "bound addresses are logged: {log}"
    );
}

#[test]
fn serve_refuses_a_token_file_others_can_read() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    // (A private state directory: an open one is refused before the token is looked at.)
    lacave_integration_tests::make_private(&state);
    let token = state.join("api-token");
    std::fs::write(&token, "0123456789abcdef0123456789abcdef\n").unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
    let config = dir.path().join("lacave.toml");
    std::fs::write(&config, lacave_integration_tests::test_config_text(&state)).unwrap();
    let out = serve(&config);
    assert_eq!(out.status.code(), Some(64));
    assert!(text(&out).1.contains("chmod 600"), "{}", text(&out).1);
}

#[test]
fn the_state_directory_and_registry_are_private() {
    let parent = tempfile::tempdir().unwrap();
    let state = parent.path().join("state");
    std::fs::create_dir(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = parent.path().join("lacave.toml");
    std::fs::write(&config, test_config_text(&state)).unwrap();
    // A state directory others can read is refused at start, as a bad configuration.
    let out = serve(&config);
    assert_eq!(out.status.code(), Some(64));
    let (_, stderr) = text(&out);
    assert!(
        stderr.contains("state_dir") && stderr.contains("chmod 700"),
        "{stderr}"
    );
    assert!(!state.join("registry").exists(), "nothing was written");
    // Private, it starts, and the registry it makes is private too.
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    {
        let _daemon = DaemonProcess::start(&state);
        assert_eq!(mode(&state.join("registry")), 0o700);
    }
    // A registry an older version left open is made private again.
    std::fs::set_permissions(
        state.join("registry"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let _daemon = DaemonProcess::start(&state);
    assert_eq!(mode(&state.join("registry")), 0o700);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_options_work_anywhere_and_an_empty_token_falls_back() {
    let d = TestDaemon::start().await;
    let url = d.url();
    let token_file = d.state.path().join("api-token");
    let token_file = token_file.to_str().unwrap();
    let run = |args: &[&str], env_token: Option<&str>| {
        let mut c = Command::new(lacave_bin());
        c.args(args)
            .env_remove("LACAVE_URL")
            .env_remove("LACAVE_CONFIG")
            .env_remove("LACAVE_TOKEN");
        if let Some(t) = env_token {
            c.env("LACAVE_TOKEN", t);
        }
        c.output().expect("lacave runs")
    };
    for args in [
        // Before the command, as the README shows them, and after it.
        &["--url", &url, "--token-file", token_file, "node", "list"][..],
        &["node", "--url", &url, "--token-file", token_file, "list"],
        &["node", "list", "--url", &url, "--token-file", token_file],
    ] {
        let out = run(args, None);
        assert!(out.status.success(), "{args:?}: {}", text(&out).1);
    }
    // An empty LACAVE_TOKEN is no token: the token file is used.
    let out = run(
        &["--url", &url, "--token-file", token_file, "node", "list"],
        Some(""),
    );
    assert!(out.status.success(), "{}", text(&out).1);
    // check-config without a file says what it needs.
    let out = run(&["check-config"], None);
    assert_eq!(out.status.code(), Some(64));
    assert!(text(&out).1.contains("--config"), "{}", text(&out).1);
}

#[test]
fn a_damaged_ssh_key_in_the_state_directory_stops_start_up() {
    let parent = tempfile::tempdir().unwrap();
    let state = parent.path().join("state");
    {
        let _daemon = DaemonProcess::start(&state);
    }
    let private = state.join("ssh/id_ed25519");
    let config = parent.path().join("lacave.toml");
    std::fs::write(&config, test_config_text(&state)).unwrap();
    let good = std::fs::read(&private).unwrap();
    std::fs::write(&private, b"-----BEGIN OPENSSH PRIVATE KEY-----\ngarbage\n").unwrap();
    let out = serve(&config);
    assert_eq!(out.status.code(), Some(64));
    let (_, stderr) = text(&out);
    assert!(
        stderr.contains("id_ed25519 is not a usable key"),
        "{stderr}"
    );
    // The right key with another key's public half beside it.
    std::fs::write(&private, good).unwrap();
    let other =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl x\n";
    std::fs::write(state.join("ssh/id_ed25519.pub"), other).unwrap();
    let out = serve(&config);
    assert_eq!(out.status.code(), Some(64));
    assert!(
        text(&out).1.contains("not the public half"),
        "{}",
        text(&out).1
    );
}

#[test]
fn an_address_in_use_names_its_key_and_exits_like_a_bad_configuration() {
    // Another program holds the port.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let parent = tempfile::tempdir().unwrap();
    let state = parent.path().join("state");
    let config = parent.path().join("lacave.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = \"{}\"\n[http]\nlisten = \"{addr}\"\n",
            state.display()
        ),
    )
    .unwrap();
    let out = serve(&config);
    // 64, which the unit's RestartPreventExitStatus= stops on: no restart loop.
    assert_eq!(out.status.code(), Some(64), "{}", text(&out).1);
    let (_, stderr) = text(&out);
    assert!(
        stderr.contains("http.listen") && stderr.contains("another program holds it"),
        "{stderr}"
    );
    drop(taken);
}

/// `lacave serve --log-format json`: every line the daemon writes is one JSON object with a
/// time, a level and a message, and its fields as JSON (what Loki, Vector or Fluent Bit take
/// without a parser of their own).
#[test]
fn serve_writes_json_lines_for_log_shippers() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    lacave_integration_tests::make_private(&state);
    let config = dir.path().join("lacave.toml");
    std::fs::write(&config, test_config_text(&state)).unwrap();
    let mut child = Command::new(lacave_bin())
        .args(["serve", "--log-format", "json", "--config"])
        .arg(&config)
        .env("LACAVE_LOG", "info")
        .env_remove("JOURNAL_STREAM")
        .env_remove("NOTIFY_SOCKET")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut lines = Vec::new();
    for line in stderr.lines().map_while(Result::ok) {
        let ready = line.contains("lacave is ready");
        lines.push(line);
        if ready || lines.len() > 500 {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        lines.iter().any(|l| l.contains("lacave is ready")),
        "{lines:#?}"
    );
    for line in &lines {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not one JSON object ({e}): {line}"));
        assert!(v["timestamp"].is_string(), "{line}");
        assert!(
            matches!(
                v["level"].as_str(),
                Some("INFO" | "WARN" | "ERROR" | "DEBUG")
            ),
            "{line}"
        );
        assert!(v["fields"]["message"].is_string(), "{line}");
    }
    let ready: serde_json::Value = serde_json::from_str(lines.last().unwrap()).unwrap();
    assert!(
        ready["fields"]["url"]
            .as_str()
            .is_some_and(|u| u.starts_with("http")),
        "the ready line's url is a field of its own: {ready}"
    );
    // A format it does not know is refused by name.
    let out = Command::new(lacave_bin())
        .args(["serve", "--log-format", "xml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("xml"));
}

/// `lacave --version` names the version and the commit it was built from, as `/metrics`
/// does.
#[test]
fn version_names_the_commit() {
    let out = Command::new(lacave_bin())
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let commit = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    let expected = match std::env::var("LACAVE_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
    {
        Some(c) => c,
        None => commit.unwrap_or_else(|| "unknown".into()),
    };
    assert_eq!(
        text.trim(),
        format!("lacave {} ({expected})", env!("CARGO_PKG_VERSION")),
        "{text}"
    );
}

/// Runs a shell (`bash`, `zsh` or `fish`) with `script`; `None` when the shell is not
/// installed (scripts/prereqs.sh installs all three).
fn shell(name: &str, script: &str) -> Option<Output> {
    Command::new(name).args(["-c", script]).output().ok()
}

#[test]
fn completions_complete_subcommands_in_real_shells() {
    let dir = tempfile::tempdir().unwrap();
    for sh in ["bash", "zsh", "fish"] {
        let out = Command::new(lacave_bin())
            .args(["completions", sh])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{sh}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::write(dir.path().join(sh), &out.stdout).unwrap();
    }
    let file = |sh: &str| dir.path().join(sh).display().to_string();
    // bash: the function bash-completion would call, asked what follows `lacave cluster u`.
    let out = shell(
        "bash",
        &format!(
            ". {}; COMP_WORDS=(lacave cluster u); COMP_CWORD=2; COMP_LINE='lacave cluster u'; COMP_POINT=${{#COMP_LINE}}; _lacave lacave u cluster; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            file("bash")
        ),
    )
    .expect("bash");
    let words = String::from_utf8_lossy(&out.stdout);
    assert!(
        words.lines().any(|w| w == "upgrade"),
        "bash: {words}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // fish: its own completion engine.
    let out = shell(
        "fish",
        &format!(
            "source {}; complete -C 'lacave cluster upgrade --'",
            file("fish")
        ),
    )
    .expect("fish (scripts/prereqs.sh installs it)");
    let words = String::from_utf8_lossy(&out.stdout);
    for flag in ["--to", "--dry-run", "--resume"] {
        assert!(
            words.lines().any(|l| l.split('\t').next() == Some(flag)),
            "fish: {flag} in {words}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // zsh: the script parses, and defines the completion function.
    let out = shell(
        "zsh",
        &format!(
            "autoload -U compinit && compinit -u -D && source {} && whence -w _lacave",
            file("zsh")
        ),
    )
    .expect("zsh (scripts/prereqs.sh installs it)");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("_lacave: function"),
        "zsh: {said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn man_pages_render_with_groff_one_per_command() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(lacave_bin())
        .args(["man", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pages: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    for page in [
        "lacave.1",
        "lacave-node-add.1",
        "lacave-cluster-upgrade.1",
        "lacave-serve.1",
    ] {
        assert!(pages.iter().any(|p| p == page), "{page} in {pages:?}");
    }
    assert!(
        !pages
            .iter()
            .any(|p| p.starts_with('.') || p.contains("help")),
        "{pages:?}"
    );
    // groff renders each without a warning (-ww: all of them; -k: through preconv, as man(1)
    // does for UTF-8 pages), with its synopsis and options.
    for page in &pages {
        let out = Command::new("groff")
            .args(["-k", "-man", "-Tutf8", "-ww"])
            .arg(dir.path().join(page))
            .output()
            .expect("groff");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && err.trim().is_empty(),
            "{page}: {err}"
        );
    }
    let out = Command::new("groff")
        .args(["-k", "-man", "-Tutf8"])
        .arg(dir.path().join("lacave-cluster-upgrade.1"))
        .output()
        .unwrap();
    // grotty's overstrike (bold `c\bc`, underline `_\bc`) taken out, as col -b would.
    let mut text = String::new();
    for c in String::from_utf8_lossy(&out.stdout).chars() {
        if c == '\u{8}' {
            text.pop();
        } else {
            text.push(c);
        }
    }
    assert!(
        text.contains("lacave cluster upgrade") || text.contains("lacave-cluster-upgrade"),
        "{text}"
    );
    assert!(
        text.contains("--dry-run") && text.contains("--resume") && text.contains("--to <TO>"),
        "{text}"
    );
    // Without --dir: lacave(1) on standard output, naming the version.
    let out = Command::new(lacave_bin()).arg("man").output().unwrap();
    let page = String::from_utf8_lossy(&out.stdout);
    assert!(
        page.starts_with(".ie") || page.contains(".TH lacave"),
        "{page}"
    );
    assert!(page.contains(env!("CARGO_PKG_VERSION")), "{page}");
}

/// `serve`'s text log is coloured on a terminal (a pseudo-terminal from script(1) here), and
/// not when NO_COLOR is set.
#[test]
fn serve_colours_its_log_on_a_terminal_unless_no_color() {
    let run = |no_color: bool| {
        let state = tempfile::tempdir().unwrap();
        let config = state.path().join("lacave.toml");
        std::fs::write(&config, test_config_text(&state.path().join("state"))).unwrap();
        let command = format!(
            "{}timeout -s INT 3 {} serve --config {}",
            if no_color { "NO_COLOR=1 " } else { "" },
            lacave_bin().display(),
            config.display()
        );
        let out = Command::new("script")
            .args(["-q", "-e", "-c", &command, "/dev/null"])
            .env_remove("NO_COLOR")
            .output()
            .expect("script(1) runs (util-linux)");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(text.contains("lacave is ready"), "{text}");
        text
    };
    assert!(run(false).contains("\u{1b}["), "coloured on a terminal");
    let plain = run(true);
    assert!(!plain.contains("\u{1b}["), "NO_COLOR: {plain:?}");
}

/// `--quiet` (before or after the command) keeps results and errors, drops confirmations.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiet_keeps_results_and_errors_only() {
    let d = TestDaemon::start().await;
    let (url, token) = (d.url(), d.token());
    let run = move |args: Vec<&'static str>| {
        let (url, token) = (url.clone(), token.clone());
        tokio::task::spawn_blocking(move || lacave(&url, &token, &args))
    };
    let add = |quiet: &'static str, n: &'static str, mac: &'static str| {
        vec![
            quiet,
            "node",
            "add",
            "--mac",
            mac,
            "--hostname",
            n,
            "--ip",
            "192.168.1.40",
            "--role",
            "worker",
        ]
    };
    let out = run(add("--quiet", "kube40", "52:54:00:00:40:01"))
        .await
        .unwrap();
    assert!(out.status.success(), "{:?}", text(&out));
    assert_eq!(text(&out), (String::new(), String::new()));
    let out = run(vec!["node", "list", "-q"]).await.unwrap();
    assert!(
        text(&out).0.contains("kube40"),
        "results stay: {:?}",
        text(&out)
    );
    // An error still says why, and exits 65.
    let out = run(add("-q", "kube41", "52:54:00:00:40:01")).await.unwrap();
    assert_eq!(out.status.code(), Some(65));
    assert!(text(&out).1.contains("mac"), "{:?}", text(&out));
    let out = run(vec!["node", "rm", "kube40", "--quiet"]).await.unwrap();
    assert!(
        out.status.success() && text(&out).0.is_empty(),
        "{:?}",
        text(&out)
    );
    let out = run(vec!["node", "rm", "kube40"]).await.unwrap();
    assert!(!out.status.success(), "already removed");
}

/// `node list --watch` prints the list, then again when a node is added (the event stream),
/// each print after a `--- <time>` line when not on a terminal; `--output json` gives one JSON
/// document per change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_follows_the_registry() {
    use std::io::Read;
    let d = TestDaemon::start().await;
    let (url, token) = (d.url(), d.token());
    for (args, added) in [
        (vec!["node", "list", "--watch"], "kube50"),
        (
            vec!["node", "list", "--watch", "--output", "json"],
            "kube51",
        ),
    ] {
        let mut child = Command::new(lacave_bin())
            .args(&args)
            .env("LACAVE_URL", &url)
            .env("LACAVE_TOKEN", &token)
            .env_remove("LACAVE_CONFIG")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdout = child.stdout.take().unwrap();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let reader = {
            let seen = seen.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = stdout.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    seen.lock()
                        .unwrap()
                        .push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            })
        };
        let wait = |what: &str, f: &dyn Fn(&str) -> bool| {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
            loop {
                if f(&seen.lock().unwrap()) {
                    return;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "{what}: {}",
                    seen.lock().unwrap()
                );
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        };
        let json = args.contains(&"json");
        wait("the first print", &|s| {
            if json {
                s.starts_with('[')
            } else {
                s.starts_with("--- ")
            }
        });
        let (url, token) = (url.clone(), token.clone());
        let mac = if json {
            "52:54:00:00:51:01"
        } else {
            "52:54:00:00:50:01"
        };
        let out = tokio::task::spawn_blocking(move || {
            lacave(
                &url,
                &token,
                &[
                    "node",
                    "add",
                    "--mac",
                    mac,
                    "--hostname",
                    added,
                    "--ip",
                    if json { "192.168.1.51" } else { "192.168.1.50" },
                    "--role",
                    "worker",
                ],
            )
        })
        .await
        .unwrap();
        assert!(out.status.success(), "{:?}", text(&out));
        wait("the print after the change", &|s| s.contains(added));
        let all = seen.lock().unwrap().clone();
        if json {
            // One JSON document per print: the last one lists the new node.
            let docs: Vec<serde_json::Value> = serde_json::Deserializer::from_str(&all)
                .into_iter()
                .map(|d| d.unwrap())
                .collect();
            assert!(docs.len() >= 2, "{all}");
            assert!(docs.last().unwrap().to_string().contains(added), "{all}");
        } else {
            assert!(all.matches("--- ").count() >= 2, "{all}");
            assert!(
                !all.contains('\u{1b}'),
                "no control sequence off a terminal: {all:?}"
            );
        }
        child.kill().unwrap();
        child.wait().unwrap();
        reader.join().unwrap();
    }
}

#[test]
fn edit_changes_only_what_it_is_given() {
    let state = tempfile::tempdir().unwrap();
    let daemon = DaemonProcess::start(state.path());
    let token = daemon.token(state.path());
    let run = |args: &[&str]| lacave(&daemon.url, &token, args);
    let out = run(&[
        "node",
        "add",
        "--mac",
        "52:54:00:dd:00:01",
        "--hostname",
        "ed01",
        "--ip",
        "192.168.1.71",
        "--role",
        "worker",
        "--label",
        "zone=a",
        "--disk",
        "/dev/vda",
    ]);
    assert!(out.status.success(), "{:?}", text(&out));
    let show = || -> serde_json::Value {
        let out = run(&["node", "show", "ed01", "--output", "json"]);
        let value: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        if value.get("node").is_some() {
            value["node"].clone()
        } else {
            value
        }
    };
    let out = run(&[
        "node",
        "edit",
        "ed01",
        "--ip",
        "192.168.1.72",
        "--label",
        "zone=b",
        "--label",
        "rack=r1",
    ]);
    assert!(out.status.success(), "{:?}", text(&out));
    let node = show();
    assert_eq!(node["ip"], "192.168.1.72", "{node}");
    assert_eq!(
        node["labels"],
        serde_json::json!({"zone": "b", "rack": "r1"})
    );
    assert_eq!(node["install_disk"], "/dev/vda", "untouched: {node}");
    assert_eq!(node["role"], "worker");
    let out = run(&["node", "edit", "ed01", "--no-labels", "--default-disk"]);
    assert!(out.status.success(), "{:?}", text(&out));
    let node = show();
    assert_eq!(node["labels"], serde_json::json!({}));
    assert_ne!(node["install_disk"], "/dev/vda", "{node}");
    // Nothing to change, and a bad value: each said, the field named.
    let out = run(&["node", "edit", "ed01"]);
    assert!(!out.status.success());
    assert!(
        text(&out).1.contains("nothing to change"),
        "{:?}",
        text(&out)
    );
    let out = run(&["node", "edit", "ed01", "--ip", "300.1.1.1"]);
    assert!(!out.status.success());
    assert!(text(&out).1.contains("ip"), "{:?}", text(&out));
}

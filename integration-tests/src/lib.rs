//! Shared harness for the end-to-end tests: a daemon started in-process on port 0 with a
//! temporary state directory (the same `server::start` that `lacave serve` runs), and the real
//! `lacave` binary started as a child process for crash, signal and CLI tests. Everything
//! cleans up on drop.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub mod ipmi;
pub mod k8slab;
pub mod netns;
pub mod qemu;
pub mod release;
pub mod webdriver;

use lacave::api::CreateNodeRequest;
use lacave::cli::{Client, Target};
use lacave::config::Config;
use lacave::server::{self, Daemon};

/// A minimal configuration on loopback, port 0, state in `state_dir`.
pub fn test_config_text(state_dir: &Path) -> String {
    test_config_with(state_dir, "")
}

/// The minimal configuration plus `sections` (whole TOML sections, e.g. an `[api]` listener).
pub fn test_config_with(state_dir: &Path, sections: &str) -> String {
    format!(
        "state_dir = \"{}\"\n[http]\nlisten = \"127.0.0.1:0\"\n{sections}",
        state_dir.display()
    )
}

/// An HTTPS API on its own loopback port.
pub const HTTPS_API: &str = "[api]\nlisten = \"127.0.0.1:0\"\ntls = true\n";

/// A daemon running inside the test process.
pub struct TestDaemon {
    pub daemon: Option<Daemon>,
    pub state: tempfile::TempDir,
    sections: String,
}

impl TestDaemon {
    pub async fn start() -> TestDaemon {
        Self::start_with("").await
    }

    /// Starts with extra configuration sections.
    pub async fn start_with(sections: &str) -> TestDaemon {
        Self::start_on(
            tempfile::tempdir().expect("a temporary directory"),
            sections,
        )
        .await
    }

    /// Starts on a state directory prepared beforehand (e.g. with an imported CA).
    pub async fn start_on(state: tempfile::TempDir, sections: &str) -> TestDaemon {
        let daemon = start_in(state.path(), sections).await;
        TestDaemon {
            daemon: Some(daemon),
            state,
            sections: sections.to_string(),
        }
    }

    /// The base URL of the API (HTTPS when configured so).
    pub fn api_url(&self) -> String {
        self.daemon().api_url()
    }

    /// The cluster CA bundle, as the daemon wrote it.
    pub fn ca_pem(&self) -> Vec<u8> {
        std::fs::read(self.state.path().join("pki/ca-chain.pem")).expect("the CA exists")
    }

    pub fn daemon(&self) -> &Daemon {
        self.daemon.as_ref().expect("the daemon is running")
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.daemon().http_addr())
    }

    pub fn token(&self) -> String {
        self.daemon().api_token().to_string()
    }

    /// An API client trusting the cluster CA.
    pub fn client(&self) -> Client {
        Client::new(Target {
            url: self.api_url(),
            token: self.token(),
            token_source: "test".into(),
            ca_pem: Some(self.ca_pem()),
        })
        .expect("the client builds")
    }

    /// Stops the daemon and starts a new one on the same state directory.
    pub async fn restart(&mut self) {
        self.stop().await;
        self.daemon = Some(start_in(self.state.path(), &self.sections).await);
    }

    pub async fn stop(&mut self) {
        if let Some(d) = self.daemon.take() {
            d.shutdown(Duration::from_secs(5)).await;
        }
    }
}

/// Makes `state_dir` private (0700) if it exists, as an operator must: the daemon refuses a
/// state directory others can read, and temporary directories are not always private.
pub fn make_private(state_dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if state_dir.is_dir() {
        std::fs::set_permissions(state_dir, std::fs::Permissions::from_mode(0o700))
            .expect("the state directory's mode can be set");
    }
}

/// Starts the daemon's real start-up path on a state directory.
pub async fn start_in(state_dir: &Path, sections: &str) -> Daemon {
    make_private(state_dir);
    let config = Config::from_toml(
        &test_config_with(state_dir, sections),
        Path::new("test.toml"),
    )
    .expect("the test configuration is valid");
    server::start(config).await.expect("the daemon starts")
}

/// A TCP port free on the host's loopback now (another program may take it before use).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A registration request for node number `i`, unique in MAC, hostname and IP.
pub fn node_request(i: u32) -> CreateNodeRequest {
    let b = i.to_be_bytes();
    let ip = (i + 1).to_be_bytes();
    CreateNodeRequest {
        mac: format!("52:54:{:02x}:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2], b[3]),
        hostname: format!("node{i}"),
        ip: format!("10.{}.{}.{}", ip[1], ip[2], ip[3]),
        role: if i.is_multiple_of(3) {
            "control-plane"
        } else {
            "worker"
        }
        .into(),
        labels: Default::default(),
        install_disk: None,
        boot_file: None,
    }
}

/// The `lacave` binary of this workspace, built once per test run if it is missing or stale
/// (or the one `LACAVE_BIN` names).
pub fn lacave_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        // A benchmark runs a release build it names.
        if let Some(bin) = std::env::var_os("LACAVE_BIN").filter(|b| !b.is_empty()) {
            return PathBuf::from(bin);
        }
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--quiet", "-p", "lacave", "--bin", "lacave"])
            .current_dir(manifest.parent().expect("the workspace root"))
            .status()
            .expect("cargo runs");
        assert!(status.success(), "building the lacave binary failed");
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| manifest.parent().unwrap().join("target"));
        let bin = target.join("debug").join("lacave");
        assert!(bin.exists(), "{} was not built", bin.display());
        bin
    })
}

/// The real daemon as a child process, with a config file on port 0.
pub struct DaemonProcess {
    pub child: Child,
    pub url: String,
    pub config_path: PathBuf,
    stderr_log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl DaemonProcess {
    /// Starts `lacave serve --config` on `state_dir` and waits until it reports ready.
    pub fn start(state_dir: &Path) -> DaemonProcess {
        Self::start_with_env(state_dir, &[])
    }

    pub fn start_with_env(state_dir: &Path, env: &[(&str, &str)]) -> DaemonProcess {
        Self::start_custom(state_dir, &test_config_text(state_dir), None, env)
    }

    /// Starts with the given configuration text, inside `netns` when given.
    pub fn start_custom(
        state_dir: &Path,
        config_text: &str,
        netns: Option<&netns::Netns>,
        env: &[(&str, &str)],
    ) -> DaemonProcess {
        let cmd = match netns {
            Some(ns) => ns.command(lacave_bin()),
            None => Command::new(lacave_bin()),
        };
        Self::start_command(state_dir, config_text, cmd, env)
    }

    /// Starts with an open-files limit of `nofile` (soft and hard), as a unit's `LimitNOFILE=`.
    pub fn start_with_nofile(state_dir: &Path, config_text: &str, nofile: u64) -> DaemonProcess {
        let mut cmd = Command::new("prlimit");
        cmd.arg(format!("--nofile={nofile}:{nofile}"))
            .arg(lacave_bin());
        Self::start_command(state_dir, config_text, cmd, &[])
    }

    /// Starts `cmd` (the lacave binary, or a wrapper running it) with `serve --config`.
    fn start_command(
        state_dir: &Path,
        config_text: &str,
        mut cmd: Command,
        env: &[(&str, &str)],
    ) -> DaemonProcess {
        make_private(state_dir);
        let config_path = state_dir.with_extension("toml");
        std::fs::write(&config_path, config_text).expect("config written");
        cmd.args(["serve", "--config"])
            .arg(&config_path)
            .env("LACAVE_LOG", "info")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("JOURNAL_STREAM")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("lacave serve starts");
        let stderr = child.stderr.take().expect("stderr is piped");
        let (tx, rx) = std::sync::mpsc::channel();
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log_writer = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("url=").nth(1)
                    && line.contains("lacave is ready")
                {
                    let _ = tx.send(rest.split_whitespace().next().unwrap_or("").to_string());
                }
                log_writer.lock().unwrap().push(line);
            }
        });
        let url = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| {
                let _ = child.kill();
                panic!(
                    "lacave did not report ready; its log:\n{}",
                    log.lock().unwrap().join("\n")
                )
            });
        DaemonProcess {
            child,
            url,
            config_path,
            stderr_log: log,
        }
    }

    pub fn log(&self) -> String {
        self.stderr_log.lock().unwrap().join("\n")
    }

    /// The address a listener reported at start: the `addr=` of the log line saying `what`.
    pub fn listening(&self, what: &str) -> std::net::SocketAddr {
        let log = self.log();
        let line = log
            .lines()
            .find(|l| l.contains(what))
            .unwrap_or_else(|| panic!("no {what:?} line in the log:\n{log}"));
        line.split_whitespace()
            .find_map(|w| w.strip_prefix("addr="))
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no address in {line:?}"))
    }

    pub fn token(&self, state_dir: &Path) -> String {
        std::fs::read_to_string(state_dir.join("api-token"))
            .expect("the token file exists")
            .trim()
            .to_string()
    }

    /// SIGKILL: no chance to flush or clean up.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill runs");
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait works") {
                return status;
            }
            assert!(Instant::now() < deadline, "lacave ignored SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for DaemonProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.config_path);
    }
}

/// xorshift64*: a deterministic generator for mutation tests, so that a failure reproduces.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    /// Overwrites one to eight random bytes of `b` (the fuzz tests' commonest mutation).
    pub fn scramble(&mut self, b: &mut [u8]) {
        for _ in 0..=self.below(8) {
            let i = self.below(b.len());
            if let Some(byte) = b.get_mut(i) {
                *byte = self.next_u64() as u8;
            }
        }
    }
}

/// Runs the `lacave` CLI inside a namespace against a daemon at `url`, with the token from
/// `state_dir`; panics with its error output when it fails.
pub fn lacave_in(ns: &netns::Netns, url: &str, state_dir: &Path, args: &[&str]) -> String {
    let token =
        std::fs::read_to_string(state_dir.join("api-token")).expect("the token file exists");
    let out = ns
        .command(lacave_bin())
        .args(args)
        .env("LACAVE_URL", url)
        .env("LACAVE_TOKEN", token.trim())
        .output()
        .expect("lacave runs");
    assert!(
        out.status.success(),
        "lacave {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The `p` quantile (0.0–1.0) of sorted durations, for the load generators.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

/// A tmpfs of `size` (`"6m"`, `"64m"`) for the full-disk tests, unmounted on drop. Needs root.
pub struct SmallDisk(tempfile::TempDir);

impl SmallDisk {
    pub fn new(size: &str) -> SmallDisk {
        netns::require_root("a full-disk test (mount)");
        let dir = tempfile::tempdir().unwrap();
        let ok = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir.path())
            .status()
            .unwrap()
            .success();
        assert!(ok, "mounting a tmpfs");
        SmallDisk(dir)
    }

    pub fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.0.path()).status();
    }
}

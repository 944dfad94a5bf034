//! Floods from the LAN against the real daemon under an open-files limit (issue #14, item 1):
//! idle and trickling connections on every TCP listener (HTTP, HTTPS API, mirror, DNS), TFTP
//! read requests nobody acknowledges, and a mirror reader that stops reading. During the flood
//! `/healthz` (curl), the API (curl over TLS), a TFTP fetch (tftp-hpa) and a DNS query over
//! TCP (dig) must all still succeed, and the daemon's metrics must show what it shed.
//!
//! Run twice: at the unit's `LimitNOFILE=16384`, and at 1024 (a shell's default soft limit,
//! the red team's setting), where the daemon scales its caps down to fit. Everything stays on
//! loopback; the flood comes from 127.0.0.2, the probes from 127.0.0.1.

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use lacave_integration_tests::DaemonProcess;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const FLOODER: [u8; 4] = [127, 0, 0, 2];

fn config(state: &Path, root: &Path) -> String {
    format!(
        r#"state_dir = "{state}"
[http]
listen = "127.0.0.1:0"
mirror_listen = "127.0.0.3:0"
[api]
listen = "127.0.0.1:0"
tls = true
[dns]
listen = "127.0.0.1:0"
[tftp]
listen = "127.0.0.1:0"
root = "{root}"
[flatcar]
mirror_dir = "{root}"
"#,
        state = state.display(),
        root = root.display()
    )
}

/// A TCP connection from the flooding address.
async fn connect_from_flooder(to: SocketAddr) -> Option<TcpStream> {
    let socket = TcpSocket::new_v4().ok()?;
    socket.bind(SocketAddr::from((FLOODER, 0))).ok()?;
    tokio::time::timeout(Duration::from_secs(2), socket.connect(to))
        .await
        .ok()?
        .ok()
}

/// Opens `n` connections that send `first` (maybe nothing) and then one byte a second.
async fn flood(to: SocketAddr, n: usize, first: &'static [u8], trickle: bool) -> Vec<TcpStream> {
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        if let Some(mut s) = connect_from_flooder(to).await {
            let _ = s.write_all(first).await;
            held.push(s);
        }
    }
    if trickle {
        // The trickle runs in the background on connections of its own.
        let mut more = Vec::new();
        for _ in 0..n {
            if let Some(s) = connect_from_flooder(to).await {
                more.push(s);
            }
        }
        tokio::spawn(async move {
            for _ in 0..40 {
                for s in more.iter_mut() {
                    let _ = s.write_all(b"X").await;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }
    held
}

fn run(cmd: &str, args: &[&str]) -> std::process::Output {
    Command::new("timeout")
        .arg("10")
        .arg(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd} runs: {e}"))
}

/// Every service answers a real client, each within a few seconds.
fn probe(d: &DaemonProcess, state: &Path, when: &str) {
    let http = d.listening("http listening");
    let api = d.listening("API listening");
    let dns = d.listening("DNS listening");
    let tftp = d.listening("TFTP listening");

    let started = Instant::now();
    let out = run(
        "curl",
        &[
            "-sS",
            "--fail",
            "--max-time",
            "5",
            &format!("http://{http}/healthz"),
        ],
    );
    assert!(
        out.status.success(),
        "{when}: /healthz failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let ca = state.join("pki/ca-chain.pem");
    let auth = format!("Authorization: Bearer {}", d.token(state));
    let out = run(
        "curl",
        &[
            "-sS",
            "--fail",
            "--max-time",
            "5",
            "--cacert",
            ca.to_str().unwrap(),
            "-H",
            &auth,
            &format!("https://{api}/api/v1/nodes"),
        ],
    );
    assert!(
        out.status.success(),
        "{when}: the HTTPS API failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = run(
        "dig",
        &[
            "+tcp",
            "+time=5",
            "+tries=1",
            &format!("@{}", dns.ip()),
            "-p",
            &dns.port().to_string(),
            "lacave",
            "SOA",
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("status: NOERROR"),
        "{when}: DNS over TCP failed: {text}"
    );

    let dir = tempfile::tempdir().unwrap();
    let got = dir.path().join("ipxe.efi");
    let out = Command::new("timeout")
        .args(["10", "tftp", "-m", "binary", &tftp.ip().to_string()])
        .arg(tftp.port().to_string())
        .args(["-c", "get", "ipxe.efi"])
        .arg(&got)
        .output()
        .expect("tftp-hpa runs");
    let len = std::fs::metadata(&got).map(|m| m.len()).unwrap_or(0);
    assert!(
        out.status.success() && len == 256 * 1024,
        "{when}: the TFTP fetch failed ({len} bytes): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{when}: every service answered in {:?}", started.elapsed());
}

fn metric(d: &DaemonProcess, name_and_labels: &str) -> u64 {
    let http = d.listening("http listening");
    let out = run(
        "curl",
        &["-sS", "--max-time", "5", &format!("http://{http}/metrics")],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix(name_and_labels))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

async fn flood_and_probe(nofile: u64) {
    let state = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    std::fs::write(root.path().join("ipxe.efi"), vec![7u8; 256 * 1024]).unwrap();
    std::fs::write(root.path().join("big.img"), vec![9u8; 32 << 20]).unwrap();
    let d =
        DaemonProcess::start_with_nofile(state.path(), &config(state.path(), root.path()), nofile);
    let http = d.listening("http listening");
    let api = d.listening("API listening");
    let mirror = d.listening("image mirror listening");
    let dns = d.listening("DNS listening");
    let tftp = d.listening("TFTP listening");
    probe(&d, state.path(), &format!("[{nofile}] before the flood"));

    // A mirror reader that asks for 32 MB and never reads: it must not hold its slot and
    // file for ever.
    let mut stalled = {
        let s = TcpSocket::new_v4().unwrap();
        s.set_recv_buffer_size(4096).unwrap();
        s.bind(SocketAddr::from((FLOODER, 0))).unwrap();
        let mut s = s.connect(mirror).await.unwrap();
        s.write_all(b"GET /mirror/big.img HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        s
    };
    let stalled_at = Instant::now();

    // More connections than the default caps (HTTP and mirror 1024, API 256, DNS 128), idle
    // and trickling a request head; more TFTP requests than its 512 transfers.
    let started = Instant::now();
    let mut held = Vec::new();
    held.extend(flood(http, 1300, b"", false).await);
    held.extend(flood(http, 700, b"GET /healthz HTTP/1.1\r\nHo", true).await);
    held.extend(flood(api, 400, b"", false).await);
    held.extend(flood(mirror, 1100, b"GET /mirror/", false).await);
    held.extend(flood(dns, 300, b"\x00", false).await);
    let mut rrq_sockets = Vec::new();
    for i in 0..600 {
        let s = UdpSocket::bind(SocketAddr::from((FLOODER, 0))).unwrap();
        let file = if i % 2 == 0 { "ipxe.efi" } else { "big.img" };
        let mut rrq = vec![0, 1];
        rrq.extend_from_slice(file.as_bytes());
        rrq.extend_from_slice(b"\0octet\0timeout\x00255\0");
        s.send_to(&rrq, tftp).unwrap();
        rrq_sockets.push(s);
    }
    eprintln!(
        "[{nofile}] flood of {} TCP connections and {} TFTP requests opened in {:?}",
        held.len(),
        rrq_sockets.len(),
        started.elapsed()
    );

    probe(&d, state.path(), &format!("[{nofile}] during the flood"));
    // Past the 10 s request-head deadline, with the trickle still going.
    tokio::time::sleep(Duration::from_secs(11)).await;
    probe(&d, state.path(), &format!("[{nofile}] 11 s into the flood"));

    // The daemon shed the flood, and says so.
    let evicted = metric(
        &d,
        "lacave_connections_dropped_total{listener=\"http\",reason=\"evicted\"}",
    );
    let timeouts = metric(
        &d,
        "lacave_connections_dropped_total{listener=\"http\",reason=\"timeout\"}",
    );
    let busy = metric(&d, "lacave_tftp_transfers_total{result=\"busy\"}");
    eprintln!("[{nofile}] http evicted {evicted}, http timeouts {timeouts}, tftp busy {busy}");
    assert!(evicted > 0, "connections beyond the cap evict idle ones");
    assert!(timeouts > 0, "trickled heads time out");
    assert!(
        busy > 0,
        "TFTP requests beyond one client's share are refused"
    );

    // Held connections were closed by the daemon (idle past the deadline, or evicted).
    let mut closed = 0;
    for s in held.iter_mut().take(200) {
        let mut b = [0u8; 64];
        if let Ok(Ok(0) | Err(_)) =
            tokio::time::timeout(Duration::from_millis(20), s.read(&mut b)).await
        {
            closed += 1;
        }
    }
    assert!(
        closed >= 190,
        "only {closed} of 200 idle connections were closed"
    );

    // The mirror reader that stopped reading is cut off after the write deadline (30 s).
    let left = Duration::from_secs(35).saturating_sub(stalled_at.elapsed());
    tokio::time::sleep(left).await;
    let mut sink = vec![0u8; 1 << 20];
    let mut total = 0usize;
    loop {
        match tokio::time::timeout(Duration::from_secs(5), stalled.read(&mut sink)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => total += n,
            Err(_) => panic!("the stalled mirror reader is still connected after 40 s"),
        }
    }
    assert!(
        total < 32 << 20,
        "the stalled reader got the whole file: it was not cut off"
    );
    assert!(
        metric(
            &d,
            "lacave_connections_dropped_total{listener=\"mirror\",reason=\"timeout\"}"
        ) > 0
    );

    drop(held);
    drop(rrq_sockets);
    probe(&d, state.path(), &format!("[{nofile}] after the flood"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_service_answers_during_a_flood_under_the_units_file_limit() {
    // The flood needs about 6,000 sockets of its own: soft limit up to the hard one.
    let me = std::process::id().to_string();
    let hard = Command::new("prlimit")
        .args([
            "--pid",
            &me,
            "--nofile",
            "--raw",
            "--noheadings",
            "--output=HARD",
        ])
        .output()
        .expect("prlimit runs");
    let hard = String::from_utf8_lossy(&hard.stdout).trim().to_string();
    let raised = Command::new("prlimit")
        .args(["--pid", &me, &format!("--nofile={hard}:{hard}")])
        .status()
        .expect("prlimit runs");
    assert!(
        raised.success(),
        "raising the test's own open-files limit to {hard}"
    );
    let hard: u64 = hard.parse().unwrap_or(u64::MAX);
    assert!(
        hard >= 16384,
        "the hard open-files limit ({hard}) is below the unit's 16384"
    );
    flood_and_probe(16384).await;
    flood_and_probe(1024).await;
}

/// Issue #31, item 1: 300 keep-alive HTTPS connections from one address POST wrong tokens to
/// the console's login form without pause. A wrong token costs its source, not the listener:
/// the source is throttled (429), and meanwhile the operator's `lacave node list` and a
/// console login from another address each succeed within a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_flood_costs_the_attacker_not_the_operator() {
    let state = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    let d =
        DaemonProcess::start_with_nofile(state.path(), &config(state.path(), root.path()), 16384);
    let api = d.listening("API listening");
    let base = format!("https://{api}");
    let ca_path = state.path().join("pki/ca-chain.pem");
    let ca = reqwest::Certificate::from_pem(&std::fs::read(&ca_path).unwrap()).unwrap();
    let token = d.token(state.path());

    let stop = tokio_util::sync::CancellationToken::new();
    let statuses = std::sync::Arc::new(std::sync::Mutex::new(
        std::collections::BTreeMap::<u16, u64>::new(),
    ));
    let mut attackers = Vec::new();
    for i in 0..300 {
        let client = reqwest::Client::builder()
            .add_root_certificate(ca.clone())
            .local_address(std::net::IpAddr::from(FLOODER))
            .pool_max_idle_per_host(1)
            .build()
            .unwrap();
        let (base, stop, statuses) = (base.clone(), stop.clone(), statuses.clone());
        attackers.push(tokio::spawn(async move {
            while !stop.is_cancelled() {
                let sent = client
                    .post(format!("{base}/console/login"))
                    .header("Origin", &base)
                    .header("Content-Type", "application/x-www-form-urlencoded")
                    .body(format!("token=guess-{i}-not-the-token"))
                    .timeout(Duration::from_secs(5))
                    .send()
                    .await;
                let code = sent.map(|r| r.status().as_u16()).unwrap_or(0);
                *statuses.lock().unwrap().entry(code).or_default() += 1;
            }
        }));
    }
    // Let the flood reach every connection.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let operator = reqwest::Client::builder()
        .add_root_certificate(ca)
        .local_address(std::net::IpAddr::from([127, 0, 0, 1]))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let mut worst = Duration::ZERO;
    for round in 0..5 {
        // The CLI, a fresh process and a fresh TLS connection each time.
        let started = Instant::now();
        let out = tokio::task::spawn_blocking({
            let (url, ca_path, token) = (base.clone(), ca_path.clone(), token.clone());
            move || {
                Command::new(lacave_integration_tests::lacave_bin())
                    .args(["node", "list", "--url", &url, "--ca-file"])
                    .arg(&ca_path)
                    .env("LACAVE_TOKEN", &token)
                    .output()
                    .unwrap()
            }
        })
        .await
        .unwrap();
        let cli = started.elapsed();
        assert!(
            out.status.success(),
            "round {round}: lacave node list failed during the flood: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // A console login with the right token, on a new connection.
        let started = Instant::now();
        let r = operator
            .post(format!("{base}/console/login"))
            .header("Origin", &base)
            .header("Content-Type", "application/x-www-form-urlencoded")
            .header("Connection", "close")
            .body(format!("token={token}"))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .expect("the operator's login gets an answer");
        let login = started.elapsed();
        assert_eq!(r.status(), 303, "round {round}: the operator logs in");
        assert!(r.headers().get("set-cookie").is_some());
        eprintln!("login flood, round {round}: node list {cli:?}, console login {login:?}");
        worst = worst.max(cli).max(login);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    stop.cancel();
    for a in attackers {
        let _ = a.await;
    }
    let statuses = statuses.lock().unwrap().clone();
    eprintln!(
        "login flood: the attacker's answers by status {statuses:?}; operator's worst {worst:?}"
    );
    assert!(
        worst < Duration::from_secs(1),
        "the operator waited {worst:?} during the flood"
    );
    // The attacker got 10 refusals and then only 429s.
    let refused = statuses.get(&401).copied().unwrap_or(0);
    let throttled = statuses.get(&429).copied().unwrap_or(0);
    assert_eq!(
        refused, 10,
        "only the window's 10 guesses were looked at: {statuses:?}"
    );
    assert!(throttled > 1000, "the flood was throttled: {statuses:?}");
    assert_eq!(
        metric(
            &d,
            "lacave_auth_failures_total{surface=\"console\",result=\"refused\"}"
        ),
        10
    );
    assert!(
        metric(
            &d,
            "lacave_auth_failures_total{surface=\"console\",result=\"throttled\"}"
        ) >= throttled
    );
    // Logged once when the source was blocked, not once per guess.
    let log = d.log();
    assert_eq!(
        log.matches("too many wrong API tokens").count(),
        1,
        "{}",
        &log[log.len().saturating_sub(3000)..]
    );
    assert!(log.matches("a wrong API token").count() <= 2);
}

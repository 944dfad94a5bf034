//! The web console in a real browser: headless Chromium (Debian's `chromium`, driven through
//! `chromedriver`) against the real daemon (`lacave serve`), both inside a "server" network
//! namespace linked by veth to a "node" namespace that plays the machine (10.72.0.0/24,
//! nowhere else). The machine's requests (iPXE script, Ignition, callbacks) come from the
//! node namespace, so the page sees what a real boot makes happen.
//!
//! Screenshots of the node table and of a node's page are kept in
//! `target/console-artifacts/` (and copied into `docs/src/images/` by `LACAVE_UPDATE_SCREENSHOTS=1`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use lacave_integration_tests::netns::{Netns, require_root};
use lacave_integration_tests::webdriver::Browser;
use lacave_integration_tests::{DaemonProcess, lacave_bin};
use serde_json::{Value, json};

const SERVER: &str = "10.72.0.1";
const BASE: &str = "http://10.72.0.1:8080";
/// The console's listener: the API's own, on the server namespace's loopback (where the
/// browser runs), never on the machines' listener.
const CONSOLE: &str = "http://127.0.0.1:8443";
const MAC: &str = "52:54:00:72:00:01";
const SEG: &str = "52-54-00-72-00-01";
const WAIT: Duration = Duration::from_secs(20);

struct Lab {
    srv: Netns,
    node: Netns,
    node_if: String,
    work: tempfile::TempDir,
    config: String,
    daemon: Option<DaemonProcess>,
}

impl Lab {
    fn new() -> Lab {
        require_root("the web console's browser tests");
        let srv = Netns::new("cons");
        let node = Netns::new("conn");
        let (srv_if, node_if) =
            srv.link_machine(&format!("{SERVER}/24"), &node, "10.72.0.50/24", MAC);
        let work = tempfile::tempdir().unwrap();
        let mirror = work.path().join("mirror/stable/amd64-usr");
        std::fs::create_dir_all(mirror.join("4081.2.0")).unwrap();
        std::fs::write(
            mirror.join("4081.2.0/version.txt"),
            "FLATCAR_VERSION=4081.2.0\n",
        )
        .unwrap();
        std::os::unix::fs::symlink("4081.2.0", mirror.join("current")).unwrap();
        let config = format!(
            r#"state_dir = "{state}"
server_ip = "{SERVER}"
[http]
listen = "{SERVER}:8080"
[api]
listen = "127.0.0.1:8443"
tls = false
[flatcar]
mirror_dir = "{mirror}"
node_prefix = 24
[dhcp]
mode = "full"
interface = "{srv_if}"
subnet = "10.72.0.0/24"
pool = "10.72.0.100-10.72.0.101"
unknown_clients = "discover"
"#,
            state = work.path().join("state").display(),
            mirror = work.path().join("mirror").display(),
        );
        let mut lab = Lab {
            srv,
            node,
            node_if,
            work,
            config,
            daemon: None,
        };
        lab.start_daemon();
        lab
    }

    fn state(&self) -> PathBuf {
        self.work.path().join("state")
    }

    fn start_daemon(&mut self) {
        self.daemon = Some(DaemonProcess::start_custom(
            &self.state(),
            &self.config,
            Some(&self.srv),
            &[],
        ));
    }

    fn token(&self) -> String {
        std::fs::read_to_string(self.state().join("api-token"))
            .unwrap()
            .trim()
            .to_string()
    }

    /// The machine's firmware asks for an address (busybox udhcpc as a UEFI x64 PXE client);
    /// the address is not configured (the script does nothing).
    fn dhcp(&self) {
        let script = self.work.path().join("udhcpc.sh");
        std::fs::write(&script, "#!/bin/sh\nexit 0\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let out = self
            .node
            .command("timeout")
            .args(["20", "busybox", "udhcpc", "-f", "-q", "-n", "-t", "3"])
            .args(["-V", "PXEClient:Arch:00007:UNDI:003016", "-x", "0x5d:0007"])
            .args(["-i", &self.node_if, "-s"])
            .arg(&script)
            .output()
            .expect("busybox runs");
        assert!(
            out.status.success(),
            "udhcpc: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The installed machine's callback `event` with its secret (and `body`, the host key
    /// for `booted`), from the node namespace: accepted.
    fn callback(&self, secret: &str, event: &str, body: &str) {
        let bearer = format!("Authorization: Bearer {secret}");
        let url = format!("{BASE}/callback/{SEG}/{event}");
        let (code, answer) = curl(
            &self.node,
            &["-X", "POST", "-H", &bearer, "--data-binary", body, &url],
        );
        assert_eq!(code, 204, "{event}: {answer}");
    }

    /// The operator's API, with the token, from the server namespace (curl).
    fn api(&self, method: &str, path: &str, body: Option<Value>) -> (u16, String) {
        let auth = format!("Authorization: Bearer {}", self.token());
        let mut args = vec!["-X", method, "-H", &auth];
        let body = body.map(|b| b.to_string());
        if let Some(b) = &body {
            args.extend(["-H", "Content-Type: application/json", "--data-binary", b]);
        }
        let url = format!("{CONSOLE}{path}");
        args.push(&url);
        curl(&self.srv, &args)
    }
}

/// curl from a namespace: (status, body).
fn curl(ns: &Netns, args: &[&str]) -> (u16, String) {
    let out = ns
        .command("curl")
        .args(["-sS", "-o", "-", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("curl runs");
    let mut body = String::from_utf8_lossy(&out.stdout).into_owned();
    let split = body.rfind('\n').unwrap();
    let code = body[split + 1..].parse().unwrap_or(0);
    body.truncate(split);
    (code, body)
}

fn artifacts() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/console-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn keep_screenshot(name: &str, png: &[u8]) {
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    std::fs::write(artifacts().join(name), png).unwrap();
    if std::env::var_os("LACAVE_UPDATE_SCREENSHOTS").is_some() {
        let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/src/images");
        std::fs::create_dir_all(&docs).unwrap();
        std::fs::write(docs.join(name), png).unwrap();
    }
}

/// The callback secret a final config carries (in a base64 data URL).
fn callback_secret(config: &str) -> String {
    use base64::Engine;
    let config: Value = serde_json::from_str(config).unwrap();
    let file = config["storage"]["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"] == "/etc/lacave/callback.env")
        .expect("the callback secret's file");
    let source = file["contents"]["source"].as_str().unwrap();
    let data = source.split_once(',').unwrap().1;
    let text = base64::engine::general_purpose::STANDARD
        .decode(data)
        .unwrap();
    String::from_utf8(text)
        .unwrap()
        .trim()
        .trim_start_matches("LACAVE_CALLBACK_SECRET=")
        .to_string()
}

/// Waits until the console has loaded (its table drawn, the live stream asked for).
async fn wait_ready(b: &Browser) {
    b.wait_for(
        "the console",
        "return document.body.dataset.ready === 'true';",
        WAIT,
    )
    .await;
}

async fn wait_state(b: &Browser, mac: &str, state: &str) {
    let script = format!(
        "const b = document.querySelector('#nodes tr[data-mac=\"{mac}\"] .badge'); return b && b.dataset.state === '{state}';"
    );
    b.wait_for(&format!("{mac} shown {state}"), &script, WAIT)
        .await;
}

/// Every event number the API's histories hold above `after`, in order.
fn history_seqs(lab: &Lab, after: u64) -> Vec<u64> {
    let (_, list) = lab.api("GET", "/api/v1/nodes", None);
    let nodes: Vec<Value> = serde_json::from_str(&list).unwrap();
    let mut seqs = Vec::new();
    for n in nodes {
        let (_, events) = lab.api(
            "GET",
            &format!("/api/v1/nodes/{}/events", n["mac"].as_str().unwrap()),
            None,
        );
        let events: Vec<Value> = serde_json::from_str(&events).unwrap();
        seqs.extend(
            events
                .iter()
                .map(|e| e["seq"].as_u64().unwrap())
                .filter(|s| *s > after),
        );
    }
    seqs.sort_unstable();
    seqs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_watches_a_machine_come_up_in_the_console() {
    let _ = lacave_bin();
    let mut lab = Lab::new();

    // Nothing of the console answers without a session, and nothing of it is on the
    // machines' listener.
    for (path, expected) in [
        ("/console/", 303),
        ("/console/app.js", 401),
        ("/console/session", 401),
        ("/api/v1/events", 401),
        ("/api/v1/nodes", 401),
        ("/api/v1/status", 401),
    ] {
        let (code, _) = curl(&lab.srv, &[&format!("{CONSOLE}{path}")]);
        assert_eq!(code, expected, "{path} without a session");
    }
    let (code, _) = curl(
        &lab.srv,
        &["-X", "POST", &format!("{CONSOLE}/console/logout")],
    );
    assert_eq!(code, 401, "logout without a session");
    for path in ["/console/", "/console/login", "/console/app.js"] {
        let (code, _) = curl(&lab.node, &[&format!("{BASE}{path}")]);
        assert_eq!(code, 404, "{path} on the machines' listener");
    }

    let b = Browser::start(&lab.srv.name, 9515, 1400, 1000).await;

    // Log in: a wrong token is refused with a message, the right one opens the console.
    b.goto(&format!("{CONSOLE}/console/")).await;
    assert!(
        b.url().await.ends_with("/console/login"),
        "sent to the login form"
    );
    b.type_into("#token", "not-the-token").await;
    b.click("#login-button").await;
    let error = b
        .wait_for(
            "the login error",
            "const e = document.getElementById('login-error'); return e && e.textContent;",
            WAIT,
        )
        .await;
    assert!(
        error.as_str().unwrap().contains("not the API token"),
        "{error}"
    );
    b.type_into("#token", &lab.token()).await;
    b.click("#login-button").await;
    wait_ready(&b).await;
    // The session cookie is not readable by scripts.
    let cookies = b.eval("return document.cookie;", json!([])).await;
    assert_eq!(cookies, json!(""), "HttpOnly");
    // A marker that a reload would erase: every change below must arrive live.
    b.eval("window.notReloaded = true;", json!([])).await;
    let start_seq = b.eval("return window.lacave.seq;", json!([])).await;
    let start_seq = start_seq.as_u64().unwrap();

    // Register through the form: a bad MAC gets the API's message beside the field.
    b.click("#register").await;
    b.type_into("#f-mac", "52:54:00:zz:00:01").await;
    b.type_into("#f-hostname", "kube09").await;
    b.type_into("#f-ip", "10.72.0.19").await;
    b.click("#f-submit").await;
    let reason = b
        .wait_for(
            "the MAC's error",
            "const e = document.querySelector('.field-error[data-field=\"mac\"]'); return e && e.textContent;",
            WAIT,
        )
        .await;
    assert!(
        reason.as_str().unwrap().contains("52:54:00:zz:00:01"),
        "the API's message names the value: {reason}"
    );
    b.type_into("#f-mac", "52:54:00:72:00:09").await;
    b.click("#f-submit").await;
    wait_state(&b, "52:54:00:72:00:09", "registered").await;

    // The machine powers on unregistered: it shows among the discovered, live, with its
    // firmware; adopt it.
    lab.dhcp();
    b.wait_for(
        "the discovered machine",
        &format!("return !!document.querySelector('#discovered tr[data-mac=\"{MAC}\"]');"),
        WAIT,
    )
    .await;
    b.click(&format!("#discovered tr[data-mac=\"{MAC}\"] button.adopt"))
        .await;
    b.type_into("#f-hostname", "kube01").await;
    b.type_into("#f-ip", "10.72.0.11").await;
    b.type_into("#f-labels", "zone=rack1, disk=ssd").await;
    b.click("#f-submit").await;
    wait_state(&b, MAC, "registered").await;

    // A few more nodes, so the table looks like a rack.
    for i in 2..=6u32 {
        let (code, body) = lab.api(
            "POST",
            "/api/v1/nodes",
            Some(json!({
                "mac": format!("52:54:00:72:00:{i:02x}"),
                "hostname": format!("kube{i:02}"),
                "ip": format!("10.72.0.{}", 10 + i),
                "role": if i == 2 { "control-plane" } else { "worker" },
                "labels": {"zone": if i % 2 == 0 { "rack1" } else { "rack2" }},
            })),
        );
        assert_eq!(code, 201, "{body}");
    }

    // The machine boots: each step shows in the table without a reload.
    lab.dhcp();
    let (code, body) = curl(&lab.node, &[&format!("{BASE}/ipxe/{SEG}")]);
    assert_eq!(code, 200, "{body}");
    wait_state(&b, MAC, "installing").await;
    let (code, fin) = curl(&lab.node, &[&format!("{BASE}/ignition/{SEG}/final")]);
    assert_eq!(code, 200, "{fin}");
    let secret = callback_secret(&fin);
    assert!(!secret.is_empty());
    lab.callback(&secret, "installed", "");
    wait_state(&b, MAC, "installed").await;
    lab.callback(
        &secret,
        "booted",
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl root@kube01",
    );
    wait_state(&b, MAC, "booted").await;
    assert_eq!(
        b.eval("return window.notReloaded === true;", json!([]))
            .await,
        json!(true),
        "no reload"
    );
    b.wait_for(
        "the live log",
        "return document.querySelectorAll('#log li[data-seq]').length >= 5;",
        WAIT,
    )
    .await;
    keep_screenshot("console-nodes.png", &b.screenshot().await);

    // The node's page: history, timeline, rendered configs with the secret redacted.
    b.click(&format!("#nodes tr[data-mac=\"{MAC}\"] a")).await;
    b.wait_for(
        "the node's history",
        "return document.querySelectorAll('#history tr[data-seq]').length >= 5;",
        WAIT,
    )
    .await;
    let phases = b
        .eval(
            "return [...document.querySelectorAll('#timeline .phase.done')].map(p => p.dataset.phase);",
            json!([]),
        )
        .await;
    assert_eq!(
        phases,
        json!(["power-on → DHCP", "script", "installed", "booted"]),
        "the last provisioning's phases"
    );
    let history = b.text("#history").await;
    for step in [
        "install script served",
        "installed callback",
        "booted callback",
    ] {
        assert!(history.contains(step), "{step}: {history}");
    }
    b.click("#config-final").await;
    let config = b
        .wait_for(
            "the final config",
            "const t = document.getElementById('config-text').textContent; return t.includes('ignition') && t;",
            WAIT,
        )
        .await;
    let config = config.as_str().unwrap();
    assert!(!config.contains(&secret), "the callback secret is redacted");
    b.click("#config-ipxe").await;
    b.wait_for(
        "the iPXE script",
        "return document.getElementById('config-text').textContent.startsWith('#!ipxe');",
        WAIT,
    )
    .await;
    b.set_size(1400, 1500).await;
    keep_screenshot("console-node.png", &b.screenshot().await);
    b.set_size(1400, 1000).await;

    // The power panel: no BMC yet, so a form to give it one; a URL of another protocol is
    // refused by the daemon and the error lands on the field.
    b.wait_for(
        "the power panel",
        "return !!document.getElementById('bmc-form');",
        WAIT,
    )
    .await;
    b.type_into("#bmc-form input[name=url]", "http://10.0.0.5")
        .await;
    b.type_into("#bmc-form input[name=user]", "admin").await;
    b.type_into("#bmc-form input[name=password]", "pw").await;
    b.click("#bmc-form button[type=submit]").await;
    let refused = b
        .wait_for(
            "the refused BMC URL",
            "const e = document.querySelector('#bmc-form .field-error[data-field=\"url\"]'); return e && e.textContent;",
            WAIT,
        )
        .await;
    assert!(
        refused.as_str().unwrap().contains("not a BMC protocol"),
        "{refused}"
    );

    // Reinstall, confirmed in a dialog: the state goes back live.
    b.click("#reinstall").await;
    b.click("#confirm-ok").await;
    b.wait_for(
        "the reinstall",
        "const s = document.querySelector('#node-state .badge'); return s && s.dataset.state === 'registered';",
        WAIT,
    )
    .await;

    // Edit through the form: the labels change, live.
    b.click("#edit").await;
    b.type_into("#f-labels", "zone=rack3").await;
    b.click("#f-submit").await;
    b.wait_for(
        "the new labels",
        "return [...document.querySelectorAll('dl.facts dd')].some(d => d.textContent === 'zone=rack3');",
        WAIT,
    )
    .await;

    // Services: the daemon's own counters and its CA, as OpenSSL sees it.
    b.eval("location.hash = '#/services';", json!([])).await;
    let dhcp = b
        .wait_for(
            "the DHCP counters",
            "const c = document.querySelector('[data-service=\"dhcp\"]'); return c && c.textContent.includes('full mode') && c.textContent;",
            WAIT,
        )
        .await;
    assert!(dhcp.as_str().unwrap().contains("discover2"), "{dhcp}");
    let shown = b.text("#ca-fingerprint").await;
    let openssl = Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
        .arg(lab.state().join("pki/ca-chain.pem"))
        .output()
        .unwrap();
    let openssl = String::from_utf8_lossy(&openssl.stdout);
    assert!(
        openssl.trim().ends_with(&format!("={shown}")),
        "{shown} vs {openssl}"
    );
    // Flatcar updates: this lab's mirror holds no release, and the page says so.
    let updates = b
        .wait_for(
            "the updates section",
            "const p = document.getElementById('updates-state'); return p && p.textContent;",
            WAIT,
        )
        .await;
    assert!(
        updates.as_str().unwrap().contains("no release offered"),
        "{updates}"
    );
    keep_screenshot("console-services.png", &b.screenshot().await);

    // Remove a node, confirmed: it leaves the table live.
    b.eval("location.hash = '#/node/52:54:00:72:00:09';", json!([]))
        .await;
    b.wait_for(
        "kube09's page",
        "return !!document.getElementById('remove');",
        WAIT,
    )
    .await;
    b.click("#remove").await;
    b.click("#confirm-ok").await;
    b.wait_for(
        "kube09 gone",
        "return location.hash === '#/nodes' && !!document.querySelector('#nodes tr[data-mac=\"52:54:00:72:00:01\"]') && !document.querySelector('#nodes tr[data-mac=\"52:54:00:72:00:09\"]');",
        WAIT,
    )
    .await;
    let (code, _) = lab.api("GET", "/api/v1/nodes/kube09", None);
    assert_eq!(code, 404);

    // The daemon restarts: the stream resumes after the last event it delivered, and the
    // events made while the page was away arrive once each.
    b.goto(&format!("{CONSOLE}/console/#/nodes")).await;
    wait_ready(&b).await;
    b.eval("window.notReloaded = true;", json!([])).await;
    let page_seq = b
        .eval("return window.lacave.seq;", json!([]))
        .await
        .as_u64()
        .unwrap();
    let mut daemon = lab.daemon.take().unwrap();
    assert!(daemon.terminate().success());
    lab.start_daemon();
    let (code, body) = curl(&lab.node, &[&format!("{BASE}/ipxe/{SEG}")]);
    assert_eq!(code, 200, "{body}");
    let (code, _) = lab.api(
        "PATCH",
        "/api/v1/nodes/kube03",
        Some(json!({"labels": {"zone": "rack9"}})),
    );
    assert_eq!(code, 200);
    wait_state(&b, MAC, "installing").await;
    b.wait_for(
        "kube03's new label",
        "return document.querySelector('#nodes tr[data-hostname=\"kube03\"]').textContent.includes('zone=rack9');",
        WAIT,
    )
    .await;
    let stats = b
        .eval(
            "return {received: window.lacave.received, duplicates: window.lacave.duplicates, opens: window.lacave.opens, resets: window.lacave.resets, reloaded: window.notReloaded !== true, csp: window.lacave.cspViolations};",
            json!([]),
        )
        .await;
    assert_eq!(stats["duplicates"], json!(0), "{stats}");
    assert_eq!(
        stats["csp"],
        json!(0),
        "the page works within its own policy: {stats}"
    );
    assert_eq!(stats["resets"], json!(0), "{stats}");
    assert_eq!(stats["reloaded"], json!(false), "{stats}");
    assert!(
        stats["opens"].as_u64().unwrap() >= 2,
        "reconnected: {stats}"
    );
    let received: Vec<u64> = serde_json::from_value(stats["received"].clone()).unwrap();
    let received: Vec<u64> = received.into_iter().filter(|s| *s > page_seq).collect();
    assert_eq!(
        received,
        history_seqs(&lab, page_seq),
        "every event after the page's position, once, in order"
    );
    assert!(page_seq > start_seq);

    // A page of another origin cannot make the browser change anything, even though the
    // session cookie is sent to it (127.0.0.1 on another port is the same site).
    let evil = lab.work.path().join("evil");
    std::fs::create_dir_all(&evil).unwrap();
    std::fs::write(
        evil.join("index.html"),
        format!(
            r#"<!doctype html><html><body>
<form id="f" method="post" action="{CONSOLE}/api/v1/nodes" enctype="text/plain">
<input name='{{"mac":"52:54:00:72:00:66","hostname":"evil","ip":"10.72.0.66","role":"worker","x":"' value='"}}'>
</form>
<script>
fetch('{CONSOLE}/api/v1/nodes/kube02/reinstall', {{method: 'POST', credentials: 'include', mode: 'no-cors'}})
  .finally(() => document.getElementById('f').submit());
</script></body></html>"#
        ),
    )
    .unwrap();
    let mut server = lab
        .srv
        .command("python3")
        .args([
            "-m",
            "http.server",
            "8999",
            "--bind",
            "127.0.0.1",
            "--directory",
        ])
        .arg(&evil)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    b.goto("http://127.0.0.1:8999/").await;
    b.wait_for(
        "the cross-site form's answer",
        "return location.port === '8443';",
        WAIT,
    )
    .await;
    let answer = b.eval("return document.body.innerText;", json!([])).await;
    let _ = server.kill();
    let _ = server.wait();
    assert!(
        answer.as_str().unwrap().contains("forbidden"),
        "refused: {answer}"
    );
    let (code, _) = lab.api("GET", "/api/v1/nodes/evil", None);
    assert_eq!(code, 404, "no node was created cross-site");
    let (_, kube02) = lab.api("GET", "/api/v1/nodes/kube02", None);
    assert!(kube02.contains("\"state\":\"registered\""), "{kube02}");
    let (_, events) = lab.api("GET", "/api/v1/nodes/kube02/events", None);
    assert!(
        !events.contains("reinstall"),
        "no reinstall cross-site: {events}"
    );
    let log = lab.daemon.as_ref().unwrap().log();
    assert!(log.contains("cross-site console request refused"), "{log}");

    // Log out: back to the login form, and the old session opens nothing any more.
    b.goto(&format!("{CONSOLE}/console/")).await;
    wait_ready(&b).await;
    b.click("#logout").await;
    b.wait_for(
        "the login form",
        "return location.pathname === '/console/login';",
        WAIT,
    )
    .await;
    b.goto(&format!("{CONSOLE}/console/")).await;
    assert!(b.url().await.ends_with("/console/login"));
    b.quit().await;
}

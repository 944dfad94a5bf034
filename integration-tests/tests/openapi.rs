//! The OpenAPI document of `/api/v1` against real tools from PyPI (installed by
//! `scripts/prereqs.sh` into a cached virtualenv, `$LACAVE_PYTOOLS`): the daemon serves it
//! without a token and it is the one `lacave openapi` prints; `openapi-spec-validator`
//! accepts it; `openapi-python-client` generates a client from it that registers, lists,
//! edits and removes nodes against the daemon (`openapi/client.py`); and every documented
//! operation is routed (401 without a token, not 404 or 405) while every method a path does
//! not document is refused (405), so the document and the router list the same routes.

use std::path::{Path, PathBuf};
use std::process::Command;

use lacave_integration_tests::{DaemonProcess, lacave_bin};

/// The virtualenv's `bin/` with the pinned tools.
fn pytools() -> PathBuf {
    if let Ok(dir) = std::env::var("LACAVE_PYTOOLS") {
        return PathBuf::from(dir);
    }
    // `cargo test` run by hand: the newest virtualenv scripts/prereqs.sh made.
    let mut found: Vec<PathBuf> = std::fs::read_dir("/var/cache/lacave-tests")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("pytools-"))
                && p.join("bin/openapi-python-client").exists()
        })
        .collect();
    found.sort_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok());
    found.pop().map(|p| p.join("bin")).unwrap_or_else(|| {
        panic!(
            "no Python tools: run scripts/test (scripts/prereqs.sh ensure_pytools installs them)"
        )
    })
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// `curl`, with a token or without: the status code and the body.
fn request(method: &str, url: &str, token: Option<&str>) -> (u16, String) {
    let mut cmd = Command::new("curl");
    if let Some(token) = token {
        cmd.arg("-H").arg(format!("Authorization: Bearer {token}"));
    }
    let out = run(cmd.args([
        "-sS",
        "-X",
        method,
        "-w",
        "\n%{http_code}",
        "-H",
        "Content-Type: application/json",
        "--data-binary",
        if method == "GET" || method == "DELETE" {
            ""
        } else {
            "{}"
        },
        url,
    ]));
    let (body, code) = out.rsplit_once('\n').unwrap();
    (code.trim().parse().unwrap(), body.to_string())
}

fn unauthenticated(method: &str, url: &str) -> (u16, String) {
    request(method, url, None)
}

#[test]
fn the_document_validates_generates_a_working_client_and_lists_every_route() {
    let tools = pytools();
    let state = tempfile::tempdir().unwrap();
    let daemon = DaemonProcess::start(state.path());
    let work = tempfile::tempdir().unwrap();

    // Served without a token, the same as the CLI prints.
    let (code, served) = unauthenticated("GET", &format!("{}/api/v1/openapi.json", daemon.url));
    assert_eq!(code, 200, "{served}");
    let printed = run(Command::new(lacave_bin()).arg("openapi"));
    assert_eq!(served.trim(), printed.trim());
    let doc: serde_json::Value = serde_json::from_str(&served).unwrap();
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1."),
        "{}",
        doc["openapi"]
    );
    let file = work.path().join("openapi.json");
    std::fs::write(&file, &served).unwrap();

    // A real validator.
    let said = run(Command::new(tools.join("openapi-spec-validator")).arg(&file));
    assert!(said.contains("OK"), "{said}");

    // A real generator, and its client against the daemon.
    let path = format!(
        "{}:{}",
        tools.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    run(Command::new(tools.join("openapi-python-client"))
        .args(["generate", "--meta", "none", "--path"])
        .arg(&file)
        .arg("--output-path")
        .arg(work.path().join("lacave_client"))
        .env("PATH", &path));
    let said = run(Command::new(tools.join("python3"))
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("openapi/client.py"))
        .arg(&daemon.url)
        .arg(state.path().join("api-token"))
        .env("PYTHONPATH", work.path()));
    assert!(said.contains("generated client: ok"), "{said}");

    // Every documented operation is routed (the authentication answers, not the fallback)
    // and every other method of a documented path is refused by the router (405, once
    // authenticated: without a token every method of an API path is 401).
    let token = daemon.token(state.path());
    let paths = doc["paths"].as_object().unwrap();
    let mut operations = 0;
    for (path, item) in paths {
        let concrete = path
            .split('/')
            .map(|part| if part.starts_with('{') { "x" } else { part })
            .collect::<Vec<_>>()
            .join("/");
        let url = format!("{}{concrete}", daemon.url);
        for method in ["get", "post", "put", "patch", "delete"] {
            let (code, body) = unauthenticated(&method.to_uppercase(), &url);
            if item.get(method).is_some() {
                operations += 1;
                assert_eq!(code, 401, "{method} {path}: {body}");
                let problem: serde_json::Value = serde_json::from_str(&body).unwrap();
                assert_eq!(problem["code"], "unauthorized", "{method} {path}");
            } else {
                assert_eq!(code, 401, "{method} {path}: {body}");
                let (code, body) = request(&method.to_uppercase(), &url, Some(&token));
                assert_eq!(
                    code, 405,
                    "{method} {path} is not documented but answered: {body}"
                );
            }
        }
    }
    assert!(operations >= 35, "{operations} operations");
    // A path the document does not have is not routed.
    let (code, _) = unauthenticated("GET", &format!("{}/api/v1/not-a-route", daemon.url));
    assert_eq!(code, 404);
}

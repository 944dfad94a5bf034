//! Flatcar updates served by the daemon, against Flatcar's own Go Omaha library
//! (`integration-tests/omaha`, built from the Go module proxy by `scripts/prereqs.sh`): a
//! release with its update payload fetched by `lacave mirror fetch` (signed by a key GnuPG
//! makes here), a node namespace with a registered MAC asking as update_engine does; the
//! answer checked as update_engine checks it (manifest, URL, package size, SHA-1 and SHA-256,
//! the payload downloaded from the daemon's mirror); the node's progress (downloading,
//! applied, rebooted) in `lacave updates status` and its history, across a daemon restart;
//! a node ahead of the site, a failure code, a changed payload, another machine, and hostile
//! XML (an entity bomb, an oversized body, garbage) refused cleanly while the daemon keeps
//! serving. The final Ignition config with `update.conf` passes the real `ignition-validate`.
//! Everything runs in two namespaces linked by a veth (10.74.0.0/24) and their loopbacks.

use std::path::{Path, PathBuf};
use std::process::Command;

use lacave_integration_tests::netns::{Netns, require_root};
use lacave_integration_tests::release::{UPDATE, export_key, gpg_key, make_release, serve};
use lacave_integration_tests::{DaemonProcess, lacave_bin, lacave_in};

const SERVER: &str = "10.74.0.1";
const BASE: &str = "http://10.74.0.1:8080";
const OMAHA: &str = "http://10.74.0.1:8080/v1/update/";
const MAC: &str = "52:54:00:74:00:01";
const OLD: &str = "4230.2.3";
const NEW: &str = "4459.2.1";

fn omaha_client() -> PathBuf {
    PathBuf::from(std::env::var("LACAVE_OMAHA_CLIENT").expect(
        "LACAVE_OMAHA_CLIENT (scripts/test builds the Omaha test client: ensure_omaha_client)",
    ))
}

struct Lab {
    srv: Netns,
    node: Netns,
    work: tempfile::TempDir,
    config: String,
    daemon: DaemonProcess,
    release_server: std::process::Child,
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = self.release_server.kill();
        let _ = self.release_server.wait();
    }
}

impl Lab {
    fn state(&self) -> PathBuf {
        self.work.path().join("state")
    }

    fn lacave(&self, args: &[&str]) -> String {
        lacave_in(&self.srv, BASE, &self.state(), args)
    }

    fn status(&self) -> serde_json::Value {
        serde_json::from_str(&self.lacave(&["updates", "status", "--output", "json"])).unwrap()
    }

    fn node_update(&self) -> serde_json::Value {
        let s = self.status();
        s["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["node"] == "kube01")
            .cloned()
            .unwrap_or_else(|| panic!("kube01 in {s}"))
    }

    /// The Go client from the node's namespace: its JSON answer.
    fn check(&self, version: &str, fetch: Option<&Path>) -> serde_json::Value {
        let mut cmd = self.node.command(omaha_client());
        cmd.args(["check", "-server", OMAHA, "-version", version]);
        if let Some(dir) = fetch {
            cmd.arg("-fetch").arg(dir);
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn event(&self, version: &str, kind: &str, result: &str, extra: &[&str]) {
        let out = self
            .node
            .command(omaha_client())
            .args(["event", "-server", OMAHA, "-version", version])
            .args(["-type", kind, "-result", result])
            .args(extra)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// curl from `ns` posting `body`: (status, body).
    fn post(&self, ns: &Netns, body: &[u8]) -> (u16, String) {
        let file = self.work.path().join("body.xml");
        std::fs::write(&file, body).unwrap();
        let out = ns
            .command("curl")
            .args(["-sS", "-o", "-", "-w", "\n%{http_code}", "--data-binary"])
            .arg(format!("@{}", file.display()))
            .arg(OMAHA)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap();
        (code.parse().unwrap(), body.to_string())
    }

    fn history(&self) -> String {
        self.lacave(&["node", "show", "kube01"])
    }
}

fn request(app_id: &str, version: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?><request protocol="3.0" version="update_engine-0.4.10" ismachine="1"><os platform="CoreOS"/><app appid="{app_id}" version="{version}" track="stable" machineid="0123"><ping active="1"/><updatecheck/></app></request>"#
    )
}

fn setup() -> Lab {
    require_root("the updates test (network namespaces)");
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("release");
    let (home, fingerprint) = gpg_key(work.path(), "flatcar");
    let key_file = work.path().join("flatcar.asc");
    export_key(&home, &fingerprint, &key_file);
    make_release(&root, NEW, &home, 1);
    std::os::unix::fs::symlink(NEW, root.join("amd64-usr/current")).unwrap();

    let srv = Netns::new("upds");
    let node = Netns::new("updn");
    srv.link_machine(&format!("{SERVER}/24"), &node, "10.74.0.50/24", MAC);
    let (release_server, port) = serve(&srv, &root, work.path());
    let config = format!(
        r#"state_dir = "{state}"
server_ip = "{SERVER}"
[http]
listen = "{SERVER}:8080"
mirror_listen = "{SERVER}:8081"
[flatcar]
mirror_dir = "{mirror}"
version = "current"
node_prefix = 24
release_base_url = "http://127.0.0.1:{port}/good"
signing_key_file = "{key}"
signing_key_fingerprint = "{fingerprint}"
[updates.releases]
pinned = "{OLD}"
"#,
        state = work.path().join("state").display(),
        mirror = work.path().join("mirror").display(),
        key = key_file.display(),
    );
    let config_file = work.path().join("lacave.toml");
    std::fs::write(&config_file, &config).unwrap();
    // The real fetch: images, the update payload and its signature, verified.
    let out = srv
        .command(lacave_bin())
        .args(["mirror", "fetch", "flatcar", "--config"])
        .arg(&config_file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let daemon = DaemonProcess::start_custom(&work.path().join("state"), &config, Some(&srv), &[]);
    let lab = Lab {
        srv,
        node,
        work,
        config,
        daemon,
        release_server,
    };
    lab.lacave(&[
        "node",
        "add",
        "--mac",
        MAC,
        "--hostname",
        "kube01",
        "--ip",
        "10.74.0.11",
        "--role",
        "worker",
    ]);
    lab
}

#[test]
fn nodes_are_offered_the_mirrors_release_and_their_progress_is_recorded() {
    let mut lab = setup();

    // An older node is offered the release, at the daemon's mirror, with what update_engine
    // checks; the payload downloaded from there passes go-omaha's checks.
    let dl = tempfile::tempdir().unwrap();
    let answer = lab.check(OLD, Some(dl.path()));
    assert_eq!(answer["status"], "ok", "{answer}");
    assert_eq!(answer["version"], NEW);
    assert_eq!(
        answer["url"],
        format!("http://{SERVER}:8081/mirror/stable/amd64-usr/{NEW}/")
    );
    assert_eq!(answer["package"], UPDATE);
    assert_eq!(answer["size"], 700_000);
    assert_eq!(answer["verified"], "ok", "{answer}");
    assert_eq!(answer["action_sha256"], answer["sha256"]);
    let u = lab.node_update();
    assert_eq!(
        (
            u["state"].as_str(),
            u["version"].as_str(),
            u["target"].as_str()
        ),
        (Some("offered"), Some(OLD), Some(NEW)),
        "{u}"
    );
    assert_eq!(lab.status()["target"], NEW);

    // Its progress, as update_engine reports it.
    lab.event(OLD, "13", "1", &[]);
    lab.event(OLD, "14", "1", &[]);
    lab.event(OLD, "800", "1", &[]);
    assert_eq!(lab.node_update()["state"], "applied");
    assert!(
        lab.history().contains("waits for a reboot"),
        "{}",
        lab.history()
    );

    // Nothing lost on a restart.
    lab.daemon.kill();
    lab.daemon = DaemonProcess::start_custom(&lab.state(), &lab.config, Some(&lab.srv), &[]);
    assert_eq!(lab.node_update()["state"], "applied");

    // Rebooted into the new release: up to date, no further offer.
    lab.event(NEW, "3", "2", &["-previous", OLD]);
    let answer = lab.check(NEW, None);
    assert_eq!(answer["status"], "noupdate", "{answer}");
    let u = lab.node_update();
    assert_eq!(
        (u["state"].as_str(), u["version"].as_str()),
        (Some("up-to-date"), Some(NEW)),
        "{u}"
    );
    assert!(
        lab.history()
            .contains(&format!("rebooted from Flatcar {OLD} into {NEW}")),
        "{}",
        lab.history()
    );

    // A node ahead of the site is never downgraded; a failure is named by its code.
    assert_eq!(lab.check("5000.0.0", None)["status"], "noupdate");
    assert_eq!(lab.node_update()["state"], "ahead");
    lab.check(OLD, None);
    lab.event(OLD, "3", "0", &["-error", "10"]);
    let u = lab.node_update();
    assert_eq!(u["state"], "failed");
    assert!(
        u["error"]
            .as_str()
            .unwrap()
            .contains("payload hash mismatch"),
        "{u}"
    );

    // A payload changed after the fetch verified it is not offered (size, then content).
    let payload = lab
        .work
        .path()
        .join(format!("mirror/stable/amd64-usr/{NEW}/{UPDATE}"));
    let good = std::fs::read(&payload).unwrap();
    let mut longer = good.clone();
    longer.push(0);
    std::fs::write(&payload, &longer).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(2100));
    assert_eq!(lab.check(OLD, None)["status"], "error-internal");
    let mut flipped = good.clone();
    flipped[1000] ^= 1;
    std::fs::write(&payload, &flipped).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(2100));
    assert_eq!(lab.check(OLD, None)["status"], "error-internal");
    let s = lab.status();
    assert!(
        s["target_error"]
            .as_str()
            .unwrap()
            .contains("is not the file lacave mirror fetch verified"),
        "{s}"
    );
    assert_eq!(lab.node_update()["state"], "unanswered");
    std::fs::write(&payload, &good).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(2100));
    assert_eq!(lab.check(OLD, None)["status"], "ok");

    // Another machine (the server's own namespace: no neighbour entry) is refused.
    let (code, body) = lab.post(
        &lab.srv,
        request("{e96281a6-d1af-4bde-9a0a-97b76e56dc57}", OLD).as_bytes(),
    );
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("not a registered node"), "{body}");

    // Hostile and malformed requests: refused by name, nothing recorded, still serving.
    let bomb = format!(
        "<?xml version=\"1.0\"?><!DOCTYPE r [<!ENTITY a \"{}\">{}]><request protocol=\"3.0\"><app appid=\"&j;\"/></request>",
        "x".repeat(64),
        (b'b'..=b'j')
            .map(|c| format!(
                "<!ENTITY {} \"{}\">",
                c as char,
                format!("&{};", (c - 1) as char).repeat(10)
            ))
            .collect::<String>()
    );
    let (code, body) = lab.post(&lab.node, bomb.as_bytes());
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("document type"), "{body}");
    let (code, _) = lab.post(&lab.node, &vec![b'<'; 20_000]);
    assert_eq!(code, 413);
    let (code, body) = lab.post(&lab.node, b"\x00\xffnot xml");
    assert_eq!(code, 400, "{body}");
    let (code, body) = lab.post(
        &lab.node,
        request("{00000000-0000-0000-0000-000000000000}", OLD).as_bytes(),
    );
    assert_eq!(code, 200, "{body}");
    assert!(
        body.contains("status=\"error-unknownApplication\""),
        "{body}"
    );
    assert_eq!(lab.check(OLD, None)["status"], "ok");
    let metrics = lab.srv.http_get(&format!("{BASE}/metrics"));
    for outcome in [
        "update",
        "noupdate",
        "unanswered",
        "refused",
        "malformed",
        "unknown_app",
    ] {
        assert!(
            metrics.contains(&format!(
                "lacave_omaha_requests_total{{outcome=\"{outcome}\"}}"
            )),
            "{outcome}: {metrics}"
        );
    }

    // Put in the group `pinned` by its label, the node is answered with that group's release:
    // one the mirror does not hold, so no update, and the status says which and why.
    lab.lacave(&[
        "node",
        "edit",
        "kube01",
        "--label",
        "lacave.io/update-group=pinned",
    ]);
    assert_eq!(lab.check(OLD, None)["status"], "error-internal");
    let s = lab.status();
    assert_eq!(s["target"], NEW, "{s}");
    assert_eq!(s["groups"][0]["group"], "pinned", "{s}");
    let why = s["groups"][0]["target_error"].as_str().unwrap_or_default();
    assert!(
        why.contains(&format!("lacave mirror fetch flatcar --version {OLD}")),
        "{s}"
    );

    // The final config points update_engine at the daemon (in the node's group), and
    // ignition-validate accepts it.
    let rendered = lab.lacave(&["render", "final", "kube01"]);
    let config: serde_json::Value = serde_json::from_str(&rendered).unwrap();
    let file = config["storage"]["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"] == "/etc/flatcar/update.conf")
        .cloned()
        .unwrap_or_else(|| panic!("update.conf in {rendered}"));
    let data = file["contents"]["source"].as_str().unwrap();
    let conf = String::from_utf8(
        base64::Engine::decode(
            &base64::engine::general_purpose::STANDARD,
            data.split_once(',').unwrap().1,
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(
        conf,
        format!("SERVER={OMAHA}\nGROUP=pinned\nREBOOT_STRATEGY=off\n")
    );
    let path = lab.work.path().join("final.ign");
    std::fs::write(&path, &rendered).unwrap();
    let out = Command::new("ignition-validate")
        .arg(&path)
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success() && said.trim().is_empty(), "{said}");
}

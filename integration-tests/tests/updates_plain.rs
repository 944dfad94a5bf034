//! Coordinated reboots of machines without a Kubernetes cluster (`[cluster]` off): two booted
//! machines of the lab (`k8s/node.sh`: namespaces with a real sshd whose host key the booted
//! callback pinned, nothing out of the test LAN) report an update applied to the daemon's Omaha
//! endpoint through Flatcar's go-omaha library. Outside `[updates] window` nothing reboots;
//! with the daemon restarted on a window containing now, they are rebooted over SSH one at a
//! time (`k8s/systemctl`'s reboot: the machine's services restart and its staged release
//! becomes the running one) and each is waited for until it reports the new release.

use std::path::Path;

use lacave_integration_tests::DaemonProcess;
use lacave_integration_tests::k8slab::{self, Api, SERVER, TestNode, wait_for};
use lacave_integration_tests::netns::require_root;

const OLD: &str = "4230.2.3";
const NEW: &str = "4459.2.1";

fn config(state: &Path, window: &str) -> String {
    format!(
        r#"state_dir = "{state}"
server_ip = "{SERVER}"
[http]
listen = "{SERVER}:8080"
[api]
listen = "{SERVER}:8443"
tls = false
[updates]
window = "{window}"
reboot_timeout_secs = 60
"#,
        state = state.display()
    )
}

#[test]
fn machines_without_a_cluster_are_rebooted_one_at_a_time_inside_the_window() {
    require_root("the plain machines' reboots test");
    let omaha = std::env::var("LACAVE_OMAHA_CLIENT").expect(
        "LACAVE_OMAHA_CLIENT (scripts/test builds the Omaha test client: ensure_omaha_client)",
    );
    let bin = k8slab::script("build.sh", &[]);
    let images = k8slab::script("images.sh", &[&bin]);
    let lan = k8slab::lan();
    let state = tempfile::tempdir().unwrap();
    // A window twelve hours away: nothing may reboot now.
    let now = time::OffsetDateTime::now_utc();
    let far = (now.hour() + 12) % 24;
    let closed = format!("{far:02}:00-{:02}:00", (far + 1) % 24);
    let mut daemon = DaemonProcess::start_custom(
        state.path(),
        &config(state.path(), &closed),
        Some(&lan),
        &[],
    );
    // The release and its payload in the mirror, recorded as `lacave mirror fetch` records it.
    let dir = state.path().join(format!("mirror/stable/amd64-usr/{NEW}"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("flatcar_production_update.gz"), vec![9u8; 50_000]).unwrap();
    let p =
        lacave::release::fetch::UpdatePayload::of_file(&dir.join("flatcar_production_update.gz"))
            .unwrap();
    let record = serde_json::json!({"version": NEW, "signer": "test", "verified_at": "",
        "sha512": {}, "signed_at": {}, "update": p});
    std::fs::write(dir.join(".verified"), record.to_string()).unwrap();
    std::os::unix::fs::symlink(NEW, dir.parent().unwrap().join("current")).unwrap();

    let api = Api::of_state(state.path());
    let key = k8slab::daemon_ssh_key(state.path());
    let machines: Vec<TestNode> = [(1, "m1"), (2, "m2")]
        .into_iter()
        .map(|(i, name)| TestNode::start(&lan, i, name, false, &bin, &images, &key))
        .collect();
    let url = format!("http://{SERVER}:8080/v1/update/");
    for m in &machines {
        let body =
            serde_json::json!({"mac": m.mac, "hostname": m.name, "ip": m.ip, "role": "worker"});
        let out = api.call(&lan, "POST", "/api/v1/nodes", Some(&body.to_string()));
        assert!(out.contains(&m.name), "{out}");
        m.boot(&m.host_key());
        assert_eq!(api.node(&lan, &m.name)["state"], "booted");
        m.exec(&format!(
            "mkdir -p /var/lib/lacave-test && cd /var/lib/lacave-test && echo {OLD} > version && echo {NEW} > staged && echo {omaha} > omaha && echo {url} > server"
        ));
        let client = |args: &[&str]| {
            let out =
                m.ns.command(&omaha)
                    .args(args)
                    .args(["-server", &url, "-version", OLD, "-machine", &m.name])
                    .output()
                    .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        client(&["check"]);
        for kind in ["13", "14", "800"] {
            client(&["event", "-type", kind, "-result", "1"]);
        }
    }
    let status = || -> serde_json::Value {
        serde_json::from_str(&api.call(&lan, "GET", "/api/v1/updates", None)).unwrap()
    };
    let states = || -> Vec<String> {
        let s = status();
        ["m1", "m2"]
            .iter()
            .map(|n| {
                s["nodes"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|x| x["node"] == *n)
                    .map(|x| x["state"].as_str().unwrap().to_string())
                    .unwrap_or_default()
            })
            .collect()
    };
    assert_eq!(states(), ["applied", "applied"]);
    // Outside the window: nothing reboots.
    std::thread::sleep(std::time::Duration::from_secs(15));
    assert!(
        machines.iter().all(|m| m.reboots().is_empty()),
        "a reboot outside the window"
    );
    assert_eq!(states(), ["applied", "applied"]);

    // Inside one (the daemon restarted with a window around now): one at a time.
    daemon.kill();
    let open = format!("{:02}:00-{:02}:00", now.hour(), (now.hour() + 2) % 24);
    let daemon =
        DaemonProcess::start_custom(state.path(), &config(state.path(), &open), Some(&lan), &[]);
    wait_for(
        "both machines rebooted into the new release",
        300,
        || daemon.log(),
        || {
            let s = status();
            (states() == ["up-to-date", "up-to-date"]
                && s["reboots"]["running"]
                    .as_array()
                    .is_some_and(Vec::is_empty))
            .then_some(())
        },
    );
    let (a, b) = (machines[0].reboots(), machines[1].reboots());
    assert_eq!((a.len(), b.len()), (1, 1), "{a:?} {b:?}");
    let (first, second) = if a[0].0 < b[0].0 {
        (a[0], b[0])
    } else {
        (b[0], a[0])
    };
    assert!(
        second.0 > first.1,
        "two machines rebooted at once: {a:?} {b:?}"
    );
    let finished = status()["reboots"]["finished"].clone();
    assert_eq!(finished.as_array().map(Vec::len), Some(2), "{finished}");
    for m in &machines {
        let events = api.call(
            &lan,
            "GET",
            &format!("/api/v1/nodes/{}/events", m.name),
            None,
        );
        assert!(
            events.contains(&format!("rebooted into Flatcar {NEW}")),
            "{events}"
        );
        k8slab::assert_no_secret_in("the events", &events, state.path());
    }
    k8slab::assert_no_secret_in("the daemon's log", &daemon.log(), state.path());
}

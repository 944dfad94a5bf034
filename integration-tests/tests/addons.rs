//! The cluster add-ons against a real API server: the daemon, unmodified, builds a control
//! plane with `kubeadm init` (as in tests/cluster.rs) and applies every add-on to it by
//! server-side apply. Workloads run on kwok fake nodes (nothing can be pulled here); the control
//! plane's own kubelet is stopped once it is Ready and its Node deleted (its containers keep
//! running), so that the DaemonSets that tolerate it (flannel, Traefik, node-exporter) want
//! pods only where kwok can make them ready.
//!
//! What kwok cannot run, the test plays, and says so: cert-manager's webhook never answers,
//! so the test gives both webhook configurations an `objectSelector` that matches nothing
//! (a field the add-on does not set: no conflict), and the API server alone decides on the
//! ClusterIssuer; cert-manager's controller never runs, so the test sets the ClusterIssuer's
//! `Ready` condition as cert-manager would.

use std::collections::BTreeMap;
use std::time::Instant;

use base64::Engine as _;

use lacave_integration_tests::k8slab::{Lab, kubectl, wait_for};

const ADDONS: &str = r#"[addons]
resync_secs = 2
[addons.keycloak]
enabled = true
[[addons.tenants]]
namespace = "team-a"
edit_groups = ["team-a-devs"]
view_groups = ["auditors"]
[identity]
enabled = true
"#;

/// What carries the add-on label, per kind: `kind/namespace/name` → (resourceVersion, generation).
const KINDS: &str = "customresourcedefinitions,storageclasses,namespaces,serviceaccounts,clusterroles,clusterrolebindings,roles,rolebindings,configmaps,secrets,services,deployments,daemonsets,ingressclasses,ingresses,mutatingwebhookconfigurations,validatingwebhookconfigurations,apiservices,clusterissuers,prometheuses,servicemonitors,scrapeconfigs";

fn labelled(
    lan: &lacave_integration_tests::netns::Netns,
    kubeconfig: &std::path::Path,
    bin: &str,
    selector: &str,
) -> BTreeMap<String, (String, String, String)> {
    let (ok, out) = kubectl(
        lan,
        kubeconfig,
        &["get", KINDS, "-A", "-l", selector, "-o", "json"],
        bin,
    );
    assert!(ok, "{out}");
    let list: serde_json::Value = serde_json::from_str(&out).unwrap();
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            let m = &i["metadata"];
            (
                format!(
                    "{}/{}/{}",
                    i["kind"].as_str().unwrap(),
                    m["namespace"].as_str().unwrap_or(""),
                    m["name"].as_str().unwrap()
                ),
                (
                    m["resourceVersion"].as_str().unwrap().to_string(),
                    m["generation"].to_string(),
                    m["labels"]["lacave.io/addon"].as_str().unwrap().to_string(),
                ),
            )
        })
        .collect()
}

#[test]
fn the_daemon_applies_every_addon_and_keeps_it_in_step() {
    lacave_integration_tests::netns::require_root("the add-on test");
    let kwok_dir = lacave_integration_tests::k8slab::script("kwok.sh", &[]);
    let lab = Lab::start_with(ADDONS);
    let (lan, api, bin, daemon) = (&lab.lan, &lab.api, &lab.bin, &lab.daemon);
    let cp = lab.node(1, "cp1", true);
    lab.register(&cp, "control-plane", serde_json::json!({}));
    cp.boot(&cp.host_key());
    wait_for(
        "cp1 ready",
        600,
        || daemon.log(),
        || (api.node(lan, "cp1")["state"] == "ready").then_some(()),
    );
    let ready_at = Instant::now();

    // The daemon's credential, its server checked to be the control plane on the test LAN.
    let text = std::fs::read_to_string(lab.state.path().join("cluster/lacave.kubeconfig"))
        .unwrap()
        .replace("https://kube.lacave:6443", "https://10.123.0.11:6443");
    lacave_integration_tests::k8slab::assert_servers_inside("lacave.kubeconfig", &text);
    cp.assert_kubeconfigs_inside();
    let kubeconfig = lab.state.path().join("test.kubeconfig");
    std::fs::write(&kubeconfig, &text).unwrap();
    let kc = |args: &[&str]| kubectl(lan, &kubeconfig, args, bin);
    // Server-side apply of one JSON object as the test's own field manager.
    let apply_as_test = |object: &str| {
        let path = lab.state.path().join("test-object.json");
        std::fs::write(&path, object).unwrap();
        let (ok, out) = kc(&[
            "apply",
            "--server-side",
            "--field-manager=lacave-test",
            "-f",
            path.to_str().unwrap(),
        ]);
        assert!(ok, "{object}: {out}");
    };

    // kwok takes over cp1 (its kubelet stopped; the control plane's containers keep running)
    // and runs two fake workers.
    cp.exec("systemctl stop kubelet");
    let mut kwok = lan
        .command(format!("{kwok_dir}/kwok"))
        .args(["-c", &format!("{kwok_dir}/stages.yaml"), "--kubeconfig"])
        .arg(&kubeconfig)
        .args([
            "--manage-all-nodes=false",
            "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
            "--node-ip=10.123.0.250",
            "--node-lease-duration-seconds=40",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // cp1's Node goes (its control-plane containers keep running): DaemonSets then want pods
    // on the kwok nodes only, which kwok makes ready.
    let (ok, out) = kc(&["delete", "node", "cp1"]);
    assert!(ok, "{out}");
    for n in ["fake-1", "fake-2"] {
        let node = format!(
            r#"{{"apiVersion":"v1","kind":"Node","metadata":{{"name":"{n}","annotations":{{"kwok.x-k8s.io/node":"fake"}},"labels":{{"type":"kwok","kubernetes.io/hostname":"{n}","kubernetes.io/os":"linux","kubernetes.io/arch":"amd64"}}}}}}"#
        );
        apply_as_test(&node);
    }

    let addons = || -> serde_json::Value {
        serde_json::from_str(&api.call(lan, "GET", "/api/v1/addons", None)).unwrap_or_default()
    };
    let state_of = |name: &str| -> String {
        addons()
            .as_array()
            .into_iter()
            .flatten()
            .find(|a| a["name"] == name)
            .map(|a| a["state"].as_str().unwrap_or("").to_string())
            .unwrap_or_default()
    };

    // The parts kwok cannot play (see the module comment).
    wait_for(
        "cert-manager's webhooks applied",
        120,
        || daemon.log(),
        || {
            let (ok, _) = kc(&[
                "get",
                "validatingwebhookconfiguration",
                "cert-manager-webhook",
            ]);
            ok.then_some(())
        },
    );
    for kind in [
        "ValidatingWebhookConfiguration",
        "MutatingWebhookConfiguration",
    ] {
        let patch = format!(
            r#"{{"apiVersion":"admissionregistration.k8s.io/v1","kind":"{kind}","metadata":{{"name":"cert-manager-webhook"}},"webhooks":[{{"name":"webhook.cert-manager.io","objectSelector":{{"matchLabels":{{"lacave-test/kwok-runs-no-webhook":"true"}}}}}}]}}"#
        );
        apply_as_test(&patch);
    }
    wait_for(
        "ClusterIssuer applied",
        120,
        || daemon.log(),
        || {
            kc(&["get", "clusterissuer", "ca-lacave-issuer"])
                .0
                .then_some(())
        },
    );
    let (ok, out) = kc(&[
        "patch",
        "clusterissuer",
        "ca-lacave-issuer",
        "--subresource=status",
        "--type=merge",
        "--field-manager=cert-manager-stand-in",
        "-p",
        r#"{"status":{"conditions":[{"type":"Ready","status":"True","reason":"KeyPairVerified","message":"played by the test"}]}}"#,
    ]);
    assert!(ok, "{out}");
    // kwok's nodes run no local-path-provisioner: the test provides the volume Keycloak's
    // database claims (pre-bound, any node), as the provisioner would.
    apply_as_test(
        r#"{"apiVersion":"v1","kind":"PersistentVolume","metadata":{"name":"lacave-test-postgres"},
            "spec":{"capacity":{"storage":"2Gi"},"accessModes":["ReadWriteOnce"],
            "storageClassName":"local-path","hostPath":{"path":"/tmp/lacave-test-postgres"},
            "claimRef":{"namespace":"keycloak","name":"data-postgres-0"}}}"#,
    );

    let enabled = [
        "cni",
        "cert-manager",
        "ca-issuer",
        "ingress",
        "dashboard",
        "metrics-server",
        "storage",
        "keycloak",
        "monitoring",
        "tenants",
    ];
    wait_for(
        "every add-on healthy",
        300,
        || {
            format!(
                "{}\n{}",
                serde_json::to_string_pretty(&addons()).unwrap(),
                daemon.log()
            )
        },
        || {
            enabled
                .iter()
                .all(|n| state_of(n) == "healthy")
                .then_some(())
        },
    );
    let elapsed = ready_at.elapsed().as_secs_f64();
    eprintln!("control plane Ready → every add-on applied and healthy: {elapsed:.1} s");

    // Every object carries the add-on label and is the `lacave` field manager's (Apply).
    let before = labelled(lan, &kubeconfig, bin, "lacave.io/addon");
    assert!(before.len() > 150, "{} objects", before.len());
    for addon in enabled {
        assert!(
            before.values().any(|v| v.2 == addon),
            "no object of {addon}"
        );
    }
    let (ok, out) = kc(&[
        "get",
        KINDS,
        "-A",
        "-l",
        "lacave.io/addon",
        "-o",
        "json",
        "--show-managed-fields",
    ]);
    assert!(ok, "{out}");
    let list: serde_json::Value = serde_json::from_str(&out).unwrap();
    for item in list["items"].as_array().unwrap() {
        let applied = item["metadata"]["managedFields"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["manager"] == "lacave" && m["operation"] == "Apply");
        assert!(
            applied,
            "{} {} is not applied by lacave",
            item["kind"], item["metadata"]["name"]
        );
    }
    // Keycloak's Secret holds the administrator's password the daemon generated (its realm is
    // declared there: tests/identity.rs, with a real Keycloak).
    let (ok, out) = kc(&[
        "-n",
        "keycloak",
        "get",
        "secret",
        "keycloak-admin",
        "-o",
        "jsonpath={.data.password}",
    ]);
    let password =
        std::fs::read_to_string(lab.state.path().join("identity/admin-password")).unwrap();
    assert!(
        ok && base64::engine::general_purpose::STANDARD
            .decode(out.trim())
            .unwrap()
            == password.trim().as_bytes(),
        "keycloak-admin holds the generated password"
    );
    // The daemon's DNS (dig) serves the dashboard's and Keycloak's names as the cluster's
    // ingress, with no record of the operator's.
    for name in ["dashboard.kube.lacave", "login.kube.lacave"] {
        let out = lan
            .command("dig")
            .args(["+short", "@10.123.0.1", name, "CNAME"])
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "kube.lacave.",
            "{name}"
        );
    }
    // The storage add-on's class is the cluster's default.
    let (ok, out) = kc(&[
        "get",
        "storageclass",
        "local-path",
        "-o",
        "jsonpath={.metadata.annotations.storageclass\\.kubernetes\\.io/is-default-class}",
    ]);
    assert!(
        ok && out.trim() == "true",
        "local-path is the default class: {out}"
    );
    // CRDs Established.
    let (ok, out) = kc(&["get", "crd", "-l", "lacave.io/addon", "-o", "json"]);
    assert!(ok, "{out}");
    let crds: serde_json::Value = serde_json::from_str(&out).unwrap();
    let crds = crds["items"].as_array().unwrap();
    assert!(crds.len() > 30, "{} CRDs", crds.len());
    for crd in crds {
        assert!(
            crd["status"]["conditions"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["type"] == "Established" && c["status"] == "True"),
            "{} Established",
            crd["metadata"]["name"]
        );
    }

    // A pass with nothing to change writes nothing.
    let writes = |a: &serde_json::Value| -> BTreeMap<String, u64> {
        a.as_array()
            .unwrap()
            .iter()
            .map(|x| {
                (
                    x["name"].as_str().unwrap().to_string(),
                    x["writes_total"].as_u64().unwrap(),
                )
            })
            .collect()
    };
    let last = |a: &serde_json::Value| a[0]["last_reconcile"].as_str().unwrap_or("").to_string();
    let w0 = writes(&addons());
    let t0 = last(&addons());
    api.call(lan, "POST", "/api/v1/addons/cni/apply", None);
    wait_for(
        "two more passes",
        30,
        || daemon.log(),
        || {
            let a = addons();
            (last(&a) != t0).then_some(())
        },
    );
    eprintln!(
        "a pass with nothing to change: {} ms (every add-on)",
        addons()[0]["last_pass_ms"]
    );
    std::thread::sleep(std::time::Duration::from_secs(3));
    assert_eq!(writes(&addons()), w0, "a pass with nothing to change wrote");
    let after = labelled(lan, &kubeconfig, bin, "lacave.io/addon");
    let spec_changes: Vec<&String> = before
        .iter()
        .filter(|(k, v)| {
            after.get(*k).is_none_or(|a| {
                // An APIService's status (written by the aggregator, which finds no
                // metrics-server behind it under kwok) moves its resourceVersion.
                a.1 != v.1 || (v.1 == "null" && a.0 != v.0 && !k.starts_with("APIService/"))
            })
        })
        .map(|(k, _)| k)
        .collect();
    assert!(
        spec_changes.is_empty(),
        "objects changed by a pass with nothing to do: {spec_changes:?}"
    );

    // A deleted object comes back.
    let uid = |args: &[&str]| kc(&[args, &["-o", "jsonpath={.metadata.uid}"]].concat()).1;
    let old = uid(&["get", "deployment", "headlamp", "-n", "headlamp"]);
    let (ok, out) = kc(&[
        "delete",
        "deployment",
        "headlamp",
        "-n",
        "headlamp",
        "--wait=false",
    ]);
    assert!(ok, "{out}");
    let (ok, out) = kc(&["delete", "clusterrolebinding", "headlamp-admin-user"]);
    assert!(ok, "{out}");
    wait_for(
        "deleted objects back",
        30,
        || daemon.log(),
        || {
            let new = uid(&["get", "deployment", "headlamp", "-n", "headlamp"]);
            (!new.is_empty()
                && new != old
                && !new.contains("NotFound")
                && kc(&["get", "clusterrolebinding", "headlamp-admin-user"]).0)
                .then_some(())
        },
    );

    // A field another manager changed is reported, not taken back.
    let (ok, out) = kc(&[
        "scale",
        "deployment",
        "metrics-server",
        "-n",
        "kube-system",
        "--replicas=3",
    ]);
    assert!(ok, "{out}");
    let status = wait_for(
        "metrics-server conflict",
        30,
        || daemon.log(),
        || {
            let s: serde_json::Value =
                serde_json::from_str(&api.call(lan, "GET", "/api/v1/addons/metrics-server", None))
                    .ok()?;
            (s["state"] == "conflict").then_some(s)
        },
    );
    let conflicts = status["conflicts"].to_string();
    assert!(
        conflicts.contains("Deployment kube-system/metrics-server")
            && conflicts.contains("replicas"),
        "{status}"
    );
    let (_, replicas) = kc(&[
        "get",
        "deployment",
        "metrics-server",
        "-n",
        "kube-system",
        "-o",
        "jsonpath={.spec.replicas}",
    ]);
    assert_eq!(replicas.trim(), "3", "the conflict was forced");
    let (_, metrics) = (0, lan.http_get("http://10.123.0.1:8080/metrics"));
    assert!(
        metrics.contains("lacave_addon_healthy{addon=\"cert-manager\",state=\"healthy\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("lacave_addon_conflicts_total{addon=\"metrics-server\"} 1"),
        "{metrics}"
    );

    // RBAC of a tenant: its groups as the API server names OIDC groups ([cluster]
    // oidc_prefix, `oidc:`); the bare name (a certificate's group, say) is not bound.
    let can = |args: &[&str]| {
        kc(&[&["auth", "can-i"], args].concat())
            .1
            .trim()
            .to_string()
    };
    assert_eq!(
        can(&[
            "create",
            "deployments",
            "-n",
            "team-a",
            "--as",
            "bob",
            "--as-group",
            "team-a-devs"
        ]),
        "no"
    );
    assert_eq!(
        can(&[
            "create",
            "deployments",
            "-n",
            "team-a",
            "--as",
            "bob",
            "--as-group",
            "oidc:team-a-devs"
        ]),
        "yes"
    );
    assert_eq!(
        can(&[
            "create",
            "deployments",
            "-n",
            "default",
            "--as",
            "bob",
            "--as-group",
            "oidc:team-a-devs"
        ]),
        "no"
    );
    assert_eq!(
        can(&[
            "get",
            "pods",
            "-n",
            "team-a",
            "--as",
            "eve",
            "--as-group",
            "oidc:auditors"
        ]),
        "yes"
    );
    assert_eq!(
        can(&[
            "create",
            "pods",
            "-n",
            "team-a",
            "--as",
            "eve",
            "--as-group",
            "oidc:auditors"
        ]),
        "no"
    );

    // The dashboard's admin token works against the API server.
    let answer: serde_json::Value = serde_json::from_str(&api.call(
        lan,
        "POST",
        "/api/v1/addons/dashboard/token",
        Some(r#"{"ttl":"10m"}"#),
    ))
    .unwrap();
    let token = answer["token"]
        .as_str()
        .unwrap_or_else(|| panic!("{answer}"));
    let mut with_token: serde_json::Value = serde_json::from_str(&text).unwrap();
    with_token["users"][0]["user"] = serde_json::json!({ "token": token });
    let token_config = lab.state.path().join("token.kubeconfig");
    std::fs::write(&token_config, with_token.to_string()).unwrap();
    let (ok, out) = kubectl(lan, &token_config, &["auth", "can-i", "*", "*"], bin);
    assert!(ok && out.trim() == "yes", "admin-user token: {out}");

    // Turning one add-on off (config + SIGHUP) prunes exactly its objects.
    let config = std::fs::read_to_string(&daemon.config_path).unwrap();
    std::fs::write(
        &daemon.config_path,
        config.replace(
            "[addons]\n",
            "[addons]\nmetrics-server = { enabled = false }\n",
        ),
    )
    .unwrap();
    let (ok, out) = (
        true,
        std::process::Command::new("kill")
            .args(["-HUP", &daemon.child.id().to_string()])
            .output()
            .unwrap(),
    );
    assert!(ok && out.status.success());
    wait_for(
        "metrics-server removed",
        60,
        || daemon.log(),
        || (state_of("metrics-server") == "removed").then_some(()),
    );
    let left = labelled(lan, &kubeconfig, bin, "lacave.io/addon");
    let theirs: Vec<&String> = left
        .iter()
        .filter(|(_, v)| v.2 == "metrics-server")
        .map(|(k, _)| k)
        .collect();
    // A Deployment being deleted in the background may still be listed for a moment.
    wait_for(
        "metrics-server's objects gone",
        30,
        || format!("{theirs:?}"),
        || {
            labelled(lan, &kubeconfig, bin, "lacave.io/addon=metrics-server")
                .is_empty()
                .then_some(())
        },
    );
    let others_before: Vec<&String> = before
        .iter()
        .filter(|(_, v)| v.2 != "metrics-server")
        .map(|(k, _)| k)
        .collect();
    let others_after: Vec<&String> = left
        .iter()
        .filter(|(_, v)| v.2 != "metrics-server")
        .map(|(k, _)| k)
        .collect();
    assert_eq!(
        others_before, others_after,
        "turning metrics-server off touched other add-ons"
    );

    let _ = kwok.kill();
    let _ = kwok.wait();
}

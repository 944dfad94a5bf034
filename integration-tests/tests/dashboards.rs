//! The monitoring add-on's lacave dashboards (`resources/monitoring/lacave-*.json`) and alert
//! rules (`lacave-rules.yaml`) query only metrics the daemon serves: every `lacave_…` name in
//! their expressions is a metric family of a running daemon's `/metrics` (cluster and add-ons
//! on, so their families are there too). The rules also pass the real `promtool check rules`
//! (built from the Go module proxy by `k8s/promtool.sh`, cached), which parses every PromQL
//! expression; the dashboards' expressions go through it as rules too.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use lacave_integration_tests::TestDaemon;

fn monitoring() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../resources/monitoring")
}

/// Every metric name an expression uses (`lacave_…`, not a label value).
fn lacave_names(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while let Some(at) = expr[i..].find("lacave_") {
        let start = i + at;
        let before_ok = start == 0 || {
            let b = bytes[start - 1];
            !(b.is_ascii_alphanumeric() || b == b'_' || b == b'"')
        };
        let end = expr[start..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .map_or(expr.len(), |e| start + e);
        if before_ok {
            out.insert(expr[start..end].to_string());
        }
        i = end;
    }
    out
}

/// (where, expression) of every dashboard panel target.
fn dashboard_exprs() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for name in ["lacave-daemon.json", "lacave-cluster.json"] {
        let text = std::fs::read_to_string(monitoring().join(name)).unwrap();
        let d: serde_json::Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(
            d["uid"].as_str().is_some_and(|u| u.starts_with("lacave-")),
            "{name}: uid"
        );
        let panels = d["panels"].as_array().expect("panels");
        assert!(panels.len() >= 6, "{name}: a dashboard, not a stub");
        let ids: BTreeSet<u64> = panels.iter().map(|p| p["id"].as_u64().unwrap()).collect();
        assert_eq!(ids.len(), panels.len(), "{name}: panel ids are unique");
        for p in panels {
            assert_eq!(
                p["datasource"]["uid"], "${datasource}",
                "{name}: {}",
                p["title"]
            );
            for t in p["targets"].as_array().unwrap() {
                out.push((
                    format!("{name}: {}", p["title"].as_str().unwrap()),
                    t["expr"].as_str().unwrap().to_string(),
                ));
            }
        }
    }
    out
}

/// (alert, expression) of every rule of lacave-rules.yaml.
fn rule_exprs() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(monitoring().join("lacave-rules.yaml")).unwrap();
    let doc: serde_json::Value = serde_yaml::from_str(&text).unwrap();
    let mut out = Vec::new();
    for group in doc["spec"]["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            let alert = rule["alert"].as_str().unwrap().to_string();
            assert!(
                rule["labels"]["severity"].as_str().is_some()
                    && rule["annotations"]["summary"].as_str().is_some(),
                "{alert}: severity and summary"
            );
            out.push((alert, rule["expr"].as_str().unwrap().to_string()));
        }
    }
    out
}

#[tokio::test]
async fn dashboards_and_alerts_query_only_metrics_the_daemon_serves() {
    let d = TestDaemon::start_with("[cluster]\nenabled = true\n").await;
    let text = reqwest::get(format!("{}/metrics", d.url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let families: BTreeSet<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect();
    let exprs: Vec<(String, String)> = dashboard_exprs().into_iter().chain(rule_exprs()).collect();
    let mut used = BTreeSet::new();
    for (what, expr) in &exprs {
        let names = lacave_names(expr);
        assert!(!names.is_empty(), "{what}: {expr} queries no lacave metric");
        for name in names {
            assert!(
                families.contains(&name),
                "{what}: {expr} queries {name}, which /metrics does not serve:\n{families:?}"
            );
            used.insert(name);
        }
    }
    // What the issue asks the alerts to cover.
    let alerts: BTreeSet<String> = rule_exprs().into_iter().map(|(a, _)| a).collect();
    for alert in [
        "LacaveNodeFailed",
        "LacaveAddonUnhealthy",
        "LacaveStoreNotWritable",
        "LacaveConnectionsShed",
        "LacaveClusterCertificateExpiresSoon",
    ] {
        assert!(alerts.contains(alert), "{alert} in {alerts:?}");
    }
    eprintln!(
        "{} expressions, {} metric families used: {used:?}",
        exprs.len(),
        used.len()
    );
}

#[test]
fn promtool_parses_every_rule_and_dashboard_expression() {
    let Ok(promtool) = std::env::var("LACAVE_PROMTOOL")
        .map(PathBuf::from)
        .or_else(|_| {
            let out = std::process::Command::new(
                Path::new(env!("CARGO_MANIFEST_DIR")).join("k8s/promtool.sh"),
            )
            .output()
            .map_err(|e| e.to_string())?;
            let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if out.status.success() {
                Ok(PathBuf::from(dir).join("promtool"))
            } else {
                Err(String::from_utf8_lossy(&out.stderr).into_owned())
            }
        })
    else {
        panic!("promtool: k8s/promtool.sh failed (scripts/test builds it)");
    };
    // The PrometheusRule's spec is a Prometheus rule file; the dashboards' expressions are
    // checked as recording rules of a second group.
    let text = std::fs::read_to_string(monitoring().join("lacave-rules.yaml")).unwrap();
    let doc: serde_json::Value = serde_yaml::from_str(&text).unwrap();
    let mut groups = doc["spec"]["groups"].as_array().unwrap().clone();
    let records: Vec<serde_json::Value> = dashboard_exprs()
        .into_iter()
        .enumerate()
        .map(|(i, (_, expr))| serde_json::json!({"record": format!("lacave:dashboard_{i}"), "expr": expr}))
        .collect();
    groups.push(serde_json::json!({"name": "dashboards", "rules": records}));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rules.yaml");
    std::fs::write(
        &file,
        serde_yaml::to_string(&serde_json::json!({"groups": groups})).unwrap(),
    )
    .unwrap();
    let out = std::process::Command::new(&promtool)
        .args(["check", "rules"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool check rules: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn names_are_read_from_expressions() {
    let n = lacave_names(
        r#"sum by (state) (rate(lacave_nodes{state="lacave_x"}[5m])) / lacave_build_info"#,
    );
    assert_eq!(
        n,
        ["lacave_build_info", "lacave_nodes"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    );
}

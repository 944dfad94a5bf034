//! The operator API end to end, in-process on port 0: authentication, validation that names
//! each bad field, uniqueness conflicts, the node lifecycle, events and metrics.

use lacave_integration_tests::TestDaemon;
use reqwest::StatusCode;
use serde_json::{Value, json};

struct Api {
    http: reqwest::Client,
    url: String,
    token: String,
}

impl Api {
    fn new(d: &TestDaemon) -> Api {
        Api {
            http: reqwest::Client::new(),
            url: d.url(),
            token: d.token(),
        }
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut req = self
            .http
            .request(method.parse().unwrap(), format!("{}{path}", self.url))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let ctype = resp
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string());
        let text = resp.text().await.unwrap();
        if !status.is_success() {
            assert_eq!(
                ctype.as_deref(),
                Some("application/problem+json"),
                "{method} {path}: errors are problem+json"
            );
        }
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap()
        };
        (status, value)
    }

    async fn metrics(&self) -> String {
        self.http
            .get(format!("{}/metrics", self.url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

fn kube01() -> Value {
    json!({
        "mac": "52:54:00:AA:00:01",
        "hostname": "kube01",
        "ip": "192.168.1.21",
        "role": "control-plane",
        "labels": {"disktype": "ssd"}
    })
}

#[tokio::test]
async fn requests_without_the_right_token_are_refused() {
    let d = TestDaemon::start().await;
    let http = reqwest::Client::new();
    let url = format!("{}/api/v1/nodes", d.url());

    let resp = http.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        resp.headers()["www-authenticate"],
        "Bearer realm=\"lacave\""
    );
    let resp = http
        .get(&url)
        .bearer_auth("wrong-token-wrong-token")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["code"], "unauthorized");
    // A write with a wrong token changes nothing.
    let resp = http
        .post(&url)
        .bearer_auth("wrong-token-wrong-token")
        .json(&kube01())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let resp = http.get(&url).bearer_auth(d.token()).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.json::<Value>().await.unwrap(), json!([]));
    // Health needs no token.
    let resp = http
        .get(format!("{}/healthz", d.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test]
async fn registration_canonicalises_and_conflicts_name_the_field() {
    let d = TestDaemon::start().await;
    let api = Api::new(&d);

    let (status, node) = api.call("POST", "/api/v1/nodes", Some(kube01())).await;
    assert_eq!(status, StatusCode::CREATED, "{node}");
    assert_eq!(node["mac"], "52:54:00:aa:00:01");
    assert_eq!(node["state"], "registered");
    assert_eq!(node["install_disk"], "/dev/sda");
    assert_eq!(node["labels"], json!({"disktype": "ssd"}));

    for (body, field) in [
        (
            json!({"mac": "5254.00aa.0001", "hostname": "kube02", "ip": "192.168.1.22", "role": "worker"}),
            "mac",
        ),
        (
            json!({"mac": "52:54:00:aa:00:02", "hostname": "KUBE01", "ip": "192.168.1.22", "role": "worker"}),
            "hostname",
        ),
        (
            json!({"mac": "52:54:00:aa:00:02", "hostname": "kube02", "ip": "192.168.1.21", "role": "worker"}),
            "ip",
        ),
    ] {
        let (status, problem) = api.call("POST", "/api/v1/nodes", Some(body)).await;
        assert_eq!(status, StatusCode::CONFLICT, "{problem}");
        assert_eq!(problem["code"], "conflict");
        assert_eq!(problem["field"], field, "{problem}");
        assert!(
            problem["detail"].as_str().unwrap().contains("kube01"),
            "the holder is named: {problem}"
        );
    }
    let (_, list) = api.call("GET", "/api/v1/nodes", None).await;
    assert_eq!(list.as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn invalid_fields_are_each_named() {
    let d = TestDaemon::start().await;
    let api = Api::new(&d);
    let cases = [
        ("mac", json!("52:54:00:aa:00"), "not a MAC address"),
        ("mac", json!("ff:ff:ff:ff:ff:ff"), "broadcast"),
        ("hostname", json!("kube.lacave"), "no dots"),
        ("hostname", json!("-kube"), "RFC 1123"),
        ("ip", json!("192.168.1.300"), "not an IPv4 address"),
        ("ip", json!("127.0.0.1"), "loopback"),
        ("role", json!("master"), "not a role"),
        ("install_disk", json!("sda"), "not a device path"),
        (
            "boot_file",
            json!("../../etc/passwd"),
            "inside the TFTP root",
        ),
        ("labels", json!({"bad key": "x"}), "label key"),
        ("labels", json!({"k": 1}), "must be a string"),
        ("mac", json!(525400), "must be a string"),
    ];
    for (field, value, reason) in cases {
        let mut body = kube01();
        body[field] = value.clone();
        let (status, problem) = api.call("POST", "/api/v1/nodes", Some(body)).await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{field}={value}: {problem}"
        );
        assert_eq!(problem["code"], "invalid_field");
        assert_eq!(problem["field"], field, "{problem}");
        let why = problem["errors"][0]["reason"].as_str().unwrap();
        assert!(why.contains(reason), "{field}={value}: {why}");
    }

    // An unknown field, and `state`, which only the lifecycle sets.
    for (extra, reason) in [("colour", "unknown field"), ("state", "lifecycle")] {
        let mut body = kube01();
        body[extra] = json!("x");
        let (status, problem) = api.call("POST", "/api/v1/nodes", Some(body)).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(problem["field"], extra);
        assert!(
            problem["detail"].as_str().unwrap().contains(reason),
            "{problem}"
        );
    }

    // Every problem at once: three missing fields and a bad one.
    let (status, problem) = api
        .call("POST", "/api/v1/nodes", Some(json!({"mac": "zz"})))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let fields: Vec<&str> = problem["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["mac", "hostname", "ip", "role"]);

    // Not JSON, and not an object.
    let resp = reqwest::Client::new()
        .post(format!("{}/api/v1/nodes", d.url()))
        .bearer_auth(d.token())
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let (status, _) = api.call("POST", "/api/v1/nodes", Some(json!([1, 2]))).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);

    let (_, list) = api.call("GET", "/api/v1/nodes", None).await;
    assert_eq!(list, json!([]), "nothing invalid was stored");
}

#[tokio::test]
async fn show_patch_reinstall_delete_with_events_and_metrics() {
    let d = TestDaemon::start().await;
    let api = Api::new(&d);
    api.call("POST", "/api/v1/nodes", Some(kube01())).await;
    let (status, _) = api
        .call(
            "POST",
            "/api/v1/nodes",
            Some(json!({"mac": "52:54:00:aa:00:02", "hostname": "kube02", "ip": "192.168.1.22", "role": "worker"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);

    // Shown by hostname or by MAC, in any of its forms.
    let (status, by_name) = api.call("GET", "/api/v1/nodes/kube01", None).await;
    assert_eq!(status, StatusCode::OK);
    let (_, by_mac) = api
        .call("GET", "/api/v1/nodes/52-54-00-AA-00-01", None)
        .await;
    assert_eq!(by_name, by_mac);
    let (status, problem) = api.call("GET", "/api/v1/nodes/kube99", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(problem["code"], "not_found");
    let (status, _) = api.call("GET", "/api/v1/nodes/not%20a%20name", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Patch: rename, move, relabel, own disk; conflicts and bad values name the field.
    let (status, node) = api
        .call(
            "PATCH",
            "/api/v1/nodes/kube01",
            Some(json!({"hostname": "kube11", "ip": "192.168.1.31", "labels": {"zone": "a"}, "install_disk": "/dev/nvme0n1"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{node}");
    assert_eq!(node["hostname"], "kube11");
    assert_eq!(node["install_disk"], "/dev/nvme0n1");
    let (status, problem) = api
        .call(
            "PATCH",
            "/api/v1/nodes/kube11",
            Some(json!({"ip": "192.168.1.22"})),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(problem["field"], "ip");
    for (body, field) in [
        (json!({"role": "boss"}), "role"),
        (json!({"state": "ready"}), "state"),
        (json!({"hostname": null}), "hostname"),
        (json!({}), ""),
    ] {
        let (status, problem) = api.call("PATCH", "/api/v1/nodes/kube11", Some(body)).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
        assert_eq!(problem["field"], field, "{problem}");
    }
    let (_, node) = api
        .call(
            "PATCH",
            "/api/v1/nodes/kube11",
            Some(json!({"install_disk": null})),
        )
        .await;
    assert_eq!(
        node["install_disk"], "/dev/sda",
        "null returns to the default"
    );
    let (_, node) = api
        .call(
            "PATCH",
            "/api/v1/nodes/kube11",
            Some(json!({"boot_file": "snponly.efi"})),
        )
        .await;
    assert_eq!(node["boot_file"], "snponly.efi");
    let (_, node) = api
        .call(
            "PATCH",
            "/api/v1/nodes/kube11",
            Some(json!({"boot_file": null})),
        )
        .await;
    assert_eq!(node["boot_file"], serde_json::Value::Null);
    let (status, _) = api.call("GET", "/api/v1/nodes/kube01", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "the old name is gone");

    // Reinstall goes back to registered, with an event.
    let (status, node) = api
        .call("POST", "/api/v1/nodes/kube11/reinstall", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(node["state"], "registered");

    let (_, events) = api.call("GET", "/api/v1/nodes/kube11/events", None).await;
    let kinds: Vec<(&str, &str)> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["kind"].as_str().unwrap(), e["message"].as_str().unwrap()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("created", "registered"),
            ("updated", "updated hostname, ip, labels, install_disk"),
            ("updated", "updated install_disk"),
            ("updated", "updated boot_file"),
            ("updated", "updated boot_file"),
            ("transition", "reinstall requested by operator"),
        ]
    );
    let seqs: Vec<u64> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "events are ordered");

    // Delete frees the node's MAC, hostname and IP.
    let (status, _) = api.call("DELETE", "/api/v1/nodes/kube11", None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = api.call("DELETE", "/api/v1/nodes/kube11", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = api.call("POST", "/api/v1/nodes", Some(kube01())).await;
    assert_eq!(status, StatusCode::CREATED);

    // Metrics reflect all of the above.
    let m = api.metrics().await;
    for line in [
        "lacave_nodes{state=\"registered\"} 2",
        "lacave_http_requests_total{route=\"/api/v1/nodes\",method=\"POST\",status=\"201\"} 3",
        "lacave_http_requests_total{route=\"/api/v1/nodes/{name}\",method=\"PATCH\",status=\"422\"} 4",
        "lacave_http_requests_total{route=\"/api/v1/nodes/{name}\",method=\"DELETE\",status=\"404\"} 1",
        "lacave_http_requests_total{route=\"/api/v1/nodes/{name}/reinstall\",method=\"POST\",status=\"200\"} 1",
    ] {
        assert!(m.contains(line), "missing {line} in\n{m}");
    }
}

#[tokio::test]
async fn unknown_endpoints_get_a_problem() {
    let d = TestDaemon::start().await;
    let api = Api::new(&d);
    let (status, problem) = api.call("GET", "/api/v1/nope", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(problem["code"], "not_found");
}

#[tokio::test]
async fn the_node_list_is_never_stale_and_supports_etags() {
    let d = TestDaemon::start().await;
    let api = Api::new(&d);
    let http = reqwest::Client::new();
    let url = format!("{}/api/v1/nodes", d.url());
    let get = |etag: Option<String>| {
        let mut req = http.get(&url).bearer_auth(d.token());
        if let Some(etag) = etag {
            req = req.header("if-none-match", etag);
        }
        req.send()
    };

    let first = get(None).await.unwrap();
    let etag = first.headers()["etag"].to_str().unwrap().to_string();
    assert_eq!(first.json::<Value>().await.unwrap(), json!([]));
    let again = get(Some(etag.clone())).await.unwrap();
    assert_eq!(again.status(), StatusCode::NOT_MODIFIED);

    // Every kind of write shows up in the very next list.
    api.call("POST", "/api/v1/nodes", Some(kube01())).await;
    let resp = get(Some(etag.clone())).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let etag2 = resp.headers()["etag"].to_str().unwrap().to_string();
    assert_ne!(etag, etag2);
    assert_eq!(resp.json::<Value>().await.unwrap()[0]["hostname"], "kube01");
    api.call(
        "PATCH",
        "/api/v1/nodes/kube01",
        Some(json!({"role": "worker"})),
    )
    .await;
    let (_, list) = api.call("GET", "/api/v1/nodes", None).await;
    assert_eq!(list[0]["role"], "worker");
    api.call("POST", "/api/v1/nodes/kube01/reinstall", None)
        .await;
    api.call("DELETE", "/api/v1/nodes/kube01", None).await;
    let (_, list) = api.call("GET", "/api/v1/nodes", None).await;
    assert_eq!(list, json!([]));
}

#[tokio::test]
async fn metric_labels_come_from_a_closed_set() {
    let d = TestDaemon::start().await;
    let api = Api::new(&d);
    // Without a token, anyone can send these: made-up methods and paths.
    for i in 0..40 {
        let method = reqwest::Method::from_bytes(format!("M{i}THOD").as_bytes()).unwrap();
        let _ = api
            .http
            .request(method, format!("{}/healthz", api.url))
            .send()
            .await
            .unwrap();
        let _ = api
            .http
            .get(format!("{}/nope/{i}", api.url))
            .send()
            .await
            .unwrap();
    }
    let metrics = api.metrics().await;
    assert!(!metrics.contains("M0THOD"), "a raw method became a label");
    assert!(!metrics.contains("/nope/"), "a raw path became a label");
    assert!(metrics.contains("method=\"other\""), "{metrics}");
    let http_series = metrics
        .lines()
        .filter(|l| l.starts_with("lacave_http_requests_total{"))
        .count();
    assert!(http_series < 10, "{http_series} series: {metrics}");
}

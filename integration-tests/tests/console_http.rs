//! The console's sessions and live stream at the HTTP level, on the HTTPS API listener
//! (the browser test, `console.rs`, uses plain HTTP inside its namespace): the cookie's
//! attributes, the cross-site checks one by one, sessions across a restart, logout, and the
//! event stream's resume rules.

use std::time::Duration;

use lacave_integration_tests::{HTTPS_API, TestDaemon, node_request};

fn client(d: &TestDaemon) -> reqwest::Client {
    let certs = reqwest::Certificate::from_pem_bundle(&d.ca_pem()).unwrap();
    reqwest::Client::builder()
        .tls_certs_only(certs)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// Logs in; returns the `Cookie` header value and the CSRF token.
async fn login(d: &TestDaemon, http: &reqwest::Client) -> (String, String) {
    let base = d.api_url();
    let r = http
        .post(format!("{base}/console/login"))
        .header("Origin", &base)
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(format!("token={}", d.token()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let set = r.headers()["set-cookie"].to_str().unwrap().to_string();
    for attr in [
        "HttpOnly",
        "SameSite=Strict",
        "Secure",
        "Max-Age=43200",
        "Path=/",
    ] {
        assert!(set.contains(attr), "{attr} in {set}");
    }
    let cookie = set.split(';').next().unwrap().to_string();
    let session: serde_json::Value = http
        .get(format!("{base}/console/session"))
        .header("Cookie", &cookie)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    (cookie, session["csrf"].as_str().unwrap().to_string())
}

#[tokio::test]
async fn console_sessions_resist_cross_site_requests_and_survive_restarts() {
    let mut d = TestDaemon::start_with(HTTPS_API).await;
    let http = client(&d);
    let base = d.api_url();

    // Every response of the console carries the strict policy.
    let r = http
        .get(format!("{base}/console/login"))
        .send()
        .await
        .unwrap();
    let csp = r.headers()["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"));
    assert!(!csp.contains("unsafe-inline"));

    // A login posted by another site's page is refused, whatever the token.
    let r = http
        .post(format!("{base}/console/login"))
        .header("Origin", "https://evil.example")
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(format!("token={}", d.token()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.headers().get("set-cookie").is_none());

    let (cookie, csrf) = login(&d, &http).await;
    let nodes = format!("{base}/api/v1/nodes");
    let body = serde_json::to_value(node_request(1)).unwrap();
    let post = |origin: Option<&str>, token: Option<&str>, site: Option<&str>| {
        let mut req = http.post(&nodes).header("Cookie", &cookie).json(&body);
        if let Some(o) = origin {
            req = req.header("Origin", o);
        }
        if let Some(t) = token {
            req = req.header("X-Lacave-Csrf", t);
        }
        if let Some(s) = site {
            req = req.header("Sec-Fetch-Site", s);
        }
        req.send()
    };
    // Reads need only the cookie; writes need the CSRF token, from this origin.
    let r = http
        .get(&nodes)
        .header("Cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    for (origin, token, site, why) in [
        (Some(base.as_str()), None, None, "no CSRF token"),
        (
            Some(base.as_str()),
            Some("wrong"),
            None,
            "a wrong CSRF token",
        ),
        (
            Some("https://evil.example"),
            Some(csrf.as_str()),
            None,
            "another origin",
        ),
        (
            None,
            Some(csrf.as_str()),
            Some("cross-site"),
            "Sec-Fetch-Site: cross-site",
        ),
        (
            None,
            Some(csrf.as_str()),
            Some("same-site"),
            "Sec-Fetch-Site: same-site",
        ),
    ] {
        let r = post(origin, token, site).await.unwrap();
        assert_eq!(r.status(), 403, "{why}");
    }
    let r = post(Some(&base), Some(&csrf), Some("same-origin"))
        .await
        .unwrap();
    assert_eq!(r.status(), 201);

    // The list comes gzipped to a client that takes it (a thousand nodes: ~10x fewer bytes),
    // the same JSON once decoded.
    let plain = http
        .get(&nodes)
        .header("Cookie", &cookie)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let zipped = http
        .get(&nodes)
        .header("Cookie", &cookie)
        .header("Accept-Encoding", "gzip, deflate")
        .send()
        .await
        .unwrap();
    assert_eq!(zipped.headers()["content-encoding"], "gzip");
    let zipped = zipped.bytes().await.unwrap();
    let mut decoded = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&zipped[..]), &mut decoded)
        .unwrap();
    assert_eq!(decoded, plain);

    // The live stream: from a position, then resumed by Last-Event-ID with nothing twice.
    let list = http
        .get(&nodes)
        .header("Cookie", &cookie)
        .send()
        .await
        .unwrap();
    let head: u64 = list.headers()["lacave-event-seq"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    d.client().create_node(&node_request(2)).await.unwrap();
    d.client().create_node(&node_request(3)).await.unwrap();
    let seqs = read_stream(
        &http,
        &format!("{base}/api/v1/events?after={head}"),
        &cookie,
        None,
        2,
    )
    .await;
    assert_eq!(seqs.len(), 2);
    assert!(seqs[0] > head && seqs[1] > seqs[0]);
    let again = read_stream(
        &http,
        &format!("{base}/api/v1/events?after={head}"),
        &cookie,
        Some(seqs[0]),
        1,
    )
    .await;
    assert_eq!(again, vec![seqs[1]], "Last-Event-ID wins over ?after=");

    // Sessions are stored: a restart keeps the operator logged in, and the stream resumes
    // from the events before it.
    d.restart().await;
    let base = d.api_url();
    let http = client(&d);
    let r = http
        .get(format!("{base}/console/session"))
        .header("Cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "still logged in after a restart");
    d.client().create_node(&node_request(4)).await.unwrap();
    let after_restart = read_stream(
        &http,
        &format!("{base}/api/v1/events"),
        &cookie,
        Some(seqs[0]),
        2,
    )
    .await;
    assert_eq!(after_restart[0], seqs[1]);
    assert!(after_restart[1] > seqs[1]);
    // A position from another registry gets a reset, not silence.
    let text = read_raw(
        &http,
        &format!("{base}/api/v1/events?after=999999999999"),
        &cookie,
    )
    .await;
    assert!(text.contains("event: reset"), "{text}");

    // Logout ends the session for good; the cookie opens nothing any more.
    let r = logout(&http, &base, &cookie, &csrf).await;
    assert_eq!(r.status(), 204);
    assert!(
        r.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    for path in ["/console/session", "/api/v1/nodes", "/api/v1/events"] {
        let r = http
            .get(format!("{base}{path}"))
            .header("Cookie", &cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{path} after logout");
    }
    // The registry holds no usable cookie: only its SHA-256.
    let backup = http
        .get(format!("{base}/api/v1/backup"))
        .bearer_auth(d.token())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let secret = cookie.split_once('=').unwrap().1;
    assert!(!backup.contains(secret));
}

/// Reads the stream until `done` says the text so far is enough; returns it.
async fn read_until(
    http: &reqwest::Client,
    url: &str,
    cookie: &str,
    last_event_id: Option<u64>,
    done: impl Fn(&str) -> bool,
) -> String {
    let mut req = http.get(url).header("Cookie", cookie);
    if let Some(id) = last_event_id {
        req = req.header("Last-Event-ID", id.to_string());
    }
    let mut r = req.send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let mut text = String::new();
    while !done(&text) {
        let chunk = tokio::time::timeout(Duration::from_secs(5), r.chunk())
            .await
            .expect("the stream sends")
            .unwrap()
            .expect("the stream stays open");
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    text
}

/// Logs the session out as the console does (its origin, its CSRF token).
async fn logout(http: &reqwest::Client, base: &str, cookie: &str, csrf: &str) -> reqwest::Response {
    http.post(format!("{base}/console/logout"))
        .header("Cookie", cookie)
        .header("Origin", base)
        .header("X-Lacave-Csrf", csrf)
        .send()
        .await
        .unwrap()
}

fn ids(text: &str) -> Vec<u64> {
    text.lines()
        .filter_map(|l| l.strip_prefix("id: "))
        .map(|v| v.parse().unwrap())
        .collect()
}

/// Reads `count` events' ids from the stream.
async fn read_stream(
    http: &reqwest::Client,
    url: &str,
    cookie: &str,
    last_event_id: Option<u64>,
    count: usize,
) -> Vec<u64> {
    let text = read_until(http, url, cookie, last_event_id, |t| ids(t).len() >= count).await;
    assert!(text.contains("event: node"), "{text}");
    ids(&text)
}

async fn read_raw(http: &reqwest::Client, url: &str, cookie: &str) -> String {
    read_until(http, url, cookie, None, |t| t.contains("event:")).await
}

/// Rotating the API token ends every console session at once (the old cookie kept full
/// access before), and `DELETE /api/v1/sessions` (`lacave sessions revoke --all`) logs
/// everyone out.
#[tokio::test]
async fn a_rotated_token_or_a_revocation_ends_every_session() {
    let mut d = TestDaemon::start_with(HTTPS_API).await;
    let http = client(&d);
    let base = d.api_url();
    let status = |cookie: String| {
        let (http, url) = (http.clone(), format!("{base}/api/v1/nodes"));
        async move {
            http.get(url)
                .header("Cookie", cookie)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    let (first, _) = login(&d, &http).await;
    let (second, _) = login(&d, &http).await;
    assert_eq!(status(first.clone()).await, 200);

    // Logout everywhere, with the token.
    let r = http
        .delete(format!("{base}/api/v1/sessions"))
        .bearer_auth(d.token())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["revoked"], 2);
    assert_eq!(status(first).await, 401);
    assert_eq!(status(second).await, 401);

    // A new session; then the token is rotated (the file replaced: here removed, so that
    // the daemon makes a new one) and the daemon restarted: the session is over.
    let (third, _) = login(&d, &http).await;
    assert_eq!(status(third.clone()).await, 200);
    let old_token = d.token();
    std::fs::remove_file(d.state.path().join("api-token")).unwrap();
    d.restart().await;
    assert_ne!(d.token(), old_token, "a new token");
    let http = client(&d);
    let r = http
        .get(format!("{}/api/v1/nodes", d.api_url()))
        .header("Cookie", &third)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "the old token's session ended");
    // The same token at the next restart keeps the sessions opened with it.
    let (fourth, _) = login(&d, &http).await;
    d.restart().await;
    let http = client(&d);
    let r = http
        .get(format!("{}/api/v1/nodes", d.api_url()))
        .header("Cookie", &fourth)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

/// Reads a stream until it ends; panics if it is still open after `within`.
async fn until_closed(mut r: reqwest::Response, within: Duration) -> String {
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, r.chunk()).await {
            Ok(Ok(Some(chunk))) => text.push_str(&String::from_utf8_lossy(&chunk)),
            Ok(Ok(None)) | Ok(Err(_)) => return text,
            Err(_) => panic!("the stream is still open after {within:?}: {text}"),
        }
    }
}

/// A stream opened with a session ends when that session does: logout, or logout
/// everywhere; one opened with the token goes on.
#[tokio::test]
async fn a_sessions_stream_ends_with_the_session() {
    let d = TestDaemon::start_with(HTTPS_API).await;
    let http = client(&d);
    let base = d.api_url();
    let open = |cookie: Option<String>| {
        let (http, url, token) = (http.clone(), format!("{base}/api/v1/events"), d.token());
        async move {
            let req = http.get(url);
            let req = match cookie {
                Some(c) => req.header("Cookie", c),
                None => req.bearer_auth(token),
            };
            let r = req.send().await.unwrap();
            assert_eq!(r.status(), 200);
            r
        }
    };
    // Logout.
    let (cookie, csrf) = login(&d, &http).await;
    let stream = open(Some(cookie.clone())).await;
    let r = logout(&http, &base, &cookie, &csrf).await;
    assert_eq!(r.status(), 204);
    until_closed(stream, Duration::from_secs(3)).await;

    // Logout everywhere; the token's stream is not a session's and stays.
    let (cookie, _) = login(&d, &http).await;
    let stream = open(Some(cookie)).await;
    let mut by_token = open(None).await;
    let r = http
        .delete(format!("{base}/api/v1/sessions"))
        .bearer_auth(d.token())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    until_closed(stream, Duration::from_secs(3)).await;
    d.client().create_node(&node_request(7)).await.unwrap();
    let mut text = String::new();
    while !text.contains("event: node") {
        let chunk = tokio::time::timeout(Duration::from_secs(5), by_token.chunk())
            .await
            .expect("the token's stream goes on")
            .unwrap()
            .expect("still open");
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
}

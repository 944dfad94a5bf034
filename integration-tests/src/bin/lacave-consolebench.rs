//! The web console's load benchmark (behind `bench/console.sh`): registers NODES nodes in a
//! running daemon, then loads the console in headless Chromium RUNS times with an empty cache
//! and reports what the first load transferred (the page, its script and style, the node
//! list) and when the page was interactive (every node's row on screen, handlers bound:
//! `window.lacave.readyAt`, milliseconds from the start of navigation). Also how long a
//! re-sort of the whole table takes once loaded.
//!
//! Everything runs in the network namespace the script made: the daemon, chromedriver and
//! Chromium; this process reaches them through loopback bridges (`webdriver::bridge`).

use std::time::Duration;

use clap::Parser;
use lacave_integration_tests::webdriver::{Browser, bridge};
use serde_json::{Value, json};

#[derive(Parser)]
struct Args {
    /// The network namespace the daemon runs in.
    #[arg(long)]
    ns: String,
    /// The console's (API) port on the namespace's loopback.
    #[arg(long, default_value_t = 8443)]
    port: u16,
    #[arg(long)]
    token_file: std::path::PathBuf,
    #[arg(long, default_value_t = 1000)]
    nodes: u32,
    #[arg(long, default_value_t = 5)]
    runs: u32,
}

const COLLECT: &str = r#"
const nav = performance.getEntriesByType('navigation')[0];
const res = performance.getEntriesByType('resource').map(r => ({name: r.name, transfer: r.transferSize, encoded: r.encodedBodySize, decoded: r.decodedBodySize}));
return {ready: window.lacave.readyAt, rows: document.querySelectorAll('#nodes tbody tr').length,
  nav: {name: nav.name, transfer: nav.transferSize, encoded: nav.encodedBodySize, decoded: nav.decodedBodySize}, res};
"#;

const SORT: &str = r#"
const th = document.querySelector('#nodes th[data-key="ip"]');
const t0 = performance.now();
th.click();
const rows = document.querySelectorAll('#nodes tbody tr').length;
return {ms: performance.now() - t0, rows};
"#;

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = Args::parse();
    let token = std::fs::read_to_string(&args.token_file)
        .expect("the API token")
        .trim()
        .to_string();
    let (mut api_bridge, api_port) = bridge(&args.ns, args.port);
    let api = format!("http://127.0.0.1:{api_port}");
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    // The bridge takes a moment to listen.
    for _ in 0..50 {
        if http.get(format!("{api}/healthz")).send().await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("registering {} nodes…", args.nodes);
    let mut pending = Vec::new();
    for i in 0..args.nodes {
        let body = json!({
            "mac": format!("52:54:00:{:02x}:{:02x}:{:02x}", (i >> 16) & 0xff, (i >> 8) & 0xff, i & 0xff),
            "hostname": format!("kube{i:04}"),
            "ip": format!("10.{}.{}.{}", 80 + i / 40_000, (i / 200) % 200, 10 + i % 200),
            "role": if i % 10 == 0 { "control-plane" } else { "worker" },
            "labels": {"zone": format!("rack{}", i % 8), "disk": if i % 3 == 0 { "ssd" } else { "hdd" }},
        });
        let req = http
            .post(format!("{api}/api/v1/nodes"))
            .bearer_auth(&token)
            .json(&body)
            .send();
        pending.push(tokio::spawn(req));
        if pending.len() == 16 || i + 1 == args.nodes {
            for r in std::mem::take(&mut pending) {
                let r = r.await.unwrap().expect("the API answers");
                assert!(
                    r.status().is_success() || r.status() == 409,
                    "registration: {}",
                    r.status()
                );
            }
        }
    }

    let b = Browser::start(&args.ns, 9516, 1400, 1000).await;
    let console = format!("http://127.0.0.1:{}", args.port);
    b.goto(&format!("{console}/console/login")).await;
    b.type_into("#token", &token).await;
    b.click("#login-button").await;
    b.wait_for(
        "the console",
        "return document.body.dataset.ready === 'true';",
        Duration::from_secs(30),
    )
    .await;

    let (mut ready, mut total, mut sorts) = (Vec::new(), Vec::new(), Vec::new());
    let mut breakdown = String::new();
    for run in 1..=args.runs {
        b.cdp("Network.clearBrowserCache", json!({})).await;
        b.goto("about:blank").await;
        b.goto(&format!("{console}/console/")).await;
        b.wait_for(
            "the console",
            "return document.body.dataset.ready === 'true';",
            Duration::from_secs(30),
        )
        .await;
        let m: Value = b.eval(COLLECT, json!([])).await;
        let rows = m["rows"].as_u64().unwrap();
        assert_eq!(rows, u64::from(args.nodes), "every node in the table");
        let mut bytes = m["nav"]["transfer"].as_f64().unwrap();
        let mut parts = vec![format!(
            "page {:.1} KB",
            m["nav"]["transfer"].as_f64().unwrap() / 1000.0
        )];
        for r in m["res"].as_array().unwrap() {
            let t = r["transfer"].as_f64().unwrap();
            bytes += t;
            let name = r["name"].as_str().unwrap();
            let short = name.rsplit('/').next().unwrap_or(name);
            parts.push(format!(
                "{short} {:.1} KB (decoded {:.1} KB)",
                t / 1000.0,
                r["decoded"].as_f64().unwrap() / 1000.0
            ));
        }
        let sort: Value = b.eval(SORT, json!([])).await;
        let ms = m["ready"].as_f64().unwrap();
        println!(
            "run {run}: interactive at {ms:.0} ms, {:.1} KB transferred; re-sorting {} rows: {:.0} ms",
            bytes / 1000.0,
            sort["rows"],
            sort["ms"].as_f64().unwrap()
        );
        breakdown = parts.join(", ");
        ready.push(ms);
        total.push(bytes / 1000.0);
        sorts.push(sort["ms"].as_f64().unwrap());
    }
    println!("first load, by resource: {breakdown}");
    let max_ready = ready.iter().cloned().fold(0.0, f64::max);
    println!(
        "console with {} nodes: interactive median {:.0} ms (max {:.0} ms; target < 1000 ms), first load {:.1} KB (target < 200 KB), re-sort median {:.0} ms",
        args.nodes,
        median(&mut ready),
        max_ready,
        median(&mut total),
        median(&mut sorts)
    );
    b.quit().await;
    let _ = api_bridge.kill();
    let _ = api_bridge.wait();
}

//! Load generator for the registry benchmark (`bench/registry.sh`): durable registrations per
//! second with N concurrent clients, then the latency of `GET /api/v1/nodes` with the nodes
//! stored. It talks to a daemon that the script started; it asserts nothing, it prints figures.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

use clap::Parser;
use lacave::cli::{Client, Target};
use lacave_integration_tests::{node_request, percentile};

#[derive(Parser)]
struct Args {
    #[arg(long)]
    url: String,
    #[arg(long)]
    token_file: std::path::PathBuf,
    /// Concurrent registering clients.
    #[arg(long, default_value_t = 16)]
    clients: u32,
    /// Nodes to register.
    #[arg(long, default_value_t = 1000)]
    nodes: u32,
    /// `GET /api/v1/nodes` requests to time (one client, back to back).
    #[arg(long, default_value_t = 2000)]
    list_requests: u32,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let token = std::fs::read_to_string(&args.token_file)?
        .trim()
        .to_string();
    let client = Client::new(Target {
        url: args.url.clone(),
        token: token.clone(),
        token_source: args.token_file.display().to_string(),
        ca_pem: None,
    })?;

    // Phase 1: registrations, each acknowledged only once durable on disk.
    let next = Arc::new(AtomicU32::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.clients {
        let client = client.clone();
        let next = next.clone();
        let total = args.nodes;
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    return anyhow::Ok(latencies);
                }
                let t = Instant::now();
                client.create_node(&node_request(i)).await?;
                latencies.push(t.elapsed());
            }
        }));
    }
    let mut reg_lat = Vec::new();
    for t in tasks {
        reg_lat.extend(t.await??);
    }
    let elapsed = start.elapsed();
    reg_lat.sort();
    let rate = f64::from(args.nodes) / elapsed.as_secs_f64();
    println!(
        "registrations: {} nodes, {} clients, {:.2} s => {:.0} registrations/s (p50 {:.2} ms, p99 {:.2} ms)",
        args.nodes,
        args.clients,
        elapsed.as_secs_f64(),
        rate,
        percentile(&reg_lat, 0.50).as_secs_f64() * 1e3,
        percentile(&reg_lat, 0.99).as_secs_f64() * 1e3,
    );

    // Phase 2: listing every node, one request at a time.
    let stored = client.list_nodes().await?.len();
    let http = reqwest::Client::new();
    let url = format!("{}/api/v1/nodes", args.url);
    for _ in 0..50 {
        http.get(&url)
            .bearer_auth(&token)
            .send()
            .await?
            .bytes()
            .await?;
    }
    let mut list_lat = Vec::with_capacity(args.list_requests as usize);
    let mut bytes = 0;
    for _ in 0..args.list_requests {
        let t = Instant::now();
        let body = http
            .get(&url)
            .bearer_auth(&token)
            .send()
            .await?
            .bytes()
            .await?;
        list_lat.push(t.elapsed());
        bytes = body.len();
    }
    list_lat.sort();
    println!(
        "GET /api/v1/nodes: {stored} nodes ({} KiB), {} requests => p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        bytes / 1024,
        args.list_requests,
        percentile(&list_lat, 0.50).as_secs_f64() * 1e3,
        percentile(&list_lat, 0.99).as_secs_f64() * 1e3,
        list_lat.last().unwrap().as_secs_f64() * 1e3,
    );
    // Phase 3: the same list right after a write, so it is rendered afresh every time.
    let mut cold_lat = Vec::new();
    let patch_url = format!("{}/api/v1/nodes/node0", args.url);
    for i in 0..args.list_requests / 4 {
        let zone = format!("z{}", i % 2);
        http.patch(&patch_url)
            .bearer_auth(&token)
            .json(&serde_json::json!({ "labels": { "zone": zone } }))
            .send()
            .await?
            .error_for_status()?;
        let t = Instant::now();
        http.get(&url)
            .bearer_auth(&token)
            .send()
            .await?
            .bytes()
            .await?;
        cold_lat.push(t.elapsed());
    }
    cold_lat.sort();
    println!(
        "GET /api/v1/nodes right after a write (rendered afresh): {} requests => p50 {:.2} ms, p99 {:.2} ms",
        cold_lat.len(),
        percentile(&cold_lat, 0.50).as_secs_f64() * 1e3,
        percentile(&cold_lat, 0.99).as_secs_f64() * 1e3,
    );
    println!(
        "RESULT registrations_per_s={rate:.0} list_p99_ms={:.2} list_after_write_p99_ms={:.2}",
        percentile(&list_lat, 0.99).as_secs_f64() * 1e3,
        percentile(&cold_lat, 0.99).as_secs_f64() * 1e3
    );
    Ok(())
}

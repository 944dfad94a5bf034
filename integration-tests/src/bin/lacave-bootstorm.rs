//! Load generator for the boot-storm benchmark (`bench/boot.sh`): N simulated machines at
//! once, each from its own source address, fetch what a PXE-booting node fetches over HTTP —
//! `boot.ipxe`, its per-MAC script, its install and final Ignition configs, then the initrd
//! from the mirror. Prints aggregate throughput and the latency of the small requests. It
//! asserts nothing: the script compares the daemon with nginx serving the same layout.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use clap::Parser;
use lacave_integration_tests::percentile;

#[derive(Parser)]
struct Args {
    /// `http://address:port` of the server under test.
    #[arg(long)]
    base: String,
    #[arg(long, default_value_t = 100)]
    clients: u32,
    /// Client i connects from this address + i (the address each node is registered with).
    #[arg(long)]
    first_ip: Ipv4Addr,
    /// Client i's MAC is 52:54:00:71:(i>>8):(i&255).
    #[arg(long, default_value = "52-54-00-71")]
    mac_prefix: String,
    /// The initrd's path under the base URL.
    #[arg(long)]
    initrd: String,
    /// Where the initrd is served, when not at `base` (lacave's `[http] mirror_listen`).
    #[arg(long)]
    initrd_base: Option<String>,
}

struct Outcome {
    small: Vec<Duration>,
    bytes: u64,
    errors: Vec<String>,
}

async fn fetch(client: &reqwest::Client, url: &str, out: &mut Outcome, small: bool) {
    let t = Instant::now();
    let mut response = match client.get(url).send().await {
        Ok(r) if r.status().is_success() => r,
        Ok(r) => return out.errors.push(format!("{url}: {}", r.status())),
        Err(e) => return out.errors.push(format!("{url}: {e}")),
    };
    loop {
        match response.chunk().await {
            Ok(Some(c)) => out.bytes += c.len() as u64,
            Ok(None) => break,
            Err(e) => return out.errors.push(format!("{url}: {e}")),
        }
    }
    if small {
        out.small.push(t.elapsed());
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..args.clients {
        let ip = Ipv4Addr::from(u32::from(args.first_ip) + i);
        let seg = format!("{}-{:02x}-{:02x}", args.mac_prefix, i >> 8, i & 255);
        let base = args.base.clone();
        let initrd = format!(
            "{}/{}",
            args.initrd_base.as_deref().unwrap_or(&args.base),
            args.initrd
        );
        let client = reqwest::Client::builder()
            .local_address(std::net::IpAddr::V4(ip))
            .build()?;
        tasks.push(tokio::spawn(async move {
            let mut out = Outcome {
                small: Vec::new(),
                bytes: 0,
                errors: Vec::new(),
            };
            for path in [
                "/boot.ipxe".to_string(),
                format!("/ipxe/{seg}"),
                format!("/ignition/{seg}/install"),
                format!("/ignition/{seg}/final"),
            ] {
                fetch(&client, &format!("{base}{path}"), &mut out, true).await;
            }
            fetch(&client, &initrd, &mut out, false).await;
            out
        }));
    }
    let mut small = Vec::new();
    let mut bytes = 0;
    let mut errors = Vec::new();
    for t in tasks {
        let out = t.await?;
        small.extend(out.small);
        bytes += out.bytes;
        errors.extend(out.errors);
    }
    let secs = start.elapsed().as_secs_f64();
    small.sort();
    if small.is_empty() {
        small.push(Duration::ZERO);
    }
    println!(
        "clients={} bytes={bytes} secs={secs:.2} MBps={:.0} small_p50_ms={:.2} small_p99_ms={:.2} errors={}",
        args.clients,
        bytes as f64 / secs / 1e6,
        percentile(&small, 0.5).as_secs_f64() * 1e3,
        percentile(&small, 0.99).as_secs_f64() * 1e3,
        errors.len()
    );
    for e in errors.iter().take(5) {
        eprintln!("error: {e}");
    }
    Ok(())
}

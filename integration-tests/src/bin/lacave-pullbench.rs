//! Load generator for the registry benchmark (`bench/registry-pull.sh`): N clients at once each
//! pull one image over the OCI Distribution API as containerd does — the manifest (by tag),
//! then the config and every layer by digest — and check every blob's SHA-256. Prints the
//! bytes moved, the wall time and the throughput; asserts nothing else.

use std::time::Instant;

use clap::Parser;
use sha2::Digest;

#[derive(Parser)]
struct Args {
    /// `http://address:port` of the registry.
    #[arg(long)]
    base: String,
    /// Repository as the URL spells it (`big`).
    #[arg(long)]
    repo: String,
    #[arg(long)]
    tag: String,
    /// Appended to every URL (`?ns=bench.local` for a containerd-style mirror).
    #[arg(long, default_value = "")]
    query: String,
    #[arg(long, default_value_t = 20)]
    clients: usize,
}

async fn get(client: &reqwest::Client, url: &str, accept: Option<&str>) -> Vec<u8> {
    let mut req = client.get(url);
    if let Some(a) = accept {
        req = req.header("Accept", a);
    }
    let resp = req.send().await.expect("the registry answers");
    assert!(resp.status().is_success(), "{url}: {}", resp.status());
    resp.bytes().await.expect("a body").to_vec()
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let args = Args::parse();
    let client = reqwest::Client::new();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.clients {
        let (client, base, repo, tag, q) = (
            client.clone(),
            args.base.clone(),
            args.repo.clone(),
            args.tag.clone(),
            args.query.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let manifest = get(
                &client,
                &format!("{base}/v2/{repo}/manifests/{tag}{q}"),
                Some("application/vnd.oci.image.manifest.v1+json"),
            )
            .await;
            let m: serde_json::Value = serde_json::from_slice(&manifest).expect("a manifest");
            let mut digests = vec![m["config"]["digest"].as_str().unwrap().to_string()];
            for l in m["layers"].as_array().unwrap() {
                digests.push(l["digest"].as_str().unwrap().to_string());
            }
            let mut bytes = manifest.len() as u64;
            for d in digests {
                let blob = get(&client, &format!("{base}/v2/{repo}/blobs/{d}{q}"), None).await;
                let found: String = sha2::Sha256::digest(&blob)
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect();
                assert_eq!(format!("sha256:{found}"), d, "a blob's digest");
                bytes += blob.len() as u64;
            }
            bytes
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.expect("a pull");
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{} pulls, {:.1} MB in {:.2} s: {:.1} MB/s",
        args.clients,
        total as f64 / 1e6,
        secs,
        total as f64 / 1e6 / secs
    );
}

//! The daemon's side of `bench/etcd-snapshot.sh`, run inside the benchmark's network
//! namespace (etcd on 127.0.0.1:2379 there):
//!
//! - `pki DIR`: the cluster PKI a daemon makes (`lacave::cluster::pki`), whose etcd CA the
//!   script signs etcd's server certificate with;
//! - `fill DIR MIB`: MIB MiB of 64 KiB values put through etcd's JSON gateway (8 at a time),
//!   plus the cluster CA as a value (as `kube-root-ca.crt` holds it in a real cluster);
//! - `save DIR OUT`: one snapshot with the daemon's own code (`Snapshots::save`: etcd's
//!   status, the stream through the gateway, written and checked against etcd's SHA-256),
//!   printing `seconds bytes name`.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, bail};
use base64::Engine as _;
use lacave::cluster::etcd::EtcdClient;
use lacave::cluster::pki::ClusterPki;
use lacave::cluster::snapshot::Snapshots;
use sha2::Digest as _;

const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((command, rest)) = args.split_first() else {
        bail!("usage: lacave-snapbench pki DIR | fill DIR MIB | save DIR OUT");
    };
    let dir = PathBuf::from(rest.first().context("DIR")?);
    match command.as_str() {
        "pki" => {
            ClusterPki::load_or_create(&dir)?;
        }
        "fill" => {
            let pki = ClusterPki::load_or_create(&dir)?;
            let mib: usize = rest.get(1).context("MIB")?.parse()?;
            fill(&pki, mib).await?;
        }
        "save" => {
            let pki = ClusterPki::load_or_create(&dir)?;
            let out = PathBuf::from(rest.get(1).context("OUT")?);
            let client = EtcdClient::new(&pki)?;
            let started = Instant::now();
            let info = Snapshots::new(out, 1000)
                .save(
                    &client,
                    &[("bench".into(), LOCAL)],
                    &pki.kubernetes.cert_pem,
                    "bench",
                )
                .await?;
            println!(
                "{:.3} {} {}",
                started.elapsed().as_secs_f64(),
                info.size,
                info.name
            );
        }
        other => bail!("unknown command {other}"),
    }
    Ok(())
}

async fn fill(pki: &ClusterPki, mib: usize) -> anyhow::Result<()> {
    let issued = pki.issue_etcd_client("bench", time::Duration::hours(1))?;
    let identity =
        reqwest::Identity::from_pem(format!("{}{}", issued.cert_pem, issued.key_pem).as_bytes())?;
    let ca = reqwest::Certificate::from_pem(pki.etcd.cert_pem.as_bytes())?;
    let http = reqwest::Client::builder()
        .tls_certs_only([ca])
        .identity(identity)
        .build()?;
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    let put = |key: String, value: Vec<u8>| {
        let http = http.clone();
        async move {
            let answer = http
                .post("https://127.0.0.1:2379/v3/kv/put")
                .json(&serde_json::json!({ "key": b64(key.as_bytes()), "value": b64(&value) }))
                .send()
                .await?;
            if !answer.status().is_success() {
                bail!("put {key}: {}", answer.status());
            }
            anyhow::Ok(())
        }
    };
    put(
        "/registry/configmaps/kube-system/kube-root-ca.crt".into(),
        pki.kubernetes.cert_pem.clone().into_bytes(),
    )
    .await?;
    let count = mib * 16;
    let mut next = 0;
    while next < count {
        let batch: Vec<_> = (next..(next + 8).min(count))
            .map(|i| {
                // Incompressible, as real objects are not: a counter through SHA-256.
                let mut value = Vec::with_capacity(64 << 10);
                let mut block = sha2::Sha256::digest(i.to_le_bytes()).to_vec();
                while value.len() < 64 << 10 {
                    value.extend_from_slice(&block);
                    block = sha2::Sha256::digest(&block).to_vec();
                }
                put(format!("/registry/bench/{i:08}"), value)
            })
            .collect();
        next += batch.len();
        for r in futures_join(batch).await {
            r?;
        }
    }
    eprintln!("put {count} values of 64 KiB");
    Ok(())
}

async fn futures_join<F>(futures: Vec<F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.expect("a put task"));
    }
    out
}

//! Load generator for the boot-storm benchmark (`bench/boot.sh`): N simulated machines at
//! once, each from its own source address. With `--dhcp`, each first gets its address by
//! DHCP (DISCOVER, OFFER, REQUEST, ACK), sent as the relay agent at its own address would
//! (`giaddr`, from port 67), and checks it is the one it is registered with; then it fetches
//! what a PXE-booting node fetches over HTTP — `boot.ipxe`, its per-MAC script, its install
//! and final Ignition configs, then the initrd from the mirror. Prints aggregate throughput,
//! the latency of the small requests and of the DHCP exchanges, and each machine's time from
//! its first packet to the initrd's last byte. It asserts nothing: the script compares the
//! daemon with other servers serving the same.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use clap::Parser;
use dhcproto::v4::{Architecture, DhcpOption, Message, MessageType};
use dhcproto::{Decodable, Decoder, Encodable, Encoder};
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
    /// The DHCP server to get each machine's address from first (relayed to its port 67).
    #[arg(long)]
    dhcp: Option<Ipv4Addr>,
}

struct Outcome {
    small: Vec<Duration>,
    dhcp: Option<Duration>,
    /// From the first packet to the initrd's last byte, if everything succeeded.
    total: Option<Duration>,
    bytes: u64,
    errors: Vec<String>,
}

/// One DHCP exchange for `mac`, relayed from `agent` (port 67) to `server`: the address
/// acknowledged. Each step is sent again after a second without an answer, three times.
async fn dhcp(
    agent: Ipv4Addr,
    server: Ipv4Addr,
    mac: [u8; 6],
    xid: u32,
) -> Result<Ipv4Addr, String> {
    let socket = tokio::net::UdpSocket::bind((agent, 67))
        .await
        .map_err(|e| format!("bind {agent}:67: {e}"))?;
    let message = |kind: MessageType| {
        let z = Ipv4Addr::UNSPECIFIED;
        let mut m = Message::new(z, z, z, agent, &mac);
        m.set_xid(xid).set_hops(1);
        m.opts_mut().insert(DhcpOption::MessageType(kind));
        m.opts_mut()
            .insert(DhcpOption::ClientSystemArchitecture(Architecture::from(0)));
        m.opts_mut().insert(DhcpOption::ClassIdentifier(
            b"PXEClient:Arch:00000:UNDI:002001".to_vec(),
        ));
        m
    };
    let exchange = |m: Message, want: MessageType| {
        let socket = &socket;
        async move {
            let mut bytes = Vec::new();
            m.encode(&mut Encoder::new(&mut bytes))
                .map_err(|e| e.to_string())?;
            let mut buf = [0u8; 1500];
            for _ in 0..3 {
                socket
                    .send_to(&bytes, (server, 67))
                    .await
                    .map_err(|e| format!("send: {e}"))?;
                let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
                while let Ok(Ok((n, _))) =
                    tokio::time::timeout_at(deadline, socket.recv_from(&mut buf)).await
                {
                    let Ok(reply) = Message::decode(&mut Decoder::new(&buf[..n])) else {
                        continue;
                    };
                    if reply.xid() == xid && reply.opts().msg_type() == Some(want) {
                        return Ok(reply);
                    }
                    if reply.xid() == xid && reply.opts().msg_type() == Some(MessageType::Nak) {
                        return Err("NAK".to_string());
                    }
                }
            }
            Err(format!("no {want:?} after 3 tries"))
        }
    };
    let offer = exchange(message(MessageType::Discover), MessageType::Offer).await?;
    let mut request = message(MessageType::Request);
    request
        .opts_mut()
        .insert(DhcpOption::RequestedIpAddress(offer.yiaddr()));
    if let Some(DhcpOption::ServerIdentifier(id)) =
        offer.opts().get(dhcproto::v4::OptionCode::ServerIdentifier)
    {
        request.opts_mut().insert(DhcpOption::ServerIdentifier(*id));
    }
    let ack = exchange(request, MessageType::Ack).await?;
    Ok(ack.yiaddr())
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
        let dhcp_server = args.dhcp;
        let mac = [0x52, 0x54, 0x00, 0x71, (i >> 8) as u8, (i & 255) as u8];
        tasks.push(tokio::spawn(async move {
            let mut out = Outcome {
                small: Vec::new(),
                dhcp: None,
                total: None,
                bytes: 0,
                errors: Vec::new(),
            };
            let t = Instant::now();
            if let Some(server) = dhcp_server {
                match dhcp(ip, server, mac, 0x7100_0000 | i).await {
                    Ok(got) if got == ip => out.dhcp = Some(t.elapsed()),
                    Ok(got) => out.errors.push(format!("{ip}: DHCP acknowledged {got}")),
                    Err(e) => out.errors.push(format!("{ip}: DHCP: {e}")),
                }
                if !out.errors.is_empty() {
                    return out;
                }
            }
            for path in [
                "/boot.ipxe".to_string(),
                format!("/ipxe/{seg}"),
                format!("/ignition/{seg}/install"),
                format!("/ignition/{seg}/final"),
            ] {
                fetch(&client, &format!("{base}{path}"), &mut out, true).await;
            }
            fetch(&client, &initrd, &mut out, false).await;
            if out.errors.is_empty() {
                out.total = Some(t.elapsed());
            }
            out
        }));
    }
    let (mut small, mut dhcp_times, mut totals) = (Vec::new(), Vec::new(), Vec::new());
    let mut bytes = 0;
    let mut errors = Vec::new();
    for t in tasks {
        let out = t.await?;
        small.extend(out.small);
        dhcp_times.extend(out.dhcp);
        totals.extend(out.total);
        bytes += out.bytes;
        errors.extend(out.errors);
    }
    let secs = start.elapsed().as_secs_f64();
    // The `p` quantile in milliseconds; 0 when nothing succeeded.
    let ms = |mut v: Vec<Duration>, p: f64| {
        v.sort();
        if v.is_empty() {
            return 0.0;
        }
        percentile(&v, p).as_secs_f64() * 1e3
    };
    println!(
        "clients={} bytes={bytes} secs={secs:.2} MBps={:.0} small_p50_ms={:.2} small_p99_ms={:.2} dhcp_p50_ms={:.1} dhcp_p99_ms={:.1} machine_p50_s={:.2} machine_p99_s={:.2} completed={} errors={}",
        args.clients,
        bytes as f64 / secs / 1e6,
        ms(small.clone(), 0.5),
        ms(small, 0.99),
        ms(dhcp_times.clone(), 0.5),
        ms(dhcp_times, 0.99),
        ms(totals.clone(), 0.5) / 1e3,
        ms(totals.clone(), 0.99) / 1e3,
        totals.len(),
        errors.len()
    );
    for e in errors.iter().take(5) {
        eprintln!("error: {e}");
    }
    Ok(())
}

//! Sends DHCP packets (hex, in order) from inside a test namespace and prints the first reply
//! as `<source address> <hex>` (with `--all`: every reply until the timeout, one a line);
//! exits 1 when none comes. The DHCP tests build and read the packets with dhcproto; this
//! only moves bytes.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;

#[derive(Parser)]
struct Args {
    /// Interface to send on (SO_BINDTODEVICE).
    #[arg(long)]
    iface: String,
    /// Local address and port to bind (0.0.0.0:68 for a client, <relay>:67 for a relay).
    #[arg(long)]
    bind: SocketAddr,
    /// Destination (255.255.255.255:67 for a broadcast).
    #[arg(long)]
    to: SocketAddr,
    /// Repeatable: sent one after the other.
    #[arg(long, required = true)]
    packet: Vec<String>,
    /// Print every reply that comes within the timeout, not just the first.
    #[arg(long)]
    all: bool,
    #[arg(long, default_value_t = 2000)]
    timeout_ms: u64,
}

fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let s = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    s.set_reuse_address(true)?;
    s.set_broadcast(true)?;
    s.bind_device(Some(args.iface.as_bytes()))?;
    s.bind(&args.bind.into())?;
    let socket: std::net::UdpSocket = s.into();
    socket.set_read_timeout(Some(Duration::from_millis(args.timeout_ms)))?;
    for packet in &args.packet {
        let bytes: Vec<u8> = (0..packet.len() / 2)
            .map(|i| u8::from_str_radix(&packet[2 * i..2 * i + 2], 16).expect("hex"))
            .collect();
        socket.send_to(&bytes, args.to)?;
    }
    let mut buf = [0u8; 1500];
    let mut replies = 0;
    while let Ok((n, from)) = socket.recv_from(&mut buf) {
        let hex: String = buf[..n].iter().map(|b| format!("{b:02x}")).collect();
        println!("{from} {hex}");
        replies += 1;
        if !args.all {
            break;
        }
    }
    if replies == 0 {
        std::process::exit(1);
    }
    Ok(())
}

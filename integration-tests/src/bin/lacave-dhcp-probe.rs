//! Sends one DHCP packet (hex) from inside a test namespace and prints the first reply as
//! `<source address> <hex>`; exits 1 when none comes. The DHCP tests build and read the
//! packets with dhcproto; this only moves bytes.

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
    #[arg(long)]
    packet: String,
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
    let bytes: Vec<u8> = (0..args.packet.len() / 2)
        .map(|i| u8::from_str_radix(&args.packet[2 * i..2 * i + 2], 16).expect("hex"))
        .collect();
    socket.send_to(&bytes, args.to)?;
    let mut buf = [0u8; 1500];
    match socket.recv_from(&mut buf) {
        Ok((n, from)) => {
            let hex: String = buf[..n].iter().map(|b| format!("{b:02x}")).collect();
            println!("{from} {hex}");
            Ok(())
        }
        Err(_) => std::process::exit(1),
    }
}

//! IPv6 router advertisements that end iPXE's wait. iPXE solicits IPv6 routers at every boot
//! and, on a link where none answers, waits about 13 s before going on (PXE-LAB.md). This
//! answers each router solicitation on the DHCP interface with an advertisement that
//! configures nothing: router lifetime 0 (not a default router), no prefix, no managed or
//! other-configuration flag. iPXE then knows there is no IPv6 to set up; hosts on the link
//! gain no address and no route.
//!
//! On by default in full mode (lacave owns the provisioning link), off in proxy mode (a shared
//! LAN where a real IPv6 router may speak): `[dhcp] router_advertisements`.

use std::io::Read;
use std::net::{Ipv6Addr, SocketAddrV6};
use std::sync::Arc;

use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::metrics::Metrics;

const ROUTER_SOLICITATION: u8 = 133;
const ROUTER_ADVERTISEMENT: u8 = 134;
const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
const ALL_ROUTERS: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 2);

/// The advertisement: ICMPv6 type 134; the kernel fills in the checksum.
pub fn advertisement() -> [u8; 16] {
    let mut ra = [0u8; 16];
    ra[0] = ROUTER_ADVERTISEMENT;
    ra[4] = 64; // current hop limit: a suggestion hosts may use
    // flags (M, O) = 0; router lifetime, reachable time and retrans timer = 0 (unspecified).
    ra
}

/// Whether an ICMPv6 message is a router solicitation (RFC 4861 §6.1.1: code 0, ≥ 8 bytes).
pub fn is_solicitation(msg: &[u8]) -> bool {
    msg.len() >= 8 && msg[0] == ROUTER_SOLICITATION && msg[1] == 0
}

fn ifindex(interface: &str) -> std::io::Result<u32> {
    let text = std::fs::read_to_string(format!("/sys/class/net/{interface}/ifindex"))?;
    text.trim()
        .parse()
        .map_err(|_| std::io::Error::other(format!("no index for interface {interface}")))
}

/// Opens the ICMPv6 socket on `interface` (needs CAP_NET_RAW).
pub fn bind(interface: &str) -> std::io::Result<(Socket, u32)> {
    let index = ifindex(interface)?;
    let s = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6))?;
    s.bind_device(Some(interface.as_bytes()))?;
    s.join_multicast_v6(&ALL_ROUTERS, index)?;
    // Neighbour discovery messages must arrive with hop limit 255, or they are dropped.
    s.set_multicast_hops_v6(255)?;
    s.set_unicast_hops_v6(255)?;
    s.set_multicast_loop_v6(false)?;
    Ok((s, index))
}

/// Answers solicitations on a thread of its own (a raw socket, blocking with a short timeout
/// so that shutdown is noticed).
pub fn serve(
    socket: Socket,
    index: u32,
    interface: String,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
    tasks: &TaskTracker,
) -> std::io::Result<()> {
    socket.set_read_timeout(Some(Duration::from_millis(500)))?;
    tasks.spawn_blocking(move || {
        let to = SocketAddrV6::new(ALL_NODES, 0, 0, index);
        let ra = advertisement();
        let mut buf = [0u8; 1500];
        while !cancel.is_cancelled() {
            let n = match (&socket).read(&mut buf) {
                Ok(n) => n,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    continue;
                }
                Err(error) => {
                    tracing::debug!(%error, "ICMPv6 receive failed");
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            };
            if !is_solicitation(&buf[..n]) {
                continue;
            }
            metrics.dhcp_messages.inc(&["ipv6_router_solicitation"]);
            match socket.send_to(&ra, &to.into()) {
                Ok(_) => tracing::debug!(%interface, "answered a router solicitation"),
                Err(error) => {
                    tracing::warn!(%error, %interface, "cannot send a router advertisement")
                }
            }
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_advertisement_configures_nothing() {
        let ra = advertisement();
        assert_eq!(ra[0], 134);
        assert_eq!(ra[5], 0, "neither managed nor other-configuration");
        assert_eq!(
            &ra[6..8],
            &[0, 0],
            "router lifetime 0: not a default router"
        );
        assert_eq!(ra.len(), 16, "no options: no prefix");
        assert!(is_solicitation(&[133, 0, 0, 0, 0, 0, 0, 0]));
        assert!(!is_solicitation(&[133, 1, 0, 0, 0, 0, 0, 0]));
        assert!(!is_solicitation(&[133, 0, 0]));
        assert!(!is_solicitation(&[134, 0, 0, 0, 0, 0, 0, 0]));
    }
}

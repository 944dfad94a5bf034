//! The DHCP socket loop: receive, decide (`decide.rs`), persist, send. Packets that are ready
//! together are handled as a batch: each decision sees the lease changes of the ones before it.
//! Replies that acknowledge nothing go out at once; lease-binding ACKs wait for a flush that
//! covers their lease (group commit: one flush for every ACK of up to [`FLUSH_DELAY`]), so that
//! every ACK is durable at a fraction of a flush each.

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;

use dhcproto::{Encodable, Encoder};
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::boot::client_facts;
use super::decide::{Destination, LeaseChange, Reservation, Snapshot, decide};
use super::settings::DhcpConfig;
use crate::metrics::Metrics;
use crate::model::{EventKind, Lease, LeaseAction, MacAddr, NodeState, Sighting};
use crate::store::{Seen, Store};

const BATCH: usize = 512;

/// How long a lease-binding ACK may wait so that one flush covers the ACKs of several
/// batches. Without it a fast disk let every packet or two pay a flush of its own (4,400
/// flushes/s at 5,000 exchanges/s, each waking sled's I/O threads), and the flushes, not the
/// decisions, were most of the CPU. At 2 ms a flush still cost more than the decisions it
/// covered (~500 flushes/s at 5,000 exchanges/s); 10 ms cut the daemon's CPU per exchange by a
/// quarter (bench/dhcp.sh: 73 → 56 ms per 1,000 at 5,000/s, 59 → 43 at 7,500/s). Clients wait
/// seconds for an ACK; 10 ms is nothing to them. 25 ms saved a little more CPU but let the
/// held ACKs pile up: perfdhcp lost 0.7 % of them at 2,500/s and 14 % at 7,500/s.
const FLUSH_DELAY: std::time::Duration = std::time::Duration::from_millis(10);

/// Past this many packets read in one go the socket is behind: DISCOVERs among the rest are
/// dropped unanswered (the client retries in a few seconds), so that REQUESTs of exchanges
/// already under way get their ACKs before the kernel starts dropping them. Without it a flood
/// above capacity completed fewer exchanges than a load just under it.
const SHED_AFTER: usize = 128;

/// New machines waiting to be recorded beyond which DISCOVERs of further new machines are
/// shed too. Recording a machine (node, index, event) is the dearest write a flush does; on a
/// loaded host a flood of new machines made each flush longer than the last, until ACKs
/// waiting for them came too late (2,400 exchanges/s at 10,000 offered). This bounds a
/// flush's work, and so how long an ACK waits.
const MAX_PENDING_DISCOVERIES: usize = 256;

/// A flush starts before [`FLUSH_DELAY`] is up once this many ACKs wait for it.
const FLUSH_AT: usize = 256;

/// Registered nodes' addresses, rebuilt when the registry changes.
struct Reservations {
    generation: u64,
    by_mac: HashMap<MacAddr, Reservation>,
    ips: HashSet<Ipv4Addr>,
}

impl Reservations {
    fn load(store: &Store) -> Reservations {
        let generation = store.address_generation();
        store.with_registered_nodes(|_, nodes| {
            let mut by_mac = HashMap::new();
            let mut ips = HashSet::new();
            for n in nodes {
                if let (Some(ip), false) = (n.ip, n.state == NodeState::Discovered) {
                    by_mac.insert(
                        n.mac,
                        Reservation {
                            ip: ip.addr(),
                            boot_file: n.boot_file.as_ref().map(|f| f.to_string()),
                        },
                    );
                    ips.insert(ip.addr());
                }
            }
            Reservations {
                generation,
                by_mac,
                ips,
            }
        })
    }
}

/// How long an offered address is held for the client it was offered to.
const OFFER_HOLD_SECS: u64 = 30;

/// Addresses offered and not yet requested: held, so that two clients discovering at once
/// are not offered the same address (the second would be refused at REQUEST).
#[derive(Default)]
struct Offers {
    by_ip: HashMap<Ipv4Addr, Lease>,
    by_mac: HashMap<MacAddr, Ipv4Addr>,
    cursor: Option<Ipv4Addr>,
}

impl Offers {
    fn hold(&mut self, lease: Lease) {
        if let Some(old) = self.by_mac.insert(lease.mac, lease.ip)
            && old != lease.ip
        {
            self.by_ip.remove(&old);
        }
        self.by_ip.insert(lease.ip, lease);
        self.cursor = Some(Ipv4Addr::from(u32::from(lease.ip).wrapping_add(1)));
    }

    fn drop_for(&mut self, mac: MacAddr) {
        if let Some(ip) = self.by_mac.remove(&mac) {
            self.by_ip.remove(&ip);
        }
    }

    fn expire(&mut self, now: u64) {
        self.by_ip.retain(|_, l| l.expires > now);
        let by_ip = &self.by_ip;
        self.by_mac.retain(|_, ip| by_ip.contains_key(ip));
    }
}

struct View<'a> {
    store: &'a Store,
    reservations: &'a Reservations,
    offers: &'a Offers,
}

impl Snapshot for View<'_> {
    fn reservation(&self, mac: MacAddr) -> Option<Reservation> {
        self.reservations.by_mac.get(&mac).cloned()
    }
    fn is_reserved(&self, ip: Ipv4Addr) -> bool {
        self.reservations.ips.contains(&ip)
    }
    fn lease_of(&self, mac: MacAddr) -> Option<Lease> {
        self.store.lease_of(mac).or_else(|| {
            let ip = self.offers.by_mac.get(&mac)?;
            self.offers.by_ip.get(ip).copied()
        })
    }
    fn lease_at(&self, ip: Ipv4Addr) -> Option<Lease> {
        self.store
            .lease_at(ip)
            .or_else(|| self.offers.by_ip.get(&ip).copied())
    }
    fn pool_cursor(&self) -> Option<Ipv4Addr> {
        self.offers.cursor
    }
}

/// A UDP socket for DHCP: broadcast allowed, bound to the interface when one is named.
pub fn bind(port: u16, interface: Option<&str>) -> std::io::Result<std::net::UdpSocket> {
    let s = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    s.set_reuse_address(true)?;
    s.set_broadcast(true)?;
    if let Some(ifname) = interface {
        s.bind_device(Some(ifname.as_bytes()))?;
    }
    s.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)).into())?;
    s.set_nonblocking(true)?;
    Ok(s.into())
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Serves one socket until `cancel` fires. `proxy_port` sockets answer to the sender.
pub fn serve(
    socket: std::net::UdpSocket,
    config: Arc<DhcpConfig>,
    store: Store,
    metrics: Arc<Metrics>,
    reply_to_sender: bool,
    cancel: CancellationToken,
    tasks: &TaskTracker,
) -> std::io::Result<()> {
    let socket = UdpSocket::from_std(socket)?;
    tasks.spawn(async move {
        let cx = Context {
            config: &config,
            store: &store,
            metrics: &metrics,
            reply_to_sender,
        };
        let mut reservations = Reservations::load(&store);
        let mut offers = Offers::default();
        let mut last_expiry = now();
        let mut buf = vec![0u8; 4096];
        // The running flush and the ACKs waiting for it: packets keep being decided while it
        // runs, and none of its ACKs is sent before it ends. Flushes run one at a time.
        let mut inflight: Option<Inflight> = None;
        // ACKs whose leases are staged but not yet covered by a started flush, and when their
        // flush is due (set while anything staged waits, ACK or not).
        let mut waiting: Vec<(Vec<u8>, SocketAddr)> = Vec::new();
        let mut flush_due: Option<tokio::time::Instant> = None;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                ready = socket.readable() => if let Err(error) = ready {
                    tracing::error!(%error, "DHCP socket failed");
                    return;
                },
                done = async { (&mut inflight.as_mut().expect("guarded").flush).await }, if inflight.is_some() => {
                    let replies = inflight.take().expect("guarded").replies;
                    finish(&socket, done, replies).await;
                    continue;
                }
                () = tokio::time::sleep_until(flush_due.unwrap_or_else(tokio::time::Instant::now)), if flush_due.is_some() && inflight.is_none() => {
                    // Everything staged so far, including the leases of `waiting`, is written
                    // before this flush returns.
                    let s = store.clone();
                    inflight = Some(Inflight {
                        flush: tokio::task::spawn_blocking(move || s.flush()),
                        replies: std::mem::take(&mut waiting),
                    });
                    flush_due = None;
                    continue;
                }
            }
            if reservations.generation != store.address_generation() {
                reservations = Reservations::load(&store);
            }
            if now() > last_expiry + 5 {
                last_expiry = now();
                offers.expire(last_expiry);
            }
            let mut replies = Vec::new();
            let mut dirty = false;
            // Replies that acknowledge nothing (offers, NAKs, INFORM answers) need not wait
            // for a flush.
            let mut now_replies = Vec::new();
            for received in 0..BATCH {
                let (n, src) = match socket.try_recv_from(&mut buf) {
                    Ok(x) => x,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(error) => {
                        tracing::warn!(%error, "DHCP receive failed");
                        break;
                    }
                };
                // One packet must never stop the service: a panic in a parser is contained here.
                let handled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    let backlog = received >= SHED_AFTER;
                    handle(&buf[..n], src, &cx, &reservations, &mut offers, backlog)
                }))
                .unwrap_or_else(|_| {
                    metrics.dhcp_messages.inc(&["malformed"]);
                    tracing::error!(%src, len = n, "a DHCP packet made the parser panic; dropped");
                    Handled::Nothing
                });
                match handled {
                    Handled::Reply(bytes, to, changed, binds) => {
                        dirty |= changed;
                        if binds {
                            replies.push((bytes, to));
                        } else {
                            now_replies.push((bytes, to));
                        }
                    }
                    Handled::Changed => dirty = true,
                    Handled::Nothing => {}
                }
            }
            send_all(&socket, now_replies).await;
            if dirty {
                waiting.append(&mut replies);
                let due = if waiting.len() >= FLUSH_AT {
                    tokio::time::Instant::now()
                } else {
                    flush_due.unwrap_or_else(|| tokio::time::Instant::now() + FLUSH_DELAY)
                };
                flush_due = Some(due);
            } else {
                send_all(&socket, replies).await;
            }
        }
    });
    Ok(())
}

/// A batch's flush and the replies that wait for it.
struct Inflight {
    flush: tokio::task::JoinHandle<Result<(), crate::store::StoreError>>,
    replies: Vec<(Vec<u8>, SocketAddr)>,
}

/// Sends a batch's replies once its flush succeeded; withholds them otherwise.
async fn finish(
    socket: &UdpSocket,
    done: Result<Result<(), crate::store::StoreError>, tokio::task::JoinError>,
    replies: Vec<(Vec<u8>, SocketAddr)>,
) {
    match done {
        Ok(Ok(())) => send_all(socket, replies).await,
        other => {
            // Nothing is acknowledged that is not on disk.
            tracing::error!(result = ?other.map(|r| r.map_err(|e| e.to_string())), "cannot persist DHCP leases; replies withheld");
        }
    }
}

async fn send_all(socket: &UdpSocket, replies: Vec<(Vec<u8>, SocketAddr)>) {
    for (bytes, to) in replies {
        if let Err(error) = socket.send_to(&bytes, to).await {
            tracing::warn!(%error, %to, "DHCP send failed");
        }
    }
}

enum Handled {
    /// A reply; whether the registry changed; whether it acknowledges a lease (and so must
    /// wait until that lease is on disk).
    Reply(Vec<u8>, SocketAddr, bool, bool),
    Changed,
    Nothing,
}

/// What every packet of one socket is handled with.
struct Context<'a> {
    config: &'a DhcpConfig,
    store: &'a Store,
    metrics: &'a Metrics,
    /// Answer to the sender (port 4011) rather than by the DHCP destination rules.
    reply_to_sender: bool,
}

/// Adds a lease event to the history of the node with this MAC (registered or discovered).
fn node_event(cx: &Context<'_>, mac: MacAddr, action: LeaseAction, ip: Ipv4Addr, message: String) {
    cx.store
        .stage_event(mac, EventKind::Lease { action, ip }, message);
}

fn handle(
    bytes: &[u8],
    src: SocketAddr,
    cx: &Context<'_>,
    reservations: &Reservations,
    offers: &mut Offers,
    backlog: bool,
) -> Handled {
    let msg = match super::parse(bytes) {
        Ok(m) => m,
        Err(error) => {
            cx.metrics.dhcp_messages.inc(&["malformed"]);
            tracing::debug!(%src, %error, len = bytes.len(), "malformed DHCP packet dropped");
            return Handled::Nothing;
        }
    };
    let kind = msg
        .opts()
        .msg_type()
        .map_or("none".to_string(), |t| format!("{t:?}").to_lowercase());
    cx.metrics.dhcp_messages.inc(&[&kind]);
    let facts = match client_facts(&msg) {
        Ok(f) => f,
        Err(error) => {
            tracing::debug!(%src, %error, "DHCP packet dropped");
            return Handled::Nothing;
        }
    };
    // Shed: any DISCOVER behind a backlog, a new machine's while the registry is behind. The
    // client retries in a few seconds.
    if msg.opts().msg_type() == Some(dhcproto::v4::MessageType::Discover)
        && (backlog
            || cx.store.discoveries_pending() >= MAX_PENDING_DISCOVERIES
                && !cx.store.knows_mac(facts.mac))
    {
        cx.metrics.dhcp_messages.inc(&["shed"]);
        tracing::debug!(mac = %facts.mac, backlog, "DISCOVER shed");
        return Handled::Nothing;
    }
    let view = View {
        store: cx.store,
        reservations,
        offers,
    };
    let now = now();
    let decision = decide(&msg, &facts, &view, &cx.config.settings, now);
    // Hold a pool address offered to an unregistered client; a binding ends the hold.
    if let Some((reply, _)) = &decision.reply
        && reply.opts().msg_type() == Some(dhcproto::v4::MessageType::Offer)
        && !reply.yiaddr().is_unspecified()
        && !reservations.by_mac.contains_key(&facts.mac)
    {
        offers.hold(Lease {
            ip: reply.yiaddr(),
            mac: facts.mac,
            expires: now + OFFER_HOLD_SECS,
        });
    }
    let mut changed = false;
    let sighting = Sighting {
        at: time::OffsetDateTime::now_utc(),
        arch: facts.arch,
        vendor_class: facts.vendor_class.clone(),
    };
    // Written by the next flush, with everything else staged before it.
    match cx
        .store
        .stage_seen(facts.mac, sighting, decision.discovered)
    {
        Seen::New => {
            tracing::info!(mac = %facts.mac, arch = ?facts.arch, vendor = ?facts.vendor_class, "new machine discovered on the network");
            changed = true;
        }
        Seen::Staged => changed = true,
        Seen::Nothing => {}
        Seen::RateLimited => {
            // Counted in lacave_discovered_machines_total{outcome="rate_limited"}.
            tracing::debug!(mac = %facts.mac, "new machine not recorded: over the discovery rate");
        }
    }
    match &decision.lease {
        Some(LeaseChange::Bind(lease)) => match cx.store.stage_lease(*lease, now) {
            Ok(fresh) => {
                offers.drop_for(lease.mac);
                changed = true;
                if fresh {
                    let secs = lease.expires.saturating_sub(now);
                    tracing::info!(mac = %lease.mac, ip = %lease.ip, "DHCP lease bound for {secs} s");
                    node_event(
                        cx,
                        lease.mac,
                        LeaseAction::Bound,
                        lease.ip,
                        format!("DHCP lease on {} for {secs} s", lease.ip),
                    );
                } else {
                    tracing::debug!(mac = %lease.mac, ip = %lease.ip, "DHCP lease renewed");
                }
            }
            Err(error) => {
                tracing::error!(%error, "cannot store a lease; no ACK sent");
                return Handled::Nothing;
            }
        },
        Some(LeaseChange::Release { mac, ip }) => {
            // Only the holder's RELEASE ends a lease.
            let released = cx.store.stage_release(*mac, *ip);
            if released {
                changed = true;
                tracing::info!(%mac, %ip, "DHCP lease released");
                node_event(
                    cx,
                    *mac,
                    LeaseAction::Released,
                    *ip,
                    format!("DHCP lease on {ip} released"),
                );
            }
        }
        Some(LeaseChange::Decline { ip, until }) => {
            // A hold is a lease of no client: its own pseudo-MAC (00:00 and the address) so
            // that every declined address is held, not just the last one.
            let o = ip.octets();
            let held = Lease {
                ip: *ip,
                mac: MacAddr::new([0, 0, o[0], o[1], o[2], o[3]]),
                expires: *until,
            };
            if cx.store.stage_lease(held, now).is_ok() {
                changed = true;
                tracing::warn!(%ip, mac = %facts.mac, "address declined: in use on the network");
                node_event(
                    cx,
                    facts.mac,
                    LeaseAction::Declined,
                    *ip,
                    format!("declined {ip}: another machine answers for it"),
                );
            }
        }
        None => {}
    }
    let Some((reply, dest)) = decision.reply else {
        if !decision.note.is_empty() {
            tracing::debug!(mac = %facts.mac, kind, note = decision.note, "no DHCP reply");
        }
        return if changed {
            Handled::Changed
        } else {
            Handled::Nothing
        };
    };
    let mut out = Vec::with_capacity(512);
    if let Err(error) = reply.encode(&mut Encoder::new(&mut out)) {
        tracing::error!(%error, "cannot encode a DHCP reply");
        return if changed {
            Handled::Changed
        } else {
            Handled::Nothing
        };
    }
    let to = if cx.reply_to_sender {
        src
    } else {
        match dest {
            Destination::Relay(ip) => SocketAddrV4::new(ip, cx.config.server_port).into(),
            Destination::Unicast(ip) => SocketAddrV4::new(ip, cx.config.client_port).into(),
            Destination::Broadcast => {
                SocketAddrV4::new(Ipv4Addr::BROADCAST, cx.config.client_port).into()
            }
        }
    };
    let binds = matches!(decision.lease, Some(LeaseChange::Bind(_)));
    Handled::Reply(out, to, changed, binds)
}

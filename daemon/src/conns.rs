//! Bounds on every TCP listener, so that a LAN client cannot exhaust the daemon's file
//! descriptors or pin its connections (HTTP, HTTPS API, mirror, DNS over TCP).
//!
//! Each listener has a [`ConnTable`] with a fixed number of slots. A connection gets a slot
//! when accepted; when every slot is taken, an idle connection (no request in progress) is
//! closed to make room: one of the source address holding the most slots (an IPv6 source is
//! its /64), and of those the one that has waited longest for anything from us (the oldest
//! last byte sent). A flood of idle or trickling connections from one host therefore evicts
//! its own connections, never a real client's — not even one still in its TLS handshake
//! (`/healthz` still answers in the middle of one). Only when every slot is busy serving a
//! request is the new connection refused. Both are counted in
//! `lacave_connections_dropped_total{listener,reason}`.
//!
//! [`Tracked`] wraps a connection's stream: every byte written is progress, and a write that
//! stays blocked for [`WRITE_TIMEOUT`] (a reader that stopped reading) fails the connection.
//! Request heads have their own deadline in each server (hyper's header-read timeout, the
//! mirror's and DNS's own).

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv6Addr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// A write that makes no progress for this long ends the connection (nginx's `send_timeout`
/// is 60 s; boot clients read as fast as the LAN allows).
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Time to send a whole request head, waiting between keep-alive requests included.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// Descriptors kept for everything but the listeners: the store, logs, the cluster and
/// add-on clients, the DHCP sockets.
const RESERVED_FDS: u64 = 256;

/// The connection cap of each listener and the TFTP transfer cap. Each connection holds a
/// socket, and some a file too (a streamed `/boot/` or `/mirror/` response, a mirror
/// download); [`Caps::fds`] counts the worst case, which must stay under the open-files limit
/// (the unit's `LimitNOFILE=16384`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caps {
    pub http: usize,
    pub api: usize,
    pub mirror: usize,
    pub dns_tcp: usize,
    pub tftp: usize,
}

impl Caps {
    pub const DEFAULT: Caps = Caps {
        http: 1024,
        api: 256,
        mirror: 1024,
        dns_tcp: 128,
        tftp: 512,
    };

    /// Event streams (`GET /api/v1/events`) open at once: a quarter of the API's
    /// connections, so that streams can never take every slot from ordinary requests.
    pub fn event_streams(&self) -> usize {
        (self.api / 4).max(2)
    }

    /// Descriptors these caps can use at once, the reserve included.
    pub fn fds(&self) -> u64 {
        (2 * self.http + self.api + 2 * self.mirror + self.dns_tcp + self.tftp) as u64
            + RESERVED_FDS
    }

    /// The default caps, scaled down to fit `limit` open files when it is lower (a shell's
    /// default 1024): a flood then meets a cap, never `EMFILE`.
    pub fn fitting(limit: Option<u64>) -> Caps {
        let d = Caps::DEFAULT;
        let Some(limit) = limit.filter(|l| *l < d.fds()) else {
            return d;
        };
        let room = limit.saturating_sub(RESERVED_FDS) as f64;
        let factor = room / (d.fds() - RESERVED_FDS) as f64;
        let scale = |n: usize| ((n as f64 * factor) as usize).max(4);
        Caps {
            http: scale(d.http),
            api: scale(d.api),
            mirror: scale(d.mirror),
            dns_tcp: scale(d.dns_tcp),
            tftp: scale(d.tftp),
        }
    }
}

struct Entry {
    /// The peer, as [`source_key`] groups it.
    source: IpAddr,
    state: Arc<ConnState>,
}

/// The address a connection counts against: an IPv4 address, or an IPv6 address's /64 (one
/// host can hold a whole /64); an IPv4-mapped IPv6 address is its IPv4 address.
pub fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// What the table knows of one connection.
struct ConnState {
    /// Milliseconds since the table's epoch when we last sent a byte (or a request arrived).
    progress: AtomicU64,
    /// Requests being answered on this connection.
    busy: AtomicUsize,
    /// Fired when the connection is evicted.
    evicted: CancellationToken,
}

/// The slots of one listener.
pub struct ConnTable {
    listener: &'static str,
    cap: usize,
    epoch: Instant,
    next_id: AtomicU64,
    slots: Mutex<HashMap<u64, Entry>>,
    metrics: Arc<Metrics>,
}

impl ConnTable {
    pub fn new(listener: &'static str, cap: usize, metrics: Arc<Metrics>) -> Arc<ConnTable> {
        Arc::new(ConnTable {
            listener,
            cap: cap.max(1),
            epoch: Instant::now(),
            next_id: AtomicU64::new(0),
            slots: Mutex::new(HashMap::new()),
            metrics,
        })
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Connections holding a slot.
    pub fn len(&self) -> usize {
        self.slots.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A slot for a new connection from `peer`, evicting an idle one when full (see the
    /// module's documentation for which); `None` (refused) when every connection is busy
    /// with a request.
    pub fn admit(self: &Arc<Self>, peer: IpAddr) -> Option<Slot> {
        let now = self.now();
        let source = source_key(peer);
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        if slots.len() >= self.cap {
            let mut held: HashMap<IpAddr, usize> = HashMap::new();
            for entry in slots.values() {
                *held.entry(entry.source).or_default() += 1;
            }
            // The newcomer counts against its own source: a host at the top cannot take a
            // slot from another host holding as many.
            *held.entry(source).or_default() += 1;
            let victim = slots
                .iter()
                .filter(|(_, e)| e.state.busy.load(Ordering::Relaxed) == 0)
                .max_by_key(|(_, e)| {
                    (
                        held.get(&e.source).copied().unwrap_or(0),
                        std::cmp::Reverse(e.state.progress.load(Ordering::Relaxed)),
                    )
                })
                .map(|(id, _)| *id);
            match victim {
                Some(id) => {
                    if let Some(entry) = slots.remove(&id) {
                        entry.state.evicted.cancel();
                    }
                    self.metrics
                        .connections_dropped
                        .inc(&[self.listener, "evicted"]);
                }
                None => {
                    drop(slots);
                    self.metrics
                        .connections_dropped
                        .inc(&[self.listener, "refused"]);
                    tracing::warn!(
                        listener = self.listener,
                        cap = self.cap,
                        "every connection slot is busy: a new connection is refused"
                    );
                    return None;
                }
            }
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let state = Arc::new(ConnState {
            progress: AtomicU64::new(now),
            busy: AtomicUsize::new(0),
            evicted: CancellationToken::new(),
        });
        slots.insert(
            id,
            Entry {
                source,
                state: state.clone(),
            },
        );
        Some(Slot {
            table: self.clone(),
            id,
            state,
        })
    }

    /// Counts a connection ended by a deadline (head or write).
    pub fn timed_out(&self) {
        self.metrics
            .connections_dropped
            .inc(&[self.listener, "timeout"]);
    }
}

/// The next connection `table` admits, with its slot. A failed accept (`EMFILE` and the like,
/// which the caps keep from happening) waits 50 ms rather than spin; a connection refused a
/// slot is closed at once.
pub async fn accept(
    listener: &tokio::net::TcpListener,
    table: &Arc<ConnTable>,
) -> (tokio::net::TcpStream, std::net::SocketAddr, Slot) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                if let Some(slot) = table.admit(peer.ip()) {
                    return (stream, peer, slot);
                }
            }
            Err(error) => {
                tracing::warn!(%error, listener = table.listener, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// A connection's place in its table, released on drop.
pub struct Slot {
    table: Arc<ConnTable>,
    id: u64,
    state: Arc<ConnState>,
}

impl Slot {
    /// Resolves when the table closed this connection to make room for another.
    pub async fn evicted(&self) {
        self.state.evicted.cancelled().await
    }

    /// Marks a request in progress until the guard is dropped: the connection cannot be
    /// evicted meanwhile.
    pub fn busy(&self) -> Busy {
        self.state.busy.fetch_add(1, Ordering::Relaxed);
        self.touch();
        Busy {
            state: self.state.clone(),
            table: self.table.clone(),
        }
    }

    /// Records progress (a byte sent, a request received).
    pub fn touch(&self) {
        self.state
            .progress
            .store(self.table.now(), Ordering::Relaxed);
    }

    pub fn table(&self) -> &ConnTable {
        &self.table
    }

    /// A handle for recording progress from the stream wrapper.
    fn progress(&self) -> Progress {
        Progress {
            state: self.state.clone(),
            table: self.table.clone(),
        }
    }

    /// Wraps `io` so that writes count as progress and stall out after [`WRITE_TIMEOUT`].
    pub fn track<IO>(&self, io: IO) -> Tracked<IO> {
        Tracked {
            io,
            progress: self.progress(),
            write_timeout: WRITE_TIMEOUT,
            write_deadline: None,
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.table
            .slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.id);
    }
}

/// A request in progress on a connection.
pub struct Busy {
    state: Arc<ConnState>,
    table: Arc<ConnTable>,
}

/// A UDP socket on `at` with `SO_REUSEPORT`, one of several a service binds on the same
/// address (one per worker thread): the kernel spreads datagrams over them.
pub fn reuseport_udp(at: std::net::SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(at),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    socket.set_reuse_port(true)?;
    socket.bind(&at.into())?;
    Ok(socket.into())
}

/// A connection's [`Busy`] mark shared with a response that outlives its handler (a
/// stream): the request carries it as an extension, and the connection stays busy, never
/// evicted as idle, until the last clone is dropped.
#[derive(Clone)]
pub struct BusyWhile(#[allow(dead_code)] Arc<Busy>);

impl BusyWhile {
    pub fn new(busy: Busy) -> BusyWhile {
        BusyWhile(Arc::new(busy))
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.state
            .progress
            .store(self.table.now(), Ordering::Relaxed);
        self.state.busy.fetch_sub(1, Ordering::Relaxed);
    }
}

#[derive(Clone)]
struct Progress {
    state: Arc<ConnState>,
    table: Arc<ConnTable>,
}

impl Progress {
    fn touch(&self) {
        self.state
            .progress
            .store(self.table.now(), Ordering::Relaxed);
    }
}

/// A stream whose writes count as progress and fail after [`WRITE_TIMEOUT`] without any.
pub struct Tracked<IO> {
    io: IO,
    progress: Progress,
    write_timeout: Duration,
    write_deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<IO> Tracked<IO> {
    pub fn get_ref(&self) -> &IO {
        &self.io
    }

    pub fn get_mut(&mut self) -> &mut IO {
        &mut self.io
    }

    /// Turns a pending write into a timeout error once the deadline has passed.
    fn pending_write<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        let timeout = self.write_timeout;
        let deadline = self
            .write_deadline
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match deadline.as_mut().poll(cx) {
            Poll::Ready(()) => {
                self.progress.table.timed_out();
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the client stopped reading",
                )))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn wrote(&mut self, n: usize) {
        self.write_deadline = None;
        if n > 0 {
            self.progress.touch();
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Tracked<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Tracked<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.io).poll_write(cx, buf) {
            Poll::Ready(Ok(n)) => {
                self.wrote(n);
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => self.pending_write(cx),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.io).poll_write_vectored(cx, bufs) {
            Poll::Ready(Ok(n)) => {
                self.wrote(n);
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => self.pending_write(cx),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.io).poll_flush(cx) {
            Poll::Ready(r) => {
                self.write_deadline = None;
                Poll::Ready(r)
            }
            Poll::Pending => self.pending_write(cx),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Raises the soft open-files limit to the hard one (as systemd's `LimitNOFILE=` or a shell's
/// `ulimit -Hn` allow), and returns the caps that fit the result.
pub fn raise_fd_limit() -> Caps {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if let Some(hard) = limit.maximum
        && limit.current.is_some_and(|soft| soft < hard)
    {
        limit.current = Some(hard);
        if let Err(error) = setrlimit(Resource::Nofile, limit) {
            tracing::debug!(%error, "cannot raise the open-files limit");
        }
    }
    let soft = getrlimit(Resource::Nofile).current;
    let caps = Caps::fitting(soft);
    if caps != Caps::DEFAULT {
        tracing::warn!(
            limit = soft.unwrap_or_default(),
            wanted = Caps::DEFAULT.fds(),
            ?caps,
            "the open-files limit is low: connection caps scaled down to fit it (the systemd \
             unit sets LimitNOFILE=16384; raise `ulimit -n` otherwise)"
        );
    }
    caps
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 2));

    fn table(cap: usize) -> Arc<ConnTable> {
        ConnTable::new("http", cap, Arc::new(Metrics::default()))
    }

    #[tokio::test]
    async fn a_full_table_evicts_the_longest_idle_connection() {
        let t = table(2);
        let old = t.admit(A).expect("a slot");
        tokio::time::sleep(Duration::from_millis(5)).await;
        let recent = t.admit(A).expect("a slot");
        tokio::time::sleep(Duration::from_millis(5)).await;
        old.touch(); // `old` just sent a byte: `recent` has now waited longest.
        let newest = t.admit(A).expect("room is made");
        assert_eq!(t.len(), 2);
        tokio::time::timeout(Duration::from_secs(1), recent.evicted())
            .await
            .expect("the longest-waiting connection is told to close");
        assert!(!old.state.evicted.is_cancelled());
        assert!(!newest.state.evicted.is_cancelled());
        assert_eq!(t.metrics.connections_dropped.get(&["http", "evicted"]), 1);
    }

    #[tokio::test]
    async fn a_flooding_source_evicts_its_own_connections_first() {
        let t = table(4);
        // A real client connects first and waits the longest (say, in its TLS handshake)...
        let client = t.admit(B).expect("a slot");
        tokio::time::sleep(Duration::from_millis(5)).await;
        // ...while one host fills every other slot and keeps connecting.
        let mut flood: Vec<Slot> = (0..3).map(|_| t.admit(A).expect("a slot")).collect();
        for _ in 0..20 {
            flood.push(t.admit(A).expect("room is made"));
            flood.retain(|s| !s.state.evicted.is_cancelled());
        }
        assert!(
            !client.state.evicted.is_cancelled(),
            "the flood evicted only its own connections"
        );
        // A second client still gets in, at the flood's expense.
        let other = t.admit(B).expect("room is made");
        assert!(!client.state.evicted.is_cancelled() && !other.state.evicted.is_cancelled());
        // Equal holders: the newcomer does not evict a host that holds no more than it will.
        drop(flood);
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn ipv6_sources_count_by_64_and_mapped_ipv4_as_ipv4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        assert_eq!(source_key(a), source_key(b));
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_ne!(source_key(a), source_key(c));
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(source_key(mapped), A);
    }

    #[tokio::test]
    async fn busy_connections_are_never_evicted_and_a_full_busy_table_refuses() {
        let t = table(1);
        let serving = t.admit(A).expect("a slot");
        let busy = serving.busy();
        assert!(t.admit(A).is_none(), "the only slot is answering a request");
        assert_eq!(t.metrics.connections_dropped.get(&["http", "refused"]), 1);
        drop(busy);
        let next = t.admit(A).expect("idle again: evictable");
        assert!(serving.state.evicted.is_cancelled());
        drop(serving);
        assert_eq!(
            t.len(),
            1,
            "an evicted slot's drop does not free the new one"
        );
        drop(next);
        assert!(t.is_empty());
    }

    #[test]
    fn caps_fit_the_open_files_limit() {
        assert_eq!(Caps::fitting(None), Caps::DEFAULT);
        assert_eq!(Caps::fitting(Some(16384)), Caps::DEFAULT);
        assert!(
            Caps::DEFAULT.fds() <= 16384 / 2,
            "the unit's limit leaves room"
        );
        for limit in [1024, 4096] {
            let caps = Caps::fitting(Some(limit));
            assert!(caps.fds() <= limit, "{limit}: {caps:?}");
            assert!(caps.http > 100 && caps.tftp > 50, "{limit}: {caps:?}");
        }
        // Absurdly low: a few connections each, never none.
        let tiny = Caps::fitting(Some(64));
        assert!(tiny.http >= 4 && tiny.dns_tcp >= 4 && tiny.tftp >= 4);
    }

    #[tokio::test]
    async fn a_write_blocked_past_the_deadline_fails() {
        use tokio::io::AsyncWriteExt;
        let t = table(1);
        let slot = t.admit(A).expect("a slot");
        // A pipe with a 16-byte buffer that nobody reads.
        let (writer, _reader) = tokio::io::duplex(16);
        let mut tracked = slot.track(writer);
        tracked.write_timeout = Duration::from_millis(100);
        tracked.write_all(&[0; 16]).await.expect("fits the buffer");
        let error = tracked
            .write_all(&[0; 1])
            .await
            .expect_err("nobody reads: the write times out");
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert_eq!(t.metrics.connections_dropped.get(&["http", "timeout"]), 1);
    }
}

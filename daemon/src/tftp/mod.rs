//! The read-only TFTP server that hands iPXE binaries to machines' firmware. async-tftp moves
//! the packets (blksize, tsize, timeout and windowsize options included); this module decides
//! which file a request may read, and logs and counts each transfer.
//!
//! A request is refused when its path is absolute or has `..`, when it leads (through links)
//! anywhere but inside the root or one of `follow_links_into` (Debian's `ipxe` package links
//! `ipxe.efi` into `/boot`), or when it is not a regular file. Write requests are refused.
//!
//! Bounds, so that requests nobody acknowledges cannot hold sockets: a block is sent again
//! after 2 s without an ACK, 5 times at most (a dead transfer ends within ~12 s), and a
//! client's `timeout` option is not honoured; at most `max_transfers` at once (512, fewer under
//! a low open-files limit: `crate::conns::Caps`) and
//! `max_transfers_per_client` from one address; beyond, the request gets an error packet
//! ("busy") before any socket or file is opened.

pub mod resolve;
pub mod settings;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use async_tftp::packet;
use futures_lite::AsyncRead;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use resolve::{Refusal, resolve};

use crate::metrics::Metrics;

/// Time without an ACK before a block is sent again, and how many times.
const RETRANSMIT_AFTER: Duration = Duration::from_secs(2);
const RETRANSMISSIONS: u32 = 5;

/// The TFTP service's settings.
#[derive(Clone, Debug)]
pub struct TftpSettings {
    pub root: PathBuf,
    pub follow_links_into: Vec<PathBuf>,
    pub max_transfers_per_client: usize,
    pub max_transfers: usize,
}

/// Transfers in progress, in total and by client address.
#[derive(Default)]
struct Slots {
    total: usize,
    by_client: HashMap<IpAddr, usize>,
}

/// A transfer's place in [`Slots`], given back on drop.
struct Slot {
    slots: Arc<Mutex<Slots>>,
    client: IpAddr,
}

impl Slot {
    fn take(slots: &Arc<Mutex<Slots>>, client: IpAddr, settings: &TftpSettings) -> Option<Slot> {
        let mut s = slots.lock().unwrap_or_else(|e| e.into_inner());
        let mine = s.by_client.get(&client).copied().unwrap_or(0);
        if s.total >= settings.max_transfers || mine >= settings.max_transfers_per_client {
            return None;
        }
        s.total += 1;
        s.by_client.insert(client, mine + 1);
        Some(Slot {
            slots: slots.clone(),
            client,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut s = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        s.total -= 1;
        if let Some(n) = s.by_client.get_mut(&self.client) {
            *n -= 1;
            if *n == 0 {
                s.by_client.remove(&self.client);
            }
        }
    }
}

/// Boot binaries are small and every machine fetches the same ones: each file is read once and
/// shared by all transfers, until its size or modification time changes.
const CACHE_MAX_FILE: u64 = 64 * 1024 * 1024;

type Cached = (u64, std::time::SystemTime, Arc<[u8]>);

struct SafeRoot {
    settings: Arc<TftpSettings>,
    metrics: Arc<Metrics>,
    cache: HashMap<PathBuf, Cached>,
    slots: Arc<Mutex<Slots>>,
}

impl SafeRoot {
    /// The file's bytes, from the cache when it is still current.
    fn contents(&mut self, path: &Path) -> std::io::Result<Arc<[u8]>> {
        let meta = std::fs::metadata(path)?;
        let (len, modified) = (meta.len(), meta.modified()?);
        if let Some((l, m, bytes)) = self.cache.get(path)
            && *l == len
            && *m == modified
        {
            return Ok(bytes.clone());
        }
        if len > CACHE_MAX_FILE {
            return Err(std::io::Error::other(format!(
                "{len} bytes is more than a TFTP boot file should be ({CACHE_MAX_FILE} at most)"
            )));
        }
        let bytes: Arc<[u8]> = std::fs::read(path)?.into();
        self.cache
            .insert(path.to_path_buf(), (len, modified, bytes.clone()));
        Ok(bytes)
    }
}

/// A file being sent: counts bytes, and logs and counts the transfer when it ends.
pub struct Transfer {
    file: futures_lite::io::Cursor<Arc<[u8]>>,
    path: String,
    client: SocketAddr,
    size: u64,
    sent: u64,
    started: std::time::Instant,
    metrics: Arc<Metrics>,
    _slot: Slot,
}

impl AsyncRead for Transfer {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.file).poll_read(cx, buf);
        if let Poll::Ready(Ok(n)) = &poll {
            self.sent += *n as u64;
        }
        poll
    }
}

impl Drop for Transfer {
    fn drop(&mut self) {
        let complete = self.sent >= self.size;
        let result = if complete { "complete" } else { "aborted" };
        self.metrics.tftp_transfers.inc(&[result]);
        if complete {
            tracing::info!(client = %self.client, path = %self.path, bytes = self.sent, ms = self.started.elapsed().as_millis() as u64, "tftp transfer complete");
        } else {
            tracing::warn!(client = %self.client, path = %self.path, sent = self.sent, size = self.size, "tftp transfer aborted");
        }
    }
}

impl async_tftp::server::Handler for SafeRoot {
    type Reader = Transfer;
    type Writer = futures_lite::io::Sink;

    async fn read_req_open(
        &mut self,
        client: &SocketAddr,
        path: &Path,
    ) -> Result<(Self::Reader, Option<u64>), packet::Error> {
        let shown = path.display().to_string();
        let Some(slot) = Slot::take(&self.slots, client.ip(), &self.settings) else {
            self.metrics.tftp_transfers.inc(&["busy"]);
            tracing::warn!(%client, path = %shown, "tftp request refused: too many transfers at once");
            return Err(packet::Error::Msg("server busy, try again".into()));
        };
        let resolved = resolve(&self.settings.root, &self.settings.follow_links_into, path);
        let target = match resolved {
            Ok(target) => target,
            Err(refusal) => {
                self.metrics.tftp_transfers.inc(&[refusal.metric()]);
                tracing::warn!(%client, path = %shown, reason = %refusal, "tftp request refused");
                return Err(refusal.packet_error());
            }
        };
        let bytes = self.contents(&target).map_err(|error| {
            tracing::warn!(%client, path = %shown, %error, "tftp open failed");
            self.metrics.tftp_transfers.inc(&["not_found"]);
            packet::Error::FileNotFound
        })?;
        let size = bytes.len() as u64;
        tracing::debug!(%client, path = %shown, size, "tftp transfer starting");
        Ok((
            Transfer {
                file: futures_lite::io::Cursor::new(bytes),
                path: shown,
                client: *client,
                size,
                sent: 0,
                started: std::time::Instant::now(),
                metrics: self.metrics.clone(),
                _slot: slot,
            },
            Some(size),
        ))
    }

    async fn write_req_open(
        &mut self,
        client: &SocketAddr,
        path: &Path,
        _size: Option<u64>,
    ) -> Result<Self::Writer, packet::Error> {
        self.metrics.tftp_transfers.inc(&["write_refused"]);
        tracing::warn!(%client, path = %path.display(), "tftp write request refused: the server is read-only");
        Err(packet::Error::PermissionDenied)
    }
}

/// Binds the TFTP request sockets: one per core, all on `addr` with `SO_REUSEPORT`, so that
/// the kernel spreads requests over them (for port 0, the first socket picks the port).
pub fn bind(addr: SocketAddr) -> std::io::Result<Vec<std::net::UdpSocket>> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 8);
    let mut sockets = Vec::with_capacity(threads);
    let mut at = addr;
    for _ in 0..threads {
        let socket = crate::conns::reuseport_udp(at)?;
        at = socket.local_addr()?;
        sockets.push(socket);
    }
    Ok(sockets)
}

/// Serves TFTP on `sockets` until `cancel` fires: a thread and an executor per socket
/// (async-tftp runs on its own executor).
pub fn serve(
    sockets: Vec<std::net::UdpSocket>,
    settings: TftpSettings,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
    tasks: &TaskTracker,
) -> std::io::Result<()> {
    let settings = Arc::new(settings);
    let slots = Arc::new(Mutex::new(Slots::default()));
    for (i, socket) in sockets.into_iter().enumerate() {
        let handler = SafeRoot {
            settings: settings.clone(),
            metrics: metrics.clone(),
            cache: HashMap::new(),
            slots: slots.clone(),
        };
        let cancel = cancel.clone();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name(format!("lacave-tftp-{i}"))
            .spawn(move || {
                let run = async {
                    let server = async_tftp::server::TftpServerBuilder::with_handler(handler)
                        .std_socket(socket)?
                        .timeout(RETRANSMIT_AFTER)
                        .max_send_retries(RETRANSMISSIONS)
                        .ignore_client_timeout()
                        .build()
                        .await?;
                    server.serve().await
                };
                let stop = async {
                    cancel.cancelled().await;
                    Ok(())
                };
                // async-io's block_on polls the reactor on this very thread, so a packet is
                // received and answered without waking another thread.
                if let Err(error) = async_io::block_on(futures_lite::future::or(run, stop)) {
                    tracing::error!(%error, "tftp server stopped");
                }
                let _ = done_tx.send(());
            })?;
        tasks.spawn(async move {
            let _ = done_rx.await;
        });
    }
    Ok(())
}

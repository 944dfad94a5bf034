//! The read-only TFTP server that hands iPXE binaries to machines' firmware. async-tftp moves
//! the packets (blksize, tsize, timeout and windowsize options included); this module decides
//! which file a request may read, and logs and counts each transfer.
//!
//! A request is refused when its path is absolute or has `..`, when it leads (through links)
//! anywhere but inside the root or one of `follow_links_into` (Debian's `ipxe` package links
//! `ipxe.efi` into `/boot`), or when it is not a regular file. Write requests are refused.

mod resolve;

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use async_tftp::packet;
use blocking::Unblock;
use futures_lite::AsyncRead;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use resolve::{Refusal, resolve};

use crate::metrics::Metrics;

/// The TFTP service's settings.
#[derive(Clone, Debug)]
pub struct TftpSettings {
    pub root: PathBuf,
    pub follow_links_into: Vec<PathBuf>,
}

struct SafeRoot {
    settings: Arc<TftpSettings>,
    metrics: Arc<Metrics>,
}

/// A file being sent: counts bytes, and logs and counts the transfer when it ends.
pub struct Transfer {
    file: Unblock<File>,
    path: String,
    client: SocketAddr,
    size: u64,
    sent: u64,
    started: std::time::Instant,
    metrics: Arc<Metrics>,
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
        let resolved = resolve(&self.settings.root, &self.settings.follow_links_into, path);
        let target = match resolved {
            Ok(target) => target,
            Err(refusal) => {
                self.metrics.tftp_transfers.inc(&[refusal.metric()]);
                tracing::warn!(%client, path = %shown, reason = %refusal, "tftp request refused");
                return Err(refusal.packet_error());
            }
        };
        let opened = blocking::unblock(move || {
            let file = File::open(&target)?;
            let size = file.metadata()?.len();
            Ok::<_, std::io::Error>((file, size))
        })
        .await;
        let (file, size) = opened.map_err(|error| {
            tracing::warn!(%client, path = %shown, %error, "tftp open failed");
            self.metrics.tftp_transfers.inc(&["not_found"]);
            packet::Error::FileNotFound
        })?;
        tracing::debug!(%client, path = %shown, size, "tftp transfer starting");
        Ok((
            Transfer {
                file: Unblock::new(file),
                path: shown,
                client: *client,
                size,
                sent: 0,
                started: std::time::Instant::now(),
                metrics: self.metrics.clone(),
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

/// Serves TFTP on `socket` until `cancel` fires, on a thread of its own (async-tftp runs on
/// its own executor).
pub fn serve(
    socket: std::net::UdpSocket,
    settings: TftpSettings,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
    tasks: &TaskTracker,
) -> std::io::Result<()> {
    let handler = SafeRoot {
        settings: Arc::new(settings),
        metrics,
    };
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::Builder::new()
        .name("lacave-tftp".into())
        .spawn(move || {
            let run = async {
                let server = async_tftp::server::TftpServerBuilder::with_handler(handler)
                    .std_socket(socket)?
                    .build()
                    .await?;
                server.serve().await
            };
            let stop = async {
                cancel.cancelled().await;
                Ok(())
            };
            if let Err(error) = futures_lite::future::block_on(futures_lite::future::or(run, stop))
            {
                tracing::error!(%error, "tftp server stopped");
            }
            let _ = done_tx.send(());
        })?;
    tasks.spawn(async move {
        let _ = done_rx.await;
    });
    Ok(())
}

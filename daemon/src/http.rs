//! Serves an axum application on a TCP listener, plain or TLS, within the bounds of
//! [`crate::conns`]: a slot per connection (the longest-waiting idle one closed when full),
//! a TLS handshake deadline, hyper's header-read deadline (which also ends idle keep-alive
//! connections) and the write-progress deadline. Each connection runs in its own task, so a
//! client that stalls holds up nobody else; on shutdown, requests in flight finish.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_service::Service;

use crate::api::PeerAddr;
use crate::conns::{self, ConnTable, HEAD_TIMEOUT, Slot};

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `app` on `listener` until `cancel` fires.
pub fn serve(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    app: axum::Router,
    table: Arc<ConnTable>,
    cancel: CancellationToken,
    tasks: &TaskTracker,
) {
    let acceptor = tls.map(TlsAcceptor::from);
    let connections = tasks.clone();
    tasks.spawn(async move {
        loop {
            let (tcp, peer, slot) = tokio::select! {
                _ = cancel.cancelled() => return,
                accepted = conns::accept(&listener, &table) => accepted,
            };
            let slot = Arc::new(slot);
            let _ = tcp.set_nodelay(true);
            let (app, acceptor, cancel) = (app.clone(), acceptor.clone(), cancel.clone());
            connections.spawn(async move {
                tokio::select! {
                    _ = slot.evicted() => {
                        tracing::debug!(%peer, "connection closed to make room for a new one");
                    }
                    _ = connection(tcp, peer, acceptor, app, slot.clone(), cancel) => {}
                }
            });
        }
    });
}

async fn connection(
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    acceptor: Option<TlsAcceptor>,
    app: axum::Router,
    slot: Arc<Slot>,
    cancel: CancellationToken,
) {
    match acceptor {
        None => http(slot.track(tcp), peer, app, slot, cancel).await,
        Some(acceptor) => {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => http(slot.track(stream), peer, app, slot, cancel).await,
                Ok(Err(error)) => tracing::debug!(%peer, %error, "TLS handshake failed"),
                Err(_) => {
                    slot.table().timed_out();
                    tracing::debug!(%peer, "TLS handshake timed out");
                }
            }
        }
    }
}

async fn http<IO>(
    io: IO,
    peer: SocketAddr,
    app: axum::Router,
    slot: Arc<Slot>,
    cancel: CancellationToken,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let table = slot.clone();
    let service =
        hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
            let mut request = request.map(axum::body::Body::new);
            request.extensions_mut().insert(ConnectInfo(PeerAddr(peer)));
            let busy = crate::conns::BusyWhile::new(slot.busy());
            request.extensions_mut().insert(busy.clone());
            let mut app = app.clone();
            async move {
                let response = app.call(request).await;
                drop(busy);
                response
            }
        });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEAD_TIMEOUT)
        .serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    tokio::select! {
        served = conn.as_mut() => {
            if let Err(error) = served {
                if error.is_timeout() {
                    table.table().timed_out();
                }
                tracing::debug!(%peer, %error, "connection ended");
            }
        }
        _ = cancel.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

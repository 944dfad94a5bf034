//! The image mirror's own listener (`[http] mirror_listen`): a small HTTP/1.1 file server for
//! the big files a boot storm pulls (Flatcar's initrd, its disk image) and container image
//! blobs, sending them with `sendfile(2)` from the page cache to the socket, as nginx does,
//! instead of through a user-space buffer. GET and HEAD under `/mirror/` and the read-only OCI
//! Distribution API under `/v2/` (`crate::images`), single `Range`s, keep-alive; everything
//! else gets a short error. Without `mirror_listen`, both are served (streamed) on the main
//! HTTP listener.
//!
//! Limits (see [`crate::conns`]): 8 KiB of request head, 10 s to send it whole (idle
//! keep-alive included), 30 s for a blocked write, 1,024 connections at once (fewer under a low open-files limit), the
//! longest-waiting idle one closed to make room.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::boot::{self, Range};
use crate::conns::{ConnTable, HEAD_TIMEOUT, Slot, WRITE_TIMEOUT};
use crate::metrics::Metrics;

const MAX_HEAD: usize = 8 * 1024;

pub fn serve(
    listener: TcpListener,
    dir: PathBuf,
    images: crate::images::ImageStore,
    table: Arc<ConnTable>,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
    tasks: &TaskTracker,
) {
    let dir = Arc::new(dir);
    let images = Arc::new(images);
    let inner = tasks.clone();
    tasks.spawn(async move {
        loop {
            let (stream, peer, slot) = tokio::select! {
                _ = cancel.cancelled() => return,
                accepted = crate::conns::accept(&listener, &table) => accepted,
            };
            let (dir, images, metrics, cancel) =
                (dir.clone(), images.clone(), metrics.clone(), cancel.clone());
            inner.spawn(async move {
                tokio::select! {
                    _ = cancel.cancelled() => {}
                    _ = slot.evicted() => {
                        tracing::debug!(%peer, "mirror connection closed to make room for a new one");
                    }
                    r = connection(stream, peer, &dir, &images, &metrics, &slot) => {
                        if let Err(error) = r {
                            if error.kind() == io::ErrorKind::TimedOut {
                                slot.table().timed_out();
                            }
                            tracing::debug!(%peer, %error, "mirror connection ended");
                        }
                    }
                }
            });
        }
    });
}

/// A parsed request head.
struct Head {
    head_only: bool,
    path: String,
    query: String,
    range: Option<String>,
    keep_alive: bool,
}

enum Parsed {
    Request(Head, usize),
    Incomplete,
    Bad(&'static str, &'static str),
}

fn parse(buf: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    let used = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Parsed::Incomplete,
        Err(_) => return Parsed::Bad("400 Bad Request", "malformed request"),
    };
    let head_only = match req.method {
        Some("GET") => false,
        Some("HEAD") => true,
        _ => return Parsed::Bad("405 Method Not Allowed", "the mirror is read-only"),
    };
    let header = |name: &str| {
        req.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
            .map(str::to_string)
    };
    let connection = header("connection")
        .unwrap_or_default()
        .to_ascii_lowercase();
    let keep_alive = match req.version {
        Some(1) => !connection.contains("close"),
        _ => connection.contains("keep-alive"),
    };
    let target = req.path.unwrap_or_default();
    let target = target.split('#').next().unwrap_or_default();
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    Parsed::Request(
        Head {
            head_only,
            path: path.to_string(),
            query: query.to_string(),
            range: header("range"),
            keep_alive,
        },
        used,
    )
}

async fn connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    dir: &std::path::Path,
    images: &crate::images::ImageStore,
    metrics: &Metrics,
    slot: &Slot,
) -> io::Result<()> {
    let _ = stream.set_nodelay(true);
    let mut buf = Vec::with_capacity(1024);
    loop {
        // Read one request head, whole, within HEAD_TIMEOUT (a byte now and then does not
        // keep a connection forever).
        let deadline = tokio::time::Instant::now() + HEAD_TIMEOUT;
        let (head, used) = loop {
            match parse(&buf) {
                Parsed::Request(h, n) => break (h, n),
                Parsed::Bad(status, why) => {
                    metrics.api_requests.inc(&["mirror", "?", &status[..3]]);
                    return reply_error(&mut stream, status, why, false).await;
                }
                Parsed::Incomplete if buf.len() >= MAX_HEAD => {
                    metrics.api_requests.inc(&["mirror", "?", "431"]);
                    return reply_error(
                        &mut stream,
                        "431 Request Header Fields Too Large",
                        "request head over 8 KiB",
                        false,
                    )
                    .await;
                }
                Parsed::Incomplete => {}
            }
            let mut chunk = [0u8; 2048];
            let n = match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
                Ok(r) => r?,
                Err(_) => {
                    slot.table().timed_out();
                    return Ok(()); // idle or too slow: close quietly
                }
            };
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        buf.drain(..used);
        let method = if head.head_only { "HEAD" } else { "GET" };
        let keep = head.keep_alive;
        let busy = slot.busy();
        let (route, status) = if head.path.starts_with("/v2/") {
            (
                "mirror-v2",
                registry(&mut stream, &head, images, slot).await?,
            )
        } else {
            (
                "mirror",
                respond(&mut stream, &head, dir, peer, slot).await?,
            )
        };
        drop(busy);
        metrics.api_requests.inc(&[route, method, status]);
        if !keep {
            return Ok(());
        }
    }
}

/// Answers one request; returns the status code sent.
async fn respond(
    stream: &mut TcpStream,
    head: &Head,
    dir: &std::path::Path,
    peer: SocketAddr,
    slot: &Slot,
) -> io::Result<&'static str> {
    let keep = head.keep_alive;
    let Some(rel) = head
        .path
        .strip_prefix("/mirror/")
        .filter(|p| !p.contains('%'))
    else {
        reply_error(stream, "404 Not Found", "not a mirror path", keep).await?;
        return Ok("404");
    };
    let (dir_owned, rel_owned) = (dir.to_path_buf(), rel.to_string());
    let file = tokio::task::spawn_blocking(move || {
        let path = boot::mirror_file(&dir_owned, &rel_owned)?;
        std::fs::File::open(&path).map_err(|e| e.to_string())
    })
    .await
    .map_err(io::Error::other)?;
    let file = match file {
        Ok(f) => f,
        Err(why) => {
            tracing::info!(%peer, path = head.path, why, "mirror request refused");
            reply_error(stream, "404 Not Found", "no such mirror file", keep).await?;
            return Ok("404");
        }
    };
    send_whole(stream, head, &file, "application/octet-stream", "", slot).await
}

/// A file (or the single range asked for) with its headers (`extra`: whole header lines),
/// sent with sendfile; returns the status code.
async fn send_whole(
    stream: &mut TcpStream,
    head: &Head,
    file: &std::fs::File,
    content_type: &str,
    extra: &str,
    slot: &Slot,
) -> io::Result<&'static str> {
    let keep = head.keep_alive;
    let len = file.metadata()?.len();
    let (status, start, count) = match boot::parse_range(head.range.as_deref(), len) {
        Range::Full => ("200 OK", 0, len),
        Range::Part { start, end } => ("206 Partial Content", start, end - start + 1),
        Range::Unsatisfiable => {
            let text = format!(
                "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{len}\r\nContent-Length: 0\r\n{}\r\n",
                connection_header(keep)
            );
            write_all(stream, text.as_bytes()).await?;
            return Ok("416");
        }
    };
    let mut text = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n{extra}Accept-Ranges: bytes\r\nContent-Length: {count}\r\n{}",
        connection_header(keep)
    );
    if start != 0 || count != len {
        text.push_str(&format!(
            "Content-Range: bytes {start}-{}/{len}\r\n",
            start + count - 1
        ));
    }
    text.push_str("\r\n");
    write_all(stream, text.as_bytes()).await?;
    if !head.head_only {
        send_file(stream, file, start, count, slot).await?;
    }
    Ok(&status[..3])
}

/// `/v2/…`: the OCI Distribution API over the image store, blobs sent with sendfile.
async fn registry(
    stream: &mut TcpStream,
    head: &Head,
    images: &crate::images::ImageStore,
    slot: &Slot,
) -> io::Result<&'static str> {
    let keep = head.keep_alive;
    let version = "Docker-Distribution-API-Version: registry/2.0\r\n";
    let rest = head.path.strip_prefix("/v2/").unwrap_or_default();
    if rest.is_empty() {
        let text = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n{version}{}\r\n{}",
            connection_header(keep),
            if head.head_only { "" } else { "{}" }
        );
        write_all(stream, text.as_bytes()).await?;
        return Ok("200");
    }
    let (store, rest_owned, ns) = (
        images.clone(),
        rest.to_string(),
        crate::images::ns_of(&head.query),
    );
    let found = tokio::task::spawn_blocking(move || {
        let found = store.lookup(&rest_owned, ns.as_deref())?;
        let file = std::fs::File::open(&found.path).map_err(|e| crate::images::LookupError {
            code: "BLOB_UNKNOWN",
            message: e.to_string(),
            server_fault: false,
        })?;
        Ok::<_, crate::images::LookupError>((found, file))
    })
    .await
    .map_err(io::Error::other)?;
    let (found, file) = match found {
        Ok(f) => f,
        Err(not) => {
            let body =
                serde_json::json!({ "errors": [{ "code": not.code, "message": not.message }] })
                    .to_string();
            let status = if not.server_fault {
                tracing::error!(path = %rest, error = %not.message, "registry: cannot look images up");
                "500 Internal Server Error"
            } else {
                "404 Not Found"
            };
            let text = format!(
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{version}{}\r\n{}",
                body.len(),
                connection_header(keep),
                if head.head_only { "" } else { body.as_str() }
            );
            write_all(stream, text.as_bytes()).await?;
            return Ok(if not.server_fault { "500" } else { "404" });
        }
    };
    let content_type = found
        .media_type
        .as_deref()
        .unwrap_or("application/octet-stream");
    let extra = format!("Docker-Content-Digest: {}\r\n{version}", found.digest);
    send_whole(stream, head, &file, content_type, &extra, slot).await
}

fn connection_header(keep: bool) -> &'static str {
    if keep {
        "Connection: keep-alive\r\n"
    } else {
        "Connection: close\r\n"
    }
}

async fn reply_error(
    stream: &mut TcpStream,
    status: &str,
    why: &str,
    keep: bool,
) -> io::Result<()> {
    let text = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n{}\r\n{why}\n",
        why.len() + 1,
        connection_header(keep)
    );
    write_all(stream, text.as_bytes()).await
}

/// `write_all` that fails when the client stops reading for [`WRITE_TIMEOUT`].
async fn write_all(stream: &mut TcpStream, bytes: &[u8]) -> io::Result<()> {
    tokio::time::timeout(WRITE_TIMEOUT, stream.write_all(bytes))
        .await
        .map_err(|_| stalled())?
}

fn stalled() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "the client read nothing for 30 s")
}

/// `count` bytes of `file` from `start`, page cache to socket.
async fn send_file(
    stream: &TcpStream,
    file: &std::fs::File,
    start: u64,
    count: u64,
    slot: &Slot,
) -> io::Result<()> {
    let mut offset = start;
    let end = start + count;
    while offset < end {
        let want = usize::try_from(end - offset)
            .unwrap_or(usize::MAX)
            .min(1 << 30);
        tokio::time::timeout(WRITE_TIMEOUT, stream.writable())
            .await
            .map_err(|_| stalled())??;
        let sent = match stream.try_io(Interest::WRITABLE, || {
            rustix::fs::sendfile(stream.as_fd(), file.as_fd(), Some(&mut offset), want)
                .map_err(io::Error::from)
        }) {
            Ok(n) => {
                slot.touch();
                n
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        };
        if sent == 0 {
            // The file shrank under us: the client sees a short body and retries.
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "mirror file shrank",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_heads() {
        match parse(b"GET /mirror/a?x=1 HTTP/1.1\r\nRange: bytes=0-9\r\n\r\nGET") {
            Parsed::Request(h, n) => {
                assert_eq!(h.path, "/mirror/a");
                assert_eq!(h.range.as_deref(), Some("bytes=0-9"));
                assert!(h.keep_alive && !h.head_only);
                assert_eq!(n, 48);
            }
            _ => panic!("a request"),
        }
        match parse(b"HEAD /mirror/a HTTP/1.0\r\n\r\n") {
            Parsed::Request(h, _) => assert!(h.head_only && !h.keep_alive),
            _ => panic!("a request"),
        }
        assert!(matches!(
            parse(b"GET /mirror/a HTTP/1.1\r\n"),
            Parsed::Incomplete
        ));
        assert!(matches!(
            parse(b"PUT /mirror/a HTTP/1.1\r\n\r\n"),
            Parsed::Bad("405 Method Not Allowed", _)
        ));
        assert!(matches!(
            parse(b"\x00\x01 garbage\r\n\r\n"),
            Parsed::Bad(..)
        ));
    }
}

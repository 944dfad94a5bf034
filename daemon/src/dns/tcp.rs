//! DNS over TCP (RFC 7766) within the bounds of [`crate::conns`]: 128 connections at once (the
//! longest-waiting idle one closed to make room), 10 s to send each message whole (waiting
//! between queries included), 30 s for a blocked write. Each message goes through the same
//! handler as UDP; a zone transfer's messages are sent in order.
//!
//! hickory-server's own TCP listener has no connection cap, and spins on `EMFILE`: it is not
//! used.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use hickory_server::net::NetError;
use hickory_server::net::runtime::TokioTime;
use hickory_server::net::xfer::Protocol;
use hickory_server::proto::op::MessageType;
use hickory_server::proto::rr::Record;
use hickory_server::proto::serialize::binary::BinEncoder;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponse;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::server::DnsHandler;
use crate::conns::{ConnTable, HEAD_TIMEOUT, Slot};

/// Serves DNS over TCP on `listener` until `cancel` fires (on the DNS thread's runtime).
pub async fn serve(
    listener: TcpListener,
    handler: DnsHandler,
    table: Arc<ConnTable>,
    cancel: CancellationToken,
) {
    let connections = tokio_util::task::TaskTracker::new();
    loop {
        let (stream, peer, slot) = tokio::select! {
            _ = cancel.cancelled() => break,
            accepted = crate::conns::accept(&listener, &table) => accepted,
        };
        let (handler, cancel) = (handler.clone(), cancel.clone());
        connections.spawn(async move {
            tokio::select! {
                _ = cancel.cancelled() => {}
                _ = slot.evicted() => {}
                r = connection(stream, peer, &handler, &slot) => {
                    if let Err(error) = r {
                        tracing::debug!(%peer, %error, "DNS TCP connection ended");
                    }
                }
            }
        });
    }
    connections.close();
    connections.wait().await;
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    handler: &DnsHandler,
    slot: &Slot,
) -> io::Result<()> {
    let mut stream = slot.track(stream);
    loop {
        // Each message (length prefix and body) within HEAD_TIMEOUT of the previous answer.
        let message = tokio::time::timeout(HEAD_TIMEOUT, async {
            let len = match stream.read_u16().await {
                Ok(len) => len,
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
                Err(e) => return Err(e),
            };
            let mut message = vec![0; usize::from(len)];
            stream.read_exact(&mut message).await?;
            Ok(Some(message))
        })
        .await;
        let message = match message {
            Ok(Ok(Some(m))) => m,
            Ok(Ok(None)) => return Ok(()),
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                slot.table().timed_out();
                return Ok(());
            }
        };
        let busy = slot.busy();
        let answers = answer(handler, &message, peer, Protocol::Tcp).await;
        let mut out = Vec::with_capacity(answers.iter().map(|a| a.len() + 2).sum());
        for a in &answers {
            out.extend_from_slice(&(a.len() as u16).to_be_bytes());
            out.extend_from_slice(a);
        }
        stream.write_all(&out).await?;
        drop(busy);
    }
}

/// Keeps the bytes of the answer instead of sending them.
#[derive(Clone, Default)]
struct Capture {
    max: u16,
    sent: Arc<Mutex<Vec<Vec<u8>>>>,
}

#[async_trait::async_trait]
impl ResponseHandler for Capture {
    async fn send_response<'a>(
        &mut self,
        response: MessageResponse<
            '_,
            'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
        >,
    ) -> Result<ResponseInfo, NetError> {
        let mut bytes = Vec::new();
        let mut encoder = BinEncoder::new(&mut bytes);
        encoder.set_max_size(self.max);
        let info = response.destructive_emit(&mut encoder)?;
        self.sent.lock().expect("not poisoned").push(bytes);
        Ok(info)
    }
}

/// The answers to one raw message from `src`, as the server sends them: none for what it
/// drops (fewer than 12 bytes, responses), FORMERR when the header reads but the rest does
/// not, else the handler's answer (several for a zone transfer).
pub async fn answer(
    handler: &DnsHandler,
    bytes: &[u8],
    src: SocketAddr,
    protocol: Protocol,
) -> Vec<Vec<u8>> {
    let Ok(request) = Request::from_bytes(bytes.to_vec(), src, protocol) else {
        if bytes.len() < 12 || bytes[2] & 0x80 != 0 {
            return Vec::new();
        }
        // What hickory-server sends then: the id, QR, the opcode, FORMERR, no records.
        let mut formerr = bytes[..2].to_vec();
        formerr.extend_from_slice(&[0x80 | (bytes[2] & 0x78), 0x01, 0, 0, 0, 0, 0, 0, 0, 0]);
        return vec![formerr];
    };
    if request.metadata.message_type == MessageType::Response {
        return Vec::new();
    }
    let capture = Capture {
        max: match protocol {
            Protocol::Udp => request
                .edns
                .as_ref()
                .map_or(512, |e| e.max_payload().max(512)),
            _ => u16::MAX,
        },
        sent: Arc::default(),
    };
    let _ = handler
        .handle_request::<_, TokioTime>(&request, capture.clone())
        .await;
    std::mem::take(&mut *capture.sent.lock().expect("not poisoned"))
}

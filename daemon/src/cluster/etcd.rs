//! etcd's own API, for what kubeadm cannot do: removing the etcd member of a control plane
//! that does not answer, and snapshots. The daemon owns the cluster's etcd CA, so it needs no
//! SSH for this: with a short-lived client certificate from that CA, trusting only that CA
//! for the server, it calls a live member's JSON gateway for small calls
//! (`https://<ip>:2379/v3/cluster/member/…`, `/v3/maintenance/status`) and speaks gRPC for the
//! snapshot stream (the gateway's JSON costs etcd 2.3 times its gRPC stream).
//!
//! `member_at`, the gRPC framing and `SnapshotResponse` decoding are pure and unit-tested;
//! the calls are tested against the real etcd of the lab's control planes
//! (`tests/cluster.rs`) and `bench/etcd-snapshot.sh`.

use std::net::IpAddr;
use std::time::Duration;

use serde::Deserialize;

use super::pki::ClusterPki;

/// etcd's client port.
pub const CLIENT_PORT: u16 = 2379;
/// How long one call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error("the daemon's etcd client certificate: {0}")]
    Credential(String),
    #[error("etcd at {endpoint}: {reason}")]
    Call { endpoint: String, reason: String },
    #[error("etcd at {endpoint} answered what is not a member list: {reason}")]
    Answer { endpoint: String, reason: String },
    #[error("etcd at {endpoint}: the snapshot stream: {reason}")]
    Stream { endpoint: String, reason: String },
}

/// How long a snapshot stream may stay silent before it is given up.
const STREAM_IDLE: Duration = Duration::from_secs(30);
/// The longest message of a snapshot stream the decoder holds (etcd sends 32 KiB pieces,
/// 44 KiB once in base64).
const MAX_FRAME: usize = 8 << 20;

/// One message of etcd's `Maintenance.Snapshot` stream (`SnapshotResponse`).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SnapshotChunk {
    /// Bytes still to come after this piece (the database, then its SHA-256).
    pub remaining: u64,
    pub blob: Vec<u8>,
    /// The store's revision when the snapshot began (`header.revision`).
    pub revision: Option<i64>,
    /// The etcd cluster's id (`header.cluster_id`), in hex.
    pub cluster_id: Option<String>,
    /// etcd's storage version (`version`, etcd 3.6+).
    pub version: Option<String>,
}

/// One member, as `member/list` gives it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub id: u64,
    pub name: String,
    pub peer_urls: Vec<String>,
}

#[derive(Deserialize)]
struct ListAnswer {
    #[serde(default)]
    members: Vec<RawMember>,
}

#[derive(Deserialize)]
struct RawMember {
    /// A uint64, which etcd's JSON gateway writes as a string.
    #[serde(rename = "ID")]
    id: serde_json::Value,
    #[serde(default)]
    name: String,
    #[serde(default, rename = "peerURLs")]
    peer_urls: Vec<String>,
}

/// A 64-bit integer the gateway writes as a string (or, from other encoders, a number).
fn int_of(v: &serde_json::Value) -> Option<u64> {
    match v {
        serde_json::Value::String(s) => s.parse().ok(),
        serde_json::Value::Number(n) => n.as_u64(),
        _ => None,
    }
}

/// A member's view of itself (`maintenance/status`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemberStatus {
    /// The cluster's id, in hex (it changes with a restore).
    pub cluster_id: String,
    /// The store's revision.
    pub revision: i64,
    /// etcd's version (`3.6.16`).
    pub version: String,
    /// The database file's size.
    pub db_size: u64,
}

/// Parses a `maintenance/status` answer.
pub fn parse_status(body: &[u8]) -> Result<MemberStatus, String> {
    let v: serde_json::Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let header = v
        .get("header")
        .ok_or("an answer without a header: not etcd's status")?;
    Ok(MemberStatus {
        cluster_id: header
            .get("cluster_id")
            .and_then(int_of)
            .map(|id| format!("{id:x}"))
            .unwrap_or_default(),
        revision: header
            .get("revision")
            .and_then(int_of)
            .and_then(|r| i64::try_from(r).ok())
            .unwrap_or_default(),
        version: v["version"].as_str().unwrap_or_default().to_string(),
        db_size: v.get("dbSize").and_then(int_of).unwrap_or_default(),
    })
}

/// Parses a `member/list` answer.
pub fn parse_members(body: &[u8]) -> Result<Vec<Member>, String> {
    let answer: ListAnswer = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    answer
        .members
        .into_iter()
        .map(|m| {
            let id = match &m.id {
                serde_json::Value::String(s) => s.parse::<u64>().ok(),
                serde_json::Value::Number(n) => n.as_u64(),
                _ => None,
            }
            .ok_or_else(|| format!("member id {} is not a number", m.id))?;
            Ok(Member {
                id,
                name: m.name,
                peer_urls: m.peer_urls,
            })
        })
        .collect()
}

/// The member that is the node at `ip` (its peer URL's host), else the one named `name`
/// (kubeadm names members after their node).
pub fn member_at<'a>(members: &'a [Member], ip: IpAddr, name: &str) -> Option<&'a Member> {
    let host_of = |url: &str| -> Option<IpAddr> {
        let rest = url.split_once("://").map_or(url, |(_, r)| r);
        let host = rest.rsplit_once(':').map_or(rest, |(h, _)| h);
        host.trim_matches(['[', ']']).parse().ok()
    };
    members
        .iter()
        .find(|m| m.peer_urls.iter().any(|u| host_of(u) == Some(ip)))
        .or_else(|| members.iter().find(|m| !name.is_empty() && m.name == name))
}

/// A client of the cluster's etcd, with a certificate from its CA.
pub struct EtcdClient {
    http: reqwest::Client,
    /// The same certificate and trust, offering HTTP/2 (gRPC).
    grpc_tls: std::sync::Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for EtcdClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdClient").finish_non_exhaustive()
    }
}

impl EtcdClient {
    /// A client whose certificate (user `lacave-etcd-client`, one hour) comes from the
    /// cluster's etcd CA, and which trusts only that CA.
    pub fn new(pki: &ClusterPki) -> Result<EtcdClient, EtcdError> {
        let issued = pki
            .issue_etcd_client("lacave-etcd-client", time::Duration::hours(1))
            .map_err(|e| EtcdError::Credential(e.to_string()))?;
        let identity = reqwest::Identity::from_pem(
            format!("{}{}", issued.cert_pem, issued.key_pem).as_bytes(),
        )
        .map_err(|e| EtcdError::Credential(e.to_string()))?;
        let ca = reqwest::Certificate::from_pem(pki.etcd.cert_pem.as_bytes())
            .map_err(|e| EtcdError::Credential(e.to_string()))?;
        let grpc_tls = grpc_tls(pki, &issued.cert_pem, &issued.key_pem)?;
        let http = reqwest::Client::builder()
            .tls_certs_only([ca])
            .identity(identity)
            .connect_timeout(Duration::from_secs(5))
            .timeout(CALL_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| EtcdError::Credential(e.to_string()))?;
        Ok(EtcdClient { http, grpc_tls })
    }

    async fn call(
        &self,
        endpoint: IpAddr,
        path: &str,
        body: serde_json::Value,
    ) -> Result<Vec<u8>, EtcdError> {
        let url = format!("https://{}/v3/{path}", endpoint_of(endpoint));
        let err = |reason: String| EtcdError::Call {
            endpoint: endpoint_of(endpoint),
            reason,
        };
        let answer = self
            .http
            .post(&url)
            .json(&body)
            .send()
            .await
            .map_err(|e| err(e.to_string()))?;
        let status = answer.status();
        let bytes = answer.bytes().await.map_err(|e| err(e.to_string()))?;
        if !status.is_success() {
            return Err(err(format!(
                "{status}: {}",
                crate::model::printable(&String::from_utf8_lossy(&bytes), 300)
            )));
        }
        Ok(bytes.to_vec())
    }

    /// Every member, as the etcd at `endpoint` knows them.
    pub async fn members(&self, endpoint: IpAddr) -> Result<Vec<Member>, EtcdError> {
        let body = self
            .call(endpoint, "cluster/member/list", serde_json::json!({}))
            .await?;
        parse_members(&body).map_err(|reason| EtcdError::Answer {
            endpoint: endpoint_of(endpoint),
            reason,
        })
    }

    /// What the member at `endpoint` says of itself and its cluster (`maintenance/status`).
    pub async fn status(&self, endpoint: IpAddr) -> Result<MemberStatus, EtcdError> {
        let body = self
            .call(endpoint, "maintenance/status", serde_json::json!({}))
            .await?;
        parse_status(&body).map_err(|reason| EtcdError::Answer {
            endpoint: endpoint_of(endpoint),
            reason,
        })
    }

    /// Removes member `id` through the etcd at `endpoint`.
    pub async fn remove_member(&self, endpoint: IpAddr, id: u64) -> Result<(), EtcdError> {
        self.call(
            endpoint,
            "cluster/member/remove",
            serde_json::json!({ "ID": id.to_string() }),
        )
        .await
        .map(|_| ())
    }
}

impl EtcdClient {
    /// Opens a snapshot stream of the etcd at `endpoint`: `Maintenance.Snapshot` in gRPC,
    /// spoken directly (HTTP/2 with the same client certificate, gRPC's 5-byte framing, the
    /// three fields of `SnapshotResponse` read by hand: `parse_snapshot_response`). etcd's
    /// JSON gateway sends the same stream at 2.3 times the cost (bench/etcd-snapshot.sh). No
    /// overall time limit (a database can be gigabytes), but [`STREAM_IDLE`] of silence ends
    /// it.
    pub async fn snapshot(&self, endpoint: IpAddr) -> Result<SnapshotStream, EtcdError> {
        let call_err = |reason: String| EtcdError::Call {
            endpoint: endpoint_of(endpoint),
            reason,
        };
        let connect = async {
            let tcp =
                tokio::net::TcpStream::connect(std::net::SocketAddr::new(endpoint, CLIENT_PORT))
                    .await
                    .map_err(|e| e.to_string())?;
            let _ = tcp.set_nodelay(true);
            let tls = tokio_rustls::TlsConnector::from(self.grpc_tls.clone())
                .connect(
                    rustls::pki_types::ServerName::IpAddress(endpoint.into()),
                    tcp,
                )
                .await
                .map_err(|e| format!("TLS: {e}"))?;
            let (mut sender, connection) =
                hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .initial_stream_window_size(4 << 20)
                    .initial_connection_window_size(8 << 20)
                    .handshake(hyper_util::rt::TokioIo::new(tls))
                    .await
                    .map_err(|e| format!("HTTP/2: {e}"))?;
            tokio::spawn(async move {
                let _ = connection.await;
            });
            let request = hyper::Request::post(format!(
                "https://{}/etcdserverpb.Maintenance/Snapshot",
                endpoint_of(endpoint)
            ))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            // An empty SnapshotRequest: no compression, length 0.
            .body(http_body_util::Full::new(hyper::body::Bytes::from_static(
                &[0; 5],
            )))
            .map_err(|e| e.to_string())?;
            sender
                .send_request(request)
                .await
                .map_err(|e| e.to_string())
        };
        let answer = tokio::time::timeout(CALL_TIMEOUT, connect)
            .await
            .map_err(|_| call_err(format!("no answer within {} s", CALL_TIMEOUT.as_secs())))?
            .map_err(call_err)?;
        if answer.status() != hyper::StatusCode::OK {
            return Err(call_err(format!("HTTP {}", answer.status())));
        }
        // An error before any message comes as headers only.
        grpc_status(answer.headers()).map_err(call_err)?;
        Ok(SnapshotStream {
            endpoint: endpoint_of(endpoint),
            body: answer.into_body(),
            buf: Vec::new(),
            ended: false,
        })
    }
}

/// `grpc-status` (and `grpc-message`) of headers or trailers: `Ok` when absent or 0.
fn grpc_status(headers: &hyper::HeaderMap) -> Result<bool, String> {
    let Some(status) = headers.get("grpc-status") else {
        return Ok(false);
    };
    if status.as_bytes() == b"0" {
        return Ok(true);
    }
    let message = headers
        .get("grpc-message")
        .map(|m| String::from_utf8_lossy(m.as_bytes()).into_owned())
        .unwrap_or_default();
    Err(format!(
        "gRPC status {}: {}",
        String::from_utf8_lossy(status.as_bytes()),
        crate::model::printable(&message, 300)
    ))
}

/// A snapshot on its way (`EtcdClient::snapshot`).
pub struct SnapshotStream {
    endpoint: String,
    body: hyper::body::Incoming,
    /// Bytes of gRPC messages not yet complete.
    buf: Vec<u8>,
    /// The trailers said the call succeeded.
    ended: bool,
}

impl SnapshotStream {
    /// The next piece; `None` once etcd ended the call with status 0. (Whether the pieces
    /// make a whole snapshot is for the SHA-256 etcd appends to say,
    /// `snapshot::Checker`.)
    pub async fn next(&mut self) -> Result<Option<SnapshotChunk>, EtcdError> {
        let err = |endpoint: &str, reason: String| EtcdError::Stream {
            endpoint: endpoint.to_string(),
            reason,
        };
        loop {
            if let Some(message) =
                take_message(&mut self.buf).map_err(|e| err(&self.endpoint, e))?
            {
                return parse_snapshot_response(&message)
                    .map(Some)
                    .map_err(|e| err(&self.endpoint, e));
            }
            if self.ended {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(err(
                        &self.endpoint,
                        "the call ended in the middle of a message".into(),
                    ))
                };
            }
            let body = &mut self.body;
            let frame = tokio::time::timeout(
                STREAM_IDLE,
                std::future::poll_fn(|cx| {
                    hyper::body::Body::poll_frame(std::pin::Pin::new(&mut *body), cx)
                }),
            )
            .await
            .map_err(|_| {
                err(
                    &self.endpoint,
                    format!("silent for {} s", STREAM_IDLE.as_secs()),
                )
            })?;
            match frame {
                None => {
                    return Err(err(
                        &self.endpoint,
                        "the stream ended without gRPC's status (cut)".into(),
                    ));
                }
                Some(Err(e)) => return Err(err(&self.endpoint, e.to_string())),
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        self.buf.extend_from_slice(&data);
                        if self.buf.len() > MAX_FRAME + 5 {
                            return Err(err(
                                &self.endpoint,
                                format!("a message longer than {} MiB", MAX_FRAME >> 20),
                            ));
                        }
                    }
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            self.ended =
                                grpc_status(&trailers).map_err(|e| err(&self.endpoint, e))?;
                            if !self.ended {
                                return Err(err(
                                    &self.endpoint,
                                    "trailers without gRPC's status".into(),
                                ));
                            }
                        }
                    }
                },
            }
        }
    }
}

/// Takes one complete gRPC message (1 byte: compressed?, 4: length, then the message) off the
/// front of `buf`, if one is there.
fn take_message(buf: &mut Vec<u8>) -> Result<Option<Vec<u8>>, String> {
    if buf.len() < 5 {
        return Ok(None);
    }
    if buf[0] != 0 {
        return Err("a compressed message (none was asked for)".into());
    }
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    if len > MAX_FRAME {
        return Err(format!(
            "a message of {len} bytes: not etcd's snapshot stream"
        ));
    }
    if buf.len() < 5 + len {
        return Ok(None);
    }
    let message = buf[5..5 + len].to_vec();
    buf.drain(..5 + len);
    Ok(Some(message))
}

/// A protocol-buffers varint at the start of `bytes`: (value, its length).
fn varint(bytes: &[u8]) -> Result<(u64, usize), String> {
    let mut value = 0u64;
    for (i, b) in bytes.iter().take(10).enumerate() {
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Ok((value, i + 1));
        }
    }
    Err("a varint that does not end".into())
}

/// Calls `each(field, wire value)` for every field of a protocol-buffers message: a varint
/// as `Ok(n)`, a length-delimited field as `Err(bytes)`; fixed-size fields are skipped.
fn fields<'a>(
    message: &'a [u8],
    mut each: impl FnMut(u64, Result<u64, &'a [u8]>),
) -> Result<(), String> {
    let mut i = 0;
    while i < message.len() {
        let (key, n) = varint(&message[i..])?;
        i += n;
        let field = key >> 3;
        match key & 7 {
            0 => {
                let (v, n) = varint(&message[i..])?;
                i += n;
                each(field, Ok(v));
            }
            2 => {
                let (len, n) = varint(&message[i..])?;
                i += n;
                let end = usize::try_from(len)
                    .ok()
                    .and_then(|len| i.checked_add(len))
                    .filter(|end| *end <= message.len())
                    .ok_or("a field past the message's end")?;
                each(field, Err(&message[i..end]));
                i = end;
            }
            1 => i += 8,
            5 => i += 4,
            wire => return Err(format!("wire type {wire} in a SnapshotResponse")),
        }
    }
    if i > message.len() {
        return Err("a fixed-size field past the message's end".into());
    }
    Ok(())
}

/// etcd's `SnapshotResponse`: `header` (1: `cluster_id` 1, `revision` 3),
/// `remaining_bytes` (2), `blob` (3), `version` (4).
pub fn parse_snapshot_response(message: &[u8]) -> Result<SnapshotChunk, String> {
    let mut chunk = SnapshotChunk::default();
    let mut header = None;
    fields(message, |field, value| match (field, value) {
        (1, Err(bytes)) => header = Some(bytes),
        (2, Ok(n)) => chunk.remaining = n,
        (3, Err(bytes)) => chunk.blob = bytes.to_vec(),
        (4, Err(bytes)) => {
            chunk.version =
                Some(String::from_utf8_lossy(bytes).into_owned()).filter(|v| !v.is_empty());
        }
        _ => {}
    })?;
    if let Some(header) = header {
        fields(header, |field, value| match (field, value) {
            (1, Ok(id)) => chunk.cluster_id = Some(format!("{id:x}")),
            (3, Ok(rev)) => chunk.revision = i64::try_from(rev).ok(),
            _ => {}
        })?;
    }
    Ok(chunk)
}

/// TLS for gRPC: the etcd CA alone trusted, the client certificate, ALPN `h2`.
fn grpc_tls(
    pki: &ClusterPki,
    cert_pem: &str,
    key_pem: &str,
) -> Result<std::sync::Arc<rustls::ClientConfig>, EtcdError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let bad = |e: String| EtcdError::Credential(e);
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(pki.etcd.cert_pem.as_bytes()) {
        roots
            .add(ca.map_err(|e| bad(e.to_string()))?)
            .map_err(|e| bad(e.to_string()))?;
    }
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| bad(e.to_string()))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| bad(e.to_string()))?;
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(e.to_string()))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| bad(e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(std::sync::Arc::new(config))
}

fn endpoint_of(ip: IpAddr) -> String {
    std::net::SocketAddr::new(ip, CLIENT_PORT).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIST: &str = r#"{"header":{"cluster_id":"1","member_id":"2","raft_term":"3"},
        "members":[
          {"ID":"9372538179322589801","name":"cp1","peerURLs":["https://10.123.0.11:2380"],"clientURLs":["https://10.123.0.11:2379"]},
          {"ID":"10501334649042878790","name":"cp2","peerURLs":["https://10.123.0.16:2380"],"clientURLs":["https://10.123.0.16:2379"]},
          {"ID":42,"peerURLs":["https://[fd00::7]:2380"],"isLearner":true}
        ]}"#;

    #[test]
    fn members_are_read_from_etcds_json_gateway() {
        let members = parse_members(LIST.as_bytes()).unwrap();
        assert_eq!(members.len(), 3);
        assert_eq!(members[1].id, 10_501_334_649_042_878_790);
        assert_eq!(members[2].id, 42);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            member_at(&members, ip("10.123.0.16"), "x").unwrap().name,
            "cp2"
        );
        assert_eq!(member_at(&members, ip("fd00::7"), "").unwrap().id, 42);
        // Renumbered but still named after its node.
        assert_eq!(
            member_at(&members, ip("10.0.0.9"), "cp1").unwrap().name,
            "cp1"
        );
        assert_eq!(member_at(&members, ip("10.0.0.9"), "cp9"), None);
        assert!(parse_members(br#"{"members":[{"ID":"x"}]}"#).is_err());
        assert!(parse_members(b"<html>").is_err());
        assert_eq!(parse_members(b"{}").unwrap(), []);
    }

    #[test]
    fn a_members_status_is_read() {
        // As etcd 3.6.16 answers.
        let body = br#"{"header":{"cluster_id":"324952591200643719","member_id":"3319814642761637952","revision":"2","raft_term":"2"},"version":"3.6.16","dbSize":"20480","leader":"3319814642761637952","raftIndex":"5","dbSizeInUse":"16384","storageVersion":"3.6.0","dbSizeQuota":"2147483648","downgradeInfo":{}}"#;
        let status = parse_status(body).unwrap();
        assert_eq!(
            status,
            MemberStatus {
                cluster_id: format!("{:x}", 324_952_591_200_643_719_u64),
                revision: 2,
                version: "3.6.16".into(),
                db_size: 20480,
            }
        );
        assert!(parse_status(b"{}").is_err());
    }

    /// A SnapshotResponse as etcd encodes it.
    fn response(header: Option<(u64, u64)>, remaining: u64, blob: &[u8], version: &str) -> Vec<u8> {
        fn put_varint(out: &mut Vec<u8>, mut v: u64) {
            while v >= 0x80 {
                out.push((v as u8) | 0x80);
                v >>= 7;
            }
            out.push(v as u8);
        }
        fn put_bytes(out: &mut Vec<u8>, field: u64, bytes: &[u8]) {
            put_varint(out, field << 3 | 2);
            put_varint(out, bytes.len() as u64);
            out.extend_from_slice(bytes);
        }
        let mut out = Vec::new();
        if let Some((cluster_id, revision)) = header {
            let mut h = Vec::new();
            put_varint(&mut h, 1 << 3);
            put_varint(&mut h, cluster_id);
            put_varint(&mut h, 2 << 3); // member_id
            put_varint(&mut h, 7);
            put_varint(&mut h, 3 << 3);
            put_varint(&mut h, revision);
            put_bytes(&mut out, 1, &h);
        }
        if remaining > 0 {
            put_varint(&mut out, 2 << 3);
            put_varint(&mut out, remaining);
        }
        put_bytes(&mut out, 3, blob);
        if !version.is_empty() {
            put_bytes(&mut out, 4, version.as_bytes());
        }
        out
    }

    fn framed(message: &[u8]) -> Vec<u8> {
        let mut out = vec![0];
        out.extend_from_slice(&(message.len() as u32).to_be_bytes());
        out.extend_from_slice(message);
        out
    }

    #[test]
    fn a_grpc_snapshot_stream_is_read_however_its_bytes_arrive() {
        let big: Vec<u8> = (0..40_000u32).map(|i| i as u8).collect();
        let messages = [
            response(
                Some((14_841_639_068_965_178_418, 1234)),
                40_036,
                &big,
                "3.6.0",
            ),
            response(None, 0, &[4, 5, 6], "3.6.0"),
            response(None, 0, &[], ""),
        ];
        let stream: Vec<u8> = messages.iter().flat_map(|m| framed(m)).collect();
        for step in [1, 5, 7, 4096, stream.len()] {
            let mut buf = Vec::new();
            let mut chunks = Vec::new();
            for piece in stream.chunks(step) {
                buf.extend_from_slice(piece);
                while let Some(m) = take_message(&mut buf).unwrap() {
                    chunks.push(parse_snapshot_response(&m).unwrap());
                }
            }
            assert!(buf.is_empty());
            assert_eq!(chunks.len(), 3, "pieces of {step}");
            assert_eq!(chunks[0].revision, Some(1234));
            assert_eq!(chunks[0].cluster_id.as_deref(), Some("cdf818194e3a8c32"));
            assert_eq!(chunks[0].remaining, 40_036);
            assert_eq!(chunks[0].blob, big);
            assert_eq!(chunks[0].version.as_deref(), Some("3.6.0"));
            assert_eq!(chunks[1].blob, [4, 5, 6]);
            assert_eq!(chunks[2], SnapshotChunk::default());
        }
        // Compressed, oversized, cut or garbled messages are refused, never a panic.
        assert!(take_message(&mut vec![1, 0, 0, 0, 0]).is_err());
        assert!(take_message(&mut vec![0, 0xff, 0xff, 0xff, 0xff]).is_err());
        assert_eq!(take_message(&mut vec![0, 0, 0, 0, 9, 1, 2]).unwrap(), None);
        assert!(parse_snapshot_response(&[0x1a, 0x05, 1, 2]).is_err());
        assert!(parse_snapshot_response(&[0xff, 0xff, 0xff]).is_err());
        assert!(parse_snapshot_response(&[0x0b]).is_err()); // wire type 3
        assert!(parse_snapshot_response(&[0x09, 1, 2]).is_err()); // a fixed64 cut
        // etcd's own error, as trailers or headers.
        let mut headers = hyper::HeaderMap::new();
        assert_eq!(grpc_status(&headers), Ok(false));
        headers.insert("grpc-status", "0".parse().unwrap());
        assert_eq!(grpc_status(&headers), Ok(true));
        headers.insert("grpc-status", "8".parse().unwrap());
        headers.insert(
            "grpc-message",
            "etcdserver: too many requests".parse().unwrap(),
        );
        let e = grpc_status(&headers).unwrap_err();
        assert!(e.contains("8") && e.contains("too many requests"), "{e}");
    }
}

//! etcd's own API, for what kubeadm cannot do on a control plane that does not answer:
//! removing its etcd member. The daemon owns the cluster's etcd CA, so it needs no SSH for
//! this: it calls a live member's JSON gateway (`https://<ip>:2379/v3/cluster/member/…`,
//! etcd's gRPC API as JSON) with a short-lived client certificate from that CA, and trusts
//! only that CA for the server.
//!
//! `member_at` (which member a node is) is pure and unit-tested; the calls are tested
//! against the real etcd of the lab's control planes (`tests/cluster.rs`).

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

/// One message of etcd's `Maintenance.Snapshot` stream, as its JSON gateway writes it.
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

#[derive(Deserialize)]
struct Frame {
    result: Option<RawChunk>,
    error: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct RawChunk {
    #[serde(default)]
    header: Option<RawHeader>,
    #[serde(default)]
    remaining_bytes: Option<serde_json::Value>,
    #[serde(default)]
    blob: Option<String>,
    #[serde(default)]
    version: Option<String>,
}

#[derive(Deserialize)]
struct RawHeader {
    #[serde(default)]
    cluster_id: Option<serde_json::Value>,
    #[serde(default)]
    revision: Option<serde_json::Value>,
}

/// A 64-bit integer the gateway writes as a string (or, from other encoders, a number).
fn int_of(v: &serde_json::Value) -> Option<u64> {
    match v {
        serde_json::Value::String(s) => s.parse().ok(),
        serde_json::Value::Number(n) => n.as_u64(),
        _ => None,
    }
}

/// Splits the snapshot stream (JSON messages one after another, `{"result":{…}}` each, or
/// `{"error":{…}}`) into chunks, however the bytes arrive.
#[derive(Default)]
pub struct SnapshotDecoder {
    buf: Vec<u8>,
}

impl SnapshotDecoder {
    /// Adds `bytes`; returns the messages now complete.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<SnapshotChunk>, String> {
        use base64::Engine as _;
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        let mut used = 0;
        let mut frames = serde_json::Deserializer::from_slice(&self.buf).into_iter::<Frame>();
        loop {
            match frames.next() {
                None => break,
                Some(Err(e)) if e.is_eof() => break,
                Some(Err(e)) => return Err(format!("not etcd's JSON stream: {e}")),
                Some(Ok(frame)) => {
                    used = frames.byte_offset();
                    if let Some(error) = frame.error {
                        let message = error["message"].as_str().map_or_else(
                            || crate::model::printable(&error.to_string(), 300),
                            |m| crate::model::printable(m, 300),
                        );
                        return Err(format!("etcd stopped the snapshot: {message}"));
                    }
                    let Some(raw) = frame.result else {
                        return Err("a message with neither result nor error".into());
                    };
                    let blob = match raw.blob.as_deref() {
                        None | Some("") => Vec::new(),
                        Some(b) => base64::engine::general_purpose::STANDARD
                            .decode(b)
                            .map_err(|e| format!("a piece that is not base64: {e}"))?,
                    };
                    let header = raw.header.as_ref();
                    out.push(SnapshotChunk {
                        remaining: raw.remaining_bytes.as_ref().and_then(int_of).unwrap_or(0),
                        blob,
                        revision: header
                            .and_then(|h| h.revision.as_ref())
                            .and_then(int_of)
                            .and_then(|r| i64::try_from(r).ok()),
                        cluster_id: header
                            .and_then(|h| h.cluster_id.as_ref())
                            .and_then(int_of)
                            .map(|id| format!("{id:x}")),
                        version: raw.version.filter(|v| !v.is_empty()),
                    });
                }
            }
        }
        self.buf.drain(..used);
        if self.buf.len() > MAX_FRAME {
            return Err(format!(
                "a message longer than {} MiB: not etcd's snapshot stream",
                MAX_FRAME >> 20
            ));
        }
        Ok(out)
    }

    /// Whether bytes of an unfinished message are left (the stream was cut).
    pub fn pending(&self) -> bool {
        self.buf.iter().any(|b| !b.is_ascii_whitespace())
    }
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
        let http = reqwest::Client::builder()
            .tls_certs_only([ca])
            .identity(identity)
            .connect_timeout(Duration::from_secs(5))
            .timeout(CALL_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| EtcdError::Credential(e.to_string()))?;
        Ok(EtcdClient { http })
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
    /// Opens a snapshot stream of the etcd at `endpoint` (`Maintenance.Snapshot` through the
    /// JSON gateway): the database in pieces, then the SHA-256 etcd appends. No overall time
    /// limit (a database can be gigabytes), but [`STREAM_IDLE`] of silence ends it.
    pub async fn snapshot(&self, endpoint: IpAddr) -> Result<SnapshotStream, EtcdError> {
        let url = format!("https://{}/v3/maintenance/snapshot", endpoint_of(endpoint));
        let call_err = |reason: String| EtcdError::Call {
            endpoint: endpoint_of(endpoint),
            reason,
        };
        let answer = self
            .http
            .post(&url)
            .json(&serde_json::json!({}))
            .timeout(Duration::from_secs(24 * 3600))
            .send()
            .await
            .map_err(|e| call_err(e.to_string()))?;
        let status = answer.status();
        if !status.is_success() {
            let bytes = answer.bytes().await.unwrap_or_default();
            return Err(call_err(format!(
                "{status}: {}",
                crate::model::printable(&String::from_utf8_lossy(&bytes), 300)
            )));
        }
        Ok(SnapshotStream {
            endpoint: endpoint_of(endpoint),
            answer,
            decoder: SnapshotDecoder::default(),
            ready: std::collections::VecDeque::new(),
        })
    }
}

/// A snapshot on its way (`EtcdClient::snapshot`).
pub struct SnapshotStream {
    endpoint: String,
    answer: reqwest::Response,
    decoder: SnapshotDecoder,
    ready: std::collections::VecDeque<SnapshotChunk>,
}

impl SnapshotStream {
    /// The next piece; `None` once etcd closed the stream. (Its gateway sends neither
    /// `remaining_bytes` nor a header: whether the stream is whole is for the SHA-256 etcd
    /// appends to say, `snapshot::check_file`.)
    pub async fn next(&mut self) -> Result<Option<SnapshotChunk>, EtcdError> {
        let err = |endpoint: &str, reason: String| EtcdError::Stream {
            endpoint: endpoint.to_string(),
            reason,
        };
        loop {
            if let Some(chunk) = self.ready.pop_front() {
                return Ok(Some(chunk));
            }
            let piece = tokio::time::timeout(STREAM_IDLE, self.answer.chunk())
                .await
                .map_err(|_| {
                    err(
                        &self.endpoint,
                        format!("silent for {} s", STREAM_IDLE.as_secs()),
                    )
                })?
                .map_err(|e| err(&self.endpoint, e.to_string()))?;
            match piece {
                Some(piece) => {
                    let chunks = self
                        .decoder
                        .push(&piece)
                        .map_err(|e| err(&self.endpoint, e))?;
                    self.ready.extend(chunks);
                }
                None if self.decoder.pending() => {
                    return Err(err(
                        &self.endpoint,
                        "the stream ended in the middle of a message".into(),
                    ));
                }
                None => return Ok(None),
            }
        }
    }
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

    #[test]
    fn a_snapshot_stream_is_decoded_however_its_bytes_arrive() {
        // As etcd 3.6's gateway writes it: pieces with what remains after each, the last
        // one etcd's SHA-256 (remaining 0).
        let stream = concat!(
            r#"{"result":{"header":{"cluster_id":"14841639068965178418","member_id":"10276657743932975437","revision":"1234","raft_term":"2"},"remaining_bytes":"40","blob":"","version":"3.6.0"}}"#,
            "\n",
            r#"{"result":{"header":{"cluster_id":"14841639068965178418","revision":"1234"},"remaining_bytes":"36","blob":"AAECAw==","version":"3.6.0"}}"#,
            "\n",
            r#"{"result":{"header":{},"remaining_bytes":"0","blob":"BAUG"}}"#,
            "\n"
        );
        for step in [1, 7, 64, stream.len()] {
            let mut decoder = SnapshotDecoder::default();
            let mut chunks = Vec::new();
            for piece in stream.as_bytes().chunks(step) {
                chunks.extend(decoder.push(piece).unwrap());
            }
            assert!(!decoder.pending());
            assert_eq!(chunks.len(), 3, "pieces of {step} bytes");
            assert_eq!(chunks[0].revision, Some(1234));
            assert_eq!(chunks[0].cluster_id.as_deref(), Some("cdf818194e3a8c32"));
            assert_eq!(chunks[0].version.as_deref(), Some("3.6.0"));
            assert_eq!(chunks[1].blob, [0, 1, 2, 3]);
            assert_eq!(
                (chunks[2].remaining, &chunks[2].blob[..]),
                (0, &[4u8, 5, 6][..])
            );
        }
        // As etcd 3.6.16's gateway really writes it: only the pieces and the version.
        let mut decoder = SnapshotDecoder::default();
        let chunks = decoder
            .push(b"{\"result\":{\"blob\":\"AAEC\",\"version\":\"3.6.0\"}}\n{\"result\":{\"blob\":\"AwQ=\",\"version\":\"3.6.0\"}}\n")
            .unwrap();
        assert_eq!(chunks.len(), 2);
        assert_eq!(
            (&chunks[0].blob[..], &chunks[1].blob[..]),
            (&[0u8, 1, 2][..], &[3u8, 4][..])
        );
        // Cut in the middle of a message: what is left says so.
        let mut decoder = SnapshotDecoder::default();
        decoder
            .push(&stream.as_bytes()[..stream.len() - 20])
            .unwrap();
        assert!(decoder.pending());
        // etcd's own error, named; garbage, refused.
        let mut decoder = SnapshotDecoder::default();
        let err = decoder
            .push(br#"{"error":{"grpc_code":8,"http_code":429,"message":"etcdserver: too many requests","http_status":"Too Many Requests"}}"#)
            .unwrap_err();
        assert!(err.contains("too many requests"), "{err}");
        assert!(SnapshotDecoder::default().push(b"<html>").is_err());
        assert!(
            SnapshotDecoder::default()
                .push(br#"{"result":{"blob":"***"}}"#)
                .is_err()
        );
    }
}

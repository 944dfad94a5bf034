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
        let url = format!("https://{}/v3/cluster/member/{path}", endpoint_of(endpoint));
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
        let body = self.call(endpoint, "list", serde_json::json!({})).await?;
        parse_members(&body).map_err(|reason| EtcdError::Answer {
            endpoint: endpoint_of(endpoint),
            reason,
        })
    }

    /// Removes member `id` through the etcd at `endpoint`.
    pub async fn remove_member(&self, endpoint: IpAddr, id: u64) -> Result<(), EtcdError> {
        self.call(
            endpoint,
            "remove",
            serde_json::json!({ "ID": id.to_string() }),
        )
        .await
        .map(|_| ())
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
}

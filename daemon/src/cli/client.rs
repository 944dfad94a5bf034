//! A typed client of the daemon's API, used by the CLI (and by tests and the benchmark).

use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::StatusCode;
use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::ClientArgs;
use super::exit;
use crate::api::{
    CertificateResponse, CreateNodeRequest, DnsRecordRequest, DnsRecordResponse, EventResponse,
    IssueRequest, IssuedResponse, NodeResponse,
};
use crate::config::{Config, SYSTEM_CONFIG_PATH};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{0}")]
    Config(String),
    #[error("no API token: {0}")]
    NoToken(String),
    #[error(
        "cannot reach the lacave daemon at {url}: {reason}\n  is it running? (`systemctl status lacave`, or start one with `lacave serve`)"
    )]
    Unreachable { url: String, reason: String },
    /// The daemon answered, but its HTTPS certificate does not check out.
    #[error(
        "the daemon at {url} answered, but its HTTPS certificate is not acceptable: {reason}\n  {hint}"
    )]
    Certificate {
        url: String,
        reason: String,
        hint: &'static str,
    },
    /// A file the CLI needs exists but this user may not read it.
    #[error("{0}")]
    Permission(String),
    #[error("the daemon at {url} refused the API token from {source_name}: {detail}")]
    Unauthorized {
        url: String,
        source_name: String,
        detail: String,
    },
    #[error("{}", refused_text(.detail, .errors))]
    Refused {
        status: u16,
        code: String,
        detail: String,
        errors: Vec<ProblemField>,
    },
    #[error("unexpected answer from the daemon: {0}")]
    Protocol(String),
}

/// The daemon's refusal: its detail, or, when several fields are at fault, one line each.
fn refused_text(detail: &str, errors: &[ProblemField]) -> String {
    if errors.len() < 2 {
        return detail.to_string();
    }
    let lines: String = errors
        .iter()
        .map(|e| format!("\n  {}: {}", e.field, e.reason))
        .collect();
    format!("{} fields are invalid:{lines}", errors.len())
}

impl ClientError {
    pub fn exit_code(&self) -> u8 {
        match self {
            ClientError::Config(_) => exit::CONFIG,
            ClientError::NoToken(_)
            | ClientError::Unauthorized { .. }
            | ClientError::Permission(_) => exit::NO_PERMISSION,
            ClientError::Unreachable { .. } => exit::UNAVAILABLE,
            ClientError::Certificate { .. } => exit::PROTOCOL,
            ClientError::Refused { status, .. } if *status < 500 => exit::DATA,
            ClientError::Refused { .. } | ClientError::Protocol(_) => 1,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct ProblemField {
    pub field: String,
    pub reason: String,
}

#[derive(Debug, Deserialize)]
struct Problem {
    #[serde(default)]
    code: String,
    #[serde(default)]
    detail: String,
    #[serde(default)]
    errors: Vec<ProblemField>,
}

/// Where the daemon is and how to prove who we are.
#[derive(Debug, Clone)]
pub struct Target {
    pub url: String,
    pub token: String,
    /// Where the token came from, for error messages.
    pub token_source: String,
    /// The CA bundle (PEM) an `https://` URL is checked against, and the only one trusted.
    pub ca_pem: Option<Vec<u8>>,
}

/// The daemon's configuration as the CLI finds it: `--config`/`LACAVE_CONFIG`, else
/// /etc/lacave/lacave.toml if present, else the embedded defaults.
pub fn load_config(args: &ClientArgs) -> Result<Config, ClientError> {
    match &args.config {
        Some(path) => Config::load(path).map_err(|e| ClientError::Config(e.to_string())),
        None if Path::new(SYSTEM_CONFIG_PATH).exists() => {
            Config::load(Path::new(SYSTEM_CONFIG_PATH))
                .map_err(|e| ClientError::Config(e.to_string()))
        }
        None => Ok(Config::embedded_defaults()),
    }
}

fn url_for(scheme: &str, listen: std::net::SocketAddr) -> String {
    let host = match listen.ip() {
        std::net::IpAddr::V4(ip) if ip.is_unspecified() => "127.0.0.1".to_string(),
        std::net::IpAddr::V6(ip) if ip.is_unspecified() => "[::1]".to_string(),
        std::net::IpAddr::V4(ip) => ip.to_string(),
        std::net::IpAddr::V6(ip) => format!("[{ip}]"),
    };
    format!("{scheme}://{host}:{}", listen.port())
}

impl Target {
    /// Resolves flags, environment and configuration into a target.
    pub fn resolve(args: &ClientArgs) -> Result<Target, ClientError> {
        let config = || load_config(args);
        let url = match &args.url {
            Some(url) => url.trim_end_matches('/').to_string(),
            None => {
                let config = config()?;
                match config.api.listen {
                    Some(addr) => url_for(if config.api.tls { "https" } else { "http" }, addr),
                    None => url_for("http", config.http.listen),
                }
            }
        };
        let ca_pem = if url.starts_with("https://") {
            let path = match &args.ca_file {
                Some(path) => path.clone(),
                None => config()?.pki_dir().join(crate::pki::CA_CHAIN_FILE),
            };
            Some(std::fs::read(&path).map_err(|e| {
                let text = format!(
                    "cannot read the cluster CA {} to check the daemon's HTTPS certificate: {e} (use --ca-file or LACAVE_CA",
                    path.display()
                );
                if e.kind() == std::io::ErrorKind::PermissionDenied {
                    // Not a bad configuration: this user may not read the state directory.
                    ClientError::Permission(format!(
                        "{text}; it is public: fetch it once from http://<server>:8080/ca.pem, or run as root)"
                    ))
                } else {
                    ClientError::Config(format!("{text})"))
                }
            })?)
        } else {
            None
        };
        // An empty LACAVE_TOKEN (`LACAVE_TOKEN= lacave …`) means no token, not an empty one.
        let given = args.token.as_ref().filter(|t| !t.trim().is_empty());
        let (token, token_source) = match (given, &args.token_file) {
            (Some(token), _) => (token.clone(), "LACAVE_TOKEN/--token".to_string()),
            (None, Some(path)) => (read_token(path)?, path.display().to_string()),
            (None, None) => {
                let path: PathBuf = config()?.token_path();
                (read_token(&path)?, path.display().to_string())
            }
        };
        Ok(Target {
            url,
            token,
            token_source,
            ca_pem,
        })
    }
}

fn read_token(path: &Path) -> Result<String, ClientError> {
    match std::fs::read_to_string(path) {
        Ok(text) if !text.trim().is_empty() => Ok(text.trim().to_string()),
        Ok(_) => Err(ClientError::NoToken(format!("{} is empty", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            Err(ClientError::NoToken(format!(
                "cannot read {}: permission denied (run as the daemon's user or root, or set LACAVE_TOKEN)",
                path.display()
            )))
        }
        Err(e) => Err(ClientError::NoToken(format!(
            "cannot read {}: {e} (has the daemon started once? or set LACAVE_TOKEN / --token-file)",
            path.display()
        ))),
    }
}

/// An API client bound to one target.
#[derive(Clone)]
pub struct Client {
    target: Target,
    http: reqwest::Client,
}

impl Client {
    /// A client of `target`; fails only when its CA bundle is not PEM.
    pub fn new(target: Target) -> Result<Client, ClientError> {
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(60));
        if let Some(pem) = &target.ca_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| ClientError::Config(format!("the CA bundle is not PEM: {e}")))?;
            // Only the cluster CA: the daemon's certificate is never checked against the
            // system's public roots.
            builder = builder.tls_certs_only(certs);
        }
        let http = builder
            .build()
            .map_err(|e| ClientError::Config(format!("cannot set up HTTPS: {e}")))?;
        Ok(Client { target, http })
    }

    pub fn target(&self) -> &Target {
        &self.target
    }

    /// What a failed request means: the daemon could not be reached, or it was and its
    /// certificate does not check out (another name, another CA, expired) — not the same
    /// problem, not the same advice.
    fn send_error(&self, e: &reqwest::Error) -> ClientError {
        let reason = root_cause(e);
        let url = self.target.url.clone();
        let lower = reason.to_lowercase();
        if lower.contains("certificate") || lower.contains("unknownissuer") {
            let hint = if lower.contains("notvalidforname") || lower.contains("not valid for name")
            {
                "connect with a name the certificate carries (the host's name, localhost, \
                 server_ip), or add the name to [api] tls_names and restart the daemon"
            } else if lower.contains("unknownissuer") || lower.contains("unknown issuer") {
                "the certificate is not signed by the cluster CA given (--ca-file / LACAVE_CA, \
                 or the daemon's pki/ca-chain.pem)"
            } else {
                "check the daemon's certificate (`openssl s_client -connect host:port`)"
            };
            return ClientError::Certificate { url, reason, hint };
        }
        ClientError::Unreachable { url, reason }
    }

    async fn send<T: DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<Option<T>, ClientError> {
        match self.fetch(request).await? {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| ClientError::Protocol(e.to_string())),
        }
    }

    /// Sends a request; a success's body (`None` for 204), or the daemon's problem as an error.
    async fn fetch(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<Option<axum::body::Bytes>, ClientError> {
        let response = request
            .bearer_auth(&self.target.token)
            .send()
            .await
            .map_err(|e| self.send_error(&e))?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| ClientError::Unreachable {
                url: self.target.url.clone(),
                reason: root_cause(&e),
            })?;
        if status == StatusCode::NO_CONTENT {
            return Ok(None);
        }
        if status.is_success() {
            return Ok(Some(bytes));
        }
        let problem: Problem = serde_json::from_slice(&bytes).unwrap_or(Problem {
            code: String::new(),
            detail: String::from_utf8_lossy(&bytes).trim().to_string(),
            errors: Vec::new(),
        });
        if status == StatusCode::UNAUTHORIZED {
            return Err(ClientError::Unauthorized {
                url: self.target.url.clone(),
                source_name: self.target.token_source.clone(),
                detail: problem.detail,
            });
        }
        Err(ClientError::Refused {
            status: status.as_u16(),
            code: problem.code,
            detail: if problem.detail.is_empty() {
                format!("the daemon answered {status}")
            } else {
                problem.detail
            },
            errors: problem.errors,
        })
    }

    /// The live event stream (`GET /api/v1/events`, after event `after` or from now), for
    /// `--watch`.
    pub async fn events(&self, after: Option<u64>) -> Result<EventStream, ClientError> {
        let mut url = self.url("/api/v1/events");
        if let Some(after) = after {
            url.push_str(&format!("?after={after}"));
        }
        let response = self
            .http
            .get(url)
            // A stream has no end: the client's 60 s limit is for requests.
            .timeout(Duration::from_secs(366 * 86_400))
            .bearer_auth(&self.target.token)
            .send()
            .await
            .map_err(|e| self.send_error(&e))?;
        let status = response.status();
        if !status.is_success() {
            return Err(ClientError::Refused {
                status: status.as_u16(),
                code: String::new(),
                detail: format!("GET /api/v1/events answered {status}"),
                errors: Vec::new(),
            });
        }
        Ok(EventStream {
            response,
            buf: Vec::new(),
            last_id: after,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.target.url)
    }

    fn node_url(&self, name: &str, suffix: &str) -> String {
        // Hostnames and MACs need no escaping beyond this: anything else is refused by the
        // daemon with a clear message.
        let name: String = name
            .chars()
            .map(|c| {
                if c == '/' || c == '?' || c == '#' {
                    '_'
                } else {
                    c
                }
            })
            .collect();
        self.url(&format!("/api/v1/nodes/{name}{suffix}"))
    }

    /// The registry's backup, as the daemon made it.
    pub async fn backup(&self) -> Result<axum::body::Bytes, ClientError> {
        self.fetch(self.http.get(self.url("/api/v1/backup")))
            .await?
            .ok_or_else(|| ClientError::Protocol("an empty backup".into()))
    }

    pub async fn create_node(&self, req: &CreateNodeRequest) -> Result<NodeResponse, ClientError> {
        self.send(self.http.post(self.url("/api/v1/nodes")).json(req))
            .await?
            .ok_or_else(|| ClientError::Protocol("empty answer to a registration".into()))
    }

    pub async fn list_nodes(&self) -> Result<Vec<NodeResponse>, ClientError> {
        Ok(self
            .send(self.http.get(self.url("/api/v1/nodes")))
            .await?
            .unwrap_or_default())
    }

    pub async fn get_node(&self, name: &str) -> Result<NodeResponse, ClientError> {
        self.send(self.http.get(self.node_url(name, "")))
            .await?
            .ok_or_else(|| ClientError::Protocol("empty answer".into()))
    }

    pub async fn node_events(&self, name: &str) -> Result<Vec<EventResponse>, ClientError> {
        Ok(self
            .send(self.http.get(self.node_url(name, "/events")))
            .await?
            .unwrap_or_default())
    }

    pub async fn delete_node(&self, name: &str, force: bool) -> Result<(), ClientError> {
        let mut url = self.node_url(name, "");
        if force {
            url.push_str("?force=true");
        }
        // A node in the cluster is drained first, which can take minutes.
        let request = self.http.delete(url).timeout(Duration::from_secs(300));
        self.send::<serde_json::Value>(request).await.map(|_| ())
    }

    /// What a node would get now: `ipxe`, `install` or `final`.
    pub async fn render(&self, name: &str, what: &str) -> Result<String, ClientError> {
        let what: String = what.chars().filter(char::is_ascii_alphabetic).collect();
        let bytes = self
            .fetch(
                self.http
                    .get(self.node_url(name, &format!("/render/{what}"))),
            )
            .await?
            .unwrap_or_default();
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    pub async fn rejoin_node(&self, name: &str) -> Result<NodeResponse, ClientError> {
        self.send(self.http.post(self.node_url(name, "/rejoin")))
            .await?
            .ok_or_else(|| ClientError::Protocol("empty answer".into()))
    }

    pub async fn reinstall_node(
        &self,
        name: &str,
        power: bool,
    ) -> Result<NodeResponse, ClientError> {
        let suffix = if power {
            "/reinstall?power=true"
        } else {
            "/reinstall"
        };
        self.send(self.http.post(self.node_url(name, suffix)))
            .await?
            .ok_or_else(|| ClientError::Protocol("empty answer".into()))
    }

    /// `PATCH /api/v1/nodes/{name}` with only the fields to change.
    pub async fn update_node(
        &self,
        name: &str,
        patch: &serde_json::Value,
    ) -> Result<NodeResponse, ClientError> {
        self.send(self.http.patch(self.node_url(name, "")).json(patch))
            .await?
            .ok_or_else(|| ClientError::Protocol("empty answer".into()))
    }

    pub async fn set_bmc(
        &self,
        name: &str,
        request: &crate::api::BmcRequest,
    ) -> Result<crate::api::BmcResponse, ClientError> {
        self.send(self.http.put(self.node_url(name, "/bmc")).json(request))
            .await?
            .ok_or_else(|| ClientError::Protocol("empty answer".into()))
    }

    pub async fn get_bmc(&self, name: &str) -> Result<crate::api::BmcResponse, ClientError> {
        self.send(self.http.get(self.node_url(name, "/bmc")))
            .await?
            .ok_or_else(|| ClientError::Protocol("empty answer".into()))
    }

    pub async fn remove_bmc(&self, name: &str) -> Result<(), ClientError> {
        self.send::<serde_json::Value>(self.http.delete(self.node_url(name, "/bmc")))
            .await
            .map(|_| ())
    }

    pub async fn power_status(&self, name: &str) -> Result<crate::power::PowerStatus, ClientError> {
        self.send(self.http.get(self.node_url(name, "/power")))
            .await?
            .ok_or_else(|| ClientError::Protocol("empty answer".into()))
    }

    pub async fn power(
        &self,
        name: &str,
        action: &str,
    ) -> Result<crate::api::PowerResponse, ClientError> {
        self.send(
            self.http
                .post(self.node_url(name, "/power"))
                .json(&serde_json::json!({ "action": action })),
        )
        .await?
        .ok_or_else(|| ClientError::Protocol("empty answer".into()))
    }

    pub async fn add_dns_record(
        &self,
        req: &DnsRecordRequest,
    ) -> Result<DnsRecordResponse, ClientError> {
        self.send(self.http.post(self.url("/api/v1/dns/records")).json(req))
            .await?
            .ok_or_else(|| ClientError::Protocol("empty answer".into()))
    }

    pub async fn addons(&self) -> Result<serde_json::Value, ClientError> {
        self.send(self.http.get(self.url("/api/v1/addons")))
            .await?
            .ok_or_else(|| ClientError::Protocol("empty answer".into()))
    }

    pub async fn addon(&self, name: &str) -> Result<serde_json::Value, ClientError> {
        self.send(
            self.http
                .get(self.url(&format!("/api/v1/addons/{}", addon_name(name)))),
        )
        .await?
        .ok_or_else(|| ClientError::Protocol("empty answer".into()))
    }

    pub async fn addon_apply(&self, name: &str) -> Result<serde_json::Value, ClientError> {
        self.send(
            self.http
                .post(self.url(&format!("/api/v1/addons/{}/apply", addon_name(name)))),
        )
        .await?
        .ok_or_else(|| ClientError::Protocol("empty answer".into()))
    }

    pub async fn identity(&self) -> Result<serde_json::Value, ClientError> {
        self.send(self.http.get(self.url("/api/v1/identity")))
            .await?
            .ok_or_else(|| ClientError::Protocol("empty answer".into()))
    }

    pub async fn updates(&self) -> Result<serde_json::Value, ClientError> {
        self.send(self.http.get(self.url("/api/v1/updates")))
            .await?
            .ok_or_else(|| ClientError::Protocol("empty answer".into()))
    }

    pub async fn updates_pause(&self, paused: bool) -> Result<serde_json::Value, ClientError> {
        let path = if paused {
            "/api/v1/updates/pause"
        } else {
            "/api/v1/updates/resume"
        };
        self.send(self.http.post(self.url(path)))
            .await?
            .ok_or_else(|| ClientError::Protocol("empty answer".into()))
    }

    pub async fn identity_sync(&self) -> Result<serde_json::Value, ClientError> {
        self.send(self.http.post(self.url("/api/v1/identity/sync")))
            .await?
            .ok_or_else(|| ClientError::Protocol("empty answer".into()))
    }

    /// Ends every web console session; how many there were.
    pub async fn revoke_sessions(&self) -> Result<u64, ClientError> {
        let answer: serde_json::Value = self
            .send(self.http.delete(self.url("/api/v1/sessions")))
            .await?
            .ok_or_else(|| ClientError::Protocol("empty answer".into()))?;
        answer["revoked"]
            .as_u64()
            .ok_or_else(|| ClientError::Protocol("no count in the answer".into()))
    }

    pub async fn addon_token(&self, name: &str, ttl: &str) -> Result<String, ClientError> {
        let answer: serde_json::Value = self
            .send(
                self.http
                    .post(self.url(&format!("/api/v1/addons/{}/token", addon_name(name))))
                    .json(&serde_json::json!({ "ttl": ttl })),
            )
            .await?
            .ok_or_else(|| ClientError::Protocol("empty answer".into()))?;
        answer["token"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| ClientError::Protocol("no token in the answer".into()))
    }

    pub async fn cluster_status(&self) -> Result<serde_json::Value, ClientError> {
        self.send(self.http.get(self.url("/api/v1/cluster")))
            .await?
            .ok_or_else(|| ClientError::Protocol("empty answer".into()))
    }

    pub async fn cluster_kubeconfig(
        &self,
        request: &crate::api::KubeconfigRequest,
    ) -> Result<String, ClientError> {
        let response: crate::api::KubeconfigResponse = self
            .send(
                self.http
                    .post(self.url("/api/v1/cluster/kubeconfig"))
                    .json(request),
            )
            .await?
            .ok_or_else(|| ClientError::Protocol("empty answer".into()))?;
        Ok(response.kubeconfig)
    }

    pub async fn cluster_kubeconfigs(
        &self,
    ) -> Result<Vec<crate::model::KubeconfigRecord>, ClientError> {
        self.send(self.http.get(self.url("/api/v1/cluster/kubeconfigs")))
            .await?
            .ok_or_else(|| ClientError::Protocol("empty answer".into()))
    }

    pub async fn cluster_certs(
        &self,
        refresh: bool,
    ) -> Result<crate::cluster::certs::CertReport, ClientError> {
        let path = if refresh {
            "/api/v1/cluster/certs?refresh=true"
        } else {
            "/api/v1/cluster/certs"
        };
        self.send(self.http.get(self.url(path)))
            .await?
            .ok_or_else(|| ClientError::Protocol("empty answer".into()))
    }

    pub async fn cluster_renew_certs(&self) -> Result<(), ClientError> {
        self.send::<serde_json::Value>(self.http.post(self.url("/api/v1/cluster/certs/renew")))
            .await?;
        Ok(())
    }

    pub async fn cluster_snapshots(&self) -> Result<crate::api::SnapshotList, ClientError> {
        self.send(self.http.get(self.url("/api/v1/cluster/snapshots")))
            .await?
            .ok_or_else(|| ClientError::Protocol("empty answer".into()))
    }

    pub async fn cluster_save_snapshot(
        &self,
    ) -> Result<crate::cluster::snapshot::SnapshotInfo, ClientError> {
        self.send(
            self.http
                .post(self.url("/api/v1/cluster/snapshots"))
                .timeout(Duration::from_secs(3600)),
        )
        .await?
        .ok_or_else(|| ClientError::Protocol("empty answer".into()))
    }

    pub async fn cluster_restore(
        &self,
        name: &str,
    ) -> Result<crate::cluster::join::RestoreStatus, ClientError> {
        // A valid name is letters, digits, '-', '_' and '.': nothing to escape.
        if !crate::cluster::snapshot::valid_name(name) {
            return Err(ClientError::Protocol(format!(
                "{name:?} is not a snapshot name (etcd-<time>.db; lacave cluster snapshot list)"
            )));
        }
        let path = format!("/api/v1/cluster/snapshots/{name}/restore");
        self.send(
            self.http
                .post(self.url(&path))
                .timeout(Duration::from_secs(600)),
        )
        .await?
        .ok_or_else(|| ClientError::Protocol("empty answer".into()))
    }

    pub async fn cluster_restore_status(
        &self,
    ) -> Result<crate::cluster::join::RestoreStatus, ClientError> {
        self.send(self.http.get(self.url("/api/v1/cluster/restore")))
            .await?
            .ok_or_else(|| ClientError::Protocol("empty answer".into()))
    }

    /// `POST /api/v1/cluster/upgrade` with `request` (a JSON object).
    pub async fn cluster_upgrade(
        &self,
        request: &serde_json::Value,
    ) -> Result<crate::cluster::join::UpgradeStatus, ClientError> {
        self.send(
            self.http
                .post(self.url("/api/v1/cluster/upgrade"))
                .json(request)
                .timeout(Duration::from_secs(120)),
        )
        .await?
        .ok_or_else(|| ClientError::Protocol("empty answer".into()))
    }

    pub async fn cluster_upgrade_status(
        &self,
    ) -> Result<crate::cluster::join::UpgradeStatus, ClientError> {
        self.send(self.http.get(self.url("/api/v1/cluster/upgrade")))
            .await?
            .ok_or_else(|| ClientError::Protocol("empty answer".into()))
    }

    pub async fn cluster_inventory(&self) -> Result<String, ClientError> {
        let bytes = self
            .fetch(self.http.get(self.url("/api/v1/cluster/inventory")))
            .await?
            .unwrap_or_default();
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    pub async fn list_dns_records(&self) -> Result<Vec<DnsRecordResponse>, ClientError> {
        Ok(self
            .send(self.http.get(self.url("/api/v1/dns/records")))
            .await?
            .unwrap_or_default())
    }

    pub async fn delete_dns_record(&self, id: &str) -> Result<(), ClientError> {
        let id: String = id.chars().filter(char::is_ascii_digit).collect();
        self.send::<serde_json::Value>(
            self.http
                .delete(self.url(&format!("/api/v1/dns/records/{id}"))),
        )
        .await
        .map(|_| ())
    }

    pub async fn issue_certificate(
        &self,
        req: &IssueRequest,
    ) -> Result<IssuedResponse, ClientError> {
        self.send(
            self.http
                .post(self.url("/api/v1/pki/certificates"))
                .json(req),
        )
        .await?
        .ok_or_else(|| ClientError::Protocol("empty answer to an issue request".into()))
    }

    pub async fn list_certificates(&self) -> Result<Vec<CertificateResponse>, ClientError> {
        Ok(self
            .send(self.http.get(self.url("/api/v1/pki/certificates")))
            .await?
            .unwrap_or_default())
    }

    pub async fn revoke_certificate(
        &self,
        serial: &str,
        reason: Option<&str>,
    ) -> Result<CertificateResponse, ClientError> {
        let serial: String = serial.chars().filter(char::is_ascii_hexdigit).collect();
        let body = serde_json::json!({ "reason": reason });
        self.send(
            self.http
                .post(self.url(&format!("/api/v1/pki/certificates/{serial}/revoke")))
                .json(&body),
        )
        .await?
        .ok_or_else(|| ClientError::Protocol("empty answer".into()))
    }
}

/// The innermost error's text: "connection refused" rather than reqwest's outer wrapper.
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// An add-on name in a URL path: add-on names are letters, digits and '-'; anything else is
/// replaced so the daemon answers "no add-on" instead of routing elsewhere.
fn addon_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The daemon's event stream as `--watch` reads it: only whether something happened.
pub struct EventStream {
    response: reqwest::Response,
    buf: Vec<u8>,
    last_id: Option<u64>,
}

impl EventStream {
    /// Waits for the next event (keep-alive comments are not events), then until the burst
    /// it starts is over (0.3 s without another). An error: the stream ended, broke, or sent
    /// not even a keep-alive for 45 s (the daemon sends one every 15 s).
    pub async fn changed(&mut self) -> Result<(), String> {
        let mut seen = false;
        loop {
            let wait = if seen {
                Duration::from_millis(300)
            } else {
                Duration::from_secs(45)
            };
            match tokio::time::timeout(wait, self.response.chunk()).await {
                Err(_) if seen => return Ok(()),
                Err(_) => return Err("nothing from the daemon for 45 s".into()),
                Ok(Err(e)) => return Err(root_cause(&e)),
                Ok(Ok(None)) => return Err("the daemon closed it".into()),
                Ok(Ok(Some(bytes))) => {
                    self.buf.extend_from_slice(&bytes);
                    while let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
                        let message: Vec<u8> = self.buf.drain(..end + 2).collect();
                        for line in String::from_utf8_lossy(&message).lines() {
                            if let Some(id) = line.strip_prefix("id:") {
                                self.last_id = id.trim().parse().ok().or(self.last_id);
                            }
                            if !line.is_empty() && !line.starts_with(':') {
                                seen = true;
                            }
                        }
                    }
                    if self.buf.len() > 1 << 20 {
                        return Err("a message of more than 1 MiB".into());
                    }
                }
            }
        }
    }

    /// The last event's number, to resume after it.
    pub fn last_id(&self) -> Option<u64> {
        self.last_id
    }
}

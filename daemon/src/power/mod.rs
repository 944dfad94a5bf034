//! Power control of nodes through their BMCs: IPMI v2.0 over LAN (`ipmi.rs`) and Redfish
//! (`redfish.rs`) behind one entry point, [`Bmcs::operate`]; each node's BMC address and
//! credentials kept in a file of their own under `<state_dir>/bmc/` (0600, never in the
//! registry, never in an API answer or a log line).
//!
//! Every operation is bounded ([`DEADLINE`]), so a dead or slow BMC is a clear error for its
//! node and never holds anything else; one BMC is driven by one operation at a time.

pub mod ipmi;
pub mod redfish;
pub mod settings;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::model::MacAddr;

/// The longest any one power operation may take, answers and retries included.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// How long a BMC that accepted "on" or "off" may take to say so.
pub const SETTLE: Duration = Duration::from_secs(12);

/// The error for a BMC that accepted a change and never showed it.
pub(crate) fn never_settled(target: PowerState) -> PowerError {
    PowerError::Refused {
        what: format!("power {target}"),
        reason: format!(
            "it accepted the command but still did not say {target} after {} s",
            SETTLE.as_secs()
        ),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum PowerState {
    On,
    Off,
}

impl std::fmt::Display for PowerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PowerState::On => "on",
            PowerState::Off => "off",
        })
    }
}

/// What an operator asks of a node's power.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum PowerAction {
    Status,
    On,
    Off,
    /// Off then on (on, for a machine that is off).
    Cycle,
    /// Boot from the network next time only (the BMC's boot override), nothing else.
    PxeOnce,
}

impl PowerAction {
    pub fn parse(text: &str) -> Option<PowerAction> {
        Some(match text {
            "status" => PowerAction::Status,
            "on" => PowerAction::On,
            "off" => PowerAction::Off,
            "cycle" => PowerAction::Cycle,
            "pxe-once" => PowerAction::PxeOnce,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            PowerAction::Status => "status",
            PowerAction::On => "on",
            PowerAction::Off => "off",
            PowerAction::Cycle => "cycle",
            PowerAction::PxeOnce => "pxe-once",
        }
    }
}

/// Why a power operation failed. No variant carries a credential.
#[derive(Debug, thiserror::Error)]
pub enum PowerError {
    #[error("the BMC does not answer: {0}")]
    Unreachable(String),
    #[error("the BMC refused the user name or password")]
    Credentials,
    #[error("the BMC answered what lacave cannot use: {0}")]
    Protocol(String),
    #[error("the BMC refused {what}: {reason}")]
    Refused { what: String, reason: String },
    #[error("the BMC's certificate is not the one expected: {0}")]
    Certificate(String),
    #[error("the BMC did not finish within {} s", DEADLINE.as_secs())]
    Timeout,
    #[error("no BMC is configured for this node (lacave node bmc NODE ipmi://… --user …)")]
    NotConfigured,
    #[error("{0}")]
    Store(String),
}

/// Where a BMC is: `ipmi://HOST[:PORT]` (UDP 623 by default) or
/// `redfish://HOST[:PORT][?sha256=FINGERPRINT]` (HTTPS 443: the lacave CA, or a pinned
/// certificate).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BmcAddress {
    Ipmi(SocketAddr),
    Redfish {
        host: String,
        port: u16,
        /// The SHA-256 of the certificate's DER, lower-case hex; `None`: the lacave CA.
        sha256: Option<String>,
    },
}

impl BmcAddress {
    /// Parses a BMC URL; the error says what is wrong with it.
    pub fn parse(url: &str) -> Result<BmcAddress, String> {
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| format!("{url:?} is not ipmi://HOST[:PORT] or redfish://HOST[:PORT]"))?;
        let (authority, query) = match rest.split_once('?') {
            Some((a, q)) => (a, Some(q)),
            None => (rest.trim_end_matches('/'), None),
        };
        if authority.is_empty() || authority.contains(['/', '@', ' ']) {
            return Err(format!(
                "{url:?}: give only the host and port (credentials go in their own fields)"
            ));
        }
        let (host, port) = split_host_port(authority)?;
        match scheme {
            "ipmi" => {
                if query.is_some() {
                    return Err(format!("{url:?}: an ipmi:// address takes no options"));
                }
                let ip: IpAddr = host.parse().map_err(|_| {
                    format!("{url:?}: an ipmi:// BMC is given by its IP address, not {host:?}")
                })?;
                Ok(BmcAddress::Ipmi(SocketAddr::new(ip, port.unwrap_or(623))))
            }
            "redfish" => {
                let sha256 = match query {
                    None => None,
                    Some(q) => {
                        let hex = q.strip_prefix("sha256=").ok_or_else(|| {
                            format!(
                                "{url:?}: the only option is sha256=<the certificate's SHA-256>"
                            )
                        })?;
                        let hex: String = hex
                            .chars()
                            .filter(|c| *c != ':')
                            .collect::<String>()
                            .to_lowercase();
                        if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
                            return Err(format!(
                                "{url:?}: sha256= takes the 64 hex digits of the certificate's SHA-256"
                            ));
                        }
                        Some(hex)
                    }
                };
                if !host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':'))
                {
                    return Err(format!("{url:?}: {host:?} is not a host name or address"));
                }
                Ok(BmcAddress::Redfish {
                    host: host.to_string(),
                    port: port.unwrap_or(443),
                    sha256,
                })
            }
            other => Err(format!(
                "{url:?}: {other:?} is not a BMC protocol (ipmi or redfish)"
            )),
        }
    }

    /// The host part, for telling two nodes' BMCs apart.
    pub fn endpoint(&self) -> String {
        match self {
            BmcAddress::Ipmi(addr) => addr.to_string(),
            BmcAddress::Redfish { host, port, .. } => format!("{host}:{port}"),
        }
    }
}

fn split_host_port(authority: &str) -> Result<(&str, Option<u16>), String> {
    let port_of = |p: &str| {
        p.parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("{p:?} is not a port"))
    };
    if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("{authority:?}: an IPv6 address needs its closing ]"))?;
        return match after.strip_prefix(':') {
            Some(p) => Ok((host, Some(port_of(p)?))),
            None if after.is_empty() => Ok((host, None)),
            None => Err(format!("{authority:?} is not HOST[:PORT]")),
        };
    }
    match authority.rsplit_once(':') {
        Some((host, p)) if !host.contains(':') => Ok((host, Some(port_of(p)?))),
        _ => Ok((authority, None)),
    }
}

/// A node's BMC as kept on disk (0600).
#[derive(Clone, Serialize, Deserialize)]
pub struct BmcConfig {
    pub url: String,
    pub user: String,
    pub password: String,
}

impl std::fmt::Debug for BmcConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BmcConfig")
            .field("url", &self.url)
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// The last thing a node's BMC said, for the API and `/metrics`.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PowerStatus {
    /// `on` or `off`; absent until the BMC has answered once.
    pub state: Option<PowerState>,
    /// Whether the last operation reached the BMC and was accepted.
    pub reachable: bool,
    /// The last operation's error, if it failed.
    pub error: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub checked_at: time::OffsetDateTime,
}

/// Every node's BMC: the files, the last status, one operation per BMC at a time.
pub struct Bmcs {
    dir: PathBuf,
    status: Mutex<HashMap<MacAddr, PowerStatus>>,
    busy: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    ca_pem: Option<String>,
}

impl std::fmt::Debug for Bmcs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bmcs")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

fn file_name(mac: MacAddr) -> String {
    format!("{}.json", mac.to_string().replace(':', "-"))
}

impl Bmcs {
    /// `<state_dir>/bmc`; `ca_pem` is what a Redfish BMC's certificate is checked against when
    /// its URL pins none (the lacave CA).
    pub fn new(state_dir: &std::path::Path, ca_pem: Option<String>) -> Bmcs {
        Bmcs {
            dir: state_dir.join("bmc"),
            status: Mutex::new(HashMap::new()),
            busy: Mutex::new(HashMap::new()),
            ca_pem,
        }
    }

    pub fn get(&self, mac: MacAddr) -> Result<Option<BmcConfig>, PowerError> {
        let path = self.dir.join(file_name(mac));
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| PowerError::Store(format!("{}: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(PowerError::Store(format!("{}: {e}", path.display()))),
        }
    }

    /// Every configured BMC, by node.
    pub fn all(&self) -> Vec<(MacAddr, BmcConfig)> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(mac) = name
                .strip_suffix(".json")
                .and_then(|m| m.replace('-', ":").parse::<MacAddr>().ok())
            else {
                continue;
            };
            if let Ok(Some(config)) = self.get(mac) {
                out.push((mac, config));
            }
        }
        out
    }

    /// Keeps a node's BMC (0600, written whole then renamed).
    pub fn set(&self, mac: MacAddr, config: &BmcConfig) -> Result<(), PowerError> {
        crate::secrets::create_private_dir(&self.dir)
            .map_err(|e| PowerError::Store(format!("{}: {e}", self.dir.display())))?;
        let bytes = serde_json::to_vec_pretty(config).expect("a BMC config serialises");
        crate::secrets::write_private(&self.dir.join(file_name(mac)), &bytes)
            .map_err(|e| PowerError::Store(e.to_string()))?;
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&mac);
        Ok(())
    }

    pub fn remove(&self, mac: MacAddr) -> Result<bool, PowerError> {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&mac);
        match std::fs::remove_file(self.dir.join(file_name(mac))) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(PowerError::Store(e.to_string())),
        }
    }

    pub fn last_status(&self, mac: MacAddr) -> Option<PowerStatus> {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&mac)
            .cloned()
    }

    /// Every node's last status (for `/metrics`).
    pub fn statuses(&self) -> Vec<(MacAddr, PowerStatus)> {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(m, s)| (*m, s.clone()))
            .collect()
    }

    /// Asks every BMC for its power state, all at once (each within [`DEADLINE`]), every
    /// `every` until `cancel`: keeps the last status of each (for `/metrics`, the console and
    /// `lacave node bmc`) never older than that.
    pub async fn poll(
        self: Arc<Self>,
        every: Duration,
        cancel: tokio_util::sync::CancellationToken,
    ) {
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
            let macs: Vec<MacAddr> = self.all().into_iter().map(|(mac, _)| mac).collect();
            let mut tasks = tokio::task::JoinSet::new();
            for mac in macs {
                let bmcs = self.clone();
                tasks.spawn(async move {
                    if let Err(error) = bmcs.operate(mac, PowerAction::Status).await {
                        tracing::warn!(%mac, %error, "a BMC did not answer the periodic power check");
                    }
                });
            }
            tokio::select! {
                () = cancel.cancelled() => return,
                _ = async { while tasks.join_next().await.is_some() {} } => {}
            }
        }
    }

    /// Runs one operation on a node's BMC, within [`DEADLINE`], after any other operation on
    /// the same BMC; records what it found.
    pub async fn operate(
        &self,
        mac: MacAddr,
        action: PowerAction,
    ) -> Result<PowerState, PowerError> {
        let config = self.get(mac)?.ok_or(PowerError::NotConfigured)?;
        let address = BmcAddress::parse(&config.url).map_err(PowerError::Protocol)?;
        let lock = self
            .busy
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(address.endpoint())
            .or_default()
            .clone();
        let result = tokio::time::timeout(DEADLINE, async {
            let _one_at_a_time = lock.lock().await;
            match &address {
                BmcAddress::Ipmi(peer) => {
                    ipmi::run(*peer, &config.user, &config.password, action).await
                }
                BmcAddress::Redfish { host, port, sha256 } => {
                    redfish::run(
                        host,
                        *port,
                        sha256.as_deref(),
                        self.ca_pem.as_deref(),
                        &config.user,
                        &config.password,
                        action,
                    )
                    .await
                }
            }
        })
        .await
        .unwrap_or(Err(PowerError::Timeout));
        let now = time::OffsetDateTime::now_utc();
        let mut status = self.status.lock().unwrap_or_else(|e| e.into_inner());
        let previous = status.get(&mac).and_then(|s| s.state);
        status.insert(
            mac,
            PowerStatus {
                state: result.as_ref().ok().copied().or(previous),
                reachable: result.is_ok(),
                error: result.as_ref().err().map(|e| e.to_string()),
                checked_at: now,
            },
        );
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bmc_urls() {
        assert_eq!(
            BmcAddress::parse("ipmi://10.0.0.5").unwrap(),
            BmcAddress::Ipmi("10.0.0.5:623".parse().unwrap())
        );
        assert_eq!(
            BmcAddress::parse("ipmi://[::1]:6230").unwrap(),
            BmcAddress::Ipmi("[::1]:6230".parse().unwrap())
        );
        let fp = "AB".repeat(32);
        assert_eq!(
            BmcAddress::parse(&format!("redfish://bmc1.lacave:8443?sha256={fp}")).unwrap(),
            BmcAddress::Redfish {
                host: "bmc1.lacave".into(),
                port: 8443,
                sha256: Some("ab".repeat(32)),
            }
        );
        for bad in [
            "10.0.0.5",
            "ipmi://",
            "ipmi://bmc1.lacave",
            "ipmi://10.0.0.5:0",
            "ipmi://10.0.0.5:99999",
            "ipmi://admin:pw@10.0.0.5",
            "http://10.0.0.5",
            "redfish://bmc/redfish/v1",
            "redfish://bmc?sha256=12",
            "redfish://bmc?insecure=1",
            "redfish://b mc",
        ] {
            assert!(BmcAddress::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_bmc_config_never_shows_its_password() {
        let c = BmcConfig {
            url: "ipmi://10.0.0.5".into(),
            user: "admin".into(),
            password: "hunter2-secret".into(),
        };
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn configs_are_private_files_and_come_back() {
        let dir = tempfile::tempdir().unwrap();
        let bmcs = Bmcs::new(dir.path(), None);
        let mac: MacAddr = "52:54:00:00:00:01".parse().unwrap();
        assert!(bmcs.get(mac).unwrap().is_none());
        let c = BmcConfig {
            url: "ipmi://127.0.0.1:6230".into(),
            user: "admin".into(),
            password: "pw".into(),
        };
        bmcs.set(mac, &c).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let file = dir.path().join("bmc/52-54-00-00-00-01.json");
        assert_eq!(
            std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(bmcs.get(mac).unwrap().unwrap().password, "pw");
        assert_eq!(bmcs.all().len(), 1);
        assert!(bmcs.remove(mac).unwrap());
        assert!(bmcs.get(mac).unwrap().is_none());
    }

    /// A fake BMC on loopback: answers each packet it gets with what `answer` makes of it.
    fn fake_bmc(
        mut answer: impl FnMut(usize, &[u8]) -> Option<Vec<u8>> + Send + 'static,
    ) -> std::net::SocketAddr {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = socket.local_addr().unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 1024];
            for n in 0.. {
                let Ok((len, from)) = socket.recv_from(&mut buf) else {
                    return;
                };
                if let Some(reply) = answer(n, &buf[..len]) {
                    let _ = socket.send_to(&reply, from);
                }
            }
        });
        addr
    }

    #[tokio::test]
    async fn a_bmc_that_answers_garbage_is_an_error_at_once() {
        let peer = fake_bmc(|_, _| Some(b"\x06\x00\xff\x07garbage, not RMCP+".to_vec()));
        let started = std::time::Instant::now();
        let err = ipmi::run(peer, "admin", "pw", PowerAction::Status)
            .await
            .unwrap_err();
        assert!(matches!(err, PowerError::Protocol(_)), "{err}");
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
    }

    #[tokio::test]
    async fn a_bmc_that_stops_answering_mid_session_is_an_error_in_bounded_time() {
        // It answers the Open Session request properly, then nothing more.
        let peer = fake_bmc(|n, request| {
            if n > 0 || request.len() < 24 {
                return None;
            }
            let (tag, console_id) = (request[16], &request[20..24]);
            let mut payload = vec![tag, 0, 4, 0];
            payload.extend_from_slice(console_id);
            payload.extend_from_slice(&0x0102_0304u32.to_le_bytes());
            payload.extend_from_slice(&request[24..48]);
            let mut reply = vec![0x06, 0x00, 0xff, 0x07, 0x06, 0x11, 0, 0, 0, 0, 0, 0, 0, 0];
            reply.extend_from_slice(&(payload.len() as u16).to_le_bytes());
            reply.extend_from_slice(&payload);
            Some(reply)
        });
        let started = std::time::Instant::now();
        let err = ipmi::run(peer, "admin", "pw", PowerAction::On)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, PowerError::Unreachable(m) if m.contains("RAKP 1")),
            "{err}"
        );
        assert!(started.elapsed() < DEADLINE, "{:?}", started.elapsed());
    }

    #[tokio::test]
    async fn the_periodic_check_records_each_bmcs_reachability() {
        let dir = tempfile::tempdir().unwrap();
        let bmcs = Arc::new(Bmcs::new(dir.path(), None));
        let garbage = fake_bmc(|_, _| Some(b"not IPMI at all".to_vec()));
        let mac: MacAddr = "52:54:00:00:00:09".parse().unwrap();
        bmcs.set(
            mac,
            &BmcConfig {
                url: format!("ipmi://{garbage}"),
                user: "admin".into(),
                password: "pw".into(),
            },
        )
        .unwrap();
        let cancel = tokio_util::sync::CancellationToken::new();
        let poller = tokio::spawn(bmcs.clone().poll(Duration::from_millis(50), cancel.clone()));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let status = loop {
            if let Some(s) = bmcs.last_status(mac) {
                break s;
            }
            assert!(std::time::Instant::now() < deadline, "never checked");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert!(!status.reachable);
        assert!(status.error.unwrap().contains("cannot use"));
        cancel.cancel();
        poller.await.unwrap();
    }

    #[tokio::test]
    async fn a_bmc_that_never_answers_is_an_error_in_bounded_time() {
        // A UDP port nobody answers on (bound here, never read).
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let peer = silent.local_addr().unwrap();
        let started = std::time::Instant::now();
        let err = ipmi::run(peer, "admin", "pw", PowerAction::Status)
            .await
            .unwrap_err();
        assert!(matches!(err, PowerError::Unreachable(_)), "{err}");
        assert!(started.elapsed() < DEADLINE, "{:?}", started.elapsed());
    }
}

//! Fakes of the join loop's outside worlds (`seams.rs`) for unit tests of its decisions: a
//! shell that records every command and answers from a script, and an API server that is a
//! few maps. Never the only proof of a feature: the lab tests run the real sshd, kubeadm and
//! API server.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use super::kube::{KubeError, NodeInfo};
use super::kubeadm::BootstrapToken;
use super::seams::{ApiConnector, ClusterApi, NodeShell, ShellConnector};
use super::ssh::{Output, SshError};

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What a scripted command does.
#[derive(Clone, Debug)]
pub enum Reply {
    /// Ends with this status and output.
    Exit(u32, String),
    /// Never ends (until the caller's timeout or cancellation).
    Hang,
}

/// Every node's shell: the commands run (by node address), and the replies to give.
#[derive(Default)]
pub struct FakeShells {
    /// `(address, command)` in the order they ran; uploads as `upload <path>`.
    pub ran: Mutex<Vec<(IpAddr, String)>>,
    /// The first reply whose command prefix matches wins; anything else exits 0.
    pub replies: Mutex<Vec<(String, Reply)>>,
    /// Addresses whose sshd does not answer.
    pub unreachable: Mutex<Vec<IpAddr>>,
    /// What `stop_leftover_steps` stopped, per address.
    pub stopped: Mutex<HashMap<IpAddr, usize>>,
    /// Abandoned commands (their future dropped before they ended): "stopped on the node".
    pub abandoned: Mutex<Vec<(IpAddr, String)>>,
}

impl FakeShells {
    pub fn reply(&self, prefix: &str, reply: Reply) {
        lock(&self.replies).insert(0, (prefix.to_string(), reply));
    }

    pub fn commands(&self, ip: IpAddr) -> Vec<String> {
        lock(&self.ran)
            .iter()
            .filter(|(a, _)| *a == ip)
            .map(|(_, c)| c.clone())
            .collect()
    }
}

struct FakeShell {
    ip: IpAddr,
    world: Arc<FakeShells>,
}

/// Marks a command abandoned if its future is dropped before it ends.
struct Abandon {
    world: Arc<FakeShells>,
    ip: IpAddr,
    command: String,
    armed: bool,
}

impl Drop for Abandon {
    fn drop(&mut self) {
        if self.armed {
            lock(&self.world.abandoned).push((self.ip, self.command.clone()));
        }
    }
}

#[async_trait]
impl NodeShell for FakeShell {
    async fn run(
        &self,
        command: &str,
        _stdin: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<Output, SshError> {
        lock(&self.world.ran).push((self.ip, command.to_string()));
        let reply = lock(&self.world.replies)
            .iter()
            .find(|(prefix, _)| command.starts_with(prefix.as_str()))
            .map(|(_, r)| r.clone())
            .unwrap_or(Reply::Exit(0, String::new()));
        match reply {
            Reply::Exit(status, out) => Ok(Output {
                status: Some(status),
                stdout: out.into_bytes(),
                stderr: Vec::new(),
            }),
            Reply::Hang => {
                let mut guard = Abandon {
                    world: self.world.clone(),
                    ip: self.ip,
                    command: command.to_string(),
                    armed: true,
                };
                tokio::time::sleep(timeout).await;
                guard.armed = false;
                lock(&self.world.abandoned).push((self.ip, command.to_string()));
                Err(SshError::Timeout {
                    what: format!("`{command}` (stopped on the node)"),
                    secs: timeout.as_secs(),
                })
            }
        }
    }

    async fn upload(&self, path: &str, _mode: u32, _contents: &[u8]) -> Result<(), SshError> {
        lock(&self.world.ran).push((self.ip, format!("upload {path}")));
        Ok(())
    }

    async fn stop_leftover_steps(&self) -> Result<usize, SshError> {
        Ok(lock(&self.world.stopped).remove(&self.ip).unwrap_or(0))
    }

    async fn close(self: Box<Self>) {}
}

#[async_trait]
impl ShellConnector for Arc<FakeShells> {
    async fn connect(
        &self,
        ip: IpAddr,
        pinned: Option<&str>,
        _timeout: Duration,
    ) -> Result<Box<dyn NodeShell>, SshError> {
        if pinned.is_none() {
            return Err(SshError::NotPinned);
        }
        if lock(&self.unreachable).contains(&ip) {
            return Err(SshError::Connect {
                addr: std::net::SocketAddr::new(ip, 22),
                reason: "connection timed out".into(),
            });
        }
        Ok(Box::new(FakeShell {
            ip,
            world: self.clone(),
        }))
    }
}

/// The API server: Nodes, tokens, labels, cordons, and what was asked of it.
#[derive(Debug, Default)]
pub struct FakeCluster {
    /// Node name → Ready.
    pub nodes: Mutex<BTreeMap<String, bool>>,
    pub tokens: Mutex<Vec<String>>,
    pub labels: Mutex<BTreeMap<String, BTreeMap<String, String>>>,
    pub cordoned: Mutex<Vec<String>>,
    /// Every write, in order (`cordon w1`, `drain w1`, `delete w1`, `labels w1` …).
    pub calls: Mutex<Vec<String>>,
    /// Label applies fail while set.
    pub labels_fail: Mutex<bool>,
    /// Drains run out of time while set.
    pub drain_times_out: Mutex<bool>,
    /// Servers (kubeconfig `server:` lines) the daemon connected to.
    pub connected: Mutex<Vec<String>>,
    /// Servers whose `/readyz` does not answer.
    pub down: Mutex<Vec<String>>,
}

impl FakeCluster {
    pub fn set_ready(&self, name: &str, ready: bool) {
        lock(&self.nodes).insert(name.to_string(), ready);
    }

    pub fn calls(&self) -> Vec<String> {
        lock(&self.calls).clone()
    }
}

#[derive(Debug)]
struct FakeApi {
    server: String,
    world: Arc<FakeCluster>,
}

#[async_trait]
impl ClusterApi for FakeApi {
    fn server(&self) -> &str {
        &self.server
    }
    fn client(&self) -> Option<kube::Client> {
        None
    }
    async fn ready(&self) -> bool {
        !lock(&self.world.down).contains(&self.server)
    }
    fn node_ready(&self, name: &str) -> Option<bool> {
        lock(&self.world.nodes).get(name).copied()
    }
    fn node_info(&self, name: &str) -> Option<NodeInfo> {
        lock(&self.world.nodes).get(name).map(|ready| NodeInfo {
            ready: *ready,
            kubelet_version: Some("v1.37.2".into()),
            roles: Vec::new(),
            labels: BTreeMap::new(),
        })
    }
    async fn create_bootstrap_token(
        &self,
        token: &BootstrapToken,
        _ttl: Duration,
        _node: &str,
    ) -> Result<(), KubeError> {
        lock(&self.world.tokens).push(token.id.clone());
        Ok(())
    }
    async fn wait_token_signed(&self, _token: &BootstrapToken, _timeout: Duration) -> bool {
        true
    }
    async fn delete_bootstrap_token(&self, id: &str) -> Result<(), KubeError> {
        lock(&self.world.tokens).retain(|t| t != id);
        Ok(())
    }
    async fn apply_node_labels(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<(), KubeError> {
        lock(&self.world.calls).push(format!("labels {name}"));
        if *lock(&self.world.labels_fail) {
            return Err(KubeError::Config(
                "admission webhook refused the labels".into(),
            ));
        }
        lock(&self.world.labels).insert(name.to_string(), labels.clone());
        Ok(())
    }
    async fn cordon(&self, name: &str) -> Result<(), KubeError> {
        lock(&self.world.calls).push(format!("cordon {name}"));
        lock(&self.world.cordoned).push(name.to_string());
        Ok(())
    }
    async fn uncordon(&self, name: &str) -> Result<(), KubeError> {
        lock(&self.world.calls).push(format!("uncordon {name}"));
        lock(&self.world.cordoned).retain(|n| n != name);
        Ok(())
    }
    async fn drain(&self, name: &str, timeout: Duration) -> Result<usize, KubeError> {
        lock(&self.world.calls).push(format!("drain {name}"));
        if *lock(&self.world.drain_times_out) {
            return Err(KubeError::DrainTimeout {
                node: name.to_string(),
                left: 1,
                secs: timeout.as_secs(),
            });
        }
        Ok(0)
    }
    async fn delete_node(&self, name: &str) -> Result<(), KubeError> {
        lock(&self.world.calls).push(format!("delete {name}"));
        lock(&self.world.nodes).remove(name);
        Ok(())
    }
}

/// The server a kubeconfig names.
fn server_of(kubeconfig: &str) -> String {
    kubeconfig
        .lines()
        .find_map(|l| l.trim().strip_prefix("server:"))
        .or_else(|| {
            kubeconfig
                .lines()
                .find_map(|l| l.split_once("\"server\":").map(|(_, v)| v))
        })
        .map(|v| v.trim().trim_matches([',', '"', ' ']).to_string())
        .unwrap_or_default()
}

#[async_trait]
impl ApiConnector for Arc<FakeCluster> {
    async fn connect(
        &self,
        kubeconfig: &str,
        _cancel: CancellationToken,
    ) -> Result<Arc<dyn ClusterApi>, KubeError> {
        let server = server_of(kubeconfig);
        if lock(&self.down).contains(&server) {
            return Err(KubeError::Config(format!("{server} does not answer")));
        }
        lock(&self.connected).push(server.clone());
        Ok(Arc::new(FakeApi {
            server,
            world: self.clone(),
        }))
    }

    async fn probe_client(&self, kubeconfig: &str) -> Result<Arc<dyn ClusterApi>, KubeError> {
        Ok(Arc::new(FakeApi {
            server: server_of(kubeconfig),
            world: self.clone(),
        }))
    }
}

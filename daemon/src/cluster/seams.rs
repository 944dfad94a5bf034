//! The join loop's two outside worlds behind small traits: a node's shell (SSH) and the
//! Kubernetes API. The shipped implementations are the real ones (`ssh::SshClient` and
//! `ssh::Session`, `kube::KubeApi`), tested against a real sshd and a real API server; the
//! traits exist so that the loop's decisions (which join starts, what a failed or
//! abandoned step does, what a removal answers) are unit-tested with fakes (`fakes.rs`).

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use super::kube::{KubeApi, KubeError, NodeInfo};
use super::kubeadm::BootstrapToken;
use super::ssh::{Output, Session, SshClient, SshError};

/// What the cluster half asks of the Kubernetes API.
#[async_trait]
pub trait ClusterApi: Send + Sync + Debug {
    /// The API server's URL.
    fn server(&self) -> &str;
    /// The kube client, for the add-on engine (`None` where there is no real API server).
    fn client(&self) -> Option<kube::Client>;
    /// Whether the API server answers `/readyz`.
    async fn ready(&self) -> bool;
    /// A Node's Ready condition (`None`: no such Node).
    fn node_ready(&self, name: &str) -> Option<bool>;
    fn node_info(&self, name: &str) -> Option<NodeInfo>;
    async fn create_bootstrap_token(
        &self,
        token: &BootstrapToken,
        ttl: Duration,
        node: &str,
    ) -> Result<(), KubeError>;
    async fn wait_token_signed(&self, token: &BootstrapToken, timeout: Duration) -> bool;
    async fn delete_bootstrap_token(&self, id: &str) -> Result<(), KubeError>;
    async fn apply_node_labels(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<(), KubeError>;
    async fn cordon(&self, name: &str) -> Result<(), KubeError>;
    async fn uncordon(&self, name: &str) -> Result<(), KubeError>;
    async fn drain(&self, name: &str, timeout: Duration) -> Result<usize, KubeError>;
    async fn delete_node(&self, name: &str) -> Result<(), KubeError>;
}

/// The connection to the API server as its users follow it (`connection.rs` sends it).
pub type ApiWatch = tokio::sync::watch::Receiver<Option<Arc<dyn ClusterApi>>>;

/// How connections to an API server are made.
#[async_trait]
pub trait ApiConnector: Send + Sync {
    /// Connects with `kubeconfig` (its server one control plane) and starts the Node watch,
    /// which runs until `cancel`.
    async fn connect(
        &self,
        kubeconfig: &str,
        cancel: CancellationToken,
    ) -> Result<Arc<dyn ClusterApi>, KubeError>;
    /// A client of the API server `kubeconfig` names, without a Node watch, kept to probe
    /// its `/readyz`.
    async fn probe_client(&self, kubeconfig: &str) -> Result<Arc<dyn ClusterApi>, KubeError>;
}

/// A shell on one node.
#[async_trait]
pub trait NodeShell: Send + Sync {
    async fn run(
        &self,
        command: &str,
        stdin: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<Output, SshError>;
    async fn upload(&self, path: &str, mode: u32, contents: &[u8]) -> Result<(), SshError>;
    async fn stop_leftover_steps(&self) -> Result<usize, SshError>;
    async fn close(self: Box<Self>);
}

/// How shells on nodes are opened: only to the host key the node pinned.
#[async_trait]
pub trait ShellConnector: Send + Sync {
    async fn connect(
        &self,
        ip: IpAddr,
        pinned: Option<&str>,
        timeout: Duration,
    ) -> Result<Box<dyn NodeShell>, SshError>;
}

#[async_trait]
impl ClusterApi for KubeApi {
    fn server(&self) -> &str {
        KubeApi::server(self)
    }
    fn client(&self) -> Option<kube::Client> {
        Some(KubeApi::client(self))
    }
    async fn ready(&self) -> bool {
        KubeApi::ready(self).await
    }
    fn node_ready(&self, name: &str) -> Option<bool> {
        KubeApi::node_ready(self, name)
    }
    fn node_info(&self, name: &str) -> Option<NodeInfo> {
        KubeApi::node_info(self, name)
    }
    async fn create_bootstrap_token(
        &self,
        token: &BootstrapToken,
        ttl: Duration,
        node: &str,
    ) -> Result<(), KubeError> {
        KubeApi::create_bootstrap_token(self, token, ttl, node).await
    }
    async fn wait_token_signed(&self, token: &BootstrapToken, timeout: Duration) -> bool {
        KubeApi::wait_token_signed(self, token, timeout).await
    }
    async fn delete_bootstrap_token(&self, id: &str) -> Result<(), KubeError> {
        KubeApi::delete_bootstrap_token(self, id).await
    }
    async fn apply_node_labels(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<(), KubeError> {
        KubeApi::apply_node_labels(self, name, labels).await
    }
    async fn cordon(&self, name: &str) -> Result<(), KubeError> {
        KubeApi::cordon(self, name).await
    }
    async fn uncordon(&self, name: &str) -> Result<(), KubeError> {
        KubeApi::uncordon(self, name).await
    }
    async fn drain(&self, name: &str, timeout: Duration) -> Result<usize, KubeError> {
        KubeApi::drain(self, name, timeout).await
    }
    async fn delete_node(&self, name: &str) -> Result<(), KubeError> {
        KubeApi::delete_node(self, name).await
    }
}

/// The real connector: [`KubeApi`].
#[derive(Debug, Default)]
pub struct KubeConnector;

#[async_trait]
impl ApiConnector for KubeConnector {
    async fn connect(
        &self,
        kubeconfig: &str,
        cancel: CancellationToken,
    ) -> Result<Arc<dyn ClusterApi>, KubeError> {
        Ok(Arc::new(KubeApi::connect(kubeconfig, cancel).await?))
    }
    async fn probe_client(&self, kubeconfig: &str) -> Result<Arc<dyn ClusterApi>, KubeError> {
        Ok(Arc::new(KubeApi::unwatched(kubeconfig).await?))
    }
}

#[async_trait]
impl NodeShell for Session {
    async fn run(
        &self,
        command: &str,
        stdin: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<Output, SshError> {
        Session::run(self, command, stdin, timeout).await
    }
    async fn upload(&self, path: &str, mode: u32, contents: &[u8]) -> Result<(), SshError> {
        Session::upload(self, path, mode, contents).await
    }
    async fn stop_leftover_steps(&self) -> Result<usize, SshError> {
        Session::stop_leftover_steps(self).await
    }
    async fn close(self: Box<Self>) {
        Session::close(*self).await
    }
}

#[async_trait]
impl ShellConnector for SshClient {
    async fn connect(
        &self,
        ip: IpAddr,
        pinned: Option<&str>,
        timeout: Duration,
    ) -> Result<Box<dyn NodeShell>, SshError> {
        Ok(Box::new(
            SshClient::connect(self, ip, pinned, timeout).await?,
        ))
    }
}

//! The join loop: takes every `booted` node with a role into the Kubernetes cluster, over SSH
//! with kubeadm, moves it `booted → joining → joined → ready`, and keeps it there or says it
//! is not (`ready ⇄ notready`). A level-triggered reconciler: every tick reads the registry
//! and the Node cache (both in memory) and decides each node's next step; every write names
//! the node by its registry id and the state it started from (compare-and-set), so a step
//! whose node changed under it stops instead of overwriting.
//!
//! - The first control plane (registration order) runs `kubeadm init`; nothing else joins
//!   before a control plane is Ready, so no join races a control plane still installing.
//! - Control planes join one at a time (etcd admits one learner at a time); workers join in
//!   parallel. Each node joins with a bootstrap token of its own, minted through the API with
//!   a one-hour TTL and deleted once the node is Ready. Running joins are keyed by registry
//!   id: never two at once for a node, and no edit can make one lose its node.
//! - `[cluster] join_timeout_secs` bounds the whole `booted → ready`: kubeadm gets what is
//!   left of it, and a node still `joined` (its Node not Ready) when it runs out fails with
//!   what the API server says of it.
//! - Removing the last control plane (`--force`) ends the cluster: the daemon forgets who
//!   initialized it, its tokens and add-on inventories, and sends the remaining nodes back to
//!   `booted`, so that the next control plane initializes a new cluster and they join it.
//! - Before kubeadm runs, the node is reset (`kubeadm reset -f`): a join retried after a
//!   failure or a restart of the daemon starts from a clean node. A node found `joining` at
//!   start is retried that way, never left stuck.
//! - Each step goes to the node's history with its command, status and output tail; a failed
//!   step moves the node to `failed` (phase `join`) with the command and the tail.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::connection::ApiConnection;
use super::kubeadm::{self, BootstrapToken};
use super::pki::{self, ClusterPki};
use super::seams::{ApiConnector, ApiWatch, KubeConnector, NodeShell, ShellConnector};
use super::settings::ClusterConfig;
use super::ssh::{SshClient, SshError};
use crate::boot::templates::{KUBEADM_INIT, KUBEADM_JOIN, Templates};
use crate::config::Config;
use crate::model::{EventKind, Failure, Node, NodeId, NodeKey, NodeState, Role};
use crate::store::Store;

mod reboots;
mod restore;
mod upgrade;
pub use reboots::{
    Candidate, NUDGE_COMMAND, REBOOT_COMMAND, REBOOT_TICK, RebootRun, RebootStatus, next_reboots,
};
pub use restore::{RestoreError, RestoreStatus, SnapshotStats};
pub use upgrade::{UpgradeError, UpgradeNode, UpgradeRequest, UpgradeStatus};

/// How often the loop looks at the registry and the Node cache (both in memory: a tick costs
/// no I/O unless there is work).
const TICK: Duration = Duration::from_millis(250);
/// How long a join's bootstrap token lives.
const TOKEN_TTL: Duration = Duration::from_secs(3600);
/// How much of a step's output goes to the node's history.
const EVENT_TAIL_LINES: usize = 20;
/// The first wait after a failed label sync; each further failure doubles it, up to
/// [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(300);

/// Why a join stopped; its text is the node's failure reason.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error(transparent)]
    Ssh(#[from] SshError),
    #[error("`{command}` exited with {status}: {tail}")]
    Step {
        command: String,
        status: String,
        tail: String,
    },
    /// The registry refused a write; `stale` when the node changed under the join.
    #[error("the registry: {0}")]
    Registry(#[from] crate::store::StoreError),
    #[error(transparent)]
    Kube(#[from] super::kube::KubeError),
    #[error("the node has no address")]
    NoAddress,
    #[error("no connection to the Kubernetes API")]
    NoApiConnection,
    #[error("the kubeadm configuration: {0}")]
    Template(String),
}

/// Why a node could not be taken out of the cluster; the API maps each to one status.
#[derive(Debug, thiserror::Error)]
pub enum RemovalError {
    /// Refused as things stand (a join runs, the last control plane): 409.
    #[error("{0}")]
    Conflict(String),
    /// The API server could not be reached: 503, nothing was changed in the registry.
    #[error(
        "{what}: the Kubernetes API server does not answer ({reason}); the node stays registered"
    )]
    Unreachable { what: String, reason: String },
    /// A drain (or another step) ran out of time: 504.
    #[error("{0}; the node was made schedulable again and stays registered")]
    Timeout(String),
    /// The API server refused a step, or the node's reset could not remove its etcd member:
    /// 502, the node stays registered and its Node in the cluster.
    #[error("{0}")]
    Failed(String),
    /// The registry could not be read.
    #[error("the registry: {0}")]
    Store(String),
}

impl RemovalError {
    fn from_kube(what: String, error: super::kube::KubeError) -> RemovalError {
        match &error {
            super::kube::KubeError::DrainTimeout { .. } => {
                RemovalError::Timeout(format!("{what}: {error}"))
            }
            e if e.unreachable() => RemovalError::Unreachable {
                what,
                reason: error.to_string(),
            },
            _ => RemovalError::Failed(format!("{what}: {error}")),
        }
    }
}

/// The loop's state, shared with its join tasks.
pub struct Joiner {
    /// `[cluster]`: the only settings the loop reads.
    settings: ClusterConfig,
    store: Store,
    pki: Arc<ClusterPki>,
    ssh: Arc<dyn ShellConnector>,
    /// The connection to the API server, with the daemon's certificate and the probes of
    /// each control plane.
    conn: Arc<ApiConnection>,
    templates: Templates,
    /// Nodes whose join task runs, by registry id, with their role.
    in_flight: Mutex<HashMap<NodeId, Role>>,
    /// When each node's current join started (it entered `joining`): its deadline is that
    /// plus `join_timeout_secs`. Filled from the node's history for a node found `joined`
    /// at start.
    join_started: Mutex<HashMap<NodeId, time::OffsetDateTime>>,
    /// Labels last applied to each Node.
    applied_labels: Mutex<HashMap<String, BTreeMap<String, String>>>,
    /// Nodes whose last label sync failed: when to try again.
    label_retry: Mutex<HashMap<String, Backoff>>,
    /// The last check of the cluster's certificates (`certs.rs`), and the lock that runs one
    /// check at a time.
    certs: Mutex<super::certs::CertReport>,
    certs_checking: Arc<tokio::sync::Mutex<()>>,
    /// The etcd snapshot directory (`snapshot.rs`, `join/restore.rs`), what its snapshots
    /// did, the last restore, and whether one runs (no join starts meanwhile).
    snapshots: super::snapshot::Snapshots,
    snapshot_stats: Mutex<SnapshotStats>,
    restore: Mutex<RestoreStatus>,
    restoring: AtomicBool,
    /// Whether an upgrade runs (`join/upgrade.rs`): no join starts meanwhile; and where nodes
    /// fetch the Kubernetes sysext of a release (set by [`prepare`]; an upgrade is refused
    /// without it).
    upgrading: AtomicBool,
    node_mirror: std::sync::OnceLock<upgrade::NodeMirror>,
    /// The API server's version (`/version`), checked every minute, and why nodes may not
    /// join at `[cluster] kubernetes_version` (the skew policy), when they may not.
    server_version: Mutex<Option<String>>,
    join_blocked: Mutex<Option<String>>,
    /// Kubelet-serving CSRs this daemon decided (`csr.rs`).
    csrs_decided: super::csr::Decided,
    /// `[updates]` (set by [`prepare`]; without it no reboot is coordinated), and the
    /// coordinated reboots' rollout (`join/reboots.rs`).
    updates: std::sync::OnceLock<crate::updates::settings::UpdatesConfig>,
    reboots: Mutex<RebootStatus>,
    cancel: CancellationToken,
    tasks: TaskTracker,
}

impl std::fmt::Debug for Joiner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Joiner").finish_non_exhaustive()
    }
}

/// The cluster as `lacave cluster status` shows it.
#[derive(Clone, Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ClusterStatus {
    pub name: String,
    pub endpoint: String,
    pub kubernetes_version: String,
    /// The release new nodes join at: the one the cluster runs (recorded at `kubeadm init`
    /// and by each finished upgrade), `kubernetes_version` for a cluster made before that.
    pub joins_at: String,
    /// The last upgrade run (`lacave cluster upgrade`), if any.
    pub upgrade: Option<UpgradeStatus>,
    /// The control plane whose `kubeadm init` made the cluster.
    pub initialized_by: Option<String>,
    /// The API server the daemon talks to now.
    pub api_server: Option<String>,
    /// The version that API server runs (checked every minute).
    pub server_version: Option<String>,
    /// Why no node joins now (`kubernetes_version` against the running cluster).
    pub join_blocked: Option<String>,
    pub nodes: Vec<NodeStatus>,
}

/// A node as the registry and the API server see it.
#[derive(Clone, Debug, serde::Serialize, utoipa::ToSchema)]
pub struct NodeStatus {
    pub hostname: String,
    pub role: String,
    /// The registry's state.
    pub state: String,
    pub labels: BTreeMap<String, String>,
    /// The API server's view (Ready, kubelet version, roles, labels).
    pub api: Option<super::kube::NodeInfo>,
}

/// Where the daemon keeps its cluster files: `<state_dir>/cluster`.
pub fn cluster_dir(config: &Config) -> PathBuf {
    config.state_dir.join("cluster")
}

/// Loads what the join needs (the cluster PKI, made on first use; the daemon's SSH key and
/// own credential; the kubeadm templates) and renders the templates for a sample node of
/// each role, so that a broken template stops start-up, not a join.
pub fn prepare(
    config: Arc<Config>,
    store: Store,
    cancel: CancellationToken,
) -> Result<Arc<Joiner>, String> {
    let dir = cluster_dir(&config);
    crate::secrets::create_private_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let pki = ClusterPki::load_or_create(&dir.join("pki")).map_err(|e| e.to_string())?;
    let ssh = SshClient::load(
        &config.state_dir.join("ssh/id_ed25519"),
        config.cluster.ssh_port,
    )
    .map_err(|e| e.to_string())?;
    let templates =
        Templates::load(config.flatcar.templates_dir.as_deref()).map_err(|e| e.join("\n"))?;
    check_templates(&config, &templates, &pki.ca_cert_hash())?;
    let joiner = Joiner::new(
        config.cluster.clone(),
        dir,
        store,
        pki,
        templates,
        Arc::new(ssh),
        Arc::new(KubeConnector),
        cancel,
    )?;
    let _ = joiner.updates.set(config.updates.clone());
    joiner.set_node_mirror(upgrade::NodeMirror {
        dir: config.flatcar.mirror_dir.clone(),
        board: config.flatcar.board.clone(),
        base_url: crate::boot::node_mirror_base(&config),
    });
    Ok(joiner)
}

impl Joiner {
    /// The loop with its outside worlds given: [`prepare`] gives it the real SSH client and
    /// Kubernetes connector; unit tests give it fakes.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        settings: ClusterConfig,
        dir: PathBuf,
        store: Store,
        pki: ClusterPki,
        templates: Templates,
        ssh: Arc<dyn ShellConnector>,
        apis: Arc<dyn ApiConnector>,
        cancel: CancellationToken,
    ) -> Result<Arc<Joiner>, String> {
        // The daemon's own user, bound to cluster-admin by a ClusterRoleBinding (not
        // system:masters), issued at every start and renewed while the daemon runs; a copy
        // for operators, 0600, beside the PKI.
        let pki = Arc::new(pki);
        let snapshots =
            super::snapshot::Snapshots::new(
                settings.etcd_snapshot.dir.clone().unwrap_or_else(|| {
                    dir.parent().unwrap_or(dir.as_path()).join("etcd-snapshots")
                }),
                settings.etcd_snapshot.keep,
            );
        let conn = Arc::new(ApiConnection::new(
            settings.clone(),
            dir,
            pki.clone(),
            apis,
            cancel.clone(),
        )?);
        Ok(Arc::new(Joiner {
            settings,
            store,
            pki,
            ssh,
            conn,
            templates,
            in_flight: Mutex::default(),
            join_started: Mutex::default(),
            applied_labels: Mutex::default(),
            label_retry: Mutex::default(),
            certs: Mutex::default(),
            certs_checking: Arc::default(),
            snapshots,
            snapshot_stats: Mutex::default(),
            restore: Mutex::default(),
            restoring: AtomicBool::new(false),
            upgrading: AtomicBool::new(false),
            node_mirror: std::sync::OnceLock::new(),
            server_version: Mutex::default(),
            join_blocked: Mutex::default(),
            csrs_decided: super::csr::Decided::default(),
            updates: std::sync::OnceLock::new(),
            reboots: Mutex::default(),
            cancel,
            tasks: TaskTracker::new(),
        }))
    }
}

/// Renders both kubeadm templates for a sample node of each role (start-up and
/// `check-config`).
pub fn check_templates(
    config: &Config,
    templates: &Templates,
    ca_hash: &str,
) -> Result<(), String> {
    let token = BootstrapToken::generate();
    let mut errors = Vec::new();
    for role in Role::ALL {
        let node = crate::boot::sample_node(&format!("sample-{}", role.as_str()), role);
        let cx = kubeadm::context(&config.cluster, &node, &token, ca_hash);
        let host = node.hostname.as_ref().map_or("", |h| h.as_str());
        for file in [KUBEADM_INIT, KUBEADM_JOIN] {
            if let Err(e) = templates.render_kubeadm(file, host, role.as_str(), &cx) {
                let e = format!("{e} (rendering for a {role} node)");
                if !errors.contains(&e) {
                    errors.push(e);
                }
            }
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("\n"))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn hostname(node: &Node) -> String {
    node.hostname
        .as_ref()
        .map(ToString::to_string)
        .unwrap_or_default()
}

/// A cluster node as the loop sees it: the registry's record and its id, which every
/// write of the loop names it by (a hostname or a MAC can be edited; the id cannot).
#[derive(Clone, Debug)]
pub struct ClusterNode {
    pub id: NodeId,
    pub node: Node,
}

impl std::ops::Deref for ClusterNode {
    type Target = Node;
    fn deref(&self) -> &Node {
        &self.node
    }
}

fn keys(node: &ClusterNode) -> Vec<NodeKey> {
    vec![NodeKey::Id(node.id)]
}

/// Cordons and drains a Node; a drain that fails makes it schedulable again (the removal
/// stops, and the node goes back to work rather than stay cordoned with nobody to finish
/// the job).
async fn drain_out(
    api: &dyn super::seams::ClusterApi,
    name: &str,
) -> Result<Vec<String>, RemovalError> {
    api.cordon(name)
        .await
        .map_err(|e| RemovalError::from_kube(format!("cordon {name}"), e))?;
    match api.drain(name, Duration::from_secs(120)).await {
        Ok(evicted) => Ok(vec![
            "cordoned".to_string(),
            format!("drained ({evicted} pod(s) evicted)"),
        ]),
        Err(error) => {
            if let Err(e) = api.uncordon(name).await {
                tracing::warn!(node = %name, error = %e, "cannot uncordon after a failed drain");
            }
            Err(RemovalError::from_kube(format!("drain {name}"), error))
        }
    }
}

/// The control planes a connection to the API server may be made to, best first: Ready
/// ones, then joined ones, then notready ones (which may still answer).
fn api_candidates(nodes: &[ClusterNode]) -> Vec<IpAddr> {
    let mut candidates: Vec<&ClusterNode> = nodes
        .iter()
        .filter(|n| {
            n.role == Some(Role::ControlPlane)
                && matches!(
                    n.state,
                    NodeState::Joined | NodeState::Ready | NodeState::NotReady
                )
        })
        .collect();
    candidates.sort_by_key(|n| match n.state {
        NodeState::Ready => 0,
        NodeState::Joined => 1,
        _ => 2,
    });
    candidates
        .into_iter()
        .filter_map(|n| Some(IpAddr::V4(n.ip?.addr())))
        .collect()
}

/// The control planes whose API server is probed: those in the cluster's endpoint, or
/// out of it for not answering.
fn serving_control_planes(nodes: &[ClusterNode]) -> Vec<(NodeId, IpAddr)> {
    nodes
        .iter()
        .filter(|n| {
            n.role == Some(Role::ControlPlane)
                && matches!(n.state, NodeState::Ready | NodeState::NotReady)
        })
        .filter_map(|n| Some((n.id, IpAddr::V4(n.ip?.addr()))))
        .collect()
}

/// Exponential backoff for a task that keeps failing: 1 s, 2 s, 4 s … up to 5 minutes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backoff {
    failures: u32,
    next: std::time::Instant,
}

impl Backoff {
    /// After `previous` (if any) and one more failure at `now`.
    pub fn after_failure(previous: Option<&Backoff>, now: std::time::Instant) -> Backoff {
        let failures = previous.map_or(0, |b| b.failures) + 1;
        let wait = RETRY_FIRST
            .saturating_mul(1 << (failures - 1).min(16))
            .min(RETRY_MAX);
        Backoff {
            failures,
            next: now + wait,
        }
    }

    pub fn due(&self, now: std::time::Instant) -> bool {
        now >= self.next
    }
}

/// Whether a node in the cluster moves between `ready` and `notready`, and why: `node_ready`
/// is its Node's Ready condition as the API server has it (`None`: not known, no change), and
/// `api_server` whether its own API server answers `/readyz` (control planes; `None`: not
/// probed).
pub fn health_change(
    state: NodeState,
    node_ready: Option<bool>,
    api_server: Option<bool>,
) -> Option<(NodeState, &'static str)> {
    match state {
        NodeState::Ready if api_server == Some(false) => Some((
            NodeState::NotReady,
            "its API server does not answer /readyz: taken out of the control-plane endpoint",
        )),
        NodeState::Ready if node_ready == Some(false) => {
            Some((NodeState::NotReady, "its Node is not Ready"))
        }
        NodeState::NotReady if api_server != Some(false) && node_ready == Some(true) => Some((
            NodeState::Ready,
            "Ready again (its Node is Ready, and a control plane's API server answers)",
        )),
        _ => None,
    }
}

/// Which joins one look at the registry starts: each node's MAC and whether it runs `kubeadm
/// init`. `running` holds the joins under way (by MAC, with their role); `api_ready` says
/// that a control plane is Ready and the daemon is connected to the API server.
///
/// - No cluster yet: the first waiting control plane (registration order) initializes it,
///   and only when nothing else runs.
/// - A cluster: nothing until `api_ready`; then every waiting worker, and one control plane
///   at a time (etcd admits one learner at a time, and kubeadm adds a member as one).
pub fn joins_to_start(
    nodes: &[ClusterNode],
    initialized: bool,
    running: &HashMap<NodeId, Role>,
    api_ready: bool,
) -> Vec<(NodeId, bool)> {
    let mut waiting = nodes
        .iter()
        .filter(|n| matches!(n.state, NodeState::Booted | NodeState::Joining))
        .filter(|n| !running.contains_key(&n.id));
    if !initialized {
        if !running.is_empty() {
            return Vec::new();
        }
        return waiting
            .find(|n| n.role == Some(Role::ControlPlane))
            .map(|n| vec![(n.id, true)])
            .unwrap_or_default();
    }
    if !api_ready {
        return Vec::new();
    }
    let mut control_plane_busy = running.values().any(|r| *r == Role::ControlPlane);
    let mut out = Vec::new();
    for node in waiting {
        if node.role == Some(Role::ControlPlane) {
            if control_plane_busy {
                continue;
            }
            control_plane_busy = true;
        }
        out.push((node.id, false));
    }
    out
}

/// Whether the loop takes care of this node at all: registered with a name, an address and
/// a role.
fn is_cluster_node(node: &Node) -> bool {
    node.hostname.is_some() && node.ip.is_some() && node.role.is_some()
}

impl Joiner {
    /// The API connection the loop keeps, followed (the add-on engine's).
    pub fn api(&self) -> ApiWatch {
        self.conn.subscribe()
    }

    /// Checks the cluster's certificates now (`certs.rs`) and keeps the report.
    pub async fn check_certs(&self) -> super::certs::CertReport {
        // One check (or renewal) at a time: a second caller waits, then checks again.
        let _checking = self.certs_checking.lock().await;
        self.check_certs_locked().await
    }

    async fn check_certs_locked(&self) -> super::certs::CertReport {
        let nodes = self
            .cluster_nodes()
            .into_iter()
            .filter(|n| super::certs::checked(n))
            .map(|n| (hostname(&n), n.node))
            .collect();
        let owned = vec![
            ("cluster-ca", self.pki.kubernetes.cert_pem.clone()),
            ("front-proxy-ca", self.pki.front_proxy.cert_pem.clone()),
            ("etcd-ca", self.pki.etcd.cert_pem.clone()),
            ("lacave-client", self.conn.credential_pem()),
        ];
        let report = super::certs::check(self.ssh.clone(), nodes, owned).await;
        for e in &report.errors {
            tracing::warn!(node = %e.node, error = %e.error, "cannot read a certificate's expiry");
        }
        if let Some(soonest) = report.certificates.first() {
            tracing::info!(
                certificates = report.certificates.len(),
                soonest = %format!("{} on {}", soonest.cert, soonest.node),
                days_left = soonest.days_left,
                "cluster certificates checked"
            );
        }
        *lock(&self.certs) = report.clone();
        report
    }

    /// The last certificate report (empty before the first check).
    pub fn cert_report(&self) -> super::certs::CertReport {
        lock(&self.certs).clone()
    }

    /// Renews kubeadm's certificates on every control plane whose certificates are past
    /// `[cluster] cert_renew_fraction` of their life (`force`: on every control plane), one
    /// control plane at a time, each: `kubeadm certs renew all`, then its static pods
    /// restarted one at a time, each waited for (`certs::restart_script`). Only in a settled
    /// cluster (every control plane Ready, no join running); stops at the first failure,
    /// named. Every step is in the node's history (phase `certs`). Returns the control planes
    /// renewed.
    pub async fn renew_certs(&self, force: bool) -> Result<Vec<String>, String> {
        use super::certs;
        let _checking = self.certs_checking.lock().await;
        if !lock(&self.in_flight).is_empty() {
            return Err("a join is running: certificate renewal waits for it".into());
        }
        if self.is_upgrading() {
            // kubeadm upgrade renews the control planes' certificates itself.
            return Err("an upgrade is running: certificate renewal waits for it".into());
        }
        let nodes = self.cluster_nodes();
        let cps: Vec<&ClusterNode> = nodes
            .iter()
            .filter(|n| n.role == Some(Role::ControlPlane))
            .collect();
        if let Some(down) = cps.iter().find(|n| n.state != NodeState::Ready) {
            return Err(format!(
                "control plane {} is {}: certificate renewal waits until every control plane is Ready",
                hostname(down),
                down.state
            ));
        }
        let mut renewed = Vec::new();
        for cp in cps {
            let name = hostname(cp);
            let Some(ip) = cp.ip.map(|ip| IpAddr::V4(ip.addr())) else {
                continue;
            };
            let session = self
                .ssh
                .connect(ip, cp.ssh_host_key.as_deref(), Duration::from_secs(10))
                .await
                .map_err(|e| format!("{name}: SSH: {e}"))?;
            let result = async {
                let out = session
                    .run(certs::READ_APISERVER_CERT, None, Duration::from_secs(30))
                    .await
                    .map_err(|e| e.to_string())?;
                let (not_before, not_after) = certs::validity(&out.stdout)?;
                let now = time::OffsetDateTime::now_utc();
                let due = certs::renewal_due(
                    not_before,
                    not_after,
                    self.settings.cert_renew_fraction,
                    now,
                );
                if !(force || due) {
                    return Ok(false);
                }
                let why = if due {
                    format!(
                        "renewing the control plane's certificates: {:.0} % of their life has passed (renewed at {:.0} %)",
                        (now - not_before) / (not_after - not_before) * 100.0,
                        self.settings.cert_renew_fraction * 100.0
                    )
                } else {
                    "renewing the control plane's certificates on request".to_string()
                };
                tracing::info!(node = %name, "{why}");
                self.note(cp, &why);
                self.step_as(
                    cp,
                    session.as_ref(),
                    "certs",
                    "kubeadm certs renew all",
                    "kubeadm certs renew all",
                    None,
                    Duration::from_secs(120),
                )
                .await
                .map_err(|e| e.to_string())?;
                for (pod, health, expect) in certs::STATIC_PODS {
                    let (shown, script) = if pod == "etcd" {
                        (
                            "etcd: serving the renewed certificate (restarted only if not)".to_string(),
                            certs::etcd_renewal_script(),
                        )
                    } else {
                        (
                            format!("restart {pod} (manifest out until it stops, back, {health})"),
                            certs::restart_script(pod, health, expect),
                        )
                    };
                    self.step_as(
                        cp,
                        session.as_ref(),
                        "certs",
                        &shown,
                        &script,
                        None,
                        Duration::from_secs(300),
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                }
                Ok::<bool, String>(true)
            }
            .await;
            session.close().await;
            match result {
                Ok(true) => renewed.push(name),
                Ok(false) => {}
                Err(e) => {
                    return Err(format!(
                        "{name}: {e} (renewal stopped here; the control planes after it were not touched)"
                    ));
                }
            }
        }
        if !renewed.is_empty() {
            self.check_certs_locked().await;
        }
        Ok(renewed)
    }

    /// Decides every pending kubelet-serving CSR against the registry (`csr.rs`).
    async fn decide_csrs(&self) {
        use super::csr;
        use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
        let Some(client) = self.conn.current().and_then(|a| a.client()) else {
            return;
        };
        let api: kube::Api<CertificateSigningRequest> = kube::Api::all(client);
        let list = match api.list(&Default::default()).await {
            Ok(l) => l,
            Err(error) => {
                tracing::debug!(%error, "cannot list CSRs (tried again)");
                return;
            }
        };
        let nodes: Vec<csr::KnownNode> = self
            .cluster_nodes()
            .iter()
            .map(|n| csr::KnownNode {
                name: hostname(n),
                ip: n.ip.map(|ip| ip.addr()),
            })
            .collect();
        for item in list.items {
            let Some(name) = item.metadata.name.clone() else {
                continue;
            };
            let verdict = match csr::facts(&item) {
                None => continue,
                Some(Ok(facts)) => csr::judge(&facts, &nodes, &self.settings.zone),
                Some(Err(reason)) => csr::Verdict::Deny { reason, node: None },
            };
            if !self.csrs_decided.first(&name) {
                continue;
            }
            let patch = kube::api::Patch::Merge(csr::condition_patch(&verdict));
            if let Err(error) = api.patch_approval(&name, &Default::default(), &patch).await {
                tracing::warn!(csr = %name, %error, "cannot record the decision on a CSR");
                continue;
            }
            match &verdict {
                csr::Verdict::Approve => {
                    tracing::info!(csr = %name, requester = ?item.spec.username, "kubelet serving certificate approved");
                }
                csr::Verdict::Deny { reason, node } => {
                    tracing::warn!(csr = %name, requester = ?item.spec.username, %reason, "kubelet serving certificate denied");
                    if let Some(node) = node
                        && let Some(cn) = self
                            .cluster_nodes()
                            .into_iter()
                            .find(|n| hostname(n) == *node)
                    {
                        let kind = EventKind::Step {
                            phase: "certs".into(),
                            command: String::new(),
                            status: Some(1),
                        };
                        let _ = self.store.record_event(
                            &keys(&cn),
                            kind,
                            format!("a kubelet serving certificate request ({name}) was denied: {reason}"),
                        );
                    }
                }
            }
        }
    }

    /// Reads the API server's version and checks `[cluster] kubernetes_version` against it:
    /// a configuration edit never upgrades a running cluster, and nodes do not join at a
    /// version the skew policy forbids (said once in the log, and in the cluster status).
    async fn check_server_version(&self) {
        let Some(client) = self.conn.current().and_then(|api| api.client()) else {
            return;
        };
        let version =
            match tokio::time::timeout(Duration::from_secs(10), client.apiserver_version()).await {
                Ok(Ok(info)) => info.git_version,
                Ok(Err(error)) => {
                    tracing::debug!(%error, "cannot read the API server's version");
                    return;
                }
                Err(_) => return,
            };
        let joins_at = self.joins_at();
        let blocked = super::settings::join_skew(&joins_at, &version);
        let before = lock(&self.join_blocked).clone();
        if blocked != before {
            match &blocked {
                Some(why) => {
                    tracing::warn!(running = %version, joins_at = %joins_at, "no node joins: {why}")
                }
                None if before.is_some() => {
                    tracing::info!(running = %version, "nodes join again: [cluster] kubernetes_version fits the running cluster")
                }
                None => {}
            }
        }
        if version != joins_at
            && blocked.is_none()
            && !self.is_upgrading()
            && lock(&self.server_version).as_deref() != Some(version.as_str())
        {
            tracing::warn!(
                running = %version,
                joins_at = %joins_at,
                "the cluster's API server runs another version than the one new nodes join at (within the skew policy); `lacave cluster upgrade --to` upgrades a running cluster"
            );
        }
        *lock(&self.server_version) = Some(version);
        *lock(&self.join_blocked) = blocked;
    }

    /// Runs the loop until cancelled.
    pub fn spawn(self: &Arc<Self>, tasks: &TaskTracker) {
        if self.recover_upgrade() {
            self.spawn_resume(tasks);
        }
        self.spawn_snapshots(tasks);
        self.recover_reboots();
        let reboots = self.clone();
        tasks.spawn(async move {
            loop {
                reboots.reboot_tick().await;
                tokio::select! {
                    _ = reboots.cancel.cancelled() => break,
                    _ = tokio::time::sleep(reboots::REBOOT_TICK) => {}
                }
            }
        });
        let versions = self.clone();
        tasks.spawn(async move {
            loop {
                versions.check_server_version().await;
                tokio::select! {
                    _ = versions.cancel.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_secs(60)) => {}
                }
            }
        });
        let csrs = self.clone();
        tasks.spawn(async move {
            loop {
                csrs.decide_csrs().await;
                tokio::select! {
                    _ = csrs.cancel.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_secs(3)) => {}
                }
            }
        });
        let certs = self.clone();
        tasks.spawn(async move {
            // Once the cluster exists, then every hour.
            loop {
                let initialized = certs
                    .store
                    .cluster_state()
                    .is_ok_and(|s| s.initialized_by.is_some());
                let wait = if initialized {
                    certs.check_certs().await;
                    match certs.renew_certs(false).await {
                        Ok(renewed) if !renewed.is_empty() => {
                            tracing::info!(?renewed, "control-plane certificates renewed");
                        }
                        Ok(_) => {}
                        Err(error) => {
                            tracing::warn!(%error, "certificate renewal could not run (tried again in an hour)");
                        }
                    }
                    super::certs::CHECK_EVERY
                } else {
                    Duration::from_secs(30)
                };
                tokio::select! {
                    _ = certs.cancel.cancelled() => break,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        });
        let me = self.clone();
        tasks.spawn(async move {
            tracing::info!(endpoint = %me.settings.endpoint(), "cluster join loop running");
            loop {
                me.tick().await;
                tokio::select! {
                    _ = me.cancel.cancelled() => break,
                    _ = tokio::time::sleep(TICK) => {}
                }
            }
            me.tasks.close();
            me.tasks.wait().await;
        });
    }

    /// One look at the registry: start the joins that can start, move joined nodes whose Node
    /// is Ready to `ready`, keep labels in step.
    pub(super) async fn tick(self: &Arc<Self>) {
        // Only the cluster's nodes are copied (the registry may hold thousands of discovered
        // machines, and this runs four times a second).
        let nodes = self.cluster_nodes();
        let state = match self.store.cluster_state() {
            Ok(s) => s,
            Err(error) => {
                tracing::warn!(%error, "join loop: cannot read the cluster state");
                return;
            }
        };
        self.conn.renew_if_due();
        if state.initialized_by.is_some() {
            self.conn.ensure(&api_candidates(&nodes)).await;
        }
        self.mark_ready(&nodes).await;
        self.conn.probe(serving_control_planes(&nodes));
        self.follow_health(&nodes).await;
        self.fail_overdue(&nodes).await;
        self.sync_labels(&nodes).await;

        let initialized = state.initialized_by.is_some();
        let api_ready = initialized
            && nodes
                .iter()
                .any(|n| n.role == Some(Role::ControlPlane) && n.state == NodeState::Ready)
            && self.conn.current().is_some();
        if self.is_restoring() || self.is_upgrading() {
            // The cluster's etcd is being replaced (its control planes rejoin after), or its
            // nodes are being upgraded one at a time (a node joins once they all run one
            // release).
            return;
        }
        let running = lock(&self.in_flight).clone();
        let blocked = lock(&self.join_blocked).is_some();
        for (id, init) in joins_to_start(&nodes, initialized, &running, api_ready) {
            if blocked && !init {
                continue;
            }
            if let Some(node) = nodes.iter().find(|n| n.id == id) {
                self.start(node, init);
            }
        }
    }

    /// The registry's cluster nodes with their ids, in registration order (only those: the
    /// registry may hold thousands of discovered machines, and this runs four times a
    /// second).
    fn cluster_nodes(&self) -> Vec<ClusterNode> {
        self.store.with_registered_node_ids(|all| {
            all.filter(|(_, n)| is_cluster_node(n))
                .map(|(id, n)| ClusterNode {
                    id,
                    node: n.clone(),
                })
                .collect()
        })
    }

    /// The registry's cluster nodes with what the API server says of each (`None` when the
    /// daemon has no API connection or the API server has no such Node).
    pub async fn status(&self) -> Result<ClusterStatus, String> {
        let nodes = self.store.list_nodes().map_err(|e| e.to_string())?;
        let state = self.store.cluster_state().map_err(|e| e.to_string())?;
        let api = self.conn.current();
        let nodes = nodes
            .into_iter()
            .filter(is_cluster_node)
            .map(|n| {
                let name = hostname(&n);
                NodeStatus {
                    api: api.as_ref().and_then(|a| a.node_info(&name)),
                    hostname: name,
                    role: n.role.map(|r| r.to_string()).unwrap_or_default(),
                    state: n.state.to_string(),
                    labels: n.labels.into_iter().collect(),
                }
            })
            .collect();
        Ok(ClusterStatus {
            name: self.settings.name.clone(),
            endpoint: self.settings.endpoint(),
            kubernetes_version: self.settings.kubernetes_version.clone(),
            joins_at: self.joins_at(),
            upgrade: self.upgrade_status(),
            initialized_by: state.initialized_by,
            api_server: api.map(|a| a.server().to_string()),
            server_version: lock(&self.server_version).clone(),
            join_blocked: lock(&self.join_blocked).clone(),
            nodes,
        })
    }

    /// A kubeconfig whose user signs in through an OIDC `issuer` with kubelogin.
    pub fn oidc_kubeconfig(
        &self,
        user: Option<&str>,
        issuer: &str,
        client_id: &str,
        client_secret: &str,
        issuer_ca_pem: &str,
    ) -> String {
        pki::oidc_kubeconfig(
            &self.settings.name,
            &format!("https://{}", self.settings.endpoint()),
            &self.pki.kubernetes.cert_pem,
            user,
            issuer,
            client_id,
            client_secret,
            issuer_ca_pem,
        )
    }

    /// A kubeconfig for a person: a client certificate from the cluster's CA for `user` in
    /// `groups`, valid for `ttl`, its server the control-plane endpoint.
    pub fn kubeconfig(
        &self,
        user: &str,
        groups: &[String],
        ttl: time::Duration,
    ) -> Result<String, String> {
        let issued = self
            .pki
            .issue_client_recorded(user, groups, ttl)
            .map_err(|e| e.to_string())?;
        // Recorded before it is handed out: there is no certificate nobody knows of.
        self.store
            .record_kubeconfig(&crate::model::KubeconfigRecord {
                serial: issued.serial.clone(),
                user: user.to_string(),
                groups: groups.to_vec(),
                issued_at: issued.not_before + time::Duration::minutes(5),
                expires_at: issued.not_after,
            })
            .map_err(|e| format!("cannot record the kubeconfig: {e}"))?;
        Ok(pki::kubeconfig(
            &self.settings.name,
            &format!("https://{}", self.settings.endpoint()),
            &self.pki.kubernetes.cert_pem,
            user,
            &issued.cert_pem,
            &issued.key_pem,
        ))
    }

    /// Takes a node out of the cluster before it leaves the registry: cordon, drain,
    /// `kubeadm reset -f` on it over SSH if it answers (which also removes a control plane's
    /// etcd member; when it cannot, or the node does not answer, the member is removed
    /// through another control plane's etcd API), then delete its Node. Refuses the last control plane unless `force`. Each step
    /// goes to the journal; the caller then deletes the node from the registry.
    pub async fn remove(&self, node: &Node, force: bool) -> Result<Vec<String>, RemovalError> {
        let id = self
            .store
            .node_id(&[NodeKey::Mac(node.mac)])
            .map_err(|e| RemovalError::Store(e.to_string()))?;
        let node = &ClusterNode {
            id,
            node: node.clone(),
        };
        let name = hostname(node);
        if self.is_joining(id) {
            return Err(RemovalError::Conflict(format!(
                "{name} is being joined right now; remove it once that ends"
            )));
        }
        if self.is_restoring() {
            return Err(RemovalError::Conflict(format!(
                "the cluster's etcd is being restored; remove {name} once that ends"
            )));
        }
        if !node.in_cluster() {
            return Ok(Vec::new());
        }
        let last_control_plane = self.is_last_control_plane(node);
        if last_control_plane && !force {
            return Err(RemovalError::Conflict(format!(
                "{name} is the last control plane: removing it ends the cluster (use --force to do it anyway)"
            )));
        }
        let mut done = Vec::new();
        let api = self.conn.current();
        let has_node = api.as_ref().is_some_and(|a| a.node_info(&name).is_some());
        let initialized = self
            .store
            .cluster_state()
            .map_err(|e| RemovalError::Store(e.to_string()))?
            .initialized_by
            .is_some();
        if api.is_none() && initialized {
            // Without the API server its Node would be left behind, orphaned: refuse, or
            // with --force go on and say so, never silently.
            if !force {
                return Err(RemovalError::Unreachable {
                    what: format!("taking {name} out of the cluster"),
                    reason: "the daemon has no connection to any control plane; --force removes it anyway and leaves its Node".into(),
                });
            }
            done.push(format!(
                "its Node, if any, is left in the cluster (no API connection): delete it there with kubectl delete node {name}"
            ));
        }
        if let (Some(api), true) = (&api, has_node) {
            done.extend(drain_out(api.as_ref(), &name).await?);
        }
        // The last control plane serves the API itself: its Node is deleted while the API
        // server still answers, before the reset stops it (there is no member to remove).
        if last_control_plane && let (Some(api), true) = (&api, has_node) {
            api.delete_node(&name)
                .await
                .map_err(|e| RemovalError::from_kube(format!("delete Node {name}"), e))?;
            done.push("deleted its Node".to_string());
        }
        // kubeadm's order otherwise: reset on the node while its Node still exists (reset
        // finds a control plane's etcd member through the cluster and removes it, which
        // keeps the remaining members' quorum), then delete the Node.
        // Whether the node's etcd member is known to be gone (kubeadm reset removed it).
        let (reset, member_removed) = self.reset_node(node).await;
        // A control plane whose reset did not remove its etcd member (it does not answer,
        // or kubeadm could not): remove it through a live member's API, so that the
        // remaining members keep their quorum. The last control plane has nobody to ask.
        if node.role == Some(Role::ControlPlane) && !member_removed && !last_control_plane {
            match self.remove_etcd_member(node).await {
                Ok(what) => done.push(what),
                Err(reason) => {
                    if let Some(api) = &api
                        && has_node
                        && let Err(e) = api.uncordon(&name).await
                    {
                        tracing::warn!(node = %name, error = %e, "cannot uncordon after a failed removal");
                    }
                    return Err(RemovalError::Failed(format!(
                        "{name}: {reset}; and its etcd member could not be removed through etcd's API ({reason}); the Node is kept"
                    )));
                }
            }
        }
        if let (Some(api), true, false) = (&api, has_node, last_control_plane) {
            api.delete_node(&name)
                .await
                .map_err(|e| RemovalError::from_kube(format!("delete Node {name}"), e))?;
            done.push("deleted its Node".to_string());
            if let Ok(Some(id)) = self.store.join_token(&name) {
                let _ = api.delete_bootstrap_token(&id).await;
                let _ = self.store.forget_join_token(&name);
            }
        }
        done.push(reset);
        lock(&self.applied_labels).remove(&name);
        lock(&self.label_retry).remove(&name);
        if last_control_plane {
            done.push(self.end_cluster(node).await.map_err(RemovalError::Store)?);
        }
        tracing::info!(node = %name, steps = %done.join("; "), "node taken out of the cluster");
        Ok(done)
    }

    /// `kubeadm reset -f` on the node if it answers (what an earlier step left running
    /// stopped first): what happened, and whether its etcd member is known to be removed.
    async fn reset_node(&self, node: &ClusterNode) -> (String, bool) {
        let name = hostname(node);
        let ip = node.ip.map(|ip| IpAddr::V4(ip.addr()));
        let mut member_removed = false;
        let reset = match ip {
            Some(ip) => match self
                .ssh
                .connect(ip, node.ssh_host_key.as_deref(), Duration::from_secs(10))
                .await
            {
                Ok(session) => {
                    if let Err(error) = session.stop_leftover_steps().await {
                        tracing::warn!(node = %name, %error, "cannot stop what an earlier step left running");
                    }
                    let out = session
                        .run("kubeadm reset -f", None, Duration::from_secs(180))
                        .await;
                    session.close().await;
                    match out {
                        // kubeadm reset carries on (exit 0) when it could not remove the
                        // etcd member; that must not pass unseen: the member is removed
                        // through etcd's API below, or the removal stops.
                        Ok(o)
                            if o.success()
                                && o.tail(200).contains("Failed to remove etcd member") =>
                        {
                            format!(
                                "ran kubeadm reset -f, which could not remove its etcd member: {}",
                                o.tail(2)
                            )
                        }
                        Ok(o) if o.success() => {
                            member_removed = true;
                            "ran kubeadm reset -f".to_string()
                        }
                        Ok(o) => format!("kubeadm reset -f failed: {}", o.tail(3)),
                        Err(e) => format!("kubeadm reset -f: {e}"),
                    }
                }
                Err(e) => format!("not reset (unreachable: {e})"),
            },
            None => "not reset (no address)".to_string(),
        };
        (reset, member_removed)
    }

    /// Whether `node` is the cluster's last control plane (no other joined or Ready one).
    fn is_last_control_plane(&self, node: &ClusterNode) -> bool {
        node.role == Some(Role::ControlPlane)
            && !self.cluster_nodes().into_iter().any(|n| {
                n.id != node.id
                    && n.role == Some(Role::ControlPlane)
                    && matches!(n.state, NodeState::Joined | NodeState::Ready)
            })
    }

    /// Removes `node`'s etcd member through the etcd API of another control plane (the
    /// first that answers), with a client certificate from the etcd CA the daemon owns.
    async fn remove_etcd_member(&self, node: &ClusterNode) -> Result<String, String> {
        let ip = node
            .ip
            .map(|ip| IpAddr::V4(ip.addr()))
            .ok_or("it has no address to find its member by")?;
        let name = hostname(node);
        let others: Vec<IpAddr> = self.store.with_registered_nodes(|_, all| {
            all.filter(|n| {
                n.mac != node.mac
                    && n.role == Some(Role::ControlPlane)
                    && matches!(
                        n.state,
                        NodeState::Ready | NodeState::NotReady | NodeState::Joined
                    )
            })
            .filter_map(|n| Some(IpAddr::V4(n.ip?.addr())))
            .collect()
        });
        if others.is_empty() {
            return Err("no other control plane to ask".into());
        }
        let client = super::etcd::EtcdClient::new(&self.pki).map_err(|e| e.to_string())?;
        let mut errors = Vec::new();
        for endpoint in others {
            let members = match client.members(endpoint).await {
                Ok(m) => m,
                Err(e) => {
                    errors.push(e.to_string());
                    continue;
                }
            };
            let Some(member) = super::etcd::member_at(&members, ip, &name) else {
                return Ok(format!(
                    "its etcd member was already gone (etcd at {endpoint} lists none at {ip})"
                ));
            };
            return match client.remove_member(endpoint, member.id).await {
                Ok(()) => {
                    tracing::info!(node = %name, member = %format!("{:x}", member.id), %endpoint, "removed the node's etcd member through the etcd API");
                    Ok(format!(
                        "removed its etcd member {:x} through the etcd API at {endpoint}",
                        member.id
                    ))
                }
                Err(e) => Err(e.to_string()),
            };
        }
        Err(errors.join("; "))
    }

    /// The last control plane left: the cluster is gone. Forgets who initialized it, its
    /// join tokens and add-on inventories (their objects went with it), drops the API
    /// connection, and sends every other node of the cluster back to `booted`, so that the
    /// next control plane runs `kubeadm init` for a new cluster and the others join that one.
    async fn end_cluster(&self, leaving: &ClusterNode) -> Result<String, String> {
        self.conn.disconnect();
        self.store
            .reset_cluster_state()
            .map_err(|e| format!("cannot forget the ended cluster: {e}"))?;
        let others: Vec<ClusterNode> = self.cluster_nodes();
        let others: Vec<ClusterNode> = others
            .into_iter()
            .filter(|n| n.id != leaving.id)
            .filter(|n| n.in_cluster())
            .collect();
        for other in &others {
            lock(&self.applied_labels).remove(&hostname(other));
            if let Err(error) = self.store.transition(
                &keys(other),
                NodeState::Booted,
                "the cluster ended (its last control plane was removed): it joins the next one",
                None,
            ) {
                tracing::warn!(node = %hostname(other), %error, "cannot send the node back to booted");
            }
        }
        tracing::warn!(
            removed = %hostname(leaving),
            nodes_to_rejoin = others.len(),
            "the last control plane was removed: the cluster has ended; the next control plane initializes a new one"
        );
        Ok(format!(
            "the cluster ended: the next control plane initializes a new one ({} node(s) will join it)",
            others.len()
        ))
    }

    /// Whether a join of this node runs now.
    pub fn is_joining(&self, id: NodeId) -> bool {
        lock(&self.in_flight).contains_key(&id)
    }

    fn start(self: &Arc<Self>, node: &ClusterNode, init: bool) {
        let name = hostname(node);
        let role = node.role.unwrap_or(Role::Worker);
        {
            let mut running = lock(&self.in_flight);
            // An upgrade decides under this lock too: no join starts once it runs.
            if running.contains_key(&node.id) || self.is_upgrading() {
                return;
            }
            running.insert(node.id, role);
        }
        let me = self.clone();
        let node = node.clone();
        self.tasks.spawn(async move {
            let outcome = tokio::select! {
                outcome = me.join(&node, init) => Some(outcome),
                _ = me.cancel.cancelled() => None,
            };
            match outcome {
                Some(Ok(())) => {}
                Some(Err(error)) => me.fail(&node, &error.to_string()),
                // Shutting down: the node stays `joining`; the next start retries it.
                None => tracing::info!(node = %name, "join interrupted by shutdown; it is retried at the next start"),
            }
            lock(&me.in_flight).remove(&node.id);
        });
    }

    fn fail(&self, node: &ClusterNode, reason: &str) {
        let name = hostname(node);
        tracing::warn!(node = %name, %reason, "join failed");
        let failure = Failure {
            phase: "join".into(),
            reason: reason.to_string(),
        };
        // Only a node still in the join's hands fails: one an operator reinstalled, rejoined
        // or removed meanwhile keeps what the operator made of it.
        if let Err(error) = self.store.transition_from(
            &keys(node),
            &[NodeState::Joining, NodeState::Joined],
            NodeState::Failed,
            &format!("join failed: {reason}"),
            Some(failure),
        ) {
            tracing::warn!(node = %name, %error, "the failed join is not recorded");
        }
    }

    /// The whole join of one node, in phases: claim it (`booted → joining`), prepare the
    /// machine (leftovers stopped, reset, PKI), mint its token, run kubeadm, and for the
    /// first control plane set the cluster up; then `joined`.
    async fn join(&self, node: &ClusterNode, init: bool) -> Result<(), JoinError> {
        if !self.claim(node, init)? {
            return Ok(());
        }
        let name = hostname(node);
        let ip: IpAddr = node
            .ip
            .map(|ip| IpAddr::V4(ip.addr()))
            .ok_or(JoinError::NoAddress)?;
        let session = self
            .ssh
            .connect(ip, node.ssh_host_key.as_deref(), Duration::from_secs(30))
            .await?;
        tracing::info!(node = %name, %ip, init, "joining");
        self.prepare_machine(node, session.as_ref()).await?;
        let token = self.mint_token(node, init).await?;
        let command = self
            .run_kubeadm(node, session.as_ref(), &token, init)
            .await?;
        if init {
            self.set_up_cluster(node, session.as_ref()).await?;
        }
        session.close().await;
        self.store.transition_from(
            &keys(node),
            &[NodeState::Joining],
            NodeState::Joined,
            &format!("{command}: done; waiting for the Node to be Ready"),
            None,
        )?;
        if init {
            self.conn.connect(ip).await;
        }
        Ok(())
    }

    /// Takes the node into the join (`booted → joining`, compare-and-set) or resumes an
    /// interrupted one; `false` when there is nothing to do any more (the loop's snapshot
    /// was older than a join that just ended, or an operator's change).
    fn claim(&self, node: &ClusterNode, init: bool) -> Result<bool, JoinError> {
        let role = node.role.unwrap_or(Role::Worker);
        match self.store.get(&keys(node))?.state {
            NodeState::Booted => {
                lock(&self.join_started).insert(node.id, time::OffsetDateTime::now_utc());
                let how = if init {
                    "initializing the cluster (kubeadm init)".to_string()
                } else {
                    format!("joining the cluster as {role} (kubeadm join)")
                };
                self.store.transition_from(
                    &keys(node),
                    &[NodeState::Booted],
                    NodeState::Joining,
                    &how,
                    None,
                )?;
                Ok(true)
            }
            NodeState::Joining => {
                // A fresh budget: the daemon was down for part of the old one.
                lock(&self.join_started).insert(node.id, time::OffsetDateTime::now_utc());
                self.note(node, "the join was interrupted (daemon restart): starting it again from a reset node");
                Ok(true)
            }
            other => {
                tracing::debug!(node = %hostname(node), state = %other, "join not needed any more");
                Ok(false)
            }
        }
    }

    /// Stops what an earlier try left running, resets the machine, and gives a control
    /// plane the cluster's CAs and service-account key.
    async fn prepare_machine(
        &self,
        node: &ClusterNode,
        session: &dyn NodeShell,
    ) -> Result<(), JoinError> {
        // A kubeadm an earlier try left running (the daemon died mid-step) would race the
        // reset below.
        let stopped = session.stop_leftover_steps().await?;
        if stopped > 0 {
            self.note(
                node,
                &format!("stopped {stopped} command(s) an earlier try left running on the node"),
            );
        }
        self.step(
            node,
            session,
            "kubeadm reset -f",
            None,
            Duration::from_secs(180),
        )
        .await?;
        if node.role == Some(Role::ControlPlane) {
            for (file, private) in pki::FILES {
                session
                    .upload(
                        &format!("/etc/kubernetes/pki/{file}"),
                        if private { 0o600 } else { 0o644 },
                        self.pki.file(file).as_bytes(),
                    )
                    .await?;
            }
            self.note(
                node,
                "copied the cluster's CAs and service-account key to /etc/kubernetes/pki",
            );
        }
        Ok(())
    }

    /// The node's own bootstrap token: recorded before it exists (a crash cannot leave a
    /// live token nobody deletes), then made through the API and awaited in cluster-info.
    /// The first control plane's is used by kubeadm init alone. A Node or token an earlier
    /// join left is deleted first.
    async fn mint_token(
        &self,
        node: &ClusterNode,
        init: bool,
    ) -> Result<BootstrapToken, JoinError> {
        let name = hostname(node);
        // Every join but the first control plane's goes through the API server.
        let api = match init {
            true => None,
            false => Some(self.conn.current().ok_or(JoinError::NoApiConnection)?),
        };
        if let Some(api) = &api {
            // A Node left by an earlier join of this machine (a rejoin, a retry) would make
            // kubeadm refuse the name.
            if api.node_ready(&name).is_some() {
                api.delete_node(&name).await?;
                self.note(
                    node,
                    "deleted the Node an earlier join left, so that kubeadm can register it again",
                );
            }
            if let Ok(Some(old)) = self.store.join_token(&name) {
                let _ = api.delete_bootstrap_token(&old).await;
            }
        }
        let token = BootstrapToken::generate();
        self.store.record_join_token(&name, &token.id)?;
        if let Some(api) = &api {
            api.create_bootstrap_token(&token, TOKEN_TTL, &name).await?;
            // kubeadm's discovery retries only every 5 s when the signature is not there yet.
            if !api.wait_token_signed(&token, Duration::from_secs(30)).await {
                self.note(node, "the bootstrap token was not signed into cluster-info within 30 s; kubeadm join retries on its own");
            }
        }
        Ok(token)
    }

    /// Renders kubeadm's configuration, runs `kubeadm init` or `join` with what is left of
    /// the join's time, and removes the configuration (it holds the token) whatever
    /// happened. Returns the command.
    async fn run_kubeadm(
        &self,
        node: &ClusterNode,
        session: &dyn NodeShell,
        token: &BootstrapToken,
        init: bool,
    ) -> Result<String, JoinError> {
        let name = hostname(node);
        let role = node.role.unwrap_or(Role::Worker);
        let hash = self.pki.ca_cert_hash();
        // Nodes join at the release the cluster runs (recorded at init and by each upgrade),
        // not at whatever the configuration says today.
        let mut settings = self.settings.clone();
        settings.kubernetes_version = self.joins_at();
        let cx = kubeadm::context(&settings, node, token, &hash);
        let file = if init { KUBEADM_INIT } else { KUBEADM_JOIN };
        let rendered = self
            .templates
            .render_kubeadm(file, &name, role.as_str(), &cx)
            .map_err(JoinError::Template)?;
        session
            .upload(kubeadm::CONFIG_PATH, 0o600, rendered.as_bytes())
            .await?;
        let command = if init {
            // kubeadm init ends by printing a join command with a bootstrap token; nobody
            // needs it (the daemon mints a token per join), so it is not printed at all.
            format!(
                "kubeadm init --skip-token-print --config {}",
                kubeadm::CONFIG_PATH
            )
        } else {
            format!("kubeadm join --config {}", kubeadm::CONFIG_PATH)
        };
        // What is left of the join's budget (the reset and the uploads took some of it).
        let timeout = self.join_time_left(node.id).max(Duration::from_secs(1));
        let ran = self.step(node, session, &command, None, timeout).await;
        let _ = session
            .run(
                &format!("rm -f {}", kubeadm::CONFIG_PATH),
                None,
                Duration::from_secs(30),
            )
            .await;
        ran?;
        Ok(command)
    }

    /// After `kubeadm init`: the daemon's own ClusterRoleBinding, the network plugin (no
    /// node is Ready without one), and the record that this node made the cluster.
    async fn set_up_cluster(
        &self,
        node: &ClusterNode,
        session: &dyn NodeShell,
    ) -> Result<(), JoinError> {
        self.step(
            node,
            session,
            "kubectl --kubeconfig /etc/kubernetes/admin.conf apply --server-side --field-manager lacave -f -",
            Some(kubeadm::daemon_binding_yaml().as_bytes()),
            Duration::from_secs(60),
        )
        .await?;
        let cni = super::cni::flannel_manifest(&self.settings.pod_cidr);
        self.step(
            node,
            session,
            "kubectl --kubeconfig /etc/kubernetes/admin.conf apply --server-side --field-manager lacave -f - # flannel",
            Some(cni.as_bytes()),
            Duration::from_secs(120),
        )
        .await?;
        self.store.set_cluster_initialized(&hostname(node))?;
        self.store
            .set_cluster_version(&self.settings.kubernetes_version)?;
        Ok(())
    }

    /// Runs one command on the node, recording it (command, status, output tail) in the
    /// node's history and the journal; a non-zero status is an error.
    async fn step(
        &self,
        node: &ClusterNode,
        session: &dyn NodeShell,
        command: &str,
        stdin: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<(), JoinError> {
        self.step_as(node, session, "join", command, command, stdin, timeout)
            .await
    }

    /// [`Joiner::step`] in another phase, recorded as `shown` (a script's name, not its
    /// text).
    #[allow(clippy::too_many_arguments)]
    async fn step_as(
        &self,
        node: &ClusterNode,
        session: &dyn NodeShell,
        phase: &str,
        shown: &str,
        command: &str,
        stdin: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<(), JoinError> {
        let name = hostname(node);
        let started = std::time::Instant::now();
        let result = session.run(command, stdin, timeout).await;
        let (status, tail) = match &result {
            Ok(out) => (out.status, out.tail(EVENT_TAIL_LINES)),
            Err(e) => (None, e.to_string()),
        };
        tracing::info!(node = %name, command = shown, status = ?status, secs = started.elapsed().as_secs_f32(), output = %tail, "ran on node");
        let kind = EventKind::Step {
            phase: phase.into(),
            command: shown.to_string(),
            status,
        };
        if let Err(error) = self.store.record_event(&keys(node), kind, tail.clone()) {
            tracing::warn!(node = %name, %error, "cannot record a join step");
        }
        let out = result?;
        if out.success() {
            Ok(())
        } else {
            Err(JoinError::Step {
                command: shown.to_string(),
                status: out
                    .status
                    .map_or("no status (killed)".into(), |s| s.to_string()),
                tail: out.tail(EVENT_TAIL_LINES),
            })
        }
    }

    fn note(&self, node: &ClusterNode, message: &str) {
        let kind = EventKind::Step {
            phase: "join".into(),
            command: String::new(),
            status: Some(0),
        };
        let _ = self
            .store
            .record_event(&keys(node), kind, message.to_string());
    }

    /// `joined` nodes whose Node is Ready become `ready`; their bootstrap token is deleted.
    async fn mark_ready(&self, nodes: &[ClusterNode]) {
        let Some(api) = self.conn.current() else {
            return;
        };
        for node in nodes.iter().filter(|n| n.state == NodeState::Joined) {
            let name = hostname(node);
            if api.node_ready(&name) != Some(true) {
                continue;
            }
            if let Ok(Some(id)) = self.store.join_token(&name) {
                match api.delete_bootstrap_token(&id).await {
                    Ok(()) => {
                        let _ = self.store.forget_join_token(&name);
                    }
                    Err(error) => {
                        tracing::warn!(node = %name, %error, "cannot delete the join's bootstrap token (retried)")
                    }
                }
            }
            lock(&self.join_started).remove(&node.id);
            match self.store.transition_from(
                &keys(node),
                &[NodeState::Joined],
                NodeState::Ready,
                "the Node is Ready",
                None,
            ) {
                Ok(_) => tracing::info!(node = %name, "node Ready"),
                Err(error) => tracing::warn!(node = %name, %error, "cannot record Ready"),
            }
        }
    }

    /// Moves cluster nodes between `ready` and `notready` ([`health_change`]).
    async fn follow_health(&self, nodes: &[ClusterNode]) {
        let Some(api) = self.conn.current() else {
            return;
        };
        for node in nodes
            .iter()
            .filter(|n| matches!(n.state, NodeState::Ready | NodeState::NotReady))
        {
            let name = hostname(node);
            let api_server = match node.role {
                Some(Role::ControlPlane) => self.conn.api_server_answers(node.id),
                _ => None,
            };
            let Some((to, why)) = health_change(node.state, api.node_ready(&name), api_server)
            else {
                continue;
            };
            match self
                .store
                .transition_from(&keys(node), &[node.state], to, why, None)
            {
                Ok(_) if to == NodeState::NotReady => {
                    tracing::warn!(node = %name, reason = why, "node not Ready")
                }
                Ok(_) => tracing::info!(node = %name, "node Ready again"),
                Err(error) => tracing::debug!(node = %name, %error, "health change not recorded"),
            }
        }
    }

    /// Drops the API connection (tests of what happens without one).
    #[cfg(test)]
    pub(super) fn drop_api(&self) {
        self.conn.disconnect();
    }

    /// Moves the start of `mac`'s join back (tests of the join's time limit).
    #[cfg(test)]
    pub(super) fn backdate_join(&self, id: NodeId, by: time::Duration) {
        let mut started = lock(&self.join_started);
        let at = started
            .get(&id)
            .copied()
            .unwrap_or_else(time::OffsetDateTime::now_utc);
        started.insert(id, at - by);
    }

    /// How long the join of `mac` may still take: `join_timeout_secs` from when it started.
    fn join_time_left(&self, id: NodeId) -> Duration {
        let budget = Duration::from_secs(u64::from(self.settings.join_timeout_secs));
        let Some(started) = lock(&self.join_started).get(&id).copied() else {
            return budget;
        };
        let spent = (time::OffsetDateTime::now_utc() - started).max(time::Duration::ZERO);
        budget.saturating_sub(spent.unsigned_abs())
    }

    /// When a node found `joined` started its join: the last time its history shows it
    /// entering `joining` (a node found so after a restart), else when it entered `joined`.
    fn join_start_of(&self, node: &ClusterNode) -> time::OffsetDateTime {
        if let Some(at) = lock(&self.join_started).get(&node.id) {
            return *at;
        }
        let from_history = self.store.events(&keys(node)).ok().and_then(|events| {
            events
                .iter()
                .rev()
                .find(|e| matches!(&e.kind, EventKind::Transition { to, .. } if *to == NodeState::Joining))
                .map(|e| e.at)
        });
        let at = from_history.unwrap_or(node.state_since);
        lock(&self.join_started).insert(node.id, at);
        at
    }

    /// `joined` nodes whose Node is still not Ready when the join's time is up fail, with
    /// what the API server says of them: `join_timeout_secs` bounds `booted → ready`.
    async fn fail_overdue(&self, nodes: &[ClusterNode]) {
        let api = self.conn.current();
        for node in nodes.iter().filter(|n| n.state == NodeState::Joined) {
            if lock(&self.in_flight).contains_key(&node.id) {
                continue;
            }
            let started = self.join_start_of(node);
            let budget = time::Duration::seconds(i64::from(self.settings.join_timeout_secs));
            if time::OffsetDateTime::now_utc() - started < budget {
                continue;
            }
            let name = hostname(node);
            let seen = match api.as_ref().map(|a| a.node_info(&name)) {
                None => "the daemon has no connection to the API server".to_string(),
                Some(None) => "the API server has no Node of that name".to_string(),
                Some(Some(info)) if info.ready => continue,
                Some(Some(_)) => "its Node is not Ready".to_string(),
            };
            let reason = format!(
                "not Ready within cluster.join_timeout_secs ({} s) of the join's start: {seen}",
                self.settings.join_timeout_secs
            );
            lock(&self.join_started).remove(&node.id);
            self.fail(node, &reason);
        }
    }

    /// Applies each joined node's registry labels (and its role label) to its Node, when they
    /// differ from what was last applied. A Node whose labels cannot be applied is tried
    /// again with a growing wait ([`Backoff`]), not at every tick.
    async fn sync_labels(&self, nodes: &[ClusterNode]) {
        let Some(api) = self.conn.current() else {
            return;
        };
        for node in nodes.iter().filter(|n| {
            matches!(
                n.state,
                NodeState::Joined | NodeState::Ready | NodeState::NotReady
            )
        }) {
            let name = hostname(node);
            // Not a Node (yet): nothing to label.
            if api.node_ready(&name).is_none() {
                continue;
            }
            let mut want: BTreeMap<String, String> = node.labels.clone().into_iter().collect();
            want.extend(kubeadm::role_labels(node.role));
            if lock(&self.applied_labels).get(&name) == Some(&want) {
                continue;
            }
            let now = std::time::Instant::now();
            if lock(&self.label_retry)
                .get(&name)
                .is_some_and(|b| !b.due(now))
            {
                continue;
            }
            match api.apply_node_labels(&name, &want).await {
                Ok(()) => {
                    lock(&self.label_retry).remove(&name);
                    lock(&self.applied_labels).insert(name, want);
                }
                Err(error) => {
                    let mut retry = lock(&self.label_retry);
                    let next = Backoff::after_failure(retry.get(&name), now);
                    tracing::warn!(node = %name, %error, failures = next.failures, retry_in_secs = (next.next - now).as_secs(), "cannot apply the node's labels");
                    retry.insert(name, next);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(i: u8, role: Role, state: NodeState) -> ClusterNode {
        let mut n = crate::boot::sample_node(&format!("n{i}"), role);
        n.mac = crate::model::MacAddr::new([0x52, 0x54, 0, 0, 0, i]);
        n.state = state;
        ClusterNode {
            id: NodeId(u64::from(i)),
            node: n,
        }
    }

    #[test]
    fn the_first_control_plane_initializes_alone() {
        let nodes = [
            node(1, Role::Worker, NodeState::Booted),
            node(2, Role::ControlPlane, NodeState::Booted),
            node(3, Role::ControlPlane, NodeState::Booted),
        ];
        let none = HashMap::new();
        assert_eq!(
            joins_to_start(&nodes, false, &none, false),
            [(nodes[1].id, true)]
        );
        // While it runs, nothing else starts, whatever its role.
        let running = HashMap::from([(nodes[1].id, Role::ControlPlane)]);
        assert!(joins_to_start(&nodes, false, &running, false).is_empty());
        // No control plane: no cluster to join.
        assert!(joins_to_start(&nodes[..1], false, &none, false).is_empty());
    }

    #[test]
    fn control_planes_join_one_at_a_time_and_workers_together() {
        let nodes = [
            node(1, Role::ControlPlane, NodeState::Ready),
            node(2, Role::ControlPlane, NodeState::Booted),
            node(3, Role::Worker, NodeState::Booted),
            node(4, Role::ControlPlane, NodeState::Joining),
            node(5, Role::Worker, NodeState::Joining),
            node(6, Role::Worker, NodeState::Failed),
        ];
        let none = HashMap::new();
        // Nothing joins until a control plane is Ready and the API answers.
        assert!(joins_to_start(&nodes, true, &none, false).is_empty());
        assert_eq!(
            joins_to_start(&nodes, true, &none, true),
            [
                (nodes[1].id, false),
                (nodes[2].id, false),
                (nodes[4].id, false)
            ]
        );
        // A control plane's join runs: the other control planes wait, workers do not.
        let running = HashMap::from([(nodes[1].id, Role::ControlPlane)]);
        assert_eq!(
            joins_to_start(&nodes, true, &running, true),
            [(nodes[2].id, false), (nodes[4].id, false)]
        );
        // A worker's join runs: it is not started twice.
        let running = HashMap::from([(nodes[2].id, Role::Worker)]);
        assert_eq!(
            joins_to_start(&nodes, true, &running, true),
            [(nodes[1].id, false), (nodes[4].id, false)]
        );
    }

    #[test]
    fn readiness_follows_the_node_and_its_api_server() {
        use NodeState::*;
        // A worker: its Node's condition alone; unknown means no change.
        assert_eq!(health_change(Ready, Some(true), None), None);
        assert_eq!(health_change(Ready, None, None), None);
        assert_eq!(health_change(Ready, Some(false), None).unwrap().0, NotReady);
        assert_eq!(health_change(NotReady, Some(true), None).unwrap().0, Ready);
        assert_eq!(health_change(NotReady, Some(false), None), None);
        // A control plane whose API server stopped answering leaves, even if its kubelet
        // still reports Ready, and comes back only when both are well.
        let (to, why) = health_change(Ready, Some(true), Some(false)).unwrap();
        assert_eq!(to, NotReady);
        assert!(why.contains("/readyz"));
        assert_eq!(health_change(NotReady, Some(true), Some(false)), None);
        assert_eq!(health_change(NotReady, Some(false), Some(true)), None);
        assert_eq!(
            health_change(NotReady, Some(true), Some(true)).unwrap().0,
            Ready
        );
        // Other states are the join's, not health's.
        for state in [Booted, Joining, Joined, Failed] {
            assert_eq!(health_change(state, Some(false), Some(false)), None);
        }
    }

    #[test]
    fn a_failing_task_waits_longer_each_time_up_to_five_minutes() {
        let t0 = std::time::Instant::now();
        let mut b = Backoff::after_failure(None, t0);
        assert!(!b.due(t0) && b.due(t0 + Duration::from_secs(1)));
        let mut waits = vec![b.next - t0];
        for _ in 0..12 {
            b = Backoff::after_failure(Some(&b), t0);
            waits.push(b.next - t0);
        }
        assert_eq!(waits[..4], [1, 2, 4, 8].map(Duration::from_secs));
        assert_eq!(*waits.last().unwrap(), RETRY_MAX);
        // Four a second before: a failing label sync now tries at most 13 times in 20 minutes.
        let tries = waits
            .iter()
            .filter(|w| **w <= Duration::from_secs(1200))
            .count();
        assert!(tries <= 13);
    }
}

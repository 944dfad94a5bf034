//! Kubernetes upgrades, run by the join loop's [`Joiner`]: `lacave cluster upgrade --to
//! vX.Y.Z` (`POST /api/v1/cluster/upgrade`), one node at a time, stopping at the first
//! problem:
//!
//! 1. the plan ([`plan`], also what `--dry-run` shows): Kubernetes' skew rules (one minor
//!    release at a time, never down, no kubelet newer than its API server nor more than three
//!    minors older than the target), every node Ready, the mirror holding the target's
//!    sysext; control planes first (the one that initialized the cluster runs `kubeadm
//!    upgrade apply`), then workers;
//! 2. an etcd snapshot (`upgrade` trigger): the way back if the control plane's upgrade goes
//!    wrong;
//! 3. per node: cordon and drain (disruption budgets respected, with a timeout; a drain that
//!    fails makes the node schedulable again), the target's Kubernetes sysext from the
//!    daemon's mirror (checked against the SHA-256 the mirror recorded, linked as
//!    `/etc/extensions/kubernetes.raw`, `systemd-sysext refresh`), `kubeadm upgrade apply`
//!    (first control plane) or `kubeadm upgrade node`, the kubelet restarted, the Node waited
//!    for Ready at the new kubelet version, uncordoned;
//! 4. once every node is done, the cluster's recorded release becomes the target: new nodes
//!    join at it.
//!
//! The run's record is in the registry after every step (`GET /api/v1/cluster/upgrade`), so a
//! failure or a restart of the daemon loses nothing: the run stops with the node and the
//! command named, that node left cordoned (said so) and the nodes after it untouched;
//! `--resume` continues from that node. Every step is in the node's history (phase
//! `upgrade`). While a run goes on no node joins, no certificate renewal and no restore start.

use std::path::PathBuf;
use std::sync::atomic::Ordering;

use super::super::settings::version_triple;
use super::super::ssh::shquote;
use super::*;

/// Where nodes fetch a release's Kubernetes sysext: the daemon's mirror.
#[derive(Clone, Debug)]
pub struct NodeMirror {
    /// `[flatcar] mirror_dir`: `kubernetes/<image>` and `<image>.sha256` there.
    pub dir: PathBuf,
    /// `[flatcar] board` (the image's architecture).
    pub board: String,
    /// The mirror's URL as nodes reach it.
    pub base_url: String,
}

/// The drain's default time limit per node.
pub const DRAIN_TIMEOUT_SECS: u64 = 300;
/// How long a node has to report Ready at the new kubelet version once its kubelet restarted.
const READY_TIMEOUT: Duration = Duration::from_secs(300);
/// How long a Kubernetes API call is tried again while the API server does not answer.
const API_RETRY: Duration = Duration::from_secs(120);

/// `POST /api/v1/cluster/upgrade`.
#[derive(Clone, Debug, Default, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpgradeRequest {
    /// The release to upgrade to (`v1.37.2`); with `resume`, optional (the stopped run's).
    pub to: Option<String>,
    /// Check and plan only: nothing changes.
    #[serde(default)]
    pub dry_run: bool,
    /// Continue the last run, which failed or was interrupted, from the node it stopped at.
    #[serde(default)]
    pub resume: bool,
    /// How long a node's drain may take (default 300 s, 10 to 3600).
    pub drain_timeout_secs: Option<u64>,
}

/// One node of a run.
#[derive(
    Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
pub struct UpgradeNode {
    pub hostname: String,
    pub role: String,
    /// Its kubelet's version when the run was planned.
    pub from: Option<String>,
    /// `kubeadm upgrade apply` (the first control plane) or `kubeadm upgrade node`.
    pub kubeadm: String,
    /// `pending`, `running`, `done` or `failed`.
    pub state: String,
    /// The step it is at, or failed at.
    pub step: Option<String>,
    /// Whether the run left it cordoned (a failure after its drain).
    pub cordoned: bool,
}

/// A run, as `GET /api/v1/cluster/upgrade` shows it; kept in the registry.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct UpgradeStatus {
    /// `planned` (a dry run: nothing was done), `running`, `done`, `failed` or `interrupted`
    /// (the daemon stopped during the run).
    pub state: String,
    /// The API server's version when the run was planned.
    pub from: String,
    pub to: String,
    pub drain_timeout_secs: u64,
    /// In order: control planes first.
    pub nodes: Vec<UpgradeNode>,
    /// The etcd snapshot taken before the first node.
    pub snapshot: Option<String>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub started_at: Option<time::OffsetDateTime>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub finished_at: Option<time::OffsetDateTime>,
    /// Where a failed run stopped, and why.
    pub failed_node: Option<String>,
    pub failed_command: Option<String>,
    pub error: Option<String>,
}

/// Why a run cannot start; the API maps each to one status.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    /// A field of the request is wrong: 422 with the field named.
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    /// Not now (a join, a restore, a renewal or another run; a node not Ready): 409.
    #[error("{0}")]
    Conflict(String),
    /// Refused as asked (the skew rules, the mirror lacks the sysext): 422.
    #[error("{0}")]
    Refused(String),
    #[error("the registry: {0}")]
    Store(#[from] crate::store::StoreError),
}

/// `v1.37.2`, `v1.38.0-rc.1` or `v1.37.2+build.1`: what a release name may be (it goes into
/// commands run on nodes, unquoted in what the history shows).
pub fn is_release(text: &str) -> bool {
    let Some(rest) = text.strip_prefix('v') else {
        return false;
    };
    let (core, extra) = match rest.find(['-', '+']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let numbers: Vec<&str> = core.split('.').collect();
    numbers.len() == 3
        && numbers
            .iter()
            .all(|n| !n.is_empty() && n.len() <= 9 && n.bytes().all(|b| b.is_ascii_digit()))
        && extra.len() <= 64
        && extra
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'+' | b'.'))
}

/// A node as the plan sees it.
#[derive(Clone, Debug)]
pub struct PlanNode {
    pub hostname: String,
    pub role: Role,
    /// The registry's state.
    pub state: NodeState,
    /// The API server's view: Ready, and the kubelet's version.
    pub ready: bool,
    pub kubelet: Option<String>,
}

/// Plans an upgrade of a cluster whose API server runs `server` to `to`: the checks of the
/// module's header, then the nodes to upgrade in order (`first_cp`, the control plane that
/// initialized the cluster, leads). Pure: unit-tested below.
pub fn plan(
    to: &str,
    server: Option<&str>,
    nodes: &[PlanNode],
    first_cp: Option<&str>,
    sysext: Result<(), String>,
) -> Result<Vec<UpgradeNode>, UpgradeError> {
    let target = version_triple(to)
        .filter(|_| is_release(to))
        .ok_or_else(|| UpgradeError::Invalid {
            field: "to",
            reason: format!("{to:?} is not a Kubernetes release like \"v1.37.2\""),
        })?;
    let server = server.ok_or_else(|| {
        UpgradeError::Conflict(
            "the API server's version is not known yet (the daemon reads it every minute once the cluster answers): try again shortly".into(),
        )
    })?;
    let running = version_triple(server).ok_or_else(|| {
        UpgradeError::Refused(format!(
            "the API server reports {server:?}, not a release the daemon can compare"
        ))
    })?;
    if target < running {
        return Err(UpgradeError::Refused(format!(
            "the cluster runs {server}: {to} would be a downgrade, which kubeadm does not support (restore an etcd snapshot taken before the upgrade instead)"
        )));
    }
    if target.0 != running.0 || target.1 > running.1 + 1 {
        return Err(UpgradeError::Refused(format!(
            "the cluster runs {server}: Kubernetes upgrades one minor release at a time; upgrade to the newest v{}.{}.x first",
            running.0,
            running.1 + 1
        )));
    }
    if nodes.is_empty() {
        return Err(UpgradeError::Conflict(
            "the registry holds no node of the cluster".into(),
        ));
    }
    for n in nodes {
        if n.state != NodeState::Ready || !n.ready {
            return Err(UpgradeError::Conflict(format!(
                "{} is {} (its Node {}Ready): an upgrade starts only when every node of the cluster is Ready",
                n.hostname,
                n.state,
                if n.ready { "" } else { "not " }
            )));
        }
        let Some(kubelet) = n.kubelet.as_deref() else {
            return Err(UpgradeError::Conflict(format!(
                "{}: the API server does not say its kubelet's version yet",
                n.hostname
            )));
        };
        let Some(have) = version_triple(kubelet) else {
            return Err(UpgradeError::Refused(format!(
                "{}: its kubelet reports {kubelet:?}, not a release the daemon can compare",
                n.hostname
            )));
        };
        if have > target {
            return Err(UpgradeError::Refused(format!(
                "{}: its kubelet runs {kubelet}, newer than {to}: kubeadm does not downgrade",
                n.hostname
            )));
        }
        if have.0 != target.0 || have.1 + 3 < target.1 {
            return Err(UpgradeError::Refused(format!(
                "{}: its kubelet runs {kubelet}, more than three minor releases older than {to} (Kubernetes' skew policy): upgrade it to a newer release of its own minor series first",
                n.hostname
            )));
        }
    }
    let control_planes_move = running != target;
    let mut cps: Vec<&PlanNode> = nodes
        .iter()
        .filter(|n| n.role == Role::ControlPlane)
        .collect();
    if cps.is_empty() {
        return Err(UpgradeError::Conflict(
            "the registry holds no control plane of the cluster".into(),
        ));
    }
    // The first control plane leads (a stable sort keeps registration order behind it).
    cps.sort_by_key(|n| Some(n.hostname.as_str()) != first_cp);
    let kubelet_behind =
        |n: &PlanNode| n.kubelet.as_deref().and_then(version_triple) != Some(target);
    let mut out = Vec::new();
    for (i, n) in cps.iter().enumerate() {
        if control_planes_move || kubelet_behind(n) {
            out.push(UpgradeNode {
                hostname: n.hostname.clone(),
                role: Role::ControlPlane.as_str().into(),
                from: n.kubelet.clone(),
                kubeadm: if i == 0 && control_planes_move {
                    format!("kubeadm upgrade apply {to}")
                } else {
                    "kubeadm upgrade node".into()
                },
                state: "pending".into(),
                ..UpgradeNode::default()
            });
        }
    }
    for n in nodes
        .iter()
        .filter(|n| n.role != Role::ControlPlane && kubelet_behind(n))
    {
        out.push(UpgradeNode {
            hostname: n.hostname.clone(),
            role: n.role.as_str().into(),
            from: n.kubelet.clone(),
            kubeadm: "kubeadm upgrade node".into(),
            state: "pending".into(),
            ..UpgradeNode::default()
        });
    }
    if !out.is_empty() {
        sysext.map_err(UpgradeError::Refused)?;
    }
    Ok(out)
}

/// The script that puts release `version`'s Kubernetes sysext on a node: fetched from the
/// daemon's mirror (unless already there), checked against `sha256`, linked as
/// `/etc/extensions/kubernetes.raw` and merged (`systemd-sysext refresh`); ends by checking
/// that kubeadm is `version`. Nothing is fetched when kubeadm and the kubelet already are.
pub fn install_script(version: &str, image: &str, url: &str, sha256: &str) -> String {
    format!(
        r#"set -eu
v={v}; img=/opt/extensions/kubernetes/{image}; url={url}; sum={sum}
if [ "$(kubeadm version -o short 2>/dev/null || true)" = "$v" ] && [ "$(kubelet --version 2>/dev/null || true)" = "Kubernetes $v" ]; then
  echo "kubeadm and the kubelet are $v already"
else
  mkdir -p /opt/extensions/kubernetes
  if ! echo "$sum  $img" | sha256sum -c --status 2>/dev/null; then
    curl -fsS --retry 3 --max-time 900 -o "$img.part" "$url"
    echo "$sum  $img.part" | sha256sum -c --status || {{ rm -f "$img.part"; echo "$url: not the SHA-256 the mirror recorded ($sum)" >&2; exit 1; }}
    mv -f "$img.part" "$img"
  fi
  mkdir -p /etc/extensions
  ln -sfn "$img" /etc/extensions/kubernetes.raw
  systemd-sysext refresh
fi
got=$(kubeadm version -o short)
[ "$got" = "$v" ] || {{ echo "kubeadm is $got after the sysext refresh, not $v" >&2; exit 1; }}
echo "kubeadm $got, $(kubelet --version)""#,
        v = shquote(version),
        image = shquote(image),
        url = shquote(url),
        sum = shquote(sha256),
    )
}

/// A failed node step: the command shown and why.
struct StepFailure {
    command: String,
    reason: String,
}

impl Joiner {
    /// Sets where nodes fetch sysext images ([`prepare`] does, once).
    pub fn set_node_mirror(&self, mirror: NodeMirror) {
        let _ = self.node_mirror.set(mirror);
    }

    /// Whether an upgrade runs (the loop starts no join meanwhile).
    pub fn is_upgrading(&self) -> bool {
        self.upgrading.load(Ordering::SeqCst)
    }

    /// The release new nodes join at: the one the cluster runs, as recorded at `kubeadm
    /// init` and by each finished upgrade; `[cluster] kubernetes_version` for a cluster made
    /// before the daemon recorded it, or none yet.
    pub fn joins_at(&self) -> String {
        self.store
            .cluster_version()
            .ok()
            .flatten()
            .unwrap_or_else(|| self.settings.kubernetes_version.clone())
    }

    /// The last run, if any.
    pub fn upgrade_status(&self) -> Option<UpgradeStatus> {
        match self.store.upgrade_record::<UpgradeStatus>() {
            Ok(r) => r,
            Err(error) => {
                tracing::warn!(%error, "cannot read the upgrade record");
                None
            }
        }
    }

    /// At start: a run the daemon was doing when it stopped is `interrupted`, with where
    /// (returns whether there was one: [`Joiner::spawn`] then resumes it); and the configured
    /// release is compared with the one the cluster runs.
    pub(crate) fn recover_upgrade(&self) -> bool {
        let mut interrupted = false;
        if let Some(mut status) = self.upgrade_status()
            && status.state == "running"
        {
            interrupted = true;
            let at = status.nodes.iter().find(|n| n.state == "running");
            let where_ = at.map_or("between two nodes".to_string(), |n| {
                format!(
                    "during {}'s step {:?}",
                    n.hostname,
                    n.step.as_deref().unwrap_or("")
                )
            });
            status.state = "interrupted".into();
            status.finished_at = Some(time::OffsetDateTime::now_utc());
            status.failed_node = at.map(|n| n.hostname.clone());
            status.error = Some(format!(
                "the daemon stopped {where_}; it resumes from that node once the API server answers (`lacave cluster upgrade --resume` if it cannot)"
            ));
            tracing::warn!(to = %status.to, "the upgrade to {} was interrupted {where_}: it resumes once the API server answers", status.to);
            if let Err(error) = self.store.set_upgrade_record(&status) {
                tracing::warn!(%error, "cannot record the interrupted upgrade");
            }
        }
        if let Ok(Some(running)) = self.store.cluster_version()
            && running != self.settings.kubernetes_version
        {
            tracing::warn!(
                cluster = %running,
                configured = %self.settings.kubernetes_version,
                "[cluster] kubernetes_version is {} but the cluster runs {running}: new nodes join at {running}; a configuration edit does not upgrade a running cluster: `lacave cluster upgrade --to {}` does",
                self.settings.kubernetes_version,
                self.settings.kubernetes_version
            );
        }
        interrupted
    }

    /// Resumes a run the daemon was doing when it stopped, once there is a connection to the
    /// API server (up to 15 minutes; a join or a restore running meanwhile is waited for).
    /// What cannot resume stays `interrupted`, said in the log: `--resume` then.
    pub(super) fn spawn_resume(self: &Arc<Self>, tasks: &TaskTracker) {
        let me = self.clone();
        tasks.spawn(async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(900);
            loop {
                tokio::select! {
                    _ = me.cancel.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(3)) => {}
                }
                if me.conn.current().is_none() && tokio::time::Instant::now() < deadline {
                    continue;
                }
                let request = UpgradeRequest {
                    resume: true,
                    ..UpgradeRequest::default()
                };
                match me.start_upgrade(request).await {
                    Ok(status) => {
                        tracing::warn!(to = %status.to, "resuming the interrupted upgrade");
                        return;
                    }
                    Err(UpgradeError::Conflict(why)) if tokio::time::Instant::now() < deadline => {
                        tracing::debug!(%why, "the interrupted upgrade waits");
                    }
                    Err(error) => {
                        tracing::error!(%error, "the interrupted upgrade cannot resume on its own: `lacave cluster upgrade --resume` once fixed");
                        return;
                    }
                }
            }
        });
    }

    /// The nodes as the plan sees them.
    fn plan_nodes(&self) -> Vec<PlanNode> {
        let api = self.conn.current();
        self.cluster_nodes()
            .iter()
            .filter(|n| n.role.is_some())
            .map(|n| {
                let name = hostname(n);
                let info = api.as_ref().and_then(|a| a.node_info(&name));
                PlanNode {
                    role: n.role.unwrap_or(Role::Worker),
                    state: n.state,
                    ready: info.as_ref().is_some_and(|i| i.ready),
                    kubelet: info.and_then(|i| i.kubelet_version),
                    hostname: name,
                }
            })
            .collect()
    }

    /// The target's sysext in the mirror: its name, URL and SHA-256, or why not.
    fn sysext_of(&self, to: &str) -> Result<(String, String, String), String> {
        let Some(m) = self.node_mirror.get() else {
            return Err("the daemon has no mirror to serve Kubernetes sysext images from".into());
        };
        let image = crate::boot::kubernetes_sysext(to, &m.board);
        match crate::boot::sysext_sha256(&m.dir, &image) {
            Some(sum) => Ok((
                image.clone(),
                format!("{}/mirror/kubernetes/{image}", m.base_url),
                sum,
            )),
            None => Err(format!(
                "the mirror does not hold {image} (checked against its SHA256SUMS): run `lacave mirror fetch kubernetes --version {to}` first"
            )),
        }
    }

    /// Checks and plans an upgrade (or a resume); unless it is a dry run, starts it in the
    /// background (`GET /api/v1/cluster/upgrade` follows it).
    pub async fn start_upgrade(
        self: &Arc<Self>,
        request: UpgradeRequest,
    ) -> Result<UpgradeStatus, UpgradeError> {
        let drain = request.drain_timeout_secs.unwrap_or(DRAIN_TIMEOUT_SECS);
        if !(10..=3600).contains(&drain) {
            return Err(UpgradeError::Invalid {
                field: "drain_timeout_secs",
                reason: format!("{drain} is not from 10 to 3600 seconds"),
            });
        }
        let state = self.store.cluster_state()?;
        if state.initialized_by.is_none() {
            return Err(UpgradeError::Conflict(
                "there is no cluster yet: nothing to upgrade".into(),
            ));
        }
        let mut status = if request.resume {
            let Some(mut last) = self.upgrade_status() else {
                return Err(UpgradeError::Conflict(
                    "there is no upgrade to resume".into(),
                ));
            };
            if !matches!(last.state.as_str(), "failed" | "interrupted") {
                return Err(UpgradeError::Conflict(format!(
                    "the last upgrade (to {}) is {}: there is nothing to resume",
                    last.to, last.state
                )));
            }
            if let Some(to) = &request.to
                && *to != last.to
            {
                return Err(UpgradeError::Invalid {
                    field: "to",
                    reason: format!(
                        "the stopped upgrade goes to {}, not {to}: resume it first (or leave --to out)",
                        last.to
                    ),
                });
            }
            self.sysext_of(&last.to).map_err(UpgradeError::Refused)?;
            // The nodes still to do must still be in the cluster.
            let known: Vec<String> = self.cluster_nodes().iter().map(|n| hostname(n)).collect();
            for n in last.nodes.iter_mut().filter(|n| n.state != "done") {
                if !known.contains(&n.hostname) {
                    n.state = "done".into();
                    n.step = Some("no longer registered: skipped".into());
                } else {
                    n.state = "pending".into();
                }
            }
            last.drain_timeout_secs = drain;
            last.error = None;
            last.failed_node = None;
            last.failed_command = None;
            last.finished_at = None;
            last
        } else {
            let Some(to) = request.to.clone() else {
                return Err(UpgradeError::Invalid {
                    field: "to",
                    reason: "missing: the release to upgrade to, like \"v1.37.2\"".into(),
                });
            };
            if let Some(last) = self.upgrade_status()
                && matches!(last.state.as_str(), "failed" | "interrupted")
                && last.to != to
            {
                return Err(UpgradeError::Conflict(format!(
                    "the upgrade to {} stopped at {}: resume it (`lacave cluster upgrade --resume`) before upgrading to {to}",
                    last.to,
                    last.failed_node.as_deref().unwrap_or("a node")
                )));
            }
            // The API server's version now, not as of the last minutely check.
            self.check_server_version().await;
            let server = lock(&self.server_version).clone();
            let nodes = plan(
                &to,
                server.as_deref(),
                &self.plan_nodes(),
                state.initialized_by.as_deref(),
                self.sysext_of(&to).map(|_| ()),
            )?;
            UpgradeStatus {
                state: "planned".into(),
                from: server.unwrap_or_default(),
                to,
                drain_timeout_secs: drain,
                nodes,
                ..UpgradeStatus::default()
            }
        };
        if request.dry_run {
            return Ok(status);
        }
        if status.nodes.iter().all(|n| n.state == "done") {
            // Nothing to do: every node runs the target already.
            self.store.set_cluster_version(&status.to)?;
            status.state = "done".into();
            status.finished_at = Some(time::OffsetDateTime::now_utc());
            self.store.set_upgrade_record(&status)?;
            return Ok(status);
        }
        // The certificate lock while deciding: no renewal or restore runs now, and none
        // starts once `upgrading` is set (both check it).
        let Ok(_certs) = self.certs_checking.clone().try_lock_owned() else {
            return Err(UpgradeError::Conflict(
                "a certificate check, renewal or an etcd restore runs: try again when it is done"
                    .into(),
            ));
        };
        if self.is_restoring() {
            return Err(UpgradeError::Conflict(
                "an etcd restore is running: an upgrade waits for it".into(),
            ));
        }
        {
            let running = lock(&self.in_flight);
            if !running.is_empty() {
                return Err(UpgradeError::Conflict(
                    "a join is running: an upgrade waits for it".into(),
                ));
            }
            if self.upgrading.swap(true, Ordering::SeqCst) {
                return Err(UpgradeError::Conflict(
                    "an upgrade is already running (GET /api/v1/cluster/upgrade)".into(),
                ));
            }
        }
        status.state = "running".into();
        status.started_at = status
            .started_at
            .or_else(|| Some(time::OffsetDateTime::now_utc()));
        if let Err(e) = self.store.set_upgrade_record(&status) {
            self.upgrading.store(false, Ordering::SeqCst);
            return Err(e.into());
        }
        tracing::warn!(to = %status.to, from = %status.from, nodes = status.nodes.len(), resume = request.resume, "upgrading the cluster");
        let me = self.clone();
        let started = status.clone();
        self.tasks.spawn(async move {
            tokio::select! {
                () = me.run_upgrade(status) => {}
                _ = me.cancel.cancelled() => {
                    tracing::warn!("the upgrade was interrupted by shutdown: `lacave cluster upgrade --resume` continues it");
                }
            }
            me.upgrading.store(false, Ordering::SeqCst);
        });
        Ok(started)
    }

    fn save_upgrade(&self, status: &UpgradeStatus) {
        if let Err(error) = self.store.set_upgrade_record(status) {
            tracing::error!(%error, "cannot record the upgrade's progress");
        }
    }

    async fn run_upgrade(&self, mut status: UpgradeStatus) {
        if status.snapshot.is_none() {
            match self.take_snapshot("upgrade").await {
                Ok(info) => status.snapshot = Some(info.name),
                Err(error) => {
                    status.state = "failed".into();
                    status.finished_at = Some(time::OffsetDateTime::now_utc());
                    status.error = Some(format!(
                        "the etcd snapshot before the upgrade failed ({error}): no node was touched"
                    ));
                    tracing::error!(%error, "upgrade stopped: no etcd snapshot before it");
                    self.save_upgrade(&status);
                    return;
                }
            }
            self.save_upgrade(&status);
        }
        for i in 0..status.nodes.len() {
            if status.nodes[i].state == "done" {
                continue;
            }
            let name = status.nodes[i].hostname.clone();
            let Some(node) = self
                .cluster_nodes()
                .into_iter()
                .find(|n| hostname(n) == name)
            else {
                status.nodes[i].state = "done".into();
                status.nodes[i].step = Some("no longer registered: skipped".into());
                self.save_upgrade(&status);
                continue;
            };
            status.nodes[i].state = "running".into();
            self.save_upgrade(&status);
            let started = std::time::Instant::now();
            match self.upgrade_node(&node, &mut status, i).await {
                Ok(()) => {
                    status.nodes[i].state = "done".into();
                    status.nodes[i].step = None;
                    status.nodes[i].cordoned = false;
                    self.save_upgrade(&status);
                    self.record(
                        &node,
                        "upgrade",
                        &format!(
                            "upgraded to {} in {:.0} s, uncordoned",
                            status.to,
                            started.elapsed().as_secs_f32()
                        ),
                    );
                    tracing::info!(node = %name, to = %status.to, secs = started.elapsed().as_secs_f32(), "node upgraded");
                }
                Err(failure) => {
                    let n = &mut status.nodes[i];
                    n.state = "failed".into();
                    let left = if n.cordoned {
                        format!(
                            "{name} is left cordoned: `lacave cluster upgrade --resume` continues from it once fixed (`kubectl uncordon {name}` puts it back to work meanwhile)"
                        )
                    } else {
                        format!("{name} is schedulable")
                    };
                    let untouched: Vec<&str> = status.nodes[i + 1..]
                        .iter()
                        .map(|n| n.hostname.as_str())
                        .collect();
                    let error = format!(
                        "{name}: `{}` failed: {}; {left}; {}",
                        failure.command,
                        failure.reason,
                        if untouched.is_empty() {
                            "no node after it".to_string()
                        } else {
                            format!("not touched: {}", untouched.join(", "))
                        }
                    );
                    tracing::error!(node = %name, command = %failure.command, reason = %failure.reason, "upgrade stopped");
                    self.record_failure(&node, &error);
                    status.state = "failed".into();
                    status.finished_at = Some(time::OffsetDateTime::now_utc());
                    status.failed_node = Some(name);
                    status.failed_command = Some(failure.command);
                    status.error = Some(error);
                    self.save_upgrade(&status);
                    return;
                }
            }
        }
        if let Err(error) = self.store.set_cluster_version(&status.to) {
            tracing::error!(%error, "cannot record the cluster's new release");
        }
        status.state = "done".into();
        status.finished_at = Some(time::OffsetDateTime::now_utc());
        self.save_upgrade(&status);
        *lock(&self.server_version) = None;
        tracing::warn!(to = %status.to, "cluster upgraded: new nodes join at {}", status.to);
    }

    fn record_failure(&self, node: &ClusterNode, message: &str) {
        let kind = EventKind::Step {
            phase: "upgrade".into(),
            command: String::new(),
            status: Some(1),
        };
        let _ = self
            .store
            .record_event(&keys(node), kind, message.to_string());
    }

    fn upgrade_step(&self, status: &mut UpgradeStatus, i: usize, step: &str) {
        status.nodes[i].step = Some(step.to_string());
        self.save_upgrade(status);
    }

    /// One node: drain, sysext, kubeadm, kubelet, Ready at the new version, uncordon.
    async fn upgrade_node(
        &self,
        node: &ClusterNode,
        status: &mut UpgradeStatus,
        i: usize,
    ) -> Result<(), StepFailure> {
        let name = hostname(node);
        let to = status.to.clone();
        let fail = |command: &str, reason: String| StepFailure {
            command: command.to_string(),
            reason,
        };
        // 1. Cordon and drain.
        self.upgrade_step(status, i, "drain");
        self.kube_call(|api| {
            let name = name.clone();
            async move { api.cordon(&name).await }
        })
        .await
        .map_err(|e| fail(&format!("cordon {name}"), e))?;
        status.nodes[i].cordoned = true;
        self.save_upgrade(status);
        let drain = Duration::from_secs(status.drain_timeout_secs);
        match self.drain_or_release(&name, drain).await {
            Ok(evicted) => self.record(
                node,
                "upgrade",
                &format!("cordoned and drained for the upgrade to {to} ({evicted} pod(s) evicted)"),
            ),
            Err((error, released)) => {
                if released {
                    status.nodes[i].cordoned = false;
                }
                return Err(fail(&format!("drain {name}"), error));
            }
        }
        // 2. The sysext, kubeadm and the kubelet, over SSH.
        let (image, url, sum) = self
            .sysext_of(&to)
            .map_err(|e| fail("the Kubernetes sysext", e))?;
        let ip = node
            .ip
            .map(|ip| IpAddr::V4(ip.addr()))
            .ok_or_else(|| fail("ssh", "the node has no address".into()))?;
        let session = self
            .ssh
            .connect(ip, node.ssh_host_key.as_deref(), Duration::from_secs(10))
            .await
            .map_err(|e| fail("ssh", e.to_string()))?;
        let preflight = if self.settings.ignore_preflight_errors.is_empty() {
            String::new()
        } else {
            format!(
                " --ignore-preflight-errors={}",
                shquote(&self.settings.ignore_preflight_errors.join(","))
            )
        };
        let kubeadm = if status.nodes[i].kubeadm.starts_with("kubeadm upgrade apply") {
            // `to` passed `is_release`: nothing in it for a shell to read.
            format!("kubeadm upgrade apply {to} --yes{preflight}")
        } else {
            format!("kubeadm upgrade node{preflight}")
        };
        let steps: [(&str, String, String, Duration); 3] = [
            (
                "sysext",
                format!(
                    "install the Kubernetes {to} sysext ({image}) from the mirror, systemd-sysext refresh"
                ),
                install_script(&to, &image, &url, &sum),
                Duration::from_secs(1200),
            ),
            (
                "kubeadm",
                kubeadm.clone(),
                kubeadm,
                Duration::from_secs(1200),
            ),
            (
                "kubelet",
                "systemctl daemon-reload && systemctl restart kubelet".to_string(),
                "systemctl daemon-reload && systemctl restart kubelet".to_string(),
                Duration::from_secs(120),
            ),
        ];
        let result = async {
            for (step, shown, command, timeout) in &steps {
                self.upgrade_step(status, i, step);
                self.step_as(
                    node,
                    session.as_ref(),
                    "upgrade",
                    shown,
                    command,
                    None,
                    *timeout,
                )
                .await
                .map_err(|e| match e {
                    JoinError::Step { status, tail, .. } => {
                        fail(shown, format!("exited with {status}: {tail}"))
                    }
                    other => fail(shown, other.to_string()),
                })?;
            }
            Ok(())
        }
        .await;
        session.close().await;
        result?;
        // 3. Ready at the new kubelet version.
        self.upgrade_step(status, i, "ready");
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        let wanted = version_triple(&to);
        loop {
            let api = self.conn.current();
            let info = api.as_ref().and_then(|a| a.node_info(&name));
            let seen = info.as_ref().and_then(|i| i.kubelet_version.clone());
            if info.as_ref().is_some_and(|i| i.ready)
                && seen.as_deref().and_then(version_triple) == wanted
            {
                break;
            }
            if tokio::time::Instant::now() > deadline {
                return Err(fail(
                    "wait for the Node",
                    format!(
                        "not Ready at kubelet {to} within {} s (it reports {}, {})",
                        READY_TIMEOUT.as_secs(),
                        seen.as_deref().unwrap_or("no version"),
                        if info.is_some_and(|i| i.ready) {
                            "Ready"
                        } else {
                            "not Ready"
                        }
                    ),
                ));
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        // A control plane's static pods restart once more under the new kubelet: the next
        // node waits until its API server has answered `/readyz` three times running.
        if node.role == Some(Role::ControlPlane) {
            self.settle_api(&name)
                .await
                .map_err(|e| fail("wait for the API server", e))?;
        }
        // 4. Back to work.
        self.upgrade_step(status, i, "uncordon");
        self.kube_call(|api| {
            let name = name.clone();
            async move { api.uncordon(&name).await }
        })
        .await
        .map_err(|e| fail(&format!("uncordon {name}"), e))?;
        Ok(())
    }

    /// Drains a cordoned Node (pods evicted, disruption budgets respected, within `timeout`);
    /// a drain that fails makes the node schedulable again. The pods evicted, or why not and
    /// whether the node was made schedulable again (said in the message).
    pub(super) async fn drain_or_release(
        &self,
        name: &str,
        timeout: Duration,
    ) -> Result<usize, (String, bool)> {
        let drained = self
            .kube_call(|api| {
                let name = name.to_string();
                async move { api.drain(&name, timeout).await }
            })
            .await;
        let error = match drained {
            Ok(evicted) => return Ok(evicted),
            Err(e) => e,
        };
        let back = self
            .kube_call(|api| {
                let name = name.to_string();
                async move { api.uncordon(&name).await }
            })
            .await
            .is_ok();
        let said = if back {
            "; the node was made schedulable again"
        } else {
            ""
        };
        Err((format!("{error}{said}"), back))
    }

    /// Runs a Kubernetes API call on the current connection, again (on the then current
    /// connection) while the API server does not answer, for up to [`API_RETRY`]: during an
    /// upgrade the control planes' API servers restart. A refusal is returned at once.
    pub(super) async fn kube_call<T, F, Fut>(&self, call: F) -> Result<T, String>
    where
        F: Fn(Arc<dyn super::super::seams::ClusterApi>) -> Fut,
        Fut: std::future::Future<Output = Result<T, super::super::kube::KubeError>>,
    {
        let deadline = tokio::time::Instant::now() + API_RETRY;
        loop {
            let error = match self.conn.current() {
                None => "no connection to the Kubernetes API".to_string(),
                Some(api) => match call(api).await {
                    Ok(v) => return Ok(v),
                    Err(e) if e.unreachable() => e.to_string(),
                    Err(e) => return Err(e.to_string()),
                },
            };
            if tokio::time::Instant::now() > deadline {
                return Err(format!("{error} (tried for {} s)", API_RETRY.as_secs()));
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }

    /// Waits until the API server answers `/readyz` three times in a row, 2 s apart.
    pub(super) async fn settle_api(&self, name: &str) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        let mut streak = 0;
        while streak < 3 {
            let ready = match self.conn.current() {
                Some(api) => api.ready().await,
                None => false,
            };
            streak = if ready { streak + 1 } else { 0 };
            if tokio::time::Instant::now() > deadline {
                return Err(format!(
                    "the API server did not answer /readyz steadily within {} s of {name}'s upgrade",
                    READY_TIMEOUT.as_secs()
                ));
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(name: &str, role: Role, kubelet: &str) -> PlanNode {
        PlanNode {
            hostname: name.into(),
            role,
            state: NodeState::Ready,
            ready: true,
            kubelet: Some(kubelet.into()),
        }
    }

    fn names(plan: &[UpgradeNode]) -> Vec<(&str, &str)> {
        plan.iter()
            .map(|n| (n.hostname.as_str(), n.kubeadm.as_str()))
            .collect()
    }

    fn cluster() -> Vec<PlanNode> {
        vec![
            n("w1", Role::Worker, "v1.36.3"),
            n("cp2", Role::ControlPlane, "v1.36.3"),
            n("cp1", Role::ControlPlane, "v1.36.3"),
            n("w2", Role::Worker, "v1.36.3"),
        ]
    }

    #[test]
    fn control_planes_go_first_led_by_the_one_that_made_the_cluster() {
        let p = plan("v1.37.2", Some("v1.36.3"), &cluster(), Some("cp1"), Ok(())).unwrap();
        assert_eq!(
            names(&p),
            [
                ("cp1", "kubeadm upgrade apply v1.37.2"),
                ("cp2", "kubeadm upgrade node"),
                ("w1", "kubeadm upgrade node"),
                ("w2", "kubeadm upgrade node"),
            ]
        );
        assert!(p.iter().all(|n| n.state == "pending" && !n.cordoned));
        assert_eq!(p[0].from.as_deref(), Some("v1.36.3"));
    }

    #[test]
    fn a_resumed_cluster_plans_only_the_nodes_behind() {
        // The API server (every control plane) is at the target; one worker lags.
        let mut nodes = cluster();
        for node in nodes.iter_mut().take(3) {
            node.kubelet = Some("v1.37.2".into());
        }
        let p = plan("v1.37.2", Some("v1.37.2"), &nodes, Some("cp1"), Ok(())).unwrap();
        assert_eq!(names(&p), [("w2", "kubeadm upgrade node")]);
        // All there: nothing to do, and the mirror is not even needed.
        nodes[3].kubelet = Some("v1.37.2".into());
        let p = plan(
            "v1.37.2",
            Some("v1.37.2"),
            &nodes,
            Some("cp1"),
            Err("no sysext".into()),
        )
        .unwrap();
        assert!(p.is_empty());
    }

    #[test]
    fn the_skew_rules_refuse_with_the_reason() {
        let refused = |to: &str, server: &str, nodes: &[PlanNode]| match plan(
            to,
            Some(server),
            nodes,
            Some("cp1"),
            Ok(()),
        ) {
            Err(UpgradeError::Refused(m)) => m,
            other => panic!("{to}: {other:?}"),
        };
        let m = refused("v1.38.0", "v1.36.3", &cluster());
        assert!(
            m.contains("one minor release at a time") && m.contains("v1.37.x"),
            "{m}"
        );
        let m = refused("v1.36.1", "v1.36.3", &cluster());
        assert!(m.contains("downgrade"), "{m}");
        let m = refused("v2.0.0", "v1.36.3", &cluster());
        assert!(m.contains("one minor release at a time"), "{m}");
        // A kubelet newer than the target (and so than its API server).
        let mut nodes = cluster();
        nodes[0].kubelet = Some("v1.37.3".into());
        let m = refused("v1.37.2", "v1.36.3", &nodes);
        assert!(m.contains("w1") && m.contains("newer"), "{m}");
        // A kubelet four minors behind the target.
        let mut nodes = cluster();
        nodes[3].kubelet = Some("v1.33.9".into());
        let m = refused("v1.37.2", "v1.36.3", &nodes);
        assert!(m.contains("w2") && m.contains("three minor"), "{m}");
        // The mirror must hold the target's sysext.
        match plan(
            "v1.37.2",
            Some("v1.36.3"),
            &cluster(),
            Some("cp1"),
            Err("the mirror does not hold kubernetes-v1.37.2-x86-64.raw".into()),
        ) {
            Err(UpgradeError::Refused(m)) => assert!(m.contains("does not hold"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_bad_target_names_the_field_and_a_node_not_ready_stops_it() {
        assert!(is_release("v1.38.0-rc.1") && is_release("v1.37.2+abc.1"));
        for bad in [
            "1.37.2",
            "v1.37",
            "latest",
            "v1.37.2 ; reboot",
            "v1.37.2;reboot",
            "v1.37.2$(id)",
            "v1..2",
            "",
        ] {
            match plan(bad, Some("v1.36.3"), &cluster(), Some("cp1"), Ok(())) {
                Err(UpgradeError::Invalid {
                    field: "to",
                    reason,
                }) => {
                    assert!(reason.contains("is not a Kubernetes release"), "{reason}")
                }
                other => panic!("{bad:?}: {other:?}"),
            }
        }
        let mut nodes = cluster();
        nodes[1].ready = false;
        match plan("v1.37.2", Some("v1.36.3"), &nodes, Some("cp1"), Ok(())) {
            Err(UpgradeError::Conflict(m)) => {
                assert!(m.contains("cp2") && m.contains("every node"), "{m}")
            }
            other => panic!("{other:?}"),
        }
        let mut nodes = cluster();
        nodes[0].state = NodeState::NotReady;
        assert!(matches!(
            plan("v1.37.2", Some("v1.36.3"), &nodes, Some("cp1"), Ok(())),
            Err(UpgradeError::Conflict(_))
        ));
        assert!(matches!(
            plan("v1.37.2", None, &cluster(), Some("cp1"), Ok(())),
            Err(UpgradeError::Conflict(_))
        ));
    }

    #[test]
    fn the_install_script_quotes_what_it_is_given_and_checks_the_hash() {
        let s = install_script(
            "v1.37.2",
            "kubernetes-v1.37.2-x86-64.raw",
            "http://10.0.0.1:8080/mirror/kubernetes/kubernetes-v1.37.2-x86-64.raw",
            "ab'cd",
        );
        assert!(s.contains(r"sum='ab'\''cd'"), "{s}");
        assert!(s.contains("sha256sum -c --status"));
        assert!(s.contains("ln -sfn \"$img\" /etc/extensions/kubernetes.raw"));
        assert!(s.contains("systemd-sysext refresh"));
        let out = std::process::Command::new("sh")
            .args(["-n", "-c", &s])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

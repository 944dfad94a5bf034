//! etcd snapshots and restores, run by the join loop's [`Joiner`] (`../snapshot.rs` does the
//! files and etcd's stream): scheduled snapshots, `lacave cluster snapshot save|list`, and
//! `lacave cluster snapshot restore`, the way back from a lost control plane:
//!
//! 1. the snapshot is checked (whole, this cluster's: `snapshot::Snapshots::checked`), and
//!    nothing else may run (no join, no certificate renewal, no other restore);
//! 2. every other control plane is reset (`kubeadm reset -f`) and sent back to `booted`:
//!    their etcd members are not in the restored one-member cluster, and a stale API server
//!    must not stay in the endpoint. This comes first so that a daemon that dies in the
//!    middle still rejoins them on its next start;
//! 3. on the first control plane, over SSH: the snapshot uploaded, its static pods stopped,
//!    `etcdutl snapshot restore` into a one-member cluster, the pods back, `/readyz` waited
//!    for (`snapshot::restore_script`, which puts the old data back on any failure);
//! 4. the join loop, paused during the restore, then joins the other control planes again.
//!
//! While a restore runs the loop starts no join. Each step is in the nodes' histories (phase
//! `restore`) and in `GET /api/v1/cluster/restore`.

use std::sync::atomic::Ordering;

use super::super::snapshot::{self, SnapshotError, SnapshotInfo, Snapshots};
use super::*;

/// Where the snapshot goes on the control plane it is restored onto.
const REMOTE_SNAPSHOT: &str = "/var/lib/lacave-restore/snapshot.db";

/// A restore's progress, as `GET /api/v1/cluster/restore` shows it.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct RestoreStatus {
    /// `idle` (none since the daemon started), `running`, `done` or `failed`.
    pub state: String,
    pub snapshot: Option<String>,
    /// The control plane restored onto.
    pub node: Option<String>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub started_at: Option<time::OffsetDateTime>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub finished_at: Option<time::OffsetDateTime>,
    pub steps: Vec<String>,
    pub error: Option<String>,
}

/// Why a restore cannot start; the API maps each to one status.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// Not now (a join, a renewal or a restore runs; no cluster): 409.
    #[error("{0}")]
    Conflict(String),
    /// The snapshot is missing (404) or refused (422).
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
}

/// What the snapshots did since the daemon started, for `/metrics`.
#[derive(Clone, Debug, Default)]
pub struct SnapshotStats {
    pub latest: Option<SnapshotInfo>,
    pub ok: u64,
    pub failed: u64,
}

impl SnapshotStats {
    pub fn metrics(&self) -> String {
        let mut out = String::from(
            "# HELP lacave_etcd_snapshot_last_success_timestamp_seconds When the newest etcd snapshot was taken.\n\
             # TYPE lacave_etcd_snapshot_last_success_timestamp_seconds gauge\n",
        );
        if let Some(latest) = &self.latest {
            out.push_str(&format!(
                "lacave_etcd_snapshot_last_success_timestamp_seconds {}\n",
                latest.taken_at.unix_timestamp(),
            ));
        }
        // The family is declared even before the first snapshot (dashboards query it).
        out.push_str(
            "# HELP lacave_etcd_snapshot_last_size_bytes The newest etcd snapshot's size.\n\
             # TYPE lacave_etcd_snapshot_last_size_bytes gauge\n",
        );
        if let Some(latest) = &self.latest {
            out.push_str(&format!(
                "lacave_etcd_snapshot_last_size_bytes {}\n",
                latest.size
            ));
        }
        out.push_str(&format!(
            "# HELP lacave_etcd_snapshots_total etcd snapshots attempted since start, by result.\n\
             # TYPE lacave_etcd_snapshots_total counter\n\
             lacave_etcd_snapshots_total{{result=\"ok\"}} {}\n\
             lacave_etcd_snapshots_total{{result=\"failed\"}} {}\n",
            self.ok, self.failed
        ));
        out
    }
}

impl Joiner {
    /// The snapshot directory.
    pub fn snapshots(&self) -> &Snapshots {
        &self.snapshots
    }

    pub fn snapshot_stats(&self) -> SnapshotStats {
        lock(&self.snapshot_stats).clone()
    }

    /// Takes a snapshot now from a Ready control plane's etcd.
    pub async fn take_snapshot(&self, trigger: &str) -> Result<SnapshotInfo, SnapshotError> {
        let members: Vec<(String, IpAddr)> = self
            .cluster_nodes()
            .into_iter()
            .filter(|n| n.role == Some(Role::ControlPlane) && n.state == NodeState::Ready)
            .filter_map(|n| Some((hostname(&n), IpAddr::V4(n.ip?.addr()))))
            .collect();
        let started = std::time::Instant::now();
        let result = async {
            let client = super::super::etcd::EtcdClient::new(&self.pki)
                .map_err(|e| SnapshotError::NoMember(e.to_string()))?;
            self.snapshots
                .save(&client, &members, &self.pki.kubernetes.cert_pem, trigger)
                .await
        }
        .await;
        let mut stats = lock(&self.snapshot_stats);
        match &result {
            Ok(info) => {
                stats.ok += 1;
                stats.latest = Some(info.clone());
                tracing::info!(
                    snapshot = %info.name, node = %info.node, revision = info.revision,
                    bytes = info.size, secs = started.elapsed().as_secs_f32(), trigger,
                    "etcd snapshot taken"
                );
            }
            Err(error) => {
                stats.failed += 1;
                tracing::warn!(%error, trigger, "etcd snapshot failed");
            }
        }
        result
    }

    /// Every `[cluster.etcd_snapshot] interval_minutes`, a snapshot (when the newest is that
    /// old), once the cluster exists.
    pub(super) fn spawn_snapshots(self: &Arc<Self>, tasks: &TaskTracker) {
        if let Err(error) = self.snapshots.prepare() {
            tracing::warn!(%error, "the etcd snapshot directory");
        }
        lock(&self.snapshot_stats).latest = self.snapshots.latest();
        let interval = u64::from(self.settings.etcd_snapshot.interval_minutes) * 60;
        if interval == 0 {
            return;
        }
        let me = self.clone();
        tasks.spawn(async move {
            // After a failure, the next try waits five minutes (not the one-minute look).
            let mut retry_at: Option<std::time::Instant> = None;
            loop {
                let initialized = me
                    .store
                    .cluster_state()
                    .is_ok_and(|s| s.initialized_by.is_some());
                let due = lock(&me.snapshot_stats).latest.as_ref().is_none_or(|l| {
                    (time::OffsetDateTime::now_utc() - l.taken_at).whole_seconds()
                        >= interval as i64
                }) && retry_at.is_none_or(|at| std::time::Instant::now() >= at);
                if initialized && due && !me.restoring.load(Ordering::SeqCst) {
                    retry_at = me
                        .take_snapshot("schedule")
                        .await
                        .err()
                        .map(|_| std::time::Instant::now() + Duration::from_secs(300));
                }
                tokio::select! {
                    _ = me.cancel.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_secs(interval.min(60))) => {}
                }
            }
        });
    }

    pub fn restore_status(&self) -> RestoreStatus {
        let status = lock(&self.restore).clone();
        if status.state.is_empty() {
            RestoreStatus {
                state: "idle".into(),
                ..status
            }
        } else {
            status
        }
    }

    /// Whether a restore runs (the loop starts no join meanwhile).
    pub fn is_restoring(&self) -> bool {
        self.restoring.load(Ordering::SeqCst)
    }

    /// Checks that snapshot `name` can be restored now, then restores it in the background
    /// (see the module's header); `GET /api/v1/cluster/restore` follows it.
    pub async fn start_restore(
        self: &Arc<Self>,
        name: &str,
    ) -> Result<RestoreStatus, RestoreError> {
        let conflict = |m: String| Err(RestoreError::Conflict(m));
        let state = self
            .store
            .cluster_state()
            .map_err(|e| RestoreError::Conflict(e.to_string()))?;
        let nodes = self.cluster_nodes();
        let in_cluster = |n: &&ClusterNode| {
            n.role == Some(Role::ControlPlane)
                && matches!(
                    n.state,
                    NodeState::Ready | NodeState::NotReady | NodeState::Joined
                )
        };
        let target = nodes
            .iter()
            .filter(in_cluster)
            .find(|n| state.initialized_by.as_deref() == Some(hostname(n).as_str()))
            .or_else(|| nodes.iter().find(|n| in_cluster(n)))
            .cloned();
        let Some(target) = target else {
            return conflict(
                "no control plane of the cluster is registered as joined, ready or notready: there is nothing to restore onto".into(),
            );
        };
        let others: Vec<ClusterNode> = nodes
            .iter()
            .filter(|n| n.id != target.id && in_cluster(n))
            .cloned()
            .collect();
        let snapshots = self.snapshots.clone();
        let ca = self.pki.kubernetes.cert_pem.clone();
        let owned = name.to_string();
        let (path, size) = tokio::task::spawn_blocking(move || snapshots.checked(&owned, &ca))
            .await
            .map_err(|e| RestoreError::Conflict(e.to_string()))??;
        // The certificate lock: no renewal restarts static pods during the restore.
        let Ok(certs_guard) = self.certs_checking.clone().try_lock_owned() else {
            return conflict(
                "a certificate check or renewal runs: try again when it is done".into(),
            );
        };
        if !lock(&self.in_flight).is_empty() {
            return conflict("a join is running: a restore waits for it".into());
        }
        if self.is_upgrading() {
            return conflict(
                "an upgrade is running: a restore waits for it (GET /api/v1/cluster/upgrade)"
                    .into(),
            );
        }
        if self.restoring.swap(true, Ordering::SeqCst) {
            return conflict("a restore is already running (GET /api/v1/cluster/restore)".into());
        }
        let status = RestoreStatus {
            state: "running".into(),
            snapshot: Some(name.to_string()),
            node: Some(hostname(&target)),
            started_at: Some(time::OffsetDateTime::now_utc()),
            ..RestoreStatus::default()
        };
        *lock(&self.restore) = status.clone();
        tracing::warn!(snapshot = %name, node = %hostname(&target), others = others.len(), bytes = size, "restoring the cluster's etcd from a snapshot");
        let me = self.clone();
        let name = name.to_string();
        tokio::spawn(async move {
            let _certs = certs_guard;
            let result = me.restore(&name, &path, &target, &others).await;
            {
                let mut status = lock(&me.restore);
                status.finished_at = Some(time::OffsetDateTime::now_utc());
                match &result {
                    Ok(()) => status.state = "done".into(),
                    Err(e) => {
                        status.state = "failed".into();
                        status.error = Some(e.clone());
                    }
                }
            }
            me.restoring.store(false, Ordering::SeqCst);
            match result {
                Ok(()) => {
                    tracing::warn!(snapshot = %name, "etcd restored; the other control planes rejoin")
                }
                Err(error) => tracing::error!(snapshot = %name, %error, "etcd restore failed"),
            }
        });
        Ok(status)
    }

    fn restore_step(&self, text: String) {
        tracing::info!(step = %text, "restore");
        lock(&self.restore).steps.push(text);
    }

    async fn restore(
        &self,
        name: &str,
        path: &std::path::Path,
        target: &ClusterNode,
        others: &[ClusterNode],
    ) -> Result<(), String> {
        let target_name = hostname(target);
        // 2. The other control planes out first, and back to `booted` (they rejoin).
        for other in others {
            let other_name = hostname(other);
            let (reset, _) = self.reset_node(other).await;
            self.record(
                other,
                "restore",
                &format!("before the restore of {name} onto {target_name}: {reset}"),
            );
            lock(&self.applied_labels).remove(&other_name);
            self.store
                .transition(
                    &keys(other),
                    NodeState::Booted,
                    &format!(
                        "the cluster's etcd is restored from {name} onto {target_name}: this control plane joins it again"
                    ),
                    None,
                )
                .map_err(|e| format!("{other_name}: cannot send it back to booted: {e}"))?;
            self.restore_step(format!(
                "{other_name}: {reset}; back to booted, it rejoins after the restore"
            ));
        }
        // 3. The restore itself.
        let bytes = tokio::fs::read(path)
            .await
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let ip = target
            .ip
            .map(|ip| IpAddr::V4(ip.addr()))
            .ok_or_else(|| format!("{target_name} has no address"))?;
        let session = self
            .ssh
            .connect(ip, target.ssh_host_key.as_deref(), Duration::from_secs(10))
            .await
            .map_err(|e| format!("{target_name}: SSH: {e}"))?;
        let result = async {
            session
                .upload(REMOTE_SNAPSHOT, 0o600, &bytes)
                .await
                .map_err(|e| format!("uploading the snapshot: {e}"))?;
            self.restore_step(format!("{target_name}: snapshot {name} uploaded ({} bytes)", bytes.len()));
            self.step_as(
                target,
                session.as_ref(),
                "restore",
                &format!("etcd snapshot restore {name} (static pods stopped, etcdutl snapshot restore, pods back, /readyz)"),
                &snapshot::restore_script(REMOTE_SNAPSHOT),
                None,
                Duration::from_secs(900),
            )
            .await
            .map_err(|e| e.to_string())
        }
        .await;
        session.close().await;
        result.map_err(|e| format!("{target_name}: {e}"))?;
        self.restore_step(format!(
            "{target_name}: etcd restored from {name}, a one-member cluster; the API server is ready"
        ));
        Ok(())
    }

    pub(super) fn record(&self, node: &ClusterNode, phase: &str, message: &str) {
        let kind = EventKind::Step {
            phase: phase.into(),
            command: String::new(),
            status: Some(0),
        };
        if let Err(error) = self
            .store
            .record_event(&keys(node), kind, message.to_string())
        {
            tracing::warn!(node = %hostname(node), %error, "cannot record a restore step");
        }
    }
}

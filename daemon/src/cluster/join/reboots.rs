//! Coordinated reboots for Flatcar updates, run by the join loop's [`Joiner`]: a cluster node
//! whose `update_engine` reported an update applied (the Omaha endpoint's record, `applied`)
//! waits for a reboot (`REBOOT_STRATEGY=off`); the daemon gives it one:
//!
//! 1. which nodes may start ([`next_reboots`], pure): control planes first and alone, never
//!    while another control plane is not Ready; workers up to `[updates] max_unavailable` at
//!    once, counting workers already not Ready; only inside `[updates] window`, not while
//!    paused or stopped, and not while a join, an upgrade or an etcd restore runs;
//! 2. per node: cordon, drain (disruption budgets respected; a drain that fails makes the node
//!    schedulable again and stops the rollout), `systemctl reboot` over SSH, then wait until
//!    the Node is Ready and the node reports the new release to the Omaha endpoint (asked to
//!    check at once with `update_engine_client -check_for_update` every 30 s), a control
//!    plane's API server answering again, and uncordon;
//! 3. a node not back within `[updates] reboot_timeout_secs` stops the rollout: it is left
//!    cordoned, said so, and no other node reboots until `lacave updates resume`.
//!
//! The rollout's record is in the registry after every step; after a restart of the daemon,
//! a node that was being rebooted is followed from its step (waiting for it, never rebooting
//! another node early).

use super::*;

/// What starts a reboot that outlives the SSH session: the node answers, then reboots.
pub const REBOOT_COMMAND: &str = "nohup sh -c 'sleep 2; systemctl reboot' >/dev/null 2>&1 &";
/// What asks update_engine to report at once (otherwise its first check after a boot comes
/// minutes later).
pub const NUDGE_COMMAND: &str = "update_engine_client -check_for_update >/dev/null 2>&1 || true";
/// How many finished reboots the record keeps.
const KEEP_FINISHED: usize = 20;
/// How often the loop looks for nodes to reboot.
pub const REBOOT_TICK: Duration = Duration::from_secs(5);

/// The rollout, as `GET /api/v1/updates` shows it; kept in the registry.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct RebootStatus {
    /// Paused by an operator (`lacave updates pause`): no reboot starts (one running ends).
    pub paused: bool,
    /// Why the rollout stopped (a node did not come back, a drain failed): no reboot starts
    /// until `lacave updates resume`.
    pub stopped: Option<String>,
    /// Reboots in progress.
    pub running: Vec<RebootRun>,
    /// The last finished ones, newest last (at most 20).
    pub finished: Vec<RebootRun>,
}

/// One node's reboot.
#[derive(
    Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
pub struct RebootRun {
    pub hostname: String,
    pub role: String,
    /// The release it ran, and the one applied.
    pub from: String,
    pub to: String,
    /// cordon, drain, reboot, wait, uncordon; then done or failed.
    pub step: String,
    /// Whether the rollout left it cordoned.
    pub cordoned: bool,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub started_at: Option<time::OffsetDateTime>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub finished_at: Option<time::OffsetDateTime>,
    pub error: Option<String>,
}

/// A cluster node as the planner sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub hostname: String,
    pub control_plane: bool,
    /// Registry `ready` and its Node Ready.
    pub ready: bool,
    /// `(running release, release applied)` when it waits for a reboot.
    pub applied: Option<(String, String)>,
}

/// The nodes (indexes into `nodes`) whose reboot may start now, given those `running`.
pub fn next_reboots(
    nodes: &[Candidate],
    running: &[RebootRun],
    max_unavailable: usize,
) -> Vec<usize> {
    let is_running = |n: &Candidate| running.iter().any(|r| r.hostname == n.hostname);
    if running
        .iter()
        .any(|r| r.role == Role::ControlPlane.as_str())
    {
        return vec![];
    }
    let waiting = |n: &Candidate| n.applied.is_some() && n.ready && !is_running(n);
    if let Some(cp) = nodes.iter().position(|n| n.control_plane && waiting(n)) {
        // A control plane goes alone, first, and only while every other one is Ready.
        let others_ready = nodes
            .iter()
            .enumerate()
            .all(|(i, n)| i == cp || !n.control_plane || n.ready);
        return if running.is_empty() && others_ready {
            vec![cp]
        } else {
            vec![]
        };
    }
    let down = nodes
        .iter()
        .filter(|n| !n.control_plane && !n.ready && !is_running(n))
        .count();
    let slots = max_unavailable.saturating_sub(running.len() + down);
    nodes
        .iter()
        .enumerate()
        .filter(|(_, n)| !n.control_plane && waiting(n))
        .map(|(i, _)| i)
        .take(slots)
        .collect()
}

impl Joiner {
    /// The rollout's state.
    pub fn reboot_status(&self) -> RebootStatus {
        lock(&self.reboots).clone()
    }

    fn save_reboots(&self, status: &RebootStatus) {
        *lock(&self.reboots) = status.clone();
        if let Err(error) = self.store.set_reboot_record(status) {
            tracing::error!(%error, "cannot record the reboots' progress");
        }
    }

    /// Changes one running reboot and saves the rollout.
    fn update_run(&self, hostname: &str, change: impl FnOnce(&mut RebootRun)) {
        let mut status = self.reboot_status();
        if let Some(run) = status.running.iter_mut().find(|r| r.hostname == hostname) {
            change(run);
        }
        self.save_reboots(&status);
    }

    /// `lacave updates pause|resume`: resume also clears a stop.
    pub fn set_reboots_paused(&self, paused: bool) -> RebootStatus {
        let mut status = self.reboot_status();
        status.paused = paused;
        if !paused {
            status.stopped = None;
        }
        self.save_reboots(&status);
        tracing::warn!(
            paused,
            "coordinated reboots {}",
            if paused { "paused" } else { "resumed" }
        );
        status
    }

    /// Reads the rollout from the registry at start and follows the reboots it was running.
    pub(super) fn recover_reboots(self: &Arc<Self>) {
        let status = match self.store.reboot_record::<RebootStatus>() {
            Ok(Some(s)) => s,
            Ok(None) => return,
            Err(error) => {
                tracing::error!(%error, "cannot read the reboots' record");
                return;
            }
        };
        *lock(&self.reboots) = status.clone();
        for run in status.running {
            tracing::warn!(node = %run.hostname, step = %run.step, "following a reboot the daemon was running when it stopped");
            self.spawn_reboot(run);
        }
    }

    /// One look for nodes to reboot.
    pub(super) async fn reboot_tick(self: &Arc<Self>) {
        let Some(updates) = self.updates.get() else {
            return;
        };
        // Nodes rebooting on their own (another reboot strategy) are not rebooted twice.
        if !updates.coordinate_reboots || updates.reboot_strategy.as_deref() != Some("off") {
            return;
        }
        let status = self.reboot_status();
        if status.paused
            || status.stopped.is_some()
            || self.is_upgrading()
            || self.is_restoring()
            || !lock(&self.in_flight).is_empty()
        {
            return;
        }
        if let Some(window) = &updates.window
            && !window.contains(time::OffsetDateTime::now_utc())
        {
            return;
        }
        let nodes = self.cluster_nodes();
        let api = self.conn.current();
        let Some(api) = api else {
            return;
        };
        let mut candidates = Vec::new();
        for n in &nodes {
            let name = hostname(n);
            let record = self.store.node_update(n.id).ok().flatten();
            let applied = record
                .filter(|u| u.state == crate::model::UpdateState::Applied)
                .and_then(|u| u.target.map(|t| (u.version, t)));
            candidates.push(Candidate {
                ready: n.state == NodeState::Ready && api.node_info(&name).is_some_and(|i| i.ready),
                control_plane: n.role == Some(Role::ControlPlane),
                applied,
                hostname: name,
            });
        }
        let start = next_reboots(
            &candidates,
            &status.running,
            updates.max_unavailable as usize,
        );
        if start.is_empty() {
            return;
        }
        let mut status = status;
        for i in start {
            let c = &candidates[i];
            let (from, to) = c.applied.clone().expect("chosen nodes wait for a reboot");
            let run = RebootRun {
                hostname: c.hostname.clone(),
                role: if c.control_plane {
                    Role::ControlPlane
                } else {
                    Role::Worker
                }
                .as_str()
                .to_string(),
                from,
                to,
                step: "cordon".into(),
                started_at: Some(time::OffsetDateTime::now_utc()),
                ..RebootRun::default()
            };
            tracing::warn!(node = %run.hostname, from = %run.from, to = %run.to, "rebooting into the applied Flatcar update");
            status.running.push(run.clone());
            self.save_reboots(&status);
            self.spawn_reboot(run);
        }
    }

    fn spawn_reboot(self: &Arc<Self>, run: RebootRun) {
        let me = self.clone();
        self.tasks.spawn(async move {
            let name = run.hostname.clone();
            let started = std::time::Instant::now();
            let outcome = tokio::select! {
                outcome = me.reboot_node(run) => outcome,
                _ = me.cancel.cancelled() => {
                    tracing::warn!(node = %name, "a reboot was being followed when the daemon stopped: followed again at start");
                    return;
                }
            };
            me.finish_reboot(&name, outcome, started.elapsed());
        });
    }

    fn finish_reboot(&self, name: &str, outcome: Result<(), String>, took: Duration) {
        let mut status = self.reboot_status();
        let Some(pos) = status.running.iter().position(|r| r.hostname == name) else {
            return;
        };
        let mut run = status.running.remove(pos);
        run.finished_at = Some(time::OffsetDateTime::now_utc());
        let node = self
            .cluster_nodes()
            .into_iter()
            .find(|n| hostname(n) == name);
        match outcome {
            Ok(()) => {
                run.step = "done".into();
                run.cordoned = false;
                let message = format!(
                    "rebooted into Flatcar {}: drained, back Ready, uncordoned in {:.0} s",
                    run.to,
                    took.as_secs_f32()
                );
                tracing::info!(node = %name, to = %run.to, secs = took.as_secs_f32(), "node rebooted into its update");
                if let Some(node) = &node {
                    self.record(node, "update", &message);
                }
            }
            Err(error) => {
                run.step = "failed".into();
                let left = if run.cordoned {
                    format!("{name} is left cordoned (`kubectl uncordon {name}` once it is fixed)")
                } else {
                    format!("{name} is schedulable")
                };
                let message = format!(
                    "{name}: reboot into Flatcar {} failed: {error}; {left}; no other node reboots until `lacave updates resume`",
                    run.to
                );
                tracing::error!(node = %name, %error, "coordinated reboots stopped");
                run.error = Some(error);
                if let Some(node) = &node {
                    let kind = EventKind::Step {
                        phase: "update".into(),
                        command: String::new(),
                        status: Some(1),
                    };
                    let _ = self.store.record_event(&keys(node), kind, message.clone());
                }
                status.stopped = Some(message);
            }
        }
        status.finished.push(run);
        let excess = status.finished.len().saturating_sub(KEEP_FINISHED);
        status.finished.drain(..excess);
        self.save_reboots(&status);
    }

    /// One node: cordon, drain, reboot, back Ready on the new release, uncordon.
    async fn reboot_node(&self, run: RebootRun) -> Result<(), String> {
        let name = run.hostname.clone();
        let Some(node) = self
            .cluster_nodes()
            .into_iter()
            .find(|n| hostname(n) == name)
        else {
            return Err("no longer registered".into());
        };
        let timeout = Duration::from_secs(
            self.updates
                .get()
                .map_or(900, |u| u64::from(u.reboot_timeout_secs)),
        );
        // After a restart: a node already rebooting is waited for, not rebooted again.
        let waiting = matches!(run.step.as_str(), "wait" | "uncordon");
        if !waiting {
            self.update_run(&name, |r| r.step = "cordon".into());
            self.kube_call(|api| {
                let name = name.clone();
                async move { api.cordon(&name).await }
            })
            .await
            .map_err(|e| format!("cordon: {e}"))?;
            self.update_run(&name, |r| {
                r.cordoned = true;
                r.step = "drain".into();
            });
            let drain = Duration::from_secs(upgrade::DRAIN_TIMEOUT_SECS);
            match self.drain_or_release(&name, drain).await {
                Ok(evicted) => self.record(
                    &node,
                    "update",
                    &format!(
                        "cordoned and drained for the reboot into Flatcar {} ({evicted} pod(s) evicted)",
                        run.to
                    ),
                ),
                Err((error, released)) => {
                    if released {
                        self.update_run(&name, |r| r.cordoned = false);
                    }
                    return Err(format!("drain: {error}"));
                }
            }
            self.update_run(&name, |r| r.step = "reboot".into());
            let ip = node
                .ip
                .map(|ip| IpAddr::V4(ip.addr()))
                .ok_or("the node has no address")?;
            let session = self
                .ssh
                .connect(ip, node.ssh_host_key.as_deref(), Duration::from_secs(10))
                .await
                .map_err(|e| format!("ssh: {e}"))?;
            let result = self
                .step_as(
                    &node,
                    session.as_ref(),
                    "update",
                    "systemctl reboot",
                    REBOOT_COMMAND,
                    None,
                    Duration::from_secs(30),
                )
                .await;
            session.close().await;
            result.map_err(|e| format!("systemctl reboot: {e}"))?;
            self.update_run(&name, |r| r.step = "wait".into());
            // Let it go down before asking whether it is back.
            tokio::time::sleep(Duration::from_secs(10)).await;
        }
        if run.step != "uncordon" {
            self.wait_rebooted(&node, &run, timeout).await?;
        }
        if node.role == Some(Role::ControlPlane) {
            self.settle_api(&name)
                .await
                .map_err(|e| format!("the API server after the reboot: {e}"))?;
        }
        self.update_run(&name, |r| r.step = "uncordon".into());
        self.kube_call(|api| {
            let name = name.clone();
            async move { api.uncordon(&name).await }
        })
        .await
        .map_err(|e| format!("uncordon: {e}"))?;
        Ok(())
    }

    /// Waits until the node's Node is Ready and it reports `run.to` to the Omaha endpoint,
    /// asking its update_engine to report every 30 s.
    async fn wait_rebooted(
        &self,
        node: &ClusterNode,
        run: &RebootRun,
        timeout: Duration,
    ) -> Result<(), String> {
        let name = hostname(node);
        let deadline = tokio::time::Instant::now() + timeout;
        let mut nudged: Option<tokio::time::Instant> = None;
        loop {
            let record = self.store.node_update(node.id).ok().flatten();
            let on_new = record.as_ref().is_some_and(|u| {
                u.version == run.to && u.state != crate::model::UpdateState::Applied
            });
            let ready = self
                .conn
                .current()
                .and_then(|a| a.node_info(&name))
                .is_some_and(|i| i.ready);
            if on_new && ready {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                return Err(format!(
                    "not back within {} s: it reports {} ({}), its Node is {}",
                    timeout.as_secs(),
                    record.as_ref().map_or("nothing", |u| u.version.as_str()),
                    record
                        .as_ref()
                        .map_or("no report".to_string(), |u| u.state.to_string()),
                    if ready { "Ready" } else { "not Ready" }
                ));
            }
            if !on_new && nudged.is_none_or(|at| at.elapsed() > Duration::from_secs(30)) {
                nudged = Some(tokio::time::Instant::now());
                self.nudge(node).await;
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }

    /// Asks the node's update_engine to check now (it may still be down: errors are quiet).
    async fn nudge(&self, node: &ClusterNode) {
        let Some(ip) = node.ip.map(|ip| IpAddr::V4(ip.addr())) else {
            return;
        };
        let Ok(session) = self
            .ssh
            .connect(ip, node.ssh_host_key.as_deref(), Duration::from_secs(5))
            .await
        else {
            return;
        };
        let _ = session
            .run(NUDGE_COMMAND, None, Duration::from_secs(20))
            .await;
        session.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(name: &str, cp: bool, ready: bool, applied: bool) -> Candidate {
        Candidate {
            hostname: name.into(),
            control_plane: cp,
            ready,
            applied: applied.then(|| ("4230.2.3".into(), "4459.2.1".into())),
        }
    }

    fn running(name: &str, cp: bool) -> RebootRun {
        RebootRun {
            hostname: name.into(),
            role: if cp { "control-plane" } else { "worker" }.into(),
            ..RebootRun::default()
        }
    }

    #[test]
    fn control_planes_go_first_and_alone() {
        let nodes = [
            n("cp1", true, true, true),
            n("cp2", true, true, true),
            n("w1", false, true, true),
        ];
        assert_eq!(next_reboots(&nodes, &[], 3), [0]);
        assert!(next_reboots(&nodes, &[running("cp1", true)], 3).is_empty());
        // A worker running: the control plane waits for it, no other worker starts.
        assert!(next_reboots(&nodes, &[running("w1", false)], 3).is_empty());
        // Another control plane not Ready: none starts.
        let nodes = [n("cp1", true, true, true), n("cp2", true, false, false)];
        assert!(next_reboots(&nodes, &[], 1).is_empty());
    }

    #[test]
    fn workers_go_max_unavailable_at_a_time_counting_those_down() {
        let nodes = [
            n("cp1", true, true, false),
            n("w1", false, true, true),
            n("w2", false, true, true),
            n("w3", false, true, true),
            n("w4", false, false, false),
        ];
        // w4 is down already: with 2 unavailable allowed, one more.
        assert_eq!(next_reboots(&nodes, &[], 2), [1]);
        assert_eq!(next_reboots(&nodes, &[], 3), [1, 2]);
        assert!(next_reboots(&nodes, &[running("w1", false)], 2).is_empty());
        assert_eq!(next_reboots(&nodes, &[running("w1", false)], 3), [2]);
        // Nothing applied, or not Ready: nothing to do.
        let nodes = [n("w1", false, true, false), n("w2", false, false, true)];
        assert!(next_reboots(&nodes, &[], 5).is_empty());
    }
}

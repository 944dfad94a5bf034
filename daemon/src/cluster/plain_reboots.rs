//! Coordinated reboots of machines outside a Kubernetes cluster (`[cluster] enabled = false`):
//! a `booted` machine whose `update_engine` reported an update applied is rebooted by the
//! daemon over SSH (its pinned host key), one machine at a time, only inside `[updates]
//! window`, and waited for until it reports the new release to the Omaha endpoint; one not
//! back within `reboot_timeout_secs` stops the rollout until `lacave updates resume`. The
//! cluster's own rollout (drain first, control planes alone) is `join/reboots.rs`, whose
//! planner, record and commands this shares.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::join::{
    Candidate, NUDGE_COMMAND, REBOOT_COMMAND, REBOOT_TICK, RebootRun, RebootStatus, next_reboots,
};
use super::seams::ShellConnector;
use super::ssh::SshClient;
use crate::config::Config;
use crate::model::{EventKind, Node, NodeId, NodeKey, NodeState, UpdateState};
use crate::store::Store;
use crate::updates::settings::UpdatesConfig;

/// The rollout of machines without a cluster; one per daemon.
pub struct PlainReboots {
    store: Store,
    ssh: Arc<dyn ShellConnector>,
    updates: UpdatesConfig,
    status: Mutex<RebootStatus>,
    cancel: CancellationToken,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl PlainReboots {
    /// With the daemon's SSH key (`<state_dir>/ssh/id_ed25519`, made by the boot flow).
    pub fn prepare(
        config: &Config,
        store: Store,
        cancel: CancellationToken,
    ) -> Result<Arc<Self>, String> {
        let ssh = SshClient::load(
            &config.state_dir.join("ssh/id_ed25519"),
            config.cluster.ssh_port,
        )
        .map_err(|e| e.to_string())?;
        Ok(Self::new(
            store,
            Arc::new(ssh),
            config.updates.clone(),
            cancel,
        ))
    }

    pub fn new(
        store: Store,
        ssh: Arc<dyn ShellConnector>,
        updates: UpdatesConfig,
        cancel: CancellationToken,
    ) -> Arc<Self> {
        Arc::new(PlainReboots {
            store,
            ssh,
            updates,
            status: Mutex::default(),
            cancel,
        })
    }

    pub fn status(&self) -> RebootStatus {
        lock(&self.status).clone()
    }

    fn save(&self, status: &RebootStatus) {
        *lock(&self.status) = status.clone();
        if let Err(error) = self.store.set_reboot_record(status) {
            tracing::error!(%error, "cannot record the reboots' progress");
        }
    }

    /// `lacave updates pause|resume`: resume also clears a stop.
    pub fn set_paused(&self, paused: bool) -> RebootStatus {
        let mut status = self.status();
        status.paused = paused;
        if !paused {
            status.stopped = None;
        }
        self.save(&status);
        tracing::warn!(
            paused,
            "coordinated reboots {}",
            if paused { "paused" } else { "resumed" }
        );
        status
    }

    /// Follows the reboot a previous run was making, then looks for machines every few
    /// seconds.
    pub fn spawn(self: &Arc<Self>, tasks: &TaskTracker) {
        if let Ok(Some(status)) = self.store.reboot_record::<RebootStatus>() {
            *lock(&self.status) = status.clone();
            for run in status.running {
                tracing::warn!(node = %run.hostname, step = %run.step, "following a reboot the daemon was running when it stopped");
                self.spawn_reboot(run, tasks);
            }
        }
        let me = self.clone();
        let spawner = tasks.clone();
        tasks.spawn(async move {
            loop {
                me.tick(&spawner);
                tokio::select! {
                    _ = me.cancel.cancelled() => break,
                    _ = tokio::time::sleep(REBOOT_TICK) => {}
                }
            }
        });
    }

    /// The machines this rollout looks after: booted, with a pinned host key.
    fn machines(&self) -> Vec<(NodeId, Node)> {
        self.store.with_registered_node_ids(|all| {
            all.filter(|(_, n)| n.state == NodeState::Booted && n.ssh_host_key.is_some())
                .map(|(id, n)| (id, n.clone()))
                .collect()
        })
    }

    fn tick(self: &Arc<Self>, tasks: &TaskTracker) {
        let u = &self.updates;
        if !u.enabled || !u.coordinate_reboots || u.reboot_strategy.as_deref() != Some("off") {
            return;
        }
        let status = self.status();
        if status.paused || status.stopped.is_some() {
            return;
        }
        if let Some(window) = &u.window
            && !window.contains(time::OffsetDateTime::now_utc())
        {
            return;
        }
        let machines = self.machines();
        let candidates: Vec<Candidate> = machines
            .iter()
            .map(|(id, n)| Candidate {
                hostname: n.display_name(),
                control_plane: false,
                ready: true,
                applied: self
                    .store
                    .node_update(*id)
                    .ok()
                    .flatten()
                    .filter(|r| r.state == UpdateState::Applied)
                    .and_then(|r| r.target.map(|t| (r.version, t))),
            })
            .collect();
        // One machine at a time.
        let Some(&i) = next_reboots(&candidates, &status.running, 1).first() else {
            return;
        };
        let c = &candidates[i];
        let (from, to) = c
            .applied
            .clone()
            .expect("chosen machines wait for a reboot");
        let run = RebootRun {
            hostname: c.hostname.clone(),
            role: "machine".into(),
            from,
            to,
            step: "reboot".into(),
            started_at: Some(time::OffsetDateTime::now_utc()),
            ..RebootRun::default()
        };
        tracing::warn!(node = %run.hostname, from = %run.from, to = %run.to, "rebooting into the applied Flatcar update");
        let mut status = status;
        status.running.push(run.clone());
        self.save(&status);
        self.spawn_reboot(run, tasks);
    }

    fn spawn_reboot(self: &Arc<Self>, run: RebootRun, tasks: &TaskTracker) {
        let me = self.clone();
        tasks.spawn(async move {
            let name = run.hostname.clone();
            let started = std::time::Instant::now();
            let outcome = tokio::select! {
                outcome = me.reboot(&run) => outcome,
                _ = me.cancel.cancelled() => return,
            };
            me.finish(&name, outcome, started.elapsed());
        });
    }

    fn record(&self, name: &str, status: Option<u32>, message: String) {
        let Some((id, _)) = self
            .machines()
            .into_iter()
            .find(|(_, n)| n.display_name() == name)
        else {
            return;
        };
        let kind = EventKind::Step {
            phase: "update".into(),
            command: String::new(),
            status,
        };
        if let Err(error) = self.store.record_event(&[NodeKey::Id(id)], kind, message) {
            tracing::warn!(node = %name, %error, "cannot record a reboot step");
        }
    }

    fn finish(&self, name: &str, outcome: Result<(), String>, took: Duration) {
        let mut status = self.status();
        let Some(pos) = status.running.iter().position(|r| r.hostname == name) else {
            return;
        };
        let mut run = status.running.remove(pos);
        run.finished_at = Some(time::OffsetDateTime::now_utc());
        match outcome {
            Ok(()) => {
                run.step = "done".into();
                tracing::info!(node = %name, to = %run.to, secs = took.as_secs_f32(), "machine rebooted into its update");
                self.record(
                    name,
                    Some(0),
                    format!(
                        "rebooted into Flatcar {} in {:.0} s",
                        run.to,
                        took.as_secs_f32()
                    ),
                );
            }
            Err(error) => {
                run.step = "failed".into();
                let message = format!(
                    "{name}: reboot into Flatcar {} failed: {error}; no other machine reboots until `lacave updates resume`",
                    run.to
                );
                tracing::error!(node = %name, %error, "coordinated reboots stopped");
                self.record(name, Some(1), message.clone());
                run.error = Some(error);
                status.stopped = Some(message);
            }
        }
        status.finished.push(run);
        let excess = status.finished.len().saturating_sub(20);
        status.finished.drain(..excess);
        self.save(&status);
    }

    fn set_step(&self, name: &str, step: &str) {
        let mut status = self.status();
        if let Some(r) = status.running.iter_mut().find(|r| r.hostname == name) {
            r.step = step.into();
        }
        self.save(&status);
    }

    /// Reboot over SSH (unless a restart finds it already waiting), then wait for the report.
    async fn reboot(&self, run: &RebootRun) -> Result<(), String> {
        let name = run.hostname.clone();
        let Some((id, node)) = self
            .machines()
            .into_iter()
            .find(|(_, n)| n.display_name() == name)
        else {
            return Err("no longer a booted machine of the registry".into());
        };
        let ip = node
            .ip
            .map(|ip| IpAddr::V4(ip.addr()))
            .ok_or("the machine has no address")?;
        if run.step != "wait" {
            let session = self
                .ssh
                .connect(ip, node.ssh_host_key.as_deref(), Duration::from_secs(10))
                .await
                .map_err(|e| format!("ssh: {e}"))?;
            let result = session
                .run(REBOOT_COMMAND, None, Duration::from_secs(30))
                .await;
            session.close().await;
            match result {
                Ok(out) if out.status == Some(0) => {}
                Ok(out) => {
                    return Err(format!(
                        "systemctl reboot exited with {:?}: {}",
                        out.status,
                        out.tail(5)
                    ));
                }
                Err(e) => return Err(format!("systemctl reboot: {e}")),
            }
            self.record(
                &name,
                Some(0),
                format!("systemctl reboot, into Flatcar {}", run.to),
            );
            self.set_step(&name, "wait");
            tokio::time::sleep(Duration::from_secs(10)).await;
        }
        let timeout = Duration::from_secs(u64::from(self.updates.reboot_timeout_secs));
        let deadline = tokio::time::Instant::now() + timeout;
        let mut nudged: Option<tokio::time::Instant> = None;
        loop {
            let record = self.store.node_update(id).ok().flatten();
            if record
                .as_ref()
                .is_some_and(|u| u.version == run.to && u.state != UpdateState::Applied)
            {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                return Err(format!(
                    "not back within {} s: it reports {} ({})",
                    timeout.as_secs(),
                    record.as_ref().map_or("nothing", |u| u.version.as_str()),
                    record
                        .as_ref()
                        .map_or("no report".to_string(), |u| u.state.to_string()),
                ));
            }
            if nudged.is_none_or(|at| at.elapsed() > Duration::from_secs(30)) {
                nudged = Some(tokio::time::Instant::now());
                if let Ok(session) = self
                    .ssh
                    .connect(ip, node.ssh_host_key.as_deref(), Duration::from_secs(5))
                    .await
                {
                    let _ = session
                        .run(NUDGE_COMMAND, None, Duration::from_secs(20))
                        .await;
                    session.close().await;
                }
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }
}

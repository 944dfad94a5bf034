//! The daemon's connection to the Kubernetes API, as one service: its own client
//! certificate (user `lacave`, renewed at two thirds of its life), the connection to a
//! control plane that answers (checked with `/readyz`, made again elsewhere when it stops),
//! and the `/readyz` probes of every control plane's own API server. The join loop, node
//! sync, removal and the add-on engine all receive the current connection through a
//! `watch` channel ([`ApiConnection::subscribe`]); none of them makes one.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::kubeadm;
use super::pki::{self, ClusterPki};
use super::seams::{ApiConnector, ApiWatch, ClusterApi};
use super::settings::ClusterConfig;
use crate::model::NodeId;

/// How often a connection to the API server is checked with `/readyz`.
const API_CHECK: Duration = Duration::from_secs(10);
/// Without a connection, how often one is tried.
const RETRY_CONNECT: Duration = Duration::from_secs(3);
/// How often each control plane's API server is asked `/readyz`, and how long it has to
/// answer. [`PROBE_MISSES`] misses in a row and it does not answer: within 20 s of it
/// stopping, well inside the 30 s an operator is promised.
const PROBE_EVERY: Duration = Duration::from_secs(5);
const PROBE_TIMEOUT: Duration = Duration::from_secs(4);
const PROBE_MISSES: u32 = 2;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The daemon's client certificate for the API server, and when to renew it.
struct Credential {
    cert_pem: String,
    key_pem: String,
    renew_at: time::OffsetDateTime,
}

/// When a certificate valid from `not_before` to `not_after` is renewed: at two thirds of
/// its life (kubelet's and cert-manager's habit), so that a daemon down for a while, or a
/// failing renewal retried, still has a third of its life left.
pub fn renewal_time(
    not_before: time::OffsetDateTime,
    not_after: time::OffsetDateTime,
) -> time::OffsetDateTime {
    not_before + (not_after - not_before) * 2 / 3
}

/// Issues the daemon's own client certificate (user `lacave`) for
/// `daemon_cert_lifetime_secs` and writes the operators' copy of its kubeconfig
/// (`<dir>/lacave.kubeconfig`, 0600).
fn issue_credential(
    settings: &ClusterConfig,
    dir: &Path,
    pki: &ClusterPki,
) -> Result<Credential, String> {
    let lifetime = time::Duration::seconds(
        i64::try_from(settings.daemon_cert_lifetime_secs).unwrap_or(i64::MAX),
    );
    let issued = pki
        .issue_client_recorded(kubeadm::DAEMON_USER, &[], lifetime)
        .map_err(|e| e.to_string())?;
    let endpoint_config = pki::kubeconfig(
        &settings.name,
        &format!("https://{}", settings.endpoint()),
        &pki.kubernetes.cert_pem,
        kubeadm::DAEMON_USER,
        &issued.cert_pem,
        &issued.key_pem,
    );
    let path = dir.join("lacave.kubeconfig");
    crate::secrets::write_private(&path, endpoint_config.as_bytes())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(Credential {
        renew_at: renewal_time(
            issued.not_before + time::Duration::minutes(5),
            issued.not_after,
        ),
        cert_pem: issued.cert_pem,
        key_pem: issued.key_pem,
    })
}

/// A control plane's address and the client its probes use.
type ProbeClient = (IpAddr, Arc<dyn ClusterApi>);

/// The connection service.
pub struct ApiConnection {
    settings: ClusterConfig,
    dir: PathBuf,
    pki: Arc<ClusterPki>,
    connector: Arc<dyn ApiConnector>,
    credential: Mutex<Credential>,
    current: watch::Sender<Option<Arc<dyn ClusterApi>>>,
    /// When the connection last answered `/readyz` (or one was last tried).
    checked: Mutex<Option<Instant>>,
    /// Each control plane's API server: consecutive `/readyz` misses (0: it answered last).
    misses: Mutex<HashMap<NodeId, u32>>,
    /// A client per control plane for the probes (one kept-alive connection each, not a
    /// TLS handshake every 5 s), with the address it was made for; dropped with the
    /// certificate.
    probe_clients: Mutex<HashMap<NodeId, ProbeClient>>,
    /// When the control planes were last probed.
    probed: Mutex<Option<Instant>>,
    cancel: CancellationToken,
}

impl std::fmt::Debug for ApiConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiConnection").finish_non_exhaustive()
    }
}

impl ApiConnection {
    /// Issues the daemon's certificate (and writes the operators' kubeconfig); connects
    /// nowhere yet.
    pub fn new(
        settings: ClusterConfig,
        dir: PathBuf,
        pki: Arc<ClusterPki>,
        connector: Arc<dyn ApiConnector>,
        cancel: CancellationToken,
    ) -> Result<ApiConnection, String> {
        let credential = issue_credential(&settings, &dir, &pki)?;
        Ok(ApiConnection {
            settings,
            dir,
            pki,
            connector,
            credential: Mutex::new(credential),
            current: watch::Sender::new(None),
            checked: Mutex::default(),
            misses: Mutex::default(),
            probe_clients: Mutex::default(),
            probed: Mutex::default(),
            cancel,
        })
    }

    /// The current connection, followed as it changes.
    pub fn subscribe(&self) -> ApiWatch {
        self.current.subscribe()
    }

    /// The current connection, if any.
    pub fn current(&self) -> Option<Arc<dyn ClusterApi>> {
        self.current.borrow().clone()
    }

    /// Drops the connection (the cluster ended, or the certificate changed); the next
    /// [`ApiConnection::ensure`] makes another.
    pub fn disconnect(&self) {
        self.current.send_replace(None);
        *lock(&self.checked) = None;
        lock(&self.probe_clients).clear();
    }

    /// The daemon's client certificate now (PEM).
    pub fn credential_pem(&self) -> String {
        lock(&self.credential).cert_pem.clone()
    }

    /// The daemon's kubeconfig for the API server at `ip`.
    pub fn kubeconfig_for(&self, ip: IpAddr) -> String {
        let credential = lock(&self.credential);
        pki::kubeconfig(
            &self.settings.name,
            &format!("https://{ip}:6443"),
            &self.pki.kubernetes.cert_pem,
            kubeadm::DAEMON_USER,
            &credential.cert_pem,
            &credential.key_pem,
        )
    }

    /// Renews the daemon's client certificate at two thirds of its life, and drops the
    /// connection so that the next one is made with it (every subscriber follows). A failure
    /// is logged and retried at the next call; the old certificate still has a third of its
    /// life.
    pub fn renew_if_due(&self) {
        if lock(&self.credential).renew_at > time::OffsetDateTime::now_utc() {
            return;
        }
        match issue_credential(&self.settings, &self.dir, &self.pki) {
            Ok(fresh) => {
                let renew_at = fresh.renew_at;
                *lock(&self.credential) = fresh;
                self.disconnect();
                tracing::info!(next_renewal = %renew_at, "the daemon's cluster client certificate was renewed; reconnecting to the API server with it");
            }
            Err(error) => {
                tracing::warn!(%error, "cannot renew the daemon's cluster client certificate (retried)");
            }
        }
    }

    /// Connects to the API server at `ip` if it answers `/readyz`, and publishes it.
    pub async fn connect(&self, ip: IpAddr) -> bool {
        match self
            .connector
            .connect(&self.kubeconfig_for(ip), self.cancel.child_token())
            .await
        {
            Ok(api) if api.ready().await => {
                tracing::info!(server = %api.server(), "connected to the Kubernetes API");
                *lock(&self.checked) = Some(Instant::now());
                self.current.send_replace(Some(api));
                true
            }
            Ok(_) => false,
            Err(error) => {
                tracing::debug!(%error, %ip, "Kubernetes API not reachable yet");
                false
            }
        }
    }

    /// Keeps a connection to a control plane that answers: the current one while it does
    /// (checked every [`API_CHECK`]), else the first of `candidates` (in order of
    /// preference) that answers, tried at most every [`RETRY_CONNECT`].
    pub async fn ensure(&self, candidates: &[IpAddr]) {
        let fresh = lock(&self.checked).is_some_and(|t| t.elapsed() < API_CHECK);
        let current = self.current();
        if current.is_some() && fresh {
            return;
        }
        if let Some(api) = current
            && api.ready().await
        {
            *lock(&self.checked) = Some(Instant::now());
            return;
        }
        if self.current.borrow().is_some() {
            self.current.send_replace(None);
        }
        {
            let mut attempted = lock(&self.checked);
            if attempted.is_some_and(|t| t.elapsed() < RETRY_CONNECT) {
                return;
            }
            *attempted = Some(Instant::now());
        }
        for ip in candidates {
            if self.connect(*ip).await {
                return;
            }
        }
    }

    /// Starts asking each control plane's API server `/readyz` (every [`PROBE_EVERY`], all
    /// at once, each within [`PROBE_TIMEOUT`]) in a task of its own, so that a control plane
    /// that does not answer never holds up the caller (the join loop's tick); the misses in
    /// a row are counted when the answers are in.
    pub fn probe(self: &Arc<Self>, control_planes: Vec<(NodeId, IpAddr)>) {
        {
            let mut probed = lock(&self.probed);
            if probed.is_some_and(|t| t.elapsed() < PROBE_EVERY) {
                return;
            }
            *probed = Some(Instant::now());
        }
        let me = self.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = me.cancel.cancelled() => {}
                _ = me.probe_now(&control_planes) => {}
            }
        });
    }

    /// One round of probes, awaited (tests call it directly).
    pub async fn probe_now(&self, control_planes: &[(NodeId, IpAddr)]) {
        let mut probes = tokio::task::JoinSet::new();
        for &(id, ip) in control_planes {
            let kept = lock(&self.probe_clients)
                .get(&id)
                .filter(|(at, _)| *at == ip)
                .map(|(_, api)| api.clone());
            let api = match kept {
                Some(api) => api,
                None => match self.connector.probe_client(&self.kubeconfig_for(ip)).await {
                    Ok(api) => {
                        lock(&self.probe_clients).insert(id, (ip, api.clone()));
                        api
                    }
                    Err(error) => {
                        tracing::debug!(%error, %ip, "cannot make a probe client");
                        probes.spawn(async move { (id, false) });
                        continue;
                    }
                },
            };
            probes.spawn(async move {
                let answered = tokio::time::timeout(PROBE_TIMEOUT, api.ready()).await;
                (id, matches!(answered, Ok(true)))
            });
        }
        let mut answers = Vec::new();
        while let Some(done) = probes.join_next().await {
            if let Ok(answer) = done {
                answers.push(answer);
            }
        }
        lock(&self.probe_clients).retain(|id, _| control_planes.iter().any(|(m, _)| m == id));
        let mut misses = lock(&self.misses);
        misses.retain(|id, _| answers.iter().any(|(m, _)| m == id));
        for (id, ok) in answers {
            let entry = misses.entry(id).or_insert(0);
            *entry = if ok { 0 } else { entry.saturating_add(1) };
        }
    }

    /// Whether the control plane `id`'s own API server answers (`None`: not probed).
    pub fn api_server_answers(&self, id: NodeId) -> Option<bool> {
        lock(&self.misses).get(&id).map(|m| *m < PROBE_MISSES)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_daemons_certificate_is_renewed_at_two_thirds_of_its_life() {
        let start = time::OffsetDateTime::UNIX_EPOCH;
        assert_eq!(
            renewal_time(start, start + time::Duration::days(90)),
            start + time::Duration::days(60)
        );
        assert_eq!(
            renewal_time(start, start + time::Duration::seconds(180)),
            start + time::Duration::seconds(120)
        );
    }
}

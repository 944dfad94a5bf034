//! The reconcile loop: once a control plane is Ready, every enabled add-on is applied (after
//! the add-ons it depends on are healthy), its health read, its leftovers pruned; disabled
//! add-ons are removed. It runs again every `resync_secs`, every second while something is
//! progressing, at once on `lacave addon apply` or a reload, and with a backoff after errors.
//!
//! A pass with nothing to change makes no write: each object's last apply (hash of what was
//! sent, uid, the fields `lacave` owns) is in the store, one metadata-only list per kind
//! shows what is live, and only a difference leads to an apply.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use sha2::Digest;
use time::OffsetDateTime;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::catalog::{Addon, Catalog, Object, RenderContext};
use super::health::{self, Health};
use super::kube::{CallError, Cluster, LiveMeta, Resolved};
use super::settings::AddonsConfig;
use crate::cluster::seams::ApiWatch;
use crate::model::{AddonInventory, AppliedObject, NodeState, Role, object_key};
use crate::store::Store;

/// How many events each add-on keeps.
const EVENTS: usize = 30;
/// How long CRDs get to become Established.
const ESTABLISH_TIMEOUT: Duration = Duration::from_secs(60);

/// Apply order: CRDs, then namespaces, RBAC, configuration, workloads and services, webhooks
/// and API services, and last the custom resources the CRDs define.
pub fn phase(group: &str, kind: &str) -> u8 {
    const BUILTIN: &[&str] = &[
        "",
        "apps",
        "batch",
        "policy",
        "autoscaling",
        "networking.k8s.io",
        "storage.k8s.io",
        "scheduling.k8s.io",
        "node.k8s.io",
        "discovery.k8s.io",
        "coordination.k8s.io",
        "certificates.k8s.io",
        "flowcontrol.apiserver.k8s.io",
    ];
    match (group, kind) {
        ("apiextensions.k8s.io", "CustomResourceDefinition") => 0,
        ("", "Namespace") => 1,
        ("", "ServiceAccount") | ("rbac.authorization.k8s.io", _) => 2,
        ("", "ConfigMap" | "Secret") | ("scheduling.k8s.io", _) | ("storage.k8s.io", _) => 3,
        ("admissionregistration.k8s.io", _) | ("apiregistration.k8s.io", _) => 5,
        (g, _) if BUILTIN.contains(&g) => 4,
        _ => 6,
    }
}

/// Kinds whose status says something about health (others are healthy once they exist).
fn has_health(o: &AppliedObject, rules: &[super::catalog::HealthRule]) -> bool {
    matches!(
        o.kind.as_str(),
        "Deployment" | "DaemonSet" | "StatefulSet" | "CustomResourceDefinition" | "Job"
    ) || rules.iter().any(|r| r.kind == o.kind)
        || phase(o.group(), &o.kind) == 6
}

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct AddonEvent {
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    pub message: String,
}

/// One add-on as `lacave addon status` shows it.
/// Where an add-on stands; shown as its lower-case name by the API, the CLI, `/metrics` and
/// the console.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum AddonState {
    /// No Ready control plane yet.
    Pending,
    /// For its dependencies to be healthy.
    Waiting,
    /// Applied, and every object healthy.
    Healthy,
    /// Applied; some objects not healthy yet.
    Progressing,
    /// Another field manager holds fields the daemon sets (reported, not forced).
    Conflict,
    /// A step failed; retried at the next pass.
    Failed,
    /// Turned off (and, for the network plugin, left in place).
    Disabled,
    /// Turned off, and its objects deleted.
    Removed,
}

impl AddonState {
    pub fn as_str(self) -> &'static str {
        match self {
            AddonState::Pending => "pending",
            AddonState::Waiting => "waiting",
            AddonState::Healthy => "healthy",
            AddonState::Progressing => "progressing",
            AddonState::Conflict => "conflict",
            AddonState::Failed => "failed",
            AddonState::Disabled => "disabled",
            AddonState::Removed => "removed",
        }
    }
}

impl std::fmt::Display for AddonState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct AddonStatus {
    pub name: String,
    pub description: String,
    pub upstream: Option<String>,
    pub enabled: bool,
    pub state: AddonState,
    pub message: String,
    pub depends_on: Vec<String>,
    /// Objects applied.
    pub objects: usize,
    /// Objects not healthy, with why.
    pub unhealthy: Vec<String>,
    /// Objects another field manager holds fields of.
    pub conflicts: Vec<String>,
    /// Files taken from `[addons] resources_dir`.
    pub overridden: Vec<String>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_reconcile: Option<OffsetDateTime>,
    /// Writes (applies and deletes) of the last pass, and since start.
    pub last_writes: u64,
    pub writes_total: u64,
    pub conflicts_total: u64,
    /// How long the last pass over every add-on took (milliseconds).
    pub last_pass_ms: u64,
    #[schema(value_type = Vec<AddonEvent>)]
    pub events: VecDeque<AddonEvent>,
}

/// The add-on engine.
pub struct Addons {
    catalog: Mutex<Arc<Catalog>>,
    settings: Mutex<AddonsConfig>,
    base: RenderContext,
    store: Store,
    api: ApiWatch,
    status: Mutex<BTreeMap<String, AddonStatus>>,
    /// Health of objects by key, with the resourceVersion it was read at.
    health_cache: Mutex<HashMap<String, (String, Health)>>,
    /// Each add-on's rendered objects for the current settings (cleared on reload).
    rendered: Mutex<HashMap<String, Arc<Vec<Object>>>>,
    kick: Notify,
    cancel: CancellationToken,
}

impl std::fmt::Debug for Addons {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Addons").finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn hash(value: &serde_json::Value) -> String {
    let digest = sha2::Sha256::digest(serde_json::to_vec(value).unwrap_or_default());
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// What one add-on's pass found.
struct Outcome {
    state: AddonState,
    message: String,
    unhealthy: Vec<String>,
    conflicts: Vec<String>,
    objects: usize,
    writes: u64,
    events: Vec<String>,
}

impl Outcome {
    fn new(state: AddonState, message: impl Into<String>) -> Outcome {
        Outcome {
            state,
            message: message.into(),
            unhealthy: Vec::new(),
            conflicts: Vec::new(),
            objects: 0,
            writes: 0,
            events: Vec::new(),
        }
    }
}

/// `(namespace, name)` → what is live, for one kind.
type LiveKind = HashMap<(Option<String>, String), LiveMeta>;

/// The live objects carrying the add-on label, per kind, listed once per pass.
struct Live {
    by_kind: HashMap<(String, String), LiveKind>,
}

impl Live {
    async fn get(
        &mut self,
        cluster: &Cluster,
        r: &Resolved,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Option<LiveMeta>, CallError> {
        let key = (r.resource.api_version.clone(), r.resource.kind.clone());
        if !self.by_kind.contains_key(&key) {
            let listed = cluster.list_labelled(r).await?;
            self.by_kind.insert(key.clone(), listed);
        }
        Ok(self.by_kind[&key]
            .get(&(namespace.map(str::to_string), name.to_string()))
            .cloned())
    }

    fn forget(&mut self, r: &Resolved) {
        self.by_kind
            .remove(&(r.resource.api_version.clone(), r.resource.kind.clone()));
    }
}

impl Addons {
    pub fn new(
        catalog: Catalog,
        settings: AddonsConfig,
        base: RenderContext,
        store: Store,
        api: ApiWatch,
        cancel: CancellationToken,
    ) -> Arc<Addons> {
        let status = catalog
            .addons
            .iter()
            .map(|a| {
                (
                    a.name.clone(),
                    AddonStatus {
                        name: a.name.clone(),
                        description: a.descriptor.description.clone(),
                        upstream: a.descriptor.upstream.clone(),
                        enabled: settings.enabled.contains(&a.name),
                        state: if settings.enabled.contains(&a.name) {
                            AddonState::Pending
                        } else {
                            AddonState::Disabled
                        },
                        message: String::new(),
                        depends_on: a.descriptor.depends_on.clone(),
                        objects: 0,
                        unhealthy: Vec::new(),
                        conflicts: Vec::new(),
                        overridden: a.overridden.clone(),
                        last_reconcile: None,
                        last_writes: 0,
                        writes_total: 0,
                        conflicts_total: 0,
                        last_pass_ms: 0,
                        events: VecDeque::new(),
                    },
                )
            })
            .collect();
        Arc::new(Addons {
            catalog: Mutex::new(Arc::new(catalog)),
            settings: Mutex::new(settings),
            base,
            store,
            api,
            status: Mutex::new(status),
            health_cache: Mutex::new(HashMap::new()),
            rendered: Mutex::new(HashMap::new()),
            kick: Notify::new(),
            cancel,
        })
    }

    /// Every add-on's status, in catalog order.
    pub fn statuses(&self) -> Vec<AddonStatus> {
        let order: Vec<String> = lock(&self.catalog)
            .addons
            .iter()
            .map(|a| a.name.clone())
            .collect();
        let status = lock(&self.status);
        order
            .iter()
            .filter_map(|n| status.get(n).cloned())
            .collect()
    }

    pub fn status(&self, name: &str) -> Option<AddonStatus> {
        lock(&self.status).get(name).cloned()
    }

    /// Runs a pass now (`lacave addon apply`).
    pub fn kick(&self) {
        self.kick.notify_one();
    }

    /// New `[addons]` settings from a reload (SIGHUP). The catalog is read again, with the
    /// override files under `resources_dir` as they are now (an edited file in an unchanged
    /// directory counts), and every add-on is rendered with the new settings before anything
    /// changes: a broken template or manifest is refused and the running catalog and settings
    /// stay as they were. Returns what changed, for the log.
    pub fn reload(&self, settings: AddonsConfig) -> Result<String, Vec<String>> {
        let catalog = Catalog::load(settings.resources_dir.as_deref())?;
        check_render(&catalog, &self.base, &settings)?;
        let old = lock(&self.settings).clone();
        {
            let mut status = lock(&self.status);
            for addon in &catalog.addons {
                if let Some(s) = status.get_mut(&addon.name) {
                    s.overridden = addon.overridden.clone();
                }
            }
        }
        *lock(&self.catalog) = Arc::new(catalog);
        let on: Vec<String> = settings.enabled.difference(&old.enabled).cloned().collect();
        let off: Vec<String> = old.enabled.difference(&settings.enabled).cloned().collect();
        {
            let mut status = lock(&self.status);
            for (name, s) in status.iter_mut() {
                s.enabled = settings.enabled.contains(name);
            }
        }
        *lock(&self.settings) = settings;
        lock(&self.rendered).clear();
        self.kick();
        Ok(format!("turned on: {on:?}, turned off: {off:?}"))
    }

    /// A token for the add-on's ServiceAccount (`lacave addon token dashboard`).
    pub async fn token(&self, name: &str, ttl: Duration) -> Result<String, String> {
        let catalog = lock(&self.catalog).clone();
        let addon = catalog
            .get(name)
            .ok_or_else(|| format!("no add-on {name:?}"))?;
        let sa = addon
            .descriptor
            .token_service_account
            .clone()
            .ok_or_else(|| format!("the add-on {name} has no account to log in with"))?;
        let (ns, account) = sa.split_once('/').unwrap_or(("default", &sa));
        let client = self
            .api
            .borrow()
            .as_ref()
            .and_then(|a| a.client())
            .ok_or("no connection to the Kubernetes API yet")?;
        let request = k8s_openapi::api::authentication::v1::TokenRequest {
            spec: Some(k8s_openapi::api::authentication::v1::TokenRequestSpec {
                expiration_seconds: Some(ttl.as_secs() as i64),
                ..Default::default()
            }),
            ..Default::default()
        };
        let answer =
            kube::Api::<k8s_openapi::api::core::v1::ServiceAccount>::namespaced(client, ns)
                .create_token_request(account, &Default::default(), &request)
                .await
                .map_err(|e| format!("TokenRequest for {sa}: {e}"))?;
        answer
            .status
            .and_then(|s| s.token)
            .ok_or_else(|| format!("the API server returned no token for {sa}"))
    }

    /// Runs the loop until cancelled.
    pub fn spawn(self: &Arc<Self>, tasks: &TaskTracker) {
        let me = self.clone();
        tasks.spawn(async move {
            let mut backoff = Duration::from_secs(1);
            loop {
                let wait = match me.ready_client().await {
                    None => Duration::from_secs(1),
                    Some(client) => {
                        let started = Instant::now();
                        let (settled, errors) = me.pass(client).await;
                        let elapsed = started.elapsed();
                        for s in lock(&me.status).values_mut() {
                            s.last_pass_ms = elapsed.as_millis() as u64;
                        }
                        tracing::debug!(?elapsed, settled, errors, "add-on pass");
                        if errors {
                            let wait = backoff;
                            backoff = (backoff * 2).min(Duration::from_secs(30));
                            wait
                        } else {
                            backoff = Duration::from_secs(1);
                            if settled {
                                Duration::from_secs(u64::from(lock(&me.settings).resync_secs))
                            } else {
                                Duration::from_secs(1)
                            }
                        }
                    }
                };
                tokio::select! {
                    _ = me.cancel.cancelled() => break,
                    _ = me.kick.notified() => {}
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        });
    }

    /// A client once a control plane is Ready and connected.
    async fn ready_client(&self) -> Option<kube::Client> {
        let ready = self.store.with_registered_nodes(|_, all| {
            for n in all {
                if n.role == Some(Role::ControlPlane) && n.state == NodeState::Ready {
                    return true;
                }
            }
            false
        });
        if !ready {
            return None;
        }
        self.api.borrow().as_ref().and_then(|a| a.client())
    }

    /// One pass over every add-on: `(settled, errors)`.
    async fn pass(&self, client: kube::Client) -> (bool, bool) {
        let settings = lock(&self.settings).clone();
        let catalog = lock(&self.catalog).clone();
        let mut cluster = Cluster::new(client);
        let mut live = Live {
            by_kind: HashMap::new(),
        };
        let applied: BTreeSet<String> = match self.store.addons_applied() {
            Ok(a) => a.into_iter().collect(),
            Err(error) => {
                tracing::warn!(%error, "add-ons: cannot read the inventories");
                return (false, true);
            }
        };
        let order = catalog.order(settings.enabled.clone()).unwrap_or_default();
        let mut healthy: BTreeSet<String> = BTreeSet::new();
        let (mut settled, mut errors) = (true, false);
        for name in &order {
            let Some(addon) = catalog.get(name) else {
                continue;
            };
            let waiting: Vec<&String> = addon
                .descriptor
                .depends_on
                .iter()
                .filter(|d| settings.enabled.contains(*d) && !healthy.contains(*d))
                .collect();
            let outcome = if waiting.is_empty() {
                self.reconcile(addon, &settings, &mut cluster, &mut live)
                    .await
            } else {
                Outcome::new(
                    AddonState::Waiting,
                    format!(
                        "waiting for {} to be healthy",
                        waiting
                            .iter()
                            .map(|s| s.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                )
            };
            match outcome.state {
                AddonState::Healthy => {
                    healthy.insert(name.clone());
                }
                AddonState::Failed => errors = true,
                AddonState::Conflict => {}
                _ => settled = false,
            }
            self.record(name, outcome);
        }
        // Add-ons turned off (or gone from the catalog) that still have objects.
        for name in applied.iter().filter(|n| !settings.enabled.contains(*n)) {
            let outcome = if name == super::settings::NETWORK_PLUGIN {
                self.release(name)
            } else {
                self.remove(name, &mut cluster, &mut live).await
            };
            if outcome.state == AddonState::Failed {
                errors = true;
            }
            self.record(name, outcome);
        }
        (settled, errors)
    }

    fn record(&self, name: &str, outcome: Outcome) {
        let mut status = lock(&self.status);
        let Some(s) = status.get_mut(name) else {
            return;
        };
        let now = OffsetDateTime::now_utc();
        let mut events: Vec<String> = outcome.events;
        if s.state != outcome.state {
            events.push(match outcome.message.is_empty() {
                true => format!("{} → {}", s.state, outcome.state),
                false => format!("{} → {}: {}", s.state, outcome.state, outcome.message),
            });
            tracing::info!(addon = %name, from = %s.state, to = %outcome.state, message = %outcome.message, "add-on state");
        }
        for message in events {
            s.events.push_back(AddonEvent { at: now, message });
            while s.events.len() > EVENTS {
                s.events.pop_front();
            }
        }
        if !outcome.conflicts.is_empty() && s.conflicts != outcome.conflicts {
            s.conflicts_total += outcome.conflicts.len() as u64;
            for c in &outcome.conflicts {
                tracing::warn!(addon = %name, conflict = %c, "add-on object held by another field manager (not forced)");
            }
        }
        s.state = outcome.state;
        s.message = outcome.message;
        s.unhealthy = outcome.unhealthy;
        s.conflicts = outcome.conflicts;
        if outcome.state != AddonState::Waiting {
            s.objects = outcome.objects;
        }
        s.last_writes = outcome.writes;
        s.writes_total += outcome.writes;
        s.last_reconcile = Some(now);
    }

    /// The add-on's objects for `settings`, in apply order: rendered once per settings
    /// (the vendored files are megabytes of YAML), not on every pass.
    fn objects(&self, addon: &Addon, settings: &AddonsConfig) -> Result<Arc<Vec<Object>>, String> {
        if let Some(objects) = lock(&self.rendered).get(&addon.name) {
            return Ok(objects.clone());
        }
        let mut objects = addon.render(&context(&self.base, addon, settings))?;
        objects.sort_by_key(|o| phase(o.group(), &o.kind));
        let objects = Arc::new(objects);
        lock(&self.rendered).insert(addon.name.clone(), objects.clone());
        Ok(objects)
    }

    /// Applies what differs from the cluster, prunes what the add-on no longer has, reads
    /// health.
    async fn reconcile(
        &self,
        addon: &Addon,
        settings: &AddonsConfig,
        cluster: &mut Cluster,
        live: &mut Live,
    ) -> Outcome {
        let objects = match self.objects(addon, settings) {
            Ok(o) => o,
            Err(e) => return Outcome::new(AddonState::Failed, format!("cannot render: {e}")),
        };
        let previous = match self.store.addon_inventory(&addon.name) {
            Ok(i) => i,
            Err(e) => return Outcome::new(AddonState::Failed, format!("inventory: {e}")),
        };
        let before: HashMap<String, AppliedObject> = previous
            .objects
            .iter()
            .map(|o| (o.key(), o.clone()))
            .collect();
        let mut out = Outcome::new(AddonState::Healthy, "");
        let mut now: Vec<AppliedObject> = Vec::new();
        let mut failure: Option<String> = None;
        let mut new_crds: Vec<(Resolved, String)> = Vec::new();
        let mut current_phase = 0;
        for object in objects.iter() {
            let p = phase(object.group(), &object.kind);
            if p > 0 && current_phase == 0 && !new_crds.is_empty() {
                if let Err(e) = self.wait_established(cluster, &new_crds).await {
                    failure = Some(e);
                    break;
                }
                new_crds.clear();
            }
            current_phase = p;
            match self
                .apply_one(addon, object, settings, cluster, live, &before)
                .await
            {
                Ok((entry, wrote)) => {
                    if wrote {
                        out.writes += 1;
                        if object.kind == "CustomResourceDefinition"
                            && let Ok(r) = cluster.resolve(&object.api_version, &object.kind).await
                        {
                            new_crds.push((r, object.name.clone()));
                        }
                    }
                    now.push(entry);
                }
                Err(CallError::Conflict(message)) => {
                    out.conflicts.push(format!(
                        "{} {}: {}",
                        object.kind,
                        display_name(object.namespace.as_deref(), &object.name),
                        crate::model::printable(&message, 300)
                    ));
                    // Still the add-on's: keep it in the inventory.
                    if let Some(prev) = before.get(&object_key(
                        &object.api_version,
                        &object.kind,
                        self.namespace_of(addon, object, cluster).await.as_deref(),
                        &object.name,
                    )) {
                        now.push(prev.clone());
                    }
                }
                Err(e) => {
                    failure = Some(format!(
                        "{} {} ({}): {e}",
                        object.kind,
                        display_name(object.namespace.as_deref(), &object.name),
                        object.origin
                    ));
                    break;
                }
            }
        }
        if failure.is_none() && !new_crds.is_empty() {
            failure = self.wait_established(cluster, &new_crds).await.err();
        }
        out.objects = now.len();
        if let Some(message) = failure {
            // Keep what was applied so far and what was there before: nothing is pruned
            // after a failed apply.
            let mut keep: BTreeMap<String, AppliedObject> = before.into_iter().collect();
            for o in now {
                keep.insert(o.key(), o);
            }
            let _ = self.save(&addon.name, keep.into_values().collect());
            out.state = AddonState::Failed;
            out.message = message;
            return out;
        }
        // Prune what the add-on had and has no more.
        let wanted: BTreeSet<String> = now.iter().map(AppliedObject::key).collect();
        let mut gone: Vec<&AppliedObject> = previous
            .objects
            .iter()
            .filter(|o| !wanted.contains(&o.key()))
            .collect();
        gone.sort_by_key(|o| std::cmp::Reverse(phase(o.group(), &o.kind)));
        let mut kept = Vec::new();
        for o in gone {
            match self.delete_one(&addon.name, o, cluster, live).await {
                Ok(true) => {
                    out.writes += 1;
                    out.events.push(format!(
                        "pruned {} {}",
                        o.kind,
                        display_name(o.namespace.as_deref(), &o.name)
                    ));
                }
                Ok(false) => {}
                Err(e) => {
                    out.state = AddonState::Failed;
                    out.message = format!("pruning {} {}: {e}", o.kind, o.name);
                    kept.push(o.clone());
                }
            }
        }
        now.extend(kept);
        if now != previous.objects
            && let Err(e) = self.save(&addon.name, now.clone())
        {
            out.state = AddonState::Failed;
            out.message = format!("inventory: {e}");
        }
        if out.writes > 0 {
            out.events.push(format!("applied: {} writes", out.writes));
        }
        if out.state == AddonState::Failed {
            return out;
        }
        // Health.
        for o in now
            .iter()
            .filter(|o| has_health(o, &addon.descriptor.health))
        {
            match self.health_of(o, addon, cluster, live).await {
                Ok(Health::Current) => {}
                Ok(Health::InProgress(why)) | Ok(Health::Failed(why)) => {
                    out.unhealthy.push(format!(
                        "{} {}: {why}",
                        o.kind,
                        display_name(o.namespace.as_deref(), &o.name)
                    ))
                }
                Err(e) => out.unhealthy.push(format!("{} {}: {e}", o.kind, o.name)),
            }
        }
        if !out.conflicts.is_empty() {
            out.state = AddonState::Conflict;
            out.message = format!(
                "{} objects have fields another manager owns (set [addons] force_conflicts = true to take them)",
                out.conflicts.len()
            );
        } else if !out.unhealthy.is_empty() {
            out.state = AddonState::Progressing;
            out.message = format!("{} objects not healthy yet", out.unhealthy.len());
        } else {
            out.message = format!("{} objects applied and healthy", out.objects);
        }
        out
    }

    async fn namespace_of(
        &self,
        addon: &Addon,
        object: &Object,
        cluster: &mut Cluster,
    ) -> Option<String> {
        match cluster.resolve(&object.api_version, &object.kind).await {
            Ok(r) if r.namespaced => object
                .namespace
                .clone()
                .or_else(|| addon.descriptor.namespace.clone()),
            _ => None,
        }
    }

    /// Applies `object` unless the cluster holds what was last applied: `(entry, wrote)`.
    async fn apply_one(
        &self,
        addon: &Addon,
        object: &Object,
        settings: &AddonsConfig,
        cluster: &mut Cluster,
        live: &mut Live,
        before: &HashMap<String, AppliedObject>,
    ) -> Result<(AppliedObject, bool), CallError> {
        let r = cluster.resolve(&object.api_version, &object.kind).await?;
        let namespace = match r.namespaced {
            true => Some(
                object
                    .namespace
                    .clone()
                    .or_else(|| addon.descriptor.namespace.clone())
                    .ok_or_else(|| {
                        CallError::Other(
                            "namespaced, and neither the object nor the add-on names a namespace"
                                .into(),
                        )
                    })?,
            ),
            false => None,
        };
        let mut value = object.value.clone();
        if let Some(ns) = &namespace {
            value["metadata"]["namespace"] = ns.clone().into();
        }
        let digest = hash(&value);
        let key = object_key(
            &object.api_version,
            &object.kind,
            namespace.as_deref(),
            &object.name,
        );
        let current = live
            .get(cluster, &r, namespace.as_deref(), &object.name)
            .await?;
        if let (Some(prev), Some(current)) = (before.get(&key), &current)
            && prev.hash == digest
            && prev.api_version == object.api_version
            && !drifted(prev, current)
        {
            return Ok((prev.clone(), false));
        }
        let answer = cluster
            .apply(
                &r,
                namespace.as_deref(),
                &object.name,
                &value,
                settings.force_conflicts,
            )
            .await?;
        live.forget(&r);
        let m = answer.metadata;
        Ok((
            AppliedObject {
                api_version: object.api_version.clone(),
                kind: object.kind.clone(),
                namespace,
                name: object.name.clone(),
                hash: digest,
                uid: m.uid.unwrap_or_default(),
                generation: m.generation.unwrap_or(0),
                fields: super::kube::owned_fields(m.managed_fields.as_deref()),
                resource_version: m.resource_version.unwrap_or_default(),
            },
            true,
        ))
    }

    async fn wait_established(
        &self,
        cluster: &mut Cluster,
        crds: &[(Resolved, String)],
    ) -> Result<(), String> {
        let deadline = Instant::now() + ESTABLISH_TIMEOUT;
        for (r, name) in crds {
            loop {
                let established = cluster
                    .get(r, None, name)
                    .await
                    .ok()
                    .flatten()
                    .is_some_and(|v| health::of(&v, &[]) == Health::Current);
                if established {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(format!(
                        "CRD {name} not Established after {ESTABLISH_TIMEOUT:?}"
                    ));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(())
    }

    async fn health_of(
        &self,
        o: &AppliedObject,
        addon: &Addon,
        cluster: &mut Cluster,
        live: &mut Live,
    ) -> Result<Health, CallError> {
        let r = cluster.resolve(&o.api_version, &o.kind).await?;
        let Some(meta) = live
            .get(cluster, &r, o.namespace.as_deref(), &o.name)
            .await?
        else {
            return Ok(Health::InProgress("not found".into()));
        };
        let key = o.key();
        if let Some((rv, h)) = lock(&self.health_cache).get(&key)
            && *rv == meta.resource_version
        {
            return Ok(h.clone());
        }
        let Some(value) = cluster.get(&r, o.namespace.as_deref(), &o.name).await? else {
            return Ok(Health::InProgress("not found".into()));
        };
        let h = health::of(&value, &addon.descriptor.health);
        let rv = value
            .pointer("/metadata/resourceVersion")
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_string();
        lock(&self.health_cache).insert(key, (rv, h.clone()));
        Ok(h)
    }

    /// Deletes `o` if it still carries `addon`'s label: `Ok(true)` when a delete was sent.
    /// A CRD other objects still use is kept.
    async fn delete_one(
        &self,
        addon: &str,
        o: &AppliedObject,
        cluster: &mut Cluster,
        live: &mut Live,
    ) -> Result<bool, String> {
        let r = match cluster.resolve(&o.api_version, &o.kind).await {
            Ok(r) => r,
            Err(CallError::NoKind(_)) => return Ok(false),
            Err(e) => return Err(e.to_string()),
        };
        let current = live
            .get(cluster, &r, o.namespace.as_deref(), &o.name)
            .await
            .map_err(|e| e.to_string())?;
        match current {
            None => return Ok(false),
            Some(m) if m.addon != addon || m.uid != o.uid => return Ok(false),
            Some(_) => {}
        }
        if o.kind == "CustomResourceDefinition" {
            let group = o.name.split_once('.').map(|(_, g)| g).unwrap_or("");
            let crd = cluster
                .get(&r, None, &o.name)
                .await
                .map_err(|e| e.to_string())?;
            let served = crd.as_ref().and_then(|v| {
                let kind = v.pointer("/spec/names/kind")?.as_str()?.to_string();
                let version = v
                    .pointer("/spec/versions")?
                    .as_array()?
                    .iter()
                    .find(|v| v.get("storage").and_then(|s| s.as_bool()) == Some(true))?
                    .get("name")?
                    .as_str()?
                    .to_string();
                Some((format!("{group}/{version}"), kind))
            });
            if let Some((api_version, kind)) = served
                && let Ok(cr) = cluster.resolve(&api_version, &kind).await
                && cluster.foreign_objects(&cr).await.unwrap_or(true)
            {
                tracing::warn!(addon, crd = %o.name, "CRD kept: objects not from lacave still use it");
                return Ok(false);
            }
        }
        cluster
            .delete(&r, o.namespace.as_deref(), &o.name)
            .await
            .map_err(|e| e.to_string())?;
        live.forget(&r);
        Ok(true)
    }

    /// Stops keeping a disabled add-on in step without deleting anything: its objects stay
    /// in the cluster and its inventory is forgotten (for the network plugin, which a
    /// running cluster cannot lose).
    fn release(&self, name: &str) -> Outcome {
        match self.save(name, Vec::new()) {
            Ok(()) => Outcome::new(
                AddonState::Disabled,
                "turned off: its objects are left in the cluster (the pod network is never deleted by the daemon)",
            ),
            Err(e) => Outcome::new(AddonState::Failed, format!("inventory: {e}")),
        }
    }

    /// Removes every object of a disabled add-on, custom resources first, CRDs last.
    async fn remove(&self, name: &str, cluster: &mut Cluster, live: &mut Live) -> Outcome {
        let inventory = match self.store.addon_inventory(name) {
            Ok(i) => i,
            Err(e) => return Outcome::new(AddonState::Failed, format!("inventory: {e}")),
        };
        let mut objects = inventory.objects.clone();
        objects.sort_by_key(|o| std::cmp::Reverse(phase(o.group(), &o.kind)));
        let mut out = Outcome::new(AddonState::Removed, "");
        let mut left = Vec::new();
        for o in &objects {
            match self.delete_one(name, o, cluster, live).await {
                Ok(wrote) => out.writes += u64::from(wrote),
                Err(e) => {
                    out.state = AddonState::Failed;
                    out.message = format!("removing {} {}: {e}", o.kind, o.name);
                    left.push(o.clone());
                }
            }
        }
        if let Err(e) = self.save(name, left) {
            out.state = AddonState::Failed;
            out.message = format!("inventory: {e}");
        }
        if out.state == AddonState::Removed {
            out.message = format!("{} objects deleted", out.writes);
        }
        out
    }

    fn save(&self, name: &str, objects: Vec<AppliedObject>) -> Result<(), String> {
        self.store
            .set_addon_inventory(name, &AddonInventory { objects })
            .map_err(|e| e.to_string())
    }
}

/// What `addon`'s templates see under `settings`.
fn context(base: &RenderContext, addon: &Addon, settings: &AddonsConfig) -> RenderContext {
    let mut ctx = base.clone();
    ctx.values = settings
        .values
        .get(&addon.name)
        .cloned()
        .unwrap_or_default();
    ctx.tenants = settings.tenants.clone();
    ctx.oidc_admin_groups = settings.oidc_admin_groups.clone();
    ctx
}

/// Renders every add-on as `settings` asks, so that a broken template or manifest stops
/// start-up (and `check-config`), not a reconcile.
pub fn check_render(
    catalog: &Catalog,
    base: &RenderContext,
    settings: &AddonsConfig,
) -> Result<(), Vec<String>> {
    let mut problems = Vec::new();
    for addon in &catalog.addons {
        if let Err(e) = addon.render(&context(base, addon, settings)) {
            problems.push(e);
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

/// Whether the live object is not what was applied: another object (deleted and made
/// again), or another manager took some of the fields the daemon set. A status update, or a
/// field the daemon does not set, is no drift.
fn drifted(prev: &AppliedObject, live: &LiveMeta) -> bool {
    prev.uid != live.uid || prev.fields.is_empty() || prev.fields != live.fields
}

fn display_name(namespace: Option<&str>, name: &str) -> String {
    match namespace {
        Some(ns) => format!("{ns}/{name}"),
        None => name.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An engine over `dir` as its `resources_dir`, with no cluster connection.
    fn engine(dir: &std::path::Path, store: Store) -> (Arc<Addons>, AddonsConfig) {
        let settings = AddonsConfig {
            resources_dir: Some(dir.to_path_buf()),
            ..AddonsConfig::default()
        };
        let mut base = RenderContext::default();
        base.cluster.domain = "kube.lacave".into();
        let catalog = Catalog::load(Some(dir)).unwrap();
        let (_, api) = tokio::sync::watch::channel(None);
        let addons = Addons::new(
            catalog,
            settings.clone(),
            base,
            store,
            api,
            CancellationToken::new(),
        );
        (addons, settings)
    }

    #[test]
    fn sighup_rereads_overrides_and_refuses_a_broken_one_changing_nothing() {
        let state = tempfile::tempdir().unwrap();
        let store = Store::open(&state.path().join("registry")).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("dashboard")).unwrap();
        let (addons, settings) = engine(dir.path(), store);
        let overridden = |a: &Addons| a.status("dashboard").unwrap().overridden;
        assert!(overridden(&addons).is_empty());

        // An override file added in the same directory is read at the next reload.
        let ingress = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../resources/dashboard/ingress.yaml.j2"),
        )
        .unwrap();
        let file = dir.path().join("dashboard/ingress.yaml.j2");
        std::fs::write(&file, ingress.replace("headlamp-tls", "site-tls")).unwrap();
        addons.reload(settings.clone()).unwrap();
        assert_eq!(overridden(&addons), ["ingress.yaml.j2"]);

        // A broken one, with monitoring turned off in the same reload: refused, and
        // nothing changes (monitoring stays on, the valid override stays in use).
        std::fs::write(&file, "{{ cluster.domain ").unwrap();
        let mut next = settings.clone();
        next.enabled.remove("monitoring");
        let problems = addons.reload(next).unwrap_err();
        assert!(
            problems.iter().any(|p| p.contains("ingress.yaml.j2")),
            "{problems:?}"
        );
        assert!(addons.status("monitoring").unwrap().enabled);
        let catalog = lock(&addons.catalog).clone();
        let settings = lock(&addons.settings).clone();
        let objects = addons
            .objects(catalog.get("dashboard").unwrap(), &settings)
            .unwrap();
        assert!(
            objects
                .iter()
                .any(|o| o.value.to_string().contains("site-tls")),
            "the running catalog keeps the last good override"
        );
    }

    #[test]
    fn crds_first_custom_resources_last() {
        assert_eq!(phase("apiextensions.k8s.io", "CustomResourceDefinition"), 0);
        assert_eq!(phase("", "Namespace"), 1);
        assert_eq!(phase("rbac.authorization.k8s.io", "ClusterRole"), 2);
        assert_eq!(phase("", "Secret"), 3);
        assert_eq!(phase("apps", "Deployment"), 4);
        assert_eq!(
            phase(
                "admissionregistration.k8s.io",
                "ValidatingWebhookConfiguration"
            ),
            5
        );
        assert_eq!(phase("cert-manager.io", "ClusterIssuer"), 6);
    }

    #[test]
    fn drift_is_a_new_uid_or_fields_taken() {
        let prev = AppliedObject {
            api_version: "apps/v1".into(),
            kind: "Deployment".into(),
            namespace: Some("x".into()),
            name: "d".into(),
            hash: "h".into(),
            uid: "u1".into(),
            generation: 2,
            resource_version: "10".into(),
            fields: "f1".into(),
        };
        let mut live = LiveMeta {
            uid: "u1".into(),
            resource_version: "11".into(),
            fields: "f1".into(),
            addon: "a".into(),
        };
        assert!(!drifted(&prev, &live), "a status update is no drift");
        live.fields = "f2".into();
        assert!(drifted(&prev, &live), "another manager took a field");
        live.fields = "f1".into();
        live.uid = "u2".into();
        assert!(drifted(&prev, &live), "deleted and made again");
        let unknown = AppliedObject {
            fields: String::new(),
            ..prev
        };
        live.uid = "u1".into();
        assert!(
            drifted(&unknown, &live),
            "an inventory from before fields were kept"
        );
    }
}

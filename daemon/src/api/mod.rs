//! The daemon's HTTP surface: the authenticated operator API under `/api/v1`, plus `/healthz`
//! and `/metrics`. Only this module speaks HTTP and JSON; handlers translate requests into
//! domain calls on the store and domain results into response types.

mod addons;
mod boot;
mod cluster;
mod console;
mod dns;
mod error;
pub mod events;
pub mod identity;
mod nodes;
mod openapi;
mod pki;
mod power;
mod registry;
pub mod session;
pub mod settings;
mod status;
pub mod throttle;
mod updates;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

pub use cluster::{KubeconfigRequest, KubeconfigResponse, SnapshotList};
pub use dns::{DnsRecordRequest, DnsRecordResponse};
pub use error::{ApiError, PROBLEM_JSON};
pub use events::FeedMessage;
pub use nodes::{CreateNodeRequest, EventResponse, NodeResponse};
pub use pki::{CertificateResponse, IssueRequest, IssuedResponse};
pub use power::{BmcRequest, BmcResponse, PowerResponse};
pub use status::StatusResponse;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::model::FieldError;
use crate::pki::Ca;
use crate::secrets::ApiToken;
use crate::store::{Store, StoreError};

/// What every handler shares.
pub struct Shared {
    pub config: Config,
    pub store: Store,
    pub metrics: Arc<Metrics>,
    pub token: ApiToken,
    pub ca: Arc<Ca>,
    /// Templates and the daemon's SSH key, for the boot flow.
    pub boot: Arc<crate::boot::Boot>,
    /// The rendered `GET /api/v1/nodes` body and the registry generation it shows.
    pub node_list_cache: std::sync::Mutex<Option<nodes::ListCache>>,
    /// The cluster join, when `[cluster] enabled` (set once at start).
    pub cluster: std::sync::OnceLock<Arc<crate::cluster::join::Joiner>>,
    /// The add-on engine, when `[cluster] enabled` (set once at start).
    pub addons: std::sync::OnceLock<Arc<crate::addons::Addons>>,
    /// The realm's reconciler, when `[identity] enabled` (set once at start).
    pub identity: std::sync::OnceLock<Arc<crate::identity::Identity>>,
    /// Fires when the daemon stops: long-lived responses (the event stream) end.
    pub shutdown: tokio_util::sync::CancellationToken,
    pub started_at: time::OffsetDateTime,
    /// When a node-facing request was last refused, per node and peer (`boot.rs`).
    pub refusals: boot::Refusals,
    /// The nodes' BMCs (`power/`).
    pub bmcs: Arc<crate::power::Bmcs>,
    /// The coordinated reboots of machines without a cluster (`cluster/plain_reboots.rs`),
    /// when `[cluster]` is off and `[updates]` coordinates reboots (set once at start).
    pub plain_reboots: std::sync::OnceLock<Arc<crate::cluster::plain_reboots::PlainReboots>>,
    /// The release offered to nodes' update checks (`updates/`).
    pub update_targets: crate::updates::Targets,
    /// Wrong API tokens by source address (`throttle.rs`).
    pub auth_failures: throttle::AuthFailures,
    /// One permit per open event stream ([`crate::conns::Caps::event_streams`]).
    pub event_streams: Arc<tokio::sync::Semaphore>,
    pub event_streams_cap: usize,
    /// Event-stream pages being read back from disk at once (`events.rs`).
    pub replay_reads: Arc<tokio::sync::Semaphore>,
}

impl Shared {
    pub fn new(
        config: Config,
        store: Store,
        token: ApiToken,
        ca: Arc<Ca>,
        boot: Arc<crate::boot::Boot>,
        metrics: Arc<Metrics>,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> Shared {
        let caps = crate::conns::Caps::DEFAULT;
        let bmcs = Arc::new(crate::power::Bmcs::new(
            &config.state_dir,
            Some(ca.bundle_pem()),
        ));
        Shared {
            shutdown,
            started_at: time::OffsetDateTime::now_utc(),
            config,
            store,
            metrics,
            token,
            ca,
            boot,
            node_list_cache: std::sync::Mutex::new(None),
            cluster: std::sync::OnceLock::new(),
            addons: std::sync::OnceLock::new(),
            identity: std::sync::OnceLock::new(),
            refusals: boot::Refusals::default(),
            bmcs,
            update_targets: crate::updates::Targets::default(),
            plain_reboots: std::sync::OnceLock::new(),
            auth_failures: throttle::AuthFailures::default(),
            event_streams: Arc::new(tokio::sync::Semaphore::new(caps.event_streams())),
            event_streams_cap: caps.event_streams(),
            replay_reads: Arc::new(tokio::sync::Semaphore::new(events::REPLAY_READS)),
        }
    }

    /// The same, with the event-stream cap of the listeners' actual connection caps.
    pub fn with_caps(mut self, caps: crate::conns::Caps) -> Shared {
        self.event_streams = Arc::new(tokio::sync::Semaphore::new(caps.event_streams()));
        self.event_streams_cap = caps.event_streams();
        self
    }

    /// Whether the console is served over HTTPS (its cookie is then `Secure`): on the API's
    /// own listener with `[api] tls`.
    pub fn console_https(&self) -> bool {
        self.config.api.listen.is_some() && self.config.api.tls
    }
}

/// Which endpoints a listener serves. `/healthz` and `/metrics` are on every listener.
#[derive(Clone, Copy, Debug)]
pub struct Surfaces {
    /// The operator API under `/api/v1` (bearer token).
    pub api: bool,
    /// Endpoints for machines on the provisioning network (`/ca.pem`, later the boot flow):
    /// read-only, no token, no secrets.
    pub node: bool,
    /// The web console (`/console/`): only where the API is, and never where machines can
    /// reach it — the API's own listener, or a shared one on loopback (the embedded defaults).
    pub console: bool,
}

pub type AppState = Arc<Shared>;

/// Runs blocking store work (disk I/O and fsync) off the async workers.
pub(crate) async fn blocking<T: Send + 'static>(
    state: &AppState,
    f: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, ApiError> {
    let store = state.store.clone();
    match tokio::task::spawn_blocking(move || f(&store)).await {
        Ok(result) => result.map_err(ApiError::from),
        Err(e) => Err(ApiError::internal("a registry operation", e)),
    }
}

/// The peer of a connection, on plain and TLS listeners alike (set by `crate::http`).
#[derive(Clone, Copy, Debug)]
pub struct PeerAddr(pub SocketAddr);

/// The HTTP application for one listener.
pub fn router(state: AppState, surfaces: Surfaces) -> Router {
    let mut router = Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics));
    if surfaces.api {
        let (api, _) = api_routes().split();
        let api = api.route_layer(middleware::from_fn_with_state(state.clone(), authenticate));
        router = router
            .nest("/api/v1", api)
            // The document holds no data: no token, so that tools can fetch it.
            .route("/api/v1/openapi.json", get(openapi::serve));
    }
    if surfaces.console {
        router = router.merge(console::routes(state.clone()));
    }
    if surfaces.node {
        router = router
            .route("/ca.pem", get(pki::ca_pem))
            .merge(boot::routes())
            .merge(updates::node_routes())
            .merge(registry::routes());
    }
    router
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            count_requests,
        ))
        .with_state(state)
}

/// The OpenAPI 3.1 document of `/api/v1` (`api/openapi.rs`).
pub fn openapi_document() -> &'static str {
    openapi::document()
}

/// Every route of the operator API, with its documentation (paths relative to `/api/v1`).
fn api_routes() -> openapi::ApiRouter {
    nodes::routes()
        .merge(pki::routes())
        .merge(dns::routes())
        .merge(cluster::routes())
        .merge(addons::routes())
        .merge(boot::operator_routes())
        .merge(events::routes())
        .merge(status::routes())
        .merge(power::routes())
        .merge(identity::routes())
        .merge(updates::routes())
        .routes(utoipa_axum::routes!(backup))
        .routes(utoipa_axum::routes!(revoke_sessions))
}

/// 200 "ok" while the daemon can do its work; 503 naming the problem while registry writes
/// fail (a full disk): nothing can be registered or acknowledged then.
async fn healthz(State(state): State<AppState>) -> Response {
    match state.store.storage_failure() {
        None => "ok\n".into_response(),
        Some(failure) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("unhealthy: registry writes are failing: {failure}\n"),
        )
            .into_response(),
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    let by_state = state.store.count_by_state();
    let mut text = state.metrics.render(&by_state);
    text.push_str(&format!(
        "# HELP lacave_store_writable Whether registry writes work (0 while they fail: a full disk).\n# TYPE lacave_store_writable gauge\nlacave_store_writable {}\n",
        u8::from(state.store.storage_failure().is_none())
    ));
    text.push_str(
        "# HELP lacave_discovered_machines_total Machines seen for the first time and discovered \
         records, by outcome: recorded, rate_limited (over [discovery] new_per_minute, not \
         recorded), evicted (unseen the longest, to stay under max_machines), expired (unseen \
         for forget_after_hours).\n# TYPE lacave_discovered_machines_total counter\n",
    );
    for (outcome, n) in state.store.discovery_counts().snapshot() {
        text.push_str(&format!(
            "lacave_discovered_machines_total{{outcome=\"{outcome}\"}} {n}\n"
        ));
    }
    text.push_str(&format!(
        "# HELP lacave_event_streams Event streams (GET /api/v1/events) open now.\n# TYPE lacave_event_streams gauge\nlacave_event_streams {}\n# HELP lacave_event_streams_max Event streams the daemon serves at once (a quarter of the API's connections; beyond, 503).\n# TYPE lacave_event_streams_max gauge\nlacave_event_streams_max {}\n",
        state.event_streams_cap - state.event_streams.available_permits(),
        state.event_streams_cap
    ));
    if let Some(cluster) = state.cluster.get() {
        text.push_str(&cluster.cert_report().metrics());
        text.push_str(&cluster.snapshot_stats().metrics());
    }
    if let Some(addons) = state.addons.get() {
        text.push_str(&crate::addons::metrics(&addons.statuses()));
    }
    text.push_str(&power_metrics(&state));
    let mut response = text.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

/// `DELETE /api/v1/sessions`: ends every web console session at once (logout everywhere);
/// answers how many ended. The caller's own session, if it used one, ends too.
#[utoipa::path(
    delete, path = "/sessions", tag = "daemon",
    summary = "End every web console session",
    responses((status = 200, description = "How many were ended", body = Revoked))
)]
async fn revoke_sessions(State(state): State<AppState>) -> Result<Response, ApiError> {
    let revoked = blocking(&state, |store| store.revoke_all_sessions()).await?;
    tracing::warn!(revoked, "every web console session was ended on request");
    Ok(axum::Json(Revoked { revoked }).into_response())
}

/// The answer of `DELETE /api/v1/sessions`.
#[derive(serde::Serialize, utoipa::ToSchema)]
struct Revoked {
    /// How many sessions were ended.
    revoked: usize,
}

/// `GET /api/v1/backup`: a consistent copy of the registry (see `store::backup`), for
/// `lacave backup`. It holds the nodes' callback secrets: token only, like every `/api/`.
#[utoipa::path(
    get, path = "/backup", tag = "daemon",
    summary = "A consistent copy of the registry (holds the nodes' callback secrets)",
    responses((status = 200, description = "The backup (JSON lines, for `lacave restore`)", body = String, content_type = "application/json"))
)]
async fn backup(State(state): State<AppState>) -> Result<Response, ApiError> {
    let bytes = blocking(&state, |store| store.backup()).await?;
    tracing::info!(bytes = bytes.len(), "registry backup taken");
    let mut response = bytes.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

/// The nodes' power and their BMCs' reachability, as last seen (an operation, or the API's
/// status request), by node.
fn power_metrics(state: &AppState) -> String {
    let mut out = String::from(
        "# HELP lacave_node_power_on Whether the node's BMC last said it is on (1) or off (0).\n\
         # TYPE lacave_node_power_on gauge\n\
         # HELP lacave_bmc_up Whether the node's BMC answered and accepted the last operation.\n\
         # TYPE lacave_bmc_up gauge\n",
    );
    let mut rows = state.bmcs.statuses();
    rows.sort_by_key(|(mac, _)| *mac);
    for (mac, status) in rows {
        let node = state
            .store
            .get(&[crate::model::NodeKey::Mac(mac)])
            .map(|n| n.display_name())
            .unwrap_or_else(|_| mac.to_string());
        let node: String = node
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':'))
            .collect();
        if let Some(power) = status.state {
            out.push_str(&format!(
                "lacave_node_power_on{{node=\"{node}\"}} {}\n",
                u8::from(power == crate::power::PowerState::On)
            ));
        }
        out.push_str(&format!(
            "lacave_bmc_up{{node=\"{node}\"}} {}\n",
            u8::from(status.reachable)
        ));
    }
    out
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}

/// Lets a request under `/api/` through only with `Authorization: Bearer <token>`, or with
/// a console session whose state-changing requests pass the cross-site checks
/// (`session.rs`). Marks the request with how it was authenticated ([`session::Auth`]).
async fn authenticate(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let peer_addr = request
        .extensions()
        .get::<ConnectInfo<PeerAddr>>()
        .map(|c| c.0.0);
    let peer = peer_addr.map(|p| p.to_string()).unwrap_or_default();
    if let Some(token) = presented {
        let ip = peer_addr.map_or(std::net::IpAddr::from([0, 0, 0, 0]), |p| p.ip());
        return match state
            .auth_failures
            .check(ip, || state.token.matches(token.trim()))
        {
            throttle::Verdict::Accepted => {
                request.extensions_mut().insert(session::Auth::Token);
                Ok(next.run(request).await)
            }
            throttle::Verdict::Refused(failures) => {
                state.metrics.auth_failures.inc(&["api", "refused"]);
                throttle::AuthFailures::log("api", &peer, failures);
                Err(ApiError::unauthorized("the bearer token is not valid"))
            }
            throttle::Verdict::Throttled(left) => {
                state.metrics.auth_failures.inc(&["api", "throttled"]);
                Err(ApiError::too_many_failures(left))
            }
        };
    }
    if session::cookie_secret(request.headers()).is_none() || !console_enabled(&state.config) {
        return Err(ApiError::unauthorized(
            "this endpoint needs an Authorization: Bearer <token> header",
        ));
    }
    let Some(found) = session::session(&state, request.headers()).await? else {
        return Err(ApiError::unauthorized(
            "the console session has ended (expired or logged out): log in again",
        ));
    };
    if session::changes_state(request.method())
        && let Err(e) = session::check_csrf(request.headers(), &found, state.console_https())
    {
        tracing::warn!(%peer, method = %request.method(), "cross-site console request refused");
        return Err(e);
    }
    request.extensions_mut().insert(session::Auth::Session);
    Ok(next.run(request).await)
}

/// Whether the daemon serves the console (and so accepts its sessions): on the API's own
/// listener, or on the shared `[http] listen` only when that listens on loopback, where no
/// machine of the LAN reaches it.
pub fn console_enabled(config: &Config) -> bool {
    config.api.listen.is_some() || config.http.listen.ip().is_loopback()
}

/// The metric label of a request method.
fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// Counts every response by route template (never the raw path, which would let any client
/// create unbounded series), method and status. Every label comes from a closed set: a method
/// outside HTTP's usual ones is `other` (an unauthenticated client could otherwise mint one
/// series per request), a path no route matches is `unmatched`.
async fn count_requests(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let method = method_label(request.method()).to_string();
    let response = next.run(request).await;
    state
        .metrics
        .api_requests
        .inc(&[&route, &method, response.status().as_str()]);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        Config::from_toml(
            &format!("state_dir = \"/tmp/x\"\n{text}"),
            std::path::Path::new("t.toml"),
        )
        .unwrap()
    }

    #[test]
    fn the_console_is_never_where_machines_reach_it() {
        // The embedded defaults: one listener, on loopback.
        assert!(console_enabled(&config("")));
        // One listener on the LAN: machines reach it, so no console there.
        let shared_lan = config("server_ip = \"10.0.0.1\"\n[http]\nlisten = \"0.0.0.0:8080\"\n");
        assert!(!console_enabled(&shared_lan));
        // The API's own listener: the console is there.
        let own = config(
            "server_ip = \"10.0.0.1\"\n[http]\nlisten = \"0.0.0.0:8080\"\n[api]\nlisten = \"0.0.0.0:8443\"\n",
        );
        assert!(console_enabled(&own));
    }
}

//! Flatcar updates: the Omaha endpoint nodes' `update_engine` asks (`POST /v1/update/` on the
//! node listener, no token: the node is the machine the request comes from, found by its MAC
//! in the neighbour table, as the other node endpoints check it) and `GET /api/v1/updates`
//! (every node's update, the release offered, for `lacave updates status`).

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::Serialize;
use utoipa_axum::routes;

use super::openapi::ApiRouter;
use super::{ApiError, AppState, PeerAddr, blocking};
use crate::model::{Node, NodeId, NodeKey, NodeState};
use crate::updates::{self, omaha};

pub(super) fn node_routes() -> Router<AppState> {
    Router::new().route(
        "/v1/update/",
        post(omaha_request).layer(DefaultBodyLimit::max(omaha::MAX_BODY)),
    )
}

pub(super) fn routes() -> ApiRouter {
    ApiRouter::new()
        .routes(routes!(status))
        .routes(routes!(pause))
        .routes(routes!(resume))
}

/// The node a request comes from: its MAC in the kernel's neighbour table (or, with no entry and
/// `[flatcar] trust_routed_peers` or `check_peer = false`, its registered address).
fn node_of_peer(state: &AppState, peer: std::net::IpAddr) -> Option<(NodeId, Node)> {
    let v4 = match peer {
        std::net::IpAddr::V4(v4) => v4,
        std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped()?,
    };
    let by_ip = || {
        state.store.with_registered_nodes(|_, nodes| {
            for n in nodes {
                if n.ip.map(|ip| ip.addr()) == Some(v4) {
                    return Some(n.clone());
                }
            }
            None
        })
    };
    let table = crate::boot::neighbour_table();
    let flatcar = &state.config.flatcar;
    // The machine on this link with that address, else (no neighbour entry: routed) the node
    // registered with it; then the same check as every node endpoint (`boot::check_peer`).
    let node = match crate::boot::neighbour_mac(&table, v4) {
        Some(mac) => state.store.get_by_mac(mac).ok().flatten(),
        None => by_ip(),
    }
    .or_else(|| (!flatcar.check_peer).then(by_ip).flatten())?;
    if flatcar.check_peer
        && crate::boot::check_peer(
            peer,
            node.mac,
            node.ip.map(|ip| ip.addr()),
            flatcar.trust_routed_peers,
            &table,
        )
        .is_err()
    {
        return None;
    }
    if node.state == NodeState::Discovered {
        return None;
    }
    let id = state.store.node_id(&[NodeKey::Mac(node.mac)]).ok()?;
    Some((id, node))
}

fn xml(status: StatusCode, body: String) -> Response {
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/xml; charset=utf-8"),
        )],
        body,
    )
        .into_response()
}

fn refusal(status: StatusCode, why: String) -> Response {
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        )],
        format!("{why}\n"),
    )
        .into_response()
}

async fn omaha_request(
    State(state): State<AppState>,
    ConnectInfo(PeerAddr(peer)): ConnectInfo<PeerAddr>,
    body: Bytes,
) -> Response {
    state.metrics.count_omaha("request");
    if !state.config.updates.enabled {
        return refusal(
            StatusCode::NOT_FOUND,
            "updates are not served here ([updates] enabled = false)".into(),
        );
    }
    let Some((id, node)) = node_of_peer(&state, peer.ip()) else {
        state.metrics.count_omaha("refused");
        tracing::warn!(%peer, "update check refused: not from a registered node");
        return refusal(
            StatusCode::FORBIDDEN,
            format!(
                "{} is not a registered node: updates are served to the registry's nodes only",
                peer.ip()
            ),
        );
    };
    let name = node.display_name();
    let request = match omaha::parse(&body) {
        Ok(r) => r,
        Err(e) => {
            state.metrics.count_omaha("malformed");
            tracing::warn!(node = %name, %peer, error = %e, "update check refused: malformed Omaha request");
            return refusal(
                StatusCode::BAD_REQUEST,
                format!("not an Omaha request: {e}"),
            );
        }
    };
    let target = state.update_targets.for_node(&state.config, &node).await;
    let now = time::OffsetDateTime::now_utc();
    let mut answers = Vec::new();
    let mut flatcar_app = None;
    for app in &request.apps {
        if !app.is_flatcar() {
            state.metrics.count_omaha("unknown_app");
            tracing::warn!(node = %name, app = %app.app_id, "update check for an unknown application");
            answers.push((app.app_id.clone(), omaha::AppAnswer::UnknownApp));
            continue;
        }
        let verdict = app
            .update_check
            .then(|| updates::verdict(&app.version, &target));
        let check = verdict.as_ref().map(updates::Verdict::check);
        if let Some(check) = &check {
            state.metrics.count_omaha(match check {
                omaha::Check::Update(_) => "update",
                omaha::Check::NoUpdate => "noupdate",
                omaha::Check::Internal => "unanswered",
            });
        }
        answers.push((
            app.app_id.clone(),
            omaha::AppAnswer::Ok {
                ping: app.ping,
                events: app.events.len(),
                check,
            },
        ));
        if flatcar_app.is_none() {
            flatcar_app = Some((app.clone(), verdict));
        }
    }
    if let Some((app, verdict)) = flatcar_app {
        let recorded = blocking(&state, move |store| {
            let prev = store.node_update(id)?;
            let (next, events) = updates::observe(prev.as_ref(), &app, verdict.as_ref(), now);
            if updates::worth_writing(prev.as_ref(), &next) || !events.is_empty() {
                for (_, message) in &events {
                    tracing::info!(node = %name, "update: {message}");
                }
                store.record_node_update(id, &next, events)?;
            }
            Ok(())
        })
        .await;
        if let Err(e) = recorded {
            // The answer does not depend on the record: the node still gets it.
            tracing::warn!(node = %node.display_name(), error = ?e, "recording an update check failed");
        }
    }
    let midnight = now.replace_time(time::Time::MIDNIGHT);
    let elapsed = (now - midnight).whole_seconds().clamp(0, 86_399) as u32;
    xml(StatusCode::OK, omaha::render(&answers, elapsed))
}

/// `GET /api/v1/updates`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct UpdatesResponse {
    /// Whether the daemon answers update checks (`[updates] enabled`).
    pub enabled: bool,
    /// The group of nodes without a `lacave.io/update-group` label (`GROUP=`).
    pub group: String,
    /// `REBOOT_STRATEGY=` in new nodes' `update.conf` (none: Flatcar's default).
    pub reboot_strategy: Option<String>,
    /// The release offered now, when the mirror can offer one.
    pub target: Option<String>,
    /// Why no release can be offered.
    pub target_error: Option<String>,
    /// The releases of other update groups (`[updates.releases]`; a node's group is its label
    /// `lacave.io/update-group`); every other group gets `target`.
    pub groups: Vec<GroupRelease>,
    /// Whether the daemon reboots nodes with an update applied (`coordinate_reboots` and
    /// `reboot_strategy = "off"`).
    pub coordinate_reboots: bool,
    /// When reboots may start (UTC), none: any time.
    pub window: Option<String>,
    /// Workers that may be rebooting (or not Ready) at once.
    pub max_unavailable: u32,
    /// The coordinated reboots: cluster nodes drained first with `[cluster] enabled`, else
    /// booted machines one at a time.
    pub reboots: Option<crate::cluster::join::RebootStatus>,
    /// Every node that reported, by hostname.
    pub nodes: Vec<NodeUpdateView>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct NodeUpdateView {
    pub node: String,
    /// The Flatcar version it runs.
    pub version: String,
    pub group: String,
    /// up-to-date, offered, downloading, downloaded, applied (waits for a reboot), failed,
    /// ahead (newer than the target) or unanswered.
    pub state: String,
    /// The release offered or being applied.
    pub target: Option<String>,
    /// update_engine's code of the last error, and its name.
    pub error: Option<String>,
    pub since: String,
    pub checked_at: String,
}

/// One group's release (`[updates.releases]`).
#[derive(Serialize, utoipa::ToSchema)]
pub struct GroupRelease {
    pub group: String,
    /// As configured: a dotted version or `current`.
    pub release: String,
    /// The version offered to the group's nodes.
    pub target: Option<String>,
    /// Why none can be offered.
    pub target_error: Option<String>,
}

#[utoipa::path(
    get, path = "/updates", tag = "updates", operation_id = "updates_status",
    summary = "The release offered to nodes, and each node's Flatcar update as it reported it",
    responses((status = 200, description = "The updates' state", body = UpdatesResponse))
)]
async fn status(State(state): State<AppState>) -> Result<Response, ApiError> {
    let u = &state.config.updates;
    let target = state.update_targets.get(&state.config, &u.version).await;
    let mut groups = Vec::new();
    for (group, release) in &u.releases {
        let t = state.update_targets.get(&state.config, release).await;
        groups.push(GroupRelease {
            group: group.clone(),
            release: release.clone(),
            target: t.as_ref().ok().map(|t| t.version.clone()),
            target_error: t.err().map(|e| e.to_string()),
        });
    }
    let listed = blocking(&state, |store| store.list_node_updates()).await?;
    let mut nodes: Vec<NodeUpdateView> = listed
        .into_iter()
        .filter_map(|(id, u)| {
            let node = state.store.get(&[NodeKey::Id(id)]).ok()?;
            let rfc = |t: time::OffsetDateTime| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .unwrap_or_default()
            };
            Some(NodeUpdateView {
                node: node.display_name(),
                version: u.version,
                group: u.group,
                state: u.state.to_string(),
                target: u.target,
                error: u
                    .error_code
                    .map(|c| format!("{c}: {}", updates::error_name(c))),
                since: rfc(u.since),
                checked_at: rfc(u.checked_at),
            })
        })
        .collect();
    nodes.sort_by(|a, b| a.node.cmp(&b.node));
    Ok(axum::Json(UpdatesResponse {
        enabled: u.enabled,
        group: u.group.clone(),
        reboot_strategy: u.reboot_strategy.clone(),
        target: target.as_ref().ok().map(|t| t.version.clone()),
        target_error: target.err().map(|e| e.to_string()),
        groups,
        coordinate_reboots: u.coordinate_reboots && u.reboot_strategy.as_deref() == Some("off"),
        window: u.window.as_ref().map(|w| w.text.clone()),
        max_unavailable: u.max_unavailable,
        reboots: match (state.cluster.get(), state.plain_reboots.get()) {
            (Some(j), _) => Some(j.reboot_status()),
            (None, Some(p)) => Some(p.status()),
            (None, None) => None,
        },
        nodes,
    })
    .into_response())
}

/// Pauses or resumes whichever rollout runs: the cluster's, or the machines' without one.
fn set_paused(
    state: &AppState,
    paused: bool,
) -> Result<crate::cluster::join::RebootStatus, ApiError> {
    match (state.cluster.get(), state.plain_reboots.get()) {
        (Some(j), _) => Ok(j.set_reboots_paused(paused)),
        (None, Some(p)) => Ok(p.set_paused(paused)),
        (None, None) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "reboots_off",
            "the daemon coordinates no reboot ([updates] enabled or coordinate_reboots is false)",
        )),
    }
}

#[utoipa::path(
    post, path = "/updates/pause", tag = "updates", operation_id = "updates_pause",
    summary = "Start no coordinated reboot until resumed (one running ends)",
    responses(
        (status = 200, description = "The rollout, paused", body = crate::cluster::join::RebootStatus),
        (status = 409, description = "The daemon coordinates no reboot", body = super::error::Problem, content_type = "application/problem+json"),
    )
)]
async fn pause(State(state): State<AppState>) -> Result<Response, ApiError> {
    Ok(axum::Json(set_paused(&state, true)?).into_response())
}

#[utoipa::path(
    post, path = "/updates/resume", tag = "updates", operation_id = "updates_resume",
    summary = "Let coordinated reboots start again, after a pause or a stop",
    responses(
        (status = 200, description = "The rollout, resumed", body = crate::cluster::join::RebootStatus),
        (status = 409, description = "The daemon coordinates no reboot", body = super::error::Problem, content_type = "application/problem+json"),
    )
)]
async fn resume(State(state): State<AppState>) -> Result<Response, ApiError> {
    Ok(axum::Json(set_paused(&state, false)?).into_response())
}

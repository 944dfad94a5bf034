//! The cluster endpoints: `GET /api/v1/cluster` (nodes as the registry and the API server see
//! them), `POST /api/v1/cluster/kubeconfig` (a person's kubeconfig from the cluster's CA, recorded),
//! `GET /api/v1/cluster/kubeconfigs` (those issued: who, when, until when), and
//! `GET /api/v1/cluster/inventory` (a kubespray inventory of the registry), and
//! `GET /api/v1/cluster/certs` (every certificate that can expire, `cluster/certs.rs`), and
//! the etcd snapshots: `GET|POST /api/v1/cluster/snapshots`,
//! `POST /api/v1/cluster/snapshots/{name}/restore` and `GET /api/v1/cluster/restore`; and
//! Kubernetes upgrades: `POST|GET /api/v1/cluster/upgrade` (`cluster/join/upgrade.rs`).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::nodes::json_object;
use super::openapi::ApiRouter;
use super::{ApiError, AppState, FieldError};
use crate::cluster::join::Joiner;
use utoipa_axum::routes;

pub(super) fn routes() -> ApiRouter {
    ApiRouter::new()
        .routes(routes!(status))
        .routes(routes!(kubeconfig))
        .routes(routes!(kubeconfigs))
        .routes(routes!(inventory))
        .routes(routes!(certs))
        .routes(routes!(renew_certs))
        .routes(routes!(snapshots, save_snapshot))
        .routes(routes!(restore_snapshot))
        .routes(routes!(restore_status))
        .routes(routes!(upgrade_status, upgrade))
}

/// The answer of `GET /api/v1/cluster/snapshots`.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SnapshotList {
    /// Where the daemon keeps them (a restore takes a file from there only).
    pub dir: String,
    /// `[cluster.etcd_snapshot]`: every so many minutes (0: only on request), so many kept.
    pub interval_minutes: u32,
    pub keep: u32,
    /// Newest first.
    pub snapshots: Vec<crate::cluster::snapshot::SnapshotInfo>,
}

fn snapshot_error(error: crate::cluster::snapshot::SnapshotError) -> ApiError {
    use crate::cluster::snapshot::SnapshotError as E;
    match error {
        E::NoMember(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "etcd_unavailable",
            error.to_string(),
        ),
        E::NoSpace { .. } => ApiError::new(
            StatusCode::INSUFFICIENT_STORAGE,
            "no_space",
            error.to_string(),
        ),
        E::NotFound { .. } => {
            ApiError::new(StatusCode::NOT_FOUND, "no_such_snapshot", error.to_string())
        }
        E::Invalid { .. } => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_snapshot",
            error.to_string(),
        ),
        E::Io { .. } => ApiError::internal("the snapshot directory", error),
    }
}

/// `GET /api/v1/cluster/snapshots`: the etcd snapshots the daemon holds, newest first.
#[utoipa::path(
    get, path = "/cluster/snapshots", tag = "cluster", operation_id = "list_snapshots",
    summary = "The etcd snapshots the daemon holds, newest first",
    responses((status = 200, description = "The snapshots", body = SnapshotList), (status = 409, description = "The daemon builds no cluster (`[cluster] enabled = false`), or not now (`code` says why)", body = super::error::Problem, content_type = "application/problem+json"))
)]
async fn snapshots(State(state): State<AppState>) -> Result<Response, ApiError> {
    let joiner = joiner(&state)?;
    let snaps = joiner.snapshots().clone();
    let list = tokio::task::spawn_blocking(move || snaps.list())
        .await
        .map_err(|e| ApiError::internal("the snapshot list", e))?
        .map_err(snapshot_error)?;
    let settings = &state.config.cluster.etcd_snapshot;
    Ok(axum::Json(SnapshotList {
        dir: joiner.snapshots().dir().display().to_string(),
        interval_minutes: settings.interval_minutes,
        keep: settings.keep,
        snapshots: list,
    })
    .into_response())
}

/// `POST /api/v1/cluster/snapshots`: takes a snapshot now (201 with it); the oldest beyond
/// `keep` go.
#[utoipa::path(
    post, path = "/cluster/snapshots", tag = "cluster",
    summary = "Take an etcd snapshot now",
    responses(
        (status = 201, description = "Taken", body = crate::cluster::snapshot::SnapshotInfo),
        (status = 409, description = "The daemon builds no cluster (`[cluster] enabled = false`), or not now (`code` says why)", body = super::error::Problem, content_type = "application/problem+json"),
        (status = 503, description = "No etcd member answers", body = super::error::Problem, content_type = "application/problem+json"),
        (status = 507, description = "Not enough free space in the snapshot directory", body = super::error::Problem, content_type = "application/problem+json"),
    )
)]
async fn save_snapshot(State(state): State<AppState>) -> Result<Response, ApiError> {
    let info = joiner(&state)?
        .take_snapshot("request")
        .await
        .map_err(snapshot_error)?;
    Ok((StatusCode::CREATED, axum::Json(info)).into_response())
}

/// `POST /api/v1/cluster/snapshots/{name}/restore`: checks the snapshot, then restores the
/// cluster's etcd from it in the background (202); `GET /api/v1/cluster/restore` follows.
#[utoipa::path(
    post, path = "/cluster/snapshots/{name}/restore", tag = "cluster",
    summary = "Restore the cluster's etcd from a snapshot, in the background",
    params(("name" = String, Path, description = "The snapshot's file name")),
    responses(
        (status = 202, description = "Checked and started: `GET /api/v1/cluster/restore` follows", body = crate::cluster::join::RestoreStatus),
        (status = 404, description = "No such snapshot", body = super::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "The daemon builds no cluster (`[cluster] enabled = false`), or not now (`code` says why)", body = super::error::Problem, content_type = "application/problem+json"),
        (status = 422, description = "The snapshot is refused (damaged, or of another cluster)", body = super::error::Problem, content_type = "application/problem+json"),
    )
)]
async fn restore_snapshot(
    State(state): State<AppState>,
    axum::extract::Path(name): axum::extract::Path<String>,
) -> Result<Response, ApiError> {
    use crate::cluster::join::RestoreError;
    let status = joiner(&state)?
        .start_restore(&name)
        .await
        .map_err(|e| match e {
            RestoreError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, "busy", m),
            RestoreError::Snapshot(e) => snapshot_error(e),
        })?;
    Ok((StatusCode::ACCEPTED, axum::Json(status)).into_response())
}

/// `GET /api/v1/cluster/restore`: the last restore since the daemon started.
#[utoipa::path(
    get, path = "/cluster/restore", tag = "cluster",
    summary = "The last restore since the daemon started",
    responses((status = 200, description = "Its progress", body = crate::cluster::join::RestoreStatus), (status = 409, description = "The daemon builds no cluster (`[cluster] enabled = false`), or not now (`code` says why)", body = super::error::Problem, content_type = "application/problem+json"))
)]
async fn restore_status(State(state): State<AppState>) -> Result<Response, ApiError> {
    Ok(axum::Json(joiner(&state)?.restore_status()).into_response())
}

/// `POST /api/v1/cluster/upgrade`: checks and plans an upgrade (`{"to": "v1.37.2"}`), or the
/// resume of a stopped one (`{"resume": true}`); a dry run (`"dry_run": true`) answers 200
/// with the plan and changes nothing, otherwise the run starts in the background (202).
#[utoipa::path(
    post, path = "/cluster/upgrade", tag = "cluster", operation_id = "start_upgrade",
    summary = "Plan and start a Kubernetes upgrade (or its dry run, or the resume of a stopped one)",
    request_body = crate::cluster::join::UpgradeRequest,
    responses(
        (status = 200, description = "A dry run's plan (nothing changed), or nothing to do", body = crate::cluster::join::UpgradeStatus),
        (status = 202, description = "Started: `GET` follows", body = crate::cluster::join::UpgradeStatus),
        (status = 409, description = "The daemon builds no cluster (`[cluster] enabled = false`), or not now (`code` says why)", body = super::error::Problem, content_type = "application/problem+json"),
        (status = 422, description = "A bad field (named), or refused by the version skew rules or the mirror", body = super::error::Problem, content_type = "application/problem+json"),
    )
)]
async fn upgrade(State(state): State<AppState>, body: Bytes) -> Result<Response, ApiError> {
    use crate::cluster::join::{UpgradeError, UpgradeRequest};
    let joiner = joiner(&state)?;
    let map = json_object(&body, &["to", "dry_run", "resume", "drain_timeout_secs"])?;
    // Each field alone first, so that a wrong type is reported under its name.
    let errors: Vec<FieldError> = map
        .iter()
        .filter_map(|(k, v)| {
            let one = serde_json::json!({ k.as_str(): v });
            serde_json::from_value::<UpgradeRequest>(one)
                .err()
                .map(|e| FieldError {
                    field: k.clone(),
                    reason: e.to_string(),
                })
        })
        .collect();
    if !errors.is_empty() {
        return Err(ApiError::invalid(errors));
    }
    let request: UpgradeRequest = serde_json::from_value(serde_json::Value::Object(map))
        .map_err(|e| ApiError::internal("the upgrade request", e))?;
    let dry_run = request.dry_run;
    let status = joiner.start_upgrade(request).await.map_err(|e| match e {
        UpgradeError::Invalid { field, reason } => ApiError::invalid(vec![FieldError {
            field: field.into(),
            reason,
        }]),
        UpgradeError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, "busy", m),
        UpgradeError::Refused(m) => {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "upgrade_refused", m)
        }
        UpgradeError::Store(e) => ApiError::internal("the registry", e),
    })?;
    let code = if dry_run || status.state == "done" {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    Ok((code, axum::Json(status)).into_response())
}

/// `GET /api/v1/cluster/upgrade`: the last upgrade run (`state: idle` if none).
#[utoipa::path(
    get, path = "/cluster/upgrade", tag = "cluster",
    summary = "The last upgrade run (`state: idle` if none)",
    responses((status = 200, description = "The run, node by node", body = crate::cluster::join::UpgradeStatus), (status = 409, description = "The daemon builds no cluster (`[cluster] enabled = false`), or not now (`code` says why)", body = super::error::Problem, content_type = "application/problem+json"))
)]
async fn upgrade_status(State(state): State<AppState>) -> Result<Response, ApiError> {
    let status =
        joiner(&state)?
            .upgrade_status()
            .unwrap_or_else(|| crate::cluster::join::UpgradeStatus {
                state: "idle".into(),
                ..Default::default()
            });
    Ok(axum::Json(status).into_response())
}

/// `POST /api/v1/cluster/certs/renew`: renews kubeadm's certificates on every control plane
/// now, one at a time, in the background (minutes: each control plane's static pods restart);
/// 202 once started. Progress is in each control plane's history (phase `certs`) and the
/// daemon's log; `GET /api/v1/cluster/certs` shows the new dates once done.
#[utoipa::path(
    post, path = "/cluster/certs/renew", tag = "cluster", operation_id = "renew_cluster_certs",
    summary = "Renew kubeadm's certificates on every control plane, one at a time, in the background",
    responses((status = 202, description = "Started; progress in each control plane's history", body = Started), (status = 409, description = "The daemon builds no cluster (`[cluster] enabled = false`), or not now (`code` says why)", body = super::error::Problem, content_type = "application/problem+json"))
)]
async fn renew_certs(State(state): State<AppState>) -> Result<Response, ApiError> {
    let joiner = joiner(&state)?;
    tokio::spawn(async move {
        match joiner.renew_certs(true).await {
            Ok(renewed) => {
                tracing::info!(?renewed, "control-plane certificates renewed on request")
            }
            Err(error) => tracing::error!(%error, "certificate renewal on request failed"),
        }
    });
    Ok((StatusCode::ACCEPTED, axum::Json(Started { started: true })).into_response())
}

/// The answer to a request that starts work in the background.
#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct Started {
    pub started: bool,
}

#[derive(Deserialize)]
struct CertsQuery {
    #[serde(default)]
    refresh: bool,
}

/// `GET /api/v1/cluster/certs[?refresh=true]`: every certificate of the cluster that can
/// expire, soonest first, from the last hourly check (or a fresh one).
#[utoipa::path(
    get, path = "/cluster/certs", tag = "cluster", operation_id = "cluster_certs",
    summary = "Every cluster certificate that can expire, soonest first",
    params(("refresh" = Option<bool>, Query, description = "Check now rather than show the last hourly check")),
    responses((status = 200, description = "The report", body = crate::cluster::certs::CertReport), (status = 409, description = "The daemon builds no cluster (`[cluster] enabled = false`), or not now (`code` says why)", body = super::error::Problem, content_type = "application/problem+json"))
)]
async fn certs(
    State(state): State<AppState>,
    axum::extract::Query(q): axum::extract::Query<CertsQuery>,
) -> Result<Response, ApiError> {
    let joiner = joiner(&state)?;
    let report = if q.refresh || joiner.cert_report().checked_at.is_none() {
        joiner.check_certs().await
    } else {
        joiner.cert_report()
    };
    Ok(axum::Json(report).into_response())
}

/// The body of `POST /api/v1/cluster/kubeconfig`; every field is optional.
#[derive(Clone, Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct KubeconfigRequest {
    /// The user name in the client certificate (default `admin`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Its groups (default `kubeadm:cluster-admins`, which `kubeadm init` binds to
    /// cluster-admin).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groups: Option<Vec<String>>,
    /// How long it is valid: `30m`, `24h` (default), `7d`; at most a year.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
    /// `true`: no certificate, but a kubeconfig that signs in through the realm of
    /// `[identity]` with kubelogin (`kubectl oidc-login`); `user` then only names its context
    /// and is offered to Keycloak's login page. Without `groups` or `ttl` (the realm says).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oidc: Option<bool>,
}

#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct KubeconfigResponse {
    pub kubeconfig: String,
}

fn joiner(state: &AppState) -> Result<Arc<Joiner>, ApiError> {
    state.cluster.get().cloned().ok_or_else(|| {
        ApiError::new(
            StatusCode::CONFLICT,
            "cluster_disabled",
            "the daemon builds no Kubernetes cluster ([cluster] enabled = false)",
        )
    })
}

#[utoipa::path(
    get, path = "/cluster", tag = "cluster", operation_id = "cluster_status",
    summary = "The cluster: its nodes as the registry and the API server see them, the upgrade run",
    responses((status = 200, description = "The cluster", body = crate::cluster::join::ClusterStatus), (status = 409, description = "The daemon builds no cluster (`[cluster] enabled = false`), or not now (`code` says why)", body = super::error::Problem, content_type = "application/problem+json"))
)]
async fn status(State(state): State<AppState>) -> Result<Response, ApiError> {
    let status = joiner(&state)?
        .status()
        .await
        .map_err(|e| ApiError::internal("the cluster status", e))?;
    Ok(axum::Json(status).into_response())
}

/// `30m`, `24h`, `7d` → seconds.
fn parse_ttl(text: &str) -> Option<i64> {
    let (number, unit) = text.split_at(text.len().checked_sub(1)?);
    let n: i64 = number.parse().ok().filter(|n| *n > 0)?;
    let seconds = match unit {
        "m" => n.checked_mul(60)?,
        "h" => n.checked_mul(3600)?,
        "d" => n.checked_mul(86_400)?,
        _ => return None,
    };
    (60..=366 * 86_400).contains(&seconds).then_some(seconds)
}

fn check_name(field: &str, value: &str, errors: &mut Vec<FieldError>) {
    let reason = if value.is_empty() || value.len() > 64 {
        Some("must be 1 to 64 characters".to_string())
    } else if value.chars().any(|c| c.is_control() || c.is_whitespace()) {
        Some("must be printable, without spaces".to_string())
    } else if value.starts_with("system:") {
        Some(format!(
            "{value:?}: system: names belong to Kubernetes itself (system:masters bypasses every authorization); use a group bound by a ClusterRoleBinding"
        ))
    } else if field == "user"
        && (crate::model::RESERVED_KUBERNETES_USERS.contains(&value)
            || value.starts_with("lacave:"))
    {
        Some(format!(
            "{value:?} is a name the daemon or kubeadm's components use ({}); a person's certificate must not pass for one of them",
            crate::model::RESERVED_KUBERNETES_USERS.join(", ")
        ))
    } else {
        None
    };
    if let Some(reason) = reason {
        errors.push(FieldError {
            field: field.to_string(),
            reason,
        });
    }
}

#[utoipa::path(
    post, path = "/cluster/kubeconfig", tag = "cluster", operation_id = "issue_kubeconfig",
    summary = "A kubeconfig with a client certificate for a person (recorded, not revocable)",
    request_body(content = KubeconfigRequest, description = "Every field optional; an empty body is the defaults"),
    responses(
        (status = 200, description = "The kubeconfig", body = KubeconfigResponse),
        (status = 409, description = "The daemon builds no cluster (`[cluster] enabled = false`), or not now (`code` says why)", body = super::error::Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields, each named in `errors` (a `system:` name, a reserved user, a bad ttl)", body = super::error::Problem, content_type = "application/problem+json"),
    )
)]
async fn kubeconfig(State(state): State<AppState>, body: Bytes) -> Result<Response, ApiError> {
    let joiner = joiner(&state)?;
    let request: KubeconfigRequest = if body.is_empty() {
        KubeconfigRequest::default()
    } else {
        let map = json_object(&body, &["user", "groups", "ttl", "oidc"])?;
        serde_json::from_value(serde_json::Value::Object(map)).map_err(|e| {
            ApiError::invalid(vec![FieldError {
                field: String::new(),
                reason: e.to_string(),
            }])
        })?
    };
    if request.oidc == Some(true) {
        return oidc_kubeconfig(&state, &joiner, request);
    }
    let user = request.user.unwrap_or_else(|| "admin".into());
    let groups = request
        .groups
        .unwrap_or_else(|| vec!["kubeadm:cluster-admins".into()]);
    let ttl_text = request.ttl.unwrap_or_else(|| "24h".into());
    let mut errors = Vec::new();
    check_name("user", &user, &mut errors);
    for (i, g) in groups.iter().enumerate() {
        check_name(&format!("groups[{i}]"), g, &mut errors);
    }
    let ttl = parse_ttl(&ttl_text);
    if ttl.is_none() {
        errors.push(FieldError {
            field: "ttl".into(),
            reason: format!(
                "{ttl_text:?} is not a duration from 1m to 366d (e.g. \"30m\", \"24h\", \"7d\")"
            ),
        });
    }
    if !errors.is_empty() {
        return Err(ApiError::invalid(errors));
    }
    let ttl = time::Duration::seconds(ttl.unwrap_or(86_400));
    let text = joiner
        .kubeconfig(&user, &groups, ttl)
        .map_err(|e| ApiError::internal("issuing a client certificate", e))?;
    tracing::info!(%user, groups = %groups.join(","), ttl = %ttl_text, "kubeconfig issued");
    Ok(axum::Json(KubeconfigResponse { kubeconfig: text }).into_response())
}

/// A kubeconfig whose user signs in through the realm (`"oidc": true`).
fn oidc_kubeconfig(
    state: &AppState,
    joiner: &Joiner,
    request: KubeconfigRequest,
) -> Result<Response, ApiError> {
    let identity = super::identity::identity(state)?;
    let mut errors = Vec::new();
    for (field, set) in [
        ("groups", request.groups.is_some()),
        ("ttl", request.ttl.is_some()),
    ] {
        if set {
            errors.push(FieldError {
                field: field.into(),
                reason: "not with \"oidc\": true: the realm gives the groups, and Keycloak the tokens' lifetime".into(),
            });
        }
    }
    if let Some(user) = &request.user {
        check_name("user", user, &mut errors);
    }
    if !errors.is_empty() {
        return Err(ApiError::invalid(errors));
    }
    let config = identity.config();
    let secret = identity
        .client_secret()
        .map_err(|e| ApiError::internal("the client secret", e))?;
    let text = joiner.oidc_kubeconfig(
        request.user.as_deref(),
        &config.issuer(),
        &config.client_id,
        &secret,
        &state.ca.bundle_pem(),
    );
    tracing::info!(
        user = request.user.as_deref().unwrap_or("-"),
        "OIDC kubeconfig handed out"
    );
    Ok(axum::Json(KubeconfigResponse { kubeconfig: text }).into_response())
}

/// Every kubeconfig issued to a person (user, groups, when, until when), oldest first.
#[utoipa::path(
    get, path = "/cluster/kubeconfigs", tag = "cluster", operation_id = "list_kubeconfigs",
    summary = "Every kubeconfig issued to a person, oldest first",
    responses((status = 200, description = "Who, which groups, when, until when", body = [crate::model::KubeconfigRecord]))
)]
async fn kubeconfigs(State(state): State<AppState>) -> Result<Response, ApiError> {
    let records = state.store.kubeconfigs()?;
    Ok(axum::Json(records).into_response())
}

#[utoipa::path(
    get, path = "/cluster/inventory", tag = "cluster", operation_id = "cluster_inventory",
    summary = "A kubespray inventory of the registry",
    responses((status = 200, description = "The inventory (YAML)", body = String, content_type = "application/yaml"))
)]
async fn inventory(State(state): State<AppState>) -> Result<Response, ApiError> {
    let nodes = state.store.list_nodes()?;
    let key = state.config.state_dir.join("ssh/id_ed25519");
    let text = crate::cluster::inventory::kubespray(&nodes, &key.display().to_string());
    Ok(([(header::CONTENT_TYPE, "application/yaml")], text).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_person_cannot_be_issued_the_daemons_or_kubeadms_names() {
        for name in [
            "lacave",
            "lacave:x",
            "kubernetes-admin",
            "kubernetes-super-admin",
            "system:masters",
        ] {
            let mut errors = Vec::new();
            check_name("user", name, &mut errors);
            assert_eq!(errors.len(), 1, "{name}");
            assert_eq!(errors[0].field, "user");
        }
        let mut errors = Vec::new();
        check_name("user", "alice", &mut errors);
        // A group may be named like the daemon: it grants nothing by its name.
        check_name("groups[0]", "lacave", &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
    }

    #[test]
    fn ttls() {
        assert_eq!(parse_ttl("30m"), Some(1800));
        assert_eq!(parse_ttl("24h"), Some(86_400));
        assert_eq!(parse_ttl("7d"), Some(604_800));
        for bad in [
            "",
            "h",
            "0h",
            "10s",
            "-1h",
            "400d",
            "1.5h",
            "99999999999999999d",
        ] {
            assert_eq!(parse_ttl(bad), None, "{bad}");
        }
    }
}

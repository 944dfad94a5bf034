//! The add-on endpoints: `GET /api/v1/addons` (every add-on's state), `GET
//! /api/v1/addons/{name}` (one, with its unhealthy objects, conflicts and events), `POST
//! /api/v1/addons/{name}/apply` (reconcile now), `POST /api/v1/addons/{name}/token` (a
//! short-lived token for the add-on's login account: secret, on the authenticated API only).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::nodes::json_object;
use super::openapi::ApiRouter;
use super::{ApiError, AppState, FieldError};
use crate::addons::Addons;
use utoipa_axum::routes;

pub(super) fn routes() -> ApiRouter {
    ApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(one))
        .routes(routes!(apply))
        .routes(routes!(token))
}

fn engine(state: &AppState) -> Result<Arc<Addons>, ApiError> {
    state.addons.get().cloned().ok_or_else(|| {
        ApiError::new(
            StatusCode::CONFLICT,
            "cluster_disabled",
            "the daemon builds no Kubernetes cluster ([cluster] enabled = false), so it applies no add-ons",
        )
    })
}

fn no_such(name: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "addon_not_found",
        format!(
            "no add-on {:?} (known: {})",
            crate::model::printable(name, 64),
            crate::model::ADDON_NAMES.join(", ")
        ),
    )
}

#[utoipa::path(
    get, path = "/addons", tag = "addons", operation_id = "list_addons", operation_id = "apply_addons", operation_id = "get_addon", operation_id = "list_addons",
    summary = "Every add-on and where it stands",
    responses((status = 200, description = "The add-ons", body = [crate::addons::AddonStatus]), (status = 409, description = "The daemon builds no cluster (`[cluster] enabled = false`), or not now (`code` says why)", body = super::error::Problem, content_type = "application/problem+json"))
)]
async fn list(State(state): State<AppState>) -> Result<Response, ApiError> {
    Ok(axum::Json(engine(&state)?.statuses()).into_response())
}

#[utoipa::path(
    get, path = "/addons/{name}", tag = "addons", operation_id = "get_addon",
    summary = "One add-on, with its unhealthy objects, conflicts and events",
    params(("name" = String, Path, description = "The add-on's name")),
    responses((status = 200, description = "The add-on", body = crate::addons::AddonStatus), (status = 404, description = "No such add-on", body = super::error::Problem, content_type = "application/problem+json"), (status = 409, description = "The daemon builds no cluster (`[cluster] enabled = false`), or not now (`code` says why)", body = super::error::Problem, content_type = "application/problem+json"))
)]
async fn one(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let status = engine(&state)?
        .status(&name)
        .ok_or_else(|| no_such(&name))?;
    Ok(axum::Json(status).into_response())
}

#[utoipa::path(
    post, path = "/addons/{name}/apply", tag = "addons", operation_id = "apply_addons",
    summary = "Reconcile the add-ons now",
    params(("name" = String, Path, description = "The add-on's name")),
    responses((status = 202, description = "A pass is started", body = crate::addons::AddonStatus), (status = 404, description = "No such add-on", body = super::error::Problem, content_type = "application/problem+json"), (status = 409, description = "The daemon builds no cluster (`[cluster] enabled = false`), or not now (`code` says why)", body = super::error::Problem, content_type = "application/problem+json"))
)]
async fn apply(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let engine = engine(&state)?;
    let status = engine.status(&name).ok_or_else(|| no_such(&name))?;
    if !status.enabled {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "addon_disabled",
            format!("the add-on {name} is turned off ([addons.{name}] enabled = false)"),
        ));
    }
    engine.kick();
    Ok((StatusCode::ACCEPTED, axum::Json(status)).into_response())
}

/// The body of `POST /api/v1/addons/{name}/token`: `{"ttl": "1h"}` (10m to 24h; default 1h).
#[utoipa::path(
    post, path = "/addons/{name}/token", tag = "addons", operation_id = "addon_token",
    summary = "A short-lived token for the add-on's login account (the dashboard's admin)",
    params(("name" = String, Path, description = "The add-on's name")),
    request_body(content = TokenRequest, description = "Optional: how long"),
    responses(
        (status = 200, description = "The token", body = TokenResponse),
        (status = 404, description = "No such add-on", body = super::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "The cluster is off, or the add-on has no login account", body = super::error::Problem, content_type = "application/problem+json"),
        (status = 422, description = "`ttl` is not a duration from 10m to 24h", body = super::error::Problem, content_type = "application/problem+json"),
    )
)]
async fn token(
    State(state): State<AppState>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let engine = engine(&state)?;
    engine.status(&name).ok_or_else(|| no_such(&name))?;
    let ttl = if body.is_empty() {
        3600
    } else {
        let object = json_object(&body, &["ttl"])?;
        match object.get("ttl") {
            None => 3600,
            Some(v) => match v.as_str().and_then(parse_ttl) {
                Some(s) => s,
                None => {
                    return Err(ApiError::invalid(vec![FieldError {
                        field: "ttl".into(),
                        reason: "must be a duration from 10m to 24h, such as \"30m\" or \"2h\""
                            .into(),
                    }]));
                }
            },
        }
    };
    let token = engine
        .token(&name, Duration::from_secs(ttl))
        .await
        .map_err(|e| ApiError::new(StatusCode::CONFLICT, "no_token", e))?;
    Ok(axum::Json(TokenResponse {
        token,
        ttl_secs: ttl,
    })
    .into_response())
}

/// The body of `POST /api/v1/addons/{name}/token` (documentation: the handler reads the
/// field itself, to name it in errors).
#[derive(serde::Deserialize, utoipa::ToSchema)]
#[allow(dead_code)]
pub(super) struct TokenRequest {
    /// How long the token lasts: `10m` to `24h` (default `1h`).
    ttl: Option<String>,
}

/// The answer of `POST /api/v1/addons/{name}/token`: a secret, on the authenticated API only.
#[derive(serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct TokenResponse {
    pub token: String,
    pub ttl_secs: u64,
}

fn parse_ttl(text: &str) -> Option<u64> {
    let (number, unit) = text.split_at(text.len().checked_sub(1)?);
    let n: u64 = number.parse().ok()?;
    let secs = match unit {
        "m" => n.checked_mul(60)?,
        "h" => n.checked_mul(3600)?,
        _ => return None,
    };
    (600..=86_400).contains(&secs).then_some(secs)
}

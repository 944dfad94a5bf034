//! The single sign-on endpoints: `GET /api/v1/identity` (the realm: issuer, groups, users, the
//! last pass and its drift repairs) and `POST /api/v1/identity/sync` (a pass now). The
//! kubeconfig of an OIDC user is `POST /api/v1/cluster/kubeconfig` with `"oidc": true`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use utoipa_axum::routes;

use super::openapi::ApiRouter;
use super::{ApiError, AppState};
use crate::identity::Identity;

pub(super) fn routes() -> ApiRouter {
    ApiRouter::new()
        .routes(routes!(status))
        .routes(routes!(sync))
}

pub(super) fn identity(state: &AppState) -> Result<Arc<Identity>, ApiError> {
    state.identity.get().cloned().ok_or_else(|| {
        ApiError::new(
            StatusCode::CONFLICT,
            "identity_disabled",
            "single sign-on is off ([identity] enabled = false)",
        )
    })
}

#[utoipa::path(
    get, path = "/identity", tag = "identity", operation_id = "identity_status",
    summary = "The realm the daemon declares in Keycloak: issuer, groups, users, the last pass",
    responses(
        (status = 200, description = "The realm's state", body = crate::identity::IdentityStatus),
        (status = 409, description = "Single sign-on is off (`[identity] enabled = false`)", body = super::error::Problem, content_type = "application/problem+json"),
    )
)]
async fn status(State(state): State<AppState>) -> Result<Response, ApiError> {
    Ok(axum::Json(identity(&state)?.status()).into_response())
}

#[utoipa::path(
    post, path = "/identity/sync", tag = "identity", operation_id = "identity_sync",
    summary = "Compare the realm with its declaration and repair it now",
    responses(
        (status = 202, description = "A pass is started; the state before it", body = crate::identity::IdentityStatus),
        (status = 409, description = "Single sign-on is off (`[identity] enabled = false`)", body = super::error::Problem, content_type = "application/problem+json"),
    )
)]
async fn sync(State(state): State<AppState>) -> Result<Response, ApiError> {
    let identity = identity(&state)?;
    identity.kick();
    Ok((StatusCode::ACCEPTED, axum::Json(identity.status())).into_response())
}

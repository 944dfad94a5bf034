//! A node's BMC and its power: `PUT|GET|DELETE /api/v1/nodes/{name}/bmc` (its address and
//! credentials; the password is write-only), `GET|POST /api/v1/nodes/{name}/power` (ask the
//! BMC, or power on, off, cycle, boot from the network once). `power/` does the talking.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa_axum::routes;

use super::nodes::{json_object, node_keys};
use super::openapi::ApiRouter;
use super::{ApiError, AppState, FieldError};
use crate::model::MacAddr;
use crate::power::{BmcAddress, BmcConfig, PowerAction, PowerError, PowerState, PowerStatus};

pub(super) fn routes() -> ApiRouter {
    ApiRouter::new()
        .routes(routes!(show_bmc, set_bmc, remove_bmc))
        .routes(routes!(power_status, power))
}

/// The body of `PUT /api/v1/nodes/{name}/bmc`.
#[derive(Deserialize, Serialize, utoipa::ToSchema)]
pub struct BmcRequest {
    /// `ipmi://HOST[:PORT]` (IPMI v2.0 over LAN, cipher suite 3) or
    /// `redfish://HOST[:PORT][?sha256=FINGERPRINT]` (HTTPS: the lacave CA, or the pinned
    /// certificate).
    pub url: String,
    /// A BMC user with the administrator role.
    pub user: String,
    /// Its password: kept 0600 in the state directory, never shown again.
    pub password: String,
}

/// A node's BMC as the API shows it: never its password.
#[derive(Deserialize, Serialize, utoipa::ToSchema)]
pub struct BmcResponse {
    pub url: String,
    pub user: String,
    /// What the BMC said last, since the daemon started.
    pub last: Option<PowerStatus>,
}

/// The body of `POST /api/v1/nodes/{name}/power`.
#[derive(Deserialize, Serialize, utoipa::ToSchema)]
pub struct PowerRequest {
    /// `on`, `off`, `cycle` (off then on; on when off) or `pxe-once` (boot from the network
    /// next time only).
    pub action: PowerAction,
}

#[derive(Deserialize, Serialize, utoipa::ToSchema)]
pub struct PowerResponse {
    pub state: PowerState,
}

/// How a BMC's failure reaches the client: the node named, never a credential.
pub(super) fn power_error(node: &str, error: PowerError) -> ApiError {
    let (status, code) = match &error {
        PowerError::NotConfigured => (StatusCode::CONFLICT, "no_bmc"),
        PowerError::Credentials => (StatusCode::BAD_GATEWAY, "bmc_credentials"),
        PowerError::Unreachable(_) | PowerError::Timeout => {
            (StatusCode::GATEWAY_TIMEOUT, "bmc_unreachable")
        }
        PowerError::Certificate(_) => (StatusCode::BAD_GATEWAY, "bmc_certificate"),
        PowerError::Protocol(_) | PowerError::Refused { .. } => {
            (StatusCode::BAD_GATEWAY, "bmc_failed")
        }
        PowerError::Store(_) => return ApiError::internal("the BMC store", error),
    };
    ApiError::new(status, code, format!("{node}: {error}"))
}

/// Runs a power operation and writes it to the node's history (phase `power`): what was
/// asked, and what the BMC said or why it failed.
pub(super) async fn operate_recorded(
    state: &AppState,
    mac: MacAddr,
    shown: &str,
    action: PowerAction,
    why: &str,
) -> Result<PowerState, ApiError> {
    let result = state.bmcs.operate(mac, action).await;
    if action != PowerAction::Status {
        let (status, message) = match &result {
            Ok(now) => (Some(0), format!("{why}: done, the BMC says {now}")),
            Err(e) => (None, format!("{why}: {e}")),
        };
        let kind = crate::model::EventKind::Step {
            phase: "power".into(),
            command: format!("power {}", action.as_str()),
            status,
        };
        let keys = [crate::model::NodeKey::Mac(mac)];
        if let Err(error) =
            super::blocking(state, move |store| store.record_event(&keys, kind, message)).await
        {
            tracing::warn!(node = %shown, error = %error.detail, "a power operation is not in the node's history");
        }
    }
    result.map_err(|e| power_error(shown, e))
}

async fn mac_and_name(state: &AppState, name: &str) -> Result<(MacAddr, String), ApiError> {
    let node = state.store.get(&node_keys(name)?)?;
    Ok((node.mac, node.display_name()))
}

#[utoipa::path(
    get, path = "/nodes/{name}/bmc", tag = "power", operation_id = "get_bmc",
    summary = "A node's BMC: its address and user (never the password)",
    params(("name" = String, Path, description = "The node: its MAC address, hostname or IP address")),
    responses(
        (status = 200, description = "Its BMC", body = BmcResponse),
        (status = 404, description = "No such node", body = super::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "The node has no BMC (`no_bmc`)", body = super::error::Problem, content_type = "application/problem+json"),
    )
)]
async fn show_bmc(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let (mac, shown) = mac_and_name(&state, &name).await?;
    let config = state
        .bmcs
        .get(mac)
        .map_err(|e| power_error(&shown, e))?
        .ok_or_else(|| power_error(&shown, PowerError::NotConfigured))?;
    Ok(axum::Json(BmcResponse {
        url: config.url,
        user: config.user,
        last: state.bmcs.last_status(mac),
    })
    .into_response())
}

#[utoipa::path(
    put, path = "/nodes/{name}/bmc", tag = "power", operation_id = "set_bmc",
    summary = "Give a node its BMC (replaces any)",
    params(("name" = String, Path, description = "The node: its MAC address, hostname or IP address")),
    request_body = BmcRequest,
    responses(
        (status = 200, description = "Kept (the password is not shown)", body = BmcResponse),
        (status = 404, description = "No such node", body = super::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "Another node has a BMC at this address (`errors` names `url`)", body = super::error::Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields, each named in `errors`", body = super::error::Problem, content_type = "application/problem+json"),
    )
)]
async fn set_bmc(
    State(state): State<AppState>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (mac, shown) = mac_and_name(&state, &name).await?;
    let map = json_object(&body, &["url", "user", "password"])?;
    let mut errors = Vec::new();
    let mut text = |field: &str, max: usize| -> String {
        match map.get(field).and_then(|v| v.as_str()) {
            Some(v) if !v.is_empty() && v.len() <= max && !v.chars().any(char::is_control) => {
                v.to_string()
            }
            Some(_) => {
                errors.push(FieldError {
                    field: field.into(),
                    reason: format!("must be 1 to {max} printable characters"),
                });
                String::new()
            }
            None => {
                errors.push(FieldError {
                    field: field.into(),
                    reason: "missing (a string)".into(),
                });
                String::new()
            }
        }
    };
    let url = text("url", 300);
    let user = text("user", 64);
    let password = text("password", 128);
    let address = if url.is_empty() {
        None
    } else {
        match BmcAddress::parse(&url) {
            Ok(a) => Some(a),
            Err(reason) => {
                errors.push(FieldError {
                    field: "url".into(),
                    reason,
                });
                None
            }
        }
    };
    if matches!(address, Some(BmcAddress::Ipmi(_))) && (user.len() > 16 || password.len() > 20) {
        errors.push(FieldError {
            field: if user.len() > 16 { "user" } else { "password" }.into(),
            reason: "IPMI v2.0 allows a user name of at most 16 bytes and a password of at most 20"
                .into(),
        });
    }
    if !errors.is_empty() {
        return Err(ApiError::invalid(errors));
    }
    let address = address.expect("checked above");
    // One BMC drives one machine: another node's BMC at the same address is a mistake.
    for (other, config) in state.bmcs.all() {
        if other != mac
            && BmcAddress::parse(&config.url).is_ok_and(|a| a.endpoint() == address.endpoint())
        {
            let other_name = state
                .store
                .get(&[crate::model::NodeKey::Mac(other)])
                .map(|n| n.display_name())
                .unwrap_or_else(|_| other.to_string());
            return Err(ApiError {
                errors: vec![FieldError {
                    field: "url".into(),
                    reason: format!("{} is the BMC of {other_name} already", address.endpoint()),
                }],
                ..ApiError::new(
                    StatusCode::CONFLICT,
                    "conflict",
                    format!("{} is the BMC of {other_name} already", address.endpoint()),
                )
            });
        }
    }
    let config = BmcConfig {
        url: url.clone(),
        user: user.clone(),
        password,
    };
    let bmcs = state.bmcs.clone();
    tokio::task::spawn_blocking(move || bmcs.set(mac, &config))
        .await
        .map_err(|e| ApiError::internal("the BMC store", e))?
        .map_err(|e| power_error(&shown, e))?;
    tracing::info!(node = %shown, bmc = %address.endpoint(), "BMC set");
    Ok(axum::Json(BmcResponse {
        url,
        user,
        last: None,
    })
    .into_response())
}

#[utoipa::path(
    delete, path = "/nodes/{name}/bmc", tag = "power", operation_id = "remove_bmc",
    summary = "Forget a node's BMC (and its credentials)",
    params(("name" = String, Path, description = "The node: its MAC address, hostname or IP address")),
    responses(
        (status = 204, description = "Forgotten"),
        (status = 404, description = "No such node", body = super::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "The node has no BMC (`no_bmc`)", body = super::error::Problem, content_type = "application/problem+json"),
    )
)]
async fn remove_bmc(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let (mac, shown) = mac_and_name(&state, &name).await?;
    if !state.bmcs.remove(mac).map_err(|e| power_error(&shown, e))? {
        return Err(power_error(&shown, PowerError::NotConfigured));
    }
    tracing::info!(node = %shown, "BMC removed");
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[utoipa::path(
    get, path = "/nodes/{name}/power", tag = "power", operation_id = "power_status",
    summary = "Ask the node's BMC whether it is on",
    params(("name" = String, Path, description = "The node: its MAC address, hostname or IP address")),
    responses(
        (status = 200, description = "What the BMC says", body = PowerStatus),
        (status = 404, description = "No such node", body = super::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "The node has no BMC (`no_bmc`)", body = super::error::Problem, content_type = "application/problem+json"),
        (status = 502, description = "The BMC refused the credentials, the command or its certificate does not match (`bmc_credentials`, `bmc_failed`, `bmc_certificate`)", body = super::error::Problem, content_type = "application/problem+json"),
        (status = 504, description = "The BMC does not answer (`bmc_unreachable`)", body = super::error::Problem, content_type = "application/problem+json"),
    )
)]
async fn power_status(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let (mac, shown) = mac_and_name(&state, &name).await?;
    state
        .bmcs
        .operate(mac, PowerAction::Status)
        .await
        .map_err(|e| power_error(&shown, e))?;
    let status = state
        .bmcs
        .last_status(mac)
        .ok_or_else(|| ApiError::internal("the power status", "not recorded"))?;
    Ok(axum::Json(status).into_response())
}

#[utoipa::path(
    post, path = "/nodes/{name}/power", tag = "power", operation_id = "power",
    summary = "Power the node on, off, cycle it, or make its next boot a network boot",
    params(("name" = String, Path, description = "The node: its MAC address, hostname or IP address")),
    request_body = PowerRequest,
    responses(
        (status = 200, description = "Done: the state the node is now in", body = PowerResponse),
        (status = 404, description = "No such node", body = super::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "The node has no BMC (`no_bmc`)", body = super::error::Problem, content_type = "application/problem+json"),
        (status = 422, description = "`action` is not one of on, off, cycle, pxe-once, status", body = super::error::Problem, content_type = "application/problem+json"),
        (status = 502, description = "The BMC refused (`bmc_credentials`, `bmc_failed`, `bmc_certificate`)", body = super::error::Problem, content_type = "application/problem+json"),
        (status = 504, description = "The BMC does not answer (`bmc_unreachable`)", body = super::error::Problem, content_type = "application/problem+json"),
    )
)]
async fn power(
    State(state): State<AppState>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (mac, shown) = mac_and_name(&state, &name).await?;
    let map = json_object(&body, &["action"])?;
    let action = map
        .get("action")
        .and_then(|v| v.as_str())
        .and_then(PowerAction::parse)
        .ok_or_else(|| {
            ApiError::invalid(vec![FieldError {
                field: "action".into(),
                reason: "must be one of on, off, cycle, pxe-once, status".into(),
            }])
        })?;
    let power_state =
        operate_recorded(&state, mac, &shown, action, "asked through the API").await?;
    if action != PowerAction::Status {
        tracing::info!(node = %shown, action = action.as_str(), "power operation done");
    }
    Ok(axum::Json(PowerResponse { state: power_state }).into_response())
}

//! `/api/v1/dns/records`: the operator's records in the cluster zone (add, list, remove).
//! Records from `[[dns.records]]` are listed too, as read-only.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::openapi::ApiRouter;
use super::{ApiError, AppState, FieldError, blocking};
use crate::model::{RecordSpec, RecordValue, absolute_name};
use utoipa_axum::routes;

pub(super) fn routes() -> ApiRouter {
    ApiRouter::new()
        .routes(routes!(list_records, add_record))
        .routes(routes!(delete_record))
}

/// The body of `POST /api/v1/dns/records`.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DnsRecordRequest {
    /// Relative to the zone (`login.kube`), `@` for the apex, or absolute with a final dot.
    pub name: String,
    #[serde(rename = "type")]
    pub rtype: String,
    pub value: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<u32>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct DnsRecordResponse {
    /// `None` for records of the configuration file.
    pub id: Option<String>,
    pub name: String,
    pub fqdn: String,
    #[serde(rename = "type")]
    pub rtype: String,
    pub value: String,
    pub ttl: Option<u32>,
    /// `api` or `config`.
    pub source: String,
}

fn response(state: &AppState, id: Option<u64>, r: &RecordSpec) -> DnsRecordResponse {
    DnsRecordResponse {
        id: id.map(|i| i.to_string()),
        name: r.name.clone(),
        fqdn: absolute_name(&r.name, &state.config.dns.zone)
            .map(|n| n.to_string())
            .unwrap_or_default(),
        rtype: r.type_str().to_string(),
        value: r.value.to_string(),
        ttl: r.ttl,
        source: if id.is_some() { "api" } else { "config" }.to_string(),
    }
}

#[utoipa::path(
    post, path = "/dns/records", tag = "dns",
    summary = "Add a record to the cluster zone",
    request_body = DnsRecordRequest,
    responses(
        (status = 201, description = "Added", body = DnsRecordResponse),
        (status = 409, description = "It clashes with a record or a node's name", body = super::error::Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields, each named in `errors`", body = super::error::Problem, content_type = "application/problem+json"),
    )
)]
async fn add_record(State(state): State<AppState>, body: Bytes) -> Result<Response, ApiError> {
    let map = super::nodes::json_object(&body, &["name", "type", "value", "ttl"])?;
    let mut errors = Vec::new();
    let mut text = |field: &str| match map.get(field) {
        Some(Value::String(s)) => s.clone(),
        None | Some(Value::Null) => {
            errors.push(FieldError {
                field: field.into(),
                reason: "missing".into(),
            });
            String::new()
        }
        Some(_) => {
            errors.push(FieldError {
                field: field.into(),
                reason: "must be a string".into(),
            });
            String::new()
        }
    };
    let (name, rtype, value) = (text("name"), text("type"), text("value"));
    let ttl = match map.get("ttl") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) if n.as_u64().is_some_and(|n| n <= u64::from(u32::MAX)) => {
            n.as_u64().map(|n| n as u32)
        }
        Some(_) => {
            errors.push(FieldError {
                field: "ttl".into(),
                reason: "must be a whole number of seconds".into(),
            });
            None
        }
    };
    if !errors.is_empty() {
        return Err(ApiError::invalid(errors));
    }
    let spec = RecordSpec::parse(&name, &rtype, &value, ttl, &state.config.dns.zone)
        .map_err(ApiError::invalid)?;
    check_cname_clash(&state, &spec)?;
    let stored = spec.clone();
    let id = blocking(&state, move |store| store.add_dns_record(&stored)).await?;
    tracing::info!(id, name = %spec.name, rtype = spec.type_str(), value = %spec.value, "DNS record added");
    Ok((
        StatusCode::CREATED,
        axum::Json(response(&state, Some(id), &spec)),
    )
        .into_response())
}

/// A CNAME cannot share its name with other data (RFC 1034 §3.6.2): refuse it here rather than
/// have the zone leave it out.
fn check_cname_clash(state: &AppState, spec: &RecordSpec) -> Result<(), ApiError> {
    let zone = &state.config.dns.zone;
    let Ok(owner) = absolute_name(&spec.name, zone) else {
        return Ok(());
    };
    let is_cname = matches!(spec.value, RecordValue::Cname(_));
    let mut taken_by_data = false;
    let mut taken_by_cname = false;
    let records = state.store.dns_records();
    for r in records
        .iter()
        .map(|(_, r)| r)
        .chain(&state.config.dns.records)
    {
        if absolute_name(&r.name, zone).is_ok_and(|n| n == owner) {
            match r.value {
                RecordValue::Cname(_) => taken_by_cname = true,
                _ => taken_by_data = true,
            }
        }
    }
    let label_of = |n: &str| absolute_name(n, zone).is_ok_and(|n| n == owner);
    state.store.with_registered_nodes(|_, nodes| {
        for node in nodes {
            if node.hostname.as_ref().is_some_and(|h| label_of(h.as_str())) {
                taken_by_data = true;
            }
        }
    });
    if label_of(&state.config.dns.cluster_name) || label_of("ns") || label_of("@") {
        taken_by_data = true;
    }
    // A CNAME needs its name to itself; other data may not join a CNAME.
    if taken_by_cname || (is_cname && taken_by_data) {
        return Err(ApiError {
            errors: vec![FieldError {
                field: "name".into(),
                reason: format!(
                    "{owner} already has records, and a CNAME cannot share its name with other records"
                ),
            }],
            ..ApiError::new(
                StatusCode::CONFLICT,
                "conflict",
                format!("{owner}: a CNAME cannot share its name with other records"),
            )
        });
    }
    Ok(())
}

#[utoipa::path(
    get, path = "/dns/records", tag = "dns",
    summary = "The zone's records: the API's and, read-only, the configuration file's",
    responses((status = 200, description = "The records", body = [DnsRecordResponse]))
)]
async fn list_records(State(state): State<AppState>) -> Response {
    let mut out: Vec<DnsRecordResponse> = state
        .config
        .dns
        .records
        .iter()
        .map(|r| response(&state, None, r))
        .collect();
    out.extend(
        state
            .store
            .dns_records()
            .iter()
            .map(|(id, r)| response(&state, Some(*id), r)),
    );
    axum::Json(out).into_response()
}

#[utoipa::path(
    delete, path = "/dns/records/{id}", tag = "dns",
    summary = "Remove a record the API added",
    params(("id" = String, Path, description = "The record's id, from the list")),
    responses((status = 204, description = "Removed"), (status = 404, description = "No such record", body = super::error::Problem, content_type = "application/problem+json"))
)]
async fn delete_record(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id: u64 = id.parse().map_err(|_| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!(
                "no DNS record with id {id:?} (records of the configuration file are removed there)"
            ),
        )
    })?;
    let spec = blocking(&state, move |store| store.delete_dns_record(id)).await?;
    tracing::info!(id, name = %spec.name, rtype = spec.type_str(), "DNS record removed");
    Ok(StatusCode::NO_CONTENT.into_response())
}

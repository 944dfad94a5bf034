//! `/api/v1/pki/certificates` (issue, list, revoke) and the public `/ca.pem`.

use std::net::IpAddr;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;

use super::openapi::ApiRouter;
use super::{ApiError, AppState, FieldError, blocking};
use crate::model::{CertificateRecord, validate_dns_name};
use crate::pki::{IssueError, LeafRequest, PkiError, Usage};
use utoipa_axum::routes;

pub(super) fn routes() -> ApiRouter {
    ApiRouter::new()
        .routes(routes!(list_certificates, issue_certificate))
        .routes(routes!(revoke_certificate))
}

/// The body of `POST /api/v1/pki/certificates`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct IssueRequest {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns_names: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub days: Option<u32>,
    /// `server`, `client`, or both; default `server`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub usages: Vec<String>,
    /// A PKCS#10 request in PEM: the key stays with the client. Without it the daemon
    /// generates a key and returns it, once, in this authenticated response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub csr: Option<String>,
}

/// An issued certificate as the registry keeps it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct CertificateResponse {
    pub serial: String,
    pub subject: String,
    pub dns_names: Vec<String>,
    pub ips: Vec<String>,
    pub usages: Vec<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub not_before: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub not_after: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub issued_at: OffsetDateTime,
    pub requester: String,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub revoked_at: Option<OffsetDateTime>,
    #[serde(default)]
    pub revocation_reason: Option<String>,
}

/// The answer to an issue request.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct IssuedResponse {
    #[serde(flatten)]
    pub record: CertificateResponse,
    /// The leaf alone (PEM).
    pub certificate: String,
    /// The leaf and any intermediate CA: what a server should present.
    pub chain: String,
    /// The CA bundle to trust (the same as `/ca.pem`).
    pub ca: String,
    /// Only when the daemon generated the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key: Option<String>,
}

fn certificate_response(r: CertificateRecord) -> CertificateResponse {
    CertificateResponse {
        serial: r.serial,
        subject: r.subject,
        dns_names: r.dns_names,
        ips: r.ips,
        usages: r.usages,
        not_before: r.not_before,
        not_after: r.not_after,
        issued_at: r.issued_at,
        requester: r.requester,
        revoked_at: r.revoked_at,
        revocation_reason: r.revocation_reason,
    }
}

const ISSUE_FIELDS: &[&str] = &["dns_names", "ips", "days", "usages", "csr"];

/// Checks an issue request, reporting every bad field at once.
fn leaf_request(body: &Bytes, default_days: u32) -> Result<LeafRequest, ApiError> {
    let map = super::nodes::json_object(body, ISSUE_FIELDS)?;
    let raw: IssueRequest = serde_json::from_value(Value::Object(map)).map_err(|e| {
        ApiError::invalid(vec![FieldError {
            field: String::new(),
            reason: format!("the body does not have the expected types: {e}"),
        }])
    })?;
    let mut errors = Vec::new();
    let mut fail = |field: &str, reason: String| {
        errors.push(FieldError {
            field: field.into(),
            reason,
        })
    };
    let mut dns_names = Vec::new();
    for name in &raw.dns_names {
        match validate_dns_name(name) {
            Ok(n) if !dns_names.contains(&n) => dns_names.push(n),
            Ok(_) => {}
            Err(e) => fail("dns_names", e.to_string()),
        }
    }
    let mut ips: Vec<IpAddr> = Vec::new();
    for ip in &raw.ips {
        match ip.parse::<IpAddr>() {
            Ok(ip) if !ips.contains(&ip) => ips.push(ip),
            Ok(_) => {}
            Err(_) => fail("ips", format!("{ip:?} is not an IP address")),
        }
    }
    if raw.dns_names.is_empty() && raw.ips.is_empty() {
        fail(
            "dns_names",
            "give at least one DNS name or IP address for the certificate".into(),
        );
    }
    if dns_names.len() + ips.len() > 100 {
        fail("dns_names", "at most 100 names and addresses".into());
    }
    let days = raw.days.unwrap_or(default_days);
    if days == 0 {
        fail("days", "must be at least 1".into());
    }
    let mut usages = Vec::new();
    for u in &raw.usages {
        match u.parse::<Usage>() {
            Ok(u) if !usages.contains(&u) => usages.push(u),
            Ok(_) => {}
            Err(e) => fail("usages", e),
        }
    }
    if usages.is_empty() {
        usages.push(Usage::Server);
    }
    if errors.is_empty() {
        Ok(LeafRequest {
            dns_names,
            ips,
            days,
            usages,
            csr_pem: raw.csr,
        })
    } else {
        Err(ApiError::invalid(errors))
    }
}

/// A refusal from the CA names the field its message starts with (`days: …`, `csr: …`).
fn issue_error(e: IssueError) -> ApiError {
    match e {
        IssueError::Pki(PkiError::Invalid(msg)) => {
            let field = ["days", "csr", "dns_names"]
                .into_iter()
                .find(|f| msg.starts_with(&format!("{f}:")))
                .unwrap_or("");
            let reason = msg
                .strip_prefix(&format!("{field}: "))
                .unwrap_or(&msg)
                .to_string();
            ApiError::invalid(vec![FieldError {
                field: field.into(),
                reason,
            }])
        }
        IssueError::Pki(other) => ApiError::internal("issuing a certificate", other),
        IssueError::Store(e) => e.into(),
    }
}

#[utoipa::path(
    post, path = "/pki/certificates", tag = "pki",
    summary = "Issue a certificate from the cluster's root CA",
    request_body = IssueRequest,
    responses(
        (status = 201, description = "Issued; the private key only when the daemon generated it (never stored)", body = IssuedResponse),
        (status = 422, description = "Invalid fields, each named in `errors`", body = super::error::Problem, content_type = "application/problem+json"),
    )
)]
async fn issue_certificate(
    State(state): State<AppState>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req = leaf_request(&body, state.config.pki.leaf_validity_days)?;
    let ca = state.ca.clone();
    let store = state.store.clone();
    let issued = tokio::task::spawn_blocking(move || {
        crate::pki::issue_and_record(&store, &ca, &req, "api", OffsetDateTime::now_utc())
    })
    .await
    .map_err(|e| ApiError::internal("issuing a certificate", e))?
    .map_err(issue_error)?;
    tracing::info!(serial = %issued.record.serial, subject = %issued.record.subject, generated_key = issued.private_key_pem.is_some(), "certificate issued");
    let body = IssuedResponse {
        record: certificate_response(issued.record),
        certificate: issued.certificate_pem,
        chain: issued.chain_pem,
        ca: state.ca.bundle_pem(),
        private_key: issued.private_key_pem,
    };
    let mut response = (StatusCode::CREATED, axum::Json(body)).into_response();
    // The body may hold a private key: no cache may keep it.
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

#[utoipa::path(
    get, path = "/pki/certificates", tag = "pki",
    summary = "Every certificate the CA issued",
    responses((status = 200, description = "The certificates", body = [CertificateResponse]))
)]
async fn list_certificates(State(state): State<AppState>) -> Result<Response, ApiError> {
    let records = blocking(&state, |store| store.list_certificates()).await?;
    let body: Vec<CertificateResponse> = records.into_iter().map(certificate_response).collect();
    Ok(axum::Json(body).into_response())
}

#[utoipa::path(
    post, path = "/pki/certificates/{serial}/revoke", tag = "pki",
    summary = "Record a certificate as revoked",
    params(("serial" = String, Path, description = "Its serial number (hex)")),
    request_body(content = RevokeRequest, description = "Optional: why"),
    responses(
        (status = 200, description = "The certificate, revoked", body = CertificateResponse),
        (status = 404, description = "No such certificate", body = super::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "Already revoked", body = super::error::Problem, content_type = "application/problem+json"),
        (status = 422, description = "`reason` is not a string", body = super::error::Problem, content_type = "application/problem+json"),
    )
)]
async fn revoke_certificate(
    State(state): State<AppState>,
    Path(serial): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let reason = if body.is_empty() {
        None
    } else {
        let map = super::nodes::json_object(&body, &["reason"])?;
        match map.get("reason") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => {
                return Err(ApiError::invalid(vec![FieldError {
                    field: "reason".into(),
                    reason: "must be a string".into(),
                }]));
            }
        }
    };
    let record = blocking(&state, move |store| {
        store.revoke_certificate(&serial, reason, OffsetDateTime::now_utc())
    })
    .await?;
    tracing::info!(serial = %record.serial, "certificate revoked");
    Ok(axum::Json(certificate_response(record)).into_response())
}

/// The CA bundle nodes and clients trust. Public: it holds certificates only.
/// The body of `POST /api/v1/pki/certificates/{serial}/revoke`, optional (documentation:
/// the handler reads the field itself, to name it in errors).
#[derive(Deserialize, utoipa::ToSchema)]
#[allow(dead_code)]
pub(super) struct RevokeRequest {
    /// Why, for the record.
    reason: Option<String>,
}

pub(super) async fn ca_pem(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-pem-file"),
        )],
        state.ca.bundle_pem(),
    )
        .into_response()
}

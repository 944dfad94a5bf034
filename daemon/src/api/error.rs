//! The API's one error type, rendered as RFC 9457 `application/problem+json`. It carries what
//! the client sees (status, code, detail, offending fields) apart from what is logged, so an
//! internal failure is logged in full and never leaks to the client as a bare 500.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::model::FieldError;
use crate::store::StoreError;

pub const PROBLEM_JSON: &str = "application/problem+json";

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    /// Machine-readable and stable: clients and tests match on it.
    pub code: &'static str,
    pub detail: String,
    pub errors: Vec<FieldError>,
    /// Logged server-side only.
    pub internal: Option<String>,
    /// Seconds for a `Retry-After` header (429, 503).
    pub retry_after: Option<u64>,
}

/// The error document of every failed request (RFC 9457 `application/problem+json`).
#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct Problem<'a> {
    /// `about:blank`, or a URI naming the problem.
    #[serde(rename = "type")]
    kind: String,
    title: &'a str,
    status: u16,
    /// Stable and machine-readable: `invalid_field`, `not_found`, `conflict`,
    /// `unauthorized`, …; clients match on it.
    code: &'a str,
    /// What went wrong, for a person.
    detail: &'a str,
    /// The one field at fault, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
    /// Every bad field of the request, by name (422, some 409).
    #[serde(skip_serializing_if = "<[FieldError]>::is_empty")]
    #[schema(required = false)]
    errors: &'a [FieldError],
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            detail: detail.into(),
            errors: Vec::new(),
            internal: None,
            retry_after: None,
        }
    }

    /// 422 for one or more invalid fields; the detail lists them all.
    pub fn invalid(errors: Vec<FieldError>) -> Self {
        let detail = errors
            .iter()
            .map(|e| format!("{}: {}", e.field, e.reason))
            .collect::<Vec<_>>()
            .join("; ");
        ApiError {
            errors,
            ..ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_field", detail)
        }
    }

    pub fn unauthorized(detail: &str) -> Self {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", detail)
    }

    /// 429 for a source address over its failed logins (`throttle.rs`), with `Retry-After`.
    pub fn too_many_failures(retry_after: std::time::Duration) -> Self {
        let secs = retry_after.as_secs().max(1);
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_failures",
            format!(
                "too many wrong tokens from this address: try again in {secs} s (at most {} \
                 per {} s)",
                super::throttle::MAX_FAILURES,
                super::throttle::WINDOW.as_secs()
            ),
        )
        .retry_after(secs)
    }

    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }

    pub fn forbidden(detail: impl Into<String>) -> Self {
        ApiError::new(StatusCode::FORBIDDEN, "forbidden", detail)
    }

    pub fn internal(what: &str, error: impl std::fmt::Display) -> Self {
        ApiError {
            internal: Some(format!("{what}: {error}")),
            ..ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                format!("{what} failed on the server; see the daemon's log"),
            )
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(_)
            | StoreError::CertificateNotFound(_)
            | StoreError::DnsRecordNotFound(_) => {
                ApiError::new(StatusCode::NOT_FOUND, "not_found", e.to_string())
            }
            StoreError::AlreadyRevoked { .. } => {
                ApiError::new(StatusCode::CONFLICT, "already_revoked", e.to_string())
            }
            StoreError::Conflict { field, .. } => ApiError {
                errors: vec![FieldError {
                    field: field.to_string(),
                    reason: e.to_string(),
                }],
                ..ApiError::new(StatusCode::CONFLICT, "conflict", e.to_string())
            },
            StoreError::Transition { .. } => {
                ApiError::new(StatusCode::CONFLICT, "invalid_transition", e.to_string())
            }
            StoreError::Stale(_) => ApiError::new(StatusCode::CONFLICT, "stale", e.to_string()),
            StoreError::NotRegistered(_) => {
                ApiError::new(StatusCode::CONFLICT, "not_registered", e.to_string())
            }
            StoreError::InCluster { .. } => {
                ApiError::new(StatusCode::CONFLICT, "in_cluster", e.to_string())
            }
            // The operator can act on this one (free space): say what it is. Nothing was
            // acknowledged; `/healthz` says 503 until writes work again.
            StoreError::Io(_) => {
                tracing::error!(error = %e, "a registry write failed");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "storage_failed",
                    format!(
                        "the registry cannot write ({e}); nothing was changed: free space in the state directory"
                    ),
                )
            }
            StoreError::SchemaTooNew { .. }
            | StoreError::Corrupt(_)
            | StoreError::Damaged { .. }
            | StoreError::InUse(_) => ApiError::internal("the registry", e),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let Some(internal) = &self.internal {
            tracing::error!(code = self.code, error = %internal, "request failed");
        }
        let problem = Problem {
            kind: format!("urn:lacave:problem:{}", self.code),
            title: self.status.canonical_reason().unwrap_or("Error"),
            status: self.status.as_u16(),
            code: self.code,
            detail: &self.detail,
            field: self.errors.first().map(|e| e.field.as_str()),
            errors: &self.errors,
        };
        let body = serde_json::to_vec(&problem).expect("a problem always serialises");
        let mut response = (self.status, body).into_response();
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"lacave\""),
            );
        }
        response
    }
}

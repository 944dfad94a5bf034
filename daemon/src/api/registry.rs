//! The OCI Distribution API, read-only, over the image store (`crate::images`), for nodes
//! with no route to the internet: `GET`/`HEAD /v2/`, `/v2/<name>/manifests/<tag or digest>`,
//! `/v2/<name>/blobs/<digest>` (with `Range`), and the errors the specification defines. A
//! containerd mirror (`hosts.toml`) adds `?ns=<registry>`: `/v2/pause/manifests/3.10?ns=
//! registry.k8s.io` is `registry.k8s.io/pause:3.10`. No token: images are not secrets, and
//! nothing here writes.

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::AppState;
use crate::images::ImageStore;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v2/", get(base).head(base))
        .route("/v2/{*rest}", get(object).head(object))
}

fn with_version(mut r: Response) -> Response {
    r.headers_mut().insert(
        "Docker-Distribution-API-Version",
        HeaderValue::from_static("registry/2.0"),
    );
    r
}

/// An error as the specification shapes it.
fn error(status: StatusCode, code: &str, message: String) -> Response {
    let body = serde_json::json!({ "errors": [{ "code": code, "message": message }] });
    let mut r = (status, body.to_string()).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    with_version(r)
}

async fn base() -> Response {
    with_version(([(header::CONTENT_TYPE, "application/json")], "{}").into_response())
}

#[derive(serde::Deserialize)]
struct Ns {
    ns: Option<String>,
}

async fn object(
    State(state): State<AppState>,
    method: Method,
    Path(rest): Path<String>,
    Query(ns): Query<Ns>,
    headers: HeaderMap,
) -> Response {
    let store = ImageStore::new(&state.config.state_dir);
    let found = tokio::task::spawn_blocking({
        let rest = rest.clone();
        move || store.lookup(&rest, ns.ns.as_deref())
    })
    .await;
    let found = match found {
        Ok(Ok(found)) => found,
        Ok(Err(not)) if not.server_fault => {
            tracing::error!(path = %rest, error = %not.message, "registry: cannot look images up");
            return error(StatusCode::INTERNAL_SERVER_ERROR, not.code, not.message);
        }
        Ok(Err(not)) => {
            tracing::info!(path = %rest, code = not.code, "registry: not held (lacave mirror images missing)");
            return error(StatusCode::NOT_FOUND, not.code, not.message);
        }
        Err(e) => return super::ApiError::internal("a registry lookup", e).into_response(),
    };
    let mut response = match super::boot::file_response(&found.path, &method, &headers, &rest).await
    {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    if let Ok(v) = HeaderValue::from_str(&found.digest) {
        response.headers_mut().insert("Docker-Content-Digest", v);
    }
    if let Some(media_type) = found.media_type
        && let Ok(v) = HeaderValue::from_str(&media_type)
    {
        response.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    with_version(response)
}

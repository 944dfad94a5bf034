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
    let (repo, kind, reference): (String, bool, String) =
        match rest.rsplitn(3, '/').collect::<Vec<_>>()[..] {
            [reference, kind @ ("manifests" | "blobs"), repo] if !repo.is_empty() => {
                (repo.to_string(), kind == "manifests", reference.to_string())
            }
            _ => {
                return error(
                    StatusCode::NOT_FOUND,
                    "NAME_UNKNOWN",
                    format!("/v2/{rest} is not a manifest or blob path"),
                );
            }
        };
    // The full name: the registry a mirror says it stands for, else the repository as given
    // (docker.io for a bare name).
    let full = match ns.ns.as_deref() {
        Some(registry) if registry == "docker.io" && !repo.contains('/') => {
            format!("docker.io/library/{repo}")
        }
        Some(registry) => format!("{registry}/{repo}"),
        None => crate::images::normalize(&format!("{repo}:x"))
            .map(|n| n.trim_end_matches(":x").to_string())
            .unwrap_or(repo.clone()),
    };
    let store = ImageStore::new(&state.config.state_dir);
    let found = tokio::task::spawn_blocking({
        let (full, reference, store) = (full.clone(), reference.clone(), store.clone());
        move || {
            if kind {
                store.manifest(&full, &reference).map(|(r, p)| (Some(r), p))
            } else {
                store.blob(&reference).map(|p| (None, p))
            }
        }
    })
    .await
    .ok()
    .flatten();
    let Some((manifest, path)) = found else {
        let (code, what) = if kind {
            (
                "MANIFEST_UNKNOWN",
                format!("no manifest {full}:{reference} here"),
            )
        } else {
            ("BLOB_UNKNOWN", format!("no blob {reference} here"))
        };
        tracing::info!(image = %full, %reference, "registry: not held (lacave mirror images missing)");
        return error(StatusCode::NOT_FOUND, code, what);
    };
    let mut response = match super::boot::file_response(&path, &method, &headers, &rest).await {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let digest = match &manifest {
        Some(m) => m.digest.clone(),
        None => reference.clone(),
    };
    if let Ok(v) = HeaderValue::from_str(&digest) {
        response.headers_mut().insert("Docker-Content-Digest", v);
    }
    if let Some(m) = manifest
        && let Ok(v) = HeaderValue::from_str(&m.media_type)
    {
        response.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    with_version(response)
}

//! The OpenAPI 3.1 document of `/api/v1`, generated from the handlers' own attributes and
//! types so that it cannot drift from the router: every route of the operator API is added
//! through [`ApiRouter::routes`], which takes a handler only together with its
//! `#[utoipa::path]` (the `routes!` macro), so an undocumented route does not compile in.
//! Served at `GET /api/v1/openapi.json`, without a token (it holds no data).

use std::sync::LazyLock;

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{self, OpenApi as Document};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouter};

use super::AppState;
use super::error::Problem;
use crate::model::FieldError;

/// The operator API's routes, each with its documentation. Deliberately narrower than
/// [`OpenApiRouter`]: no `route()` that would take a handler without its `#[utoipa::path]`.
pub(super) struct ApiRouter(OpenApiRouter<AppState>);

impl ApiRouter {
    pub(super) fn new() -> ApiRouter {
        ApiRouter(OpenApiRouter::new())
    }

    /// One path's handlers, from `routes!(handler, …)`.
    pub(super) fn routes(self, routes: UtoipaMethodRouter<AppState>) -> ApiRouter {
        ApiRouter(self.0.routes(routes))
    }

    pub(super) fn merge(self, other: ApiRouter) -> ApiRouter {
        ApiRouter(self.0.merge(other.0))
    }

    /// The router to serve and the document of what it serves, paths under `/api/v1`.
    pub(super) fn split(self) -> (Router<AppState>, Document) {
        let (router, paths) = self.0.split_for_parts();
        let mut doc = ApiDoc::openapi();
        let mut nested = openapi::Paths::new();
        for (path, mut item) in paths.paths.paths {
            for operation in operations(&mut item) {
                // What `authenticate` answers before any handler runs.
                for (status, what) in [
                    ("401", "No valid bearer token or console session"),
                    (
                        "429",
                        "Too many wrong tokens from this address (`Retry-After`)",
                    ),
                ] {
                    operation
                        .responses
                        .responses
                        .entry(status.to_string())
                        .or_insert_with(|| problem(what));
                }
            }
            nested.paths.insert(format!("/api/v1{path}"), item);
        }
        doc.paths = nested;
        if let Some(components) = paths.components {
            let mine = doc.components.get_or_insert_with(Default::default);
            mine.schemas.extend(components.schemas);
            mine.responses.extend(components.responses);
        }
        (router, doc)
    }
}

fn operations(item: &mut openapi::PathItem) -> impl Iterator<Item = &mut openapi::path::Operation> {
    [
        &mut item.get,
        &mut item.put,
        &mut item.post,
        &mut item.delete,
        &mut item.patch,
        &mut item.head,
        &mut item.options,
    ]
    .into_iter()
    .filter_map(Option::as_mut)
}

/// A response whose body is a [`Problem`].
fn problem(description: &str) -> openapi::RefOr<openapi::Response> {
    openapi::ResponseBuilder::new()
        .description(description)
        .content(
            super::PROBLEM_JSON,
            openapi::ContentBuilder::new()
                .schema(Some(openapi::Ref::from_schema_name("Problem")))
                .build(),
        )
        .build()
        .into()
}

/// The document's frame: what the routes do not say themselves.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "lacave",
        description = "The operator API of the kube-lacave provisioning daemon: nodes, DNS \
            records, certificates, the Kubernetes cluster and its add-ons. Errors are RFC 9457 \
            `application/problem+json` documents (`Problem`); a 422 lists every bad field by \
            name in `errors`.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    components(schemas(Problem, FieldError)),
    security(("bearer" = []), ("session" = [])),
    modifiers(&Security),
)]
struct ApiDoc;

struct Security;

impl Modify for Security {
    fn modify(&self, doc: &mut Document) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "The API token (`/var/lib/lacave/api-token`, or `lacave token`).",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "session",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
                super::session::COOKIE,
                "A web console session (after `POST /console/login`); state-changing \
                 requests also need the console's `X-CSRF-Token` header and a same-origin \
                 `Origin`.",
            ))),
        );
        doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    }
}

/// The generated document, built once.
pub(super) fn document() -> &'static str {
    static JSON: LazyLock<String> = LazyLock::new(|| {
        let (_, doc) = super::api_routes().split();
        doc.to_pretty_json().expect("the document serialises")
    });
    &JSON
}

/// `GET /api/v1/openapi.json`.
pub(super) async fn serve() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        document(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc() -> serde_json::Value {
        serde_json::from_str(document()).unwrap()
    }

    #[test]
    fn the_document_is_openapi_3_1_with_every_operation_authenticated() {
        let doc = doc();
        assert!(
            doc["openapi"].as_str().unwrap().starts_with("3.1"),
            "{}",
            doc["openapi"]
        );
        let paths = doc["paths"].as_object().unwrap();
        assert!(paths.len() >= 25, "{}", paths.len());
        for (path, item) in paths {
            assert!(path.starts_with("/api/v1/"), "{path}");
            for (method, op) in item.as_object().unwrap() {
                if method == "parameters" {
                    continue;
                }
                let responses = op["responses"].as_object().unwrap();
                assert!(responses.contains_key("401"), "{method} {path}");
                assert!(op["summary"].is_string(), "{method} {path} has no summary");
                assert!(op["tags"].is_array(), "{method} {path} has no tag");
            }
        }
        let schemes = &doc["components"]["securitySchemes"];
        assert_eq!(schemes["bearer"]["scheme"], "bearer");
        assert_eq!(schemes["session"]["in"], "cookie");
    }

    /// Request bodies read field by field are documented by types of their own: their
    /// properties are the fields the handler accepts.
    #[test]
    fn documented_request_fields_are_the_accepted_ones() {
        let doc = doc();
        let schemas = &doc["components"]["schemas"];
        let props = |name: &str| -> Vec<String> {
            let mut keys: Vec<String> = schemas[name]["properties"]
                .as_object()
                .unwrap_or_else(|| panic!("{name} is not in the document"))
                .keys()
                .cloned()
                .collect();
            keys.sort();
            keys
        };
        let mut node_fields: Vec<String> = super::super::nodes::NODE_FIELDS
            .iter()
            .map(|s| s.to_string())
            .collect();
        node_fields.sort();
        assert_eq!(props("CreateNodeRequest"), node_fields);
        assert_eq!(props("NodeUpdateRequest"), node_fields);
        assert_eq!(props("RevokeRequest"), ["reason"]);
        assert_eq!(props("TokenRequest"), ["ttl"]);
        let mut upgrade = props("UpgradeRequest");
        upgrade.sort();
        assert_eq!(upgrade, ["drain_timeout_secs", "dry_run", "resume", "to"]);
    }

    /// The error shape in the document is the one `error.rs` writes.
    #[test]
    fn the_problem_schema_is_what_errors_look_like() {
        let doc = doc();
        let schema = &doc["components"]["schemas"]["Problem"]["properties"];
        let error = super::super::ApiError::invalid(vec![FieldError {
            field: "mac".into(),
            reason: "bad".into(),
        }]);
        let response = axum::response::IntoResponse::into_response(error);
        let body =
            futures_lite::future::block_on(http_body_util::BodyExt::collect(response.into_body()))
                .unwrap()
                .to_bytes();
        let written: serde_json::Value = serde_json::from_slice(&body).unwrap();
        for key in written.as_object().unwrap().keys() {
            assert!(
                schema.get(key).is_some(),
                "{key} is not in the Problem schema"
            );
        }
    }
}

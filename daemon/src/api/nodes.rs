//! `/api/v1/nodes`: register, list, show, change, remove and reinstall nodes.
//!
//! Request bodies are read field by field rather than through one serde struct, so that every
//! bad field — unknown, missing, of the wrong type or invalid — is reported at once, by name.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use time::OffsetDateTime;

use super::openapi::ApiRouter;
use super::{ApiError, AppState, FieldError, blocking};
use crate::model::{
    BootFile, Event, EventKind, Hostname, InstallDisk, Labels, MacAddr, NewNode, Node, NodeIp,
    NodeKey, NodePatch, NodeState, Role, ValueError, validate_labels,
};
use utoipa_axum::routes;

pub(super) fn routes() -> ApiRouter {
    ApiRouter::new()
        .routes(routes!(list_nodes, create_node))
        .routes(routes!(show_node, update_node, delete_node))
        .routes(routes!(node_events))
        .routes(routes!(reinstall_node))
        .routes(routes!(rejoin_node))
}

/// The body of `POST /api/v1/nodes`, as clients (the CLI, tests) build it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CreateNodeRequest {
    pub mac: String,
    pub hostname: String,
    pub ip: String,
    pub role: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub install_disk: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_file: Option<String>,
}

/// The body of `PATCH /api/v1/nodes/{name}`: only the fields to change (documentation: the
/// handler reads the fields one by one, to name each bad one).
#[derive(Deserialize, utoipa::ToSchema)]
#[allow(dead_code)]
pub(super) struct NodeUpdateRequest {
    mac: Option<String>,
    hostname: Option<String>,
    ip: Option<String>,
    /// `control-plane` or `worker`.
    role: Option<String>,
    /// Replaces every label.
    labels: Option<BTreeMap<String, String>>,
    /// `null` goes back to `[flatcar] install_disk`.
    install_disk: Option<String>,
    /// `null` goes back to the firmware's default.
    boot_file: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct FailureResponse {
    pub phase: String,
    pub reason: String,
}

/// A node as the API shows it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct NodeResponse {
    pub mac: String,
    pub hostname: Option<String>,
    pub ip: Option<String>,
    pub role: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// The disk the installer will use: the node's own, or the configured default.
    pub install_disk: String,
    /// The node's own boot file for its firmware; `null`: chosen by firmware type.
    pub boot_file: Option<String>,
    /// The SSH host key the installed system reported (pinned for SSH).
    pub ssh_host_key: Option<String>,
    /// The machine's last DHCP packet (to the minute), with its architecture and vendor
    /// class: what tells a `discovered` machine from another.
    #[serde(default)]
    pub last_seen: Option<SightingResponse>,
    pub state: String,
    pub failure: Option<FailureResponse>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
    /// When the node entered its current state.
    #[serde(with = "time::serde::rfc3339")]
    pub state_since: OffsetDateTime,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct SightingResponse {
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// DHCP option 93: 0 BIOS, 6 UEFI IA32, 7/9 UEFI x64, 11 UEFI ARM64, 16 UEFI HTTP x64, …
    pub arch: Option<u16>,
    /// DHCP option 60.
    pub vendor_class: Option<String>,
}

/// One entry of a node's history.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct EventResponse {
    pub seq: u64,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fields: Option<Vec<String>>,
    /// For `lease` events: `bound`, `released` or `declined`, and the address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    /// For `step` events: the phase (`join`, …), the command run on the node and its exit
    /// status (absent when it did not finish); the message holds its output's tail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u32>,
    /// For `update` events: the Flatcar release offered, applied or booted (the new update
    /// state is in `to`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    pub message: String,
}

pub(super) fn node_response(node: Node, default_disk: &InstallDisk) -> NodeResponse {
    NodeResponse {
        mac: node.mac.to_string(),
        hostname: node.hostname.map(|h| h.to_string()),
        ip: node.ip.map(|ip| ip.to_string()),
        role: node.role.map(|r| r.to_string()),
        labels: node.labels,
        install_disk: node
            .install_disk
            .unwrap_or_else(|| default_disk.clone())
            .to_string(),
        boot_file: node.boot_file.map(|f| f.to_string()),
        ssh_host_key: node.ssh_host_key,
        last_seen: node.last_seen.map(|s| SightingResponse {
            at: s.at,
            arch: s.arch,
            vendor_class: s.vendor_class,
        }),
        state: node.state.to_string(),
        failure: node.failure.map(|f| FailureResponse {
            phase: f.phase,
            reason: f.reason,
        }),
        created_at: node.created_at,
        updated_at: node.updated_at,
        state_since: node.state_since,
    }
}

pub(super) fn event_response(event: Event) -> EventResponse {
    let mut r = EventResponse {
        seq: event.seq,
        at: event.at,
        kind: String::new(),
        from: None,
        to: None,
        fields: None,
        action: None,
        ip: None,
        phase: None,
        command: None,
        status: None,
        version: None,
        message: event.message,
    };
    r.kind = match event.kind {
        EventKind::Created { state } => {
            r.to = Some(state.to_string());
            "created"
        }
        EventKind::Transition { from, to } => {
            r.from = Some(from.to_string());
            r.to = Some(to.to_string());
            "transition"
        }
        EventKind::Updated { fields } => {
            r.fields = Some(fields);
            "updated"
        }
        EventKind::Lease { action, ip } => {
            r.action = Some(action.as_str().to_string());
            r.ip = Some(ip.to_string());
            "lease"
        }
        EventKind::Step {
            phase,
            command,
            status,
        } => {
            r.phase = Some(phase);
            r.command = Some(command);
            r.status = status;
            "step"
        }
        EventKind::Refused { peer } => {
            r.ip = Some(peer.to_string());
            "refused"
        }
        EventKind::Update { state, version } => {
            r.to = Some(state.to_string());
            r.version = Some(version);
            "update"
        }
    }
    .to_string();
    r
}

/// Reads a JSON object body, refusing keys outside `allowed`.
pub(super) fn json_object(body: &Bytes, allowed: &[&str]) -> Result<Map<String, Value>, ApiError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            format!("the body is not valid JSON: {e}"),
        )
    })?;
    let Value::Object(map) = value else {
        return Err(ApiError::invalid(vec![FieldError {
            field: String::new(),
            reason: "the body must be a JSON object".into(),
        }]));
    };
    let unknown: Vec<FieldError> = map
        .keys()
        .filter(|k| !allowed.contains(&k.as_str()))
        .map(|k| FieldError {
            field: k.clone(),
            reason: if k == "state" {
                "the state cannot be set: it follows the node's lifecycle (POST …/reinstall to start over)".into()
            } else {
                format!("unknown field; expected one of {}", allowed.join(", "))
            },
        })
        .collect();
    if !unknown.is_empty() {
        return Err(ApiError::invalid(unknown));
    }
    Ok(map)
}

/// Collects per-field problems so a request reports them all at once.
#[derive(Default)]
struct Fields {
    errors: Vec<FieldError>,
}

impl Fields {
    fn fail(&mut self, field: &str, reason: impl Into<String>) {
        self.errors.push(FieldError {
            field: field.to_string(),
            reason: reason.into(),
        });
    }

    /// A string field parsed into `T`. `Ok(None)` when absent (or null and `nullable`).
    fn parse<T: std::str::FromStr<Err = ValueError>>(
        &mut self,
        map: &Map<String, Value>,
        field: &str,
        required: bool,
    ) -> Option<T> {
        match map.get(field) {
            None | Some(Value::Null) => {
                if required {
                    self.fail(field, "missing");
                }
                None
            }
            Some(Value::String(s)) => match s.parse::<T>() {
                Ok(v) => Some(v),
                Err(e) => {
                    self.fail(field, e.to_string());
                    None
                }
            },
            Some(other) => {
                self.fail(field, format!("must be a string, not {}", json_type(other)));
                None
            }
        }
    }

    /// A patch field that `null` returns to its default: `None` absent, `Some(None)` null,
    /// `Some(Some(v))` set (`None` too when invalid; the error is recorded).
    fn resettable<T: std::str::FromStr<Err = ValueError>>(
        &mut self,
        map: &Map<String, Value>,
        field: &str,
    ) -> Option<Option<T>> {
        match map.get(field)? {
            Value::Null => Some(None),
            _ => self.parse::<T>(map, field, false).map(Some),
        }
    }

    fn labels(&mut self, map: &Map<String, Value>) -> Option<Labels> {
        match map.get("labels") {
            None | Some(Value::Null) => None,
            Some(Value::Object(obj)) => {
                let mut labels = Labels::new();
                for (k, v) in obj {
                    match v {
                        Value::String(s) => {
                            labels.insert(k.clone(), s.clone());
                        }
                        other => {
                            self.fail(
                                "labels",
                                format!("label {k:?} must be a string, not {}", json_type(other)),
                            );
                            return None;
                        }
                    }
                }
                if let Err(e) = validate_labels(&labels) {
                    self.fail("labels", e.to_string());
                    return None;
                }
                Some(labels)
            }
            Some(other) => {
                self.fail(
                    "labels",
                    format!("must be an object of strings, not {}", json_type(other)),
                );
                None
            }
        }
    }

    /// Refuses an address a node cannot have: the provisioning host's own (`server_ip`), or
    /// the network or broadcast address of the nodes' subnet (`[dhcp] subnet`, and
    /// `server_ip`/`[flatcar] node_prefix`).
    fn reserved_ip(&mut self, config: &crate::config::Config, ip: NodeIp) {
        let ip = ip.addr();
        if ip == config.server_ip {
            self.fail(
                "ip",
                format!("{ip} is the provisioning server's own address (server_ip)"),
            );
            return;
        }
        let mut subnets = vec![];
        if let Ok(net) = ipnet::Ipv4Net::new(config.server_ip, config.flatcar.node_prefix) {
            subnets.push(net.trunc());
        }
        if let Some(dhcp) = &config.dhcp {
            subnets.push(dhcp.settings.subnet.trunc());
        }
        for net in subnets {
            if net.prefix_len() >= 31 || !net.contains(&ip) {
                continue;
            }
            if ip == net.network() {
                self.fail("ip", format!("{ip} is the network address of {net}"));
                return;
            }
            if ip == net.broadcast() {
                self.fail("ip", format!("{ip} is the broadcast address of {net}"));
                return;
            }
        }
    }

    fn finish(self) -> Result<(), ApiError> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(ApiError::invalid(self.errors))
        }
    }
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

pub(super) fn node_keys(name: &str) -> Result<Vec<NodeKey>, ApiError> {
    NodeKey::parse(name).map_err(|e| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no node named {name:?}: {e}"),
        )
    })
}

/// The header of `GET /api/v1/nodes` naming the event the list includes everything up to
/// (`GET /api/v1/events?after=` it).
const EVENT_SEQ: axum::http::HeaderName = axum::http::HeaderName::from_static("lacave-event-seq");

/// The fields an operator sets, at creation and by PATCH alike (the rest are the lifecycle's).
pub(super) const NODE_FIELDS: &[&str] = &[
    "mac",
    "hostname",
    "ip",
    "role",
    "labels",
    "install_disk",
    "boot_file",
];

#[utoipa::path(
    post, path = "/nodes", tag = "nodes",
    summary = "Register a node by its MAC address",
    request_body = CreateNodeRequest,
    responses(
        (status = 201, description = "Registered", body = NodeResponse),
        (status = 409, description = "Another node has this MAC address, hostname or IP address (`errors` names the field)", body = super::error::Problem, content_type = "application/problem+json"),
        (status = 422, description = "Fields missing, unknown, of the wrong type or invalid: every one named in `errors`", body = super::error::Problem, content_type = "application/problem+json"),
    )
)]
async fn create_node(State(state): State<AppState>, body: Bytes) -> Result<Response, ApiError> {
    let map = json_object(&body, NODE_FIELDS)?;
    let mut f = Fields::default();
    let mac = f.parse::<MacAddr>(&map, "mac", true);
    let hostname = f.parse::<Hostname>(&map, "hostname", true);
    let ip = f.parse::<NodeIp>(&map, "ip", true);
    let role = f.parse::<Role>(&map, "role", true);
    let labels = f.labels(&map).unwrap_or_default();
    let install_disk = f.parse::<InstallDisk>(&map, "install_disk", false);
    let boot_file = f.parse::<BootFile>(&map, "boot_file", false);
    if let Some(ip) = ip {
        f.reserved_ip(&state.config, ip);
    }
    f.finish()?;
    let (Some(mac), Some(hostname), Some(ip), Some(role)) = (mac, hostname, ip, role) else {
        unreachable!("finish() reports every missing required field");
    };
    let new = NewNode {
        mac,
        hostname,
        ip,
        role,
        labels,
        install_disk,
        boot_file,
    };
    let node = blocking(&state, move |store| store.create_node(&new)).await?;
    tracing::info!(mac = %node.mac, hostname = %node.display_name(), ip = %node.ip.map(|i| i.to_string()).unwrap_or_default(), "node registered");
    let body = node_response(node, &state.config.flatcar.install_disk);
    Ok((StatusCode::CREATED, axum::Json(body)).into_response())
}

/// The rendered node list of one registry generation, and its gzip form once asked for.
#[derive(Clone)]
pub struct ListCache {
    generation: u64,
    body: Bytes,
    gzip: Option<Bytes>,
}

fn gzip(body: &[u8]) -> Bytes {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(
        Vec::with_capacity(body.len() / 6),
        flate2::Compression::fast(),
    );
    enc.write_all(body).expect("writing to memory");
    Bytes::from(enc.finish().expect("writing to memory"))
}

fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|enc| {
            let mut parts = enc.split(';');
            parts.next().is_some_and(|e| e.trim() == "gzip")
                && !parts.any(|p| p.trim().replace(' ', "") == "q=0")
        })
}

/// Served from the registry's in-memory view (no disk access, so no blocking pool), and
/// rendered once per registry generation: pollers get the same bytes, or a 304 when they send
/// the generation back as `If-None-Match`. Gzip when the client takes it (the console with a
/// thousand nodes: ~10x fewer bytes), compressed once per generation too.
#[utoipa::path(
    get, path = "/nodes", tag = "nodes",
    summary = "Every node the registry holds",
    params(("If-None-Match" = Option<String>, Header, description = "The `ETag` of a previous answer: 304 if nothing changed since")),
    responses(
        (status = 200, description = "The nodes; `ETag` is the registry's generation, `Lacave-Event-Seq` the event stream's position", body = [NodeResponse],
            headers(("ETag" = String), ("Lacave-Event-Seq" = u64))),
        (status = 304, description = "Nothing changed since the `If-None-Match` ETag"),
    )
)]
async fn list_nodes(State(state): State<AppState>, headers: HeaderMap) -> Response {
    // Read before the nodes: every event up to it is in the list below (the view is updated
    // before the feed releases), so a live stream resumes after it with nothing missed.
    let event_seq = state.store.feed_head();
    let want_gzip = accepts_gzip(&headers);
    let cached = state
        .node_list_cache
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let mut list = match cached {
        Some(c) if c.generation == state.store.generation() => c,
        _ => {
            let default_disk = &state.config.flatcar.install_disk;
            let (generation, list) = state.store.with_nodes(|generation, nodes| {
                let list: Vec<NodeResponse> = nodes
                    .map(|n| node_response(n.into_owned(), default_disk))
                    .collect();
                (generation, list)
            });
            let body = Bytes::from(serde_json::to_vec(&list).expect("API types serialise"));
            ListCache {
                generation,
                body,
                gzip: None,
            }
        }
    };
    if want_gzip && list.gzip.is_none() {
        list.gzip = Some(gzip(&list.body));
    }
    let generation = list.generation;
    {
        let mut cache = state
            .node_list_cache
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        // Another request may have cached a newer generation meanwhile: keep the newest.
        if cache.as_ref().is_none_or(|c| {
            c.generation < generation || (c.generation == generation && c.gzip.is_none())
        }) {
            *cache = Some(list.clone());
        }
    }
    let etag = format!("\"{generation}\"");
    let not_modified = headers
        .get(header::IF_NONE_MATCH)
        .is_some_and(|v| v.as_bytes() == etag.as_bytes());
    let etag = HeaderValue::from_str(&etag).expect("a number is a valid header");
    let seq = (EVENT_SEQ, HeaderValue::from(event_seq));
    let vary = (header::VARY, HeaderValue::from_static("accept-encoding"));
    if not_modified {
        return (StatusCode::NOT_MODIFIED, [(header::ETAG, etag), seq, vary]).into_response();
    }
    let json = (
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    match list.gzip {
        Some(body) if want_gzip => (
            [
                json,
                (header::ETAG, etag),
                seq,
                vary,
                (header::CONTENT_ENCODING, HeaderValue::from_static("gzip")),
            ],
            body,
        )
            .into_response(),
        _ => ([json, (header::ETAG, etag), seq, vary], list.body).into_response(),
    }
}

#[utoipa::path(
    get, path = "/nodes/{name}", tag = "nodes", operation_id = "get_node", summary = "One node",
    params(("name" = String, Path, description = "The node: its MAC address, hostname or IP address")),
    responses((status = 200, description = "The node", body = NodeResponse), (status = 404, description = "No such node", body = super::error::Problem, content_type = "application/problem+json"))
)]
async fn show_node(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let keys = node_keys(&name)?;
    let node = state.store.get(&keys)?;
    Ok(axum::Json(node_response(node, &state.config.flatcar.install_disk)).into_response())
}

#[utoipa::path(
    patch, path = "/nodes/{name}", tag = "nodes",
    summary = "Change some of a node's fields",
    params(("name" = String, Path, description = "The node: its MAC address, hostname or IP address")),
    request_body = NodeUpdateRequest,
    responses(
        (status = 200, description = "The node as changed", body = NodeResponse),
        (status = 404, description = "No such node", body = super::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "The new MAC address, hostname or IP address belongs to another node", body = super::error::Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields, each named in `errors`, or nothing to change", body = super::error::Problem, content_type = "application/problem+json"),
    )
)]
async fn update_node(
    State(state): State<AppState>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let keys = node_keys(&name)?;
    let map = json_object(&body, NODE_FIELDS)?;
    let mut f = Fields::default();
    let null_not_allowed = |f: &mut Fields, field: &str| {
        if matches!(map.get(field), Some(Value::Null)) {
            f.fail(field, "cannot be null");
        }
    };
    for field in ["mac", "hostname", "ip", "role", "labels"] {
        null_not_allowed(&mut f, field);
    }
    let patch = NodePatch {
        mac: f.parse(&map, "mac", false),
        hostname: f.parse(&map, "hostname", false),
        ip: f.parse(&map, "ip", false),
        role: f.parse(&map, "role", false),
        labels: f.labels(&map),
        install_disk: f.resettable::<InstallDisk>(&map, "install_disk"),
        boot_file: f.resettable::<BootFile>(&map, "boot_file"),
    };
    if let Some(ip) = patch.ip {
        f.reserved_ip(&state.config, ip);
    }
    f.finish()?;
    if patch.is_empty() {
        return Err(ApiError::invalid(vec![FieldError {
            field: String::new(),
            reason: format!("nothing to change; give one of {}", NODE_FIELDS.join(", ")),
        }]));
    }
    let fields = patch.field_names().join(",");
    let node = blocking(&state, move |store| store.update_node(&keys, &patch)).await?;
    tracing::info!(node = %node.display_name(), %fields, "node updated");
    Ok(axum::Json(node_response(node, &state.config.flatcar.install_disk)).into_response())
}

/// `?force=true`: remove the last control plane anyway.
#[derive(Debug, Default, serde::Deserialize)]
struct DeleteQuery {
    #[serde(default)]
    force: bool,
}

#[utoipa::path(
    delete, path = "/nodes/{name}", tag = "nodes",
    summary = "Remove a node (cordoned, drained and reset first when in the cluster)",
    params(("name" = String, Path, description = "The node: its MAC address, hostname or IP address"), ("force" = Option<bool>, Query, description = "Remove the last control plane too (that ends the cluster)")),
    responses(
        (status = 204, description = "Removed"),
        (status = 404, description = "No such node", body = super::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "Refused: the last control plane, a join running, … (`detail` says which)", body = super::error::Problem, content_type = "application/problem+json"),
        (status = 502, description = "The API server refused part of the removal", body = super::error::Problem, content_type = "application/problem+json"),
        (status = 503, description = "The cluster could not be reached: nothing was removed", body = super::error::Problem, content_type = "application/problem+json"),
        (status = 504, description = "The drain did not finish in time", body = super::error::Problem, content_type = "application/problem+json"),
    )
)]
async fn delete_node(
    State(state): State<AppState>,
    Path(name): Path<String>,
    axum::extract::Query(query): axum::extract::Query<DeleteQuery>,
) -> Result<Response, ApiError> {
    let keys = node_keys(&name)?;
    // A node in the cluster leaves it first (cordon, drain, Node deleted, reset).
    if let Some(joiner) = state.cluster.get().cloned() {
        let node = state.store.get(&keys)?;
        joiner
            .remove(&node, query.force)
            .await
            .map_err(removal_error)?;
    }
    let node = blocking(&state, move |store| store.delete_node(&keys)).await?;
    if let Err(error) = state.bmcs.remove(node.mac) {
        tracing::warn!(node = %node.display_name(), %error, "the removed node's BMC file stays");
    }
    tracing::info!(node = %node.display_name(), mac = %node.mac, "node removed");
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// One status per kind of removal failure: 409 only when the request conflicts with the
/// cluster's state; the node stays registered in every case.
fn removal_error(error: crate::cluster::join::RemovalError) -> ApiError {
    use crate::cluster::join::RemovalError;
    let (status, code) = match &error {
        RemovalError::Conflict(_) => (StatusCode::CONFLICT, "cluster_removal"),
        RemovalError::Unreachable { .. } => {
            (StatusCode::SERVICE_UNAVAILABLE, "cluster_unreachable")
        }
        RemovalError::Timeout(_) => (StatusCode::GATEWAY_TIMEOUT, "cluster_timeout"),
        RemovalError::Failed(_) => (StatusCode::BAD_GATEWAY, "cluster_refused"),
        RemovalError::Store(_) => return ApiError::internal("the registry", error),
    };
    ApiError::new(status, code, error.to_string())
}

#[utoipa::path(
    get, path = "/nodes/{name}/events", tag = "nodes",
    summary = "A node's history, oldest first",
    params(("name" = String, Path, description = "The node: its MAC address, hostname or IP address")),
    responses((status = 200, description = "Its events", body = [EventResponse]), (status = 404, description = "No such node", body = super::error::Problem, content_type = "application/problem+json"))
)]
async fn node_events(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let keys = node_keys(&name)?;
    let events = blocking(&state, move |store| store.events(&keys)).await?;
    let body: Vec<EventResponse> = events.into_iter().map(event_response).collect();
    Ok(axum::Json(body).into_response())
}

/// Joins a node to the cluster again: the join loop resets it (`kubeadm reset -f`) and runs
/// its join from the start. For a node whose join failed, or one joining, joined or ready.
#[utoipa::path(
    post, path = "/nodes/{name}/rejoin", tag = "nodes",
    summary = "Reset the node's Kubernetes state and join it again",
    params(("name" = String, Path, description = "The node: its MAC address, hostname or IP address")),
    responses(
        (status = 200, description = "The node, back to `booted`: the join starts", body = NodeResponse),
        (status = 404, description = "No such node", body = super::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "Not joinable now: cluster off, not in the cluster, the last Ready control plane, or a join running", body = super::error::Problem, content_type = "application/problem+json"),
    )
)]
async fn rejoin_node(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let Some(joiner) = state.cluster.get().cloned() else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "cluster_disabled",
            "the daemon joins no node to Kubernetes ([cluster] enabled = false)",
        ));
    };
    let keys = node_keys(&name)?;
    let node = state.store.get(&keys)?;
    let shown = node.display_name();
    if !node.in_cluster() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_joinable",
            format!(
                "{shown} is {}: only a node whose join failed, or one joining, joined or ready, can rejoin",
                node.state
            ),
        ));
    }
    if node.role == Some(crate::model::Role::ControlPlane) && node.state == NodeState::Ready {
        let others = state.store.list_nodes()?.into_iter().any(|n| {
            n.mac != node.mac
                && n.role == Some(crate::model::Role::ControlPlane)
                && n.state == NodeState::Ready
        });
        if !others {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "last_control_plane",
                format!(
                    "{shown} is the only Ready control plane: resetting it would end the cluster"
                ),
            ));
        }
    }
    refuse_while_joining(&state, &joiner, &node)?;
    let node = blocking(&state, move |store| {
        store.transition(
            &keys,
            NodeState::Booted,
            "rejoin requested by operator",
            None,
        )
    })
    .await?;
    tracing::info!(node = %node.display_name(), "rejoin requested");
    Ok(axum::Json(node_response(node, &state.config.flatcar.install_disk)).into_response())
}

/// 409 `join_running` while the node's join runs (it holds an SSH session running kubeadm
/// on the machine).
fn refuse_while_joining(
    state: &AppState,
    joiner: &crate::cluster::join::Joiner,
    node: &crate::model::Node,
) -> Result<(), ApiError> {
    let id = state
        .store
        .node_id(&[crate::model::NodeKey::Mac(node.mac)])?;
    if joiner.is_joining(id) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "join_running",
            format!(
                "{} is being joined right now; ask again once it is done or failed",
                node.display_name()
            ),
        ));
    }
    Ok(())
}

/// `?power=true`: also make the next boot a network boot and power-cycle the machine
/// through its BMC.
#[derive(Debug, Default, serde::Deserialize)]
struct ReinstallQuery {
    #[serde(default)]
    power: bool,
}

#[utoipa::path(
    post, path = "/nodes/{name}/reinstall", tag = "nodes",
    summary = "Install the node again at its next network boot (at once, with `power=true`)",
    params(("name" = String, Path, description = "The node: its MAC address, hostname or IP address"),
        ("power" = Option<bool>, Query, description = "Also set the next boot to the network and power-cycle the machine through its BMC")),
    responses(
        (status = 200, description = "The node, back to `registered`", body = NodeResponse),
        (status = 502, description = "`power=true`: the BMC refused (the node is registered for its reinstall)", body = super::error::Problem, content_type = "application/problem+json"),
        (status = 504, description = "`power=true`: the BMC does not answer (the node is registered for its reinstall)", body = super::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such node", body = super::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "A join of the node is running, or the transition is not allowed", body = super::error::Problem, content_type = "application/problem+json"),
    )
)]
async fn reinstall_node(
    State(state): State<AppState>,
    Path(name): Path<String>,
    axum::extract::Query(query): axum::extract::Query<ReinstallQuery>,
) -> Result<Response, ApiError> {
    let keys = node_keys(&name)?;
    let current = state.store.get(&keys)?;
    // A join under way holds an SSH session running kubeadm on the machine: wait for it to
    // end (it stops at its next write anyway, since the node will have changed under it).
    if let Some(joiner) = state.cluster.get() {
        refuse_while_joining(&state, joiner, &current)?;
    }
    // Without a BMC the power cycle would wait for a person: refuse before changing anything.
    if query.power
        && state
            .bmcs
            .get(current.mac)
            .map_err(|e| super::power::power_error(&current.display_name(), e))?
            .is_none()
    {
        return Err(super::power::power_error(
            &current.display_name(),
            crate::power::PowerError::NotConfigured,
        ));
    }
    let node = blocking(&state, move |store| {
        store.transition(
            &keys,
            NodeState::Registered,
            "reinstall requested by operator",
            None,
        )
    })
    .await?;
    tracing::info!(node = %node.display_name(), "reinstall requested");
    if query.power {
        let shown = node.display_name();
        for action in [
            crate::power::PowerAction::PxeOnce,
            crate::power::PowerAction::Cycle,
        ] {
            super::power::operate_recorded(&state, node.mac, &shown, action, "for a reinstall")
                .await
                .map_err(|mut error| {
                    error.detail = format!(
                        "{shown} reinstalls at its next network boot, but the power {} failed: {}",
                        action.as_str(),
                        error.detail
                    );
                    error
                })?;
        }
        tracing::info!(node = %shown, "network boot set and power cycled for the reinstall");
    }
    Ok(axum::Json(node_response(node, &state.config.flatcar.install_disk)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::join::RemovalError;

    #[test]
    fn a_removal_is_409_only_when_it_conflicts() {
        for (error, status) in [
            (
                RemovalError::Conflict("last control plane".into()),
                StatusCode::CONFLICT,
            ),
            (
                RemovalError::Unreachable {
                    what: "drain w1".into(),
                    reason: "connection refused".into(),
                },
                StatusCode::SERVICE_UNAVAILABLE,
            ),
            (
                RemovalError::Timeout("drain w1: 2 pod(s) left".into()),
                StatusCode::GATEWAY_TIMEOUT,
            ),
            (
                RemovalError::Failed("etcd member kept".into()),
                StatusCode::BAD_GATEWAY,
            ),
            (
                RemovalError::Store("damaged".into()),
                StatusCode::INTERNAL_SERVER_ERROR,
            ),
        ] {
            assert_eq!(removal_error(error).status, status);
        }
    }
}

//! Node-facing boot endpoints (no token; each gives a machine only its own data):
//!
//! | method | path | what |
//! |---|---|---|
//! | GET | `/boot.ipxe` | generic script chaining to the per-MAC one |
//! | GET | `/ipxe/{mac}` | the machine's script, by its state; starts an install |
//! | GET | `/ignition/{mac}/install` | install Ignition (while `installing`) |
//! | GET | `/ignition/{mac}/final` | final Ignition (while `installing` or `installed`) |
//! | POST | `/callback/{mac}/installed` | from the installer, `Authorization: Bearer <secret>` |
//! | POST | `/callback/{mac}/booted` | from the installed system, body = SSH host public key |
//! | GET, HEAD | `/mirror/{path}` | files under `[flatcar] mirror_dir`, with `Range` |
//! | GET, HEAD | `/boot/{file}` | the TFTP root's binaries, for UEFI HTTP boot |
//!
//! Per-MAC endpoints answer only the machine itself (`boot::check_peer`: its MAC in the
//! neighbour table); configs carry the node's callback secret, so they never go to another
//! machine. A refusal is a 403 and an event on the node.

use std::net::IpAddr;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::{ApiError, AppState, PeerAddr, blocking};
use crate::boot::{self, Kind, ipxe};
use crate::model::{EventKind, MacAddr, Node, NodeKey, NodeState};
use crate::store::StoreError;

/// `GET /api/v1/nodes/{name}/render/{ipxe|install|final}` (operator API, token): what the
/// node would get now, without changing its state. Configs carry the node's current callback
/// secret (a placeholder before its install starts).
pub(super) fn operator_routes() -> super::openapi::ApiRouter {
    super::openapi::ApiRouter::new().routes(utoipa_axum::routes!(render_for_operator))
}

#[utoipa::path(
    get, path = "/nodes/{name}/render/{what}", tag = "nodes", operation_id = "render_node",
    summary = "What the node would get now: its iPXE script, install or final Ignition config",
    params(("name" = String, Path, description = "The node: its MAC address, hostname or IP address"), ("what" = String, Path, description = "`ipxe`, `install` or `final`")),
    responses(
        (status = 200, description = "The script (text) or the config (JSON)", content(
            (String = "text/plain"), (Object = "application/json"))),
        (status = 404, description = "No such node, or not `ipxe`, `install` or `final`", body = super::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "The node is only discovered: register it first", body = super::error::Problem, content_type = "application/problem+json"),
    )
)]
async fn render_for_operator(
    State(state): State<AppState>,
    Path((name, what)): Path<(String, String)>,
    auth: Option<axum::Extension<super::session::Auth>>,
) -> Result<Response, ApiError> {
    let node = state.store.get(&super::nodes::node_keys(&name)?)?;
    if what == "ipxe" {
        let script = state.boot.script_for(&state.config, node.mac, Some(&node));
        return Ok(text(ipxe::render(&script)));
    }
    let Some(kind) = Kind::from_name(&what) else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("cannot render {what:?} (ipxe, install or final)"),
        ));
    };
    if node.state == NodeState::Discovered {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_registered",
            format!(
                "{} is only discovered: register it first",
                node.display_name()
            ),
        ));
    }
    // The console shows configs with the node's callback secret redacted: a browser is no
    // place for it (the CLI, with the token, gets the real one to debug with).
    let secret = match (auth, &node.callback_secret) {
        (Some(axum::Extension(super::session::Auth::Session)), Some(_)) => "REDACTED".into(),
        (_, Some(secret)) => secret.clone(),
        (_, None) => "issued-when-the-install-starts".into(),
    };
    let body = render(&state, &node, kind, &secret)?;
    Ok(ignition_response(body))
}

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/boot.ipxe", get(generic_script))
        .route("/ipxe/{mac}", get(node_script))
        .route("/ignition/{mac}/{kind}", get(ignition))
        .route("/callback/{mac}/{event}", post(callback))
        .route("/mirror/{*path}", get(mirror))
        .route("/boot/{*path}", get(boot_file))
}

const IPXE: &str = "text/plain; charset=utf-8";

fn ignition_response(body: String) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/vnd.coreos.ignition+json"),
        )],
        body,
    )
        .into_response()
}

fn text(body: String) -> Response {
    (
        [(header::CONTENT_TYPE, HeaderValue::from_static(IPXE))],
        body,
    )
        .into_response()
}

fn parse_mac(text: &str) -> Result<MacAddr, ApiError> {
    text.parse::<MacAddr>().map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_mac",
            format!("{text:?} in the URL is not a MAC address: {e}"),
        )
    })
}

/// Refuses a request for `mac`'s data from another machine, with an event on the node.
async fn check_peer(
    state: &AppState,
    peer: IpAddr,
    mac: MacAddr,
    node: Option<&Node>,
    what: &'static str,
) -> Result<(), ApiError> {
    if !state.config.flatcar.check_peer {
        return Ok(());
    }
    let registered = node.and_then(|n| n.ip).map(|ip| ip.addr());
    let table = boot::neighbour_table();
    let trust = state.config.flatcar.trust_routed_peers;
    let Err(why) = boot::check_peer(peer, mac, registered, trust, &table) else {
        return Ok(());
    };
    tracing::warn!(%peer, %mac, what, reason = %why, "refused: the request does not come from that machine");
    if node.is_some()
        && state
            .refusals
            .first_in_a_while(mac, peer, std::time::Instant::now())
    {
        let message = format!("{what} refused to {peer}: {why}");
        let recorded = blocking(state, move |store| {
            store.record_event(&[NodeKey::Mac(mac)], EventKind::Refused { peer }, message)
        })
        .await;
        if let Err(error) = recorded {
            tracing::warn!(%mac, ?error, "recording a refused request failed");
        }
    }
    Err(ApiError::new(
        StatusCode::FORBIDDEN,
        "wrong_peer",
        format!("{what} for {mac} is served only to that machine: {why}"),
    ))
}

/// When refusals were last recorded as events, per node and peer: one a minute per pair, so
/// a machine retrying (or a flood) cannot fill the node's history or the disk. One per daemon.
#[derive(Default)]
pub struct Refusals(
    std::sync::Mutex<std::collections::HashMap<(MacAddr, IpAddr), std::time::Instant>>,
);

impl Refusals {
    /// Pairs remembered at most; past them (a flood of refusals) only the log line is written.
    const MAX: usize = 4096;
    const EVERY: std::time::Duration = std::time::Duration::from_secs(60);

    /// Whether a refusal of `peer` for `mac` at `now` is worth an event.
    fn first_in_a_while(&self, mac: MacAddr, peer: IpAddr, now: std::time::Instant) -> bool {
        let mut last = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if last.len() >= Self::MAX {
            last.retain(|_, at| now.duration_since(*at) < Self::EVERY);
            if last.len() >= Self::MAX {
                return false;
            }
        }
        match last.get(&(mac, peer)) {
            Some(at) if now.duration_since(*at) < Self::EVERY => false,
            _ => {
                last.insert((mac, peer), now);
                true
            }
        }
    }
}

async fn generic_script(State(state): State<AppState>) -> Response {
    text(ipxe::generic(&boot::base_url(&state.config)))
}

async fn node_script(
    State(state): State<AppState>,
    ConnectInfo(PeerAddr(peer)): ConnectInfo<PeerAddr>,
    Path(mac): Path<String>,
) -> Result<Response, ApiError> {
    let mac = parse_mac(&mac)?;
    let node = state.store.get_by_mac(mac)?;
    check_peer(&state, peer.ip(), mac, node.as_ref(), "the iPXE script").await?;
    let node = match node {
        None => {
            let recorded = blocking(&state, move |store| {
                // An unknown machine asks again every `unknown_retry_secs`: a write (and a
                // flush) only the first time.
                let new = store.record_discovered(mac)?;
                if new {
                    store.flush()?;
                }
                Ok(new)
            })
            .await?;
            if recorded {
                tracing::info!(%mac, %peer, "unknown machine asked for its iPXE script; recorded as discovered");
            }
            None
        }
        Some(n) if n.state == NodeState::Registered => {
            // Starting the install issues the secret its configs and callbacks carry.
            let secret = crate::secrets::random_hex(24);
            let result = blocking(&state, move |store| {
                store.transition_with(
                    &[NodeKey::Mac(mac)],
                    NodeState::Installing,
                    "install script served",
                    None,
                    |node| {
                        node.callback_secret = Some(secret.clone());
                        Ok(())
                    },
                )
            })
            .await;
            match result {
                Ok(n) => {
                    tracing::info!(node = %n.display_name(), %mac, %peer, "install started: iPXE script served");
                    Some(n)
                }
                // Another request started it first: serve what the registry now says.
                Err(error) => {
                    tracing::warn!(%mac, ?error, "could not start the install; serving the registry's current state");
                    state.store.get_by_mac(mac)?
                }
            }
        }
        other => other,
    };
    let script = state.boot.script_for(&state.config, mac, node.as_ref());
    if let (Some(n), ipxe::Script::Local { .. }) = (&node, &script) {
        tracing::info!(node = %n.display_name(), state = %n.state, "local-boot script served");
    }
    Ok(text(ipxe::render(&script)))
}

async fn ignition(
    State(state): State<AppState>,
    ConnectInfo(PeerAddr(peer)): ConnectInfo<PeerAddr>,
    Path((mac, kind)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let mac = parse_mac(&mac)?;
    let Some(kind) = Kind::from_name(&kind) else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no Ignition config named {kind:?} (install or final)"),
        ));
    };
    let node = state.store.get_by_mac(mac)?;
    check_peer(&state, peer.ip(), mac, node.as_ref(), "an Ignition config").await?;
    let Some(node) = node.filter(|n| n.state != NodeState::Discovered) else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{mac} is not a registered node"),
        ));
    };
    let allowed = match kind {
        Kind::Install => node.state == NodeState::Installing,
        Kind::Final => matches!(node.state, NodeState::Installing | NodeState::Installed),
    };
    let Some(secret) = node.callback_secret.clone().filter(|_| allowed) else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "wrong_state",
            format!(
                "node {} is {}: its {} config is served only during an install",
                node.display_name(),
                node.state,
                kind.as_str()
            ),
        ));
    };
    let body = render(&state, &node, kind, &secret)?;
    tracing::info!(node = %node.display_name(), config = kind.as_str(), "Ignition config served");
    Ok(ignition_response(body))
}

/// Renders one of a node's configs; a failure is the operator's template, logged in full.
pub(super) fn render(
    state: &AppState,
    node: &Node,
    kind: Kind,
    secret: &str,
) -> Result<String, ApiError> {
    // The release the cluster runs (recorded at init and by each upgrade), else the
    // configured one.
    let version = state
        .store
        .cluster_version()
        .ok()
        .flatten()
        .unwrap_or_else(|| state.config.cluster.kubernetes_version.clone());
    let cx = state.boot.context(
        &state.config,
        node,
        secret,
        &state.ca.bundle_pem(),
        &version,
    );
    let role = node.role.map(|r| r.as_str()).unwrap_or_default();
    state
        .boot
        .templates
        .render(kind, &node.display_name(), role, &cx)
        .map_err(|e| ApiError::internal("rendering an Ignition template", e))
}

async fn callback(
    State(state): State<AppState>,
    ConnectInfo(PeerAddr(peer)): ConnectInfo<PeerAddr>,
    Path((mac, event)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let mac = parse_mac(&mac)?;
    let (from, to) = match event.as_str() {
        "installed" => (NodeState::Installing, NodeState::Installed),
        "booted" => (NodeState::Installed, NodeState::Booted),
        other => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no callback named {other:?} (installed or booted)"),
            ));
        }
    };
    let node = state
        .store
        .get_by_mac(mac)?
        .filter(|n| n.state != NodeState::Discovered);
    check_peer(&state, peer.ip(), mac, node.as_ref(), "a callback").await?;
    let Some(node) = node else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{mac} is not a registered node"),
        ));
    };
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .unwrap_or_default();
    let secret_ok = node
        .callback_secret
        .as_deref()
        .is_some_and(|s| crate::secrets::constant_time_eq(s, presented));
    if !secret_ok {
        tracing::warn!(node = %node.display_name(), %peer, event, "callback refused: wrong or missing secret");
        return Err(ApiError::unauthorized(
            "this callback needs Authorization: Bearer <the node's callback secret>",
        ));
    }
    let host_key = if to == NodeState::Booted {
        let text = String::from_utf8_lossy(&body).trim().to_string();
        match ssh_key::PublicKey::from_openssh(&text) {
            Ok(_) => Some(text),
            Err(e) => {
                return Err(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_host_key",
                    format!("the body must be the node's SSH host public key (OpenSSH form): {e}"),
                ));
            }
        }
    } else {
        None
    };
    // A repeated callback (curl retried after a lost answer) changes nothing.
    if node.state == to && (host_key.is_none() || host_key == node.ssh_host_key) {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    if node.state != from {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "wrong_state",
            format!(
                "node {} is {}; the {event} callback is expected while it is {from}",
                node.display_name(),
                node.state
            ),
        ));
    }
    let message = format!("{event} callback from {}", peer.ip());
    let presented = presented.to_string();
    let node = blocking(&state, move |store| {
        store.transition_with(&[NodeKey::Mac(mac)], to, &message, None, |n| {
            // A reinstall between the check above and this transaction rotated the secret.
            if n.callback_secret.as_deref() != Some(presented.as_str()) {
                return Err(StoreError::Stale(
                    "the node was reinstalled meanwhile; its callback secret changed".into(),
                ));
            }
            if let Some(key) = &host_key {
                n.ssh_host_key = Some(key.clone());
            }
            Ok(())
        })
    })
    .await?;
    tracing::info!(node = %node.display_name(), state = %node.state, %peer, "node called back");
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn mirror(
    State(state): State<AppState>,
    method: Method,
    Path(path): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let dir = state.config.flatcar.mirror_dir.clone();
    let file = resolve_or_404("mirror file", dir, Vec::new(), &path).await?;
    file_response(&file, &method, &headers, &path).await
}

/// `GET /boot/{file}`: the TFTP root's boot binaries over HTTP, for UEFI HTTP boot (the URL
/// DHCP gives arch 15/16/19 clients), with the TFTP service's path rules.
async fn boot_file(
    State(state): State<AppState>,
    method: Method,
    Path(path): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let tftp = &state.config.tftp;
    let file = resolve_or_404(
        "boot file",
        tftp.root.clone(),
        tftp.follow_links_into.clone(),
        &path,
    )
    .await?;
    file_response(&file, &method, &headers, &path).await
}

/// The file under `root` that `path` names (`tftp::resolve`'s rules), resolved off the async
/// workers; a refusal is a 404 that says only "not found" (why, such as where a link leads, is
/// logged: the body would otherwise tell any client what exists outside the root).
async fn resolve_or_404(
    what: &'static str,
    root: std::path::PathBuf,
    allowed: Vec<std::path::PathBuf>,
    path: &str,
) -> Result<std::path::PathBuf, ApiError> {
    let requested = path.to_string();
    tokio::task::spawn_blocking(move || {
        crate::tftp::resolve::resolve(&root, &allowed, std::path::Path::new(&requested))
    })
    .await
    .map_err(|e| ApiError::internal("resolving a file path", e))?
    .map_err(|why| {
        tracing::info!(path, %why, what, "file request refused");
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no {what} {path:?}"),
        )
    })
}

/// A file (or the range asked for), streamed in 256 KiB reads.
pub(super) async fn file_response(
    file: &std::path::Path,
    method: &Method,
    headers: &HeaderMap,
    path: &str,
) -> Result<Response, ApiError> {
    let mut f = tokio::fs::File::open(&file)
        .await
        .map_err(|e| ApiError::internal("opening a file", e))?;
    let len = f
        .metadata()
        .await
        .map_err(|e| ApiError::internal("reading a file's size", e))?
        .len();
    let range = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    let (status, start, count) = match boot::parse_range(range, len) {
        boot::Range::Full => (StatusCode::OK, 0, len),
        boot::Range::Part { start, end } => (StatusCode::PARTIAL_CONTENT, start, end - start + 1),
        boot::Range::Unsatisfiable => {
            let mut r = ApiError::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "range_not_satisfiable",
                format!("{path} has {len} bytes; the range asked for is beyond its end"),
            )
            .into_response();
            r.headers_mut().insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes */{len}")).expect("ascii"),
            );
            return Ok(r);
        }
    };
    let mut response = Response::builder()
        .status(status)
        .header(header::CONTENT_LENGTH, count)
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::CONTENT_TYPE, "application/octet-stream");
    if status == StatusCode::PARTIAL_CONTENT {
        response = response.header(
            header::CONTENT_RANGE,
            format!("bytes {start}-{}/{len}", start + count - 1),
        );
    }
    let body = if *method == Method::HEAD {
        Body::empty()
    } else {
        f.seek(std::io::SeekFrom::Start(start))
            .await
            .map_err(|e| ApiError::internal("seeking in a file", e))?;
        // Streamed in 256 KiB reads: memory stays constant whatever the file's size.
        Body::from_stream(tokio_util::io::ReaderStream::with_capacity(
            f.take(count),
            256 * 1024,
        ))
    };
    response
        .body(body)
        .map_err(|e| ApiError::internal("building a file response", e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn a_refusal_is_recorded_once_a_minute_per_node_and_peer() {
        let refusals = Refusals::default();
        let (mac, other) = (
            "52:54:00:00:00:01".parse().unwrap(),
            "52:54:00:00:00:02".parse().unwrap(),
        );
        let (peer, stranger): (IpAddr, IpAddr) =
            ("10.0.0.9".parse().unwrap(), "10.0.0.7".parse().unwrap());
        let t0 = Instant::now();
        assert!(refusals.first_in_a_while(mac, peer, t0));
        assert!(!refusals.first_in_a_while(mac, peer, t0 + Duration::from_secs(59)));
        // Another node or another peer is another pair.
        assert!(refusals.first_in_a_while(other, peer, t0));
        assert!(refusals.first_in_a_while(mac, stranger, t0));
        assert!(refusals.first_in_a_while(mac, peer, t0 + Duration::from_secs(61)));
        // Two daemons (two states) do not share their memory of refusals.
        assert!(Refusals::default().first_in_a_while(mac, peer, t0));
    }

    #[test]
    fn a_flood_of_refusals_is_bounded() {
        let refusals = Refusals::default();
        let peer: IpAddr = "10.0.0.9".parse().unwrap();
        let t0 = Instant::now();
        let mac = |i: u32| {
            let b = i.to_be_bytes();
            MacAddr::new([0x52, 0x54, b[0], b[1], b[2], b[3]])
        };
        for i in 0..Refusals::MAX as u32 {
            assert!(refusals.first_in_a_while(mac(i), peer, t0));
        }
        // Full of recent pairs: a new one is not recorded, and nothing grows.
        assert!(!refusals.first_in_a_while(mac(1 << 20), peer, t0));
        assert_eq!(refusals.0.lock().unwrap().len(), Refusals::MAX);
        // A minute on, the old pairs make room.
        assert!(refusals.first_in_a_while(mac(1 << 20), peer, t0 + Duration::from_secs(61)));
        assert_eq!(refusals.0.lock().unwrap().len(), 1);
    }
}

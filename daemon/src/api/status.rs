//! `GET /api/v1/status`: the daemon at a glance — its services, their counters (the same
//! numbers as `/metrics`), the registry, the CA. What the console's Services page shows.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::AppState;
use super::openapi::ApiRouter;
use utoipa_axum::routes;

pub(super) fn routes() -> ApiRouter {
    ApiRouter::new().routes(routes!(status))
}

#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StatusResponse {
    pub version: String,
    /// The commit the daemon was built from (`unknown` outside git without `LACAVE_COMMIT`).
    #[serde(default)]
    pub commit: String,
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
    pub registry: RegistryStatus,
    pub services: Vec<ServiceStatus>,
    pub ca: CaStatus,
    /// Whether the daemon joins nodes to Kubernetes (`GET /api/v1/cluster` and
    /// `/api/v1/addons` then say how it goes).
    pub cluster_enabled: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RegistryStatus {
    pub writable: bool,
    pub failure: Option<String>,
    pub nodes: BTreeMap<String, u64>,
    /// The live feed's position (`GET /api/v1/events`).
    pub event_seq: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ServiceStatus {
    pub name: String,
    pub enabled: bool,
    /// Where it listens and how it runs, in a few words.
    pub detail: String,
    /// Counters since the daemon started, by label.
    pub counters: BTreeMap<String, u64>,
}

#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CaStatus {
    pub subject: String,
    pub fingerprint_sha256: String,
    #[serde(with = "time::serde::rfc3339")]
    pub not_after: OffsetDateTime,
}

fn by_label(series: Vec<(Vec<String>, u64)>, column: usize) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for (labels, n) in series {
        if let Some(label) = labels.get(column) {
            *out.entry(label.clone()).or_default() += n;
        }
    }
    out
}

#[utoipa::path(
    get, path = "/status", tag = "daemon", operation_id = "daemon_status",
    summary = "The daemon: version, registry, services, CA",
    responses((status = 200, description = "Its status", body = StatusResponse))
)]
async fn status(State(state): State<AppState>) -> Json<StatusResponse> {
    let config = &state.config;
    let metrics = &state.metrics;
    let nodes: BTreeMap<String, u64> = state
        .store
        .count_by_state()
        .into_iter()
        .map(|(s, n)| (s.to_string(), n))
        .collect();
    let dropped = metrics.connections_dropped.snapshot();
    let dropped_on = |listener: &str| -> BTreeMap<String, u64> {
        dropped
            .iter()
            .filter(|(labels, _)| labels.first().is_some_and(|l| l == listener))
            .map(|(labels, n)| (format!("dropped {}", labels[1]), *n))
            .collect()
    };
    let mut services = Vec::new();
    services.push(ServiceStatus {
        name: "dhcp".into(),
        enabled: config.dhcp.is_some(),
        detail: match &config.dhcp {
            Some(dhcp) => format!(
                "{} mode, subnet {}{}",
                match dhcp.settings.mode {
                    crate::dhcp::settings::Mode::Full => "full",
                    crate::dhcp::settings::Mode::Proxy => "proxy",
                },
                dhcp.settings.subnet,
                dhcp.interface
                    .as_deref()
                    .map(|i| format!(" on {i}"))
                    .unwrap_or_default()
            ),
            None => "off ([dhcp] mode)".into(),
        },
        counters: by_label(metrics.dhcp_messages.snapshot(), 0),
    });
    services.push(ServiceStatus {
        name: "tftp".into(),
        enabled: config.tftp.listen.is_some(),
        detail: match config.tftp.listen {
            Some(addr) => format!("{addr}, root {}", config.tftp.root.display()),
            None => "off ([tftp] listen)".into(),
        },
        counters: by_label(metrics.tftp_transfers.snapshot(), 0),
    });
    services.push(ServiceStatus {
        name: "dns".into(),
        enabled: config.dns.listen.is_some(),
        detail: match config.dns.listen {
            Some(addr) => format!("{addr}, zone {}", config.dns.zone),
            None => "off ([dns] listen)".into(),
        },
        counters: {
            let mut c: BTreeMap<String, u64> = metrics
                .dns_queries
                .column_totals()
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect();
            c.extend(dropped_on("dns"));
            c
        },
    });
    let mut http = by_label(metrics.api_requests.snapshot(), 2)
        .into_iter()
        .map(|(status, n)| (format!("HTTP {status}"), n))
        .collect::<BTreeMap<_, _>>();
    http.extend(dropped_on("http"));
    services.push(ServiceStatus {
        name: "http".into(),
        enabled: true,
        detail: format!(
            "{} (boot scripts, Ignition, callbacks{})",
            config.http.listen,
            if config.api.listen.is_none() {
                ", API"
            } else {
                ""
            }
        ),
        counters: http,
    });
    services.push(ServiceStatus {
        name: "mirror".into(),
        enabled: true,
        detail: match config.http.mirror_listen {
            Some(addr) => format!("{addr} (sendfile), {}", config.flatcar.mirror_dir.display()),
            None => format!(
                "/mirror/ on {}, {}",
                config.http.listen,
                config.flatcar.mirror_dir.display()
            ),
        },
        counters: dropped_on("mirror"),
    });
    if let Some(addr) = config.api.listen {
        services.push(ServiceStatus {
            name: "api".into(),
            enabled: true,
            detail: format!("{addr} ({})", if config.api.tls { "HTTPS" } else { "HTTP" }),
            counters: dropped_on("api"),
        });
    }
    let failure = state.store.storage_failure();
    Json(StatusResponse {
        version: env!("CARGO_PKG_VERSION").into(),
        commit: env!("LACAVE_COMMIT").into(),
        started_at: state.started_at,
        registry: RegistryStatus {
            writable: failure.is_none(),
            failure,
            nodes,
            event_seq: state.store.feed_head(),
        },
        services,
        ca: CaStatus {
            subject: state.ca.subject().to_string(),
            fingerprint_sha256: state.ca.root_fingerprint(),
            not_after: state.ca.not_after(),
        },
        cluster_enabled: config.cluster.enabled,
    })
}

//! Cluster add-ons: the original project's `resources/` (dashboard admin, cert-manager and its
//! CA issuer, OIDC and tenant role bindings, monitoring, ingress) applied by the daemon with
//! server-side apply as soon as a control plane is Ready, and kept in step.
//!
//! - `catalog.rs`: the add-ons embedded from `resources/<name>/` (descriptor + manifests),
//!   per-file overrides, rendering, the image list.
//! - `settings.rs`: the `[addons]` section (reloaded on SIGHUP).
//! - `health.rs`: kstatus-style health of one object.
//! - `kube.rs`: discovery, apply, list, get, delete against the API server.
//! - `engine.rs`: the reconcile loop, inventories, pruning, status.

pub mod catalog;
pub mod engine;
pub mod health;
pub mod kube;
pub mod settings;

use base64::Engine as _;

pub use engine::{AddonState, AddonStatus, Addons};

/// What every add-on template sees, from the daemon's configuration and CA.
pub fn base_context(config: &crate::config::Config, ca: &crate::pki::Ca) -> catalog::RenderContext {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
    let (crt, key) = ca.issuer_key_pair();
    let cluster = &config.cluster;
    let zone = config
        .dns
        .zone
        .to_string()
        .trim_end_matches('.')
        .to_string();
    catalog::RenderContext {
        cluster: catalog::ClusterValues {
            name: cluster.name.clone(),
            domain: format!("{}.{zone}", config.dns.cluster_name),
            zone,
            endpoint: cluster.endpoint(),
            kubernetes_version: cluster.kubernetes_version.clone(),
            pod_cidr: cluster.pod_cidr.to_string(),
            service_cidr: cluster.service_cidr.to_string(),
        },
        ca: catalog::CaValues {
            bundle_pem: ca.bundle_pem(),
            crt_b64: b64(&crt),
            key_b64: b64(&key),
        },
        daemon: catalog::DaemonValues {
            metrics_target: format!("{}:{}", config.server_ip, config.http.listen.port()),
        },
        oidc_prefix: cluster.oidc_prefix.clone(),
        identity: identity_values(config),
        ..Default::default()
    }
}

/// `[identity]`'s secrets for the `keycloak` add-on (empty without `[identity]`, or when they
/// cannot be read: logged, and the add-on's Secrets then fail to apply with a clear reason).
fn identity_values(config: &crate::config::Config) -> catalog::IdentityValues {
    if !config.identity.enabled {
        return catalog::IdentityValues::default();
    }
    match crate::identity::addon_secrets(&config.identity) {
        Ok([admin_user_b64, admin_password_b64, db_password_b64]) => catalog::IdentityValues {
            admin_user_b64,
            admin_password_b64,
            db_password_b64,
        },
        Err(e) => {
            tracing::error!(error = %e, "the keycloak add-on's secrets cannot be read");
            catalog::IdentityValues::default()
        }
    }
}

/// The Prometheus lines of the add-ons' state.
pub fn metrics(statuses: &[AddonStatus]) -> String {
    use std::fmt::Write;
    type Value = fn(&AddonStatus) -> u64;
    let families: [(&str, &str, &str, Value); 3] = [
        (
            "lacave_addon_objects",
            "Objects applied per add-on.",
            "gauge",
            |s| s.objects as u64,
        ),
        (
            "lacave_addon_writes_total",
            "Applies and deletes sent to the API server per add-on.",
            "counter",
            |s| s.writes_total,
        ),
        (
            "lacave_addon_conflicts_total",
            "Field-manager conflicts met per add-on.",
            "counter",
            |s| s.conflicts_total,
        ),
    ];
    let mut out = String::from(
        "# HELP lacave_addon_healthy Whether the add-on is enabled, applied and healthy.\n# TYPE lacave_addon_healthy gauge\n",
    );
    for s in statuses {
        let _ = writeln!(
            out,
            "lacave_addon_healthy{{addon=\"{}\",state=\"{}\"}} {}",
            s.name,
            s.state,
            u8::from(s.state == engine::AddonState::Healthy)
        );
    }
    for (name, help, kind, value) in families {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for s in statuses {
            let _ = writeln!(out, "{name}{{addon=\"{}\"}} {}", s.name, value(s));
        }
    }
    out
}

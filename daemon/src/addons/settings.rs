//! The `[addons]` section: which cluster add-ons are on, their values, the tenants. Read at
//! start and again on SIGHUP (`systemctl reload lacave`): an add-on turned on or off is
//! applied or removed without a restart.
//!
//! ```toml
//! [addons]
//! enabled = true               # false: no add-on at all (each can also be turned off alone)
//! force_conflicts = false      # take fields another manager owns (default: report them)
//! resync_secs = 30             # how often every add-on is compared with the cluster
//! oidc_admin_groups = ["cluster-admins"]   # bound to cluster-admin (needs [cluster] OIDC)
//! resources_dir = "/etc/lacave/resources"  # per-file overrides of the embedded add-ons
//! [addons.monitoring]
//! enabled = false              # every add-on is on unless turned off (keycloak: off unless on)
//! [[addons.tenants]]
//! namespace = "team-a"
//! admin_groups = ["team-a-admins"]
//! edit_groups = ["team-a"]
//! view_groups = []
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde::Serialize;

use crate::model::{ADDON_NAMES, ADDONS_OFF_BY_DEFAULT, RESERVED_NAMESPACES};

/// `[addons]` as written: a table, checked key by key so that every problem is named.
pub type RawAddons = toml::Table;

/// The keys of `[addons]` for the configuration reference (`config/reference.rs`): the
/// section is read key by key by [`validate`], which a test holds to this list.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct AddonsKeys {
    /// `false`: no add-on at all (each can also be turned off alone, `[addons.<name>]
    /// enabled = false`; `keycloak` is off unless `[addons.keycloak] enabled = true`).
    ///
    /// Default: `true`.
    enabled: Option<bool>,
    /// Take the fields another field manager owns (default: report them as conflicts).
    ///
    /// Default: `false`.
    force_conflicts: Option<bool>,
    /// How often every add-on is compared with the cluster, in seconds (1 to 86400).
    ///
    /// Default: `30`.
    resync_secs: Option<u32>,
    /// Per-file overrides of the embedded add-ons' manifests.
    ///
    /// Default: unset (the embedded manifests).
    resources_dir: Option<String>,
    /// OIDC groups bound to cluster-admin (needs `[cluster] oidc_issuer_url`).
    ///
    /// Default: `[]`.
    oidc_admin_groups: Option<Vec<String>>,
    /// Namespaces for teams, each with the OIDC groups bound to its admin, edit and view
    /// roles (`[[addons.tenants]]`).
    ///
    /// Default: none.
    tenants: Option<Vec<TenantKeys>>,
}

/// The keys of one `[[addons.tenants]]` entry.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct TenantKeys {
    /// The namespace (a DNS-1123 label, not a system namespace).
    ///
    /// Default: required.
    namespace: String,
    /// Groups bound to the namespace's `admin` role.
    ///
    /// Default: `[]`.
    admin_groups: Option<Vec<String>>,
    /// Groups bound to its `edit` role.
    ///
    /// Default: `[]`.
    edit_groups: Option<Vec<String>>,
    /// Groups bound to its `view` role.
    ///
    /// Default: `[]`.
    view_groups: Option<Vec<String>>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct AddonsConfig {
    /// The add-ons to keep applied (`tenants` only when tenants or OIDC groups are set).
    pub enabled: BTreeSet<String>,
    /// Each add-on's `[addons.<name>]` keys other than `enabled`, for its templates.
    pub values: BTreeMap<String, serde_json::Map<String, serde_json::Value>>,
    pub force_conflicts: bool,
    pub resync_secs: u32,
    pub resources_dir: Option<PathBuf>,
    pub tenants: Vec<Tenant>,
    pub oidc_admin_groups: Vec<String>,
    /// `[addons] enabled`: false keeps only the network plugin.
    pub on: bool,
}

/// One `[[addons.tenants]]` entry.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Tenant {
    pub namespace: String,
    pub admin_groups: Vec<String>,
    pub edit_groups: Vec<String>,
    pub view_groups: Vec<String>,
}

impl Default for AddonsConfig {
    fn default() -> Self {
        AddonsConfig {
            enabled: ADDON_NAMES
                .iter()
                .filter(|n| !ADDONS_OFF_BY_DEFAULT.contains(n))
                .map(|n| n.to_string())
                .collect(),
            values: BTreeMap::new(),
            force_conflicts: false,
            resync_secs: 30,
            resources_dir: None,
            tenants: Vec::new(),
            oidc_admin_groups: Vec::new(),
            on: true,
        }
    }
}

/// A namespace name: a DNS-1123 label.
fn is_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn strings(key: &str, value: &toml::Value, problem: &mut impl FnMut(&str, String)) -> Vec<String> {
    let Some(items) = value.as_array() else {
        problem(key, "must be a list of strings".into());
        return Vec::new();
    };
    let mut out = Vec::new();
    for item in items {
        match item.as_str() {
            Some(s) if s.starts_with("system:") => problem(
                key,
                format!(
                    "{s:?}: system:* groups are Kubernetes' own (system:masters is every right); bind groups of your identity provider"
                ),
            ),
            Some(s) if !s.trim().is_empty() && !s.chars().any(char::is_control) => {
                out.push(s.to_string())
            }
            _ => problem(
                key,
                format!(
                    "{item} is not a group name (a non-empty string without control characters)"
                ),
            ),
        }
    }
    out
}

/// Checks `[addons]`; `oidc` says whether `[cluster]` configures OIDC.
pub fn validate(
    raw: RawAddons,
    oidc: bool,
    problem: &mut impl FnMut(&str, String),
) -> AddonsConfig {
    let mut config = AddonsConfig::default();
    let mut all = true;
    for (key, value) in raw {
        let name = format!("addons.{key}");
        match key.as_str() {
            "enabled" => match value.as_bool() {
                Some(b) => all = b,
                None => problem(&name, "must be true or false".into()),
            },
            "force_conflicts" => match value.as_bool() {
                Some(b) => config.force_conflicts = b,
                None => problem(&name, "must be true or false".into()),
            },
            "resync_secs" => match value.as_integer() {
                Some(n @ 1..=86_400) => config.resync_secs = n as u32,
                _ => problem(
                    &name,
                    format!("{value} is not a number of seconds from 1 to 86400"),
                ),
            },
            "resources_dir" => match value.as_str().map(PathBuf::from) {
                Some(p) if p.is_absolute() => config.resources_dir = Some(p),
                _ => problem(&name, format!("{value} is not an absolute path")),
            },
            "oidc_admin_groups" => {
                config.oidc_admin_groups = strings(&name, &value, problem);
                if !oidc && !config.oidc_admin_groups.is_empty() {
                    problem(
                        &name,
                        "groups come from OIDC tokens, and [cluster] configures no OIDC issuer"
                            .into(),
                    );
                }
            }
            "tenants" => {
                let Some(items) = value.as_array() else {
                    problem(&name, "must be [[addons.tenants]] tables".into());
                    continue;
                };
                for (i, item) in items.iter().enumerate() {
                    let key = format!("addons.tenants[{i}]");
                    let Some(table) = item.as_table() else {
                        problem(&key, "must be a table".into());
                        continue;
                    };
                    let mut tenant = Tenant {
                        namespace: String::new(),
                        admin_groups: Vec::new(),
                        edit_groups: Vec::new(),
                        view_groups: Vec::new(),
                    };
                    for (k, v) in table {
                        let field = format!("{key}.{k}");
                        match k.as_str() {
                            "namespace" => match v.as_str() {
                                Some(s) if RESERVED_NAMESPACES.contains(&s) => problem(
                                    &field,
                                    format!(
                                        "{s:?} belongs to Kubernetes or an add-on; a tenant there could reach the cluster's own components (reserved: {})",
                                        RESERVED_NAMESPACES.join(", ")
                                    ),
                                ),
                                Some(s) if is_label(s) => tenant.namespace = s.to_string(),
                                _ => problem(
                                    &field,
                                    format!(
                                        "{v} is not a namespace name (lowercase letters, digits and '-', at most 63)"
                                    ),
                                ),
                            },
                            "admin_groups" => tenant.admin_groups = strings(&field, v, problem),
                            "edit_groups" => tenant.edit_groups = strings(&field, v, problem),
                            "view_groups" => tenant.view_groups = strings(&field, v, problem),
                            _ => problem(
                                &field,
                                "unknown key (namespace, admin_groups, edit_groups, view_groups)"
                                    .into(),
                            ),
                        }
                    }
                    if !table.contains_key("namespace") {
                        problem(&format!("{key}.namespace"), "missing".into());
                    } else if config
                        .tenants
                        .iter()
                        .any(|t| t.namespace == tenant.namespace)
                    {
                        problem(
                            &format!("{key}.namespace"),
                            format!("{:?} is another tenant's already", tenant.namespace),
                        );
                    }
                    config.tenants.push(tenant);
                }
            }
            addon if ADDON_NAMES.contains(&addon) && addon != "tenants" => {
                let Some(table) = value.as_table() else {
                    problem(&name, format!("must be a table ([addons.{addon}])"));
                    continue;
                };
                let mut values = serde_json::Map::new();
                for (k, v) in table {
                    if k == "enabled" {
                        match v.as_bool() {
                            Some(true) => {
                                config.enabled.insert(addon.to_string());
                            }
                            Some(false) => {
                                config.enabled.remove(addon);
                            }
                            None => {
                                problem(&format!("{name}.enabled"), "must be true or false".into())
                            }
                        }
                    } else {
                        values.insert(
                            k.clone(),
                            serde_json::to_value(v).unwrap_or(serde_json::Value::Null),
                        );
                    }
                }
                config.values.insert(addon.to_string(), values);
            }
            _ => problem(
                &name,
                format!(
                    "unknown key (enabled, force_conflicts, resync_secs, resources_dir, oidc_admin_groups, tenants, or an add-on: {})",
                    ADDON_NAMES.join(", ")
                ),
            ),
        }
    }
    if !config.tenants.is_empty() || !config.oidc_admin_groups.is_empty() {
        config.enabled.insert("tenants".into());
    }
    config.on = all;
    if !all {
        // The network plugin is the pod network of a running cluster (the join applies it;
        // no node is Ready without it): `[addons] enabled = false` leaves it on.
        config.enabled.retain(|name| name == NETWORK_PLUGIN);
    }
    config
}

/// With `[identity]` on, its groups are bound: the admin group to cluster-admin, each tenant's
/// `<namespace>-namespace-admin|edit|view` to that namespace's roles (the `tenants` add-on).
pub fn bind_identity(
    config: &mut AddonsConfig,
    identity: &crate::identity::settings::IdentityConfig,
) {
    let add = |list: &mut Vec<String>, group: String| {
        if !list.contains(&group) {
            list.push(group);
        }
    };
    add(&mut config.oidc_admin_groups, identity.admin_group.clone());
    for tenant in &mut config.tenants {
        let [admin, edit, view] =
            crate::identity::settings::IdentityConfig::tenant_groups(&tenant.namespace);
        add(&mut tenant.admin_groups, admin);
        add(&mut tenant.edit_groups, edit);
        add(&mut tenant.view_groups, view);
    }
    if config.on {
        config.enabled.insert("tenants".into());
    }
}

/// The add-on that is the cluster's pod network. `[addons] enabled = false` keeps it, and
/// turning it off alone (`[addons.cni] enabled = false`) stops keeping it in step but never
/// deletes it: the daemon never takes a running cluster's network away.
pub const NETWORK_PLUGIN: &str = "cni";

#[cfg(test)]
mod tests {
    use crate::addons::settings::*;

    fn check(text: &str, oidc: bool) -> (AddonsConfig, Vec<(String, String)>) {
        let mut problems = Vec::new();
        let raw: toml::Table = toml::from_str(text).unwrap();
        let c = validate(raw, oidc, &mut |k: &str, r: String| {
            problems.push((k.to_string(), r))
        });
        (c, problems)
    }

    #[test]
    fn defaults_turn_every_addon_on_but_tenants() {
        let (c, p) = check("", false);
        assert!(p.is_empty());
        assert!(c.enabled.contains("cert-manager") && c.enabled.contains("monitoring"));
        assert!(!c.enabled.contains("tenants"));
        assert_eq!(c.resync_secs, 30);
    }

    #[test]
    fn tenants_cannot_take_a_system_or_addon_namespace() {
        for ns in [
            "kube-system",
            "kube-public",
            "kube-node-lease",
            "cert-manager",
            "monitoring",
        ] {
            let (_, p) = check(&format!("[[tenants]]\nnamespace = \"{ns}\"\n"), false);
            assert_eq!(p.len(), 1, "{ns}: {p:?}");
            assert_eq!(p[0].0, "addons.tenants[0].namespace");
            assert!(
                p[0].1.contains("belongs to Kubernetes or an add-on"),
                "{p:?}"
            );
        }
        // The seed's example tenant is the default namespace.
        let (c, p) = check(
            "[[tenants]]\nnamespace = \"default\"\nedit_groups = [\"dev\"]\n",
            false,
        );
        assert!(p.is_empty(), "{p:?}");
        assert_eq!(c.tenants[0].namespace, "default");
    }

    #[test]
    fn turning_every_addon_off_keeps_the_network_plugin() {
        let (c, p) = check("enabled = false\n", false);
        assert!(p.is_empty(), "{p:?}");
        assert_eq!(c.enabled.iter().collect::<Vec<_>>(), vec![NETWORK_PLUGIN]);
        let (c, _) = check("[cni]\nenabled = false\n", false);
        assert!(!c.enabled.contains(NETWORK_PLUGIN));
    }

    #[test]
    fn addons_turn_off_take_values_and_tenants() {
        let (c, p) = check(
            r#"
            oidc_admin_groups = ["admins"]
            [monitoring]
            enabled = false
            [dashboard]
            host = "ui"
            [[tenants]]
            namespace = "team-a"
            edit_groups = ["team-a"]
            "#,
            true,
        );
        assert!(p.is_empty(), "{p:?}");
        assert!(!c.enabled.contains("monitoring"));
        assert!(c.enabled.contains("tenants"));
        assert_eq!(c.values["dashboard"]["host"], "ui");
        assert_eq!(c.tenants[0].edit_groups, vec!["team-a"]);
    }

    #[test]
    fn every_bad_key_is_named() {
        let (_, p) = check(
            r#"
            resync_secs = 0
            force_conflicts = "yes"
            oidc_admin_groups = ["admins"]
            nginx = {}
            [monitoring]
            enabled = "no"
            [[tenants]]
            namespace = "Team A"
            colour = "red"
            [[tenants]]
            edit_groups = [""]
            "#,
            false,
        );
        let keys: Vec<&str> = p.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            vec![
                "addons.force_conflicts",
                "addons.monitoring.enabled",
                "addons.nginx",
                "addons.oidc_admin_groups",
                "addons.resync_secs",
                "addons.tenants[0].colour",
                "addons.tenants[0].namespace",
                "addons.tenants[1].edit_groups",
                "addons.tenants[1].namespace",
            ],
            "{p:?}"
        );
        assert!(p[3].1.contains("no OIDC issuer"));
    }
}

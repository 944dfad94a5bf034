//! The `[updates]` section: the daemon as its nodes' Flatcar update server (Omaha), and what
//! the final Ignition config tells `update_engine` and `locksmithd`. Below `config` (which
//! assembles the file).
//!
//! ```toml
//! [updates]
//! enabled = true
//! version = "current"      # the release nodes update to: held in the mirror, or "current"
//! group = "stable"         # the track nodes send (GROUP= in /etc/flatcar/update.conf)
//! reboot_strategy = "off"  # nodes never reboot on their own
//! ```

use serde::Deserialize;

#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RawUpdates {
    /// Answer nodes' update checks (`POST /v1/update/` on the node listener) and point new
    /// nodes' `update_engine` at the daemon (`/etc/flatcar/update.conf` in the final config).
    /// Off, nodes ask Flatcar's public update server, as a plain install does.
    ///
    /// Default: `true`.
    enabled: Option<bool>,
    /// The release nodes are updated to: a version the mirror holds with its update payload
    /// (`lacave mirror fetch flatcar` brings it), or `current` (what the mirror's `current`
    /// points at, for `[flatcar] channel` and `board`). Never older than a node runs: the
    /// daemon does not downgrade.
    ///
    /// Default: `"current"`.
    version: Option<String>,
    /// The update group nodes report (`GROUP=` in `update.conf`, sent as the Omaha track).
    ///
    /// Default: `[flatcar] channel`.
    group: Option<String>,
    /// `REBOOT_STRATEGY=` in `update.conf`: `off` (a node with an update applied waits to be
    /// rebooted; `lacave updates status` shows it `applied`), or Flatcar's own
    /// `reboot`, `etcd-lock` or `best-effort` (the node reboots itself, with no drain).
    ///
    /// With `[cluster] enabled` it is `off` (a node never leaves the cluster unasked).
    ///
    /// Default: `"off"` with a cluster, else Flatcar's own (not written).
    reboot_strategy: Option<String>,
}

/// A validated `[updates]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpdatesConfig {
    pub enabled: bool,
    /// A dotted version or `current`.
    pub version: String,
    pub group: String,
    /// `None`: Flatcar's default (not written).
    pub reboot_strategy: Option<String>,
}

impl UpdatesConfig {
    /// What an absent section means for `channel` and a cluster on or off.
    pub fn defaults(channel: &str, cluster_enabled: bool) -> UpdatesConfig {
        UpdatesConfig {
            enabled: true,
            version: "current".into(),
            group: channel.into(),
            reboot_strategy: cluster_enabled.then(|| "off".into()),
        }
    }
}

const STRATEGIES: &[&str] = &["off", "reboot", "etcd-lock", "best-effort"];

/// A group name update.conf and the Omaha track can carry.
fn is_group(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// Checks `[updates]` against the Flatcar `channel` and whether a cluster is run.
pub fn validate(
    raw: RawUpdates,
    channel: &str,
    cluster_enabled: bool,
    problem: &mut impl FnMut(&str, String),
) -> UpdatesConfig {
    let mut config = UpdatesConfig::defaults(channel, cluster_enabled);
    if let Some(enabled) = raw.enabled {
        config.enabled = enabled;
    }
    if let Some(version) = raw.version {
        if version == "current" || crate::model::is_flatcar_version(&version) {
            config.version = version;
        } else {
            problem(
                "updates.version",
                format!("{version:?} is not a Flatcar version (e.g. 4459.2.1) or \"current\""),
            );
        }
    }
    if let Some(group) = raw.group {
        if is_group(&group) {
            config.group = group;
        } else {
            problem(
                "updates.group",
                format!(
                    "{group:?} is not a group name (letters, digits, '-', '_', '.'; 1 to 64): it is written to update.conf as GROUP="
                ),
            );
        }
    }
    if let Some(strategy) = raw.reboot_strategy {
        if STRATEGIES.contains(&strategy.as_str()) {
            config.reboot_strategy = Some(strategy);
        } else {
            problem(
                "updates.reboot_strategy",
                format!(
                    "{strategy:?} is not a reboot strategy ({}): REBOOT_STRATEGY= in update.conf",
                    STRATEGIES.join(", ")
                ),
            );
        }
    }
    config
}

#[cfg(test)]
mod tests {
    use crate::updates::settings::{RawUpdates, UpdatesConfig, validate};

    fn check(toml: &str, cluster: bool) -> Result<UpdatesConfig, Vec<(String, String)>> {
        let raw: RawUpdates = toml::from_str(toml).unwrap();
        let mut problems = vec![];
        let c = validate(raw, "stable", cluster, &mut |k: &str, m: String| {
            problems.push((k.to_string(), m))
        });
        if problems.is_empty() {
            Ok(c)
        } else {
            Err(problems)
        }
    }

    #[test]
    fn defaults_follow_the_channel_and_keep_cluster_nodes_from_rebooting() {
        let c = check("", true).unwrap();
        assert_eq!(c, UpdatesConfig::defaults("stable", true));
        assert_eq!(c.group, "stable");
        assert_eq!(c.reboot_strategy.as_deref(), Some("off"));
        assert_eq!(check("", false).unwrap().reboot_strategy, None);
    }

    #[test]
    fn every_bad_key_is_named() {
        let problems = check(
            "version = \"latest\"\ngroup = \"a b\"\nreboot_strategy = \"now\"",
            true,
        )
        .unwrap_err();
        let keys: Vec<&str> = problems.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "updates.version",
                "updates.group",
                "updates.reboot_strategy"
            ]
        );
        assert!(problems[2].1.contains("etcd-lock"), "{problems:?}");
        let c = check("version = \"4459.2.1\"\ngroup = \"canary\"", false).unwrap();
        assert_eq!(
            (c.version.as_str(), c.group.as_str()),
            ("4459.2.1", "canary")
        );
    }
}

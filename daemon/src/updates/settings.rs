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
//!
//! [updates.releases]       # other groups' releases (a node's group: its label
//! canary = "4481.0.0"      # lacave.io/update-group, else `group`)
//! ```

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::model::Node;

/// The node label that puts a node in another update group than `[updates] group`.
pub const GROUP_LABEL: &str = "lacave.io/update-group";

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
    /// `REBOOT_STRATEGY=` in `update.conf`: `off` (a node with an update applied waits for the
    /// daemon's coordinated reboot, or the operator's), or Flatcar's own `reboot`, `etcd-lock`
    /// or `best-effort` (the node reboots itself whenever it likes, with no drain and no
    /// window; the daemon then reboots nothing).
    ///
    /// Default: `"off"`.
    reboot_strategy: Option<String>,
    /// With `reboot_strategy = "off"`: the daemon reboots nodes that have an update applied.
    /// Cluster nodes are cordoned and drained first and uncordoned once Ready on the new
    /// release, control planes one at a time, workers `max_unavailable` at a time; without
    /// `[cluster]`, booted machines one at a time. Off, an applied update waits for the
    /// operator.
    ///
    /// Default: `true`.
    coordinate_reboots: Option<bool>,
    /// When coordinated reboots may start (UTC): `"Sat 02:00-05:00"`, `"Mon,Wed 22:00-01:00"`
    /// (past midnight: into the next day), `"02:00-05:00"` (every day). A reboot started in
    /// the window finishes after it.
    ///
    /// Default: any time.
    window: Option<String>,
    /// How many workers may be rebooting (or otherwise not Ready) at once (1 to 100). Control
    /// planes are always rebooted one at a time, never while another is not Ready.
    ///
    /// Default: `1`.
    max_unavailable: Option<u32>,
    /// How long a rebooted node has to come back Ready and report the new release, in seconds
    /// (60 to 7200); past it the rollout stops and says why, the node left cordoned.
    ///
    /// Default: `900`.
    reboot_timeout_secs: Option<u32>,
    /// The release of each other update group, by group name: `canary = "4481.0.0"` (a held
    /// version, or `current`). A node is in the group its label `lacave.io/update-group`
    /// names (`lacave node edit NAME --label lacave.io/update-group=canary`), else in `group`;
    /// a group not listed here gets `version`. The group is written to the node's
    /// `update.conf` and its answers follow its label, so moving a node needs no reinstall.
    ///
    /// Default: none (every node gets `version`).
    releases: Option<BTreeMap<String, String>>,
}

/// When coordinated reboots may start: days of the week (UTC) and a span of minutes since
/// midnight; `end <= start` runs into the next day.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Window {
    /// Monday first.
    pub days: [bool; 7],
    pub start: u16,
    pub end: u16,
    /// As written in the configuration.
    pub text: String,
}

const DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];

impl Window {
    /// Reads `"Sat 02:00-05:00"`, `"Mon,Wed 22:00-01:00"` or `"02:00-05:00"`.
    pub fn parse(text: &str) -> Result<Window, String> {
        let text = text.trim();
        let (days_text, span) = match text.rsplit_once(' ') {
            Some((d, s)) => (Some(d.trim()), s),
            None => (None, text),
        };
        let mut days = [days_text.is_none(); 7];
        if let Some(d) = days_text {
            for day in d.split(',') {
                let i = DAYS
                    .iter()
                    .position(|n| n.eq_ignore_ascii_case(day.trim()))
                    .ok_or_else(|| format!("{day:?} is not a day ({})", DAYS.join(", ")))?;
                days[i] = true;
            }
        }
        let minutes = |hm: &str| -> Result<u16, String> {
            let (h, m) = hm
                .split_once(':')
                .ok_or_else(|| format!("{hm:?} is not HH:MM"))?;
            match (h.parse::<u16>(), m.parse::<u16>()) {
                (Ok(h), Ok(m)) if h < 24 && m < 60 && m.to_string().len() <= 2 => Ok(h * 60 + m),
                _ => Err(format!("{hm:?} is not a time of day HH:MM")),
            }
        };
        let (a, b) = span
            .split_once('-')
            .ok_or_else(|| format!("{span:?} is not a span HH:MM-HH:MM"))?;
        let (start, end) = (minutes(a)?, minutes(b)?);
        if start == end {
            return Err(format!("{span:?} is empty"));
        }
        Ok(Window {
            days,
            start,
            end,
            text: text.to_string(),
        })
    }

    /// Whether `at` (UTC) is inside the window.
    pub fn contains(&self, at: time::OffsetDateTime) -> bool {
        let at = at.to_offset(time::UtcOffset::UTC);
        let day = at.weekday().number_days_from_monday() as usize;
        let minute = at.hour() as u16 * 60 + at.minute() as u16;
        if self.start < self.end {
            self.days[day] && (self.start..self.end).contains(&minute)
        } else {
            // Past midnight: the evening of a listed day, or the morning after one.
            (self.days[day] && minute >= self.start)
                || (self.days[(day + 6) % 7] && minute < self.end)
        }
    }
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
    pub coordinate_reboots: bool,
    /// `None`: any time.
    pub window: Option<Window>,
    pub max_unavailable: u32,
    pub reboot_timeout_secs: u32,
    /// Other groups' releases (dotted versions or `current`), by group.
    pub releases: BTreeMap<String, String>,
}

impl UpdatesConfig {
    /// What an absent section means for `channel`.
    pub fn defaults(channel: &str) -> UpdatesConfig {
        UpdatesConfig {
            enabled: true,
            version: "current".into(),
            group: channel.into(),
            reboot_strategy: Some("off".into()),
            coordinate_reboots: true,
            window: None,
            max_unavailable: 1,
            reboot_timeout_secs: 900,
            releases: BTreeMap::new(),
        }
    }

    /// The update group `node` is in: its label `lacave.io/update-group`, else `group`.
    pub fn group_of(&self, node: &Node) -> String {
        node.labels
            .get(GROUP_LABEL)
            .filter(|g| !g.is_empty())
            .cloned()
            .unwrap_or_else(|| self.group.clone())
    }

    /// The release (a dotted version or `current`) `group` is updated to.
    pub fn release_of(&self, group: &str) -> &str {
        self.releases.get(group).unwrap_or(&self.version)
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

/// Checks `[updates]`; the group defaults to the Flatcar `channel`.
pub fn validate(
    raw: RawUpdates,
    channel: &str,
    problem: &mut impl FnMut(&str, String),
) -> UpdatesConfig {
    let mut config = UpdatesConfig::defaults(channel);
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
    if let Some(on) = raw.coordinate_reboots {
        config.coordinate_reboots = on;
    }
    if let Some(text) = raw.window {
        match Window::parse(&text) {
            Ok(w) => config.window = Some(w),
            Err(e) => problem(
                "updates.window",
                format!("{text:?}: {e} (like \"Sat 02:00-05:00\", UTC)"),
            ),
        }
    }
    match raw.max_unavailable {
        None => {}
        Some(n) if (1..=100).contains(&n) => config.max_unavailable = n,
        Some(n) => problem(
            "updates.max_unavailable",
            format!("{n} is not a number of workers from 1 to 100"),
        ),
    }
    match raw.reboot_timeout_secs {
        None => {}
        Some(n) if (60..=7200).contains(&n) => config.reboot_timeout_secs = n,
        Some(n) => problem(
            "updates.reboot_timeout_secs",
            format!("{n} is not a number of seconds from 60 to 7200"),
        ),
    }
    for (group, version) in raw.releases.unwrap_or_default() {
        let field = format!("updates.releases.{group}");
        if !is_group(&group) {
            problem(
                &field,
                format!("{group:?} is not a group name (letters, digits, '-', '_', '.'; 1 to 64)"),
            );
        } else if version != "current" && !crate::model::is_flatcar_version(&version) {
            problem(
                &field,
                format!("{version:?} is not a Flatcar version (e.g. 4459.2.1) or \"current\""),
            );
        } else {
            config.releases.insert(group, version);
        }
    }
    config
}

#[cfg(test)]
mod tests {
    use crate::updates::settings::{RawUpdates, UpdatesConfig, Window, validate};

    fn utc(text: &str) -> time::OffsetDateTime {
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).unwrap()
    }

    #[test]
    fn windows_are_days_and_spans_in_utc_past_midnight_too() {
        let w = Window::parse("Sat 02:00-05:00").unwrap();
        // 2026-12-05 is a Saturday.
        assert!(w.contains(utc("2026-12-05T02:00:00Z")));
        assert!(w.contains(utc("2026-12-05T04:59:59Z")));
        assert!(!w.contains(utc("2026-12-05T05:00:00Z")));
        assert!(!w.contains(utc("2026-12-06T03:00:00Z")));
        assert!(w.contains(utc("2026-12-05T03:00:00+01:00")));
        let late = Window::parse("Mon,Wed 22:00-01:00").unwrap();
        assert!(late.contains(utc("2026-12-07T23:30:00Z"))); // Monday evening
        assert!(late.contains(utc("2026-12-08T00:30:00Z"))); // the night after it
        assert!(!late.contains(utc("2026-12-08T23:30:00Z"))); // Tuesday evening
        let daily = Window::parse("02:00-05:00").unwrap();
        assert!(daily.contains(utc("2026-12-08T02:30:00Z")));
        for bad in [
            "Sat",
            "Sat 2-5",
            "Caturday 02:00-05:00",
            "25:00-26:00",
            "02:00-02:00",
        ] {
            assert!(Window::parse(bad).is_err(), "{bad}");
        }
    }

    fn check(toml: &str) -> Result<UpdatesConfig, Vec<(String, String)>> {
        let raw: RawUpdates = toml::from_str(toml).unwrap();
        let mut problems = vec![];
        let c = validate(raw, "stable", &mut |k: &str, m: String| {
            problems.push((k.to_string(), m))
        });
        if problems.is_empty() {
            Ok(c)
        } else {
            Err(problems)
        }
    }

    #[test]
    fn defaults_follow_the_channel_and_keep_nodes_from_rebooting_on_their_own() {
        let c = check("").unwrap();
        assert_eq!(c, UpdatesConfig::defaults("stable"));
        assert_eq!(c.group, "stable");
        assert_eq!(c.reboot_strategy.as_deref(), Some("off"));
        assert_eq!(check("").unwrap().reboot_strategy.as_deref(), Some("off"));
    }

    #[test]
    fn every_bad_key_is_named() {
        let problems = check("version = \"latest\"\ngroup = \"a b\"\nreboot_strategy = \"now\"\nwindow = \"Caturday 02:00-03:00\"\nmax_unavailable = 0\nreboot_timeout_secs = 5\n[releases]\n\"a b\" = \"4459.2.1\"\nbeta = \"soon\"")
        .unwrap_err();
        let keys: Vec<&str> = problems.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "updates.version",
                "updates.group",
                "updates.reboot_strategy",
                "updates.window",
                "updates.max_unavailable",
                "updates.reboot_timeout_secs",
                "updates.releases.a b",
                "updates.releases.beta"
            ]
        );
        assert!(problems[2].1.contains("etcd-lock"), "{problems:?}");
        let c = check("version = \"4459.2.1\"\ngroup = \"canary\"").unwrap();
        assert_eq!(
            (c.version.as_str(), c.group.as_str()),
            ("4459.2.1", "canary")
        );
        // A node's group is its label, else `group`; a group without a release gets `version`.
        let c = check("version = \"4230.2.3\"\n[releases]\ncanary = \"current\"").unwrap();
        let mut node = crate::model::Node::discovered(
            "52:54:00:00:00:01".parse().unwrap(),
            time::OffsetDateTime::UNIX_EPOCH,
        );
        assert_eq!(c.group_of(&node), "stable");
        assert_eq!(c.release_of(&c.group_of(&node)), "4230.2.3");
        node.labels.insert(
            crate::updates::settings::GROUP_LABEL.into(),
            "canary".into(),
        );
        assert_eq!(c.group_of(&node), "canary");
        assert_eq!(c.release_of("canary"), "current");
        assert_eq!(c.release_of("beta"), "4230.2.3");
    }
}

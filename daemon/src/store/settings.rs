//! The `[discovery]` section: bounds on machines recorded as `discovered` (see
//! `store/discovery.rs`). Below `config` (which assembles the file).

use serde::Deserialize;

#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RawDiscovery {
    /// At most this many `discovered` machines; one more forgets the one unseen the longest
    /// (registered nodes are never touched).
    ///
    /// Default: `1024`.
    max_machines: Option<usize>,
    /// A `discovered` machine unseen this long is forgotten (checked every 10 minutes).
    ///
    /// Default: `168`.
    forget_after_hours: Option<u32>,
    /// At most this many new machines recorded a minute (a burst of as many); beyond, a machine
    /// is not recorded this time and asks again.
    ///
    /// Default: `120`.
    new_per_minute: Option<u32>,
}

/// The bounds on discovered machines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiscoveryLimits {
    /// At most this many discovered machines; one more evicts the one unseen the longest.
    pub max: usize,
    /// A discovered machine unseen this long is forgotten.
    pub forget_after: time::Duration,
    /// At most this many new machines recorded a minute (a burst of as many).
    pub per_minute: u32,
}

impl Default for DiscoveryLimits {
    fn default() -> Self {
        DiscoveryLimits {
            max: 1024,
            forget_after: time::Duration::days(7),
            per_minute: 120,
        }
    }
}

/// Checks `[discovery]`, naming every problem through `problem`.
pub fn validate(raw: RawDiscovery, problem: &mut impl FnMut(&str, String)) -> DiscoveryLimits {
    let d = DiscoveryLimits::default();
    let max = raw.max_machines.unwrap_or(d.max);
    if !(1..=1_000_000).contains(&max) {
        problem(
            "discovery.max_machines",
            format!(
                "{max} is out of range: give 1 to 1000000 (default {})",
                d.max
            ),
        );
    }
    let hours = raw.forget_after_hours.unwrap_or(24 * 7);
    if hours == 0 {
        problem(
            "discovery.forget_after_hours",
            "0 would forget machines as soon as they are seen; give at least 1 (default 168)"
                .into(),
        );
    }
    let per_minute = raw.new_per_minute.unwrap_or(d.per_minute);
    if per_minute == 0 {
        problem(
            "discovery.new_per_minute",
            format!(
                "0 would never record a new machine; give at least 1 (default {}), or set \
                 [dhcp] unknown_clients = \"ignore\"",
                d.per_minute
            ),
        );
    }
    DiscoveryLimits {
        max,
        forget_after: time::Duration::hours(i64::from(hours)),
        per_minute,
    }
}

/// The `[history]` section: how much of each node's history the registry keeps.
#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RawHistory {
    /// Each node keeps at most its newest this many events (10 to 1,000,000); older ones are
    /// removed every 10 minutes and at start.
    ///
    /// Default: `1000`.
    max_events_per_node: Option<usize>,
    /// Events older than this are removed too, but a node always keeps its newest event; `0`: no
    /// age limit.
    ///
    /// Default: `365`.
    max_age_days: Option<u32>,
}

/// Retention of the `events` tree (see [`crate::store::Store::prune_history`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HistoryLimits {
    /// A node keeps at most its newest this many events.
    pub max_per_node: usize,
    /// Events older than this go, but a node always keeps its newest one; `None`: no age
    /// limit (`max_age_days = 0`).
    pub max_age: Option<time::Duration>,
}

impl Default for HistoryLimits {
    fn default() -> Self {
        HistoryLimits {
            max_per_node: 1000,
            max_age: Some(time::Duration::days(365)),
        }
    }
}

/// Checks `[history]`, naming every problem through `problem`.
pub fn validate_history(raw: RawHistory, problem: &mut impl FnMut(&str, String)) -> HistoryLimits {
    let d = HistoryLimits::default();
    let max_per_node = raw.max_events_per_node.unwrap_or(d.max_per_node);
    if !(10..=1_000_000).contains(&max_per_node) {
        problem(
            "history.max_events_per_node",
            format!(
                "{max_per_node} is out of range: give 10 to 1000000 (default {})",
                d.max_per_node
            ),
        );
    }
    let max_age = match raw.max_age_days {
        None => d.max_age,
        Some(0) => None,
        Some(days) if days > 36_500 => {
            problem(
                "history.max_age_days",
                format!("{days} is more than 100 years; give 0 (no age limit) or 1 to 36500"),
            );
            None
        }
        Some(days) => Some(time::Duration::days(i64::from(days))),
    };
    HistoryLimits {
        max_per_node,
        max_age,
    }
}

//! The `[power]` section: how often the daemon asks every node's BMC whether it is on (so
//! that `/metrics`, the console and `lacave node bmc` show a state and a reachability that are
//! never older than that). Below `config` (which assembles the file).

use serde::Deserialize;

#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RawPower {
    /// How often every node's BMC is asked for its power state, in seconds (0: never; only
    /// when an operator asks). All at once, each within 20 s: a dead BMC holds up no other.
    ///
    /// Default: `300`.
    poll_secs: Option<u32>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PowerConfig {
    /// `0`: no polling.
    pub poll_secs: u32,
}

impl Default for PowerConfig {
    fn default() -> Self {
        PowerConfig { poll_secs: 300 }
    }
}

/// Checks `[power]`, naming every problem through `problem`.
pub fn validate(raw: RawPower, problem: &mut impl FnMut(&str, String)) -> PowerConfig {
    let poll_secs = match raw.poll_secs {
        None => PowerConfig::default().poll_secs,
        Some(n) if n == 0 || (30..=86_400).contains(&n) => n,
        Some(n) => {
            problem(
                "power.poll_secs",
                format!("{n} is not 0 (never) or a number of seconds from 30 to 86400"),
            );
            PowerConfig::default().poll_secs
        }
    };
    PowerConfig { poll_secs }
}

//! A node's Flatcar update, as its `update_engine` reports it to the daemon's Omaha endpoint.

use time::OffsetDateTime;

/// Where a node is in an update.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum UpdateState {
    /// Runs the site's release (or there is none to offer it).
    UpToDate,
    /// Told to update to the target; has not started downloading.
    Offered,
    Downloading,
    /// The payload is downloaded and checked; being written.
    Downloaded,
    /// Written to the other partition: the node waits for a reboot into the new release.
    Applied,
    /// `update_engine` reported an error (its code in `error_code`); it tries again.
    Failed,
    /// Runs a newer release than the site's target: left alone (never downgraded).
    Ahead,
    /// The daemon could not answer: the target release or its payload is not in the mirror.
    Unanswered,
}

impl UpdateState {
    pub const ALL: [UpdateState; 8] = [
        UpdateState::UpToDate,
        UpdateState::Offered,
        UpdateState::Downloading,
        UpdateState::Downloaded,
        UpdateState::Applied,
        UpdateState::Failed,
        UpdateState::Ahead,
        UpdateState::Unanswered,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            UpdateState::UpToDate => "up-to-date",
            UpdateState::Offered => "offered",
            UpdateState::Downloading => "downloading",
            UpdateState::Downloaded => "downloaded",
            UpdateState::Applied => "applied",
            UpdateState::Failed => "failed",
            UpdateState::Ahead => "ahead",
            UpdateState::Unanswered => "unanswered",
        }
    }

    pub fn parse(s: &str) -> Option<UpdateState> {
        UpdateState::ALL.into_iter().find(|u| u.as_str() == s)
    }
}

impl std::fmt::Display for UpdateState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the daemon knows of a node's updates: the last report and where the update stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeUpdate {
    /// The Flatcar version the node runs, as it reported it.
    pub version: String,
    /// The group (Omaha track) it reported.
    pub group: String,
    /// Its `/etc/machine-id`, as `update_engine` sends it.
    pub machine_id: String,
    pub state: UpdateState,
    /// The release offered (or being applied), when there is one.
    pub target: Option<String>,
    /// `update_engine`'s code of the last error (`state` failed).
    pub error_code: Option<i64>,
    /// When `state` was entered.
    pub since: OffsetDateTime,
    /// The last request (written at most every few minutes when nothing changes).
    pub checked_at: OffsetDateTime,
}

//! Flatcar updates served by the daemon: the release nodes are offered (the target, read from
//! the mirror and checked), what a node's Omaha request says of its update and what the
//! daemon records of it. The protocol itself is `omaha.rs`; `[updates]` is `settings.rs`; the
//! HTTP side is `api/updates.rs`.
//!
//! - The target is `[updates] version` (or what the mirror's `current` points at) for
//!   `[flatcar] channel` and `board`, held verified with its update payload. The payload is
//!   hashed again whenever its size or modification time differs from the last check (once
//!   after start): a payload changed since `lacave mirror fetch` verified it is never offered.
//! - A node is offered the target when it runs an older release; a node running a newer one
//!   is left alone (never downgraded) and shown `ahead`.
//! - Each request moves the node's record ([`NodeUpdate`]); what changed is an event in its
//!   history. A request that changes nothing writes the record at most every
//!   [`CHECKED_EVERY`].

pub mod omaha;
pub mod settings;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use time::OffsetDateTime;

use crate::config::Config;
use crate::model::{EventKind, Node, NodeUpdate, UpdateState};
use crate::release::fetch::{UpdatePayload, read_verified};
use omaha::{App, Offer, Progress};

/// How long a request that changes nothing leaves the record's `checked_at` unwritten.
pub const CHECKED_EVERY: Duration = Duration::from_secs(600);
/// How long a resolved target is reused before the mirror is read again.
const TARGET_TTL: Duration = Duration::from_secs(2);

/// Why the daemon cannot offer the site's release.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum TargetError {
    #[error(
        "the mirror has no current release for {channel}/{board}: run lacave mirror fetch flatcar"
    )]
    NoCurrent { channel: String, board: String },
    #[error(
        "Flatcar {version} is not held verified in the mirror: run lacave mirror fetch flatcar --version {version}"
    )]
    NotHeld { version: String },
    #[error(
        "Flatcar {version} is held without its update payload (fetched by an older lacave): run lacave mirror fetch flatcar --version {version} again to add it"
    )]
    NoPayload { version: String },
    #[error(
        "Flatcar {version}'s update payload {path} is not the file lacave mirror fetch verified ({why}): not offered; fetch the release again"
    )]
    PayloadChanged {
        version: String,
        path: String,
        why: String,
    },
}

/// The release nodes are offered now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub version: String,
    pub offer: Offer,
}

/// The payload check's memory: the file's identity when it last matched its record.
#[derive(Clone, PartialEq, Eq)]
struct Checked {
    path: PathBuf,
    len: u64,
    modified: Option<SystemTime>,
    payload: UpdatePayload,
}

/// A release resolved, and when.
type Resolved = (Instant, Result<Target, TargetError>);

/// Resolves and caches the targets (one per release asked for); one per daemon.
#[derive(Default)]
pub struct Targets {
    recent: std::sync::Mutex<HashMap<String, Resolved>>,
    /// Held while a payload is hashed, so that a burst of checks hashes it once; what each
    /// payload was when it last matched its record.
    hashing: tokio::sync::Mutex<HashMap<PathBuf, Checked>>,
}

impl Targets {
    /// The target for `release` (`[updates] version`, or a group's in `[updates.releases]`:
    /// a dotted version or `current`), read from the mirror at most every [`TARGET_TTL`].
    pub async fn get(&self, config: &Config, release: &str) -> Result<Target, TargetError> {
        if let Some((at, target)) = self
            .recent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(release)
            && at.elapsed() < TARGET_TTL
        {
            return target.clone();
        }
        let resolved = self.resolve(config, release).await;
        self.recent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(release.to_string(), (Instant::now(), resolved.clone()));
        resolved
    }

    /// The target of the group `node` is in.
    pub async fn for_node(&self, config: &Config, node: &Node) -> Result<Target, TargetError> {
        let u = &config.updates;
        self.get(config, u.release_of(&u.group_of(node))).await
    }

    async fn resolve(&self, config: &Config, release: &str) -> Result<Target, TargetError> {
        let f = &config.flatcar;
        let board = f.mirror_dir.join(&f.channel).join(&f.board);
        let version = if release == "current" {
            std::fs::read_link(board.join("current"))
                .ok()
                .and_then(|t| t.to_str().map(str::to_string))
                .filter(|v| crate::model::is_flatcar_version(v))
                .ok_or_else(|| TargetError::NoCurrent {
                    channel: f.channel.clone(),
                    board: f.board.clone(),
                })?
        } else {
            release.to_string()
        };
        let dir = board.join(&version);
        let record = read_verified(&dir).ok_or_else(|| TargetError::NotHeld {
            version: version.clone(),
        })?;
        let payload = record.update.ok_or_else(|| TargetError::NoPayload {
            version: version.clone(),
        })?;
        let path = dir.join(&payload.file);
        let changed = |why: String| TargetError::PayloadChanged {
            version: version.clone(),
            path: path.display().to_string(),
            why,
        };
        let meta = std::fs::metadata(&path).map_err(|e| changed(e.to_string()))?;
        if meta.len() != payload.size {
            return Err(changed(format!(
                "{} bytes, verified at {}",
                meta.len(),
                payload.size
            )));
        }
        let now = Checked {
            path: path.clone(),
            len: meta.len(),
            modified: meta.modified().ok(),
            payload: payload.clone(),
        };
        let mut checked = self.hashing.lock().await;
        if checked.get(&path) != Some(&now) {
            let hashed_path = path.clone();
            let hashed = tokio::task::spawn_blocking(move || UpdatePayload::of_file(&hashed_path))
                .await
                .map_err(|e| changed(e.to_string()))?
                .map_err(|e| changed(e.to_string()))?;
            if hashed.sha256_base64 != payload.sha256_base64
                || hashed.sha1_base64 != payload.sha1_base64
            {
                checked.remove(&path);
                return Err(changed(format!(
                    "SHA-256 {}, verified {}",
                    hashed.sha256_base64, payload.sha256_base64
                )));
            }
            checked.insert(path.clone(), now);
        }
        drop(checked);
        Ok(Target {
            offer: Offer {
                version: version.clone(),
                codebase: format!("{}/{version}/", crate::boot::mirror_url(config)),
                file: payload.file,
                size: payload.size,
                sha1_base64: payload.sha1_base64,
                sha256_base64: payload.sha256_base64,
            },
            version,
        })
    }
}

/// What the daemon answers a node's update check, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Offer(Offer),
    /// Runs the target.
    Current,
    /// Runs a newer release than the target.
    Ahead {
        target: String,
    },
    /// Reports a version that is not a Flatcar version.
    BadVersion,
    /// The target cannot be offered.
    Unanswered(TargetError),
}

impl Verdict {
    pub fn check(&self) -> omaha::Check {
        match self {
            Verdict::Offer(o) => omaha::Check::Update(o.clone()),
            Verdict::Unanswered(_) => omaha::Check::Internal,
            _ => omaha::Check::NoUpdate,
        }
    }
}

/// The answer to a node running `version`.
pub fn verdict(version: &str, target: &Result<Target, TargetError>) -> Verdict {
    if !crate::model::is_flatcar_version(version) {
        return Verdict::BadVersion;
    }
    match target {
        Err(e) => Verdict::Unanswered(e.clone()),
        Ok(t) => match crate::model::compare_flatcar_versions(version, &t.version) {
            std::cmp::Ordering::Less => Verdict::Offer(t.offer.clone()),
            std::cmp::Ordering::Equal => Verdict::Current,
            std::cmp::Ordering::Greater => Verdict::Ahead {
                target: t.version.clone(),
            },
        },
    }
}

/// `update_engine`'s error codes worth a name (action_processor.h; the rest by number).
pub fn error_name(code: i64) -> &'static str {
    match code {
        1 => "error",
        2 => "Omaha request error",
        3 => "Omaha response handler error",
        4 => "file system copier error",
        5 => "postinstall runner error",
        7 => "install device open error",
        9 => "download transfer error",
        10 => "payload hash mismatch",
        11 => "payload size mismatch",
        12 => "payload verification error",
        14 => "download write error",
        15 => "new root file system verification error",
        31 => "Omaha response XML parse error",
        34 => "Omaha response invalid",
        37 => "error in the Omaha HTTP response",
        2000.. => "HTTP error from the update server",
        _ => "update_engine error",
    }
}

/// The node's record after a request (`prev`: what the daemon held), and the events to
/// append to its history, one per change of state. `verdict` is `None` when the request
/// asked no update check (events or a ping only).
pub fn observe(
    prev: Option<&NodeUpdate>,
    app: &App,
    verdict: Option<&Verdict>,
    now: OffsetDateTime,
) -> (NodeUpdate, Vec<(EventKind, String)>) {
    let mut next = prev.cloned().unwrap_or(NodeUpdate {
        version: String::new(),
        group: String::new(),
        machine_id: String::new(),
        state: UpdateState::UpToDate,
        target: None,
        error_code: None,
        since: now,
        checked_at: now,
    });
    let first = prev.is_none();
    if !app.version.is_empty() {
        next.version = app.version.clone();
    }
    next.group = app.track.clone();
    next.machine_id = app.machine_id.clone();
    next.checked_at = now;
    let mut events = Vec::new();
    let mut moved =
        |next: &mut NodeUpdate, state: UpdateState, version: String, message: String| {
            if next.state != state || first {
                next.since = now;
            }
            next.state = state;
            events.push((EventKind::Update { state, version }, message));
        };
    let target = |next: &NodeUpdate| next.target.clone().unwrap_or_else(|| next.version.clone());
    for event in &app.events {
        match event.progress() {
            None => {}
            Some(Progress::Downloading) => {
                let t = target(&next);
                moved(
                    &mut next,
                    UpdateState::Downloading,
                    t.clone(),
                    format!("downloading Flatcar {t}"),
                );
            }
            Some(Progress::Downloaded) => {
                let t = target(&next);
                moved(
                    &mut next,
                    UpdateState::Downloaded,
                    t.clone(),
                    format!("downloaded Flatcar {t}'s payload; applying it"),
                );
            }
            Some(Progress::Applied) => {
                let t = target(&next);
                moved(
                    &mut next,
                    UpdateState::Applied,
                    t.clone(),
                    format!("Flatcar {t} applied: the node waits for a reboot"),
                );
            }
            Some(Progress::Rebooted { from }) => {
                let v = next.version.clone();
                next.error_code = None;
                let state = if next
                    .target
                    .as_deref()
                    .is_some_and(|t| crate::model::compare_flatcar_versions(&v, t).is_lt())
                {
                    UpdateState::Offered
                } else {
                    next.target = None;
                    UpdateState::UpToDate
                };
                moved(
                    &mut next,
                    state,
                    v.clone(),
                    format!("rebooted from Flatcar {from} into {v}"),
                );
            }
            Some(Progress::Failed { code }) => {
                next.error_code = code;
                let t = target(&next);
                let what = code.map_or("no code".to_string(), |c| {
                    format!("code {c}: {}", error_name(c))
                });
                moved(
                    &mut next,
                    UpdateState::Failed,
                    t.clone(),
                    format!(
                        "update to Flatcar {t} failed on the node ({what}); update_engine tries again"
                    ),
                );
            }
        }
    }
    let Some(verdict) = verdict else {
        return (next, events);
    };
    let in_progress = matches!(
        next.state,
        UpdateState::Downloading | UpdateState::Downloaded | UpdateState::Applied
    );
    let (state, version, message) = match verdict {
        Verdict::Offer(o) => {
            if in_progress && next.target.as_deref() == Some(o.version.as_str()) {
                return (next, events);
            }
            next.target = Some(o.version.clone());
            (
                UpdateState::Offered,
                o.version.clone(),
                format!("offered Flatcar {} (runs {})", o.version, next.version),
            )
        }
        Verdict::Current => {
            next.target = None;
            (
                UpdateState::UpToDate,
                next.version.clone(),
                format!("runs Flatcar {}, the site's release", next.version),
            )
        }
        Verdict::Ahead { target } => {
            next.target = None;
            (
                UpdateState::Ahead,
                next.version.clone(),
                format!(
                    "runs Flatcar {}, newer than the site's {target}: not downgraded",
                    next.version
                ),
            )
        }
        Verdict::BadVersion => (
            UpdateState::Unanswered,
            app.version.clone(),
            format!(
                "reports version {:?}, not a Flatcar version: no update offered",
                app.version
            ),
        ),
        Verdict::Unanswered(why) => (
            UpdateState::Unanswered,
            next.version.clone(),
            format!("no update offered: {why}"),
        ),
    };
    if state != next.state || first {
        moved(&mut next, state, version, message);
    }
    (next, events)
}

/// Whether a record must be written: anything but `checked_at` changed, or that is older
/// than [`CHECKED_EVERY`].
pub fn worth_writing(prev: Option<&NodeUpdate>, next: &NodeUpdate) -> bool {
    let Some(prev) = prev else {
        return true;
    };
    let mut same = next.clone();
    same.checked_at = prev.checked_at;
    same != *prev || next.checked_at - prev.checked_at >= CHECKED_EVERY
}

#[cfg(test)]
mod tests;

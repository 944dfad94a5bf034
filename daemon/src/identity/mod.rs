//! Single sign-on (`[identity]`): the daemon keeps a Keycloak realm as declared (`keycloak.rs`)
//! and the API server trusts that realm (`cluster/kubeadm.rs` renders the OIDC flags from
//! [`settings::IdentityConfig`]). One reconciler: a pass at start, every `resync_secs`, and on
//! `lacave identity sync`; a failed pass is retried sooner (10 s, doubling up to the resync
//! period), so a Keycloak that starts after the daemon is configured as soon as it answers.
//!
//! The secrets it keeps (the Keycloak administrator's password, the client's secret, the users'
//! first passwords) are files of `<state_dir>/identity/`, 0600, made at start when absent;
//! none is ever logged, put in a status or an error.

pub mod keycloak;
pub mod settings;

use std::collections::VecDeque;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use time::OffsetDateTime;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use keycloak::{Admin, KeycloakError, Realm, RealmUser, ZoneLookup};
use settings::{IdentityConfig, declared_groups};

/// Events kept in the status.
const EVENTS: usize = 20;
/// The first retry after a failed pass.
const RETRY: Duration = Duration::from_secs(10);

/// Where the realm stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum IdentityState {
    /// No pass yet.
    Pending,
    /// The last pass found the realm as declared, or made it so.
    Healthy,
    /// The last pass failed (`message` says why); retried.
    Failed,
}

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct IdentityEvent {
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    pub message: String,
}

/// The realm as `lacave identity status` shows it.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct IdentityStatus {
    /// The issuer the API server trusts.
    pub issuer: String,
    pub realm: String,
    pub client_id: String,
    pub groups: Vec<String>,
    pub users: Vec<String>,
    pub state: IdentityState,
    pub message: String,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_sync: Option<OffsetDateTime>,
    /// Writes of the last pass (0: the realm was as declared).
    pub last_changes: usize,
    /// Writes since start: after the first pass, each is drift repaired.
    pub changes_total: u64,
    #[schema(value_type = Vec<IdentityEvent>)]
    pub events: VecDeque<IdentityEvent>,
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("{field}: {why}")]
    Secret { field: String, why: String },
    #[error(transparent)]
    Keycloak(#[from] KeycloakError),
}

/// Reads a secret file: 0600 (or tighter), one line.
fn read_secret(field: &str, path: &Path) -> Result<String, IdentityError> {
    let err = |why: String| IdentityError::Secret {
        field: field.into(),
        why,
    };
    crate::secrets::check_private(path).map_err(|e| err(e.to_string()))?;
    let text = std::fs::read_to_string(path)
        .map_err(|e| err(format!("cannot read {}: {e}", path.display())))?;
    let value = text.trim().to_string();
    if value.is_empty() || value.contains('\n') {
        return Err(err(format!(
            "{} must hold one line, the secret",
            path.display()
        )));
    }
    Ok(value)
}

/// Makes the secret at `path` (random, 0600) when it is absent and `path` is under the
/// daemon's `dir` (a file the operator names is theirs to make).
fn ensure_secret(dir: &Path, path: &Path) -> Result<(), String> {
    if path.exists() || !path.starts_with(dir) {
        return Ok(());
    }
    if let Some(parent) = path.parent() {
        crate::secrets::create_private_dir(parent)
            .map_err(|e| format!("cannot make {}: {e}", parent.display()))?;
    }
    crate::secrets::write_private(
        path,
        format!("{}\n", crate::secrets::random_hex(24)).as_bytes(),
    )
    .map_err(|e| e.to_string())
}

/// Makes every generated secret `config` needs that is absent: the administrator's password
/// (before Keycloak first starts, which takes it), the client's secret, users' passwords.
pub fn ensure_secrets(config: &IdentityConfig) -> Result<(), String> {
    crate::secrets::create_private_dir(&config.dir)
        .map_err(|e| format!("cannot make {}: {e}", config.dir.display()))?;
    ensure_secret(&config.dir, &config.admin_password_file)?;
    ensure_secret(&config.dir, &config.client_secret_file())?;
    ensure_secret(&config.dir, &config.db_password_file())?;
    for user in &config.users {
        ensure_secret(&config.dir, &user.password_file)?;
    }
    Ok(())
}

/// What the `keycloak` add-on's templates need: the administrator's name and password and
/// the database's password, base64 (made when absent, like every generated secret).
pub fn addon_secrets(config: &IdentityConfig) -> Result<[String; 3], String> {
    use base64::Engine as _;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
    ensure_secrets(config)?;
    let admin = read_secret("identity.admin_password_file", &config.admin_password_file)
        .map_err(|e| e.to_string())?;
    let db = read_secret("identity.db_password", &config.db_password_file())
        .map_err(|e| e.to_string())?;
    Ok([b64(&config.admin_user), b64(&admin), b64(&db)])
}

/// The realm `config` declares, with its secrets read from their files.
pub fn declared(config: &IdentityConfig) -> Result<Realm, IdentityError> {
    let client_secret = read_secret("identity.client_secret", &config.client_secret_file())?;
    let mut users = Vec::new();
    for (i, user) in config.users.iter().enumerate() {
        users.push(RealmUser {
            name: user.name.clone(),
            email: user.email.clone(),
            groups: user.groups.clone(),
            password: read_secret(
                &format!("identity.users[{i}].password_file"),
                &user.password_file,
            )?,
        });
    }
    let mut redirect_uris: Vec<String> = keycloak::KUBELOGIN_REDIRECTS
        .iter()
        .map(|s| s.to_string())
        .collect();
    redirect_uris.push(format!("{}/*", config.dashboard_url));
    redirect_uris.extend(config.redirect_uris.iter().cloned());
    Ok(Realm {
        name: config.realm.clone(),
        client_id: config.client_id.clone(),
        client_secret,
        redirect_uris,
        web_origins: vec![config.dashboard_url.clone()],
        password_grant: config.password_grant,
        groups: declared_groups(config, &config.tenants),
        users,
    })
}

/// The realm's reconciler.
pub struct Identity {
    config: IdentityConfig,
    http: reqwest::Client,
    status: Mutex<IdentityStatus>,
    kick: Notify,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("issuer", &self.config.issuer())
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Identity {
    /// The reconciler for `config`, trusting `ca_pem` for Keycloak's certificate and resolving
    /// names of the daemon's zone with `lookup`. Makes the generated secrets now.
    pub fn new(
        config: IdentityConfig,
        ca_pem: &str,
        lookup: ZoneLookup,
    ) -> Result<Identity, String> {
        ensure_secrets(&config)?;
        let http = keycloak::http_client(ca_pem, lookup)?;
        let status = IdentityStatus {
            issuer: config.issuer(),
            realm: config.realm.clone(),
            client_id: config.client_id.clone(),
            groups: declared_groups(&config, &config.tenants),
            users: config.users.iter().map(|u| u.name.clone()).collect(),
            state: IdentityState::Pending,
            message: "no pass yet".into(),
            last_sync: None,
            last_changes: 0,
            changes_total: 0,
            events: VecDeque::new(),
        };
        Ok(Identity {
            config,
            http,
            status: Mutex::new(status),
            kick: Notify::new(),
        })
    }

    pub fn config(&self) -> &IdentityConfig {
        &self.config
    }

    pub fn status(&self) -> IdentityStatus {
        lock(&self.status).clone()
    }

    /// Asks for a pass now.
    pub fn kick(&self) {
        self.kick.notify_one();
    }

    /// The API server client's secret (for the kubeconfigs of people).
    pub fn client_secret(&self) -> Result<String, IdentityError> {
        read_secret("identity.client_secret", &self.config.client_secret_file())
    }

    /// One pass: signs in, brings the realm in step, answers what it changed.
    pub async fn sync(&self) -> Result<Vec<String>, IdentityError> {
        let realm = declared(&self.config)?;
        let password = read_secret(
            "identity.admin_password_file",
            &self.config.admin_password_file,
        )?;
        let admin = Admin::login(
            self.http.clone(),
            &self.config.url,
            &self.config.realm,
            &self.config.admin_user,
            &password,
        )
        .await?;
        Ok(keycloak::reconcile(&admin, &realm).await?)
    }

    fn record(&self, outcome: &Result<Vec<String>, IdentityError>) {
        let now = OffsetDateTime::now_utc();
        let mut status = lock(&self.status);
        let first = status.last_sync.is_none() && status.changes_total == 0;
        let push = |status: &mut IdentityStatus, message: String| {
            status.events.push_back(IdentityEvent { at: now, message });
            while status.events.len() > EVENTS {
                status.events.pop_front();
            }
        };
        match outcome {
            Ok(changes) => {
                status.state = IdentityState::Healthy;
                status.last_sync = Some(now);
                status.last_changes = changes.len();
                status.changes_total += changes.len() as u64;
                status.message = if changes.is_empty() {
                    "the realm is as declared".into()
                } else if first {
                    format!("declared: {} writes", changes.len())
                } else {
                    format!("drift repaired: {}", changes.join("; "))
                };
                for change in changes {
                    if first {
                        tracing::info!(realm = %self.config.realm, %change, "identity: realm declared");
                    } else {
                        tracing::warn!(realm = %self.config.realm, %change, "identity: drift repaired");
                    }
                    let text = if first {
                        change.clone()
                    } else {
                        format!("drift repaired: {change}")
                    };
                    push(&mut status, text);
                }
            }
            Err(e) => {
                let message = e.to_string();
                if status.state != IdentityState::Failed || status.message != message {
                    tracing::warn!(realm = %self.config.realm, error = %message, "identity: pass failed");
                    push(&mut status, format!("failed: {message}"));
                }
                status.state = IdentityState::Failed;
                status.message = message;
            }
        }
    }

    /// The reconciler: runs until `cancel`.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        let period = Duration::from_secs(self.config.resync_secs.into());
        let mut retry = RETRY;
        loop {
            let outcome = self.sync().await;
            let wait = if outcome.is_ok() {
                retry = RETRY;
                period
            } else {
                let wait = retry;
                retry = (retry * 2).min(period);
                wait
            };
            self.record(&outcome);
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
                _ = self.kick.notified() => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn config(dir: &Path, extra: &str) -> IdentityConfig {
        let raw: settings::RawIdentity =
            toml::from_str(&format!("enabled = true\n{extra}")).unwrap();
        let mut problems = Vec::new();
        let c = settings::validate(raw, dir, true, "kube.lacave", &mut |k: &str, r: String| {
            problems.push((k.to_string(), r))
        });
        assert!(problems.is_empty(), "{problems:?}");
        c
    }

    #[test]
    fn secrets_are_made_once_private_and_operator_files_are_never_made() {
        let dir = tempfile::tempdir().unwrap();
        let c = config(
            dir.path(),
            "[[users]]\nname = \"alice\"\n[[users]]\nname = \"bob\"\npassword_file = \"/nonexistent/bob\"\n",
        );
        ensure_secrets(&c).unwrap();
        let made = [
            c.admin_password_file.clone(),
            c.client_secret_file(),
            c.users[0].password_file.clone(),
        ];
        for path in &made {
            let mode = std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", path.display());
        }
        let first = std::fs::read_to_string(&made[1]).unwrap();
        ensure_secrets(&c).unwrap();
        assert_eq!(std::fs::read_to_string(&made[1]).unwrap(), first);
        assert!(!Path::new("/nonexistent/bob").exists());
        // Bob's file is the operator's: its absence is an error naming the field.
        let e = declared(&c).unwrap_err().to_string();
        assert!(e.starts_with("identity.users[1].password_file"), "{e}");
    }

    #[test]
    fn a_readable_secret_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let c = config(dir.path(), "");
        ensure_secrets(&c).unwrap();
        std::fs::set_permissions(
            c.client_secret_file(),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        let e = declared(&c).unwrap_err().to_string();
        assert!(e.contains("chmod 600"), "{e}");
    }

    #[test]
    fn the_declaration_carries_kubelogin_and_the_dashboard() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = config(
            dir.path(),
            "redirect_uris = [\"https://ci.example.org/cb\"]\n",
        );
        c.tenants = vec!["team-a".into()];
        ensure_secrets(&c).unwrap();
        let realm = declared(&c).unwrap();
        assert_eq!(
            realm.redirect_uris,
            [
                "http://localhost:8000",
                "http://localhost:18000",
                "https://dashboard.kube.lacave/*",
                "https://ci.example.org/cb"
            ]
        );
        assert_eq!(
            realm.groups,
            [
                "cluster-admin",
                "team-a-namespace-admin",
                "team-a-namespace-edit",
                "team-a-namespace-view"
            ]
        );
    }
}

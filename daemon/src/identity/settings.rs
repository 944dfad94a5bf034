//! The `[identity]` section: single sign-on through Keycloak. The daemon declares a realm
//! (a confidential client for the API server, its audience scope and groups mapper, a group
//! for the cluster's administrators and three per tenant, users) in a Keycloak it reaches at
//! `url`, and points the API server at that realm. Below `config` (which assembles the file).
//!
//! ```toml
//! [identity]
//! enabled = true
//! url = "https://login.kube.lacave"      # default: https://login.<cluster name>.<zone>
//! realm = "lacave"
//! [[identity.users]]
//! name = "alice"
//! email = "alice@example.org"
//! groups = ["cluster-admin"]
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RawIdentity {
    /// Declare the realm in Keycloak and make the API server trust it. Needs `[cluster]
    /// enabled`; `[cluster] oidc_*` then come from here (leave them unset).
    ///
    /// Default: `false`.
    enabled: Option<bool>,
    /// Keycloak's base URL (https; its certificate must come from the lacave CA). A host in
    /// the daemon's DNS zone is resolved from the zone itself.
    ///
    /// Default: `https://login.<cluster.name>.<dns.zone>`.
    url: Option<String>,
    /// The realm the daemon declares (not `master`, which administers Keycloak itself).
    ///
    /// Default: `"lacave"`.
    realm: Option<String>,
    /// The confidential client the API server accepts tokens for (its secret is generated
    /// and kept in the state directory).
    ///
    /// Default: `"kubeapi"`.
    client_id: Option<String>,
    /// Keycloak's administrator, in its `master` realm, the daemon signs in as.
    ///
    /// Default: `"admin"`.
    admin_user: Option<String>,
    /// The file holding that administrator's password (0600). Generated when absent: start
    /// Keycloak with it (`KC_BOOTSTRAP_ADMIN_PASSWORD`), never with admin/admin.
    ///
    /// Default: `<state_dir>/identity/admin-password`.
    #[schema(value_type = Option<String>)]
    admin_password_file: Option<PathBuf>,
    /// The realm group bound to Kubernetes' `cluster-admin` role.
    ///
    /// Default: `"cluster-admin"`.
    admin_group: Option<String>,
    /// Let clients trade a user's password for tokens (the OAuth password grant: kubelogin's
    /// `--grant-type password`, for scripts). Off, users sign in through the browser.
    ///
    /// Default: `false`.
    password_grant: Option<bool>,
    /// Redirect URIs allowed besides kubelogin's (`http://localhost:8000`,
    /// `http://localhost:18000`) and the dashboard's.
    ///
    /// Default: `[]`.
    redirect_uris: Option<Vec<String>>,
    /// How often the realm is compared with its declaration and repaired, in seconds (30 to
    /// 86400).
    ///
    /// Default: `300`.
    resync_secs: Option<u32>,
    /// Users the daemon creates in the realm (`[[identity.users]]`).
    ///
    /// Default: none.
    #[serde(default)]
    users: Vec<RawUser>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RawUser {
    /// The user name (lowercase letters, digits, `.`, `_`, `-`, `@`).
    ///
    /// Default: required.
    name: String,
    /// The user's e-mail address.
    ///
    /// Default: unset.
    email: Option<String>,
    /// Realm groups the user is a member of: `admin_group`, or a tenant's
    /// `<namespace>-namespace-admin|edit|view`.
    ///
    /// Default: `[]`.
    groups: Option<Vec<String>>,
    /// A file holding the user's first password (never in this file). Generated when absent,
    /// in `<state_dir>/identity/users/<name>` (0600). Set at creation only: users change it.
    ///
    /// Default: generated.
    #[schema(value_type = Option<String>)]
    password_file: Option<PathBuf>,
}

/// A validated `[identity]`.
#[derive(Clone, Debug, PartialEq)]
pub struct IdentityConfig {
    pub enabled: bool,
    /// Without a trailing slash.
    pub url: String,
    pub realm: String,
    pub client_id: String,
    pub admin_user: String,
    pub admin_password_file: PathBuf,
    pub admin_group: String,
    pub password_grant: bool,
    pub redirect_uris: Vec<String>,
    pub resync_secs: u32,
    pub users: Vec<User>,
    /// `<state_dir>/identity`: the client secret and generated passwords.
    pub dir: PathBuf,
    /// `https://dashboard.<cluster domain>`: allowed as a redirect and an origin.
    pub dashboard_url: String,
    /// The namespaces of `[[addons.tenants]]` (set by `config` once `[addons]` is read): each
    /// has its three groups.
    pub tenants: Vec<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct User {
    pub name: String,
    pub email: Option<String>,
    pub groups: Vec<String>,
    pub password_file: PathBuf,
}

impl IdentityConfig {
    /// The OIDC issuer the API server trusts.
    pub fn issuer(&self) -> String {
        format!("{}/realms/{}", self.url, self.realm)
    }

    /// The password of the in-cluster Keycloak's database (the `keycloak` add-on).
    pub fn db_password_file(&self) -> PathBuf {
        self.dir.join("db-password")
    }

    /// The file holding the API server client's secret.
    pub fn client_secret_file(&self) -> PathBuf {
        self.dir.join("client-secret")
    }

    /// The realm groups of a tenant's namespace, in the order admin, edit, view.
    pub fn tenant_groups(namespace: &str) -> [String; 3] {
        ["admin", "edit", "view"].map(|role| format!("{namespace}-namespace-{role}"))
    }
}

/// Keycloak names (realms, clients): letters, digits, `-` and `_`, 1 to 64.
fn is_keycloak_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn is_user_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 255
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b".-_@".contains(&b))
}

/// A group name the realm and RBAC can both carry, and not one of Kubernetes' own.
pub fn check_group(group: &str) -> Result<(), String> {
    if group.is_empty() || group.len() > 255 || group.chars().any(|c| c.is_control() || c == '/') {
        return Err(format!(
            "{group:?} is not a group name (1 to 255 characters, no '/' or control character)"
        ));
    }
    if group.starts_with("system:") {
        return Err(format!(
            "{group:?}: system:* groups are Kubernetes' own (system:masters is every right); an identity provider's groups never name them"
        ));
    }
    Ok(())
}

/// Checks `[identity]`; `cluster_domain` is `<cluster name>.<zone>`.
pub fn validate(
    raw: RawIdentity,
    state_dir: &Path,
    cluster_enabled: bool,
    cluster_domain: &str,
    problem: &mut impl FnMut(&str, String),
) -> IdentityConfig {
    let enabled = raw.enabled.unwrap_or(false);
    if enabled && !cluster_enabled {
        problem(
            "identity.enabled",
            "needs [cluster] enabled = true: the realm is there for the cluster's API server"
                .into(),
        );
    }
    let url = raw
        .url
        .unwrap_or_else(|| format!("https://login.{cluster_domain}"))
        .trim_end_matches('/')
        .to_string();
    match url.strip_prefix("https://") {
        Some(rest)
            if !rest.is_empty()
                && !rest.contains(char::is_whitespace)
                && !rest.contains(['?', '#', '@']) => {}
        _ => problem(
            "identity.url",
            format!(
                "{url:?} is not an https:// URL without query or user (the API server only trusts an https issuer)"
            ),
        ),
    }
    let realm = raw.realm.unwrap_or_else(|| "lacave".into());
    if !is_keycloak_name(&realm) {
        problem(
            "identity.realm",
            format!("{realm:?} is not a realm name (letters, digits, '-', '_'; 1 to 64)"),
        );
    } else if realm == "master" {
        problem(
            "identity.realm",
            "\"master\" administers Keycloak itself; give the cluster a realm of its own".into(),
        );
    }
    let client_id = raw.client_id.unwrap_or_else(|| "kubeapi".into());
    if !is_keycloak_name(&client_id) {
        problem(
            "identity.client_id",
            format!("{client_id:?} is not a client id (letters, digits, '-', '_'; 1 to 64)"),
        );
    }
    let admin_user = raw.admin_user.unwrap_or_else(|| "admin".into());
    if !is_user_name(&admin_user) {
        problem(
            "identity.admin_user",
            format!("{admin_user:?} is not a Keycloak user name"),
        );
    }
    let dir = state_dir.join("identity");
    if let Some(p) = &raw.admin_password_file
        && !p.is_absolute()
    {
        problem(
            "identity.admin_password_file",
            format!("{} is not an absolute path", p.display()),
        );
    }
    let admin_password_file = raw
        .admin_password_file
        .unwrap_or_else(|| dir.join("admin-password"));
    let admin_group = raw.admin_group.unwrap_or_else(|| "cluster-admin".into());
    if let Err(e) = check_group(&admin_group) {
        problem("identity.admin_group", e);
    }
    let redirect_uris = raw.redirect_uris.unwrap_or_default();
    for (i, uri) in redirect_uris.iter().enumerate() {
        let ok = (uri.starts_with("https://") || uri.starts_with("http://localhost"))
            && !uri.contains(char::is_whitespace);
        if !ok {
            problem(
                &format!("identity.redirect_uris[{i}]"),
                format!(
                    "{uri:?} is not an https:// URL (or http://localhost…, where kubelogin listens)"
                ),
            );
        }
    }
    let resync_secs = match raw.resync_secs {
        None => 300,
        Some(n @ 30..=86_400) => n,
        Some(n) => {
            problem(
                "identity.resync_secs",
                format!("{n} is not a number of seconds from 30 to 86400"),
            );
            300
        }
    };
    let mut users: Vec<User> = Vec::new();
    for (i, u) in raw.users.into_iter().enumerate() {
        let key = format!("identity.users[{i}]");
        if !is_user_name(&u.name) {
            problem(
                &format!("{key}.name"),
                format!(
                    "{:?} is not a user name (lowercase letters, digits, '.', '_', '-', '@')",
                    u.name
                ),
            );
        } else if users.iter().any(|o| o.name == u.name) || u.name == admin_user {
            problem(
                &format!("{key}.name"),
                format!("{:?} is declared already", u.name),
            );
        }
        if let Some(email) = &u.email {
            let ok = email.split_once('@').is_some_and(|(l, d)| {
                !l.is_empty() && d.contains('.') && !email.contains(char::is_whitespace)
            });
            if !ok {
                problem(
                    &format!("{key}.email"),
                    format!("{email:?} is not an e-mail address"),
                );
            }
        }
        let groups = u.groups.unwrap_or_default();
        for (j, g) in groups.iter().enumerate() {
            if let Err(e) = check_group(g) {
                problem(&format!("{key}.groups[{j}]"), e);
            }
        }
        let password_file = match u.password_file {
            Some(p) if p.is_absolute() => p,
            Some(p) => {
                problem(
                    &format!("{key}.password_file"),
                    format!("{} is not an absolute path", p.display()),
                );
                p
            }
            None => dir.join("users").join(&u.name),
        };
        users.push(User {
            name: u.name,
            email: u.email,
            groups,
            password_file,
        });
    }
    IdentityConfig {
        enabled,
        url,
        realm,
        client_id,
        admin_user,
        admin_password_file,
        admin_group,
        password_grant: raw.password_grant.unwrap_or(false),
        redirect_uris,
        resync_secs,
        users,
        dir,
        dashboard_url: format!("https://dashboard.{cluster_domain}"),
        tenants: Vec::new(),
    }
}

/// The groups the realm declares: the administrators', then each tenant's three.
pub fn declared_groups(identity: &IdentityConfig, tenants: &[String]) -> Vec<String> {
    let mut groups = vec![identity.admin_group.clone()];
    for ns in tenants {
        groups.extend(IdentityConfig::tenant_groups(ns));
    }
    groups
}

/// Checks the users' groups against what the realm declares (`tenants`: the namespaces of
/// `[[addons.tenants]]`).
pub fn check_users(
    identity: &IdentityConfig,
    tenants: &[String],
    problem: &mut impl FnMut(&str, String),
) {
    let declared = declared_groups(identity, tenants);
    for (i, user) in identity.users.iter().enumerate() {
        for (j, g) in user.groups.iter().enumerate() {
            if !declared.contains(g) {
                problem(
                    &format!("identity.users[{i}].groups[{j}]"),
                    format!(
                        "{g:?} is not a group of the realm ({}): the admin group, or <namespace>-namespace-admin|edit|view of an [[addons.tenants]] namespace",
                        declared.join(", ")
                    ),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::identity::settings::*;

    fn check(text: &str) -> (IdentityConfig, Vec<(String, String)>) {
        let raw: RawIdentity = toml::from_str(text).unwrap();
        let mut problems = Vec::new();
        let c = validate(
            raw,
            Path::new("/var/lib/lacave"),
            true,
            "kube.lacave",
            &mut |k: &str, r: String| problems.push((k.to_string(), r)),
        );
        (c, problems)
    }

    #[test]
    fn defaults_name_the_seed_and_the_state_directory() {
        let (c, problems) = check("enabled = true");
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(c.url, "https://login.kube.lacave");
        assert_eq!(c.issuer(), "https://login.kube.lacave/realms/lacave");
        assert_eq!(c.client_id, "kubeapi");
        assert_eq!(c.admin_group, "cluster-admin");
        assert_eq!(
            c.admin_password_file,
            Path::new("/var/lib/lacave/identity/admin-password")
        );
        assert_eq!(c.dashboard_url, "https://dashboard.kube.lacave");
        assert!(!c.password_grant);
    }

    #[test]
    fn every_bad_field_is_named() {
        let (_, problems) = check(
            r#"
            enabled = true
            url = "http://login.kube.lacave"
            realm = "master"
            client_id = "kube api"
            admin_group = "system:masters"
            redirect_uris = ["ftp://x"]
            resync_secs = 5
            [[identity.users]]
            name = "Alice"
            email = "alice"
            groups = ["system:masters"]
            password_file = "relative"
            "#
            .replace("[[identity.users]]", "[[users]]")
            .as_str(),
        );
        let keys: Vec<&str> = problems.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "identity.url",
                "identity.realm",
                "identity.client_id",
                "identity.admin_group",
                "identity.redirect_uris[0]",
                "identity.resync_secs",
                "identity.users[0].name",
                "identity.users[0].email",
                "identity.users[0].groups[0]",
                "identity.users[0].password_file",
            ]
        );
        assert!(problems[3].1.contains("system:masters is every right"));
    }

    #[test]
    fn users_may_only_join_declared_groups() {
        let (c, problems) = check(
            "enabled = true\n[[users]]\nname = \"bob\"\ngroups = [\"team-a-namespace-edit\", \"team-b-namespace-view\"]\n",
        );
        assert!(problems.is_empty());
        assert_eq!(
            c.users[0].password_file,
            Path::new("/var/lib/lacave/identity/users/bob")
        );
        let mut problems = Vec::new();
        check_users(&c, &["team-a".into()], &mut |k: &str, r: String| {
            problems.push((k.to_string(), r))
        });
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].0, "identity.users[0].groups[1]");
        assert!(problems[0].1.contains("team-a-namespace-view"));
    }

    #[test]
    fn it_needs_the_cluster() {
        let raw: RawIdentity = toml::from_str("enabled = true").unwrap();
        let mut problems = Vec::new();
        validate(
            raw,
            Path::new("/s"),
            false,
            "kube.lacave",
            &mut |k: &str, r: String| problems.push((k.to_string(), r)),
        );
        assert_eq!(problems[0].0, "identity.enabled");
    }
}

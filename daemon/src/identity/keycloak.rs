//! Keycloak's admin REST API (`/admin/realms/…`), and the realm declared through it: what
//! exists is compared with the declaration and only what differs is written, so a pass over
//! a realm in step writes nothing and a pass after someone deleted a group in Keycloak's UI
//! puts it back and says so.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

/// One request's limit.
const REQUEST: Duration = Duration::from_secs(10);
/// How much of an error answer is quoted.
const QUOTE: usize = 200;
/// The client scope that puts the client id in the access token's audience (the seed's name).
pub const AUDIENCE_SCOPE: &str = "kube-api-audience";
/// Where kubelogin listens for the browser's redirect (its default port, then its fallback).
pub const KUBELOGIN_REDIRECTS: [&str; 2] = ["http://localhost:8000", "http://localhost:18000"];

#[derive(Debug, thiserror::Error)]
pub enum KeycloakError {
    #[error("Keycloak at {url} does not answer: {why}")]
    Unreachable { url: String, why: String },
    #[error(
        "Keycloak's certificate at {url} is not one the lacave CA signed for that name ({why}): give Keycloak a certificate from `lacave pki issue`"
    )]
    Certificate { url: String, why: String },
    #[error(
        "Keycloak refused the administrator {user:?} (HTTP {status}): check identity.admin_password_file, and that Keycloak was started with that password"
    )]
    Credentials { user: String, status: u16 },
    #[error("Keycloak answered HTTP {status} to {what}: {body}")]
    Api {
        what: String,
        status: u16,
        body: String,
    },
}

/// Names under the daemon's own DNS zone resolved from the zone itself: `None` for a name
/// outside it (then the system resolver), an empty list for a name in it without address.
pub type ZoneLookup = Arc<
    dyn Fn(String) -> std::pin::Pin<Box<dyn Future<Output = Option<Vec<IpAddr>>> + Send>>
        + Send
        + Sync,
>;

struct Resolver(ZoneLookup);

impl reqwest::dns::Resolve for Resolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let lookup = self.0.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = match lookup(host.clone()).await {
                Some(ips) if ips.is_empty() => {
                    return Err(format!("{host} has no address in the daemon's DNS zone").into());
                }
                Some(ips) => ips.into_iter().map(|ip| SocketAddr::new(ip, 0)).collect(),
                None => tokio::net::lookup_host((host.as_str(), 0))
                    .await
                    .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)?
                    .collect(),
            };
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// A client for Keycloak at `base`, trusting only the lacave CA (`ca_pem`).
pub fn http_client(ca_pem: &str, lookup: ZoneLookup) -> Result<reqwest::Client, String> {
    let ca = reqwest::Certificate::from_pem(ca_pem.as_bytes())
        .map_err(|e| format!("the lacave CA: {e}"))?;
    reqwest::Client::builder()
        .timeout(REQUEST)
        .connect_timeout(Duration::from_secs(5))
        .redirect(reqwest::redirect::Policy::none())
        .tls_certs_only([ca])
        .dns_resolver(Arc::new(Resolver(lookup)))
        .build()
        .map_err(|e| e.to_string())
}

fn transport(url: &str, e: reqwest::Error) -> KeycloakError {
    let text = crate::tls::error_chain(&e);
    if text.contains("certificate") || text.contains("UnknownIssuer") {
        KeycloakError::Certificate {
            url: url.into(),
            why: text,
        }
    } else {
        KeycloakError::Unreachable {
            url: url.into(),
            why: text,
        }
    }
}

/// `application/x-www-form-urlencoded` encoding of one value.
fn form_encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => {
                (b as char).to_string()
            }
            b' ' => "+".into(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn quote(body: &str) -> String {
    let body = body.trim();
    match body.char_indices().nth(QUOTE) {
        Some((i, _)) => format!("{}…", &body[..i]),
        None => body.to_string(),
    }
}

/// A signed-in administrator. Its token is never formatted: `Debug` leaves it out.
pub struct Admin {
    http: reqwest::Client,
    base: String,
    realm: String,
    token: String,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl Admin {
    /// Signs in to the `master` realm as `user` (the password grant of `admin-cli`, as
    /// Keycloak's own `kcadm.sh` does), to administer `realm`.
    pub async fn login(
        http: reqwest::Client,
        base: &str,
        realm: &str,
        user: &str,
        password: &str,
    ) -> Result<Admin, KeycloakError> {
        let url = format!("{base}/realms/master/protocol/openid-connect/token");
        let form = [
            ("grant_type", "password"),
            ("client_id", "admin-cli"),
            ("username", user),
            ("password", password),
        ]
        .iter()
        .map(|(k, v)| format!("{k}={}", form_encode(v)))
        .collect::<Vec<_>>()
        .join("&");
        let answer = http
            .post(&url)
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .body(form)
            .send()
            .await
            .map_err(|e| transport(base, e))?;
        let status = answer.status();
        if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::BAD_REQUEST
        {
            return Err(KeycloakError::Credentials {
                user: user.into(),
                status: status.as_u16(),
            });
        }
        let body = answer.text().await.map_err(|e| transport(base, e))?;
        if !status.is_success() {
            return Err(KeycloakError::Api {
                what: "the administrator's sign-in".into(),
                status: status.as_u16(),
                body: quote(&body),
            });
        }
        let token = serde_json::from_str::<Value>(&body)
            .ok()
            .and_then(|v| v["access_token"].as_str().map(str::to_string))
            .ok_or_else(|| KeycloakError::Api {
                what: "the administrator's sign-in".into(),
                status: status.as_u16(),
                body: "no access_token in the answer".into(),
            })?;
        Ok(Admin {
            http,
            base: base.to_string(),
            realm: realm.to_string(),
            token,
        })
    }

    /// `method` on `/admin/realms/<realm><path>` (on `/admin/realms` itself for the path
    /// `/`); `None` for a 404. A `201 Created` answers the new object's id
    /// (the last segment of `Location`) as a JSON string.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Option<Value>, KeycloakError> {
        let url = if path == "/" {
            format!("{}/admin/realms", self.base)
        } else {
            format!("{}/admin/realms/{}{path}", self.base, self.realm)
        };
        let what = format!("{method} {}", url.trim_start_matches(&self.base));
        let mut request = self.http.request(method, &url).bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(body);
        }
        let answer = request.send().await.map_err(|e| transport(&self.base, e))?;
        let status = answer.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let location = answer
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|l| l.to_str().ok())
            .and_then(|l| l.rsplit('/').next())
            .map(str::to_string);
        let text = answer.text().await.map_err(|e| transport(&self.base, e))?;
        if !status.is_success() {
            return Err(KeycloakError::Api {
                what,
                status: status.as_u16(),
                body: quote(&text),
            });
        }
        if status == reqwest::StatusCode::CREATED {
            return Ok(Some(location.map(Value::String).unwrap_or(Value::Null)));
        }
        if text.trim().is_empty() {
            return Ok(Some(Value::Null));
        }
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| KeycloakError::Api {
                what,
                status: status.as_u16(),
                body: format!("not JSON: {e}"),
            })
    }

    async fn get(&self, path: &str) -> Result<Option<Value>, KeycloakError> {
        self.call(Method::GET, path, None).await
    }

    async fn list(&self, path: &str) -> Result<Vec<Value>, KeycloakError> {
        Ok(match self.get(path).await? {
            Some(Value::Array(items)) => items,
            _ => Vec::new(),
        })
    }

    async fn write(
        &self,
        method: Method,
        path: &str,
        body: &Value,
    ) -> Result<Value, KeycloakError> {
        let what = format!("{method} {path}");
        self.call(method, path, Some(body))
            .await?
            .ok_or_else(|| KeycloakError::Api {
                what,
                status: 404,
                body: "not found".into(),
            })
    }
}

/// The realm as declared.
#[derive(Clone)]
pub struct Realm {
    pub name: String,
    pub client_id: String,
    pub client_secret: String,
    pub redirect_uris: Vec<String>,
    pub web_origins: Vec<String>,
    pub password_grant: bool,
    pub groups: Vec<String>,
    pub users: Vec<RealmUser>,
}

#[derive(Clone)]
pub struct RealmUser {
    pub name: String,
    pub email: Option<String>,
    pub groups: Vec<String>,
    /// Set at creation only.
    pub password: String,
}

impl std::fmt::Debug for Realm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Realm")
            .field("name", &self.name)
            .field("client_id", &self.client_id)
            .field("groups", &self.groups)
            .field(
                "users",
                &self.users.iter().map(|u| &u.name).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

fn audience_mapper(client_id: &str) -> Value {
    json!({
        "name": AUDIENCE_SCOPE,
        "protocol": "openid-connect",
        "protocolMapper": "oidc-audience-mapper",
        "config": {
            "included.client.audience": client_id,
            "id.token.claim": "true",
            "access.token.claim": "true",
        }
    })
}

fn groups_mapper() -> Value {
    json!({
        "name": "groups",
        "protocol": "openid-connect",
        "protocolMapper": "oidc-group-membership-mapper",
        "config": {
            "claim.name": "groups",
            "full.path": "false",
            "id.token.claim": "true",
            "access.token.claim": "true",
            "userinfo.token.claim": "true",
        }
    })
}

fn strings(v: &Value) -> Vec<String> {
    let mut out: Vec<String> = v
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

fn id_of(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        _ => v["id"].as_str().map(str::to_string),
    }
}

fn missing_id(what: &str) -> KeycloakError {
    KeycloakError::Api {
        what: what.into(),
        status: 201,
        body: "no id in the answer".into(),
    }
}

/// Brings the realm in step with `realm`; answers what it changed (empty: it was in step).
/// One function per Keycloak object, each comparing before it writes.
pub async fn reconcile(admin: &Admin, realm: &Realm) -> Result<Vec<String>, KeycloakError> {
    let mut changes = Vec::new();
    realm_itself(admin, realm, &mut changes).await?;
    let scope_id = audience_scope(admin, realm, &mut changes).await?;
    client(admin, realm, &scope_id, &mut changes).await?;
    let group_ids = groups(admin, realm, &mut changes).await?;
    users(admin, realm, &group_ids, &mut changes).await?;
    Ok(changes)
}

/// The realm: created (with a user profile that asks no e-mail or names), or enabled.
async fn realm_itself(
    admin: &Admin,
    realm: &Realm,
    changes: &mut Vec<String>,
) -> Result<(), KeycloakError> {
    // The realm.
    match admin.get("").await? {
        None => {
            admin
                .write(
                    Method::POST,
                    "/",
                    &json!({"realm": realm.name, "enabled": true}),
                )
                .await?;
            changes.push(format!("created realm {}", realm.name));
            // Keycloak's user profile asks every user for an e-mail address and names; the
            // cluster needs a user name only, and a user without them could not sign in
            // ("Account is not fully set up") until they filled a form kubelogin never shows.
            // Made optional once, at creation: the site may require them later.
            if let Some(mut profile) = admin.get("/users/profile").await? {
                if let Some(attributes) = profile["attributes"].as_array_mut() {
                    for a in attributes {
                        if ["email", "firstName", "lastName"]
                            .iter()
                            .any(|n| a["name"] == *n)
                            && let Some(a) = a.as_object_mut()
                        {
                            a.remove("required");
                        }
                    }
                }
                admin.write(Method::PUT, "/users/profile", &profile).await?;
                changes.push("made e-mail and names optional in the realm's user profile".into());
            }
        }
        Some(r) if r["enabled"] != json!(true) => {
            admin
                .write(Method::PUT, "", &json!({"enabled": true}))
                .await?;
            changes.push(format!("enabled realm {} (it was disabled)", realm.name));
        }
        Some(_) => {}
    }

    Ok(())
}

/// The audience scope, with its mapper; answers its id.
async fn audience_scope(
    admin: &Admin,
    realm: &Realm,
    changes: &mut Vec<String>,
) -> Result<String, KeycloakError> {
    // The audience scope.
    let scopes = admin.list("/client-scopes").await?;
    let scope_id = match scopes.iter().find(|s| s["name"] == AUDIENCE_SCOPE) {
        None => {
            let created = admin
                .write(
                    Method::POST,
                    "/client-scopes",
                    &json!({
                        "name": AUDIENCE_SCOPE,
                        "description": "Puts the API server's client id in the tokens' audience",
                        "protocol": "openid-connect",
                        "attributes": {
                            "include.in.token.scope": "true",
                            "display.on.consent.screen": "false",
                        },
                        "protocolMappers": [audience_mapper(&realm.client_id)],
                    }),
                )
                .await?;
            changes.push(format!("created client scope {AUDIENCE_SCOPE}"));
            id_of(&created).ok_or_else(|| missing_id("the audience scope"))?
        }
        Some(scope) => {
            let id = id_of(scope).ok_or_else(|| missing_id("the audience scope"))?;
            let mapped = scope["protocolMappers"].as_array().is_some_and(|ms| {
                ms.iter().any(|m| {
                    m["protocolMapper"] == "oidc-audience-mapper"
                        && m["config"]["included.client.audience"] == realm.client_id.as_str()
                })
            });
            if !mapped {
                admin
                    .write(
                        Method::POST,
                        &format!("/client-scopes/{id}/protocol-mappers/models"),
                        &audience_mapper(&realm.client_id),
                    )
                    .await?;
                changes.push(format!(
                    "put back the audience mapper of client scope {AUDIENCE_SCOPE}"
                ));
            }
            id
        }
    };

    Ok(scope_id)
}

/// The API server's client: its fields, secret, groups mapper and default scope.
async fn client(
    admin: &Admin,
    realm: &Realm,
    scope_id: &str,
    changes: &mut Vec<String>,
) -> Result<(), KeycloakError> {
    // The API server's client.
    let wanted = json!({
        "clientId": realm.client_id,
        "name": "Kubernetes API server",
        "enabled": true,
        "protocol": "openid-connect",
        "publicClient": false,
        "clientAuthenticatorType": "client-secret",
        "standardFlowEnabled": true,
        "directAccessGrantsEnabled": realm.password_grant,
        "redirectUris": realm.redirect_uris,
        "webOrigins": realm.web_origins,
    });
    let found = admin
        .list(&format!("/clients?clientId={}", realm.client_id))
        .await?;
    let client = match found
        .into_iter()
        .find(|c| c["clientId"] == realm.client_id.as_str())
    {
        None => {
            let mut body = wanted.clone();
            body["secret"] = json!(realm.client_secret);
            body["protocolMappers"] = json!([groups_mapper()]);
            let created = admin.write(Method::POST, "/clients", &body).await?;
            changes.push(format!("created client {}", realm.client_id));
            let id = id_of(&created).ok_or_else(|| missing_id("the client"))?;
            admin
                .get(&format!("/clients/{id}"))
                .await?
                .ok_or_else(|| missing_id("the client"))?
        }
        Some(existing) => existing,
    };
    let client_id = id_of(&client).ok_or_else(|| missing_id("the client"))?;
    let mut drift = Vec::new();
    for field in [
        "enabled",
        "publicClient",
        "standardFlowEnabled",
        "directAccessGrantsEnabled",
        "clientAuthenticatorType",
    ] {
        if client[field] != wanted[field] {
            drift.push(field);
        }
    }
    for field in ["redirectUris", "webOrigins"] {
        if strings(&client[field]) != strings(&wanted[field]) {
            drift.push(field);
        }
    }
    if !drift.is_empty() {
        let mut body = client.clone();
        if let (Some(b), Some(w)) = (body.as_object_mut(), wanted.as_object()) {
            for (k, v) in w {
                b.insert(k.clone(), v.clone());
            }
        }
        admin
            .write(Method::PUT, &format!("/clients/{client_id}"), &body)
            .await?;
        changes.push(format!(
            "repaired client {}: {}",
            realm.client_id,
            drift.join(", ")
        ));
    }
    let secret = admin
        .get(&format!("/clients/{client_id}/client-secret"))
        .await?
        .unwrap_or(Value::Null);
    if secret["value"] != realm.client_secret.as_str() {
        admin
            .write(
                Method::PUT,
                &format!("/clients/{client_id}"),
                &json!({"clientId": realm.client_id, "secret": realm.client_secret}),
            )
            .await?;
        changes.push(format!(
            "reset client {}'s secret to the one the daemon keeps",
            realm.client_id
        ));
    }
    let mappers = admin
        .list(&format!("/clients/{client_id}/protocol-mappers/models"))
        .await?;
    let has_groups = mappers.iter().any(|m| {
        m["protocolMapper"] == "oidc-group-membership-mapper"
            && m["config"]["claim.name"] == "groups"
    });
    if !has_groups {
        admin
            .write(
                Method::POST,
                &format!("/clients/{client_id}/protocol-mappers/models"),
                &groups_mapper(),
            )
            .await?;
        changes.push(format!(
            "put back client {}'s groups mapper",
            realm.client_id
        ));
    }
    let defaults = admin
        .list(&format!("/clients/{client_id}/default-client-scopes"))
        .await?;
    if !defaults.iter().any(|s| s["name"] == AUDIENCE_SCOPE) {
        admin
            .write(
                Method::PUT,
                &format!("/clients/{client_id}/default-client-scopes/{scope_id}"),
                &json!({}),
            )
            .await?;
        changes.push(format!(
            "made {AUDIENCE_SCOPE} a default scope of client {}",
            realm.client_id
        ));
    }

    Ok(())
}

/// The declared groups (top level); answers every top-level group's id by name.
async fn groups(
    admin: &Admin,
    realm: &Realm,
    changes: &mut Vec<String>,
) -> Result<std::collections::BTreeMap<String, String>, KeycloakError> {
    // Groups (top level; groups the daemon does not declare are left alone).
    let existing = admin
        .list("/groups?briefRepresentation=true&max=10000")
        .await?;
    let mut group_ids = std::collections::BTreeMap::new();
    for g in &existing {
        if let (Some(name), Some(id)) = (g["name"].as_str(), g["id"].as_str()) {
            group_ids.insert(name.to_string(), id.to_string());
        }
    }
    for name in &realm.groups {
        if !group_ids.contains_key(name) {
            let created = admin
                .write(Method::POST, "/groups", &json!({"name": name}))
                .await?;
            changes.push(format!("created group {name}"));
            let id = id_of(&created).ok_or_else(|| missing_id("a group"))?;
            group_ids.insert(name.clone(), id);
        }
    }

    Ok(group_ids)
}

/// The declared users: created with their first password; membership of the declared groups
/// kept as declared.
async fn users(
    admin: &Admin,
    realm: &Realm,
    group_ids: &std::collections::BTreeMap<String, String>,
    changes: &mut Vec<String>,
) -> Result<(), KeycloakError> {
    // Users: created with their first password; membership of the declared groups kept as
    // declared (other groups are left alone).
    for user in &realm.users {
        let found = admin
            .list(&format!("/users?exact=true&username={}", user.name))
            .await?;
        let id = match found.iter().find(|u| u["username"] == user.name.as_str()) {
            Some(u) => id_of(u).ok_or_else(|| missing_id("a user"))?,
            None => {
                let mut body = json!({
                    "username": user.name,
                    "enabled": true,
                    "credentials": [{"type": "password", "value": user.password, "temporary": false}],
                });
                if let Some(email) = &user.email {
                    body["email"] = json!(email);
                    body["emailVerified"] = json!(true);
                }
                let created = admin.write(Method::POST, "/users", &body).await?;
                changes.push(format!("created user {}", user.name));
                id_of(&created).ok_or_else(|| missing_id("a user"))?
            }
        };
        let member_of: Vec<String> = admin
            .list(&format!("/users/{id}/groups?briefRepresentation=true"))
            .await?
            .iter()
            .filter_map(|g| g["name"].as_str().map(str::to_string))
            .collect();
        for group in &user.groups {
            if !member_of.contains(group)
                && let Some(gid) = group_ids.get(group)
            {
                admin
                    .write(
                        Method::PUT,
                        &format!("/users/{id}/groups/{gid}"),
                        &json!({}),
                    )
                    .await?;
                changes.push(format!("added user {} to group {group}", user.name));
            }
        }
        for group in member_of {
            if realm.groups.contains(&group)
                && !user.groups.contains(&group)
                && let Some(gid) = group_ids.get(&group)
            {
                admin
                    .call(Method::DELETE, &format!("/users/{id}/groups/{gid}"), None)
                    .await?;
                changes.push(format!(
                    "removed user {} from group {group} (not in its declaration)",
                    user.name
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_a_secret() {
        let realm = Realm {
            name: "lacave".into(),
            client_id: "kubeapi".into(),
            client_secret: "s3cr3t-client".into(),
            redirect_uris: vec![],
            web_origins: vec![],
            password_grant: false,
            groups: vec!["cluster-admin".into()],
            users: vec![RealmUser {
                name: "alice".into(),
                email: None,
                groups: vec![],
                password: "s3cr3t-user".into(),
            }],
        };
        let text = format!("{realm:?}");
        assert!(text.contains("alice") && !text.contains("s3cr3t"), "{text}");
    }

    fn ca(name: &str) -> (rcgen::CertificateParams, rcgen::KeyPair, String) {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let pem = params.self_signed(&key).unwrap().pem();
        (params, key, pem)
    }

    fn lookup() -> ZoneLookup {
        Arc::new(|host: String| {
            Box::pin(async move {
                match host.as_str() {
                    "login.kube.lacave" => Some(vec![IpAddr::from([127, 0, 0, 1])]),
                    "nowhere.kube.lacave" => Some(Vec::new()),
                    _ => None,
                }
            })
        })
    }

    /// A Keycloak stand-in whose certificate, for the right name, comes from another CA: the
    /// daemon refuses it and says so (the real Keycloak is in tests/identity.rs).
    #[tokio::test]
    async fn a_certificate_not_from_the_lacave_ca_is_named() {
        use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
        let (other_params, other_key, _) = ca("Another CA");
        let issuer = rcgen::Issuer::new(other_params, &other_key);
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["login.kube.lacave".into()]).unwrap();
        let cert = params.signed_by(&key, &issuer).unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![CertificateDer::from_pem_slice(cert.pem().as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).unwrap(),
            )
            .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let _ = acceptor.accept(tcp).await;
            }
        });
        let (_, _, lacave_ca) = ca("lacave root");
        let http = http_client(&lacave_ca, lookup()).unwrap();
        let base = format!("https://login.kube.lacave:{port}");
        let e = Admin::login(http.clone(), &base, "lacave", "admin", "pw")
            .await
            .unwrap_err();
        assert!(matches!(e, KeycloakError::Certificate { .. }), "{e}");
        assert!(
            e.to_string().contains("not one the lacave CA signed"),
            "{e}"
        );
        // A name of the zone without an address is said so, never asked of another resolver.
        let e = Admin::login(http, "https://nowhere.kube.lacave", "lacave", "admin", "pw")
            .await
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("nowhere.kube.lacave has no address in the daemon's DNS zone"),
            "{e}"
        );
    }

    #[test]
    fn form_values_are_encoded() {
        assert_eq!(form_encode("a b&c=d%é"), "a+b%26c%3Dd%25%C3%A9");
    }

    #[test]
    fn long_answers_are_cut() {
        let long = "x".repeat(1000);
        assert_eq!(quote(&long).chars().count(), QUOTE + 1);
        assert_eq!(quote(" short "), "short");
    }
}

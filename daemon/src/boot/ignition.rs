//! Ignition spec 3.3.0, as typed structures: every rendered config is parsed back into these
//! (unknown keys refused, as `ignition-validate` only warns about them) and checked before it
//! is served, so a template mistake shows at start-up, not at a node's boot.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub const SPEC_VERSION: &str = "3.3.0";

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Config {
    pub ignition: Ignition,
    #[serde(default)]
    pub storage: Option<Storage>,
    #[serde(default)]
    pub systemd: Option<Systemd>,
    #[serde(default)]
    pub passwd: Option<Passwd>,
    #[serde(default)]
    pub kernel_arguments: Option<Value>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Ignition {
    pub version: String,
    #[serde(default)]
    pub config: Option<Value>,
    #[serde(default)]
    pub proxy: Option<Value>,
    #[serde(default)]
    pub security: Option<Value>,
    #[serde(default)]
    pub timeouts: Option<Value>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Storage {
    #[serde(default)]
    pub files: Vec<File>,
    #[serde(default)]
    pub directories: Vec<Directory>,
    #[serde(default)]
    pub links: Vec<Link>,
    #[serde(default)]
    pub disks: Option<Value>,
    #[serde(default)]
    pub filesystems: Option<Value>,
    #[serde(default)]
    pub raid: Option<Value>,
    #[serde(default)]
    pub luks: Option<Value>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct File {
    pub path: String,
    #[serde(default)]
    pub overwrite: Option<bool>,
    #[serde(default)]
    pub mode: Option<u32>,
    #[serde(default)]
    pub contents: Option<Resource>,
    #[serde(default)]
    pub append: Option<Vec<Resource>>,
    #[serde(default)]
    pub user: Option<Value>,
    #[serde(default)]
    pub group: Option<Value>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Resource {
    #[serde(default)]
    pub source: Option<String>,
    #[serde(default)]
    pub compression: Option<String>,
    #[serde(default)]
    pub verification: Option<Value>,
    #[serde(default)]
    pub http_headers: Option<Value>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Directory {
    pub path: String,
    #[serde(default)]
    pub overwrite: Option<bool>,
    #[serde(default)]
    pub mode: Option<u32>,
    #[serde(default)]
    pub user: Option<Value>,
    #[serde(default)]
    pub group: Option<Value>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Link {
    pub path: String,
    pub target: String,
    #[serde(default)]
    pub hard: Option<bool>,
    #[serde(default)]
    pub overwrite: Option<bool>,
    #[serde(default)]
    pub user: Option<Value>,
    #[serde(default)]
    pub group: Option<Value>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Systemd {
    #[serde(default)]
    pub units: Vec<Unit>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Unit {
    pub name: String,
    #[serde(default)]
    pub enabled: Option<bool>,
    #[serde(default)]
    pub mask: Option<bool>,
    #[serde(default)]
    pub contents: Option<String>,
    #[serde(default)]
    pub dropins: Option<Vec<Dropin>>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Dropin {
    pub name: String,
    #[serde(default)]
    pub contents: Option<String>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Passwd {
    #[serde(default)]
    pub users: Vec<User>,
    #[serde(default)]
    pub groups: Option<Value>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct User {
    pub name: String,
    #[serde(default)]
    pub ssh_authorized_keys: Vec<String>,
    #[serde(default)]
    pub password_hash: Option<String>,
    #[serde(default)]
    pub uid: Option<u32>,
    #[serde(default)]
    pub gecos: Option<String>,
    #[serde(default)]
    pub home_dir: Option<String>,
    #[serde(default)]
    pub no_create_home: Option<bool>,
    #[serde(default)]
    pub primary_group: Option<String>,
    #[serde(default)]
    pub groups: Option<Vec<String>>,
    #[serde(default)]
    pub no_user_group: Option<bool>,
    #[serde(default)]
    pub no_log_init: Option<bool>,
    #[serde(default)]
    pub shell: Option<String>,
    #[serde(default)]
    pub should_exist: Option<bool>,
    #[serde(default)]
    pub system: Option<bool>,
}

/// Parses rendered text as an Ignition 3.3.0 config and checks what Ignition itself would
/// refuse or warn about. The error names the JSON path at fault.
pub fn parse(text: &str) -> Result<Config, String> {
    let de = &mut serde_json::Deserializer::from_str(text);
    let config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." || path == "?" {
            format!("not an Ignition config: {inner}")
        } else {
            format!("{path}: {inner}")
        }
    })?;
    check(&config)?;
    Ok(config)
}

fn check(c: &Config) -> Result<(), String> {
    if c.ignition.version != SPEC_VERSION {
        return Err(format!(
            "ignition.version: {:?} is not {SPEC_VERSION}, the spec lacave emits",
            c.ignition.version
        ));
    }
    let mut paths = HashSet::new();
    if let Some(storage) = &c.storage {
        let entries = storage
            .files
            .iter()
            .map(|f| ("storage.files", f.path.as_str(), f.mode))
            .chain(
                storage
                    .directories
                    .iter()
                    .map(|d| ("storage.directories", d.path.as_str(), d.mode)),
            )
            .chain(
                storage
                    .links
                    .iter()
                    .map(|l| ("storage.links", l.path.as_str(), None)),
            );
        for (what, path, mode) in entries {
            check_path(what, path)?;
            if !paths.insert(path.to_string()) {
                return Err(format!("{what}: {path} is given twice"));
            }
            if let Some(mode) = mode
                && mode > 0o7777
            {
                return Err(format!("{what}: {path}: mode {mode:o} is not a file mode"));
            }
        }
        for f in &storage.files {
            for r in f.contents.iter().chain(f.append.iter().flatten()) {
                if let Some(source) = &r.source {
                    check_source(&f.path, source)?;
                }
            }
        }
    }
    if let Some(systemd) = &c.systemd {
        let mut names = HashSet::new();
        for u in &systemd.units {
            let suffixes = [
                ".service",
                ".socket",
                ".timer",
                ".target",
                ".mount",
                ".path",
                ".slice",
                ".swap",
                ".device",
                ".automount",
                ".scope",
            ];
            if !suffixes.iter().any(|s| u.name.ends_with(s)) || u.name.contains('/') {
                return Err(format!(
                    "systemd.units: {:?} is not a systemd unit name",
                    u.name
                ));
            }
            if !names.insert(u.name.as_str()) {
                return Err(format!("systemd.units: {} is given twice", u.name));
            }
            // A unit enabled without contents comes from the OS or an extension (kubelet.service
            // from the Kubernetes sysext): Ignition writes a preset for it. One whose contents
            // are given must say how it is installed.
            if u.enabled == Some(true)
                && let Some(body) = u.contents.as_deref()
                && !body.contains("[Install]")
            {
                return Err(format!(
                    "systemd.units: {} is enabled but has no [Install] section",
                    u.name
                ));
            }
        }
    }
    if let Some(passwd) = &c.passwd {
        for u in &passwd.users {
            if u.name.is_empty() {
                return Err("passwd.users: a user has no name".into());
            }
            for (i, key) in u.ssh_authorized_keys.iter().enumerate() {
                ssh_key::PublicKey::from_openssh(key.trim()).map_err(|e| {
                    format!(
                        "passwd.users[{}].sshAuthorizedKeys[{i}]: not an OpenSSH public key: {e}",
                        u.name
                    )
                })?;
            }
        }
    }
    Ok(())
}

fn check_path(what: &str, path: &str) -> Result<(), String> {
    if !path.starts_with('/')
        || path.len() > 1 && path.ends_with('/')
        || path
            .split('/')
            .skip(1)
            .any(|p| p.is_empty() || p == "." || p == "..")
    {
        return Err(format!(
            "{what}: {path:?} is not an absolute, normalised path"
        ));
    }
    Ok(())
}

fn check_source(path: &str, source: &str) -> Result<(), String> {
    if let Some(rest) = source.strip_prefix("data:") {
        let Some((_, data)) = rest.split_once(',') else {
            return Err(format!("{path}: a data URL without ','"));
        };
        if rest
            .split(',')
            .next()
            .unwrap_or_default()
            .ends_with(";base64")
        {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD
                .decode(data)
                .map_err(|e| format!("{path}: invalid base64 in a data URL: {e}"))?;
        }
        return Ok(());
    }
    for scheme in ["http://", "https://", "tftp://", "s3://", "gs://"] {
        if source.starts_with(scheme) {
            return Ok(());
        }
    }
    Err(format!(
        "{path}: source {source:?} is not a data, http(s), tftp, s3 or gs URL"
    ))
}

/// A `data:` URL carrying `text` (base64: no escaping pitfalls in templates).
pub fn data_url(text: &str) -> String {
    use base64::Engine;
    format!(
        "data:;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(text)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_what_ignition_would_warn_about_or_refuse() {
        let ok = r#"{"ignition":{"version":"3.3.0"},"storage":{"files":[{"path":"/etc/hostname","mode":420,"contents":{"source":"data:,kube01"}}]}}"#;
        assert!(parse(ok).is_ok());
        for (bad, why) in [
            (r#"{"ignition":{"version":"2.2.0"}}"#, "3.3.0"),
            (
                r#"{"ignition":{"version":"3.3.0"},"networkd":{}}"#,
                "unknown field `networkd`",
            ),
            (
                r#"{"ignition":{"version":"3.3.0"},"storage":{"files":[{"path":"etc/x","filesystem":"root"}]}}"#,
                "storage.files[0]",
            ),
            (
                r#"{"ignition":{"version":"3.3.0"},"storage":{"files":[{"path":"/a/../b"}]}}"#,
                "normalised",
            ),
            (
                r#"{"ignition":{"version":"3.3.0"},"storage":{"files":[{"path":"/a"},{"path":"/a"}]}}"#,
                "twice",
            ),
            (
                r#"{"ignition":{"version":"3.3.0"},"systemd":{"units":[{"name":"x.service","enabled":true,"contents":"[Service]\n"}]}}"#,
                "[Install]",
            ),
            (
                r#"{"ignition":{"version":"3.3.0"},"passwd":{"users":[{"name":"root","sshAuthorizedKeys":["nope"]}]}}"#,
                "OpenSSH",
            ),
            ("{", "not an Ignition config"),
        ] {
            let e = parse(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }
}

//! The operator's Ignition templates (minijinja, Jinja syntax as in Ansible), with per-role and
//! per-node overrides. The embedded defaults are this repository's `ignition-templates/`. The
//! kubeadm configurations of the cluster join (`kubeadm-init.yaml.j2`,
//! `kubeadm-join.yaml.j2`) are templates of the same set, overridden the same way.
//!
//! Lookup for node `kube01` with role `worker`, config `final`:
//! `nodes/kube01/final.ign.j2`, then `roles/worker/final.ign.j2`, then `final.ign.j2`; the
//! operator's `[flatcar] templates_dir` wins over the embedded files at each step.

use std::collections::BTreeSet;
use std::path::Path;

use minijinja::{Environment, UndefinedBehavior};

use super::ignition;

/// Which Ignition config.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Install,
    Final,
}

impl Kind {
    pub const ALL: [Kind; 2] = [Kind::Install, Kind::Final];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Install => "install",
            Kind::Final => "final",
        }
    }

    pub fn from_name(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == name)
    }

    fn file(self) -> String {
        format!("{}.ign.j2", self.as_str())
    }
}

/// The kubeadm configuration of the first control plane (`kubeadm init`).
pub const KUBEADM_INIT: &str = "kubeadm-init.yaml.j2";
/// The kubeadm configuration of every other node (`kubeadm join`).
pub const KUBEADM_JOIN: &str = "kubeadm-join.yaml.j2";

const EMBEDDED: [(&str, &str); 4] = [
    (
        "install.ign.j2",
        include_str!("../../../ignition-templates/install.ign.j2"),
    ),
    (
        "final.ign.j2",
        include_str!("../../../ignition-templates/final.ign.j2"),
    ),
    (
        KUBEADM_INIT,
        include_str!("../../../ignition-templates/kubeadm-init.yaml.j2"),
    ),
    (
        KUBEADM_JOIN,
        include_str!("../../../ignition-templates/kubeadm-join.yaml.j2"),
    ),
];

/// The loaded templates. Loading compiles them all; [`Templates::check`] renders each one.
pub struct Templates {
    env: Environment<'static>,
    names: BTreeSet<String>,
}

impl std::fmt::Debug for Templates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Templates")
            .field("names", &self.names)
            .finish()
    }
}

/// POSIX shell single-quoting.
fn shquote(value: String) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

fn dataurl(value: String) -> String {
    ignition::data_url(&value)
}

impl Templates {
    /// Compiles the embedded templates and the operator's (`dir`), naming the file and the
    /// line of every syntax error.
    pub fn load(dir: Option<&Path>) -> Result<Templates, Vec<String>> {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_keep_trailing_newline(true);
        env.add_filter("shquote", shquote);
        env.add_filter("dataurl", dataurl);
        let mut errors = Vec::new();
        let mut names = BTreeSet::new();
        let mut sources: Vec<(String, String)> = EMBEDDED
            .iter()
            .map(|(n, s)| (n.to_string(), s.to_string()))
            .collect();
        if let Some(dir) = dir {
            match operator_files(dir) {
                Ok(files) => sources.extend(files),
                Err(e) => errors.push(e),
            }
        }
        for (name, source) in sources {
            if let Err(e) = env.add_template_owned(name.clone(), source) {
                errors.push(describe(&name, dir, &e));
            } else {
                names.insert(name);
            }
        }
        if errors.is_empty() {
            Ok(Templates { env, names })
        } else {
            Err(errors)
        }
    }

    /// The template a node gets for `kind`.
    pub fn pick(&self, kind: Kind, hostname: &str, role: &str) -> String {
        self.pick_file(kind.file(), hostname, role)
    }

    /// The template a node gets for the template file `file`.
    fn pick_file(&self, file: String, hostname: &str, role: &str) -> String {
        [
            format!("nodes/{hostname}/{file}"),
            format!("roles/{role}/{file}"),
        ]
        .into_iter()
        .find(|n| self.names.contains(n))
        .unwrap_or(file)
    }

    /// Renders and checks one config: the result is valid Ignition 3.3.0 or an error naming
    /// the template and what is wrong.
    pub fn render(
        &self,
        kind: Kind,
        hostname: &str,
        role: &str,
        context: &impl serde::Serialize,
    ) -> Result<String, String> {
        let name = self.pick(kind, hostname, role);
        let text = self.render_named(&name, context)?;
        ignition::parse(&text).map_err(|e| format!("{name}: renders invalid Ignition: {e}"))?;
        Ok(text)
    }

    /// Renders a kubeadm configuration (`file` is [`KUBEADM_INIT`] or [`KUBEADM_JOIN`]) and
    /// checks that every document of it is a YAML mapping with `apiVersion` and `kind`.
    pub fn render_kubeadm(
        &self,
        file: &str,
        hostname: &str,
        role: &str,
        context: &impl serde::Serialize,
    ) -> Result<String, String> {
        let name = self.pick_file(file.to_string(), hostname, role);
        let text = self.render_named(&name, context)?;
        check_kubeadm_yaml(&text).map_err(|e| format!("{name}: renders invalid YAML: {e}"))?;
        Ok(text)
    }

    /// Renders the template `name`, naming it (and the line) in any error.
    fn render_named(&self, name: &str, context: &impl serde::Serialize) -> Result<String, String> {
        let template = self
            .env
            .get_template(name)
            .map_err(|e| describe(name, None, &e))?;
        template
            .render(context)
            .map_err(|e| describe(name, None, &e))
    }

    /// Per-node override directories present, for checking them with their own hostname.
    pub fn node_overrides(&self) -> BTreeSet<String> {
        self.names
            .iter()
            .filter_map(|n| n.strip_prefix("nodes/"))
            .filter_map(|n| n.split('/').next())
            .map(str::to_string)
            .collect()
    }
}

/// Every document must be a mapping naming its `apiVersion` and `kind`.
fn check_kubeadm_yaml(text: &str) -> Result<(), String> {
    use serde::Deserialize;
    let mut count = 0;
    for document in serde_yaml::Deserializer::from_str(text) {
        let value = serde_yaml::Value::deserialize(document).map_err(|e| e.to_string())?;
        if value.is_null() {
            continue;
        }
        count += 1;
        for key in ["apiVersion", "kind"] {
            if value.get(key).and_then(|v| v.as_str()).is_none() {
                return Err(format!("document {count} has no {key}"));
            }
        }
    }
    if count == 0 {
        return Err("no document".into());
    }
    Ok(())
}

fn describe(name: &str, dir: Option<&Path>, e: &minijinja::Error) -> String {
    let place = match dir {
        Some(d) => d.join(name).display().to_string(),
        None => name.to_string(),
    };
    let mut text = match e.line() {
        Some(line) => format!("{place}, line {line}: {}", e.kind()),
        None => format!("{place}: {}", e.kind()),
    };
    if let Some(detail) = e.detail() {
        text.push_str(": ");
        text.push_str(detail);
    }
    text
}

/// `*.ign.j2` files at the top of `dir`, under `roles/<role>/` and `nodes/<hostname>/`.
fn operator_files(dir: &Path) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    let mut read_dir = |rel: &str| -> Result<(), String> {
        let path = dir.join(rel);
        let entries = match std::fs::read_dir(&path) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        for entry in entries {
            let entry = entry.map_err(|e| format!("{}: {e}", path.display()))?;
            let file = entry.file_name().to_string_lossy().into_owned();
            if !file.ends_with(".ign.j2") && file != KUBEADM_INIT && file != KUBEADM_JOIN {
                continue;
            }
            let name = if rel.is_empty() {
                file
            } else {
                format!("{rel}/{file}")
            };
            let text = std::fs::read_to_string(entry.path())
                .map_err(|e| format!("{}: {e}", entry.path().display()))?;
            out.push((name, text));
        }
        Ok(())
    };
    read_dir("")?;
    for group in ["roles", "nodes"] {
        let base = dir.join(group);
        let Ok(entries) = std::fs::read_dir(&base) else {
            continue;
        };
        for entry in entries.flatten() {
            if entry.path().is_dir() {
                let sub = entry.file_name().to_string_lossy().into_owned();
                read_dir(&format!("{group}/{sub}"))?;
            }
        }
    }
    Ok(out)
}

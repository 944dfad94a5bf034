//! The add-ons the daemon knows: each a directory of `resources/` (embedded in the binary),
//! a descriptor (`addon.toml`) and its manifests, any file overridable from
//! `[addons] resources_dir`. Rendering turns an add-on into the objects to apply: `.j2` files
//! go through the template engine, plain files are used as vendored, and every object gets the
//! ownership label that pruning relies on.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::{Deserialize, Serialize};

/// The label that marks an object as an add-on's: pruning deletes only objects carrying it.
pub const ADDON_LABEL: &str = "lacave.io/addon";

macro_rules! embedded {
    ($($path:literal),* $(,)?) => {
        &[$(($path, include_str!(concat!("../../../resources/", $path)))),*]
    };
}

/// Every embedded file, `<addon>/<file>` → content. A unit test checks that this list and the
/// descriptors under `resources/` agree.
const FILES: &[(&str, &str)] = embedded![
    "cni/addon.toml",
    "cni/flannel/kube-flannel.yml",
    "cert-manager/addon.toml",
    "cert-manager/cert-manager.yaml",
    "ca-issuer/addon.toml",
    "ca-issuer/issuer.yaml.j2",
    "ingress/addon.toml",
    "ingress/traefik.yaml",
    "dashboard/addon.toml",
    "dashboard/headlamp.yaml",
    "dashboard/admin-user.yaml",
    "dashboard/ingress.yaml.j2",
    "metrics-server/addon.toml",
    "metrics-server/metrics-server.yaml",
    "storage/addon.toml",
    "storage/local-path-storage.yaml",
    "keycloak/addon.toml",
    "keycloak/keycloak.yaml.j2",
    "monitoring/addon.toml",
    "monitoring/setup.yaml",
    "monitoring/prometheus-operator.yaml",
    "monitoring/prometheus.yaml",
    "monitoring/node-exporter.yaml",
    "monitoring/kube-state-metrics.yaml",
    "monitoring/grafana.yaml",
    "monitoring/lacave-scrape.yaml.j2",
    "monitoring/lacave-rules.yaml",
    "monitoring/lacave-dashboards.yaml.j2",
    "monitoring/lacave-daemon.json",
    "monitoring/lacave-cluster.json",
    "tenants/addon.toml",
    "tenants/tenants.yaml.j2",
];

pub use crate::model::ADDON_NAMES as NAMES;

/// An add-on's `addon.toml`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Descriptor {
    pub description: String,
    /// What was vendored, for `lacave addon list`.
    #[serde(default)]
    pub upstream: Option<String>,
    /// Add-ons that must be healthy before this one is applied.
    #[serde(default)]
    pub depends_on: Vec<String>,
    /// The namespace of namespaced objects that name none.
    #[serde(default)]
    pub namespace: Option<String>,
    /// Whether the add-on owns its namespace (created first, deleted with it).
    #[serde(default)]
    pub create_namespace: bool,
    pub manifests: Vec<String>,
    /// Secrets the templates may see: `ca_key` (the lacave CA's private key), `identity`
    /// (Keycloak's administrator and database passwords).
    #[serde(default)]
    pub secrets: Vec<String>,
    /// Conditions that must be True beyond the built-in rules.
    #[serde(default)]
    pub health: Vec<HealthRule>,
    /// Files the templates read with `addon_file` (Grafana's dashboards), not manifests.
    #[serde(default)]
    pub files: Vec<String>,
    /// Literal replacements in vendored files (the right side is a template).
    #[serde(default)]
    pub replace: Vec<Replace>,
    /// `namespace/name` of the ServiceAccount `lacave addon token` mints tokens for.
    #[serde(default)]
    pub token_service_account: Option<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HealthRule {
    pub kind: String,
    pub condition: String,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Replace {
    pub file: String,
    pub from: String,
    pub to: String,
}

/// One add-on: its descriptor and files (embedded or the operator's).
#[derive(Clone, Debug)]
pub struct Addon {
    pub name: String,
    pub descriptor: Descriptor,
    files: BTreeMap<String, String>,
    /// Files taken from `[addons] resources_dir`.
    pub overridden: Vec<String>,
}

/// Every add-on, checked.
#[derive(Clone, Debug)]
pub struct Catalog {
    pub addons: Vec<Addon>,
}

/// What the templates see.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RenderContext {
    pub cluster: ClusterValues,
    pub ca: CaValues,
    pub daemon: DaemonValues,
    /// The add-on's own `[addons.<name>]` values (set per add-on by the caller).
    pub values: serde_json::Map<String, serde_json::Value>,
    pub tenants: Vec<super::settings::Tenant>,
    pub oidc_admin_groups: Vec<String>,
    /// `[cluster] oidc_prefix`: the API server sees every OIDC group with it in front.
    pub oidc_prefix: String,
    pub identity: IdentityValues,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct ClusterValues {
    pub name: String,
    /// `<dns.cluster_name>.<zone>`: the add-ons' host names live under it.
    pub domain: String,
    pub zone: String,
    pub endpoint: String,
    pub kubernetes_version: String,
    pub pod_cidr: String,
    pub service_cidr: String,
}

#[derive(Clone, Default, Serialize)]
pub struct CaValues {
    /// The lacave CA bundle (PEM).
    pub bundle_pem: String,
    /// The signing CA's certificate chain, base64 of PEM.
    pub crt_b64: String,
    /// Its private key, base64 of PEM: empty unless the add-on declares `secrets = ["ca_key"]`.
    pub key_b64: String,
}

impl std::fmt::Debug for CaValues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaValues").finish_non_exhaustive()
    }
}

/// `[identity]`'s secrets, base64: empty unless the add-on declares `secrets = ["identity"]`.
#[derive(Clone, Default, Serialize)]
pub struct IdentityValues {
    pub admin_user_b64: String,
    pub admin_password_b64: String,
    pub db_password_b64: String,
}

impl std::fmt::Debug for IdentityValues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityValues").finish_non_exhaustive()
    }
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct DaemonValues {
    /// `host:port` of the daemon's `/metrics`.
    pub metrics_target: String,
}

/// One object to apply.
#[derive(Clone, Debug)]
pub struct Object {
    pub api_version: String,
    pub kind: String,
    /// `None`: cluster-scoped, or namespaced and defaulted at apply time.
    pub namespace: Option<String>,
    pub name: String,
    /// The whole object, ownership label included.
    pub value: serde_json::Value,
    /// Where it came from, for errors: `<addon>/<file>#<document>`.
    pub origin: String,
}

impl Object {
    pub fn group(&self) -> &str {
        crate::model::api_group(&self.api_version)
    }

    pub fn version(&self) -> &str {
        self.api_version
            .rsplit_once('/')
            .map(|(_, v)| v)
            .unwrap_or(&self.api_version)
    }
}

impl Catalog {
    /// The embedded add-ons, each file replaced by `<dir>/<addon>/<file>` when that exists.
    /// Every problem is reported, naming the file.
    pub fn load(dir: Option<&Path>) -> Result<Catalog, Vec<String>> {
        let mut problems = Vec::new();
        let mut addons = Vec::new();
        for name in NAMES {
            let mut files = BTreeMap::new();
            let mut overridden = Vec::new();
            for (path, content) in FILES {
                let Some(file) = path.strip_prefix(&format!("{name}/")) else {
                    continue;
                };
                let local = dir.map(|d| d.join(name).join(file));
                match local.as_ref().filter(|p| p.exists()) {
                    Some(p) => match std::fs::read_to_string(p) {
                        Ok(text) => {
                            overridden.push(file.to_string());
                            files.insert(file.to_string(), text);
                        }
                        Err(e) => problems.push(format!("{}: {e}", p.display())),
                    },
                    None => {
                        files.insert(file.to_string(), content.to_string());
                    }
                }
            }
            let origin = |f: &str| match overridden.iter().any(|o| o == f) {
                true => format!(
                    "{}",
                    dir.unwrap_or(Path::new("")).join(name).join(f).display()
                ),
                false => format!("resources/{name}/{f}"),
            };
            let descriptor: Descriptor =
                match toml::from_str(files.get("addon.toml").map(String::as_str).unwrap_or("")) {
                    Ok(d) => d,
                    Err(e) => {
                        problems.push(format!("{}: {}", origin("addon.toml"), e.message()));
                        continue;
                    }
                };
            for file in descriptor
                .manifests
                .iter()
                .chain(descriptor.replace.iter().map(|r| &r.file))
                .chain(descriptor.files.iter())
            {
                if !files.contains_key(file) {
                    problems.push(format!(
                        "{}: manifest {file:?} is not a file of the add-on",
                        origin("addon.toml")
                    ));
                }
            }
            for dep in &descriptor.depends_on {
                if !NAMES.contains(&dep.as_str()) || dep == name {
                    problems.push(format!(
                        "{}: depends_on {dep:?} is not another add-on (known: {})",
                        origin("addon.toml"),
                        NAMES.join(", ")
                    ));
                }
            }
            for secret in &descriptor.secrets {
                if secret != "ca_key" && secret != "identity" {
                    problems.push(format!(
                        "{}: secrets: {secret:?} is not one the daemon provides (ca_key, identity)",
                        origin("addon.toml")
                    ));
                }
            }
            if let Some(sa) = &descriptor.token_service_account
                && sa.split_once('/').is_none()
            {
                problems.push(format!(
                    "{}: token_service_account {sa:?} is not namespace/name",
                    origin("addon.toml")
                ));
            }
            addons.push(Addon {
                name: name.to_string(),
                descriptor,
                files,
                overridden,
            });
        }
        let catalog = Catalog { addons };
        if problems.is_empty()
            && let Err(cycle) = catalog.order(NAMES.iter().map(|n| n.to_string()).collect())
        {
            problems.push(cycle);
        }
        if problems.is_empty() {
            Ok(catalog)
        } else {
            Err(problems)
        }
    }

    pub fn get(&self, name: &str) -> Option<&Addon> {
        self.addons.iter().find(|a| a.name == name)
    }

    /// `names` with every add-on after its dependencies (catalog order otherwise).
    pub fn order(&self, names: BTreeSet<String>) -> Result<Vec<String>, String> {
        let mut done: Vec<String> = Vec::new();
        let mut pending: Vec<&Addon> = self
            .addons
            .iter()
            .filter(|a| names.contains(&a.name))
            .collect();
        while !pending.is_empty() {
            let before = pending.len();
            pending.retain(|a| {
                let ready = a
                    .descriptor
                    .depends_on
                    .iter()
                    .all(|d| done.contains(d) || !names.contains(d));
                if ready {
                    done.push(a.name.clone());
                }
                !ready
            });
            if pending.len() == before {
                return Err(format!(
                    "add-on dependencies form a cycle among: {}",
                    pending
                        .iter()
                        .map(|a| a.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
        }
        Ok(done)
    }
}

impl Addon {
    /// The add-on's objects for `ctx`, in file order.
    pub fn render(&self, ctx: &RenderContext) -> Result<Vec<Object>, String> {
        let mut ctx = ctx.clone();
        if !self.descriptor.secrets.iter().any(|s| s == "ca_key") {
            ctx.ca.key_b64.clear();
        }
        if !self.descriptor.secrets.iter().any(|s| s == "identity") {
            ctx.identity = IdentityValues::default();
        }
        let mut env = minijinja::Environment::new();
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
        // `addon_file("x.json")`: another file of this add-on, as text (Grafana dashboards
        // are kept as JSON files and put in a ConfigMap by a template).
        let files = self.files.clone();
        env.add_function(
            "addon_file",
            move |name: String| -> Result<String, minijinja::Error> {
                files.get(&name).cloned().ok_or_else(|| {
                    minijinja::Error::new(
                        minijinja::ErrorKind::InvalidOperation,
                        format!("addon_file: {name:?} is not a file of the add-on"),
                    )
                })
            },
        );
        let mut objects = Vec::new();
        if self.descriptor.create_namespace
            && let Some(ns) = &self.descriptor.namespace
        {
            objects.push(self.object(
                serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
                "addon.toml#namespace".into(),
            )?);
        }
        for file in &self.descriptor.manifests {
            let origin = format!("{}/{file}", self.name);
            let mut text = self.files[file].clone();
            for r in self.descriptor.replace.iter().filter(|r| &r.file == file) {
                let to = env
                    .render_str(&r.to, &ctx)
                    .map_err(|e| format!("{origin}: replace {:?}: {e}", r.from))?;
                if !text.contains(&r.from) {
                    return Err(format!(
                        "{origin}: replace: {:?} is not in the file (did the upstream change?)",
                        r.from
                    ));
                }
                text = text.replace(&r.from, &to);
            }
            if file.ends_with(".j2") {
                text = env
                    .render_str(&text, &ctx)
                    .map_err(|e| format!("{origin}: {e:#}"))?;
            }
            for (i, doc) in serde_yaml::Deserializer::from_str(&text).enumerate() {
                let value = serde_json::Value::deserialize(doc)
                    .map_err(|e| format!("{origin}: document {}: {e}", i + 1))?;
                if value.is_null() {
                    continue;
                }
                // `List`, `RoleBindingList`, …: their items are the objects.
                let is_list = value
                    .get("kind")
                    .and_then(|k| k.as_str())
                    .is_some_and(|k| k.ends_with("List"))
                    && value.get("items").is_some_and(|i| i.is_array());
                if is_list {
                    for item in value["items"].as_array().cloned().unwrap_or_default() {
                        objects.push(self.object(item, format!("{origin}#{}", i + 1))?);
                    }
                } else {
                    objects.push(self.object(value, format!("{origin}#{}", i + 1))?);
                }
            }
        }
        let mut seen = BTreeSet::new();
        for o in &objects {
            let key = (o.group(), &o.kind, &o.namespace, &o.name);
            if !seen.insert(key) {
                return Err(format!(
                    "{}: {} {} appears twice in the add-on",
                    o.origin, o.kind, o.name
                ));
            }
        }
        Ok(objects)
    }

    fn object(&self, mut value: serde_json::Value, origin: String) -> Result<Object, String> {
        let field = |v: &serde_json::Value, path: &[&str]| -> Option<String> {
            let mut v = v;
            for p in path {
                v = v.get(p)?;
            }
            v.as_str().map(str::to_string)
        };
        let api_version = field(&value, &["apiVersion"])
            .ok_or_else(|| format!("{origin}: no apiVersion (not a Kubernetes object)"))?;
        let kind = field(&value, &["kind"]).ok_or_else(|| format!("{origin}: no kind"))?;
        let name = field(&value, &["metadata", "name"])
            .filter(|n| !n.is_empty())
            .ok_or_else(|| format!("{origin}: {kind} has no metadata.name"))?;
        let namespace = field(&value, &["metadata", "namespace"]);
        let metadata = value
            .get_mut("metadata")
            .and_then(|m| m.as_object_mut())
            .ok_or_else(|| format!("{origin}: metadata is not a map"))?;
        let labels = metadata
            .entry("labels")
            .or_insert_with(|| serde_json::json!({}));
        if labels.is_null() {
            *labels = serde_json::json!({});
        }
        labels
            .as_object_mut()
            .ok_or_else(|| format!("{origin}: metadata.labels is not a map"))?
            .insert(ADDON_LABEL.into(), self.name.clone().into());
        Ok(Object {
            api_version,
            kind,
            namespace,
            name,
            value,
            origin,
        })
    }
}

/// Every container image the objects name (pod templates, and the images operators are told
/// to run: a Prometheus's `image`, the operator's config-reloader flag). CRDs are skipped:
/// their schemas describe `image` fields without naming one.
pub fn images(objects: &[Object]) -> BTreeSet<String> {
    fn walk(v: &serde_json::Value, out: &mut BTreeSet<String>) {
        match v {
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    match (k.as_str(), v) {
                        ("image", serde_json::Value::String(s)) if !s.is_empty() => {
                            out.insert(s.clone());
                        }
                        _ => walk(v, out),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|i| walk(i, out)),
            serde_json::Value::String(s) => {
                if let Some(image) = s.strip_prefix("--prometheus-config-reloader=") {
                    out.insert(image.to_string());
                }
                // A manifest inside a ConfigMap (local-path-provisioner's helper pod).
                for line in s.lines() {
                    if let Some(image) = line.trim().strip_prefix("image: ") {
                        out.insert(image.trim().to_string());
                    }
                }
            }
            _ => {}
        }
    }
    let mut out = BTreeSet::new();
    for o in objects
        .iter()
        .filter(|o| o.kind != "CustomResourceDefinition")
    {
        walk(&o.value, &mut out);
    }
    out
}

/// `(add-on, image)` for every image of the embedded add-ons (rendered with placeholder
/// values: no template picks an image from the configuration).
pub fn all_images() -> Result<Vec<(String, String)>, String> {
    let catalog = Catalog::load(None).map_err(|e| e.join("; "))?;
    let mut out = Vec::new();
    for addon in &catalog.addons {
        let objects = addon.render(&RenderContext::default())?;
        for image in images(&objects) {
            out.push((addon.name.clone(), image));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resources() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../resources")
    }

    #[test]
    fn the_embedded_files_are_what_the_descriptors_name() {
        let catalog = Catalog::load(None).unwrap();
        let mut named: BTreeSet<String> = BTreeSet::new();
        for addon in &catalog.addons {
            assert!(
                resources().join(&addon.name).join("addon.toml").exists(),
                "{} has no directory",
                addon.name
            );
            named.insert(format!("{}/addon.toml", addon.name));
            for f in addon
                .descriptor
                .manifests
                .iter()
                .chain(&addon.descriptor.files)
            {
                named.insert(format!("{}/{f}", addon.name));
            }
        }
        let embedded: BTreeSet<String> = FILES.iter().map(|(p, _)| p.to_string()).collect();
        assert_eq!(named, embedded, "FILES and the descriptors disagree");
        for dir in std::fs::read_dir(resources()).unwrap() {
            let dir = dir.unwrap().path();
            if dir.join("addon.toml").exists() {
                let name = dir.file_name().unwrap().to_string_lossy().to_string();
                assert!(
                    NAMES.contains(&name.as_str()),
                    "{name} is not in the catalog"
                );
            }
        }
    }

    #[test]
    fn no_addon_uses_a_tenant_namespace() {
        // Every namespace an add-on puts objects in (or makes) is reserved, so no tenant
        // can be given it ([addons.tenants] refuses the reserved ones).
        let catalog = Catalog::load(None).unwrap();
        let mut ctx = RenderContext::default();
        ctx.cluster.domain = "kube.lacave".into();
        for addon in catalog.addons.iter().filter(|a| a.name != "tenants") {
            let objects = addon.render(&ctx).unwrap();
            let mut used: BTreeSet<String> =
                objects.iter().filter_map(|o| o.namespace.clone()).collect();
            used.extend(
                objects
                    .iter()
                    .filter(|o| o.kind == "Namespace")
                    .map(|o| o.name.clone()),
            );
            used.extend(addon.descriptor.namespace.clone());
            // `default` stays open to tenants (the seed's example tenant); monitoring only
            // puts Prometheus's read-only Role and RoleBinding there.
            used.remove("default");
            for ns in used {
                assert!(
                    crate::model::RESERVED_NAMESPACES.contains(&ns.as_str()),
                    "add-on {} uses namespace {ns}, which is not in model::RESERVED_NAMESPACES",
                    addon.name
                );
            }
        }
    }

    #[test]
    fn every_addon_renders_with_its_label_and_dependencies_first() {
        let catalog = Catalog::load(None).unwrap();
        let mut ctx = RenderContext::default();
        ctx.cluster.domain = "kube.lacave".into();
        ctx.cluster.pod_cidr = "10.32.0.0/16".into();
        ctx.ca.key_b64 = "S0VZ".into();
        ctx.identity.admin_password_b64 = "UFdE".into();
        ctx.tenants = vec![super::super::settings::Tenant {
            namespace: "team-a".into(),
            admin_groups: vec![],
            edit_groups: vec!["team-a".into()],
            view_groups: vec!["auditors".into()],
        }];
        for addon in &catalog.addons {
            let objects = addon.render(&ctx).unwrap();
            assert!(!objects.is_empty(), "{} renders nothing", addon.name);
            for o in &objects {
                assert_eq!(
                    o.value["metadata"]["labels"][ADDON_LABEL],
                    addon.name.as_str()
                );
            }
            let secret_seen = objects.iter().any(|o| o.value.to_string().contains("S0VZ"));
            assert_eq!(
                secret_seen,
                addon.name == "ca-issuer",
                "{}: CA key",
                addon.name
            );
            let password_seen = objects.iter().any(|o| o.value.to_string().contains("UFdE"));
            assert_eq!(
                password_seen,
                addon.name == "keycloak",
                "{}: Keycloak's administrator password",
                addon.name
            );
        }
        let cni = catalog.get("cni").unwrap().render(&ctx).unwrap();
        assert!(
            cni.iter()
                .any(|o| o.value.to_string().contains("10.32.0.0/16"))
        );
        ctx.oidc_prefix = "oidc:".into();
        let tenants = catalog.get("tenants").unwrap().render(&ctx).unwrap();
        let kinds: Vec<&str> = tenants.iter().map(|o| o.kind.as_str()).collect();
        assert_eq!(kinds, vec!["Namespace", "RoleBinding", "RoleBinding"]);
        // Groups as the API server names OIDC groups.
        assert_eq!(tenants[1].value["subjects"][0]["name"], "oidc:team-a");
        let order = catalog
            .order(NAMES.iter().map(|s| s.to_string()).collect())
            .unwrap();
        let at = |n: &str| order.iter().position(|o| o == n).unwrap();
        assert!(at("cert-manager") < at("ca-issuer") && at("ca-issuer") < at("dashboard"));
    }

    #[test]
    fn an_override_replaces_one_file_and_a_broken_one_is_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("tenants")).unwrap();
        std::fs::write(
            dir.path().join("tenants/tenants.yaml.j2"),
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {{ values.ns }}\n",
        )
        .unwrap();
        let catalog = Catalog::load(Some(dir.path())).unwrap();
        let tenants = catalog.get("tenants").unwrap();
        assert_eq!(tenants.overridden, vec!["tenants.yaml.j2"]);
        let mut ctx = RenderContext::default();
        let e = tenants.render(&ctx).unwrap_err();
        assert!(e.starts_with("tenants/tenants.yaml.j2:"), "{e}");
        ctx.values.insert("ns".into(), "x".into());
        assert_eq!(tenants.render(&ctx).unwrap()[0].name, "x");

        std::fs::create_dir_all(dir.path().join("cni")).unwrap();
        std::fs::write(dir.path().join("cni/addon.toml"), "manifests = 3\n").unwrap();
        let e = Catalog::load(Some(dir.path())).unwrap_err();
        assert!(e[0].contains("cni/addon.toml"), "{e:?}");
    }

    /// README's air-gap list is generated from the rendered manifests; this keeps it so.
    #[test]
    fn the_readme_lists_every_image() {
        let readme = std::fs::read_to_string(resources().join("README.md")).unwrap();
        let listed: BTreeSet<String> = readme
            .lines()
            .filter_map(|l| l.strip_prefix("| `")?.split_once("` | `"))
            .map(|(addon, rest)| format!("{addon}\t{}", rest.split('`').next().unwrap_or("")))
            .collect();
        let wanted: BTreeSet<String> = all_images()
            .unwrap()
            .into_iter()
            .map(|(a, i)| format!("{a}\t{i}"))
            .collect();
        assert_eq!(
            listed, wanted,
            "resources/README.md's image table is stale: regenerate it with `lacave addon images`"
        );
    }
}

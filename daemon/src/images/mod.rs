//! Container images for nodes with no route to the internet: a content-addressed store under
//! `<state_dir>/images/` (`blobs/sha256/<hex>`, written only once their digest is checked, and
//! `refs.json`: image name → manifest digest and media type), filled by `lacave mirror images
//! add` from OCI image layouts (a directory or a tar of one: what `skopeo copy oci:…`,
//! `ctr export` and Docker ≥ 25's `docker save` produce), and served read-only over the OCI
//! Distribution API by `api::registry`.
//!
//! Names are kept whole (`registry.k8s.io/pause:3.10`); a pull through a mirror configured in
//! containerd's `hosts.toml` asks for `/v2/pause/manifests/3.10?ns=registry.k8s.io`, which
//! names the same image.

mod import;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use import::escaped;

/// Media types of manifests (single image, and indexes of several platforms).
pub const MANIFEST_TYPES: &[&str] = &[
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{path}: {detail}")]
    Io { path: String, detail: String },
    #[error("{0}")]
    Layout(String),
    #[error("blob {digest}: its content hashes to {found}: the archive is damaged")]
    Digest { digest: String, found: String },
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> ImageError + '_ {
    move |e| ImageError::Io {
        path: path.display().to_string(),
        detail: e.to_string(),
    }
}

/// A manifest the store holds under a name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ref {
    pub digest: String,
    pub media_type: String,
}

#[derive(Default, Serialize, Deserialize)]
struct Refs {
    /// `registry.k8s.io/pause:3.10` → its manifest.
    names: BTreeMap<String, Ref>,
    /// Every manifest digest held (images and the platform manifests of indexes) → media type.
    manifests: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct Descriptor {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
    /// The blob's size in bytes (the OCI specification requires it; checked when given).
    #[serde(default)]
    size: Option<u64>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct Index {
    #[serde(default)]
    manifests: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct Manifest {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Vec<Descriptor>,
    #[serde(default)]
    manifests: Vec<Descriptor>,
}

/// `registry/repo:tag` with the registry and tag filled in as Docker does: `pause:3.10` is
/// `docker.io/library/pause:3.10`, `ghcr.io/x/y` is `ghcr.io/x/y:latest`.
pub fn normalize(name: &str) -> Option<String> {
    // Printable ASCII only: a name is printed, logged and put in URLs.
    if name.is_empty()
        || name.len() > 512
        || name.contains("..")
        || !name.bytes().all(|b| b.is_ascii_graphic())
    {
        return None;
    }
    let (path, tag) = match name.rsplit_once(':') {
        Some((p, t)) if !t.contains('/') => (p, t),
        _ => (name, "latest"),
    };
    let first = path.split('/').next().unwrap_or_default();
    let has_registry =
        path.contains('/') && (first.contains('.') || first.contains(':') || first == "localhost");
    let full = if has_registry {
        path.to_string()
    } else if path.contains('/') {
        format!("docker.io/{path}")
    } else {
        format!("docker.io/library/{path}")
    };
    Some(format!("{full}:{tag}"))
}

/// Whether `m` is a media type (`type/subtype`, each an RFC 6838 restricted name, no
/// parameters): it is sent as a `Content-Type` header, so nothing else may get through.
pub fn valid_media_type(m: &str) -> bool {
    fn name(s: &str) -> bool {
        (1..=127).contains(&s.len())
            && s.as_bytes()[0].is_ascii_alphanumeric()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&^_.+-".contains(&b))
    }
    matches!(m.split_once('/'), Some((t, sub)) if name(t) && name(sub))
}

fn valid_digest(d: &str) -> Option<&str> {
    let hex = d.strip_prefix("sha256:")?;
    (hex.len() == 64
        && hex
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()))
    .then_some(hex)
}

/// What a `/v2/` request names, found in the store.
#[derive(Debug)]
pub struct Found {
    pub path: PathBuf,
    pub digest: String,
    /// Set for a manifest (its media type); `None` for a blob.
    pub media_type: Option<String>,
}

/// Why a `/v2/` request gets no content: the specification's error code and a message.
/// Nothing held under that name is a 404; a `server_fault` (the store's index cannot be
/// read) is a 500.
#[derive(Debug)]
pub struct LookupError {
    pub code: &'static str,
    pub message: String,
    pub server_fault: bool,
}

impl LookupError {
    fn missing(code: &'static str, message: String) -> LookupError {
        LookupError {
            code,
            message,
            server_fault: false,
        }
    }
}

/// The image name a `/v2/<repo>/…` request means: the registry a containerd mirror names in
/// `?ns=`, else the repository as given (docker.io for a bare name).
pub fn full_name(repo: &str, ns: Option<&str>) -> String {
    match ns {
        Some("docker.io") if !repo.contains('/') => format!("docker.io/library/{repo}"),
        Some(registry) => format!("{registry}/{repo}"),
        None => normalize(&format!("{repo}:x"))
            .map(|n| n.trim_end_matches(":x").to_string())
            .unwrap_or_else(|| repo.to_string()),
    }
}

/// The `ns` parameter of a query string.
pub fn ns_of(query: &str) -> Option<String> {
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix("ns="))
        .filter(|v| !v.is_empty() && !v.contains('/'))
        .map(str::to_string)
}

/// The store.
#[derive(Clone, Debug)]
pub struct ImageStore {
    root: PathBuf,
}

/// An image an import added (or found already there).
#[derive(Debug)]
pub struct Imported {
    pub name: String,
    pub digest: String,
    pub blobs_added: usize,
}

impl ImageStore {
    pub fn new(state_dir: &Path) -> ImageStore {
        ImageStore {
            root: state_dir.join("images"),
        }
    }

    fn refs_path(&self) -> PathBuf {
        self.root.join("refs.json")
    }

    /// The index of names. No file yet: nothing held. A file that cannot be read or parsed is
    /// an error, never an empty index: an import would then write one over it and lose every
    /// name it held.
    fn refs(&self) -> Result<Refs, ImageError> {
        let path = self.refs_path();
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Refs::default()),
            Err(e) => return Err(io(&path)(e)),
        };
        serde_json::from_slice(&bytes).map_err(|e| ImageError::Io {
            path: path.display().to_string(),
            detail: format!(
                "the index of image names is damaged ({e}); restore it from a backup, or remove it and add the images again (their blobs stay)"
            ),
        })
    }

    /// The path of a blob the store holds.
    pub fn blob(&self, digest: &str) -> Option<PathBuf> {
        let hex = valid_digest(digest)?;
        let path = self.root.join("blobs/sha256").join(hex);
        path.is_file().then_some(path)
    }

    /// A manifest by name and tag (`registry.k8s.io/pause`, `3.10`) or by digest.
    pub fn manifest(
        &self,
        name: &str,
        reference: &str,
    ) -> Result<Option<(Ref, PathBuf)>, ImageError> {
        let refs = self.refs()?;
        let found = if reference.starts_with("sha256:") {
            refs.manifests.get(reference).map(|media_type| Ref {
                digest: reference.to_string(),
                media_type: media_type.clone(),
            })
        } else {
            refs.names.get(&format!("{name}:{reference}")).cloned()
        };
        Ok(found.and_then(|found| {
            let path = self.blob(&found.digest)?;
            Some((found, path))
        }))
    }

    /// What `/v2/<rest>` names (`<repo>/manifests/<ref>` or `<repo>/blobs/<digest>`).
    pub fn lookup(&self, rest: &str, ns: Option<&str>) -> Result<Found, LookupError> {
        let parts: Vec<&str> = rest.rsplitn(3, '/').collect();
        let [reference, kind @ ("manifests" | "blobs"), repo] = parts[..] else {
            return Err(LookupError::missing(
                "NAME_UNKNOWN",
                format!("/v2/{rest} is not a manifest or blob path"),
            ));
        };
        if repo.is_empty() {
            return Err(LookupError::missing(
                "NAME_INVALID",
                "an empty repository name".into(),
            ));
        }
        let full = full_name(repo, ns);
        if kind == "manifests" {
            let held = self.manifest(&full, reference).map_err(|e| LookupError {
                code: "UNKNOWN",
                message: e.to_string(),
                server_fault: true,
            })?;
            let (r, path) = held.ok_or_else(|| {
                LookupError::missing(
                    "MANIFEST_UNKNOWN",
                    format!("no manifest {full}:{reference} here"),
                )
            })?;
            // It becomes a header: whatever refs.json says (an old import, a hand edit) is
            // checked again on the way out.
            if !valid_media_type(&r.media_type) {
                return Err(LookupError {
                    code: "UNKNOWN",
                    message: format!(
                        "the media type recorded for {} is not one: add the image again",
                        r.digest
                    ),
                    server_fault: true,
                });
            }
            Ok(Found {
                path,
                digest: r.digest,
                media_type: Some(r.media_type),
            })
        } else {
            self.blob(reference)
                .map(|path| Found {
                    path,
                    digest: reference.to_string(),
                    media_type: None,
                })
                .ok_or_else(|| {
                    LookupError::missing("BLOB_UNKNOWN", format!("no blob {reference} here"))
                })
        }
    }

    /// Every name held, with its manifest and the size of everything it references.
    pub fn list(&self) -> Result<Vec<(String, Ref)>, ImageError> {
        Ok(self.refs()?.names.into_iter().collect())
    }

    /// Files root wrote (the CLI) become the state directory owner's (the daemon's user).
    fn give_to_daemon(&self) -> Result<(), ImageError> {
        let Some(state) = self.root.parent() else {
            return Ok(());
        };
        let mut paths = vec![
            self.root.clone(),
            self.root.join("blobs"),
            self.root.join("blobs/sha256"),
            self.refs_path(),
        ];
        if let Ok(entries) = std::fs::read_dir(self.root.join("blobs/sha256")) {
            paths.extend(entries.flatten().map(|e| e.path()));
        }
        let refs: Vec<&Path> = paths.iter().map(PathBuf::as_path).collect();
        crate::secrets::match_owner(state, &refs).map_err(|e| ImageError::Layout(e.to_string()))
    }
}

fn sha256_of(path: &Path) -> std::io::Result<String> {
    crate::secrets::file_digest::<sha2::Sha256>(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_media_types_pass_as_media_types() {
        for good in MANIFEST_TYPES {
            assert!(valid_media_type(good), "{good}");
        }
        assert!(valid_media_type(
            "application/vnd.oci.image.layer.v1.tar+gzip"
        ));
        for bad in [
            "",
            "application",
            "application/",
            "/json",
            "text/html\r\nSet-Cookie: a=b",
            "text/html; charset=utf-8",
            "a/b/c",
            "t\u{e9}xt/html",
        ] {
            assert!(!valid_media_type(bad), "{bad:?}");
        }
        assert_eq!(normalize("evil\u{1b}[31m/x:1"), None);
        assert_eq!(normalize(&"a".repeat(600)), None);
    }

    #[test]
    fn names_are_normalized_as_docker_does() {
        for (given, want) in [
            ("pause:3.10", "docker.io/library/pause:3.10"),
            ("registry.k8s.io/pause:3.10", "registry.k8s.io/pause:3.10"),
            ("ghcr.io/x/y", "ghcr.io/x/y:latest"),
            ("grafana/grafana:11", "docker.io/grafana/grafana:11"),
            ("localhost:5000/a:b", "localhost:5000/a:b"),
        ] {
            assert_eq!(normalize(given).as_deref(), Some(want), "{given}");
        }
        assert_eq!(normalize("a b"), None);
        assert_eq!(normalize("../x"), None);
    }

    #[test]
    fn a_damaged_index_of_names_is_an_error_and_is_never_written_over() {
        let state = tempfile::tempdir().unwrap();
        let store = ImageStore::new(state.path());
        // No index yet: nothing held, no error.
        assert!(store.list().unwrap().is_empty());
        let miss = store
            .lookup("library/pause/manifests/3.10", None)
            .unwrap_err();
        assert_eq!((miss.code, miss.server_fault), ("MANIFEST_UNKNOWN", false));

        std::fs::create_dir_all(state.path().join("images")).unwrap();
        let damaged = br#"{"names": {"docker.io/library/pause:3.10": {"digest": "sha256:ab"#;
        std::fs::write(store.refs_path(), damaged).unwrap();
        let fault = store
            .lookup("library/pause/manifests/3.10", None)
            .unwrap_err();
        assert!(fault.server_fault, "{fault:?}");
        assert!(
            fault.message.contains("refs.json") && fault.message.contains("damaged"),
            "{}",
            fault.message
        );
        let listed = store.list().unwrap_err().to_string();
        assert!(listed.contains("refs.json"), "{listed}");

        // An import refuses rather than starting from an empty index.
        let layout = tempfile::tempdir().unwrap();
        std::fs::write(
            layout.path().join("index.json"),
            r#"{"manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "sha256:0000000000000000000000000000000000000000000000000000000000000000", "annotations": {"io.containerd.image.name": "docker.io/library/busybox:1"}}]}"#,
        )
        .unwrap();
        let refused = store.import(layout.path(), None).unwrap_err().to_string();
        assert!(refused.contains("damaged"), "{refused}");
        assert_eq!(std::fs::read(store.refs_path()).unwrap(), damaged);
    }
}

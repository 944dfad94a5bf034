//! A consistent copy of the registry taken while the daemon runs (`lacave backup`, through the
//! API), and its restoration into a stopped daemon's state directory (`lacave restore`).
//!
//! The copy holds every tree but the indexes (`by_mac`, `by_hostname`, `by_ip`), which restore
//! rebuilds from the node records, checking each. Node changes (every one goes through one
//! transaction) and the DHCP loop's flushes are held while nodes, events and leases are read,
//! so those three agree; the other trees hold self-contained records. A SHA-256 over the
//! content makes a truncated or edited file fail restore with a clear error.
//!
//! Format (JSON): `{"format": "lacave-registry-backup", "version": 1, "schema_version", "created_at",
//! "trees": {name: [[key_b64, value_b64], …]}, "sha256": hex over the canonical `trees` JSON}`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine;
use serde::{Deserialize, Serialize};
use sha2::Digest;

use super::{INITIALIZED_MARKER, SCHEMA_VERSION, Store, StoreError, schema, write_marker};

const FORMAT: &str = "lacave-registry-backup";
const VERSION: u32 = 1;
/// Trees copied as they are; the index trees are rebuilt.
const TREES: &[&str] = &[
    "meta",
    "nodes",
    "events",
    "leases",
    "certificates",
    "dns_records",
    "cluster",
];

type Entries = Vec<(String, String)>;
/// A tree's decoded keys and values.
type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

#[derive(Serialize, Deserialize)]
struct BackupFile {
    format: String,
    version: u32,
    schema_version: u32,
    created_at: String,
    trees: BTreeMap<String, Entries>,
    sha256: String,
}

fn digest(trees: &BTreeMap<String, Entries>) -> String {
    let canonical = serde_json::to_vec(trees).expect("a map of strings serialises");
    sha2::Sha256::digest(&canonical)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// What a restore put back.
#[derive(Debug)]
pub struct Restored {
    pub nodes: usize,
    pub events: usize,
    pub created_at: String,
    /// Where the registry that was replaced now is (kept, never deleted).
    pub previous: Option<PathBuf>,
}

fn bad(detail: impl Into<String>) -> StoreError {
    StoreError::Corrupt(format!("not a usable backup: {}", detail.into()))
}

impl Store {
    /// The whole registry as a backup file's bytes.
    pub fn backup(&self) -> Result<Vec<u8>, StoreError> {
        let b64 = base64::engine::general_purpose::STANDARD;
        let read = |tree: &sled::Tree| -> Result<Entries, StoreError> {
            tree.iter()
                .map(|kv| {
                    let (k, v) = kv?;
                    Ok((b64.encode(k), b64.encode(v)))
                })
                .collect()
        };
        let mut trees = BTreeMap::new();
        {
            // No node transaction or DHCP flush runs while these three are read.
            let _quiet = self.snapshot.write().unwrap_or_else(|e| e.into_inner());
            trees.insert("nodes".to_string(), read(&self.nodes)?);
            trees.insert("events".to_string(), read(&self.events)?);
            trees.insert("leases".to_string(), read(&self.leases)?);
        }
        trees.insert("meta".to_string(), read(&self.meta)?);
        trees.insert("certificates".to_string(), read(&self.certificates)?);
        trees.insert("dns_records".to_string(), read(&self.dns_records)?);
        trees.insert("cluster".to_string(), read(&self.cluster)?);
        let file = BackupFile {
            format: FORMAT.into(),
            version: VERSION,
            schema_version: SCHEMA_VERSION,
            created_at: super::now()
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
            sha256: digest(&trees),
            trees,
        };
        Ok(serde_json::to_vec(&file).expect("a backup serialises"))
    }

    /// Restores `bytes` (a backup) as the registry in `dir`, which no daemon may be using. The
    /// backup is checked whole first (format, checksum, every node record, unique MACs,
    /// hostnames and addresses); it is then written into a new directory beside `dir`, and
    /// only once that is complete and flushed is the current registry moved aside
    /// (`<dir>.replaced-<unix time>`, kept) and the new one renamed into place.
    pub fn restore(dir: &Path, bytes: &[u8]) -> Result<Restored, StoreError> {
        let file: BackupFile = serde_json::from_slice(bytes)
            .map_err(|e| bad(format!("it does not read as a backup ({e}); truncated?")))?;
        if file.format != FORMAT || file.version != VERSION {
            return Err(bad(format!(
                "format {:?} version {}, expected {FORMAT:?} version {VERSION}",
                file.format, file.version
            )));
        }
        if file.schema_version > SCHEMA_VERSION {
            return Err(StoreError::SchemaTooNew {
                found: file.schema_version,
                supported: SCHEMA_VERSION,
            });
        }
        if digest(&file.trees) != file.sha256 {
            return Err(bad(
                "its checksum does not match its content (damaged or edited)",
            ));
        }
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut decoded: BTreeMap<&str, Pairs> = BTreeMap::new();
        for (name, entries) in &file.trees {
            let Some(name) = TREES.iter().find(|t| **t == name.as_str()) else {
                return Err(bad(format!("unknown tree {name:?}")));
            };
            let mut kvs = Vec::with_capacity(entries.len());
            for (k, v) in entries {
                let k = b64.decode(k).map_err(|e| bad(format!("{name}: {e}")))?;
                let v = b64.decode(v).map_err(|e| bad(format!("{name}: {e}")))?;
                kvs.push((k, v));
            }
            decoded.insert(name, kvs);
        }
        // Every node decodes, and its unique fields are unique.
        let mut indexes: Vec<(&str, Vec<u8>, Vec<u8>)> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let nodes = decoded.get("nodes").map_or(&[][..], |v| v.as_slice());
        for (id, value) in nodes {
            let node = schema::decode_node(value)?;
            let mut index = |tree: &'static str, key: Vec<u8>, what: String| {
                if !seen.insert((tree, key.clone())) {
                    return Err(bad(format!("{what} appears on two nodes")));
                }
                indexes.push((tree, key, id.clone()));
                Ok(())
            };
            index(
                "by_mac",
                node.mac.octets().to_vec(),
                format!("MAC {}", node.mac),
            )?;
            if let Some(h) = &node.hostname {
                index(
                    "by_hostname",
                    h.as_str().as_bytes().to_vec(),
                    format!("hostname {h}"),
                )?;
            }
            if let Some(ip) = node.ip {
                index(
                    "by_ip",
                    ip.addr().octets().to_vec(),
                    format!("address {}", ip.addr()),
                )?;
            }
        }

        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "registry".into());
        let staging = dir.with_file_name(format!("{name}.restoring"));
        if staging.exists() {
            std::fs::remove_dir_all(&staging).map_err(sled::Error::Io)?;
        }
        {
            let db = sled::Config::new().path(&staging).open()?;
            for (tree, kvs) in &decoded {
                let t = db.open_tree(tree)?;
                for (k, v) in kvs {
                    t.insert(k.as_slice(), v.as_slice())?;
                }
            }
            for (tree, k, id) in &indexes {
                db.open_tree(tree)?.insert(k.as_slice(), id.as_slice())?;
            }
            db.flush()?;
        }
        write_marker(&staging.join(INITIALIZED_MARKER))?;
        // Checked by opening it as the daemon would.
        drop(Store::open(&staging)?);

        let previous = if dir.exists() {
            let stamp = super::now().unix_timestamp();
            let aside = dir.with_file_name(format!("{name}.replaced-{stamp}"));
            std::fs::rename(dir, &aside).map_err(sled::Error::Io)?;
            Some(aside)
        } else {
            None
        };
        std::fs::rename(&staging, dir).map_err(sled::Error::Io)?;
        if let Some(parent) = dir.parent() {
            std::fs::File::open(parent)
                .and_then(|d| d.sync_all())
                .map_err(sled::Error::Io)?;
        }
        Ok(Restored {
            nodes: nodes.len(),
            events: decoded.get("events").map_or(0, Vec::len),
            created_at: file.created_at,
            previous,
        })
    }
}

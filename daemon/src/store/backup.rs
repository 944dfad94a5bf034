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
use serde::Serialize;
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

/// Written field by field in this order: the header comes before the trees, so a restore can
/// check it before reading them.
#[derive(Serialize)]
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

    /// Restores `bytes` (a backup) as the registry in `dir`: [`Store::restore_from`].
    pub fn restore(dir: &Path, bytes: &[u8]) -> Result<Restored, StoreError> {
        Self::restore_from(dir, bytes)
    }

    /// Restores a backup read from `reader` as the registry in `dir`, which no daemon may be
    /// using. The file is streamed: each record is checked as it is read (as the API checks
    /// what it stores: every node, event, lease, certificate, DNS record and cluster record
    /// decodes, labels and strings are ones the API would accept, keys have their shape) and
    /// written into a new registry beside `dir` (`<dir>.restoring`), with the unique fields'
    /// indexes, so memory stays bounded whatever the file's size. Then the checksum, the
    /// header and every event's node are checked, the new registry is opened as the daemon
    /// would, and only then is the current registry moved aside (`<dir>.replaced-<unix
    /// time>`, kept) and the new one renamed into place. Any failure removes the new
    /// directory; nothing here panics on any input.
    pub fn restore_from(dir: &Path, reader: impl std::io::Read) -> Result<Restored, StoreError> {
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "registry".into());
        let staging = Staging(dir.with_file_name(format!("{name}.restoring")));
        if staging.0.exists() {
            std::fs::remove_dir_all(&staging.0).map_err(sled::Error::Io)?;
        }
        let (header, counts) = {
            let mut loader = Loader::new(&staging.0)?;
            let mut de = serde_json::Deserializer::from_reader(std::io::BufReader::new(reader));
            serde::de::DeserializeSeed::deserialize(TopSeed(&mut loader), &mut de)
                .and_then(|()| de.end())
                .map_err(|e| match loader.failure.take() {
                    Some(store_error) => store_error,
                    None => bad(format!("it does not read as a backup ({e}); truncated?")),
                })?;
            let header = loader.finish()?;
            if let Some(db) = &loader.db {
                db.flush()?;
            }
            (header, loader.counts)
        };
        write_marker(&staging.0.join(INITIALIZED_MARKER))?;
        // Checked by opening it as the daemon would.
        drop(Store::open(&staging.0)?);

        let previous = if dir.exists() {
            let stamp = super::now().unix_timestamp();
            let aside = dir.with_file_name(format!("{name}.replaced-{stamp}"));
            std::fs::rename(dir, &aside).map_err(sled::Error::Io)?;
            Some(aside)
        } else {
            None
        };
        std::fs::rename(&staging.0, dir).map_err(sled::Error::Io)?;
        std::mem::forget(staging);
        if let Some(parent) = dir.parent() {
            std::fs::File::open(parent)
                .and_then(|d| d.sync_all())
                .map_err(sled::Error::Io)?;
        }
        Ok(Restored {
            nodes: counts.get("nodes").copied().unwrap_or(0),
            events: counts.get("events").copied().unwrap_or(0),
            created_at: header,
            previous,
        })
    }
}

/// The new registry being written; removed unless it was renamed into place.
struct Staging(PathBuf);

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A record larger than this is refused (the largest real ones, add-on inventories, are a
/// few hundred kilobytes).
const MAX_RECORD: usize = 16 << 20;
/// The new registry is flushed and reopened after this many bytes of records.
const REOPEN_EVERY: usize = 16 << 20;
/// Free text the daemon stores (failure reasons, event messages: command output tails).
const MAX_TEXT: usize = 1 << 20;

/// Feeds the canonical JSON of `trees` to the checksum as the file is read.
struct HashWriter<'a>(&'a mut sha2::Sha256);

impl std::io::Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// What the streamed restore has read so far.
struct Loader {
    path: PathBuf,
    /// The new registry (`None` only while it is reopened).
    db: Option<sled::Db>,
    trees: BTreeMap<&'static str, sled::Tree>,
    hasher: sha2::Sha256,
    counts: BTreeMap<&'static str, usize>,
    format: Option<String>,
    version: Option<u32>,
    schema_version: Option<u32>,
    created_at: Option<String>,
    sha256: Option<String>,
    trees_read: bool,
    /// Bytes written to the new registry since its last flush.
    unflushed: usize,
    last_tree: Option<&'static str>,
    /// The first error that is ours (not the JSON's), returned as it is.
    failure: Option<StoreError>,
}

fn open_staging(path: &Path) -> Result<(sled::Db, BTreeMap<&'static str, sled::Tree>), StoreError> {
    let db = sled::Config::new()
        .path(path)
        .cache_capacity(4 << 20)
        .open()?;
    let mut trees = BTreeMap::new();
    for name in TREES.iter().chain(&["by_mac", "by_hostname", "by_ip"]) {
        trees.insert(*name, db.open_tree(name)?);
    }
    Ok((db, trees))
}

impl Loader {
    fn new(path: &Path) -> Result<Loader, StoreError> {
        let (db, trees) = open_staging(path)?;
        Ok(Loader {
            path: path.to_path_buf(),
            db: Some(db),
            trees,
            hasher: sha2::Sha256::new(),
            counts: BTreeMap::new(),
            format: None,
            version: None,
            schema_version: None,
            created_at: None,
            sha256: None,
            trees_read: false,
            unflushed: 0,
            last_tree: None,
            failure: None,
        })
    }

    fn hash(&mut self, value: &impl Serialize) {
        serde_json::to_writer(HashWriter(&mut self.hasher), value)
            .expect("strings always serialise");
    }

    fn hash_raw(&mut self, bytes: &[u8]) {
        self.hasher.update(bytes);
    }

    /// The header: this format and version, a schema this daemon reads.
    fn check_header(&self) -> Result<(), StoreError> {
        match (&self.format, self.version, self.schema_version) {
            (Some(f), Some(v), Some(schema)) if f == FORMAT && v == VERSION => {
                if schema > SCHEMA_VERSION {
                    Err(StoreError::SchemaTooNew {
                        found: schema,
                        supported: SCHEMA_VERSION,
                    })
                } else {
                    Ok(())
                }
            }
            (Some(f), Some(v), Some(_)) => Err(bad(format!(
                "format {:?} version {v}, expected {FORMAT:?} version {VERSION}",
                f.escape_debug().to_string()
            ))),
            _ => Err(bad(
                "its header (format, version, schema_version) is missing",
            )),
        }
    }

    fn tree(&self, name: &str) -> &sled::Tree {
        &self.trees[name]
    }

    /// Checks one record as the API would have checked it, and writes it.
    fn record(&mut self, tree: &'static str, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        if value.len() > MAX_RECORD || key.len() > 4096 {
            return Err(bad(format!(
                "{tree}: a record larger than {MAX_RECORD} bytes"
            )));
        }
        match tree {
            "nodes" => {
                let id = <[u8; 8]>::try_from(key)
                    .map_err(|_| bad(format!("nodes: a key of {} bytes, not 8", key.len())))?;
                let node = schema::decode_node(value)
                    .map_err(|e| bad(format!("node {}: {e}", super::decode_id(&id))))?;
                check_node(&node).map_err(|e| bad(format!("node {}: {e}", node.mac)))?;
                let unique = |index: &str, k: Vec<u8>, what: String| match self
                    .tree(index)
                    .insert(k, &id[..])
                {
                    Ok(None) => Ok(()),
                    Ok(Some(_)) => Err(bad(format!("{what} appears on two nodes"))),
                    Err(e) => Err(e.into()),
                };
                unique(
                    "by_mac",
                    node.mac.octets().to_vec(),
                    format!("MAC {}", node.mac),
                )?;
                if let Some(h) = &node.hostname {
                    unique(
                        "by_hostname",
                        h.as_str().as_bytes().to_vec(),
                        format!("hostname {h}"),
                    )?;
                }
                if let Some(ip) = node.ip {
                    unique(
                        "by_ip",
                        ip.addr().octets().to_vec(),
                        format!("address {}", ip.addr()),
                    )?;
                }
            }
            "events" => {
                if key.len() != 16 {
                    return Err(bad(format!("events: a key of {} bytes, not 16", key.len())));
                }
                let event = schema::decode_event(value).map_err(|e| bad(format!("{e}")))?;
                let seq = super::decode_id(&key[8..]);
                if event.seq != seq {
                    return Err(bad(format!(
                        "event {seq}: its record says it is event {}",
                        event.seq
                    )));
                }
                if !text_ok(&event.message, MAX_TEXT) {
                    return Err(bad(format!(
                        "event {seq}: its message has control characters or is over {MAX_TEXT} bytes"
                    )));
                }
            }
            "leases" => {
                if key.len() != 4 || value.len() != 14 {
                    return Err(bad(
                        "leases: a record that is not an address, a MAC and an expiry",
                    ));
                }
            }
            "certificates" => {
                let serial = std::str::from_utf8(key).unwrap_or_default();
                if serial.is_empty()
                    || !serial
                        .bytes()
                        .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
                {
                    return Err(bad(
                        "certificates: a key that is not a lower-case hex serial",
                    ));
                }
                schema::decode_certificate(value).map_err(|e| bad(e.to_string()))?;
            }
            "dns_records" => {
                if key.len() != 8 {
                    return Err(bad(format!(
                        "dns_records: a key of {} bytes, not 8",
                        key.len()
                    )));
                }
                schema::decode_dns_record(value).map_err(|e| bad(e.to_string()))?;
            }
            "cluster" => check_cluster_record(key, value)?,
            "meta" => match (key, value.len()) {
                (b"schema_version", 4)
                | (b"dns_serial", 12)
                | (b"sessions_token", 32)
                | (b"flush_mark", 8) => {}
                (b"probe", n) if n <= 64 => {}
                _ => {
                    return Err(bad(format!(
                        "meta: an unknown or malformed record {}",
                        String::from_utf8_lossy(key).escape_debug()
                    )));
                }
            },
            _ => unreachable!("only TREES are read"),
        }
        self.tree(tree).insert(key, value)?;
        *self.counts.entry(tree).or_default() += 1;
        // sled keeps much of what it wrote in memory until it is closed (its cache bound
        // notwithstanding: a 400 MB restore reached 380 MB of RSS): flush and reopen the new
        // registry as the file streams in (100 MB for the same file).
        self.unflushed += key.len() + value.len();
        if self.unflushed > REOPEN_EVERY {
            if let Some(db) = &self.db {
                db.flush()?;
            }
            self.unflushed = 0;
            self.trees.clear();
            self.db = None;
            let (db, trees) = open_staging(&self.path)?;
            self.db = Some(db);
            self.trees = trees;
        }
        Ok(())
    }

    /// After the whole file: its checksum, and every event's node.
    fn finish(&mut self) -> Result<String, StoreError> {
        if !self.trees_read {
            return Err(bad("it has no trees"));
        }
        self.check_header()?;
        let found: String = std::mem::take(&mut self.hasher)
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        if self.sha256.as_deref() != Some(found.as_str()) {
            return Err(bad(
                "its checksum does not match its content (damaged or edited)",
            ));
        }
        if !self.tree("meta").contains_key("schema_version")? {
            return Err(bad("it holds no schema version: not a whole registry"));
        }
        // Every event's node: one look-up per node the events name (events are keyed by
        // node id first: jump from one node's events to the next's, reading nothing between).
        let (events, nodes) = (self.tree("events"), self.tree("nodes"));
        let mut from = [0u8; 8];
        while let Some(entry) = events.range(from..).next() {
            let (key, _) = entry?;
            let id = <[u8; 8]>::try_from(&key[..8]).expect("events keys are 16 bytes");
            if !nodes.contains_key(id)? {
                return Err(bad(format!(
                    "event {} belongs to node {}, which the backup does not hold",
                    super::decode_id(&key[8..]),
                    super::decode_id(&id)
                )));
            }
            match u64::from_be_bytes(id).checked_add(1) {
                Some(next) => from = next.to_be_bytes(),
                None => break,
            }
        }
        Ok(self.created_at.clone().unwrap_or_default())
    }
}

/// Text the daemon could have stored: at most `max` bytes, no control characters but
/// newlines and tabs.
fn text_ok(s: &str, max: usize) -> bool {
    s.len() <= max && !s.chars().any(|c| c.is_control() && c != '\n' && c != '\t')
}

/// A node record's fields the model's types do not check on decoding.
fn check_node(node: &crate::model::Node) -> Result<(), String> {
    crate::model::validate_labels(&node.labels).map_err(|e| e.to_string())?;
    if let Some(f) = &node.failure
        && !(text_ok(&f.phase, 64) && text_ok(&f.reason, MAX_TEXT))
    {
        return Err("its failure has control characters or is too long".into());
    }
    let line = |s: &Option<String>, max: usize| {
        s.as_deref()
            .is_none_or(|s| s.len() <= max && s.bytes().all(|b| b.is_ascii_graphic() || b == b' '))
    };
    if !line(&node.callback_secret, 256) {
        return Err("its callback secret is not printable ASCII of at most 256 bytes".into());
    }
    if !line(&node.ssh_host_key, 16 << 10) {
        return Err("its SSH host key is not one line of printable ASCII".into());
    }
    if !line(
        &node.last_seen.as_ref().and_then(|s| s.vendor_class.clone()),
        255,
    ) {
        return Err("its vendor class is not printable ASCII of at most 255 bytes".into());
    }
    Ok(())
}

/// A record of the `cluster` tree by its key's prefix.
fn check_cluster_record(key: &[u8], value: &[u8]) -> Result<(), StoreError> {
    let key = std::str::from_utf8(key).map_err(|_| bad("cluster: a key that is not UTF-8"))?;
    let json = |what: &str| {
        serde_json::from_slice::<serde_json::Value>(value)
            .map(|_| ())
            .map_err(|e| bad(format!("cluster {what}: {e}")))
    };
    if key == "state" {
        return json("state");
    }
    if let Some(host) = key.strip_prefix("token/") {
        if host.parse::<crate::model::Hostname>().is_err()
            || !value.iter().all(u8::is_ascii_alphanumeric)
            || value.len() > 64
        {
            return Err(bad(
                "cluster: a join token record that is not a hostname and a token id",
            ));
        }
        return Ok(());
    }
    if let Some(name) = key.strip_prefix("addon/") {
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(bad(
                "cluster: an add-on inventory under a name that is not one",
            ));
        }
        return json("add-on inventory");
    }
    if let Some(serial) = key.strip_prefix("kubeconfig/") {
        if serial.is_empty() || !serial.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad(
                "cluster: a kubeconfig record under a serial that is not hex",
            ));
        }
        return json("kubeconfig record");
    }
    Err(bad(format!(
        "cluster: an unknown record {}",
        key.escape_debug()
    )))
}

struct TopSeed<'l>(&'l mut Loader);

impl<'de> serde::de::DeserializeSeed<'de> for TopSeed<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> serde::de::Visitor<'de> for TopSeed<'_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a lacave registry backup")
    }
    fn visit_map<M: serde::de::MapAccess<'de>>(self, mut map: M) -> Result<(), M::Error> {
        use serde::de::Error;
        let l = self.0;
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "format" => l.format = Some(map.next_value()?),
                "version" => l.version = Some(map.next_value()?),
                "schema_version" => l.schema_version = Some(map.next_value()?),
                "created_at" => {
                    let at: String = map.next_value()?;
                    l.created_at = Some(at.escape_debug().to_string());
                }
                "sha256" => l.sha256 = Some(map.next_value()?),
                "trees" if !l.trees_read => {
                    // `backup` writes the header first: then a file of another format or a
                    // newer schema is refused before its trees are read. (A file rewritten by
                    // a JSON tool may have it after them: checked at the end then.)
                    let header_first = l.format.is_some() && l.version.is_some();
                    if let Err(e) = l
                        .check_header()
                        .or_else(|e| if header_first { Err(e) } else { Ok(()) })
                    {
                        let message = e.to_string();
                        l.failure = Some(e);
                        return Err(M::Error::custom(message));
                    }
                    l.hash_raw(b"{");
                    map.next_value_seed(TreesSeed(&mut *l))?;
                    l.hash_raw(b"}");
                    l.trees_read = true;
                }
                other => {
                    let e = bad(format!(
                        "an unknown or repeated field {:?}",
                        other.escape_debug().to_string()
                    ));
                    let message = e.to_string();
                    l.failure = Some(e);
                    return Err(M::Error::custom(message));
                }
            }
        }
        Ok(())
    }
}

struct TreesSeed<'l>(&'l mut Loader);

impl<'de> serde::de::DeserializeSeed<'de> for TreesSeed<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> serde::de::Visitor<'de> for TreesSeed<'_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("the registry's trees")
    }
    fn visit_map<M: serde::de::MapAccess<'de>>(self, mut map: M) -> Result<(), M::Error> {
        use serde::de::Error;
        let l = self.0;
        while let Some(name) = map.next_key::<String>()? {
            // In the order `backup` writes them (a BTreeMap's): anything else was edited.
            let known = TREES.iter().find(|t| **t == name.as_str());
            let Some(tree) = known.filter(|t| l.last_tree.is_none_or(|last| last < **t)) else {
                let e = bad(format!(
                    "an unknown, repeated or misplaced tree {:?}",
                    name.escape_debug().to_string()
                ));
                let message = e.to_string();
                l.failure = Some(e);
                return Err(M::Error::custom(message));
            };
            if l.last_tree.is_some() {
                l.hash_raw(b",");
            }
            l.last_tree = Some(tree);
            l.hash(&tree);
            l.hash_raw(b":[");
            map.next_value_seed(EntriesSeed {
                loader: &mut *l,
                tree,
            })?;
            l.hash_raw(b"]");
        }
        Ok(())
    }
}

struct EntriesSeed<'l> {
    loader: &'l mut Loader,
    tree: &'static str,
}

impl<'de> serde::de::DeserializeSeed<'de> for EntriesSeed<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> serde::de::Visitor<'de> for EntriesSeed<'_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a tree's records")
    }
    fn visit_seq<S: serde::de::SeqAccess<'de>>(self, mut seq: S) -> Result<(), S::Error> {
        use serde::de::Error;
        let (l, tree) = (self.loader, self.tree);
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut first = true;
        while let Some((k, v)) = seq.next_element::<(String, String)>()? {
            if !first {
                l.hash_raw(b",");
            }
            first = false;
            l.hash(&(&k, &v));
            let decoded = b64
                .decode(&k)
                .and_then(|k| Ok((k, b64.decode(&v)?)))
                .map_err(|e| bad(format!("{tree}: a record that is not base64 ({e})")));
            let result = decoded.and_then(|(k, v)| l.record(tree, &k, &v));
            if let Err(e) = result {
                let message = e.to_string();
                l.failure = Some(e);
                return Err(S::Error::custom(message));
            }
        }
        Ok(())
    }
}

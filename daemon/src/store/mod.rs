//! The node registry on disk. This is the only module that imports `sled`.
//!
//! # Layout (schema version 1)
//!
//! | tree          | key                                  | value                         |
//! |---------------|--------------------------------------|-------------------------------|
//! | `meta`        | `schema_version`                     | u32, big-endian               |
//! | (a file)      | `lacave-initialized`, beside sled's  | empty: the registry was set up |
//! | `nodes`       | node id (u64 BE)                     | `NodeRecord` JSON             |
//! | `by_mac`      | 6 MAC octets                         | node id (u64 BE)              |
//! | `by_hostname` | lower-case hostname bytes            | node id (u64 BE)              |
//! | `by_ip`       | 4 IPv4 octets                        | node id (u64 BE)              |
//! | `events`      | node id (u64 BE) ++ seq (u64 BE)     | `EventRecord` JSON            |
//! | `certificates`| serial, lower-case hex               | `CertificateRecordV1` JSON    |
//! | `dns_records` | record id (u64 BE)                   | `DnsRecordV1` JSON            |
//! | `leases`      | 4 IPv4 octets                        | MAC (6) ++ expiry (u64 BE, unix s) |
//! | `meta`        | `dns_serial`                         | serial (u32 BE) ++ digest (u64 BE) |
//! | `cluster`     | `state`                              | `ClusterStateV1` JSON         |
//! | `cluster`     | `token/` ++ hostname                 | bootstrap token id (UTF-8)    |
//! | `cluster`     | `addon/` ++ add-on name              | `AddonInventory` JSON         |
//! | `cluster`     | `kubeconfig/` ++ serial (hex)        | `KubeconfigRecord` JSON       |
//! | `cluster`     | `reboots`                            | the coordinated reboots' record (JSON) |
//! | `sessions`    | SHA-256 of a console session secret  | expiry (i64 BE, unix s) ++ CSRF token |
//! | `meta`        | `sessions_token`                     | SHA-256 of the API token the sessions belong to |
//! | `updates`     | node id (u64 BE)                     | `NodeUpdateV1` JSON: its Flatcar update |
//!
//! The schema version is checked (and migrations would run) in [`Store::open`]; the on-disk
//! shapes of every value are in `schema.rs`, versioned apart from the domain types.
//!
//! # Files, one per aggregate
//!
//! | file              | owns                                                              |
//! |-------------------|-------------------------------------------------------------------|
//! | `mod.rs`          | opening, the schema version, [`StoreError`], the [`Store`] handle  |
//! | `nodes.rs`        | `nodes`, `by_mac`, `by_hostname`, `by_ip`: node transactions       |
//! | `events.rs`       | `events`: each node's history                                     |
//! | `leases.rs`       | `leases` and their in-memory view                                 |
//! | `records.rs`      | `dns_records` and `meta/dns_serial`                               |
//! | `certificates.rs` | `certificates`                                                    |
//! | `cluster.rs`      | `cluster`: who initialized it, join tokens, add-on inventories    |
//! | `sessions.rs`     | `sessions`: the web console's logins                              |
//! | `updates.rs`      | `updates`: each node's Flatcar update as it reported it           |
//! | `feed.rs`         | the live feed: committed events released in sequence order (memory) |
//! | `staging.rs`      | the DHCP loop's staged writes and [`Store::flush`]                |
//! | `schema.rs`       | the JSON shapes stored in the trees above                         |
//! | `view.rs`         | the in-memory read model of nodes                                 |
//!
//! Node ids and event sequence numbers come from sled's `generate_id`, which never repeats or
//! goes backwards, even across crashes; a deleted node's id is never reused, so its events can
//! be swept after the deletion commits without touching a later node.
//!
//! # Invariants
//! - Every index entry points at a node whose field has that value, and every unique field of
//!   every node has its index entry: they change together in one sled transaction, and sled
//!   runs transactions one at a time, so two writers can never both take the same MAC,
//!   hostname or IP.
//! - Every lifecycle change goes through [`crate::model::check_transition`] and appends an
//!   event in the same transaction.
//! - Every write method returns only after `flush` has made it durable: what the API
//!   acknowledges survives a crash or power loss.
//! - The DHCP loop's writes (`stage_*`) are the exception: they show in the lease view at once
//!   and wait in `staging::Staged` until the next [`Store::flush`], which writes them all (one batch or
//!   transaction per tree) and then flushes. Flushes run one at a time, so when any
//!   `Store::flush` returns, everything staged before it began is on disk; the DHCP loop sends
//!   an ACK only after such a flush.
//! - Reads of nodes are served from an in-memory `View` (no disk, no decoding), which each
//!   writer updates after its flush. Each committed write carries a version taken inside the
//!   transaction, under sled's global transaction lock, so versions follow commit order; the
//!   view applies a node's change only if it is newer than what it holds, so two writers
//!   finishing their flushes out of order cannot leave it stale. A deleted node's version
//!   (its tombstone) is kept while any node write is between its transaction and the view;
//!   when none is, no older change can still arrive, and past 1,024 they are dropped.

mod acked;
mod backup;
mod certificates;
mod cluster;
mod discovery;
mod events;
mod feed;
mod leases;
mod nodes;
mod records;
mod schema;
mod sessions;
pub mod settings;
mod staging;
mod updates;
mod view;

pub use backup::Restored;
pub use discovery::DiscoveryCounts;
pub use feed::{FeedChange, FeedItem, Since};
pub use sessions::Session;
pub use settings::DiscoveryLimits;

use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, RwLock};

use sled::Tree;
use sled::transaction::{ConflictableTransactionError, TransactionError};
use time::OffsetDateTime;

use crate::model::{Lease, MacAddr, RecordSpec, TransitionError};

use leases::LeaseView;
pub use staging::Seen;
use staging::Staged;

/// The file, beside sled's, that says the registry was set up (see [`Store::open`]).
const INITIALIZED_MARKER: &str = "lacave-initialized";

/// Writes the marker durably (the file, then its directory).
fn write_marker(path: &Path) -> Result<(), StoreError> {
    let io = |e: std::io::Error| StoreError::Io(sled::Error::Io(e));
    let file = std::fs::File::create(path).map_err(io)?;
    file.sync_all().map_err(io)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io)?;
    }
    Ok(())
}

/// The schema this build reads and writes.
pub const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("no node named {0}")]
    NotFound(String),
    #[error("no certificate with serial {0}")]
    CertificateNotFound(String),
    #[error("no DNS record with id {0}")]
    DnsRecordNotFound(u64),
    #[error("certificate {serial} was already revoked on {at}")]
    AlreadyRevoked { serial: String, at: String },
    #[error("{field} {value} is already used by node {holder}")]
    Conflict {
        field: &'static str,
        value: String,
        holder: String,
    },
    #[error("node {node}: {source}")]
    Transition {
        node: String,
        source: TransitionError,
    },
    #[error("node {0} is only discovered: register it (POST /api/v1/nodes) before changing it")]
    NotRegistered(String),
    #[error(
        "node {node} is in the Kubernetes cluster ({state}), where its {fields} name it: take it out first (lacave node rm, then add it again), or reinstall it (lacave node reinstall), then change them"
    )]
    InCluster {
        node: String,
        state: crate::model::NodeState,
        fields: String,
    },
    #[error(
        "the state directory holds schema version {found}, newer than this build's {supported}: run a newer lacave"
    )]
    SchemaTooNew { found: u32, supported: u32 },
    #[error("{0}")]
    Stale(String),
    #[error("the store is damaged: {0}")]
    Corrupt(String),
    #[error(
        "the registry {path} is damaged and cannot be read ({detail}): stop lacave and restore the registry directory from a backup, or move it aside to start with an empty registry"
    )]
    Damaged { path: String, detail: String },
    #[error("storage error: {}", sled_message(.0))]
    Io(#[from] sled::Error),
    #[error(
        "the registry {0} is in use by another process (a lacave daemon already running on this state directory?)"
    )]
    InUse(String),
}

impl From<TransactionError<StoreError>> for StoreError {
    fn from(e: TransactionError<StoreError>) -> Self {
        match e {
            TransactionError::Abort(e) => e,
            TransactionError::Storage(e) => StoreError::Io(e),
        }
    }
}

type TxResult<T> = Result<T, ConflictableTransactionError<StoreError>>;

/// The node registry. Cheap to clone; all clones share one database and one view.
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    nodes: Tree,
    by_mac: Tree,
    by_hostname: Tree,
    by_ip: Tree,
    events: Tree,
    certificates: Tree,
    dns_records: Tree,
    meta: Tree,
    cluster: Tree,
    sessions: Tree,
    updates: Tree,
    /// The operator's DNS records, as stored, and a counter bumped after each change.
    dns_view: Arc<RwLock<std::collections::BTreeMap<u64, RecordSpec>>>,
    dns_generation: Arc<AtomicU64>,
    leases: Tree,
    /// Every lease (and declined address), as stored, indexed by address and by MAC.
    lease_view: Arc<RwLock<LeaseView>>,
    view: Arc<RwLock<view::View>>,
    /// Taken inside each write transaction: orders committed writes for the view.
    commit_version: Arc<AtomicU64>,
    /// Node writes between the start of their transaction and their change in the view. When
    /// none is, no write older than the view's tombstones can still arrive, and they go.
    writers: Arc<std::sync::atomic::AtomicUsize>,
    /// The DHCP loop's writes not yet handed to sled.
    staged: Arc<Mutex<Staged>>,
    /// Held by [`Store::flush`] from taking the staged writes until sled's flush returns.
    flushing: Arc<Mutex<()>>,
    /// Bounds on discovered machines, and what they did.
    discovery: Arc<Mutex<discovery::Gate>>,
    discovery_counts: Arc<DiscoveryCounts>,
    /// Why writes are failing (a full disk, an I/O error), until a probe succeeds.
    failure: Arc<Mutex<Option<String>>>,
    /// Held shared by node transactions and DHCP flushes, exclusively by a backup while it
    /// reads nodes, events and leases: so that those agree.
    snapshot: Arc<RwLock<()>>,
    /// Every committed event and node removal, released in sequence order (`feed.rs`).
    feed: Arc<feed::Feed>,
    /// Bumped when console sessions end (logout, revocation, a rotated token), so that
    /// their event streams stop at once.
    sessions_ended: Arc<tokio::sync::watch::Sender<u64>>,
    /// What the registry acknowledged, recorded beside sled (`acked.rs`).
    acked: Arc<acked::Acked>,
}

/// sled's I/O errors print as a debug structure (`Os { code: 28, … }`): show the OS error's
/// own text, or its kind ("no storage space").
fn sled_message(e: &sled::Error) -> String {
    match e {
        sled::Error::Io(io) => match (io.raw_os_error(), io.kind()) {
            (Some(code), _) => std::io::Error::from_raw_os_error(code).to_string(),
            (None, std::io::ErrorKind::Other) => io.to_string(),
            (None, kind) => kind.to_string(),
        },
        other => other.to_string(),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn decode_id(bytes: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[..8]);
    u64::from_be_bytes(b)
}

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

impl Store {
    /// Opens (or creates) the registry in `dir`, checking and migrating its schema. A registry
    /// that cannot be read whole is [`StoreError::Damaged`] or [`StoreError::Corrupt`] (exit
    /// 65), never a bare I/O error or a panic.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        let damaged = |detail: String| StoreError::Damaged {
            path: dir.display().to_string(),
            detail,
        };
        Self::open_checked(dir).map_err(|e| match e {
            StoreError::Io(
                inner @ (sled::Error::Corruption { .. } | sled::Error::ReportableBug(_)),
            ) => damaged(sled_message(&inner)),
            StoreError::Io(sled::Error::Io(io))
                if matches!(
                    io.kind(),
                    std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::InvalidData
                ) =>
            {
                damaged(io.to_string())
            }
            other => other,
        })
    }

    fn open_checked(dir: &Path) -> Result<Store, StoreError> {
        let db = open_db(dir)?;
        let meta = db.open_tree("meta")?;
        let nodes = db.open_tree("nodes")?;
        // Written once the registry exists, outside sled: a registry that was set up before
        // and comes back without its schema lost its data (sled opens a truncated `db` as
        // an empty database), and must not silently start over empty.
        let marker = dir.join(INITIALIZED_MARKER);
        match meta.get("schema_version")? {
            None if marker.exists() => {
                return Err(StoreError::Damaged {
                    path: dir.display().to_string(),
                    detail: "it was set up before but its data is gone: truncated or replaced"
                        .into(),
                });
            }
            Some(v) if v.len() == 4 => {
                let found = u32::from_be_bytes([v[0], v[1], v[2], v[3]]);
                if found > SCHEMA_VERSION {
                    return Err(StoreError::SchemaTooNew {
                        found,
                        supported: SCHEMA_VERSION,
                    });
                }
                // Migrations from older schemas go here, one step at a time, each in a
                // transaction that also bumps `schema_version`. Version 1 is the first.
            }
            Some(v) => {
                return Err(StoreError::Corrupt(format!(
                    "schema_version has {} bytes, expected 4",
                    v.len()
                )));
            }
            None if nodes.is_empty() => {
                meta.insert("schema_version", &SCHEMA_VERSION.to_be_bytes())?;
                db.flush()?;
            }
            None => {
                return Err(StoreError::Corrupt(
                    "nodes are stored but no schema_version is recorded".into(),
                ));
            }
        }
        if !marker.exists() {
            write_marker(&marker)?;
        }
        let dns_records = db.open_tree("dns_records")?;
        let mut dns_view = std::collections::BTreeMap::new();
        for entry in dns_records.iter() {
            let (key, value) = entry?;
            if key.len() != 8 {
                return Err(StoreError::Corrupt(
                    "a DNS record key is not 8 bytes".into(),
                ));
            }
            dns_view.insert(decode_id(&key), schema::decode_dns_record(&value)?);
        }
        let leases = db.open_tree("leases")?;
        let mut lease_view = LeaseView::default();
        for entry in leases.iter() {
            let (k, v) = entry?;
            if k.len() != 4 || v.len() != 14 {
                return Err(StoreError::Corrupt(
                    "a lease record has the wrong size".into(),
                ));
            }
            let ip = std::net::Ipv4Addr::new(k[0], k[1], k[2], k[3]);
            let mac = MacAddr::new(v[..6].try_into().expect("six bytes"));
            let expires = u64::from_be_bytes(v[6..14].try_into().expect("eight bytes"));
            lease_view.insert(Lease { ip, mac, expires });
        }
        let mut view = view::View::default();
        for entry in nodes.iter() {
            let (key, value) = entry?;
            if key.len() != 8 {
                return Err(StoreError::Corrupt(format!(
                    "a node key has {} bytes, not 8",
                    key.len()
                )));
            }
            view.apply(decode_id(&key), 0, Some(schema::decode_node(&value)?));
        }
        // Less than it acknowledged (a file cut short that sled opened anyway): refused.
        let recorded = acked::read(dir);
        let mark = match meta.get(acked::MARK_KEY)? {
            Some(v) if v.len() == 8 => decode_id(&v),
            Some(_) => return Err(StoreError::Corrupt("flush_mark is not 8 bytes".into())),
            None => 0,
        };
        acked::check(dir, recorded, mark, view.registered_count())?;
        // Every stored event is numbered below this: the feed's numbers start after it.
        let feed_floor = db.generate_id()?;
        Ok(Store {
            feed: Arc::new(feed::Feed::new(feed_floor)),
            view: Arc::new(RwLock::new(view)),
            commit_version: Arc::new(AtomicU64::new(1)),
            writers: Arc::default(),
            nodes,
            by_mac: db.open_tree("by_mac")?,
            by_hostname: db.open_tree("by_hostname")?,
            by_ip: db.open_tree("by_ip")?,
            events: db.open_tree("events")?,
            certificates: db.open_tree("certificates")?,
            dns_view: Arc::new(RwLock::new(dns_view)),
            dns_generation: Arc::new(AtomicU64::new(1)),
            dns_records,
            leases,
            lease_view: Arc::new(RwLock::new(lease_view)),
            staged: Arc::default(),
            flushing: Arc::default(),
            discovery: Arc::default(),
            discovery_counts: Arc::default(),
            failure: Arc::default(),
            snapshot: Arc::default(),
            meta,
            cluster: db.open_tree("cluster")?,
            sessions: db.open_tree("sessions")?,
            updates: db.open_tree("updates")?,
            sessions_ended: Arc::new(tokio::sync::watch::Sender::new(0)),
            acked: acked::Acked::new(dir, recorded, mark),
            db,
        })
    }

    /// Makes every write so far durable; a failure (a full disk) is remembered for
    /// [`Store::storage_failure`] until [`Store::probe`] succeeds.
    pub(super) fn flush_db(&self) -> Result<(), StoreError> {
        // The mark goes in before the flush, the record beside sled after it (`acked.rs`).
        let mark = self.acked.next_mark();
        let raised = self.meta.update_and_fetch(acked::MARK_KEY, |old| {
            let held = old.filter(|o| o.len() == 8).map_or(0, decode_id);
            Some(held.max(mark).to_be_bytes().to_vec())
        });
        if let Err(e) = raised {
            self.note_failure(&e);
            return Err(e.into());
        }
        match self.db.flush() {
            Ok(_) => {
                let registered = self.view().registered_count();
                self.acked.record(mark, registered, self.feed.head());
                Ok(())
            }
            Err(e) => {
                self.note_failure(&e);
                Err(e.into())
            }
        }
    }

    pub(super) fn note_failure(&self, error: &sled::Error) {
        let mut failure = lock(&self.failure);
        if failure.is_none() {
            tracing::error!(error = %sled_message(error), "registry writes are failing: nothing more is acknowledged until they work again");
        }
        *failure = Some(sled_message(error));
    }

    /// Why writes are failing, if they are (the last write or probe failed).
    pub fn storage_failure(&self) -> Option<String> {
        lock(&self.failure).clone()
    }

    /// Tries a small durable write; clears the failure when it works.
    pub fn probe(&self) -> Result<(), StoreError> {
        let stamp = now().unix_timestamp().to_be_bytes();
        if let Err(e) = self.meta.insert("probe", &stamp) {
            self.note_failure(&e);
            return Err(e.into());
        }
        self.flush_db()?;
        if lock(&self.failure).take().is_some() {
            tracing::info!("registry writes work again");
        }
        Ok(())
    }

    fn view(&self) -> std::sync::RwLockReadGuard<'_, view::View> {
        self.view.read().unwrap_or_else(|e| e.into_inner())
    }

    fn view_mut(&self) -> std::sync::RwLockWriteGuard<'_, view::View> {
        self.view.write().unwrap_or_else(|e| e.into_inner())
    }

    /// A number that changes whenever any node changes: callers may cache what they derive
    /// from the registry (a rendered list, a DNS zone) until it moves.
    pub fn generation(&self) -> u64 {
        self.view().generation()
    }

    /// Like [`Store::generation`], but moves only when what DHCP reservations derive from a
    /// node changes (address, MAC, discovered or not, boot file): neither a flood of newly
    /// discovered machines nor nodes' sightings invalidate them.
    pub fn address_generation(&self) -> u64 {
        self.view().address_generation()
    }

    /// Like [`Store::generation`], but moves only when a node other than a discovered machine
    /// changes (or is added or removed): what [`Store::with_registered_nodes`] shows.
    pub fn registered_generation(&self) -> u64 {
        self.view().registered_generation()
    }
}

/// Opens the database. A store closed a moment ago (a restart in the same process, or the
/// previous daemon still exiting) can hold its file lock until sled's background flusher ends
/// (within its 500 ms period), so a held lock is retried for up to 3 s before it is an error.
fn open_db(dir: &Path) -> Result<sled::Db, StoreError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    let damaged = |detail: String| StoreError::Damaged {
        path: dir.display().to_string(),
        detail,
    };
    loop {
        // sled panics on some damaged files (a truncated `db`: "index out of bounds"); that
        // is a damaged registry to report, not a crash (and a restart loop under systemd).
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let opened = std::panic::catch_unwind(|| {
            // Reads are served from the view, so sled's page cache helps only transactions:
            // 512 KB holds a cluster's registry (1,000 nodes), and every megabyte more
            // stays resident once the registry holds tens of thousands of discovered
            // machines. Measured (bench/discovery-memory.sh, 60,000 machines): 64 MB → 8 MB
            // → 2 MB → 512 KB took RSS per machine 2.5 KB → 1.4 KB → 720 B → 480 B (with the
            // compact view), DHCP CPU and registration throughput within noise
            // (bench/dhcp.sh, bench/registry.sh).
            sled::Config::new()
                .path(dir)
                .cache_capacity(512 * 1024)
                .open()
        });
        std::panic::set_hook(previous);
        let opened = match opened {
            Ok(result) => result,
            Err(panic) => {
                let why = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "the storage engine failed reading it".into());
                return Err(damaged(why));
            }
        };
        match opened {
            Ok(db) => return Ok(db),
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            Err(sled::Error::Io(e)) if e.to_string().contains("could not acquire lock") => {
                return Err(StoreError::InUse(dir.display().to_string()));
            }
            Err(sled::Error::Corruption { at, .. }) => {
                return Err(damaged(format!("corrupt data at {at:?}")));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests;

//! The node registry on disk. This is the only module that imports `sled`.
//!
//! # Layout (schema version 1)
//!
//! | tree          | key                                  | value                         |
//! |---------------|--------------------------------------|-------------------------------|
//! | `meta`        | `schema_version`                     | u32, big-endian               |
//! | `nodes`       | node id (u64 BE)                     | `NodeRecord` JSON             |
//! | `by_mac`      | 6 MAC octets                         | node id (u64 BE)              |
//! | `by_hostname` | lower-case hostname bytes            | node id (u64 BE)              |
//! | `by_ip`       | 4 IPv4 octets                        | node id (u64 BE)              |
//! | `events`      | node id (u64 BE) ++ seq (u64 BE)     | `EventRecord` JSON            |
//! | `certificates`| serial, lower-case hex               | `CertificateRecordV1` JSON    |
//! | `dns_records` | record id (u64 BE)                   | `DnsRecordV1` JSON            |
//! | `leases`      | 4 IPv4 octets                        | MAC (6) ++ expiry (u64 BE, unix s) |
//! | `meta`        | `dns_serial`                         | serial (u32 BE) ++ digest (u64 BE) |
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
//!   and wait in [`Staged`] until the next [`Store::flush`], which writes them all (one batch or
//!   transaction per tree) and then flushes. Flushes run one at a time, so when any
//!   `Store::flush` returns, everything staged before it began is on disk; the DHCP loop sends
//!   an ACK only after such a flush.
//! - Reads of nodes are served from an in-memory [`View`] (no disk, no decoding), which each
//!   writer updates after its flush. Each committed write carries a version taken inside the
//!   transaction, under sled's global transaction lock, so versions follow commit order; the
//!   view applies a node's change only if it is newer than what it holds, so two writers
//!   finishing their flushes out of order cannot leave it stale.

mod records;
mod view;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use sled::Transactional;
use sled::Tree;
use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree, abort};
use time::OffsetDateTime;

use crate::dhcp::decide::Lease;
use crate::dns::records::RecordSpec;
use crate::model::{
    Event, EventKind, Failure, MacAddr, NewNode, Node, NodeKey, NodePatch, NodeState, Sighting,
    TransitionError, check_transition,
};

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
        "the state directory holds schema version {found}, newer than this build's {supported}: run a newer lacave"
    )]
    SchemaTooNew { found: u32, supported: u32 },
    #[error("{0}")]
    Stale(String),
    #[error("the store is damaged: {0}")]
    Corrupt(String),
    #[error("storage error: {0}")]
    Io(#[from] sled::Error),
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
    /// The operator's DNS records, as stored, and a counter bumped after each change.
    dns_view: Arc<RwLock<std::collections::BTreeMap<u64, RecordSpec>>>,
    dns_generation: Arc<AtomicU64>,
    leases: Tree,
    /// Every lease (and declined address), as stored, indexed by address and by MAC.
    lease_view: Arc<RwLock<LeaseView>>,
    view: Arc<RwLock<view::View>>,
    /// Taken inside each write transaction: orders committed writes for the view.
    commit_version: Arc<AtomicU64>,
    /// The DHCP loop's writes not yet handed to sled.
    staged: Arc<Mutex<Staged>>,
    /// Held by [`Store::flush`] from taking the staged writes until sled's flush returns.
    flushing: Arc<Mutex<()>>,
}

/// Writes staged by the DHCP loop for the next [`Store::flush`]. sled rolls its log buffer
/// twice for every batch or transaction (a `pwrite` and a `sync_file_range` each), so writing a
/// packet's changes as they came cost ~4,000 log writes a second at 5,000 exchanges/s; staged,
/// they cost three per flush.
#[derive(Default)]
struct Staged {
    /// Lease inserts and removals, in order.
    leases: sled::Batch,
    lease_ops: usize,
    /// New machines to record as `discovered`, in the order they were seen.
    discovered: Vec<MacAddr>,
    /// Those, and the ones a running flush is recording.
    discovered_set: std::collections::HashSet<MacAddr>,
    /// The latest sighting of each machine that showed something new (the `discovered` ones
    /// are written with theirs).
    seen: std::collections::HashMap<MacAddr, Sighting>,
    /// Events by MAC: the node may be one of `discovered`, so its id is looked up, and the
    /// event numbered (after the node's own first event), only when written.
    events: Vec<StagedEvent>,
}

/// What [`Store::stage_seen`] did with a packet's sighting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seen {
    /// A new machine, staged to be recorded as `discovered`.
    New,
    /// A sighting with something new, staged.
    Staged,
    /// Nothing to write.
    Nothing,
}

/// An event for the node with this MAC: when, what, and its message.
type StagedEvent = (MacAddr, OffsetDateTime, EventKind, String);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Leases in memory: by address, and each client's address.
#[derive(Default)]
struct LeaseView {
    by_ip: std::collections::HashMap<std::net::Ipv4Addr, Lease>,
    by_mac: std::collections::HashMap<MacAddr, std::net::Ipv4Addr>,
}

impl LeaseView {
    fn insert(&mut self, lease: Lease) {
        if let Some(old) = self.by_mac.insert(lease.mac, lease.ip)
            && old != lease.ip
        {
            self.by_ip.remove(&old);
        }
        if let Some(previous) = self.by_ip.insert(lease.ip, lease)
            && previous.mac != lease.mac
            && self.by_mac.get(&previous.mac) == Some(&lease.ip)
        {
            self.by_mac.remove(&previous.mac);
        }
    }

    fn remove(&mut self, ip: std::net::Ipv4Addr) {
        if let Some(l) = self.by_ip.remove(&ip)
            && self.by_mac.get(&l.mac) == Some(&ip)
        {
            self.by_mac.remove(&l.mac);
        }
    }
}

/// What one write transaction did to one node, for the view: its id and its new value
/// (`None` once deleted).
type Change = (u64, Option<Node>);

/// The trees one node write touches, as seen inside a transaction.
struct Tx<'a> {
    nodes: &'a TransactionalTree,
    by_mac: &'a TransactionalTree,
    by_hostname: &'a TransactionalTree,
    by_ip: &'a TransactionalTree,
    events: &'a TransactionalTree,
}

impl Tx<'_> {
    fn id_for(&self, key: &NodeKey) -> TxResult<Option<u64>> {
        let found = match key {
            NodeKey::Hostname(h) => self.by_hostname.get(h.as_str().as_bytes())?,
            NodeKey::Mac(m) => self.by_mac.get(m.octets())?,
        };
        Ok(found.map(|v| decode_id(&v)))
    }

    /// Finds the node for the first of `keys` that names one.
    fn resolve(&self, keys: &[NodeKey]) -> TxResult<(u64, Node)> {
        for key in keys {
            if let Some(id) = self.id_for(key)? {
                return Ok((id, self.load(id)?));
            }
        }
        let name = keys.first().map(ToString::to_string).unwrap_or_default();
        abort(StoreError::NotFound(name))
    }

    fn load(&self, id: u64) -> TxResult<Node> {
        match self.nodes.get(id.to_be_bytes())? {
            Some(bytes) => {
                records::decode_node(&bytes).map_err(ConflictableTransactionError::Abort)
            }
            None => abort(StoreError::Corrupt(format!(
                "an index points at node id {id}, which does not exist"
            ))),
        }
    }

    fn holder_name(&self, id: u64) -> TxResult<String> {
        Ok(self.load(id)?.display_name())
    }

    /// Fails with `Conflict` when another node than `own_id` holds `node`'s MAC, hostname or IP.
    fn check_unique(&self, own_id: u64, node: &Node) -> TxResult<()> {
        let mut claims: Vec<(&'static str, String, Option<sled::IVec>)> = vec![(
            "mac",
            node.mac.to_string(),
            self.by_mac.get(node.mac.octets())?,
        )];
        if let Some(h) = &node.hostname {
            claims.push((
                "hostname",
                h.to_string(),
                self.by_hostname.get(h.as_str().as_bytes())?,
            ));
        }
        if let Some(ip) = node.ip {
            claims.push(("ip", ip.to_string(), self.by_ip.get(ip.addr().octets())?));
        }
        for (field, value, holder) in claims {
            if let Some(holder) = holder {
                let holder = decode_id(&holder);
                if holder != own_id {
                    return abort(StoreError::Conflict {
                        field,
                        value,
                        holder: self.holder_name(holder)?,
                    });
                }
            }
        }
        Ok(())
    }

    fn remove_indexes(&self, node: &Node) -> TxResult<()> {
        self.by_mac.remove(&node.mac.octets())?;
        if let Some(h) = &node.hostname {
            self.by_hostname.remove(h.as_str().as_bytes())?;
        }
        if let Some(ip) = node.ip {
            self.by_ip.remove(&ip.addr().octets())?;
        }
        Ok(())
    }

    fn write(&self, id: u64, node: &Node) -> TxResult<()> {
        let id_bytes = id.to_be_bytes();
        self.nodes.insert(&id_bytes, records::encode_node(node))?;
        self.by_mac.insert(&node.mac.octets(), &id_bytes)?;
        if let Some(h) = &node.hostname {
            self.by_hostname.insert(h.as_str().as_bytes(), &id_bytes)?;
        }
        if let Some(ip) = node.ip {
            self.by_ip.insert(&ip.addr().octets(), &id_bytes)?;
        }
        Ok(())
    }

    fn append_event(&self, id: u64, event: &Event) -> TxResult<()> {
        self.events
            .insert(&event_key(id, event.seq), records::encode_event(event))?;
        Ok(())
    }
}

fn decode_id(bytes: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[..8]);
    u64::from_be_bytes(b)
}

fn event_key(id: u64, seq: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&id.to_be_bytes());
    k[8..].copy_from_slice(&seq.to_be_bytes());
    k
}

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

impl Store {
    /// Opens (or creates) the registry in `dir`, checking and migrating its schema.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        let db = open_db(dir)?;
        let meta = db.open_tree("meta")?;
        let nodes = db.open_tree("nodes")?;
        match meta.get("schema_version")? {
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
        let dns_records = db.open_tree("dns_records")?;
        let mut dns_view = std::collections::BTreeMap::new();
        for entry in dns_records.iter() {
            let (key, value) = entry?;
            dns_view.insert(decode_id(&key), records::decode_dns_record(&value)?);
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
            view.apply(decode_id(&key), 0, Some(records::decode_node(&value)?));
        }
        Ok(Store {
            view: Arc::new(RwLock::new(view)),
            commit_version: Arc::new(AtomicU64::new(1)),
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
            meta,
            db,
        })
    }

    /// Runs `f` in one serialisable transaction over every node tree, makes it durable, then
    /// shows the node's change in the view.
    fn write_tx<T>(&self, f: impl Fn(&Tx<'_>) -> TxResult<(T, Change)>) -> Result<T, StoreError> {
        let (out, (id, node), version) = self.commit(f)?;
        self.db.flush()?;
        self.view_mut().apply(id, version, node);
        Ok(out)
    }

    /// [`Store::write_tx`] without the flush, changing any number of nodes, for a caller that
    /// flushes a batch at once and acknowledges nothing before (the DHCP loop). Its changes
    /// show in the view at once.
    fn staged_tx_many<T>(
        &self,
        f: impl Fn(&Tx<'_>) -> TxResult<(T, Vec<Change>)>,
    ) -> Result<T, StoreError> {
        let (out, changes, version) = self.commit(f)?;
        let mut view = self.view_mut();
        for (id, node) in changes {
            view.apply(id, version, node);
        }
        Ok(out)
    }

    /// The transaction itself, returning its result, its change(s) and its commit version.
    fn commit<T, C>(
        &self,
        f: impl Fn(&Tx<'_>) -> TxResult<(T, C)>,
    ) -> Result<(T, C, u64), StoreError> {
        let committed = (
            &self.nodes,
            &self.by_mac,
            &self.by_hostname,
            &self.by_ip,
            &self.events,
        )
            .transaction(|(nodes, by_mac, by_hostname, by_ip, events)| {
                let (out, change) = f(&Tx {
                    nodes,
                    by_mac,
                    by_hostname,
                    by_ip,
                    events,
                })?;
                // Still inside the transaction, so under sled's global transaction lock: the
                // version that commits is higher than every version committed before it.
                let version = self.commit_version.fetch_add(1, Ordering::SeqCst);
                Ok((out, change, version))
            })?;
        Ok(committed)
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

    /// Registers a node. A MAC that is only `discovered` is adopted: the record becomes
    /// `registered` with the operator's data, keeping its history.
    pub fn create_node(&self, new: &NewNode) -> Result<Node, StoreError> {
        let fresh_id = self.db.generate_id()?;
        let seq = self.db.generate_id()?;
        self.write_tx(|tx| {
            let at = now();
            let existing = match tx.id_for(&NodeKey::Mac(new.mac))? {
                Some(id) => Some((id, tx.load(id)?)),
                None => None,
            };
            // Adoption keeps the discovered record (its id, history, first-seen time).
            let (id, base, kind, message) = match existing {
                Some((id, old)) if old.state == NodeState::Discovered => (
                    id,
                    old,
                    EventKind::Transition {
                        from: NodeState::Discovered,
                        to: NodeState::Registered,
                    },
                    format!("adopted as {}", new.hostname),
                ),
                _ => (
                    fresh_id,
                    Node::discovered(new.mac, at),
                    EventKind::Created {
                        state: NodeState::Registered,
                    },
                    "registered".to_string(),
                ),
            };
            let node = Node {
                hostname: Some(new.hostname.clone()),
                ip: Some(new.ip),
                role: Some(new.role),
                labels: new.labels.clone(),
                install_disk: new.install_disk.clone(),
                boot_file: new.boot_file.clone(),
                state: NodeState::Registered,
                updated_at: at,
                ..base
            };
            tx.check_unique(id, &node)?;
            tx.write(id, &node)?;
            tx.append_event(
                id,
                &Event {
                    seq,
                    at,
                    kind,
                    message,
                },
            )?;
            Ok((node.clone(), (id, Some(node))))
        })
    }

    /// Applies an operator's change to a registered node.
    pub fn update_node(&self, keys: &[NodeKey], patch: &NodePatch) -> Result<Node, StoreError> {
        let seq = self.db.generate_id()?;
        self.write_tx(|tx| {
            let (id, old) = tx.resolve(keys)?;
            if old.state == NodeState::Discovered {
                return abort(StoreError::NotRegistered(old.display_name()));
            }
            let at = now();
            let node = Node {
                mac: patch.mac.unwrap_or(old.mac),
                hostname: patch.hostname.clone().or_else(|| old.hostname.clone()),
                ip: patch.ip.or(old.ip),
                role: patch.role.or(old.role),
                labels: patch.labels.clone().unwrap_or_else(|| old.labels.clone()),
                install_disk: match &patch.install_disk {
                    Some(disk) => disk.clone(),
                    None => old.install_disk.clone(),
                },
                boot_file: match &patch.boot_file {
                    Some(file) => file.clone(),
                    None => old.boot_file.clone(),
                },
                updated_at: at,
                ..old.clone()
            };
            tx.remove_indexes(&old)?;
            tx.check_unique(id, &node)?;
            tx.write(id, &node)?;
            let fields: Vec<String> = patch.field_names().iter().map(|f| f.to_string()).collect();
            tx.append_event(
                id,
                &Event {
                    seq,
                    at,
                    kind: EventKind::Updated {
                        fields: fields.clone(),
                    },
                    message: format!("updated {}", fields.join(", ")),
                },
            )?;
            Ok((node.clone(), (id, Some(node))))
        })
    }

    /// Moves a node through its lifecycle, if [`check_transition`] allows it. `failure` is
    /// kept only when `to` is `failed`. Going back to `registered` (a reinstall) clears the
    /// callback secret and the pinned SSH host key: the old configs stop working.
    pub fn transition(
        &self,
        keys: &[NodeKey],
        to: NodeState,
        message: &str,
        failure: Option<Failure>,
    ) -> Result<Node, StoreError> {
        self.transition_with(keys, to, message, failure, |_| Ok(()))
    }

    /// [`Store::transition`], also applying `edit` to the node in the same transaction; an
    /// `edit` error aborts it (for the boot flow: the install's secret, the pinned host key).
    pub fn transition_with(
        &self,
        keys: &[NodeKey],
        to: NodeState,
        message: &str,
        failure: Option<Failure>,
        edit: impl Fn(&mut Node) -> Result<(), StoreError>,
    ) -> Result<Node, StoreError> {
        let seq = self.db.generate_id()?;
        self.write_tx(|tx| {
            let (id, old) = tx.resolve(keys)?;
            if let Err(source) = check_transition(old.state, to) {
                return abort(StoreError::Transition {
                    node: old.display_name(),
                    source,
                });
            }
            let at = now();
            let reinstall = to == NodeState::Registered;
            let mut node = Node {
                state: to,
                failure: if to == NodeState::Failed {
                    failure.clone()
                } else {
                    None
                },
                callback_secret: if reinstall {
                    None
                } else {
                    old.callback_secret.clone()
                },
                ssh_host_key: if reinstall {
                    None
                } else {
                    old.ssh_host_key.clone()
                },
                updated_at: at,
                ..old.clone()
            };
            if let Err(e) = edit(&mut node) {
                return abort(e);
            }
            tx.write(id, &node)?;
            tx.append_event(
                id,
                &Event {
                    seq,
                    at,
                    kind: EventKind::Transition {
                        from: old.state,
                        to,
                    },
                    message: message.to_string(),
                },
            )?;
            Ok((node.clone(), (id, Some(node))))
        })
    }

    /// Removes a node and its history.
    pub fn delete_node(&self, keys: &[NodeKey]) -> Result<Node, StoreError> {
        let (id, node) = self.write_tx(|tx| {
            let (id, node) = tx.resolve(keys)?;
            tx.remove_indexes(&node)?;
            tx.nodes.remove(&id.to_be_bytes())?;
            Ok(((id, node), (id, None)))
        })?;
        // Ids are never reused, so sweeping the history after the commit cannot touch
        // another node; a crash here leaves unreachable events, never a wrong one.
        for key in self.events.scan_prefix(id.to_be_bytes()).keys() {
            self.events.remove(key?)?;
        }
        self.db.flush()?;
        Ok(node)
    }

    /// Writes what the DHCP loop staged and makes every write so far durable. Write methods
    /// already flush their own writes; shutdown calls this once more before the store is
    /// closed. If writing the staged changes fails they are not retried (the lease view keeps
    /// them; a client's next REQUEST stages its lease again), and the error says so.
    pub fn flush(&self) -> Result<(), StoreError> {
        let _one_at_a_time = lock(&self.flushing);
        let (discovered, mut seen, leases, lease_ops, events) = {
            let mut s = lock(&self.staged);
            (
                std::mem::take(&mut s.discovered),
                std::mem::take(&mut s.seen),
                std::mem::take(&mut s.leases),
                std::mem::take(&mut s.lease_ops),
                std::mem::take(&mut s.events),
            )
        };
        // Each part is written even if one before it failed (leases matter most); the first
        // error is returned, and the caller acknowledges nothing.
        let mut first_error = None;
        if !discovered.is_empty() {
            let machines: Vec<(MacAddr, Option<Sighting>)> = discovered
                .iter()
                .map(|mac| (*mac, seen.remove(mac)))
                .collect();
            let recorded = self.record_discovered_many(&machines);
            // Until now these machines were neither in the view nor re-stageable, and events
            // staged for them meanwhile wait for the next flush, when their node exists.
            let mut s = lock(&self.staged);
            for mac in &discovered {
                s.discovered_set.remove(mac);
            }
            drop(s);
            first_error = recorded.err();
        }
        if !seen.is_empty()
            && let Err(e) = self.write_sightings(&seen)
        {
            first_error.get_or_insert(e);
        }
        if lease_ops > 0
            && let Err(e) = self.leases.apply_batch(leases)
        {
            first_error.get_or_insert(e.into());
        }
        if !events.is_empty()
            && let Err(e) = self.write_staged_events(events)
        {
            first_error.get_or_insert(e);
        }
        self.db.flush()?;
        first_error.map_or(Ok(()), Err)
    }

    /// Writes known machines' new sightings in one transaction (only the node records: no
    /// indexed field changes).
    fn write_sightings(
        &self,
        seen: &std::collections::HashMap<MacAddr, Sighting>,
    ) -> Result<(), StoreError> {
        self.staged_tx_many(|tx| {
            let mut changes = Vec::new();
            for (mac, sighting) in seen {
                let Some(id) = tx.id_for(&NodeKey::Mac(*mac))? else {
                    continue; // deleted meanwhile
                };
                let mut node = tx.load(id)?;
                if sighting.news_over(node.last_seen.as_ref()) {
                    node.last_seen = Some(sighting.clone());
                    tx.nodes
                        .insert(&id.to_be_bytes(), records::encode_node(&node))?;
                    changes.push((id, Some(node)));
                }
            }
            Ok(((), changes))
        })
    }

    /// Writes staged events in one batch, each numbered now (after its node's own first
    /// event, if the node was recorded by the same flush).
    fn write_staged_events(&self, events: Vec<StagedEvent>) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        let view = self.view();
        for (mac, at, kind, message) in events {
            // A node deleted meanwhile has no history to add to.
            let Some((id, _)) = view.find(&[NodeKey::Mac(mac)]) else {
                continue;
            };
            let event = Event {
                seq: self.db.generate_id()?,
                at,
                kind,
                message,
            };
            batch.insert(&event_key(id, event.seq), records::encode_event(&event));
        }
        drop(view);
        self.events.apply_batch(batch)?;
        Ok(())
    }

    /// The node named by the first of `keys` that names one.
    pub fn get(&self, keys: &[NodeKey]) -> Result<Node, StoreError> {
        self.view()
            .find(keys)
            .map(|(_, node)| node.clone())
            .ok_or_else(|| {
                StoreError::NotFound(keys.first().map(ToString::to_string).unwrap_or_default())
            })
    }

    /// Whether any node (registered or discovered) has this MAC; no copy is made (DHCP asks
    /// for every packet).
    pub fn knows_mac(&self, mac: MacAddr) -> bool {
        self.view().find(&[NodeKey::Mac(mac)]).is_some()
    }

    pub fn get_by_mac(&self, mac: MacAddr) -> Result<Option<Node>, StoreError> {
        match self.get(&[NodeKey::Mac(mac)]) {
            Ok(node) => Ok(Some(node)),
            Err(StoreError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every node, in registration order.
    pub fn list_nodes(&self) -> Result<Vec<Node>, StoreError> {
        Ok(self.view().nodes().cloned().collect())
    }

    /// Calls `f` with the registry's generation and every node, in registration order,
    /// without copying them; both are read under one lock, so they agree.
    pub fn with_nodes<T>(&self, f: impl FnOnce(u64, &mut dyn Iterator<Item = &Node>) -> T) -> T {
        let view = self.view();
        f(view.generation(), &mut view.nodes())
    }

    /// Records an issued certificate; `false` (and nothing written) when its serial is already
    /// taken, so the caller can re-issue under a new one: no two certificates share a serial.
    pub fn record_certificate(
        &self,
        record: &crate::pki::CertificateRecord,
    ) -> Result<bool, StoreError> {
        let inserted = self
            .certificates
            .compare_and_swap(
                record.serial.as_bytes(),
                None as Option<&[u8]>,
                Some(records::encode_certificate(record)),
            )?
            .is_ok();
        self.db.flush()?;
        Ok(inserted)
    }

    /// Every issued certificate, by serial.
    pub fn list_certificates(&self) -> Result<Vec<crate::pki::CertificateRecord>, StoreError> {
        self.certificates
            .iter()
            .values()
            .map(|v| records::decode_certificate(&v?))
            .collect()
    }

    /// Marks a certificate revoked (it stays listed, with when and why).
    pub fn revoke_certificate(
        &self,
        serial: &str,
        reason: Option<String>,
        at: OffsetDateTime,
    ) -> Result<crate::pki::CertificateRecord, StoreError> {
        let serial = serial.to_ascii_lowercase().replace(':', "");
        let out = self.certificates.transaction(|tree| {
            let Some(bytes) = tree.get(serial.as_bytes())? else {
                return abort(StoreError::CertificateNotFound(serial.clone()));
            };
            let mut record =
                records::decode_certificate(&bytes).map_err(ConflictableTransactionError::Abort)?;
            if let Some(at) = record.revoked_at {
                return abort(StoreError::AlreadyRevoked {
                    serial: serial.clone(),
                    at: at.to_string(),
                });
            }
            record.revoked_at = Some(at);
            record.revocation_reason = reason.clone();
            tree.insert(serial.as_bytes(), records::encode_certificate(&record))?;
            Ok(record)
        })?;
        self.db.flush()?;
        Ok(out)
    }

    /// Adds an operator DNS record; the same name, type and value twice is a conflict.
    pub fn add_dns_record(&self, spec: &RecordSpec) -> Result<u64, StoreError> {
        let same = |a: &RecordSpec| {
            a.name.eq_ignore_ascii_case(&spec.name)
                && a.type_str() == spec.type_str()
                && a.value.to_string() == spec.value.to_string()
        };
        let id = self.db.generate_id()?;
        let mut dns = self.dns_view.write().unwrap_or_else(|e| e.into_inner());
        if let Some((existing, _)) = dns.iter().find(|(_, r)| same(r)) {
            return Err(StoreError::Conflict {
                field: "value",
                value: format!("{} {} {}", spec.name, spec.type_str(), spec.value),
                holder: format!("DNS record {existing}"),
            });
        }
        self.dns_records
            .insert(id.to_be_bytes(), records::encode_dns_record(spec))?;
        self.db.flush()?;
        dns.insert(id, spec.clone());
        self.dns_generation.fetch_add(1, Ordering::SeqCst);
        Ok(id)
    }

    /// Every operator DNS record with its id.
    pub fn dns_records(&self) -> Vec<(u64, RecordSpec)> {
        self.dns_view
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(id, r)| (*id, r.clone()))
            .collect()
    }

    pub fn delete_dns_record(&self, id: u64) -> Result<RecordSpec, StoreError> {
        let mut dns = self.dns_view.write().unwrap_or_else(|e| e.into_inner());
        let Some(spec) = dns.get(&id).cloned() else {
            return Err(StoreError::DnsRecordNotFound(id));
        };
        self.dns_records.remove(id.to_be_bytes())?;
        self.db.flush()?;
        dns.remove(&id);
        self.dns_generation.fetch_add(1, Ordering::SeqCst);
        Ok(spec)
    }

    /// Changes whenever an operator DNS record is added or removed.
    pub fn dns_generation(&self) -> u64 {
        self.dns_generation.load(Ordering::SeqCst)
    }

    /// The SOA serial for zone content with `digest`: the stored one while the content is the
    /// same, else one more, stored durably before it is used. It never goes backwards, across
    /// restarts included.
    pub fn dns_serial(&self, digest: u64) -> Result<u32, StoreError> {
        let serial = self.meta.transaction(|meta| {
            let (serial, stored_digest) = match meta.get("dns_serial")? {
                Some(v) if v.len() == 12 => (
                    u32::from_be_bytes([v[0], v[1], v[2], v[3]]),
                    u64::from_be_bytes(v[4..12].try_into().expect("8 bytes")),
                ),
                _ => (0, 0),
            };
            if serial != 0 && stored_digest == digest {
                return Ok(serial);
            }
            // Serial arithmetic (RFC 1982) wraps; 0 is skipped to stay clear of "unset".
            let next = serial.wrapping_add(1).max(1);
            let mut v = next.to_be_bytes().to_vec();
            v.extend_from_slice(&digest.to_be_bytes());
            meta.insert("dns_serial", v)?;
            Ok(next)
        });
        let serial = serial.map_err(|e: TransactionError<StoreError>| StoreError::from(e))?;
        self.db.flush()?;
        Ok(serial)
    }

    /// Stores a lease, replacing the client's previous one (a client holds one). Visible at
    /// once; written and durable by the next [`Store::flush`] (the DHCP loop flushes before it
    /// sends the ACK). Returns whether this is a new lease rather than the renewal of an
    /// unexpired one on the same address.
    pub fn stage_lease(&self, lease: Lease, now: u64) -> Result<bool, StoreError> {
        let mut view = self.lease_view.write().unwrap_or_else(|e| e.into_inner());
        let renewal = view
            .by_mac
            .get(&lease.mac)
            .and_then(|ip| view.by_ip.get(ip))
            .is_some_and(|old| old.ip == lease.ip && old.expires > now);
        let mut staged = lock(&self.staged);
        if let Some(old) = view.by_mac.get(&lease.mac)
            && *old != lease.ip
        {
            staged.leases.remove(&old.octets());
        }
        let mut value = lease.mac.octets().to_vec();
        value.extend_from_slice(&lease.expires.to_be_bytes());
        staged.leases.insert(&lease.ip.octets(), value);
        staged.lease_ops += 1;
        view.insert(lease);
        Ok(!renewal)
    }

    /// Appends an event to the history of the node with this MAC (registered, discovered or
    /// staged as discovered); written and durable by the next [`Store::flush`] (for the DHCP
    /// loop's lease events). Returns whether there is such a node to add it to.
    pub fn stage_event(&self, mac: MacAddr, kind: EventKind, message: String) -> bool {
        let mut staged = lock(&self.staged);
        if !staged.discovered_set.contains(&mac) && !self.knows_mac(mac) {
            return false;
        }
        staged.events.push((mac, now(), kind, message));
        true
    }

    /// Ends a client's lease on `ip`, if it holds it (written and durable by the next
    /// [`Store::flush`]).
    pub fn stage_release(&self, mac: MacAddr, ip: std::net::Ipv4Addr) -> bool {
        let mut view = self.lease_view.write().unwrap_or_else(|e| e.into_inner());
        if view.by_ip.get(&ip).is_none_or(|l| l.mac != mac) {
            return false;
        }
        let mut staged = lock(&self.staged);
        staged.leases.remove(&ip.octets());
        staged.lease_ops += 1;
        view.remove(ip);
        true
    }

    /// New machines staged, or being recorded by a running flush: the DHCP loop's measure of
    /// how far behind the registry is.
    pub fn discoveries_pending(&self) -> usize {
        lock(&self.staged).discovered_set.len()
    }

    /// Notes a DHCP packet from `mac`, for the next [`Store::flush`] to write. A known
    /// machine's sighting is staged only if it says something new (another arch or vendor
    /// class, or a minute passed); an unknown one, when `discover`, is staged to be recorded
    /// as `discovered` with its sighting.
    pub fn stage_seen(&self, mac: MacAddr, sighting: Sighting, discover: bool) -> Seen {
        let mut staged = lock(&self.staged);
        let news = self
            .view()
            .find(&[NodeKey::Mac(mac)])
            .map(|(_, node)| sighting.news_over(node.last_seen.as_ref()));
        match news {
            Some(false) => Seen::Nothing,
            // Known, or staged (or being recorded) as discovered: the latest sighting wins.
            Some(true) => {
                staged.seen.insert(mac, sighting);
                Seen::Staged
            }
            None if staged.discovered_set.contains(&mac) => {
                staged.seen.insert(mac, sighting);
                Seen::Staged
            }
            None if discover => {
                staged.discovered_set.insert(mac);
                staged.discovered.push(mac);
                staged.seen.insert(mac, sighting);
                Seen::New
            }
            None => Seen::Nothing,
        }
    }

    pub fn lease_of(&self, mac: MacAddr) -> Option<Lease> {
        let view = self.lease_view.read().unwrap_or_else(|e| e.into_inner());
        view.by_mac
            .get(&mac)
            .and_then(|ip| view.by_ip.get(ip))
            .copied()
    }

    pub fn lease_at(&self, ip: std::net::Ipv4Addr) -> Option<Lease> {
        self.lease_view
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .by_ip
            .get(&ip)
            .copied()
    }

    /// Records a machine seen on the network as `discovered`, unless it is already known.
    /// Returns whether it was new. Durable after the next [`Store::flush`].
    pub fn record_discovered(&self, mac: MacAddr) -> Result<bool, StoreError> {
        self.record_discovered_many(&[(mac, None)])
            .map(|new| !new.is_empty())
    }

    /// [`Store::record_discovered`] for a batch of machines, in one transaction (the machines
    /// the DHCP loop staged are recorded at once). Returns the ones that were new.
    pub fn record_discovered_many(
        &self,
        machines: &[(MacAddr, Option<Sighting>)],
    ) -> Result<Vec<MacAddr>, StoreError> {
        let mut fresh: Vec<&(MacAddr, Option<Sighting>)> = Vec::new();
        {
            let view = self.view();
            let mut taken = std::collections::HashSet::new();
            for machine in machines {
                if view.find(&[NodeKey::Mac(machine.0)]).is_none() && taken.insert(machine.0) {
                    fresh.push(machine);
                }
            }
        }
        if fresh.is_empty() {
            return Ok(Vec::new());
        }
        let mut ids = Vec::with_capacity(fresh.len());
        for _ in &fresh {
            ids.push((self.db.generate_id()?, self.db.generate_id()?));
        }
        self.staged_tx_many(|tx| {
            let at = now();
            let mut recorded = Vec::new();
            let mut changes = Vec::new();
            for ((mac, sighting), (id, seq)) in fresh.iter().zip(&ids) {
                // Registered meanwhile by the API: theirs.
                if tx.id_for(&NodeKey::Mac(*mac))?.is_some() {
                    continue;
                }
                let node = Node {
                    last_seen: sighting.clone(),
                    ..Node::discovered(*mac, at)
                };
                tx.write(*id, &node)?;
                tx.append_event(*id, &discovered_event(*seq, at))?;
                recorded.push(*mac);
                changes.push((*id, Some(node)));
            }
            Ok((recorded, changes))
        })
    }

    /// A node's history, oldest first.
    pub fn events(&self, keys: &[NodeKey]) -> Result<Vec<Event>, StoreError> {
        let id = self.view().find(keys).map(|(id, _)| id).ok_or_else(|| {
            StoreError::NotFound(keys.first().map(ToString::to_string).unwrap_or_default())
        })?;
        self.events
            .scan_prefix(id.to_be_bytes())
            .values()
            .map(|v| records::decode_event(&v?))
            .collect()
    }
}

/// Opens the database. A store closed a moment ago (a restart in the same process, or the
/// previous daemon still exiting) can hold its file lock until sled's background flusher ends
/// (within its 500 ms period), so a held lock is retried for up to 3 s before it is an error.
fn open_db(dir: &Path) -> Result<sled::Db, StoreError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    loop {
        match sled::Config::new()
            .path(dir)
            .cache_capacity(64 * 1024 * 1024)
            .open()
        {
            Ok(db) => return Ok(db),
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

fn discovered_event(seq: u64, at: OffsetDateTime) -> Event {
    Event {
        seq,
        at,
        kind: EventKind::Created {
            state: NodeState::Discovered,
        },
        message: "seen on the network".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Hostname, LeaseAction, Role};

    fn new_node(mac: &str, host: &str, ip: &str) -> NewNode {
        NewNode {
            mac: mac.parse().unwrap(),
            hostname: host.parse().unwrap(),
            ip: ip.parse().unwrap(),
            role: Role::Worker,
            labels: Default::default(),
            install_disk: None,
            boot_file: None,
        }
    }

    fn host(h: &str) -> Vec<NodeKey> {
        vec![NodeKey::Hostname(h.parse::<Hostname>().unwrap())]
    }

    #[test]
    fn unique_fields_conflict_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store
            .create_node(&new_node("52:54:00:00:00:01", "kube01", "10.0.0.1"))
            .unwrap();
        for (n, field) in [
            (new_node("52:54:00:00:00:01", "kube02", "10.0.0.2"), "mac"),
            (
                new_node("52:54:00:00:00:02", "kube01", "10.0.0.2"),
                "hostname",
            ),
            (new_node("52:54:00:00:00:02", "kube02", "10.0.0.1"), "ip"),
        ] {
            match store.create_node(&n) {
                Err(StoreError::Conflict {
                    field: f, holder, ..
                }) => {
                    assert_eq!(f, field);
                    assert_eq!(holder, "kube01");
                }
                other => panic!("expected a {field} conflict, got {other:?}"),
            }
        }
        assert_eq!(store.list_nodes().unwrap().len(), 1);
    }

    #[test]
    fn address_generation_moves_only_with_reservations() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let g0 = store.address_generation();
        store
            .create_node(&new_node("52:54:00:00:00:01", "kube01", "10.0.0.1"))
            .unwrap();
        let g1 = store.address_generation();
        assert_ne!(g0, g1, "a new reservation");
        // A sighting changes the node (and `generation`), not its reservation.
        let generation = store.generation();
        let sighting = Sighting {
            at: OffsetDateTime::now_utc(),
            arch: Some(7),
            vendor_class: None,
        };
        let mac = "52:54:00:00:00:01".parse().unwrap();
        assert_eq!(store.stage_seen(mac, sighting, false), Seen::Staged);
        store.flush().unwrap();
        assert_ne!(store.generation(), generation);
        assert_eq!(store.address_generation(), g1);
        // Nor does a machine without an address.
        store
            .record_discovered("52:54:00:00:00:02".parse().unwrap())
            .unwrap();
        assert_eq!(store.address_generation(), g1);
        let patch = NodePatch {
            ip: Some("10.0.0.9".parse().unwrap()),
            ..Default::default()
        };
        store.update_node(&host("kube01"), &patch).unwrap();
        assert_ne!(store.address_generation(), g1, "a moved reservation");
    }

    #[test]
    fn patch_moves_indexes_and_frees_old_values() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store
            .create_node(&new_node("52:54:00:00:00:01", "kube01", "10.0.0.1"))
            .unwrap();
        let patch = NodePatch {
            hostname: Some("kube09".parse().unwrap()),
            ip: Some("10.0.0.9".parse().unwrap()),
            ..Default::default()
        };
        store.update_node(&host("kube01"), &patch).unwrap();
        assert!(matches!(
            store.get(&host("kube01")),
            Err(StoreError::NotFound(_))
        ));
        assert_eq!(
            store.get(&host("kube09")).unwrap().ip.unwrap().to_string(),
            "10.0.0.9"
        );
        // The old hostname and IP are free again.
        store
            .create_node(&new_node("52:54:00:00:00:02", "kube01", "10.0.0.1"))
            .unwrap();
    }

    #[test]
    fn transitions_are_checked_and_logged() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store
            .create_node(&new_node("52:54:00:00:00:01", "kube01", "10.0.0.1"))
            .unwrap();
        let err = store
            .transition(&host("kube01"), NodeState::Booted, "skip", None)
            .unwrap_err();
        assert!(matches!(err, StoreError::Transition { .. }), "{err}");
        store
            .transition(&host("kube01"), NodeState::Installing, "ipxe", None)
            .unwrap();
        let events = store.events(&host("kube01")).unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!(
            events[1].kind,
            EventKind::Transition {
                from: NodeState::Registered,
                to: NodeState::Installing
            }
        );
        assert!(events[0].seq < events[1].seq);
    }

    #[test]
    fn a_batch_of_discovered_machines_is_recorded_once_each() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store
            .create_node(&new_node("52:54:00:00:00:01", "kube01", "10.0.0.1"))
            .unwrap();
        let mac = |s: &str| s.parse::<MacAddr>().unwrap();
        let batch = [
            mac("52:54:00:00:00:01"), // registered: left alone
            mac("52:54:00:00:00:02"),
            mac("52:54:00:00:00:03"),
            mac("52:54:00:00:00:02"), // twice in one batch
        ];
        let batch: Vec<_> = batch.into_iter().map(|m| (m, None)).collect();
        let new = store.record_discovered_many(&batch).unwrap();
        assert_eq!(new, [mac("52:54:00:00:00:02"), mac("52:54:00:00:00:03")]);
        assert!(store.record_discovered_many(&batch).unwrap().is_empty());
        let nodes = store.list_nodes().unwrap();
        assert_eq!(nodes.len(), 3);
        let discovered: Vec<_> = nodes
            .iter()
            .filter(|n| n.state == NodeState::Discovered)
            .collect();
        assert_eq!(discovered.len(), 2);
        assert_eq!(
            store
                .events(&[NodeKey::Mac(mac("52:54:00:00:00:03"))])
                .unwrap()[0]
                .message,
            "seen on the network"
        );
    }

    #[test]
    fn staged_dhcp_writes_land_together_at_flush_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let mac = |s: &str| s.parse::<MacAddr>().unwrap();
        let (new, old) = (mac("52:54:00:00:00:07"), mac("52:54:00:00:00:08"));
        let ip = |s: &str| s.parse::<std::net::Ipv4Addr>().unwrap();
        let bound = |at: &str| EventKind::Lease {
            action: LeaseAction::Bound,
            ip: ip(at),
        };
        let t0 = OffsetDateTime::now_utc().replace_nanosecond(0).unwrap();
        let sighting = |at, arch| Sighting {
            at,
            arch: Some(arch),
            vendor_class: Some(format!("PXEClient:Arch:{arch:05}")),
        };
        {
            let store = Store::open(dir.path()).unwrap();
            assert!(store.record_discovered(old).unwrap());
            store.flush().unwrap();
            // A machine first seen in this window, its lease and its lease event.
            assert_eq!(store.stage_seen(new, sighting(t0, 0), true), Seen::New);
            assert_eq!(store.discoveries_pending(), 1);
            // Its second packet: staged once, the latest sighting kept.
            assert_eq!(store.stage_seen(new, sighting(t0, 7), true), Seen::Staged);
            assert_eq!(store.stage_seen(old, sighting(t0, 7), true), Seen::Staged);
            let unknown = mac("52:54:00:00:00:0a");
            assert_eq!(
                store.stage_seen(unknown, sighting(t0, 7), false),
                Seen::Nothing
            );
            let lease = |m, at: &str| Lease {
                ip: ip(at),
                mac: m,
                expires: 2_000_000_000,
            };
            assert!(store.stage_lease(lease(new, "10.0.0.50"), 0).unwrap());
            assert!(store.stage_event(new, bound("10.0.0.50"), "bound".into()));
            assert!(store.stage_lease(lease(old, "10.0.0.51"), 0).unwrap());
            assert!(store.stage_release(old, ip("10.0.0.51")));
            assert!(!store.stage_event(mac("52:54:00:00:00:09"), bound("10.0.0.52"), "x".into()));
            // Leases show at once; the machine only once it is written.
            assert_eq!(store.lease_of(new).unwrap().ip, ip("10.0.0.50"));
            assert!(!store.knows_mac(new));
            store.flush().unwrap();
            assert!(store.knows_mac(new));
            assert_eq!(store.discoveries_pending(), 0);
            assert!(!store.knows_mac(unknown), "not discovering: not recorded");
            // Within the minute, the same sighting is nothing new; another arch is.
            let later = t0 + time::Duration::seconds(30);
            assert_eq!(
                store.stage_seen(old, sighting(later, 7), true),
                Seen::Nothing
            );
            assert_eq!(
                store.stage_seen(old, sighting(later, 0), true),
                Seen::Staged
            );
            store.flush().unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        let seen = |m| store.get(&[NodeKey::Mac(m)]).unwrap().last_seen.unwrap();
        assert_eq!(seen(new), sighting(t0, 7));
        assert_eq!(seen(old).arch, Some(0));
        assert_eq!(store.lease_of(new).unwrap().ip, ip("10.0.0.50"));
        assert_eq!(store.lease_at(ip("10.0.0.51")), None, "released");
        let history = store.events(&[NodeKey::Mac(new)]).unwrap();
        let kinds: Vec<_> = history.iter().map(|e| e.message.as_str()).collect();
        assert_eq!(kinds, ["seen on the network", "bound"]);
        assert_eq!(history[1].kind, bound("10.0.0.50"));
    }

    #[test]
    fn delete_frees_everything() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store
            .create_node(&new_node("52:54:00:00:00:01", "kube01", "10.0.0.1"))
            .unwrap();
        store.delete_node(&host("kube01")).unwrap();
        assert!(store.list_nodes().unwrap().is_empty());
        assert_eq!(store.events.len(), 0);
        store
            .create_node(&new_node("52:54:00:00:00:01", "kube01", "10.0.0.1"))
            .unwrap();
    }

    #[test]
    fn newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            store
                .db
                .open_tree("meta")
                .unwrap()
                .insert("schema_version", &99u32.to_be_bytes())
                .unwrap();
            store.db.flush().unwrap();
        }
        match Store::open(dir.path()) {
            Err(StoreError::SchemaTooNew { found: 99, .. }) => {}
            other => panic!("expected SchemaTooNew, got {:?}", other.err()),
        }
    }
}

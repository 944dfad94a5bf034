//! The in-memory read model of the registry: every node, indexed by MAC and hostname. Only
//! the store changes it, after a write is durable; see the invariants in `store/mod.rs`.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use time::OffsetDateTime;

use crate::model::{BootFile, Hostname, MacAddr, Node, NodeIp, NodeKey, NodeState, Sighting};

/// Tombstones (versions of deleted nodes) beyond which the store drops them when it can.
pub(super) const TOMBSTONES_KEPT: usize = 1024;

/// How many distinct vendor classes (DHCP option 60) compact records share; a machine with
/// another one is held in full (a LAN client inventing vendor classes gains nothing).
const MAX_VENDOR_CLASSES: usize = 256;

#[derive(Default)]
pub(super) struct View {
    /// Every node that is not held compactly, by id (registration order).
    full: BTreeMap<u64, Node>,
    /// Discovered machines that are only a MAC and their sightings, which is what almost every
    /// discovered machine is: 48 bytes each instead of a full [`Node`]'s 304 plus its place
    /// in a map (issue #16: memory per discovered machine).
    seen: SeenTable,
    /// The version last applied per node id held in full, and per deleted id, so that a late,
    /// older change can never overwrite a newer one (compact records carry their own).
    versions: HashMap<u64, u64>,
    by_mac: HashMap<MacAddr, u64>,
    by_hostname: HashMap<Hostname, u64>,
    /// The vendor classes compact records point at, each stored once.
    vendor_classes: VendorClasses,
    /// How many entries of `versions` are of deleted nodes.
    tombstones: usize,
    generation: u64,
    /// Moves only when what DHCP reservations derive from a node changes
    /// ([`reservation_facts`]), not on every change of a node with an address (a sighting).
    address_generation: u64,
    /// Moves only when a change touches a node [`View::registered`] shows (before or after
    /// it): what the DNS zone is built from. A discovered machine's arrival, sighting or
    /// eviction leaves it, and so the zone and the DNS answers already sent.
    registered_generation: u64,
    /// How many nodes [`View::registered`] shows.
    registered_count: u64,
}

/// A discovered machine with nothing but its MAC, when it was first seen and its last DHCP
/// sighting: [`Compact::to_node`] gives back exactly the node it was made from.
struct Compact {
    id: u64,
    version: u64,
    /// Unix nanoseconds, UTC (created, updated and in its state since then: all equal).
    created: i64,
    /// Unix nanoseconds of the last sighting, when `sighted`.
    seen_at: i64,
    mac: MacAddr,
    arch: Option<u16>,
    /// In [`VendorClasses`]: 0 none, `i + 1` the `i`-th.
    vendor_class: u16,
    sighted: bool,
    /// Removed; dropped from the table at its next compaction.
    dead: bool,
}

/// Vendor classes by index, each stored once; at most [`MAX_VENDOR_CLASSES`].
#[derive(Default)]
struct VendorClasses {
    names: Vec<Arc<str>>,
    index: HashMap<Arc<str>, u16>,
}

impl VendorClasses {
    /// The index of `name` (0 for none), if it has or can be given one.
    fn intern(&mut self, name: Option<&str>) -> Option<u16> {
        let Some(name) = name else { return Some(0) };
        if let Some(i) = self.index.get(name) {
            return Some(*i);
        }
        if self.names.len() >= MAX_VENDOR_CLASSES {
            return None;
        }
        let shared: Arc<str> = Arc::from(name);
        self.names.push(shared.clone());
        let i = u16::try_from(self.names.len()).expect("bounded by MAX_VENDOR_CLASSES");
        self.index.insert(shared, i);
        Some(i)
    }

    fn name(&self, i: u16) -> Option<&str> {
        (i > 0).then(|| &*self.names[usize::from(i) - 1])
    }
}

/// The compact records in id order, in a vector: no hash table's slack (a table at 46 % load
/// after doubling, all of it touched, is half empty; a vector's unused capacity is never
/// touched). Found by binary search; a removal marks the record dead, and the dead are
/// dropped once they are a quarter of the table.
#[derive(Default)]
struct SeenTable {
    records: Vec<Compact>,
    dead: usize,
}

impl SeenTable {
    fn position(&self, id: u64) -> Result<usize, usize> {
        self.records.binary_search_by_key(&id, |c| c.id)
    }

    fn get(&self, id: u64) -> Option<&Compact> {
        self.position(id)
            .ok()
            .map(|i| &self.records[i])
            .filter(|c| !c.dead)
    }

    fn insert(&mut self, record: Compact) {
        match self.position(record.id) {
            Ok(i) => {
                if self.records[i].dead {
                    self.dead -= 1;
                }
                self.records[i] = record;
            }
            // New machines have the highest ids: almost always a push.
            Err(i) => self.records.insert(i, record),
        }
    }

    fn remove(&mut self, id: u64) -> Option<MacAddr> {
        let i = self.position(id).ok()?;
        let record = &mut self.records[i];
        if record.dead {
            return None;
        }
        record.dead = true;
        self.dead += 1;
        let mac = record.mac;
        if self.dead > 64 && self.dead * 4 > self.records.len() {
            self.records.retain(|c| !c.dead);
            self.dead = 0;
            if self.records.capacity() > 2 * self.records.len() + 64 {
                self.records.shrink_to_fit();
            }
        }
        Some(mac)
    }

    fn len(&self) -> usize {
        self.records.len() - self.dead
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn iter(&self) -> impl Iterator<Item = &Compact> {
        self.records.iter().filter(|c| !c.dead)
    }
}

fn nanos(t: OffsetDateTime) -> Option<i64> {
    if !t.offset().is_utc() {
        return None;
    }
    i64::try_from(t.unix_timestamp_nanos()).ok()
}

fn instant(nanos: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(nanos))
        .expect("an i64 of nanoseconds is within time's range")
}

impl Compact {
    /// The compact record of `node`, if it has that shape. The pattern names every field of
    /// [`Node`], so a field added there fails to compile here instead of being dropped.
    fn of(
        id: u64,
        node: &Node,
        version: u64,
        vendor_classes: &mut VendorClasses,
    ) -> Option<Compact> {
        let Node {
            mac,
            hostname: None,
            ip: None,
            role: None,
            labels,
            install_disk: None,
            boot_file: None,
            state: NodeState::Discovered,
            failure: None,
            callback_secret: None,
            ssh_host_key: None,
            last_seen,
            created_at,
            updated_at,
            state_since,
        } = node
        else {
            return None;
        };
        if !labels.is_empty() || updated_at != created_at || state_since != created_at {
            return None;
        }
        let created = nanos(*created_at)
            .filter(|_| updated_at.offset().is_utc() && state_since.offset().is_utc())?;
        let (sighted, seen_at, arch, vendor_class) = match last_seen {
            None => (false, 0, None, 0),
            Some(s) => (
                true,
                nanos(s.at)?,
                s.arch,
                vendor_classes.intern(s.vendor_class.as_deref())?,
            ),
        };
        Some(Compact {
            id,
            version,
            created,
            seen_at,
            vendor_class,
            mac: *mac,
            arch,
            sighted,
            dead: false,
        })
    }

    fn to_node(&self, vendor_classes: &VendorClasses) -> Node {
        Node {
            last_seen: self.sighted.then(|| Sighting {
                at: instant(self.seen_at),
                arch: self.arch,
                vendor_class: vendor_classes.name(self.vendor_class).map(str::to_owned),
            }),
            ..Node::discovered(self.mac, instant(self.created))
        }
    }

    /// When the machine was last seen (its last sighting, or when it was first seen).
    fn last_seen_at(&self) -> OffsetDateTime {
        instant(if self.sighted {
            self.seen_at
        } else {
            self.created
        })
    }
}

/// What DHCP's reservations are built from: a node with an address, its MAC, whether it is
/// only discovered, and its boot file. (Compact records have no address: none.)
fn reservation_facts(n: &Node) -> Option<(MacAddr, NodeIp, bool, Option<&BootFile>)> {
    n.ip.map(|ip| {
        (
            n.mac,
            ip,
            n.state == NodeState::Discovered,
            n.boot_file.as_ref(),
        )
    })
}

impl View {
    /// Shows `node` (or its deletion) as node `id`'s state at `version`, unless the view
    /// already holds a newer one.
    pub(super) fn apply(&mut self, id: u64, version: u64, node: Option<Node>) {
        let held = self
            .seen
            .get(id)
            .map(|c| c.version)
            .or_else(|| self.versions.get(&id).copied());
        if held.is_some_and(|held| held >= version) && version != 0 {
            return;
        }
        let was_tombstone = self.versions.contains_key(&id)
            && !self.full.contains_key(&id)
            && self.seen.get(id).is_none();
        if self.full.get(&id).and_then(reservation_facts)
            != node.as_ref().and_then(reservation_facts)
        {
            self.address_generation += 1;
        }
        let registered = |n: &Node| n.state != NodeState::Discovered;
        let (was_registered, now_registered) = (
            self.full.get(&id).is_some_and(registered),
            node.as_ref().is_some_and(registered),
        );
        if was_registered || now_registered {
            self.registered_generation += 1;
        }
        self.registered_count =
            self.registered_count + u64::from(now_registered) - u64::from(was_registered);
        // Take out what was held, then put in the new state: index entries are removed only
        // if they still point here (another node may already hold a value this one gave up,
        // its change applied first).
        let old_mac = if let Some(old) = self.full.remove(&id) {
            if let Some(h) = &old.hostname
                && self.by_hostname.get(h) == Some(&id)
            {
                self.by_hostname.remove(h);
            }
            Some(old.mac)
        } else {
            self.seen.remove(id)
        };
        if let Some(mac) = old_mac
            && self.by_mac.get(&mac) == Some(&id)
        {
            self.by_mac.remove(&mac);
        }
        match node {
            Some(node) => {
                self.by_mac.insert(node.mac, id);
                match Compact::of(id, &node, version, &mut self.vendor_classes) {
                    Some(compact) => {
                        self.versions.remove(&id);
                        self.seen.insert(compact);
                    }
                    None => {
                        self.versions.insert(id, version);
                        if let Some(h) = &node.hostname {
                            self.by_hostname.insert(h.clone(), id);
                        }
                        self.full.insert(id, node);
                    }
                }
            }
            None => {
                self.versions.insert(id, version);
            }
        }
        let is_tombstone = self.versions.contains_key(&id)
            && !self.full.contains_key(&id)
            && self.seen.get(id).is_none();
        match (was_tombstone, is_tombstone) {
            (false, true) => self.tombstones += 1,
            (true, false) => self.tombstones -= 1,
            _ => {}
        }
        self.generation += 1;
    }

    /// How many registered (not only discovered) nodes the view holds.
    pub(super) fn registered_count(&self) -> u64 {
        self.registered_count
    }

    pub(super) fn tombstones(&self) -> usize {
        self.tombstones
    }

    /// Forgets the versions of deleted nodes: only when no write older than them can still
    /// be applied ([`super::Store`] knows when).
    pub(super) fn drop_tombstones(&mut self) {
        let full = &self.full;
        self.versions.retain(|id, _| full.contains_key(id));
        self.versions.shrink_to_fit();
        self.tombstones = 0;
    }

    /// The id of the node named by the first of `keys` that names one.
    pub(super) fn find_id(&self, keys: &[NodeKey]) -> Option<u64> {
        keys.iter().find_map(|key| match key {
            NodeKey::Hostname(h) => self.by_hostname.get(h).copied(),
            NodeKey::Mac(m) => self.by_mac.get(m).copied(),
            NodeKey::Id(id) => self.by_id(id.0).map(|_| id.0),
        })
    }

    pub(super) fn find(&self, keys: &[NodeKey]) -> Option<(u64, Cow<'_, Node>)> {
        let id = self.find_id(keys)?;
        self.by_id(id).map(|n| (id, n))
    }

    pub(super) fn by_id(&self, id: u64) -> Option<Cow<'_, Node>> {
        match self.full.get(&id) {
            Some(n) => Some(Cow::Borrowed(n)),
            None => self
                .seen
                .get(id)
                .map(|c| Cow::Owned(c.to_node(&self.vendor_classes))),
        }
    }

    /// A node's MAC and hostname, without making a copy of it.
    pub(super) fn identity(&self, id: u64) -> Option<(MacAddr, Option<&Hostname>)> {
        match self.full.get(&id) {
            Some(n) => Some((n.mac, n.hostname.as_ref())),
            None => self.seen.get(id).map(|c| (c.mac, None)),
        }
    }

    /// Whether `sighting` says something the stored one of the node with this MAC does not
    /// ([`Sighting::news_over`]); `None` if no node has this MAC.
    pub(super) fn sighting_news(&self, mac: MacAddr, sighting: &Sighting) -> Option<bool> {
        let id = self.by_mac.get(&mac)?;
        if let Some(n) = self.full.get(id) {
            return Some(sighting.news_over(n.last_seen.as_ref()));
        }
        let c = self.seen.get(*id)?;
        Some(
            !c.sighted
                || c.arch != sighting.arch
                || self.vendor_classes.name(c.vendor_class) != sighting.vendor_class.as_deref()
                || sighting.at - instant(c.seen_at) >= Sighting::RESOLUTION,
        )
    }

    /// Every node, in registration order (compact records made into nodes).
    pub(super) fn nodes(&self) -> impl Iterator<Item = Cow<'_, Node>> {
        let mut compact = self.seen.iter().peekable();
        let mut full = self.full.iter().peekable();
        let vendors = &self.vendor_classes;
        std::iter::from_fn(move || match (full.peek(), compact.peek()) {
            (Some((f, _)), Some(c)) if c.id < **f => {
                compact.next().map(|c| Cow::Owned(c.to_node(vendors)))
            }
            (Some(_), _) => full.next().map(|(_, n)| Cow::Borrowed(n)),
            (None, _) => compact.next().map(|c| Cow::Owned(c.to_node(vendors))),
        })
    }

    /// Every node but the machines that are only discovered, in registration order, without
    /// copies: what the DHCP reservations, the DNS zone and the cluster read.
    pub(super) fn registered_with_ids(
        &self,
    ) -> impl Iterator<Item = (crate::model::NodeId, &Node)> {
        self.full
            .iter()
            .filter(|(_, n)| n.state != NodeState::Discovered)
            .map(|(id, n)| (crate::model::NodeId(*id), n))
    }

    pub(super) fn registered(&self) -> impl Iterator<Item = &Node> {
        self.full
            .values()
            .filter(|n| n.state != NodeState::Discovered)
    }

    /// How many nodes are in each state.
    pub(super) fn count_by_state(&self) -> BTreeMap<NodeState, u64> {
        let mut counts = BTreeMap::new();
        for n in self.full.values() {
            *counts.entry(n.state).or_default() += 1;
        }
        if !self.seen.is_empty() {
            *counts.entry(NodeState::Discovered).or_default() += self.seen.len() as u64;
        }
        counts
    }

    /// Every discovered machine's id and when it was last seen (its last sighting, or when
    /// it was first seen).
    pub(super) fn discovered_last_seen(&self) -> impl Iterator<Item = (u64, OffsetDateTime)> {
        let full = self
            .full
            .iter()
            .filter(|(_, n)| n.state == NodeState::Discovered)
            .map(|(id, n)| (*id, n.last_seen.as_ref().map_or(n.created_at, |s| s.at)));
        full.chain(self.seen.iter().map(|c| (c.id, c.last_seen_at())))
    }

    pub(super) fn generation(&self) -> u64 {
        self.generation
    }

    pub(super) fn address_generation(&self) -> u64 {
        self.address_generation
    }

    pub(super) fn registered_generation(&self) -> u64 {
        self.registered_generation
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(mac: &str, host: &str) -> Node {
        let now = time::OffsetDateTime::UNIX_EPOCH;
        Node {
            hostname: Some(host.parse().unwrap()),
            state: NodeState::Registered,
            ..Node::discovered(mac.parse().unwrap(), now)
        }
    }

    fn host(h: &str) -> Vec<NodeKey> {
        vec![NodeKey::Hostname(h.parse().unwrap())]
    }

    #[test]
    fn older_changes_applied_late_are_ignored() {
        let mut v = View::default();
        v.apply(1, 5, Some(node("52:54:00:00:00:01", "b")));
        v.apply(1, 4, Some(node("52:54:00:00:00:01", "a")));
        assert!(v.find(&host("a")).is_none());
        assert_eq!(v.find(&host("b")).unwrap().0, 1);
        v.apply(1, 7, None);
        v.apply(1, 6, Some(node("52:54:00:00:00:01", "c")));
        assert_eq!(
            v.nodes().count(),
            0,
            "a deletion is not undone by an older write"
        );
    }

    fn discovered(mac: &str, vendor: Option<&str>) -> Node {
        let at = OffsetDateTime::from_unix_timestamp_nanos(1_795_000_000_123_456_789).unwrap();
        Node {
            last_seen: Some(Sighting {
                at: at + time::Duration::seconds(90),
                arch: Some(7),
                vendor_class: vendor.map(str::to_owned),
            }),
            ..Node::discovered(mac.parse().unwrap(), at)
        }
    }

    fn mac(m: &str) -> Vec<NodeKey> {
        vec![NodeKey::Mac(m.parse().unwrap())]
    }

    #[test]
    fn discovered_machines_are_held_compactly_and_given_back_exactly() {
        let mut v = View::default();
        let plain = discovered(
            "52:54:00:00:00:01",
            Some("PXEClient:Arch:00007:UNDI:003016"),
        );
        let never_sighted = Node::discovered(
            "52:54:00:00:00:02".parse().unwrap(),
            OffsetDateTime::now_utc(),
        );
        let labelled = Node {
            labels: [("rack".to_owned(), "a".to_owned())].into_iter().collect(),
            ..discovered("52:54:00:00:00:03", None)
        };
        let offset = Node::discovered(
            "52:54:00:00:00:04".parse().unwrap(),
            OffsetDateTime::now_utc().to_offset(time::UtcOffset::from_hms(2, 0, 0).unwrap()),
        );
        for (id, n) in [&plain, &never_sighted, &labelled, &offset]
            .into_iter()
            .enumerate()
        {
            v.apply(id as u64 + 1, 1, Some(n.clone()));
        }
        assert_eq!(v.seen.len(), 2, "the plain ones are compact");
        assert_eq!(
            v.full.len(),
            2,
            "labels or a non-UTC time keep a node in full"
        );
        for (id, n) in [&plain, &never_sighted, &labelled, &offset]
            .into_iter()
            .enumerate()
        {
            let held = v.by_id(id as u64 + 1).unwrap();
            assert_eq!(*held, *n);
            assert_eq!(held.created_at.offset(), n.created_at.offset());
        }
        let listed: Vec<Node> = v.nodes().map(Cow::into_owned).collect();
        assert_eq!(listed, vec![plain.clone(), never_sighted, labelled, offset]);
        assert_eq!(v.count_by_state()[&NodeState::Discovered], 4);
        assert_eq!(v.registered().count(), 0);

        // Adopted: held in full, found by its new name, no longer compact.
        let adopted = Node {
            hostname: Some("kube07".parse().unwrap()),
            state: NodeState::Registered,
            ..plain.clone()
        };
        v.apply(1, 2, Some(adopted.clone()));
        assert_eq!(v.seen.len(), 1);
        assert_eq!(v.find(&host("kube07")).unwrap().1.into_owned(), adopted);
        assert_eq!(v.find(&mac("52:54:00:00:00:01")).unwrap().0, 1);
        assert_eq!(v.registered().count(), 1);
        // A late, older write of the compact form does not bring it back.
        v.apply(1, 1, Some(plain));
        assert_eq!(*v.by_id(1).unwrap(), adopted);
        // Removed: gone from every index, and an older write stays ignored.
        v.apply(2, 5, None);
        assert!(v.find(&mac("52:54:00:00:00:02")).is_none());
        v.apply(2, 4, Some(discovered("52:54:00:00:00:02", None)));
        assert!(v.by_id(2).is_none());
    }

    #[test]
    fn discovered_machines_do_not_move_what_the_zone_is_built_from() {
        let mut v = View::default();
        v.apply(1, 1, Some(node("52:54:00:00:00:01", "kube01")));
        let g = v.registered_generation();
        assert_eq!(g, 1);
        v.apply(2, 2, Some(discovered("52:54:00:00:00:02", None)));
        v.apply(
            2,
            3,
            Some(discovered("52:54:00:00:00:02", Some("PXEClient"))),
        );
        v.apply(2, 4, None);
        assert_eq!(v.registered_generation(), g, "arrival, sighting, eviction");
        assert_eq!(v.generation(), 4);
        v.apply(3, 5, Some(discovered("52:54:00:00:00:03", None)));
        let adopted = Node {
            hostname: Some("kube03".parse().unwrap()),
            state: NodeState::Registered,
            ..discovered("52:54:00:00:00:03", None)
        };
        v.apply(3, 6, Some(adopted));
        assert_eq!(v.registered_generation(), g + 1, "adoption");
        v.apply(1, 7, None);
        assert_eq!(v.registered_generation(), g + 2, "removal");
    }

    #[test]
    fn removals_and_late_inserts_keep_the_compact_table_in_order() {
        let mut v = View::default();
        let m = |i: u64| format!("52:54:00:01:{:02x}:{:02x}", i / 256, i % 256);
        for i in (1..=1000).step_by(2) {
            v.apply(i, 1, Some(discovered(&m(i), None)));
        }
        // An older id arrives late (a transaction that committed first, applied last).
        v.apply(500, 1, Some(discovered(&m(500), None)));
        for i in (1..=1000).step_by(2).take(400) {
            v.apply(i, 2, None);
        }
        assert!(v.seen.records.len() < 400, "the dead were dropped");
        let ids: Vec<u64> = v
            .nodes()
            .map(|n| v.find_id(&[NodeKey::Mac(n.mac)]).unwrap())
            .collect();
        let expected: Vec<u64> = (801..=1000)
            .step_by(2)
            .chain([500])
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        assert_eq!(ids, expected);
        assert_eq!(v.count_by_state()[&NodeState::Discovered], 101);
        for i in (1..=799).step_by(2) {
            assert!(v.by_id(i).is_none());
            assert!(v.find_id(&mac(&m(i))).is_none());
        }
        // A removed id cannot come back with an older write.
        v.apply(1, 1, Some(discovered(&m(1), None)));
        assert!(v.by_id(1).is_none());
    }

    #[test]
    fn a_compact_record_judges_a_sighting_as_the_node_would() {
        let mut v = View::default();
        let n = discovered("52:54:00:00:00:01", Some("PXEClient"));
        v.apply(1, 1, Some(n.clone()));
        assert_eq!(v.seen.len(), 1);
        let stored = n.last_seen.clone().unwrap();
        for (dt, arch, vendor) in [
            (0, Some(7), Some("PXEClient")),
            (59, Some(7), Some("PXEClient")),
            (60, Some(7), Some("PXEClient")),
            (1, Some(0), Some("PXEClient")),
            (1, None, Some("PXEClient")),
            (1, Some(7), None),
            (1, Some(7), Some("iPXE")),
            (-30, Some(7), Some("PXEClient")),
        ] {
            let s = Sighting {
                at: stored.at + time::Duration::seconds(dt),
                arch,
                vendor_class: vendor.map(str::to_owned),
            };
            assert_eq!(
                v.sighting_news("52:54:00:00:00:01".parse().unwrap(), &s),
                Some(s.news_over(Some(&stored))),
                "{s:?}"
            );
        }
        assert_eq!(
            v.sighting_news("52:54:00:00:00:09".parse().unwrap(), &stored),
            None
        );
    }

    #[test]
    fn vendor_classes_are_shared_and_bounded() {
        let mut v = View::default();
        for i in 0..(MAX_VENDOR_CLASSES as u64 + 10) {
            let m = format!("52:54:00:00:{:02x}:{:02x}", i / 256, i % 256);
            v.apply(i + 1, 1, Some(discovered(&m, Some(&format!("class-{i}")))));
            v.apply(
                i + 100_000,
                1,
                Some(discovered(
                    &format!("52:54:01:00:{:02x}:{:02x}", i / 256, i % 256),
                    Some("PXEClient"),
                )),
            );
        }
        assert_eq!(v.vendor_classes.names.len(), MAX_VENDOR_CLASSES);
        // 267 distinct classes ("PXEClient" among them): the 11 beyond the bound, in full.
        assert_eq!(v.full.len(), 11, "beyond the bound, held in full");
        assert_eq!(v.seen.len(), 2 * (MAX_VENDOR_CLASSES + 10) - 11);
        assert_eq!(
            v.by_id(MAX_VENDOR_CLASSES as u64 + 5)
                .unwrap()
                .last_seen
                .as_ref()
                .unwrap()
                .vendor_class
                .as_deref(),
            Some(format!("class-{}", MAX_VENDOR_CLASSES + 4).as_str())
        );
    }

    #[test]
    fn a_released_name_taken_by_another_node_stays_with_it() {
        let mut v = View::default();
        v.apply(1, 1, Some(node("52:54:00:00:00:01", "kube01")));
        // Node 2 takes "kube01" at version 3, after node 1 renamed itself at version 2, but
        // the rename's flush finishes last.
        v.apply(2, 3, Some(node("52:54:00:00:00:02", "kube01")));
        v.apply(1, 2, Some(node("52:54:00:00:00:01", "kube09")));
        assert_eq!(v.find(&host("kube01")).unwrap().0, 2);
        assert_eq!(v.find(&host("kube09")).unwrap().0, 1);
    }
}

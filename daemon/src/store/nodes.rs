//! Nodes: the records, their unique indexes (MAC, hostname, IP) and every write that changes
//! them, each one sled transaction that also appends the node's event.

use std::sync::atomic::Ordering;

use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionalTree, abort};
use time::OffsetDateTime;

use super::events::event_key;
use super::{FeedChange, FeedItem, Store, StoreError, TxResult, decode_id, now, schema};
use crate::model::{
    Event, EventKind, Failure, MacAddr, NewNode, Node, NodeKey, NodePatch, NodeState, Sighting,
    check_transition,
};

/// What one write transaction did to one node, for the view: its id and its new value
/// (`None` once deleted).
pub(super) type Change = (u64, Option<Node>);

/// A committed transaction: its result, its change(s), its version, and the events it
/// appended by node id.
pub(super) type Committed<T, C> = (T, C, u64, Vec<(u64, Event)>);

/// The trees one node write touches, as seen inside a transaction.
pub(super) struct Tx<'a> {
    pub(super) nodes: &'a TransactionalTree,
    pub(super) by_mac: &'a TransactionalTree,
    pub(super) by_hostname: &'a TransactionalTree,
    pub(super) by_ip: &'a TransactionalTree,
    pub(super) events: &'a TransactionalTree,
    /// The events this attempt appended, by node id: published to the feed once it commits.
    pub(super) appended: std::cell::RefCell<Vec<(u64, Event)>>,
}

impl Tx<'_> {
    pub(super) fn id_for(&self, key: &NodeKey) -> TxResult<Option<u64>> {
        let found = match key {
            NodeKey::Hostname(h) => self.by_hostname.get(h.as_str().as_bytes())?,
            NodeKey::Mac(m) => self.by_mac.get(m.octets())?,
            NodeKey::Id(id) => {
                return Ok(self
                    .nodes
                    .get(id.0.to_be_bytes())?
                    .is_some()
                    .then_some(id.0));
            }
        };
        Ok(found.map(|v| decode_id(&v)))
    }

    /// Finds the node for the first of `keys` that names one.
    pub(super) fn resolve(&self, keys: &[NodeKey]) -> TxResult<(u64, Node)> {
        for key in keys {
            if let Some(id) = self.id_for(key)? {
                return Ok((id, self.load(id)?));
            }
        }
        let name = keys.first().map(ToString::to_string).unwrap_or_default();
        abort(StoreError::NotFound(name))
    }

    pub(super) fn load(&self, id: u64) -> TxResult<Node> {
        match self.nodes.get(id.to_be_bytes())? {
            Some(bytes) => schema::decode_node(&bytes).map_err(ConflictableTransactionError::Abort),
            None => abort(StoreError::Corrupt(format!(
                "an index points at node id {id}, which does not exist"
            ))),
        }
    }

    pub(super) fn holder_name(&self, id: u64) -> TxResult<String> {
        Ok(self.load(id)?.display_name())
    }

    /// Fails with `Conflict` when another node than `own_id` holds `node`'s MAC, hostname or IP.
    pub(super) fn check_unique(&self, own_id: u64, node: &Node) -> TxResult<()> {
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

    pub(super) fn remove_indexes(&self, node: &Node) -> TxResult<()> {
        self.by_mac.remove(&node.mac.octets())?;
        if let Some(h) = &node.hostname {
            self.by_hostname.remove(h.as_str().as_bytes())?;
        }
        if let Some(ip) = node.ip {
            self.by_ip.remove(&ip.addr().octets())?;
        }
        Ok(())
    }

    pub(super) fn write(&self, id: u64, node: &Node) -> TxResult<()> {
        let id_bytes = id.to_be_bytes();
        self.nodes.insert(&id_bytes, schema::encode_node(node))?;
        self.by_mac.insert(&node.mac.octets(), &id_bytes)?;
        if let Some(h) = &node.hostname {
            self.by_hostname.insert(h.as_str().as_bytes(), &id_bytes)?;
        }
        if let Some(ip) = node.ip {
            self.by_ip.insert(&ip.addr().octets(), &id_bytes)?;
        }
        Ok(())
    }

    pub(super) fn append_event(&self, id: u64, event: &Event) -> TxResult<()> {
        self.events
            .insert(&event_key(id, event.seq), schema::encode_event(event))?;
        self.appended.borrow_mut().push((id, event.clone()));
        Ok(())
    }
}

/// Counts a node write from before its transaction until its change is in the view (or it
/// failed), for [`Store::prune_tombstones`].
struct Writing<'a>(&'a Store);

impl<'a> Writing<'a> {
    fn start(store: &'a Store) -> Self {
        store.writers.fetch_add(1, Ordering::SeqCst);
        Writing(store)
    }
}

impl Drop for Writing<'_> {
    fn drop(&mut self) {
        self.0.writers.fetch_sub(1, Ordering::SeqCst);
        self.0.prune_tombstones();
    }
}

impl Store {
    /// Runs `f` in one serialisable transaction over every node tree, makes it durable, then
    /// shows the node's change in the view.
    pub(super) fn write_tx<T>(
        &self,
        f: impl Fn(&Tx<'_>) -> TxResult<(T, Change)>,
    ) -> Result<T, StoreError> {
        let writing = Writing::start(self);
        let (out, (id, node), version, appended) = self.commit(f)?;
        self.flush_db()?;
        let removed = self.apply_to_view(version, vec![(id, node)]);
        drop(writing);
        self.publish(appended, removed)?;
        Ok(out)
    }

    /// [`Store::write_tx`] without the flush, changing any number of nodes, for a caller that
    /// flushes a batch at once and acknowledges nothing before (the DHCP loop). Its changes
    /// show in the view at once.
    pub(super) fn staged_tx_many<T>(
        &self,
        f: impl Fn(&Tx<'_>) -> TxResult<(T, Vec<Change>)>,
    ) -> Result<T, StoreError> {
        let writing = Writing::start(self);
        let (out, changes, version, appended) = self.commit(f)?;
        let removed = self.apply_to_view(version, changes);
        drop(writing);
        self.publish(appended, removed)?;
        Ok(out)
    }

    /// Drops the view's tombstones (the versions of deleted nodes) once there are many and no
    /// node write is under way: a write not yet started commits with a higher version than
    /// any of them, so none is needed to turn away a late, older change. Without this, every
    /// discovered machine evicted or expired would leave its tombstone for the daemon's life.
    fn prune_tombstones(&self) {
        if self.view().tombstones() < super::view::TOMBSTONES_KEPT {
            return;
        }
        let mut view = self.view_mut();
        // Under the view's lock: a writer that starts after this check commits after it.
        if self.writers.load(Ordering::SeqCst) == 0 {
            view.drop_tombstones();
        }
    }

    /// Shows committed changes in the view; returns the nodes they removed, as they were.
    fn apply_to_view(&self, version: u64, changes: Vec<Change>) -> Vec<(u64, Node)> {
        let mut view = self.view_mut();
        let mut removed = Vec::new();
        for (id, node) in changes {
            if node.is_none()
                && let Some(old) = view.by_id(id)
            {
                removed.push((id, old.into_owned()));
            }
            view.apply(id, version, node);
        }
        removed
    }

    /// Hands committed events, then removals (numbered now, after them), to the feed.
    pub(super) fn publish(
        &self,
        appended: Vec<(u64, Event)>,
        removed: Vec<(u64, Node)>,
    ) -> Result<(), StoreError> {
        let mut items = Vec::with_capacity(appended.len() + removed.len());
        {
            let view = self.view();
            for (id, event) in appended {
                let Some((mac, hostname)) = view.identity(id) else {
                    continue; // removed by the same write; its removal follows
                };
                items.push(FeedItem {
                    seq: event.seq,
                    node_id: id,
                    mac,
                    hostname: hostname.map(ToString::to_string),
                    change: FeedChange::Event(event),
                });
            }
        }
        let mut tickets = Vec::with_capacity(removed.len());
        for (id, node) in removed {
            let ticket = self.feed.ticket(&self.db)?;
            items.push(FeedItem {
                seq: ticket.seq,
                node_id: id,
                mac: node.mac,
                hostname: node.hostname.as_ref().map(ToString::to_string),
                change: FeedChange::Removed { at: now() },
            });
            tickets.push(ticket);
        }
        self.feed.publish(items);
        Ok(())
    }

    /// The transaction itself, returning its result, its change(s) and its commit version.
    pub(super) fn commit<T, C>(
        &self,
        f: impl Fn(&Tx<'_>) -> TxResult<(T, C)>,
    ) -> Result<Committed<T, C>, StoreError> {
        let committed = {
            let _shared = self.snapshot.read().unwrap_or_else(|e| e.into_inner());
            self.commit_inner(f)
        };
        if let Err(StoreError::Io(e)) = &committed {
            self.note_failure(e);
        }
        committed
    }

    fn commit_inner<T, C>(
        &self,
        f: impl Fn(&Tx<'_>) -> TxResult<(T, C)>,
    ) -> Result<Committed<T, C>, StoreError> {
        let committed = (
            &self.nodes,
            &self.by_mac,
            &self.by_hostname,
            &self.by_ip,
            &self.events,
        )
            .transaction(|(nodes, by_mac, by_hostname, by_ip, events)| {
                let tx = Tx {
                    nodes,
                    by_mac,
                    by_hostname,
                    by_ip,
                    events,
                    appended: Default::default(),
                };
                let (out, change) = f(&tx)?;
                // Still inside the transaction, so under sled's global transaction lock: the
                // version that commits is higher than every version committed before it.
                let version = self.commit_version.fetch_add(1, Ordering::SeqCst);
                Ok((out, change, version, tx.appended.into_inner()))
            })?;
        Ok(committed)
    }

    /// Registers a node. A MAC that is only `discovered` is adopted: the record becomes
    /// `registered` with the operator's data, keeping its history.
    pub fn create_node(&self, new: &NewNode) -> Result<Node, StoreError> {
        let fresh_id = self.db.generate_id()?;
        let ticket = self.feed.ticket(&self.db)?;
        let seq = ticket.seq;
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
                state_since: at,
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
        let ticket = self.feed.ticket(&self.db)?;
        let seq = ticket.seq;
        self.write_tx(|tx| {
            let (id, old) = tx.resolve(keys)?;
            if old.state == NodeState::Discovered {
                return abort(StoreError::NotRegistered(old.display_name()));
            }
            // A cluster node's name, MAC, address and role are what the cluster knows it by
            // (its Node, its certificates, etcd's member, the endpoint's records): changing
            // one under a running join or a joined node would leave the cluster with a
            // node the registry no longer describes. Checked here, in the transaction, so
            // no join can start or end between the check and the write.
            let in_cluster = old.in_cluster();
            let identity: Vec<&str> = [
                (
                    "hostname",
                    patch.hostname.is_some() && patch.hostname != old.hostname,
                ),
                ("mac", patch.mac.is_some_and(|m| m != old.mac)),
                ("ip", patch.ip.is_some() && patch.ip != old.ip),
                ("role", patch.role.is_some() && patch.role != old.role),
            ]
            .into_iter()
            .filter_map(|(field, changed)| changed.then_some(field))
            .collect();
            if in_cluster && !identity.is_empty() {
                return abort(StoreError::InCluster {
                    node: old.display_name(),
                    state: old.state,
                    fields: identity.join(", "),
                });
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

    /// [`Store::transition`] only if the node is still in one of `from` (compare-and-set): a
    /// step that started from a state an operator or another writer has since changed (a
    /// reinstall, a rejoin) stops with [`StoreError::Stale`] instead of overwriting it.
    pub fn transition_from(
        &self,
        keys: &[NodeKey],
        from: &[NodeState],
        to: NodeState,
        message: &str,
        failure: Option<Failure>,
    ) -> Result<Node, StoreError> {
        self.transition_checked(keys, Some(from), to, message, failure, |_| Ok(()))
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
        self.transition_checked(keys, None, to, message, failure, edit)
    }

    fn transition_checked(
        &self,
        keys: &[NodeKey],
        from: Option<&[NodeState]>,
        to: NodeState,
        message: &str,
        failure: Option<Failure>,
        edit: impl Fn(&mut Node) -> Result<(), StoreError>,
    ) -> Result<Node, StoreError> {
        let ticket = self.feed.ticket(&self.db)?;
        let seq = ticket.seq;
        self.write_tx(|tx| {
            let (id, old) = tx.resolve(keys)?;
            if let Some(from) = from
                && !from.contains(&old.state)
            {
                return abort(StoreError::Stale(format!(
                    "node {} is {} now, not {}: it changed while this step ran, which stops here",
                    old.display_name(),
                    old.state,
                    from.iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(" or ")
                )));
            }
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
                state_since: at,
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
        // Not counted as acknowledged from before its commit until the view shows it gone.
        let deleting = self.acked.deleting(1);
        let (id, node) = self.write_tx(|tx| {
            let (id, node) = tx.resolve(keys)?;
            tx.remove_indexes(&node)?;
            tx.nodes.remove(&id.to_be_bytes())?;
            Ok(((id, node), (id, None)))
        })?;
        drop(deleting);
        self.sweep_events(&[id])?;
        self.flush_db()?;
        Ok(node)
    }

    /// Removes deleted nodes' histories. Ids are never reused, so sweeping after the deletion
    /// commits cannot touch another node; a crash here leaves unreachable events, never a
    /// wrong one.
    pub(super) fn sweep_events(&self, ids: &[u64]) -> Result<(), StoreError> {
        for id in ids {
            for key in self.events.scan_prefix(id.to_be_bytes()).keys() {
                self.events.remove(key?)?;
            }
            self.forget_node_update(*id)?;
        }
        Ok(())
    }

    /// The node named by the first of `keys` that names one.
    pub fn get(&self, keys: &[NodeKey]) -> Result<Node, StoreError> {
        self.view()
            .find(keys)
            .map(|(_, node)| node.into_owned())
            .ok_or_else(|| {
                StoreError::NotFound(keys.first().map(ToString::to_string).unwrap_or_default())
            })
    }

    /// Whether any node (registered or discovered) has this MAC; no copy is made (DHCP asks
    /// for every packet).
    pub fn knows_mac(&self, mac: MacAddr) -> bool {
        self.view().find_id(&[NodeKey::Mac(mac)]).is_some()
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
        Ok(self
            .view()
            .nodes()
            .map(std::borrow::Cow::into_owned)
            .collect())
    }

    /// Calls `f` with the registry's generation and every node, in registration order; both
    /// are read under one lock, so they agree. Discovered machines held compactly are made
    /// into nodes for this: where they do not matter, [`Store::with_registered_nodes`].
    pub fn with_nodes<T>(
        &self,
        f: impl FnOnce(u64, &mut dyn Iterator<Item = std::borrow::Cow<'_, Node>>) -> T,
    ) -> T {
        let view = self.view();
        f(view.generation(), &mut view.nodes())
    }

    /// Calls `f` with [`Store::registered_generation`] and every node except the machines that
    /// are only `discovered` (those without a name: DHCP reservations, the DNS zone and the
    /// cluster have no use for them), in registration order, without copying them.
    pub fn with_registered_nodes<T>(
        &self,
        f: impl FnOnce(u64, &mut dyn Iterator<Item = &Node>) -> T,
    ) -> T {
        let view = self.view();
        f(view.registered_generation(), &mut view.registered())
    }

    /// [`Store::with_registered_nodes`] with each node's registry id.
    pub fn with_registered_node_ids<T>(
        &self,
        f: impl FnOnce(&mut dyn Iterator<Item = (crate::model::NodeId, &Node)>) -> T,
    ) -> T {
        let view = self.view();
        f(&mut view.registered_with_ids())
    }

    /// The registry id of the node `keys` name.
    pub fn node_id(&self, keys: &[NodeKey]) -> Result<crate::model::NodeId, StoreError> {
        self.view()
            .find_id(keys)
            .map(crate::model::NodeId)
            .ok_or_else(|| {
                StoreError::NotFound(keys.first().map(ToString::to_string).unwrap_or_default())
            })
    }

    /// How many nodes are in each state (discovered machines included).
    pub fn count_by_state(&self) -> std::collections::BTreeMap<crate::model::NodeState, u64> {
        self.view().count_by_state()
    }

    /// Records a machine seen on the network as `discovered`, unless it is already known.
    /// Returns whether it was new. Durable after the next [`Store::flush`].
    /// A new machine counts against the discovery rate (`DiscoveryLimits`); beyond it, it
    /// is not recorded (`Ok(false)`) and asks again later.
    pub fn record_discovered(&self, mac: MacAddr) -> Result<bool, StoreError> {
        if self.knows_mac(mac) || !self.admit_new_machine() {
            return Ok(false);
        }
        self.record_discovered_many(&[(mac, None)])
            .map(|new| !new.is_empty())
    }

    /// [`Store::record_discovered`] for a batch of machines, in one transaction (the machines
    /// the DHCP loop staged, already admitted by the rate bound, are recorded at once), which
    /// also evicts the discovered machines unseen the longest when the cap would be passed.
    /// Returns the ones that were new.
    pub fn record_discovered_many(
        &self,
        machines: &[(MacAddr, Option<Sighting>)],
    ) -> Result<Vec<MacAddr>, StoreError> {
        let mut fresh: Vec<&(MacAddr, Option<Sighting>)> = Vec::new();
        {
            let view = self.view();
            let mut taken = std::collections::HashSet::new();
            for machine in machines {
                if view.find_id(&[NodeKey::Mac(machine.0)]).is_none() && taken.insert(machine.0) {
                    fresh.push(machine);
                }
            }
        }
        if fresh.is_empty() {
            return Ok(Vec::new());
        }
        // More at once than the cap holds: the latest seen win.
        let max = self.discovery_limits().max;
        if fresh.len() > max {
            fresh.drain(..fresh.len() - max);
        }
        let victims = self.eviction_victims(fresh.len());
        let mut ids = Vec::with_capacity(fresh.len());
        for _ in &fresh {
            ids.push((self.db.generate_id()?, self.feed.ticket(&self.db)?));
        }
        let (recorded, evicted) = self.staged_tx_many(|tx| {
            let at = now();
            let mut recorded = Vec::new();
            let mut changes = Vec::new();
            let mut evicted = Vec::new();
            for id in &victims {
                if tx.nodes.get(id.to_be_bytes())?.is_none() {
                    continue; // deleted meanwhile
                }
                let node = tx.load(*id)?;
                if node.state == NodeState::Discovered {
                    tx.remove_indexes(&node)?;
                    tx.nodes.remove(&id.to_be_bytes())?;
                    changes.push((*id, None));
                    evicted.push(*id);
                }
            }
            for ((mac, sighting), (id, ticket)) in fresh.iter().zip(&ids) {
                let seq = &ticket.seq;
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
            Ok(((recorded, evicted), changes))
        })?;
        self.sweep_events(&evicted)?;
        let counts = self.discovery_counts();
        counts
            .evicted
            .fetch_add(evicted.len() as u64, std::sync::atomic::Ordering::Relaxed);
        counts
            .recorded
            .fetch_add(recorded.len() as u64, std::sync::atomic::Ordering::Relaxed);
        if !evicted.is_empty() {
            tracing::info!(
                evicted = evicted.len(),
                max,
                "discovered machines unseen the longest were forgotten to stay under the cap"
            );
        }
        Ok(recorded)
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

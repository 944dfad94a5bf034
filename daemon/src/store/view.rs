//! The in-memory read model of the registry: every node, indexed by MAC and hostname. Only
//! the store changes it, after a write is durable; see the invariants in `store/mod.rs`.

use std::collections::{BTreeMap, HashMap};

use crate::model::{BootFile, Hostname, MacAddr, Node, NodeIp, NodeKey, NodeState};

#[derive(Default)]
pub(super) struct View {
    nodes: BTreeMap<u64, Node>,
    /// The version last applied per node id, deleted ones included, so that a late, older
    /// change can never overwrite a newer one.
    versions: HashMap<u64, u64>,
    by_mac: HashMap<MacAddr, u64>,
    by_hostname: HashMap<Hostname, u64>,
    generation: u64,
    /// Moves only when what DHCP reservations derive from a node changes
    /// ([`reservation_facts`]), not on every change of a node with an address (a sighting).
    address_generation: u64,
}

/// What DHCP's reservations are built from: a node with an address, its MAC, whether it is
/// only discovered, and its boot file.
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
        if self.versions.get(&id).is_some_and(|&held| held >= version) && version != 0 {
            return;
        }
        self.versions.insert(id, version);
        if self.nodes.get(&id).and_then(reservation_facts)
            != node.as_ref().and_then(reservation_facts)
        {
            self.address_generation += 1;
        }
        if let Some(old) = self.nodes.remove(&id) {
            // Another node may already hold a value this one gave up (its change applied
            // first): only remove index entries that still point here.
            if self.by_mac.get(&old.mac) == Some(&id) {
                self.by_mac.remove(&old.mac);
            }
            if let Some(h) = &old.hostname
                && self.by_hostname.get(h) == Some(&id)
            {
                self.by_hostname.remove(h);
            }
        }
        if let Some(node) = node {
            self.by_mac.insert(node.mac, id);
            if let Some(h) = &node.hostname {
                self.by_hostname.insert(h.clone(), id);
            }
            self.nodes.insert(id, node);
        }
        self.generation += 1;
    }

    pub(super) fn find(&self, keys: &[NodeKey]) -> Option<(u64, &Node)> {
        keys.iter().find_map(|key| {
            let id = match key {
                NodeKey::Hostname(h) => self.by_hostname.get(h),
                NodeKey::Mac(m) => self.by_mac.get(m),
            }?;
            self.nodes.get(id).map(|n| (*id, n))
        })
    }

    pub(super) fn by_id(&self, id: u64) -> Option<&Node> {
        self.nodes.get(&id)
    }

    pub(super) fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.nodes.values()
    }

    pub(super) fn with_ids(&self) -> impl Iterator<Item = (u64, &Node)> {
        self.nodes.iter().map(|(id, n)| (*id, n))
    }

    pub(super) fn generation(&self) -> u64 {
        self.generation
    }

    pub(super) fn address_generation(&self) -> u64 {
        self.address_generation
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::NodeState;

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

//! Each node's Flatcar update as its `update_engine` last reported it, by node id. Soft state
//! a node reports again at its next check (every 45 minutes or so): not in backups. What
//! changed is also in the node's history (`EventKind::Update`), which is.

use super::{Store, StoreError, schema};
use crate::model::{EventKind, NodeId, NodeKey, NodeUpdate};

impl Store {
    /// The node's update record, if it ever reported.
    pub fn node_update(&self, id: NodeId) -> Result<Option<NodeUpdate>, StoreError> {
        self.updates
            .get(id.0.to_be_bytes())?
            .map(|v| schema::decode_node_update(&v))
            .transpose()
    }

    /// Every registered node's update record, by node id (records of removed nodes skipped).
    pub fn list_node_updates(&self) -> Result<Vec<(NodeId, NodeUpdate)>, StoreError> {
        let view = self.view();
        let mut out = Vec::new();
        for entry in self.updates.iter() {
            let (key, value) = entry?;
            let Ok(bytes) = <[u8; 8]>::try_from(key.as_ref()) else {
                continue;
            };
            let id = u64::from_be_bytes(bytes);
            if view.find_id(&[NodeKey::Id(NodeId(id))]).is_none() {
                continue;
            }
            out.push((NodeId(id), schema::decode_node_update(&value)?));
        }
        Ok(out)
    }

    /// Writes the node's update record, then appends `events` to its history; durable on
    /// return.
    pub fn record_node_update(
        &self,
        id: NodeId,
        update: &NodeUpdate,
        events: Vec<(EventKind, String)>,
    ) -> Result<(), StoreError> {
        self.updates
            .insert(id.0.to_be_bytes(), schema::encode_node_update(update))?;
        if events.is_empty() {
            self.flush_db()?;
        }
        for (kind, message) in events {
            self.record_event(&[NodeKey::Id(id)], kind, message)?;
        }
        Ok(())
    }

    /// Forgets a removed node's update record.
    pub(super) fn forget_node_update(&self, id: u64) -> Result<(), StoreError> {
        self.updates.remove(id.to_be_bytes())?;
        Ok(())
    }
}

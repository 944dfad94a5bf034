//! Each node's history: events keyed by node id and a sequence number, so that a node's
//! history is one prefix scan, oldest first.

use super::{Store, StoreError, schema};
use crate::model::{Event, EventKind, NodeKey};

pub(super) fn event_key(id: u64, seq: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&id.to_be_bytes());
    k[8..].copy_from_slice(&seq.to_be_bytes());
    k
}

impl Store {
    /// A node's history, oldest first.
    pub fn events(&self, keys: &[NodeKey]) -> Result<Vec<Event>, StoreError> {
        let id = self.view().find(keys).map(|(id, _)| id).ok_or_else(|| {
            StoreError::NotFound(keys.first().map(ToString::to_string).unwrap_or_default())
        })?;
        self.events
            .scan_prefix(id.to_be_bytes())
            .values()
            .map(|v| schema::decode_event(&v?))
            .collect()
    }

    /// Appends an event to a node's history, durably (a step the daemon ran on the node).
    pub fn record_event(
        &self,
        keys: &[NodeKey],
        kind: EventKind,
        message: String,
    ) -> Result<(), StoreError> {
        let id = self.view().find(keys).map(|(id, _)| id).ok_or_else(|| {
            StoreError::NotFound(keys.first().map(ToString::to_string).unwrap_or_default())
        })?;
        let event = Event {
            seq: self.db.generate_id()?,
            at: super::now(),
            kind,
            message,
        };
        self.events
            .insert(event_key(id, event.seq), schema::encode_event(&event))?;
        self.flush_db()?;
        Ok(())
    }
}

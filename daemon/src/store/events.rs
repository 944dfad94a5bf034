//! Each node's history: events keyed by node id and a sequence number, so that a node's
//! history is one prefix scan, oldest first.

use super::{FeedChange, FeedItem, Since, Store, StoreError, schema};
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
        let id = self.view().find_id(keys).ok_or_else(|| {
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
        let id = self.view().find_id(keys).ok_or_else(|| {
            StoreError::NotFound(keys.first().map(ToString::to_string).unwrap_or_default())
        })?;
        let ticket = self.feed.ticket(&self.db)?;
        let event = Event {
            seq: ticket.seq,
            at: super::now(),
            kind,
            message,
        };
        self.events
            .insert(event_key(id, event.seq), schema::encode_event(&event))?;
        self.flush_db()?;
        self.publish(vec![(id, event)], Vec::new())?;
        Ok(())
    }
}

impl Store {
    /// The feed's position: every event numbered at or below it is committed and released
    /// (read it before the node list to resume a stream after it with nothing missed).
    pub fn feed_head(&self) -> u64 {
        self.feed.head()
    }

    /// Wakes on every release of the feed.
    pub fn feed_subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.feed.subscribe()
    }

    /// Every event and removal released after `after`, in sequence order, up to `limit`
    /// items read back from disk (beyond that, or for a position this registry never gave
    /// out: [`Since::Reset`]). Events older than the feed's ring are read from the `events`
    /// tree (their numbers are in the keys, so only the matching values are decoded).
    pub fn feed_since(&self, after: u64, limit: usize) -> Result<Since, StoreError> {
        let upto = match self.feed.in_ring(after) {
            Ok(since) => return Ok(since),
            Err(covered_from) => covered_from,
        };
        let mut found: Vec<(u64, u64, sled::IVec)> = Vec::new();
        for entry in self.events.iter() {
            let (key, value) = entry?;
            if key.len() != 16 {
                continue;
            }
            let seq = u64::from_be_bytes(key[8..16].try_into().expect("eight bytes"));
            if seq > after && seq <= upto {
                if found.len() == limit {
                    return Ok(Since::Reset {
                        head: self.feed.head(),
                    });
                }
                found.push((seq, super::decode_id(&key[..8]), value));
            }
        }
        found.sort_unstable_by_key(|(seq, _, _)| *seq);
        let mut items = Vec::with_capacity(found.len());
        {
            let view = self.view();
            for (seq, id, value) in found {
                let Some((mac, hostname)) = view.identity(id) else {
                    continue; // removed since
                };
                items.push(std::sync::Arc::new(FeedItem {
                    seq,
                    node_id: id,
                    mac,
                    hostname: hostname.map(ToString::to_string),
                    change: FeedChange::Event(schema::decode_event(&value)?),
                }));
            }
        }
        match self.feed.ring_after(upto) {
            Some(newer) => items.extend(newer),
            None => {
                return Ok(Since::Reset {
                    head: self.feed.head(),
                });
            }
        }
        Ok(Since::Items(items))
    }

    /// The node with this registry id, if it still exists.
    pub fn node_by_id(&self, id: u64) -> Option<crate::model::Node> {
        self.view().by_id(id).map(std::borrow::Cow::into_owned)
    }
}

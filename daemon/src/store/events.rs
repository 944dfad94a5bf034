//! Each node's history: events keyed by node id and a sequence number, so that a node's
//! history is one prefix scan, oldest first.

use super::settings::HistoryLimits;
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

    /// At most `page` events and removals released after `after`, in sequence order (none:
    /// the client is up to date; [`Since::Reset`] for a position this registry never gave
    /// out). Events older than the feed's ring are read from the `events` tree: one pass over
    /// its keys keeps the `page` lowest numbers above `after` (their numbers are in the keys,
    /// so only those values are read and decoded), so a page costs at most `page` events of
    /// memory however long the history. A client pages through a backlog by asking again
    /// after the last number it got.
    pub fn feed_page(&self, after: u64, page: usize) -> Result<Since, StoreError> {
        let page = page.max(1);
        let upto = match self.feed.in_ring(after, page) {
            Ok(since) => return Ok(since),
            Err(covered_from) => covered_from,
        };
        // The `page` lowest numbers in (after, upto]: a max-heap of that size.
        let mut lowest: std::collections::BinaryHeap<(u64, [u8; 16])> =
            std::collections::BinaryHeap::with_capacity(page + 1);
        for key in self.events.iter().keys() {
            let key = key?;
            let Ok(key) = <[u8; 16]>::try_from(key.as_ref()) else {
                continue;
            };
            let seq = u64::from_be_bytes(key[8..16].try_into().expect("eight bytes"));
            if seq <= after || seq > upto {
                continue;
            }
            if lowest.len() < page {
                lowest.push((seq, key));
            } else if lowest.peek().is_some_and(|(top, _)| seq < *top) {
                lowest.pop();
                lowest.push((seq, key));
            }
        }
        let found = lowest.into_sorted_vec();
        let full = found.len() == page;
        let mut items = Vec::with_capacity(found.len());
        {
            let view = self.view();
            for (seq, key) in found {
                let id = super::decode_id(&key[..8]);
                let (Some((mac, hostname)), Some(value)) =
                    (view.identity(id), self.events.get(key)?)
                else {
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
        // Every stored event up to `upto` is in this page: the rest may come from the ring
        // (if it moved on meanwhile, the next page reads the disk again).
        if !full && let Some(newer) = self.feed.ring_after(upto, page - items.len()) {
            items.extend(newer);
        }
        Ok(Since::Items(items))
    }

    /// How many events and removals a client resuming after `after` would be sent before it
    /// is up to date (a key scan when `after` is older than the ring): the replay's size,
    /// checked against the replay limit before any is read.
    pub fn feed_backlog(&self, after: u64) -> Result<u64, StoreError> {
        let (covered_from, in_ring) = self.feed.backlog(after);
        let mut on_disk = 0u64;
        if after < covered_from {
            for key in self.events.iter().keys() {
                let key = key?;
                if key.len() == 16 {
                    let seq = u64::from_be_bytes(key[8..16].try_into().expect("eight bytes"));
                    if seq > after && seq <= covered_from {
                        on_disk += 1;
                    }
                }
            }
        }
        Ok(on_disk + in_ring)
    }

    /// The node with this registry id, if it still exists.
    pub fn node_by_id(&self, id: u64) -> Option<crate::model::Node> {
        self.view().by_id(id).map(std::borrow::Cow::into_owned)
    }
}

impl Store {
    /// Applies the history's retention: each node keeps at most its newest
    /// `max_per_node` events, and drops those older than `max_age` — but always keeps its
    /// newest one, so every node's history says what last happened to it. One pass over the
    /// keys (grouped by node, oldest first within a node); values are read only for the age
    /// check of a node's oldest events. Returns how many events went.
    pub fn prune_history(
        &self,
        limits: HistoryLimits,
        now: time::OffsetDateTime,
    ) -> Result<usize, StoreError> {
        let cutoff = limits.max_age.map(|age| now - age);
        let mut doomed: Vec<sled::IVec> = Vec::new();
        let mut group: Vec<sled::IVec> = Vec::new();
        let mut current: Option<[u8; 8]> = None;
        let decide = |group: &mut Vec<sled::IVec>, doomed: &mut Vec<sled::IVec>| {
            let n = group.len();
            for (i, key) in group.drain(..).enumerate() {
                let remaining = n - i;
                if remaining <= 1 {
                    break;
                }
                let too_many = remaining > limits.max_per_node;
                let too_old = !too_many
                    && cutoff.is_some_and(|cutoff| {
                        self.events
                            .get(&key)
                            .ok()
                            .flatten()
                            .and_then(|v| schema::decode_event(&v).ok())
                            .is_some_and(|e| e.at < cutoff)
                    });
                if !(too_many || too_old) {
                    break; // the rest are newer
                }
                doomed.push(key);
            }
        };
        for key in self.events.iter().keys() {
            let key = key?;
            let Some(id) = key.get(..8).and_then(|k| <[u8; 8]>::try_from(k).ok()) else {
                continue;
            };
            if key.len() != 16 {
                continue;
            }
            if current != Some(id) {
                decide(&mut group, &mut doomed);
                current = Some(id);
            }
            group.push(key);
        }
        decide(&mut group, &mut doomed);
        if doomed.is_empty() {
            return Ok(0);
        }
        let pruned = doomed.len();
        for chunk in doomed.chunks(4096) {
            let mut batch = sled::Batch::default();
            for key in chunk {
                batch.remove(key.clone());
            }
            self.events.apply_batch(batch)?;
        }
        self.flush_db()?;
        Ok(pruned)
    }
}

//! The DHCP loop's writes: staged in memory as packets are decided, written by one
//! [`Store::flush`] per batch (one transaction or batch per tree), so that the loop sends an
//! ACK only once its lease is on disk without paying a sled log write per packet.

use time::OffsetDateTime;

use super::events::event_key;
use super::{Store, StoreError, lock, now, schema};
use crate::model::{Event, EventKind, MacAddr, NodeKey, Sighting};

/// Writes staged by the DHCP loop for the next [`Store::flush`]. sled rolls its log buffer
/// twice for every batch or transaction (a `pwrite` and a `sync_file_range` each), so writing a
/// packet's changes as they came cost ~4,000 log writes a second at 5,000 exchanges/s; staged,
/// they cost three per flush.
#[derive(Default)]
pub(super) struct Staged {
    /// Lease inserts and removals, in order.
    pub(super) leases: sled::Batch,
    pub(super) lease_ops: usize,
    /// New machines to record as `discovered`, in the order they were seen.
    pub(super) discovered: Vec<MacAddr>,
    /// Those, and the ones a running flush is recording.
    pub(super) discovered_set: std::collections::HashSet<MacAddr>,
    /// The latest sighting of each machine that showed something new (the `discovered` ones
    /// are written with theirs).
    pub(super) seen: std::collections::HashMap<MacAddr, Sighting>,
    /// Events by MAC: the node may be one of `discovered`, so its id is looked up, and the
    /// event numbered (after the node's own first event), only when written.
    pub(super) events: Vec<StagedEvent>,
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
    /// A new machine, not recorded: more new machines than the discovery rate allows.
    RateLimited,
}

/// An event for the node with this MAC: when, what, and its message.
pub(super) type StagedEvent = (MacAddr, OffsetDateTime, EventKind, String);

impl Store {
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
        // (Node transactions hold the backup's lock themselves; these writes take it here,
        // never nested: a reader waiting behind a writer would deadlock.)
        if lease_ops > 0 {
            let _shared = self.snapshot.read().unwrap_or_else(|e| e.into_inner());
            if let Err(e) = self.leases.apply_batch(leases) {
                first_error.get_or_insert(e.into());
            }
        }
        if !events.is_empty() {
            let _shared = self.snapshot.read().unwrap_or_else(|e| e.into_inner());
            if let Err(e) = self.write_staged_events(events) {
                first_error.get_or_insert(e);
            }
        }
        self.flush_db()?;
        first_error.map_or(Ok(()), Err)
    }

    /// Writes known machines' new sightings in one transaction (only the node records: no
    /// indexed field changes).
    pub(super) fn write_sightings(
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
                        .insert(&id.to_be_bytes(), schema::encode_node(&node))?;
                    changes.push((id, Some(node)));
                }
            }
            Ok(((), changes))
        })
    }

    /// Writes staged events in one batch, each numbered now (after its node's own first
    /// event, if the node was recorded by the same flush).
    pub(super) fn write_staged_events(&self, events: Vec<StagedEvent>) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        let mut appended = Vec::with_capacity(events.len());
        let mut tickets = Vec::with_capacity(events.len());
        let view = self.view();
        for (mac, at, kind, message) in events {
            // A node deleted meanwhile has no history to add to.
            let Some(id) = view.find_id(&[NodeKey::Mac(mac)]) else {
                continue;
            };
            let ticket = self.feed.ticket(&self.db)?;
            let event = Event {
                seq: ticket.seq,
                at,
                kind,
                message,
            };
            batch.insert(&event_key(id, event.seq), schema::encode_event(&event));
            appended.push((id, event));
            tickets.push(ticket);
        }
        drop(view);
        self.events.apply_batch(batch)?;
        self.publish(appended, Vec::new())?;
        Ok(())
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
        let news = self.view().sighting_news(mac, &sighting);
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
            None if discover && !self.admit_new_machine() => Seen::RateLimited,
            None if discover => {
                staged.discovered_set.insert(mac);
                staged.discovered.push(mac);
                staged.seen.insert(mac, sighting);
                Seen::New
            }
            None => Seen::Nothing,
        }
    }
}

//! The live feed: every event the store commits, and every node removal, released to
//! subscribers (the console's stream, `GET /api/v1/events`) strictly in sequence order.
//!
//! Event sequence numbers come from sled's `generate_id` before the write that stores the
//! event, so two writers can commit in the other order than their numbers. A subscriber that
//! resumes "after seq N" must never miss an event numbered below N that committed after N was
//! sent. So every event number is taken through [`Feed::ticket`] (number taken and registered
//! as in flight under one lock), and the feed releases an item only when every number below it
//! has been released or abandoned (its write failed): what a subscriber has seen is always a
//! prefix of the sequence, and "after N" is exact.
//!
//! Released items stay in a ring of the latest [`RING`]; older ones are read back from the
//! `events` tree by [`crate::store::Store::feed_since`] (node removals are not stored: a
//! client that resumes from before the ring reloads the node list, which shows them).

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use time::OffsetDateTime;

use super::{StoreError, lock};
use crate::model::{Event, MacAddr};

/// Released items kept in memory for resuming subscribers.
const RING: usize = 8192;

/// One entry of the feed: an event of a node, or its removal.
#[derive(Clone, Debug)]
pub struct FeedItem {
    pub seq: u64,
    /// The node's id in the registry (never reused).
    pub node_id: u64,
    pub mac: MacAddr,
    pub hostname: Option<String>,
    pub change: FeedChange,
}

#[derive(Clone, Debug)]
pub enum FeedChange {
    Event(Event),
    /// The node left the registry (deleted by the operator, or a discovered machine forgotten).
    Removed {
        at: OffsetDateTime,
    },
}

/// What a subscriber gets for "everything after seq N".
#[derive(Debug)]
pub enum Since {
    /// The items, in sequence order (possibly none).
    Items(Vec<Arc<FeedItem>>),
    /// More than a replay may hold, or a position this registry never gave out: reload the
    /// node list and continue after `head`.
    Reset { head: u64 },
}

#[derive(Default)]
struct Inner {
    /// Numbers given out and not yet released: `None` in flight, `Some` ready to release.
    pending: BTreeMap<u64, Option<Arc<FeedItem>>>,
    /// Released items, oldest first.
    ring: VecDeque<Arc<FeedItem>>,
    /// Every released item numbered above this is in `ring`.
    covered_from: u64,
    /// The highest number given out.
    last_taken: u64,
}

impl Inner {
    /// No item numbered at or below the head will ever be released again.
    fn head(&self) -> u64 {
        match self.pending.keys().next() {
            Some(first) => first.saturating_sub(1),
            None => self.last_taken,
        }
    }

    fn release(&mut self) {
        while let Some(entry) = self.pending.first_entry() {
            if entry.get().is_none() {
                break;
            }
            let item = entry.remove().expect("checked ready");
            if self.ring.len() == RING
                && let Some(old) = self.ring.pop_front()
            {
                self.covered_from = old.seq;
            }
            self.ring.push_back(item);
        }
    }
}

pub(super) struct Feed {
    inner: Mutex<Inner>,
    head: tokio::sync::watch::Sender<u64>,
}

impl Feed {
    /// A feed whose numbers start after `floor` (a number from `generate_id` at open: every
    /// stored event is numbered below it).
    pub(super) fn new(floor: u64) -> Feed {
        Feed {
            inner: Mutex::new(Inner {
                covered_from: floor,
                last_taken: floor,
                ..Inner::default()
            }),
            head: tokio::sync::watch::Sender::new(floor),
        }
    }

    /// Takes the next event number, registered as in flight until published or dropped.
    pub(super) fn ticket(self: &Arc<Self>, db: &sled::Db) -> Result<Ticket, StoreError> {
        let mut inner = lock(&self.inner);
        let seq = db.generate_id()?;
        inner.last_taken = inner.last_taken.max(seq);
        inner.pending.insert(seq, None);
        Ok(Ticket {
            feed: self.clone(),
            seq,
        })
    }

    /// Marks these items committed; releases every item no lower number holds back.
    pub(super) fn publish(&self, items: Vec<FeedItem>) {
        if items.is_empty() {
            return;
        }
        let head = {
            let mut inner = lock(&self.inner);
            for item in items {
                if let Some(slot) = inner.pending.get_mut(&item.seq) {
                    *slot = Some(Arc::new(item));
                }
            }
            inner.release();
            inner.head()
        };
        self.head.send_replace(head);
    }

    /// Forgets a number whose write did not commit (a no-op once it was published).
    fn abandon(&self, seq: u64) {
        let head = {
            let mut inner = lock(&self.inner);
            if inner.pending.get(&seq).is_some_and(Option::is_none) {
                inner.pending.remove(&seq);
                inner.release();
            }
            inner.head()
        };
        self.head.send_replace(head);
    }

    pub(super) fn head(&self) -> u64 {
        lock(&self.inner).head()
    }

    pub(super) fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.head.subscribe()
    }

    /// At most `limit` released items after `after` if the ring covers them;
    /// `Err(covered_from)` when items from `after` up to `covered_from` must be read from the
    /// `events` tree first.
    pub(super) fn in_ring(&self, after: u64, limit: usize) -> Result<Since, u64> {
        let inner = lock(&self.inner);
        if after > inner.last_taken {
            return Ok(Since::Reset { head: inner.head() });
        }
        if after < inner.covered_from {
            return Err(inner.covered_from);
        }
        Ok(Since::Items(ring_after(&inner.ring, after, limit)))
    }

    /// At most `limit` released items after `from`; `None` if the ring no longer covers them
    /// (it moved on while the caller read older ones from disk).
    pub(super) fn ring_after(&self, from: u64, limit: usize) -> Option<Vec<Arc<FeedItem>>> {
        let inner = lock(&self.inner);
        (from >= inner.covered_from).then(|| ring_after(&inner.ring, from, limit))
    }

    /// Where the ring starts, and how many of its items are after `after`.
    pub(super) fn backlog(&self, after: u64) -> (u64, u64) {
        let inner = lock(&self.inner);
        let start = inner.ring.partition_point(|item| item.seq <= after);
        (inner.covered_from, (inner.ring.len() - start) as u64)
    }
}

fn ring_after(ring: &VecDeque<Arc<FeedItem>>, after: u64, limit: usize) -> Vec<Arc<FeedItem>> {
    let start = ring.partition_point(|item| item.seq <= after);
    ring.range(start..).take(limit).cloned().collect()
}

/// An event number in flight; dropping it unpublished abandons it.
pub(super) struct Ticket {
    feed: Arc<Feed>,
    pub(super) seq: u64,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.feed.abandon(self.seq);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::EventKind;

    fn item(seq: u64) -> FeedItem {
        FeedItem {
            seq,
            node_id: 1,
            mac: "52:54:00:00:00:01".parse().unwrap(),
            hostname: None,
            change: FeedChange::Event(Event {
                seq,
                at: OffsetDateTime::UNIX_EPOCH,
                kind: EventKind::Updated { fields: vec![] },
                message: String::new(),
            }),
        }
    }

    fn seqs(since: Since) -> Vec<u64> {
        match since {
            Since::Items(items) => items.iter().map(|i| i.seq).collect(),
            Since::Reset { head } => panic!("reset to {head}"),
        }
    }

    /// A feed over a new database, and its head.
    fn fresh() -> (tempfile::TempDir, sled::Db, Arc<Feed>, u64) {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let feed = Arc::new(Feed::new(db.generate_id().unwrap()));
        let start = feed.head();
        (dir, db, feed, start)
    }

    #[test]
    fn a_later_number_waits_for_an_earlier_one_in_flight() {
        let (_dir, db, feed, start) = fresh();
        let a = feed.ticket(&db).unwrap();
        let b = feed.ticket(&db).unwrap();
        // b commits first: nothing is released while a is in flight.
        feed.publish(vec![item(b.seq)]);
        assert_eq!(
            seqs(feed.in_ring(start, usize::MAX).unwrap()),
            Vec::<u64>::new()
        );
        assert_eq!(feed.head(), start);
        feed.publish(vec![item(a.seq)]);
        assert_eq!(
            seqs(feed.in_ring(start, usize::MAX).unwrap()),
            vec![a.seq, b.seq]
        );
        assert_eq!(seqs(feed.in_ring(a.seq, usize::MAX).unwrap()), vec![b.seq]);
        assert_eq!(feed.head(), b.seq);
    }

    #[test]
    fn an_abandoned_number_releases_what_it_held_back() {
        let (_dir, db, feed, start) = fresh();
        let a = feed.ticket(&db).unwrap();
        let b = feed.ticket(&db).unwrap();
        let b_seq = b.seq;
        feed.publish(vec![item(b_seq)]);
        drop(a); // its write failed
        assert_eq!(seqs(feed.in_ring(start, usize::MAX).unwrap()), vec![b_seq]);
        drop(b); // published already: nothing changes
        assert_eq!(feed.head(), b_seq);
    }

    #[test]
    fn positions_outside_the_ring_are_read_back_or_reset() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        db.generate_id().unwrap();
        let floor = db.generate_id().unwrap();
        let feed = Arc::new(Feed::new(floor));
        assert_eq!(feed.in_ring(floor - 1, 10).unwrap_err(), floor);
        assert!(matches!(
            feed.in_ring(floor + 1000, 10).unwrap(),
            Since::Reset { head } if head == floor
        ));
    }
}

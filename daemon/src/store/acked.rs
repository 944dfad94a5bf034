//! What the registry has acknowledged, kept beside sled so that a registry that lost data is
//! refused instead of served.
//!
//! sled opens a `db` file cut at 80–90 % and silently recovers the prefix it can read: the
//! daemon would start with fewer nodes than it acknowledged. So every flush also
//! 1. raises `meta/flush_mark` (inside sled, written before the flush, never lowered), and
//! 2. once the flush returned, records the mark, the number of registered nodes and the feed's
//!    head in `lacave-acknowledged`, a 128-byte file beside sled: two 64-byte slots written in
//!    turn, each with a sequence number and a checksum, so a torn write leaves the other slot
//!    readable. It is written on every flush (a `pwrite`, no waiting) and `fdatasync`ed by a
//!    background thread every [`SYNC_EVERY`] while it changed (a power cut can make it lag that
//!    much, never lead).
//!
//! At open ([`check`]): a registry whose `flush_mark` is below the recorded one lost flushes it
//! had acknowledged; one at the same mark holding fewer registered nodes lost nodes. Either is
//! [`StoreError::Damaged`] (exit 65: restore the backup). The count is a lower bound, never
//! ahead of the disk: nodes show in the view only after their flush, and a deletion in flight
//! is subtracted before its transaction commits ([`Acked::deleting`]).

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sha2::Digest;

use super::StoreError;

pub(super) const FILE: &str = "lacave-acknowledged";
/// The `meta` key holding the last flush mark.
pub(super) const MARK_KEY: &str = "flush_mark";
const MAGIC: &[u8; 4] = b"LCAK";
const SLOT: usize = 64;
/// The record is synced at most this often.
pub const SYNC_EVERY: Duration = Duration::from_millis(20);

/// One acknowledgement: what the registry held after a flush.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Record {
    pub sequence: u64,
    pub mark: u64,
    pub registered: u64,
    pub last_event: u64,
}

impl Record {
    fn encode(&self) -> [u8; SLOT] {
        let mut b = [0u8; SLOT];
        b[..4].copy_from_slice(MAGIC);
        b[8..16].copy_from_slice(&self.sequence.to_be_bytes());
        b[16..24].copy_from_slice(&self.mark.to_be_bytes());
        b[24..32].copy_from_slice(&self.registered.to_be_bytes());
        b[32..40].copy_from_slice(&self.last_event.to_be_bytes());
        let sum = sha2::Sha256::digest(&b[..56]);
        b[56..].copy_from_slice(&sum[..8]);
        b
    }

    fn decode(b: &[u8]) -> Option<Record> {
        if b.len() != SLOT || &b[..4] != MAGIC || sha2::Sha256::digest(&b[..56])[..8] != b[56..] {
            return None;
        }
        let u = |r: std::ops::Range<usize>| u64::from_be_bytes(b[r].try_into().expect("8 bytes"));
        Some(Record {
            sequence: u(8..16),
            mark: u(16..24),
            registered: u(24..32),
            last_event: u(32..40),
        })
    }
}

/// The newest readable record in `dir`, if any.
pub(super) fn read(dir: &Path) -> Option<Record> {
    let bytes = std::fs::read(dir.join(FILE)).ok()?;
    bytes
        .chunks(SLOT)
        .filter_map(Record::decode)
        .max_by_key(|r| r.sequence)
}

/// Refuses a registry holding less than `recorded` says it acknowledged.
pub(super) fn check(
    dir: &Path,
    recorded: Option<Record>,
    mark: u64,
    registered: u64,
) -> Result<(), StoreError> {
    let Some(acked) = recorded else {
        return Ok(());
    };
    let lost = if mark < acked.mark {
        Some(format!(
            "it holds less than it acknowledged: its last flush is #{mark}, but flush #{} (with {} registered nodes) was acknowledged",
            acked.mark, acked.registered
        ))
    } else if mark == acked.mark && registered < acked.registered {
        Some(format!(
            "it holds less than it acknowledged: {registered} registered nodes, but {} were acknowledged at its last flush (#{mark})",
            acked.registered
        ))
    } else {
        None
    };
    match lost {
        Some(detail) => Err(StoreError::Damaged {
            path: dir.display().to_string(),
            detail: format!(
                "{detail}; the file was cut or replaced. Restore the latest backup (lacave restore FILE)"
            ),
        }),
        None => Ok(()),
    }
}

struct Writer {
    file: Option<std::fs::File>,
    sequence: u64,
    /// The highest mark recorded (records never go backwards).
    written: u64,
}

/// The record's writer and the counters it records.
pub(super) struct Acked {
    path: PathBuf,
    /// The last mark given out.
    mark: AtomicU64,
    /// Registered nodes being deleted (subtracted from the count recorded).
    deleting: AtomicU64,
    writer: Mutex<Writer>,
    /// Written since the last sync.
    dirty: std::sync::atomic::AtomicBool,
}

impl Acked {
    /// The writer, and its syncing thread (which ends when the writer is dropped).
    pub(super) fn new(dir: &Path, recorded: Option<Record>, mark: u64) -> std::sync::Arc<Acked> {
        let recorded = recorded.unwrap_or_default();
        let acked = std::sync::Arc::new(Acked {
            path: dir.join(FILE),
            mark: AtomicU64::new(mark.max(recorded.mark)),
            deleting: AtomicU64::new(0),
            writer: Mutex::new(Writer {
                file: None,
                sequence: recorded.sequence,
                written: recorded.mark,
            }),
            dirty: std::sync::atomic::AtomicBool::new(false),
        });
        let weak = std::sync::Arc::downgrade(&acked);
        let _ = std::thread::Builder::new()
            .name("lacave-acked".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(SYNC_EVERY);
                    let Some(acked) = weak.upgrade() else { return };
                    acked.sync();
                }
            });
        acked
    }

    /// Syncs the record if it changed since the last sync (outside the writer's lock).
    fn sync(&self) {
        if !self.dirty.swap(false, Ordering::AcqRel) {
            return;
        }
        let file = super::lock(&self.writer)
            .file
            .as_ref()
            .and_then(|f| f.try_clone().ok());
        if let Some(file) = file
            && let Err(error) = file.sync_data()
        {
            tracing::warn!(%error, path = %self.path.display(), "cannot sync the registry's acknowledgement record");
        }
    }

    /// The next mark, to write into `meta` before a flush.
    pub(super) fn next_mark(&self) -> u64 {
        self.mark.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Marks `n` registered nodes as being deleted until the guard drops (after the view
    /// shows the deletion).
    pub(super) fn deleting(&self, n: u64) -> Deleting<'_> {
        self.deleting.fetch_add(n, Ordering::Relaxed);
        Deleting { acked: self, n }
    }

    /// Records that the flush carrying `mark` returned, with `registered` nodes in the view.
    /// A failure to write the record is logged, never a failed write of the registry.
    pub(super) fn record(&self, mark: u64, registered: u64, last_event: u64) {
        let registered = registered.saturating_sub(self.deleting.load(Ordering::Relaxed));
        let mut w = super::lock(&self.writer);
        if mark <= w.written {
            return;
        }
        if w.file.is_none() {
            match std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .read(true)
                .write(true)
                .open(&self.path)
            {
                Ok(f) => {
                    use std::os::unix::fs::PermissionsExt;
                    let _ = f.set_permissions(std::fs::Permissions::from_mode(0o600));
                    w.file = Some(f);
                }
                Err(error) => {
                    tracing::warn!(%error, path = %self.path.display(), "cannot write the registry's acknowledgement record");
                    return;
                }
            }
        }
        w.sequence += 1;
        let record = Record {
            sequence: w.sequence,
            mark,
            registered,
            last_event,
        };
        let slot = (w.sequence % 2) * SLOT as u64;
        let file = w.file.as_ref().expect("opened above");
        match file.write_all_at(&record.encode(), slot) {
            Ok(()) => {
                w.written = mark;
                self.dirty.store(true, Ordering::Release);
            }
            Err(error) => {
                tracing::warn!(%error, path = %self.path.display(), "cannot write the registry's acknowledgement record");
            }
        }
    }
}

impl Drop for Acked {
    /// What was written since the last sync is synced when the store closes.
    fn drop(&mut self) {
        self.sync();
    }
}

/// A deletion in flight (see [`Acked::deleting`]).
pub(super) struct Deleting<'a> {
    acked: &'a Acked,
    n: u64,
}

impl Drop for Deleting<'_> {
    fn drop(&mut self) {
        self.acked.deleting.fetch_sub(self.n, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_intact_slot_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let acked = Acked::new(dir.path(), None, 0);
        for mark in 1..=5 {
            acked.record(mark, mark * 10, 0);
        }
        let r = read(dir.path()).unwrap();
        assert_eq!((r.mark, r.registered), (5, 50));
        // A torn write of the newest slot: the other one is read.
        let path = dir.path().join(FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        let newest = (r.sequence % 2) as usize * SLOT;
        bytes[newest + 20] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(read(dir.path()).unwrap().mark, 4);
        // Records never go backwards.
        acked.record(3, 1, 0);
        assert!(read(dir.path()).unwrap().mark >= 4);
    }

    #[test]
    fn less_than_acknowledged_is_damaged() {
        let dir = Path::new("/r");
        let acked = Some(Record {
            sequence: 9,
            mark: 100,
            registered: 40,
            last_event: 0,
        });
        assert!(check(dir, None, 0, 0).is_ok());
        assert!(check(dir, acked, 100, 40).is_ok());
        assert!(
            check(dir, acked, 101, 3).is_ok(),
            "a later flush may have deleted nodes"
        );
        let e = check(dir, acked, 99, 40).unwrap_err().to_string();
        assert!(e.contains("#99") && e.contains("lacave restore"), "{e}");
        let e = check(dir, acked, 100, 39).unwrap_err().to_string();
        assert!(e.contains("39 registered nodes"), "{e}");
    }

    #[test]
    fn a_deletion_in_flight_is_not_counted() {
        let dir = tempfile::tempdir().unwrap();
        let acked = Acked::new(dir.path(), None, 0);
        let guard = acked.deleting(1);
        acked.record(1, 10, 0);
        assert_eq!(read(dir.path()).unwrap().registered, 9);
        drop(guard);
        acked.record(2, 9, 0);
        assert_eq!(read(dir.path()).unwrap().registered, 9);
    }
}

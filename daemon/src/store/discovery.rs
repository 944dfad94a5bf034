//! Bounds on machines recorded as `discovered` (by DHCP with `unknown_clients = "discover"`,
//! and by `/ipxe/{mac}` of an unknown MAC): a LAN client sending random MACs must not grow the
//! registry without limit.
//!
//! - **Rate**: at most `per_minute` new machines a minute (a token bucket allowing a burst of
//!   as many); beyond, a machine is not recorded this time (it asks again).
//! - **Cap**: at most `max` discovered machines; recording one more evicts the one unseen the
//!   longest (its last DHCP sighting, or when it was first seen).
//! - **Expiry**: a discovered machine unseen for `forget_after` is removed by
//!   [`Store::forget_stale_discovered`], which the daemon runs every few minutes.
//!
//! Registered nodes are never touched. Each outcome is counted for `/metrics`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use time::OffsetDateTime;

use super::settings::DiscoveryLimits;
use super::{Store, StoreError, lock};
use crate::model::NodeState;

/// What happened to machines seen for the first time, and to discovered records.
#[derive(Default)]
pub struct DiscoveryCounts {
    pub recorded: AtomicU64,
    pub rate_limited: AtomicU64,
    pub evicted: AtomicU64,
    pub expired: AtomicU64,
}

impl DiscoveryCounts {
    /// (outcome label, count), for `lacave_discovered_machines_total{outcome}`.
    pub fn snapshot(&self) -> [(&'static str, u64); 4] {
        [
            ("recorded", self.recorded.load(Ordering::Relaxed)),
            ("rate_limited", self.rate_limited.load(Ordering::Relaxed)),
            ("evicted", self.evicted.load(Ordering::Relaxed)),
            ("expired", self.expired.load(Ordering::Relaxed)),
        ]
    }
}

/// The limits and the rate bucket.
pub(super) struct Gate {
    pub(super) limits: DiscoveryLimits,
    tokens: f64,
    refilled: Instant,
}

impl Default for Gate {
    fn default() -> Self {
        let limits = DiscoveryLimits::default();
        Gate {
            limits,
            tokens: f64::from(limits.per_minute),
            refilled: Instant::now(),
        }
    }
}

impl Gate {
    /// Takes a token for one new machine, if the bucket has one.
    fn take(&mut self) -> bool {
        let now = Instant::now();
        let rate = f64::from(self.limits.per_minute) / 60.0;
        let burst = f64::from(self.limits.per_minute);
        self.tokens =
            (self.tokens + now.duration_since(self.refilled).as_secs_f64() * rate).min(burst);
        self.refilled = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

impl Store {
    /// Sets the bounds (at start, from the configuration).
    pub fn set_discovery_limits(&self, limits: DiscoveryLimits) {
        let mut gate = lock(&self.discovery);
        gate.limits = limits;
        gate.tokens = f64::from(limits.per_minute);
    }

    pub fn discovery_limits(&self) -> DiscoveryLimits {
        lock(&self.discovery).limits
    }

    pub fn discovery_counts(&self) -> &DiscoveryCounts {
        &self.discovery_counts
    }

    /// Whether a machine seen for the first time may be recorded now (the rate bound).
    pub(super) fn admit_new_machine(&self) -> bool {
        if lock(&self.discovery).take() {
            true
        } else {
            self.discovery_counts
                .rate_limited
                .fetch_add(1, Ordering::Relaxed);
            false
        }
    }

    /// The discovered machines to evict so that `incoming` more fit under the cap: the ones
    /// unseen the longest.
    pub(super) fn eviction_victims(&self, incoming: usize) -> Vec<u64> {
        let max = self.discovery_limits().max;
        let view = self.view();
        let mut discovered: Vec<(OffsetDateTime, u64)> = view
            .discovered_last_seen()
            .map(|(id, at)| (at, id))
            .collect();
        let excess = (discovered.len() + incoming).saturating_sub(max);
        if excess == 0 {
            return Vec::new();
        }
        discovered.sort_unstable();
        discovered.truncate(excess);
        discovered.into_iter().map(|(_, id)| id).collect()
    }

    /// Removes discovered machines unseen since `now - forget_after`; returns how many.
    pub fn forget_stale_discovered(&self, now: OffsetDateTime) -> Result<usize, StoreError> {
        let cutoff = now - lock(&self.discovery).limits.forget_after;
        let stale: Vec<u64> = self
            .view()
            .discovered_last_seen()
            .filter(|(_, at)| *at < cutoff)
            .map(|(id, _)| id)
            .collect();
        if stale.is_empty() {
            return Ok(0);
        }
        let removed = self.remove_discovered(&stale)?;
        self.flush_db()?;
        self.discovery_counts
            .expired
            .fetch_add(removed as u64, Ordering::Relaxed);
        Ok(removed)
    }

    /// Deletes these nodes if they are still only discovered, with their histories.
    pub(super) fn remove_discovered(&self, ids: &[u64]) -> Result<usize, StoreError> {
        let removed = self.staged_tx_many(|tx| {
            let mut changes = Vec::new();
            for id in ids {
                if tx.nodes.get(id.to_be_bytes())?.is_none() {
                    continue; // deleted meanwhile
                }
                let node = tx.load(*id)?;
                if node.state != NodeState::Discovered {
                    continue; // adopted meanwhile
                }
                tx.remove_indexes(&node)?;
                tx.nodes.remove(&id.to_be_bytes())?;
                changes.push((*id, None));
            }
            let removed: Vec<u64> = changes.iter().map(|(id, _)| *id).collect();
            Ok((removed, changes))
        })?;
        self.sweep_events(&removed)?;
        Ok(removed.len())
    }
}

//! Failed logins cost the address that makes them, never the listener.
//!
//! A wrong API token (bearer header or the console's login form) is answered at once — no
//! delay that would hold a connection slot — and counted against its source address (an IPv6
//! source is its /64, as in [`crate::conns`]). A source with [`MAX_FAILURES`] failures in the
//! last [`WINDOW`] gets 429 with `Retry-After` for every further attempt until the window
//! ends, without its token being looked at, so guessing goes no faster than that whatever the
//! number of connections. The right token from any other address is never slowed down.
//!
//! Only the first failure of a window and the one that blocks the source are logged; the
//! rest are counted in `lacave_auth_failures_total{surface,result}`.
//!
//! The table is bounded ([`MAX_SOURCES`]): when it is full of live windows (a flood from many
//! addresses) the newcomers share one window, so memory stays fixed and the flood is still
//! throttled as a whole.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::conns::source_key;

/// Failed attempts a source may make in one [`WINDOW`].
pub const MAX_FAILURES: u32 = 10;
/// How long failures count.
pub const WINDOW: Duration = Duration::from_secs(60);
/// Sources tracked at once.
pub const MAX_SOURCES: usize = 4096;

/// The key shared by sources beyond [`MAX_SOURCES`].
const OVERFLOW: IpAddr = IpAddr::V4(Ipv4Addr::UNSPECIFIED);

struct Window {
    started: Instant,
    failures: u32,
}

#[derive(Default)]
pub struct AuthFailures {
    sources: Mutex<HashMap<IpAddr, Window>>,
}

/// What [`AuthFailures::check`] made of an attempt.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Accepted,
    /// A wrong token: the source's failures in the window so far.
    Refused(u32),
    /// The source is over its failures: the token was not looked at; retry after this.
    Throttled(Duration),
}

impl AuthFailures {
    /// Checks an attempt from `peer` with `correct` (the token comparison), unless the source
    /// is throttled, and counts it if wrong — all under one lock, so concurrent guesses from a
    /// source can never exceed [`MAX_FAILURES`] per window.
    pub fn check(&self, peer: IpAddr, correct: impl FnOnce() -> bool) -> Verdict {
        self.check_at(peer, Instant::now(), correct)
    }

    /// Logs a failed attempt when it is worth a line (see the module's documentation).
    pub fn log(surface: &str, peer: &str, failures: u32) {
        if failures == 1 {
            tracing::warn!(%peer, surface, "a wrong API token");
        } else if failures == MAX_FAILURES {
            tracing::warn!(
                %peer,
                surface,
                failures,
                "too many wrong API tokens from this address: it gets 429 until its window ends"
            );
        }
    }

    fn key(sources: &HashMap<IpAddr, Window>, peer: IpAddr) -> IpAddr {
        let key = source_key(peer);
        if sources.contains_key(&key) || sources.len() < MAX_SOURCES {
            key
        } else {
            OVERFLOW
        }
    }

    fn check_at(&self, peer: IpAddr, now: Instant, correct: impl FnOnce() -> bool) -> Verdict {
        let mut sources = self.sources.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(window) = sources.get(&Self::key(&sources, peer))
            && window.failures >= MAX_FAILURES
            && let Some(left) = WINDOW.checked_sub(now.saturating_duration_since(window.started))
            && !left.is_zero()
        {
            return Verdict::Throttled(left);
        }
        if correct() {
            return Verdict::Accepted;
        }
        if sources.len() >= MAX_SOURCES && !sources.contains_key(&source_key(peer)) {
            sources.retain(|_, w| now.saturating_duration_since(w.started) < WINDOW);
        }
        let key = Self::key(&sources, peer);
        let window = sources.entry(key).or_insert(Window {
            started: now,
            failures: 0,
        });
        if now.saturating_duration_since(window.started) >= WINDOW {
            *window = Window {
                started: now,
                failures: 0,
            };
        }
        window.failures = window.failures.saturating_add(1);
        Verdict::Refused(window.failures)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn wrong(t: &AuthFailures, peer: IpAddr, now: Instant) -> Verdict {
        t.check_at(peer, now, || false)
    }

    #[test]
    fn a_source_is_throttled_after_its_failures_until_the_window_ends() {
        let t = AuthFailures::default();
        let now = Instant::now();
        for n in 1..MAX_FAILURES {
            assert_eq!(wrong(&t, ip("192.0.2.7"), now), Verdict::Refused(n));
        }
        assert_eq!(t.check_at(ip("192.0.2.7"), now, || true), Verdict::Accepted);
        assert_eq!(
            wrong(&t, ip("192.0.2.7"), now),
            Verdict::Refused(MAX_FAILURES)
        );
        // From now on the token is not even looked at.
        let later = now + Duration::from_secs(20);
        assert_eq!(
            t.check_at(ip("192.0.2.7"), later, || panic!("not looked at")),
            Verdict::Throttled(Duration::from_secs(40))
        );
        // Another address is not affected; the same /64 is.
        assert_eq!(
            t.check_at(ip("192.0.2.8"), later, || true),
            Verdict::Accepted
        );
        for _ in 0..MAX_FAILURES {
            wrong(&t, ip("2001:db8::1"), now);
        }
        assert!(matches!(
            wrong(&t, ip("2001:db8::ffff:2"), now),
            Verdict::Throttled(_)
        ));
        // The window ends: a fresh start.
        assert_eq!(
            wrong(&t, ip("192.0.2.7"), now + WINDOW),
            Verdict::Refused(1)
        );
    }

    #[test]
    fn the_table_stays_bounded_and_a_wide_flood_shares_one_window() {
        let t = AuthFailures::default();
        let now = Instant::now();
        for i in 0..MAX_SOURCES as u32 {
            wrong(&t, IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)), now);
        }
        for i in 0..MAX_FAILURES {
            wrong(&t, IpAddr::V4(Ipv4Addr::from(0x0b00_0000 + i)), now);
        }
        assert_eq!(t.sources.lock().unwrap().len(), MAX_SOURCES + 1);
        assert!(matches!(
            wrong(&t, ip("11.0.0.200"), now),
            Verdict::Throttled(_)
        ));
        // Once the old windows have ended, newcomers get their own again.
        let later = now + WINDOW;
        assert_eq!(wrong(&t, ip("12.0.0.1"), later), Verdict::Refused(1));
        assert!(t.sources.lock().unwrap().len() <= 2);
    }
}

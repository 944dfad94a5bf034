//! The web console's sessions: who logged in with the API token, until when. Stored (not
//! in memory) so a restart of the daemon does not log everyone out; keyed by the SHA-256 of
//! the session's secret, so the registry (and its backups) never holds a usable cookie.

use time::OffsetDateTime;

use super::{Store, StoreError};

/// A session as stored: when it ends and the token its state-changing requests must carry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    pub expires: OffsetDateTime,
    pub csrf: String,
}

fn encode(session: &Session) -> Vec<u8> {
    let mut v = session.expires.unix_timestamp().to_be_bytes().to_vec();
    v.extend_from_slice(session.csrf.as_bytes());
    v
}

fn decode(bytes: &[u8]) -> Option<Session> {
    let expires = i64::from_be_bytes(bytes.get(..8)?.try_into().ok()?);
    Some(Session {
        expires: OffsetDateTime::from_unix_timestamp(expires).ok()?,
        csrf: String::from_utf8(bytes[8..].to_vec()).ok()?,
    })
}

impl Store {
    /// Records a session durably, and forgets the expired ones.
    pub fn create_session(&self, key: &[u8; 32], session: &Session) -> Result<(), StoreError> {
        let now = super::now();
        for entry in self.sessions.iter() {
            let (k, v) = entry?;
            if decode(&v).is_none_or(|s| s.expires <= now) {
                self.sessions.remove(k)?;
            }
        }
        self.sessions.insert(key, encode(session))?;
        self.flush_db()
    }

    /// The session with this key, if it exists and has not expired.
    pub fn session(&self, key: &[u8; 32]) -> Result<Option<Session>, StoreError> {
        Ok(self
            .sessions
            .get(key)?
            .and_then(|v| decode(&v))
            .filter(|s| s.expires > super::now()))
    }

    /// Ends a session (logout), durably.
    pub fn delete_session(&self, key: &[u8; 32]) -> Result<(), StoreError> {
        self.sessions.remove(key)?;
        self.flush_db()?;
        self.sessions_ended.send_modify(|n| *n += 1);
        Ok(())
    }

    /// Changes when a session ends (its stream then checks whether it is its own).
    pub fn sessions_subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.sessions_ended.subscribe()
    }

    /// Ends every session (logout everywhere), durably; returns how many there were.
    pub fn revoke_all_sessions(&self) -> Result<usize, StoreError> {
        let mut batch = sled::Batch::default();
        let mut n = 0;
        for key in self.sessions.iter().keys() {
            batch.remove(key?);
            n += 1;
        }
        self.sessions.apply_batch(batch)?;
        self.flush_db()?;
        self.sessions_ended.send_modify(|g| *g += 1);
        Ok(n)
    }

    /// Binds the sessions to the API token in force, by its SHA-256 (`fingerprint`): the
    /// sessions were opened with another token (it was rotated), so every one of them ends.
    /// Called at start, before any request; returns how many ended.
    pub fn bind_sessions_to_token(&self, fingerprint: &[u8; 32]) -> Result<usize, StoreError> {
        const KEY: &str = "sessions_token";
        if self.meta.get(KEY)?.as_deref() == Some(&fingerprint[..]) {
            return Ok(0);
        }
        let ended = self.revoke_all_sessions()?;
        self.meta.insert(KEY, &fingerprint[..])?;
        self.flush_db()?;
        Ok(ended)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn another_token_or_a_revocation_ends_every_session() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let live = Session {
            expires: super::super::now() + time::Duration::hours(1),
            csrf: "c".into(),
        };
        assert_eq!(store.bind_sessions_to_token(&[1; 32]).unwrap(), 0);
        store.create_session(&[7; 32], &live).unwrap();
        store.create_session(&[8; 32], &live).unwrap();
        // The same token at the next start: the sessions stay.
        assert_eq!(store.bind_sessions_to_token(&[1; 32]).unwrap(), 0);
        assert!(store.session(&[7; 32]).unwrap().is_some());
        // A rotated token: every session ends, durably.
        assert_eq!(store.bind_sessions_to_token(&[2; 32]).unwrap(), 2);
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        assert!(store.session(&[7; 32]).unwrap().is_none());
        assert_eq!(store.bind_sessions_to_token(&[2; 32]).unwrap(), 0);
        store.create_session(&[9; 32], &live).unwrap();
        assert_eq!(store.revoke_all_sessions().unwrap(), 1);
        assert!(store.session(&[9; 32]).unwrap().is_none());
    }

    #[test]
    fn sessions_survive_a_restart_and_end_at_expiry_or_logout() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let live = Session {
            expires: super::super::now() + time::Duration::hours(1),
            csrf: "c1".into(),
        };
        let old = Session {
            expires: super::super::now() - time::Duration::seconds(1),
            csrf: "c2".into(),
        };
        store.create_session(&[1; 32], &live).unwrap();
        store.create_session(&[2; 32], &old).unwrap();
        assert_eq!(store.session(&[2; 32]).unwrap(), None, "expired");
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        let got = store.session(&[1; 32]).unwrap().unwrap();
        assert_eq!(got.csrf, "c1");
        store.delete_session(&[1; 32]).unwrap();
        assert_eq!(store.session(&[1; 32]).unwrap(), None, "logged out");
    }
}

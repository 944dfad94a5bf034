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
        self.flush_db()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

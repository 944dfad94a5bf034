//! Issuing with a record: every certificate the CA signs is recorded in the registry under a
//! serial no other certificate has.

use time::OffsetDateTime;

use super::{Ca, IssuedLeaf, LeafRequest, PkiError, random_serial};
use crate::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Signs `req` and records it; a serial already taken (a 2^-126 event) is replaced by a new
/// one, so a serial is never reused.
pub fn issue_and_record(
    store: &Store,
    ca: &Ca,
    req: &LeafRequest,
    requester: &str,
    now: OffsetDateTime,
) -> Result<IssuedLeaf, IssueError> {
    loop {
        let issued = ca.issue(req, random_serial(), requester, now)?;
        if store.record_certificate(&issued.record)? {
            return Ok(issued);
        }
        tracing::warn!(serial = %issued.record.serial, "serial collision; issuing again");
    }
}

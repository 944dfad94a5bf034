//! Issued certificates, by serial: a serial is taken with a compare-and-swap before the
//! certificate is handed out, so no two certificates share one.

use sled::transaction::{ConflictableTransactionError, abort};
use time::OffsetDateTime;

use super::{Store, StoreError, schema};
use crate::model::CertificateRecord;

impl Store {
    /// Records an issued certificate; `false` (and nothing written) when its serial is already
    /// taken, so the caller can re-issue under a new one: no two certificates share a serial.
    pub fn record_certificate(&self, record: &CertificateRecord) -> Result<bool, StoreError> {
        let inserted = self
            .certificates
            .compare_and_swap(
                record.serial.as_bytes(),
                None as Option<&[u8]>,
                Some(schema::encode_certificate(record)),
            )?
            .is_ok();
        self.flush_db()?;
        Ok(inserted)
    }

    /// Every issued certificate, by serial.
    pub fn list_certificates(&self) -> Result<Vec<CertificateRecord>, StoreError> {
        self.certificates
            .iter()
            .values()
            .map(|v| schema::decode_certificate(&v?))
            .collect()
    }

    /// Marks a certificate revoked (it stays listed, with when and why).
    pub fn revoke_certificate(
        &self,
        serial: &str,
        reason: Option<String>,
        at: OffsetDateTime,
    ) -> Result<CertificateRecord, StoreError> {
        let serial = serial.to_ascii_lowercase().replace(':', "");
        let out = self.certificates.transaction(|tree| {
            let Some(bytes) = tree.get(serial.as_bytes())? else {
                return abort(StoreError::CertificateNotFound(serial.clone()));
            };
            let mut record =
                schema::decode_certificate(&bytes).map_err(ConflictableTransactionError::Abort)?;
            if let Some(at) = record.revoked_at {
                return abort(StoreError::AlreadyRevoked {
                    serial: serial.clone(),
                    at: at.to_string(),
                });
            }
            record.revoked_at = Some(at);
            record.revocation_reason = reason.clone();
            tree.insert(serial.as_bytes(), schema::encode_certificate(&record))?;
            Ok(record)
        })?;
        self.flush_db()?;
        Ok(out)
    }
}

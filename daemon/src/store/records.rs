//! The operator's DNS records (by id, mirrored in memory) and the zone's SOA serial.

use std::sync::atomic::Ordering;

use sled::transaction::TransactionError;

use super::{Store, StoreError, schema};
use crate::model::RecordSpec;

impl Store {
    /// Adds an operator DNS record; the same name, type and value twice is a conflict.
    pub fn add_dns_record(&self, spec: &RecordSpec) -> Result<u64, StoreError> {
        let same = |a: &RecordSpec| {
            a.name.eq_ignore_ascii_case(&spec.name)
                && a.type_str() == spec.type_str()
                && a.value.to_string() == spec.value.to_string()
        };
        let id = self.db.generate_id()?;
        let mut dns = self.dns_view.write().unwrap_or_else(|e| e.into_inner());
        if let Some((existing, _)) = dns.iter().find(|(_, r)| same(r)) {
            return Err(StoreError::Conflict {
                field: "value",
                value: format!("{} {} {}", spec.name, spec.type_str(), spec.value),
                holder: format!("DNS record {existing}"),
            });
        }
        self.dns_records
            .insert(id.to_be_bytes(), schema::encode_dns_record(spec))?;
        self.flush_db()?;
        dns.insert(id, spec.clone());
        self.dns_generation.fetch_add(1, Ordering::SeqCst);
        Ok(id)
    }

    /// Every operator DNS record with its id.
    pub fn dns_records(&self) -> Vec<(u64, RecordSpec)> {
        self.dns_view
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(id, r)| (*id, r.clone()))
            .collect()
    }

    pub fn delete_dns_record(&self, id: u64) -> Result<RecordSpec, StoreError> {
        let mut dns = self.dns_view.write().unwrap_or_else(|e| e.into_inner());
        let Some(spec) = dns.get(&id).cloned() else {
            return Err(StoreError::DnsRecordNotFound(id));
        };
        self.dns_records.remove(id.to_be_bytes())?;
        self.flush_db()?;
        dns.remove(&id);
        self.dns_generation.fetch_add(1, Ordering::SeqCst);
        Ok(spec)
    }

    /// Changes whenever an operator DNS record is added or removed.
    pub fn dns_generation(&self) -> u64 {
        self.dns_generation.load(Ordering::SeqCst)
    }

    /// The SOA serial for zone content with `digest`: the stored one while the content is the
    /// same, else one more, stored durably before it is used. It never goes backwards, across
    /// restarts included.
    pub fn dns_serial(&self, digest: u64) -> Result<u32, StoreError> {
        let serial = self.meta.transaction(|meta| {
            let (serial, stored_digest) = match meta.get("dns_serial")? {
                Some(v) if v.len() == 12 => (
                    u32::from_be_bytes([v[0], v[1], v[2], v[3]]),
                    u64::from_be_bytes(v[4..12].try_into().expect("8 bytes")),
                ),
                _ => (0, 0),
            };
            if serial != 0 && stored_digest == digest {
                return Ok(serial);
            }
            // Serial arithmetic (RFC 1982) wraps; 0 is skipped to stay clear of "unset".
            let next = serial.wrapping_add(1).max(1);
            let mut v = next.to_be_bytes().to_vec();
            v.extend_from_slice(&digest.to_be_bytes());
            meta.insert("dns_serial", v)?;
            Ok(next)
        });
        let serial = serial.map_err(|e: TransactionError<StoreError>| StoreError::from(e))?;
        self.flush_db()?;
        Ok(serial)
    }
}

//! What the registry remembers of an issued certificate: shared by `pki` (which issues) and
//! `store` (which records).

use time::OffsetDateTime;

/// What the registry remembers of an issued certificate (never its key).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificateRecord {
    /// Lower-case hex, as `openssl x509 -serial` prints it (without its colons).
    pub serial: String,
    pub subject: String,
    pub dns_names: Vec<String>,
    pub ips: Vec<String>,
    pub usages: Vec<String>,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    pub issued_at: OffsetDateTime,
    /// Who asked: `api` (an operator) or `daemon` (its own HTTPS certificate).
    pub requester: String,
    pub revoked_at: Option<OffsetDateTime>,
    pub revocation_reason: Option<String>,
}

//! The certificate of the daemon's own HTTPS API, issued from the cluster CA and kept in
//! `<state_dir>/pki/api-cert.pem` (chain) and `api-key.pem` (0600). It is issued again at start
//! when missing, unreadable, signed by another CA, for other names, or within 30 days of expiry.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use time::{Duration, OffsetDateTime};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use super::{Ca, IssueError, LeafRequest, PkiError, Usage, issue_and_record};
use crate::secrets;
use crate::store::Store;

pub const API_CERT_FILE: &str = "api-cert.pem";
pub const API_KEY_FILE: &str = "api-key.pem";
const RENEW_BEFORE_DAYS: i64 = 30;

/// The names the API certificate must carry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerNames {
    pub dns: BTreeSet<String>,
    pub ips: BTreeSet<IpAddr>,
}

/// What the certificate in `cert_pem` is valid for, if `ca` signed it and it is not about to
/// expire.
fn current_names(ca: &Ca, cert_pem: &str, now: OffsetDateTime) -> Option<ServerNames> {
    let der = CertificateDer::from_pem_slice(cert_pem.as_bytes()).ok()?;
    let (_, cert) = X509Certificate::from_der(&der).ok()?;
    if !ca.signed(&cert) {
        return None;
    }
    if cert.validity().not_after.to_datetime() < now + Duration::days(RENEW_BEFORE_DAYS) {
        return None;
    }
    let san = cert.subject_alternative_name().ok()??;
    let mut names = ServerNames {
        dns: BTreeSet::new(),
        ips: BTreeSet::new(),
    };
    for n in &san.value.general_names {
        match n {
            GeneralName::DNSName(d) => {
                names.dns.insert(d.to_string());
            }
            GeneralName::IPAddress(b) => match b.len() {
                4 => {
                    names
                        .ips
                        .insert(IpAddr::from(<[u8; 4]>::try_from(*b).ok()?));
                }
                16 => {
                    names
                        .ips
                        .insert(IpAddr::from(<[u8; 16]>::try_from(*b).ok()?));
                }
                _ => return None,
            },
            _ => {}
        }
    }
    Some(names)
}

/// Loads the API's certificate, issuing (and recording) a new one when needed, and returns a
/// rustls configuration serving it.
pub fn ensure(
    dir: &Path,
    ca: &Ca,
    store: &Store,
    names: &ServerNames,
    leaf_days: u32,
    now: OffsetDateTime,
) -> Result<Arc<rustls::ServerConfig>, IssueError> {
    let cert_path = dir.join(API_CERT_FILE);
    let key_path = dir.join(API_KEY_FILE);
    let existing = std::fs::read_to_string(&cert_path).ok();
    let usable = existing
        .as_deref()
        .and_then(|pem| current_names(ca, pem, now))
        .is_some_and(|have| &have == names)
        && secrets::check_private(&key_path).is_ok();
    if !usable {
        let max_days = (ca.not_after() - now).whole_days().max(1) as u32;
        let req = LeafRequest {
            dns_names: names.dns.iter().cloned().collect(),
            ips: names.ips.iter().copied().collect(),
            days: leaf_days.min(max_days.saturating_sub(1).max(1)),
            usages: vec![Usage::Server],
            csr_pem: None,
        };
        let issued = issue_and_record(store, ca, &req, "daemon", now)?;
        let key = issued
            .private_key_pem
            .as_deref()
            .expect("a key is generated when no CSR is given");
        secrets::write_private(&key_path, key.as_bytes()).map_err(PkiError::from)?;
        secrets::write_atomic(&cert_path, issued.chain_pem.as_bytes(), 0o644)
            .map_err(PkiError::from)?;
        tracing::info!(serial = %issued.record.serial, dns = ?names.dns, ips = ?names.ips, "issued the API's HTTPS certificate");
    }
    let chain_pem = std::fs::read(&cert_path).map_err(|source| PkiError::Read {
        path: cert_path.clone(),
        source,
    })?;
    let key_pem = std::fs::read(&key_path).map_err(|source| PkiError::Read {
        path: key_path.clone(),
        source,
    })?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&chain_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| PkiError::Invalid(format!("{}: {e}", cert_path.display())))?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| PkiError::Invalid(format!("{}: {e}", key_path.display())))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(chain, key))
        .map_err(|e| PkiError::Invalid(format!("the API certificate cannot be served: {e}")))?;
    Ok(Arc::new(config))
}

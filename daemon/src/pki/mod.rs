//! The cluster's certificate authority: created on first start (or by `lacave pki init`) or
//! imported from an existing PKI, kept in `<state_dir>/pki/`, and used to issue leaf
//! certificates (for cluster services and for the daemon's own HTTPS API).
//!
//! Files: `ca-key.pem` (the signing CA's private key, 0600) and `ca-chain.pem` (the signing CA
//! first, then each issuer up to the root; public). With an imported root → intermediate PKI,
//! the intermediate signs and leaf chains include it.
//!
//! Everything here is synchronous and free of I/O except [`Ca::load`] and [`Ca::save`].

mod issuance;
pub mod server_cert;
pub mod settings;

use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PublicKeyData,
    SanType, SerialNumber,
};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use time::{Duration, OffsetDateTime};
use x509_parser::prelude::{FromDer, X509Certificate};

pub use issuance::{IssueError, issue_and_record};
pub use settings::{CaSettings, KeyType};

use crate::model::CertificateRecord;
use crate::secrets::{self, SecretError};

pub const CA_KEY_FILE: &str = "ca-key.pem";
pub const CA_CHAIN_FILE: &str = "ca-chain.pem";

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("no CA in {0}: run `lacave pki init`, or `lacave pki import --cert … --key …`")]
    Missing(PathBuf),
    #[error(
        "a CA already exists in {0}; replacing it breaks the trust of every node and certificate: pass --force to replace it"
    )]
    Exists(PathBuf),
    #[error("{0}")]
    Invalid(String),
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Secret(#[from] SecretError),
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
}

fn invalid(msg: impl Into<String>) -> PkiError {
    PkiError::Invalid(msg.into())
}

/// What a leaf certificate is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Usage {
    Server,
    Client,
}

impl Usage {
    pub fn as_str(self) -> &'static str {
        match self {
            Usage::Server => "server",
            Usage::Client => "client",
        }
    }
}

impl std::str::FromStr for Usage {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "server" => Ok(Usage::Server),
            "client" => Ok(Usage::Client),
            _ => Err(format!(
                "{s:?} is not a usage (expected \"server\" or \"client\")"
            )),
        }
    }
}

/// A validated request for a leaf certificate.
#[derive(Clone, Debug)]
pub struct LeafRequest {
    pub dns_names: Vec<String>,
    pub ips: Vec<IpAddr>,
    pub days: u32,
    pub usages: Vec<Usage>,
    /// A PKCS#10 request (PEM) whose key the certificate certifies; `None`: generate a key.
    pub csr_pem: Option<String>,
}

/// A freshly issued leaf certificate.
#[derive(Clone, Debug)]
pub struct IssuedLeaf {
    pub record: CertificateRecord,
    /// The leaf alone.
    pub certificate_pem: String,
    /// The leaf, then every intermediate CA (not the root): what a server presents.
    pub chain_pem: String,
    /// Set only when the key was generated here.
    pub private_key_pem: Option<String>,
}

/// The parameters of a self-signed root CA made here (the lacave CA, and the cluster's
/// Kubernetes, front-proxy and etcd CAs): CA:TRUE, may sign certificates and CRLs, a fresh
/// serial, valid from an hour ago (nodes whose clock lags) for `validity_days`.
pub fn ca_params(
    common_name: &str,
    organization: Option<&str>,
    validity_days: u32,
    now: OffsetDateTime,
) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    if let Some(o) = organization {
        dn.push(DnType::OrganizationName, o);
    }
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.serial_number = Some(SerialNumber::from_slice(&random_serial()));
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(i64::from(validity_days));
    params
}

/// A fresh random serial: 16 bytes, positive, with no leading zero byte (so its DER and hex
/// forms are stable).
pub fn random_serial() -> [u8; 16] {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).expect("the operating system's random generator works");
    b[0] = (b[0] & 0x7f) | 0x40;
    b
}

/// Lower-case hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn to_pem(der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

fn parse<'a>(der: &'a CertificateDer<'_>) -> Result<X509Certificate<'a>, PkiError> {
    X509Certificate::from_der(der)
        .map(|(_, c)| c)
        .map_err(|e| invalid(format!("a certificate cannot be parsed: {e}")))
}

fn datetime(t: x509_parser::time::ASN1Time) -> OffsetDateTime {
    t.to_datetime()
}

fn fmt_date(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.to_string())
}

/// The cluster CA: the signing key and the chain from the signing CA to the root.
pub struct Ca {
    key: KeyPair,
    /// Signing CA first, root last (a generated CA is its own root: one element).
    chain: Vec<CertificateDer<'static>>,
    subject: String,
    not_after: OffsetDateTime,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("subject", &self.subject)
            .field("chain_len", &self.chain.len())
            .finish_non_exhaustive()
    }
}

impl Ca {
    /// Creates a new self-signed root CA.
    pub fn generate(settings: &CaSettings, now: OffsetDateTime) -> Result<Ca, PkiError> {
        let key = match settings.key_type {
            KeyType::EcdsaP256 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?,
            KeyType::Rsa2048 => {
                KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)?
            }
            KeyType::Rsa3072 => {
                KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_3072)?
            }
        };
        let params = ca_params(
            &settings.common_name,
            settings.organization.as_deref(),
            settings.validity_days,
            now,
        );
        let cert = params.self_signed(&key)?;
        Ca::from_parts(key, vec![cert.der().clone()], now)
    }

    /// Checks and assembles a CA from its key and chain (signing CA first).
    fn from_parts(
        key: KeyPair,
        chain: Vec<CertificateDer<'static>>,
        now: OffsetDateTime,
    ) -> Result<Ca, PkiError> {
        let signing = parse(&chain[0])?;
        let subject = signing.subject().to_string();
        let not_after = datetime(signing.validity().not_after);
        if key.subject_public_key_info() != signing.public_key().raw {
            return Err(invalid(format!(
                "the private key does not belong to the signing CA {subject}"
            )));
        }
        check_ca(&signing, now)?;
        // The issuer is built once here so that an imported name rcgen cannot reproduce is an
        // import error, not a failure at the first issue.
        Issuer::from_ca_cert_der(&chain[0], &key)
            .map_err(|e| invalid(format!("the CA {subject} cannot be used to sign: {e}")))?;
        Ok(Ca {
            key,
            chain,
            subject,
            not_after,
        })
    }

    /// Imports an existing CA: `cert_pem` holds the signing CA and, optionally, its issuers
    /// (e.g. a root and an intermediate, in any order); `key_pem` is the signing CA's key
    /// (PKCS#8, SEC1 or PKCS#1, unencrypted).
    pub fn import(cert_pem: &str, key_pem: &str, now: OffsetDateTime) -> Result<Ca, PkiError> {
        let key = KeyPair::from_pem(key_pem).map_err(|e| {
            invalid(format!(
                "the key file holds no usable private key ({e}); an unencrypted PKCS#8, SEC1 or PKCS#1 PEM key is needed"
            ))
        })?;
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(cert_pem.as_bytes())
                .collect::<Result<_, _>>()
                .map_err(|e| invalid(format!("the certificate file is not PEM: {e}")))?;
        if certs.is_empty() {
            return Err(invalid("the certificate file holds no certificate"));
        }
        let parsed: Vec<X509Certificate<'_>> = certs.iter().map(parse).collect::<Result<_, _>>()?;
        for c in &parsed {
            check_ca(c, now)?;
        }
        let spki = key.subject_public_key_info();
        let signing = parsed
            .iter()
            .position(|c| c.public_key().raw == spki.as_slice())
            .ok_or_else(|| {
                invalid(format!(
                    "the private key does not match any certificate in the file ({})",
                    parsed
                        .iter()
                        .map(|c| c.subject().to_string())
                        .collect::<Vec<_>>()
                        .join("; ")
                ))
            })?;
        // Follow issuers from the signing CA up, checking each signature.
        let mut order = vec![signing];
        loop {
            let cur = &parsed[*order.last().expect("not empty")];
            if cur.subject() == cur.issuer() {
                cur.verify_signature(None).map_err(|_| {
                    invalid(format!(
                        "the self-signed CA {} has a bad signature",
                        cur.subject()
                    ))
                })?;
                break;
            }
            let next = parsed.iter().enumerate().find(|(i, c)| {
                !order.contains(i)
                    && c.subject() == cur.issuer()
                    && cur.verify_signature(Some(c.public_key())).is_ok()
            });
            match next {
                Some((i, _)) => order.push(i),
                // The chain may stop at an intermediate: it is then the trust anchor.
                None => break,
            }
        }
        if order.len() != parsed.len() {
            let stray: Vec<String> = (0..parsed.len())
                .filter(|i| !order.contains(i))
                .map(|i| parsed[i].subject().to_string())
                .collect();
            return Err(invalid(format!(
                "certificates not in the signing CA's chain: {}",
                stray.join("; ")
            )));
        }
        let chain = order.into_iter().map(|i| certs[i].clone()).collect();
        Ca::from_parts(key, chain, now)
    }

    /// Reads the CA from `dir`, refusing a key file others can read.
    pub fn load(dir: &Path, now: OffsetDateTime) -> Result<Ca, PkiError> {
        let key_path = dir.join(CA_KEY_FILE);
        let chain_path = dir.join(CA_CHAIN_FILE);
        if !key_path.exists() && !chain_path.exists() {
            return Err(PkiError::Missing(dir.to_path_buf()));
        }
        let read = |path: &Path| {
            std::fs::read_to_string(path).map_err(|source| PkiError::Read {
                path: path.to_path_buf(),
                source,
            })
        };
        secrets::check_private(&key_path)?;
        let key_pem = read(&key_path)?;
        let chain_pem = read(&chain_path)?;
        // Loading does not reject a CA that expired while stored: it is reported, and the
        // operator replaces it, but the daemon keeps serving its nodes meanwhile.
        let ca = Ca::import(&chain_pem, &key_pem, now).or_else(|e| match e {
            PkiError::Invalid(msg) if msg.contains("expired") => {
                tracing::error!(error = %msg, "the cluster CA has expired: replace it with `lacave pki import` or `lacave pki init --force`");
                Ca::import_unchecked_validity(&chain_pem, &key_pem)
            }
            other => Err(other),
        })?;
        Ok(ca)
    }

    fn import_unchecked_validity(chain_pem: &str, key_pem: &str) -> Result<Ca, PkiError> {
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(chain_pem.as_bytes())
                .collect::<Result<_, _>>()
                .map_err(|e| invalid(format!("the certificate file is not PEM: {e}")))?;
        let first = certs
            .first()
            .ok_or_else(|| invalid("the chain file holds no certificate"))?;
        let not_before = datetime(parse(first)?.validity().not_before);
        let key = KeyPair::from_pem(key_pem).map_err(|e| invalid(e.to_string()))?;
        Ca::from_parts(key, certs, not_before + Duration::seconds(1))
    }

    /// Writes the CA into `dir` (created 0700): the key 0600, the chain public. New files take
    /// the owner of `dir`'s parent (the state directory), so a CA written by root with the CLI
    /// stays readable by the daemon's own user.
    pub fn save(&self, dir: &Path) -> Result<(), PkiError> {
        secrets::create_private_dir(dir).map_err(|source| SecretError::Write {
            path: dir.to_path_buf(),
            source,
        })?;
        secrets::write_atomic(
            &dir.join(CA_KEY_FILE),
            self.key.serialize_pem().as_bytes(),
            0o600,
        )?;
        secrets::write_atomic(
            &dir.join(CA_CHAIN_FILE),
            self.bundle_pem().as_bytes(),
            0o644,
        )?;
        if let Some(parent) = dir.parent() {
            secrets::match_owner(
                parent,
                &[dir, &dir.join(CA_KEY_FILE), &dir.join(CA_CHAIN_FILE)],
            )?;
        }
        Ok(())
    }

    /// Whether `dir` already holds a CA.
    pub fn exists(dir: &Path) -> bool {
        dir.join(CA_KEY_FILE).exists() || dir.join(CA_CHAIN_FILE).exists()
    }

    /// The whole CA chain, signing CA first: what nodes and clients put in their trust store
    /// (served as `/ca.pem`, written to nodes' `/etc/ssl/certs/`).
    pub fn bundle_pem(&self) -> String {
        self.chain.iter().map(|c| to_pem(c)).collect()
    }

    /// The root (the last certificate of the chain), alone.
    pub fn root_pem(&self) -> String {
        to_pem(self.chain.last().expect("a chain is never empty"))
    }

    /// Intermediates between a leaf and the root: every CA but a self-signed root.
    fn intermediates(&self) -> impl Iterator<Item = &CertificateDer<'static>> {
        let n = self.chain.len();
        let root_is_self_signed = self
            .chain
            .last()
            .and_then(|c| parse(c).ok().map(|p| p.subject() == p.issuer()))
            .unwrap_or(false);
        let keep = if root_is_self_signed { n - 1 } else { n };
        self.chain.iter().take(keep)
    }

    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// The SHA-256 fingerprint of the root certificate (what `openssl x509 -fingerprint
    /// -sha256` prints), colon-separated upper-case hex.
    pub fn root_fingerprint(&self) -> String {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(self.chain.last().expect("a chain is never empty"));
        digest
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect::<Vec<_>>()
            .join(":")
    }

    /// Whether `cert` was signed by this CA's signing key.
    pub fn signed(&self, cert: &X509Certificate<'_>) -> bool {
        parse(&self.chain[0])
            .map(|ca| cert.verify_signature(Some(ca.public_key())).is_ok())
            .unwrap_or(false)
    }

    pub fn not_after(&self) -> OffsetDateTime {
        self.not_after
    }

    /// Issues a leaf certificate with serial `serial` (the caller makes it unique).
    pub fn issue(
        &self,
        req: &LeafRequest,
        serial: [u8; 16],
        requester: &str,
        now: OffsetDateTime,
    ) -> Result<IssuedLeaf, PkiError> {
        let not_before = now - Duration::minutes(5);
        // A validity beyond what the calendar type holds is refused, never a panic.
        let not_after = now
            .checked_add(Duration::days(i64::from(req.days)))
            .ok_or_else(|| invalid(format!("days: {} days is beyond any date", req.days)))?;
        if not_after > self.not_after {
            let max = (self.not_after - now).whole_days();
            return Err(invalid(format!(
                "days: {} days would end on {}, after the CA itself expires ({}); at most {max} days",
                req.days,
                fmt_date(not_after),
                fmt_date(self.not_after)
            )));
        }
        let mut params = CertificateParams::default();
        let cn = req
            .dns_names
            .first()
            .cloned()
            .or_else(|| req.ips.first().map(ToString::to_string))
            .ok_or_else(|| invalid("a certificate needs at least one DNS name or IP address"))?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, cn.as_str());
        params.distinguished_name = dn;
        for name in &req.dns_names {
            params.subject_alt_names.push(SanType::DnsName(
                name.as_str()
                    .try_into()
                    .map_err(|_| invalid(format!("dns_names: {name:?} is not ASCII")))?,
            ));
        }
        for ip in &req.ips {
            params.subject_alt_names.push(SanType::IpAddress(*ip));
        }
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = req
            .usages
            .iter()
            .map(|u| match u {
                Usage::Server => ExtendedKeyUsagePurpose::ServerAuth,
                Usage::Client => ExtendedKeyUsagePurpose::ClientAuth,
            })
            .collect();
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        params.not_before = not_before;
        params.not_after = not_after;
        params.use_authority_key_identifier_extension = true;

        let issuer = Issuer::from_ca_cert_der(&self.chain[0], &self.key)?;
        let (cert, private_key_pem) = match &req.csr_pem {
            Some(csr) => {
                let parsed = CertificateSigningRequestParams::from_pem(csr)
                    .map_err(|e| invalid(format!("csr: not a valid PKCS#10 request ({e})")))?;
                let request = CertificateSigningRequestParams {
                    params,
                    public_key: parsed.public_key,
                };
                (request.signed_by(&issuer)?, None)
            }
            None => {
                let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
                (params.signed_by(&key, &issuer)?, Some(key.serialize_pem()))
            }
        };
        let certificate_pem = to_pem(cert.der());
        let mut chain_pem = certificate_pem.clone();
        for c in self.intermediates() {
            chain_pem.push_str(&to_pem(c));
        }
        Ok(IssuedLeaf {
            record: CertificateRecord {
                serial: hex(&serial),
                subject: format!("CN={cn}"),
                dns_names: req.dns_names.clone(),
                ips: req.ips.iter().map(ToString::to_string).collect(),
                usages: req.usages.iter().map(|u| u.as_str().to_string()).collect(),
                not_before,
                not_after,
                issued_at: now,
                requester: requester.to_string(),
                revoked_at: None,
                revocation_reason: None,
            },
            certificate_pem,
            chain_pem,
            private_key_pem,
        })
    }

    /// The manifests that let cert-manager issue certificates from this CA, like the original
    /// project's `ca-lacave-issuer`: a TLS Secret holding the signing CA and its key, and a
    /// `ClusterIssuer` (cert-manager.io/v1) using it.
    pub fn cert_manager_manifests(&self) -> String {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
        let (crt, key) = self.issuer_key_pair();
        let mut out = String::new();
        let _ = write!(
            out,
            "# The cluster CA for cert-manager, from lacave. It holds the CA's private key:\n\
             # apply it with `lacave pki export cert-manager | kubectl apply -f -` and keep it out of git.\n\
             apiVersion: v1\n\
             kind: Secret\n\
             metadata:\n  name: ca-lacave-key-pair\n  namespace: cert-manager\n\
             type: kubernetes.io/tls\n\
             data:\n  tls.crt: {}\n  tls.key: {}\n\
             ---\n\
             apiVersion: cert-manager.io/v1\n\
             kind: ClusterIssuer\n\
             metadata:\n  name: ca-lacave-issuer\n\
             spec:\n  ca:\n    secretName: ca-lacave-key-pair\n",
            b64(&crt),
            b64(&key),
        );
        out
    }

    /// What an issuer signing with this CA holds: the signing CA's chain up to (not
    /// including) a self-signed root, or the root alone; and the private key (PEM).
    pub fn issuer_key_pair(&self) -> (String, String) {
        let mut crt = String::new();
        for c in self.intermediates() {
            crt.push_str(&to_pem(c));
        }
        if crt.is_empty() {
            crt = self.root_pem();
        }
        (crt, self.key.serialize_pem())
    }
}

/// A CA certificate must say it is one, may sign certificates, and be valid now.
fn check_ca(c: &X509Certificate<'_>, now: OffsetDateTime) -> Result<(), PkiError> {
    let subject = c.subject().to_string();
    if !c.is_ca() {
        return Err(invalid(format!(
            "{subject} is not a CA certificate (its basicConstraints do not say cA:TRUE)"
        )));
    }
    if let Ok(Some(ku)) = c.key_usage()
        && !ku.value.key_cert_sign()
    {
        return Err(invalid(format!(
            "{subject} may not sign certificates (its keyUsage lacks keyCertSign)"
        )));
    }
    let not_after = datetime(c.validity().not_after);
    let not_before = datetime(c.validity().not_before);
    if now > not_after {
        return Err(invalid(format!(
            "the CA {subject} expired on {}",
            fmt_date(not_after)
        )));
    }
    if now < not_before {
        return Err(invalid(format!(
            "the CA {subject} is not valid before {}",
            fmt_date(not_before)
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests;

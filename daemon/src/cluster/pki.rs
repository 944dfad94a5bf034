//! The Kubernetes cluster's own PKI, owned by the daemon: the Kubernetes CA, the front-proxy
//! CA, the etcd CA and the service-account key pair, made once per cluster (rcgen, ECDSA P-256)
//! and kept private under `<state_dir>/cluster/pki/` in kubeadm's layout. They are copied to a
//! control-plane node's `/etc/kubernetes/pki` before `kubeadm init` or `kubeadm join
//! --control-plane`; kubeadm uses the CAs it finds and issues every leaf certificate from them,
//! so no `--upload-certs` and no certificate key are needed.
//!
//! They are not the lacave root CA (`pki/`), on purpose: whoever holds the Kubernetes CA can
//! mint `system:masters` credentials, while the root CA signs web and ingress certificates and
//! is trusted by every node's system store. Keeping them apart means a leaked ingress issuer
//! (cert-manager holds the root CA key in the cluster) never grants the cluster, and the
//! cluster's CAs can be replaced with the cluster without touching what nodes trust.

use std::path::{Path, PathBuf};

use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, Issuer, KeyPair,
    KeyUsagePurpose, PublicKeyData, SerialNumber,
};
use sha2::Digest;
use time::{Duration, OffsetDateTime};

use crate::secrets::{self, SecretError};

#[derive(Debug, thiserror::Error)]
pub enum ClusterPkiError {
    #[error(transparent)]
    Secret(#[from] SecretError),
    #[error("{path}: {reason}")]
    Invalid { path: String, reason: String },
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
}

/// One CA: its certificate (PEM) and key.
pub struct CaPair {
    pub cert_pem: String,
    key: KeyPair,
}

impl CaPair {
    fn generate(common_name: &str, now: OffsetDateTime) -> Result<CaPair, ClusterPkiError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        // kubeadm's own CAs last ten years and also carry keyEncipherment; so do these.
        let mut params = crate::pki::ca_params(common_name, None, 3650, now);
        params.key_usages.push(KeyUsagePurpose::KeyEncipherment);
        let cert = params.self_signed(&key)?;
        Ok(CaPair {
            cert_pem: cert.pem(),
            key,
        })
    }

    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    fn load(cert_path: &Path, key_path: &Path) -> Result<CaPair, ClusterPkiError> {
        secrets::check_private(key_path)?;
        let read = |p: &Path| {
            std::fs::read_to_string(p).map_err(|source| {
                ClusterPkiError::Secret(SecretError::Read {
                    path: p.to_path_buf(),
                    source,
                })
            })
        };
        let cert_pem = read(cert_path)?;
        let key = KeyPair::from_pem(&read(key_path)?).map_err(|e| ClusterPkiError::Invalid {
            path: key_path.display().to_string(),
            reason: e.to_string(),
        })?;
        // The key must be the certificate's: a mismatch would make kubeadm fail far later.
        Issuer::from_ca_cert_pem(&cert_pem, &key).map_err(|e| ClusterPkiError::Invalid {
            path: cert_path.display().to_string(),
            reason: format!("not a CA that its key can sign for: {e}"),
        })?;
        let der = rustls_pki_types::pem::PemObject::from_pem_slice(cert_pem.as_bytes())
            .map(|d: rustls_pki_types::CertificateDer<'static>| d)
            .map_err(|e| ClusterPkiError::Invalid {
                path: cert_path.display().to_string(),
                reason: e.to_string(),
            })?;
        let (_, parsed) =
            x509_parser::parse_x509_certificate(&der).map_err(|e| ClusterPkiError::Invalid {
                path: cert_path.display().to_string(),
                reason: e.to_string(),
            })?;
        if parsed.public_key().raw != key.subject_public_key_info() {
            return Err(ClusterPkiError::Invalid {
                path: key_path.display().to_string(),
                reason: "the key does not belong to the certificate beside it".into(),
            });
        }
        Ok(CaPair { cert_pem, key })
    }
}

/// The cluster's CAs and service-account key pair.
pub struct ClusterPki {
    pub dir: PathBuf,
    pub kubernetes: CaPair,
    pub front_proxy: CaPair,
    pub etcd: CaPair,
    sa_key: KeyPair,
}

impl std::fmt::Debug for ClusterPki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterPki")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// The files of the PKI, relative to the directory (kubeadm's `/etc/kubernetes/pki` layout),
/// each with whether it is private.
pub const FILES: [(&str, bool); 8] = [
    ("ca.crt", false),
    ("ca.key", true),
    ("front-proxy-ca.crt", false),
    ("front-proxy-ca.key", true),
    ("etcd/ca.crt", false),
    ("etcd/ca.key", true),
    ("sa.key", true),
    ("sa.pub", false),
];

impl ClusterPki {
    /// Loads the PKI from `dir`, or makes it on first use. A half-made directory (some files
    /// missing) is an error naming what is missing, never silently replaced: nodes may already
    /// trust the CAs that are there.
    pub fn load_or_create(dir: &Path) -> Result<ClusterPki, ClusterPkiError> {
        let present: Vec<&str> = FILES
            .iter()
            .map(|(f, _)| *f)
            .filter(|f| dir.join(f).exists())
            .collect();
        if present.is_empty() {
            return Self::create(dir, OffsetDateTime::now_utc());
        }
        if present.len() != FILES.len() {
            let missing: Vec<&str> = FILES
                .iter()
                .map(|(f, _)| *f)
                .filter(|f| !present.contains(f))
                .collect();
            return Err(ClusterPkiError::Invalid {
                path: dir.display().to_string(),
                reason: format!(
                    "the cluster PKI is incomplete ({} missing): restore it from a backup, or remove the directory to make a new cluster",
                    missing.join(", ")
                ),
            });
        }
        let sa_path = dir.join("sa.key");
        secrets::check_private(&sa_path)?;
        let sa_text = std::fs::read_to_string(&sa_path).map_err(|source| SecretError::Read {
            path: sa_path.clone(),
            source,
        })?;
        let sa_key = KeyPair::from_pem(&sa_text).map_err(|e| ClusterPkiError::Invalid {
            path: sa_path.display().to_string(),
            reason: e.to_string(),
        })?;
        Ok(ClusterPki {
            dir: dir.to_path_buf(),
            kubernetes: CaPair::load(&dir.join("ca.crt"), &dir.join("ca.key"))?,
            front_proxy: CaPair::load(
                &dir.join("front-proxy-ca.crt"),
                &dir.join("front-proxy-ca.key"),
            )?,
            etcd: CaPair::load(&dir.join("etcd/ca.crt"), &dir.join("etcd/ca.key"))?,
            sa_key,
        })
    }

    fn create(dir: &Path, now: OffsetDateTime) -> Result<ClusterPki, ClusterPkiError> {
        let pki = ClusterPki {
            dir: dir.to_path_buf(),
            kubernetes: CaPair::generate("kubernetes", now)?,
            front_proxy: CaPair::generate("front-proxy-ca", now)?,
            etcd: CaPair::generate("etcd-ca", now)?,
            sa_key: KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?,
        };
        let write_err = |path: &Path, source: std::io::Error| SecretError::Write {
            path: path.to_path_buf(),
            source,
        };
        secrets::create_private_dir(dir).map_err(|e| write_err(dir, e))?;
        secrets::create_private_dir(&dir.join("etcd")).map_err(|e| write_err(dir, e))?;
        // Keys first, the certificates last: a crash leaves an incomplete set, which start-up
        // reports instead of making CAs over ones a node may hold.
        for (name, private) in FILES.iter().rev() {
            let path = dir.join(name);
            let contents = pki.file(name);
            if *private {
                secrets::write_private(&path, contents.as_bytes())?;
            } else {
                secrets::write_atomic(&path, contents.as_bytes(), 0o644)?;
            }
        }
        tracing::info!(dir = %dir.display(), "created the cluster's Kubernetes, front-proxy and etcd CAs and service-account key");
        Ok(pki)
    }

    /// The contents of one of [`FILES`].
    pub fn file(&self, name: &str) -> String {
        match name {
            "ca.crt" => self.kubernetes.cert_pem.clone(),
            "ca.key" => self.kubernetes.key_pem(),
            "front-proxy-ca.crt" => self.front_proxy.cert_pem.clone(),
            "front-proxy-ca.key" => self.front_proxy.key_pem(),
            "etcd/ca.crt" => self.etcd.cert_pem.clone(),
            "etcd/ca.key" => self.etcd.key_pem(),
            "sa.key" => self.sa_key.serialize_pem(),
            "sa.pub" => self.sa_key.public_key_pem(),
            other => unreachable!("no cluster PKI file {other}"),
        }
    }

    /// `sha256:<hex>` of the Kubernetes CA's SubjectPublicKeyInfo: what `kubeadm join
    /// --discovery-token-ca-cert-hash` pins.
    pub fn ca_cert_hash(&self) -> String {
        let digest = sha2::Sha256::digest(self.kubernetes.key.subject_public_key_info());
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        format!("sha256:{hex}")
    }

    /// A client certificate from the Kubernetes CA for `user` in `groups`, valid for `ttl`:
    /// (certificate PEM, key PEM).
    pub fn issue_client(
        &self,
        user: &str,
        groups: &[String],
        ttl: Duration,
    ) -> Result<(String, String), ClusterPkiError> {
        self.issue_client_recorded(user, groups, ttl)
            .map(|c| (c.cert_pem, c.key_pem))
    }

    /// [`ClusterPki::issue_client`], with what a record of it needs (serial, validity).
    pub fn issue_client_recorded(
        &self,
        user: &str,
        groups: &[String],
        ttl: Duration,
    ) -> Result<IssuedClient, ClusterPkiError> {
        issue_client_from(&self.kubernetes, user, groups, ttl)
    }

    /// A client certificate from the etcd CA (what kubeadm's `apiserver-etcd-client` is), for
    /// the daemon's own calls to etcd's API.
    pub fn issue_etcd_client(
        &self,
        user: &str,
        ttl: Duration,
    ) -> Result<IssuedClient, ClusterPkiError> {
        issue_client_from(&self.etcd, user, &[], ttl)
    }
}

/// A client certificate from `ca` for `user` in `groups`, valid for `ttl`.
fn issue_client_from(
    ca: &CaPair,
    user: &str,
    groups: &[String],
    ttl: Duration,
) -> Result<IssuedClient, ClusterPkiError> {
    let now = OffsetDateTime::now_utc();
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, user);
    for group in groups {
        dn.push(DnType::OrganizationName, group.as_str());
    }
    params.distinguished_name = dn;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let serial = crate::pki::random_serial();
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    params.not_before = now - Duration::minutes(5);
    params.not_after = now + ttl;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, &ca.key)?;
    let cert = params.signed_by(&key, &issuer)?;
    Ok(IssuedClient {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        serial: serial.iter().map(|b| format!("{b:02x}")).collect(),
        not_before: params.not_before,
        not_after: params.not_after,
    })
}

/// A client certificate just issued, with its key (which is never stored).
pub struct IssuedClient {
    pub cert_pem: String,
    pub key_pem: String,
    /// Lower-case hex.
    pub serial: String,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl std::fmt::Debug for IssuedClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedClient")
            .field("serial", &self.serial)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// A kubeconfig for `user` at `server`, trusting `ca_pem`, with the client certificate and key
/// embedded.
pub fn kubeconfig(
    cluster: &str,
    server: &str,
    ca_pem: &str,
    user: &str,
    cert_pem: &str,
    key_pem: &str,
) -> String {
    with_user(
        cluster,
        server,
        ca_pem,
        user,
        serde_json::json!({
            "client-certificate-data": b64(cert_pem),
            "client-key-data": b64(key_pem),
        }),
    )
}

fn b64(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s.as_bytes())
}

/// A kubeconfig for `server` (trusting `ca_pem`) whose one user `name` is `user`.
fn with_user(
    cluster: &str,
    server: &str,
    ca_pem: &str,
    name: &str,
    user: serde_json::Value,
) -> String {
    let context = format!("{name}@{cluster}");
    // JSON is YAML: every value is quoted by serde_json, whatever it holds.
    let config = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": cluster, "cluster": {
            "server": server,
            "certificate-authority-data": b64(ca_pem),
        }}],
        "users": [{"name": name, "user": user}],
        "contexts": [{"name": context, "context": {"cluster": cluster, "user": name}}],
        "current-context": context,
    });
    serde_json::to_string_pretty(&config).expect("a kubeconfig serializes") + "\n"
}

/// A kubeconfig whose user gets its tokens from the OIDC `issuer` through kubelogin (`kubectl
/// oidc-login get-token`, the exec plugin the seed wrote by hand), trusting `issuer_ca_pem`
/// for the issuer. `user` names the context and is Keycloak's login hint.
#[allow(clippy::too_many_arguments)]
pub fn oidc_kubeconfig(
    cluster: &str,
    server: &str,
    ca_pem: &str,
    user: Option<&str>,
    issuer: &str,
    client_id: &str,
    client_secret: &str,
    issuer_ca_pem: &str,
) -> String {
    let name = match user {
        Some(u) => format!("oidc-{u}"),
        None => "oidc".to_string(),
    };
    let mut args = vec![
        "oidc-login".to_string(),
        "get-token".to_string(),
        format!("--oidc-issuer-url={issuer}"),
        format!("--oidc-client-id={client_id}"),
        format!("--oidc-client-secret={client_secret}"),
        format!("--certificate-authority-data={}", b64(issuer_ca_pem)),
    ];
    if let Some(u) = user {
        args.push(format!("--oidc-auth-request-extra-params=login_hint={u}"));
    }
    with_user(
        cluster,
        server,
        ca_pem,
        &name,
        serde_json::json!({"exec": {
            "apiVersion": "client.authentication.k8s.io/v1",
            "command": "kubectl",
            "args": args,
            "interactiveMode": "IfAvailable",
            "provideClusterInfo": false,
            "installHint": "kubelogin runs as `kubectl oidc-login`: install it (the kubelogin package, or `kubectl krew install oidc-login`), see the Identity chapter",
        }}),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_once_then_loaded_with_private_keys() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let pki_dir = dir.path().join("pki");
        let made = ClusterPki::load_or_create(&pki_dir).unwrap();
        for (name, private) in FILES {
            let mode = std::fs::metadata(pki_dir.join(name))
                .unwrap()
                .permissions()
                .mode()
                & 0o777;
            assert_eq!(mode, if private { 0o600 } else { 0o644 }, "{name}");
        }
        let loaded = ClusterPki::load_or_create(&pki_dir).unwrap();
        assert_eq!(made.kubernetes.cert_pem, loaded.kubernetes.cert_pem);
        assert_eq!(made.ca_cert_hash(), loaded.ca_cert_hash());
        assert_eq!(made.file("sa.pub"), loaded.file("sa.pub"));
        assert!(made.ca_cert_hash().starts_with("sha256:"));
        assert_eq!(made.ca_cert_hash().len(), "sha256:".len() + 64);
        // Three different CAs.
        assert_ne!(made.kubernetes.cert_pem, made.etcd.cert_pem);
        assert_ne!(made.kubernetes.cert_pem, made.front_proxy.cert_pem);
    }

    #[test]
    fn an_incomplete_pki_is_refused_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let pki_dir = dir.path().join("pki");
        ClusterPki::load_or_create(&pki_dir).unwrap();
        std::fs::remove_file(pki_dir.join("etcd/ca.key")).unwrap();
        let err = ClusterPki::load_or_create(&pki_dir)
            .unwrap_err()
            .to_string();
        assert!(err.contains("etcd/ca.key missing"), "{err}");
        assert!(pki_dir.join("ca.key").exists(), "nothing was replaced");
    }

    #[test]
    fn a_key_others_can_read_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let pki_dir = dir.path().join("pki");
        ClusterPki::load_or_create(&pki_dir).unwrap();
        std::fs::set_permissions(
            pki_dir.join("ca.key"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        assert!(ClusterPki::load_or_create(&pki_dir).is_err());
    }
}

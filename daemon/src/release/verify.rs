//! OpenPGP checks of what `lacave mirror fetch` brings in, with rPGP: a detached signature over
//! a file (streamed: the disk image is hundreds of megabytes) made by the trusted key or one of
//! its signing subkeys, and the SHA-512 lines of a signed `DIGESTS` file.
//!
//! Trust: one primary key, by fingerprint — Flatcar's image-signing key (embedded, from
//! flatcar/init's `flatcar-install`) unless `[flatcar] signing_key_fingerprint` names another
//! (tests, private builds). Its subkeys rotate yearly: `[flatcar] signing_key_file` gives a newer
//! copy of the key, accepted only if its primary is the trusted fingerprint. A subkey counts
//! only with a valid binding signature from the primary and no revocation.

use std::io::BufReader;
use std::path::Path;

use pgp::composed::{Deserializable, DetachedSignature, SignedPublicKey};
use pgp::types::KeyDetails;

/// Flatcar's image-signing key ("Flatcar Buildbot (Official Builds)").
pub const FLATCAR_KEY: &str = include_str!("flatcar-image-signing-key.asc");
/// Its primary fingerprint.
pub const FLATCAR_FINGERPRINT: &str = "F88CFEDEFF29A5B4D9523864E25D9AED0593B34A";

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("the signing key cannot be read: {0}")]
    Key(String),
    #[error(
        "the signing key's primary fingerprint is {found}, not the trusted {wanted} (set [flatcar] signing_key_file to a copy of the trusted key)"
    )]
    WrongPrimary { found: String, wanted: String },
    #[error("{file}: the signature cannot be read: {detail}")]
    Unreadable { file: String, detail: String },
    #[error(
        "{file}: BAD SIGNATURE — not signed by the trusted key {trusted} or its subkeys (signer: {signer}). If the release is genuine and its signing subkey is newer than the key lacave holds (Flatcar rotates them yearly), save Flatcar's current image-signing key and set [flatcar] signing_key_file to it: its primary must still be {trusted}"
    )]
    WrongSigner {
        file: String,
        trusted: String,
        signer: String,
    },
    #[error(
        "{file}: BAD SIGNATURE — the content does not match its signature (damaged or altered)"
    )]
    Mismatch { file: String },
    #[error("{file}: {detail}")]
    Io { file: String, detail: String },
    #[error("{file}: {algorithm} {found} does not match {digests}'s {wanted}")]
    Digest {
        file: String,
        algorithm: &'static str,
        digests: String,
        found: String,
        wanted: String,
    },
}

fn hex(fp: impl std::fmt::Display) -> String {
    fp.to_string()
        .chars()
        .filter(|c| c.is_ascii_hexdigit())
        .collect::<String>()
        .to_uppercase()
}

/// The trusted key, its primary checked against the trusted fingerprint.
/// A good signature: the key that made it and when (Unix seconds; `None` if the signature
/// does not say, which OpenPGP v4 signatures always do).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signed {
    pub signer: String,
    pub created: Option<u64>,
}

pub struct Keyring {
    key: SignedPublicKey,
    fingerprint: String,
}

impl Keyring {
    /// `armored` (a public key block) must have `fingerprint` as its primary.
    pub fn new(armored: &str, fingerprint: &str) -> Result<Keyring, VerifyError> {
        let (key, _) = SignedPublicKey::from_armor_single(armored.as_bytes())
            .map_err(|e| VerifyError::Key(e.to_string()))?;
        let found = hex(key.primary_key.fingerprint());
        let wanted = hex(fingerprint);
        if found != wanted {
            return Err(VerifyError::WrongPrimary { found, wanted });
        }
        key.verify_bindings()
            .map_err(|e| VerifyError::Key(format!("its self-signatures do not verify: {e}")))?;
        Ok(Keyring {
            key,
            fingerprint: wanted,
        })
    }

    /// The embedded Flatcar key.
    pub fn flatcar() -> Keyring {
        Keyring::new(FLATCAR_KEY, FLATCAR_FINGERPRINT).expect("the embedded Flatcar key reads")
    }

    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Checks `signature` (binary or armored) over the file at `path`; returns the fingerprint
    /// of the (sub)key that made it.
    /// Checks `signature` over the file at `path`; the signing key's fingerprint.
    pub fn verify_file(&self, signature: &[u8], path: &Path) -> Result<String, VerifyError> {
        self.verify_signed(signature, path).map(|s| s.signer)
    }

    /// Checks `signature` over the file at `path`; who signed it and when (the signature's
    /// creation time, which the signature covers).
    pub fn verify_signed(&self, signature: &[u8], path: &Path) -> Result<Signed, VerifyError> {
        let shown = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let sig = if signature.starts_with(b"-----BEGIN") {
            DetachedSignature::from_armor_single(signature).map(|(s, _)| s)
        } else {
            DetachedSignature::from_bytes(signature)
        }
        .map_err(|e| VerifyError::Unreadable {
            file: shown.clone(),
            detail: e.to_string(),
        })?;
        let issuers: Vec<String> = sig
            .signature
            .issuer_fingerprint()
            .iter()
            .map(hex)
            .chain(sig.signature.issuer_key_id().iter().map(hex))
            .collect();
        let names = |fp: &str| issuers.iter().any(|i| fp.ends_with(i.as_str()));
        let open = || {
            std::fs::File::open(path)
                .map(BufReader::new)
                .map_err(|e| VerifyError::Io {
                    file: shown.clone(),
                    detail: e.to_string(),
                })
        };
        let created = sig.signature.created().map(|t| u64::from(t.as_secs()));
        let signed = |signer: String| Signed { signer, created };
        let primary = hex(self.key.primary_key.fingerprint());
        if names(&primary) {
            return match sig.signature.verify(&self.key.primary_key, open()?) {
                Ok(()) => Ok(signed(primary)),
                Err(_) => Err(VerifyError::Mismatch { file: shown }),
            };
        }
        for sub in &self.key.public_subkeys {
            let fp = hex(sub.key.fingerprint());
            if !names(&fp) {
                continue;
            }
            let revoked = sub.signatures.iter().any(|s| {
                s.typ() == Some(pgp::packet::SignatureType::SubkeyRevocation)
                    && s.verify_subkey_binding(&self.key.primary_key, &sub.key)
                        .is_ok()
            });
            if revoked || sub.verify_bindings(&self.key.primary_key).is_err() {
                continue;
            }
            return match sig.signature.verify(&sub.key, open()?) {
                Ok(()) => Ok(signed(fp)),
                Err(_) => Err(VerifyError::Mismatch { file: shown }),
            };
        }
        Err(VerifyError::WrongSigner {
            file: shown,
            trusted: self.fingerprint.clone(),
            signer: if issuers.is_empty() {
                "unnamed".into()
            } else {
                issuers.join(", ")
            },
        })
    }
}

/// The SHA-512 of a file, streamed.
pub fn sha512_file(path: &Path) -> std::io::Result<String> {
    crate::secrets::file_digest::<sha2::Sha512>(path)
}

/// The SHA-512 a `DIGESTS` file (Gentoo style: `# SHA512 HASH` then `<hex>  <name>` lines)
/// gives for `name`.
pub fn sha512_in_digests(digests: &str, name: &str) -> Option<String> {
    let mut in_sha512 = false;
    for line in digests.lines() {
        let line = line.trim();
        if let Some(header) = line.strip_prefix('#') {
            in_sha512 = header.trim().eq_ignore_ascii_case("SHA512 HASH");
            continue;
        }
        if !in_sha512 {
            continue;
        }
        let mut parts = line.split_whitespace();
        if let (Some(hash), Some(file)) = (parts.next(), parts.next())
            && file == name
            && hash.len() == 128
        {
            return Some(hash.to_ascii_lowercase());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_flatcar_key_reads_with_its_fingerprint() {
        let k = Keyring::flatcar();
        assert_eq!(k.fingerprint(), FLATCAR_FINGERPRINT);
        assert!(matches!(
            Keyring::new(FLATCAR_KEY, "0000000000000000000000000000000000000000"),
            Err(VerifyError::WrongPrimary { .. })
        ));
    }

    #[test]
    fn digests_files_give_their_sha512_lines() {
        let text = "# MD5 HASH\nd41d8cd98f00b204e9800998ecf8427e  a.bin\n# SHA512 HASH\n"
            .to_string()
            + &"ab".repeat(64)
            + "  a.bin\n"
            + &"cd".repeat(64)
            + "  b.bin\n";
        assert_eq!(sha512_in_digests(&text, "b.bin"), Some("cd".repeat(64)));
        assert_eq!(sha512_in_digests(&text, "a.bin"), Some("ab".repeat(64)));
        assert_eq!(sha512_in_digests(&text, "c.bin"), None);
        assert_eq!(sha512_in_digests("# MD5 HASH\nx  a.bin\n", "a.bin"), None);
    }
}

//! Secrets the daemon keeps on disk (today the API token; later issues add keys). Every such
//! file is created 0600 with an atomic rename, and a secret file that others can read is
//! refused rather than used.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error(
        "{path} is readable by other users (mode {mode:04o}); run `chmod 600 {path}` and restart"
    )]
    TooOpen { path: PathBuf, mode: u32 },
    #[error("{path} holds no usable token: {why}")]
    Malformed { path: PathBuf, why: &'static str },
    #[error(
        "{path} is not a usable key: {why}; restore it, or remove it and its .pub to make a new one (every node then needs the new public key)"
    )]
    BadKey { path: PathBuf, why: String },
}

/// The bearer token that guards `/api/`.
#[derive(Clone)]
pub struct ApiToken(String);

impl std::fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiToken(…)")
    }
}

impl ApiToken {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Compares in time independent of where the strings differ, so that response timing
    /// does not leak a prefix of the token.
    pub fn matches(&self, presented: &str) -> bool {
        constant_time_eq(&self.0, presented)
    }
}

/// Compares two secrets in time that depends only on their lengths.
pub fn constant_time_eq(expected: &str, presented: &str) -> bool {
    constant_time_eq_bytes(expected.as_bytes(), presented.as_bytes())
}

/// The same, for bytes (message authentication codes).
pub fn constant_time_eq_bytes(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Random bytes as lower-case hex, from the operating system's generator.
pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).expect("the operating system's random generator works");
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// Fails when a secret file is readable or writable by anyone but its owner.
pub fn check_private(path: &Path) -> Result<(), SecretError> {
    let meta = fs::metadata(path).map_err(|source| SecretError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(SecretError::TooOpen {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

/// Creates `dir` (and missing parents) readable by its owner only, when it does not exist.
/// The mode is set at creation, so the directory is never briefly open to others. An existing
/// directory is left as the operator made it.
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    if dir.exists() {
        return Ok(());
    }
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Writes a secret file atomically with mode 0600: a crash leaves the old file or the new
/// one, never a partial or world-readable one.
pub fn write_private(path: &Path, contents: &[u8]) -> Result<(), SecretError> {
    write_atomic(path, contents, 0o600)
}

/// Writes a file atomically (temporary file, fsync, rename, fsync of the directory), created
/// with `mode` from the start, whatever the umask.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), SecretError> {
    let err = |source| SecretError::Write {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(err)?;
    // Exactly `mode`, whatever the umask (the unit's UMask=0077 would make the public CA
    // chain 0600).
    f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(mode))
        .map_err(err)?;
    f.write_all(contents).map_err(err)?;
    f.sync_all().map_err(err)?;
    fs::rename(&tmp, path).map_err(err)?;
    if let Some(dir) = path.parent() {
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(err)?;
    }
    Ok(())
}

/// The hex digest (`D`: SHA-256, SHA-512) of a file, read in 1 MiB pieces: release images
/// and container layers are hundreds of megabytes.
pub fn file_digest<D: sha2::Digest>(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut file = fs::File::open(path)?;
    let mut hasher = D::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// Gives `paths` the owner and group of `reference` when they differ (only root can, and only
/// root needs to: a file it wrote for the daemon's user must stay readable by that user).
pub fn match_owner(reference: &Path, paths: &[&Path]) -> Result<(), SecretError> {
    use std::os::unix::fs::MetadataExt;
    let want = fs::metadata(reference).map_err(|source| SecretError::Read {
        path: reference.to_path_buf(),
        source,
    })?;
    for path in paths {
        let have = fs::metadata(path).map_err(|source| SecretError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        if (have.uid(), have.gid()) != (want.uid(), want.gid()) {
            std::os::unix::fs::chown(path, Some(want.uid()), Some(want.gid())).map_err(
                |source| SecretError::Write {
                    path: path.to_path_buf(),
                    source,
                },
            )?;
        }
    }
    Ok(())
}

/// Reads the API token from `path`; when `generate` is set and the file does not exist,
/// creates it with a fresh random token. Returns the token and whether it was created.
pub fn load_or_create_token(path: &Path, generate: bool) -> Result<(ApiToken, bool), SecretError> {
    match fs::read_to_string(path) {
        Ok(text) => {
            check_private(path)?;
            let token = text.trim();
            if token.is_empty() {
                return Err(SecretError::Malformed {
                    path: path.to_path_buf(),
                    why: "the file is empty",
                });
            }
            if token.len() < 16 {
                return Err(SecretError::Malformed {
                    path: path.to_path_buf(),
                    why: "a token must be at least 16 characters",
                });
            }
            if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(SecretError::Malformed {
                    path: path.to_path_buf(),
                    why: "a token must be one line without spaces",
                });
            }
            Ok((ApiToken(token.to_string()), false))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound && generate => {
            let token = random_hex(32);
            write_private(path, format!("{token}\n").as_bytes())?;
            Ok((ApiToken(token), true))
        }
        Err(source) => Err(SecretError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// `text` with every secret a remote command may print taken out, before it is stored (a
/// node's history, a failure reason) or logged:
/// - bootstrap-token-shaped strings (`[a-z0-9]{6}.[a-z0-9]{16}`, which `kubeadm init` and
///   `kubeadm token create` print): the secret half becomes `<redacted>`, the id stays;
/// - 64-digit hex strings not introduced by `sha256:` (a control-plane certificate key, as
///   `kubeadm init --upload-certs` prints it; a CA hash `sha256:…` is public and stays);
/// - PEM private key blocks.
///
/// It errs on the side of redacting: any letters-and-digits run of 16 or more after a dot
/// that follows a run of 6 or more goes, whatever the text around it.
pub fn redact(text: &str) -> String {
    let text = redact_pem_keys(text);
    let bytes = text.as_bytes();
    let word = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < bytes.len() {
        if !word(bytes[i]) {
            // Everything but maximal runs of [a-z0-9] is copied as it is (UTF-8 included).
            let next = bytes[i..]
                .iter()
                .position(|b| word(*b))
                .map_or(bytes.len(), |n| i + n);
            out.push_str(&text[i..next]);
            i = next;
            continue;
        }
        let end = bytes[i..]
            .iter()
            .position(|b| !word(*b))
            .map_or(bytes.len(), |n| i + n);
        let run = &text[i..end];
        let after_token_id = i >= 7 && bytes[i - 1] == b'.' && {
            let before = &bytes[..i - 1];
            before.iter().rev().take_while(|b| word(**b)).count() >= 6
        };
        let certificate_key = run.len() == 64
            && run.bytes().all(|b| b.is_ascii_hexdigit())
            && !text[..i].ends_with("sha256:");
        if (after_token_id && run.len() >= 16) || certificate_key {
            out.push_str("<redacted>");
        } else {
            out.push_str(run);
        }
        i = end;
    }
    out
}

fn redact_pem_keys(text: &str) -> std::borrow::Cow<'_, str> {
    const BEGIN: &str = "-----BEGIN ";
    if !text.contains("PRIVATE KEY-----") {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find(BEGIN) {
        let header_end = rest[start..].find("-----\n").map(|n| start + n);
        let is_key = rest[start..]
            .lines()
            .next()
            .is_some_and(|l| l.ends_with("PRIVATE KEY-----"));
        match (is_key, header_end) {
            (true, Some(_)) => {
                out.push_str(&rest[..start]);
                out.push_str("[private key redacted]");
                // To the end of the END line, or of the text when it was cut.
                rest = match rest[start..].find("-----END ") {
                    Some(e) => {
                        let e = start + e;
                        let close = rest[e + 9..]
                            .find("-----")
                            .map_or(rest.len(), |n| e + 9 + n + 5);
                        &rest[close..]
                    }
                    None => "",
                };
            }
            _ => {
                out.push_str(&rest[..start + BEGIN.len()]);
                rest = &rest[start + BEGIN.len()..];
            }
        }
    }
    out.push_str(rest);
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_token_is_private_and_stable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api-token");
        let (a, created) = load_or_create_token(&path, true).unwrap();
        assert!(created);
        assert_eq!(a.as_str().len(), 64);
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let (b, created) = load_or_create_token(&path, true).unwrap();
        assert!(!created);
        assert_eq!(a.as_str(), b.as_str());
    }

    #[test]
    fn open_or_bad_token_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tok");
        fs::write(&path, "0123456789abcdef0123\n").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = load_or_create_token(&path, true).unwrap_err().to_string();
        assert!(err.contains("chmod 600"), "{err}");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        assert!(load_or_create_token(&path, true).is_ok());
        fs::write(&path, "short").unwrap();
        assert!(load_or_create_token(&path, true).is_err());
        let missing = dir.path().join("missing");
        assert!(load_or_create_token(&missing, false).is_err());
    }

    #[test]
    fn token_comparison() {
        let t = ApiToken("0123456789abcdef".into());
        assert!(t.matches("0123456789abcdef"));
        assert!(!t.matches("0123456789abcdeF"));
        assert!(!t.matches("0123456789abcde"));
        assert!(!t.matches(""));
    }

    #[test]
    fn remote_output_loses_its_secrets() {
        let init_tail = "You can now join any number of machines by running:\n\nkubeadm join kube.lacave:6443 --token abcdef.0123456789abcdef \\\n\t--discovery-token-ca-cert-hash sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        let clean = redact(init_tail);
        assert!(clean.contains("--token abcdef.<redacted> \\"), "{clean}");
        assert!(!clean.contains("0123456789abcdef \\"), "{clean}");
        // The CA hash is public and stays.
        assert!(
            clean.ends_with(
                "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
            )
        );
        // A certificate key as kubeadm init --upload-certs prints it.
        let key = "[upload-certs] Using certificate key:\n7c8f2e6a1d3b4c5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6\n";
        assert_eq!(
            redact(key),
            "[upload-certs] Using certificate key:\n<redacted>\n"
        );
        let pem = "before\n-----BEGIN EC PRIVATE KEY-----\nMHcCAQEE\n-----END EC PRIVATE KEY-----\nafter -----BEGIN CERTIFICATE-----\n";
        assert_eq!(
            redact(pem),
            "before\n[private key redacted]\nafter -----BEGIN CERTIFICATE-----\n"
        );
        // A key cut by the output's tail is removed to the end.
        assert_eq!(
            redact("x -----BEGIN PRIVATE KEY-----\nMIIE"),
            "x [private key redacted]"
        );
        // Nothing shaped like a token is left, wherever it stands; the rest is untouched.
        for text in [
            "token=k8s123.aaaabbbbccccdddd1234",
            "xx.abcdefgh.0123456789abcdefghij.tail",
            "é abcdef.0123456789abcdef é",
        ] {
            let clean = redact(text);
            assert!(!has_token_shape(&clean), "{text} -> {clean}");
        }
        for text in [
            "kube-proxy.kube-system.svc.cluster.local",
            "v1.37.2 ready",
            "é ü",
            "",
        ] {
            assert_eq!(redact(text), text);
        }
    }

    /// `[a-z0-9]{6}\.[a-z0-9]{16}` anywhere, as the cluster test greps.
    fn has_token_shape(text: &str) -> bool {
        let b = text.as_bytes();
        let word = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
        (0..b.len().saturating_sub(22)).any(|i| {
            b[i..i + 6].iter().all(|c| word(*c))
                && b[i + 6] == b'.'
                && b[i + 7..i + 23].iter().all(|c| word(*c))
        })
    }
}

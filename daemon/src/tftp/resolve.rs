//! Which file a TFTP path names, if any may be read.

use std::fmt;
use std::path::{Component, Path, PathBuf};

use async_tftp::packet;

/// Why a request was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    Absolute,
    ParentDir,
    NotFound,
    /// A link (somewhere on the way) leads outside the root and the allowed directories.
    LinkOutside(PathBuf),
    NotAFile,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Absolute => f.write_str("absolute paths are refused"),
            Refusal::ParentDir => f.write_str("'..' is refused"),
            Refusal::NotFound => f.write_str("no such file"),
            Refusal::LinkOutside(to) => {
                write!(
                    f,
                    "it leads to {} outside the served directory",
                    to.display()
                )
            }
            Refusal::NotAFile => f.write_str("not a regular file"),
        }
    }
}

impl Refusal {
    pub fn packet_error(&self) -> packet::Error {
        match self {
            Refusal::NotFound | Refusal::NotAFile => packet::Error::FileNotFound,
            _ => packet::Error::PermissionDenied,
        }
    }

    pub fn metric(&self) -> &'static str {
        match self {
            Refusal::NotFound | Refusal::NotAFile => "not_found",
            _ => "refused",
        }
    }
}

/// Resolves `requested` under `root`: a relative path without `..`, naming a regular file
/// whose real location (all links followed) is inside `root` or one of `allowed`.
pub fn resolve(root: &Path, allowed: &[PathBuf], requested: &Path) -> Result<PathBuf, Refusal> {
    let text = requested.to_string_lossy();
    if requested.is_absolute() || text.starts_with('\\') {
        return Err(Refusal::Absolute);
    }
    let mut relative = PathBuf::new();
    for c in requested.components() {
        match c {
            Component::Normal(part) => relative.push(part),
            Component::CurDir => {}
            Component::ParentDir => return Err(Refusal::ParentDir),
            Component::RootDir | Component::Prefix(_) => return Err(Refusal::Absolute),
        }
    }
    if text.contains("..") && text.split(['/', '\\']).any(|p| p == "..") {
        return Err(Refusal::ParentDir);
    }
    if relative.as_os_str().is_empty() {
        return Err(Refusal::NotFound);
    }
    let root = root.canonicalize().map_err(|_| Refusal::NotFound)?;
    let real = root
        .join(&relative)
        .canonicalize()
        .map_err(|_| Refusal::NotFound)?;
    let inside = real.starts_with(&root)
        || allowed
            .iter()
            .filter_map(|a| a.canonicalize().ok())
            .any(|a| real.starts_with(a));
    if !inside {
        return Err(Refusal::LinkOutside(real));
    }
    if !real.is_file() {
        return Err(Refusal::NotAFile);
    }
    Ok(real)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn only_files_really_inside_are_served() {
        let root_dir = tempfile::tempdir().unwrap();
        let boot_dir = tempfile::tempdir().unwrap();
        let root = root_dir.path();
        std::fs::write(root.join("undionly.kpxe"), b"x").unwrap();
        std::fs::create_dir(root.join("efi")).unwrap();
        std::fs::write(root.join("efi/snp.efi"), b"y").unwrap();
        std::fs::write(boot_dir.path().join("ipxe.efi"), b"z").unwrap();
        symlink(boot_dir.path().join("ipxe.efi"), root.join("ipxe.efi")).unwrap();
        symlink("/etc/passwd", root.join("passwd")).unwrap();
        symlink("undionly.kpxe", root.join("alias.kpxe")).unwrap();
        symlink("/etc", root.join("etc")).unwrap();
        let allowed = vec![boot_dir.path().to_path_buf()];
        let ok = |p: &str| resolve(root, &allowed, Path::new(p));

        assert!(ok("undionly.kpxe").is_ok());
        assert!(ok("./efi/snp.efi").is_ok());
        assert!(ok("alias.kpxe").is_ok(), "a link inside the root");
        assert!(ok("ipxe.efi").is_ok(), "a link into an allowed directory");
        assert_eq!(ok("/etc/passwd"), Err(Refusal::Absolute));
        assert_eq!(ok("../../etc/passwd"), Err(Refusal::ParentDir));
        assert_eq!(ok("efi/../../x"), Err(Refusal::ParentDir));
        assert!(matches!(ok("passwd"), Err(Refusal::LinkOutside(_))));
        assert!(matches!(ok("etc/shadow"), Err(Refusal::LinkOutside(_))));
        assert_eq!(ok("efi"), Err(Refusal::NotAFile));
        assert_eq!(ok("missing.efi"), Err(Refusal::NotFound));
        assert_eq!(ok(""), Err(Refusal::NotFound));
        // Without the allowance, the /boot link is refused too.
        assert!(matches!(
            resolve(root, &[], Path::new("ipxe.efi")),
            Err(Refusal::LinkOutside(_))
        ));
    }
}

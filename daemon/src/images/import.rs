//! `lacave mirror images add`: an OCI image layout (a directory, or a tar of one) into the
//! store, treating the archive as hostile:
//!
//! - a tar is unpacked by hand: only regular files and directories are made (no symbolic or
//!   hard link, device, FIFO or sparse file), at most [`MAX_ENTRIES`] entries, none outside
//!   the scratch directory;
//! - a file of the layout is opened only if every component of its path is inside the layout
//!   and none is a symbolic link, and it is a regular file (`O_NOFOLLOW`, checked again on
//!   the open file): nothing outside the archive is ever read, not even into an error;
//! - every blob is read at most to the size its descriptor gives (a manifest to
//!   [`MAX_MANIFEST_BYTES`]) and its digest checked; each manifest is walked once however many
//!   times it is referenced, at most [`MAX_DEPTH`] levels deep, [`MAX_FANOUT`] references per
//!   manifest and [`MAX_MANIFESTS`] manifests per import, within [`DEADLINE`];
//! - every media type must be one (`type/subtype`, RFC 6838 characters): it becomes a header;
//! - image names must be printable ASCII; what the archive says is escaped in every message,
//!   and a JSON error says where, never what (serde's messages quote the content);
//! - imports run one at a time (a lock file); a failed import removes the blobs it added and
//!   its scratch directory, and the next import removes what a killed one left.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sha2::Digest;

use super::{
    ImageError, ImageStore, Imported, Index, MANIFEST_TYPES, Manifest, Ref, Refs, normalize,
    valid_digest, valid_media_type,
};

/// Levels of manifests below `index.json` (an index of indexes of images is 3).
pub const MAX_DEPTH: usize = 8;
/// References (manifests, or config and layers) one manifest may hold.
pub const MAX_FANOUT: usize = 1024;
/// Distinct manifests one import may hold.
pub const MAX_MANIFESTS: usize = 4096;
/// A manifest (or `index.json`) larger than this is refused.
pub const MAX_MANIFEST_BYTES: u64 = 4 << 20;
/// Entries a tar may hold.
pub const MAX_ENTRIES: usize = 100_000;
/// An import running longer than this stops.
pub const DEADLINE: Duration = Duration::from_secs(3600);

/// `s` with control characters and non-ASCII escaped, for messages.
pub fn escaped(s: &str) -> String {
    s.escape_default().to_string()
}

/// Where a JSON document is broken, without quoting it.
fn json_error(what: &str, e: &serde_json::Error) -> ImageError {
    let kind = match e.classify() {
        serde_json::error::Category::Io => "unreadable",
        serde_json::error::Category::Syntax => "not valid JSON",
        serde_json::error::Category::Data => "JSON of the wrong shape",
        serde_json::error::Category::Eof => "cut short",
    };
    ImageError::Layout(format!(
        "{what} is {kind} (line {}, column {})",
        e.line(),
        e.column()
    ))
}

/// Opens `rel` (a `/`-separated path) under `dir` only if no component is a symbolic link,
/// every parent is a directory and the file is a regular file.
fn open_inside(dir: &Path, rel: &str) -> Result<File, String> {
    let parts: Vec<&str> = rel.split('/').collect();
    let mut path = dir.to_path_buf();
    for (i, part) in parts.iter().enumerate() {
        if part.is_empty() || *part == "." || *part == ".." {
            return Err(format!("{} is not a path inside the archive", escaped(rel)));
        }
        path.push(part);
        let meta = std::fs::symlink_metadata(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => format!("{} is missing from the archive", escaped(rel)),
            _ => format!("{}: {e}", escaped(rel)),
        })?;
        let last = i + 1 == parts.len();
        if meta.file_type().is_symlink() {
            return Err(format!(
                "{} is a symbolic link: only files inside the archive are read",
                escaped(rel)
            ));
        }
        if last && !meta.is_file() {
            return Err(format!("{} is not a regular file", escaped(rel)));
        }
        if !last && !meta.is_dir() {
            return Err(format!("{} is not a directory", escaped(part)));
        }
    }
    use rustix::fs::{Mode, OFlags};
    let fd = rustix::fs::open(
        &path,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| format!("{}: {e}", escaped(rel)))?;
    let file = File::from(fd);
    match file.metadata() {
        Ok(m) if m.is_file() => Ok(file),
        _ => Err(format!("{} is not a regular file", escaped(rel))),
    }
}

/// Unpacks a tar's regular files and directories into `into`; everything else is skipped.
fn unpack(source: &Path, into: &Path, deadline: Instant) -> Result<(), ImageError> {
    let file = File::open(source).map_err(super::io(source))?;
    let mut archive = tar::Archive::new(file);
    archive.set_preserve_permissions(false);
    archive.set_unpack_xattrs(false);
    let not_tar = |e: std::io::Error| {
        ImageError::Layout(format!("{}: not a tar archive: {e}", source.display()))
    };
    let mut skipped = 0usize;
    for (n, entry) in archive.entries().map_err(not_tar)?.enumerate() {
        if n >= MAX_ENTRIES {
            return Err(ImageError::Layout(format!(
                "{}: more than {MAX_ENTRIES} entries: not an image archive",
                source.display()
            )));
        }
        if Instant::now() > deadline {
            return Err(timed_out());
        }
        let mut entry = entry.map_err(not_tar)?;
        match entry.header().entry_type() {
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::Directory => {
                let inside = entry.unpack_in(into).map_err(not_tar)?;
                if !inside {
                    skipped += 1; // a path reaching outside: not made
                }
            }
            _ => skipped += 1,
        }
    }
    if skipped > 0 {
        tracing::info!(
            skipped,
            "entries of the archive that are not regular files or directories inside it were skipped"
        );
    }
    Ok(())
}

fn timed_out() -> ImageError {
    ImageError::Layout(format!(
        "the import took longer than {} minutes: stopped",
        DEADLINE.as_secs() / 60
    ))
}

/// One import in progress.
struct Import<'a> {
    store: &'a ImageStore,
    dir: &'a Path,
    refs: Refs,
    /// Manifests walked in this import → their media type.
    walked: HashMap<String, String>,
    /// Blobs checked in this import.
    checked: HashSet<String>,
    /// Blob files this import created (removed if it fails).
    created: Vec<PathBuf>,
    added: usize,
    deadline: Instant,
}

impl ImageStore {
    /// Imports an OCI image layout (a directory, or a tar of one). `name` names an image whose
    /// archive does not (e.g. skopeo's `oci:dir:tag` keeps only the tag). See the module's
    /// documentation for what an archive may not do.
    pub fn import(&self, source: &Path, name: Option<&str>) -> Result<Vec<Imported>, ImageError> {
        let deadline = Instant::now() + DEADLINE;
        std::fs::create_dir_all(self.root.join("blobs/sha256")).map_err(super::io(&self.root))?;
        let _lock = self.import_lock()?;
        self.remove_leftovers();
        if source.is_dir() {
            return self.import_layout(source, name, deadline);
        }
        // A tar: unpacked beside the store (same file system: blobs are renamed in).
        let scratch = tempfile::Builder::new()
            .prefix(".import-")
            .tempdir_in(&self.root)
            .map_err(super::io(&self.root))?;
        unpack(source, scratch.path(), deadline)?;
        self.import_layout(scratch.path(), name, deadline)
    }

    /// One import at a time: an exclusive lock on `images/.import.lock`, held until dropped.
    fn import_lock(&self) -> Result<File, ImageError> {
        let path = self.root.join(".import.lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(super::io(&path))?;
        rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive).map_err(|e| {
            ImageError::Io {
                path: path.display().to_string(),
                detail: format!("cannot lock it: {e}"),
            }
        })?;
        Ok(file)
    }

    /// What an import killed midway left: its scratch directory and partial blobs (the lock
    /// is held, so no other import is running).
    fn remove_leftovers(&self) {
        if let Ok(entries) = std::fs::read_dir(&self.root) {
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().starts_with(".import-") {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        if let Ok(entries) = std::fs::read_dir(self.root.join("blobs/sha256")) {
            for e in entries.flatten() {
                if e.path().extension().is_some_and(|x| x == "tmp") {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }

    fn import_layout(
        &self,
        dir: &Path,
        name: Option<&str>,
        deadline: Instant,
    ) -> Result<Vec<Imported>, ImageError> {
        let mut import = Import {
            store: self,
            dir,
            refs: self.refs()?,
            walked: HashMap::new(),
            checked: HashSet::new(),
            created: Vec::new(),
            added: 0,
            deadline,
        };
        match import.run(name) {
            Ok(imported) => {
                let bytes = serde_json::to_vec_pretty(&import.refs).expect("serialises");
                crate::secrets::write_atomic(&self.refs_path(), &bytes, 0o644)
                    .map_err(|e| ImageError::Layout(e.to_string()))?;
                self.give_to_daemon()?;
                Ok(imported)
            }
            Err(e) => {
                for path in &import.created {
                    let _ = std::fs::remove_file(path);
                }
                Err(e)
            }
        }
    }
}

impl Import<'_> {
    fn run(&mut self, name: Option<&str>) -> Result<Vec<Imported>, ImageError> {
        let mut file = open_inside(self.dir, "index.json").map_err(|e| {
            ImageError::Layout(format!(
                "{e}: not an OCI image layout (docker save of Docker < 25 is not one: use skopeo copy docker-archive:… oci-archive:…)"
            ))
        })?;
        let text = read_bounded(&mut file, MAX_MANIFEST_BYTES, "index.json")?;
        let index: Index =
            serde_json::from_slice(&text).map_err(|e| json_error("index.json", &e))?;
        if index.manifests.is_empty() {
            return Err(ImageError::Layout("index.json: no image in it".into()));
        }
        if index.manifests.len() > MAX_FANOUT {
            return Err(ImageError::Layout(format!(
                "index.json lists {} images, more than {MAX_FANOUT}",
                index.manifests.len()
            )));
        }
        let mut imported = Vec::new();
        for desc in &index.manifests {
            let given = desc
                .annotations
                .get("io.containerd.image.name")
                .cloned()
                .or_else(|| {
                    desc.annotations
                        .get("org.opencontainers.image.ref.name")
                        .filter(|r| r.contains('/') || r.contains(':'))
                        .cloned()
                })
                .or_else(|| name.map(str::to_string))
                .ok_or_else(|| {
                    ImageError::Layout(format!(
                        "{} in index.json carries no image name: give one with --name registry/repo:tag",
                        escaped(&desc.digest)
                    ))
                })?;
            let full = normalize(&given).ok_or_else(|| {
                ImageError::Layout(format!("\"{}\" is not an image name", escaped(&given)))
            })?;
            let before = self.added;
            let media_type = self.manifest(&desc.digest, &desc.media_type, desc.size, 1)?;
            self.refs.names.insert(
                full.clone(),
                Ref {
                    digest: desc.digest.clone(),
                    media_type,
                },
            );
            imported.push(Imported {
                name: full,
                digest: desc.digest.clone(),
                blobs_added: self.added - before,
            });
        }
        Ok(imported)
    }

    /// Copies a manifest and everything it references (an index's manifests, their configs
    /// and layers), each checked against its digest and size; returns its media type.
    fn manifest(
        &mut self,
        digest: &str,
        declared: &str,
        size: Option<u64>,
        depth: usize,
    ) -> Result<String, ImageError> {
        if let Some(media_type) = self.walked.get(digest) {
            return Ok(media_type.clone());
        }
        if depth > MAX_DEPTH {
            return Err(ImageError::Layout(format!(
                "manifests nest more than {MAX_DEPTH} levels deep (at {}): not an image",
                escaped(digest)
            )));
        }
        if self.walked.len() >= MAX_MANIFESTS {
            return Err(ImageError::Layout(format!(
                "more than {MAX_MANIFESTS} manifests in one archive: not an image"
            )));
        }
        if !declared.is_empty() && !valid_media_type(declared) {
            return Err(ImageError::Layout(format!(
                "the descriptor of {} gives \"{}\" as its media type, which is not one",
                escaped(digest),
                escaped(declared)
            )));
        }
        let bytes = self.blob(digest, size, Some(MAX_MANIFEST_BYTES))?;
        let manifest: Manifest = serde_json::from_slice(&bytes)
            .map_err(|e| json_error(&format!("manifest {digest}"), &e))?;
        if !manifest.media_type.is_empty() && !valid_media_type(&manifest.media_type) {
            return Err(ImageError::Layout(format!(
                "manifest {digest} gives \"{}\" as its media type, which is not one",
                escaped(&manifest.media_type)
            )));
        }
        let media_type = if !manifest.media_type.is_empty() {
            manifest.media_type.clone()
        } else if !declared.is_empty() {
            declared.to_string()
        } else if !manifest.manifests.is_empty() {
            MANIFEST_TYPES[1].into()
        } else {
            MANIFEST_TYPES[0].into()
        };
        if manifest.manifests.len() > MAX_FANOUT || manifest.layers.len() > MAX_FANOUT {
            return Err(ImageError::Layout(format!(
                "manifest {digest} references more than {MAX_FANOUT} manifests or layers"
            )));
        }
        for m in &manifest.manifests {
            self.manifest(&m.digest, &m.media_type, m.size, depth + 1)?;
        }
        for blob in manifest.config.iter().chain(&manifest.layers) {
            if !blob.media_type.is_empty() && !valid_media_type(&blob.media_type) {
                return Err(ImageError::Layout(format!(
                    "a blob of manifest {digest} gives \"{}\" as its media type, which is not one",
                    escaped(&blob.media_type)
                )));
            }
            if self.checked.contains(&blob.digest) {
                continue;
            }
            self.blob(&blob.digest, blob.size, None)?;
        }
        self.walked.insert(digest.to_string(), media_type.clone());
        self.refs
            .manifests
            .insert(digest.to_string(), media_type.clone());
        Ok(media_type)
    }

    /// One blob into the store, its digest (and size, when its descriptor gives one) checked;
    /// already held and intact: not copied. Returns it whole if at most `keep` bytes (a
    /// manifest; larger is an error), else nothing.
    fn blob(
        &mut self,
        digest: &str,
        size: Option<u64>,
        keep: Option<u64>,
    ) -> Result<Vec<u8>, ImageError> {
        let hex = valid_digest(digest).ok_or_else(|| {
            ImageError::Layout(format!("\"{}\" is not a sha256 digest", escaped(digest)))
        })?;
        if let (Some(size), Some(keep)) = (size, keep)
            && size > keep
        {
            return Err(ImageError::Layout(format!(
                "manifest {digest} is {size} bytes, more than a manifest may be ({keep})"
            )));
        }
        let dest = self.store.root.join("blobs/sha256").join(hex);
        // Held and intact: nothing to copy. Held but damaged: replaced from the archive.
        let held_intact = dest.is_file() && super::sha256_of(&dest).is_ok_and(|h| h == hex);
        let mut file = if held_intact {
            File::open(&dest).map_err(super::io(&dest))?
        } else {
            open_inside(self.dir, &format!("blobs/sha256/{hex}"))
                .map_err(|e| ImageError::Layout(format!("blob {digest}: {e}")))?
        };
        // Never read past what the descriptor (or the manifest bound) allows.
        let limit = size.or(keep).unwrap_or(u64::MAX);
        let mut hasher = sha2::Sha256::new();
        let mut kept = Vec::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0u64;
        let mut copy = if held_intact {
            None
        } else {
            let tmp = dest.with_extension("tmp");
            Some((File::create(&tmp).map_err(super::io(&tmp))?, tmp))
        };
        loop {
            if Instant::now() > self.deadline {
                return Err(timed_out());
            }
            let n = file
                .read(&mut buf)
                .map_err(|e| ImageError::Layout(format!("blob {digest}: {e}")))?;
            if n == 0 {
                break;
            }
            total += n as u64;
            if total > limit {
                if let Some((_, tmp)) = &copy {
                    let _ = std::fs::remove_file(tmp);
                }
                return Err(ImageError::Layout(match size {
                    Some(size) => {
                        format!("blob {digest} is larger than its descriptor says ({size} bytes)")
                    }
                    None => format!(
                        "manifest {digest} is larger than a manifest may be ({limit} bytes)"
                    ),
                }));
            }
            hasher.update(&buf[..n]);
            if keep.is_some() {
                kept.extend_from_slice(&buf[..n]);
            }
            if let Some((out, tmp)) = &mut copy {
                std::io::Write::write_all(out, &buf[..n]).map_err(super::io(tmp))?;
            }
        }
        let found: String = hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let size_wrong = size.is_some_and(|s| s != total);
        if found != hex || size_wrong {
            if let Some((_, tmp)) = &copy {
                let _ = std::fs::remove_file(tmp);
            }
            if size_wrong {
                return Err(ImageError::Layout(format!(
                    "blob {digest} is {total} bytes, its descriptor says {}",
                    size.unwrap_or_default()
                )));
            }
            return Err(ImageError::Digest {
                digest: digest.to_string(),
                found: format!("sha256:{found}"),
            });
        }
        if let Some((out, tmp)) = copy {
            out.sync_all().map_err(super::io(&tmp))?;
            drop(out);
            let existed = dest.exists();
            std::fs::rename(&tmp, &dest).map_err(super::io(&dest))?;
            if !existed {
                self.created.push(dest);
            }
            self.added += 1;
        }
        self.checked.insert(digest.to_string());
        Ok(kept)
    }
}

/// Reads a whole small file, refusing one larger than `cap`.
fn read_bounded(file: &mut File, cap: u64, what: &str) -> Result<Vec<u8>, ImageError> {
    let mut bytes = Vec::new();
    file.take(cap + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| ImageError::Layout(format!("{what}: {e}")))?;
    if bytes.len() as u64 > cap {
        return Err(ImageError::Layout(format!(
            "{what} is larger than {cap} bytes: not an image index"
        )));
    }
    Ok(bytes)
}

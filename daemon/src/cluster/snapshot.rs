//! Snapshots of the cluster's etcd (issue #26): taken through etcd's own API
//! (`Maintenance.Snapshot`, `etcd.rs`) with a client certificate from the etcd CA the daemon
//! owns, so no SSH and no etcdctl on the host; written atomically, 0600, each with a manifest
//! (`<name>.json`: when, from which member, the revision, its SHA-256, which cluster); kept
//! `[cluster.etcd_snapshot] keep` deep; and checked before a restore: a truncated or damaged
//! file, or one of another cluster, is refused with the reason.
//!
//! A snapshot file is exactly what `etcdctl snapshot save` writes: the bbolt database
//! followed by the SHA-256 etcd appends to it, so `etcdutl snapshot status|restore` read it
//! as they read their own (the lab test has the real etcdutl read one).
//!
//! Invariants:
//! - A name in the listing is a complete, hash-checked file: the database goes to a hidden
//!   `.partial` file, is checked against etcd's SHA-256, its manifest written, then renamed.
//!   A crash leaves a `.partial` (removed at the next start) or a manifest without its file
//!   (not listed, removed at the next start), never a listed half file.
//! - The disk keeps [`MIN_FREE`] free: a snapshot that would eat into it stops before.
//! - "This cluster" is the cluster CA: the controller manager publishes it in every
//!   namespace (`kube-root-ca.crt`) and kubeadm in `cluster-info`, so it is in every
//!   snapshot of this cluster's etcd, verbatim, and in no other cluster's.

use std::io::{Read, Write};
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::Digest;

use super::etcd::EtcdClient;

/// The free space a snapshot leaves on its file system.
pub const MIN_FREE: u64 = 256 << 20;
/// How often (bytes written) a snapshot checks the free space again.
const SPACE_CHECK_EVERY: u64 = 64 << 20;
/// The largest snapshot a restore sends to a control plane (it goes through memory).
pub const MAX_RESTORE_BYTES: u64 = 2 << 30;
/// etcd's page-aligned database is followed by its SHA-256.
const HASH_LEN: u64 = 32;
/// bbolt's meta page magic (at byte 16 of the file).
const BOLT_MAGIC: u32 = 0xED0C_DAED;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("no control plane gave a snapshot: {0}")]
    NoMember(String),
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "{dir} has {free_mib} MiB free: a snapshot of {need_mib} MiB would leave less than {reserve_mib} MiB"
    )]
    NoSpace {
        dir: String,
        free_mib: u64,
        need_mib: u64,
        reserve_mib: u64,
    },
    #[error("{name}: {reason}")]
    Invalid { name: String, reason: String },
    #[error("no snapshot named {name:?} in {dir} (lacave cluster snapshot list shows them)")]
    NotFound { name: String, dir: String },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SnapshotError + '_ {
    move |source| SnapshotError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// One snapshot, as its manifest says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SnapshotInfo {
    /// The file's name in the snapshot directory (`etcd-20261207T051500Z.db`).
    pub name: String,
    #[serde(with = "time::serde::rfc3339")]
    pub taken_at: time::OffsetDateTime,
    /// The control plane whose etcd member gave it.
    pub node: String,
    /// The store's revision when it was taken (etcd's status just before).
    pub revision: i64,
    pub size: u64,
    /// Of the whole file (as `sha256sum` prints it).
    pub sha256: String,
    /// The etcd cluster's id then (it changes with a restore).
    pub etcd_cluster_id: String,
    #[serde(default)]
    pub etcd_version: Option<String>,
    /// SHA-256 of the cluster CA's certificate (DER): the cluster it belongs to.
    pub cluster_ca_sha256: String,
    /// `schedule` or `request`.
    pub trigger: String,
}

/// The snapshot directory and its rules.
#[derive(Clone, Debug)]
pub struct Snapshots {
    dir: PathBuf,
    keep: usize,
}

/// `etcd-20261207T051500Z.db`, for a time.
pub fn file_name(at: time::OffsetDateTime) -> String {
    let f = time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");
    format!(
        "etcd-{}.db",
        at.to_offset(time::UtcOffset::UTC)
            .format(&f)
            .unwrap_or_default()
    )
}

/// A name a snapshot may have: a plain file name, no path.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name.ends_with(".db")
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// The SHA-256 of a certificate's DER, from its PEM.
pub fn cert_fingerprint(pem: &str) -> String {
    let der = x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .map(|(_, p)| p.contents)
        .unwrap_or_default();
    crate::pki::hex(&sha2::Sha256::digest(der))
}

/// What marks a snapshot as this cluster's: the first base64 line of the CA's PEM (its
/// first 48 bytes, which hold its random serial) as the controller manager publishes the
/// file (`kube-root-ca.crt`), or the whole PEM in base64 as `cluster-info`'s kubeconfig
/// holds it.
fn ca_needles(ca_pem: &str) -> Vec<Vec<u8>> {
    use base64::Engine as _;
    let mut needles: Vec<Vec<u8>> = ca_pem
        .lines()
        .map(str::trim)
        .find(|l| !l.starts_with("-----") && l.len() >= 64)
        .map(|l| l.as_bytes().to_vec())
        .into_iter()
        .collect();
    needles.push(
        base64::engine::general_purpose::STANDARD
            .encode(ca_pem.as_bytes())
            .into_bytes(),
    );
    needles
}

/// Reads a snapshot as it comes (from etcd's stream or from its file) and says at the end
/// whether it is a whole snapshot of this cluster: etcd's trailing SHA-256 over a
/// page-aligned database (a truncated or damaged file fails it), bbolt's magic, and the
/// cluster CA inside. One pass, nothing kept but a few dozen bytes: the save writes and
/// checks at once, and never reads the file back.
pub struct Checker {
    needles: Vec<memchr::memmem::Finder<'static>>,
    longest: usize,
    found: bool,
    /// The last `longest - 1` bytes, for a needle across two pieces.
    tail: Vec<u8>,
    whole: sha2::Sha256,
    db: sha2::Sha256,
    /// The last (up to) 32 bytes, not yet hashed into `db`: etcd's SHA-256 if they are the
    /// last.
    lag: Vec<u8>,
    first: Vec<u8>,
    size: u64,
}

impl Checker {
    pub fn new(ca_pem: &str) -> Checker {
        let needles: Vec<_> = ca_needles(ca_pem)
            .into_iter()
            .map(|n| memchr::memmem::Finder::new(&n).into_owned())
            .collect();
        Checker {
            longest: needles.iter().map(|f| f.needle().len()).max().unwrap_or(1),
            needles,
            found: false,
            tail: Vec::new(),
            whole: sha2::Sha256::new(),
            db: sha2::Sha256::new(),
            lag: Vec::with_capacity(HASH_LEN as usize * 2),
            first: Vec::with_capacity(20),
            size: 0,
        }
    }

    pub fn feed(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        self.size += bytes.len() as u64;
        self.whole.update(bytes);
        if self.first.len() < 20 {
            let n = bytes.len().min(20 - self.first.len());
            self.first.extend_from_slice(&bytes[..n]);
        }
        // Everything but the last 32 bytes seen goes into the database's hash.
        let hash = HASH_LEN as usize;
        let total = self.lag.len() + bytes.len();
        if total <= hash {
            self.lag.extend_from_slice(bytes);
        } else {
            let emit = total - hash;
            if emit <= self.lag.len() {
                self.db.update(&self.lag[..emit]);
                self.lag.drain(..emit);
                self.lag.extend_from_slice(bytes);
            } else {
                self.db.update(&self.lag);
                let from_bytes = emit - self.lag.len();
                self.db.update(&bytes[..from_bytes]);
                self.lag.clear();
                self.lag.extend_from_slice(&bytes[from_bytes..]);
            }
        }
        if !self.found {
            let keep = self.longest - 1;
            let head = &bytes[..bytes.len().min(keep)];
            let mut seam = std::mem::take(&mut self.tail);
            seam.extend_from_slice(head);
            self.found = self
                .needles
                .iter()
                .any(|f| f.find(&seam).is_some() || f.find(bytes).is_some());
            // The new tail: the last `keep` bytes of what has been seen.
            if bytes.len() >= keep {
                seam.clear();
                seam.extend_from_slice(&bytes[bytes.len() - keep..]);
            } else {
                let cut = seam.len().saturating_sub(keep);
                seam.drain(..cut);
            }
            self.tail = seam;
        }
    }

    /// The verdict: the size and SHA-256 of what was fed, or why it is not a snapshot of
    /// this cluster.
    pub fn finish(self, name: &str, ca_pem: &str) -> Result<(u64, String), SnapshotError> {
        let invalid = |reason: String| SnapshotError::Invalid {
            name: name.to_string(),
            reason,
        };
        let size = self.size;
        if size < 512 + HASH_LEN || size % 512 != HASH_LEN {
            return Err(invalid(format!(
                "{size} bytes is not an etcd snapshot: a database of 512-byte pages followed by etcd's 32-byte SHA-256 (truncated?)"
            )));
        }
        if self.db.finalize().as_slice() != self.lag.as_slice() {
            return Err(invalid(
                "its contents do not match the SHA-256 etcd appended to it: damaged or cut".into(),
            ));
        }
        if u32::from_le_bytes([
            self.first[16],
            self.first[17],
            self.first[18],
            self.first[19],
        ]) != BOLT_MAGIC
        {
            return Err(invalid("not an etcd (bbolt) database".into()));
        }
        if !self.found {
            return Err(invalid(format!(
                "not a snapshot of this cluster: its CA (SHA-256 {}) appears nowhere in it",
                cert_fingerprint(ca_pem)
            )));
        }
        Ok((size, crate::pki::hex(&self.whole.finalize())))
    }
}

/// Checks a snapshot file ([`Checker`]), reading it once. Returns its size and SHA-256.
pub fn check_file(path: &Path, name: &str, ca_pem: &str) -> Result<(u64, String), SnapshotError> {
    let mut file = std::fs::File::open(path).map_err(io_err(path))?;
    let mut checker = Checker::new(ca_pem);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(io_err(path))?;
        if n == 0 {
            break;
        }
        checker.feed(&buf[..n]);
    }
    checker.finish(name, ca_pem)
}

impl Snapshots {
    pub fn new(dir: PathBuf, keep: u32) -> Snapshots {
        Snapshots {
            dir,
            keep: keep as usize,
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Creates the directory (0700) and removes what a crash left: `.partial` files and
    /// manifests without their snapshot.
    pub fn prepare(&self) -> Result<(), SnapshotError> {
        crate::secrets::create_private_dir(&self.dir).map_err(io_err(&self.dir))?;
        for entry in std::fs::read_dir(&self.dir)
            .map_err(io_err(&self.dir))?
            .flatten()
        {
            let name = entry.file_name().to_string_lossy().into_owned();
            let orphan = name
                .strip_suffix(".json")
                .is_some_and(|db| valid_name(db) && !self.dir.join(db).exists());
            if name.ends_with(".partial") || orphan {
                tracing::info!(file = %name, "removing what an interrupted snapshot left");
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(())
    }

    /// Every snapshot with its manifest, newest first.
    pub fn list(&self) -> Result<Vec<SnapshotInfo>, SnapshotError> {
        let mut out = Vec::new();
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(io_err(&self.dir)(e)),
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(db) = name.strip_suffix(".json").filter(|db| valid_name(db)) else {
                continue;
            };
            if !self.dir.join(db).is_file() {
                continue;
            }
            let Ok(text) = std::fs::read(entry.path()) else {
                continue;
            };
            match serde_json::from_slice::<SnapshotInfo>(&text) {
                Ok(info) if info.name == db => out.push(info),
                Ok(_) | Err(_) => {
                    tracing::warn!(file = %name, "a snapshot manifest that cannot be read; the snapshot is not listed");
                }
            }
        }
        out.sort_by(|a, b| (b.taken_at, &b.name).cmp(&(a.taken_at, &a.name)));
        Ok(out)
    }

    /// The newest snapshot, if any.
    pub fn latest(&self) -> Option<SnapshotInfo> {
        self.list().ok()?.into_iter().next()
    }

    /// Takes a snapshot from the first of `members` (node name, address) that gives one.
    pub async fn save(
        &self,
        client: &EtcdClient,
        members: &[(String, IpAddr)],
        ca_pem: &str,
        trigger: &str,
    ) -> Result<SnapshotInfo, SnapshotError> {
        self.prepare()?;
        let mut errors = Vec::new();
        for (node, ip) in members {
            match self.save_from(client, node, *ip, ca_pem, trigger).await {
                Ok(info) => {
                    let pruned = self.prune();
                    if !pruned.is_empty() {
                        tracing::info!(?pruned, keep = self.keep, "older etcd snapshots removed");
                    }
                    return Ok(info);
                }
                Err(SnapshotError::NoMember(e)) => errors.push(format!("{node}: {e}")),
                Err(e) => return Err(e),
            }
        }
        if errors.is_empty() {
            errors.push("no control plane is Ready".into());
        }
        Err(SnapshotError::NoMember(errors.join("; ")))
    }

    async fn save_from(
        &self,
        client: &EtcdClient,
        node: &str,
        ip: IpAddr,
        ca_pem: &str,
        trigger: &str,
    ) -> Result<SnapshotInfo, SnapshotError> {
        let taken_at = time::OffsetDateTime::now_utc();
        let mut name = file_name(taken_at);
        let mut n = 2;
        while self.dir.join(&name).exists() {
            name = format!("{}-{n}.db", file_name(taken_at).trim_end_matches(".db"));
            n += 1;
        }
        let partial = self.dir.join(format!(".{name}.partial"));
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&partial)
            .map_err(io_err(&partial))?;
        let result = async {
            let no_member = |e: super::etcd::EtcdError| SnapshotError::NoMember(e.to_string());
            // etcd's stream says neither the revision nor the size: its status does.
            let status = client.status(ip).await.map_err(no_member)?;
            self.check_space(status.db_size)?;
            // Decoding here, writing and checking on a thread of its own, at once.
            let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(64);
            let writer_path = partial.clone();
            let ca = ca_pem.to_string();
            let writer_name = name.clone();
            let writer = tokio::task::spawn_blocking(move || {
                let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
                let mut checker = Checker::new(&ca);
                while let Some(piece) = rx.blocking_recv() {
                    checker.feed(&piece);
                    out.write_all(&piece).map_err(io_err(&writer_path))?;
                }
                let file = out
                    .into_inner()
                    .map_err(|e| io_err(&writer_path)(e.into_error()))?;
                file.sync_all().map_err(io_err(&writer_path))?;
                checker.finish(&writer_name, &ca)
            });
            let streamed = async {
                let mut written: u64 = 0;
                let mut next_check: u64 = SPACE_CHECK_EVERY;
                let mut stream = client.snapshot(ip).await.map_err(no_member)?;
                while let Some(chunk) = stream.next().await.map_err(no_member)? {
                    written += chunk.blob.len() as u64;
                    if written >= next_check {
                        next_check += SPACE_CHECK_EVERY;
                        self.check_space(0)?;
                    }
                    if tx.send(chunk.blob).await.is_err() {
                        break; // the writer stopped: its error says why
                    }
                }
                Ok::<(), SnapshotError>(())
            }
            .await;
            drop(tx);
            let checked = writer
                .await
                .map_err(|e| io_err(&partial)(std::io::Error::other(e.to_string())));
            streamed?;
            let (size, sha256) = checked??;
            let info = SnapshotInfo {
                name: name.clone(),
                taken_at,
                node: node.to_string(),
                revision: status.revision,
                size,
                sha256,
                etcd_cluster_id: status.cluster_id,
                etcd_version: Some(status.version).filter(|v| !v.is_empty()),
                cluster_ca_sha256: cert_fingerprint(ca_pem),
                trigger: trigger.to_string(),
            };
            let manifest = serde_json::to_vec_pretty(&info).expect("a manifest serializes");
            let manifest_path = self.dir.join(format!("{name}.json"));
            crate::secrets::write_private(&manifest_path, &manifest).map_err(|e| {
                SnapshotError::Io {
                    path: manifest_path.display().to_string(),
                    source: std::io::Error::other(e.to_string()),
                }
            })?;
            let target = self.dir.join(&name);
            std::fs::rename(&partial, &target).map_err(io_err(&target))?;
            std::fs::File::open(&self.dir)
                .and_then(|d| d.sync_all())
                .map_err(io_err(&self.dir))?;
            Ok(info)
        }
        .await;
        if result.is_err() {
            let _ = std::fs::remove_file(&partial);
        }
        result
    }

    fn check_space(&self, need: u64) -> Result<(), SnapshotError> {
        let Ok(stat) = rustix::fs::statvfs(&self.dir) else {
            return Ok(()); // cannot tell: the write itself will say
        };
        let free = stat.f_bavail.saturating_mul(stat.f_frsize);
        if free < need.saturating_add(MIN_FREE) {
            return Err(SnapshotError::NoSpace {
                dir: self.dir.display().to_string(),
                free_mib: free >> 20,
                need_mib: need.div_ceil(1 << 20),
                reserve_mib: MIN_FREE >> 20,
            });
        }
        Ok(())
    }

    /// Removes the oldest snapshots beyond `keep`; returns their names.
    pub fn prune(&self) -> Vec<String> {
        let Ok(all) = self.list() else {
            return Vec::new();
        };
        let mut removed = Vec::new();
        for old in all.into_iter().skip(self.keep) {
            let path = self.dir.join(&old.name);
            match std::fs::remove_file(&path) {
                Ok(()) => {
                    let _ = std::fs::remove_file(self.dir.join(format!("{}.json", old.name)));
                    removed.push(old.name);
                }
                Err(error) => {
                    tracing::warn!(file = %path.display(), %error, "cannot remove an old snapshot");
                }
            }
        }
        removed
    }

    /// The snapshot `name`, checked for a restore (`check_file`, and its manifest's SHA-256
    /// when it has one); its path and size.
    pub fn checked(&self, name: &str, ca_pem: &str) -> Result<(PathBuf, u64), SnapshotError> {
        let not_found = || SnapshotError::NotFound {
            name: name.to_string(),
            dir: self.dir.display().to_string(),
        };
        if !valid_name(name) {
            return Err(not_found());
        }
        let path = self.dir.join(name);
        if !path.is_file() {
            return Err(not_found());
        }
        let (size, sha256) = check_file(&path, name, ca_pem)?;
        if let Ok(text) = std::fs::read(self.dir.join(format!("{name}.json")))
            && let Ok(info) = serde_json::from_slice::<SnapshotInfo>(&text)
            && info.sha256 != sha256
        {
            return Err(SnapshotError::Invalid {
                name: name.to_string(),
                reason: format!(
                    "its SHA-256 is {sha256}, its manifest says {}: the file was changed",
                    info.sha256
                ),
            });
        }
        if size > MAX_RESTORE_BYTES {
            return Err(SnapshotError::Invalid {
                name: name.to_string(),
                reason: format!(
                    "{} MiB is more than a restore sends ({} MiB): restore it by hand with etcdutl",
                    size >> 20,
                    MAX_RESTORE_BYTES >> 20
                ),
            });
        }
        Ok((path, size))
    }
}

/// The script a restore runs on the first control plane, the snapshot at `snapshot` there:
/// every static pod stopped (their manifests set aside, each waited for), etcd's data
/// directory set aside, `etcdutl snapshot restore` into a one-member cluster (the member's
/// name, peer URL and data directory read from kubeadm's `etcd.yaml`; revisions bumped and
/// marked compacted, so that watchers relist instead of seeing time go back), then the static
/// pods back and waited for (etcd's health, the API server's `/readyz`). etcdutl runs from
/// the node's etcd image (`registry.k8s.io/etcd` holds it) through `ctr`, or from the host
/// when the node has it and no `ctr`. On any failure, or when stopped, the old data and the
/// manifests go back as they were. The snapshot (it holds the cluster's Secrets) is removed
/// from the node however the script ends.
pub fn restore_script(snapshot: &str) -> String {
    format!(
        r#"set -eu
snap={snap}
m=/etc/kubernetes/manifests
aside=/etc/kubernetes/lacave-restore-manifests
[ -f "$m/etcd.yaml" ] || {{ echo "$m/etcd.yaml is missing: not a kubeadm control plane with a stacked etcd"; exit 1; }}
arg() {{ sed -n "s/^ *- --$1=//p" "$m/etcd.yaml" | head -n 1; }}
name=$(arg name); peer=$(arg initial-advertise-peer-urls); data=$(arg data-dir)
image=$(sed -n 's/^ *image: *//p' "$m/etcd.yaml" | head -n 1 | tr -d "\"'")
[ -n "$name" ] && [ -n "$peer" ] && [ -n "$data" ] && [ -n "$image" ] || {{ echo "cannot read --name, --initial-advertise-peer-urls, --data-dir and the image from $m/etcd.yaml"; exit 1; }}
case "$data" in /*) ;; *) echo "--data-dir $data is not absolute"; exit 1;; esac
old="$data.lacave-before-restore-$(date -u +%Y%m%dT%H%M%SZ)"
new="$data.lacave-restoring"
restored=0
back() {{
  if [ "$restored" = 0 ] && [ -d "$old/member" ]; then rm -rf "$data/member"; mv -f "$old/member" "$data/"; rmdir "$old"; echo "put the old etcd data back"; fi
  rm -rf "$new"
  rm -f "$snap"
  for f in "$aside"/*.yaml; do [ -f "$f" ] && mv -f "$f" "$m/"; done
  rmdir "$aside" 2>/dev/null || true
}}
trap back EXIT
trap 'exit 1' INT TERM HUP
mkdir -p "$aside"
for f in "$m"/*.yaml; do mv -f "$f" "$aside/"; done
i=0
while curl -sk --max-time 2 -o /dev/null https://127.0.0.1:6443/readyz || curl -s --max-time 2 -o /dev/null http://127.0.0.1:2381/health; do
  i=$((i+1)); [ $i -lt 240 ] || {{ echo "the API server and etcd did not stop within 120 s"; exit 1; }}
  sleep 0.5
done
sleep 2
rm -rf "$new"
echo "etcd member $name ($peer), data in $data, with $image"
# Into a directory of its own (etcdutl wants none), then in place of the data directory's
# member/ (the data directory itself may be a mount point: it stays).
set -- snapshot restore "$snap" --data-dir "$new" --name "$name" --initial-cluster "$name=$peer" --initial-advertise-peer-urls "$peer" --bump-revision 1000000000 --mark-compacted
if command -v ctr >/dev/null 2>&1; then
  parent=$(dirname "$data")
  ctr -n k8s.io run --rm --mount "type=bind,src=$parent,dst=$parent,options=rbind:rw" --mount "type=bind,src=$(dirname "$snap"),dst=$(dirname "$snap"),options=rbind:ro" "$image" "lacave-etcd-restore-$$" /usr/local/bin/etcdutl "$@" 2>&1 | tail -n 5
  [ -f "$new/member/snap/db" ] || {{ echo "etcdutl (from $image) did not restore the snapshot"; exit 1; }}
elif command -v etcdutl >/dev/null 2>&1; then
  etcdutl "$@" 2>&1 | tail -n 5
  [ -f "$new/member/snap/db" ] || {{ echo "etcdutl did not restore the snapshot"; exit 1; }}
else
  echo "neither ctr (to run etcdutl from $image) nor etcdutl on this node"; exit 1
fi
mkdir -p -m 700 "$data"
if [ -d "$data/member" ]; then mkdir -m 700 "$old"; mv "$data/member" "$old/"; fi
mv "$new/member" "$data/"
rm -rf "$new"
chmod 700 "$data"
restored=1
for f in "$aside"/*.yaml; do mv -f "$f" "$m/"; done
i=0
until curl -s --max-time 2 http://127.0.0.1:2381/health | grep -qF '"health":"true"'; do
  i=$((i+1)); [ $i -lt 360 ] || {{ echo "the restored etcd did not answer /health within 180 s"; exit 1; }}
  sleep 0.5
done
i=0
until curl -sk --max-time 2 https://127.0.0.1:6443/readyz | grep -qF ok; do
  i=$((i+1)); [ $i -lt 360 ] || {{ echo "the API server did not answer /readyz within 180 s of the restore"; exit 1; }}
  sleep 0.5
done
echo "restored: etcd is a one-member cluster ($name), the API server ready; the old data is in $old"
"#,
        snap = super::ssh::shquote(snapshot)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const CA: &str = "-----BEGIN CERTIFICATE-----\nMIIBjTCCATOgAwIBAgIUQ0hrT1ZqRzN5d0tQc0J0Y2hvUmVkRnpjMAoGCCqGSM49\nBAMCMBUxEzARBgNVBAMTCmt1YmVybmV0ZXMwHhcNMjYxMjA3MDAwMDAwWhcNMzYx\nMjA1MDAwMDAwWjAVMRMwEQYDVQQDEwprdWJlcm5ldGVzMFkwEwYHKoZIzj0CAQYI\n-----END CERTIFICATE-----\n";

    /// A file shaped as etcd writes one: bbolt's meta page magic, `payload` inside, pages
    /// of 4 KiB, then the SHA-256.
    fn snapshot_with(payload: &[u8]) -> Vec<u8> {
        let mut db = vec![0u8; 8192];
        db[16..20].copy_from_slice(&BOLT_MAGIC.to_le_bytes());
        db[5000..5000 + payload.len()].copy_from_slice(payload);
        let hash = sha2::Sha256::digest(&db);
        db.extend_from_slice(&hash);
        db
    }

    fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    #[test]
    fn a_snapshot_is_checked_whole_and_as_this_clusters() {
        let dir = tempfile::tempdir().unwrap();
        // The CA as kube-root-ca.crt holds it (protobuf around the PEM).
        let mut payload = b"\x0a\x06ca.crt\x12\xc8\x04".to_vec();
        payload.extend_from_slice(CA.as_bytes());
        let good = snapshot_with(&payload);
        let path = write(dir.path(), "good.db", &good);
        let (size, sha) = check_file(&path, "good.db", CA).unwrap();
        assert_eq!(size, 8192 + 32);
        assert_eq!(sha, crate::pki::hex(&sha2::Sha256::digest(&good)));

        // As cluster-info's kubeconfig holds it: the PEM in base64.
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD.encode(CA);
        let path = write(
            dir.path(),
            "info.db",
            &snapshot_with(format!("certificate-authority-data: {b64}\n").as_bytes()),
        );
        check_file(&path, "info.db", CA).unwrap();

        let refused = |bytes: &[u8]| {
            let path = write(dir.path(), "bad.db", bytes);
            check_file(&path, "bad.db", CA).unwrap_err().to_string()
        };
        // Cut: not pages plus a hash.
        assert!(refused(&good[..good.len() - 100]).contains("truncated"));
        assert!(refused(&good[..4096 + 32]).contains("do not match"));
        // A byte changed.
        let mut damaged = good.clone();
        damaged[6000] ^= 1;
        assert!(refused(&damaged).contains("do not match"));
        // Another cluster's: well formed, but our CA is not in it.
        let other = refused(&snapshot_with(
            b"\x0a\x06ca.crt-----BEGIN CERTIFICATE-----\nMIIBother",
        ));
        assert!(other.contains("not a snapshot of this cluster"), "{other}");
        // Not bbolt at all.
        let mut not_bolt = vec![1u8; 4096];
        not_bolt[100..100 + CA.len()].copy_from_slice(CA.as_bytes());
        let hash = sha2::Sha256::digest(&not_bolt);
        not_bolt.extend_from_slice(&hash);
        assert!(refused(&not_bolt).contains("bbolt"));
        // The CA split across two reads of the file is still found.
        let mut late = vec![0u8; (1 << 20) + 4096];
        late[16..20].copy_from_slice(&BOLT_MAGIC.to_le_bytes());
        let at = (1 << 20) - 40;
        late[at..at + CA.len()].copy_from_slice(CA.as_bytes());
        let hash = sha2::Sha256::digest(&late);
        late.extend_from_slice(&hash);
        let path = write(dir.path(), "late.db", &late);
        check_file(&path, "late.db", CA).unwrap();

        // Fed in pieces of any size (as etcd's stream comes), the verdict is the file's.
        for step in [1, 7, 31, 32, 33, 4096, 1 << 20] {
            for (bytes, ok) in [(&good[..], true), (&late[..], true), (&damaged[..], false)] {
                let mut checker = Checker::new(CA);
                for piece in bytes.chunks(step) {
                    checker.feed(piece);
                }
                let verdict = checker.finish("x.db", CA);
                assert_eq!(verdict.is_ok(), ok, "pieces of {step}: {verdict:?}");
                if ok {
                    assert_eq!(
                        verdict.unwrap().1,
                        crate::pki::hex(&sha2::Sha256::digest(bytes))
                    );
                }
            }
        }
    }

    #[test]
    fn the_directory_lists_complete_snapshots_and_keeps_so_many() {
        let dir = tempfile::tempdir().unwrap();
        let snaps = Snapshots::new(dir.path().join("snaps"), 2);
        snaps.prepare().unwrap();
        let mode = std::fs::metadata(snaps.dir()).unwrap();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
            0o700
        );
        let mut payload = b"x".to_vec();
        payload.extend_from_slice(CA.as_bytes());
        let bytes = snapshot_with(&payload);
        let start = time::macros::datetime!(2026-12-07 05:00 UTC);
        for i in 0..3 {
            let at = start + time::Duration::hours(i);
            let name = file_name(at);
            write(snaps.dir(), &name, &bytes);
            let info = SnapshotInfo {
                name: name.clone(),
                taken_at: at,
                node: "cp1".into(),
                revision: 10 + i,
                size: bytes.len() as u64,
                sha256: crate::pki::hex(&sha2::Sha256::digest(&bytes)),
                etcd_cluster_id: "c0ffee".into(),
                etcd_version: Some("3.6.0".into()),
                cluster_ca_sha256: cert_fingerprint(CA),
                trigger: "schedule".into(),
            };
            write(
                snaps.dir(),
                &format!("{name}.json"),
                &serde_json::to_vec(&info).unwrap(),
            );
        }
        // What a crash leaves: a partial file, a manifest without its snapshot.
        write(snaps.dir(), ".etcd-20261207T090000Z.db.partial", b"half");
        write(snaps.dir(), "etcd-20261207T100000Z.db.json", b"{}");
        let names: Vec<String> = snaps.list().unwrap().into_iter().map(|s| s.name).collect();
        assert_eq!(
            names,
            [
                "etcd-20261207T070000Z.db",
                "etcd-20261207T060000Z.db",
                "etcd-20261207T050000Z.db"
            ]
        );
        snaps.prepare().unwrap();
        assert!(
            !snaps
                .dir()
                .join(".etcd-20261207T090000Z.db.partial")
                .exists()
        );
        assert!(!snaps.dir().join("etcd-20261207T100000Z.db.json").exists());
        assert_eq!(snaps.prune(), ["etcd-20261207T050000Z.db"]);
        assert!(!snaps.dir().join("etcd-20261207T050000Z.db.json").exists());
        assert_eq!(snaps.list().unwrap().len(), 2);
        assert_eq!(snaps.latest().unwrap().revision, 12);

        // A restore takes a checked snapshot by its name only.
        snaps.checked("etcd-20261207T070000Z.db", CA).unwrap();
        for hostile in [
            "../etc/passwd",
            "/etc/shadow",
            ".etcd-x.db",
            "etcd.db/..",
            "",
        ] {
            assert!(
                matches!(
                    snaps.checked(hostile, CA),
                    Err(SnapshotError::NotFound { .. })
                ),
                "{hostile}"
            );
        }
        // A file changed after its manifest was written.
        let mut other = bytes.clone();
        other[5001] = b'y';
        let len = other.len() - 32;
        let hash = sha2::Sha256::digest(&other[..len]);
        other[len..].copy_from_slice(&hash);
        write(snaps.dir(), "etcd-20261207T070000Z.db", &other);
        let err = snaps.checked("etcd-20261207T070000Z.db", CA).unwrap_err();
        assert!(err.to_string().contains("was changed"), "{err}");
    }

    #[test]
    fn the_restore_script_quotes_its_path_and_puts_things_back() {
        let script = restore_script("/var/lib/lacave-restore/snap shot.db");
        assert!(script.contains("snap='/var/lib/lacave-restore/snap shot.db'"));
        assert!(script.contains("trap back EXIT"));
        assert!(script.contains("--bump-revision"));
    }
}

//! `lacave mirror fetch flatcar`: downloads a Flatcar release into the mirror layout the daemon
//! serves (`<mirror_dir>/<channel>/<board>/<version>/`), verifies every file, and only then
//! makes it the release `current` points at.
//!
//! - Files go to `<board dir>/.incoming-<version>/` first; an interrupted download resumes there
//!   (`Range`), a finished one is checked whole.
//! - Checks: each image's detached `.sig` by the trusted key ([`super::verify::Keyring`]);
//!   `version.txt` names the version asked for (and its `.sig` is checked when the server has
//!   one); the disk image's `DIGESTS` file, when published, is checked by its own `.sig` and
//!   its SHA-512 line compared.
//! - Only when all pass: a `.verified` record is written, the directory renamed to
//!   `<version>`, and `current` replaced by a new symlink renamed over it (atomic). Any failure
//!   ends with an error naming the file and why, and `current` untouched.
//! - A server that stops sending for `stall` is given up on; one that closes mid-file leaves a
//!   partial file the next run resumes.
//! - Rollback and mix-ups. Flatcar signs each file (a detached `.sig`) and the disk image's
//!   `DIGESTS`, but none of that names the version: `version.txt` is unsigned on its servers
//!   (its `.sig` is checked when one exists), and the version inside the signed images is in
//!   their `/usr` file system, which this does not unpack. What the signatures do bind is
//!   *when* each file was signed (the creation time is inside the signature). So: every
//!   signed file of a release must be signed within [`SIGNING_SPREAD`] of the others (a kernel
//!   of one release with the initramfs of another is refused); a release may not be
//!   byte-identical to another version held (old files under a new name); a newer version may
//!   not be signed before an older one held, nor an older after a newer
//!   ([`SIGNING_SPREAD`] of slack); and `current` never moves to an older version without
//!   `allow_downgrade`.
//! - Bounds: a file larger than its cap ([`cap_of`]) is refused and removed; the fetch stops
//!   before the file system's free space falls under `min_free` (the mirror shares the
//!   registry's disk by default); redirects go only to `release_base_url`'s host or
//!   `redirect_hosts`, never from https to http.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::verify::{Keyring, VerifyError, sha512_file, sha512_in_digests};

/// The kernel, the initramfs and the disk image, each with a detached `.sig`.
pub const IMAGES: &[&str] = &[
    "flatcar_production_pxe.vmlinuz",
    "flatcar_production_pxe_image.cpio.gz",
    "flatcar_production_image.bin.bz2",
];
const DIGESTS: &str = "flatcar_production_image.bin.bz2.DIGESTS";
/// The release's update payload, what `update_engine` downloads from an Omaha answer (with a
/// detached `.sig`, like the images).
pub const UPDATE_PAYLOAD: &str = "flatcar_production_update.gz";
/// How far apart the signatures of one release's files may be (a release is signed by one
/// build within minutes; releases of a channel are days apart).
pub const SIGNING_SPREAD: u64 = 24 * 3600;

/// The largest a file of a release may be: Flatcar's are ~60 MB (kernel), ~400 MB (initramfs)
/// and ~500 MB (disk image); a server sending more is refused, whatever its headers say.
pub fn cap_of(name: &str) -> u64 {
    match name {
        "flatcar_production_pxe.vmlinuz" => 512 << 20,
        "flatcar_production_pxe_image.cpio.gz" | UPDATE_PAYLOAD => 4 << 30,
        _ => 8 << 30,
    }
}
/// What a verified release directory holds about its verification.
pub const VERIFIED: &str = ".verified";

/// What to fetch, from where, into where.
#[derive(Clone, Debug)]
pub struct FlatcarFetch {
    /// The release server, without the board: `https://stable.release.flatcar-linux.net`.
    pub base_url: String,
    pub channel: String,
    pub board: String,
    /// A version (`4459.2.1`) or `current`.
    pub version: String,
    pub mirror_dir: PathBuf,
    /// How long the server may send nothing before the download is given up.
    pub stall: Duration,
    /// Make `current` point at the release once verified.
    pub switch_current: bool,
    /// Let `current` move to an older version than it points at.
    pub allow_downgrade: bool,
    /// Hosts a redirect may lead to, beyond `base_url`'s.
    pub redirect_hosts: Vec<String>,
    /// Free space (bytes) the fetch leaves on the mirror's file system.
    pub min_free: u64,
}

/// Shows a download's progress (a bar on a terminal, log lines otherwise).
pub trait Progress: Send + Sync {
    fn start(&self, file: &str, total: Option<u64>, resumed_from: u64);
    fn advance(&self, bytes: u64);
    fn finish(&self);
}

/// A release held in the mirror, verified.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Verified {
    pub version: String,
    pub signer: String,
    pub verified_at: String,
    /// File name → SHA-512.
    pub sha512: std::collections::BTreeMap<String, String>,
    /// Signed file → when its signature was made (Unix seconds). Absent in records of older
    /// lacave versions.
    #[serde(default)]
    pub signed_at: std::collections::BTreeMap<String, u64>,
    /// The update payload and what an Omaha answer gives of it. Absent in records of older
    /// lacave versions (a new fetch of the same version adds it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update: Option<UpdatePayload>,
}

/// What `update_engine` checks of the payload an Omaha answer names: its size, and its SHA-1
/// (the package's `hash`) and SHA-256 (the action's `sha256`), both base64 as Omaha has them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdatePayload {
    pub file: String,
    pub size: u64,
    pub sha1_base64: String,
    pub sha256_base64: String,
}

impl UpdatePayload {
    /// Reads `path` once for both digests (hundreds of megabytes: call off the async workers).
    pub fn of_file(path: &Path) -> std::io::Result<UpdatePayload> {
        use base64::Engine;
        use std::io::Read;
        let mut file = std::fs::File::open(path)?;
        let mut sha1 = <sha1::Sha1 as sha1::Digest>::new();
        let mut sha256 = <sha2::Sha256 as sha2::Digest>::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut size = 0u64;
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            size += n as u64;
            sha1::Digest::update(&mut sha1, &buf[..n]);
            sha2::Digest::update(&mut sha256, &buf[..n]);
        }
        let b64 = base64::engine::general_purpose::STANDARD;
        Ok(UpdatePayload {
            file: path
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default(),
            size,
            sha1_base64: b64.encode(sha1::Digest::finalize(sha1)),
            sha256_base64: b64.encode(sha2::Digest::finalize(sha256)),
        })
    }
}

impl Verified {
    /// When the release was signed: its earliest signature.
    pub fn signed(&self) -> Option<u64> {
        self.signed_at.values().min().copied()
    }
}

/// The outcome of a fetch.
#[derive(Debug)]
pub struct Fetched {
    pub version: String,
    pub dir: PathBuf,
    pub downloaded: u64,
    /// Already held and verified: nothing was downloaded.
    pub already_held: bool,
    pub current_switched: bool,
    pub signer: String,
}

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{url}: {detail}")]
    Http { url: String, detail: String },
    #[error("{url}: the server answered {status}")]
    Status { url: String, status: u16 },
    #[error(
        "{url}: the server sent nothing for {secs} s after {got} bytes; run the same command again to resume"
    )]
    Stalled { url: String, secs: u64, got: u64 },
    #[error(
        "{url}: the connection ended after {got} of {want} bytes; run the same command again to resume"
    )]
    Short { url: String, got: u64, want: u64 },
    #[error("{path}: {detail}")]
    Io { path: String, detail: String },
    #[error(transparent)]
    Verify(#[from] VerifyError),
    #[error("{0}")]
    Version(String),
    #[error("{url}: more than {cap} bytes, the most a release file may be: refused and removed")]
    TooLarge { url: String, cap: u64 },
    #[error(
        "{path}: only {free} MiB free, and a fetch leaves {reserve} MiB ([flatcar] fetch_min_free_mb) for the registry on the same disk: free space (lacave mirror prune) and run the same command again to resume"
    )]
    NoSpace {
        path: String,
        free: u64,
        reserve: u64,
    },
    /// A release whose signed files betray another release (see the module's documentation).
    #[error("{0}")]
    Rollback(String),
    #[error(
        "{version} is older than {current}, which current points at: current was not moved (pass --allow-downgrade to move it back)"
    )]
    Downgrade { version: String, current: String },
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> FetchError + '_ {
    move |e| FetchError::Io {
        path: path.display().to_string(),
        detail: e.to_string(),
    }
}

/// `FLATCAR_VERSION=` of a `version.txt`.
pub fn version_of(text: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix("FLATCAR_VERSION="))
        .map(|v| v.trim().trim_matches('"').to_string())
        .filter(|v| is_version(v))
}

fn is_version(v: &str) -> bool {
    crate::model::is_flatcar_version(v)
}

/// The board directory of the mirror: `<mirror_dir>/<channel>/<board>`.
pub fn board_dir(mirror_dir: &Path, channel: &str, board: &str) -> PathBuf {
    mirror_dir.join(channel).join(board)
}

/// Fetches, verifies and (when asked) switches `current`.
pub async fn fetch_flatcar(
    req: &FlatcarFetch,
    keys: &Keyring,
    progress: &dyn Progress,
) -> Result<Fetched, FetchError> {
    let client = http_client(&req.base_url, req.stall, &req.redirect_hosts)?;
    let base = format!("{}/{}", req.base_url.trim_end_matches('/'), req.board);
    let version = if req.version == "current" {
        let url = format!("{base}/current/version.txt");
        let text = get_small(&client, &url, req.stall).await?;
        version_of(&String::from_utf8_lossy(&text))
            .ok_or_else(|| FetchError::Version(format!("{url} names no FLATCAR_VERSION")))?
    } else if is_version(&req.version) {
        req.version.clone()
    } else {
        return Err(FetchError::Version(format!(
            "{:?} is not a Flatcar version (e.g. 4459.2.1) or \"current\"",
            req.version
        )));
    };
    let board = board_dir(&req.mirror_dir, &req.channel, &req.board);
    let dir = board.join(&version);
    if let Some(mut held) = read_verified(&dir) {
        let mut downloaded = 0;
        if held.update.is_none() {
            // Held from a lacave that did not fetch update payloads: add it, checked as the
            // release's other files were.
            downloaded =
                add_update_payload(req, keys, progress, &client, &base, &board, &mut held).await?;
        }
        let current_switched =
            req.switch_current && switch_current(&board, &version, req.allow_downgrade)?;
        return Ok(Fetched {
            version,
            dir,
            downloaded,
            already_held: downloaded == 0,
            current_switched,
            signer: held.signer,
        });
    }
    let incoming = board.join(format!(".incoming-{version}"));
    std::fs::create_dir_all(&incoming).map_err(io_err(&incoming))?;
    let fetched = fetch_into(req, keys, progress, &client, &base, &version, &incoming).await;
    if let Err(
        FetchError::Verify(_)
        | FetchError::Version(_)
        | FetchError::Rollback(_)
        | FetchError::TooLarge { .. },
    ) = &fetched
    {
        // Content that failed its checks is not kept for a resume.
        let _ = std::fs::remove_dir_all(&incoming);
    } else if fetched.is_err() {
        // Nothing to resume from: no empty leftover.
        let _ = std::fs::remove_dir(&incoming);
    }
    let (downloaded, signer) = fetched?;
    if dir.exists() {
        // An unverified leftover of an older run.
        std::fs::remove_dir_all(&dir).map_err(io_err(&dir))?;
    }
    std::fs::rename(&incoming, &dir).map_err(io_err(&dir))?;
    sync_dir(&board)?;
    let current_switched =
        req.switch_current && switch_current(&board, &version, req.allow_downgrade)?;
    Ok(Fetched {
        version,
        dir,
        downloaded,
        already_held: false,
        current_switched,
        signer,
    })
}

/// Downloads and checks everything into `incoming`; the bytes downloaded and the signer.
async fn fetch_into(
    req: &FlatcarFetch,
    keys: &Keyring,
    progress: &dyn Progress,
    client: &reqwest::Client,
    base: &str,
    version: &str,
    incoming: &Path,
) -> Result<(u64, String), FetchError> {
    let client = client.clone();
    let url = |name: &str| format!("{base}/{version}/{name}");
    let mut downloaded = 0;

    // version.txt, and its signature when the server has one.
    let text = get_small(&client, &url("version.txt"), req.stall).await?;
    let named = version_of(&String::from_utf8_lossy(&text));
    if named.as_deref() != Some(version) {
        return Err(FetchError::Version(format!(
            "{}: names version {}, not {version}",
            url("version.txt"),
            named.as_deref().unwrap_or("none")
        )));
    }
    write_file(&incoming.join("version.txt"), &text)?;
    let mut signer = String::new();
    let mut signed_at = std::collections::BTreeMap::new();
    if let Some(sig) = get_optional(&client, &url("version.txt.sig"), req.stall).await? {
        write_file(&incoming.join("version.txt.sig"), &sig)?;
        let signed = keys.verify_signed(&sig, &incoming.join("version.txt"))?;
        signer = signed.signer;
        signed_at.extend(signed.created.map(|t| ("version.txt".to_string(), t)));
    }
    let space = Space {
        dir: incoming.to_path_buf(),
        min_free: req.min_free,
    };

    // The images: signatures first (small), then the files (resumed), each checked.
    let mut sha512 = std::collections::BTreeMap::new();
    for name in IMAGES {
        let sig = get_small(&client, &url(&format!("{name}.sig")), req.stall).await?;
        write_file(&incoming.join(format!("{name}.sig")), &sig)?;
        let path = incoming.join(name);
        let limits = Limits {
            cap: cap_of(name),
            space: &space,
        };
        downloaded += download(&client, &url(name), &path, progress, req.stall, &limits).await?;
        let signed = keys.verify_signed(&sig, &path)?;
        signer = signed.signer;
        signed_at.extend(signed.created.map(|t| (name.to_string(), t)));
        let hash = hash_off_workers(&path, sha512_file).await?;
        sha512.insert(name.to_string(), hash);
    }

    // The update payload, for the daemon's Omaha answers.
    let (got, payload, signed) =
        fetch_payload(req, keys, progress, &client, &url, incoming, &space).await?;
    downloaded += got;
    signed_at.extend(signed.map(|t| (UPDATE_PAYLOAD.to_string(), t)));
    sha512.insert(UPDATE_PAYLOAD.to_string(), payload.1);
    let update = Some(payload.0);

    // The disk image's DIGESTS, when published: signed, and its SHA-512 must agree.
    if let Some(digests) = get_optional(&client, &url(DIGESTS), req.stall).await? {
        let sig = get_small(&client, &url(&format!("{DIGESTS}.sig")), req.stall).await?;
        let path = incoming.join(DIGESTS);
        write_file(&path, &digests)?;
        write_file(&incoming.join(format!("{DIGESTS}.sig")), &sig)?;
        let signed = keys.verify_signed(&sig, &path)?;
        signed_at.extend(signed.created.map(|t| (DIGESTS.to_string(), t)));
        let image = IMAGES[2];
        let wanted = sha512_in_digests(&String::from_utf8_lossy(&digests), image);
        let found = sha512.get(image).cloned().unwrap_or_default();
        if let Some(wanted) = wanted
            && wanted != found
        {
            return Err(VerifyError::Digest {
                file: image.into(),
                algorithm: "SHA-512",
                digests: DIGESTS.into(),
                found,
                wanted,
            }
            .into());
        }
    }

    let record = Verified {
        version: version.to_string(),
        signer: signer.clone(),
        verified_at: time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
        sha512,
        signed_at,
        update,
    };
    check_not_another_release(&record, &req.mirror_dir, &req.channel, &req.board)?;
    write_file(
        &incoming.join(VERIFIED),
        &serde_json::to_vec_pretty(&record).expect("serialises"),
    )?;
    Ok((downloaded, signer))
}

/// Downloads the update payload and its signature into `dir`, checks the signature; the bytes
/// downloaded, the payload's Omaha digests with its SHA-512, and when it was signed.
async fn fetch_payload(
    req: &FlatcarFetch,
    keys: &Keyring,
    progress: &dyn Progress,
    client: &reqwest::Client,
    url: &dyn Fn(&str) -> String,
    dir: &Path,
    space: &Space,
) -> Result<(u64, (UpdatePayload, String), Option<u64>), FetchError> {
    let sig = get_small(client, &url(&format!("{UPDATE_PAYLOAD}.sig")), req.stall).await?;
    write_file(&dir.join(format!("{UPDATE_PAYLOAD}.sig")), &sig)?;
    let path = dir.join(UPDATE_PAYLOAD);
    let limits = Limits {
        cap: cap_of(UPDATE_PAYLOAD),
        space,
    };
    let got = download(
        client,
        &url(UPDATE_PAYLOAD),
        &path,
        progress,
        req.stall,
        &limits,
    )
    .await?;
    let signed = keys.verify_signed(&sig, &path)?;
    let owned = path.clone();
    let digests = tokio::task::spawn_blocking(move || {
        Ok::<_, std::io::Error>((UpdatePayload::of_file(&owned)?, sha512_file(&owned)?))
    })
    .await
    .map_err(|e| FetchError::Io {
        path: path.display().to_string(),
        detail: e.to_string(),
    })?
    .map_err(io_err(&path))?;
    Ok((got, digests, signed.created))
}

/// Adds the update payload to a release held without it: fetched into `.incoming-<version>`,
/// its signature checked and its signing time within [`SIGNING_SPREAD`] of the release's other
/// files (another release's payload is refused), then moved in and the record rewritten.
#[allow(clippy::too_many_arguments)]
async fn add_update_payload(
    req: &FlatcarFetch,
    keys: &Keyring,
    progress: &dyn Progress,
    client: &reqwest::Client,
    base: &str,
    board: &Path,
    held: &mut Verified,
) -> Result<u64, FetchError> {
    let version = held.version.clone();
    let dir = board.join(&version);
    let incoming = board.join(format!(".incoming-{version}"));
    std::fs::create_dir_all(&incoming).map_err(io_err(&incoming))?;
    let space = Space {
        dir: incoming.clone(),
        min_free: req.min_free,
    };
    let url = |name: &str| format!("{base}/{version}/{name}");
    let fetched = fetch_payload(req, keys, progress, client, &url, &incoming, &space).await;
    let (got, (payload, sha512), signed) = match fetched {
        Ok(f) => f,
        Err(e) => {
            if matches!(e, FetchError::Verify(_) | FetchError::TooLarge { .. }) {
                let _ = std::fs::remove_dir_all(&incoming);
            }
            return Err(e);
        }
    };
    if let (Some(at), Some(first), Some(last)) = (
        signed,
        held.signed_at.values().min(),
        held.signed_at.values().max(),
    ) && (at + SIGNING_SPREAD < *last || at > first + SIGNING_SPREAD)
    {
        let _ = std::fs::remove_dir_all(&incoming);
        return Err(FetchError::Rollback(format!(
            "{version}: {UPDATE_PAYLOAD} was signed more than {} hours away from the release's other files: another release's payload",
            SIGNING_SPREAD / 3600
        )));
    }
    for name in [format!("{UPDATE_PAYLOAD}.sig"), UPDATE_PAYLOAD.to_string()] {
        std::fs::rename(incoming.join(&name), dir.join(&name)).map_err(io_err(&dir))?;
    }
    let _ = std::fs::remove_dir(&incoming);
    held.signed_at
        .extend(signed.map(|t| (UPDATE_PAYLOAD.to_string(), t)));
    held.sha512.insert(UPDATE_PAYLOAD.to_string(), sha512);
    held.update = Some(payload);
    let tmp = dir.join(format!("{VERIFIED}.new"));
    write_file(&tmp, &serde_json::to_vec_pretty(&held).expect("serialises"))?;
    std::fs::rename(&tmp, dir.join(VERIFIED)).map_err(io_err(&dir))?;
    sync_dir(&dir)?;
    Ok(got)
}

/// The verification record of a release directory, if it has one.
pub fn read_verified(dir: &Path) -> Option<Verified> {
    let bytes = std::fs::read(dir.join(VERIFIED)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Dotted versions compared number by number (`4459.10.0` > `4459.2.1`).
pub fn compare_versions(a: &str, b: &str) -> std::cmp::Ordering {
    crate::model::compare_flatcar_versions(a, b)
}

/// Every verified release held for `board`, in any channel: (channel, version, record).
fn held_releases(mirror_dir: &Path, board: &str) -> Vec<(String, String, Verified)> {
    let mut held = Vec::new();
    let Ok(channels) = std::fs::read_dir(mirror_dir) else {
        return held;
    };
    for channel in channels.flatten() {
        let Ok(versions) = std::fs::read_dir(channel.path().join(board)) else {
            continue;
        };
        for v in versions.flatten() {
            let name = v.file_name().to_string_lossy().into_owned();
            if !is_version(&name) || v.path().is_symlink() {
                continue;
            }
            if let Some(record) = read_verified(&v.path()) {
                held.push((
                    channel.file_name().to_string_lossy().into_owned(),
                    name,
                    record,
                ));
            }
        }
    }
    held
}

/// Refuses a release whose signed files betray another one (see the module's documentation).
fn check_not_another_release(
    new: &Verified,
    mirror_dir: &Path,
    channel: &str,
    board: &str,
) -> Result<(), FetchError> {
    let (Some(first), Some(last)) = (new.signed_at.values().min(), new.signed_at.values().max())
    else {
        return Ok(());
    };
    if last - first > SIGNING_SPREAD {
        let at = |t: &u64| {
            new.signed_at
                .iter()
                .find(|(_, v)| *v == t)
                .map(|(f, _)| f.clone())
                .unwrap_or_default()
        };
        return Err(FetchError::Rollback(format!(
            "{}: {} and {} were signed {} hours apart: files of different releases mixed (one release is signed within {} hours)",
            new.version,
            at(first),
            at(last),
            (last - first) / 3600,
            SIGNING_SPREAD / 3600
        )));
    }
    for (held_channel, held_version, held) in held_releases(mirror_dir, board) {
        if held_version == new.version && held_channel == channel {
            continue;
        }
        for (file, hash) in &new.sha512 {
            if held.sha512.get(file) == Some(hash) {
                return Err(FetchError::Rollback(format!(
                    "{}: {file} is byte for byte {held_channel} {held_version}'s: another release's files under this version's name (a stale or hostile server)",
                    new.version
                )));
            }
        }
        let Some(held_signed) = held.signed() else {
            continue;
        };
        if held_channel != channel {
            continue;
        }
        let order = compare_versions(&new.version, &held_version);
        let suspicious = match order {
            std::cmp::Ordering::Greater => *first + SIGNING_SPREAD < held_signed,
            std::cmp::Ordering::Less => *first > held_signed + SIGNING_SPREAD,
            std::cmp::Ordering::Equal => false,
        };
        if suspicious {
            return Err(FetchError::Rollback(format!(
                "{}: signed {} the {} release {held_version} held here: a {} version signed {} is another release's files under this version's name (a stale or hostile server)",
                new.version,
                if order.is_gt() { "before" } else { "after" },
                if order.is_gt() { "older" } else { "newer" },
                if order.is_gt() { "newer" } else { "older" },
                if order.is_gt() { "earlier" } else { "later" },
            )));
        }
    }
    Ok(())
}

/// Points `current` at `version` (a new symlink renamed over the old one); whether it moved.
/// Never to an older version than it points at unless `allow_downgrade`.
pub fn switch_current(
    board: &Path,
    version: &str,
    allow_downgrade: bool,
) -> Result<bool, FetchError> {
    let current = board.join("current");
    let target = std::fs::read_link(&current).ok();
    if target.as_deref() == Some(Path::new(version)) {
        return Ok(false);
    }
    if let Some(held) = target.as_ref().and_then(|t| t.to_str())
        && is_version(held)
        && compare_versions(version, held).is_lt()
        && !allow_downgrade
    {
        return Err(FetchError::Downgrade {
            version: version.into(),
            current: held.into(),
        });
    }
    let tmp = board.join(".current-new");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(version, &tmp).map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, &current).map_err(io_err(&current))?;
    sync_dir(board)?;
    Ok(true)
}

/// The HTTP client of a fetch: 10 s to connect, `stall` without a byte ends a read; at most
/// 5 redirects, each only to `base_url`'s host or one of `redirect_hosts`, and never from
/// https to http.
fn http_client(
    base_url: &str,
    stall: Duration,
    redirect_hosts: &[String],
) -> Result<reqwest::Client, FetchError> {
    let base = reqwest::Url::parse(base_url).map_err(|e| FetchError::Http {
        url: base_url.into(),
        detail: e.to_string(),
    })?;
    let mut allowed: Vec<String> = redirect_hosts
        .iter()
        .map(|h| h.to_ascii_lowercase())
        .collect();
    allowed.extend(base.host_str().map(str::to_ascii_lowercase));
    let https = base.scheme() == "https";
    let policy = reqwest::redirect::Policy::custom(move |attempt| {
        let to = attempt.url().clone();
        let host_ok = to
            .host_str()
            .is_some_and(|h| allowed.iter().any(|a| a.eq_ignore_ascii_case(h)));
        if attempt.previous().len() >= 5 {
            attempt.error("more than 5 redirects")
        } else if https && to.scheme() != "https" {
            attempt.error(format!("a redirect from https to {to}: refused"))
        } else if !host_ok {
            attempt.error(format!(
                "a redirect to {to}, outside release_base_url's host: refused (allow it with [flatcar] release_redirect_hosts)"
            ))
        } else {
            attempt.follow()
        }
    });
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .read_timeout(stall)
        .redirect(policy)
        .build()
        .map_err(|e| FetchError::Http {
            url: base_url.into(),
            detail: e.to_string(),
        })
}

/// A file's digest (hundreds of megabytes: read off the async workers).
async fn hash_off_workers(
    path: &Path,
    hash: fn(&Path) -> std::io::Result<String>,
) -> Result<String, FetchError> {
    let owned = path.to_path_buf();
    tokio::task::spawn_blocking(move || hash(&owned))
        .await
        .map_err(|e| FetchError::Io {
            path: path.display().to_string(),
            detail: e.to_string(),
        })?
        .map_err(io_err(path))
}

fn sync_dir(dir: &Path) -> Result<(), FetchError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), FetchError> {
    let mut f = std::fs::File::create(path).map_err(io_err(path))?;
    f.write_all(bytes).map_err(io_err(path))?;
    f.sync_all().map_err(io_err(path))
}

fn http_error(url: &str, e: &reqwest::Error, got: u64, stall: Duration) -> FetchError {
    if e.is_timeout() {
        FetchError::Stalled {
            url: url.into(),
            secs: stall.as_secs(),
            got,
        }
    } else {
        let mut detail = e.to_string();
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            detail = format!("{detail}: {s}");
            source = s.source();
        }
        FetchError::Http {
            url: url.into(),
            detail,
        }
    }
}

/// A small file, whole (a signature, version.txt, DIGESTS): at most 1 MiB.
async fn get_small(
    client: &reqwest::Client,
    url: &str,
    stall: Duration,
) -> Result<Vec<u8>, FetchError> {
    get_optional(client, url, stall)
        .await?
        .ok_or_else(|| FetchError::Status {
            url: url.into(),
            status: 404,
        })
}

/// Like [`get_small`], `None` on a 404.
async fn get_optional(
    client: &reqwest::Client,
    url: &str,
    stall: Duration,
) -> Result<Option<Vec<u8>>, FetchError> {
    let mut response = client
        .get(url)
        .send()
        .await
        .map_err(|e| http_error(url, &e, 0, stall))?;
    match response.status().as_u16() {
        404 => return Ok(None),
        200 => {}
        status => {
            return Err(FetchError::Status {
                url: url.into(),
                status,
            });
        }
    }
    let want = response.content_length();
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| http_error(url, &e, body.len() as u64, stall))?
    {
        body.extend_from_slice(&chunk);
        if body.len() > 1 << 20 {
            return Err(FetchError::Http {
                url: url.into(),
                detail: "more than 1 MiB for a small file".into(),
            });
        }
    }
    if let Some(want) = want
        && body.len() as u64 != want
    {
        return Err(FetchError::Short {
            url: url.into(),
            got: body.len() as u64,
            want,
        });
    }
    Ok(Some(body))
}

/// The file system a fetch writes to, and the free space it leaves there.
struct Space {
    dir: PathBuf,
    min_free: u64,
}

impl Space {
    /// Fails once writing `more` bytes would leave less than `min_free`.
    fn check(&self, more: u64) -> Result<(), FetchError> {
        let Ok(stat) = rustix::fs::statvfs(&self.dir) else {
            return Ok(()); // cannot tell: the write itself will say
        };
        let free = stat.f_bavail.saturating_mul(stat.f_frsize);
        if free < self.min_free.saturating_add(more) {
            return Err(self.full(free));
        }
        Ok(())
    }

    fn full(&self, free: u64) -> FetchError {
        FetchError::NoSpace {
            path: self.dir.display().to_string(),
            free: free >> 20,
            reserve: self.min_free >> 20,
        }
    }
}

/// What one download may take.
struct Limits<'a> {
    /// The file's largest size.
    cap: u64,
    space: &'a Space,
}

/// How much is written between two checks of the free space.
const SPACE_CHECK_EVERY: u64 = 8 << 20;

/// Downloads `url` into `dest`, resuming from what `dest` holds; returns the bytes fetched now.
/// A file growing past `limits.cap` is removed; one that would leave the file system with
/// less than its reserve stops (kept, to resume once there is room).
async fn download(
    client: &reqwest::Client,
    url: &str,
    dest: &Path,
    progress: &dyn Progress,
    stall: Duration,
    limits: &Limits<'_>,
) -> Result<u64, FetchError> {
    let have = std::fs::metadata(dest).map(|m| m.len()).unwrap_or(0);
    let too_large = || {
        let _ = std::fs::remove_file(dest);
        FetchError::TooLarge {
            url: url.into(),
            cap: limits.cap,
        }
    };
    if have > limits.cap {
        return Err(too_large());
    }
    let mut request = client.get(url);
    if have > 0 {
        request = request.header(reqwest::header::RANGE, format!("bytes={have}-"));
    }
    let mut response = request
        .send()
        .await
        .map_err(|e| http_error(url, &e, have, stall))?;
    let status = response.status().as_u16();
    let (mut file, start) = match status {
        206 if have > 0 => (
            std::fs::OpenOptions::new()
                .append(true)
                .open(dest)
                .map_err(io_err(dest))?,
            have,
        ),
        200 => (std::fs::File::create(dest).map_err(io_err(dest))?, 0),
        // Nothing past what we hold: the file is complete (its signature will tell).
        416 if have > 0 => return Ok(0),
        _ => {
            return Err(FetchError::Status {
                url: url.into(),
                status,
            });
        }
    };
    let total = response.content_length().map(|n| n + start);
    if total.is_some_and(|t| t > limits.cap) {
        return Err(too_large());
    }
    limits
        .space
        .check(total.map_or(0, |t| t - start).min(SPACE_CHECK_EVERY))?;
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    progress.start(&name, total, start);
    let mut got = start;
    let mut since_check = 0u64;
    loop {
        let chunk = match response.chunk().await {
            Ok(Some(chunk)) => chunk,
            Ok(None) => break,
            Err(e) => {
                let _ = file.sync_all();
                progress.finish();
                return Err(match http_error(url, &e, got, stall) {
                    stalled @ FetchError::Stalled { .. } => stalled,
                    _ => FetchError::Short {
                        url: url.into(),
                        got,
                        want: total.unwrap_or(got),
                    },
                });
            }
        };
        if got + chunk.len() as u64 > limits.cap {
            progress.finish();
            drop(file);
            return Err(too_large());
        }
        since_check += chunk.len() as u64;
        if since_check >= SPACE_CHECK_EVERY {
            since_check = 0;
            if let Err(e) = limits.space.check(SPACE_CHECK_EVERY) {
                let _ = file.sync_all();
                progress.finish();
                return Err(e);
            }
        }
        if let Err(e) = file.write_all(&chunk) {
            progress.finish();
            return Err(if e.raw_os_error() == Some(28) {
                limits.space.full(0) // ENOSPC
            } else {
                io_err(dest)(e)
            });
        }
        got += chunk.len() as u64;
        progress.advance(chunk.len() as u64);
    }
    file.sync_all().map_err(io_err(dest))?;
    progress.finish();
    if let Some(total) = total
        && got != total
    {
        return Err(FetchError::Short {
            url: url.into(),
            got,
            want: total,
        });
    }
    Ok(got - start)
}

/// What to fetch for the join on Flatcar: the Kubernetes systemd-sysext image.
#[derive(Clone, Debug)]
pub struct SysextFetch {
    /// `https://github.com/flatcar/sysext-bakery/releases/download` or an internal copy.
    pub base_url: String,
    /// `v1.37.2`.
    pub version: String,
    /// `kubernetes-v1.37.2-x86-64.raw`.
    pub image: String,
    pub mirror_dir: PathBuf,
    pub stall: Duration,
    pub redirect_hosts: Vec<String>,
    pub min_free: u64,
}

/// The largest a Kubernetes sysext image may be (they are ~100 MB).
const SYSEXT_CAP: u64 = 4 << 30;

/// Fetches `<base>/kubernetes-<version>/<image>` and its `SHA256SUMS` into
/// `<mirror_dir>/kubernetes/`, where the final Ignition config points nodes. The image is
/// downloaded (resumed) as `.incoming-<image>`, its SHA-256 must be the one `SHA256SUMS` gives,
/// and only then is it renamed into place, with `<image>.sha256` beside it. (sysext-bakery
/// does not sign its images: the checksum file comes over HTTPS from the same release.)
pub async fn fetch_kubernetes(
    req: &SysextFetch,
    progress: &dyn Progress,
) -> Result<(PathBuf, u64, bool), FetchError> {
    let client = http_client(&req.base_url, req.stall, &req.redirect_hosts)?;
    let dir = req.mirror_dir.join("kubernetes");
    std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
    let dest = dir.join(&req.image);
    let release = format!(
        "{}/kubernetes-{}",
        req.base_url.trim_end_matches('/'),
        req.version
    );
    let sums = get_small(&client, &format!("{release}/SHA256SUMS"), req.stall).await?;
    let wanted = String::from_utf8_lossy(&sums)
        .lines()
        .find_map(|l| {
            let mut parts = l.split_whitespace();
            let (hash, name) = (parts.next()?, parts.next()?);
            (name.trim_start_matches('*') == req.image && hash.len() == 64)
                .then(|| hash.to_ascii_lowercase())
        })
        .ok_or_else(|| {
            FetchError::Version(format!(
                "{release}/SHA256SUMS has no line for {}",
                req.image
            ))
        })?;
    if dest.exists()
        && std::fs::read_to_string(dir.join(format!("{}.sha256", req.image)))
            .is_ok_and(|h| h.trim() == wanted)
    {
        return Ok((dest, 0, true));
    }
    let incoming = dir.join(format!(".incoming-{}", req.image));
    let url = format!("{release}/{}", req.image);
    let space = Space {
        dir: dir.clone(),
        min_free: req.min_free,
    };
    let limits = Limits {
        cap: SYSEXT_CAP,
        space: &space,
    };
    let downloaded = download(&client, &url, &incoming, progress, req.stall, &limits).await?;
    let found = hash_off_workers(&incoming, sha256_file).await?;
    if found != wanted {
        let _ = std::fs::remove_file(&incoming);
        return Err(VerifyError::Digest {
            file: req.image.clone(),
            algorithm: "SHA-256",
            digests: "SHA256SUMS".into(),
            found,
            wanted,
        }
        .into());
    }
    write_file(
        &dir.join(format!("{}.sha256", req.image)),
        format!("{wanted}\n").as_bytes(),
    )?;
    std::fs::rename(&incoming, &dest).map_err(io_err(&dest))?;
    sync_dir(&dir)?;
    Ok((dest, downloaded, false))
}

fn sha256_file(path: &Path) -> std::io::Result<String> {
    crate::secrets::file_digest::<sha2::Sha256>(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cmp::Ordering;

    #[test]
    fn versions_compare_number_by_number() {
        assert_eq!(compare_versions("4459.10.0", "4459.2.1"), Ordering::Greater);
        assert_eq!(compare_versions("4459.2.1", "4459.2.1"), Ordering::Equal);
        assert_eq!(compare_versions("3033.3.18", "4459.0.0"), Ordering::Less);
        assert_eq!(compare_versions("4459.2", "4459.2.0"), Ordering::Less);
    }

    fn record(version: &str, hash: &str, signed: &[(&str, u64)]) -> Verified {
        Verified {
            version: version.into(),
            signer: "X".into(),
            verified_at: String::new(),
            sha512: [(IMAGES[0].to_string(), hash.to_string())].into(),
            signed_at: signed.iter().map(|(f, t)| (f.to_string(), *t)).collect(),
            update: None,
        }
    }

    #[test]
    fn the_payloads_digests_are_base64_as_omaha_gives_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(UPDATE_PAYLOAD);
        std::fs::write(&path, b"abc").unwrap();
        let p = UpdatePayload::of_file(&path).unwrap();
        assert_eq!(p.file, UPDATE_PAYLOAD);
        assert_eq!(p.size, 3);
        // SHA-1 and SHA-256 of "abc" (FIPS 180), base64.
        assert_eq!(p.sha1_base64, "qZk+NkcGgWq6PiVxeFDCbJzQ2J0=");
        assert_eq!(
            p.sha256_base64,
            "ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0="
        );
    }

    #[test]
    fn a_release_betraying_another_is_refused() {
        let mirror = tempfile::tempdir().unwrap();
        let held_dir = mirror.path().join("stable/amd64-usr/100.0.0");
        std::fs::create_dir_all(&held_dir).unwrap();
        let day = 24 * 3600;
        let held = record("100.0.0", "aa", &[(IMAGES[0], 100 * day)]);
        std::fs::write(held_dir.join(VERIFIED), serde_json::to_vec(&held).unwrap()).unwrap();
        let check = |r: &Verified| {
            check_not_another_release(r, mirror.path(), "stable", "amd64-usr")
                .map_err(|e| e.to_string())
        };
        // Newer, signed later, its own bytes: fine.
        assert!(check(&record("101.0.0", "bb", &[(IMAGES[0], 110 * day)])).is_ok());
        // The held release's bytes under a newer name.
        let e = check(&record("101.0.0", "aa", &[(IMAGES[0], 110 * day)])).unwrap_err();
        assert!(e.contains("byte for byte"), "{e}");
        // Newer but signed well before the older held release.
        let e = check(&record("101.0.0", "bb", &[(IMAGES[0], 90 * day)])).unwrap_err();
        assert!(e.contains("signed before"), "{e}");
        // Older but signed well after it.
        let e = check(&record("99.0.0", "bb", &[(IMAGES[0], 120 * day)])).unwrap_err();
        assert!(e.contains("signed after"), "{e}");
        // Files signed two days apart.
        let mixed = record(
            "101.0.0",
            "bb",
            &[(IMAGES[0], 110 * day), (IMAGES[1], 112 * day)],
        );
        assert!(check(&mixed).unwrap_err().contains("hours apart"));
        // Another channel's older release signed later is no concern (channels interleave).
        assert!(
            check_not_another_release(
                &record("99.0.0", "cc", &[(IMAGES[0], 120 * day)]),
                mirror.path(),
                "beta",
                "amd64-usr"
            )
            .is_ok()
        );
    }
}

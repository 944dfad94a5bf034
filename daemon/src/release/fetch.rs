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
    !v.is_empty()
        && v.len() <= 32
        && v.chars().all(|c| c.is_ascii_digit() || c == '.')
        && !v.starts_with('.')
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
    let client = http_client(&req.base_url, req.stall)?;
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
    if let Some(held) = read_verified(&dir) {
        let current_switched = req.switch_current && switch_current(&board, &version)?;
        return Ok(Fetched {
            version,
            dir,
            downloaded: 0,
            already_held: true,
            current_switched,
            signer: held.signer,
        });
    }
    let incoming = board.join(format!(".incoming-{version}"));
    std::fs::create_dir_all(&incoming).map_err(io_err(&incoming))?;
    let fetched = fetch_into(req, keys, progress, &client, &base, &version, &incoming).await;
    if let Err(FetchError::Verify(_) | FetchError::Version(_)) = &fetched {
        // Content that failed its checks is not kept for a resume.
        let _ = std::fs::remove_dir_all(&incoming);
    }
    let (downloaded, signer) = fetched?;
    if dir.exists() {
        // An unverified leftover of an older run.
        std::fs::remove_dir_all(&dir).map_err(io_err(&dir))?;
    }
    std::fs::rename(&incoming, &dir).map_err(io_err(&dir))?;
    sync_dir(&board)?;
    let current_switched = req.switch_current && switch_current(&board, &version)?;
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
    if let Some(sig) = get_optional(&client, &url("version.txt.sig"), req.stall).await? {
        write_file(&incoming.join("version.txt.sig"), &sig)?;
        signer = keys.verify_file(&sig, &incoming.join("version.txt"))?;
    }

    // The images: signatures first (small), then the files (resumed), each checked.
    let mut sha512 = std::collections::BTreeMap::new();
    for name in IMAGES {
        let sig = get_small(&client, &url(&format!("{name}.sig")), req.stall).await?;
        write_file(&incoming.join(format!("{name}.sig")), &sig)?;
        let path = incoming.join(name);
        downloaded += download(&client, &url(name), &path, progress, req.stall).await?;
        signer = keys.verify_file(&sig, &path)?;
        let hash = hash_off_workers(&path, sha512_file).await?;
        sha512.insert(name.to_string(), hash);
    }

    // The disk image's DIGESTS, when published: signed, and its SHA-512 must agree.
    if let Some(digests) = get_optional(&client, &url(DIGESTS), req.stall).await? {
        let sig = get_small(&client, &url(&format!("{DIGESTS}.sig")), req.stall).await?;
        let path = incoming.join(DIGESTS);
        write_file(&path, &digests)?;
        write_file(&incoming.join(format!("{DIGESTS}.sig")), &sig)?;
        keys.verify_file(&sig, &path)?;
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
    };
    write_file(
        &incoming.join(VERIFIED),
        &serde_json::to_vec_pretty(&record).expect("serialises"),
    )?;
    Ok((downloaded, signer))
}

/// The verification record of a release directory, if it has one.
pub fn read_verified(dir: &Path) -> Option<Verified> {
    let bytes = std::fs::read(dir.join(VERIFIED)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Points `current` at `version` (a new symlink renamed over the old one); whether it moved.
pub fn switch_current(board: &Path, version: &str) -> Result<bool, FetchError> {
    let current = board.join("current");
    if std::fs::read_link(&current).is_ok_and(|t| t == Path::new(version)) {
        return Ok(false);
    }
    let tmp = board.join(".current-new");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(version, &tmp).map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, &current).map_err(io_err(&current))?;
    sync_dir(board)?;
    Ok(true)
}

/// The HTTP client of a fetch: 10 s to connect, `stall` without a byte ends a read.
fn http_client(base_url: &str, stall: Duration) -> Result<reqwest::Client, FetchError> {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .read_timeout(stall)
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

/// Downloads `url` into `dest`, resuming from what `dest` holds; returns the bytes fetched now.
async fn download(
    client: &reqwest::Client,
    url: &str,
    dest: &Path,
    progress: &dyn Progress,
    stall: Duration,
) -> Result<u64, FetchError> {
    let have = std::fs::metadata(dest).map(|m| m.len()).unwrap_or(0);
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
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    progress.start(&name, total, start);
    let mut got = start;
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
        file.write_all(&chunk).map_err(io_err(dest))?;
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
}

/// Fetches `<base>/kubernetes-<version>/<image>` and its `SHA256SUMS` into
/// `<mirror_dir>/kubernetes/`, where the final Ignition config points nodes. The image is
/// downloaded (resumed) as `.incoming-<image>`, its SHA-256 must be the one `SHA256SUMS` gives,
/// and only then is it renamed into place, with `<image>.sha256` beside it. (sysext-bakery
/// does not sign its images: the checksum file comes over HTTPS from the same release.)
pub async fn fetch_kubernetes(
    req: &SysextFetch,
    progress: &dyn Progress,
) -> Result<(PathBuf, u64, bool), FetchError> {
    let client = http_client(&req.base_url, req.stall)?;
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
    let downloaded = download(&client, &url, &incoming, progress, req.stall).await?;
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

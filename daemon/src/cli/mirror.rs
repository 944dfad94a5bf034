//! `lacave mirror`: fill the image mirror from upstream, verified (`fetch`), see what it holds
//! (`list`), and remove what no node uses (`prune`). Runs on the provisioning host, as root (it
//! writes into `[flatcar] mirror_dir`); only `list` asks the daemon (which nodes use what).

use super::note;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use clap::Subcommand;

use super::{ClientArgs, client, exit, runtime};
use crate::config::Config;
use crate::release::fetch::{self, FetchError, FlatcarFetch, Progress};
use crate::release::verify::{FLATCAR_FINGERPRINT, Keyring, VerifyError};

#[derive(Subcommand, Debug)]
pub enum MirrorCommand {
    /// Download a release, verify it with OpenPGP, and make it the one nodes get.
    Fetch {
        #[command(subcommand)]
        what: FetchWhat,
    },
    /// What the mirror holds: releases, sizes, verification, which one `current` is.
    List,
    /// Container images the daemon serves to nodes (OCI Distribution API on [http] listen).
    Images {
        #[command(subcommand)]
        command: ImagesCommand,
    },
    /// Remove releases no node uses (neither `current` nor `[flatcar] version`).
    Prune {
        /// Say what would go, remove nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum ImagesCommand {
    /// Import OCI image layouts (a directory, or a tar of one: skopeo copy … oci-archive:,
    /// ctr export, docker save of Docker >= 25); every blob's digest is checked.
    Add {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// The name of an image whose archive carries none (registry/repo:tag).
        #[arg(long)]
        name: Option<String>,
    },
    /// The images held.
    List,
    /// The images the add-ons and the join need that are not held.
    Missing,
}

#[derive(Subcommand, Debug)]
pub enum FetchWhat {
    /// A Flatcar release: PXE kernel and initramfs, the disk image, signatures, version.txt
    /// and DIGESTS, from `[flatcar] release_base_url`.
    Flatcar {
        /// stable, beta, alpha or lts (default: [flatcar] channel).
        #[arg(long)]
        channel: Option<String>,
        /// A release (4459.2.1) or current.
        #[arg(long, default_value = "current")]
        version: String,
        /// amd64-usr or arm64-usr (default: [flatcar] board).
        #[arg(long)]
        board: Option<String>,
        /// Verify and keep it, but leave `current` where it is.
        #[arg(long)]
        no_switch: bool,
        /// Let `current` move to an older release than the one it points at.
        #[arg(long)]
        allow_downgrade: bool,
    },
    /// The Kubernetes systemd-sysext image the join installs on Flatcar nodes (from Flatcar's
    /// sysext-bakery, `[cluster] sysext_base_url`), checked against its SHA256SUMS.
    Kubernetes {
        /// A release like v1.37.2 (default: [cluster] kubernetes_version).
        #[arg(long)]
        version: Option<String>,
    },
}

pub fn run(args: &ClientArgs, command: MirrorCommand) -> ExitCode {
    let config = match client::load_config(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("lacave: {e}");
            return ExitCode::from(exit::CONFIG);
        }
    };
    match command {
        MirrorCommand::Fetch {
            what:
                FetchWhat::Flatcar {
                    channel,
                    version,
                    board,
                    no_switch,
                    allow_downgrade,
                },
        } => fetch_flatcar(
            &config,
            FlatcarArgs {
                channel,
                version,
                board,
                switch_current: !no_switch,
                allow_downgrade,
            },
        ),
        MirrorCommand::Fetch {
            what: FetchWhat::Kubernetes { version },
        } => fetch_kubernetes(&config, version),
        MirrorCommand::List => list(args, &config),
        MirrorCommand::Images { command } => images(&config, command),
        MirrorCommand::Prune { dry_run } => prune(&config, dry_run),
    }
}

/// The trusted key: the embedded Flatcar key, or `[flatcar] signing_key_file` (its primary
/// checked against `signing_key_fingerprint`, Flatcar's by default).
fn keyring(config: &Config) -> Result<Keyring, VerifyError> {
    let fingerprint = config
        .flatcar
        .signing_key_fingerprint
        .as_deref()
        .unwrap_or(FLATCAR_FINGERPRINT);
    match &config.flatcar.signing_key_file {
        None => Ok(Keyring::flatcar()),
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| VerifyError::Key(format!("cannot read {}: {e}", path.display())))?;
            Keyring::new(&text, fingerprint)
        }
    }
}

/// What `mirror fetch flatcar` was asked.
struct FlatcarArgs {
    channel: Option<String>,
    version: String,
    board: Option<String>,
    switch_current: bool,
    allow_downgrade: bool,
}

fn fetch_flatcar(config: &Config, args: FlatcarArgs) -> ExitCode {
    let FlatcarArgs {
        channel,
        version,
        board,
        switch_current,
        allow_downgrade,
    } = args;
    let keys = match keyring(config) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("lacave: {e}");
            return ExitCode::from(exit::CONFIG);
        }
    };
    let channel = channel.unwrap_or_else(|| config.flatcar.channel.clone());
    let request = FlatcarFetch {
        // The default URL follows the channel asked for.
        base_url: if config.flatcar.release_base_url
            == format!(
                "https://{}.release.flatcar-linux.net",
                config.flatcar.channel
            ) {
            format!("https://{channel}.release.flatcar-linux.net")
        } else {
            config.flatcar.release_base_url.clone()
        },
        channel,
        board: board.unwrap_or_else(|| config.flatcar.board.clone()),
        version,
        mirror_dir: config.flatcar.mirror_dir.clone(),
        stall: Duration::from_secs(u64::from(config.flatcar.fetch_stall_secs)),
        switch_current,
        allow_downgrade,
        redirect_hosts: config.flatcar.release_redirect_hosts.clone(),
        min_free: config.flatcar.fetch_min_free_mb << 20,
    };
    eprintln!(
        "fetching Flatcar {} {} {} from {} (trusting key {})",
        request.channel,
        request.board,
        request.version,
        request.base_url,
        keys.fingerprint()
    );
    let progress = Bar::new();
    match runtime().block_on(fetch::fetch_flatcar(&request, &keys, &progress)) {
        Ok(f) => {
            if f.already_held {
                println!(
                    "Flatcar {} is already held and verified in {}",
                    f.version,
                    f.dir.display()
                );
            } else {
                println!(
                    "Flatcar {} verified (signed by {}) into {} ({} downloaded)",
                    f.version,
                    f.signer,
                    f.dir.display(),
                    human(f.downloaded)
                );
            }
            if f.current_switched {
                println!("current → {}: nodes install it from now on", f.version);
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("lacave: {e}");
            eprintln!("lacave: nothing was switched: `current` still points where it did");
            ExitCode::from(exit_for(&e))
        }
    }
}

fn fetch_kubernetes(config: &Config, version: Option<String>) -> ExitCode {
    let version = version.unwrap_or_else(|| config.cluster.kubernetes_version.clone());
    let request = fetch::SysextFetch {
        base_url: config.cluster.sysext_base_url.clone(),
        image: crate::boot::kubernetes_sysext(&version, &config.flatcar.board),
        version,
        mirror_dir: config.flatcar.mirror_dir.clone(),
        stall: Duration::from_secs(u64::from(config.flatcar.fetch_stall_secs)),
        redirect_hosts: config.flatcar.release_redirect_hosts.clone(),
        min_free: config.flatcar.fetch_min_free_mb << 20,
    };
    if request.version != config.cluster.kubernetes_version {
        eprintln!(
            "note: [cluster] kubernetes_version is {}: nodes get that one, not {}",
            config.cluster.kubernetes_version, request.version
        );
    }
    let progress = Bar::new();
    match runtime().block_on(fetch::fetch_kubernetes(&request, &progress)) {
        Ok((path, _, true)) => {
            println!("{} is already held and checked", path.display());
            ExitCode::SUCCESS
        }
        Ok((path, bytes, false)) => {
            println!(
                "{} checked against SHA256SUMS ({} downloaded): the join installs it from the mirror",
                path.display(),
                human(bytes)
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("lacave: {e}");
            ExitCode::from(exit_for(&e))
        }
    }
}

fn images(config: &Config, command: ImagesCommand) -> ExitCode {
    let store = crate::images::ImageStore::new(&config.state_dir);
    match command {
        ImagesCommand::Add { files, name } => {
            for file in files {
                match store.import(&file, name.as_deref()) {
                    Ok(imported) => {
                        for i in imported {
                            println!("{} {} ({} new blobs)", i.name, i.digest, i.blobs_added);
                        }
                    }
                    Err(e) => {
                        eprintln!("lacave: {}: {e}", file.display());
                        return ExitCode::from(exit::DATA);
                    }
                }
            }
            ExitCode::SUCCESS
        }
        ImagesCommand::List => {
            let held = match store.list() {
                Ok(held) => held,
                Err(e) => {
                    eprintln!("lacave: {e}");
                    return ExitCode::from(exit::DATA);
                }
            };
            let rows: Vec<Vec<String>> = held
                .into_iter()
                .map(|(name, r)| {
                    // refs.json may predate the import's checks, or be edited by hand.
                    vec![
                        crate::images::escaped(&name),
                        crate::images::escaped(&r.digest),
                        crate::images::escaped(&r.media_type),
                    ]
                })
                .collect();
            if rows.is_empty() {
                println!("no image held: lacave mirror images add FILE.tar");
            } else {
                print!(
                    "{}",
                    super::output::table(&["IMAGE", "DIGEST", "TYPE"], &rows)
                );
            }
            ExitCode::SUCCESS
        }
        ImagesCommand::Missing => {
            let mut needed = match crate::addons::catalog::all_images() {
                Ok(n) => n,
                Err(e) => {
                    eprintln!("lacave: {e}");
                    return ExitCode::FAILURE;
                }
            };
            // The join's control-plane images follow [cluster] kubernetes_version (pause, etcd
            // and CoreDNS tags are kubeadm's own: `kubeadm config images list` on a node).
            let v = &config.cluster.kubernetes_version;
            for component in [
                "kube-apiserver",
                "kube-controller-manager",
                "kube-scheduler",
                "kube-proxy",
            ] {
                needed.push(("join".into(), format!("registry.k8s.io/{component}:{v}")));
            }
            let held: std::collections::BTreeSet<String> = match store.list() {
                Ok(held) => held.into_iter().map(|(n, _)| n).collect(),
                Err(e) => {
                    eprintln!("lacave: {e}");
                    return ExitCode::from(exit::DATA);
                }
            };
            let mut missing = 0;
            for (addon, image) in needed {
                let Some(full) =
                    crate::images::normalize(image.split('@').next().unwrap_or(&image))
                else {
                    continue;
                };
                if !held.contains(&full) {
                    missing += 1;
                    println!("{addon}\t{full}");
                }
            }
            if missing == 0 {
                note!("every image the add-ons need is held");
            }
            ExitCode::SUCCESS
        }
    }
}

/// 65 for content that failed its checks (retrying will not help: a bad signature, another
/// release's files, a file over its cap, a move of `current` backwards), 69 for a server that
/// could not be reached or stopped sending (the next run resumes), 73 when the mirror's disk
/// reached its reserve (free space, then resume), 1 for local I/O.
fn exit_for(e: &FetchError) -> u8 {
    match e {
        FetchError::Verify(_)
        | FetchError::Version(_)
        | FetchError::Rollback(_)
        | FetchError::Downgrade { .. }
        | FetchError::TooLarge { .. } => exit::DATA,
        FetchError::NoSpace { .. } => exit::CANT_CREATE,
        FetchError::Http { .. }
        | FetchError::Status { .. }
        | FetchError::Stalled { .. }
        | FetchError::Short { .. } => exit::UNAVAILABLE,
        FetchError::Io { .. } => 1,
    }
}

/// A progress bar on a terminal (rate and ETA), a log line per 10 % otherwise.
struct Bar {
    tty: bool,
    state: Mutex<BarState>,
}

struct BarState {
    file: String,
    total: Option<u64>,
    done: u64,
    started: Instant,
    resumed_from: u64,
    last_shown: Option<Instant>,
    last_tenth: u64,
}

impl Bar {
    fn new() -> Bar {
        Bar {
            tty: std::io::stderr().is_terminal(),
            state: Mutex::new(BarState {
                file: String::new(),
                total: None,
                done: 0,
                started: Instant::now(),
                resumed_from: 0,
                last_shown: None,
                last_tenth: 0,
            }),
        }
    }

    fn show(&self, s: &BarState, end: bool) {
        if super::quiet() {
            return;
        }
        let secs = s.started.elapsed().as_secs_f64().max(0.001);
        let rate = (s.done - s.resumed_from) as f64 / secs;
        if !self.tty {
            // Plain log lines for journals and CI logs.
            let of = s.total.map_or(String::new(), |t| {
                format!("{}% of {}, ", s.done * 100 / t.max(1), human(t))
            });
            eprintln!(
                "{}: {}{} at {}/s",
                s.file,
                of,
                human(s.done),
                human(rate as u64)
            );
            return;
        }
        let text = match s.total {
            Some(total) if total > 0 => {
                let pct = s.done * 100 / total;
                let eta = if rate > 0.0 {
                    format!("{:.0} s", (total - s.done.min(total)) as f64 / rate)
                } else {
                    "?".into()
                };
                let width = 30;
                let filled = (s.done * width / total) as usize;
                format!(
                    "{:<40} [{}{}] {pct:>3}% {}/{} {}/s ETA {eta}",
                    s.file,
                    "#".repeat(filled),
                    " ".repeat(width as usize - filled),
                    human(s.done),
                    human(total),
                    human(rate as u64)
                )
            }
            _ => format!("{:<40} {} {}/s", s.file, human(s.done), human(rate as u64)),
        };
        eprint!("\r{text}\x1b[K");
        if end {
            eprintln!();
        }
    }
}

impl Progress for Bar {
    fn start(&self, file: &str, total: Option<u64>, resumed_from: u64) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        *s = BarState {
            file: file.to_string(),
            total,
            done: resumed_from,
            started: Instant::now(),
            resumed_from,
            last_shown: None,
            last_tenth: 0,
        };
        if resumed_from > 0 {
            note!("{file}: resuming after {}", human(resumed_from));
        }
    }

    fn advance(&self, bytes: u64) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.done += bytes;
        let due = if self.tty {
            s.last_shown
                .is_none_or(|t| t.elapsed() >= Duration::from_millis(200))
        } else {
            let tenth = s.total.map_or(0, |t| s.done * 10 / t.max(1));
            let due = tenth > s.last_tenth;
            if due {
                s.last_tenth = tenth;
            }
            due
        };
        if due {
            s.last_shown = Some(Instant::now());
            self.show(&s, false);
        }
    }

    fn finish(&self) {
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        self.show(&s, true);
    }
}

fn human(bytes: u64) -> String {
    const UNITS: &[&str] = &["B", "KB", "MB", "GB", "TB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1000.0 && unit + 1 < UNITS.len() {
        v /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

fn dir_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// (channel, board, board directory) of every board directory in the mirror.
fn boards(mirror: &Path) -> Vec<(String, String, PathBuf)> {
    let mut out = Vec::new();
    let Ok(channels) = std::fs::read_dir(mirror) else {
        return out;
    };
    // `kubernetes/` holds sysext images, not boards.
    for channel in channels
        .flatten()
        .filter(|e| e.path().is_dir() && e.file_name() != "kubernetes")
    {
        let Ok(boards) = std::fs::read_dir(channel.path()) else {
            continue;
        };
        for board in boards.flatten().filter(|e| e.path().is_dir()) {
            out.push((
                channel.file_name().to_string_lossy().into_owned(),
                board.file_name().to_string_lossy().into_owned(),
                board.path(),
            ));
        }
    }
    out.sort();
    out
}

/// The releases of a board directory, and incoming (partial) ones, by name.
fn releases(board: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(board)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.path().is_dir() && !e.path().is_symlink())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// The release nodes of this configuration get, if this is their board directory.
fn in_use(config: &Config, channel: &str, board: &str, dir: &Path) -> Option<String> {
    if channel != config.flatcar.channel || board != config.flatcar.board {
        return None;
    }
    if config.flatcar.version == "current" {
        std::fs::read_link(dir.join("current"))
            .ok()
            .map(|t| t.to_string_lossy().into_owned())
    } else {
        Some(config.flatcar.version.clone())
    }
}

fn list(args: &ClientArgs, config: &Config) -> ExitCode {
    let nodes = runtime()
        .block_on(async {
            let client = client::Client::new(client::Target::resolve(args)?)?;
            client.list_nodes().await
        })
        .map(|n| {
            let count = n.iter().filter(|n| n.state != "discovered").count();
            format!("used by {count} nodes")
        })
        .unwrap_or_else(|_| "used by the nodes (how many: daemon not reachable)".into());
    let mut rows = Vec::new();
    for (channel, board, dir) in boards(&config.flatcar.mirror_dir) {
        let current = std::fs::read_link(dir.join("current"))
            .ok()
            .map(|t| t.to_string_lossy().into_owned());
        let used = in_use(config, &channel, &board, &dir);
        for name in releases(&dir) {
            let path = dir.join(&name);
            let (release, status) = match name.strip_prefix(".incoming-") {
                Some(v) => (v.to_string(), "partial: fetch again to resume".to_string()),
                None => match fetch::read_verified(&path) {
                    Some(v) => {
                        let signed = v
                            .signed()
                            .and_then(|t| time::OffsetDateTime::from_unix_timestamp(t as i64).ok())
                            .and_then(|t| {
                                t.format(&time::format_description::well_known::Rfc3339)
                                    .ok()
                            })
                            .map(|t| format!(", signed {t}"))
                            .unwrap_or_default();
                        (
                            name.clone(),
                            format!("verified {} by {}{signed}", v.verified_at, short(&v.signer)),
                        )
                    }
                    None => (name.clone(), "NOT VERIFIED (copied by hand?)".to_string()),
                },
            };
            let mut marks = Vec::new();
            if current.as_deref() == Some(name.as_str()) {
                marks.push("current".to_string());
            }
            if used.as_deref() == Some(name.as_str()) {
                marks.push(nodes.clone());
            }
            rows.push(vec![
                format!("{channel}/{board}"),
                release,
                human(dir_size(&path)),
                status,
                if marks.is_empty() {
                    "-".into()
                } else {
                    marks.join(", ")
                },
            ]);
        }
    }
    let sysexts = config.flatcar.mirror_dir.join("kubernetes");
    let wanted =
        crate::boot::kubernetes_sysext(&config.cluster.kubernetes_version, &config.flatcar.board);
    let mut images: Vec<String> = std::fs::read_dir(&sysexts)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".raw"))
                .collect()
        })
        .unwrap_or_default();
    images.sort();
    for name in images {
        let path = sysexts.join(&name);
        let size = std::fs::metadata(&path).map_or(0, |m| m.len());
        let (image, status) = match name.strip_prefix(".incoming-") {
            Some(n) => (n.to_string(), "partial: fetch again to resume".to_string()),
            None if sysexts.join(format!("{name}.sha256")).exists() => {
                (name.clone(), "SHA-256 checked".to_string())
            }
            None => (name.clone(), "NOT CHECKED (copied by hand?)".to_string()),
        };
        let used = if image == wanted && config.cluster.enabled {
            nodes.clone()
        } else {
            "-".into()
        };
        rows.push(vec![
            "kubernetes sysext".into(),
            image,
            human(size),
            status,
            used,
        ]);
    }
    if rows.is_empty() {
        println!(
            "the mirror {} holds no release: lacave mirror fetch flatcar",
            config.flatcar.mirror_dir.display()
        );
    } else {
        print!(
            "{}",
            super::output::table(
                &["BOARD", "RELEASE", "SIZE", "VERIFICATION", "IN USE"],
                &rows
            )
        );
    }
    ExitCode::SUCCESS
}

fn short(fingerprint: &str) -> &str {
    &fingerprint[fingerprint.len().saturating_sub(16)..]
}

fn prune(config: &Config, dry_run: bool) -> ExitCode {
    let mut removed = 0;
    for (channel, board, dir) in boards(&config.flatcar.mirror_dir) {
        let current = std::fs::read_link(dir.join("current"))
            .ok()
            .map(|t| t.to_string_lossy().into_owned());
        let used = in_use(config, &channel, &board, &dir);
        for name in releases(&dir) {
            if name.starts_with(".incoming-")
                || current.as_deref() == Some(name.as_str())
                || used.as_deref() == Some(name.as_str())
            {
                continue;
            }
            let path = dir.join(&name);
            if dry_run {
                println!(
                    "would remove {} ({})",
                    path.display(),
                    human(dir_size(&path))
                );
                continue;
            }
            match std::fs::remove_dir_all(&path) {
                Ok(()) => {
                    removed += 1;
                    println!("removed {}", path.display());
                }
                Err(e) => {
                    eprintln!("lacave: cannot remove {}: {e}", path.display());
                    return ExitCode::FAILURE;
                }
            }
        }
    }
    if !dry_run {
        println!("{removed} releases removed");
    }
    ExitCode::SUCCESS
}

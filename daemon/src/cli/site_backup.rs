//! `lacave backup --site -o FILE`: a site's whole state in one tar file, on the provisioning
//! host (it reads the state directory: run it as the daemon's user or root):
//!
//! - `registry.backup`: the registry, taken through the API now (as `lacave backup`);
//! - `etcd/<snapshot>.db` and its manifest: an etcd snapshot taken now (the newest one held
//!   when etcd does not answer), when the daemon builds a cluster;
//! - `state/…`: the state directory's files (API token, lacave PKI, cluster PKI and
//!   kubeconfigs, SSH key, the nodes' BMC credentials — MANIFEST.txt says whether there are
//!   any), without the live registry database (in `registry.backup`), the
//!   image mirror and imported images (fetched again), and the other snapshots;
//! - `MANIFEST.txt`: what it holds, what it does not, and how to put each back.
//!
//! Written whole, 0600 (it holds every key of the site), then renamed: an interrupted backup
//! leaves no file that looks complete.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::ClientArgs;
use super::client::{Client, ClientError, Target};

/// State-directory entries a site backup leaves out, with why.
const LEFT_OUT: [(&str, &str); 4] = [
    (
        "registry",
        "the live registry database: registry.backup holds it, taken through the API",
    ),
    (
        "mirror",
        "the Flatcar and Kubernetes mirror: fetched again with lacave mirror fetch",
    ),
    ("images", "imported images: imported again from their files"),
    (
        "etcd-snapshots",
        "older etcd snapshots: the one in etcd/ is the newest",
    ),
];

pub(super) async fn site_backup(args: &ClientArgs, output: &Path) -> Result<(), ClientError> {
    let config = super::client::load_config(args)?;
    let api = Client::new(Target::resolve(args)?)?;
    let state_dir = config.state_dir.clone();
    if !state_dir.is_dir() {
        return Err(ClientError::Config(format!(
            "the state directory {} is not here: run lacave backup --site on the provisioning host, with its --config",
            state_dir.display()
        )));
    }
    let registry = api.backup().await?;
    let mut notes = Vec::new();
    let snapshot = if config.cluster.enabled {
        match api.cluster_save_snapshot().await {
            Ok(info) => Some(info),
            Err(error) => {
                let latest = api
                    .cluster_snapshots()
                    .await
                    .ok()
                    .and_then(|l| l.snapshots.into_iter().next());
                notes.push(format!(
                    "etcd did not give a snapshot now ({error}); {}",
                    latest.as_ref().map_or(
                        "and the daemon holds none: etcd is NOT in this backup".to_string(),
                        |l| format!(
                            "the newest one held ({}, {}) is in etcd/",
                            l.name, l.taken_at
                        )
                    )
                ));
                latest
            }
        }
    } else {
        None
    };
    let snapshot_dir = config
        .cluster
        .etcd_snapshot
        .dir
        .clone()
        .unwrap_or_else(|| state_dir.join("etcd-snapshots"));

    let tmp = output.with_extension(format!("tmp-{}", std::process::id()));
    let write_err = |e: std::io::Error| ClientError::Config(format!("{}: {e}", tmp.display()));
    let result = (|| -> Result<Vec<String>, ClientError> {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(write_err)?;
        // The backup may be written into the state directory itself: it must not take itself
        // in (a file growing as it is read).
        // Nor an earlier backup at the same path.
        let mut own = vec![std::fs::canonicalize(&tmp).map_err(write_err)?];
        own.extend(std::fs::canonicalize(output).ok());
        let mut tar = tar::Builder::new(std::io::BufWriter::new(file));
        tar.follow_symlinks(false);
        let mut held = vec![format!(
            "registry.backup   the registry ({} bytes): lacave restore registry.backup, the daemon stopped",
            registry.len()
        )];
        append_bytes(&mut tar, "registry.backup", &registry).map_err(write_err)?;
        if let Some(info) = &snapshot {
            let path = snapshot_dir.join(&info.name);
            tar.append_path_with_name(&path, format!("etcd/{}", info.name))
                .map_err(|e| ClientError::Config(format!("{}: {e}", path.display())))?;
            let manifest = serde_json::to_vec_pretty(info).expect("a manifest serializes");
            append_bytes(&mut tar, &format!("etcd/{}.json", info.name), &manifest)
                .map_err(write_err)?;
            held.push(format!(
                "etcd/{}   the cluster's etcd at revision {} ({} bytes, SHA-256 {}): copy it into the daemon's snapshot directory, then lacave cluster snapshot restore {} --yes",
                info.name, info.revision, info.size, info.sha256, info.name
            ));
        }
        let mut files = 0;
        for entry in std::fs::read_dir(&state_dir)
            .map_err(|e| ClientError::Config(format!("{}: {e}", state_dir.display())))?
            .flatten()
        {
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            if LEFT_OUT.iter().any(|(n, _)| *n == name) || path == snapshot_dir {
                continue;
            }
            files += append_tree(&mut tar, &path, &format!("state/{name}"), &own)?;
        }
        held.push(format!(
            "state/   {files} files of the state directory {} (API token, PKI, cluster PKI and kubeconfigs, SSH key): copied back into it, the daemon stopped",
            state_dir.display()
        ));
        // Say whether the BMCs' passwords are in it: they are secrets of other machines.
        let bmcs = std::fs::read_dir(state_dir.join("bmc"))
            .map(|d| {
                d.flatten()
                    .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
                    .count()
            })
            .unwrap_or(0);
        held.push(if bmcs > 0 {
            format!(
                "state/bmc/   {bmcs} nodes' BMC addresses WITH their user names and passwords (lacave node bmc): keep this file as secret as the BMCs"
            )
        } else {
            "state/bmc/   no BMC credentials (no node has a BMC)".to_string()
        });
        let mut manifest = format!(
            "lacave site backup, {}\n\nHolds:\n",
            time::OffsetDateTime::now_utc()
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default()
        );
        for line in &held {
            manifest.push_str(&format!("  {line}\n"));
        }
        manifest.push_str("\nDoes not hold:\n");
        for (name, why) in LEFT_OUT {
            manifest.push_str(&format!("  {name}/   {why}\n"));
        }
        if !config.cluster.enabled {
            manifest
                .push_str("  etcd   the daemon builds no cluster ([cluster] enabled = false)\n");
        }
        for note in &notes {
            manifest.push_str(&format!("\nNote: {note}\n"));
        }
        append_bytes(&mut tar, "MANIFEST.txt", manifest.as_bytes()).map_err(write_err)?;
        let mut out = tar.into_inner().map_err(write_err)?;
        out.flush().map_err(write_err)?;
        out.into_inner()
            .map_err(|e| write_err(e.into_error()))?
            .sync_all()
            .map_err(write_err)?;
        Ok(held)
    })();
    let held = match result {
        Ok(held) => held,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    std::fs::rename(&tmp, output)
        .map_err(|e| ClientError::Config(format!("{}: {e}", output.display())))?;
    println!("site backed up to {}:", output.display());
    for line in held {
        println!("  {line}");
    }
    println!(
        "not in it (see MANIFEST.txt): the image mirror and imported images, older etcd snapshots"
    );
    for note in notes {
        eprintln!("lacave: {note}");
    }
    Ok(())
}

fn append_bytes<W: Write>(
    tar: &mut tar::Builder<W>,
    name: &str,
    bytes: &[u8],
) -> std::io::Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_size(bytes.len() as u64);
    header.set_mode(0o600);
    header.set_mtime(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    );
    header.set_cksum();
    tar.append_data(&mut header, name, bytes)
}

/// Adds a file or a directory's tree (symbolic links as links); returns how many files.
fn append_tree<W: Write>(
    tar: &mut tar::Builder<W>,
    path: &Path,
    name: &str,
    own: &[PathBuf],
) -> Result<usize, ClientError> {
    let err = |p: &Path, e: std::io::Error| ClientError::Config(format!("{}: {e}", p.display()));
    let meta = std::fs::symlink_metadata(path).map_err(|e| err(path, e))?;
    if meta.is_dir() {
        let mut n = 0;
        let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|e| err(path, e))?
            .flatten()
            .map(|e| e.path())
            .collect();
        entries.sort();
        for child in entries {
            let child_name = format!(
                "{name}/{}",
                child.file_name().unwrap_or_default().to_string_lossy()
            );
            n += append_tree(tar, &child, &child_name, own)?;
        }
        Ok(n)
    } else if meta.is_file() && std::fs::canonicalize(path).is_ok_and(|p| own.contains(&p)) {
        Ok(0) // the backup being written, or the one it replaces
    } else if meta.is_file() || meta.is_symlink() {
        tar.append_path_with_name(path, name)
            .map_err(|e| err(path, e))?;
        Ok(1)
    } else {
        Ok(0) // sockets, fifos: nothing to keep
    }
}

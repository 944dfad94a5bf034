//! `lacave restore` against hostile backups (issue #31, item 9), with the real binary: valid
//! checksums over records the daemon would never have written (a 1-byte node key, an
//! undecodable event, labels and text the API refuses, an event of no node, an unknown tree),
//! and a file of hundreds of megabytes. Each is refused with exit 65 (never a panic's 101),
//! leaves no `registry.restoring` behind and the current registry as it was; the large one is
//! streamed in bounded memory.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use base64::Engine;
use lacave::model::{EventKind, NewNode, NodeKey, Role};
use lacave::store::Store;
use lacave_integration_tests::lacave_bin;
use sha2::Digest;

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn node(n: u8) -> NewNode {
    NewNode {
        mac: format!("52:54:00:00:00:{n:02x}").parse().unwrap(),
        hostname: format!("kube{n:02}").parse().unwrap(),
        ip: format!("10.0.0.{n}").parse().unwrap(),
        role: Role::Worker,
        labels: Default::default(),
        install_disk: None,
        boot_file: None,
    }
}

/// A backup of a registry with three nodes, as JSON.
fn sound_backup() -> serde_json::Value {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("registry")).unwrap();
    for n in 1..=3 {
        store.create_node(&node(n)).unwrap();
    }
    serde_json::from_slice(&store.backup().unwrap()).unwrap()
}

/// The backup with its checksum made right again after an edit (what an attacker who can
/// write the file does).
fn resealed(mut backup: serde_json::Value) -> Vec<u8> {
    let canonical = serde_json::to_vec(&backup["trees"]).unwrap();
    let sum: String = sha2::Sha256::digest(&canonical)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    backup["sha256"] = sum.into();
    serde_json::to_vec(&backup).unwrap()
}

fn with_record(tree: &str, key: &[u8], value: &[u8]) -> Vec<u8> {
    let mut backup = sound_backup();
    backup["trees"][tree]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!([b64(key), b64(value)]));
    resealed(backup)
}

/// A node record of the backup, edited.
fn with_node_edit(edit: impl Fn(&mut serde_json::Value)) -> Vec<u8> {
    let mut backup = sound_backup();
    let entry = &mut backup["trees"]["nodes"][0];
    let raw = base64::engine::general_purpose::STANDARD
        .decode(entry[1].as_str().unwrap())
        .unwrap();
    let mut record: serde_json::Value = serde_json::from_slice(&raw).unwrap();
    edit(&mut record);
    entry[1] = b64(&serde_json::to_vec(&record).unwrap()).into();
    resealed(backup)
}

struct Site {
    state: tempfile::TempDir,
    config: PathBuf,
}

impl Site {
    /// A state directory whose registry holds one node, `keep01`.
    fn new() -> Site {
        let state = tempfile::tempdir().unwrap();
        let config = state.path().with_extension("toml");
        std::fs::write(
            &config,
            format!("state_dir = \"{}\"\n", state.path().display()),
        )
        .unwrap();
        let store = Store::open(&state.path().join("registry")).unwrap();
        let mut keep = node(200);
        keep.hostname = "keep01".parse().unwrap();
        store.create_node(&keep).unwrap();
        Site { state, config }
    }

    fn restore(&self, file: &Path) -> (Output, u64) {
        let out = Command::new("/usr/bin/time")
            .args(["-f", "maxrss=%M"])
            .arg(lacave_bin())
            .arg("restore")
            .arg(file)
            .arg("--config")
            .arg(&self.config)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let kib = stderr
            .lines()
            .find_map(|l| l.strip_prefix("maxrss="))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        (out, kib)
    }

    fn hostnames(&self) -> Vec<String> {
        let store = Store::open(&self.state.path().join("registry")).unwrap();
        let mut names: Vec<String> = store
            .list_nodes()
            .unwrap()
            .into_iter()
            .filter_map(|n| n.hostname.map(|h| h.to_string()))
            .collect();
        names.sort();
        names
    }

    /// Refused as bad data, saying `says`, with nothing changed or left behind.
    fn refused(&self, name: &str, bytes: &[u8], says: &str) {
        let file = self.state.path().with_extension(format!("{name}.json"));
        std::fs::write(&file, bytes).unwrap();
        let (out, _) = self.restore(&file);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(65), "{name}: {stderr}");
        assert!(
            stderr.contains(says),
            "{name}: {stderr:?} should say {says:?}"
        );
        assert!(
            !self.state.path().join("registry.restoring").exists(),
            "{name}: the temporary registry was left behind"
        );
        assert_eq!(self.hostnames(), ["keep01"], "{name}: the registry changed");
    }
}

#[test]
fn hostile_backups_are_refused_cleanly() {
    let site = Site::new();
    // A sound backup restores (and replaces the registry).
    let sound = serde_json::to_vec(&sound_backup()).unwrap();

    site.refused("one-byte-key", &with_record("nodes", &[7], b"{}"), "not 8");
    site.refused(
        "undecodable-event",
        &with_record(
            "events",
            &[[0u8; 7].as_slice(), &[1], &[0, 0, 0, 0, 0, 0, 0, 9]].concat(),
            b"not an event",
        ),
        "event record",
    );
    site.refused(
        "label",
        &with_node_edit(|r| r["labels"] = serde_json::json!({"bad key!": "x"})),
        "label",
    );
    site.refused(
        "escape-in-failure",
        &with_node_edit(|r| {
            r["state"] = "failed".into();
            r["failure"] =
                serde_json::json!({"phase": "join", "reason": "\u{1b}[2J\u{1b}]0;pwned\u{7}"});
        }),
        "control characters",
    );
    site.refused(
        "host-key",
        &with_node_edit(|r| r["ssh_host_key"] = "ssh-ed25519 AAAA\nssh-rsa BBBB".into()),
        "SSH host key",
    );
    // An event of a node the backup does not hold (its history would be unreachable).
    let event = serde_json::json!({
        "seq": 77, "at": "2026-12-07T00:00:00Z", "kind": "updated", "fields": [], "message": "x"
    });
    let orphan = with_record(
        "events",
        &[
            [0u8, 0, 0, 0, 0, 0, 0x12, 0x34].as_slice(),
            &77u64.to_be_bytes(),
        ]
        .concat(),
        &serde_json::to_vec(&event).unwrap(),
    );
    site.refused("orphan-event", &orphan, "which the backup does not hold");
    let mut unknown = sound_backup();
    unknown["trees"]["zzz"] = serde_json::json!([]);
    site.refused("unknown-tree", &resealed(unknown), "tree");
    let mut edited = sound_backup();
    edited["created_at"] = "later".into();
    let mut bytes = serde_json::to_vec(&edited).unwrap();
    // A byte of a record flipped, checksum left as it was.
    let at = bytes.len() / 2;
    bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
    site.refused("flipped", &bytes, "");
    site.refused("truncated", &sound[..sound.len() / 2], "truncated");

    // The sound one restores.
    let file = site.state.path().with_extension("sound.json");
    std::fs::write(&file, &sound).unwrap();
    let (out, _) = site.restore(&file);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(site.hostnames(), ["kube01", "kube02", "kube03"]);
}

/// A 270 MB backup (2,700 events of 75 KiB) is streamed: the restore's memory stays far
/// below the file's size (1.78 GB for 423 MB before), whether it is refused at its end (a
/// wrong checksum) or restored.
#[test]
fn a_large_backup_is_restored_in_bounded_memory() {
    let work = tempfile::tempdir().unwrap();
    let registry = work.path().join("registry");
    {
        let store = Store::open(&registry).unwrap();
        store.create_node(&node(1)).unwrap();
        let key = [NodeKey::Hostname("kube01".parse().unwrap())];
        let text = "step output ".repeat((75 << 10) / 12);
        for i in 0..2700 {
            store
                .record_event(
                    &key,
                    EventKind::Updated { fields: vec![] },
                    format!("{i}: {text}"),
                )
                .unwrap();
        }
        let bytes = store.backup().unwrap();
        std::fs::write(work.path().join("big.json"), &bytes).unwrap();
        let mut wrong = bytes;
        let n = wrong.len();
        // The checksum's last hex digit changed: refused only once everything was read.
        let pos = n - 3;
        wrong[pos] = if wrong[pos] == b'0' { b'1' } else { b'0' };
        std::fs::File::create(work.path().join("big-wrong.json"))
            .unwrap()
            .write_all(&wrong)
            .unwrap();
    }
    let size = std::fs::metadata(work.path().join("big.json"))
        .unwrap()
        .len();
    assert!(size > 250 << 20, "{size} bytes");

    let site = Site::new();
    let (out, rss) = site.restore(&work.path().join("big-wrong.json"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(65), "{stderr}");
    assert!(stderr.contains("checksum"), "{stderr}");
    assert!(!site.state.path().join("registry.restoring").exists());
    assert_eq!(site.hostnames(), ["keep01"]);
    eprintln!(
        "refused {} MB at its end with {} MiB of memory",
        size >> 20,
        rss >> 10
    );
    assert!(rss < 200 << 10, "{rss} KiB for a {size}-byte file");

    let (out, rss) = site.restore(&work.path().join("big.json"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!(
        "restored {} MB with {} MiB of memory",
        size >> 20,
        rss >> 10
    );
    assert!(rss < 200 << 10, "{rss} KiB for a {size}-byte file");
    assert_eq!(site.hostnames(), ["kube01"]);
}

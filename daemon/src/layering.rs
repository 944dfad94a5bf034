//! The layering rule of ARCHITECTURE.md, checked over the source: every `crate::` path of every
//! module points at a module below it. A new module must be given a layer here, and an import
//! that points up (storage reaching into a protocol module, a domain type taking an HTTP type)
//! fails this test with the file, the line and the rule it breaks.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The layers, lowest first. A module may use modules of lower layers only, plus the sideways
/// uses of [`SIDEWAYS`]. `settings` stands for every service's `settings` module (`dhcp/settings.rs`,
/// …): a section's file format, settings type and checks, which `config` assembles.
const LAYERS: &[&[&str]] = &[
    &["model"],
    &["settings"],
    &[
        "config", "store", "secrets", "metrics", "systemd", "conns", "tls",
    ],
    &[
        "pki", "tftp", "dhcp", "dns", "boot", "mirror", "cluster", "release", "images", "power",
        "identity", "updates",
    ],
    &["addons"],
    &["http", "api"],
    &["server"],
    &["cli", "lib", "main", "layering"],
];

/// Uses within one layer that are allowed (there is no cycle among them).
const SIDEWAYS: &[(&str, &str)] = &[
    // `[dhcp]` defaults its domain to the DNS zone; `[flatcar]` its node network to `[dhcp]`.
    ("settings", "settings"),
    // Mirror paths are resolved with TFTP's rule; the mirror listener parses `Range` as boot does.
    ("boot", "tftp"),
    ("mirror", "boot"),
    // The mirror listener serves the image store's blobs too.
    ("mirror", "images"),
    // The join renders its kubeadm configurations with the boot flow's templates.
    ("cluster", "boot"),
    // The cluster's CAs take their serials by the same rule as the lacave CA's.
    ("cluster", "pki"),
    // The Omaha answers offer the mirror's verified release, at the mirror's URL.
    ("updates", "release"),
    ("updates", "boot"),
    // Connections are served with the API's peer address attached.
    ("http", "api"),
    // Connection slots count what they drop.
    ("conns", "metrics"),
    // `lacave serve` runs the library's `run_serve`.
    ("cli", "lib"),
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&module))
}

/// The module a source file belongs to: its top-level module, or `settings` for a service's
/// settings module.
fn module_of(relative: &Path) -> String {
    let parts: Vec<String> = relative
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    if parts.len() == 2 && parts[1] == "settings" {
        return "settings".into();
    }
    parts[0].clone()
}

/// The module a `crate::a::b` path names: `a`, `settings` when `b` is `settings`, or `lib`
/// for an item of the crate root (`crate::run_serve`).
fn target_of(path: &str, root_items: &BTreeSet<String>) -> String {
    let mut segments = path.split("::");
    let first = segments.next().unwrap_or_default().to_string();
    match segments.next() {
        Some("settings") => "settings".into(),
        _ if root_items.contains(&first) => "lib".into(),
        _ => first,
    }
}

/// The functions, types and constants `lib.rs` defines itself.
fn root_items(src: &Path) -> BTreeSet<String> {
    let lib = std::fs::read_to_string(src.join("lib.rs")).unwrap_or_default();
    lib.lines()
        .filter_map(|l| {
            let l = l
                .trim_start()
                .strip_prefix("pub ")
                .unwrap_or(l.trim_start());
            let rest = ["fn ", "struct ", "enum ", "const ", "static "]
                .iter()
                .find_map(|k| l.strip_prefix(k))?;
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            Some(name)
        })
        .collect()
}

/// Every `crate::` path in `code` (comments left out), with its line number. A grouped
/// `use crate::{a::x, b};` yields `a::x` and `b`.
fn crate_paths(code: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    let mut group: Option<(usize, String)> = None;
    for (n, line) in code.lines().enumerate() {
        let line = match line.find("//") {
            Some(i) => &line[..i],
            None => line,
        };
        if let Some((start, text)) = group.as_mut() {
            text.push_str(line);
            if line.contains("};") {
                let (start, text) = (*start, std::mem::take(text));
                group = None;
                found.extend(group_paths(&text).into_iter().map(|p| (start, p)));
            }
            continue;
        }
        if let Some(i) = line.find("use crate::{") {
            let rest = &line[i + "use crate::{".len()..];
            if rest.contains("};") {
                found.extend(group_paths(rest).into_iter().map(|p| (n + 1, p)));
            } else {
                group = Some((n + 1, rest.to_string()));
            }
            continue;
        }
        let mut rest = line;
        while let Some(i) = rest.find("crate::") {
            let after = &rest[i + "crate::".len()..];
            let end = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or(after.len());
            found.push((n + 1, after[..end].to_string()));
            rest = &after[end..];
        }
    }
    found
}

/// The top-level paths of a `use crate::{…}` group (nested braces kept with their prefix).
fn group_paths(text: &str) -> Vec<String> {
    let body = text.split("};").next().unwrap_or_default();
    let mut paths = Vec::new();
    let (mut depth, mut current) = (0, String::new());
    for c in body.chars() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                paths.push(std::mem::take(&mut current));
                continue;
            }
            _ => {}
        }
        current.push(c);
    }
    paths.push(current);
    paths
        .into_iter()
        .map(|p| p.split_whitespace().collect::<String>())
        .filter(|p| !p.is_empty())
        .collect()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("the source directory is readable") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Every use that breaks the rule, as `file:line: message`.
fn violations(src: &Path) -> Vec<String> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    files.sort();
    let root = root_items(src);
    let mut problems = Vec::new();
    for file in files {
        let relative = file.strip_prefix(src).expect("under src");
        let module = module_of(relative);
        let shown = relative.display();
        let Some(own) = layer_of(&module) else {
            problems.push(format!(
                "{shown}: module `{module}` has no layer: add it to LAYERS in layering.rs and to ARCHITECTURE.md"
            ));
            continue;
        };
        if module == "layering" {
            continue; // this checker, whose strings spell paths
        }
        let code = std::fs::read_to_string(&file).expect("a readable source file");
        if module == "settings" && code.lines().any(|l| l.contains("super::")) {
            problems.push(format!(
                "{shown}: a settings module names other modules by `crate::` paths, not `super::`"
            ));
        }
        let mut seen = BTreeSet::new();
        for (line, path) in crate_paths(&code) {
            let target = target_of(&path, &root);
            if target == module && module != "settings" || !seen.insert((target.clone(), line)) {
                continue;
            }
            let Some(theirs) = layer_of(&target) else {
                problems.push(format!(
                    "{shown}:{line}: `crate::{path}` names an unknown module"
                ));
                continue;
            };
            let sideways = theirs == own && SIDEWAYS.contains(&(module.as_str(), target.as_str()));
            if theirs > own || (theirs == own && !sideways) {
                problems.push(format!(
                    "{shown}:{line}: `{module}` uses `crate::{path}`, which is not below it (see the layers in ARCHITECTURE.md)"
                ));
            }
        }
    }
    problems
}

#[test]
fn every_import_points_down() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let problems = violations(&src);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn an_upward_import_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    let write = |path: &str, text: &str| {
        let file = dir.path().join(path);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(file, text).unwrap();
    };
    write("model/mod.rs", "// crate::api is only named in a comment\n");
    write(
        "store/mod.rs",
        "use crate::model::Node;\nuse crate::{\n    dhcp::Lease,\n    model::Event,\n};\n",
    );
    write(
        "dns/records.rs",
        "fn f() -> crate::api::FieldError { todo!() }\n",
    );
    write("dhcp/settings.rs", "use crate::dns::settings::DnsConfig;\n");
    write(
        "config.rs",
        "use crate::dhcp::settings::RawDhcp;\nuse crate::secrets::Token;\n",
    );
    write("kube.rs", "");
    write("lib.rs", "pub fn run_serve() {}\n");
    write("cli/mod.rs", "fn f() { crate::run_serve() }\n");
    let problems = violations(dir.path());
    let expected = [
        "config.rs:2: `config` uses `crate::secrets::Token`",
        "dns/records.rs:1: `dns` uses `crate::api::FieldError`",
        "kube.rs: module `kube` has no layer",
        "store/mod.rs:2: `store` uses `crate::dhcp::Lease`",
    ];
    assert_eq!(problems.len(), expected.len(), "{problems:#?}");
    for (problem, start) in problems.iter().zip(expected) {
        assert!(
            problem.starts_with(start),
            "{problem} should start with {start}"
        );
    }
}

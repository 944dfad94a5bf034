//! The documentation (`docs/`, an mdBook) against the code: the book builds with the real
//! mdBook (pinned, from crates.io, cached by `scripts/prereqs.sh`: `$LACAVE_MDBOOK`) and every
//! internal link and anchor of the built HTML resolves; the quick start's commands run as
//! written against a daemon; every `lacave` command the docs and README name exists; every
//! API error code the daemon can answer is explained in Troubleshooting; the flow picture is
//! what its source draws; the README stays a front page.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;

use lacave_integration_tests::{DaemonProcess, lacave_bin};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn mdbook() -> PathBuf {
    if let Ok(bin) = std::env::var("LACAVE_MDBOOK") {
        return PathBuf::from(bin);
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/var/cache/lacave-tests")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin/mdbook"))
        .filter(|p| p.exists())
        .collect();
    found.sort();
    found
        .pop()
        .expect("no mdbook: run scripts/test (scripts/prereqs.sh ensure_mdbook installs it)")
}

/// The chapters and the README: every Markdown file a reader sees.
fn markdown_files() -> Vec<PathBuf> {
    let mut files = vec![repo().join("README.md")];
    let mut dirs = vec![repo().join("docs/src")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "md") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// `href="…"` and `src="…"` values of an HTML page.
fn links(html: &str) -> Vec<String> {
    let mut out = Vec::new();
    for attr in ["href=\"", "src=\""] {
        let mut rest = html;
        while let Some(i) = rest.find(attr) {
            rest = &rest[i + attr.len()..];
            if let Some(end) = rest.find('"') {
                out.push(rest[..end].to_string());
            }
        }
    }
    out
}

fn ids(html: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = html;
    while let Some(i) = rest.find(" id=\"") {
        rest = &rest[i + 5..];
        if let Some(end) = rest.find('"') {
            out.insert(rest[..end].to_string());
        }
    }
    out
}

#[test]
fn the_book_builds_and_every_internal_link_resolves() {
    let out_dir = tempfile::tempdir().unwrap();
    let built = Command::new(mdbook())
        .arg("build")
        .arg(repo().join("docs"))
        .arg("--dest-dir")
        .arg(out_dir.path())
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&built.stderr);
    assert!(built.status.success(), "mdbook build failed:\n{log}");
    assert!(
        !log.contains("WARN") && !log.contains("ERROR"),
        "mdbook warned:\n{log}"
    );

    let mut pages: HashMap<PathBuf, String> = HashMap::new();
    let mut dirs = vec![out_dir.path().to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "html") {
                pages.insert(path.clone(), read(&path));
            }
        }
    }
    for chapter in [
        "quick-start.html",
        "reference/configuration.html",
        "troubleshooting.html",
    ] {
        assert!(
            pages.contains_key(&out_dir.path().join(chapter)),
            "{chapter} not built"
        );
    }
    let mut broken = Vec::new();
    let mut checked = 0;
    for (page, html) in &pages {
        if page.ends_with("print.html") || page.ends_with("404.html") {
            continue; // mdBook's own: every chapter on one page, and a page with a base href
        }
        for link in links(html) {
            if link.contains("://") || link.starts_with("mailto:") || link.starts_with("data:") {
                continue;
            }
            let (file, fragment) = match link.split_once('#') {
                Some((f, frag)) => (f, Some(frag)),
                None => (link.as_str(), None),
            };
            let target = if file.is_empty() {
                page.clone()
            } else {
                page.parent().unwrap().join(file.split('?').next().unwrap())
            };
            let target = if target.is_dir() {
                target.join("index.html")
            } else {
                target
            };
            checked += 1;
            if !target.exists() {
                broken.push(format!("{}: {link} (no such file)", page.display()));
                continue;
            }
            if let Some(fragment) = fragment.filter(|f| !f.is_empty()) {
                let html = pages.get(&target).cloned().unwrap_or_else(|| read(&target));
                if !ids(&html).contains(fragment) {
                    broken.push(format!("{}: {link} (no such anchor)", page.display()));
                }
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
    assert!(checked > 100, "{checked} links checked");

    // The README's relative links point at files of the repository.
    let readme = read(&repo().join("README.md"));
    let mut rest = readme.as_str();
    while let Some(i) = rest.find("](") {
        rest = &rest[i + 2..];
        let end = rest.find(')').unwrap();
        let link = rest[..end].split('#').next().unwrap();
        if !link.contains("://") && !link.is_empty() {
            assert!(
                repo().join(link).exists(),
                "README.md links to {link}, which is not there"
            );
        }
    }
}

/// The `sh` blocks of a Markdown file, in order.
fn sh_blocks(text: &str) -> Vec<Vec<String>> {
    let mut blocks = Vec::new();
    let mut current: Option<Vec<String>> = None;
    for line in text.lines() {
        match (&mut current, line.trim_end()) {
            (None, "```sh") => current = Some(Vec::new()),
            (Some(_), "```") => blocks.push(current.take().unwrap()),
            (Some(block), l) => block.push(l.to_string()),
            _ => {}
        }
    }
    blocks
}

#[test]
fn the_quick_start_runs_as_written() {
    let page = read(&repo().join("docs/src/quick-start.md"));
    let blocks = sh_blocks(&page);
    assert!(blocks.len() >= 4, "{blocks:?}");
    let state = tempfile::tempdir().unwrap();
    let daemon = DaemonProcess::start(state.path());
    let token = daemon.token(state.path());
    let work = tempfile::tempdir().unwrap();
    let mut ran = 0;
    for line in blocks.iter().flatten() {
        let command = line.split(" #").next().unwrap().trim();
        match command {
            "" => continue,
            // The test started the daemon scripts/serve runs, and runs the binary it built.
            "scripts/serve" => continue,
            l if l.starts_with("alias lacave=") => continue,
            l => assert!(
                l.starts_with("lacave "),
                "the quick start shows {l:?}, which this test does not know how to run"
            ),
        }
        let out = Command::new("bash")
            .arg("-c")
            .arg(format!(
                "lacave() {{ \"$LACAVE_BIN\" \"$@\"; }}\nset -e\n{command}"
            ))
            .current_dir(work.path())
            .env("LACAVE_BIN", lacave_bin())
            .env("LACAVE_URL", &daemon.url)
            .env("LACAVE_TOKEN", &token)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{command}: exit {:?}\n{}{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        ran += 1;
    }
    assert!(ran >= 10, "{ran} commands ran");
    // What the page says happened, happened.
    let list = Command::new(lacave_bin())
        .args(["node", "list", "--output", "json"])
        .env("LACAVE_URL", &daemon.url)
        .env("LACAVE_TOKEN", &token)
        .output()
        .unwrap();
    let nodes: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    let names: Vec<&str> = nodes
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["hostname"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["kube01"], "{nodes}");
    assert!(work.path().join("lacave.toml").exists());
}

/// Code in a Markdown text: each line of a fenced shell block, and each inline code span.
fn code(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    // Inside a fence: whether it holds shell commands (not a program's output, not TOML).
    let mut fence: Option<bool> = None;
    for line in text.lines() {
        if let Some(info) = line.trim_start().strip_prefix("```") {
            fence = match fence {
                Some(_) => None,
                None => Some(matches!(info.trim(), "sh" | "console" | "bash" | "shell")),
            };
            continue;
        }
        if let Some(shell) = fence {
            if shell {
                out.push(line.to_string());
            }
            continue;
        }
        out.extend(line.split('`').skip(1).step_by(2).map(str::to_string));
    }
    out
}

/// `lacave WORD [WORD]` where a command starts in code: the start of a span or line, or
/// after `sudo`, a prompt, a pipe or `&&`.
fn lacave_commands(text: &str) -> BTreeSet<Vec<String>> {
    let mut out = BTreeSet::new();
    for snippet in code(text) {
        for (i, _) in snippet.match_indices("lacave ") {
            let before = snippet[..i].trim_end();
            if !(before.is_empty()
                || before.ends_with("sudo")
                || before.ends_with('$')
                || before.ends_with('|')
                || before.ends_with("&&"))
            {
                continue;
            }
            let words: Vec<String> = snippet[i + 7..]
                .split([' ', '\'', '"', ')', ',', ';', '|'])
                .take(2)
                .map(str::to_string)
                .collect();
            // A command is a word (`lacave 0.1.0 (…)` is a version, `lacave —` prose).
            if words
                .first()
                .is_some_and(|w| w.starts_with(|c: char| c.is_ascii_lowercase()) && w != "help")
            {
                out.insert(words);
            }
        }
    }
    out
}

/// Every `lacave COMMAND [SUBCOMMAND]` the docs and README show is one the binary has.
#[test]
fn every_command_the_docs_name_exists() {
    let help = |args: &[&str]| {
        Command::new(lacave_bin())
            .args(args)
            .arg("--help")
            .output()
            .unwrap()
    };
    let mut wrong = Vec::new();
    let mut checked = 0;
    for file in markdown_files() {
        for words in lacave_commands(&read(&file)) {
            let first = help(&[&words[0]]);
            if !first.status.success() {
                wrong.push(format!("{}: lacave {}", file.display(), words[0]));
                continue;
            }
            checked += 1;
            let has_subcommands = String::from_utf8_lossy(&first.stdout).contains("Commands:");
            if let Some(second) = words
                .get(1)
                .filter(|w| !w.is_empty() && !w.starts_with('-'))
                && has_subcommands
                && second.chars().all(|c| c.is_ascii_lowercase() || c == '-')
                && !help(&[&words[0], second]).status.success()
            {
                wrong.push(format!("{}: lacave {} {second}", file.display(), words[0]));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "the docs name commands lacave lacks:\n{}",
        wrong.join("\n")
    );
    assert!(checked > 50, "{checked} commands checked");
}

/// Every `code` an API error can carry is explained in Troubleshooting.
#[test]
fn every_api_error_code_is_explained() {
    let page = read(&repo().join("docs/src/troubleshooting.md"));
    let mut codes = BTreeSet::new();
    for entry in std::fs::read_dir(repo().join("daemon/src/api"))
        .unwrap()
        .flatten()
    {
        let source = read(&entry.path());
        let mut rest = source.as_str();
        while let Some(i) = rest.find("StatusCode::") {
            rest = &rest[i + 12..];
            let after = rest.trim_start_matches(|c: char| c.is_ascii_uppercase() || c == '_');
            let after = after.trim_start_matches(',').trim_start();
            if let Some(code) = after.strip_prefix('"').and_then(|a| a.split('"').next())
                && !code.is_empty()
                && code.chars().all(|c| c.is_ascii_lowercase() || c == '_')
            {
                codes.insert(code.to_string());
            }
        }
    }
    for code in [
        "invalid_field",
        "unauthorized",
        "internal",
        "storage_failed",
        "too_many_failures",
    ] {
        assert!(codes.contains(code) || page.contains(code), "{code}");
    }
    assert!(codes.len() >= 30, "{codes:?}");
    let missing: Vec<&String> = codes
        .iter()
        .filter(|c| !page.contains(&format!("`{c}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "API error codes without an entry in docs/src/troubleshooting.md: {missing:?}"
    );
}

#[test]
fn the_flow_picture_is_what_its_source_draws() {
    let drawn = Command::new("python3")
        .arg(repo().join("docs/flow.py"))
        .arg("--stdout")
        .output()
        .unwrap();
    assert!(drawn.status.success());
    assert_eq!(
        String::from_utf8_lossy(&drawn.stdout),
        read(&repo().join("docs/src/images/flow.svg")),
        "docs/src/images/flow.svg is stale: run python3 docs/flow.py"
    );
}

#[test]
fn the_readme_is_a_front_page() {
    let readme = read(&repo().join("README.md"));
    let lines = readme.lines().count();
    assert!(
        lines <= 300,
        "README.md has {lines} lines: move detail to docs/"
    );
    for must in [
        "scripts/serve",
        "scripts/test",
        "docs/src/images/flow.svg",
        "docs/src/quick-start.md",
    ] {
        assert!(readme.contains(must), "README.md does not mention {must}");
    }
}

//! Names the commit the binary is built from, for `lacave --version`, the start-up line and
//! `lacave_build_info`: `LACAVE_COMMIT` when set (a source tarball, a package build), else
//! git's `HEAD`, else `unknown`.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
}

fn main() {
    println!("cargo:rerun-if-env-changed=LACAVE_COMMIT");
    let commit = std::env::var("LACAVE_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(|| git(&["rev-parse", "--short=12", "HEAD"]))
        .unwrap_or_else(|| "unknown".into());
    // Built again when HEAD moves (a checkout, a commit on the branch). Only paths that
    // exist: cargo runs a build script every time for one that does not.
    if let Some(dir) = git(&["rev-parse", "--absolute-git-dir"]) {
        for path in ["HEAD", "refs/heads", "packed-refs"] {
            let path = format!("{dir}/{path}");
            if std::path::Path::new(&path).exists() {
                println!("cargo:rerun-if-changed={path}");
            }
        }
    }
    println!("cargo:rustc-env=LACAVE_COMMIT={commit}");
}

//! The TFTP server against real clients, tftp-hpa and atftp, on loopback: iPXE binaries from
//! Debian's `ipxe` package arrive byte-identical (with blksize, windowsize and tsize options),
//! hostile requests get TFTP errors, and the server keeps serving.

use std::path::Path;
use std::process::Output;

use lacave_integration_tests::TestDaemon;

const IPXE: &str = "/usr/lib/ipxe";

async fn run(program: &str, args: &[&str], dir: &Path) -> Output {
    tokio::process::Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .await
        .unwrap_or_else(|e| panic!("{program} cannot run ({e}): install tftp-hpa and atftp"))
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

async fn daemon(root: &Path) -> TestDaemon {
    TestDaemon::start_with(&format!(
        "[tftp]\nlisten = \"127.0.0.1:0\"\nroot = \"{}\"\n",
        root.display()
    ))
    .await
}

fn same(a: &Path, b: &Path) -> bool {
    std::fs::read(a).unwrap() == std::fs::read(b).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipxe_binaries_arrive_byte_identical_with_both_clients() {
    assert!(
        Path::new(IPXE).join("undionly.kpxe").exists(),
        "{IPXE}/undionly.kpxe is missing: install the ipxe package (sudo scripts/test does)"
    );
    let d = daemon(Path::new(IPXE)).await;
    let port = d.daemon().tftp_addr().unwrap().port().to_string();
    let out = tempfile::tempdir().unwrap();
    let o = out.path();

    for file in ["undionly.kpxe", "ipxe.efi", "snponly.efi"] {
        let got = format!("hpa-{file}");
        let r = run(
            "tftp",
            &["127.0.0.1", &port, "-m", "binary", "-c", "get", file, &got],
            o,
        )
        .await;
        assert!(
            same(&o.join(&got), &Path::new(IPXE).join(file)),
            "tftp-hpa {file}: {}",
            text(&r)
        );
    }
    // atftp with a large block, a window of blocks and the transfer size asked up front.
    for (file, opts) in [
        (
            "ipxe.efi",
            vec![
                "--option",
                "blksize 1468",
                "--option",
                "windowsize 8",
                "--option",
                "tsize 0",
            ],
        ),
        ("undionly.kpxe", vec!["--option", "blksize 1468"]),
    ] {
        let got = format!("atftp-{file}");
        let mut args = opts.clone();
        args.extend(["-g", "-r", file, "-l", &got, "127.0.0.1", &port]);
        let r = run("atftp", &args, o).await;
        assert!(
            same(&o.join(&got), &Path::new(IPXE).join(file)),
            "atftp {file}: {}",
            text(&r)
        );
        if opts.contains(&"windowsize 8") {
            assert!(
                text(&r).contains("windowsize = 8"),
                "windowsize agreed: {}",
                text(&r)
            );
        }
        assert!(
            text(&r).contains("blksize = 1468"),
            "the option was agreed: {}",
            text(&r)
        );
    }

    // Hostile and impossible requests get TFTP errors.
    for (args, expect) in [
        (vec!["-c", "get", "../../etc/passwd", "p1"], "Error code 2"),
        (vec!["-c", "get", "/etc/passwd", "p2"], "Error code 2"),
        (vec!["-c", "get", "nothing-here.efi", "p3"], "Error code 1"),
    ] {
        let mut full = vec!["127.0.0.1", port.as_str(), "-m", "binary"];
        full.extend(args);
        let r = run("tftp", &full, o).await;
        assert!(text(&r).contains(expect), "{full:?}: {}", text(&r));
    }
    std::fs::write(o.join("up.txt"), "x").unwrap();
    let r = run("tftp", &["127.0.0.1", &port, "-c", "put", "up.txt"], o).await;
    assert!(
        text(&r).contains("Error code 2"),
        "write refused: {}",
        text(&r)
    );
    for bad in ["p1", "p2", "p3"] {
        assert!(
            std::fs::read(o.join(bad))
                .map(|b| b.is_empty())
                .unwrap_or(true)
        );
    }

    // Still serving afterwards, and it all shows in the metrics.
    let r = run(
        "tftp",
        &[
            "127.0.0.1",
            &port,
            "-m",
            "binary",
            "-c",
            "get",
            "undionly.kpxe",
            "again",
        ],
        o,
    )
    .await;
    assert!(
        same(&o.join("again"), &Path::new(IPXE).join("undionly.kpxe")),
        "{}",
        text(&r)
    );
    let metrics = reqwest::get(format!("{}/metrics", d.url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "lacave_tftp_transfers_total{result=\"complete\"} 6",
        "lacave_tftp_transfers_total{result=\"refused\"} 2",
        "lacave_tftp_transfers_total{result=\"not_found\"} 1",
        "lacave_tftp_transfers_total{result=\"write_refused\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_out_of_the_root_are_refused() {
    let root = tempfile::tempdir().unwrap();
    std::fs::write(root.path().join("boot.ipxe"), "#!ipxe\n").unwrap();
    std::os::unix::fs::symlink("/etc/passwd", root.path().join("passwd")).unwrap();
    std::os::unix::fs::symlink("boot.ipxe", root.path().join("alias.ipxe")).unwrap();
    let d = daemon(root.path()).await;
    let port = d.daemon().tftp_addr().unwrap().port().to_string();
    let out = tempfile::tempdir().unwrap();
    let r = run(
        "tftp",
        &["127.0.0.1", &port, "-c", "get", "passwd", "x"],
        out.path(),
    )
    .await;
    assert!(text(&r).contains("Error code 2"), "{}", text(&r));
    let r = run(
        "tftp",
        &["127.0.0.1", &port, "-c", "get", "alias.ipxe", "y"],
        out.path(),
    )
    .await;
    assert_eq!(
        std::fs::read_to_string(out.path().join("y")).unwrap(),
        "#!ipxe\n",
        "{}",
        text(&r)
    );
}

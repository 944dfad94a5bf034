//! Golden files of what nodes get (`golden/`): a change to a script or a template shows up as a
//! diff in review. `UPDATE_GOLDEN=1 cargo test -p lacave boot::` rewrites them.

use super::*;
use crate::config::Config;

fn config() -> Config {
    Config::from_toml(
        r#"
        state_dir = "/var/lib/lacave"
        server_ip = "10.0.0.1"
        [http]
        listen = "0.0.0.0:8080"
        [flatcar]
        version = "4081.2.0"
        node_gateway = "10.0.0.254"
        ssh_authorized_keys = ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFQ7o4JPTa6wVZ7Gt7DkTdfyR3dQZs8gdXSXGA4cFwhu operator@laptop"]
        "#,
        Path::new("test.toml"),
    )
    .unwrap()
}

fn boot() -> Boot {
    Boot {
        templates: Templates::load(None).unwrap(),
        ssh_public_key: SAMPLE_KEY.into(),
    }
}

fn node(state: NodeState) -> Node {
    Node {
        hostname: Some("kube01".parse().unwrap()),
        mac: "52:54:00:12:34:56".parse().unwrap(),
        ip: Some("10.0.0.11".parse().unwrap()),
        state,
        ..sample_node("kube01", Role::Worker)
    }
}

fn golden(name: &str, actual: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("src/boot/golden")
        .join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_GOLDEN=1 creates it)", path.display()));
    assert_eq!(
        actual,
        expected,
        "{} differs (UPDATE_GOLDEN=1 rewrites it after review)",
        path.display()
    );
}

#[test]
fn scripts_match_their_golden_files() {
    let c = config();
    let b = boot();
    let mac: MacAddr = "52:54:00:12:34:56".parse().unwrap();
    golden("boot.ipxe", &ipxe::generic(&base_url(&c)));
    for (name, n) in [
        ("install.ipxe", Some(node(NodeState::Registered))),
        ("local.ipxe", Some(node(NodeState::Booted))),
        ("unknown.ipxe", None),
    ] {
        let script = b.script_for(&c, mac, n.as_ref());
        golden(name, &ipxe::render(&script));
    }
    // A discovered machine never gets an install.
    let mut discovered = node(NodeState::Discovered);
    discovered.hostname = None;
    assert!(matches!(
        b.script_for(&c, mac, Some(&discovered)),
        ipxe::Script::Unknown { .. }
    ));
}

#[test]
fn configs_match_their_golden_files_and_parse_back() {
    let c = config();
    let b = boot();
    let n = node(NodeState::Installing);
    let cx = b.context(
        &c,
        &n,
        "0123456789abcdef",
        SAMPLE_CA,
        &c.cluster.kubernetes_version,
    );
    for kind in Kind::ALL {
        let text = b.templates.render(kind, "kube01", "worker", &cx).unwrap();
        let parsed = ignition::parse(&text).unwrap();
        golden(&format!("{}.ign", kind.as_str()), &text);
        let users = parsed.passwd.unwrap().users;
        assert_eq!(users[0].name, "root");
        assert_eq!(
            users[0].ssh_authorized_keys.len(),
            2,
            "operator's + daemon's"
        );
    }
}

#[test]
fn every_embedded_template_renders_for_every_role() {
    assert_eq!(Boot::check_templates(&config()), Ok(()));
}

#[test]
fn a_broken_template_is_named_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("roles/worker")).unwrap();
    std::fs::write(
        dir.path().join("roles/worker/final.ign.j2"),
        "{\n  \"ignition\": {{ unclosed \n",
    )
    .unwrap();
    let errors = Templates::load(Some(dir.path())).unwrap_err();
    assert!(
        errors[0].contains("roles/worker/final.ign.j2, line"),
        "{errors:?}"
    );

    // Valid syntax, but an unknown variable and then invalid Ignition: caught by the check.
    std::fs::write(
        dir.path().join("roles/worker/final.ign.j2"),
        "{\"ignition\": {\"version\": \"3.3.0\"}, \"networkd\": {{ node.hostname | tojson }}}",
    )
    .unwrap();
    std::fs::write(dir.path().join("install.ign.j2"), "{{ node.hostnme }}").unwrap();
    let mut c = config();
    c.flatcar.templates_dir = Some(dir.path().to_path_buf());
    let errors = Boot::check_templates(&c).unwrap_err();
    let all = errors.join("\n");
    assert!(
        all.contains("install.ign.j2") && all.contains("undefined"),
        "{all}"
    );
    assert!(
        all.contains("roles/worker/final.ign.j2: renders invalid Ignition")
            && all.contains("networkd"),
        "{all}"
    );
    assert!(!all.contains("control-plane node named sample-control-plane)\nroles/worker"));
}

#[test]
fn per_node_overrides_win_over_roles() {
    let dir = tempfile::tempdir().unwrap();
    for d in ["roles/worker", "nodes/kube07"] {
        std::fs::create_dir_all(dir.path().join(d)).unwrap();
        std::fs::write(
            dir.path().join(d).join("final.ign.j2"),
            "{\"ignition\": {\"version\": \"3.3.0\"}}",
        )
        .unwrap();
    }
    let t = Templates::load(Some(dir.path())).unwrap();
    assert_eq!(
        t.pick(Kind::Final, "kube07", "worker"),
        "nodes/kube07/final.ign.j2"
    );
    assert_eq!(
        t.pick(Kind::Final, "kube02", "worker"),
        "roles/worker/final.ign.j2"
    );
    assert_eq!(
        t.pick(Kind::Final, "kube02", "control-plane"),
        "final.ign.j2"
    );
    assert_eq!(t.pick(Kind::Install, "kube07", "worker"), "install.ign.j2");
}

#[test]
fn ranges() {
    use Range::*;
    let len = 1000;
    for (h, want) in [
        (None, Full),
        (Some("bytes=0-99"), Part { start: 0, end: 99 }),
        (
            Some("bytes=900-"),
            Part {
                start: 900,
                end: 999,
            },
        ),
        (
            Some("bytes=-100"),
            Part {
                start: 900,
                end: 999,
            },
        ),
        (
            Some("bytes=990-5000"),
            Part {
                start: 990,
                end: 999,
            },
        ),
        (Some("bytes=1000-"), Unsatisfiable),
        (Some("bytes=5000-6000"), Unsatisfiable),
        (Some("bytes=-0"), Unsatisfiable),
        (Some("bytes=5-1"), Full),
        (Some("bytes=0-1,5-6"), Full),
        (Some("items=0-1"), Full),
        (Some("bytes=x-"), Full),
    ] {
        assert_eq!(parse_range(h, len), want, "{h:?}");
    }
}

#[test]
fn neighbour_table() {
    let table = "IP address       HW type     Flags       HW address            Mask     Device\n\
                 10.0.0.11        0x1         0x2         52:54:00:12:34:56     *        br0\n\
                 10.0.0.12        0x1         0x0         00:00:00:00:00:00     *        br0\n";
    let ip = |s: &str| s.parse().unwrap();
    assert_eq!(
        neighbour_mac(table, ip("10.0.0.11")),
        Some("52:54:00:12:34:56".parse().unwrap())
    );
    assert_eq!(neighbour_mac(table, ip("10.0.0.12")), None, "incomplete");
    assert_eq!(neighbour_mac(table, ip("10.0.0.13")), None);
}

#[test]
fn the_peer_must_be_the_nodes_mac_on_this_link() {
    let table = "IP address       HW type     Flags       HW address            Mask     Device\n\
                 10.0.0.11        0x1         0x2         52:54:00:12:34:56     *        br0\n\
                 10.0.0.21        0x1         0x2         52:54:00:66:66:66     *        br0\n";
    let node: MacAddr = "52:54:00:12:34:56".parse().unwrap();
    let ip = |s: &str| -> std::net::IpAddr { s.parse().unwrap() };
    let v4 = |s: &str| -> Ipv4Addr { s.parse().unwrap() };
    // On the link with its MAC, at any address (proxy DHCP beside a router).
    assert_eq!(
        check_peer(ip("10.0.0.11"), node, Some(v4("10.0.0.21")), false, table),
        Ok(())
    );
    assert_eq!(
        check_peer(ip("::ffff:10.0.0.11"), node, None, false, table),
        Ok(())
    );
    // Another machine that took the node's registered address: refused, trusted or not.
    for trust in [false, true] {
        assert_eq!(
            check_peer(ip("10.0.0.21"), node, Some(v4("10.0.0.21")), trust, table),
            Err(WrongPeer::OtherMac("52:54:00:66:66:66".parse().unwrap()))
        );
    }
    // Routed (no neighbour entry): the registered address suffices only when trusted.
    assert_eq!(
        check_peer(ip("10.9.0.21"), node, Some(v4("10.9.0.21")), false, table),
        Err(WrongPeer::OffLink { registered: true })
    );
    assert_eq!(
        check_peer(ip("10.9.0.21"), node, Some(v4("10.9.0.21")), true, table),
        Ok(())
    );
    assert_eq!(
        check_peer(ip("10.9.0.22"), node, Some(v4("10.9.0.21")), true, table),
        Err(WrongPeer::OffLink { registered: false })
    );
    assert_eq!(
        check_peer(ip("fe80::1"), node, None, true, table),
        Err(WrongPeer::NotIpv4)
    );
}

#[test]
fn missing_mirror_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config();
    c.flatcar.mirror_dir = dir.path().to_path_buf();
    assert_eq!(
        missing_mirror_files(&c).len(),
        4,
        "4081.2.0: four files, no version.txt"
    );
    let release = dir.path().join("stable/amd64-usr/4081.2.0");
    std::fs::create_dir_all(&release).unwrap();
    for f in [
        "flatcar_production_pxe.vmlinuz",
        "flatcar_production_pxe_image.cpio.gz",
        "flatcar_production_image.bin.bz2",
    ] {
        std::fs::write(release.join(f), "x").unwrap();
    }
    assert_eq!(
        missing_mirror_files(&c),
        ["stable/amd64-usr/4081.2.0/flatcar_production_image.bin.bz2.sig"]
    );
}

#[test]
fn mirror_paths_stay_inside() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("stable/amd64-usr/current")).unwrap();
    std::fs::write(dir.path().join("stable/amd64-usr/current/version.txt"), "x").unwrap();
    std::os::unix::fs::symlink("/etc/passwd", dir.path().join("leak")).unwrap();
    assert!(mirror_file(dir.path(), "stable/amd64-usr/current/version.txt").is_ok());
    for bad in [
        "../etc/passwd",
        "/etc/passwd",
        "leak",
        "stable/amd64-usr",
        "nope",
    ] {
        assert!(mirror_file(dir.path(), bad).is_err(), "{bad}");
    }
}

#[test]
fn the_containerd_config_for_flatcar_reads_and_points_cri_at_the_hosts_directory() {
    let parsed: toml::Table = toml::from_str(CONTAINERD_CONFIG).expect("valid TOML");
    let cri = &parsed["plugins"]["io.containerd.grpc.v1.cri"];
    assert_eq!(
        cri["registry"]["config_path"].as_str(),
        Some("/etc/containerd/certs.d")
    );
    assert_eq!(
        cri["containerd"]["runtimes"]["runc"]["options"]["SystemdCgroup"].as_bool(),
        Some(true)
    );
}

#[test]
fn the_kubernetes_sysext_is_verified_by_the_hash_the_mirror_checked() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config();
    c.cluster.enabled = true;
    c.flatcar.mirror_dir = dir.path().to_path_buf();
    let b = boot();
    let n = node(NodeState::Installed);
    let image = kubernetes_sysext(&c.cluster.kubernetes_version, &c.flatcar.board);
    let sysext_entry = |text: &str| {
        let parsed: serde_json::Value = serde_json::from_str(text).unwrap();
        parsed["storage"]["files"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["path"] == format!("/opt/extensions/kubernetes/{image}"))
            .cloned()
            .unwrap()
    };
    // The mirror does not hold it yet: no hash to give (start-up names the missing image).
    let cx = b.context(
        &c,
        &n,
        "0123456789abcdef",
        SAMPLE_CA,
        &c.cluster.kubernetes_version,
    );
    let text = b
        .templates
        .render(Kind::Final, "kube01", "worker", &cx)
        .unwrap();
    assert!(
        sysext_entry(&text)["contents"]
            .get("verification")
            .is_none()
    );

    let hex = "ab".repeat(32);
    std::fs::create_dir_all(dir.path().join("kubernetes")).unwrap();
    std::fs::write(
        dir.path().join(format!("kubernetes/{image}.sha256")),
        format!("{hex}\n"),
    )
    .unwrap();
    let cx = b.context(
        &c,
        &n,
        "0123456789abcdef",
        SAMPLE_CA,
        &c.cluster.kubernetes_version,
    );
    let text = b
        .templates
        .render(Kind::Final, "kube01", "worker", &cx)
        .unwrap();
    ignition::parse(&text).unwrap();
    assert_eq!(
        sysext_entry(&text)["contents"]["verification"]["hash"],
        format!("sha256-{hex}")
    );
    // A damaged record is not passed on as a hash.
    std::fs::write(
        dir.path().join(format!("kubernetes/{image}.sha256")),
        "zz\n",
    )
    .unwrap();
    assert_eq!(sysext_sha256(dir.path(), &image), None);
}

use super::omaha::{App, AppEvent, Check};
use super::*;

fn offer(version: &str) -> Offer {
    Offer {
        version: version.into(),
        codebase: format!("http://10.0.0.1:8080/mirror/stable/amd64-usr/{version}/"),
        file: "flatcar_production_update.gz".into(),
        size: 10,
        sha1_base64: "a".into(),
        sha256_base64: "b".into(),
    }
}

fn target(version: &str) -> Result<Target, TargetError> {
    Ok(Target {
        version: version.into(),
        offer: offer(version),
    })
}

fn app(version: &str, events: &[(u32, u32, &str)]) -> App {
    App {
        app_id: omaha::FLATCAR_APP_ID.into(),
        version: version.into(),
        track: "stable".into(),
        machine_id: "m1".into(),
        ping: true,
        update_check: true,
        events: events
            .iter()
            .map(|(kind, result, prev)| AppEvent {
                kind: *kind,
                result: *result,
                error_code: (*result == 0).then_some(10),
                previous_version: (*prev).into(),
            })
            .collect(),
    }
}

fn at(minute: i64) -> OffsetDateTime {
    OffsetDateTime::UNIX_EPOCH + time::Duration::minutes(minute)
}

#[test]
fn older_nodes_are_offered_the_target_newer_ones_never_downgraded() {
    let t = target("4459.2.1");
    assert_eq!(verdict("4230.2.3", &t), Verdict::Offer(offer("4459.2.1")));
    assert_eq!(verdict("4459.2.1", &t), Verdict::Current);
    assert_eq!(
        verdict("4459.10.0", &t),
        Verdict::Ahead {
            target: "4459.2.1".into()
        }
    );
    assert_eq!(verdict("ForcedUpdate", &t), Verdict::BadVersion);
    let missing = Err(TargetError::NoPayload {
        version: "4459.2.1".into(),
    });
    assert!(matches!(
        verdict("4230.2.3", &missing),
        Verdict::Unanswered(_)
    ));
    assert_eq!(verdict("4230.2.3", &missing).check(), Check::Internal);
    assert_eq!(verdict("4459.2.1", &t).check(), Check::NoUpdate);
}

#[test]
fn a_whole_update_is_recorded_step_by_step_with_one_event_per_change() {
    let t = target("4459.2.1");
    let states = |events: &[(EventKind, String)]| -> Vec<String> {
        events
            .iter()
            .map(|(k, _)| match k {
                EventKind::Update { state, version } => format!("{state} {version}"),
                other => panic!("{other:?}"),
            })
            .collect()
    };
    // First check: offered.
    let a = app("4230.2.3", &[(3, 2, "")]);
    let (r, ev) = observe(None, &a, Some(&verdict(&a.version, &t)), at(0));
    assert_eq!(r.state, UpdateState::Offered);
    assert_eq!(r.target.as_deref(), Some("4459.2.1"));
    assert_eq!(states(&ev), ["offered 4459.2.1"]);
    // Download, then applied (update_engine reports events without a check).
    let a = app("4230.2.3", &[(13, 1, ""), (14, 1, "")]);
    let (r, ev) = observe(Some(&r), &a, None, at(1));
    assert_eq!(states(&ev), ["downloading 4459.2.1", "downloaded 4459.2.1"]);
    let a = app("4230.2.3", &[(800, 1, "")]);
    let (r, ev) = observe(Some(&r), &a, None, at(5));
    assert_eq!(r.state, UpdateState::Applied);
    assert_eq!(states(&ev), ["applied 4459.2.1"]);
    assert!(ev[0].1.contains("waits for a reboot"), "{ev:?}");
    // A check while applied (the same target) changes nothing.
    let a = app("4230.2.3", &[]);
    let (r2, ev) = observe(Some(&r), &a, Some(&verdict(&a.version, &t)), at(6));
    assert!(ev.is_empty(), "{ev:?}");
    assert_eq!(r2.state, UpdateState::Applied);
    // After the reboot: the new version, the previous one named.
    let a = app("4459.2.1", &[(3, 2, "4230.2.3")]);
    let (r, ev) = observe(Some(&r2), &a, Some(&verdict(&a.version, &t)), at(30));
    assert_eq!(r.state, UpdateState::UpToDate);
    assert_eq!(r.target, None);
    assert_eq!(states(&ev), ["up-to-date 4459.2.1"]);
    assert!(
        ev[0]
            .1
            .contains("rebooted from Flatcar 4230.2.3 into 4459.2.1")
    );
    // Nothing new: no event, and the record is written only every CHECKED_EVERY.
    let a = app("4459.2.1", &[(3, 2, "")]);
    let (r2, ev) = observe(Some(&r), &a, Some(&verdict(&a.version, &t)), at(31));
    assert!(ev.is_empty());
    assert!(!worth_writing(Some(&r), &r2));
    let (r3, _) = observe(Some(&r), &a, Some(&verdict(&a.version, &t)), at(45));
    assert!(worth_writing(Some(&r), &r3));
}

#[test]
fn failures_and_unanswerable_checks_are_recorded_with_their_reason() {
    let t = target("4459.2.1");
    let a = app("4230.2.3", &[(3, 2, "")]);
    let (r, _) = observe(None, &a, Some(&verdict(&a.version, &t)), at(0));
    let a = app("4230.2.3", &[(3, 0, "")]);
    let (r, ev) = observe(Some(&r), &a, None, at(1));
    assert_eq!((r.state, r.error_code), (UpdateState::Failed, Some(10)));
    assert!(ev[0].1.contains("code 10: payload hash mismatch"), "{ev:?}");
    let missing: Result<Target, TargetError> = Err(TargetError::NotHeld {
        version: "4500.0.0".into(),
    });
    let a = app("4230.2.3", &[]);
    let (r, ev) = observe(Some(&r), &a, Some(&verdict(&a.version, &missing)), at(2));
    assert_eq!(r.state, UpdateState::Unanswered);
    assert!(
        ev[0]
            .1
            .contains("lacave mirror fetch flatcar --version 4500.0.0"),
        "{ev:?}"
    );
    let a = app("4230.2.3", &[]);
    let (r, ev) = observe(Some(&r), &a, Some(&verdict(&a.version, &missing)), at(3));
    assert!(ev.is_empty(), "the same reason again is no new event");
    let a = app("5000.0.0", &[]);
    let (r, ev) = observe(Some(&r), &a, Some(&verdict(&a.version, &t)), at(4));
    assert_eq!(r.state, UpdateState::Ahead);
    assert!(ev[0].1.contains("not downgraded"));
}

#[test]
fn error_codes_are_named() {
    assert_eq!(error_name(10), "payload hash mismatch");
    assert_eq!(error_name(2404), "HTTP error from the update server");
    assert_eq!(error_name(99), "update_engine error");
}

/// What the mirror lacks is named with the command that mends it: no `current`, a release not
/// held, one held without its payload, a payload that is not the verified file.
#[tokio::test]
async fn the_target_is_offered_only_when_the_mirror_holds_its_verified_payload() {
    let dir = tempfile::tempdir().unwrap();
    let current = crate::config::Config::from_toml(
        &format!(
            "state_dir = \"{}\"\n[updates.releases]\ncanary = \"9999.0.0\"\n",
            dir.path().display()
        ),
        std::path::Path::new("t.toml"),
    )
    .unwrap();
    let err = |r: Result<Target, TargetError>| r.expect_err("no target").to_string();
    assert!(
        err(Targets::default().get(&current, "current").await)
            .contains("no current release for stable"),
    );
    let board = dir.path().join("mirror/stable/amd64-usr");
    let release = board.join("4459.2.1");
    std::fs::create_dir_all(&release).unwrap();
    std::os::unix::fs::symlink("4459.2.1", board.join("current")).unwrap();
    assert!(
        err(Targets::default().get(&current, "current").await)
            .contains("lacave mirror fetch flatcar --version 4459.2.1"),
    );
    assert!(
        err(Targets::default().get(&current, "9999.0.0").await)
            .contains("Flatcar 9999.0.0 is not held"),
    );
    let mut record = serde_json::json!({"version": "4459.2.1", "signer": "test",
        "verified_at": "", "sha512": {}, "signed_at": {}});
    std::fs::write(release.join(".verified"), record.to_string()).unwrap();
    assert!(
        err(Targets::default().get(&current, "current").await)
            .contains("without its update payload")
    );

    let payload = release.join("flatcar_production_update.gz");
    std::fs::write(&payload, vec![7u8; 4096]).unwrap();
    let p = crate::release::fetch::UpdatePayload::of_file(&payload).unwrap();
    record["update"] = serde_json::to_value(&p).unwrap();
    std::fs::write(release.join(".verified"), record.to_string()).unwrap();
    let targets = Targets::default();
    let t = targets.get(&current, "current").await.unwrap();
    assert_eq!((t.version.as_str(), t.offer.size), ("4459.2.1", 4096));
    assert_eq!(t.offer.sha256_base64, p.sha256_base64);
    // A node in the canary group (its label) is answered with the canary's release.
    let mut node = crate::model::Node::discovered(
        "52:54:00:00:00:01".parse().unwrap(),
        OffsetDateTime::UNIX_EPOCH,
    );
    assert_eq!(targets.for_node(&current, &node).await.unwrap(), t);
    node.labels
        .insert(settings::GROUP_LABEL.into(), "canary".into());
    let e = err(targets.for_node(&current, &node).await);
    assert!(e.contains("Flatcar 9999.0.0 is not held"), "{e}");
    // Same size, other bytes: the hash is taken again and the payload refused.
    std::fs::write(&payload, vec![8u8; 4096]).unwrap();
    let e = err(Targets::default().get(&current, "current").await);
    assert!(
        e.contains("is not the file lacave mirror fetch verified"),
        "{e}"
    );
}

use time::OffsetDateTime;

use super::*;
use crate::model::{EventKind, Lease, MacAddr, NewNode, NodeKey, NodePatch, NodeState, Sighting};
use crate::model::{Hostname, LeaseAction, Role};

fn new_node(mac: &str, host: &str, ip: &str) -> NewNode {
    NewNode {
        mac: mac.parse().unwrap(),
        hostname: host.parse().unwrap(),
        ip: ip.parse().unwrap(),
        role: Role::Worker,
        labels: Default::default(),
        install_disk: None,
        boot_file: None,
    }
}

fn host(h: &str) -> Vec<NodeKey> {
    vec![NodeKey::Hostname(h.parse::<Hostname>().unwrap())]
}

#[test]
fn unique_fields_conflict_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store
        .create_node(&new_node("52:54:00:00:00:01", "kube01", "10.0.0.1"))
        .unwrap();
    for (n, field) in [
        (new_node("52:54:00:00:00:01", "kube02", "10.0.0.2"), "mac"),
        (
            new_node("52:54:00:00:00:02", "kube01", "10.0.0.2"),
            "hostname",
        ),
        (new_node("52:54:00:00:00:02", "kube02", "10.0.0.1"), "ip"),
    ] {
        match store.create_node(&n) {
            Err(StoreError::Conflict {
                field: f, holder, ..
            }) => {
                assert_eq!(f, field);
                assert_eq!(holder, "kube01");
            }
            other => panic!("expected a {field} conflict, got {other:?}"),
        }
    }
    assert_eq!(store.list_nodes().unwrap().len(), 1);
}

#[test]
fn address_generation_moves_only_with_reservations() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let g0 = store.address_generation();
    store
        .create_node(&new_node("52:54:00:00:00:01", "kube01", "10.0.0.1"))
        .unwrap();
    let g1 = store.address_generation();
    assert_ne!(g0, g1, "a new reservation");
    // A sighting changes the node (and `generation`), not its reservation.
    let generation = store.generation();
    let sighting = Sighting {
        at: OffsetDateTime::now_utc(),
        arch: Some(7),
        vendor_class: None,
    };
    let mac = "52:54:00:00:00:01".parse().unwrap();
    assert_eq!(store.stage_seen(mac, sighting, false), Seen::Staged);
    store.flush().unwrap();
    assert_ne!(store.generation(), generation);
    assert_eq!(store.address_generation(), g1);
    // Nor does a machine without an address.
    store
        .record_discovered("52:54:00:00:00:02".parse().unwrap())
        .unwrap();
    assert_eq!(store.address_generation(), g1);
    let patch = NodePatch {
        ip: Some("10.0.0.9".parse().unwrap()),
        ..Default::default()
    };
    store.update_node(&host("kube01"), &patch).unwrap();
    assert_ne!(store.address_generation(), g1, "a moved reservation");
}

#[test]
fn patch_moves_indexes_and_frees_old_values() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store
        .create_node(&new_node("52:54:00:00:00:01", "kube01", "10.0.0.1"))
        .unwrap();
    let patch = NodePatch {
        hostname: Some("kube09".parse().unwrap()),
        ip: Some("10.0.0.9".parse().unwrap()),
        ..Default::default()
    };
    store.update_node(&host("kube01"), &patch).unwrap();
    assert!(matches!(
        store.get(&host("kube01")),
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(
        store.get(&host("kube09")).unwrap().ip.unwrap().to_string(),
        "10.0.0.9"
    );
    // The old hostname and IP are free again.
    store
        .create_node(&new_node("52:54:00:00:00:02", "kube01", "10.0.0.1"))
        .unwrap();
}

#[test]
fn transitions_are_checked_and_logged() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store
        .create_node(&new_node("52:54:00:00:00:01", "kube01", "10.0.0.1"))
        .unwrap();
    let err = store
        .transition(&host("kube01"), NodeState::Booted, "skip", None)
        .unwrap_err();
    assert!(matches!(err, StoreError::Transition { .. }), "{err}");
    store
        .transition(&host("kube01"), NodeState::Installing, "ipxe", None)
        .unwrap();
    let events = store.events(&host("kube01")).unwrap();
    assert_eq!(events.len(), 2);
    assert_eq!(
        events[1].kind,
        EventKind::Transition {
            from: NodeState::Registered,
            to: NodeState::Installing
        }
    );
    assert!(events[0].seq < events[1].seq);
}

#[test]
fn a_batch_of_discovered_machines_is_recorded_once_each() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store
        .create_node(&new_node("52:54:00:00:00:01", "kube01", "10.0.0.1"))
        .unwrap();
    let mac = |s: &str| s.parse::<MacAddr>().unwrap();
    let batch = [
        mac("52:54:00:00:00:01"), // registered: left alone
        mac("52:54:00:00:00:02"),
        mac("52:54:00:00:00:03"),
        mac("52:54:00:00:00:02"), // twice in one batch
    ];
    let batch: Vec<_> = batch.into_iter().map(|m| (m, None)).collect();
    let new = store.record_discovered_many(&batch).unwrap();
    assert_eq!(new, [mac("52:54:00:00:00:02"), mac("52:54:00:00:00:03")]);
    assert!(store.record_discovered_many(&batch).unwrap().is_empty());
    let nodes = store.list_nodes().unwrap();
    assert_eq!(nodes.len(), 3);
    let discovered: Vec<_> = nodes
        .iter()
        .filter(|n| n.state == NodeState::Discovered)
        .collect();
    assert_eq!(discovered.len(), 2);
    assert_eq!(
        store
            .events(&[NodeKey::Mac(mac("52:54:00:00:00:03"))])
            .unwrap()[0]
            .message,
        "seen on the network"
    );
}

#[test]
fn staged_dhcp_writes_land_together_at_flush_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let mac = |s: &str| s.parse::<MacAddr>().unwrap();
    let (new, old) = (mac("52:54:00:00:00:07"), mac("52:54:00:00:00:08"));
    let ip = |s: &str| s.parse::<std::net::Ipv4Addr>().unwrap();
    let bound = |at: &str| EventKind::Lease {
        action: LeaseAction::Bound,
        ip: ip(at),
    };
    let t0 = OffsetDateTime::now_utc().replace_nanosecond(0).unwrap();
    let sighting = |at, arch| Sighting {
        at,
        arch: Some(arch),
        vendor_class: Some(format!("PXEClient:Arch:{arch:05}")),
    };
    {
        let store = Store::open(dir.path()).unwrap();
        assert!(store.record_discovered(old).unwrap());
        store.flush().unwrap();
        // A machine first seen in this window, its lease and its lease event.
        assert_eq!(store.stage_seen(new, sighting(t0, 0), true), Seen::New);
        assert_eq!(store.discoveries_pending(), 1);
        // Its second packet: staged once, the latest sighting kept.
        assert_eq!(store.stage_seen(new, sighting(t0, 7), true), Seen::Staged);
        assert_eq!(store.stage_seen(old, sighting(t0, 7), true), Seen::Staged);
        let unknown = mac("52:54:00:00:00:0a");
        assert_eq!(
            store.stage_seen(unknown, sighting(t0, 7), false),
            Seen::Nothing
        );
        let lease = |m, at: &str| Lease {
            ip: ip(at),
            mac: m,
            expires: 2_000_000_000,
        };
        assert!(store.stage_lease(lease(new, "10.0.0.50"), 0).unwrap());
        assert!(store.stage_event(new, bound("10.0.0.50"), "bound".into()));
        assert!(store.stage_lease(lease(old, "10.0.0.51"), 0).unwrap());
        assert!(store.stage_release(old, ip("10.0.0.51")));
        assert!(!store.stage_event(mac("52:54:00:00:00:09"), bound("10.0.0.52"), "x".into()));
        // Leases show at once; the machine only once it is written.
        assert_eq!(store.lease_of(new).unwrap().ip, ip("10.0.0.50"));
        assert!(!store.knows_mac(new));
        store.flush().unwrap();
        assert!(store.knows_mac(new));
        assert_eq!(store.discoveries_pending(), 0);
        assert!(!store.knows_mac(unknown), "not discovering: not recorded");
        // Within the minute, the same sighting is nothing new; another arch is.
        let later = t0 + time::Duration::seconds(30);
        assert_eq!(
            store.stage_seen(old, sighting(later, 7), true),
            Seen::Nothing
        );
        assert_eq!(
            store.stage_seen(old, sighting(later, 0), true),
            Seen::Staged
        );
        store.flush().unwrap();
    }
    let store = Store::open(dir.path()).unwrap();
    let seen = |m| store.get(&[NodeKey::Mac(m)]).unwrap().last_seen.unwrap();
    assert_eq!(seen(new), sighting(t0, 7));
    assert_eq!(seen(old).arch, Some(0));
    assert_eq!(store.lease_of(new).unwrap().ip, ip("10.0.0.50"));
    assert_eq!(store.lease_at(ip("10.0.0.51")), None, "released");
    let history = store.events(&[NodeKey::Mac(new)]).unwrap();
    let kinds: Vec<_> = history.iter().map(|e| e.message.as_str()).collect();
    assert_eq!(kinds, ["seen on the network", "bound"]);
    assert_eq!(history[1].kind, bound("10.0.0.50"));
}

#[test]
fn delete_frees_everything() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store
        .create_node(&new_node("52:54:00:00:00:01", "kube01", "10.0.0.1"))
        .unwrap();
    store.delete_node(&host("kube01")).unwrap();
    assert!(store.list_nodes().unwrap().is_empty());
    assert_eq!(store.events.len(), 0);
    store
        .create_node(&new_node("52:54:00:00:00:01", "kube01", "10.0.0.1"))
        .unwrap();
}

#[test]
fn newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path()).unwrap();
        store
            .db
            .open_tree("meta")
            .unwrap()
            .insert("schema_version", &99u32.to_be_bytes())
            .unwrap();
        store.db.flush().unwrap();
    }
    match Store::open(dir.path()) {
        Err(StoreError::SchemaTooNew { found: 99, .. }) => {}
        other => panic!("expected SchemaTooNew, got {:?}", other.err()),
    }
}

#[test]
fn a_truncated_registry_is_reported_damaged_not_opened_empty() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path()).unwrap();
        for batch in 0..8u32 {
            let machines: Vec<(MacAddr, Option<Sighting>)> = (0..1000u32)
                .map(|i| {
                    let b = (batch * 1000 + i).to_be_bytes();
                    (MacAddr::new([0x52, 0x54, b[0], b[1], b[2], b[3]]), None)
                })
                .collect();
            store.record_discovered_many(&machines).unwrap();
        }
        store.flush().unwrap();
    }
    let db = dir.path().join("db");
    let whole = std::fs::read(&db).unwrap();
    std::fs::write(&db, &whole[..whole.len() / 2]).unwrap();
    // sled opens it as an empty database, or panics reading it ("tried to serialize
    // Uninitialized", depending on where the cut falls); either way the store must not start
    // over empty.
    match Store::open(dir.path()) {
        Err(StoreError::Damaged { detail, .. }) => assert!(!detail.is_empty()),
        Err(other) => panic!("expected Damaged, got {other}"),
        // Where the cut falls, sled may instead recover the records before it (a known
        // limitation, docs/src/operations.md: backups); what must never happen is an empty fresh start.
        Ok(s) => assert!(
            !s.list_nodes().unwrap().is_empty(),
            "a truncated registry was opened empty"
        ),
    }
}

fn seen_at(at: OffsetDateTime) -> Option<Sighting> {
    Some(Sighting {
        at,
        arch: Some(7),
        vendor_class: None,
    })
}

#[test]
fn evicted_machines_leave_no_tombstone_for_the_daemons_life() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store.set_discovery_limits(DiscoveryLimits {
        max: 16,
        ..DiscoveryLimits::default()
    });
    let kube01 = store
        .create_node(&new_node("52:54:00:00:00:01", "kube01", "10.0.0.1"))
        .unwrap();
    let t0 = OffsetDateTime::now_utc();
    // A LAN client inventing MACs: 3,008 machines through a cap of 16, 16 at a time.
    for batch in 0..188 {
        let machines: Vec<(MacAddr, Option<Sighting>)> = (0..16u32)
            .map(|i| {
                let n = batch * 16 + i;
                (
                    MacAddr::new([2, 1, 0, (n >> 16) as u8, (n >> 8) as u8, n as u8]),
                    seen_at(t0 + time::Duration::seconds(i64::from(n))),
                )
            })
            .collect();
        assert_eq!(store.record_discovered_many(&machines).unwrap().len(), 16);
    }
    assert_eq!(store.discovery_counts().snapshot()[2].1, 3008 - 16);
    assert!(
        store.view().tombstones() < view::TOMBSTONES_KEPT,
        "{} tombstones",
        store.view().tombstones()
    );
    // Pruning kept what the live nodes need: an edit still applies, the registry is whole.
    store
        .update_node(
            &host("kube01"),
            &NodePatch {
                labels: Some([("rack".into(), "b".into())].into_iter().collect()),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(store.get(&host("kube01")).unwrap().labels["rack"], "b");
    assert_eq!(store.list_nodes().unwrap().len(), 17);
    assert_eq!(
        store.get(&host("kube01")).unwrap().created_at,
        kube01.created_at
    );
}

#[test]
fn discovered_machines_stay_under_the_cap_the_longest_unseen_evicted_first() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store.set_discovery_limits(DiscoveryLimits {
        max: 3,
        ..DiscoveryLimits::default()
    });
    store
        .create_node(&new_node("52:54:00:00:00:01", "kube01", "10.0.0.1"))
        .unwrap();
    let t0 = OffsetDateTime::now_utc();
    let mac = |i: u8| MacAddr::new([2, 0, 0, 0, 0, i]);
    // Seen at t0+3, t0+1, t0+2 minutes.
    let first: Vec<(MacAddr, Option<Sighting>)> = [(1, 3), (2, 1), (3, 2)]
        .into_iter()
        .map(|(i, m)| (mac(i), seen_at(t0 + time::Duration::minutes(m))))
        .collect();
    assert_eq!(store.record_discovered_many(&first).unwrap().len(), 3);
    // Two more: the two unseen the longest (2, then 3) go, with their histories.
    let more = vec![(mac(4), seen_at(t0)), (mac(5), seen_at(t0))];
    assert_eq!(store.record_discovered_many(&more).unwrap().len(), 2);
    let left: Vec<MacAddr> = store
        .list_nodes()
        .unwrap()
        .into_iter()
        .filter(|n| n.state == NodeState::Discovered)
        .map(|n| n.mac)
        .collect();
    assert_eq!(left.len(), 3, "{left:?}");
    assert!(left.contains(&mac(1)) && !left.contains(&mac(2)) && !left.contains(&mac(3)));
    assert!(store.events(&[NodeKey::Mac(mac(2))]).is_err());
    assert_eq!(
        store.list_nodes().unwrap().len(),
        4,
        "the registered node stays"
    );
    let counts = store.discovery_counts().snapshot();
    assert_eq!(counts[0], ("recorded", 5));
    assert_eq!(counts[2], ("evicted", 2));
    // The evicted ones are gone on disk too.
    drop(store);
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.list_nodes().unwrap().len(), 4);
}

#[test]
fn discovered_machines_unseen_too_long_are_forgotten_and_new_ones_are_rate_limited() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store.set_discovery_limits(DiscoveryLimits {
        per_minute: 2,
        ..DiscoveryLimits::default()
    });
    store
        .create_node(&new_node("52:54:00:00:00:01", "kube01", "10.0.0.1"))
        .unwrap();
    let mac = |i: u8| MacAddr::new([2, 0, 0, 0, 0, i]);
    assert!(store.record_discovered(mac(1)).unwrap());
    assert!(store.record_discovered(mac(2)).unwrap());
    assert!(!store.record_discovered(mac(3)).unwrap(), "over the rate");
    assert!(!store.knows_mac(mac(3)));
    assert_eq!(store.discovery_counts().snapshot()[1], ("rate_limited", 1));
    // A week and a day later: the discovered are forgotten, the registered node is not.
    let later = OffsetDateTime::now_utc() + time::Duration::days(8);
    assert_eq!(store.forget_stale_discovered(later).unwrap(), 2);
    assert_eq!(store.forget_stale_discovered(later).unwrap(), 0);
    let nodes = store.list_nodes().unwrap();
    assert_eq!(nodes.len(), 1);
    assert_eq!(nodes[0].state, NodeState::Registered);
    assert_eq!(store.discovery_counts().snapshot()[3], ("expired", 2));
}

#[test]
fn a_backup_restores_the_same_registry_and_a_damaged_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let registry = dir.path().join("registry");
    let store = Store::open(&registry).unwrap();
    for i in 1..=5u8 {
        store
            .create_node(&new_node(
                &format!("52:54:00:00:00:0{i}"),
                &format!("kube0{i}"),
                &format!("10.0.0.{i}"),
            ))
            .unwrap();
    }
    store
        .record_discovered(MacAddr::new([2, 0, 0, 0, 0, 9]))
        .unwrap();
    let nodes = store.list_nodes().unwrap();
    let events = store.events(&host("kube03")).unwrap();
    let bytes = store.backup().unwrap();
    // Changes after the backup are not in it.
    store
        .create_node(&new_node("52:54:00:00:00:42", "late", "10.0.0.42"))
        .unwrap();
    drop(store);

    // Damaged copies are refused, and the registry is untouched.
    let truncated = &bytes[..bytes.len() / 2];
    assert!(Store::restore(&registry, truncated).is_err());
    let text = String::from_utf8(bytes.clone()).unwrap();
    let mut flipped = bytes.clone();
    let at = text.find("\"nodes\":[[\"").unwrap() + 12;
    flipped[at] = if flipped[at] == b'A' { b'B' } else { b'A' };
    let err = Store::restore(&registry, &flipped).unwrap_err().to_string();
    assert!(err.contains("checksum"), "{err}");
    assert_eq!(
        Store::open(&registry).unwrap().list_nodes().unwrap().len(),
        7
    );

    let restored = Store::restore(&registry, &bytes).unwrap();
    assert_eq!(restored.nodes, 6);
    let previous = restored.previous.expect("the replaced registry is kept");
    assert_eq!(
        Store::open(&previous).unwrap().list_nodes().unwrap().len(),
        7
    );
    let store = Store::open(&registry).unwrap();
    assert_eq!(store.list_nodes().unwrap(), nodes);
    assert_eq!(store.events(&host("kube03")).unwrap(), events);
    // The indexes were rebuilt: uniqueness holds, lookups work.
    assert!(store.get(&host("kube05")).is_ok());
    assert!(matches!(
        store.create_node(&new_node("52:54:00:00:00:01", "other", "10.0.0.77")),
        Err(StoreError::Conflict { field: "mac", .. })
    ));
    assert!(store.get(&host("late")).is_err());
}

fn feed_seqs(since: Since) -> Vec<(u64, String, bool)> {
    match since {
        Since::Items(items) => items
            .iter()
            .map(|i| {
                (
                    i.seq,
                    i.mac.to_string(),
                    matches!(i.change, FeedChange::Removed { .. }),
                )
            })
            .collect(),
        Since::Reset { head } => panic!("reset to {head}"),
    }
}

#[test]
fn the_feed_resumes_after_any_position_in_this_life_and_the_next() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let start = store.feed_head();
    store
        .create_node(&new_node("52:54:00:00:00:01", "kube01", "10.0.0.1"))
        .unwrap();
    store
        .create_node(&new_node("52:54:00:00:00:02", "kube02", "10.0.0.2"))
        .unwrap();
    store
        .transition(&host("kube01"), NodeState::Installing, "script", None)
        .unwrap();
    store.delete_node(&host("kube02")).unwrap();
    let all = feed_seqs(store.feed_page(start, 100).unwrap());
    assert_eq!(all.len(), 4, "{all:?}");
    assert!(all.windows(2).all(|w| w[0].0 < w[1].0), "in order: {all:?}");
    assert!(all[3].2, "the removal comes last: {all:?}");
    // Resuming after the second item gives exactly the rest.
    assert_eq!(feed_seqs(store.feed_page(all[1].0, 100).unwrap()), all[2..]);
    assert_eq!(store.feed_head(), all[3].0);
    drop(store);

    // After a restart the stored events are read back (removals are not stored, and the
    // removed node's history went with it); new ones follow them.
    let store = Store::open(dir.path()).unwrap();
    let back = feed_seqs(store.feed_page(start, 100).unwrap());
    assert_eq!(back, vec![all[0].clone(), all[2].clone()]);
    store
        .transition(&host("kube01"), NodeState::Installed, "callback", None)
        .unwrap();
    let after = feed_seqs(store.feed_page(all[2].0, 100).unwrap());
    assert_eq!(after.len(), 1);
    assert!(after[0].0 > all[3].0);
    // Read back a page at a time: one item per page, none missed, none twice.
    let mut paged = Vec::new();
    let mut cursor = start;
    loop {
        let page = feed_seqs(store.feed_page(cursor, 1).unwrap());
        assert!(page.len() <= 1);
        let Some(last) = page.last() else { break };
        cursor = last.0;
        paged.extend(page);
    }
    assert_eq!(paged, [back.clone(), after.clone()].concat());
    // The backlog is counted without reading it.
    assert_eq!(store.feed_backlog(start).unwrap(), 3);
    assert_eq!(store.feed_backlog(all[2].0).unwrap(), 1);
    // A position this registry never gave out: reload too.
    assert!(matches!(
        store.feed_page(u64::MAX / 2, 100).unwrap(),
        Since::Reset { .. }
    ));
}

#[test]
fn an_ended_cluster_is_forgotten_whole() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("registry")).unwrap();
    store.set_cluster_initialized("cp1").unwrap();
    store.record_join_token("w1", "abcdef").unwrap();
    let inventory: crate::model::AddonInventory =
        serde_json::from_value(serde_json::json!({"objects": [{
            "api_version": "v1", "kind": "Namespace", "name": "x", "hash": "h",
            "uid": "u", "generation": 1, "resource_version": "1", "fields": "f"
        }]}))
        .unwrap();
    store.set_addon_inventory("dashboard", &inventory).unwrap();
    assert_eq!(store.addons_applied().unwrap(), ["dashboard"]);

    store.reset_cluster_state().unwrap();
    drop(store);
    // Durable: a restart finds no cluster, no token, no inventory.
    let store = Store::open(&dir.path().join("registry")).unwrap();
    assert_eq!(store.cluster_state().unwrap().initialized_by, None);
    assert_eq!(store.join_token("w1").unwrap(), None);
    assert!(store.addons_applied().unwrap().is_empty());
}

/// Takes a fresh node through the boot flow to `state` (a cluster state past `booted`).
fn walk_to(store: &Store, keys: &[NodeKey], path: &[NodeState]) {
    for state in path {
        store.transition(keys, *state, "test", None).unwrap();
    }
}

/// A store holding kube01, taken to `joining`.
fn joining_node() -> (tempfile::TempDir, Store, Vec<NodeKey>) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store
        .create_node(&new_node("52:54:00:00:00:01", "kube01", "10.0.0.1"))
        .unwrap();
    let keys = host("kube01");
    walk_to(
        &store,
        &keys,
        &[
            NodeState::Installing,
            NodeState::Installed,
            NodeState::Booted,
            NodeState::Joining,
        ],
    );
    (dir, store, keys)
}

#[test]
fn a_step_whose_node_changed_under_it_stops_instead_of_overwriting() {
    let (_dir, store, keys) = joining_node();
    // The operator reinstalls the node while its join runs; the join then fails (its SSH
    // session dropped): the registered node must stay registered.
    store
        .transition(&keys, NodeState::Registered, "reinstall", None)
        .unwrap();
    let err = store
        .transition_from(
            &keys,
            &[NodeState::Joining, NodeState::Joined],
            NodeState::Failed,
            "join failed",
            None,
        )
        .unwrap_err();
    assert!(matches!(err, StoreError::Stale(_)), "{err}");
    assert!(err.to_string().contains("is registered now"), "{err}");
    assert_eq!(store.get(&keys).unwrap().state, NodeState::Registered);
    // The same write from the state it expects goes through.
    walk_to(
        &store,
        &keys,
        &[
            NodeState::Installing,
            NodeState::Installed,
            NodeState::Booted,
        ],
    );
    store
        .transition_from(
            &keys,
            &[NodeState::Booted],
            NodeState::Joining,
            "join",
            None,
        )
        .unwrap();
}

#[test]
fn a_cluster_nodes_identity_is_not_edited_under_it() {
    let (_dir, store, keys) = joining_node();
    for patch in [
        NodePatch {
            hostname: Some("kube99".parse().unwrap()),
            ..NodePatch::default()
        },
        NodePatch {
            mac: Some("52:54:00:00:00:99".parse().unwrap()),
            ..NodePatch::default()
        },
        NodePatch {
            ip: Some("10.0.0.99".parse().unwrap()),
            ..NodePatch::default()
        },
        NodePatch {
            role: Some(Role::ControlPlane),
            ..NodePatch::default()
        },
    ] {
        let err = store.update_node(&keys, &patch).unwrap_err();
        assert!(matches!(err, StoreError::InCluster { .. }), "{err}");
        assert!(err.to_string().contains("lacave node rm"), "{err}");
    }
    // Labels are the cluster's to follow; the same name given again is no change.
    store
        .update_node(
            &keys,
            &NodePatch {
                labels: Some(
                    [("zone".to_string(), "b".to_string())]
                        .into_iter()
                        .collect(),
                ),
                hostname: Some("kube01".parse().unwrap()),
                ..NodePatch::default()
            },
        )
        .unwrap();
    // Reinstalled, it is the operator's again.
    store
        .transition(&keys, NodeState::Registered, "reinstall", None)
        .unwrap();
    store
        .update_node(
            &keys,
            &NodePatch {
                hostname: Some("kube99".parse().unwrap()),
                ..NodePatch::default()
            },
        )
        .unwrap();
}

#[test]
fn a_nodes_registry_id_names_it_through_every_edit() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store
        .create_node(&new_node("52:54:00:00:00:01", "kube01", "10.0.0.1"))
        .unwrap();
    let id = store.node_id(&host("kube01")).unwrap();
    store
        .update_node(
            &host("kube01"),
            &NodePatch {
                hostname: Some("kube02".parse().unwrap()),
                mac: Some("52:54:00:00:00:02".parse().unwrap()),
                ..NodePatch::default()
            },
        )
        .unwrap();
    let by_id = [NodeKey::Id(id)];
    assert_eq!(
        store.get(&by_id).unwrap().hostname.unwrap().as_str(),
        "kube02"
    );
    store
        .transition(&by_id, NodeState::Installing, "ipxe", None)
        .unwrap();
    store.delete_node(&by_id).unwrap();
    assert!(matches!(store.get(&by_id), Err(StoreError::NotFound(_))));
    assert!(
        store
            .transition(&by_id, NodeState::Installed, "x", None)
            .is_err()
    );
}

#[test]
fn history_retention_keeps_each_nodes_newest_events() {
    use super::settings::HistoryLimits;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store
        .create_node(&new_node("52:54:00:00:00:01", "kube01", "10.0.0.1"))
        .unwrap();
    store
        .create_node(&new_node("52:54:00:00:00:02", "kube02", "10.0.0.2"))
        .unwrap();
    for i in 0..30 {
        store
            .record_event(
                &host("kube01"),
                EventKind::Updated { fields: vec![] },
                format!("step {i}"),
            )
            .unwrap();
    }
    let limits = HistoryLimits {
        max_per_node: 10,
        max_age: Some(time::Duration::days(30)),
    };
    let now = time::OffsetDateTime::now_utc();
    let before02 = store.events(&host("kube02")).unwrap();
    assert_eq!(store.prune_history(limits, now).unwrap(), 21);
    let kept = store.events(&host("kube01")).unwrap();
    assert_eq!(kept.len(), 10);
    assert_eq!(
        kept.last().unwrap().message,
        "step 29",
        "the newest are kept"
    );
    assert_eq!(kept.first().unwrap().message, "step 20");
    assert_eq!(store.events(&host("kube02")).unwrap(), before02);
    // A year later: only each node's newest event is left.
    let later = now + time::Duration::days(365);
    store.prune_history(limits, later).unwrap();
    assert_eq!(store.events(&host("kube01")).unwrap().len(), 1);
    assert_eq!(store.events(&host("kube02")).unwrap().len(), 1);
    // Nothing more to do: a second pass removes nothing.
    assert_eq!(store.prune_history(limits, later).unwrap(), 0);
}

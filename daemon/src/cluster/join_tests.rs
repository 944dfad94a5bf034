//! The join loop's state machine with its outside worlds faked (`fakes.rs`): which joins
//! start and in what order, what a failed, late or abandoned step does to the registry,
//! readiness, label backoff, removal and the cluster's end. The lab tests
//! (`integration-tests/tests/cluster.rs`) run the same loop against real sshd, kubeadm and
//! API servers.

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::fakes::{FakeCluster, FakeShells, Reply};
use super::join::{Joiner, RemovalError};
use super::pki::ClusterPki;
use crate::boot::templates::Templates;
use crate::model::{MacAddr, NewNode, Node, NodeKey, NodeState, Role};
use crate::store::Store;

const HOST_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFQ7o4JPTa6wVZ7Gt7DkTdfyR3dQZs8gdXSXGA4cFwhu node";

struct World {
    joiner: Arc<Joiner>,
    store: Store,
    shells: Arc<FakeShells>,
    cluster: Arc<FakeCluster>,
    cancel: CancellationToken,
    _dir: tempfile::TempDir,
}

fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let config = crate::config::Config::from_toml(
        "state_dir = \"/x\"\n[cluster]\nenabled = true\n",
        Path::new("test.toml"),
    )
    .unwrap();
    let store = Store::open(&dir.path().join("registry")).unwrap();
    let cluster_dir = dir.path().join("cluster");
    crate::secrets::create_private_dir(&cluster_dir).unwrap();
    let pki = ClusterPki::load_or_create(&cluster_dir.join("pki")).unwrap();
    let shells = Arc::new(FakeShells::default());
    let cluster = Arc::new(FakeCluster::default());
    let cancel = CancellationToken::new();
    let joiner = Joiner::new(
        config.cluster.clone(),
        cluster_dir,
        store.clone(),
        pki,
        Templates::load(None).unwrap(),
        Arc::new(shells.clone()),
        Arc::new(cluster.clone()),
        cancel.clone(),
    )
    .unwrap();
    World {
        joiner,
        store,
        shells,
        cluster,
        cancel,
        _dir: dir,
    }
}

fn ip(i: u8) -> IpAddr {
    IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 10 + i))
}

fn keys(name: &str) -> Vec<NodeKey> {
    vec![NodeKey::Hostname(name.parse().unwrap())]
}

impl World {
    /// Registers `name` and takes it to `booted` with a pinned host key, as its callbacks do.
    fn booted(&self, i: u8, name: &str, role: Role) -> Node {
        self.store
            .create_node(&NewNode {
                mac: MacAddr::new([0x52, 0x54, 0, 0, 0, i]),
                hostname: name.parse().unwrap(),
                ip: ip(i).to_string().parse().unwrap(),
                role,
                labels: [("disk".to_string(), "ssd".to_string())]
                    .into_iter()
                    .collect(),
                install_disk: None,
                boot_file: None,
            })
            .unwrap();
        for state in [NodeState::Installing, NodeState::Installed] {
            self.store
                .transition(&keys(name), state, "test", None)
                .unwrap();
        }
        self.store
            .transition_with(&keys(name), NodeState::Booted, "booted", None, |n| {
                n.ssh_host_key = Some(HOST_KEY.into());
                Ok(())
            })
            .unwrap()
    }

    fn id(&self, name: &str) -> crate::model::NodeId {
        self.store.node_id(&keys(name)).unwrap()
    }

    fn state(&self, name: &str) -> NodeState {
        self.store.get(&keys(name)).unwrap().state
    }

    /// Ticks the loop until `done` holds (each tick lets the join tasks run).
    async fn until(&self, what: &str, done: impl Fn(&World) -> bool) {
        for _ in 0..400 {
            if done(self) {
                return;
            }
            self.joiner.tick().await;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!(
            "{what}: never; states {:?}",
            self.store
                .list_nodes()
                .unwrap()
                .iter()
                .map(|n| (n.display_name(), n.state, n.failure.clone()))
                .collect::<Vec<_>>()
        );
    }

    /// Ticks until node `i` ran a command starting with `prefix`.
    async fn until_ran(&self, i: u8, prefix: &str) {
        self.until(prefix, |w| {
            w.shells
                .commands(ip(i))
                .iter()
                .any(|c| c.starts_with(prefix))
        })
        .await;
    }

    fn history(&self, name: &str) -> String {
        self.store
            .events(&keys(name))
            .unwrap()
            .iter()
            .map(|e| format!("{:?} {}\n", e.kind, e.message))
            .collect()
    }
}

#[tokio::test]
async fn a_cluster_forms_the_first_control_plane_first_and_every_token_goes() {
    let w = world();
    w.booted(1, "cp1", Role::ControlPlane);
    w.booted(2, "w1", Role::Worker);
    w.booted(3, "cp2", Role::ControlPlane);
    w.until("cp1 joined", |w| w.state("cp1") == NodeState::Joined)
        .await;
    // Nothing else started while the cluster did not exist.
    assert!(w.shells.commands(ip(2)).is_empty());
    assert!(w.shells.commands(ip(3)).is_empty());
    let cp1 = w.shells.commands(ip(1));
    assert_eq!(cp1[0], "kubeadm reset -f", "{cp1:?}");
    assert!(cp1.iter().any(|c| c == "upload /etc/kubernetes/pki/ca.key"));
    assert!(
        cp1.iter()
            .any(|c| c.starts_with("kubeadm init --skip-token-print --config")),
        "{cp1:?}"
    );
    // The daemon connected to the API server it just made.
    w.until("connected", |w| {
        !w.cluster.connected.lock().unwrap().is_empty()
    })
    .await;
    assert!(w.cluster.connected.lock().unwrap()[0].contains("10.0.0.11:6443"));

    w.cluster.set_ready("cp1", true);
    w.until("cp1 ready", |w| w.state("cp1") == NodeState::Ready)
        .await;
    w.until("the rest joined", |w| {
        w.state("w1") == NodeState::Joined && w.state("cp2") == NodeState::Joined
    })
    .await;
    for (i, name) in [(2, "w1"), (3, "cp2")] {
        let ran = w.shells.commands(ip(i));
        assert_eq!(ran[0], "kubeadm reset -f", "{name}: {ran:?}");
        assert!(ran.iter().any(|c| c.starts_with("kubeadm join --config")));
        let pki = ran
            .iter()
            .any(|c| c.starts_with("upload /etc/kubernetes/pki/"));
        assert_eq!(
            pki,
            name == "cp2",
            "only control planes get the PKI: {ran:?}"
        );
    }
    assert_eq!(
        w.cluster.tokens.lock().unwrap().len(),
        2,
        "one token per join"
    );
    w.cluster.set_ready("w1", true);
    w.cluster.set_ready("cp2", true);
    w.until("all ready", |w| {
        w.state("w1") == NodeState::Ready && w.state("cp2") == NodeState::Ready
    })
    .await;
    assert!(
        w.cluster.tokens.lock().unwrap().is_empty(),
        "tokens deleted once Ready"
    );
    // The registry's labels reach the Nodes, with the role label.
    w.until("labels", |w| w.cluster.labels.lock().unwrap().len() == 3)
        .await;
    let labels = w.cluster.labels.lock().unwrap().clone();
    assert_eq!(labels["w1"]["disk"], "ssd");
    assert_eq!(labels["w1"]["node-role.kubernetes.io/worker"], "worker");
    assert_eq!(
        w.store.cluster_state().unwrap().initialized_by.as_deref(),
        Some("cp1")
    );
}

/// A cluster with cp1 Ready and w1 Ready (labels applied), for the tests below.
async fn formed() -> World {
    let w = world();
    w.booted(1, "cp1", Role::ControlPlane);
    w.cluster.set_ready("cp1", true);
    w.until("cp1 ready", |w| w.state("cp1") == NodeState::Ready)
        .await;
    w.booted(2, "w1", Role::Worker);
    // Its Node appears once kubeadm join registered it (one there before is an earlier
    // join's, which the join deletes).
    w.until("w1 joined", |w| w.state("w1") == NodeState::Joined)
        .await;
    w.cluster.set_ready("w1", true);
    w.until("w1 ready", |w| w.state("w1") == NodeState::Ready)
        .await;
    w
}

/// [`formed`], and w2 booted with a `kubeadm join` that never ends.
async fn hanging_join() -> World {
    let w = formed().await;
    w.shells.reply("kubeadm join", Reply::Hang);
    w.booted(3, "w2", Role::Worker);
    w
}

#[tokio::test]
async fn a_failed_step_fails_the_node_with_its_command_and_no_secret() {
    let w = formed().await;
    w.shells.reply(
        "kubeadm join",
        Reply::Exit(
            1,
            "error execution phase preflight\nkubeadm join kube.lacave:6443 --token abcdef.0123456789abcdef\n".into(),
        ),
    );
    w.booted(3, "w2", Role::Worker);
    w.until("w2 failed", |w| w.state("w2") == NodeState::Failed)
        .await;
    let node = w.store.get(&keys("w2")).unwrap();
    let failure = node.failure.unwrap();
    assert_eq!(failure.phase, "join");
    assert!(
        failure.reason.contains("kubeadm join --config"),
        "{}",
        failure.reason
    );
    assert!(
        failure.reason.contains("abcdef.<redacted>"),
        "{}",
        failure.reason
    );
    let history = w.history("w2");
    assert!(!history.contains("0123456789abcdef"), "{history}");
}

#[tokio::test(start_paused = true)]
async fn a_join_that_ends_after_a_reinstall_does_not_undo_it() {
    let w = hanging_join().await;
    w.until("w2 joining", |w| w.state("w2") == NodeState::Joining)
        .await;
    w.until_ran(3, "kubeadm join").await;
    // The operator reinstalls it (the store allows it; the API waits for the join).
    w.store
        .transition(&keys("w2"), NodeState::Registered, "reinstall", None)
        .unwrap();
    // The join's time runs out: its failure is not recorded over the reinstall.
    tokio::time::sleep(Duration::from_secs(3600)).await;
    w.until("the join ended", |w| !w.joiner.is_joining(w.id("w2")))
        .await;
    assert_eq!(w.state("w2"), NodeState::Registered);
    assert!(
        !w.history("w2").contains("join failed"),
        "{}",
        w.history("w2")
    );
    // The command was stopped on the node, not left running.
    assert!(
        w.shells
            .abandoned
            .lock()
            .unwrap()
            .iter()
            .any(|(a, c)| *a == ip(3) && c.starts_with("kubeadm join"))
    );
}

#[tokio::test(start_paused = true)]
async fn a_join_cancelled_by_shutdown_stops_its_command_and_stays_joining() {
    let w = hanging_join().await;
    w.until_ran(3, "kubeadm join").await;
    w.cancel.cancel();
    for _ in 0..100 {
        if !w.joiner.is_joining(w.id("w2")) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!w.joiner.is_joining(w.id("w2")));
    assert_eq!(
        w.state("w2"),
        NodeState::Joining,
        "retried at the next start"
    );
    assert!(
        w.shells
            .abandoned
            .lock()
            .unwrap()
            .iter()
            .any(|(a, c)| *a == ip(3) && c.starts_with("kubeadm join")),
        "the command's future was dropped, which stops it on the node"
    );
}

#[tokio::test]
async fn a_node_not_ready_when_its_time_is_up_fails_with_the_reason() {
    let w = formed().await;
    w.booted(3, "w2", Role::Worker);
    w.until("w2 joined", |w| w.state("w2") == NodeState::Joined)
        .await;
    // Its Node exists but never turns Ready.
    w.cluster.set_ready("w2", false);
    w.joiner.tick().await;
    assert_eq!(w.state("w2"), NodeState::Joined, "within its time");
    w.joiner
        .backdate_join(w.id("w2"), time::Duration::seconds(901));
    w.joiner.tick().await;
    let node = w.store.get(&keys("w2")).unwrap();
    assert_eq!(node.state, NodeState::Failed);
    let reason = node.failure.unwrap().reason;
    assert!(
        reason.contains("not Ready within cluster.join_timeout_secs (900 s)")
            && reason.contains("its Node is not Ready"),
        "{reason}"
    );
}

#[tokio::test]
async fn ready_comes_and_goes_with_the_node() {
    let w = formed().await;
    w.cluster.set_ready("w1", false);
    w.joiner.tick().await;
    assert_eq!(w.state("w1"), NodeState::NotReady);
    w.cluster.set_ready("w1", true);
    w.joiner.tick().await;
    assert_eq!(w.state("w1"), NodeState::Ready);
    assert!(w.history("w1").contains("its Node is not Ready"));
}

#[tokio::test]
async fn a_failing_label_sync_backs_off() {
    let w = formed().await;
    *w.cluster.labels_fail.lock().unwrap() = true;
    w.store
        .update_node(
            &keys("w1"),
            &crate::model::NodePatch {
                labels: Some(
                    [("zone".to_string(), "b".to_string())]
                        .into_iter()
                        .collect(),
                ),
                ..Default::default()
            },
        )
        .unwrap();
    let before = w.cluster.calls().len();
    for _ in 0..40 {
        w.joiner.tick().await;
    }
    let tries = w.cluster.calls()[before..]
        .iter()
        .filter(|c| *c == "labels w1")
        .count();
    assert_eq!(tries, 1, "40 ticks within a second: one try, then a wait");
}

#[tokio::test]
async fn a_removal_says_what_happened_and_leaves_no_node_cordoned() {
    let w = formed().await;
    let w1 = w.store.get(&keys("w1")).unwrap();
    let resets = || {
        w.shells
            .commands(ip(2))
            .iter()
            .filter(|c| *c == "kubeadm reset -f")
            .count()
    };
    let reset_by_join = resets();
    *w.cluster.drain_times_out.lock().unwrap() = true;
    let before = w.cluster.calls().len();
    match w.joiner.remove(&w1, false).await {
        Err(e @ RemovalError::Timeout(_)) => {
            assert!(e.to_string().contains("drain w1"), "{e}");
            assert!(e.to_string().contains("schedulable again"), "{e}");
        }
        other => panic!("expected a drain timeout, got {other:?}"),
    }
    assert_eq!(
        w.cluster.calls()[before..],
        ["cordon w1", "drain w1", "uncordon w1"]
    );
    assert!(w.cluster.cordoned.lock().unwrap().is_empty());
    assert_eq!(
        resets(),
        reset_by_join,
        "a removal that stopped resets nothing"
    );

    *w.cluster.drain_times_out.lock().unwrap() = false;
    let before = w.cluster.calls().len();
    let done = w.joiner.remove(&w1, false).await.unwrap();
    assert!(done.iter().any(|d| d == "deleted its Node"), "{done:?}");
    assert!(done.iter().any(|d| d == "ran kubeadm reset -f"), "{done:?}");
    assert_eq!(
        w.cluster.calls()[before..],
        ["cordon w1", "drain w1", "delete w1"]
    );
}

#[tokio::test]
async fn the_last_control_plane_removed_with_force_ends_the_cluster() {
    let w = formed().await;
    let cp1 = w.store.get(&keys("cp1")).unwrap();
    match w.joiner.remove(&cp1, false).await {
        Err(RemovalError::Conflict(why)) => assert!(why.contains("last control plane"), "{why}"),
        other => panic!("expected a conflict, got {other:?}"),
    }
    let done = w.joiner.remove(&cp1, true).await.unwrap();
    assert!(
        done.last().unwrap().contains("the cluster ended"),
        "{done:?}"
    );
    w.store.delete_node(&keys("cp1")).unwrap();
    assert_eq!(w.store.cluster_state().unwrap().initialized_by, None);
    assert_eq!(w.state("w1"), NodeState::Booted);
    // The next control plane initializes a new cluster, and w1 joins it.
    w.booted(4, "cp3", Role::ControlPlane);
    w.until_ran(4, "kubeadm init").await;
    w.cluster.set_ready("cp3", true);
    w.until("w1 joined again", |w| w.state("w1") == NodeState::Joined)
        .await;
    // Its old Node was deleted before kubeadm join registered it again.
    assert!(w.cluster.calls().contains(&"delete w1".to_string()));
    w.cluster.set_ready("w1", true);
    w.until("both ready", |w| {
        w.state("w1") == NodeState::Ready && w.state("cp3") == NodeState::Ready
    })
    .await;
    assert_eq!(
        w.store.cluster_state().unwrap().initialized_by.as_deref(),
        Some("cp3")
    );
}

#[tokio::test]
async fn an_unreachable_worker_is_removed_and_says_it_was_not_reset() {
    let w = formed().await;
    w.shells.unreachable.lock().unwrap().push(ip(2));
    let w1 = w.store.get(&keys("w1")).unwrap();
    let done = w.joiner.remove(&w1, false).await.unwrap();
    assert!(
        done.iter().any(|d| d.starts_with("not reset (unreachable")),
        "{done:?}"
    );
    assert!(w.cluster.calls().contains(&"delete w1".to_string()));
}

#[tokio::test]
async fn without_the_api_server_a_node_is_not_removed_silently() {
    let w = formed().await;
    w.joiner.drop_api();
    let w1 = w.store.get(&keys("w1")).unwrap();
    match w.joiner.remove(&w1, false).await {
        Err(e @ RemovalError::Unreachable { .. }) => {
            assert!(e.to_string().contains("--force"), "{e}")
        }
        other => panic!("expected 503 material, got {other:?}"),
    }
    assert!(
        w.cluster
            .calls()
            .iter()
            .all(|c| !c.ends_with(" w1") || c == "labels w1")
    );
    // With --force it goes on, and says what it leaves behind.
    let done = w.joiner.remove(&w1, true).await.unwrap();
    assert!(
        done.iter()
            .any(|d| d.contains("left in the cluster") && d.contains("kubectl delete node w1")),
        "{done:?}"
    );
}

/// An upgrade the daemon was running when it stopped is `interrupted` at the next start, with
/// the node and step named; what may follow (resume, not another target) is checked before
/// anything runs; new nodes join at the release the cluster runs, not the configured one.
#[tokio::test]
async fn an_interrupted_upgrade_is_said_so_and_only_resumed() {
    use super::join::{UpgradeError, UpgradeNode, UpgradeRequest, UpgradeStatus};
    let w = world();
    let resume = UpgradeRequest {
        resume: true,
        ..UpgradeRequest::default()
    };
    match w.joiner.start_upgrade(resume.clone()).await {
        Err(UpgradeError::Conflict(m)) => assert!(m.contains("no cluster"), "{m}"),
        other => panic!("{other:?}"),
    }
    w.store.set_cluster_initialized("cp1").unwrap();
    w.store.set_cluster_version("v1.36.3").unwrap();
    assert_eq!(
        w.joiner.joins_at(),
        "v1.36.3",
        "the cluster's, not [cluster]'s v1.37.2"
    );
    match w.joiner.start_upgrade(resume.clone()).await {
        Err(UpgradeError::Conflict(m)) => assert!(m.contains("no upgrade to resume"), "{m}"),
        other => panic!("{other:?}"),
    }
    let node = |name: &str, state: &str, step: Option<&str>| UpgradeNode {
        hostname: name.into(),
        role: "control-plane".into(),
        from: Some("v1.36.3".into()),
        kubeadm: "kubeadm upgrade node".into(),
        state: state.into(),
        step: step.map(Into::into),
        cordoned: step.is_some(),
    };
    w.store
        .set_upgrade_record(&UpgradeStatus {
            state: "running".into(),
            from: "v1.36.3".into(),
            to: "v1.37.2".into(),
            drain_timeout_secs: 300,
            nodes: vec![
                node("cp1", "done", None),
                node("cp2", "running", Some("kubeadm")),
                node("w1", "pending", None),
            ],
            snapshot: Some("etcd-x.db".into()),
            ..UpgradeStatus::default()
        })
        .unwrap();
    assert!(w.joiner.recover_upgrade(), "a running record found");
    let s = w.joiner.upgrade_status().unwrap();
    assert_eq!(s.state, "interrupted");
    assert_eq!(s.failed_node.as_deref(), Some("cp2"));
    let e = s.error.unwrap();
    assert!(
        e.contains("cp2's step \"kubeadm\"") && e.contains("resumes"),
        "{e}"
    );
    // Another target is refused until this one is resumed; a resume names its own target.
    let other = UpgradeRequest {
        to: Some("v1.37.3".into()),
        ..UpgradeRequest::default()
    };
    match w.joiner.start_upgrade(other).await {
        Err(UpgradeError::Conflict(m)) => {
            assert!(m.contains("--resume") && m.contains("cp2"), "{m}")
        }
        other => panic!("{other:?}"),
    }
    let wrong = UpgradeRequest {
        to: Some("v1.37.3".into()),
        resume: true,
        ..UpgradeRequest::default()
    };
    match w.joiner.start_upgrade(wrong).await {
        Err(UpgradeError::Invalid {
            field: "to",
            reason,
        }) => assert!(reason.contains("v1.37.2"), "{reason}"),
        other => panic!("{other:?}"),
    }
    // Without the target's sysext in a mirror, a resume is refused before anything runs.
    match w.joiner.start_upgrade(resume).await {
        Err(UpgradeError::Refused(m)) => assert!(m.contains("mirror"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(w.joiner.upgrade_status().unwrap().state, "interrupted");
    assert!(!w.joiner.is_upgrading());
    w.cancel.cancel();
}

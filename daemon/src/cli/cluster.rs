//! `lacave cluster status|kubeconfig|kubeconfigs|certs|snapshot|inventory`, through the API.

use super::client::{Client, ClientError, Target};
use super::output::{OutputArgs, table};
use super::{ClientArgs, ClusterCommand, SnapshotCommand};
use super::{note, said};
use crate::api::KubeconfigRequest;

pub(super) async fn run_cluster_command(
    args: &ClientArgs,
    command: ClusterCommand,
) -> Result<(), ClientError> {
    let api = Client::new(Target::resolve(args)?)?;
    match command {
        ClusterCommand::PowerOn { wait_secs, no_wait } => {
            return power_on(&api, wait_secs, no_wait).await;
        }
        ClusterCommand::Status { out, watch } => {
            let draw = || async { Ok(status_text(&api.cluster_status().await?, out)) };
            if watch {
                return super::output::watch_changes(&api, draw).await;
            }
            print!("{}", draw().await?);
        }
        ClusterCommand::Kubeconfig {
            user,
            groups,
            ttl,
            oidc,
        } => {
            // With --oidc, a --group or --ttl goes to the daemon, which says why it is refused.
            let request = KubeconfigRequest {
                user: if oidc {
                    user
                } else {
                    Some(user.unwrap_or_else(|| "admin".into()))
                },
                groups: (!groups.is_empty()).then_some(groups),
                ttl: if oidc {
                    ttl
                } else {
                    Some(ttl.unwrap_or_else(|| "24h".into()))
                },
                oidc: oidc.then_some(true),
            };
            print!("{}", api.cluster_kubeconfig(&request).await?);
        }
        ClusterCommand::Kubeconfigs { out } => {
            let records = api.cluster_kubeconfigs().await?;
            if out.machine() {
                out.print(&records);
                return Ok(());
            }
            let now = time::OffsetDateTime::now_utc();
            let when = |t: time::OffsetDateTime| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .unwrap_or_default()
            };
            let rows: Vec<Vec<String>> = records
                .iter()
                .map(|r| {
                    vec![
                        r.user.clone(),
                        r.groups.join(","),
                        when(r.issued_at),
                        when(r.expires_at),
                        if r.expires_at > now {
                            "valid"
                        } else {
                            "expired"
                        }
                        .into(),
                        r.serial.clone(),
                    ]
                })
                .collect();
            print!(
                "{}",
                table(
                    &["USER", "GROUPS", "ISSUED", "EXPIRES", "STATUS", "SERIAL"],
                    &rows
                )
            );
        }
        ClusterCommand::Certs { renew: true, .. } => {
            api.cluster_renew_certs().await?;
            println!(
                "renewal started: each control plane in turn (lacave node events <name> shows its steps; lacave cluster certs the new dates once done)"
            );
        }
        ClusterCommand::Certs { refresh, out, .. } => {
            let report = api.cluster_certs(refresh).await?;
            if out.machine() {
                out.print(&report);
                return Ok(());
            }
            let rows: Vec<Vec<String>> = report
                .certificates
                .iter()
                .map(|c| {
                    vec![
                        c.node.clone(),
                        c.cert.clone(),
                        c.authority.clone().unwrap_or_default(),
                        c.not_after
                            .format(&time::format_description::well_known::Rfc3339)
                            .unwrap_or_default(),
                        c.days_left.to_string(),
                    ]
                })
                .collect();
            print!(
                "{}",
                table(
                    &["NODE", "CERTIFICATE", "CA", "EXPIRES", "DAYS LEFT"],
                    &rows
                )
            );
            for e in &report.errors {
                eprintln!("{}: {}", e.node, e.error);
            }
            if report.certificates.is_empty() && report.errors.is_empty() {
                eprintln!("no certificate checked yet: the cluster is not initialized");
            }
        }
        ClusterCommand::Snapshot { command } => run_snapshot_command(&api, command).await?,
        ClusterCommand::Upgrade {
            to,
            dry_run,
            resume,
            drain_timeout,
            no_wait,
            status,
            out,
        } => {
            if status {
                let s = api.cluster_upgrade_status().await?;
                print_upgrade(&s, out);
                return Ok(());
            }
            let mut request = serde_json::json!({ "dry_run": dry_run, "resume": resume });
            if let Some(to) = &to {
                request["to"] = to.clone().into();
            }
            if let Some(secs) = drain_timeout {
                request["drain_timeout_secs"] = secs.into();
            }
            let started = api.cluster_upgrade(&request).await?;
            if dry_run || no_wait || started.state == "done" {
                print_upgrade(&started, out);
                if dry_run && !out.machine() {
                    note!("(dry run: nothing was changed)");
                }
                return Ok(());
            }
            note!(
                "upgrading from {} to {}: {}",
                started.from,
                started.to,
                started
                    .nodes
                    .iter()
                    .filter(|n| n.state != "done")
                    .map(|n| n.hostname.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            let mut last = String::new();
            loop {
                tokio::time::sleep(std::time::Duration::from_secs(2)).await;
                let s = api.cluster_upgrade_status().await?;
                let now = s
                    .nodes
                    .iter()
                    .map(|n| {
                        format!(
                            "{} {} {}",
                            n.hostname,
                            n.state,
                            n.step.as_deref().unwrap_or("")
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("; ");
                if now != last {
                    for n in &s.nodes {
                        if n.state == "running" {
                            note!("  {}: {}", n.hostname, n.step.as_deref().unwrap_or("…"));
                        }
                    }
                    last = now;
                }
                match s.state.as_str() {
                    "running" => continue,
                    "done" => {
                        print_upgrade(&s, out);
                        return Ok(());
                    }
                    _ => {
                        print_upgrade(&s, out);
                        return Err(ClientError::Protocol(format!(
                            "the upgrade to {} stopped: {}",
                            s.to,
                            s.error.unwrap_or_else(|| s.state.clone())
                        )));
                    }
                }
            }
        }
        ClusterCommand::Inventory { format: _ } => {
            print!("{}", api.cluster_inventory().await?);
        }
    }
    Ok(())
}

async fn run_snapshot_command(api: &Client, command: SnapshotCommand) -> Result<(), ClientError> {
    match command {
        SnapshotCommand::List { out } => {
            let list = api.cluster_snapshots().await?;
            if out.machine() {
                out.print(&list);
                return Ok(());
            }
            let rows: Vec<Vec<String>> = list
                .snapshots
                .iter()
                .map(|s| {
                    vec![
                        s.name.clone(),
                        s.taken_at
                            .format(&time::format_description::well_known::Rfc3339)
                            .unwrap_or_default(),
                        s.node.clone(),
                        s.revision.to_string(),
                        s.size.to_string(),
                        s.trigger.clone(),
                        s.sha256.clone(),
                    ]
                })
                .collect();
            print!(
                "{}",
                table(
                    &[
                        "NAME", "TAKEN", "FROM", "REVISION", "BYTES", "TRIGGER", "SHA256"
                    ],
                    &rows
                )
            );
            let every = match list.interval_minutes {
                0 => "on request only".to_string(),
                m => format!("every {m} minutes"),
            };
            note!("in {} ({every}, the newest {} kept)", list.dir, list.keep);
        }
        SnapshotCommand::Save => {
            let info = api.cluster_save_snapshot().await?;
            println!("{}", info.name);
            note!(
                "etcd snapshot of {} at revision {}: {} bytes, SHA-256 {}",
                info.node,
                info.revision,
                info.size,
                info.sha256
            );
        }
        SnapshotCommand::Restore {
            snapshot,
            yes,
            no_wait,
        } => {
            let name = snapshot_name(api, &snapshot).await?;
            if !yes {
                return Err(ClientError::Protocol(format!(
                    "restoring {name} replaces the cluster's whole state with the snapshot's (what was written since is lost) and rejoins the other control planes: run again with --yes"
                )));
            }
            let started = api.cluster_restore(&name).await?;
            note!(
                "restoring {name} onto {}",
                started.node.as_deref().unwrap_or("?")
            );
            if no_wait {
                return Ok(());
            }
            let mut shown = 0;
            loop {
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                let status = api.cluster_restore_status().await?;
                for step in status.steps.iter().skip(shown) {
                    note!("  {step}");
                }
                shown = status.steps.len();
                match status.state.as_str() {
                    "running" => continue,
                    "done" => {
                        said!(
                            "restored {name}; the other control planes rejoin (lacave cluster status)"
                        );
                        return Ok(());
                    }
                    _ => {
                        return Err(ClientError::Protocol(format!(
                            "the restore of {name} failed: {}",
                            status.error.unwrap_or_else(|| status.state.clone())
                        )));
                    }
                }
            }
        }
    }
    Ok(())
}

/// A snapshot's name from what the operator typed: a name, or a path in the daemon's
/// snapshot directory (a file elsewhere must be copied there first: the daemon reads only
/// its own directory).
async fn snapshot_name(api: &Client, given: &str) -> Result<String, ClientError> {
    if !given.contains('/') {
        return Ok(given.to_string());
    }
    let path = std::path::Path::new(given);
    let dir = api.cluster_snapshots().await?.dir;
    let parent = path
        .parent()
        .and_then(|p| std::fs::canonicalize(p).ok())
        .unwrap_or_default();
    let theirs = std::fs::canonicalize(&dir).unwrap_or_else(|_| dir.clone().into());
    match path.file_name().and_then(|n| n.to_str()) {
        Some(name) if parent == theirs => Ok(name.to_string()),
        _ => Err(ClientError::Protocol(format!(
            "{given} is not in the daemon's snapshot directory {dir}: copy it there (owned by the daemon's user, mode 0600, named *.db) and restore it by name"
        ))),
    }
}

/// An upgrade run: a line, then a row per node.
fn print_upgrade(s: &crate::cluster::join::UpgradeStatus, out: OutputArgs) {
    if out.machine() {
        out.print(s);
        return;
    }
    if s.state == "idle" {
        println!("no upgrade has run");
        return;
    }
    println!(
        "upgrade {} → {}: {}{}",
        if s.from.is_empty() { "?" } else { &s.from },
        s.to,
        s.state,
        s.snapshot
            .as_deref()
            .map(|n| format!(" (etcd snapshot before it: {n})"))
            .unwrap_or_default()
    );
    let rows: Vec<Vec<String>> = s
        .nodes
        .iter()
        .map(|n| {
            vec![
                n.hostname.clone(),
                n.role.clone(),
                n.from.clone().unwrap_or_else(|| "-".into()),
                n.kubeadm.clone(),
                n.state.clone(),
                match (n.step.as_deref(), n.cordoned) {
                    (Some(step), true) => format!("{step} (cordoned)"),
                    (Some(step), false) => step.to_string(),
                    (None, true) => "cordoned".into(),
                    (None, false) => "-".into(),
                },
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &["NODE", "ROLE", "KUBELET", "KUBEADM", "STATE", "STEP"],
            &rows
        )
    );
    if let Some(e) = &s.error {
        eprintln!("{e}");
    }
}

/// `lacave cluster status` as printed: a line, then a row per node (or the API's JSON/YAML).
fn status_text(status: &serde_json::Value, out: OutputArgs) -> String {
    use std::fmt::Write as _;
    if out.machine() {
        return out.render(status);
    }
    let mut s = String::new();
    let text = |v: &serde_json::Value| v.as_str().unwrap_or("-").to_string();
    let _ = writeln!(
        s,
        "cluster {} (Kubernetes {}), endpoint {}, initialized by {}, API server {}",
        text(&status["name"]),
        text(&status["kubernetes_version"]),
        text(&status["endpoint"]),
        text(&status["initialized_by"]),
        text(&status["api_server"]),
    );
    if let Some(why) = status["join_blocked"].as_str() {
        let _ = writeln!(s, "no node joins: {why}");
    }
    let labels = |v: &serde_json::Value| {
        v.as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default()
    };
    let rows: Vec<Vec<String>> = status["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|n| {
            let k = &n["api"];
            vec![
                text(&n["hostname"]),
                text(&n["role"]),
                text(&n["state"]),
                match k["ready"].as_bool() {
                    Some(true) => "Ready".into(),
                    Some(false) => "NotReady".into(),
                    None => "-".into(),
                },
                text(&k["kubelet_version"]),
                k["roles"]
                    .as_array()
                    .map(|r| {
                        r.iter()
                            .filter_map(|x| x.as_str())
                            .collect::<Vec<_>>()
                            .join(",")
                    })
                    .unwrap_or_else(|| "-".into()),
                labels(&n["labels"]),
            ]
        })
        .collect();
    s.push_str(&table(
        &[
            "NODE",
            "ROLE",
            "REGISTRY",
            "KUBERNETES",
            "KUBELET",
            "ROLES",
            "LABELS",
        ],
        &rows,
    ));

    s
}

/// `lacave cluster power-on`: control planes, then workers once a control plane is ready.
async fn power_on(api: &Client, wait_secs: u64, no_wait: bool) -> Result<(), ClientError> {
    let nodes = api.list_nodes().await?;
    let mut with_bmc = Vec::new();
    for node in nodes {
        let name = node.hostname.clone().unwrap_or_else(|| node.mac.clone());
        match api.get_bmc(&name).await {
            Ok(_) => with_bmc.push((name, node.role.clone().unwrap_or_default())),
            Err(ClientError::Refused { code, .. }) if code == "no_bmc" => {}
            Err(e) => return Err(e),
        }
    }
    if with_bmc.is_empty() {
        super::note!(
            "no node has a BMC (lacave node bmc NODE ipmi://… --user …): nothing to power on"
        );
        return Ok(());
    }
    let (control_planes, workers): (Vec<_>, Vec<_>) = with_bmc
        .into_iter()
        .partition(|(_, role)| role == "control-plane");
    let mut failed = Vec::new();
    // All at once: one at a time would let a dead BMC hold up the others for its 20 s.
    let power_all = |names: Vec<String>| async move {
        let mut calls = tokio::task::JoinSet::new();
        for (i, name) in names.into_iter().enumerate() {
            let api = api.clone();
            calls.spawn(async move {
                let result = api.power(&name, "on").await.map(|r| r.state.to_string());
                (i, name, result)
            });
        }
        let mut results = calls.join_all().await;
        // In the order given, whatever order the BMCs answered in.
        results.sort_by_key(|(i, _, _)| *i);
        results
            .into_iter()
            .map(|(_, name, result)| (name, result))
            .collect::<Vec<_>>()
    };
    let planes: Vec<String> = control_planes.iter().map(|(n, _)| n.clone()).collect();
    for (name, result) in power_all(planes.clone()).await {
        match result {
            Ok(state) => super::said!("{name} (control plane): {state}"),
            Err(e) => {
                eprintln!("{name} (control plane): {e}");
                failed.push(name);
            }
        }
    }
    let worker_names: Vec<String> = workers.iter().map(|(n, _)| n.clone()).collect();
    if !worker_names.is_empty()
        && !planes.is_empty()
        && !no_wait
        && api.cluster_status().await.is_ok()
    {
        super::note!(
            "waiting for a control plane to be ready before the workers (up to {wait_secs} s)"
        );
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(wait_secs);
        loop {
            let ready = api
                .list_nodes()
                .await?
                .iter()
                .any(|n| n.role.as_deref() == Some("control-plane") && n.state == "ready");
            if ready {
                break;
            }
            if std::time::Instant::now() >= deadline {
                return Err(ClientError::Refused {
                    status: 504,
                    code: "timeout".into(),
                    detail: format!(
                        "no control plane was ready after {wait_secs} s: the workers stay off \
                         (lacave cluster status; --no-wait powers them on anyway)"
                    ),
                    errors: Vec::new(),
                });
            }
            tokio::time::sleep(std::time::Duration::from_secs(5)).await;
        }
    }
    for (name, result) in power_all(worker_names).await {
        match result {
            Ok(state) => super::said!("{name} (worker): {state}"),
            Err(e) => {
                eprintln!("{name} (worker): {e}");
                failed.push(name);
            }
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(ClientError::Refused {
            status: 502,
            code: "bmc_failed".into(),
            detail: format!("not powered on: {}", failed.join(", ")),
            errors: Vec::new(),
        })
    }
}

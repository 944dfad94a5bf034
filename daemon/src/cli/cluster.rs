//! `lacave cluster status|kubeconfig|kubeconfigs|inventory`, through the API.

use super::client::{Client, ClientError, Target};
use super::output::table;
use super::{ClientArgs, ClusterCommand};
use crate::api::KubeconfigRequest;

pub(super) async fn run_cluster_command(
    args: &ClientArgs,
    command: ClusterCommand,
) -> Result<(), ClientError> {
    let api = Client::new(Target::resolve(args)?)?;
    match command {
        ClusterCommand::Status { json } => {
            let status = api.cluster_status().await?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&status).expect("JSON serializes")
                );
                return Ok(());
            }
            let text = |v: &serde_json::Value| v.as_str().unwrap_or("-").to_string();
            println!(
                "cluster {} (Kubernetes {}), endpoint {}, initialized by {}, API server {}",
                text(&status["name"]),
                text(&status["kubernetes_version"]),
                text(&status["endpoint"]),
                text(&status["initialized_by"]),
                text(&status["api_server"]),
            );
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
            print!(
                "{}",
                table(
                    &[
                        "NODE",
                        "ROLE",
                        "REGISTRY",
                        "KUBERNETES",
                        "KUBELET",
                        "ROLES",
                        "LABELS"
                    ],
                    &rows
                )
            );
        }
        ClusterCommand::Kubeconfig { user, groups, ttl } => {
            let request = KubeconfigRequest {
                user: Some(user),
                groups: (!groups.is_empty()).then_some(groups),
                ttl: Some(ttl),
            };
            print!("{}", api.cluster_kubeconfig(&request).await?);
        }
        ClusterCommand::Kubeconfigs { json } => {
            let records = api.cluster_kubeconfigs().await?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&records).expect("JSON serializes")
                );
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
        ClusterCommand::Certs { refresh, json, .. } => {
            let report = api.cluster_certs(refresh).await?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report).expect("JSON serializes")
                );
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
        ClusterCommand::Inventory { format: _ } => {
            print!("{}", api.cluster_inventory().await?);
        }
    }
    Ok(())
}

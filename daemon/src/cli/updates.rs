//! `lacave updates status`.

use super::client::{Client, ClientError, Target};
use super::output::text;
use super::{ClientArgs, UpdatesCommand};

pub(super) async fn run(args: &ClientArgs, command: UpdatesCommand) -> Result<(), ClientError> {
    let api = Client::new(Target::resolve(args)?)?;
    match command {
        UpdatesCommand::Status { out } => {
            let s = api.updates().await?;
            if out.machine() {
                out.print(&s);
                return Ok(());
            }
            if s["enabled"] != serde_json::Value::Bool(true) {
                println!(
                    "updates are not served ([updates] enabled = false): nodes ask Flatcar's public server"
                );
            }
            match s["target"].as_str() {
                Some(t) => println!("offered release: Flatcar {t} (group {})", text(&s["group"])),
                None => println!("offered release: none: {}", text(&s["target_error"])),
            }
            for g in s["groups"].as_array().into_iter().flatten() {
                match g["target"].as_str() {
                    Some(t) => println!("  group {}: Flatcar {t}", text(&g["group"])),
                    None => println!(
                        "  group {}: none: {}",
                        text(&g["group"]),
                        text(&g["target_error"])
                    ),
                }
            }
            println!(
                "reboot strategy of new nodes: {}",
                s["reboot_strategy"].as_str().unwrap_or("Flatcar's default")
            );
            let nodes = s["nodes"].as_array().cloned().unwrap_or_default();
            if nodes.is_empty() {
                println!("no node has asked for updates yet");
                print_reboots(&s);
                return Ok(());
            }
            let rows: Vec<Vec<String>> = nodes
                .iter()
                .map(|n| {
                    let state = match n["error"].as_str() {
                        Some(e) if n["state"] == "failed" => format!("failed ({e})"),
                        _ => text(&n["state"]),
                    };
                    vec![
                        text(&n["node"]),
                        text(&n["version"]),
                        text(&n["group"]),
                        state,
                        n["target"].as_str().unwrap_or("-").to_string(),
                        text(&n["checked_at"]),
                    ]
                })
                .collect();
            print!(
                "{}",
                super::output::table(
                    &["NODE", "VERSION", "GROUP", "STATE", "TARGET", "LAST CHECK"],
                    &rows
                )
            );
            print_reboots(&s);
        }
        UpdatesCommand::Pause => {
            api.updates_pause(true).await?;
            println!("coordinated reboots paused (lacave updates resume starts them again)");
        }
        UpdatesCommand::Resume => {
            api.updates_pause(false).await?;
            println!("coordinated reboots resumed");
        }
    }
    Ok(())
}

fn print_reboots(s: &serde_json::Value) {
    let r = &s["reboots"];
    if r.is_null() {
        return;
    }
    let when = s["window"].as_str().unwrap_or("any time");
    let state = if let Some(stopped) = r["stopped"].as_str() {
        format!("stopped: {stopped}")
    } else if r["paused"] == serde_json::Value::Bool(true) {
        "paused".to_string()
    } else if s["coordinate_reboots"] == serde_json::Value::Bool(true) {
        format!(
            "on, {when} (UTC), {} worker(s) at a time",
            text(&s["max_unavailable"])
        )
    } else {
        "off ([updates] coordinate_reboots = false)".to_string()
    };
    println!("coordinated reboots: {state}");
    for run in r["running"].as_array().into_iter().flatten() {
        println!(
            "  rebooting {} into Flatcar {}: {}",
            text(&run["hostname"]),
            text(&run["to"]),
            text(&run["step"])
        );
    }
}

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
            println!(
                "reboot strategy of new nodes: {}",
                s["reboot_strategy"].as_str().unwrap_or("Flatcar's default")
            );
            let nodes = s["nodes"].as_array().cloned().unwrap_or_default();
            if nodes.is_empty() {
                println!("no node has asked for updates yet");
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
                        state,
                        n["target"].as_str().unwrap_or("-").to_string(),
                        text(&n["checked_at"]),
                    ]
                })
                .collect();
            print!(
                "{}",
                super::output::table(&["NODE", "VERSION", "STATE", "TARGET", "LAST CHECK"], &rows)
            );
        }
    }
    Ok(())
}

//! `lacave identity status|sync`.

use super::client::{Client, ClientError, Target};
use super::output::text;
use super::{ClientArgs, IdentityCommand};

fn list(v: &serde_json::Value) -> String {
    let items: Vec<String> = v
        .as_array()
        .map(|a| a.iter().map(text).collect())
        .unwrap_or_default();
    if items.is_empty() {
        "none".into()
    } else {
        items.join(", ")
    }
}

pub(super) async fn run(args: &ClientArgs, command: IdentityCommand) -> Result<(), ClientError> {
    let api = Client::new(Target::resolve(args)?)?;
    match command {
        IdentityCommand::Status { out } => {
            let s = api.identity().await?;
            if out.machine() {
                out.print(&s);
                return Ok(());
            }
            println!(
                "realm {} ({}): {}",
                text(&s["realm"]),
                text(&s["state"]),
                text(&s["message"])
            );
            println!("  issuer:   {}", text(&s["issuer"]));
            println!("  client:   {}", text(&s["client_id"]));
            println!("  groups:   {}", list(&s["groups"]));
            println!("  users:    {}", list(&s["users"]));
            println!(
                "  last pass: {} ({} writes; {} since start)",
                text(&s["last_sync"]),
                text(&s["last_changes"]),
                text(&s["changes_total"])
            );
            let events = s["events"].as_array().cloned().unwrap_or_default();
            if !events.is_empty() {
                println!("events:");
                for e in events {
                    println!("  {}  {}", text(&e["at"]), text(&e["message"]));
                }
            }
        }
        IdentityCommand::Sync => {
            api.identity_sync().await?;
            println!("a pass over the realm is started (lacave identity status shows it)");
        }
    }
    Ok(())
}

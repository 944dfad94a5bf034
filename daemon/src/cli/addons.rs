//! `lacave addon list|status|apply|token|images`.

use super::said;
use std::process::ExitCode;

use super::client::{Client, ClientError, Target};
use super::output::{table, text};
use super::{AddonCommand, ClientArgs};

pub(super) async fn run_addon_command(
    args: &ClientArgs,
    command: AddonCommand,
) -> Result<(), ClientError> {
    let api = Client::new(Target::resolve(args)?)?;
    match command {
        AddonCommand::List { out } => {
            let all = api.addons().await?;
            if out.machine() {
                out.print(&all);
                return Ok(());
            }
            let rows: Vec<Vec<String>> = all
                .as_array()
                .into_iter()
                .flatten()
                .map(|a| {
                    vec![
                        text(&a["name"]),
                        if a["enabled"] == true { "on" } else { "off" }.into(),
                        text(&a["state"]),
                        text(&a["objects"]),
                        text(&a["upstream"]),
                        text(&a["message"]),
                    ]
                })
                .collect();
            print!(
                "{}",
                table(
                    &[
                        "ADDON", "ENABLED", "STATE", "OBJECTS", "UPSTREAM", "MESSAGE"
                    ],
                    &rows
                )
            );
        }
        AddonCommand::Status { name, out } => {
            let a = api.addon(&name).await?;
            if out.machine() {
                out.print(&a);
                return Ok(());
            }
            println!(
                "{}: {} ({}), {} objects; {}",
                text(&a["name"]),
                text(&a["state"]),
                if a["enabled"] == true { "on" } else { "off" },
                text(&a["objects"]),
                text(&a["message"])
            );
            println!("  {}", text(&a["description"]));
            for (title, key) in [("not healthy", "unhealthy"), ("conflicts", "conflicts")] {
                let items = a[key].as_array().cloned().unwrap_or_default();
                if !items.is_empty() {
                    println!("{title}:");
                    for i in items {
                        println!("  - {}", text(&i));
                    }
                }
            }
            let events = a["events"].as_array().cloned().unwrap_or_default();
            if !events.is_empty() {
                println!("events:");
                for e in events {
                    println!("  {}  {}", text(&e["at"]), text(&e["message"]));
                }
            }
        }
        AddonCommand::Apply { name } => {
            api.addon_apply(&name).await?;
            said!("{name}: reconcile started (lacave addon status {name})");
        }
        AddonCommand::Token { name, ttl } => {
            println!("{}", api.addon_token(&name, &ttl).await?);
        }
        AddonCommand::Images => unreachable!("handled without a client"),
    }
    Ok(())
}

/// `lacave addon images`: from the embedded add-ons, rendered with placeholder values.
pub(super) fn images() -> ExitCode {
    match crate::addons::catalog::all_images() {
        Ok(images) => {
            for (addon, image) in images {
                println!("{addon}\t{image}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("lacave addon images: {e}");
            ExitCode::FAILURE
        }
    }
}

//! What `lacave node …` prints: aligned tables for people, `--output json|yaml` (the API's
//! shape) for scripts; and the `--output` option every read command takes.

use super::client::{Client, ClientError, Target};
use super::{ClientArgs, NodeCommand, said};
use crate::api::{CreateNodeRequest, EventResponse, NodeResponse};
use crate::model::parse_label;

pub(super) async fn run_node_command(
    args: &ClientArgs,
    command: NodeCommand,
) -> Result<(), ClientError> {
    // Check what can be checked locally before needing a daemon.
    let request = match &command {
        NodeCommand::Add {
            mac,
            hostname,
            ip,
            role,
            labels,
            disk,
            boot_file,
            ..
        } => {
            let parsed = parse_labels(labels)?;
            Some(CreateNodeRequest {
                mac: mac.clone(),
                hostname: hostname.clone(),
                ip: ip.clone(),
                role: role.clone(),
                labels: parsed,
                install_disk: disk.clone(),
                boot_file: boot_file.clone(),
            })
        }
        _ => None,
    };
    let client = Client::new(Target::resolve(args)?)?;
    match command {
        NodeCommand::Add { bmc, .. } => {
            let bmc = bmc_request(bmc)?;
            let node = client
                .create_node(&request.expect("built above for add"))
                .await?;
            said!(
                "registered {} ({}, {}, {}): it installs on its next network boot",
                node.hostname.as_deref().unwrap_or("-"),
                node.mac,
                node.ip.as_deref().unwrap_or("-"),
                node.role.as_deref().unwrap_or("-"),
            );
            if let Some(bmc) = bmc {
                set_bmc_after(
                    &client,
                    &node.mac,
                    node.hostname.as_deref(),
                    bmc,
                    "registered",
                )
                .await?;
            }
        }
        NodeCommand::Edit {
            name,
            mac,
            hostname,
            ip,
            role,
            labels,
            no_labels,
            disk,
            default_disk,
            boot_file,
            default_boot_file,
            bmc,
        } => {
            let bmc = bmc_request(bmc)?;
            let mut patch = serde_json::Map::new();
            for (field, value) in [
                ("mac", mac),
                ("hostname", hostname),
                ("ip", ip),
                ("role", role),
            ] {
                if let Some(v) = value {
                    patch.insert(field.into(), v.into());
                }
            }
            if no_labels || !labels.is_empty() {
                let parsed = parse_labels(&labels)?;
                patch.insert(
                    "labels".into(),
                    serde_json::to_value(parsed).expect("a map of strings serialises"),
                );
            }
            if let Some(d) = disk {
                patch.insert("install_disk".into(), d.into());
            } else if default_disk {
                patch.insert("install_disk".into(), serde_json::Value::Null);
            }
            if let Some(b) = boot_file {
                patch.insert("boot_file".into(), b.into());
            } else if default_boot_file {
                patch.insert("boot_file".into(), serde_json::Value::Null);
            }
            if patch.is_empty() && bmc.is_none() {
                return Err(ClientError::Refused {
                    status: 422,
                    code: "invalid_field".into(),
                    detail: "nothing to change: give at least one option (lacave node edit --help)"
                        .into(),
                    errors: Vec::new(),
                });
            }
            let node = if patch.is_empty() {
                client.get_node(&name).await?
            } else {
                let node = client
                    .update_node(&name, &serde_json::Value::Object(patch))
                    .await?;
                said!(
                    "updated {} ({}, {}, {})",
                    node.hostname.as_deref().unwrap_or("-"),
                    node.mac,
                    node.ip.as_deref().unwrap_or("-"),
                    node.role.as_deref().unwrap_or("-"),
                );
                node
            };
            if let Some(bmc) = bmc {
                set_bmc_after(&client, &node.mac, node.hostname.as_deref(), bmc, "updated").await?;
            }
        }
        NodeCommand::List { out, watch } => {
            let draw = || async {
                let nodes = client.list_nodes().await?;
                Ok(if out.machine() {
                    out.render(&nodes)
                } else {
                    node_table(&nodes)
                })
            };
            if watch {
                return watch_changes(&client, draw).await;
            }
            print!("{}", draw().await?);
        }
        NodeCommand::Show { name, out } => {
            let node = client.get_node(&name).await?;
            let events = client.node_events(&name).await?;
            if out.machine() {
                let value = serde_json::json!({ "node": node, "events": events });
                out.print(&value);
            } else {
                print!("{}", node_details(&node, &events));
            }
        }
        NodeCommand::Rm { name, force } => {
            client.delete_node(&name, force).await?;
            said!("removed {name}");
        }
        NodeCommand::Rejoin { name } => {
            let node = client.rejoin_node(&name).await?;
            said!(
                "{} is {}: the daemon resets it and joins it again",
                node.hostname.as_deref().unwrap_or(&node.mac),
                node.state
            );
        }
        NodeCommand::Reinstall { name, power } => {
            let node = client.reinstall_node(&name, power).await?;
            if power {
                said!(
                    "{} is {}: its next boot is a network boot and it was power-cycled: it reinstalls now",
                    node.hostname.as_deref().unwrap_or(&node.mac),
                    node.state
                );
            } else {
                said!(
                    "{} is {}: it reinstalls on its next network boot",
                    node.hostname.as_deref().unwrap_or(&node.mac),
                    node.state
                );
            }
        }
        NodeCommand::Bmc {
            name,
            bmc_url,
            user,
            password_file,
            password_stdin,
            remove,
        } => {
            if remove {
                client.remove_bmc(&name).await?;
                said!("{name}: BMC forgotten (and its credentials)");
            } else if let Some(url) = bmc_url {
                let missing = |what: &str| ClientError::Refused {
                    status: 422,
                    code: "invalid_field".into(),
                    detail: format!("setting a BMC needs {what}"),
                    errors: Vec::new(),
                };
                let user = user.ok_or_else(|| missing("--user"))?;
                let password = read_password(password_file.as_deref(), password_stdin)?
                    .ok_or_else(|| missing("--password-file FILE or --password-stdin"))?;
                let bmc = client
                    .set_bmc(
                        &name,
                        &crate::api::BmcRequest {
                            url,
                            user,
                            password,
                        },
                    )
                    .await?;
                said!("{name}: BMC {} (user {})", bmc.url, bmc.user);
            } else {
                let bmc = client.get_bmc(&name).await?;
                println!("url:   {}", bmc.url);
                println!("user:  {}", bmc.user);
                if let Some(last) = bmc.last {
                    println!(
                        "last:  {} at {}{}",
                        last.state.map_or("unknown".to_string(), |s| s.to_string()),
                        last.checked_at,
                        last.error.map(|e| format!(" ({e})")).unwrap_or_default()
                    );
                }
            }
        }
        NodeCommand::Power { name, action } => {
            if action == "status" {
                let status = client.power_status(&name).await?;
                println!(
                    "{}",
                    status
                        .state
                        .map_or("unknown".to_string(), |s| s.to_string())
                );
            } else {
                let state = client.power(&name, &action).await?;
                said!("{name}: {action} done; it is {}", state.state);
            }
        }
    }
    Ok(())
}

/// `--watch`: prints what `draw` gives, then again each time the registry changes (the event
/// stream, `GET /api/v1/events`, coalesced over 0.3 s), until interrupted. On a terminal the
/// screen is redrawn; otherwise each print follows a `--- <time>` line (a table), or is one
/// more JSON/YAML document. A dropped stream is opened again after the last event seen.
pub(super) async fn watch_changes<F, Fut>(client: &Client, draw: F) -> Result<(), ClientError>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<String, ClientError>>,
{
    use std::io::{IsTerminal, Write};
    let tty = std::io::stdout().is_terminal();
    // Subscribed first: nothing that happens while the first print is made is missed.
    let mut stream = client.events(None).await?;
    loop {
        let text = draw().await?;
        let mut stdout = std::io::stdout().lock();
        if tty {
            let _ = write!(stdout, "\x1b[H\x1b[2J");
        } else if !text.starts_with('{') && !text.starts_with('[') {
            let now = time::OffsetDateTime::now_utc()
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default();
            let _ = writeln!(stdout, "--- {now}");
        }
        let _ = write!(stdout, "{text}");
        let _ = stdout.flush();
        drop(stdout);
        while let Err(why) = stream.changed().await {
            super::note!("the event stream: {why}; opening it again");
            tokio::time::sleep(std::time::Duration::from_secs(2)).await;
            if let Ok(s) = client.events(stream.last_id()).await {
                stream = s;
                break;
            }
        }
    }
}

/// How a read command prints: a table for people (the default), or the API's own JSON, or the
/// same as YAML, for scripts.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Format {
    #[default]
    Table,
    Json,
    Yaml,
}

/// `--output table|json|yaml` (and `--json`, the same as `--output json`).
#[derive(clap::Args, Clone, Copy, Debug, Default)]
pub struct OutputArgs {
    /// How to print: table (for people), json (the API's shape) or yaml (the same).
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub output: Format,
    /// The same as --output json.
    #[arg(long, conflicts_with = "output")]
    pub json: bool,
}

impl OutputArgs {
    pub fn format(self) -> Format {
        if self.json { Format::Json } else { self.output }
    }

    /// Whether a script reads the output (JSON or YAML rather than a table).
    pub fn machine(self) -> bool {
        self.format() != Format::Table
    }

    /// Prints `value` as JSON or YAML (a table is the caller's).
    pub fn print<T: serde::Serialize>(self, value: &T) {
        print!("{}", self.render(value));
    }

    /// `value` as JSON (pretty, a final newline) or YAML.
    pub fn render<T: serde::Serialize>(self, value: &T) -> String {
        match self.format() {
            Format::Yaml => serde_yaml::to_string(value).expect("API types serialise"),
            _ => {
                let mut s = serde_json::to_string_pretty(value).expect("API types serialise");
                s.push('\n');
                s
            }
        }
    }
}

/// Left-aligned columns, two spaces apart.
/// A value as a terminal may show it: control characters (escape sequences, carriage returns,
/// bells) written out (`\u{1b}`), never sent to the terminal.
pub(super) fn shown(value: &str) -> String {
    if !value.chars().any(char::is_control) {
        return value.to_string();
    }
    value
        .chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

pub(super) fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| r.iter().map(|c| shown(c)).collect())
        .collect();
    let rows = &rows;
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(cell);
            } else {
                s.push_str(&format!("{cell:<w$}  "));
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(header.iter().map(|h| h.to_string()).collect());
    for row in rows {
        out.push_str(&line(row.clone()));
    }
    out
}

fn labels_text(node: &NodeResponse) -> String {
    if node.labels.is_empty() {
        return "-".into();
    }
    node.labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn node_table(nodes: &[NodeResponse]) -> String {
    if nodes.is_empty() {
        return "no nodes; register one with `lacave node add --mac … --hostname … --ip … --role …`\n".into();
    }
    let mut sorted: Vec<&NodeResponse> = nodes.iter().collect();
    sorted.sort_by(|a, b| a.hostname.cmp(&b.hostname).then(a.mac.cmp(&b.mac)));
    let rows: Vec<Vec<String>> = sorted
        .into_iter()
        .map(|n| {
            vec![
                n.hostname.clone().unwrap_or_else(|| "-".into()),
                n.mac.clone(),
                n.ip.clone().unwrap_or_else(|| "-".into()),
                n.role.clone().unwrap_or_else(|| "-".into()),
                n.state.clone(),
                labels_text(n),
            ]
        })
        .collect();
    table(&["HOSTNAME", "MAC", "IP", "ROLE", "STATE", "LABELS"], &rows)
}

fn node_details(node: &NodeResponse, events: &[EventResponse]) -> String {
    let fmt_time = |t: time::OffsetDateTime| {
        t.format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default()
    };
    let mut out = String::new();
    // Values from the network (a vendor class, a failure's output) go through `shown`.
    let mut field = |k: &str, v: &str| out.push_str(&format!("{k:<14} {}\n", shown(v)));
    field("hostname:", node.hostname.as_deref().unwrap_or("-"));
    field("mac:", &node.mac);
    field("ip:", node.ip.as_deref().unwrap_or("-"));
    field("role:", node.role.as_deref().unwrap_or("-"));
    field("state:", &node.state);
    if let Some(f) = &node.failure {
        field("failure:", &format!("{}: {}", f.phase, f.reason));
    }
    field("labels:", &labels_text(node));
    field("install disk:", &node.install_disk);
    field(
        "boot file:",
        node.boot_file.as_deref().unwrap_or("(by firmware)"),
    );
    field("host key:", node.ssh_host_key.as_deref().unwrap_or("-"));
    let seen = node.last_seen.as_ref().map_or("-".to_string(), |s| {
        let arch = s.arch.map_or("-".to_string(), |a| a.to_string());
        let vendor = s.vendor_class.as_deref().unwrap_or("-");
        format!("{} (arch {arch}, vendor class {vendor})", fmt_time(s.at))
    });
    field("last seen:", &seen);
    field("created:", &fmt_time(node.created_at));
    field("updated:", &fmt_time(node.updated_at));
    out.push_str("\nevents:\n");
    let rows: Vec<Vec<String>> = events
        .iter()
        .map(|e| {
            let what = match (&e.from, &e.to, &e.fields, &e.command) {
                (Some(from), Some(to), _, _) => format!("{from} → {to}"),
                (None, Some(to), _, _) => format!("created ({to})"),
                (_, _, Some(fields), _) => format!("updated {}", fields.join(",")),
                (_, _, _, Some(command)) => {
                    let status = e
                        .status
                        .map_or("unfinished".into(), |s| format!("exit {s}"));
                    format!(
                        "{}: {command} ({status})",
                        e.phase.as_deref().unwrap_or("step")
                    )
                }
                _ if e.kind == "refused" => {
                    format!("refused {}", e.ip.as_deref().unwrap_or("?"))
                }
                _ => e.kind.clone(),
            };
            // A step's message is its output's tail: the table shows its last line
            // (`lacave node show --json` has it all).
            let message = e.message.lines().rev().find(|l| !l.trim().is_empty());
            vec![
                fmt_time(e.at),
                what,
                message.unwrap_or_default().to_string(),
            ]
        })
        .collect();
    out.push_str(&table(&["TIME", "CHANGE", "MESSAGE"], &rows));
    out
}

/// `--label key=value` options, each checked here (before any request) and named when bad.
fn parse_labels(
    labels: &[String],
) -> Result<std::collections::BTreeMap<String, String>, ClientError> {
    labels
        .iter()
        .map(|l| {
            parse_label(l).map_err(|e| ClientError::Refused {
                status: 422,
                code: "invalid_field".into(),
                detail: format!("--label: {e}"),
                errors: Vec::new(),
            })
        })
        .collect()
}

/// The BMC options of `node add|edit` as a request (the password read now, before any change).
fn bmc_request(args: super::BmcArgs) -> Result<Option<crate::api::BmcRequest>, ClientError> {
    let Some(url) = args.bmc else {
        return Ok(None);
    };
    let password = read_password(args.bmc_password_file.as_deref(), args.bmc_password_stdin)?
        .ok_or_else(|| ClientError::Refused {
            status: 422,
            code: "invalid_field".into(),
            detail: "--bmc needs --bmc-password-file FILE or --bmc-password-stdin".into(),
            errors: Vec::new(),
        })?;
    Ok(Some(crate::api::BmcRequest {
        url,
        user: args.bmc_user.unwrap_or_default(),
        password,
    }))
}

/// A password's first line, from a file or standard input; `None` when neither is given.
pub(super) fn read_password(
    file: Option<&std::path::Path>,
    stdin: bool,
) -> Result<Option<String>, ClientError> {
    let text = if stdin {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).map_err(|e| {
            ClientError::Config(format!("reading the password from standard input: {e}"))
        })?;
        line
    } else if let Some(file) = file {
        std::fs::read_to_string(file)
            .map_err(|e| ClientError::Config(format!("{}: {e}", file.display())))?
    } else {
        return Ok(None);
    };
    Ok(Some(text.lines().next().unwrap_or_default().to_string()))
}

/// Sets a node's BMC after its registration or change; a refusal says the node itself is done.
async fn set_bmc_after(
    client: &Client,
    mac: &str,
    hostname: Option<&str>,
    bmc: crate::api::BmcRequest,
    done: &str,
) -> Result<(), ClientError> {
    let shown = hostname.unwrap_or(mac);
    match client.set_bmc(mac, &bmc).await {
        Ok(set) => {
            said!("{shown}: BMC {} (user {})", set.url, set.user);
            Ok(())
        }
        Err(ClientError::Refused {
            status,
            code,
            detail,
            errors,
        }) => Err(ClientError::Refused {
            status,
            code,
            detail: format!("{shown} is {done}, but its BMC was refused: {detail}"),
            errors,
        }),
        Err(e) => Err(e),
    }
}

/// A JSON value as a table cell or a line shows it: a string bare, null as `-`.
pub(super) fn text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "-".into(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_written_out_not_sent() {
        assert_eq!(shown("plain"), "plain");
        assert_eq!(shown("a\x1b[2Jb\r"), "a\\u{1b}[2Jb\\r");
        let t = table(&["A"], &[vec!["x\x07y".into()]]);
        assert!(!t.contains('\x07') && t.contains("x\\u{7}y"), "{t}");
    }

    #[test]
    fn tables_align() {
        let t = table(
            &["A", "LONGER"],
            &[
                vec!["wide-cell".into(), "x".into()],
                vec!["b".into(), "y".into()],
            ],
        );
        assert_eq!(t, "A          LONGER\nwide-cell  x\nb          y\n");
    }
}

//! `lacave pki …`: `init`, `import` and `export` work on the state directory's files (run them
//! as the daemon's user or root); `issue`, `list` and `revoke` go through the daemon's API.

use super::said;
use std::path::Path;

use time::OffsetDateTime;

use super::client::{Client, ClientError, Target, load_config};
use super::output::table;
use super::{ClientArgs, ExportTarget, PkiCommand};
use crate::api::IssueRequest;
use crate::pki::{Ca, PkiError};
use crate::secrets;

fn pki_error(e: PkiError) -> ClientError {
    match e {
        PkiError::Exists(_) | PkiError::Invalid(_) | PkiError::Missing(_) => ClientError::Refused {
            status: 422,
            code: "pki".into(),
            detail: e.to_string(),
            errors: Vec::new(),
        },
        other => ClientError::Config(other.to_string()),
    }
}

fn read(path: &Path) -> Result<String, ClientError> {
    std::fs::read_to_string(path)
        .map_err(|e| ClientError::Config(format!("cannot read {}: {e}", path.display())))
}

const RESTART_HINT: &str = "restart the daemon to use it (sudo systemctl restart lacave); it re-issues its own HTTPS certificate";

pub(super) async fn run_pki_command(
    args: &ClientArgs,
    command: PkiCommand,
) -> Result<(), ClientError> {
    match command {
        PkiCommand::Init { force } => {
            let config = load_config(args)?;
            let dir = config.pki_dir();
            if Ca::exists(&dir) && !force {
                return Err(pki_error(PkiError::Exists(dir)));
            }
            ensure_state_dir(&config.state_dir)?;
            let ca = Ca::generate(&config.pki.ca, OffsetDateTime::now_utc()).map_err(pki_error)?;
            ca.save(&dir).map_err(pki_error)?;
            println!(
                "created the cluster CA {} in {}\n{RESTART_HINT}",
                ca.subject(),
                dir.display()
            );
        }
        PkiCommand::Import { cert, key, force } => {
            let config = load_config(args)?;
            let dir = config.pki_dir();
            if Ca::exists(&dir) && !force {
                return Err(pki_error(PkiError::Exists(dir)));
            }
            let ca = Ca::import(&read(&cert)?, &read(&key)?, OffsetDateTime::now_utc())
                .map_err(pki_error)?;
            ensure_state_dir(&config.state_dir)?;
            ca.save(&dir).map_err(pki_error)?;
            println!(
                "imported the CA {} into {}\n{RESTART_HINT}",
                ca.subject(),
                dir.display()
            );
        }
        PkiCommand::Export {
            what: ExportTarget::CertManager,
        } => {
            let config = load_config(args)?;
            let ca = Ca::load(&config.pki_dir(), OffsetDateTime::now_utc()).map_err(pki_error)?;
            print!("{}", ca.cert_manager_manifests());
        }
        PkiCommand::Issue {
            dns_names,
            ips,
            days,
            server,
            client,
            out,
        } => {
            if out.join("key.pem").exists() {
                return Err(ClientError::Config(format!(
                    "{} already exists; choose another --out directory",
                    out.join("key.pem").display()
                )));
            }
            let key = rcgen::KeyPair::generate()
                .map_err(|e| ClientError::Config(format!("cannot generate a key: {e}")))?;
            let csr = rcgen::CertificateParams::default()
                .serialize_request(&key)
                .and_then(|r| r.pem())
                .map_err(|e| ClientError::Config(format!("cannot build the request: {e}")))?;
            let mut usages = Vec::new();
            if server || !client {
                usages.push("server".to_string());
            }
            if client {
                usages.push("client".to_string());
            }
            let api = Client::new(Target::resolve(args)?)?;
            let issued = api
                .issue_certificate(&IssueRequest {
                    dns_names,
                    ips,
                    days,
                    usages,
                    csr: Some(csr),
                })
                .await?;
            std::fs::create_dir_all(&out).map_err(|e| {
                ClientError::Config(format!("cannot create {}: {e}", out.display()))
            })?;
            let write = |name: &str, contents: &str, mode: u32| {
                secrets::write_atomic(&out.join(name), contents.as_bytes(), mode)
                    .map_err(|e| ClientError::Config(e.to_string()))
            };
            write("key.pem", &key.serialize_pem(), 0o600)?;
            write("cert.pem", &issued.certificate, 0o644)?;
            write("chain.pem", &issued.chain, 0o644)?;
            write("ca.pem", &issued.ca, 0o644)?;
            println!(
                "issued serial {} for {} until {}\n  {}/cert.pem, chain.pem (cert + intermediates), ca.pem, key.pem (0600)",
                issued.record.serial,
                issued
                    .record
                    .dns_names
                    .iter()
                    .chain(&issued.record.ips)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", "),
                issued.record.not_after.date(),
                out.display()
            );
        }
        PkiCommand::List { out } => {
            let api = Client::new(Target::resolve(args)?)?;
            let certs = api.list_certificates().await?;
            if out.machine() {
                out.print(&certs);
            } else {
                let rows: Vec<Vec<String>> = certs
                    .iter()
                    .map(|c| {
                        vec![
                            c.serial.clone(),
                            c.dns_names
                                .iter()
                                .chain(&c.ips)
                                .cloned()
                                .collect::<Vec<_>>()
                                .join(","),
                            c.usages.join(","),
                            c.not_after.date().to_string(),
                            match c.revoked_at {
                                Some(at) => format!("revoked {}", at.date()),
                                None => "valid".into(),
                            },
                            c.requester.clone(),
                        ]
                    })
                    .collect();
                print!(
                    "{}",
                    table(
                        &["SERIAL", "NAMES", "USAGES", "NOT AFTER", "STATUS", "BY"],
                        &rows
                    )
                );
            }
        }
        PkiCommand::Revoke { serial, reason } => {
            let api = Client::new(Target::resolve(args)?)?;
            let c = api.revoke_certificate(&serial, reason.as_deref()).await?;
            said!("revoked {}", c.serial);
        }
    }
    Ok(())
}

/// The CLI may run before the daemon ever did: create the state directory as the daemon
/// would (0700).
fn ensure_state_dir(dir: &Path) -> Result<(), ClientError> {
    secrets::create_private_dir(dir)
        .map_err(|e| ClientError::Config(format!("cannot create {}: {e}", dir.display())))
}

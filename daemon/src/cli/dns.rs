//! `lacave dns add|list|rm`: the operator's records in the cluster zone, through the API.

use super::client::{Client, ClientError, Target};
use super::output::table;
use super::said;
use super::{ClientArgs, DnsCommand};
use crate::api::DnsRecordRequest;

pub(super) async fn run_dns_command(
    args: &ClientArgs,
    command: DnsCommand,
) -> Result<(), ClientError> {
    let api = Client::new(Target::resolve(args)?)?;
    match command {
        DnsCommand::Add {
            name,
            rtype,
            value,
            ttl,
        } => {
            let r = api
                .add_dns_record(&DnsRecordRequest {
                    name,
                    rtype,
                    value,
                    ttl,
                })
                .await?;
            said!(
                "added {} {} {} (id {}): served from the next query",
                r.fqdn,
                r.rtype,
                r.value,
                r.id.as_deref().unwrap_or("-")
            );
        }
        DnsCommand::List { out } => {
            let records = api.list_dns_records().await?;
            if out.machine() {
                out.print(&records);
            } else {
                let rows: Vec<Vec<String>> = records
                    .iter()
                    .map(|r| {
                        vec![
                            r.id.clone().unwrap_or_else(|| "-".into()),
                            r.fqdn.clone(),
                            r.rtype.clone(),
                            r.value.clone(),
                            r.ttl.map(|t| t.to_string()).unwrap_or_else(|| "-".into()),
                            r.source.clone(),
                        ]
                    })
                    .collect();
                print!(
                    "{}",
                    table(&["ID", "NAME", "TYPE", "VALUE", "TTL", "SOURCE"], &rows)
                );
            }
        }
        DnsCommand::Rm { id } => {
            api.delete_dns_record(&id).await?;
            said!("removed DNS record {id}");
        }
    }
    Ok(())
}

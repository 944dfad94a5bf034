//! The on-disk shape of stored values (JSON inside sled values). Kept apart from the domain
//! types so that a field can be renamed in code without rewriting every stored node; decoding
//! re-validates everything, so a damaged record is reported, never trusted.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::StoreError;
use crate::model::CertificateRecord;
use crate::model::{Event, EventKind, Failure, LeaseAction, Node, NodeIp, NodeState, Sighting};

#[derive(Serialize, Deserialize)]
pub(super) struct NodeRecord {
    mac: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ip: Option<Ipv4Addr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    role: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    install_disk: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    boot_file: Option<String>,
    state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    failure: Option<FailureRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    callback_secret: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ssh_host_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_seen: Option<SightingRecord>,
    #[serde(with = "time::serde::rfc3339")]
    created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    updated_at: OffsetDateTime,
    /// Absent in records written before it existed: `updated_at` then.
    #[serde(default, with = "time::serde::rfc3339::option")]
    state_since: Option<OffsetDateTime>,
}

#[derive(Serialize, Deserialize)]
struct SightingRecord {
    #[serde(with = "time::serde::rfc3339")]
    at: OffsetDateTime,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    arch: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    vendor_class: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct FailureRecord {
    phase: String,
    reason: String,
}

#[derive(Serialize, Deserialize)]
pub(super) struct EventRecord {
    seq: u64,
    #[serde(with = "time::serde::rfc3339")]
    at: OffsetDateTime,
    #[serde(flatten)]
    kind: EventKindRecord,
    message: String,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum EventKindRecord {
    Created {
        state: String,
    },
    Transition {
        from: String,
        to: String,
    },
    Updated {
        fields: Vec<String>,
    },
    Lease {
        action: String,
        ip: Ipv4Addr,
    },
    Step {
        phase: String,
        command: String,
        status: Option<u32>,
    },
    Refused {
        peer: std::net::IpAddr,
    },
    Update {
        state: String,
        version: String,
    },
}

fn corrupt(what: &str, detail: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {detail}"))
}

pub(super) fn encode_node(node: &Node) -> Vec<u8> {
    let record = NodeRecord {
        mac: node.mac.to_string(),
        hostname: node.hostname.as_ref().map(|h| h.to_string()),
        ip: node.ip.map(|ip| ip.addr()),
        role: node.role.map(|r| r.as_str().to_string()),
        labels: node.labels.clone(),
        install_disk: node.install_disk.as_ref().map(|d| d.to_string()),
        boot_file: node.boot_file.as_ref().map(|f| f.to_string()),
        state: node.state.as_str().to_string(),
        failure: node.failure.as_ref().map(|f| FailureRecord {
            phase: f.phase.clone(),
            reason: f.reason.clone(),
        }),
        callback_secret: node.callback_secret.clone(),
        ssh_host_key: node.ssh_host_key.clone(),
        last_seen: node.last_seen.as_ref().map(|s| SightingRecord {
            at: s.at,
            arch: s.arch,
            vendor_class: s.vendor_class.clone(),
        }),
        created_at: node.created_at,
        updated_at: node.updated_at,
        state_since: Some(node.state_since),
    };
    serde_json::to_vec(&record).expect("a node record always serialises")
}

pub(super) fn decode_node(bytes: &[u8]) -> Result<Node, StoreError> {
    let r: NodeRecord = serde_json::from_slice(bytes).map_err(|e| corrupt("node record", e))?;
    let what = || format!("node record {}", r.mac);
    Ok(Node {
        mac: r.mac.parse().map_err(|e| corrupt(&what(), e))?,
        hostname: r
            .hostname
            .as_deref()
            .map(str::parse)
            .transpose()
            .map_err(|e| corrupt(&what(), e))?,
        ip: r
            .ip
            .map(NodeIp::try_from)
            .transpose()
            .map_err(|e| corrupt(&what(), e))?,
        role: r
            .role
            .as_deref()
            .map(str::parse)
            .transpose()
            .map_err(|e| corrupt(&what(), e))?,
        labels: r.labels,
        install_disk: r
            .install_disk
            .as_deref()
            .map(str::parse)
            .transpose()
            .map_err(|e| corrupt(&what(), e))?,
        boot_file: r
            .boot_file
            .as_deref()
            .map(str::parse)
            .transpose()
            .map_err(|e| corrupt(&what(), e))?,
        state: r.state.parse().map_err(|e| corrupt(&what(), e))?,
        failure: r.failure.map(|f| Failure {
            phase: f.phase,
            reason: f.reason,
        }),
        callback_secret: r.callback_secret,
        ssh_host_key: r.ssh_host_key,
        last_seen: r.last_seen.map(|s| Sighting {
            at: s.at,
            arch: s.arch,
            vendor_class: s.vendor_class,
        }),
        created_at: r.created_at,
        updated_at: r.updated_at,
        state_since: r.state_since.unwrap_or(r.updated_at),
    })
}

pub(super) fn encode_event(event: &Event) -> Vec<u8> {
    let kind = match &event.kind {
        EventKind::Created { state } => EventKindRecord::Created {
            state: state.as_str().to_string(),
        },
        EventKind::Transition { from, to } => EventKindRecord::Transition {
            from: from.as_str().to_string(),
            to: to.as_str().to_string(),
        },
        EventKind::Updated { fields } => EventKindRecord::Updated {
            fields: fields.clone(),
        },
        EventKind::Lease { action, ip } => EventKindRecord::Lease {
            action: action.as_str().to_string(),
            ip: *ip,
        },
        EventKind::Step {
            phase,
            command,
            status,
        } => EventKindRecord::Step {
            phase: phase.clone(),
            command: command.clone(),
            status: *status,
        },
        EventKind::Refused { peer } => EventKindRecord::Refused { peer: *peer },
        EventKind::Update { state, version } => EventKindRecord::Update {
            state: state.as_str().to_string(),
            version: version.clone(),
        },
    };
    let record = EventRecord {
        seq: event.seq,
        at: event.at,
        kind,
        message: event.message.clone(),
    };
    serde_json::to_vec(&record).expect("an event record always serialises")
}

pub(super) fn decode_event(bytes: &[u8]) -> Result<Event, StoreError> {
    let r: EventRecord = serde_json::from_slice(bytes).map_err(|e| corrupt("event record", e))?;
    let state = |s: &str| -> Result<NodeState, StoreError> {
        s.parse().map_err(|e| corrupt("event record", e))
    };
    let kind = match r.kind {
        EventKindRecord::Created { state: s } => EventKind::Created { state: state(&s)? },
        EventKindRecord::Transition { from, to } => EventKind::Transition {
            from: state(&from)?,
            to: state(&to)?,
        },
        EventKindRecord::Updated { fields } => EventKind::Updated { fields },
        EventKindRecord::Lease { action, ip } => EventKind::Lease {
            action: LeaseAction::parse(&action)
                .ok_or_else(|| corrupt("event record", format!("lease action {action:?}")))?,
            ip,
        },
        EventKindRecord::Step {
            phase,
            command,
            status,
        } => EventKind::Step {
            phase,
            command,
            status,
        },
        EventKindRecord::Refused { peer } => EventKind::Refused { peer },
        EventKindRecord::Update { state, version } => EventKind::Update {
            state: crate::model::UpdateState::parse(&state)
                .ok_or_else(|| corrupt("event record", format!("update state {state:?}")))?,
            version,
        },
    };
    Ok(Event {
        seq: r.seq,
        at: r.at,
        kind,
        message: r.message,
    })
}

#[derive(Serialize, Deserialize)]
pub(super) struct CertificateRecordV1 {
    serial: String,
    subject: String,
    dns_names: Vec<String>,
    ips: Vec<String>,
    usages: Vec<String>,
    #[serde(with = "time::serde::rfc3339")]
    not_before: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    not_after: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    issued_at: OffsetDateTime,
    requester: String,
    #[serde(default, with = "time::serde::rfc3339::option")]
    revoked_at: Option<OffsetDateTime>,
    #[serde(default)]
    revocation_reason: Option<String>,
}

pub(super) fn encode_certificate(c: &CertificateRecord) -> Vec<u8> {
    let r = CertificateRecordV1 {
        serial: c.serial.clone(),
        subject: c.subject.clone(),
        dns_names: c.dns_names.clone(),
        ips: c.ips.clone(),
        usages: c.usages.clone(),
        not_before: c.not_before,
        not_after: c.not_after,
        issued_at: c.issued_at,
        requester: c.requester.clone(),
        revoked_at: c.revoked_at,
        revocation_reason: c.revocation_reason.clone(),
    };
    serde_json::to_vec(&r).expect("a certificate record always serialises")
}

pub(super) fn decode_certificate(bytes: &[u8]) -> Result<CertificateRecord, StoreError> {
    let r: CertificateRecordV1 =
        serde_json::from_slice(bytes).map_err(|e| corrupt("certificate record", e))?;
    Ok(CertificateRecord {
        serial: r.serial,
        subject: r.subject,
        dns_names: r.dns_names,
        ips: r.ips,
        usages: r.usages,
        not_before: r.not_before,
        not_after: r.not_after,
        issued_at: r.issued_at,
        requester: r.requester,
        revoked_at: r.revoked_at,
        revocation_reason: r.revocation_reason,
    })
}

/// A node's update status (tree `updates`, by node id).
#[derive(Serialize, Deserialize)]
pub(super) struct NodeUpdateV1 {
    version: String,
    group: String,
    machine_id: String,
    state: String,
    #[serde(default)]
    target: Option<String>,
    #[serde(default)]
    error_code: Option<i64>,
    #[serde(with = "time::serde::rfc3339")]
    since: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    checked_at: OffsetDateTime,
}

pub(super) fn encode_node_update(u: &crate::model::NodeUpdate) -> Vec<u8> {
    let r = NodeUpdateV1 {
        version: u.version.clone(),
        group: u.group.clone(),
        machine_id: u.machine_id.clone(),
        state: u.state.as_str().to_string(),
        target: u.target.clone(),
        error_code: u.error_code,
        since: u.since,
        checked_at: u.checked_at,
    };
    serde_json::to_vec(&r).expect("an update record always serialises")
}

pub(super) fn decode_node_update(bytes: &[u8]) -> Result<crate::model::NodeUpdate, StoreError> {
    let r: NodeUpdateV1 = serde_json::from_slice(bytes).map_err(|e| corrupt("update record", e))?;
    Ok(crate::model::NodeUpdate {
        state: crate::model::UpdateState::parse(&r.state)
            .ok_or_else(|| corrupt("update record", format!("state {:?}", r.state)))?,
        version: r.version,
        group: r.group,
        machine_id: r.machine_id,
        target: r.target,
        error_code: r.error_code,
        since: r.since,
        checked_at: r.checked_at,
    })
}

#[derive(Serialize, Deserialize)]
pub(super) struct DnsRecordV1 {
    name: String,
    #[serde(rename = "type")]
    rtype: String,
    value: String,
    #[serde(default)]
    ttl: Option<u32>,
}

pub(super) fn encode_dns_record(r: &crate::model::RecordSpec) -> Vec<u8> {
    let rec = DnsRecordV1 {
        name: r.name.clone(),
        rtype: r.type_str().to_string(),
        value: r.value.to_string(),
        ttl: r.ttl,
    };
    serde_json::to_vec(&rec).expect("a DNS record always serialises")
}

pub(super) fn decode_dns_record(bytes: &[u8]) -> Result<crate::model::RecordSpec, StoreError> {
    let r: DnsRecordV1 = serde_json::from_slice(bytes).map_err(|e| corrupt("DNS record", e))?;
    // Checked against the root, not the current zone: a record stays readable if the
    // operator renames the zone.
    crate::model::RecordSpec::parse(
        &r.name,
        &r.rtype,
        &r.value,
        r.ttl,
        &hickory_proto::rr::Name::root(),
    )
    .map_err(|errors| {
        corrupt(
            "DNS record",
            errors
                .iter()
                .map(|e| format!("{}: {}", e.field, e.reason))
                .collect::<Vec<_>>()
                .join("; "),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_record_leaves_out_what_is_empty_and_reads_back_whole() {
        let at = OffsetDateTime::from_unix_timestamp(1_795_000_000).unwrap();
        let discovered = Node {
            last_seen: Some(crate::model::Sighting {
                at,
                arch: Some(7),
                vendor_class: None,
            }),
            ..Node::discovered("52:54:00:00:00:01".parse().unwrap(), at)
        };
        let bytes = encode_node(&discovered);
        let text = String::from_utf8(bytes.clone()).unwrap();
        for absent in ["null", "hostname", "labels", "vendor_class"] {
            assert!(!text.contains(absent), "{absent} in {text}");
        }
        assert_eq!(decode_node(&bytes).unwrap(), discovered);
        // As every earlier version wrote it: the empty fields spelled out.
        let spelled = text.replacen(
            "{",
            r#"{"hostname":null,"ip":null,"role":null,"labels":{},"install_disk":null,"boot_file":null,"failure":null,"callback_secret":null,"ssh_host_key":null,"#,
            1,
        );
        assert_eq!(decode_node(spelled.as_bytes()).unwrap(), discovered);
    }
}

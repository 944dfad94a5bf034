//! The `[dns]` section: its file format, the validated settings of the DNS service and their
//! checks. Below `config` (which assembles the file) and above `model` only.

use std::net::{IpAddr, SocketAddr};

use serde::Deserialize;

use crate::model::{RecordSpec, Role, validate_dns_name};

#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RawDns {
    /// UDP and TCP address, e.g. `192.168.1.10:53` (this host's `server_ip`: on Ubuntu,
    /// `0.0.0.0:53` collides with systemd-resolved's stub on 127.0.0.53).
    ///
    /// Default: unset (DNS off).
    listen: Option<String>,
    /// The cluster zone.
    ///
    /// Default: `"lacave"`.
    zone: Option<String>,
    /// The TTL of every record (and of negative answers).
    ///
    /// Default: `300`.
    ttl: Option<u32>,
    /// A round-robin name over the cluster's nodes: `kube.lacave`.
    ///
    /// Default: `"kube"`.
    cluster_name: Option<String>,
    /// The roles whose nodes feed `cluster_name`.
    ///
    /// Default: `["control-plane"]`.
    cluster_roles: Option<Vec<String>>,
    /// Upstream resolvers (`ip` or `ip:port`) for names outside our zones.
    ///
    /// Default: `[]`.
    forwarders: Option<Vec<String>>,
    /// CIDRs that may use the forwarders; everyone else is REFUSED outside our zones (never an
    /// open resolver).
    ///
    /// Default: `[]`.
    allow_recursion_from: Option<Vec<String>>,
    /// Addresses allowed to transfer the zones (AXFR, TCP only).
    ///
    /// Default: `[]`.
    axfr_allow: Option<Vec<String>>,
    /// Static records (`[[dns.records]]`).
    ///
    /// Default: none.
    #[serde(default)]
    records: Vec<RawRecord>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRecord {
    /// Relative to the zone, `@` for the apex.
    ///
    /// Default: required.
    name: String,
    /// A, AAAA, CNAME, TXT, SRV or MX.
    ///
    /// Default: required.
    #[serde(rename = "type")]
    rtype: String,
    /// The record's data: `"10 5 443 kube"` for SRV, `"10 mail"` for MX.
    ///
    /// Default: required.
    value: String,
    /// This record's TTL.
    ///
    /// Default: `[dns] ttl`.
    ttl: Option<u32>,
}

/// The authoritative DNS service.
#[derive(Clone, Debug)]
pub struct DnsConfig {
    /// UDP and TCP on this address; `None`: DNS is off.
    pub listen: Option<SocketAddr>,
    /// The cluster zone, fully qualified (`lacave.`).
    pub zone: hickory_proto::rr::Name,
    pub ttl: u32,
    /// The round-robin name over the cluster's nodes (`kube` → `kube.lacave`).
    pub cluster_name: String,
    pub cluster_roles: Vec<Role>,
    /// Upstream resolvers for names outside our zones (port 53 unless given).
    pub forwarders: Vec<SocketAddr>,
    /// Clients that may use the forwarders; everyone else is refused names outside our zones.
    pub allow_recursion_from: Vec<ipnet::IpNet>,
    /// Addresses allowed to transfer the zone (AXFR over TCP).
    pub axfr_allow: Vec<IpAddr>,
    /// Static records (`[[dns.records]]`).
    pub records: Vec<RecordSpec>,
}

/// Checks `[dns]`; forwarders must not point back at this daemon (`http_listen` included).
pub fn validate(
    raw: RawDns,
    http_listen: SocketAddr,
    problem: &mut impl FnMut(&str, String),
) -> DnsConfig {
    let listen = raw
        .listen
        .as_deref()
        .and_then(|text| match text.parse::<SocketAddr>() {
            Ok(addr) => Some(addr),
            Err(_) => {
                problem(
                    "dns.listen",
                    format!("{text:?} is not an address and port (e.g. \"0.0.0.0:53\")"),
                );
                None
            }
        });
    let zone_text = raw.zone.unwrap_or_else(|| "lacave".into());
    let zone = match validate_dns_name(zone_text.trim_end_matches('.')) {
        // Every name in the zone is a label of up to 63 characters plus the zone: keep room.
        Ok(z) if z.len() > 180 => {
            problem(
                "dns.zone",
                format!(
                    "{} characters: at most 180, so that every host name fits in a DNS name",
                    z.len()
                ),
            );
            hickory_proto::rr::Name::root()
        }
        Ok(z) if !z.starts_with("*.") => {
            let mut n = hickory_proto::rr::Name::from_ascii(&z).expect("a validated name");
            n.set_fqdn(true);
            n
        }
        Ok(_) => {
            problem("dns.zone", "a zone cannot be a wildcard".into());
            hickory_proto::rr::Name::root()
        }
        Err(e) => {
            problem("dns.zone", e.to_string());
            hickory_proto::rr::Name::root()
        }
    };
    let ttl = raw.ttl.unwrap_or(300);
    if !(1..=86_400).contains(&ttl) {
        problem(
            "dns.ttl",
            format!("{ttl} is not between 1 and 86400 seconds"),
        );
    }
    let cluster_name = raw.cluster_name.unwrap_or_else(|| "kube".into());
    if cluster_name.parse::<crate::model::Hostname>().is_err() {
        problem(
            "dns.cluster_name",
            format!("{cluster_name:?} is not one DNS label (letters, digits, '-')"),
        );
    }
    let mut cluster_roles = Vec::new();
    for r in raw
        .cluster_roles
        .unwrap_or_else(|| vec!["control-plane".into()])
    {
        match r.parse::<Role>() {
            Ok(role) => cluster_roles.push(role),
            Err(e) => problem("dns.cluster_roles", e.to_string()),
        }
    }
    let mut forwarders = Vec::new();
    for f in raw.forwarders.unwrap_or_default() {
        let parsed = f
            .parse::<SocketAddr>()
            .or_else(|_| f.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)));
        match parsed {
            Ok(addr) if Some(addr) == listen || addr == http_listen => problem(
                "dns.forwarders",
                format!("{addr} is this daemon: forwarding to itself would loop"),
            ),
            Ok(addr) => forwarders.push(addr),
            Err(_) => problem(
                "dns.forwarders",
                format!("{f:?} is not an IP address (optionally with :port)"),
            ),
        }
    }
    let mut allow_recursion_from = Vec::new();
    for c in raw.allow_recursion_from.unwrap_or_default() {
        let parsed = c
            .parse::<ipnet::IpNet>()
            .or_else(|_| c.parse::<IpAddr>().map(ipnet::IpNet::from));
        match parsed {
            Ok(net) => allow_recursion_from.push(net),
            Err(_) => problem(
                "dns.allow_recursion_from",
                format!("{c:?} is not a CIDR block (e.g. \"192.168.1.0/24\")"),
            ),
        }
    }
    if !allow_recursion_from.is_empty() && forwarders.is_empty() {
        problem(
            "dns.allow_recursion_from",
            "recursion needs dns.forwarders: this daemon forwards, it does not resolve from the root".into(),
        );
    }
    let mut axfr_allow = Vec::new();
    for a in raw.axfr_allow.unwrap_or_default() {
        match a.parse::<IpAddr>() {
            Ok(ip) => axfr_allow.push(ip),
            Err(_) => problem("dns.axfr_allow", format!("{a:?} is not an IP address")),
        }
    }
    let mut records = Vec::new();
    for (i, r) in raw.records.into_iter().enumerate() {
        match RecordSpec::parse(&r.name, &r.rtype, &r.value, r.ttl, &zone) {
            // The apex holds SOA and NS: a CNAME there would be dropped at start (RFC 1034
            // §3.6.2), so it is refused here, where the operator sees it.
            Ok(spec)
                if matches!(spec.value, crate::model::RecordValue::Cname(_))
                    && crate::model::absolute_name(&spec.name, &zone).is_ok_and(|n| n == zone) =>
            {
                problem(
                    &format!("dns.records[{i}].name"),
                    format!(
                        "{:?} is the zone apex, which holds SOA and NS: a CNAME cannot be there",
                        r.name
                    ),
                );
            }
            Ok(spec) => records.push(spec),
            Err(errors) => {
                for e in errors {
                    problem(&format!("dns.records[{i}].{}", e.field), e.reason);
                }
            }
        }
    }
    DnsConfig {
        listen,
        zone,
        ttl,
        cluster_name: cluster_name.to_ascii_lowercase(),
        cluster_roles,
        forwarders,
        allow_recursion_from,
        axfr_allow,
        records,
    }
}

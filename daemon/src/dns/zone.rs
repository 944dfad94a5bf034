//! The cluster zone as data, and the decision "which records answer this query". Both are
//! pure: built from a snapshot of the registry and the operator's records, no I/O.
//!
//! Content: SOA and NS at the apex, `ns.<zone>` (this host), `<hostname>.<zone>` per node with
//! an IP, `<cluster_name>.<zone>` with one A per node of the cluster roles, PTR records in the
//! reverse zone of each node /24, and the operator's records.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::net::Ipv4Addr;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::{A, AAAA, CNAME, MX, NS, PTR, SOA, SRV, TXT};
use hickory_proto::rr::{LowerName, Name, RData, Record, RecordType};

use crate::model::{Node, NodeState, Role};
use crate::model::{RecordSpec, RecordValue, absolute_name};

/// What shapes the zone besides the registry.
#[derive(Clone, Debug)]
pub struct ZoneSettings {
    pub zone: Name,
    pub ttl: u32,
    pub cluster_name: String,
    pub cluster_roles: Vec<Role>,
    pub server_ip: Ipv4Addr,
    /// The daemon joins nodes to Kubernetes (`[cluster] enabled`): the cluster name is the
    /// API endpoint, so it names only nodes that serve it (see [`zone_records`]).
    pub serving_only: bool,
    /// Names under the cluster name served by the ingress on the nodes (`dashboard`, `login`):
    /// each a CNAME to `<cluster_name>.<zone>`, unless an operator's record has that name.
    pub service_names: Vec<String>,
}

/// The outcome of a lookup: records borrowed from the zone, so answering copies nothing.
#[derive(Debug, PartialEq)]
pub enum Lookup<'z> {
    /// Not in any zone we serve: forward or refuse.
    NotOurs,
    /// An authoritative answer.
    Answer {
        rcode: ResponseCode,
        answers: Vec<&'z Record>,
        authority: Vec<&'z Record>,
        additional: Vec<&'z Record>,
    },
}

/// One immutable version of every zone we serve.
#[derive(Debug)]
pub struct Zone {
    pub serial: u32,
    apexes: Vec<LowerName>,
    soas: HashMap<LowerName, Record>,
    rrsets: HashMap<LowerName, Vec<Record>>,
    /// Every owner name and all its ancestors inside a zone (empty non-terminals exist).
    existing: HashSet<LowerName>,
    /// Every record but the SOAs, in a stable order.
    records: Vec<Record>,
    /// Records dropped because they clash (a CNAME beside other data), for the log.
    pub dropped: Vec<String>,
}

fn name(text: &str) -> Name {
    let mut n = Name::from_ascii(text).expect("built from validated parts");
    n.set_fqdn(true);
    n
}

fn reverse_zone(ip: Ipv4Addr) -> Name {
    let o = ip.octets();
    name(&format!("{}.{}.{}.in-addr.arpa.", o[2], o[1], o[0]))
}

fn ptr_name(ip: Ipv4Addr) -> Name {
    let o = ip.octets();
    name(&format!(
        "{}.{}.{}.{}.in-addr.arpa.",
        o[3], o[2], o[1], o[0]
    ))
}

/// Everything but the SOA records, derived from the registry and the operator's records,
/// plus the reverse zones they need. Also returns clashing records it left out.
pub fn zone_records<'a>(
    settings: &ZoneSettings,
    nodes: impl Iterator<Item = &'a Node>,
    extra: &[RecordSpec],
) -> (Vec<Record>, Vec<Name>, Vec<String>) {
    let zone = &settings.zone;
    let ttl = settings.ttl;
    let ns_host = name("ns").append_domain(zone).expect("short name");
    let cluster = name(&settings.cluster_name)
        .append_domain(zone)
        .expect("validated cluster name");
    let mut records = vec![
        Record::from_rdata(zone.clone(), ttl, RData::NS(NS(ns_host.clone()))),
        Record::from_rdata(ns_host, ttl, RData::A(A(settings.server_ip))),
    ];
    let mut reverse = BTreeSet::new();
    let mut cluster_ips = BTreeSet::new();
    // While the daemon builds the cluster, `<cluster_name>` is the API server's endpoint: it
    // names the cluster-role nodes that are Ready, or, before any is, the one(s) running
    // `kubeadm init` (joining or joined), which reach their own API server through it. Other
    // nodes join only once a control plane is Ready, so nothing races a control plane that
    // is still installing.
    let mut starting_ips = BTreeSet::new();
    let mut unwell_ips = BTreeSet::new();
    for node in nodes {
        let (Some(host), Some(ip)) = (&node.hostname, node.ip) else {
            continue;
        };
        let fqdn = name(host.as_str())
            .append_domain(zone)
            .expect("a label fits");
        let ip = ip.addr();
        records.push(Record::from_rdata(fqdn.clone(), ttl, RData::A(A(ip))));
        records.push(Record::from_rdata(ptr_name(ip), ttl, RData::PTR(PTR(fqdn))));
        reverse.insert(reverse_zone(ip));
        if node
            .role
            .is_some_and(|r| settings.cluster_roles.contains(&r))
        {
            match node.state {
                _ if !settings.serving_only => {
                    cluster_ips.insert(ip);
                }
                NodeState::Ready => {
                    cluster_ips.insert(ip);
                }
                NodeState::NotReady => {
                    unwell_ips.insert(ip);
                }
                NodeState::Joining | NodeState::Joined => {
                    starting_ips.insert(ip);
                }
                _ => {}
            }
        }
    }
    // The endpoint names the Ready control planes; with none, the notready ones (a control
    // plane whose kubelet is unwell may still serve), then those still joining.
    if cluster_ips.is_empty() {
        cluster_ips = unwell_ips;
    }
    if cluster_ips.is_empty() {
        cluster_ips = starting_ips;
    }
    for ip in cluster_ips {
        records.push(Record::from_rdata(cluster.clone(), ttl, RData::A(A(ip))));
    }
    // Operator records come last and give way to the registry's: a CNAME cannot share its
    // name with other data (RFC 1034 §3.6.2).
    let mut dropped = Vec::new();
    let mut owners_with_data: HashSet<Name> = records.iter().map(|r| r.name.clone()).collect();
    let mut cname_owners: HashSet<Name> = HashSet::new();
    for spec in extra {
        let Ok(owner) = absolute_name(&spec.name, zone) else {
            continue;
        };
        // A target too long for the zone (after the zone was renamed, say) drops the record
        // rather than the zone.
        let target_of = |t: &str| absolute_name(t, zone);
        let target = match &spec.value {
            RecordValue::Cname(t) => Some(t),
            RecordValue::Srv { target, .. } => Some(target),
            RecordValue::Mx { exchange, .. } => Some(exchange),
            _ => None,
        };
        let target = match target.map(|t| target_of(t)).transpose() {
            Ok(t) => t,
            Err(e) => {
                dropped.push(format!("{owner} {}: {e}", spec.type_str()));
                continue;
            }
        };
        let rdata = match &spec.value {
            RecordValue::A(ip) => RData::A(A(*ip)),
            RecordValue::Aaaa(ip) => RData::AAAA(AAAA(*ip)),
            RecordValue::Cname(_) => {
                RData::CNAME(CNAME(target.clone().expect("a CNAME has a target")))
            }
            RecordValue::Txt(t) => RData::TXT(TXT::new(
                t.as_bytes()
                    .chunks(255)
                    .map(|c| String::from_utf8_lossy(c).into_owned())
                    .collect(),
            )),
            RecordValue::Srv {
                priority,
                weight,
                port,
                ..
            } => RData::SRV(SRV::new(
                *priority,
                *weight,
                *port,
                target.clone().expect("an SRV has a target"),
            )),
            RecordValue::Mx { preference, .. } => RData::MX(MX::new(
                *preference,
                target.clone().expect("an MX has a target"),
            )),
        };
        let is_cname = matches!(rdata, RData::CNAME(_));
        if (is_cname && owners_with_data.contains(&owner)) || cname_owners.contains(&owner) {
            dropped.push(format!(
                "{owner} {} {}: a CNAME cannot share its name with other records",
                spec.type_str(),
                spec.value
            ));
            continue;
        }
        if is_cname {
            cname_owners.insert(owner.clone());
        }
        owners_with_data.insert(owner.clone());
        records.push(Record::from_rdata(owner, spec.ttl.unwrap_or(ttl), rdata));
    }
    // The add-ons' names (Traefik answers them on every node, control planes included): no
    // operator CNAME needed, and an operator's record of the same name wins.
    for label in &settings.service_names {
        let Ok(owner) = name(label).append_domain(&cluster) else {
            continue;
        };
        if !owners_with_data.contains(&owner) {
            records.push(Record::from_rdata(
                owner,
                ttl,
                RData::CNAME(CNAME(cluster.clone())),
            ));
        }
    }
    // One copy of each record, in a stable order (for the digest and for AXFR).
    let mut seen = HashSet::new();
    records.retain(|r| seen.insert(r.to_string()));
    records.sort_by_key(|r| {
        (
            r.name.to_lowercase().to_string(),
            r.record_type(),
            r.to_string(),
        )
    });
    (records, reverse.into_iter().collect(), dropped)
}

/// A digest of the zone content: the serial changes exactly when this does.
pub fn digest(records: &[Record], reverse: &[Name]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for r in records {
        r.to_string().hash(&mut h);
    }
    for z in reverse {
        z.to_string().hash(&mut h);
    }
    h.finish()
}

impl Zone {
    /// Assembles the zone at `serial` from [`zone_records`]' output.
    pub fn assemble(
        settings: &ZoneSettings,
        records: Vec<Record>,
        reverse: Vec<Name>,
        dropped: Vec<String>,
        serial: u32,
    ) -> Zone {
        let zone = &settings.zone;
        let ns_host = name("ns").append_domain(zone).expect("short name");
        let hostmaster = name("hostmaster").append_domain(zone).expect("short name");
        let mut apexes = vec![zone.clone()];
        apexes.extend(reverse);
        let mut soas = HashMap::new();
        let mut all = records;
        for apex in &apexes {
            let soa = SOA::new(
                ns_host.clone(),
                hostmaster.clone(),
                serial,
                3600,
                600,
                86_400,
                settings.ttl,
            );
            soas.insert(
                LowerName::from(apex),
                Record::from_rdata(apex.clone(), settings.ttl, RData::SOA(soa)),
            );
            if apex != zone {
                all.push(Record::from_rdata(
                    apex.clone(),
                    settings.ttl,
                    RData::NS(NS(ns_host.clone())),
                ));
            }
        }
        let apexes: Vec<LowerName> = apexes.iter().map(LowerName::from).collect();
        let mut rrsets: HashMap<LowerName, Vec<Record>> = HashMap::new();
        let mut existing = HashSet::new();
        for r in all.iter().chain(soas.values()) {
            let owner = LowerName::from(&r.name);
            rrsets.entry(owner.clone()).or_default().push(r.clone());
            let mut n = r.name.clone();
            loop {
                let lower = LowerName::from(&n);
                let inside = apexes.iter().any(|a| a.zone_of(&lower));
                if !inside || !existing.insert(lower) {
                    break;
                }
                n = n.base_name();
            }
        }
        Zone {
            serial,
            apexes,
            soas,
            rrsets,
            existing,
            records: all,
            dropped,
        }
    }

    /// The most specific zone we serve that holds `name`.
    fn apex_of(&self, name: &LowerName) -> Option<&LowerName> {
        self.apexes
            .iter()
            .filter(|a| a.zone_of(name))
            .max_by_key(|a| a.num_labels())
    }

    /// Answers `qname`/`qtype`: records, a CNAME chain followed inside our zones, NODATA or
    /// NXDOMAIN with the SOA in the authority section.
    pub fn lookup(&self, qname: &LowerName, qtype: RecordType) -> Lookup<'_> {
        if self.apex_of(qname).is_none() {
            return Lookup::NotOurs;
        }
        let mut answers = Vec::new();
        let mut current = qname.clone();
        // A chain longer than 8 is a loop or a mistake.
        for _ in 0..8 {
            let apex = self
                .apex_of(&current)
                .expect("checked before following")
                .clone();
            let negative = |rcode| Lookup::Answer {
                rcode,
                answers: answers.clone(),
                authority: vec![&self.soas[&apex]],
                additional: Vec::new(),
            };
            let Some(rrs) = self.rrsets.get(&current) else {
                return if self.existing.contains(&current) {
                    negative(ResponseCode::NoError)
                } else {
                    negative(ResponseCode::NXDomain)
                };
            };
            let matching: Vec<&Record> = rrs
                .iter()
                .filter(|r| qtype == RecordType::ANY || r.record_type() == qtype)
                .collect();
            if !matching.is_empty() {
                let additional = self.glue(&matching);
                answers.extend(matching);
                return Lookup::Answer {
                    rcode: ResponseCode::NoError,
                    answers,
                    authority: Vec::new(),
                    additional,
                };
            }
            let cname = rrs.iter().find(|r| r.record_type() == RecordType::CNAME);
            match cname.map(|r| &r.data) {
                Some(RData::CNAME(target)) => {
                    answers.push(cname.expect("matched"));
                    let target = LowerName::from(&target.0);
                    if self.apex_of(&target).is_none() {
                        // Outside our zones: the resolver follows it.
                        return Lookup::Answer {
                            rcode: ResponseCode::NoError,
                            answers,
                            authority: Vec::new(),
                            additional: Vec::new(),
                        };
                    }
                    current = target;
                }
                _ => return negative(ResponseCode::NoError),
            }
        }
        Lookup::Answer {
            rcode: ResponseCode::ServFail,
            answers: Vec::new(),
            authority: Vec::new(),
            additional: Vec::new(),
        }
    }

    /// Addresses of in-zone NS, MX and SRV targets, for the additional section.
    fn glue(&self, records: &[&Record]) -> Vec<&Record> {
        let mut out = Vec::new();
        for r in records {
            let target = match &r.data {
                RData::NS(ns) => &ns.0,
                RData::MX(mx) => &mx.exchange,
                RData::SRV(srv) => &srv.target,
                _ => continue,
            };
            if let Some(rrs) = self.rrsets.get(&LowerName::from(target)) {
                out.extend(
                    rrs.iter()
                        .filter(|x| matches!(x.record_type(), RecordType::A | RecordType::AAAA)),
                );
            }
        }
        out
    }

    /// A full transfer of zone `apex`: SOA, every record, SOA (RFC 5936).
    pub fn transfer(&self, apex: &LowerName) -> Option<Vec<Record>> {
        let soa = self.soas.get(apex)?;
        let mut out = vec![soa.clone()];
        out.extend(
            self.records
                .iter()
                .filter(|r| {
                    let owner = LowerName::from(&r.name);
                    self.apex_of(&owner) == Some(apex)
                })
                .cloned(),
        );
        out.push(soa.clone());
        Some(out)
    }

    /// The zone file text of every zone, as BIND reads it (used by the benchmark to serve the
    /// very same data from BIND).
    pub fn zone_files(&self) -> BTreeMap<String, String> {
        let mut files = BTreeMap::new();
        for apex in &self.apexes {
            let mut records = self.transfer(apex).expect("every apex has a SOA");
            records.pop();
            let text: String = records.iter().map(|r| format!("{r}\n")).collect();
            files.insert(apex.to_string(), text);
        }
        files
    }
}

#[cfg(test)]
mod tests;

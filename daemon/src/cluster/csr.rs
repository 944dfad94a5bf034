//! Kubelet serving certificates signed by the cluster CA (issue #26): every kubelet runs with
//! `serverTLSBootstrap: true` and asks for its serving certificate with a CSR (signer
//! `kubernetes.io/kubelet-serving`); Kubernetes approves none of those by itself, so the
//! daemon does, against its registry: a CSR is approved only when it comes from
//! `system:node:<name>` in `system:nodes`, `<name>` is a node of the cluster in the registry,
//! its subject is that node's (`CN=system:node:<name>, O=system:nodes`), its usages are a
//! server's, it names at least one address, its DNS names are the node's name (or the name in
//! the cluster's zone) and its IP addresses the node's registered address, and its signature
//! checks. Anything else from a kubelet is denied with the reason, written in the node's
//! history too when the node is known. Other signers are left to others.
//!
//! With the cluster CA behind every kubelet's serving certificate, metrics-server checks the
//! kubelets it scrapes (no `--kubelet-insecure-tls`).

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr};

use k8s_openapi::api::certificates::v1::CertificateSigningRequest;

/// The signer of kubelet serving certificates.
pub const KUBELET_SERVING: &str = "kubernetes.io/kubelet-serving";

/// What a CSR asks, as read from the object and its PKCS#10 request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CsrFacts {
    pub username: String,
    pub groups: Vec<String>,
    pub usages: Vec<String>,
    pub common_name: String,
    pub organizations: Vec<String>,
    pub dns_names: Vec<String>,
    pub ips: Vec<IpAddr>,
    /// Whether the request's own signature checks.
    pub signature_ok: bool,
}

/// A cluster node as the approver knows it.
#[derive(Clone, Debug)]
pub struct KnownNode {
    pub name: String,
    pub ip: Option<Ipv4Addr>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Approve,
    /// Denied, with why (and the node it claims to be, when the registry knows it).
    Deny {
        reason: String,
        node: Option<String>,
    },
}

/// The decision on a kubelet-serving CSR (pure).
pub fn judge(csr: &CsrFacts, nodes: &[KnownNode], zone: &str) -> Verdict {
    let deny = |reason: String, node: Option<&str>| Verdict::Deny {
        reason,
        node: node.map(str::to_string),
    };
    let Some(name) = csr.username.strip_prefix("system:node:") else {
        return deny(
            format!("requested by {:?}, not a node's kubelet", csr.username),
            None,
        );
    };
    let Some(node) = nodes.iter().find(|n| n.name == name) else {
        return deny(
            format!("{name} is not a node of the cluster in lacave's registry"),
            None,
        );
    };
    let known = Some(name);
    if !csr.groups.iter().any(|g| g == "system:nodes") {
        return deny("its requester is not in system:nodes".into(), known);
    }
    if csr.common_name != csr.username || csr.organizations != ["system:nodes"] {
        return deny(
            format!(
                "its subject (CN={}, O={}) is not the node's (CN={}, O=system:nodes)",
                csr.common_name,
                csr.organizations.join("+"),
                csr.username
            ),
            known,
        );
    }
    let allowed_usages = ["digital signature", "key encipherment", "server auth"];
    if !csr.usages.iter().any(|u| u == "server auth")
        || csr
            .usages
            .iter()
            .any(|u| !allowed_usages.contains(&u.as_str()))
    {
        return deny(
            format!(
                "its usages ({}) are not a server certificate's",
                csr.usages.join(", ")
            ),
            known,
        );
    }
    if csr.dns_names.is_empty() && csr.ips.is_empty() {
        return deny("it names no address".into(), known);
    }
    let in_zone = format!("{name}.{}", zone.trim_end_matches('.'));
    if let Some(bad) = csr
        .dns_names
        .iter()
        .find(|d| d.as_str() != name && d.as_str() != in_zone)
    {
        return deny(
            format!("it names {bad:?}, not the node's name ({name} or {in_zone})"),
            known,
        );
    }
    if let Some(bad) = csr
        .ips
        .iter()
        .find(|ip| node.ip.map(IpAddr::V4) != Some(**ip))
    {
        return deny(
            format!(
                "it names {bad}, not the node's address ({})",
                node.ip
                    .map_or("none registered".into(), |ip| ip.to_string())
            ),
            known,
        );
    }
    if !csr.signature_ok {
        return deny("its signature does not check".into(), known);
    }
    Verdict::Approve
}

/// Reads a CSR object: `None` when it is not a pending kubelet-serving request.
pub fn facts(csr: &CertificateSigningRequest) -> Option<Result<CsrFacts, String>> {
    if csr.spec.signer_name != KUBELET_SERVING {
        return None;
    }
    let decided = csr
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| {
            c.iter()
                .any(|c| matches!(c.type_.as_str(), "Approved" | "Denied" | "Failed"))
        });
    if decided {
        return None;
    }
    Some(parse(csr))
}

fn parse(csr: &CertificateSigningRequest) -> Result<CsrFacts, String> {
    use x509_parser::extensions::{GeneralName, ParsedExtension};
    let pem = &csr.spec.request.0;
    let (_, block) = x509_parser::pem::parse_x509_pem(pem)
        .map_err(|e| format!("its request is not PEM: {e}"))?;
    let (_, req) = <x509_parser::certification_request::X509CertificationRequest as x509_parser::prelude::FromDer<_>>::from_der(&block.contents)
        .map_err(|e| format!("its request is not a PKCS#10 request: {e}"))?;
    let subject = &req.certification_request_info.subject;
    let mut facts = CsrFacts {
        username: csr.spec.username.clone().unwrap_or_default(),
        groups: csr.spec.groups.clone().unwrap_or_default(),
        usages: csr.spec.usages.clone().unwrap_or_default(),
        common_name: subject
            .iter_common_name()
            .next()
            .and_then(|c| c.as_str().ok())
            .unwrap_or_default()
            .to_string(),
        organizations: subject
            .iter_organization()
            .filter_map(|o| o.as_str().ok().map(str::to_string))
            .collect(),
        signature_ok: req.verify_signature().is_ok(),
        ..CsrFacts::default()
    };
    if let Some(extensions) = req.requested_extensions() {
        for ext in extensions {
            if let ParsedExtension::SubjectAlternativeName(san) = ext {
                for name in &san.general_names {
                    match name {
                        GeneralName::DNSName(d) => facts.dns_names.push(d.to_string()),
                        GeneralName::IPAddress(b) => match b.len() {
                            4 => facts
                                .ips
                                .push(IpAddr::from(<[u8; 4]>::try_from(*b).expect("4 bytes"))),
                            16 => facts
                                .ips
                                .push(IpAddr::from(<[u8; 16]>::try_from(*b).expect("16 bytes"))),
                            _ => return Err("it names a malformed IP address".into()),
                        },
                        other => return Err(format!("it names {other:?}, not a name or address")),
                    }
                }
            }
        }
    }
    Ok(facts)
}

/// The approval (or denial) condition to patch in.
pub fn condition_patch(verdict: &Verdict) -> serde_json::Value {
    let (kind, reason, message) = match verdict {
        Verdict::Approve => (
            "Approved",
            "LacaveRegistry",
            "the node, its subject and addresses match lacave's registry".to_string(),
        ),
        Verdict::Deny { reason, .. } => ("Denied", "LacaveRegistry", reason.clone()),
    };
    serde_json::json!({
        "status": {
            "conditions": [{
                "type": kind,
                "status": "True",
                "reason": reason,
                "message": message,
            }]
        }
    })
}

/// CSR names already decided by this daemon (not patched twice while the API catches up).
#[derive(Default)]
pub struct Decided(std::sync::Mutex<HashSet<String>>);

impl Decided {
    /// Whether `name` is new (and now remembered).
    pub fn first(&self, name: &str) -> bool {
        let mut set = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if set.len() > 10_000 {
            set.clear();
        }
        set.insert(name.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> CsrFacts {
        CsrFacts {
            username: "system:node:w1".into(),
            groups: vec!["system:nodes".into(), "system:authenticated".into()],
            usages: vec!["digital signature".into(), "server auth".into()],
            common_name: "system:node:w1".into(),
            organizations: vec!["system:nodes".into()],
            dns_names: vec!["w1".into()],
            ips: vec!["10.0.0.12".parse().unwrap()],
            signature_ok: true,
        }
    }

    fn nodes() -> Vec<KnownNode> {
        vec![KnownNode {
            name: "w1".into(),
            ip: Some("10.0.0.12".parse().unwrap()),
        }]
    }

    fn denied(f: CsrFacts) -> String {
        match judge(&f, &nodes(), "lacave") {
            Verdict::Deny { reason, .. } => reason,
            Verdict::Approve => panic!("approved: {f:?}"),
        }
    }

    #[test]
    fn only_a_registered_nodes_own_names_and_address_are_approved() {
        assert_eq!(judge(&good(), &nodes(), "lacave"), Verdict::Approve);
        let mut zone = good();
        zone.dns_names.push("w1.lacave".into());
        assert_eq!(judge(&zone, &nodes(), "lacave."), Verdict::Approve);

        let mut other = good();
        other.ips = vec!["10.0.0.99".parse().unwrap()];
        assert!(denied(other).contains("10.0.0.99"));
        let mut name = good();
        name.dns_names.push("kube.lacave".into());
        assert!(denied(name).contains("kube.lacave"));
        let mut stranger = good();
        stranger.username = "system:node:evil".into();
        stranger.common_name = "system:node:evil".into();
        match judge(&stranger, &nodes(), "lacave") {
            Verdict::Deny { reason, node } => {
                assert!(reason.contains("not a node"));
                assert_eq!(node, None);
            }
            Verdict::Approve => panic!(),
        }
        let mut user = good();
        user.username = "alice".into();
        assert!(denied(user).contains("alice"));
        let mut subject = good();
        subject.common_name = "system:node:w2".into();
        assert!(denied(subject).contains("subject"));
        let mut usage = good();
        usage.usages.push("client auth".into());
        assert!(denied(usage).contains("usages"));
        let mut empty = good();
        empty.dns_names.clear();
        empty.ips.clear();
        assert!(denied(empty).contains("no address"));
        let mut forged = good();
        forged.signature_ok = false;
        assert!(denied(forged).contains("signature"));
        let mut group = good();
        group.groups = vec!["system:authenticated".into()];
        assert!(denied(group).contains("system:nodes"));
    }
}

//! Every certificate of the cluster that can expire, with how long it has left (issue #26,
//! certificates): `lacave cluster certs`, `GET /api/v1/cluster/certs` and
//! `lacave_cluster_cert_expiry_seconds{node,cert}` in `/metrics`.
//!
//! - On each control plane, kubeadm's own view (`kubeadm certs check-expiration -o json`
//!   over SSH): the API server's, etcd's and front-proxy's leaf certificates, the kubeconfigs
//!   of the control-plane components and admins, and the CAs as the node holds them.
//! - On every cluster node, the kubelet's client certificate (the certificate part of
//!   `/var/lib/kubelet/pki/kubelet-client-current.pem`, printed by `openssl x509`: its key
//!   never leaves the node) and the certificate the kubelet serves on port 10250 (read from a
//!   TLS handshake, no SSH).
//! - In the daemon: the cluster CAs it owns and its own client certificate.
//!
//! The check runs at start once the cluster exists, then every [`CHECK_EVERY`], and on demand
//! (`?refresh=true`); one node that does not answer is an error in the report naming it,
//! never a hang (every step has a timeout) and never a missing report for the others.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::seams::ShellConnector;
use crate::model::{Node, NodeState, Role};

/// How often the report is made again.
pub const CHECK_EVERY: Duration = Duration::from_secs(3600);
/// The node's side of the check, each step.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);
/// The kubelet's serving port.
const KUBELET_PORT: u16 = 10250;

/// One certificate that can expire.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CertExpiry {
    /// The node holding it, or `lacave` for the daemon's own and the CAs it keeps.
    pub node: String,
    /// kubeadm's name for it (`apiserver`, `admin.conf`, `ca` …), `kubelet-client`,
    /// `kubelet-serving`, `lacave-client`, or `cluster-ca`, `front-proxy-ca`, `etcd-ca`.
    pub cert: String,
    /// The CA that signed it, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub not_after: OffsetDateTime,
    /// Whole days left (negative once expired).
    pub days_left: i64,
}

impl CertExpiry {
    fn new(node: &str, cert: &str, authority: Option<&str>, not_after: OffsetDateTime) -> Self {
        let days_left = (not_after - OffsetDateTime::now_utc()).whole_days();
        CertExpiry {
            node: node.to_string(),
            cert: cert.to_string(),
            authority: authority.map(str::to_string),
            not_after,
            days_left,
        }
    }
}

/// A node whose certificates could not be read, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CertError {
    pub node: String,
    pub error: String,
}

/// The last check.
#[derive(Clone, Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CertReport {
    #[serde(with = "time::serde::rfc3339::option")]
    pub checked_at: Option<OffsetDateTime>,
    /// Soonest to expire first.
    pub certificates: Vec<CertExpiry>,
    pub errors: Vec<CertError>,
}

impl CertReport {
    /// The `lacave_cluster_cert_expiry_seconds` gauge: seconds until each certificate
    /// expires (negative once it has).
    pub fn metrics(&self) -> String {
        let mut out = String::from(
            "# HELP lacave_cluster_cert_expiry_seconds Seconds until each cluster certificate \
             expires (negative once it has), by node (lacave: the daemon's own and the CAs it \
             keeps) and certificate; refreshed hourly.\n\
             # TYPE lacave_cluster_cert_expiry_seconds gauge\n",
        );
        let now = OffsetDateTime::now_utc();
        for c in &self.certificates {
            out.push_str(&format!(
                "lacave_cluster_cert_expiry_seconds{{node=\"{}\",cert=\"{}\"}} {}\n",
                label(&c.node),
                label(&c.cert),
                (c.not_after - now).whole_seconds()
            ));
        }
        out
    }
}

/// A Prometheus label value: only characters a hostname or kubeadm's names use.
fn label(v: &str) -> String {
    v.chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        .collect()
}

/// `kubeadm certs check-expiration -o json` (`output.kubeadm.k8s.io`'s
/// `CertificateExpirationInfo`).
#[derive(Deserialize)]
struct KubeadmExpiration {
    #[serde(default)]
    certificates: Vec<KubeadmCert>,
    #[serde(default, rename = "certificateAuthorities")]
    authorities: Vec<KubeadmCert>,
}

#[derive(Deserialize)]
struct KubeadmCert {
    name: String,
    #[serde(default, rename = "expirationDate")]
    expiration: Option<String>,
    #[serde(default, rename = "caName")]
    ca: Option<String>,
    #[serde(default)]
    missing: bool,
}

/// kubeadm's report for `node`; certificates it reports missing are left out.
pub fn parse_kubeadm(node: &str, json: &[u8]) -> Result<Vec<CertExpiry>, String> {
    // kubeadm may print notes before the document.
    let start = json
        .iter()
        .position(|b| *b == b'{')
        .ok_or_else(|| "kubeadm certs check-expiration printed no JSON document".to_string())?;
    let parsed: KubeadmExpiration = serde_json::from_slice(&json[start..])
        .map_err(|e| format!("kubeadm certs check-expiration: unexpected JSON ({e})"))?;
    let mut out = Vec::new();
    for (cert, is_ca) in parsed
        .certificates
        .iter()
        .map(|c| (c, false))
        .chain(parsed.authorities.iter().map(|c| (c, true)))
    {
        if cert.missing {
            continue;
        }
        let Some(date) = &cert.expiration else {
            continue;
        };
        let not_after = OffsetDateTime::parse(date, &time::format_description::well_known::Rfc3339)
            .map_err(|e| format!("kubeadm gave {:?} for {}: {e}", date, cert.name))?;
        let authority = if is_ca { None } else { cert.ca.as_deref() };
        out.push(CertExpiry::new(node, &cert.name, authority, not_after));
    }
    Ok(out)
}

/// The expiry of the first certificate in `pem`.
pub fn pem_not_after(pem: &[u8]) -> Result<OffsetDateTime, String> {
    let (_, block) =
        x509_parser::pem::parse_x509_pem(pem).map_err(|e| format!("not a PEM certificate: {e}"))?;
    der_not_after(&block.contents)
}

fn der_not_after(der: &[u8]) -> Result<OffsetDateTime, String> {
    der_expiry(der).map(|(at, _)| at)
}

/// When a DER certificate expires, and its issuer's common name.
fn der_expiry(der: &[u8]) -> Result<(OffsetDateTime, String), String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| format!("not an X.509 certificate: {e}"))?;
    let issuer = cert
        .issuer()
        .iter_common_name()
        .next()
        .and_then(|c| c.as_str().ok())
        .unwrap_or_default()
        .to_string();
    Ok((cert.validity().not_after.to_datetime(), issuer))
}

/// When the certificate the kubelet at `ip` serves expires, and its issuer's common name (a
/// TLS handshake, then closed).
pub async fn kubelet_serving_expiry(ip: IpAddr) -> Result<(OffsetDateTime, String), String> {
    // Any certificate: the handshake only reads the kubelet's certificate to see when it
    // expires; nothing is sent over the connection.
    let config = crate::tls::CertCheck::client_config(|_| Ok(())).map_err(|e| e.to_string())?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let handshake = async {
        let tcp = tokio::net::TcpStream::connect(SocketAddr::new(ip, KUBELET_PORT))
            .await
            .map_err(|e| format!("port {KUBELET_PORT}: {e}"))?;
        let name = rustls::pki_types::ServerName::IpAddress(ip.into());
        let tls = connector
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS on port {KUBELET_PORT}: {e}"))?;
        let (_, session) = tls.get_ref();
        let der = session
            .peer_certificates()
            .and_then(|c| c.first())
            .ok_or_else(|| "the kubelet sent no certificate".to_string())?
            .clone();
        der_expiry(&der)
    };
    tokio::time::timeout(Duration::from_secs(10), handshake)
        .await
        .map_err(|_| format!("no TLS answer on port {KUBELET_PORT} within 10 s"))?
}

/// A cluster node's certificates, over SSH (`kubeadm`'s report on control planes, the
/// kubelet's client certificate) and the kubelet's serving one.
pub async fn node_certs(
    ssh: &dyn ShellConnector,
    name: &str,
    node: &Node,
) -> (Vec<CertExpiry>, Vec<CertError>) {
    let mut certs = Vec::new();
    let mut errors = Vec::new();
    let mut fail = |error: String| {
        errors.push(CertError {
            node: name.to_string(),
            error,
        })
    };
    let Some(ip) = node.ip.map(|ip| IpAddr::V4(ip.addr())) else {
        fail("no address in the registry".into());
        return (certs, errors);
    };
    match kubelet_serving_expiry(ip).await {
        // The issuer: the cluster CA's name once its CSR was approved (`csr.rs`), the
        // kubelet's own `<host>-ca@…` while self-signed.
        Ok((at, issuer)) => certs.push(CertExpiry::new(
            name,
            "kubelet-serving",
            Some(&issuer).filter(|i| !i.is_empty()).map(String::as_str),
            at,
        )),
        Err(e) => fail(format!("kubelet serving certificate: {e}")),
    }
    let session = match ssh
        .connect(ip, node.ssh_host_key.as_deref(), Duration::from_secs(10))
        .await
    {
        Ok(s) => s,
        Err(e) => {
            fail(format!("SSH: {e}"));
            return (certs, errors);
        }
    };
    // The certificate part only (openssl prints no key).
    let client = session
        .run(
            "openssl x509 -in /var/lib/kubelet/pki/kubelet-client-current.pem",
            None,
            STEP_TIMEOUT,
        )
        .await;
    match client {
        Ok(out) if out.success() => match pem_not_after(&out.stdout) {
            Ok(at) => certs.push(CertExpiry::new(name, "kubelet-client", Some("ca"), at)),
            Err(e) => fail(format!("kubelet client certificate: {e}")),
        },
        Ok(out) => fail(format!("kubelet client certificate: {}", out.tail(3))),
        Err(e) => fail(format!("kubelet client certificate: {e}")),
    }
    if node.role == Some(Role::ControlPlane) {
        match session
            .run("kubeadm certs check-expiration -o json", None, STEP_TIMEOUT)
            .await
        {
            Ok(out) if out.success() => match parse_kubeadm(name, &out.stdout) {
                Ok(found) => certs.extend(found),
                Err(e) => fail(e),
            },
            Ok(out) => fail(format!("kubeadm certs check-expiration: {}", out.tail(5))),
            Err(e) => fail(format!("kubeadm certs check-expiration: {e}")),
        }
    }
    session.close().await;
    (certs, errors)
}

/// A whole check: every node in `nodes` (at most four at once) and the daemon's own
/// certificates (`owned`: name and PEM).
pub async fn check(
    ssh: Arc<dyn ShellConnector>,
    nodes: Vec<(String, Node)>,
    owned: Vec<(&'static str, String)>,
) -> CertReport {
    let mut certificates = Vec::new();
    let mut errors = Vec::new();
    for (name, pem) in owned {
        match pem_not_after(pem.as_bytes()) {
            Ok(at) => {
                let authority = (name == "lacave-client").then_some("ca");
                certificates.push(CertExpiry::new("lacave", name, authority, at));
            }
            Err(error) => errors.push(CertError {
                node: "lacave".into(),
                error: format!("{name}: {error}"),
            }),
        }
    }
    let limit = Arc::new(tokio::sync::Semaphore::new(4));
    let mut tasks = tokio::task::JoinSet::new();
    for (name, node) in nodes {
        let (ssh, limit) = (ssh.clone(), limit.clone());
        tasks.spawn(async move {
            let _permit = limit.acquire_owned().await;
            node_certs(ssh.as_ref(), &name, &node).await
        });
    }
    while let Some(done) = tasks.join_next().await {
        if let Ok((c, e)) = done {
            certificates.extend(c);
            errors.extend(e);
        }
    }
    sort(&mut certificates);
    errors.sort_by(|a, b| (&a.node, &a.error).cmp(&(&b.node, &b.error)));
    CertReport {
        checked_at: Some(OffsetDateTime::now_utc()),
        certificates,
        errors,
    }
}

/// Whether certificates valid from `not_before` to `not_after` are due for renewal at `now`:
/// once `fraction` of their life has passed.
pub fn renewal_due(
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    fraction: f64,
    now: OffsetDateTime,
) -> bool {
    let life = (not_after - not_before).as_seconds_f64();
    (now - not_before).as_seconds_f64() >= life * fraction
}

/// The validity of kubeadm's leaf certificates on a control plane, read from its
/// `apiserver.crt` (a public file; kubeadm issues and renews them all together).
pub fn validity(pem: &[u8]) -> Result<(OffsetDateTime, OffsetDateTime), String> {
    let (_, block) =
        x509_parser::pem::parse_x509_pem(pem).map_err(|e| format!("not a PEM certificate: {e}"))?;
    let (_, cert) = x509_parser::parse_x509_certificate(&block.contents)
        .map_err(|e| format!("not an X.509 certificate: {e}"))?;
    Ok((
        cert.validity().not_before.to_datetime(),
        cert.validity().not_after.to_datetime(),
    ))
}

/// The command printing the control plane's `apiserver.crt`.
pub const READ_APISERVER_CERT: &str = "cat /etc/kubernetes/pki/apiserver.crt";

/// The control-plane static pods a renewal goes through, in order, each with the local health
/// URL that says it is back and what its answer then holds: etcd (restarted only if it does
/// not reload its certificate, `etcd_renewal_script`), then the API server (its `/readyz`
/// checks etcd), then the controller manager and the scheduler.
pub const STATIC_PODS: [(&str, &str, &str); 4] = [
    (
        "etcd",
        "http://127.0.0.1:2381/health",
        "\"health\":\"true\"",
    ),
    ("kube-apiserver", "https://127.0.0.1:6443/readyz", "ok"),
    (
        "kube-controller-manager",
        "https://127.0.0.1:10257/healthz",
        "ok",
    ),
    ("kube-scheduler", "https://127.0.0.1:10259/healthz", "ok"),
];

/// etcd's step of a renewal. etcd reads its serving and peer certificates from disk at every
/// TLS handshake (since 3.2), so it needs no restart: the script checks that etcd now serves
/// the renewed `server.crt` (a handshake with kubeadm's etcd health-check client
/// certificate, its end date compared with the file's) and restarts etcd only when it does
/// not. Not restarting matters: with two control planes, stopping one etcd member loses
/// quorum, and every API server with it.
pub fn etcd_renewal_script() -> String {
    let (pod, health, expect) = STATIC_PODS[0];
    format!(
        r#"pki=/etc/kubernetes/pki/etcd
disk=$(openssl x509 -noout -enddate -in "$pki/server.crt" 2>/dev/null)
served=
i=0
while [ -n "$disk" ] && [ $i -lt 10 ]; do
  served=$(openssl s_client -connect 127.0.0.1:2379 -cert "$pki/healthcheck-client.crt" -key "$pki/healthcheck-client.key" -CAfile "$pki/ca.crt" </dev/null 2>/dev/null | openssl x509 -noout -enddate 2>/dev/null)
  if [ "$served" = "$disk" ]; then echo "etcd serves its renewed certificate ($disk), read at each handshake: not restarted"; exit 0; fi
  i=$((i+1)); sleep 0.5
done
echo "etcd serves ${{served:-no certificate we could read}}, its file says ${{disk:-nothing}}: restarting it"
{restart}"#,
        restart = restart_script(pod, health, expect)
    )
}

/// Restarts one static pod so that it reads its renewed certificates: its manifest is moved
/// out of kubelet's manifest directory until the component stops answering (kubelet stops the
/// pod), then moved back, and the script waits until it answers its health URL again. The
/// manifest is put back however the script ends (a trap), so a failure never leaves a control
/// plane without it.
pub fn restart_script(pod: &str, health: &str, expect: &str) -> String {
    let expect = expect.replace('\'', "");
    format!(
        r#"set -u
m=/etc/kubernetes/manifests/{pod}.yaml
aside=/etc/kubernetes/{pod}.yaml.lacave-restart
[ -f "$m" ] || {{ echo "$m is missing"; exit 1; }}
trap 'if [ -f "$aside" ]; then mv -f "$aside" "$m"; fi' EXIT
mv -f "$m" "$aside"
i=0
while curl -sk --max-time 2 -o /dev/null {health}; do
  i=$((i+1)); [ $i -lt 120 ] || {{ echo "{pod} did not stop within 60 s"; exit 1; }}
  sleep 0.5
done
mv -f "$aside" "$m"
i=0
until curl -sk --max-time 2 {health} | grep -qF '{expect}'; do
  i=$((i+1)); [ $i -lt 360 ] || {{ echo "{pod} did not answer {health} within 180 s"; exit 1; }}
  sleep 0.5
done
echo "{pod} restarted"
"#
    )
}

/// Whether a node is one whose certificates are checked: in the cluster and up.
pub fn checked(node: &Node) -> bool {
    matches!(
        node.state,
        NodeState::Ready | NodeState::NotReady | NodeState::Joined
    )
}

/// Soonest first, then by node and name.
pub fn sort(certs: &mut [CertExpiry]) {
    certs.sort_by(|a, b| (a.not_after, &a.node, &a.cert).cmp(&(b.not_after, &b.node, &b.cert)));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubeadms_json_report_is_read() {
        let json = br#"[check-expiration] Reading configuration from the "kubeadm-config" ConfigMap
{
  "kind": "CertificateExpirationInfo",
  "apiVersion": "output.kubeadm.k8s.io/v1alpha3",
  "certificates": [
    {"name": "admin.conf", "expirationDate": "2027-12-07T03:00:00Z", "residualTime": 31535999000000000, "caName": "ca", "externallyManaged": false},
    {"name": "apiserver", "expirationDate": "2027-12-07T03:00:00Z", "residualTime": 1, "caName": "ca", "externallyManaged": false},
    {"name": "super-admin.conf", "missing": true, "externallyManaged": false}
  ],
  "certificateAuthorities": [
    {"name": "ca", "expirationDate": "2036-12-05T03:00:00Z", "residualTime": 1, "externallyManaged": false}
  ]
}"#;
        let certs = parse_kubeadm("cp1", json).unwrap();
        let names: Vec<&str> = certs.iter().map(|c| c.cert.as_str()).collect();
        assert_eq!(names, ["admin.conf", "apiserver", "ca"]);
        assert_eq!(certs[1].authority.as_deref(), Some("ca"));
        assert_eq!(certs[2].authority, None);
        assert!(certs[0].days_left > 300);
        assert!(parse_kubeadm("cp1", b"error: no PKI").is_err());
        assert!(
            parse_kubeadm(
                "cp1",
                br#"{"certificates": [{"name": "x", "expirationDate": "soon"}]}"#
            )
            .is_err()
        );
    }

    #[test]
    fn renewal_is_due_at_the_fraction_of_life() {
        let nb = OffsetDateTime::UNIX_EPOCH;
        let na = nb + time::Duration::days(300);
        assert!(!renewal_due(nb, na, 0.67, nb + time::Duration::days(200)));
        assert!(renewal_due(nb, na, 0.67, nb + time::Duration::days(202)));
        assert!(renewal_due(nb, na, 0.01, nb + time::Duration::days(3)));
    }

    #[test]
    fn the_restart_script_always_puts_the_manifest_back() {
        let script = restart_script("kube-apiserver", "https://127.0.0.1:6443/readyz", "ok");
        assert!(
            script.contains("trap 'if [ -f \"$aside\" ]; then mv -f \"$aside\" \"$m\"; fi' EXIT")
        );
        assert!(script.contains("/etc/kubernetes/manifests/kube-apiserver.yaml"));
    }

    #[test]
    fn the_gauge_has_one_series_per_certificate() {
        let at = OffsetDateTime::now_utc() + time::Duration::days(10);
        let report = CertReport {
            checked_at: Some(OffsetDateTime::now_utc()),
            certificates: vec![
                CertExpiry::new("cp1", "apiserver", Some("ca"), at),
                CertExpiry::new("lacave", "lacave-client", Some("ca"), at),
            ],
            errors: vec![],
        };
        let text = report.metrics();
        assert!(
            text.contains("lacave_cluster_cert_expiry_seconds{node=\"cp1\",cert=\"apiserver\"} 86")
        );
        assert_eq!(text.lines().filter(|l| !l.starts_with('#')).count(), 2);
    }
}

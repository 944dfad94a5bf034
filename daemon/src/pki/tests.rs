use super::*;

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

fn settings(key_type: KeyType) -> CaSettings {
    CaSettings {
        common_name: "Lacave Root CA".into(),
        organization: Some("Lacave".into()),
        key_type,
        validity_days: 3650,
    }
}

fn leaf(dns: &[&str], ips: &[&str], days: u32) -> LeafRequest {
    LeafRequest {
        dns_names: dns.iter().map(|s| s.to_string()).collect(),
        ips: ips.iter().map(|s| s.parse().unwrap()).collect(),
        days,
        usages: vec![Usage::Server, Usage::Client],
        csr_pem: None,
    }
}

fn parse_pem(pem: &str) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap()
}

/// A root and an intermediate (pathlen 0) made with rcgen, as another PKI would have them.
fn root_and_intermediate(intermediate_not_after: OffsetDateTime) -> (String, String, String) {
    let root_key = KeyPair::generate().unwrap();
    let mut root = CertificateParams::default();
    root.distinguished_name = DistinguishedName::new();
    root.distinguished_name.push(DnType::CommonName, "Old Root");
    root.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    root.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let root_cert = root.self_signed(&root_key).unwrap();
    let int_key = KeyPair::generate().unwrap();
    let mut int = CertificateParams::default();
    int.distinguished_name = DistinguishedName::new();
    int.distinguished_name
        .push(DnType::CommonName, "Old Signing CA");
    int.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    int.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    int.not_after = intermediate_not_after;
    let issuer = Issuer::new(root, &root_key);
    let int_cert = int.signed_by(&int_key, &issuer).unwrap();
    (root_cert.pem(), int_cert.pem(), int_key.serialize_pem())
}

#[test]
fn generated_ca_issues_leaves_with_the_asked_names_and_usages() {
    let ca = Ca::generate(&settings(KeyType::EcdsaP256), now()).unwrap();
    let issued = ca
        .issue(
            &leaf(&["login.kube.lacave"], &["192.168.1.21"], 30),
            random_serial(),
            "api",
            now(),
        )
        .unwrap();
    assert!(issued.private_key_pem.is_some());
    let der = &parse_pem(&issued.certificate_pem)[0];
    let cert = parse(der).unwrap();
    assert!(!cert.is_ca());
    let san = cert.subject_alternative_name().unwrap().unwrap();
    let names: Vec<String> = san
        .value
        .general_names
        .iter()
        .map(|n| n.to_string())
        .collect();
    // x509-parser shows 192.168.1.21 as hex octets.
    assert_eq!(
        names,
        ["DNSName(login.kube.lacave)", "IPAddress(c0:a8:01:15)"]
    );
    let eku = cert.extended_key_usage().unwrap().unwrap();
    assert!(eku.value.server_auth && eku.value.client_auth);
    // Signed by the CA.
    let ca_der = &parse_pem(&ca.bundle_pem())[0];
    cert.verify_signature(Some(parse(ca_der).unwrap().public_key()))
        .unwrap();
    // A self-signed root is not repeated in the chain a server presents.
    assert_eq!(parse_pem(&issued.chain_pem).len(), 1);
    assert_eq!(issued.record.serial.len(), 32);
}

#[test]
fn rsa_cas_can_be_generated() {
    let ca = Ca::generate(&settings(KeyType::Rsa2048), now()).unwrap();
    assert!(ca.bundle_pem().starts_with("-----BEGIN CERTIFICATE-----"));
    ca.issue(&leaf(&["a.lacave"], &[], 1), random_serial(), "api", now())
        .unwrap();
}

#[test]
fn validity_cannot_outlive_the_ca() {
    let mut s = settings(KeyType::EcdsaP256);
    s.validity_days = 10;
    let ca = Ca::generate(&s, now()).unwrap();
    let err = ca
        .issue(&leaf(&["a.lacave"], &[], 11), random_serial(), "api", now())
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("days: 11 days would end on"), "{err}");
    assert!(err.contains("at most 9 days"), "{err}");
}

#[test]
fn a_root_and_intermediate_chain_imports_and_leaves_carry_the_intermediate() {
    let (root, int, int_key) = root_and_intermediate(now() + Duration::days(100));
    // Root first or intermediate first: the order in the file does not matter.
    let ca = Ca::import(&format!("{root}{int}"), &int_key, now()).unwrap();
    assert_eq!(ca.subject(), "CN=Old Signing CA");
    let issued = ca
        .issue(&leaf(&["x.lacave"], &[], 5), random_serial(), "api", now())
        .unwrap();
    let chain = parse_pem(&issued.chain_pem);
    assert_eq!(chain.len(), 2, "leaf and intermediate");
    assert_eq!(
        parse(&chain[1]).unwrap().subject().to_string(),
        "CN=Old Signing CA"
    );
    assert_eq!(parse_pem(&ca.bundle_pem()).len(), 2);
    assert!(ca.root_pem().contains(root.lines().nth(1).unwrap()));
}

#[test]
fn import_refuses_what_cannot_be_a_working_ca() {
    let (root, int, int_key) = root_and_intermediate(now() + Duration::days(100));
    let other_key = KeyPair::generate().unwrap().serialize_pem();
    let err = Ca::import(&format!("{int}{root}"), &other_key, now()).unwrap_err();
    assert!(
        err.to_string().contains("does not match any certificate"),
        "{err}"
    );

    let ca = Ca::generate(&settings(KeyType::EcdsaP256), now()).unwrap();
    let leafed = ca
        .issue(
            &leaf(&["leaf.lacave"], &[], 5),
            random_serial(),
            "api",
            now(),
        )
        .unwrap();
    let err = Ca::import(
        &leafed.certificate_pem,
        leafed.private_key_pem.as_deref().unwrap(),
        now(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("is not a CA certificate"), "{err}");

    let (root, int, int_key2) = root_and_intermediate(now() - Duration::days(1));
    let err = Ca::import(&format!("{int}{root}"), &int_key2, now()).unwrap_err();
    assert!(err.to_string().contains("expired on"), "{err}");

    let err = Ca::import("not pem", &int_key, now()).unwrap_err();
    assert!(err.to_string().contains("no certificate"), "{err}");
    let err = Ca::import(&root, "garbage", now()).unwrap_err();
    assert!(err.to_string().contains("no usable private key"), "{err}");
}

#[test]
fn csr_requests_are_signed_without_a_key_leaving_the_client() {
    let ca = Ca::generate(&settings(KeyType::EcdsaP256), now()).unwrap();
    let key = KeyPair::generate().unwrap();
    let csr = CertificateParams::new(vec!["ignored.example".to_string()])
        .unwrap()
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap();
    let mut req = leaf(&["dashboard.kube.lacave"], &[], 30);
    req.csr_pem = Some(csr);
    let issued = ca.issue(&req, random_serial(), "api", now()).unwrap();
    assert!(issued.private_key_pem.is_none());
    let der = &parse_pem(&issued.certificate_pem)[0];
    let cert = parse(der).unwrap();
    assert_eq!(
        cert.public_key().raw,
        key.subject_public_key_info().as_slice()
    );
    let san = cert.subject_alternative_name().unwrap().unwrap();
    assert_eq!(
        san.value.general_names.len(),
        1,
        "the request's names, not the CSR's"
    );

    req.csr_pem = Some(
        "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n".into(),
    );
    let err = ca.issue(&req, random_serial(), "api", now()).unwrap_err();
    assert!(err.to_string().starts_with("csr:"), "{err}");
}

#[test]
fn save_and_load_round_trip_with_private_key_file() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    assert!(matches!(Ca::load(&pki, now()), Err(PkiError::Missing(_))));
    let ca = Ca::generate(&settings(KeyType::EcdsaP256), now()).unwrap();
    ca.save(&pki).unwrap();
    let mode = std::fs::metadata(pki.join(CA_KEY_FILE))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let loaded = Ca::load(&pki, now()).unwrap();
    assert_eq!(loaded.bundle_pem(), ca.bundle_pem());
    std::fs::set_permissions(
        pki.join(CA_KEY_FILE),
        std::fs::Permissions::from_mode(0o640),
    )
    .unwrap();
    assert!(
        Ca::load(&pki, now())
            .unwrap_err()
            .to_string()
            .contains("chmod 600")
    );
}

#[test]
fn cert_manager_manifests_carry_the_ca() {
    let ca = Ca::generate(&settings(KeyType::EcdsaP256), now()).unwrap();
    let yaml = ca.cert_manager_manifests();
    assert!(yaml.contains("kind: ClusterIssuer"));
    assert!(yaml.contains("apiVersion: cert-manager.io/v1"));
    assert!(yaml.contains("secretName: ca-lacave-key-pair"));
    let crt_line = yaml
        .lines()
        .find(|l| l.trim_start().starts_with("tls.crt:"))
        .unwrap();
    let b64 = crt_line.split(": ").nth(1).unwrap();
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    assert_eq!(String::from_utf8(decoded).unwrap(), ca.root_pem());
}

use super::*;
use crate::model::{NodeState, Role};

fn node(host: &str, ip: &str, role: Role) -> Node {
    let now = time::OffsetDateTime::UNIX_EPOCH;
    Node {
        hostname: Some(host.parse().unwrap()),
        ip: Some(ip.parse().unwrap()),
        role: Some(role),
        state: NodeState::Registered,
        ..Node::discovered("52:54:00:00:00:01".parse().unwrap(), now)
    }
}

fn settings() -> ZoneSettings {
    ZoneSettings {
        zone: name("lacave."),
        ttl: 300,
        cluster_name: "kube".into(),
        cluster_roles: vec![Role::ControlPlane],
        server_ip: "192.168.1.10".parse().unwrap(),
        serving_only: false,
        service_names: Vec::new(),
    }
}

fn spec(n: &str, t: &str, v: &str) -> RecordSpec {
    RecordSpec::parse(n, t, v, None, &name("lacave.")).unwrap()
}

fn zone(nodes: &[Node], extra: &[RecordSpec]) -> Zone {
    let s = settings();
    let (records, reverse, dropped) = zone_records(&s, nodes.iter(), extra);
    Zone::assemble(&s, records, reverse, dropped, 7)
}

fn q(z: &Zone, n: &str, t: RecordType) -> (ResponseCode, Vec<String>, Vec<String>) {
    match z.lookup(&LowerName::from(&name(n)), t) {
        Lookup::NotOurs => (ResponseCode::Refused, vec![], vec![]),
        Lookup::Answer {
            rcode,
            answers,
            authority,
            ..
        } => (
            rcode,
            answers
                .iter()
                .map(|r| format!("{} {}", r.name, r.data))
                .collect(),
            authority
                .iter()
                .map(|r| r.record_type().to_string())
                .collect(),
        ),
    }
}

fn cluster() -> Vec<Node> {
    vec![
        node("kube01", "192.168.1.21", Role::ControlPlane),
        node("kube02", "192.168.1.22", Role::Worker),
        node("kube03", "192.168.1.23", Role::ControlPlane),
    ]
}

#[test]
fn while_building_the_cluster_its_name_is_only_serving_control_planes() {
    let s = ZoneSettings {
        serving_only: true,
        ..settings()
    };
    let endpoint = |states: [NodeState; 3]| {
        let nodes: Vec<Node> = cluster()
            .into_iter()
            .zip(states)
            .map(|(n, state)| Node { state, ..n })
            .collect();
        let (records, reverse, dropped) = zone_records(&s, nodes.iter(), &[]);
        let z = Zone::assemble(&s, records, reverse, dropped, 7);
        q(&z, "kube.lacave.", RecordType::A).1
    };
    use NodeState::*;
    // Nothing serves yet: the name has no address (and no node is joined through it).
    assert!(
        endpoint([Booted, Ready, Booted]).is_empty(),
        "a worker never"
    );
    // The control plane running `kubeadm init` reaches itself through the name.
    assert_eq!(
        endpoint([Joining, Booted, Booted]),
        ["kube.lacave. 192.168.1.21"]
    );
    // Once one is Ready, only Ready ones: a second control plane joining is not named.
    assert_eq!(
        endpoint([Ready, Ready, Joining]),
        ["kube.lacave. 192.168.1.21"]
    );
    assert_eq!(endpoint([Ready, Ready, Ready]).len(), 2);
    // A failed or removed control plane is withdrawn.
    assert_eq!(
        endpoint([Failed, Ready, Ready]),
        ["kube.lacave. 192.168.1.23"]
    );
    // So is one whose API server stopped answering (notready), while another serves...
    assert_eq!(
        endpoint([NotReady, Ready, Ready]),
        ["kube.lacave. 192.168.1.23"]
    );
    // ...but with none Ready, the unwell ones are better than no address at all.
    assert_eq!(
        endpoint([NotReady, Ready, Joining]),
        ["kube.lacave. 192.168.1.21"]
    );
}

#[test]
fn nodes_cluster_name_and_reverse_records() {
    let z = zone(&cluster(), &[]);
    assert_eq!(
        q(&z, "kube02.lacave.", RecordType::A).1,
        ["kube02.lacave. 192.168.1.22"]
    );
    assert_eq!(
        q(&z, "kube.lacave.", RecordType::A).1,
        ["kube.lacave. 192.168.1.21", "kube.lacave. 192.168.1.23"],
        "only control-plane nodes"
    );
    assert_eq!(
        q(&z, "22.1.168.192.in-addr.arpa.", RecordType::PTR).1,
        ["22.1.168.192.in-addr.arpa. kube02.lacave."]
    );
    assert_eq!(
        q(&z, "ns.lacave.", RecordType::A).1,
        ["ns.lacave. 192.168.1.10"]
    );
    let (rcode, answers, _) = q(&z, "lacave.", RecordType::SOA);
    assert_eq!(rcode, ResponseCode::NoError);
    assert!(answers[0].contains(" 7 3600 600 86400 300"), "{answers:?}");
}

#[test]
fn nxdomain_and_nodata_both_carry_the_soa() {
    let z = zone(&cluster(), &[spec("login.kube", "CNAME", "kube")]);
    assert_eq!(
        q(&z, "nope.lacave.", RecordType::A),
        (ResponseCode::NXDomain, vec![], vec!["SOA".into()])
    );
    assert_eq!(
        q(&z, "kube01.lacave.", RecordType::AAAA),
        (ResponseCode::NoError, vec![], vec!["SOA".into()])
    );
    // An empty non-terminal exists: NODATA, not NXDOMAIN.
    let z = zone(&cluster(), &[spec("a.b.c", "A", "10.0.0.1")]);
    assert_eq!(q(&z, "b.c.lacave.", RecordType::A).0, ResponseCode::NoError);
    assert_eq!(
        q(&z, "x.b.c.lacave.", RecordType::A).0,
        ResponseCode::NXDomain
    );
    // A name outside every zone we serve is not ours.
    assert_eq!(
        q(&z, "example.com.", RecordType::A).0,
        ResponseCode::Refused
    );
    assert_eq!(
        q(&z, "9.9.10.in-addr.arpa.", RecordType::PTR).0,
        ResponseCode::Refused
    );
}

#[test]
fn cname_chains_are_followed_inside_the_zone() {
    let z = zone(
        &cluster(),
        &[
            spec("login.kube", "CNAME", "kube"),
            spec("dashboard.kube", "CNAME", "login.kube"),
            spec("ext", "CNAME", "www.example.com."),
            spec("dangling", "CNAME", "missing"),
        ],
    );
    let (rcode, answers, _) = q(&z, "dashboard.kube.lacave.", RecordType::A);
    assert_eq!(rcode, ResponseCode::NoError);
    assert_eq!(
        answers,
        [
            "dashboard.kube.lacave. login.kube.lacave.",
            "login.kube.lacave. kube.lacave.",
            "kube.lacave. 192.168.1.21",
            "kube.lacave. 192.168.1.23"
        ]
    );
    assert_eq!(
        q(&z, "ext.lacave.", RecordType::A).1,
        ["ext.lacave. www.example.com."]
    );
    let (rcode, answers, auth) = q(&z, "dangling.lacave.", RecordType::A);
    assert_eq!(
        (rcode, answers.len(), auth),
        (ResponseCode::NXDomain, 1, vec!["SOA".into()])
    );
    assert_eq!(
        q(&z, "login.kube.lacave.", RecordType::CNAME).1,
        ["login.kube.lacave. kube.lacave."]
    );
}

#[test]
fn case_does_not_matter() {
    let z = zone(&cluster(), &[]);
    assert_eq!(q(&z, "KUBE01.LaCave.", RecordType::A).1.len(), 1);
}

#[test]
fn a_cname_never_shares_a_name_with_data() {
    let z = zone(
        &cluster(),
        &[
            spec("kube01", "CNAME", "kube"),
            spec("x", "A", "10.0.0.1"),
            spec("x", "CNAME", "kube"),
        ],
    );
    assert_eq!(z.dropped.len(), 2, "{:?}", z.dropped);
    assert_eq!(
        q(&z, "kube01.lacave.", RecordType::A).1,
        ["kube01.lacave. 192.168.1.21"]
    );
}

#[test]
fn digest_follows_content() {
    let s = settings();
    let a = zone_records(&s, cluster().iter(), &[]);
    let b = zone_records(&s, cluster().iter().rev(), &[]);
    assert_eq!(
        digest(&a.0, &a.1),
        digest(&b.0, &b.1),
        "order does not matter"
    );
    let c = zone_records(&s, cluster()[..2].iter(), &[]);
    assert_ne!(digest(&a.0, &a.1), digest(&c.0, &c.1));
}

#[test]
fn transfers_start_and_end_with_the_soa() {
    let z = zone(&cluster(), &[]);
    let axfr = z.transfer(&LowerName::from(&name("lacave."))).unwrap();
    assert_eq!(axfr.first().unwrap().record_type(), RecordType::SOA);
    assert_eq!(axfr.last().unwrap().record_type(), RecordType::SOA);
    assert!(axfr.iter().all(|r| r.name.to_string().ends_with("lacave.")));
    assert_eq!(z.zone_files().len(), 2, "forward and one reverse zone");
}

#[test]
fn a_record_whose_target_no_longer_fits_is_dropped_not_fatal() {
    // Stored against another zone, a 250-character relative target cannot take "lacave." on.
    let long = ["a"; 125].join(".");
    let spec = RecordSpec::parse("x", "CNAME", &long, None, &Name::root()).unwrap();
    let z = zone(&cluster(), &[spec]);
    assert_eq!(z.dropped.len(), 1, "{:?}", z.dropped);
    assert_eq!(
        q(&z, "kube01.lacave.", RecordType::A).0,
        ResponseCode::NoError
    );
}

#[test]
fn the_addons_names_follow_the_cluster_name_unless_the_operator_says_otherwise() {
    let s = ZoneSettings {
        service_names: vec!["dashboard".into(), "login".into()],
        ..settings()
    };
    let extra = [spec("login.kube", "A", "192.168.1.50")];
    let (records, reverse, dropped) = zone_records(&s, cluster().iter(), &extra);
    assert!(dropped.is_empty(), "{dropped:?}");
    let z = Zone::assemble(&s, records, reverse, dropped, 7);
    let (rcode, answers, _) = q(&z, "dashboard.kube.lacave.", RecordType::A);
    assert_eq!(rcode, ResponseCode::NoError);
    assert_eq!(
        answers,
        [
            "dashboard.kube.lacave. kube.lacave.",
            "kube.lacave. 192.168.1.21",
            "kube.lacave. 192.168.1.23"
        ]
    );
    // The operator's record wins (a Keycloak outside the cluster, say).
    let (_, answers, _) = q(&z, "login.kube.lacave.", RecordType::A);
    assert_eq!(answers, ["login.kube.lacave. 192.168.1.50"]);
}

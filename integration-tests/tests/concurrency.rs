//! Uniqueness under contention: 32 clients race to register 1,000 nodes whose MACs,
//! hostnames or IPs collide in groups of four. Exactly one request of each group wins.

use std::collections::BTreeMap;
use std::sync::Arc;

use lacave::api::CreateNodeRequest;
use lacave::cli::ClientError;
use lacave_integration_tests::TestDaemon;
use tokio::sync::Mutex;

const REQUESTS: u32 = 1000;
const GROUP: u32 = 4;

/// Request `i` belongs to group `i / 4`; within a group exactly one field is shared,
/// cycling through MAC, hostname and IP from group to group.
fn request(i: u32) -> (u32, &'static str, CreateNodeRequest) {
    let g = i / GROUP;
    let field = ["mac", "hostname", "ip"][(g % 3) as usize];
    let mac_of = |n: u32| {
        let b = n.to_be_bytes();
        format!("52:54:{:02x}:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2], b[3])
    };
    let ip_of = |n: u32| {
        let b = n.to_be_bytes();
        format!("10.{}.{}.{}", b[1], b[2], b[3])
    };
    let req = CreateNodeRequest {
        mac: if field == "mac" {
            mac_of(100_000 + g)
        } else {
            mac_of(i)
        },
        hostname: if field == "hostname" {
            format!("group{g}")
        } else {
            format!("node{i}")
        },
        ip: if field == "ip" {
            ip_of(100_000 + g)
        } else {
            ip_of(i + 1)
        },
        role: "worker".into(),
        labels: Default::default(),
        install_disk: None,
        boot_file: None,
    };
    (g, field, req)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_winner_per_collision_and_nothing_lost() {
    let d = TestDaemon::start().await;
    let work: Arc<Mutex<Vec<u32>>> = Arc::new(Mutex::new((0..REQUESTS).rev().collect()));
    let results: Arc<Mutex<BTreeMap<u32, Result<String, String>>>> = Arc::default();
    let mut clients = Vec::new();
    for _ in 0..32 {
        let client = d.client();
        let work = work.clone();
        let results = results.clone();
        clients.push(tokio::spawn(async move {
            loop {
                let Some(i) = work.lock().await.pop() else {
                    return;
                };
                let (_, _, req) = request(i);
                let result = match client.create_node(&req).await {
                    Ok(node) => Ok(node.mac),
                    Err(ClientError::Refused {
                        status: 409,
                        errors,
                        ..
                    }) => Err(errors[0].field.clone()),
                    Err(e) => panic!("request {i}: {e}"),
                };
                results.lock().await.insert(i, result);
            }
        }));
    }
    for c in clients {
        c.await.unwrap();
    }

    let results = results.lock().await;
    assert_eq!(results.len(), REQUESTS as usize);
    let mut winners: BTreeMap<u32, u32> = BTreeMap::new();
    for (&i, result) in results.iter() {
        let (g, field, _) = request(i);
        match result {
            Ok(_) => *winners.entry(g).or_default() += 1,
            Err(conflict) => assert_eq!(conflict, field, "request {i} lost on the wrong field"),
        }
    }
    let groups = REQUESTS / GROUP;
    assert_eq!(winners.len() as u32, groups, "every group has a winner");
    assert!(
        winners.values().all(|&n| n == 1),
        "exactly one winner per group"
    );

    let stored = d.client().list_nodes().await.unwrap();
    assert_eq!(
        stored.len() as u32,
        groups,
        "nothing lost, nothing duplicated"
    );
    let won: Vec<&String> = results.values().filter_map(|r| r.as_ref().ok()).collect();
    for node in &stored {
        assert!(
            won.contains(&&node.mac),
            "{} was stored without a 201",
            node.mac
        );
    }
    for field in ["hostname", "ip"] {
        let mut seen = std::collections::BTreeSet::new();
        for node in &stored {
            let v = if field == "hostname" {
                &node.hostname
            } else {
                &node.ip
            };
            assert!(seen.insert(v.clone()), "duplicate {field} {v:?}");
        }
    }
}

//! Event streams must not hurt anyone else (issue #31, items 4 and 5), against the real
//! daemon on a registry of 21,000 events: replays read from disk a page at a time, the whole
//! replay bounded, memory bounded per stream and in total, `/healthz` answering throughout; at
//! most a quarter of the API's slots hold streams (beyond: 503), so ordinary requests always
//! get one. Everything on loopback.

use std::path::Path;
use std::time::{Duration, Instant};

use lacave::model::{EventKind, NewNode, NodeKey, Role};
use lacave::store::Store;
use lacave_integration_tests::{DaemonProcess, test_config_text};

const NODES: u32 = 100;
const EVENTS_PER_NODE: u32 = 210;

/// A registry of 100 nodes with 211 events each (21,100 in all); the sequence numbers of
/// every event, in order.
fn populate(state: &Path) -> Vec<u64> {
    let store = Store::open(&state.join("registry")).unwrap();
    for n in 0..NODES {
        let hostname = format!("node{n:03}");
        store
            .create_node(&NewNode {
                mac: format!("52:54:00:00:{:02x}:{:02x}", n / 256, n % 256)
                    .parse()
                    .unwrap(),
                hostname: hostname.parse().unwrap(),
                ip: format!("10.1.{}.{}", n / 200, n % 200 + 10)
                    .parse()
                    .unwrap(),
                role: Role::Worker,
                labels: Default::default(),
                install_disk: None,
                boot_file: None,
            })
            .unwrap();
        let key = [NodeKey::Hostname(hostname.parse().unwrap())];
        for i in 0..EVENTS_PER_NODE {
            store
                .record_event(
                    &key,
                    EventKind::Updated {
                        fields: vec!["labels".into()],
                    },
                    format!("edit {i} of {hostname}: {}", "x".repeat(200)),
                )
                .unwrap();
        }
    }
    let mut seqs: Vec<u64> = (0..NODES)
        .flat_map(|n| {
            let key = [NodeKey::Hostname(format!("node{n:03}").parse().unwrap())];
            store.events(&key).unwrap().into_iter().map(|e| e.seq)
        })
        .collect();
    seqs.sort_unstable();
    seqs
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

async fn healthz_latency(client: &reqwest::Client, url: &str) -> Duration {
    let started = Instant::now();
    let r = client
        .get(format!("{url}/healthz"))
        .timeout(Duration::from_secs(20))
        .send()
        .await
        .expect("/healthz answers");
    assert!(r.status().is_success());
    started.elapsed()
}

/// Reads a stream until `want` events arrived (or it ends); their ids, and whether a
/// `reset` came.
async fn read_events(mut r: reqwest::Response, want: usize) -> (Vec<u64>, bool) {
    let mut text = String::new();
    let mut ids = Vec::new();
    let mut reset = false;
    while ids.len() < want && !reset {
        let Ok(Some(chunk)) = tokio::time::timeout(Duration::from_secs(30), r.chunk())
            .await
            .expect("the stream keeps coming")
        else {
            break;
        };
        text.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = text.find("\n\n") {
            let message: String = text.drain(..end + 2).collect();
            let id = message
                .lines()
                .find_map(|l| l.strip_prefix("id: "))
                .and_then(|v| v.parse().ok());
            if message.contains("event: reset") {
                reset = true;
            } else if message.contains("event: node")
                && let Some(id) = id
            {
                ids.push(id);
            }
        }
    }
    (ids, reset)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_are_bounded_and_replays_are_paged() {
    // tmpfs: 21,000 durable writes to set the registry up take seconds, not minutes.
    let state = tempfile::tempdir_in("/dev/shm").unwrap();
    let started = Instant::now();
    let seqs = populate(state.path());
    assert_eq!(seqs.len(), (NODES * (EVENTS_PER_NODE + 1)) as usize);
    eprintln!(
        "registry of {} events set up in {:?}",
        seqs.len(),
        started.elapsed()
    );

    let d = DaemonProcess::start_with_nofile(state.path(), &test_config_text(state.path()), 16384);
    let url = d.url.clone();
    let token = d.token(state.path());
    let client = reqwest::Client::new();
    let events = |after: u64| {
        client
            .get(format!("{url}/api/v1/events?after={after}"))
            .bearer_auth(&token)
            .send()
    };
    let idle_rss = rss_kib(d.child.id());

    // The whole history is more than a replay holds: reset, at once, nothing read.
    let (ids, reset) = read_events(events(0).await.unwrap(), 1).await;
    assert!(reset && ids.is_empty(), "after=0 on 21,100 events resets");

    // 15,000 behind: replayed whole, in order, none missed — a page at a time.
    let from = seqs[seqs.len() - 15_001];
    let want: Vec<u64> = seqs[seqs.len() - 15_000..].to_vec();
    let r = events(from).await.unwrap();
    let reader = tokio::spawn(read_events(r, 15_000));

    // Meanwhile 40 more replays of 15,000 events that do not read, and 20 that reset.
    let mut held = Vec::new();
    for _ in 0..40 {
        held.push(events(from).await.unwrap());
    }
    for _ in 0..20 {
        held.push(events(0).await.unwrap());
    }
    let mut worst = Duration::ZERO;
    let mut peak_rss = 0;
    for _ in 0..10 {
        worst = worst.max(healthz_latency(&client, &url).await);
        peak_rss = peak_rss.max(rss_kib(d.child.id()));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (ids, reset) = reader.await.unwrap();
    assert!(!reset, "15,000 behind is within the replay");
    assert_eq!(ids.len(), want.len(), "every event replayed");
    assert!(
        ids == want,
        "the replay is the history, in order, none twice"
    );
    peak_rss = peak_rss.max(rss_kib(d.child.id()));
    eprintln!(
        "62 streams replaying or reset: /healthz worst {worst:?}; daemon RSS idle {} MiB, peak {} MiB",
        idle_rss / 1024,
        peak_rss / 1024
    );
    assert!(worst < Duration::from_secs(1), "/healthz took {worst:?}");
    assert!(
        peak_rss < idle_rss + 150 * 1024,
        "replays grew the daemon from {idle_rss} KiB to {peak_rss} KiB"
    );

    // The stream cap: a quarter of the API's 256 slots. Open streams until one is refused.
    let open_streams = || async {
        let text = client
            .get(format!("{url}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let gauge = |name: &str| -> usize {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
                .unwrap()
        };
        (
            gauge("lacave_event_streams"),
            gauge("lacave_event_streams_max"),
        )
    };
    let mut refused = None;
    for _ in 0..100 {
        let r = events(seqs[seqs.len() - 1]).await.unwrap();
        if r.status() == 200 {
            held.push(r);
        } else {
            refused = Some(r);
            break;
        }
    }
    let refused = refused.expect("some stream is refused");
    let (open, max) = open_streams().await;
    assert_eq!(max, 64, "a quarter of the API's 256 connections");
    assert_eq!(open, 64, "refused only once every place is taken");
    assert!(held.len() >= 62, "{} streams held", held.len());
    assert_eq!(refused.status(), 503, "a stream beyond the cap is refused");
    assert_eq!(refused.headers()["retry-after"], "5");
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["code"], "too_many_streams");
    // Ordinary requests still get a slot.
    let nodes = client
        .get(format!("{url}/api/v1/nodes"))
        .bearer_auth(&token)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .unwrap();
    assert_eq!(nodes.status(), 200);
    // A closed stream frees its place (at its next keep-alive at the latest, 15 s).
    drop(held.pop());
    let mut reopened = None;
    for _ in 0..200 {
        let r = events(seqs[seqs.len() - 1]).await.unwrap();
        if r.status() == 200 {
            reopened = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        reopened.is_some(),
        "a stream's place is freed when it closes"
    );
}

//! The DNS query path under malformed input, without sockets: valid queries of every kind,
//! then damaged, cut, grown and random versions of them, through the real handler over UDP
//! and TCP framing. Nothing may panic, and everything answered must be a response to the
//! query it answers. (The same harness backs the cargo-fuzz target in `fuzz/`.)

use std::net::SocketAddr;

use hickory_server::net::xfer::Protocol;
use lacave::dns::fuzz::Harness;
use lacave_integration_tests::Rng;

fn query(id: u16, name: &str, qtype: u16, edns: bool) -> Vec<u8> {
    let mut q = id.to_be_bytes().to_vec();
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, u8::from(edns)]);
    for label in name.split('.').filter(|l| !l.is_empty()) {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&[0, 1]);
    if edns {
        q.extend_from_slice(&[0, 0, 41, 0x10, 0, 0, 0, 0, 0, 0, 0]);
    }
    q
}

fn seeds() -> Vec<Vec<u8>> {
    let names = [
        "kube01.lacave",
        "kube.lacave",
        "login.kube.lacave",
        "lacave",
        "nope.lacave",
        "21.1.168.192.in-addr.arpa",
        "example.com",
        "KUBE02.LACAVE",
    ];
    // A, NS, CNAME, SOA, PTR, MX, TXT, AAAA, SRV, ANY, AXFR, IXFR, and an unknown type.
    let types = [1u16, 2, 5, 6, 12, 15, 16, 28, 33, 255, 252, 251, 65000];
    let mut out = Vec::new();
    for (i, n) in names.iter().enumerate() {
        for (j, t) in types.iter().enumerate() {
            out.push(query((i * 100 + j) as u16, n, *t, (i + j) % 2 == 0));
        }
    }
    out
}

fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut b = seed.to_vec();
    match rng.below(6) {
        0 => rng.scramble(&mut b),
        1 => b.truncate(rng.below(b.len())),
        2 => {
            let at = rng.below(b.len());
            let extra: Vec<u8> = (0..rng.below(64)).map(|_| rng.next_u64() as u8).collect();
            b.splice(at..at, extra);
        }
        3 => {
            // Counts and lengths are what parsers trust most.
            let i = [4usize, 5, 6, 7, 8, 9, 10, 11, 12][rng.below(9)];
            if i < b.len() {
                b[i] = 0xff;
            }
        }
        4 => {
            let copy = b.clone();
            b.extend_from_slice(&copy);
        }
        _ => b = (0..rng.below(700)).map(|_| rng.next_u64() as u8).collect(),
    }
    b
}

fn check(input: &[u8], answers: &[Vec<u8>], protocol: Protocol) {
    for a in answers {
        assert!(a.len() >= 12, "short answer {a:?} to {input:?}");
        assert_eq!(a[..2], input[..2], "answer id differs for {input:?}");
        assert!(a[2] & 0x80 != 0, "answer without QR for {input:?}");
        if protocol == Protocol::Udp {
            assert!(a.len() <= 4096, "UDP answer of {} bytes", a.len());
        }
    }
}

const ROUNDS: usize = 6_000;

#[tokio::test]
async fn malformed_queries_are_answered_or_dropped_never_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let harness = Harness::new(dir.path());
    let outsider: SocketAddr = "127.0.0.3:5353".parse().unwrap();
    let recursor: SocketAddr = "127.0.0.1:5353".parse().unwrap();

    // Valid queries get sensible answers.
    let a = harness
        .answer(
            &query(7, "kube01.lacave", 1, false),
            outsider,
            Protocol::Udp,
        )
        .await;
    assert_eq!(a.len(), 1);
    assert_eq!(a[0][3] & 0x0f, 0, "NOERROR");
    assert_eq!(u16::from_be_bytes([a[0][6], a[0][7]]), 1, "one answer");
    let refused = harness
        .answer(&query(8, "example.com", 1, false), outsider, Protocol::Udp)
        .await;
    assert_eq!(refused[0][3] & 0x0f, 5, "REFUSED for an outsider");
    // The same question again, with another ID, is answered by the UDP workers from the
    // answer already sent (the same bytes, its own ID); a refusal is never kept.
    let again = harness
        .cached(&query(0x4242, "kube01.lacave", 1, false))
        .expect("a repeated question is answered from the answers already sent");
    assert_eq!(again[..2], [0x42, 0x42]);
    assert_eq!(again[2..], a[0][2..]);
    assert!(harness.cached(&query(9, "example.com", 1, false)).is_none());
    // Discovered machines are not in the zone: one arriving keeps the answers already sent.
    harness.discover([2, 0, 0, 0, 0x42, 1]);
    assert!(
        harness
            .cached(&query(0x4343, "kube01.lacave", 1, false))
            .is_some(),
        "a discovered machine cleared the DNS answers"
    );

    let seeds = seeds();
    let mut rng = Rng(0x5eed_1ace_cafe_f00d);
    let mut answered = 0;
    for round in 0..ROUNDS {
        let seed = &seeds[rng.below(seeds.len())];
        let input = if round < seeds.len() {
            seed.clone()
        } else {
            mutate(&mut rng, seed)
        };
        let protocol = if round % 3 == 0 {
            Protocol::Tcp
        } else {
            Protocol::Udp
        };
        // Twice from an address allowed to recurse, into the (unreachable) forwarder: each of
        // those waits for the forwarder's timeout.
        let src = if round % 2_999 == 1_000 {
            recursor
        } else {
            outsider
        };
        let answers = harness.answer(&input, src, protocol).await;
        check(&input, &answers, protocol);
        answered += usize::from(!answers.is_empty());
    }
    assert!(
        answered > ROUNDS / 2,
        "most inputs with a readable header are answered ({answered} of {ROUNDS})"
    );
}

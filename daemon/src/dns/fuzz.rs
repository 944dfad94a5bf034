//! Runs raw query bytes through the real DNS handler exactly as the server does (parse,
//! decide, encode), without sockets. The cargo-fuzz target in `fuzz/` and the mutation test in
//! `integration-tests/tests/dns_fuzz.rs` both drive the query path through [`Harness`].

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use hickory_server::net::xfer::Protocol;

use super::server::DnsHandler;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::store::Store;

/// A DNS handler over a small registry, for fuzzing.
pub struct Harness {
    handler: DnsHandler,
}

impl Harness {
    /// Opens a registry in `dir` (empty, or from an earlier harness) with a few nodes and
    /// records, and the handler in front of it. Forwarding is on for 127.0.0.1 towards a port
    /// nobody listens on, so the forwarding path is exercised too.
    pub fn new(dir: &Path) -> Harness {
        let text = format!(
            r#"state_dir = "{}"
[dns]
forwarders = ["127.0.0.1:9"]
allow_recursion_from = ["127.0.0.1"]
axfr_allow = ["127.0.0.2"]
[[dns.records]]
name = "login.kube"
type = "CNAME"
value = "kube"
[[dns.records]]
name = "@"
type = "TXT"
value = "fuzz"
"#,
            dir.display()
        );
        let config = Config::from_toml(&text, Path::new("fuzz.toml")).expect("valid");
        let store = Store::open(&config.registry_dir()).expect("the registry opens");
        if store.list_nodes().expect("readable").is_empty() {
            for i in 1..=3u8 {
                let node = crate::model::NewNode {
                    mac: crate::model::MacAddr::new([0x52, 0x54, 0, 0, 0, i]),
                    hostname: format!("kube0{i}").parse().expect("valid"),
                    ip: format!("192.168.1.{}", 20 + i).parse().expect("valid"),
                    role: crate::model::Role::ControlPlane,
                    labels: Default::default(),
                    install_disk: None,
                    boot_file: None,
                };
                store.create_node(&node).expect("registered");
            }
        }
        let handler = DnsHandler::new(&config, store, Arc::new(Metrics::default()))
            .expect("the handler builds");
        Harness { handler }
    }

    /// The answers to one raw message from `src`, as the server would send them: none for
    /// what it drops (fewer than 12 bytes, responses), FORMERR when the header reads but the
    /// rest does not, else the handler's answer.
    ///
    /// Over UDP the query also goes through the answers already sent, as a UDP worker would:
    /// the full path answers (and keeps the answer if it may), then the same bytes are asked
    /// again, and an answer from the cache must be the full path's, byte for byte (a panic
    /// otherwise, which the fuzzer reports).
    pub async fn answer(&self, bytes: &[u8], src: SocketAddr, protocol: Protocol) -> Vec<Vec<u8>> {
        if protocol != Protocol::Udp {
            return super::tcp::answer(&self.handler, bytes, src, protocol).await;
        }
        let mut cached = Vec::new();
        let hit_before = self.handler.cached_answer(bytes, &mut cached);
        let answers = self.handler.answer_udp(bytes, src).await;
        if hit_before {
            assert_eq!(answers, vec![cached.clone()], "a cached answer differs");
        }
        if self.handler.cached_answer(bytes, &mut cached) {
            assert_eq!(answers, vec![cached], "the answer just kept differs");
        }
        answers
    }

    /// Records a machine as `discovered`, as the DHCP loop does for an unknown MAC.
    pub fn discover(&self, mac: [u8; 6]) {
        let store = self.handler.store();
        store
            .record_discovered(crate::model::MacAddr::new(mac))
            .expect("recorded");
        store.flush().expect("flushed");
    }

    /// The answer the UDP workers would send from the answers already sent, if any.
    pub fn cached(&self, bytes: &[u8]) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        self.handler.cached_answer(bytes, &mut out).then_some(out)
    }
}

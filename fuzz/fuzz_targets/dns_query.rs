//! Raw bytes as a DNS query over UDP and TCP, through the daemon's real handler.
//! Run: `cd fuzz && cargo +nightly fuzz run dns_query` (scripts/fuzz does it).
#![no_main]

use std::sync::LazyLock;

use hickory_server::net::xfer::Protocol;
use lacave::dns::fuzz::Harness;
use libfuzzer_sys::fuzz_target;

struct World {
    runtime: tokio::runtime::Runtime,
    harness: Harness,
    _dir: tempfile::TempDir,
}

static WORLD: LazyLock<World> = LazyLock::new(|| {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let harness = runtime.block_on(async { Harness::new(dir.path()) });
    World { runtime, harness, _dir: dir }
});

fuzz_target!(|data: &[u8]| {
    let w = &*WORLD;
    let src = "127.0.0.3:5353".parse().expect("an address");
    w.runtime.block_on(async {
        for protocol in [Protocol::Udp, Protocol::Tcp] {
            for answer in w.harness.answer(data, src, protocol).await {
                assert!(answer.len() >= 12 && answer[..2] == data[..2]);
            }
        }
    });
});

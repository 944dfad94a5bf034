//! Raw bytes as a DHCP request through decode, decide and encode, in full and proxy mode.
//! Run: `cd fuzz && cargo +nightly fuzz run dhcp_decide` (scripts/fuzz does it).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for proxy in [false, true] {
        if let Some(reply) = lacave::dhcp::fuzz::decide_bytes(data, proxy) {
            assert!(reply.len() >= 240 && reply[4..8] == data[4..8]);
        }
    }
});

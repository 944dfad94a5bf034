//! DHCP for network boot. This module holds the decision "what does this packet get", as pure
//! functions over a parsed message and a snapshot of the registry and leases; the socket loop
//! (next) only moves bytes.
//!
//! Status: the decision logic below is complete and table-tested; the socket loop, lease
//! persistence and `[dhcp]` configuration are the next step (issue 3).

pub mod boot;
pub mod decide;

pub use boot::{BootFiles, BootTarget, ClientFacts, Malformed, boot_target, client_facts};

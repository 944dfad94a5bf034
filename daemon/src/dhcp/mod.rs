//! DHCP for network boot. This module holds the decision "what does this packet get", as pure
//! functions over a parsed message and a snapshot of the registry and leases; the socket loop
//! (next) only moves bytes.
//!
//! `boot` and `decide` are the decisions (pure, table-tested); `server` is the socket loop
//! with durable leases.

pub mod boot;
pub mod decide;
pub mod server;

pub use boot::{BootFiles, BootTarget, ClientFacts, Malformed, boot_target, client_facts};

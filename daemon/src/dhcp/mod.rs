//! DHCP for network boot. This module holds the decision "what does this packet get", as pure
//! functions over a parsed message and a snapshot of the registry and leases; the socket loop
//! (next) only moves bytes.
//!
//! `boot` and `decide` are the decisions (pure, table-tested); `server` is the socket loop
//! with durable leases.

pub mod boot;
pub mod decide;
pub mod fuzz;
pub mod ra;
pub mod server;
pub mod settings;

pub use boot::{BootTarget, ClientFacts, Malformed, boot_target, client_facts};

/// Decodes a DHCP message. dhcproto 0.15 panics on some malformed options (an `assert!` on an
/// option's length) instead of returning an error; that panic is caught here and reported as
/// an error like any other bad packet.
pub fn parse(bytes: &[u8]) -> Result<dhcproto::v4::Message, String> {
    use dhcproto::{Decodable, Decoder};
    let decoded = std::panic::catch_unwind(|| {
        dhcproto::v4::Message::decode(&mut Decoder::new(bytes)).map_err(|e| e.to_string())
    });
    match decoded {
        Ok(result) => result,
        Err(_) => Err("malformed option (the decoder refused it)".into()),
    }
}

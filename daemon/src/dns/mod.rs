//! Authoritative DNS for the cluster zone (and the reverse zones of node addresses), always in
//! step with the registry, with forwarding for allowed clients only.
//!
//! `zone` builds the zone and answers queries (pure); `server` is the request handler (on
//! hickory-server's types), the zone cache, the forwarder and the UDP workers; `fast` the
//! answers already sent, as bytes; `tcp` DNS over TCP.

pub mod fast;
pub mod fuzz;
pub mod server;
pub mod settings;
pub mod tcp;
pub mod zone;

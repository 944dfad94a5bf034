//! Authoritative DNS for the cluster zone (and the reverse zones of node addresses), always in
//! step with the registry, with forwarding for allowed clients only.
//!
//! `records` parses operator records; `zone` builds the zone and answers queries (pure);
//! `server` is the hickory-server request handler, the zone cache and the forwarder.

pub mod fuzz;
pub mod server;
pub mod settings;
pub mod tcp;
pub mod zone;

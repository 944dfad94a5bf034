//! Upstream releases brought into the image mirror by `lacave mirror fetch`, verified before
//! anything is switched: the download (`fetch.rs`) and the OpenPGP and digest checks
//! (`verify.rs`).

pub mod fetch;
pub mod verify;

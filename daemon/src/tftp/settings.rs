//! The `[tftp]` section: its file format, the validated settings of the TFTP service and
//! their checks. Below `config` (which assembles the file).

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RawTftp {
    /// UDP address, e.g. `0.0.0.0:69`.
    ///
    /// Default: unset (TFTP off).
    listen: Option<String>,
    /// The directory served (Debian's and Ubuntu's `ipxe` package puts `undionly.kpxe`,
    /// `snponly.efi`, `ipxe.efi` there).
    ///
    /// Default: `"/usr/lib/ipxe"`.
    #[schema(value_type = Option<String>)]
    root: Option<PathBuf>,
    /// Directories links in the root may lead into (Debian links `ipxe.efi` into `/boot`); any
    /// other link out of the root is refused.
    ///
    /// Default: `["/boot"]`.
    #[schema(value_type = Option<Vec<String>>)]
    follow_links_into: Option<Vec<PathBuf>>,
    /// Transfers one client address may have at once; more get a "busy" error, so one host cannot
    /// take every transfer slot.
    ///
    /// Default: `8`.
    max_transfers_per_client: Option<usize>,
}

/// The read-only TFTP service.
#[derive(Clone, Debug)]
pub struct TftpConfig {
    /// `None`: TFTP is off.
    pub listen: Option<SocketAddr>,
    /// Where the iPXE binaries are (`/usr/lib/ipxe` from Debian's and Ubuntu's `ipxe`).
    pub root: PathBuf,
    /// Directories links in the root may lead into (`/boot`: Debian links `ipxe.efi` there).
    pub follow_links_into: Vec<PathBuf>,
    /// Transfers one client address may have at once (firmware fetches one file at a time);
    /// beyond it a request is refused, so one host cannot take every transfer slot.
    pub max_transfers_per_client: usize,
}

/// Checks `[tftp]`, naming every problem through `problem`.
pub fn validate(raw: RawTftp, problem: &mut impl FnMut(&str, String)) -> TftpConfig {
    let tftp_listen = raw
        .listen
        .as_deref()
        .and_then(|text| match text.parse::<SocketAddr>() {
            Ok(addr) => Some(addr),
            Err(_) => {
                problem(
                    "tftp.listen",
                    format!("{text:?} is not an address and port (e.g. \"0.0.0.0:69\")"),
                );
                None
            }
        });
    let tftp_root = raw.root.unwrap_or_else(|| PathBuf::from("/usr/lib/ipxe"));
    if !tftp_root.is_absolute() {
        problem(
            "tftp.root",
            format!("{} is relative; give an absolute path", tftp_root.display()),
        );
    } else if tftp_listen.is_some() && !tftp_root.is_dir() {
        problem(
            "tftp.root",
            format!(
                "{} is not a directory (Debian and Ubuntu: apt install ipxe)",
                tftp_root.display()
            ),
        );
    }
    let follow_links_into = raw
        .follow_links_into
        .unwrap_or_else(|| vec![PathBuf::from("/boot")]);
    for dir in &follow_links_into {
        if !dir.is_absolute() {
            problem(
                "tftp.follow_links_into",
                format!("{} is relative; give an absolute path", dir.display()),
            );
        }
    }
    let max_transfers_per_client = raw.max_transfers_per_client.unwrap_or(8);
    if max_transfers_per_client == 0 {
        problem(
            "tftp.max_transfers_per_client",
            "0 would refuse every transfer; give at least 1 (default 8)".into(),
        );
    }
    TftpConfig {
        listen: tftp_listen,
        root: tftp_root,
        follow_links_into,
        max_transfers_per_client,
    }
}

//! The `[api]` section: its file format, the validated settings of the operator API's
//! listener and their checks. Below `config` (which assembles the file) and above `model` only.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

use crate::model::validate_dns_name;

#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RawApi {
    /// The file holding the API token; must be mode 0600 (or stricter).
    ///
    /// Default: `<state_dir>/api-token`, generated on first start.
    #[schema(value_type = Option<String>)]
    token_file: Option<PathBuf>,
    /// A listener of the API's own (e.g. `0.0.0.0:8443`); `/api/` and the console then leave the
    /// plain HTTP listener.
    ///
    /// Default: unset (the API shares `[http] listen`).
    listen: Option<String>,
    /// Serve the API's listener over HTTPS with a certificate from the cluster CA.
    ///
    /// Default: `true` when `[api] listen` is set.
    tls: Option<bool>,
    /// Extra DNS names for the API's certificate (it always carries `localhost`, this host's
    /// name, 127.0.0.1, ::1, `server_ip` and the listen address).
    ///
    /// Default: `[]`.
    tls_names: Option<Vec<String>>,
}

#[derive(Clone, Debug)]
pub struct ApiConfig {
    /// A file holding the API token, managed by the operator. `None`: the daemon generates
    /// `<state_dir>/api-token` on first start.
    pub token_file: Option<PathBuf>,
    /// A listener of its own for `/api/`; `None`: the API shares `[http] listen`.
    pub listen: Option<SocketAddr>,
    /// Serve the API listener over HTTPS with a certificate from the cluster CA.
    pub tls: bool,
    /// DNS names (beyond this host's name, `localhost` and the listen/server addresses) that
    /// the API's certificate carries.
    pub tls_names: Vec<String>,
}

/// Checks `[api]` against `http_listen` (`[http] listen`), naming every problem through
/// `problem`.
pub fn validate(
    raw: RawApi,
    http_listen: SocketAddr,
    problem: &mut impl FnMut(&str, String),
) -> ApiConfig {
    if let Some(path) = &raw.token_file
        && !path.is_absolute()
    {
        problem(
            "api.token_file",
            format!("{} is relative; give an absolute path", path.display()),
        );
    }

    let api_listen = match raw.listen.as_deref() {
        None => None,
        Some(text) => match text.parse::<SocketAddr>() {
            Ok(addr) if addr == http_listen && addr.port() != 0 => {
                problem(
                    "api.listen",
                    format!("{addr} is also http.listen; give the API its own port (e.g. 8443)"),
                );
                None
            }
            Ok(addr) => Some(addr),
            Err(_) => {
                problem(
                    "api.listen",
                    format!("{text:?} is not an address and port (e.g. \"0.0.0.0:8443\")"),
                );
                None
            }
        },
    };
    let api_tls = match (raw.tls, &raw.listen) {
        (Some(true), None) => {
            problem(
                "api.tls",
                "needs api.listen: HTTPS is served on the API's own listener, so that iPXE keeps plain HTTP on http.listen".into(),
            );
            false
        }
        (tls, Some(_)) => tls.unwrap_or(true),
        (_, None) => false,
    };
    let mut tls_names = Vec::new();
    for name in raw.tls_names.unwrap_or_default() {
        match validate_dns_name(&name) {
            Ok(n) => tls_names.push(n),
            Err(e) => problem("api.tls_names", e.to_string()),
        }
    }
    ApiConfig {
        token_file: raw.token_file,
        listen: api_listen,
        tls: api_tls,
        tls_names,
    }
}

//! `lacave`: a provisioning appliance for bare-metal Kubernetes on Flatcar Container Linux.
//! See ARCHITECTURE.md for the code map and the invariants each module keeps.

pub mod addons;
pub mod api;
pub mod boot;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod conns;
pub mod dhcp;
pub mod dns;
pub mod http;
pub mod identity;
pub mod images;
#[cfg(test)]
mod layering;
pub mod metrics;
pub mod mirror;
pub mod model;
pub mod pki;
pub mod power;
pub mod release;
pub mod secrets;
pub mod server;
pub mod store;
pub mod systemd;
pub mod tftp;
pub mod tls;
pub mod updates;

use std::path::PathBuf;
use std::process::ExitCode;

use config::Config;

/// The version and the commit it was built from (`build.rs`): `0.1.0 (3f2a9c1d0b7e)`.
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("LACAVE_COMMIT"), ")");

/// How the daemon writes its log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Lines for people: plain under journald (which adds time and colour of its own), the
    /// usual format on a terminal.
    #[default]
    Text,
    /// One JSON object per line (`timestamp`, `level`, `fields` with `message`, the span),
    /// for log shippers (Loki, Vector, Fluent Bit).
    Json,
}

/// Sets up logging in `format`. `LACAVE_LOG` or `RUST_LOG` set the filter.
pub fn init_tracing(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = std::env::var("LACAVE_LOG")
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .or_else(|| EnvFilter::try_from_default_env().ok())
        // hickory logs every query at info level: far too much for a busy server's journal.
        .unwrap_or_else(|| {
            EnvFilter::new(
                "info,hickory_server=warn,hickory_proto=warn,hickory_net=warn,hickory_resolver=warn",
            )
        });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .with_current_span(false)
            .with_span_list(false)
            .try_init(),
        LogFormat::Text if systemd::logging_to_journal() => {
            builder.without_time().with_ansi(false).try_init()
        }
        LogFormat::Text => {
            use std::io::IsTerminal;
            // Colour on a terminal only, and never when NO_COLOR is set (no-color.org).
            let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
            builder
                .with_ansi(std::io::stderr().is_terminal() && !no_color)
                .try_init()
        }
    };
}

/// `lacave serve`: config → validate → open store → bind → spawn → READY → wait for a signal.
pub fn run_serve(config_path: Option<PathBuf>, log_format: LogFormat) -> ExitCode {
    init_tracing(log_format);
    let config = match &config_path {
        Some(path) => match Config::load(path) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::from(cli::exit::CONFIG);
            }
        },
        None => {
            tracing::info!(
                "no --config given: running on embedded defaults (network-boot services off)"
            );
            Config::embedded_defaults()
        }
    };
    tracing::info!(
        config = %config.source.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "<embedded defaults>".into()),
        state_dir = %config.state_dir.display(),
        "starting lacave {}", VERSION
    );
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("lacave")
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("lacave: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let signals = match server::TerminationSignals::install() {
            Ok(s) => s,
            Err(e) => {
                eprintln!("lacave: cannot install signal handlers: {e}");
                return ExitCode::FAILURE;
            }
        };
        let daemon = match server::start(config).await {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(error = %e, "start-up failed");
                eprintln!("lacave: {e}");
                return if e.is_configuration() {
                    ExitCode::from(cli::exit::CONFIG)
                } else if e.is_damaged_data() {
                    ExitCode::from(cli::exit::DATA)
                } else {
                    ExitCode::FAILURE
                };
            }
        };
        let url = format!("http://{}", daemon.http_addr());
        tracing::info!(%url, token_file = %daemon.token_path().display(), "lacave is ready");
        if !systemd::logging_to_journal() {
            // The command that reaches *this* daemon, by this binary's path and this file.
            let me = std::env::current_exe()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|_| "lacave".into());
            let try_it = match &config_path {
                Some(path) => {
                    let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.clone());
                    format!("{me} --config {} node list", path.display())
                }
                None => format!("{me} node list"),
            };
            let console = daemon
                .console_url()
                .map(|c| format!("  web console:            {c} (log in with the token)\n"))
                .unwrap_or_default();
            eprintln!(
                "\nlacave is running.\n  API and node endpoints: {url}\n  API token:              {}\n{console}  try:                    {try_it}\n",
                daemon.token_path().display()
            );
        }
        systemd::notify_ready(&format!("serving on {url}"));
        let stopped = daemon
            .run_until(async {
                signals.recv().await;
                systemd::notify_stopping();
            })
            .await;
        match stopped {
            server::Stopped::Signal => ExitCode::SUCCESS,
            server::Stopped::Restart(reason) => {
                eprintln!("lacave: {reason}");
                ExitCode::from(cli::exit::RESTART)
            }
        }
    })
}

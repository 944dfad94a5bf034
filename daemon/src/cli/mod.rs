//! The `lacave` command line: `serve` and `check-config` run the daemon's own code; `node …`
//! is a client of a running daemon's API.

mod client;
mod output;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::config::Config;

pub use client::{Client, ClientError, Target};

/// Exit codes, from sysexits(3) where one fits.
pub mod exit {
    /// A bad configuration (EX_USAGE, as systemd's `RestartPreventExitStatus=64` expects).
    pub const CONFIG: u8 = 64;
    /// The daemon refused the request's data (EX_DATAERR).
    pub const DATA: u8 = 65;
    /// The daemon cannot be reached (EX_UNAVAILABLE).
    pub const UNAVAILABLE: u8 = 69;
    /// The API token is missing or refused (EX_NOPERM).
    pub const NO_PERMISSION: u8 = 77;
}

#[derive(Parser, Debug)]
#[command(
    name = "lacave",
    version,
    about = "Provisioning appliance for bare-metal Kubernetes on Flatcar Container Linux"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the daemon (embedded defaults without --config).
    Serve {
        /// Configuration file (TOML).
        #[arg(long, short, env = "LACAVE_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Validate a configuration file: exit 0, or 64 with one line per problem.
    CheckConfig {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Manage nodes through a running daemon.
    Node {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: Box<NodeCommand>,
    },
}

/// How the client finds the daemon: flags, then the environment, then the configuration
/// (`--config`, `$LACAVE_CONFIG`, /etc/lacave/lacave.toml, or embedded defaults).
#[derive(Args, Debug, Clone)]
pub struct ClientArgs {
    /// Base URL of the daemon, e.g. http://127.0.0.1:8080.
    #[arg(long, global = true, env = "LACAVE_URL")]
    pub url: Option<String>,
    /// API token (prefer LACAVE_TOKEN or --token-file: arguments show up in `ps`).
    #[arg(long, global = true, env = "LACAVE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// File holding the API token.
    #[arg(long, global = true)]
    pub token_file: Option<PathBuf>,
    /// The daemon's configuration, to find its address and token file.
    #[arg(long, short, global = true, env = "LACAVE_CONFIG")]
    pub config: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum NodeCommand {
    /// Register a node by its MAC address (or adopt a discovered one).
    Add {
        #[arg(long)]
        mac: String,
        #[arg(long)]
        hostname: String,
        #[arg(long)]
        ip: String,
        /// control-plane or worker.
        #[arg(long)]
        role: String,
        /// A Kubernetes node label, key=value (repeatable).
        #[arg(long = "label", value_name = "KEY=VALUE")]
        labels: Vec<String>,
        /// Install disk, e.g. /dev/sda (default: the configured one).
        #[arg(long)]
        disk: Option<String>,
    },
    /// List nodes.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show a node and its history.
    Show {
        /// Hostname or MAC address.
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Remove a node from the registry.
    Rm { name: String },
    /// Reinstall a node on its next network boot.
    Reinstall { name: String },
}

/// Runs a parsed command line; returns the process exit code.
pub fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Serve { config } => crate::run_serve(config),
        Command::CheckConfig { config } => match Config::load(&config) {
            Ok(_) => {
                println!("{}: OK", config.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(exit::CONFIG)
            }
        },
        Command::Node { client, command } => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a tokio runtime starts");
            match runtime.block_on(output::run_node_command(&client, *command)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("lacave: {e}");
                    ExitCode::from(e.exit_code())
                }
            }
        }
    }
}

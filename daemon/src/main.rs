//! The `lacave` binary: parse the command line and hand over to the library.

use clap::Parser;

fn main() -> std::process::ExitCode {
    lacave::cli::run(lacave::cli::Cli::parse())
}

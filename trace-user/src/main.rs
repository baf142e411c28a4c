//! The `iptrace` binary: argument parsing and exit codes (0 ok, 1 "no"/disagreement, 2 bad input
//! or error). Logs go to stderr, data to stdout.

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "iptrace", version, about = "Per-packet netfilter paths (hook → table → chain → rule → verdict) without inserting rules")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .target(env_logger::Target::Stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {}
}

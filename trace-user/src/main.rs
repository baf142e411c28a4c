//! The `iptrace` binary: argument parsing and exit codes (ripgrep-style: 0 ok, 1 "no" — no
//! working backend, a disagreement —, 2 bad input or error). Logs go to stderr, data to stdout.

use clap::{Parser, Subcommand};
use std::process::ExitCode;
use trace_user::cmd;

/// The collector allocates per packet and per stage; mimalloc costs less than glibc malloc
/// there (its large lists made glibc consolidate its free lists on most packets).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "iptrace",
    version,
    about = "Per-packet netfilter paths (hook → table → chain → rule → verdict) without inserting rules"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Capture packets with eBPF and print their rule-by-rule netfilter path (root).
    Capture(cmd::capture::Args),
    /// Reconstruct paths offline from a recording made with `capture --write` (no root).
    Replay(cmd::replay::Args),
    /// Parse an iptables-save dump and print every rule with the position TRACE gives it.
    Rules(cmd::rules::Args),
    /// Compare captured paths with LOG/TRACE/xtables-monitor/nft monitor output.
    Compare(cmd::compare::Args),
    /// Report what this kernel supports and which capture backend would be used.
    Doctor(cmd::doctor::Args),
    /// Build, use and tear down the built-in docker port-mapping lab (root).
    Lab(cmd::lab::Args),
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .target(env_logger::Target::Stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Capture(a) => cmd::capture::run(a),
        Command::Replay(a) => cmd::replay::run(a),
        Command::Rules(a) => cmd::rules::run(a),
        Command::Compare(a) => cmd::compare::run(a),
        Command::Doctor(a) => cmd::doctor::run(a),
        Command::Lab(a) => cmd::lab::run(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("iptrace: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

//! Developer tasks: `cargo xtask setup|demo|test`.
//!
//! - `setup`: scripts/setup.sh (Debian packages, rust-src, bpf-linker; idempotent)
//! - `demo`:  setup, release build, doctor, the lab, a capture of the docker scenario, teardown
//! - `test`:  setup, then every test tier in `steps::TIERS` (unit, then root e2e)
mod demo;
mod steps;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "cargo xtask", about = "iptrace developer tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and testing need (idempotent).
    Setup,
    /// Set up, build, and show iptrace tracing the built-in lab (root).
    Demo,
    /// Set up, then run every test tier (unit tests; e2e tests as root).
    Test,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    steps::catch_interrupts();
    let result = match cli.task {
        Task::Setup => steps::setup(),
        Task::Demo => demo::demo(),
        Task::Test => steps::test(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

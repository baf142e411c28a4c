//! Developer tasks: `cargo xtask setup|demo|test` (and `vm-test`, the QEMU kernel matrix).
//!
//! - `setup`: scripts/setup.sh (Debian packages, rust-src, bpf-linker; idempotent)
//! - `demo`:  setup, release build, doctor, the lab, a capture of the docker scenario, teardown
//! - `test`:  setup, then every test tier in `steps::TIERS` (unit, then root e2e)
mod bench;
mod demo;
mod steps;
mod vm;

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
    // vm-test: the QEMU kernel matrix (issue 6, docs/vm-test.md).
    if std::env::args().nth(1).as_deref() == Some("vm-test") {
        std::process::exit(vm::main(std::env::args().skip(1).collect()));
    }
    // bench-capture: nfhook capture overhead (issue 3, xtask/src/bench.rs).
    if std::env::args()
        .nth(1)
        .is_some_and(|a| a.starts_with("bench-"))
    {
        std::process::exit(bench::main(std::env::args().skip(1).collect()));
    }
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

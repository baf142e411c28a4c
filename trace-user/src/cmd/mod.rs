//! One module per `iptrace` subcommand. Each exposes `Args` (clap) and
//! `run(args) -> anyhow::Result<ExitCode>`; an `Err` exits 2 with the message on stderr.

pub mod capture;
pub mod compare;
pub mod doctor;
pub mod lab;
pub mod replay;
pub mod rules;

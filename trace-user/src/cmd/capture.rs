//! `iptrace capture` (being built; see the issue that owns it).

use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct Args {}

pub fn run(_args: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`iptrace capture` is not available in this build yet")
}

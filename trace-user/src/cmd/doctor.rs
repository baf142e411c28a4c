//! `iptrace doctor [--json]`: kernel support for each attach mechanism (probed by loading
//! and attaching), machine facts, and the capture backend to use. Exit 0 when a capture
//! backend works, 1 when none does.

use crate::doctor;
use std::process::ExitCode;

/// The backends `iptrace capture --backend` implements: doctor only recommends one of those.
/// (Capture developers: add yours here when it lands.)
pub const IMPLEMENTED_BACKENDS: &[&str] = &["nfhook"];

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let report = doctor::diagnose(IMPLEMENTED_BACKENDS);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", doctor::report::render_text(&report));
    }
    Ok(if report.choice.backend.is_some() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

//! `iptrace doctor [--json]`: kernel support for each attach mechanism (probed by loading
//! and attaching), machine facts, each capture backend's own programs loaded and attached,
//! and the backend `--backend auto` picks. Exit 0 when a capture backend works, 1 when none
//! does.

use crate::doctor;
use clap::ValueEnum;
use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let report = doctor::diagnose();
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

/// The backends `iptrace capture --backend` accepts (doctor names its checks the same way).
pub fn implemented_backends() -> Vec<String> {
    super::capture::Backend::value_variants()
        .iter()
        .filter_map(|b| b.to_possible_value().map(|v| v.get_name().to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn doctor_checks_backends_capture_accepts() {
        let names = super::implemented_backends();
        for b in ["fentry", "kprobe", "nfhook", "auto"] {
            assert!(names.contains(&b.to_string()), "{b} not in {names:?}");
        }
    }
}

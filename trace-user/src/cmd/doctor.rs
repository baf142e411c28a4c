//! `iptrace doctor [--json]`: kernel support for each attach mechanism (probed by loading
//! and attaching), machine facts, and the capture backend to use. Exit 0 when a capture
//! backend works, 1 when none does.

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
    let names = implemented_backends();
    let report = doctor::diagnose(&names.iter().map(String::as_str).collect::<Vec<_>>());
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

/// The backends `iptrace capture --backend` accepts: doctor only recommends one of those,
/// and learns new ones from capture's own list.
pub fn implemented_backends() -> Vec<String> {
    super::capture::Backend::value_variants()
        .iter()
        .filter_map(|b| b.to_possible_value().map(|v| v.get_name().to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn nfhook_is_implemented() {
        assert!(super::implemented_backends().contains(&"nfhook".to_string()));
    }
}

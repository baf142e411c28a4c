//! `iptrace replay FILE [--format trace|pretty|json] [--rules FILE]`: reconstructs the packets
//! of a recording (`iptrace capture --write FILE`) offline, without root.
//!
//! A truncated or corrupt recording: everything before the bad record is reconstructed and
//! printed, then the error names the byte offset and the exit code is 2.

use anyhow::{Context, Result};
use std::io::{BufReader, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use trace_core::output::{self, Format};
use trace_core::reconstruct::ReconstructedPacket;
use trace_core::record::replay::Replayer;
use trace_core::record::RecordingReader;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutFormat {
    /// The kernel's TRACE lines.
    Trace,
    /// A colored tree per packet (default on a terminal).
    Pretty,
    /// JSON lines, schema iptrace.packet.v1 (docs/json-schema.md).
    Json,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Color {
    Auto,
    Always,
    Never,
}

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Recording written by `iptrace capture --write FILE` (`-` = stdin).
    pub file: PathBuf,
    /// Output format (default: pretty on a terminal, trace otherwise).
    #[arg(long, value_enum)]
    pub format: Option<OutFormat>,
    /// Reconstruct against this iptables-save dump instead of the recorded ones.
    #[arg(long)]
    pub rules: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "auto")]
    pub color: Color,
    /// With --format trace: print only what the kernel's legacy TRACE would, i.e. the steps
    /// after a TRACE rule set nf_trace (iptrace itself needs no TRACE rule and prints the
    /// whole path by default).
    #[arg(long)]
    pub from_trace_rule: bool,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let stdout_tty = std::io::stdout().is_terminal();
    let format = match args.format {
        Some(OutFormat::Trace) => Format::Trace,
        Some(OutFormat::Json) => Format::Json,
        Some(OutFormat::Pretty) => Format::Pretty,
        None if stdout_tty => Format::Pretty,
        None => Format::Trace,
    };
    let color = match args.color {
        Color::Always => true,
        Color::Never => false,
        Color::Auto => stdout_tty && std::env::var_os("NO_COLOR").is_none(),
    };
    let override_rules = match &args.rules {
        Some(p) => Some(crate::rulesource::load_dump_file(p)?),
        None => None,
    };
    let input: Box<dyn std::io::Read> = if args.file.as_os_str() == "-" {
        Box::new(std::io::stdin())
    } else {
        Box::new(
            std::fs::File::open(&args.file)
                .with_context(|| format!("opening {}", args.file.display()))?,
        )
    };
    let reader = RecordingReader::new(BufReader::new(input))
        .with_context(|| args.file.display().to_string())?;
    let mut replayer = Replayer::new(override_rules);
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let from_trace_rule = args.from_trace_rule;
    let emit = |out: &mut dyn Write, pkts: Vec<ReconstructedPacket>| -> Result<()> {
        for p in &pkts {
            if format == Format::Trace && from_trace_rule {
                output::trace::write_trace(out, p, output::trace::TraceFrom::TraceTarget)?;
            } else {
                output::write_packet(out, p, format, color)?;
            }
        }
        Ok(())
    };
    let mut failure = None;
    for item in reader {
        match item {
            Ok((_, rec)) => emit(&mut out, replayer.push(rec))?,
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    // Packets still being assembled (the good prefix of a damaged file included).
    emit(&mut out, replayer.finish())?;
    out.flush()?;
    drop(out);
    for w in replayer.take_warnings() {
        eprintln!("iptrace replay: warning: {w}");
    }
    let s = replayer.stats();
    eprintln!(
        "iptrace replay: {} records, {} events, {} packets, {} rule dumps ({} unparsable), {} events lost during capture",
        s.records, s.events, s.packets, s.rulesets, s.bad_rulesets, s.lost_events
    );
    match failure {
        Some(e) => {
            eprintln!("iptrace: error: {}: {e}", args.file.display());
            Ok(ExitCode::from(2))
        }
        None => Ok(ExitCode::SUCCESS),
    }
}

//! `iptrace compare`: agreement report between iptrace's packets and the kernel's own output
//! (legacy TRACE/LOG lines, `xtables-monitor --trace`, `nft monitor trace`).
//!
//! Exit status: 0 every paired packet agrees, 1 a packet differs (or nothing could be
//! paired), 2 bad input (unreadable or unparsable file, a ruleset needed but not given).

use anyhow::{bail, Context};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use trace_core::compare::captured::{self, CapturedPacket};
use trace_core::compare::matching::MatchOptions;
use trace_core::compare::nft_ruleset::{self, NftRuleset};
use trace_core::compare::reference::{self, Format};
use trace_core::compare::report::Report;
use trace_core::compare::resolve::Resolver;
use trace_core::rules::Ruleset;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefFormat {
    /// Detect from the content.
    Auto,
    /// Kernel log lines with legacy `TRACE:` (dmesg, /dev/kmsg, syslog, journalctl).
    Trace,
    /// Kernel log lines of LOG rules (same sources as `trace`).
    Log,
    /// `xtables-monitor --trace` output.
    XtablesMonitor,
    /// `nft monitor trace` output.
    NftMonitor,
}

impl RefFormat {
    fn format(self) -> Option<Format> {
        match self {
            RefFormat::Auto => None,
            RefFormat::Trace | RefFormat::Log => Some(Format::KernelLog),
            RefFormat::XtablesMonitor => Some(Format::XtablesMonitor),
            RefFormat::NftMonitor => Some(Format::NftMonitor),
        }
    }
}

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The kernel's output for the same traffic (`-` = stdin).
    #[arg(long, short = 'r', value_name = "FILE")]
    pub reference: PathBuf,
    /// Format of the reference.
    #[arg(long, value_enum, default_value_t = RefFormat::Auto)]
    pub format: RefFormat,
    /// iptables-save output of the packets' netns (maps LOG prefixes and xtables-monitor rule
    /// text to positions; gives TRACE labels).
    #[arg(long, value_name = "FILE")]
    pub ruleset: Option<PathBuf>,
    /// `nft -a list ruleset` of the packets' netns (maps nft rule handles and rule text).
    #[arg(long, value_name = "FILE")]
    pub nft_ruleset: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// How many differing packets to show side by side.
    #[arg(long, default_value_t = 5, value_name = "N")]
    pub max_diffs: usize,
    /// Only pair packets whose monotonic timestamps (dmesg/kmsg vs capture) are this close.
    #[arg(long, value_name = "SECONDS")]
    pub time_window: Option<f64>,
    /// iptrace's packets: JSON lines from `iptrace capture|replay --format json` (`-` = stdin).
    #[arg(value_name = "CAPTURED")]
    pub captured: PathBuf,
}

fn read_input(path: &Path) -> anyhow::Result<String> {
    if path == Path::new("-") {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s).context("reading stdin")?;
        return Ok(s);
    }
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    String::from_utf8(bytes).map_err(|e| anyhow::anyhow!("{}: not UTF-8 text (byte offset {})", path.display(), e.utf8_error().valid_up_to()))
}

fn load_dump(path: &Path) -> anyhow::Result<Ruleset> {
    let text = read_input(path)?;
    trace_core::rules::parse(&text).map_err(|e| anyhow::anyhow!("{}", e.with_file(&path.display().to_string())))
}

fn load_nft(path: &Path) -> anyhow::Result<NftRuleset> {
    nft_ruleset::parse(&read_input(path)?).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

fn load_captured(path: &Path) -> anyhow::Result<Vec<CapturedPacket>> {
    let text = read_input(path)?;
    if text.starts_with(trace_core::record::MAGIC) {
        bail!(
            "{} is a recording: reconstruct it first: `iptrace replay {} --format json | iptrace compare --reference … -`",
            path.display(),
            path.display()
        );
    }
    captured::parse_jsonl(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// Runs the comparison on already-loaded inputs (shared with `capture --compare-trace`).
pub fn compare_text(reference_text: &str, format: Option<Format>, captured: &[CapturedPacket], resolver: &Resolver, opts: &MatchOptions) -> Report {
    let parsed = reference::parse(reference_text, format);
    trace_core::compare::compare(&parsed, captured, resolver, opts)
}

/// Prints the report (text or JSON) on stdout and returns the exit status.
pub fn print_report(report: &Report, json: bool, max_diffs: usize) -> anyhow::Result<ExitCode> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
    } else {
        print!("{}", report.render_text(max_diffs));
    }
    if let Some(why) = &report.missing_ruleset {
        eprintln!("iptrace: error: {why}");
    }
    Ok(ExitCode::from(report.exit_code()))
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let reference_text = read_input(&args.reference)?;
    let dump = args.ruleset.as_deref().map(load_dump).transpose()?;
    let nft = args.nft_ruleset.as_deref().map(load_nft).transpose()?;
    let captured = load_captured(&args.captured)?;
    let format = args.format.format();
    if format.is_none() && Format::detect(&reference_text).is_none() && !reference_text.trim().is_empty() {
        bail!("{}: no TRACE, LOG, xtables-monitor or nft monitor line found (give --format?)", args.reference.display());
    }
    if reference_text.trim().is_empty() {
        eprintln!(
            "iptrace: note: {} is empty (legacy TRACE/LOG of a non-init netns reach the kernel log only with net.netfilter.nf_log_all_netns=1)",
            args.reference.display()
        );
    }
    let resolver = Resolver { dump: dump.as_ref(), nft: nft.as_ref() };
    let opts = MatchOptions { time_window: args.time_window };
    let report = compare_text(&reference_text, format, &captured, &resolver, &opts);
    print_report(&report, args.json, args.max_diffs)
}

//! Reference traces: what the kernel itself printed about packets, parsed from the formats
//! users already have — legacy `TRACE:` and `LOG` lines in any kernel log (dmesg, kmsg,
//! syslog files, journalctl), `xtables-monitor --trace`, and `nft monitor trace`.
//!
//! Every parser is line based and total: a line that looks like a netfilter line but does
//! not parse is recorded in [`ParsedReference::malformed`] (with its line number) and
//! parsing continues; it never fails as a whole and never panics.

pub mod fields;
pub mod ip6dump;
pub mod kernlog;
mod monitor;
pub mod nftmon;
mod segment;
pub mod xtmon;

pub use fields::{FieldError, RefHeaders};

use crate::netfilter::{Family, Table};
use crate::step::StepKind;
use serde::{Deserialize, Serialize};

/// Where a reference step sits in its chain. Legacy TRACE numbers rules itself; the nft
/// formats identify rules by handle or by their text and must be mapped through the ruleset
/// (see `compare::resolve`) before they compare with [`crate::step::StepId`]s.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "by", rename_all = "snake_case")]
pub enum RefStepPos {
    /// `rule:N` / `return:N` / `policy:N` exactly as legacy TRACE printed it.
    Numbered { kind: StepKind, num: u32 },
    /// An nft rule handle (xtables-monitor `rule:0x12`, `nft -a monitor trace`).
    Handle { handle: u64 },
    /// An nft rule known only by the text `nft monitor trace` printed for it.
    RuleText { text: String },
    /// The base chain's policy decided (nft `policy accept`): N = rules + 1, from the ruleset.
    Policy,
    /// The chain was left by an nft `return` trace event (older kernels only): its end reached,
    /// or a RETURN rule — see `compare::resolve::Resolver::chain_end_candidates`.
    EndOfChain,
}

/// One line of a reference trace: a rule (or chain end) the packet went through.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefStep {
    pub table: Table,
    pub chain: String,
    pub pos: RefStepPos,
    /// Verdict as printed (nft formats only): `ACCEPT`, `CONTINUE`, `JUMP:DOCKER`, `return`…
    pub verdict: Option<String>,
    /// Rule text printed with the step (iptables syntax for xtables-monitor, nft syntax for
    /// `nft monitor trace`).
    pub rule_text: Option<String>,
    /// 1-based line number in the reference file.
    pub line: usize,
}

/// Timestamp of a reference line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "clock", rename_all = "snake_case")]
pub enum RefTime {
    /// Seconds since boot, as dmesg/kmsg print them (the kernel's local clock, comparable with
    /// CLOCK_MONOTONIC up to suspend time).
    Monotonic { secs: f64 },
    /// A wall-clock stamp as printed by syslog/journalctl (kept verbatim; only ordering uses it).
    Wall { text: String },
}

/// What a reference packet tells about the path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Evidence {
    /// A TRACE-style path, from the point where tracing was enabled.
    Path { steps: Vec<RefStep> },
    /// A LOG rule with this prefix matched the packet (LOG does not say which chain or rule).
    Logged { prefix: String },
}

/// A LOG rule's own kernel line attached to the traced packet it logged (the same packet's
/// TRACE lines surround it): evidence that a LOG rule with this prefix matched, not a
/// packet of its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    pub prefix: String,
    /// 1-based line number in the reference file.
    pub line: usize,
    /// Index in the packet's steps of the TRACE step the LOG line follows (the LOG rule).
    pub after_step: usize,
}

/// One packet as the reference saw it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RefPacket {
    /// First line (1-based) of this packet in the reference file.
    pub line: usize,
    pub time: Option<RefTime>,
    /// nft trace id (repeats across packets of a connection; only groups lines).
    pub trace_id: Option<u32>,
    pub family: Option<Family>,
    /// Distinct header snapshots in the order seen (the first is the earliest, before any NAT
    /// that later lines show).
    pub headers: Vec<RefHeaders>,
    pub evidence: Evidence,
    /// LOG lines of this traced packet (legacy kernel logs with TRACE and LOG rules).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub logs: Vec<LogLine>,
    /// The reference lost events while this packet was being traced (a netlink overrun or
    /// overwritten kernel log records at that point): its path may miss steps.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub incomplete: bool,
}

impl RefPacket {
    pub fn steps(&self) -> &[RefStep] {
        match &self.evidence {
            Evidence::Path { steps } => steps,
            Evidence::Logged { .. } => &[],
        }
    }

    /// A packet of `evidence` starting at `line`, before any header or step is known.
    pub fn new(
        line: usize,
        time: Option<RefTime>,
        family: Option<Family>,
        evidence: Evidence,
    ) -> Self {
        RefPacket {
            line,
            time,
            trace_id: None,
            family,
            headers: Vec::new(),
            evidence,
            logs: Vec::new(),
            incomplete: false,
        }
    }

    fn push_headers(&mut self, h: RefHeaders) {
        if !self.headers.contains(&h) {
            self.headers.push(h);
        }
    }
}

/// The reference formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    /// Kernel log lines (legacy TRACE and LOG) from dmesg, /dev/kmsg, syslog or journalctl.
    KernelLog,
    /// `xtables-monitor --trace`.
    XtablesMonitor,
    /// `nft monitor trace`.
    NftMonitor,
}

impl Format {
    /// Whether this format shows the end of a user chain reached without a RETURN rule.
    /// Legacy x_tables has a real RETURN entry there and TRACE prints it (`return:N`);
    /// nf_tables returns implicitly and, on the kernels measured (6.18, iptables-nft 1.8.9,
    /// nftables 1.0.6), xtables-monitor and `nft monitor trace` print nothing for it.
    /// An explicit `-j RETURN` rule is a rule in both and is always shown.
    pub fn shows_implicit_returns(self) -> bool {
        matches!(self, Format::KernelLog)
    }

    /// Guesses the format from the first lines that look like netfilter output.
    pub fn detect(text: &str) -> Option<Format> {
        text.lines().take(2000).find_map(|l| {
            if xtmon::looks_like(l) {
                Some(Format::XtablesMonitor)
            } else if nftmon::looks_like(l) {
                Some(Format::NftMonitor)
            } else if kernlog::looks_like(l) {
                Some(Format::KernelLog)
            } else {
                None
            }
        })
    }
}

/// A line that looked like netfilter output but could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Malformed {
    pub line: usize,
    pub reason: String,
    /// The line, truncated to 200 characters.
    pub text: String,
}

impl Malformed {
    fn new(line: usize, text: &str, reason: impl std::fmt::Display) -> Self {
        Malformed {
            line,
            reason: reason.to_string(),
            text: text.chars().take(200).collect(),
        }
    }
}

/// Result of parsing a reference file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ParsedReference {
    /// The format the text was parsed as (None: undetectable text, or built by hand).
    #[serde(default)]
    pub format: Option<Format>,
    pub packets: Vec<RefPacket>,
    pub malformed: Vec<Malformed>,
    /// Lines that are not netfilter output at all (other kernel messages, blank lines).
    pub skipped: usize,
    /// Losses the reference itself reports: `nft monitor`'s `# ERROR: We lost some netlink
    /// events!` lines (one per overrun) and iptrace's kmsg gap markers (records lost).
    /// Packets open at a loss are marked [`RefPacket::incomplete`].
    #[serde(default)]
    pub lost: u64,
}

/// Parses `text` in `format` (detected when None; undetectable text yields no packets and
/// every non-blank line counted as skipped).
pub fn parse(text: &str, format: Option<Format>) -> ParsedReference {
    match format.or_else(|| Format::detect(text)) {
        Some(Format::KernelLog) => kernlog::parse(text),
        Some(Format::XtablesMonitor) => xtmon::parse(text),
        Some(Format::NftMonitor) => nftmon::parse(text),
        None => ParsedReference {
            skipped: text.lines().count(),
            ..Default::default()
        },
    }
}

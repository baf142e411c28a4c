//! The agreement report: totals, per-packet outcomes, and a side-by-side rendering of the
//! first differences. Serializable as JSON (`iptrace compare --json`).

use super::diff::PathDiff;
use super::reference::{Malformed, RefHeaders};
use serde::{Deserialize, Serialize};
use std::fmt::Write;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    pub reference_packets: usize,
    pub captured_packets: usize,
    pub agree: usize,
    pub differ: usize,
    pub only_in_reference: usize,
    pub only_in_capture: usize,
    /// Reference lines that looked like netfilter output but did not parse.
    pub unparsable: usize,
    /// Reference lines that are not netfilter output (other kernel messages).
    pub skipped_lines: usize,
    /// Kernel output lost before it was collected (kmsg records overwritten, netlink
    /// overruns of the trace monitor): differences may come from these gaps.
    #[serde(default)]
    pub reference_lost: u64,
    /// Reference packets of other network namespaces (a kernel log shared by every netns):
    /// ignored, listed in [`Report::foreign`]; neither agreement nor difference.
    #[serde(default)]
    pub foreign: usize,
    /// Paired packets that differ where the reference itself lost events while tracing them
    /// (see [`Outcome::ReferenceIncomplete`]): not counted as differences.
    #[serde(default)]
    pub reference_incomplete: usize,
    /// LOG rules' own kernel lines that belong to a traced packet (its TRACE lines surround
    /// them): part of that packet, not packets of their own.
    #[serde(default)]
    pub log_lines_in_traces: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    Agree,
    /// The paths differ (see the rows).
    Differ {
        diff: PathDiff,
    },
    /// A LOG line whose rule is not in the captured path.
    LogNotInPath {
        prefix: String,
        expected_one_of: Vec<String>,
        captured: Vec<String>,
    },
    /// The reference step could not be placed in the ruleset (stale or wrong dump): counted
    /// as a difference.
    Unresolved {
        reason: String,
    },
    OnlyInReference,
    /// The reference lost events while this packet was traced and its path only lacks
    /// steps of the captured one: the lost lines are the difference. Not counted as a
    /// difference (a step the captured path does not have still is one).
    ReferenceIncomplete {
        diff: PathDiff,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PacketReport {
    /// First line of the packet in the reference file.
    pub reference_line: usize,
    pub summary: String,
    /// Index of the paired captured packet.
    pub captured_index: Option<usize>,
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// A reference packet of another network namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForeignPacket {
    pub reference_line: usize,
    pub summary: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapturedOnly {
    pub captured_index: usize,
    pub summary: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub totals: Totals,
    pub packets: Vec<PacketReport>,
    pub only_in_capture: Vec<CapturedOnly>,
    /// Reference packets of other network namespaces, ignored (see [`Totals::foreign`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub foreign: Vec<ForeignPacket>,
    pub malformed: Vec<Malformed>,
    /// Set when reference steps need a ruleset that was not given (bad input, exit 2).
    pub missing_ruleset: Option<String>,
    /// Problems of how the reference was collected (it may be incomplete).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// Exit status of `iptrace compare`.
pub mod exit {
    /// Every paired packet agrees.
    pub const AGREE: u8 = 0;
    /// A paired packet differs, or no packet could be paired at all.
    pub const DIFFER: u8 = 1;
    /// Bad input.
    pub const BAD_INPUT: u8 = 2;
}

impl Report {
    pub fn exit_code(&self) -> u8 {
        if self.missing_ruleset.is_some() {
            exit::BAD_INPUT
        } else if self.totals.differ > 0 || self.totals.agree == 0 {
            exit::DIFFER
        } else {
            exit::AGREE
        }
    }

    /// Human-readable report: totals, then up to `max_diffs` differing packets side by side.
    pub fn render_text(&self, max_diffs: usize) -> String {
        let t = &self.totals;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "compare: {} reference packets, {} captured packets\n  agree {}  differ {}  only in reference {}  only in capture {}  unparsable lines {}",
            t.reference_packets, t.captured_packets, t.agree, t.differ, t.only_in_reference, t.only_in_capture, t.unparsable
        );
        if t.foreign > 0 {
            let _ = writeln!(
                s,
                "  foreign/ignored {} (other network namespaces' lines in the same log), e.g. line {}: {}",
                t.foreign, self.foreign[0].reference_line, self.foreign[0].reason
            );
        }
        if t.log_lines_in_traces > 0 {
            let _ = writeln!(
                s,
                "  {} LOG lines belong to traced packets (checked with their TRACE path)",
                t.log_lines_in_traces
            );
        }
        for w in &self.warnings {
            let _ = writeln!(s, "  warning: {w}");
        }
        if t.reference_lost > 0 {
            let _ = writeln!(
                s,
                "  warning: the reference lost events {} times (overwritten kernel log records / netlink overruns); {} packets lack steps there (not counted as differences)",
                t.reference_lost, t.reference_incomplete
            );
        }
        for m in self.malformed.iter().take(5) {
            let _ = writeln!(s, "  unparsable line {}: {} ({})", m.line, m.reason, m.text);
        }
        let differing = self.packets.iter().filter(|p| is_difference(&p.outcome));
        for p in differing.take(max_diffs) {
            render_packet(&mut s, p);
        }
        if t.agree == 0 && t.differ == 0 && self.missing_ruleset.is_none() {
            let _ = writeln!(s, "no packet in common: nothing was compared");
        }
        s
    }
}

fn is_difference(o: &Outcome) -> bool {
    matches!(
        o,
        Outcome::Differ { .. } | Outcome::LogNotInPath { .. } | Outcome::Unresolved { .. }
    )
}

fn render_packet(s: &mut String, p: &PacketReport) {
    let cap = p
        .captured_index
        .map_or("-".to_string(), |i| format!("#{i}"));
    let _ = writeln!(
        s,
        "\nreference line {} ({}) <-> captured {}",
        p.reference_line, p.summary, cap
    );
    match &p.outcome {
        Outcome::Differ { diff } => {
            if !diff.captured_before.is_empty() {
                let _ = writeln!(
                    s,
                    "  (captured before the reference starts: {})",
                    diff.captured_before.join(", ")
                );
            }
            let _ = writeln!(s, "    {:<44} captured", "reference");
            for r in &diff.rows {
                let mark = if r.same { ' ' } else { '!' };
                let a = r.reference.as_deref().unwrap_or("-");
                let b = r.captured.as_deref().unwrap_or("-");
                let _ = writeln!(s, "  {mark} {a:<44} {b}");
            }
        }
        Outcome::LogNotInPath {
            prefix,
            expected_one_of,
            captured,
        } => {
            let _ = writeln!(s, "  LOG {prefix:?} matched in the kernel; its rule ({}) is not in the captured path:", expected_one_of.join(" or "));
            let _ = writeln!(s, "    {}", captured.join(" → "));
        }
        Outcome::Unresolved { reason } => {
            let _ = writeln!(s, "  ! {reason}");
        }
        Outcome::Agree | Outcome::OnlyInReference | Outcome::ReferenceIncomplete { .. } => {}
    }
}

/// `TCP 192.168.64.5:50676 > 192.168.64.4:10000 id 52575` for the report.
pub fn summarize(h: Option<&RefHeaders>) -> String {
    let Some(h) = h else {
        return "no headers".into();
    };
    let addr = |a: Option<std::net::IpAddr>, p: Option<u16>| match (a, p) {
        (Some(a), Some(p)) if a.is_ipv6() => format!("[{a}]:{p}"),
        (Some(a), Some(p)) => format!("{a}:{p}"),
        (Some(a), None) => a.to_string(),
        (None, _) => "?".into(),
    };
    let src = match h.src {
        None if !h.src_prefix.is_empty() => known_prefix(&h.src_prefix),
        src => addr(src, h.sport),
    };
    let proto = match h.proto {
        Some(6) => "TCP".to_string(),
        Some(17) => "UDP".into(),
        Some(1) => "ICMP".into(),
        Some(58) => "ICMPv6".into(),
        Some(n) => format!("proto {n}"),
        None => "IP".into(),
    };
    let mut s = format!("{proto} {src} > {}", addr(h.dst, h.dport));
    if let Some(id) = h.id {
        let _ = write!(s, " id {id}");
    }
    if let Some(f) = h.tcp_flags {
        let _ = write!(s, " flags 0x{f:02x}");
    }
    s
}

/// The known leading bytes of an IPv6 address as groups, the rest `?`:
/// `fd99:213:1:0:0:0:?:?` (nothing compressed: the zeros are known, the rest is not).
fn known_prefix(bytes: &[u8]) -> String {
    let groups: Vec<String> = bytes
        .chunks(2)
        .map(|c| match c {
            [a, b] => format!("{:x}", u16::from_be_bytes([*a, *b])),
            [a] => format!("{a:02x}??"),
            _ => unreachable!("chunks of two"),
        })
        .chain(std::iter::repeat("?".to_string()))
        .take(8)
        .collect();
    groups.join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_without_addresses_shows_the_known_source_bytes() {
        let h = RefHeaders {
            src_prefix: vec![0xfd, 0x99, 0x02, 0x13, 0, 1, 0, 0, 0, 0, 0, 0],
            ..Default::default()
        };
        assert_eq!(summarize(Some(&h)), "IP fd99:213:1:0:0:0:?:? > ?");
        assert_eq!(known_prefix(&[0xfd, 0x99, 0x02]), "fd99:02??:?:?:?:?:?:?");
        assert_eq!(summarize(Some(&RefHeaders::default())), "IP ? > ?");
    }
}

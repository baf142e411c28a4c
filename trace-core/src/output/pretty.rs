//! `--format pretty`: a readable tree per packet — hook → table → steps with the rule text
//! inline, NAT arrows, verdicts and the status of every table. ANSI colors only when asked.

use crate::event::{tcp_flags, Headers, L4};
use crate::packet::Fate;
use crate::reconstruct::positions::{Agreement, FailedMatch, PositionsCheck};
use crate::reconstruct::{Endpoint, Path, ReconstructedPacket, Status, TableResult};
use std::fmt::{Display, Write};
use std::io;

/// ANSI styling, or none.
#[derive(Debug, Clone, Copy)]
pub struct Style {
    pub color: bool,
}

impl Style {
    /// Appends `s` wrapped in the ANSI `code` (or plain).
    fn paint(&self, out: &mut String, code: &str, s: impl Display) {
        if self.color {
            let _ = write!(out, "\x1b[{code}m{s}\x1b[0m");
        } else {
            let _ = write!(out, "{s}");
        }
    }
    fn status(&self, out: &mut String, st: Status) {
        let code = match st {
            Status::Confirmed => "32",
            Status::Ambiguous => "33",
            Status::Inconsistent => "31;1",
        };
        self.paint(out, code, st.as_str())
    }
    fn verdict(&self, out: &mut String, v: &str) {
        let code = if v == "ACCEPT" {
            "32"
        } else if v == "DROP" {
            "31;1"
        } else {
            "33"
        };
        self.paint(out, code, v)
    }
}

fn push_flags(out: &mut String, f: u8) {
    let names = [
        (tcp_flags::SYN, "SYN"),
        (tcp_flags::ACK, "ACK"),
        (tcp_flags::PSH, "PSH"),
        (tcp_flags::FIN, "FIN"),
        (tcp_flags::RST, "RST"),
        (tcp_flags::URG, "URG"),
    ];
    for (i, (_, n)) in names.iter().filter(|(b, _)| f & b != 0).enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(n);
    }
}

/// `tcp 192.168.64.5:50676 → 192.168.64.4:10000 [SYN] len 60`
pub fn summary(h: &Headers) -> String {
    let mut s = String::new();
    push_summary(&mut s, h);
    s
}

/// [`summary`] appended to `out`.
pub fn push_summary(out: &mut String, h: &Headers) {
    let ep = |a, p| Endpoint { addr: a, port: p };
    let _ = match &h.l4 {
        L4::Tcp {
            sport,
            dport,
            flags: f,
            ..
        } => {
            let _ = write!(
                out,
                "tcp {} → {} [",
                ep(h.src, Some(*sport)),
                ep(h.dst, Some(*dport))
            );
            push_flags(out, *f);
            write!(out, "] len {}", h.len)
        }
        L4::Udp { sport, dport, .. } => write!(
            out,
            "udp {} → {} len {}",
            ep(h.src, Some(*sport)),
            ep(h.dst, Some(*dport)),
            h.len
        ),
        L4::Sctp { sport, dport } => write!(
            out,
            "sctp {} → {} len {}",
            ep(h.src, Some(*sport)),
            ep(h.dst, Some(*dport)),
            h.len
        ),
        L4::Icmp {
            icmp_type, code, ..
        }
        | L4::Icmpv6 {
            icmp_type, code, ..
        } => write!(
            out,
            "icmp {} → {} type {icmp_type}/{code} len {}",
            h.src, h.dst, h.len
        ),
        L4::Other => write!(out, "proto {} {} → {} len {}", h.proto, h.src, h.dst, h.len),
    };
}

/// Writes one packet as a tree (built in one buffer, written with one `write_all`).
pub fn write_pretty(
    w: &mut dyn io::Write,
    rp: &ReconstructedPacket,
    style: Style,
) -> io::Result<()> {
    let mut buf = String::with_capacity(2048);
    push_pretty(&mut buf, rp, style);
    w.write_all(buf.as_bytes())
}

/// Appends one packet's tree (see [`write_pretty`]) to `out`.
pub fn push_pretty(out: &mut String, rp: &ReconstructedPacket, style: Style) {
    let p = &rp.packet;
    style.paint(out, "1", format_args!("packet #{}", p.id));
    out.push(' ');
    if let Some(t) = p.hooks.first().and_then(|h| h.tables.first()) {
        push_summary(out, &t.before.headers);
    }
    let _ = write!(out, "  netns {}  [", p.netns);
    style.status(out, rp.status);
    out.push(']');
    push_fate(out, &p.fate, style);
    if p.incomplete {
        out.push_str("  (incomplete capture)");
    }
    out.push('\n');
    for (rh, hp) in rp.hooks.iter().zip(&p.hooks) {
        out.push_str("  ");
        style.paint(out, "36;1", hp.hook.chain_name());
        // With a bridged packet's ports (br_netfilter), as TRACE's PHYSIN=/PHYSOUT=.
        let bridge = hp.bridge.as_deref();
        let devs = [
            ("in", hp.in_dev.as_ref()),
            ("out", hp.out_dev.as_ref()),
            ("physin", bridge.and_then(|b| b.physin.as_ref())),
            ("physout", bridge.and_then(|b| b.physout.as_ref())),
        ];
        for (k, d) in devs {
            if let Some(d) = d {
                let _ = write!(out, " {k}={d}");
            }
        }
        // Conntrack state as the last table of the hook saw it (raw runs before conntrack).
        if let Some(c) = hp.tables.iter().rev().find_map(|t| t.before.ct) {
            let _ = write!(out, " ct={}", ct_name(c.ctinfo));
        }
        out.push('\n');
        for (t, obs) in rh.tables.iter().zip(&hp.tables) {
            push_table(out, t, obs.before.mark, style);
        }
    }
}

/// How the traversal ended, when it did not simply go on.
fn push_fate(out: &mut String, f: &Fate, style: Style) {
    match f {
        Fate::Delivered | Fate::Unknown => {}
        Fate::Dropped { hook, stage } => {
            out.push_str("  ");
            style.paint(out, "31;1", format_args!("dropped in {hook} {stage}"));
        }
        Fate::Stolen { hook, stage } => {
            out.push_str("  ");
            style.paint(out, "33", format_args!("stolen/queued in {hook} {stage}"));
        }
        Fate::DroppedOutside {
            after,
            reason,
            reason_name,
        } => {
            out.push_str("  ");
            match reason_name {
                Some(why) => style.paint(out, "31", format_args!("dropped after {after} ({why})")),
                None => style.paint(out, "31", format_args!("dropped after {after} ({reason})")),
            }
        }
        Fate::Vanished { after } => {
            let _ = write!(out, "  vanished after {after}");
        }
    }
}

/// enum ip_conntrack_info as conntrack's state names.
fn ct_name(ctinfo: u8) -> &'static str {
    match ctinfo {
        0 => "ESTABLISHED",
        1 => "RELATED",
        2 => "NEW",
        3 => "ESTABLISHED(reply)",
        4 => "RELATED(reply)",
        7 => "UNTRACKED",
        _ => "?",
    }
}

fn push_table(out: &mut String, t: &TableResult, mark_before: u32, style: Style) {
    let _ = write!(out, "    {:<8} ", t.table.name());
    if t.skipped {
        style.paint(
            out,
            "2",
            format_args!("not traversed: {}", t.reason.as_deref().unwrap_or("")),
        );
        out.push('\n');
        return;
    }
    if let Some(p) = t.paths.first() {
        style.verdict(out, p.verdict.as_str());
        if p.mark != mark_before {
            let _ = write!(out, "  mark 0x{mark_before:x} → 0x{:x}", p.mark);
        }
    }
    if t.status != Status::Confirmed {
        out.push_str(" [");
        style.status(out, t.status);
        if let Some(r) = &t.reason {
            let _ = write!(out, ": {r}");
        }
        out.push(']');
    }
    out.push('\n');
    // With agreeing rule positions, the path's branch points are observed, and the rules
    // the kernel evaluated without matching are shown where the first path evaluated them.
    let agree = t
        .positions
        .as_ref()
        .is_some_and(|pc| pc.agreement == Agreement::Agree);
    let failed: &[FailedMatch] = match &t.positions {
        Some(pc) if agree => &pc.failed,
        _ => &[],
    };
    for (i, path) in t.paths.iter().enumerate() {
        if t.paths.len() > 1 {
            let label = if t.status == Status::Inconsistent {
                "evaluated path"
            } else {
                "candidate"
            };
            out.push_str("      ");
            style.paint(out, "33", format_args!("{label} {}:", i + 1));
            out.push(' ');
            style.verdict(out, path.verdict.as_str());
            if let Some(r) = &path.rejected {
                let _ = write!(out, " — ruled out: {r}");
            }
            out.push('\n');
        } else if let Some(r) = &path.rejected {
            let _ = writeln!(out, "      ruled out: {r}");
        }
        push_path(out, path, style, agree, if i == 0 { failed } else { &[] });
    }
    if let Some(pc) = &t.positions {
        push_positions(out, pc, style);
    }
}

/// The rule positions' outcome and the rules evaluated without matching (kernel order).
fn push_positions(out: &mut String, pc: &PositionsCheck, style: Style) {
    let _ = write!(
        out,
        "      rule positions: {} calls{}, ",
        pc.calls,
        if pc.complete { "" } else { " (incomplete)" }
    );
    match &pc.agreement {
        Agreement::Agree => style.paint(out, "32", "agree"),
        Agreement::Disagree { .. } => style.paint(out, "31;1", "disagree"),
        Agreement::Unchecked { why } => {
            let _ = write!(out, "unchecked ({why})");
        }
    }
    out.push('\n');
    for f in pc.failed.iter().filter(|f| f.before_step.is_none()) {
        out.push_str("      ");
        style.paint(out, "2", "evaluated, did not match: ");
        let _ = write!(out, "{}  match {} failed: {}", f.rule, f.index + 1, f.what);
        if let Some(text) = &f.rule_text {
            out.push_str("  ");
            style.paint(out, "2", format_args!("({text})"));
        }
        out.push('\n');
    }
}

/// `· filter:INPUT:rule:2  -p tcp -m tcp --dport 22 -j ACCEPT  [match 1 failed: -m tcp --dport 22]`
fn push_failed(out: &mut String, f: &FailedMatch, style: Style) {
    out.push_str("      ");
    style.paint(
        out,
        "2",
        format_args!(
            "· {}  {}  [match {} failed: {}]",
            f.rule,
            f.rule_text.as_deref().unwrap_or("?"),
            f.index + 1,
            f.what
        ),
    );
    out.push('\n');
}

/// `observed`: the kernel's rule positions confirmed the path, so its branch points are
/// observed match results, not assumptions; `failed`: the rules evaluated without matching,
/// placed between the steps.
fn push_path(out: &mut String, path: &Path, style: Style, observed: bool, failed: &[FailedMatch]) {
    let mut failed = failed.iter().peekable();
    for (k, s) in path.steps.iter().enumerate() {
        while let Some(f) = failed.next_if(|f| f.before_step.is_some_and(|b| b as usize <= k)) {
            push_failed(out, f, style);
        }
        out.push_str("      ");
        style.paint(out, "1", &s.id);
        out.push_str("  ");
        style.paint(out, "2", s.rule_text.as_deref().unwrap_or("(end of chain)"));
        out.push('\n');
    }
    for f in failed {
        push_failed(out, f, style);
    }
    if let Some(n) = &path.nat {
        out.push_str("      ");
        style.paint(out, "35;1", "NAT");
        let _ = writeln!(out, " {} → {}", n.from, n.to);
    }
    for a in &path.assumptions {
        let _ = writeln!(
            out,
            "      {} {}:{} {} {}",
            if observed { "kernel:" } else { "assumes" },
            a.chain,
            a.rule,
            if a.matched {
                "matched:"
            } else {
                "did not match:"
            },
            a.what.join(", ")
        );
    }
}

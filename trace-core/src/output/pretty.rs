//! `--format pretty`: a readable tree per packet — hook → table → steps with the rule text
//! inline, NAT arrows, verdicts and the status of every table. ANSI colors only when asked.

use crate::event::{tcp_flags, Headers, L4};
use crate::packet::Fate;
use crate::reconstruct::{Endpoint, Path, ReconstructedPacket, Status, TableResult};
use std::io::{self, Write};

/// ANSI styling, or none.
#[derive(Debug, Clone, Copy)]
pub struct Style {
    pub color: bool,
}

impl Style {
    fn paint(&self, code: &str, s: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{s}\x1b[0m")
        } else {
            s.to_string()
        }
    }
    fn status(&self, st: Status) -> String {
        let code = match st {
            Status::Confirmed => "32",
            Status::Ambiguous => "33",
            Status::Inconsistent => "31;1",
        };
        self.paint(code, st.as_str())
    }
    fn verdict(&self, v: &str) -> String {
        let code = if v == "ACCEPT" { "32" } else if v == "DROP" { "31;1" } else { "33" };
        self.paint(code, v)
    }
}

fn flags(f: u8) -> String {
    let names = [(tcp_flags::SYN, "SYN"), (tcp_flags::ACK, "ACK"), (tcp_flags::PSH, "PSH"), (tcp_flags::FIN, "FIN"), (tcp_flags::RST, "RST"), (tcp_flags::URG, "URG")];
    names.iter().filter(|(b, _)| f & b != 0).map(|(_, n)| *n).collect::<Vec<_>>().join(",")
}

/// `tcp 192.168.64.5:50676 → 192.168.64.4:10000 [SYN] len 60`
pub fn summary(h: &Headers) -> String {
    let ep = |a, p| Endpoint { addr: a, port: p }.to_string();
    match &h.l4 {
        L4::Tcp { sport, dport, flags: f, .. } => format!("tcp {} → {} [{}] len {}", ep(h.src, Some(*sport)), ep(h.dst, Some(*dport)), flags(*f), h.len),
        L4::Udp { sport, dport, .. } => format!("udp {} → {} len {}", ep(h.src, Some(*sport)), ep(h.dst, Some(*dport)), h.len),
        L4::Sctp { sport, dport } => format!("sctp {} → {} len {}", ep(h.src, Some(*sport)), ep(h.dst, Some(*dport)), h.len),
        L4::Icmp { icmp_type, code, .. } | L4::Icmpv6 { icmp_type, code, .. } => format!("icmp {} → {} type {icmp_type}/{code} len {}", h.src, h.dst, h.len),
        L4::Other => format!("proto {} {} → {} len {}", h.proto, h.src, h.dst, h.len),
    }
}

/// Writes one packet as a tree.
pub fn write_pretty(w: &mut dyn Write, rp: &ReconstructedPacket, style: Style) -> io::Result<()> {
    let p = &rp.packet;
    let first = p.hooks.first().and_then(|h| h.tables.first()).map(|t| summary(&t.before.headers)).unwrap_or_default();
    writeln!(
        w,
        "{} {first}  netns {}  [{}]{}{}",
        style.paint("1", &format!("packet #{}", p.id)),
        p.netns,
        style.status(rp.status),
        fate(&p.fate, style),
        if p.incomplete { "  (incomplete capture)" } else { "" }
    )?;
    for (rh, hp) in rp.hooks.iter().zip(&p.hooks) {
        let dev = |k: &str, d: &Option<String>| d.as_ref().map(|d| format!(" {k}={d}")).unwrap_or_default();
        // Conntrack state as the last table of the hook saw it (raw runs before conntrack).
        let ct = hp.tables.iter().rev().find_map(|t| t.before.ct).map(|c| format!(" ct={}", ct_name(c.ctinfo))).unwrap_or_default();
        writeln!(w, "  {}{}{}{ct}", style.paint("36;1", hp.hook.chain_name()), dev("in", &hp.in_dev), dev("out", &hp.out_dev))?;
        for (t, obs) in rh.tables.iter().zip(&hp.tables) {
            write_table(w, t, obs.before.mark, style)?;
        }
    }
    Ok(())
}

/// How the traversal ended, when it did not simply go on.
fn fate(f: &Fate, style: Style) -> String {
    match f {
        Fate::Delivered | Fate::Unknown => String::new(),
        Fate::Dropped { hook, stage } => format!("  {}", style.paint("31;1", &format!("dropped in {hook} {stage}"))),
        Fate::Stolen { hook, stage } => format!("  {}", style.paint("33", &format!("stolen/queued in {hook} {stage}"))),
        Fate::DroppedOutside { after, reason, reason_name } => {
            let why = reason_name.clone().unwrap_or_else(|| reason.to_string());
            format!("  {}", style.paint("31", &format!("dropped after {after} ({why})")))
        }
        Fate::Vanished { after } => format!("  vanished after {after}"),
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

fn write_table(w: &mut dyn Write, t: &TableResult, mark_before: u32, style: Style) -> io::Result<()> {
    let head = format!("    {:<8}", t.table.name());
    if t.skipped {
        return writeln!(w, "{head} {}", style.paint("2", &format!("not traversed: {}", t.reason.as_deref().unwrap_or(""))));
    }
    let verdict = t.paths.first().map(|p| style.verdict(p.verdict.as_str())).unwrap_or_default();
    let note = match (&t.status, &t.reason) {
        (Status::Confirmed, _) => String::new(),
        (st, r) => format!(" [{}{}]", style.status(*st), r.as_deref().map(|r| format!(": {r}")).unwrap_or_default()),
    };
    let mark = match t.paths.first() {
        Some(p) if p.mark != mark_before => format!("  mark 0x{mark_before:x} → 0x{:x}", p.mark),
        _ => String::new(),
    };
    writeln!(w, "{head} {verdict}{mark}{note}")?;
    for (i, path) in t.paths.iter().enumerate() {
        if t.paths.len() > 1 {
            let label = if t.status == Status::Inconsistent { "evaluated path" } else { "candidate" };
            writeln!(w, "      {} {}{}", style.paint("33", &format!("{label} {}:", i + 1)), style.verdict(path.verdict.as_str()), path.rejected.as_deref().map(|r| format!(" — ruled out: {r}")).unwrap_or_default())?;
        } else if let Some(r) = &path.rejected {
            writeln!(w, "      ruled out: {r}")?;
        }
        write_path(w, path, style)?;
    }
    Ok(())
}

fn write_path(w: &mut dyn Write, path: &Path, style: Style) -> io::Result<()> {
    for s in &path.steps {
        let text = s.rule_text.as_deref().unwrap_or("(end of chain)");
        writeln!(w, "      {}  {}", style.paint("1", &s.id.to_string()), style.paint("2", text))?;
    }
    if let Some(n) = &path.nat {
        writeln!(w, "      {} {} → {}", style.paint("35;1", "NAT"), n.from, n.to)?;
    }
    for a in &path.assumptions {
        writeln!(w, "      assumes {}:{} {} {}", a.chain, a.rule, if a.matched { "matched:" } else { "did not match:" }, a.what.join(", "))?;
    }
    Ok(())
}

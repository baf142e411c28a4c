//! `--format trace`: one line per step in the kernel's legacy TRACE format
//! (`TRACE: table:chain:kind:N IN=… OUT=… …`, see [`super::logline`]), with the packet as
//! each table saw it. Ambiguous and inconsistent tables add `# ` comment lines (the kernel
//! never prints lines starting with `#`), so exact comparisons only differ where iptrace
//! itself says it is unsure.

use super::logline::{push_fields_with, LogContext, LogFlags};
use crate::packet::{HookPass, TableObservation};
use crate::reconstruct::{ReconstructedPacket, Status, Step};
use std::fmt::Write;
use std::io;

/// Which steps to print.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TraceFrom {
    /// The whole path from the first table of the first hook (iptrace needs no TRACE rule).
    #[default]
    Start,
    /// Only what legacy TRACE prints: steps after the TRACE target set skb->nf_trace.
    TraceTarget,
}

/// The TRACE line of one step.
pub fn trace_line(hp: &HookPass, obs: &TableObservation, step: &Step) -> String {
    let mut s = String::with_capacity(320);
    push_trace_line(&mut s, hp, obs, step);
    s
}

/// Appends the TRACE line of one step (without newline) to `s`: the packet as the table saw
/// it, with the TOS/TTL the path had set by then.
pub fn push_trace_line(s: &mut String, hp: &HookPass, obs: &TableObservation, step: &Step) {
    let ctx = LogContext {
        in_dev: hp.in_dev.as_deref(),
        out_dev: hp.out_dev.as_deref(),
        physin: None,
        physout: None,
        mac: hp.mac.as_deref(),
        uid_gid: hp.uid.zip(hp.gid),
        mark: step.mark,
    };
    let _ = write!(s, "TRACE: {} ", step.id);
    push_fields_with(
        s,
        &obs.before.headers,
        step.tos,
        step.ttl,
        &ctx,
        LogFlags::TRACE,
    );
}

/// The TRACE lines of a packet (first path of every table).
pub fn trace_lines(rp: &ReconstructedPacket, from: TraceFrom) -> Vec<String> {
    rp.steps()
        .filter(|(_, _, s)| from == TraceFrom::Start || s.traced)
        .map(|(hp, obs, s)| trace_line(hp, obs, s))
        .collect()
}

/// Writes a packet's TRACE lines, with `# ` notes for tables that are not confirmed, in one
/// `write_all` (the lines are built in one buffer per packet).
pub fn write_trace(
    w: &mut dyn io::Write,
    rp: &ReconstructedPacket,
    from: TraceFrom,
) -> io::Result<()> {
    let mut buf = String::with_capacity(2048);
    push_trace(&mut buf, rp, from);
    w.write_all(buf.as_bytes())
}

/// Appends a packet's TRACE lines (see [`write_trace`]) to `buf`.
pub fn push_trace(buf: &mut String, rp: &ReconstructedPacket, from: TraceFrom) {
    for (rh, hp) in rp.hooks.iter().zip(&rp.packet.hooks) {
        for (tr, obs) in rh.tables.iter().zip(&hp.tables) {
            if tr.status != Status::Confirmed {
                let _ = write!(
                    buf,
                    "# packet {} {}:{} {} ({} candidate paths",
                    rp.packet.id,
                    tr.table,
                    hp.hook,
                    tr.status.as_str(),
                    tr.paths.len()
                );
                if let Some(r) = tr.reason.as_deref() {
                    let _ = write!(buf, ": {r}");
                }
                buf.push_str(")\n");
            }
            for (i, path) in tr.paths.iter().enumerate() {
                if i > 0 {
                    let _ = writeln!(buf, "# alternative {} for {}:{}", i + 1, tr.table, hp.hook);
                }
                for s in path
                    .steps
                    .iter()
                    .filter(|s| from == TraceFrom::Start || s.traced)
                {
                    // Paths the evidence does not single out are printed as comments.
                    if i > 0 || tr.status == Status::Inconsistent {
                        buf.push_str("# ");
                    }
                    push_trace_line(buf, hp, obs, s);
                    buf.push('\n');
                }
                if tr.status == Status::Confirmed {
                    break;
                }
            }
        }
    }
}

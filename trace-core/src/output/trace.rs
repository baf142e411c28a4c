//! `--format trace`: one line per step in the kernel's legacy TRACE format
//! (`TRACE: table:chain:kind:N IN=… OUT=… …`, see [`super::logline`]), with the packet as
//! each table saw it. Ambiguous and inconsistent tables add `# ` comment lines (the kernel
//! never prints lines starting with `#`), so exact comparisons only differ where iptrace
//! itself says it is unsure.

use super::logline::{packet_fields, LogContext, LogFlags};
use crate::packet::{HookPass, TableObservation};
use crate::reconstruct::{headers_at, ReconstructedPacket, Status, Step};
use std::io::{self, Write};

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
    let h = headers_at(&obs.before, step);
    let ctx = LogContext {
        in_dev: hp.in_dev.as_deref(),
        out_dev: hp.out_dev.as_deref(),
        physin: None,
        physout: None,
        mac: hp.mac.as_deref(),
        uid_gid: hp.uid.zip(hp.gid),
        mark: step.mark,
    };
    format!("TRACE: {} {}", step.id, packet_fields(&h, &ctx, LogFlags::TRACE))
}

/// The TRACE lines of a packet (first path of every table).
pub fn trace_lines(rp: &ReconstructedPacket, from: TraceFrom) -> Vec<String> {
    rp.steps()
        .filter(|(_, _, s)| from == TraceFrom::Start || s.traced)
        .map(|(hp, obs, s)| trace_line(hp, obs, s))
        .collect()
}

/// Writes a packet's TRACE lines, with `# ` notes for tables that are not confirmed.
pub fn write_trace(w: &mut dyn Write, rp: &ReconstructedPacket, from: TraceFrom) -> io::Result<()> {
    for (rh, hp) in rp.hooks.iter().zip(&rp.packet.hooks) {
        for (tr, obs) in rh.tables.iter().zip(&hp.tables) {
            if tr.status != Status::Confirmed {
                let why = tr.reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default();
                writeln!(
                    w,
                    "# packet {} {}:{} {} ({} candidate paths{why})",
                    rp.packet.id,
                    tr.table,
                    hp.hook,
                    tr.status.as_str(),
                    tr.paths.len()
                )?;
            }
            for (i, path) in tr.paths.iter().enumerate() {
                if i > 0 {
                    writeln!(w, "# alternative {} for {}:{}", i + 1, tr.table, hp.hook)?;
                }
                for s in path.steps.iter().filter(|s| from == TraceFrom::Start || s.traced) {
                    let line = trace_line(hp, obs, s);
                    // Paths the evidence does not single out are printed as comments.
                    if i > 0 || tr.status == Status::Inconsistent {
                        writeln!(w, "# {line}")?;
                    } else {
                        writeln!(w, "{line}")?;
                    }
                }
                if tr.status == Status::Confirmed {
                    break;
                }
            }
        }
    }
    Ok(())
}

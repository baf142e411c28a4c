//! `--format trace`: one line per step in the kernel's legacy TRACE format
//! (`TRACE: table:chain:kind:N IN=… OUT=… …`, see [`super::logline`]), with the packet as
//! each table saw it. Ambiguous and inconsistent tables add `# ` comment lines (the kernel
//! never prints lines starting with `#`), so exact comparisons only differ where iptrace
//! itself says it is unsure.

use super::logline::{push_fields_with, push_u32, LogContext, LogFlags};
use crate::event::{Headers, L4};
use crate::packet::{HookPass, TableObservation};
use crate::reconstruct::{ReconstructedPacket, Status, Step};
use crate::step::StepId;
use std::fmt::Write;
use std::io;
use std::ops::Range;

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
    push_line_with(s, hp, obs.priority, &obs.before.headers, step);
}

/// [`push_trace_line`] with the headers the step saw (`priority`: the table's).
fn push_line_with(s: &mut String, hp: &HookPass, priority: i32, headers: &Headers, step: &Step) {
    push_step_prefix(s, &step.id);
    push_step_fields(s, hp, hp.owner_before(priority), headers, step);
}

/// `TRACE: table:chain:kind:N `.
fn push_step_prefix(s: &mut String, id: &StepId) {
    s.push_str("TRACE: ");
    push_step_id(s, id);
    s.push(' ');
}

/// `table:chain:kind:N` (what `write!(s, "{id}")` prints, without the formatting machinery).
pub(super) fn push_step_id(s: &mut String, id: &StepId) {
    s.push_str(id.table.name());
    s.push(':');
    s.push_str(&id.chain);
    s.push(':');
    s.push_str(id.kind.as_str());
    s.push(':');
    push_u32(s, id.num);
}

/// The packet part of a TRACE line (`IN=… OUT=… …`) as `step` saw it; `owner`: the socket
/// owner the table saw ([`HookPass::owner_before`]).
fn push_step_fields(
    s: &mut String,
    hp: &HookPass,
    owner: Option<(u32, u32)>,
    headers: &Headers,
    step: &Step,
) {
    let ctx = LogContext {
        in_dev: hp.in_dev.as_deref(),
        out_dev: hp.out_dev.as_deref(),
        physin: hp.bridge.as_ref().and_then(|b| b.physin.as_deref()),
        physout: hp.bridge.as_ref().and_then(|b| b.physout.as_deref()),
        mac: hp.mac.as_deref(),
        uid_gid: owner,
        mark: step.mark,
    };
    push_fields_with(s, headers, step.tos, step.ttl, &ctx, LogFlags::TRACE);
}

/// The packet part of the last TRACE line printed: the lines of one hook pass usually show
/// the same headers (tables in a row leave them alone) and the same TOS/TTL/mark, so a line
/// copies the fields already in the output buffer instead of formatting them again.
#[derive(Default)]
struct FieldsCache<'a> {
    last: Option<CachedFields<'a>>,
}

/// What the cached fields were formatted from, and where they are in the output buffer.
struct CachedFields<'a> {
    hp: &'a HookPass,
    headers: &'a Headers,
    /// The step's (TOS, TTL, mark) and the socket owner its table saw.
    key: (u8, u8, u32, Option<(u32, u32)>),
    range: Range<usize>,
}

impl<'a> FieldsCache<'a> {
    /// Appends the TRACE line of `step` to `buf`, which must only have grown since the last
    /// call (the cached range points into it).
    fn push_line(
        &mut self,
        buf: &mut String,
        hp: &'a HookPass,
        owner: Option<(u32, u32)>,
        headers: &'a Headers,
        step: &Step,
    ) {
        push_step_prefix(buf, &step.id);
        let key = (step.tos, step.ttl, step.mark, owner);
        if let Some(c) = &self.last {
            // Same hook pass (devices, MAC), owner and equal headers: equal fields.
            let same_headers = std::ptr::eq(c.headers, headers) || *c.headers == *headers;
            if std::ptr::eq(c.hp, hp) && c.key == key && same_headers {
                buf.extend_from_within(c.range.clone());
                return;
            }
        }
        let start = buf.len();
        push_step_fields(buf, hp, owner, headers, step);
        self.last = Some(CachedFields {
            hp,
            headers,
            key,
            range: start..buf.len(),
        });
    }
}

/// The TRACE lines of a packet (first path of every table).
pub fn trace_lines(rp: &ReconstructedPacket, from: TraceFrom) -> Vec<String> {
    let mut out = Vec::new();
    // (the table observation of the current steps, its headers after an options rewrite)
    let mut cur: Option<(*const TableObservation, Option<Headers>)> = None;
    for (hp, obs, s) in rp.steps() {
        if cur.as_ref().map(|c| c.0) != Some(obs as *const _) {
            cur = Some((obs as *const _, None));
        }
        let rewritten = &mut cur.as_mut().expect("set above").1;
        if from == TraceFrom::Start || s.traced {
            let mut line = String::with_capacity(320);
            push_line_with(
                &mut line,
                hp,
                obs.priority,
                rewritten.as_ref().unwrap_or(&obs.before.headers),
                s,
            );
            out.push(line);
        }
        if rewritten.is_none() && rewrites_tcp_options(s) {
            *rewritten = with_options_after(obs);
        }
    }
    out
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
    let mut fields = FieldsCache::default();
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
                // Once a target rewrote the TCP options, later steps of the table see them.
                let mut options_from: Option<Headers> = None;
                let owner = hp.owner_before(obs.priority);
                for s in path.steps.iter() {
                    if from == TraceFrom::Start || s.traced {
                        // Paths the evidence does not single out are printed as comments.
                        if i > 0 || tr.status == Status::Inconsistent {
                            buf.push_str("# ");
                        }
                        match options_from.as_ref() {
                            // Rare (after TCPMSS/TCPOPTSTRIP): not worth caching.
                            Some(h) => {
                                push_step_prefix(buf, &s.id);
                                push_step_fields(buf, hp, owner, h, s);
                            }
                            None => fields.push_line(buf, hp, owner, &obs.before.headers, s),
                        }
                        buf.push('\n');
                    }
                    if options_from.is_none() && rewrites_tcp_options(s) {
                        options_from = with_options_after(obs);
                    }
                }
                if tr.status == Status::Confirmed {
                    break;
                }
            }
        }
    }
}

/// True for a rule whose target rewrites TCP options (xt_TCPMSS, xt_TCPOPTSTRIP): the
/// kernel logs it before the target runs, the rules after it see the new options.
fn rewrites_tcp_options(step: &Step) -> bool {
    step.rule_text
        .as_deref()
        // One scan for the usual rule that has neither target.
        .is_some_and(|r| {
            r.contains("-j TCP") && (r.contains("-j TCPMSS") || r.contains("-j TCPOPTSTRIP"))
        })
}

/// The table's input headers with the TCP options and length the table passed on (the
/// captured packet after the table); None when the packet did not come out or is not TCP.
fn with_options_after(obs: &TableObservation) -> Option<Headers> {
    let after = &obs.after.as_ref()?.headers;
    let (L4::Tcp { options: new, .. }, L4::Tcp { .. }) = (&after.l4, &obs.before.headers.l4) else {
        return None;
    };
    let mut h = Headers::clone(&obs.before.headers);
    h.len = after.len;
    if let L4::Tcp { options, .. } = &mut h.l4 {
        options.clone_from(new);
    }
    Some(h)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::tcp_flags;
    use crate::netfilter::Table;
    use crate::packet::{ObservedVerdict, PacketState};

    fn syn(options: Vec<u8>, len: u16) -> Headers {
        Headers {
            src: "10.213.1.2".parse().unwrap(),
            dst: "10.213.2.2".parse().unwrap(),
            proto: 6,
            len,
            tos: 0,
            ttl: 63,
            id: 1,
            frag: 0x4000,
            flowlabel: 0,
            l4: L4::Tcp {
                sport: 1000,
                dport: 8080,
                seq: 1,
                ack: 0,
                window: 64240,
                flags: tcp_flags::SYN,
                res: 0,
                urgp: 0,
                options,
            },
        }
    }

    fn step(id: &str, rule: Option<&str>) -> Step {
        Step {
            id: id.parse().unwrap(),
            rule_text: rule.map(str::to_string),
            mark: 0,
            tos: 0,
            ttl: 63,
            traced: true,
            implicit_return: false,
        }
    }

    /// capture_fidelity targets_v4: after `-j TCPMSS --set-mss 1200` the kernel's next
    /// TRACE line of the table shows MSS 1200 (0x04B0); the TCPMSS line itself the old 1460.
    #[test]
    fn steps_after_tcpmss_print_the_rewritten_options() {
        let before = syn(vec![2, 4, 0x05, 0xb4, 1, 1, 4, 2], 48);
        let after = syn(vec![2, 4, 0x04, 0xb0, 1, 1, 4, 2], 48);
        let obs = TableObservation {
            table: Table::Mangle,
            priority: -150,
            before: PacketState {
                headers: before.into(),
                mark: 0,
                ct: None,
            },
            after: Some(PacketState {
                headers: after.into(),
                mark: 0,
                ct: None,
            }),
            verdict: ObservedVerdict::Accept,
        };
        let tcpmss = step(
            "mangle:FORWARD:rule:1",
            Some("-p tcp -m tcp --tcp-flags SYN,RST SYN -j TCPMSS --set-mss 1200"),
        );
        assert!(rewrites_tcp_options(&tcpmss));
        assert!(!rewrites_tcp_options(&step(
            "mangle:FORWARD:rule:2",
            Some("-j MARK --set-mark 1")
        )));
        assert!(!rewrites_tcp_options(&step(
            "mangle:FORWARD:policy:3",
            None
        )));
        let h = with_options_after(&obs).expect("TCP in and out");
        let L4::Tcp { options, .. } = &h.l4 else {
            panic!()
        };
        assert_eq!(options[..4], [2, 4, 0x04, 0xb0]);
        // Everything else as the table saw it on the way in.
        assert_eq!((h.ttl, h.id), (63, 1));
        let mut none = obs.clone();
        none.after = None;
        assert!(with_options_after(&none).is_none());
    }
}

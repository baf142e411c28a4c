//! What the two nf_tables trace monitors (`xtables-monitor --trace`, `nft monitor trace`)
//! have in common once a line is parsed: header lines and step lines keyed by a trace id,
//! grouped into packets the same way, and one parse loop for both.

use super::fields::RefHeaders;
use super::segment::Segmenter;
use super::{Evidence, Format, Malformed, ParsedReference, RefPacket, RefStep, RefStepPos};
use crate::netfilter::Family;
use std::collections::HashMap;

/// One trace line of either monitor (`xtmon::XtLine`, `nftmon::NftLine`): headers of the
/// packet entering a base chain, or one step.
#[derive(Debug, Clone, PartialEq)]
pub enum MonitorLine {
    Packet {
        family: Option<Family>,
        trace_id: u32,
        headers: Box<RefHeaders>,
    },
    Step {
        family: Option<Family>,
        trace_id: u32,
        step: RefStep,
    },
}

/// Parses `text` line by line with `parse_line` (Ok(None): not a trace line of an iptables
/// table) and groups the events into packets. `lost` recognises the monitor's own loss
/// lines: they count in [`ParsedReference::lost`], and as the monitor reports an overrun
/// before the messages queued ahead of the gap, every packet with lines after such a line is
/// marked incomplete.
pub(super) fn parse_events<E: std::fmt::Display>(
    text: &str,
    format: Format,
    parse_line: impl Fn(&str, usize) -> Result<Option<MonitorLine>, E>,
    lost: impl Fn(&str) -> bool,
) -> ParsedReference {
    let mut g = NftGrouper::new();
    let mut out = ParsedReference {
        format: Some(format),
        ..Default::default()
    };
    for (n, line) in text.lines().enumerate() {
        if lost(line) {
            out.lost += 1;
            g.seg.lost_after_here();
            continue;
        }
        match parse_line(line, n + 1) {
            Ok(Some(MonitorLine::Packet {
                family,
                trace_id,
                headers,
            })) => g.headers(trace_id, family, *headers, n + 1),
            Ok(Some(MonitorLine::Step {
                family,
                trace_id,
                step,
            })) => g.step(trace_id, family, step),
            Ok(None) => out.skipped += 1,
            Err(e) => out.malformed.push(Malformed::new(n + 1, line, e)),
        }
    }
    out.packets = g.seg.packets;
    out
}

/// A verdict after which the table traversal is over.
fn is_final_verdict(v: &str) -> bool {
    matches!(
        v.to_ascii_uppercase().as_str(),
        "ACCEPT" | "DROP" | "QUEUE" | "STOLEN"
    )
}

/// Groups nft trace events into packets: by trace id, split where the IP id changes or the
/// traversal order goes backwards (trace ids repeat across a connection's packets).
struct NftGrouper {
    seg: Segmenter<(u32, Option<u16>)>,
    ip_id: HashMap<u32, Option<u16>>,
    pending: HashMap<u32, (RefHeaders, Option<Family>, usize)>,
}

impl NftGrouper {
    fn new() -> Self {
        NftGrouper {
            seg: Segmenter::new(),
            ip_id: HashMap::new(),
            pending: HashMap::new(),
        }
    }

    /// Headers line: remembered until the step that follows it places the packet.
    fn headers(&mut self, trace_id: u32, family: Option<Family>, h: RefHeaders, line: usize) {
        self.ip_id.insert(trace_id, h.id);
        self.pending.insert(trace_id, (h, family, line));
    }

    fn step(&mut self, trace_id: u32, family: Option<Family>, step: RefStep) {
        let key = (trace_id, self.ip_id.get(&trace_id).copied().flatten());
        let pending = self.pending.remove(&trace_id);
        let first_line = pending.as_ref().map_or(step.line, |p| p.2);
        let idx = self
            .seg
            .packet_for(key, step.table, &step.chain, || RefPacket {
                trace_id: Some(trace_id),
                ..RefPacket::new(
                    first_line,
                    None,
                    family,
                    Evidence::Path { steps: Vec::new() },
                )
            });
        let done = matches!(step.pos, RefStepPos::Policy)
            || step.verdict.as_deref().is_some_and(is_final_verdict);
        let pkt = &mut self.seg.packets[idx];
        if let Some((h, fam, _)) = pending {
            pkt.family = pkt.family.or(fam);
            pkt.push_headers(h);
        }
        if let Evidence::Path { steps } = &mut pkt.evidence {
            if ends_base_chain(steps.last(), &step) {
                steps.pop();
            }
            steps.push(step);
        }
        if done {
            self.seg.table_done(idx);
        }
    }
}

/// Whether `prev` is the chain-end event older kernels (Debian's 6.1; 6.12 no longer does)
/// trace when a packet falls off the end of a base chain, right before that chain's policy
/// event: legacy TRACE shows only the policy there, so the pair is one step. Not when nft
/// printed `verdict return`: that was a RETURN rule of the base chain, which legacy TRACE
/// shows as a step of its own before the policy. (xtables-monitor prints no verdict, so a
/// RETURN rule in a base chain is merged too: a known limit, such rules are rare.)
fn ends_base_chain(prev: Option<&RefStep>, step: &RefStep) -> bool {
    let fell_off = |p: &RefStep| {
        matches!(p.pos, RefStepPos::EndOfChain)
            && !p
                .verdict
                .as_deref()
                .is_some_and(|v| v.eq_ignore_ascii_case("return"))
    };
    matches!(step.pos, RefStepPos::Policy)
        && prev.is_some_and(|p| fell_off(p) && p.table == step.table && p.chain == step.chain)
}

//! Extension targets: what each does to the packet state, and whether traversal continues
//! (XT_CONTINUE) or stops with a verdict (net/netfilter/xt_*.c).

use super::{Assumption, Cursor, NatRequest, Run, TableVerdict};
use crate::rules::targets::{ConnmarkTarget, Target};
use crate::rules::Rule;

/// Targets that always return XT_CONTINUE and change nothing the evaluator tracks.
const CONTINUE_TARGETS: &[&str] = &[
    "LOG",
    "NFLOG",
    "ULOG",
    "AUDIT",
    "CHECKSUM",
    "CLASSIFY",
    "CONNSECMARK",
    "SECMARK",
    "IDLETIMER",
    "LED",
    "RATEEST",
    "TEE",
    "TCPMSS",
    "TCPOPTSTRIP",
    "ECN",
    "SET",
    "HMARK",
    "NETMAP_NOOP",
    "TRACE",
];

/// Applies the rule's target; Some(verdict) ends the traversal.
pub(super) fn apply(run: &mut Run<'_>, c: &mut Cursor, rule: &Rule) -> Option<TableVerdict> {
    let step = c.steps.len() - 1;
    match &rule.target {
        Target::None => {}
        Target::Dnat(t) => return nat(c, step, NatRequest::Dnat(t.clone())),
        Target::Snat(t) => return nat(c, step, NatRequest::Snat(t.clone())),
        Target::Masquerade(t) => return nat(c, step, NatRequest::Masquerade(t.clone())),
        Target::Redirect(t) => return nat(c, step, NatRequest::Redirect(t.clone())),
        Target::Netmap { to } => return nat(c, step, NatRequest::Netmap { to: *to }),
        Target::Mark(m) => c.st.mark = m.apply(c.st.mark),
        Target::Connmark(cm) => connmark(c, cm),
        Target::Ct(ct) if ct.notrack => untrack(c),
        Target::Notrack => untrack(c),
        Target::Ct(_) => {}
        Target::Trace => {
            // xt_TRACE sets skb->nf_trace; the kernel logged this rule before the target ran.
            c.st.nf_trace = true;
            c.st.sets_trace = true;
        }
        Target::Dscp(d) => c.st.tos = (c.st.tos & 0x03) | (d << 2),
        Target::Tos(t) => c.st.tos = ((c.st.tos as u32 & !t.mask) ^ t.value) as u8,
        Target::Reject { .. } => return Some(TableVerdict::Drop),
        Target::Nfqueue { bypass, .. } => return Some(TableVerdict::Queue { bypass: *bypass }),
        Target::Tproxy(t) => {
            // Accepts (setting the mark) when a socket is found, else drops: a branch point.
            let mut alt = c.clone();
            alt.assumptions
                .push(assume(run, c, "-j TPROXY (no socket found)", false));
            run.out.push(super::finish(alt, TableVerdict::Drop));
            c.assumptions
                .push(assume(run, c, "-j TPROXY (socket found)", true));
            if let Some(m) = t.mark {
                c.st.mark = (c.st.mark & !m.mask) ^ m.value;
            }
            return Some(TableVerdict::Accept);
        }
        Target::TcpMss { set_mss: Some(n) } => {
            if let Some(mss) = super::matches::tcpmss_target(run.pkt.h, c.st.mss, *n) {
                c.st.mss = Some(mss);
            }
        }
        // --clamp-mss-to-pmtu: the route MTU is not known here; the packet is left as
        // captured (a later -m tcpmss in the same table may then be misjudged).
        Target::TcpMss { set_mss: None } => {}
        Target::Log(_)
        | Target::Nflog(_)
        | Target::Checksum
        | Target::Set(_)
        | Target::Classify(_) => {}
        Target::Unknown { name, args } => return unknown(run, c, name, args),
        // Standard verdicts, jumps and gotos are handled by the traversal itself.
        Target::Accept
        | Target::Drop
        | Target::Return
        | Target::Queue
        | Target::Jump(_)
        | Target::Goto(_) => {
            unreachable!("standard targets are compiled")
        }
    }
    c.pos += 1;
    None
}

fn nat(c: &mut Cursor, step: usize, req: NatRequest) -> Option<TableVerdict> {
    c.nat = Some((step, req));
    Some(TableVerdict::Accept)
}

fn untrack(c: &mut Cursor) {
    c.st.notrack = true;
    c.st.ctmark = None;
}

/// xt_connmark connmark_tg (revision 1/2 without shifts): no conntrack, no change.
fn connmark(c: &mut Cursor, cm: &ConnmarkTarget) {
    let Some(ctmark) = c.st.ctmark else { return };
    match *cm {
        ConnmarkTarget::Set { value, mask } => c.st.ctmark = Some((ctmark & !mask) ^ value),
        ConnmarkTarget::Save { nfmask, ctmask } => {
            c.st.ctmark = Some((ctmark & !ctmask) ^ (c.st.mark & nfmask))
        }
        ConnmarkTarget::Restore { nfmask, ctmask } => {
            c.st.mark = (c.st.mark & !nfmask) ^ (ctmark & ctmask)
        }
    }
}

fn assume(run: &Run<'_>, c: &Cursor, what: &str, matched: bool) -> Assumption {
    Assumption {
        chain: run.ev.chain_name(run.table, c.chain).to_string(),
        rule: c.pos + 1,
        what: vec![what.to_string()],
        matched,
    }
}

/// `TTL`/`HL` change the packet; other known names continue; anything else may continue or
/// stop: both are explored.
fn unknown(run: &mut Run<'_>, c: &mut Cursor, name: &str, args: &[String]) -> Option<TableVerdict> {
    if name == "TTL" || name == "HL" {
        ttl(c, args);
    } else if !CONTINUE_TARGETS.contains(&name) {
        let mut stop = c.clone();
        stop.assumptions.push(assume(
            run,
            c,
            &format!("-j {name} stopped the table"),
            true,
        ));
        run.out.push(super::finish(
            stop,
            TableVerdict::Unknown {
                target: name.to_string(),
            },
        ));
        c.assumptions
            .push(assume(run, c, &format!("-j {name} continued"), true));
    }
    c.pos += 1;
    None
}

/// xt_HL: `--ttl-set N`, `--ttl-dec N`, `--ttl-inc N` (and `--hl-*`).
fn ttl(c: &mut Cursor, args: &[String]) {
    let (Some(op), Some(v)) = (args.first(), args.get(1).and_then(|v| v.parse::<u8>().ok())) else {
        return;
    };
    c.st.ttl = match op.trim_start_matches("--").split_once('-').map(|(_, o)| o) {
        Some("set") => v,
        Some("dec") => c.st.ttl.saturating_sub(v),
        Some("inc") => c.st.ttl.saturating_add(v),
        _ => c.st.ttl,
    };
}

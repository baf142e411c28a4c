//! kprobe/kretprobe programs on the netfilter functions (the `kprobe` backend). Bodies in
//! [`crate::tables`]. A kretprobe no longer has the arguments: the entry probe pushes
//! (skb, state, position) on a per-CPU stack that the return probe pops — a packet's hook
//! functions run nested, on one CPU, in softirq or the sending task.

use aya_ebpf::{
    macros::{kprobe, kretprobe, map},
    maps::PerCpuArray,
    programs::{ProbeContext, RetProbeContext},
};

use crate::tables;

/// Deepest nesting kept (nf_hook_slow → nf_nat_inet_fn → ipt_do_table, plus a nested hook
/// such as a REJECT reply sent from inside a table).
const MAX_FRAMES: usize = 8;
const FN_TABLE: u32 = 1;
const FN_NAT: u32 = 2;
const FN_XT_MATCH: u32 = 3;

#[repr(C)]
#[derive(Clone, Copy)]
pub struct Frame {
    skb: u64,
    state: u64,
    prio: i32,
    func: u32,
}

#[repr(C)]
pub struct Frames {
    depth: u32,
    _pad0: u32,
    frames: [Frame; MAX_FRAMES],
}

#[map]
static FRAMES: PerCpuArray<Frames> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
fn push(func: u32, skb: u64, state: u64, prio: i32) {
    let Some(f) = FRAMES.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU map value.
    let f = unsafe { &mut *f };
    let d = f.depth as usize;
    if d < MAX_FRAMES {
        f.frames[d] = Frame {
            skb,
            state,
            prio,
            func,
        };
    }
    // Deeper than MAX_FRAMES: counted, so the matching pops stay aligned (they find nothing).
    f.depth = f.depth.saturating_add(1);
}

#[inline(always)]
fn pop(func: u32) -> Option<Frame> {
    let f = FRAMES.get_ptr_mut(0)?;
    // SAFETY: per-CPU map value.
    let f = unsafe { &mut *f };
    if f.depth == 0 {
        return None;
    }
    f.depth -= 1;
    let d = f.depth as usize;
    if d >= MAX_FRAMES {
        return None;
    }
    let fr = f.frames[d];
    if fr.func != func {
        // A missed return probe: start over rather than pair wrong frames.
        f.depth = 0;
        return None;
    }
    Some(fr)
}

fn arg(ctx: &ProbeContext, n: usize) -> u64 {
    ctx.arg::<u64>(n).unwrap_or(0)
}

/// nf_hook_slow(skb, state, e, s).
#[kprobe]
pub fn kprobe_nf_hook_slow(ctx: ProbeContext) -> u32 {
    let allowed = tables::entry_allowed(arg(&ctx, 1));
    if allowed {
        tables::hook_entry(arg(&ctx, 0), arg(&ctx, 1));
    }
    tables::push_hook(arg(&ctx, 0), arg(&ctx, 1), allowed);
    0
}

/// Return of nf_hook_slow (int): the hook's verdict; the frame its kprobe pushed says for
/// which skb.
#[kretprobe]
pub fn kretprobe_nf_hook_slow(ctx: RetProbeContext) -> u32 {
    tables::hook_exit(0, ctx.ret::<u64>() as i32);
    0
}

/// ipt_do_table and ip6t_do_table (same signature: one program attached to both).
#[kprobe]
pub fn kprobe_ipt_do_table(ctx: ProbeContext) -> u32 {
    let (t, skb, state) = tables::ipt_args(arg(&ctx, 0), arg(&ctx, 1), arg(&ctx, 2));
    let prio = tables::ipt_entry(t, skb, state);
    push(FN_TABLE, skb, state, prio);
    0
}

/// Return of ipt_do_table, ip6t_do_table and nft_do_chain.
#[kretprobe]
pub fn kretprobe_table(ctx: RetProbeContext) -> u32 {
    if let Some(f) = pop(FN_TABLE) {
        tables::table_exit(f.skb, f.state, f.prio, ctx.ret::<u64>() as u32);
    }
    0
}

/// nft_do_chain(pkt, priv).
#[kprobe]
pub fn kprobe_nft_do_chain(ctx: ProbeContext) -> u32 {
    let (skb, state, prio) = tables::nft_args(arg(&ctx, 0), arg(&ctx, 1));
    let prio = tables::nft_entry(skb, state, prio);
    push(FN_TABLE, skb, state, prio);
    0
}

/// nf_nat_inet_fn(priv, skb, state).
#[kprobe]
pub fn kprobe_nf_nat_inet_fn(ctx: ProbeContext) -> u32 {
    let (skb, state) = (arg(&ctx, 1), arg(&ctx, 2));
    let prio = tables::nat_entry(skb, state);
    push(FN_NAT, skb, state, prio);
    0
}

#[kretprobe]
pub fn kretprobe_nf_nat_inet_fn(ctx: RetProbeContext) -> u32 {
    if let Some(f) = pop(FN_NAT) {
        tables::nat_exit(f.skb, f.state, ctx.ret::<u64>() as u32);
    }
    0
}

/// x_tables match functions (`bool match(const struct sk_buff *, struct xt_action_param *)`),
/// attached by name to those the collector finds (rule positions). The frame is pushed for
/// every skb so the return probes stay paired with the table frames around them.
#[kprobe]
pub fn kprobe_xt_match(ctx: ProbeContext) -> u32 {
    let (skb, par) = (arg(&ctx, 0), arg(&ctx, 1));
    push(FN_XT_MATCH, skb, tables::xt_info(par), 0);
    0
}

#[kretprobe]
pub fn kretprobe_xt_match(ctx: RetProbeContext) -> u32 {
    if let Some(f) = pop(FN_XT_MATCH) {
        tables::xt_call(
            f.skb,
            trace_common::record::xt_what::MATCH,
            f.state,
            (ctx.ret::<u64>() & 1) as u8,
        );
    }
    0
}

/// x_tables target functions (`unsigned int target(struct sk_buff *, const struct
/// xt_action_param *)`): the rule whose targinfo this is matched.
#[kprobe]
pub fn kprobe_xt_target(ctx: ProbeContext) -> u32 {
    let (skb, par) = (arg(&ctx, 0), arg(&ctx, 1));
    tables::xt_call(
        skb,
        trace_common::record::xt_what::TARGET,
        tables::xt_info(par),
        0,
    );
    0
}

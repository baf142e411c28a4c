//! fentry/fexit programs on the netfilter functions (the `fentry` backend). Bodies in
//! [`crate::tables`]. fexit reads the return value as the argument after the last one (the
//! trampoline's layout), so no bpf_get_func_ret is needed. Functions in modules (ip_tables,
//! ip6_tables, nf_tables, nf_nat) are loaded by the collector with the module's BTF object fd.

use aya_ebpf::{
    macros::{fentry, fexit},
    programs::{FEntryContext, FExitContext},
};

use crate::tables;

/// nf_hook_slow(skb, state, e, s).
#[fentry(function = "nf_hook_slow")]
pub fn fentry_nf_hook_slow(ctx: FEntryContext) -> i32 {
    let allowed = tables::entry_allowed(ctx.arg(1));
    if allowed {
        tables::hook_entry(ctx.arg(0), ctx.arg(1));
    }
    tables::push_hook(ctx.arg(0), ctx.arg(1), allowed);
    0
}

/// nf_hook_slow has four arguments: its int return value is the fifth slot.
#[fexit(function = "nf_hook_slow")]
pub fn fexit_nf_hook_slow(ctx: FExitContext) -> i32 {
    tables::hook_exit(ctx.arg(0), ctx.arg::<u64>(4) as i32);
    0
}

#[fentry(function = "ipt_do_table")]
pub fn fentry_ipt_do_table(ctx: FEntryContext) -> i32 {
    let (t, skb, state) = tables::ipt_args(ctx.arg(0), ctx.arg(1), ctx.arg(2));
    tables::ipt_entry(t, skb, state);
    0
}

/// ipt_do_table has three arguments: the return value is the fourth slot.
#[fexit(function = "ipt_do_table")]
pub fn fexit_ipt_do_table(ctx: FExitContext) -> i32 {
    let (t, skb, state) = tables::ipt_args(ctx.arg(0), ctx.arg(1), ctx.arg(2));
    tables::ipt_exit(t, skb, state, ctx.arg::<u64>(3) as u32);
    0
}

#[fentry(function = "ip6t_do_table")]
pub fn fentry_ip6t_do_table(ctx: FEntryContext) -> i32 {
    let (t, skb, state) = tables::ipt_args(ctx.arg(0), ctx.arg(1), ctx.arg(2));
    tables::ipt_entry(t, skb, state);
    0
}

#[fexit(function = "ip6t_do_table")]
pub fn fexit_ip6t_do_table(ctx: FExitContext) -> i32 {
    let (t, skb, state) = tables::ipt_args(ctx.arg(0), ctx.arg(1), ctx.arg(2));
    tables::ipt_exit(t, skb, state, ctx.arg::<u64>(3) as u32);
    0
}

/// nft_do_chain(pkt, priv).
#[fentry(function = "nft_do_chain")]
pub fn fentry_nft_do_chain(ctx: FEntryContext) -> i32 {
    let (skb, state, prio) = tables::nft_args(ctx.arg(0), ctx.arg(1));
    tables::nft_entry(skb, state, prio);
    0
}

#[fexit(function = "nft_do_chain")]
pub fn fexit_nft_do_chain(ctx: FExitContext) -> i32 {
    let (skb, state, prio) = tables::nft_args(ctx.arg(0), ctx.arg(1));
    tables::table_exit(skb, state, prio, ctx.arg::<u64>(2) as u32);
    0
}

/// nf_nat_inet_fn(priv, skb, state).
#[fentry(function = "nf_nat_inet_fn")]
pub fn fentry_nf_nat_inet_fn(ctx: FEntryContext) -> i32 {
    tables::nat_entry(ctx.arg(1), ctx.arg(2));
    0
}

#[fexit(function = "nf_nat_inet_fn")]
pub fn fexit_nf_nat_inet_fn(ctx: FExitContext) -> i32 {
    tables::nat_exit(ctx.arg(1), ctx.arg(2), ctx.arg::<u64>(3) as u32);
    0
}

/// x_tables match functions (`bool match(const struct sk_buff *, struct xt_action_param *)`),
/// rule positions: loaded by the collector once per match function found (each load names
/// its target by BTF id; the section's function name is a placeholder). fexit has the result.
#[fexit(function = "xt_match")]
pub fn fexit_xt_match(ctx: FExitContext) -> i32 {
    let (skb, par) = (ctx.arg::<u64>(0), ctx.arg::<u64>(1));
    tables::xt_call(
        skb,
        trace_common::record::xt_what::MATCH,
        tables::xt_info(par),
        (ctx.arg::<u64>(2) & 1) as u8,
    );
    0
}

/// x_tables target functions (`unsigned int target(struct sk_buff *, const struct
/// xt_action_param *)`): the rule whose targinfo this is matched.
#[fentry(function = "xt_target")]
pub fn fentry_xt_target(ctx: FEntryContext) -> i32 {
    let (skb, par) = (ctx.arg::<u64>(0), ctx.arg::<u64>(1));
    tables::xt_call(
        skb,
        trace_common::record::xt_what::TARGET,
        tables::xt_info(par),
        0,
    );
    0
}

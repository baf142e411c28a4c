//! The bodies shared by the fentry/fexit and kprobe/kretprobe programs on the netfilter
//! functions (issue 6). Both backends write the nfhook backend's records, with the same
//! first-sight filter, sampling and per-skb tracking (`nfhook::first_sight` / `follow`), so
//! assembly and reconstruction are shared. Where nfhook has a probe *priority*, these programs
//! use the priority of the position they stand for:
//!
//! - nf_hook_slow entry: [`PRIO_HOOK_ENTRY`] (before every hook function of the hook); on
//!   PREROUTING/OUTPUT it is the first sight (filter, start tracking);
//! - nf_hook_slow exit: the hook's verdict. 1 (every hook function accepted) is a record at
//!   [`PRIO_HOOK_EXIT`] (after everything on the hook, conntrack confirm included); 0 (stolen,
//!   queued) and a negative errno (dropped) are a [`HookVerdictRecord`] built from what the
//!   entry remembered ([`HOOK_FRAMES`]): the skb may be freed by then (and kfree_skb stopped
//!   tracking it), so a drop is attributed even when its kfree_skb report is missing;
//! - a table function's entry: the table's priority P (a probe at P runs before the stage at
//!   P); its exit with NF_ACCEPT: P + 1 (after the table). Other verdicts write nothing: a
//!   dropped packet is reported by kfree_skb (NETFILTER_DROP), a stolen one vanishes — the same
//!   evidence nfhook's brackets give;
//! - nf_nat_inet_fn: the nat stage (−100 on PREROUTING/OUTPUT, 100 on INPUT/POSTROUTING), its
//!   exit after the translation, so the headers show the NAT rewrite. The nat table's own
//!   function calls (ipt_do_table / nft_do_chain run *inside* nf_nat_inet_fn, and only for
//!   new connections) write nothing.
//!
//! Legacy tables are named by `xt_table.name`; nft base chains carry their hook priority in
//! `nft_base_chain.ops.priority`.

use aya_ebpf::{
    helpers::bpf_ktime_get_ns,
    macros::map,
    maps::{Array, HashMap, PerCpuArray},
};
use trace_common::record::{
    kind, xt_what, HookVerdictRecord, RecordHeader, TableOffsets, Tracked, XtRecord, RECORD_VERSION,
};

use crate::{
    headers::{NFPROTO_IPV4, NFPROTO_IPV6},
    kread::{read, read_buf},
    maps::{global, COUNTERS, EVENTS, TRACKED},
    nfhook::{first_sight, follow},
};

/// Tracked::state of a traced (not pending) skb.
const STATE_TRACKED: u8 = 2;

/// Priority the nf_hook_slow entry record stands for: before everything on the hook
/// (INT_MIN itself is not a valid netfilter priority).
pub const PRIO_HOOK_ENTRY: i32 = i32::MIN + 1;
/// Priority the nf_hook_slow exit record (verdict accept) stands for: after everything.
pub const PRIO_HOOK_EXIT: i32 = i32::MAX;
/// "No table position": the call is not traced (nat table inside nf_nat_inet_fn, unknown table).
pub const NO_PRIO: i32 = i32::MIN;
const NF_ACCEPT: u32 = 1;
const NF_INET_PRE_ROUTING: u8 = 0;
const NF_INET_LOCAL_OUT: u8 = 3;
const PRIO_RAW: i32 = -300;
const PRIO_MANGLE: i32 = -150;
const PRIO_NAT_DST: i32 = -100;
const PRIO_FILTER: i32 = 0;
const PRIO_SECURITY: i32 = 50;
const PRIO_NAT_SRC: i32 = 100;

/// Offsets of the table functions' structs (set by the collector at load time).
#[no_mangle]
pub static TABLE_OFFSETS: TableOffsets = TableOffsets {
    xt_table_name: 0,
    pktinfo_skb: 0,
    pktinfo_state: 0,
    base_chain_chain: 0,
    base_chain_priority: 0,
    ipt_priv_first: 0,
    have_xt: 0,
    have_nft: 0,
    xt_table_private: 0,
    xt_info_entries: 0,
    par_matchinfo: 0,
    have_xtpos: 0,
};

/// Read one field of [`TABLE_OFFSETS`] (volatile: patched after compilation).
macro_rules! toff {
    ($f:ident) => {
        unsafe { core::ptr::read_volatile(core::ptr::addr_of!(TABLE_OFFSETS.$f)) }
    };
}

/// Per-CPU nesting depth of nf_nat_inet_fn (index 0): table calls inside it are the nat
/// table's, bracketed by nf_nat_inet_fn itself. Softirq processing of one packet does not
/// migrate between CPUs.
#[map]
static NAT_DEPTH: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// `--netns`: these programs see every namespace (nfhook links only the selected ones), so
/// when NETNS_ON[0] != 0 only namespaces whose inode is in NETNS record anything.
#[map]
static NETNS_ON: Array<u32> = Array::with_max_entries(1, 0);
#[map]
static NETNS: HashMap<u32, u8> = HashMap::with_max_entries(256, 0);

#[inline(never)]
fn netns_selected(state: u64) -> bool {
    if NETNS_ON.get(0).is_none_or(|on| *on == 0) {
        return true;
    }
    let net: u64 = read(state, global!(OFFSETS.state_net));
    let inum: u32 = read(net, global!(OFFSETS.net_inum));
    // SAFETY: read-only lookup of a plain value.
    unsafe { NETNS.get(&inum) }.is_some()
}

/// Inode of the network namespace of `state`.
#[inline(never)]
fn state_netns(state: u64) -> u32 {
    let net: u64 = read(state, global!(OFFSETS.state_net));
    read(net, global!(OFFSETS.net_inum))
}

/// Whether a TRACKED entry belongs here: a traversal is followed in the namespace it was
/// first seen in. In another one the entry is stale — its skb address was freed without a
/// drop report (consumed) and reused by a packet never first-sighted here (a namespace without
/// hooks on PREROUTING/OUTPUT) — and following it would write that packet's records under
/// the old traversal and namespace.
#[inline(always)]
fn tracked_here(state: u64, t: &Tracked) -> bool {
    t.netns == 0 || t.netns == state_netns(state)
}

/// Write a record at `prio` if the skb is tracked (or pending a sampling decision).
#[inline(always)]
fn at(state: u64, skb: u64, prio: i32) {
    if !netns_selected(state) {
        return;
    }
    if let Some(t) = TRACKED.get_ptr_mut(&skb) {
        // SAFETY: map value pointer, valid for this program run.
        let t = unsafe { &mut *t };
        if tracked_here(state, t) {
            follow(state, skb, prio, t);
            hook_saw_table(skb);
        }
    }
}

#[inline(always)]
fn nat_depth() -> Option<&'static mut u32> {
    // SAFETY: per-CPU map value.
    NAT_DEPTH.get_ptr_mut(0).map(|p| unsafe { &mut *p })
}

/// Whether nf_hook_slow's entry looks at this packet at all: IPv4/IPv6, a selected netns.
/// Also clears a left-over nf_nat_inet_fn depth: a hook is never entered from inside
/// nf_nat_inet_fn, so that is a missed return probe (kretprobe instances exhausted). Its own
/// BPF function, called first (nothing else live yet), so it adds nothing to the frame of the
/// path first_sight → record writer, which is near the 512-byte combined limit on 6.1.
#[inline(never)]
pub fn entry_allowed(state: u64) -> bool {
    let pf: u8 = read(state, global!(OFFSETS.state_pf));
    if pf != NFPROTO_IPV4 && pf != NFPROTO_IPV6 {
        return false;
    }
    if let Some(d) = nat_depth() {
        *d = 0;
    }
    netns_selected(state)
}

/// nf_hook_slow(skb, state, ...) entry, after [`entry_allowed`]: first sight on
/// PREROUTING/OUTPUT, else follow.
#[inline(always)]
pub fn hook_entry(skb: u64, state: u64) {
    let hook: u8 = read(state, global!(OFFSETS.state_hook));
    if hook == NF_INET_PRE_ROUTING || hook == NF_INET_LOCAL_OUT {
        first_sight(state, skb, PRIO_HOOK_ENTRY);
    } else if let Some(t) = TRACKED.get_ptr_mut(&skb) {
        // SAFETY: map value pointer, valid for this program run.
        let t = unsafe { &mut *t };
        if tracked_here(state, t) {
            follow(state, skb, PRIO_HOOK_ENTRY, t);
        }
    }
}

/// Deepest nf_hook_slow nesting remembered (a hook entered from inside another one's table,
/// e.g. the RST a REJECT sends on OUTPUT while the packet is in INPUT).
const HOOK_DEPTH: usize = 8;

/// One nf_hook_slow call in progress, pushed by its entry for its exit.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct HookFrame {
    skb: u64,
    state: u64,
    /// The traversal's gen when the skb was tracked at the entry (state TRACKED), else 0.
    gen: u64,
    netns: u32,
    /// entry_allowed said yes (IPv4/IPv6, a selected netns).
    allowed: u8,
    hook: u8,
    pf: u8,
    /// Records this call wrote at table positions for its skb (saturating).
    tables: u8,
}

#[repr(C)]
pub struct HookFrames {
    depth: u32,
    _pad: u32,
    frames: [HookFrame; HOOK_DEPTH],
}

/// Per-CPU stack of nf_hook_slow calls (index 0): a hook runs on one CPU from its entry to its
/// exit (softirq or the sending task), nested calls return in reverse order.
#[map]
static HOOK_FRAMES: PerCpuArray<HookFrames> = PerCpuArray::with_max_entries(1, 0);

/// nf_hook_slow entry, after [`entry_allowed`] / [`hook_entry`]: remember the call for its exit
/// (every call, so the kretprobe's pops stay paired). Its own BPF function: the entry path's
/// stack is near the limit.
#[inline(never)]
pub fn push_hook(skb: u64, state: u64, allowed: bool) {
    let mut fr = HookFrame {
        skb,
        state,
        gen: 0,
        netns: 0,
        allowed: allowed as u8,
        hook: 0,
        pf: 0,
        tables: 0,
    };
    if allowed {
        if let Some(t) = TRACKED.get_ptr(&skb) {
            // SAFETY: map value pointer, read once.
            let t = unsafe { *t };
            if t.state == STATE_TRACKED && tracked_here(state, &t) {
                fr.gen = t.gen;
                fr.netns = t.netns;
                fr.hook = read(state, global!(OFFSETS.state_hook));
                fr.pf = read(state, global!(OFFSETS.state_pf));
            }
        }
    }
    let Some(f) = HOOK_FRAMES.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU map value.
    let f = unsafe { &mut *f };
    // Index right after its bound check (the verifier must see the bound on the register
    // it indexes with).
    let d = f.depth as usize;
    if d < HOOK_DEPTH {
        f.frames[d] = fr;
    }
    // Deeper than HOOK_DEPTH: counted, so the matching pops stay aligned (they find nothing).
    f.depth = f.depth.saturating_add(1);
}

/// The frame of the nf_hook_slow call returning now; `skb` (0 = not known: kretprobe) must be
/// the one its entry saw, else a return was missed and the stack starts over.
#[inline(always)]
fn pop_hook(skb: u64) -> Option<HookFrame> {
    let f = HOOK_FRAMES.get_ptr_mut(0)?;
    // SAFETY: per-CPU map value.
    let f = unsafe { &mut *f };
    if f.depth == 0 {
        return None;
    }
    f.depth -= 1;
    let d = f.depth as usize;
    if d >= HOOK_DEPTH {
        return None;
    }
    let fr = f.frames[d];
    if skb != 0 && fr.skb != skb {
        f.depth = 0;
        return None;
    }
    Some(fr)
}

/// A table-position record for `skb` was written: count it in the innermost nf_hook_slow call
/// if that call is this skb's.
#[inline(never)]
fn hook_saw_table(skb: u64) {
    let Some(f) = HOOK_FRAMES.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU map value.
    let f = unsafe { &mut *f };
    // Constant indices (an unrolled search for the top frame): LLVM folds `depth - 1` into the
    // address in a way whose bound the verifier cannot follow.
    let top = f.depth as usize;
    for i in 0..HOOK_DEPTH {
        if i + 1 == top {
            let fr = &mut f.frames[i];
            if fr.skb == skb {
                fr.tables = fr.tables.saturating_add(1);
            }
            return;
        }
    }
}

/// nf_hook_slow exit with its return value (`skb` as in [`pop_hook`]): accept → a record at
/// PRIO_HOOK_EXIT if still tracked and a table position saw it during this call; otherwise
/// a [`HookVerdictRecord`] if it was tracked at the entry. Without a table record the exit
/// says nothing: the hook has no tables (the collector plans no exit there), or a hook
/// function stopped the traversal before them with NF_STOP (br_netfilter's ip_sabotage_in
/// on a bridged packet's second PREROUTING), and "entry, then exit" would claim that every
/// table in between accepted the packet.
#[inline(always)]
pub fn hook_exit(skb: u64, verdict: i32) {
    let Some(fr) = pop_hook(skb) else {
        return;
    };
    if fr.allowed == 0 {
        return;
    }
    if verdict == NF_ACCEPT as i32 {
        // fr.tables > 0: table records were written, so the entry belongs to this namespace.
        if fr.tables == 0 {
            return;
        }
        if let Some(t) = TRACKED.get_ptr_mut(&fr.skb) {
            // SAFETY: map value pointer, valid for this program run.
            follow(fr.state, fr.skb, PRIO_HOOK_EXIT, unsafe { &mut *t });
        }
    } else if fr.gen != 0 {
        emit_hook_verdict(&fr, verdict);
    }
}

#[inline(never)]
fn emit_hook_verdict(fr: &HookFrame, verdict: i32) {
    let rec = HookVerdictRecord {
        header: RecordHeader {
            kind: kind::HOOK_VERDICT,
            version: RECORD_VERSION,
            _pad0: 0,
            len: core::mem::size_of::<HookVerdictRecord>() as u32,
        },
        ts_ns: unsafe { bpf_ktime_get_ns() },
        skb: fr.skb,
        gen: fr.gen,
        netns: fr.netns,
        verdict,
        hook: fr.hook,
        pf: fr.pf,
        _pad0: 0,
        _pad1: 0,
    };
    let sent = EVENTS.output::<HookVerdictRecord>(&rec, 0).is_ok();
    count_sent(sent);
}

#[inline(always)]
fn count_sent(sent: bool) {
    if let Some(c) = COUNTERS.get_ptr_mut(0) {
        // SAFETY: per-CPU map value.
        let c = unsafe { &mut *c };
        if sent {
            c.emitted += 1;
        } else {
            c.lost += 1;
        }
    }
}

/// (table, skb, state) of ipt_do_table / ip6t_do_table from its first three arguments: the
/// order changed in Linux 5.16, the collector tells which from BTF.
#[inline(always)]
pub fn ipt_args(a0: u64, a1: u64, a2: u64) -> (u64, u64, u64) {
    if toff!(ipt_priv_first) != 0 {
        (a0, a1, a2)
    } else {
        (a2, a0, a1)
    }
}

/// Hook priority of a legacy table, by name; NO_PRIO for nat (see module doc) and unknown.
#[inline(always)]
fn xt_table_prio(table: u64) -> i32 {
    if toff!(have_xt) == 0 || nat_depth().is_some_and(|d| *d > 0) {
        return NO_PRIO;
    }
    let mut name = [0u8; 9];
    if !read_buf(table + toff!(xt_table_name) as u64, &mut name) {
        return NO_PRIO;
    }
    if name.starts_with(b"raw\0") {
        PRIO_RAW
    } else if name.starts_with(b"mangle\0") {
        PRIO_MANGLE
    } else if name.starts_with(b"filter\0") {
        PRIO_FILTER
    } else if name.starts_with(b"security\0") {
        PRIO_SECURITY
    } else {
        NO_PRIO
    }
}

/// ipt_do_table / ip6t_do_table entry; returns the position (for the return probe).
#[inline(always)]
pub fn ipt_entry(table: u64, skb: u64, state: u64) -> i32 {
    xt_base(table, skb, state);
    let prio = xt_table_prio(table);
    if prio != NO_PRIO {
        at(state, skb, prio);
    }
    prio
}

/// ipt_do_table exit, fexit flavour (arguments still at hand).
#[inline(always)]
pub fn ipt_exit(table: u64, skb: u64, state: u64, verdict: u32) {
    table_exit(skb, state, xt_table_prio(table), verdict);
}

/// After a table: a record at P + 1 when the packet was accepted.
#[inline(always)]
pub fn table_exit(skb: u64, state: u64, prio: i32, verdict: u32) {
    if prio != NO_PRIO && verdict & 0xff == NF_ACCEPT {
        at(state, skb, prio + 1);
    }
}

/// (skb, state, base chain priority) of nft_do_chain(pkt, chain); priority NO_PRIO inside
/// nf_nat_inet_fn or without nf_tables offsets.
#[inline(always)]
pub fn nft_args(pkt: u64, chain: u64) -> (u64, u64, i32) {
    let skb: u64 = read(pkt, toff!(pktinfo_skb));
    let state: u64 = read(pkt, toff!(pktinfo_state));
    if toff!(have_nft) == 0 || chain == 0 || nat_depth().is_some_and(|d| *d > 0) {
        return (skb, state, NO_PRIO);
    }
    let base = chain - toff!(base_chain_chain) as u64;
    let prio: i32 = read(base, toff!(base_chain_priority));
    // The nat stage's own brackets, and priorities reserved for the hook entry record.
    let prio = if prio <= PRIO_HOOK_ENTRY || prio == i32::MAX {
        NO_PRIO
    } else {
        prio
    };
    (skb, state, prio)
}

/// nft_do_chain entry; returns the position (for the return probe).
#[inline(always)]
pub fn nft_entry(skb: u64, state: u64, prio: i32) -> i32 {
    if prio != NO_PRIO {
        at(state, skb, prio);
    }
    prio
}

/// nf_nat_inet_fn(priv, skb, state) entry: the nat stage begins; returns its position.
#[inline(always)]
pub fn nat_entry(skb: u64, state: u64) -> i32 {
    if let Some(d) = nat_depth() {
        *d += 1;
    }
    let hook: u8 = read(state, global!(OFFSETS.state_hook));
    let prio = if hook == NF_INET_PRE_ROUTING || hook == NF_INET_LOCAL_OUT {
        PRIO_NAT_DST
    } else {
        PRIO_NAT_SRC
    };
    at(state, skb, prio);
    prio
}

/// nf_nat_inet_fn exit: after the translation.
#[inline(always)]
pub fn nat_exit(skb: u64, state: u64, verdict: u32) {
    if let Some(d) = nat_depth() {
        *d = d.saturating_sub(1);
    }
    let hook: u8 = read(state, global!(OFFSETS.state_hook));
    let prio = if hook == NF_INET_PRE_ROUTING || hook == NF_INET_LOCAL_OUT {
        PRIO_NAT_DST
    } else {
        PRIO_NAT_SRC
    };
    table_exit(skb, state, prio, verdict);
}

/// Rule positions (fentry and kprobe backends): the rule blob's kernel address as a table
/// starts on a traced skb, so userspace can turn match/target pointers into blob offsets. Its
/// own BPF function: inlined, its record would add to the stack of the path through `follow`
/// (combined stack limit 512 bytes).
#[inline(never)]
fn xt_base(table: u64, skb: u64, state: u64) {
    if toff!(have_xtpos) == 0 {
        return;
    }
    let private: u64 = read(table, toff!(xt_table_private));
    if private == 0 {
        return;
    }
    let mut name = [0u8; 16];
    read_buf(table + toff!(xt_table_name) as u64, &mut name);
    let hook: u8 = read(state, global!(OFFSETS.state_hook));
    let pf: u8 = read(state, global!(OFFSETS.state_pf));
    emit_xt(
        skb,
        xt_what::BASE,
        private + toff!(xt_info_entries) as u64,
        0,
        hook,
        pf,
        name,
    );
}

/// A match (`matched` = its return value) or target call with `par` = struct xt_action_param.
#[inline(never)]
pub fn xt_call(skb: u64, what: u8, info: u64, matched: u8) {
    if toff!(have_xtpos) != 0 {
        emit_xt(skb, what, info, matched, 0, 0, [0; 16]);
    }
}

/// par->matchinfo / par->targinfo (one union).
#[inline(always)]
pub fn xt_info(par: u64) -> u64 {
    read(par, toff!(par_matchinfo))
}

#[inline(always)]
fn emit_xt(skb: u64, what: u8, addr: u64, result: u8, hook: u8, pf: u8, name: [u8; 16]) {
    let Some(t) = TRACKED.get_ptr(&skb) else {
        return;
    };
    // SAFETY: map value pointer, read once.
    let t = unsafe { *t };
    if t.state != STATE_TRACKED {
        return;
    }
    let rec = XtRecord {
        header: trace_common::record::RecordHeader {
            kind: kind::XT,
            version: RECORD_VERSION,
            _pad0: 0,
            len: 64,
        },
        ts_ns: unsafe { bpf_ktime_get_ns() },
        skb,
        gen: t.gen,
        addr,
        netns: t.netns,
        what,
        result,
        hook,
        pf,
        name,
    };
    let sent = EVENTS.output::<XtRecord>(&rec, 0).is_ok();
    count_sent(sent);
}

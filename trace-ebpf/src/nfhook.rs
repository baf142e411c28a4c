//! The netfilter-link probe and the kfree_skb drop reporter.
//!
//! One program, loaded once per probe priority by the collector (which rewrites the
//! [`PRIORITY_MAGIC`] immediate: netfilter links carry no cookie), linked on every hook that
//! has a table around that priority, in every traced netns. Flags in the immediate: first
//! sight, and "last probe of a final hook" (INPUT/POSTROUTING, a copy of its own).
//!
//! Per packet: the first probe it meets on PREROUTING or OUTPUT ("first sight") evaluates the
//! filter on a minimal view of the packet and puts the skb (`gen` = first-seen time) in this
//! CPU's current-traversal slot (CUR), tracked or not. Later probes find it there: a
//! traversal nearly always runs on one CPU without interruption. When another packet's probe
//! runs while the slot holds an unfinished traversal, that traversal moves into the TRACKED
//! LRU, which later probes (on any CPU) consult while anything was tracked recently (ACTIVE).
//!
//! Records (netfilter probes): only for tracked skbs, and only when the packet's first bytes,
//! mark, conntrack fields or socket owner changed, on a hook's first probe (devices, MAC),
//! and on the last probe of a final hook. The socket owner is read at every probe: a
//! server's accept() can attach the socket's file between two tables (LOG/TRACE print the
//! owner each table sees); without a socket (forwarded packets) that is one load. Each names the last probe passed before it
//! (`prev_*`), so the collector fills in the probes passed without one; the header snapshot
//! is sent only when the bytes changed. The kprobe/fentry backends (`first_sight` /
//! `follow`, probe reads instead of direct loads, TRACKED only) still send a record at every
//! probe.
//!
//! With `--sample 1/N` the flow decision waits for conntrack (the ORIGINAL tuple makes both
//! directions and NAT'ed packets agree) and is cached per flow (FLOWS) for the next packets;
//! records produced before it are held per CPU and flushed when the flow is kept.
//! Netfilter programs read kernel structs with direct BTF-checked loads (`kread::<_, true>`),
//! and the packet's bytes and the conntrack entry's status/mark with direct loads through
//! `mem::kcast` (bpf_rdonly_cast): no bpf_probe_read_kernel call on their common paths.

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::bpf_ktime_get_ns,
    macros::btf_tracepoint,
    programs::BtfTracePointContext,
};
use trace_common::{
    filter::{
        input_flags, pred_matches, words, FilterInput, FilterProgram, FILTER_MAX_CLAUSES,
        FILTER_MAX_PREDS,
    },
    flowhash,
    record::{
        drop_flags, filter_fields, kind, probe_flags, tracked_flags, Counters, CurSlot, DropRecord,
        HeaderSnapshot, ProbeRecord, Tracked, PREV_NONE, PRIORITY_MAGIC, RECORD_VERSION,
    },
};

use crate::{
    headers,
    kread::{kread, read, read_buf},
    maps::{
        global, Pending, ACTIVE, COUNTERS, CUR, DROP_SCRATCH, EVENTS, FILTER, FILTER_INPUT, FLOWS,
        FLOW_CACHE, FLOW_CACHE_SLOTS, FLOW_KEEP, FLOW_SKIP, HASH_BUF, PENDING, PENDING_RECORDS,
        RATE, SCRATCH, SLOT_DONE, SLOT_TRACKED, TRACKED, TUPLE_BUF,
    },
    mem, pktbuf,
};

const NF_ACCEPT: i32 = 1;
/// High half of the patched immediate: this copy is a first-sight probe.
const SLOT_FIRST_SIGHT: u64 = 1 << 32;
/// ... this copy is linked only where it is the last probe of a final hook (INPUT,
/// POSTROUTING): the traversal ends here, a record is always sent.
const SLOT_LAST: u64 = 2 << 32;
/// Probes at or above this priority run after conntrack (NF_IP_PRI_CONNTRACK + 1).
const PRIO_AFTER_CONNTRACK: i32 = -199;
const NF_INET_PRE_ROUTING: u8 = 0;
const NF_INET_LOCAL_OUT: u8 = 3;
/// Tracked::state values.
const STATE_PENDING: u8 = 1;
const STATE_TRACKED: u8 = 2;
/// TCP_TIME_WAIT / TCP_NEW_SYN_RECV: not full sockets (no sk_socket).
const TCP_TIME_WAIT: u8 = 6;
const TCP_NEW_SYN_RECV: u8 = 12;
/// Offset of the header snapshot: a record without headers stops there.
const SHORT_LEN: usize = core::mem::offset_of!(ProbeRecord, headers);
/// ... and a record without devices, MAC and headers at `in_dev`.
const TINY_LEN: usize = core::mem::offset_of!(ProbeRecord, in_dev);
/// ... and a record without bridge ports at `physin_ifindex`.
const FULL_LEN: usize = core::mem::offset_of!(ProbeRecord, physin_ifindex);
/// A record with bridge ports: the whole struct.
const BRIDGE_LEN: usize = core::mem::size_of::<ProbeRecord>();

/// The per-copy immediate: low 32 bits = priority, high bits = flags (see module doc).
#[inline(always)]
fn probe_slot() -> u64 {
    let v: u64;
    // SAFETY: loads an immediate into a register; no memory access.
    unsafe {
        core::arch::asm!("{0} = {magic} ll", out(reg) v, magic = const PRIORITY_MAGIC,
            options(pure, nomem, nostack));
    }
    v
}

/// BPF_PROG_TYPE_NETFILTER entry point. ctx = struct bpf_nf_ctx { state, skb }.
#[no_mangle]
#[link_section = "netfilter"]
pub extern "C" fn nf_probe(ctx: *const u64) -> i32 {
    let slot = probe_slot();
    // SAFETY: bpf_nf_ctx is two pointers; the verifier checks the ctx accesses.
    let (state, skb) = unsafe { (*ctx, *ctx.add(1)) };
    let prio = slot as u32 as i32;
    let Some(cur) = CUR.get_ptr_mut(0) else {
        return NF_ACCEPT;
    };
    // SAFETY: per-CPU map value; programs on one CPU do not run concurrently on it.
    let cur = unsafe { &mut *cur };
    if slot & SLOT_FIRST_SIGHT != 0 {
        let hook: u8 = kread::<_, true>(state, global!(OFFSETS.state_hook));
        if hook == NF_INET_PRE_ROUTING || hook == NF_INET_LOCAL_OUT {
            nf_first_sight(state, skb, prio, cur);
            // The only probe of the traversal (nothing traced after this hook).
            if slot & SLOT_LAST != 0 && cur.skb == skb {
                cur.what |= SLOT_DONE;
            }
            return NF_ACCEPT;
        }
    }
    let last = slot & SLOT_LAST != 0;
    if global!(CONFIG.sample_n) > 1 {
        if let Some(p) = PENDING.get_ptr_mut(0) {
            // SAFETY: per-CPU map value.
            let p = unsafe { &mut *p };
            if p.skb == skb {
                pending_probe(state, skb, prio, p, cur);
                return NF_ACCEPT;
            }
        }
    }
    if cur.skb == skb {
        // The common case: the packet this CPU's last first sight saw, traversal going on.
        if cur.what & SLOT_TRACKED != 0 {
            nf_follow(state, skb, prio, &mut cur.t, last);
        }
        if last {
            cur.what |= SLOT_DONE;
        }
        return NF_ACCEPT;
    }
    // Another packet's traversal was interrupted (or this one resumed elsewhere).
    spill(cur);
    if !recently_active() {
        return NF_ACCEPT;
    }
    if let Some(t) = TRACKED.get_ptr_mut(skb) {
        // SAFETY: map value pointer, valid for this program run.
        nf_follow(state, skb, prio, unsafe { &mut *t }, last);
    }
    NF_ACCEPT
}

/// Another packet takes this CPU's slot (or runs a probe while it holds an unfinished
/// traversal): an unfinished tracked traversal moves into TRACKED, where its later probes
/// (on any CPU) find it; for an unfinished untracked one, a TRACKED entry left under the same
/// skb address by an earlier traversal is removed, so its later probes do not follow that.
#[inline(always)]
fn spill(cur: &mut CurSlot) {
    if cur.skb == 0 || cur.what & SLOT_DONE != 0 {
        return;
    }
    if cur.what & SLOT_TRACKED != 0 {
        let _ = TRACKED.insert(cur.skb, &cur.t, 0);
    } else if recently_active() {
        let _ = TRACKED.remove(cur.skb);
    }
    cur.skb = 0;
}

// Separate BPF functions, so each path's stack is counted on its own (512 bytes per call
// chain) rather than all of them summed in nf_probe's frame.
#[inline(never)]
fn nf_first_sight(state: u64, skb: u64, prio: i32, cur: &mut CurSlot) {
    if cur.skb != skb {
        spill(cur);
    }
    // Untracked until the filter and sampling say otherwise (a recycled address: the earlier
    // traversal of this skb address is over).
    cur.skb = skb;
    cur.what = 0;
    first_sight_with::<true>(state, skb, prio, Some(cur))
}

#[inline(never)]
fn nf_follow(state: u64, skb: u64, prio: i32, t: &mut Tracked, last: bool) {
    follow_with::<true>(state, skb, prio, t, last)
}

/// Nothing tracked for this long: later probes stop looking skbs up.
const ACTIVE_WINDOW_NS: u64 = 1_000_000_000;
/// ACTIVE is refreshed at most this often (one shared cache line).
const ACTIVE_REFRESH_NS: u64 = 50_000_000;

/// Was anything tracked within the window? One array read while the capture is idle
/// (nothing ever matched), plus a clock read once something did.
#[inline(always)]
fn recently_active() -> bool {
    let Some(a) = ACTIVE.get(0) else { return true };
    let last = *a;
    if last == 0 {
        return false;
    }
    let now = unsafe { bpf_ktime_get_ns() };
    now.wrapping_sub(last) < ACTIVE_WINDOW_NS
}

#[inline(always)]
fn mark_active(now: u64) {
    if let Some(a) = ACTIVE.get_ptr_mut(0) {
        // SAFETY: array map value; a racy store of a timestamp is fine.
        unsafe {
            if now.wrapping_sub(*a) > ACTIVE_REFRESH_NS {
                *a = now;
            }
        }
    }
}

#[inline(always)]
fn counters() -> Option<&'static mut Counters> {
    // SAFETY: per-CPU map value; programs on one CPU do not run concurrently on it.
    COUNTERS.get_ptr_mut(0).map(|p| unsafe { &mut *p })
}

/// First probe of a traversal: filter, then start tracking (pending the sampling decision).
#[inline(always)]
pub(crate) fn first_sight(state: u64, skb: u64, prio: i32) {
    first_sight_with::<false>(state, skb, prio, None)
}

/// [`first_sight`]; `D`: state/skb are BTF pointers the verifier tracks (netfilter programs),
/// so their fields are plain loads instead of bpf_probe_read_kernel calls, and the traversal
/// lives in this CPU's slot `cur` (set untracked by the caller) instead of TRACKED.
#[inline(always)]
fn first_sight_with<const D: bool>(state: u64, skb: u64, prio: i32, cur: Option<&mut CurSlot>) {
    let Some(c) = counters() else { return };
    c.seen += 1;
    let Some(rec) = SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU scratch value.
    let rec = unsafe { &mut *rec };
    let sampling = global!(CONFIG.sample_n) > 1;
    // A filter that matches everything needs no look at the packet (sampling needs its
    // 5-tuple below).
    let match_all = global!(FILTER_FIELDS) & filter_fields::MATCH_ALL != 0;
    let input = match FILTER_INPUT.get_ptr_mut(0) {
        // SAFETY: per-CPU map value (the 80-byte view stays off the 512-byte stack).
        Some(f) if !(D && match_all && !sampling) => {
            let f = unsafe { &mut *f };
            filter_input::<D>(f, &mut rec.headers, state, skb);
            Some(f)
        }
        _ => None,
    };
    if !(D && match_all) && !input.as_deref().is_some_and(selected) {
        // A recycled skb address may still be in the map from an earlier traversal (only
        // consulted while something is being tracked; netfilter probes: the slot shadows it).
        if !D && recently_active() {
            let _ = TRACKED.remove(skb);
        }
        c.filtered_out += 1;
        return;
    }
    // Later packets of a flow already decided: skip or track at once, no waiting.
    let known = match input {
        Some(f) if sampling => known_flow::<D>(f),
        _ => None,
    };
    if known == Some(false) {
        if !D && recently_active() {
            let _ = TRACKED.remove(skb);
        }
        c.sampled_out += 1;
        return;
    }
    let now = unsafe { bpf_ktime_get_ns() };
    let mut t = new_tracked(now);
    rec.ts_ns = now;
    rec.priority = prio;
    let hash = fill_record::<D>(rec, state, skb, &mut t, false);
    t.netns = rec.netns;
    if sampling && known.is_none() {
        t.state = STATE_PENDING;
    }
    rec.gen = now;
    rec.flags |= probe_flags::FIRST;
    if t.state == STATE_TRACKED {
        if !rate_ok() {
            if !D {
                let _ = TRACKED.remove(skb);
            }
            c.rate_limited += 1;
            return;
        }
        c.tracked += 1;
        mark_active(now);
        emit(rec, &mut t, c, hash);
    } else if rec.flags & probe_flags::CT != 0 || prio >= PRIO_AFTER_CONNTRACK {
        if !decide::<D>(rec, &mut t, c) {
            if !D {
                let _ = TRACKED.remove(skb);
            }
            return;
        }
        mark_active(now);
        emit(rec, &mut t, c, hash);
    } else if D {
        // Netfilter probes keep an undecided packet in the per-CPU PENDING slot only (see
        // `pending_probe`): no map insert and no wake-up of the later probes' lookups for
        // the flows sampling will skip.
        start_pending(rec, &mut t, c);
        return;
    } else {
        mark_active(now);
        start_pending(rec, &mut t, c);
    }
    match cur {
        // Netfilter probes: the traversal stays in this CPU's slot (see `spill`).
        Some(cur) if D => {
            cur.t = t;
            cur.what = SLOT_TRACKED;
        }
        _ => {
            let _ = TRACKED.insert(skb, t, 0);
        }
    }
}

/// A new traversal's state: first seen `now`, tracked, nothing sent yet. The zero is opaque
/// to LLVM (`black_box`): as a literal, the 20 contiguous zero bytes compiled to a call of
/// the byte-loop memset (see `mem`).
#[inline(always)]
fn new_tracked(now: u64) -> Tracked {
    let z = core::hint::black_box(0u64);
    Tracked {
        gen: now,
        last_hash: z,
        netns: z as u32,
        last_meta: z as u32,
        prev_priority: z as i32,
        state: STATE_TRACKED,
        last_hook: NO_HOOK,
        prev_hook: PREV_NONE,
        flags: 0,
    }
}

/// A later netfilter probe on the packet held in this CPU's PENDING slot: hold its record,
/// or decide once conntrack ran (kept: send the held records, start tracking).
#[inline(never)]
fn pending_probe(state: u64, skb: u64, prio: i32, p: &mut Pending, cur: &mut CurSlot) {
    let Some(c) = counters() else { return };
    let Some(rec) = SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU scratch value.
    let rec = unsafe { &mut *rec };
    let now = unsafe { bpf_ktime_get_ns() };
    rec.ts_ns = now;
    rec.priority = prio;
    let hash = fill_record::<true>(rec, state, skb, &mut p.tracked, false);
    rec.gen = p.gen;
    // hash 0: nothing changed since the last record (held or sent), none to hold or send.
    if rec.flags & probe_flags::CT == 0 && prio < PRIO_AFTER_CONNTRACK {
        if hash != 0 {
            hold(p, rec);
        }
        return;
    }
    if !decide::<true>(rec, &mut p.tracked, c) {
        p.skb = 0;
        return;
    }
    mark_active(now);
    // Kept: the held records first (they carry their own headers and devices), then this one.
    for i in 0..PENDING_RECORDS {
        if i as u32 >= p.count {
            break;
        }
        let h = p.tracked.last_hash;
        emit(&mut p.records[i], &mut p.tracked, c, h);
    }
    if p.count as usize > PENDING_RECORDS {
        c.lost += (p.count as usize - PENDING_RECORDS) as u64;
    }
    if hash != 0 {
        emit(rec, &mut p.tracked, c, hash);
    }
    if cur.skb == skb {
        cur.t = p.tracked;
        cur.what = SLOT_TRACKED;
    } else {
        let _ = TRACKED.insert(skb, &p.tracked, 0);
    }
    p.skb = 0;
}

/// A tracked (or pending) skb at a later probe.
#[inline(always)]
pub(crate) fn follow(state: u64, skb: u64, prio: i32, t: &mut Tracked) {
    follow_with::<false>(state, skb, prio, t, false)
}

/// [`follow`] with direct loads when `D` (see [`first_sight_with`]); netfilter probes send a
/// record only when [`fill_record`] says something changed. `last`: the last probe of a final
/// hook.
#[inline(always)]
fn follow_with<const D: bool>(state: u64, skb: u64, prio: i32, t: &mut Tracked, last: bool) {
    let Some(c) = counters() else { return };
    let Some(rec) = SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU scratch value.
    let rec = unsafe { &mut *rec };
    rec.priority = prio;
    let hash = fill_record::<D>(rec, state, skb, t, last);
    if D && hash == 0 {
        return;
    }
    let now = unsafe { bpf_ktime_get_ns() };
    rec.ts_ns = now;
    rec.gen = t.gen;
    if t.state == STATE_TRACKED {
        mark_active(now);
        emit(rec, t, c, hash);
        return;
    }
    if rec.flags & probe_flags::CT != 0 || prio >= PRIO_AFTER_CONNTRACK {
        if !decide::<D>(rec, t, c) {
            let _ = TRACKED.remove(skb);
            return;
        }
        flush_pending(skb, t, c);
        emit(rec, t, c, hash);
    } else {
        add_pending(rec, t);
    }
}

/// Filter verdict for the packet whose view is `input`.
#[inline(never)]
fn selected(input: &FilterInput) -> bool {
    let Some(prog) = FILTER.get(0) else {
        return false;
    };
    program_matches(prog, input)
}

/// `trace_common::filter::matches` with each predicate evaluated in its own BPF function
/// (`pred_matches`, not inlined)
/// (fully inlined, the 16 × 8 unrolled predicates exceed the 512-byte stack), and loops
/// bounded by the loaded filter's shape (load-time constants), so the verifier walks only the
/// predicates that exist instead of all 128.
#[inline(always)]
fn program_matches(prog: &FilterProgram, input: &FilterInput) -> bool {
    let n = core::cmp::min(prog.n_clauses, global!(CONFIG.filter_clauses)) as usize;
    let max_preds = global!(CONFIG.filter_preds) as usize;
    for ci in 0..FILTER_MAX_CLAUSES {
        if ci >= n {
            break;
        }
        let clause = &prog.clauses[ci];
        let np = core::cmp::min(clause.n_preds as usize, max_preds);
        let mut all = true;
        for pi in 0..FILTER_MAX_PREDS {
            if pi >= np {
                break;
            }
            if !pred_matches(&clause.preds[pi], input) {
                all = false;
                break;
            }
        }
        if all {
            return true;
        }
    }
    false
}

/// Sampling decision (flow hash of the ct ORIGINAL tuple, else of the packet) and rate limit.
/// Updates the counters; true when the packet is to be traced.
#[inline(always)]
fn decide<const D: bool>(rec: &ProbeRecord, t: &mut Tracked, c: &mut Counters) -> bool {
    let n = global!(CONFIG.sample_n);
    if !flow_kept::<D>(rec, n) {
        c.sampled_out += 1;
        return false;
    }
    if !rate_ok() {
        c.rate_limited += 1;
        return false;
    }
    c.tracked += 1;
    t.state = STATE_TRACKED;
    true
}

/// Keep this flow? With a conntrack entry: hash of its ORIGINAL tuple (both directions and
/// NAT'ed packets agree), and the decision is remembered in FLOWS under the hashes of both
/// tuples, i.e. of the packets of either direction as they arrive. Without: the packet's own
/// 5-tuple.
#[inline(never)]
fn flow_kept<const D: bool>(rec: &ProbeRecord, n: u32) -> bool {
    if rec.ct_id == 0 {
        let h = &rec.headers;
        // SAFETY: saddr/daddr are at 8-aligned offsets of the 8-aligned HeaderSnapshot.
        let (s, d) = unsafe { (words(&h.saddr), words(&h.daddr)) };
        let hash = flowhash::flow_hash_words(rec.pf, h.proto, s, h.sport, d, h.dport);
        return flowhash::sample_keep(hash, n);
    }
    let orig = tuple_hash::<D>(rec.ct_id + global!(OFFSETS.ct_tuple) as u64, rec.pf);
    let keep = flowhash::sample_keep(orig, n);
    let d = if keep { FLOW_KEEP } else { FLOW_SKIP };
    let reply = tuple_hash::<D>(rec.ct_id + global!(OFFSETS.ct_reply_tuple) as u64, rec.pf);
    let _ = FLOWS.insert(orig, d, 0);
    let _ = FLOWS.insert(reply, d, 0);
    keep
}

/// flow_hash of a struct nf_conntrack_tuple at `tuple` (its own BPF function: two inlined
/// copies made flow_kept's frame the largest of the program).
#[inline(never)]
fn tuple_hash<const D: bool>(tuple: u64, pf: u8) -> u32 {
    // Addresses go to a per-CPU buffer: on the stack, this function was the deepest frame.
    let Some(buf) = TUPLE_BUF.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: per-CPU map value.
    let [src, dst] = unsafe { &mut *buf };
    let (s_off, d_off) = (global!(OFFSETS.tuple_src_u3), global!(OFFSETS.tuple_dst_u3));
    let (sp_off, dp_off, pr_off) = (
        global!(OFFSETS.tuple_src_port),
        global!(OFFSETS.tuple_dst_port),
        global!(OFFSETS.tuple_dst_protonum),
    );
    let (sport, dport, proto): (u16, u16, u8);
    // Netfilter probes: direct loads (mem::kcast; 4-byte loads, the addresses are 4-aligned
    // in the tuple) instead of five bpf_probe_read_kernel calls.
    let reach = |o: u32, n: u32| o + n <= mem::KCAST_BYTES as u32;
    if D && s_off % 4 == 0
        && d_off % 4 == 0
        && reach(s_off, 16)
        && reach(d_off, 16)
        && reach(sp_off, 2)
        && reach(dp_off, 2)
        && reach(pr_off, 1)
    {
        let p = mem::kcast(tuple);
        let w = |o: u32| mem::load::<u32>(p, o) as u64;
        *src = [
            w(s_off) | w(s_off + 4) << 32,
            w(s_off + 8) | w(s_off + 12) << 32,
        ];
        *dst = [
            w(d_off) | w(d_off + 4) << 32,
            w(d_off + 8) | w(d_off + 12) << 32,
        ];
        sport = u16::from_be(mem::load::<u16>(p, sp_off));
        dport = u16::from_be(mem::load::<u16>(p, dp_off));
        proto = mem::load::<u8>(p, pr_off);
    } else {
        // SAFETY: a [u64; 2] viewed as its 16 bytes.
        let bytes = |w: &mut [u64; 2]| unsafe { &mut *(w as *mut [u64; 2] as *mut [u8; 16]) };
        read_buf(tuple + s_off as u64, bytes(src));
        read_buf(tuple + d_off as u64, bytes(dst));
        sport = u16::from_be(read(tuple, sp_off));
        dport = u16::from_be(read(tuple, dp_off));
        proto = read(tuple, pr_off);
    }
    if pf == headers::NFPROTO_IPV4 {
        // The tuple's address union is 16 bytes; IPv4 uses the first 4 (the low half of the
        // first little-endian word), the rest may be stale.
        src[0] &= 0xffff_ffff;
        src[1] = 0;
        dst[0] &= 0xffff_ffff;
        dst[1] = 0;
    }
    flowhash::flow_hash_words(pf, proto, *src, sport, *dst, dport)
}

/// A decision already made for this packet's flow (FLOWS), from its 5-tuple at first sight
/// (the filter's view). Netfilter probes (`D`) look in this CPU's [`FLOW_CACHE`] first and
/// fill it from FLOWS.
#[inline(always)]
fn known_flow<const D: bool>(f: &FilterInput) -> Option<bool> {
    // SAFETY: saddr/daddr are at 8-aligned offsets of the 8-aligned FilterInput.
    let (s, d) = unsafe { (words(&f.saddr), words(&f.daddr)) };
    let key = flowhash::flow_hash_words(f.family, f.proto, s, f.sport, d, f.dport);
    if !D {
        // SAFETY: map value read.
        return FLOWS.get_ptr(key).map(|d| unsafe { *d } == FLOW_KEEP);
    }
    let cache = FLOW_CACHE.get_ptr_mut(0);
    let slot = (key as usize) & (FLOW_CACHE_SLOTS - 1);
    if let Some(c) = cache {
        // SAFETY: per-CPU map value; `slot` is masked into range.
        let e = unsafe { (*c)[slot] };
        if e >> 32 == key as u64 && e as u32 != 0 {
            return Some(e as u32 == FLOW_KEEP);
        }
    }
    // SAFETY: map value read.
    let d = unsafe { *FLOWS.get_ptr(key)? };
    if let Some(c) = cache {
        // SAFETY: as above.
        unsafe { (*c)[slot] = (key as u64) << 32 | d as u64 };
    }
    Some(d == FLOW_KEEP)
}

/// `--rate-limit` token bucket (one global bucket; updates are racy across CPUs, which only
/// makes the limit approximate).
#[inline(always)]
fn rate_ok() -> bool {
    let limit = global!(CONFIG.rate_limit) as u64;
    if limit == 0 {
        return true;
    }
    let Some(r) = RATE.get_ptr_mut(0) else {
        return true;
    };
    // SAFETY: array map value.
    let r = unsafe { &mut *r };
    let now = unsafe { bpf_ktime_get_ns() };
    let cap = limit * 1_000_000_000;
    let elapsed = now.saturating_sub(r.last_ns);
    // Refill `limit` tokens per second, capped at one second's worth (the burst).
    let refill = if elapsed >= 1_000_000_000 {
        cap
    } else {
        elapsed * limit
    };
    r.nano_tokens = core::cmp::min(cap, r.nano_tokens + refill);
    r.last_ns = now;
    if r.nano_tokens < 1_000_000_000 {
        return false;
    }
    r.nano_tokens -= 1_000_000_000;
    true
}

/// Write `rec` to the ring buffer (without the header snapshot unless `fill_record` read
/// one; also without devices and MAC unless it read them). `hash` identifies the headers it
/// carries.
#[inline(never)]
fn emit(rec: &mut ProbeRecord, t: &mut Tracked, c: &mut Counters, hash: u64) {
    let with_headers = rec.flags & probe_flags::HEADERS != 0;
    let with_devs = rec.flags & (probe_flags::DEVS | probe_flags::MAC) != 0;
    // Bridge ports (bridged packets, with the devices) are the struct's tail: sent whole.
    let with_bridge = rec.flags & probe_flags::BRIDGED != 0;
    let len = match (with_bridge, with_headers, with_devs) {
        (true, _, _) => BRIDGE_LEN,
        (false, true, _) => FULL_LEN,
        (false, false, true) => SHORT_LEN,
        (false, false, false) => TINY_LEN,
    };
    rec.header.len = len as u32;
    // SAFETY: ProbeRecord is plain data; we send its first `len` bytes.
    let bytes =
        unsafe { core::slice::from_raw_parts(rec as *const ProbeRecord as *const u8, BRIDGE_LEN) };
    let flags = wakeup_flags();
    // One constant length per call (the helper's size must be known to the verifier).
    let sent = match (with_bridge, with_headers, with_devs) {
        (true, _, _) => EVENTS.output::<[u8]>(bytes, flags),
        (false, true, _) => EVENTS.output::<[u8]>(&bytes[..FULL_LEN], flags),
        (false, false, true) => EVENTS.output::<[u8]>(&bytes[..SHORT_LEN], flags),
        (false, false, false) => EVENTS.output::<[u8]>(&bytes[..TINY_LEN], flags),
    };
    if sent.is_ok() {
        c.emitted += 1;
        if with_headers {
            t.last_hash = hash;
        }
    } else if rec.flags & probe_flags::SPARSE != 0 {
        c.lost += 1;
        // Netfilter probes: decide the next records as if this one was sent (a full ring
        // must not turn every later probe into a record); the next one carries headers and
        // devices and claims nothing about the probes before it (see `sparse_tail`).
        if with_headers {
            t.last_hash = hash;
        }
        t.prev_hook = PREV_NONE;
        t.flags |= tracked_flags::RESEND;
    } else {
        c.lost += 1;
        // The collector missed this record: send headers and devices again next time, and
        // claim nothing about the probes before the next record.
        t.last_hash = 0;
        t.last_hook = NO_HOOK;
        t.prev_hook = PREV_NONE;
    }
}

const WAKEUP_CHECK_EVERY: u64 = 16;

/// Wake the collector only when the ring holds more than WAKEUP_BYTES (0: the kernel's
/// default, a wakeup whenever the collector has caught up).
#[inline(always)]
fn wakeup_flags() -> u64 {
    let threshold = global!(WAKEUP_BYTES);
    if threshold == 0 {
        return 0;
    }
    // Checking the fill level is a helper call: do it every WAKEUP_CHECK_EVERY records of
    // this CPU (the collector also drains on its timer).
    let Some(c) = counters() else { return 0 };
    if c.emitted % WAKEUP_CHECK_EVERY != 0 {
        return BPF_RB_NO_WAKEUP as u64;
    }
    if EVENTS.query(BPF_RB_AVAIL_DATA as u64) > threshold {
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        BPF_RB_NO_WAKEUP as u64
    }
}

/// Hold the first record of a packet awaiting its sampling decision. A packet still held
/// by an interrupted traversal on this CPU loses its slot: its records count as lost.
#[inline(always)]
fn start_pending(rec: &ProbeRecord, t: &mut Tracked, c: &mut Counters) {
    let Some(p) = PENDING.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU map value.
    let p = unsafe { &mut *p };
    if p.skb != 0 {
        c.lost += p.count as u64;
    }
    p.skb = rec.skb;
    p.gen = t.gen;
    p.count = 0;
    p.tracked = *t;
    hold(p, rec);
}

#[inline(always)]
fn add_pending(rec: &ProbeRecord, t: &mut Tracked) {
    let Some(p) = PENDING.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU map value.
    let p = unsafe { &mut *p };
    if p.skb == rec.skb && p.gen == t.gen {
        hold(p, rec);
    }
}

#[inline(always)]
fn hold(p: &mut Pending, rec: &ProbeRecord) {
    let i = p.count as usize;
    if i < PENDING_RECORDS {
        // SAFETY: both are valid ProbeRecords in map memory; copy without a stack temporary.
        unsafe { core::ptr::copy_nonoverlapping(rec, &mut p.records[i], 1) };
    }
    p.count += 1;
}

/// Send the held records of a packet that sampling kept. Records that did not fit, or that
/// an interrupting packet overwrote, are counted as lost.
#[inline(always)]
fn flush_pending(skb: u64, t: &mut Tracked, c: &mut Counters) {
    let Some(p) = PENDING.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU map value.
    flush_slot(unsafe { &mut *p }, skb, t, c);
}

#[inline(always)]
fn flush_slot(p: &mut Pending, skb: u64, t: &mut Tracked, c: &mut Counters) {
    if p.skb != skb || p.gen != t.gen {
        c.lost += 1;
        return;
    }
    for i in 0..PENDING_RECORDS {
        if i as u32 >= p.count {
            break;
        }
        // Held records were filled with headers and devices: send them as they are.
        emit(&mut p.records[i], t, c, t.last_hash);
    }
    if p.count as usize > PENDING_RECORDS {
        c.lost += (p.count as usize - PENDING_RECORDS) as u64;
    }
    p.skb = 0;
}

/// `Tracked::last_hook` before any record.
const NO_HOOK: u8 = 0xff;

/// Fill everything but `gen` and `ts_ns` (`priority` is set by the caller). The header
/// snapshot is read only when the packet's first bytes changed since the record last sent
/// (returns their hash); devices, MAC and socket owner only on the first record of each hook.
///
/// Netfilter probes (`D`) aggregate: when neither the headers nor mark / conntrack changed
/// since the last record, the hook is the same pass and this is not the `last` probe of a
/// final hook, only `t`'s last-probe-passed is updated and 0 is returned (no record). A
/// record carries the last probe passed before it (`prev_*`), so the collector knows the
/// packet went through the probes in between, unchanged.
#[inline(never)]
fn fill_record<const D: bool>(
    rec: &mut ProbeRecord,
    state: u64,
    skb: u64,
    t: &mut Tracked,
    last: bool,
) -> u64 {
    rec.header.kind = kind::PROBE;
    rec.header.version = RECORD_VERSION;
    rec.skb = skb;
    rec.flags = 0;
    rec.mac_len = 0;
    rec.hook = kread::<_, D>(state, global!(OFFSETS.state_hook));
    rec.pf = kread::<_, D>(state, global!(OFFSETS.state_pf));
    rec.netns = if t.netns != 0 {
        t.netns
    } else {
        let net: u64 = kread::<_, D>(state, global!(OFFSETS.state_net));
        kread::<_, D>(net, global!(OFFSETS.net_inum))
    };
    rec.mark = kread::<_, D>(skb, global!(OFFSETS.skb_mark));
    conntrack::<D>(rec, skb);
    let head: u64 = kread::<_, D>(skb, global!(OFFSETS.skb_head));
    let nh: u16 = kread::<_, D>(skb, global!(OFFSETS.skb_network_header));
    if D {
        return sparse_tail(rec, state, skb, t, last, head, head + nh as u64);
    }
    // The other backends (kprobe/fentry): a record at every probe. Kept as it was: their
    // call chain through here is near the 512-byte stack limit on 6.1.
    rec.prev_hook = PREV_NONE;
    rec.prev_priority = 0;
    let hash = quick_hash(head + nh as u64);
    if head != 0
        && (hash != t.last_hash || t.last_hash == 0)
        && headers::snapshot(rec.pf, head + nh as u64, &mut rec.headers, true)
    {
        rec.flags |= probe_flags::HEADERS;
    }
    if rec.hook != t.last_hook {
        devices::<D>(rec, state, skb, head, t, None);
    }
    hash
}

/// [`fill_record`] of the netfilter probes from the packet's first bytes on (`nh`: network
/// header address): decides whether a record is due, 0 if not.
#[inline(always)]
fn sparse_tail(
    rec: &mut ProbeRecord,
    state: u64,
    skb: u64,
    t: &mut Tracked,
    last: bool,
    head: u64,
    nh: u64,
) -> u64 {
    // A new pass: another hook, or the same hook again from its start.
    let new_pass =
        rec.hook != t.last_hook || (rec.hook == t.prev_hook && rec.priority <= t.prev_priority);
    // A record of this traversal was lost: this one says everything again, and nothing about
    // the probes before it (the collector's last state is older than theirs).
    let resend = t.flags & tracked_flags::RESEND != 0;
    // Devices and MAC are due: the MAC header right before the network header (received
    // Ethernet frames) comes with the packet read.
    let with_mac = (new_pass || resend) && mac_before(state, skb, nh - head);
    // One read for the hash and (common layouts) the snapshot.
    let pkt = if head != 0 {
        pktbuf::read(nh, with_mac)
    } else {
        None
    };
    let hash = match &pkt {
        Some(p) => p.hash(),
        None => quick_hash(nh),
    };
    creds::<true>(rec, skb);
    let meta = meta_hash(rec);
    if !(new_pass || last || hash != t.last_hash || meta != t.last_meta) {
        t.prev_hook = rec.hook;
        t.prev_priority = rec.priority;
        return 0;
    }
    t.flags &= !tracked_flags::RESEND;
    t.last_meta = meta;
    rec.flags |= probe_flags::SPARSE;
    rec.prev_hook = if resend { PREV_NONE } else { t.prev_hook };
    rec.prev_priority = t.prev_priority;
    t.prev_hook = rec.hook;
    t.prev_priority = rec.priority;
    if head != 0
        && (hash != t.last_hash || t.last_hash == 0 || resend)
        && (pkt
            .as_ref()
            .is_some_and(|p| p.snapshot(rec.pf, &mut rec.headers))
            || headers::snapshot(rec.pf, nh, &mut rec.headers, true))
    {
        rec.flags |= probe_flags::HEADERS;
    }
    if new_pass || resend {
        devices::<true>(rec, state, skb, head, t, pkt.and_then(|p| p.mac));
    }
    hash
}

/// Would [`mac`] read a MAC header that ends where the network header starts (`nh_off`, from
/// skb->head)? Then the packet read brings it along.
#[inline(always)]
fn mac_before(state: u64, skb: u64, nh_off: u64) -> bool {
    let indev: u64 = kread::<_, true>(state, global!(OFFSETS.state_in));
    let mh: u16 = kread::<_, true>(skb, global!(OFFSETS.skb_mac_header));
    indev != 0 && mh != 0xffff && mh >= 2 && mh as u64 + pktbuf::MAC_LEN as u64 == nh_off
}

/// Devices and MAC (and for the other backends, `!D`, the socket owner): on a hook's first
/// record. `mac_bytes`: the MAC header, already read (see [`mac`]). The netfilter probes
/// read the owner at every probe ([`sparse_tail`]).
#[inline(always)]
fn devices<const D: bool>(
    rec: &mut ProbeRecord,
    state: u64,
    skb: u64,
    head: u64,
    t: &mut Tracked,
    mac_bytes: Option<&[u8; pktbuf::MAC_LEN]>,
) {
    let indev: u64 = kread::<_, D>(state, global!(OFFSETS.state_in));
    let outdev: u64 = kread::<_, D>(state, global!(OFFSETS.state_out));
    rec.in_ifindex = kread::<_, D>(indev, global!(OFFSETS.dev_ifindex));
    rec.out_ifindex = kread::<_, D>(outdev, global!(OFFSETS.dev_ifindex));
    // SAFETY: 16-byte fields at 8-aligned offsets of the 8-aligned ProbeRecord (asserted below).
    unsafe {
        store_name(&mut rec.in_dev, dev_name_words::<D>(indev));
        store_name(&mut rec.out_dev, dev_name_words::<D>(outdev));
    }
    rec.flags |= probe_flags::DEVS;
    mac::<D>(rec, skb, head, indev, mac_bytes);
    if D {
        bridge_ports(rec, state, skb);
    } else {
        // The kprobe/fentry backends leave the bridge ports out (no BRIDGE_READ flag: the
        // collector treats them as unknown): their call chain through here is near the
        // 512-byte stack limit.
        creds::<D>(rec, skb);
    }
    t.last_hook = rec.hook;
}

/// NETDEV_HASHENTRIES: buckets of a netns's ifindex hash (struct net.dev_index_head).
const DEV_INDEX_BUCKETS: u64 = 256;
/// Devices of one bucket looked at before giving up (ifindexes are allocated in sequence,
/// so a bucket rarely holds more than one).
const DEV_CHAIN_MAX: usize = 4;

/// br_netfilter's bridge ports of the skb (LOG/TRACE's PHYSIN=/PHYSOUT=, `-m physdev`), with
/// the devices. Not bridged (the common case): the extension bit, one load.
#[inline(always)]
fn bridge_ports(rec: &mut ProbeRecord, state: u64, skb: u64) {
    if global!(OFFSETS.have_bridge) == 0 {
        return;
    }
    rec.flags |= probe_flags::BRIDGE_READ;
    let active: u8 = kread::<_, true>(skb, global!(OFFSETS.skb_active_extensions));
    // Bit SKB_EXT_BRIDGE_NF (0; the collector checks the enum value).
    if active & 1 != 0 {
        bridged(rec, state, skb);
    }
}

/// The ports of a bridged skb: skb_ext_find(skb, SKB_EXT_BRIDGE_NF)->physinif and
/// ->physoutdev (the extension sits at a variable offset in the skb_ext), the output port's
/// ifindex and name, the input port's device by ifindex in the hook's netns (`dev_by_index`;
/// before 6.8 the pointer `physindev`). Every load goes through `mem::kcast`, no helper call:
/// a bridged packet's record with devices read six to eight words here. Its own BPF
/// function: bridged packets only.
#[inline(never)]
fn bridged(rec: &mut ProbeRecord, state: u64, skb: u64) {
    let ext: u64 = kread::<_, true>(skb, global!(OFFSETS.skb_extensions));
    if ext == 0 {
        return;
    }
    let chunk: u8 = kread::<_, true>(ext, global!(OFFSETS.ext_offset));
    // skb_ext_find: the extension starts offset[id] 8-byte chunks into the skb_ext.
    let p = mem::kcast(ext + chunk as u64 * 8);
    let physout = mem::load::<u64>(p, global!(OFFSETS.nfbr_physoutdev));
    rec.flags |= probe_flags::BRIDGED;
    rec.physout_ifindex = mem::load_at(physout, global!(OFFSETS.dev_ifindex));
    // Before 6.8 the input port is a device pointer (`physindev`), used as it is.
    let (physinif, physin) = if global!(OFFSETS.nfbr_physin_dev) != 0 {
        let dev = mem::load::<u64>(p, global!(OFFSETS.nfbr_physinif));
        (mem::load_at(dev, global!(OFFSETS.dev_ifindex)), dev)
    } else {
        let i = mem::load::<u32>(p, global!(OFFSETS.nfbr_physinif));
        (i, dev_by_index(state, i))
    };
    rec.physin_ifindex = physinif;
    // SAFETY: 16-byte fields at 8-aligned offsets of the 8-aligned ProbeRecord (asserted in
    // trace_common::record).
    unsafe {
        store_name(&mut rec.physout_dev, dev_name_loaded(physout));
        store_name(&mut rec.physin_dev, dev_name_loaded(physin));
    }
}

/// dev_get_by_index_rcu(state->net, ifindex), as nf_log and xt_physdev look the input port up
/// (the hooks run under RCU): the device, or 0 when the netns has none with that index (a
/// deleted port: the kernel's line then has no PHYSIN= either).
#[inline(always)]
fn dev_by_index(state: u64, ifindex: u32) -> u64 {
    if ifindex == 0 {
        return 0;
    }
    let net: u64 = kread::<_, true>(state, global!(OFFSETS.state_net));
    let heads: u64 = kread::<_, true>(net, global!(OFFSETS.net_dev_index_head));
    if heads == 0 {
        return 0;
    }
    // dev_index_hash: bucket ifindex & (NETDEV_HASHENTRIES - 1); hlist_head.first and
    // hlist_node.next are the structs' first words.
    let mut node: u64 = mem::load_at(heads, (ifindex & (DEV_INDEX_BUCKETS as u32 - 1)) * 8);
    let link = global!(OFFSETS.dev_index_hlist) as u64;
    for _ in 0..DEV_CHAIN_MAX {
        if node == 0 {
            break;
        }
        let dev = node - link;
        if mem::load_at::<u32>(dev, global!(OFFSETS.dev_ifindex)) == ifindex {
            return dev;
        }
        node = mem::load_at(node, 0);
    }
    0
}

/// 32-bit mix of the record's mark, conntrack fields and socket owner (a change makes
/// netfilter probes send a record). A collision hides one change with probability 2^-32.
#[inline(always)]
fn meta_hash(rec: &ProbeRecord) -> u32 {
    let a = rec.ct_id.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let b = (((rec.mark as u64) << 32) | rec.ct_status as u64).wrapping_mul(0xc2b2_ae3d_27d4_eb4f);
    let c = (((rec.ct_mark as u64) << 16)
        | ((rec.ctinfo as u64) << 8)
        | (rec.flags & (probe_flags::CT | probe_flags::UID)) as u64)
        .wrapping_mul(0x1656_67b1_9e37_79f9);
    let d = (((rec.uid as u64) << 32) | rec.gid as u64).wrapping_mul(0x27d4_eb2f_1656_67c5);
    let h = a ^ b.rotate_left(21) ^ c.rotate_left(42) ^ d.rotate_left(11);
    (h ^ (h >> 32)) as u32
}

/// What the filter looks at, written into `f`: family, protocol, addresses, ports / ICMP type,
/// and devices / mark only when the loaded filter uses them. All a first-sight probe reads for
/// packets it rejects: one 48-byte read for the common layouts (`headers::filter_view`),
/// else a full header walk into `h` (scratch).
#[inline(never)]
fn filter_input<const D: bool>(f: &mut FilterInput, h: &mut HeaderSnapshot, state: u64, skb: u64) {
    f.family = kread::<_, D>(state, global!(OFFSETS.state_pf));
    if global!(FILTER_FIELDS) & filter_fields::DEVS != 0 {
        let indev: u64 = kread::<_, D>(state, global!(OFFSETS.state_in));
        let outdev: u64 = kread::<_, D>(state, global!(OFFSETS.state_out));
        // SAFETY: 16-byte fields at 8-aligned offsets of the 8-aligned FilterInput.
        unsafe {
            store_name(&mut f.in_dev, dev_name_words::<D>(indev));
            store_name(&mut f.out_dev, dev_name_words::<D>(outdev));
        }
    }
    f.mark = if global!(FILTER_FIELDS) & filter_fields::MARK != 0 {
        kread::<_, D>(skb, global!(OFFSETS.skb_mark))
    } else {
        0
    };
    let head: u64 = kread::<_, D>(skb, global!(OFFSETS.skb_head));
    let nh: u16 = kread::<_, D>(skb, global!(OFFSETS.skb_network_header));
    let nh = head + nh as u64;
    if head == 0 || !(headers::filter_view::<D>(f.family, nh, f) || full_view(f, h, nh)) {
        // Unreadable headers: nothing for the filter to match on.
        f.proto = 0;
        f.flags = 0;
        // SAFETY: 8-aligned 16-byte fields (asserted in trace_common::filter).
        unsafe {
            store_name(&mut f.saddr, [0; 2]);
            store_name(&mut f.daddr, [0; 2]);
        }
    }
}

/// The filter's view from a full header walk (IP options, IPv6 extension headers, other
/// protocols): `headers::snapshot` into the scratch `h`, then copied. False: unreadable.
#[inline(always)]
fn full_view(f: &mut FilterInput, h: &mut HeaderSnapshot, nh: u64) -> bool {
    if !headers::snapshot(f.family, nh, h, false) {
        return false;
    }
    f.proto = h.proto;
    f.flags = if h.l4_flags != 0 {
        input_flags::L4_VALID
    } else {
        0
    };
    f.icmp_type = h.icmp_type;
    f.saddr = h.saddr;
    f.daddr = h.daddr;
    f.sport = h.sport;
    f.dport = h.dport;
    true
}

const _: () = assert!(core::mem::align_of::<ProbeRecord>() == 8);
const _: () = assert!(core::mem::offset_of!(ProbeRecord, in_dev) % 8 == 0);
const _: () = assert!(core::mem::offset_of!(ProbeRecord, out_dev) % 8 == 0);

/// Store a device name read as two words (volatile: two zero words, no device, would
/// otherwise be merged into a byte-loop memset call, see `mem`).
///
/// # Safety
/// `dst` is 8-aligned (a field at an 8-aligned offset of an 8-aligned struct).
#[inline(always)]
unsafe fn store_name(dst: &mut [u8; 16], w: [u64; 2]) {
    let p = dst as *mut [u8; 16] as *mut u64;
    // SAFETY: the caller's contract; 16 writable bytes.
    unsafe {
        p.write_volatile(w[0]);
        p.add(1).write_volatile(w[1]);
    }
}

/// Hash of the packet's first 64 bytes from the network header: IP header and the start of
/// the transport header, checksums included, so any rewrite (NAT, TTL, TOS, MSS) changes it.
#[inline(always)]
fn quick_hash(nh: u64) -> u64 {
    // A per-CPU buffer: 64 bytes (twice, through the helper's return value) would otherwise
    // sit on the stack of the deepest call chain.
    let Some(w) = HASH_BUF.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: per-CPU map value of 64 bytes.
    let w = unsafe { &mut *w };
    // A failed read leaves zeros (the helper clears the buffer): they hash like any bytes.
    unsafe {
        aya_ebpf::helpers::generated::bpf_probe_read_kernel(
            w.as_mut_ptr().cast(),
            64,
            nh as *const core::ffi::c_void,
        )
    };
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for x in w.iter() {
        h ^= *x;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // 0 means "nothing sent yet".
    h | 1
}

/// A device's name (16 bytes, zeros without a device) as two words: with direct loads when
/// `D` (the device is a BTF pointer: two 8-byte loads instead of a helper call).
#[inline(always)]
fn dev_name_words<const D: bool>(dev: u64) -> [u64; 2] {
    let off = global!(OFFSETS.dev_name);
    if !D {
        if dev == 0 {
            return [0; 2];
        }
        let mut buf = core::mem::MaybeUninit::<[u64; 2]>::uninit();
        return mem::read_into(dev + off as u64, &mut buf).map_or([0; 2], |w| *w);
    }
    [kread::<_, true>(dev, off), kread::<_, true>(dev, off + 8)]
}

/// A device's name from a pointer read out of memory (the bridge ports): [`mem::load_at`].
#[inline(always)]
fn dev_name_loaded(dev: u64) -> [u64; 2] {
    let off = global!(OFFSETS.dev_name);
    [mem::load_at(dev, off), mem::load_at(dev, off + 8)]
}

/// skb->_nfct: conntrack pointer | ctinfo (low 3 bits).
#[inline(always)]
fn conntrack<const D: bool>(rec: &mut ProbeRecord, skb: u64) {
    let f = ct_fields::<D>(skb);
    rec.ctinfo = f.ctinfo;
    rec.ct_id = f.id;
    rec.ct_status = f.status;
    rec.ct_mark = f.mark;
    if f.set {
        rec.flags |= probe_flags::CT;
    }
}

/// What [`ct_fields`] read.
struct CtFields {
    /// skb->_nfct was set (`ctinfo` is meaningful).
    set: bool,
    ctinfo: u8,
    /// The entry's address, 0 without one (none, or IP_CT_UNTRACKED).
    id: u64,
    status: u32,
    mark: u32,
}

/// skb->_nfct's ctinfo and the entry's status and mark.
#[inline(always)]
fn ct_fields<const D: bool>(skb: u64) -> CtFields {
    let nfct: u64 = kread::<_, D>(skb, global!(OFFSETS.skb_nfct));
    let mut f = CtFields {
        set: nfct != 0,
        ctinfo: (nfct & 7) as u8,
        id: nfct & !7,
        status: 0,
        mark: 0,
    };
    // IP_CT_UNTRACKED (7) has no entry behind it.
    if f.id == 0 {
        return f;
    }
    let ct = f.id;
    let (s_off, m_off) = (global!(OFFSETS.ct_status), global!(OFFSETS.ct_mark));
    // Netfilter probes: two direct loads (see mem::kcast) when mark is within reach of
    // status.
    if D && m_off >= s_off && m_off - s_off + 4 <= mem::KCAST_BYTES as u32 {
        let p = mem::kcast(ct + s_off as u64);
        f.status = mem::load::<u32>(p, 0);
        f.mark = mem::load::<u32>(p, m_off - s_off);
        return f;
    }
    // status and mark are a few bytes apart in struct nf_conn: one read for both when they
    // fit in CT_BLOCK bytes (the offsets are load-time constants, so is the index).
    if m_off >= s_off && m_off - s_off + 4 <= CT_BLOCK as u32 {
        let mut buf = core::mem::MaybeUninit::<[u8; CT_BLOCK]>::uninit();
        let Some(b) = mem::read_into(ct + s_off as u64, &mut buf) else {
            return f;
        };
        let d = (m_off - s_off) as usize;
        f.status = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        if d + 4 <= CT_BLOCK {
            f.mark = u32::from_le_bytes([b[d], b[d + 1], b[d + 2], b[d + 3]]);
        }
        return f;
    }
    let status: u64 = read(ct, s_off);
    f.status = status as u32;
    f.mark = read(ct, m_off);
    f
}

/// Bytes read from ct->status on (status and mark together, see [`conntrack`]): on 6.18
/// mark is 40 bytes after status (ct_net, nat_bysource and master in between); 32 bytes
/// took two reads there, and each bpf_probe_read_kernel call costs ~60 ns on this machine.
const CT_BLOCK: usize = 48;

/// Link-layer header of received packets (LOG's MAC=). `read`: its bytes when the caller
/// already read them from skb->head + mac_header (see [`mac_before`]).
#[inline(always)]
fn mac<const D: bool>(
    rec: &mut ProbeRecord,
    skb: u64,
    head: u64,
    indev: u64,
    read: Option<&[u8; pktbuf::MAC_LEN]>,
) {
    rec.mac_len = 0;
    if indev == 0 || head == 0 {
        return;
    }
    let mh: u16 = kread::<_, D>(skb, global!(OFFSETS.skb_mac_header));
    // 0xffff: mac header not set.
    if mh == 0xffff {
        return;
    }
    let mut buf = core::mem::MaybeUninit::<[u8; 14]>::uninit();
    if let Some(m) = read.or_else(|| mem::read_into(head + mh as u64, &mut buf)) {
        rec.mac[..14].copy_from_slice(m);
        rec.mac_len = 14;
        rec.flags |= probe_flags::MAC;
    }
}

/// Socket owner (skb->sk->sk_socket->file->f_cred fsuid/fsgid), as LOG prints UID=/GID=;
/// [`probe_flags::OWNER`] says it was read. No socket (forwarded packets): one load.
#[inline(always)]
fn creds<const D: bool>(rec: &mut ProbeRecord, skb: u64) {
    rec.uid = 0;
    rec.gid = 0;
    if global!(OFFSETS.have_creds) == 0 {
        return;
    }
    rec.flags |= probe_flags::OWNER;
    let sk: u64 = kread::<_, D>(skb, global!(OFFSETS.skb_sk));
    if sk == 0 {
        return;
    }
    let st: u8 = kread::<_, D>(sk, global!(OFFSETS.sk_state));
    if st == TCP_TIME_WAIT || st == TCP_NEW_SYN_RECV {
        return;
    }
    let sock: u64 = kread::<_, D>(sk, global!(OFFSETS.sk_socket));
    let file: u64 = kread::<_, D>(sock, global!(OFFSETS.socket_file));
    let cred: u64 = kread::<_, D>(file, global!(OFFSETS.file_cred));
    if cred == 0 {
        return;
    }
    rec.uid = kread::<_, D>(cred, global!(OFFSETS.cred_fsuid));
    rec.gid = kread::<_, D>(cred, global!(OFFSETS.cred_fsgid));
    rec.flags |= probe_flags::UID | probe_flags::GID;
}

/// skb:kfree_skb(skb, location, reason, rx_sk): report drops of tracked skbs and stop
/// tracking them (the address will be recycled).
#[btf_tracepoint(function = "kfree_skb")]
pub fn kfree_skb(ctx: BtfTracePointContext) -> i32 {
    // Fires for every skb freed with a reason, in every namespace: the slot of this CPU,
    // then, while anything is tracked, TRACKED.
    let skb: u64 = ctx.arg(0);
    let t = match CUR.get_ptr_mut(0) {
        // SAFETY: per-CPU map value.
        Some(cur) if unsafe { (*cur).skb } == skb => {
            // SAFETY: as above.
            let cur = unsafe { &mut *cur };
            cur.skb = 0;
            if cur.what & SLOT_TRACKED == 0 {
                return 0;
            }
            cur.t
        }
        _ => {
            if !recently_active() {
                return 0;
            }
            let Some(t) = TRACKED.get_ptr(skb) else {
                return 0;
            };
            // SAFETY: map value pointer.
            let t = unsafe { *t };
            let _ = TRACKED.remove(skb);
            t
        }
    };
    if t.state != STATE_TRACKED {
        return 0;
    }
    let Some(c) = counters() else { return 0 };
    let Some(rec) = DROP_SCRATCH.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: per-CPU map value; programs on one CPU do not run concurrently on it.
    let rec = unsafe { &mut *rec };
    *rec = DropRecord {
        ts_ns: unsafe { bpf_ktime_get_ns() },
        skb,
        gen: t.gen,
        location: ctx.arg(1),
        netns: t.netns,
        reason: ctx.arg::<u64>(2) as u32,
        prev_priority: t.prev_priority,
        // After a lost record, the last probe passed says nothing the collector can use.
        prev_hook: if t.flags & tracked_flags::RESEND != 0 {
            PREV_NONE
        } else {
            t.prev_hook
        },
        ..DropRecord::ZERO
    };
    // Only where the collector needs it: PREROUTING's stages after its last probe (see
    // `drop_state`). Elsewhere every stage has a probe after it, and most tracked frees are
    // after the traversal (e.g. a delivered RST freed by the receiving socket, one per short
    // connection): they keep the cheap record.
    if rec.prev_hook == NF_INET_PRE_ROUTING {
        drop_state(rec, skb);
    }
    if EVENTS.output::<DropRecord>(rec, wakeup_flags()).is_ok() {
        c.emitted += 1;
        c.drops += 1;
    } else {
        c.lost += 1;
    }
    0
}

/// The freed packet's mark, conntrack fields and headers (probe reads: a tracepoint's skb
/// is not a netfilter ctx). Drops of tracked packets are rare, so this costs nothing that
/// matters; it lets the probe after PREROUTING's nat go (the collector takes what nat left
/// from the next hook's entry, or from here when the packet was freed before one).
#[inline(never)]
fn drop_state(rec: &mut DropRecord, skb: u64) {
    rec.flags = drop_flags::STATE;
    rec.mark = read(skb, global!(OFFSETS.skb_mark));
    let f = ct_fields::<false>(skb);
    if f.set {
        rec.flags |= drop_flags::CT;
    }
    (rec.ctinfo, rec.ct_id, rec.ct_status, rec.ct_mark) = (f.ctinfo, f.id, f.status, f.mark);
    let head: u64 = read(skb, global!(OFFSETS.skb_head));
    let nh: u16 = read(skb, global!(OFFSETS.skb_network_header));
    if head == 0 {
        return;
    }
    let nh = head + nh as u64;
    // The family from the IP version nibble: the skb may be freed outside any hook.
    let pf = match read::<u8>(nh, 0) >> 4 {
        4 => headers::NFPROTO_IPV4,
        6 => headers::NFPROTO_IPV6,
        _ => return,
    };
    if headers::snapshot(pf, nh, &mut rec.headers, true) {
        rec.pf = pf;
        rec.flags |= drop_flags::HEADERS;
    }
}

//! eBPF side of the packet filter.
//!
//! The logic lives in `trace_common::{filter, flowhash}` (no_std, bounded loops, no panic
//! paths) so that the exact code the probes run is unit-tested on the host
//! (trace-core/tests/filter_*.rs). This module only gives the probes one place to call it.
//! Flow sampling calls `trace_common::flowhash` directly (nfhook `flow_kept`, `known_flow`:
//! the addresses as words).
//!
//! The filter is driven by `bpf_loop` (kernel >= 5.17; netfilter links need 6.4 anyway): the
//! verifier checks the step body once. Measured on this machine's 6.18 kernel with a socket
//! filter harness (BPF_PROG_TEST_RUN, 660 filter×packet pairs agreeing with the host): 13.5k
//! instructions verified with bpf_loop, 361k with the plain bounded loop of
//! `trace_common::filter::matches` (limit 1M). bpf_loop callbacks need BTF func_info: link with
//! `--btf` (aya-build does).
//!
//! Usage from the first probe a packet meets (the compiled program is 8 KiB: keep it in an
//! `Array<FilterProgram>` map entry, never on the 512-byte BPF stack):
//! ```ignore
//! let prog = FILTER.get(0)?;                 // &FilterProgram written by userspace
//! let input: FilterInput = /* family, proto, flags, addrs, ports, mark, dev names */;
//! if !filter::packet_selected(prog, &input) { return NF_ACCEPT; }
//! ```

pub use trace_common::filter::{FilterInput, FilterProgram};

use trace_common::filter::{step, EvalCursor, FILTER_STEPS};

/// bpf_loop's context: the program, the packet and the loop state.
#[repr(C)]
struct LoopCtx {
    prog: *const FilterProgram,
    input: *const FilterInput,
    cur: EvalCursor,
}

/// One `trace_common::filter::step` per bpf_loop iteration: the verifier checks this body once
/// (callbacks converge), not once per predicate slot as an unrolled loop would need.
extern "C" fn loop_step(_index: u32, ctx: *mut core::ffi::c_void) -> i64 {
    // SAFETY: bpf_loop passes back the LoopCtx pointer given below, alive for the whole call.
    let ctx = unsafe { &mut *(ctx as *mut LoopCtx) };
    // SAFETY: both pointers come from references that outlive the bpf_loop call.
    let (prog, input) = unsafe { (&*ctx.prog, &*ctx.input) };
    step(prog, input, &mut ctx.cur) as i64
}

/// The filter verdict for one packet: `trace_common::filter::matches`, driven by bpf_loop.
#[inline(never)]
pub fn packet_selected(prog: &FilterProgram, input: &FilterInput) -> bool {
    let mut ctx = LoopCtx {
        prog,
        input,
        cur: EvalCursor::START,
    };
    // SAFETY: helper call with a callback of the required signature and a live stack context.
    unsafe {
        aya_ebpf::helpers::bpf_loop(
            FILTER_STEPS,
            loop_step as *mut core::ffi::c_void,
            &mut ctx as *mut LoopCtx as *mut core::ffi::c_void,
            0,
        );
    }
    ctx.cur.matched != 0
}

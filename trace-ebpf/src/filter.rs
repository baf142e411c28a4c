//! eBPF side of the packet filter and of flow sampling.
//!
//! The logic lives in `trace_common::{filter, flowhash}` (no_std, bounded loops, no panic
//! paths) so that the exact code the probes run is unit-tested on the host
//! (trace-core/tests/filter_*.rs). This module only gives the probes one place to call it.
//!
//! Usage from the first probe a packet meets (the compiled program is 8 KiB: keep it in an
//! `Array<FilterProgram>` map entry, never on the 512-byte BPF stack):
//! ```ignore
//! let prog = FILTER.get(0)?;                 // &FilterProgram written by userspace
//! let input: FilterInput = /* family, proto, flags, addrs, ports, mark, dev names */;
//! if !filter::packet_selected(prog, &input) { return NF_ACCEPT; }
//! if !filter::flow_sampled(hash_inputs..., sample_n) { return NF_ACCEPT; }
//! ```

pub use trace_common::filter::{FilterInput, FilterProgram};

/// The filter verdict for one packet (see `trace_common::filter::matches`).
#[inline(always)]
pub fn packet_selected(prog: &FilterProgram, input: &FilterInput) -> bool {
    trace_common::filter::matches(prog, input)
}

/// Flow-consistent sampling: true when the flow is among the 1/`sample_n` kept. Pass the
/// conntrack ORIGINAL tuple when the skb has a ct, else the packet's 5-tuple (see
/// `trace_common::flowhash`). `sample_n <= 1` keeps every flow.
#[inline(always)]
pub fn flow_sampled(
    family: u8,
    proto: u8,
    addr_a: &[u8; 16],
    port_a: u16,
    addr_b: &[u8; 16],
    port_b: u16,
    sample_n: u32,
) -> bool {
    let h = trace_common::flowhash::flow_hash(family, proto, addr_a, port_a, addr_b, port_b);
    trace_common::flowhash::sample_keep(h, sample_n)
}

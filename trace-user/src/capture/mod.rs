//! The `nfhook` capture backend: BPF_PROG_TYPE_NETFILTER probes around every table of every
//! hook, per network namespace, plus skb:kfree_skb for drops (issue 3).
//!
//! - [`object`]: the embedded eBPF object built by build.rs;
//! - [`btf`]: struct offsets and enum names from the running kernel's BTF;
//! - [`bpfsys`]: the raw bpf(2) calls aya cannot make (one wrapper, one BPF_PROG_LOAD prefix);
//! - [`loader`]: maps, globals and the kfree_skb program through aya, the netfilter probe
//!   copies through raw BPF_PROG_LOAD;
//! - [`link`]: BPF_LINK_CREATE netfilter links;
//! - [`plan`]: target namespaces and the probe plan from the tables registered there;
//! - [`probeset`]: the probes linked per netns, and probes added when the rules change;
//! - [`session`]: attach, read the ring buffer (tokio), decode, assemble, stop, summary;
//! - [`print`]: packet-level text output and the summary;
//! - [`rulelevel`]: rule-level reconstruction/output and `--write` recordings (the one
//!   integration point with trace_core::reconstruct/output/record).

pub mod bpfsys;
pub mod btf;
// `capture --compare-trace`: the kernel's own trace in the same run.
pub mod compare_trace;
// fentry/kprobe backends (issue 6).
pub mod classic;
pub mod fentry;
pub mod hookverdict;
// The netfilter probe's direct kernel-memory reads (bpf_rdonly_cast placeholders).
pub mod kcast;
pub mod link;
pub mod loader;
pub mod modbtf;
pub mod object;
pub mod plan;
pub mod print;
pub mod probeset;
pub mod ringread;
pub mod rulelevel;
pub mod session;
pub mod stop;
pub mod xtpos;

//! The `nfhook` capture backend: BPF_PROG_TYPE_NETFILTER probes around every table of every
//! hook, per network namespace, plus skb:kfree_skb for drops (issue 3).
//!
//! - [`object`]: the embedded eBPF object built by build.rs.

pub mod object;

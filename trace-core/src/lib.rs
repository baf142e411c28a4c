//! iptrace's pure core: bytes in, structures out. Nothing here needs root, aya or tokio.
//!
//! Pipeline stages, in order:
//! - [`event`]: owned events decoded from the kernel records;
//! - [`filter`]: the capture filter (tcpdump-style text → DNF program the probes evaluate);
//! - [`assemble`]: per-packet assembly (events → PacketTrace, probe plans);
//! - [`packet`]: per-packet assembly output (hooks, tables, observed verdicts, NAT);
//! - [`step`]: TRACE positions (`table:chain:rule:N`), the unit of output and comparison;
//! - [`netfilter`]: hooks, tables, priorities;
//! - [`rules`]: the iptables rule model (iptables-save parser, TRACE numbering).

pub mod assemble;
pub mod compare;
pub mod decode;
pub mod eval;
pub mod event;
pub mod filter;
pub mod netfilter;
pub mod output;
pub mod packet;
pub mod reconstruct;
pub mod record;
pub mod rules;
pub mod step;

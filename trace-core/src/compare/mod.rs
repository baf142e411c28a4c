//! `iptrace compare`: checks captured paths against what the kernel itself printed.
//!
//! Stages: [`reference`] parses the kernel's output (legacy TRACE/LOG lines, xtables-monitor,
//! nft monitor) into reference packets.

pub mod reference;

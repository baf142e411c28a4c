//! `iptrace compare`: checks captured paths against what the kernel itself printed.
//!
//! Stages: [`reference`] parses the kernel's output (legacy TRACE/LOG lines, xtables-monitor,
//! nft monitor) into reference packets; [`nft_ruleset`] and [`resolve`] map nft handles, rule
//! texts, policies and LOG prefixes to TRACE positions through the rulesets.

pub mod nft_ruleset;
pub mod reference;
pub mod resolve;

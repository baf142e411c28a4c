//! iptables rules: the model of an `iptables-save` / `ip6tables-save` dump (also
//! iptables-restore input), its parser, and printing rules back as iptables-save text.
//!
//! - [`model`]: [`Ruleset`] → [`TableDump`] → [`Chain`] → [`Rule`], TRACE numbering;
//! - [`matches`] / [`targets`]: typed options of the common modules, decidability;
//! - [`parser`]: text → [`Ruleset`] ([`parse`], [`parse_bytes`]), [`lexer`]: word splitting;
//! - `display`: `Rule::to_save_text`, `Target::to_save_text`, `Display` for `Ruleset`;
//! - [`error`]: [`ParseError`] with line and column.

mod display;
pub mod error;
pub mod lexer;
pub mod matches;
pub mod model;
mod parse_matches;
mod parse_targets;
pub mod parser;
mod rule_spec;
pub mod targets;
mod values;

pub use error::{ParseError, ParseErrorKind};
pub use matches::{Decidability, Match, MatchKind};
pub use model::{
    Backend, Chain, Counters, Header, Iface, IpNet, Negatable, Policy, Proto, Rule, Ruleset,
    TableDump, Warning,
};
pub use parser::{diagnose, parse, parse_bytes, parse_with, ParseOptions};
pub use targets::{StandardVerdict, Target};

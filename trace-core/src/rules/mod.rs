//! iptables rules: the model of an `iptables-save` / `ip6tables-save` dump (also
//! iptables-restore input), its parser, and printing rules back as iptables-save text.
//!
//! - [`model`]: [`Ruleset`] → [`TableDump`] → [`Chain`] → [`Rule`], TRACE numbering;
//! - [`matches`] / [`targets`]: typed options of the common modules, decidability;
//! - [`error`]: [`ParseError`] with line and column.

pub mod error;
pub mod matches;
pub mod model;
pub mod targets;

pub use error::{ParseError, ParseErrorKind};
pub use matches::{Decidability, Match, MatchKind};
pub use model::{
    Backend, Chain, Counters, Header, Iface, IpNet, Negatable, Policy, Proto, Rule, Ruleset,
    TableDump, Warning,
};
pub use targets::{StandardVerdict, Target};

//! The unit in which paths are printed and compared: one TRACE line's position,
//! `table:chain:rule:N`, `table:chain:return:N` or `table:chain:policy:N`.

use crate::netfilter::Table;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StepKind {
    /// A rule that matched (N = its 1-based position in the chain).
    Rule,
    /// End of a user chain, or an unconditional standard-verdict rule there.
    Return,
    /// End of a built-in chain, or an unconditional standard-verdict rule there.
    Policy,
}

impl StepKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StepKind::Rule => "rule",
            StepKind::Return => "return",
            StepKind::Policy => "policy",
        }
    }
}

/// `table:chain:kind:N` as the kernel's TRACE prints it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct StepId {
    pub table: Table,
    pub chain: String,
    pub kind: StepKind,
    pub num: u32,
}

impl fmt::Display for StepId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}:{}",
            self.table,
            self.chain,
            self.kind.as_str(),
            self.num
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a TRACE position `table:chain:rule|return|policy:N`: {0:?}")]
pub struct StepParseError(pub String);

impl FromStr for StepId {
    type Err = StepParseError;

    /// Parses `filter:FORWARD:rule:8`. Chain names may not contain ':' in iptables, so a
    /// right-to-left split is unambiguous.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || StepParseError(s.to_string());
        let mut it = s.rsplitn(3, ':');
        let num = it.next().and_then(|n| n.parse().ok()).ok_or_else(err)?;
        let kind = match it.next() {
            Some("rule") => StepKind::Rule,
            Some("return") => StepKind::Return,
            Some("policy") => StepKind::Policy,
            _ => return Err(err()),
        };
        let (table, chain) = it
            .next()
            .and_then(|tc| tc.split_once(':'))
            .ok_or_else(err)?;
        let table = Table::from_name(table).ok_or_else(err)?;
        if chain.is_empty() {
            return Err(err());
        }
        Ok(StepId {
            table,
            chain: chain.to_string(),
            kind,
            num,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_trace_positions() {
        for s in [
            "filter:FORWARD:rule:8",
            "filter:DOCKER-USER:return:1",
            "raw:PREROUTING:policy:2",
        ] {
            assert_eq!(s.parse::<StepId>().unwrap().to_string(), s);
        }
    }

    #[test]
    fn rejects_malformed_positions() {
        for s in [
            "",
            "filter:FORWARD:rule",
            "filter:FORWARD:jump:1",
            "bogus:X:rule:1",
            "filter::rule:1",
        ] {
            assert!(s.parse::<StepId>().is_err(), "{s}");
        }
    }
}

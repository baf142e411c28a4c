//! `nft -a list ruleset`: tables, chains and rules with their handles, in chain order. Used
//! to turn the rule handles and rule texts of nft trace events into iptables positions: an
//! iptables-nft chain holds its rules in the same order as `iptables-nft-save` prints them.
//!
//! Only the structure matters here: sets, maps, flowtables and other objects are skipped;
//! rule text is kept (normalized) to identify rules `nft monitor trace` prints without handle.

use crate::netfilter::Family;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NftRule {
    pub handle: u64,
    /// Normalized text (see [`normalize_rule_text`]).
    pub text: String,
    /// 1-based source line.
    pub line: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NftChain {
    pub name: String,
    /// Base chains declare `type … hook …`.
    pub base: bool,
    pub rules: Vec<NftRule>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NftTable {
    /// `ip`, `ip6`, `inet`, …
    pub family: String,
    pub name: String,
    pub chains: Vec<NftChain>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NftRuleset {
    pub tables: Vec<NftTable>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NftRulesetError {
    #[error("line {line}: {what} outside a {expected}")]
    Misplaced {
        line: usize,
        what: &'static str,
        expected: &'static str,
    },
    #[error("line {line}: rule without `# handle N` (list the ruleset with `nft -a`)")]
    NoHandle { line: usize },
    #[error("line {line}: unbalanced braces")]
    Unbalanced { line: usize },
    #[error("no table found (is this `nft -a list ruleset` output?)")]
    Empty,
}

impl NftRuleset {
    /// The chain `chain` of the iptables table `table`: iptables-nft keeps IPv4 rules in
    /// `ip` tables and IPv6 rules in `ip6` tables of the same name, so the family decides;
    /// without one, `ip` is tried before `ip6`.
    pub fn chain(&self, family: Option<Family>, table: &str, chain: &str) -> Option<&NftChain> {
        let families: &[&str] = match family {
            Some(Family::Ipv4) => &["ip"],
            Some(Family::Ipv6) => &["ip6"],
            None => &["ip", "ip6"],
        };
        families.iter().find_map(|f| {
            self.tables
                .iter()
                .filter(|t| t.name == table && t.family == *f)
                .find_map(|t| t.chains.iter().find(|c| c.name == chain))
        })
    }
}

impl NftChain {
    /// 1-based position of the rule with `handle`.
    pub fn position_of_handle(&self, handle: u64) -> Option<u32> {
        self.rules
            .iter()
            .position(|r| r.handle == handle)
            .map(|i| i as u32 + 1)
    }

    /// 1-based position of the first rule with this (normalized) text. Identical rules
    /// evaluate identically, so the first one is the one a packet would match first.
    pub fn position_of_text(&self, text: &str) -> Option<u32> {
        let t = normalize_rule_text(text);
        self.rules
            .iter()
            .position(|r| r.text == t)
            .map(|i| i as u32 + 1)
    }
}

/// Drops what differs between a listing and a trace of the same rule: counter values
/// (`counter packets 6 bytes 339` → `counter`), the `# handle N` comment, spacing.
pub fn normalize_rule_text(text: &str) -> String {
    let text = text.split(" # handle ").next().unwrap_or(text);
    let toks: Vec<&str> = text.split_whitespace().collect();
    let mut out: Vec<&str> = Vec::with_capacity(toks.len());
    let mut i = 0;
    while i < toks.len() {
        if toks[i] == "counter"
            && toks.get(i + 1) == Some(&"packets")
            && toks.get(i + 3) == Some(&"bytes")
        {
            out.push("counter");
            i += 5;
            continue;
        }
        out.push(toks[i]);
        i += 1;
    }
    out.join(" ")
}

/// Brace balance of a line, ignoring braces in "quoted strings" and after `#` comments.
fn brace_delta(line: &str) -> i32 {
    let mut d = 0;
    let mut quoted = false;
    for c in line.chars() {
        match c {
            '"' => quoted = !quoted,
            '#' if !quoted => break,
            '{' if !quoted => d += 1,
            '}' if !quoted => d -= 1,
            _ => {}
        }
    }
    d
}

fn handle_of(line: &str) -> Option<u64> {
    line.rsplit_once("# handle ")
        .and_then(|(_, h)| h.trim().parse().ok())
}

/// Where in the nesting the parser is.
enum Ctx {
    Top,
    Table,
    Chain,
    /// Inside a set/map/flowtable/… block (skipped) that started at this depth.
    Skip(i32),
}

struct Parser {
    rs: NftRuleset,
    ctx: Ctx,
    /// Brace depth after the current line.
    depth: i32,
    /// A rule spread over several lines (long anonymous sets wrap), until `# handle N`.
    pending_rule: String,
}

impl Parser {
    fn line(&mut self, line: usize, t: &str) -> Result<(), NftRulesetError> {
        let delta = brace_delta(t);
        self.depth += delta;
        match self.ctx {
            Ctx::Skip(at) if self.depth <= at => self.ctx = Ctx::Table,
            Ctx::Skip(_) => {}
            Ctx::Top => self.table_header(line, t)?,
            Ctx::Table => self.in_table(t, delta),
            Ctx::Chain => self.in_chain(line, t)?,
        }
        if self.depth < 0 {
            return Err(NftRulesetError::Unbalanced { line });
        }
        Ok(())
    }

    /// `table [FAMILY] NAME {` (nft omits nothing, but `ip` is the default family).
    fn table_header(&mut self, line: usize, t: &str) -> Result<(), NftRulesetError> {
        let mut w = t.split_whitespace();
        if w.next() != Some("table") {
            return Err(NftRulesetError::Misplaced {
                line,
                what: "statement",
                expected: "table",
            });
        }
        let (family, name) = match (w.next(), w.next()) {
            (Some(f), Some(nm)) if nm != "{" => (f, nm),
            (Some(nm), _) => ("ip", nm),
            _ => {
                return Err(NftRulesetError::Misplaced {
                    line,
                    what: "table",
                    expected: "ruleset",
                })
            }
        };
        self.rs.tables.push(NftTable {
            family: family.into(),
            name: name.into(),
            chains: Vec::new(),
        });
        self.ctx = Ctx::Table;
        Ok(())
    }

    fn in_table(&mut self, t: &str, delta: i32) {
        if t == "}" {
            self.ctx = Ctx::Top;
        } else if let Some(rest) = t.strip_prefix("chain ") {
            let name = rest
                .split_whitespace()
                .next()
                .unwrap_or("")
                .trim_matches('"')
                .to_string();
            let table = self.rs.tables.last_mut().expect("Ctx::Table has a table");
            table.chains.push(NftChain {
                name,
                base: false,
                rules: Vec::new(),
            });
            self.ctx = if delta > 0 { Ctx::Chain } else { Ctx::Table };
        } else if delta > 0 {
            self.ctx = Ctx::Skip(self.depth - delta);
        }
    }

    fn in_chain(&mut self, line: usize, t: &str) -> Result<(), NftRulesetError> {
        let chain = self
            .rs
            .tables
            .last_mut()
            .and_then(|t| t.chains.last_mut())
            .expect("Ctx::Chain has a chain");
        if t == "}" && self.pending_rule.is_empty() {
            self.ctx = Ctx::Table;
        } else if t.starts_with("type ") && t.contains(" hook ") {
            chain.base = true;
        } else if ["policy ", "comment ", "devices "]
            .iter()
            .any(|a| t.starts_with(a))
        {
            // chain attributes, not rules
        } else {
            if !self.pending_rule.is_empty() {
                self.pending_rule.push(' ');
            }
            self.pending_rule.push_str(t);
            if let Some(handle) = handle_of(t) {
                let text = normalize_rule_text(&std::mem::take(&mut self.pending_rule));
                chain.rules.push(NftRule { handle, text, line });
            } else if self.depth <= 2 {
                // Back at chain level without a handle: not `nft -a` output.
                return Err(NftRulesetError::NoHandle { line });
            }
        }
        Ok(())
    }
}

/// Parses `nft -a list ruleset`.
pub fn parse(text: &str) -> Result<NftRuleset, NftRulesetError> {
    let mut p = Parser {
        rs: NftRuleset::default(),
        ctx: Ctx::Top,
        depth: 0,
        pending_rule: String::new(),
    };
    for (n, raw) in text.lines().enumerate() {
        let t = raw.trim();
        // Comments (`# Warning: table ip nat is managed by iptables-nft`) and blank lines.
        if t.is_empty() || (t.starts_with('#') && p.pending_rule.is_empty()) {
            continue;
        }
        p.line(n + 1, t)?;
    }
    if p.rs.tables.is_empty() {
        return Err(NftRulesetError::Empty);
    }
    Ok(p.rs)
}

#[cfg(test)]
mod tests {
    use super::*;

    const RS: &str = "table ip filter { # handle 4\n\tset blocked { # handle 30\n\t\ttype ipv4_addr\n\t\telements = { 10.0.0.1,\n\t\t\t     10.0.0.2 }\n\t}\n\n\tchain FORWARD { # handle 2\n\t\ttype filter hook forward priority filter; policy drop;\n\t\tcounter packets 10 bytes 583 jump DOCKER-USER # handle 8\n\t\toifname \"br-0\" ct state related,established counter packets 5 bytes 279 accept # handle 14\n\t}\n\n\tchain DOCKER-USER { # handle 7\n\t\tcounter packets 10 bytes 583 return # handle 25\n\t}\n}\n# Warning: table ip nat is managed by iptables-nft, do not touch!\ntable ip nat { # handle 3\n}\n";

    #[test]
    fn parses_chains_rules_and_handles_skipping_sets() {
        let rs = parse(RS).unwrap();
        assert_eq!(rs.tables.len(), 2);
        let fwd = rs.chain(None, "filter", "FORWARD").unwrap();
        assert!(
            rs.chain(Some(Family::Ipv6), "filter", "FORWARD").is_none(),
            "no ip6 filter table"
        );
        assert!(fwd.base);
        assert_eq!(fwd.position_of_handle(14), Some(2));
        assert_eq!(
            fwd.position_of_text(
                "oifname \"br-0\" ct state related,established counter packets 0 bytes 0 accept"
            ),
            Some(2)
        );
        let user = rs
            .chain(Some(Family::Ipv4), "filter", "DOCKER-USER")
            .unwrap();
        assert!(!user.base);
        assert_eq!(user.rules[0].text, "counter return");
    }

    #[test]
    fn rules_may_wrap_over_lines() {
        let rs = parse("table ip filter {\n chain INPUT {\n  type filter hook input priority filter; policy accept;\n  ip saddr { 10.0.0.1,\n     10.0.0.2 } drop # handle 5\n  accept # handle 6\n }\n}\n").unwrap();
        let c = rs.chain(None, "filter", "INPUT").unwrap();
        assert_eq!(c.position_of_handle(5), Some(1));
        assert_eq!(c.position_of_handle(6), Some(2));
        assert_eq!(c.rules[0].text, "ip saddr { 10.0.0.1, 10.0.0.2 } drop");
    }

    #[test]
    fn rejects_rules_without_handles_and_garbage() {
        assert!(matches!(
            parse("table ip t {\n chain c {\n  accept\n }\n}\n"),
            Err(NftRulesetError::NoHandle { line: 3 })
        ));
        assert!(matches!(
            parse("hello\n"),
            Err(NftRulesetError::Misplaced { line: 1, .. })
        ));
        assert!(matches!(parse(""), Err(NftRulesetError::Empty)));
    }
}

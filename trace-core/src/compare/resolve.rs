//! Turning reference steps into TRACE positions ([`StepId`]) comparable with captured paths.
//!
//! Legacy TRACE already prints positions. The nft formats print rule handles (or rule text)
//! and `policy`/chain-end events; positions come from the rulesets of the same netns:
//! - `nft -a list ruleset` maps a handle (or an nft rule text) to its position in the chain;
//! - without it, the iptables rule text xtables-monitor prints after the verdict is looked up
//!   in the iptables-save dump;
//! - the label follows legacy TRACE: a rule that is unconditional with a standard verdict is
//!   `policy:N` (built-in chain) / `return:N` (user chain), the chain end is N = rules + 1.
//!
//! A LOG line names no chain: its prefix is looked up among the dump's LOG rules.

use super::nft_ruleset::{normalize_rule_text, NftChain, NftRuleset};
use super::reference::{RefStep, RefStepPos};
use crate::netfilter::{Family, Table};
use crate::rules::{Chain, Ruleset, Target};
use crate::step::{StepId, StepKind};

/// Why a reference step has no position.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    #[error("line {line}: {table}:{chain} is identified by {what}; give the ruleset (--nft-ruleset from `nft -a list ruleset`, or --ruleset from iptables-save) to map it")]
    NeedRuleset {
        line: usize,
        table: Table,
        chain: String,
        what: &'static str,
    },
    #[error("line {line}: chain {table}:{chain} is not in the ruleset")]
    UnknownChain {
        line: usize,
        table: Table,
        chain: String,
    },
    #[error("line {line}: {table}:{chain} has no rule with handle {handle} in the nft ruleset")]
    UnknownHandle {
        line: usize,
        table: Table,
        chain: String,
        handle: u64,
    },
    #[error("line {line}: no rule in {table}:{chain} reads {text:?}")]
    UnknownRuleText {
        line: usize,
        table: Table,
        chain: String,
        text: String,
    },
    #[error("line {line}: {table}:{chain} has {nft} rules in the nft ruleset but {dump} in the iptables dump")]
    RulesetsDisagree {
        line: usize,
        table: Table,
        chain: String,
        nft: usize,
        dump: usize,
    },
}

/// The rulesets a comparison may use (either, both or none).
#[derive(Debug, Clone, Copy, Default)]
pub struct Resolver<'a> {
    pub dump: Option<&'a Ruleset>,
    pub nft: Option<&'a NftRuleset>,
    /// Family of the packet being resolved (set by [`Resolver::step_of_family`]).
    pub packet_family: Option<Family>,
}

impl<'a> Resolver<'a> {
    pub fn new(dump: Option<&'a Ruleset>, nft: Option<&'a NftRuleset>) -> Self {
        Resolver {
            dump,
            nft,
            packet_family: None,
        }
    }

    /// The family whose nft tables hold the rules: the dump's (one dump is one family), else
    /// the packet's.
    fn family(&self, packet: Option<Family>) -> Option<Family> {
        self.dump.map(|d| d.family).or(packet)
    }
}

/// Strips `-4 -t filter -A FORWARD` from xtables-monitor's rule text, leaving what
/// iptables-save prints after `-A CHAIN`.
pub fn iptables_rule_body(text: &str) -> String {
    let toks: Vec<&str> = text.split_whitespace().collect();
    let mut i = 0;
    while i < toks.len() {
        match toks[i] {
            "-4" | "-6" => i += 1,
            "-t" | "-A" | "-I" => i += 2,
            _ => break,
        }
    }
    toks[i..].join(" ")
}

impl<'a> Resolver<'a> {
    fn dump_chain(&self, table: Table, chain: &str) -> Option<&'a Chain> {
        self.dump?.table(table)?.chain(chain)
    }

    fn nft_chain(&self, table: Table, chain: &str) -> Option<&'a NftChain> {
        self.nft?
            .chain(self.family(self.packet_family), table.name(), chain)
    }

    /// The TRACE position of a reference step of a packet of `family` (None: unknown).
    pub fn step_of_family(
        &self,
        family: Option<Family>,
        s: &RefStep,
    ) -> Result<StepId, ResolveError> {
        Resolver {
            packet_family: family,
            ..*self
        }
        .step(s)
    }

    /// The TRACE position of a reference step.
    pub fn step(&self, s: &RefStep) -> Result<StepId, ResolveError> {
        let id = |kind, num| StepId {
            table: s.table,
            chain: s.chain.clone(),
            kind,
            num,
        };
        match &s.pos {
            RefStepPos::Numbered { kind, num } => Ok(id(*kind, *num)),
            RefStepPos::Policy => Ok(id(StepKind::Policy, self.rule_count(s)? + 1)),
            RefStepPos::EndOfChain => Ok(id(StepKind::Return, self.rule_count(s)? + 1)),
            RefStepPos::Handle { .. } | RefStepPos::RuleText { .. } => {
                let n = self.position(s)?;
                Ok(id(self.kind_at(s, n)?, n))
            }
        }
    }

    fn rule_count(&self, s: &RefStep) -> Result<u32, ResolveError> {
        let dump = self.dump_chain(s.table, &s.chain).map(|c| c.rules.len());
        let nft = self.nft_chain(s.table, &s.chain).map(|c| c.rules.len());
        match (dump, nft) {
            (Some(d), Some(n)) if d != n => Err(ResolveError::RulesetsDisagree {
                line: s.line,
                table: s.table,
                chain: s.chain.clone(),
                nft: n,
                dump: d,
            }),
            (Some(c), _) | (None, Some(c)) => Ok(c as u32),
            (None, None) if self.dump.is_none() && self.nft.is_none() => {
                Err(self.need(s, "a policy/chain end"))
            }
            (None, None) => Err(ResolveError::UnknownChain {
                line: s.line,
                table: s.table,
                chain: s.chain.clone(),
            }),
        }
    }

    fn need(&self, s: &RefStep, what: &'static str) -> ResolveError {
        ResolveError::NeedRuleset {
            line: s.line,
            table: s.table,
            chain: s.chain.clone(),
            what,
        }
    }

    /// 1-based position of a handle/text step.
    fn position(&self, s: &RefStep) -> Result<u32, ResolveError> {
        let unknown_chain = || ResolveError::UnknownChain {
            line: s.line,
            table: s.table,
            chain: s.chain.clone(),
        };
        if self.nft.is_some() {
            let chain = self
                .nft_chain(s.table, &s.chain)
                .ok_or_else(unknown_chain)?;
            return match &s.pos {
                RefStepPos::Handle { handle } => {
                    chain
                        .position_of_handle(*handle)
                        .ok_or_else(|| ResolveError::UnknownHandle {
                            line: s.line,
                            table: s.table,
                            chain: s.chain.clone(),
                            handle: *handle,
                        })
                }
                RefStepPos::RuleText { text } => chain
                    .position_of_text(text)
                    .ok_or_else(|| self.unknown_text(s, text)),
                _ => unreachable!("position() is only called for handle/text steps"),
            };
        }
        // No nft ruleset: xtables-monitor's iptables text identifies the rule in the dump.
        let text = match (&s.pos, &s.rule_text) {
            (RefStepPos::Handle { .. }, Some(t)) if t.starts_with('-') => iptables_rule_body(t),
            _ => return Err(self.need(s, "an nft rule handle or nft rule text")),
        };
        let chain = self.dump_chain(s.table, &s.chain).ok_or_else(|| {
            if self.dump.is_some() {
                unknown_chain()
            } else {
                self.need(s, "an nft rule handle")
            }
        })?;
        chain
            .rules
            .iter()
            .position(|r| normalize_ws(&r.text) == text)
            .map(|i| i as u32 + 1)
            .ok_or_else(|| self.unknown_text(s, &text))
    }

    fn unknown_text(&self, s: &RefStep, text: &str) -> ResolveError {
        ResolveError::UnknownRuleText {
            line: s.line,
            table: s.table,
            chain: s.chain.clone(),
            text: normalize_rule_text(text),
        }
    }

    /// TRACE's label for position `n`: from the dump when there is one (the parser knows
    /// iptables' `unconditional()`), else from the nft rule text.
    fn kind_at(&self, s: &RefStep, n: u32) -> Result<StepKind, ResolveError> {
        if let Some(chain) = self.dump_chain(s.table, &s.chain) {
            return chain
                .step_kind(n)
                .ok_or_else(|| ResolveError::UnknownChain {
                    line: s.line,
                    table: s.table,
                    chain: s.chain.clone(),
                });
        }
        let chain = self
            .nft_chain(s.table, &s.chain)
            .ok_or_else(|| self.need(s, "an nft rule handle"))?;
        let rule = &chain.rules[(n - 1) as usize];
        Ok(match (nft_ends_chain(&rule.text), chain.base) {
            (false, _) => StepKind::Rule,
            (true, true) => StepKind::Policy,
            (true, false) => StepKind::Return,
        })
    }

    /// The TRACE positions an nft chain-end (`return`) event of a packet of `family` may stand
    /// for. Kernels before 6.4-ish (Debian's 6.1 among them) trace both ways of leaving a
    /// chain as NFT_TRACETYPE_RETURN: falling off its end (verdict `continue`, no rule handle)
    /// and a `-j RETURN` rule (verdict `return`, rule handle attached). Neither
    /// xtables-monitor (`table:chain:return:`) nor `nft monitor trace` (`verdict return`)
    /// prints that handle, so the event narrows the position to: the chain end (rules + 1),
    /// unless the verdict says `return`; and every rule whose target is RETURN, unless the
    /// verdict says `continue` — each labelled as legacy TRACE labels it (`return:N` for an
    /// unconditional one, `rule:N` otherwise). The chain end comes first when it is possible.
    pub fn chain_end_candidates(
        &self,
        family: Option<Family>,
        s: &RefStep,
    ) -> Result<Vec<StepId>, ResolveError> {
        let r = Resolver {
            packet_family: family,
            ..*self
        };
        let end = r.step(&RefStep {
            pos: RefStepPos::EndOfChain,
            ..s.clone()
        })?;
        let verdict = s.verdict.as_deref().map(str::to_ascii_lowercase);
        let (explicit, implicit) = match verdict.as_deref() {
            Some("continue") => (false, true),
            Some("return") | Some("0xfffffffb") => (true, false),
            _ => (true, true),
        };
        let mut out = Vec::new();
        if implicit {
            out.push(end.clone());
        }
        if explicit {
            for n in r.return_rules(s) {
                out.push(StepId {
                    table: s.table,
                    chain: s.chain.clone(),
                    kind: r.kind_at(s, n)?,
                    num: n,
                });
            }
        }
        if out.is_empty() {
            out.push(end);
        }
        Ok(out)
    }

    /// 1-based positions of the rules of `s`'s chain whose target is RETURN.
    fn return_rules(&self, s: &RefStep) -> Vec<u32> {
        let pos = |i: usize| i as u32 + 1;
        if let Some(c) = self.dump_chain(s.table, &s.chain) {
            return c
                .rules
                .iter()
                .enumerate()
                .filter(|(_, r)| matches!(r.target, Target::Return))
                .map(|(i, _)| pos(i))
                .collect();
        }
        let Some(c) = self.nft_chain(s.table, &s.chain) else {
            return Vec::new();
        };
        c.rules
            .iter()
            .enumerate()
            .filter(|(_, r)| r.text.split_whitespace().last() == Some("return"))
            .map(|(i, _)| pos(i))
            .collect()
    }

    /// Whether `id` is the end of a user chain (`return:N`, N = rules + 1) in the rulesets
    /// given: the step legacy TRACE prints and nf_tables traces do not. None when no ruleset
    /// knows the chain. For captured packets whose producer did not mark implicit returns.
    pub fn is_implicit_return(&self, id: &StepId) -> Option<bool> {
        if id.kind != StepKind::Return {
            return Some(false);
        }
        let rules = self
            .dump_chain(id.table, &id.chain)
            .map(|c| c.rules.len())
            .or_else(|| self.nft_chain(id.table, &id.chain).map(|c| c.rules.len()))?;
        Some(id.num as usize == rules + 1)
    }

    /// TRACE positions of the LOG rules whose prefix is `prefix` (as printed: the kernel
    /// prints the configured prefix verbatim; no prefix prints nothing).
    pub fn log_rules(&self, prefix: &str) -> Vec<StepId> {
        let Some(dump) = self.dump else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for t in &dump.tables {
            for c in &t.chains {
                for (i, r) in c.rules.iter().enumerate() {
                    let Target::Log(log) = &r.target else {
                        continue;
                    };
                    if log.prefix.as_deref().unwrap_or("") == prefix {
                        out.extend(c.step(t.table, i as u32 + 1));
                    }
                }
            }
        }
        out
    }
}

fn normalize_ws(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// An nft rule that iptables-nft generated from an unconditional standard-verdict rule:
/// nothing but an optional counter and the verdict.
fn nft_ends_chain(text: &str) -> bool {
    let toks: Vec<&str> = text
        .split_whitespace()
        .filter(|t| *t != "counter")
        .collect();
    matches!(
        toks.as_slice(),
        ["accept"] | ["drop"] | ["return"] | ["queue"]
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compare::nft_ruleset;

    fn step(table: Table, chain: &str, pos: RefStepPos, text: Option<&str>) -> RefStep {
        RefStep {
            table,
            chain: chain.into(),
            pos,
            verdict: None,
            rule_text: text.map(String::from),
            line: 1,
        }
    }

    #[test]
    fn maps_handles_policies_and_chain_ends_with_the_nft_ruleset() {
        let rs = nft_ruleset::parse("table ip filter {\n chain FORWARD { # handle 2\n  type filter hook forward priority filter; policy drop;\n  counter packets 1 bytes 2 jump U # handle 8\n  oifname \"x\" accept # handle 9\n  counter accept # handle 10\n }\n chain U { # handle 3\n  counter packets 0 bytes 0 return # handle 11\n  iifname \"y\" drop # handle 12\n }\n}\n").unwrap();
        let r = Resolver::new(None, Some(&rs));
        let f = Table::Filter;
        let s = |c: &str, p| r.step(&step(f, c, p, None)).unwrap().to_string();
        assert_eq!(
            s("FORWARD", RefStepPos::Handle { handle: 8 }),
            "filter:FORWARD:rule:1"
        );
        assert_eq!(
            s("FORWARD", RefStepPos::Handle { handle: 10 }),
            "filter:FORWARD:policy:3"
        );
        assert_eq!(
            s("U", RefStepPos::Handle { handle: 11 }),
            "filter:U:return:1"
        );
        assert_eq!(
            s(
                "U",
                RefStepPos::RuleText {
                    text: "iifname \"y\" drop".into()
                }
            ),
            "filter:U:rule:2"
        );
        assert_eq!(s("FORWARD", RefStepPos::Policy), "filter:FORWARD:policy:4");
        assert_eq!(s("U", RefStepPos::EndOfChain), "filter:U:return:3");
        assert!(matches!(
            r.step(&step(f, "U", RefStepPos::Handle { handle: 99 }, None)),
            Err(ResolveError::UnknownHandle { .. })
        ));
        assert!(matches!(
            r.step(&step(f, "NOPE", RefStepPos::Policy, None)),
            Err(ResolveError::UnknownChain { .. })
        ));
    }

    #[test]
    fn chain_ends_are_implicit_returns_explicit_return_rules_are_not() {
        let dump = crate::rules::parse("*filter\n:INPUT ACCEPT [0:0]\n:U - [0:0]\n:E - [0:0]\n-A U -p tcp -j DROP\n-A U -j RETURN\n-A U -p udp\nCOMMIT\n").unwrap();
        let r = Resolver::new(Some(&dump), None);
        let is = |s: &str| r.is_implicit_return(&s.parse().unwrap());
        assert_eq!(is("filter:U:return:4"), Some(true));
        assert_eq!(is("filter:E:return:1"), Some(true));
        assert_eq!(is("filter:U:return:2"), Some(false));
        assert_eq!(is("filter:INPUT:policy:1"), Some(false));
        assert_eq!(is("filter:NOPE:return:1"), None);
        let nft = nft_ruleset::parse(
            "table ip filter {\n chain U { # handle 3\n  counter return # handle 11\n }\n}\n",
        )
        .unwrap();
        let r = Resolver::new(None, Some(&nft));
        assert_eq!(
            r.is_implicit_return(&"filter:U:return:2".parse().unwrap()),
            Some(true)
        );
        assert_eq!(
            r.is_implicit_return(&"filter:U:return:1".parse().unwrap()),
            Some(false)
        );
    }

    #[test]
    fn needs_a_ruleset_for_handles_but_not_for_numbered_steps() {
        let r = Resolver::default();
        let num = step(
            Table::Raw,
            "PREROUTING",
            RefStepPos::Numbered {
                kind: StepKind::Policy,
                num: 2,
            },
            None,
        );
        assert_eq!(r.step(&num).unwrap().to_string(), "raw:PREROUTING:policy:2");
        let h = step(
            Table::Raw,
            "PREROUTING",
            RefStepPos::Handle { handle: 3 },
            Some("-4 -t raw -A PREROUTING -j TRACE"),
        );
        assert!(matches!(r.step(&h), Err(ResolveError::NeedRuleset { .. })));
    }

    #[test]
    fn strips_xtables_monitor_rule_prefix() {
        assert_eq!(
            iptables_rule_body("-4 -t filter -A FORWARD -o br-x -j DOCKER"),
            "-o br-x -j DOCKER"
        );
    }
}

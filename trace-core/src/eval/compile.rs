//! A table dump prepared for fast replay: chains indexed by name, jump targets resolved to
//! chain indices, the `ipt_ip` part of each rule pre-masked as integers, TRACE labels
//! precomputed. The model stays the source of truth for match modules and targets.

use super::{ip_bits, Pkt, RuleMatch, Run, TableVerdict};
use crate::netfilter::Hook;
use crate::rules::matches::MatchKind;
use crate::rules::targets::Target;
use crate::rules::{Iface, Negatable, Policy, Proto, Rule, Ruleset};
use crate::step::StepKind;
use std::collections::HashMap;

#[derive(Debug)]
pub(super) struct CTable {
    /// Index of the table in `Ruleset::tables`.
    pub dump: usize,
    pub chains: Vec<CChain>,
    /// The built-in chain each hook starts at, by [`Hook::num`]: looked up once per table
    /// pass, so resolved here instead of hashing the chain name every time.
    hook_chains: [Option<u32>; 5],
}

#[derive(Debug)]
pub(super) struct CChain {
    /// Some(verdict) for built-in chains.
    pub policy: Option<TableVerdict>,
    pub end_kind: StepKind,
    pub rules: Vec<CRule>,
    /// For long chains of `-d ADDR/32` rules (kube-proxy's KUBE-SERVICES) or `-s ADDR/32` rules
    /// (block lists): which rules can match a given address. Skipping the others is exact —
    /// a rule whose address differs can neither match nor print anything.
    pub addr_index: Option<AddrIndex>,
}

/// Which packet address an [`AddrIndex`] is keyed by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum IndexedField {
    Src,
    Dst,
}

/// Positions of the rules with an exact, non-negated address in the indexed field, by
/// address; and of every other rule. Both sorted.
#[derive(Debug)]
pub(super) struct AddrIndex {
    pub field: IndexedField,
    by_addr: HashMap<u128, Vec<u32>>,
    general: Vec<u32>,
}

/// Chains with at least this many exact-address rules get an index.
const INDEX_MIN_RULES: usize = 32;

impl AddrIndex {
    /// The better of a source and a destination index (the one leaving fewer rules to scan
    /// for every packet).
    fn build(rules: &[CRule], family_bits: u32) -> Option<AddrIndex> {
        let dst = Self::build_on(rules, family_bits, IndexedField::Dst);
        let src = Self::build_on(rules, family_bits, IndexedField::Src);
        match (dst, src) {
            (Some(d), Some(s)) => Some(if s.general.len() < d.general.len() {
                s
            } else {
                d
            }),
            (d, s) => d.or(s),
        }
    }

    fn build_on(rules: &[CRule], family_bits: u32, field: IndexedField) -> Option<AddrIndex> {
        let full: u128 = if family_bits == 32 {
            u32::MAX as u128
        } else {
            u128::MAX
        };
        let mut by_addr: HashMap<u128, Vec<u32>> = HashMap::new();
        let mut general = Vec::new();
        for (i, r) in rules.iter().enumerate() {
            let test = match field {
                IndexedField::Dst => r.dst,
                IndexedField::Src => r.src,
            };
            match test {
                Some(t) if !t.negated && t.mask == full => {
                    by_addr.entry(t.net).or_default().push(i as u32)
                }
                _ => general.push(i as u32),
            }
        }
        let exact = rules.len() - general.len();
        (exact >= INDEX_MIN_RULES).then_some(AddrIndex {
            field,
            by_addr,
            general,
        })
    }

    /// The first position >= `pos` whose rule may match a packet with `addr` in the indexed
    /// field (`len` = the chain end when none).
    pub fn next(&self, pos: u32, addr: u128, len: u32) -> u32 {
        let from = |v: &[u32]| {
            v.get(v.partition_point(|&p| p < pos))
                .copied()
                .unwrap_or(len)
        };
        let g = from(&self.general);
        match self.by_addr.get(&addr) {
            Some(v) => g.min(from(v)),
            None => g,
        }
    }
}

/// `(addr & mask) == net`, negated or not.
#[derive(Debug, Clone, Copy)]
pub(super) struct NetTest {
    net: u128,
    mask: u128,
    negated: bool,
}

#[derive(Debug)]
pub(super) struct CRule {
    src: Option<NetTest>,
    dst: Option<NetTest>,
    proto: Option<(u8, bool)>,
    in_iface: Option<Negatable<Iface>>,
    out_iface: Option<Negatable<Iface>>,
    fragment: Option<bool>,
    has_matches: bool,
    /// A `-m recent` among the matches (its effects are tracked per path).
    pub has_recent: bool,
    pub kind: StepKind,
    pub target: CTarget,
}

/// Targets the traversal handles itself; everything else goes to `targets::apply`.
#[derive(Debug)]
pub(super) enum CTarget {
    Verdict(TableVerdict),
    Return,
    Jump(u32),
    Goto(u32),
    Missing(String),
    Extension,
}

impl CTable {
    pub fn build(rs: &Ruleset, dump: usize) -> CTable {
        let td = &rs.tables[dump];
        let by_name: HashMap<String, u32> = td
            .chains
            .iter()
            .enumerate()
            .map(|(i, c)| (c.name.clone(), i as u32))
            .collect();
        let bits = if rs.family == crate::netfilter::Family::Ipv4 {
            32
        } else {
            128
        };
        let chains: Vec<CChain> = td
            .chains
            .iter()
            .map(|c| {
                let rules: Vec<CRule> = c
                    .rules
                    .iter()
                    .enumerate()
                    .map(|(i, r)| {
                        compile_rule(
                            r,
                            c.step_kind(i as u32 + 1).unwrap_or(StepKind::Rule),
                            &by_name,
                        )
                    })
                    .collect();
                CChain {
                    policy: c.policy.map(|p| match p {
                        Policy::Accept => TableVerdict::Accept,
                        Policy::Drop => TableVerdict::Drop,
                    }),
                    end_kind: if c.is_builtin() {
                        StepKind::Policy
                    } else {
                        StepKind::Return
                    },
                    addr_index: AddrIndex::build(&rules, bits),
                    rules,
                }
            })
            .collect();
        let hook_chains = Hook::ALL.map(|hook| {
            let i = *by_name.get(hook.chain_name())?;
            chains[i as usize].policy.is_some().then_some(i)
        });
        CTable {
            dump,
            chains,
            hook_chains,
        }
    }

    pub fn hook_chain(&self, hook: Hook) -> Option<u32> {
        self.hook_chains[hook.num() as usize]
    }

    pub fn model_rule<'r>(&self, rs: &'r Ruleset, chain: u32, pos: u32) -> &'r Rule {
        &rs.tables[self.dump].chains[chain as usize].rules[pos as usize]
    }
}

fn net_test(n: &Option<Negatable<crate::rules::IpNet>>) -> Option<NetTest> {
    let n = n.as_ref()?;
    Some(NetTest {
        net: ip_bits(n.value.addr),
        mask: ip_bits(n.value.mask),
        negated: n.negated,
    })
}

fn compile_rule(r: &Rule, kind: StepKind, by_name: &HashMap<String, u32>) -> CRule {
    let proto = r.protocol.as_ref().and_then(|p| match p.value {
        Proto::All => None,
        Proto::Num(n) => Some((n, p.negated)),
    });
    let target = match &r.target {
        Target::Accept => CTarget::Verdict(TableVerdict::Accept),
        Target::Drop => CTarget::Verdict(TableVerdict::Drop),
        Target::Queue => CTarget::Verdict(TableVerdict::Queue { bypass: false }),
        Target::Return => CTarget::Return,
        Target::Jump(c) | Target::Goto(c) => match by_name.get(c) {
            Some(&i) if matches!(r.target, Target::Goto(_)) || r.goto => CTarget::Goto(i),
            Some(&i) => CTarget::Jump(i),
            None => CTarget::Missing(c.clone()),
        },
        _ => CTarget::Extension,
    };
    CRule {
        src: net_test(&r.src),
        dst: net_test(&r.dst),
        proto,
        in_iface: r.in_iface.clone(),
        out_iface: r.out_iface.clone(),
        fragment: r.fragment.as_ref().map(|f| !f.negated),
        has_matches: !r.matches.is_empty(),
        has_recent: r
            .matches
            .iter()
            .any(|m| matches!(m.kind, MatchKind::Recent(_))),
        kind,
        target,
    }
}

impl NetTest {
    fn test(&self, addr: u128) -> bool {
        ((addr & self.mask) == self.net) != self.negated
    }
}

/// ip_packet_match / ip6_packet_match.
pub(super) fn ip_part_matches(r: &CRule, p: &Pkt<'_>) -> bool {
    if r.src.is_some_and(|t| !t.test(p.src)) || r.dst.is_some_and(|t| !t.test(p.dst)) {
        return false;
    }
    if let Some(i) = &r.in_iface {
        if !i.apply(i.value.matches(p.in_dev)) {
            return false;
        }
    }
    if let Some(o) = &r.out_iface {
        if !o.apply(o.value.matches(p.out_dev)) {
            return false;
        }
    }
    if let Some((n, neg)) = r.proto {
        if (p.h.proto == n) == neg {
            return false;
        }
    }
    if let Some(want_frag) = r.fragment {
        if super::matches::is_later_fragment(p.h) != want_frag {
            return false;
        }
    }
    true
}

impl Run<'_> {
    /// Whether the rule under consideration matches: the ip part, then each module.
    pub(super) fn match_rule(&self, chain: u32, pos: u32, st: &super::PathState) -> RuleMatch {
        let r = &self.t.chains[chain as usize].rules[pos as usize];
        if !ip_part_matches(r, self.pkt) {
            return RuleMatch::No;
        }
        if !r.has_matches {
            return RuleMatch::Yes;
        }
        let model = self.t.model_rule(&self.ev.ruleset, chain, pos);
        let mut undecided = Vec::new();
        // Decidable matches first: any false one settles the rule without a branch (the
        // conjunction does not depend on order; xt matches have no effect on this packet).
        for m in &model.matches {
            let decided = match &m.kind {
                MatchKind::Set(set) if self.ev.sets_changed_by_rules.contains(&set.name) => {
                    use super::matches::{
                        set_snapshot, SET_CHANGED, SET_CHANGED_NO, SET_CHANGED_YES,
                    };
                    let snap = self
                        .ctx
                        .ipsets
                        .as_ref()
                        .and_then(|s| set_snapshot(set, self.pkt, s));
                    super::matches::Tri::Unknown(match snap {
                        Some(true) => SET_CHANGED_YES,
                        Some(false) => SET_CHANGED_NO,
                        None => SET_CHANGED,
                    })
                }
                _ => super::matches::decide(m, self.pkt, st, self.ctx),
            };
            match decided {
                super::matches::Tri::True => {}
                super::matches::Tri::False => return RuleMatch::No,
                super::matches::Tri::Unknown(why) => {
                    let why = match &m.kind {
                        MatchKind::Recent(r) if !self.ev.recent_lists_set.contains(&r.name) => {
                            super::matches::RECENT_LIST_UNSET
                        }
                        _ => why,
                    };
                    undecided.push(format!("-m {} ({why})", m.module))
                }
            }
        }
        if undecided.is_empty() {
            RuleMatch::Yes
        } else {
            RuleMatch::Maybe(undecided)
        }
    }
}

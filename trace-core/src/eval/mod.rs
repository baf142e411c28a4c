//! The evaluator: replays ONE table traversal for a packet with the semantics of the kernel's
//! `ipt_do_table` / `ip6t_do_table` (net/ipv4/netfilter/ip_tables.c, ip6_tables.c):
//!
//! - entries are tried in order; a rule matches when its `ipt_ip` part (addresses with masks,
//!   interfaces with `+` wildcards, protocol, `-f`, each with its `!`) and then every match
//!   module match;
//! - a matching rule is what TRACE prints (`rule:N`, or `policy:N`/`return:N` for an
//!   unconditional standard-verdict rule — the model's [`crate::rules::Chain::step_kind`]);
//! - `-j CHAIN` pushes the position on the jump stack, `-g CHAIN` does not; RETURN (or the end
//!   of a user chain) pops it, and with an empty stack continues at the hook chain's policy
//!   entry (the kernel's `underflow`), which TRACE prints as `policy:N`;
//! - non-terminating targets (MARK, CONNMARK, DSCP, TOS, LOG, TRACE, ...) update the packet
//!   state and continue; terminal ones end the traversal with their verdict (NAT targets
//!   accept after recording the translation they ask for).
//!
//! Matches that the captured packet cannot decide (statistic, limit, set contents, ...) are
//! branch points: both outcomes are explored and every resulting path is returned as a
//! [`Candidate`], with the assumptions it rests on. Reconstruction then keeps the candidates
//! that agree with what the kernel was observed doing.

mod compile;
pub mod context;
pub mod ipset;
mod matches;
mod recent;
mod targets;

pub use context::{IfaceAddr, NetContext};

use crate::event::{CtSnapshot, Headers};
use crate::netfilter::{Family, Hook, Table};
use crate::packet::PacketState;
use crate::rules::targets::{MasqueradeTarget, NatTarget};
use crate::rules::{IpNet, Ruleset};
use crate::step::{StepId, StepKind};
use compile::{CRule, CTable, CTarget};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// At most this many candidate paths per table traversal; more are cut (and said so).
pub const MAX_CANDIDATES: usize = 64;
/// Steps after which a traversal is declared looping (the kernel rejects loops at load time,
/// so only a hand-edited dump can get here).
const MAX_STEPS: usize = 100_000;

/// Errors that make a table impossible to replay at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EvalError {
    #[error("table {table} is not in the rule dump")]
    MissingTable { table: Table },
    #[error("chain {table}:{chain} (the {hook} hook's chain) is not in the rule dump")]
    MissingHookChain {
        table: Table,
        chain: String,
        hook: Hook,
    },
}

/// The packet as one table sees it, plus the hook context.
#[derive(Debug, Clone, Copy)]
pub struct EvalInput<'a> {
    pub hook: Hook,
    pub in_dev: Option<&'a str>,
    pub out_dev: Option<&'a str>,
    /// Link-layer header (dst mac, src mac, ethertype) of a received packet.
    pub mac: Option<&'a [u8]>,
    /// Socket owner of a local packet, when known.
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub state: &'a PacketState,
    /// skb->nf_trace was already set (by a TRACE target in an earlier table).
    pub nf_trace: bool,
    /// The conntrack entry's tuples where the traversal shows them (`--ctorig*`/`--ctrepl*`).
    pub tuples: CtTuples,
    /// What the kernel's routing decision says about the packet's destination as this table
    /// sees it: Some(true) delivered locally, Some(false) routed elsewhere, None unknown. Used
    /// by `-m addrtype` when the netns's addresses are not known.
    pub dst_local: Option<bool>,
    /// br_netfilter's bridge ports (`-m physdev`); None: not captured.
    pub bridge: Option<&'a crate::event::BridgeInfo>,
}

/// One direction of a conntrack entry (addresses, and ports for port protocols).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Tuple {
    pub src: Option<std::net::IpAddr>,
    pub dst: Option<std::net::IpAddr>,
    pub sport: Option<u16>,
    pub dport: Option<u16>,
}

impl Tuple {
    pub fn of(h: &Headers) -> Tuple {
        let (sport, dport) = h.l4.ports().unzip();
        Tuple {
            src: Some(h.src),
            dst: Some(h.dst),
            sport,
            dport,
        }
    }

    /// The other direction of the same flow.
    pub fn inverse(&self) -> Tuple {
        Tuple {
            src: self.dst,
            dst: self.src,
            sport: self.dport,
            dport: self.sport,
        }
    }
}

/// What is known of ct->tuplehash[ORIGINAL] / [REPLY] (None: unknown, a branch point).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CtTuples {
    pub orig: Option<Tuple>,
    pub reply: Option<Tuple>,
}

/// How a table traversal ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum TableVerdict {
    Accept,
    Drop,
    /// NF_QUEUE (QUEUE or NFQUEUE); `bypass` lets the packet through when nobody listens.
    Queue {
        bypass: bool,
    },
    /// A target iptrace does not model stopped the traversal with a verdict it cannot know.
    Unknown {
        target: String,
    },
    /// The path jumps to a chain the dump does not have (a broken or edited dump).
    Broken {
        reason: String,
    },
}

impl TableVerdict {
    pub fn as_str(&self) -> &str {
        match self {
            TableVerdict::Accept => "ACCEPT",
            TableVerdict::Drop => "DROP",
            TableVerdict::Queue { .. } => "QUEUE",
            TableVerdict::Unknown { target } => target,
            TableVerdict::Broken { .. } => "BROKEN",
        }
    }
}

/// A translation a NAT target asked for (applied by conntrack after the table).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum NatRequest {
    Dnat(NatTarget),
    Snat(NatTarget),
    Masquerade(MasqueradeTarget),
    Redirect(MasqueradeTarget),
    Netmap { to: IpNet },
}

/// One TRACE position on a candidate path, with the packet state the kernel would log there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepRec {
    /// Index of the chain in the table dump's `chains`.
    pub chain: u32,
    /// 1-based TRACE number (`rules + 1` for the chain end).
    pub num: u32,
    pub kind: StepKind,
    /// skb->mark, TOS and TTL at this step (rules before it may have changed them).
    pub mark: u32,
    pub tos: u8,
    pub ttl: u8,
    /// skb->nf_trace was set when this step was reached: the kernel's TRACE prints it.
    pub traced: bool,
}

/// skb mark, TOS and TTL where a path tries a rule ([`StepRec`] records them at each step;
/// the rules tried before a step see that step's values).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateAt {
    pub mark: u32,
    pub tos: u8,
    pub ttl: u8,
}

/// Modules that match on IPv6 extension headers (routing, fragment, hop-by-hop,
/// destination options, mobility). The capture does not record extension headers, so these
/// matches are branch points; ordinary packets carry none of those headers, and a missing
/// header makes the match false (ipv6_find_hdr → -ENOENT, whatever the options).
const EXTENSION_HEADER_MODULES: &[&str] = &["rt", "frag", "hbh", "dst", "mh"];

/// True when the assumption is "a match that ordinary traffic does not satisfy matched": an
/// extension-header match, a `recent` check of a list no rule of the ruleset adds to, a
/// transparent-socket lookup, a set a SET target changes against what its snapshot says
/// (either way), a source over a hashlimit/connlimit `-above` limit.
/// When several undecidable modules of one rule were assumed to match, one such module is
/// enough to make the assumption implausible.
fn assumes_unusual_match(a: &Assumption) -> bool {
    let because = |w: &String, why: &str| w.ends_with(&format!("({why})"));
    let unusual_if_matched = |w: &String| {
        EXTENSION_HEADER_MODULES
            .iter()
            .any(|m| w.starts_with(&format!("-m {m} (")))
            || because(w, matches::RECENT_LIST_UNSET)
            || because(w, matches::SET_CHANGED_NO)
            || because(w, matches::SOCKET_TRANSPARENT)
            || because(w, matches::OVER_LIMIT)
    };
    if a.matched {
        a.what.iter().any(unusual_if_matched)
    } else {
        // "At least one did not match" is unusual only when every one was expected to.
        !a.what.is_empty() && a.what.iter().all(|w| because(w, matches::SET_CHANGED_YES))
    }
}

/// How many of a path's assumptions are implausible for ordinary traffic (a match ordinary
/// traffic does not satisfy assumed matched, see `assumes_unusual_match`): the lower, the
/// more plausible the path. Orders undecided paths for display; which paths
/// exist and the table's status do not change.
pub fn implausible_assumptions(assumptions: &[Assumption]) -> usize {
    assumptions
        .iter()
        .filter(|a| assumes_unusual_match(a))
        .count()
}

/// Candidates in order of plausibility (stable otherwise), see [`implausible_assumptions`].
fn order_by_plausibility(out: &mut [Candidate]) {
    out.sort_by_key(|c| implausible_assumptions(&c.assumptions));
}

/// An assumption a candidate path rests on: the undecidable matches of one rule matched
/// (`matched = true`) or at least one of them did not; or an unknown target continued.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assumption {
    pub chain: String,
    /// 1-based rule number.
    pub rule: u32,
    /// The undecidable modules (or `-j TARGET`) and why they are undecidable.
    pub what: Vec<String>,
    pub matched: bool,
}

/// One possible path through the table.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub steps: Vec<StepRec>,
    pub verdict: TableVerdict,
    /// Packet state when the table returns (before conntrack applies a NAT request).
    pub mark: u32,
    pub ctmark: Option<u32>,
    pub tos: u8,
    pub ttl: u8,
    /// NAT translation requested, with the index in `steps` of the rule that asked for it.
    pub nat: Option<(usize, NatRequest)>,
    /// A TRACE target ran on this path (nf_trace is set from then on).
    pub sets_trace: bool,
    /// CT --notrack / NOTRACK ran.
    pub notrack: bool,
    pub assumptions: Vec<Assumption>,
}

/// Every path the table may have taken for the packet.
#[derive(Debug, Clone, PartialEq)]
pub struct Traversal {
    pub table: Table,
    pub candidates: Vec<Candidate>,
    /// More than [`MAX_CANDIDATES`] paths existed; the rest were not explored.
    pub truncated: bool,
}

/// A ruleset prepared for evaluation (chains indexed by name, jumps resolved, addresses
/// pre-masked). Cheap to share: clone the `Arc`.
#[derive(Debug)]
pub struct Evaluator {
    ruleset: Arc<Ruleset>,
    tables: Vec<Option<CTable>>,
    /// Names of the `recent` lists some rule adds addresses to (`--set`, in any table).
    recent_lists_set: std::collections::HashSet<String>,
    /// ipsets a `-j SET --add-set/--del-set` rule changes: their contents depend on earlier
    /// packets, not on the snapshot the capture read.
    sets_changed_by_rules: std::collections::HashSet<String>,
}

/// The per-path mutable state.
#[derive(Debug, Clone)]
struct PathState {
    mark: u32,
    ctmark: Option<u32>,
    tos: u8,
    ttl: u8,
    nf_trace: bool,
    sets_trace: bool,
    notrack: bool,
    /// The TCP MSS option value a TCPMSS target wrote (None: the options as captured).
    mss: Option<u16>,
    /// What the rules passed so far say about the packet's `recent` entries.
    recent: recent::Facts,
}

#[derive(Debug, Clone)]
struct Cursor {
    chain: u32,
    /// 0-based entry index; `rules.len()` is the implicit chain end.
    pos: u32,
    stack: Vec<(u32, u32)>,
    st: PathState,
    steps: Vec<StepRec>,
    assumptions: Vec<Assumption>,
    nat: Option<(usize, NatRequest)>,
}

/// What matching one rule decided.
enum RuleMatch {
    Yes,
    No,
    /// Decidable parts matched; these modules could not be decided.
    Maybe(Vec<String>),
}

/// Read-only view of the packet for match decisions.
pub(crate) struct Pkt<'a> {
    pub family: Family,
    pub tuples: CtTuples,
    pub dst_local: Option<bool>,
    pub h: &'a Headers,
    pub src: u128,
    pub dst: u128,
    pub in_dev: &'a str,
    pub out_dev: &'a str,
    pub has_in: bool,
    pub mac: Option<&'a [u8]>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub ct: Option<CtSnapshot>,
    pub bridge: Option<&'a crate::event::BridgeInfo>,
}

impl<'a> Pkt<'a> {
    fn of(input: &EvalInput<'a>) -> Pkt<'a> {
        let h = &input.state.headers;
        Pkt {
            family: h.family(),
            tuples: input.tuples,
            dst_local: input.dst_local,
            h,
            src: ip_bits(h.src),
            dst: ip_bits(h.dst),
            in_dev: input.in_dev.unwrap_or(""),
            out_dev: input.out_dev.unwrap_or(""),
            has_in: input.in_dev.is_some(),
            mac: input.mac,
            uid: input.uid,
            gid: input.gid,
            ct: input.state.ct,
            bridge: input.bridge,
        }
    }
}

/// The `recent` lists a rule of the ruleset adds to: `--set` (also `! --set`, which adds the
/// entry and then fails to match). `--update` only refreshes an existing entry.
fn recent_lists_set(rs: &Ruleset) -> std::collections::HashSet<String> {
    use crate::rules::matches::{MatchKind, RecentMode};
    rs.rules()
        .flat_map(|r| &r.matches)
        .filter_map(|m| match &m.kind {
            MatchKind::Recent(r) if r.mode == Some(RecentMode::Set) => Some(r.name.clone()),
            _ => None,
        })
        .collect()
}

/// The ipsets a `SET` target of the ruleset adds to or deletes from (the target is kept
/// verbatim: its `--add-set NAME` / `--del-set NAME` words).
fn sets_changed_by_rules(rs: &Ruleset) -> std::collections::HashSet<String> {
    rs.rules()
        .flat_map(|r| {
            let w: Vec<&str> = r.text.split_whitespace().collect();
            let changed: Vec<String> = w
                .windows(2)
                .filter(|p| p[0] == "--add-set" || p[0] == "--del-set")
                .map(|p| p[1].trim_matches('"').to_string())
                .collect();
            changed
        })
        .collect()
}

pub fn ip_bits(ip: std::net::IpAddr) -> u128 {
    match ip {
        std::net::IpAddr::V4(a) => u32::from(a) as u128,
        std::net::IpAddr::V6(a) => u128::from(a),
    }
}

impl Evaluator {
    pub fn new(ruleset: Ruleset) -> Self {
        Self::from_arc(Arc::new(ruleset))
    }

    pub fn from_arc(ruleset: Arc<Ruleset>) -> Self {
        let tables = Table::ALL
            .iter()
            .map(|t| {
                ruleset
                    .tables
                    .iter()
                    .position(|d| d.table == *t)
                    .map(|i| CTable::build(&ruleset, i))
            })
            .collect();
        let recent_lists_set = recent_lists_set(&ruleset);
        let sets_changed_by_rules = sets_changed_by_rules(&ruleset);
        Evaluator {
            ruleset,
            tables,
            recent_lists_set,
            sets_changed_by_rules,
        }
    }

    pub fn ruleset(&self) -> &Ruleset {
        &self.ruleset
    }

    pub fn ruleset_arc(&self) -> &Arc<Ruleset> {
        &self.ruleset
    }

    /// The TRACE position of a step of `table`.
    pub fn step_id(&self, table: Table, step: &StepRec) -> StepId {
        let chain = self.chain_name(table, step.chain).to_string();
        StepId {
            table,
            chain,
            kind: step.kind,
            num: step.num,
        }
    }

    pub fn chain_name(&self, table: Table, chain: u32) -> &str {
        self.ctable(table).map_or("?", |t| {
            self.ruleset.tables[t.dump].chains[chain as usize]
                .name
                .as_str()
        })
    }

    /// The rule text (`-A` arguments) of a step; None for a chain end.
    pub fn rule_text(&self, table: Table, step: &StepRec) -> Option<&str> {
        let t = self.ctable(table)?;
        let chain = &self.ruleset.tables[t.dump].chains[step.chain as usize];
        chain
            .rules
            .get(step.num as usize - 1)
            .map(|r| r.text.as_str())
    }

    fn ctable(&self, table: Table) -> Option<&CTable> {
        self.tables[table as usize].as_ref()
    }

    /// The rules `from..to` (1-based numbers) of chain `chain` (index in the dump's `chains`)
    /// whose `ipt_ip` part matches the packet as `input` shows it (ip_packet_match), in
    /// order: the only ones the kernel calls any match or target function for (rule
    /// positions check this). Uses the chain's address index like the replay. Empty when the
    /// chain is not in the dump.
    pub fn ip_part_passing(
        &self,
        table: Table,
        chain: usize,
        from: u32,
        to: u32,
        input: &EvalInput<'_>,
    ) -> Vec<u32> {
        let Some(c) = self.ctable(table).and_then(|t| t.chains.get(chain)) else {
            return Vec::new();
        };
        let pkt = Pkt::of(input);
        let len = c.rules.len() as u32;
        let end = to.saturating_sub(1).min(len);
        let mut pos = from.saturating_sub(1);
        let mut out = Vec::new();
        while pos < end {
            if let Some(idx) = &c.addr_index {
                let addr = match idx.field {
                    compile::IndexedField::Dst => pkt.dst,
                    compile::IndexedField::Src => pkt.src,
                };
                pos = idx.next(pos, addr, len);
                if pos >= end {
                    break;
                }
            }
            if compile::ip_part_matches(&c.rules[pos as usize], &pkt) {
                out.push(pos + 1);
            }
            pos += 1;
        }
        out
    }

    /// The evaluator's result for each match of rule `num` (1-based) of chain `chain` (index
    /// in the dump's `chains`), in the rule's order: Some when the capture decides it, None
    /// for a branch point. `at`: skb mark, TOS and TTL where the path tries the rule; the
    /// conntrack entry and its mark are the table's input ones. Rule positions compare these
    /// with the kernel's match results. None when the rule is not in the dump.
    pub fn match_results(
        &self,
        table: Table,
        chain: usize,
        num: u32,
        input: &EvalInput<'_>,
        at: StateAt,
        ctx: &NetContext,
    ) -> Option<Vec<Option<bool>>> {
        let t = self.ctable(table)?;
        let rules = &self.ruleset.tables[t.dump].chains.get(chain)?.rules;
        let rule = rules.get((num as usize).checked_sub(1)?)?;
        let pkt = Pkt::of(input);
        let st = PathState {
            mark: at.mark,
            ctmark: input.state.ct.filter(|c| c.ctinfo != 7).map(|c| c.mark),
            tos: at.tos,
            ttl: at.ttl,
            nf_trace: input.nf_trace,
            sets_trace: false,
            notrack: false,
            mss: None,
            recent: Default::default(),
        };
        let results = rule
            .matches
            .iter()
            .map(|m| match matches::decide(m, &pkt, &st, ctx) {
                matches::Tri::True => Some(true),
                matches::Tri::False => Some(false),
                matches::Tri::Unknown(_) => None,
            });
        Some(results.collect())
    }

    /// Replays `table` on `hook` for the packet: every candidate path.
    pub fn evaluate(
        &self,
        table: Table,
        input: &EvalInput<'_>,
        ctx: &NetContext,
    ) -> Result<Traversal, EvalError> {
        let ct = self
            .ctable(table)
            .ok_or(EvalError::MissingTable { table })?;
        let start = ct
            .hook_chain(input.hook)
            .ok_or_else(|| EvalError::MissingHookChain {
                table,
                chain: input.hook.chain_name().to_string(),
                hook: input.hook,
            })?;
        let h = &input.state.headers;
        let pkt = Pkt::of(input);
        let st = PathState {
            mark: input.state.mark,
            ctmark: input.state.ct.filter(|c| c.ctinfo != 7).map(|c| c.mark),
            tos: h.tos,
            ttl: h.ttl,
            nf_trace: input.nf_trace,
            sets_trace: false,
            notrack: false,
            mss: None,
            recent: Default::default(),
        };
        let first = Cursor {
            chain: start,
            pos: 0,
            stack: Vec::new(),
            st,
            steps: Vec::new(),
            assumptions: Vec::new(),
            nat: None,
        };
        let mut run = Run {
            ev: self,
            t: ct,
            table,
            pkt: &pkt,
            ctx,
            start,
            work: Vec::new(),
            out: Vec::with_capacity(1),
            truncated: false,
        };
        // The first cursor runs directly (what `drain` would pop first anyway): most tables
        // never fork, and then the worklist is never allocated nor the cursor moved twice.
        let done = run.walk(first);
        run.out.push(done);
        run.drain();
        order_by_plausibility(&mut run.out);
        Ok(Traversal {
            table,
            candidates: run.out,
            truncated: run.truncated,
        })
    }
}

/// One evaluation: a worklist of cursors (forks) and the finished candidates.
struct Run<'a> {
    ev: &'a Evaluator,
    t: &'a CTable,
    table: Table,
    pkt: &'a Pkt<'a>,
    ctx: &'a NetContext,
    start: u32,
    work: Vec<Cursor>,
    out: Vec<Candidate>,
    truncated: bool,
}

impl Run<'_> {
    fn drain(&mut self) {
        while let Some(c) = self.work.pop() {
            if self.out.len() >= MAX_CANDIDATES {
                self.truncated = true;
                return;
            }
            let done = self.walk(c);
            self.out.push(done);
        }
    }

    fn rules(&self, chain: u32) -> &[CRule] {
        &self.t.chains[chain as usize].rules
    }

    fn push_step(&self, c: &mut Cursor, kind: StepKind) {
        c.steps.push(StepRec {
            chain: c.chain,
            num: c.pos + 1,
            kind,
            mark: c.st.mark,
            tos: c.st.tos,
            ttl: c.st.ttl,
            traced: c.st.nf_trace,
        });
    }

    /// Runs one cursor to the end of the table, queueing forks on the worklist.
    fn walk(&mut self, mut c: Cursor) -> Candidate {
        loop {
            if c.steps.len() > MAX_STEPS {
                return finish(
                    c,
                    TableVerdict::Broken {
                        reason: "traversal does not terminate (chain loop)".into(),
                    },
                );
            }
            let chain = &self.t.chains[c.chain as usize];
            if let Some(idx) = &chain.addr_index {
                let addr = match idx.field {
                    compile::IndexedField::Dst => self.pkt.dst,
                    compile::IndexedField::Src => self.pkt.src,
                };
                c.pos = idx.next(c.pos, addr, chain.rules.len() as u32);
            }
            if c.pos as usize == chain.rules.len() {
                self.push_step(&mut c, chain.end_kind);
                match chain.policy.clone() {
                    Some(v) => return finish(c, v),
                    None => {
                        self.do_return(&mut c);
                        continue;
                    }
                }
            }
            let (kind, has_recent) = {
                let r = &self.rules(c.chain)[c.pos as usize];
                (r.kind, r.has_recent)
            };
            let model = has_recent.then(|| self.t.model_rule(&self.ev.ruleset, c.chain, c.pos));
            match self.match_rule(c.chain, c.pos, &c.st) {
                RuleMatch::No => {
                    if let Some(m) = model {
                        c.st.recent.rule_failed(&m.matches, false);
                    }
                    c.pos += 1;
                    continue;
                }
                RuleMatch::Yes => {
                    if let Some(m) = model {
                        c.st.recent.rule_matched(&m.matches);
                    }
                }
                RuleMatch::Maybe(what) => {
                    let mut alt = c.clone();
                    if let Some(m) = model {
                        let only_recent = what.len() == 1 && what[0].starts_with("-m recent (");
                        alt.st.recent.rule_failed(&m.matches, only_recent);
                        c.st.recent.rule_matched(&m.matches);
                    }
                    alt.assumptions
                        .push(self.assumption(&c, what.clone(), false));
                    alt.pos += 1;
                    self.work.push(alt);
                    let a = self.assumption(&c, what, true);
                    c.assumptions.push(a);
                }
            }
            self.push_step(&mut c, kind);
            if let Some(verdict) = self.apply_target(&mut c) {
                return finish(c, verdict);
            }
        }
    }

    fn assumption(&self, c: &Cursor, what: Vec<String>, matched: bool) -> Assumption {
        Assumption {
            chain: self.ev.chain_name(self.table, c.chain).to_string(),
            rule: c.pos + 1,
            what,
            matched,
        }
    }

    /// RETURN: pop the jump stack, or continue at the hook chain's policy entry.
    fn do_return(&self, c: &mut Cursor) {
        match c.stack.pop() {
            Some((chain, pos)) => {
                c.chain = chain;
                c.pos = pos;
            }
            None => {
                c.chain = self.start;
                c.pos = self.rules(self.start).len() as u32;
            }
        }
    }

    /// Runs the target of the rule under the cursor; Some(verdict) ends the traversal.
    fn apply_target(&mut self, c: &mut Cursor) -> Option<TableVerdict> {
        let rule = &self.rules(c.chain)[c.pos as usize];
        match &rule.target {
            CTarget::Verdict(v) => Some(v.clone()),
            CTarget::Return => {
                self.do_return(c);
                None
            }
            CTarget::Jump(to) => {
                c.stack.push((c.chain, c.pos + 1));
                c.chain = *to;
                c.pos = 0;
                None
            }
            CTarget::Goto(to) => {
                c.chain = *to;
                c.pos = 0;
                None
            }
            CTarget::Missing(name) => Some(TableVerdict::Broken {
                reason: format!("jump to chain `{name}` which the dump does not define"),
            }),
            CTarget::Extension => {
                let model = self.t.model_rule(&self.ev.ruleset, c.chain, c.pos);
                targets::apply(self, c, model)
            }
        }
    }
}

fn finish(c: Cursor, verdict: TableVerdict) -> Candidate {
    Candidate {
        steps: c.steps,
        verdict,
        mark: c.st.mark,
        ctmark: c.st.ctmark,
        tos: c.st.tos,
        ttl: c.st.ttl,
        nat: c.nat,
        sets_trace: c.st.sets_trace,
        notrack: c.st.notrack,
        assumptions: c.assumptions,
    }
}

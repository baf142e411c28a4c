//! Exact legacy rule positions as evidence (issue 6 item 3): the kernel's x_tables match and
//! target calls for one table traversal, mapped to chain:rule by the collector, check the
//! evaluator's path and resolve its branch points; the match calls that returned false show
//! which rules were evaluated without matching, and which of their matches failed.
//!
//! What the kernel calls (ipt_do_table / ip6t_do_table): for each entry it reaches, the
//! `ipt_ip` part is tested inline (no call); when it passes, every match function in order
//! until one returns false; when all returned true, the target function — but only for a
//! non-standard target (a standard verdict, jump, goto, RETURN or fall-through is handled
//! inline). So rules with only an IP part and a standard target are invisible: the evaluator
//! fills them in and the calls must merely be consistent with them.
//!
//! The input, one [`TablePositions`] per `ipt_do_table` run, is produced by the capture
//! backends that probe the x_tables functions (kprobe today); without it nothing here runs
//! and reconstruction is unchanged.

use super::{Path, Status, TableResult};
use crate::eval::{EvalInput, Evaluator};
use crate::netfilter::{Hook, Table};
use crate::packet::{HookPass, PacketTrace, TableObservation};
use crate::rules::targets::Target;
use crate::rules::{Chain, Rule, TableDump};
use crate::step::StepId;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};

/// One x_tables call the kernel made while traversing a table, mapped to its rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleCall {
    /// The chain of the entry (user chain name or built-in chain name).
    pub chain: String,
    /// 1-based rule number in the chain (TRACE numbering); None for a built-in chain's
    /// policy entry (whose standard target never calls anything: such a call is an error).
    pub rule: Option<u32>,
    pub call: XtCall,
}

/// What was called at a rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum XtCall {
    /// A match function returned: `index` is the match's 0-based position among the rule's
    /// matches (blob order = iptables-save's `-m` order, implicit `-p tcp` matches included);
    /// `name` is the kernel's match name (for display; `-m state` is `conntrack` there).
    Match {
        index: u32,
        name: String,
        matched: bool,
    },
    /// The rule's (non-standard) target function ran: every match returned true.
    Target { name: String },
}

/// The calls of one table traversal (one `ipt_do_table` run), in the kernel's order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TablePositions {
    pub hook: Hook,
    pub table: Table,
    pub calls: Vec<RuleCall>,
    /// Every match and target function the table's rules use was probed, and no record of
    /// this traversal was lost. Only complete positions confirm or rule out paths; incomplete
    /// ones still report the failed matches they saw.
    pub complete: bool,
}

/// What the rule positions showed about one table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PositionsCheck {
    /// x_tables calls observed.
    pub calls: usize,
    pub complete: bool,
    pub agreement: Agreement,
    /// Rules evaluated that did not match, with the first match that returned false, in
    /// the kernel's order.
    pub failed: Vec<FailedMatch>,
}

/// Whether the reconstructed path agrees with the kernel's calls.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "agreement", rename_all = "snake_case")]
pub enum Agreement {
    /// The path (the only one left) makes exactly these calls.
    Agree,
    /// No candidate path makes these calls (`reason` names the first chain:rule that differs).
    Disagree { reason: String },
    /// Not compared (incomplete positions, a table already inconsistent, ...).
    Unchecked { why: String },
}

impl Agreement {
    pub fn as_str(&self) -> &'static str {
        match self {
            Agreement::Agree => "agree",
            Agreement::Disagree { .. } => "disagree",
            Agreement::Unchecked { .. } => "unchecked",
        }
    }
}

/// A rule the kernel evaluated without matching: the match that returned false.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedMatch {
    /// `table:chain:rule:N` (the rule's TRACE label, had it matched).
    pub rule: StepId,
    /// The rule (`-A` arguments) from the dump; None when the dump does not have it.
    pub rule_text: Option<String>,
    /// 0-based position of the failed match among the rule's matches.
    pub index: u32,
    /// The match as the dump writes it (`-m tcp --dport 22`), else the kernel's name.
    pub what: String,
}

/// Positions reported before their packet is reconstructed, keyed by traversal
/// (netns, skb, generation). Bounded: the oldest traversals are dropped (and counted) when
/// more than `capacity` wait — a packet the filter or the assembler never completes.
#[derive(Debug)]
pub struct PositionStore {
    by_key: HashMap<(u32, u64, u64), Vec<TablePositions>>,
    order: VecDeque<(u32, u64, u64)>,
    capacity: usize,
    /// Traversals dropped unused because the store was full.
    pub evicted: u64,
    /// Table traversals handed to reconstruction.
    pub used: u64,
}

impl Default for PositionStore {
    fn default() -> Self {
        Self::with_capacity(8192)
    }
}

impl PositionStore {
    pub fn with_capacity(capacity: usize) -> Self {
        PositionStore {
            by_key: HashMap::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
            evicted: 0,
            used: 0,
        }
    }

    /// Keeps one table traversal of the skb `(netns, skb, gen)` until its packet completes.
    pub fn insert(&mut self, netns: u32, skb: u64, gen: u64, tp: TablePositions) {
        let key = (netns, skb, gen);
        if let Some(v) = self.by_key.get_mut(&key) {
            v.push(tp);
            return;
        }
        while self.by_key.len() >= self.capacity {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            if self.by_key.remove(&old).is_some() {
                self.evicted += 1;
            }
        }
        self.by_key.insert(key, vec![tp]);
        self.order.push_back(key);
    }

    /// Streaming input (records in ring-buffer order): a table traversal of the skb begins
    /// (its BASE record); its calls follow with [`PositionStore::push_call`].
    pub fn begin_table(
        &mut self,
        netns: u32,
        skb: u64,
        gen: u64,
        hook: Hook,
        table: Table,
        complete: bool,
    ) {
        let tp = TablePositions {
            hook,
            table,
            calls: Vec::new(),
            complete,
        };
        self.insert(netns, skb, gen, tp);
    }

    /// Streaming input: a call of the skb's latest table traversal. Returns the traversal
    /// (e.g. to clear `complete` when a record cannot be placed), None when none began (or it
    /// was evicted): the call is dropped.
    pub fn push_call(
        &mut self,
        netns: u32,
        skb: u64,
        gen: u64,
        call: RuleCall,
    ) -> Option<&mut TablePositions> {
        let tp = self.by_key.get_mut(&(netns, skb, gen))?.last_mut()?;
        tp.calls.push(call);
        Some(tp)
    }

    /// The traversals of `packet`'s (hook, table) passes, removed from the store (a packet
    /// looped back through `lo` shares skb and generation with its first half: only the
    /// passes it has are taken).
    pub fn take(&mut self, packet: &PacketTrace) -> Vec<TablePositions> {
        let key = (packet.netns, packet.skb, packet.gen);
        let Some(v) = self.by_key.get_mut(&key) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for hp in &packet.hooks {
            for obs in &hp.tables {
                if let Some(i) = v
                    .iter()
                    .position(|t| t.hook == hp.hook && t.table == obs.table)
                {
                    out.push(v.remove(i));
                }
            }
        }
        if v.is_empty() {
            self.by_key.remove(&key);
            self.order.retain(|k| *k != key);
        }
        self.used += out.len() as u64;
        out
    }

    /// Traversals waiting.
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }
}

/// Applies the rule positions of a packet's table traversals to its reconstruction (`ev`:
/// the evaluator it was reconstructed with). Tables without positions are left as they are;
/// the packet's status is recomputed.
pub fn apply(rp: &mut super::ReconstructedPacket, ev: &Evaluator, positions: &[TablePositions]) {
    if positions.is_empty() {
        return;
    }
    let super::ReconstructedPacket { packet, hooks, .. } = rp;
    for (rh, hp) in hooks.iter_mut().zip(&packet.hooks) {
        for (tr, obs) in rh.tables.iter_mut().zip(&hp.tables) {
            if let Some(tp) = positions
                .iter()
                .find(|t| t.hook == rh.hook && t.table == tr.table)
            {
                check_table(tr, ev, &table_input(hp, obs), tp);
            }
        }
    }
    rp.status = rp
        .hooks
        .iter()
        .flat_map(|h| &h.tables)
        .map(|t| t.status)
        .max()
        .unwrap_or(Status::Confirmed);
}

/// The packet as the table saw it (only the `ipt_ip` part is tested with it here).
pub fn table_input<'a>(hp: &'a HookPass, obs: &'a TableObservation) -> EvalInput<'a> {
    EvalInput {
        hook: hp.hook,
        in_dev: hp.in_dev.as_deref(),
        out_dev: hp.out_dev.as_deref(),
        mac: hp.mac.as_deref(),
        uid: hp.uid,
        gid: hp.gid,
        state: &obs.before,
        nf_trace: false,
        tuples: Default::default(),
        dst_local: None,
    }
}

/// Checks one table's paths against its positions: paths that would make other calls are
/// ruled out (which resolves branch points: the observed match result decides); none left
/// makes the table inconsistent, naming the first chain:rule that differs.
pub fn check_table(
    tr: &mut TableResult,
    ev: &Evaluator,
    input: &EvalInput<'_>,
    tp: &TablePositions,
) {
    let groups = group(&tp.calls);
    let dump = ev.ruleset().table(tr.table);
    let failed = dump.map_or_else(Vec::new, |d| failed_matches(d, &groups));
    let cx = dump.map(|dump| Cx {
        ev,
        dump,
        input,
        hook: tp.hook,
    });
    let agreement = agreement(tr, cx.as_ref(), tp, &groups);
    tr.positions = Some(PositionsCheck {
        calls: tp.calls.len(),
        complete: tp.complete,
        agreement,
        failed,
    });
}

/// What a path is checked against besides the calls.
struct Cx<'a> {
    ev: &'a Evaluator,
    dump: &'a TableDump,
    input: &'a EvalInput<'a>,
    hook: Hook,
}

impl Cx<'_> {
    /// The evaluator's ip_packet_match for a visited rule (None: unknown).
    fn ip_part(&self, v: &Visit<'_>) -> Option<bool> {
        self.ev
            .ip_part_matches(self.dump.table, v.chain_index, v.num, self.input)
    }
}

/// Compares, filters the paths, and updates the table's status.
fn agreement(
    tr: &mut TableResult,
    cx: Option<&Cx<'_>>,
    tp: &TablePositions,
    groups: &[Group<'_>],
) -> Agreement {
    if tr.skipped {
        return match groups.first() {
            Some(g) => {
                let reason = format!(
                    "rule positions: the kernel evaluated {} although the table was not traversed",
                    g.label(tr.table)
                );
                tr.status = Status::Inconsistent;
                tr.reason = Some(reason.clone());
                Agreement::Disagree { reason }
            }
            None => Agreement::Unchecked {
                why: "table not traversed".into(),
            },
        };
    }
    let unchecked = |why: &str| Agreement::Unchecked { why: why.into() };
    let Some(cx) = cx else {
        return unchecked("the rule dump has no such table");
    };
    if !tp.complete {
        return unchecked("incomplete positions (unprobed functions or lost records)");
    }
    if tr.paths.is_empty() {
        return unchecked("no path to compare (the table could not be replayed)");
    }
    let verdicts: Vec<Result<(), String>> = tr
        .paths
        .iter()
        .map(|p| path_agrees(cx, p, groups))
        .collect();
    if tr.status == Status::Inconsistent {
        // Still worth knowing which evaluated path the kernel took.
        let fit: Vec<String> = (1..=verdicts.len())
            .filter(|i| verdicts[i - 1].is_ok())
            .map(|i| i.to_string())
            .collect();
        return unchecked(&match fit.len() {
            0 => "inconsistent with the kernel's other evidence; the calls fit none of the evaluated paths".to_string(),
            _ => format!(
                "inconsistent with the kernel's other evidence; the calls fit evaluated path {}",
                fit.join(", ")
            ),
        });
    }
    if tr.truncated && verdicts.iter().all(Result::is_err) {
        // The path the kernel took may be among those not explored.
        return unchecked(&format!(
            "the calls fit none of the {} paths explored; more exist",
            verdicts.len()
        ));
    }
    let mut kept = Vec::new();
    let mut first_reason = None;
    for (mut p, v) in std::mem::take(&mut tr.paths).into_iter().zip(verdicts) {
        if let Err(why) = v {
            first_reason.get_or_insert_with(|| why.clone());
            p.rejected = Some(format!("rule positions: {why}"));
            tr.ruled_out += 1;
        }
        kept.push(p);
    }
    let (agree, rejected): (Vec<Path>, Vec<Path>) =
        kept.into_iter().partition(|p| p.rejected.is_none());
    if agree.is_empty() {
        let reason = format!(
            "rule positions: {}",
            first_reason.unwrap_or_else(|| "no path".into())
        );
        tr.paths = rejected;
        tr.status = Status::Inconsistent;
        tr.reason = Some(reason.clone());
        return Agreement::Disagree { reason };
    }
    tr.paths = agree;
    if super::count_distinct_step_lists(&tr.paths) == 1 {
        if tr.truncated {
            // Paths not explored differ from this one at a branch point; if every branch
            // point is a match, its observed result rules them out too. (An unmodelled
            // target's verdict is not observed.)
            let match_branches_only = tr.paths.iter().all(|p| {
                p.assumptions
                    .iter()
                    .all(|a| a.what.iter().all(|w| w.starts_with("-m ")))
            });
            if !match_branches_only {
                return Agreement::Agree;
            }
            tr.reason = Some(format!(
                "more than {} paths, not all explored: the kernel's match results decide every branch point",
                crate::eval::MAX_CANDIDATES
            ));
        } else if tr.status == Status::Ambiguous {
            tr.reason = None;
        }
        tr.status = Status::Confirmed;
    }
    Agreement::Agree
}

/// Consecutive calls for one evaluation of one rule.
#[derive(Debug)]
struct Group<'a> {
    chain: &'a str,
    rule: Option<u32>,
    calls: Vec<&'a XtCall>,
}

impl Group<'_> {
    fn label(&self, table: Table) -> String {
        match self.rule {
            Some(n) => format!("{table}:{}:rule:{n}", self.chain),
            None => format!("{table}:{}:policy", self.chain),
        }
    }

    /// The kernel's outcome for the rule: Some(false) a match returned false, Some(true) the
    /// target ran, None only matches that returned true (complete or not).
    fn outcome(&self) -> Option<bool> {
        match self.calls.last() {
            Some(XtCall::Match { matched: false, .. }) => Some(false),
            Some(XtCall::Target { .. }) => Some(true),
            _ => None,
        }
    }
}

/// Splits the calls into rule evaluations: a new one starts at another rule, after a target
/// or a failed match, or when match indices start over (the same rule reached again).
fn group(calls: &[RuleCall]) -> Vec<Group<'_>> {
    let mut out: Vec<Group<'_>> = Vec::new();
    for c in calls {
        let same = out.last().is_some_and(|g| {
            g.chain == c.chain
                && g.rule == c.rule
                && g.outcome().is_none()
                && match (&c.call, g.calls.last()) {
                    (XtCall::Match { index, .. }, Some(XtCall::Match { index: prev, .. })) => {
                        index > prev
                    }
                    (XtCall::Target { .. }, _) => true,
                    _ => false,
                }
        });
        if same {
            out.last_mut().expect("checked").calls.push(&c.call);
        } else {
            out.push(Group {
                chain: &c.chain,
                rule: c.rule,
                calls: vec![&c.call],
            });
        }
    }
    out
}

/// The failed matches the calls show, with the rule and match text from the dump.
fn failed_matches(dump: &TableDump, groups: &[Group<'_>]) -> Vec<FailedMatch> {
    groups
        .iter()
        .filter_map(|g| {
            let Some(XtCall::Match {
                index,
                name,
                matched: false,
            }) = g.calls.last()
            else {
                return None;
            };
            let n = g.rule?;
            let chain = dump.chain(g.chain);
            let rule = chain.and_then(|c| c.rules.get(n as usize - 1));
            let what = rule
                .and_then(|r| r.matches.get(*index as usize))
                .map_or_else(|| format!("-m {name}"), match_text);
            Some(FailedMatch {
                rule: chain.and_then(|c| c.step(dump.table, n)).unwrap_or(StepId {
                    table: dump.table,
                    chain: g.chain.to_string(),
                    kind: crate::step::StepKind::Rule,
                    num: n,
                }),
                rule_text: rule.map(|r| r.text.clone()),
                index: *index,
                what,
            })
        })
        .collect()
}

fn match_text(m: &crate::rules::matches::Match) -> String {
    let mut s = format!("-m {}", m.module);
    for a in &m.args {
        s.push(' ');
        s.push_str(a);
    }
    s
}

/// True when the rule's target is a function the kernel calls (not a standard verdict,
/// jump, goto, RETURN or fall-through).
fn calls_target(t: &Target) -> bool {
    !matches!(
        t,
        Target::None
            | Target::Accept
            | Target::Drop
            | Target::Return
            | Target::Queue
            | Target::Jump(_)
            | Target::Goto(_)
    )
}

/// One rule the path evaluates, in order.
#[derive(Debug, Clone, Copy)]
struct Visit<'r> {
    chain: &'r Chain,
    /// Index of `chain` in the dump's chains.
    chain_index: usize,
    /// 1-based rule number.
    num: u32,
    /// The rule (None for a chain end: the policy or user-chain RETURN entry).
    rule: Option<&'r Rule>,
    matched: bool,
}

/// Every entry the path evaluates, in the kernel's order: the rules before each step that
/// did not match, the steps themselves (following jumps, gotos and returns as
/// ipt_do_table does).
fn visits<'r>(dump: &'r TableDump, hook: Hook, path: &Path) -> Result<Vec<Visit<'r>>, String> {
    let index_of = |name: &str| {
        dump.chain_index(name)
            .ok_or_else(|| format!("chain {name} is not in the dump"))
    };
    let start = index_of(hook.chain_name())?;
    // (chain index, rules before the next one to evaluate), as the kernel's jump stack.
    let (mut cur, mut pos) = (start, 0u32);
    let mut stack: Vec<(usize, u32)> = Vec::new();
    let ret = |stack: &mut Vec<(usize, u32)>| {
        stack
            .pop()
            .unwrap_or((start, dump.chains[start].rules.len() as u32))
    };
    let mut out = Vec::new();
    for (i, s) in path.steps.iter().enumerate() {
        let chain = &dump.chains[cur];
        let n = s.id.num;
        if s.id.chain != chain.name || n <= pos {
            return Err(format!("cannot follow the path at {}", s.id));
        }
        let visit = |num: u32, matched: bool| Visit {
            chain,
            chain_index: cur,
            num,
            rule: chain.rules.get(num as usize - 1),
            matched,
        };
        out.extend((pos + 1..n.min(chain.end_num())).map(|k| visit(k, false)));
        out.push(visit(n, true));
        let Some(rule) = chain.rules.get(n as usize - 1) else {
            // The chain end: the policy ends the path, a user chain returns.
            (cur, pos) = ret(&mut stack);
            continue;
        };
        if i + 1 == path.steps.len() {
            break;
        }
        (cur, pos) = match &rule.target {
            Target::Jump(c) | Target::Goto(c) => {
                if !rule.goto && matches!(rule.target, Target::Jump(_)) {
                    stack.push((cur, n));
                }
                (index_of(c)?, 0)
            }
            Target::Return => ret(&mut stack),
            _ => (cur, n),
        };
    }
    Ok(out)
}

/// Ok when the path makes exactly the calls observed; else the first difference.
fn path_agrees(cx: &Cx<'_>, path: &Path, groups: &[Group<'_>]) -> Result<(), String> {
    let visits = visits(cx.dump, cx.hook, path)?;
    let table = cx.dump.table;
    // Last index of each (chain, rule) on the path: a call at a rule the path no longer
    // reaches is reported as such at once.
    let mut last: HashMap<(&str, u32), usize> = HashMap::new();
    for (i, v) in visits.iter().enumerate() {
        last.insert((v.chain.name.as_str(), v.num), i);
    }
    let mut j = 0;
    for (i, v) in visits.iter().enumerate() {
        let label = || format!("{table}:{}:rule:{}", v.chain.name, v.num);
        let g = groups.get(j);
        let here = g.is_some_and(|g| g.chain == v.chain.name && g.rule == Some(v.num));
        if !here {
            if let Some(g) = g {
                let reached = g
                    .rule
                    .and_then(|n| last.get(&(g.chain, n)))
                    .is_some_and(|&k| k > i);
                if !reached {
                    return Err(format!(
                        "the kernel evaluated {}, which this path does not reach{}",
                        g.label(table),
                        after(&visits[..i], table)
                    ));
                }
            }
            if let Some(r) = v.rule.filter(|r| v.matched && visible(r)) {
                return Err(format!(
                    "the path matches {} ({}), but the kernel called none of its {}",
                    label(),
                    r.text,
                    if r.matches.is_empty() {
                        "target"
                    } else {
                        "matches"
                    }
                ));
            }
            // A rule the path evaluates without matching calls nothing only when its IP
            // part fails.
            if let Some(m) = v.rule.and_then(|r| r.matches.first()) {
                if !v.matched && cx.ip_part(v) == Some(true) {
                    return Err(format!(
                        "{}: its IP part matches the packet, so the kernel would have called its match #1 ({}), but it called nothing there",
                        label(),
                        match_text(m)
                    ));
                }
            }
            continue;
        }
        let g = &groups[j];
        j += 1;
        let Some(rule) = v.rule else {
            return Err(format!(
                "the kernel made a call at the end of chain {}",
                v.chain.name
            ));
        };
        if !v.matched && cx.ip_part(v) == Some(false) {
            return Err(format!(
                "{}: the kernel called its matches, but its IP part does not match the packet",
                label()
            ));
        }
        group_fits(g, rule, v.matched).map_err(|why| format!("{}: {why}", label()))?;
    }
    match groups.get(j) {
        None => Ok(()),
        Some(g) => Err(format!(
            "the kernel evaluated {}, which this path does not reach (it ends{})",
            g.label(table),
            after(&visits, table)
        )),
    }
}

/// ` (after chain:rule)` for the last visit, or nothing.
fn after(visits: &[Visit<'_>], table: Table) -> String {
    visits.last().map_or_else(String::new, |v| {
        format!(" (after {table}:{}:rule:{})", v.chain.name, v.num)
    })
}

/// The rule calls something when it is reached and its IP part matches.
fn visible(r: &Rule) -> bool {
    !r.matches.is_empty() || calls_target(&r.target)
}

/// One evaluation's calls against the model rule and whether the path has it matching.
fn group_fits(g: &Group<'_>, rule: &Rule, matched: bool) -> Result<(), String> {
    let n = rule.matches.len() as u32;
    for (k, c) in g.calls.iter().enumerate() {
        match c {
            XtCall::Match { index, .. } if *index != k as u32 || *index >= n => {
                return Err(format!(
                    "the kernel reports match #{} where the dump's rule has {n} matches (stale dump?)",
                    index + 1
                ))
            }
            XtCall::Target { .. } if k as u32 != n || !calls_target(&rule.target) => {
                return Err(format!(
                    "the kernel ran a target after {k} of the rule's {n} matches (stale dump?)"
                ))
            }
            _ => {}
        }
    }
    let kernel_matched = match g.outcome() {
        Some(m) => m,
        // Every match returned true and the target is standard: the rule matched.
        None if g.calls.len() as u32 == n && !calls_target(&rule.target) => true,
        None => {
            return Err(format!(
                "the kernel's calls stop after match #{} returned true",
                g.calls.len()
            ))
        }
    };
    match (kernel_matched, matched) {
        (true, false) => Err("the kernel matched it, this path does not".into()),
        (false, true) => {
            let (idx, name) = match g.calls.last() {
                Some(XtCall::Match { index, name, .. }) => (*index, name.as_str()),
                _ => (0, "?"),
            };
            let what = rule
                .matches
                .get(idx as usize)
                .map_or_else(|| format!("-m {name}"), match_text);
            Err(format!(
                "this path matches it, but the kernel's match #{} ({what}) returned false",
                idx + 1
            ))
        }
        _ => Ok(()),
    }
}

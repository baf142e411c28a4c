//! The entries a candidate path evaluates, in ipt_do_table's order (rules that did not
//! match before each step, the steps, through jumps, gotos and returns), and whether the
//! kernel's calls fit them rule by rule.

use super::{match_text, RuleCall, XtCall};
use crate::eval::{EvalInput, Evaluator, NetContext, StateAt};
use crate::netfilter::{Hook, Table};
use crate::reconstruct::Path;
use crate::rules::targets::Target;
use crate::rules::{Chain, Rule, TableDump};

/// What a path is checked against besides the calls.
pub(super) struct Cx<'a> {
    pub ev: &'a Evaluator,
    pub dump: &'a TableDump,
    pub input: &'a EvalInput<'a>,
    pub ctx: &'a NetContext,
    pub hook: Hook,
}

impl Cx<'_> {
    /// The evaluator's result for each match of a visited rule (None: a branch point, or
    /// the conntrack state changed on the path before it).
    fn match_results(&self, v: &Visit<'_>) -> Vec<Option<bool>> {
        let n = v.rule.map_or(0, |r| r.matches.len());
        if v.ct_changed {
            return vec![None; n];
        }
        self.ev
            .match_results(
                self.dump.table,
                v.chain_index,
                v.num,
                self.input,
                v.at,
                self.ctx,
            )
            .unwrap_or_else(|| vec![None; n])
    }
}

/// Consecutive calls for one evaluation of one rule.
#[derive(Debug)]
pub(super) struct Group<'a> {
    pub chain: &'a str,
    pub rule: Option<u32>,
    pub calls: Vec<&'a XtCall>,
}

impl Group<'_> {
    pub fn label(&self, table: Table) -> String {
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
pub(super) fn group(calls: &[RuleCall]) -> Vec<Group<'_>> {
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
    /// skb mark, TOS, TTL when the path tries the rule.
    at: StateAt,
    /// A CONNMARK / CT / NOTRACK target ran on the path before: the conntrack mark or
    /// entry the rule sees is not the table's input one.
    ct_changed: bool,
}

/// What the path evaluates, in the kernel's order: the rules before each step that did not
/// match but whose IP part passes (the others call nothing), and the steps themselves
/// (following jumps, gotos and returns as ipt_do_table does); `tried` holds every range of
/// rules the path goes through (chain index, first, last), to tell a rule whose IP part
/// failed from one the path never reaches.
struct Walk<'r> {
    visits: Vec<Visit<'r>>,
    tried: Vec<(usize, u32, u32)>,
}

impl Walk<'_> {
    fn tried(&self, dump: &TableDump, chain: &str, num: u32) -> bool {
        self.tried
            .iter()
            .any(|&(c, lo, hi)| dump.chains[c].name == chain && (lo..=hi).contains(&num))
    }
}

fn walk<'r>(cx: &Cx<'r>, path: &Path) -> Result<Walk<'r>, String> {
    let dump = cx.dump;
    let index_of = |name: &str| {
        dump.chain_index(name)
            .ok_or_else(|| format!("chain {name} is not in the dump"))
    };
    let start = index_of(cx.hook.chain_name())?;
    // (chain index, rules before the next one to evaluate), as the kernel's jump stack.
    let (mut cur, mut pos) = (start, 0u32);
    let mut stack: Vec<(usize, u32)> = Vec::new();
    let mut ct_changed = false;
    let ret = |stack: &mut Vec<(usize, u32)>| {
        stack
            .pop()
            .unwrap_or((start, dump.chains[start].rules.len() as u32))
    };
    let mut w = Walk {
        visits: Vec::new(),
        tried: Vec::new(),
    };
    for (i, s) in path.steps.iter().enumerate() {
        let chain = &dump.chains[cur];
        let n = s.id.num;
        if s.id.chain != chain.name || n <= pos {
            return Err(format!("cannot follow the path at {}", s.id));
        }
        let at = StateAt {
            mark: s.mark,
            tos: s.tos,
            ttl: s.ttl,
        };
        let visit = |num: u32, matched: bool| Visit {
            chain,
            chain_index: cur,
            num,
            rule: chain.rules.get(num as usize - 1),
            matched,
            at,
            ct_changed,
        };
        let passing = cx.ev.ip_part_passing(dump.table, cur, pos + 1, n, cx.input);
        w.visits
            .extend(passing.into_iter().map(|k| visit(k, false)));
        w.visits.push(visit(n, true));
        w.tried.push((cur, pos + 1, n));
        let Some(rule) = chain.rules.get(n as usize - 1) else {
            // The chain end: the policy ends the path, a user chain returns.
            (cur, pos) = ret(&mut stack);
            continue;
        };
        if i + 1 == path.steps.len() {
            break;
        }
        ct_changed |= matches!(
            rule.target,
            Target::Connmark(_) | Target::Ct(_) | Target::Notrack
        );
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
    Ok(w)
}

/// Ok when the path makes exactly the calls observed — with, for each rule evaluation in
/// `groups`, the index of the path step it precedes (or is) — else the first difference.
pub(super) fn path_agrees(
    cx: &Cx<'_>,
    path: &Path,
    groups: &[Group<'_>],
) -> Result<Vec<usize>, String> {
    let w = walk(cx, path)?;
    let visits = &w.visits;
    let (mut i, mut steps_before) = (0, 0);
    let mut placed = Vec::with_capacity(groups.len());
    for g in groups {
        // The visits up to g's rule call nothing; then g's must fit it.
        loop {
            let Some(v) = visits.get(i) else {
                return Err(unreached(cx, &w, g, i));
            };
            i += 1;
            if g.chain == v.chain.name && g.rule == Some(v.num) {
                observed(cx, v, g)?;
                placed.push(steps_before);
                steps_before += v.matched as usize;
                break;
            }
            steps_before += v.matched as usize;
            if let Err(why) = unobserved(cx, v) {
                // A call at a rule the path never gets to explains more.
                let later = visits[i..]
                    .iter()
                    .any(|v| g.chain == v.chain.name && g.rule == Some(v.num));
                return Err(if later {
                    why
                } else {
                    unreached(cx, &w, g, i - 1)
                });
            }
        }
    }
    for v in &visits[i..] {
        unobserved(cx, v)?;
    }
    Ok(placed)
}

/// Why the kernel's evaluation `g` has no place on the path after `visits[..i]`.
fn unreached(cx: &Cx<'_>, w: &Walk<'_>, g: &Group<'_>, i: usize) -> String {
    let table = cx.dump.table;
    let on_path = w
        .visits
        .iter()
        .any(|v| g.chain == v.chain.name && g.rule == Some(v.num));
    match g.rule {
        // Among the rules the path goes through, yet no visit: its IP part fails.
        Some(n) if !on_path && w.tried(cx.dump, g.chain, n) => format!(
            "{}: the kernel called its matches, but its IP part does not match the packet",
            g.label(table)
        ),
        _ => format!(
            "the kernel evaluated {}, which this path does not reach{}",
            g.label(table),
            after(&w.visits[..i], table)
        ),
    }
}

impl Visit<'_> {
    fn label(&self, table: Table) -> String {
        format!("{table}:{}:rule:{}", self.chain.name, self.num)
    }
}

/// A rule the path evaluates, with the kernel's calls there.
fn observed(cx: &Cx<'_>, v: &Visit<'_>, g: &Group<'_>) -> Result<(), String> {
    let label = v.label(cx.dump.table);
    let Some(rule) = v.rule else {
        return Err(format!(
            "the kernel made a call at the end of chain {}",
            v.chain.name
        ));
    };
    group_fits(g, rule, v.matched).map_err(|why| format!("{label}: {why}"))?;
    results_fit(g, rule, &cx.match_results(v)).map_err(|why| format!("{label}: {why}"))
}

/// Each match the kernel called against what the evaluator decides for it (branch points,
/// which the kernel's result decides, excepted).
fn results_fit(g: &Group<'_>, rule: &Rule, decided: &[Option<bool>]) -> Result<(), String> {
    for c in &g.calls {
        let XtCall::Match { index, matched, .. } = c else {
            continue;
        };
        let Some(Some(d)) = decided.get(*index as usize) else {
            continue;
        };
        if d != matched {
            let what = rule
                .matches
                .get(*index as usize)
                .map_or_else(String::new, match_text);
            return Err(format!(
                "match #{} ({what}) returned {matched} in the kernel, the evaluator decides {d}",
                index + 1
            ));
        }
    }
    Ok(())
}

/// A rule the path evaluates (its IP part passing) where the kernel called nothing: it must
/// match without calling anything (no match, a standard target).
fn unobserved(cx: &Cx<'_>, v: &Visit<'_>) -> Result<(), String> {
    let Some(r) = v.rule else {
        return Ok(());
    };
    if v.matched && visible(r) {
        return Err(format!(
            "the path matches {} ({}), but the kernel called none of its {}",
            v.label(cx.dump.table),
            r.text,
            if r.matches.is_empty() {
                "target"
            } else {
                "matches"
            }
        ));
    }
    // Not matched, yet its IP part passes (else it would not be a visit).
    match r.matches.first() {
        Some(m) if !v.matched => Err(format!(
            "{}: its IP part matches the packet, so the kernel would have called its match #1 ({}), but it called nothing there",
            v.label(cx.dump.table),
            match_text(m)
        )),
        _ => Ok(()),
    }
}

/// ` (after chain:rule)` for the last visit, or nothing.
fn after(visits: &[Visit<'_>], table: Table) -> String {
    visits
        .last()
        .map_or_else(String::new, |v| format!(" (after {})", v.label(table)))
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

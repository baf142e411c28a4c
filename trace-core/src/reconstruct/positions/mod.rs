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
//! A path agrees when, rule by rule in the kernel's order, it makes exactly these calls: a
//! rule it matches called all its matches (true) and its target if non-standard; a rule it
//! evaluates without matching called nothing exactly when its IP part fails, else matches up
//! to the first false one; and every match result the evaluator can decide equals the
//! kernel's. Branch points (matches the capture cannot decide) take the kernel's result.
//!
//! The input, one [`TablePositions`] per `ipt_do_table` run, is produced by the capture
//! backends that probe the x_tables functions (fentry/kprobe); without it nothing here runs
//! and reconstruction is unchanged.
//!
//! - [`store`]: positions waiting for their packet (by skb traversal);
//! - [`walk`]: the evaluations a path implies, and whether the calls fit them.

mod store;
mod walk;

pub use store::PositionStore;

use super::{Status, TableResult};
use crate::eval::{EvalInput, Evaluator, NetContext};
use crate::netfilter::{Hook, Table};
use crate::rules::TableDump;
use crate::step::StepId;
use serde::{Deserialize, Serialize};
use walk::{group, path_agrees, Cx, Group};

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
    /// Where on the (first) path it was evaluated: the index of the step it precedes
    /// (`steps.len()` after the last); None when no path agrees with the calls.
    #[serde(default)]
    pub before_step: Option<u32>,
}

/// Applies the rule positions of a packet's table traversals to its reconstruction (`ev`:
/// the evaluator it was reconstructed with). Tables without positions are left as they are;
/// the packet's status is recomputed.
pub fn apply(rp: &mut super::ReconstructedPacket, ev: &Evaluator, positions: &[TablePositions]) {
    if positions.is_empty() {
        return;
    }
    let super::ReconstructedPacket { packet, hooks, .. } = rp;
    let tuples = super::ct_tuples(packet);
    for (hi, (rh, hp)) in hooks.iter_mut().zip(&packet.hooks).enumerate() {
        for (tr, obs) in rh.tables.iter_mut().zip(&hp.tables) {
            if let Some(tp) = positions
                .iter()
                .find(|t| t.hook == rh.hook && t.table == tr.table)
            {
                // nf_trace false: no match depends on it (it only marks steps as traced).
                let dst_local = super::routed_local(packet, hi, obs);
                let input = super::table_input(hp, obs, false, tuples, dst_local);
                check_table(tr, ev, &input, tp);
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
    // Host state (addresses, bridges) is not needed to check the calls: matches that need
    // it stay undecided and are not compared.
    let ctx = NetContext::unknown();
    let cx = dump.map(|dump| Cx {
        ev,
        dump,
        input,
        ctx: &ctx,
        hook: tp.hook,
    });
    let (agreement, placed) = agreement(tr, cx.as_ref(), tp, &groups);
    let failed = dump.map_or_else(Vec::new, |d| failed_matches(d, &groups, placed.as_deref()));
    tr.positions = Some(PositionsCheck {
        calls: tp.calls.len(),
        complete: tp.complete,
        agreement,
        failed,
    });
}

/// Compares, filters the paths, and updates the table's status.
fn agreement(
    tr: &mut TableResult,
    cx: Option<&Cx<'_>>,
    tp: &TablePositions,
    groups: &[Group<'_>],
) -> (Agreement, Option<Vec<usize>>) {
    if tr.skipped {
        return (skipped_table(tr, groups), None);
    }
    let unchecked = |why: &str| (Agreement::Unchecked { why: why.into() }, None);
    let Some(cx) = cx else {
        return unchecked("the rule dump has no such table");
    };
    if !tp.complete {
        return unchecked("incomplete positions (unprobed functions or lost records)");
    }
    if tr.paths.is_empty() {
        return unchecked("no path to compare (the table could not be replayed)");
    }
    let verdicts: Vec<Result<Vec<usize>, String>> = tr
        .paths
        .iter()
        .map(|p| path_agrees(cx, p, groups))
        .collect();
    if tr.status == Status::Inconsistent {
        return unchecked(&fitting_evaluated_paths(&verdicts));
    }
    if tr.truncated && verdicts.iter().all(Result::is_err) {
        // The path the kernel took may be among those not explored.
        return unchecked(&format!(
            "the calls fit none of the {} paths explored; more exist",
            verdicts.len()
        ));
    }
    match rule_out(tr, verdicts) {
        Ok(placed) => {
            settle(tr);
            (Agreement::Agree, Some(placed))
        }
        Err(reason) => {
            tr.status = Status::Inconsistent;
            tr.reason = Some(reason.clone());
            (Agreement::Disagree { reason }, None)
        }
    }
}

/// A table conntrack had nat skip must show no calls.
fn skipped_table(tr: &mut TableResult, groups: &[Group<'_>]) -> Agreement {
    let Some(g) = groups.first() else {
        return Agreement::Unchecked {
            why: "table not traversed".into(),
        };
    };
    let reason = format!(
        "rule positions: the kernel evaluated {} although the table was not traversed",
        g.label(tr.table)
    );
    tr.status = Status::Inconsistent;
    tr.reason = Some(reason.clone());
    Agreement::Disagree { reason }
}

/// For a table already inconsistent: which evaluated paths the calls fit (worth knowing
/// which path the kernel took when other evidence rules them all out).
fn fitting_evaluated_paths(verdicts: &[Result<Vec<usize>, String>]) -> String {
    let fit: Vec<String> = (1..=verdicts.len())
        .filter(|i| verdicts[i - 1].is_ok())
        .map(|i| i.to_string())
        .collect();
    let why = "inconsistent with the kernel's other evidence";
    match fit.len() {
        0 => format!("{why}; the calls fit none of the evaluated paths"),
        _ => format!("{why}; the calls fit evaluated path {}", fit.join(", ")),
    }
}

/// Keeps the paths that fit (counting the others as ruled out) and returns where the first
/// one evaluated each rule; when none fits, keeps them all with why, and returns the first
/// reason.
fn rule_out(
    tr: &mut TableResult,
    verdicts: Vec<Result<Vec<usize>, String>>,
) -> Result<Vec<usize>, String> {
    let (mut placed, mut reason) = (None, None);
    let (mut agree, mut rejected) = (Vec::new(), Vec::new());
    for (mut p, v) in std::mem::take(&mut tr.paths).into_iter().zip(verdicts) {
        match v {
            Ok(at) => {
                placed.get_or_insert(at);
                agree.push(p);
            }
            Err(why) => {
                let why = format!("rule positions: {why}");
                reason.get_or_insert_with(|| why.clone());
                p.rejected = Some(why);
                tr.ruled_out += 1;
                rejected.push(p);
            }
        }
    }
    tr.paths = if agree.is_empty() { rejected } else { agree };
    placed.ok_or_else(|| reason.unwrap_or_default())
}

/// One path left: confirmed — unless the evaluator stopped exploring and a path not
/// explored could differ in something the calls do not show.
fn settle(tr: &mut TableResult) {
    if super::count_distinct_step_lists(&tr.paths) != 1 {
        return;
    }
    if tr.truncated {
        // Paths not explored differ from this one at a branch point; when every branch
        // point is a match, its observed result rules them out too. (An unmodelled
        // target's verdict is not observed.)
        let match_branches_only = tr.paths.iter().all(|p| {
            p.assumptions
                .iter()
                .all(|a| a.what.iter().all(|w| w.starts_with("-m ")))
        });
        if !match_branches_only {
            return;
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

/// The failed matches the calls show, with the rule and match text from the dump.
/// `placed`: for each evaluation, the index of the path step it precedes (when the path
/// agrees).
fn failed_matches(
    dump: &TableDump,
    groups: &[Group<'_>],
    placed: Option<&[usize]>,
) -> Vec<FailedMatch> {
    groups
        .iter()
        .enumerate()
        .filter_map(|(j, g)| {
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
                before_step: placed.and_then(|p| p.get(j)).map(|&k| k as u32),
            })
        })
        .collect()
}

pub(super) fn match_text(m: &crate::rules::matches::Match) -> String {
    let mut s = format!("-m {}", m.module);
    for a in &m.args {
        s.push(' ');
        s.push_str(a);
    }
    s
}

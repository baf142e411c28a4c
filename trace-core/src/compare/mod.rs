//! `iptrace compare`: checks captured paths against what the kernel itself printed.
//!
//! Stages:
//! - [`reference`] parses the kernel's output (legacy TRACE/LOG lines, xtables-monitor,
//!   nft monitor) into reference packets;
//! - [`nft_ruleset`] and [`resolve`] map nft handles, rule texts, policies and LOG prefixes to
//!   TRACE positions through the rulesets;
//! - [`captured`] reads iptrace's own packets (JSON lines);
//! - [`scope`] sets aside reference packets of other network namespaces;
//! - [`matching`] pairs reference and captured packets, [`diff`] compares their paths;
//! - [`report`] holds the totals and renders them.

pub mod captured;
pub mod diff;
pub mod matching;
pub mod nft_ruleset;
pub mod reference;
pub mod report;
pub mod resolve;
pub mod scope;

use crate::netfilter;
use crate::rules::Target;
use crate::step::StepId;
use captured::CapturedPacket;
use matching::MatchOptions;
use reference::{Evidence, Format, ParsedReference, RefPacket, RefStepPos};
use report::{CapturedOnly, ForeignPacket, Outcome, PacketReport, Report, Totals};
use resolve::{ResolveError, Resolver};
use scope::NetnsScope;
use std::borrow::Cow;

/// Compares parsed reference output with captured packets.
pub fn compare(
    reference: &ParsedReference,
    captured: &[CapturedPacket],
    resolver: &Resolver,
    opts: &MatchOptions,
) -> Report {
    compare_in_scope(reference, captured, resolver, opts, None)
}

/// [`compare`] for a reference that may hold other network namespaces' packets (a kernel
/// log with nf_log_all_netns=1): those `scope` recognises are set aside as foreign (counted
/// and listed, neither agreement nor difference) before pairing.
pub fn compare_in_scope(
    reference: &ParsedReference,
    captured: &[CapturedPacket],
    resolver: &Resolver,
    opts: &MatchOptions,
    scope: Option<&NetnsScope>,
) -> Report {
    let (ours, foreign) = set_aside_foreign(&reference.packets, scope);
    let mut report = Report {
        malformed: reference.malformed.clone(),
        totals: Totals {
            reference_packets: reference.packets.len(),
            captured_packets: captured.len(),
            unparsable: reference.malformed.len(),
            skipped_lines: reference.skipped,
            reference_lost: reference.lost,
            log_lines_in_traces: reference.packets.iter().map(|p| p.logs.len()).sum(),
            foreign: foreign.len(),
            ..Totals::default()
        },
        foreign,
        ..Report::default()
    };
    let pairs = matching::match_packets(&ours, captured, opts);
    for (r, pair) in ours.iter().zip(&pairs) {
        let outcome = match pair {
            None => Outcome::OnlyInReference,
            Some(i) => {
                let c = as_the_reference_shows_it(reference.format, r, &captured[*i], resolver);
                let o = judge(r, &c, resolver, &mut report.missing_ruleset);
                incomplete_if_lost(r, &c, o)
            }
        };
        count(&mut report.totals, &outcome);
        report.packets.push(PacketReport {
            reference_line: r.line,
            summary: report::summarize(r.headers.first()),
            captured_index: *pair,
            outcome,
        });
    }
    report.only_in_capture = only_in_capture(&ours, captured, &pairs, resolver);
    report.totals.only_in_capture = report.only_in_capture.len();
    report
}

/// The packets `scope` does not recognise as another namespace's, and those it does.
/// Without a scope every packet is ours: the reference's own list, not a copy.
fn set_aside_foreign<'a>(
    packets: &'a [RefPacket],
    scope: Option<&NetnsScope>,
) -> (Cow<'a, [RefPacket]>, Vec<ForeignPacket>) {
    let Some(scope) = scope else {
        return (Cow::Borrowed(packets), Vec::new());
    };
    let mut ours = Vec::with_capacity(packets.len());
    let mut foreign = Vec::new();
    for (p, reason) in packets.iter().zip(scope.foreign_reasons(packets)) {
        match reason {
            Some(reason) => foreign.push(ForeignPacket {
                reference_line: p.line,
                summary: report::summarize(p.headers.first()),
                reason,
            }),
            None => ours.push(p.clone()),
        }
    }
    (Cow::Owned(ours), foreign)
}

fn count(t: &mut Totals, o: &Outcome) {
    match o {
        Outcome::Agree => t.agree += 1,
        Outcome::OnlyInReference => t.only_in_reference += 1,
        Outcome::ReferenceIncomplete { .. } => t.reference_incomplete += 1,
        _ => t.differ += 1,
    }
}

/// A packet the reference may have lost lines of (see [`RefPacket::incomplete`]) and whose
/// reference path only lacks steps of the captured path (it is a subsequence of it, or of a
/// candidate path) differs by the reference's gap, not by a disagreement: reported as such.
/// A reference step the captured path does not have is still a difference.
fn incomplete_if_lost(r: &RefPacket, c: &CapturedPacket, o: Outcome) -> Outcome {
    let diff = match o {
        Outcome::Differ { diff } if r.incomplete => diff,
        other => return other,
    };
    let reference: Vec<&str> = diff
        .rows
        .iter()
        .filter_map(|row| row.reference.as_deref())
        .collect();
    let only_missing = c.candidate_paths().iter().any(|p| {
        let mut rest = p.iter().map(ToString::to_string);
        reference.iter().all(|step| rest.any(|s| s == *step))
    });
    if only_missing {
        Outcome::ReferenceIncomplete { diff }
    } else {
        Outcome::Differ { diff }
    }
}

/// The captured packet as a reference of `format` can show it: nf_tables traces print
/// nothing where a user chain ends without a RETURN rule (legacy TRACE prints `return:N`),
/// so those steps leave the captured side. Explicit `-j RETURN` rules, base-chain policies
/// and every step of a legacy reference stay. A reference packet that does show a chain end
/// (an nft `return` event, as kernels that print one would) keeps them too.
fn as_the_reference_shows_it(
    format: Option<Format>,
    r: &RefPacket,
    c: &CapturedPacket,
    resolver: &Resolver,
) -> CapturedPacket {
    let hides = format.is_some_and(|f| !f.shows_implicit_returns());
    let shows_chain_ends = r
        .steps()
        .iter()
        .any(|s| matches!(s.pos, RefStepPos::EndOfChain));
    if !hides || shows_chain_ends {
        return c.clone();
    }
    match &c.implicit_returns {
        Some(ids) => c.without_steps(|s| ids.contains(s)),
        None => c.without_steps(|s| resolver.is_implicit_return(s) == Some(true)),
    }
}

/// The outcome for one paired packet.
fn judge(
    r: &RefPacket,
    c: &CapturedPacket,
    resolver: &Resolver,
    missing: &mut Option<String>,
) -> Outcome {
    match &r.evidence {
        Evidence::Path { steps } => {
            let resolved: Result<Vec<Vec<StepId>>, ResolveError> = steps
                .iter()
                .map(|s| candidates(resolver, r.family, s))
                .collect();
            match resolved {
                Ok(cands) => judge_path(&pick_candidates(&cands, &c.steps), c),
                Err(e) => {
                    if matches!(e, ResolveError::NeedRuleset { .. }) && missing.is_none() {
                        *missing = Some(e.to_string());
                    }
                    Outcome::Unresolved {
                        reason: e.to_string(),
                    }
                }
            }
        }
        Evidence::Logged { prefix } => judge_log(prefix, c, resolver, missing),
    }
}

/// The positions a reference step may stand for: one, except an nft chain-end event of older
/// kernels (see [`Resolver::chain_end_candidates`]).
fn candidates(
    resolver: &Resolver,
    family: Option<netfilter::Family>,
    s: &reference::RefStep,
) -> Result<Vec<StepId>, ResolveError> {
    match s.pos {
        RefStepPos::EndOfChain => resolver.chain_end_candidates(family, s),
        _ => Ok(vec![resolver.step_of_family(family, s)?]),
    }
}

/// One position per reference step: where a step has several, the one the captured path
/// shows at the aligned place (the reference cannot tell them apart, so any agrees), else
/// the first. Alignment as in [`diff::diff_paths`], on the first choices.
fn pick_candidates(cands: &[Vec<StepId>], captured: &[StepId]) -> Vec<StepId> {
    let first: Vec<StepId> = cands.iter().filter_map(|c| c.first().cloned()).collect();
    if cands.iter().all(|c| c.len() <= 1) {
        return first;
    }
    let offset = diff::diff_paths(&first, captured).offset;
    cands
        .iter()
        .enumerate()
        .filter_map(|(i, c)| {
            captured
                .get(offset + i)
                .filter(|x| c.contains(x))
                .or(c.first())
                .cloned()
        })
        .collect()
}

/// Agree when the reference equals the reconstructed path — or, for a packet the
/// reconstruction left ambiguous, one of its candidate paths (the kernel's output then
/// settles the ambiguity; the reconstruction was not wrong).
fn judge_path(ids: &[StepId], c: &CapturedPacket) -> Outcome {
    let diff = diff::diff_paths(ids, &c.steps);
    if diff.first_difference.is_none() {
        return Outcome::Agree;
    }
    let alternative_agrees = c
        .candidate_paths()
        .iter()
        .any(|p| diff::diff_paths(ids, p).first_difference.is_none());
    if alternative_agrees {
        Outcome::Agree
    } else {
        Outcome::Differ { diff }
    }
}

fn judge_log(
    prefix: &str,
    c: &CapturedPacket,
    resolver: &Resolver,
    missing: &mut Option<String>,
) -> Outcome {
    if resolver.dump.is_none() {
        let reason = "LOG lines name no chain: give the iptables-save dump (--ruleset) to find the LOG rules".to_string();
        missing.get_or_insert_with(|| reason.clone());
        return Outcome::Unresolved { reason };
    }
    let expected = resolver.log_rules(prefix);
    if expected.is_empty() {
        return Outcome::Unresolved {
            reason: format!("no LOG rule with prefix {prefix:?} in the ruleset"),
        };
    }
    if c.steps.iter().any(|s| expected.contains(s)) {
        Outcome::Agree
    } else {
        Outcome::LogNotInPath {
            prefix: prefix.to_string(),
            expected_one_of: expected.iter().map(ToString::to_string).collect(),
            captured: c.steps.iter().map(ToString::to_string).collect(),
        }
    }
}

/// Captured packets the reference should have shown but did not: those that went through a
/// rule producing the reference (a TRACE rule for traces, also a LOG rule when there are LOG
/// lines of their own). Without a dump every unpaired captured packet is listed.
fn only_in_capture(
    reference: &[RefPacket],
    captured: &[CapturedPacket],
    pairs: &[Option<usize>],
    resolver: &Resolver,
) -> Vec<CapturedOnly> {
    let paired: std::collections::HashSet<usize> = pairs.iter().flatten().copied().collect();
    let logs = reference
        .iter()
        .any(|p| matches!(p.evidence, Evidence::Logged { .. }));
    let producers = producer_steps(resolver, logs);
    captured
        .iter()
        .enumerate()
        .filter(|(i, _)| !paired.contains(i))
        .filter(|(_, c)| {
            producers
                .as_ref()
                .is_none_or(|p| c.steps.iter().any(|s| p.contains(s)))
        })
        .map(|(i, c)| CapturedOnly {
            captured_index: i,
            summary: captured_summary(c),
        })
        .collect()
}

/// TRACE rules (and LOG rules when `logs`) of the dump as steps; None without a dump.
fn producer_steps(resolver: &Resolver, logs: bool) -> Option<Vec<StepId>> {
    let dump = resolver.dump?;
    let mut out = Vec::new();
    for t in &dump.tables {
        for c in &t.chains {
            for (i, r) in c.rules.iter().enumerate() {
                let hit = matches!(r.target, Target::Trace)
                    || (logs && matches!(r.target, Target::Log(_)));
                if hit {
                    out.extend(c.step(t.table, i as u32 + 1));
                }
            }
        }
    }
    Some(out)
}

fn captured_summary(c: &CapturedPacket) -> String {
    let Some(h) = c.headers.first() else {
        return "no headers".into();
    };
    let r = reference::RefHeaders {
        src: Some(h.src),
        dst: Some(h.dst),
        proto: h.proto,
        sport: h.sport,
        dport: h.dport,
        id: h.id,
        tcp_flags: h.tcp_flags,
        ..Default::default()
    };
    report::summarize(Some(&r))
}

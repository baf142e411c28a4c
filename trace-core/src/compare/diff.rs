//! Per-packet comparison of a reference path with a captured path.
//!
//! The reference starts where tracing started — legacy TRACE after the rule that set
//! nf_trace, nft at that rule —, the captured path is complete. So the captured path is
//! aligned on the reference's first step and must then equal it to the end.

use crate::step::StepId;
use serde::{Deserialize, Serialize};

/// One row of a side-by-side listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Row {
    pub reference: Option<String>,
    pub captured: Option<String>,
    pub same: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathDiff {
    /// Index in the captured path aligned with the reference's first step.
    pub offset: usize,
    /// Index (in the reference) of the first difference; None when they agree.
    pub first_difference: Option<usize>,
    /// Captured steps before `offset` (not covered by the reference).
    pub captured_before: Vec<String>,
    pub rows: Vec<Row>,
}

fn common_prefix(a: &[StepId], b: &[StepId]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// Where in `captured` the reference starts: the occurrence of its first step that agrees
/// longest; failing that, the first step in the same chain; failing that, 0.
fn alignment(reference: &[StepId], captured: &[StepId]) -> usize {
    let Some(first) = reference.first() else {
        return 0;
    };
    let exact = (0..captured.len())
        .filter(|&k| captured[k] == *first)
        .max_by_key(|&k| (common_prefix(reference, &captured[k..]), usize::MAX - k));
    exact
        .or_else(|| {
            captured
                .iter()
                .position(|c| c.table == first.table && c.chain == first.chain)
        })
        .unwrap_or(0)
}

pub fn diff_paths(reference: &[StepId], captured: &[StepId]) -> PathDiff {
    let offset = alignment(reference, captured);
    let tail = &captured[offset.min(captured.len())..];
    let n = reference.len().max(tail.len());
    let rows: Vec<Row> = (0..n)
        .map(|i| {
            let r = reference.get(i);
            let c = tail.get(i);
            Row {
                reference: r.map(|s| s.to_string()),
                captured: c.map(|s| s.to_string()),
                same: r.is_some() && r == c,
            }
        })
        .collect();
    PathDiff {
        offset,
        first_difference: rows.iter().position(|r| !r.same),
        captured_before: captured[..offset.min(captured.len())]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        rows,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(v: &[&str]) -> Vec<StepId> {
        v.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn reference_starting_after_the_trace_rule_agrees_with_the_full_path() {
        let cap = p(&[
            "raw:PREROUTING:rule:1",
            "raw:PREROUTING:policy:2",
            "mangle:PREROUTING:policy:1",
        ]);
        let d = diff_paths(
            &p(&["raw:PREROUTING:policy:2", "mangle:PREROUTING:policy:1"]),
            &cap,
        );
        assert_eq!((d.offset, d.first_difference), (1, None));
        assert_eq!(d.captured_before, ["raw:PREROUTING:rule:1"]);
        let nft = diff_paths(&cap, &cap);
        assert_eq!((nft.offset, nft.first_difference), (0, None));
    }

    #[test]
    fn shows_the_first_difference_and_extra_steps() {
        let cap = p(&["filter:FORWARD:rule:7", "mangle:POSTROUTING:policy:1"]);
        let d = diff_paths(&p(&["filter:FORWARD:rule:8", "filter:DOCKER:rule:1"]), &cap);
        assert_eq!(d.first_difference, Some(0));
        let d = diff_paths(&p(&["filter:FORWARD:rule:7"]), &cap);
        assert_eq!(d.first_difference, Some(1));
        assert_eq!(d.rows[1].reference, None);
    }
}

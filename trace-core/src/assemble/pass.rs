//! Turning the probes one hook pass was seen at into stage observations and verdicts.
//!
//! Between two consecutive probes that saw the packet, every stage accepted it (before = state
//! at the first probe, after = state at the second). After the last probe that saw it, if the
//! plan has a later probe, the packet vanished inside the stages in between: the verdict then
//! comes from how the pass ended (drop report, moved on, ended, capture stopped).

use super::plan::{HookPlan, StageSlot};
use crate::event::ProbeEvent;
use crate::netfilter::Hook;
use crate::packet::{
    HookPass, ObservedVerdict, PacketState, Stage, StageObservation, TableObservation,
};
use std::sync::Arc;

/// One hook pass being assembled.
#[derive(Debug, Clone)]
pub(super) struct Pass {
    pub meta: HookPass,
    /// (probe priority, packet state there); state None when no header snapshot was known.
    pub seen: Vec<(i32, Option<PacketState>)>,
    pub plan: Option<Arc<HookPlan>>,
    /// Its events come from probes that send one only on change ([`ProbeEvent::sparse`]):
    /// after the last one, the packet may have passed further probes unseen.
    pub sparse: bool,
}

/// How a pass stopped being extended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum PassEnd {
    /// A later event of the packet belongs to another pass (next hook, or a new pass).
    MovedOn,
    /// skb:kfree_skb reported the packet.
    Dropped {
        reason: u32,
        reason_name: Option<String>,
        netfilter: bool,
    },
    /// No further event (idle timeout, skb address recycled, evicted).
    Ended,
    /// The capture stopped.
    CaptureEnded,
}

/// Result of closing a pass.
pub(super) struct Closed {
    pub pass: HookPass,
    /// The stage the packet vanished in (verdict not Accept), if any.
    pub vanished_in: Option<Stage>,
    /// A planned probe event between two seen probes is missing.
    pub gap: bool,
}

impl Pass {
    pub fn start(e: &ProbeEvent, plan: Option<Arc<HookPlan>>) -> Pass {
        let meta = HookPass {
            hook: e.hook,
            ts_ns: e.ts_ns,
            in_dev: e.in_dev.clone(),
            out_dev: e.out_dev.clone(),
            mac: e.mac.clone(),
            uid: e.uid,
            gid: e.gid,
            tables: Vec::new(),
            stages: Vec::new(),
            probes: Vec::new(),
        };
        Pass {
            meta,
            seen: Vec::new(),
            plan,
            sparse: e.sparse,
        }
    }

    pub fn hook(&self) -> Hook {
        self.meta.hook
    }

    pub fn last_priority(&self) -> Option<i32> {
        self.seen.last().map(|(p, _)| *p)
    }

    /// Record a probe hit (the caller checked it belongs to this pass).
    pub fn add(&mut self, e: &ProbeEvent, state: Option<PacketState>) {
        self.meta.mac = self.meta.mac.take().or_else(|| e.mac.clone());
        self.meta.uid = self.meta.uid.or(e.uid);
        self.meta.gid = self.meta.gid.or(e.gid);
        self.meta.probes.push(e.priority);
        self.seen.push((e.priority, state));
        self.sparse |= e.sparse;
    }

    /// The packet passed the planned probes after the last one seen, up to and including
    /// `upto`, without events: nothing changed there (a sparse probe sends an event on any
    /// change), so each gets the last seen state. Returns how many were added.
    pub fn pass_silently_upto(&mut self, upto: i32) -> usize {
        let (Some(plan), Some(last)) = (self.plan.as_ref(), self.last_priority()) else {
            return 0;
        };
        let state = self.seen.last().and_then(|(_, s)| s.clone());
        let passed: Vec<i32> = plan
            .probes()
            .iter()
            .copied()
            .filter(|p| *p > last && *p <= upto)
            .collect();
        for p in &passed {
            self.meta.probes.push(*p);
            self.seen.push((*p, state.clone()));
        }
        passed.len()
    }

    pub fn at_last_probe(&self) -> bool {
        match (&self.plan, self.last_priority()) {
            (Some(plan), Some(p)) => plan.is_last_probe(p),
            _ => false,
        }
    }

    pub fn close(mut self, end: &PassEnd) -> Closed {
        let Some(plan) = self.plan.take() else {
            return Closed {
                pass: self.meta,
                vanished_in: None,
                gap: false,
            };
        };
        let seen: Vec<&(i32, Option<PacketState>)> = self
            .seen
            .iter()
            .filter(|(p, _)| plan.has_probe(*p))
            .collect();
        let mut gap = false;
        for w in seen.windows(2) {
            let ((a, sa), (b, sb)) = (w[0], w[1]);
            gap |= plan.probes_between(*a, *b) > 0;
            let shared =
                plan.stages_between(*a, Some(*b)).len() > 1 || plan.probes_between(*a, *b) > 0;
            for slot in plan.stages_between(*a, Some(*b)) {
                if let Some(before) = sa {
                    push_stage(
                        &mut self.meta,
                        slot,
                        before.clone(),
                        sb.clone(),
                        ObservedVerdict::Accept,
                        shared,
                    );
                }
            }
        }
        let mut vanished_in = None;
        let last = seen.last().map(|(p, s)| (*p, s.clone()));
        if let Some((p, state)) = last {
            let next = plan.next_probe(p);
            if let Some(verdict) = tail_verdict(end, next.is_some()) {
                // Sparse events without a drop report: the packet went on past `p` unseen for
                // all we know, and vanished in one of the remaining stages or after them.
                let unknown_range = self.sparse && !matches!(end, PassEnd::Dropped { .. });
                let (tail, verdict) = if unknown_range {
                    (
                        plan.stages_between(p, None).to_vec(),
                        ObservedVerdict::Unknown,
                    )
                } else {
                    (tail_stages(&plan, p, next), verdict)
                };
                let shared = tail.len() > 1;
                if !unknown_range {
                    vanished_in = tail.first().map(|s| s.stage.clone());
                }
                if let Some(before) = state {
                    for slot in &tail {
                        push_stage(
                            &mut self.meta,
                            slot,
                            before.clone(),
                            None,
                            verdict.clone(),
                            shared,
                        );
                    }
                }
            }
        }
        Closed {
            pass: self.meta,
            vanished_in,
            gap,
        }
    }
}

/// The stages after probe `p` up to `next`. When the plan names none there but the packet
/// vanished between two probes, something unplanned is registered in between: say so rather
/// than blame a neighbour.
fn tail_stages(plan: &HookPlan, p: i32, next: Option<i32>) -> Vec<StageSlot> {
    let tail = plan.stages_between(p, next);
    match (tail.is_empty(), next) {
        (true, Some(n)) => vec![StageSlot {
            priority: p,
            stage: Stage::Other {
                name: format!("unplanned hook between probes {p} and {n}"),
            },
        }],
        _ => tail.to_vec(),
    }
}

/// Verdict of the stages after the last probe that saw the packet, or None when they are not
/// reported: after the plan's last probe (`has_next` false) only a netfilter drop is evidence
/// (conntrack confirm); otherwise the packet vanished inside them.
fn tail_verdict(end: &PassEnd, has_next: bool) -> Option<ObservedVerdict> {
    let drop = |reason: &u32, name: &Option<String>| ObservedVerdict::Drop {
        reason: *reason,
        reason_name: name.clone(),
    };
    match (end, has_next) {
        (
            PassEnd::Dropped {
                reason,
                reason_name,
                netfilter: true,
            },
            false,
        ) => Some(drop(reason, reason_name)),
        (_, false) => None,
        (
            PassEnd::Dropped {
                reason,
                reason_name,
                ..
            },
            true,
        ) => Some(drop(reason, reason_name)),
        (PassEnd::MovedOn | PassEnd::Ended, true) => Some(ObservedVerdict::Stolen),
        (PassEnd::CaptureEnded, true) => Some(ObservedVerdict::Unknown),
    }
}

fn push_stage(
    pass: &mut HookPass,
    slot: &StageSlot,
    before: PacketState,
    after: Option<PacketState>,
    verdict: ObservedVerdict,
    shared: bool,
) {
    if let Some(table) = slot.stage.table() {
        pass.tables.push(TableObservation {
            table,
            priority: slot.priority,
            before: before.clone(),
            after: after.clone(),
            verdict: verdict.clone(),
        });
    }
    pass.stages.push(StageObservation {
        stage: slot.stage.clone(),
        priority: slot.priority,
        before,
        after,
        verdict,
        shared,
    });
}

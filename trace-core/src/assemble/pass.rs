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
use std::borrow::Cow;
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
    /// Starts a pass at its first event; the device names and MAC are moved out of `e`.
    pub fn start(e: &mut ProbeEvent, plan: Option<Arc<HookPlan>>) -> Pass {
        // Sized from the plan: one allocation per list instead of growing per probe/stage.
        let (probes, stages, tables) = plan.as_deref().map_or((0, 0, 0), |p| {
            let tables = p.stages().iter().filter(|s| s.stage.table().is_some());
            (p.probes().len(), p.stages().len(), tables.count())
        });
        let meta = HookPass {
            hook: e.hook,
            ts_ns: e.ts_ns,
            in_dev: e.in_dev.take(),
            out_dev: e.out_dev.take(),
            mac: e.mac.take(),
            uid: e.uid,
            gid: e.gid,
            tables: Vec::with_capacity(tables),
            stages: Vec::with_capacity(stages),
            probes: Vec::with_capacity(probes),
        };
        Pass {
            meta,
            seen: Vec::with_capacity(probes),
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
    pub fn add(&mut self, e: &mut ProbeEvent, state: Option<PacketState>) {
        if self.meta.mac.is_none() {
            self.meta.mac = e.mac.take();
        }
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
        let mut n = 0;
        for &p in plan.probes().iter().filter(|p| **p > last && **p <= upto) {
            self.meta.probes.push(p);
            self.seen.push((p, state.clone()));
            n += 1;
        }
        n
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
        // States are moved along the seen probes: each is cloned only for the observations
        // that need their own copy (per stage; a table also appears in `tables`).
        let mut gap = false;
        let mut prev: Option<(i32, Option<PacketState>)> = None;
        for (b, sb) in std::mem::take(&mut self.seen) {
            if !plan.has_probe(b) {
                continue;
            }
            if let Some((a, sa)) = prev.take() {
                let between = plan.probes_between(a, b);
                gap |= between > 0;
                let slots = plan.stages_between(a, Some(b));
                let shared = slots.len() > 1 || between > 0;
                if let Some(before) = sa {
                    push_stages(
                        &mut self.meta,
                        slots,
                        before,
                        sb.as_ref(),
                        &ObservedVerdict::Accept,
                        shared,
                    );
                }
            }
            prev = Some((b, sb));
        }
        let mut vanished_in = None;
        if let Some((p, state)) = prev {
            let next = plan.next_probe(p);
            if let Some(verdict) = tail_verdict(end, next.is_some()) {
                // Sparse events without a drop report: the packet went on past `p` unseen for
                // all we know, and vanished in one of the remaining stages or after them.
                let unknown_range = self.sparse && !matches!(end, PassEnd::Dropped { .. });
                let (tail, verdict) = if unknown_range {
                    (
                        Cow::Borrowed(plan.stages_between(p, None)),
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
                    push_stages(&mut self.meta, &tail, before, None, &verdict, shared);
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
fn tail_stages(plan: &HookPlan, p: i32, next: Option<i32>) -> Cow<'_, [StageSlot]> {
    let tail = plan.stages_between(p, next);
    match (tail.is_empty(), next) {
        (true, Some(n)) => Cow::Owned(vec![StageSlot {
            priority: p,
            stage: Stage::Other {
                name: format!("unplanned hook between probes {p} and {n}"),
            },
        }]),
        _ => Cow::Borrowed(tail),
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

/// One observation per slot, all with the same before/after/verdict; `before` is moved into
/// the last one.
fn push_stages(
    pass: &mut HookPass,
    slots: &[StageSlot],
    before: PacketState,
    after: Option<&PacketState>,
    verdict: &ObservedVerdict,
    shared: bool,
) {
    let Some((last, rest)) = slots.split_last() else {
        return;
    };
    for slot in rest {
        push_stage(pass, slot, before.clone(), after, verdict, shared);
    }
    push_stage(pass, last, before, after, verdict, shared);
}

fn push_stage(
    pass: &mut HookPass,
    slot: &StageSlot,
    before: PacketState,
    after: Option<&PacketState>,
    verdict: &ObservedVerdict,
    shared: bool,
) {
    if let Some(table) = slot.stage.table() {
        pass.tables.push(TableObservation {
            table,
            priority: slot.priority,
            before: before.clone(),
            after: after.cloned(),
            verdict: verdict.clone(),
        });
    }
    pass.stages.push(StageObservation {
        stage: slot.stage.clone(),
        priority: slot.priority,
        before,
        after: after.cloned(),
        verdict: verdict.clone(),
        shared,
    });
}

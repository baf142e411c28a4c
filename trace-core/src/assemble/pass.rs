//! Turning the probes one hook pass was seen at into stage observations and verdicts.
//!
//! Between two consecutive probes that saw the packet, every stage accepted it (before = state
//! at the first probe, after = state at the second). After the last probe that saw it, if the
//! plan has a later probe, the packet vanished inside the stages in between: the verdict then
//! comes from how the pass ended (drop report, moved on, ended, capture stopped).
//!
//! Several stages between two probes ([`HookPlan::needed`] leaves out the probes after inert
//! stages and folds conntrack's into nat's): inert stages accepted the packet unchanged, so a
//! change or a drop there belongs to the one stage that can act; conntrack followed by nat
//! are told apart by what each can change ([`super::fold`]). Anything else is reported for
//! the group: each member `shared`, and a packet that vanished there in a [`Stage::Group`].
//!
//! Across hooks ([`super::ProbePlan::derive_across_hooks`]): a pass whose plan has no probe
//! before its first stages starts from the state the previous pass left (`entry`); one whose
//! plan has no probe after its nat table ends with the state the next pass received
//! (`next_entry`), both through [`super::boundary`]. A packet freed outside netfilter after
//! such a pass (no route: no later probe) passed its stages; what they left is the state the
//! drop report carries ([`PassEnd::Dropped`] `at_free`), so nat's input and rewrite, and the
//! state between conntrack and nat, are reported as with nat's probe. A drop report without
//! that state leaves what nat left unknown; a packet never seen again, or followed by a pass
//! whose state does not fit, leaves their outcome unknown. A drop in netfilter after the last
//! probe is the stages' there, as with any plan.
//!
//! A FORWARD or OUTPUT pass whose plan has no probe after its verdict-only table (rule 3 of
//! [`super::ProbePlan::derive_across_hooks_with`]) leaves that hook with the state its last
//! probe saw. Seen in the next hook, or freed outside netfilter, the table accepted it
//! unchanged; a NETFILTER_DROP after the last probe is that table's (a drop by POSTROUTING's
//! iptables nat before its first probe, e.g. no binding could be set up, is blamed on it
//! too: the drop report cannot tell them apart); never seen again, its verdict is unknown.

use super::boundary;
use super::plan::{HookPlan, StageSlot};
use crate::event::{DropState, ProbeEvent};
use crate::netfilter::Hook;
use crate::packet::{
    HookPass, ObservedVerdict, OwnerChange, PacketState, Stage, StageObservation, TableObservation,
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
    /// What the stages before the plan's first probe received (its plan has no entry
    /// probe), from the previous pass.
    entry: Option<PacketState>,
    /// The next pass's hook and the state it received, when this pass's plan derives its
    /// exit from it (set by the assembler as the packet moves on).
    pub next_entry: Option<(Hook, PacketState)>,
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
        /// The packet's mark, conntrack entry and headers at the free, when the drop
        /// report carries them.
        at_free: Option<Box<DropState>>,
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
    /// `entry`: what the stages before the plan's first probe received, if it has none
    /// before them.
    pub fn start(
        e: &mut ProbeEvent,
        plan: Option<Arc<HookPlan>>,
        entry: Option<PacketState>,
    ) -> Pass {
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
            owners: Vec::new(),
            tables: Vec::with_capacity(tables),
            stages: Vec::with_capacity(stages),
            probes: Vec::with_capacity(probes),
            bridge: e.bridge.take(),
        };
        Pass {
            meta,
            seen: Vec::with_capacity(probes),
            plan,
            sparse: e.sparse,
            entry,
            next_entry: None,
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
        self.add_owner(e);
        self.meta.probes.push(e.priority);
        self.seen.push((e.priority, state));
        self.sparse |= e.sparse;
    }

    /// The socket owner `e` read: a change from the owner so far is kept where it was seen
    /// (TRACE prints the owner each table saw). An event that did not read the owner (other
    /// backends: a hook's first event only) fills in one not known yet.
    fn add_owner(&mut self, e: &ProbeEvent) {
        let m = &mut self.meta;
        if !e.owner_read {
            m.uid = m.uid.or(e.uid);
            m.gid = m.gid.or(e.gid);
            return;
        }
        let (uid, gid) = m.owners.last().map_or((m.uid, m.gid), |o| (o.uid, o.gid));
        if (uid, gid) != (e.uid, e.gid) {
            m.owners.push(OwnerChange {
                priority: e.priority,
                uid: e.uid,
                gid: e.gid,
            });
        }
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

    /// Seen at the last probe, and the stages after it cannot act or their outcome is known
    /// only from the next pass: the packet left the hook, as far as this pass can tell.
    pub fn at_exit(&self) -> bool {
        self.at_last_probe() && !self.exit_derived() && !self.exit_after_verdict()
    }

    /// A verdict-only table runs after the plan's last probe (see
    /// [`HookPlan::exit_after_verdict`]): whether it let the packet through is known only
    /// from how the pass ended.
    fn exit_after_verdict(&self) -> bool {
        let hook = self.hook();
        self.plan
            .as_ref()
            .is_some_and(|p| p.exit_after_verdict(hook))
    }

    /// The plan's nat runs after its last probe (see [`HookPlan::exit_derived`]).
    pub fn exit_derived(&self) -> bool {
        self.plan.as_ref().is_some_and(|p| p.exit_derived())
    }

    /// The hook and the state the packet left it with, when the last probe saw it and
    /// nothing after that probe can act, or only a verdict-only table (the state it leaves
    /// with if it leaves).
    pub fn exit_state(&self) -> Option<(Hook, PacketState)> {
        let plan = self.plan.as_ref()?;
        let (_, state) = self.seen.last()?;
        let seen = self.at_last_probe() && plan.exit_known(self.hook());
        Some((self.hook(), state.clone().filter(|_| seen)?))
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
        let mut gap = plan.entry_derived() && !self.close_head(&plan);
        let mut prev: Option<(i32, Option<PacketState>)> = None;
        for (b, sb) in std::mem::take(&mut self.seen) {
            if !plan.has_probe(b) {
                continue;
            }
            if let Some((a, sa)) = prev.take() {
                let between = plan.probes_between(a, b);
                gap |= between > 0;
                let gap_stages = Gap::between(&plan, a, Some(b));
                if let Some(before) = sa {
                    let accept = ObservedVerdict::Accept;
                    if between > 0 {
                        // A probe event is missing: the states describe the group.
                        push_stages(
                            &mut self.meta,
                            gap_stages.slots,
                            before,
                            sb.as_ref(),
                            &accept,
                            true,
                        );
                    } else {
                        gap_stages.push(&mut self.meta, before, sb.as_ref(), &accept);
                    }
                }
            }
            prev = Some((b, sb));
        }
        let mut vanished_in = None;
        if let Some((p, state)) = prev {
            let (stage, unknown) = self.close_tail(&plan, p, state, end);
            vanished_in = stage;
            gap |= unknown;
        }
        Closed {
            pass: self.meta,
            vanished_in,
            gap,
        }
    }
}

impl Pass {
    /// The stages before the plan's first probe, when the pass started there: they took the
    /// state from the previous pass to the one the first probe saw. Returns false when that
    /// state is not known (the stages are not reported).
    fn close_head(&mut self, plan: &HookPlan) -> bool {
        let Some((first, seen)) = self.seen.first() else {
            return true;
        };
        if !plan.is_first_probe(*first) {
            // Its first event is missing: the assembler marks the trace incomplete.
            return true;
        }
        let (Some(entry), Some(after)) = (self.entry.take(), seen.clone()) else {
            return false;
        };
        let gap = Gap::between(plan, i32::MIN, Some(*first));
        gap.push(
            &mut self.meta,
            entry,
            Some(&after),
            &ObservedVerdict::Accept,
        );
        true
    }

    /// The stages after the last probe that saw the packet; returns the stage it vanished
    /// in, if it did, and whether their outcome is unknown although the packet went on.
    fn close_tail(
        &mut self,
        plan: &HookPlan,
        p: i32,
        state: Option<PacketState>,
        end: &PassEnd,
    ) -> (Option<Stage>, bool) {
        let next = plan.next_probe(p);
        let nf_drop = matches!(
            end,
            PassEnd::Dropped {
                netfilter: true,
                ..
            }
        );
        if next.is_none() && plan.exit_derived() && !nf_drop {
            let unknown = state.is_some_and(|s| self.close_derived_tail(plan, p, s, end));
            return (None, unknown);
        }
        if next.is_none() && plan.exit_after_verdict(self.hook()) && !nf_drop {
            if let Some(s) = state {
                self.close_verdict_tail(plan, p, s, end);
            }
            return (None, false);
        }
        (self.close_planned_tail(plan, p, next, state, end), false)
    }

    /// [`Pass::close_tail`] when the plan's last probe is before its nat table (see
    /// boundary.rs) and the packet was not dropped in netfilter: every stage after the probe
    /// let it through, and what they left is what the next pass received (moved on) or the
    /// state the drop report carries (freed outside netfilter before the next hook). Freed
    /// without that state, what nat left is unknown; never seen again, or followed by a
    /// state that does not fit, their outcome is unknown. Returns true when it is although
    /// the packet went on (the trace is incomplete).
    fn close_derived_tail(
        &mut self,
        plan: &HookPlan,
        p: i32,
        before: PacketState,
        end: &PassEnd,
    ) -> bool {
        let gap = Gap::between(plan, p, None);
        let next = self.next_entry.take();
        let hook = self.hook();
        let after = match end {
            PassEnd::Dropped { at_free, .. } => at_free
                .as_deref()
                .and_then(|freed| boundary::exit_at_free(hook, &before, freed)),
            PassEnd::MovedOn => next
                .as_ref()
                .and_then(|(next, s)| boundary::exit_from_next(hook, &before, *next, s)),
            PassEnd::Ended | PassEnd::CaptureEnded => None,
        };
        let accept = ObservedVerdict::Accept;
        match (end, after) {
            (_, Some(after)) => {
                gap.push(&mut self.meta, before, Some(&after), &accept);
                false
            }
            (PassEnd::Dropped { .. }, None) => {
                gap.push(&mut self.meta, before, None, &accept);
                false
            }
            (end, None) => {
                gap.push_unknown(&mut self.meta, before);
                *end == PassEnd::MovedOn
            }
        }
    }

    /// [`Pass::close_tail`] when the plan's last probe is before a verdict-only table (see
    /// [`HookPlan::exit_after_verdict`]) and the packet was not dropped in netfilter (a
    /// NETFILTER_DROP after the last probe is that table's, as with any stage after a
    /// hook's last probe, see [`Pass::close_planned_tail`]): seen in the next hook, or freed
    /// outside netfilter, it passed every stage after the probe unchanged (they accepted
    /// it); never seen again, or the capture ended, what they did is unknown.
    fn close_verdict_tail(&mut self, plan: &HookPlan, p: i32, before: PacketState, end: &PassEnd) {
        let gap = Gap::between(plan, p, None);
        match end {
            PassEnd::MovedOn | PassEnd::Dropped { .. } => {
                let after = before.clone();
                gap.push(
                    &mut self.meta,
                    before,
                    Some(&after),
                    &ObservedVerdict::Accept,
                );
            }
            PassEnd::Ended | PassEnd::CaptureEnded => gap.push_unknown(&mut self.meta, before),
        }
    }

    /// [`Pass::close_tail`] with the plan's stages after `p` up to probe `next`.
    fn close_planned_tail(
        &mut self,
        plan: &HookPlan,
        p: i32,
        next: Option<i32>,
        state: Option<PacketState>,
        end: &PassEnd,
    ) -> Option<Stage> {
        let Some(verdict) = tail_verdict(end, next.is_some()) else {
            // After the plan's last probe, nothing is reported except what cannot act: the
            // inert stages there accepted the packet unchanged.
            if let Some(s) = state.filter(|_| next.is_none()) {
                let gap = Gap::between(plan, p, None);
                gap.push_leading_inert(&mut self.meta, &s);
            }
            return None;
        };
        // Sparse events without a drop report: the packet went on past `p` unseen for all
        // we know, and vanished in one of the remaining stages or after them.
        if self.sparse && !matches!(end, PassEnd::Dropped { .. }) {
            let tail = plan.stages_between(p, None);
            if let Some(before) = state {
                let shared = tail.len() > 1;
                push_stages(
                    &mut self.meta,
                    tail,
                    before,
                    None,
                    &ObservedVerdict::Unknown,
                    shared,
                );
            }
            return None;
        }
        let gap = Gap::between(plan, p, next);
        if gap.acting_range().is_none() {
            return self.vanished_unplanned(&gap, p, next, state, &verdict);
        }
        let vanished_in = gap.acting();
        if let Some(before) = state {
            gap.push(&mut self.meta, before, None, &verdict);
        }
        vanished_in
    }

    /// The packet vanished after probe `p` where no planned stage can act: the inert ones
    /// there let it through. Before probe `next`, something unplanned is registered in
    /// between: say so rather than blame a neighbour. After the last probe, no stage is named.
    fn vanished_unplanned(
        &mut self,
        gap: &Gap<'_>,
        p: i32,
        next: Option<i32>,
        state: Option<PacketState>,
        verdict: &ObservedVerdict,
    ) -> Option<Stage> {
        if let Some(s) = state.as_ref() {
            gap.push_leading_inert(&mut self.meta, s);
        }
        let n = next?;
        let other = StageSlot {
            priority: p,
            stage: Stage::Other {
                name: format!("unplanned hook between probes {p} and {n}"),
            },
        };
        if let Some(before) = state {
            push_stage(&mut self.meta, &other, before, None, verdict, false);
        }
        Some(other.stage)
    }
}

/// The pass of `hook` for a packet dropped (`end`) before the first probe of its `plan`,
/// which has none before its first stages: those received `entry`, the state the previous
/// pass (`prev`, whose devices and owner it keeps) left. The stage it vanished in is the one
/// there that can act (or their group).
pub(super) fn dropped_before_first_probe(
    hook: Hook,
    ts_ns: u64,
    prev: &HookPass,
    plan: &HookPlan,
    entry: PacketState,
    end: &PassEnd,
) -> Closed {
    let mut meta = HookPass {
        hook,
        ts_ns,
        in_dev: prev.in_dev.clone(),
        out_dev: prev.out_dev.clone(),
        mac: None,
        uid: prev.uid,
        gid: prev.gid,
        owners: Vec::new(),
        tables: Vec::new(),
        stages: Vec::new(),
        probes: Vec::new(),
        bridge: prev.bridge.clone(),
    };
    let first = plan.probes().first().copied();
    let gap = Gap::between(plan, i32::MIN, first);
    let verdict = tail_verdict(end, true).unwrap_or(ObservedVerdict::Unknown);
    gap.push(&mut meta, entry, None, &verdict);
    Closed {
        pass: meta,
        vanished_in: gap.acting(),
        gap: false,
    }
}

/// The stages between two probes, with their inertness.
struct Gap<'a> {
    slots: &'a [StageSlot],
    inert: &'a [bool],
}

impl<'a> Gap<'a> {
    /// The stages of `plan` between probes `from` and `to` (None: to the hook's end).
    fn between(plan: &'a HookPlan, from: i32, to: Option<i32>) -> Gap<'a> {
        Gap {
            slots: plan.stages_between(from, to),
            inert: plan.inert_between(from, to),
        }
    }

    fn is_inert(&self, i: usize) -> bool {
        self.inert.get(i).copied().unwrap_or(false)
    }

    /// Indices of the first and last stage that can act, if any.
    fn acting_range(&self) -> Option<(usize, usize)> {
        let first = (0..self.slots.len()).find(|i| !self.is_inert(*i))?;
        let last = (0..self.slots.len()).rev().find(|i| !self.is_inert(*i))?;
        Some((first, last))
    }

    /// What the packet vanished in: the one stage that can act, or the group of those that
    /// can (all stages when none can: something unplanned acted).
    fn acting(&self) -> Option<Stage> {
        let mut stages: Vec<Stage> = match self.acting_range() {
            Some((first, last)) => (first..=last)
                .filter(|i| !self.is_inert(*i))
                .map(|i| self.slots[i].stage.clone())
                .collect(),
            None => self.slots.iter().map(|s| s.stage.clone()).collect(),
        };
        match stages.len() {
            0 => None,
            1 => stages.pop(),
            _ => Some(Stage::Group { stages }),
        }
    }

    /// Observations for the stages from the states at the probes around them: inert stages
    /// before the first acting one accept `before` unchanged, those after the last acting
    /// one accept `after` unchanged (only when the packet came out); the acting ones get
    /// before/after/verdict, exactly when one acts or conntrack is folded into nat, else as
    /// a group (`shared`).
    fn push(
        &self,
        pass: &mut HookPass,
        before: PacketState,
        after: Option<&PacketState>,
        verdict: &ObservedVerdict,
    ) {
        let Some((first, last)) = self.acting_range() else {
            // Nothing here can act: unchanged means each accepted; anything else was done
            // by something unplanned, reported for the group.
            let unchanged = after == Some(&before);
            push_stages(pass, self.slots, before, after, verdict, !unchanged);
            return;
        };
        push_accepted(pass, &self.slots[..first], &before);
        let core = &self.slots[first..=last];
        let middle_inert = (first + 1..last).all(|i| self.is_inert(i));
        let folded = middle_inert
            .then(|| self.folded_state(core, &before, after))
            .flatten();
        if let Some(mid) = folded {
            push_folded(pass, core, before, mid, after, verdict);
        } else {
            let exact = first == last;
            push_stages(pass, core, before, after, verdict, !exact);
        }
        if let Some(a) = after {
            push_accepted(pass, &self.slots[last + 1..], a);
        }
    }

    /// Conntrack, (inert stages,) then nat, with the packet seen after nat: the state
    /// conntrack left (see fold.rs), if it can be told.
    fn folded_state(
        &self,
        core: &[StageSlot],
        before: &PacketState,
        after: Option<&PacketState>,
    ) -> Option<PacketState> {
        let (head, tail) = (core.first()?, core.last()?);
        let folded = core.len() > 1
            && head.stage == Stage::Conntrack
            && tail.stage.table() == Some(crate::netfilter::Table::Nat);
        folded.then_some(())?;
        super::fold::after_conntrack(before, after?)
    }

    /// The packet went on through these stages, but what they did is not known: the inert
    /// ones before the first that can act accepted it unchanged; from that one on, each is
    /// reported with an unknown verdict (shared when more than one).
    fn push_unknown(&self, pass: &mut HookPass, before: PacketState) {
        self.push_leading_inert(pass, &before);
        let first = self.acting_range().map_or(0, |(f, _)| f);
        let rest = &self.slots[first..];
        let verdict = ObservedVerdict::Unknown;
        push_stages(pass, rest, before, None, &verdict, rest.len() > 1);
    }

    /// The inert stages before the first acting one, accepting `state` unchanged.
    fn push_leading_inert(&self, pass: &mut HookPass, state: &PacketState) {
        let n = self
            .acting_range()
            .map_or(self.slots.len(), |(first, _)| first);
        push_accepted(pass, &self.slots[..n], state);
    }
}

/// Stages that accepted `state` unchanged (inert ones around the acting stages).
fn push_accepted(pass: &mut HookPass, slots: &[StageSlot], state: &PacketState) {
    for slot in slots {
        push_stage(
            pass,
            slot,
            state.clone(),
            Some(state),
            &ObservedVerdict::Accept,
            false,
        );
    }
}

/// Conntrack (`core[0]`) took `before` to `mid`, the inert stages after it passed `mid`
/// unchanged, nat (`core.last()`) took `mid` to `after`.
fn push_folded(
    pass: &mut HookPass,
    core: &[StageSlot],
    before: PacketState,
    mid: PacketState,
    after: Option<&PacketState>,
    verdict: &ObservedVerdict,
) {
    let accept = ObservedVerdict::Accept;
    let Some((nat, rest)) = core.split_last() else {
        return;
    };
    for (i, slot) in rest.iter().enumerate() {
        let b = if i == 0 { before.clone() } else { mid.clone() };
        push_stage(pass, slot, b, Some(&mid), &accept, false);
    }
    push_stage(pass, nat, mid, after, verdict, false);
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
                ..
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

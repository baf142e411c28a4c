//! Where the probes sit: per network namespace, family and hook, the ascending probe
//! priorities and the stages (tables, conntrack, other base chains) registered between them.
//!
//! Kernel ordering rule (measured, see shared/notes/kernel.md): a hook registered at an
//! existing priority runs BEFORE the existing one. So a probe at priority `a` runs before a
//! stage at `a`, and the stages between probes `a` and `b` are those with `a <= prio < b`.
//!
//! Fewer probes ([`HookPlan::needed`]): every probe run costs a fixed hook call per packet,
//! so a stage that can neither change nor drop the packet (an *inert* stage: an iptables
//! table or nft base chain without rules and with policy ACCEPT) gets no probe after it, and
//! conntrack's probe is folded into the next nat table's. The assembler then attributes what
//! changed between two probes to the one stage there that could have done it (see pass.rs).

use super::fasthash::FastMap;
use crate::netfilter::{Family, Hook, Table, PRIO_CONNTRACK, PRIO_CONNTRACK_CONFIRM};
use crate::packet::Stage;
use std::sync::Arc;

/// IP defragmentation priority (NF_IP_PRI_CONNTRACK_DEFRAG).
pub const PRIO_DEFRAG: i32 = -400;

/// A stage registered on a hook at `priority`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageSlot {
    pub priority: i32,
    pub stage: Stage,
}

/// Probes and stages of one hook in one netns and family.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HookPlan {
    probes: Vec<i32>,
    stages: Vec<StageSlot>,
    /// Per stage (same order): inert when the plan was made (no rules, policy ACCEPT), so
    /// it neither changed nor dropped the packet.
    inert: Vec<bool>,
}

impl HookPlan {
    /// A plan from the probe priorities actually attached and the stages registered.
    pub fn new(probes: Vec<i32>, stages: Vec<StageSlot>) -> HookPlan {
        HookPlan::with_inert(probes, stages.into_iter().map(|s| (s, false)).collect())
    }

    /// [`HookPlan::new`] with each stage's inertness.
    pub fn with_inert(mut probes: Vec<i32>, mut stages: Vec<(StageSlot, bool)>) -> HookPlan {
        probes.sort_unstable();
        probes.dedup();
        stages.sort_by_key(|(s, _)| s.priority);
        let inert = stages.iter().map(|(_, i)| *i).collect();
        HookPlan {
            probes,
            stages: stages.into_iter().map(|(s, _)| s).collect(),
            inert,
        }
    }

    /// The probes a packet must meet to tell what every stage did, no more: one before the
    /// first stage (devices, MAC, socket; first sight on PREROUTING/OUTPUT), one after each
    /// stage that can act — none after an inert stage (`inert(slot)`), and none after
    /// conntrack when the next stage that can act is a nat table: conntrack never rewrites
    /// headers and nat tables cannot hold DROP rules, so the state between them is derived
    /// (see pass.rs) and only a drop there is attributed to "conntrack or nat".
    pub fn needed(stages: Vec<StageSlot>, inert: impl Fn(&StageSlot) -> bool) -> HookPlan {
        let mut stages: Vec<(StageSlot, bool)> = stages
            .into_iter()
            .map(|s| {
                let i = inert(&s);
                (s, i)
            })
            .collect();
        stages.sort_by_key(|(s, _)| s.priority);
        let mut probes: Vec<i32> = (0..stages.len())
            .filter(|&i| !stages[i].1 && !folds_into_nat(&stages, i))
            .filter_map(|i| stages[i].0.priority.checked_add(1))
            .collect();
        probes.extend(first_probe(stages.iter().map(|(s, _)| s)));
        HookPlan::with_inert(probes, stages)
    }

    /// No probe runs before the stages at the start of the hook
    /// ([`ProbePlan::derive_across_hooks`] rule 1): what they received is the previous
    /// hook's exit state (see boundary.rs).
    pub fn entry_derived(&self) -> bool {
        match (self.stages.first(), self.probes.first()) {
            (Some(s), Some(p)) => s.priority < *p,
            _ => false,
        }
    }

    /// A nat table that can act runs after the last probe ([`ProbePlan::derive_across_hooks`]
    /// rule 2): what it left is the next hook's entry state, or the state the drop report
    /// carries for a packet freed outside netfilter before the next hook (see boundary.rs).
    pub fn exit_derived(&self) -> bool {
        let Some(&last) = self.probes.last() else {
            return false;
        };
        let (start, end) = self.range(last, None);
        (start..end).any(|i| !self.is_inert(i) && self.stages[i].stage.table() == Some(Table::Nat))
    }

    /// The packet's state at the last probe is the one it leaves the hook with: nothing
    /// after that probe can act.
    pub fn exit_observed(&self) -> bool {
        let Some(&last) = self.probes.last() else {
            return false;
        };
        let (start, end) = self.range(last, None);
        (start..end).all(|i| self.is_inert(i))
    }

    /// One stage that can act runs after the last probe, a table other than nat, on a hook
    /// the packet leaves for POSTROUTING (FORWARD, OUTPUT): the probe after it was left out
    /// because it can only let the packet through or drop it ([`ProbePlan::derive_across_hooks`]
    /// rule 3). The state at the last probe is then the hook's exit state when the packet
    /// moves on. No other plan has such a stage there: [`HookPlan::needed`] and
    /// [`HookPlan::bracketing`] put a probe after every stage of FORWARD and OUTPUT that can
    /// act (nat's, when conntrack folds into it), so recordings need no extra field.
    pub fn exit_after_verdict(&self, hook: Hook) -> bool {
        let Some(&last) = self.probes.last() else {
            return false;
        };
        if !matches!(hook, Hook::Forward | Hook::Output) {
            return false;
        }
        let (start, end) = self.range(last, None);
        let mut acting = (start..end).filter(|i| !self.is_inert(*i));
        let one = acting.next();
        acting.next().is_none()
            && one.is_some_and(|i| {
                self.stages[i]
                    .stage
                    .table()
                    .is_some_and(|t| t != Table::Nat)
            })
    }

    /// The state at the last probe is the one the packet leaves the hook with when it moves
    /// on: nothing after the probe can act ([`HookPlan::exit_observed`]), or only one
    /// verdict-only table ([`HookPlan::exit_after_verdict`]).
    pub fn exit_known(&self, hook: Hook) -> bool {
        self.exit_observed() || self.exit_after_verdict(hook)
    }

    /// Without the probe after the last stage of FORWARD or OUTPUT (rule 3), when every
    /// stage after the hook's last other probe is inert or verdict-only (`verdict_only`), one
    /// of them verdict-only and a table other than nat; None when that does not hold.
    fn without_probe_after_verdicts(
        &self,
        verdict_only: impl Fn(&StageSlot) -> bool,
    ) -> Option<HookPlan> {
        let n = self.probes.len();
        if n < 2 {
            return None;
        }
        let (last, other) = (self.probes[n - 1], self.probes[n - 2]);
        let (start, end) = self.range(other, None);
        let mut verdicts = 0;
        for i in start..end {
            if self.is_inert(i) {
                continue;
            }
            let s = &self.stages[i];
            let table = s.stage.table().is_some_and(|t| t != Table::Nat);
            if !table || !verdict_only(s) {
                return None;
            }
            verdicts += 1;
        }
        (verdicts == 1).then(|| self.without_probe(last))
    }

    /// Nothing before the first probe can drop the packet: each stage there is inert or an
    /// iptables nat table (which cannot hold DROP rules, see [`HookPlan::needed`]); and there
    /// is a probe.
    fn first_probe_sees_survivors(&self) -> bool {
        let Some(&first) = self.probes.first() else {
            return false;
        };
        let (start, end) = self.range(i32::MIN, Some(first));
        (start..end).all(|i| {
            self.is_inert(i) || matches!(self.stages[i].stage, Stage::Table { table: Table::Nat })
        })
    }

    /// The first probe runs before every stage (the state the hook received is seen).
    pub fn has_entry_probe(&self) -> bool {
        match (self.probes.first(), self.stages.first()) {
            (Some(p), Some(s)) => *p <= s.priority,
            (Some(_), None) => true,
            _ => false,
        }
    }

    /// Indices of the stages that can act.
    fn acting(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.stages.len()).filter(|i| !self.is_inert(*i))
    }

    /// Without the entry probe, when the first stage that can act is a nat table with a
    /// probe after it and none between (rule 1); None when that does not hold.
    fn without_entry_before_nat(&self) -> Option<HookPlan> {
        let first = *self.probes.first()?;
        let nat = &self.stages[self.acting().next()?];
        let after_nat = self.next_probe(nat.priority)?;
        let alone = nat.stage.table() == Some(Table::Nat)
            && self.has_entry_probe()
            && self.next_probe(first) == Some(after_nat);
        alone.then(|| self.without_probe(first))
    }

    /// Without the last probe, when it follows the last stage that can act, a nat table,
    /// and an earlier probe stays (rule 2); None when that does not hold.
    fn without_probe_after_last_nat(&self) -> Option<HookPlan> {
        let last = *self.probes.last()?;
        let nat = &self.stages[self.acting().last()?];
        let fits = nat.stage.table() == Some(Table::Nat)
            && nat.priority < last
            && self.probes.iter().any(|p| *p <= nat.priority)
            && self.next_probe(nat.priority) == Some(last);
        fits.then(|| self.without_probe(last))
    }

    fn without_probe(&self, prio: i32) -> HookPlan {
        let mut p = self.clone();
        p.probes.retain(|x| *x != prio);
        p
    }

    /// This plan with `other`'s probes added (a re-plan during a capture only adds probes:
    /// links already attached stay) and `other`'s inertness.
    pub fn merged_with(&self, other: &HookPlan) -> HookPlan {
        let mut probes = self.probes.clone();
        probes.extend_from_slice(&other.probes);
        let stages = other
            .stages
            .iter()
            .cloned()
            .enumerate()
            .map(|(i, s)| (s, other.is_inert(i)))
            .collect();
        HookPlan::with_inert(probes, stages)
    }

    /// One probe before the first stage and one right after each stage (priority + 1). A
    /// stage at INT_MAX (conntrack confirm) cannot be followed: it stays after the last probe.
    pub fn bracketing(stages: Vec<StageSlot>) -> HookPlan {
        let mut probes: Vec<i32> = stages
            .iter()
            .filter_map(|s| s.priority.checked_add(1))
            .collect();
        probes.extend(first_probe(stages.iter()));
        HookPlan::new(probes, stages)
    }

    /// The stages the kernel registers on `hook` for these iptables tables (each at its
    /// standard priority), plus defrag/conntrack/confirm when conntrack is loaded.
    pub fn iptables_stages(hook: Hook, tables: &[Table], conntrack: bool) -> Vec<StageSlot> {
        let mut v: Vec<StageSlot> = tables
            .iter()
            .filter_map(|t| {
                t.priority(hook).map(|p| StageSlot {
                    priority: p,
                    stage: Stage::Table { table: *t },
                })
            })
            .collect();
        if conntrack {
            let (entry, confirm) = match hook {
                Hook::Prerouting | Hook::Output => (true, false),
                Hook::Input | Hook::Postrouting => (false, true),
                Hook::Forward => (false, false),
            };
            if entry {
                v.push(StageSlot {
                    priority: PRIO_DEFRAG,
                    stage: Stage::Defrag,
                });
                v.push(StageSlot {
                    priority: PRIO_CONNTRACK,
                    stage: Stage::Conntrack,
                });
            }
            if confirm {
                v.push(StageSlot {
                    priority: PRIO_CONNTRACK_CONFIRM,
                    stage: Stage::ConntrackConfirm,
                });
            }
        }
        v.sort_by_key(|s| s.priority);
        v
    }

    pub fn probes(&self) -> &[i32] {
        &self.probes
    }

    pub fn stages(&self) -> &[StageSlot] {
        &self.stages
    }

    /// Was stage `i` (index into [`HookPlan::stages`]) inert when the plan was made?
    pub fn is_inert(&self, i: usize) -> bool {
        self.inert.get(i).copied().unwrap_or(false)
    }

    /// Inertness of the stages [`HookPlan::stages_between`] returns for the same bounds.
    pub fn inert_between(&self, a: i32, b: Option<i32>) -> &[bool] {
        let (start, end) = self.range(a, b);
        &self.inert[start..end]
    }

    pub fn has_probe(&self, prio: i32) -> bool {
        self.probes.binary_search(&prio).is_ok()
    }

    pub fn is_first_probe(&self, prio: i32) -> bool {
        self.probes.first() == Some(&prio)
    }

    pub fn is_last_probe(&self, prio: i32) -> bool {
        self.probes.last() == Some(&prio)
    }

    /// The next probe after `prio`, None after the last one.
    pub fn next_probe(&self, prio: i32) -> Option<i32> {
        self.probes.iter().copied().find(|p| *p > prio)
    }

    /// Planned probes strictly between `a` and `b` (a missing event if a packet saw a and b).
    pub fn probes_between(&self, a: i32, b: i32) -> usize {
        self.probes.iter().filter(|p| **p > a && **p < b).count()
    }

    /// Stages run after probe `a` and before probe `b` (None = after the last probe).
    pub fn stages_between(&self, a: i32, b: Option<i32>) -> &[StageSlot] {
        let (start, end) = self.range(a, b);
        &self.stages[start..end]
    }

    fn range(&self, a: i32, b: Option<i32>) -> (usize, usize) {
        let start = self.stages.partition_point(|s| s.priority < a);
        let end = match b {
            Some(b) => self.stages.partition_point(|s| s.priority < b),
            None => self.stages.len(),
        };
        (start, end.max(start))
    }
}

/// The probe before the first stage (INT_MIN is refused by the kernel).
fn first_probe<'a>(stages: impl Iterator<Item = &'a StageSlot>) -> Option<i32> {
    let first = stages.map(|s| s.priority).min()?;
    Some(first.saturating_sub(1).max(i32::MIN + 1))
}

/// Stage `i` is conntrack and the next stage after it that can act is a nat table.
fn folds_into_nat(stages: &[(StageSlot, bool)], i: usize) -> bool {
    stages[i].0.stage == Stage::Conntrack
        && stages[i + 1..]
            .iter()
            .find(|(_, inert)| !inert)
            .is_some_and(|(s, _)| s.stage.table() == Some(Table::Nat))
}

/// Every hook plan of a capture, keyed by (netns inode, family, hook). Plans are shared
/// (`Arc`) with the passes being assembled: no copy per packet.
#[derive(Debug, Clone, Default)]
pub struct ProbePlan {
    hooks: FastMap<(u32, Family, Hook), Arc<HookPlan>>,
}

impl ProbePlan {
    pub fn new() -> ProbePlan {
        ProbePlan::default()
    }

    pub fn insert(&mut self, netns: u32, family: Family, hook: Hook, plan: HookPlan) {
        self.hooks.insert((netns, family, hook), Arc::new(plan));
    }

    pub fn get(&self, netns: u32, family: Family, hook: Hook) -> Option<&HookPlan> {
        self.hooks.get(&(netns, family, hook)).map(|p| &**p)
    }

    /// The shared plan, for passes that keep it.
    pub(super) fn shared(&self, netns: u32, family: Family, hook: Hook) -> Option<Arc<HookPlan>> {
        self.hooks.get(&(netns, family, hook)).cloned()
    }

    /// Leaves out the probes whose states follow from a neighbouring hook's, in the needed
    /// plans of one netns and family (`plans`, per hook; a hook without an entry has no
    /// probes):
    ///
    /// 1. POSTROUTING's entry probe, when the first stage there that can act is nat and both
    ///    FORWARD and OUTPUT (the hooks a packet reaches POSTROUTING from) have probes that
    ///    see their exit state, or derive it (rule 3, [`HookPlan::exit_known`]): nothing
    ///    between them changes headers, mark or conntrack entry, so nat received what the
    ///    previous hook left.
    /// 2. PREROUTING's probe after its last stage that can act, when that is nat and both
    ///    FORWARD and INPUT (the hooks that follow it) have an entry probe: nat left what the
    ///    next hook receives, up to the TTL / hop limit the forward path decrements before
    ///    FORWARD. A packet freed outside netfilter right after PREROUTING (no route, TTL
    ///    exceeded, martian source) meets no later probe: what nat left is then the state
    ///    the drop report carries (mark, conntrack entry, headers at kfree_skb; nothing
    ///    between nat and the free changes them), and the entry conntrack gave nat (new or
    ///    not: whether nat was consulted) follows from it as with nat's own probe. A drop
    ///    report without that state (older recordings, other backends) leaves nat's
    ///    outcome unknown.
    ///
    /// PREROUTING and OUTPUT keep their first probe (the filter decides there).
    ///
    /// No stage is verdict-only here: see [`ProbePlan::derive_across_hooks_with`] for rule 3.
    pub fn derive_across_hooks(plans: &mut [(Hook, HookPlan)]) {
        ProbePlan::derive_across_hooks_with(plans, |_, _| false);
    }

    /// [`ProbePlan::derive_across_hooks`], first with rule 3, given which stages are
    /// *verdict-only* (`verdict_only(hook, stage)`: a table that can let the packet through
    /// or drop it but changes nothing the probes observe — headers, mark, conntrack entry or
    /// its mark — and cannot steal or queue it):
    ///
    /// 3. FORWARD's and OUTPUT's probe after their last stages, when every stage after the
    ///    hook's last other probe is inert or verdict-only, exactly one of them verdict-only
    ///    (a drop there has one culprit), POSTROUTING has a probe and nothing before its
    ///    first probe can drop the packet (inert stages, iptables nat). Why it is safe: the
    ///    packet leaves those stages unchanged if it leaves them at all, so the state at the
    ///    last probe is the hook's exit state (and rule 1 takes POSTROUTING's entry from it);
    ///    a packet seen in POSTROUTING was accepted; a NETFILTER_DROP report whose last probe
    ///    passed is that one was dropped by the verdict-only stage (nothing between it and
    ///    POSTROUTING's first probe drops — an iptables nat failing to set up a binding
    ///    does, rarely, and is then blamed on the verdict-only stage); a packet freed outside
    ///    netfilter was accepted first. A packet never seen again leaves its verdict
    ///    unknown. INPUT and POSTROUTING keep their last probe: it tells delivery.
    pub fn derive_across_hooks_with(
        plans: &mut [(Hook, HookPlan)],
        verdict_only: impl Fn(Hook, &StageSlot) -> bool,
    ) {
        let post_sees = plans
            .iter()
            .any(|(k, p)| *k == Hook::Postrouting && p.first_probe_sees_survivors());
        if post_sees {
            for (hook, plan) in plans.iter_mut() {
                if !matches!(hook, Hook::Forward | Hook::Output) {
                    continue;
                }
                let h = *hook;
                if let Some(p) = plan.without_probe_after_verdicts(|s| verdict_only(h, s)) {
                    *plan = p;
                }
            }
        }
        let seen = |h: Hook, f: &dyn Fn(&HookPlan) -> bool| {
            plans
                .iter()
                .any(|(k, p)| *k == h && !p.probes.is_empty() && f(p))
        };
        let exits_seen = seen(Hook::Forward, &|p| p.exit_known(Hook::Forward))
            && seen(Hook::Output, &|p| p.exit_known(Hook::Output));
        let entries_seen = seen(Hook::Forward, &HookPlan::has_entry_probe)
            && seen(Hook::Input, &HookPlan::has_entry_probe);
        for (hook, plan) in plans.iter_mut() {
            let fewer = match hook {
                Hook::Postrouting if exits_seen => plan.without_entry_before_nat(),
                Hook::Prerouting if entries_seen => plan.without_probe_after_last_nat(),
                _ => None,
            };
            if let Some(p) = fewer {
                *plan = p;
            }
        }
    }

    /// Bracket every table of `tables` (per family: the tables registered there) on all five
    /// hooks of `netns`, with conntrack stages when `conntrack`.
    pub fn insert_iptables(
        &mut self,
        netns: u32,
        family: Family,
        tables: &[Table],
        conntrack: bool,
    ) {
        for hook in Hook::ALL {
            let stages = HookPlan::iptables_stages(hook, tables, conntrack);
            self.insert(netns, family, hook, HookPlan::bracketing(stages));
        }
    }
}

//! Where the probes sit: per network namespace, family and hook, the ascending probe
//! priorities and the stages (tables, conntrack, other base chains) registered between them.
//!
//! Kernel ordering rule (measured, see shared/notes/kernel.md): a hook registered at an
//! existing priority runs BEFORE the existing one. So a probe at priority `a` runs before a
//! stage at `a`, and the stages between probes `a` and `b` are those with `a <= prio < b`.

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
}

impl HookPlan {
    /// A plan from the probe priorities actually attached and the stages registered.
    pub fn new(mut probes: Vec<i32>, mut stages: Vec<StageSlot>) -> HookPlan {
        probes.sort_unstable();
        probes.dedup();
        stages.sort_by_key(|s| s.priority);
        HookPlan { probes, stages }
    }

    /// One probe before the first stage and one right after each stage (priority + 1). A
    /// stage at INT_MAX (conntrack confirm) cannot be followed: it stays after the last probe.
    pub fn bracketing(stages: Vec<StageSlot>) -> HookPlan {
        let mut probes: Vec<i32> = stages
            .iter()
            .filter_map(|s| s.priority.checked_add(1))
            .collect();
        if let Some(first) = stages.iter().map(|s| s.priority).min() {
            // INT_MIN is refused by the kernel.
            probes.push(first.saturating_sub(1).max(i32::MIN + 1));
        }
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
        let start = self.stages.partition_point(|s| s.priority < a);
        let end = match b {
            Some(b) => self.stages.partition_point(|s| s.priority < b),
            None => self.stages.len(),
        };
        &self.stages[start..end.max(start)]
    }
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

//! Per-packet assembly: a stream of probe and drop events (interleaved across packets, in order
//! per packet) becomes one [`PacketTrace`] per skb traversal, with per-hook, per-stage verdicts
//! and before/after packet states.
//!
//! Identity: a traversal is (skb address, gen) in one netns. skb addresses are recycled, so a
//! new gen for an address ends the older traversal; a netns change (veth hands the same skb to
//! the peer namespace) starts a new trace.
//!
//! A traversal is complete when the packet came out of a final hook (INPUT, POSTROUTING) — except
//! towards `lo`, where it comes back in as PREROUTING — or when it was dropped. Otherwise it is
//! resolved when the event time has moved `idle_timeout_ns` past its last event (a packet that
//! vanished inside a stage without a drop report is then STOLEN), when capacity forces it out
//! (counted, incomplete), or by [`Assembler::flush`] at the end of the capture (incomplete).

mod boundary;
pub(crate) mod fasthash;
mod fold;
mod pass;
mod plan;

pub use plan::{HookPlan, ProbePlan, StageSlot, PRIO_DEFRAG};

use crate::event::{DropEvent, Event, Headers, ProbeEvent};
use crate::netfilter::Hook;
use crate::packet::{Fate, PacketState, PacketTrace, Shared};
use fasthash::FastMap;
use pass::{Closed, Pass, PassEnd};
use serde::Serialize;

/// SKB_DROP_REASON_NETFILTER_DROP on the kernels measured; used only when the drop event
/// carries no resolved name (the number differs between kernels).
pub const NETFILTER_DROP_REASON_FALLBACK: u32 = 12;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssemblerConfig {
    /// Event-time gap after which a packet with no new event is resolved.
    pub idle_timeout_ns: u64,
    /// Most packets assembled at once; beyond it the least recently seen are forced out.
    pub max_packets: usize,
}

impl Default for AssemblerConfig {
    fn default() -> Self {
        // Hook-to-hook gaps are microseconds; a second leaves room for NFQUEUE round trips.
        AssemblerConfig {
            idle_timeout_ns: 1_000_000_000,
            max_packets: 65_536,
        }
    }
}

/// Counters shown in the capture summary: nothing is dropped silently.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct AssemblerStats {
    pub probe_events: u64,
    pub drop_events: u64,
    pub packets: u64,
    pub incomplete_packets: u64,
    /// Packets resolved by the idle timeout.
    pub timed_out: u64,
    /// Packets forced out because `max_packets` was reached.
    pub evicted_capacity: u64,
    /// Drop events for a packet not being assembled (already complete, or never seen).
    pub orphan_drops: u64,
    /// Probe events without headers and no earlier snapshot to carry forward.
    pub missing_headers: u64,
    /// Probe events on a hook or priority the plan does not know.
    pub unplanned_probes: u64,
    /// Traversals ended because their skb address was reused.
    pub recycled: u64,
    /// Probes a packet passed without an event (sparse probes, nothing changed), filled in
    /// from the next event's last-probe-passed.
    pub synthesized_probes: u64,
    /// Stopped sparse traversals whose last probe the probes' state still knew at the idle
    /// timeout ([`Assembler::advance_with`]).
    pub located: u64,
}

/// One traversal being assembled.
struct Partial {
    trace: PacketTrace,
    last_ts: u64,
    /// Last header snapshot, carried forward over events that send none (shared with the
    /// states that hold it).
    headers: Option<Shared<Headers>>,
    cur: Option<Pass>,
}

pub struct Assembler {
    plan: ProbePlan,
    config: AssemblerConfig,
    partials: FastMap<(u64, u64), Partial>,
    /// Newest gen seen per skb address, to notice recycling.
    gen_of_skb: FastMap<u64, u64>,
    next_id: u64,
    watermark: u64,
    next_sweep: u64,
    stats: AssemblerStats,
    netfilter_drop_reason: u32,
}

/// Most position lookups ([`Assembler::advance_with`]) per sweep.
const LOCATE_PER_SWEEP: usize = 256;

/// Where the probes last saw traversal (skb, gen): the last probe (hook, priority) it passed,
/// if still known (see [`Assembler::advance_with`]).
pub type LastProbe<'a> = dyn FnMut(u64, u64) -> Option<(Hook, i32)> + 'a;

/// Why a traversal is being resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resolution {
    Complete,
    TimedOut,
    Recycled,
    Evicted,
    CaptureEnded,
}

impl Assembler {
    pub fn new(plan: ProbePlan, config: AssemblerConfig) -> Assembler {
        Assembler {
            plan,
            config,
            partials: FastMap::default(),
            gen_of_skb: FastMap::default(),
            next_id: 0,
            watermark: 0,
            next_sweep: 0,
            stats: AssemblerStats::default(),
            netfilter_drop_reason: NETFILTER_DROP_REASON_FALLBACK,
        }
    }

    /// The running kernel's SKB_DROP_REASON_NETFILTER_DROP (resolved from BTF), for drop
    /// events without a reason name.
    pub fn set_netfilter_drop_reason(&mut self, reason: u32) {
        self.netfilter_drop_reason = reason;
    }

    /// Add plans (e.g. a namespace attached later).
    pub fn plan_mut(&mut self) -> &mut ProbePlan {
        &mut self.plan
    }

    pub fn stats(&self) -> &AssemblerStats {
        &self.stats
    }

    /// Traversals currently held.
    pub fn pending(&self) -> usize {
        self.partials.len()
    }

    /// Feed one event; returns the traversals it completed (or that timed out meanwhile).
    pub fn push(&mut self, event: Event) -> Vec<PacketTrace> {
        let mut out = Vec::new();
        self.watermark = self.watermark.max(event.ts_ns());
        match event {
            Event::Probe(p) => self.on_probe(p, &mut out),
            Event::Drop(d) => self.on_drop(d, &mut out),
        }
        self.sweep_if_due(&mut out, None);
        out
    }

    /// Event time has reached `now_ns` (CLOCK_MONOTONIC, the probes' clock) even though no
    /// event says so: call it from a timer so packets resolve while the stream is quiet.
    pub fn advance(&mut self, now_ns: u64) -> Vec<PacketTrace> {
        let mut out = Vec::new();
        self.watermark = self.watermark.max(now_ns);
        self.sweep_if_due(&mut out, None);
        out
    }

    /// [`Assembler::advance`] that can ask where the probes last saw a traversal: before a
    /// sparse traversal (see [`ProbeEvent::sparse`]) that stopped between events is resolved
    /// by the idle timeout, `last_probe(skb, gen)` gives the last probe it passed, if the
    /// probes' state still holds it (the nfhook collector reads the kernel maps). The
    /// probes up to it were passed unchanged; the packet vanished in the stages after it.
    /// Without an answer the trace names no stage (an honest range, see pass.rs).
    pub fn advance_with(&mut self, now_ns: u64, last_probe: &mut LastProbe) -> Vec<PacketTrace> {
        let mut out = Vec::new();
        self.watermark = self.watermark.max(now_ns);
        self.sweep_if_due(&mut out, Some(last_probe));
        out
    }

    /// End of capture: everything still held, marked incomplete where the outcome is unknown.
    pub fn flush(&mut self) -> Vec<PacketTrace> {
        let keys: Vec<(u64, u64)> = self.partials.keys().copied().collect();
        let mut out: Vec<PacketTrace> = keys
            .into_iter()
            .filter_map(|k| self.resolve(k, Resolution::CaptureEnded))
            .collect();
        out.sort_by_key(|t| t.id);
        out
    }

    fn on_probe(&mut self, mut e: ProbeEvent, out: &mut Vec<PacketTrace>) {
        self.stats.probe_events += 1;
        let key = (e.skb, e.gen);
        self.end_recycled(e.skb, e.gen, out);
        // One lookup decides: held in this netns, held in another (ends it), or new.
        let held = match self.partials.get(&key).map(|p| p.trace.netns == e.netns) {
            Some(true) => true,
            Some(false) => {
                out.extend(self.resolve(key, Resolution::Complete));
                false
            }
            None => false,
        };
        if !held {
            self.make_room(out);
            let partial = self.new_partial(&e);
            self.partials.insert(key, partial);
            self.gen_of_skb.insert(e.skb, e.gen);
        }
        if !self
            .plan
            .get(e.netns, e.family, e.hook)
            .is_some_and(|p| p.has_probe(e.priority))
        {
            self.stats.unplanned_probes += 1;
        }
        let Some(partial) = self.partials.get_mut(&key) else {
            return;
        };
        partial.last_ts = e.ts_ns;
        passed_silently(partial, e.prev, e.sparse, &mut self.stats);
        let state = state_of(partial, &mut e, &mut self.stats);
        let continues = partial.cur.as_ref().is_some_and(|c| {
            c.hook() == e.hook && c.last_priority().is_some_and(|last| e.priority > last)
        });
        if !continues {
            let plan = self.plan.shared(e.netns, e.family, e.hook);
            let entry = hand_over(partial, plan.as_deref(), &e, state.as_ref());
            close_current(partial, &PassEnd::MovedOn);
            let pass = Pass::start(&mut e, plan, entry);
            // A later pass missing its first probe means an event was lost.
            if !partial.trace.hooks.is_empty() && !pass_plan_first(&pass, e.priority) {
                partial.trace.incomplete = true;
            }
            partial.cur = Some(pass);
        }
        if let Some(cur) = partial.cur.as_mut() {
            cur.add(&mut e, state);
        }
        if delivered(partial) {
            out.extend(self.resolve(key, Resolution::Complete));
        }
    }

    fn on_drop(&mut self, mut d: DropEvent, out: &mut Vec<PacketTrace>) {
        self.stats.drop_events += 1;
        let key = (d.skb, d.gen);
        let netfilter = self.is_netfilter_drop(&d);
        let Some(partial) = self.partials.get_mut(&key) else {
            self.stats.orphan_drops += 1;
            return;
        };
        partial.last_ts = d.ts_ns;
        let sparse = partial.cur.as_ref().is_some_and(|c| c.sparse);
        passed_silently(partial, d.prev, sparse, &mut self.stats);
        // The state at the free is what the current pass left only if the packet passed no
        // probe of another hook in between (those events lost).
        let same_hook = d
            .prev
            .is_none_or(|(h, _)| partial.cur.as_ref().is_some_and(|c| c.hook() == h));
        let end = PassEnd::Dropped {
            reason: d.reason,
            reason_name: d.reason_name.clone(),
            netfilter,
            at_free: d.state.take().filter(|_| same_hook),
        };
        let exit = partial
            .cur
            .as_ref()
            .filter(|_| netfilter)
            .and_then(|c| c.exit_state());
        let mut closed = partial.cur.take().map(|c| c.close(&end));
        let unseen = closed.as_ref().zip(exit).and_then(|(c, exit)| {
            dropped_in_next_hook(&self.plan, &partial.trace, c, exit, d.ts_ns, &end)
        });
        if let Some(next) = unseen {
            absorb(partial, closed.replace(next).expect("closed"));
        }
        let hook = closed
            .as_ref()
            .map(|c| c.pass.hook)
            .or_else(|| partial.trace.hooks.last().map(|h| h.hook));
        let vanished_in = closed.as_ref().and_then(|c| c.vanished_in.clone());
        if let Some(c) = closed {
            absorb(partial, c);
        }
        partial.trace.fate = match (hook, vanished_in) {
            (Some(hook), Some(stage)) => Fate::Dropped { hook, stage },
            (Some(after), None) => Fate::DroppedOutside {
                after,
                reason: d.reason,
                reason_name: d.reason_name,
            },
            (None, _) => Fate::Unknown,
        };
        out.extend(self.resolve(key, Resolution::Complete));
    }

    fn is_netfilter_drop(&self, d: &DropEvent) -> bool {
        match &d.reason_name {
            Some(name) => name.trim_start_matches("SKB_DROP_REASON_") == "NETFILTER_DROP",
            None => d.reason == self.netfilter_drop_reason,
        }
    }

    fn new_partial(&mut self, e: &ProbeEvent) -> Partial {
        let id = self.next_id;
        self.next_id += 1;
        let trace = PacketTrace {
            id,
            skb: e.skb,
            gen: e.gen,
            netns: e.netns,
            family: e.family,
            first_ts_ns: e.ts_ns,
            hooks: Vec::new(),
            incomplete: false,
            fate: Fate::Unknown,
        };
        Partial {
            trace,
            last_ts: e.ts_ns,
            headers: None,
            cur: None,
        }
    }

    /// A new gen on an skb address means the older traversal's skb was freed and reused.
    fn end_recycled(&mut self, skb: u64, gen: u64, out: &mut Vec<PacketTrace>) {
        if let Some(old) = self.gen_of_skb.get(&skb).copied().filter(|g| *g != gen) {
            if self.partials.contains_key(&(skb, old)) {
                self.stats.recycled += 1;
                out.extend(self.resolve((skb, old), Resolution::Recycled));
            }
        }
    }

    /// Keep memory bounded: force out the least recently seen sixteenth when full.
    fn make_room(&mut self, out: &mut Vec<PacketTrace>) {
        if self.partials.len() < self.config.max_packets.max(1) {
            return;
        }
        let mut by_age: Vec<(u64, (u64, u64))> =
            self.partials.iter().map(|(k, p)| (p.last_ts, *k)).collect();
        by_age.sort_unstable();
        let n = (self.config.max_packets / 16).max(1);
        for (_, key) in by_age.into_iter().take(n) {
            self.stats.evicted_capacity += 1;
            out.extend(self.resolve(key, Resolution::Evicted));
        }
    }

    /// Resolve idle traversals; scans at most every quarter timeout of event time.
    fn sweep_if_due(&mut self, out: &mut Vec<PacketTrace>, mut last_probe: Option<&mut LastProbe>) {
        if self.watermark < self.next_sweep {
            return;
        }
        let timeout = self.config.idle_timeout_ns;
        self.next_sweep = self.watermark.saturating_add((timeout / 4).max(1));
        let idle: Vec<(u64, u64)> = self
            .partials
            .iter()
            .filter(|(_, p)| p.last_ts.saturating_add(timeout) <= self.watermark)
            .map(|(k, _)| *k)
            .collect();
        // Asking may be a system call per traversal: a bounded number per sweep, so a flood
        // of stopped traversals (e.g. their last records lost) cannot stall the collector.
        let mut budget = LOCATE_PER_SWEEP;
        for key in idle {
            self.stats.timed_out += 1;
            if let Some(ask) = last_probe.as_mut() {
                if budget > 0 && self.locate(key, &mut **ask) {
                    budget -= 1;
                }
            }
            out.extend(self.resolve(key, Resolution::TimedOut));
        }
    }

    /// A sparse traversal stopped before its pass's last probe: where did the probes last
    /// see it? When they say (same pass), the probes up to there are filled in and the pass
    /// is no longer open-ended.
    /// Returns whether it asked.
    fn locate(&mut self, key: (u64, u64), ask: &mut LastProbe) -> bool {
        let Some(p) = self.partials.get_mut(&key) else {
            return false;
        };
        let Some(cur) = p.cur.as_mut() else {
            return false;
        };
        if !cur.sparse || cur.at_last_probe() {
            return false;
        }
        let Some((hook, prio)) = ask(key.0, key.1) else {
            return true;
        };
        if hook != cur.hook() || cur.last_priority().is_some_and(|l| prio < l) {
            return true;
        }
        self.stats.synthesized_probes += cur.pass_silently_upto(prio) as u64;
        self.stats.located += 1;
        cur.sparse = false;
        true
    }

    /// Close the traversal, decide its fate, and hand it out.
    fn resolve(&mut self, key: (u64, u64), why: Resolution) -> Option<PacketTrace> {
        let mut partial = self.partials.remove(&key)?;
        if self.gen_of_skb.get(&key.0) == Some(&key.1) {
            self.gen_of_skb.remove(&key.0);
        }
        let end = match why {
            Resolution::CaptureEnded => PassEnd::CaptureEnded,
            _ => PassEnd::Ended,
        };
        let cur = partial.cur.take();
        let at_end = cur.as_ref().is_some_and(|c| c.at_exit());
        if let Some(cur) = cur {
            let hook = cur.hook();
            let closed = cur.close(&end);
            if partial.trace.fate == Fate::Unknown {
                partial.trace.fate = fate_after_pass(hook, at_end, &closed, why);
            }
            absorb(&mut partial, closed);
        }
        if matches!(why, Resolution::Evicted) || partial.trace.fate == Fate::Unknown {
            partial.trace.incomplete = true;
        }
        self.stats.packets += 1;
        self.stats.incomplete_packets += partial.trace.incomplete as u64;
        Some(partial.trace)
    }
}

/// Fate of a traversal whose last pass ended without a drop report.
fn fate_after_pass(hook: Hook, at_end: bool, closed: &Closed, why: Resolution) -> Fate {
    match (&closed.vanished_in, at_end) {
        (Some(_), _) if why == Resolution::CaptureEnded => Fate::Unknown,
        (Some(stage), _) => Fate::Stolen {
            hook,
            stage: stage.clone(),
        },
        (None, true) if is_final(hook) => Fate::Delivered,
        (None, true) if why == Resolution::CaptureEnded => Fate::Unknown,
        (None, true) => Fate::Vanished { after: hook },
        (None, false) => Fate::Unknown,
    }
}

fn is_final(hook: Hook) -> bool {
    matches!(hook, Hook::Input | Hook::Postrouting)
}

/// The packet came out of a final hook and is not looping back through `lo`.
fn delivered(p: &Partial) -> bool {
    let Some(cur) = p.cur.as_ref() else {
        return false;
    };
    cur.at_last_probe()
        && is_final(cur.hook())
        && !(cur.hook() == Hook::Postrouting && cur.meta.out_dev.as_deref() == Some("lo"))
}

/// A netfilter drop after `c`, a pass the packet left with `exit` (nothing after its last
/// probe can act): in the next hook, before its first probe, when its plan has none before
/// its first stages (see boundary.rs). That hook's pass, if so.
fn dropped_in_next_hook(
    plan: &ProbePlan,
    trace: &PacketTrace,
    c: &Closed,
    (from, exit): (Hook, PacketState),
    ts_ns: u64,
    end: &PassEnd,
) -> Option<Closed> {
    if c.vanished_in.is_some() {
        return None;
    }
    let next = Hook::Postrouting;
    let entry = boundary::entry_from_previous(next, from, &exit)?;
    let plan = plan
        .get(trace.netns, trace.family, next)
        .filter(|p| p.entry_derived())?;
    Some(pass::dropped_before_first_probe(
        next, ts_ns, &c.pass, plan, entry, end,
    ))
}

/// The packet moves on from the current pass to one of hook `e.hook` with `plan`, seen there
/// with `state`: the current pass gets that state when its plan derives its exit from the
/// next hook's entry, and the new pass gets the current one's exit state when its plan
/// derives its entry from it (returned). See boundary.rs.
fn hand_over(
    p: &mut Partial,
    plan: Option<&HookPlan>,
    e: &ProbeEvent,
    state: Option<&PacketState>,
) -> Option<PacketState> {
    let cur = p.cur.as_mut()?;
    if cur.exit_derived() {
        let at_entry = plan.is_some_and(|n| n.has_entry_probe() && n.is_first_probe(e.priority));
        cur.next_entry = state.filter(|_| at_entry).map(|s| (e.hook, s.clone()));
    }
    if !plan.is_some_and(|n| n.entry_derived()) {
        return None;
    }
    let (from, exit) = cur.exit_state()?;
    boundary::entry_from_previous(e.hook, from, &exit)
}

fn pass_plan_first(pass: &Pass, prio: i32) -> bool {
    pass.plan.as_ref().is_none_or(|p| p.is_first_probe(prio))
}

fn close_current(p: &mut Partial, end: &PassEnd) {
    if let Some(cur) = p.cur.take() {
        let closed = cur.close(end);
        absorb(p, closed);
    }
}

fn absorb(p: &mut Partial, closed: Closed) {
    p.trace.incomplete |= closed.gap;
    p.trace.hooks.push(closed.pass);
}

/// Before an event with `prev` (the last probe passed): the probes of the current pass after
/// its last seen one, up to `prev`, were passed without events (sparse probes: unchanged).
/// A sparse event that says nothing about what came before, other than a traversal's first,
/// follows a lost record: the trace is incomplete.
fn passed_silently(
    p: &mut Partial,
    prev: Option<(Hook, i32)>,
    sparse: bool,
    stats: &mut AssemblerStats,
) {
    let Some(cur) = p.cur.as_mut() else {
        return;
    };
    match prev {
        Some((hook, prio)) if hook == cur.hook() => {
            stats.synthesized_probes += cur.pass_silently_upto(prio) as u64;
        }
        // A probe of another hook: that hook's pass had no event at all (lost).
        Some(_) => p.trace.incomplete = true,
        None if sparse => p.trace.incomplete = true,
        None => {}
    }
}

/// The packet state at this probe, carrying the last header snapshot forward (the event's
/// snapshot is moved out: one copy kept, one in the state).
fn state_of(
    p: &mut Partial,
    e: &mut ProbeEvent,
    stats: &mut AssemblerStats,
) -> Option<PacketState> {
    if let Some(h) = e.headers.take() {
        p.headers = Some(h.into());
    }
    match &p.headers {
        Some(h) => Some(PacketState {
            headers: h.clone(),
            mark: e.mark,
            ct: e.ct,
        }),
        None => {
            stats.missing_headers += 1;
            p.trace.incomplete = true;
            None
        }
    }
}

//! One capture: load the programs, link the probes in every selected netns (each on a thread
//! inside it), read the ring buffer with tokio, decode and assemble per packet, and stop on
//! Ctrl-C / SIGTERM / --count / --duration. Dropping the session closes every link fd, which
//! unregisters the hooks; the kfree_skb link goes with the aya object.

use std::time::Duration;

use super::ringread::EventRing;
use anyhow::{Context, Result};
use serde::Serialize;
use tokio::io::unix::AsyncFd;
use trace_common::filter::FilterProgram;
use trace_common::record::Counters;
use trace_core::assemble::{Assembler, AssemblerConfig, AssemblerStats, ProbePlan};
use trace_core::decode::{Decoder, Symbols};
use trace_core::event::Event;
use trace_core::packet::PacketTrace;

use super::classic::{Classic, EventSource};
use super::loader::{LoadOptions, Loaded};
use super::plan::{self, ProbeMode, Target};
use super::probeset::{PlanChange, ProbeSet, Replan};
use super::xtpos::{Blob, PacketTable, XtTracker};

/// How often the collector drains the ring buffer without a wakeup.
pub const DRAIN_INTERVAL: Duration = Duration::from_millis(20);

/// Capture settings (from the command line).
#[derive(Debug, Clone)]
pub struct CaptureOptions {
    pub targets: Vec<Target>,
    pub filter: FilterProgram,
    pub sample_n: u32,
    pub rate_limit: u32,
    pub ringbuf_size: u32,
    /// Stop after this many packets.
    pub count: Option<u64>,
    pub duration: Option<Duration>,
}

/// Per-netns attachment summary.
#[derive(Debug, Clone, Serialize)]
pub struct Attached {
    pub label: String,
    pub netns: u32,
    pub links: usize,
}

/// Final counters: kernel side (summed per-CPU) and collector side.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub seen: u64,
    pub filtered_out: u64,
    pub sampled_out: u64,
    pub rate_limited: u64,
    pub tracked: u64,
    pub emitted: u64,
    /// Records lost in the kernel (ring buffer full) — never silent.
    pub lost: u64,
    pub drops: u64,
    /// Records read from the ring buffer, and those that failed to decode.
    pub received: u64,
    pub decode_errors: u64,
    pub packets: u64,
    pub assembler: AssemblerStats,
    pub attached: Vec<Attached>,
    /// `--rule-positions` only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule_positions: Option<PositionsSummary>,
}

/// What became of the x_tables rule-position records (`--rule-positions`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct PositionsSummary {
    /// x_tables match/target functions probed.
    pub functions: usize,
    /// XT records read from the ring buffer.
    pub records: u64,
    /// Table traversals resolved to chain:rule positions and handed to reconstruction.
    pub traversals: u64,
    /// Traversals applied to a reconstructed packet (filled in by the rule-level consumer).
    pub used: u64,
    /// Traversals that matched no reconstructed packet (filled in by the rule-level consumer).
    pub unused: u64,
    /// Records that could not be placed (no blob, pointer outside it, IPv6 table, ...).
    pub unresolved: u64,
    /// Records the kernel lost while positions were on (any kind: when > 0, every
    /// traversal from then on is marked incomplete, so it confirms but never rules out).
    pub lost: u64,
}

impl Summary {
    fn new(
        c: Counters,
        received: u64,
        decode_errors: u64,
        packets: u64,
        asm: AssemblerStats,
        attached: Vec<Attached>,
    ) -> Self {
        Summary {
            seen: c.seen,
            filtered_out: c.filtered_out,
            sampled_out: c.sampled_out,
            rate_limited: c.rate_limited,
            tracked: c.tracked,
            emitted: c.emitted,
            lost: c.lost,
            drops: c.drops,
            received,
            decode_errors,
            packets,
            assembler: asm,
            attached,
            rule_positions: None,
        }
    }
}

/// Loaded programs + links. Links close (detach) on drop.
pub struct Session {
    /// nfhook's programs, or the fentry/kprobe backend's (issue 6).
    loaded: Box<dyn EventSource>,
    /// nfhook's links (None for fentry/kprobe, whose programs are global).
    probes: Option<ProbeSet>,
    plan: ProbePlan,
    pub attached: Vec<Attached>,
    netfilter_drop: Option<u32>,
    discard: bool,
    /// nfhook: where the probes last saw a traversal (for packets that stopped mid-hook).
    positions: Option<super::loader::Positions>,
    /// (inode, path) of every traced netns: where rule blobs are read.
    netns_paths: Vec<(u32, std::path::PathBuf)>,
    /// `--rule-positions`: the probed x_tables functions (None: positions off).
    rule_functions: Option<Vec<String>>,
}

impl Session {
    /// Load the programs and link the probes in every target namespace, only where needed
    /// ([`ProbeMode::Needed`]).
    pub fn attach(opts: &CaptureOptions) -> Result<Session> {
        Session::attach_with(opts, ProbeMode::Needed)
    }

    /// [`Session::attach`] with the probe placement `mode` (`--probes`).
    pub fn attach_with(opts: &CaptureOptions, mode: ProbeMode) -> Result<Session> {
        let mut loaded = Loaded::load(&LoadOptions {
            ringbuf_size: opts.ringbuf_size,
            sample_n: opts.sample_n,
            rate_limit: opts.rate_limit,
            filter: opts.filter,
        })
        .context("loading the eBPF programs")?;
        let positions = loaded
            .take_positions()
            .map_err(|e| log::warn!("stopped packets will not be located: {e}"))
            .ok();
        let netfilter_drop = loaded
            .drop_reasons
            .iter()
            .find(|(_, n)| *n == "NETFILTER_DROP")
            .map(|(v, _)| *v);
        let mut plan = ProbePlan::new();
        let mut probes = ProbeSet::new(mode);
        let mut attached = Vec::new();
        for t in &opts.targets {
            let (inode, n) = probes.attach(&mut loaded, t, &mut plan)?;
            log::info!("netns {} (inode {inode}): {n} netfilter links", t.label);
            attached.push(Attached {
                label: t.label.clone(),
                netns: inode,
                links: n,
            });
        }
        Ok(Session {
            loaded: Box::new(loaded),
            probes: Some(probes),
            plan,
            attached,
            netfilter_drop,
            discard: false,
            positions,
            netns_paths: Vec::new(),
            rule_functions: None,
        })
    }

    /// A session over the fentry or kprobe backend (already loaded and attached, e.g. by
    /// `classic::select`): its programs are global, so they are restricted to the targets'
    /// namespaces; the plan brackets each registered table at P / P + 1 (`classic::probe_plan`).
    pub fn attach_classic(opts: &CaptureOptions, mut classic: Classic) -> Result<Session> {
        let netfilter_drop = classic
            .drop_reasons
            .iter()
            .find(|(_, n)| *n == "NETFILTER_DROP")
            .map(|(v, _)| *v);
        let mut regs = Vec::new();
        let mut attached = Vec::new();
        let mut netns_paths = Vec::new();
        for t in &opts.targets {
            let inode = crate::netns::inode_of(&t.path)? as u32;
            netns_paths.push((inode, t.path.clone()));
            regs.push((inode, plan::discover(&t.path)?));
            attached.push(Attached {
                label: t.label.clone(),
                netns: inode,
                links: classic.attached.len(),
            });
        }
        classic.restrict_netns(&regs.iter().map(|(i, _)| *i).collect::<Vec<_>>())?;
        let plan = super::classic::probe_plan(&regs);
        Ok(Session {
            loaded: Box::new(classic),
            probes: None,
            plan,
            attached,
            netfilter_drop,
            discard: false,
            positions: None,
            netns_paths,
            rule_functions: None,
        })
    }

    /// Resolve the x_tables records of a backend loaded with rule positions
    /// (`Classic::load_with(.., true)` + `attach_rule_probes`, whose `rule_functions` these
    /// are) into table traversals for [`Session::run_events_positioned`]. Rule blobs are read
    /// in the traced namespaces, again whenever a table's blob moves (ruleset replaced).
    pub fn track_rule_positions(&mut self, probed_functions: Vec<String>) {
        self.rule_functions = Some(probed_functions);
    }

    /// The probe plan (per netns inode, family, hook).
    pub fn plan(&self) -> &ProbePlan {
        &self.plan
    }

    /// Number of netfilter links held (probes added by re-planning included).
    pub fn link_count(&self) -> usize {
        self.probes.as_ref().map_or(0, |p| p.link_count())
    }

    /// nfhook: where rule changes are reported so the probes they need are attached (see
    /// [`super::probeset`]); the new plans come back through it too. None for fentry/kprobe.
    pub fn replan_handle(&self) -> Option<Replan> {
        self.probes.as_ref().map(|p| p.replan_handle())
    }

    /// Read, decode and assemble until a stop condition; `on_packet` gets every traversal.
    /// Returns the summary (after detaching nothing: the caller drops the session).
    pub fn run(
        &mut self,
        opts: &CaptureOptions,
        on_packet: impl FnMut(&PacketTrace) -> Result<()>,
    ) -> Result<Summary> {
        self.run_with_events(opts, |_| Ok(()), on_packet)
    }

    /// [`Session::run`], also handing every decoded event to `on_event` (recording, rule-level
    /// reconstruction) before assembly.
    pub fn run_with_events(
        &mut self,
        opts: &CaptureOptions,
        on_event: impl FnMut(&Event) -> Result<()>,
        on_packet: impl FnMut(&PacketTrace) -> Result<()>,
    ) -> Result<Summary> {
        self.run_with_events_ticked(opts, || Ok(false), on_event, on_packet)
    }

    /// [`Session::run_with_events`] with `on_tick` as in [`Session::run_events_ticked`].
    pub fn run_with_events_ticked(
        &mut self,
        opts: &CaptureOptions,
        mut on_tick: impl FnMut() -> Result<bool>,
        mut on_event: impl FnMut(&Event) -> Result<()>,
        on_packet: impl FnMut(&PacketTrace) -> Result<()>,
    ) -> Result<Summary> {
        self.run_inner(
            opts,
            |e| {
                on_event(&e)?;
                Ok((Some(e), 0))
            },
            on_packet,
            true,
            &mut on_tick,
            &mut |_| Ok(()),
        )
    }

    /// Only decode and hand out events (their consumer assembles, e.g. the rule-level
    /// replayer): no second assembly in the hot loop. `on_event` returns how many packets the
    /// event completed (for --count and `Summary::packets`).
    pub fn run_events(
        &mut self,
        opts: &CaptureOptions,
        on_event: impl FnMut(Event) -> Result<u64>,
    ) -> Result<Summary> {
        self.run_events_ticked(opts, || Ok(false), on_event)
    }

    /// [`Session::run_events`], calling `on_tick` every [`DRAIN_INTERVAL`] before the ring
    /// buffer is drained, with or without traffic (rule dump refreshes: they must not wait
    /// for the next packet, or that packet would be resolved against the dump before it).
    /// `on_tick` returning true stops the capture like Ctrl-C (a stop requested before the
    /// session's own signal listeners existed).
    pub fn run_events_ticked(
        &mut self,
        opts: &CaptureOptions,
        on_tick: impl FnMut() -> Result<bool>,
        on_event: impl FnMut(Event) -> Result<u64>,
    ) -> Result<Summary> {
        self.run_events_positioned(opts, on_tick, |_| Ok(()), on_event)
    }

    /// [`Session::run_events_ticked`] with rule positions ([`Session::track_rule_positions`]):
    /// `on_positions` gets each resolved table traversal before any later event of its
    /// packet reaches `on_event` (so before the event that can complete the packet); the
    /// traversals still open at the end come after the last event.
    pub fn run_events_positioned(
        &mut self,
        opts: &CaptureOptions,
        mut on_tick: impl FnMut() -> Result<bool>,
        mut on_positions: impl FnMut(PacketTable) -> Result<()>,
        mut on_event: impl FnMut(Event) -> Result<u64>,
    ) -> Result<Summary> {
        self.run_inner(
            opts,
            |e| Ok((None, on_event(e)?)),
            |_| Ok(()),
            false,
            &mut on_tick,
            &mut on_positions,
        )
    }

    /// Drain the ring buffer and count records without decoding them: measures what the
    /// probes cost the kernel apart from the collector's work (benchmarks only).
    pub fn run_discard(&mut self, opts: &CaptureOptions) -> Result<Summary> {
        self.discard = true;
        let r = self.run_inner(
            opts,
            |_| Ok((None, 0)),
            |_| Ok(()),
            false,
            &mut || Ok(false),
            &mut |_| Ok(()),
        );
        self.discard = false;
        r
    }

    fn run_inner(
        &mut self,
        opts: &CaptureOptions,
        mut on_event: impl FnMut(Event) -> Result<(Option<Event>, u64)>,
        mut on_packet: impl FnMut(&PacketTrace) -> Result<()>,
        assemble: bool,
        on_tick: &mut dyn FnMut() -> Result<bool>,
        on_positions: &mut dyn FnMut(PacketTable) -> Result<()>,
    ) -> Result<Summary> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let events = self.loaded.take_events()?;
        let decoder = Decoder::new(self.loaded.drop_reasons().clone(), kallsyms());
        let mut asm = Assembler::new(self.plan.clone(), AssemblerConfig::default());
        if let Some(r) = self.netfilter_drop {
            asm.set_netfilter_drop_reason(r);
        }
        let mut st = ReadState {
            hook_verdicts: super::hookverdict::HookVerdicts::new(self.loaded.drop_reasons()),
            decoder,
            asm,
            assemble,
            decode: !self.discard,
            received: 0,
            decode_errors: 0,
            packets: 0,
            plans: Default::default(),
            xt: self
                .rule_functions
                .clone()
                .map(|f| XtState::new(f, &self.netns_paths)),
        };
        let mut live = Live {
            source: &mut *self.loaded,
            probes: self.probes.as_mut(),
            plan: &mut self.plan,
        };
        rt.block_on(read_loop(
            events,
            opts,
            self.positions.as_ref(),
            &mut live,
            &mut st,
            &mut Sinks {
                event: &mut on_event,
                packet: &mut on_packet,
                positions: on_positions,
            },
            on_tick,
        ))?;
        for t in st.asm.flush() {
            st.packets += 1;
            on_packet(&t)?;
        }
        // Probes added by re-planning count in the summary.
        if let Some(p) = self.probes.as_ref() {
            for a in &mut self.attached {
                a.links = p.links_in(a.netns);
            }
        }
        let c = self.loaded.counters()?;
        let mut summary = Summary::new(
            c,
            st.received,
            st.decode_errors,
            st.packets,
            st.asm.stats().clone(),
            self.attached.clone(),
        );
        if let Some(mut xt) = st.xt.take() {
            for t in xt.tracker.finish() {
                xt.summary.traversals += 1;
                on_positions(t)?;
            }
            xt.summary.lost = c.lost;
            xt.summary.unresolved = xt.tracker.unresolved.len() as u64;
            for u in xt.tracker.unresolved.iter().take(5) {
                log::warn!("rule positions: unresolved record: {u}");
            }
            summary.rule_positions = Some(xt.summary);
        }
        Ok(summary)
    }
}

/// What the read loop may change besides its own state: the probes (re-planning) and the
/// session's plan.
struct Live<'a> {
    source: &'a mut dyn EventSource,
    probes: Option<&'a mut ProbeSet>,
    plan: &'a mut ProbePlan,
}

impl Live<'_> {
    /// Links the probes that rule changes reported since the last call need; the new plans
    /// and the time from which they are in force.
    fn replan(&mut self) -> Option<(u64, Vec<PlanChange>)> {
        let loaded = self.source.as_nfhook()?;
        let (since, changes) = self.probes.as_mut()?.replan(loaded)?;
        for c in &changes {
            self.plan.insert(c.netns, c.family, c.hook, c.plan.clone());
        }
        Some((since, changes))
    }
}

/// Batches not yet in force, each with the CLOCK_MONOTONIC time from which it is, oldest
/// first: re-planned probes for the assembler here (a plan comes into force just before the
/// first event captured at or after its time, probes linked before it, so a traversal that
/// began earlier keeps the plan it ran through); rule generations and plans in rulelevel.
pub struct Pending<T>(std::collections::VecDeque<(u64, Vec<T>)>);

impl<T> Default for Pending<T> {
    fn default() -> Self {
        Pending(Default::default())
    }
}

impl<T> Pending<T> {
    /// Kept in time order (batches may arrive from separate sources), equal times in arrival
    /// order.
    pub fn push(&mut self, since_ns: u64, batch: Vec<T>) {
        let at = self.0.partition_point(|(t, _)| *t <= since_ns);
        self.0.insert(at, (since_ns, batch));
    }

    /// Every batch in force for an event captured at `ts_ns` (time at or before it), in
    /// order; they must be in force before that event.
    pub fn due(&mut self, ts_ns: u64) -> Vec<T> {
        let mut out = Vec::new();
        while self.0.front().is_some_and(|(t, _)| *t <= ts_ns) {
            out.extend(self.0.pop_front().expect("checked").1);
        }
        out
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A rule blob reader: (netns inode, table name) → the blob, None if it cannot be read.
type BlobOf = Box<dyn FnMut(u32, &str) -> Option<Blob>>;

/// `--rule-positions`: XT records in, resolved table traversals out.
struct XtState {
    tracker: XtTracker<BlobOf>,
    summary: PositionsSummary,
}

impl XtState {
    fn new(functions: Vec<String>, netns_paths: &[(u32, std::path::PathBuf)]) -> XtState {
        let paths: std::collections::HashMap<u32, std::path::PathBuf> =
            netns_paths.iter().cloned().collect();
        let blob_of: BlobOf = Box::new(move |netns, table| {
            let path = paths.get(&netns)?;
            Blob::read(path, table)
                .map_err(|e| log::warn!("rule positions: netns {netns} table {table}: {e}"))
                .ok()
        });
        XtState {
            summary: PositionsSummary {
                functions: functions.len(),
                ..Default::default()
            },
            tracker: XtTracker::new(functions, blob_of),
        }
    }
}

/// Where the read loop hands what it read.
struct Sinks<'a, E, P> {
    event: &'a mut E,
    packet: &'a mut P,
    positions: &'a mut dyn FnMut(PacketTable) -> Result<()>,
}

struct ReadState {
    /// fentry/kprobe: nf_hook_slow verdict records, split off before decoding.
    hook_verdicts: super::hookverdict::HookVerdicts,
    decoder: Decoder,
    asm: Assembler,
    assemble: bool,
    decode: bool,
    received: u64,
    decode_errors: u64,
    packets: u64,
    /// Re-planned probes not yet in force in `asm`.
    plans: Pending<PlanChange>,
    /// `--rule-positions` only.
    xt: Option<XtState>,
}

impl ReadState {
    /// Decode one record, hand the event out; assemble it if it comes back.
    fn take<E, P>(
        &mut self,
        bytes: &[u8],
        out: &mut Vec<PacketTrace>,
        sinks: &mut Sinks<'_, E, P>,
    ) -> Result<()>
    where
        E: FnMut(Event) -> Result<(Option<Event>, u64)>,
    {
        self.received += 1;
        if !self.decode {
            return Ok(());
        }
        if bytes.first() == Some(&trace_common::record::kind::XT) {
            return self.take_xt(bytes, sinks.positions);
        }
        let decoded = match self.hook_verdicts.split(bytes) {
            Some(Ok(None)) => return Ok(()),
            Some(Ok(Some(ev))) => Ok(ev),
            Some(Err(e)) => Err(e.to_string()),
            None => self.decoder.decode(bytes).map_err(|e| e.to_string()),
        };
        match decoded {
            Ok(ev) => {
                self.hook_verdicts.saw(&ev);
                if let Some(xt) = self.xt.as_mut() {
                    // The packet's open table traversal ended before this event: hand it
                    // over before the event that may complete the packet.
                    let done = match &ev {
                        Event::Probe(p) => xt.tracker.probe_event(p.skb, p.gen, p.hook, p.priority),
                        Event::Drop(d) => xt.tracker.packet_event(d.skb, d.gen),
                    };
                    if let Some(t) = done {
                        xt.summary.traversals += 1;
                        (sinks.positions)(t)?;
                    }
                }
                let (back, completed) = (sinks.event)(ev)?;
                self.packets += completed;
                if let Some(ev) = back {
                    if self.assemble {
                        if !self.plans.is_empty() {
                            for c in self.plans.due(ev.ts_ns()) {
                                self.asm
                                    .plan_mut()
                                    .insert(c.netns, c.family, c.hook, c.plan);
                            }
                        }
                        out.extend(self.asm.push(ev));
                    }
                }
            }
            Err(e) => {
                self.decode_errors += 1;
                log::warn!("undecodable record: {e}");
            }
        }
        Ok(())
    }

    /// One x_tables record (kind XT): into the tracker, a finished traversal out. Without
    /// `--rule-positions` the probes write none; one that arrives anyway is not decodable.
    fn take_xt(
        &mut self,
        bytes: &[u8],
        on_positions: &mut dyn FnMut(PacketTable) -> Result<()>,
    ) -> Result<()> {
        let Some(xt) = self.xt.as_mut() else {
            self.decode_errors += 1;
            log::warn!("undecodable record: x_tables record without --rule-positions");
            return Ok(());
        };
        xt.summary.records += 1;
        match super::xtpos::parse_record(bytes) {
            Ok(r) => {
                if let Some(t) = xt.tracker.push(&r) {
                    xt.summary.traversals += 1;
                    on_positions(t)?;
                }
            }
            Err(e) => {
                self.decode_errors += 1;
                log::warn!("undecodable record: {e}");
            }
        }
        Ok(())
    }

    /// Once the kernel has lost records, positions may miss calls: mark them incomplete.
    fn note_losses(&mut self, source: &dyn EventSource) {
        if let Some(xt) = self.xt.as_mut().filter(|x| !x.tracker.lost_records) {
            if source.counters().is_ok_and(|c| c.lost > 0) {
                log::warn!(
                    "rule positions: the kernel lost records; positions from now on are incomplete"
                );
                xt.tracker.lost_records = true;
            }
        }
    }
}

async fn read_loop<E, P>(
    events: EventRing,
    opts: &CaptureOptions,
    positions: Option<&super::loader::Positions>,
    live: &mut Live<'_>,
    st: &mut ReadState,
    sinks: &mut Sinks<'_, E, P>,
    on_tick: &mut dyn FnMut() -> Result<bool>,
) -> Result<()>
where
    E: FnMut(Event) -> Result<(Option<Event>, u64)>,
    P: FnMut(&PacketTrace) -> Result<()>,
{
    // SAFETY: the ring buffer owns its map fd, which stays open and unchanged while the
    // AsyncFd owns the ring buffer (tokio's I/O-safety contract for `register`).
    let mut fd = unsafe { AsyncFd::register_with_interest(events, tokio::io::Interest::READABLE) }
        .map_err(|e| e.into_parts().1)
        .context("registering the ring buffer with tokio")?;
    // Both streams exist for the whole loop: a fresh `ctrl_c()` future per iteration missed a
    // SIGINT delivered while the loop was draining (the capture then never stopped).
    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let deadline = opts.duration.map(|d| tokio::time::Instant::now() + d);
    // The probes wake us only when the ring is filling up (loader::wakeup_bytes): drain on a
    // timer too, which also resolves packets that vanished without a further event.
    let mut tick = tokio::time::interval(DRAIN_INTERVAL);
    loop {
        let mut out = Vec::new();
        tokio::select! {
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = async { match deadline { Some(d) => tokio::time::sleep_until(d).await, None => std::future::pending().await } } => break,
            _ = tick.tick() => {
                if on_tick()? {
                    break;
                }
                // Rule changes seen by on_tick (the rule dumps' owner): link their probes
                // before this drain, in force for events captured from now on.
                if let Some((since, changes)) = live.replan() {
                    st.plans.push(since, changes);
                }
                st.note_losses(&*live.source);
                fd.get_mut().drain(|item| st.take(item, &mut out, sinks))?;
                if st.assemble {
                    let now = monotonic_ns();
                    out.extend(match positions {
                        Some(pos) => st.asm.advance_with(now, &mut |skb, gen| pos.last_probe(skb, gen)),
                        None => st.asm.advance(now),
                    });
                }
            }
            guard = fd.readable_mut() => {
                let mut guard = guard?;
                guard.get_inner_mut().drain(|item| st.take(item, &mut out, sinks))?;
                guard.clear_ready();
            }
        }
        for t in out {
            st.packets += 1;
            (sinks.packet)(&t)?;
        }
        // Packets counted by the assembler above or by the event consumer (rule level).
        if opts.count.is_some_and(|c| st.packets >= c) {
            return Ok(());
        }
    }
    // Drain what is already in the buffer before stopping.
    let mut out = Vec::new();
    fd.get_mut().drain(|item| st.take(item, &mut out, sinks))?;
    for t in out {
        st.packets += 1;
        (sinks.packet)(&t)?;
    }
    Ok(())
}

/// CLOCK_MONOTONIC in ns (the probes' bpf_ktime_get_ns clock).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Kernel text symbols for drop locations (empty when kallsyms hides addresses).
fn kallsyms() -> Symbols {
    std::fs::read_to_string("/proc/kallsyms")
        .map(|t| Symbols::from_kallsyms(&t))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use trace_common::record::{
        kind, xt_what, ProbeRecord, RecordHeader, XtRecord, RECORD_VERSION,
    };

    fn bytes_of<T: Copy>(r: &T) -> Vec<u8> {
        // SAFETY: plain #[repr(C)] records with explicit padding, read as bytes.
        unsafe { std::slice::from_raw_parts(r as *const T as *const u8, std::mem::size_of::<T>()) }
            .to_vec()
    }

    fn xt(what: u8, skb: u64) -> Vec<u8> {
        bytes_of(&XtRecord {
            header: RecordHeader {
                kind: kind::XT,
                version: RECORD_VERSION,
                _pad0: 0,
                len: 64,
            },
            ts_ns: 1,
            skb,
            gen: 7,
            addr: 0x1000,
            netns: 5,
            what,
            result: 0,
            hook: 0,
            pf: 2,
            name: *b"filter\0\0\0\0\0\0\0\0\0\0",
        })
    }

    fn probe(skb: u64) -> Vec<u8> {
        let mut r = ProbeRecord::ZERO;
        r.skb = skb;
        r.gen = 7;
        r.netns = 5;
        r.pf = 2;
        r.ts_ns = 2;
        bytes_of(&r)
    }

    fn state(positions: bool) -> ReadState {
        let reasons = std::collections::HashMap::new();
        ReadState {
            hook_verdicts: super::super::hookverdict::HookVerdicts::new(&reasons),
            decoder: Decoder::new(reasons, Symbols::default()),
            asm: Assembler::new(ProbePlan::new(), AssemblerConfig::default()),
            assemble: false,
            decode: true,
            received: 0,
            decode_errors: 0,
            packets: 0,
            plans: Default::default(),
            xt: positions.then(|| XtState::new(vec!["tcp_mt".into()], &[])),
        }
    }

    /// The order the rule-level consumer relies on: a packet's table traversal is handed
    /// over before that packet's next event, and other packets' events do not close it.
    #[test]
    fn positions_come_before_their_packets_next_event() {
        let mut st = state(true);
        let log = std::cell::RefCell::new(Vec::<String>::new());
        let mut on_event = |e: Event| {
            log.borrow_mut().push(format!("event {}", e.packet_key().0));
            Ok((None, 0))
        };
        let mut on_packet = |_: &PacketTrace| -> Result<()> { Ok(()) };
        let mut on_positions = |t: PacketTable| {
            log.borrow_mut()
                .push(format!("table {} {}", t.skb, t.positions.table));
            Ok(())
        };
        let mut sinks = Sinks {
            event: &mut on_event,
            packet: &mut on_packet,
            positions: &mut on_positions,
        };
        let mut out = Vec::new();
        for rec in [
            xt(xt_what::BASE, 1),
            xt(xt_what::MATCH, 1),
            probe(2),
            probe(1),
        ] {
            st.take(&rec, &mut out, &mut sinks).unwrap();
        }
        assert_eq!(
            *log.borrow(),
            ["event 2", "table 1 filter", "event 1"],
            "decode errors: {}",
            st.decode_errors
        );
        let xt = st.xt.as_ref().unwrap();
        assert_eq!((xt.summary.records, xt.summary.traversals), (2, 1));
        // No blob for netns 5 (not traced): the match could not be placed.
        assert_eq!(xt.tracker.unresolved.len(), 1);
    }

    /// Without --rule-positions an XT record is counted as undecodable, never silently used.
    #[test]
    fn xt_records_without_positions_are_decode_errors() {
        let mut st = state(false);
        let mut on_event = |_: Event| Ok((None, 0));
        let mut on_packet = |_: &PacketTrace| -> Result<()> { Ok(()) };
        let mut on_positions = |_: PacketTable| panic!("positions are off");
        let mut sinks = Sinks {
            event: &mut on_event,
            packet: &mut on_packet,
            positions: &mut on_positions,
        };
        st.take(&xt(xt_what::BASE, 1), &mut Vec::new(), &mut sinks)
            .unwrap();
        assert_eq!((st.received, st.decode_errors), (1, 1));
    }
}

//! One capture: load the programs, link the probes in every selected netns (each on a thread
//! inside it), read the ring buffer with tokio, decode and assemble per packet, and stop on
//! Ctrl-C / SIGTERM / --count / --duration. Dropping the session closes every link fd, which
//! unregisters the hooks; the kfree_skb link goes with the aya object.

use std::os::fd::OwnedFd;
use std::time::Duration;

use anyhow::{Context, Result};
use aya::maps::{MapData, RingBuf};
use serde::Serialize;
use tokio::io::unix::AsyncFd;
use trace_common::filter::FilterProgram;
use trace_common::record::Counters;
use trace_core::assemble::{Assembler, AssemblerConfig, AssemblerStats, HookPlan, ProbePlan};
use trace_core::decode::{Decoder, Symbols};
use trace_core::event::Event;
use trace_core::netfilter::{Family, Hook};
use trace_core::packet::PacketTrace;

use super::classic::{Classic, EventSource};
use super::link::{self, HookSpec};
use super::loader::{LoadOptions, Loaded};
use super::plan::{self, Target};

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
        }
    }
}

/// Loaded programs + links. Links close (detach) on drop.
pub struct Session {
    /// nfhook's programs, or the fentry/kprobe backend's (issue 6).
    loaded: Box<dyn EventSource>,
    links: Vec<OwnedFd>,
    plan: ProbePlan,
    pub attached: Vec<Attached>,
    netfilter_drop: Option<u32>,
    discard: bool,
    /// nfhook: where the probes last saw a traversal (for packets that stopped mid-hook).
    positions: Option<super::loader::Positions>,
}

impl Session {
    /// Load the programs and link the probes in every target namespace.
    pub fn attach(opts: &CaptureOptions) -> Result<Session> {
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
        let mut links = Vec::new();
        let mut attached = Vec::new();
        for t in &opts.targets {
            let inode = crate::netns::inode_of(&t.path)? as u32;
            let reg = plan::discover(&t.path)?;
            let mut specs = Vec::new();
            for family in [Family::Ipv4, Family::Ipv6] {
                let hook_plans: Vec<(Hook, HookPlan)> = Hook::ALL
                    .into_iter()
                    .map(|h| (h, HookPlan::bracketing(plan::stages(&reg, family, h))))
                    .collect();
                let probed = |h: Hook| {
                    hook_plans
                        .iter()
                        .any(|(k, p)| *k == h && !p.probes().is_empty())
                };
                for (hook, hp) in hook_plans.iter().cloned() {
                    let first = hp.probes().first().copied();
                    let last = hp.probes().last().copied();
                    let entry = matches!(hook, Hook::Prerouting | Hook::Output);
                    let exit = plan::traversal_ends(hook, probed);
                    for &p in hp.probes() {
                        let fd = loaded.program_with(
                            p,
                            entry && Some(p) == first,
                            exit && Some(p) == last,
                        )?;
                        specs.push((
                            fd,
                            HookSpec {
                                pf: family.nfproto(),
                                hook: hook.num(),
                                priority: p,
                            },
                        ));
                    }
                    plan.insert(inode, family, hook, hp);
                }
            }
            let n = specs.len();
            let made = crate::netns::run_in(&t.path, move || {
                specs
                    .into_iter()
                    .map(|(fd, spec)| link::create(fd, spec))
                    .collect::<Result<Vec<_>, _>>()
            })??;
            links.extend(made);
            log::info!("netns {} (inode {inode}): {n} netfilter links", t.label);
            attached.push(Attached {
                label: t.label.clone(),
                netns: inode,
                links: n,
            });
        }
        Ok(Session {
            loaded: Box::new(loaded),
            links,
            plan,
            attached,
            netfilter_drop,
            discard: false,
            positions,
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
        for t in &opts.targets {
            let inode = crate::netns::inode_of(&t.path)? as u32;
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
            links: Vec::new(),
            plan,
            attached,
            netfilter_drop,
            discard: false,
            positions: None,
        })
    }

    /// The probe plan (per netns inode, family, hook).
    pub fn plan(&self) -> &ProbePlan {
        &self.plan
    }

    /// Number of netfilter links held.
    pub fn link_count(&self) -> usize {
        self.links.len()
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
        mut on_tick: impl FnMut() -> Result<bool>,
        mut on_event: impl FnMut(Event) -> Result<u64>,
    ) -> Result<Summary> {
        self.run_inner(
            opts,
            |e| Ok((None, on_event(e)?)),
            |_| Ok(()),
            false,
            &mut on_tick,
        )
    }

    /// Drain the ring buffer and count records without decoding them: measures what the
    /// probes cost the kernel apart from the collector's work (benchmarks only).
    pub fn run_discard(&mut self, opts: &CaptureOptions) -> Result<Summary> {
        self.discard = true;
        let r = self.run_inner(opts, |_| Ok((None, 0)), |_| Ok(()), false, &mut || {
            Ok(false)
        });
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
            decoder,
            asm,
            assemble,
            decode: !self.discard,
            received: 0,
            decode_errors: 0,
            hook_verdicts: super::hookverdict::HookVerdicts::new(self.loaded.drop_reasons()),
            packets: 0,
        };
        rt.block_on(read_loop(
            events,
            opts,
            self.positions.as_ref(),
            &mut st,
            &mut on_event,
            &mut on_packet,
            on_tick,
        ))?;
        for t in st.asm.flush() {
            st.packets += 1;
            on_packet(&t)?;
        }
        let c = self.loaded.counters()?;
        Ok(Summary::new(
            c,
            st.received,
            st.decode_errors,
            st.packets,
            st.asm.stats().clone(),
            self.attached.clone(),
        ))
    }
}

struct ReadState {
    decoder: Decoder,
    asm: Assembler,
    assemble: bool,
    decode: bool,
    received: u64,
    decode_errors: u64,
    /// fentry/kprobe: nf_hook_slow verdict records, split off before decoding.
    hook_verdicts: super::hookverdict::HookVerdicts,
    packets: u64,
}

impl ReadState {
    /// Decode one record, hand the event out; assemble it if it comes back.
    fn take(
        &mut self,
        bytes: &[u8],
        out: &mut Vec<PacketTrace>,
        on_event: &mut impl FnMut(Event) -> Result<(Option<Event>, u64)>,
    ) -> Result<()> {
        self.received += 1;
        if !self.decode {
            return Ok(());
        }
        let decoded = match self.hook_verdicts.split(bytes) {
            Some(Ok(None)) => return Ok(()),
            Some(Ok(Some(ev))) => Ok(ev),
            Some(Err(e)) => Err(e.to_string()),
            None => self.decoder.decode(bytes).map_err(|e| e.to_string()),
        };
        match decoded {
            Ok(ev) => {
                let (back, completed) = on_event(ev)?;
                self.packets += completed;
                if let Some(ev) = back {
                    if self.assemble {
                        out.extend(self.asm.push(ev));
                    }
                    self.hook_verdicts.saw(&ev);
                }
            }
            Err(e) => {
                self.decode_errors += 1;
                log::warn!("undecodable record: {e}");
            }
        }
        Ok(())
    }
}

async fn read_loop(
    events: RingBuf<MapData>,
    opts: &CaptureOptions,
    positions: Option<&super::loader::Positions>,
    st: &mut ReadState,
    on_event: &mut impl FnMut(Event) -> Result<(Option<Event>, u64)>,
    on_packet: &mut impl FnMut(&PacketTrace) -> Result<()>,
    on_tick: &mut dyn FnMut() -> Result<bool>,
) -> Result<()> {
    // SAFETY: the ring buffer owns its map fd, which stays open and unchanged while the
    // AsyncFd owns the ring buffer (tokio's I/O-safety contract for `register`).
    let mut fd = unsafe { AsyncFd::register_with_interest(events, tokio::io::Interest::READABLE) }
        .map_err(|e| e.into_parts().1)
        .context("registering the ring buffer with tokio")?;
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let deadline = opts.duration.map(|d| tokio::time::Instant::now() + d);
    // The probes wake us only when the ring is filling up (loader::wakeup_bytes): drain on a
    // timer too, which also resolves packets that vanished without a further event.
    let mut tick = tokio::time::interval(DRAIN_INTERVAL);
    loop {
        let mut out = Vec::new();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = sigterm.recv() => break,
            _ = async { match deadline { Some(d) => tokio::time::sleep_until(d).await, None => std::future::pending().await } } => break,
            _ = tick.tick() => {
                if on_tick()? {
                    break;
                }
                let rb = fd.get_mut();
                while let Some(item) = rb.next() {
                    st.take(&item, &mut out, on_event)?;
                }
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
                let rb = guard.get_inner_mut();
                while let Some(item) = rb.next() {
                    st.take(&item, &mut out, on_event)?;
                }
                guard.clear_ready();
            }
        }
        for t in out {
            st.packets += 1;
            on_packet(&t)?;
        }
        // Packets counted by the assembler above or by the event consumer (rule level).
        if opts.count.is_some_and(|c| st.packets >= c) {
            return Ok(());
        }
    }
    // Drain what is already in the buffer before stopping.
    let rb = fd.get_mut();
    let mut out = Vec::new();
    while let Some(item) = rb.next() {
        st.take(&item, &mut out, on_event)?;
    }
    for t in out {
        st.packets += 1;
        on_packet(&t)?;
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

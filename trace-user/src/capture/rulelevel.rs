//! The one place where the capture meets the rule-level pipeline (reconstruction, outputs,
//! recordings): the capture's records — the iptables dump of every traced (netns, family)
//! and its addresses (`crate::rulesource::RuleSource`), the probe plan, then every decoded
//! event — are fed to `trace_core::record::replay::Replayer` (assembly + rule replay against
//! the dump) and/or written with `RecordingWriter` (`--write FILE`, replayable offline with
//! `iptrace replay`).
//!
//! Rule changes during the capture: [`RuleLevel::tick`] re-takes the dumps (at most every
//! `min_interval`, on the session's timer, with or without traffic). A changed ruleset becomes
//! a new generation, stamped with the CLOCK_MONOTONIC time at which its dump started — the
//! clock of the probes' event timestamps. The new generation's records are handed to the
//! replayer (and the recording) just before the first event captured at or after that time.
//! Guarantee: every event is resolved against the newest dump whose save started before the
//! event was captured. So a packet captured before a rule change is always resolved against
//! the generation that was live then (never a newer one); a packet captured after a change
//! but before the next dump (a window of at most `min_interval` + one drain tick + the dump
//! time, while the collector keeps up: refreshes run on the collector's loop, so a stdout
//! nobody reads delays them) is resolved against the previous generation, and its steps show
//! the evidence that contradicts it as inconsistent. Exceptions: several changes inside one window collapse into
//! the last one; a packet whose own events straddle a generation switch is resolved once
//! complete, against the newer one.
//!
//! Probes (nfhook `--probes needed`): a changed ruleset is also reported to the session
//! ([`RuleLevel::replan_with`], see `super::probeset`), which links the probes it needs; the
//! new plans come back with the time from which they are in force and reach the replayer
//! (and the recording) like generations: just before the first event captured at or after it.
//!
//! Exact rule positions (legacy x_tables, backends that probe the match and target
//! functions): the capture hands each table traversal's calls to [`RuleLevel::positions`]
//! as they arrive; they wait in a [`PositionStore`] until their packet is reconstructed and
//! are then applied as evidence ([`trace_core::reconstruct::positions`]): they confirm the
//! path or make the table inconsistent, decide branch points, and list the failed matches.
//! A capture without positions reconstructs exactly as before. Positions are not written to
//! recordings (`--write`), so `iptrace replay` does not show them.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use trace_core::compare::captured::CapturedPacket;
use trace_core::event::Event;
use trace_core::netfilter::{Family, Hook};
use trace_core::output::{self, Format};
use trace_core::reconstruct::positions::{self, PositionStore, TablePositions};
use trace_core::reconstruct::ReconstructedPacket;
use trace_core::record::replay::Replayer;
use trace_core::record::{Record, RecordingWriter};

use super::plan::Target;
use super::probeset::Replan;
use super::session::{monotonic_ns, Pending, Session};
use crate::rulesource::RuleSource;

/// Where the rules come from.
pub enum Rules {
    /// Live dumps per netns (re-taken at most every `min_interval`).
    Live { min_interval: Duration },
    /// `--rules FILE`: this dump (text) for every netns; nothing is taken live.
    File { path: std::path::PathBuf },
}

/// The live rule source of the session's namespaces (keyed by the inode events carry).
pub fn live_source(session: &Session, targets: &[Target], min_interval: Duration) -> RuleSource {
    let ns: Vec<(u32, std::path::PathBuf)> = targets
        .iter()
        .zip(&session.attached)
        .map(|(t, a)| (a.netns, t.path.clone()))
        .collect();
    RuleSource::live(&ns, min_interval)
}

/// The probe plan records of a capture.
pub fn plan_records(session: &Session) -> Vec<Record> {
    let mut out = Vec::new();
    for a in &session.attached {
        for family in [Family::Ipv4, Family::Ipv6] {
            for hook in Hook::ALL {
                if let Some(p) = session.plan().get(a.netns, family, hook) {
                    out.push(Record::plan(a.netns, family, hook, p));
                }
            }
        }
    }
    out
}

/// `--rules FILE`'s records: its text as generation 0 of every traced netns, so that a
/// recording replays against what the capture used.
fn override_records(session: &Session, text: &str, family: Family) -> Vec<Record> {
    session
        .attached
        .iter()
        .map(|a| Record::Ruleset {
            netns: a.netns,
            family,
            generation: 0,
            text: text.to_string(),
        })
        .collect()
}

/// Rule-level output and/or recording of a running capture.
pub struct RuleLevel {
    replayer: Option<Replayer>,
    format: Format,
    writer: Option<RecordingWriter<std::io::BufWriter<std::fs::File>>>,
    printed: u64,
    /// None with `--rules FILE`.
    source: Option<RuleSource>,
    /// New generations (and re-planned probes) not yet in force: (dump start time, their
    /// records).
    pending: Pending<Record>,
    warned: std::collections::HashSet<String>,
    /// `--compare-trace`: every reconstructed packet, by netns, for the agreement report.
    kept: Option<Vec<(u32, CapturedPacket)>>,
    /// Rule positions waiting for their packet (empty unless the capture reports them).
    positions: PositionStore,
    /// nfhook `--probes needed`: rule changes go to the session, its new plans come back.
    replan: Option<Replan>,
}

impl RuleLevel {
    /// `print`: reconstruct and print packets in `format`; `write`: record to that file.
    /// The first dumps are taken here (after anything that changes the rules on purpose,
    /// such as --compare-trace's TRACE rule, and before any event).
    pub fn new(
        session: &Session,
        targets: &[Target],
        rules: Rules,
        print: bool,
        format: Format,
        write: Option<&Path>,
    ) -> Result<RuleLevel> {
        let (source, override_rs, mut initial) = match rules {
            Rules::Live { min_interval } => {
                let mut src = live_source(session, targets, min_interval);
                let changes = src.refresh();
                let recs = src.records(&changes);
                (Some(src), None, recs)
            }
            Rules::File { path } => {
                let rs = crate::rulesource::load_dump_file(&path)?;
                let recs = match std::fs::read_to_string(&path) {
                    Ok(text) if path != Path::new("-") => {
                        override_records(session, &text, rs.family)
                    }
                    _ => Vec::new(),
                };
                (None, Some(rs), recs)
            }
        };
        initial.extend(plan_records(session));
        // After the rules loaded: a bad --rules file leaves no half-written recording.
        let writer = match write {
            Some(p) => {
                let f = std::fs::File::create(p)
                    .with_context(|| format!("creating {}", p.display()))?;
                Some(RecordingWriter::new(std::io::BufWriter::new(f))?)
            }
            None => None,
        };

        let replayer = print.then(|| Replayer::new(override_rs));
        let mut rl = RuleLevel {
            replayer,
            format,
            writer,
            printed: 0,
            source,
            pending: Pending::default(),
            warned: Default::default(),
            kept: None,
            positions: PositionStore::default(),
            replan: None,
        };
        rl.show_warnings();
        rl.apply(initial)?;
        Ok(rl)
    }

    /// Re-takes the dumps when due (the session's timer); a changed ruleset waits in
    /// `pending` until the first event captured after its dump started. True: a stop was
    /// requested (Ctrl-C/SIGTERM caught by `super::stop`).
    pub fn tick(&mut self) -> Result<bool> {
        if super::stop::requested() {
            return Ok(true);
        }
        if self.replayer.is_none() && self.writer.is_none() && self.replan.is_none() {
            // --packets without --write, all probes attached: nobody uses the dumps.
            return Ok(false);
        }
        let Some(src) = self.source.as_mut() else {
            return Ok(false);
        };
        let started = monotonic_ns();
        let changes = src.refresh();
        log::debug!(
            "rule refresh at {started}: {} ms, {} changes",
            (monotonic_ns() - started) / 1_000_000,
            changes.len()
        );
        if !changes.is_empty() {
            for c in &changes {
                log::info!(
                    "netns {} {:?}: ruleset changed, generation {}",
                    c.netns,
                    c.family,
                    c.generation
                );
            }
            self.pending.push(started, src.records(&changes));
            self.request_replan(changes.iter().map(|c| c.netns));
        }
        self.take_plans();
        self.show_warnings();
        Ok(false)
    }

    /// Report rule changes to `replan` (the session's, see `super::probeset`) from now on,
    /// starting with the dumps taken so far (they may be newer than what the probes were
    /// planned with), and take its new plans.
    pub fn replan_with(&mut self, replan: Replan) {
        self.replan = Some(replan);
        let all: Vec<u32> = self
            .source
            .as_ref()
            .map(|s| s.netns_inodes())
            .unwrap_or_default();
        self.request_replan(all.into_iter());
    }

    fn request_replan(&mut self, netns: impl Iterator<Item = u32>) {
        let (Some(r), Some(src)) = (self.replan.as_ref(), self.source.as_ref()) else {
            return;
        };
        let mut seen = Vec::new();
        for ns in netns {
            if seen.contains(&ns) {
                continue;
            }
            seen.push(ns);
            if let Some(view) = src.rule_view(ns) {
                r.request(ns, view);
            }
        }
    }

    /// New plans from the session, pending until the first event captured at or after the
    /// time they are in force from.
    fn take_plans(&mut self) {
        let Some(r) = self.replan.as_ref() else {
            return;
        };
        for (since, changes) in r.take_done() {
            let recs = changes
                .iter()
                .map(|c| Record::plan(c.netns, c.family, c.hook, &c.plan))
                .collect();
            self.pending.push(since, recs);
        }
    }

    /// The rule source's notes, each shown once.
    fn show_warnings(&mut self) {
        let Some(src) = self.source.as_mut() else {
            return;
        };
        for w in std::mem::take(&mut src.warnings) {
            if self.warned.insert(w.clone()) {
                eprintln!("iptrace capture: warning: {w}");
            }
        }
    }

    /// Puts in force every pending generation whose dump started at or before `ts_ns`.
    fn catch_up(&mut self, ts_ns: u64) -> Result<()> {
        self.take_plans();
        let due = self.pending.due(ts_ns);
        self.apply(due)
    }

    /// Setup records (dumps, addresses, plans) to the recording and the replayer.
    fn apply(&mut self, recs: Vec<Record>) -> Result<()> {
        for r in recs {
            if let Some(w) = self.writer.as_mut() {
                w.write_record(&r)?;
            }
            if let Some(rp) = self.replayer.as_mut() {
                // Setup records complete no packet.
                let _ = rp.push(r);
            }
        }
        Ok(())
    }

    /// Keep every reconstructed packet for [`RuleLevel::take_kept`] (`--compare-trace`).
    pub fn keep_packets(&mut self) {
        self.kept = Some(Vec::new());
    }

    /// The packets kept since [`RuleLevel::keep_packets`], with their netns.
    pub fn take_kept(&mut self) -> Vec<(u32, CapturedPacket)> {
        self.kept.take().unwrap_or_default()
    }

    /// Prints one reconstructed packet (and keeps it when asked).
    fn emit(&mut self, p: &ReconstructedPacket, out: &mut dyn Write) -> Result<()> {
        output::write_packet(out, p, self.format, false)?;
        self.printed += 1;
        if let Some(k) = self.kept.as_mut() {
            k.push((p.packet.netns, CapturedPacket::from(p)));
        }
        Ok(())
    }

    /// The replayer's assembly counters (rule-level mode), for the summary.
    pub fn assembler_stats(&self) -> Option<trace_core::assemble::AssemblerStats> {
        self.replayer.as_ref().map(|r| r.assembler_stats().clone())
    }

    /// Packets printed so far (rule-level mode).
    pub fn packets(&self) -> u64 {
        self.printed
    }

    pub fn event(&mut self, e: &Event, out: &mut dyn Write) -> Result<()> {
        self.catch_up(e.ts_ns())?;
        if let Some(w) = self.writer.as_mut() {
            w.write_event(e)?;
        }
        if self.replayer.is_some() {
            self.reconstruct(e.clone(), out)?;
        }
        Ok(())
    }

    /// [`RuleLevel::event`] taking the event (no copy); returns the packets it completed.
    pub fn event_owned(&mut self, e: Event, out: &mut dyn Write) -> Result<u64> {
        self.catch_up(e.ts_ns())?;
        if let Some(w) = self.writer.as_mut() {
            w.write_event(&e)?;
        }
        let before = self.printed;
        self.reconstruct(e, out)?;
        Ok(self.printed - before)
    }

    fn reconstruct(&mut self, e: Event, out: &mut dyn Write) -> Result<()> {
        let Some(rp) = self.replayer.as_mut() else {
            return Ok(());
        };
        for mut p in rp.push_event(e) {
            self.apply_positions(&mut p);
            self.emit(&p, out)?;
        }
        Ok(())
    }

    /// One table traversal's x_tables calls (`netns`, `skb`, `gen` as in the packet's
    /// events), kept until the packet is reconstructed. Ignored without rule-level output.
    pub fn positions(&mut self, netns: u32, skb: u64, gen: u64, tp: TablePositions) {
        if self.replayer.is_some() {
            self.positions.insert(netns, skb, gen, tp);
        }
    }

    /// The store itself, for streaming input ([`PositionStore::begin_table`] at a BASE
    /// record, [`PositionStore::push_call`] per call); None without rule-level output.
    pub fn position_store(&mut self) -> Option<&mut PositionStore> {
        self.replayer.is_some().then_some(&mut self.positions)
    }

    /// (table traversals applied to packets, traversals dropped unused) so far.
    pub fn positions_stats(&self) -> (u64, u64) {
        (self.positions.used, self.positions.evicted)
    }

    fn apply_positions(&mut self, p: &mut ReconstructedPacket) {
        if let Some(rp) = self.replayer.as_ref() {
            with_positions(&mut self.positions, rp, p);
        }
    }

    /// End of capture: remaining packets, the loss count, flush.
    pub fn finish(&mut self, lost: u64, out: &mut dyn Write) -> Result<()> {
        // Generations seen after the last event still belong in the recording.
        self.catch_up(u64::MAX)?;
        if let Some(w) = self.writer.as_mut() {
            if lost > 0 {
                w.write_lost(lost)?;
            }
            w.flush()?;
        }
        let (rest, warnings) = match self.replayer.as_mut() {
            Some(rp) => (rp.finish(), rp.take_warnings()),
            None => return Ok(()),
        };
        for mut p in rest {
            self.apply_positions(&mut p);
            self.emit(&p, out)?;
        }
        for w in warnings {
            eprintln!("iptrace capture: warning: {w}");
        }
        let unused = self.positions.evicted + self.positions.len() as u64;
        if unused > 0 {
            eprintln!(
                "iptrace capture: warning: rule positions of {unused} table traversals matched no reconstructed packet ({} applied)",
                self.positions.used
            );
        }
        Ok(())
    }
}

/// Applies the positions waiting for `p`'s traversals, against the dump `p` was just
/// reconstructed with. Without positions (the store is empty) nothing is looked up.
fn with_positions(store: &mut PositionStore, rp: &Replayer, p: &mut ReconstructedPacket) {
    if store.is_empty() {
        return;
    }
    let tps = store.take(&p.packet);
    if tps.is_empty() {
        return;
    }
    if let Some(ev) = rp.evaluator(p.packet.netns, p.packet.family) {
        positions::apply(p, ev, &tps);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gen(g: u64) -> Record {
        Record::Ruleset {
            netns: 1,
            family: Family::Ipv4,
            generation: g,
            text: String::new(),
        }
    }

    fn gens(recs: &[Record]) -> Vec<u64> {
        recs.iter()
            .filter_map(|r| {
                if let Record::Ruleset { generation, .. } = r {
                    Some(*generation)
                } else {
                    None
                }
            })
            .collect()
    }

    /// A random balancer in filter INPUT: ambiguous from the packet alone.
    const BALANCER: &str =
        "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n\
        :EP1 - [0:0]\n:EP2 - [0:0]\n\
        -A INPUT -m statistic --mode random --probability 0.50000000000 -j EP1\n-A INPUT -j EP2\n\
        -A EP1 -j ACCEPT\n-A EP2 -j ACCEPT\nCOMMIT\n";

    fn balanced_packet() -> (Replayer, ReconstructedPacket) {
        use trace_core::event::{Headers, L4};
        use trace_core::netfilter::Table;
        use trace_core::packet::TableObservation;
        use trace_core::packet::{HookPass, ObservedVerdict, PacketState, PacketTrace};
        let rs = trace_core::rules::parse(BALANCER).unwrap();
        let state = PacketState {
            headers: Headers {
                src: "10.0.0.1".parse().unwrap(),
                dst: "10.0.0.2".parse().unwrap(),
                proto: 6,
                len: 60,
                tos: 0,
                ttl: 64,
                id: 1,
                frag: 0,
                flowlabel: 0,
                l4: L4::Tcp {
                    sport: 1000,
                    dport: 80,
                    seq: 0,
                    ack: 0,
                    window: 0,
                    flags: 2,
                    res: 0,
                    urgp: 0,
                    options: vec![],
                },
            }
            .into(),
            mark: 0,
            ct: None,
        };
        let p = PacketTrace {
            id: 1,
            skb: 9,
            gen: 3,
            netns: 4,
            family: Family::Ipv4,
            first_ts_ns: 0,
            hooks: vec![HookPass {
                hook: Hook::Input,
                ts_ns: 0,
                in_dev: Some("eth0".into()),
                out_dev: None,
                mac: None,
                uid: None,
                gid: None,
                owners: Vec::new(),
                tables: vec![TableObservation {
                    table: Table::Filter,
                    priority: 0,
                    before: state.clone(),
                    after: Some(state),
                    verdict: ObservedVerdict::Accept,
                }],
                stages: vec![],
                probes: vec![],
                bridge: None,
            }],
            incomplete: false,
            fate: Default::default(),
        };
        let replayer = Replayer::new(Some(rs));
        let ev = replayer.evaluator(4, Family::Ipv4).unwrap().clone();
        let rp =
            trace_core::reconstruct::reconstruct(&p, &ev, &trace_core::eval::NetContext::unknown());
        (replayer, rp)
    }

    /// Positions reported for a packet's traversal decide its branch point; a packet without
    /// positions is left exactly as reconstructed.
    #[test]
    fn positions_are_applied_to_their_packet_only() {
        use trace_core::netfilter::Table;
        use trace_core::reconstruct::positions::{RuleCall, XtCall};
        use trace_core::reconstruct::Status;
        let (replayer, before) = balanced_packet();
        assert_eq!(before.status, Status::Ambiguous);
        let mut store = PositionStore::default();
        let mut p = before.clone();
        with_positions(&mut store, &replayer, &mut p);
        assert_eq!(p, before, "no positions: unchanged");
        let tp = TablePositions {
            hook: Hook::Input,
            table: Table::Filter,
            calls: vec![RuleCall {
                chain: "INPUT".into(),
                rule: Some(1),
                call: XtCall::Match {
                    index: 0,
                    name: "statistic".into(),
                    matched: false,
                },
            }],
            complete: true,
        };
        // Another skb's positions do not apply.
        store.insert(4, 10, 3, tp.clone());
        with_positions(&mut store, &replayer, &mut p);
        assert_eq!(p, before);
        store.insert(4, 9, 3, tp);
        with_positions(&mut store, &replayer, &mut p);
        assert_eq!(p.status, Status::Confirmed);
        let steps: Vec<String> = p.hooks[0].tables[0].paths[0]
            .steps
            .iter()
            .map(|s| s.id.to_string())
            .collect();
        assert_eq!(steps, ["filter:INPUT:rule:2", "filter:EP2:return:1"]);
        assert_eq!(store.used, 1);
        assert_eq!(store.len(), 1, "the other skb's positions still wait");
    }

    /// An event captured before a dump started keeps the generation before it; the first event
    /// at or after the dump's start brings it (and every older pending one) into force.
    #[test]
    fn generations_come_into_force_by_capture_time() {
        let mut p = Pending::default();
        p.push(1_000, vec![gen(2)]);
        p.push(2_000, vec![gen(3)]);
        assert!(
            p.due(999).is_empty(),
            "captured before generation 2 was dumped"
        );
        assert_eq!(gens(&p.due(1_000)), [2]);
        assert!(p.due(1_500).is_empty());
        p.push(3_000, vec![gen(4)]);
        assert_eq!(gens(&p.due(5_000)), [3, 4], "in order");
        assert!(p.due(u64::MAX).is_empty());
        // A re-planned probe set (in force from its own time) may arrive after a later
        // generation: it still comes into force at its time.
        p.push(9_000, vec![gen(6)]);
        p.push(8_000, vec![gen(5)]);
        assert_eq!(gens(&p.due(8_500)), [5]);
        assert_eq!(gens(&p.due(9_000)), [6]);
    }
}

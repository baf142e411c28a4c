//! The one place where the capture meets the rule-level pipeline (reconstruction, outputs,
//! recordings): the capture's records — the iptables dump of every traced (netns, family),
//! the probe plan, then every decoded event — are fed to `trace_core::record::replay::Replayer`
//! (assembly + rule replay against the dump) and/or written with `RecordingWriter`
//! (`--write FILE`, replayable offline with `iptrace replay`).

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use trace_core::event::Event;
use trace_core::netfilter::{Family, Hook};
use trace_core::output::{self, Format};
use trace_core::record::replay::Replayer;
use trace_core::record::{Record, RecordingWriter};

use super::plan::Target;
use super::session::Session;

/// The rule dumps and plan records of a capture, taken at attach time.
pub fn initial_records(session: &Session, targets: &[Target]) -> Vec<Record> {
    let mut out = Vec::new();
    for (t, a) in targets.iter().zip(&session.attached) {
        for (family, legacy, nft) in
            [(Family::Ipv4, "iptables-legacy-save", "iptables-nft-save"), (Family::Ipv6, "ip6tables-legacy-save", "ip6tables-nft-save")]
        {
            // Whichever backend has tables in that netns (legacy first: it is what
            // /proc/net/ip_tables_names reports).
            let text = [legacy, nft].iter().find_map(|bin| dump(&t.path, bin));
            if let Some(text) = text {
                out.push(Record::Ruleset { netns: a.netns, family, generation: 1, text });
            }
        }
    }
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

/// `BIN` run inside the netns; None when it fails or prints no table.
fn dump(ns: &Path, bin: &str) -> Option<String> {
    let o = std::process::Command::new("nsenter").arg(format!("--net={}", ns.display())).arg(bin).output().ok()?;
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    (o.status.success() && text.lines().any(|l| l.starts_with('*'))).then_some(text)
}

/// Rule-level output and/or recording of a running capture.
pub struct RuleLevel {
    replayer: Option<Replayer>,
    format: Format,
    writer: Option<RecordingWriter<std::io::BufWriter<std::fs::File>>>,
    printed: u64,
}

impl RuleLevel {
    /// `print`: reconstruct and print packets in `format`; `write`: record to that file.
    pub fn new(initial: Vec<Record>, print: bool, format: Format, write: Option<&Path>) -> Result<RuleLevel> {
        let mut writer = match write {
            Some(p) => {
                let f = std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?;
                Some(RecordingWriter::new(std::io::BufWriter::new(f))?)
            }
            None => None,
        };
        let mut replayer = print.then(|| Replayer::new(None));
        for r in initial {
            if let Some(w) = writer.as_mut() {
                w.write_record(&r)?;
            }
            if let Some(rp) = replayer.as_mut() {
                // Setup records complete no packet.
                let _ = rp.push(r);
            }
        }
        Ok(RuleLevel { replayer, format, writer, printed: 0 })
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
        if let Some(w) = self.writer.as_mut() {
            w.write_event(&e)?;
        }
        let before = self.printed;
        self.reconstruct(e, out)?;
        Ok(self.printed - before)
    }

    fn reconstruct(&mut self, e: Event, out: &mut dyn Write) -> Result<()> {
        if let Some(rp) = self.replayer.as_mut() {
            for p in rp.push(Record::Event { event: Box::new(e) }) {
                output::write_packet(out, &p, self.format, false)?;
                self.printed += 1;
            }
        }
        Ok(())
    }

    /// End of capture: remaining packets, the loss count, flush.
    pub fn finish(&mut self, lost: u64, out: &mut dyn Write) -> Result<()> {
        if let Some(w) = self.writer.as_mut() {
            if lost > 0 {
                w.write_lost(lost)?;
            }
            w.flush()?;
        }
        if let Some(rp) = self.replayer.as_mut() {
            for p in rp.finish() {
                output::write_packet(out, &p, self.format, false)?;
                self.printed += 1;
            }
            for w in rp.take_warnings() {
                eprintln!("iptrace capture: warning: {w}");
            }
        }
        Ok(())
    }
}

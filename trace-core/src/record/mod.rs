//! Recording file format: what `iptrace capture --write FILE` saves and `iptrace replay`
//! reads — the captured events plus, per network namespace, the rule dumps (with the
//! generation they belong to) and the host state (addresses, interfaces) the reconstruction
//! needs, so replay works offline and without root.
//!
//! Layout: a magic line `IPTRACE-RECORDING 1`, then one JSON object per line (a "record").
//! JSON lines keep the file greppable and robust: a torn write damages only the last line,
//! and every error names the byte offset of the record it is in. Record kinds:
//!
//! - `{"record":"ruleset","netns":N,"family":"ipv4","generation":G,"text":"…"}` — an
//!   iptables-save dump; it applies to the events that follow it (until the next ruleset of
//!   the same netns and family);
//! - `{"record":"netinfo","netns":N,"context":{…}}` — [`NetContext`] of that netns;
//! - `{"record":"plan","netns":N,"family":"ipv4","hook":"PREROUTING","probes":[…],"stages":[…]}`
//!   — where the probes sat ([`HookPlan`]), which assembly needs to bracket the tables;
//! - `{"record":"event","event":{…}}` — one [`Event`];
//! - `{"record":"lost","count":N}` — events the ring buffer dropped (shown, never silent).
//!
//! An unknown record kind is an error naming its offset (never skipped silently), so that a
//! newer file is never half-understood.

use crate::assemble::{HookPlan, ProbePlan, StageSlot};
use crate::eval::NetContext;
use crate::event::Event;
use crate::netfilter::{Family, Hook};
use crate::packet::Stage;
use serde::{Deserialize, Serialize};
pub mod replay;

use std::io::{self, BufRead, Write};

/// First line of every recording.
pub const MAGIC: &str = "IPTRACE-RECORDING 1";

/// One line of a recording.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "record", rename_all = "snake_case")]
pub enum Record {
    Ruleset {
        netns: u32,
        family: Family,
        generation: u64,
        text: String,
    },
    Netinfo {
        netns: u32,
        context: NetContext,
    },
    Plan {
        netns: u32,
        family: Family,
        hook: Hook,
        probes: Vec<i32>,
        stages: Vec<PlanStage>,
    },
    /// Boxed: events are much larger than the other records.
    Event {
        event: Box<Event>,
    },
    Lost {
        count: u64,
    },
}

/// A stage of a recorded [`HookPlan`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanStage {
    pub priority: i32,
    pub stage: Stage,
    /// No probe after it because it could not act (no rules, policy ACCEPT); absent = false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub inert: bool,
}

impl Record {
    /// The plan record of one hook.
    pub fn plan(netns: u32, family: Family, hook: Hook, plan: &HookPlan) -> Record {
        Record::Plan {
            netns,
            family,
            hook,
            probes: plan.probes().to_vec(),
            stages: plan
                .stages()
                .iter()
                .enumerate()
                .map(|(i, s)| PlanStage {
                    priority: s.priority,
                    stage: s.stage.clone(),
                    inert: plan.is_inert(i),
                })
                .collect(),
        }
    }

    /// Adds a plan record to `plan` (other records: no-op).
    pub fn add_to_plan(&self, plan: &mut ProbePlan) {
        if let Record::Plan {
            netns,
            family,
            hook,
            probes,
            stages,
        } = self
        {
            let stages = stages
                .iter()
                .map(|s| {
                    let slot = StageSlot {
                        priority: s.priority,
                        stage: s.stage.clone(),
                    };
                    (slot, s.inert)
                })
                .collect();
            plan.insert(
                *netns,
                *family,
                *hook,
                HookPlan::with_inert(probes.clone(), stages),
            );
        }
    }
}

/// Why a recording cannot be read (further).
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("not an iptrace recording: first line is {found:?}, expected {MAGIC:?}")]
    BadMagic { found: String },
    #[error("recording truncated at byte offset {offset}: the last record is incomplete")]
    Truncated { offset: u64 },
    #[error("corrupt record at byte offset {offset} (line {line}): {message}")]
    Corrupt {
        offset: u64,
        line: u64,
        message: String,
    },
    #[error("reading the recording at byte offset {offset}: {source}")]
    Io { offset: u64, source: io::Error },
}

/// Writes a recording. The capture side calls [`RecordingWriter::write_ruleset`] whenever
/// it takes a (new) dump, before the events it applies to.
pub struct RecordingWriter<W: Write> {
    w: W,
}

impl<W: Write> RecordingWriter<W> {
    /// Starts a recording (writes the magic line).
    pub fn new(mut w: W) -> io::Result<Self> {
        writeln!(w, "{MAGIC}")?;
        Ok(RecordingWriter { w })
    }

    pub fn write_record(&mut self, r: &Record) -> io::Result<()> {
        serde_json::to_writer(&mut self.w, r)?;
        self.w.write_all(b"\n")
    }

    pub fn write_event(&mut self, e: &Event) -> io::Result<()> {
        // Serialize by reference: avoid cloning the event into a Record.
        #[derive(Serialize)]
        struct EventRef<'a> {
            record: &'static str,
            event: &'a Event,
        }
        serde_json::to_writer(
            &mut self.w,
            &EventRef {
                record: "event",
                event: e,
            },
        )?;
        self.w.write_all(b"\n")
    }

    /// A dump of netns `netns`; the family is read from the dump's header (`ip6tables-save`
    /// means IPv6).
    pub fn write_ruleset(&mut self, netns: u32, generation: u64, text: &str) -> io::Result<()> {
        let family = family_of_dump(text);
        self.write_ruleset_family(netns, family, generation, text)
    }

    pub fn write_ruleset_family(
        &mut self,
        netns: u32,
        family: Family,
        generation: u64,
        text: &str,
    ) -> io::Result<()> {
        self.write_record(&Record::Ruleset {
            netns,
            family,
            generation,
            text: text.to_string(),
        })
    }

    pub fn write_netinfo(&mut self, netns: u32, context: &NetContext) -> io::Result<()> {
        self.write_record(&Record::Netinfo {
            netns,
            context: context.clone(),
        })
    }

    /// Where the probes of one hook sat (write every hook of the [`ProbePlan`] before events).
    pub fn write_hook_plan(
        &mut self,
        netns: u32,
        family: Family,
        hook: Hook,
        plan: &HookPlan,
    ) -> io::Result<()> {
        self.write_record(&Record::plan(netns, family, hook, plan))
    }

    /// Every hook plan of `plan` for the given namespaces.
    pub fn write_plan(&mut self, plan: &ProbePlan, netns: &[u32]) -> io::Result<()> {
        for &ns in netns {
            for family in [Family::Ipv4, Family::Ipv6] {
                for hook in Hook::ALL {
                    if let Some(hp) = plan.get(ns, family, hook) {
                        self.write_hook_plan(ns, family, hook, hp)?;
                    }
                }
            }
        }
        Ok(())
    }

    pub fn write_lost(&mut self, count: u64) -> io::Result<()> {
        self.write_record(&Record::Lost { count })
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.w.flush()
    }

    pub fn into_inner(self) -> W {
        self.w
    }
}

/// IPv6 when the dump says it comes from ip6tables-save.
pub fn family_of_dump(text: &str) -> Family {
    let header = text
        .lines()
        .find(|l| l.starts_with("# Generated by"))
        .unwrap_or("");
    if header.contains("ip6tables") {
        Family::Ipv6
    } else {
        Family::Ipv4
    }
}

/// Reads records one by one, with the byte offset of each.
pub struct RecordingReader<R: BufRead> {
    r: R,
    offset: u64,
    line: u64,
    buf: Vec<u8>,
    done: bool,
}

impl<R: BufRead> RecordingReader<R> {
    /// Checks the magic line.
    pub fn new(mut r: R) -> Result<Self, RecordError> {
        let mut first = Vec::new();
        let n = r
            .read_until(b'\n', &mut first)
            .map_err(|source| RecordError::Io { offset: 0, source })?;
        let text = String::from_utf8_lossy(&first);
        if text.trim_end_matches('\n') != MAGIC {
            return Err(RecordError::BadMagic {
                found: text.chars().take(60).collect(),
            });
        }
        Ok(RecordingReader {
            r,
            offset: n as u64,
            line: 1,
            buf: Vec::new(),
            done: false,
        })
    }
}

impl<R: BufRead> Iterator for RecordingReader<R> {
    /// (byte offset of the record, record). After the first error the iterator ends.
    type Item = Result<(u64, Record), RecordError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        self.buf.clear();
        let offset = self.offset;
        let n = match self.r.read_until(b'\n', &mut self.buf) {
            Ok(n) => n,
            Err(source) => {
                self.done = true;
                return Some(Err(RecordError::Io { offset, source }));
            }
        };
        if n == 0 {
            self.done = true;
            return None;
        }
        self.offset += n as u64;
        self.line += 1;
        if self.buf.last() != Some(&b'\n') {
            self.done = true;
            return Some(Err(RecordError::Truncated { offset }));
        }
        match serde_json::from_slice::<Record>(&self.buf) {
            Ok(rec) => Some(Ok((offset, rec))),
            Err(e) => {
                self.done = true;
                Some(Err(RecordError::Corrupt {
                    offset,
                    line: self.line,
                    message: e.to_string(),
                }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::DropEvent;

    fn drop_event(n: u64) -> Event {
        Event::Drop(DropEvent {
            ts_ns: n,
            skb: 1,
            gen: 2,
            netns: 3,
            reason: 12,
            reason_name: Some("NETFILTER_DROP".into()),
            location: 0,
            location_sym: None,
            prev: None,
            state: None,
        })
    }

    fn sample() -> Vec<u8> {
        let mut w = RecordingWriter::new(Vec::new()).unwrap();
        w.write_ruleset(3, 1, "*filter\n:INPUT ACCEPT [0:0]\nCOMMIT\n")
            .unwrap();
        w.write_netinfo(3, &NetContext::unknown()).unwrap();
        let mut plan = ProbePlan::new();
        plan.insert_iptables(3, Family::Ipv4, &[crate::netfilter::Table::Filter], true);
        w.write_hook_plan(
            3,
            Family::Ipv4,
            Hook::Input,
            plan.get(3, Family::Ipv4, Hook::Input).unwrap(),
        )
        .unwrap();
        w.write_event(&drop_event(10)).unwrap();
        w.write_event(&drop_event(11)).unwrap();
        w.write_lost(4).unwrap();
        w.into_inner()
    }

    #[test]
    fn round_trips_records() {
        let bytes = sample();
        let recs: Vec<Record> = RecordingReader::new(&bytes[..])
            .unwrap()
            .map(|r| r.unwrap().1)
            .collect();
        assert_eq!(recs.len(), 6);
        assert!(
            matches!(&recs[0], Record::Ruleset { netns: 3, family: Family::Ipv4, generation: 1, text } if text.contains("*filter"))
        );
        let mut plan = ProbePlan::new();
        recs[2].add_to_plan(&mut plan);
        let mut want = ProbePlan::new();
        want.insert_iptables(3, Family::Ipv4, &[crate::netfilter::Table::Filter], true);
        assert_eq!(
            plan.get(3, Family::Ipv4, Hook::Input),
            want.get(3, Family::Ipv4, Hook::Input)
        );
        assert_eq!(
            recs[3],
            Record::Event {
                event: Box::new(drop_event(10))
            }
        );
        assert_eq!(recs[5], Record::Lost { count: 4 });
    }

    /// Which stages had no probe after them (inert) is part of the plan record; a record
    /// without it (older writer) means none.
    #[test]
    fn plan_records_keep_inert_stages() {
        let stages = HookPlan::iptables_stages(
            Hook::Forward,
            &[
                crate::netfilter::Table::Mangle,
                crate::netfilter::Table::Filter,
            ],
            false,
        );
        let hp = HookPlan::needed(stages, |s| s.priority == -150);
        assert_eq!(hp.probes(), [-151, 1]);
        let rec = Record::plan(3, Family::Ipv4, Hook::Forward, &hp);
        let json = serde_json::to_string(&rec).unwrap();
        assert_eq!(json.matches(r#""inert":true"#).count(), 1, "{json}");
        let back: Record = serde_json::from_str(&json).unwrap();
        let mut plan = ProbePlan::new();
        back.add_to_plan(&mut plan);
        assert_eq!(plan.get(3, Family::Ipv4, Hook::Forward), Some(&hp));
        let old = json.replace(r#","inert":true"#, "");
        let mut plan = ProbePlan::new();
        serde_json::from_str::<Record>(&old)
            .unwrap()
            .add_to_plan(&mut plan);
        assert!(!plan
            .get(3, Family::Ipv4, Hook::Forward)
            .unwrap()
            .is_inert(0));
    }

    #[test]
    fn truncated_recording_names_offset_and_keeps_earlier_records() {
        let bytes = sample();
        let cut = bytes.len() - 5;
        let items: Vec<_> = RecordingReader::new(&bytes[..cut]).unwrap().collect();
        assert_eq!(items.iter().filter(|r| r.is_ok()).count(), 5);
        let last_start = bytes[..bytes.len() - 1]
            .iter()
            .rposition(|&b| b == b'\n')
            .unwrap()
            + 1;
        match items.last().unwrap() {
            Err(RecordError::Truncated { offset }) => assert_eq!(*offset, last_start as u64),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn corrupt_record_names_offset_and_line() {
        let mut bytes = sample();
        let second = bytes
            .iter()
            .enumerate()
            .filter(|(_, &b)| b == b'\n')
            .nth(2)
            .unwrap()
            .0
            + 1;
        bytes[second + 3] = b'#';
        let items: Vec<_> = RecordingReader::new(&bytes[..]).unwrap().collect();
        assert_eq!(items.len(), 3);
        match &items[2] {
            Err(RecordError::Corrupt { offset, line, .. }) => {
                assert_eq!(*offset, second as u64);
                assert_eq!(*line, 4, "magic, ruleset, netinfo, then this one");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn rejects_other_files() {
        assert!(matches!(
            RecordingReader::new(&b"*filter\n"[..]),
            Err(RecordError::BadMagic { .. })
        ));
        assert!(matches!(
            RecordingReader::new(&b""[..]),
            Err(RecordError::BadMagic { .. })
        ));
    }

    #[test]
    fn ip6tables_dumps_are_ipv6() {
        assert_eq!(
            family_of_dump("# Generated by ip6tables-save v1.8.9 on x\n*filter\n"),
            Family::Ipv6
        );
        assert_eq!(
            family_of_dump("# Generated by iptables-nft-save v1.8.9 (nf_tables)\n"),
            Family::Ipv4
        );
    }
}

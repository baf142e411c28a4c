//! Offline reconstruction of a recording: records in file order feed the assembler (plans,
//! events) and the per-netns rule state (rulesets, netinfo); every packet the assembler
//! completes is reconstructed against the dump of its netns and family current at that
//! point of the recording (the capture writes a new dump, with a new generation, as soon as
//! it sees the ruleset change).

use super::Record;
use crate::assemble::fasthash::FastMap;
use crate::assemble::{Assembler, AssemblerConfig, AssemblerStats};
use crate::eval::{Evaluator, NetContext};
use crate::event::Event;
use crate::netfilter::Hook;
use crate::netfilter::{Family, Table};
use crate::packet::PacketTrace;
use crate::reconstruct::{reconstruct_owned, unresolved_owned, ReconstructedPacket};
use crate::rules::{self, ParseOptions, Ruleset};
use std::sync::Arc;

/// The rules of one (netns, family), or why there are none.
enum Rules {
    /// `text`: the dump it was parsed from, so that a record repeating it (a new
    /// generation with the same rules, concatenated recordings) reuses the evaluator.
    Ready {
        generation: u64,
        ev: Arc<Evaluator>,
        text: String,
    },
    Broken {
        generation: u64,
        reason: String,
    },
}

/// Counters reported at the end of a replay.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplayStats {
    pub records: u64,
    pub events: u64,
    /// Events the capture itself lost (lost records).
    pub lost_events: u64,
    pub rulesets: u64,
    /// Dumps that did not parse (their packets are reported inconsistent).
    pub bad_rulesets: u64,
    /// Packets for which a probe plan had to be assumed (the recording has none).
    pub assumed_plans: u64,
    pub packets: u64,
}

pub struct Replayer {
    asm: Assembler,
    // Looked up per event or per packet: the assembler's cheap hasher, not SipHash.
    rules: FastMap<(u32, Family), Rules>,
    ctx: FastMap<u32, NetContext>,
    /// For a netns without netinfo; built once (its default is not free: per event it was
    /// a visible share of reconstruction).
    unknown_ctx: NetContext,
    override_rules: Option<Arc<Evaluator>>,
    planned: FastMap<(u32, Family), ()>,
    /// The (netns, family) of the last event, known to be in `planned`.
    last_planned: Option<(u32, Family)>,
    /// skb addresses of packets that left through `lo` with nf_trace set: their way back in
    /// (a new traversal for the assembler) starts traced, as in the kernel.
    looped_traced: FastMap<(u32, u64), ()>,
    stats: ReplayStats,
    warnings: Vec<String>,
}

impl Replayer {
    /// `override_rules` (`--rules FILE`) replaces every recorded dump.
    pub fn new(override_rules: Option<Ruleset>) -> Self {
        Replayer {
            asm: Assembler::new(Default::default(), AssemblerConfig::default()),
            rules: FastMap::default(),
            ctx: FastMap::default(),
            unknown_ctx: NetContext::unknown(),
            override_rules: override_rules.map(|r| Arc::new(Evaluator::new(r))),
            planned: Default::default(),
            last_planned: None,
            looped_traced: Default::default(),
            stats: ReplayStats::default(),
            warnings: Vec::new(),
        }
    }

    pub fn stats(&self) -> &ReplayStats {
        &self.stats
    }

    pub fn assembler_stats(&self) -> &AssemblerStats {
        self.asm.stats()
    }

    /// Warnings gathered so far (assumed plans, unparsable dumps); drained.
    pub fn take_warnings(&mut self) -> Vec<String> {
        std::mem::take(&mut self.warnings)
    }

    /// Feeds one record; returns the packets it completed, reconstructed.
    pub fn push(&mut self, rec: Record) -> Vec<ReconstructedPacket> {
        self.stats.records += 1;
        match rec {
            Record::Ruleset {
                netns,
                family,
                generation,
                text,
            } => {
                self.stats.rulesets += 1;
                let rules = match self.rules.remove(&(netns, family)) {
                    Some(Rules::Ready { ev, text: old, .. }) if old == text => Rules::Ready {
                        generation,
                        ev,
                        text,
                    },
                    _ => self.parse_rules(netns, family, generation, text),
                };
                self.rules.insert((netns, family), rules);
                Vec::new()
            }
            Record::Netinfo { netns, context } => {
                self.ctx.insert(netns, context);
                Vec::new()
            }
            r @ Record::Plan { .. } => {
                if let Record::Plan { netns, family, .. } = &r {
                    self.planned.insert((*netns, *family), ());
                }
                r.add_to_plan(self.asm.plan_mut());
                Vec::new()
            }
            Record::Lost { count } => {
                self.stats.lost_events += count;
                Vec::new()
            }
            Record::Event { event } => self.on_event(*event),
        }
    }

    /// [`Replayer::push`] of an event record, without boxing the event (the live collector
    /// feeds every event through here: no allocation and copy per event).
    pub fn push_event(&mut self, event: Event) -> Vec<ReconstructedPacket> {
        self.stats.records += 1;
        self.on_event(event)
    }

    fn on_event(&mut self, event: Event) -> Vec<ReconstructedPacket> {
        self.stats.events += 1;
        self.assume_plan(&event);
        let done = self.asm.push(event);
        self.finish_packets(done)
    }

    /// A dump's evaluator, or why there is none (counted and warned).
    fn parse_rules(&mut self, netns: u32, family: Family, generation: u64, text: String) -> Rules {
        let parsed = rules::parse_with(
            &text,
            ParseOptions {
                family: Some(family),
            },
        );
        match parsed {
            Ok(rs) => Rules::Ready {
                generation,
                ev: Arc::new(Evaluator::new(rs)),
                text,
            },
            Err(e) => {
                self.stats.bad_rulesets += 1;
                let reason = format!("recorded rule dump of netns {netns} (generation {generation}) does not parse: {e}");
                self.warnings.push(reason.clone());
                Rules::Broken { generation, reason }
            }
        }
    }

    /// End of the recording: packets still being assembled come out (incomplete).
    pub fn finish(&mut self) -> Vec<ReconstructedPacket> {
        let done = self.asm.flush();
        self.finish_packets(done)
    }

    /// A recording without plan records (older writer): assume the standard bracketing of
    /// the tables the netns's dump defines, with conntrack, and say so.
    fn assume_plan(&mut self, e: &Event) {
        let Event::Probe(p) = e else {
            return;
        };
        let key = (p.netns, p.family);
        // Nearly every event is of the netns and family of the one before: no map lookup.
        if self.last_planned == Some(key) {
            return;
        }
        self.last_planned = Some(key);
        if self.planned.insert(key, ()).is_some() {
            return;
        }
        let tables: Vec<Table> = match self.rules_for(p.netns, p.family) {
            Ok(ev) => ev.ruleset().tables.iter().map(|t| t.table).collect(),
            Err(_) => Table::ALL.to_vec(),
        };
        self.stats.assumed_plans += 1;
        self.warnings.push(format!(
            "recording has no probe plan for netns {} {:?}: assuming probes around the tables {:?} and conntrack",
            p.netns, p.family, tables
        ));
        self.asm
            .plan_mut()
            .insert_iptables(p.netns, p.family, &tables, true);
    }

    fn rules_for(&self, netns: u32, family: Family) -> Result<&Arc<Evaluator>, String> {
        if let Some(ev) = &self.override_rules {
            return Ok(ev);
        }
        match self.rules.get(&(netns, family)) {
            Some(Rules::Ready { ev, .. }) => Ok(ev),
            Some(Rules::Broken { reason, .. }) => Err(reason.clone()),
            None => Err(format!(
                "the recording has no {family:?} rule dump for netns {netns}"
            )),
        }
    }

    /// The evaluator a packet of (netns, family) completed now is reconstructed against (the
    /// `--rules` override or the newest dump); None without one (or an unparsable dump).
    pub fn evaluator(&self, netns: u32, family: Family) -> Option<&Arc<Evaluator>> {
        self.rules_for(netns, family).ok()
    }

    /// Generation of the dump a packet of (netns, family) is reconstructed against.
    pub fn generation(&self, netns: u32, family: Family) -> Option<u64> {
        match self.rules.get(&(netns, family))? {
            Rules::Ready { generation, .. } | Rules::Broken { generation, .. } => Some(*generation),
        }
    }

    fn finish_packets(&mut self, done: Vec<PacketTrace>) -> Vec<ReconstructedPacket> {
        let mut out = Vec::with_capacity(done.len());
        // By value: the assembled packet moves into its reconstruction (no copy per packet).
        for p in done {
            self.stats.packets += 1;
            let ctx = self.ctx.get(&p.netns).unwrap_or(&self.unknown_ctx);
            let traced_in = lo_in(&p) && self.looped_traced.remove(&(p.netns, p.skb)).is_some();
            let rp = match self.rules_for(p.netns, p.family) {
                Ok(ev) => reconstruct_owned(p, ev, ctx, traced_in),
                Err(reason) => unresolved_owned(p, &reason),
            };
            if rp.nf_trace_end && lo_out(&rp.packet) {
                self.looped_traced
                    .insert((rp.packet.netns, rp.packet.skb), ());
            }
            out.push(rp);
        }
        out
    }
}

/// The traversal ended leaving through `lo` (it comes back in as another traversal).
fn lo_out(p: &PacketTrace) -> bool {
    p.hooks
        .last()
        .is_some_and(|h| h.hook == Hook::Postrouting && h.out_dev.as_deref() == Some("lo"))
}

/// The traversal came in through `lo`.
fn lo_in(p: &PacketTrace) -> bool {
    p.hooks
        .first()
        .is_some_and(|h| h.hook == Hook::Prerouting && h.in_dev.as_deref() == Some("lo"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ruleset(generation: u64, text: &str) -> Record {
        Record::Ruleset {
            netns: 7,
            family: Family::Ipv4,
            generation,
            text: text.into(),
        }
    }

    const A: &str = "*filter\n:INPUT ACCEPT [0:0]\nCOMMIT\n";
    const B: &str = "*filter\n:INPUT DROP [0:0]\nCOMMIT\n";

    /// A dump repeating the one in force keeps its evaluator (parsed once) under the new
    /// generation; a different dump is parsed anew; a broken one is never reused.
    #[test]
    fn identical_dump_reuses_the_evaluator() {
        let mut r = Replayer::new(None);
        r.push(ruleset(1, A));
        let first = r.evaluator(7, Family::Ipv4).unwrap().clone();
        r.push(ruleset(2, A));
        assert!(Arc::ptr_eq(&first, r.evaluator(7, Family::Ipv4).unwrap()));
        assert_eq!(r.generation(7, Family::Ipv4), Some(2));
        r.push(ruleset(3, B));
        let other = r.evaluator(7, Family::Ipv4).unwrap();
        assert!(!Arc::ptr_eq(&first, other));
        let opts = ParseOptions {
            family: Some(Family::Ipv4),
        };
        assert_eq!(other.ruleset(), &rules::parse_with(B, opts).unwrap());
        assert_eq!(r.generation(7, Family::Ipv4), Some(3));
        r.push(ruleset(4, "*filter\nbogus\n"));
        r.push(ruleset(5, "*filter\nbogus\n"));
        assert!(r.evaluator(7, Family::Ipv4).is_none());
        assert_eq!(r.stats().bad_rulesets, 2);
        assert_eq!(r.stats().rulesets, 5);
    }

    /// `push_event` (the live collector's unboxed path) gives the packets and counters of
    /// `push` with event records, on a real recording.
    #[test]
    fn push_event_equals_pushing_event_records() {
        let bytes = include_bytes!("../../tests/golden_lab/legacy-run.iptrace");
        let records: Vec<Record> = crate::record::RecordingReader::new(&bytes[..])
            .unwrap()
            .map(|r| r.unwrap().1)
            .collect();
        let (mut boxed, mut unboxed) = (Replayer::new(None), Replayer::new(None));
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for rec in records {
            a.extend(boxed.push(rec.clone()));
            b.extend(match rec {
                Record::Event { event } => unboxed.push_event(*event),
                other => unboxed.push(other),
            });
        }
        a.extend(boxed.finish());
        b.extend(unboxed.finish());
        assert!(a.len() > 10, "{} packets", a.len());
        assert_eq!(a, b);
        assert_eq!(boxed.stats(), unboxed.stats());
    }
}

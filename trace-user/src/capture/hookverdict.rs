//! nf_hook_slow's verdicts (fentry/kprobe backends, issue 6): the probes report a hook that
//! accepted a tracked packet as a probe record at [`PRIO_HOOK_EXIT`] (an ordinary event the
//! assembler places after every stage of the hook), and any other verdict as a
//! [`HookVerdictRecord`] (kind HOOK_VERDICT), which is not an event. This module splits those
//! records off the ring-buffer stream before `trace_core::decode` and turns them into what the
//! assembler understands:
//!
//! - a drop (negative errno) whose skb:kfree_skb report was not seen (lost, or a kernel whose
//!   nf_hook_slow frees without a reason) becomes a [`DropEvent`] with the kernel's
//!   NETFILTER_DROP reason at nf_hook_slow, so the drop is attributed to the stage after the
//!   packet's last probe like a reported one; a drop already reported adds nothing;
//! - 0 (stolen or queued by a hook function) adds nothing: the packet vanishes after its last
//!   probe, which the assembler already reports as stolen; it is counted.
//!
//! [`hook_verdict`] reads the verdict back from an assembled pass.

use std::collections::{HashMap, HashSet, VecDeque};

use serde::Serialize;
use trace_common::record::{kind, HookVerdictRecord, RecordHeader, RECORD_VERSION};
use trace_core::event::{DropEvent, Event};
use trace_core::packet::{Fate, HookPass, PacketTrace};

pub use super::classic::PRIO_HOOK_EXIT;

/// The location name of a drop known only from nf_hook_slow's return value.
pub const HOOK_DROP_LOCATION: &str = "nf_hook_slow";
/// Drop reports remembered to recognise a verdict record's drop as already reported (one per
/// packet in flight between its kfree_skb record and the verdict record right after it).
const RECENT_DROPS: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HookVerdictError {
    #[error("hook verdict record of {len} bytes, expected {need}")]
    Length { len: usize, need: usize },
    #[error(
        "hook verdict record layout version {version} (this collector reads {RECORD_VERSION})"
    )]
    Version { version: u8 },
}

/// Verdict records seen, by kind (shown in logs and tests; nothing is dropped silently).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct HookVerdictStats {
    /// Drops whose kfree_skb report had been seen.
    pub drops_reported: u64,
    /// Drops turned into a DropEvent because no report was seen.
    pub drops_unreported: u64,
    /// Verdict 0: stolen or queued.
    pub stolen: u64,
}

/// Splits HOOK_VERDICT records off the stream and remembers recent drop reports.
#[derive(Debug, Clone)]
pub struct HookVerdicts {
    netfilter_drop: Option<(u32, String)>,
    recent: VecDeque<(u64, u64)>,
    recent_set: HashSet<(u64, u64)>,
    pub stats: HookVerdictStats,
}

impl HookVerdicts {
    /// `drop_reasons`: the running kernel's enum skb_drop_reason (value → name).
    pub fn new(drop_reasons: &HashMap<u32, String>) -> HookVerdicts {
        let netfilter_drop = drop_reasons
            .iter()
            .find(|(_, n)| *n == "NETFILTER_DROP")
            .map(|(v, n)| (*v, n.clone()));
        HookVerdicts {
            netfilter_drop,
            recent: VecDeque::new(),
            recent_set: HashSet::new(),
            stats: HookVerdictStats::default(),
        }
    }

    /// None when `bytes` is not a hook verdict record (decode it as usual); else the event it
    /// stands for, if any.
    pub fn split(&mut self, bytes: &[u8]) -> Option<Result<Option<Event>, HookVerdictError>> {
        if bytes.first() != Some(&kind::HOOK_VERDICT) {
            return None;
        }
        Some(parse(bytes).map(|r| self.take(&r)))
    }

    /// Note every decoded event (drop reports) before it goes on.
    pub fn saw(&mut self, ev: &Event) {
        if let Event::Drop(d) = ev {
            let key = (d.skb, d.gen);
            if self.recent_set.insert(key) {
                self.recent.push_back(key);
                if self.recent.len() > RECENT_DROPS {
                    if let Some(old) = self.recent.pop_front() {
                        self.recent_set.remove(&old);
                    }
                }
            }
        }
    }

    fn take(&mut self, r: &HookVerdictRecord) -> Option<Event> {
        if r.verdict >= 0 {
            // 1 never comes as a verdict record; 0 is stolen/queued.
            self.stats.stolen += (r.verdict == 0) as u64;
            return None;
        }
        if self.recent_set.contains(&(r.skb, r.gen)) {
            self.stats.drops_reported += 1;
            return None;
        }
        self.stats.drops_unreported += 1;
        let (reason, reason_name) = match &self.netfilter_drop {
            Some((v, n)) => (*v, Some(n.clone())),
            None => (
                trace_core::assemble::NETFILTER_DROP_REASON_FALLBACK,
                Some("NETFILTER_DROP".to_string()),
            ),
        };
        let d = DropEvent {
            ts_ns: r.ts_ns,
            skb: r.skb,
            gen: r.gen,
            netns: r.netns,
            reason,
            reason_name,
            location: 0,
            location_sym: Some(HOOK_DROP_LOCATION.to_string()),
            prev: None,
            state: None,
        };
        // It now counts as reported (a second verdict record for the same drop adds nothing).
        let ev = Event::Drop(d);
        self.saw(&ev);
        Some(ev)
    }
}

fn parse(bytes: &[u8]) -> Result<HookVerdictRecord, HookVerdictError> {
    let need = std::mem::size_of::<HookVerdictRecord>();
    if bytes.len() != need {
        return Err(HookVerdictError::Length {
            len: bytes.len(),
            need,
        });
    }
    // SAFETY: length checked; plain #[repr(C)] data, any bit pattern valid; unaligned read.
    let r: HookVerdictRecord =
        unsafe { std::ptr::read_unaligned(bytes.as_ptr() as *const HookVerdictRecord) };
    let RecordHeader { version, .. } = r.header;
    if version != RECORD_VERSION {
        return Err(HookVerdictError::Version { version });
    }
    Ok(r)
}

/// What nf_hook_slow decided for the packet on one hook pass, as the fentry/kprobe backends
/// observe it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HookVerdict {
    /// The exit position saw the packet: every hook function accepted it.
    Accept,
    /// Dropped on this hook (kfree_skb's report or the verdict record).
    Drop,
    /// Vanished on this hook without a drop (stolen, queued).
    Stolen,
    /// No exit seen (another backend, or the capture ended first).
    Unknown,
}

/// The verdict of `pass` in `trace` (passes of other hooks than the last end accepted or
/// unknown; the traversal's fate says what happened on its last pass).
pub fn hook_verdict(trace: &PacketTrace, pass: &HookPass) -> HookVerdict {
    if pass.probes.contains(&PRIO_HOOK_EXIT) {
        return HookVerdict::Accept;
    }
    let last = trace.hooks.last().is_some_and(|l| std::ptr::eq(l, pass));
    match &trace.fate {
        Fate::Dropped { hook, .. } if last && *hook == pass.hook => HookVerdict::Drop,
        Fate::Stolen { hook, .. } if last && *hook == pass.hook => HookVerdict::Stolen,
        _ => HookVerdict::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(verdict: i32, skb: u64) -> Vec<u8> {
        let r = HookVerdictRecord {
            header: RecordHeader {
                kind: kind::HOOK_VERDICT,
                version: RECORD_VERSION,
                _pad0: 0,
                len: 48,
            },
            ts_ns: 5,
            skb,
            gen: 7,
            netns: 9,
            verdict,
            hook: 2,
            pf: 2,
            _pad0: 0,
            _pad1: 0,
        };
        // SAFETY: plain data viewed as bytes.
        unsafe { std::slice::from_raw_parts(&r as *const _ as *const u8, 48) }.to_vec()
    }

    fn reasons() -> HashMap<u32, String> {
        HashMap::from([(7, "NETFILTER_DROP".to_string()), (2, "NO_SOCKET".into())])
    }

    #[test]
    fn unreported_drop_becomes_a_netfilter_drop_at_nf_hook_slow() {
        let mut hv = HookVerdicts::new(&reasons());
        let ev = hv.split(&record(-1, 0x100)).unwrap().unwrap().unwrap();
        let Event::Drop(d) = ev else {
            panic!("not a drop: {ev:?}")
        };
        assert_eq!((d.skb, d.gen, d.netns, d.reason), (0x100, 7, 9, 7));
        assert_eq!(d.reason_name.as_deref(), Some("NETFILTER_DROP"));
        assert_eq!(d.location_sym.as_deref(), Some(HOOK_DROP_LOCATION));
        // The same drop again (e.g. NF_DROP_ERR verdict twice): nothing more.
        assert!(hv.split(&record(-113, 0x100)).unwrap().unwrap().is_none());
        assert_eq!(hv.stats.drops_unreported, 1);
        assert_eq!(hv.stats.drops_reported, 1);
    }

    #[test]
    fn reported_drop_and_stolen_add_nothing() {
        let mut hv = HookVerdicts::new(&reasons());
        hv.saw(&Event::Drop(DropEvent {
            ts_ns: 4,
            skb: 0x200,
            gen: 7,
            netns: 9,
            reason: 7,
            reason_name: Some("NETFILTER_DROP".into()),
            location: 1,
            location_sym: None,
            prev: None,
            state: None,
        }));
        assert!(hv.split(&record(-1, 0x200)).unwrap().unwrap().is_none());
        assert!(hv.split(&record(0, 0x300)).unwrap().unwrap().is_none());
        assert_eq!(
            hv.stats,
            HookVerdictStats {
                drops_reported: 1,
                drops_unreported: 0,
                stolen: 1
            }
        );
    }

    /// A traversal from JSON (as the capture prints it): FORWARD passed to its exit, then
    /// POSTROUTING without an exit and the given fate.
    fn trace(fate: &str) -> PacketTrace {
        let pass = |hook: &str, probes: &str| {
            format!(
                r#"{{"hook":"{hook}","ts_ns":1,"in_dev":null,"out_dev":null,"mac":null,"uid":null,"gid":null,"tables":[],"probes":{probes}}}"#
            )
        };
        let text = format!(
            r#"{{"id":0,"skb":1,"gen":2,"netns":3,"family":"ipv4","first_ts_ns":1,"incomplete":false,"hooks":[{},{}],{fate}}}"#,
            pass(
                "FORWARD",
                &format!("[{},-150,-149,{PRIO_HOOK_EXIT}]", i32::MIN + 1)
            ),
            pass("POSTROUTING", "[-2147483647,-150]"),
        );
        serde_json::from_str(&text).unwrap()
    }

    #[test]
    fn verdict_of_each_pass() {
        let dropped = trace(
            r#""fate":{"fate":"dropped","hook":"POSTROUTING","stage":{"kind":"table","table":"mangle"}}"#,
        );
        let v: Vec<HookVerdict> = dropped
            .hooks
            .iter()
            .map(|h| hook_verdict(&dropped, h))
            .collect();
        assert_eq!(v, [HookVerdict::Accept, HookVerdict::Drop]);
        let stolen = trace(
            r#""fate":{"fate":"stolen","hook":"POSTROUTING","stage":{"kind":"table","table":"mangle"}}"#,
        );
        assert_eq!(hook_verdict(&stolen, &stolen.hooks[1]), HookVerdict::Stolen);
        let unknown = trace(r#""fate":{"fate":"unknown"}"#);
        assert_eq!(
            hook_verdict(&unknown, &unknown.hooks[1]),
            HookVerdict::Unknown
        );
    }

    #[test]
    fn other_records_pass_and_bad_ones_are_errors() {
        let mut hv = HookVerdicts::new(&HashMap::new());
        assert!(hv.split(&[kind::PROBE, RECORD_VERSION, 0, 0]).is_none());
        assert_eq!(
            hv.split(&record(-1, 1)[..40]).unwrap(),
            Err(HookVerdictError::Length { len: 40, need: 48 })
        );
        let mut bad = record(-1, 1);
        bad[1] = RECORD_VERSION + 1;
        assert!(matches!(
            hv.split(&bad).unwrap(),
            Err(HookVerdictError::Version { .. })
        ));
        // Without a resolved NETFILTER_DROP the fallback number is used, still named.
        let Some(Ok(Some(Event::Drop(d)))) = hv.split(&record(-1, 1)) else {
            panic!()
        };
        assert_eq!(
            d.reason,
            trace_core::assemble::NETFILTER_DROP_REASON_FALLBACK
        );
    }
}

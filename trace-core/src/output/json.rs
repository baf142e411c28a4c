//! `--format json`: one JSON object per packet and line, schema `iptrace.packet.v1`
//! (documented in docs/json-schema.md; fields are only ever added within a version).
//!
//! The format has always been a `Value` printed with serde_json's default sorted maps. The
//! borrowed views below declare their fields in alphabetical order and define it
//! ([`packet_json`]); the line itself is written by hand ([`super::json_line`], a faster copy
//! of the same bytes), and `tests/output_json_order.rs` checks that the two agree with the
//! sorted `Value` rendering on every packet of the golden recordings.

use crate::event::{CtSnapshot, Headers, L4};
use crate::packet::{Fate, HookPass, ObservedVerdict, PacketState, TableObservation};
use crate::reconstruct::positions::{Agreement, FailedMatch, PositionsCheck};
use crate::reconstruct::{
    NatInfo, Path, ReconstructedHook, ReconstructedPacket, Step, TableResult,
};
use serde::ser::{SerializeMap, SerializeSeq, Serializer};
use serde::Serialize;
use serde_json::Value;
use std::fmt::Display;
use std::io::{self, Write};

pub const SCHEMA: &str = "iptrace.packet.v1";

/// The JSON value of one packet (for consumers that want a tree; the output itself is
/// written by [`write_json`] without one).
pub fn packet_json(rp: &ReconstructedPacket) -> Value {
    serde_json::to_value(PacketView(rp)).expect("packet views serialize to a JSON value")
}

/// Writes one line (built in memory first: a call through `dyn Write` per field costs more
/// than the bytes it copies).
pub fn write_json(w: &mut dyn Write, rp: &ReconstructedPacket) -> io::Result<()> {
    let mut buf = String::with_capacity(4096);
    push_json_str(&mut buf, rp);
    w.write_all(buf.as_bytes())
}

/// Appends one line to `buf`.
pub fn push_json(buf: &mut Vec<u8>, rp: &ReconstructedPacket) {
    let mut line = String::with_capacity(4096);
    push_json_str(&mut line, rp);
    buf.extend_from_slice(line.as_bytes());
}

/// Appends one line to a `String` buffer (the text formats' buffer, reused between packets):
/// written by hand ([`super::json_line`]), the bytes serde_json prints for the views below.
pub fn push_json_str(buf: &mut String, rp: &ReconstructedPacket) {
    super::json_line::push_packet(buf, rp);
}

/// A `Display` value serialized as a JSON string without an intermediate `String`.
pub(super) struct Str<T>(pub(super) T);

impl<T: Display> Serialize for Str<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

/// A sequence of views built on the fly from an iterator.
struct Seq<I>(std::cell::Cell<Option<I>>);

impl<I: Iterator<Item = T>, T: Serialize> Serialize for Seq<I> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let it = self.0.take().expect("a Seq is serialized once");
        let mut seq = s.serialize_seq(None)?;
        for x in it {
            seq.serialize_element(&x)?;
        }
        seq.end()
    }
}

fn seq<I: IntoIterator>(it: I) -> Seq<I::IntoIter> {
    Seq(std::cell::Cell::new(Some(it.into_iter())))
}

/// A value whose derived `Serialize` does not list fields alphabetically (Fate, Assumption):
/// rendered through a sorted `Value`, as the format always did. Rare or small.
pub(super) struct Sorted<'a, T>(pub(super) &'a T);

impl<T: Serialize> Serialize for Sorted<'_, T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        serde_json::to_value(self.0)
            .map_err(serde::ser::Error::custom)?
            .serialize(s)
    }
}

struct PacketView<'a>(&'a ReconstructedPacket);

impl Serialize for PacketView<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let rp = self.0;
        let p = &rp.packet;
        let mut m = s.serialize_map(Some(10))?;
        m.serialize_entry("family", &p.family)?;
        m.serialize_entry("fate", &FateView(&p.fate))?;
        m.serialize_entry(
            "hooks",
            &seq(rp
                .hooks
                .iter()
                .zip(&p.hooks)
                .map(|(rh, hp)| HookView { rh, hp })),
        )?;
        m.serialize_entry("id", &p.id)?;
        m.serialize_entry("incomplete", &p.incomplete)?;
        m.serialize_entry("netns", &p.netns)?;
        m.serialize_entry(
            "packet",
            &p.hooks
                .first()
                .and_then(|h| h.tables.first())
                .map(|t| HeadersView(&t.before.headers)),
        )?;
        m.serialize_entry("schema", SCHEMA)?;
        m.serialize_entry("status", rp.status.as_str())?;
        m.serialize_entry("ts_ns", &p.first_ts_ns)?;
        m.end()
    }
}

/// `{"fate":"delivered"}` and `{"fate":"unknown"}` (nearly every packet) directly; the
/// variants with fields through [`Sorted`].
pub(super) struct FateView<'a>(pub(super) &'a Fate);

impl Serialize for FateView<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let unit = match self.0 {
            Fate::Delivered => "delivered",
            Fate::Unknown => "unknown",
            other => return Sorted(other).serialize(s),
        };
        let mut m = s.serialize_map(Some(1))?;
        m.serialize_entry("fate", unit)?;
        m.end()
    }
}

struct HookView<'a> {
    rh: &'a ReconstructedHook,
    hp: &'a HookPass,
}

impl Serialize for HookView<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let (rh, hp) = (self.rh, self.hp);
        let mut m = s.serialize_map(Some(5))?;
        m.serialize_entry("hook", hp.hook.chain_name())?;
        m.serialize_entry("in", &hp.in_dev)?;
        m.serialize_entry("out", &hp.out_dev)?;
        // Bridge ports only for bridged packets (the lines of others stay as they were).
        let bridge = hp.bridge.as_ref();
        if let Some(p) = bridge.and_then(|b| b.physin.as_ref()) {
            m.serialize_entry("physin", p)?;
        }
        if let Some(p) = bridge.and_then(|b| b.physout.as_ref()) {
            m.serialize_entry("physout", p)?;
        }
        m.serialize_entry(
            "tables",
            &seq(rh
                .tables
                .iter()
                .zip(&hp.tables)
                .map(|(t, o)| TableView { t, o })),
        )?;
        m.serialize_entry("ts_ns", &hp.ts_ns)?;
        m.end()
    }
}

struct TableView<'a> {
    t: &'a TableResult,
    o: &'a TableObservation,
}

impl Serialize for TableView<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let (t, o) = (self.t, self.o);
        let first = t.paths.first();
        let mut m = s.serialize_map(Some(12))?;
        m.serialize_entry("after", &o.after.as_ref().map(StateView))?;
        m.serialize_entry("alternatives", &seq(t.paths.iter().skip(1).map(PathView)))?;
        m.serialize_entry("before", &StateView(&o.before))?;
        m.serialize_entry("observed", &ObservedView(&t.observed))?;
        m.serialize_entry("path", &first.map(PathView))?;
        // Only with rule positions (fentry/kprobe x_tables probes): nothing changes without.
        if let Some(pc) = &t.positions {
            m.serialize_entry("positions", &PositionsView(pc))?;
        }
        m.serialize_entry("reason", &t.reason)?;
        m.serialize_entry("ruled_out", &t.ruled_out)?;
        m.serialize_entry("skipped", &t.skipped)?;
        m.serialize_entry("status", t.status.as_str())?;
        m.serialize_entry("table", &t.table)?;
        m.serialize_entry("truncated", &t.truncated)?;
        m.serialize_entry("verdict", &first.map(|p| p.verdict.as_str()))?;
        m.end()
    }
}

/// `{"agreement", "calls", "complete", "failed": [...], "reason"}` (sorted keys).
pub(super) struct PositionsView<'a>(pub(super) &'a PositionsCheck);

impl Serialize for PositionsView<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let pc = self.0;
        let reason = match &pc.agreement {
            Agreement::Agree => None,
            Agreement::Disagree { reason } => Some(reason),
            Agreement::Unchecked { why } => Some(why),
        };
        let mut m = s.serialize_map(Some(5))?;
        m.serialize_entry("agreement", pc.agreement.as_str())?;
        m.serialize_entry("calls", &pc.calls)?;
        m.serialize_entry("complete", &pc.complete)?;
        m.serialize_entry("failed", &seq(pc.failed.iter().map(FailedView)))?;
        m.serialize_entry("reason", &reason)?;
        m.end()
    }
}

/// `{"before_step", "index", "match", "rule", "text"}`: a rule evaluated without matching.
struct FailedView<'a>(&'a FailedMatch);

impl Serialize for FailedView<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let f = self.0;
        let mut m = s.serialize_map(Some(5))?;
        m.serialize_entry("before_step", &f.before_step)?;
        m.serialize_entry("index", &f.index)?;
        m.serialize_entry("match", &f.what)?;
        m.serialize_entry("rule", &Str(&f.rule))?;
        m.serialize_entry("text", &f.rule_text)?;
        m.end()
    }
}

struct ObservedView<'a>(&'a ObservedVerdict);

impl Serialize for ObservedView<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            ObservedVerdict::Accept => s.serialize_str("accept"),
            ObservedVerdict::Stolen => s.serialize_str("stolen"),
            ObservedVerdict::Unknown => s.serialize_str("unknown"),
            ObservedVerdict::Drop {
                reason,
                reason_name,
            } => {
                #[derive(Serialize)]
                struct Drop<'a> {
                    reason: &'a u32,
                    reason_name: &'a Option<String>,
                }
                let mut m = s.serialize_map(Some(1))?;
                m.serialize_entry(
                    "drop",
                    &Drop {
                        reason,
                        reason_name,
                    },
                )?;
                m.end()
            }
        }
    }
}

struct PathView<'a>(&'a Path);

impl Serialize for PathView<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let p = self.0;
        let mut m = s.serialize_map(Some(7))?;
        m.serialize_entry("assumptions", &seq(p.assumptions.iter().map(Sorted)))?;
        m.serialize_entry("ctmark", &p.ctmark)?;
        m.serialize_entry("mark", &p.mark)?;
        m.serialize_entry("nat", &p.nat.as_ref().map(NatView))?;
        m.serialize_entry("rejected", &p.rejected)?;
        m.serialize_entry("steps", &seq(p.steps.iter().map(StepView)))?;
        m.serialize_entry("verdict", p.verdict.as_str())?;
        m.end()
    }
}

struct StepView<'a>(&'a Step);

impl Serialize for StepView<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let st = self.0;
        let mut m = s.serialize_map(Some(5))?;
        m.serialize_entry("implicit_return", &st.implicit_return)?;
        m.serialize_entry("mark", &st.mark)?;
        m.serialize_entry("rule", &st.rule_text)?;
        m.serialize_entry("step", &Str(&st.id))?;
        m.serialize_entry("traced", &st.traced)?;
        m.end()
    }
}

struct NatView<'a>(&'a NatInfo);

impl Serialize for NatView<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let n = self.0;
        let mut m = s.serialize_map(Some(3))?;
        m.serialize_entry("from", &Str(&n.from))?;
        m.serialize_entry("rule", &Str(&n.step))?;
        m.serialize_entry("to", &Str(&n.to))?;
        m.end()
    }
}

struct StateView<'a>(&'a PacketState);

impl Serialize for StateView<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let st = self.0;
        let mut m = s.serialize_map(Some(3))?;
        m.serialize_entry("ct", &st.ct.as_ref().map(CtView))?;
        m.serialize_entry("headers", &HeadersView(&st.headers))?;
        m.serialize_entry("mark", &st.mark)?;
        m.end()
    }
}

struct CtView<'a>(&'a CtSnapshot);

impl Serialize for CtView<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let c = self.0;
        let mut m = s.serialize_map(Some(4))?;
        m.serialize_entry("ctinfo", &c.ctinfo)?;
        m.serialize_entry("id", &c.id)?;
        m.serialize_entry("mark", &c.mark)?;
        m.serialize_entry("status", &c.status)?;
        m.end()
    }
}

struct HeadersView<'a>(&'a Headers);

impl Serialize for HeadersView<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let h = self.0;
        let mut m = s.serialize_map(Some(9))?;
        m.serialize_entry("dst", &Str(h.dst))?;
        m.serialize_entry("frag", &h.frag)?;
        m.serialize_entry("id", &h.id)?;
        m.serialize_entry("l4", &L4View(&h.l4))?;
        m.serialize_entry("len", &h.len)?;
        m.serialize_entry("proto", &h.proto)?;
        m.serialize_entry("src", &Str(h.src))?;
        m.serialize_entry("tos", &h.tos)?;
        m.serialize_entry("ttl", &h.ttl)?;
        m.end()
    }
}

struct L4View<'a>(&'a L4);

impl Serialize for L4View<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            L4::Tcp {
                sport,
                dport,
                seq,
                ack,
                flags,
                ..
            } => {
                let mut m = s.serialize_map(Some(5))?;
                m.serialize_entry("ack", ack)?;
                m.serialize_entry("dport", dport)?;
                m.serialize_entry("flags", flags)?;
                m.serialize_entry("seq", seq)?;
                m.serialize_entry("sport", sport)?;
                m.end()
            }
            L4::Udp { sport, dport, .. } | L4::Sctp { sport, dport } => {
                let mut m = s.serialize_map(Some(2))?;
                m.serialize_entry("dport", dport)?;
                m.serialize_entry("sport", sport)?;
                m.end()
            }
            L4::Icmp {
                icmp_type, code, ..
            }
            | L4::Icmpv6 {
                icmp_type, code, ..
            } => {
                let mut m = s.serialize_map(Some(2))?;
                m.serialize_entry("code", code)?;
                m.serialize_entry("type", icmp_type)?;
                m.end()
            }
            L4::Other => s.serialize_unit(),
        }
    }
}

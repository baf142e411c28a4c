//! `--format json`: one JSON object per packet and line, schema `iptrace.packet.v1`
//! (documented in docs/json-schema.md; fields are only ever added within a version).

use crate::event::{Headers, L4};
use crate::packet::{ObservedVerdict, PacketState, TableObservation};
use crate::reconstruct::{Path, ReconstructedPacket, TableResult};
use serde_json::{json, Value};
use std::io::{self, Write};

pub const SCHEMA: &str = "iptrace.packet.v1";

/// The JSON value of one packet.
pub fn packet_json(rp: &ReconstructedPacket) -> Value {
    let p = &rp.packet;
    let hooks: Vec<Value> = rp
        .hooks
        .iter()
        .zip(&p.hooks)
        .map(|(rh, hp)| {
            json!({
                "hook": hp.hook.chain_name(),
                "ts_ns": hp.ts_ns,
                "in": hp.in_dev,
                "out": hp.out_dev,
                "tables": rh.tables.iter().zip(&hp.tables).map(|(t, o)| table_json(t, o)).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({
        "schema": SCHEMA,
        "id": p.id,
        "netns": p.netns,
        "family": p.family,
        "ts_ns": p.first_ts_ns,
        "status": rp.status.as_str(),
        "incomplete": p.incomplete,
        "fate": p.fate,
        "packet": p.hooks.first().and_then(|h| h.tables.first()).map(|t| headers_json(&t.before.headers)),
        "hooks": hooks,
    })
}

/// Writes one line.
pub fn write_json(w: &mut dyn Write, rp: &ReconstructedPacket) -> io::Result<()> {
    serde_json::to_writer(&mut *w, &packet_json(rp))?;
    writeln!(w)
}

fn observed(v: &ObservedVerdict) -> Value {
    match v {
        ObservedVerdict::Accept => json!("accept"),
        ObservedVerdict::Drop { reason, reason_name } => json!({"drop": {"reason": reason, "reason_name": reason_name}}),
        ObservedVerdict::Stolen => json!("stolen"),
        ObservedVerdict::Unknown => json!("unknown"),
    }
}

fn table_json(t: &TableResult, o: &TableObservation) -> Value {
    let mut paths = t.paths.iter();
    let first = paths.next();
    json!({
        "table": t.table,
        "status": t.status.as_str(),
        "reason": t.reason,
        "skipped": t.skipped,
        "observed": observed(&t.observed),
        "verdict": first.map(|p| p.verdict.as_str()),
        "before": state_json(&o.before),
        "after": o.after.as_ref().map(state_json),
        "path": first.map(path_json),
        "alternatives": paths.map(path_json).collect::<Vec<_>>(),
        "ruled_out": t.ruled_out,
        "truncated": t.truncated,
    })
}

fn path_json(p: &Path) -> Value {
    json!({
        "steps": p.steps.iter().map(|s| json!({
            "step": s.id.to_string(),
            "rule": s.rule_text,
            "traced": s.traced,
            "implicit_return": s.implicit_return,
            "mark": s.mark,
        })).collect::<Vec<_>>(),
        "verdict": p.verdict.as_str(),
        "nat": p.nat.as_ref().map(|n| json!({"rule": n.step.to_string(), "from": n.from.to_string(), "to": n.to.to_string()})),
        "mark": p.mark,
        "ctmark": p.ctmark,
        "assumptions": p.assumptions,
        "rejected": p.rejected,
    })
}

fn state_json(s: &PacketState) -> Value {
    json!({
        "headers": headers_json(&s.headers),
        "mark": s.mark,
        "ct": s.ct.map(|c| json!({"ctinfo": c.ctinfo, "status": c.status, "mark": c.mark, "id": c.id})),
    })
}

fn headers_json(h: &Headers) -> Value {
    let mut v = json!({
        "src": h.src, "dst": h.dst, "proto": h.proto, "len": h.len, "tos": h.tos, "ttl": h.ttl,
        "id": h.id, "frag": h.frag,
    });
    let l4 = match &h.l4 {
        L4::Tcp { sport, dport, seq, ack, flags, .. } => json!({"sport": sport, "dport": dport, "seq": seq, "ack": ack, "flags": flags}),
        L4::Udp { sport, dport, .. } | L4::Sctp { sport, dport } => json!({"sport": sport, "dport": dport}),
        L4::Icmp { icmp_type, code, .. } | L4::Icmpv6 { icmp_type, code, .. } => json!({"type": icmp_type, "code": code}),
        L4::Other => Value::Null,
    };
    v["l4"] = l4;
    v
}

//! The captured side of a comparison: per packet, the header snapshots iptrace saw (before
//! and after each NAT) and its reconstructed TRACE path.
//!
//! Read from JSON lines written by `iptrace capture/replay --format json` (schema
//! `iptrace.packet.v1`, owned by the output stage) or by [`CapturedPacket`]'s own serde form.
//! The reader is structural on purpose: it takes the `steps` (or `path`) array of each line
//! and every nested object that carries `src` and `dst` as a header snapshot, so additive
//! schema changes on the producer side do not break `compare`.

use crate::event::{Headers, L4};
use crate::step::StepId;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::net::IpAddr;

/// Header fields used to match captured packets with reference lines.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapturedHeaders {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: Option<u8>,
    pub sport: Option<u16>,
    pub dport: Option<u16>,
    /// IPv4 identification.
    pub id: Option<u16>,
    pub len: Option<u32>,
    pub seq: Option<u32>,
    pub ack: Option<u32>,
    pub tcp_flags: Option<u8>,
}

impl From<&Headers> for CapturedHeaders {
    fn from(h: &Headers) -> Self {
        let (sport, dport) = h.l4.ports().unzip();
        let (seq, ack, tcp_flags) = match h.l4 {
            L4::Tcp { seq, ack, flags, .. } => (Some(seq), Some(ack), Some(flags)),
            _ => (None, None, None),
        };
        CapturedHeaders {
            src: h.src,
            dst: h.dst,
            proto: Some(h.proto),
            sport,
            dport,
            id: h.src.is_ipv4().then_some(h.id),
            len: Some(u32::from(h.len)),
            seq,
            ack,
            tcp_flags,
        }
    }
}

/// One captured (reconstructed) packet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapturedPacket {
    /// Position in the captured input (0-based), for the report.
    #[serde(default)]
    pub index: usize,
    /// CLOCK_MONOTONIC ns of the first event, when known.
    #[serde(default)]
    pub ts_ns: Option<u64>,
    /// Distinct snapshots, earliest first.
    pub headers: Vec<CapturedHeaders>,
    /// The full reconstructed path.
    pub steps: Vec<StepId>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CapturedError {
    #[error("line {line}: not JSON: {message}")]
    Json { line: usize, message: String },
    #[error("line {line}: step {index} ({text}) is not a TRACE position table:chain:rule|return|policy:N")]
    BadStep { line: usize, index: usize, text: String },
    #[error("line {line}: packet without any header snapshot (objects with src and dst)")]
    NoHeaders { line: usize },
    #[error("no packet found (expected JSON lines with a `steps` array per packet)")]
    Empty,
}

/// Reads JSON lines; lines without a `steps`/`path` array (summaries, statistics) are skipped.
pub fn parse_jsonl(text: &str) -> Result<Vec<CapturedPacket>, CapturedError> {
    let mut out = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let line = n + 1;
        if raw.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(raw).map_err(|e| CapturedError::Json { line, message: e.to_string() })?;
        let Some(steps) = steps_array(&v) else { continue };
        let steps = steps
            .iter()
            .enumerate()
            .map(|(i, s)| step_of(s).ok_or_else(|| CapturedError::BadStep { line, index: i, text: s.to_string() }))
            .collect::<Result<Vec<_>, _>>()?;
        let mut headers = Vec::new();
        collect_headers(&v, &mut headers);
        if headers.is_empty() {
            return Err(CapturedError::NoHeaders { line });
        }
        let ts_ns = ["ts_ns", "first_ts_ns"].iter().find_map(|k| v.get(*k).and_then(Value::as_u64));
        out.push(CapturedPacket { index: out.len(), ts_ns, headers, steps });
    }
    if out.is_empty() {
        return Err(CapturedError::Empty);
    }
    Ok(out)
}

fn steps_array(v: &Value) -> Option<&Vec<Value>> {
    ["steps", "path"].iter().find_map(|k| v.get(*k).and_then(Value::as_array))
}

/// A step as a string `table:chain:kind:N`, an object holding such a string under `step`,
/// `id` or `label`, or an object with `table`, `chain`, `kind`, `num`.
fn step_of(v: &Value) -> Option<StepId> {
    if let Some(s) = v.as_str() {
        return s.parse().ok();
    }
    for k in ["step", "id", "label", "position"] {
        if let Some(id) = v.get(k).and_then(Value::as_str).and_then(|s| s.parse().ok()) {
            return Some(id);
        }
    }
    serde_json::from_value(v.clone()).ok()
}

fn collect_headers(v: &Value, out: &mut Vec<CapturedHeaders>) {
    match v {
        Value::Object(map) => {
            if let Some(h) = headers_of(v) {
                if !out.contains(&h) {
                    out.push(h);
                }
            }
            map.values().for_each(|c| collect_headers(c, out));
        }
        Value::Array(a) => a.iter().for_each(|c| collect_headers(c, out)),
        _ => {}
    }
}

fn int<T: TryFrom<u64>>(v: &Value, keys: &[&str]) -> Option<T> {
    let l4 = v.get("l4");
    keys.iter()
        .find_map(|k| v.get(*k).or_else(|| l4.and_then(|l| l.get(*k))).and_then(Value::as_u64))
        .and_then(|n| T::try_from(n).ok())
}

/// An object with `src`/`dst` addresses (event::Headers serialization, or a flat variant).
fn headers_of(v: &Value) -> Option<CapturedHeaders> {
    let src: IpAddr = v.get("src")?.as_str()?.parse().ok()?;
    let dst: IpAddr = v.get("dst")?.as_str()?.parse().ok()?;
    let proto = int(v, &["proto"]).or_else(|| {
        let name = v.get("l4")?.get("proto")?.as_str()?;
        Some(match name {
            "tcp" => 6,
            "udp" => 17,
            "icmp" => 1,
            "icmpv6" => 58,
            "sctp" => 132,
            _ => return None,
        })
    });
    Some(CapturedHeaders {
        src,
        dst,
        proto,
        sport: int(v, &["sport"]),
        dport: int(v, &["dport"]),
        id: int(v, &["id"]),
        len: int(v, &["len"]),
        seq: int(v, &["seq"]),
        ack: int(v, &["ack"]),
        tcp_flags: int(v, &["tcp_flags", "flags"]),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_event_headers_and_string_steps() {
        let line = r#"{"schema":"iptrace.packet.v1","ts_ns":5,"hooks":[{"tables":[{"before":{"headers":{"src":"1.1.1.1","dst":"2.2.2.2","proto":6,"len":60,"tos":0,"ttl":64,"id":7,"frag":16384,"flowlabel":0,"l4":{"proto":"tcp","sport":1000,"dport":80,"seq":9,"ack":0,"window":1,"flags":2,"res":0,"urgp":0}}}}]}],"steps":["raw:PREROUTING:policy:2",{"step":"mangle:PREROUTING:policy:1"}]}"#;
        let p = parse_jsonl(&format!("{line}\n{{\"type\":\"summary\"}}\n")).unwrap();
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].steps.len(), 2);
        let h = &p[0].headers[0];
        assert_eq!((h.proto, h.sport, h.dport, h.id, h.seq, h.tcp_flags), (Some(6), Some(1000), Some(80), Some(7), Some(9), Some(2)));
        assert_eq!(p[0].ts_ns, Some(5));
    }

    #[test]
    fn reports_bad_lines() {
        assert!(matches!(parse_jsonl("{nope"), Err(CapturedError::Json { line: 1, .. })));
        assert!(matches!(parse_jsonl(r#"{"steps":["x"]}"#), Err(CapturedError::BadStep { line: 1, index: 0, .. })));
        assert!(matches!(parse_jsonl(r#"{"steps":[]}"#), Err(CapturedError::NoHeaders { line: 1 })));
        assert!(matches!(parse_jsonl("\n"), Err(CapturedError::Empty)));
    }
}

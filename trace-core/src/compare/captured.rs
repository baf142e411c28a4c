//! The captured side of a comparison: per packet, the header snapshots iptrace saw (before
//! and after each NAT) and its reconstructed TRACE path.
//!
//! Read from JSON lines written by `iptrace capture/replay --format json` (schema
//! `iptrace.packet.v1`, owned by the output stage) or by [`CapturedPacket`]'s own serde form.
//! The reader is structural on purpose: it takes the `steps` (or `path`) array of each line
//! and every nested object that carries `src` and `dst` as a header snapshot, so additive
//! schema changes on the producer side do not break `compare`.

use crate::event::{Headers, L4};
use crate::reconstruct::ReconstructedPacket;
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
    /// IPv4 frag_off (flags 0x4000 DF, 0x2000 MF | offset in 8-byte units).
    #[serde(default)]
    pub frag: Option<u16>,
    /// ICMP/ICMPv6 echo identifier and sequence (not the second word of errors).
    #[serde(default)]
    pub icmp_id: Option<u16>,
    #[serde(default)]
    pub icmp_seq: Option<u16>,
    /// IPv6 only: what a reference line without addresses can still be paired on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<Ipv6Ident>,
}

/// The fields of an IPv6 packet an nft trace of a later fragment still shows: its packet line
/// has no addresses, only the fixed IPv6 header, the start of the source address and the
/// devices (see `compare::reference::ip6dump`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ipv6Ident {
    pub hop_limit: u8,
    pub flowlabel: u32,
    /// Traffic class.
    pub tc: u8,
    /// The interface the packet came in on (None: generated locally, or not known).
    #[serde(default)]
    pub in_dev: Option<String>,
}

/// Echo request/reply (ICMP 8/0, ICMPv6 128/129): the types whose second word is id/seq.
fn is_echo(proto: Option<u8>, icmp_type: Option<u64>) -> bool {
    matches!(
        (proto, icmp_type),
        (Some(1), Some(0 | 8)) | (Some(58), Some(128 | 129))
    )
}

impl From<&Headers> for CapturedHeaders {
    fn from(h: &Headers) -> Self {
        let (sport, dport) = h.l4.ports().unzip();
        let (seq, ack, tcp_flags) = match h.l4 {
            L4::Tcp {
                seq, ack, flags, ..
            } => (Some(seq), Some(ack), Some(flags)),
            _ => (None, None, None),
        };
        let (icmp_id, icmp_seq) = match h.l4 {
            L4::Icmp {
                icmp_type, id, seq, ..
            }
            | L4::Icmpv6 {
                icmp_type, id, seq, ..
            } if is_echo(Some(h.proto), Some(u64::from(icmp_type))) => (Some(id), Some(seq)),
            _ => (None, None),
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
            frag: h.src.is_ipv4().then_some(h.frag),
            icmp_id,
            icmp_seq,
            ipv6: h.src.is_ipv6().then_some(Ipv6Ident {
                hop_limit: h.ttl,
                flowlabel: h.flowlabel,
                tc: h.tos,
                in_dev: None,
            }),
        }
    }
}

impl CapturedHeaders {
    /// The snapshot as seen on a hook pass that came in on `in_dev`.
    fn received_on(mut self, in_dev: Option<&str>) -> Self {
        if let Some(v6) = &mut self.ipv6 {
            v6.in_dev = in_dev.map(str::to_string);
        }
        self
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
    /// Per table traversal, in order, every candidate path the reconstruction kept (the
    /// first is the one in `steps`). Empty when the producer gave none; more than one
    /// candidate for a table means the reconstruction was ambiguous there.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub table_paths: Vec<Vec<Vec<StepId>>>,
    /// Steps (of any candidate) that are the end of a user chain reached without a RETURN
    /// rule (`implicit_return` in `iptrace.packet.v1`): legacy TRACE prints them, nf_tables
    /// traces do not. None: the producer did not say (older JSON, bare step strings);
    /// `compare` then asks the ruleset. The property belongs to the position, not to the
    /// occurrence (`return:N` is the chain end exactly when the chain has N-1 rules).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub implicit_returns: Option<Vec<StepId>>,
}

/// Upper bound on the full paths an ambiguous packet expands to (product of the per-table
/// candidates); beyond it only the first candidate of each table is compared.
pub const MAX_CANDIDATE_PATHS: usize = 256;

impl CapturedPacket {
    /// Every full path the reconstruction allows, first candidates first; just `steps` when
    /// there are no alternatives or too many combinations.
    pub fn candidate_paths(&self) -> Vec<Vec<StepId>> {
        let product = self
            .table_paths
            .iter()
            .map(|t| t.len().max(1))
            .try_fold(1usize, |a, n| a.checked_mul(n));
        match product {
            Some(n) if n > 1 && n <= MAX_CANDIDATE_PATHS => {
                let mut out: Vec<Vec<StepId>> = vec![Vec::new()];
                for table in self.table_paths.iter().filter(|t| !t.is_empty()) {
                    out = out
                        .iter()
                        .flat_map(|prefix| {
                            table.iter().map(move |p| [prefix.as_slice(), p].concat())
                        })
                        .collect();
                }
                out
            }
            _ => vec![self.steps.clone()],
        }
    }

    /// The packet without the steps `drop` selects, in `steps` and in every candidate of
    /// `table_paths` (comparing with a reference that does not show them).
    pub fn without_steps(&self, drop: impl Fn(&StepId) -> bool) -> CapturedPacket {
        let keep = |v: &Vec<StepId>| v.iter().filter(|s| !drop(s)).cloned().collect::<Vec<_>>();
        CapturedPacket {
            steps: keep(&self.steps),
            table_paths: self
                .table_paths
                .iter()
                .map(|t| t.iter().map(keep).collect())
                .collect(),
            ..self.clone()
        }
    }
}

impl From<&ReconstructedPacket> for CapturedPacket {
    /// Direct adapter from the reconstruction (recordings replayed in process).
    fn from(rp: &ReconstructedPacket) -> Self {
        let mut headers: Vec<CapturedHeaders> = Vec::new();
        let mut push = |h: CapturedHeaders| {
            if !headers.contains(&h) {
                headers.push(h);
            }
        };
        for hp in &rp.packet.hooks {
            let seen = |h: &Headers| CapturedHeaders::from(h).received_on(hp.in_dev.as_deref());
            for obs in &hp.tables {
                push(seen(&obs.before.headers));
                if let Some(after) = &obs.after {
                    push(seen(&after.headers));
                }
            }
        }
        let table_paths: Vec<Vec<Vec<StepId>>> = rp
            .hooks
            .iter()
            .flat_map(|h| &h.tables)
            .filter(|t| !t.paths.is_empty())
            .map(|t| {
                t.paths
                    .iter()
                    .map(|p| p.steps.iter().map(|s| s.id.clone()).collect())
                    .collect()
            })
            .collect();
        let mut implicit: Vec<StepId> = Vec::new();
        for s in rp
            .hooks
            .iter()
            .flat_map(|h| &h.tables)
            .flat_map(|t| &t.paths)
            .flat_map(|p| &p.steps)
        {
            if s.implicit_return && !implicit.contains(&s.id) {
                implicit.push(s.id.clone());
            }
        }
        CapturedPacket {
            index: 0,
            ts_ns: Some(rp.packet.first_ts_ns),
            headers,
            steps: rp.steps().map(|(_, _, s)| s.id.clone()).collect(),
            table_paths,
            implicit_returns: Some(implicit),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CapturedError {
    #[error("line {line}: not JSON: {message}")]
    Json { line: usize, message: String },
    #[error("line {line}: step {index} ({text}) is not a TRACE position table:chain:rule|return|policy:N")]
    BadStep {
        line: usize,
        index: usize,
        text: String,
    },
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
        let v: Value = serde_json::from_str(raw).map_err(|e| CapturedError::Json {
            line,
            message: e.to_string(),
        })?;
        let mut implicit = None;
        let Some(table_paths) = table_paths_of(&v, line, &mut implicit)? else {
            continue;
        };
        let steps: Vec<StepId> = table_paths
            .iter()
            .filter_map(|t| t.first())
            .flatten()
            .cloned()
            .collect();
        let mut headers = Vec::new();
        collect_headers(&v, None, &mut headers);
        if headers.is_empty() {
            return Err(CapturedError::NoHeaders { line });
        }
        let ts_ns = ["ts_ns", "first_ts_ns"]
            .iter()
            .find_map(|k| v.get(*k).and_then(Value::as_u64));
        out.push(CapturedPacket {
            index: out.len(),
            ts_ns,
            headers,
            steps,
            table_paths,
            implicit_returns: implicit,
        });
    }
    if out.is_empty() {
        return Err(CapturedError::Empty);
    }
    Ok(out)
}

fn steps_array(v: &Value) -> Option<&Vec<Value>> {
    ["steps", "path"]
        .iter()
        .find_map(|k| v.get(*k).and_then(Value::as_array))
}

/// The steps of one path; steps carrying `implicit_return` make `implicit` known (Some) and
/// the flagged ones are added to it.
fn steps_of(
    arr: &[Value],
    line: usize,
    implicit: &mut Option<Vec<StepId>>,
) -> Result<Vec<StepId>, CapturedError> {
    let mut out = Vec::with_capacity(arr.len());
    for (i, s) in arr.iter().enumerate() {
        let id = step_of(s).ok_or_else(|| CapturedError::BadStep {
            line,
            index: i,
            text: s.to_string(),
        })?;
        if let Some(flag) = s.get("implicit_return").and_then(Value::as_bool) {
            let known = implicit.get_or_insert_with(Vec::new);
            if flag && !known.contains(&id) {
                known.push(id.clone());
            }
        }
        out.push(id);
    }
    Ok(out)
}

/// Per-table candidate paths of one JSON line. `iptrace.packet.v1` nests them as
/// `hooks[].tables[].path.steps` (+ `alternatives[].steps`); a flat top-level `steps`/`path`
/// array (this module's own form) takes precedence and counts as one table. None: the line is not a packet.
fn table_paths_of(
    v: &Value,
    line: usize,
    implicit: &mut Option<Vec<StepId>>,
) -> Result<Option<Vec<Vec<Vec<StepId>>>>, CapturedError> {
    if let Some(arr) = steps_array(v) {
        return Ok(Some(vec![vec![steps_of(arr, line, implicit)?]]));
    }
    if let Some(hooks) = v.get("hooks").and_then(Value::as_array) {
        let mut out = Vec::new();
        for t in hooks
            .iter()
            .filter_map(|h| h.get("tables")?.as_array())
            .flatten()
        {
            let Some(first) = t
                .get("path")
                .and_then(|p| p.get("steps"))
                .and_then(Value::as_array)
            else {
                continue;
            };
            let mut cands = vec![steps_of(first, line, implicit)?];
            for alt in t
                .get("alternatives")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if let Some(a) = alt.get("steps").and_then(Value::as_array) {
                    cands.push(steps_of(a, line, implicit)?);
                }
            }
            out.push(cands);
        }
        return Ok(Some(out));
    }
    Ok(None)
}

/// A step as a string `table:chain:kind:N`, an object holding such a string under `step`,
/// `id` or `label`, or an object with `table`, `chain`, `kind`, `num`.
fn step_of(v: &Value) -> Option<StepId> {
    if let Some(s) = v.as_str() {
        return s.parse().ok();
    }
    for k in ["step", "id", "label", "position"] {
        if let Some(id) = v
            .get(k)
            .and_then(Value::as_str)
            .and_then(|s| s.parse().ok())
        {
            return Some(id);
        }
    }
    serde_json::from_value(v.clone()).ok()
}

/// Every header snapshot under `v`; `in_dev` is the input device of the enclosing hook pass
/// (`iptrace.packet.v1` hook objects carry it as `in`).
fn collect_headers(v: &Value, in_dev: Option<&str>, out: &mut Vec<CapturedHeaders>) {
    match v {
        Value::Object(map) => {
            let in_dev = map.get("in").and_then(Value::as_str).or(in_dev);
            if let Some(h) = headers_of(v, in_dev) {
                if !out.contains(&h) {
                    out.push(h);
                }
            }
            map.values().for_each(|c| collect_headers(c, in_dev, out));
        }
        Value::Array(a) => a.iter().for_each(|c| collect_headers(c, in_dev, out)),
        _ => {}
    }
}

fn int<T: TryFrom<u64>>(v: &Value, keys: &[&str]) -> Option<T> {
    let l4 = v.get("l4");
    keys.iter()
        .find_map(|k| {
            v.get(*k)
                .or_else(|| l4.and_then(|l| l.get(*k)))
                .and_then(Value::as_u64)
        })
        .and_then(|n| T::try_from(n).ok())
}

/// IPv6 identification: this module's own `ipv6` object, or event::Headers' `ttl`,
/// `flowlabel` and `tos` with the hook pass's input device.
fn ipv6_ident_of(v: &Value, in_dev: Option<&str>) -> Option<Ipv6Ident> {
    if let Some(own) = v.get("ipv6") {
        return serde_json::from_value(own.clone()).ok();
    }
    Some(Ipv6Ident {
        hop_limit: int(v, &["ttl"])?,
        flowlabel: int(v, &["flowlabel"])?,
        tc: int(v, &["tos"])?,
        in_dev: in_dev.map(str::to_string),
    })
}

/// An object with `src`/`dst` addresses (event::Headers serialization, or a flat variant).
fn headers_of(v: &Value, in_dev: Option<&str>) -> Option<CapturedHeaders> {
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
    // `l4` reuses `id`/`seq` for ICMP echo: they mean TCP seq only with TCP (or when the
    // protocol is not shown).
    let l4 = v.get("l4");
    let l4_int = |k: &str| l4.and_then(|l| l.get(k)).and_then(Value::as_u64);
    let may_be_tcp = matches!(proto, None | Some(6));
    let echo = is_echo(proto, l4_int("icmp_type").or_else(|| l4_int("type")));
    let l4_u16 = |k: &str| l4_int(k).and_then(|n| u16::try_from(n).ok());
    let top_u16 = |k: &str| {
        v.get(k)
            .and_then(Value::as_u64)
            .and_then(|n| u16::try_from(n).ok())
    };
    Some(CapturedHeaders {
        src,
        dst,
        proto,
        sport: int(v, &["sport"]),
        dport: int(v, &["dport"]),
        id: top_u16("id"),
        len: int(v, &["len"]),
        seq: int(v, &["seq"]).filter(|_| may_be_tcp),
        ack: int(v, &["ack"]).filter(|_| may_be_tcp),
        tcp_flags: int(v, &["tcp_flags", "flags"]).filter(|_| may_be_tcp),
        frag: top_u16("frag").filter(|_| src.is_ipv4()),
        // This module's own form has them flat; event headers in `l4`.
        icmp_id: top_u16("icmp_id").or_else(|| l4_u16("id").filter(|_| echo)),
        icmp_seq: top_u16("icmp_seq").or_else(|| l4_u16("seq").filter(|_| echo)),
        ipv6: src.is_ipv6().then(|| ipv6_ident_of(v, in_dev)).flatten(),
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
        assert_eq!(
            (h.proto, h.sport, h.dport, h.id, h.seq, h.tcp_flags),
            (Some(6), Some(1000), Some(80), Some(7), Some(9), Some(2))
        );
        assert_eq!(p[0].ts_ns, Some(5));
    }

    #[test]
    fn reads_the_nested_packet_v1_paths_with_alternatives() {
        let h = r#"{"src":"1.1.1.1","dst":"2.2.2.2","proto":6,"len":60,"id":7,"l4":{"sport":1,"dport":2,"seq":3,"ack":0,"flags":2}}"#;
        let line = format!(
            r#"{{"schema":"iptrace.packet.v1","ts_ns":9,"hooks":[{{"hook":"PREROUTING","tables":[{{"table":"raw","before":{{"headers":{h}}},"path":{{"steps":[{{"step":"raw:PREROUTING:policy:2"}}]}},"alternatives":[]}},{{"table":"nat","before":{{"headers":{h}}},"path":{{"steps":[{{"step":"nat:PREROUTING:rule:1"}}]}},"alternatives":[{{"steps":[{{"step":"nat:PREROUTING:policy:2"}}]}}]}},{{"table":"mangle","skipped":true,"path":null}}]}}]}}"#
        );
        let p = parse_jsonl(&line).unwrap();
        assert_eq!(
            p[0].steps
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            ["raw:PREROUTING:policy:2", "nat:PREROUTING:rule:1"]
        );
        assert_eq!(p[0].candidate_paths().len(), 2);
        assert_eq!(p[0].headers[0].sport, Some(1));
    }

    #[test]
    fn reads_implicit_return_marks_and_tells_unmarked_apart() {
        let h = r#""headers":{"src":"1.1.1.1","dst":"2.2.2.2"}"#;
        let marked = format!(
            r#"{{{h},"steps":[{{"step":"filter:U:return:2","implicit_return":true}},{{"step":"filter:V:return:1","implicit_return":false}}]}}"#
        );
        let p = parse_jsonl(&marked).unwrap();
        assert_eq!(
            p[0].implicit_returns,
            Some(vec!["filter:U:return:2".parse().unwrap()])
        );
        let none_flagged =
            format!(r#"{{{h},"steps":[{{"step":"filter:V:return:1","implicit_return":false}}]}}"#);
        assert_eq!(
            parse_jsonl(&none_flagged).unwrap()[0].implicit_returns,
            Some(vec![])
        );
        let bare = format!(r#"{{{h},"steps":["filter:U:return:2"]}}"#);
        assert_eq!(parse_jsonl(&bare).unwrap()[0].implicit_returns, None);
        let c = &p[0];
        let kept = c.without_steps(|s| c.implicit_returns.as_ref().unwrap().contains(s));
        assert_eq!(
            kept.steps,
            vec!["filter:V:return:1".parse::<StepId>().unwrap()]
        );
        assert_eq!(kept.table_paths, vec![vec![kept.steps.clone()]]);
    }

    #[test]
    fn fragment_and_echo_fields_from_event_headers_and_own_form() {
        let ev = r#"{"steps":["filter:INPUT:policy:1"],"headers":{"src":"1.1.1.1","dst":"2.2.2.2","proto":1,"len":84,"id":9,"frag":8192,"l4":{"proto":"icmp","icmp_type":8,"code":0,"id":77,"seq":3}}}"#;
        let p = parse_jsonl(ev).unwrap();
        let h = &p[0].headers[0];
        assert_eq!(
            (h.frag, h.icmp_id, h.icmp_seq, h.seq),
            (Some(8192), Some(77), Some(3), None)
        );
        let own = serde_json::to_string(&p[0]).unwrap();
        assert_eq!(parse_jsonl(&own).unwrap()[0].headers, p[0].headers);
    }

    #[test]
    fn ipv6_ident_from_event_headers_and_the_hook_input_device() {
        let h = r#"{"src":"fd99::1","dst":"fd99::2","proto":17,"len":608,"tos":0,"ttl":64,"id":0,"frag":185,"flowlabel":15268,"l4":{"proto":"other"}}"#;
        let line = format!(
            r#"{{"schema":"iptrace.packet.v1","hooks":[{{"hook":"PREROUTING","in":"r0","out":null,"tables":[{{"table":"raw","before":{{"headers":{h}}},"path":{{"steps":[{{"step":"raw:PREROUTING:policy:2"}}]}}}}]}}]}}"#
        );
        let p = parse_jsonl(&line).unwrap();
        let want = Ipv6Ident {
            hop_limit: 64,
            flowlabel: 15268,
            tc: 0,
            in_dev: Some("r0".into()),
        };
        assert_eq!(p[0].headers[0].ipv6.as_ref(), Some(&want));
        // This module's own form keeps it.
        let own = serde_json::to_string(&p[0]).unwrap();
        assert_eq!(parse_jsonl(&own).unwrap()[0].headers, p[0].headers);
        // IPv4 headers have none.
        let v4 = r#"{"steps":["filter:INPUT:policy:1"],"headers":{"src":"1.1.1.1","dst":"2.2.2.2","ttl":64,"flowlabel":0,"tos":0}}"#;
        assert_eq!(parse_jsonl(v4).unwrap()[0].headers[0].ipv6, None);
    }

    #[test]
    fn reports_bad_lines() {
        assert!(matches!(
            parse_jsonl("{nope"),
            Err(CapturedError::Json { line: 1, .. })
        ));
        assert!(matches!(
            parse_jsonl(r#"{"steps":["x"]}"#),
            Err(CapturedError::BadStep {
                line: 1,
                index: 0,
                ..
            })
        ));
        assert!(matches!(
            parse_jsonl(r#"{"steps":[]}"#),
            Err(CapturedError::NoHeaders { line: 1 })
        ));
        assert!(matches!(parse_jsonl("\n"), Err(CapturedError::Empty)));
    }
}

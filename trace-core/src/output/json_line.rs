//! The `--format json` line written by hand into the output buffer: the same bytes serde_json
//! prints for the views in [`super::json`] (sorted keys, compact, its string escaping), without
//! its per-fragment `io::Write` calls and per-key escaping, which were two thirds of the
//! collector's time with JSON output. Parts that are rare or have free-form structure
//! (positions, assumptions, fates and verdicts with fields) still go through serde_json.
//! `tests/output_json_order.rs` checks every packet of the golden recordings against the
//! `serde_json::Value` rendering of the views.

use super::json::{FateView, PositionsView, Sorted};
use super::logline::{push_ipv4_addr, push_u64};
use crate::event::{CtSnapshot, Headers, L4};
use crate::netfilter::Family;
use crate::packet::{Fate, HookPass, ObservedVerdict, PacketState, TableObservation};
use crate::reconstruct::{NatInfo, Path, ReconstructedPacket, Step, TableResult};
use serde::Serialize;
use std::fmt::{Display, Write};
use std::net::IpAddr;

/// An object's opening brace and first key, as one literal: `{"k":`.
macro_rules! first {
    ($k:literal) => {
        concat!("{\"", $k, "\":")
    };
}

/// A following key, as one literal: `,"k":` (keys here never need escaping).
macro_rules! key {
    ($k:literal) => {
        concat!(",\"", $k, "\":")
    };
}

/// Appends one packet's JSON line (with its newline) to `out`.
pub fn push_packet(out: &mut String, rp: &ReconstructedPacket) {
    let p = &rp.packet;
    let family = match p.family {
        Family::Ipv4 => "ipv4",
        Family::Ipv6 => "ipv6",
    };
    push_plain_str(key(out, first!("family")), family);
    push_fate(key(out, key!("fate")), &p.fate);
    let hooks = key(out, key!("hooks"));
    push_list(hooks, rp.hooks.iter().zip(&p.hooks), |out, (rh, hp)| {
        push_hook(out, &rh.tables, hp)
    });
    push_u64(key(out, key!("id")), p.id);
    push_bool(key(out, key!("incomplete")), p.incomplete);
    push_u64(key(out, key!("netns")), p.netns.into());
    let first = p.hooks.first().and_then(|h| h.tables.first());
    push_opt(key(out, key!("packet")), first, |out, t| {
        push_headers(out, &t.before.headers)
    });
    push_plain_str(key(out, key!("schema")), super::json::SCHEMA);
    push_plain_str(key(out, key!("status")), rp.status.as_str());
    push_u64(key(out, key!("ts_ns")), p.first_ts_ns);
    out.push('}');
    out.push('\n');
}

/// Appends `k` (from [`first!`] or [`key!`]) and returns the buffer, for the value.
fn key<'a>(out: &'a mut String, k: &str) -> &'a mut String {
    out.push_str(k);
    out
}

fn push_list<T>(
    out: &mut String,
    items: impl Iterator<Item = T>,
    mut f: impl FnMut(&mut String, T),
) {
    out.push('[');
    for (i, x) in items.enumerate() {
        if i > 0 {
            out.push(',');
        }
        f(out, x);
    }
    out.push(']');
}

fn push_opt<T>(out: &mut String, v: Option<T>, f: impl FnOnce(&mut String, T)) {
    match v {
        Some(x) => f(out, x),
        None => out.push_str("null"),
    }
}

fn push_bool(out: &mut String, b: bool) {
    out.push_str(if b { "true" } else { "false" });
}

/// A string known to need no escaping (names, fixed words).
fn push_plain_str(out: &mut String, s: &str) {
    out.push('"');
    out.push_str(s);
    out.push('"');
}

/// What serde_json escapes in a string: `"`, `\` and control characters.
fn needs_escape(s: &str) -> bool {
    s.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\')
}

fn push_str(out: &mut String, s: &str) {
    if needs_escape(s) {
        push_serde(out, s);
    } else {
        push_plain_str(out, s);
    }
}

fn push_opt_str(out: &mut String, s: Option<&str>) {
    push_opt(out, s, push_str);
}

/// A `Display` value as a JSON string (serde_json's `collect_str`).
fn push_display(out: &mut String, v: impl Display) {
    let start = out.len();
    out.push('"');
    write!(out, "{v}").expect("writing to a String cannot fail");
    if needs_escape(&out[start + 1..]) {
        out.truncate(start);
        push_serde(out, &super::json::Str(v));
        return;
    }
    out.push('"');
}

/// Anything else, through serde_json (rare parts of the line).
fn push_serde<T: Serialize + ?Sized>(out: &mut String, v: &T) {
    let bytes = serde_json::to_vec(v).expect("packet views serialize to JSON");
    out.push_str(std::str::from_utf8(&bytes).expect("serde_json writes UTF-8"));
}

fn push_fate(out: &mut String, fate: &Fate) {
    match fate {
        Fate::Delivered => out.push_str("{\"fate\":\"delivered\"}"),
        Fate::Unknown => out.push_str("{\"fate\":\"unknown\"}"),
        other => push_serde(out, &FateView(other)),
    }
}

fn push_hook(out: &mut String, results: &[TableResult], hp: &HookPass) {
    push_plain_str(key(out, first!("hook")), hp.hook.chain_name());
    push_opt_str(key(out, key!("in")), hp.in_dev.as_deref());
    push_opt_str(key(out, key!("out")), hp.out_dev.as_deref());
    // As HookView: bridge ports only for bridged packets.
    let bridge = hp.bridge.as_ref();
    if let Some(p) = bridge.and_then(|b| b.physin.as_deref()) {
        push_opt_str(key(out, key!("physin")), Some(p));
    }
    if let Some(p) = bridge.and_then(|b| b.physout.as_deref()) {
        push_opt_str(key(out, key!("physout")), Some(p));
    }
    let tables = key(out, key!("tables"));
    push_list(tables, results.iter().zip(&hp.tables), |out, (t, obs)| {
        push_table(out, t, obs)
    });
    push_u64(key(out, key!("ts_ns")), hp.ts_ns);
    out.push('}');
}

fn push_table(out: &mut String, t: &TableResult, obs: &TableObservation) {
    let first = t.paths.first();
    push_opt(key(out, first!("after")), obs.after.as_ref(), push_state);
    push_list(
        key(out, key!("alternatives")),
        t.paths.iter().skip(1),
        push_path,
    );
    push_state(key(out, key!("before")), &obs.before);
    push_observed(key(out, key!("observed")), &t.observed);
    push_opt(key(out, key!("path")), first, push_path);
    // Only with rule positions (fentry/kprobe x_tables probes): nothing changes without.
    if let Some(pc) = &t.positions {
        push_serde(key(out, key!("positions")), &PositionsView(pc));
    }
    push_opt_str(key(out, key!("reason")), t.reason.as_deref());
    push_u64(key(out, key!("ruled_out")), t.ruled_out as u64);
    push_bool(key(out, key!("skipped")), t.skipped);
    push_plain_str(key(out, key!("status")), t.status.as_str());
    push_plain_str(key(out, key!("table")), t.table.name());
    push_bool(key(out, key!("truncated")), t.truncated);
    push_opt_str(key(out, key!("verdict")), first.map(|p| p.verdict.as_str()));
    out.push('}');
}

fn push_observed(out: &mut String, v: &ObservedVerdict) {
    match v {
        ObservedVerdict::Accept => out.push_str("\"accept\""),
        ObservedVerdict::Stolen => out.push_str("\"stolen\""),
        ObservedVerdict::Unknown => out.push_str("\"unknown\""),
        ObservedVerdict::Drop {
            reason,
            reason_name,
        } => {
            out.push_str("{\"drop\":");
            push_u64(key(out, first!("reason")), (*reason).into());
            push_opt_str(key(out, key!("reason_name")), reason_name.as_deref());
            out.push('}');
            out.push('}');
        }
    }
}

fn push_path(out: &mut String, p: &Path) {
    push_list(
        key(out, first!("assumptions")),
        p.assumptions.iter(),
        |out, a| push_serde(out, &Sorted(a)),
    );
    push_opt(key(out, key!("ctmark")), p.ctmark, |out, m| {
        push_u64(out, m.into())
    });
    push_u64(key(out, key!("mark")), p.mark.into());
    push_opt(key(out, key!("nat")), p.nat.as_ref(), push_nat);
    push_opt_str(key(out, key!("rejected")), p.rejected.as_deref());
    push_list(key(out, key!("steps")), p.steps.iter(), push_step);
    push_str(key(out, key!("verdict")), p.verdict.as_str());
    out.push('}');
}

fn push_step(out: &mut String, st: &Step) {
    push_bool(key(out, first!("implicit_return")), st.implicit_return);
    push_u64(key(out, key!("mark")), st.mark.into());
    push_opt_str(key(out, key!("rule")), st.rule_text.as_deref());
    let id = &st.id;
    let out = key(out, key!("step"));
    if needs_escape(&id.chain) {
        push_display(out, id);
    } else {
        out.push('"');
        super::trace::push_step_id(out, id);
        out.push('"');
    }
    push_bool(key(out, key!("traced")), st.traced);
    out.push('}');
}

fn push_nat(out: &mut String, n: &NatInfo) {
    push_display(key(out, first!("from")), n.from);
    push_display(key(out, key!("rule")), &n.step);
    push_display(key(out, key!("to")), n.to);
    out.push('}');
}

fn push_state(out: &mut String, st: &PacketState) {
    push_opt(key(out, first!("ct")), st.ct.as_ref(), push_ct);
    push_headers(key(out, key!("headers")), &st.headers);
    push_u64(key(out, key!("mark")), st.mark.into());
    out.push('}');
}

fn push_ct(out: &mut String, c: &CtSnapshot) {
    push_u64(key(out, first!("ctinfo")), c.ctinfo.into());
    push_u64(key(out, key!("id")), c.id);
    push_u64(key(out, key!("mark")), c.mark.into());
    push_u64(key(out, key!("status")), c.status.into());
    out.push('}');
}

fn push_addr(out: &mut String, a: IpAddr) {
    match a {
        IpAddr::V4(v4) => {
            out.push('"');
            push_ipv4_addr(out, v4);
            out.push('"');
        }
        IpAddr::V6(_) => push_display(out, a),
    }
}

fn push_headers(out: &mut String, h: &Headers) {
    push_addr(key(out, first!("dst")), h.dst);
    push_u64(key(out, key!("frag")), h.frag.into());
    push_u64(key(out, key!("id")), h.id.into());
    push_l4(key(out, key!("l4")), &h.l4);
    push_u64(key(out, key!("len")), h.len.into());
    push_u64(key(out, key!("proto")), h.proto.into());
    push_addr(key(out, key!("src")), h.src);
    push_u64(key(out, key!("tos")), h.tos.into());
    push_u64(key(out, key!("ttl")), h.ttl.into());
    out.push('}');
}

fn push_l4(out: &mut String, l4: &L4) {
    match *l4 {
        L4::Tcp {
            sport,
            dport,
            seq,
            ack,
            flags,
            ..
        } => {
            push_u64(key(out, first!("ack")), ack.into());
            push_u64(key(out, key!("dport")), dport.into());
            push_u64(key(out, key!("flags")), flags.into());
            push_u64(key(out, key!("seq")), seq.into());
            push_u64(key(out, key!("sport")), sport.into());
            out.push('}');
        }
        L4::Udp { sport, dport, .. } | L4::Sctp { sport, dport } => {
            push_u64(key(out, first!("dport")), dport.into());
            push_u64(key(out, key!("sport")), sport.into());
            out.push('}');
        }
        L4::Icmp {
            icmp_type, code, ..
        }
        | L4::Icmpv6 {
            icmp_type, code, ..
        } => {
            push_u64(key(out, first!("code")), code.into());
            push_u64(key(out, key!("type")), icmp_type.into());
            out.push('}');
        }
        L4::Other => out.push_str("null"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::json::packet_json;
    use crate::reconstruct::{Endpoint, Status};
    use crate::record::replay::Replayer;
    use crate::record::RecordingReader;
    use crate::step::{StepId, StepKind};

    fn golden_packets() -> Vec<ReconstructedPacket> {
        let bytes = include_bytes!("../../tests/golden_lab/legacy-run.iptrace");
        let mut r = Replayer::new(None);
        let mut pkts = Vec::new();
        for item in RecordingReader::new(&bytes[..]).unwrap() {
            pkts.extend(r.push(item.unwrap().1));
        }
        pkts.extend(r.finish());
        pkts
    }

    fn assert_same(rp: &ReconstructedPacket) {
        let mut line = String::new();
        push_packet(&mut line, rp);
        let want = serde_json::to_string(&packet_json(rp)).unwrap() + "\n";
        assert_eq!(line, want);
    }

    /// What the golden recordings never contain: strings to escape (quotes, backslashes,
    /// control characters, non-ASCII), IPv6, numbers above u32, a drop verdict, a fate with
    /// fields, NAT, conntrack marks, rejected paths, positions, an empty L4.
    #[test]
    fn unusual_values_print_as_serde_json_does() {
        let mut pkts = golden_packets();
        let with_path = pkts
            .iter()
            .position(|p| {
                p.hooks
                    .iter()
                    .any(|h| h.tables.iter().any(|t| !t.paths.is_empty()))
            })
            .expect("a packet with a path");
        let request = pkts
            .iter()
            .flat_map(|p| &p.hooks)
            .flat_map(|h| &h.tables)
            .flat_map(|t| &t.paths)
            .find_map(|p| p.nat.as_ref().map(|n| n.request.clone()))
            .expect("a NAT request in the recording");
        let mut rp = pkts.swap_remove(with_path);
        assert_same(&rp);
        rp.packet.first_ts_ns = u64::MAX;
        rp.packet.id = u64::from(u32::MAX) + 1;
        rp.packet.netns = u32::MAX;
        rp.packet.fate = Fate::DroppedOutside {
            after: crate::netfilter::Hook::Input,
            reason: 2,
            reason_name: Some("NOT \"SPECIFIED\"".into()),
        };
        rp.status = Status::Inconsistent;
        let hook = &mut rp.packet.hooks[0];
        hook.in_dev = Some("eth\u{1}\t\"0\\".into());
        hook.out_dev = Some("wlan\u{e9}\u{7f}".into());
        hook.ts_ns = 1_000_000_000_000_000_007;
        let obs = &mut hook.tables[0];
        obs.before.headers.src = "2001:db8::1".parse().unwrap();
        obs.before.headers.l4 = L4::Other;
        obs.before.ct = Some(CtSnapshot {
            ctinfo: 2,
            status: u32::MAX,
            mark: 7,
            id: u64::MAX - 1,
        });
        obs.after = None;
        let rh = rp
            .hooks
            .iter_mut()
            .flat_map(|h| h.tables.iter_mut())
            .find(|t| !t.paths.is_empty())
            .unwrap();
        rh.observed = ObservedVerdict::Drop {
            reason: 12,
            reason_name: Some("NETFILTER_DROP\n".into()),
        };
        rh.reason = Some("stale \"dump\"\r\n".into());
        rh.positions = Some(crate::reconstruct::positions::PositionsCheck {
            calls: 3,
            complete: false,
            agreement: crate::reconstruct::positions::Agreement::Disagree {
                reason: "x\u{8}".into(),
            },
            failed: Vec::new(),
        });
        let mut alt = rh.paths[0].clone();
        alt.rejected = Some("why \u{c}".into());
        alt.ctmark = Some(u32::MAX);
        alt.verdict = crate::eval::TableVerdict::Unknown {
            target: "WEIRD\"".into(),
        };
        let step = StepId {
            table: crate::netfilter::Table::Nat,
            chain: "CH\"AIN".into(),
            kind: StepKind::Return,
            num: 4,
        };
        alt.nat = Some(NatInfo {
            step: step.clone(),
            request: request.clone(),
            from: Endpoint {
                addr: "2001:db8::2".parse().unwrap(),
                port: Some(80),
            },
            to: Endpoint {
                addr: "10.0.0.1".parse().unwrap(),
                port: None,
            },
        });
        if let Some(s) = alt.steps.first_mut() {
            s.id = step;
            s.rule_text = Some("-m comment --comment \"a\\b\"".into());
        }
        rh.paths.push(alt);
        assert_same(&rp);
    }
}

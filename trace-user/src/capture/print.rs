//! Packet-level output of the nfhook capture (before any rule-level reconstruction): per hook
//! and stage the observed verdict, NAT translations and conntrack state. Also the summary.

use std::io::Write;

use trace_core::event::{Headers, L4};
use trace_core::packet::{Fate, ObservedVerdict, PacketState, PacketTrace, StageObservation};

use super::session::Summary;

/// `ip_conntrack_info` names (LOG prints ctstate this way).
pub fn ctinfo_name(ctinfo: u8) -> &'static str {
    match ctinfo {
        0 => "ESTABLISHED",
        1 => "RELATED",
        2 => "NEW",
        3 => "ESTABLISHED_REPLY",
        4 => "RELATED_REPLY",
        7 => "UNTRACKED",
        _ => "?",
    }
}

pub fn endpoint(h: &Headers) -> (String, String) {
    match h.l4.ports() {
        Some((s, d)) => (fmt_ep(h.src, s), fmt_ep(h.dst, d)),
        None => (h.src.to_string(), h.dst.to_string()),
    }
}

fn fmt_ep(a: std::net::IpAddr, p: u16) -> String {
    match a {
        std::net::IpAddr::V4(_) => format!("{a}:{p}"),
        std::net::IpAddr::V6(_) => format!("[{a}]:{p}"),
    }
}

fn describe(h: &Headers) -> String {
    let (s, d) = endpoint(h);
    let l4 = match &h.l4 {
        L4::Tcp { flags, .. } => format!("TCP [{}]", tcp_flags(*flags)),
        L4::Udp { .. } => "UDP".into(),
        L4::Sctp { .. } => "SCTP".into(),
        L4::Icmp {
            icmp_type, code, ..
        } => format!("ICMP type {icmp_type} code {code}"),
        L4::Icmpv6 {
            icmp_type, code, ..
        } => format!("ICMPv6 type {icmp_type} code {code}"),
        L4::Other => format!("proto {}", h.proto),
    };
    format!("{s} > {d} {l4}")
}

fn tcp_flags(f: u8) -> String {
    let names = [
        (0x02, "SYN"),
        (0x10, "ACK"),
        (0x08, "PSH"),
        (0x01, "FIN"),
        (0x04, "RST"),
        (0x20, "URG"),
        (0x40, "ECE"),
        (0x80, "CWR"),
    ];
    let v: Vec<&str> = names
        .iter()
        .filter(|(b, _)| f & b != 0)
        .map(|(_, n)| *n)
        .collect();
    v.join(",")
}

/// NAT/mangle change across a stage, e.g. "DNAT 192.168.64.4:10000->172.19.0.9:80".
pub fn translation(before: &PacketState, after: &PacketState) -> Option<String> {
    let (bs, bd) = endpoint(&before.headers);
    let (as_, ad) = endpoint(&after.headers);
    let mut parts = Vec::new();
    if bd != ad {
        parts.push(format!("DNAT {bd}->{ad}"));
    }
    if bs != as_ {
        parts.push(format!("SNAT {bs}->{as_}"));
    }
    if before.mark != after.mark {
        parts.push(format!("MARK {:#x}->{:#x}", before.mark, after.mark));
    }
    (!parts.is_empty()).then(|| parts.join(" "))
}

fn verdict(v: &ObservedVerdict) -> String {
    match v {
        ObservedVerdict::Accept => "ACCEPT".into(),
        ObservedVerdict::Drop {
            reason,
            reason_name,
        } => {
            format!(
                "DROP ({})",
                reason_name
                    .clone()
                    .unwrap_or_else(|| format!("reason {reason}"))
            )
        }
        ObservedVerdict::Stolen => "STOLEN".into(),
        ObservedVerdict::Unknown => "UNKNOWN".into(),
    }
}

fn stage_text(s: &StageObservation) -> String {
    format!("{} {}", s.stage, outcome(s))
}

/// Verdict and what changed across the stage.
fn outcome(s: &StageObservation) -> String {
    let mut t = verdict(&s.verdict);
    if let Some(a) = &s.after {
        if let Some(x) = translation(&s.before, a) {
            t.push(' ');
            t.push_str(&x);
        }
    }
    t
}

/// One text per stage; consecutive stages that share their probes (only the group's outcome
/// was observed, `shared`) are printed as one: "conntrack+mangle+nat DROP (...) (one outcome
/// for the group)".
fn stage_texts(stages: &[StageObservation]) -> Vec<String> {
    stages
        .chunk_by(|a, b| a.shared && b.shared && a.verdict == b.verdict && a.after == b.after)
        .map(|group| match group {
            [one] => stage_text(one),
            _ => {
                let names: Vec<String> = group.iter().map(|s| s.stage.to_string()).collect();
                let o = outcome(&group[0]);
                format!("{} {o} (one outcome for the group)", names.join("+"))
            }
        })
        .collect()
}

fn fate(f: &Fate) -> String {
    match f {
        Fate::Delivered => "delivered".into(),
        Fate::Dropped { hook, stage } => format!("dropped in {stage} at {hook}"),
        Fate::Stolen { hook, stage } => format!("stolen in {stage} at {hook}"),
        Fate::DroppedOutside {
            after,
            reason,
            reason_name,
        } => {
            format!(
                "dropped after {after} ({})",
                reason_name.clone().unwrap_or_else(|| reason.to_string())
            )
        }
        Fate::Vanished { after } => format!("vanished after {after}"),
        other => format!("{other:?}").to_lowercase(),
    }
}

/// Human-readable packet: one header line, one line per hook.
pub fn write_pretty(w: &mut dyn Write, t: &PacketTrace) -> std::io::Result<()> {
    let first = t.hooks.iter().flat_map(|h| h.stages.iter()).next();
    let what = first
        .map(|s| describe(&s.before.headers))
        .unwrap_or_else(|| "?".into());
    let ct = first
        .and_then(|s| s.after.as_ref().and_then(|a| a.ct).or(s.before.ct))
        .map(|c| format!(" ct={} status={:#x}", ctinfo_name(c.ctinfo), c.status))
        .unwrap_or_default();
    let inc = if t.incomplete { " INCOMPLETE" } else { "" };
    writeln!(
        w,
        "#{} {:?} netns={} {what}{ct} -> {}{inc}",
        t.id,
        t.family,
        t.netns,
        fate(&t.fate)
    )?;
    for h in &t.hooks {
        let devs = format!(
            "in={} out={}",
            h.in_dev.as_deref().unwrap_or("-"),
            h.out_dev.as_deref().unwrap_or("-")
        );
        let stages = stage_texts(&h.stages);
        let ct = h
            .stages
            .iter()
            .rev()
            .find_map(|s| s.after.as_ref().and_then(|a| a.ct))
            .map(|c| format!(" [ct {} {:#x}]", ctinfo_name(c.ctinfo), c.status))
            .unwrap_or_default();
        writeln!(
            w,
            "  {:<11} {devs}: {}{ct}",
            h.hook.chain_name(),
            stages.join(" | ")
        )?;
    }
    Ok(())
}

/// The summary on stderr (human) — counters including losses.
pub fn write_summary(w: &mut dyn Write, s: &Summary) -> std::io::Result<()> {
    writeln!(
        w,
        "iptrace capture: {} packets; kernel: seen {} filtered-out {} sampled-out {} rate-limited {} tracked {} records emitted {} LOST {} (drops {}); collector: received {} undecodable {}",
        s.packets, s.seen, s.filtered_out, s.sampled_out, s.rate_limited, s.tracked, s.emitted, s.lost, s.drops, s.received, s.decode_errors
    )?;
    if s.lost > 0 {
        writeln!(w, "iptrace capture: WARNING: {} records were lost (ring buffer full): raise --ringbuf-size or narrow the filter", s.lost)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use trace_core::netfilter::Table;
    use trace_core::packet::Stage;

    fn obs(stage: Stage, verdict: ObservedVerdict, shared: bool) -> StageObservation {
        let h = Headers {
            src: "10.0.0.1".parse().unwrap(),
            dst: "10.0.0.2".parse().unwrap(),
            proto: 17,
            len: 28,
            tos: 0,
            ttl: 64,
            id: 0,
            frag: 0,
            flowlabel: 0,
            l4: L4::Udp {
                sport: 1,
                dport: 2,
                len: 8,
            },
        };
        StageObservation {
            stage,
            priority: 0,
            before: PacketState {
                headers: h.into(),
                mark: 0,
                ct: None,
            },
            after: None,
            verdict,
            shared,
        }
    }

    /// Stages observed only as a group are printed as one, saying so.
    #[test]
    fn shared_stages_print_as_one_group() {
        let drop = ObservedVerdict::Drop {
            reason: 12,
            reason_name: Some("NETFILTER_DROP".into()),
        };
        let nat = Stage::Table { table: Table::Nat };
        let v = vec![
            obs(
                Stage::Table { table: Table::Raw },
                ObservedVerdict::Accept,
                false,
            ),
            obs(Stage::Conntrack, drop.clone(), true),
            obs(nat, drop, true),
        ];
        assert_eq!(
            stage_texts(&v),
            [
                "raw ACCEPT",
                "conntrack+nat DROP (NETFILTER_DROP) (one outcome for the group)"
            ]
        );
    }
}

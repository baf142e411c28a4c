//! Legacy `TRACE:` and `LOG` lines as they appear in kernel logs. The kernel prints
//! `TRACE: table:chain:kind:N <fields>` or `<log prefix><fields>` (fields from `IN=`); what
//! precedes it depends on where the line was read:
//! - `dmesg`: `[ 2243.183223] ` (or none with `dmesg -t`, `[Wed Nov 25 …]` with `dmesg -T`,
//!   `kern  :warn  : [ …] ` with `dmesg -x`);
//! - `/dev/kmsg`: `4,1234,2243183223,-;`;
//! - syslog files (/var/log/messages, kern.log): `Nov 25 15:46:16 host kernel: [ 2243.18] `
//!   or an RFC 3339 stamp `2026-11-25T15:46:16.123456+00:00 host kernel: `;
//! - journalctl: `-o short`/`-k` like syslog, `-o short-monotonic` `[ 2243.183223] host kernel: `.

use super::fields::{parse_fields, RefHeaders};
use super::segment::Segmenter;
use super::{
    Evidence, LogLine, Malformed, ParsedReference, RefPacket, RefStep, RefStepPos, RefTime,
};
use crate::netfilter::{Family, Table};
use crate::step::StepKind;

/// What one kernel-log line says.
#[derive(Debug, Clone, PartialEq)]
pub enum KernLine {
    Trace {
        time: Option<RefTime>,
        table: Table,
        chain: String,
        kind: StepKind,
        num: u32,
        headers: RefHeaders,
    },
    Log {
        time: Option<RefTime>,
        prefix: String,
        headers: RefHeaders,
    },
}

/// Why a netfilter-looking kernel line did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KernLineError {
    #[error("TRACE position {text:?} is not table:chain:rule|return|policy:N")]
    BadPosition { text: String },
    #[error("{source}")]
    Fields {
        #[from]
        source: super::fields::FieldError,
    },
}

/// True when the line is (or claims to be) a netfilter TRACE or LOG line.
pub fn looks_like(line: &str) -> bool {
    line.contains("TRACE: ") && !line.contains("PACKET: ")
        || (line.contains("IN=") && line.contains("OUT="))
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// `/dev/kmsg` record header `prio,seq,usec,flags;` → microseconds since boot.
fn strip_kmsg(line: &str) -> Option<(RefTime, &str)> {
    let (head, rest) = line.split_once(';')?;
    let mut it = head.split(',');
    let prio_ok = it.next()?.parse::<u32>().is_ok();
    let seq_ok = it.next()?.parse::<u64>().is_ok();
    let usec = it.next()?.parse::<u64>().ok()?;
    (prio_ok && seq_ok).then(|| {
        (
            RefTime::Monotonic {
                secs: usec as f64 / 1e6,
            },
            rest,
        )
    })
}

/// `[ 2243.183223] ` → seconds since boot; `[Wed Nov 25 15:46:16 2026] ` → wall time.
fn strip_bracket(line: &str) -> Option<(RefTime, &str)> {
    let inner_end = line.strip_prefix('[')?.find(']')? + 1;
    let inner = line[1..inner_end].trim();
    let rest = line[inner_end + 1..].trim_start();
    let time = match inner.parse::<f64>() {
        Ok(secs) if secs.is_finite() => RefTime::Monotonic { secs },
        _ if inner.chars().any(|c| c == ':') => RefTime::Wall {
            text: inner.to_string(),
        },
        _ => return None,
    };
    Some((time, rest))
}

/// Syslog `Nov 25 15:46:16` (possibly `Nov  5`, fractional seconds) or RFC 3339 first token.
fn strip_wall_stamp(line: &str) -> Option<(RefTime, &str)> {
    let first = line.split_whitespace().next()?;
    if MONTHS.contains(&first) {
        let mut it = line.split_whitespace();
        let (m, d, t) = (it.next()?, it.next()?, it.next()?);
        if d.parse::<u8>().is_err() || t.matches(':').count() != 2 {
            return None;
        }
        let end = line.find(t)? + t.len();
        return Some((
            RefTime::Wall {
                text: format!("{m} {d} {t}"),
            },
            line[end..].trim_start(),
        ));
    }
    let iso = first.len() >= 19 && first.as_bytes()[4] == b'-' && first.as_bytes()[10] == b'T';
    iso.then(|| {
        (
            RefTime::Wall {
                text: first.to_string(),
            },
            line[first.len()..].trim_start(),
        )
    })
}

/// `host kernel: ` / `host kernel[0]: ` after a syslog or journal stamp.
fn strip_host_ident(rest: &str) -> Option<&str> {
    let mut it = rest.splitn(3, ' ');
    let _host = it.next()?;
    let ident = it.next()?;
    let after = it.next().unwrap_or("");
    (ident.starts_with("kernel") && ident.ends_with(':')).then_some(after)
}

/// `dmesg -x` facility/level columns `kern  :warn  : `.
fn strip_dmesg_level(line: &str) -> &str {
    let mut parts = line.splitn(3, ':');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(fac), Some(lvl), Some(rest))
            if ["kern", "user", "daemon", "syslog"].contains(&fac.trim())
                && [
                    "emerg", "alert", "crit", "err", "warn", "notice", "info", "debug",
                ]
                .contains(&lvl.trim()) =>
        {
            rest.trim_start()
        }
        _ => line,
    }
}

/// Separates the log-source decoration from the kernel message.
pub fn strip_preamble(line: &str) -> (Option<RefTime>, &str) {
    let line = line.trim_end_matches(['\r', '\n']);
    if let Some((t, rest)) = strip_kmsg(line) {
        return (Some(t), rest);
    }
    let line = strip_dmesg_level(line);
    let mut time = None;
    let mut rest = line;
    if let Some((t, r)) = strip_wall_stamp(rest) {
        time = Some(t);
        rest = strip_host_ident(r).unwrap_or(r);
    }
    if let Some((t, r)) = strip_bracket(rest) {
        // Prefer the kernel's monotonic stamp over the syslog wall stamp.
        if time.is_none() || matches!(t, RefTime::Monotonic { .. }) {
            time = Some(t);
        }
        rest = strip_host_ident(r).unwrap_or(r);
    }
    (time, rest)
}

/// Parses `table:chain:kind:N` (the TRACE position).
fn parse_position(s: &str) -> Result<(Table, String, StepKind, u32), KernLineError> {
    let id: crate::step::StepId = s.parse().map_err(|_| KernLineError::BadPosition {
        text: s.to_string(),
    })?;
    Ok((id.table, id.chain, id.kind, id.num))
}

/// Parses one kernel-log line. Ok(None): not a netfilter line.
pub fn parse_line(line: &str) -> Result<Option<KernLine>, KernLineError> {
    if !looks_like(line) {
        return Ok(None);
    }
    let (time, msg) = strip_preamble(line);
    if let Some(after) = msg
        .strip_prefix("TRACE: ")
        .or_else(|| msg.find("TRACE: ").map(|i| &msg[i + 7..]))
    {
        let (pos, fields) = after.split_once(' ').unwrap_or((after, ""));
        let (table, chain, kind, num) = parse_position(pos)?;
        let headers = kernel_fields(fields)?;
        return Ok(Some(KernLine::Trace {
            time,
            table,
            chain,
            kind,
            num,
            headers,
        }));
    }
    let at = log_fields_start(msg).ok_or(super::fields::FieldError::NoAddresses)?;
    let headers = kernel_fields(&msg[at..])?;
    Ok(Some(KernLine::Log {
        time,
        prefix: msg[..at].to_string(),
        headers,
    }))
}

/// The formatter's fields; it prints an IPv4 header's DF/MF/FRAG whenever they are set.
fn kernel_fields(s: &str) -> Result<RefHeaders, KernLineError> {
    let mut h = parse_fields(s)?;
    h.ip_flags_shown = h.id.is_some() && h.src.is_some_and(|a| a.is_ipv4());
    Ok(h)
}

/// Byte offset of the `IN=` that starts the LOG fields: the first one followed by ` OUT=`
/// (the prefix is free text and could itself contain `IN=`).
fn log_fields_start(msg: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = msg[from..].find("IN=") {
        let at = from + i;
        let value_end = msg[at..].find(' ').map(|e| at + e)?;
        if msg[value_end..].starts_with(" OUT=") {
            return Some(at);
        }
        from = at + 3;
    }
    None
}

fn family_of(h: &RefHeaders) -> Option<Family> {
    h.src.or(h.dst).map(|a| {
        if a.is_ipv4() {
            Family::Ipv4
        } else {
            Family::Ipv6
        }
    })
}

/// Lines of one packet share these values through every table and NAT (addresses and ports
/// change with NAT, TTL after routing; IP id, length, fragment offset/MF, TCP seq/ack/flags
/// and ICMP id/seq do not). Fragments of one datagram differ in offset (or MF) even when their
/// lengths are equal; an IPv6 ACK and the FIN after it (no IP id, same seq/ack) in flags.
#[derive(Debug, Clone, PartialEq)]
struct HeaderKey {
    id: Option<u16>,
    proto: Option<u8>,
    len: Option<u32>,
    seq: Option<u32>,
    ack: Option<u32>,
    tcp_flags: Option<u8>,
    icmp: (Option<u16>, Option<u16>),
    flowlabel: Option<u32>,
    frag: (Option<u16>, bool, Option<u32>),
}

fn header_key(h: &RefHeaders) -> HeaderKey {
    HeaderKey {
        id: h.id,
        proto: h.proto,
        len: h.len,
        seq: h.seq,
        ack: h.ack,
        tcp_flags: h.tcp_flags,
        icmp: (h.icmp_id, h.icmp_seq),
        flowlabel: h.flowlabel,
        frag: (h.frag, h.mf, h.frag_id),
    }
}

/// How far back (in packets) a LOG line looks for the traced packet it belongs to.
const LOG_ATTACH_WINDOW: usize = 256;

/// The traced packet a LOG line belongs to, if any: the LOG rule is itself traced, so the
/// packet's latest step is a `rule:N` line (the LOG rule) printed just before, with no LOG
/// line attached to it yet, and one of the packet's header snapshots shows the same values
/// (LOG prints fewer fields than TRACE: no SEQ/ACK, options or UID without its --log-*
/// flags). Among such packets, the one whose step line is the latest (the two lines are
/// adjacent in time).
fn traced_packet_of(packets: &[RefPacket], log: &RefHeaders) -> Option<usize> {
    let from = packets.len().saturating_sub(LOG_ATTACH_WINDOW);
    (from..packets.len())
        .filter_map(|i| {
            let p = &packets[i];
            let last = p.steps().last()?;
            let at = p.steps().len() - 1;
            let fits = matches!(
                last.pos,
                RefStepPos::Numbered {
                    kind: StepKind::Rule,
                    ..
                }
            ) && !p.logs.iter().any(|l| l.after_step == at)
                && p.headers.iter().any(|h| h.shows_same(log));
            fits.then_some((last.line, i))
        })
        .max()
        .map(|(_, i)| i)
}

/// Prefix iptrace's kmsg reader writes where /dev/kmsg records were overwritten before it read
/// them, followed by how many (see `trace_user::reference`).
pub const LOST_RECORDS: &str = "iptrace: kernel log records lost here: ";

/// Parses a whole kernel log into packets: TRACE lines grouped per packet; a LOG line joins
/// the traced packet it logged (see [`traced_packet_of`]), else it is a packet of its own.
pub fn parse(text: &str) -> ParsedReference {
    let mut seg: Segmenter<HeaderKey> = Segmenter::new();
    let mut out = ParsedReference {
        format: Some(super::Format::KernelLog),
        ..Default::default()
    };
    for (n, line) in text.lines().enumerate() {
        if let Some(count) = line.strip_prefix(LOST_RECORDS) {
            out.lost += count.trim().parse::<u64>().unwrap_or(1);
            seg.lost_here();
            continue;
        }
        match parse_line(line) {
            Ok(Some(l)) => place(&mut seg, l, n + 1),
            Ok(None) => out.skipped += 1,
            Err(e) => out.malformed.push(Malformed::new(n + 1, line, e)),
        }
    }
    out.packets = seg.packets;
    out
}

/// Adds the line at `lineno` to the packet it belongs to (a new one if none).
fn place(seg: &mut Segmenter<HeaderKey>, l: KernLine, lineno: usize) {
    match l {
        KernLine::Trace {
            time,
            table,
            chain,
            kind,
            num,
            headers,
        } => {
            let fam = family_of(&headers);
            let idx = seg.packet_for(header_key(&headers), table, &chain, || {
                RefPacket::new(lineno, time, fam, Evidence::Path { steps: Vec::new() })
            });
            let pkt = &mut seg.packets[idx];
            pkt.push_headers(headers);
            if let Evidence::Path { steps } = &mut pkt.evidence {
                steps.push(RefStep {
                    table,
                    chain,
                    pos: RefStepPos::Numbered { kind, num },
                    verdict: None,
                    rule_text: None,
                    line: lineno,
                });
            }
            if kind == StepKind::Policy {
                seg.table_done(idx);
            }
        }
        KernLine::Log {
            time,
            prefix,
            headers,
        } => match traced_packet_of(&seg.packets, &headers) {
            Some(i) => {
                let p = &mut seg.packets[i];
                let after_step = p.steps().len() - 1;
                p.logs.push(LogLine {
                    prefix,
                    line: lineno,
                    after_step,
                });
            }
            None => {
                let family = family_of(&headers);
                let mut pkt = RefPacket::new(lineno, time, family, Evidence::Logged { prefix });
                pkt.headers.push(headers);
                seg.packets.push(pkt);
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIELDS: &str = "IN=eth0 OUT= MAC=7e:31:b8:fe:69:94:b2:88:7d:3e:1d:e2:08:00 SRC=192.168.64.5 DST=192.168.64.4 LEN=52 TOS=0x00 PREC=0x00 TTL=64 ID=62913 DF PROTO=TCP SPT=55158 DPT=10000 WINDOW=63 RES=0x00 ACK URGP=0 ";

    fn log_prefix_of(line: &str) -> (Option<RefTime>, String) {
        match parse_line(line).unwrap().unwrap() {
            KernLine::Log {
                time,
                prefix,
                headers,
            } => {
                assert_eq!(headers.id, Some(62913));
                (time, prefix)
            }
            other => panic!("not a LOG line: {other:?}"),
        }
    }

    #[test]
    fn strips_every_log_source_decoration() {
        let mono = Some(RefTime::Monotonic { secs: 2261.450183 });
        let cases = [
            (format!("[ 2261.450183] TCLOG-PRE: {FIELDS}"), mono.clone()),
            (format!("TCLOG-PRE: {FIELDS}"), None),
            (
                format!("4,1234,2261450183,-;TCLOG-PRE: {FIELDS}"),
                mono.clone(),
            ),
            (
                format!("kern  :warn  : [ 2261.450183] TCLOG-PRE: {FIELDS}"),
                mono.clone(),
            ),
            (
                format!("Nov 25 15:46:16 node kernel: [ 2261.450183] TCLOG-PRE: {FIELDS}"),
                mono.clone(),
            ),
            (
                format!("[ 2261.450183] node kernel: TCLOG-PRE: {FIELDS}"),
                mono.clone(),
            ),
        ];
        for (line, want_time) in cases {
            let (time, prefix) = log_prefix_of(&line);
            assert_eq!(prefix, "TCLOG-PRE: ", "{line}");
            assert_eq!(time, want_time, "{line}");
        }
        for line in [
            format!("Nov 25 15:46:16 node kernel: TCLOG-PRE: {FIELDS}"),
            format!("Nov  5 15:46:16 node kernel[0]: TCLOG-PRE: {FIELDS}"),
            format!("2026-11-25T15:46:16.123456+00:00 node kernel: TCLOG-PRE: {FIELDS}"),
            format!("[Wed Nov 25 15:46:16 2026] TCLOG-PRE: {FIELDS}"),
        ] {
            let (time, prefix) = log_prefix_of(&line);
            assert_eq!(prefix, "TCLOG-PRE: ", "{line}");
            assert!(matches!(time, Some(RefTime::Wall { .. })), "{line}");
        }
    }

    #[test]
    fn empty_and_spaced_log_prefixes() {
        assert_eq!(log_prefix_of(&format!("[ 1.0] {FIELDS}")).1, "");
        assert_eq!(
            log_prefix_of(&format!("[ 1.0] FW DROP: {FIELDS}")).1,
            "FW DROP: "
        );
    }

    #[test]
    fn parses_trace_lines_and_counts_malformed() {
        let text = "[ 2243.183223] TRACE: mangle:OUTPUT:policy:1 IN= OUT=br0 SRC=172.19.0.1 DST=172.19.0.9 LEN=52 TOS=0x00 PREC=0x00 TTL=64 ID=65380 DF PROTO=TCP SPT=58726 DPT=80 SEQ=1 ACK=2 WINDOW=63 RES=0x00 ACK URGP=0\n\
            [ 2243.183224] eth0: link becomes ready\n\
            [ 2243.183225] TRACE: mangle:OUTPUT:bogus:1 IN= OUT=br0 SRC=172.19.0.1 DST=172.19.0.9\n\
            [ 2243.183230] TRACE: filter:OUTPUT:policy:1 IN= OUT=br0 SRC=172.19.0.1 DST=172.19.0.9 LEN=52 TOS=0x00 PREC=0x00 TTL=64 ID=65380 DF PROTO=TCP SPT=58726 DPT=80 SEQ=1 ACK=2 WINDOW=63 RES=0x00 ACK URGP=0\n";
        let r = parse(text);
        assert_eq!(r.packets.len(), 1);
        assert_eq!(r.packets[0].steps().len(), 2);
        assert_eq!(r.skipped, 1);
        assert_eq!(r.malformed.len(), 1);
        assert_eq!(r.malformed[0].line, 3);
    }

    #[test]
    fn ip6tables_trace_lines_group_by_flow_label_and_length() {
        let l = |pos: &str, len: u32| {
            format!("[ 5.0] TRACE: {pos} IN=eth0 OUT= MAC=aa:bb SRC=fd00::1 DST=fd00::2 LEN={len} TC=0 HOPLIMIT=64 FLOWLBL=74565 PROTO=TCP SPT=40000 DPT=80 SEQ=9 ACK=0 WINDOW=64800 RES=0x00 SYN URGP=0 OPT (020405A0)\n")
        };
        let text = [
            l("raw:PREROUTING:policy:2", 80),
            l("mangle:PREROUTING:policy:1", 80),
            l("raw:PREROUTING:policy:2", 72),
        ]
        .concat();
        let r = parse(&text);
        assert!(r.malformed.is_empty(), "{:?}", r.malformed);
        assert_eq!(r.packets.len(), 2);
        assert_eq!(r.packets[0].family, Some(Family::Ipv6));
        let h = &r.packets[0].headers[0];
        assert_eq!(
            (h.flowlabel, h.ttl, h.len, h.sport),
            (Some(74565), Some(64), Some(80), Some(40000))
        );
        assert_eq!(r.packets[0].steps().len(), 2);
    }

    #[test]
    fn a_repeated_base_chain_starts_a_new_packet() {
        let l = |pos: &str| {
            format!("TRACE: {pos} IN=eth0 OUT= SRC=10.0.0.1 DST=10.0.0.2 LEN=60 TOS=0x00 PREC=0x00 TTL=64 ID=0 DF PROTO=TCP SPT=1 DPT=2 SEQ=5 ACK=0 WINDOW=1 RES=0x00 SYN URGP=0\n")
        };
        let text = [
            l("raw:PREROUTING:policy:2"),
            l("mangle:PREROUTING:policy:1"),
            l("raw:PREROUTING:policy:2"),
        ]
        .concat();
        let r = parse(&text);
        assert_eq!(r.packets.len(), 2);
    }
}

//! `nft monitor trace` (nftables). Every line starts `trace id <hex> <family> <table> <chain> `
//! and continues with one of:
//! - `packet: iif "eth0" … ip saddr … ip id 52575 … tcp sport … tcp flags == syn …` (headers);
//! - `rule <nft rule text> [# handle N] (verdict <v>)` or `unknown rule handle N (verdict <v>)`;
//! - `policy <v> [meta mark …]` (the base chain's policy decided);
//! - `verdict <v> [meta mark …]` (a chain was left: NFT_TRACETYPE_RETURN). Only older kernels
//!   (Debian's 6.1, not 6.12) send it: `verdict continue` when the packet fell off a chain's
//!   end (base chains too, right before `policy`), `verdict return` for a `return` rule,
//!   whose handle nft does not print (6.12 prints that rule as `rule … (verdict return)`).
//!
//! A later IPv6 fragment's packet line shows no `ip6` fields, only the raw dump of its IPv6
//! header (`ether type ip6 @th,0,160 0x6…`): [`ip6dump`] reads the fields from it.
//!
//! Without `-a` the rule has no handle: it is identified by its text, matched against
//! `nft -a list ruleset` later. Events of tables that are not iptables tables (native nft
//! tables such as `inet firewalld`) are counted as skipped: nothing in an iptables dump
//! corresponds to them.

use super::fields::RefHeaders;
use super::ip6dump;
use super::monitor;
use super::{ParsedReference, RefStep, RefStepPos};
use crate::event::tcp_flags;
use crate::netfilter::{Family, Table};

/// One parsed `nft monitor trace` line (the shape both monitors share).
pub use super::monitor::MonitorLine as NftLine;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NftLineError {
    #[error("expected `trace id <hex> <family> <table> <chain> …`")]
    BadHeader,
    #[error("unknown event {text:?} (expected packet:, rule, policy or verdict)")]
    BadEvent { text: String },
    #[error("rule event without `(verdict …)`")]
    NoVerdict,
    #[error("value {value:?} of `{field}` is invalid")]
    BadValue { field: String, value: String },
}

pub fn looks_like(line: &str) -> bool {
    line.trim_start().starts_with("trace id ")
}

fn family_of(name: &str) -> Option<Family> {
    match name {
        "ip" => Some(Family::Ipv4),
        "ip6" => Some(Family::Ipv6),
        _ => None,
    }
}

/// Parses one line. Ok(None): not an nft trace line, or a valid event of a table iptables
/// does not own (native nft tables such as `inet firewalld`: nothing in an iptables dump
/// corresponds to them).
pub fn parse_line(line: &str, lineno: usize) -> Result<Option<NftLine>, NftLineError> {
    let Some(rest) = line.trim().strip_prefix("trace id ") else {
        return Ok(None);
    };
    let mut it = rest.splitn(5, ' ');
    let id = it
        .next()
        .and_then(|s| u32::from_str_radix(s, 16).ok())
        .ok_or(NftLineError::BadHeader)?;
    let fam = it.next().ok_or(NftLineError::BadHeader)?;
    let table = it.next().ok_or(NftLineError::BadHeader)?;
    let chain = it
        .next()
        .filter(|c| !c.is_empty())
        .ok_or(NftLineError::BadHeader)?;
    let ev = it.next().unwrap_or("").trim();
    let family = family_of(fam);
    let Some(table) = Table::from_name(table).filter(|_| matches!(fam, "ip" | "ip6")) else {
        return Ok(None);
    };
    if let Some(pkt) = ev.strip_prefix("packet:") {
        let mut headers = parse_packet(pkt)?;
        if family == Some(Family::Ipv6) {
            ip6dump::apply(&mut headers);
        }
        return Ok(Some(NftLine::Packet {
            family,
            trace_id: id,
            headers: Box::new(headers),
        }));
    }
    let step = parse_event(ev, table, chain, lineno)?;
    Ok(Some(NftLine::Step {
        family,
        trace_id: id,
        step,
    }))
}

fn parse_event(ev: &str, table: Table, chain: &str, line: usize) -> Result<RefStep, NftLineError> {
    let mk = |pos, verdict: Option<&str>, text: Option<String>| RefStep {
        table,
        chain: chain.to_string(),
        pos,
        verdict: verdict.map(|v| v.trim().to_string()),
        rule_text: text,
        line,
    };
    if let Some(r) = ev.strip_prefix("policy ") {
        return Ok(mk(RefStepPos::Policy, r.split_whitespace().next(), None));
    }
    if let Some(r) = ev.strip_prefix("verdict ") {
        return Ok(mk(RefStepPos::EndOfChain, Some(verdict_word(r)), None));
    }
    let body = ev
        .strip_prefix("rule ")
        .or_else(|| ev.strip_prefix("unknown rule handle "))
        .ok_or_else(|| NftLineError::BadEvent {
            text: ev.split_whitespace().next().unwrap_or("").to_string(),
        })?;
    let open = body
        .rfind(" (verdict ")
        .or_else(|| body.starts_with("(verdict ").then_some(0))
        .ok_or(NftLineError::NoVerdict)?;
    let verdict = body[open..]
        .trim()
        .trim_start_matches("(verdict ")
        .trim_end_matches(')');
    let text = body[..open].trim();
    if ev.starts_with("unknown rule handle ") {
        let handle = text.parse().map_err(|_| NftLineError::BadValue {
            field: "handle".into(),
            value: text.into(),
        })?;
        return Ok(mk(RefStepPos::Handle { handle }, Some(verdict), None));
    }
    // `nft -a monitor trace` appends `# handle N` to the rule text.
    if let Some((t, h)) = text.rsplit_once(" # handle ") {
        if let Ok(handle) = h.trim().parse() {
            return Ok(mk(
                RefStepPos::Handle { handle },
                Some(verdict),
                Some(t.trim().to_string()),
            ));
        }
    }
    Ok(mk(
        RefStepPos::RuleText {
            text: text.to_string(),
        },
        Some(verdict),
        Some(text.to_string()),
    ))
}

/// `return meta mark 0x1` → `return`; `jump DOCKER` stays whole.
fn verdict_word(r: &str) -> &str {
    let r = r.trim();
    match r.split_once(' ') {
        Some((w, rest)) if matches!(w, "jump" | "goto") => {
            &r[..w.len() + 1 + rest.split(' ').next().unwrap_or("").len()]
        }
        Some((w, _)) => w,
        None => r,
    }
}

/// Tokens with `"quoted strings"` kept whole (interface names).
fn tokens(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in s.chars() {
        match c {
            '"' => quoted = !quoted,
            c if c.is_whitespace() && !quoted => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

fn bad(field: &str, value: &str) -> NftLineError {
    NftLineError::BadValue {
        field: field.to_string(),
        value: value.to_string(),
    }
}

fn num<T: TryFrom<u64>>(field: &str, v: &str) -> Result<T, NftLineError> {
    let n = match v.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => v.parse().ok(),
    };
    n.and_then(|n| T::try_from(n).ok())
        .ok_or_else(|| bad(field, v))
}

/// `syn`, `0x18`, `syn | ack`, `syn,ack` → flags byte.
fn tcp_flags_value(v: &str) -> Result<u8, NftLineError> {
    if v.starts_with("0x") {
        return num("tcp flags", v);
    }
    let mut f = 0u8;
    for name in v.split(['|', ',']).map(str::trim).filter(|s| !s.is_empty()) {
        f |= match name {
            "fin" => tcp_flags::FIN,
            "syn" => tcp_flags::SYN,
            "rst" => tcp_flags::RST,
            "psh" => tcp_flags::PSH,
            "ack" => tcp_flags::ACK,
            "urg" => tcp_flags::URG,
            "ecn" => tcp_flags::ECE,
            "cwr" => tcp_flags::CWR,
            _ => return Err(bad("tcp flags", v)),
        };
    }
    Ok(f)
}

/// Parses the `packet:` statement list into headers.
pub fn parse_packet(s: &str) -> Result<RefHeaders, NftLineError> {
    let toks = tokens(s);
    let mut h = RefHeaders::default();
    let mut i = 0;
    while i < toks.len() {
        let proto = toks[i].as_str();
        if matches!(proto, "iif" | "oif") {
            let v = toks.get(i + 1).cloned().unwrap_or_default();
            if proto == "iif" {
                h.in_dev = Some(v)
            } else {
                h.out_dev = Some(v)
            }
            i += 2;
            continue;
        }
        if proto.starts_with('@') {
            // A raw payload expression and its value (`@ll,0,112 0x800`: the pseudo link
            // header of `lo`; `@th,64,96 0x…`: payload nft has no field for).
            h.unknown.push(format!(
                "{proto} {}",
                toks.get(i + 1).map(String::as_str).unwrap_or("")
            ));
            i += 2;
            continue;
        }
        let field = toks.get(i + 1).map(String::as_str).unwrap_or("");
        let mut j = i + 2;
        if toks.get(j).map(String::as_str) == Some("==") {
            j += 1;
        }
        // Values joined by `|` span tokens: `syn | ack`.
        let mut value = toks.get(j).cloned().unwrap_or_default();
        while toks.get(j + 1).map(String::as_str) == Some("|") {
            value.push('|');
            value.push_str(toks.get(j + 2).map(String::as_str).unwrap_or(""));
            j += 2;
        }
        set_nft_field(&mut h, proto, field, &value)?;
        i = j + 1;
    }
    if h.src.is_none() && h.dst.is_none() && h.in_dev.is_none() && h.out_dev.is_none() {
        return Err(bad("packet", s.trim()));
    }
    Ok(h)
}

fn set_nft_field(
    h: &mut RefHeaders,
    proto: &str,
    field: &str,
    v: &str,
) -> Result<(), NftLineError> {
    let key = format!("{proto} {field}");
    match (proto, field) {
        ("ip" | "ip6", "saddr") => h.src = Some(v.parse().map_err(|_| bad(&key, v))?),
        ("ip" | "ip6", "daddr") => h.dst = Some(v.parse().map_err(|_| bad(&key, v))?),
        ("ip", "ttl") | ("ip6", "hoplimit") => h.ttl = Some(num(&key, v)?),
        ("ip", "id") => h.id = Some(num(&key, v)?),
        ("ip", "length") => h.len = Some(num(&key, v)?),
        // nft prints the IPv6 payload length; LOG prints payload + 40.
        ("ip6", "length") => h.len = Some(num::<u32>(&key, v)?.saturating_add(40)),
        ("ip6", "flowlabel") => h.flowlabel = Some(num(&key, v)?),
        ("tcp" | "udp" | "sctp" | "dccp" | "udplite", "sport") => {
            h.sport = Some(num(&key, v)?);
            h.proto = Some(proto_number(proto));
        }
        ("tcp" | "udp" | "sctp" | "dccp" | "udplite", "dport") => h.dport = Some(num(&key, v)?),
        ("tcp", "flags") => h.tcp_flags = Some(tcp_flags_value(v)?),
        ("tcp", "window") => h.window = Some(num(&key, v)?),
        ("tcp", "sequence") => h.seq = Some(num(&key, v)?),
        ("tcp", "ackseq") => h.ack = Some(num(&key, v)?),
        ("udp", "length") => h.udp_len = Some(num(&key, v)?),
        ("icmp" | "icmpv6", "type") => {
            h.proto = Some(if proto == "icmp" { 1 } else { 58 });
            h.icmp_type = icmp_type_number(v);
        }
        ("icmp" | "icmpv6", "code") => h.icmp_code = num(&key, v).ok(),
        ("icmp" | "icmpv6", "id") => h.icmp_id = Some(num(&key, v)?),
        ("icmp" | "icmpv6", "sequence") => h.icmp_seq = Some(num(&key, v)?),
        ("meta", "mark") => h.mark = Some(num(&key, v)?),
        ("ether", "saddr" | "daddr") => match &mut h.mac {
            Some(m) => {
                m.push('/');
                m.push_str(v);
            }
            None => h.mac = Some(v.to_string()),
        },
        _ => h.unknown.push(format!("{key} {v}")),
    }
    Ok(())
}

fn proto_number(name: &str) -> u8 {
    match name {
        "tcp" => 6,
        "udp" => 17,
        "sctp" => 132,
        "dccp" => 33,
        _ => 136,
    }
}

/// nft prints ICMP types by name; the common ones, else a number.
fn icmp_type_number(v: &str) -> Option<u8> {
    Some(match v {
        "echo-reply" => 0,
        "destination-unreachable" => 3,
        "redirect" => 5,
        "echo-request" => 8,
        "time-exceeded" => 11,
        "parameter-problem" => 12,
        "packet-too-big" => 2,
        "nd-neighbor-solicit" => 135,
        "nd-neighbor-advert" => 136,
        _ => return v.parse().ok(),
    })
}

/// What nft prints in its output stream when the kernel dropped trace messages because its
/// netlink socket was full (ENOBUFS); it then goes on reading.
pub const LOST_EVENTS: &str = "# ERROR: We lost some netlink events!";

/// Parses `nft monitor trace` output. A loss line counts in [`ParsedReference::lost`] and
/// marks the packets being traced at that point incomplete.
pub fn parse(text: &str) -> ParsedReference {
    monitor::parse_events(text, super::Format::NftMonitor, parse_line, |l| {
        l.trim() == LOST_EVENTS
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_packet_rule_policy_and_return_events() {
        let p = parse_line(r#"trace id ed114cd4 ip raw PREROUTING packet: iif "eth0" ether saddr 4a:70:b2:aa:8f:4f ether daddr 66:6b:9d:86:56:c7 ip saddr 192.168.64.5 ip daddr 192.168.64.4 ip dscp cs0 ip ecn not-ect ip ttl 64 ip id 52575 ip length 60 tcp sport 50676 tcp dport 10000 tcp flags == syn tcp window 64240 "#, 1).unwrap().unwrap();
        let NftLine::Packet {
            headers: h,
            trace_id,
            ..
        } = p
        else {
            panic!("{p:?}")
        };
        assert_eq!(trace_id, 0xed114cd4);
        assert_eq!(
            (h.id, h.len, h.sport, h.dport, h.tcp_flags),
            (
                Some(52575),
                Some(60),
                Some(50676),
                Some(10000),
                Some(tcp_flags::SYN)
            )
        );
        assert_eq!(h.in_dev.as_deref(), Some("eth0"));
        let r = parse_line("trace id ed114cd4 ip filter FORWARD rule oifname \"br-00ea7870520a\" counter packets 0 bytes 0 jump DOCKER (verdict jump DOCKER)", 2).unwrap().unwrap();
        let NftLine::Step { step, .. } = r else {
            panic!()
        };
        assert_eq!(step.verdict.as_deref(), Some("jump DOCKER"));
        assert!(
            matches!(step.pos, RefStepPos::RuleText { ref text } if text.ends_with("jump DOCKER"))
        );
        let h = parse_line("trace id 1 ip filter FORWARD rule counter packets 0 bytes 0 accept # handle 14 (verdict accept)", 3).unwrap().unwrap();
        let NftLine::Step { step, .. } = h else {
            panic!()
        };
        assert_eq!(step.pos, RefStepPos::Handle { handle: 14 });
        let e = parse_line(
            "trace id 1 ip filter DOCKER verdict continue meta mark 0x00000001 ",
            4,
        )
        .unwrap()
        .unwrap();
        let NftLine::Step { step, .. } = e else {
            panic!()
        };
        assert_eq!(
            (step.pos, step.verdict.as_deref()),
            (RefStepPos::EndOfChain, Some("continue"))
        );
        assert_eq!(
            parse_line("trace id 1 inet firewalld filter_INPUT policy accept", 5).unwrap(),
            None
        );
        assert!(parse_line("trace id zz ip raw X policy accept", 6).is_err());
        // Raw payload expressions are pairs: `lo` has a pseudo link header nft prints raw.
        let lo = parse_line(r#"trace id df0a0e3f ip raw PREROUTING packet: iif "lo" @ll,0,112 0x800 ip saddr 10.77.0.1 ip daddr 10.77.0.1 ip dscp cs0 ip ecn not-ect ip ttl 64 ip id 52732 ip length 29 udp sport 52800 udp dport 9 udp length 9 @th,64,8 0x78 "#, 9).unwrap().unwrap();
        let NftLine::Packet { headers: h, .. } = lo else {
            panic!("{lo:?}")
        };
        assert_eq!(
            (h.src, h.dst, h.id, h.sport, h.dport, h.udp_len),
            (
                Some("10.77.0.1".parse().unwrap()),
                Some("10.77.0.1".parse().unwrap()),
                Some(52732),
                Some(52800),
                Some(9),
                Some(9)
            )
        );
        for raw in ["@ll,0,112 0x800", "@th,64,8 0x78"] {
            assert!(h.unknown.iter().any(|u| u == raw), "{:?}", h.unknown);
        }
        // A later IPv6 fragment (measured, 6.18): the IPv6 header only as a raw dump.
        let frag = parse_line(r#"trace id 615402a0 ip6 filter FORWARD packet: iif "r0" oif "r1" ether saddr 22:16:ab:fb:77:27 ether daddr 56:46:99:18:05:58 ether type ip6 @th,0,160 0x60003ba402382c3ffd9907770001000000000000 "#, 10).unwrap().unwrap();
        let NftLine::Packet { headers: h, .. } = frag else {
            panic!("{frag:?}")
        };
        assert_eq!(
            (h.src, h.flowlabel, h.ttl, h.len, h.in_dev.as_deref()),
            (None, Some(15268), Some(63), Some(608), Some("r0"))
        );
        assert_eq!(h.src_prefix[..4], [0xfd, 0x99, 0x07, 0x77]);
        // The same dump in an ip (IPv4) table is left alone.
        let v4 = parse_line(r#"trace id 1 ip filter FORWARD packet: iif "r0" ether type ip6 @th,0,160 0x60003ba402382c3ffd9907770001000000000000 "#, 11).unwrap().unwrap();
        let NftLine::Packet { headers: h, .. } = v4 else {
            panic!("{v4:?}")
        };
        assert!(h.src_prefix.is_empty() && h.flowlabel.is_none());
        assert!(parse_line("trace id 1 ip raw PREROUTING rule foo", 7).is_err());
        assert!(parse_line("trace id 1 ip raw PREROUTING packet: ip id x", 8).is_err());
    }
}

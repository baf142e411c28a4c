//! `xtables-monitor --trace` (iptables-nft). Since iptables 1.8.7 a `PACKET:` line (headers)
//! precedes the events of each base chain, then one ` TRACE:` line per event:
//! ```text
//! PACKET: 2 ed114cd4 IN=eth0 … SRC=192.168.64.5 DST=192.168.64.4 LEN=60 TOS=0x0 TTL=64 ID=52575 DF SPORT=50676 DPORT=10000 SYN
//!  TRACE: 2 ed114cd4 raw:PREROUTING:rule:0x3:CONTINUE  -4 -t raw -A PREROUTING … -j TRACE
//!  TRACE: 2 ed114cd4 raw:PREROUTING:policy:ACCEPT
//!  TRACE: 2 ed114cd4 filter:DOCKER-USER:rule:0x19:0xfffffffb  -4 -t filter -A DOCKER-USER -j RETURN
//!  TRACE: 2 ed114cd4 filter:DOCKER:return:…
//! ```
//! Kernels before the nf_tables trace rework (Debian's 6.1; not 6.12) trace leaving a chain
//! as an NFT_TRACETYPE_RETURN event, which xtables-monitor prints as `table:chain:return:`
//! with nothing after it (it prints a jump target there, which a return never has): for
//! falling off a user chain's end, for a `-j RETURN` rule (6.12 prints that one as
//! `rule:0xH:0xfffffffb`; the 6.1 event does carry the rule handle, xtables-monitor does not
//! print it), and for falling off a base chain's end right before its `policy:` event (merged
//! into the policy here). `compare::resolve::Resolver::chain_end_candidates` says which
//! positions such an event may stand for.
//!
//! The first number is the nfproto (2 IPv4, 10 IPv6), then the trace id. Verdicts print as
//! ACCEPT, DROP, QUEUE, STOLEN, BREAK, CONTINUE, JUMP:chain, GOTO:chain, else as hex
//! (RETURN = NFT_RETURN = -5 = 0xfffffffb).

use super::fields::parse_xtables_packet_fields;
use super::monitor;
use super::{ParsedReference, RefStep, RefStepPos};
use crate::netfilter::{Family, Table};

/// One parsed xtables-monitor line (the shape both monitors share).
pub use super::monitor::MonitorLine as XtLine;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum XtLineError {
    #[error("expected `<nfproto> <trace id>` after {tag:?}")]
    BadHeader { tag: &'static str },
    #[error("event {text:?} is not table:chain:rule:0xHANDLE:VERDICT, table:chain:policy:VERDICT or table:chain:return:…")]
    BadEvent { text: String },
    #[error("unknown table {name:?}")]
    UnknownTable { name: String },
    #[error("{source}")]
    Fields {
        #[from]
        source: super::fields::FieldError,
    },
}

pub fn looks_like(line: &str) -> bool {
    let t = line.trim_start();
    t.starts_with("PACKET: ")
        || (t.starts_with("TRACE: ") && t[7..].split(' ').nth(1).is_some_and(is_trace_id))
}

fn is_trace_id(s: &str) -> bool {
    s.len() == 8 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// `2 ed114cd4 rest` → (family, id, rest).
fn split_header<'a>(
    rest: &'a str,
    tag: &'static str,
) -> Result<(Option<Family>, u32, &'a str), XtLineError> {
    let err = || XtLineError::BadHeader { tag };
    let mut it = rest.splitn(3, ' ');
    let pf: u8 = it.next().and_then(|p| p.parse().ok()).ok_or_else(err)?;
    let id = it.next().filter(|s| is_trace_id(s)).ok_or_else(err)?;
    let id = u32::from_str_radix(id, 16).map_err(|_| err())?;
    Ok((Family::from_nfproto(pf), id, it.next().unwrap_or("")))
}

pub(super) fn table_of(name: &str) -> Result<Table, XtLineError> {
    Table::from_name(name).ok_or_else(|| XtLineError::UnknownTable {
        name: name.to_string(),
    })
}

/// `raw:PREROUTING:rule:0x3:CONTINUE  -4 -t raw …` → step.
fn parse_event(ev: &str, line: usize) -> Result<RefStep, XtLineError> {
    let (head, text) = match ev.split_once(' ') {
        Some((h, t)) => (h, t.trim()),
        None => (ev.trim(), ""),
    };
    let bad = || XtLineError::BadEvent {
        text: head.to_string(),
    };
    let mut it = head.splitn(4, ':');
    let (table, chain, kind) = (
        it.next().ok_or_else(bad)?,
        it.next().ok_or_else(bad)?,
        it.next().ok_or_else(bad)?,
    );
    let tail = it.next().unwrap_or("");
    if chain.is_empty() {
        return Err(bad());
    }
    let (pos, verdict) = match kind {
        "rule" => {
            let (h, v) = tail.split_once(':').ok_or_else(bad)?;
            let h = h.strip_prefix("0x").ok_or_else(bad)?;
            let handle = u64::from_str_radix(h, 16).map_err(|_| bad())?;
            (RefStepPos::Handle { handle }, Some(v.to_string()))
        }
        "policy" => (RefStepPos::Policy, Some(tail.to_string())),
        "return" => (
            RefStepPos::EndOfChain,
            (!tail.is_empty()).then(|| tail.to_string()),
        ),
        _ => return Err(bad()),
    };
    Ok(RefStep {
        table: table_of(table)?,
        chain: chain.to_string(),
        pos,
        verdict,
        rule_text: (!text.is_empty()).then(|| text.to_string()),
        line,
    })
}

/// Parses one line. Ok(None): not an xtables-monitor trace line.
pub fn parse_line(line: &str, lineno: usize) -> Result<Option<XtLine>, XtLineError> {
    let t = line.trim();
    if let Some(rest) = t.strip_prefix("PACKET: ") {
        let (family, trace_id, fields) = split_header(rest, "PACKET:")?;
        let headers = parse_xtables_packet_fields(fields)?;
        return Ok(Some(XtLine::Packet {
            family,
            trace_id,
            headers: Box::new(headers),
        }));
    }
    if let Some(rest) = t.strip_prefix("TRACE: ") {
        let (family, trace_id, ev) = split_header(rest, "TRACE:")?;
        let step = parse_event(ev, lineno)?;
        return Ok(Some(XtLine::Step {
            family,
            trace_id,
            step,
        }));
    }
    Ok(None)
}

pub fn parse(text: &str) -> ParsedReference {
    // xtables-monitor has no loss line: it exits on ENOBUFS (the collector reports that).
    monitor::parse_events(text, super::Format::XtablesMonitor, parse_line, |_| false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_events_and_verdicts() {
        let s = parse_event(
            "filter:DOCKER-USER:rule:0x19:0xfffffffb  -4 -t filter -A DOCKER-USER -j RETURN",
            7,
        )
        .unwrap();
        assert_eq!(s.pos, RefStepPos::Handle { handle: 0x19 });
        assert_eq!(s.verdict.as_deref(), Some("0xfffffffb"));
        assert_eq!(
            s.rule_text.as_deref(),
            Some("-4 -t filter -A DOCKER-USER -j RETURN")
        );
        let p = parse_event("raw:PREROUTING:policy:ACCEPT ", 8).unwrap();
        assert_eq!(p.pos, RefStepPos::Policy);
        let j = parse_event(
            "nat:PREROUTING:rule:0x6:JUMP:DOCKER  -4 -t nat -A PREROUTING -j DOCKER",
            9,
        )
        .unwrap();
        assert_eq!(j.verdict.as_deref(), Some("JUMP:DOCKER"));
        assert!(parse_event("nat:PREROUTING:rule:6:ACCEPT", 1).is_err());
        assert!(parse_event("bogus:X:policy:ACCEPT", 1).is_err());
    }

    #[test]
    fn splits_packets_sharing_a_trace_id() {
        let text = "PACKET: 2 ed114cd4 IN=eth0 SRC=1.1.1.1 DST=2.2.2.2 LEN=60 TOS=0x0 TTL=64 ID=1 DF SPORT=1 DPORT=2 SYN \n TRACE: 2 ed114cd4 raw:PREROUTING:policy:ACCEPT \nPACKET: 2 ed114cd4 IN=eth0 SRC=1.1.1.1 DST=2.2.2.2 LEN=52 TOS=0x0 TTL=64 ID=2 DF SPORT=1 DPORT=2 ACK \n TRACE: 2 ed114cd4 raw:PREROUTING:policy:ACCEPT \n TRACE: x\n";
        let r = parse(text);
        assert_eq!(r.packets.len(), 2);
        assert_eq!(r.packets[1].headers[0].id, Some(2));
        assert_eq!(r.malformed.len(), 1);
        assert_eq!(r.malformed[0].line, 5);
    }
}

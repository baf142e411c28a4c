//! The field grammar the kernel's LOG/TRACE formatter prints after the prefix
//! (net/netfilter/nf_log_syslog.c), and the `PACKET:` fields of `xtables-monitor --trace`,
//! which reuse the same KEY=VALUE vocabulary (SPORT/DPORT instead of SPT/DPT, MACSRC/MACDST).
//!
//! Tokens are whitespace separated except for two bracketed forms the formatter emits:
//! `OPT (0101080A…)` and the quoted inner packet of ICMP errors `[SRC=… DST=… …]` (kept
//! verbatim, not parsed: it describes another packet).

use serde::{Deserialize, Serialize};
use std::net::IpAddr;

/// Packet headers as one reference line shows them. Every field is optional: each format
/// prints a different subset, and matching only compares what both sides have.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefHeaders {
    pub in_dev: Option<String>,
    pub out_dev: Option<String>,
    pub physin: Option<String>,
    pub physout: Option<String>,
    /// `MAC=` as printed (dst:src:ethertype hex bytes), or `MACSRC/MACDST` joined.
    pub mac: Option<String>,
    pub src: Option<IpAddr>,
    pub dst: Option<IpAddr>,
    /// The leading bytes of the source address, when the line shows only those and no `src`
    /// (an nft trace of a later IPv6 fragment, see `ip6dump`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub src_prefix: Vec<u8>,
    /// IPv4 total length / IPv6 payload length + 40.
    pub len: Option<u32>,
    pub tos: Option<u8>,
    pub prec: Option<u8>,
    pub ttl: Option<u8>,
    /// IPv4 identification (LOG prints IPv6 fragment ids as `ID:hex`, kept in `frag_id`).
    pub id: Option<u16>,
    pub ce: bool,
    pub df: bool,
    pub mf: bool,
    /// Fragment offset (`FRAG:N`).
    pub frag: Option<u16>,
    pub frag_id: Option<u32>,
    pub ip_opt: Option<String>,
    /// IPv6 traffic class / flow label.
    pub tc: Option<u8>,
    pub flowlabel: Option<u32>,
    /// IP protocol number (TCP 6, UDP 17, ICMP 1, ICMPv6 58, ...).
    pub proto: Option<u8>,
    pub sport: Option<u16>,
    pub dport: Option<u16>,
    pub seq: Option<u32>,
    pub ack: Option<u32>,
    pub window: Option<u16>,
    pub res: Option<u8>,
    /// TCP flags byte (see `event::tcp_flags`), when the line lists flags.
    pub tcp_flags: Option<u8>,
    pub urgp: Option<u16>,
    pub tcp_opt: Option<String>,
    /// UDP length field.
    pub udp_len: Option<u16>,
    pub icmp_type: Option<u8>,
    pub icmp_code: Option<u8>,
    pub icmp_id: Option<u16>,
    pub icmp_seq: Option<u16>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub mark: Option<u32>,
    /// The packet quoted in an ICMP error (`[SRC=… …]`), verbatim.
    pub inner: Option<String>,
    /// `INCOMPLETE [N bytes]`: the transport header was truncated.
    pub incomplete: bool,
    /// Tokens this grammar does not know (kept so nothing is silently dropped).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unknown: Vec<String>,
    /// The line shows the IPv4 fragment fields whenever they are set (the kernel's LOG/TRACE
    /// formatter prints DF, MF and FRAG:N after ID=): then no MF and no FRAG mean offset 0
    /// of an unfragmented packet, and `mf`/`frag` can be compared.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ip_flags_shown: bool,
}

/// Equal when both sides show the field.
fn same<T: PartialEq>(a: &Option<T>, b: &Option<T>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => a == b,
        _ => true,
    }
}

impl RefHeaders {
    /// True when every field both lines show is equal: two lines about one packet at one
    /// point, printed by formatters that show different subsets (TRACE prints everything,
    /// a LOG rule without its --log-* flags no TCP sequence, options or socket owner).
    pub fn shows_same(&self, o: &RefHeaders) -> bool {
        self.in_dev == o.in_dev
            && self.out_dev == o.out_dev
            && same(&self.physin, &o.physin)
            && same(&self.physout, &o.physout)
            && same(&self.mac, &o.mac)
            && same(&self.src, &o.src)
            && same(&self.dst, &o.dst)
            && same(&self.len, &o.len)
            && same(&self.tos, &o.tos)
            && same(&self.ttl, &o.ttl)
            && same(&self.id, &o.id)
            && (self.df, self.mf, self.frag) == (o.df, o.mf, o.frag)
            && same(&self.frag_id, &o.frag_id)
            && same(&self.flowlabel, &o.flowlabel)
            && same(&self.proto, &o.proto)
            && same(&self.sport, &o.sport)
            && same(&self.dport, &o.dport)
            && same(&self.seq, &o.seq)
            && same(&self.ack, &o.ack)
            && same(&self.tcp_flags, &o.tcp_flags)
            && same(&self.udp_len, &o.udp_len)
            && same(&self.icmp_type, &o.icmp_type)
            && same(&self.icmp_code, &o.icmp_code)
            && same(&self.icmp_id, &o.icmp_id)
            && same(&self.icmp_seq, &o.icmp_seq)
            && same(&self.mark, &o.mark)
    }

    /// IPv4 `frag_off` without DF (MF | offset in 8-byte units), when the line shows it.
    pub fn fragment(&self) -> Option<u16> {
        self.ip_flags_shown
            .then(|| if self.mf { 0x2000 } else { 0 } | self.frag.unwrap_or(0))
    }
}

/// Why a field list could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FieldError {
    #[error("field {key}= has an invalid value {value:?}")]
    BadValue { key: String, value: String },
    #[error("unterminated {open:?} at byte {offset}")]
    Unterminated { open: char, offset: usize },
    #[error("no SRC=/DST= fields")]
    NoAddresses,
}

/// Splits on whitespace, keeping `( … )` and `[ … ]` groups (which may contain spaces) whole.
fn tokenize(s: &str) -> Result<Vec<&str>, FieldError> {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i].is_ascii_whitespace() {
            i += 1;
            continue;
        }
        let start = i;
        if bytes[i] == b'(' || bytes[i] == b'[' {
            i = group_end(bytes, i)?;
        } else {
            while i < bytes.len() && !bytes[i].is_ascii_whitespace() {
                i += 1;
            }
        }
        out.push(&s[start..i]);
    }
    Ok(out)
}

/// Index just past the bracket group opened at `start` (nesting allowed: ICMP errors quote
/// a packet that may itself carry `OPT (…)`).
fn group_end(bytes: &[u8], start: usize) -> Result<usize, FieldError> {
    let mut depth = 0usize;
    for (i, &b) in bytes.iter().enumerate().skip(start) {
        match b {
            b'(' | b'[' => depth += 1,
            b')' | b']' => {
                depth -= 1;
                if depth == 0 {
                    return Ok(i + 1);
                }
            }
            _ => {}
        }
    }
    Err(FieldError::Unterminated {
        open: bytes[start] as char,
        offset: start,
    })
}

fn bad(key: &str, value: &str) -> FieldError {
    FieldError::BadValue {
        key: key.to_string(),
        value: value.to_string(),
    }
}

fn num<T: std::str::FromStr>(key: &str, v: &str) -> Result<T, FieldError> {
    v.parse().map_err(|_| bad(key, v))
}

/// `0x1F` / `1f` style hex (TOS, PREC, RES, MARK print with 0x; MACPROTO without).
fn hex<T: TryFrom<u64>>(key: &str, v: &str) -> Result<T, FieldError> {
    let digits = v
        .strip_prefix("0x")
        .or_else(|| v.strip_prefix("0X"))
        .unwrap_or(v);
    u64::from_str_radix(digits, 16)
        .ok()
        .and_then(|n| T::try_from(n).ok())
        .ok_or_else(|| bad(key, v))
}

fn dev(v: &str) -> Option<String> {
    (!v.is_empty()).then(|| v.to_string())
}

/// Protocol names the formatters print after `PROTO=`.
fn proto_number(key: &str, v: &str) -> Result<u8, FieldError> {
    Ok(match v {
        "TCP" => 6,
        "UDP" => 17,
        "UDPLITE" => 136,
        "ICMP" => 1,
        "ICMPv6" => 58,
        "AH" => 51,
        "ESP" => 50,
        "SCTP" => 132,
        "DCCP" => 33,
        "GRE" => 47,
        _ => num(key, v)?,
    })
}

fn tcp_flag_bit(tok: &str) -> Option<u8> {
    use crate::event::tcp_flags::*;
    Some(match tok {
        "CWR" => CWR,
        "ECE" => ECE,
        "URG" => URG,
        "ACK" => ACK,
        "PSH" => PSH,
        "RST" => RST,
        "SYN" => SYN,
        "FIN" => FIN,
        _ => return None,
    })
}

/// Parses the field list (everything from `IN=` on). ICMP echo `ID=`/`SEQ=` after
/// `PROTO=ICMP` are the ICMP identifier and sequence, not IP ID / TCP SEQ: the meaning of a
/// key depends on where it appears, so parsing walks the tokens in order.
pub fn parse_fields(s: &str) -> Result<RefHeaders, FieldError> {
    let mut h = RefHeaders::default();
    let toks = tokenize(s)?;
    let mut i = 0;
    while i < toks.len() {
        let tok = toks[i];
        i += 1;
        if tok.starts_with('[') {
            h.inner = Some(tok[1..tok.len() - 1].trim().to_string());
        } else if let Some((key, value)) = tok.split_once('=') {
            set_field(&mut h, key, value)?;
        } else {
            i += set_bare(&mut h, tok, toks.get(i).copied())?;
        }
    }
    if h.src.is_none() && h.dst.is_none() {
        return Err(FieldError::NoAddresses);
    }
    Ok(h)
}

/// A bare token (flag, `FRAG:N`, `OPT (…)`, `INCOMPLETE [N bytes]`, `[inner packet]`).
/// Returns how many following tokens it consumed.
fn set_bare(h: &mut RefHeaders, tok: &str, next: Option<&str>) -> Result<usize, FieldError> {
    let group = next.filter(|n| n.starts_with('(') || n.starts_with('['));
    match tok {
        "DF" => h.df = true,
        "MF" => h.mf = true,
        "CE" => h.ce = true,
        "OPT" => {
            let g = group.ok_or_else(|| bad("OPT", next.unwrap_or("")))?;
            let hexs = g[1..g.len() - 1].to_string();
            // IP options come before PROTO=, TCP options after it.
            if h.proto.is_some() {
                h.tcp_opt = Some(hexs)
            } else {
                h.ip_opt = Some(hexs)
            }
            return Ok(1);
        }
        "INCOMPLETE" => {
            h.incomplete = true;
            return Ok(usize::from(group.is_some()));
        }
        _ if tok.starts_with("FRAG:") => h.frag = Some(num("FRAG", &tok[5..])?),
        _ if tok.starts_with("ID:") => h.frag_id = Some(hex("ID", &tok[3..])?),
        _ => match tcp_flag_bit(tok) {
            Some(bit) if h.proto == Some(6) => *h.tcp_flags.get_or_insert(0) |= bit,
            _ => h.unknown.push(tok.to_string()),
        },
    }
    Ok(0)
}

fn set_field(h: &mut RefHeaders, key: &str, v: &str) -> Result<(), FieldError> {
    let icmp = matches!(h.proto, Some(1) | Some(58));
    match key {
        "IN" => h.in_dev = dev(v),
        "OUT" => h.out_dev = dev(v),
        "PHYSIN" => h.physin = dev(v),
        "PHYSOUT" => h.physout = dev(v),
        "MAC" => h.mac = dev(v),
        "MACSRC" | "MACDST" => append_mac(h, v),
        "MACPROTO" => {}
        "SRC" => h.src = Some(num(key, v)?),
        "DST" => h.dst = Some(num(key, v)?),
        "LEN" if h.proto == Some(17) || h.proto == Some(136) => h.udp_len = Some(num(key, v)?),
        "LEN" => h.len = Some(num(key, v)?),
        "TOS" => h.tos = Some(hex(key, v)?),
        "PREC" => h.prec = Some(hex(key, v)?),
        "TC" => h.tc = Some(num(key, v)?),
        "TTL" | "HOPLIMIT" => h.ttl = Some(num(key, v)?),
        "FLOWLBL" => h.flowlabel = Some(num(key, v)?),
        "ID" if icmp => h.icmp_id = Some(num(key, v)?),
        "ID" => h.id = Some(ip_id(h, v)?),
        "PROTO" => h.proto = Some(proto_number(key, v)?),
        "SPT" | "SPORT" => h.sport = Some(num(key, v)?),
        "DPT" | "DPORT" => h.dport = Some(num(key, v)?),
        "SEQ" if icmp => h.icmp_seq = Some(num(key, v)?),
        "SEQ" => h.seq = Some(num(key, v)?),
        "ACK" => h.ack = Some(num(key, v)?),
        "WINDOW" => h.window = Some(num(key, v)?),
        "RES" => {
            h.res = Some(hex(key, v)?);
            // The formatter prints RES then the flags: an empty flag list is still a flag set.
            h.tcp_flags.get_or_insert(0);
        }
        "URGP" => h.urgp = Some(num(key, v)?),
        "TYPE" => h.icmp_type = Some(num(key, v)?),
        "CODE" => h.icmp_code = Some(num(key, v)?),
        "UID" => h.uid = Some(num(key, v)?),
        "GID" => h.gid = Some(num(key, v)?),
        "MARK" => h.mark = Some(hex(key, v)?),
        _ => h.unknown.push(format!("{key}={v}")),
    }
    Ok(())
}

/// IP ID; xtables-monitor before 1.8.7 printed `ID=%d` without a space before `DF `.
fn ip_id(h: &mut RefHeaders, v: &str) -> Result<u16, FieldError> {
    for (flag, set) in [
        ("DF", &mut h.df as &mut bool),
        ("MF", &mut h.mf),
        ("CE", &mut h.ce),
    ] {
        if let Some(n) = v.strip_suffix(flag) {
            *set = true;
            return num("ID", n);
        }
    }
    num("ID", v)
}

fn append_mac(h: &mut RefHeaders, v: &str) {
    match &mut h.mac {
        Some(m) => {
            m.push('/');
            m.push_str(v);
        }
        None => h.mac = Some(v.to_string()),
    }
}

/// Parses the `PACKET:` field list of xtables-monitor, whose TCP flags appear without a
/// preceding PROTO= (it prints SPORT/DPORT then flag names, and never PROTO).
pub fn parse_xtables_packet_fields(s: &str) -> Result<RefHeaders, FieldError> {
    let mut h = parse_fields(s)?;
    let mut flags = None::<u8>;
    h.unknown.retain(|t| match tcp_flag_bit(t) {
        Some(bit) => {
            *flags.get_or_insert(0) |= bit;
            false
        }
        None => true,
    });
    // Flags mean TCP. SPORT without flags is UDP, UDPLITE, SCTP or DCCP: left unknown
    // (matching then ignores the protocol).
    if flags.is_some() {
        h.tcp_flags = flags;
        h.proto = Some(6);
    }
    Ok(h)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::tcp_flags::*;

    #[test]
    fn parses_a_full_tcp_trace_field_list() {
        let h = parse_fields("IN= OUT=br-00ea7870520a SRC=172.19.0.1 DST=172.19.0.9 LEN=52 TOS=0x00 PREC=0x00 TTL=64 ID=65380 DF PROTO=TCP SPT=58726 DPT=80 SEQ=1826961587 ACK=3047535488 WINDOW=63 RES=0x00 ACK URGP=0 OPT (0101080A1136B1B11E13B190) UID=0 GID=0 ").unwrap();
        assert_eq!(h.in_dev, None);
        assert_eq!(h.out_dev.as_deref(), Some("br-00ea7870520a"));
        assert_eq!(h.id, Some(65380));
        assert!(h.df && !h.mf);
        assert_eq!(h.proto, Some(6));
        assert_eq!((h.sport, h.dport), (Some(58726), Some(80)));
        assert_eq!((h.seq, h.ack), (Some(1826961587), Some(3047535488)));
        assert_eq!(h.tcp_flags, Some(ACK));
        assert_eq!(h.tcp_opt.as_deref(), Some("0101080A1136B1B11E13B190"));
        assert_eq!((h.uid, h.gid), (Some(0), Some(0)));
        assert!(h.unknown.is_empty(), "{:?}", h.unknown);
    }

    #[test]
    fn icmp_id_and_seq_are_not_ip_id_or_tcp_seq() {
        let h = parse_fields("IN=eth0 OUT= MAC=aa:bb SRC=10.0.0.1 DST=10.0.0.2 LEN=84 TOS=0x00 PREC=0x00 TTL=64 ID=1234 DF PROTO=ICMP TYPE=8 CODE=0 ID=77 SEQ=3 MARK=0x1f").unwrap();
        assert_eq!(h.id, Some(1234));
        assert_eq!(
            (h.icmp_type, h.icmp_code, h.icmp_id, h.icmp_seq),
            (Some(8), Some(0), Some(77), Some(3))
        );
        assert_eq!(h.seq, None);
        assert_eq!(h.mark, Some(0x1f));
    }

    #[test]
    fn parses_ipv6_udp_and_icmp_error_inner_packet() {
        let h = parse_fields("IN=eth0 OUT= SRC=2001:db8::1 DST=2001:db8::2 LEN=72 TC=0 HOPLIMIT=64 FLOWLBL=12345 PROTO=UDP SPT=5353 DPT=53 LEN=32").unwrap();
        assert_eq!(h.len, Some(72));
        assert_eq!(h.udp_len, Some(32));
        assert_eq!(h.flowlabel, Some(12345));
        let e = parse_fields("IN=eth0 OUT= SRC=10.0.0.1 DST=10.0.0.2 LEN=56 TOS=0x00 PREC=0xC0 TTL=64 ID=1 PROTO=ICMP TYPE=3 CODE=3 [SRC=10.0.0.2 DST=10.0.0.1 LEN=28 TOS=0x00 PREC=0x00 TTL=64 ID=2 PROTO=UDP SPT=1 DPT=2 LEN=8 ] ").unwrap();
        assert_eq!(e.icmp_type, Some(3));
        assert!(e.inner.unwrap().starts_with("SRC=10.0.0.2"));
    }

    #[test]
    fn rejects_bad_values_and_unterminated_groups() {
        assert!(matches!(
            parse_fields("SRC=1.2.3.400 DST=1.1.1.1"),
            Err(FieldError::BadValue { .. })
        ));
        assert!(matches!(
            parse_fields("SRC=1.2.3.4 DST=1.1.1.1 PROTO=TCP OPT (0101"),
            Err(FieldError::Unterminated { .. })
        ));
        assert!(matches!(
            parse_fields("IN=eth0 OUT="),
            Err(FieldError::NoAddresses)
        ));
    }

    #[test]
    fn parses_xtables_monitor_packet_fields() {
        let h = parse_xtables_packet_fields("IN=eth0 MACSRC=4a:70:b2:aa:8f:4f MACDST=66:6b:9d:86:56:c7 MACPROTO=0800 SRC=192.168.64.5 DST=192.168.64.4 LEN=60 TOS=0x0 TTL=64 ID=52575 DF SPORT=50676 DPORT=10000 SYN ").unwrap();
        assert_eq!(h.proto, Some(6));
        assert_eq!(h.tcp_flags, Some(SYN));
        assert_eq!(h.id, Some(52575));
        assert_eq!(h.dport, Some(10000));
    }
}

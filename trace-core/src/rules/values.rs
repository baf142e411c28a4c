//! Value syntax shared by the generic options, matches and targets: numbers (decimal or
//! 0x-hex), ranges, ports (numbers or common service names), protocols, addresses with
//! masks — and the per-line context that turns a bad value into a [`ParseError`] at its
//! column while checking that every address has the ruleset's family.

use super::error::{ParseError, ParseErrorKind};
use super::lexer::Word;
use super::matches::Range;
use super::model::{IpNet, Proto};
use crate::netfilter::Family;
use std::net::IpAddr;

/// Per-line parsing context: where we are, and the family fixed so far.
pub(crate) struct Ctx<'a> {
    pub line: u32,
    pub family: &'a mut Option<Family>,
}

impl Ctx<'_> {
    pub fn err(&self, col: u32, kind: ParseErrorKind) -> ParseError {
        ParseError::new(self.line, col, kind)
    }

    pub fn bad(&self, w: &Word, what: &str) -> ParseError {
        self.err(
            w.col,
            ParseErrorKind::BadValue {
                what: what.into(),
                text: w.text.clone(),
            },
        )
    }

    /// Records `fam` as the ruleset family, or fails if another family was fixed before.
    pub fn use_family(&mut self, fam: Family, w: &Word) -> Result<(), ParseError> {
        match *self.family {
            None => {
                *self.family = Some(fam);
                Ok(())
            }
            Some(f) if f == fam => Ok(()),
            Some(f) => Err(self.err(
                w.col,
                ParseErrorKind::FamilyMismatch {
                    text: w.text.clone(),
                    family: family_name(f).into(),
                },
            )),
        }
    }

    /// An address literal of the ruleset family (hostnames are not resolved: error).
    pub fn ip(&mut self, text: &str, w: &Word) -> Result<IpAddr, ParseError> {
        let ip: IpAddr = text.parse().map_err(|_| self.bad_address(text, w))?;
        self.use_family(family_of(ip), w)?;
        Ok(ip)
    }

    fn bad_address(&self, text: &str, w: &Word) -> ParseError {
        let family = self.family.map_or("IPv4 or IPv6", family_name);
        self.err(
            w.col,
            ParseErrorKind::BadAddress {
                text: text.into(),
                family: family.into(),
                hostname: looks_like_hostname(text),
            },
        )
    }

    /// `addr[/prefix|/mask]`.
    pub fn net(&mut self, text: &str, w: &Word) -> Result<IpNet, ParseError> {
        let (a, m) = match text.split_once('/') {
            Some((a, m)) => (a, Some(m)),
            None => (text, None),
        };
        let addr = self.ip(a, w)?;
        let Some(m) = m else {
            return Ok(IpNet::from_prefix(addr, 128));
        };
        let bad_mask = || self.err(w.col, ParseErrorKind::BadMask { text: m.into() });
        let width = if addr.is_ipv4() { 32 } else { 128 };
        if let Ok(p) = m.parse::<u8>() {
            return if p <= width {
                Ok(IpNet::from_prefix(addr, p))
            } else {
                Err(bad_mask())
            };
        }
        match m.parse::<IpAddr>() {
            Ok(mask) if mask.is_ipv4() == addr.is_ipv4() => Ok(IpNet::from_mask(addr, mask)),
            _ => Err(bad_mask()),
        }
    }

    /// A comma-separated list of networks (`-s a,b`).
    pub fn nets(&mut self, w: &Word) -> Result<Vec<IpNet>, ParseError> {
        w.text.split(',').map(|part| self.net(part, w)).collect()
    }
}

pub(crate) fn family_name(f: Family) -> &'static str {
    match f {
        Family::Ipv4 => "IPv4",
        Family::Ipv6 => "IPv6",
    }
}

pub(crate) fn family_of(ip: IpAddr) -> Family {
    if ip.is_ipv4() {
        Family::Ipv4
    } else {
        Family::Ipv6
    }
}

/// Decimal or `0x` hexadecimal.
pub(crate) fn parse_u32(s: &str) -> Option<u32> {
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

/// `value[/mask]` with a missing mask = all ones.
pub(crate) fn parse_value_mask(s: &str) -> Option<(u32, u32)> {
    match s.split_once('/') {
        Some((v, m)) => Some((parse_u32(v)?, parse_u32(m)?)),
        None => Some((parse_u32(s)?, u32::MAX)),
    }
}

/// `a`, `a:b`, `:b`, `a:` (also `a-b` when `dash` is allowed) with values up to `max`,
/// each value read by `one`. Fails on an empty or inverted range.
pub(crate) fn parse_range_with(
    s: &str,
    max: u32,
    dash: bool,
    one: impl Fn(&str) -> Option<u32>,
) -> Option<Range> {
    let split = s
        .split_once(':')
        .or_else(|| if dash { s.split_once('-') } else { None });
    let (lo, hi) = match split {
        Some((a, b)) => {
            let lo = if a.is_empty() { 0 } else { one(a)? };
            let hi = if b.is_empty() { max } else { one(b)? };
            (lo, hi)
        }
        None => {
            let v = one(s)?;
            (v, v)
        }
    };
    (lo <= hi && hi <= max).then_some(Range { lo, hi })
}

/// A numeric range (`--length 0:100`).
pub(crate) fn parse_num_range(s: &str, max: u32) -> Option<Range> {
    parse_range_with(s, max, false, parse_u32)
}

/// A port range (`80`, `1024:65535`, `http`).
pub(crate) fn parse_port_range(s: &str) -> Option<Range> {
    parse_range_with(s, 65535, false, parse_port)
}

/// A port number or a well-known service name (iptables asks /etc/services; iptables-save
/// always prints numbers, hand-written files use the common names below).
pub(crate) fn parse_port(s: &str) -> Option<u32> {
    if let Ok(n) = s.parse::<u32>() {
        return (n <= 65535).then_some(n);
    }
    let n = match s {
        "ftp-data" => 20,
        "ftp" => 21,
        "ssh" => 22,
        "telnet" => 23,
        "smtp" => 25,
        "domain" => 53,
        "bootps" => 67,
        "bootpc" => 68,
        "tftp" => 69,
        "http" | "www" => 80,
        "pop3" => 110,
        "sunrpc" => 111,
        "ntp" => 123,
        "imap" | "imap2" => 143,
        "snmp" => 161,
        "bgp" => 179,
        "ldap" => 389,
        "https" => 443,
        "submission" => 587,
        "syslog" => 514,
        "ldaps" => 636,
        "imaps" => 993,
        "pop3s" => 995,
        "openvpn" => 1194,
        "mysql" => 3306,
        "postgresql" => 5432,
        _ => return None,
    };
    Some(n)
}

/// `-p NAME|NUMBER` (names of /etc/protocols that iptables users write).
pub(crate) fn parse_proto(s: &str) -> Option<Proto> {
    let lower = s.to_ascii_lowercase();
    if let Ok(n) = lower.parse::<u8>() {
        return Some(if n == 0 { Proto::All } else { Proto::Num(n) });
    }
    let n = match lower.as_str() {
        "all" => return Some(Proto::All),
        "icmp" => 1,
        "igmp" => 2,
        "ipip" | "ipencap" => 4,
        "tcp" => 6,
        "egp" => 8,
        "udp" => 17,
        "ipv6" => 41,
        "ipv6-route" => 43,
        "ipv6-frag" => 44,
        "rsvp" => 46,
        "gre" => 47,
        "esp" => 50,
        "ah" => 51,
        "icmpv6" | "ipv6-icmp" | "icmp6" => 58,
        "ipv6-nonxt" => 59,
        "ipv6-opts" => 60,
        "ospf" | "ospfigp" => 89,
        "pim" => 103,
        "vrrp" => 112,
        "l2tp" => 115,
        "sctp" => 132,
        "mh" | "ipv6-mh" => 135,
        "udplite" => 136,
        "dccp" => 33,
        _ => return None,
    };
    Some(Proto::Num(n))
}

/// The name iptables-save prints for a protocol number.
pub(crate) fn proto_name(p: Proto) -> String {
    match p {
        Proto::All => "all".into(),
        Proto::Num(1) => "icmp".into(),
        Proto::Num(2) => "igmp".into(),
        Proto::Num(6) => "tcp".into(),
        Proto::Num(17) => "udp".into(),
        Proto::Num(47) => "gre".into(),
        Proto::Num(50) => "esp".into(),
        Proto::Num(51) => "ah".into(),
        Proto::Num(58) => "ipv6-icmp".into(),
        Proto::Num(132) => "sctp".into(),
        Proto::Num(136) => "udplite".into(),
        Proto::Num(n) => n.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn word(s: &str) -> Word {
        Word {
            text: s.into(),
            col: 5,
            quoted: false,
        }
    }

    #[test]
    fn nets_with_prefixes_masks_and_lists() {
        let mut fam = None;
        let mut cx = Ctx {
            line: 3,
            family: &mut fam,
        };
        let n = cx
            .nets(&word("10.0.0.0/8,192.168.1.1,10.1.0.0/255.255.0.0"))
            .unwrap();
        assert_eq!(n[0].prefix_len(), Some(8));
        assert_eq!(n[1].prefix_len(), Some(32));
        assert_eq!(n[2].prefix_len(), Some(16));
        assert_eq!(fam, Some(Family::Ipv4));
    }

    #[test]
    fn placeholders_and_family_mixes_are_errors_at_the_word() {
        let mut fam = None;
        let mut cx = Ctx {
            line: 3,
            family: &mut fam,
        };
        for bad in [
            "x.x.x.x/32",
            "IP4_2/32",
            "10.0.0.0/33",
            "10.0.0.0/255.0.0.0.0",
            "fe80::/129",
        ] {
            let e = cx.nets(&word(bad)).unwrap_err();
            assert_eq!((e.line, e.column), (3, 5), "{bad}");
        }
        cx.net("10.0.0.1", &word("10.0.0.1")).unwrap();
        let e = cx.net("fe80::1", &word("fe80::1")).unwrap_err();
        assert!(matches!(e.kind, ParseErrorKind::FamilyMismatch { .. }));
    }

    #[test]
    fn ranges_and_ports() {
        assert_eq!(
            parse_port_range("1024:"),
            Some(Range {
                lo: 1024,
                hi: 65535
            })
        );
        assert_eq!(parse_port_range(":1023"), Some(Range { lo: 0, hi: 1023 }));
        assert_eq!(parse_port_range("ssh"), Some(Range::single(22)));
        assert_eq!(parse_port_range("90:80"), None);
        assert_eq!(parse_port_range("65536"), None);
        assert_eq!(parse_u32("0x4000"), Some(0x4000));
        assert_eq!(parse_value_mask("0x21/0xffffffff"), Some((0x21, u32::MAX)));
        assert_eq!(parse_proto("ipv6-icmp"), Some(Proto::Num(58)));
        assert_eq!(parse_proto("ALL"), Some(Proto::All));
        assert_eq!(parse_proto("bogus"), None);
    }
}

/// A DNS host name rather than a mistyped address: letters, digits and hyphens in dotted
/// labels, some letter, and a last label of two or more characters when there are dots
/// (`localhost`, `db.example.com`; not `x.x.x.x` or `IP4_2`, placeholders seen in dumps).
fn looks_like_hostname(text: &str) -> bool {
    let labels: Vec<&str> = text.split('.').collect();
    labels
        .iter()
        .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
        && text.bytes().any(|b| b.is_ascii_alphabetic())
        && (labels.len() == 1 || labels.last().is_some_and(|l| l.len() >= 2))
}

#[cfg(test)]
mod hostname_tests {
    use super::looks_like_hostname;

    #[test]
    fn host_names_and_placeholders() {
        for h in ["localhost", "db.example.com", "node-1.cluster.local"] {
            assert!(looks_like_hostname(h), "{h}");
        }
        for p in ["x.x.x.x", "IP4_2", "10.0.0.300", "1.2.3", "fe80::1", "a..b"] {
            assert!(!looks_like_hostname(p), "{p}");
        }
    }
}

//! The netns's ipsets as `ipset save` prints them, so that `-m set --match-set` is decided
//! from the captured packet instead of branching (the membership test of the kernel's
//! ip_set_test: the set's type, family and dimensions; the rule's src/dst flags).
//!
//! Only what can be tested exactly is modelled: hash:ip, hash:net, hash:ip,port,
//! hash:net,port, hash:ip,port,ip, hash:ip,port,net, hash:net,net, bitmap:ip, bitmap:port and
//! list:set of those, TCP/UDP/SCTP/UDPLITE ports. Anything else (other types, `nomatch`
//! entries, ICMP "ports", a set the snapshot does not have) answers None: the match stays a
//! branch point.

use serde::{Deserialize, Serialize};
use std::net::IpAddr;

/// The sets of one netns at the time they were read.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpSets {
    pub sets: Vec<IpSet>,
}

/// One set: `create NAME TYPE family F ...` and its `add` lines.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpSet {
    pub name: String,
    /// `hash:ip,port`, `bitmap:port`, `list:set`, ...
    pub kind: String,
    /// `inet6` sets hold IPv6 elements; everything else is IPv4 (or family-less).
    pub inet6: bool,
    /// The element strings as printed (`10.0.0.1,tcp:80`, `10.0.0.0/24 nomatch`, ...).
    pub entries: Vec<String>,
}

/// What the rule's flags pick from the packet: (address, port and protocol) per dimension.
#[derive(Debug, Clone, Copy)]
pub struct SetProbe {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// IP protocol and (sport, dport); None when the packet has no ports the set can use.
    pub ports: Option<(u8, u16, u16)>,
}

/// Parses `ipset save` output. Lines other than `create`/`add` are ignored.
pub fn parse_save(text: &str) -> Result<IpSets, String> {
    let mut sets: Vec<IpSet> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let mut w = line.split_whitespace();
        match w.next() {
            Some("create") => {
                let (Some(name), Some(kind)) = (w.next(), w.next()) else {
                    return Err(format!("ipset save line {}: short create", n + 1));
                };
                let rest: Vec<&str> = w.collect();
                let inet6 = rest.windows(2).any(|p| p == ["family", "inet6"]);
                sets.push(IpSet {
                    name: name.to_string(),
                    kind: kind.to_string(),
                    inet6,
                    entries: Vec::new(),
                });
            }
            Some("add") => {
                let Some(name) = w.next() else {
                    return Err(format!("ipset save line {}: short add", n + 1));
                };
                let entry = w.collect::<Vec<_>>().join(" ");
                match sets.iter_mut().rev().find(|s| s.name == name) {
                    Some(s) => s.entries.push(entry),
                    None => {
                        return Err(format!(
                            "ipset save line {}: add to undeclared set {name}",
                            n + 1
                        ))
                    }
                }
            }
            _ => {}
        }
    }
    Ok(IpSets { sets })
}

impl IpSets {
    /// Whether the packet's (flags-selected) element is in set `name`: None when it cannot
    /// be told (see the module comment).
    pub fn test(&self, name: &str, flags: &[bool], p: &SetProbe) -> Option<bool> {
        self.test_depth(name, flags, p, 0)
    }

    fn test_depth(&self, name: &str, flags: &[bool], p: &SetProbe, depth: u8) -> Option<bool> {
        let set = self.sets.iter().find(|s| s.name == name)?;
        if set.kind == "list:set" {
            if depth > 4 {
                return None;
            }
            // The first member that matches decides (members of other families do not).
            let mut unknown = false;
            for e in &set.entries {
                let member = e.split_whitespace().next()?;
                match self.test_depth(member, flags, p, depth + 1) {
                    Some(true) => return Some(true),
                    Some(false) => {}
                    None => unknown = true,
                }
            }
            return if unknown { None } else { Some(false) };
        }
        let dims: Vec<&str> = set.kind.split(':').nth(1)?.split(',').collect();
        if flags.len() < dims.len() {
            // ip_set_test: fewer flags than the type's dimensions never matches.
            return Some(false);
        }
        if set.inet6 != p.src.is_ipv6() {
            return Some(false);
        }
        let bitmap = set.kind.starts_with("bitmap:");
        if !(set.kind.starts_with("hash:") || bitmap) {
            return None;
        }
        let mut hit = false;
        for e in &set.entries {
            let mut words = e.split_whitespace();
            let elem = words.next()?;
            if words.any(|w| w == "nomatch") {
                return None;
            }
            if element_matches(elem, &dims, flags, p, bitmap)? {
                hit = true;
            }
        }
        Some(hit)
    }
}

/// One `add` element against the packet, dimension by dimension.
fn element_matches(
    elem: &str,
    dims: &[&str],
    flags: &[bool],
    p: &SetProbe,
    bitmap: bool,
) -> Option<bool> {
    let parts: Vec<&str> = elem.split(',').collect();
    if parts.len() != dims.len() {
        return None;
    }
    for ((dim, part), &src) in dims.iter().zip(&parts).zip(flags) {
        let ok = match *dim {
            "ip" | "net" => addr_in(part, if src { p.src } else { p.dst })?,
            "port" => {
                let (proto, sport, dport) = p.ports?;
                port_in(part, proto, if src { sport } else { dport }, bitmap)?
            }
            _ => return None,
        };
        if !ok {
            return Some(false);
        }
    }
    Some(true)
}

/// `a.b.c.d`, `a.b.c.d/len`, `a.b.c.d-e.f.g.h` (bitmap:ip / hash:ip ranges as saved).
fn addr_in(s: &str, ip: IpAddr) -> Option<bool> {
    if let Some((a, b)) = s.split_once('-') {
        let (a, b): (IpAddr, IpAddr) = (a.parse().ok()?, b.parse().ok()?);
        return Some(
            super::ip_bits(a) <= super::ip_bits(ip) && super::ip_bits(ip) <= super::ip_bits(b),
        );
    }
    let (addr, len) = match s.split_once('/') {
        Some((a, l)) => (a, Some(l.parse::<u32>().ok()?)),
        None => (s, None),
    };
    let net: IpAddr = addr.parse().ok()?;
    if net.is_ipv4() != ip.is_ipv4() {
        return Some(false);
    }
    let bits: u32 = if net.is_ipv4() { 32 } else { 128 };
    let len = len.unwrap_or(bits);
    if len > bits {
        return None;
    }
    let host = bits - len;
    let full = if bits == 128 {
        u128::MAX
    } else {
        (1u128 << bits) - 1
    };
    let mask = if host == 128 {
        0
    } else {
        full & !((1u128 << host) - 1)
    };
    Some(super::ip_bits(net) & mask == super::ip_bits(ip) & mask)
}

/// `tcp:80`, `udp:53`, `80` (tcp, as ipset defaults; bitmap:port has no protocol), `a-b`.
fn port_in(s: &str, proto: u8, port: u16, bitmap: bool) -> Option<bool> {
    let (want_proto, range) = match s.split_once(':') {
        Some((p, r)) => (Some(proto_number(p)?), r),
        None if bitmap => (None, s),
        None => (Some(6), s),
    };
    if want_proto.is_some_and(|w| w != proto) {
        return Some(false);
    }
    let (lo, hi) = match range.split_once('-') {
        Some((a, b)) => (a.parse::<u16>().ok()?, b.parse::<u16>().ok()?),
        None => {
            let v = range.parse::<u16>().ok()?;
            (v, v)
        }
    };
    Some(lo <= port && port <= hi)
}

fn proto_number(name: &str) -> Option<u8> {
    match name {
        "tcp" => Some(6),
        "udp" => Some(17),
        "sctp" => Some(132),
        "udplite" => Some(136),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAVE: &str =
        "create KUBE-CLUSTER-IP hash:ip,port family inet hashsize 1024 maxelem 65536\n\
add KUBE-CLUSTER-IP 10.96.0.10,udp:53\n\
add KUBE-CLUSTER-IP 10.96.0.10,tcp:53\n\
create KUBE-NODE-PORT-TCP bitmap:port range 0-65535\n\
add KUBE-NODE-PORT-TCP 30080\n\
create pools hash:net family inet hashsize 1024 maxelem 1048576\n\
add pools 192.168.0.0/16\n\
create LOOP hash:ip,port,ip family inet hashsize 1024 maxelem 65536\n\
add LOOP 10.0.0.5,tcp:80,10.0.0.5\n\
create v6 hash:ip family inet6 hashsize 1024 maxelem 65536\n\
add v6 fd00::1\n\
create holes hash:net family inet hashsize 1024 maxelem 65536\n\
add holes 10.0.0.0/8\n\
add holes 10.1.0.0/16 nomatch\n\
create all list:set size 8\n\
add all pools\n\
add all KUBE-CLUSTER-IP\n";

    fn probe(src: &str, dst: &str, ports: Option<(u8, u16, u16)>) -> SetProbe {
        SetProbe {
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            ports,
        }
    }

    #[test]
    fn membership_by_type_dimension_and_flags() {
        let s = parse_save(SAVE).unwrap();
        let dns = probe("10.213.1.2", "10.96.0.10", Some((17, 40000, 53)));
        assert_eq!(s.test("KUBE-CLUSTER-IP", &[false, false], &dns), Some(true));
        // Wrong protocol, wrong direction, too few flags.
        let tcp = probe("10.213.1.2", "10.96.0.10", Some((6, 40000, 54)));
        assert_eq!(
            s.test("KUBE-CLUSTER-IP", &[false, false], &tcp),
            Some(false)
        );
        assert_eq!(s.test("KUBE-CLUSTER-IP", &[true, true], &dns), Some(false));
        assert_eq!(s.test("KUBE-CLUSTER-IP", &[false], &dns), Some(false));
        // No ports (ICMP): undecided rather than guessed.
        let icmp = probe("10.213.1.2", "10.96.0.10", None);
        assert_eq!(s.test("KUBE-CLUSTER-IP", &[false, false], &icmp), None);
        let np = probe("10.213.1.2", "10.213.1.1", Some((6, 40000, 30080)));
        assert_eq!(s.test("KUBE-NODE-PORT-TCP", &[false], &np), Some(true));
        assert_eq!(s.test("KUBE-NODE-PORT-TCP", &[true], &np), Some(false));
        let pod = probe("192.168.3.4", "8.8.8.8", None);
        assert_eq!(s.test("pools", &[true], &pod), Some(true));
        assert_eq!(s.test("pools", &[false], &pod), Some(false));
        let hairpin = probe("10.0.0.5", "10.0.0.5", Some((6, 40000, 80)));
        assert_eq!(s.test("LOOP", &[false, false, true], &hairpin), Some(true));
        // Family mismatch never matches; nomatch entries are not modelled; unknown set.
        assert_eq!(s.test("v6", &[true], &pod), Some(false));
        assert_eq!(
            s.test("holes", &[true], &probe("10.2.0.1", "1.1.1.1", None)),
            None
        );
        assert_eq!(s.test("nosuch", &[true], &pod), None);
        // list:set: any member.
        assert_eq!(s.test("all", &[true], &pod), Some(true));
        assert_eq!(s.test("all", &[false, false], &dns), Some(true));
        assert_eq!(s.test("all", &[false, false], &tcp), Some(false));
    }

    #[test]
    fn bad_save_text_is_an_error() {
        assert!(parse_save("add x 1.2.3.4\n").is_err());
        assert!(parse_save("create\n").is_err());
        assert_eq!(parse_save("").unwrap().sets.len(), 0);
    }
}

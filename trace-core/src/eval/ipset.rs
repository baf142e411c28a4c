//! The netns's ipsets as `ipset save` prints them, so that `-m set --match-set` is decided
//! from the captured packet instead of branching (the membership test of the kernel's
//! ip_set_test: the set's type, family and dimensions; the rule's src/dst flags).
//!
//! Only what can be tested exactly is modelled: hash:ip, hash:net, hash:ip,port,
//! hash:net,port, hash:ip,port,ip, hash:ip,port,net, hash:net,net, bitmap:ip, bitmap:port and
//! list:set of those, TCP/UDP/SCTP/UDPLITE ports. Anything else (other types, `nomatch`
//! entries, ICMP "ports" among the entries, a set the snapshot does not have) answers None:
//! the match stays a branch point.

use crate::rules::IpNet;
use serde::{Deserialize, Serialize};
use std::net::IpAddr;

/// The sets of one netns at the time they were read.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpSets {
    pub sets: Vec<IpSet>,
}

/// One set: `create NAME TYPE family F ...` and its `add` lines.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IpSet {
    pub name: String,
    /// `hash:ip,port`, `bitmap:port`, `list:set`, ...
    pub kind: String,
    /// `inet6` sets hold IPv6 elements; everything else is IPv4 (or family-less).
    pub inet6: bool,
    /// The element strings as printed (`10.0.0.1,tcp:80`, `10.0.0.0/24 nomatch`, ...).
    pub entries: Vec<String>,
    /// The entries parsed for lookups, built on first use (blocklists hold 10^5 entries:
    /// a packet must not re-parse them).
    #[serde(skip)]
    index: std::sync::OnceLock<Option<Index>>,
}

impl PartialEq for IpSet {
    fn eq(&self, o: &IpSet) -> bool {
        (&self.name, &self.kind, self.inet6, &self.entries)
            == (&o.name, &o.kind, o.inet6, &o.entries)
    }
}

impl Eq for IpSet {}

/// One dimension of a parsed element.
#[derive(Debug, Clone, Copy)]
enum Dim {
    /// Address bits under a mask (ip, net), or an inclusive range.
    Net {
        bits: u128,
        mask: u128,
    },
    Range {
        lo: u128,
        hi: u128,
    },
    /// Protocol (None: any, bitmap:port) and an inclusive port range.
    Port {
        proto: Option<u8>,
        lo: u16,
        hi: u16,
    },
}

/// A set's entries ready for lookups: one-dimensional address entries hashed per mask, the
/// rest in a list.
#[derive(Debug, Clone)]
struct Index {
    by_mask: Vec<(u128, std::collections::HashSet<u128>)>,
    others: Vec<Vec<Dim>>,
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
                    index: Default::default(),
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
        let index = set
            .index
            .get_or_init(|| Index::build(set, &dims))
            .as_ref()?;
        Some(index.contains(&dims, flags, p))
    }
}

impl Index {
    /// None when an entry cannot be modelled (`nomatch`, ICMP "ports", another type).
    fn build(set: &IpSet, dims: &[&str]) -> Option<Index> {
        let bitmap = set.kind.starts_with("bitmap:");
        if !(set.kind.starts_with("hash:") || bitmap) {
            return None;
        }
        let mut by_mask: Vec<(u128, std::collections::HashSet<u128>)> = Vec::new();
        let mut others = Vec::new();
        for e in &set.entries {
            let mut words = e.split_whitespace();
            let elem = words.next()?;
            if words.any(|w| w == "nomatch") {
                return None;
            }
            let parts: Vec<&str> = elem.split(',').collect();
            if parts.len() != dims.len() {
                return None;
            }
            let parsed = dims
                .iter()
                .zip(&parts)
                .map(|(d, part)| parse_dim(d, part, set.inet6, bitmap))
                .collect::<Option<Vec<Dim>>>()?;
            match parsed[..] {
                [Dim::Net { bits, mask }] => match by_mask.iter_mut().find(|(m, _)| *m == mask) {
                    Some((_, h)) => {
                        h.insert(bits);
                    }
                    None => by_mask.push((mask, [bits].into_iter().collect())),
                },
                _ => others.push(parsed),
            }
        }
        Some(Index { by_mask, others })
    }

    fn contains(&self, dims: &[&str], flags: &[bool], p: &SetProbe) -> bool {
        let addr = |src: bool| super::ip_bits(if src { p.src } else { p.dst });
        if dims.len() == 1 {
            let a = addr(flags[0]);
            if self.by_mask.iter().any(|(m, h)| h.contains(&(a & m))) {
                return true;
            }
        }
        self.others.iter().any(|elem| {
            elem.iter().zip(flags).all(|(d, &src)| match *d {
                Dim::Net { bits, mask } => addr(src) & mask == bits,
                Dim::Range { lo, hi } => (lo..=hi).contains(&addr(src)),
                Dim::Port { proto, lo, hi } => p.ports.is_some_and(|(pr, sp, dp)| {
                    let port = if src { sp } else { dp };
                    proto.is_none_or(|want| want == pr) && (lo..=hi).contains(&port)
                }),
            })
        })
    }
}

/// One dimension of an element as `ipset save` prints it.
fn parse_dim(dim: &str, s: &str, inet6: bool, bitmap: bool) -> Option<Dim> {
    match dim {
        "ip" | "net" => parse_addr(s, inet6),
        "port" => {
            let (proto, range) = match s.split_once(':') {
                Some((p, r)) => (Some(proto_number(p)?), r),
                None if bitmap => (None, s),
                None => (Some(6), s),
            };
            let (lo, hi) = match range.split_once('-') {
                Some((a, b)) => (a.parse().ok()?, b.parse().ok()?),
                None => {
                    let v = range.parse().ok()?;
                    (v, v)
                }
            };
            Some(Dim::Port { proto, lo, hi })
        }
        _ => None,
    }
}

/// `a.b.c.d`, `a.b.c.d/len`, `a.b.c.d-e.f.g.h` (ranges as bitmap:ip saves them).
fn parse_addr(s: &str, inet6: bool) -> Option<Dim> {
    if let Some((a, b)) = s.split_once('-') {
        let (a, b): (IpAddr, IpAddr) = (a.parse().ok()?, b.parse().ok()?);
        return Some(Dim::Range {
            lo: super::ip_bits(a),
            hi: super::ip_bits(b),
        });
    }
    let (addr, len) = match s.split_once('/') {
        Some((a, l)) => (a, Some(l.parse::<u32>().ok()?)),
        None => (s, None),
    };
    let net: IpAddr = addr.parse().ok()?;
    if net.is_ipv6() != inet6 {
        return None;
    }
    let bits: u32 = if inet6 { 128 } else { 32 };
    let len = len.unwrap_or(bits);
    if len > bits {
        return None;
    }
    let net = IpNet::from_prefix(net, len as u8);
    Some(Dim::Net {
        bits: super::ip_bits(net.addr),
        mask: super::ip_bits(net.mask),
    })
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
        // No ports (ICMP, a later fragment): no tcp/udp entry can match.
        let icmp = probe("10.213.1.2", "10.96.0.10", None);
        assert_eq!(
            s.test("KUBE-CLUSTER-IP", &[false, false], &icmp),
            Some(false)
        );
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
    fn large_net_sets_are_hashed_per_prefix() {
        let mut text =
            String::from("create block hash:net family inet hashsize 65536 maxelem 200000\n");
        for i in 0..100_000u32 {
            let a = std::net::Ipv4Addr::from(0x0b00_0000 + (i << 8));
            text.push_str(&format!("add block {a}/24\n"));
        }
        text.push_str("add block 10.213.1.7\n");
        let s = parse_save(&text).unwrap();
        let start = std::time::Instant::now();
        for _ in 0..1000 {
            assert_eq!(
                s.test("block", &[true], &probe("11.1.2.3", "1.1.1.1", None)),
                Some(true)
            );
            assert_eq!(
                s.test("block", &[true], &probe("10.213.1.7", "1.1.1.1", None)),
                Some(true)
            );
            assert_eq!(
                s.test("block", &[true], &probe("10.213.1.8", "1.1.1.1", None)),
                Some(false)
            );
        }
        // Hashed: 3000 lookups in well under a second even unoptimised (linear: minutes).
        assert!(start.elapsed() < std::time::Duration::from_secs(2));
    }

    #[test]
    fn bad_save_text_is_an_error() {
        assert!(parse_save("add x 1.2.3.4\n").is_err());
        assert!(parse_save("create\n").is_err());
        assert_eq!(parse_save("").unwrap().sets.len(), 0);
    }
}

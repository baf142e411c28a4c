//! Direct evaluation of a parsed filter on a [`FilterInput`], written independently of the
//! compiled form: the tests use it as the reference the DNF program must agree with. Also
//! builds a [`FilterInput`] from owned headers (replaying recorded events through a filter).

use super::ast::{Dir, Expr, Prim};
use super::compile::addr_bytes;
use crate::event::{Headers, L4};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use trace_common::filter::{input_flags, FilterInput, FAMILY_IPV4, FAMILY_IPV6, IFNAME_LEN};

impl Expr {
    /// Does the packet match? Same semantics as the compiled program (docs/filter.md).
    pub fn matches(&self, input: &FilterInput) -> bool {
        match self {
            Expr::True => true,
            Expr::Prim(p) => p.matches(input),
            Expr::Not(e) => !e.matches(input),
            Expr::And(a, b) => a.matches(input) && b.matches(input),
            Expr::Or(a, b) => a.matches(input) || b.matches(input),
        }
    }
}

impl Prim {
    pub fn matches(&self, input: &FilterInput) -> bool {
        match self {
            Prim::Family(f) => input.family == f.nfproto(),
            Prim::Proto(p) => input.proto == *p,
            Prim::Net { dir, net } => match endpoints(input) {
                Some((s, d)) => sides(*dir, net.contains(s), net.contains(d)),
                None => false,
            },
            Prim::Port { dir, lo, hi } => {
                let l4 = input.flags & input_flags::L4_VALID != 0;
                let carries_ports = matches!(input.proto, 6 | 17 | 132);
                let r = |p: u16| (*lo..=*hi).contains(&p);
                l4 && carries_ports && sides(*dir, r(input.sport), r(input.dport))
            }
            Prim::Iface { dir, name, prefix } => {
                let ok = |dev: &[u8; IFNAME_LEN]| {
                    let dev = dev_name(dev);
                    !dev.is_empty()
                        && if *prefix {
                            dev.starts_with(name.as_str())
                        } else {
                            dev == *name
                        }
                };
                sides(*dir, ok(&input.in_dev), ok(&input.out_dev))
            }
            Prim::Mark { value, mask } => input.mark & mask == *value,
            Prim::IcmpType(t) => {
                let l4 = input.flags & input_flags::L4_VALID != 0;
                l4 && matches!(input.proto, 1 | 58) && input.icmp_type == *t
            }
        }
    }
}

fn sides(dir: Dir, src: bool, dst: bool) -> bool {
    match dir {
        Dir::Src => src,
        Dir::Dst => dst,
        Dir::Either => src || dst,
        Dir::Both => src && dst,
    }
}

fn endpoints(input: &FilterInput) -> Option<(IpAddr, IpAddr)> {
    let v4 = |a: &[u8; 16]| IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3]));
    let v6 = |a: &[u8; 16]| IpAddr::V6(Ipv6Addr::from(*a));
    match input.family {
        FAMILY_IPV4 => Some((v4(&input.saddr), v4(&input.daddr))),
        FAMILY_IPV6 => Some((v6(&input.saddr), v6(&input.daddr))),
        _ => None,
    }
}

/// The name up to its NUL (lossy: kernel names are ASCII in practice).
fn dev_name(dev: &[u8; IFNAME_LEN]) -> String {
    let end = dev.iter().position(|b| *b == 0).unwrap_or(IFNAME_LEN);
    String::from_utf8_lossy(&dev[..end]).into_owned()
}

fn dev_bytes(name: Option<&str>) -> [u8; IFNAME_LEN] {
    let mut out = [0u8; IFNAME_LEN];
    for (d, s) in out
        .iter_mut()
        .zip(name.unwrap_or("").bytes().take(IFNAME_LEN - 1))
    {
        *d = s;
    }
    out
}

/// The filter's view of a packet from an owned header snapshot (as the probes fill it).
pub fn input_from_headers(
    h: &Headers,
    mark: u32,
    in_dev: Option<&str>,
    out_dev: Option<&str>,
) -> FilterInput {
    let mut input = FilterInput::ZERO;
    input.family = h.family().nfproto();
    input.proto = h.proto;
    input.mark = mark;
    input.saddr = addr_bytes(h.src);
    input.daddr = addr_bytes(h.dst);
    input.in_dev = dev_bytes(in_dev);
    input.out_dev = dev_bytes(out_dev);
    match h.l4 {
        L4::Tcp { sport, dport, .. } | L4::Udp { sport, dport, .. } | L4::Sctp { sport, dport } => {
            input.flags |= input_flags::L4_VALID;
            input.sport = sport;
            input.dport = dport;
        }
        L4::Icmp { icmp_type, .. } | L4::Icmpv6 { icmp_type, .. } => {
            input.flags |= input_flags::L4_VALID;
            input.icmp_type = icmp_type;
        }
        L4::Other => {}
    }
    input
}

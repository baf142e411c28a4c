//! Kernel evidence against candidate paths: the observed verdict, the translation visible
//! after a nat table, mark / conntrack mark / TOS / TTL after the table.

use super::Endpoint;
use crate::eval::{Candidate, NatRequest, NetContext, TableVerdict};
use crate::event::{ct_status, Headers};
use crate::netfilter::Hook;
use crate::packet::{HookPass, ObservedVerdict, PacketState, TableObservation};
use crate::rules::targets::NatRange;
use std::net::IpAddr;

/// Which side of the tuple the nat table of `hook` rewrites (nf_nat's maniptype).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Manip {
    Src,
    Dst,
}

fn manip(hook: Hook) -> Manip {
    match hook {
        Hook::Prerouting | Hook::Output => Manip::Dst,
        _ => Manip::Src,
    }
}

/// Some(reason) when nf_nat_inet_fn does not run the nat table for this packet: no
/// conntrack (untracked), a packet that is not the first of its connection (ctinfo not NEW
/// or RELATED), or bindings for this manip type already set up (IPS_*_NAT_DONE).
pub(super) fn nat_skipped(hook: Hook, before: &PacketState) -> Option<String> {
    let Some(ct) = before.ct else {
        return Some("no conntrack entry: nat is not consulted".into());
    };
    match ct.ctinfo {
        7 => Some("untracked: nat is not consulted".into()),
        0 | 3 => Some("established connection: conntrack applies the stored NAT binding".into()),
        // nf_nat_ipv4_fn / nf_nat_ipv6_fn: an ICMP error of a tracked connection is handled by
        // translating the packet it quotes (and dropped if that fails), never by the table.
        1 | 4 if is_icmp(&before.headers) => Some(ICMP_ERROR_NAT.into()),
        _ => {
            let done = match manip(hook) {
                Manip::Src => ct_status::SRC_NAT_DONE,
                Manip::Dst => ct_status::DST_NAT_DONE,
            };
            (ct.status & done != 0).then(|| "NAT binding already set up for this connection".into())
        }
    }
}

/// Why an ICMP error skips the nat table.
pub(super) const ICMP_ERROR_NAT: &str = "ICMP error of a tracked connection: nat translates the quoted packet instead of consulting the table";

fn is_icmp(h: &Headers) -> bool {
    matches!(
        (h.src, h.proto),
        (std::net::IpAddr::V4(_), 1) | (std::net::IpAddr::V6(_), 58)
    )
}

fn port_of(h: &Headers, src: bool) -> Option<u16> {
    h.l4.ports().map(|(s, d)| if src { s } else { d })
}

/// (before, after) of the rewritten side of the tuple.
pub(super) fn nat_endpoints(
    hook: Hook,
    before: &Headers,
    after: Option<&Headers>,
) -> (Endpoint, Endpoint) {
    let src = manip(hook) == Manip::Src;
    let ep = |h: &Headers| Endpoint {
        addr: if src { h.src } else { h.dst },
        port: port_of(h, src),
    };
    (ep(before), after.map_or(ep(before), ep))
}

/// Ok when the candidate explains everything observed about the table.
/// `shared`: the observation covers this table and other stages together; then a packet that
/// came out accepted everywhere, but a drop may be another stage's, and changes may be too.
pub(super) fn check(
    obs: &TableObservation,
    hook: Hook,
    c: &Candidate,
    ctx: &NetContext,
    hp: &HookPass,
    shared: bool,
) -> Result<(), String> {
    if shared {
        return match (&obs.after, &c.verdict) {
            (_, TableVerdict::Broken { reason }) => Err(reason.clone()),
            (Some(_), v) => verdict_fits(&ObservedVerdict::Accept, v),
            (None, _) => Ok(()),
        };
    }
    verdict_fits(&obs.verdict, &c.verdict)?;
    let Some(after) = &obs.after else {
        return Ok(());
    };
    if after.mark != c.mark {
        return Err(format!(
            "mark after the table is 0x{:x}, the path leaves 0x{:x}",
            after.mark, c.mark
        ));
    }
    if let (Some(ct), Some(m)) = (after.ct, c.ctmark) {
        if ct.ctinfo != 7 && ct.mark != m {
            return Err(format!(
                "conntrack mark after the table is 0x{:x}, the path leaves 0x{m:x}",
                ct.mark
            ));
        }
    }
    if after.headers.tos != c.tos {
        return Err(format!(
            "TOS after the table is 0x{:02x}, the path leaves 0x{:02x}",
            after.headers.tos, c.tos
        ));
    }
    if after.headers.ttl != c.ttl {
        return Err(format!(
            "TTL after the table is {}, the path leaves {}",
            after.headers.ttl, c.ttl
        ));
    }
    translation_fits(obs, hook, c, ctx, hp, &after.headers)
}

fn verdict_fits(observed: &ObservedVerdict, v: &TableVerdict) -> Result<(), String> {
    let ok = match (observed, v) {
        (_, TableVerdict::Broken { reason }) => return Err(reason.clone()),
        (ObservedVerdict::Unknown, _) | (_, TableVerdict::Unknown { .. }) => true,
        (ObservedVerdict::Accept, TableVerdict::Accept | TableVerdict::Queue { bypass: true }) => {
            true
        }
        (ObservedVerdict::Drop { .. }, TableVerdict::Drop) => true,
        (ObservedVerdict::Stolen, TableVerdict::Queue { .. }) => true,
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "the kernel's verdict was {}, the path ends in {}",
            observed_name(observed),
            v.as_str()
        ))
    }
}

fn observed_name(o: &ObservedVerdict) -> &'static str {
    match o {
        ObservedVerdict::Accept => "ACCEPT",
        ObservedVerdict::Drop { .. } => "DROP",
        ObservedVerdict::Stolen => "STOLEN/QUEUE",
        ObservedVerdict::Unknown => "unknown",
    }
}

/// Addresses/ports across the table: unchanged outside nat; in nat, exactly what the
/// path's NAT rule (or the null binding) produces.
fn translation_fits(
    obs: &TableObservation,
    hook: Hook,
    c: &Candidate,
    ctx: &NetContext,
    hp: &HookPass,
    after: &Headers,
) -> Result<(), String> {
    let before = &obs.before.headers;
    let (from, to) = nat_endpoints(hook, before, Some(after));
    let other_side_same = match manip(hook) {
        Manip::Dst => before.src == after.src && port_of(before, true) == port_of(after, true),
        Manip::Src => before.dst == after.dst && port_of(before, false) == port_of(after, false),
    };
    let changed = from != to;
    if obs.table != crate::netfilter::Table::Nat {
        if changed || !other_side_same {
            return Err("addresses/ports changed in a table that does not translate".into());
        }
        return Ok(());
    }
    if !other_side_same {
        return Err(format!(
            "the {} side changed in a nat table that rewrites only the other side",
            if manip(hook) == Manip::Dst {
                "source"
            } else {
                "destination"
            }
        ));
    }
    match &c.nat {
        None if !changed => Ok(()),
        // Null binding: the kernel may still move the source port to keep tuples unique.
        None if manip(hook) == Manip::Src && from.addr == to.addr => Ok(()),
        None => Err(format!(
            "observed translation {from} → {to}, but the path has no NAT rule"
        )),
        Some((_, req)) => request_fits(req, hook, from, to, ctx, hp),
    }
}

fn in_ranges(ranges: &[NatRange], from: Endpoint, to: Endpoint, src_manip: bool) -> bool {
    if ranges.is_empty() {
        return from == to;
    }
    ranges.iter().any(|r| {
        let addr_ok = match r.addr {
            Some((lo, hi)) => to.addr.is_ipv4() == lo.is_ipv4() && within(to.addr, lo, hi),
            None => to.addr == from.addr,
        };
        let port_ok = match (r.ports, to.port) {
            (Some(p), Some(port)) => p.contains(port as u32),
            // No port range: the port is kept (SNAT may still move it to stay unique).
            (None, _) => to.port == from.port || src_manip,
            (Some(_), None) => true,
        };
        addr_ok && port_ok
    })
}

fn within(ip: IpAddr, lo: IpAddr, hi: IpAddr) -> bool {
    let v = crate::eval::ip_bits(ip);
    crate::eval::ip_bits(lo) <= v && v <= crate::eval::ip_bits(hi)
}

fn port_in(
    r: Option<crate::rules::matches::Range>,
    from: Endpoint,
    to: Endpoint,
    may_move: bool,
) -> bool {
    match (r, to.port) {
        (Some(r), Some(p)) => r.contains(p as u32),
        _ => to.port == from.port || may_move,
    }
}

fn request_fits(
    req: &NatRequest,
    hook: Hook,
    from: Endpoint,
    to: Endpoint,
    ctx: &NetContext,
    hp: &HookPass,
) -> Result<(), String> {
    let m = manip(hook);
    let ok = match req {
        NatRequest::Dnat(t) => m == Manip::Dst && in_ranges(&t.to, from, to, false),
        NatRequest::Snat(t) => m == Manip::Src && in_ranges(&t.to, from, to, true),
        NatRequest::Masquerade(t) => {
            // The source becomes an address of the output device (its primary one).
            let addr_ok = !ctx.known || ctx.is_local(to.addr, hp.out_dev.as_deref());
            m == Manip::Src && addr_ok && port_in(t.to_ports, from, to, true)
        }
        NatRequest::Redirect(t) => {
            // To the input device's primary address (PREROUTING) or loopback (OUTPUT).
            let addr_ok = match hook {
                Hook::Output => to.addr.is_loopback(),
                _ => !ctx.known || ctx.is_local(to.addr, hp.in_dev.as_deref()),
            };
            m == Manip::Dst && addr_ok && port_in(t.to_ports, from, to, false)
        }
        NatRequest::Netmap { to: net } => {
            let mask = crate::eval::ip_bits(net.mask);
            let want =
                (crate::eval::ip_bits(net.addr) & mask) | (crate::eval::ip_bits(from.addr) & !mask);
            crate::eval::ip_bits(to.addr) == want && to.port == from.port
        }
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "observed translation {from} → {to} is not what this NAT rule produces"
        ))
    }
}

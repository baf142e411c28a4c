//! Match modules decided from the captured packet, following each xt_*.c `match` function.
//! Anything the capture cannot know answers [`Tri::Unknown`] with the reason: the evaluator
//! turns it into a branch point instead of guessing.

use super::{NetContext, PathState, Pkt};
use crate::event::{BridgeInfo, Headers, L4};
use crate::netfilter::Family;
use crate::rules::matches::{
    AddrType, AddrTypeMatch, ConntrackMatch, CtDir, CtState, CtStatus, IcmpMatch, IpRangeMatch,
    Match, MatchKind, MultiportMatch, OwnerMatch, PhysdevMatch, PktType, PortDir, PortsMatch,
    Range, TcpMatch,
};
use crate::rules::{Iface, Negatable};
use std::net::IpAddr;

/// Three-valued match result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Tri {
    True,
    False,
    Unknown(&'static str),
}

impl From<bool> for Tri {
    fn from(b: bool) -> Tri {
        if b {
            Tri::True
        } else {
            Tri::False
        }
    }
}

/// ctinfo value the capture uses for IP_CT_UNTRACKED.
const CTINFO_UNTRACKED: u8 = 7;

/// True for a non-first IPv4 fragment (fragoff != 0): `-f` matches, port matches do not.
pub(crate) fn is_later_fragment(h: &Headers) -> bool {
    h.src.is_ipv4() && h.frag & 0x1fff != 0
}

fn neg<T>(n: &Option<Negatable<T>>, test: impl FnOnce(&T) -> bool) -> bool {
    n.as_ref().is_none_or(|n| n.apply(test(&n.value)))
}

pub(crate) fn decide(m: &Match, p: &Pkt<'_>, st: &PathState, ctx: &NetContext) -> Tri {
    match &m.kind {
        MatchKind::Comment(_) => Tri::True,
        MatchKind::Tcp(t) => tcp(t, p).into(),
        MatchKind::Udp(u) => ports(u, p, |l| matches!(l, L4::Udp { .. })).into(),
        MatchKind::Sctp(s) => ports(s, p, |l| matches!(l, L4::Sctp { .. })).into(),
        MatchKind::Icmp(i) => icmp(i, p, false).into(),
        MatchKind::Icmp6(i) => icmp(i, p, true).into(),
        MatchKind::Multiport(mp) => multiport(mp, p).into(),
        MatchKind::Conntrack(c) => conntrack(c, p, st),
        MatchKind::State(s) => s
            .apply(state_bits(p, st, false).iter().any(|b| s.value.contains(b)))
            .into(),
        MatchKind::AddrType(a) => addrtype(a, p, ctx),
        MatchKind::Mark(mm) => mm.apply(mm.value.matches(st.mark)).into(),
        MatchKind::Connmark(mm) => match st.ctmark {
            Some(ctmark) => mm.apply(mm.value.matches(ctmark)).into(),
            None => Tri::False,
        },
        MatchKind::IpRange(r) => iprange(r, p).into(),
        MatchKind::Mac(mac) => match p.mac {
            Some(hdr) if hdr.len() >= 12 => mac.apply(hdr[6..12] == mac.value).into(),
            Some(_) => Tri::False,
            None if p.has_in => Tri::Unknown("link-layer header not captured"),
            None => Tri::False,
        },
        MatchKind::PktType(t) => match pkt_type(p) {
            Some(actual) => t.apply(actual == t.value).into(),
            None => Tri::Unknown("packet type not captured"),
        },
        MatchKind::Length(l) => l.apply(l.value.contains(p.h.len as u32)).into(),
        MatchKind::Ttl(c) if p.family == Family::Ipv4 => c.apply(c.value.matches(st.ttl)).into(),
        MatchKind::HopLimit(c) if p.family == Family::Ipv6 => {
            c.apply(c.value.matches(st.ttl)).into()
        }
        MatchKind::Ttl(_) | MatchKind::HopLimit(_) => Tri::False,
        MatchKind::TcpMss(r) => tcpmss(r, p, st.mss),
        MatchKind::Dscp(d) => d.apply(st.tos >> 2 == d.value).into(),
        MatchKind::Tos(t) => t.apply(t.value.matches(st.tos as u32)).into(),
        MatchKind::Owner(o) => owner(o, p),
        MatchKind::Helper(_) => Tri::Unknown("conntrack helper not captured"),
        MatchKind::Physdev(m) => physdev(m, p, ctx),
        MatchKind::Statistic(_) => Tri::Unknown("random/nth: depends on other packets"),
        MatchKind::Limit(_) => Tri::Unknown("rate limit state"),
        MatchKind::Recent(r) => recent(r, st),
        MatchKind::Set(s) => set(s, &m.args, p, ctx),
        MatchKind::Socket(so) if so.transparent => Tri::Unknown(SOCKET_TRANSPARENT),
        MatchKind::Socket(_) => Tri::Unknown("socket lookup"),
        MatchKind::Unknown if over_limit(m) => Tri::Unknown(OVER_LIMIT),
        MatchKind::Unknown => Tri::Unknown(unknown_reason(&m.module)),
    }
}

/// xt_recent recent_mt: `--set` adds (or refreshes) the source's entry and matches whatever
/// the list held (`ret = !info->invert` on both the new-entry and the existing-entry path);
/// `--rcheck`/`--update`/`--remove` depend on the list's contents (other packets, timeouts,
/// /proc writes): a branch point.
///
/// Earlier rules of the same path can decide them (see [`super::recent`]).
fn recent(r: &crate::rules::matches::RecentMatch, st: &PathState) -> Tri {
    match st.recent.known(r) {
        Some(hit) => (hit != r.negated).into(),
        None => Tri::Unknown(RECENT_LIST),
    }
}

/// xt_set set_match_v4: the set's membership test on the element the flags pick, XOR `!`;
/// only a true result goes on to the counter conditions (`--packets-gt`, `--bytes-lt`, ...),
/// which depend on earlier packets. A set the netns snapshot lacks is unknown.
fn set(s: &crate::rules::matches::SetMatch, args: &[String], p: &Pkt<'_>, ctx: &NetContext) -> Tri {
    let Some(sets) = &ctx.ipsets else {
        return Tri::Unknown("ipset contents not read");
    };
    match set_snapshot(s, p, sets) {
        None => Tri::Unknown("ipset type or element not modelled"),
        Some(false) => Tri::False,
        Some(true)
            if args
                .iter()
                .any(|a| a.starts_with("--packets-") || a.starts_with("--bytes-")) =>
        {
            Tri::Unknown("ipset counters")
        }
        Some(true) => Tri::True,
    }
}

/// Membership XOR `!` as the read sets say (None: not modelled).
pub(crate) fn set_snapshot(
    s: &crate::rules::matches::SetMatch,
    p: &Pkt<'_>,
    sets: &super::ipset::IpSets,
) -> Option<bool> {
    let ports = if is_later_fragment(p.h) {
        None
    } else {
        p.h.l4.ports().map(|(sp, dp)| (p.h.proto, sp, dp))
    };
    let probe = super::ipset::SetProbe {
        src: p.h.src,
        dst: p.h.dst,
        ports,
    };
    sets.test(&s.name, &s.src_flags, &probe)
        .map(|hit| hit != s.negated)
}

/// Why a match of a set a `SET` target changes is undecidable; with what the read snapshot
/// says (the likelier outcome, shown first).
pub(crate) const SET_CHANGED: &str = "ipset a SET target of the ruleset changes";
pub(crate) const SET_CHANGED_YES: &str =
    "ipset a SET target of the ruleset changes; its snapshot matched";
pub(crate) const SET_CHANGED_NO: &str =
    "ipset a SET target of the ruleset changes; its snapshot did not match";
/// `-m socket --transparent` finds only sockets with IP_TRANSPARENT (transparent proxies).
pub(crate) const SOCKET_TRANSPARENT: &str = "transparent socket lookup (proxies only)";

/// Why a `recent` check is undecidable.
pub(crate) const RECENT_LIST: &str = "recent list contents";
/// Why a `recent` check is undecidable, for a list no rule of the ruleset adds to: only a
/// write to /proc/net/xt_recent can fill it, so it is normally empty.
pub(crate) const RECENT_LIST_UNSET: &str = "recent list no rule adds to (normally empty)";

/// `-m hashlimit --hashlimit-above` / `-m connlimit --connlimit-above` (without `!`): they
/// match only when a source exceeds its rate or connection count, which ordinary traffic
/// does not (kernel state: a branch point, the unmatched path shown first).
pub(crate) const OVER_LIMIT: &str = "over a rate or connection limit (kernel state)";

fn over_limit(m: &Match) -> bool {
    let above = match m.module.as_str() {
        "hashlimit" => "--hashlimit-above",
        "connlimit" => "--connlimit-above",
        _ => return false,
    };
    m.args.iter().any(|a| a == above) && !m.args.iter().any(|a| a == "!")
}

fn unknown_reason(module: &str) -> &'static str {
    match crate::rules::matches::module_decidability(module) {
        crate::rules::Decidability::Always => "always true",
        crate::rules::Decidability::Payload => "payload not captured",
        crate::rules::Decidability::ExternalState => "kernel state not captured",
        crate::rules::Decidability::Nondeterministic => "random or time dependent",
        crate::rules::Decidability::HostState => "host state not captured",
        crate::rules::Decidability::Unknown => "module not modelled",
        _ => "options not modelled",
    }
}

/// xt_tcpudp tcp_mt: no match on later fragments; ports, flags, option.
fn tcp(t: &TcpMatch, p: &Pkt<'_>) -> bool {
    let L4::Tcp {
        sport,
        dport,
        flags,
        options,
        ..
    } = &p.h.l4
    else {
        return false;
    };
    if is_later_fragment(p.h) {
        return false;
    }
    neg(&t.sport, |r| r.contains(*sport as u32))
        && neg(&t.dport, |r| r.contains(*dport as u32))
        && neg(&t.flags, |f| f.matches(*flags))
        && neg(&t.option, |o| tcp_option(options, *o).is_some())
}

/// Walks TCP options (kind, len, data); returns the data of option `kind`.
fn tcp_option(opts: &[u8], kind: u8) -> Option<&[u8]> {
    let mut i = 0;
    while i < opts.len() {
        match opts[i] {
            0 => return None,
            1 => i += 1,
            k => {
                let len = *opts.get(i + 1)? as usize;
                if len < 2 || i + len > opts.len() {
                    return None;
                }
                if k == kind {
                    return Some(&opts[i + 2..i + len]);
                }
                i += len;
            }
        }
    }
    None
}

fn ports(u: &PortsMatch, p: &Pkt<'_>, proto_ok: impl Fn(&L4) -> bool) -> bool {
    if !proto_ok(&p.h.l4) || is_later_fragment(p.h) {
        return false;
    }
    let Some((s, d)) = p.h.l4.ports() else {
        return false;
    };
    neg(&u.sport, |r| r.contains(s as u32)) && neg(&u.dport, |r| r.contains(d as u32))
}

fn icmp(i: &IcmpMatch, p: &Pkt<'_>, v6: bool) -> bool {
    let (ty, code) = match (&p.h.l4, v6) {
        (
            L4::Icmp {
                icmp_type, code, ..
            },
            false,
        )
        | (
            L4::Icmpv6 {
                icmp_type, code, ..
            },
            true,
        ) => (*icmp_type, *code),
        _ => return false,
    };
    !is_later_fragment(p.h) && neg(&i.icmp_type, |t| t.matches(ty, code))
}

fn multiport(m: &MultiportMatch, p: &Pkt<'_>) -> bool {
    if is_later_fragment(p.h) {
        return false;
    }
    let Some((s, d)) = p.h.l4.ports() else {
        return false;
    };
    let hit = |port: u16| {
        m.ports
            .value
            .iter()
            .any(|r: &Range| r.contains(port as u32))
    };
    let any = match m.dir {
        PortDir::Src => hit(s),
        PortDir::Dst => hit(d),
        PortDir::Either => hit(s) || hit(d),
    };
    m.ports.apply(any)
}

/// The state bits xt_conntrack/xt_state compute: from ctinfo when there is a conntrack,
/// UNTRACKED for IP_CT_UNTRACKED, INVALID without one; SNAT/DNAT from ct->status.
fn state_bits(p: &Pkt<'_>, st: &PathState, with_nat: bool) -> Vec<CtState> {
    let ct = p.ct.filter(|c| c.ctinfo != CTINFO_UNTRACKED && !st.notrack);
    let Some(ct) = ct else {
        let untracked = st.notrack || p.ct.is_some_and(|c| c.ctinfo == CTINFO_UNTRACKED);
        return vec![if untracked {
            CtState::Untracked
        } else {
            CtState::Invalid
        }];
    };
    let mut v = vec![match ct.ctinfo % 3 {
        0 => CtState::Established,
        1 => CtState::Related,
        _ => CtState::New,
    }];
    if with_nat {
        use crate::event::ct_status::{DST_NAT, SRC_NAT};
        if ct.status & SRC_NAT != 0 {
            v.push(CtState::Snat);
        }
        if ct.status & DST_NAT != 0 {
            v.push(CtState::Dnat);
        }
    }
    v
}

/// xt_conntrack conntrack_mt (revision 1+).
fn conntrack(c: &ConntrackMatch, p: &Pkt<'_>, st: &PathState) -> Tri {
    if let Some(s) = &c.state {
        if !s.apply(state_bits(p, st, true).iter().any(|b| s.value.contains(b))) {
            return Tri::False;
        }
    }
    let Some(ct) = p.ct.filter(|c| c.ctinfo != CTINFO_UNTRACKED && !st.notrack) else {
        // The kernel: without a conntrack only a --ctstate test can have matched.
        return c.state.is_some().into();
    };
    if let Some(dir) = c.dir {
        let reply = ct.ctinfo >= 3;
        if reply != (dir == CtDir::Reply) {
            return Tri::False;
        }
    }
    if !neg(&c.proto, |n| *n == 0 || *n == p.h.proto) {
        return Tri::False;
    }
    if let Some(s) = &c.status {
        use crate::event::ct_status::*;
        let mask = s.value.iter().fold(0u32, |m, x| {
            m | match x {
                CtStatus::None => 0,
                CtStatus::Expected => EXPECTED,
                CtStatus::SeenReply => SEEN_REPLY,
                CtStatus::Assured => ASSURED,
                CtStatus::Confirmed => CONFIRMED,
            }
        });
        if !s.apply(mask & ct.status != 0) {
            return Tri::False;
        }
    }
    let orig_opts = c.orig_src.is_some()
        || c.orig_dst.is_some()
        || c.orig_src_port.is_some()
        || c.orig_dst_port.is_some();
    let repl_opts = c.repl_src.is_some()
        || c.repl_dst.is_some()
        || c.repl_src_port.is_some()
        || c.repl_dst_port.is_some();
    let mut unknown = None;
    for (wanted, tuple, which) in [
        (orig_opts, p.tuples.orig, "original"),
        (repl_opts, p.tuples.reply, "reply"),
    ] {
        if !wanted {
            continue;
        }
        let (addr_s, addr_d, port_s, port_d) = if which == "original" {
            (&c.orig_src, &c.orig_dst, &c.orig_src_port, &c.orig_dst_port)
        } else {
            (&c.repl_src, &c.repl_dst, &c.repl_src_port, &c.repl_dst_port)
        };
        match tuple.map(|t| tuple_matches(&t, addr_s, addr_d, port_s, port_d)) {
            Some(Tri::False) => return Tri::False,
            Some(Tri::True) => {}
            _ => unknown = Some(Tri::Unknown("conntrack tuple not known for this packet")),
        }
    }
    if c.expire.is_some() {
        return Tri::Unknown("conntrack timeout not captured");
    }
    unknown.unwrap_or(Tri::True)
}

/// xt_conntrack's address/port tests on one tuple (each with its own `!`).
fn tuple_matches(
    t: &super::Tuple,
    src: &Option<Negatable<crate::rules::IpNet>>,
    dst: &Option<Negatable<crate::rules::IpNet>>,
    sport: &Option<Negatable<Range>>,
    dport: &Option<Negatable<Range>>,
) -> Tri {
    let addr =
        |want: &Option<Negatable<crate::rules::IpNet>>, have: Option<IpAddr>| match (want, have) {
            (None, _) => Some(true),
            (Some(n), Some(a)) => Some(n.apply(n.value.contains(a))),
            (Some(_), None) => None,
        };
    let port = |want: &Option<Negatable<Range>>, have: Option<u16>| match (want, have) {
        (None, _) => Some(true),
        (Some(r), Some(p)) => Some(r.apply(r.value.contains(p as u32))),
        (Some(_), None) => None,
    };
    let results = [
        addr(src, t.src),
        addr(dst, t.dst),
        port(sport, t.sport),
        port(dport, t.dport),
    ];
    if results.contains(&Some(false)) {
        Tri::False
    } else if results.contains(&None) {
        Tri::Unknown("conntrack tuple not known for this packet")
    } else {
        Tri::True
    }
}

/// The address types `ip` may have in the netns (xt_addrtype via the local routing table).
/// More than one entry means the context cannot tell.
/// The address types `ip` may have in the netns (xt_addrtype via the local routing table).
/// More than one entry means the evidence cannot tell. `routed_local`: what the kernel's own
/// routing decision for this packet says about `ip` (delivered locally or not), used when
/// the netns's addresses are unknown. `unicast_only`: the packet cannot have a broadcast
/// destination (TCP, or received with a unicast link-layer destination).
fn addr_types(
    ip: IpAddr,
    dev: Option<&str>,
    ctx: &NetContext,
    routed_local: Option<bool>,
    unicast_only: bool,
) -> Vec<AddrType> {
    match ip {
        IpAddr::V4(a) => {
            if a.octets()[0] == 0 || a.is_broadcast() {
                return vec![AddrType::Broadcast];
            }
            if a.is_multicast() {
                return vec![AddrType::Multicast];
            }
        }
        IpAddr::V6(a) => {
            if a.is_multicast() {
                return vec![AddrType::Multicast];
            }
        }
    }
    if !ctx.known {
        return match (routed_local, dev) {
            // Routed elsewhere: not in the local table, so UNICAST.
            (Some(false), None) => vec![AddrType::Unicast],
            // Delivered locally: a local address, or (not for unicast-only packets) a subnet
            // broadcast.
            (Some(true), None) if unicast_only => vec![AddrType::Local],
            (Some(true), None) => vec![AddrType::Local, AddrType::Broadcast],
            _ => vec![AddrType::Local, AddrType::Unicast, AddrType::Broadcast],
        };
    }
    if ctx.is_local(ip, dev) {
        vec![AddrType::Local]
    } else if ctx.is_broadcast(ip, dev) {
        vec![AddrType::Broadcast]
    } else if ip.is_ipv6() {
        // IPv6 asks the main routing table: unreachable without a route.
        vec![AddrType::Unicast, AddrType::Unreachable]
    } else {
        vec![AddrType::Unicast]
    }
}

fn addrtype_one(want: &Negatable<Vec<AddrType>>, types: Vec<AddrType>, ctx_known: bool) -> Tri {
    let answers: Vec<bool> = types
        .iter()
        .map(|t| want.apply(want.value.contains(t)))
        .collect();
    if answers.iter().all(|&a| a == answers[0]) {
        answers[0].into()
    } else if ctx_known {
        Tri::Unknown("address type not decidable from the netns addresses")
    } else {
        Tri::Unknown("local addresses of the netns unknown")
    }
}

fn addrtype(a: &AddrTypeMatch, p: &Pkt<'_>, ctx: &NetContext) -> Tri {
    let dev = if a.limit_iface_in {
        Some(p.in_dev)
    } else if a.limit_iface_out {
        Some(p.out_dev)
    } else {
        None
    };
    // Broadcasts go to the link-layer broadcast address; TCP is never broadcast.
    let unicast_l2 = p
        .mac
        .filter(|m| m.len() >= 6)
        .is_some_and(|m| m[0] & 1 == 0);
    let unicast_only = p.h.proto == 6 || unicast_l2;
    let mut result = Tri::True;
    for (want, ip, routed) in [
        (&a.src_type, p.h.src, None),
        (&a.dst_type, p.h.dst, p.dst_local),
    ] {
        if let Some(want) = want {
            match addrtype_one(
                want,
                addr_types(ip, dev, ctx, routed, unicast_only),
                ctx.known,
            ) {
                Tri::False => return Tri::False,
                Tri::Unknown(r) => result = Tri::Unknown(r),
                Tri::True => {}
            }
        }
    }
    result
}

fn iprange(r: &IpRangeMatch, p: &Pkt<'_>) -> bool {
    let within = |ip: IpAddr, (lo, hi): &(IpAddr, IpAddr)| {
        ip.is_ipv4() == lo.is_ipv4()
            && super::ip_bits(*lo) <= super::ip_bits(ip)
            && super::ip_bits(ip) <= super::ip_bits(*hi)
    };
    neg(&r.src, |rg| within(p.h.src, rg)) && neg(&r.dst, |rg| within(p.h.dst, rg))
}

/// skb->pkt_type from what was captured: locally generated packets are PACKET_HOST; received
/// ones are classified by their destination MAC.
fn pkt_type(p: &Pkt<'_>) -> Option<PktType> {
    if !p.has_in {
        // Local unicast output is PACKET_HOST; what local multicast/broadcast output carries
        // depends on the output path, so leave those undecided.
        let special = match p.h.dst {
            IpAddr::V4(a) => a.is_multicast() || a.is_broadcast(),
            IpAddr::V6(a) => a.is_multicast(),
        };
        return (!special).then_some(PktType::Unicast);
    }
    let mac = p.mac.filter(|m| m.len() >= 6)?;
    Some(if mac[..6].iter().all(|&b| b == 0xff) {
        PktType::Broadcast
    } else if mac[0] & 1 != 0 {
        PktType::Multicast
    } else {
        PktType::Unicast
    })
}

/// xt_physdev (physdev_mt) on the bridge ports captured with the devices. Without them
/// (other capture backends, replays of older recordings): a packet whose input device is not
/// a bridge has no bridge info, so every option given without `!` fails and the rest match;
/// one that came in on a bridge is a branch point.
fn physdev(m: &PhysdevMatch, p: &Pkt<'_>, ctx: &NetContext) -> Tri {
    if let Some(b) = p.bridge {
        return physdev_ports(m, b);
    }
    let bridged_in = if p.has_in {
        ctx.is_bridge(p.in_dev)
    } else {
        Some(false)
    };
    match bridged_in {
        Some(false) => physdev_ports(m, &BridgeInfo::NONE),
        Some(true) => Tri::Unknown("bridge port not captured"),
        None => Tri::Unknown("bridge devices of the netns unknown"),
    }
}

/// physdev_mt on known bridge info `b`: the input port is the device looked up by its index
/// (none when it is gone), the output port nf_bridge_info.physoutdev (set from the bridge's
/// FORWARD on). `--physdev-is-bridged` tests the output port; `--physdev-in` passes when
/// there is no input port; `--physdev-out` fails when there is no output port, negated or not.
fn physdev_ports(m: &PhysdevMatch, b: &BridgeInfo) -> Tri {
    let plain = |negated: Option<bool>| negated == Some(false);
    if !b.bridged {
        let negated = |n: &Option<Negatable<Iface>>| n.as_ref().map(|n| n.negated);
        let negated0 = |n: &Option<Negatable<()>>| n.as_ref().map(|n| n.negated);
        let fails = plain(negated(&m.physdev_in))
            || plain(negated(&m.physdev_out))
            || plain(negated0(&m.is_in))
            || plain(negated0(&m.is_out))
            || plain(negated0(&m.is_bridged));
        return (!fails).into();
    }
    let indev = b.physin.as_deref();
    let has_out = b.physout_ifindex != 0 || b.physout.is_some();
    // A flag option fails when presence equals its negation (`!!dev ^ !invert`).
    let flag_fails =
        |o: &Option<Negatable<()>>, present: bool| o.as_ref().is_some_and(|o| present == o.negated);
    if flag_fails(&m.is_bridged, has_out)
        || flag_fails(&m.is_in, indev.is_some())
        || flag_fails(&m.is_out, has_out)
    {
        return Tri::False;
    }
    if let (Some(want), Some(dev)) = (&m.physdev_in, indev) {
        if !want.apply(want.value.matches(dev)) {
            return Tri::False;
        }
    }
    let Some(want) = &m.physdev_out else {
        return Tri::True;
    };
    if !has_out {
        return Tri::False;
    }
    match b.physout.as_deref() {
        Some(dev) => want.apply(want.value.matches(dev)).into(),
        None => Tri::Unknown("bridge output port's name not captured"),
    }
}

/// xt_tcpmss: the MSS option's value in range; no MSS option: false unless negated. `set`:
/// the value a TCPMSS target earlier on the path wrote.
fn tcpmss(r: &Negatable<Range>, p: &Pkt<'_>, set: Option<u16>) -> Tri {
    let L4::Tcp { options, .. } = &p.h.l4 else {
        return Tri::False;
    };
    let mss = set.or_else(|| match tcp_option(options, 2) {
        Some(d) if d.len() == 2 => Some(u16::from_be_bytes([d[0], d[1]])),
        _ => None,
    });
    match mss {
        Some(v) => r.apply(r.value.contains(v as u32)).into(),
        None => r.negated.into(),
    }
}

/// The MSS option value after xt_TCPMSS with `--set-mss new` (tcpmss_mangle_packet): an MSS
/// option is lowered to `new`, never raised; without one, an option is added (min(new, 536)
/// for IPv4, 1220 for IPv6) when the segment carries no data and the header has room.
/// None: the packet is left as it was.
pub(crate) fn tcpmss_target(h: &Headers, current: Option<u16>, new: u16) -> Option<u16> {
    let L4::Tcp { options, .. } = &h.l4 else {
        return None;
    };
    if is_later_fragment(h) {
        return None;
    }
    let old = current.or_else(|| match tcp_option(options, 2) {
        Some(d) if d.len() == 2 => Some(u16::from_be_bytes([d[0], d[1]])),
        _ => None,
    });
    match old {
        Some(old) if old <= new => None,
        Some(_) => Some(new),
        None => {
            let ip_hdr = if h.src.is_ipv4() { 20 } else { 40 };
            let tcp_hdr = 20 + options.len();
            let data = (h.len as usize).saturating_sub(ip_hdr + tcp_hdr);
            if data > 0 || tcp_hdr >= 60 {
                return None;
            }
            Some(new.min(if h.src.is_ipv4() { 536 } else { 1220 }))
        }
    }
}

/// xt_owner: without a socket the match is false unless negated; with one, uid/gid ranges.
fn owner(o: &OwnerMatch, p: &Pkt<'_>) -> Tri {
    let (Some(uid), Some(gid)) = (p.uid, p.gid) else {
        return Tri::Unknown("socket owner not captured");
    };
    (neg(&o.socket_exists, |_| true)
        && neg(&o.uid, |r| r.contains(uid))
        && neg(&o.gid, |r| r.contains(gid)))
    .into()
}

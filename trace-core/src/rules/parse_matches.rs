//! Typed parsing of `-m MODULE` options into [`MatchKind`]. Each module parser returns
//! `Ok(None)` on an option it does not know: the caller then keeps the match verbatim as
//! [`MatchKind::Unknown`]. A known option with a bad value is an error at the value's column.

use super::error::{ParseError, ParseErrorKind};
use super::lexer::Word;
use super::matches::*;
use super::model::{Iface, Negatable};
use super::values::{parse_num_range, parse_port_range, parse_u32, parse_value_mask, Ctx};
use crate::netfilter::Family;

type Res<T> = Result<T, ParseError>;

/// A cursor over a module's option words that understands both negation forms:
/// `! --opt value` and the old `--opt ! value`.
pub(crate) struct Opts<'w> {
    words: &'w [Word],
    i: usize,
}

impl<'w> Opts<'w> {
    pub fn new(words: &'w [Word]) -> Self {
        Opts { words, i: 0 }
    }

    /// The next option word and whether a `!` preceded it.
    pub fn next(&mut self, cx: &Ctx) -> Res<Option<(bool, &'w Word)>> {
        let Some(w) = self.words.get(self.i) else {
            return Ok(None);
        };
        self.i += 1;
        if !w.is("!") {
            return Ok(Some((false, w)));
        }
        match self.words.get(self.i) {
            Some(opt) if !opt.quoted && opt.text.starts_with('-') => {
                self.i += 1;
                Ok(Some((true, opt)))
            }
            _ => Err(cx.err(w.col, ParseErrorKind::DanglingNegation)),
        }
    }

    /// The value of `opt`, with an old-style `!` before it reported as `true`.
    pub fn value(&mut self, cx: &Ctx, opt: &Word) -> Res<(bool, &'w Word)> {
        let missing = || {
            cx.err(
                opt.col,
                ParseErrorKind::MissingValue {
                    option: opt.text.clone(),
                },
            )
        };
        let w = self.words.get(self.i).ok_or_else(missing)?;
        self.i += 1;
        if !w.is("!") {
            return Ok((false, w));
        }
        let v = self.words.get(self.i).ok_or_else(missing)?;
        self.i += 1;
        Ok((true, v))
    }

    /// A value parsed by `f`, negated by either `!` form.
    pub fn neg<T>(
        &mut self,
        cx: &Ctx,
        opt: &Word,
        neg: bool,
        what: &str,
        f: impl Fn(&str) -> Option<T>,
    ) -> Res<Negatable<T>> {
        let (old_neg, w) = self.value(cx, opt)?;
        let v = f(&w.text).ok_or_else(|| cx.bad(w, what))?;
        Ok(Negatable::new(v, neg || old_neg))
    }

    /// A value that takes no `!` (the caller rejects a negated option).
    pub fn plain<T>(
        &mut self,
        cx: &Ctx,
        opt: &Word,
        what: &str,
        f: impl Fn(&str) -> Option<T>,
    ) -> Res<T> {
        Ok(self.neg(cx, opt, false, what, f)?.value)
    }
}

/// Stores `v` in an option slot, rejecting a repeated option as iptables does.
fn put<T>(slot: &mut Option<T>, v: T, cx: &Ctx, opt: &Word) -> Res<()> {
    if slot.is_some() {
        return Err(cx.err(
            opt.col,
            ParseErrorKind::DuplicateOption {
                option: opt.text.clone(),
            },
        ));
    }
    *slot = Some(v);
    Ok(())
}

/// Parses the options of `module`; `Ok(MatchKind::Unknown)` for untyped modules or options.
pub(crate) fn parse_match(module: &str, args: &[Word], cx: &mut Ctx) -> Res<MatchKind> {
    let mut o = Opts::new(args);
    let kind = match module {
        "tcp" => tcp(cx, &mut o)?,
        "udp" | "udplite" => ports(cx, &mut o)?.map(MatchKind::Udp),
        "sctp" => ports(cx, &mut o)?.map(MatchKind::Sctp),
        "icmp" => icmp(cx, &mut o, Family::Ipv4)?.map(MatchKind::Icmp),
        "icmp6" | "icmpv6" => icmp(cx, &mut o, Family::Ipv6)?.map(MatchKind::Icmp6),
        "multiport" => multiport(cx, &mut o)?,
        "conntrack" => conntrack(cx, &mut o)?,
        "state" => state(cx, &mut o)?,
        "addrtype" => addrtype(cx, &mut o)?,
        "mark" => single(cx, &mut o, "--mark", "mark", parse_mark)?.map(MatchKind::Mark),
        "connmark" => single(cx, &mut o, "--mark", "mark", parse_mark)?.map(MatchKind::Connmark),
        "comment" => comment(cx, &mut o)?,
        "iprange" => iprange(cx, &mut o)?,
        "mac" => single(cx, &mut o, "--mac-source", "MAC address", parse_mac)?.map(MatchKind::Mac),
        "physdev" => physdev(cx, &mut o)?,
        "pkttype" => {
            single(cx, &mut o, "--pkt-type", "packet type", parse_pkttype)?.map(MatchKind::PktType)
        }
        "length" => single(cx, &mut o, "--length", "length", |s| {
            parse_num_range(s, 65535)
        })?
        .map(MatchKind::Length),
        "ttl" => ttl(cx, &mut o, "--ttl")?.map(MatchKind::Ttl),
        "hl" => ttl(cx, &mut o, "--hl")?.map(MatchKind::HopLimit),
        "tcpmss" => single(cx, &mut o, "--mss", "MSS", |s| parse_num_range(s, 65535))?
            .map(MatchKind::TcpMss),
        "dscp" => dscp(cx, &mut o)?,
        "tos" => single(cx, &mut o, "--tos", "TOS", parse_tos)?.map(MatchKind::Tos),
        "helper" => single(cx, &mut o, "--helper", "helper", |s| Some(s.to_string()))?
            .map(MatchKind::Helper),
        "statistic" => statistic(cx, &mut o)?,
        "limit" => limit(cx, &mut o)?,
        "recent" => recent(cx, &mut o)?,
        "set" => set(cx, &mut o)?,
        "socket" => socket(cx, &mut o)?,
        "owner" => owner(cx, &mut o)?,
        _ => None,
    };
    Ok(kind.unwrap_or(MatchKind::Unknown))
}

/// A module with exactly one (negatable) option `name`.
fn single<T>(
    cx: &mut Ctx,
    o: &mut Opts,
    name: &str,
    what: &str,
    f: impl Fn(&str) -> Option<T>,
) -> Res<Option<Negatable<T>>> {
    let mut slot = None;
    while let Some((neg, opt)) = o.next(cx)? {
        if opt.text != name {
            return Ok(None);
        }
        let v = o.neg(cx, opt, neg, what, &f)?;
        put(&mut slot, v, cx, opt)?;
    }
    Ok(slot)
}

fn tcp(cx: &mut Ctx, o: &mut Opts) -> Res<Option<MatchKind>> {
    let mut m = TcpMatch::default();
    while let Some((neg, opt)) = o.next(cx)? {
        match opt.text.as_str() {
            "--sport" | "--source-port" => put(
                &mut m.sport,
                o.neg(cx, opt, neg, "port", parse_port_range)?,
                cx,
                opt,
            )?,
            "--dport" | "--destination-port" => put(
                &mut m.dport,
                o.neg(cx, opt, neg, "port", parse_port_range)?,
                cx,
                opt,
            )?,
            "--syn" => put(
                &mut m.flags,
                Negatable::new(TcpFlags::SYN_ONLY, neg),
                cx,
                opt,
            )?,
            "--tcp-flags" => {
                let (old_neg, mask_w) = o.value(cx, opt)?;
                let mask =
                    parse_tcp_flags(&mask_w.text).ok_or_else(|| cx.bad(mask_w, "TCP flags"))?;
                let comp = o.plain(cx, opt, "TCP flags", parse_tcp_flags)?;
                put(
                    &mut m.flags,
                    Negatable::new(TcpFlags { mask, comp }, neg || old_neg),
                    cx,
                    opt,
                )?
            }
            "--tcp-option" => {
                let v = o.neg(cx, opt, neg, "TCP option", |s| s.parse::<u8>().ok())?;
                put(&mut m.option, v, cx, opt)?
            }
            _ => return Ok(None),
        }
    }
    Ok(Some(MatchKind::Tcp(m)))
}

/// `SYN,ACK` / `ALL` / `NONE` → bits.
fn parse_tcp_flags(s: &str) -> Option<u8> {
    s.split(',').try_fold(0u8, |acc, f| {
        let bit = match f.to_ascii_uppercase().as_str() {
            "FIN" => 0x01,
            "SYN" => 0x02,
            "RST" => 0x04,
            "PSH" => 0x08,
            "ACK" => 0x10,
            "URG" => 0x20,
            "ECE" => 0x40,
            "CWR" => 0x80,
            "ALL" => 0xff,
            "NONE" => 0,
            _ => return None,
        };
        Some(acc | bit)
    })
}

fn ports(cx: &mut Ctx, o: &mut Opts) -> Res<Option<PortsMatch>> {
    let mut m = PortsMatch::default();
    while let Some((neg, opt)) = o.next(cx)? {
        let slot = match opt.text.as_str() {
            "--sport" | "--source-port" => &mut m.sport,
            "--dport" | "--destination-port" => &mut m.dport,
            _ => return Ok(None),
        };
        put(
            slot,
            o.neg(cx, opt, neg, "port", parse_port_range)?,
            cx,
            opt,
        )?;
    }
    Ok(Some(m))
}

fn icmp(cx: &mut Ctx, o: &mut Opts, family: Family) -> Res<Option<IcmpMatch>> {
    let name = if family == Family::Ipv4 {
        "--icmp-type"
    } else {
        "--icmpv6-type"
    };
    let mut m = IcmpMatch { icmp_type: None };
    while let Some((neg, opt)) = o.next(cx)? {
        if opt.text != name {
            return Ok(None);
        }
        let v = o.neg(cx, opt, neg, "ICMP type", |s| parse_icmp_type(s, family))?;
        put(&mut m.icmp_type, v, cx, opt)?;
    }
    if family == Family::Ipv6 {
        if let Some(first) = o.words.first() {
            cx.use_family(Family::Ipv6, first)?;
        }
    }
    Ok(Some(m))
}

/// `any`, `N`, `N/C` or a name iptables knows.
pub(crate) fn parse_icmp_type(s: &str, family: Family) -> Option<IcmpType> {
    if s == "any" {
        return Some(IcmpType {
            ty: None,
            code_lo: 0,
            code_hi: 255,
        });
    }
    let full = |ty: u8| IcmpType {
        ty: Some(ty),
        code_lo: 0,
        code_hi: 255,
    };
    let coded = |ty: u8, c: u8| IcmpType {
        ty: Some(ty),
        code_lo: c,
        code_hi: c,
    };
    if let Some((t, c)) = s.split_once('/') {
        return Some(coded(t.parse().ok()?, c.parse().ok()?));
    }
    if let Ok(t) = s.parse::<u8>() {
        return Some(full(t));
    }
    let (ty, code) = match family {
        Family::Ipv4 => icmp4_name(s)?,
        Family::Ipv6 => icmp6_name(s)?,
    };
    Some(match code {
        Some(c) => coded(ty, c),
        None => full(ty),
    })
}

fn icmp4_name(s: &str) -> Option<(u8, Option<u8>)> {
    Some(match s {
        "echo-reply" | "pong" => (0, None),
        "destination-unreachable" => (3, None),
        "network-unreachable" => (3, Some(0)),
        "host-unreachable" => (3, Some(1)),
        "protocol-unreachable" => (3, Some(2)),
        "port-unreachable" => (3, Some(3)),
        "fragmentation-needed" => (3, Some(4)),
        "source-route-failed" => (3, Some(5)),
        "network-unknown" => (3, Some(6)),
        "host-unknown" => (3, Some(7)),
        "network-prohibited" => (3, Some(9)),
        "host-prohibited" => (3, Some(10)),
        "TOS-network-unreachable" => (3, Some(11)),
        "TOS-host-unreachable" => (3, Some(12)),
        "communication-prohibited" => (3, Some(13)),
        "host-precedence-violation" => (3, Some(14)),
        "precedence-cutoff" => (3, Some(15)),
        "source-quench" => (4, None),
        "redirect" => (5, None),
        "network-redirect" => (5, Some(0)),
        "host-redirect" => (5, Some(1)),
        "TOS-network-redirect" => (5, Some(2)),
        "TOS-host-redirect" => (5, Some(3)),
        "echo-request" | "ping" => (8, None),
        "router-advertisement" => (9, None),
        "router-solicitation" => (10, None),
        "time-exceeded" | "ttl-exceeded" => (11, None),
        "ttl-zero-during-transit" => (11, Some(0)),
        "ttl-zero-during-reassembly" => (11, Some(1)),
        "parameter-problem" => (12, None),
        "ip-header-bad" => (12, Some(0)),
        "required-option-missing" => (12, Some(1)),
        "timestamp-request" => (13, None),
        "timestamp-reply" => (14, None),
        "address-mask-request" => (17, None),
        "address-mask-reply" => (18, None),
        _ => return None,
    })
}

fn icmp6_name(s: &str) -> Option<(u8, Option<u8>)> {
    Some(match s {
        "destination-unreachable" => (1, None),
        "no-route" => (1, Some(0)),
        "communication-prohibited" => (1, Some(1)),
        "beyond-scope" => (1, Some(2)),
        "address-unreachable" => (1, Some(3)),
        "port-unreachable" => (1, Some(4)),
        "failed-policy" => (1, Some(5)),
        "reject-route" => (1, Some(6)),
        "packet-too-big" => (2, None),
        "time-exceeded" | "ttl-exceeded" => (3, None),
        "ttl-zero-during-transit" => (3, Some(0)),
        "ttl-zero-during-reassembly" => (3, Some(1)),
        "parameter-problem" => (4, None),
        "bad-header" => (4, Some(0)),
        "unknown-header-type" => (4, Some(1)),
        "unknown-option" => (4, Some(2)),
        "echo-request" | "ping" => (128, None),
        "echo-reply" | "pong" => (129, None),
        "mld-listener-query" => (130, None),
        "mld-listener-report" => (131, None),
        "mld-listener-done" => (132, None),
        "router-solicitation" => (133, None),
        "router-advertisement" => (134, None),
        "neighbour-solicitation" | "neighbor-solicitation" => (135, None),
        "neighbour-advertisement" | "neighbor-advertisement" => (136, None),
        "redirect" => (137, None),
        "mld2-listener-report" => (143, None),
        _ => return None,
    })
}

fn multiport(cx: &mut Ctx, o: &mut Opts) -> Res<Option<MatchKind>> {
    let mut m = None;
    while let Some((neg, opt)) = o.next(cx)? {
        let dir = match opt.text.as_str() {
            "--sports" | "--source-ports" => PortDir::Src,
            "--dports" | "--destination-ports" => PortDir::Dst,
            "--ports" => PortDir::Either,
            _ => return Ok(None),
        };
        let ports = o.neg(cx, opt, neg, "port list", |s| {
            s.split(',').map(parse_port_range).collect()
        })?;
        put(&mut m, MultiportMatch { dir, ports }, cx, opt)?;
    }
    Ok(m.map(MatchKind::Multiport))
}

fn list<T>(s: &str, f: impl Fn(&str) -> Option<T>) -> Option<Vec<T>> {
    s.split(',').map(f).collect()
}

fn ct_state(s: &str) -> Option<CtState> {
    Some(match s.to_ascii_uppercase().as_str() {
        "INVALID" => CtState::Invalid,
        "NEW" => CtState::New,
        "ESTABLISHED" => CtState::Established,
        "RELATED" => CtState::Related,
        "UNTRACKED" => CtState::Untracked,
        "SNAT" => CtState::Snat,
        "DNAT" => CtState::Dnat,
        _ => return None,
    })
}

fn ct_status(s: &str) -> Option<CtStatus> {
    Some(match s.to_ascii_uppercase().as_str() {
        "NONE" => CtStatus::None,
        "EXPECTED" => CtStatus::Expected,
        "SEEN_REPLY" => CtStatus::SeenReply,
        "ASSURED" => CtStatus::Assured,
        "CONFIRMED" => CtStatus::Confirmed,
        _ => return None,
    })
}

fn conntrack(cx: &mut Ctx, o: &mut Opts) -> Res<Option<MatchKind>> {
    let mut m = ConntrackMatch::default();
    while let Some((neg, opt)) = o.next(cx)? {
        match opt.text.as_str() {
            "--ctstate" => put(
                &mut m.state,
                o.neg(cx, opt, neg, "ctstate", |s| list(s, ct_state))?,
                cx,
                opt,
            )?,
            "--ctstatus" => put(
                &mut m.status,
                o.neg(cx, opt, neg, "ctstatus", |s| list(s, ct_status))?,
                cx,
                opt,
            )?,
            "--ctproto" => {
                let p = o.neg(cx, opt, neg, "protocol", |s| {
                    super::values::parse_proto(s).map(|p| match p {
                        super::model::Proto::All => 0,
                        super::model::Proto::Num(n) => n,
                    })
                })?;
                put(&mut m.proto, p, cx, opt)?
            }
            "--ctorigsrc" | "--ctorigdst" | "--ctreplsrc" | "--ctrepldst" => {
                let (old_neg, w) = o.value(cx, opt)?;
                let net = Negatable::new(cx.net(&w.text, w)?, neg || old_neg);
                let slot = match opt.text.as_str() {
                    "--ctorigsrc" => &mut m.orig_src,
                    "--ctorigdst" => &mut m.orig_dst,
                    "--ctreplsrc" => &mut m.repl_src,
                    _ => &mut m.repl_dst,
                };
                put(slot, net, cx, opt)?
            }
            "--ctorigsrcport" | "--ctorigdstport" | "--ctreplsrcport" | "--ctrepldstport" => {
                let r = o.neg(cx, opt, neg, "port", parse_port_range)?;
                let slot = match opt.text.as_str() {
                    "--ctorigsrcport" => &mut m.orig_src_port,
                    "--ctorigdstport" => &mut m.orig_dst_port,
                    "--ctreplsrcport" => &mut m.repl_src_port,
                    _ => &mut m.repl_dst_port,
                };
                put(slot, r, cx, opt)?
            }
            "--ctdir" => {
                let d = o.plain(cx, opt, "ctdir", |s| {
                    match s.to_ascii_uppercase().as_str() {
                        "ORIGINAL" => Some(CtDir::Original),
                        "REPLY" => Some(CtDir::Reply),
                        _ => None,
                    }
                })?;
                put(&mut m.dir, d, cx, opt)?
            }
            "--ctexpire" => put(
                &mut m.expire,
                o.neg(cx, opt, neg, "ctexpire", |s| parse_num_range(s, u32::MAX))?,
                cx,
                opt,
            )?,
            _ => return Ok(None),
        }
    }
    Ok(Some(MatchKind::Conntrack(m)))
}

fn state(cx: &mut Ctx, o: &mut Opts) -> Res<Option<MatchKind>> {
    Ok(single(cx, o, "--state", "state", |s| list(s, ct_state))?.map(MatchKind::State))
}

fn addr_type(s: &str) -> Option<AddrType> {
    Some(match s.to_ascii_uppercase().as_str() {
        "UNSPEC" => AddrType::Unspec,
        "UNICAST" => AddrType::Unicast,
        "LOCAL" => AddrType::Local,
        "BROADCAST" => AddrType::Broadcast,
        "ANYCAST" => AddrType::Anycast,
        "MULTICAST" => AddrType::Multicast,
        "BLACKHOLE" => AddrType::Blackhole,
        "UNREACHABLE" => AddrType::Unreachable,
        "PROHIBIT" => AddrType::Prohibit,
        "THROW" => AddrType::Throw,
        "NAT" => AddrType::Nat,
        "XRESOLVE" => AddrType::Xresolve,
        _ => return None,
    })
}

fn addrtype(cx: &mut Ctx, o: &mut Opts) -> Res<Option<MatchKind>> {
    let mut m = AddrTypeMatch::default();
    while let Some((neg, opt)) = o.next(cx)? {
        match opt.text.as_str() {
            "--src-type" => put(
                &mut m.src_type,
                o.neg(cx, opt, neg, "address type", |s| list(s, addr_type))?,
                cx,
                opt,
            )?,
            "--dst-type" => put(
                &mut m.dst_type,
                o.neg(cx, opt, neg, "address type", |s| list(s, addr_type))?,
                cx,
                opt,
            )?,
            "--limit-iface-in" => m.limit_iface_in = true,
            "--limit-iface-out" => m.limit_iface_out = true,
            _ => return Ok(None),
        }
    }
    Ok(Some(MatchKind::AddrType(m)))
}

fn parse_mark(s: &str) -> Option<MarkMask> {
    parse_value_mask(s).map(|(value, mask)| MarkMask { value, mask })
}

fn comment(cx: &mut Ctx, o: &mut Opts) -> Res<Option<MatchKind>> {
    let mut text = None;
    while let Some((_, opt)) = o.next(cx)? {
        if opt.text != "--comment" {
            return Ok(None);
        }
        let (_, w) = o.value(cx, opt)?;
        put(&mut text, w.text.clone(), cx, opt)?;
    }
    Ok(text.map(MatchKind::Comment))
}

fn iprange(cx: &mut Ctx, o: &mut Opts) -> Res<Option<MatchKind>> {
    let mut m = IpRangeMatch::default();
    while let Some((neg, opt)) = o.next(cx)? {
        let (old_neg, w) = o.value(cx, opt)?;
        let (a, b) = w.text.split_once('-').unwrap_or((&w.text, &w.text));
        let range = Negatable::new((cx.ip(a, w)?, cx.ip(b, w)?), neg || old_neg);
        match opt.text.as_str() {
            "--src-range" => put(&mut m.src, range, cx, opt)?,
            "--dst-range" => put(&mut m.dst, range, cx, opt)?,
            _ => return Ok(None),
        }
    }
    Ok(Some(MatchKind::IpRange(m)))
}

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for b in out.iter_mut() {
        let p = parts.next()?;
        if p.is_empty() || p.len() > 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

fn physdev(cx: &mut Ctx, o: &mut Opts) -> Res<Option<MatchKind>> {
    let mut m = PhysdevMatch::default();
    while let Some((neg, opt)) = o.next(cx)? {
        let flag = Negatable::new((), neg);
        match opt.text.as_str() {
            "--physdev-in" => put(
                &mut m.physdev_in,
                o.neg(cx, opt, neg, "interface", |s| Some(Iface::parse(s)))?,
                cx,
                opt,
            )?,
            "--physdev-out" => put(
                &mut m.physdev_out,
                o.neg(cx, opt, neg, "interface", |s| Some(Iface::parse(s)))?,
                cx,
                opt,
            )?,
            "--physdev-is-in" => put(&mut m.is_in, flag, cx, opt)?,
            "--physdev-is-out" => put(&mut m.is_out, flag, cx, opt)?,
            "--physdev-is-bridged" => put(&mut m.is_bridged, flag, cx, opt)?,
            _ => return Ok(None),
        }
    }
    Ok(Some(MatchKind::Physdev(m)))
}

fn parse_pkttype(s: &str) -> Option<PktType> {
    Some(match s.to_ascii_lowercase().as_str() {
        "unicast" => PktType::Unicast,
        "broadcast" => PktType::Broadcast,
        "multicast" => PktType::Multicast,
        "host" => PktType::Host,
        "otherhost" => PktType::OtherHost,
        _ => return None,
    })
}

/// `-m ttl --ttl-eq N` / `-m hl --hl-gt N` (`prefix` = `--ttl` or `--hl`).
fn ttl(cx: &mut Ctx, o: &mut Opts, prefix: &str) -> Res<Option<Negatable<Cmp>>> {
    let mut slot = None;
    while let Some((neg, opt)) = o.next(cx)? {
        let op = match opt.text.strip_prefix(prefix) {
            Some("-eq") => CmpOp::Eq,
            Some("-lt") => CmpOp::Lt,
            Some("-gt") => CmpOp::Gt,
            _ => return Ok(None),
        };
        let v = o.neg(cx, opt, neg, "value", |s| s.parse::<u8>().ok())?;
        put(
            &mut slot,
            Negatable::new(Cmp { op, value: v.value }, v.negated),
            cx,
            opt,
        )?;
    }
    Ok(slot)
}

fn dscp_class(s: &str) -> Option<u8> {
    let up = s.to_ascii_uppercase();
    if up == "EF" {
        return Some(0x2e);
    }
    if up == "BE" {
        return Some(0);
    }
    if let Some(n) = up.strip_prefix("CS") {
        let n: u8 = n.parse().ok().filter(|n| *n <= 7)?;
        return Some(n << 3);
    }
    let af = up.strip_prefix("AF")?;
    let (c, d) = (
        af.chars().next()?.to_digit(10)?,
        af.chars().nth(1)?.to_digit(10)?,
    );
    ((1..=4).contains(&c) && (1..=3).contains(&d) && af.len() == 2).then_some((c * 8 + d * 2) as u8)
}

fn dscp(cx: &mut Ctx, o: &mut Opts) -> Res<Option<MatchKind>> {
    let mut slot = None;
    while let Some((neg, opt)) = o.next(cx)? {
        let v = match opt.text.as_str() {
            "--dscp" => o.neg(cx, opt, neg, "DSCP", |s| {
                parse_u32(s).filter(|v| *v < 64).map(|v| v as u8)
            })?,
            "--dscp-class" => o.neg(cx, opt, neg, "DSCP class", dscp_class)?,
            _ => return Ok(None),
        };
        put(&mut slot, v, cx, opt)?;
    }
    Ok(slot.map(MatchKind::Dscp))
}

fn parse_tos(s: &str) -> Option<MarkMask> {
    let named = match s {
        "Minimize-Delay" => Some(0x10),
        "Maximize-Throughput" => Some(0x08),
        "Maximize-Reliability" => Some(0x04),
        "Minimize-Cost" => Some(0x02),
        "Normal-Service" => Some(0x00),
        _ => None,
    };
    if let Some(value) = named {
        return Some(MarkMask { value, mask: 0x3f });
    }
    let (value, mask) = parse_value_mask(s)?;
    (value <= 0xff).then_some(MarkMask {
        value,
        mask: mask & 0xff,
    })
}

fn statistic(cx: &mut Ctx, o: &mut Opts) -> Res<Option<MatchKind>> {
    let (mut mode, mut prob, mut every, mut packet, mut negated) = (None, None, None, None, false);
    while let Some((neg, opt)) = o.next(cx)? {
        match opt.text.as_str() {
            "--mode" => put(
                &mut mode,
                o.plain(cx, opt, "mode", |s| Some(s.to_string()))?,
                cx,
                opt,
            )?,
            "--probability" => {
                negated |= neg;
                let p = o.plain(cx, opt, "probability", |s| {
                    s.parse::<f64>().ok().filter(|p| (0.0..=1.0).contains(p))
                })?;
                put(&mut prob, p, cx, opt)?
            }
            "--every" => {
                negated |= neg;
                put(
                    &mut every,
                    o.plain(cx, opt, "count", |s| {
                        s.parse::<u32>().ok().filter(|n| *n > 0)
                    })?,
                    cx,
                    opt,
                )?
            }
            "--packet" => put(
                &mut packet,
                o.plain(cx, opt, "packet", |s| s.parse::<u32>().ok())?,
                cx,
                opt,
            )?,
            _ => return Ok(None),
        }
    }
    let mode = match (mode.as_deref(), prob, every) {
        (Some("random"), Some(probability), None) => StatisticMode::Random { probability },
        (Some("nth"), None, Some(every)) => StatisticMode::Nth {
            every,
            packet: packet.unwrap_or(0),
        },
        _ => return Ok(None),
    };
    Ok(Some(MatchKind::Statistic(StatisticMatch { mode, negated })))
}

fn limit(cx: &mut Ctx, o: &mut Opts) -> Res<Option<MatchKind>> {
    let mut m = LimitMatch {
        rate: None,
        burst: None,
    };
    while let Some((_, opt)) = o.next(cx)? {
        match opt.text.as_str() {
            "--limit" => put(
                &mut m.rate,
                o.plain(cx, opt, "rate", |s| Some(s.to_string()))?,
                cx,
                opt,
            )?,
            "--limit-burst" => put(
                &mut m.burst,
                o.plain(cx, opt, "burst", |s| s.parse().ok())?,
                cx,
                opt,
            )?,
            _ => return Ok(None),
        }
    }
    Ok(Some(MatchKind::Limit(m)))
}

fn recent(cx: &mut Ctx, o: &mut Opts) -> Res<Option<MatchKind>> {
    let mut m = RecentMatch {
        name: "DEFAULT".into(),
        mode: None,
        negated: false,
        seconds: None,
        hitcount: None,
        reap: false,
        rttl: false,
        rdest: false,
        mask: None,
    };
    while let Some((neg, opt)) = o.next(cx)? {
        let mode = match opt.text.as_str() {
            "--set" => Some(RecentMode::Set),
            "--rcheck" => Some(RecentMode::Rcheck),
            "--update" => Some(RecentMode::Update),
            "--remove" => Some(RecentMode::Remove),
            _ => None,
        };
        if let Some(mode) = mode {
            m.negated |= neg;
            put(&mut m.mode, mode, cx, opt)?;
            continue;
        }
        match opt.text.as_str() {
            "--name" => m.name = o.plain(cx, opt, "name", |s| Some(s.to_string()))?,
            "--seconds" => put(
                &mut m.seconds,
                o.plain(cx, opt, "seconds", |s| s.parse().ok())?,
                cx,
                opt,
            )?,
            "--hitcount" => put(
                &mut m.hitcount,
                o.plain(cx, opt, "hitcount", |s| s.parse().ok())?,
                cx,
                opt,
            )?,
            "--reap" => m.reap = true,
            "--rttl" => m.rttl = true,
            "--rsource" => m.rdest = false,
            "--rdest" => m.rdest = true,
            "--mask" => {
                let (_, w) = o.value(cx, opt)?;
                put(&mut m.mask, cx.ip(&w.text, w)?, cx, opt)?
            }
            _ => return Ok(None),
        }
    }
    Ok(Some(MatchKind::Recent(m)))
}

/// `src,dst,...` set dimension flags: true = src.
pub(crate) fn set_flags(s: &str) -> Option<Vec<bool>> {
    list(s, |f| match f {
        "src" => Some(true),
        "dst" => Some(false),
        _ => None,
    })
}

fn set(cx: &mut Ctx, o: &mut Opts) -> Res<Option<MatchKind>> {
    let mut m: Option<SetMatch> = None;
    while let Some((neg, opt)) = o.next(cx)? {
        match opt.text.as_str() {
            "--match-set" | "--set" => {
                let (old_neg, name) = o.value(cx, opt)?;
                let src_flags = o.plain(cx, opt, "set flags", set_flags)?;
                let v = SetMatch {
                    name: name.text.clone(),
                    src_flags,
                    negated: neg || old_neg,
                };
                put(&mut m, v, cx, opt)?
            }
            "--return-nomatch" | "--update-counters" | "--update-subcounters" => {}
            "--packets-eq" | "--packets-lt" | "--packets-gt" | "--bytes-eq" | "--bytes-lt"
            | "--bytes-gt" => {
                o.plain(cx, opt, "counter", |s| s.parse::<u64>().ok())?;
            }
            _ => return Ok(None),
        }
    }
    Ok(m.map(MatchKind::Set))
}

fn socket(cx: &mut Ctx, o: &mut Opts) -> Res<Option<MatchKind>> {
    let mut m = SocketMatch::default();
    while let Some((_, opt)) = o.next(cx)? {
        match opt.text.as_str() {
            "--transparent" => m.transparent = true,
            "--nowildcard" => m.nowildcard = true,
            "--restore-skmark" => m.restore_skmark = true,
            _ => return Ok(None),
        }
    }
    Ok(Some(MatchKind::Socket(m)))
}

/// A uid/gid or range of them (`1000`, `1000-2000`, `root`); other names are not resolved.
fn id_range(s: &str) -> Option<Range> {
    let one = |x: &str| {
        if x == "root" {
            Some(0)
        } else {
            x.parse::<u32>().ok()
        }
    };
    super::values::parse_range_with(s, u32::MAX, true, one)
}

fn owner(cx: &mut Ctx, o: &mut Opts) -> Res<Option<MatchKind>> {
    let mut m = OwnerMatch::default();
    while let Some((neg, opt)) = o.next(cx)? {
        match opt.text.as_str() {
            "--uid-owner" => {
                let Ok(v) = o.neg(cx, opt, neg, "uid", id_range) else {
                    return Ok(None);
                };
                put(&mut m.uid, v, cx, opt)?
            }
            "--gid-owner" => {
                let Ok(v) = o.neg(cx, opt, neg, "gid", id_range) else {
                    return Ok(None);
                };
                put(&mut m.gid, v, cx, opt)?
            }
            "--socket-exists" => put(&mut m.socket_exists, Negatable::new((), neg), cx, opt)?,
            _ => return Ok(None),
        }
    }
    Ok(Some(MatchKind::Owner(m)))
}

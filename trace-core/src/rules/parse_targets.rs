//! Typed parsing of `-j TARGET [options]` into [`Target`]. An option a typed target does not
//! know keeps the whole target verbatim as [`Target::Unknown`]; a bad value is an error.

use super::error::{ParseError, ParseErrorKind};
use super::lexer::Word;
use super::matches::{MarkMask, Range};
use super::parse_matches::{set_flags, Opts};
use super::targets::*;
use super::values::{parse_range_with, parse_u32, parse_value_mask, Ctx};

type Res<T> = Result<T, ParseError>;

/// Parses `-j name args...`. `is_chain` says whether `name` is a chain of the current table
/// (a user chain name wins: iptables forbids chain names that clash with target names).
pub(crate) fn parse_target(
    name: &Word,
    args: &[Word],
    is_chain: bool,
    table: &str,
    cx: &mut Ctx,
) -> Res<Target> {
    if is_chain {
        no_args(name, args, cx)?;
        return Ok(Target::Jump(name.text.clone()));
    }
    let mut o = Opts::new(args);
    let typed = match name.text.as_str() {
        "ACCEPT" | "DROP" | "RETURN" | "QUEUE" => {
            no_args(name, args, cx)?;
            Some(standard(&name.text))
        }
        "DNAT" => nat(cx, &mut o, "--to-destination")?.map(Target::Dnat),
        "SNAT" => nat(cx, &mut o, "--to-source")?.map(Target::Snat),
        "MASQUERADE" => masquerade(cx, &mut o)?.map(Target::Masquerade),
        "REDIRECT" => masquerade(cx, &mut o)?.map(Target::Redirect),
        "NETMAP" => netmap(cx, &mut o)?,
        "MARK" => mark(cx, &mut o)?,
        "CONNMARK" => connmark(cx, &mut o)?,
        "CT" => ct(cx, &mut o)?,
        "NOTRACK" => flags_only(cx, &mut o, &[])?.map(|_| Target::Notrack),
        "TRACE" => flags_only(cx, &mut o, &[])?.map(|_| Target::Trace),
        "CHECKSUM" => flags_only(cx, &mut o, &["--checksum-fill"])?.map(|_| Target::Checksum),
        "LOG" => log(cx, &mut o)?,
        "NFLOG" => nflog(cx, &mut o)?,
        "REJECT" => reject(cx, &mut o)?,
        "TPROXY" => tproxy(cx, &mut o)?,
        "NFQUEUE" => nfqueue(cx, &mut o)?,
        "TCPMSS" => tcpmss(cx, &mut o)?,
        "DSCP" => dscp(cx, &mut o)?,
        "TOS" => tos(cx, &mut o)?,
        "SET" => set(cx, &mut o)?,
        "CLASSIFY" => classify(cx, &mut o)?,
        _ if args.is_empty() => {
            return Err(cx.err(
                name.col,
                ParseErrorKind::UnknownJumpTarget {
                    table: table.to_string(),
                    chain: name.text.clone(),
                },
            ))
        }
        _ => None,
    };
    Ok(typed.unwrap_or_else(|| Target::Unknown {
        name: name.text.clone(),
        args: args.iter().map(|w| w.text.clone()).collect(),
    }))
}

fn standard(name: &str) -> Target {
    match name {
        "ACCEPT" => Target::Accept,
        "DROP" => Target::Drop,
        "RETURN" => Target::Return,
        _ => Target::Queue,
    }
}

fn no_args(name: &Word, args: &[Word], cx: &Ctx) -> Res<()> {
    match args.first() {
        None => Ok(()),
        Some(w) => Err(cx.err(
            w.col,
            ParseErrorKind::BadTarget {
                target: name.text.clone(),
                reason: format!("takes no option (`{}`)", w.text),
            },
        )),
    }
}

/// Next option, rejecting `!` (targets take none).
fn next<'w>(cx: &Ctx, o: &mut Opts<'w>) -> Res<Option<&'w Word>> {
    match o.next(cx)? {
        Some((true, w)) => Err(cx.err(w.col, ParseErrorKind::DanglingNegation)),
        Some((false, w)) => Ok(Some(w)),
        None => Ok(None),
    }
}

fn text(cx: &Ctx, o: &mut Opts, opt: &Word) -> Res<String> {
    o.plain(cx, opt, "value", |s| Some(s.to_string()))
}

/// A target whose options are all flags from `allowed`; None on anything else.
fn flags_only(cx: &mut Ctx, o: &mut Opts, allowed: &[&str]) -> Res<Option<()>> {
    while let Some(opt) = next(cx, o)? {
        if !allowed.contains(&opt.text.as_str()) {
            return Ok(None);
        }
    }
    Ok(Some(()))
}

fn port_range(s: &str) -> Option<Range> {
    parse_range_with(s, 65535, true, |p| {
        p.parse::<u32>().ok().filter(|p| *p <= 65535)
    })
}

/// `[ADDR[-ADDR]][:PORT[-PORT]]`; IPv6 addresses are bracketed when a port follows.
fn nat_range(cx: &mut Ctx, w: &Word) -> Res<NatRange> {
    let s = w.text.as_str();
    let (addrs, ports) = if let Some(rest) = s.strip_prefix('[') {
        let (a, tail) = rest.split_once(']').ok_or_else(|| cx.bad(w, "NAT range"))?;
        (a, tail.strip_prefix(':'))
    } else if s.matches(':').count() > 1 {
        (s, None) // a bare IPv6 address (or range) without port
    } else {
        match s.split_once(':') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        }
    };
    let addr = if addrs.is_empty() {
        None
    } else {
        let (a, b) = addrs.split_once('-').unwrap_or((addrs, addrs));
        Some((cx.ip(a, w)?, cx.ip(b, w)?))
    };
    let ports = match ports {
        Some(p) => Some(port_range(p).ok_or_else(|| cx.bad(w, "port range"))?),
        None => None,
    };
    Ok(NatRange { addr, ports })
}

fn nat(cx: &mut Ctx, o: &mut Opts, to: &str) -> Res<Option<NatTarget>> {
    let mut t = NatTarget::default();
    while let Some(opt) = next(cx, o)? {
        match opt.text.as_str() {
            s if s == to => {
                let (_, w) = o.value(cx, opt)?;
                t.to.push(nat_range(cx, w)?);
            }
            "--random" => t.random = true,
            "--random-fully" => t.random_fully = true,
            "--persistent" => t.persistent = true,
            _ => return Ok(None),
        }
    }
    Ok(Some(t))
}

fn masquerade(cx: &mut Ctx, o: &mut Opts) -> Res<Option<MasqueradeTarget>> {
    let mut t = MasqueradeTarget::default();
    while let Some(opt) = next(cx, o)? {
        match opt.text.as_str() {
            "--to-ports" => t.to_ports = Some(o.plain(cx, opt, "port range", port_range)?),
            "--random" => t.random = true,
            "--random-fully" => t.random_fully = true,
            _ => return Ok(None),
        }
    }
    Ok(Some(t))
}

fn netmap(cx: &mut Ctx, o: &mut Opts) -> Res<Option<Target>> {
    let mut to = None;
    while let Some(opt) = next(cx, o)? {
        if opt.text != "--to" {
            return Ok(None);
        }
        let (_, w) = o.value(cx, opt)?;
        to = Some(cx.net(&w.text, w)?);
    }
    Ok(to.map(|to| Target::Netmap { to }))
}

/// The xt_MARK-style `(value, mask)` of `--set-xmark/--set-mark/--and/--or/--xor-mark`.
fn xmark(cx: &Ctx, o: &mut Opts, opt: &Word) -> Res<Option<(u32, u32)>> {
    let (v, m) = o.plain(cx, opt, "mark", parse_value_mask)?;
    Ok(Some(match opt.text.as_str() {
        "--set-xmark" => (v, m),
        "--set-mark" => (v, m | v),
        "--and-mark" => (0, !v),
        "--or-mark" => (v, v),
        "--xor-mark" => (v, 0),
        _ => return Ok(None),
    }))
}

const XMARK_OPTS: [&str; 5] = [
    "--set-xmark",
    "--set-mark",
    "--and-mark",
    "--or-mark",
    "--xor-mark",
];

fn mark(cx: &mut Ctx, o: &mut Opts) -> Res<Option<Target>> {
    let mut t = None;
    while let Some(opt) = next(cx, o)? {
        if !XMARK_OPTS.contains(&opt.text.as_str()) {
            return Ok(None);
        }
        t = xmark(cx, o, opt)?.map(|(value, mask)| MarkTarget { value, mask });
    }
    Ok(t.map(Target::Mark))
}

fn connmark(cx: &mut Ctx, o: &mut Opts) -> Res<Option<Target>> {
    let (mut op, mut nfmask, mut ctmask) = (None, u32::MAX, u32::MAX);
    while let Some(opt) = next(cx, o)? {
        let word = opt.text.as_str();
        if XMARK_OPTS.contains(&word) {
            op = xmark(cx, o, opt)?.map(|(value, mask)| ConnmarkTarget::Set { value, mask });
            continue;
        }
        match word {
            "--save-mark" => {
                op = Some(ConnmarkTarget::Save {
                    nfmask: 0,
                    ctmask: 0,
                })
            }
            "--restore-mark" => {
                op = Some(ConnmarkTarget::Restore {
                    nfmask: 0,
                    ctmask: 0,
                })
            }
            "--nfmask" => nfmask = o.plain(cx, opt, "mask", parse_u32)?,
            "--ctmask" => ctmask = o.plain(cx, opt, "mask", parse_u32)?,
            "--mask" => {
                let m = o.plain(cx, opt, "mask", parse_u32)?;
                (nfmask, ctmask) = (m, m);
            }
            _ => return Ok(None),
        }
    }
    Ok(op.map(|op| {
        Target::Connmark(match op {
            ConnmarkTarget::Save { .. } => ConnmarkTarget::Save { nfmask, ctmask },
            ConnmarkTarget::Restore { .. } => ConnmarkTarget::Restore { nfmask, ctmask },
            set => set,
        })
    }))
}

fn ct(cx: &mut Ctx, o: &mut Opts) -> Res<Option<Target>> {
    let mut t = CtTarget::default();
    while let Some(opt) = next(cx, o)? {
        match opt.text.as_str() {
            "--notrack" => t.notrack = true,
            "--zone" => t.zone = Some(o.plain(cx, opt, "zone", |s| s.parse().ok())?),
            "--helper" => t.helper = Some(text(cx, o, opt)?),
            _ => return Ok(None),
        }
    }
    Ok(Some(Target::Ct(t)))
}

fn log(cx: &mut Ctx, o: &mut Opts) -> Res<Option<Target>> {
    let mut t = LogTarget::default();
    while let Some(opt) = next(cx, o)? {
        match opt.text.as_str() {
            "--log-prefix" => t.prefix = Some(text(cx, o, opt)?),
            "--log-level" => t.level = Some(text(cx, o, opt)?),
            "--log-tcp-sequence" => t.tcp_sequence = true,
            "--log-tcp-options" => t.tcp_options = true,
            "--log-ip-options" => t.ip_options = true,
            "--log-uid" => t.uid = true,
            "--log-macdecode" => t.macdecode = true,
            _ => return Ok(None),
        }
    }
    Ok(Some(Target::Log(t)))
}

fn nflog(cx: &mut Ctx, o: &mut Opts) -> Res<Option<Target>> {
    let mut t = NflogTarget::default();
    while let Some(opt) = next(cx, o)? {
        match opt.text.as_str() {
            "--nflog-group" => t.group = Some(o.plain(cx, opt, "group", |s| s.parse().ok())?),
            "--nflog-prefix" => t.prefix = Some(text(cx, o, opt)?),
            "--nflog-range" | "--nflog-size" => {
                t.range = Some(o.plain(cx, opt, "size", |s| s.parse().ok())?)
            }
            "--nflog-threshold" => {
                t.threshold = Some(o.plain(cx, opt, "threshold", |s| s.parse().ok())?)
            }
            _ => return Ok(None),
        }
    }
    Ok(Some(Target::Nflog(t)))
}

/// `REJECT [--reject-with TYPE]`; an `icmp6-*` type marks the ruleset as IPv6 (an
/// ip6tables-save dump without header or addresses), an `icmp-*` type as IPv4.
fn reject(cx: &mut Ctx, o: &mut Opts) -> Res<Option<Target>> {
    let mut with = None;
    while let Some(opt) = next(cx, o)? {
        if opt.text != "--reject-with" {
            return Ok(None);
        }
        let (_, w) = o.value(cx, opt)?;
        if w.text.starts_with("icmp6-") {
            cx.use_family(crate::netfilter::Family::Ipv6, w)?;
        } else if w.text.starts_with("icmp-") {
            cx.use_family(crate::netfilter::Family::Ipv4, w)?;
        }
        with = Some(w.text.clone());
    }
    Ok(Some(Target::Reject { with }))
}

fn tproxy(cx: &mut Ctx, o: &mut Opts) -> Res<Option<Target>> {
    let (mut on_port, mut on_ip, mut mark) = (None, None, None);
    while let Some(opt) = next(cx, o)? {
        match opt.text.as_str() {
            "--on-port" => on_port = Some(o.plain(cx, opt, "port", |s| s.parse::<u16>().ok())?),
            "--on-ip" => {
                let (_, w) = o.value(cx, opt)?;
                on_ip = Some(cx.ip(&w.text, w)?);
            }
            "--tproxy-mark" => {
                let (value, mask) = o.plain(cx, opt, "mark", parse_value_mask)?;
                mark = Some(MarkMask { value, mask });
            }
            _ => return Ok(None),
        }
    }
    Ok(on_port.map(|on_port| {
        Target::Tproxy(TproxyTarget {
            on_port,
            on_ip,
            mark,
        })
    }))
}

fn nfqueue(cx: &mut Ctx, o: &mut Opts) -> Res<Option<Target>> {
    let (mut num, mut bypass) = (0u16, false);
    while let Some(opt) = next(cx, o)? {
        match opt.text.as_str() {
            "--queue-num" => num = o.plain(cx, opt, "queue number", |s| s.parse().ok())?,
            "--queue-bypass" => bypass = true,
            _ => return Ok(None),
        }
    }
    Ok(Some(Target::Nfqueue { num, bypass }))
}

fn tcpmss(cx: &mut Ctx, o: &mut Opts) -> Res<Option<Target>> {
    let mut t = None;
    while let Some(opt) = next(cx, o)? {
        match opt.text.as_str() {
            "--set-mss" => t = Some(Some(o.plain(cx, opt, "MSS", |s| s.parse().ok())?)),
            "--clamp-mss-to-pmtu" => t = Some(None),
            _ => return Ok(None),
        }
    }
    Ok(t.map(|set_mss| Target::TcpMss { set_mss }))
}

fn dscp(cx: &mut Ctx, o: &mut Opts) -> Res<Option<Target>> {
    let mut t = None;
    while let Some(opt) = next(cx, o)? {
        if opt.text != "--set-dscp" {
            return Ok(None);
        }
        t = Some(o.plain(cx, opt, "DSCP", |s| {
            parse_u32(s).filter(|v| *v < 64).map(|v| v as u8)
        })?);
    }
    Ok(t.map(Target::Dscp))
}

fn tos(cx: &mut Ctx, o: &mut Opts) -> Res<Option<Target>> {
    let mut t = None;
    while let Some(opt) = next(cx, o)? {
        if opt.text != "--set-tos" {
            return Ok(None);
        }
        let (value, mask) = o.plain(cx, opt, "TOS", parse_value_mask)?;
        t = Some(MarkMask {
            value: value & 0xff,
            mask: if mask == u32::MAX { 0xff } else { mask & 0xff },
        });
    }
    Ok(t.map(Target::Tos))
}

fn set(cx: &mut Ctx, o: &mut Opts) -> Res<Option<Target>> {
    let mut t = SetTarget {
        add: None,
        del: None,
        exist: false,
        timeout: None,
    };
    while let Some(opt) = next(cx, o)? {
        match opt.text.as_str() {
            "--add-set" | "--del-set" => {
                let name = text(cx, o, opt)?;
                let flags = o.plain(cx, opt, "set flags", set_flags)?;
                let slot = if opt.text == "--add-set" {
                    &mut t.add
                } else {
                    &mut t.del
                };
                *slot = Some((name, flags));
            }
            "--exist" => t.exist = true,
            "--timeout" => t.timeout = Some(o.plain(cx, opt, "timeout", |s| s.parse().ok())?),
            _ => return Ok(None),
        }
    }
    Ok(Some(Target::Set(t)))
}

fn classify(cx: &mut Ctx, o: &mut Opts) -> Res<Option<Target>> {
    let mut t = None;
    while let Some(opt) = next(cx, o)? {
        if opt.text != "--set-class" {
            return Ok(None);
        }
        let class = o.plain(cx, opt, "class", |s| {
            let (maj, min) = s.split_once(':')?;
            let (maj, min) = (
                u16::from_str_radix(maj, 16).ok()?,
                u16::from_str_radix(min, 16).ok()?,
            );
            Some(((maj as u32) << 16) | min as u32)
        })?;
        t = Some(class);
    }
    Ok(t.map(Target::Classify))
}

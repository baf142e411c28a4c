//! The options of one rule (`-p tcp -s 10.0.0.0/8 -m tcp --dport 80 -j ACCEPT`) → [`Rule`]s.
//!
//! Options are read left to right like iptables' getopt: the generic options, `-m MODULE`
//! followed by its option words, `-j TARGET` followed by its option words, `-g CHAIN`,
//! `-c P B`. A module's (or target's) words run until the next generic option. A `--option`
//! outside any module after `-p tcp|udp|icmp|...` loads that protocol's module implicitly,
//! as iptables does (`-p tcp --dport 22`). Known limitation: a module value that is
//! literally a generic option (an unquoted `-c` as a log prefix) ends the module's words.

use super::error::{ParseError, ParseErrorKind};
use super::lexer::Word;
use super::matches::Match;
use super::model::{Counters, Iface, IpNet, Negatable, Proto, Rule};
use super::parse_matches::parse_match;
use super::parse_targets::parse_target;
use super::targets::Target;
use super::values::{parse_proto, proto_name, Ctx};
use crate::netfilter::Family;

type Res<T> = Result<T, ParseError>;

/// Generic options: they end a module's or target's option words.
const GENERIC: [&str; 22] = [
    "-s",
    "--source",
    "--src",
    "-d",
    "--destination",
    "--dst",
    "-p",
    "--protocol",
    "-i",
    "--in-interface",
    "-o",
    "--out-interface",
    "-f",
    "--fragment",
    "-m",
    "--match",
    "-j",
    "--jump",
    "-g",
    "--goto",
    "-c",
    "--set-counters",
];

fn is_generic(w: &Word) -> bool {
    !w.quoted && GENERIC.contains(&w.text.as_str())
}

/// What the words say, before expansion into kernel rules.
#[derive(Default)]
struct Spec {
    counters: Option<Counters>,
    protocol: Option<Negatable<Proto>>,
    srcs: Option<Negatable<Vec<IpNet>>>,
    dsts: Option<Negatable<Vec<IpNet>>>,
    in_iface: Option<Negatable<Iface>>,
    out_iface: Option<Negatable<Iface>>,
    fragment: Option<Negatable<()>>,
    /// (module, column, option words).
    matches: Vec<(String, u32, Vec<Word>)>,
    target: Option<(Word, Vec<Word>)>,
    goto: Option<Word>,
}

/// Where the rule is being added: table name and a chain-existence test, for jumps.
pub(crate) struct Scope<'a> {
    pub table: &'a str,
    pub has_chain: &'a dyn Fn(&str) -> bool,
}

/// Parses the rule words (after `-A CHAIN`) into the kernel rules they create (several
/// when `-s`/`-d` list several addresses: sources outer, destinations inner).
pub(crate) fn parse_rule(
    words: &[Word],
    text: &str,
    cx: &mut Ctx,
    scope: &Scope,
) -> Res<Vec<Rule>> {
    let spec = read_spec(words, cx)?;
    check_address_lists(&spec, words, cx)?;
    let matches = typed_matches(&spec, cx)?;
    let (target, goto) = typed_target(&spec, cx, scope)?;
    check_protocols(&spec, &matches, &target, cx)?;
    let srcs = expand(&spec.srcs);
    let dsts = expand(&spec.dsts);
    let mut rules = Vec::with_capacity(srcs.len() * dsts.len());
    for src in &srcs {
        for dst in &dsts {
            rules.push(Rule {
                line: cx.line,
                text: text.to_string(),
                counters: spec.counters,
                protocol: spec.protocol.clone(),
                src: src.clone(),
                dst: dst.clone(),
                in_iface: spec.in_iface.clone(),
                out_iface: spec.out_iface.clone(),
                fragment: spec.fragment.clone(),
                matches: matches.clone(),
                target: target.clone(),
                goto,
            });
        }
    }
    Ok(rules)
}

/// iptables: "! not allowed with multiple source or destination IP addresses".
fn check_address_lists(spec: &Spec, words: &[Word], cx: &Ctx) -> Res<()> {
    let len = |l: &Option<Negatable<Vec<IpNet>>>| l.as_ref().map_or(0, |l| l.value.len());
    let negated = |l: &Option<Negatable<Vec<IpNet>>>| l.as_ref().is_some_and(|l| l.negated);
    if (len(&spec.srcs) > 1 || len(&spec.dsts) > 1) && (negated(&spec.srcs) || negated(&spec.dsts))
    {
        let at = words.iter().find(|w| w.is("!")).map_or(1, |w| w.col);
        return Err(cx.err(
            at,
            ParseErrorKind::BadValue {
                what: "negation".into(),
                text: "! not allowed with multiple source or destination addresses".into(),
            },
        ));
    }
    Ok(())
}

fn expand(list: &Option<Negatable<Vec<IpNet>>>) -> Vec<Option<Negatable<IpNet>>> {
    match list {
        None => vec![None],
        Some(l) => l
            .value
            .iter()
            .map(|n| Some(Negatable::new(*n, l.negated)))
            .collect(),
    }
}

fn dup(cx: &Ctx, w: &Word) -> ParseError {
    cx.err(
        w.col,
        ParseErrorKind::DuplicateOption {
            option: w.text.clone(),
        },
    )
}

fn set_once<T>(slot: &mut Option<T>, v: T, cx: &Ctx, w: &Word) -> Res<()> {
    if slot.is_some() {
        return Err(dup(cx, w));
    }
    *slot = Some(v);
    Ok(())
}

/// The value after option `opt` at `words[*i]`, with the old `-s ! x` negation form.
fn value<'w>(words: &'w [Word], i: &mut usize, cx: &Ctx, opt: &Word) -> Res<(bool, &'w Word)> {
    let missing = || {
        cx.err(
            opt.col,
            ParseErrorKind::MissingValue {
                option: opt.text.clone(),
            },
        )
    };
    let w = words.get(*i).ok_or_else(missing)?;
    *i += 1;
    if !w.is("!") {
        return Ok((false, w));
    }
    let v = words.get(*i).ok_or_else(missing)?;
    *i += 1;
    Ok((true, v))
}

/// Words from `words[*i]` up to the next generic option (or `!` before one).
fn option_words(words: &[Word], i: &mut usize) -> Vec<Word> {
    let start = *i;
    while let Some(w) = words.get(*i) {
        let negated_generic = w.is("!") && words.get(*i + 1).is_some_and(is_generic);
        if is_generic(w) || negated_generic {
            break;
        }
        *i += 1;
    }
    words[start..*i].to_vec()
}

fn read_spec(words: &[Word], cx: &mut Ctx) -> Res<Spec> {
    let mut spec = Spec::default();
    let mut i = 0;
    let mut neg: Option<&Word> = None;
    while let Some(w) = words.get(i) {
        i += 1;
        if w.is("!") {
            if neg.is_some() {
                return Err(cx.err(w.col, ParseErrorKind::DanglingNegation));
            }
            neg = Some(w);
            continue;
        }
        let negated = neg.take();
        option(&mut spec, words, &mut i, w, negated, cx)?;
    }
    match neg {
        Some(n) => Err(cx.err(n.col, ParseErrorKind::DanglingNegation)),
        None => Ok(spec),
    }
}

/// Handles option `w` (already consumed; `neg` = a `!` before it).
fn option(
    spec: &mut Spec,
    words: &[Word],
    i: &mut usize,
    w: &Word,
    neg: Option<&Word>,
    cx: &mut Ctx,
) -> Res<()> {
    let negatable = |cx: &Ctx| match neg {
        Some(n) => Err(cx.err(n.col, ParseErrorKind::DanglingNegation)),
        None => Ok(()),
    };
    let opt = if w.quoted { "" } else { w.text.as_str() };
    match opt {
        "-p" | "--protocol" => {
            let (old, v) = value(words, i, cx, w)?;
            let p = parse_proto(&v.text).ok_or_else(|| {
                cx.err(
                    v.col,
                    ParseErrorKind::BadProtocol {
                        text: v.text.clone(),
                    },
                )
            })?;
            if p == Proto::All && (neg.is_some() || old) {
                return Err(cx.bad(
                    v,
                    "protocol: `! -p all` would never match (iptables refuses it)",
                ));
            }
            if matches!(
                v.text.to_ascii_lowercase().as_str(),
                "ipv6-icmp" | "icmpv6" | "icmp6"
            ) {
                cx.use_family(Family::Ipv6, v)?;
            }
            set_once(
                &mut spec.protocol,
                Negatable::new(p, neg.is_some() || old),
                cx,
                w,
            )
        }
        "-s" | "--source" | "--src" | "-d" | "--destination" | "--dst" => {
            let (old, v) = value(words, i, cx, w)?;
            let nets = cx.nets(v)?;
            let negated = neg.is_some() || old;
            let is_src = matches!(opt, "-s" | "--source" | "--src");
            let slot = if is_src {
                &mut spec.srcs
            } else {
                &mut spec.dsts
            };
            set_once(slot, Negatable::new(nets, negated), cx, w)
        }
        "-i" | "--in-interface" | "-o" | "--out-interface" => {
            let (old, v) = value(words, i, cx, w)?;
            let iface = Negatable::new(iface(v, cx)?, neg.is_some() || old);
            let is_in = matches!(opt, "-i" | "--in-interface");
            let slot = if is_in {
                &mut spec.in_iface
            } else {
                &mut spec.out_iface
            };
            set_once(slot, iface, cx, w)
        }
        "-f" | "--fragment" => {
            set_once(&mut spec.fragment, Negatable::new((), neg.is_some()), cx, w)
        }
        "-m" | "--match" => {
            negatable(cx)?;
            let (_, name) = value(words, i, cx, w)?;
            let args = option_words(words, i);
            spec.matches.push((name.text.clone(), w.col, args));
            Ok(())
        }
        "-j" | "--jump" | "-g" | "--goto" => {
            negatable(cx)?;
            if spec.target.is_some() || spec.goto.is_some() {
                return Err(dup(cx, w));
            }
            let (_, name) = value(words, i, cx, w)?;
            if matches!(opt, "-g" | "--goto") {
                spec.goto = Some(name.clone());
            } else {
                spec.target = Some((name.clone(), option_words(words, i)));
            }
            Ok(())
        }
        "-c" | "--set-counters" => {
            negatable(cx)?;
            let c = counters_words(words, i, cx, w)?;
            set_once(&mut spec.counters, c, cx, w)
        }
        _ if opt.starts_with("--") => implicit_match(spec, words, i, w, neg, cx),
        _ => Err(cx.err(
            w.col,
            ParseErrorKind::UnknownOption {
                option: w.text.clone(),
            },
        )),
    }
}

/// `-c P B` (also `-c P:B` and `-c [P:B]`).
fn counters_words(words: &[Word], i: &mut usize, cx: &Ctx, opt: &Word) -> Res<Counters> {
    let (_, p) = value(words, i, cx, opt)?;
    let bad = |w: &Word| {
        cx.err(
            w.col,
            ParseErrorKind::BadCounters {
                text: w.text.clone(),
            },
        )
    };
    let inner = p.text.trim_start_matches('[').trim_end_matches(']');
    if let Some((pk, by)) = inner.split_once(':') {
        return match (pk.parse(), by.parse()) {
            (Ok(packets), Ok(bytes)) => Ok(Counters { packets, bytes }),
            _ => Err(bad(p)),
        };
    }
    let (_, b) = value(words, i, cx, opt)?;
    match (p.text.parse(), b.text.parse()) {
        (Ok(packets), Ok(bytes)) => Ok(Counters { packets, bytes }),
        _ => Err(bad(p)),
    }
}

/// An interface name: at most 15 characters (IFNAMSIZ - 1), no blanks or `/`.
fn iface(w: &Word, cx: &Ctx) -> Res<Iface> {
    let ok = !w.text.is_empty()
        && w.text.chars().count() <= 15
        && !w.text.chars().any(|c| c.is_whitespace() || c == '/');
    if !ok {
        return Err(cx.err(
            w.col,
            ParseErrorKind::BadInterface {
                text: w.text.clone(),
            },
        ));
    }
    Ok(Iface::parse(&w.text))
}

/// `--dport 22` after `-p tcp` without `-m tcp`: iptables loads the protocol's module.
fn implicit_match(
    spec: &mut Spec,
    words: &[Word],
    i: &mut usize,
    w: &Word,
    neg: Option<&Word>,
    cx: &Ctx,
) -> Res<()> {
    let unknown = || {
        cx.err(
            w.col,
            ParseErrorKind::UnknownOption {
                option: w.text.clone(),
            },
        )
    };
    let proto = spec
        .protocol
        .as_ref()
        .filter(|p| !p.negated)
        .ok_or_else(unknown)?;
    let module = match proto.value {
        Proto::Num(6) => "tcp",
        Proto::Num(17) => "udp",
        Proto::Num(1) => "icmp",
        Proto::Num(58) => "icmp6",
        Proto::Num(132) => "sctp",
        Proto::Num(136) => "udplite",
        Proto::Num(33) => "dccp",
        _ => return Err(unknown()),
    };
    let mut args: Vec<Word> = neg.into_iter().cloned().collect();
    args.push(w.clone());
    args.extend(option_words(words, i));
    match spec.matches.iter_mut().find(|(m, _, _)| m == module) {
        Some((_, _, existing)) => existing.extend(args),
        None => spec
            .matches
            .push((module.to_string(), neg.unwrap_or(w).col, args)),
    }
    Ok(())
}

fn typed_matches(spec: &Spec, cx: &mut Ctx) -> Res<Vec<Match>> {
    spec.matches
        .iter()
        .map(|(module, column, args)| {
            Ok(Match {
                module: module.clone(),
                args: args.iter().map(|w| w.text.clone()).collect(),
                column: *column,
                kind: parse_match(module, args, cx)?,
            })
        })
        .collect()
}

fn typed_target(spec: &Spec, cx: &mut Ctx, scope: &Scope) -> Res<(Target, bool)> {
    if let Some(g) = &spec.goto {
        if !(scope.has_chain)(&g.text) {
            return Err(cx.err(
                g.col,
                ParseErrorKind::UnknownJumpTarget {
                    table: scope.table.to_string(),
                    chain: g.text.clone(),
                },
            ));
        }
        return Ok((Target::Goto(g.text.clone()), true));
    }
    match &spec.target {
        None => Ok((Target::None, false)),
        Some((name, args)) => {
            let is_chain = (scope.has_chain)(&name.text);
            Ok((parse_target(name, args, is_chain, scope.table, cx)?, false))
        }
    }
}

/// The protocols a module or target is restricted to (the kernel's `xt_match.proto` /
/// `checkentry` tests, which make the whole table fail to load), with their names.
fn required_protocols(what: &str) -> Option<(&'static [u8], &'static str)> {
    Some(match what {
        "tcp" | "tcpmss" | "TCPMSS" => (&[6], "-p tcp"),
        "udp" => (&[17], "-p udp"),
        "udplite" => (&[136], "-p udplite"),
        "sctp" => (&[132], "-p sctp"),
        "dccp" => (&[33], "-p dccp"),
        "icmp" => (&[1], "-p icmp"),
        "icmp6" => (&[58], "-p ipv6-icmp"),
        "multiport" => (&[6, 17, 136, 132, 33], "-p tcp|udp|udplite|sctp|dccp"),
        "TPROXY" => (&[6, 17], "-p tcp|udp"),
        _ => return None,
    })
}

/// Rejects `-p udp -m tcp` and the like: iptables-restore would fail on such a rule.
fn check_protocols(spec: &Spec, matches: &[Match], target: &Target, cx: &Ctx) -> Res<()> {
    let proto = spec.protocol.as_ref().and_then(|p| match p.value {
        Proto::Num(n) if !p.negated => Some(n),
        _ => None,
    });
    let proto_text = || match &spec.protocol {
        None => "no -p".to_string(),
        Some(p) => format!(
            "{}-p {}",
            if p.negated { "! " } else { "" },
            proto_name(p.value)
        ),
    };
    let target_col = spec.target.as_ref().map_or(0, |(w, _)| w.col);
    // Only extension targets: a jump to a user chain named `tcp` is not the tcp module.
    let ext_target = match target {
        Target::TcpMss { .. } | Target::Tproxy(_) => Some((target.name(), target_col)),
        _ => None,
    };
    let items = matches
        .iter()
        .map(|m| (m.module.as_str(), m.column))
        .chain(ext_target);
    for (what, col) in items {
        let Some((allowed, need)) = required_protocols(what) else {
            continue;
        };
        if !proto.is_some_and(|p| allowed.contains(&p)) {
            return Err(cx.err(
                col,
                ParseErrorKind::ProtocolMismatch {
                    what: what.to_string(),
                    need: need.to_string(),
                    proto: proto_text(),
                },
            ));
        }
    }
    Ok(())
}

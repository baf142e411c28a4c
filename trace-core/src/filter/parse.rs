//! Recursive-descent parser: tokens → [`Expr`].
//!
//! Precedence: `not` > `and` > `or` (both binary operators associate left). Note: pcap-filter
//! gives `and` and `or` equal precedence; we use the conventional order (as nft and most
//! languages do) and docs/filter.md says so — add parentheses when in doubt.
//!
//! Qualifier shorthand (tcpdump): after a primitive with a type keyword, a bare value reuses
//! the previous qualifiers: `tcp dst port 80 or 443` = `tcp dst port 80 or tcp dst port 443`.

use super::ast::{Dir, Expr, Net, Prim};
use super::lex::{lex, Tok, Token};
use super::values::{
    host, icmp_type_number, mask_prefix, max_prefix, parse_net_addr, parse_u32, partial_v4, port,
    port_range, proto_number,
};
use super::FilterError;
use crate::netfilter::Family;
use std::net::IpAddr;

/// Parse a filter expression. The empty (or all-blank) filter is [`Expr::True`].
pub fn parse(src: &str) -> Result<Expr, FilterError> {
    let tokens = lex(src)?;
    let mut p = Parser {
        tokens,
        pos: 0,
        end_column: src.chars().count() + 1,
        last: None,
        depth: 0,
    };
    if p.tokens.is_empty() {
        return Ok(Expr::True);
    }
    let e = p.or_expr()?;
    match p.peek() {
        None => Ok(e),
        Some(t) => Err(p.unexpected_at(t.clone(), "'and', 'or' or end of filter")),
    }
}

/// The type keyword of a typed primitive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Host,
    Net,
    Port,
    PortRange,
}

/// Protocol qualifier in front of a typed primitive (`ip host`, `tcp port`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ProtoQ {
    Family(Family),
    Proto(u8),
}

/// Qualifiers of the last typed primitive, reused by the shorthand.
#[derive(Debug, Clone, Copy)]
struct Qual {
    proto: Option<ProtoQ>,
    dir: Dir,
    kind: Kind,
}

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
    end_column: usize,
    last: Option<Qual>,
    /// Current nesting of `(` and `not`, bounded so compilation cannot overflow the stack.
    depth: usize,
}

/// Deepest nesting of parentheses and negations accepted.
pub const MAX_DEPTH: usize = 64;

const KEYWORDS: &[&str] = &[
    "host",
    "net",
    "port",
    "portrange",
    "proto",
    "ip",
    "ip6",
    "tcp",
    "udp",
    "sctp",
    "icmp",
    "icmp6",
    "src",
    "dst",
    "iface",
    "in",
    "out",
    "inbound",
    "outbound",
    "mark",
    "icmp-type",
    "icmp6-type",
    "mask",
];

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos)
    }

    fn peek_word(&self) -> Option<&str> {
        match self.peek().map(|t| &t.tok) {
            Some(Tok::Word(w)) => Some(w.as_str()),
            _ => None,
        }
    }

    fn peek_word_at(&self, ahead: usize) -> Option<&str> {
        match self.tokens.get(self.pos + ahead).map(|t| &t.tok) {
            Some(Tok::Word(w)) => Some(w.as_str()),
            _ => None,
        }
    }

    fn column(&self) -> usize {
        self.peek().map_or(self.end_column, |t| t.column)
    }

    fn unexpected_at(&self, t: Token, expected: &str) -> FilterError {
        FilterError::Unexpected {
            column: t.column,
            expected: expected.into(),
            found: t.describe(),
        }
    }

    fn unexpected(&self, expected: &str) -> FilterError {
        match self.peek() {
            Some(t) => self.unexpected_at(t.clone(), expected),
            None => FilterError::Unexpected {
                column: self.end_column,
                expected: expected.into(),
                found: "end of filter".into(),
            },
        }
    }

    fn eat(&mut self, tok: &Tok) -> bool {
        if self.peek().map(|t| &t.tok) == Some(tok) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn eat_word(&mut self, w: &str) -> bool {
        if self.peek_word() == Some(w) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    /// Next token as a value word: (text, column).
    fn value(&mut self, what: &str) -> Result<(String, usize), FilterError> {
        match self.peek().cloned() {
            Some(Token {
                tok: Tok::Word(w),
                column,
            }) => {
                self.pos += 1;
                Ok((w, column))
            }
            _ => Err(self.unexpected(what)),
        }
    }

    fn or_expr(&mut self) -> Result<Expr, FilterError> {
        let mut e = self.and_expr()?;
        while self.eat(&Tok::Or) {
            e = Expr::Or(Box::new(e), Box::new(self.and_expr()?));
        }
        Ok(e)
    }

    fn and_expr(&mut self) -> Result<Expr, FilterError> {
        let mut e = self.unary()?;
        while self.eat(&Tok::And) {
            e = Expr::And(Box::new(e), Box::new(self.unary()?));
        }
        Ok(e)
    }

    fn unary(&mut self) -> Result<Expr, FilterError> {
        let nests = matches!(self.peek().map(|t| &t.tok), Some(Tok::Not | Tok::LParen));
        if !nests {
            return self.primitive();
        }
        if self.depth >= MAX_DEPTH {
            return Err(FilterError::TooDeep {
                column: self.column(),
                max: MAX_DEPTH,
            });
        }
        self.depth += 1;
        let e = self.nested();
        self.depth -= 1;
        e
    }

    /// `not X` or `( X )`.
    fn nested(&mut self) -> Result<Expr, FilterError> {
        if self.eat(&Tok::Not) {
            return Ok(Expr::Not(Box::new(self.unary()?)));
        }
        if self.eat(&Tok::LParen) {
            let e = self.or_expr()?;
            if !self.eat(&Tok::RParen) {
                return Err(self.unexpected("')'"));
            }
            return Ok(e);
        }
        self.primitive()
    }

    fn primitive(&mut self) -> Result<Expr, FilterError> {
        let Some(word) = self.peek_word().map(str::to_owned) else {
            return Err(self.unexpected("a filter primitive"));
        };
        match word.as_str() {
            "proto" => {
                self.pos += 1;
                self.proto_value().map(|p| Expr::Prim(Prim::Proto(p)))
            }
            "mark" => {
                self.pos += 1;
                self.mark()
            }
            "icmp-type" | "icmp6-type" => {
                self.pos += 1;
                self.icmp_type(word == "icmp6-type")
            }
            "iface" | "in" | "out" | "inbound" | "outbound" => self.iface(),
            "src" | "dst" | "host" | "net" | "port" | "portrange" => self.typed(None),
            "ip" | "ip6" | "tcp" | "udp" | "sctp" | "icmp" | "icmp6" => self.proto_qualified(),
            _ if !KEYWORDS.contains(&word.as_str()) => self.bare_value(),
            _ => Err(self.unexpected("a filter primitive")),
        }
    }

    /// `ip`, `tcp`, ... alone, or qualifying what follows (`ip proto 6`, `tcp dst port 80`).
    fn proto_qualified(&mut self) -> Result<Expr, FilterError> {
        let (word, column) = self.value("a protocol")?;
        let q = match word.as_str() {
            "ip" => ProtoQ::Family(Family::Ipv4),
            "ip6" => ProtoQ::Family(Family::Ipv6),
            other => match proto_number(other) {
                Some(p) => ProtoQ::Proto(p),
                None => {
                    return Err(FilterError::InvalidValue {
                        column,
                        what: "protocol",
                        text: word,
                    })
                }
            },
        };
        let bare = proto_expr(q);
        match (q, self.peek_word()) {
            (ProtoQ::Family(_), Some("proto")) => {
                self.pos += 1;
                let p = self.proto_value()?;
                Ok(and(bare, Expr::Prim(Prim::Proto(p))))
            }
            (_, Some("src" | "dst" | "host" | "net" | "port" | "portrange")) => self.typed(Some(q)),
            _ => Ok(bare),
        }
    }

    /// `[src|dst|src or dst|src and dst] (host|net|port|portrange) VALUE`.
    fn typed(&mut self, proto: Option<ProtoQ>) -> Result<Expr, FilterError> {
        let dir = self.dir_qualifier();
        let kind_col = self.column();
        let kind = match self.peek_word() {
            Some("host") => Kind::Host,
            Some("net") => Kind::Net,
            Some("port") => Kind::Port,
            Some("portrange") => Kind::PortRange,
            // tcpdump: without a type keyword, `src 10.0.0.1` means host (net for a prefix).
            Some(w) if dir.is_some() && !KEYWORDS.contains(&w) && w.contains('/') => Kind::Net,
            Some(w) if dir.is_some() && !KEYWORDS.contains(&w) => Kind::Host,
            _ => return Err(self.unexpected("'host', 'net', 'port' or 'portrange'")),
        };
        let typed_keyword = matches!(
            self.peek_word(),
            Some("host" | "net" | "port" | "portrange")
        );
        if typed_keyword {
            self.pos += 1;
        }
        let qual = Qual {
            proto,
            dir: dir.unwrap_or(Dir::Either),
            kind,
        };
        check_proto_kind(qual, kind_col)?;
        self.last = Some(qual);
        self.typed_value(qual)
    }

    /// `src`, `dst`, `src or dst`, `src and dst` (None if absent).
    fn dir_qualifier(&mut self) -> Option<Dir> {
        let first = match self.peek_word() {
            Some("src") => Dir::Src,
            Some("dst") => Dir::Dst,
            _ => return None,
        };
        self.pos += 1;
        let other = if first == Dir::Src { "dst" } else { "src" };
        let combined = match self.peek().map(|t| &t.tok) {
            Some(Tok::Or) => Dir::Either,
            Some(Tok::And) => Dir::Both,
            _ => return Some(first),
        };
        // `src or dst host X`: only a qualifier when the other direction keyword follows.
        if self.peek_word_at(1) == Some(other) {
            self.pos += 2;
            return Some(combined);
        }
        Some(first)
    }

    /// A value with the qualifiers of `qual`, plus its protocol qualifier.
    fn typed_value(&mut self, qual: Qual) -> Result<Expr, FilterError> {
        let (text, column) = self.value("a value")?;
        let prim = match qual.kind {
            Kind::Host => Prim::Net {
                dir: qual.dir,
                net: host(&text, column)?,
            },
            Kind::Net => Prim::Net {
                dir: qual.dir,
                net: self.net(&text, column)?,
            },
            Kind::Port => {
                let p = port(&text, column)?;
                Prim::Port {
                    dir: qual.dir,
                    lo: p,
                    hi: p,
                }
            }
            Kind::PortRange => {
                let (lo, hi) = port_range(&text, column)?;
                Prim::Port {
                    dir: qual.dir,
                    lo,
                    hi,
                }
            }
        };
        if let (Some(ProtoQ::Family(f)), Prim::Net { net, .. }) = (qual.proto, &prim) {
            if net.family() != f {
                return Err(FilterError::InvalidValue {
                    column,
                    what: "address for this family qualifier",
                    text,
                });
            }
        }
        let e = Expr::Prim(prim);
        Ok(match qual.proto {
            Some(q) => and(proto_expr(q), e),
            None => e,
        })
    }

    /// A word that is not a keyword: the shorthand value, or a bare address (= `host`/`net`).
    fn bare_value(&mut self) -> Result<Expr, FilterError> {
        if let Some(q) = self.last {
            return self.typed_value(q);
        }
        let (text, column) = self.value("a value")?;
        if text.parse::<IpAddr>().is_ok() || text.contains('/') {
            let net = self.net(&text, column)?;
            return Ok(Expr::Prim(Prim::Net {
                dir: Dir::Either,
                net,
            }));
        }
        Err(FilterError::Unexpected {
            column,
            expected: "a filter primitive".into(),
            found: format!("'{text}'"),
        })
    }

    /// `N/len`, `N mask M`, or `N` (IPv4 with fewer than 4 octets: /8, /16, /24 as tcpdump).
    fn net(&mut self, text: &str, column: usize) -> Result<Net, FilterError> {
        let bad = |what: &'static str| FilterError::InvalidValue {
            column,
            what,
            text: text.into(),
        };
        let (addr, prefix) = if let Some((a, len)) = text.split_once('/') {
            let addr = parse_net_addr(a).ok_or_else(|| bad("network address"))?;
            let max = max_prefix(addr);
            let prefix = len
                .parse::<u8>()
                .ok()
                .filter(|l| *l <= max)
                .ok_or_else(|| bad("prefix length"))?;
            (addr, prefix)
        } else if self.eat_word("mask") {
            let addr = parse_net_addr(text).ok_or_else(|| bad("network address"))?;
            let (mtext, mcol) = self.value("a netmask")?;
            let prefix = mask_prefix(&mtext, addr).ok_or(FilterError::InvalidValue {
                column: mcol,
                what: "netmask (contiguous, same family)",
                text: mtext,
            })?;
            (addr, prefix)
        } else {
            partial_v4(text)
                .or_else(|| text.parse::<IpAddr>().ok().map(|a| (a, max_prefix(a))))
                .ok_or_else(|| bad("network"))?
        };
        let net = Net { addr, prefix };
        if !net.contains(addr) {
            return Err(FilterError::InvalidValue {
                column,
                what: "network (host bits set)",
                text: text.into(),
            });
        }
        Ok(net)
    }

    fn proto_value(&mut self) -> Result<u8, FilterError> {
        let (text, column) = self.value("a protocol name or number")?;
        proto_number(&text)
            .or_else(|| parse_u32(&text).and_then(|n| u8::try_from(n).ok()))
            .ok_or(FilterError::InvalidValue {
                column,
                what: "protocol",
                text,
            })
    }

    fn mark(&mut self) -> Result<Expr, FilterError> {
        let (text, column) = self.value("a mark value")?;
        let bad = |what: &'static str| FilterError::InvalidValue {
            column,
            what,
            text: text.clone(),
        };
        let (v, m) = match text.split_once('/') {
            Some((v, m)) => (
                parse_u32(v).ok_or_else(|| bad("mark"))?,
                parse_u32(m).ok_or_else(|| bad("mark mask"))?,
            ),
            None => (parse_u32(&text).ok_or_else(|| bad("mark"))?, u32::MAX),
        };
        if v & !m != 0 {
            return Err(bad("mark (value has bits outside the mask)"));
        }
        Ok(Expr::Prim(Prim::Mark { value: v, mask: m }))
    }

    fn icmp_type(&mut self, v6: bool) -> Result<Expr, FilterError> {
        let (text, column) = self.value("an ICMP type")?;
        let t = icmp_type_number(&text, v6)
            .or_else(|| parse_u32(&text).and_then(|n| u8::try_from(n).ok()))
            .ok_or(FilterError::InvalidValue {
                column,
                what: "ICMP type",
                text,
            })?;
        let proto = if v6 { 58 } else { 1 };
        Ok(and(
            Expr::Prim(Prim::Proto(proto)),
            Expr::Prim(Prim::IcmpType(t)),
        ))
    }

    /// `[in|out|inbound|outbound] iface NAME`.
    fn iface(&mut self) -> Result<Expr, FilterError> {
        let dir = match self.peek_word() {
            Some("in" | "inbound") => Some(Dir::Src),
            Some("out" | "outbound") => Some(Dir::Dst),
            _ => None,
        };
        if dir.is_some() {
            self.pos += 1;
        }
        if !self.eat_word("iface") {
            return Err(self.unexpected("'iface'"));
        }
        let (text, column) = self.value("an interface name")?;
        let (name, prefix) = match text.strip_suffix('+') {
            Some(p) => (p.to_owned(), true),
            None => (text.clone(), false),
        };
        let valid = !name.contains(['+', '/']) && (prefix || !name.is_empty()) && name.len() < 16;
        if !valid {
            return Err(FilterError::InvalidValue {
                column,
                what: "interface name (at most 15 bytes, optional trailing +)",
                text,
            });
        }
        Ok(Expr::Prim(Prim::Iface {
            dir: dir.unwrap_or(Dir::Either),
            name,
            prefix,
        }))
    }
}

fn and(a: Expr, b: Expr) -> Expr {
    Expr::And(Box::new(a), Box::new(b))
}

fn proto_expr(q: ProtoQ) -> Expr {
    match q {
        ProtoQ::Family(f) => Expr::Prim(Prim::Family(f)),
        ProtoQ::Proto(p) => Expr::Prim(Prim::Proto(p)),
    }
}

/// `tcp host X` means nothing (tcpdump refuses it too); `icmp port 80` can never match.
fn check_proto_kind(q: Qual, column: usize) -> Result<(), FilterError> {
    let ok = match (q.proto, q.kind) {
        (None | Some(ProtoQ::Family(_)), _) => true,
        (Some(ProtoQ::Proto(p)), Kind::Port | Kind::PortRange) => matches!(p, 6 | 17 | 132),
        (Some(ProtoQ::Proto(_)), Kind::Host | Kind::Net) => false,
    };
    if ok {
        Ok(())
    } else {
        Err(FilterError::Unsupported {
            column,
            what: "this protocol qualifier with this primitive".into(),
            hint: "use 'ip'/'ip6' before host/net, and tcp/udp/sctp before port/portrange".into(),
        })
    }
}

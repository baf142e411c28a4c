//! `-m MODULE --options...`: the typed options of the common match modules, and how much of
//! each the evaluator can decide from a captured packet ([`Decidability`]).
//!
//! Every option keeps its `!`. A module this file does not type — or a typed module with an
//! option it does not know — is kept verbatim as [`MatchKind::Unknown`] (never rejected,
//! never half-typed), with [`Decidability::Unknown`] unless the module name is listed in
//! [`module_decidability`].

use super::model::{Iface, IpNet, Negatable};
use serde::{Deserialize, Serialize};
use std::net::IpAddr;

/// One `-m module options...` (or an implicit protocol match).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Match {
    /// The module name as written (`tcp`, `conntrack`, `comment`, ...).
    pub module: String,
    /// The option words after `-m module`, verbatim (unquoted), `!` included.
    pub args: Vec<String>,
    /// 1-based column of `-m` (or of the first option of an implicit match).
    pub column: u32,
    pub kind: MatchKind,
}

impl Match {
    /// How much of this match the evaluator can decide from a captured packet. An untyped
    /// match ([`MatchKind::Unknown`]) is never reported as decidable from the packet: it is
    /// the module's own class when that is already undecidable (`hashlimit` →
    /// Nondeterministic), else [`Decidability::Unknown`] (options not modelled).
    pub fn decidability(&self) -> Decidability {
        match &self.kind {
            MatchKind::Unknown => match module_decidability(&self.module) {
                d if d.from_packet() => Decidability::Unknown,
                d => d,
            },
            kind => kind.decidability(),
        }
    }
}

/// What the evaluator needs to decide a match.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decidability {
    /// Always true (`comment`).
    Always,
    /// L3/L4 headers and the hook's in/out devices (`tcp`, `icmp`, `multiport`, `iprange`,
    /// `length`, `ttl`, `mac`, ...).
    Headers,
    /// skb metadata the probes capture: mark, conntrack state/status/tuple, pkt_type.
    Metadata,
    /// Host state outside the skb: local addresses (`addrtype`), bridge ports (`physdev`),
    /// sockets (`socket`, `owner`), routing (`rpfilter`), device groups.
    HostState,
    /// Payload bytes the probes do not capture (`string`, `u32`, `bpf`).
    Payload,
    /// Kernel state that changes per packet: ipset contents (`set`), `recent` lists,
    /// `connlimit`, `quota`, `connbytes`.
    ExternalState,
    /// Randomness or time: `statistic`, `limit`, `hashlimit`, `time`.
    Nondeterministic,
    /// A module iptrace does not model.
    Unknown,
}

impl Decidability {
    /// True when the captured packet alone (headers + metadata) decides the match.
    pub fn from_packet(self) -> bool {
        matches!(
            self,
            Decidability::Always | Decidability::Headers | Decidability::Metadata
        )
    }
}

/// Decidability of a module known by name only (kept as [`MatchKind::Unknown`]).
pub fn module_decidability(module: &str) -> Decidability {
    use Decidability::*;
    match module {
        "comment" => Always,
        "tcp" | "udp" | "udplite" | "sctp" | "dccp" | "icmp" | "icmp6" | "icmpv6" | "multiport"
        | "iprange" | "length" | "ttl" | "hl" | "mac" | "tos" | "dscp" | "ecn" | "tcpmss"
        | "esp" | "ah" | "frag" | "rt" | "hbh" | "dst" | "ipv6header" | "mh" => Headers,
        "mark" | "connmark" | "conntrack" | "state" | "pkttype" | "helper" | "cpu" => Metadata,
        "addrtype" | "physdev" | "socket" | "owner" | "rpfilter" | "devgroup" | "cgroup"
        | "ipvs" | "realm" | "policy" | "cluster" => HostState,
        "string" | "u32" | "bpf" => Payload,
        "set" | "recent" | "connlimit" | "quota" | "connbytes" | "nfacct" | "connlabel" => {
            ExternalState
        }
        "statistic" | "limit" | "hashlimit" | "time" => Nondeterministic,
        _ => Unknown,
    }
}

/// The typed options of a module. Typed variants hold every option the module was given.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "options", rename_all = "snake_case")]
pub enum MatchKind {
    Tcp(TcpMatch),
    Udp(PortsMatch),
    Sctp(PortsMatch),
    Icmp(IcmpMatch),
    /// `-m icmp6 --icmpv6-type`.
    Icmp6(IcmpMatch),
    Multiport(MultiportMatch),
    Conntrack(ConntrackMatch),
    /// `-m state --state` (same semantics as `conntrack --ctstate`).
    State(Negatable<Vec<CtState>>),
    AddrType(AddrTypeMatch),
    /// `--mark value[/mask]`: `(skb->mark & mask) == value`.
    Mark(Negatable<MarkMask>),
    /// `--mark value[/mask]` on the conntrack mark.
    Connmark(Negatable<MarkMask>),
    Comment(String),
    IpRange(IpRangeMatch),
    /// `--mac-source`.
    Mac(Negatable<[u8; 6]>),
    Physdev(PhysdevMatch),
    PktType(Negatable<PktType>),
    /// `--length min[:max]` (IPv4 total length / IPv6 payload length + 40).
    Length(Negatable<Range>),
    /// `--ttl-eq/-lt/-gt` (IPv4 TTL).
    Ttl(Negatable<Cmp>),
    /// `--hl-eq/-lt/-gt` (IPv6 hop limit).
    HopLimit(Negatable<Cmp>),
    /// `--mss min[:max]` on SYN packets.
    TcpMss(Negatable<Range>),
    /// `--dscp N` / `--dscp-class`.
    Dscp(Negatable<u8>),
    /// `--tos value[/mask]`.
    Tos(Negatable<MarkMask>),
    /// `--helper NAME`.
    Helper(Negatable<String>),
    Statistic(StatisticMatch),
    Limit(LimitMatch),
    Recent(RecentMatch),
    Set(SetMatch),
    Socket(SocketMatch),
    Owner(OwnerMatch),
    /// Not typed: see [`Match::args`] for the options and [`module_decidability`].
    Unknown,
}

impl MatchKind {
    /// How much of this (typed) match a captured packet decides. [`MatchKind::Unknown`]
    /// answers Unknown here; use [`Match::decidability`], which knows the module name.
    pub fn decidability(&self) -> Decidability {
        use Decidability::*;
        match self {
            MatchKind::Comment(_) => Always,
            MatchKind::Tcp(_)
            | MatchKind::Udp(_)
            | MatchKind::Sctp(_)
            | MatchKind::Icmp(_)
            | MatchKind::Icmp6(_)
            | MatchKind::Multiport(_)
            | MatchKind::IpRange(_)
            | MatchKind::Mac(_)
            | MatchKind::Length(_)
            | MatchKind::Ttl(_)
            | MatchKind::HopLimit(_)
            | MatchKind::TcpMss(_)
            | MatchKind::Dscp(_)
            | MatchKind::Tos(_) => Headers,
            MatchKind::Conntrack(_)
            | MatchKind::State(_)
            | MatchKind::Mark(_)
            | MatchKind::Connmark(_)
            | MatchKind::PktType(_)
            | MatchKind::Helper(_) => Metadata,
            MatchKind::AddrType(_)
            | MatchKind::Physdev(_)
            | MatchKind::Socket(_)
            | MatchKind::Owner(_) => HostState,
            MatchKind::Recent(_) | MatchKind::Set(_) => ExternalState,
            MatchKind::Statistic(s) => s.decidability(),
            MatchKind::Limit(_) => Nondeterministic,
            MatchKind::Unknown => Unknown,
        }
    }
}

/// An inclusive numeric range (`80`, `1024:65535`, `:1023` = 0..=1023, `1024:` = 1024..=max).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Range {
    pub lo: u32,
    pub hi: u32,
}

impl Range {
    pub fn single(v: u32) -> Self {
        Range { lo: v, hi: v }
    }

    pub fn contains(&self, v: u32) -> bool {
        self.lo <= v && v <= self.hi
    }
}

/// `value/mask`; a missing mask is all ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MarkMask {
    pub value: u32,
    pub mask: u32,
}

impl MarkMask {
    /// `(mark & mask) == value`, as xt_mark does.
    pub fn matches(&self, mark: u32) -> bool {
        mark & self.mask == self.value
    }
}

/// `--tcp-flags MASK COMP` (bits: FIN 0x01, SYN 0x02, RST 0x04, PSH 0x08, ACK 0x10,
/// URG 0x20, ECE 0x40, CWR 0x80). `--syn` is `SYN,RST,ACK,FIN SYN`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TcpFlags {
    pub mask: u8,
    pub comp: u8,
}

impl TcpFlags {
    pub const SYN_ONLY: TcpFlags = TcpFlags {
        mask: 0x17,
        comp: 0x02,
    };

    pub fn matches(&self, flags: u8) -> bool {
        flags & self.mask == self.comp
    }
}

/// `-m tcp`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct TcpMatch {
    pub sport: Option<Negatable<Range>>,
    pub dport: Option<Negatable<Range>>,
    /// `--tcp-flags` or `--syn`.
    pub flags: Option<Negatable<TcpFlags>>,
    /// `--tcp-option N`.
    pub option: Option<Negatable<u8>>,
}

/// `-m udp` / `-m sctp` (sctp's `--chunk-types` makes the match [`MatchKind::Unknown`]).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct PortsMatch {
    pub sport: Option<Negatable<Range>>,
    pub dport: Option<Negatable<Range>>,
}

/// An ICMP / ICMPv6 type filter: `--icmp-type any|N[/code]|name`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct IcmpType {
    /// None for `any`.
    pub ty: Option<u8>,
    /// Code range (0..=255 when no code was given).
    pub code_lo: u8,
    pub code_hi: u8,
}

impl IcmpType {
    pub fn matches(&self, ty: u8, code: u8) -> bool {
        self.ty.is_none_or(|t| t == ty) && self.code_lo <= code && code <= self.code_hi
    }
}

/// `-m icmp --icmp-type` / `-m icmp6 --icmpv6-type`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IcmpMatch {
    pub icmp_type: Option<Negatable<IcmpType>>,
}

/// Which port(s) `-m multiport` tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PortDir {
    /// `--sports` / `--source-ports`.
    Src,
    /// `--dports` / `--destination-ports`.
    Dst,
    /// `--ports`: source or destination.
    Either,
}

/// `-m multiport --dports 80,443,8000:8100` (negation applies to the whole list).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MultiportMatch {
    pub dir: PortDir,
    pub ports: Negatable<Vec<Range>>,
}

/// Conntrack states (`--ctstate` / `--state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum CtState {
    Invalid,
    New,
    Established,
    Related,
    Untracked,
    /// `--ctstate SNAT`/`DNAT`: the connection has that NAT (conntrack only).
    Snat,
    Dnat,
}

/// Conntrack status bits (`--ctstatus`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum CtStatus {
    None,
    Expected,
    SeenReply,
    Assured,
    Confirmed,
}

/// `--ctdir ORIGINAL|REPLY`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum CtDir {
    Original,
    Reply,
}

/// `-m conntrack` (every option optional, each with its own `!`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ConntrackMatch {
    pub state: Option<Negatable<Vec<CtState>>>,
    pub status: Option<Negatable<Vec<CtStatus>>>,
    /// `--ctproto` (0 = all).
    pub proto: Option<Negatable<u8>>,
    pub orig_src: Option<Negatable<IpNet>>,
    pub orig_dst: Option<Negatable<IpNet>>,
    pub repl_src: Option<Negatable<IpNet>>,
    pub repl_dst: Option<Negatable<IpNet>>,
    pub orig_src_port: Option<Negatable<Range>>,
    pub orig_dst_port: Option<Negatable<Range>>,
    pub repl_src_port: Option<Negatable<Range>>,
    pub repl_dst_port: Option<Negatable<Range>>,
    pub dir: Option<CtDir>,
    /// `--ctexpire min[:max]` seconds.
    pub expire: Option<Negatable<Range>>,
}

/// Address types of `-m addrtype` (RTN_*).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum AddrType {
    Unspec,
    Unicast,
    Local,
    Broadcast,
    Anycast,
    Multicast,
    Blackhole,
    Unreachable,
    Prohibit,
    Throw,
    Nat,
    Xresolve,
}

/// `-m addrtype`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct AddrTypeMatch {
    pub src_type: Option<Negatable<Vec<AddrType>>>,
    pub dst_type: Option<Negatable<Vec<AddrType>>>,
    /// `--limit-iface-in`: look the address up on the input device only.
    pub limit_iface_in: bool,
    pub limit_iface_out: bool,
}

/// `-m iprange --src-range a-b --dst-range a-b` (inclusive).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct IpRangeMatch {
    pub src: Option<Negatable<(IpAddr, IpAddr)>>,
    pub dst: Option<Negatable<(IpAddr, IpAddr)>>,
}

/// `-m physdev` (bridge ports; needs br_netfilter).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct PhysdevMatch {
    pub physdev_in: Option<Negatable<Iface>>,
    pub physdev_out: Option<Negatable<Iface>>,
    /// `[!] --physdev-is-in` (value unused).
    pub is_in: Option<Negatable<()>>,
    pub is_out: Option<Negatable<()>>,
    pub is_bridged: Option<Negatable<()>>,
}

/// `--pkt-type unicast|broadcast|multicast` (also `host`, `otherhost`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PktType {
    Unicast,
    Broadcast,
    Multicast,
    Host,
    OtherHost,
}

/// A comparison of `-m ttl` / `-m hl`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CmpOp {
    Eq,
    Lt,
    Gt,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Cmp {
    pub op: CmpOp,
    pub value: u8,
}

impl Cmp {
    pub fn matches(&self, v: u8) -> bool {
        match self.op {
            CmpOp::Eq => v == self.value,
            CmpOp::Lt => v < self.value,
            CmpOp::Gt => v > self.value,
        }
    }
}

/// `-m statistic`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatisticMatch {
    pub mode: StatisticMode,
    /// A `!` before `--probability` / `--every`.
    pub negated: bool,
}

impl StatisticMatch {
    /// Both modes depend on what other packets did: a branch point for the evaluator.
    pub fn decidability(&self) -> Decidability {
        Decidability::Nondeterministic
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "lowercase")]
pub enum StatisticMode {
    /// `--mode random --probability P` (0.0..=1.0).
    Random { probability: f64 },
    /// `--mode nth --every N [--packet P]`.
    Nth { every: u32, packet: u32 },
}

/// `-m limit --limit RATE --limit-burst N` (rate kept as written: `5/min`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LimitMatch {
    pub rate: Option<String>,
    pub burst: Option<u32>,
}

/// What `-m recent` does with its list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecentMode {
    Set,
    Rcheck,
    Update,
    Remove,
}

/// `-m recent` (list contents are kernel state: undecidable from the packet).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecentMatch {
    pub name: String,
    pub mode: Option<RecentMode>,
    /// A `!` before the mode option.
    pub negated: bool,
    pub seconds: Option<u32>,
    pub hitcount: Option<u32>,
    pub reap: bool,
    pub rttl: bool,
    /// True for `--rdest` (default `--rsource`).
    pub rdest: bool,
    pub mask: Option<IpAddr>,
}

/// `-m set [!] --match-set NAME src,dst[,..]`. The counter options (`--packets-gt N`,
/// `! --update-counters`, `--return-nomatch`, ...) are accepted and kept only in
/// [`Match::args`]: the set contents are undecidable anyway.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SetMatch {
    pub name: String,
    /// One entry per dimension: true = `src`, false = `dst`.
    pub src_flags: Vec<bool>,
    pub negated: bool,
}

/// `-m socket [--transparent] [--nowildcard] [--restore-skmark]`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct SocketMatch {
    pub transparent: bool,
    pub nowildcard: bool,
    pub restore_skmark: bool,
}

/// `-m owner` (OUTPUT/POSTROUTING only).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct OwnerMatch {
    pub uid: Option<Negatable<Range>>,
    pub gid: Option<Negatable<Range>>,
    pub socket_exists: Option<Negatable<()>>,
}

//! Packet filter ABI: the compiled form of a tcpdump-style expression (built in userspace by
//! `trace_core::filter::compile`) and the per-packet input the first probe fills from the skb.
//!
//! The program is in disjunctive normal form: it matches when ANY clause matches, and a clause
//! matches when ALL its predicates match. Negation lives on the predicates (De Morgan is applied
//! by the compiler), so evaluation is two fixed-bound loops with no recursion: the shape the eBPF
//! verifier accepts. [`matches`] is the single evaluator, used by the eBPF programs and by the
//! host tests alike.
//!
//! Semantics worth knowing:
//! - `n_clauses == 0` matches nothing; a clause with `n_preds == 0` matches everything. The
//!   empty filter compiles to one empty clause (match all). A zeroed map value matches nothing.
//! - A predicate on a header the packet does not have is false before negation: `port 80` is
//!   false for ICMP and for non-first fragments (tcpdump semantics), so `not port 80` is true.
//! - Addresses are in network byte order (as on the wire). IPv4 uses bytes 0..4, the rest zero.

/// Maximum clauses (OR terms) of a program.
pub const FILTER_MAX_CLAUSES: usize = 16;
/// Maximum predicates (AND terms) of a clause.
pub const FILTER_MAX_PREDS: usize = 8;
/// Interface name length (IFNAMSIZ, NUL included).
pub const IFNAME_LEN: usize = 16;

/// NFPROTO_IPV4 / NFPROTO_IPV6, the values of [`FilterInput::family`] and predicate families.
pub const FAMILY_IPV4: u8 = 2;
pub const FAMILY_IPV6: u8 = 10;

/// IP protocol numbers the evaluator needs to know (which protocols carry ports / ICMP types).
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMPV6: u8 = 58;
pub const IPPROTO_SCTP: u8 = 132;

/// Predicate kinds ([`FilterPredicate::kind`]).
pub mod pred_kind {
    /// Always true (padding / compiler use).
    pub const TRUE: u8 = 0;
    /// `family == lo` (`ip`, `ip6`).
    pub const FAMILY: u8 = 1;
    /// `proto == lo` (`tcp`, `proto 47`). Family-independent unless `family` is set.
    pub const PROTO: u8 = 2;
    /// Address under `mask` equals `addr` (`host`, `net`), on the sides given by `dir`.
    /// Only packets of `family` can match.
    pub const ADDR: u8 = 3;
    /// Port in `lo..=hi` (`port`, `portrange`), on the sides given by `dir`; only TCP, UDP and
    /// SCTP packets with a readable transport header can match.
    pub const PORT: u8 = 4;
    /// Interface name (`iface`): `name` compared up to its NUL, or only its first `lo` bytes
    /// when `hi == 1` (iptables-style `eth+` prefix); sides from `dir` (SRC = in, DST = out).
    pub const IFACE: u8 = 5;
    /// `(mark & hi) == lo` (`mark V/MASK`).
    pub const MARK: u8 = 6;
    /// ICMP or ICMPv6 type == lo (`icmp-type N`); only ICMP packets with a readable header.
    pub const ICMP_TYPE: u8 = 7;
}

/// Which side(s) of the packet a predicate looks at ([`FilterPredicate::dir`]).
/// For IFACE, SRC means the input device and DST the output device.
pub mod dir {
    pub const SRC: u8 = 1;
    pub const DST: u8 = 2;
    /// Source or destination (`host A`, `port P`, `iface X`).
    pub const EITHER: u8 = 3;
    /// Source and destination (`src and dst host A`).
    pub const BOTH: u8 = 4;
}

/// [`FilterInput::flags`] bits.
pub mod input_flags {
    /// The transport header was read: sport/dport (TCP/UDP/SCTP) or icmp_type (ICMP) are valid.
    /// Clear it for non-first fragments and unreadable headers.
    pub const L4_VALID: u8 = 1;
}

/// One predicate (64 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FilterPredicate {
    /// One of [`pred_kind`].
    pub kind: u8,
    /// 1 = invert the result.
    pub negate: u8,
    /// For ADDR: the address family (FAMILY_IPV4/IPV6). For PROTO/PORT/ICMP_TYPE: 0 (any).
    pub family: u8,
    /// One of [`dir`] (ADDR, PORT, IFACE).
    pub dir: u8,
    pub _pad0: [u8; 4],
    pub addr: [u8; 16],
    pub mask: [u8; 16],
    pub lo: u32,
    pub hi: u32,
    pub name: [u8; IFNAME_LEN],
}

/// One AND-clause (520 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FilterClause {
    pub n_preds: u32,
    pub _pad0: u32,
    pub preds: [FilterPredicate; FILTER_MAX_PREDS],
}

/// A compiled filter (8328 bytes): too big for the BPF stack, keep it in an array map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FilterProgram {
    pub n_clauses: u32,
    pub _pad0: u32,
    pub clauses: [FilterClause; FILTER_MAX_CLAUSES],
}

/// What the filter sees of a packet (80 bytes), filled by the first probe the skb meets.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FilterInput {
    /// FAMILY_IPV4 or FAMILY_IPV6.
    pub family: u8,
    /// Transport protocol (IPv6: the upper-layer header after extension headers).
    pub proto: u8,
    /// [`input_flags`].
    pub flags: u8,
    pub icmp_type: u8,
    /// skb->mark.
    pub mark: u32,
    /// Network byte order; IPv4 in bytes 0..4, bytes 4..16 zero.
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    /// Host byte order.
    pub sport: u16,
    pub dport: u16,
    pub _pad0: u32,
    /// Device names, NUL-terminated (all zero when there is no device on that side).
    pub in_dev: [u8; IFNAME_LEN],
    pub out_dev: [u8; IFNAME_LEN],
}

const _: () = assert!(core::mem::size_of::<FilterPredicate>() == 64);
const _: () = assert!(core::mem::size_of::<FilterClause>() == 8 + 64 * FILTER_MAX_PREDS);
const _: () = assert!(core::mem::size_of::<FilterProgram>() == 8 + 520 * FILTER_MAX_CLAUSES);
const _: () = assert!(core::mem::size_of::<FilterInput>() == 80);

// SAFETY: plain #[repr(C)] data with explicit padding fields, every bit pattern valid.
#[cfg(feature = "user")]
unsafe impl aya::Pod for FilterPredicate {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for FilterClause {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for FilterProgram {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for FilterInput {}

impl FilterPredicate {
    pub const ZERO: FilterPredicate = FilterPredicate {
        kind: pred_kind::TRUE,
        negate: 0,
        family: 0,
        dir: 0,
        _pad0: [0; 4],
        addr: [0; 16],
        mask: [0; 16],
        lo: 0,
        hi: 0,
        name: [0; IFNAME_LEN],
    };
}

impl FilterClause {
    pub const EMPTY: FilterClause =
        FilterClause { n_preds: 0, _pad0: 0, preds: [FilterPredicate::ZERO; FILTER_MAX_PREDS] };
}

impl FilterProgram {
    /// Matches nothing (no clause).
    pub const NONE: FilterProgram =
        FilterProgram { n_clauses: 0, _pad0: 0, clauses: [FilterClause::EMPTY; FILTER_MAX_CLAUSES] };

    /// Matches everything (one empty clause): the compiled empty filter.
    pub const fn match_all() -> FilterProgram {
        let mut p = Self::NONE;
        p.n_clauses = 1;
        p
    }
}

impl FilterInput {
    pub const ZERO: FilterInput = FilterInput {
        family: 0,
        proto: 0,
        flags: 0,
        icmp_type: 0,
        mark: 0,
        saddr: [0; 16],
        daddr: [0; 16],
        sport: 0,
        dport: 0,
        _pad0: 0,
        in_dev: [0; IFNAME_LEN],
        out_dev: [0; IFNAME_LEN],
    };
}

/// Does the packet described by `input` match the program? No allocation, no recursion, no
/// panic path; loops have constant bounds (FILTER_MAX_CLAUSES × FILTER_MAX_PREDS × 16 bytes).
#[inline(always)]
pub fn matches(prog: &FilterProgram, input: &FilterInput) -> bool {
    let n = prog.n_clauses as usize;
    for (i, clause) in prog.clauses.iter().enumerate() {
        if i >= n {
            break;
        }
        if clause_matches(clause, input) {
            return true;
        }
    }
    false
}

#[inline(always)]
fn clause_matches(clause: &FilterClause, input: &FilterInput) -> bool {
    let n = clause.n_preds as usize;
    for (i, pred) in clause.preds.iter().enumerate() {
        if i >= n {
            break;
        }
        if !pred_matches(pred, input) {
            return false;
        }
    }
    true
}

/// One predicate, negation applied.
#[inline(always)]
pub fn pred_matches(pred: &FilterPredicate, input: &FilterInput) -> bool {
    let raw = match pred.kind {
        pred_kind::TRUE => true,
        pred_kind::FAMILY => input.family as u32 == pred.lo,
        pred_kind::PROTO => input.proto as u32 == pred.lo && family_ok(pred, input),
        pred_kind::ADDR => addr_matches(pred, input),
        pred_kind::PORT => port_matches(pred, input),
        pred_kind::IFACE => iface_matches(pred, input),
        pred_kind::MARK => input.mark & pred.hi == pred.lo,
        pred_kind::ICMP_TYPE => {
            has_icmp(input) && input.icmp_type as u32 == pred.lo && family_ok(pred, input)
        }
        // Unknown kinds never match: a newer compiler against an older probe fails closed.
        _ => false,
    };
    raw != (pred.negate != 0)
}

#[inline(always)]
fn family_ok(pred: &FilterPredicate, input: &FilterInput) -> bool {
    pred.family == 0 || pred.family == input.family
}

/// Combine a source-side and a destination-side result as `dir` says.
#[inline(always)]
fn sides(d: u8, src: bool, dst: bool) -> bool {
    match d {
        dir::SRC => src,
        dir::DST => dst,
        dir::EITHER => src || dst,
        dir::BOTH => src && dst,
        _ => false,
    }
}

#[inline(always)]
fn addr_matches(pred: &FilterPredicate, input: &FilterInput) -> bool {
    if pred.family != input.family {
        return false;
    }
    let src = masked_eq(&input.saddr, &pred.mask, &pred.addr);
    let dst = masked_eq(&input.daddr, &pred.mask, &pred.addr);
    sides(pred.dir, src, dst)
}

/// `(a & mask) == want` over 16 bytes (the compiler stores `want` already masked).
#[inline(always)]
fn masked_eq(a: &[u8; 16], mask: &[u8; 16], want: &[u8; 16]) -> bool {
    let mut diff = 0u8;
    for ((x, m), w) in a.iter().zip(mask.iter()).zip(want.iter()) {
        diff |= (x & m) ^ w;
    }
    diff == 0
}

#[inline(always)]
fn has_ports(input: &FilterInput) -> bool {
    input.flags & input_flags::L4_VALID != 0
        && matches!(input.proto, IPPROTO_TCP | IPPROTO_UDP | IPPROTO_SCTP)
}

#[inline(always)]
fn has_icmp(input: &FilterInput) -> bool {
    input.flags & input_flags::L4_VALID != 0
        && matches!(input.proto, IPPROTO_ICMP | IPPROTO_ICMPV6)
}

#[inline(always)]
fn port_matches(pred: &FilterPredicate, input: &FilterInput) -> bool {
    if !has_ports(input) || !family_ok(pred, input) {
        return false;
    }
    let in_range = |p: u16| (p as u32) >= pred.lo && (p as u32) <= pred.hi;
    sides(pred.dir, in_range(input.sport), in_range(input.dport))
}

#[inline(always)]
fn iface_matches(pred: &FilterPredicate, input: &FilterInput) -> bool {
    let prefix = pred.hi == 1;
    let src = name_matches(&pred.name, &input.in_dev, prefix, pred.lo);
    let dst = name_matches(&pred.name, &input.out_dev, prefix, pred.lo);
    sides(pred.dir, src, dst)
}

/// Compare a device name up to its NUL (bytes after the kernel's NUL may be stale), or only the
/// first `prefix_len` bytes for a prefix pattern. An absent device (empty name) never matches.
#[inline(always)]
fn name_matches(want: &[u8; IFNAME_LEN], dev: &[u8; IFNAME_LEN], prefix: bool, prefix_len: u32) -> bool {
    if dev[0] == 0 {
        return false;
    }
    for (i, (w, d)) in want.iter().zip(dev.iter()).enumerate() {
        if prefix && i as u32 >= prefix_len {
            return true;
        }
        if w != d {
            return false;
        }
        if *w == 0 {
            return true;
        }
    }
    true
}

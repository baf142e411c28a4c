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
    /// Interface name (`iface`): `(dev & mask) == name` bytewise, where `mask` covers the name
    /// and its NUL (exact) or only the first `lo` bytes when `hi == 1` (iptables-style `eth+`
    /// prefix); an empty device never matches; sides from `dir` (SRC = in, DST = out).
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

/// One predicate (64 bytes). 8-aligned like the other filter structs: `addr`, `mask` and
/// `name` sit at 8-aligned offsets (asserted below), so the evaluator loads them as two words
/// each (see [`words`]) instead of byte by byte.
#[repr(C, align(8))]
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
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FilterClause {
    pub n_preds: u32,
    pub _pad0: u32,
    pub preds: [FilterPredicate; FILTER_MAX_PREDS],
}

/// A compiled filter (8328 bytes): too big for the BPF stack, keep it in an array map.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FilterProgram {
    pub n_clauses: u32,
    pub _pad0: u32,
    pub clauses: [FilterClause; FILTER_MAX_CLAUSES],
}

/// What the filter sees of a packet (80 bytes), filled by the first probe the skb meets.
/// 8-aligned: the addresses and device names are at 8-aligned offsets (see [`words`]).
#[repr(C, align(8))]
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
// `words` loads these fields as aligned u64s.
const _: () = assert!(core::mem::align_of::<FilterPredicate>() == 8);
const _: () = assert!(core::mem::align_of::<FilterInput>() == 8);
const _: () = assert!(core::mem::offset_of!(FilterPredicate, addr) % 8 == 0);
const _: () = assert!(core::mem::offset_of!(FilterPredicate, mask) % 8 == 0);
const _: () = assert!(core::mem::offset_of!(FilterPredicate, name) % 8 == 0);
const _: () = assert!(core::mem::offset_of!(FilterInput, saddr) % 8 == 0);
const _: () = assert!(core::mem::offset_of!(FilterInput, daddr) % 8 == 0);
const _: () = assert!(core::mem::offset_of!(FilterInput, in_dev) % 8 == 0);
const _: () = assert!(core::mem::offset_of!(FilterInput, out_dev) % 8 == 0);

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
    pub const EMPTY: FilterClause = FilterClause {
        n_preds: 0,
        _pad0: 0,
        preds: [FilterPredicate::ZERO; FILTER_MAX_PREDS],
    };
}

impl FilterProgram {
    /// Matches nothing (no clause).
    pub const NONE: FilterProgram = FilterProgram {
        n_clauses: 0,
        _pad0: 0,
        clauses: [FilterClause::EMPTY; FILTER_MAX_CLAUSES],
    };

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

/// Words [`view_from_words`] takes: an IPv6 header and the first transport word (IPv4 and its
/// ports need 3).
pub const VIEW_WORDS: usize = 6;

/// The filter's view of a packet from its first `8 * VIEW_WORDS` bytes at the network header,
/// as the first probe fills it: protocol, addresses, ports (TCP/UDP/SCTP) or ICMP type, and
/// [`input_flags::L4_VALID`]. `w[i]` holds bytes `8i..8i+8` as loaded from memory
/// (`u64::from_ne_bytes`). Only the common layouts: IPv4 without options, IPv6 whose next
/// header is TCP/UDP/SCTP/ICMPv6; false for anything else (the caller walks the headers
/// instead), and `f` is then partly written. Ports are 0 for packets without them; the ICMP
/// type is left as it was for others (the evaluator does not look at it then). `family`,
/// `mark` and the devices are the caller's.
///
/// Works on whole words (the eBPF probe's 48-byte read): byte-wise, the extraction and the
/// 16-byte address copies were a large part of a rejected packet's cost.
#[inline(always)]
pub fn view_from_words(pf: u8, w: &[u64; VIEW_WORDS], f: &mut FilterInput) -> bool {
    // Little-endian values: byte i of the header is bits 8 * (i % 8) of w[i / 8].
    let w = w.map(u64::from_le);
    let (proto, l4, src, dst) = if pf == FAMILY_IPV4 {
        // Version 4, IHL 5.
        if w[0] as u8 != 0x45 {
            return false;
        }
        let proto = (w[1] >> 8) as u8;
        let (src, dst) = ([w[1] >> 32, 0], [w[2] & 0xffff_ffff, 0]);
        // frag_off (bytes 6, 7) & 0x1fff: a non-first fragment has no transport header.
        if (w[0] >> 48) & 0xff1f != 0 {
            f.proto = proto;
            f.flags = 0;
            f.sport = 0;
            f.dport = 0;
            set_addrs(f, src, dst);
            return true;
        }
        (proto, w[2] >> 32, src, dst)
    } else {
        let proto = (w[0] >> 48) as u8;
        if !matches!(
            proto,
            IPPROTO_TCP | IPPROTO_UDP | IPPROTO_SCTP | IPPROTO_ICMPV6
        ) {
            return false;
        }
        (proto, w[5], [w[1], w[2]], [w[3], w[4]])
    };
    set_addrs(f, src, dst);
    f.proto = proto;
    f.flags = input_flags::L4_VALID;
    match proto {
        IPPROTO_TCP | IPPROTO_UDP | IPPROTO_SCTP => {
            f.sport = u16::from_be(l4 as u16);
            f.dport = u16::from_be((l4 >> 16) as u16);
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            f.icmp_type = l4 as u8;
            f.sport = 0;
            f.dport = 0;
        }
        _ => {
            f.flags = 0;
            f.sport = 0;
            f.dport = 0;
        }
    }
    true
}

/// Store both addresses given as little-endian word values, one 8-byte store per word.
#[inline(always)]
fn set_addrs(f: &mut FilterInput, src: [u64; 2], dst: [u64; 2]) {
    // SAFETY: saddr/daddr are 16 bytes at 8-aligned offsets of the 8-aligned FilterInput
    // (asserted above).
    unsafe {
        let s = core::ptr::addr_of_mut!(f.saddr) as *mut [u64; 2];
        let d = core::ptr::addr_of_mut!(f.daddr) as *mut [u64; 2];
        s.write([src[0].to_le(), src[1].to_le()]);
        d.write([dst[0].to_le(), dst[1].to_le()]);
    }
}

/// Loop state of the evaluation, advanced one predicate at a time by [`step`]. Keeping the
/// whole state in one small struct (one "clause still true" bit, no early returns out of nested
/// loops) is what keeps the eBPF verifier's path count linear: paths that differ only in
/// already-used results converge at every step.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EvalCursor {
    /// clause * FILTER_MAX_PREDS + predicate.
    pub index: u32,
    /// 1 while every predicate of the current clause so far matched.
    pub clause_ok: u32,
    /// 1 once a clause matched.
    pub matched: u32,
    /// 1 when evaluation is over (matched, or past the last clause).
    pub done: u32,
}

impl EvalCursor {
    pub const START: EvalCursor = EvalCursor {
        index: 0,
        clause_ok: 1,
        matched: 0,
        done: 0,
    };
}

/// Steps [`matches`] needs at most: one per predicate slot.
pub const FILTER_STEPS: u32 = (FILTER_MAX_CLAUSES * FILTER_MAX_PREDS) as u32;

/// Does the packet described by `input` match the program? No allocation, no recursion, no
/// panic path; one loop with a constant bound (FILTER_STEPS) over [`step`]. eBPF callers may
/// drive [`step`] themselves (e.g. from `bpf_loop`) — it is the same logic.
#[inline(always)]
pub fn matches(prog: &FilterProgram, input: &FilterInput) -> bool {
    let mut cur = EvalCursor::START;
    for _ in 0..FILTER_STEPS {
        if step(prog, input, &mut cur) {
            break;
        }
    }
    cur.matched != 0
}

/// Evaluate one predicate slot; returns true when the evaluation is over. Idempotent once done.
#[inline(always)]
pub fn step(prog: &FilterProgram, input: &FilterInput, cur: &mut EvalCursor) -> bool {
    if cur.done != 0 {
        return true;
    }
    let c = (cur.index / FILTER_MAX_PREDS as u32) as usize;
    let p = (cur.index % FILTER_MAX_PREDS as u32) as usize;
    let clause = match prog.clauses.get(c) {
        Some(clause) if (c as u32) < prog.n_clauses => clause,
        _ => {
            cur.done = 1;
            return true;
        }
    };
    if (p as u32) < clause.n_preds && cur.clause_ok != 0 {
        if let Some(pred) = clause.preds.get(p) {
            cur.clause_ok = pred_matches(pred, input) as u32;
        }
    }
    if p == FILTER_MAX_PREDS - 1 {
        if cur.clause_ok != 0 {
            cur.matched = 1;
            cur.done = 1;
            return true;
        }
        cur.clause_ok = 1;
    }
    cur.index += 1;
    false
}

/// One predicate, negation applied. Not inlined into the loop: one copy of the body keeps the
/// eBPF program small and each call's branches converge at its return.
#[inline(never)]
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
        dir::EITHER => src | dst,
        dir::BOTH => src & dst,
        _ => false,
    }
}

/// The 16 bytes as two words: two aligned loads (byte-wise, the eBPF program spent 16 loads
/// and 14 shifts/ors per array).
///
/// # Safety
/// `a` must be 8-aligned: a 16-byte field at an 8-aligned offset of an 8-aligned struct (the
/// address/name fields of [`FilterInput`] and [`FilterPredicate`], asserted above; the
/// addresses of `record::HeaderSnapshot`, asserted there).
#[inline(always)]
pub unsafe fn words(a: &[u8; 16]) -> [u64; 2] {
    let p = a.as_ptr() as *const u64;
    debug_assert!(p.is_aligned());
    // SAFETY: 16 readable bytes, 8-aligned (the caller's contract); any bits are a valid u64.
    unsafe { [p.read(), p.add(1).read()] }
}

/// `(a & mask) == want` over 16 bytes (the compiler stores `want` already masked).
///
/// # Safety
/// As [`words`], for all three arrays.
#[inline(always)]
unsafe fn masked_eq(a: &[u8; 16], mask: &[u8; 16], want: &[u8; 16]) -> bool {
    // SAFETY: the caller's contract.
    let (a, m, w) = unsafe { (words(a), words(mask), words(want)) };
    ((a[0] & m[0]) ^ w[0]) | ((a[1] & m[1]) ^ w[1]) == 0
}

#[inline(always)]
fn addr_matches(pred: &FilterPredicate, input: &FilterInput) -> bool {
    if pred.family != input.family {
        return false;
    }
    // SAFETY: fields of the 8-aligned filter structs at 8-aligned offsets.
    let src = unsafe { masked_eq(&input.saddr, &pred.mask, &pred.addr) };
    // SAFETY: as above.
    let dst = unsafe { masked_eq(&input.daddr, &pred.mask, &pred.addr) };
    sides(pred.dir, src, dst)
}

#[inline(always)]
fn has_ports(input: &FilterInput) -> bool {
    input.flags & input_flags::L4_VALID != 0
        && matches!(input.proto, IPPROTO_TCP | IPPROTO_UDP | IPPROTO_SCTP)
}

#[inline(always)]
fn has_icmp(input: &FilterInput) -> bool {
    input.flags & input_flags::L4_VALID != 0 && matches!(input.proto, IPPROTO_ICMP | IPPROTO_ICMPV6)
}

#[inline(always)]
fn port_matches(pred: &FilterPredicate, input: &FilterInput) -> bool {
    if !has_ports(input) || !family_ok(pred, input) {
        return false;
    }
    let in_range = |p: u16| ((p as u32) >= pred.lo) & ((p as u32) <= pred.hi);
    sides(pred.dir, in_range(input.sport), in_range(input.dport))
}

/// Device names: `name` is the pattern zero-padded and `mask` selects the bytes that must be
/// equal — the name and its NUL for an exact name, only the prefix for `name+` — so bytes the
/// kernel left after a device's NUL never matter. An absent device (empty name) never matches.
#[inline(always)]
fn iface_matches(pred: &FilterPredicate, input: &FilterInput) -> bool {
    // SAFETY: fields of the 8-aligned filter structs at 8-aligned offsets.
    let src = (input.in_dev[0] != 0) & unsafe { masked_eq(&input.in_dev, &pred.mask, &pred.name) };
    // SAFETY: as above.
    let dst =
        (input.out_dev[0] != 0) & unsafe { masked_eq(&input.out_dev, &pred.mask, &pred.name) };
    sides(pred.dir, src, dst)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// xorshift64: deterministic bytes without dependencies.
    fn fill(seed: &mut u64, bytes: &mut [u8]) {
        for b in bytes {
            *seed ^= *seed << 13;
            *seed ^= *seed >> 7;
            *seed ^= *seed << 17;
            *b = *seed as u8;
        }
    }

    fn random<T: Copy>(seed: &mut u64, zero: T) -> T {
        let mut v = zero;
        // SAFETY: T is one of this module's #[repr(C)] integer-only structs: any bytes are valid.
        let bytes = unsafe {
            core::slice::from_raw_parts_mut(&mut v as *mut T as *mut u8, core::mem::size_of::<T>())
        };
        fill(seed, bytes);
        v
    }

    /// Whatever a (corrupt or newer) map holds, evaluation terminates without panicking and
    /// never reads past the fixed arrays, and `matches` agrees with driving `step` by hand.
    #[test]
    fn arbitrary_programs_and_inputs_never_panic() {
        let mut seed = 0x0123_4567_89ab_cdef;
        for _ in 0..2000 {
            let mut prog: FilterProgram = random(&mut seed, FilterProgram::NONE);
            prog.n_clauses %= 40; // also beyond FILTER_MAX_CLAUSES
            for c in prog.clauses.iter_mut() {
                c.n_preds %= 12;
                for p in c.preds.iter_mut() {
                    p.kind %= 10;
                    p.dir %= 6;
                }
            }
            let input: FilterInput = random(&mut seed, FilterInput::ZERO);
            let want = matches(&prog, &input);
            let mut cur = EvalCursor::START;
            let mut steps = 0;
            while !step(&prog, &input, &mut cur) {
                steps += 1;
                assert!(
                    steps <= FILTER_STEPS,
                    "step must finish within FILTER_STEPS"
                );
            }
            assert_eq!(cur.matched != 0, want);
            assert!(step(&prog, &input, &mut cur), "done is sticky");
        }
    }

    /// The byte-wise definition of [`view_from_words`] (the probe's first version).
    fn view_from_bytes(pf: u8, b: &[u8; 8 * VIEW_WORDS], f: &mut FilterInput) -> bool {
        let l4 = if pf == FAMILY_IPV4 {
            if b[0] != 0x45 {
                return false;
            }
            f.proto = b[9];
            f.saddr = [0; 16];
            f.daddr = [0; 16];
            f.saddr[..4].copy_from_slice(&b[12..16]);
            f.daddr[..4].copy_from_slice(&b[16..20]);
            if u16::from_be_bytes([b[6], b[7]]) & 0x1fff != 0 {
                f.flags = 0;
                f.sport = 0;
                f.dport = 0;
                return true;
            }
            20
        } else {
            f.proto = b[6];
            if !matches!(
                f.proto,
                IPPROTO_TCP | IPPROTO_UDP | IPPROTO_SCTP | IPPROTO_ICMPV6
            ) {
                return false;
            }
            f.saddr.copy_from_slice(&b[8..24]);
            f.daddr.copy_from_slice(&b[24..40]);
            40
        };
        f.flags = input_flags::L4_VALID;
        match f.proto {
            IPPROTO_TCP | IPPROTO_UDP | IPPROTO_SCTP => {
                f.sport = u16::from_be_bytes([b[l4], b[l4 + 1]]);
                f.dport = u16::from_be_bytes([b[l4 + 2], b[l4 + 3]]);
            }
            IPPROTO_ICMP | IPPROTO_ICMPV6 => {
                f.icmp_type = b[l4];
                (f.sport, f.dport) = (0, 0);
            }
            _ => {
                f.flags = 0;
                (f.sport, f.dport) = (0, 0);
            }
        }
        true
    }

    /// Random headers, biased towards the layouts the fast view covers (IPv4 IHL 5 with or
    /// without fragment offsets, IPv6 with each transport protocol) and the protocols with
    /// ports or ICMP types: the word extraction equals the byte-wise one, field for field.
    #[test]
    fn view_from_words_agrees_with_bytes() {
        let mut seed = 0x2545_f491_4f6c_dd1d;
        let protos = [
            IPPROTO_TCP,
            IPPROTO_UDP,
            IPPROTO_SCTP,
            IPPROTO_ICMP,
            IPPROTO_ICMPV6,
            47,
            0,
            44,
        ];
        for i in 0..50_000u32 {
            let mut b = [0u8; 8 * VIEW_WORDS];
            fill(&mut seed, &mut b);
            let pf = if i % 2 == 0 { FAMILY_IPV4 } else { FAMILY_IPV6 };
            let proto = protos[(b[47] % 8) as usize];
            if pf == FAMILY_IPV4 {
                if i % 7 != 0 {
                    b[0] = 0x45;
                }
                b[9] = proto;
                if i % 3 != 0 {
                    // Fragment offset 0 (flags kept): a first fragment or none.
                    b[6] &= 0xe0;
                    b[7] = 0;
                }
            } else {
                b[6] = proto;
            }
            let words: [u64; VIEW_WORDS] = core::array::from_fn(|k| {
                u64::from_ne_bytes(b[8 * k..8 * k + 8].try_into().unwrap())
            });
            // Same starting state for both (fields the extraction leaves alone must match).
            let start: FilterInput = random(&mut seed, FilterInput::ZERO);
            let (mut a, mut r) = (start, start);
            let got = view_from_words(pf, &words, &mut a);
            let want = view_from_bytes(pf, &b, &mut r);
            assert_eq!(got, want, "pf {pf} bytes {b:?}");
            if want {
                assert_eq!(a, r, "pf {pf} bytes {b:?}");
            }
        }
    }

    #[test]
    fn empty_program_matches_nothing_and_match_all_everything() {
        let input = FilterInput::ZERO;
        assert!(!matches(&FilterProgram::NONE, &input));
        assert!(matches(&FilterProgram::match_all(), &input));
    }
}

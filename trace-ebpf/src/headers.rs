//! The L3/L4 header snapshot of an skb (what TRACE/LOG print and the filter looks at), read
//! from skb->head + network_header. Ports, ids and sequence numbers are converted to host
//! order; addresses stay in network order.

use core::mem::MaybeUninit;

use crate::{
    kread::{read, read_buf},
    mem,
};
use trace_common::{
    filter::{view_from_words, FilterInput, VIEW_WORDS},
    record::{l4_flags, HeaderSnapshot, TCP_OPTIONS_MAX},
};

/// Bytes of a quoted packet stored after `tcp_options`: `tcp_seq..=tcp_res`, contiguous.
const QUOTED_TAIL: usize = l4_flags::QUOTED_MAX - TCP_OPTIONS_MAX;
const _: () = assert!(
    core::mem::offset_of!(HeaderSnapshot, icmp_type)
        - core::mem::offset_of!(HeaderSnapshot, tcp_seq)
        == QUOTED_TAIL
);
// The packed layout stores 4 raw bytes in sport/dport.
const _: () = assert!(
    core::mem::offset_of!(HeaderSnapshot, dport)
        == core::mem::offset_of!(HeaderSnapshot, sport) + 2
);

/// Netfilter protocol families (NFPROTO_*), the `pf` of a hook and of a snapshot.
pub const NFPROTO_IPV4: u8 = 2;
pub const NFPROTO_IPV6: u8 = 10;

const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_SCTP: u8 = 132;
const IPPROTO_ICMP: u8 = 1;
const IPPROTO_ICMPV6: u8 = 58;
/// IPv6 extension headers we step over to find the transport header.
const NEXTHDR_HOP: u8 = 0;
const NEXTHDR_ROUTING: u8 = 43;
const NEXTHDR_FRAGMENT: u8 = 44;
const NEXTHDR_DEST: u8 = 60;
/// Bound on extension headers walked (the verifier needs a constant bound).
const MAX_EXT_HEADERS: usize = 4;

/// Fill `h` from the network header at `nh` (kernel address). `pf` is NFPROTO_IPV4/IPV6.
/// Returns false when the IP header could not be read.
/// `options`: also copy the TCP options (not needed by the filter).
#[inline(always)]
pub fn snapshot(pf: u8, nh: u64, h: &mut HeaderSnapshot, options: bool) -> bool {
    // Start from zero so that fields the protocol does not set hash and compare stably.
    // SAFETY: plain data, a valid &mut.
    unsafe { mem::zero(h) };
    if pf == NFPROTO_IPV4 {
        ipv4(nh, h, options)
    } else {
        ipv6(nh, h, options)
    }
}

/// The filter's view of the packet (protocol, addresses, ports / ICMP type, and whether the
/// transport header was read) for the common layouts — IPv4 without options, IPv6 without
/// extension headers — from one 48-byte read (`trace_common::filter::view_from_words`, which
/// host tests check against a byte-wise definition). False: another layout (or unreadable),
/// take [`snapshot`] instead; `f` is then partly written. Family, mark and devices are the
/// caller's. `D`: netfilter programs, direct loads (see `mem::read_words`).
#[inline(always)]
pub fn filter_view<const D: bool>(pf: u8, nh: u64, f: &mut FilterInput) -> bool {
    let mut buf = MaybeUninit::<[u64; VIEW_WORDS]>::uninit();
    match mem::read_words::<VIEW_WORDS, D>(nh, &mut buf) {
        Some(w) => view_from_words(pf, w, f),
        None => false,
    }
}

#[inline(always)]
fn ipv4(nh: u64, h: &mut HeaderSnapshot, options: bool) -> bool {
    let mut buf = MaybeUninit::<[u8; 20]>::uninit();
    let Some(ip) = mem::read_into(nh, &mut buf) else {
        return false;
    };
    let ihl = (ip[0] & 0x0f) as u64 * 4;
    h.tos = ip[1];
    h.len = u16::from_be_bytes([ip[2], ip[3]]);
    h.id = u16::from_be_bytes([ip[4], ip[5]]);
    h.frag = u16::from_be_bytes([ip[6], ip[7]]);
    h.ttl = ip[8];
    h.proto = ip[9];
    // (Zeroed by `snapshot`.)
    h.saddr[..4].copy_from_slice(&ip[12..16]);
    h.daddr[..4].copy_from_slice(&ip[16..20]);
    h.flowlabel = 0;
    // Non-first fragments carry no transport header (tcpdump/iptables semantics).
    if h.frag & 0x1fff != 0 || ihl < 20 {
        h.l4_flags = 0;
        return true;
    }
    let end = nh + h.len as u64;
    transport(nh + ihl, end, h, options);
    true
}

#[inline(always)]
fn ipv6(nh: u64, h: &mut HeaderSnapshot, options: bool) -> bool {
    let mut buf = MaybeUninit::<[u8; 40]>::uninit();
    let Some(ip) = mem::read_into(nh, &mut buf) else {
        return false;
    };
    h.tos = (ip[0] << 4) | (ip[1] >> 4);
    h.flowlabel = u32::from_be_bytes([0, ip[1] & 0x0f, ip[2], ip[3]]);
    h.len = u16::from_be_bytes([ip[4], ip[5]]).wrapping_add(40);
    h.ttl = ip[7];
    h.id = 0;
    h.frag = 0;
    h.saddr.copy_from_slice(&ip[8..24]);
    h.daddr.copy_from_slice(&ip[24..40]);
    let mut next = ip[6];
    let mut off = nh + 40;
    for _ in 0..MAX_EXT_HEADERS {
        match next {
            NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_DEST => {
                let ext: [u8; 2] = read(off, 0);
                next = ext[0];
                off += (ext[1] as u64 + 1) * 8;
            }
            NEXTHDR_FRAGMENT => {
                let frag: [u8; 4] = read(off, 0);
                next = frag[0];
                let frag_off = u16::from_be_bytes([frag[2], frag[3]]) & 0xfff8;
                h.frag = frag_off >> 3 | if frag[3] & 1 != 0 { 0x2000 } else { 0 };
                off += 8;
                if frag_off != 0 {
                    h.proto = next;
                    h.l4_flags = 0;
                    return true;
                }
            }
            _ => break,
        }
    }
    h.proto = next;
    transport(off, nh + h.len as u64, h, options);
    true
}

/// Read the transport header at `l4` according to `h.proto`; `end` is where the IP packet
/// ends (its total length), `options`: also the TCP options / an ICMP error's quoted packet.
#[inline(always)]
fn transport(l4: u64, end: u64, h: &mut HeaderSnapshot, options: bool) {
    h.l4_flags = 0;
    h.tcp_opt_len = 0;
    match h.proto {
        IPPROTO_TCP => {
            let mut buf = MaybeUninit::<[u8; 20]>::uninit();
            let Some(t) = mem::read_into(l4, &mut buf) else {
                return;
            };
            h.sport = u16::from_be_bytes([t[0], t[1]]);
            h.dport = u16::from_be_bytes([t[2], t[3]]);
            h.tcp_seq = u32::from_be_bytes([t[4], t[5], t[6], t[7]]);
            h.tcp_ack = u32::from_be_bytes([t[8], t[9], t[10], t[11]]);
            let doff = (t[12] >> 4) as usize * 4;
            h.tcp_res = t[12] & 0x0f;
            h.tcp_flags = t[13];
            h.tcp_window = u16::from_be_bytes([t[14], t[15]]);
            h.tcp_urgp = u16::from_be_bytes([t[18], t[19]]);
            if options && doff > 20 && doff <= 20 + TCP_OPTIONS_MAX {
                // Always copy the maximum: a constant size for the verifier; bytes past
                // the options are ignored (tcp_opt_len).
                if read_buf(l4 + 20, &mut h.tcp_options) {
                    h.tcp_opt_len = (doff - 20) as u8;
                }
            }
            h.l4_flags = l4_flags::VALID;
        }
        IPPROTO_UDP | IPPROTO_SCTP => {
            let mut buf = MaybeUninit::<[u8; 8]>::uninit();
            let Some(u) = mem::read_into(l4, &mut buf) else {
                return;
            };
            h.sport = u16::from_be_bytes([u[0], u[1]]);
            h.dport = u16::from_be_bytes([u[2], u[3]]);
            h.udp_len = if h.proto == IPPROTO_UDP {
                u16::from_be_bytes([u[4], u[5]])
            } else {
                0
            };
            h.l4_flags = l4_flags::VALID;
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            let mut buf = MaybeUninit::<[u8; 8]>::uninit();
            let Some(c) = mem::read_into(l4, &mut buf) else {
                return;
            };
            h.icmp_type = c[0];
            h.icmp_code = c[1];
            h.sport = u16::from_be_bytes([c[4], c[5]]);
            h.dport = u16::from_be_bytes([c[6], c[7]]);
            h.l4_flags = l4_flags::VALID;
            if options && quotes_packet(h.proto, c[0]) {
                // The second header word is unused (zero) for these: room for packing.
                let packable = h.proto == IPPROTO_ICMP
                    && ((c[0] == 3 && c[1] != 4) || c[0] == 4 || c[0] == 11);
                quoted(l4 + 8, end, h, packable);
            }
        }
        _ => {}
    }
}

/// ICMP errors whose quoted packet LOG/TRACE print (nf_log_syslog.c recurses for these):
/// destination unreachable, source quench, redirect, time exceeded; ICMPv6 destination
/// unreachable, packet too big, time exceeded, parameter problem.
#[inline(always)]
fn quotes_packet(proto: u8, icmp_type: u8) -> bool {
    match proto {
        IPPROTO_ICMP => matches!(icmp_type, 3 | 4 | 5 | 11),
        _ => matches!(icmp_type, 1..=4),
    }
}

/// Copies the first bytes of the packet an ICMP error quotes (at `inner`, the packet ending
/// at `end`) into the fields an ICMP header leaves unused: `tcp_options`, then
/// `tcp_seq..=tcp_res` (see [`l4_flags::QUOTED`]); a quoted IPv4+TCP packet longer than that
/// is packed when `packable` ([`l4_flags::QUOTED_PACKED`]). `tcp_opt_len` = bytes that are
/// inside the packet; the reads are constant-size (verifier), bytes past it are ignored.
#[inline(always)]
fn quoted(inner: u64, end: u64, h: &mut HeaderSnapshot, packable: bool) {
    if end <= inner {
        return;
    }
    let real = end - inner;
    if !read_buf(inner, &mut h.tcp_options) {
        return;
    }
    if packable
        && real > l4_flags::QUOTED_MAX as u64
        && h.tcp_options[0] == 0x45
        && h.tcp_options[9] == IPPROTO_TCP
        && packed(inner, h)
    {
        h.tcp_opt_len = real.min(l4_flags::QUOTED_PACKED_MAX as u64) as u8;
        h.l4_flags |= l4_flags::QUOTED | l4_flags::QUOTED_PACKED;
        return;
    }
    let mut avail = real.min(l4_flags::QUOTED_MAX as u64) as u8;
    // SAFETY: tcp_seq..=tcp_res are QUOTED_TAIL contiguous bytes of the repr(C) struct
    // (asserted above); plain integers, any bit pattern is valid.
    let tail = unsafe { &mut *(core::ptr::addr_of_mut!(h.tcp_seq) as *mut [u8; QUOTED_TAIL]) };
    // A failed read leaves the tail zeroed (by the helper).
    if !read_buf(inner + TCP_OPTIONS_MAX as u64, tail) {
        avail = avail.min(TCP_OPTIONS_MAX as u8);
    }
    h.tcp_opt_len = avail;
    h.l4_flags |= l4_flags::QUOTED;
}

/// The packed layout of [`l4_flags::QUOTED_PACKED`]: `tcp_options` already holds the quoted
/// bytes 0..40; keep 0..10, then 12..36, 38..44 after them (checksums dropped), 44..58 in
/// the tail, 58..62 in `sport`/`dport`. False when a read failed (nothing is marked).
#[inline(always)]
fn packed(inner: u64, h: &mut HeaderSnapshot) -> bool {
    let opts = core::ptr::addr_of_mut!(h.tcp_options) as *mut u8;
    // SAFETY: fixed ranges inside tcp_options (10..34, 34..40), the QUOTED_TAIL bytes of
    // tcp_seq..=tcp_res and the 4 bytes of sport/dport (contiguous, asserted above); plain
    // integers, any bit pattern is valid.
    let (mid, end, tail, ports) = unsafe {
        (
            &mut *(opts.add(10) as *mut [u8; 24]),
            &mut *(opts.add(34) as *mut [u8; 6]),
            &mut *(core::ptr::addr_of_mut!(h.tcp_seq) as *mut [u8; QUOTED_TAIL]),
            &mut *(core::ptr::addr_of_mut!(h.sport) as *mut [u8; 4]),
        )
    };
    read_buf(inner + 12, mid)
        && read_buf(inner + 38, end)
        && read_buf(inner + 44, tail)
        && read_buf(inner + 58, ports)
}

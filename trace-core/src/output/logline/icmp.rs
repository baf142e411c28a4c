//! ICMP and ICMPv6 in the kernel's LOG/TRACE dump (nf_log_syslog.c, `dump_ipv4_packet` /
//! `dump_ipv6_packet`): TYPE/CODE, the type-specific fields (ID/SEQ, PARAMETER, GATEWAY,
//! POINTER, MTU) and, for errors, the packet they quote in brackets `[SRC=… … ] `, printed
//! from the bytes the capture copied ([`crate::event::L4::Icmp::quoted`]).
//!
//! The kernel recurses once: the quoted packet is dumped like the outer one, without
//! UID/GID/MARK and without its own quoted packet. Where the real packet was shorter than a
//! header the kernel prints `TRUNCATED` / `INCOMPLETE [N bytes]` / `OPT (TRUNCATED)`; we know
//! the real length from the outer IP length. Where the packet had bytes the capture did not
//! copy (a quoted TCP header with options needs more than trace_common's `l4_flags::QUOTED_MAX` bytes), the bracket
//! is left out rather than invented.

use super::{push_hex_byte, push_ip6_full, push_ipv4, push_tcp_flags, LogFlags, HEX_UPPER};
use crate::event::Headers;
use std::fmt::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The ICMP header's fields as captured: type, code and its second 32-bit word split in two
/// (`id`/`seq`; for errors: unused, MTU, gateway or pointer).
#[derive(Debug, Clone, Copy)]
pub struct IcmpHead {
    pub icmp_type: u8,
    pub code: u8,
    pub id: u16,
    pub seq: u16,
}

impl IcmpHead {
    fn word(&self) -> u32 {
        (self.id as u32) << 16 | self.seq as u32
    }
}

/// Bytes the outer packet holds after its 8-byte ICMP header (skb->len − offset of the quoted
/// packet), assuming a 20-byte IPv4 header / no IPv6 extension headers (what we can tell).
fn quoted_avail(outer: &Headers) -> usize {
    let ip = if outer.src.is_ipv4() { 20 } else { 40 };
    (outer.len as usize).saturating_sub(ip + 8)
}

/// `PROTO=ICMP TYPE=… CODE=… …` of an outer IPv4 packet, with its quoted packet.
pub fn push_icmp(s: &mut String, outer: &Headers, ic: IcmpHead, quoted: &[u8], flags: LogFlags) {
    let icmp_len = quoted_avail(outer) + 8;
    push_icmp_body(s, ic, icmp_len, Some((quoted, quoted_avail(outer))), flags);
}

/// `PROTO=ICMPv6 TYPE=… CODE=… …` of an outer IPv6 packet, with its quoted packet.
pub fn push_icmpv6(s: &mut String, outer: &Headers, ic: IcmpHead, quoted: &[u8], flags: LogFlags) {
    push_icmpv6_body(s, ic, Some((quoted, quoted_avail(outer))), flags);
}

/// required_len[] of dump_ipv4_packet: bytes an ICMP message of this type must have.
fn required_len(t: u8) -> usize {
    match t {
        0 | 8 => 4,
        3 | 4 | 5 | 11 | 12 => 8 + 20,
        13 | 14 => 20,
        17 | 18 => 12,
        _ => 0,
    }
}

/// The ICMP part after `PROTO=ICMP `. `icmp_len`: bytes from the ICMP header to the end of the
/// packet; `quote`: (captured bytes, real bytes) of the quoted packet at the outer level,
/// None inside a quoted packet (the kernel recurses only once).
fn push_icmp_body(
    s: &mut String,
    ic: IcmpHead,
    icmp_len: usize,
    quote: Option<(&[u8], usize)>,
    flags: LogFlags,
) {
    let _ = write!(s, "PROTO=ICMP TYPE={} CODE={} ", ic.icmp_type, ic.code);
    let req = required_len(ic.icmp_type);
    if req != 0 && icmp_len < req {
        let _ = write!(s, "INCOMPLETE [{icmp_len} bytes] ");
        return;
    }
    match ic.icmp_type {
        0 | 8 => {
            let _ = write!(s, "ID={} SEQ={} ", ic.id, ic.seq);
        }
        12 => {
            let _ = write!(s, "PARAMETER={} ", ic.word() >> 24);
        }
        3 | 4 | 5 | 11 => {
            if ic.icmp_type == 5 {
                let _ = write!(s, "GATEWAY={} ", Ipv4Addr::from(ic.word()));
            }
            if let Some((bytes, avail)) = quote {
                push_bracket(s, |s| quoted_ipv4(s, bytes, avail, flags));
            }
            if ic.icmp_type == 3 && ic.code == 4 {
                let _ = write!(s, "MTU={} ", ic.seq);
            }
        }
        _ => {}
    }
}

/// The ICMPv6 part (after the IPv6 header), see [`push_icmp_body`].
fn push_icmpv6_body(s: &mut String, ic: IcmpHead, quote: Option<(&[u8], usize)>, flags: LogFlags) {
    let _ = write!(s, "PROTO=ICMPv6 TYPE={} CODE={} ", ic.icmp_type, ic.code);
    match ic.icmp_type {
        128 | 129 => {
            let _ = write!(s, "ID={} SEQ={} ", ic.id, ic.seq);
        }
        1..=4 => {
            if ic.icmp_type == 4 {
                let _ = write!(s, "POINTER={:08x} ", ic.word());
            }
            if let Some((bytes, avail)) = quote {
                push_bracket(s, |s| quoted_ipv6(s, bytes, avail, flags));
            }
            if ic.icmp_type == 2 {
                let _ = write!(s, "MTU={} ", ic.word());
            }
        }
        _ => {}
    }
}

/// `[` + the quoted packet + `] `, or nothing when `dump` says the capture lacks bytes the
/// kernel printed (returns None).
fn push_bracket(s: &mut String, dump: impl FnOnce(&mut String) -> Option<()>) {
    let start = s.len();
    s.push('[');
    if dump(s).is_some() {
        s.push_str("] ");
    } else {
        s.truncate(start);
    }
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// dump_ipv4_packet at a quoted packet: `b` = captured bytes, `avail` = bytes the packet
/// really had. None: a field the kernel printed lies beyond the captured bytes.
fn quoted_ipv4(s: &mut String, b: &[u8], avail: usize, flags: LogFlags) -> Option<()> {
    if avail < 20 {
        s.push_str("TRUNCATED");
        return Some(());
    }
    if b.len() < 20 {
        return None;
    }
    let ihl = (b[0] & 0x0f) as usize * 4;
    let h = Headers {
        src: IpAddr::V4(Ipv4Addr::new(b[12], b[13], b[14], b[15])),
        dst: IpAddr::V4(Ipv4Addr::new(b[16], b[17], b[18], b[19])),
        proto: b[9],
        len: be16(b, 2),
        tos: b[1],
        ttl: b[8],
        id: be16(b, 4),
        frag: be16(b, 6),
        flowlabel: 0,
        l4: crate::event::L4::Other,
    };
    let _ = write!(s, "SRC={} DST={} ", h.src, h.dst);
    push_ipv4(s, &h, h.tos, h.ttl);
    if ihl > 20 {
        if avail < ihl {
            s.push_str("TRUNCATED");
            return Some(());
        }
        s.push_str("OPT (");
        for o in b.get(20..ihl)? {
            push_hex_byte(s, *o, HEX_UPPER);
        }
        s.push_str(") ");
    }
    let fragment = h.frag & 0x1fff != 0;
    quoted_l4(s, b, ihl, avail, h.proto, fragment, false, flags)
}

/// dump_ipv6_packet(recurse = 0) at a quoted packet (without extension headers: with one,
/// None).
fn quoted_ipv6(s: &mut String, b: &[u8], avail: usize, flags: LogFlags) -> Option<()> {
    if avail < 40 {
        s.push_str("TRUNCATED");
        return Some(());
    }
    if b.len() < 40 {
        return None;
    }
    let next = b[6];
    if matches!(next, 0 | 43 | 44 | 50 | 51 | 60) {
        return None;
    }
    let word = be32(b, 0);
    let addr = |at: usize| {
        let mut a = [0u8; 16];
        a.copy_from_slice(&b[at..at + 16]);
        IpAddr::V6(Ipv6Addr::from(a))
    };
    s.push_str("SRC=");
    push_ip6_full(s, addr(8));
    s.push_str(" DST=");
    push_ip6_full(s, addr(24));
    let _ = write!(
        s,
        " LEN={} TC={} HOPLIMIT={} FLOWLBL={} ",
        be16(b, 4) as usize + 40,
        (word & 0x0ff0_0000) >> 20,
        b[7],
        word & 0x000f_ffff
    );
    quoted_l4(s, b, 40, avail, next, false, true, flags)
}

/// The transport header of a quoted packet at `off`.
#[allow(clippy::too_many_arguments)]
fn quoted_l4(
    s: &mut String,
    b: &[u8],
    off: usize,
    avail: usize,
    proto: u8,
    fragment: bool,
    v6: bool,
    flags: LogFlags,
) -> Option<()> {
    let rem = avail.saturating_sub(off);
    match proto {
        6 => quoted_tcp(s, b, off, rem, fragment, flags),
        17 | 136 => {
            s.push_str(if proto == 17 {
                "PROTO=UDP "
            } else {
                "PROTO=UDPLITE "
            });
            if fragment {
                return Some(());
            }
            if rem < 8 {
                let _ = write!(s, "INCOMPLETE [{rem} bytes] ");
                return Some(());
            }
            let u = b.get(off..off + 8)?;
            let _ = write!(
                s,
                "SPT={} DPT={} LEN={} ",
                be16(u, 0),
                be16(u, 2),
                be16(u, 4)
            );
            Some(())
        }
        1 if !v6 => {
            if fragment {
                s.push_str("PROTO=ICMP ");
                return Some(());
            }
            if rem < 8 {
                let _ = write!(s, "PROTO=ICMP INCOMPLETE [{rem} bytes] ");
                return Some(());
            }
            let ic = icmp_head(b.get(off..off + 8)?);
            push_icmp_body(s, ic, rem, None, flags);
            Some(())
        }
        58 if v6 => {
            if rem < 8 {
                let _ = write!(s, "PROTO=ICMPv6 INCOMPLETE [{rem} bytes] ");
                return Some(());
            }
            let ic = icmp_head(b.get(off..off + 8)?);
            push_icmpv6_body(s, ic, None, flags);
            Some(())
        }
        // AH/ESP print an SPI (and the IPv4 dump names them): not decoded here.
        50 | 51 => None,
        p => {
            let _ = write!(s, "PROTO={p} ");
            Some(())
        }
    }
}

fn icmp_head(c: &[u8]) -> IcmpHead {
    IcmpHead {
        icmp_type: c[0],
        code: c[1],
        id: be16(c, 4),
        seq: be16(c, 6),
    }
}

/// nf_log_dump_tcp_header for a quoted TCP header.
fn quoted_tcp(
    s: &mut String,
    b: &[u8],
    off: usize,
    rem: usize,
    fragment: bool,
    flags: LogFlags,
) -> Option<()> {
    s.push_str("PROTO=TCP ");
    if fragment {
        return Some(());
    }
    if rem < 20 {
        let _ = write!(s, "INCOMPLETE [{rem} bytes] ");
        return Some(());
    }
    let t = b.get(off..off + 20)?;
    let _ = write!(s, "SPT={} DPT={} ", be16(t, 0), be16(t, 2));
    if flags.tcp_seq {
        let _ = write!(s, "SEQ={} ACK={} ", be32(t, 4), be32(t, 8));
    }
    let _ = write!(s, "WINDOW={} RES=0x", be16(t, 14));
    // TCP_RESERVED_BITS >> 22: the 3 reserved bits and AE of the data-offset byte, shifted.
    super::push_hex_byte(s, (t[12] & 0x0e) << 2, super::HEX_LOWER);
    s.push(' ');
    push_tcp_flags(s, t[13], t[12] & 0x01 != 0);
    let _ = write!(s, "URGP={} ", be16(t, 18));
    let doff = (t[12] >> 4) as usize * 4;
    if flags.tcp_opt && doff > 20 {
        if rem < doff {
            s.push_str("OPT (TRUNCATED)");
            return Some(());
        }
        let opts = b.get(off + 20..off + doff)?;
        s.push_str("OPT (");
        for o in opts {
            push_hex_byte(s, *o, HEX_UPPER);
        }
        s.push_str(") ");
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::L4;
    use crate::output::logline::{packet_fields, LogContext};

    /// The kernel's lines (legacy TRACE, kernel 6.18, REJECT/TTL expiry in a router netns).
    const KERNEL: &str = include_str!("../../../tests/fidelity/icmp-errors.kernel-trace.txt");

    fn kernel_line(needle: &str) -> &'static str {
        let l = KERNEL
            .lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no kernel line with {needle}"));
        // After "TRACE: table:chain:kind:N ".
        l.splitn(3, ' ').nth(2).unwrap()
    }

    fn ipv4(len: u16, id: u16, ttl: u8, proto: u8, src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
        let mut b = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, ttl, proto, 0xde, 0xad];
        b[2..4].copy_from_slice(&len.to_be_bytes());
        b[4..6].copy_from_slice(&id.to_be_bytes());
        b.extend_from_slice(&src);
        b.extend_from_slice(&dst);
        b
    }

    fn udp(sport: u16, dport: u16, len: u16) -> Vec<u8> {
        [sport, dport, len, 0xbeef]
            .iter()
            .flat_map(|v| v.to_be_bytes())
            .collect()
    }

    /// The outer packet the router sent: an ICMP error with `quoted` captured.
    fn outer(len: u16, id: u16, icmp_type: u8, code: u8, quoted: Vec<u8>) -> Headers {
        Headers {
            src: "10.81.1.1".parse().unwrap(),
            dst: "10.81.1.2".parse().unwrap(),
            proto: 1,
            len,
            tos: 0xc0,
            ttl: 64,
            id,
            frag: 0,
            flowlabel: 0,
            l4: L4::Icmp {
                icmp_type,
                code,
                id: 0,
                seq: 0,
                quoted,
            },
        }
    }

    fn line(h: &Headers) -> String {
        let ctx = LogContext {
            out_dev: Some("r0"),
            ..Default::default()
        };
        packet_fields(h, &ctx, LogFlags::TRACE)
    }

    #[test]
    fn port_unreachable_quotes_the_udp_datagram() {
        let mut q = ipv4(30, 51839, 63, 17, [10, 81, 1, 2], [10, 81, 2, 2]);
        q.extend(udp(33710, 9001, 10));
        q.extend(b"x\n");
        assert_eq!(line(&outer(58, 33297, 3, 3, q)), kernel_line("ID=33297 "));
    }

    #[test]
    fn time_exceeded_quotes_the_datagram_with_its_ttl() {
        let mut q = ipv4(31, 53488, 1, 17, [10, 81, 1, 2], [10, 81, 2, 2]);
        q.extend(udp(48656, 9005, 11));
        assert_eq!(line(&outer(59, 1400, 11, 0, q)), kernel_line("ID=1400 "));
    }

    fn tcp(
        sport: u16,
        dport: u16,
        seq: u32,
        ack: u32,
        flags: u8,
        win: u16,
        opts: &[u8],
    ) -> Vec<u8> {
        let mut t = Vec::new();
        t.extend(sport.to_be_bytes());
        t.extend(dport.to_be_bytes());
        t.extend(seq.to_be_bytes());
        t.extend(ack.to_be_bytes());
        t.push((((20 + opts.len()) / 4) << 4) as u8);
        t.push(flags);
        t.extend(win.to_be_bytes());
        t.extend([0xca, 0xfe, 0, 0]);
        t.extend(opts);
        t
    }

    #[test]
    fn quoted_tcp_segment_with_timestamps_fits() {
        let mut q = ipv4(57, 19523, 63, 6, [10, 81, 1, 2], [10, 81, 2, 2]);
        let ts = [1, 1, 8, 10, 0x37, 0xde, 0x87, 0x29, 0x40, 0xfd, 0xb2, 0xf4];
        q.extend(tcp(56546, 8080, 31274912, 4139469207, 0x18, 63, &ts));
        assert_eq!(q.len(), 52);
        assert_eq!(line(&outer(85, 1261, 3, 3, q)), kernel_line("ID=1261 "));
    }

    #[test]
    fn quoted_syn_whole_when_packed_left_out_when_cut() {
        // A SYN with 20 option bytes: 60 bytes quoted. The packed capture keeps all of it
        // but the checksums (given back as zero, never printed): the kernel's line exactly.
        let mut q = ipv4(60, 55006, 63, 6, [10, 81, 1, 2], [10, 81, 2, 2]);
        let opts = [
            2, 4, 5, 0xb4, 4, 2, 8, 10, 0x90, 0x92, 0xa5, 0x83, 0, 0, 0, 0, 1, 3, 3, 10,
        ];
        q.extend(tcp(54328, 8081, 1634291435, 0, 0x02, 64240, &opts));
        q[10..12].fill(0);
        q[36..38].fill(0);
        let kernel = kernel_line("ID=1333 ");
        assert_eq!(line(&outer(88, 1333, 3, 10, q.clone())), kernel);
        // Cut at 54 bytes (an error type that is not packed): the kernel prints OPT (…) we
        // do not have — no bracket rather than an invented one.
        q.truncate(54);
        let ours = line(&outer(88, 1333, 3, 10, q));
        assert_eq!(ours, kernel[..kernel.find(" [").unwrap() + 1]);
    }

    #[test]
    fn icmpv6_unreachable_quotes_the_ipv6_datagram() {
        let mut q = vec![0x60, 0x05, 0xcb, 0xb0, 0, 10, 17, 63];
        q.extend("fd81:1::2".parse::<Ipv6Addr>().unwrap().octets());
        q.extend("fd81:2::2".parse::<Ipv6Addr>().unwrap().octets());
        q.extend(udp(56037, 9001, 10));
        let h = Headers {
            src: "fd81:1::1".parse().unwrap(),
            dst: "fd81:1::2".parse().unwrap(),
            proto: 58,
            len: 98,
            tos: 0,
            ttl: 64,
            id: 0,
            frag: 0,
            flowlabel: 687351,
            l4: L4::Icmpv6 {
                icmp_type: 1,
                code: 1,
                id: 0,
                seq: 0,
                quoted: q,
            },
        };
        assert_eq!(line(&h), kernel_line("FLOWLBL=687351 "));
    }

    #[test]
    fn truncated_and_type_specific_fields() {
        // An IPv4 error shorter than required_len (8 + 20): INCOMPLETE, nothing quoted.
        let h = outer(20 + 8 + 12, 1, 3, 1, vec![0x45; 12]);
        assert!(
            line(&h).ends_with("TYPE=3 CODE=1 INCOMPLETE [20 bytes] "),
            "{}",
            line(&h)
        );
        // IPv6 has no such check: a quoted packet shorter than its header is TRUNCATED.
        let mut h6 = outer(40 + 8 + 12, 1, 1, 4, vec![0x60; 12]);
        h6.src = "fd00::1".parse().unwrap();
        h6.dst = "fd00::2".parse().unwrap();
        h6.proto = 58;
        if let L4::Icmp { quoted, .. } = &h6.l4 {
            h6.l4 = L4::Icmpv6 {
                icmp_type: 1,
                code: 4,
                id: 0,
                seq: 0,
                quoted: quoted.clone(),
            };
        }
        assert!(
            line(&h6).ends_with("TYPE=1 CODE=4 [TRUNCATED] "),
            "{}",
            line(&h6)
        );
        // Fragmentation needed: MTU after the bracket; the quoted TCP header cut after 8
        // bytes (other stacks quote 8 bytes only) is INCOMPLETE.
        let mut q = ipv4(1500, 7, 64, 6, [10, 0, 0, 1], [10, 0, 0, 2]);
        q.extend([0, 80, 0x1f, 0x90, 0, 0, 0, 1]);
        let mut h = outer(20 + 8 + 28, 2, 3, 4, q);
        if let L4::Icmp { seq, .. } = &mut h.l4 {
            *seq = 1400;
        }
        assert!(
            line(&h).ends_with("PROTO=TCP INCOMPLETE [8 bytes] ] MTU=1400 "),
            "{}",
            line(&h)
        );
        // Redirect: GATEWAY before the bracket; parameter problem: PARAMETER, no bracket.
        let mut q = ipv4(30, 9, 64, 17, [10, 0, 0, 1], [10, 0, 0, 2]);
        q.extend(udp(1, 2, 10));
        let mut h = outer(58, 3, 5, 1, q.clone());
        if let L4::Icmp { id, seq, .. } = &mut h.l4 {
            (*id, *seq) = (0x0a00, 0x00fe);
        }
        assert!(
            line(&h).contains("CODE=1 GATEWAY=10.0.0.254 [SRC=10.0.0.1 "),
            "{}",
            line(&h)
        );
        let mut h = outer(58, 3, 12, 0, q);
        if let L4::Icmp { id, .. } = &mut h.l4 {
            *id = 0x1400;
        }
        assert!(
            line(&h).ends_with("TYPE=12 CODE=0 PARAMETER=20 "),
            "{}",
            line(&h)
        );
        // Echo: ID/SEQ; an error captured without its quoted packet: no bracket.
        let mut h = outer(84, 4, 8, 0, vec![]);
        if let L4::Icmp { id, seq, .. } = &mut h.l4 {
            (*id, *seq) = (7, 3);
        }
        assert!(
            line(&h).ends_with("TYPE=8 CODE=0 ID=7 SEQ=3 "),
            "{}",
            line(&h)
        );
        let h = outer(58, 5, 3, 3, vec![]);
        assert!(line(&h).ends_with("TYPE=3 CODE=3 "), "{}", line(&h));
    }
}

//! The kernel's LOG/TRACE packet dump (net/netfilter/nf_log_syslog.c with the flags TRACE uses,
//! NF_LOG_DEFAULT_MASK = TCPSEQ|TCPOPT|IPOPT|UID), rebuilt from captured header fields.
//!
//! Everything the kernel prints from memory we do not capture is left out rather than
//! invented: IPv4/IPv6 option bytes, PHYSIN/PHYSOUT, the part of an ICMP error's quoted
//! packet past the bytes the capture copies (see [`icmp`]).

mod icmp;

use crate::event::{tcp_flags, Headers, L4};
use std::fmt::Write;
use std::net::IpAddr;

/// What LOG prints besides the headers: devices, link layer, socket owner, mark.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogContext<'a> {
    pub in_dev: Option<&'a str>,
    pub out_dev: Option<&'a str>,
    /// Bridge ports of a bridged packet (br_netfilter), printed as PHYSIN=/PHYSOUT= when they
    /// differ from the devices. The capture does not record them yet.
    pub physin: Option<&'a str>,
    pub physout: Option<&'a str>,
    /// Link-layer header bytes; printed (as `MAC=`) only when there is an input device.
    pub mac: Option<&'a [u8]>,
    /// UID/GID of a local socket owner (printed after the transport fields).
    pub uid_gid: Option<(u32, u32)>,
    pub mark: u32,
}

/// Which optional parts LOG prints (xt_LOG's --log-tcp-sequence etc.; TRACE uses all).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogFlags {
    pub tcp_seq: bool,
    pub tcp_opt: bool,
    pub uid: bool,
}

impl LogFlags {
    /// NF_LOG_DEFAULT_MASK: what `TRACE:` lines use.
    pub const TRACE: LogFlags = LogFlags {
        tcp_seq: true,
        tcp_opt: true,
        uid: true,
    };
    /// A plain `-j LOG` without options.
    pub const PLAIN: LogFlags = LogFlags {
        tcp_seq: false,
        tcp_opt: false,
        uid: false,
    };
}

/// `IN=.. OUT=.. [MAC=..] SRC=.. ...` exactly as nf_log_ip_packet/nf_log_ip6_packet print it,
/// including the trailing space.
pub fn packet_fields(h: &Headers, ctx: &LogContext<'_>, flags: LogFlags) -> String {
    let mut s = String::with_capacity(256);
    push_packet_fields(&mut s, h, ctx, flags);
    s
}

/// [`packet_fields`] appended to `s` (output paths reuse one buffer for many lines).
pub fn push_packet_fields(s: &mut String, h: &Headers, ctx: &LogContext<'_>, flags: LogFlags) {
    push_fields_with(s, h, h.tos, h.ttl, ctx, flags);
}

/// [`push_packet_fields`] with the TOS and TTL a rule path had set by then (TRACE lines after
/// a TOS/TTL target), without copying the headers.
pub fn push_fields_with(
    s: &mut String,
    h: &Headers,
    tos: u8,
    ttl: u8,
    ctx: &LogContext<'_>,
    flags: LogFlags,
) {
    s.push_str("IN=");
    s.push_str(ctx.in_dev.unwrap_or(""));
    s.push_str(" OUT=");
    s.push_str(ctx.out_dev.unwrap_or(""));
    s.push(' ');
    if let Some(p) = ctx.physin.filter(|p| Some(*p) != ctx.in_dev) {
        s.push_str("PHYSIN=");
        s.push_str(p);
        s.push(' ');
    }
    if let Some(p) = ctx.physout.filter(|p| Some(*p) != ctx.out_dev) {
        s.push_str("PHYSOUT=");
        s.push_str(p);
        s.push(' ');
    }
    if ctx.in_dev.is_some() {
        push_mac(s, ctx.mac);
    }
    match (h.src, h.dst) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            s.push_str("SRC=");
            push_ipv4_addr(s, src);
            s.push_str(" DST=");
            push_ipv4_addr(s, dst);
            s.push(' ');
            push_ipv4(s, h, tos, ttl);
        }
        _ => {
            s.push_str("SRC=");
            push_ip6_full(s, h.src);
            s.push_str(" DST=");
            push_ip6_full(s, h.dst);
            push_field(s, " LEN=", h.len.into());
            push_field(s, " TC=", tos.into());
            push_field(s, " HOPLIMIT=", ttl.into());
            push_field(s, " FLOWLBL=", h.flowlabel);
            s.push(' ');
        }
    }
    push_l4(s, h, flags);
    if flags.uid {
        if let Some((uid, gid)) = ctx.uid_gid {
            push_field(s, "UID=", uid);
            push_field(s, " GID=", gid);
            s.push(' ');
        }
    }
    if ctx.mark != 0 {
        let _ = write!(s, "MARK=0x{:x} ", ctx.mark);
    }
}

/// Appends the decimal digits of `n` (what `{n}` prints) without the formatting machinery:
/// TRACE output prints a dozen numbers per line, the collector's hottest formatting work.
#[inline]
pub(crate) fn push_u32(s: &mut String, n: u32) {
    push_u64(s, n.into());
}

/// "00" to "99", for two digits per division.
const DIGIT_PAIRS: &[u8; 200] = b"\
    0001020304050607080910111213141516171819\
    2021222324252627282930313233343536373839\
    4041424344454647484950515253545556575859\
    6061626364656667686970717273747576777879\
    8081828384858687888990919293949596979899";

/// [`push_u32`] for any unsigned number (JSON's ids and timestamps are u64). Inlined for the
/// one- and two-digit numbers most fields hold (marks, flags, TTL, protocol).
#[inline]
pub(crate) fn push_u64(s: &mut String, n: u64) {
    if n < 10 {
        s.push(char::from(b'0' + n as u8));
    } else if n < 100 {
        let pair = n as usize * 2;
        s.push(char::from(DIGIT_PAIRS[pair]));
        s.push(char::from(DIGIT_PAIRS[pair + 1]));
    } else {
        push_u64_long(s, n);
    }
}

/// [`push_u64`] of a number from 100 on.
fn push_u64_long(s: &mut String, mut n: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    while n >= 100 {
        let pair = (n % 100) as usize * 2;
        n /= 100;
        i -= 2;
        buf[i..i + 2].copy_from_slice(&DIGIT_PAIRS[pair..pair + 2]);
    }
    if n >= 10 {
        let pair = n as usize * 2;
        i -= 2;
        buf[i..i + 2].copy_from_slice(&DIGIT_PAIRS[pair..pair + 2]);
    } else {
        i -= 1;
        buf[i] = b'0' + n as u8;
    }
    // One append (ASCII digits: the UTF-8 check cannot fail).
    s.push_str(std::str::from_utf8(&buf[i..]).unwrap_or_default());
}

/// `name` then the decimal `n`.
fn push_field(s: &mut String, name: &str, n: u32) {
    s.push_str(name);
    push_u32(s, n);
}

/// Dotted quad, as `Ipv4Addr`'s Display prints it.
pub(crate) fn push_ipv4_addr(s: &mut String, a: std::net::Ipv4Addr) {
    for (i, o) in a.octets().into_iter().enumerate() {
        if i > 0 {
            s.push('.');
        }
        push_u32(s, o.into());
    }
}

const HEX_LOWER: &[u8; 16] = b"0123456789abcdef";
const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";

/// Two hex digits of `b` (what `{b:02x}` / `{b:02X}` print), without the formatting machinery.
fn push_hex_byte(s: &mut String, b: u8, digits: &[u8; 16]) {
    s.push(digits[(b >> 4) as usize] as char);
    s.push(digits[(b & 0xf) as usize] as char);
}

/// dump_mac_header's fallback (no MACDECODE): `MAC=aa:bb:...` then a space; empty when the
/// device has no link-layer header.
fn push_mac(s: &mut String, mac: Option<&[u8]>) {
    s.push_str("MAC=");
    if let Some(mac) = mac {
        for (i, b) in mac.iter().enumerate() {
            if i > 0 {
                s.push(':');
            }
            push_hex_byte(s, *b, HEX_LOWER);
        }
    }
    s.push(' ');
}

fn push_ipv4(s: &mut String, h: &Headers, tos: u8, ttl: u8) {
    // IPTOS_TOS_MASK 0x1E, IPTOS_PREC_MASK 0xE0.
    push_field(s, "LEN=", h.len.into());
    s.push_str(" TOS=0x");
    push_hex_byte(s, tos & 0x1e, HEX_UPPER);
    s.push_str(" PREC=0x");
    push_hex_byte(s, tos & 0xe0, HEX_UPPER);
    push_field(s, " TTL=", ttl.into());
    push_field(s, " ID=", h.id.into());
    s.push(' ');
    // frag_off: 0x8000 "CE" (reserved bit), 0x4000 DF, 0x2000 MF, 0x1fff offset.
    if h.frag & 0x8000 != 0 {
        s.push_str("CE ");
    }
    if h.frag & 0x4000 != 0 {
        s.push_str("DF ");
    }
    if h.frag & 0x2000 != 0 {
        s.push_str("MF ");
    }
    if h.frag & 0x1fff != 0 {
        let _ = write!(s, "FRAG:{} ", h.frag & 0x1fff);
    }
}

fn is_fragment(h: &Headers) -> bool {
    h.src.is_ipv4() && h.frag & 0x1fff != 0
}

fn push_l4(s: &mut String, h: &Headers, flags: LogFlags) {
    let frag = is_fragment(h);
    match (&h.l4, h.proto) {
        (
            L4::Tcp {
                sport,
                dport,
                seq,
                ack,
                window,
                flags: f,
                res,
                urgp,
                options,
            },
            _,
        ) if !frag => {
            push_field(s, "PROTO=TCP SPT=", (*sport).into());
            push_field(s, " DPT=", (*dport).into());
            s.push(' ');
            if flags.tcp_seq {
                push_field(s, "SEQ=", *seq);
                push_field(s, " ACK=", *ack);
                s.push(' ');
            }
            // `res` holds the low nibble of the data-offset byte: 3 reserved bits + AE.
            push_field(s, "WINDOW=", (*window).into());
            s.push_str(" RES=0x");
            push_hex_byte(s, (res & 0x0e) << 2, HEX_LOWER);
            s.push(' ');
            push_tcp_flags(s, *f, res & 0x01 != 0);
            push_field(s, "URGP=", (*urgp).into());
            s.push(' ');
            if flags.tcp_opt && !options.is_empty() {
                s.push_str("OPT (");
                for b in options {
                    push_hex_byte(s, *b, HEX_UPPER);
                }
                s.push_str(") ");
            }
        }
        (L4::Udp { sport, dport, len }, p) if !frag => {
            s.push_str("PROTO=");
            s.push_str(udp_name(p));
            push_field(s, " SPT=", (*sport).into());
            push_field(s, " DPT=", (*dport).into());
            push_field(s, " LEN=", (*len).into());
            s.push(' ');
        }
        (
            L4::Icmp {
                icmp_type,
                code,
                id,
                seq,
                quoted,
            },
            _,
        ) if !frag => {
            let ic = icmp::IcmpHead {
                icmp_type: *icmp_type,
                code: *code,
                id: *id,
                seq: *seq,
            };
            icmp::push_icmp(s, h, ic, quoted, flags);
        }
        (
            L4::Icmpv6 {
                icmp_type,
                code,
                id,
                seq,
                quoted,
            },
            _,
        ) => {
            let ic = icmp::IcmpHead {
                icmp_type: *icmp_type,
                code: *code,
                id: *id,
                seq: *seq,
            };
            icmp::push_icmpv6(s, h, ic, quoted, flags);
        }
        (_, p) => push_proto_only(s, p, h.src.is_ipv4()),
    }
}

fn udp_name(proto: u8) -> &'static str {
    if proto == 136 {
        "UDPLITE"
    } else {
        "UDP"
    }
}

/// The protocol name alone: fragments and protocols without captured transport fields.
fn push_proto_only(s: &mut String, proto: u8, v4: bool) {
    match proto {
        6 => s.push_str("PROTO=TCP "),
        17 | 136 => {
            let _ = write!(s, "PROTO={} ", udp_name(proto));
        }
        1 if v4 => s.push_str("PROTO=ICMP "),
        58 if !v4 => s.push_str("PROTO=ICMPv6 "),
        50 => s.push_str("PROTO=ESP "),
        // The kernel prints nothing for a non-first AH fragment; we lack the SPI anyway.
        51 => s.push_str("PROTO=AH "),
        p => {
            let _ = write!(s, "PROTO={p} ");
        }
    }
}

fn push_tcp_flags(s: &mut String, f: u8, ae: bool) {
    use tcp_flags::*;
    if ae {
        s.push_str("AE ");
    }
    for (bit, name) in [
        (CWR, "CWR"),
        (ECE, "ECE"),
        (URG, "URG"),
        (ACK, "ACK"),
        (PSH, "PSH"),
        (RST, "RST"),
        (SYN, "SYN"),
        (FIN, "FIN"),
    ] {
        if f & bit != 0 {
            s.push_str(name);
            s.push(' ');
        }
    }
}

/// `%pI6`: eight 4-digit groups, never compressed.
fn push_ip6_full(s: &mut String, ip: IpAddr) {
    match ip {
        IpAddr::V6(a) => {
            for (i, g) in a.octets().chunks(2).enumerate() {
                if i > 0 {
                    s.push(':');
                }
                push_hex_byte(s, g[0], HEX_LOWER);
                push_hex_byte(s, g[1], HEX_LOWER);
            }
        }
        IpAddr::V4(a) => {
            let _ = write!(s, "{a}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The digit writer prints what `{n}` prints, at every digit count and pair boundary.
    #[test]
    fn numbers_print_as_display_does() {
        let mut values = vec![0, 9, 10, 11, 99, 100, 101, 999, 1000, 1009, u64::MAX];
        values.extend((0..20).map(|e| 10u64.pow(e) - 1));
        values.extend((0..20).map(|e| 10u64.pow(e)));
        values.extend([u32::MAX.into(), 3_000_000_007, 65_535]);
        for n in values {
            let mut s = String::from("x");
            push_u64(&mut s, n);
            assert_eq!(s, format!("x{n}"));
            if let Ok(small) = u32::try_from(n) {
                s.clear();
                push_u32(&mut s, small);
                assert_eq!(s, small.to_string());
            }
        }
    }

    fn tcp_headers() -> Headers {
        Headers {
            src: "172.19.0.1".parse().unwrap(),
            dst: "172.19.0.9".parse().unwrap(),
            proto: 6,
            len: 52,
            tos: 0,
            ttl: 64,
            id: 65380,
            frag: 0x4000,
            flowlabel: 0,
            l4: L4::Tcp {
                sport: 58726,
                dport: 80,
                seq: 1826961587,
                ack: 3047535488,
                window: 63,
                flags: tcp_flags::ACK,
                res: 0,
                urgp: 0,
                options: vec![1, 1, 8, 10, 0x11, 0x36, 0xb1, 0xb1, 0x1e, 0x13, 0xb1, 0x90],
            },
        }
    }

    #[test]
    fn decimal_digits_match_display() {
        for n in [0, 9, 10, 99, 100, 65535, 1826961587, u32::MAX] {
            let mut s = String::from("X=");
            push_u32(&mut s, n);
            assert_eq!(s, format!("X={n}"));
        }
    }

    #[test]
    fn local_tcp_matches_kernel_trace_line() {
        // legacy-local.txt, line 1 (after the "TRACE: mangle:OUTPUT:policy:1 " prefix).
        let want = "IN= OUT=br-00ea7870520a SRC=172.19.0.1 DST=172.19.0.9 LEN=52 TOS=0x00 PREC=0x00 TTL=64 ID=65380 DF PROTO=TCP SPT=58726 DPT=80 SEQ=1826961587 ACK=3047535488 WINDOW=63 RES=0x00 ACK URGP=0 OPT (0101080A1136B1B11E13B190) UID=0 GID=0 ";
        let ctx = LogContext {
            out_dev: Some("br-00ea7870520a"),
            uid_gid: Some((0, 0)),
            ..Default::default()
        };
        assert_eq!(packet_fields(&tcp_headers(), &ctx, LogFlags::TRACE), want);
    }

    #[test]
    fn received_packet_prints_mac_and_plain_log_omits_seq() {
        // legacy-log-remote.txt line 1.
        let want = "IN=eth0 OUT= MAC=7e:31:b8:fe:69:94:b2:88:7d:3e:1d:e2:08:00 SRC=192.168.64.5 DST=192.168.64.4 LEN=52 TOS=0x00 PREC=0x00 TTL=64 ID=62913 DF PROTO=TCP SPT=55158 DPT=10000 WINDOW=63 RES=0x00 ACK URGP=0 ";
        let mut h = tcp_headers();
        h.src = "192.168.64.5".parse().unwrap();
        h.dst = "192.168.64.4".parse().unwrap();
        h.id = 62913;
        h.l4 = L4::Tcp {
            sport: 55158,
            dport: 10000,
            seq: 1,
            ack: 2,
            window: 63,
            flags: tcp_flags::ACK,
            res: 0,
            urgp: 0,
            options: vec![1, 1],
        };
        let mac = [
            0x7e, 0x31, 0xb8, 0xfe, 0x69, 0x94, 0xb2, 0x88, 0x7d, 0x3e, 0x1d, 0xe2, 0x08, 0x00,
        ];
        let ctx = LogContext {
            in_dev: Some("eth0"),
            mac: Some(&mac),
            ..Default::default()
        };
        assert_eq!(packet_fields(&h, &ctx, LogFlags::PLAIN), want);
    }

    #[test]
    fn flags_fragments_icmp_ipv6_and_mark() {
        let mut h = tcp_headers();
        h.l4 = L4::Tcp {
            sport: 1,
            dport: 2,
            seq: 0,
            ack: 0,
            window: 0,
            flags: tcp_flags::ACK | tcp_flags::FIN | tcp_flags::SYN | tcp_flags::CWR,
            res: 0x0f,
            urgp: 0,
            options: vec![],
        };
        let ctx = LogContext {
            mark: 0x4000,
            ..Default::default()
        };
        let s = packet_fields(&h, &ctx, LogFlags::PLAIN);
        assert!(
            s.ends_with("RES=0x38 AE CWR ACK SYN FIN URGP=0 MARK=0x4000 "),
            "{s}"
        );

        h.frag = 0x2000 | 185;
        h.l4 = L4::Other;
        let s = packet_fields(&h, &LogContext::default(), LogFlags::TRACE);
        assert!(s.ends_with("ID=65380 MF FRAG:185 PROTO=TCP "), "{s}");

        h.frag = 0;
        h.proto = 1;
        h.l4 = L4::Icmp {
            icmp_type: 8,
            code: 0,
            id: 7,
            seq: 3,
            quoted: vec![],
        };
        let s = packet_fields(&h, &LogContext::default(), LogFlags::TRACE);
        assert!(s.ends_with("PROTO=ICMP TYPE=8 CODE=0 ID=7 SEQ=3 "), "{s}");

        let h6 = Headers {
            src: "2001:db8::1".parse().unwrap(),
            dst: "fe80::2".parse().unwrap(),
            proto: 17,
            len: 88,
            tos: 0,
            ttl: 255,
            id: 0,
            frag: 0,
            flowlabel: 0x12345,
            l4: L4::Udp {
                sport: 53,
                dport: 4000,
                len: 48,
            },
        };
        let s = packet_fields(
            &h,
            &LogContext {
                in_dev: Some("br0"),
                physin: Some("veth1"),
                ..Default::default()
            },
            LogFlags::PLAIN,
        );
        assert!(s.starts_with("IN=br0 OUT= PHYSIN=veth1 MAC= SRC="), "{s}");
        let s = packet_fields(
            &h6,
            &LogContext {
                in_dev: Some("eth0"),
                ..Default::default()
            },
            LogFlags::TRACE,
        );
        assert_eq!(s, "IN=eth0 OUT= MAC= SRC=2001:0db8:0000:0000:0000:0000:0000:0001 DST=fe80:0000:0000:0000:0000:0000:0000:0002 LEN=88 TC=0 HOPLIMIT=255 FLOWLBL=74565 PROTO=UDP SPT=53 DPT=4000 LEN=48 ");
    }
}

//! The IPv6 header inside a raw `@th,0,N 0x…` dump of an `nft monitor trace` packet line.
//!
//! For a later (non-first) IPv6 fragment the kernel finds no transport header, and the
//! trace's transport-header dump starts at the network header: nft then prints no `ip6`
//! fields at all, only `ether type ip6 @th,0,160 0x60003ba402382c40fd99077700010000…` —
//! the 40-byte IPv6 header cut after N bits (160 on the kernels measured: the fixed 8 bytes
//! and 12 bytes of the source address). Measured on 6.18 with nftables 1.0.6:
//!
//! ```text
//! … ip6 filter FORWARD packet: iif "r0" oif "r1" ether saddr … ether type ip6 @th,0,160 0x60003ba402382c3ffd9907770001000000000000
//! ```
//!
//! version 6, traffic class 0, flow label 0x3ba4, payload length 0x238, next header 44
//! (fragment), hop limit 0x3f, source address bytes fd99:0777:0001:0000:0000:0000. What the
//! dump gives is enough to pair the line with a captured packet (see `compare::matching`).

use super::fields::RefHeaders;
use std::net::{IpAddr, Ipv6Addr};

/// The fields of the fixed IPv6 header (and as much of the addresses as the dump holds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ip6Dump {
    pub tc: u8,
    pub flowlabel: u32,
    pub payload_len: u16,
    pub next_header: u8,
    pub hop_limit: u8,
    /// Source address bytes the dump holds (up to 16).
    pub src: Vec<u8>,
    /// Destination address bytes the dump holds (up to 16).
    pub dst: Vec<u8>,
}

/// Decodes `@th,0,<bits>` = `value` as an IPv6 header. None when the expression does not
/// start at offset 0, is not a whole number of bytes, holds less than the fixed 8 bytes, its
/// value is not hex, or the version nibble is not 6. nft prints the value as a number:
/// leading zero digits are missing, so it is right-aligned in `bits`.
pub fn decode(expr: &str, value: &str) -> Option<Ip6Dump> {
    let bits: usize = expr.strip_prefix("@th,0,")?.parse().ok()?;
    if !bits.is_multiple_of(8) || !(64..=320).contains(&bits) {
        return None;
    }
    let digits = value.strip_prefix("0x")?;
    let width = bits / 4;
    if digits.is_empty() || digits.len() > width || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let padded = format!("{digits:0>width$}");
    let bytes: Vec<u8> = (0..bits / 8)
        .map(|i| u8::from_str_radix(&padded[2 * i..2 * i + 2], 16).ok())
        .collect::<Option<_>>()?;
    if bytes[0] >> 4 != 6 {
        return None;
    }
    let word = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    let addr = |from: usize| {
        bytes
            .get(from..)
            .map_or(Vec::new(), |b| b[..b.len().min(16)].to_vec())
    };
    Some(Ip6Dump {
        tc: (word >> 20) as u8,
        flowlabel: word & 0x000f_ffff,
        payload_len: u16::from_be_bytes([bytes[4], bytes[5]]),
        next_header: bytes[6],
        hop_limit: bytes[7],
        src: addr(8),
        dst: addr(24),
    })
}

fn full(bytes: &[u8]) -> Option<IpAddr> {
    let a: [u8; 16] = bytes.try_into().ok()?;
    Some(IpAddr::V6(Ipv6Addr::from(a)))
}

/// For a packet line that shows no addresses: the IPv6 header of its `@th,0,N` dump, moved
/// from `unknown` into the header fields (the length as LOG prints it, payload + 40). Lines
/// with addresses keep their dumps: there `@th` is a real transport header.
pub fn apply(h: &mut RefHeaders) {
    if h.src.is_some() || h.dst.is_some() {
        return;
    }
    let Some((i, d)) = h.unknown.iter().enumerate().find_map(|(i, u)| {
        let (expr, value) = u.split_once(' ')?;
        Some((i, decode(expr, value)?))
    }) else {
        return;
    };
    h.unknown.remove(i);
    h.tc = Some(d.tc);
    h.flowlabel = Some(d.flowlabel);
    h.len = Some(u32::from(d.payload_len) + 40);
    h.ttl = Some(d.hop_limit);
    h.src = full(&d.src);
    h.dst = full(&d.dst);
    if h.src.is_none() {
        h.src_prefix = d.src;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_the_measured_later_fragment_dump() {
        let d = decode("@th,0,160", "0x60003ba402382c3ffd9907770001000000000000").unwrap();
        assert_eq!(
            (d.tc, d.flowlabel, d.payload_len, d.next_header, d.hop_limit),
            (0, 0x3ba4, 0x238, 44, 0x3f)
        );
        assert_eq!(d.src, [0xfd, 0x99, 7, 0x77, 0, 1, 0, 0, 0, 0, 0, 0]);
        assert!(d.dst.is_empty());
    }

    #[test]
    fn traffic_class_and_flow_label_split_the_first_word() {
        // Traffic class 0xb8 (EF), flow label 0xfffff.
        let d = decode("@th,0,64", "0x6b8fffff00102c01").unwrap();
        assert_eq!((d.tc, d.flowlabel, d.payload_len), (0xb8, 0xfffff, 16));
        assert!(d.src.is_empty());
    }

    #[test]
    fn a_whole_header_gives_both_addresses() {
        let hex = "600000000008113f".to_string()
            + "fd990213000100000000000000000002"
            + "fd990213000200000000000000000002";
        let d = decode("@th,0,320", &format!("0x{hex}")).unwrap();
        assert_eq!(full(&d.src), Some("fd99:213:1::2".parse().unwrap()));
        assert_eq!(full(&d.dst), Some("fd99:213:2::2".parse().unwrap()));
    }

    #[test]
    fn rejects_what_is_not_an_ipv6_header() {
        // A UDP header (first fragment: nft dumps the transport header it cannot decode).
        assert_eq!(
            decode("@th,0,160", "0xa847232b07d8840c787878787878787878787878"),
            None
        );
        // Leading zeros missing: right-aligned, the version nibble is then 0.
        assert_eq!(decode("@th,0,64", "0x6000000000102c"), None);
        assert_eq!(decode("@th,64,96", "0x6000000000000000"), None);
        assert_eq!(decode("@th,0,60", "0x600000000000000"), None);
        assert_eq!(decode("@th,0,64", "0x60000000001g2c01"), None);
        assert_eq!(decode("@th,0,64", "600000000000102c"), None);
        assert_eq!(decode("@th,0,64", "0x160000000000102c01"), None);
    }

    #[test]
    fn applies_only_to_lines_without_addresses() {
        let dump = "@th,0,160 0x60003ba402382c40fd9907770001000000000000".to_string();
        let mut h = RefHeaders {
            in_dev: Some("r0".into()),
            unknown: vec!["ether type ip6".into(), dump.clone()],
            ..Default::default()
        };
        apply(&mut h);
        assert_eq!(
            (h.tc, h.flowlabel, h.len, h.ttl, h.src, h.dst),
            (Some(0), Some(0x3ba4), Some(568 + 40), Some(64), None, None)
        );
        assert_eq!(h.src_prefix, [0xfd, 0x99, 7, 0x77, 0, 1, 0, 0, 0, 0, 0, 0]);
        assert_eq!(h.unknown, ["ether type ip6"]);
        let mut addressed = RefHeaders {
            src: Some("fd99::1".parse().unwrap()),
            unknown: vec![dump],
            ..Default::default()
        };
        let before = addressed.clone();
        apply(&mut addressed);
        assert_eq!(addressed, before);
    }
}

//! Values of the filter language: addresses and prefixes, ports and service names, protocol
//! and ICMP type names, numbers. Each parser returns the error for the word's column.

use super::ast::Net;
use super::FilterError;
use std::net::{IpAddr, Ipv4Addr};

pub(super) fn host(text: &str, column: usize) -> Result<Net, FilterError> {
    match text.parse::<IpAddr>() {
        Ok(a) => Ok(Net {
            addr: a,
            prefix: max_prefix(a),
        }),
        Err(_) if text.contains('/') => Err(FilterError::InvalidValue {
            column,
            what: "host address (use 'net' for a prefix)",
            text: text.into(),
        }),
        Err(_) => Err(FilterError::Unsupported {
            column,
            what: format!("host name '{text}'"),
            hint: "names are not resolved; give an IPv4 or IPv6 address".into(),
        }),
    }
}

pub(super) fn max_prefix(a: IpAddr) -> u8 {
    if a.is_ipv4() {
        32
    } else {
        128
    }
}

pub(super) fn parse_net_addr(text: &str) -> Option<IpAddr> {
    text.parse::<IpAddr>()
        .ok()
        .or_else(|| partial_v4(text).map(|(a, _)| a))
}

/// tcpdump's abbreviated IPv4 networks: `10` = 10.0.0.0/8, `192.168` = /16, `10.1.2` = /24.
pub(super) fn partial_v4(text: &str) -> Option<(IpAddr, u8)> {
    let parts: Vec<&str> = text.split('.').collect();
    if parts.len() >= 4 || !text.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return None;
    }
    let mut octets = [0u8; 4];
    for (o, p) in octets.iter_mut().zip(&parts) {
        *o = p.parse().ok()?;
    }
    Some((IpAddr::V4(Ipv4Addr::from(octets)), 8 * parts.len() as u8))
}

/// Prefix length of a contiguous netmask of `addr`'s family.
pub(super) fn mask_prefix(text: &str, addr: IpAddr) -> Option<u8> {
    let (bits, width) = match (text.parse::<IpAddr>().ok()?, addr) {
        (IpAddr::V4(m), IpAddr::V4(_)) => (u32::from(m) as u128, 32),
        (IpAddr::V6(m), IpAddr::V6(_)) => (u128::from(m), 128),
        _ => return None,
    };
    let ones = bits.count_ones();
    let expected = if ones == 0 {
        0
    } else {
        (u128::MAX >> (128 - width)) & !((1u128 << (width - ones)) - 1)
    };
    (bits == expected).then_some(ones as u8)
}

pub(super) fn parse_u32(text: &str) -> Option<u32> {
    match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    }
}

/// Well-known service names, so `port https` works without /etc/services (pure core).
pub(super) fn port(text: &str, column: usize) -> Result<u16, FilterError> {
    let named = match text {
        "ftp-data" => Some(20),
        "ftp" => Some(21),
        "ssh" => Some(22),
        "telnet" => Some(23),
        "smtp" => Some(25),
        "domain" | "dns" => Some(53),
        "http" => Some(80),
        "ntp" => Some(123),
        "https" => Some(443),
        _ => None,
    };
    named
        .or_else(|| text.parse::<u16>().ok())
        .ok_or(FilterError::InvalidValue {
            column,
            what: "port",
            text: text.into(),
        })
}

pub(super) fn port_range(text: &str, column: usize) -> Result<(u16, u16), FilterError> {
    let bad = || FilterError::InvalidValue {
        column,
        what: "port range (LOW-HIGH)",
        text: text.into(),
    };
    let (a, b) = text.split_once('-').ok_or_else(bad)?;
    let (lo, hi) = (
        port(a, column).map_err(|_| bad())?,
        port(b, column).map_err(|_| bad())?,
    );
    if lo > hi {
        return Err(bad());
    }
    Ok((lo, hi))
}

pub(super) fn proto_number(name: &str) -> Option<u8> {
    match name {
        "icmp" => Some(1),
        "igmp" => Some(2),
        "tcp" => Some(6),
        "udp" => Some(17),
        "gre" => Some(47),
        "esp" => Some(50),
        "ah" => Some(51),
        "icmp6" | "ipv6-icmp" => Some(58),
        "sctp" => Some(132),
        _ => None,
    }
}

pub(super) fn icmp_type_number(name: &str, v6: bool) -> Option<u8> {
    let t = match (name, v6) {
        ("echo-reply", false) => 0,
        ("unreachable" | "destination-unreachable", false) => 3,
        ("redirect", false) => 5,
        ("echo-request", false) => 8,
        ("time-exceeded", false) => 11,
        ("unreachable" | "destination-unreachable", true) => 1,
        ("packet-too-big", true) => 2,
        ("time-exceeded", true) => 3,
        ("echo-request", true) => 128,
        ("echo-reply", true) => 129,
        ("neighbor-solicitation", true) => 135,
        ("neighbor-advertisement", true) => 136,
        _ => return None,
    };
    Some(t)
}

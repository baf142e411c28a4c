//! The parsed filter: a boolean tree of primitives. Qualifier shorthands and keyword forms are
//! resolved by the parser, so each primitive here is one test on one packet field.

use crate::netfilter::Family;
use std::net::IpAddr;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    /// The empty filter.
    True,
    Prim(Prim),
    Not(Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
}

/// Which side of the packet a primitive looks at. For `iface`, Src = input device and
/// Dst = output device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dir {
    Src,
    Dst,
    /// Either side (`host`, `port`, `iface` without qualifier; `src or dst`).
    Either,
    /// Both sides (`src and dst`).
    Both,
}

/// An address prefix: `addr` already has its host bits cleared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Net {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Net {
    pub fn family(&self) -> Family {
        match self.addr {
            IpAddr::V4(_) => Family::Ipv4,
            IpAddr::V6(_) => Family::Ipv6,
        }
    }

    /// Does `a` lie in this prefix? (Different families never do.)
    pub fn contains(&self, a: IpAddr) -> bool {
        match (self.addr, a) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let m = u32::MAX.checked_shl(32 - self.prefix as u32).unwrap_or(0);
                u32::from(a) & m == u32::from(n)
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let m = u128::MAX.checked_shl(128 - self.prefix as u32).unwrap_or(0);
                u128::from(a) & m == u128::from(n)
            }
            _ => false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Prim {
    /// `ip`, `ip6`.
    Family(Family),
    /// `proto N`, `tcp`, `udp`, `icmp`, `icmp6`, `sctp`.
    Proto(u8),
    /// `host A` (full-length prefix), `net N/len`.
    Net { dir: Dir, net: Net },
    /// `port P` (lo == hi), `portrange A-B`: only TCP, UDP and SCTP packets match.
    Port { dir: Dir, lo: u16, hi: u16 },
    /// `iface NAME`; `prefix` for `NAME+` (iptables-style wildcard).
    Iface {
        dir: Dir,
        name: String,
        prefix: bool,
    },
    /// `mark V/M`: (mark & M) == V.
    Mark { value: u32, mask: u32 },
    /// `icmp-type N` / `icmp6-type N` (the parser adds the protocol test).
    IcmpType(u8),
}

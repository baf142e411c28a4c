//! What the evaluator knows about the packet's network namespace besides the packet: its
//! addresses (for `-m addrtype`), interface names. Unknown facts make matches branch points.

use serde::{Deserialize, Serialize};
use std::net::IpAddr;

/// One address assigned to an interface of the netns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IfaceAddr {
    pub iface: String,
    pub addr: IpAddr,
    /// Directed broadcast address of the subnet (IPv4), if any.
    #[serde(default)]
    pub broadcast: Option<IpAddr>,
}

/// The subnet broadcast address the kernel puts in the local routing table for an IPv4
/// address of this prefix length, whether or not a `brd` was configured (fib_add_ifaddr:
/// `prefix | ~mask` for prefixes shorter than /31) — what `-m addrtype --dst-type
/// BROADCAST` finds. None for IPv6 and /31, /32.
pub fn subnet_broadcast(addr: IpAddr, prefix_len: u8) -> Option<IpAddr> {
    match addr {
        IpAddr::V4(a) if prefix_len < 31 => {
            let host_bits = u32::MAX >> prefix_len;
            Some(IpAddr::V4((u32::from(a) | host_bits).into()))
        }
        _ => None,
    }
}

/// Host state of one netns. `known = false` (the default) means "no information": every match
/// that needs it becomes a branch point instead of being guessed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetContext {
    pub known: bool,
    pub addrs: Vec<IfaceAddr>,
    /// Interface names (ifindex order irrelevant).
    #[serde(default)]
    pub interfaces: Vec<String>,
    /// Bridge devices of the netns; meaningful only when `bridges_known`.
    #[serde(default)]
    pub bridges: Vec<String>,
    #[serde(default)]
    pub bridges_known: bool,
    /// The netns's ipsets (`ipset save`); None when they were not read (every `-m set`
    /// then branches).
    #[serde(default)]
    pub ipsets: Option<super::ipset::IpSets>,
}

impl NetContext {
    /// A context with no information (every host-state match branches).
    pub fn unknown() -> Self {
        NetContext::default()
    }

    /// A context from `(iface, address, broadcast)` triples.
    pub fn from_addrs(addrs: impl IntoIterator<Item = IfaceAddr>) -> Self {
        let addrs: Vec<IfaceAddr> = addrs.into_iter().collect();
        let mut interfaces: Vec<String> = addrs.iter().map(|a| a.iface.clone()).collect();
        interfaces.dedup();
        NetContext {
            known: true,
            addrs,
            interfaces,
            bridges: Vec::new(),
            bridges_known: false,
            ipsets: None,
        }
    }

    /// Some(true/false) when the bridge devices are known.
    pub fn is_bridge(&self, dev: &str) -> Option<bool> {
        self.bridges_known
            .then(|| self.bridges.iter().any(|b| b == dev))
    }

    /// Local addresses the kernel's local routing table holds: assigned addresses, and all
    /// of 127.0.0.0/8 (the loopback route is `local 127.0.0.0/8`). `dev` restricts to
    /// addresses of that device (`--limit-iface-*`).
    pub fn is_local(&self, ip: IpAddr, dev: Option<&str>) -> bool {
        let loopback = match ip {
            IpAddr::V4(a) => a.is_loopback(),
            IpAddr::V6(a) => a.is_loopback(),
        };
        if loopback {
            return dev.is_none_or(|d| d == "lo");
        }
        self.addrs
            .iter()
            .any(|a| a.addr == ip && dev.is_none_or(|d| d == a.iface))
    }

    /// True when `ip` is the directed broadcast of one of the subnets.
    pub fn is_broadcast(&self, ip: IpAddr, dev: Option<&str>) -> bool {
        self.addrs
            .iter()
            .any(|a| a.broadcast == Some(ip) && dev.is_none_or(|d| d == a.iface))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnet_broadcast_as_the_local_table_has_it() {
        // `ip route show table local` after `ip addr add 10.81.1.1/24` (no brd) on 6.18:
        // `broadcast 10.81.1.255`; lo's 127.0.0.1/8: `broadcast 127.255.255.255`.
        let b = |a: &str, p| subnet_broadcast(a.parse().unwrap(), p).map(|x| x.to_string());
        assert_eq!(b("10.81.1.1", 24).as_deref(), Some("10.81.1.255"));
        assert_eq!(b("127.0.0.1", 8).as_deref(), Some("127.255.255.255"));
        assert_eq!(b("0.0.0.0", 0).as_deref(), Some("255.255.255.255"));
        assert_eq!(b("10.0.0.1", 31), None);
        assert_eq!(b("10.0.0.1", 32), None);
        assert_eq!(b("fd00::1", 64), None);
    }
}

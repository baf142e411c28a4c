//! Netfilter vocabulary shared by every stage: address families, hooks, tables and the
//! priorities at which iptables registers its tables (include/uapi/linux/netfilter_ipv4.h).

use serde::{Deserialize, Serialize};
use std::fmt;

/// Protocol family of a netfilter hook (NFPROTO_*).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Ipv4,
    Ipv6,
}

impl Family {
    /// NFPROTO_IPV4 = 2, NFPROTO_IPV6 = 10.
    pub fn from_nfproto(pf: u8) -> Option<Self> {
        match pf {
            2 => Some(Family::Ipv4),
            10 => Some(Family::Ipv6),
            _ => None,
        }
    }

    pub fn nfproto(self) -> u8 {
        match self {
            Family::Ipv4 => 2,
            Family::Ipv6 => 10,
        }
    }
}

/// The five inet hooks, in NF_INET_* numbering.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Hook {
    Prerouting,
    Input,
    Forward,
    Output,
    Postrouting,
}

impl Hook {
    pub const ALL: [Hook; 5] = [
        Hook::Prerouting,
        Hook::Input,
        Hook::Forward,
        Hook::Output,
        Hook::Postrouting,
    ];

    pub fn from_num(n: u8) -> Option<Self> {
        Self::ALL.get(n as usize).copied()
    }

    pub fn num(self) -> u8 {
        self as u8
    }

    /// The built-in chain name iptables uses for this hook.
    pub fn chain_name(self) -> &'static str {
        match self {
            Hook::Prerouting => "PREROUTING",
            Hook::Input => "INPUT",
            Hook::Forward => "FORWARD",
            Hook::Output => "OUTPUT",
            Hook::Postrouting => "POSTROUTING",
        }
    }

    pub fn from_chain_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|h| h.chain_name() == name)
    }
}

impl fmt::Display for Hook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.chain_name())
    }
}

/// The iptables tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Table {
    Raw,
    Mangle,
    Nat,
    Filter,
    Security,
}

impl Table {
    pub const ALL: [Table; 5] = [
        Table::Raw,
        Table::Mangle,
        Table::Nat,
        Table::Filter,
        Table::Security,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Table::Raw => "raw",
            Table::Mangle => "mangle",
            Table::Nat => "nat",
            Table::Filter => "filter",
            Table::Security => "security",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.name() == name)
    }

    /// Priority at which the kernel registers this table on `hook` (NF_IP_PRI_*; the same for
    /// IPv6). nat is registered as DNAT (-100) on PREROUTING/OUTPUT and SNAT (100) on
    /// INPUT/POSTROUTING. None where the table has no chain for the hook.
    pub fn priority(self, hook: Hook) -> Option<i32> {
        use Hook::*;
        match (self, hook) {
            (Table::Raw, Prerouting | Output) => Some(-300),
            (Table::Raw, _) => None,
            (Table::Mangle, _) => Some(-150),
            (Table::Nat, Prerouting | Output) => Some(-100),
            (Table::Nat, Input | Postrouting) => Some(100),
            (Table::Nat, Forward) => None,
            (Table::Filter, Input | Forward | Output) => Some(0),
            (Table::Filter, _) => None,
            (Table::Security, Input | Forward | Output) => Some(50),
            (Table::Security, _) => None,
        }
    }

    /// Tables that have a chain on `hook`, in the order the kernel runs them.
    pub fn on_hook(hook: Hook) -> Vec<Table> {
        let mut v: Vec<(i32, Table)> = Self::ALL
            .into_iter()
            .filter_map(|t| t.priority(hook).map(|p| (p, t)))
            .collect();
        v.sort();
        v.into_iter().map(|(_, t)| t).collect()
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Conntrack priorities that matter for bracketing (NF_IP_PRI_CONNTRACK, ..._CONFIRM).
pub const PRIO_CONNTRACK: i32 = -200;
pub const PRIO_CONNTRACK_CONFIRM: i32 = i32::MAX;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_on_hooks_follow_kernel_priorities() {
        assert_eq!(
            Table::on_hook(Hook::Prerouting),
            vec![Table::Raw, Table::Mangle, Table::Nat]
        );
        assert_eq!(
            Table::on_hook(Hook::Output),
            vec![
                Table::Raw,
                Table::Mangle,
                Table::Nat,
                Table::Filter,
                Table::Security
            ]
        );
        assert_eq!(
            Table::on_hook(Hook::Postrouting),
            vec![Table::Mangle, Table::Nat]
        );
        assert_eq!(
            Table::on_hook(Hook::Input),
            vec![Table::Mangle, Table::Filter, Table::Security, Table::Nat]
        );
    }
}

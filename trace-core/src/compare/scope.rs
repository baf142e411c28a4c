//! Which reference packets belong to the traced network namespaces. With
//! `net.netfilter.nf_log_all_netns=1` every namespace's legacy TRACE and LOG lines reach the
//! same kernel log, and the lines do not name their namespace. What they do show is the
//! interfaces (`IN=`/`OUT=`/`PHYSIN=`/`PHYSOUT=` names) and, for received packets, the
//! link-layer header (`MAC=` destination:source:type). A packet is foreign when a line of it
//! names an interface the traced namespaces do not have, or when it was received on one of
//! ours with a unicast destination MAC that cannot be ours: routed, not that interface's
//! address (IP drops other hosts' frames before netfilter, so such a packet arrived on a
//! same-named interface elsewhere); through a bridge port (`PHYSIN=`, br_netfilter) and
//! delivered locally, none of our addresses (the bridge delivers only frames for itself or
//! its ports; bridged frames may be for anyone). It is ours for sure when it was received for
//! our own MAC.
//!
//! Packets that show neither (locally generated ones carry no MAC) follow their flow: a flow
//! (protocol and the two address:port ends, either direction, any NAT snapshot) with foreign
//! packets and no sure-ours packet is foreign as a whole — the reply a namespace's own socket
//! sends to a foreign client is foreign too. Conservative by design: without such evidence a
//! packet stays ours (unpaired: "only in reference"); namespaces identical down to the
//! flows (same addresses, ports, ICMP ids) cannot be told apart.

use super::reference::{RefHeaders, RefPacket};
use crate::netfilter::Hook;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::net::IpAddr;

/// One interface of a traced namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScopeIface {
    pub name: String,
    /// Link-layer address as `ip link` prints it (`aa:bb:cc:dd:ee:ff`); None without one.
    pub mac: Option<String>,
}

/// The interfaces of the traced namespaces (every interface seen while tracing).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetnsScope {
    pub ifaces: Vec<ScopeIface>,
}

/// What a packet's own lines say about where it was traced.
#[derive(Debug, Clone, PartialEq)]
enum Seen {
    Foreign(String),
    Ours,
    Undecided,
}

/// A flow, direction-free: protocol and the two (address, port or ICMP id) ends, ordered.
type FlowKey = (Option<u8>, (IpAddr, Option<u16>), (IpAddr, Option<u16>));

fn flow_keys(p: &RefPacket) -> Vec<FlowKey> {
    let mut keys: Vec<FlowKey> = p
        .headers
        .iter()
        .filter_map(|h| {
            let a = (h.src?, h.sport.or(h.icmp_id));
            let b = (h.dst?, h.dport.or(h.icmp_id));
            Some((h.proto, a.min(b), a.max(b)))
        })
        .collect();
    keys.dedup();
    keys
}

impl NetnsScope {
    /// Adds interfaces not known yet (by name and address).
    pub fn extend(&mut self, ifaces: impl IntoIterator<Item = ScopeIface>) {
        for i in ifaces {
            if !self.ifaces.contains(&i) {
                self.ifaces.push(i);
            }
        }
    }

    /// Per packet, why it comes from another namespace; None when it may be ours.
    pub fn foreign_reasons(&self, packets: &[RefPacket]) -> Vec<Option<String>> {
        let seen: Vec<Seen> = packets.iter().map(|p| self.seen(p)).collect();
        // Per flow: the first foreign packet's line and reason, and whether one is ours.
        let mut flows: HashMap<FlowKey, (Option<(usize, String)>, bool)> = HashMap::new();
        for (p, s) in packets.iter().zip(&seen) {
            for k in flow_keys(p) {
                let f = flows.entry(k).or_default();
                match s {
                    Seen::Foreign(why) => {
                        f.0.get_or_insert_with(|| (p.line, why.clone()));
                    }
                    Seen::Ours => f.1 = true,
                    Seen::Undecided => {}
                }
            }
        }
        packets
            .iter()
            .zip(seen)
            .map(|(p, s)| match s {
                Seen::Foreign(why) => Some(why),
                Seen::Ours => None,
                Seen::Undecided => flow_keys(p).iter().find_map(|k| match flows.get(k) {
                    Some((Some((line, why)), false)) => {
                        Some(format!("same flow as line {line} ({why})"))
                    }
                    _ => None,
                }),
            })
            .collect()
    }

    fn seen(&self, p: &RefPacket) -> Seen {
        let local = p
            .steps()
            .iter()
            .any(|s| Hook::from_chain_name(&s.chain) == Some(Hook::Input));
        let per_line: Vec<Seen> = p.headers.iter().map(|h| self.seen_line(h, local)).collect();
        if let Some(Seen::Foreign(why)) = per_line.iter().find(|s| matches!(s, Seen::Foreign(_))) {
            return Seen::Foreign(why.clone());
        }
        if per_line.contains(&Seen::Ours) {
            Seen::Ours
        } else {
            Seen::Undecided
        }
    }

    /// What one line says. `local`: the packet was delivered to this netns (an INPUT step).
    fn seen_line(&self, h: &RefHeaders, local: bool) -> Seen {
        for dev in [&h.in_dev, &h.out_dev, &h.physin, &h.physout]
            .into_iter()
            .flatten()
        {
            if !self.ifaces.iter().any(|i| i.name == *dev) {
                return Seen::Foreign(format!("interface {dev} is not in the traced netns"));
            }
        }
        let (Some(dev), Some(dst)) = (&h.in_dev, h.mac.as_deref().and_then(link_dst)) else {
            return Seen::Undecided;
        };
        let unicast = u8::from_str_radix(&dst[..2], 16).is_ok_and(|b| b & 1 == 0);
        let mac_of = |name: Option<&String>| {
            self.ifaces
                .iter()
                .filter(|i| name.is_none_or(|n| i.name == *n))
                .filter_map(|i| i.mac.as_deref())
                .any(|m| m.eq_ignore_ascii_case(&dst))
        };
        let known = self
            .ifaces
            .iter()
            .any(|i| i.name == *dev && i.mac.is_some());
        if !unicast || !known {
            return Seen::Undecided;
        }
        match &h.physin {
            // Routed: IP takes only frames for the receiving interface itself.
            None if mac_of(Some(dev)) => Seen::Ours,
            None => Seen::Foreign(format!("received on {dev} for MAC {dst}, not {dev}'s")),
            // Through a bridge port (br_netfilter): bridged frames may be for any host behind
            // the bridge; a frame delivered here was for the bridge or one of its ports.
            Some(_) if mac_of(None) => Seen::Ours,
            Some(port) if local => Seen::Foreign(format!(
                "delivered through {dev} (port {port}) for MAC {dst}, none of this netns's"
            )),
            Some(_) => Seen::Undecided,
        }
    }
}

impl NetnsScope {
    /// The interfaces `ip link show` lists (iproute2 and busybox print the same shape):
    /// `N: NAME[@PEER]: <FLAGS> …` then `    link/TYPE ADDRESS brd …`.
    pub fn from_ip_link(text: &str) -> NetnsScope {
        let mut scope = NetnsScope::default();
        for line in text.lines() {
            if line.starts_with(|c: char| c.is_ascii_digit()) {
                let name = line.split(": ").nth(1).unwrap_or("");
                let name = name.split('@').next().unwrap_or(name);
                if !name.is_empty() {
                    scope.ifaces.push(ScopeIface {
                        name: name.to_string(),
                        mac: None,
                    });
                }
            } else if let Some(link) = line.trim_start().strip_prefix("link/") {
                let addr = link.split_whitespace().nth(1).filter(|a| is_mac(a));
                if let (Some(last), Some(a)) = (scope.ifaces.last_mut(), addr) {
                    last.mac.get_or_insert_with(|| a.to_ascii_lowercase());
                }
            }
        }
        scope
    }
}

/// `a` is a link-layer address as `ip link` prints it (`aa:bb:cc:dd:ee:ff`, any case).
pub fn is_mac(a: &str) -> bool {
    a.split(':').count() == 6
        && a.split(':')
            .all(|b| b.len() == 2 && b.bytes().all(|c| c.is_ascii_hexdigit()))
}

/// The destination address of a kernel log `MAC=` field (dst:src:ethertype, 14 hex bytes);
/// None for other forms (nft's `saddr/daddr`, non-Ethernet headers).
fn link_dst(mac: &str) -> Option<String> {
    let bytes: Vec<&str> = mac.split(':').collect();
    let hex = |b: &&str| b.len() == 2 && b.bytes().all(|c| c.is_ascii_hexdigit());
    (bytes.len() == 14 && bytes.iter().all(hex)).then(|| bytes[..6].join(":"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_destination_of_the_log_mac_field() {
        assert_eq!(
            link_dst("7e:31:b8:fe:69:94:b2:88:7d:3e:1d:e2:08:00").as_deref(),
            Some("7e:31:b8:fe:69:94")
        );
        assert_eq!(link_dst("4a:70:b2:aa:8f:4f/66:6b:9d:86:56:c7"), None);
    }

    #[test]
    fn interfaces_from_ip_link_show() {
        let text = "1: lo: <LOOPBACK,UP,LOWER_UP> mtu 65536 qdisc noqueue state UNKNOWN mode DEFAULT group default qlen 1000
    link/loopback 00:00:00:00:00:00 brd 00:00:00:00:00:00
2: eth0@if5: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc noqueue state UP mode DEFAULT group default qlen 1000
    link/ether 7E:31:b8:fe:69:94 brd ff:ff:ff:ff:ff:ff link-netnsid 0
3: tun0: <POINTOPOINT,NOARP> mtu 1500 qdisc noop state DOWN
    link/none 
";
        let s = NetnsScope::from_ip_link(text);
        let got: Vec<(&str, Option<&str>)> = s
            .ifaces
            .iter()
            .map(|i| (i.name.as_str(), i.mac.as_deref()))
            .collect();
        assert_eq!(
            got,
            [
                ("lo", Some("00:00:00:00:00:00")),
                ("eth0", Some("7e:31:b8:fe:69:94")),
                ("tun0", None)
            ]
        );
    }
}

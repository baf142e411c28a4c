//! Owned, serialisable events: what the collector decodes from the ring buffer (the raw
//! `trace-common` records) and what recordings store. Every later stage works on these.

use crate::netfilter::{Family, Hook};
use serde::{Deserialize, Serialize};
use std::net::IpAddr;

/// TCP flag bits as in the TCP header's flags byte.
pub mod tcp_flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
    pub const URG: u8 = 0x20;
    pub const ECE: u8 = 0x40;
    pub const CWR: u8 = 0x80;
}

/// Layer-4 part of a header snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "proto", rename_all = "lowercase")]
pub enum L4 {
    Tcp {
        sport: u16,
        dport: u16,
        seq: u32,
        ack: u32,
        window: u16,
        /// Flags byte (see [`tcp_flags`]).
        flags: u8,
        /// The 4 reserved bits (the kernel's LOG prints them as RES=0x..).
        res: u8,
        urgp: u16,
        /// TCP options as on the wire (LOG/TRACE print them as OPT (hex)); empty if none.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        options: Vec<u8>,
    },
    Udp {
        sport: u16,
        dport: u16,
        len: u16,
    },
    Sctp {
        sport: u16,
        dport: u16,
    },
    Icmp {
        icmp_type: u8,
        code: u8,
        /// Echo id/sequence; for errors the header's second word (MTU, gateway, pointer).
        id: u16,
        seq: u16,
        /// Errors: the first bytes of the packet it quotes, from its network header on, as
        /// captured (LOG/TRACE print it in brackets); empty when not captured.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        quoted: Vec<u8>,
    },
    Icmpv6 {
        icmp_type: u8,
        code: u8,
        /// Echo id/sequence; for errors the header's second word (MTU, gateway, pointer).
        id: u16,
        seq: u16,
        /// Errors: the first bytes of the packet it quotes, from its network header on, as
        /// captured (LOG/TRACE print it in brackets); empty when not captured.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        quoted: Vec<u8>,
    },
    /// Any other protocol, or a fragment without a transport header.
    Other,
}

impl L4 {
    /// (source port, destination port) for port-carrying protocols.
    pub fn ports(&self) -> Option<(u16, u16)> {
        match *self {
            L4::Tcp { sport, dport, .. }
            | L4::Udp { sport, dport, .. }
            | L4::Sctp { sport, dport } => Some((sport, dport)),
            _ => None,
        }
    }
}

/// L3/L4 header snapshot of a packet at one probe: enough to evaluate rules on and to print
/// the kernel's LOG/TRACE line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Headers {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// IP protocol / IPv6 next header of the transport header (6 TCP, 17 UDP, 1 ICMP, ...).
    pub proto: u8,
    /// IPv4 total length / IPv6 payload length + 40.
    pub len: u16,
    /// IPv4 TOS / IPv6 traffic class.
    pub tos: u8,
    /// IPv4 TTL / IPv6 hop limit.
    pub ttl: u8,
    /// IPv4 identification (0 for IPv6).
    pub id: u16,
    /// IPv4 frag_off field in host order: flags (0x4000 DF, 0x2000 MF) | offset in 8-byte units.
    pub frag: u16,
    /// IPv6 flow label (0 for IPv4).
    pub flowlabel: u32,
    pub l4: L4,
}

impl Headers {
    pub fn family(&self) -> Family {
        match self.src {
            IpAddr::V4(_) => Family::Ipv4,
            IpAddr::V6(_) => Family::Ipv6,
        }
    }
}

/// Conntrack state of the skb at a probe (skb->_nfct).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CtSnapshot {
    /// enum ip_conntrack_info: 0 ESTABLISHED, 1 RELATED, 2 NEW, 3 ESTABLISHED_REPLY,
    /// 4 RELATED_REPLY; 7 = UNTRACKED (no ct, IP_CT_UNTRACKED).
    pub ctinfo: u8,
    /// ct->status bits (IPS_*, see [`ct_status`]).
    pub status: u32,
    pub mark: u32,
    /// Opaque id of the conntrack entry (stable while it lives), to group packets by flow.
    pub id: u64,
}

/// ct->status bits used by the reconstruction (include/uapi/linux/netfilter/nf_conntrack_common.h).
pub mod ct_status {
    pub const EXPECTED: u32 = 1 << 0;
    pub const SEEN_REPLY: u32 = 1 << 1;
    pub const ASSURED: u32 = 1 << 2;
    pub const CONFIRMED: u32 = 1 << 3;
    pub const SRC_NAT: u32 = 1 << 4;
    pub const DST_NAT: u32 = 1 << 5;
    pub const SRC_NAT_DONE: u32 = 1 << 7;
    pub const DST_NAT_DONE: u32 = 1 << 8;
    pub const UNTRACKED: u32 = 1 << 12;
}

/// One probe hit: a tracked skb seen by a probe at `priority` on `hook`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeEvent {
    /// CLOCK_MONOTONIC ns (bpf_ktime_get_ns).
    pub ts_ns: u64,
    /// skb address; only unique together with `gen`.
    pub skb: u64,
    /// First-seen time of this skb traversal (the tracking generation).
    pub gen: u64,
    /// Network namespace inode.
    pub netns: u32,
    pub family: Family,
    pub hook: Hook,
    /// Netfilter priority of the probe (e.g. -299 = right after raw).
    pub priority: i32,
    pub in_ifindex: u32,
    pub out_ifindex: u32,
    /// Interface names, resolved by the collector in the packet's netns (None if unknown).
    #[serde(default)]
    pub in_dev: Option<String>,
    #[serde(default)]
    pub out_dev: Option<String>,
    pub mark: u32,
    pub ct: Option<CtSnapshot>,
    /// None when unchanged since this skb's previous event (the probe sends headers only when
    /// they changed); assembly carries the previous snapshot forward.
    pub headers: Option<Headers>,
    /// Link-layer header of received packets (dst mac, src mac, ethertype), as LOG prints MAC=.
    #[serde(default)]
    pub mac: Option<Vec<u8>>,
    /// Socket owner of locally generated packets (LOG's UID=/GID=).
    #[serde(default)]
    pub uid: Option<u32>,
    #[serde(default)]
    pub gid: Option<u32>,
    /// `uid`/`gid` were read at this probe (None there: no socket owner). Else (other
    /// backends, older recordings) the owner is read on a hook's first event only.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub owner_read: bool,
    /// The last probe (hook, priority) the traversal passed before this one, whether or not
    /// that probe sent an event (see `sparse`); None: nothing said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev: Option<(Hook, i32)>,
    /// The probes send an event only when headers, mark or conntrack changed, on a hook's
    /// first probe and on the last probe of a final hook (nfhook): the probes between two
    /// events were passed with the earlier event's state, and the packet may have passed
    /// probes after its last event without one.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sparse: bool,
    /// br_netfilter's bridge ports, read with the devices (a hook's first event); None: not
    /// read (other backends, events without devices, older recordings). Boxed: most events
    /// have none, and an inline one made every event 60 bytes larger.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bridge: Option<Box<BridgeInfo>>,
}

/// What br_netfilter attached to the skb (its SKB_EXT_BRIDGE_NF extension) as a hook saw it:
/// the bridge ports LOG/TRACE print as PHYSIN=/PHYSOUT= and `-m physdev` matches.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BridgeInfo {
    /// The skb carried bridge info (it came in through a bridge port with
    /// bridge-nf-call-ip(6)tables on). False: not bridged, the fields below are empty.
    pub bridged: bool,
    /// Input port: nf_bridge_info.physinif, and the device's name in the hook's netns at the
    /// hook (None: no device with that index any more; the kernel then prints no PHYSIN=).
    #[serde(default)]
    pub physin_ifindex: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub physin: Option<String>,
    /// Output port (nf_bridge_info.physoutdev; set from the bridge's FORWARD on).
    #[serde(default)]
    pub physout_ifindex: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub physout: Option<String>,
}

impl BridgeInfo {
    /// Not bridged (the skb had no bridge info).
    pub const NONE: BridgeInfo = BridgeInfo {
        bridged: false,
        physin_ifindex: 0,
        physin: None,
        physout_ifindex: 0,
        physout: None,
    };
}

/// skb freed with a drop reason (skb:kfree_skb) while tracked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DropEvent {
    pub ts_ns: u64,
    pub skb: u64,
    pub gen: u64,
    pub netns: u32,
    /// Raw enum skb_drop_reason value of the running kernel.
    pub reason: u32,
    /// Its name resolved from BTF (e.g. "NETFILTER_DROP"), if known.
    pub reason_name: Option<String>,
    /// Kernel address of the freeing call site and its symbol, if resolved.
    pub location: u64,
    pub location_sym: Option<String>,
    /// The last probe (hook, priority) the traversal passed before it was freed, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev: Option<(Hook, i32)>,
    /// The packet as it was freed (nfhook drop records from version 4): what the stages
    /// after its last probe left when it was freed outside netfilter (e.g. PREROUTING's nat
    /// result for a packet with no route, when no probe follows nat). None: not read (other
    /// backends' hook verdicts, older recordings).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<Box<DropState>>,
}

/// A dropped packet's mark, conntrack fields and headers, read by the kfree_skb program.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DropState {
    pub mark: u32,
    pub ct: Option<CtSnapshot>,
    /// None when the network header could not be read.
    pub headers: Option<Headers>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Event {
    Probe(ProbeEvent),
    Drop(DropEvent),
}

impl Event {
    pub fn ts_ns(&self) -> u64 {
        match self {
            Event::Probe(p) => p.ts_ns,
            Event::Drop(d) => d.ts_ns,
        }
    }

    /// (skb, gen): the identity of one packet traversal.
    pub fn packet_key(&self) -> (u64, u64) {
        match self {
            Event::Probe(p) => (p.skb, p.gen),
            Event::Drop(d) => (d.skb, d.gen),
        }
    }
}

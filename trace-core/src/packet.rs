//! What per-packet assembly produces from events and reconstruction consumes: for one skb
//! traversal, each hook it went through, each table on that hook, what the kernel did there
//! (verdict) and the packet as it was before and after the table (NAT, marks, conntrack).

use crate::event::{CtSnapshot, Headers};
use crate::netfilter::{Family, Hook, Table};
use serde::{Deserialize, Serialize};

/// The packet as a table saw it (or left it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PacketState {
    pub headers: Headers,
    pub mark: u32,
    pub ct: Option<CtSnapshot>,
}

/// What the kernel did with the packet in one table, as observed by the probes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "verdict", rename_all = "lowercase")]
pub enum ObservedVerdict {
    /// Seen by the probe after the table: the table let it go on.
    Accept,
    /// Vanished inside the table and skb:kfree_skb reported a netfilter drop.
    Drop { reason: u32, reason_name: Option<String> },
    /// Vanished inside the table without a drop report (NF_STOLEN, NF_QUEUE, or consumed).
    Stolen,
    /// The capture ended (or lost events) before the outcome was seen.
    Unknown,
}

/// One table on one hook for this packet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableObservation {
    pub table: Table,
    /// The table's registration priority on this hook.
    pub priority: i32,
    pub before: PacketState,
    /// None when the packet did not come out of the table.
    pub after: Option<PacketState>,
    pub verdict: ObservedVerdict,
}

impl TableObservation {
    /// True when the headers differ across the table (NAT rewrote the packet).
    pub fn translated(&self) -> bool {
        self.after.as_ref().is_some_and(|a| a.headers != self.before.headers)
    }
}

/// One netfilter hook traversal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookPass {
    pub hook: Hook,
    pub ts_ns: u64,
    pub in_dev: Option<String>,
    pub out_dev: Option<String>,
    /// Link-layer header of a received packet (for MAC= in TRACE lines).
    pub mac: Option<Vec<u8>>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// Tables in kernel order. Only tables that exist in this netns (registered) appear.
    pub tables: Vec<TableObservation>,
}

/// One skb traversal through netfilter, assembled from its events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PacketTrace {
    /// Sequence number given by the assembler (stable order of first appearance).
    pub id: u64,
    pub skb: u64,
    pub gen: u64,
    pub netns: u32,
    pub family: Family,
    pub first_ts_ns: u64,
    pub hooks: Vec<HookPass>,
    /// True when events of this packet were lost or the capture stopped mid-traversal.
    pub incomplete: bool,
}

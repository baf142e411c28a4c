//! What per-packet assembly produces from events and reconstruction consumes: for one skb
//! traversal, each hook it went through, each table on that hook, what the kernel did there
//! (verdict) and the packet as it was before and after the table (NAT, marks, conntrack).

use crate::event::{CtSnapshot, Headers};
use crate::netfilter::{Family, Hook, Table};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;

/// The packet as a table saw it (or left it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PacketState {
    /// Shared by the observations of the stages that saw the same headers (a copy per
    /// stage was a third of assembly: a TCP packet's options are on the heap).
    pub headers: Shared<Headers>,
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
    Drop {
        reason: u32,
        reason_name: Option<String>,
    },
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
        self.after
            .as_ref()
            .is_some_and(|a| a.headers != self.before.headers)
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
    /// Socket owner (fsuid/fsgid) at the pass's first probe.
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// Where the socket owner changed after the pass's first probe, in probe order (a
    /// server's accept() can attach the socket's file between two tables): see
    /// [`HookPass::owner_before`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub owners: Vec<OwnerChange>,
    /// Tables in kernel order. Only tables that exist in this netns (registered) appear.
    pub tables: Vec<TableObservation>,
    /// Every observed stage in kernel order: the tables above (same data) plus conntrack,
    /// other nftables base chains and anything else the probe plan names.
    #[serde(default)]
    pub stages: Vec<StageObservation>,
    /// Priorities of the probes that saw the packet on this pass, in order.
    #[serde(default)]
    pub probes: Vec<i32>,
    /// br_netfilter's bridge ports at the pass's first probe (PHYSIN=/PHYSOUT=, `-m
    /// physdev`); None: not captured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bridge: Option<Box<crate::event::BridgeInfo>>,
}

/// The socket owner a probe read, differing from the one before it in the pass.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnerChange {
    /// Priority of the probe that first saw this owner.
    pub priority: i32,
    /// None: no owner (no socket, or one without a file).
    pub uid: Option<u32>,
    pub gid: Option<u32>,
}

impl HookPass {
    /// The socket owner (uid, gid) a stage at `priority` saw, as LOG/TRACE print it: the one
    /// read by the last probe before the stage (the state the stage received).
    pub fn owner_before(&self, priority: i32) -> Option<(u32, u32)> {
        match self.owners.iter().rev().find(|o| o.priority < priority) {
            Some(o) => o.uid.zip(o.gid),
            None => self.uid.zip(self.gid),
        }
    }
}

/// A netfilter hook function the probes bracket: an iptables table or another registered hook.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Stage {
    /// An iptables table (legacy or iptables-nft) at its standard priority.
    Table { table: Table },
    /// IP defragmentation (-400): reassembles before conntrack.
    Defrag,
    /// nf_conntrack_in (-200): attaches or creates the conntrack entry; drops invalid packets.
    Conntrack,
    /// __nf_conntrack_confirm (INT_MAX): inserts new entries; after the last probe, so only a
    /// packet that is never seen again hints at it.
    ConntrackConfirm,
    /// A native nftables base chain at a non-iptables priority.
    NftChain { table: String, chain: String },
    /// Something else registered at this priority (named by whoever built the plan).
    Other { name: String },
    /// One of these stages, which share the probes around them (e.g. conntrack and nat
    /// when conntrack's probe is folded into nat's): which of them acted was not observed.
    Group { stages: Vec<Stage> },
}

impl Stage {
    pub fn table(&self) -> Option<Table> {
        match self {
            Stage::Table { table } => Some(*table),
            _ => None,
        }
    }
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stage::Table { table } => write!(f, "{table}"),
            Stage::Defrag => f.write_str("defrag"),
            Stage::Conntrack => f.write_str("conntrack"),
            Stage::ConntrackConfirm => f.write_str("conntrack-confirm"),
            Stage::NftChain { table, chain } => write!(f, "nft:{table}:{chain}"),
            Stage::Other { name } => f.write_str(name),
            Stage::Group { stages } => {
                for (i, s) in stages.iter().enumerate() {
                    if i > 0 {
                        f.write_str(" or ")?;
                    }
                    write!(f, "{s}")?;
                }
                Ok(())
            }
        }
    }
}

/// One stage on one hook for this packet (tables, conntrack, other chains).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageObservation {
    pub stage: Stage,
    pub priority: i32,
    pub before: PacketState,
    /// None when the packet did not come out of the stage.
    pub after: Option<PacketState>,
    pub verdict: ObservedVerdict,
    /// Other stages sat between the same two probes (or a probe event was missing), so
    /// before/after/verdict describe the group, not this stage alone.
    #[serde(default)]
    pub shared: bool,
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
    /// How the traversal ended, as far as the probes saw.
    #[serde(default)]
    pub fate: Fate,
}

/// How a packet's netfilter traversal ended.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(tag = "fate", rename_all = "snake_case")]
pub enum Fate {
    /// Came out of its last hook (INPUT or POSTROUTING).
    Delivered,
    /// Dropped inside a stage of `hook` (the stage's verdict has the reason).
    Dropped { hook: Hook, stage: Stage },
    /// Vanished inside a stage of `hook` without a drop report (NF_STOLEN, NF_QUEUE, consumed).
    Stolen { hook: Hook, stage: Stage },
    /// Freed with a drop reason outside netfilter (routing, socket lookup...) after `after`.
    DroppedOutside {
        after: Hook,
        reason: u32,
        reason_name: Option<String>,
    },
    /// Came out of a non-final hook and was never seen again (routed where no probe is,
    /// dropped without a report, or its events were lost).
    Vanished { after: Hook },
    /// The capture ended (or events were lost) before the outcome was seen.
    #[default]
    Unknown,
}

/// A value shared by reference count, read through `Deref` and copied on write (`DerefMut`
/// copies it only while it is shared); printed, compared and serialized as the value itself.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Shared<T>(Arc<T>);

impl<T> Shared<T> {
    pub fn new(value: T) -> Self {
        Shared(Arc::new(value))
    }
}

impl<T> From<T> for Shared<T> {
    fn from(value: T) -> Self {
        Shared::new(value)
    }
}

impl<T> Deref for Shared<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T: Clone> DerefMut for Shared<T> {
    fn deref_mut(&mut self) -> &mut T {
        Arc::make_mut(&mut self.0)
    }
}

impl<T> AsRef<T> for Shared<T> {
    fn as_ref(&self) -> &T {
        &self.0
    }
}

impl<T: fmt::Debug> fmt::Debug for Shared<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<T: Serialize> Serialize for Shared<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Shared<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        T::deserialize(d).map(Shared::new)
    }
}

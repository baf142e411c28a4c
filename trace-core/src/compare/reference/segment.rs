//! Grouping reference lines into packets. None of the formats delimits packets: legacy
//! TRACE lines carry only headers, nft trace ids repeat across the packets of a connection.
//! What does delimit them is netfilter's own order: within one packet, base chains are
//! entered in strictly increasing (hook stage, table priority) order, and a table traversal
//! that ended (policy or a final verdict) is not re-entered. A line that would go backwards
//! starts a new packet.

use super::RefPacket;
use crate::netfilter::{Hook, Table};

/// Stage of a hook within one packet's traversal: PREROUTING/OUTPUT start a packet's life,
/// INPUT/FORWARD follow routing, POSTROUTING ends it.
fn hook_stage(hook: Hook) -> u8 {
    match hook {
        Hook::Prerouting | Hook::Output => 0,
        Hook::Input | Hook::Forward => 1,
        Hook::Postrouting => 2,
    }
}

/// (stage, priority) of a base chain; None for user chains (they continue the current table).
pub(super) fn base_order(table: Table, chain: &str) -> Option<(u8, i32)> {
    let hook = Hook::from_chain_name(chain)?;
    Some((hook_stage(hook), table.priority(hook)?))
}

struct Open<K> {
    key: K,
    idx: usize,
    order: (u8, i32),
    table: Table,
    table_done: bool,
    /// When the packet last got a line (the segmenter's clock).
    touched: u64,
    /// Losses reported before that line.
    losses_seen: u64,
}

/// Assigns lines to packets. `K` identifies lines that may belong together (headers for
/// legacy TRACE, trace id + IP id for nft).
pub(super) struct Segmenter<K> {
    open: Vec<Open<K>>,
    pub packets: Vec<RefPacket>,
    /// Counts lines placed (orders packets by their last activity).
    clock: u64,
    /// Loss points seen so far (see [`Segmenter::lost_here`]).
    losses: u64,
    /// A loss happened somewhere after a point already passed ([`Segmenter::lost_after_here`]):
    /// every packet that gets a line from now on is incomplete.
    lossy_from_here: bool,
}

/// Open packets remembered per key space; older ones are closed (bounded memory on huge logs).
const MAX_OPEN: usize = 1024;

/// How many of the packets active last before a loss point may have been in flight there
/// (netfilter runs a packet's hooks back to back; packets overlap by CPU and queueing).
const IN_FLIGHT: usize = 32;

impl<K: PartialEq> Segmenter<K> {
    pub fn new() -> Self {
        Segmenter {
            open: Vec::new(),
            packets: Vec::new(),
            clock: 0,
            losses: 0,
            lossy_from_here: false,
        }
    }

    /// The packet a step at (`table`, `chain`) with key `key` belongs to; `new` builds the
    /// packet when a new one must start.
    pub fn packet_for(
        &mut self,
        key: K,
        table: Table,
        chain: &str,
        new: impl FnOnce() -> RefPacket,
    ) -> usize {
        let ord = base_order(table, chain);
        self.clock += 1;
        let pos = self.open.iter().rposition(|o| o.key == key);
        if let Some(p) = pos {
            let o = &mut self.open[p];
            let continues = match ord {
                Some(ord) => ord > o.order || (ord == o.order && o.table == table && !o.table_done),
                None => o.table == table && !o.table_done,
            };
            if continues {
                if let Some(ord) = ord {
                    if ord != o.order {
                        o.table_done = false;
                    }
                    o.order = ord;
                }
                o.table = table;
                o.touched = self.clock;
                if o.losses_seen < self.losses || self.lossy_from_here {
                    // Lines before and after a loss point: steps in between may be missing.
                    self.packets[o.idx].incomplete = true;
                    o.losses_seen = self.losses;
                }
                return o.idx;
            }
            self.open.remove(p);
        }
        self.start(key, table, ord, new())
    }

    fn start(&mut self, key: K, table: Table, ord: Option<(u8, i32)>, mut pkt: RefPacket) -> usize {
        let idx = self.packets.len();
        pkt.incomplete |= self.lossy_from_here;
        self.packets.push(pkt);
        if self.open.len() >= MAX_OPEN {
            self.open.remove(0);
        }
        // A packet first seen in a user chain (earlier lines lost) gets the lowest order so
        // any base chain continues it.
        self.open.push(Open {
            key,
            idx,
            order: ord.unwrap_or((0, i32::MIN)),
            table,
            table_done: false,
            touched: self.clock,
            losses_seen: self.losses,
        });
        idx
    }

    /// The reference lost events exactly at this point of its stream (a kmsg sequence gap).
    /// Incomplete: packets that get lines on both sides of it, and the packets active last
    /// before it (their remaining lines may be the lost ones). Packets that ended long before
    /// are complete.
    pub fn lost_here(&mut self) {
        self.losses += 1;
        let mut recent: Vec<(u64, usize)> = self.open.iter().map(|o| (o.touched, o.idx)).collect();
        recent.sort_unstable_by(|a, b| b.cmp(a));
        for (_, idx) in recent.into_iter().take(IN_FLIGHT) {
            self.packets[idx].incomplete = true;
        }
    }

    /// The reference lost events somewhere after this point: a netlink monitor learns of an
    /// overrun (ENOBUFS) before it reads the messages still queued, so the gap follows them
    /// at an unknown place. Every packet that gets a line from here on may miss some.
    pub fn lost_after_here(&mut self) {
        self.losses += 1;
        self.lossy_from_here = true;
    }

    /// The current table traversal of packet `idx` ended (policy, ACCEPT, DROP…).
    pub fn table_done(&mut self, idx: usize) {
        if let Some(o) = self.open.iter_mut().find(|o| o.idx == idx) {
            o.table_done = true;
        }
    }
}

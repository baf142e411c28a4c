//! Rule positions reported before their packet is reconstructed: the collector hands them
//! over as the records arrive (whole traversals, or streamed call by call); reconstruction
//! takes those of a packet's (hook, table) passes when the packet completes.

use super::{RuleCall, TablePositions};
use crate::netfilter::{Hook, Table};
use crate::packet::PacketTrace;
use std::collections::{HashMap, VecDeque};

/// An skb traversal: (netns inode, skb address, generation), as in the packet's events.
type Key = (u32, u64, u64);

/// Positions reported before their packet is reconstructed, keyed by skb traversal.
/// Bounded: when more than `capacity` skb traversals wait (packets the filter or the
/// assembler never completes), the oldest are dropped and counted.
#[derive(Debug)]
pub struct PositionStore {
    /// (insertion number, table traversals) per skb traversal.
    by_key: HashMap<Key, (u64, Vec<TablePositions>)>,
    /// Insertion order for eviction; entries whose number no longer matches are stale
    /// (taken, or taken and inserted again) and skipped.
    order: VecDeque<(u64, Key)>,
    next: u64,
    capacity: usize,
    waiting: usize,
    /// Table traversals dropped unused because the store was full.
    pub evicted: u64,
    /// Table traversals handed to reconstruction.
    pub used: u64,
}

impl Default for PositionStore {
    fn default() -> Self {
        Self::with_capacity(8192)
    }
}

impl PositionStore {
    /// `capacity`: skb traversals kept at most.
    pub fn with_capacity(capacity: usize) -> Self {
        PositionStore {
            by_key: HashMap::new(),
            order: VecDeque::new(),
            next: 0,
            capacity: capacity.max(1),
            waiting: 0,
            evicted: 0,
            used: 0,
        }
    }

    /// Keeps one table traversal of the skb `(netns, skb, gen)` until its packet completes.
    pub fn insert(&mut self, netns: u32, skb: u64, gen: u64, tp: TablePositions) {
        let key = (netns, skb, gen);
        self.waiting += 1;
        if let Some((_, v)) = self.by_key.get_mut(&key) {
            v.push(tp);
            return;
        }
        while self.by_key.len() >= self.capacity {
            self.evict_oldest();
        }
        self.by_key.insert(key, (self.next, vec![tp]));
        self.order.push_back((self.next, key));
        self.next += 1;
        // Stale order entries of packets taken since: drop them once they dominate.
        if self.order.len() > 2 * self.capacity {
            let live = &self.by_key;
            self.order
                .retain(|(n, k)| live.get(k).is_some_and(|(m, _)| m == n));
        }
    }

    fn evict_oldest(&mut self) {
        while let Some((n, key)) = self.order.pop_front() {
            if self.by_key.get(&key).is_some_and(|(m, _)| *m == n) {
                let (_, v) = self.by_key.remove(&key).expect("checked");
                self.waiting -= v.len();
                self.evicted += v.len() as u64;
                return;
            }
        }
    }

    /// Streaming input (records in ring-buffer order): a table traversal of the skb begins
    /// (its BASE record); its calls follow with [`PositionStore::push_call`].
    pub fn begin_table(
        &mut self,
        netns: u32,
        skb: u64,
        gen: u64,
        hook: Hook,
        table: Table,
        complete: bool,
    ) {
        let tp = TablePositions {
            hook,
            table,
            calls: Vec::new(),
            complete,
        };
        self.insert(netns, skb, gen, tp);
    }

    /// Streaming input: a call of the skb's latest table traversal. Returns the traversal
    /// (e.g. to clear `complete` when a record cannot be placed), None when none began (or it
    /// was evicted): the call is dropped.
    pub fn push_call(
        &mut self,
        netns: u32,
        skb: u64,
        gen: u64,
        call: RuleCall,
    ) -> Option<&mut TablePositions> {
        let tp = self.by_key.get_mut(&(netns, skb, gen))?.1.last_mut()?;
        tp.calls.push(call);
        Some(tp)
    }

    /// The traversals of `packet`'s (hook, table) passes, removed from the store (a packet
    /// looped back through `lo` shares skb and generation with its first half: only the
    /// passes it has are taken).
    pub fn take(&mut self, packet: &PacketTrace) -> Vec<TablePositions> {
        let key = (packet.netns, packet.skb, packet.gen);
        let Some((_, v)) = self.by_key.get_mut(&key) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for hp in &packet.hooks {
            for obs in &hp.tables {
                if let Some(i) = v
                    .iter()
                    .position(|t| t.hook == hp.hook && t.table == obs.table)
                {
                    out.push(v.remove(i));
                }
            }
        }
        if v.is_empty() {
            // Its order entry goes stale.
            self.by_key.remove(&key);
        }
        self.waiting -= out.len();
        self.used += out.len() as u64;
        out
    }

    /// Table traversals waiting.
    pub fn len(&self) -> usize {
        self.waiting
    }

    pub fn is_empty(&self) -> bool {
        self.waiting == 0
    }
}

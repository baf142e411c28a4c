//! Maps and read-only globals of the capture programs. Names are the collector's contract
//! (trace_user::capture::loader looks them up by these names).

use aya_ebpf::{
    macros::map,
    maps::{Array, LruHashMap, PerCpuArray, RingBuf},
};
use trace_common::{
    filter::{FilterInput, FilterProgram},
    record::{
        Counters, CurSlot, DropRecord, KernelOffsets, ProbeConfig, ProbeRecord, RateState, Tracked,
    },
};

/// Records to the collector. The collector sets the size (`--ringbuf-size`).
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(4 << 20, 0);

/// Per-CPU LRU lists (the table itself is shared): inserts and evictions take no global
/// lock. Each CPU can evict among max_entries / CPUs of its own entries.
const BPF_F_NO_COMMON_LRU: u32 = 1 << 1;

/// Tracked skbs: skb address → traversal state. LRU so that skbs freed without a drop report
/// (consumed, stolen) age out instead of filling the map. The netfilter probes keep a
/// traversal here only once it left its CPU's slot ([`CUR`]); the kprobe/fentry backends keep
/// every one here.
#[map]
pub static TRACKED: LruHashMap<u64, Tracked> =
    LruHashMap::with_max_entries(65536, BPF_F_NO_COMMON_LRU);

/// This CPU's current traversal (index 0; nfhook probes only): the packet the last
/// first-sight probe on this CPU saw, and its tracking state. A traversal of the netfilter
/// hooks nearly always runs on one CPU without interruption, so later probes find the packet
/// here instead of in TRACKED. A traversal still unfinished when another packet's probe runs
/// on this CPU (interrupted: queued, softirq over process context, a packet sent from inside
/// a hook) is spilled into TRACKED, so the LRU holds every unfinished traversal that left the
/// slot.
#[map]
pub static CUR: PerCpuArray<CurSlot> = PerCpuArray::with_max_entries(1, 0);

/// [`CurSlot::what`] bits (trace_common::record::slot).
pub const SLOT_TRACKED: u32 = trace_common::record::slot::TRACKED;
pub const SLOT_DONE: u32 = trace_common::record::slot::DONE;

/// The compiled capture filter (index 0), written by the collector before linking.
#[map]
pub static FILTER: Array<FilterProgram> = Array::with_max_entries(1, 0);

/// Counters (index 0), summed over CPUs by the collector.
#[map]
pub static COUNTERS: PerCpuArray<Counters> = PerCpuArray::with_max_entries(1, 0);

/// Scratch record (index 0): too big for the 512-byte stack.
#[map]
pub static SCRATCH: PerCpuArray<ProbeRecord> = PerCpuArray::with_max_entries(1, 0);

/// The kfree_skb program's record (index 0; with its header snapshot, off the stack too).
#[map]
pub static DROP_SCRATCH: PerCpuArray<DropRecord> = PerCpuArray::with_max_entries(1, 0);

/// The filter's view of the packet at first sight (index 0; off the stack).
#[map]
pub static FILTER_INPUT: PerCpuArray<FilterInput> = PerCpuArray::with_max_entries(1, 0);

/// The first 64 bytes of the packet, hashed to notice header changes (index 0; off the stack).
#[map]
pub static HASH_BUF: PerCpuArray<[u64; 8]> = PerCpuArray::with_max_entries(1, 0);

/// The packet's first bytes (index 0; netfilter probes, see pktbuf): one read serves the change
/// hash, the header snapshot and, on a hook's first record, the MAC header before them
/// (16 bytes before the network header, then 128 from it).
#[map]
pub static PKT_BUF: PerCpuArray<[u64; crate::pktbuf::BUF_WORDS]> =
    PerCpuArray::with_max_entries(1, 0);

/// A conntrack tuple's two addresses while hashing it (index 0; off the stack). Words, so
/// an IPv4 tuple's unused 12 bytes are cleared with word stores.
#[map]
pub static TUPLE_BUF: PerCpuArray<[[u64; 2]; 2]> = PerCpuArray::with_max_entries(1, 0);

/// Records of packets whose sampling decision is pending (see nfhook::buffer_pending).
#[map]
pub static PENDING: PerCpuArray<Pending> = PerCpuArray::with_max_entries(1, 0);

/// Time of the last tracking activity (index 0; 0 = never). Probes after the first skip the
/// per-skb lookup when nothing was tracked for a while, so an idle capture costs one array
/// read per probe.
#[map]
pub static ACTIVE: Array<u64> = Array::with_max_entries(1, 0);

/// Sampling decisions per flow (`--sample`): flow hash of a packet's 5-tuple as it first
/// appears (the conntrack ORIGINAL and REPLY tuples) → FLOW_KEEP / FLOW_SKIP, so only a flow's
/// first packets wait for conntrack; later ones are decided at first sight with one lookup.
#[map]
pub static FLOWS: LruHashMap<u32, u32> = LruHashMap::with_max_entries(65536, BPF_F_NO_COMMON_LRU);
pub const FLOW_KEEP: u32 = 1;
pub const FLOW_SKIP: u32 = 2;

/// This CPU's recent FLOWS answers (index 0; netfilter probes): slot `hash % FLOW_CACHE_SLOTS`
/// holds `hash << 32 | decision` (0: empty). A flow's packets mostly arrive on one CPU, so
/// its later packets are decided with an array read instead of an LRU hash lookup.
#[map]
pub static FLOW_CACHE: PerCpuArray<[u64; FLOW_CACHE_SLOTS]> = PerCpuArray::with_max_entries(1, 0);
pub const FLOW_CACHE_SLOTS: usize = 1024;

/// `--rate-limit` token bucket (index 0).
#[map]
pub static RATE: Array<RateState> = Array::with_max_entries(1, 0);

/// Kernel struct offsets from the running kernel's BTF (set by the collector at load time).
#[no_mangle]
pub static OFFSETS: KernelOffsets = KernelOffsets {
    state_hook: 0,
    state_pf: 0,
    state_in: 0,
    state_out: 0,
    state_net: 0,
    net_inum: 0,
    dev_ifindex: 0,
    dev_name: 0,
    skb_head: 0,
    skb_mark: 0,
    skb_nfct: 0,
    skb_network_header: 0,
    skb_transport_header: 0,
    skb_mac_header: 0,
    skb_sk: 0,
    ct_status: 0,
    ct_mark: 0,
    ct_tuple: 0,
    ct_reply_tuple: 0,
    tuple_src_u3: 0,
    tuple_src_port: 0,
    tuple_dst_u3: 0,
    tuple_dst_port: 0,
    tuple_dst_protonum: 0,
    sk_state: 0,
    sk_socket: 0,
    socket_file: 0,
    file_cred: 0,
    cred_fsuid: 0,
    cred_fsgid: 0,
    have_creds: 0,
    skb_active_extensions: 0,
    skb_extensions: 0,
    ext_offset: 0,
    nfbr_physinif: 0,
    nfbr_physoutdev: 0,
    nfbr_physin_dev: 0,
    net_dev_index_head: 0,
    dev_index_hlist: 0,
    have_bridge: 0,
};

/// Sampling and rate limit (set by the collector at load time).
#[no_mangle]
pub static CONFIG: ProbeConfig = ProbeConfig {
    sample_n: 0,
    rate_limit: 0,
    filter_clauses: 0,
    filter_preds: 0,
};

/// `trace_common::record::filter_fields` bits (set by the nfhook collector at load time;
/// other loaders keep the default: read everything).
#[no_mangle]
pub static FILTER_FIELDS: u32 = trace_common::record::filter_fields::ALL;

/// Ring-buffer fill level (bytes) above which a record wakes the collector; below it records
/// are written without a wakeup and the collector drains on its timer (one wakeup per batch
/// instead of one per record). Set by the collector (a fraction of the ring size).
#[no_mangle]
pub static WAKEUP_BYTES: u64 = 0;

/// Read one field of a read-only global: volatile, so the compiler keeps the load (the values
/// are patched into .rodata after compilation) and the verifier sees a constant.
macro_rules! global {
    ($g:ident) => {
        unsafe { core::ptr::read_volatile(core::ptr::addr_of!($crate::maps::$g)) }
    };
    ($g:ident . $f:ident) => {
        unsafe { core::ptr::read_volatile(core::ptr::addr_of!($crate::maps::$g.$f)) }
    };
}
pub(crate) use global;

/// How many records of a not-yet-sampled packet are kept while waiting for the decision.
pub const PENDING_RECORDS: usize = 3;

/// Per-CPU holding area for the records a packet produced before its sampling decision
/// (a traversal of the hooks before conntrack runs on one CPU; `skb`/`gen` detect the rare
/// case where an interrupting packet took the slot).
#[repr(C)]
pub struct Pending {
    /// The held packet (0: slot free).
    pub skb: u64,
    pub gen: u64,
    pub count: u32,
    pub _pad0: u32,
    /// Its tracking state until the decision (netfilter probes keep it only here).
    pub tracked: Tracked,
    pub records: [ProbeRecord; PENDING_RECORDS],
}

//! Records the nfhook probes write to the ring buffer, the per-skb tracking state, the per-CPU
//! counters and the load-time configuration (kernel struct offsets) — every kernel/user struct
//! of the capture path, defined once.
//!
//! Every record starts with a [`RecordHeader`] whose `kind` says which struct follows; the
//! collector (`trace_core::decode`) checks `kind`, `version` and the length before reading.
//! All multi-byte fields are in host byte order except addresses (network order, as on the
//! wire) — the probes convert ports/ids/seq numbers when they copy the headers.

/// Bumped whenever a record layout changes; the decoder rejects other versions.
pub const RECORD_VERSION: u8 = 4;

/// [`RecordHeader::kind`] values.
pub mod kind {
    /// A [`super::ProbeRecord`]: a tracked skb seen by a netfilter-link probe.
    pub const PROBE: u8 = 1;
    /// A [`super::DropRecord`]: a tracked skb freed by kfree_skb with a drop reason.
    pub const DROP: u8 = 2;
    /// A [`super::XtRecord`]: an x_tables table base, match or target call for a tracked
    /// skb (rule positions, issue 6 item 3; kprobe backend only). Not an `Event`: the
    /// collector splits these off before `trace_core::decode`.
    pub const XT: u8 = 3;
    /// A [`super::HookVerdictRecord`]: nf_hook_slow returned a verdict other than accept for a
    /// tracked skb (fentry/kprobe backends; an accept is a [`super::ProbeRecord`] at the hook's
    /// exit position instead). Not an `Event`: the collector turns it into one
    /// (`trace_user::capture::hookverdict`) before `trace_core::decode`.
    pub const HOOK_VERDICT: u8 = 4;
}

/// Common prefix of every ring-buffer record (8 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    /// One of [`kind`].
    pub kind: u8,
    /// [`RECORD_VERSION`].
    pub version: u8,
    pub _pad0: u16,
    /// Size in bytes of the whole record, header included.
    pub len: u32,
}

/// [`ProbeRecord::flags`] bits.
pub mod probe_flags {
    /// `headers` holds a snapshot (else the headers are unchanged since this skb's previous
    /// record and the snapshot bytes are not meaningful).
    pub const HEADERS: u16 = 1 << 0;
    /// `ctinfo`/`ct_*` are valid (skb->_nfct was set).
    pub const CT: u16 = 1 << 1;
    /// `mac` holds `mac_len` bytes of the link-layer header (received packets).
    pub const MAC: u16 = 1 << 2;
    /// `uid` is the socket owner's fsuid (locally generated packets with a full socket).
    pub const UID: u16 = 1 << 3;
    /// `gid` is the socket owner's fsgid.
    pub const GID: u16 = 1 << 4;
    /// This is the first record of the traversal (the probe that applied the filter).
    pub const FIRST: u16 = 1 << 5;
    /// `in_*`/`out_*` device fields were read. The probes read devices, MAC and socket owner
    /// once per hook (on the hook's first record of the packet): later records of the same
    /// hook leave them out.
    pub const DEVS: u16 = 1 << 6;
    /// The probes send a record only when something changed (headers, mark, conntrack), on a
    /// hook's first probe and on the last probe of a final hook (nfhook, version 2): the
    /// traversal may have passed later probes than this record's without a record.
    /// `prev_hook`/`prev_priority` say which probe it passed last before this record.
    pub const SPARSE: u16 = 1 << 7;
    /// The socket owner was read at this probe: `UID`/`GID` absent means the packet had no
    /// owner here. The nfhook probes read it at every probe (a server's accept() can attach
    /// the socket's file between two tables); the other backends, and records written before
    /// this flag existed, read it with the devices only (absent: the owner was not read).
    pub const OWNER: u16 = 1 << 8;
    /// The probe looked for br_netfilter's bridge info (the skb extension SKB_EXT_BRIDGE_NF)
    /// with the devices: `BRIDGED` absent means the skb had none. Absent (the kprobe/fentry
    /// backends, whose call chain has no stack to spare, and older records): not known.
    pub const BRIDGE_READ: u16 = 1 << 9;
    /// The skb carried bridge info (it entered through a bridge port with
    /// bridge-nf-call-ip(6)tables on): `physin_*`/`physout_*` are its ports (0 / empty: none,
    /// e.g. no output port before the bridge's FORWARD, or the input port's device is gone).
    pub const BRIDGED: u16 = 1 << 10;
}

/// `prev_hook` of a record that says nothing about the probes before it.
pub const PREV_NONE: u8 = 0xff;

/// [`HeaderSnapshot::l4_flags`] bits.
pub mod l4_flags {
    /// The transport header was read (not a non-first fragment, inside the packet).
    pub const VALID: u8 = 1 << 0;
    /// An ICMP/ICMPv6 error with the packet it quotes captured (what LOG/TRACE print in
    /// brackets): its first `tcp_opt_len` bytes, from its network header on, are stored in
    /// `tcp_options` (40 bytes) and then in the 14 bytes of `tcp_seq..=tcp_res` in memory
    /// order (fields an ICMP header does not use) — [`QUOTED_MAX`] bytes at most.
    pub const QUOTED: u8 = 1 << 1;
    /// Most bytes of a quoted packet a snapshot holds (40 + 14).
    pub const QUOTED_MAX: usize = 54;
    /// With [`QUOTED`]: a quoted IPv4 packet with a 20-byte header and TCP (a rejected SYN
    /// is 60 bytes) stored without its two checksums (bytes 10..12 and 36..38, which the
    /// logs do not print), its last 4 stored bytes in `sport`/`dport` (raw; the error's
    /// second header word is unused for the types this is done for: destination unreachable
    /// other than fragmentation needed, source quench, time exceeded). `tcp_opt_len` counts
    /// bytes of the quoted packet (checksums included), at most [`QUOTED_PACKED_MAX`].
    pub const QUOTED_PACKED: u8 = 1 << 2;
    /// Most bytes of a quoted packet a packed snapshot holds (58 stored + 2 checksums).
    pub const QUOTED_PACKED_MAX: usize = 60;
}

/// Maximum TCP option bytes (60-byte header − 20).
pub const TCP_OPTIONS_MAX: usize = 40;
/// Bytes of link-layer header kept (Ethernet: dst, src, type = 14).
pub const MAC_MAX: usize = 16;
/// IFNAMSIZ.
pub const IFNAME_LEN: usize = 16;

/// L3/L4 header snapshot (112 bytes). 8-aligned (it sits at offset 136 of [`ProbeRecord`]
/// either way) so the probes can zero it with 8-byte stores.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeaderSnapshot {
    /// Network byte order; IPv4 in bytes 0..4, the rest zero.
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    /// IPv6 flow label (0 for IPv4).
    pub flowlabel: u32,
    /// IPv4 total length / IPv6 payload length + 40.
    pub len: u16,
    /// IPv4 identification.
    pub id: u16,
    /// IPv4 frag_off field (flags | offset).
    pub frag: u16,
    /// Transport protocol (IPv6: after extension headers).
    pub proto: u8,
    pub tos: u8,
    pub ttl: u8,
    /// [`l4_flags`].
    pub l4_flags: u8,
    /// TCP/UDP/SCTP ports, or ICMP id / sequence.
    pub sport: u16,
    pub dport: u16,
    pub _pad0: u16,
    pub tcp_seq: u32,
    pub tcp_ack: u32,
    pub tcp_window: u16,
    pub tcp_urgp: u16,
    /// TCP flags byte (FIN..CWR).
    pub tcp_flags: u8,
    /// The TCP header's 4 reserved bits.
    pub tcp_res: u8,
    pub icmp_type: u8,
    pub icmp_code: u8,
    /// UDP length field.
    pub udp_len: u16,
    /// Number of valid bytes in `tcp_options` (with [`l4_flags::QUOTED`]: of the quoted packet).
    pub tcp_opt_len: u8,
    pub _pad1: u8,
    pub tcp_options: [u8; TCP_OPTIONS_MAX],
}

/// One tracked skb at one probe (288 bytes). Sent cut short when parts are absent: without
/// bridge ports it ends before `physin_ifindex` (248 bytes), without a header snapshot too
/// before `headers` (136 bytes), without devices and MAC too before `in_dev` (88 bytes);
/// `header.len` says which. A record with bridge ports is sent whole (the snapshot bytes are
/// meaningless without [`probe_flags::HEADERS`]): only bridged packets' records with devices
/// pay for the ports.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbeRecord {
    pub header: RecordHeader,
    /// bpf_ktime_get_ns.
    pub ts_ns: u64,
    /// skb address.
    pub skb: u64,
    /// First-seen time of this traversal: (skb, gen) identifies one packet.
    pub gen: u64,
    /// Conntrack entry address (opaque id), 0 without ct.
    pub ct_id: u64,
    /// Network namespace inode (state->net->ns.inum).
    pub netns: u32,
    /// Netfilter priority of the probe that wrote this record.
    pub priority: i32,
    pub in_ifindex: u32,
    pub out_ifindex: u32,
    /// skb->mark.
    pub mark: u32,
    /// ct->status (IPS_* bits; the low 32 bits of an unsigned long).
    pub ct_status: u32,
    pub ct_mark: u32,
    pub uid: u32,
    pub gid: u32,
    /// Priority of the last probe this traversal passed before this record (whether or not
    /// that probe wrote a record); meaningful when `prev_hook` != [`PREV_NONE`].
    pub prev_priority: i32,
    /// NFPROTO_IPV4 (2) / NFPROTO_IPV6 (10).
    pub pf: u8,
    /// NF_INET_* hook number.
    pub hook: u8,
    /// [`probe_flags`].
    pub flags: u16,
    /// enum ip_conntrack_info (skb->_nfct & 7).
    pub ctinfo: u8,
    pub mac_len: u8,
    /// NF_INET_* hook of the last probe passed before this record ([`PREV_NONE`]: none).
    pub prev_hook: u8,
    pub _pad0: u8,
    pub in_dev: [u8; IFNAME_LEN],
    pub out_dev: [u8; IFNAME_LEN],
    pub mac: [u8; MAC_MAX],
    pub headers: HeaderSnapshot,
    /// Bridge ports (with [`probe_flags::BRIDGED`]), as the kernel's LOG/TRACE print
    /// PHYSIN=/PHYSOUT= and `-m physdev` matches them: nf_bridge_info.physinif and
    /// physoutdev->ifindex, and their names read by the probe at this hook (the input port by
    /// ifindex in the hook's netns, as the kernel's nf_bridge_get_physindev looks it up: a port
    /// deleted since has no name, as in the kernel's own line). Names are read in the probe,
    /// not resolved by the collector later: a container's veth can be gone (or its ifindex
    /// reused) by the time the collector sees the record.
    pub physin_ifindex: u32,
    pub physout_ifindex: u32,
    pub physin_dev: [u8; IFNAME_LEN],
    pub physout_dev: [u8; IFNAME_LEN],
}

/// A tracked skb freed with a drop reason (192 bytes), with the packet as it was freed: its
/// mark, conntrack fields and header snapshot ([`drop_flags`] say which were read). The
/// state matters when the skb was freed outside netfilter after a hook whose last stages
/// have no probe after them (PREROUTING's nat, see trace-core's plan): it is what those
/// stages left. The nfhook kfree_skb program reads it only when the last probe passed was
/// on PREROUTING (`prev_hook`); the record has the same length either way.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DropRecord {
    pub header: RecordHeader,
    pub ts_ns: u64,
    pub skb: u64,
    pub gen: u64,
    /// Kernel address of the kfree_skb call site.
    pub location: u64,
    /// Conntrack entry address (opaque id), 0 without ct (as in [`ProbeRecord`]).
    pub ct_id: u64,
    pub netns: u32,
    /// enum skb_drop_reason value of the running kernel.
    pub reason: u32,
    /// The last probe the traversal passed before it was freed (as in [`ProbeRecord`]).
    pub prev_priority: i32,
    /// skb->mark.
    pub mark: u32,
    pub ct_status: u32,
    pub ct_mark: u32,
    pub prev_hook: u8,
    /// NFPROTO_IPV4 / NFPROTO_IPV6 of the header snapshot (from the IP version nibble at
    /// the network header), 0 without one.
    pub pf: u8,
    /// [`drop_flags`].
    pub flags: u16,
    /// enum ip_conntrack_info (skb->_nfct & 7).
    pub ctinfo: u8,
    pub _pad: [u8; 3],
    pub headers: HeaderSnapshot,
}

/// [`DropRecord::flags`] bits.
pub mod drop_flags {
    /// `mark` and the conntrack fields were read.
    pub const STATE: u16 = 1 << 0;
    /// `ctinfo`/`ct_*` are valid (skb->_nfct was set).
    pub const CT: u16 = 1 << 1;
    /// `headers` holds a snapshot of family `pf`.
    pub const HEADERS: u16 = 1 << 2;
}

/// [`XtRecord::what`] values.
pub mod xt_what {
    /// `addr` is the kernel address of the table's rule blob (xt_table_info.entries) as
    /// ipt_do_table starts; `name` is the table.
    pub const BASE: u8 = 0;
    /// `addr` is a match's matchinfo (points into the blob); `result` is what it returned.
    pub const MATCH: u8 = 1;
    /// `addr` is a target's targinfo (points into the blob): the rule matched.
    pub const TARGET: u8 = 2;
}

/// An x_tables call for a tracked skb (64 bytes): `addr` − the table's BASE address is the
/// offset in the rule blob userspace reads with IPT_SO_GET_ENTRIES.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct XtRecord {
    pub header: RecordHeader,
    pub ts_ns: u64,
    pub skb: u64,
    pub gen: u64,
    pub addr: u64,
    pub netns: u32,
    /// [`xt_what`].
    pub what: u8,
    /// Match result (1 matched, 0 not); 0 for BASE/TARGET.
    pub result: u8,
    /// NF_INET_* hook (BASE only).
    pub hook: u8,
    /// NFPROTO_* (BASE only).
    pub pf: u8,
    /// Table name, NUL-padded (BASE only).
    pub name: [u8; 16],
}

/// What nf_hook_slow returned for a tracked skb when it did not accept it (48 bytes): 0 (the
/// skb was stolen or queued by a hook function) or a negative errno (dropped: -EPERM for
/// NF_DROP, another errno for NF_DROP_ERR). Written after the hook functions ran, so the skb
/// may be freed: only what its entry remembered is reported.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HookVerdictRecord {
    pub header: RecordHeader,
    pub ts_ns: u64,
    pub skb: u64,
    pub gen: u64,
    pub netns: u32,
    /// nf_hook_slow's return value.
    pub verdict: i32,
    /// NF_INET_* hook.
    pub hook: u8,
    /// NFPROTO_*.
    pub pf: u8,
    pub _pad0: u16,
    pub _pad1: u32,
}

/// Per-skb tracking state (value of the LRU hash keyed by skb address, and of the nfhook
/// probes' per-CPU current-traversal slot; 32 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tracked {
    /// First-seen time: the traversal's generation.
    pub gen: u64,
    /// Hash of the last header snapshot sent (records carry headers only when it changes).
    pub last_hash: u64,
    /// Network namespace inode of the first probe.
    pub netns: u32,
    /// 32-bit mix of mark and conntrack fields of the last record sent (nfhook sends a
    /// record when it changes).
    pub last_meta: u32,
    /// The last probe passed (see [`ProbeRecord::prev_priority`]).
    pub prev_priority: i32,
    /// 1 = pending (filter passed, sampling decision waits for conntrack), 2 = tracked.
    pub state: u8,
    /// Hook of the last record sent (0xff: none): devices are read once per hook.
    pub last_hook: u8,
    /// Hook of the last probe passed ([`PREV_NONE`]: none, or a record was lost since).
    pub prev_hook: u8,
    /// [`tracked_flags`].
    pub flags: u8,
}

/// [`Tracked::flags`] bits.
pub mod tracked_flags {
    /// A record of this traversal was lost (nfhook): the next record it sends carries the
    /// header snapshot and devices whatever changed (the collector missed them).
    pub const RESEND: u8 = 1 << 0;
}

/// The nfhook probes' per-CPU current traversal (value of the per-CPU array `CUR`, see
/// trace-ebpf's maps): the collector reads it to learn where a traversal whose records stopped
/// was last seen (48 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CurSlot {
    /// The packet's skb address (0: empty).
    pub skb: u64,
    /// [`slot`] bits.
    pub what: u32,
    pub _pad0: u32,
    /// Its tracking state (when [`slot::TRACKED`]).
    pub t: Tracked,
}

/// [`CurSlot::what`] bits (0 = an untracked packet, unfinished).
pub mod slot {
    /// The packet is traced: `t` is its state.
    pub const TRACKED: u32 = 1;
    /// Passed the last probe of a final hook (INPUT/POSTROUTING), or moved to the TRACKED
    /// map: nothing to move there when another packet takes the slot.
    pub const DONE: u32 = 2;
}

/// Per-CPU counters (index 0 of a per-CPU array), summed by the collector.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Packets met at a first-sight probe (PREROUTING / OUTPUT entry) in a traced netns.
    pub seen: u64,
    /// ... of which the filter rejected.
    pub filtered_out: u64,
    /// ... of which flow sampling skipped.
    pub sampled_out: u64,
    /// ... of which the rate limit skipped.
    pub rate_limited: u64,
    /// Packets tracked (passed filter, sampling and rate limit).
    pub tracked: u64,
    /// Records written to the ring buffer.
    pub emitted: u64,
    /// Records lost because the ring buffer was full (reserve failed).
    pub lost: u64,
    /// Drop records among `emitted`.
    pub drops: u64,
}

/// Kernel struct member offsets, resolved by the collector from the running kernel's BTF and
/// passed to the probes as a read-only global (`OFFSETS`). All in bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    // struct nf_hook_state
    pub state_hook: u32,
    pub state_pf: u32,
    pub state_in: u32,
    pub state_out: u32,
    pub state_net: u32,
    // struct net: ns.inum
    pub net_inum: u32,
    // struct net_device
    pub dev_ifindex: u32,
    pub dev_name: u32,
    // struct sk_buff
    pub skb_head: u32,
    pub skb_mark: u32,
    pub skb_nfct: u32,
    pub skb_network_header: u32,
    pub skb_transport_header: u32,
    pub skb_mac_header: u32,
    pub skb_sk: u32,
    // struct nf_conn
    pub ct_status: u32,
    pub ct_mark: u32,
    /// tuplehash[IP_CT_DIR_ORIGINAL].tuple
    pub ct_tuple: u32,
    /// tuplehash[IP_CT_DIR_REPLY].tuple
    pub ct_reply_tuple: u32,
    // struct nf_conntrack_tuple
    pub tuple_src_u3: u32,
    pub tuple_src_port: u32,
    pub tuple_dst_u3: u32,
    pub tuple_dst_port: u32,
    pub tuple_dst_protonum: u32,
    // struct sock / socket / file / cred (LOG's UID=/GID=)
    pub sk_state: u32,
    pub sk_socket: u32,
    pub socket_file: u32,
    pub file_cred: u32,
    pub cred_fsuid: u32,
    pub cred_fsgid: u32,
    /// 1 when the sock/socket/file/cred chain resolved (else UID/GID are not read).
    pub have_creds: u32,
    // br_netfilter's bridge info: sk_buff.active_extensions (u8 bit mask of enum skb_ext_id)
    // and .extensions (struct skb_ext *); skb_ext.offset[] (u8, in 8-byte chunks from the
    // skb_ext); struct nf_bridge_info physinif (int) and physoutdev (struct net_device *).
    pub skb_active_extensions: u32,
    pub skb_extensions: u32,
    pub ext_offset: u32,
    pub nfbr_physinif: u32,
    pub nfbr_physoutdev: u32,
    /// 1: `nfbr_physinif` is the offset of `physindev`, a struct net_device * (kernels before
    /// 6.8, where nf_log and xt_physdev use that device, not a lookup by index).
    pub nfbr_physin_dev: u32,
    /// struct net: dev_index_head (struct hlist_head *, NETDEV_HASHENTRIES buckets by
    /// ifindex); struct net_device: index_hlist. The input port's name by ifindex.
    pub net_dev_index_head: u32,
    pub dev_index_hlist: u32,
    /// 1: all of the bridge offsets above resolved, SKB_EXT_BRIDGE_NF is 0 and
    /// nf_bridge_info's two fields lie in its first 32 bytes (else bridge info is not read).
    pub have_bridge: u32,
}

/// Offsets of the table functions' structs (read-only global `TABLE_OFFSETS` of the fentry and
/// kprobe backends). On modular kernels these types live in split module BTF (x_tables,
/// nf_tables): resolved by trace_user::capture::modbtf. All in bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TableOffsets {
    /// struct xt_table: name (char[XT_TABLE_MAXNAMELEN]).
    pub xt_table_name: u32,
    /// struct nft_pktinfo: skb, state.
    pub pktinfo_skb: u32,
    pub pktinfo_state: u32,
    /// struct nft_base_chain: chain (the struct nft_chain nft_do_chain gets), and
    /// ops.priority (the base chain's hook priority).
    pub base_chain_chain: u32,
    pub base_chain_priority: u32,
    /// 1: ipt_do_table(priv, skb, state) (Linux >= 5.16); 0: ipt_do_table(skb, state, table).
    pub ipt_priv_first: u32,
    /// 1: the ip_tables/nf_tables offsets resolved (else the table probes stay silent).
    pub have_xt: u32,
    pub have_nft: u32,
    /// struct xt_table: private (struct xt_table_info *); xt_table_info: entries (the rule
    /// blob); xt_action_param: matchinfo (= targinfo, one union). For rule positions.
    pub xt_table_private: u32,
    pub xt_info_entries: u32,
    pub par_matchinfo: u32,
    /// 1: the three above resolved.
    pub have_xtpos: u32,
}

/// Load-time settings of the probes (read-only global `CONFIG`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProbeConfig {
    /// Trace 1 flow in `sample_n` (0 or 1: every flow).
    pub sample_n: u32,
    /// Maximum new tracked packets per second (0: unlimited).
    pub rate_limit: u32,
    /// Clauses of the loaded filter and the most predicates in one of them: the probe's loops
    /// stop there, so the verifier only walks the filter actually loaded.
    pub filter_clauses: u32,
    pub filter_preds: u32,
}

/// Bits of the read-only global `FILTER_FIELDS` (u32): which optional packet fields the loaded
/// filter looks at, so the first-sight probe reads them for every packet only when needed.
/// The default in the object is [`filter_fields::ALL`].
pub mod filter_fields {
    /// Device names (`iface`).
    pub const DEVS: u32 = 1 << 0;
    /// skb->mark (`mark`).
    pub const MARK: u32 = 1 << 1;
    pub const ALL: u32 = DEVS | MARK;
    /// The filter matches every packet (a clause without predicates): the nfhook probes
    /// skip reading the filter's view of the packet. Not part of [`ALL`].
    pub const MATCH_ALL: u32 = 1 << 2;
}

/// Token bucket state for `--rate-limit` (single-entry array map).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateState {
    /// Last refill time (ns).
    pub last_ns: u64,
    /// Tokens × 1e9 (nano-tokens, so refills need no division per packet).
    pub nano_tokens: u64,
}

/// The magic immediate the probe program carries in an `ld_imm64`; the collector rewrites it
/// to the probe's priority in each loaded copy (one program per priority: netfilter links have
/// no attach cookie).
pub const PRIORITY_MAGIC: u64 = 0x7ead_5107_1a7e_c0de;

/// The netfilter probe's direct kernel-memory reads (trace-ebpf `mem::kcast`): a helper
/// `call` with this immediate and, before it, an `ld_imm64` of [`KCAST_TYPE_MAGIC`] into r2.
/// The collector rewrites them into a call of the kfunc `bpf_rdonly_cast` and the BTF id of
/// `struct pt_regs` (trace_user::capture::kcast): the verifier then lets the program load
/// from the address directly (fault-safe), instead of a bpf_probe_read_kernel call per read.
pub const KCAST_CALL_MAGIC: i32 = 0x7ead_ca57;
/// See [`KCAST_CALL_MAGIC`].
pub const KCAST_TYPE_MAGIC: u64 = 0x7ead_7e1d_0b7e_c0de;

const _: () = assert!(core::mem::size_of::<RecordHeader>() == 8);
const _: () = assert!(core::mem::size_of::<HeaderSnapshot>() == 112);
const _: () = assert!(core::mem::align_of::<HeaderSnapshot>() == 8);
const _: () = assert!(core::mem::offset_of!(HeaderSnapshot, saddr) % 8 == 0);
const _: () = assert!(core::mem::offset_of!(HeaderSnapshot, daddr) % 8 == 0);
const _: () = assert!(core::mem::size_of::<ProbeRecord>() == 288);
const _: () = assert!(core::mem::offset_of!(ProbeRecord, headers) == 136);
const _: () = assert!(core::mem::offset_of!(ProbeRecord, physin_ifindex) == 248);
const _: () = assert!(core::mem::offset_of!(ProbeRecord, physin_dev) % 8 == 0);
const _: () = assert!(core::mem::offset_of!(ProbeRecord, physout_dev) % 8 == 0);
const _: () = assert!(core::mem::size_of::<DropRecord>() == 192);
const _: () = assert!(core::mem::offset_of!(DropRecord, headers) == 80);
const _: () = assert!(core::mem::size_of::<Tracked>() == 32);
const _: () = assert!(core::mem::size_of::<CurSlot>() == 48);
const _: () = assert!(core::mem::size_of::<Counters>() == 64);
const _: () = assert!(core::mem::size_of::<KernelOffsets>() == 40 * 4);
const _: () = assert!(core::mem::size_of::<ProbeConfig>() == 16);
const _: () = assert!(core::mem::size_of::<TableOffsets>() == 48);
const _: () = assert!(core::mem::size_of::<XtRecord>() == 64);
const _: () = assert!(core::mem::size_of::<HookVerdictRecord>() == 48);
const _: () = assert!(core::mem::size_of::<RateState>() == 16);

// SAFETY: plain #[repr(C)] data with explicit padding fields; every bit pattern is valid.
#[cfg(feature = "user")]
mod pod {
    use super::*;
    unsafe impl aya::Pod for RecordHeader {}
    unsafe impl aya::Pod for HeaderSnapshot {}
    unsafe impl aya::Pod for ProbeRecord {}
    unsafe impl aya::Pod for DropRecord {}
    unsafe impl aya::Pod for Tracked {}
    unsafe impl aya::Pod for CurSlot {}
    unsafe impl aya::Pod for Counters {}
    unsafe impl aya::Pod for KernelOffsets {}
    unsafe impl aya::Pod for ProbeConfig {}
    unsafe impl aya::Pod for TableOffsets {}
    unsafe impl aya::Pod for XtRecord {}
    unsafe impl aya::Pod for HookVerdictRecord {}
    unsafe impl aya::Pod for RateState {}
}

impl HeaderSnapshot {
    pub const ZERO: HeaderSnapshot = HeaderSnapshot {
        saddr: [0; 16],
        daddr: [0; 16],
        flowlabel: 0,
        len: 0,
        id: 0,
        frag: 0,
        proto: 0,
        tos: 0,
        ttl: 0,
        l4_flags: 0,
        sport: 0,
        dport: 0,
        _pad0: 0,
        tcp_seq: 0,
        tcp_ack: 0,
        tcp_window: 0,
        tcp_urgp: 0,
        tcp_flags: 0,
        tcp_res: 0,
        icmp_type: 0,
        icmp_code: 0,
        udp_len: 0,
        tcp_opt_len: 0,
        _pad1: 0,
        tcp_options: [0; TCP_OPTIONS_MAX],
    };
}

impl ProbeRecord {
    pub const ZERO: ProbeRecord = ProbeRecord {
        header: RecordHeader {
            kind: kind::PROBE,
            version: RECORD_VERSION,
            _pad0: 0,
            len: 288,
        },
        ts_ns: 0,
        skb: 0,
        gen: 0,
        ct_id: 0,
        netns: 0,
        priority: 0,
        in_ifindex: 0,
        out_ifindex: 0,
        mark: 0,
        ct_status: 0,
        ct_mark: 0,
        uid: 0,
        gid: 0,
        prev_priority: 0,
        pf: 0,
        hook: 0,
        flags: 0,
        ctinfo: 0,
        mac_len: 0,
        prev_hook: PREV_NONE,
        _pad0: 0,
        in_dev: [0; IFNAME_LEN],
        out_dev: [0; IFNAME_LEN],
        mac: [0; MAC_MAX],
        headers: HeaderSnapshot::ZERO,
        physin_ifindex: 0,
        physout_ifindex: 0,
        physin_dev: [0; IFNAME_LEN],
        physout_dev: [0; IFNAME_LEN],
    };
}

impl DropRecord {
    pub const ZERO: DropRecord = DropRecord {
        header: RecordHeader {
            kind: kind::DROP,
            version: RECORD_VERSION,
            _pad0: 0,
            len: core::mem::size_of::<DropRecord>() as u32,
        },
        ts_ns: 0,
        skb: 0,
        gen: 0,
        location: 0,
        ct_id: 0,
        netns: 0,
        reason: 0,
        prev_priority: 0,
        mark: 0,
        ct_status: 0,
        ct_mark: 0,
        prev_hook: PREV_NONE,
        pf: 0,
        flags: 0,
        ctinfo: 0,
        _pad: [0; 3],
        headers: HeaderSnapshot::ZERO,
    };
}

//! Loading the capture programs.
//!
//! aya 0.14 knows neither the "netfilter" ELF section nor BPF_PROG_TYPE_NETFILTER, so:
//! 1. the object is given to aya with the netfilter section renamed to ".text" (aya then treats
//!    the probe as a plain function): aya creates the maps, patches the read-only globals
//!    (offsets, sampling), and loads + attaches the tp_btf kfree_skb program;
//! 2. the same renamed object is parsed with aya-obj, the probe function is registered as a
//!    program, its map references are relocated to the fds aya created and its calls linked;
//! 3. one copy per probe priority is loaded with a raw BPF_PROG_LOAD (type NETFILTER), its
//!    `PRIORITY_MAGIC` immediate rewritten to the priority (links carry no cookie).
//!    Links are created by [`super::link`].

use std::collections::{HashMap, HashSet};
use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};

use aya::maps::{Array, HashMap as BpfHashMap, Map, MapData, PerCpuArray};

use super::ringread::EventRing;
use aya::programs::BtfTracePoint;
use aya::{Ebpf, EbpfLoader};
use aya_obj::generated::bpf_insn;
use trace_common::filter::{pred_kind, FilterProgram, FILTER_MAX_CLAUSES, FILTER_MAX_PREDS};
use trace_common::record::{
    filter_fields, slot, tracked_flags, Counters, CurSlot, KernelOffsets, ProbeConfig, Tracked,
    PREV_NONE, PRIORITY_MAGIC,
};
use trace_core::netfilter::Hook;

use super::bpfsys::{load_with_log_on_failure, sys_bpf, ProgLoadHead, BPF_PROG_LOAD};
use super::btf::{Btf, BtfError};
use super::object;

/// Name of the netfilter probe function in the object.
const PROBE_FN: &str = "nf_probe";
/// ELF section holding netfilter programs (libbpf's SEC("netfilter")).
const NETFILTER_SECTION: &str = "netfilter";
const BPF_PROG_TYPE_NETFILTER: u32 = 32;
const BPF_NETFILTER: u32 = 45;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Object(#[from] object::ObjectError),
    #[error("eBPF object: {0}")]
    Elf(String),
    #[error(transparent)]
    Btf(#[from] BtfError),
    #[error("aya: {0}")]
    Aya(String),
    #[error("map {0} missing from the eBPF object")]
    NoMap(&'static str),
    #[error("probe function {PROBE_FN} not found in the eBPF object")]
    NoProbe,
    #[error("the probe's priority immediate occurs {0} times (want 1)")]
    Magic(usize),
    #[error("BPF_PROG_LOAD (netfilter, priority {priority}) failed: {source}\n{log}")]
    ProgLoad {
        priority: i32,
        source: std::io::Error,
        log: String,
    },
}

fn aya_err(e: impl std::fmt::Display) -> LoadError {
    LoadError::Aya(e.to_string())
}

/// What the probes need to know at load time.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub ringbuf_size: u32,
    pub sample_n: u32,
    pub rate_limit: u32,
    pub filter: FilterProgram,
}

/// The loaded object: maps, the kfree_skb program (attached), and netfilter probe copies.
pub struct Loaded {
    ebpf: Ebpf,
    /// Relocated probe instructions (before priority patching).
    insns: Vec<bpf_insn>,
    license: CString,
    /// (priority, first_sight, last) → loaded program.
    progs: HashMap<(i32, bool, bool), OwnedFd>,
    /// enum skb_drop_reason value → name without the SKB_DROP_REASON_ prefix.
    pub drop_reasons: HashMap<u32, String>,
}

impl Loaded {
    pub fn load(opts: &LoadOptions) -> Result<Self, LoadError> {
        let kbtf = Btf::from_sys()?;
        let offsets = kernel_offsets(&kbtf)?;
        let drop_reasons = drop_reasons(&kbtf);
        let config = probe_config(opts);
        let mut fields = 0;
        if uses_kind(&opts.filter, pred_kind::IFACE) {
            fields |= filter_fields::DEVS;
        }
        if uses_kind(&opts.filter, pred_kind::MARK) {
            fields |= filter_fields::MARK;
        }
        if matches_all(&opts.filter) {
            fields |= filter_fields::MATCH_ALL;
        }
        let elf = hide_netfilter_sections(object::bytes()?)?;
        let mut ebpf = EbpfLoader::new()
            .map_max_entries("EVENTS", opts.ringbuf_size)
            .override_global("OFFSETS", &offsets, true)
            .override_global("CONFIG", &config, true)
            .override_global("FILTER_FIELDS", &fields, true)
            .override_global("WAKEUP_BYTES", &wakeup_bytes(opts.ringbuf_size), true)
            .load(&elf)
            .map_err(aya_err)?;
        let mut filter: Array<&mut MapData, FilterProgram> =
            Array::try_from(ebpf.map_mut("FILTER").ok_or(LoadError::NoMap("FILTER"))?)
                .map_err(aya_err)?;
        filter.set(0, opts.filter, 0).map_err(aya_err)?;
        attach_kfree_skb(&mut ebpf)?;
        let (mut insns, license) = relocated_probe(&elf, &ebpf)?;
        // Direct kernel-memory reads of the probe (bpf_rdonly_cast, see capture::kcast).
        super::kcast::patch_probe(&mut insns).map_err(LoadError::Elf)?;
        Ok(Loaded {
            ebpf,
            insns,
            license,
            progs: HashMap::new(),
            drop_reasons,
        })
    }

    /// The probe program for `priority` (loaded on first use). `first_sight` copies apply
    /// the filter to packets entering at PREROUTING/OUTPUT.
    pub fn program(&mut self, priority: i32, first_sight: bool) -> Result<RawFd, LoadError> {
        self.program_with(priority, first_sight, false)
    }

    /// [`Loaded::program`]; `last`: the copy for hooks where `priority` is the last probe of
    /// a final hook (INPUT, POSTROUTING): the traversal ends there, it always sends a record
    /// (the probes otherwise send one only when something changed).
    pub fn program_with(
        &mut self,
        priority: i32,
        first_sight: bool,
        last: bool,
    ) -> Result<RawFd, LoadError> {
        if let Some(fd) = self.progs.get(&(priority, first_sight, last)) {
            return Ok(fd.as_raw_fd());
        }
        let mut insns = self.insns.clone();
        patch_slot(&mut insns, priority, first_sight, last)?;
        let fd = prog_load(&insns, &self.license, priority, first_sight, last)?;
        let raw = fd.as_raw_fd();
        self.progs.insert((priority, first_sight, last), fd);
        Ok(raw)
    }

    /// The ring buffer (taken once, by the reader).
    pub fn take_events(&mut self) -> Result<EventRing, LoadError> {
        let map = self
            .ebpf
            .take_map("EVENTS")
            .ok_or(LoadError::NoMap("EVENTS"))?;
        EventRing::from_map(map).map_err(aya_err)
    }

    /// The probes' tracking state (taken once, by the reader): see [`Positions`].
    pub fn take_positions(&mut self) -> Result<Positions, LoadError> {
        let tracked = self
            .ebpf
            .take_map("TRACKED")
            .ok_or(LoadError::NoMap("TRACKED"))?;
        let cur = self.ebpf.take_map("CUR").ok_or(LoadError::NoMap("CUR"))?;
        Ok(Positions {
            tracked: BpfHashMap::try_from(tracked).map_err(aya_err)?,
            cur: PerCpuArray::try_from(cur).map_err(aya_err)?,
            slots: Default::default(),
        })
    }

    /// Counters summed over CPUs.
    pub fn counters(&self) -> Result<Counters, LoadError> {
        let map = self
            .ebpf
            .map("COUNTERS")
            .ok_or(LoadError::NoMap("COUNTERS"))?;
        let arr: PerCpuArray<&MapData, Counters> = PerCpuArray::try_from(map).map_err(aya_err)?;
        let per_cpu = arr.get(&0, 0).map_err(aya_err)?;
        Ok(sum_counters(&per_cpu))
    }
}

/// Where the probes last saw a traversal, read from their maps (each CPU's current-traversal
/// slot, then TRACKED): for a packet whose records stopped between two probes (stolen,
/// queued), so the collector can say which stage took it. Entries are matched on skb
/// address and gen; a slot or entry reused since gives no answer.
pub struct Positions {
    tracked: BpfHashMap<MapData, u64, Tracked>,
    cur: PerCpuArray<MapData, CurSlot>,
    /// The slots as last read, and when: one read serves the lookups of one sweep.
    slots: std::cell::RefCell<(Option<std::time::Instant>, Vec<CurSlot>)>,
}

/// How long a read of the per-CPU slots is reused.
const SLOTS_FRESH: std::time::Duration = std::time::Duration::from_millis(20);

impl Positions {
    /// The last probe (hook, priority) traversal (skb, gen) passed, if still known.
    pub fn last_probe(&self, skb: u64, gen: u64) -> Option<(Hook, i32)> {
        let known = |t: &Tracked| {
            (t.gen == gen && t.prev_hook != PREV_NONE && t.flags & tracked_flags::RESEND == 0)
                .then(|| Hook::from_num(t.prev_hook).map(|h| (h, t.prev_priority)))
                .flatten()
        };
        let mut slots = self.slots.borrow_mut();
        if slots.0.is_none_or(|t| t.elapsed() > SLOTS_FRESH) {
            let read = self.cur.get(&0, 0).map(|v| v.iter().copied().collect());
            *slots = (Some(std::time::Instant::now()), read.unwrap_or_default());
        }
        let found = slots
            .1
            .iter()
            .find(|s| s.skb == skb && s.what & slot::TRACKED != 0 && s.t.gen == gen);
        if let Some(s) = found {
            return known(&s.t);
        }
        self.tracked.get(&skb, 0).ok().and_then(|t| known(&t))
    }
}

/// The per-CPU copies of the COUNTERS map added up (shared with capture::classic).
pub(crate) fn sum_counters(per_cpu: &[Counters]) -> Counters {
    per_cpu.iter().fold(Counters::default(), |mut s, c| {
        s.seen += c.seen;
        s.filtered_out += c.filtered_out;
        s.sampled_out += c.sampled_out;
        s.rate_limited += c.rate_limited;
        s.tracked += c.tracked;
        s.emitted += c.emitted;
        s.lost += c.lost;
        s.drops += c.drops;
        s
    })
}

/// enum skb_drop_reason value → name without the SKB_DROP_REASON_ prefix (empty when the
/// kernel's BTF lacks the enum).
pub(crate) fn drop_reasons(kbtf: &Btf) -> HashMap<u32, String> {
    kbtf.enum_values("skb_drop_reason")
        .map(|m| {
            m.into_iter()
                .map(|(v, n)| {
                    (
                        v as u32,
                        n.trim_start_matches("SKB_DROP_REASON_").to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The CONFIG global: sampling, rate limit and the filter's clause/predicate bounds.
pub(crate) fn probe_config(opts: &LoadOptions) -> ProbeConfig {
    let n_clauses = opts.filter.n_clauses.min(FILTER_MAX_CLAUSES as u32);
    let max_preds = opts.filter.clauses[..n_clauses as usize]
        .iter()
        .map(|c| c.n_preds)
        .max()
        .unwrap_or(0);
    ProbeConfig {
        sample_n: opts.sample_n,
        rate_limit: opts.rate_limit,
        filter_clauses: n_clauses,
        filter_preds: max_preds.min(FILTER_MAX_PREDS as u32),
    }
}

/// Records wake the collector once the ring is 1/8 full; below that it drains on its
/// timer (see session::DRAIN_INTERVAL): one wakeup per batch instead of one per record.
pub fn wakeup_bytes(ringbuf_size: u32) -> u64 {
    (ringbuf_size / 8) as u64
}

/// Does the program match every packet (a clause without predicates)?
fn matches_all(p: &FilterProgram) -> bool {
    let n = (p.n_clauses as usize).min(FILTER_MAX_CLAUSES);
    p.clauses[..n].iter().any(|c| c.n_preds == 0)
}

/// Does any predicate of the program test `kind`?
fn uses_kind(p: &FilterProgram, kind: u8) -> bool {
    let n = (p.n_clauses as usize).min(FILTER_MAX_CLAUSES);
    p.clauses[..n].iter().any(|c| {
        c.preds[..(c.n_preds as usize).min(FILTER_MAX_PREDS)]
            .iter()
            .any(|x| x.kind == kind)
    })
}

pub(crate) fn attach_kfree_skb(ebpf: &mut Ebpf) -> Result<(), LoadError> {
    let btf = aya::Btf::from_sys_fs().map_err(aya_err)?;
    let prog: &mut BtfTracePoint = ebpf
        .program_mut("kfree_skb")
        .ok_or_else(|| LoadError::Aya("program kfree_skb missing".into()))?
        .try_into()
        .map_err(aya_err)?;
    prog.load("kfree_skb", &btf).map_err(aya_err)?;
    prog.attach().map_err(aya_err)?;
    Ok(())
}

/// The kernel struct offsets the probes read, from the running kernel's BTF.
pub fn kernel_offsets(btf: &Btf) -> Result<KernelOffsets, BtfError> {
    let creds = (|| {
        Ok::<_, BtfError>((
            btf.offset("sock", "__sk_common.skc_state")?,
            btf.offset("sock", "sk_socket")?,
            btf.offset("socket", "file")?,
            btf.offset("file", "f_cred")?,
            btf.offset("cred", "fsuid")?,
            btf.offset("cred", "fsgid")?,
        ))
    })();
    let (sk_state, sk_socket, socket_file, file_cred, cred_fsuid, cred_fsgid, have_creds) =
        match creds {
            Ok((a, b, c, d, e, f)) => (a, b, c, d, e, f, 1),
            Err(e) => {
                log::warn!("UID/GID of local packets unavailable: {e}");
                (0, 0, 0, 0, 0, 0, 0)
            }
        };
    let bridge = match bridge_offsets(btf) {
        Ok(b) => b,
        Err(e) => {
            log::warn!("bridge ports (PHYSIN=/PHYSOUT=, -m physdev) unavailable: {e}");
            BridgeOffsets::default()
        }
    };
    Ok(KernelOffsets {
        state_hook: btf.offset("nf_hook_state", "hook")?,
        state_pf: btf.offset("nf_hook_state", "pf")?,
        state_in: btf.offset("nf_hook_state", "in")?,
        state_out: btf.offset("nf_hook_state", "out")?,
        state_net: btf.offset("nf_hook_state", "net")?,
        net_inum: btf.offset("net", "ns.inum")?,
        dev_ifindex: btf.offset("net_device", "ifindex")?,
        dev_name: btf.offset("net_device", "name")?,
        skb_head: btf.offset("sk_buff", "head")?,
        skb_mark: btf.offset("sk_buff", "mark")?,
        skb_nfct: btf.offset("sk_buff", "_nfct")?,
        skb_network_header: btf.offset("sk_buff", "network_header")?,
        skb_transport_header: btf.offset("sk_buff", "transport_header")?,
        skb_mac_header: btf.offset("sk_buff", "mac_header")?,
        skb_sk: btf.offset("sk_buff", "sk")?,
        ct_status: btf.offset("nf_conn", "status")?,
        ct_mark: btf.offset("nf_conn", "mark")?,
        // tuplehash is an array of struct nf_conntrack_tuple_hash: [0] ORIGINAL, [1] REPLY.
        ct_tuple: btf.offset("nf_conn", "tuplehash")?
            + btf.offset("nf_conntrack_tuple_hash", "tuple")?,
        ct_reply_tuple: btf.offset("nf_conn", "tuplehash")?
            + btf.size_of("nf_conntrack_tuple_hash")?
            + btf.offset("nf_conntrack_tuple_hash", "tuple")?,
        tuple_src_u3: btf.offset("nf_conntrack_tuple", "src.u3")?,
        tuple_src_port: btf.offset("nf_conntrack_tuple", "src.u.all")?,
        tuple_dst_u3: btf.offset("nf_conntrack_tuple", "dst.u3")?,
        tuple_dst_port: btf.offset("nf_conntrack_tuple", "dst.u.all")?,
        tuple_dst_protonum: btf.offset("nf_conntrack_tuple", "dst.protonum")?,
        sk_state,
        sk_socket,
        socket_file,
        file_cred,
        cred_fsuid,
        cred_fsgid,
        have_creds,
        skb_active_extensions: bridge.skb_active_extensions,
        skb_extensions: bridge.skb_extensions,
        ext_offset: bridge.ext_offset,
        nfbr_physinif: bridge.physinif,
        nfbr_physoutdev: bridge.physoutdev,
        nfbr_physin_dev: bridge.physin_dev as u32,
        net_dev_index_head: bridge.net_dev_index_head,
        dev_index_hlist: bridge.dev_index_hlist,
        have_bridge: bridge.have as u32,
    })
}

/// Where br_netfilter keeps a bridged skb's ports (see `KernelOffsets::have_bridge`).
#[derive(Debug, Default, Clone, Copy)]
struct BridgeOffsets {
    skb_active_extensions: u32,
    skb_extensions: u32,
    ext_offset: u32,
    physinif: u32,
    /// `physinif` is the offset of `physindev` (a device pointer; before 6.8).
    physin_dev: bool,
    physoutdev: u32,
    net_dev_index_head: u32,
    dev_index_hlist: u32,
    have: bool,
}

/// Bytes of struct nf_bridge_info the probes read (both port fields must lie in them).
const NF_BRIDGE_READ: u32 = 32;

/// The bridge info offsets; an error names what this kernel lacks (no CONFIG_BRIDGE_NETFILTER
/// or CONFIG_SKB_EXTENSIONS). Kernels before 6.8 hold the input port as `physindev`, a
/// device pointer, instead of the ifindex `physinif`.
fn bridge_offsets(btf: &Btf) -> Result<BridgeOffsets, BtfError> {
    let ids = btf.enum_values("skb_ext_id")?;
    // The probes test bit 0 of active_extensions and read offset[0].
    if !ids.iter().any(|(v, n)| n == "SKB_EXT_BRIDGE_NF" && *v == 0) {
        return Err(BtfError::NoMember {
            ty: "enum skb_ext_id".into(),
            path: "SKB_EXT_BRIDGE_NF = 0".into(),
        });
    }
    let (physinif, physin_dev) = match btf.offset("nf_bridge_info", "physinif") {
        Ok(o) => (o, false),
        Err(_) => (btf.offset("nf_bridge_info", "physindev")?, true),
    };
    let b = BridgeOffsets {
        skb_active_extensions: btf.offset("sk_buff", "active_extensions")?,
        skb_extensions: btf.offset("sk_buff", "extensions")?,
        ext_offset: btf.offset("skb_ext", "offset")?,
        physinif,
        physin_dev,
        physoutdev: btf.offset("nf_bridge_info", "physoutdev")?,
        net_dev_index_head: btf.offset("net", "dev_index_head")?,
        dev_index_hlist: btf.offset("net_device", "index_hlist")?,
        have: true,
    };
    let physin_size = if physin_dev { 8 } else { 4 };
    if b.physinif + physin_size > NF_BRIDGE_READ
        || !b.physinif.is_multiple_of(physin_size)
        || b.physoutdev + 8 > NF_BRIDGE_READ
        || !b.physoutdev.is_multiple_of(8)
    {
        return Err(BtfError::NoMember {
            ty: "nf_bridge_info".into(),
            path: format!("aligned physin*/physoutdev within its first {NF_BRIDGE_READ} bytes"),
        });
    }
    Ok(b)
}

/// A copy of the ELF where every "netfilter" section is named ".text" (an existing string of
/// the section-name table), so aya's parser accepts the object and treats the probe as a
/// function it relocates but never loads.
pub(crate) fn hide_netfilter_sections(elf: &[u8]) -> Result<Vec<u8>, LoadError> {
    let bad = |what: &str| LoadError::Elf(what.to_string());
    let u16_at = |o: usize| elf.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |o: usize| {
        elf.get(o..o + 4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
    };
    let u64_at = |o: usize| {
        elf.get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
    };
    if elf.get(..4) != Some(b"\x7fELF") || elf.get(4) != Some(&2) || elf.get(5) != Some(&1) {
        return Err(bad("not a little-endian ELF64 object"));
    }
    let shoff = u64_at(0x28).ok_or(bad("truncated header"))? as usize;
    let shentsize = u16_at(0x3a).ok_or(bad("truncated header"))? as usize;
    let shnum = u16_at(0x3c).ok_or(bad("truncated header"))? as usize;
    let shstrndx = u16_at(0x3e).ok_or(bad("truncated header"))? as usize;
    let sh = |i: usize| shoff + i * shentsize;
    let strtab_off = u64_at(sh(shstrndx) + 0x18).ok_or(bad("truncated section table"))? as usize;
    let strtab_size = u64_at(sh(shstrndx) + 0x20).ok_or(bad("truncated section table"))? as usize;
    let strtab = elf
        .get(strtab_off..strtab_off + strtab_size)
        .ok_or(bad("truncated string table"))?;
    let name_at = |off: u32| -> &[u8] {
        let s = strtab.get(off as usize..).unwrap_or(&[]);
        &s[..s.iter().position(|&b| b == 0).unwrap_or(s.len())]
    };
    let mut text_name = None;
    let mut netfilter = Vec::new();
    for i in 0..shnum {
        let name_off = u32_at(sh(i)).ok_or(bad("truncated section table"))?;
        match name_at(name_off) {
            b".text" => text_name = Some(name_off),
            n if n == NETFILTER_SECTION.as_bytes() => netfilter.push(i),
            _ => {}
        }
    }
    let text_name = text_name.ok_or(bad("no .text section name to reuse"))?;
    if netfilter.is_empty() {
        return Err(bad("no netfilter section"));
    }
    let mut out = elf.to_vec();
    for i in netfilter {
        out[sh(i)..sh(i) + 4].copy_from_slice(&text_name.to_le_bytes());
    }
    Ok(out)
}

/// The probe's instructions with maps relocated to aya's fds and bpf-to-bpf calls linked.
fn relocated_probe(elf: &[u8], ebpf: &Ebpf) -> Result<(Vec<bpf_insn>, CString), LoadError> {
    let mut obj = aya_obj::Object::parse(elf).map_err(aya_err)?;
    let key = obj
        .functions
        .iter()
        .find(|(_, f)| f.name == PROBE_FN)
        .map(|(k, _)| *k)
        .ok_or(LoadError::NoProbe)?;
    obj.programs.insert(
        PROBE_FN.to_string(),
        aya_obj::Program {
            license: obj.license.clone(),
            kernel_version: None,
            // Only used for bookkeeping by aya-obj; the kernel type is set in prog_load.
            section: aya_obj::ProgramSection::SocketFilter,
            section_index: key.0,
            address: key.1,
        },
    );
    // Clones: relocate_maps needs `&mut obj` while reading the map definitions.
    let mut maps: Vec<(String, RawFd, aya_obj::Map)> = Vec::new();
    for (name, def) in &obj.maps {
        let map = ebpf
            .map(name)
            .ok_or_else(|| LoadError::Aya(format!("aya created no map {name}")))?;
        maps.push((name.clone(), map_fd(map)?, def.clone()));
    }
    let text_sections: HashSet<usize> = obj.functions.keys().map(|(s, _)| *s).collect();
    obj.relocate_maps(
        maps.iter().map(|(n, fd, m)| (n.as_str(), *fd, m)),
        &text_sections,
    )
    .map_err(aya_err)?;
    obj.relocate_calls(&text_sections).map_err(aya_err)?;
    let insns = obj.functions[&key].instructions.clone();
    Ok((insns, obj.license.clone()))
}

pub(crate) fn map_fd(map: &Map) -> Result<RawFd, LoadError> {
    let data = match map {
        Map::Array(d)
        | Map::HashMap(d)
        | Map::LruHashMap(d)
        | Map::PerCpuArray(d)
        | Map::RingBuf(d) => d,
        Map::PerCpuHashMap(d) | Map::PerCpuLruHashMap(d) => d,
        other => return Err(LoadError::Aya(format!("unexpected map kind {other:?}"))),
    };
    Ok(data.fd().as_fd().as_raw_fd())
}

/// Rewrite the `ld_imm64 PRIORITY_MAGIC`: low word = priority, high word = flags (bit 0 first
/// sight, bit 1 last probe of a final hook; trace-ebpf nfhook's SLOT_*).
fn patch_slot(
    insns: &mut [bpf_insn],
    priority: i32,
    first_sight: bool,
    last: bool,
) -> Result<(), LoadError> {
    let (lo, hi) = (
        PRIORITY_MAGIC as u32 as i32,
        (PRIORITY_MAGIC >> 32) as u32 as i32,
    );
    let hits: Vec<usize> = (0..insns.len().saturating_sub(1))
        .filter(|&i| {
            insns[i].code == 0x18
                && insns[i].src_reg() == 0
                && insns[i].imm == lo
                && insns[i + 1].imm == hi
        })
        .collect();
    if hits.len() != 1 {
        return Err(LoadError::Magic(hits.len()));
    }
    insns[hits[0]].imm = priority;
    insns[hits[0] + 1].imm = first_sight as i32 | (last as i32) << 1;
    Ok(())
}

/// union bpf_attr for BPF_PROG_LOAD, up to expected_attach_type (rest zero).
#[repr(C)]
struct ProgLoadAttr {
    head: ProgLoadHead,
    _rest: [u8; 72],
}

/// The kernel's name of a probe copy (at most 15 characters, [A-Za-z0-9_]): `nfp` + `f` for
/// first-sight copies, `l` for last-probe copies, else `_` + the priority with `m` for minus
/// or `p` (e.g. `nfpfm301`, `nfplp101`), so per-program statistics (bpf_stats) tell the
/// copies apart.
pub fn probe_prog_name(priority: i32, first_sight: bool, last: bool) -> String {
    let sign = if priority < 0 { 'm' } else { 'p' };
    let f = match (first_sight, last) {
        (true, _) => 'f',
        (false, true) => 'l',
        (false, false) => '_',
    };
    format!("nfp{f}{sign}{}", priority.unsigned_abs())
}

fn prog_load(
    insns: &[bpf_insn],
    license: &CString,
    priority: i32,
    first_sight: bool,
    last: bool,
) -> Result<OwnedFd, LoadError> {
    let name = probe_prog_name(priority, first_sight, last);
    load_with_log_on_failure(4 << 20, 30, |log| {
        let head = ProgLoadHead::new(
            BPF_PROG_TYPE_NETFILTER,
            BPF_NETFILTER,
            insns,
            license,
            &name,
            log,
        );
        sys_bpf(
            BPF_PROG_LOAD,
            &ProgLoadAttr {
                head,
                _rest: [0; 72],
            },
        )
    })
    .map_err(|(source, log)| LoadError::ProgLoad {
        priority,
        source,
        log,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prog_load_attr_layout() {
        assert_eq!(std::mem::offset_of!(ProgLoadAttr, head.prog_name), 48);
        assert_eq!(
            std::mem::offset_of!(ProgLoadAttr, head.expected_attach_type),
            68
        );
        assert_eq!(std::mem::size_of::<ProgLoadAttr>(), 144);
    }

    #[test]
    fn match_all_is_a_clause_without_predicates() {
        assert!(matches_all(&FilterProgram::match_all()));
        assert!(!matches_all(&FilterProgram::NONE));
        let mut p = FilterProgram::match_all();
        p.clauses[0].n_preds = 1;
        assert!(!matches_all(&p));
    }

    #[test]
    fn hides_netfilter_section_in_the_built_object() {
        let Ok(elf) = object::bytes() else { return };
        let out = hide_netfilter_sections(elf).unwrap();
        assert_eq!(out.len(), elf.len());
        aya_obj::Object::parse(&out).expect("aya-obj parses the patched object");
        assert!(
            aya_obj::Object::parse(elf).is_err(),
            "aya-obj 0.3 rejects the netfilter section"
        );
    }
}

#[cfg(test)]
mod root_tests {
    use super::*;

    /// Loads the object and one first-sight and one plain probe copy (verifier on the running
    /// kernel). Needs root; skipped loudly otherwise.
    #[test]
    fn loads_and_verifies_probes_as_root() {
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIPPED loads_and_verifies_probes_as_root: needs root");
            return;
        }
        let opts = LoadOptions {
            ringbuf_size: 1 << 20,
            sample_n: 0,
            rate_limit: 0,
            filter: FilterProgram::match_all(),
        };
        let mut l = Loaded::load(&opts).expect("load");
        l.program(-301, true).expect("first-sight copy verifies");
        l.program(-299, false).expect("plain copy verifies");
        l.program_with(101, false, true)
            .expect("last-probe copy verifies");
        assert!(l.drop_reasons.values().any(|n| n == "NETFILTER_DROP"));
        assert_eq!(l.counters().unwrap().seen, 0);
        let pos = l.take_positions().expect("TRACKED and CUR maps");
        assert_eq!(pos.last_probe(0xffff_8880_0000_1000, 1), None);
        // Sampling and rate limiting are load-time constants: their code paths are only
        // verified when enabled.
        let mut l = Loaded::load(&LoadOptions {
            sample_n: 8,
            rate_limit: 100,
            ..opts
        })
        .expect("load");
        l.program(-301, true)
            .expect("first-sight copy with sampling verifies");
        l.program(-299, false)
            .expect("plain copy with sampling verifies");
    }
}

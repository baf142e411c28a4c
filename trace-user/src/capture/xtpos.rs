//! Exact legacy rule positions (issue 6 item 3), without adding rules: the kprobe backend
//! probes the x_tables match and target functions; their `xt_action_param` matchinfo/targinfo
//! pointers point into the table's rule blob, whose kernel address the table probe reports as
//! the table starts ([`XtRecord`] BASE). `pointer − base` is an offset in the blob userspace
//! reads with IPT_SO_GET_ENTRIES (same layout: only the 32-byte match/target headers differ,
//! kernel pointers vs names), which maps to chain:rule.
//!
//! What this sees: rules with a match or a non-standard target (a function call). Rules with
//! only the IP part and a standard verdict/jump call nothing; the evaluator fills those in and
//! these positions confirm it.

use std::collections::HashMap;
use std::path::Path;

use trace_common::record::{xt_what, XtRecord};
use trace_core::netfilter::{Hook, Table};
use trace_core::reconstruct::positions::{RuleCall, TablePositions, XtCall};

const IPT_SO_GET_INFO: libc::c_int = 64;
const IPT_SO_GET_ENTRIES: libc::c_int = 65;
const XT_TABLE_MAXNAMELEN: usize = 32;
/// sizeof(struct ipt_entry) on 64-bit: ipt_ip (84), nfcache, target_offset (88),
/// next_offset (90), comefrom, counters (96..112).
const IPT_ENTRY_SIZE: usize = 112;
const TARGET_OFFSET_AT: usize = 88;
const NEXT_OFFSET_AT: usize = 90;
/// The match/target header before its data (union of the user and kernel views).
const XT_HEADER: usize = 32;
const HOOK_NAMES: [&str; 5] = ["PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"];

#[derive(Debug, thiserror::Error)]
pub enum XtPosError {
    #[error("getsockopt {what} for table {table}: {source}")]
    Sockopt {
        what: &'static str,
        table: String,
        source: std::io::Error,
    },
    #[error("rule blob of table {table} malformed at offset {offset}")]
    Malformed { table: String, offset: usize },
    #[error(transparent)]
    Netns(#[from] crate::netns::NetnsError),
    #[error("x_tables record of {len} bytes (expected {need}), version {version}")]
    Record {
        len: usize,
        need: usize,
        version: u8,
    },
}

/// One ring-buffer record of kind XT ([`trace_common::record::kind::XT`]): length and
/// record version checked, read unaligned.
pub fn parse_record(bytes: &[u8]) -> Result<XtRecord, XtPosError> {
    let need = std::mem::size_of::<XtRecord>();
    let version = bytes.get(1).copied().unwrap_or(0);
    if bytes.len() != need || version != trace_common::record::RECORD_VERSION {
        return Err(XtPosError::Record {
            len: bytes.len(),
            need,
            version,
        });
    }
    // SAFETY: length checked; XtRecord is plain #[repr(C)] data (any bit pattern is valid).
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr() as *const XtRecord) })
}

/// Where an offset of the blob is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub chain: String,
    /// 1-based rule number in the chain (TRACE's numbering); None = the builtin chain's policy.
    pub rule: Option<u32>,
    /// The match's name for a match pointer, None for the target.
    pub matched: Option<String>,
    /// The match's 0-based position among the rule's matches (0 for the target).
    pub index: u32,
    /// The entry's target name ("" for a standard verdict or jump).
    pub target: String,
}

#[derive(Debug, Clone)]
struct Entry {
    offset: usize,
    size: usize,
    chain: String,
    rule: Option<u32>,
    /// (data offset, name) of each match.
    matches: Vec<(usize, String)>,
    target_data: usize,
    target: String,
}

/// One table's rule blob, parsed.
#[derive(Debug, Clone)]
pub struct Blob {
    pub table: String,
    entries: Vec<Entry>,
}

impl Blob {
    /// IPT_SO_GET_INFO + IPT_SO_GET_ENTRIES for `table` in the netns at `netns`.
    pub fn read(netns: &Path, table: &str) -> Result<Blob, XtPosError> {
        let t = table.to_string();
        let (info, bytes) = crate::netns::run_in(netns, move || get_entries(&t))??;
        Blob::parse(table, &info, &bytes)
    }

    /// Parse the entries of a blob with the table's hook entry points.
    fn parse(table: &str, info: &Info, bytes: &[u8]) -> Result<Blob, XtPosError> {
        let bad = |offset| XtPosError::Malformed {
            table: table.to_string(),
            offset,
        };
        let u16_at = |o: usize| {
            bytes
                .get(o..o + 2)
                .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
                .ok_or(bad(o))
        };
        let mut entries = Vec::new();
        let (mut chain, mut rule) = (String::new(), 0u32);
        let mut off = 0;
        while off < bytes.len() {
            let target_offset = u16_at(off + TARGET_OFFSET_AT)?;
            let next = u16_at(off + NEXT_OFFSET_AT)?;
            if next < IPT_ENTRY_SIZE || target_offset < IPT_ENTRY_SIZE || off + next > bytes.len() {
                return Err(bad(off));
            }
            if let Some(h) = (0..5)
                .find(|&h| info.valid_hooks & (1 << h) != 0 && info.hook_entry[h] as usize == off)
            {
                chain = HOOK_NAMES[h].to_string();
                rule = 0;
            }
            let tname = name_at(bytes, off + target_offset + 2);
            if tname == "ERROR" {
                // A user chain head (data = its name) or the table's final entry.
                chain = name_at(bytes, off + target_offset + XT_HEADER);
                rule = 0;
                off += next;
                continue;
            }
            let policy = (0..5)
                .any(|h| info.valid_hooks & (1 << h) != 0 && info.underflow[h] as usize == off);
            let mut matches = Vec::new();
            let mut m = off + IPT_ENTRY_SIZE;
            while m < off + target_offset {
                let size = u16_at(m)?;
                if size < XT_HEADER {
                    return Err(bad(m));
                }
                matches.push((m + XT_HEADER - off, name_at(bytes, m + 2)));
                m += size;
            }
            rule += 1;
            entries.push(Entry {
                offset: off,
                size: next,
                chain: chain.clone(),
                rule: (!policy).then_some(rule),
                matches,
                target_data: target_offset + XT_HEADER,
                target: tname,
            });
            off += next;
        }
        Ok(Blob {
            table: table.to_string(),
            entries,
        })
    }

    /// The rule (and match) at `offset` of the blob.
    pub fn position(&self, offset: usize) -> Option<Position> {
        let mut i = self
            .entries
            .partition_point(|e| e.offset <= offset)
            .checked_sub(1)?;
        // A target without data (TRACE, ACCEPT...): its data pointer is the entry's end, i.e.
        // the next entry's start (never a data pointer of that one).
        if offset == self.entries[i].offset
            && i > 0
            && self.entries[i - 1].target_data == self.entries[i - 1].size
        {
            i -= 1;
        }
        let e = &self.entries[i];
        let rel = offset.checked_sub(e.offset).filter(|r| *r <= e.size)?;
        let (matched, index) = if rel == e.target_data {
            (None, 0)
        } else {
            let i = e.matches.iter().position(|(o, _)| *o == rel)?;
            (Some(e.matches[i].1.clone()), i as u32)
        };
        Some(Position {
            chain: e.chain.clone(),
            rule: e.rule,
            matched,
            index,
            target: e.target.clone(),
        })
    }

    /// The extensions the table's rules call: match names and non-standard target names
    /// (standard verdicts and jumps call nothing; ERROR only marks chain heads).
    pub fn extensions(&self) -> std::collections::BTreeSet<String> {
        self.entries
            .iter()
            .flat_map(|e| e.matches.iter().map(|(_, n)| n.clone()))
            .chain(
                self.entries
                    .iter()
                    .map(|e| e.target.clone())
                    .filter(|t| !t.is_empty() && t != "ERROR"),
            )
            .collect()
    }
}

/// Whether extension `name` (a match or target name of the blob) has a probed function among
/// `functions`: its functions are named after it (`tcp` → tcp_mt, `conntrack` →
/// conntrack_mt_v3, `DNAT` → xt_dnat_target_v2, `MASQUERADE` → masquerade_tg). An
/// extension whose function is named otherwise (`icmp` → icmp_match in ip_tables, `set` →
/// set_match_v4) is never probed, so its table's positions are incomplete.
pub fn probed(name: &str, functions: &[String]) -> bool {
    let prefix = format!("{}_", name.to_ascii_lowercase());
    functions.iter().any(|f| {
        f.trim_start_matches("xt_")
            .to_ascii_lowercase()
            .starts_with(&prefix)
    })
}

/// One table traversal's positions, with the packet traversal it belongs to (the key of
/// [`trace_core::reconstruct::positions::PositionStore::insert`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PacketTable {
    pub netns: u32,
    pub skb: u64,
    pub gen: u64,
    pub positions: TablePositions,
}

/// The XT records of a capture (in ring-buffer order) resolved against the rule blobs of the
/// traced netns (table name → blob): one [`TablePositions`] per table traversal (BASE record),
/// its calls in kernel order. `complete` when every extension the table's rules use has a
/// probed function among `probed_functions` ([`probed`]) and `lost_records` is false.
/// Records that cannot be placed are described in the second value (`table+offset`, or why);
/// a traversal with one is incomplete too.
pub fn positions(
    records: &[XtRecord],
    blobs: &HashMap<String, Blob>,
    probed_functions: &[String],
    lost_records: bool,
) -> (Vec<PacketTable>, Vec<String>) {
    let mut t = XtTracker::new(probed_functions.to_vec(), |_, table: &str| {
        blobs.get(table).cloned()
    });
    t.lost_records = lost_records;
    let mut out: Vec<PacketTable> = records.iter().filter_map(|r| t.push(r)).collect();
    out.extend(t.finish());
    (out, std::mem::take(&mut t.unresolved))
}

/// A table's blob as read for one blob address (None: it could not be read).
type BlobAt = (u64, Option<std::rc::Rc<Blob>>);

/// One table traversal being collected, with the blob its pointers resolve against.
struct Open {
    table: PacketTable,
    base: u64,
    blob: Option<std::rc::Rc<Blob>>,
}

/// Incremental resolution for a live capture: XT records in ring-buffer order in, finished
/// table traversals out. A traversal is finished when its packet's next table starts
/// ([`XtTracker::push`] of its BASE) or when the packet's next probe event arrives
/// ([`XtTracker::packet_event`]: the table's exit record follows its calls on the same CPU),
/// so a collector hands each traversal to `RuleLevel::positions` before the event that can
/// complete its packet. Blobs come from `blob_of(netns, table)` (e.g. [`Blob::read`] in the
/// namespace), read again when a table's rule blob address changes (the kernel allocates a
/// new one for every ruleset replacement). IPv6 tables (ip6t_entry blobs) are not parsed:
/// their records are counted as unresolved.
pub struct XtTracker<F> {
    blob_of: F,
    probed: Vec<String>,
    /// (netns, table) → (blob address, blob or None if it could not be read).
    blobs: HashMap<(u32, String), BlobAt>,
    open: HashMap<(u64, u64), Open>,
    /// Set when the capture lost records: every traversal is then incomplete.
    pub lost_records: bool,
    /// Records that could not be placed, described.
    pub unresolved: Vec<String>,
}

impl<F: FnMut(u32, &str) -> Option<Blob>> XtTracker<F> {
    pub fn new(probed_functions: Vec<String>, blob_of: F) -> Self {
        XtTracker {
            blob_of,
            probed: probed_functions,
            blobs: HashMap::new(),
            open: HashMap::new(),
            lost_records: false,
            unresolved: Vec::new(),
        }
    }

    /// One XT record; returns the traversal it finished (a BASE closes the packet's previous one).
    pub fn push(&mut self, r: &XtRecord) -> Option<PacketTable> {
        let key = (r.skb, r.gen);
        if r.what == xt_what::BASE {
            let done = self.close(key);
            self.start(r);
            return done;
        }
        let target = r.what == xt_what::TARGET;
        let what = if target { "target" } else { "match" };
        let Some(open) = self.open.get_mut(&key) else {
            self.unresolved
                .push(format!("{what} before any table base"));
            return None;
        };
        let off = r.addr.wrapping_sub(open.base);
        let pos = open
            .blob
            .as_ref()
            .and_then(|b| usize::try_from(off).ok().and_then(|o| b.position(o)));
        let tp = &mut open.table.positions;
        let Some(pos) = pos else {
            self.unresolved
                .push(format!("{what} {}+{:#x}", tp.table, off as i64));
            tp.complete = false;
            return None;
        };
        let call = match pos.matched {
            Some(name) if !target => XtCall::Match {
                index: pos.index,
                name,
                matched: r.result != 0,
            },
            _ => XtCall::Target { name: pos.target },
        };
        tp.calls.push(RuleCall {
            chain: pos.chain,
            rule: pos.rule,
            call,
        });
        None
    }

    /// The packet (skb, gen) had a probe event: its open traversal, if any, is finished.
    pub fn packet_event(&mut self, skb: u64, gen: u64) -> Option<PacketTable> {
        self.close((skb, gen))
    }

    /// The packet (skb, gen) had a probe event at (hook, priority): its open traversal is
    /// finished, except by the table's own entry record. The table probe writes BASE just
    /// before its record at the table's priority P (nat's entry record comes from
    /// nf_nat_inet_fn, before BASE), so a record at P right after BASE opens the traversal
    /// rather than ending it; the record at P + 1, or any other, ends it.
    pub fn probe_event(
        &mut self,
        skb: u64,
        gen: u64,
        hook: Hook,
        priority: i32,
    ) -> Option<PacketTable> {
        let tp = &self.open.get(&(skb, gen))?.table.positions;
        if tp.hook == hook && tp.calls.is_empty() && tp.table.priority(hook) == Some(priority) {
            return None;
        }
        self.close((skb, gen))
    }

    /// End of capture: every open traversal.
    pub fn finish(&mut self) -> Vec<PacketTable> {
        let lost = self.lost_records;
        let mut v: Vec<PacketTable> = self
            .open
            .drain()
            .map(|(_, o)| {
                let mut t = o.table;
                t.positions.complete &= !lost;
                t
            })
            .collect();
        v.sort_by_key(|t| (t.skb, t.gen));
        v
    }

    fn close(&mut self, key: (u64, u64)) -> Option<PacketTable> {
        let mut t = self.open.remove(&key)?.table;
        t.positions.complete &= !self.lost_records;
        Some(t)
    }

    fn start(&mut self, r: &XtRecord) {
        let end = r.name.iter().position(|&b| b == 0).unwrap_or(r.name.len());
        let name = String::from_utf8_lossy(&r.name[..end]).into_owned();
        let (Some(table), Some(hook)) = (Table::from_name(&name), Hook::from_num(r.hook)) else {
            self.unresolved
                .push(format!("table {name:?} on hook {}", r.hook));
            return;
        };
        let blob = if r.pf == 2 {
            self.blob(r.netns, &name, r.addr)
        } else {
            self.unresolved.push(format!(
                "{name} (pf {}): only IPv4 rule blobs are parsed",
                r.pf
            ));
            None
        };
        let complete = blob
            .as_ref()
            .is_some_and(|b| b.extensions().iter().all(|e| probed(e, &self.probed)));
        self.open.insert(
            (r.skb, r.gen),
            Open {
                table: PacketTable {
                    netns: r.netns,
                    skb: r.skb,
                    gen: r.gen,
                    positions: TablePositions {
                        hook,
                        table,
                        calls: Vec::new(),
                        complete,
                    },
                },
                base: r.addr,
                blob,
            },
        );
    }

    /// The blob of (netns, table) at kernel address `addr`, read again when the address moved.
    fn blob(&mut self, netns: u32, table: &str, addr: u64) -> Option<std::rc::Rc<Blob>> {
        let key = (netns, table.to_string());
        if let Some((a, b)) = self.blobs.get(&key) {
            if *a == addr {
                return b.clone();
            }
        }
        let b = (self.blob_of)(netns, table).map(std::rc::Rc::new);
        self.blobs.insert(key, (addr, b.clone()));
        b
    }
}

/// struct ipt_getinfo.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Info {
    name: [u8; XT_TABLE_MAXNAMELEN],
    valid_hooks: u32,
    hook_entry: [u32; 5],
    underflow: [u32; 5],
    num_entries: u32,
    size: u32,
}

fn get_entries(table: &str) -> Result<(Info, Vec<u8>), XtPosError> {
    let err = |what, source| XtPosError::Sockopt {
        what,
        table: table.to_string(),
        source,
    };
    // SAFETY: plain socket call; the fd is closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
    if fd < 0 {
        return Err(err("socket", std::io::Error::last_os_error()));
    }
    // SAFETY: fd is ours.
    let _guard = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let mut info = Info {
        name: [0; XT_TABLE_MAXNAMELEN],
        valid_hooks: 0,
        hook_entry: [0; 5],
        underflow: [0; 5],
        num_entries: 0,
        size: 0,
    };
    let n = table.len().min(XT_TABLE_MAXNAMELEN - 1);
    info.name[..n].copy_from_slice(&table.as_bytes()[..n]);
    let mut len = std::mem::size_of::<Info>() as libc::socklen_t;
    // SAFETY: info is a valid ipt_getinfo buffer of `len` bytes.
    if unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_IP,
            IPT_SO_GET_INFO,
            &mut info as *mut Info as *mut libc::c_void,
            &mut len,
        )
    } < 0
    {
        return Err(err("IPT_SO_GET_INFO", std::io::Error::last_os_error()));
    }
    // struct ipt_get_entries { char name[32]; unsigned int size; struct ipt_entry entrytable[]; }
    // (entrytable 8-aligned: at 40).
    let head = 40;
    let mut buf = vec![0u8; head + info.size as usize];
    buf[..n].copy_from_slice(&table.as_bytes()[..n]);
    buf[32..36].copy_from_slice(&info.size.to_le_bytes());
    let mut len = buf.len() as libc::socklen_t;
    // SAFETY: buf holds the request header and room for `size` bytes of entries.
    if unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_IP,
            IPT_SO_GET_ENTRIES,
            buf.as_mut_ptr() as *mut libc::c_void,
            &mut len,
        )
    } < 0
    {
        return Err(err("IPT_SO_GET_ENTRIES", std::io::Error::last_os_error()));
    }
    Ok((info, buf[head..].to_vec()))
}

fn name_at(bytes: &[u8], off: usize) -> String {
    let s = bytes.get(off..(off + 29).min(bytes.len())).unwrap_or(&[]);
    let end = s.iter().position(|&b| b == 0).unwrap_or(s.len());
    String::from_utf8_lossy(&s[..end]).into_owned()
}

/// A match or target function and the module it is in (None: built in).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct XtFunction {
    pub name: String,
    pub module: Option<String>,
}

/// x_tables match and target functions in /proc/kallsyms text (`addr t name [module]`):
/// modules xt_*, ipt_*, ip6t_* (or built in), names ending in _mt / _mtN / _mt_vN (matches)
/// and _tg / _tgN / _tg_vN / _target_vN (targets); helpers (_check, _destroy, .cold) excluded.
/// `in_use`: only modules it accepts (see [`modules_in_use`]); built-in functions are kept.
pub fn xt_functions(
    kallsyms: &str,
    in_use: impl Fn(&str) -> bool,
) -> (Vec<XtFunction>, Vec<XtFunction>) {
    let (mut matches, mut targets) = (Vec::new(), Vec::new());
    for l in kallsyms.lines() {
        let mut it = l.split_whitespace();
        let (Some(_), Some(ty), Some(name)) = (it.next(), it.next(), it.next()) else {
            continue;
        };
        // `__pfx_*`: the padding before a function (CONFIG_FUNCTION_PADDING), never called.
        if !matches!(ty, "t" | "T") || name.contains('.') || name.starts_with("__pfx_") {
            continue;
        }
        let module = it.next().map(|m| m.trim_matches(|c| c == '[' || c == ']'));
        if !module.is_none_or(|m| {
            (m.starts_with("xt_") || m.starts_with("ipt_") || m.starts_with("ip6t_")) && in_use(m)
        }) {
            continue;
        }
        let f = XtFunction {
            name: name.to_string(),
            module: module.map(String::from),
        };
        let base = strip_version(name);
        if base.ends_with("_mt") || base.ends_with("_mt4") || base.ends_with("_mt6") {
            matches.push(f);
        } else if base.ends_with("_tg")
            || base.ends_with("_tg4")
            || base.ends_with("_tg6")
            || (base.starts_with("xt_") && base.ends_with("_target"))
        {
            targets.push(f);
        }
    }
    matches.sort();
    matches.dedup();
    targets.sort();
    targets.dedup();
    (matches, targets)
}

/// Modules with a non-zero reference count in /proc/modules (`name size refcount deps state
/// addr`): every rule using a match or target holds a reference to its module, so these are
/// the extensions the loaded rulesets use (rules added later are not covered).
pub fn modules_in_use(proc_modules: &str) -> std::collections::HashSet<String> {
    proc_modules
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let (name, _, refs) = (it.next()?, it.next()?, it.next()?);
            (refs.parse::<u64>().ok()? > 0).then(|| name.to_string())
        })
        .collect()
}

/// `conntrack_mt_v3` → `conntrack_mt`.
fn strip_version(name: &str) -> &str {
    match name.rsplit_once("_v") {
        Some((base, v)) if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) => base,
        _ => name,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ring-buffer record of the wrong size or version is an error, never misread.
    #[test]
    fn parse_record_checks_length_and_version() {
        let mut b = vec![0u8; std::mem::size_of::<XtRecord>()];
        b[0] = trace_common::record::kind::XT;
        b[1] = trace_common::record::RECORD_VERSION;
        b[24] = 0x42; // gen (after header 8, ts 8, skb 8)
        assert_eq!(parse_record(&b).unwrap().gen, 0x42);
        assert!(parse_record(&b[..63]).is_err());
        b[1] = trace_common::record::RECORD_VERSION.wrapping_add(1);
        assert!(matches!(parse_record(&b), Err(XtPosError::Record { .. })));
    }

    #[test]
    fn finds_match_and_target_functions() {
        let text = "ffff t tcp_mt\t[xt_tcpudp]\nffff t conntrack_mt_v3\t[xt_conntrack]\nffff t conntrack_mt_check\t[xt_conntrack]\n\
                    ffff t xt_dnat_target_v2\t[xt_nat]\nffff t masquerade_tg\t[xt_MASQUERADE]\nffff t addrtype_mt_checkentry_v1.cold\t[xt_addrtype]\n\
                    ffff t tcp_v4_rcv\nffff t foo_mt\t[nf_tables]\nffff t __pfx_tcp_mt\t[xt_tcpudp]\n";
        let names = |v: Vec<XtFunction>| v.into_iter().map(|f| f.name).collect::<Vec<_>>();
        let (m, t) = xt_functions(text, |_| true);
        assert_eq!(m[1].module.as_deref(), Some("xt_tcpudp"));
        assert_eq!(names(m), ["conntrack_mt_v3", "tcp_mt"]);
        assert_eq!(names(t), ["masquerade_tg", "xt_dnat_target_v2"]);
        // Only modules the rulesets hold references to.
        let used = modules_in_use(
            "xt_tcpudp 16384 2 - Live 0x0\nxt_conntrack 16384 0 - Live 0x0\nxt_nat 16384 1 - Live 0x0\n",
        );
        let (m, t) = xt_functions(text, |m| used.contains(m));
        assert_eq!(names(m), ["tcp_mt"]);
        assert_eq!(names(t), ["xt_dnat_target_v2"]);
    }

    /// A blob by hand: PREROUTING with one rule (one match, a target) and its policy, then a
    /// user chain DOCKER with one rule, then the final ERROR entry.
    #[test]
    fn maps_offsets_to_chain_rule_and_match() {
        fn entry(
            buf: &mut Vec<u8>,
            matches: &[(&str, usize)],
            target: &str,
            tdata: usize,
        ) -> usize {
            let start = buf.len();
            let msize: usize = matches.iter().map(|(_, d)| XT_HEADER + d).sum();
            let target_offset = IPT_ENTRY_SIZE + msize;
            let next = target_offset + XT_HEADER + tdata;
            buf.resize(start + next, 0);
            buf[start + TARGET_OFFSET_AT..start + TARGET_OFFSET_AT + 2]
                .copy_from_slice(&(target_offset as u16).to_le_bytes());
            buf[start + NEXT_OFFSET_AT..start + NEXT_OFFSET_AT + 2]
                .copy_from_slice(&(next as u16).to_le_bytes());
            let mut m = start + IPT_ENTRY_SIZE;
            for (name, d) in matches {
                buf[m..m + 2].copy_from_slice(&((XT_HEADER + d) as u16).to_le_bytes());
                buf[m + 2..m + 2 + name.len()].copy_from_slice(name.as_bytes());
                m += XT_HEADER + d;
            }
            let t = start + target_offset;
            buf[t..t + 2].copy_from_slice(&((XT_HEADER + tdata) as u16).to_le_bytes());
            buf[t + 2..t + 2 + target.len()].copy_from_slice(target.as_bytes());
            start
        }
        let mut b = Vec::new();
        let r1 = entry(&mut b, &[("tcp", 16)], "DNAT", 16);
        let pol = entry(&mut b, &[], "", 8);
        let head = entry(&mut b, &[], "ERROR", 32);
        b[head + IPT_ENTRY_SIZE + XT_HEADER..head + IPT_ENTRY_SIZE + XT_HEADER + 6]
            .copy_from_slice(b"DOCKER");
        let d1 = entry(&mut b, &[("addrtype", 8), ("comment", 8)], "", 8);
        entry(&mut b, &[], "ERROR", 32);
        let mut info = Info {
            name: [0; 32],
            valid_hooks: 1,
            hook_entry: [0; 5],
            underflow: [0; 5],
            num_entries: 5,
            size: b.len() as u32,
        };
        info.hook_entry[0] = r1 as u32;
        info.underflow[0] = pol as u32;
        let blob = Blob::parse("nat", &info, &b).unwrap();
        let p = blob.position(r1 + IPT_ENTRY_SIZE + XT_HEADER).unwrap();
        assert_eq!(
            (p.chain.as_str(), p.rule, p.matched.as_deref()),
            ("PREROUTING", Some(1), Some("tcp"))
        );
        let p = blob
            .position(r1 + IPT_ENTRY_SIZE + XT_HEADER + 16 + XT_HEADER)
            .unwrap();
        assert_eq!((p.rule, p.matched), (Some(1), None));
        assert_eq!(
            blob.position(pol + IPT_ENTRY_SIZE + XT_HEADER)
                .unwrap()
                .rule,
            None
        );
        let p = blob
            .position(d1 + IPT_ENTRY_SIZE + 2 * XT_HEADER + 8)
            .unwrap();
        assert_eq!(
            (p.chain.as_str(), p.rule, p.matched.as_deref()),
            ("DOCKER", Some(1), Some("comment"))
        );
        // Inside a header, not at a data pointer: nothing.
        assert!(blob.position(r1 + 4).is_none());
        // A target without data (TRACE) points at the end of its entry = the next one's start.
        let mut b2 = Vec::new();
        let t1 = entry(&mut b2, &[("tcp", 16)], "TRACE", 0);
        let pol2 = entry(&mut b2, &[], "", 8);
        entry(&mut b2, &[], "ERROR", 32);
        let mut info2 = info;
        info2.hook_entry[0] = t1 as u32;
        info2.underflow[0] = pol2 as u32;
        let blob2 = Blob::parse("raw", &info2, &b2).unwrap();
        let p = blob2.position(pol2).unwrap();
        assert_eq!(
            (p.chain.as_str(), p.rule, p.matched),
            ("PREROUTING", Some(1), None)
        );
        assert_eq!(p.target, "TRACE");

        // Records of one packet through the nat blob: PREROUTING rule 1 (tcp matched, DNAT
        // ran), then a second traversal where DOCKER rule 1's comment match failed.
        let rec = |what, addr: usize, result, skb| XtRecord {
            header: trace_common::record::RecordHeader {
                kind: trace_common::record::kind::XT,
                version: trace_common::record::RECORD_VERSION,
                _pad0: 0,
                len: 64,
            },
            ts_ns: 0,
            skb,
            gen: 5,
            addr: addr as u64,
            netns: 3,
            what,
            result,
            hook: 0,
            pf: 2,
            name: *b"nat\0\0\0\0\0\0\0\0\0\0\0\0\0",
        };
        let base = 0x10_0000;
        let records = [
            rec(xt_what::BASE, base, 0, 1),
            rec(xt_what::MATCH, base + r1 + IPT_ENTRY_SIZE + XT_HEADER, 1, 1),
            rec(
                xt_what::TARGET,
                base + r1 + IPT_ENTRY_SIZE + 2 * XT_HEADER + 16,
                0,
                1,
            ),
            rec(xt_what::BASE, base, 0, 2),
            rec(xt_what::MATCH, base + d1 + IPT_ENTRY_SIZE + XT_HEADER, 1, 2),
            rec(
                xt_what::MATCH,
                base + d1 + IPT_ENTRY_SIZE + 2 * XT_HEADER + 8,
                0,
                2,
            ),
            rec(xt_what::MATCH, base + 3, 0, 2),
        ];
        assert_eq!(
            blob.extensions().into_iter().collect::<Vec<_>>(),
            ["DNAT", "addrtype", "comment", "tcp"]
        );
        let probed_fns: Vec<String> = [
            "tcp_mt",
            "addrtype_mt_v1",
            "comment_mt",
            "xt_dnat_target_v2",
        ]
        .map(String::from)
        .to_vec();
        let blobs = HashMap::from([("nat".to_string(), blob.clone())]);
        let (tables, unresolved) = positions(&records, &blobs, &probed_fns, false);
        assert_eq!(unresolved, ["match nat+0x3"]);
        assert_eq!(tables.len(), 2);
        let t = &tables[0];
        assert_eq!((t.netns, t.skb, t.gen), (3, 1, 5));
        assert_eq!(
            (t.positions.hook, t.positions.table),
            (Hook::Prerouting, Table::Nat)
        );
        assert!(t.positions.complete);
        assert_eq!(
            t.positions.calls,
            [
                RuleCall {
                    chain: "PREROUTING".into(),
                    rule: Some(1),
                    call: XtCall::Match {
                        index: 0,
                        name: "tcp".into(),
                        matched: true
                    }
                },
                RuleCall {
                    chain: "PREROUTING".into(),
                    rule: Some(1),
                    call: XtCall::Target {
                        name: "DNAT".into()
                    }
                },
            ]
        );
        // The unplaced record makes the second traversal incomplete.
        assert!(!tables[1].positions.complete);
        assert_eq!(
            tables[1].positions.calls[1].call,
            XtCall::Match {
                index: 1,
                name: "comment".into(),
                matched: false
            }
        );
        // A table using an extension without a probed function (DNAT here) is incomplete,
        // and so is every table once records were lost.
        let (t, _) = positions(&records[..3], &blobs, &probed_fns[..3], false);
        assert!(!t[0].positions.complete);
        let (t, _) = positions(&records[..3], &blobs, &probed_fns, true);
        assert!(!t[0].positions.complete);

        // Live: a traversal is handed out at its packet's next probe event (or next table), and
        // a blob is read once per address (again when the ruleset was replaced).
        let reads = std::cell::Cell::new(0);
        let mut tr = XtTracker::new(probed_fns.clone(), |netns, table: &str| {
            reads.set(reads.get() + 1);
            assert_eq!((netns, table), (3, "nat"));
            Some(blob.clone())
        });
        for r in &records[..3] {
            assert!(tr.push(r).is_none());
        }
        // nat PREROUTING's entry record (-100) came before BASE (nf_nat_inet_fn): a record
        // at -100 now is not the table's own entry; the exit record (-99) ends it.
        let done = tr.probe_event(1, 5, Hook::Prerouting, -99).unwrap();
        assert_eq!(done.positions.calls.len(), 2);
        assert!(done.positions.complete);
        assert!(tr.packet_event(1, 5).is_none(), "handed out once");
        // filter FORWARD: BASE, then the table's entry record at 0 keeps it open; the calls
        // that follow belong to it, and the record at 1 hands it out.
        let mut fwd = records[0];
        fwd.hook = 2;
        fwd.name = *b"filter\0\0\0\0\0\0\0\0\0\0";
        fwd.skb = 9;
        let mut call = records[1];
        call.skb = 9;
        let mut tr2 = XtTracker::new(probed_fns.clone(), |_, _: &str| Some(blob.clone()));
        assert!(tr2.push(&fwd).is_none());
        assert!(
            tr2.probe_event(9, 5, Hook::Forward, 0).is_none(),
            "its own entry record"
        );
        assert!(tr2.push(&call).is_none());
        let done = tr2.probe_event(9, 5, Hook::Forward, 1).unwrap();
        assert_eq!(done.positions.calls.len(), 1);
        assert!(tr2.unresolved.is_empty(), "{:?}", tr2.unresolved);
        // The next traversal of packet 1 at the same address: no new read; its next table
        // (BASE) hands it out.
        assert!(tr.push(&records[0]).is_none());
        let mut moved = records[0];
        moved.addr += 0x1000;
        let prev = tr.push(&moved).unwrap();
        assert!(prev.positions.calls.is_empty());
        assert_eq!(reads.get(), 2, "read again only for the moved blob");
        // IPv6 tables are not parsed: said, and incomplete.
        let mut v6 = records[3];
        v6.pf = 10;
        tr.push(&v6);
        assert!(tr.unresolved.iter().any(|u| u.contains("only IPv4")));
        let rest = tr.finish();
        assert_eq!(rest.len(), 2);
        assert!(rest.iter().all(|t| t.skb != 2 || !t.positions.complete));
    }
}

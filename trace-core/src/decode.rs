//! Ring-buffer records (`trace_common::record`) → owned [`Event`]s. Pure: the collector hands
//! in the bytes of one ring-buffer sample plus the kernel's drop-reason names and symbols.
//!
//! Every record is checked before it is read: length, kind and layout version; a short or
//! unknown record is a [`DecodeError`] naming the field, never a panic or a guess.

use crate::event::{BridgeInfo, CtSnapshot, DropEvent, DropState, Event, Headers, ProbeEvent, L4};
use crate::netfilter::{Family, Hook};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use trace_common::record::{
    drop_flags, kind, l4_flags, probe_flags, DropRecord, HeaderSnapshot, ProbeRecord, RecordHeader,
    PREV_NONE, RECORD_VERSION,
};

/// Length of a probe record that carries no header snapshot (headers unchanged).
pub const PROBE_SHORT_LEN: usize = std::mem::offset_of!(ProbeRecord, headers);
/// Length of a probe record without devices, MAC and header snapshot.
pub const PROBE_TINY_LEN: usize = std::mem::offset_of!(ProbeRecord, in_dev);
/// Length of a probe record with a header snapshot and no bridge ports.
pub const PROBE_HEADERS_LEN: usize = std::mem::offset_of!(ProbeRecord, physin_ifindex);
/// The whole record (bridge ports included).
pub const PROBE_FULL_LEN: usize = std::mem::size_of::<ProbeRecord>();
pub const DROP_LEN: usize = std::mem::size_of::<DropRecord>();

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("record of {len} bytes is shorter than its {need}-byte {what}")]
    Short {
        what: &'static str,
        len: usize,
        need: usize,
    },
    #[error("record kind {kind} is unknown")]
    UnknownKind { kind: u8 },
    #[error("record layout version {version} (this collector reads {RECORD_VERSION})")]
    Version { version: u8 },
    #[error("record header says {declared} bytes but {actual} arrived")]
    Length { declared: u32, actual: usize },
    #[error("probe record field {field} has invalid value {value}")]
    Field { field: &'static str, value: u64 },
}

/// Kernel symbols for drop locations (sorted start addresses, e.g. from /proc/kallsyms).
#[derive(Debug, Clone, Default)]
pub struct Symbols {
    sorted: Vec<(u64, String)>,
}

impl Symbols {
    pub fn new(mut syms: Vec<(u64, String)>) -> Symbols {
        syms.retain(|(a, _)| *a != 0);
        syms.sort();
        Symbols { sorted: syms }
    }

    /// Parse /proc/kallsyms text (`addr type name [module]`; text symbols only).
    pub fn from_kallsyms(text: &str) -> Symbols {
        let syms = text
            .lines()
            .filter_map(|l| {
                let mut it = l.split_whitespace();
                let addr = u64::from_str_radix(it.next()?, 16).ok()?;
                let ty = it.next()?;
                let name = it.next()?;
                matches!(ty, "t" | "T").then(|| (addr, name.to_string()))
            })
            .collect();
        Symbols::new(syms)
    }

    /// `name+0xoff` of the symbol containing `addr`.
    pub fn resolve(&self, addr: u64) -> Option<String> {
        let i = self.sorted.partition_point(|(a, _)| *a <= addr);
        let (start, name) = self.sorted.get(i.checked_sub(1)?)?;
        Some(if addr == *start {
            name.clone()
        } else {
            format!("{name}+{:#x}", addr - start)
        })
    }
}

/// Decodes records; holds what the kernel side cannot know (names).
#[derive(Debug, Clone, Default)]
pub struct Decoder {
    /// enum skb_drop_reason value → name (without the SKB_DROP_REASON_ prefix).
    pub drop_reasons: HashMap<u32, String>,
    pub symbols: Symbols,
}

impl Decoder {
    pub fn new(drop_reasons: HashMap<u32, String>, symbols: Symbols) -> Decoder {
        Decoder {
            drop_reasons,
            symbols,
        }
    }

    /// One ring-buffer sample → one event.
    pub fn decode(&self, bytes: &[u8]) -> Result<Event, DecodeError> {
        let hdr: RecordHeader = read_pod(bytes, "record header")?;
        if hdr.version != RECORD_VERSION {
            return Err(DecodeError::Version {
                version: hdr.version,
            });
        }
        if hdr.len as usize != bytes.len() {
            return Err(DecodeError::Length {
                declared: hdr.len,
                actual: bytes.len(),
            });
        }
        match hdr.kind {
            kind::PROBE => self.probe(bytes).map(Event::Probe),
            kind::DROP => Ok(Event::Drop(self.drop(bytes)?)),
            k => Err(DecodeError::UnknownKind { kind: k }),
        }
    }

    fn probe(&self, bytes: &[u8]) -> Result<ProbeEvent, DecodeError> {
        // A short record is the full layout cut before `headers` (tiny: before `in_dev`):
        // pad it to read the prefix.
        let mut buf = [0u8; PROBE_FULL_LEN];
        if bytes.len() < PROBE_TINY_LEN {
            return Err(DecodeError::Short {
                what: "probe record",
                len: bytes.len(),
                need: PROBE_TINY_LEN,
            });
        }
        let n = bytes.len().min(PROBE_FULL_LEN);
        buf[..n].copy_from_slice(&bytes[..n]);
        let r: ProbeRecord = read_pod(&buf, "probe record")?;
        let family = Family::from_nfproto(r.pf).ok_or(DecodeError::Field {
            field: "pf",
            value: r.pf as u64,
        })?;
        let hook = Hook::from_num(r.hook).ok_or(DecodeError::Field {
            field: "hook",
            value: r.hook as u64,
        })?;
        if r.flags & (probe_flags::DEVS | probe_flags::MAC) != 0 && bytes.len() < PROBE_SHORT_LEN {
            return Err(DecodeError::Short {
                what: "probe record with devices",
                len: bytes.len(),
                need: PROBE_SHORT_LEN,
            });
        }
        if r.flags & probe_flags::BRIDGED != 0 && bytes.len() < PROBE_FULL_LEN {
            return Err(DecodeError::Short {
                what: "probe record with bridge ports",
                len: bytes.len(),
                need: PROBE_FULL_LEN,
            });
        }
        let headers = if r.flags & probe_flags::HEADERS != 0 {
            if bytes.len() < PROBE_HEADERS_LEN {
                return Err(DecodeError::Short {
                    what: "probe record with headers",
                    len: bytes.len(),
                    need: PROBE_HEADERS_LEN,
                });
            }
            Some(headers(family, &r.headers))
        } else {
            None
        };
        let ct = (r.flags & probe_flags::CT != 0).then_some(CtSnapshot {
            ctinfo: r.ctinfo,
            status: r.ct_status,
            mark: r.ct_mark,
            id: r.ct_id,
        });
        let mac_len = (r.mac_len as usize).min(r.mac.len());
        let prev = prev_probe(r.prev_hook, r.prev_priority)?;
        // Devices are sent on a packet's first record of each hook only.
        let devs = r.flags & probe_flags::DEVS != 0;
        Ok(ProbeEvent {
            ts_ns: r.ts_ns,
            skb: r.skb,
            gen: r.gen,
            netns: r.netns,
            family,
            hook,
            priority: r.priority,
            in_ifindex: if devs { r.in_ifindex } else { 0 },
            out_ifindex: if devs { r.out_ifindex } else { 0 },
            in_dev: devs.then(|| dev_name(&r.in_dev)).flatten(),
            out_dev: devs.then(|| dev_name(&r.out_dev)).flatten(),
            mark: r.mark,
            ct,
            headers,
            mac: (r.flags & probe_flags::MAC != 0).then(|| r.mac[..mac_len].to_vec()),
            uid: (r.flags & probe_flags::UID != 0).then_some(r.uid),
            gid: (r.flags & probe_flags::GID != 0).then_some(r.gid),
            owner_read: r.flags & probe_flags::OWNER != 0,
            prev,
            sparse: r.flags & probe_flags::SPARSE != 0,
            bridge: (devs && r.flags & probe_flags::BRIDGE_READ != 0).then(|| Box::new(bridge(&r))),
        })
    }

    fn drop(&self, bytes: &[u8]) -> Result<DropEvent, DecodeError> {
        let r: DropRecord = read_pod(bytes, "drop record")?;
        Ok(DropEvent {
            ts_ns: r.ts_ns,
            skb: r.skb,
            gen: r.gen,
            netns: r.netns,
            reason: r.reason,
            reason_name: self.drop_reasons.get(&r.reason).cloned(),
            location: r.location,
            location_sym: self.symbols.resolve(r.location),
            prev: prev_probe(r.prev_hook, r.prev_priority)?,
            state: drop_state(&r)?,
        })
    }
}

/// The packet's state as the kfree_skb program read it (see [`DropRecord`]).
fn drop_state(r: &DropRecord) -> Result<Option<Box<DropState>>, DecodeError> {
    if r.flags & drop_flags::STATE == 0 {
        return Ok(None);
    }
    let headers = if r.flags & drop_flags::HEADERS != 0 {
        let family = Family::from_nfproto(r.pf).ok_or(DecodeError::Field {
            field: "drop pf",
            value: r.pf as u64,
        })?;
        Some(headers(family, &r.headers))
    } else {
        None
    };
    let ct = (r.flags & drop_flags::CT != 0).then_some(CtSnapshot {
        ctinfo: r.ctinfo,
        status: r.ct_status,
        mark: r.ct_mark,
        id: r.ct_id,
    });
    Ok(Some(Box::new(DropState {
        mark: r.mark,
        ct,
        headers,
    })))
}

/// A record's last-probe-passed fields.
fn prev_probe(hook: u8, priority: i32) -> Result<Option<(Hook, i32)>, DecodeError> {
    if hook == PREV_NONE {
        return Ok(None);
    }
    let hook = Hook::from_num(hook).ok_or(DecodeError::Field {
        field: "prev_hook",
        value: hook as u64,
    })?;
    Ok(Some((hook, priority)))
}

/// Copy a `#[repr(C)]` plain-data record out of `bytes` (unaligned).
fn read_pod<T: Copy>(bytes: &[u8], what: &'static str) -> Result<T, DecodeError> {
    let need = std::mem::size_of::<T>();
    if bytes.len() < need {
        return Err(DecodeError::Short {
            what,
            len: bytes.len(),
            need,
        });
    }
    // SAFETY: T is one of trace_common's #[repr(C)] records (every bit pattern valid) and
    // `bytes` holds at least size_of::<T>() bytes.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr() as *const T) })
}

/// The bridge ports of a record with [`probe_flags::BRIDGE_READ`].
fn bridge(r: &ProbeRecord) -> BridgeInfo {
    if r.flags & probe_flags::BRIDGED == 0 {
        return BridgeInfo::NONE;
    }
    BridgeInfo {
        bridged: true,
        physin_ifindex: r.physin_ifindex,
        physin: dev_name(&r.physin_dev),
        physout_ifindex: r.physout_ifindex,
        physout: dev_name(&r.physout_dev),
    }
}

fn dev_name(raw: &[u8; 16]) -> Option<String> {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    (end > 0).then(|| String::from_utf8_lossy(&raw[..end]).into_owned())
}

fn headers(family: Family, h: &HeaderSnapshot) -> Headers {
    let (src, dst) = match family {
        Family::Ipv4 => (
            IpAddr::V4(Ipv4Addr::new(
                h.saddr[0], h.saddr[1], h.saddr[2], h.saddr[3],
            )),
            IpAddr::V4(Ipv4Addr::new(
                h.daddr[0], h.daddr[1], h.daddr[2], h.daddr[3],
            )),
        ),
        Family::Ipv6 => (
            IpAddr::V6(Ipv6Addr::from(h.saddr)),
            IpAddr::V6(Ipv6Addr::from(h.daddr)),
        ),
    };
    let valid = h.l4_flags & l4_flags::VALID != 0;
    let l4 = match (valid, h.proto, family) {
        (false, _, _) => L4::Other,
        (true, 6, _) => L4::Tcp {
            sport: h.sport,
            dport: h.dport,
            seq: h.tcp_seq,
            ack: h.tcp_ack,
            window: h.tcp_window,
            flags: h.tcp_flags,
            res: h.tcp_res,
            urgp: h.tcp_urgp,
            options: h.tcp_options[..(h.tcp_opt_len as usize).min(h.tcp_options.len())].to_vec(),
        },
        (true, 17, _) => L4::Udp {
            sport: h.sport,
            dport: h.dport,
            len: h.udp_len,
        },
        (true, 132, _) => L4::Sctp {
            sport: h.sport,
            dport: h.dport,
        },
        (true, 1, Family::Ipv4) => L4::Icmp {
            icmp_type: h.icmp_type,
            code: h.icmp_code,
            id: icmp_word(h).0,
            seq: icmp_word(h).1,
            quoted: quoted(h),
        },
        (true, 58, Family::Ipv6) => L4::Icmpv6 {
            icmp_type: h.icmp_type,
            code: h.icmp_code,
            id: icmp_word(h).0,
            seq: icmp_word(h).1,
            quoted: quoted(h),
        },
        _ => L4::Other,
    };
    Headers {
        src,
        dst,
        proto: h.proto,
        len: h.len,
        tos: h.tos,
        ttl: h.ttl,
        id: h.id,
        frag: h.frag,
        flowlabel: h.flowlabel,
        l4,
    }
}

/// The quoted packet of an ICMP error (see [`l4_flags::QUOTED`]): `tcp_options`, then the
/// bytes of `tcp_seq..=tcp_res` as they lie in memory (the probe copied raw bytes there).
fn quoted(h: &HeaderSnapshot) -> Vec<u8> {
    if h.l4_flags & l4_flags::QUOTED == 0 {
        return Vec::new();
    }
    let mut v = Vec::with_capacity(l4_flags::QUOTED_PACKED_MAX + 2);
    v.extend_from_slice(&h.tcp_options);
    v.extend_from_slice(&h.tcp_seq.to_ne_bytes());
    v.extend_from_slice(&h.tcp_ack.to_ne_bytes());
    v.extend_from_slice(&h.tcp_window.to_ne_bytes());
    v.extend_from_slice(&h.tcp_urgp.to_ne_bytes());
    v.extend_from_slice(&[h.tcp_flags, h.tcp_res]);
    let max = if h.l4_flags & l4_flags::QUOTED_PACKED != 0 {
        // Packed: 4 more bytes in sport/dport, the two checksums (not stored) back as zero.
        v.extend_from_slice(&h.sport.to_ne_bytes());
        v.extend_from_slice(&h.dport.to_ne_bytes());
        v.splice(34..34, [0, 0]);
        v.splice(10..10, [0, 0]);
        l4_flags::QUOTED_PACKED_MAX
    } else {
        l4_flags::QUOTED_MAX
    };
    v.truncate((h.tcp_opt_len as usize).min(max));
    v
}

/// The ICMP header's second word as (id, seq): for a packed quoted packet those fields
/// hold quoted bytes, and the word itself is unused (zero) for the types packed.
fn icmp_word(h: &HeaderSnapshot) -> (u16, u16) {
    if h.l4_flags & l4_flags::QUOTED_PACKED != 0 {
        (0, 0)
    } else {
        (h.sport, h.dport)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use trace_common::record::{DropRecord, ProbeRecord};

    fn bytes_of<T>(v: &T, len: usize) -> Vec<u8> {
        // SAFETY: test records are plain data.
        unsafe { std::slice::from_raw_parts(v as *const T as *const u8, len) }.to_vec()
    }

    fn syn_record() -> ProbeRecord {
        let mut r = ProbeRecord::ZERO;
        r.ts_ns = 100;
        r.skb = 0xffff_8881_224d_84e0;
        r.gen = 90;
        r.netns = 4026532177;
        r.priority = -99;
        r.pf = 2;
        r.hook = 0;
        r.in_ifindex = 2;
        r.in_dev[..4].copy_from_slice(b"eth0");
        r.mark = 7;
        r.flags = probe_flags::HEADERS | probe_flags::CT | probe_flags::MAC | probe_flags::DEVS;
        r.ctinfo = 2;
        r.ct_status = 0x120;
        r.ct_id = 0xffff_8881_3949_6e00;
        r.mac_len = 14;
        r.mac[..14].copy_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 8, 0]);
        let h = &mut r.headers;
        h.saddr[..4].copy_from_slice(&[192, 168, 64, 5]);
        h.daddr[..4].copy_from_slice(&[172, 19, 0, 9]);
        h.proto = 6;
        h.len = 60;
        h.ttl = 64;
        h.id = 0x1234;
        h.frag = 0x4000;
        h.l4_flags = l4_flags::VALID;
        h.sport = 43148;
        h.dport = 80;
        h.tcp_seq = 1000;
        h.tcp_flags = 0x02;
        h.tcp_window = 64240;
        h.tcp_opt_len = 4;
        h.tcp_options[..4].copy_from_slice(&[2, 4, 5, 0xb4]);
        r
    }

    #[test]
    fn decodes_full_probe_record() {
        let r = syn_record();
        let ev = Decoder::default()
            .decode(&bytes_of(&r, PROBE_FULL_LEN))
            .unwrap();
        let Event::Probe(p) = ev else {
            panic!("not a probe")
        };
        assert_eq!(
            (p.family, p.hook, p.priority),
            (Family::Ipv4, Hook::Prerouting, -99)
        );
        assert_eq!(p.in_dev.as_deref(), Some("eth0"));
        assert_eq!(p.out_dev, None);
        assert_eq!(
            p.ct,
            Some(CtSnapshot {
                ctinfo: 2,
                status: 0x120,
                mark: 0,
                id: 0xffff_8881_3949_6e00
            })
        );
        assert_eq!(p.mac.as_ref().map(|m| m.len()), Some(14));
        assert_eq!(p.uid, None);
        let h = p.headers.unwrap();
        assert_eq!(h.dst, "172.19.0.9".parse::<IpAddr>().unwrap());
        assert_eq!(h.l4.ports(), Some((43148, 80)));
        match h.l4 {
            L4::Tcp {
                flags,
                ref options,
                window,
                ..
            } => {
                assert_eq!(flags, 0x02);
                assert_eq!(options, &vec![2, 4, 5, 0xb4]);
                assert_eq!(window, 64240);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn short_record_has_no_headers() {
        let mut r = syn_record();
        r.flags = probe_flags::CT;
        r.header.len = PROBE_SHORT_LEN as u32;
        let Event::Probe(p) = Decoder::default()
            .decode(&bytes_of(&r, PROBE_SHORT_LEN))
            .unwrap()
        else {
            panic!()
        };
        assert_eq!(p.headers, None);
        assert_eq!(p.mac, None);
        assert_eq!(
            (p.in_dev, p.in_ifindex),
            (None, 0),
            "no DEVS flag: devices not sent"
        );
    }

    #[test]
    fn tiny_record_has_no_devices_and_devices_on_a_tiny_record_are_an_error() {
        let mut r = syn_record();
        r.flags = probe_flags::CT;
        r.header.len = PROBE_TINY_LEN as u32;
        let Event::Probe(p) = Decoder::default()
            .decode(&bytes_of(&r, PROBE_TINY_LEN))
            .unwrap()
        else {
            panic!()
        };
        assert_eq!((p.in_dev, p.mac, p.headers), (None, None, None));
        assert_eq!(p.ct.map(|c| c.ctinfo), Some(2));
        r.flags = probe_flags::CT | probe_flags::DEVS;
        let err = Decoder::default()
            .decode(&bytes_of(&r, PROBE_TINY_LEN))
            .unwrap_err();
        assert!(
            matches!(
                err,
                DecodeError::Short {
                    need: PROBE_SHORT_LEN,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn bridge_ports_are_decoded_with_the_devices_only() {
        let mut r = syn_record();
        let decode = |r: &ProbeRecord, len| match Decoder::default().decode(&bytes_of(r, len)) {
            Ok(Event::Probe(p)) => p.bridge.map(|b| *b),
            other => panic!("{other:?}"),
        };
        // Not read (other backends): unknown, whatever the fields hold.
        r.physin_ifindex = 7;
        assert_eq!(decode(&r, PROBE_FULL_LEN), None);
        r.flags |= probe_flags::BRIDGE_READ;
        assert_eq!(decode(&r, PROBE_FULL_LEN), Some(BridgeInfo::NONE));
        r.flags |= probe_flags::BRIDGED;
        r.physout_ifindex = 9;
        r.physin_dev[..5].copy_from_slice(b"vetha");
        r.physout_dev[..5].copy_from_slice(b"vethb");
        let ports = BridgeInfo {
            bridged: true,
            physin_ifindex: 7,
            physin: Some("vetha".into()),
            physout_ifindex: 9,
            physout: Some("vethb".into()),
        };
        assert_eq!(decode(&r, PROBE_FULL_LEN), Some(ports.clone()));
        // The ports are the record's tail: sent whole, the snapshot ignored without HEADERS.
        r.flags &= !probe_flags::HEADERS;
        assert_eq!(decode(&r, PROBE_FULL_LEN), Some(ports));
        r.header.len = PROBE_HEADERS_LEN as u32;
        assert!(matches!(
            Decoder::default().decode(&bytes_of(&r, PROBE_HEADERS_LEN)),
            Err(DecodeError::Short {
                need: PROBE_FULL_LEN,
                ..
            })
        ));
        // An input port gone from the netns: an index without a name (no PHYSIN=).
        r.header.len = PROBE_FULL_LEN as u32;
        r.physin_dev = [0; 16];
        assert_eq!(decode(&r, PROBE_FULL_LEN).unwrap().physin, None);
        // Later records of the hook carry no devices: nothing said about the ports.
        r.flags &= !(probe_flags::DEVS | probe_flags::BRIDGED);
        r.header.len = PROBE_SHORT_LEN as u32;
        assert_eq!(decode(&r, PROBE_SHORT_LEN), None);
    }

    #[test]
    fn last_probe_passed_and_sparse_flag_are_decoded() {
        let mut r = syn_record();
        let Event::Probe(p) = Decoder::default()
            .decode(&bytes_of(&r, PROBE_FULL_LEN))
            .unwrap()
        else {
            panic!()
        };
        assert_eq!(
            (p.prev, p.sparse),
            (None, false),
            "PREV_NONE, no SPARSE flag"
        );
        r.flags |= probe_flags::SPARSE;
        r.prev_hook = 2;
        r.prev_priority = -149;
        let Event::Probe(p) = Decoder::default()
            .decode(&bytes_of(&r, PROBE_FULL_LEN))
            .unwrap()
        else {
            panic!()
        };
        assert_eq!((p.prev, p.sparse), (Some((Hook::Forward, -149)), true));
        r.prev_hook = 9;
        assert_eq!(
            Decoder::default().decode(&bytes_of(&r, PROBE_FULL_LEN)),
            Err(DecodeError::Field {
                field: "prev_hook",
                value: 9
            })
        );
        let mut d = DropRecord::ZERO;
        d.prev_hook = 4;
        d.prev_priority = 101;
        let Event::Drop(e) = Decoder::default().decode(&bytes_of(&d, DROP_LEN)).unwrap() else {
            panic!()
        };
        assert_eq!(e.prev, Some((Hook::Postrouting, 101)));
    }

    #[test]
    fn headers_flag_on_short_record_is_an_error() {
        let mut r = syn_record();
        r.header.len = PROBE_SHORT_LEN as u32;
        let err = Decoder::default()
            .decode(&bytes_of(&r, PROBE_SHORT_LEN))
            .unwrap_err();
        assert!(
            matches!(
                err,
                DecodeError::Short {
                    need: PROBE_HEADERS_LEN,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn rejects_truncated_unknown_and_mislabelled_records() {
        let r = syn_record();
        let full = bytes_of(&r, PROBE_FULL_LEN);
        assert!(matches!(
            Decoder::default().decode(&full[..4]),
            Err(DecodeError::Short { .. })
        ));
        assert!(matches!(
            Decoder::default().decode(&full[..100]),
            Err(DecodeError::Length {
                declared: 288,
                actual: 100
            })
        ));
        let mut bad = full.clone();
        bad[0] = 9;
        assert_eq!(
            Decoder::default().decode(&bad),
            Err(DecodeError::UnknownKind { kind: 9 })
        );
        let mut bad = full.clone();
        bad[1] = RECORD_VERSION + 1;
        assert!(matches!(
            Decoder::default().decode(&bad),
            Err(DecodeError::Version { .. })
        ));
        let mut r2 = syn_record();
        r2.hook = 7;
        assert_eq!(
            Decoder::default().decode(&bytes_of(&r2, PROBE_FULL_LEN)),
            Err(DecodeError::Field {
                field: "hook",
                value: 7
            })
        );
    }

    #[test]
    fn decodes_drop_with_names() {
        let mut d = DropRecord::ZERO;
        d.skb = 5;
        d.gen = 4;
        d.reason = 12;
        d.location = 0xffff_ffff_8100_0010;
        let dec = Decoder::new(
            HashMap::from([(12, "NETFILTER_DROP".to_string())]),
            Symbols::from_kallsyms("ffffffff81000000 T nf_hook_slow\nffffffff81000100 t other\n"),
        );
        let Event::Drop(e) = dec.decode(&bytes_of(&d, DROP_LEN)).unwrap() else {
            panic!()
        };
        assert_eq!(e.reason_name.as_deref(), Some("NETFILTER_DROP"));
        assert_eq!(e.location_sym.as_deref(), Some("nf_hook_slow+0x10"));
        assert_eq!((e.skb, e.gen), (5, 4));
    }

    #[test]
    fn drop_state_is_decoded_only_when_read() {
        let p = syn_record();
        let mut d = DropRecord::ZERO;
        let decode = |d: &DropRecord| {
            let Event::Drop(e) = Decoder::default().decode(&bytes_of(d, DROP_LEN)).unwrap() else {
                panic!()
            };
            e.state
        };
        // Not read (the flag is off): nothing, whatever the bytes say.
        d.mark = 3;
        assert_eq!(decode(&d), None);
        d.flags = drop_flags::STATE;
        let s = decode(&d).unwrap();
        assert_eq!((s.mark, s.ct, s.headers), (3, None, None));
        d.flags = drop_flags::STATE | drop_flags::CT | drop_flags::HEADERS;
        (d.ctinfo, d.ct_status, d.ct_mark, d.ct_id) = (p.ctinfo, p.ct_status, 9, p.ct_id);
        (d.pf, d.headers) = (p.pf, p.headers);
        let s = decode(&d).unwrap();
        let Event::Probe(seen) = Decoder::default()
            .decode(&bytes_of(&p, PROBE_FULL_LEN))
            .unwrap()
        else {
            panic!()
        };
        assert_eq!(s.headers, seen.headers);
        let ct = s.ct.unwrap();
        assert_eq!(
            (ct.ctinfo, ct.status, ct.mark, ct.id),
            (2, 0x120, 9, p.ct_id)
        );
        d.pf = 3;
        assert_eq!(
            Decoder::default().decode(&bytes_of(&d, DROP_LEN)),
            Err(DecodeError::Field {
                field: "drop pf",
                value: 3
            })
        );
    }

    /// Writes `bytes` into the snapshot's memory at `field_offset`, as the probe does.
    fn write_raw(h: &mut HeaderSnapshot, field_offset: usize, bytes: &[u8]) {
        assert!(field_offset + bytes.len() <= std::mem::size_of::<HeaderSnapshot>());
        // SAFETY: in bounds (asserted); HeaderSnapshot is plain integers and arrays.
        unsafe {
            let base = h as *mut HeaderSnapshot as *mut u8;
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), base.add(field_offset), bytes.len());
        }
    }

    #[test]
    fn quoted_packets_plain_and_packed() {
        use std::mem::offset_of;
        // A quoted IPv4 SYN with 20 option bytes (60 bytes), checksums 0xaaaa / 0xbbbb.
        let pkt: Vec<u8> = (0..60u8)
            .map(|i| match i {
                0 => 0x45,
                9 => 6,
                10 | 11 => 0xaa,
                36 | 37 => 0xbb,
                i => i,
            })
            .collect();
        let mut h = syn_record().headers;
        h.proto = 1;
        h.icmp_type = 3;
        h.icmp_code = 10;
        // Plain: the first 54 bytes.
        h.l4_flags = l4_flags::VALID | l4_flags::QUOTED;
        h.tcp_opt_len = 54;
        write_raw(&mut h, offset_of!(HeaderSnapshot, tcp_options), &pkt[..40]);
        write_raw(&mut h, offset_of!(HeaderSnapshot, tcp_seq), &pkt[40..54]);
        assert_eq!(quoted(&h), pkt[..54]);
        assert_eq!(icmp_word(&h), (h.sport, h.dport));
        // Packed: checksums dropped, 58 bytes stored, 60 given back (checksums zero).
        let packed: Vec<u8> = [&pkt[..10], &pkt[12..36], &pkt[38..]].concat();
        assert_eq!(packed.len(), 56);
        h.l4_flags |= l4_flags::QUOTED_PACKED;
        h.tcp_opt_len = 60;
        write_raw(
            &mut h,
            offset_of!(HeaderSnapshot, tcp_options),
            &packed[..40],
        );
        write_raw(&mut h, offset_of!(HeaderSnapshot, tcp_seq), &packed[40..54]);
        write_raw(&mut h, offset_of!(HeaderSnapshot, sport), &packed[54..56]);
        let mut want = pkt.clone();
        want[10..12].fill(0);
        want[36..38].fill(0);
        assert_eq!(quoted(&h), want);
        assert_eq!(icmp_word(&h), (0, 0));
        // Not quoted: nothing.
        h.l4_flags = l4_flags::VALID;
        assert!(quoted(&h).is_empty());
    }

    #[test]
    fn icmp_and_ipv6() {
        let mut r = syn_record();
        r.headers.proto = 1;
        r.headers.icmp_type = 8;
        r.headers.sport = 77;
        r.headers.dport = 3;
        let Event::Probe(p) = Decoder::default()
            .decode(&bytes_of(&r, PROBE_FULL_LEN))
            .unwrap()
        else {
            panic!()
        };
        assert_eq!(
            p.headers.unwrap().l4,
            L4::Icmp {
                icmp_type: 8,
                code: 0,
                id: 77,
                seq: 3,
                quoted: vec![],
            }
        );
        let mut r6 = syn_record();
        r6.pf = 10;
        r6.headers.saddr = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        let Event::Probe(p) = Decoder::default()
            .decode(&bytes_of(&r6, PROBE_FULL_LEN))
            .unwrap()
        else {
            panic!()
        };
        assert_eq!(
            p.headers.unwrap().src,
            "2001:db8::1".parse::<IpAddr>().unwrap()
        );
    }
}

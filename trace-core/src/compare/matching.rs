//! Pairing reference packets with captured packets. Header fields both sides show must be
//! equal (addresses and ports of some snapshot — reference lines and captures both see a
//! packet before and after NAT —, IP id, length, fragment offset and MF, TCP seq/ack/flags,
//! ICMP echo id/seq): fragments of one datagram with equal lengths and retransmissions tell
//! apart by these. A reference line without addresses (nft's trace of a later IPv6 fragment)
//! pairs on what it does show: the start of the source address, flow label, traffic class,
//! hop limit, length and input device. Only among candidates that no field tells apart, timestamps decide when
//! both sides have them, else order (both sides are in time order); each captured packet is
//! paired at most once per reference path.

use super::captured::{CapturedHeaders, CapturedPacket};
use super::reference::{RefHeaders, RefPacket, RefTime};
use std::collections::HashMap;

#[derive(Debug, Clone, Copy, Default)]
pub struct MatchOptions {
    /// Reject pairs whose monotonic timestamps (dmesg/kmsg seconds vs capture ns) differ by
    /// more than this many seconds. None: order only.
    pub time_window: Option<f64>,
}

fn eq<T: PartialEq>(a: Option<T>, b: Option<T>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => a == b,
        _ => true,
    }
}

/// True when every field shown on both sides is equal. Addresses are required on the
/// reference side, or else the IPv6 fields of [`unaddressed_agree`]: a line with neither
/// identifies nothing.
pub fn headers_agree(r: &RefHeaders, c: &CapturedHeaders) -> bool {
    if r.src.is_none() && r.dst.is_none() {
        return unaddressed_agree(r, c);
    }
    r.src.is_some()
        && r.dst.is_some()
        && eq(r.src, Some(c.src))
        && eq(r.dst, Some(c.dst))
        && eq(r.proto, c.proto)
        && eq(r.sport, c.sport)
        && eq(r.dport, c.dport)
        && eq(r.id, c.id)
        && eq(r.len, c.len)
        && eq(r.seq, c.seq)
        && eq(r.ack, c.ack)
        && eq(r.tcp_flags, c.tcp_flags)
        && eq(r.fragment(), c.frag.map(|f| f & 0x3fff))
        && eq(r.icmp_id, c.icmp_id)
        && eq(r.icmp_seq, c.icmp_seq)
}

/// A reference line without addresses that shows the start of an IPv6 source address, the
/// flow label, hop limit and length (an nft trace of a later IPv6 fragment, see
/// `reference::ip6dump`): the captured IPv6 packet whose source starts with those bytes and
/// whose fields are equal — traffic class and input device too when both sides show them.
/// Fragments of one datagram differ in length; datagrams of one flow share the flow label and
/// are told apart by time or order (see [`match_packets`]).
pub fn unaddressed_agree(r: &RefHeaders, c: &CapturedHeaders) -> bool {
    let (std::net::IpAddr::V6(src), Some(v6)) = (c.src, &c.ipv6) else {
        return false;
    };
    !r.src_prefix.is_empty()
        && src.octets().starts_with(&r.src_prefix)
        && r.flowlabel == Some(v6.flowlabel)
        && r.ttl == Some(v6.hop_limit)
        && r.len.is_some()
        && r.len == c.len
        && eq(r.tc, Some(v6.tc))
        && eq(r.in_dev.as_deref(), v6.in_dev.as_deref())
}

/// Some snapshot of the reference packet agrees with some snapshot of the captured one.
pub fn packets_agree(r: &RefPacket, c: &CapturedPacket) -> bool {
    r.headers
        .iter()
        .any(|rh| c.headers.iter().any(|ch| headers_agree(rh, ch)))
}

fn within_window(r: &RefPacket, c: &CapturedPacket, opts: &MatchOptions) -> bool {
    match (opts.time_window, &r.time, c.ts_ns) {
        (Some(w), Some(RefTime::Monotonic { secs }), Some(ns)) => {
            (secs - ns as f64 / 1e9).abs() <= w
        }
        _ => true,
    }
}

/// Captured packets by IPv4 id (NAT keeps it): a reference packet with an id only looks at
/// those, so pairing stays linear on large inputs. Packets without id (IPv6) are scanned.
struct ById {
    by_id: HashMap<u16, Vec<usize>>,
    /// Captured packets that show no id: candidates for every reference packet.
    no_id: Vec<usize>,
}

impl ById {
    fn new(caps: &[CapturedPacket]) -> Self {
        let mut by_id: HashMap<u16, Vec<usize>> = HashMap::new();
        let mut no_id = Vec::new();
        for (i, c) in caps.iter().enumerate() {
            let mut ids: Vec<u16> = c.headers.iter().filter_map(|h| h.id).collect();
            ids.sort_unstable();
            ids.dedup();
            if ids.is_empty() {
                no_id.push(i);
            }
            for id in ids {
                by_id.entry(id).or_default().push(i);
            }
        }
        ById { by_id, no_id }
    }

    /// Candidate indices in capture order; None = every captured packet.
    fn candidates(&self, r: &RefPacket) -> Option<Vec<usize>> {
        let id = r.headers.iter().find_map(|h| h.id)?;
        let mut c: Vec<usize> = self.by_id.get(&id).cloned().unwrap_or_default();
        c.extend(&self.no_id);
        c.sort_unstable();
        Some(c)
    }
}

/// How many fitting candidates (from the pairing position on) are weighed against each other.
const TIED: usize = 8;

/// The reference's monotonic timestamp in seconds (dmesg/kmsg), if it has one.
fn ref_secs(r: &RefPacket) -> Option<f64> {
    match r.time {
        Some(RefTime::Monotonic { secs }) => Some(secs),
        _ => None,
    }
}

/// For each reference packet, the index of its captured packet. `exclusive` reference
/// packets (paths) take a captured packet for themselves; LOG lines may share one (several
/// LOG rules can log the same packet).
///
/// Among captured packets no header field tells apart, the one nearest in time when both
/// sides have timestamps: the kernel log's clock (local_clock) and the capture's
/// (CLOCK_MONOTONIC) differ by an offset, learnt from the last pair only one captured packet
/// fitted. Otherwise the first at or after the previous pairing (both sides are in time
/// order), else the first anywhere (lines may interleave across CPUs).
pub fn match_packets(
    refs: &[RefPacket],
    caps: &[CapturedPacket],
    opts: &MatchOptions,
) -> Vec<Option<usize>> {
    let index = ById::new(caps);
    let all: Vec<usize> = (0..caps.len()).collect();
    let mut used = vec![false; caps.len()];
    let mut cursor = 0usize;
    let mut clock_offset: Option<f64> = None;
    refs.iter()
        .map(|r| {
            let exclusive = !r.steps().is_empty();
            let ok = |i: &usize| {
                (!exclusive || !used[*i])
                    && within_window(r, &caps[*i], opts)
                    && packets_agree(r, &caps[*i])
            };
            let own = index.candidates(r);
            let cands = own.as_deref().unwrap_or(&all);
            let fitting = |ahead: bool| -> Vec<usize> {
                cands
                    .iter()
                    .copied()
                    .filter(|&i| (i >= cursor) == ahead)
                    .filter(|i| ok(i))
                    .take(TIED)
                    .collect()
            };
            let mut tied = fitting(true);
            if tied.is_empty() {
                tied = fitting(false);
            }
            let cap_secs = |i: usize| caps[i].ts_ns.map(|ns| ns as f64 / 1e9);
            let found = match (tied.as_slice(), ref_secs(r), clock_offset) {
                ([], ..) => None,
                ([only], t, _) => {
                    if let (Some(t), Some(c)) = (t, cap_secs(*only)) {
                        clock_offset = Some(t - c);
                    }
                    Some(*only)
                }
                (several, Some(t), Some(off)) => several.iter().copied().min_by(|&a, &b| {
                    let dist = |i| cap_secs(i).map_or(f64::INFINITY, |c| (t - off - c).abs());
                    dist(a).total_cmp(&dist(b))
                }),
                (several, ..) => several.first().copied(),
            };
            if let Some(i) = found {
                if exclusive {
                    used[i] = true;
                }
                cursor = i + 1;
            }
            found
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compare::reference::{Evidence, RefStep, RefStepPos};
    use crate::netfilter::Table;
    use crate::step::StepKind;

    fn cap(id: Option<u16>, sport: u16) -> CapturedPacket {
        let h = CapturedHeaders {
            src: "10.0.0.1".parse().unwrap(),
            dst: "10.0.0.2".parse().unwrap(),
            proto: Some(6),
            sport: Some(sport),
            dport: Some(80),
            id,
            len: Some(60),
            seq: None,
            ack: None,
            tcp_flags: None,
            frag: None,
            icmp_id: None,
            icmp_seq: None,
            ipv6: None,
        };
        CapturedPacket {
            index: 0,
            ts_ns: None,
            headers: vec![h],
            steps: Vec::new(),
            table_paths: Vec::new(),
            implicit_returns: None,
        }
    }

    fn refp(id: Option<u16>, sport: u16, log: bool) -> RefPacket {
        let h = RefHeaders {
            src: Some("10.0.0.1".parse().unwrap()),
            dst: Some("10.0.0.2".parse().unwrap()),
            proto: Some(6),
            sport: Some(sport),
            dport: Some(80),
            id,
            ..Default::default()
        };
        let step = RefStep {
            table: Table::Raw,
            chain: "PREROUTING".into(),
            pos: RefStepPos::Numbered {
                kind: StepKind::Policy,
                num: 2,
            },
            verdict: None,
            rule_text: None,
            line: 1,
        };
        let evidence = if log {
            Evidence::Logged {
                prefix: "X: ".into(),
            }
        } else {
            Evidence::Path { steps: vec![step] }
        };
        RefPacket {
            headers: vec![h],
            ..RefPacket::new(1, None, None, evidence)
        }
    }

    #[test]
    fn pairs_by_fields_in_order_once_per_path() {
        let caps = [
            cap(Some(1), 1000),
            cap(Some(2), 1000),
            cap(Some(1), 1000),
            cap(None, 2000),
        ];
        let refs = [
            refp(Some(1), 1000, false),
            refp(Some(1), 1000, false),
            refp(Some(1), 1000, false),
            refp(Some(9), 2000, false),
            refp(Some(3), 1000, false),
        ];
        // Two packets with id 1, then none left; id 9 pairs with the capture showing no id;
        // id 3 has no counterpart.
        assert_eq!(
            match_packets(&refs, &caps, &MatchOptions::default()),
            [Some(0), Some(2), None, Some(3), None]
        );
    }

    #[test]
    fn packets_no_field_tells_apart_pair_by_time_once_the_clock_offset_is_known() {
        let timed = |c: CapturedPacket, secs: f64| CapturedPacket {
            ts_ns: Some((secs * 1e9) as u64),
            ..c
        };
        // Captured: a unique packet, then two with equal fields 0.1 s apart.
        let caps = [
            timed(cap(Some(1), 1000), 10.0),
            timed(cap(Some(2), 1000), 10.5),
            timed(cap(Some(2), 1000), 10.6),
        ];
        let at = |p: RefPacket, secs: f64| RefPacket {
            time: Some(RefTime::Monotonic { secs }),
            ..p
        };
        // The kernel log's clock runs 90 s ahead; the later of the two comes first in it.
        let refs = [
            at(refp(Some(1), 1000, false), 100.0),
            at(refp(Some(2), 1000, false), 100.6),
            at(refp(Some(2), 1000, false), 100.5),
        ];
        let opts = MatchOptions::default();
        assert_eq!(
            match_packets(&refs, &caps, &opts),
            [Some(0), Some(2), Some(1)]
        );
        // Without timestamps: order.
        let untimed: Vec<RefPacket> = refs
            .iter()
            .map(|r| RefPacket {
                time: None,
                ..r.clone()
            })
            .collect();
        assert_eq!(
            match_packets(&untimed, &caps, &opts),
            [Some(0), Some(1), Some(2)]
        );
    }

    /// A captured IPv6 fragment of fd99:213:1::2 → fd99:213:2::2 received on r0.
    fn frag6(len: u32, flowlabel: u32, src: &str) -> CapturedPacket {
        let h = CapturedHeaders {
            src: src.parse().unwrap(),
            dst: "fd99:213:2::2".parse().unwrap(),
            proto: Some(17),
            sport: None,
            dport: None,
            id: None,
            len: Some(len),
            ipv6: Some(crate::compare::captured::Ipv6Ident {
                hop_limit: 64,
                flowlabel,
                tc: 0,
                in_dev: Some("r0".into()),
            }),
            ..cap(None, 0).headers[0].clone()
        };
        CapturedPacket {
            headers: vec![h],
            ..cap(None, 0)
        }
    }

    /// The measured nft packet line of a later fragment, with `len`.
    fn unaddressed(len: u32, iif: &str) -> RefPacket {
        let line = format!(
            r#"trace id 1 ip6 raw PREROUTING packet: iif "{iif}" ether type ip6 @th,0,160 0x60003ba4{:04x}2c40fd9902130001000000000000"#,
            len - 40
        );
        let Ok(Some(crate::compare::reference::nftmon::NftLine::Packet { headers, .. })) =
            crate::compare::reference::nftmon::parse_line(&line, 1)
        else {
            panic!("{line}")
        };
        RefPacket {
            headers: vec![*headers],
            ..refp(None, 0, false)
        }
    }

    #[test]
    fn reference_lines_without_addresses_pair_on_the_ipv6_fields_they_show() {
        let src = "fd99:213:1::2";
        let caps = [
            frag6(1496, 15268, src),            // first fragment
            frag6(608, 15268, "fd99:213:9::2"), // another source
            frag6(608, 999, src),               // another flow
            frag6(608, 15268, src),             // the later fragment
            frag6(608, 15268, src),             // the next datagram's
        ];
        let refs = [
            unaddressed(608, "r0"),
            unaddressed(608, "r0"),
            unaddressed(608, "r0"),
            unaddressed(1000, "r0"),
            unaddressed(608, "r1"),
        ];
        assert_eq!(
            match_packets(&refs, &caps, &MatchOptions::default()),
            [Some(3), Some(4), None, None, None]
        );
        // Without the IPv6 fields on the captured side (IPv4, older JSON) nothing pairs, nor
        // does a line without the source bytes.
        let mut bare = frag6(608, 15268, src);
        bare.headers[0].ipv6 = None;
        let mut no_prefix = unaddressed(608, "r0");
        no_prefix.headers[0].src_prefix.clear();
        assert_eq!(
            match_packets(
                &[unaddressed(608, "r0"), no_prefix],
                &[bare, frag6(608, 15268, src)],
                &MatchOptions::default()
            ),
            [Some(1), None]
        );
    }

    #[test]
    fn log_lines_may_share_a_packet_and_time_window_filters() {
        let caps = [cap(Some(5), 1000)];
        let refs = [refp(Some(5), 1000, true), refp(Some(5), 1000, true)];
        assert_eq!(
            match_packets(&refs, &caps, &MatchOptions::default()),
            [Some(0), Some(0)]
        );
        let mut c = cap(Some(5), 1000);
        c.ts_ns = Some(10_000_000_000);
        let mut r = refp(Some(5), 1000, false);
        r.time = Some(RefTime::Monotonic { secs: 12.5 });
        assert_eq!(
            match_packets(
                &[r.clone()],
                &[c.clone()],
                &MatchOptions {
                    time_window: Some(1.0)
                }
            ),
            [None]
        );
        assert_eq!(
            match_packets(
                &[r],
                &[c],
                &MatchOptions {
                    time_window: Some(3.0)
                }
            ),
            [Some(0)]
        );
    }
}

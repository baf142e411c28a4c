//! Pairing reference packets with captured packets. Header fields both sides show must be
//! equal (addresses and ports of some snapshot — reference lines and captures both see a
//! packet before and after NAT —, IP id, length, fragment offset and MF, TCP seq/ack/flags,
//! ICMP echo id/seq): fragments of one datagram with equal lengths and retransmissions tell
//! apart by these. Only among candidates that no field tells apart, timestamps decide when
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
/// reference side: a line without them identifies nothing.
pub fn headers_agree(r: &RefHeaders, c: &CapturedHeaders) -> bool {
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

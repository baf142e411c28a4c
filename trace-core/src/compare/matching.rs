//! Pairing reference packets with captured packets. Header fields both sides show must be
//! equal (addresses and ports of some snapshot — reference lines and captures both see a
//! packet before and after NAT —, IP id, length, TCP seq/ack/flags); among the candidates,
//! packets are paired in order, each captured packet at most once per reference path.

use super::captured::{CapturedHeaders, CapturedPacket};
use super::reference::{RefHeaders, RefPacket, RefTime};

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
}

/// Some snapshot of the reference packet agrees with some snapshot of the captured one.
pub fn packets_agree(r: &RefPacket, c: &CapturedPacket) -> bool {
    r.headers.iter().any(|rh| c.headers.iter().any(|ch| headers_agree(rh, ch)))
}

fn within_window(r: &RefPacket, c: &CapturedPacket, opts: &MatchOptions) -> bool {
    match (opts.time_window, &r.time, c.ts_ns) {
        (Some(w), Some(RefTime::Monotonic { secs }), Some(ns)) => (secs - ns as f64 / 1e9).abs() <= w,
        _ => true,
    }
}

/// For each reference packet, the index of its captured packet. `exclusive` reference
/// packets (paths) take a captured packet for themselves; LOG lines may share one (several
/// LOG rules can log the same packet).
pub fn match_packets(refs: &[RefPacket], caps: &[CapturedPacket], opts: &MatchOptions) -> Vec<Option<usize>> {
    let mut used = vec![false; caps.len()];
    let mut cursor = 0usize;
    refs.iter()
        .map(|r| {
            let exclusive = !r.steps().is_empty();
            let ok = |i: &usize| (!exclusive || !used[*i]) && within_window(r, &caps[*i], opts) && packets_agree(r, &caps[*i]);
            // Prefer the first candidate at or after the previous pairing (both sides are in
            // time order), else the first anywhere (lines may interleave across CPUs).
            let found = (cursor..caps.len()).find(|i| ok(i)).or_else(|| (0..cursor.min(caps.len())).find(|i| ok(i)));
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

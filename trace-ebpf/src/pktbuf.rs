//! One read of a packet's first bytes for the netfilter probes: the change hash and, for the
//! common layouts, the header snapshot come from the same [`PKT_BYTES`] bytes, instead of
//! one read for the hash and three (IP header, TCP header, options) for a snapshot.
//!
//! The fast snapshot covers IPv4 without options (not a non-first fragment) and IPv6 without
//! extension headers, carrying TCP or UDP; it fills exactly what `headers::snapshot` fills
//! for those packets (the e2e tests compare the printed lines with the kernel's TRACE).
//! Everything else (IP options, extension headers, fragments, ICMP and its quoted packet,
//! SCTP, other protocols) goes through `headers::snapshot`.

use aya_ebpf::helpers::generated::bpf_probe_read_kernel;
use trace_common::record::{l4_flags, HeaderSnapshot, TCP_OPTIONS_MAX};

use crate::maps::PKT_BUF;

/// Bytes read from the network header: IPv6 + TCP header + 40 bytes of options fit.
pub const PKT_BYTES: usize = 128;
/// Bytes hashed to notice a change (IP header and the start of the transport header).
const HASH_BYTES: usize = 64;

const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;

/// The packet's first bytes in this CPU's buffer, and whether all [`PKT_BYTES`] were read
/// (else only the first 64, e.g. at the end of a mapping; or none: zeros).
pub struct Pkt {
    pub bytes: &'static [u8; PKT_BYTES],
    pub full: bool,
}

/// Read from the network header at `nh` (kernel address).
#[inline(always)]
pub fn read(nh: u64) -> Option<Pkt> {
    let w = PKT_BUF.get_ptr_mut(0)?;
    let dst = w as *mut core::ffi::c_void;
    let src = nh as *const core::ffi::c_void;
    // SAFETY: helper reads into a per-CPU map value of PKT_BYTES bytes.
    let full = unsafe { bpf_probe_read_kernel(dst, PKT_BYTES as u32, src) } == 0;
    if !full {
        // SAFETY: as above, the first HASH_BYTES only; zeroed by the helper on failure.
        unsafe { bpf_probe_read_kernel(dst, HASH_BYTES as u32, src) };
    }
    // SAFETY: the map value is [u64; 16], viewed as bytes; valid for this program run.
    let bytes = unsafe { &*(w as *const [u8; PKT_BYTES]) };
    Some(Pkt { bytes, full })
}

impl Pkt {
    /// FNV-1a over the first 64 bytes as eight words, checksums included, so any rewrite
    /// (NAT, TTL, TOS, MSS) changes it; never 0 (0 = nothing sent yet).
    #[inline(always)]
    pub fn hash(&self) -> u64 {
        // SAFETY: the buffer is a [u64; 16] map value (8-byte aligned).
        let w = unsafe { &*(self.bytes as *const [u8; PKT_BYTES] as *const [u64; 16]) };
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for x in w[..HASH_BYTES / 8].iter() {
            h ^= *x;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        h | 1
    }

    /// The snapshot of a common-layout packet from the buffer; false: not covered here.
    #[inline(always)]
    pub fn snapshot(&self, pf: u8, h: &mut HeaderSnapshot) -> bool {
        if !self.full {
            return false;
        }
        let b = self.bytes;
        let l4 = if pf == 2 {
            // Version 4, no options; a non-first fragment has no transport header.
            if b[0] != 0x45 || u16::from_be_bytes([b[6], b[7]]) & 0x1fff != 0 {
                return false;
            }
            if !matches!(b[9], IPPROTO_TCP | IPPROTO_UDP) {
                return false;
            }
            zero(h);
            h.tos = b[1];
            h.len = u16::from_be_bytes([b[2], b[3]]);
            h.id = u16::from_be_bytes([b[4], b[5]]);
            h.frag = u16::from_be_bytes([b[6], b[7]]);
            h.ttl = b[8];
            h.proto = b[9];
            h.saddr[..4].copy_from_slice(&b[12..16]);
            h.daddr[..4].copy_from_slice(&b[16..20]);
            20
        } else {
            if !matches!(b[6], IPPROTO_TCP | IPPROTO_UDP) {
                return false;
            }
            zero(h);
            h.tos = (b[0] << 4) | (b[1] >> 4);
            h.flowlabel = u32::from_be_bytes([0, b[1] & 0x0f, b[2], b[3]]);
            h.len = u16::from_be_bytes([b[4], b[5]]).wrapping_add(40);
            h.ttl = b[7];
            h.proto = b[6];
            h.saddr.copy_from_slice(&b[8..24]);
            h.daddr.copy_from_slice(&b[24..40]);
            40
        };
        if l4 == 20 {
            transport::<20>(b, h);
        } else {
            transport::<40>(b, h);
        }
        true
    }
}

/// The TCP or UDP header at `L` (a constant: the verifier sees fixed offsets).
#[inline(always)]
fn transport<const L: usize>(b: &[u8; PKT_BYTES], h: &mut HeaderSnapshot) {
    h.sport = u16::from_be_bytes([b[L], b[L + 1]]);
    h.dport = u16::from_be_bytes([b[L + 2], b[L + 3]]);
    if h.proto == IPPROTO_UDP {
        h.udp_len = u16::from_be_bytes([b[L + 4], b[L + 5]]);
        h.l4_flags = l4_flags::VALID;
        return;
    }
    h.tcp_seq = u32::from_be_bytes([b[L + 4], b[L + 5], b[L + 6], b[L + 7]]);
    h.tcp_ack = u32::from_be_bytes([b[L + 8], b[L + 9], b[L + 10], b[L + 11]]);
    let doff = (b[L + 12] >> 4) as usize * 4;
    h.tcp_res = b[L + 12] & 0x0f;
    h.tcp_flags = b[L + 13];
    h.tcp_window = u16::from_be_bytes([b[L + 14], b[L + 15]]);
    h.tcp_urgp = u16::from_be_bytes([b[L + 18], b[L + 19]]);
    if doff > 20 && doff <= 20 + TCP_OPTIONS_MAX {
        // As headers::transport: the 40 bytes after the fixed header, `tcp_opt_len` valid.
        h.tcp_options
            .copy_from_slice(&b[L + 20..L + 20 + TCP_OPTIONS_MAX]);
        h.tcp_opt_len = (doff - 20) as u8;
    }
    h.l4_flags = l4_flags::VALID;
}

/// Start from zero, as headers::snapshot does, so unset fields hash and compare stably.
#[inline(always)]
fn zero(h: &mut HeaderSnapshot) {
    // SAFETY: plain data, a valid &mut.
    unsafe { crate::mem::zero(h) };
}

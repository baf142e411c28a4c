//! One read of a packet's first bytes for the netfilter probes: the change hash and, for the
//! common layouts, the header snapshot come from the same [`PKT_BYTES`] bytes, instead of
//! one read for the hash and three (IP header, TCP header, options) for a snapshot.
//!
//! The fast snapshot covers IPv4 without options (not a non-first fragment) and IPv6 without
//! extension headers, carrying TCP or UDP; it fills exactly what `headers::snapshot` fills
//! for those packets (the e2e tests compare the printed lines with the kernel's TRACE).
//! Everything else (IP options, extension headers, fragments, ICMP and its quoted packet,
//! SCTP, other protocols) goes through `headers::snapshot`.
//!
//! On a hook's first record (devices and MAC are due) the read can start [`PRE_BYTES`]
//! before the network header, so an Ethernet header right before it (received packets) comes
//! with the same read instead of one more bpf_probe_read_kernel call (~60 ns each here).

use aya_ebpf::helpers::generated::bpf_probe_read_kernel;
use trace_common::record::{l4_flags, HeaderSnapshot, TCP_OPTIONS_MAX};

use crate::maps::PKT_BUF;

/// Bytes read from the network header: IPv6 + TCP header + 40 bytes of options fit.
pub const PKT_BYTES: usize = 128;
/// Bytes before the network header read along when the MAC header is wanted (a 14-byte
/// Ethernet header ends at byte 16; 16 keeps the network header 8-aligned in the buffer).
pub const PRE_BYTES: usize = 16;
/// Ethernet header length (what LOG's MAC= prints).
pub const MAC_LEN: usize = 14;
pub const BUF_WORDS: usize = (PRE_BYTES + PKT_BYTES) / 8;
/// Bytes hashed to notice a change (IP header and the start of the transport header).
const HASH_BYTES: usize = 64;

const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;

/// The packet's first bytes in this CPU's buffer, and whether all [`PKT_BYTES`] were read
/// (else only the first 64, e.g. at the end of a mapping; or none: zeros).
pub struct Pkt {
    pub bytes: &'static [u8; PKT_BYTES],
    pub full: bool,
    /// The [`MAC_LEN`] bytes right before the network header, when they were read along.
    pub mac: Option<&'static [u8; MAC_LEN]>,
}

/// Read from the network header at `nh` (kernel address); `with_mac`: also the
/// [`MAC_LEN`] bytes before it, in the same read.
#[inline(always)]
pub fn read(nh: u64, with_mac: bool) -> Option<Pkt> {
    let w = PKT_BUF.get_ptr_mut(0)?;
    let buf = w as *mut u8;
    // SAFETY: PRE_BYTES is inside the [u64; BUF_WORDS] map value.
    let net = unsafe { buf.add(PRE_BYTES) };
    let src = nh as *const core::ffi::c_void;
    let both = (PRE_BYTES + PKT_BYTES) as u32;
    // SAFETY: the helper writes into the per-CPU map value: PRE_BYTES + PKT_BYTES bytes from
    // its start, or PKT_BYTES (then HASH_BYTES) from PRE_BYTES on; zeros on failure.
    let (full, mac) = unsafe {
        if with_mac && bpf_probe_read_kernel(buf.cast(), both, (nh - PRE_BYTES as u64) as _) == 0 {
            let mac = &*(buf.add(PRE_BYTES - MAC_LEN) as *const [u8; MAC_LEN]);
            (true, Some(mac))
        } else if bpf_probe_read_kernel(net.cast(), PKT_BYTES as u32, src) == 0 {
            (true, None)
        } else {
            bpf_probe_read_kernel(net.cast(), HASH_BYTES as u32, src);
            (false, None)
        }
    };
    // SAFETY: the map value's bytes from PRE_BYTES on, 8-aligned; valid for this program run.
    let bytes = unsafe { &*(net as *const [u8; PKT_BYTES]) };
    Some(Pkt { bytes, full, mac })
}

const _: () = assert!(PRE_BYTES.is_multiple_of(8) && PRE_BYTES >= MAC_LEN);

impl Pkt {
    /// FNV-1a over the first 64 bytes as eight words, checksums included, so any rewrite
    /// (NAT, TTL, TOS, MSS) changes it; never 0 (0 = nothing sent yet).
    #[inline(always)]
    pub fn hash(&self) -> u64 {
        // SAFETY: `bytes` starts PRE_BYTES into the [u64; BUF_WORDS] map value: 8-aligned.
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

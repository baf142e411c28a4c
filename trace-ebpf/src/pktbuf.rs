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
//! The read is 18 direct loads through `mem::kcast` (bpf_rdonly_cast), from [`PRE_BYTES`]
//! before the network header: an Ethernet header right before it (received packets) comes
//! along for a hook's first record (devices and MAC are due). A bpf_probe_read_kernel call
//! cost ~60 ns here; the loads a fraction of that.

use trace_common::record::{l4_flags, HeaderSnapshot, TCP_OPTIONS_MAX};

use crate::{maps::PKT_BUF, mem};

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

/// The packet's first bytes in this CPU's buffer (bytes of a faulting address read as 0).
pub struct Pkt {
    pub bytes: &'static [u8; PKT_BYTES],
    /// The [`MAC_LEN`] bytes right before the network header, when they were read along.
    pub mac: Option<&'static [u8; MAC_LEN]>,
}

/// Read from the network header at `nh` (kernel address), and the [`PRE_BYTES`] before
/// it: direct loads (`mem::kcast`, one per word, a fault reads zeros) instead of
/// bpf_probe_read_kernel calls (~60 ns each here). `with_mac`: the caller knows the MAC
/// header ends at `nh` (see `nfhook::mac_before`), [`Pkt::mac`] is set.
#[inline(always)]
pub fn read(nh: u64, with_mac: bool) -> Option<Pkt> {
    let w = PKT_BUF.get_ptr_mut(0)?;
    // SAFETY: per-CPU map value of BUF_WORDS words, valid for this program run.
    let words = unsafe { &mut *w };
    if nh < PRE_BYTES as u64 {
        return None;
    }
    let p = mem::kcast(nh - PRE_BYTES as u64);
    for (i, x) in words.iter_mut().enumerate() {
        *x = mem::load::<u64>(p, (i * 8) as u32);
    }
    let buf = w as *const u8;
    // SAFETY: fixed ranges inside the map value (PRE_BYTES - MAC_LEN.., PRE_BYTES..), the
    // latter 8-aligned; plain bytes.
    let (mac, bytes) = unsafe {
        (
            &*(buf.add(PRE_BYTES - MAC_LEN) as *const [u8; MAC_LEN]),
            &*(buf.add(PRE_BYTES) as *const [u8; PKT_BYTES]),
        )
    };
    Some(Pkt {
        bytes,
        mac: with_mac.then_some(mac),
    })
}

const _: () = assert!(PRE_BYTES.is_multiple_of(8) && PRE_BYTES >= MAC_LEN);
const _: () = assert!(BUF_WORDS * 8 <= mem::KCAST_BYTES);

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
        let b = self.bytes;
        let l4 = if pf == crate::headers::NFPROTO_IPV4 {
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

//! Flow hash for per-connection sampling (`--sample 1/N`).
//!
//! The hash is symmetric: the two endpoints are put in a canonical order first, so both
//! directions of a connection hash the same. Feed it the conntrack ORIGINAL tuple when the skb
//! has a conntrack entry (then NAT'ed packets and replies of one connection agree too), else the
//! packet's own 5-tuple. No allocation, no recursion, constant-bound loops, no panic paths: it
//! runs in the eBPF probes and in the host tests unchanged.
//!
//! Sampling decision: keep the flow when `flow_hash(..) % N == 0` ([`sample_keep`]). The final
//! avalanche step makes the low bits uniform, so the modulo keeps ~1/N of the flows.

/// Fixed seed: the same flow must hash the same on every CPU and in every run.
const SEED: u32 = 0x6970_7472; // "iptr"

/// Symmetric hash of a flow. Addresses in network byte order, IPv4 in bytes 0..4 (rest zero);
/// ports in host byte order, 0 for protocols without ports.
#[inline(always)]
pub fn flow_hash(
    family: u8,
    proto: u8,
    addr_a: &[u8; 16],
    port_a: u16,
    addr_b: &[u8; 16],
    port_b: u16,
) -> u32 {
    flow_hash_words(
        family,
        proto,
        addr_words(addr_a),
        port_a,
        addr_words(addr_b),
        port_b,
    )
}

/// The 16 address bytes as two words in memory order (`u64::from_ne_bytes` of bytes 0..8 and
/// 8..16): what an aligned 8-byte load of the address gives, the form [`flow_hash_words`]
/// takes.
#[inline(always)]
pub fn addr_words(a: &[u8; 16]) -> [u64; 2] {
    [
        u64::from_ne_bytes([a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]]),
        u64::from_ne_bytes([a[8], a[9], a[10], a[11], a[12], a[13], a[14], a[15]]),
    ]
}

/// [`flow_hash`] of addresses given as [`addr_words`]: the same value, computed on words (the
/// eBPF probes load 8-aligned addresses as two words; byte by byte the compare and the
/// big-endian folding cost ~100 instructions per call).
#[inline(always)]
pub fn flow_hash_words(
    family: u8,
    proto: u8,
    addr_a: [u64; 2],
    port_a: u16,
    addr_b: [u64; 2],
    port_b: u16,
) -> u32 {
    // Big-endian values of the words: their numeric order is the bytes' lexicographic order,
    // and their halves are the big-endian 4-byte chunks the hash folds in.
    let a = [u64::from_be(addr_a[0]), u64::from_be(addr_a[1])];
    let b = [u64::from_be(addr_b[0]), u64::from_be(addr_b[1])];
    let a_le = (a[0], a[1], port_a) <= (b[0], b[1], port_b);
    let (lo_addr, lo_port, hi_addr, hi_port) = if a_le {
        (a, port_a, b, port_b)
    } else {
        (b, port_b, a, port_a)
    };
    let mut h = SEED;
    h = mix(h, (family as u32) << 8 | proto as u32);
    h = mix_be_words(h, lo_addr);
    h = mix_be_words(h, hi_addr);
    h = mix(h, (lo_port as u32) << 16 | hi_port as u32);
    fmix32(h ^ 40)
}

/// Fold an address given as two big-endian words: its four 4-byte chunks in order.
#[inline(always)]
fn mix_be_words(mut h: u32, w: [u64; 2]) -> u32 {
    h = mix(h, (w[0] >> 32) as u32);
    h = mix(h, w[0] as u32);
    h = mix(h, (w[1] >> 32) as u32);
    mix(h, w[1] as u32)
}

/// Keep this flow when sampling 1 in `n` (n <= 1 keeps everything).
#[inline(always)]
pub fn sample_keep(hash: u32, n: u32) -> bool {
    n <= 1 || hash.is_multiple_of(n)
}

/// One MurmurHash3 (x86_32) body round.
#[inline(always)]
fn mix(h: u32, k: u32) -> u32 {
    let k = k
        .wrapping_mul(0xcc9e_2d51)
        .rotate_left(15)
        .wrapping_mul(0x1b87_3593);
    (h ^ k)
        .rotate_left(13)
        .wrapping_mul(5)
        .wrapping_add(0xe654_6b64)
}

/// MurmurHash3 finaliser: every input bit affects every output bit.
#[inline(always)]
fn fmix32(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The byte-wise definition (the hash as first written): [`flow_hash_words`] must agree.
    fn flow_hash_bytes(
        family: u8,
        proto: u8,
        addr_a: &[u8; 16],
        port_a: u16,
        addr_b: &[u8; 16],
        port_b: u16,
    ) -> u32 {
        let le = {
            let mut r = None;
            for (a, b) in addr_a.iter().zip(addr_b.iter()) {
                if a != b {
                    r = Some(a < b);
                    break;
                }
            }
            r.unwrap_or(port_a <= port_b)
        };
        let (lo_addr, lo_port, hi_addr, hi_port) = if le {
            (addr_a, port_a, addr_b, port_b)
        } else {
            (addr_b, port_b, addr_a, port_a)
        };
        let mix_addr = |mut h: u32, addr: &[u8; 16]| {
            for w in addr.chunks_exact(4) {
                h = mix(h, w.iter().fold(0u32, |acc, b| acc << 8 | *b as u32));
            }
            h
        };
        let mut h = SEED;
        h = mix(h, (family as u32) << 8 | proto as u32);
        h = mix_addr(h, lo_addr);
        h = mix_addr(h, hi_addr);
        h = mix(h, (lo_port as u32) << 16 | hi_port as u32);
        fmix32(h ^ 40)
    }

    /// Random and edge-case endpoints (equal addresses, equal prefixes, bytes differing
    /// only in the last position): the word computation equals the byte definition.
    #[test]
    fn words_agree_with_bytes() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for i in 0..20_000u32 {
            let mut a = [0u8; 16];
            let mut b = [0u8; 16];
            for x in a.iter_mut().chain(b.iter_mut()) {
                *x = next() as u8;
            }
            match i % 4 {
                0 => b = a,
                1 => b[..8].copy_from_slice(&a[..8]),
                2 => {
                    b = a;
                    b[15] ^= 1 << (i % 8);
                }
                _ => {}
            }
            let (pa, pb) = (next() as u16, if i % 3 == 0 { 0 } else { next() as u16 });
            let (fam, proto) = (if i % 2 == 0 { 2 } else { 10 }, next() as u8);
            assert_eq!(
                flow_hash(fam, proto, &a, pa, &b, pb),
                flow_hash_bytes(fam, proto, &a, pa, &b, pb),
                "{a:?}:{pa} {b:?}:{pb}"
            );
        }
    }

    fn v4(a: [u8; 4]) -> [u8; 16] {
        let mut x = [0u8; 16];
        x[..4].copy_from_slice(&a);
        x
    }

    #[test]
    fn symmetric() {
        let a = v4([192, 168, 64, 5]);
        let b = v4([192, 168, 64, 4]);
        assert_eq!(
            flow_hash(2, 6, &a, 43148, &b, 10000),
            flow_hash(2, 6, &b, 10000, &a, 43148)
        );
        // Same address both sides: the port orders the endpoints.
        assert_eq!(
            flow_hash(2, 17, &a, 1, &a, 2),
            flow_hash(2, 17, &a, 2, &a, 1)
        );
    }

    #[test]
    fn distinguishes_fields() {
        let a = v4([10, 0, 0, 1]);
        let b = v4([10, 0, 0, 2]);
        let base = flow_hash(2, 6, &a, 1000, &b, 80);
        assert_ne!(base, flow_hash(2, 17, &a, 1000, &b, 80));
        assert_ne!(base, flow_hash(10, 6, &a, 1000, &b, 80));
        assert_ne!(base, flow_hash(2, 6, &a, 1001, &b, 80));
        assert_ne!(base, flow_hash(2, 6, &a, 1000, &v4([10, 0, 0, 3]), 80));
    }

    #[test]
    fn sample_keep_edges() {
        assert!(sample_keep(12345, 0));
        assert!(sample_keep(12345, 1));
        assert!(sample_keep(1000, 1000));
        assert!(!sample_keep(1001, 1000));
    }

    /// 2^16 distinct flows spread evenly over 64 buckets (every bucket within 15% of the mean),
    /// and 1-in-N sampling keeps about 1/N of them.
    #[test]
    fn distribution_is_even_and_sampling_keeps_one_in_n() {
        let mut buckets = [0u32; 64];
        let (mut kept_100, mut kept_7) = (0u32, 0u32);
        let server = v4([172, 19, 0, 9]);
        let mut n = 0u32;
        for host in 0..=255u8 {
            for port in 32768u16..33024 {
                let client = v4([10, 0, 1, host]);
                let h = flow_hash(2, 6, &client, port, &server, 80);
                buckets[(h % 64) as usize] += 1;
                kept_100 += sample_keep(h, 100) as u32;
                kept_7 += sample_keep(h, 7) as u32;
                n += 1;
            }
        }
        let mean = n / 64;
        for (i, b) in buckets.iter().enumerate() {
            assert!(
                b.abs_diff(mean) < mean * 15 / 100,
                "bucket {i}: {b} vs mean {mean}"
            );
        }
        assert!(
            kept_100.abs_diff(n / 100) < n / 100 / 5,
            "1/100 kept {kept_100} of {n}"
        );
        assert!(
            kept_7.abs_diff(n / 7) < n / 7 / 10,
            "1/7 kept {kept_7} of {n}"
        );
    }

    /// NAT: the probes hash the conntrack ORIGINAL tuple for every packet of a connection, so
    /// what matters is that the reply's view of that tuple (endpoints swapped) agrees, and that
    /// IPv6 flows work the same way.
    #[test]
    fn ipv6_symmetric_and_distinct_from_ipv4() {
        let mut a = [0u8; 16];
        a[0] = 0xfd;
        a[15] = 1;
        let mut b = a;
        b[15] = 2;
        assert_eq!(
            flow_hash(10, 17, &a, 53, &b, 5353),
            flow_hash(10, 17, &b, 5353, &a, 53)
        );
        assert_ne!(
            flow_hash(10, 17, &a, 53, &b, 5353),
            flow_hash(10, 17, &a, 53, &b, 5354)
        );
    }
}

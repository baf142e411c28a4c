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
    let (lo_addr, lo_port, hi_addr, hi_port) = if endpoint_le(addr_a, port_a, addr_b, port_b) {
        (addr_a, port_a, addr_b, port_b)
    } else {
        (addr_b, port_b, addr_a, port_a)
    };
    let mut h = SEED;
    h = mix(h, (family as u32) << 8 | proto as u32);
    h = mix_addr(h, lo_addr);
    h = mix_addr(h, hi_addr);
    h = mix(h, (lo_port as u32) << 16 | hi_port as u32);
    fmix32(h ^ 40)
}

/// Keep this flow when sampling 1 in `n` (n <= 1 keeps everything).
#[inline(always)]
pub fn sample_keep(hash: u32, n: u32) -> bool {
    n <= 1 || hash.is_multiple_of(n)
}

/// (addr_a, port_a) <= (addr_b, port_b), lexicographically on the address bytes then the port.
#[inline(always)]
fn endpoint_le(addr_a: &[u8; 16], port_a: u16, addr_b: &[u8; 16], port_b: u16) -> bool {
    for (a, b) in addr_a.iter().zip(addr_b.iter()) {
        if a != b {
            return a < b;
        }
    }
    port_a <= port_b
}

#[inline(always)]
fn mix_addr(mut h: u32, addr: &[u8; 16]) -> u32 {
    for w in addr.chunks_exact(4) {
        // chunks_exact(4) always yields 4 bytes; fold them without indexing (no panic path).
        let word = w.iter().fold(0u32, |acc, b| acc << 8 | *b as u32);
        h = mix(h, word);
    }
    h
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

//! A cheap deterministic hasher for the assembler's per-event maps (keys are skb addresses,
//! gens and plan coordinates, never attacker-chosen strings): SipHash was a visible share of
//! per-event time. Multiply-rotate per word, with a final mix so that skb addresses (low bits
//! always zero) still spread over the buckets hashbrown picks with the low bits.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// HashMap with [`WordHasher`].
pub(crate) type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<WordHasher>>;

#[derive(Default, Clone, Copy)]
pub(crate) struct WordHasher(u64);

const K: u64 = 0x9e37_79b9_7f4a_7c15;

impl WordHasher {
    fn add(&mut self, w: u64) {
        self.0 = (self.0.rotate_left(5) ^ w).wrapping_mul(K);
    }
}

impl Hasher for WordHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.add(u64::from_le_bytes(b));
        }
    }
    fn write_u8(&mut self, i: u8) {
        self.add(i as u64);
    }
    fn write_u16(&mut self, i: u16) {
        self.add(i as u64);
    }
    fn write_u32(&mut self, i: u32) {
        self.add(i as u64);
    }
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }
    fn write_isize(&mut self, i: isize) {
        self.add(i as u64);
    }
    fn finish(&self) -> u64 {
        // fmix64-style: high bits of the products reach the low bits used for bucket choice.
        let mut h = self.0;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^ (h >> 33)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::{BuildHasher, BuildHasherDefault};

    #[test]
    fn aligned_addresses_differ_in_low_bits() {
        let b = BuildHasherDefault::<WordHasher>::default();
        let lows: std::collections::HashSet<u64> = (0..256u64)
            .map(|i| b.hash_one(0xffff_8880_0000_0000u64 + i * 256) & 0xff)
            .collect();
        // 256 aligned addresses land in many of 256 buckets, not a handful.
        assert!(lows.len() > 100, "{}", lows.len());
    }
}

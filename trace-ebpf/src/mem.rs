//! Zero-filling and read buffers without `memset`.
//!
//! LLVM's BPF backend lowers zero-fills of arrays and structs (`[0u8; N]`, `write_bytes`,
//! `fill(0)`) to calls of `memset`, which in this object is a byte-at-a-time BPF loop (5
//! instructions per byte: zeroing a 112-byte header snapshot ran 560 instructions, the filter's
//! 64-byte read buffer 320, before the helper even wrote it). [`zero`] writes words with
//! volatile stores, which LLVM cannot merge back into a `memset` call; [`read_arr`] lets
//! bpf_probe_read_kernel fill an uninitialised buffer (the helper writes every byte: the data,
//! or zeros when the read fails).

use core::mem::{align_of, size_of, MaybeUninit};

use aya_ebpf::helpers::generated::bpf_probe_read_kernel;

/// Zero `*p` one word at a time (8-byte words when `T` is 8-aligned, else 4-byte ones).
///
/// # Safety
/// `p` is valid for writes of a `T`; `T` is plain data (all-zero is a valid value).
#[inline(always)]
pub unsafe fn zero<T>(p: *mut T) {
    const { assert!(align_of::<T>() >= 4 && size_of::<T>().is_multiple_of(4)) };
    if align_of::<T>() >= 8 && size_of::<T>().is_multiple_of(8) {
        let w = p as *mut u64;
        for i in 0..size_of::<T>() / 8 {
            // SAFETY: inside *p, 8-aligned (the caller's contract and T's alignment).
            unsafe { w.add(i).write_volatile(0) };
        }
    } else {
        let w = p as *mut u32;
        for i in 0..size_of::<T>() / 4 {
            // SAFETY: inside *p, 4-aligned.
            unsafe { w.add(i).write_volatile(0) };
        }
    }
}

/// `N` bytes at kernel address `addr`, or None when `addr` is NULL or the read fails.
#[inline(always)]
pub fn read_arr<const N: usize>(addr: u64) -> Option<[u8; N]> {
    if addr == 0 {
        return None;
    }
    let mut b = MaybeUninit::<[u8; N]>::uninit();
    // SAFETY: the helper writes all N bytes of the buffer (zeros on failure).
    let rc = unsafe {
        bpf_probe_read_kernel(
            b.as_mut_ptr().cast(),
            N as u32,
            addr as *const core::ffi::c_void,
        )
    };
    if rc != 0 {
        return None;
    }
    // SAFETY: initialised by the helper (see above).
    Some(unsafe { b.assume_init() })
}

/// `N` 8-byte words at kernel address `addr` (native order: byte `i` of the memory is byte
/// `i % 8` of word `i / 8`, little-endian on bpfel); None when the read fails.
#[inline(always)]
pub fn read_words<const N: usize>(addr: u64) -> Option<[u64; N]> {
    if addr == 0 {
        return None;
    }
    let mut b = MaybeUninit::<[u64; N]>::uninit();
    // SAFETY: the helper writes all N * 8 bytes of the buffer (zeros on failure).
    let rc = unsafe {
        bpf_probe_read_kernel(
            b.as_mut_ptr().cast(),
            (N * 8) as u32,
            addr as *const core::ffi::c_void,
        )
    };
    if rc != 0 {
        return None;
    }
    // SAFETY: initialised by the helper (see above).
    Some(unsafe { b.assume_init() })
}

// The word-wise field extraction (headers::filter_view) assumes a little-endian target.
const _: () = assert!(cfg!(target_endian = "little"));

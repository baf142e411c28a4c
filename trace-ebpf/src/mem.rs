//! Zero-filling and read buffers without `memset`.
//!
//! LLVM's BPF backend lowers zero-fills of arrays and structs (`[0u8; N]`, `write_bytes`,
//! `fill(0)`) to calls of `memset`, which in this object is a byte-at-a-time BPF loop (5
//! instructions per byte: zeroing a 112-byte header snapshot ran 560 instructions, the filter's
//! 64-byte read buffer 320, before the helper even wrote it). [`zero`] writes words with
//! volatile stores, which LLVM cannot merge back into a `memset` call; [`read_into`] lets
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

/// Read `size_of::<T>()` bytes at kernel address `addr` into `buf` and return it initialised,
/// or None when `addr` is NULL or the read fails. In place: returning the array by value
/// made a second stack copy (the kprobe/fentry call chain is near the 512-byte limit).
/// `T` is a byte or word array (any bits valid).
#[inline(always)]
pub fn read_into<T: Copy>(addr: u64, buf: &mut MaybeUninit<T>) -> Option<&T> {
    if addr == 0 {
        return None;
    }
    // SAFETY: the helper writes all size_of::<T>() bytes of the buffer (zeros on failure).
    let rc = unsafe {
        bpf_probe_read_kernel(
            buf.as_mut_ptr().cast(),
            size_of::<T>() as u32,
            addr as *const core::ffi::c_void,
        )
    };
    if rc != 0 {
        return None;
    }
    // SAFETY: initialised by the helper (see above); T is plain data.
    Some(unsafe { buf.assume_init_ref() })
}

/// The 16 bytes as two 8-byte loads (memory order, as `flowhash::addr_words`).
///
/// # Safety
/// `a` is 8-aligned: an address field at an 8-aligned offset of an 8-aligned struct
/// (FilterInput, HeaderSnapshot: asserted where they are defined).
#[inline(always)]
pub unsafe fn words16(a: &[u8; 16]) -> [u64; 2] {
    let p = a as *const [u8; 16] as *const [u64; 2];
    // SAFETY: the caller's contract; 16 readable bytes, any bits are valid u64s.
    unsafe { p.read() }
}

// The word-wise field extraction (headers::filter_view) assumes a little-endian target.
const _: () = assert!(cfg!(target_endian = "little"));

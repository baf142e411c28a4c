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
use trace_common::record::{KCAST_CALL_MAGIC, KCAST_TYPE_MAGIC};

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

/// `addr` as a pointer the verifier lets netfilter programs load from directly: the kfunc
/// `bpf_rdonly_cast(addr, <BTF id of struct pt_regs>)`, which the verifier inlines into a
/// register move (the collector patches the call and the id in, see
/// `trace_common::record::KCAST_CALL_MAGIC`). Loads through it are checked against pt_regs
/// (21 unsigned longs: offsets below [`KCAST_BYTES`]) and are fault-safe: a fault reads 0.
/// Netfilter programs only (the kprobe/fentry objects are loaded without the patch).
#[inline(always)]
pub fn kcast(addr: u64) -> u64 {
    let r: u64;
    // SAFETY: a call the loader turns into bpf_rdonly_cast (no memory access; returns r1);
    // the clobbers are the BPF calling convention's.
    unsafe {
        core::arch::asm!(
            "r2 = {t} ll",
            "call {c}",
            t = const KCAST_TYPE_MAGIC,
            c = const KCAST_CALL_MAGIC,
            inlateout("r1") addr => _,
            lateout("r0") r,
            lateout("r2") _,
            lateout("r3") _,
            lateout("r4") _,
            lateout("r5") _,
            options(nostack),
        );
    }
    r
}

/// `*(T *)(p + off)` through a [`kcast`] pointer: a plain load, no NULL test (the verifier
/// knows the cast's result as non-NULL, and a fault reads 0). A NULL test per load let LLVM
/// turn the all-zero branch into a memset call.
#[inline(always)]
pub fn load<T: Copy>(p: u64, off: u32) -> T {
    // SAFETY: see kcast: the verifier checks the access against the cast type and the JIT
    // makes it fault-safe.
    unsafe { core::ptr::read_volatile((p + off as u64) as *const T) }
}

/// `*(T *)(base + off)` for any kernel address, through [`kcast`] (netfilter programs): a
/// plain fault-safe load instead of a bpf_probe_read_kernel call (~60 ns each here), for
/// pointers the verifier does not know as BTF pointers (read from memory, not from the
/// ctx). Zero when `base` is NULL.
#[inline(always)]
pub fn load_at<T: Copy + Default>(base: u64, off: u32) -> T {
    if base == 0 {
        return T::default();
    }
    load::<T>(kcast(base + off as u64), 0)
}

/// Bytes a [`kcast`] pointer reaches (sizeof(struct pt_regs) on x86-64 and arm64 >= 168).
pub const KCAST_BYTES: usize = 168;

/// `N` words at kernel address `addr` into `buf`: direct loads through [`kcast`] when `D`
/// (netfilter programs; a fault reads zeros), else bpf_probe_read_kernel (None when it
/// fails). None when `addr` is NULL.
#[inline(always)]
pub fn read_words<const N: usize, const D: bool>(
    addr: u64,
    buf: &mut MaybeUninit<[u64; N]>,
) -> Option<&[u64; N]> {
    if !D {
        return read_into(addr, buf);
    }
    if addr == 0 {
        return None;
    }
    const { assert!(N * 8 <= KCAST_BYTES) };
    let p = kcast(addr);
    let w = buf.as_mut_ptr() as *mut u64;
    for i in 0..N {
        // SAFETY: inside the N-word buffer.
        unsafe { w.add(i).write(load::<u64>(p, (i * 8) as u32)) };
    }
    // SAFETY: all N words written above.
    Some(unsafe { buf.assume_init_ref() })
}

// The word-wise field extraction (headers::filter_view) assumes a little-endian target.
const _: () = assert!(cfg!(target_endian = "little"));

//! Reading kernel memory at offsets resolved from BTF. Every read goes through
//! bpf_probe_read_kernel: the offsets are load-time values, and a failed read yields zero
//! (a field we could not read is reported as absent, never as garbage).

use aya_ebpf::helpers::{bpf_probe_read_kernel, bpf_probe_read_kernel_buf};

/// `*(T *)(base + off)`, or zero when `base` is NULL or the read fails.
#[inline(always)]
pub fn read<T: Copy + Default>(base: u64, off: u32) -> T {
    if base == 0 {
        return T::default();
    }
    unsafe { bpf_probe_read_kernel((base + off as u64) as *const T) }.unwrap_or_default()
}

/// `*(T *)(base + off)` with a plain load when `DIRECT`, else [`read`]. Direct loads are for
/// pointers the verifier knows as BTF pointers (a netfilter program's ctx->state / ctx->skb
/// and the struct pointers read from them): `off` comes from read-only globals, which the
/// verifier sees as constants, so it checks each load against the kernel's BTF, and the JIT
/// makes it fault-safe. Much cheaper than a helper call. Other program types (kprobes) get
/// plain integers and must use `DIRECT = false`.
#[inline(always)]
pub fn kread<T: Copy + Default, const DIRECT: bool>(base: u64, off: u32) -> T {
    if !DIRECT {
        return read(base, off);
    }
    if base == 0 {
        return T::default();
    }
    // SAFETY: see above; the verifier validates the access against BTF.
    unsafe { core::ptr::read_volatile((base + off as u64) as *const T) }
}

/// Copy `dst.len()` bytes from `addr`; false when the read failed (the helper then zeroed
/// dst) or `addr` is NULL (dst untouched).
#[inline(always)]
pub fn read_buf(addr: u64, dst: &mut [u8]) -> bool {
    if addr == 0 {
        return false;
    }
    // No `fill(0)` on failure: the helper already zeroes dst, and a fill here compiles to a
    // byte-loop memset call (see `mem`).
    unsafe { bpf_probe_read_kernel_buf(addr as *const u8, dst) }.is_ok()
}

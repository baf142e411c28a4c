//! iptrace's eBPF programs, built for bpfel-unknown-none by trace-user's build.rs.
//!
//! - [`nfhook`]: the BPF_PROG_TYPE_NETFILTER probe linked before the first and after every
//!   table of each hook, and the skb:kfree_skb drop reporter;
//! - [`maps`]: maps and load-time globals shared by them;
//! - [`kread`] / [`headers`]: reading kernel structs (BTF offsets) and the packet headers;
//! - [`mem`]: zero-fills and read buffers that avoid the byte-loop `memset`;
//! - [`filter`]: the capture filter evaluator (assembly developer's module).
//!
//! On the host (e.g. `cargo build --workspace`) this crate compiles to an empty binary so
//! workspace-wide commands keep working; the programs exist only for `target_arch = "bpf"`.
#![cfg_attr(target_arch = "bpf", no_std, no_main, feature(asm_experimental_arch))]

#[cfg(target_arch = "bpf")]
mod headers;
#[cfg(target_arch = "bpf")]
mod kread;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod mem;
#[cfg(target_arch = "bpf")]
mod nfhook;
#[cfg(target_arch = "bpf")]
mod pktbuf;
// fentry/kprobe backends (issue 6): programs on the netfilter functions, shared bodies in tables.
#[cfg(target_arch = "bpf")]
mod fentry;
#[cfg(target_arch = "bpf")]
mod kprobe;
#[cfg(target_arch = "bpf")]
mod tables;

#[cfg(not(target_arch = "bpf"))]
fn main() {}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// bpf_probe_read_kernel is GPL-only.
#[cfg(target_arch = "bpf")]
#[no_mangle]
#[link_section = "license"]
pub static LICENSE: [u8; 4] = *b"GPL\0";

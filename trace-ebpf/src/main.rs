//! iptrace's eBPF programs, built for bpfel-unknown-none by trace-user's build.rs.
//!
//! On the host (e.g. `cargo build --workspace`) this crate compiles to an empty binary so
//! workspace-wide commands keep working; the programs exist only for `target_arch = "bpf"`.
#![cfg_attr(target_arch = "bpf", no_std, no_main)]

#[cfg(target_arch = "bpf")]
mod probes;

#[cfg(not(target_arch = "bpf"))]
fn main() {}

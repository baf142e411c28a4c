//! iptrace's eBPF programs (built for bpfel-unknown-none by trace-user's build.rs).
#![no_std]
#![no_main]

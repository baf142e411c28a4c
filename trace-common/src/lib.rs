//! The kernel/user ABI of iptrace: every struct that crosses the BPF ring buffer or a BPF map
//! is defined once, here, `#[repr(C)]` with explicit padding and a compile-time size check.
//! (Owned by the nfhook capture work; see issue 3.)
#![no_std]
pub mod filter;
pub mod flowhash;
pub mod record;

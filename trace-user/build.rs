//! Builds the eBPF programs (crate `trace-ebpf`) for bpfel-unknown-none with the nightly
//! toolchain and `-Z build-std=core` (through aya-build), so `cargo build` of the collector is
//! the only build step. The object lands in `$OUT_DIR/trace-ebpf` and is embedded by
//! `trace_user::capture::object`.
//!
//! `AYA_BUILD_SKIP=1` skips the eBPF build (e.g. CI lint jobs without bpf-linker); an empty
//! placeholder object is written so the crate still compiles, and loading reports it.

use std::{env, fs, path::PathBuf};

fn main() -> anyhow::Result<()> {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let object = out_dir.join("trace-ebpf");
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let workspace = manifest
        .parent()
        .expect("trace-user is inside the workspace");
    // The eBPF object also depends on the shared ABI crate (filter, flow hash, records).
    println!(
        "cargo:rerun-if-changed={}",
        workspace.join("trace-common/src").display()
    );
    println!("cargo:rerun-if-changed=build.rs");

    if skip_requested() {
        // aya-build prints its own warning and returns without building anything.
        if !object.exists() {
            fs::write(&object, [])?;
        }
    }
    // aya-build forwards every stderr line of the nested cargo as a cargo warning: keep only
    // real diagnostics (they arrive as JSON messages and are still shown).
    env::set_var("CARGO_TERM_QUIET", "true");
    let ebpf_dir = workspace.join("trace-ebpf");
    let package = aya_build::Package {
        name: "trace-ebpf",
        root_dir: ebpf_dir.to_str().expect("workspace path is UTF-8"),
        ..Default::default()
    };
    aya_build::build_ebpf([package], aya_build::Toolchain::default())
}

fn skip_requested() -> bool {
    env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
}

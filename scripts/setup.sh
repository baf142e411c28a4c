#!/usr/bin/env bash
# Idempotent machine setup for iptrace: Debian packages for the lab and tests, the nightly
# toolchain's rust-src (build-std for bpfel-unknown-none), and bpf-linker 0.13.0 built against
# the nightly toolchain's own libLLVM (Debian has no LLVM 22). Seconds when already done.
set -euo pipefail

log() { printf 'setup: %s\n' "$*" >&2; }

APT_PACKAGES=(iptables nftables iproute2 conntrack tcpdump socat iperf3 ethtool procps kmod util-linux)
BPF_LINKER_VERSION=0.13.0
LLVM_PREFIX=${IPTRACE_LLVM_PREFIX:-/opt/iptrace/llvm-nightly}

apt_packages() {
    local missing=()
    for p in "${APT_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    log "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

rust_src() {
    if rustup component list --toolchain nightly --installed 2>/dev/null | grep -q '^rust-src'; then
        return 0
    fi
    log "adding rust-src to the nightly toolchain"
    rustup component add rust-src --toolchain nightly
}

bpf_linker() {
    if command -v bpf-linker >/dev/null 2>&1 && bpf-linker --version 2>/dev/null | grep -q "$BPF_LINKER_VERSION"; then
        return 0
    fi
    local sysroot llvm soname
    sysroot=$(rustc +nightly --print sysroot)
    llvm=$(ls "$sysroot"/lib/libLLVM.so.*-rust-* 2>/dev/null | head -n1)
    [ -n "$llvm" ] || { log "no libLLVM in the nightly toolchain at $sysroot/lib"; exit 1; }
    soname=$(basename "$llvm")
    mkdir -p "$LLVM_PREFIX/lib"
    ln -sf "$llvm" "$LLVM_PREFIX/lib/libLLVM.so"
    ln -sf "$llvm" "$LLVM_PREFIX/lib/$soname"
    log "building bpf-linker $BPF_LINKER_VERSION against $soname (about a minute)"
    LLVM_PREFIX="$LLVM_PREFIX" cargo +nightly install "bpf-linker@$BPF_LINKER_VERSION" --locked \
        --no-default-features --features llvm-22 --quiet
    bpf-linker --version >&2
}

apt_packages
rust_src
bpf_linker
log "ok"

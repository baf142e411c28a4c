#!/usr/bin/env bash
# Idempotent machine setup for iptrace: Debian packages for the lab and tests (gcc for the C
# parts of the bpf-linker and mimalloc builds), the nightly toolchain's rust-src (build-std for
# bpfel-unknown-none), and bpf-linker 0.13.0 built against the nightly toolchain's own libLLVM
# (Debian has no LLVM 22). Seconds when already done.
set -euo pipefail

log() { printf 'setup: %s\n' "$*" >&2; }

APT_PACKAGES=(gcc libc6-dev iptables nftables iproute2 conntrack tcpdump socat iperf3 ethtool procps kmod util-linux ipset)
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

# What `cargo xtask vm-test` (a tier of `cargo xtask test`) needs on the host. Only
# qemu-system-x86 is installed, from bookworm-backports (bookworm's 7.2 conflicts with the
# image's qemu-utils 10.0); backports is enabled through a private apt configuration under
# target/vm/apt for this one command — the host's sources stay as they are, the .debs stay in
# target/vm/apt/cache. Kernels, busybox and modules are downloaded and unpacked by the xtask
# itself into target/vm (never installed). If this fails (no network): under CI=true, or with
# `--vm`, setup fails; otherwise it says so and goes on (the vm-test tier then skips loudly).
vm_host() {
    if command -v qemu-system-x86_64 >/dev/null 2>&1; then
        return 0
    fi
    local root dir
    root=$(cd "$(dirname "$0")/.." && pwd)
    dir="$root/target/vm/apt"
    mkdir -p "$dir/etc/sources.list.d" "$dir/lists/partial" "$dir/cache/archives/partial" || return 1
    local key=/usr/share/keyrings/debian-archive-keyring.gpg
    {
        echo "deb [signed-by=$key] http://deb.debian.org/debian bookworm main"
        echo "deb [signed-by=$key] http://deb.debian.org/debian bookworm-backports main"
        echo "deb [signed-by=$key] http://deb.debian.org/debian-security bookworm-security main"
    } >"$dir/etc/sources.list"
    local opts=(-o "Dir::Etc::sourcelist=$dir/etc/sources.list" -o "Dir::Etc::sourceparts=$dir/etc/sources.list.d"
        -o "Dir::State::Lists=$dir/lists" -o "Dir::Cache=$dir/cache" -o APT::Get::List-Cleanup=0)
    log "installing qemu-system-x86 from bookworm-backports (private apt config in $dir)"
    export DEBIAN_FRONTEND=noninteractive
    # Called as an `if` condition (set -e is off there): every step checks for itself.
    apt-get "${opts[@]}" update -qq || return 1
    apt-get "${opts[@]}" install -y -qq --no-install-recommends -t bookworm-backports qemu-system-x86 >/dev/null || return 1
    command -v qemu-system-x86_64 >/dev/null
}

in_ci() { [ -n "${CI:-}" ] && [ "${CI:-}" != "false" ] && [ "${CI:-}" != "0" ]; }

apt_packages
rust_src
bpf_linker
if ! (vm_host); then
    if in_ci || [ "${1:-}" = "--vm" ]; then
        log "FAILED: cannot install qemu-system-x86 (bookworm-backports); the QEMU tier of cargo xtask test needs it"
        exit 1
    fi
    log "WARNING: cannot install qemu-system-x86 (bookworm-backports): the vm-test tier will be SKIPPED"
fi
log "ok"

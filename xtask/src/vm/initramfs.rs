//! The guest's initramfs: busybox (Debian's busybox-static), dash as /bin/sh, kmod's modprobe,
//! iproute2, iptables (legacy + nft, with the xtables plugins), nftables — the host's Debian
//! binaries with their libraries found by `ldd` — the kernel's netfilter/veth/bridge modules
//! with their modules.dep closure, the test binaries (host build, libraries by ldd), and an /init that mounts the
//! usual filesystems, loads the modules, runs the guest test and powers off.

use super::apt::run;
use super::cpio::{Archive, Node};
use anyhow::{bail, Context, Result};
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Host programs the guest needs (resolved through symlinks, libraries added with ldd).
const HOST_PROGRAMS: &[&str] = &[
    "/usr/bin/dash",
    "/usr/sbin/ip",
    "/usr/bin/kmod",
    "/usr/sbin/modprobe",
    "/usr/sbin/nft",
    // capture::plan::discover runs `nsenter --net=... nft -j list ruleset`.
    "/usr/bin/nsenter",
    "/usr/sbin/iptables-legacy",
    "/usr/sbin/iptables-legacy-save",
    "/usr/sbin/iptables-legacy-restore",
    "/usr/sbin/ip6tables-legacy",
    "/usr/sbin/ip6tables-legacy-save",
    "/usr/sbin/ip6tables-legacy-restore",
    "/usr/sbin/iptables-nft",
    "/usr/sbin/iptables-nft-save",
    "/usr/sbin/iptables-nft-restore",
    "/usr/sbin/ip6tables-nft",
    "/usr/sbin/ip6tables-nft-save",
    "/usr/sbin/ip6tables-nft-restore",
    // The nft backend's reference trace (trace_user::reference).
    "/usr/sbin/xtables-monitor",
    "/usr/bin/stdbuf",
    "/usr/libexec/coreutils/libstdbuf.so",
];
const HOST_FILES: &[&str] = &["/etc/protocols", "/etc/services", "/etc/ethertypes"];
/// Directory of iptables' extension plugins (dlopen'ed: ldd of the binary does not list them).
const XTABLES_DIR: &str = "/usr/lib/x86_64-linux-gnu/xtables";
/// busybox applets linked into /usr/bin (ip and modprobe stay the real ones).
const APPLETS: &[&str] = &[
    "mount", "umount", "mkdir", "ln", "cat", "echo", "sleep", "poweroff", "reboot", "dmesg",
    "sysctl", "test", "[", "ls", "ps", "kill", "grep", "sed", "head", "tail", "tr", "wc", "uname",
    "true", "false", "rm", "cp", "mv", "chmod", "seq", "timeout", "env", "sort", "cut", "awk",
    "id", "free", "nproc", "date", "touch", "printf", "stat",
];
/// Module trees copied whole (with their dependency closure).
const MODULE_DIRS: &[&str] = &[
    "kernel/net/netfilter",
    "kernel/net/ipv4/netfilter",
    "kernel/net/ipv6/netfilter",
];
/// crc32c: libcrc32c (nf_conntrack, nf_nat) asks the crypto API for it at load time (a
/// softdep modules.dep does not list).
const MODULE_FILES: &[&str] = &[
    "kernel/drivers/net/veth.ko",
    "kernel/drivers/net/dummy.ko",
    "kernel/net/bridge/bridge.ko",
    // docker loads it (bridged traffic through iptables); the host kernel has it too.
    "kernel/net/bridge/br_netfilter.ko",
    "kernel/crypto/crc32c_generic.ko",
    "kernel/arch/x86/crypto/crc32c-intel.ko",
];
/// Loaded by /init before the tests (a missing one is reported, e.g. x_tables on -rt).
pub const GUEST_MODULES: &[&str] = &[
    "crc32c_generic",
    "crc32c-intel",
    "veth",
    "dummy",
    "bridge",
    "br_netfilter",
    "nf_conntrack",
    "nf_nat",
    "x_tables",
    "ip_tables",
    "ip6_tables",
    "iptable_raw",
    "iptable_mangle",
    "iptable_nat",
    "iptable_filter",
    "iptable_security",
    "ip6table_raw",
    "ip6table_mangle",
    "ip6table_nat",
    "ip6table_filter",
    "ip6table_security",
    "xt_conntrack",
    "xt_addrtype",
    "xt_MASQUERADE",
    "xt_nat",
    "xt_TRACE",
    "xt_LOG",
    "xt_mark",
    "xt_comment",
    "xt_multiport",
    "xt_tcpudp",
    "ipt_REJECT",
    "ip6t_REJECT",
    "nf_log_syslog",
    "nf_tables",
    "nft_compat",
    "nft_chain_nat",
    "nft_ct",
    "nft_nat",
    "nft_masq",
    "nft_log",
    "nft_reject_inet",
    "nft_limit",
    "nfnetlink_log",
];

/// What goes into one image.
pub struct ImageSpec<'a> {
    pub kernel_root: &'a Path,
    pub kver: &'a str,
    pub busybox: &'a Path,
    /// (guest path, host file) of the static test binaries.
    pub binaries: Vec<(String, PathBuf)>,
    /// The shell command /init runs after setup (its output is parsed by the host).
    pub command: String,
}

pub fn build(spec: &ImageSpec, out: &Path) -> Result<u64> {
    let mut a = Archive::default();
    for (link, target) in [
        ("bin", "usr/bin"),
        ("sbin", "usr/sbin"),
        ("lib", "usr/lib"),
        ("lib64", "usr/lib64"),
    ] {
        a.add(link, Node::Symlink(target.into()));
    }
    for d in [
        "proc", "sys", "dev", "run", "tmp", "var", "etc", "root", "mnt",
    ] {
        a.add(d, Node::Dir);
    }
    a.add("var/run", Node::Symlink("../run".into()));
    a.add("dev/console", Node::CharDev(5, 1));
    a.add("dev/null", Node::CharDev(1, 3));
    a.add(
        "usr/bin/busybox",
        Node::HostFile(spec.busybox.to_path_buf(), 0o755),
    );
    for app in APPLETS {
        a.add(&format!("usr/bin/{app}"), Node::Symlink("busybox".into()));
    }
    let mut libs = BTreeSet::new();
    for p in HOST_PROGRAMS {
        add_host_path(&mut a, Path::new(p), &mut libs)?;
    }
    a.add("usr/bin/sh", Node::Symlink("dash".into()));
    for f in HOST_FILES.iter().map(Path::new).filter(|p| p.exists()) {
        add_host_path(&mut a, f, &mut libs)?;
    }
    for e in std::fs::read_dir(XTABLES_DIR).with_context(|| format!("read {XTABLES_DIR}"))? {
        add_host_path(&mut a, &e?.path(), &mut libs)?;
    }
    // The test binaries are the host's (same Debian userspace): they bring their libraries too.
    for (guest, host) in &spec.binaries {
        a.add(guest, Node::HostFile(host.clone(), 0o755));
        libs.extend(ldd(host)?);
    }
    while let Some(lib) = libs.pop_first() {
        add_host_path(&mut a, &lib, &mut libs)?;
    }
    add_modules(&mut a, spec.kernel_root, spec.kver)?;
    a.add(
        "init",
        Node::Bytes(init_script(&spec.command).into_bytes(), 0o755),
    );
    a.write(out)
}

fn init_script(command: &str) -> String {
    let modules = GUEST_MODULES.join(" ");
    format!(
        r#"#!/bin/sh
# iptrace VM test guest (generated by `cargo xtask vm-test`).
export PATH=/usr/sbin:/usr/bin HOME=/root
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs run /run
mkdir -p /run/netns /dev/pts
mount -t tmpfs tmp /tmp
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
mount -t bpf bpf /sys/fs/bpf
mount -t securityfs securityfs /sys/kernel/security 2>/dev/null
ip link set lo up
echo "VMTEST kernel $(uname -r) cpus=$(nproc)"
missing=""
for m in {modules}; do modprobe -q $m 2>/dev/null || missing="$missing $m"; done
echo "VMTEST modules-missing${{missing:- none}}"
echo "VMTEST begin"
{command}
echo "VMTEST end rc=$?"
poweroff -f
"#
    )
}

/// Add a host file at the same guest path; symlinks become symlinks (multi-call binaries
/// dispatch on argv[0]); ELF files bring their `ldd` libraries (added later via `libs`).
fn add_host_path(a: &mut Archive, path: &Path, libs: &mut BTreeSet<PathBuf>) -> Result<()> {
    let parent = path.parent().context("path without parent")?;
    let parent = parent
        .canonicalize()
        .with_context(|| format!("canonicalize {}", parent.display()))?;
    let name = path.file_name().context("path without file name")?;
    let real = parent.join(name);
    let guest = real.to_string_lossy().into_owned();
    if a.contains(&guest) {
        return Ok(());
    }
    let meta =
        std::fs::symlink_metadata(&real).with_context(|| format!("stat {}", real.display()))?;
    if meta.file_type().is_symlink() {
        let target = std::fs::read_link(&real)?;
        a.add(&guest, Node::Symlink(target.to_string_lossy().into_owned()));
        return add_host_path(a, &parent.join(target), libs);
    }
    use std::os::unix::fs::PermissionsExt;
    a.add(
        &guest,
        Node::HostFile(real.clone(), meta.permissions().mode() & 0o777),
    );
    if is_elf(&real) {
        for lib in ldd(&real)? {
            if !a.contains(&lib.to_string_lossy()) {
                libs.insert(lib);
            }
        }
    }
    Ok(())
}

fn is_elf(p: &Path) -> bool {
    use std::io::Read;
    let mut m = [0u8; 4];
    std::fs::File::open(p)
        .and_then(|mut f| f.read_exact(&mut m))
        .is_ok()
        && &m == b"\x7fELF"
}

/// Libraries (and the dynamic loader) an ELF file needs, per `ldd`.
fn ldd(p: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(p)
        .output()
        .with_context(|| format!("ldd {}", p.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            let path = match l.split_once("=>") {
                Some((_, rhs)) => rhs.split_whitespace().next()?,
                None => l.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect())
}

/// The kernel's lib/modules/<kver> inside an unpacked linux-image package.
pub fn modules_dir(kernel_root: &Path, kver: &str) -> Result<PathBuf> {
    for base in ["lib/modules", "usr/lib/modules"] {
        let d = kernel_root.join(base).join(kver);
        if d.is_dir() {
            return Ok(d);
        }
    }
    bail!("no lib/modules/{kver} in {}", kernel_root.display())
}

/// Copy the wanted modules and their dependency closure, with depmod's index files (computed
/// once over the whole unpacked tree; entries for modules not copied are never used).
fn add_modules(a: &mut Archive, kernel_root: &Path, kver: &str) -> Result<()> {
    let mdir = modules_dir(kernel_root, kver)?;
    if !mdir.join("modules.dep").exists() {
        let base = mdir
            .parent()
            .and_then(Path::parent)
            .and_then(Path::parent)
            .context("modules dir layout")?;
        let base = if base.ends_with("usr") {
            base.parent().context("layout")?
        } else {
            base
        };
        run(Command::new("depmod").arg("-b").arg(base).arg(kver))?;
    }
    let dep = std::fs::read_to_string(mdir.join("modules.dep"))?;
    let deps: HashMap<&str, Vec<&str>> = dep
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(m, d)| (m, d.split_whitespace().collect()))
        .collect();
    let mut want: Vec<&str> = deps
        .keys()
        .copied()
        .filter(|m| {
            MODULE_DIRS.iter().any(|d| m.starts_with(d))
                || MODULE_FILES.iter().any(|f| m.starts_with(f))
        })
        .collect();
    let mut have = BTreeSet::new();
    while let Some(m) = want.pop() {
        if have.insert(m) {
            want.extend(deps.get(m).into_iter().flatten());
        }
    }
    let guest_dir = format!("usr/lib/modules/{kver}");
    for m in &have {
        a.add(
            &format!("{guest_dir}/{m}"),
            Node::HostFile(mdir.join(m), 0o644),
        );
    }
    for e in std::fs::read_dir(&mdir)? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("modules.") {
            a.add(
                &format!("{guest_dir}/{name}"),
                Node::HostFile(e.path(), 0o644),
            );
        }
    }
    Ok(())
}

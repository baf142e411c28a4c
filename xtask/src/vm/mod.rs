//! `cargo xtask vm-test`: the QEMU kernel matrix for the capture backends (issue 6).
//!
//! For each requested kernel: fetch Debian's stock kernel package (private apt configuration,
//! [`apt`]), build an initramfs with the netfilter tools, modules and the static guest test
//! binary ([`initramfs`]), boot it under QEMU TCG with no network device ([`boot`]), and read
//! the guest's `VMTEST` lines from the serial console. Prints a kernel × backend table and
//! exits non-zero when a test failed or a guest did not finish. See docs/vm-test.md.

mod apt;
mod boot;
mod cpio;
mod initramfs;
mod report;

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The guest test binary (package iptrace-tests). Built for the host target: the guest's
/// userspace is the host's Debian binaries, so its glibc comes along through ldd.
const GUEST_BIN: &str = "iptrace-vm-guest";

#[derive(clap::Parser, Debug)]
#[command(
    name = "cargo xtask vm-test",
    about = "Boot Debian stock kernels in QEMU (TCG) and run the capture backends' tests inside"
)]
pub struct Args {
    /// Kernels to test (repeatable): 6.1 (bookworm), 6.12 and 6.12-rt (bookworm-backports).
    #[arg(long = "kernel", value_parser = ["6.1", "6.12", "6.12-rt"], default_values = ["6.1"])]
    kernels: Vec<String>,
    /// Keep the initramfs images and print the QEMU command lines to boot them again.
    #[arg(long)]
    keep: bool,
    /// Backends the guest tests (comma-separated; nfhook only runs on kernels >= 6.4).
    #[arg(long, default_value = "fentry,kprobe,nfhook")]
    backends: String,
    /// Upper bound of one boot, in seconds (TCG is slow; the guest is killed after this).
    #[arg(long, default_value_t = 900)]
    timeout: u64,
    /// Cache directory for packages, unpacked kernels, images and serial logs.
    #[arg(long, default_value = "target/vm")]
    cache: PathBuf,
}

struct KernelSpec {
    label: &'static str,
    /// apt-cache regex of the package names; the highest version is used.
    pattern: &'static str,
}

const KERNELS: &[KernelSpec] = &[
    KernelSpec {
        label: "6.1",
        pattern: r"^linux-image-6\.1\.0-[0-9]+-amd64-unsigned$",
    },
    KernelSpec {
        label: "6.12",
        pattern: r"^linux-image-6\.12\.[0-9]+\+deb12-amd64-unsigned$",
    },
    KernelSpec {
        label: "6.12-rt",
        pattern: r"^linux-image-6\.12\.[0-9]+\+deb12-rt-amd64-unsigned$",
    },
];

/// `cargo xtask vm-test ...` → exit code.
pub fn main(argv: Vec<String>) -> i32 {
    use clap::Parser;
    let args = Args::parse_from(argv);
    match run(&args) {
        Ok(true) => 0,
        Ok(false) => 1,
        Err(e) => {
            eprintln!("vm-test: error: {e:#}");
            2
        }
    }
}

fn run(args: &Args) -> Result<bool> {
    preflight()?;
    let cache = std::env::current_dir()?.join(&args.cache);
    std::fs::create_dir_all(cache.join("logs"))?;
    let apt = apt::Apt::new(&cache)?;
    apt.update()?;
    let pkgs = cache.join("pkgs");
    let busybox = apt.unpack("busybox-static", &pkgs)?.join("bin/busybox");
    let guest = build_guest()?;
    let mut rows = Vec::new();
    for label in &args.kernels {
        let spec = KERNELS
            .iter()
            .find(|k| k.label == label)
            .context("unknown kernel")?;
        rows.push(run_kernel(
            args, &apt, &pkgs, &cache, spec, &busybox, &guest,
        )?);
    }
    let table = report::table(&rows);
    println!("{table}");
    Ok(rows.iter().all(report::KernelRun::ok))
}

fn run_kernel(
    args: &Args,
    apt: &apt::Apt,
    pkgs: &Path,
    cache: &Path,
    spec: &KernelSpec,
    busybox: &Path,
    guest: &(PathBuf, PathBuf),
) -> Result<report::KernelRun> {
    let mut names = apt.search(spec.pattern)?;
    names.sort_by_key(|n| apt::version_key(n));
    let package = names.pop().with_context(|| {
        format!(
            "no package matches {} in bookworm(-backports)",
            spec.pattern
        )
    })?;
    let root = apt.unpack(&package, pkgs)?;
    let kver = kernel_version(&root)?;
    let image = cache.join(format!("initramfs-{}.cpio", spec.label));
    let command = format!(
        "/vmtest/{GUEST_BIN} --kernel {} --backends {}",
        spec.label, args.backends
    );
    let t = std::time::Instant::now();
    let bytes = initramfs::build(
        &initramfs::ImageSpec {
            kernel_root: &root,
            kver: &kver,
            busybox,
            binaries: vec![
                (format!("vmtest/{GUEST_BIN}"), guest.0.clone()),
                ("usr/bin/iptrace".into(), guest.1.clone()),
            ],
            command,
        },
        &image,
    )?;
    eprintln!(
        "vm: {} ({package}): initramfs {} MB in {:.1}s",
        spec.label,
        bytes >> 20,
        t.elapsed().as_secs_f64()
    );
    let vmlinuz = root.join(format!("boot/vmlinuz-{kver}"));
    let log = cache.join(format!("logs/{}.log", spec.label));
    let boot = boot::Boot {
        kernel: &vmlinuz,
        initrd: &image,
        log: &log,
        timeout: std::time::Duration::from_secs(args.timeout),
    };
    if args.keep {
        eprintln!("vm: boot again with: {}", boot.command_line());
    }
    let outcome = boot.run()?;
    if !args.keep {
        let _ = std::fs::remove_file(&image);
    }
    Ok(report::KernelRun::parse(spec.label, &package, &outcome))
}

fn kernel_version(root: &Path) -> Result<String> {
    for base in ["lib/modules", "usr/lib/modules"] {
        if let Ok(rd) = std::fs::read_dir(root.join(base)) {
            if let Some(e) = rd.flatten().next() {
                return Ok(e.file_name().to_string_lossy().into_owned());
            }
        }
    }
    bail!("no lib/modules/<version> in {}", root.display())
}

/// What the host needs; each missing piece is named with the command that provides it.
fn preflight() -> Result<()> {
    let have = |cmd: &str| {
        Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {cmd}"))
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !have("qemu-system-x86_64") {
        bail!("qemu-system-x86_64 not found: run `scripts/setup.sh --vm` (qemu-system-x86 from bookworm-backports)");
    }
    for tool in ["apt-get", "dpkg", "depmod", "ldd"] {
        if !have(tool) {
            bail!("{tool} not found (the VM matrix builds its guest from Debian packages)");
        }
    }
    Ok(())
}

/// Build the guest test binary and the iptrace CLI (the guest drives it too); returns their
/// paths.
fn build_guest() -> Result<(PathBuf, PathBuf)> {
    eprintln!("vm: building {GUEST_BIN} and iptrace (release)");
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args([
            "build",
            "--quiet",
            "--release",
            "-p",
            "iptrace-tests",
            "--bin",
            GUEST_BIN,
            "-p",
            "trace-user",
            "--bin",
            "iptrace",
        ])
        .status()
        .context("running cargo build")?;
    if !status.success() {
        bail!("building {GUEST_BIN} failed");
    }
    let dir = std::env::current_dir()?.join("target/release");
    let (guest, cli) = (dir.join(GUEST_BIN), dir.join("iptrace"));
    for p in [&guest, &cli] {
        if !p.exists() {
            bail!("{} was not built", p.display());
        }
    }
    Ok((guest, cli))
}

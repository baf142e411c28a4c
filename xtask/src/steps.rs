//! Running commands for the tasks: the workspace root, cargo, root detection, Ctrl-C, and the
//! test tiers of `cargo xtask test` (one list: add a tier by adding a `Tier`).

use anyhow::{bail, Context, Result};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};

/// One tier of `cargo xtask test`.
pub struct Tier {
    pub name: &'static str,
    /// argv; "cargo" means the cargo running this xtask.
    pub argv: &'static [&'static str],
    /// Needs root (skipped loudly otherwise).
    pub root: bool,
}

/// Every test tier, in order. Other developers: register yours here.
pub const TIERS: &[Tier] = &[
    // Plain `cargo test` = the default members (`--workspace` would add the e2e crate and run
    // its tests in parallel); --no-fail-fast: one failing test binary must not hide the rest.
    Tier {
        name: "unit tests (default members)",
        argv: &["cargo", "test", "--no-fail-fast"],
        root: false,
    },
    // The CLI e2e tests run target/debug/iptrace; cargo test does not build other crates' bins.
    Tier {
        name: "build the iptrace binary",
        argv: &["cargo", "build", "-p", "trace-user", "--bin", "iptrace"],
        root: false,
    },
    Tier {
        name: "privileged e2e tests (lab, capture)",
        argv: &[
            "cargo",
            "test",
            "--no-fail-fast",
            "-p",
            "iptrace-tests",
            "--",
            "--test-threads=1",
        ],
        root: true,
    },
    // The QEMU 6.1 leg of the kernel matrix (issue 6, docs/vm-test.md): Debian bookworm's
    // stock kernel under TCG, guest cases on the fentry and kprobe backends (nfhook says
    // SKIP with its reason: 6.1 < 6.4). One VM at a time machine-wide (the shared lock). A
    // host that cannot run a VM at all (no qemu, no network for the Debian packages) skips
    // it loudly — except under CI=true, where that fails the run.
    Tier {
        name: "QEMU kernel matrix, 6.1 leg (vm-test)",
        argv: &[
            "flock",
            "--verbose",
            VM_LOCK,
            "cargo",
            "xtask",
            "vm-test",
            "--kernel",
            "6.1",
            "--backends",
            "fentry,kprobe,nfhook",
            "--skip-unavailable",
        ],
        root: true,
    },
];

/// Machine-wide lock around QEMU runs (they take both cores for minutes).
pub const VM_LOCK: &str = "/tmp/iptrace-vm.lock";

/// The repository root (xtask lives in `<root>/xtask`).
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask has a parent")
        .to_path_buf()
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A command for argv, in the repository root; "cargo" = the cargo running us.
pub fn command(argv: &[&str]) -> Command {
    let program = match argv[0] {
        "cargo" => std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()),
        p => p.to_string(),
    };
    let mut c = Command::new(program);
    c.args(&argv[1..]).current_dir(root());
    c
}

/// Runs argv with inherited stdio; a non-zero exit is an error naming the command.
pub fn run(argv: &[&str]) -> Result<()> {
    eprintln!("xtask: $ {}", argv.join(" "));
    let status = command(argv)
        .status()
        .with_context(|| format!("running {}", argv[0]))?;
    check_interrupted()?;
    if !status.success() {
        bail!("`{}` failed ({status})", argv.join(" "));
    }
    Ok(())
}

/// `scripts/setup.sh` (idempotent: seconds when already done), including the QEMU host
/// packages the vm-test tier needs.
pub fn setup() -> Result<()> {
    run(&["bash", "scripts/setup.sh"])
}

/// `cargo xtask test`: setup, then every tier; all tiers run, failures are summed up.
pub fn test() -> Result<()> {
    setup()?;
    let mut failed = vec![];
    for tier in TIERS {
        if tier.root && !is_root() {
            eprintln!("SKIPPED: tier '{}': needs root", tier.name);
            continue;
        }
        eprintln!("xtask: === {} ===", tier.name);
        let start = std::time::Instant::now();
        let result = run(tier.argv);
        let secs = start.elapsed().as_secs_f64();
        if let Err(e) = result {
            check_interrupted()?;
            eprintln!("xtask: FAILED: {} ({secs:.0}s): {e:#}", tier.name);
            failed.push(tier.name);
        } else {
            eprintln!("xtask: --- {}: ok ({secs:.0}s)", tier.name);
        }
    }
    if !failed.is_empty() {
        bail!("failed tiers: {}", failed.join(", "));
    }
    eprintln!("xtask: all test tiers passed");
    Ok(())
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Ctrl-C reaches the children (same process group) and sets a flag here, so xtask unwinds
/// through its guards (e.g. tears the demo lab down) instead of dying on the spot.
pub fn catch_interrupts() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic.
        unsafe { libc::signal(sig, on_sigint as *const () as libc::sighandler_t) };
    }
}

pub fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

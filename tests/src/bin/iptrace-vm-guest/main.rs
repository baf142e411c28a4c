//! The test program `cargo xtask vm-test` runs as root inside the QEMU guest (host build with its
//! libraries in the initramfs). It prints one `VMTEST result <backend> <case> PASS|FAIL|SKIP
//! <detail>` line per case on the serial console and exits non-zero when a case failed.
//!
//! Cases: the guest environment (module BTF, the lab on both iptables backends, `iptrace
//! doctor`'s pick), then per capture backend the docker scenario captured with the real
//! programs (`scenario`) and its IPv6 counterpart against the kernel's TRACE (`scenario6`).
//!
//! Run outside a VM (e.g. on the host, nfhook only) for a quick check of the IPv6 cases:
//! `iptrace-vm-guest --backends nfhook` (root; the env cases expect the guest's kernel).

mod report;
mod scenario;
// IPv6 cases (a hand-written ip6tables port mapping), on every backend.
mod scenario6;

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let opt = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let kernel = opt("--kernel").unwrap_or_else(|| "?".into());
    let backends = opt("--backends").unwrap_or_else(|| "fentry,kprobe,nfhook".into());
    let backends: Vec<&str> = backends.split(',').filter(|b| !b.is_empty()).collect();
    let mut report = report::Report::default();
    report::run_all(&kernel, &backends, &mut report);
    if report.failed() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

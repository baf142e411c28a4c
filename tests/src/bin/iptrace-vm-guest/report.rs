//! Cases run inside the QEMU guest by `iptrace-vm-guest` (see xtask/src/vm and
//! docs/vm-test.md). Each case prints exactly one `VMTEST result` line; a panic inside a case
//! is caught and reported as FAIL with its message, so one broken case cannot hide the others.

use crate::scenario6::Backend6;
use std::panic::AssertUnwindSafe;
use trace_user::capture::classic::Flavour;
use trace_user::lab::{IptablesBackend, LabNs};

/// Collected outcomes (also printed as they happen).
#[derive(Default)]
pub struct Report {
    failed: usize,
    passed: usize,
}

pub enum Outcome {
    Pass(String),
    Fail(String),
    Skip(String),
}

impl Report {
    pub fn failed(&self) -> bool {
        self.failed > 0 || self.passed == 0
    }

    /// Run one case, print its line.
    pub fn case(&mut self, backend: &str, case: &str, f: impl FnOnce() -> Outcome) {
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(f))
            .unwrap_or_else(|p| Outcome::Fail(format!("panicked: {}", panic_text(&p))));
        let (status, detail) = match outcome {
            Outcome::Pass(d) => {
                self.passed += 1;
                ("PASS", d)
            }
            Outcome::Fail(d) => {
                self.failed += 1;
                ("FAIL", d)
            }
            Outcome::Skip(d) => ("SKIP", d),
        };
        // One line per case: newlines in details would break the host's parser.
        println!(
            "VMTEST result {backend} {case} {status} {}",
            detail.replace('\n', " | ")
        );
    }
}

fn panic_text(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}

/// Every case for this kernel and these backends.
pub fn run_all(kernel: &str, backends: &[&str], report: &mut Report) {
    report.case("env", "module-btf", module_btf);
    for backend in [IptablesBackend::Legacy, IptablesBackend::Nft] {
        report.case("env", &format!("lab-{backend}"), || lab_smoke(backend));
    }
    report.case("env", "doctor-auto", doctor_auto);
    for &b in backends {
        let flavour = match b {
            "fentry" => Flavour::Fentry,
            "kprobe" => Flavour::Kprobe,
            "nfhook" => {
                nfhook_cases(report);
                continue;
            }
            other => {
                report.case(other, "all", || {
                    Outcome::Skip(format!(
                        "no guest cases for backend {other} yet (kernel {kernel})"
                    ))
                });
                continue;
            }
        };
        if flavour == Flavour::Kprobe {
            report.case(b, "rule-positions-legacy", crate::scenario::rule_positions);
            report.case(b, "cli-kprobe", || {
                crate::scenario::cli_capture("kprobe", "backend kprobe")
            });
        } else {
            report.case(b, "rule-positions-legacy", || {
                crate::scenario::rule_positions_with(Flavour::Fentry)
            });
            // auto prefers fentry where it loads.
            report.case(b, "cli-auto", || {
                crate::scenario::cli_capture("auto", "backend fentry")
            });
        }
        report.case(b, "cli-rule-positions", || {
            crate::scenario::cli_rule_positions(flavour)
        });
        for backend in [IptablesBackend::Legacy, IptablesBackend::Nft] {
            report.case(b, &format!("remote-syn-{backend}"), || {
                crate::scenario::remote_syn(flavour, backend)
            });
            report.case(b, &format!("filter-drop-{backend}"), || {
                crate::scenario::filter_drop(flavour, backend)
            });
            report.case(b, &format!("trace-agrees-{backend}"), || {
                crate::scenario::trace_agrees(flavour, backend)
            });
        }
        for backend in [IptablesBackend::Legacy, IptablesBackend::Nft] {
            report.case(b, &format!("trace6-agrees-{backend}"), || {
                crate::scenario6::trace_agrees(Backend6::Classic(flavour), backend)
            });
        }
    }
}

/// (major, minor) of the running kernel.
fn kernel_version() -> (u32, u32) {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut it = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse::<u32>().ok());
    (it.next().unwrap_or(0), it.next().unwrap_or(0))
}

/// `iptrace doctor --json` as a process: every capture backend checked with its real
/// programs, and the pick of `--backend auto`'s selection. Debian's kernels allow fentry, so
/// auto picks it; kprobe works too; nfhook works exactly on kernels with netfilter links.
fn doctor_auto() -> Outcome {
    let out = match std::process::Command::new("/usr/bin/iptrace")
        .args(["doctor", "--json"])
        .output()
    {
        Ok(o) => o,
        Err(e) => return Outcome::Fail(format!("running iptrace doctor: {e}")),
    };
    let json: serde_json::Value = match serde_json::from_slice(&out.stdout) {
        Ok(j) => j,
        Err(e) => {
            return Outcome::Fail(format!(
                "doctor --json: {e}; stderr {}",
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    };
    let row = |b: &str| {
        json["backends"]
            .as_array()
            .and_then(|a| a.iter().find(|r| r["backend"] == b))
            .cloned()
            .unwrap_or_default()
    };
    let ok = |b: &str| row(b)["status"] == "ok" && row(b)["attaches"] == true;
    let nfhook_expected = kernel_version() >= (6, 4);
    let mut problems = Vec::new();
    if json["choice"]["backend"] != "fentry" || json["auto"]["picked"] != "fentry" {
        problems.push(format!(
            "choice {} / auto {}, expected fentry",
            json["choice"]["backend"], json["auto"]["picked"]
        ));
    }
    for b in ["fentry", "kprobe"] {
        if !ok(b) {
            problems.push(format!("{b}: {}", row(b)));
        }
    }
    if ok("nfhook") != nfhook_expected {
        problems.push(format!(
            "nfhook works: {} on a kernel {} 6.4: {}",
            ok("nfhook"),
            if nfhook_expected { ">=" } else { "<" },
            row("nfhook")
        ));
    }
    // Before 6.4 the program type does not exist: "unavailable", not a failure.
    if !nfhook_expected && row("nfhook")["status"] != "unavailable" {
        problems.push(format!(
            "nfhook below 6.4 not unavailable: {}",
            row("nfhook")
        ));
    }
    if out.status.code() != Some(0) {
        problems.push(format!("exit {}", out.status));
    }
    let summary = format!(
        "choice {} ({}); nfhook: {} {}",
        json["choice"]["backend"],
        json["choice"]["reason"].as_str().unwrap_or(""),
        row("nfhook")["status"],
        row("nfhook")["detail"].as_str().unwrap_or("")
    );
    if problems.is_empty() {
        Outcome::Pass(summary)
    } else {
        Outcome::Fail(format!("{}; {summary}", problems.join("; ")))
    }
}

/// The module BTF the fentry backend needs is there once the modules are loaded.
fn module_btf() -> Outcome {
    let want = [
        "vmlinux",
        "ip_tables",
        "nf_tables",
        "nf_nat",
        "nf_conntrack",
    ];
    let missing: Vec<&str> = want
        .iter()
        .copied()
        .filter(|m| !std::path::Path::new(&format!("/sys/kernel/btf/{m}")).exists())
        .collect();
    if missing.is_empty() {
        Outcome::Pass(format!("/sys/kernel/btf has {}", want.join(",")))
    } else {
        Outcome::Fail(format!("no BTF for {missing:?}"))
    }
}

/// The docker lab builds and both test connections work on this iptables backend.
fn lab_smoke(backend: IptablesBackend) -> Outcome {
    let lab = match trace_user::lab::Lab::up(trace_user::lab::LabOptions {
        backend,
        name_prefix: "vm-lab".into(),
        ..Default::default()
    }) {
        Ok(l) => l,
        Err(e) => return Outcome::Fail(format!("lab up: {e}")),
    };
    let remote = lab.run_remote();
    let local = lab.run_local();
    let ns = lab.ns_name(LabNs::Node).to_string();
    let down = lab.down();
    match (remote, local, down) {
        (Ok(r), Ok(l), Ok(())) => Outcome::Pass(format!(
            "netns {ns}: remote from {} local from {}",
            r.local, l.local
        )),
        (r, l, d) => Outcome::Fail(format!(
            "remote {:?} local {:?} down {:?}",
            r.err(),
            l.err(),
            d.err()
        )),
    }
}

/// nfhook needs BPF_PROG_TYPE_NETFILTER links (Linux >= 6.4): on older kernels say so.
fn nfhook_cases(report: &mut Report) {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    if kernel_version() < (6, 4) {
        report.case("nfhook", "all", || {
            Outcome::Skip(format!(
                "kernel {} < 6.4: no BPF netfilter links",
                release.trim()
            ))
        });
        return;
    }
    for backend in [IptablesBackend::Legacy, IptablesBackend::Nft] {
        report.case("nfhook", &format!("remote-syn-{backend}"), || {
            crate::scenario::nfhook_remote_syn(backend)
        });
    }
    for backend in [IptablesBackend::Legacy, IptablesBackend::Nft] {
        report.case("nfhook", &format!("trace6-agrees-{backend}"), || {
            crate::scenario6::trace_agrees(Backend6::Nfhook, backend)
        });
    }
}

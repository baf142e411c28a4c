//! Shared helpers for the privileged end-to-end tests: loud skipping, the lab with test
//! defaults, reading rule counters from `iptables-save -c`, finding the iptrace binary, and
//! leak checks (namespaces, links, processes).
//!
//! Every e2e test starts with `if !e2e::privileged("name") { return; }` (or `require_tools`)
//! and builds its own lab, so tests are independent; run them with `--test-threads=1` (they
//! share the machine's CPU with timing-sensitive captures).

pub mod capture_child;
pub mod fidelity;
pub mod kmsg;
pub mod quiet;

use std::path::PathBuf;
use trace_user::lab::{IptablesBackend, Lab, LabOptions};

/// True when running as root; otherwise prints `SKIPPED: <test>: needs root` and returns false.
pub fn privileged(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    skipped(test, "needs root (network namespaces, iptables, eBPF)");
    false
}

/// Prints `SKIPPED: <test>: <why>` straight to stderr: the test harness captures `eprintln!`
/// of passing tests, and a skip must be seen.
pub fn skipped(test: &str, why: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIPPED: {test}: {why}");
}

/// True when every program is on PATH; otherwise prints which are missing and returns false.
pub fn require_tools(test: &str, tools: &[&str]) -> bool {
    let missing: Vec<&str> = tools
        .iter()
        .copied()
        .filter(|t| which(t).is_none())
        .collect();
    if missing.is_empty() {
        return true;
    }
    skipped(
        test,
        &format!("missing tools {missing:?} (run scripts/setup.sh)"),
    );
    false
}

/// The path of `program` on PATH.
pub fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| PathBuf::from(d).join(program))
        .find(|p| p.is_file())
}

/// Tools the lab needs on each backend.
pub fn lab_tools(backend: IptablesBackend) -> Vec<String> {
    vec![
        "ip".into(),
        "sysctl".into(),
        backend.restore_bin(),
        backend.save_bin(),
    ]
}

/// `privileged` + the backend's tools.
pub fn lab_ready(test: &str, backend: IptablesBackend) -> bool {
    let tools = lab_tools(backend);
    privileged(test) && require_tools(test, &tools.iter().map(String::as_str).collect::<Vec<_>>())
}

/// A lab with test defaults (prefix `e2e-lab`, in-process server).
pub fn lab(backend: IptablesBackend, trace_rules: bool) -> Lab {
    let opts = LabOptions {
        backend,
        trace_rules,
        name_prefix: "e2e-lab".into(),
        ..LabOptions::default()
    };
    Lab::up(opts).unwrap_or_else(|e| panic!("lab up ({backend}): {e}"))
}

/// (packets, bytes) of the rule `-A <rule>` of `table` in `iptables-save -c` output. The rule
/// text must match exactly (as printed by iptables-save).
pub fn rule_counter(save: &str, table: &str, rule: &str) -> Option<(u64, u64)> {
    let mut cur = "";
    for line in save.lines() {
        if let Some(t) = line.strip_prefix('*') {
            cur = t;
            continue;
        }
        let Some((counts, r)) = line.strip_prefix('[').and_then(|l| l.split_once("] -A ")) else {
            continue;
        };
        if cur == table && r == rule {
            let (p, b) = counts.split_once(':')?;
            return Some((p.parse().ok()?, b.parse().ok()?));
        }
    }
    None
}

/// The iptrace binary for CLI tests: $IPTRACE_BIN, else target/{debug,release}/iptrace.
pub fn iptrace_bin() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("IPTRACE_BIN") {
        return Some(p.into());
    }
    let target = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target");
    ["debug", "release"]
        .iter()
        .map(|p| target.join(p).join("iptrace"))
        .find(|p| p.is_file())
}

/// Names of links in the namespace this test runs in (the root namespace).
pub fn root_links() -> Vec<String> {
    let out = std::process::Command::new("ip")
        .args(["-o", "link", "show"])
        .output()
        .expect("ip link");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .collect()
}

/// True while /proc/PID exists and is not a zombie (zombies are reaped by init shortly).
pub fn process_running(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(") ")
            .map(|(_, rest)| !rest.starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule_counter_reads_the_right_table() {
        let save = "*nat\n:DOCKER - [0:0]\n[1:60] -A DOCKER -j RETURN\nCOMMIT\n*filter\n[7:9] -A DOCKER -j RETURN\nCOMMIT\n";
        assert_eq!(rule_counter(save, "nat", "DOCKER -j RETURN"), Some((1, 60)));
        assert_eq!(
            rule_counter(save, "filter", "DOCKER -j RETURN"),
            Some((7, 9))
        );
        assert_eq!(rule_counter(save, "raw", "DOCKER -j RETURN"), None);
    }
}

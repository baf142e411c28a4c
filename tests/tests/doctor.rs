//! `iptrace doctor` end to end (root): the JSON report is complete, its exit code follows
//! the backend choice, and the netfilter-link probe's temporary namespace is gone afterwards.

use iptrace_tests as e2e;

#[test]
fn doctor_json_is_complete_and_exit_code_follows_the_choice() {
    let test = "doctor_json_is_complete_and_exit_code_follows_the_choice";
    if !e2e::privileged(test) {
        return;
    }
    let Some(bin) = e2e::iptrace_bin() else {
        e2e::skipped(
            test,
            "no iptrace binary (cargo build -p trace-user, or set IPTRACE_BIN)",
        );
        return;
    };
    let before = namespaces();
    let out = std::process::Command::new(&bin)
        .args(["doctor", "--json"])
        .output()
        .unwrap();
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("doctor --json prints JSON");
    let mechanisms: Vec<&str> = report["attach"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["mechanism"].as_str().unwrap())
        .collect();
    assert_eq!(mechanisms, ["kprobe", "fentry", "tp_btf", "netfilter_link"]);
    for p in report["attach"].as_array().unwrap() {
        let status = p["status"].as_str().unwrap();
        assert!(
            ["ok", "unavailable", "refused", "failed"].contains(&status),
            "{p}"
        );
        assert!(!p["detail"].as_str().unwrap().is_empty(), "{p}");
    }
    let chosen = !report["choice"]["backend"].is_null();
    assert_eq!(
        out.status.code(),
        Some(if chosen { 0 } else { 1 }),
        "{report}"
    );
    assert!(!report["kernel"]["release"].as_str().unwrap().is_empty());
    assert!(report["lockdown"]["mode"].is_string());
    let leaked: Vec<_> = namespaces()
        .into_iter()
        .filter(|n| n.starts_with("iptrace-doctor-") && !before.contains(n))
        .collect();
    assert!(leaked.is_empty(), "doctor left namespaces: {leaked:?}");
}

/// On a kernel with BPF netfilter links (>= 6.4) running as root, that probe must succeed:
/// the nfhook backend depends on it.
#[test]
fn doctor_netfilter_link_works_on_6_4_and_later() {
    let test = "doctor_netfilter_link_works_on_6_4_and_later";
    if !e2e::privileged(test) {
        return;
    }
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let mut parts = release
        .trim()
        .split(['.', '-'])
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    if (major, minor) < (6, 4) {
        e2e::skipped(
            test,
            &format!("kernel {} has no BPF netfilter links", release.trim()),
        );
        return;
    }
    let btf = trace_user::btf::Btf::vmlinux().ok();
    let probes = trace_user::doctor::probes::run_all(btf.as_ref());
    let nf = probes
        .iter()
        .find(|p| p.mechanism == trace_user::doctor::report::Mechanism::NetfilterLink)
        .unwrap();
    assert_eq!(
        nf.status,
        trace_user::doctor::report::Status::Ok,
        "{}",
        nf.detail
    );
}

fn namespaces() -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default()
}

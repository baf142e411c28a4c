//! `iptrace doctor` end to end (root): the JSON report is complete, its exit code follows
//! the backend choice, the netfilter-link probe's temporary namespace is gone afterwards, and
//! the backend it names is the one `iptrace capture --backend auto` takes.

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

/// Each capture backend's own check (its real programs loaded and attached) is consistent with
/// the kernel's mechanisms, the choice follows fentry > kprobe > nfhook over those checks, and
/// `iptrace capture --backend auto` on a namespace of ours announces the same backend. On this
/// project's machines: fentry refused (EPERM), kprobe unavailable (no CONFIG_KPROBES), nfhook
/// ok → nfhook; on a stock kernel: fentry.
#[test]
fn doctor_backend_choice_is_what_capture_auto_takes() {
    let test = "doctor_backend_choice_is_what_capture_auto_takes";
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
    let out = std::process::Command::new(&bin)
        .args(["doctor", "--json"])
        .output()
        .unwrap();
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("doctor --json prints JSON");
    let rows = report["backends"].as_array().expect("backends");
    let names: Vec<&str> = rows
        .iter()
        .map(|r| r["backend"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["fentry", "kprobe", "nfhook"]);
    let mechanism = |m: &str| {
        report["attach"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["mechanism"] == m)
            .unwrap()["status"]
            .clone()
    };
    let mut works = Vec::new();
    for (row, m) in rows.iter().zip(["fentry", "kprobe", "netfilter_link"]) {
        let ok = row["status"] == "ok";
        assert_eq!(ok, row["attaches"] == true, "{row}");
        assert!(row["loads"] == true || row["attaches"] == false, "{row}");
        assert!(!row["detail"].as_str().unwrap().is_empty(), "{row}");
        // The backend cannot work where the kernel refuses its mechanism outright.
        if mechanism(m) != "ok" {
            assert!(!ok, "{row} works although {m} is {}", mechanism(m));
        }
        if ok {
            works.push(row["backend"].as_str().unwrap());
        }
    }
    let expected = works.first().copied();
    assert_eq!(report["choice"]["backend"].as_str(), expected, "{report}");
    let auto = report["auto"]["picked"].as_str().expect("auto picked");
    assert_eq!(
        auto,
        works
            .iter()
            .copied()
            .find(|b| *b != "nfhook")
            .unwrap_or("nfhook")
    );
    let reason = report["choice"]["reason"].as_str().unwrap();
    eprintln!("{test}: doctor: {} ({reason})", report["choice"]["backend"]);
    let Some(expected) = expected else {
        e2e::skipped(
            test,
            "no capture backend works here: nothing to cross-check",
        );
        return;
    };
    // The same choice from capture itself.
    let ns = trace_user::netns::NetnsGuard::create("doctor-h6").unwrap();
    let cap = std::process::Command::new(&bin)
        .args(["capture", "--backend", "auto", "--netns", ns.name()])
        .args(["--duration", "1", "--packets", "--format", "json"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&cap.stderr);
    assert!(cap.status.success(), "capture --backend auto: {stderr}");
    let announced: Vec<&str> = stderr
        .lines()
        .filter_map(|l| l.strip_prefix("iptrace capture: backend "))
        .filter(|l| !l.contains(" unavailable: "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(announced.first().copied(), Some(expected), "{stderr}");
    ns.delete().unwrap();
}

fn namespaces() -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default()
}

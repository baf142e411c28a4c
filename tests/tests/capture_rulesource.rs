//! `iptrace capture` with live rule dumps (root): a rule inserted during the capture is seen
//! as a new generation — the connection before the change is reconstructed against the old
//! positions, the one after against the new — and `-m addrtype` is decided from the netns's
//! own addresses, not assumed. Skips loudly without root, the lab's tools, or the binary.

use std::process::Command;
use std::time::Duration;

use iptrace_tests as e2e;
use iptrace_tests::capture_child::{CaptureChild, QUIET_PERIOD};
use iptrace_tests::quiet::Quiet;
use serde_json::Value;
use trace_user::lab::{topology, IptablesBackend, Lab, LabNs};

/// Starts `iptrace capture ARGS` on the lab's node netns; returns once the probes are attached
/// (its stdout read as it comes: a full pipe would stall the collector, and with it the rule
/// refreshes this test is about).
fn start_capture(test: &str, bin: &std::path::Path, lab: &Lab, args: &[&str]) -> CaptureChild {
    let mut cmd = Command::new(bin);
    cmd.args(["capture", "--backend", "nfhook", "--netns"])
        .arg(lab.ns_path(LabNs::Node))
        .args(args);
    CaptureChild::start(test, &mut cmd)
}

/// The lab's namespaces, watched for the end of the traffic.
fn quiet(lab: &Lab) -> Quiet {
    Quiet::watch(&[LabNs::Peer, LabNs::Node, LabNs::Ctr].map(|n| lab.ns_path(n)))
}

/// The JSON packets (summary line dropped) of the capture's stdout.
fn packets(stdout: &[u8]) -> Vec<Value> {
    let text = String::from_utf8_lossy(stdout);
    text.lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("JSON line"))
        .filter(|v| v.get("summary").is_none())
        .collect()
}

/// The SYN (first packet) of the connection from `sport`.
fn syn_of(pkts: &[Value], sport: u16) -> &Value {
    pkts.iter()
        .find(|p| {
            p["packet"]["l4"]["sport"] == sport
                && p["packet"]["l4"]["flags"]
                    .as_u64()
                    .is_some_and(|f| f & 0x12 == 0x02)
        })
        .unwrap_or_else(|| panic!("no packet from port {sport}: {pkts:#?}"))
}

/// Every step of the packet's first (chosen) paths, in order.
fn steps(p: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for h in p["hooks"].as_array().into_iter().flatten() {
        for t in h["tables"].as_array().into_iter().flatten() {
            for s in t["path"]["steps"].as_array().into_iter().flatten() {
                out.push(s["step"].as_str().unwrap_or_default().to_string());
            }
        }
    }
    out
}

/// The nat table of the packet's PREROUTING pass.
fn nat_prerouting(p: &Value) -> &Value {
    p["hooks"]
        .as_array()
        .and_then(|hs| hs.iter().find(|h| h["hook"] == "PREROUTING"))
        .and_then(|h| h["tables"].as_array())
        .and_then(|ts| ts.iter().find(|t| t["table"] == "nat"))
        .unwrap_or_else(|| panic!("no nat PREROUTING table: {p:#}"))
}

fn rule_change_is_a_new_generation(backend: IptablesBackend) {
    let test = format!("capture_rulesource_{backend}");
    if !e2e::lab_ready(&test, backend) {
        return;
    }
    let Some(bin) = e2e::iptrace_bin() else {
        e2e::skipped(&test, "no iptrace binary (cargo build first)");
        return;
    };
    let lab = e2e::lab(backend, false);
    let filter = format!("tcp and host {}", topology::PEER_IP);
    let recording = std::env::temp_dir().join(format!(
        "capture-rulesource-{}-{backend}.iptrace",
        std::process::id()
    ));
    let rec = recording.to_str().expect("utf-8 temp path");
    let mut quiet = quiet(&lab);
    let capture = start_capture(
        &test,
        &bin,
        &lab,
        &[
            "--rules-interval",
            "0.1",
            // A safety cap: stopped once the second connection is over.
            "--duration",
            "12",
            "--format",
            "json",
            "--write",
            rec,
            &filter,
        ],
    );
    let first = lab.run_remote().expect("first connection");
    std::thread::sleep(Duration::from_millis(600));
    // Matches the remote connection and only counts: the path gains a step, RETURN moves to 2.
    let ipt = backend.to_string();
    let ipt = format!("iptables-{ipt}");
    let rule = [
        "-t",
        "filter",
        "-I",
        "DOCKER-USER",
        "1",
        "-s",
        topology::PEER_IP,
        "-m",
        "comment",
        "--comment",
        "iptrace-e2e",
    ];
    lab.exec(LabNs::Node, &[&[ipt.as_str()][..], &rule[..]].concat())
        .expect("insert rule");
    std::thread::sleep(Duration::from_millis(600));
    let second = lab.run_remote().expect("second connection");
    let done = capture.stop_when_quiet(&mut quiet, QUIET_PERIOD);
    drop(quiet);
    lab.down().unwrap();
    assert!(done.status.success(), "iptrace capture failed");
    let pkts = packets(done.stdout.as_bytes());
    let old = steps(syn_of(&pkts, first.local.port()));
    let new = steps(syn_of(&pkts, second.local.port()));
    eprintln!("{test}: before the change {old:?}\n{test}: after the change {new:?}");
    assert!(
        old.iter().any(|s| s == "filter:DOCKER-USER:return:1"),
        "first SYN against the old dump: {old:?}"
    );
    assert!(
        !old.iter().any(|s| s == "filter:DOCKER-USER:rule:1"),
        "first SYN against the old dump: {old:?}"
    );
    assert!(
        new.iter().any(|s| s == "filter:DOCKER-USER:rule:1"),
        "second SYN against the new dump: {new:?}"
    );
    assert!(
        new.iter().any(|s| s == "filter:DOCKER-USER:return:2"),
        "second SYN against the new dump: {new:?}"
    );
    // The recording holds both generations: the offline replay gives the same two paths.
    let replay = Command::new(&bin)
        .args(["replay", "--format", "json"])
        .arg(&recording)
        .output()
        .expect("iptrace replay");
    let _ = std::fs::remove_file(&recording);
    assert!(
        replay.status.success(),
        "{}",
        String::from_utf8_lossy(&replay.stderr)
    );
    let offline = packets(&replay.stdout);
    assert_eq!(
        steps(syn_of(&offline, first.local.port())),
        old,
        "replayed first SYN"
    );
    assert_eq!(
        steps(syn_of(&offline, second.local.port())),
        new,
        "replayed second SYN"
    );
    // -m addrtype --dst-type LOCAL (nat PREROUTING → DOCKER) decided from the node's addresses.
    for (what, syn) in [
        ("first", syn_of(&pkts, first.local.port())),
        ("second", syn_of(&pkts, second.local.port())),
    ] {
        let nat = nat_prerouting(syn);
        assert_eq!(nat["status"], "confirmed", "{what} SYN: {nat:#}");
        assert_eq!(
            nat["path"]["assumptions"].as_array().map(Vec::len),
            Some(0),
            "{what} SYN: addrtype assumed: {nat:#}"
        );
        assert_eq!(
            nat["alternatives"].as_array().map(Vec::len),
            Some(0),
            "{what} SYN: {nat:#}"
        );
        assert!(
            steps(syn).iter().any(|s| s == "nat:DOCKER:rule:3"),
            "{what} SYN DNAT: {:?}",
            steps(syn)
        );
    }
}

#[test]
fn capture_rule_change_legacy() {
    rule_change_is_a_new_generation(IptablesBackend::Legacy);
}

#[test]
fn capture_rule_change_nft() {
    rule_change_is_a_new_generation(IptablesBackend::Nft);
}

/// `--rules FILE` replaces the live dumps: the SYN follows the file's rules (an extra
/// DOCKER-USER rule the netns does not have), not the netns's.
#[test]
fn capture_rules_file_overrides_live_dumps() {
    let test = "capture_rules_file_overrides_live_dumps";
    if !e2e::lab_ready(test, IptablesBackend::Legacy) {
        return;
    }
    let Some(bin) = e2e::iptrace_bin() else {
        e2e::skipped(test, "no iptrace binary (cargo build first)");
        return;
    };
    let lab = e2e::lab(IptablesBackend::Legacy, false);
    let live = lab.iptables_save().expect("iptables-save");
    let edited = live.replace(
        "-A DOCKER-USER -j RETURN",
        &format!(
            "-A DOCKER-USER -s {}/32 -m comment --comment from-file\n-A DOCKER-USER -j RETURN",
            topology::PEER_IP
        ),
    );
    assert_ne!(edited, live, "the lab has DOCKER-USER's RETURN");
    let file = std::env::temp_dir().join(format!(
        "capture-rulesource-{}-rules.txt",
        std::process::id()
    ));
    std::fs::write(&file, edited).unwrap();
    let filter = format!("tcp and src host {}", topology::PEER_IP);
    let capture = start_capture(
        test,
        &bin,
        &lab,
        &[
            "--rules",
            file.to_str().unwrap(),
            "--count",
            "1",
            "--duration",
            "10",
            "--format",
            "json",
            &filter,
        ],
    );
    let ex = lab.run_remote().expect("connection");
    let done = capture.wait();
    lab.down().unwrap();
    let _ = std::fs::remove_file(&file);
    assert!(done.status.success());
    let path = steps(syn_of(&packets(done.stdout.as_bytes()), ex.local.port()));
    assert!(
        path.iter().any(|s| s == "filter:DOCKER-USER:rule:1")
            && path.iter().any(|s| s == "filter:DOCKER-USER:return:2"),
        "{path:?}"
    );
}

/// A `--rules` file that does not parse: exit 2 naming file and line, before anything is
/// attached, and no half-written recording.
#[test]
fn capture_bad_rules_file_is_refused() {
    let test = "capture_bad_rules_file_is_refused";
    if !e2e::privileged(test) {
        return;
    }
    let Some(bin) = e2e::iptrace_bin() else {
        e2e::skipped(test, "no iptrace binary (cargo build first)");
        return;
    };
    let dir = std::env::temp_dir();
    let bad = dir.join(format!("capture-rulesource-{}-bad.txt", std::process::id()));
    let rec = dir.join(format!(
        "capture-rulesource-{}-bad.iptrace",
        std::process::id()
    ));
    std::fs::write(&bad, "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -j\nCOMMIT\n").unwrap();
    let out = Command::new(&bin)
        .args(["capture", "--count", "1", "--rules"])
        .arg(&bad)
        .arg("--write")
        .arg(&rec)
        .arg("tcp")
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&bad);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(bad.to_str().unwrap()) && err.contains(":3"),
        "names file and line: {err}"
    );
    assert!(!err.contains("probes attached"), "{err}");
    assert!(!rec.exists(), "no recording written");
}

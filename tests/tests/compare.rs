//! Privileged e2e: `ReferenceTracer` collects the kernel's own TRACE output in the lab (legacy:
//! /dev/kmsg with nf_log_all_netns; nft: `nft -a monitor trace` inside the netns), the compare
//! parsers read it back, and the paths are the ones the kernel is known to print for the
//! docker scenario. Afterwards nothing of the tracer remains (rules, sysctl, raw table).
//!
//! Skips loudly when not root or when a tool is missing.

use std::path::Path;
use trace_core::compare::captured::{CapturedHeaders, CapturedPacket};
use trace_core::compare::nft_ruleset;
use trace_core::compare::reference::{self, RefPacket};
use trace_core::compare::resolve::Resolver;
use trace_core::netfilter::Family;
use trace_user::lab::{IptablesBackend, Lab, LabNs, LabOptions, LabTest};
use trace_user::reference::{
    agreement, agreement_in_scope, ReferenceTracer, TraceSelector, TraceTarget,
};

/// Root and the tools of the lab, the tracer and the backend (shared e2e helpers).
fn ready(test: &str, backend: IptablesBackend) -> bool {
    let tools = [
        "nsenter".to_string(),
        "stdbuf".into(),
        "nft".into(),
        format!("iptables-{}", backend.as_str()),
    ];
    iptrace_tests::lab_ready(test, backend)
        && iptrace_tests::require_tools(test, &tools.iter().map(String::as_str).collect::<Vec<_>>())
}

fn lab(backend: IptablesBackend) -> Lab {
    let opts = LabOptions {
        backend,
        trace_rules: false,
        name_prefix: "cmp-e2e".into(),
        ..LabOptions::default()
    };
    Lab::up(opts).unwrap_or_else(|e| panic!("lab up ({backend}): {e}"))
}

fn selector(test: LabTest) -> TraceSelector {
    let (dst, port) = match test {
        LabTest::Remote => ("192.168.64.4/32", 10000),
        LabTest::Local => ("172.19.0.0/16", 80),
    };
    TraceSelector {
        dst: Some(dst.into()),
        proto: Some("tcp".into()),
        dport: Some(port),
        ..Default::default()
    }
}

/// One traced connection: the kernel's output parsed, the packets of our client port, the
/// resolver built from the rulesets taken while the TRACE rules were in place.
struct Traced {
    packets: Vec<RefPacket>,
    dump: trace_core::rules::Ruleset,
    nft: Option<nft_ruleset::NftRuleset>,
    lost: u64,
}

fn trace_one(lab: &Lab, backend: IptablesBackend, test: LabTest) -> Traced {
    let target = TraceTarget {
        netns: lab.ns_path(LabNs::Node),
        backend,
        family: Family::Ipv4,
    };
    let tracer = ReferenceTracer::start(target, &selector(test), true).expect("tracer start");
    let snap = tracer.snapshot_rulesets().expect("ruleset snapshot");
    let save = snap.iptables_save.clone();
    assert!(
        save.contains("iptrace-compare-"),
        "TRACE rule inserted:\n{save}"
    );
    assert_eq!(snap.nft_ruleset.is_some(), backend == IptablesBackend::Nft);
    let nft = snap
        .nft_ruleset
        .as_deref()
        .map(|t| nft_ruleset::parse(t).expect("nft ruleset parses"));
    let ex = lab.run(test).expect("lab traffic");
    let out = tracer.finish().expect("tracer finish");
    assert!(
        out.warnings.is_empty(),
        "{backend} {test}: {:?}",
        out.warnings
    );
    let parsed = reference::parse(&out.text, Some(out.format));
    assert!(
        parsed.malformed.is_empty(),
        "kernel output parses: {:?}",
        parsed.malformed
    );
    let port = ex.local.port();
    let packets = parsed
        .packets
        .into_iter()
        .filter(|p| p.headers.iter().any(|h| h.sport == Some(port)))
        .collect();
    let dump = trace_core::rules::parse(&save).expect("dump parses");
    Traced {
        packets,
        dump,
        nft,
        lost: out.lost,
    }
}

fn paths(t: &Traced) -> Vec<Vec<String>> {
    let resolver = Resolver::new(Some(&t.dump), t.nft.as_ref());
    t.packets
        .iter()
        .map(|p| {
            p.steps()
                .iter()
                .map(|s| resolver.step(s).unwrap().to_string())
                .collect()
        })
        .collect()
}

const REMOTE_SYN: [&str; 13] = [
    "raw:PREROUTING:policy:2",
    "mangle:PREROUTING:policy:1",
    "nat:PREROUTING:rule:1",
    "nat:DOCKER:rule:3",
    "mangle:FORWARD:policy:1",
    "filter:FORWARD:rule:1",
    "filter:DOCKER-USER:return:1",
    "filter:FORWARD:rule:2",
    "filter:DOCKER-ISOLATION-STAGE-1:return:3",
    "filter:FORWARD:rule:8",
    "filter:DOCKER:rule:1",
    "mangle:POSTROUTING:policy:1",
    "nat:POSTROUTING:policy:4",
];

const LOCAL_SYN: [&str; 6] = [
    "raw:OUTPUT:policy:2",
    "mangle:OUTPUT:policy:1",
    "nat:OUTPUT:policy:2",
    "filter:OUTPUT:policy:1",
    "mangle:POSTROUTING:policy:1",
    "nat:POSTROUTING:policy:4",
];

/// nft shows the TRACE rule itself (raw rule 1); legacy starts after it.
fn from_trace_point(backend: IptablesBackend, mut p: Vec<String>) -> Vec<String> {
    if backend == IptablesBackend::Nft {
        assert!(
            p[0].starts_with("raw:") && p[0].ends_with(":rule:1"),
            "nft trace starts at the TRACE rule: {p:?}"
        );
        p.remove(0);
    }
    p
}

fn check_backend(backend: IptablesBackend) {
    let test = format!("compare_tracer_{backend}");
    if !ready(&test, backend) {
        return;
    }
    let prev_sysctl = std::fs::read_to_string("/proc/sys/net/netfilter/nf_log_all_netns").unwrap();
    let lab = lab(backend);
    let raw_listing = |lab: &Lab| {
        lab.exec(LabNs::Node, &["nft", "list", "table", "ip", "raw"])
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
    };
    for (t, syn) in [
        (LabTest::Remote, &REMOTE_SYN[..]),
        (LabTest::Local, &LOCAL_SYN[..]),
    ] {
        if backend == IptablesBackend::Nft && t == LabTest::Local {
            // Second run without a raw table: iptables-nft creates it for the TRACE rule and
            // the tracer must remove it again.
            lab.exec(LabNs::Node, &["nft", "delete", "table", "ip", "raw"])
                .expect("delete raw");
        }
        let raw_before = raw_listing(&lab).ok();
        let traced = trace_one(&lab, backend, t);
        assert_eq!(traced.lost, 0, "{backend} {t}: kernel records lost");
        let ps = paths(&traced);
        eprintln!(
            "{backend} {t}: kernel traced {} packets of the connection; SYN: {:?}",
            ps.len(),
            ps[0]
        );
        // SYN, ACK, data, FIN, final ACK(s): at least 4 client packets, all traced.
        assert!(
            ps.len() >= 4,
            "{backend} {t}: {} traced packets: {ps:?}",
            ps.len()
        );
        assert_eq!(
            from_trace_point(backend, ps[0].clone()),
            syn,
            "{backend} {t}: SYN path"
        );
        for later in &ps[1..] {
            let later = from_trace_point(backend, later.clone());
            assert!(
                !later.iter().any(|s| s.starts_with("nat:")),
                "{backend} {t}: established packets skip nat: {later:?}"
            );
            if t == LabTest::Remote {
                assert!(
                    later.contains(&"filter:FORWARD:rule:7".to_string()),
                    "{backend}: ESTABLISHED accepted by rule 7: {later:?}"
                );
            }
        }
        // Nothing of the tracer remains.
        let save = lab.iptables_save().unwrap();
        assert!(
            !save.contains("iptrace-compare-") && !save.contains("-j TRACE"),
            "{backend} {t}: rules removed:\n{save}"
        );
        if backend == IptablesBackend::Nft {
            let raw_after = raw_listing(&lab).ok();
            assert_eq!(
                raw_after.is_some(),
                raw_before.is_some(),
                "{backend} {t}: raw table existence restored"
            );
            assert!(
                !raw_after.unwrap_or_default().contains("nftrace"),
                "{backend} {t}: nftrace rule removed"
            );
        }
        assert_eq!(
            std::fs::read_to_string("/proc/sys/net/netfilter/nf_log_all_netns").unwrap(),
            prev_sysctl,
            "sysctl restored"
        );
    }
    lab.down().expect("lab down");
}

#[test]
fn compare_tracer_legacy() {
    check_backend(IptablesBackend::Legacy);
}

#[test]
fn compare_tracer_nft() {
    check_backend(IptablesBackend::Nft);
}

#[test]
fn compare_tracer_cleans_up_on_drop_and_compares() {
    let backend = IptablesBackend::Legacy;
    if !ready("compare_tracer_cleans_up_on_drop", backend) {
        return;
    }
    let lab = lab(backend);
    let target = TraceTarget {
        netns: lab.ns_path(LabNs::Node),
        backend,
        family: Family::Ipv4,
    };
    {
        let _t = ReferenceTracer::start(target.clone(), &selector(LabTest::Remote), true).unwrap();
        assert!(lab.iptables_save().unwrap().contains("iptrace-compare-"));
        // dropped here as on a panic or Ctrl-C unwinding
    }
    assert!(
        !lab.iptables_save().unwrap().contains("iptrace-compare-"),
        "drop removed the rules"
    );
    // A traced run compared through `agreement` with what iptrace reconstructs for it (here:
    // the kernel's own paths plus the TRACE rule step a full reconstruction starts with)
    // agrees packet by packet; one wrong rule number is a disagreement.
    let tracer = ReferenceTracer::start(target, &selector(LabTest::Remote), true).unwrap();
    let snap = tracer.snapshot_rulesets().unwrap();
    let ex = lab.run(LabTest::Remote).unwrap();
    let out = tracer.finish().unwrap();
    let dump = trace_core::rules::parse(&snap.iptables_save).unwrap();
    let resolver = Resolver::new(Some(&dump), None);
    let parsed = reference::parse(&out.text, Some(out.format));
    let ours: Vec<&RefPacket> = parsed
        .packets
        .iter()
        .filter(|p| p.headers.iter().any(|h| h.sport == Some(ex.local.port())))
        .collect();
    let mut captured = kernel_paths_as_captured(&ours, &resolver);
    assert!(captured.len() >= 4);
    let report = agreement(&out, &captured, &snap).unwrap();
    assert_eq!(
        report.totals.agree,
        captured.len(),
        "{}",
        report.render_text(3)
    );
    assert_eq!(report.exit_code(), 0);
    let syn_path = &mut captured[0].steps;
    let at = syn_path
        .iter()
        .position(|s| s.to_string() == "filter:FORWARD:rule:8")
        .expect("SYN through FORWARD rule 8");
    syn_path[at] = "filter:FORWARD:rule:7".parse().unwrap();
    let report = agreement(&out, &captured, &snap).unwrap();
    assert_eq!(
        (report.totals.differ, report.exit_code()),
        (1, 1),
        "{}",
        report.render_text(3)
    );
    lab.down().unwrap();
}

/// The kernel's TRACE paths of `packets` as iptrace would reconstruct them (the TRACE rule's
/// own step first, as a full reconstruction starts with it).
fn kernel_paths_as_captured(packets: &[&RefPacket], resolver: &Resolver) -> Vec<CapturedPacket> {
    packets
        .iter()
        .enumerate()
        .map(|(index, p)| CapturedPacket {
            index,
            ts_ns: None,
            headers: p
                .headers
                .iter()
                .map(|h| CapturedHeaders {
                    src: h.src.unwrap(),
                    dst: h.dst.unwrap(),
                    proto: h.proto,
                    sport: h.sport,
                    dport: h.dport,
                    id: h.id,
                    len: h.len,
                    seq: h.seq,
                    ack: h.ack,
                    tcp_flags: h.tcp_flags,
                    frag: None,
                    icmp_id: None,
                    icmp_seq: None,
                    ipv6: None,
                })
                .collect(),
            steps: std::iter::once("raw:PREROUTING:rule:1".parse().unwrap())
                .chain(p.steps().iter().map(|s| resolver.step(s).unwrap()))
                .collect(),
            table_paths: Vec::new(),
            implicit_returns: None,
        })
        .collect()
}

/// Legacy TRACE of two labs with the same interface names and addresses in one kernel log
/// (nf_log_all_netns=1): the other lab's packets are recognised by their MAC addresses — and
/// its node's own packets (no MAC) by their flow, whose replies have one — and set aside as
/// foreign: counted, listed, neither differences nor "only in reference".
#[test]
fn compare_other_netns_lines_are_foreign() {
    let backend = IptablesBackend::Legacy;
    let test = "compare_other_netns_lines_are_foreign";
    if !ready(test, backend) {
        return;
    }
    let ours = lab(backend);
    let other = Lab::up(LabOptions {
        backend,
        trace_rules: true,
        name_prefix: "cmp-e2e-other".into(),
        ..LabOptions::default()
    })
    .unwrap_or_else(|e| panic!("other lab up: {e}"));
    // The other lab traces its node's own connection to the container (OUTPUT, no MAC) and,
    // with this rule, the container's replies (received on its bridge, with a MAC).
    other
        .exec(
            LabNs::Node,
            &[
                "iptables-legacy",
                "-t",
                "raw",
                "-A",
                "PREROUTING",
                "-s",
                "172.19.0.0/16",
                "-p",
                "tcp",
                "--sport",
                "80",
                "-j",
                "TRACE",
            ],
        )
        .expect("reply TRACE rule in the other lab");
    let target = TraceTarget {
        netns: ours.ns_path(LabNs::Node),
        backend,
        family: Family::Ipv4,
    };
    let tracer = ReferenceTracer::start(target, &selector(LabTest::Remote), true).unwrap();
    let snap = tracer.snapshot_rulesets().unwrap();
    let theirs = other.run(LabTest::Remote).expect("other lab traffic");
    let theirs_local = other
        .run(LabTest::Local)
        .expect("other lab's node connection");
    let ex = ours.run(LabTest::Remote).expect("lab traffic");
    let (out, scope) = tracer.finish_scoped().unwrap();
    other.down().unwrap();
    let dump = trace_core::rules::parse(&snap.iptables_save).unwrap();
    let resolver = Resolver::new(Some(&dump), None);
    let parsed = reference::parse(&out.text, Some(out.format));
    let port_of = |p: &RefPacket, port: u16| {
        p.headers
            .iter()
            .any(|h| h.sport == Some(port) || h.dport == Some(port))
    };
    let mine: Vec<&RefPacket> = parsed
        .packets
        .iter()
        .filter(|p| port_of(p, ex.local.port()))
        .collect();
    let foreign_lines: Vec<usize> = parsed
        .packets
        .iter()
        .filter(|p| port_of(p, theirs.local.port()) || port_of(p, theirs_local.local.port()))
        .map(|p| p.line)
        .collect();
    let local_replies_only_by_flow = parsed
        .packets
        .iter()
        .filter(|p| port_of(p, theirs_local.local.port()))
        .filter(|p| p.headers.iter().all(|h| h.mac.is_none()))
        .count();
    assert!(
        local_replies_only_by_flow > 0,
        "the other node's own packets (no MAC) were traced"
    );
    assert!(
        mine.len() >= 4 && foreign_lines.len() >= 4,
        "both labs traced: ours {}, theirs {}",
        mine.len(),
        foreign_lines.len()
    );
    let captured = kernel_paths_as_captured(&mine, &resolver);
    let scope = scope.expect("a legacy kernel log is scoped");
    let report = agreement_in_scope(&out, &captured, &snap, Some(&scope)).unwrap();
    eprintln!("{test}: {}", report.render_text(3));
    let set_aside: Vec<usize> = report.foreign.iter().map(|f| f.reference_line).collect();
    for l in &foreign_lines {
        assert!(
            set_aside.contains(l),
            "{test}: the other lab's packet at line {l} is foreign: {report:#?}"
        );
    }
    assert_eq!(report.totals.agree, captured.len(), "{report:#?}");
    assert_eq!(report.totals.differ, 0, "{report:#?}");
    assert_eq!(report.exit_code(), 0);
    // The same report without the scope counts them as "only in reference".
    let unscoped = agreement(&out, &captured, &snap).unwrap();
    assert!(unscoped.totals.only_in_reference >= foreign_lines.len());
    ours.down().unwrap();
}

/// A real netlink overrun of `nft monitor trace` (the monitor stopped while 20000 traced
/// packets are sent): nft reports it in its stream — before the messages still queued, so
/// the gap follows at an unknown place —, the parser counts it and marks the packets after
/// it incomplete; no packet left unmarked is cut (each shows its path to the end).
#[test]
fn nft_monitor_overrun_is_detected() {
    use std::io::Read;
    use std::process::Stdio;
    use trace_user::netns;
    let test = "nft_monitor_overrun_is_detected";
    if !iptrace_tests::privileged(test) || !iptrace_tests::require_tools(test, &["nft", "ip"]) {
        return;
    }
    let ns = netns::NetnsGuard::create("cmp-lost").expect("netns");
    let rules = "table ip raw {\n chain OUTPUT {\n  type filter hook output priority -300;\n  meta nftrace set 1\n }\n}\ntable ip mangle {\n chain POSTROUTING {\n  type filter hook postrouting priority -150;\n  counter\n  counter\n }\n}\n";
    let mut load = netns::command(ns.name(), "nft");
    load.args(["-f", "-"]).stdin(Stdio::piped());
    let mut child = load.spawn().expect("nft -f");
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), rules.as_bytes()).unwrap();
    assert!(child.wait().unwrap().success(), "ruleset loads");
    let mut monitor = netns::command(ns.name(), "nft")
        .args(["-a", "monitor", "trace"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("nft monitor");
    let mut out = monitor.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        out.read_to_string(&mut s).map(|_| s)
    });
    std::thread::sleep(std::time::Duration::from_millis(500));
    let pid = monitor.id() as i32;
    // SAFETY: signals to the child we spawned (`ip netns exec` execs nft: same pid).
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    let sent = netns::run_in(&ns.path(), || {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        (0..20000)
            .filter(|_| s.send_to(b"x", "127.0.0.1:9").is_ok())
            .count()
    })
    .expect("send");
    assert_eq!(unsafe { libc::kill(pid, libc::SIGCONT) }, 0);
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let _ = monitor.kill();
    let _ = monitor.wait();
    let text = reader.join().unwrap().expect("monitor output");
    ns.delete().expect("netns delete");
    let parsed = reference::parse(&text, Some(reference::Format::NftMonitor));
    let incomplete = parsed.packets.iter().filter(|p| p.incomplete).count();
    eprintln!(
        "{test}: {sent} sent, {} traced packets read, {} loss lines, {incomplete} incomplete",
        parsed.packets.len(),
        parsed.lost
    );
    if parsed.lost == 0 {
        iptrace_tests::skipped(test, "no overrun happened (the buffer held every event)");
        return;
    }
    assert!(parsed.malformed.is_empty(), "{:?}", parsed.malformed);
    assert!(parsed.packets.len() < sent, "events were lost");
    let end = |p: &RefPacket| {
        p.steps()
            .last()
            .map(|s| (s.table, s.chain.clone(), s.pos.clone()))
    };
    let full_end = Some((
        trace_core::netfilter::Table::Mangle,
        "POSTROUTING".to_string(),
        reference::RefStepPos::Policy,
    ));
    let cut: Vec<usize> = parsed
        .packets
        .iter()
        .filter(|p| !p.incomplete && end(p) != full_end)
        .map(|p| p.line)
        .collect();
    assert!(
        cut.is_empty(),
        "{test}: packets cut by the loss but not marked: lines {cut:?}"
    );
}

/// The whole `capture --compare-trace` pipeline with the real eBPF capture: the tracer's TRACE
/// rule in place, the nfhook probes capture the lab's connection, each packet is reconstructed
/// against the live dump, and the kernel's own trace of the same run agrees on every packet.
fn capture_agrees_with_kernel(backend: IptablesBackend) {
    use std::time::Duration;
    use trace_user::capture::{
        plan,
        session::{CaptureOptions, Session},
    };
    use trace_user::lab::{server, topology};
    let test = format!("compare_capture_{backend}");
    if !ready(&test, backend) {
        return;
    }
    let lab = lab(backend);
    for t in [LabTest::Remote, LabTest::Local] {
        let node = lab.ns_path(LabNs::Node);
        let target = TraceTarget {
            netns: node.clone(),
            backend,
            family: Family::Ipv4,
        };
        let tracer = ReferenceTracer::start(target, &selector(t), true).expect("tracer start");
        let snap = tracer.snapshot_rulesets().unwrap();
        let mut rules = trace_user::rulesource::RuleSource::live(
            &[(lab.ns_inode(LabNs::Node) as u32, node.clone())],
            Duration::ZERO,
        );
        rules.refresh();
        let opts = CaptureOptions {
            targets: plan::targets(&[node.display().to_string()]).unwrap(),
            filter: trace_core::filter::compile("tcp").unwrap(),
            sample_n: 0,
            rate_limit: 0,
            ringbuf_size: 1 << 22,
            count: None,
            duration: Some(Duration::from_secs(3)),
        };
        let mut session = match Session::attach(&opts) {
            Ok(s) => s,
            Err(e) => panic!("{test}: attaching the nfhook probes failed: {e:#}"),
        };
        let (client, to) = match t {
            LabTest::Remote => (
                lab.ns_path(LabNs::Peer),
                format!("{}:{}", topology::NODE_IP, topology::HOST_PORT),
            ),
            LabTest::Local => (
                node.clone(),
                format!("{}:{}", topology::CTR_IP, topology::CTR_PORT),
            ),
        };
        let traffic = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(700));
            trace_user::netns::run_in(&client, move || {
                server::exchange(to.parse().unwrap(), "hello-compare")
            })
        });
        let mut traces = Vec::new();
        let summary = session.run(&opts, |p| {
            traces.push(p.clone());
            Ok(())
        });
        drop(session);
        let ex = traffic.join().unwrap().unwrap().expect("connection");
        let out = tracer.finish().unwrap();
        let summary = summary.expect("capture ran");
        assert_eq!(summary.lost, 0, "{test} {t}: ring buffer losses");
        let port = ex.local.port();
        let captured: Vec<CapturedPacket> = traces
            .iter()
            .map(|p| rules.reconstruct(p))
            .map(|rp| CapturedPacket::from(&rp))
            .filter(|c| {
                c.headers
                    .iter()
                    .any(|h| h.sport == Some(port) || h.dport == Some(port))
            })
            .enumerate()
            .map(|(index, c)| CapturedPacket { index, ..c })
            .collect();
        let mut report = agreement(&out, &captured, &snap).unwrap();
        // Keep the reference packets of this connection (the kernel log is shared).
        report
            .packets
            .retain(|p| p.summary.contains(&format!(":{port} ")));
        let ours = report.packets.len();
        let agree = report
            .packets
            .iter()
            .filter(|p| matches!(p.outcome, trace_core::compare::report::Outcome::Agree))
            .count();
        eprintln!("{test} {t}: {agree}/{ours} kernel-traced packets agree");
        assert!(
            ours >= 4,
            "{test} {t}: {ours} traced packets\n{}",
            report.render_text(3)
        );
        assert_eq!(agree, ours, "{test} {t}:\n{}", report.render_text(6));
    }
    lab.down().unwrap();
}

#[test]
fn compare_capture_legacy() {
    capture_agrees_with_kernel(IptablesBackend::Legacy);
}

#[test]
fn compare_capture_nft() {
    capture_agrees_with_kernel(IptablesBackend::Nft);
}

#[test]
fn nf_log_all_netns_is_shared_and_survives_a_crashed_user() {
    use trace_user::reference::NfLogAllNetns;
    if !iptrace_tests::privileged("nf_log_all_netns_is_shared") {
        return;
    }
    let sysctl = "/proc/sys/net/netfilter/nf_log_all_netns";
    let state = Path::new("/run/iptrace/nf_log_all_netns.users");
    let read = || std::fs::read_to_string(sysctl).unwrap().trim().to_string();
    let a = NfLogAllNetns::acquire().unwrap();
    let b = NfLogAllNetns::acquire().unwrap();
    assert_eq!(read(), "1");
    let me = std::process::id().to_string();
    let users = |s: &str| s.lines().skip(1).filter(|l| *l == me).count();
    assert_eq!(users(&std::fs::read_to_string(state).unwrap()), 2);
    a.release().unwrap();
    assert_eq!(read(), "1", "still one user");
    drop(b);
    if let Ok(s) = std::fs::read_to_string(state) {
        assert_eq!(
            users(&s),
            0,
            "our entries are gone (other processes may still use it: {s:?})"
        );
    }
    // A crashed user (dead pid) is pruned; its recorded original survives the crash.
    if !state.exists() {
        let original = read();
        let dead = std::process::Command::new("true").spawn().unwrap();
        let dead_pid = dead.id();
        let mut dead = dead;
        dead.wait().unwrap();
        std::fs::write(state, format!("{original}\n{dead_pid}")).unwrap();
        std::fs::write(sysctl, "1").unwrap();
        let c = NfLogAllNetns::acquire().unwrap();
        c.release().unwrap();
        assert_eq!(
            read(),
            original,
            "restored the crashed user's original value"
        );
        assert!(!state.exists());
    }
}

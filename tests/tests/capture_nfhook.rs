//! The nfhook capture backend end to end (root): real eBPF netfilter-link probes in the lab's
//! node namespace, real traffic, assertions on the assembled per-packet paths and counters.
//! Skips loudly without root or when the kernel refuses netfilter links.

use std::net::IpAddr;
use std::time::Duration;

use iptrace_tests as e2e;
use iptrace_tests::capture_child::{interrupt_when_quiet, packets_quiet_period};
use iptrace_tests::quiet::Quiet;
use trace_core::assemble::ProbePlan;
use trace_core::event::L4;
use trace_core::netfilter::Family;
use trace_core::netfilter::{Hook, Table};
use trace_core::packet::{Fate, HookPass, ObservedVerdict, PacketTrace};
use trace_user::capture::plan::{ProbeMode, Target};
use trace_user::capture::session::{CaptureOptions, Session, Summary};
use trace_user::lab::{IptablesBackend, Lab, LabNs};

const PEER: &str = "192.168.64.5";

fn ready(test: &str) -> bool {
    e2e::lab_ready(test, IptablesBackend::Legacy)
}

fn options(lab: &Lab, filter: &str) -> CaptureOptions {
    CaptureOptions {
        targets: vec![Target {
            label: "node".into(),
            path: lab.ns_path(LabNs::Node),
        }],
        filter: trace_core::filter::compile(filter).expect("filter compiles"),
        sample_n: 0,
        rate_limit: 0,
        ringbuf_size: 8 << 20,
        count: None,
        duration: Some(Duration::from_secs(3)),
    }
}

/// Attach, run `traffic` while capturing for `opts.duration`, return packets + summary.
/// None (with a loud skip) when the kernel refuses the netfilter links.
fn capture(
    test: &str,
    opts: &CaptureOptions,
    traffic: impl FnOnce() + Send,
) -> Option<(Vec<PacketTrace>, Summary)> {
    capture_with(test, opts, ProbeMode::Needed, traffic).map(|c| (c.packets, c.summary))
}

/// What [`capture_with`] returns: the packets, the summary, the probe plan and link count.
struct Captured {
    packets: Vec<PacketTrace>,
    summary: Summary,
    plan: ProbePlan,
    links: usize,
}

/// [`capture`] with the probe placement `mode` (`--probes`).
fn capture_with(
    test: &str,
    opts: &CaptureOptions,
    mode: ProbeMode,
    traffic: impl FnOnce() + Send,
) -> Option<Captured> {
    let mut session = match Session::attach_with(opts, mode) {
        Ok(s) => s,
        // A kernel without netfilter links is a skip; a verifier rejection of our programs
        // is a failure.
        Err(e) if format!("{e:#}").contains("BPF_LINK_CREATE") => {
            e2e::skipped(test, &format!("kernel refused the netfilter probes: {e:#}"));
            return None;
        }
        Err(e) => panic!("attach: {e:#}"),
    };
    let mut packets = Vec::new();
    let summary = std::thread::scope(|s| {
        s.spawn(|| {
            std::thread::sleep(Duration::from_millis(200));
            traffic();
        });
        session.run(opts, |t| {
            packets.push(t.clone());
            Ok(())
        })
    })
    .expect("capture runs");
    Some(Captured {
        packets,
        summary,
        plan: session.plan().clone(),
        links: session.link_count(),
    })
}

fn tcp_flags(t: &PacketTrace) -> Option<u8> {
    let s = t.hooks.first()?.stages.first()?;
    match s.before.headers.l4 {
        L4::Tcp { flags, .. } => Some(flags),
        _ => None,
    }
}

fn src(t: &PacketTrace) -> Option<IpAddr> {
    Some(t.hooks.first()?.stages.first()?.before.headers.src)
}

fn tables(h: &HookPass) -> Vec<Table> {
    h.tables.iter().map(|t| t.table).collect()
}

fn hook(t: &PacketTrace, hook: Hook) -> &HookPass {
    t.hooks
        .iter()
        .find(|h| h.hook == hook)
        .unwrap_or_else(|| panic!("packet {} has no {hook} pass: {t:#?}", t.id))
}

fn all_accept(h: &HookPass) -> bool {
    h.tables
        .iter()
        .all(|t| t.verdict == ObservedVerdict::Accept)
}

#[test]
fn remote_syn_path_nat_conntrack_and_filter() {
    remote_syn_path(
        "remote_syn_path_nat_conntrack_and_filter",
        IptablesBackend::Legacy,
    );
}

/// The same with iptables-nft: the tables are nft chains at the iptables priorities, found
/// through `nft -j list ruleset`.
#[test]
fn remote_syn_path_iptables_nft() {
    remote_syn_path("remote_syn_path_iptables_nft", IptablesBackend::Nft);
}

fn remote_syn_path(test: &str, backend: IptablesBackend) {
    if !e2e::lab_ready(test, backend) || !e2e::require_tools(test, &["nft", "nsenter"]) {
        return;
    }
    let lab = e2e::lab(backend, false);
    let opts = options(&lab, &format!("host {PEER}"));
    let Some(c) = capture_with(test, &opts, ProbeMode::Needed, || {
        lab.run_remote().expect("remote connection");
        // The local test (node → ctr) is outside the filter.
        lab.run_local().expect("local connection");
    }) else {
        return;
    };
    // raw and mangle are empty with policy ACCEPT: no probe after them, conntrack's folded
    // into nat's; PREROUTING's after nat and POSTROUTING's entry follow from FORWARD's
    // entry and exit (4 probe runs per forwarded packet instead of 11). With legacy
    // iptables, filter FORWARD only accepts or drops (verdict-only): FORWARD's exit is the
    // state at its entry probe (3 probe runs). iptables-nft's filter keeps its probe (only
    // its rule count is read).
    let node = e2e_inode(&lab);
    let fwd = match backend {
        IptablesBackend::Legacy => vec![-151],
        IptablesBackend::Nft => vec![-151, 1],
    };
    assert_eq!(
        [Hook::Prerouting, Hook::Forward, Hook::Postrouting].map(|h| probes(&c.plan, node, h)),
        [vec![-301], fwd, vec![101]]
    );
    let (packets, summary) = (c.packets, c.summary);
    assert_eq!(summary.lost, 0, "{summary:?}");
    assert!(
        summary.filtered_out > 0,
        "the local connection must be filtered out: {summary:?}"
    );
    // Packets outside the filter produce no record.
    for p in &packets {
        let h = &p.hooks[0].stages[0].before.headers;
        assert!(
            h.src == PEER.parse::<IpAddr>().unwrap() || h.dst == PEER.parse::<IpAddr>().unwrap(),
            "packet outside the filter traced: {h:?}"
        );
    }
    assert_remote_syn(&packets);
    // Later client packets of the connection are ESTABLISHED (conntrack applies the NAT).
    let later: Vec<&PacketTrace> = packets
        .iter()
        .filter(|p| src(p) == Some(PEER.parse().unwrap()) && tcp_flags(p) != Some(0x02))
        .collect();
    assert!(later.len() >= 3, "ACK, data, FIN…: {}", later.len());
    for p in later {
        let ct = hook(p, Hook::Prerouting).tables[2]
            .after
            .as_ref()
            .and_then(|a| a.ct)
            .expect("ct");
        assert_eq!(ct.ctinfo, 0, "packet {} not ESTABLISHED", p.id);
    }
    // Replies come back through the same three hooks and are un-NATed in POSTROUTING.
    let reply = packets
        .iter()
        .find(|p| tcp_flags(p) == Some(0x12))
        .expect("SYN-ACK traced");
    assert!(hook(reply, Hook::Postrouting)
        .tables
        .iter()
        .any(|t| t.translated()));
}

fn e2e_inode(lab: &Lab) -> u32 {
    trace_user::netns::inode_of(&lab.ns_path(LabNs::Node)).expect("node inode") as u32
}

fn probes(plan: &ProbePlan, netns: u32, hook: Hook) -> Vec<i32> {
    plan.get(netns, Family::Ipv4, hook)
        .map(|p| p.probes().to_vec())
        .unwrap_or_default()
}

/// The remote SYN: PREROUTING raw → mangle → nat (DNAT), FORWARD mangle → filter,
/// POSTROUTING mangle → nat, ACCEPT each, each table's own before/after.
fn assert_remote_syn(packets: &[PacketTrace]) {
    let syn = packets
        .iter()
        .find(|p| tcp_flags(p) == Some(0x02) && src(p) == Some(PEER.parse().unwrap()))
        .unwrap_or_else(|| panic!("no SYN among {} packets", packets.len()));
    let pre = hook(syn, Hook::Prerouting);
    assert_eq!(tables(pre), vec![Table::Raw, Table::Mangle, Table::Nat]);
    assert!(all_accept(pre));
    let nat = &pre.tables[2];
    let before = &nat.before.headers;
    let after = &nat.after.as_ref().expect("came out of nat").headers;
    assert_eq!(
        (before.dst.to_string(), before.l4.ports().unwrap().1),
        ("192.168.64.4".into(), 10000)
    );
    assert_eq!(
        (after.dst.to_string(), after.l4.ports().unwrap().1),
        ("172.19.0.9".into(), 80)
    );
    assert_eq!(
        nat.after.as_ref().unwrap().ct.map(|c| c.ctinfo),
        Some(2),
        "SYN is NEW"
    );
    // The nat table received the new entry conntrack made (no NAT set up yet): consulted.
    let nat_in = nat.before.ct.expect("conntrack ran before nat");
    assert_eq!((nat_in.ctinfo, nat_in.status & 0x1b0), (2, 0), "{nat_in:?}");
    assert!(
        syn.hooks.iter().flat_map(|h| &h.stages).all(|s| !s.shared),
        "every stage told apart: {:?}",
        syn.hooks
    );
    let fwd = hook(syn, Hook::Forward);
    assert_eq!(tables(fwd), vec![Table::Mangle, Table::Filter]);
    assert!(all_accept(fwd));
    let post = hook(syn, Hook::Postrouting);
    assert_eq!(tables(post), vec![Table::Mangle, Table::Nat]);
    assert!(all_accept(post));
    assert_eq!(syn.fate, Fate::Delivered);
    assert_eq!(
        syn.hooks.iter().map(|h| h.hook).collect::<Vec<_>>(),
        vec![Hook::Prerouting, Hook::Forward, Hook::Postrouting]
    );
}

/// `--probes all`: a probe before the first and after every stage, as before the plan left
/// out inert stages; the same path.
#[test]
fn probes_all_brackets_every_stage() {
    let test = "probes_all_brackets_every_stage";
    if !ready(test) {
        return;
    }
    let lab = e2e::lab(IptablesBackend::Legacy, false);
    let opts = options(&lab, &format!("host {PEER}"));
    let needed = match Session::attach_with(&opts, ProbeMode::Needed) {
        Ok(s) => s.link_count(),
        Err(e) => {
            e2e::skipped(test, &format!("kernel refused the netfilter probes: {e:#}"));
            return;
        }
    };
    let Some(c) = capture_with(test, &opts, ProbeMode::All, || {
        lab.run_remote().expect("remote connection");
    }) else {
        return;
    };
    let node = e2e_inode(&lab);
    assert_eq!(
        [Hook::Prerouting, Hook::Forward, Hook::Postrouting].map(|h| probes(&c.plan, node, h)),
        [
            vec![-301, -299, -199, -149, -99],
            vec![-151, -149, 1],
            vec![-151, -149, 101]
        ]
    );
    assert!(
        c.links > needed,
        "--probes all links {} probes, needed {needed}",
        c.links
    );
    assert_eq!(c.summary.lost, 0);
    assert_remote_syn(&c.packets);
}

/// A rule added to an empty (inert) table during the capture: once the rule dump shows it
/// (--rules-interval), its probe is linked and the mark it sets is attributed to mangle
/// FORWARD, not to filter next to it.
#[test]
fn rule_added_to_an_inert_table_gets_its_probe() {
    let test = "rule_added_to_an_inert_table_gets_its_probe";
    if !ready(test) {
        return;
    }
    let Some(bin) = e2e::iptrace_bin() else {
        e2e::skipped(test, "no iptrace binary (cargo build first)");
        return;
    };
    let lab = e2e::lab(IptablesBackend::Legacy, false);
    let mut quiet = Quiet::watch(&[LabNs::Peer, LabNs::Node, LabNs::Ctr].map(|n| lab.ns_path(n)));
    let mut child = std::process::Command::new(&bin)
        .args(["capture", "--backend", "nfhook", "--netns"])
        .arg(lab.ns_path(LabNs::Node))
        // --duration is a safety cap: stopped once the second connection is over.
        .args(["--packets", "--format", "json", "--duration", "12"])
        .args(["--rules-interval", "0.2", "src", "host", PEER])
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn iptrace");
    let lines = stderr_lines(&mut child);
    // Read stdout as it comes: a full pipe would stall the capture (and its re-planning).
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut s).map(|_| s)
    });
    let attached: u64 = wait_line(&lines, "probes attached")
        .rsplit_once(": ")
        .and_then(|(_, n)| n.strip_suffix(" probes attached")?.parse().ok())
        .expect("probe count");
    lab.run_remote().expect("remote connection");
    let mark = [
        "iptables-legacy",
        "-t",
        "mangle",
        "-A",
        "FORWARD",
        "-j",
        "MARK",
        "--set-mark",
        "7",
    ];
    let out = lab.exec(LabNs::Node, &mark).expect("add the mangle rule");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The refresh (0.2 s), then the probe is linked on the next timer tick.
    let changed = std::time::Instant::now();
    let added = wait_line(&lines, "probes added");
    eprintln!("{test}: {:?} after the rule: {added}", changed.elapsed());
    lab.run_remote().expect("remote connection");
    interrupt_when_quiet(test, &mut child, &mut quiet, packets_quiet_period());
    drop(quiet);
    let status = child.wait().expect("iptrace exits");
    assert!(status.success(), "{status}");
    let stdout = reader.join().unwrap().expect("stdout is UTF-8");
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    let (summary, packets) = lines.split_last().expect("output");
    let links = summary["summary"]["attached"][0]["links"].as_u64().unwrap();
    assert_eq!(
        links,
        attached + 1,
        "the probe after mangle FORWARD was added"
    );
    assert_eq!(summary["summary"]["assembler"]["unplanned_probes"], 0);
    let fwd: Vec<&serde_json::Value> = packets
        .iter()
        .flat_map(|p| p["hooks"].as_array().unwrap())
        .filter(|h| h["hook"] == "FORWARD")
        .collect();
    let marks = |h: &serde_json::Value, table: &str| {
        let s = h["stages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["stage"]["table"] == table)
            .unwrap_or_else(|| panic!("no {table} in {h}"));
        assert_eq!(s["shared"], false, "{s}");
        (
            s["before"]["mark"].as_u64().unwrap(),
            s["after"]["mark"].as_u64().unwrap(),
        )
    };
    // Before: FORWARD's entry probe only (filter is verdict-only); after: also the probe
    // after mangle.
    let (old, new): (Vec<_>, Vec<_>) = fwd
        .iter()
        .partition(|h| h["probes"].as_array().unwrap().len() == 1);
    assert!(
        old.len() >= 4 && new.len() >= 4,
        "{} before, {} after: {:?}",
        old.len(),
        new.len(),
        fwd.iter()
            .map(|h| (
                h["probes"].to_string(),
                h["stages"][0]["before"]["headers"]["l4"]["sport"].to_string(),
                h["stages"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|s| format!("{}:{}", s["before"]["mark"], s["after"]["mark"]))
                    .collect::<Vec<_>>()
            ))
            .collect::<Vec<_>>()
    );
    for h in old {
        assert_eq!((marks(h, "mangle"), marks(h, "filter")), ((0, 0), (0, 0)));
    }
    for h in new {
        assert_eq!(h["probes"], serde_json::json!([-151, -149]));
        assert_eq!(
            (marks(h, "mangle"), marks(h, "filter")),
            ((0, 7), (7, 7)),
            "{h}"
        );
    }
}

/// The capture's stderr, line by line, read on a thread (so the capture never blocks on it).
fn stderr_lines(child: &mut std::process::Child) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead;
    let err = std::io::BufReader::new(child.stderr.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in err.lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    rx
}

/// Waits (at most 30 s) for a stderr line containing `what`; returns it.
fn wait_line(lines: &std::sync::mpsc::Receiver<String>, what: &str) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match lines.recv_timeout(left) {
            Ok(l) if l.contains(what) => return l,
            Ok(l) => seen.push(l),
            Err(e) => panic!("no stderr line with {what:?} ({e}) in {seen:#?}"),
        }
    }
}

/// `iptables-legacy ARGS` in the lab's node namespace; panics when it fails.
fn node_iptables(lab: &Lab, args: &[&str]) {
    let mut argv = vec!["iptables-legacy"];
    argv.extend_from_slice(args);
    let out = lab.exec(LabNs::Node, &argv).expect("run iptables-legacy");
    assert!(
        out.status.success(),
        "iptables-legacy {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn filter_drop_is_reported_with_netfilter_drop() {
    let test = "filter_drop_is_reported_with_netfilter_drop";
    if !ready(test) {
        return;
    }
    let lab = e2e::lab(IptablesBackend::Legacy, false);
    node_iptables(
        &lab,
        &[
            "-I",
            "DOCKER-USER",
            "1",
            "-p",
            "tcp",
            "--dport",
            "80",
            "-j",
            "DROP",
        ],
    );
    let mut opts = options(&lab, &format!("src host {PEER} and tcp"));
    opts.duration = Some(Duration::from_secs(3));
    let Some((packets, summary)) = capture(test, &opts, || {
        assert!(
            lab.run_remote().is_err(),
            "the connection must fail with the DROP rule"
        );
    }) else {
        return;
    };
    assert!(summary.drops > 0, "{summary:?}");
    let dropped = packets
        .iter()
        .find(|p| matches!(p.fate, Fate::Dropped { .. }))
        .expect("a dropped packet");
    assert_eq!(
        dropped.fate,
        Fate::Dropped {
            hook: Hook::Forward,
            stage: trace_core::packet::Stage::Table {
                table: Table::Filter
            }
        }
    );
    let fwd = hook(dropped, Hook::Forward);
    let filter = fwd
        .tables
        .iter()
        .find(|t| t.table == Table::Filter)
        .unwrap();
    match &filter.verdict {
        ObservedVerdict::Drop { reason_name, .. } => {
            assert_eq!(reason_name.as_deref(), Some("NETFILTER_DROP"))
        }
        v => panic!("filter verdict {v:?}"),
    }
    assert_eq!(
        fwd.tables[0].verdict,
        ObservedVerdict::Accept,
        "mangle let it through"
    );
}

#[test]
fn sampled_flows_are_complete_in_both_directions() {
    let test = "sampled_flows_are_complete_in_both_directions";
    if !ready(test) {
        return;
    }
    let lab = e2e::lab(IptablesBackend::Legacy, false);
    let mut opts = options(&lab, "tcp");
    opts.sample_n = 3;
    opts.duration = Some(Duration::from_secs(5));
    let conns = 24;
    let Some((packets, summary)) = capture(test, &opts, || {
        for _ in 0..conns {
            lab.run_remote().expect("remote connection");
        }
    }) else {
        return;
    };
    assert_eq!(summary.lost, 0, "{summary:?}");
    assert!(
        summary.sampled_out > 0,
        "1/3 sampling skips flows: {summary:?}"
    );
    // Group by the client's port (the flow), in either direction.
    let mut flows: std::collections::BTreeMap<u16, (usize, usize)> = Default::default();
    for p in &packets {
        let h = &p.hooks[0].stages[0].before.headers;
        let (sport, dport) = h.l4.ports().unwrap();
        if h.src == PEER.parse::<IpAddr>().unwrap() {
            flows.entry(sport).or_default().0 += 1;
        } else {
            flows.entry(dport).or_default().1 += 1;
        }
    }
    assert!(
        !flows.is_empty() && flows.len() < conns,
        "sampled {} of {conns} flows",
        flows.len()
    );
    for (port, (out, back)) in &flows {
        // A connection is SYN, ACK, data, FIN, ACK from the client and SYN-ACK, ACK, data,
        // FIN… from the server: every packet of a kept flow is traced, both ways.
        assert!(
            *out >= 4 && *back >= 3,
            "flow {port}: {out} client packets, {back} server packets"
        );
        assert!(
            packets
                .iter()
                .filter(|p| p.hooks[0].stages[0].before.headers.l4.ports().unwrap().0 == *port)
                .all(|p| !p.incomplete),
            "flow {port} has incomplete packets"
        );
    }
}

#[test]
fn tiny_ring_buffer_losses_are_counted() {
    let test = "tiny_ring_buffer_losses_are_counted";
    if !ready(test) {
        return;
    }
    let lab = e2e::lab(IptablesBackend::Legacy, false);
    let mut opts = options(&lab, "");
    opts.ringbuf_size = 4096;
    let Some((packets, summary)) = capture(test, &opts, || {
        for _ in 0..10 {
            lab.run_remote().expect("remote connection");
        }
    }) else {
        return;
    };
    assert!(
        summary.lost > 0,
        "a 4 KiB ring buffer must overflow: {summary:?}"
    );
    // Every record the probes produced is either received by the collector or counted lost.
    assert_eq!(summary.received, summary.emitted, "{summary:?}");
    assert_eq!(summary.decode_errors, 0);
    assert!(!packets.is_empty());
}

#[test]
fn rate_limit_caps_new_tracked_packets() {
    let test = "rate_limit_caps_new_tracked_packets";
    if !ready(test) {
        return;
    }
    let lab = e2e::lab(IptablesBackend::Legacy, false);
    let mut opts = options(&lab, "tcp");
    opts.rate_limit = 4;
    opts.duration = Some(Duration::from_secs(2));
    let Some((packets, summary)) = capture(test, &opts, || {
        for _ in 0..10 {
            lab.run_remote().expect("remote connection");
        }
    }) else {
        return;
    };
    // ~100 packets in well under two seconds; the bucket holds 4 and refills 4/s.
    assert!(summary.rate_limited > 0, "{summary:?}");
    assert!(
        summary.tracked <= 4 * 3,
        "at most the burst plus the refill of the capture time: {summary:?}"
    );
    assert_eq!(
        packets.len() as u64,
        summary.tracked,
        "every tracked packet is reported once"
    );
}

/// IPv6, and a namespace whose only table is filter (nothing on PREROUTING): packets are still
/// seen first on PREROUTING and followed into INPUT. Two namespaces of our own, veth between.
#[test]
fn ipv6_filter_only_namespace_is_traced() {
    use trace_user::netns::{self, NetnsGuard};
    let test = "ipv6_filter_only_namespace_is_traced";
    if !e2e::privileged(test) || !e2e::require_tools(test, &["ip", "ip6tables-legacy"]) {
        return;
    }
    let a = NetnsGuard::create("nfhk6a").expect("netns a");
    let b = NetnsGuard::create("nfhk6b").expect("netns b");
    let run = |ns: &str, argv: &[&str]| {
        netns::exec(ns, argv).unwrap_or_else(|e| panic!("{ns}: {argv:?}: {e}"));
    };
    run(
        a.name(),
        &[
            "ip",
            "link",
            "add",
            "va",
            "type",
            "veth",
            "peer",
            "name",
            "vb",
            "netns",
            b.name(),
        ],
    );
    run(
        a.name(),
        &["ip", "addr", "add", "fd00:6::1/64", "dev", "va", "nodad"],
    );
    run(
        b.name(),
        &["ip", "addr", "add", "fd00:6::2/64", "dev", "vb", "nodad"],
    );
    run(a.name(), &["ip", "link", "set", "va", "up"]);
    run(b.name(), &["ip", "link", "set", "vb", "up"]);
    run(
        b.name(),
        &[
            "ip6tables-legacy",
            "-A",
            "INPUT",
            "-p",
            "tcp",
            "--dport",
            "7777",
            "-j",
            "ACCEPT",
        ],
    );
    let opts = CaptureOptions {
        targets: vec![Target {
            label: "b".into(),
            path: b.path(),
        }],
        filter: trace_core::filter::compile("ip6 and tcp and port 7777").unwrap(),
        sample_n: 0,
        rate_limit: 0,
        ringbuf_size: 1 << 20,
        count: None,
        duration: Some(Duration::from_secs(2)),
    };
    let a_path = a.path();
    let Some((packets, summary)) = capture(test, &opts, move || {
        // Nothing listens: the SYN is accepted by filter INPUT, the kernel answers RST.
        let r = netns::run_in(&a_path, || {
            std::net::TcpStream::connect_timeout(
                &"[fd00:6::2]:7777".parse().unwrap(),
                Duration::from_secs(1),
            )
        })
        .unwrap();
        assert!(r.is_err(), "nothing listens on 7777");
    }) else {
        return;
    };
    assert_eq!(summary.lost, 0);
    let syn = packets
        .iter()
        .find(|p| p.family == trace_core::netfilter::Family::Ipv6 && tcp_flags(p) == Some(0x02))
        .unwrap_or_else(|| panic!("no IPv6 SYN traced: {summary:?}"));
    assert_eq!(src(syn), Some("fd00:6::1".parse().unwrap()));
    assert_eq!(
        syn.hooks.iter().map(|h| h.hook).collect::<Vec<_>>(),
        vec![Hook::Prerouting, Hook::Input]
    );
    let input = hook(syn, Hook::Input);
    assert_eq!(tables(input), vec![Table::Filter]);
    assert!(all_accept(input));
    assert_eq!(input.in_dev.as_deref(), Some("vb"));
    // The RST goes out through OUTPUT (first sight there) and POSTROUTING.
    let rst = packets
        .iter()
        .find(|p| tcp_flags(p).is_some_and(|f| f & 0x04 != 0))
        .expect("RST traced");
    assert_eq!(rst.hooks[0].hook, Hook::Output);
    assert!(hook(rst, Hook::Output)
        .tables
        .iter()
        .any(|t| t.table == Table::Filter));
}

/// The command line: `iptrace capture --count 3 --format json FILTER` prints three rule-level
/// packets and the JSON summary, then detaches by itself.
#[test]
fn cli_count_json_rule_level() {
    let test = "cli_count_json_rule_level";
    if !ready(test) {
        return;
    }
    let Some(bin) = e2e::iptrace_bin() else {
        e2e::skipped(test, "no iptrace binary (cargo build first)");
        return;
    };
    let lab = e2e::lab(IptablesBackend::Legacy, false);
    let node = lab.ns_path(LabNs::Node);
    let recording =
        std::env::temp_dir().join(format!("capture-nfhook-{}.iptrace", std::process::id()));
    let mut child = std::process::Command::new(&bin)
        .args(["capture", "--backend", "nfhook", "--netns"])
        .arg(&node)
        .arg("--write")
        .arg(&recording)
        .args([
            "--count",
            "3",
            "--duration",
            "20",
            "--format",
            "json",
            "src",
            "host",
            PEER,
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn iptrace");
    // Wait for the probes (stderr says when), then one connection: 5 client packets.
    let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    use std::io::BufRead;
    while err.read_line(&mut line).unwrap() > 0 && !line.contains("probes attached") {
        line.clear();
    }
    lab.run_remote().expect("remote connection");
    let start = std::time::Instant::now();
    let out = child.wait_with_output().expect("iptrace exits");
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "--count 3 must stop the capture"
    );
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    let (summary, packets) = lines.split_last().expect("output");
    assert_eq!(summary["summary"]["lost"], 0, "{summary}");
    assert!(packets.len() >= 3, "{} packets", packets.len());
    assert!(summary["summary"]["packets"].as_u64().unwrap() >= 3);
    // The SYN's rule path (rule level): DNAT by nat:DOCKER:rule:3.
    assert!(stdout.contains("nat:DOCKER:rule:3"), "{stdout}");
    // The recording replays offline to the same path.
    let replay = std::process::Command::new(&bin)
        .args(["replay", "--format", "trace"])
        .arg(&recording)
        .output()
        .expect("iptrace replay");
    let _ = std::fs::remove_file(&recording);
    let text = String::from_utf8_lossy(&replay.stdout);
    assert!(
        replay.status.success(),
        "{}",
        String::from_utf8_lossy(&replay.stderr)
    );
    assert!(text.contains("TRACE: nat:DOCKER:rule:3"), "{text}");
}

/// PREROUTING has no probe after nat (its result is the next hook's entry): a SYN DNATed to
/// an address the node has no route to is freed by routing right after PREROUTING and meets
/// no later probe. The drop report's state at the free (mark, conntrack entry, headers read
/// by the kfree_skb program) must still show nat's rewrite and the NEW entry nat saw.
#[test]
fn no_route_after_prerouting_nat_keeps_the_rewrite() {
    let test = "no_route_after_prerouting_nat_keeps_the_rewrite";
    if !ready(test) {
        return;
    }
    let lab = e2e::lab(IptablesBackend::Legacy, false);
    node_iptables(
        &lab,
        &[
            "-t",
            "nat",
            "-I",
            "PREROUTING",
            "1",
            "-p",
            "tcp",
            "--dport",
            "10001",
            "-j",
            "DNAT",
            "--to-destination",
            "203.0.113.9:80",
        ],
    );
    let mut opts = options(&lab, &format!("src host {PEER} and tcp"));
    opts.duration = Some(Duration::from_secs(3));
    let peer = lab.ns_path(LabNs::Peer);
    let Some(c) = capture_with(test, &opts, ProbeMode::Needed, move || {
        let to = std::net::SocketAddr::from(([192, 168, 64, 4], 10001));
        let connected = trace_user::netns::run_in(&peer, move || {
            std::net::TcpStream::connect_timeout(&to, Duration::from_secs(1)).is_ok()
        })
        .expect("run in the peer namespace");
        assert!(
            !connected,
            "no route to 203.0.113.9: the connection must fail"
        );
    }) else {
        return;
    };
    let node = e2e_inode(&lab);
    assert_eq!(
        probes(&c.plan, node, Hook::Prerouting),
        [-301],
        "PREROUTING must have no probe after nat for this test to mean anything"
    );
    let syn = c
        .packets
        .iter()
        .find(|p| tcp_flags(p) == Some(0x02))
        .unwrap_or_else(|| panic!("no SYN traced: {:#?}", c.packets));
    assert!(
        matches!(
            syn.fate,
            Fate::DroppedOutside {
                after: Hook::Prerouting,
                ..
            }
        ),
        "{:#?}",
        syn.fate
    );
    let pre = hook(syn, Hook::Prerouting);
    let nat = pre
        .tables
        .iter()
        .find(|t| t.table == Table::Nat)
        .unwrap_or_else(|| panic!("no nat in PREROUTING: {pre:#?}"));
    assert_eq!(nat.verdict, ObservedVerdict::Accept, "{nat:#?}");
    let after = nat
        .after
        .as_ref()
        .expect("nat's result, from the drop report");
    assert_eq!(after.headers.dst, "203.0.113.9".parse::<IpAddr>().unwrap());
    assert!(matches!(after.headers.l4, L4::Tcp { dport: 80, .. }));
    // nat saw the NEW entry conntrack made (ctinfo 2).
    let ct = nat.before.ct.expect("conntrack entry before nat");
    assert_eq!(ct.ctinfo, 2, "{ct:?}");
}

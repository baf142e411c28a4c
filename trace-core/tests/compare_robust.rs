//! `compare` on real reference output: LOG rules' own lines inside TRACE output, fragments
//! and repeated packets that only the finer header fields tell apart, other namespaces'
//! lines in a shared kernel log, and a reference that lost events.

use trace_core::compare::captured::{CapturedHeaders, CapturedPacket};
use trace_core::compare::matching::MatchOptions;
use trace_core::compare::reference::{self, Evidence, Format};
use trace_core::compare::report::{exit, Outcome, Report};
use trace_core::compare::resolve::Resolver;
use trace_core::compare::scope::{NetnsScope, ScopeIface};
use trace_core::compare::{compare, compare_in_scope};
use trace_core::step::StepId;

const R0_MAC: &str = "aa:aa:aa:aa:aa:01";
/// `MAC=` of a frame for r0 from the client (dst:src:ethertype).
const MAC_TO_R0: &str = "aa:aa:aa:aa:aa:01:cc:cc:cc:cc:cc:02:08:00";

fn steps(v: &[&str]) -> Vec<StepId> {
    v.iter().map(|s| s.parse().unwrap()).collect()
}

fn hdr(id: u16, len: u32) -> CapturedHeaders {
    CapturedHeaders {
        src: "10.0.1.2".parse().unwrap(),
        dst: "10.0.2.2".parse().unwrap(),
        proto: Some(17),
        sport: None,
        dport: None,
        id: Some(id),
        len: Some(len),
        seq: None,
        ack: None,
        tcp_flags: None,
        frag: None,
        icmp_id: None,
        icmp_seq: None,
        ipv6: None,
    }
}

fn cap(index: usize, h: CapturedHeaders, path: &[&str]) -> CapturedPacket {
    CapturedPacket {
        index,
        ts_ns: None,
        headers: vec![h],
        steps: steps(path),
        table_paths: Vec::new(),
        implicit_returns: None,
    }
}

fn run(text: &str, format: Format, caps: &[CapturedPacket]) -> Report {
    let parsed = reference::parse(text, Some(format));
    assert!(parsed.malformed.is_empty(), "{:?}", parsed.malformed);
    compare(
        &parsed,
        caps,
        &Resolver::new(None, None),
        &MatchOptions::default(),
    )
}

// ---- 1. LOG lines inside a TRACE output ----------------------------------------------------

/// TRACE fields of a forwarded TCP segment (TRACE prints SEQ/ACK/OPT; LOG without
/// --log-tcp-sequence/--log-tcp-options does not).
fn tcp_fields(id: u16, full: bool) -> String {
    let seq = if full { "SEQ=100 ACK=200 " } else { "" };
    let opt = if full { "OPT (0101080A) " } else { "" };
    format!("IN=r0 OUT=r1 MAC={MAC_TO_R0} SRC=10.0.1.2 DST=10.0.2.2 LEN=52 TOS=0x00 PREC=0x00 TTL=63 ID={id} DF PROTO=TCP SPT=4000 DPT=80 {seq}WINDOW=502 RES=0x00 ACK URGP=0 {opt}")
}

fn tcp_cap(index: usize, id: u16, path: &[&str]) -> CapturedPacket {
    let h = CapturedHeaders {
        proto: Some(6),
        sport: Some(4000),
        dport: Some(80),
        seq: Some(100),
        ack: Some(200),
        tcp_flags: Some(trace_core::event::tcp_flags::ACK),
        frag: Some(0x4000),
        ..hdr(id, 52)
    };
    cap(index, h, path)
}

#[test]
fn a_log_rules_line_belongs_to_the_traced_packet_it_logged() {
    let text = [
        format!(
            "[ 10.000001] TRACE: filter:FORWARD:rule:1 {}",
            tcp_fields(7, true)
        ),
        format!("[ 10.000002] fw-log {}", tcp_fields(7, false)),
        format!(
            "[ 10.000003] TRACE: filter:FORWARD:rule:2 {}",
            tcp_fields(7, true)
        ),
        // A second LOG rule on the same packet, traced too.
        format!("[ 10.000004] fw-again {}", tcp_fields(7, false)),
        format!(
            "[ 10.000005] TRACE: filter:FORWARD:policy:3 {}",
            tcp_fields(7, true)
        ),
    ]
    .join("\n");
    let parsed = reference::parse(&text, Some(Format::KernelLog));
    assert_eq!(parsed.packets.len(), 1, "{:#?}", parsed.packets);
    let p = &parsed.packets[0];
    assert_eq!(p.steps().len(), 3);
    let logs: Vec<(&str, usize, usize)> = p
        .logs
        .iter()
        .map(|l| (l.prefix.as_str(), l.line, l.after_step))
        .collect();
    assert_eq!(logs, [("fw-log ", 2, 0), ("fw-again ", 4, 1)]);
    let caps = [tcp_cap(
        0,
        7,
        &[
            "filter:FORWARD:rule:1",
            "filter:FORWARD:rule:2",
            "filter:FORWARD:policy:3",
        ],
    )];
    let r = run(&text, Format::KernelLog, &caps);
    assert_eq!(
        (
            r.totals.agree,
            r.totals.only_in_reference,
            r.totals.log_lines_in_traces
        ),
        (1, 0, 2),
        "{r:#?}"
    );
    assert_eq!(r.exit_code(), exit::AGREE);
}

#[test]
fn a_log_line_of_an_untraced_packet_stays_a_packet_of_its_own() {
    let text = [
        format!(
            "[ 10.1] TRACE: filter:FORWARD:rule:1 {}",
            tcp_fields(7, true)
        ),
        // Another packet (id 8), logged by a rule the TRACE'd packet's step is not.
        format!("[ 10.2] fw-log {}", tcp_fields(8, false)),
        // Same packet as the TRACE line, but its traced step is a policy: no LOG rule.
        format!(
            "[ 10.3] TRACE: filter:INPUT:policy:1 {}",
            tcp_fields(9, true)
        ),
        format!("[ 10.4] fw-log {}", tcp_fields(9, false)),
    ]
    .join("\n");
    let parsed = reference::parse(&text, Some(Format::KernelLog));
    let logged: Vec<usize> = parsed
        .packets
        .iter()
        .filter(|p| matches!(p.evidence, Evidence::Logged { .. }))
        .map(|p| p.line)
        .collect();
    assert_eq!(logged, [2, 4], "{:#?}", parsed.packets);
    assert!(parsed.packets.iter().all(|p| p.logs.is_empty()));
}

#[test]
fn a_pure_log_reference_still_compares() {
    let dump = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n-A FORWARD -p tcp -j LOG --log-prefix \"fw-log \"\nCOMMIT\n";
    let rs = trace_core::rules::parse(dump).unwrap();
    let text = format!("[ 10.2] fw-log {}", tcp_fields(7, false));
    let parsed = reference::parse(&text, Some(Format::KernelLog));
    assert!(matches!(
        parsed.packets[0].evidence,
        Evidence::Logged { .. }
    ));
    let caps = [tcp_cap(
        0,
        7,
        &["filter:FORWARD:rule:1", "filter:FORWARD:policy:2"],
    )];
    let r = compare(
        &parsed,
        &caps,
        &Resolver::new(Some(&rs), None),
        &MatchOptions::default(),
    );
    assert_eq!((r.totals.agree, r.totals.differ), (1, 0), "{r:#?}");
    let elsewhere = [tcp_cap(0, 7, &["filter:FORWARD:policy:2"])];
    let r = compare(
        &parsed,
        &elsewhere,
        &Resolver::new(Some(&rs), None),
        &MatchOptions::default(),
    );
    assert!(
        matches!(r.packets[0].outcome, Outcome::LogNotInPath { .. }),
        "{r:#?}"
    );
}

// ---- 2. Packets only the finer fields tell apart --------------------------------------------

/// A forwarded UDP fragment: offset in 8-byte units, MF.
fn frag_line(pos: &str, frag: u16, mf: bool) -> String {
    let mf = if mf { "MF " } else { "" };
    let off = if frag > 0 {
        format!("FRAG:{frag} ")
    } else {
        String::new()
    };
    let ports = if frag == 0 {
        "SPT=5000 DPT=9003 LEN=1480 "
    } else {
        ""
    };
    format!("TRACE: {pos} IN=r0 OUT=r1 MAC={MAC_TO_R0} SRC=10.0.1.2 DST=10.0.2.2 LEN=1500 TOS=0x00 PREC=0x00 TTL=63 ID=4242 {mf}{off}PROTO=UDP {ports}")
}

fn frag_cap(index: usize, frag_off: u16, path: &[&str]) -> CapturedPacket {
    let mut h = hdr(4242, 1500);
    h.frag = Some(frag_off);
    if frag_off & 0x1fff == 0 {
        (h.sport, h.dport) = (Some(5000), Some(9003));
    }
    cap(index, h, path)
}

#[test]
fn equal_length_fragments_pair_by_offset_not_by_order() {
    // The second fragment's lines come first and interleave with the first's (two CPUs).
    let text = [
        frag_line("filter:FORWARD:rule:1", 185, true),
        frag_line("filter:FORWARD:rule:2", 0, true),
        frag_line("filter:FORWARD:rule:5", 185, true),
    ]
    .join("\n");
    let parsed = reference::parse(&text, Some(Format::KernelLog));
    assert_eq!(parsed.packets.len(), 2, "{:#?}", parsed.packets);
    assert_eq!(
        parsed.packets[0].steps().len(),
        2,
        "frag 185: rule 1 then 5"
    );
    let caps = [
        frag_cap(0, 0x2000, &["filter:FORWARD:rule:2"]),
        frag_cap(
            1,
            0x2000 | 185,
            &["filter:FORWARD:rule:1", "filter:FORWARD:rule:5"],
        ),
    ];
    let r = run(&text, Format::KernelLog, &caps);
    let pairs: Vec<Option<usize>> = r.packets.iter().map(|p| p.captured_index).collect();
    assert_eq!(pairs, [Some(1), Some(0)], "{r:#?}");
    assert_eq!((r.totals.agree, r.totals.differ), (2, 0), "{r:#?}");
}

#[test]
fn echo_requests_of_equal_length_pair_by_icmp_sequence() {
    let line = |seq: u16, pos: &str| {
        format!("TRACE: {pos} IN=r0 OUT= MAC={MAC_TO_R0} SRC=10.0.1.2 DST=10.0.2.2 LEN=84 TOS=0x00 PREC=0x00 TTL=64 ID=0 DF PROTO=ICMP TYPE=8 CODE=0 ID=77 SEQ={seq} ")
    };
    // IP id 0 (DF) on both: only the ICMP sequence tells them apart.
    let text = [
        line(2, "filter:INPUT:rule:1"),
        line(1, "filter:INPUT:policy:2"),
    ]
    .join("\n");
    let icmp = |index: usize, seq: u16, path: &[&str]| {
        let mut h = hdr(0, 84);
        h.proto = Some(1);
        h.frag = Some(0x4000);
        (h.icmp_id, h.icmp_seq) = (Some(77), Some(seq));
        cap(index, h, path)
    };
    let caps = [
        icmp(0, 1, &["filter:INPUT:policy:2"]),
        icmp(1, 2, &["filter:INPUT:rule:1"]),
    ];
    let r = run(&text, Format::KernelLog, &caps);
    assert_eq!((r.totals.agree, r.totals.differ), (2, 0), "{r:#?}");
}

// ---- 3. Other namespaces' lines in a shared kernel log ---------------------------------------

fn scope() -> NetnsScope {
    let i = |name: &str, mac: Option<&str>| ScopeIface {
        name: name.into(),
        mac: mac.map(str::to_string),
    };
    NetnsScope {
        ifaces: vec![
            i("lo", Some("00:00:00:00:00:00")),
            i("r0", Some(R0_MAC)),
            i("r1", Some("aa:aa:aa:aa:aa:02")),
        ],
    }
}

#[test]
fn other_namespaces_lines_are_foreign_not_differences() {
    let ours = format!("TRACE: filter:FORWARD:rule:1 {}", tcp_fields(7, true));
    // Same interface names, another host's frame: a same-named r0 elsewhere received it.
    let other_mac = ours.replace(MAC_TO_R0, "ba:bb:bb:bb:bb:01:cc:cc:cc:cc:cc:02:08:00");
    let other_mac = other_mac.replace("ID=7 ", "ID=8 ");
    let other_dev = format!(
        "TRACE: filter:FORWARD:rule:1 {}",
        tcp_fields(9, true).replace("IN=r0", "IN=eth7")
    );
    // A broadcast on r0 is ours (dst MAC not unicast), even without a capture: only in
    // reference.
    let bcast = ours
        .replace(MAC_TO_R0, "ff:ff:ff:ff:ff:ff:cc:cc:cc:cc:cc:02:08:00")
        .replace("ID=7 ", "ID=10 ");
    let text = [ours, other_mac, other_dev, bcast].join("\n");
    let parsed = reference::parse(&text, Some(Format::KernelLog));
    assert_eq!(parsed.packets.len(), 4);
    let caps = [tcp_cap(0, 7, &["filter:FORWARD:rule:1"])];
    let s = scope();
    let r = compare_in_scope(
        &parsed,
        &caps,
        &Resolver::new(None, None),
        &MatchOptions::default(),
        Some(&s),
    );
    assert_eq!(
        (
            r.totals.agree,
            r.totals.differ,
            r.totals.only_in_reference,
            r.totals.foreign
        ),
        (1, 0, 1, 2),
        "{r:#?}"
    );
    let lines: Vec<usize> = r.foreign.iter().map(|f| f.reference_line).collect();
    assert_eq!(lines, [2, 3]);
    assert!(r.foreign[1].reason.contains("eth7"), "{:?}", r.foreign);
    assert!(r
        .packets
        .iter()
        .all(|p| p.reference_line != 2 && p.reference_line != 3));
    assert!(r.render_text(5).contains("foreign/ignored 2"));
    assert_eq!(r.exit_code(), exit::AGREE);
    // Without a scope nothing is set aside: the same lines are unpaired reference packets.
    let all = compare(
        &parsed,
        &caps,
        &Resolver::new(None, None),
        &MatchOptions::default(),
    );
    assert_eq!((all.totals.foreign, all.totals.only_in_reference), (0, 3));
}

// ---- 4. A reference that lost events ----------------------------------------------------------

/// `nft monitor trace` lines of one UDP packet (ip id `id`) through filter FORWARD.
fn nft_pkt(trace: &str, id: u16) -> String {
    format!(
        r#"trace id {trace} ip filter FORWARD packet: iif "r0" oif "r1" ip saddr 10.0.1.2 ip daddr 10.0.2.2 ip id {id} ip length 1500 udp sport 5000 udp dport 9003"#
    )
}

fn nft_rule(trace: &str, handle: u32, verdict: &str) -> String {
    format!("trace id {trace} ip filter FORWARD rule counter packets 0 bytes 0 # handle {handle} (verdict {verdict})")
}

#[test]
fn nft_monitor_loss_excuses_missing_steps_never_wrong_ones() {
    let text = [
        // Complete before the loss line: judged as usual.
        nft_pkt("0000000a", 6),
        nft_rule("0000000a", 4, "continue"),
        nft_rule("0000000a", 5, "accept"),
        // nft reports the overrun before the messages still queued: the gap is later.
        reference::nftmon::LOST_EVENTS.to_string(),
        // Its accept was lost: the path lacks a step of the capture.
        nft_pkt("0000000b", 7),
        nft_rule("0000000b", 4, "continue"),
        // A step the capture does not have: a difference, loss or not.
        nft_pkt("0000000c", 8),
        nft_rule("0000000c", 5, "accept"),
    ]
    .join("\n");
    let nft = trace_core::compare::nft_ruleset::parse(
        "table ip filter { # handle 1\n\tchain FORWARD { # handle 2\n\t\ttype filter hook forward priority filter; policy drop;\n\t\tcounter packets 0 bytes 0 # handle 4\n\t\tudp dport 9003 accept # handle 5\n\t}\n}\n",
    )
    .unwrap();
    let parsed = reference::parse(&text, Some(Format::NftMonitor));
    assert_eq!(parsed.lost, 1);
    let incomplete: Vec<bool> = parsed.packets.iter().map(|p| p.incomplete).collect();
    assert_eq!(incomplete, [false, true, true]);
    let both = ["filter:FORWARD:rule:1", "filter:FORWARD:rule:2"];
    let caps = [
        cap(0, hdr(6, 1500), &both),
        cap(1, hdr(7, 1500), &both),
        cap(
            2,
            hdr(8, 1500),
            &["filter:FORWARD:rule:1", "filter:FORWARD:policy:3"],
        ),
    ];
    let r = compare(
        &parsed,
        &caps,
        &Resolver::new(None, Some(&nft)),
        &MatchOptions::default(),
    );
    assert_eq!(
        (
            r.totals.agree,
            r.totals.differ,
            r.totals.reference_incomplete,
            r.totals.reference_lost
        ),
        (1, 1, 1, 1),
        "{r:#?}"
    );
    assert!(matches!(
        r.packets[1].outcome,
        Outcome::ReferenceIncomplete { .. }
    ));
    assert!(matches!(r.packets[2].outcome, Outcome::Differ { .. }));
    assert!(r.render_text(5).contains("lost events 1 times"));
}

#[test]
fn kmsg_gap_marks_packets_traced_across_it() {
    let a = frag_line("filter:FORWARD:rule:1", 0, true);
    let text = [
        a.clone(),
        format!("{}3", reference::kernlog::LOST_RECORDS),
        a.replace("rule:1", "policy:6"),
        // A packet that starts after the gap is complete.
        frag_line("filter:FORWARD:rule:1", 185, true),
    ]
    .join("\n");
    let parsed = reference::parse(&text, Some(Format::KernelLog));
    assert_eq!(parsed.lost, 3);
    let incomplete: Vec<bool> = parsed.packets.iter().map(|p| p.incomplete).collect();
    assert_eq!(incomplete, [true, false], "{:#?}", parsed.packets);
}

#[test]
fn a_loss_does_not_reach_packets_that_ended_long_before() {
    // 40 packets one after the other, then a loss: only the last ones may have been in
    // flight; the first ones' paths are complete and still count as differences.
    let mut lines: Vec<String> = (0..40u16)
        .map(|i| {
            frag_line("filter:FORWARD:policy:6", 0, false)
                .replace("ID=4242", &format!("ID={}", 100 + i))
        })
        .collect();
    lines.push(format!("{}1", reference::kernlog::LOST_RECORDS));
    let parsed = reference::parse(&lines.join("\n"), Some(Format::KernelLog));
    assert_eq!(parsed.packets.len(), 40);
    let incomplete = parsed.packets.iter().filter(|p| p.incomplete).count();
    assert!(
        (1..40).contains(&incomplete) && !parsed.packets[0].incomplete,
        "{incomplete} of 40 marked"
    );
    assert!(parsed.packets[39].incomplete);
}

#[test]
fn a_local_reply_follows_its_flow_into_the_foreign_namespace() {
    // A connection to a socket of the router: the client's SYN comes in (with a MAC), the
    // router's own SYN-ACK goes out (no MAC: locally generated).
    let syn = |id: u16, sport: u16, mac: &str| {
        format!("TRACE: filter:INPUT:policy:1 IN=r0 OUT= MAC={mac} SRC=10.0.1.2 DST=10.0.1.1 LEN=60 TOS=0x00 PREC=0x00 TTL=64 ID={id} DF PROTO=TCP SPT={sport} DPT=7070 SEQ=1 ACK=0 WINDOW=64240 RES=0x00 SYN URGP=0 ")
    };
    let synack = |sport: u16| {
        format!("TRACE: filter:OUTPUT:policy:1 IN= OUT=r0 SRC=10.0.1.1 DST=10.0.1.2 LEN=60 TOS=0x00 PREC=0x00 TTL=64 ID=0 DF PROTO=TCP SPT=7070 DPT={sport} SEQ=9 ACK=2 WINDOW=65160 RES=0x00 ACK SYN URGP=0 ")
    };
    let elsewhere = "ba:bb:bb:bb:bb:01:cc:cc:cc:cc:cc:02:08:00";
    let text = [
        syn(1, 40000, elsewhere), // foreign: another r0's MAC
        synack(40000),            // foreign by its flow
        syn(2, 40001, MAC_TO_R0), // ours
        synack(40001),            // ours (its flow has a packet of ours)
        synack(40002),            // no evidence either way: ours, unpaired
    ]
    .join("\n");
    let parsed = reference::parse(&text, Some(Format::KernelLog));
    assert_eq!(parsed.packets.len(), 5);
    let reasons = scope().foreign_reasons(&parsed.packets);
    let foreign: Vec<usize> = reasons
        .iter()
        .enumerate()
        .filter(|(_, r)| r.is_some())
        .map(|(i, _)| i)
        .collect();
    assert_eq!(foreign, [0, 1], "{reasons:?}");
    assert!(reasons[1]
        .as_deref()
        .unwrap()
        .starts_with("same flow as line 1"));
}

#[test]
fn interleaved_ipv6_ack_and_fin_stay_apart() {
    // No IP id in IPv6; the ACK and the FIN after it share seq/ack and length.
    let l = |pos: &str, flags: &str| {
        format!("TRACE: {pos} IN=r0 OUT= MAC={MAC_TO_R0} SRC=fd99:0213:0001:0000:0000:0000:0000:0002 DST=fd99:0213:0001:0000:0000:0000:0000:0001 LEN=72 TC=0 HOPLIMIT=64 FLOWLBL=1234 PROTO=TCP SPT=45560 DPT=7070 SEQ=10 ACK=20 WINDOW=64 RES=0x00 {flags} URGP=0 ")
    };
    let text = [
        l("raw:PREROUTING:policy:2", "ACK"),
        l("mangle:INPUT:policy:1", "ACK"),
        l("raw:PREROUTING:policy:2", "ACK FIN"),
        l("filter:INPUT:policy:1", "ACK"),
        l("mangle:INPUT:policy:1", "ACK FIN"),
        l("filter:INPUT:policy:1", "ACK FIN"),
    ]
    .join("\n");
    let parsed = reference::parse(&text, Some(Format::KernelLog));
    let lens: Vec<usize> = parsed.packets.iter().map(|p| p.steps().len()).collect();
    assert_eq!(lens, [3, 3], "{:#?}", parsed.packets);
}

#[test]
fn bridge_port_frames_are_foreign_only_when_delivered_for_none_of_our_macs() {
    let mut s = scope();
    s.ifaces.push(ScopeIface {
        name: "br0".into(),
        mac: Some("aa:aa:aa:aa:aa:10".into()),
    });
    s.ifaces.push(ScopeIface {
        name: "vport".into(),
        mac: Some("aa:aa:aa:aa:aa:11".into()),
    });
    let line = |pos: &str, id: u16, dst_mac: &str, out: &str| {
        format!("TRACE: {pos} IN=br0 OUT={out} PHYSIN=vport MAC={dst_mac}:cc:cc:cc:cc:cc:09:08:00 SRC=172.19.0.9 DST=172.19.0.1 LEN=60 TOS=0x00 PREC=0x00 TTL=64 ID={id} DF PROTO=TCP SPT=80 DPT=5555 SEQ=1 ACK=2 WINDOW=1 RES=0x00 ACK SYN URGP=0 ")
    };
    let text = [
        // Delivered here for the bridge's MAC: ours.
        line("filter:INPUT:policy:1", 1, "aa:aa:aa:aa:aa:10", ""),
        // Delivered here for another bridge's MAC: foreign.
        line("filter:INPUT:policy:1", 2, "ba:aa:aa:aa:aa:10", ""),
        // Bridged on to another host (FORWARD): could be ours.
        line("filter:FORWARD:policy:1", 3, "ba:aa:aa:aa:aa:77", "br0"),
    ]
    .join("\n");
    let parsed = reference::parse(&text, Some(Format::KernelLog));
    let reasons = s.foreign_reasons(&parsed.packets);
    let foreign: Vec<bool> = reasons.iter().map(Option::is_some).collect();
    assert_eq!(foreign, [false, true, false], "{reasons:?}");
}

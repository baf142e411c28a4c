//! `compare` on the shared fixtures: the kernel's own outputs of the same packets must
//! agree with each other once mapped to TRACE positions, and an edited ruleset must show
//! up as a disagreement.

use std::path::{Path, PathBuf};
use trace_core::compare::captured::{CapturedHeaders, CapturedPacket};
use trace_core::compare::matching::MatchOptions;
use trace_core::compare::reference::{self, ParsedReference};
use trace_core::compare::report::{exit, Outcome};
use trace_core::compare::resolve::Resolver;
use trace_core::compare::{compare, nft_ruleset};
use trace_core::step::StepId;

fn fixtures() -> Option<PathBuf> {
    let dir = std::env::var_os("IPTRACE_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures"))
        .join("docker");
    if dir.is_dir() {
        Some(dir)
    } else {
        eprintln!(
            "SKIP: fixture directory {} not found (set IPTRACE_FIXTURES to the fixtures root)",
            dir.display()
        );
        None
    }
}

fn read(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Reference packets turned into "captured" ones: their resolved paths and headers. Lets one
/// kernel output play the captured side against another.
fn as_captured(r: &ParsedReference, resolver: &Resolver) -> Vec<CapturedPacket> {
    r.packets
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
            steps: p
                .steps()
                .iter()
                .map(|s| resolver.step(s).unwrap())
                .collect(),
            table_paths: Vec::new(),
            implicit_returns: None,
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

#[test]
fn nft_remote_syn_maps_to_the_legacy_trace_sequence() {
    let Some(d) = fixtures() else { return };
    let rs = nft_ruleset::parse(&read(&d, "nft-remote.nft-ruleset.txt")).unwrap();
    let resolver = Resolver::new(None, Some(&rs));
    for file in ["nft-remote.txt", "nft-remote.nft-monitor.txt"] {
        let r = reference::parse(&read(&d, file), None);
        let ids: Vec<String> = r.packets[0]
            .steps()
            .iter()
            .map(|s| resolver.step(s).unwrap().to_string())
            .collect();
        // nft shows the TRACE rule itself; legacy starts after it.
        assert_eq!(ids[0], "raw:PREROUTING:rule:1", "{file}");
        assert_eq!(ids[1..], REMOTE_SYN, "{file}");
        // Later packets: conntrack skips nat and FORWARD rule 7 accepts.
        let ack: Vec<String> = r.packets[1]
            .steps()
            .iter()
            .map(|s| resolver.step(s).unwrap().to_string())
            .collect();
        assert!(
            ack.contains(&"filter:FORWARD:rule:7".to_string()),
            "{file}: {ack:?}"
        );
        assert!(
            !ack.iter().any(|s| s.starts_with("nat:")),
            "{file}: {ack:?}"
        );
    }
}

#[test]
fn xtables_monitor_rule_text_maps_through_the_iptables_dump_alone() {
    let Some(d) = fixtures() else { return };
    let dump = trace_core::rules::parse(&read(&d, "nft-remote.iptables-save.txt")).unwrap();
    let rs = nft_ruleset::parse(&read(&d, "nft-remote.nft-ruleset.txt")).unwrap();
    let by_text = Resolver::new(Some(&dump), None);
    let by_handle = Resolver::new(None, Some(&rs));
    let both = Resolver::new(Some(&dump), Some(&rs));
    let r = reference::parse(&read(&d, "nft-remote.txt"), None);
    for p in &r.packets {
        for s in p.steps() {
            let want = by_handle.step(s).unwrap();
            assert_eq!(by_text.step(s).unwrap(), want, "line {}", s.line);
            assert_eq!(both.step(s).unwrap(), want, "line {}", s.line);
        }
    }
}

#[test]
fn xtables_monitor_and_nft_monitor_agree_through_compare() {
    let Some(d) = fixtures() else { return };
    for name in ["nft-remote", "nft-local"] {
        let rs = nft_ruleset::parse(&read(&d, &format!("{name}.nft-ruleset.txt"))).unwrap();
        let resolver = Resolver::new(None, Some(&rs));
        let xt = reference::parse(&read(&d, &format!("{name}.txt")), None);
        let nm = reference::parse(&read(&d, &format!("{name}.nft-monitor.txt")), None);
        let report = compare(
            &nm,
            &as_captured(&xt, &resolver),
            &resolver,
            &MatchOptions::default(),
        );
        assert_eq!(report.totals.agree, 6, "{name}: {}", report.render_text(3));
        assert_eq!(report.exit_code(), exit::AGREE);
    }
}

#[test]
fn a_shifted_rule_makes_compare_disagree() {
    let Some(d) = fixtures() else { return };
    let text = read(&d, "nft-remote.nft-ruleset.txt");
    let good = nft_ruleset::parse(&text).unwrap();
    // Someone inserted a rule at the top of FORWARD after the capture: every FORWARD
    // position shifts by one.
    let edited = text.replacen(
        "counter packets 10 bytes 583 jump DOCKER-USER # handle 8",
        "iifname \"lo\" accept # handle 99\n\t\tcounter packets 10 bytes 583 jump DOCKER-USER # handle 8",
        1,
    );
    let bad = nft_ruleset::parse(&edited).unwrap();
    let xt = reference::parse(&read(&d, "nft-remote.txt"), None);
    let captured = as_captured(&xt, &Resolver::new(None, Some(&good)));
    let report = compare(
        &xt,
        &captured,
        &Resolver::new(None, Some(&bad)),
        &MatchOptions::default(),
    );
    assert_eq!(report.totals.differ, 6, "{}", report.render_text(1));
    assert_eq!(report.exit_code(), exit::DIFFER);
    let Outcome::Differ { diff } = &report.packets[0].outcome else {
        panic!("{:?}", report.packets[0].outcome)
    };
    let first = &diff.rows[diff.first_difference.unwrap()];
    assert_eq!(first.reference.as_deref(), Some("filter:FORWARD:rule:2"));
    assert_eq!(first.captured.as_deref(), Some("filter:FORWARD:rule:1"));
    assert!(report.render_text(1).contains("! filter:FORWARD:rule:2"));
}

#[test]
fn handles_need_a_ruleset_and_that_is_bad_input() {
    let Some(d) = fixtures() else { return };
    let xt = reference::parse(&read(&d, "nft-remote.txt"), None);
    let rs = nft_ruleset::parse(&read(&d, "nft-remote.nft-ruleset.txt")).unwrap();
    let captured = as_captured(&xt, &Resolver::new(None, Some(&rs)));
    let report = compare(
        &xt,
        &captured,
        &Resolver::default(),
        &MatchOptions::default(),
    );
    assert_eq!(report.exit_code(), exit::BAD_INPUT);
    assert!(report.missing_ruleset.unwrap().contains("--nft-ruleset"));
}

#[test]
fn legacy_trace_matches_a_full_captured_path() {
    let Some(d) = fixtures() else { return };
    let r = reference::parse(&read(&d, "legacy-local.txt"), None);
    let h = &r.packets[0].headers[0];
    let path: Vec<StepId> = [
        "raw:OUTPUT:rule:1",
        "raw:OUTPUT:policy:2",
        "mangle:OUTPUT:policy:1",
        "filter:OUTPUT:policy:1",
        "mangle:POSTROUTING:policy:1",
    ]
    .iter()
    .map(|s| s.parse().unwrap())
    .collect();
    let cap = |steps: Vec<StepId>, id| CapturedPacket {
        index: 0,
        ts_ns: None,
        headers: vec![CapturedHeaders {
            src: h.src.unwrap(),
            dst: h.dst.unwrap(),
            proto: Some(6),
            sport: h.sport,
            dport: h.dport,
            id: Some(id),
            len: h.len,
            seq: h.seq,
            ack: h.ack,
            tcp_flags: h.tcp_flags,
            frag: None,
            icmp_id: None,
            icmp_seq: None,
            ipv6: None,
        }],
        steps,
        table_paths: Vec::new(),
        implicit_returns: None,
    };
    let ok = compare(
        &r,
        &[cap(path.clone(), 65380)],
        &Resolver::default(),
        &MatchOptions::default(),
    );
    assert_eq!(
        (ok.totals.agree, ok.exit_code()),
        (1, exit::AGREE),
        "{}",
        ok.render_text(1)
    );
    // A packet with another IP id is not this packet.
    let other = compare(
        &r,
        &[cap(path.clone(), 1)],
        &Resolver::default(),
        &MatchOptions::default(),
    );
    assert_eq!(
        (
            other.totals.only_in_reference,
            other.totals.only_in_capture,
            other.exit_code()
        ),
        (1, 1, exit::DIFFER)
    );
    // A different filter verdict position differs.
    let mut wrong = path;
    wrong[3] = "filter:OUTPUT:rule:1".parse().unwrap();
    let bad = compare(
        &r,
        &[cap(wrong, 65380)],
        &Resolver::default(),
        &MatchOptions::default(),
    );
    assert_eq!((bad.totals.differ, bad.exit_code()), (1, exit::DIFFER));
}

/// Packets of a `tcpdump -i any` capture (pcap, LINUX_SLL2 link type): every record of the
/// same IPv4 packet (same id, seq, ack — it is seen once per interface, before and after
/// NAT) becomes one packet with a header snapshot per distinct record.
fn pcap_packets(bytes: &[u8]) -> Vec<CapturedPacket> {
    assert_eq!(&bytes[..4], &[0xd4, 0xc3, 0xb2, 0xa1], "little-endian pcap");
    assert_eq!(
        u32::from_le_bytes(bytes[20..24].try_into().unwrap()),
        276,
        "LINUX_SLL2"
    );
    let be16 = |b: &[u8], o: usize| u16::from_be_bytes([b[o], b[o + 1]]);
    let be32 = |b: &[u8], o: usize| u32::from_be_bytes(b[o..o + 4].try_into().unwrap());
    let mut out: Vec<CapturedPacket> = Vec::new();
    let mut off = 24;
    while off + 16 <= bytes.len() {
        let incl = u32::from_le_bytes(bytes[off + 8..off + 12].try_into().unwrap()) as usize;
        let rec = &bytes[off + 16..off + 16 + incl];
        off += 16 + incl;
        let ip = &rec[20..];
        if be16(rec, 0) != 0x0800 || ip[9] != 6 {
            continue;
        }
        let ihl = usize::from(ip[0] & 0x0f) * 4;
        let tcp = &ip[ihl..];
        let h = CapturedHeaders {
            src: std::net::Ipv4Addr::from(be32(ip, 12)).into(),
            dst: std::net::Ipv4Addr::from(be32(ip, 16)).into(),
            proto: Some(6),
            sport: Some(be16(tcp, 0)),
            dport: Some(be16(tcp, 2)),
            id: Some(be16(ip, 4)),
            len: Some(u32::from(be16(ip, 2))),
            seq: Some(be32(tcp, 4)),
            ack: Some(be32(tcp, 8)),
            tcp_flags: Some(tcp[13]),
            frag: None,
            icmp_id: None,
            icmp_seq: None,
            ipv6: None,
        };
        let same = |c: &CapturedPacket| {
            c.headers
                .iter()
                .any(|o| (o.id, o.seq, o.ack) == (h.id, h.seq, h.ack))
        };
        match out.iter_mut().find(|c| same(c)) {
            Some(c) if !c.headers.contains(&h) => c.headers.push(h),
            Some(_) => {}
            None => out.push(CapturedPacket {
                index: out.len(),
                ts_ns: None,
                headers: vec![h],
                steps: Vec::new(),
                table_paths: Vec::new(),
                implicit_returns: None,
            }),
        }
    }
    out
}

#[test]
fn log_lines_match_the_pcap_packets_and_their_log_rule() {
    let Some(d) = fixtures() else { return };
    for name in ["legacy-log-remote", "nft-log-remote"] {
        let dump =
            trace_core::rules::parse(&read(&d, &format!("{name}.iptables-save.txt"))).unwrap();
        let resolver = Resolver::new(Some(&dump), None);
        assert_eq!(
            resolver
                .log_rules("TCLOG-PRE: ")
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            ["raw:PREROUTING:rule:1"]
        );
        let r = reference::parse(&read(&d, &format!("{name}.txt")), None);
        let mut caps = pcap_packets(&std::fs::read(d.join(format!("{name}.pcap"))).unwrap());
        // Each logged line is exactly one packet of the capture (ID, length, ports, flags).
        for p in &r.packets {
            let n = caps
                .iter()
                .filter(|c| trace_core::compare::matching::packets_agree(p, c))
                .count();
            assert_eq!(n, 1, "{name} line {}", p.line);
        }
        // What iptrace would reconstruct for them: the raw LOG rule matched client→server
        // packets (the rule is `-d 192.168.64.4/32 -p tcp --dport 10000`).
        for c in &mut caps {
            if c.headers[0].dport == Some(10000) {
                c.steps = ["raw:PREROUTING:rule:1", "raw:PREROUTING:policy:2"]
                    .iter()
                    .map(|s| s.parse().unwrap())
                    .collect();
            }
        }
        let report = compare(&r, &caps, &resolver, &MatchOptions::default());
        assert_eq!(
            (
                report.totals.agree,
                report.totals.differ,
                report.exit_code()
            ),
            (2, 0, exit::AGREE),
            "{name}: {}",
            report.render_text(3)
        );
        // The fixture's log holds 2 of the connection's 6 logged packets: the other 4 went
        // through the LOG rule but have no line — reported, not hidden.
        assert_eq!(report.totals.only_in_capture, 4, "{name}");
        // Moving the LOG rule out of the packets' path is a disagreement.
        for c in &mut caps {
            c.steps.retain(|s| s.to_string() != "raw:PREROUTING:rule:1");
        }
        let moved = compare(&r, &caps, &resolver, &MatchOptions::default());
        assert_eq!((moved.totals.differ, moved.exit_code()), (2, exit::DIFFER));
        assert!(matches!(
            moved.packets[0].outcome,
            Outcome::LogNotInPath { .. }
        ));
    }
}

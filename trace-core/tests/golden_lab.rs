//! Golden test on a real capture (tests/golden_lab, see its README): PacketTraces assembled
//! from the nfhook probes' events in the lab, reconstructed against the node's dump, agree
//! packet by packet with `xtables-monitor --trace` recorded in the same run, and every table
//! of every packet is confirmed by the kernel's evidence.

use trace_core::compare::captured::CapturedPacket;
use trace_core::compare::reference::{self, Format};
use trace_core::compare::resolve::Resolver;
use trace_core::eval::{Evaluator, NetContext};
use trace_core::packet::PacketTrace;
use trace_core::reconstruct::{reconstruct, ReconstructedPacket, Status};

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden_lab");

fn read(name: &str) -> String {
    std::fs::read_to_string(format!("{DIR}/{name}")).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// `ip -d -j addr show` → NetContext (the same parsing the collector does, restated here:
/// trace-core cannot depend on trace-user).
fn context() -> NetContext {
    let v: serde_json::Value = serde_json::from_str(&read("node.ip-addr.json")).unwrap();
    let mut addrs = Vec::new();
    let mut bridges = Vec::new();
    for link in v.as_array().unwrap() {
        let name = link["ifname"].as_str().unwrap().to_string();
        if link["linkinfo"]["info_kind"] == "bridge" {
            bridges.push(name.clone());
        }
        for a in link["addr_info"].as_array().into_iter().flatten() {
            addrs.push(trace_core::eval::IfaceAddr {
                iface: name.clone(),
                addr: a["local"].as_str().unwrap().parse().unwrap(),
                broadcast: a["broadcast"].as_str().map(|b| b.parse().unwrap()),
            });
        }
    }
    let mut ctx = NetContext::from_addrs(addrs);
    ctx.bridges = bridges;
    ctx.bridges_known = true;
    ctx
}

fn reconstructed() -> Vec<ReconstructedPacket> {
    reconstructed_with(&context())
}

fn reconstructed_with(ctx: &NetContext) -> Vec<ReconstructedPacket> {
    let rs = trace_core::rules::parse(&read("node.iptables-nft-save.txt")).unwrap();
    let ev = Evaluator::new(rs);
    read("packets.jsonl")
        .lines()
        .map(|l| serde_json::from_str::<PacketTrace>(l).unwrap())
        .map(|p| reconstruct(&p, &ev, ctx))
        .collect()
}

/// Without the netns's addresses, `-m addrtype` is decided by the kernel's own routing
/// decisions (INPUT vs FORWARD after PREROUTING, `lo` or not on output): still all confirmed.
#[test]
fn routing_evidence_decides_addrtype_without_the_addresses() {
    for rp in reconstructed_with(&NetContext::unknown()) {
        assert_eq!(
            rp.status,
            Status::Confirmed,
            "packet {}: {:#?}",
            rp.packet.id,
            rp.hooks
        );
    }
}

#[test]
fn every_captured_table_is_confirmed() {
    let rps = reconstructed();
    assert_eq!(rps.len(), 20);
    for rp in &rps {
        assert_eq!(
            rp.status,
            Status::Confirmed,
            "packet {}: {:#?}",
            rp.packet.id,
            rp.hooks
        );
    }
    // The first packet is the remote SYN: DNAT observed and explained by nat:DOCKER:rule:3.
    let syn = &rps[0];
    let nat = &syn.hooks[0]
        .tables
        .iter()
        .find(|t| t.table == trace_core::netfilter::Table::Nat)
        .unwrap()
        .paths[0];
    assert_eq!(
        nat.nat.as_ref().unwrap().step.to_string(),
        "nat:DOCKER:rule:3"
    );
    // `-A DOCKER-USER -j RETURN` is a real rule (labelled like the chain end): not implicit.
    let ret = syn
        .steps()
        .find(|(_, _, s)| s.id.to_string() == "filter:DOCKER-USER:return:1")
        .unwrap()
        .2;
    assert!(!ret.implicit_return);
}

#[test]
fn reconstruction_agrees_with_the_kernels_trace_of_the_same_run() {
    let rps = reconstructed();
    let captured: Vec<CapturedPacket> = rps.iter().map(CapturedPacket::from).collect();
    let reference = reference::parse(
        &read("node.xtables-monitor.txt"),
        Some(Format::XtablesMonitor),
    );
    assert!(reference.malformed.is_empty(), "{:?}", reference.malformed);
    let rs = trace_core::rules::parse(&read("node.iptables-nft-save.txt")).unwrap();
    let report = trace_core::compare::compare(
        &reference,
        &captured,
        &Resolver::new(Some(&rs), None),
        &Default::default(),
    );
    let t = &report.totals;
    assert_eq!(
        (t.reference_packets, t.agree, t.differ, t.only_in_reference),
        (12, 12, 0, 0),
        "{}",
        report.render_text(5)
    );
}

/// Replays a recording of tests/golden_lab: every packet, in capture order.
fn replay_recording(name: &str) -> Vec<ReconstructedPacket> {
    use trace_core::record::{replay::Replayer, RecordingReader};
    let bytes = std::fs::read(format!("{DIR}/{name}")).unwrap();
    let mut replayer = Replayer::new(None);
    let mut packets = Vec::new();
    for item in RecordingReader::new(&bytes[..]).unwrap() {
        packets.extend(replayer.push(item.unwrap().1));
    }
    packets.extend(replayer.finish());
    packets.sort_by_key(|p| p.packet.first_ts_ns);
    packets
}

/// What legacy TRACE prints for these packets: the steps after the TRACE rule.
fn legacy_trace_lines(packets: &[ReconstructedPacket]) -> Vec<String> {
    use trace_core::output::trace::{trace_lines, TraceFrom};
    packets
        .iter()
        .flat_map(|p| trace_lines(p, TraceFrom::TraceTarget))
        .collect()
}

/// The full offline pipeline on a real legacy run: recording → assembly → reconstruction →
/// TRACE lines, byte-identical to the kernel's legacy TRACE output of the same packets.
#[test]
fn replayed_recording_prints_the_kernels_trace_lines() {
    let packets = replay_recording("legacy-run.iptrace");
    // The two test connections (20 packets) and two IGMP reports the node sent meanwhile.
    assert_eq!(packets.len(), 22);
    assert!(packets.iter().all(|p| p.status == Status::Confirmed));
    let kernel: Vec<String> = read("legacy-run.kernel-trace.txt")
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(kernel.len(), 80);
    assert_eq!(legacy_trace_lines(&packets), kernel);
}

/// The same for IPv6 (ip6tables-legacy, the IPv6 LOG format).
#[test]
fn replayed_ipv6_recording_prints_the_kernels_trace_lines() {
    let packets = replay_recording("ipv6-run.iptrace");
    assert!(packets.iter().all(|p| p.status == Status::Confirmed));
    let kernel: Vec<String> = read("ipv6-run.kernel-trace.txt")
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(kernel.len(), 10);
    assert_eq!(legacy_trace_lines(&packets), kernel);
}

/// A hand-written ruleset (goto, RETURN through a goto to the policy, MARK/CONNMARK/DSCP
/// changing what later TRACE lines print, REDIRECT, a `-m limit` LOG, REJECT): the replayed
/// recording prints the kernel's TRACE lines. The limit is the only branch the kernel's
/// evidence cannot settle (both outcomes accept); the path shown first is the one where the
/// limit matched, which the kernel's LOG line confirms.
#[test]
fn handwritten_ruleset_matches_the_kernels_trace() {
    let packets = replay_recording("handwritten-run.iptrace");
    let kernel: Vec<String> = read("handwritten-run.kernel-trace.txt")
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(legacy_trace_lines(&packets), kernel);
    let unsure: Vec<_> = packets
        .iter()
        .flat_map(|p| p.hooks.iter().flat_map(|h| &h.tables))
        .filter(|t| t.status != Status::Confirmed)
        .collect();
    assert_eq!(unsure.len(), 1, "{unsure:#?}");
    let limit = unsure[0];
    assert_eq!((limit.status, limit.paths.len()), (Status::Ambiguous, 2));
    assert!(limit.paths[0]
        .assumptions
        .iter()
        .any(|a| a.chain == "LOGCHAIN" && a.matched && a.what[0].contains("limit")));
    assert!(read("handwritten-run.kernel-log.txt").contains("EVALDEV-X IN=vethxb"));
}

/// A kube-proxy shaped service (statistic random over three DNAT endpoints): every branch
/// is settled by the translation the kernel applied, and the TRACE lines equal the kernel's —
/// except that the capture recorded no socket owner for three FIN packets on which the
/// kernel printed `UID=0 GID=0` (6 lines; see the README): those are compared without it.
#[test]
fn kube_proxy_service_matches_the_kernels_trace() {
    let packets = replay_recording("kube-run.iptrace");
    let unsure: Vec<_> = packets
        .iter()
        .filter(|p| p.status != Status::Confirmed)
        .map(|p| p.packet.id)
        .collect();
    assert!(unsure.is_empty(), "not confirmed: {unsure:?}");
    let dnat_targets: std::collections::BTreeSet<String> = packets
        .iter()
        .flat_map(|p| p.hooks.iter().flat_map(|h| &h.tables))
        .filter_map(|t| t.paths.first()?.nat.as_ref().map(|n| n.to.to_string()))
        .collect();
    assert!(
        dnat_targets.len() >= 2,
        "several endpoints were chosen: {dnat_targets:?}"
    );
    let ours = legacy_trace_lines(&packets);
    let kernel: Vec<String> = read("kube-run.kernel-trace.txt")
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(ours.len(), kernel.len());
    let mut owner_only = 0;
    for (o, k) in ours.iter().zip(&kernel) {
        if o != k {
            assert_eq!(
                format!("{o}UID=0 GID=0 "),
                *k,
                "only the socket owner may differ"
            );
            owner_only += 1;
        }
    }
    assert_eq!(owner_only, 6);
}

/// Loopback: nf_trace set in OUTPUT stays set when the packet comes back in through `lo`
/// (PREROUTING, INPUT), a separate traversal for the assembler; REDIRECT in nat OUTPUT.
#[test]
fn loopback_keeps_nf_trace_across_lo() {
    let packets = replay_recording("loopback-run.iptrace");
    assert!(packets.iter().all(|p| p.status == Status::Confirmed));
    let kernel: Vec<String> = read("loopback-run.kernel-trace.txt")
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(kernel.len(), 22);
    assert!(kernel
        .iter()
        .any(|l| l.starts_with("TRACE: filter:INPUT:rule:1 IN=lo ")));
    assert_eq!(legacy_trace_lines(&packets), kernel);
}

/// A real-world firewalld ruleset (zone chains entered with -g, five tables, REJECT): every
/// packet confirmed and the kernel's 323 TRACE lines reproduced.
#[test]
fn firewalld_ruleset_matches_the_kernels_trace() {
    let packets = replay_recording("firewalld-run.iptrace");
    assert!(packets.iter().all(|p| p.status == Status::Confirmed));
    let kernel: Vec<String> = read("firewalld-run.kernel-trace.txt")
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(kernel.len(), 323);
    assert!(kernel
        .iter()
        .any(|l| l.starts_with("TRACE: security:INPUT:")));
    assert_eq!(legacy_trace_lines(&packets), kernel);
}

/// A real-world ufw + libvirt ruleset (ufw's chain set, addrtype, conntrack, limit LOG chains,
/// interface matches): the kernel's TRACE lines reproduced, every packet confirmed.
#[test]
fn ufw_ruleset_matches_the_kernels_trace() {
    let packets = replay_recording("ufw-run.iptrace");
    assert!(packets.iter().all(|p| p.status == Status::Confirmed));
    let kernel: Vec<String> = read("ufw-run.kernel-trace.txt")
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(kernel.len(), 27);
    assert!(kernel.iter().any(|l| l.contains(":ufw-user-input:")));
    assert_eq!(legacy_trace_lines(&packets), kernel);
}

/// A real-world kube-proxy ruleset: ClusterIP traffic through statistic branches, DNAT,
/// KUBE-MARK-MASQ and MASQUERADE, each settled by the kernel's translations; ICMP errors the
/// node emitted were dropped by nf_nat's ICMP translation without consulting the nat table.
#[test]
fn kube_proxy_corpus_ruleset_matches_the_kernels_trace() {
    let packets = replay_recording("kubeproxy-corpus-run.iptrace");
    assert!(
        packets.iter().all(|p| p.status == Status::Confirmed),
        "{:#?}",
        packets
            .iter()
            .filter(|p| p.status != Status::Confirmed)
            .collect::<Vec<_>>()
    );
    let icmp_drops = packets
        .iter()
        .flat_map(|p| p.hooks.iter().flat_map(|h| &h.tables))
        .filter(|t| {
            t.skipped
                && t.reason
                    .as_deref()
                    .is_some_and(|r| r.contains("that translation dropped it"))
        })
        .count();
    assert!(icmp_drops > 0);
    let kernel: Vec<String> = read("kubeproxy-corpus-run.kernel-trace.txt")
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(kernel.len(), 108);
    assert_eq!(legacy_trace_lines(&packets), kernel);
}

/// The nf_tables backend: xtables-monitor's steps (rules mapped to positions through the
/// rule text they print) equal our path from the TRACE rule on, minus the implicit returns
/// of user chains, which nf_tables does not trace (legacy does).
#[test]
fn nft_backend_trace_is_the_path_without_implicit_returns() {
    use trace_core::compare::reference::xtmon::{parse_line, XtLine};
    use trace_core::compare::reference::RefStepPos;
    let packets = replay_recording("kubeproxy-nft-run.iptrace");
    assert!(packets.iter().all(|p| p.status == Status::Confirmed));
    let rs = {
        let text = std::fs::read(format!("{DIR}/kubeproxy-nft-run.iptrace")).unwrap();
        let first = trace_core::record::RecordingReader::new(&text[..])
            .unwrap()
            .find_map(|r| match r.unwrap().1 {
                trace_core::record::Record::Ruleset { text, .. } => Some(text),
                _ => None,
            });
        trace_core::rules::parse(&first.unwrap()).unwrap()
    };
    // Reference: per packet (a raw PREROUTING TRACE rule line starts one), the mapped steps.
    let mut reference: Vec<Vec<String>> = Vec::new();
    for (n, line) in read("kubeproxy-nft-run.xtables-monitor.txt")
        .lines()
        .enumerate()
    {
        let Some(XtLine::Step { step, .. }) = parse_line(line, n + 1).unwrap() else {
            continue;
        };
        let chain = rs.table(step.table).unwrap().chain(&step.chain).unwrap();
        let id = match &step.pos {
            RefStepPos::Policy => chain.end_step(step.table),
            _ => {
                let text = step.rule_text.as_deref().unwrap();
                let body = &text
                    [text.find(&format!("-A {} ", step.chain)).unwrap() + step.chain.len() + 4..];
                let i = chain
                    .rules
                    .iter()
                    .position(|r| r.text == body)
                    .unwrap_or_else(|| panic!("{body}"));
                chain.step(step.table, i as u32 + 1).unwrap()
            }
        };
        if step.table == trace_core::netfilter::Table::Raw
            && step
                .rule_text
                .as_deref()
                .is_some_and(|t| t.ends_with("-j TRACE"))
        {
            reference.push(Vec::new());
        }
        reference.last_mut().unwrap().push(id.to_string());
    }
    let ours: Vec<Vec<String>> = packets
        .iter()
        .map(|p| {
            let all: Vec<_> = p.steps().map(|(_, _, s)| s).collect();
            let Some(first) = all.iter().position(|s| s.traced) else {
                return Vec::new();
            };
            all[first - 1..]
                .iter()
                .filter(|s| !s.implicit_return)
                .map(|s| s.id.to_string())
                .collect()
        })
        .filter(|v: &Vec<String>| !v.is_empty())
        .collect();
    assert_eq!(reference.len(), 6);
    assert_eq!(ours, reference);
    // And the steps left out are exactly implicit returns legacy TRACE would print.
    let implicit: std::collections::BTreeSet<String> = packets
        .iter()
        .flat_map(|p| {
            p.steps()
                .filter(|(_, _, s)| s.implicit_return)
                .map(|(_, _, s)| s.id.to_string())
        })
        .collect();
    assert!(
        implicit.contains("nat:KUBE-MARK-MASQ:return:2")
            && implicit.contains("filter:KUBE-PROXY-FIREWALL:return:1"),
        "{implicit:?}"
    );
}

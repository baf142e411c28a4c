//! The evaluator on real-world dumps (../shared/corpus/iptables-save, see its README): for
//! every dump that parses, every table and every hook chain it has, a set of packets (TCP
//! SYN/ACK, UDP, ICMP, in each conntrack state, with and without host context) must replay
//! without panicking, end every candidate path at a chain end or a verdict, label every step
//! inside its chain, and keep the candidate count bounded.

use std::path::PathBuf;
use trace_core::eval::{EvalInput, Evaluator, IfaceAddr, NetContext, TableVerdict};
use trace_core::event::{tcp_flags, CtSnapshot, Headers, L4};
use trace_core::netfilter::{Family, Hook, Table};
use trace_core::packet::PacketState;
use trace_core::step::StepKind;

fn corpus() -> Option<PathBuf> {
    let dir = std::env::var_os("IPTRACE_CORPUS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpus/iptables-save")
        });
    if dir.is_dir() {
        Some(dir)
    } else {
        eprintln!(
            "SKIPPED: corpus not found at {} (set IPTRACE_CORPUS)",
            dir.display()
        );
        None
    }
}

fn packets(family: Family) -> Vec<Headers> {
    let (a, b, c) = match family {
        Family::Ipv4 => ("10.0.0.5", "10.0.0.1", "224.0.0.251"),
        Family::Ipv6 => ("2001:db8::5", "2001:db8::1", "ff02::fb"),
    };
    let tcp = |src: &str, dst: &str, sport, dport, flags| Headers {
        src: src.parse().unwrap(),
        dst: dst.parse().unwrap(),
        proto: 6,
        len: 60,
        tos: 0,
        ttl: 64,
        id: 1,
        frag: 0x4000,
        flowlabel: 0,
        l4: L4::Tcp {
            sport,
            dport,
            seq: 1,
            ack: 0,
            window: 100,
            flags,
            res: 0,
            urgp: 0,
            options: vec![2, 4, 5, 0xb4],
        },
    };
    let mut v = Vec::new();
    for dport in [22, 53, 80, 443, 8080, 10250, 30080] {
        v.push(tcp(a, b, 40000, dport, tcp_flags::SYN));
        v.push(tcp(b, a, dport, 40000, tcp_flags::ACK));
    }
    let mut udp = tcp(a, c, 5353, 5353, 0);
    udp.proto = 17;
    udp.l4 = L4::Udp {
        sport: 5353,
        dport: 5353,
        len: 40,
    };
    v.push(udp);
    let mut icmp = tcp(a, b, 0, 0, 0);
    match family {
        Family::Ipv4 => {
            icmp.proto = 1;
            icmp.l4 = L4::Icmp {
                icmp_type: 8,
                code: 0,
                id: 1,
                seq: 1,
                quoted: vec![],
            };
        }
        Family::Ipv6 => {
            icmp.proto = 58;
            icmp.l4 = L4::Icmpv6 {
                icmp_type: 135,
                code: 0,
                id: 0,
                seq: 0,
                quoted: vec![],
            };
        }
    }
    v.push(icmp);
    v
}

fn contexts(family: Family) -> Vec<NetContext> {
    let addr = match family {
        Family::Ipv4 => "10.0.0.1",
        Family::Ipv6 => "2001:db8::1",
    };
    vec![
        NetContext::unknown(),
        NetContext::from_addrs([IfaceAddr {
            iface: "eth0".into(),
            addr: addr.parse().unwrap(),
            broadcast: None,
        }]),
    ]
}

#[test]
fn every_corpus_dump_replays_soundly() {
    let Some(dir) = corpus() else { return };
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let mut replayed = 0;
    for f in files
        .iter()
        .filter(|f| f.extension().is_some_and(|e| e == "rules"))
    {
        let bytes = std::fs::read(f).unwrap();
        let Ok(rs) = trace_core::rules::parse_bytes(&bytes, Default::default()) else {
            continue; // rejected precisely by the parser (its own corpus test checks that)
        };
        let family = rs.family;
        let ev = Evaluator::new(rs.clone());
        for td in &rs.tables {
            for hook in Hook::ALL {
                let Some(chain) = td.chain(hook.chain_name()) else {
                    continue;
                };
                if chain.policy.is_none() || td.table.priority(hook).is_none() {
                    continue;
                }
                for h in packets(family) {
                    for ct in [
                        None,
                        Some(CtSnapshot {
                            ctinfo: 2,
                            status: 0,
                            mark: 0,
                            id: 1,
                        }),
                        Some(CtSnapshot {
                            ctinfo: 0,
                            status: 0x1a,
                            mark: 1,
                            id: 1,
                        }),
                    ] {
                        for ctx in contexts(family) {
                            let state = PacketState {
                                headers: h.clone().into(),
                                mark: 0,
                                ct,
                            };
                            // Received (or forwarded, on POSTROUTING) packets have an input
                            // device; locally generated ones on OUTPUT do not.
                            let input = EvalInput {
                                hook,
                                in_dev: (hook != Hook::Output).then_some("eth0"),
                                out_dev: matches!(
                                    hook,
                                    Hook::Forward | Hook::Output | Hook::Postrouting
                                )
                                .then_some("eth1"),
                                mac: None,
                                uid: None,
                                gid: None,
                                state: &state,
                                nf_trace: false,
                                tuples: Default::default(),
                                dst_local: None,
                                bridge: None,
                            };
                            let t = ev
                                .evaluate(td.table, &input, &ctx)
                                .unwrap_or_else(|e| panic!("{}: {e}", f.display()));
                            assert!(!t.candidates.is_empty(), "{}: no candidate", f.display());
                            for c in &t.candidates {
                                check_candidate(&ev, td.table, &c.steps, &c.verdict, f);
                            }
                            replayed += 1;
                        }
                    }
                }
            }
        }
    }
    eprintln!("{replayed} traversals replayed");
    assert!(replayed > 1000, "only {replayed} traversals replayed");
}

fn check_candidate(
    ev: &Evaluator,
    table: Table,
    steps: &[trace_core::eval::StepRec],
    v: &TableVerdict,
    f: &std::path::Path,
) {
    assert!(!steps.is_empty(), "{}: empty path", f.display());
    let rs = ev.ruleset();
    let td = rs.table(table).unwrap();
    for s in steps {
        let id = ev.step_id(table, s);
        let chain = td.chain(&id.chain).unwrap();
        assert!(
            s.num >= 1 && s.num <= chain.end_num(),
            "{}: {id} out of range",
            f.display()
        );
        assert_eq!(
            chain.step_kind(s.num),
            Some(s.kind),
            "{}: {id} label",
            f.display()
        );
    }
    let last = steps.last().unwrap();
    if matches!(v, TableVerdict::Broken { .. }) {
        return;
    }
    // A traversal ends at a built-in chain's policy, or at a rule whose target decided.
    let ends_at_policy = last.kind == StepKind::Policy;
    let ends_at_rule = ev.rule_text(table, last).is_some();
    assert!(
        ends_at_policy || ends_at_rule,
        "{}: path ends at {}",
        f.display(),
        ev.step_id(table, last)
    );
}

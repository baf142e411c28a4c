//! The reconstruction, through its JSON output, compared by `compare` with the kernel's own
//! traces of the docker fixtures: every packet must agree.
//!
//! The probes' view of each packet is rebuilt from the xtables-monitor PACKET lines (one per
//! base chain = one table on one hook): a table's input is what its PACKET line shows (or
//! what the previous table left, for a table the trace does not show — nat after a
//! connection's first packet), its output is the next table's input. Conntrack as the probes
//! see it (nfhook-prototype-observations.txt): nothing in raw, NEW (ctinfo 2) for the first
//! packet with nat's done-bits accumulating, ESTABLISHED (ctinfo 0, status 0x1ae) after.
//!
//! Then: reconstruct → `output::json::packet_json` (schema iptrace.packet.v1) → the compare
//! reader → `compare` against the xtables-monitor and `nft monitor trace` files.

use std::path::{Path, PathBuf};
use trace_core::compare::captured::parse_jsonl;
use trace_core::compare::matching::MatchOptions;
use trace_core::compare::reference::xtmon::{parse_line, XtLine};
use trace_core::compare::reference::{self, RefHeaders};
use trace_core::compare::resolve::Resolver;
use trace_core::compare::{compare, nft_ruleset};
use trace_core::eval::{Evaluator, IfaceAddr, NetContext};
use trace_core::event::{CtSnapshot, Headers, L4};
use trace_core::netfilter::{Family, Hook, Table};
use trace_core::packet::{HookPass, ObservedVerdict, PacketState, PacketTrace, TableObservation};
use trace_core::rules::Ruleset;

fn fixtures() -> Option<PathBuf> {
    let root = std::env::var_os("IPTRACE_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures"));
    let dir = root.join("docker");
    if dir.is_dir() {
        Some(dir)
    } else {
        eprintln!(
            "SKIP: fixtures not found at {} (set IPTRACE_FIXTURES to the fixtures root)",
            dir.display()
        );
        None
    }
}

fn read(d: &Path, name: &str) -> String {
    std::fs::read_to_string(d.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// The lab's node namespace addresses (fixtures README).
fn node() -> NetContext {
    let a = |iface: &str, addr: &str, brd: Option<&str>| IfaceAddr {
        iface: iface.into(),
        addr: addr.parse().unwrap(),
        broadcast: brd.map(|b| b.parse().unwrap()),
    };
    NetContext::from_addrs([
        a("lo", "127.0.0.1", None),
        a("eth0", "192.168.64.4", Some("192.168.64.255")),
        a("br-00ea7870520a", "172.19.0.1", Some("172.19.255.255")),
        a("docker0", "172.17.0.1", Some("172.17.255.255")),
    ])
}

fn to_headers(r: &RefHeaders) -> Headers {
    Headers {
        src: r.src.unwrap(),
        dst: r.dst.unwrap(),
        proto: 6,
        len: r.len.unwrap_or(0) as u16,
        tos: r.tos.unwrap_or(0),
        ttl: r.ttl.unwrap_or(64),
        id: r.id.unwrap_or(0),
        frag: if r.df { 0x4000 } else { 0 },
        flowlabel: 0,
        l4: L4::Tcp {
            sport: r.sport.unwrap_or(0),
            dport: r.dport.unwrap_or(0),
            seq: 0,
            ack: 0,
            window: 0,
            flags: r.tcp_flags.unwrap_or(0),
            res: 0,
            urgp: 0,
            options: Vec::new(),
        },
    }
}

/// Per packet, the (hook, table, headers) of each base chain the monitor showed.
fn chain_views(text: &str) -> Vec<Vec<(Hook, Table, RefHeaders)>> {
    let mut out: Vec<Vec<(Hook, Table, RefHeaders)>> = Vec::new();
    let mut pending = None;
    for (n, line) in text.lines().enumerate() {
        match parse_line(line, n + 1).unwrap() {
            Some(XtLine::Packet { headers, .. }) => pending = Some(*headers),
            Some(XtLine::Step { step, .. }) => {
                let Some(h) = pending.take() else { continue };
                // The TRACE rule sits in raw: every traced packet starts there.
                if step.table == Table::Raw {
                    out.push(Vec::new());
                }
                out.last_mut().unwrap().push((
                    Hook::from_chain_name(&step.chain).unwrap(),
                    step.table,
                    h,
                ));
            }
            None => {}
        }
    }
    out
}

fn ct(first: bool, status: u32) -> CtSnapshot {
    if first {
        CtSnapshot {
            ctinfo: 2,
            status,
            mark: 0,
            id: 1,
        }
    } else {
        CtSnapshot {
            ctinfo: 0,
            status: 0x1ae,
            mark: 0,
            id: 1,
        }
    }
}

fn packet_trace(
    id: u64,
    views: &[(Hook, Table, RefHeaders)],
    rs: &Ruleset,
    first: bool,
) -> PacketTrace {
    let mut hooks_seen: Vec<Hook> = views.iter().map(|v| v.0).collect();
    hooks_seen.dedup();
    let mut status = 0u32;
    let mut hooks = Vec::new();
    for (hi, hook) in hooks_seen.iter().copied().enumerate() {
        let mine: Vec<&(Hook, Table, RefHeaders)> = views.iter().filter(|v| v.0 == hook).collect();
        let next_hook_in = hooks_seen
            .get(hi + 1)
            .and_then(|h| views.iter().find(|v| v.0 == *h))
            .map(|v| to_headers(&v.2));
        let tables: Vec<Table> = Table::on_hook(hook)
            .into_iter()
            .filter(|t| rs.table(*t).is_some())
            .collect();
        let mut inputs: Vec<Headers> = Vec::new();
        for t in &tables {
            let shown = mine.iter().find(|v| v.1 == *t).map(|v| to_headers(&v.2));
            let carried = inputs
                .last()
                .cloned()
                .unwrap_or_else(|| to_headers(&mine[0].2));
            inputs.push(shown.unwrap_or(carried));
        }
        let mut obs = Vec::new();
        for (ti, t) in tables.iter().copied().enumerate() {
            let before = inputs[ti].clone();
            // Routing (not a table) decrements the TTL between hooks.
            let after = inputs
                .get(ti + 1)
                .cloned()
                .or_else(|| {
                    next_hook_in.clone().map(|h| Headers {
                        ttl: before.ttl,
                        ..h
                    })
                })
                .unwrap_or_else(|| before.clone());
            let ct_before = (t != Table::Raw).then(|| ct(first, status));
            if first && t == Table::Nat {
                status |= match hook {
                    Hook::Prerouting | Hook::Output => {
                        0x100 | if after.dst != before.dst { 0x20 } else { 0 }
                    }
                    _ => 0x80 | if after.src != before.src { 0x10 } else { 0 },
                };
            }
            obs.push(TableObservation {
                table: t,
                priority: t.priority(hook).unwrap(),
                before: PacketState {
                    headers: before.into(),
                    mark: 0,
                    ct: ct_before,
                },
                after: Some(PacketState {
                    headers: after.into(),
                    mark: 0,
                    ct: Some(ct(first, status)),
                }),
                verdict: ObservedVerdict::Accept,
            });
        }
        let h0 = &mine[0].2;
        hooks.push(HookPass {
            hook,
            ts_ns: id * 1000 + hi as u64,
            in_dev: h0.in_dev.clone(),
            out_dev: h0.out_dev.clone(),
            mac: None,
            uid: None,
            gid: None,
            owners: Vec::new(),
            tables: obs,
            stages: Vec::new(),
            probes: Vec::new(),
            bridge: None,
        });
    }
    PacketTrace {
        id,
        skb: id,
        gen: 0,
        netns: 1,
        family: Family::Ipv4,
        first_ts_ns: id * 1000,
        hooks,
        incomplete: false,
        fate: Default::default(),
    }
}

/// Reconstructs the fixture's packets and renders them as iptrace's JSON lines.
fn reconstructed_jsonl(d: &Path, name: &str, rs: &Ruleset) -> String {
    let ev = Evaluator::new(rs.clone());
    let ctx = node();
    chain_views(&read(d, &format!("{name}.txt")))
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let rp = trace_core::reconstruct::reconstruct(
                &packet_trace(i as u64 + 1, v, rs, i == 0),
                &ev,
                &ctx,
            );
            trace_core::output::json::packet_json(&rp).to_string() + "\n"
        })
        .collect()
}

#[test]
fn reconstructions_agree_with_the_kernel_traces_through_compare() {
    let Some(d) = fixtures() else { return };
    for name in ["nft-remote", "nft-local"] {
        let dump =
            trace_core::rules::parse(&read(&d, &format!("{name}.iptables-save.txt"))).unwrap();
        let nft = nft_ruleset::parse(&read(&d, &format!("{name}.nft-ruleset.txt"))).unwrap();
        let captured = parse_jsonl(&reconstructed_jsonl(&d, name, &dump)).unwrap();
        assert_eq!(captured.len(), 6, "{name}");
        for (file, resolver) in [
            (
                format!("{name}.txt"),
                Resolver::new(Some(&dump), Some(&nft)),
            ),
            (format!("{name}.txt"), Resolver::new(Some(&dump), None)),
            (
                format!("{name}.nft-monitor.txt"),
                Resolver::new(Some(&dump), Some(&nft)),
            ),
        ] {
            let r = reference::parse(&read(&d, &file), None);
            let report = compare(&r, &captured, &resolver, &MatchOptions::default());
            assert_eq!(
                (report.totals.agree, report.totals.differ),
                (6, 0),
                "{file}: {}",
                report.render_text(6)
            );
            assert_eq!(report.exit_code(), 0, "{file}");
        }
    }
}

#[test]
fn reconstruction_against_an_edited_dump_disagrees_with_the_kernel() {
    let Some(d) = fixtures() else { return };
    let text = read(&d, "nft-remote.iptables-save.txt");
    let dump = trace_core::rules::parse(&text).unwrap();
    // A stale dump: the ESTABLISHED rule is gone. The reconstruction follows the dump; the
    // kernel's trace (taken with the real rules) shows rule 7: compare must say so.
    let gone = "-A FORWARD -o br-00ea7870520a -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT";
    let stale: String = text
        .lines()
        .filter(|l| !l.ends_with(gone))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(stale.lines().count() + 1, text.lines().count());
    let stale = trace_core::rules::parse(&stale).unwrap();
    let captured = parse_jsonl(&reconstructed_jsonl(&d, "nft-remote", &stale)).unwrap();
    let nft = nft_ruleset::parse(&read(&d, "nft-remote.nft-ruleset.txt")).unwrap();
    let r = reference::parse(&read(&d, "nft-remote.txt"), None);
    let report = compare(
        &r,
        &captured,
        &Resolver::new(Some(&dump), Some(&nft)),
        &MatchOptions::default(),
    );
    assert!(
        report.totals.differ >= 5,
        "the 5 established packets differ: {}",
        report.render_text(2)
    );
    assert_eq!(report.exit_code(), 1);
}

//! `compare` against nf_tables traces: a user chain that ends without a RETURN rule.
//!
//! Legacy TRACE prints the end of such a chain (`return:N`, N = rules + 1); nf_tables returns
//! implicitly and xtables-monitor / `nft monitor trace` print nothing there. An explicit
//! `-j RETURN` rule is traced by both, and so is a base chain's policy. The data in
//! tests/compare_implicit_return (see its README) is what the kernel printed for the same
//! hand-written ruleset on both backends, with iptrace's own capture of the same packets.

use trace_core::compare::captured::{parse_jsonl, CapturedPacket};
use trace_core::compare::matching::MatchOptions;
use trace_core::compare::reference::{self, Format};
use trace_core::compare::report::{Outcome, Report};
use trace_core::compare::resolve::Resolver;
use trace_core::compare::{compare, nft_ruleset};
use trace_core::rules::Ruleset;
use trace_core::step::StepId;

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/compare_implicit_return");

fn read(name: &str) -> String {
    std::fs::read_to_string(format!("{DIR}/{name}")).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn dump(name: &str) -> Ruleset {
    trace_core::rules::parse(&read(name)).unwrap()
}

/// A recording replayed and reconstructed in process, as `iptrace compare RECORDING` does.
fn replayed(name: &str) -> Vec<CapturedPacket> {
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
        .iter()
        .enumerate()
        .map(|(i, p)| CapturedPacket {
            index: i,
            ..CapturedPacket::from(p)
        })
        .collect()
}

fn ids(v: &[&str]) -> Vec<StepId> {
    v.iter().map(|s| s.parse().unwrap()).collect()
}

/// The path iptrace reconstructs for both test datagrams (both backends, same rules).
const FULL_PATH: [&str; 12] = [
    "raw:PREROUTING:rule:1",
    "raw:PREROUTING:policy:2",
    "filter:INPUT:rule:1",
    "filter:FALL:rule:1",
    "filter:FALL:return:3",
    "filter:INPUT:rule:2",
    "filter:EMPTY:return:1",
    "filter:INPUT:rule:3",
    "filter:EXPL:return:2",
    "filter:INPUT:rule:4",
    "filter:GT:return:2",
    "filter:INPUT:policy:5",
];

/// The chain ends legacy prints and nf_tables does not: FALL (its last rule did not match),
/// the empty EMPTY, and GT entered by `-g` (then INPUT's policy decides).
const IMPLICIT: [&str; 3] = [
    "filter:FALL:return:3",
    "filter:EMPTY:return:1",
    "filter:GT:return:2",
];

fn run(
    reference_text: &str,
    format: Option<Format>,
    captured: &[CapturedPacket],
    resolver: &Resolver,
) -> Report {
    let parsed = reference::parse(reference_text, format);
    assert!(parsed.malformed.is_empty(), "{:?}", parsed.malformed);
    compare(&parsed, captured, resolver, &MatchOptions::default())
}

fn assert_all_agree(r: &Report, n: usize) {
    assert_eq!(r.totals.reference_packets, n, "{}", r.render_text(10));
    assert_eq!(r.totals.agree, n, "{}", r.render_text(10));
    assert_eq!(r.exit_code(), 0);
}

/// The rows of the only differing packet: (reference, captured) per row.
fn differing_rows(r: &Report) -> Vec<(Option<String>, Option<String>)> {
    assert_eq!(r.exit_code(), 1, "{}", r.render_text(10));
    let diff = r
        .packets
        .iter()
        .find_map(|p| match &p.outcome {
            Outcome::Differ { diff } => Some(diff),
            _ => None,
        })
        .expect("a differing packet");
    diff.rows
        .iter()
        .map(|row| (row.reference.clone(), row.captured.clone()))
        .collect()
}

#[test]
fn the_capture_marks_exactly_the_chain_ends_without_a_return_rule() {
    let captured = replayed("nft-run.iptrace");
    assert_eq!(captured.len(), 2);
    for c in &captured {
        assert_eq!(c.steps, ids(&FULL_PATH));
        assert_eq!(c.implicit_returns.as_deref(), Some(&ids(&IMPLICIT)[..]));
    }
    // The JSON iptrace printed in the same run carries the same flags (`implicit_return`).
    let json = parse_jsonl(&read("nft.capture.jsonl")).unwrap();
    assert_eq!(json.len(), 2);
    for c in &json {
        assert_eq!(c.steps, ids(&FULL_PATH));
        assert_eq!(c.implicit_returns.as_deref(), Some(&ids(&IMPLICIT)[..]));
    }
}

/// The reported bug: xtables-monitor shows no step for FALL, EMPTY and GT's ends.
#[test]
fn xtables_monitor_agrees_without_the_implicit_returns() {
    let d = dump("nft.iptables-save.txt");
    let nft = nft_ruleset::parse(&read("nft.nft-ruleset.txt")).unwrap();
    let text = read("nft.xtables-monitor.txt");
    for captured in [
        replayed("nft-run.iptrace"),
        parse_jsonl(&read("nft.capture.jsonl")).unwrap(),
    ] {
        assert_all_agree(
            &run(&text, None, &captured, &Resolver::new(Some(&d), None)),
            2,
        );
        assert_all_agree(
            &run(&text, None, &captured, &Resolver::new(None, Some(&nft))),
            2,
        );
        assert_all_agree(
            &run(&text, None, &captured, &Resolver::new(Some(&d), Some(&nft))),
            2,
        );
    }
}

#[test]
fn nft_monitor_agrees_without_the_implicit_returns() {
    let nft = nft_ruleset::parse(&read("nft.nft-ruleset.txt")).unwrap();
    let r = run(
        &read("nft.nft-monitor.txt"),
        Some(Format::NftMonitor),
        &replayed("nft-run.iptrace"),
        &Resolver::new(None, Some(&nft)),
    );
    assert_all_agree(&r, 2);
}

/// Only the implicit returns leave the captured side: the explicit `-A EXPL -j RETURN`
/// (traced by nft as a rule with verdict return, labelled `return:2` like legacy does) and
/// the base-chain policies stay — a reference missing them differs.
#[test]
fn explicit_returns_and_policies_are_still_compared() {
    let d = dump("nft.iptables-save.txt");
    let resolver = Resolver::new(Some(&d), None);
    let captured = replayed("nft-run.iptrace");
    let text = read("nft.xtables-monitor.txt");
    let first_packet_without = |needle: &str| {
        let line = text.lines().position(|l| l.contains(needle)).unwrap();
        text.lines()
            .enumerate()
            .filter(|(n, _)| *n != line)
            .map(|(_, l)| l)
            .collect::<Vec<_>>()
            .join("\n")
    };
    let rows = differing_rows(&run(
        &first_packet_without("filter:EXPL:rule:0xf:"),
        None,
        &captured,
        &resolver,
    ));
    assert!(
        rows.contains(&(
            Some("filter:INPUT:rule:4".into()),
            Some("filter:EXPL:return:2".into())
        )),
        "{rows:?}"
    );
    let rows = differing_rows(&run(
        &first_packet_without("filter:INPUT:policy:ACCEPT"),
        None,
        &captured,
        &resolver,
    ));
    assert_eq!(
        rows.last().unwrap(),
        &(None, Some("filter:INPUT:policy:5".into()))
    );
    // The captured rows shown against nft are the path without the implicit returns.
    let captured_side: Vec<String> = rows.iter().filter_map(|r| r.1.clone()).collect();
    let expected: Vec<&str> = FULL_PATH
        .iter()
        .copied()
        .filter(|s| !IMPLICIT.contains(s))
        .collect();
    assert_eq!(captured_side, expected);
}

/// Legacy TRACE prints every chain end: nothing is dropped, and a legacy reference missing
/// one differs.
#[test]
fn legacy_trace_keeps_every_step() {
    let d = dump("legacy.iptables-save.txt");
    let resolver = Resolver::new(Some(&d), None);
    let captured = replayed("legacy-run.iptrace");
    assert_eq!(captured.len(), 2);
    assert_eq!(captured[0].steps, ids(&FULL_PATH));
    let text = read("legacy.kmsg.txt");
    assert_all_agree(&run(&text, None, &captured, &resolver), 2);
    let without: String = text
        .lines()
        .filter(|l| !l.contains("TRACE: filter:EMPTY:return:1"))
        .map(|l| format!("{l}\n"))
        .collect();
    let rows = differing_rows(&run(&without, None, &captured, &resolver));
    assert!(
        rows.contains(&(
            Some("filter:INPUT:rule:3".into()),
            Some("filter:EMPTY:return:1".into())
        )),
        "{rows:?}"
    );
}

/// Captured JSON from a producer that does not mark implicit returns (bare step strings):
/// the chain ends are found through the ruleset the reference is resolved with.
#[test]
fn unmarked_captured_steps_are_judged_by_the_ruleset() {
    let bare: String = parse_jsonl(&read("nft.capture.jsonl"))
        .unwrap()
        .iter()
        .map(|c| {
            let h = &c.headers[0];
            let steps: Vec<String> = c.steps.iter().map(ToString::to_string).collect();
            let v = serde_json::json!({"steps": steps, "headers": {"src": h.src, "dst": h.dst, "proto": h.proto, "id": h.id, "len": h.len, "sport": h.sport, "dport": h.dport}});
            format!("{v}\n")
        })
        .collect();
    let captured = parse_jsonl(&bare).unwrap();
    assert!(captured.iter().all(|c| c.implicit_returns.is_none()));
    let d = dump("nft.iptables-save.txt");
    assert_all_agree(
        &run(
            &read("nft.xtables-monitor.txt"),
            None,
            &captured,
            &Resolver::new(Some(&d), None),
        ),
        2,
    );
    let nft = nft_ruleset::parse(&read("nft.nft-ruleset.txt")).unwrap();
    assert_all_agree(
        &run(
            &read("nft.nft-monitor.txt"),
            None,
            &captured,
            &Resolver::new(None, Some(&nft)),
        ),
        2,
    );
}

/// A kernel whose nft trace does show a chain end (an xtables-monitor `return` event, as
/// older kernels emitted when falling off a chain) is compared with the full path.
#[test]
fn a_reference_that_shows_chain_ends_keeps_them() {
    let d = dump("nft.iptables-save.txt");
    let resolver = Resolver::new(Some(&d), None);
    let captured = replayed("nft-run.iptrace");
    let mut lines: Vec<String> = Vec::new();
    for l in read("nft.xtables-monitor.txt").lines() {
        lines.push(l.to_string());
        let id = l.split_whitespace().nth(2).unwrap_or("").to_string();
        if l.contains("filter:FALL:rule:0xc:") {
            lines.push(format!(" TRACE: 2 {id} filter:FALL:return:CONTINUE "));
        } else if l.contains("filter:INPUT:rule:0x9:") {
            lines.push(format!(" TRACE: 2 {id} filter:EMPTY:return:CONTINUE "));
        } else if l.contains("filter:INPUT:rule:0xb:") {
            lines.push(format!(" TRACE: 2 {id} filter:GT:return:CONTINUE "));
        }
    }
    assert_all_agree(&run(&lines.join("\n"), None, &captured, &resolver), 2);
}

/// The evaluator's case: the kube-proxy corpus ruleset on iptables-nft (golden_lab
/// kubeproxy-nft-run), KUBE-MARK-MASQ (one MARK rule) and the empty KUBE-PROXY-FIREWALL fall
/// through. Every traced packet agrees with xtables-monitor.
#[test]
fn kube_proxy_on_nf_tables_agrees_with_xtables_monitor() {
    use trace_core::record::{Record, RecordingReader};
    let golden = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden_lab");
    let bytes = std::fs::read(format!("{golden}/kubeproxy-nft-run.iptrace")).unwrap();
    let dump_text = RecordingReader::new(&bytes[..])
        .unwrap()
        .find_map(|r| match r.unwrap().1 {
            Record::Ruleset { text, .. } => Some(text),
            _ => None,
        })
        .unwrap();
    let d = trace_core::rules::parse(&dump_text).unwrap();
    let mut replayer = trace_core::record::replay::Replayer::new(None);
    let mut packets = Vec::new();
    for item in RecordingReader::new(&bytes[..]).unwrap() {
        packets.extend(replayer.push(item.unwrap().1));
    }
    packets.extend(replayer.finish());
    packets.sort_by_key(|p| p.packet.first_ts_ns);
    let captured: Vec<CapturedPacket> = packets
        .iter()
        .enumerate()
        .map(|(i, p)| CapturedPacket {
            index: i,
            ..CapturedPacket::from(p)
        })
        .collect();
    let implicit: Vec<String> = captured
        .iter()
        .flat_map(|c| c.implicit_returns.iter().flatten())
        .map(ToString::to_string)
        .collect();
    assert!(
        implicit.iter().any(|s| s == "nat:KUBE-MARK-MASQ:return:2")
            && implicit
                .iter()
                .any(|s| s == "filter:KUBE-PROXY-FIREWALL:return:1"),
        "{implicit:?}"
    );
    let text =
        std::fs::read_to_string(format!("{golden}/kubeproxy-nft-run.xtables-monitor.txt")).unwrap();
    let r = run(
        &text,
        Some(Format::XtablesMonitor),
        &captured,
        &Resolver::new(Some(&d), None),
    );
    assert_all_agree(&r, 6);
}

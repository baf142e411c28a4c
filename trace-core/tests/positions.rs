//! Rule positions as evidence (issue 6 item 3): rulesets from the parser, packets, and
//! synthetic x_tables call sequences as the kprobe backend reports them — agreement,
//! disagreement (naming chain:rule), branch points resolved by a match result, failed
//! matches reported, invisible rules (IP part + standard target) filled in by the evaluator.

use trace_core::eval::{Evaluator, NetContext};
use trace_core::event::{tcp_flags, CtSnapshot, Headers, L4};
use trace_core::netfilter::{Family, Hook, Table};
use trace_core::output::{format_packet, Format};
use trace_core::packet::{HookPass, ObservedVerdict, PacketState, PacketTrace, TableObservation};
use trace_core::reconstruct::positions::{
    self, Agreement, PositionStore, RuleCall, TablePositions, XtCall,
};
use trace_core::reconstruct::{reconstruct, ReconstructedPacket, Status};
use trace_core::rules;

const DUMP: &str = "\
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:LB - [0:0]
:EP1 - [0:0]
:EP2 - [0:0]
:WEB - [0:0]
-A INPUT -i lo -j ACCEPT
-A INPUT -p tcp -m tcp --dport 22 -j ACCEPT
-A INPUT -p tcp -m tcp --dport 80 -j LOG --log-prefix \"web \"
-A INPUT -s 10.0.0.0/8 -j WEB
-A INPUT -j DROP
-A WEB -p udp -j DROP
-A WEB -p tcp -m tcp --dport 80 -m comment --comment web -j LB
-A WEB -j DROP
-A LB -m statistic --mode random --probability 0.50000000000 -j EP1
-A LB -j EP2
-A EP1 -j ACCEPT
-A EP2 -j ACCEPT
COMMIT
";

fn tcp(dport: u16) -> Headers {
    Headers {
        src: "10.0.0.1".parse().unwrap(),
        dst: "10.0.0.2".parse().unwrap(),
        proto: 6,
        len: 60,
        tos: 0,
        ttl: 64,
        id: 1,
        frag: 0x4000,
        flowlabel: 0,
        l4: L4::Tcp {
            sport: 40000,
            dport,
            seq: 1,
            ack: 0,
            window: 100,
            flags: tcp_flags::SYN,
            res: 0,
            urgp: 0,
            options: vec![],
        },
    }
}

/// A packet through filter INPUT with the kernel's verdict.
fn packet(dport: u16, verdict: ObservedVerdict) -> PacketTrace {
    let state = PacketState {
        headers: tcp(dport).into(),
        mark: 0,
        ct: Some(CtSnapshot {
            ctinfo: 2,
            status: 0,
            mark: 0,
            id: 1,
        }),
    };
    PacketTrace {
        id: 1,
        skb: 0xffff_0001,
        gen: 77,
        netns: 5,
        family: Family::Ipv4,
        first_ts_ns: 0,
        hooks: vec![HookPass {
            hook: Hook::Input,
            ts_ns: 0,
            in_dev: Some("eth0".into()),
            out_dev: None,
            mac: None,
            uid: None,
            gid: None,
            owners: Vec::new(),
            tables: vec![TableObservation {
                table: Table::Filter,
                priority: 0,
                after: matches!(verdict, ObservedVerdict::Accept).then(|| state.clone()),
                before: state,
                verdict,
            }],
            stages: vec![],
            probes: vec![],
            bridge: None,
        }],
        incomplete: false,
        fate: Default::default(),
    }
}

fn m(chain: &str, rule: u32, index: u32, name: &str, matched: bool) -> RuleCall {
    RuleCall {
        chain: chain.into(),
        rule: Some(rule),
        call: XtCall::Match {
            index,
            name: name.into(),
            matched,
        },
    }
}

fn t(chain: &str, rule: u32, name: &str) -> RuleCall {
    RuleCall {
        chain: chain.into(),
        rule: Some(rule),
        call: XtCall::Target { name: name.into() },
    }
}

fn input(calls: Vec<RuleCall>) -> TablePositions {
    TablePositions {
        hook: Hook::Input,
        table: Table::Filter,
        calls,
        complete: true,
    }
}

/// Reconstructs `p` against DUMP, then applies the positions.
fn run(p: &PacketTrace, tp: Option<TablePositions>) -> ReconstructedPacket {
    run_on(DUMP, p, tp)
}

fn run_on(dump: &str, p: &PacketTrace, tp: Option<TablePositions>) -> ReconstructedPacket {
    let ev = Evaluator::new(rules::parse(dump).unwrap());
    let mut rp = reconstruct(p, &ev, &NetContext::unknown());
    if let Some(tp) = tp {
        positions::apply(&mut rp, &ev, &[tp]);
    }
    rp
}

fn steps(rp: &ReconstructedPacket) -> Vec<Vec<String>> {
    rp.hooks[0].tables[0]
        .paths
        .iter()
        .map(|p| p.steps.iter().map(|s| s.id.to_string()).collect())
        .collect()
}

/// The calls the kernel makes for dport 80 when the statistic match says `statistic`.
fn web_calls(statistic: bool) -> Vec<RuleCall> {
    vec![
        m("INPUT", 2, 0, "tcp", false),
        m("INPUT", 3, 0, "tcp", true),
        t("INPUT", 3, "LOG"),
        // INPUT:4 (-s 10/8 -j WEB) is invisible: IP part and a jump.
        // WEB:1 (-p udp) fails in the IP part: nothing.
        m("WEB", 2, 0, "tcp", true),
        m("WEB", 2, 1, "comment", true),
        m("LB", 1, 0, "statistic", statistic),
    ]
}

#[test]
fn without_positions_a_random_balancer_stays_ambiguous() {
    let rp = run(&packet(80, ObservedVerdict::Accept), None);
    let tr = &rp.hooks[0].tables[0];
    assert_eq!(tr.status, Status::Ambiguous, "{tr:#?}");
    assert_eq!(tr.paths.len(), 2);
    assert!(tr.positions.is_none());
}

#[test]
fn match_result_resolves_the_branch_point() {
    for (stat, ep) in [(true, "EP1"), (false, "EP2")] {
        let rp = run(
            &packet(80, ObservedVerdict::Accept),
            Some(input(web_calls(stat))),
        );
        let tr = &rp.hooks[0].tables[0];
        assert_eq!(tr.status, Status::Confirmed, "{tr:#?}");
        assert_eq!(rp.status, Status::Confirmed);
        assert_eq!(tr.ruled_out, 1);
        let pc = tr.positions.as_ref().unwrap();
        assert_eq!(pc.agreement, Agreement::Agree);
        assert_eq!(pc.calls, 6);
        let path = &steps(&rp)[0];
        assert_eq!(
            path,
            &[
                "filter:INPUT:rule:3".to_string(),
                "filter:INPUT:rule:4".into(),
                "filter:WEB:rule:2".into(),
                format!("filter:LB:rule:{}", if stat { 1 } else { 2 }),
                format!("filter:{ep}:return:1"),
            ]
        );
    }
}

#[test]
fn failed_matches_are_reported_in_kernel_order() {
    let rp = run(
        &packet(80, ObservedVerdict::Accept),
        Some(input(web_calls(false))),
    );
    let pc = rp.hooks[0].tables[0].positions.as_ref().unwrap();
    let failed: Vec<(String, u32, &str)> = pc
        .failed
        .iter()
        .map(|f| (f.rule.to_string(), f.index, f.what.as_str()))
        .collect();
    assert_eq!(
        failed,
        [
            ("filter:INPUT:rule:2".to_string(), 0, "-m tcp --dport 22"),
            (
                "filter:LB:rule:1".to_string(),
                0,
                "-m statistic --mode random --probability 0.50000000000"
            ),
        ]
    );
    assert_eq!(
        pc.failed[0].rule_text.as_deref(),
        Some("-p tcp -m tcp --dport 22 -j ACCEPT")
    );
    // Shown in pretty output and JSON; the trace format is unchanged.
    let mut pretty = String::new();
    format_packet(&mut pretty, &rp, Format::Pretty, false);
    // Each where the path evaluated it: INPUT:2 before the first step, LB:1 between
    // WEB:2 and LB:2.
    let lines: Vec<&str> = pretty.lines().map(str::trim).collect();
    let at = |prefix: &str| {
        lines
            .iter()
            .position(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("{prefix}\n{pretty}"))
    };
    assert_eq!(
        lines[at("· filter:INPUT:rule:2")],
        "· filter:INPUT:rule:2  -p tcp -m tcp --dport 22 -j ACCEPT  [match 1 failed: -m tcp --dport 22]"
    );
    assert_eq!(at("· filter:INPUT:rule:2") + 1, at("filter:INPUT:rule:3"));
    assert_eq!(at("filter:WEB:rule:2") + 1, at("· filter:LB:rule:1"));
    assert_eq!(at("· filter:LB:rule:1") + 1, at("filter:LB:rule:2"));
    assert!(!pretty.contains("evaluated, did not match"), "{pretty}");
    assert!(
        pretty.contains("rule positions: 6 calls, agree"),
        "{pretty}"
    );
    let mut json = String::new();
    format_packet(&mut json, &rp, Format::Json, false);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    // The direct writer keeps the format's sorted keys.
    assert_eq!(
        json,
        serde_json::to_string(&trace_core::output::json::packet_json(&rp)).unwrap() + "\n"
    );
    let pos = &v["hooks"][0]["tables"][0]["positions"];
    assert_eq!(pos["agreement"], "agree", "{pos}");
    assert_eq!(pos["failed"][1]["rule"], "filter:LB:rule:1");
    assert_eq!(pos["failed"][1]["index"], 0);
    assert_eq!(pos["failed"][0]["before_step"], 0);
    assert_eq!(pos["failed"][1]["before_step"], 3);
    let mut with = String::new();
    format_packet(&mut with, &rp, Format::Trace, false);
    let mut without = String::new();
    format_packet(
        &mut without,
        &run(
            &packet(80, ObservedVerdict::Accept),
            Some(input(web_calls(false))),
        ),
        Format::Trace,
        false,
    );
    assert_eq!(with, without);
}

#[test]
fn json_without_positions_has_no_positions_key() {
    let rp = run(&packet(80, ObservedVerdict::Accept), None);
    let mut json = String::new();
    format_packet(&mut json, &rp, Format::Json, false);
    assert!(!json.contains("positions"), "{json}");
}

#[test]
fn invisible_rules_are_filled_in_by_the_evaluator() {
    // dport 443 from 10/8: INPUT:2 and :3 fail in tcp, INPUT:4 jumps to WEB invisibly, WEB:1
    // fails in the IP part, WEB:2 fails in tcp, WEB:3 (-j DROP, unconditional) drops: the
    // only calls are three failed tcp matches.
    let calls = vec![
        m("INPUT", 2, 0, "tcp", false),
        m("INPUT", 3, 0, "tcp", false),
        m("WEB", 2, 0, "tcp", false),
    ];
    let rp = run(
        &packet(
            443,
            ObservedVerdict::Drop {
                reason: 12,
                reason_name: None,
            },
        ),
        Some(input(calls)),
    );
    let tr = &rp.hooks[0].tables[0];
    assert_eq!(tr.status, Status::Confirmed, "{tr:#?}");
    assert_eq!(
        steps(&rp)[0],
        ["filter:INPUT:rule:4", "filter:WEB:return:3"]
    );
    assert_eq!(tr.positions.as_ref().unwrap().failed.len(), 3);
}

#[test]
fn a_rule_the_path_does_not_reach_is_inconsistent() {
    // The kernel says WEB:2's tcp match failed: then WEB:3 drops, but the packet was accepted;
    // no candidate can agree.
    let calls = vec![
        m("INPUT", 2, 0, "tcp", false),
        m("INPUT", 3, 0, "tcp", true),
        t("INPUT", 3, "LOG"),
        m("WEB", 2, 0, "tcp", false),
    ];
    let rp = run(&packet(80, ObservedVerdict::Accept), Some(input(calls)));
    let tr = &rp.hooks[0].tables[0];
    assert_eq!(tr.status, Status::Inconsistent);
    assert_eq!(rp.status, Status::Inconsistent);
    let reason = tr.reason.as_deref().unwrap();
    assert!(reason.contains("filter:WEB:rule:2"), "{reason}");
    assert!(reason.contains("returned false"), "{reason}");
    assert!(matches!(
        tr.positions.as_ref().unwrap().agreement,
        Agreement::Disagree { .. }
    ));
    // Every candidate is kept with why the positions rule it out.
    assert!(tr.paths.iter().all(|p| p.rejected.is_some()));
}

#[test]
fn a_call_off_the_path_is_inconsistent() {
    // Statistic matched (EP1), then a call in EP2: neither candidate makes both.
    let mut calls = web_calls(true);
    calls.push(m("EP2", 1, 0, "tcp", false));
    let rp = run(&packet(80, ObservedVerdict::Accept), Some(input(calls)));
    let tr = &rp.hooks[0].tables[0];
    assert_eq!(tr.status, Status::Inconsistent);
    let ep1 = tr
        .paths
        .iter()
        .find(|p| p.steps.iter().any(|s| s.id.chain == "EP1"))
        .unwrap();
    let why = ep1.rejected.as_deref().unwrap();
    assert!(
        why.contains("evaluated filter:EP2:rule:1") && why.contains("does not reach"),
        "{why}"
    );
    let ep2 = tr.paths.iter().find(|p| !std::ptr::eq(*p, ep1)).unwrap();
    let why = ep2.rejected.as_deref().unwrap();
    assert!(
        why.contains("filter:LB:rule:1") && why.contains("the kernel matched it"),
        "{why}"
    );
}

#[test]
fn a_rule_the_kernel_matched_and_the_path_did_not_is_inconsistent() {
    // dport 80: the evaluator decides INPUT:2 (--dport 22) does not match; the kernel says
    // its tcp match returned true (ACCEPT is a standard target: no target call).
    let rp = run(
        &packet(80, ObservedVerdict::Accept),
        Some(input(vec![m("INPUT", 2, 0, "tcp", true)])),
    );
    let tr = &rp.hooks[0].tables[0];
    assert_eq!(tr.status, Status::Inconsistent);
    let reason = tr.reason.as_deref().unwrap();
    assert!(
        reason.contains("filter:INPUT:rule:2: the kernel matched it, this path does not"),
        "{reason}"
    );
}

#[test]
fn a_failed_match_on_a_rule_the_path_matches_is_inconsistent() {
    // dport 22 is accepted by INPUT:2 on the path; the kernel reports INPUT:2's tcp failing
    // and the LOG rule's target running instead.
    let calls = vec![
        m("INPUT", 2, 0, "tcp", false),
        m("INPUT", 3, 0, "tcp", true),
        t("INPUT", 3, "LOG"),
    ];
    let rp = run(&packet(22, ObservedVerdict::Accept), Some(input(calls)));
    let tr = &rp.hooks[0].tables[0];
    assert_eq!(tr.status, Status::Inconsistent);
    let reason = tr.reason.as_deref().unwrap();
    assert!(
        reason.contains("filter:INPUT:rule:2: this path matches it, but the kernel's match #1 (-m tcp --dport 22) returned false"),
        "{reason}"
    );
}

#[test]
fn a_matched_visible_rule_without_calls_is_inconsistent() {
    // The path matches WEB:2 (two matches), but the kernel called nothing there.
    let calls = vec![
        m("INPUT", 2, 0, "tcp", false),
        m("INPUT", 3, 0, "tcp", true),
        t("INPUT", 3, "LOG"),
    ];
    let rp = run(&packet(80, ObservedVerdict::Accept), Some(input(calls)));
    let tr = &rp.hooks[0].tables[0];
    assert_eq!(tr.status, Status::Inconsistent);
    let reason = tr.reason.as_deref().unwrap();
    assert!(
        reason.contains("filter:WEB:rule:2") && reason.contains("called none"),
        "{reason}"
    );
}

#[test]
fn a_stale_dump_shows_as_a_match_index_out_of_range() {
    let mut calls = web_calls(true);
    calls.insert(5, m("WEB", 2, 2, "mark", true));
    let rp = run(&packet(80, ObservedVerdict::Accept), Some(input(calls)));
    let tr = &rp.hooks[0].tables[0];
    assert_eq!(tr.status, Status::Inconsistent);
    assert!(tr.reason.as_deref().unwrap().contains("stale dump"));
}

#[test]
fn incomplete_positions_report_failures_but_decide_nothing() {
    let mut tp = input(web_calls(true));
    tp.complete = false;
    let rp = run(&packet(80, ObservedVerdict::Accept), Some(tp));
    let tr = &rp.hooks[0].tables[0];
    assert_eq!(tr.status, Status::Ambiguous);
    let pc = tr.positions.as_ref().unwrap();
    assert!(matches!(pc.agreement, Agreement::Unchecked { .. }));
    assert_eq!(pc.failed.len(), 1);
    assert_eq!(pc.failed[0].before_step, None);
    let mut pretty = String::new();
    format_packet(&mut pretty, &rp, Format::Pretty, false);
    assert!(
        pretty.contains(
            "evaluated, did not match: filter:INPUT:rule:2  match 1 failed: -m tcp --dport 22"
        ),
        "{pretty}"
    );
}

#[test]
fn positions_of_another_table_or_hook_are_not_applied() {
    let mut tp = input(vec![m("INPUT", 1, 0, "tcp", true)]);
    tp.hook = Hook::Output;
    let rp = run(&packet(80, ObservedVerdict::Accept), Some(tp));
    assert!(rp.hooks[0].tables[0].positions.is_none());
    assert_eq!(rp.status, Status::Ambiguous);
}

#[test]
fn the_same_rule_reached_twice_is_two_evaluations() {
    // CHK is called twice from INPUT; its one rule fails both times.
    let dump = "\
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:CHK - [0:0]
-A INPUT -j CHK
-A INPUT -j CHK
-A CHK -p tcp -m tcp --dport 22 -j DROP
COMMIT
";
    let calls = vec![m("CHK", 1, 0, "tcp", false), m("CHK", 1, 0, "tcp", false)];
    let rp = run_on(
        dump,
        &packet(80, ObservedVerdict::Accept),
        Some(input(calls.clone())),
    );
    let tr = &rp.hooks[0].tables[0];
    assert_eq!(tr.status, Status::Confirmed, "{tr:#?}");
    assert_eq!(tr.positions.as_ref().unwrap().failed.len(), 2);
    // One evaluation missing: CHK:1's IP part (-p tcp) matches, so the kernel must have
    // called its tcp match the second time too.
    let rp = run_on(
        dump,
        &packet(80, ObservedVerdict::Accept),
        Some(input(calls[..1].to_vec())),
    );
    let tr = &rp.hooks[0].tables[0];
    assert_eq!(tr.status, Status::Inconsistent);
    let reason = tr.reason.as_deref().unwrap();
    assert!(
        reason.contains("filter:CHK:rule:1: its IP part matches the packet"),
        "{reason}"
    );
}

#[test]
fn calls_at_a_rule_whose_ip_part_fails_are_inconsistent() {
    let dump = "\
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -i lo -p tcp -m tcp --dport 80 -j DROP
-A INPUT -p tcp -m tcp --dport 80 -j ACCEPT
COMMIT
";
    let p = packet(80, ObservedVerdict::Accept);
    // Agreeing: INPUT:1 fails in its IP part (-i lo; the packet came in on eth0), so only
    // INPUT:2's match is called.
    let ok = run_on(dump, &p, Some(input(vec![m("INPUT", 2, 0, "tcp", true)])));
    assert_eq!(ok.status, Status::Confirmed);
    // The kernel calling INPUT:1's match says its IP part passed: the evaluator's -i test
    // disagrees with the kernel.
    let calls = vec![
        m("INPUT", 1, 0, "tcp", false),
        m("INPUT", 2, 0, "tcp", true),
    ];
    let rp = run_on(dump, &p, Some(input(calls)));
    let tr = &rp.hooks[0].tables[0];
    assert_eq!(tr.status, Status::Inconsistent);
    let reason = tr.reason.as_deref().unwrap();
    assert!(
        reason.contains(
            "filter:INPUT:rule:1: the kernel called its matches, but its IP part does not match"
        ),
        "{reason}"
    );
}

#[test]
fn a_table_inconsistent_by_other_evidence_says_which_path_the_calls_fit() {
    // Every path accepts, the kernel dropped: inconsistent before positions are looked at.
    let rp = run(
        &packet(
            80,
            ObservedVerdict::Drop {
                reason: 12,
                reason_name: None,
            },
        ),
        Some(input(web_calls(false))),
    );
    let tr = &rp.hooks[0].tables[0];
    assert_eq!(tr.status, Status::Inconsistent);
    assert!(!tr.reason.as_deref().unwrap().contains("rule positions"));
    let Agreement::Unchecked { why } = &tr.positions.as_ref().unwrap().agreement else {
        panic!("{tr:#?}");
    };
    let ep2 = 1 + tr
        .paths
        .iter()
        .position(|p| p.steps.iter().any(|s| s.id.chain == "EP2"))
        .unwrap();
    assert!(
        why.ends_with(&format!("the calls fit evaluated path {ep2}")),
        "{why}"
    );
}

/// Seven random LOG rules: 128 paths, 64 explored (those where the first statistic matched).
const MANY: &str = "\
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -m statistic --mode random --probability 0.5 -j LOG
-A INPUT -m statistic --mode random --probability 0.5 -j LOG
-A INPUT -m statistic --mode random --probability 0.5 -j LOG
-A INPUT -m statistic --mode random --probability 0.5 -j LOG
-A INPUT -m statistic --mode random --probability 0.5 -j LOG
-A INPUT -m statistic --mode random --probability 0.5 -j LOG
-A INPUT -m statistic --mode random --probability 0.5 -j LOG
-A INPUT -j ACCEPT
COMMIT
";

fn many_calls(first: bool) -> Vec<RuleCall> {
    let mut calls = Vec::new();
    for r in 1..=7 {
        let matched = r > 1 || first;
        calls.push(m("INPUT", r, 0, "statistic", matched));
        if matched {
            calls.push(t("INPUT", r, "LOG"));
        }
    }
    calls
}

#[test]
fn truncated_exploration_is_confirmed_only_by_an_explored_path() {
    let p = packet(80, ObservedVerdict::Accept);
    let plain = run_on(MANY, &p, None);
    let tr = &plain.hooks[0].tables[0];
    assert!(tr.truncated);
    assert_eq!(tr.status, Status::Ambiguous);
    // Explored: every branch point is a match, so the calls decide them all.
    let rp = run_on(MANY, &p, Some(input(many_calls(true))));
    let tr = &rp.hooks[0].tables[0];
    assert_eq!(tr.status, Status::Confirmed, "{:?}", tr.reason);
    assert_eq!(tr.paths.len(), 1);
    assert_eq!(tr.paths[0].steps.len(), 8);
    // Not explored: nothing is ruled out, and it is said why.
    let rp = run_on(MANY, &p, Some(input(many_calls(false))));
    let tr = &rp.hooks[0].tables[0];
    assert_eq!(tr.status, Status::Ambiguous);
    let Agreement::Unchecked { why } = &tr.positions.as_ref().unwrap().agreement else {
        panic!("{tr:#?}");
    };
    assert!(why.contains("fit none of the 64 paths explored"), "{why}");
    assert!(tr.paths.iter().all(|p| p.rejected.is_none()));
}

#[test]
fn store_hands_positions_to_their_packet_and_evicts_the_oldest() {
    let p = packet(80, ObservedVerdict::Accept);
    let mut store = PositionStore::with_capacity(2);
    store.insert(p.netns, p.skb, p.gen, input(web_calls(true)));
    // Another hook of the same traversal that this packet does not have stays.
    let mut other = input(vec![]);
    other.hook = Hook::Output;
    store.insert(p.netns, p.skb, p.gen, other);
    let got = store.take(&p);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].hook, Hook::Input);
    assert_eq!(store.len(), 1);
    assert!(store.take(&p).is_empty());
    store.insert(1, 1, 1, input(vec![]));
    store.insert(2, 2, 2, input(vec![]));
    assert_eq!(store.evicted, 1);
    assert_eq!(store.len(), 2);
    assert_eq!(store.used, 1);
}

#[test]
fn streaming_input_builds_the_same_traversals() {
    let p = packet(80, ObservedVerdict::Accept);
    let mut store = PositionStore::default();
    assert!(
        store
            .push_call(p.netns, p.skb, p.gen, m("INPUT", 2, 0, "tcp", false))
            .is_none(),
        "a call before any BASE is dropped"
    );
    store.begin_table(p.netns, p.skb, p.gen, Hook::Input, Table::Filter, true);
    for c in web_calls(true) {
        assert!(store.push_call(p.netns, p.skb, p.gen, c).is_some());
    }
    assert_eq!(store.take(&p), [input(web_calls(true))]);
}

#[test]
fn calls_in_a_nat_table_conntrack_skipped_are_inconsistent() {
    let dump = "\
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
-A PREROUTING -p tcp -m tcp --dport 80 -j DNAT --to-destination 10.0.0.9:80
COMMIT
";
    // An established connection: nf_nat_inet_fn applies the binding without the table.
    let mut p = packet(80, ObservedVerdict::Accept);
    let hp = &mut p.hooks[0];
    hp.hook = Hook::Prerouting;
    let obs = &mut hp.tables[0];
    obs.table = Table::Nat;
    obs.priority = -100;
    for st in [Some(&mut obs.before), obs.after.as_mut()]
        .into_iter()
        .flatten()
    {
        st.ct.as_mut().unwrap().ctinfo = 0;
    }
    let tp = |calls| TablePositions {
        hook: Hook::Prerouting,
        table: Table::Nat,
        calls,
        complete: true,
    };
    let rp = run_on(dump, &p, Some(tp(vec![])));
    let tr = &rp.hooks[0].tables[0];
    assert!(tr.skipped);
    assert_eq!(tr.status, Status::Confirmed);
    let rp = run_on(
        dump,
        &p,
        Some(tp(vec![
            m("PREROUTING", 1, 0, "tcp", true),
            t("PREROUTING", 1, "DNAT"),
        ])),
    );
    let tr = &rp.hooks[0].tables[0];
    assert_eq!(tr.status, Status::Inconsistent);
    assert!(
        tr.reason
            .as_deref()
            .unwrap()
            .contains("evaluated nat:PREROUTING:rule:1 although the table was not traversed"),
        "{:?}",
        tr.reason
    );
}

#[test]
fn store_evicts_by_age_of_what_still_waits() {
    let mut p = packet(80, ObservedVerdict::Accept);
    let mut store = PositionStore::with_capacity(2);
    // Many packets come and go: nothing is evicted, everything is used.
    for skb in 0..100 {
        p.skb = skb;
        store.insert(p.netns, skb, p.gen, input(vec![]));
        assert_eq!(store.take(&p).len(), 1);
    }
    assert_eq!((store.used, store.evicted, store.len()), (100, 0, 0));
    // A taken traversal inserted again (the same skb back through lo) is young again.
    p.skb = 1;
    store.insert(p.netns, 1, p.gen, input(vec![]));
    store.take(&p);
    store.insert(p.netns, 1, p.gen, input(vec![]));
    store.insert(p.netns, 2, p.gen, input(vec![]));
    store.insert(p.netns, 3, p.gen, input(vec![]));
    assert_eq!(store.evicted, 1);
    p.skb = 1;
    assert!(store.take(&p).is_empty(), "the oldest waiting one went");
    p.skb = 2;
    assert_eq!(store.take(&p).len(), 1);
}

#[test]
fn a_match_the_evaluator_decides_otherwise_is_inconsistent_even_when_the_rule_fails_anyway() {
    let dump = "\
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -p tcp -m tcp --dport 80 -m mark --mark 0x1 -j DROP
-A INPUT -j ACCEPT
COMMIT
";
    let p = packet(80, ObservedVerdict::Accept);
    // The evaluator: tcp matches, mark 0x1 does not (mark 0).
    let ok = run_on(
        dump,
        &p,
        Some(input(vec![
            m("INPUT", 1, 0, "tcp", true),
            m("INPUT", 1, 1, "mark", false),
        ])),
    );
    assert_eq!(ok.status, Status::Confirmed);
    // The kernel's tcp match failing: the rule still does not match, but the evaluator's
    // model of `-m tcp --dport 80` disagrees with the kernel.
    let rp = run_on(dump, &p, Some(input(vec![m("INPUT", 1, 0, "tcp", false)])));
    let tr = &rp.hooks[0].tables[0];
    assert_eq!(tr.status, Status::Inconsistent);
    let reason = tr.reason.as_deref().unwrap();
    assert!(
        reason.contains("filter:INPUT:rule:1: match #1 (-m tcp --dport 80) returned false in the kernel, the evaluator decides true"),
        "{reason}"
    );
}

#[test]
fn matches_are_decided_with_the_mark_the_path_has_there() {
    // MARK sets 0x1 first: rule 2 (mark 0x0) fails, as the kernel says, only because the
    // path's mark at rule 2 is 0x1, not the packet's 0x0.
    let dump = "\
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -j MARK --set-xmark 0x1/0xffffffff
-A INPUT -m mark --mark 0x0 -j DROP
-A INPUT -j ACCEPT
COMMIT
";
    let mut p = packet(80, ObservedVerdict::Accept);
    p.hooks[0].tables[0].after.as_mut().unwrap().mark = 1;
    let calls = vec![t("INPUT", 1, "MARK"), m("INPUT", 2, 0, "mark", false)];
    let rp = run_on(dump, &p, Some(input(calls)));
    let tr = &rp.hooks[0].tables[0];
    assert_eq!(tr.status, Status::Confirmed, "{tr:#?}");
    assert_eq!(tr.positions.as_ref().unwrap().agreement, Agreement::Agree);
}

#[test]
fn long_address_indexed_chains_are_checked_through_the_index() {
    // 40 exact-destination rules: the evaluator indexes them by address; only the rule for
    // the packet's destination passes its IP part, so only its tcp match is called.
    let mut dump =
        String::from("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n");
    for k in 1..=40 {
        dump.push_str(&format!(
            "-A INPUT -d 10.0.1.{k}/32 -p tcp -m tcp --dport 443 -j ACCEPT\n"
        ));
    }
    dump.push_str("-A INPUT -d 10.0.0.2/32 -p tcp -m tcp --dport 443 -j ACCEPT\nCOMMIT\n");
    let p = packet(80, ObservedVerdict::Accept);
    let rp = run_on(
        &dump,
        &p,
        Some(input(vec![m("INPUT", 41, 0, "tcp", false)])),
    );
    let tr = &rp.hooks[0].tables[0];
    assert_eq!(tr.status, Status::Confirmed, "{tr:#?}");
    assert_eq!(steps(&rp)[0], ["filter:INPUT:policy:42"]);
    // The destination's rule called nothing: its IP part passes, so that is wrong.
    let rp = run_on(&dump, &p, Some(input(vec![])));
    let reason = rp.hooks[0].tables[0].reason.clone().unwrap();
    assert!(
        reason.contains("filter:INPUT:rule:41: its IP part matches the packet"),
        "{reason}"
    );
    // A call at another address's rule: its IP part fails.
    let rp = run_on(
        &dump,
        &p,
        Some(input(vec![
            m("INPUT", 3, 0, "tcp", false),
            m("INPUT", 41, 0, "tcp", false),
        ])),
    );
    let reason = rp.hooks[0].tables[0].reason.clone().unwrap();
    assert!(
        reason.contains(
            "filter:INPUT:rule:3: the kernel called its matches, but its IP part does not match"
        ),
        "{reason}"
    );
}

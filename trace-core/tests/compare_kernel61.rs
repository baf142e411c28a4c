//! `compare` against nf_tables traces of older kernels (Debian's 6.1): leaving a chain is traced
//! as a `return` event — for falling off a user chain, for a `-j RETURN` rule, and for falling
//! off a base chain right before its policy. See tests/compare_kernel61/README.md for what the
//! kernel sends and what xtables-monitor / `nft monitor trace` print for it.
//!
//! Before the fix every such packet differed: each base chain showed `return:N` before
//! `policy:N`, and a `-j RETURN` rule was placed at the chain end (`return:rules+1`).

use trace_core::compare::captured::{parse_jsonl, CapturedPacket};
use trace_core::compare::matching::MatchOptions;
use trace_core::compare::reference::{
    self, Evidence, Format, ParsedReference, RefStep, RefStepPos,
};
use trace_core::compare::report::{Outcome, Report};
use trace_core::compare::resolve::Resolver;
use trace_core::compare::{compare, nft_ruleset};
use trace_core::netfilter::Table;
use trace_core::rules::Ruleset;
use trace_core::step::StepId;

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/compare_kernel61");
const RECORDED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/compare_implicit_return");

fn read(path: String) -> String {
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn ours(name: &str) -> String {
    read(format!("{DIR}/{name}"))
}

fn recorded(name: &str) -> String {
    read(format!("{RECORDED}/{name}"))
}

fn dump() -> Ruleset {
    trace_core::rules::parse(&recorded("nft.iptables-save.txt")).unwrap()
}

fn nft() -> nft_ruleset::NftRuleset {
    nft_ruleset::parse(&recorded("nft.nft-ruleset.txt")).unwrap()
}

/// iptrace's capture of the same packets (printed as JSON in the recorded run).
fn captured() -> Vec<CapturedPacket> {
    parse_jsonl(&recorded("nft.capture.jsonl")).unwrap()
}

fn parsed(text: &str, format: Format) -> ParsedReference {
    let p = reference::parse(text, Some(format));
    assert!(p.malformed.is_empty(), "{:?}", p.malformed);
    p
}

fn run(text: &str, format: Format, captured: &[CapturedPacket], resolver: &Resolver) -> Report {
    compare(
        &parsed(text, format),
        captured,
        resolver,
        &MatchOptions::default(),
    )
}

fn assert_all_agree(r: &Report, n: usize) {
    assert_eq!(r.totals.reference_packets, n, "{}", r.render_text(10));
    assert_eq!(r.totals.agree, n, "{}", r.render_text(10));
    assert_eq!(r.exit_code(), 0);
}

fn steps(p: &ParsedReference, packet: usize) -> &[RefStep] {
    match &p.packets[packet].evidence {
        Evidence::Path { steps } => steps,
        other => panic!("{other:?}"),
    }
}

fn chain_ends(p: &ParsedReference) -> Vec<String> {
    (0..p.packets.len())
        .flat_map(|i| {
            steps(p, i)
                .iter()
                .filter(|s| s.pos == RefStepPos::EndOfChain)
                .map(|s| s.chain.clone())
        })
        .collect()
}

/// The reported bug, on the recorded packets: the 6.1 forms of both monitors agree with the
/// capture under every ruleset combination that can resolve them.
#[test]
fn xtables_monitor_of_6_1_agrees() {
    let (d, n) = (dump(), nft());
    let text = ours("xtables-monitor.txt");
    for resolver in [
        Resolver::new(Some(&d), None),
        Resolver::new(None, Some(&n)),
        Resolver::new(Some(&d), Some(&n)),
    ] {
        assert_all_agree(
            &run(&text, Format::XtablesMonitor, &captured(), &resolver),
            2,
        );
    }
}

#[test]
fn nft_monitor_of_6_1_agrees() {
    let n = nft();
    assert_all_agree(
        &run(
            &ours("nft-monitor.txt"),
            Format::NftMonitor,
            &captured(),
            &Resolver::new(None, Some(&n)),
        ),
        2,
    );
}

/// A base chain's `return` right before its own policy is the fall-through marker: merged
/// into the policy. GT's end stays (INPUT entered it by `-g`; its policy follows GT's end).
#[test]
fn base_chain_ends_merge_into_the_policy_user_chain_ends_stay() {
    for (file, format) in [
        ("xtables-monitor.txt", Format::XtablesMonitor),
        ("nft-monitor.txt", Format::NftMonitor),
    ] {
        let p = parsed(&ours(file), format);
        assert_eq!(p.packets.len(), 2, "{file}");
        assert_eq!(
            chain_ends(&p),
            ["FALL", "EMPTY", "EXPL", "GT", "FALL", "EMPTY", "EXPL", "GT"],
            "{file}"
        );
        let filter = steps(&p, 0);
        let last_two: Vec<_> = filter[filter.len() - 2..]
            .iter()
            .map(|s| (s.chain.as_str(), s.pos.clone()))
            .collect();
        assert_eq!(
            last_two,
            [
                ("GT", RefStepPos::EndOfChain),
                ("INPUT", RefStepPos::Policy)
            ],
            "{file}"
        );
    }
}

/// What a 6.1 chain-end event resolves to: `-A EXPL -j RETURN` is rule 2 of 3 and
/// unconditional, so legacy TRACE labels it `return:2`; the chain end is `return:4`.
/// xtables-monitor prints no verdict (either), nft prints `return` / `continue`.
#[test]
fn chain_end_candidates_follow_the_printed_verdict() {
    let (d, n) = (dump(), nft());
    let end = |verdict: Option<&str>| RefStep {
        table: Table::Filter,
        chain: "EXPL".into(),
        pos: RefStepPos::EndOfChain,
        verdict: verdict.map(str::to_string),
        rule_text: None,
        line: 1,
    };
    let ids = |v: &[&str]| {
        v.iter()
            .map(|s| s.parse::<StepId>().unwrap())
            .collect::<Vec<_>>()
    };
    for resolver in [Resolver::new(Some(&d), None), Resolver::new(None, Some(&n))] {
        assert_eq!(
            resolver.chain_end_candidates(None, &end(None)).unwrap(),
            ids(&["filter:EXPL:return:4", "filter:EXPL:return:2"])
        );
        assert_eq!(
            resolver
                .chain_end_candidates(None, &end(Some("return")))
                .unwrap(),
            ids(&["filter:EXPL:return:2"])
        );
        assert_eq!(
            resolver
                .chain_end_candidates(None, &end(Some("continue")))
                .unwrap(),
            ids(&["filter:EXPL:return:4"])
        );
    }
    // A conditional RETURN rule is `rule:N` in legacy TRACE, and so here.
    let cond = trace_core::rules::parse("*filter\n:INPUT ACCEPT [0:0]\n:U - [0:0]\n-A U -p udp -j RETURN\n-A U -p tcp -j DROP\nCOMMIT\n").unwrap();
    let r = Resolver::new(Some(&cond), None);
    let u = RefStep {
        chain: "U".into(),
        ..end(Some("return"))
    };
    assert_eq!(
        r.chain_end_candidates(None, &u).unwrap(),
        ids(&["filter:U:rule:1"])
    );
    let u = RefStep {
        chain: "U".into(),
        ..end(None)
    };
    assert_eq!(
        r.chain_end_candidates(None, &u).unwrap(),
        ids(&["filter:U:return:3", "filter:U:rule:1"])
    );
}

/// The comparison can still fail: a 6.1 reference missing FALL's end differs, and an nft
/// `verdict continue` (fell off) where iptrace says the RETURN rule fired differs too.
#[test]
fn a_wrong_6_1_reference_still_differs() {
    let d = dump();
    let resolver = Resolver::new(Some(&d), None);
    let text = ours("xtables-monitor.txt");
    let first_fall = text
        .lines()
        .position(|l| l.ends_with("filter:FALL:return:"))
        .unwrap();
    let without: String = text
        .lines()
        .enumerate()
        .filter(|(i, _)| *i != first_fall)
        .map(|(_, l)| format!("{l}\n"))
        .collect();
    let r = run(&without, Format::XtablesMonitor, &captured(), &resolver);
    assert_eq!(
        (r.totals.agree, r.totals.differ),
        (1, 1),
        "{}",
        r.render_text(10)
    );

    let n = nft();
    let text = ours("nft-monitor.txt").replacen("EXPL verdict return", "EXPL verdict continue", 1);
    let r = run(
        &text,
        Format::NftMonitor,
        &captured(),
        &Resolver::new(None, Some(&n)),
    );
    assert_eq!(
        (r.totals.agree, r.totals.differ),
        (1, 1),
        "{}",
        r.render_text(10)
    );
    let rows = r.packets.iter().find_map(|p| match &p.outcome {
        Outcome::Differ { diff } => Some(diff.rows.clone()),
        _ => None,
    });
    let rows = rows.unwrap();
    assert!(
        rows.iter().any(
            |row| row.reference.as_deref() == Some("filter:EXPL:return:4")
                && row.captured.as_deref() == Some("filter:EXPL:return:2")
        ),
        "{rows:?}"
    );
}

/// 6.12 output (the recorded 6.18 files have the same format) is unaffected: no chain-end
/// events, nothing merged, and it agrees as before.
#[test]
fn format_of_6_12_is_unaffected() {
    let (d, n) = (dump(), nft());
    for (file, format) in [
        ("nft.xtables-monitor.txt", Format::XtablesMonitor),
        ("nft.nft-monitor.txt", Format::NftMonitor),
    ] {
        let text = recorded(file);
        let p = parsed(&text, format);
        assert!(chain_ends(&p).is_empty(), "{file}");
        let events = text
            .lines()
            .filter(|l| {
                l.contains(" TRACE: ") || (l.starts_with("trace id ") && !l.contains(" packet: "))
            })
            .count();
        let total: usize = (0..p.packets.len()).map(|i| steps(&p, i).len()).sum();
        assert_eq!(total, events, "{file}: every event is a step");
        assert_all_agree(
            &run(
                &text,
                format,
                &captured(),
                &Resolver::new(Some(&d), Some(&n)),
            ),
            2,
        );
    }
}

/// The docker case of the 6.1 VM run (target/vm/logs/6.1.log), reduced: DOCKER-USER holds
/// only `-j RETURN`; 6.1 prints `filter:DOCKER-USER:return:` where legacy TRACE and the
/// reconstruction say `return:1`, and `return:` before every policy.
#[test]
fn docker_user_return_rule_of_the_vm_run() {
    let d = trace_core::rules::parse(
        "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\n:DOCKER-USER - [0:0]\n\
         -A FORWARD -j DOCKER-USER\n-A FORWARD -p tcp -j ACCEPT\n-A DOCKER-USER -j RETURN\nCOMMIT\n",
    )
    .unwrap();
    let text = "PACKET: 2 0a1b2c3d IN=eth0 OUT=br0 SRC=192.168.64.5 DST=172.17.0.2 LEN=60 TOS=0x0 TTL=63 ID=34082 DF SPORT=59092 DPORT=80 SYN \n\
                \x20TRACE: 2 0a1b2c3d filter:FORWARD:rule:0x5:JUMP:DOCKER-USER  -4 -t filter -A FORWARD -j DOCKER-USER\n\
                \x20TRACE: 2 0a1b2c3d filter:DOCKER-USER:return:\n\
                \x20TRACE: 2 0a1b2c3d filter:FORWARD:rule:0x6:ACCEPT  -4 -t filter -A FORWARD -p tcp -j ACCEPT\n";
    let captured = parse_jsonl(
        "{\"steps\":[\"filter:FORWARD:rule:1\",\"filter:DOCKER-USER:return:1\",\"filter:FORWARD:rule:2\"],\
          \"headers\":{\"src\":\"192.168.64.5\",\"dst\":\"172.17.0.2\",\"proto\":6,\"id\":34082,\"len\":60,\"sport\":59092,\"dport\":80}}\n",
    )
    .unwrap();
    assert_all_agree(
        &run(
            text,
            Format::XtablesMonitor,
            &captured,
            &Resolver::new(Some(&d), None),
        ),
        1,
    );
    // A packet that fell off DOCKER-USER's end instead would not agree with `return:1`… but
    // xtables-monitor cannot tell the two apart, so the captured `return:2` agrees as well.
    let fell_off = parse_jsonl(
        "{\"steps\":[\"filter:FORWARD:rule:1\",\"filter:DOCKER-USER:return:2\",\"filter:FORWARD:rule:2\"],\
          \"headers\":{\"src\":\"192.168.64.5\",\"dst\":\"172.17.0.2\",\"proto\":6,\"id\":34082,\"len\":60,\"sport\":59092,\"dport\":80}}\n",
    )
    .unwrap();
    assert_all_agree(
        &run(
            text,
            Format::XtablesMonitor,
            &fell_off,
            &Resolver::new(Some(&d), None),
        ),
        1,
    );
    // The policy path of the same run: `return:` then `policy:` is one `policy:N` step.
    let policy = "PACKET: 2 0a1b2c3e IN=eth0 SRC=192.168.64.5 DST=192.168.64.4 LEN=60 TOS=0x0 TTL=64 ID=34090 DF SPORT=59093 DPORT=10000 SYN \n\
                  \x20TRACE: 2 0a1b2c3e filter:INPUT:return:\n\
                  \x20TRACE: 2 0a1b2c3e filter:INPUT:policy:ACCEPT \n";
    let p = parsed(policy, Format::XtablesMonitor);
    assert_eq!(
        steps(&p, 0)
            .iter()
            .map(|s| s.pos.clone())
            .collect::<Vec<_>>(),
        [RefStepPos::Policy]
    );
}

/// `nft monitor trace` on 6.1 says `verdict return` for a RETURN rule: in a base chain that is
/// a step of its own (legacy: `policy:K` for an unconditional one at K), kept before the
/// policy; `verdict continue` there is the fall-through marker and is merged.
#[test]
fn nft_verdict_return_in_a_base_chain_is_kept() {
    let text = "trace id 0a1b2c3f ip filter INPUT packet: iif \"eth0\" ip saddr 10.0.0.1 ip daddr 10.0.0.2 ip id 7 ip length 31 udp sport 1 udp dport 9 \n\
                trace id 0a1b2c3f ip filter INPUT verdict return \n\
                trace id 0a1b2c3f ip filter INPUT policy accept \n\
                trace id 0a1b2c40 ip filter INPUT packet: iif \"eth0\" ip saddr 10.0.0.1 ip daddr 10.0.0.2 ip id 8 ip length 31 udp sport 1 udp dport 9 \n\
                trace id 0a1b2c40 ip filter INPUT verdict continue \n\
                trace id 0a1b2c40 ip filter INPUT policy accept \n";
    let p = parsed(text, Format::NftMonitor);
    assert_eq!(p.packets.len(), 2);
    assert_eq!(
        steps(&p, 0)
            .iter()
            .map(|s| s.pos.clone())
            .collect::<Vec<_>>(),
        [RefStepPos::EndOfChain, RefStepPos::Policy]
    );
    assert_eq!(
        steps(&p, 1)
            .iter()
            .map(|s| s.pos.clone())
            .collect::<Vec<_>>(),
        [RefStepPos::Policy]
    );
    let d = trace_core::rules::parse(
        "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -p tcp -j DROP\n-A INPUT -j RETURN\nCOMMIT\n",
    )
    .unwrap();
    let r = Resolver::new(Some(&d), None);
    let ids: Vec<String> = r
        .chain_end_candidates(None, &steps(&p, 0)[0])
        .unwrap()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(ids, ["filter:INPUT:policy:2"]);
}

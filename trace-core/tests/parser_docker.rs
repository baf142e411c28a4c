//! Golden test on the docker port-mapping fixtures (../shared/fixtures/docker): every
//! `*.iptables-save.txt` parses completely, and the TRACE positions the kernel printed (the
//! legacy trace files and the remote SYN path of the fixtures README) are exactly the labels
//! the model gives those rules.

use std::path::PathBuf;
use trace_core::netfilter::{Family, Table};
use trace_core::rules::{parse, Backend, Ruleset, Target};
use trace_core::step::StepId;

fn fixtures() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/docker");
    assert!(
        dir.is_dir(),
        "fixture directory {} is missing: these golden tests cannot run",
        dir.display()
    );
    dir
}

fn dumps() -> Vec<(String, String)> {
    let mut v: Vec<_> = std::fs::read_dir(fixtures())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".iptables-save.txt"))
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read_to_string(&p).unwrap(),
            )
        })
        .collect();
    v.sort();
    assert!(
        v.len() >= 8,
        "expected the 8 fixture dumps, found {}",
        v.len()
    );
    v
}

fn load(name: &str) -> Ruleset {
    let text = std::fs::read_to_string(fixtures().join(name)).unwrap();
    parse(&text).unwrap_or_else(|e| panic!("{name}:{e}"))
}

/// `-A CHAIN text` lines of the dump, in order per chain, with counters stripped.
fn appended(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| {
            let l = if l.starts_with('[') {
                l.split_once("] ")?.1
            } else {
                l
            };
            let rest = l.strip_prefix("-A ")?;
            let (chain, spec) = rest.split_once(' ').unwrap_or((rest, ""));
            Some((chain.to_string(), spec.trim_end().to_string()))
        })
        .collect()
}

#[test]
fn every_dump_parses_without_losing_a_rule() {
    for (name, text) in dumps() {
        let rs = parse(&text).unwrap_or_else(|e| panic!("{name}:{e}"));
        assert!(rs.warnings.is_empty(), "{name}: {:?}", rs.warnings);
        assert_eq!(rs.family, Family::Ipv4, "{name}");
        let expect_backend = if name.starts_with("nft") {
            Backend::NfTables
        } else {
            Backend::Legacy
        };
        assert_eq!(rs.backend(), expect_backend, "{name}");
        assert_eq!(rs.tables.len(), 4, "{name}");
        assert!(rs.tables.iter().all(|t| t.committed), "{name}");
        let mut want = appended(&text);
        let mut got: Vec<(String, String)> = rs
            .tables
            .iter()
            .flat_map(|t| t.chains.iter())
            .flat_map(|c| {
                c.rules
                    .iter()
                    .map(move |r| (c.name.clone(), r.text.clone()))
            })
            .collect();
        want.sort();
        got.sort();
        assert_eq!(got, want, "{name}: parsed rules differ from the -A lines");
        assert!(
            rs.tables
                .iter()
                .flat_map(|t| &t.chains)
                .flat_map(|c| &c.rules)
                .all(|r| r.counters.is_some()),
            "{name}: -c counters"
        );
    }
}

#[test]
fn docker_rules_have_the_article_numbers() {
    let rs = load("legacy-remote.iptables-save.txt");
    let filter = rs.table(Table::Filter).unwrap();
    let fwd = filter.chain("FORWARD").unwrap();
    assert_eq!(fwd.rules.len(), 10);
    assert_eq!(
        fwd.rules[6].text,
        "-o br-00ea7870520a -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"
    );
    assert_eq!(fwd.rules[7].text, "-o br-00ea7870520a -j DOCKER");
    assert_eq!(fwd.rules[7].target, Target::Jump("DOCKER".into()));
    assert_eq!(
        filter.step("FORWARD", 8).unwrap().to_string(),
        "filter:FORWARD:rule:8"
    );
    assert_eq!(
        filter.step("FORWARD", 11).unwrap().to_string(),
        "filter:FORWARD:policy:11"
    );
    assert_eq!(
        filter.step("DOCKER-USER", 1).unwrap().to_string(),
        "filter:DOCKER-USER:return:1"
    );
    assert_eq!(
        filter.step("DOCKER-USER", 2).unwrap().to_string(),
        "filter:DOCKER-USER:return:2"
    );
    assert_eq!(
        filter
            .step("DOCKER-ISOLATION-STAGE-1", 3)
            .unwrap()
            .to_string(),
        "filter:DOCKER-ISOLATION-STAGE-1:return:3"
    );
    let nat = rs.table(Table::Nat).unwrap();
    assert!(matches!(
        nat.chain("DOCKER").unwrap().rules[2].target,
        Target::Dnat(_)
    ));
    assert_eq!(
        nat.chain("POSTROUTING")
            .unwrap()
            .end_step(Table::Nat)
            .to_string(),
        "nat:POSTROUTING:policy:4"
    );
    assert_eq!(
        rs.table(Table::Raw)
            .unwrap()
            .chain("PREROUTING")
            .unwrap()
            .end_num(),
        2
    );
}

/// Checks that `step` is exactly the label the dump gives that position.
fn assert_label(rs: &Ruleset, step: &str, ctx: &str) {
    let id: StepId = step.parse().unwrap_or_else(|e| panic!("{ctx}: {e}"));
    let dump = rs
        .table(id.table)
        .unwrap_or_else(|| panic!("{ctx}: no table {}", id.table));
    let got = dump
        .step(&id.chain, id.num)
        .unwrap_or_else(|| panic!("{ctx}: {step} is not a position of the dump"));
    assert_eq!(
        got, id,
        "{ctx}: the kernel printed {step}, the model labels it {got}"
    );
}

#[test]
fn readme_remote_syn_path_matches_the_model_labels() {
    let path = "raw:PREROUTING:policy:2, mangle:PREROUTING:policy:1, nat:PREROUTING:rule:1, \
        nat:DOCKER:rule:3, mangle:FORWARD:policy:1, filter:FORWARD:rule:1, filter:DOCKER-USER:return:1, \
        filter:FORWARD:rule:2, filter:DOCKER-ISOLATION-STAGE-1:return:3, filter:FORWARD:rule:8, \
        filter:DOCKER:rule:1, mangle:POSTROUTING:policy:1, nat:POSTROUTING:policy:4, filter:FORWARD:rule:7";
    for name in [
        "legacy-remote.iptables-save.txt",
        "nft-remote.iptables-save.txt",
    ] {
        let rs = load(name);
        for step in path.split(", ") {
            assert_label(&rs, step, name);
        }
    }
}

#[test]
fn kernel_trace_lines_match_the_model_labels() {
    let mut checked = 0;
    for (name, _) in dumps().into_iter().filter(|(n, _)| n.starts_with("legacy")) {
        let trace_file = name.replace(".iptables-save.txt", ".txt");
        let Ok(trace) = std::fs::read_to_string(fixtures().join(&trace_file)) else {
            continue;
        };
        let rs = load(&name);
        for step in trace
            .split("TRACE: ")
            .skip(1)
            .filter_map(|t| t.split_whitespace().next())
        {
            assert_label(&rs, step, &trace_file);
            checked += 1;
        }
    }
    assert!(checked > 0, "no TRACE line found in the legacy fixtures");
}

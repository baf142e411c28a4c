//! Filter: bad input is refused with the column, before anything is loaded; oversize DNF is
//! refused with the count, never truncated.

use trace_core::filter::{compile, FilterError, FILTER_MAX_CLAUSES, FILTER_MAX_PREDS};

fn column_of(filter: &str) -> usize {
    match compile(filter) {
        Err(FilterError::BadChar { column, .. })
        | Err(FilterError::Unexpected { column, .. })
        | Err(FilterError::InvalidValue { column, .. })
        | Err(FilterError::Unsupported { column, .. })
        | Err(FilterError::TooDeep { column, .. }) => column,
        other => panic!("{filter}: expected a positioned error, got {other:?}"),
    }
}

#[test]
fn errors_point_at_the_offending_column() {
    assert_eq!(column_of("tcp and $x"), 9);
    assert_eq!(column_of("tcp and"), 8);
    assert_eq!(column_of("port 99999"), 6);
    assert_eq!(column_of("host example.com"), 6);
    assert_eq!(column_of("net 10.0.0.1/8"), 5);
    assert_eq!(column_of("net 10.0.0.0/33"), 5);
    assert_eq!(column_of("portrange 20-10"), 11);
    assert_eq!(column_of("(tcp or udp"), 12);
    assert_eq!(column_of("tcp udp"), 5);
    assert_eq!(column_of("tcp host 10.0.0.1"), 5);
    assert_eq!(column_of("icmp port 80"), 6);
    assert_eq!(column_of("ip6 host 10.0.0.1"), 10);
    assert_eq!(column_of("mark 0x11/0x10"), 6);
    assert_eq!(column_of("iface averyveryverylongname"), 7);
    assert_eq!(column_of("gateway 10.0.0.1"), 1);
    assert_eq!(column_of("net 10.0.0.0 mask 255.0.255.0"), 19);
    assert_eq!(column_of("tcp & udp"), 5);
}

#[test]
fn messages_are_readable() {
    let e = compile("tcp and dst port x80").unwrap_err();
    assert_eq!(e.to_string(), "filter column 18: invalid port 'x80'");
    let e = compile("host foo").unwrap_err();
    assert!(e.to_string().contains("names are not resolved"), "{e}");
}

#[test]
fn nesting_is_bounded() {
    let deep = format!("{}tcp{}", "(".repeat(200), ")".repeat(200));
    assert!(matches!(compile(&deep), Err(FilterError::TooDeep { .. })));
    let ok = format!("{}tcp{}", "(".repeat(20), ")".repeat(20));
    assert!(compile(&ok).is_ok());
}

#[test]
fn dnf_blowup_is_refused_with_the_count() {
    // (a or b) and (c or d) and ... : 2^5 = 32 clauses > 16.
    let f = (0..5)
        .map(|i| format!("(port {} or host 10.0.0.{})", 100 + i, i))
        .collect::<Vec<_>>()
        .join(" and ");
    match compile(&f) {
        Err(FilterError::TooManyClauses { clauses, max }) => {
            assert_eq!(clauses, 32);
            assert_eq!(max, FILTER_MAX_CLAUSES);
        }
        other => panic!("expected TooManyClauses, got {other:?}"),
    }
    // 2^4 = 16 fits exactly.
    let f = (0..4)
        .map(|i| format!("(port {} or host 10.0.0.{})", 100 + i, i))
        .collect::<Vec<_>>()
        .join(" and ");
    assert_eq!(compile(&f).unwrap().n_clauses, 16);
    // Exponential inputs are stopped early, not computed.
    let huge = (0..40)
        .map(|i| format!("(port {i} or port {})", i + 1000))
        .collect::<Vec<_>>()
        .join(" and ");
    assert!(matches!(
        compile(&huge),
        Err(FilterError::TooManyClauses { .. })
    ));
}

#[test]
fn too_many_predicates_in_a_clause() {
    let f = (1..=FILTER_MAX_PREDS + 1)
        .map(|i| format!("not port {i}"))
        .collect::<Vec<_>>()
        .join(" and ");
    assert!(
        matches!(compile(&f), Err(FilterError::TooManyPredicates { preds, .. }) if preds == FILTER_MAX_PREDS + 1)
    );
}

#[test]
fn simplification_keeps_meaning_and_shrinks() {
    // x or (x and y) = x; contradictions vanish.
    assert_eq!(compile("tcp or (tcp and port 80)").unwrap().n_clauses, 1);
    assert_eq!(compile("ip and ip6").unwrap().n_clauses, 0);
    assert_eq!(compile("tcp and not tcp").unwrap().n_clauses, 0);
    assert_eq!(compile("(tcp or udp) and udp").unwrap().n_clauses, 1);
}

/// Every example in docs/filter.md compiles, except the one documented as an error, which
/// fails with the documented message.
#[test]
fn documented_examples_behave_as_documented() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/filter.md");
    let doc = std::fs::read_to_string(&path).expect("docs/filter.md");
    let examples = doc.split("## Examples").nth(1).expect("Examples section");
    let block = examples.split("```").nth(1).expect("code block");
    let mut n = 0;
    for line in block.lines().map(str::trim).filter(|l| !l.is_empty()) {
        n += 1;
        match line.split_once("# error: ") {
            Some((filter, msg)) => {
                assert_eq!(compile(filter.trim()).unwrap_err().to_string(), msg.trim())
            }
            None => assert!(compile(line).is_ok(), "{line}: {:?}", compile(line).err()),
        }
    }
    assert!(n >= 5);
}

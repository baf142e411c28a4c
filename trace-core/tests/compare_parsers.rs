//! Reference parsers against the kernel's real output in the shared fixtures.

use std::path::PathBuf;
use trace_core::compare::reference::{self, Evidence, Format, RefStepPos};

/// The fixture directory (IPTRACE_FIXTURES overrides); None, loudly, when absent.
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

fn read(dir: &std::path::Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[test]
fn detects_every_fixture_format() {
    let Some(d) = fixtures() else { return };
    assert_eq!(
        Format::detect(&read(&d, "nft-remote.txt")),
        Some(Format::XtablesMonitor)
    );
    assert_eq!(
        Format::detect(&read(&d, "nft-remote.nft-monitor.txt")),
        Some(Format::NftMonitor)
    );
    assert_eq!(
        Format::detect(&read(&d, "legacy-local.txt")),
        Some(Format::KernelLog)
    );
    assert_eq!(
        Format::detect(&read(&d, "legacy-log-remote.txt")),
        Some(Format::KernelLog)
    );
    assert_eq!(
        Format::detect(&read(&d, "legacy-remote.txt")),
        None,
        "the empty capture has no format"
    );
}

#[test]
fn xtables_monitor_and_nft_monitor_agree_on_packets() {
    let Some(d) = fixtures() else { return };
    for name in ["nft-remote", "nft-local"] {
        let xt = reference::parse(&read(&d, &format!("{name}.txt")), None);
        let nm = reference::parse(&read(&d, &format!("{name}.nft-monitor.txt")), None);
        assert!(xt.malformed.is_empty(), "{name}: {:?}", xt.malformed);
        assert!(nm.malformed.is_empty(), "{name}: {:?}", nm.malformed);
        // One TCP connection = 6 client→server packets, each traced from raw.
        assert_eq!(xt.packets.len(), 6, "{name}");
        assert_eq!(nm.packets.len(), xt.packets.len(), "{name}");
        for (a, b) in xt.packets.iter().zip(&nm.packets) {
            assert_eq!(a.trace_id, b.trace_id);
            assert_eq!(a.headers[0].id, b.headers[0].id);
            assert_eq!(a.headers[0].src, b.headers[0].src);
            assert_eq!(a.headers[0].tcp_flags, b.headers[0].tcp_flags);
            let chains = |p: &reference::RefPacket| {
                p.steps()
                    .iter()
                    .map(|s| (s.table, s.chain.clone()))
                    .collect::<Vec<_>>()
            };
            assert_eq!(chains(a), chains(b), "{name} packet at line {}", a.line);
        }
    }
}

#[test]
fn xtables_monitor_remote_syn_has_the_expected_events() {
    let Some(d) = fixtures() else { return };
    let r = reference::parse(&read(&d, "nft-remote.txt"), None);
    let syn = &r.packets[0];
    assert_eq!(syn.headers[0].id, Some(52575));
    // Pre- and post-DNAT snapshots.
    assert!(syn.headers.iter().any(|h| h.dport == Some(80)));
    let s = syn.steps();
    assert_eq!(s.len(), 14);
    assert_eq!(s[0].pos, RefStepPos::Handle { handle: 3 });
    assert_eq!(s[1].pos, RefStepPos::Policy);
    assert_eq!(s[7].chain, "DOCKER-USER");
    assert_eq!(s[7].verdict.as_deref(), Some("0xfffffffb"));
    // Later packets share trace id ed114cd4 with the SYN but are separate packets.
    assert_eq!(r.packets[2].trace_id, syn.trace_id);
    assert_eq!(r.packets[2].headers[0].id, Some(52577));
}

#[test]
fn legacy_trace_and_log_fixtures_parse() {
    let Some(d) = fixtures() else { return };
    let t = reference::parse(&read(&d, "legacy-local.txt"), None);
    assert!(t.malformed.is_empty());
    assert_eq!(t.packets.len(), 1);
    let steps: Vec<String> = t.packets[0]
        .steps()
        .iter()
        .map(|s| match &s.pos {
            RefStepPos::Numbered { kind, num } => {
                format!("{}:{}:{}:{}", s.table, s.chain, kind.as_str(), num)
            }
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        steps,
        [
            "mangle:OUTPUT:policy:1",
            "filter:OUTPUT:policy:1",
            "mangle:POSTROUTING:policy:1"
        ]
    );
    for (name, prefix, n) in [
        ("legacy-log-local.txt", "TCLOG-OUT: ", 3),
        ("legacy-log-remote.txt", "TCLOG-PRE: ", 2),
        ("nft-log-remote.txt", "TCLOG-PRE: ", 2),
    ] {
        let r = reference::parse(&read(&d, name), None);
        assert!(r.malformed.is_empty(), "{name}");
        assert_eq!(r.packets.len(), n, "{name}");
        for p in &r.packets {
            assert_eq!(
                p.evidence,
                Evidence::Logged {
                    prefix: prefix.to_string()
                },
                "{name}"
            );
        }
    }
}

#[test]
fn edited_lines_are_counted_as_malformed_with_line_numbers() {
    let Some(d) = fixtures() else { return };
    let mut lines: Vec<String> = read(&d, "nft-remote.txt")
        .lines()
        .map(String::from)
        .collect();
    lines[1] = " TRACE: 2 ed114cd4 raw:PREROUTING:rule:zz:CONTINUE".into();
    lines[4] = "PACKET: 2 ed114cd4 IN=eth0 SRC=999.1.1.1 DST=1.1.1.1".into();
    let r = reference::parse(&lines.join("\n"), Some(Format::XtablesMonitor));
    let at: Vec<usize> = r.malformed.iter().map(|m| m.line).collect();
    assert_eq!(at, [2, 5]);
    assert_eq!(r.packets.len(), 6, "the rest still parses");
}

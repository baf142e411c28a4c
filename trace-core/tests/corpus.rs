//! The real-world corpus (../shared/corpus/iptables-save, read at test time): every file has
//! a decided outcome — it parses with exactly the rules it contains (counted independently
//! from its `-A`/`-I` lines), or it is rejected with the precise line, column and reason.
//! Rejections follow iptables-restore: a placeholder address (`x.x.x.x`, `IP4_2`) makes the
//! rule invalid, and `-p udp -m tcp` is refused by the kernel, so the whole input fails.

use std::path::PathBuf;
use trace_core::netfilter::{Family, Table};
use trace_core::rules::matches::{Decidability, MatchKind};
use trace_core::rules::targets::Target;
use trace_core::rules::{parse_bytes, Backend, ParseErrorKind, Ruleset};

fn corpus_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpus/iptables-save");
    assert!(
        dir.is_dir(),
        "corpus directory {} is missing: the corpus test cannot run (it must not pass silently)",
        dir.display()
    );
    dir
}

enum Outcome {
    /// family, backend, tables in input order, number of warnings.
    Parses(Family, Backend, &'static [&'static str], usize),
    /// line, column, a fragment of the message.
    Rejected(u32, u32, &'static str),
}

use Outcome::*;
const V4: Family = Family::Ipv4;
const V6: Family = Family::Ipv6;
const NFT: Backend = Backend::NfTables;
const LEG: Backend = Backend::Legacy;
const UNK: Backend = Backend::Unknown;

const EXPECTED: &[(&str, Outcome)] = &[
    (
        "01-k8s-flannel-nft.rules",
        Parses(V4, NFT, &["mangle", "filter", "nat"], 0),
    ),
    (
        "02-geoip-ipset-firewall-nft.rules",
        Parses(V4, NFT, &["mangle", "filter"], 0),
    ),
    (
        "03-docker-embedded-dns-nft.rules",
        Parses(V4, NFT, &["nat"], 0),
    ),
    (
        "04-almalinux-libvirt-legacy.rules",
        Parses(V4, LEG, &["filter", "security", "raw", "mangle", "nat"], 0),
    ),
    (
        "05-almalinux-libvirt-ip6.rules",
        Parses(V6, LEG, &["filter", "security", "raw", "mangle", "nat"], 0),
    ),
    (
        "06-openstack-nova-counters.rules",
        Parses(V4, LEG, &["filter"], 0),
    ),
    (
        "07-rhel-sysconfig-ip6tables-nft.rules",
        Parses(V6, NFT, &["mangle", "raw", "filter", "nat"], 0),
    ),
    (
        "08-free5gc-docker-tailscale-sctp-nft.rules",
        Parses(V4, NFT, &["mangle", "filter", "nat"], 0),
    ),
    (
        "09-docker28-tailscale-raw-nft.rules",
        Parses(V4, NFT, &["mangle", "raw", "filter", "nat"], 0),
    ),
    (
        "10-metaswitch-ellis-redirect-legacy.rules",
        Parses(V4, LEG, &["nat"], 0),
    ),
    (
        "11-k8s-ipvs-calico-ipset-nat.rules",
        Parses(V4, LEG, &["nat"], 0),
    ),
    (
        "12-port-knocking-recent-iprange-legacy.rules",
        Parses(V4, LEG, &["filter", "mangle", "raw", "nat"], 0),
    ),
    (
        "13-kube-proxy-2017-physdev-recent-legacy.rules",
        Rejected(39, 21, "invalid address `x.x.x.x`"),
    ),
    (
        "14-ufw-libvirt-counters-c.rules",
        Rejected(153, 45, "invalid address `IP4_2`"),
    ),
    (
        "15-ufw6-arch-rules6-save-ip6.rules",
        Parses(V6, UNK, &["filter"], 0),
    ),
    (
        "16-debian10-xtables-save-legacy-warning-nft.rules",
        Parses(V4, NFT, &["filter"], 1),
    ),
    (
        "17-debian10-iptables-legacy-save.rules",
        Parses(V4, LEG, &["nat", "filter"], 0),
    ),
    (
        "18-exadata-docker-nat-1.4.7-dup-rules.rules",
        Parses(V4, LEG, &["nat"], 0),
    ),
    // No COMMIT anywhere: each of the four tables is kept with a warning.
    (
        "19-cilium-tproxy-socket-ct-notrack-nocommit.rules",
        Parses(V4, UNK, &["mangle", "raw", "filter", "nat"], 4),
    ),
    (
        "20-docker-swarm-raw-TRACE-counters-c.rules",
        Parses(V4, LEG, &["raw", "mangle"], 0),
    ),
    (
        "21-centos7-firewalld-goto-security-legacy.rules",
        Parses(V4, LEG, &["mangle", "security", "raw", "filter"], 0),
    ),
    (
        "22-nexus-pi-ip6-recent-nflog.rules",
        Rejected(26, 17, "tcp is only valid with -p tcp, not with -p udp"),
    ),
    (
        "23-larsks-bridged-containers-log.rules",
        Parses(V4, UNK, &["filter", "nat"], 0),
    ),
    (
        "24-zerotier-handedited-blanklines.rules",
        Parses(V4, UNK, &["filter", "nat"], 0),
    ),
    (
        "25-ntp-stratum1-ip6-all-drop.rules",
        Parses(V6, LEG, &["filter"], 0),
    ),
    (
        "26-anti-portscan-ipset-SET-target-insert.rules",
        Parses(V4, UNK, &["mangle", "raw", "filter", "nat"], 0),
    ),
];

fn read(name: &str) -> Vec<u8> {
    std::fs::read(corpus_dir().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn parsed(name: &str) -> Ruleset {
    parse_bytes(&read(name), Default::default()).unwrap_or_else(|e| panic!("{name}:{e}"))
}

/// `-A`/`-I` lines (with or without `[p:b]`), counted without the parser.
fn rule_lines(text: &str) -> usize {
    text.lines()
        .map(|l| l.trim_start())
        .map(|l| {
            if l.starts_with('[') {
                l.split_once("] ").map_or(l, |(_, r)| r)
            } else {
                l
            }
        })
        .filter(|l| l.starts_with("-A ") || l.starts_with("-I "))
        .count()
}

#[test]
fn every_corpus_file_has_a_decided_outcome() {
    let mut on_disk: Vec<String> = std::fs::read_dir(corpus_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".rules"))
        .collect();
    on_disk.sort();
    let listed: Vec<String> = EXPECTED.iter().map(|(n, _)| n.to_string()).collect();
    assert_eq!(
        on_disk, listed,
        "corpus files and expectations differ: decide the outcome of new files"
    );
    for (name, outcome) in EXPECTED {
        let bytes = read(name);
        let result = parse_bytes(&bytes, Default::default());
        match (outcome, result) {
            (Parses(family, backend, tables, warnings), Ok(rs)) => {
                assert_eq!(rs.family, *family, "{name}");
                assert_eq!(rs.backend(), *backend, "{name}");
                let names: Vec<_> = rs.tables.iter().map(|t| t.table.name()).collect();
                assert_eq!(names, *tables, "{name}");
                assert_eq!(rs.warnings.len(), *warnings, "{name}: {:?}", rs.warnings);
                let text = String::from_utf8(bytes).unwrap();
                assert_eq!(
                    rs.rule_count(),
                    rule_lines(&text),
                    "{name}: a rule was lost or invented"
                );
            }
            (Rejected(line, col, msg), Err(e)) => {
                assert_eq!((e.line, e.column), (*line, *col), "{name}: {e}");
                assert!(e.to_string().contains(msg), "{name}: {e}");
            }
            (Parses(..), Err(e)) => panic!("{name} should parse: {name}:{e}"),
            (Rejected(..), Ok(_)) => panic!("{name} should be rejected"),
        }
    }
}

#[test]
fn rejections_name_the_offending_word() {
    let e = parse_bytes(&read("14-ufw-libvirt-counters-c.rules"), Default::default()).unwrap_err();
    assert!(matches!(&e.kind, ParseErrorKind::BadAddress { text, .. } if text == "IP4_2"));
    let line = String::from_utf8(read("14-ufw-libvirt-counters-c.rules")).unwrap();
    let line = line.lines().nth(e.line as usize - 1).unwrap();
    let at: String = line.chars().skip(e.column as usize - 1).take(5).collect();
    assert_eq!(at, "IP4_2");
}

/// All rules of `table`, with their chain name.
fn rules(rs: &Ruleset, table: Table) -> impl Iterator<Item = (&str, &trace_core::rules::Rule)> {
    rs.table(table)
        .into_iter()
        .flat_map(|t| &t.chains)
        .flat_map(|c| c.rules.iter().map(move |r| (c.name.as_str(), r)))
}

#[test]
fn notable_features_are_typed() {
    // 01: statistic, --random-fully, conntrack ! --ctstate, MARK --set-xmark 0x4000/0x0.
    let rs = parsed("01-k8s-flannel-nft.rules");
    let kinds: Vec<_> = rules(&rs, Table::Nat)
        .flat_map(|(_, r)| r.matches.iter().map(|m| m.decidability()))
        .collect();
    assert!(kinds.contains(&Decidability::Nondeterministic));
    assert!(rules(&rs, Table::Nat)
        .any(|(_, r)| matches!(&r.target, Target::Masquerade(m) if m.random_fully)));
    // 03: SNAT to a port only.
    let rs = parsed("03-docker-embedded-dns-nft.rules");
    assert!(rules(&rs, Table::Nat)
        .any(|(_, r)| matches!(&r.target, Target::Snat(s) if s.to[0].addr.is_none())));
    // 08: sctp, CONNMARK restore with masks.
    let rs = parsed("08-free5gc-docker-tailscale-sctp-nft.rules");
    assert!(rules(&rs, Table::Filter).any(|(_, r)| r
        .matches
        .iter()
        .any(|m| matches!(m.kind, MatchKind::Sctp(_)))));
    assert!(rules(&rs, Table::Mangle).any(|(_, r)| matches!(r.target, Target::Connmark(_))));
    // 14 is rejected; 19: socket, TPROXY, CT --notrack, interface wildcards.
    let rs = parsed("19-cilium-tproxy-socket-ct-notrack-nocommit.rules");
    assert!(rules(&rs, Table::Mangle).any(|(_, r)| matches!(r.target, Target::Tproxy(_))));
    assert!(rules(&rs, Table::Raw).any(|(_, r)| matches!(&r.target, Target::Ct(c) if c.notrack)));
    assert!(
        rules(&rs, Table::Raw).any(|(_, r)| r.out_iface.as_ref().is_some_and(|i| i.value.wildcard))
    );
    // 20: TRACE in raw.
    let rs = parsed("20-docker-swarm-raw-TRACE-counters-c.rules");
    assert!(rules(&rs, Table::Raw).any(|(_, r)| r.target == Target::Trace && r.counters.is_some()));
    // 21: goto.
    let rs = parsed("21-centos7-firewalld-goto-security-legacy.rules");
    assert!(rules(&rs, Table::Filter).any(|(_, r)| r.goto && matches!(r.target, Target::Goto(_))));
    // 15: the rt module is kept verbatim, never decidable.
    let rs = parsed("15-ufw6-arch-rules6-save-ip6.rules");
    let rt = rules(&rs, Table::Filter)
        .flat_map(|(_, r)| &r.matches)
        .find(|m| m.module == "rt")
        .unwrap();
    assert_eq!(
        (rt.kind.clone(), rt.args.clone()),
        (
            MatchKind::Unknown,
            vec!["--rt-type".to_string(), "0".to_string()]
        )
    );
    assert_eq!(rt.decidability(), Decidability::Unknown);
    // 26: -I inserts at the head of the chain, after the -A rules already there.
    let rs = parsed("26-anti-portscan-ipset-SET-target-insert.rules");
    let pre = rs
        .table(Table::Mangle)
        .unwrap()
        .chain("PREROUTING")
        .unwrap();
    assert_eq!(pre.rules[0].target, Target::Jump("exception-pkt".into()));
    assert!(rules(&rs, Table::Mangle)
        .any(|(_, r)| matches!(&r.target, Target::Set(s) if s.add.is_some())));
}

#[test]
fn every_parsed_corpus_file_prints_back_to_the_same_model() {
    for (name, outcome) in EXPECTED {
        if !matches!(outcome, Parses(..)) {
            continue;
        }
        let a = parsed(name);
        let printed = a.to_string();
        let b = trace_core::rules::parse_with(
            &printed,
            trace_core::rules::ParseOptions {
                family: Some(a.family),
            },
        )
        .unwrap_or_else(|e| panic!("{name}: printed dump does not parse: {e}\n{printed}"));
        for (ta, tb) in a.tables.iter().zip(&b.tables) {
            for (ca, cb) in ta.chains.iter().zip(&tb.chains) {
                assert_eq!(
                    (&ca.name, ca.policy, ca.rules.len()),
                    (&cb.name, cb.policy, cb.rules.len()),
                    "{name}"
                );
                for (ra, rb) in ca.rules.iter().zip(&cb.rules) {
                    let ctx = format!("{name}:{}: {} => {}", ra.line, ra.text, rb.text);
                    assert_eq!(
                        (&ra.protocol, &ra.src, &ra.dst),
                        (&rb.protocol, &rb.src, &rb.dst),
                        "{ctx}"
                    );
                    assert_eq!(
                        (&ra.in_iface, &ra.out_iface, &ra.fragment),
                        (&rb.in_iface, &rb.out_iface, &rb.fragment),
                        "{ctx}"
                    );
                    let ka: Vec<_> = ra.matches.iter().map(|m| (&m.module, &m.kind)).collect();
                    let kb: Vec<_> = rb.matches.iter().map(|m| (&m.module, &m.kind)).collect();
                    assert_eq!(ka, kb, "{ctx}");
                    assert_eq!(
                        (&ra.target, ra.goto, ra.counters),
                        (&rb.target, rb.goto, rb.counters),
                        "{ctx}"
                    );
                }
            }
        }
    }
}

#[test]
fn every_parsed_corpus_file_survives_json() {
    for (name, outcome) in EXPECTED {
        if matches!(outcome, Parses(..)) {
            let rs = parsed(name);
            let json = serde_json::to_string(&rs).unwrap_or_else(|e| panic!("{name}: {e}"));
            let back: Ruleset =
                serde_json::from_str(&json).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(back, rs, "{name}");
        }
    }
}

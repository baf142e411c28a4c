//! Property: the reference parsers, the nft ruleset parser, the captured-packet reader and
//! the whole comparison never panic, whatever the line — real kernel lines mutated at random
//! (truncated, tokens dropped or repeated, separator characters injected) and random text.
//! Every malformed line is reported with a line number inside the input.
//! Deterministic (xorshift seed) and bounded, like filter_prop.rs (no proptest dependency).

use trace_core::compare::captured::parse_jsonl;
use trace_core::compare::matching::MatchOptions;
use trace_core::compare::reference::{self, Format};
use trace_core::compare::resolve::Resolver;
use trace_core::compare::{compare, nft_ruleset};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const SEEDS: &[&str] = &[
    "[ 2243.183223] TRACE: mangle:OUTPUT:policy:1 IN= OUT=br-00ea7870520a SRC=172.19.0.1 DST=172.19.0.9 LEN=52 TOS=0x00 PREC=0x00 TTL=64 ID=65380 DF PROTO=TCP SPT=58726 DPT=80 SEQ=1826961587 ACK=3047535488 WINDOW=63 RES=0x00 ACK URGP=0 OPT (0101080A1136B1B11E13B190) UID=0 GID=0 ",
    "Nov 25 15:46:16 node kernel: [ 2261.450183] TCLOG-PRE: IN=eth0 OUT= MAC=7e:31:b8:fe:69:94:b2:88:7d:3e:1d:e2:08:00 SRC=192.168.64.5 DST=192.168.64.4 LEN=52 TOS=0x00 PREC=0x00 TTL=64 ID=62913 DF PROTO=TCP SPT=55158 DPT=10000 WINDOW=63 RES=0x00 ACK URGP=0 ",
    "4,99,1000,-;FW: IN=eth0 OUT= SRC=10.0.0.1 DST=10.0.0.2 LEN=56 TOS=0x00 PREC=0xC0 TTL=64 ID=1 PROTO=ICMP TYPE=3 CODE=3 [SRC=10.0.0.2 DST=10.0.0.1 LEN=28 TOS=0x00 PREC=0x00 TTL=64 ID=2 PROTO=UDP SPT=1 DPT=2 LEN=8 ] ",
    "PACKET: 2 ed114cd4 IN=eth0 MACSRC=4a:70:b2:aa:8f:4f MACDST=66:6b:9d:86:56:c7 MACPROTO=0800 SRC=192.168.64.5 DST=192.168.64.4 LEN=60 TOS=0x0 TTL=64 ID=52575 DF SPORT=50676 DPORT=10000 SYN ",
    " TRACE: 2 ed114cd4 filter:DOCKER-USER:rule:0x19:0xfffffffb  -4 -t filter -A DOCKER-USER -j RETURN",
    " TRACE: 2 ed114cd4 raw:PREROUTING:policy:ACCEPT ",
    "trace id ed114cd4 ip raw PREROUTING packet: iif \"eth0\" ether saddr 4a:70:b2:aa:8f:4f ip saddr 192.168.64.5 ip daddr 192.168.64.4 ip id 52575 ip length 60 tcp sport 50676 tcp dport 10000 tcp flags == syn tcp window 64240 ",
    "trace id ed114cd4 ip filter FORWARD rule oifname \"br-0\" counter packets 0 bytes 0 jump DOCKER (verdict jump DOCKER)",
    "trace id ed114cd4 ip filter DOCKER verdict continue",
    "table ip filter { # handle 4",
    "\tchain FORWARD { # handle 2",
    "\t\ttype filter hook forward priority filter; policy drop;",
    "\t\tcounter packets 10 bytes 583 jump DOCKER-USER # handle 8",
    "\t}",
    "}",
    r#"{"steps":["raw:PREROUTING:policy:2"],"headers":{"src":"1.1.1.1","dst":"2.2.2.2","id":7}}"#,
];

const INJECT: &[&str] = &[
    "=",
    " ",
    ":",
    "[",
    "]",
    "(",
    ")",
    "\"",
    "#",
    "{",
    "}",
    "0x",
    "-",
    "é",
    "\t",
    "TRACE: ",
    "IN=",
    " OUT=",
    "PACKET: ",
    "trace id ",
];

fn mutate(rng: &mut Rng, line: &str) -> String {
    let mut s = line.to_string();
    for _ in 0..=rng.below(3) {
        let cut = |s: &str, at: usize| s.char_indices().map(|(i, _)| i).nth(at).unwrap_or(s.len());
        let at = cut(&s, rng.below(s.chars().count() + 1));
        match rng.below(5) {
            0 => s.truncate(at),
            1 => s.insert_str(at, INJECT[rng.below(INJECT.len())]),
            2 => {
                let toks: Vec<&str> = s.split(' ').collect();
                let drop = rng.below(toks.len());
                s = toks
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| *i != drop)
                    .map(|(_, t)| *t)
                    .collect::<Vec<_>>()
                    .join(" ");
            }
            3 => {
                let toks: Vec<&str> = s.split(' ').collect();
                let dup = toks[rng.below(toks.len())].to_string();
                s.insert_str(at, &format!(" {dup} "));
            }
            _ => {
                let junk: String = (0..rng.below(12))
                    .map(|_| char::from(b' ' + rng.below(95) as u8))
                    .collect();
                s.insert_str(at, &junk);
            }
        }
    }
    s
}

fn fixture_lines() -> Vec<String> {
    let dir = std::env::var_os("IPTRACE_FIXTURES")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures")
        })
        .join("docker");
    let mut out = Vec::new();
    for name in [
        "nft-remote.txt",
        "nft-remote.nft-monitor.txt",
        "nft-remote.nft-ruleset.txt",
        "legacy-local.txt",
        "legacy-log-remote.txt",
    ] {
        if let Ok(t) = std::fs::read_to_string(dir.join(name)) {
            out.extend(t.lines().map(String::from));
        }
    }
    if out.is_empty() {
        eprintln!(
            "note: fixtures not found at {}; mutating the built-in seed lines only",
            dir.display()
        );
    }
    out
}

#[test]
fn parsers_and_compare_never_panic_on_mutated_lines() {
    let mut pool: Vec<String> = SEEDS.iter().map(|s| s.to_string()).collect();
    pool.extend(fixture_lines());
    // IPTRACE_PROP_ROUNDS / IPTRACE_PROP_SEED widen the search when hunting a bug.
    let rounds: usize = std::env::var("IPTRACE_PROP_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1500);
    let seed: u64 = std::env::var("IPTRACE_PROP_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x9E37_79B9_7F4A_7C15);
    let mut rng = Rng(seed | 1);
    let formats = [
        None,
        Some(Format::KernelLog),
        Some(Format::XtablesMonitor),
        Some(Format::NftMonitor),
    ];
    for round in 0..rounds {
        let n = 1 + rng.below(12);
        let lines: Vec<String> = (0..n)
            .map(|_| {
                let l = &pool[rng.below(pool.len())];
                if rng.below(4) == 0 {
                    l.clone()
                } else {
                    mutate(&mut rng, l)
                }
            })
            .collect();
        let text = lines.join("\n");
        let nft = nft_ruleset::parse(&text).ok();
        let captured = parse_jsonl(&text).unwrap_or_default();
        for f in formats {
            let r = reference::parse(&text, f);
            for m in &r.malformed {
                assert!(
                    m.line >= 1 && m.line <= n,
                    "round {round}: line {} of {n}",
                    m.line
                );
            }
            let resolver = Resolver::new(None, nft.as_ref());
            let report = compare(
                &r,
                &captured,
                &resolver,
                &MatchOptions {
                    time_window: Some(1.0),
                },
            );
            let _ = report.render_text(3);
            let _ = serde_json::to_string(&report).unwrap();
        }
    }
}

//! Property: for random filters and random packets, the compiled DNF program evaluated by
//! `trace_common::filter::matches` (the probes' evaluator) agrees with the direct evaluation of
//! the parsed tree. Values come from small pools so that matches and misses both happen often.
//! Random filters are generated as TEXT, so the parser is exercised too.

use trace_common::filter::{input_flags, FilterInput};
use trace_core::filter::{compile, parse, FilterError};

/// xorshift64*: deterministic, dependency-free.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[self.below(xs.len())]
    }
}

const V4: &[&str] = &["10.0.0.1", "10.0.0.2", "10.1.0.1", "192.168.64.4"];
const V6: &[&str] = &["fd00::1", "fd00::2", "fd00:1::1"];
const PORTS: &[u16] = &[22, 53, 80, 443, 10000];
const DEVS: &[&str] = &["", "eth0", "eth1", "br-x", "veth0"];

fn primitive(r: &mut Rng) -> String {
    let dir = ["", "src ", "dst ", "src or dst ", "src and dst "];
    let d = dir[r.below(dir.len())];
    match r.below(15) {
        0 => format!("{d}host {}", r.pick(V4)),
        1 => format!("{d}host {}", r.pick(V6)),
        2 => format!(
            "{d}net {}",
            r.pick(&["10.0.0.0/8", "10.0.0.0/24", "192.168.0.0/16", "0.0.0.0/0"])
        ),
        3 => format!("{d}net {}", r.pick(&["fd00::/16", "fd00:1::/32", "::/0"])),
        4 => format!("{d}port {}", PORTS[r.below(PORTS.len())]),
        5 => format!(
            "{d}portrange {}",
            r.pick(&["20-60", "80-443", "1000-20000"])
        ),
        6 => r
            .pick(&["tcp", "udp", "icmp", "icmp6", "sctp", "proto 47"])
            .to_string(),
        7 => r.pick(&["ip", "ip6"]).to_string(),
        8 => format!(
            "{}iface {}",
            r.pick(&["", "in ", "out "]),
            r.pick(&["eth0", "eth+", "br-x", "veth+"])
        ),
        9 => format!("mark {}", r.pick(&["1", "0x10/0xf0", "0/0x1", "3"])),
        10 => format!("icmp-type {}", r.pick(&["0", "8", "3"])),
        11 => format!("icmp6-type {}", r.pick(&["128", "129"])),
        12 => format!(
            "{} {d}port {}",
            r.pick(&["tcp", "udp"]),
            PORTS[r.below(PORTS.len())]
        ),
        13 => format!("{} host {}", r.pick(&["ip", "ip"]), r.pick(V4)),
        _ => format!("ip6 proto {}", r.pick(&["tcp", "udp"])),
    }
}

fn expr(r: &mut Rng, depth: u32) -> String {
    if depth == 0 || r.below(3) == 0 {
        return primitive(r);
    }
    match r.below(5) {
        0 => format!("not {}", expr(r, depth - 1)),
        1 => format!("({} and {})", expr(r, depth - 1), expr(r, depth - 1)),
        2 => format!("({} or {})", expr(r, depth - 1), expr(r, depth - 1)),
        3 => format!(
            "{} and {} or {}",
            expr(r, depth - 1),
            expr(r, depth - 1),
            expr(r, depth - 1)
        ),
        _ => format!(
            "! ({} || {}) && {}",
            expr(r, depth - 1),
            expr(r, depth - 1),
            expr(r, depth - 1)
        ),
    }
}

fn addr(a: &str) -> [u8; 16] {
    let mut out = [0u8; 16];
    match a.parse::<std::net::IpAddr>().unwrap() {
        std::net::IpAddr::V4(v4) => out[..4].copy_from_slice(&v4.octets()),
        std::net::IpAddr::V6(v6) => out = v6.octets(),
    }
    out
}

fn dev(r: &mut Rng) -> [u8; 16] {
    let mut d = [0u8; 16];
    let name = r.pick(DEVS);
    d[..name.len()].copy_from_slice(name.as_bytes());
    // After a rename the kernel leaves the old name's bytes behind the NUL: they must not matter.
    if r.below(2) == 0 {
        for b in d.iter_mut().skip(name.len() + 1) {
            *b = b"stale-name-junk!"[r.below(16)];
        }
    }
    d
}

fn packet(r: &mut Rng) -> FilterInput {
    let mut i = FilterInput::ZERO;
    let v6 = r.below(3) == 0;
    let pool = if v6 { V6 } else { V4 };
    i.family = if v6 { 10 } else { 2 };
    i.saddr = addr(r.pick(pool));
    i.daddr = addr(r.pick(pool));
    i.proto = [6u8, 17, 1, 58, 132, 47][r.below(6)];
    if r.below(8) != 0 {
        i.flags = input_flags::L4_VALID;
    }
    i.sport = PORTS[r.below(PORTS.len())];
    i.dport = PORTS[r.below(PORTS.len())];
    i.icmp_type = [0u8, 3, 8, 128, 129][r.below(5)];
    i.mark = [0u32, 1, 3, 0x10, 0x11][r.below(5)];
    i.in_dev = dev(r);
    i.out_dev = dev(r);
    i
}

#[test]
fn compiled_dnf_agrees_with_ast_evaluation() {
    let mut r = Rng(0x1234_5678_9abc_def1);
    let (mut compiled, mut too_complex, mut hits, mut total) = (0, 0, 0u32, 0u32);
    for _ in 0..3000 {
        let text = expr(&mut r, 3);
        let ast = parse(&text).unwrap_or_else(|e| panic!("generated filter `{text}` refused: {e}"));
        let prog = match compile(&text) {
            Ok(p) => p,
            Err(FilterError::TooManyClauses { .. } | FilterError::TooManyPredicates { .. }) => {
                too_complex += 1;
                continue;
            }
            Err(e) => panic!("`{text}`: {e}"),
        };
        compiled += 1;
        for _ in 0..40 {
            let p = packet(&mut r);
            let want = ast.matches(&p);
            assert_eq!(
                trace_common::filter::matches(&prog, &p),
                want,
                "`{text}` on {p:?}"
            );
            hits += want as u32;
            total += 1;
        }
    }
    // The test only means something if both outcomes were exercised on many programs.
    assert!(
        compiled > 2000,
        "compiled {compiled}, too complex {too_complex}"
    );
    assert!(
        hits > total / 10 && hits < total * 9 / 10,
        "hits {hits} / {total}"
    );
    eprintln!("compiled {compiled}, too complex {too_complex}, matched {hits}/{total}");
}

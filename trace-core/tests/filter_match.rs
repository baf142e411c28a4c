//! Filter: parse → compile → `trace_common::filter::matches` (the evaluator the eBPF probes run)
//! on hand-written packets, checked against what tcpdump's semantics say.

use std::net::IpAddr;
use trace_common::filter::{input_flags, FilterInput};
use trace_core::filter::{compile, parse};

/// A packet for the filter: "proto saddr:sport > daddr:dport".
struct Pkt(FilterInput);

fn addr(a: &str) -> (u8, [u8; 16]) {
    let mut out = [0u8; 16];
    match a.parse::<IpAddr>().unwrap() {
        IpAddr::V4(v4) => {
            out[..4].copy_from_slice(&v4.octets());
            (2, out)
        }
        IpAddr::V6(v6) => (10, v6.octets()),
    }
}

fn dev(name: &str) -> [u8; 16] {
    let mut d = [0u8; 16];
    d[..name.len()].copy_from_slice(name.as_bytes());
    d
}

impl Pkt {
    fn new(proto: u8, src: &str, sport: u16, dst: &str, dport: u16) -> Pkt {
        let (family, saddr) = addr(src);
        let (_, daddr) = addr(dst);
        let mut i = FilterInput::ZERO;
        i.family = family;
        i.proto = proto;
        i.saddr = saddr;
        i.daddr = daddr;
        i.sport = sport;
        i.dport = dport;
        i.flags = input_flags::L4_VALID;
        Pkt(i)
    }
    fn tcp(src: &str, sport: u16, dst: &str, dport: u16) -> Pkt {
        Pkt::new(6, src, sport, dst, dport)
    }
    fn udp(src: &str, sport: u16, dst: &str, dport: u16) -> Pkt {
        Pkt::new(17, src, sport, dst, dport)
    }
    fn icmp(src: &str, dst: &str, icmp_type: u8) -> Pkt {
        let mut p = Pkt::new(if src.contains(':') { 58 } else { 1 }, src, 0, dst, 0);
        p.0.icmp_type = icmp_type;
        p
    }
    fn devs(mut self, i: &str, o: &str) -> Pkt {
        self.0.in_dev = dev(i);
        self.0.out_dev = dev(o);
        self
    }
    fn mark(mut self, m: u32) -> Pkt {
        self.0.mark = m;
        self
    }
    fn fragment(mut self) -> Pkt {
        self.0.flags &= !input_flags::L4_VALID;
        self
    }
}

/// Compiled program and direct AST evaluation must both give `want`.
fn check(filter: &str, p: &Pkt, want: bool) {
    let prog = compile(filter).unwrap_or_else(|e| panic!("{filter}: {e}"));
    let got = trace_common::filter::matches(&prog, &p.0);
    assert_eq!(got, want, "compiled `{filter}` on {:?}", p.0);
    let ast = parse(filter).unwrap();
    assert_eq!(ast.matches(&p.0), want, "AST `{filter}` on {:?}", p.0);
}

fn syn() -> Pkt {
    Pkt::tcp("192.168.64.5", 43148, "192.168.64.4", 10000).devs("eth0", "")
}

#[test]
fn empty_filter_matches_everything() {
    check("", &syn(), true);
    check("   ", &Pkt::icmp("10.0.0.1", "10.0.0.2", 8), true);
}

#[test]
fn host_src_dst() {
    let p = syn();
    check("host 192.168.64.5", &p, true);
    check("host 192.168.64.4", &p, true);
    check("host 192.168.64.6", &p, false);
    check("src host 192.168.64.5", &p, true);
    check("dst host 192.168.64.5", &p, false);
    check("src or dst host 192.168.64.4", &p, true);
    check("src and dst host 192.168.64.4", &p, false);
    check("192.168.64.5", &p, true);
    check("src 192.168.64.5", &p, true);
    check("dst 192.168.64.5", &p, false);
    check("dst 192.168.64.0/24 and src 192.168.64.0/24", &p, true);
    check("ip host 192.168.64.5", &p, true);
}

#[test]
fn nets() {
    let p = syn();
    check("net 192.168.64.0/24", &p, true);
    check("src net 10.0.0.0/8", &p, false);
    check("not src net 10.0.0.0/8", &p, true);
    check("net 192.168.0.0 mask 255.255.0.0", &p, true);
    check("net 192.168", &p, true);
    check("dst net 192.168.65.0/24", &p, false);
    check("net 0.0.0.0/0", &p, true);
    check("net ::/0", &p, false);
}

#[test]
fn ports_and_ranges() {
    let p = syn();
    check("port 10000", &p, true);
    check("dst port 10000", &p, true);
    check("src port 10000", &p, false);
    check("portrange 43000-44000", &p, true);
    check("dst portrange 43000-44000", &p, false);
    check("tcp dst port 10000", &p, true);
    check("udp dst port 10000", &p, false);
    check(
        "tcp and dst port 10000 and not src net 10.0.0.0/8",
        &p,
        true,
    );
    check("dst port 80 or 10000", &p, true);
    check("dst port 80 or 443", &p, false);
    check(
        "port http",
        &Pkt::tcp("10.0.0.1", 5000, "10.0.0.2", 80),
        true,
    );
}

#[test]
fn port_on_portless_packet_is_false_and_its_negation_true() {
    let ping = Pkt::icmp("10.0.0.1", "10.0.0.2", 8);
    check("port 80", &ping, false);
    check("not port 80", &ping, true);
    let frag = Pkt::udp("10.0.0.1", 53, "10.0.0.2", 53).fragment();
    check("port 53", &frag, false);
    check("udp", &frag, true);
}

#[test]
fn protocols() {
    check("tcp", &syn(), true);
    check("udp", &syn(), false);
    check("proto tcp", &syn(), true);
    check("proto 6", &syn(), true);
    check("ip proto 6", &syn(), true);
    check("ip6 proto 6", &syn(), false);
    check("ip", &syn(), true);
    check("ip6", &syn(), false);
    check("icmp", &Pkt::icmp("10.0.0.1", "10.0.0.2", 8), true);
    check("icmp6", &Pkt::icmp("fd00::1", "fd00::2", 128), true);
    check("sctp", &Pkt::new(132, "10.0.0.1", 1, "10.0.0.2", 2), true);
}

#[test]
fn icmp_types() {
    let ping = Pkt::icmp("10.0.0.1", "10.0.0.2", 8);
    check("icmp-type echo-request", &ping, true);
    check("icmp-type 8", &ping, true);
    check("icmp-type 0", &ping, false);
    check("icmp6-type echo-request", &ping, false);
    check(
        "icmp6-type echo-request",
        &Pkt::icmp("fd00::1", "fd00::2", 128),
        true,
    );
    check(
        "icmp-type 8",
        &Pkt::tcp("10.0.0.1", 8, "10.0.0.2", 8),
        false,
    );
}

#[test]
fn ipv6() {
    let p = Pkt::tcp("fd00::1", 1234, "fd00:1::2", 443);
    check("ip6 and host fd00::1", &p, true);
    check("net fd00:1::/32", &p, true);
    check("net fd00:1::/48", &p, true);
    check("src net fd00:1::/48", &p, false);
    check("host 10.0.0.1", &p, false);
    check("not host 10.0.0.1", &p, true);
    check("ip6 src host fd00::1 and port 443", &p, true);
}

#[test]
fn interfaces() {
    let p = syn().devs("eth0", "br-00ea7870520a");
    check("iface eth0", &p, true);
    check("in iface eth0", &p, true);
    check("out iface eth0", &p, false);
    check("outbound iface br-00ea7870520a", &p, true);
    check("iface br+", &p, true);
    check("in iface br+", &p, false);
    check("iface eth", &p, false);
    check("iface eth00", &p, false);
    let local = Pkt::tcp("10.0.0.1", 1, "10.0.0.2", 2).devs("", "veth0");
    check("in iface +", &local, false);
    check("out iface +", &local, true);
}

#[test]
fn marks() {
    let p = syn().mark(0x4011);
    check("mark 0x4011", &p, true);
    check("mark 0x11", &p, false);
    check("mark 0x11/0xff", &p, true);
    check("mark 0x4000/0xf000", &p, true);
    check("not mark 0/0x4000", &p, true);
}

#[test]
fn precedence_not_and_or() {
    let p = syn();
    // not > and > or: `udp and port 1 or tcp` = `(udp and port 1) or tcp`.
    check("udp and port 1 or tcp", &p, true);
    check("tcp or udp and port 1", &p, true);
    check("not tcp or port 10000", &p, true);
    check("not (tcp or port 10000)", &p, false);
    check("! tcp && port 10000 || host 192.168.64.4", &p, true);
    check(
        "(tcp or udp) and (port 80 or port 10000) and not (src host 1.2.3.4 or icmp)",
        &p,
        true,
    );
}

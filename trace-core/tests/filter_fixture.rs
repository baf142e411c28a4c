//! Filters applied, as the first probe applies them, to the packets the nfhook prototype saw in
//! the docker lab: the remote connection to 192.168.64.4:10000 (before DNAT) and the local one
//! from the host to 172.19.0.9:80.

mod assemble_support;

use assemble_support::fixture_events;
use std::collections::HashSet;
use trace_core::event::Event;
use trace_core::filter::{compile, input_from_headers, FilterInput};
use trace_core::netfilter::Hook;

/// The filter input at the first event of every traversal, with its first hook.
fn first_probes() -> Option<Vec<(Hook, FilterInput)>> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for e in fixture_events()? {
        let Event::Probe(p) = e else { continue };
        if seen.insert((p.skb, p.gen)) {
            let h = p
                .headers
                .as_ref()
                .expect("the first event of a traversal carries headers");
            out.push((
                p.hook,
                input_from_headers(h, p.mark, p.in_dev.as_deref(), p.out_dev.as_deref()),
            ));
        }
    }
    Some(out)
}

/// (remote traversals matched, local traversals matched) out of 6 each.
fn count(filter: &str, packets: &[(Hook, FilterInput)]) -> (usize, usize) {
    let prog = compile(filter).unwrap();
    let hits = |hook: Hook| {
        packets
            .iter()
            .filter(|(h, i)| *h == hook && trace_common::filter::matches(&prog, i))
            .count()
    };
    (hits(Hook::Prerouting), hits(Hook::Output))
}

#[test]
fn filters_select_the_fixture_traffic_as_expected() {
    let Some(packets) = first_probes() else {
        return;
    };
    assert_eq!(packets.len(), 12);
    assert_eq!(count("", &packets), (6, 6));
    assert_eq!(
        count(
            "tcp and dst port 10000 and not src net 10.0.0.0/8",
            &packets
        ),
        (6, 0)
    );
    // The first probe sees the packet before DNAT: the container address only on the local path.
    assert_eq!(count("host 172.19.0.9", &packets), (0, 6));
    assert_eq!(count("in iface eth0", &packets), (6, 0));
    assert_eq!(count("out iface br-+", &packets), (0, 6));
    assert_eq!(
        count("iface br-00ea7870520a or src host 192.168.64.5", &packets),
        (6, 6)
    );
    assert_eq!(count("udp or icmp", &packets), (0, 0));
    assert_eq!(count("src portrange 43000-44000", &packets), (6, 0));
}

//! Assembly driven by the real sequences the nfhook prototype observed in the docker lab
//! (shared/fixtures/docker/nfhook-prototype-observations.txt): remote SYN with DNAT between
//! after-mangle and after-natdst in PREROUTING, ESTABLISHED later packets, local OUTPUT
//! packets, skb addresses recycled between packets. Then the same stream cut, interleaved and
//! extended with drops to check drop/stolen/unknown verdicts.

mod assemble_support;

use assemble_support::*;
use std::collections::BTreeMap;
use std::net::IpAddr;
use trace_core::assemble::{Assembler, AssemblerConfig};
use trace_core::event::{Event, L4};
use trace_core::netfilter::{Family, Hook, Table};
use trace_core::packet::{Fate, HookPass, ObservedVerdict, PacketTrace, Stage, StageObservation};

fn run(events: Vec<Event>, config: AssemblerConfig) -> (Vec<PacketTrace>, Assembler) {
    let mut a = Assembler::new(prototype_plan(Family::Ipv4), config);
    let mut out = Vec::new();
    for e in events {
        out.extend(a.push(e));
    }
    out.extend(a.flush());
    out.sort_by_key(|t| t.id);
    (out, a)
}

fn tables(h: &HookPass) -> Vec<Table> {
    h.tables.iter().map(|t| t.table).collect()
}

fn stage<'a>(h: &'a HookPass, s: &Stage) -> &'a StageObservation {
    h.stages
        .iter()
        .find(|o| &o.stage == s)
        .unwrap_or_else(|| panic!("no {s} in {:?}", h.stages))
}

fn table(t: Table) -> Stage {
    Stage::Table { table: t }
}

fn dst(h: &trace_core::event::Headers) -> (IpAddr, u16) {
    let L4::Tcp { dport, .. } = h.l4 else {
        panic!("not tcp")
    };
    (h.dst, dport)
}

/// Events of the first traversal (the remote SYN).
fn syn_events(all: &[Event]) -> Vec<Event> {
    let k = all[0].packet_key();
    all.iter()
        .filter(|e| e.packet_key() == k)
        .cloned()
        .collect()
}

fn position(events: &[Event], hook: Hook, prio: i32) -> usize {
    events
        .iter()
        .position(|e| matches!(e, Event::Probe(p) if p.hook == hook && p.priority == prio))
        .unwrap_or_else(|| panic!("no {hook} {prio}"))
}

#[test]
fn fixture_assembles_into_complete_traversals() {
    let Some(events) = fixture_events() else {
        return;
    };
    let n_events = events.len() as u64;
    let (traces, a) = run(events, AssemblerConfig::default());
    // 6 remote packets (PREROUTING→FORWARD→POSTROUTING) and 6 local ones (OUTPUT→POSTROUTING).
    assert_eq!(traces.len(), 12);
    let hooks: Vec<Vec<Hook>> = traces
        .iter()
        .map(|t| t.hooks.iter().map(|h| h.hook).collect())
        .collect();
    let remote = vec![Hook::Prerouting, Hook::Forward, Hook::Postrouting];
    let local = vec![Hook::Output, Hook::Postrouting];
    assert_eq!(
        hooks.iter().filter(|h| **h == remote).count(),
        6,
        "{hooks:?}"
    );
    assert_eq!(
        hooks.iter().filter(|h| **h == local).count(),
        6,
        "{hooks:?}"
    );
    for t in &traces {
        assert_eq!(t.fate, Fate::Delivered, "trace {}", t.id);
        assert!(!t.incomplete, "trace {}", t.id);
        for h in &t.hooks {
            assert!(h
                .stages
                .iter()
                .all(|s| s.verdict == ObservedVerdict::Accept && !s.shared));
        }
    }
    let s = a.stats();
    assert_eq!(s.probe_events, n_events);
    assert_eq!(
        (
            s.packets,
            s.incomplete_packets,
            s.unplanned_probes,
            s.missing_headers
        ),
        (12, 0, 0, 0)
    );
    // Recycled addresses were told apart by gen, not merged: 12 distinct (skb, gen).
    let keys: std::collections::HashSet<(u64, u64)> =
        traces.iter().map(|t| (t.skb, t.gen)).collect();
    assert_eq!(keys.len(), 12);
}

#[test]
fn remote_syn_shows_dnat_between_mangle_and_nat_in_prerouting() {
    let Some(events) = fixture_events() else {
        return;
    };
    let (traces, _) = run(events, AssemblerConfig::default());
    let syn = &traces[0];
    let pre = &syn.hooks[0];
    assert_eq!(pre.hook, Hook::Prerouting);
    assert_eq!(pre.in_dev.as_deref(), Some("eth0"));
    // The prototype tracked from after-raw (nf_trace): raw itself is not bracketed here.
    assert_eq!(tables(pre), vec![Table::Mangle, Table::Nat]);
    let ct = stage(pre, &Stage::Conntrack);
    assert!(ct.before.ct.is_none());
    assert_eq!(ct.after.as_ref().unwrap().ct.unwrap().ctinfo, 2, "NEW");
    let mangle = pre
        .tables
        .iter()
        .find(|t| t.table == Table::Mangle)
        .unwrap();
    assert!(!mangle.translated());
    let nat = pre.tables.iter().find(|t| t.table == Table::Nat).unwrap();
    assert!(nat.translated());
    assert_eq!(nat.priority, -100);
    assert_eq!(
        dst(&nat.before.headers),
        ("192.168.64.4".parse().unwrap(), 10000)
    );
    let after = nat.after.as_ref().unwrap();
    assert_eq!(dst(&after.headers), ("172.19.0.9".parse().unwrap(), 80));
    assert_eq!(after.ct.unwrap().status, 0x120, "DST_NAT|DST_NAT_DONE");

    let fwd = &syn.hooks[1];
    assert_eq!(fwd.out_dev.as_deref(), Some("br-00ea7870520a"));
    assert_eq!(tables(fwd), vec![Table::Mangle, Table::Filter]);
    assert!(fwd
        .tables
        .iter()
        .all(|t| !t.translated() && t.verdict == ObservedVerdict::Accept));

    let post = &syn.hooks[2];
    assert_eq!(tables(post), vec![Table::Mangle, Table::Nat]);
    let snat = post.tables.iter().find(|t| t.table == Table::Nat).unwrap();
    assert_eq!(snat.before.ct.unwrap().status, 0x120);
    assert_eq!(snat.after.as_ref().unwrap().ct.unwrap().status, 0x1a0);
    // Conntrack confirm sits after the last probe: not observable, not reported.
    assert!(post
        .stages
        .iter()
        .all(|s| s.stage != Stage::ConntrackConfirm));
    assert_eq!(post.probes, PROTO_PROBES.to_vec());
}

#[test]
fn later_packets_are_established() {
    let Some(events) = fixture_events() else {
        return;
    };
    let (traces, _) = run(events, AssemblerConfig::default());
    let second = &traces[1];
    let pre = &second.hooks[0];
    let ct = stage(pre, &Stage::Conntrack)
        .after
        .as_ref()
        .unwrap()
        .ct
        .unwrap();
    assert_eq!(ct.ctinfo, 0, "ESTABLISHED");
    assert_eq!(ct.status, 0x1ae);
    // The established packet is still rewritten (by conntrack's NAT binding) across nat.
    assert!(pre
        .tables
        .iter()
        .find(|t| t.table == Table::Nat)
        .unwrap()
        .translated());
}

#[test]
fn local_packets_go_output_then_postrouting() {
    let Some(events) = fixture_events() else {
        return;
    };
    let (traces, _) = run(events, AssemblerConfig::default());
    let local: Vec<&PacketTrace> = traces
        .iter()
        .filter(|t| t.hooks[0].hook == Hook::Output)
        .collect();
    assert_eq!(local.len(), 6);
    for t in local {
        assert_eq!(
            tables(&t.hooks[0]),
            vec![Table::Mangle, Table::Nat, Table::Filter]
        );
        assert_eq!(t.hooks[1].hook, Hook::Postrouting);
        assert_eq!(t.hooks[0].in_dev, None);
    }
}

/// Interleave traversals randomly (keeping each skb address's events in order, as the kernel
/// cannot reuse an address before freeing it): the same traversals come out.
#[test]
fn interleaved_ring_buffer_gives_the_same_traversals() {
    let Some(events) = fixture_events() else {
        return;
    };
    let (plain, _) = run(events.clone(), AssemblerConfig::default());
    let mut per_skb: BTreeMap<u64, Vec<Event>> = BTreeMap::new();
    for e in events {
        per_skb.entry(e.packet_key().0).or_default().push(e);
    }
    let mut queues: Vec<std::collections::VecDeque<Event>> =
        per_skb.into_values().map(Into::into).collect();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut mixed = Vec::new();
    while queues.iter().any(|q| !q.is_empty()) {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let live: Vec<usize> = (0..queues.len())
            .filter(|i| !queues[*i].is_empty())
            .collect();
        let q = live[(seed % live.len() as u64) as usize];
        mixed.push(queues[q].pop_front().unwrap());
    }
    let (interleaved, _) = run(mixed, AssemblerConfig::default());
    let strip = |v: Vec<PacketTrace>| -> BTreeMap<(u64, u64), PacketTrace> {
        v.into_iter()
            .map(|mut t| {
                ((t.skb, t.gen), {
                    t.id = 0;
                    t
                })
            })
            .collect()
    };
    assert_eq!(strip(plain), strip(interleaved));
}

#[test]
fn drop_in_forward_filter_is_reported_there() {
    let Some(events) = fixture_events() else {
        return;
    };
    let mut syn = syn_events(&events);
    let cut = position(&syn, Hook::Forward, -99);
    syn.truncate(cut + 1);
    let (skb, gen) = syn[0].packet_key();
    let ts = syn.last().unwrap().ts_ns() + 5000;
    syn.push(drop_event(ts, skb, gen, 12, Some("NETFILTER_DROP")));
    let (traces, a) = run(syn, AssemblerConfig::default());
    assert_eq!(traces.len(), 1);
    let t = &traces[0];
    assert_eq!(
        t.fate,
        Fate::Dropped {
            hook: Hook::Forward,
            stage: table(Table::Filter)
        }
    );
    assert!(!t.incomplete);
    assert_eq!(t.hooks.len(), 2);
    let fwd = &t.hooks[1];
    assert_eq!(tables(fwd), vec![Table::Mangle, Table::Filter]);
    let filter = &fwd.tables[1];
    assert_eq!(
        filter.verdict,
        ObservedVerdict::Drop {
            reason: 12,
            reason_name: Some("NETFILTER_DROP".into())
        }
    );
    assert!(filter.after.is_none());
    assert_eq!(fwd.tables[0].verdict, ObservedVerdict::Accept);
    assert_eq!(a.stats().orphan_drops, 0);
}

#[test]
fn drop_reason_by_number_when_unnamed() {
    let Some(events) = fixture_events() else {
        return;
    };
    let mut syn = syn_events(&events);
    syn.truncate(position(&syn, Hook::Postrouting, 1) + 1);
    let (skb, gen) = syn[0].packet_key();
    let ts = syn.last().unwrap().ts_ns() + 1;
    syn.push(drop_event(ts, skb, gen, 77, None));
    let mut a = Assembler::new(prototype_plan(Family::Ipv4), AssemblerConfig::default());
    a.set_netfilter_drop_reason(77);
    let out: Vec<PacketTrace> = syn.into_iter().flat_map(|e| a.push(e)).collect();
    assert_eq!(out.len(), 1);
    assert_eq!(
        out[0].fate,
        Fate::Dropped {
            hook: Hook::Postrouting,
            stage: table(Table::Nat)
        }
    );
}

#[test]
fn vanished_without_drop_is_stolen_once_its_skb_is_reused() {
    let Some(events) = fixture_events() else {
        return;
    };
    let syn_key = events[0].packet_key();
    let cut_ts = {
        let syn = syn_events(&events);
        match &syn[position(&syn, Hook::Prerouting, -149)] {
            Event::Probe(p) => p.ts_ns,
            _ => unreachable!(),
        }
    };
    // The SYN vanishes inside nat (after its after-mangle probe); everything else goes on.
    let events: Vec<Event> = events
        .into_iter()
        .filter(|e| e.packet_key() != syn_key || e.ts_ns() <= cut_ts)
        .collect();
    let config = AssemblerConfig {
        idle_timeout_ns: 100_000_000,
        ..Default::default()
    };
    let mut a = Assembler::new(prototype_plan(Family::Ipv4), config);
    let mut stolen = None;
    for e in events {
        for t in a.push(e) {
            if (t.skb, t.gen) == syn_key {
                stolen = Some(t);
            }
        }
    }
    // The fixture reuses the SYN's skb address for a later packet: that ends the traversal.
    let t = stolen.expect("resolved before the end of the stream");
    assert_eq!(
        t.fate,
        Fate::Stolen {
            hook: Hook::Prerouting,
            stage: table(Table::Nat)
        }
    );
    let nat = t.hooks[0]
        .tables
        .iter()
        .find(|o| o.table == Table::Nat)
        .unwrap();
    assert_eq!(nat.verdict, ObservedVerdict::Stolen);
    assert!(nat.after.is_none());
    assert_eq!(a.stats().recycled, 1);
}

#[test]
fn vanished_inside_a_table_then_seen_in_the_next_hook_is_stolen_there() {
    let Some(events) = fixture_events() else {
        return;
    };
    let syn: Vec<Event> = syn_events(&events)
        .into_iter()
        .filter(
            |e| !matches!(e, Event::Probe(p) if p.hook == Hook::Prerouting && p.priority > -149),
        )
        .collect();
    let (traces, _) = run(syn, AssemblerConfig::default());
    let t = &traces[0];
    assert_eq!(
        t.hooks[0].tables.last().unwrap().verdict,
        ObservedVerdict::Stolen
    );
    assert_eq!(t.hooks.len(), 3);
    assert_eq!(t.fate, Fate::Delivered);
}

#[test]
fn capture_end_mid_hook_is_unknown_and_incomplete() {
    let Some(events) = fixture_events() else {
        return;
    };
    let mut syn = syn_events(&events);
    syn.truncate(position(&syn, Hook::Prerouting, -149) + 1);
    let (traces, a) = run(syn, AssemblerConfig::default());
    let t = &traces[0];
    assert!(t.incomplete);
    assert_eq!(t.fate, Fate::Unknown);
    assert_eq!(
        t.hooks[0].tables.last().unwrap().verdict,
        ObservedVerdict::Unknown
    );
    assert_eq!(a.stats().incomplete_packets, 1);
}

#[test]
fn a_missing_probe_event_marks_the_group_shared_and_the_packet_incomplete() {
    let Some(events) = fixture_events() else {
        return;
    };
    let syn: Vec<Event> = syn_events(&events)
        .into_iter()
        .filter(|e| !matches!(e, Event::Probe(p) if p.hook == Hook::Forward && p.priority == -149))
        .collect();
    let (traces, _) = run(syn, AssemblerConfig::default());
    let t = &traces[0];
    assert!(t.incomplete);
    let mangle = stage(&t.hooks[1], &table(Table::Mangle));
    assert!(mangle.shared);
    assert_eq!(mangle.verdict, ObservedVerdict::Accept);
    assert_eq!(t.fate, Fate::Delivered);
}

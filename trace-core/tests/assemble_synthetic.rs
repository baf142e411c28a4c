//! Assembly on synthetic streams: the cases the fixture does not contain (idle timeout,
//! capacity eviction, skb recycling, netns change, loopback, IPv6, native nft chains, drops
//! outside netfilter, orphan drops, missing header snapshots).

mod assemble_support;

use assemble_support::*;
use trace_core::assemble::{Assembler, AssemblerConfig, HookPlan, ProbePlan, StageSlot};
use trace_core::event::{Event, Headers, L4};
use trace_core::netfilter::{Family, Hook, Table};
use trace_core::packet::{Fate, ObservedVerdict, PacketTrace, Stage};

fn tcp(src: &str, dst: &str) -> Headers {
    headers((src.parse().unwrap(), 40000), (dst.parse().unwrap(), 80), 6)
}

fn standard_plan(family: Family, netns: u32) -> ProbePlan {
    let mut p = ProbePlan::new();
    p.insert_iptables(
        netns,
        family,
        &[Table::Raw, Table::Mangle, Table::Nat, Table::Filter],
        true,
    );
    p
}

fn probes(plan: &ProbePlan, family: Family, hook: Hook) -> Vec<i32> {
    plan.get(NETNS, family, hook).unwrap().probes().to_vec()
}

fn feed(a: &mut Assembler, events: Vec<Event>) -> Vec<PacketTrace> {
    events.into_iter().flat_map(|e| a.push(e)).collect()
}

#[test]
fn bracketing_plan_places_probes_around_every_stage() {
    let plan = standard_plan(Family::Ipv4, NETNS);
    let pre = plan.get(NETNS, Family::Ipv4, Hook::Prerouting).unwrap();
    assert_eq!(pre.probes(), &[-401, -399, -299, -199, -149, -99]);
    let post = plan.get(NETNS, Family::Ipv4, Hook::Postrouting).unwrap();
    // Confirm at INT_MAX cannot be followed by a probe.
    assert_eq!(post.probes(), &[-151, -149, 101]);
    assert_eq!(post.stages().last().unwrap().stage, Stage::ConntrackConfirm);
    let between: Vec<&Stage> = pre
        .stages_between(-199, Some(-149))
        .iter()
        .map(|s| &s.stage)
        .collect();
    assert_eq!(
        between,
        vec![&Stage::Table {
            table: Table::Mangle
        }]
    );
}

#[test]
fn forwarded_packet_complete_with_all_stages() {
    let plan = standard_plan(Family::Ipv4, NETNS);
    let h = tcp("10.0.0.1", "10.0.1.1");
    let mut ev = walk(
        1,
        1,
        1000,
        Family::Ipv4,
        &[Hook::Prerouting],
        &probes(&plan, Family::Ipv4, Hook::Prerouting),
        &h,
    );
    ev.extend(walk(
        1,
        1,
        50_000,
        Family::Ipv4,
        &[Hook::Forward],
        &probes(&plan, Family::Ipv4, Hook::Forward),
        &h,
    ));
    ev.extend(walk(
        1,
        1,
        90_000,
        Family::Ipv4,
        &[Hook::Postrouting],
        &probes(&plan, Family::Ipv4, Hook::Postrouting),
        &h,
    ));
    let mut a = Assembler::new(plan, AssemblerConfig::default());
    let out = feed(&mut a, ev);
    assert_eq!(
        out.len(),
        1,
        "emitted as soon as POSTROUTING's last probe saw it"
    );
    let t = &out[0];
    assert_eq!(t.fate, Fate::Delivered);
    let stages: Vec<String> = t.hooks[0]
        .stages
        .iter()
        .map(|s| s.stage.to_string())
        .collect();
    assert_eq!(stages, ["defrag", "raw", "conntrack", "mangle", "nat"]);
    assert_eq!(t.hooks[0].tables.len(), 3);
    assert_eq!(a.pending(), 0);
}

#[test]
fn idle_timeout_resolves_a_packet_vanished_mid_hook_as_stolen() {
    let plan = standard_plan(Family::Ipv4, NETNS);
    let pre = probes(&plan, Family::Ipv4, Hook::Prerouting);
    let h = tcp("10.0.0.1", "10.0.1.1");
    let config = AssemblerConfig {
        idle_timeout_ns: 1_000_000,
        ..Default::default()
    };
    let mut a = Assembler::new(plan, config);
    // Packet 1 stops after the probe following conntrack (-199): mangle took it (NF_QUEUE...).
    let mut out = feed(
        &mut a,
        walk(1, 1, 0, Family::Ipv4, &[Hook::Prerouting], &pre[..4], &h),
    );
    assert!(out.is_empty());
    // Unrelated traffic advances event time well past the timeout.
    out.extend(feed(
        &mut a,
        walk(
            2,
            2,
            5_000_000,
            Family::Ipv4,
            &[Hook::Prerouting],
            &pre[..1],
            &h,
        ),
    ));
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].skb, 1);
    assert_eq!(
        out[0].fate,
        Fate::Stolen {
            hook: Hook::Prerouting,
            stage: Stage::Table {
                table: Table::Mangle
            }
        }
    );
    assert!(!out[0].incomplete);
    assert_eq!(a.stats().timed_out, 1);
}

#[test]
fn non_final_hook_then_silence_is_vanished() {
    let plan = standard_plan(Family::Ipv4, NETNS);
    let pre = probes(&plan, Family::Ipv4, Hook::Prerouting);
    let h = tcp("10.0.0.1", "10.0.1.1");
    let mut a = Assembler::new(
        plan,
        AssemblerConfig {
            idle_timeout_ns: 1000,
            ..Default::default()
        },
    );
    let mut out = feed(
        &mut a,
        walk(1, 1, 0, Family::Ipv4, &[Hook::Prerouting], &pre, &h),
    );
    out.extend(feed(
        &mut a,
        walk(
            2,
            2,
            1_000_000,
            Family::Ipv4,
            &[Hook::Prerouting],
            &pre[..1],
            &h,
        ),
    ));
    assert_eq!(
        out[0].fate,
        Fate::Vanished {
            after: Hook::Prerouting
        }
    );
}

#[test]
fn drop_outside_netfilter_after_a_complete_hook() {
    let plan = standard_plan(Family::Ipv4, NETNS);
    let pre = probes(&plan, Family::Ipv4, Hook::Prerouting);
    let h = tcp("10.0.0.1", "10.0.1.1");
    let mut a = Assembler::new(plan, AssemblerConfig::default());
    let mut ev = walk(1, 1, 0, Family::Ipv4, &[Hook::Prerouting], &pre, &h);
    ev.push(drop_event(100_000, 1, 1, 5, Some("IP_NOROUTE")));
    let out = feed(&mut a, ev);
    assert_eq!(out.len(), 1);
    assert_eq!(
        out[0].fate,
        Fate::DroppedOutside {
            after: Hook::Prerouting,
            reason: 5,
            reason_name: Some("IP_NOROUTE".into())
        }
    );
    assert!(out[0].hooks[0]
        .stages
        .iter()
        .all(|s| s.verdict == ObservedVerdict::Accept));
}

#[test]
fn capacity_eviction_is_counted_and_incomplete() {
    let plan = standard_plan(Family::Ipv4, NETNS);
    let pre = probes(&plan, Family::Ipv4, Hook::Prerouting);
    let h = tcp("10.0.0.1", "10.0.1.1");
    let mut a = Assembler::new(
        plan,
        AssemblerConfig {
            max_packets: 4,
            ..Default::default()
        },
    );
    let mut out = Vec::new();
    for skb in 0..10u64 {
        out.extend(feed(
            &mut a,
            walk(
                skb,
                skb,
                skb * 10_000,
                Family::Ipv4,
                &[Hook::Prerouting],
                &pre[..2],
                &h,
            ),
        ));
    }
    assert!(a.pending() <= 4);
    assert_eq!(out.len() as u64, a.stats().evicted_capacity);
    assert_eq!(out.len(), 6);
    assert!(out.iter().all(|t| t.incomplete));
    // The least recently seen go first.
    assert_eq!(
        out.iter().map(|t| t.skb).collect::<Vec<_>>(),
        vec![0, 1, 2, 3, 4, 5]
    );
    assert_eq!(a.flush().len(), 4);
}

#[test]
fn recycled_skb_address_ends_the_older_traversal() {
    let plan = standard_plan(Family::Ipv4, NETNS);
    let out_probes = probes(&plan, Family::Ipv4, Hook::Output);
    let h = tcp("10.0.0.1", "10.0.1.1");
    let mut a = Assembler::new(plan, AssemblerConfig::default());
    // gen 100 stops inside OUTPUT's filter table; the address comes back with gen 200.
    let mut out = feed(
        &mut a,
        walk(
            7,
            100,
            100,
            Family::Ipv4,
            &[Hook::Output],
            &out_probes[..6],
            &h,
        ),
    );
    out.extend(feed(
        &mut a,
        walk(
            7,
            200,
            200_000,
            Family::Ipv4,
            &[Hook::Output],
            &out_probes[..1],
            &h,
        ),
    ));
    assert_eq!(out.len(), 1);
    assert_eq!((out[0].skb, out[0].gen), (7, 100));
    assert_eq!(
        out[0].fate,
        Fate::Stolen {
            hook: Hook::Output,
            stage: Stage::Table {
                table: Table::Filter
            }
        }
    );
    assert_eq!(a.stats().recycled, 1);
    assert_eq!(a.pending(), 1);
}

#[test]
fn netns_change_starts_a_new_trace() {
    let mut plan = standard_plan(Family::Ipv4, NETNS);
    plan.insert_iptables(NETNS + 1, Family::Ipv4, &[Table::Filter], true);
    let out_p = probes(&plan, Family::Ipv4, Hook::Output);
    let post_p = probes(&plan, Family::Ipv4, Hook::Postrouting);
    let h = tcp("10.0.0.1", "10.0.1.1");
    let mut ev = walk(3, 3, 0, Family::Ipv4, &[Hook::Output], &out_p, &h);
    ev.extend(walk(
        3,
        3,
        50_000,
        Family::Ipv4,
        &[Hook::Postrouting],
        &post_p[..post_p.len() - 1],
        &h,
    ));
    // The veth peer sees the same skb (same key) in its own namespace.
    let peer = plan
        .get(NETNS + 1, Family::Ipv4, Hook::Prerouting)
        .unwrap()
        .probes()
        .to_vec();
    for (i, e) in walk(3, 3, 90_000, Family::Ipv4, &[Hook::Prerouting], &peer, &h)
        .into_iter()
        .enumerate()
    {
        let Event::Probe(mut p) = e else {
            unreachable!()
        };
        p.netns = NETNS + 1;
        p.ts_ns += i as u64;
        ev.push(Event::Probe(p));
    }
    let mut a = Assembler::new(plan, AssemblerConfig::default());
    let mut out = feed(&mut a, ev);
    out.extend(a.flush());
    assert_eq!(out.len(), 2);
    assert_eq!(out[0].netns, NETNS);
    assert_eq!(out[1].netns, NETNS + 1);
    assert_ne!(out[0].id, out[1].id);
    assert_eq!(out[1].hooks[0].hook, Hook::Prerouting);
    assert_eq!(a.stats().unplanned_probes, 0);
}

#[test]
fn loopback_packet_is_one_traversal_output_to_input() {
    let plan = standard_plan(Family::Ipv4, NETNS);
    let h = tcp("127.0.0.1", "127.0.0.1");
    let mut ev = Vec::new();
    let mut t = 0;
    for hook in [
        Hook::Output,
        Hook::Postrouting,
        Hook::Prerouting,
        Hook::Input,
    ] {
        for p in probes(&plan, Family::Ipv4, hook) {
            let Event::Probe(mut e) = probe(t, 9, 9, Family::Ipv4, hook, p, &h) else {
                unreachable!()
            };
            e.in_dev = matches!(hook, Hook::Prerouting | Hook::Input).then(|| "lo".into());
            e.out_dev = matches!(hook, Hook::Output | Hook::Postrouting).then(|| "lo".into());
            ev.push(Event::Probe(e));
            t += 10;
        }
    }
    let mut a = Assembler::new(plan, AssemblerConfig::default());
    let out = feed(&mut a, ev);
    assert_eq!(out.len(), 1);
    let hooks: Vec<Hook> = out[0].hooks.iter().map(|h| h.hook).collect();
    assert_eq!(
        hooks,
        [
            Hook::Output,
            Hook::Postrouting,
            Hook::Prerouting,
            Hook::Input
        ]
    );
    assert_eq!(out[0].fate, Fate::Delivered);
}

#[test]
fn ipv6_drop_in_forward_filter() {
    let plan = standard_plan(Family::Ipv6, NETNS);
    let h = tcp("fd00::1", "fd00:1::1");
    let fwd = probes(&plan, Family::Ipv6, Hook::Forward);
    let mut ev = walk(
        4,
        4,
        0,
        Family::Ipv6,
        &[Hook::Prerouting],
        &probes(&plan, Family::Ipv6, Hook::Prerouting),
        &h,
    );
    ev.extend(walk(
        4,
        4,
        100_000,
        Family::Ipv6,
        &[Hook::Forward],
        &fwd[..2],
        &h,
    ));
    ev.push(drop_event(
        200_000,
        4,
        4,
        12,
        Some("SKB_DROP_REASON_NETFILTER_DROP"),
    ));
    let mut a = Assembler::new(plan, AssemblerConfig::default());
    let out = feed(&mut a, ev);
    assert_eq!(out[0].family, Family::Ipv6);
    assert_eq!(
        out[0].fate,
        Fate::Dropped {
            hook: Hook::Forward,
            stage: Stage::Table {
                table: Table::Filter
            }
        }
    );
}

#[test]
fn native_nft_chain_between_tables_gets_its_own_verdict() {
    let chain = Stage::NftChain {
        table: "fw".into(),
        chain: "fwd".into(),
    };
    let mut stages =
        HookPlan::iptables_stages(Hook::Forward, &[Table::Mangle, Table::Filter], false);
    stages.push(StageSlot {
        priority: -5,
        stage: chain.clone(),
    });
    let mut plan = ProbePlan::new();
    plan.insert(
        NETNS,
        Family::Ipv4,
        Hook::Forward,
        HookPlan::bracketing(stages),
    );
    let fwd = probes(&plan, Family::Ipv4, Hook::Forward);
    assert_eq!(fwd, vec![-151, -149, -4, 1]);
    let h = tcp("10.0.0.1", "10.0.1.1");
    let mut ev = walk(5, 5, 0, Family::Ipv4, &[Hook::Forward], &fwd[..2], &h);
    ev.push(drop_event(10_000, 5, 5, 12, Some("NETFILTER_DROP")));
    let mut a = Assembler::new(plan, AssemblerConfig::default());
    let out = feed(&mut a, ev);
    assert_eq!(
        out[0].fate,
        Fate::Dropped {
            hook: Hook::Forward,
            stage: chain.clone()
        }
    );
    let pass = &out[0].hooks[0];
    assert_eq!(pass.stages.last().unwrap().stage, chain);
    assert_eq!(pass.tables.len(), 1, "only mangle is a table here");
}

#[test]
fn unplanned_hook_between_probes_is_named_not_blamed_on_a_neighbour() {
    // Probes with an empty interval (-99..1 on PREROUTING has no stage in this plan).
    let mut plan = ProbePlan::new();
    let stages = HookPlan::iptables_stages(Hook::Prerouting, &[Table::Nat], false);
    plan.insert(
        NETNS,
        Family::Ipv4,
        Hook::Prerouting,
        HookPlan::new(vec![-101, -99, 1], stages),
    );
    let h = tcp("10.0.0.1", "10.0.1.1");
    let mut ev = walk(6, 6, 0, Family::Ipv4, &[Hook::Prerouting], &[-101, -99], &h);
    ev.push(drop_event(10_000, 6, 6, 12, Some("NETFILTER_DROP")));
    let mut a = Assembler::new(plan, AssemblerConfig::default());
    let out = feed(&mut a, ev);
    match &out[0].fate {
        Fate::Dropped {
            hook: Hook::Prerouting,
            stage: Stage::Other { name },
        } => assert!(name.contains("-99"), "{name}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn orphan_drops_and_unplanned_probes_are_counted() {
    let plan = standard_plan(Family::Ipv4, NETNS);
    let h = tcp("10.0.0.1", "10.0.1.1");
    let mut a = Assembler::new(plan, AssemblerConfig::default());
    assert!(a.push(drop_event(1, 42, 42, 12, None)).is_empty());
    a.push(probe(2, 43, 43, Family::Ipv4, Hook::Prerouting, 12345, &h));
    assert_eq!(a.stats().orphan_drops, 1);
    assert_eq!(a.stats().unplanned_probes, 1);
}

#[test]
fn headers_are_carried_forward_and_missing_ones_counted() {
    let plan = standard_plan(Family::Ipv4, NETNS);
    let pre = probes(&plan, Family::Ipv4, Hook::Prerouting);
    let h = tcp("10.0.0.1", "10.0.1.1");
    let mut ev = walk(8, 8, 0, Family::Ipv4, &[Hook::Prerouting], &pre, &h);
    // Only the third probe sends headers; NAT changes them at the last one.
    let mut natted = h.clone();
    natted.dst = "10.9.9.9".parse().unwrap();
    if let L4::Tcp { dport, .. } = &mut natted.l4 {
        *dport = 8080;
    }
    for (i, e) in ev.iter_mut().enumerate() {
        let Event::Probe(p) = e else { unreachable!() };
        p.headers = match i {
            2 => Some(h.clone()),
            5 => Some(natted.clone()),
            _ => None,
        };
    }
    let mut a = Assembler::new(plan, AssemblerConfig::default());
    let mut out = feed(&mut a, ev);
    out.extend(a.flush());
    let t = &out[0];
    assert!(t.incomplete, "the first two probes had no snapshot");
    assert_eq!(a.stats().missing_headers, 2);
    let pass = &t.hooks[0];
    let nat = pass.tables.iter().find(|o| o.table == Table::Nat).unwrap();
    assert_eq!(
        *nat.before.headers, h,
        "carried forward from the third probe"
    );
    assert_eq!(*nat.after.as_ref().unwrap().headers, natted);
    assert!(nat.translated());
    let mangle = pass
        .tables
        .iter()
        .find(|o| o.table == Table::Mangle)
        .unwrap();
    assert!(!mangle.translated());
}

#[test]
fn advance_resolves_idle_packets_without_new_events() {
    let plan = standard_plan(Family::Ipv4, NETNS);
    let pre = probes(&plan, Family::Ipv4, Hook::Prerouting);
    let h = tcp("10.0.0.1", "10.0.1.1");
    let mut a = Assembler::new(
        plan,
        AssemblerConfig {
            idle_timeout_ns: 1_000,
            ..Default::default()
        },
    );
    assert!(feed(
        &mut a,
        walk(1, 1, 0, Family::Ipv4, &[Hook::Prerouting], &pre[..3], &h)
    )
    .is_empty());
    assert!(a.advance(500).is_empty(), "not idle long enough");
    let out = a.advance(1_000_000);
    assert_eq!(out.len(), 1);
    assert_eq!(
        out[0].fate,
        Fate::Stolen {
            hook: Hook::Prerouting,
            stage: Stage::Conntrack
        }
    );
    assert_eq!(a.pending(), 0);
}

//! Probes left out across hook boundaries (`ProbePlan::derive_across_hooks`): POSTROUTING
//! without its entry probe when nat is its first stage that can act, PREROUTING without the
//! probe after its last stage when that is nat. The plans, and assembly deriving the states
//! no probe saw from the neighbouring hook's (or, for a packet freed outside netfilter right
//! after PREROUTING, from the state its drop report carries): the same observations as with
//! those probes.

mod assemble_support;

use assemble_support::*;
use trace_core::assemble::{Assembler, AssemblerConfig, HookPlan, ProbePlan, StageSlot};
use trace_core::event::{ct_status, CtSnapshot, DropState, Event, Headers};
use trace_core::netfilter::{Family, Hook, Table};
use trace_core::packet::{Fate, HookPass, ObservedVerdict, PacketTrace, Stage};

const V4: Family = Family::Ipv4;
const V6: Family = Family::Ipv6;
const LAB: [Table; 4] = [Table::Raw, Table::Mangle, Table::Nat, Table::Filter];

fn stages(hook: Hook, tables: &[Table]) -> Vec<StageSlot> {
    let mut v = HookPlan::iptables_stages(hook, tables, true);
    v.retain(|s| s.stage != Stage::Defrag);
    v
}

/// Per-hook needed plans of the lab (raw and mangle inert, plus `also_inert`), with the
/// cross-hook rules when `across`.
fn plan_of(family: Family, tables: &[Table], inert: &[Table], across: bool) -> ProbePlan {
    let mut hooks: Vec<(Hook, HookPlan)> = Hook::ALL
        .into_iter()
        .map(|h| {
            let is_inert = |s: &StageSlot| s.stage.table().is_some_and(|t| inert.contains(&t));
            (h, HookPlan::needed(stages(h, tables), is_inert))
        })
        .collect();
    if across {
        ProbePlan::derive_across_hooks(&mut hooks);
    }
    let mut p = ProbePlan::new();
    for (h, hp) in hooks {
        p.insert(NETNS, family, h, hp);
    }
    p
}

fn lab(across: bool) -> ProbePlan {
    plan_of(V4, &LAB, &[Table::Raw, Table::Mangle], across)
}

fn probes(plan: &ProbePlan, family: Family, hook: Hook) -> Vec<i32> {
    plan.get(NETNS, family, hook).unwrap().probes().to_vec()
}

fn tcp(src: &str, dst: &str, dport: u16, ttl: u8) -> Headers {
    let mut h = headers(
        (src.parse().unwrap(), 40000),
        (dst.parse().unwrap(), dport),
        6,
    );
    h.ttl = ttl;
    h
}

fn ct(status: u32) -> Option<CtSnapshot> {
    Some(CtSnapshot {
        ctinfo: 2,
        status,
        mark: 0,
        id: 7,
    })
}

fn at(ts: u64, fam: Family, hook: Hook, prio: i32, h: &Headers, c: Option<CtSnapshot>) -> Event {
    let Event::Probe(mut p) = probe(ts, 1, 1, fam, hook, prio, h) else {
        unreachable!()
    };
    p.ct = c;
    Event::Probe(p)
}

/// Only the events of probes `plan` has (the others were not linked).
fn linked(plan: &ProbePlan, fam: Family, events: Vec<Event>) -> Vec<Event> {
    events
        .into_iter()
        .filter(|e| match e {
            Event::Probe(p) => plan
                .get(NETNS, fam, p.hook)
                .is_some_and(|hp| hp.has_probe(p.priority)),
            Event::Drop(_) => true,
        })
        .collect()
}

fn feed(plan: ProbePlan, events: Vec<Event>) -> Vec<PacketTrace> {
    let mut a = Assembler::new(plan, AssemblerConfig::default());
    let mut out: Vec<PacketTrace> = events.into_iter().flat_map(|e| a.push(e)).collect();
    out.extend(a.flush());
    out
}

/// A trace without the lists of probes that saw it and the passes' times (the time of the
/// first probe that saw each): they differ by plan, nothing else may.
fn observations(t: &PacketTrace) -> Vec<HookPass> {
    t.hooks
        .iter()
        .cloned()
        .map(|mut h| {
            h.probes.clear();
            h.ts_ns = 0;
            h
        })
        .collect()
}

/// The lab's remote SYN through every probe either plan has: DNAT in PREROUTING, TTL
/// decremented before FORWARD, SNAT bits in POSTROUTING.
fn forwarded(fam: Family, orig: &Headers, dnat: &Headers) -> Vec<Event> {
    let nat = ct(ct_status::DST_NAT | ct_status::DST_NAT_DONE);
    let done = ct(ct_status::DST_NAT | ct_status::DST_NAT_DONE | ct_status::SRC_NAT_DONE);
    let mut fwd = dnat.clone();
    fwd.ttl -= 1;
    vec![
        at(1000, fam, Hook::Prerouting, -301, orig, None),
        at(2000, fam, Hook::Prerouting, -99, dnat, nat),
        at(3000, fam, Hook::Forward, -151, &fwd, nat),
        at(4000, fam, Hook::Forward, 1, &fwd, nat),
        at(5000, fam, Hook::Postrouting, -151, &fwd, nat),
        at(6000, fam, Hook::Postrouting, 101, &fwd, done),
    ]
}

fn v4_forwarded() -> Vec<Event> {
    forwarded(
        V4,
        &tcp("192.168.64.2", "192.168.64.4", 10000, 64),
        &tcp("192.168.64.2", "172.19.0.9", 80, 64),
    )
}

/// The same packets assembled with the full needed plan and with the cross-hook one: the
/// same observations, and the latter's traces complete.
fn same_with_fewer_probes(fam: Family, plans: (ProbePlan, ProbePlan), events: Vec<Event>) {
    let (full, fewer) = plans;
    let want = feed(full.clone(), linked(&full, fam, events.clone()));
    let got = feed(fewer.clone(), linked(&fewer, fam, events));
    assert_eq!(want.len(), got.len());
    for (w, g) in want.iter().zip(&got) {
        assert_eq!(observations(g), observations(w));
        assert_eq!((&g.fate, g.incomplete), (&w.fate, w.incomplete));
    }
}

#[test]
fn lab_forwarded_packet_meets_four_probes() {
    let p = lab(true);
    assert_eq!(probes(&p, V4, Hook::Prerouting), [-301]);
    assert_eq!(probes(&p, V4, Hook::Forward), [-151, 1]);
    assert_eq!(probes(&p, V4, Hook::Postrouting), [101]);
    // INPUT and OUTPUT keep theirs: INPUT's entry is what PREROUTING's nat left, OUTPUT
    // is a first-sight hook.
    assert_eq!(probes(&p, V4, Hook::Input), [-151, 1, 101]);
    assert_eq!(probes(&p, V4, Hook::Output), [-301, -99, 1]);
    let pre = p.get(NETNS, V4, Hook::Prerouting).unwrap();
    let post = p.get(NETNS, V4, Hook::Postrouting).unwrap();
    assert!(pre.exit_derived() && !pre.entry_derived());
    assert!(post.entry_derived() && !post.exit_derived());
    let full = lab(false);
    for hook in Hook::ALL {
        let hp = full.get(NETNS, V4, hook).unwrap();
        assert!(!hp.exit_derived() && !hp.entry_derived(), "{hook:?}");
    }
}

#[test]
fn the_rules_need_the_neighbouring_hooks_probes() {
    // No table with a FORWARD chain (raw and nat only): a forwarded packet reaches
    // POSTROUTING from PREROUTING, and PREROUTING's exit is seen by no FORWARD probe.
    let p = plan_of(V4, &[Table::Raw, Table::Nat], &[Table::Raw], true);
    assert!(probes(&p, V4, Hook::Forward).is_empty());
    assert_eq!(probes(&p, V4, Hook::Prerouting), [-301, -99]);
    assert_eq!(probes(&p, V4, Hook::Postrouting), [99, 101]);
    // mangle acts in POSTROUTING: it comes before nat, its input must be seen.
    let p = plan_of(V4, &LAB, &[Table::Raw], true);
    assert_eq!(probes(&p, V4, Hook::Postrouting), [-151, -149, 101]);
    // ... and in PREROUTING it comes before nat: only the probe after nat goes.
    assert_eq!(probes(&p, V4, Hook::Prerouting), [-301, -199, -149]);
    // A stage that can act after nat keeps PREROUTING's last probe.
    let mut hooks: Vec<(Hook, HookPlan)> = Hook::ALL
        .into_iter()
        .map(|h| {
            let mut s = stages(h, &LAB);
            if h == Hook::Prerouting {
                s.push(StageSlot {
                    priority: 10,
                    stage: Stage::NftChain {
                        table: "fw".into(),
                        chain: "late".into(),
                    },
                });
            }
            let inert = |s: &StageSlot| matches!(s.stage.table(), Some(Table::Raw | Table::Mangle));
            (h, HookPlan::needed(s, inert))
        })
        .collect();
    ProbePlan::derive_across_hooks(&mut hooks);
    let pre = &hooks
        .iter()
        .find(|(h, _)| *h == Hook::Prerouting)
        .unwrap()
        .1;
    assert_eq!(pre.probes(), [-301, -99, 11]);
}

#[test]
fn a_replan_adds_the_left_out_probes_back_when_a_table_starts_to_act() {
    let old = lab(true);
    let new = plan_of(V4, &LAB, &[Table::Raw], true);
    let post = old
        .get(NETNS, V4, Hook::Postrouting)
        .unwrap()
        .merged_with(new.get(NETNS, V4, Hook::Postrouting).unwrap());
    assert_eq!(post.probes(), [-151, -149, 101]);
    assert!(!post.entry_derived());
    let pre = old
        .get(NETNS, V4, Hook::Prerouting)
        .unwrap()
        .merged_with(new.get(NETNS, V4, Hook::Prerouting).unwrap());
    assert_eq!(pre.probes(), [-301, -199, -149]);
    assert!(pre.exit_derived(), "nat still has no probe after it");
}

#[test]
fn forwarded_packet_is_observed_as_with_the_left_out_probes() {
    same_with_fewer_probes(V4, (lab(false), lab(true)), v4_forwarded());
    let t = &feed(lab(true), linked(&lab(true), V4, v4_forwarded()))[0];
    assert_eq!(t.fate, Fate::Delivered);
    assert!(!t.incomplete);
    let nat = &t.hooks[0].tables[2];
    let after = nat.after.as_ref().unwrap();
    assert_eq!(
        (after.headers.dst.to_string(), after.headers.ttl),
        ("172.19.0.9".to_string(), 64),
        "TTL before the forward path's decrement"
    );
    assert!(t.hooks.iter().flat_map(|h| &h.stages).all(|s| !s.shared));
    assert_eq!(t.hooks[0].probes, [-301]);
    assert_eq!(t.hooks[2].probes, [101]);
    let post: Vec<String> = t.hooks[2]
        .tables
        .iter()
        .map(|o| o.table.to_string())
        .collect();
    assert_eq!(post, ["mangle", "nat"]);
}

#[test]
fn ipv6_forwarded_packet_hop_limit() {
    let plans = (
        plan_of(V6, &LAB, &[Table::Raw, Table::Mangle], false),
        plan_of(V6, &LAB, &[Table::Raw, Table::Mangle], true),
    );
    assert_eq!(probes(&plans.1, V6, Hook::Prerouting), [-301]);
    let events = forwarded(
        V6,
        &tcp("fd00::2", "fd00::4", 10000, 255),
        &tcp("fd00::2", "fd01::9", 80, 255),
    );
    same_with_fewer_probes(V6, plans, events);
}

#[test]
fn locally_delivered_and_locally_sent_packets() {
    let orig = tcp("192.168.64.2", "192.168.64.4", 10000, 64);
    let redirected = tcp("192.168.64.2", "192.168.64.4", 8080, 64);
    let nat = ct(ct_status::DST_NAT | ct_status::DST_NAT_DONE);
    let input = vec![
        at(1000, V4, Hook::Prerouting, -301, &orig, None),
        at(2000, V4, Hook::Prerouting, -99, &redirected, nat),
        at(3000, V4, Hook::Input, -151, &redirected, nat),
        at(4000, V4, Hook::Input, 101, &redirected, nat),
    ];
    same_with_fewer_probes(V4, (lab(false), lab(true)), input);
    // Sent locally: OUTPUT's exit is POSTROUTING nat's input.
    same_with_fewer_probes(V4, (lab(false), lab(true)), locally_sent());
}

/// A locally sent packet through every probe of OUTPUT and POSTROUTING, SNATed there.
fn locally_sent() -> Vec<Event> {
    let out = tcp("192.168.64.4", "192.168.64.2", 40000, 64);
    let snat = tcp("192.168.64.9", "192.168.64.2", 40000, 64);
    let snat_ct = ct(ct_status::SRC_NAT);
    vec![
        at(1000, V4, Hook::Output, -301, &out, None),
        at(2000, V4, Hook::Output, -99, &out, ct(0)),
        at(2500, V4, Hook::Output, 1, &out, ct(0)),
        at(3000, V4, Hook::Postrouting, -151, &out, ct(0)),
        at(4000, V4, Hook::Postrouting, 101, &snat, snat_ct),
    ]
}

fn stage<'a>(
    t: &'a PacketTrace,
    hook: Hook,
    name: &str,
) -> &'a trace_core::packet::StageObservation {
    let pass = t.hooks.iter().find(|h| h.hook == hook).unwrap();
    pass.stages
        .iter()
        .find(|s| s.stage.to_string() == name)
        .unwrap_or_else(|| panic!("no {name} at {hook:?}: {:?}", pass.stages))
}

#[test]
fn freed_after_prerouting_outside_netfilter_passed_nat_state_unknown() {
    let h = tcp("10.0.0.1", "10.0.9.9", 80, 64);
    let t = &feed(
        lab(true),
        vec![
            at(1000, V4, Hook::Prerouting, -301, &h, None),
            drop_event(2000, 1, 1, 5, Some("IP_NOROUTE")),
        ],
    )[0];
    assert!(
        matches!(
            t.fate,
            Fate::DroppedOutside {
                after: Hook::Prerouting,
                ..
            }
        ),
        "{:?}",
        t.fate
    );
    let nat = stage(t, Hook::Prerouting, "nat");
    assert_eq!(nat.verdict, ObservedVerdict::Accept);
    assert_eq!(nat.after, None, "what nat left is not known");
    assert!(nat.shared, "conntrack and nat between the same probes");
    assert_eq!(
        stage(t, Hook::Prerouting, "raw").verdict,
        ObservedVerdict::Accept
    );
}

#[test]
fn prerouting_nat_rewrite_is_what_forward_received_with_its_ttl_restored() {
    let t = &feed(lab(true), linked(&lab(true), V4, v4_forwarded()))[0];
    assert_eq!(t.hooks[0].probes, [-301], "no probe after PREROUTING's nat");
    let nat = stage(t, Hook::Prerouting, "nat");
    assert_eq!(nat.verdict, ObservedVerdict::Accept);
    assert!(!nat.shared);
    assert_eq!(
        (nat.before.headers.dst.to_string(), nat.before.headers.ttl),
        ("192.168.64.4".to_string(), 64)
    );
    assert_eq!(nat.before.ct, ct(0), "the new entry conntrack made");
    let after = nat.after.as_ref().unwrap();
    assert_eq!(
        (after.headers.dst.to_string(), after.headers.ttl),
        ("172.19.0.9".to_string(), 64),
        "the rewrite, with PREROUTING's exit TTL the original"
    );
    assert_eq!(after.ct, ct(ct_status::DST_NAT | ct_status::DST_NAT_DONE));
    let conntrack = stage(t, Hook::Prerouting, "conntrack");
    assert_eq!(conntrack.before.ct, None);
    assert_eq!(conntrack.after.as_ref().unwrap().ct, ct(0));
    let fwd = stage(t, Hook::Forward, "filter");
    assert_eq!(fwd.before.headers.ttl, 63, "FORWARD's entry, decremented");
}

/// The lab's SYN DNATed in PREROUTING and freed with no route right after it: the events of
/// the full plan (nat's probe included), the drop report carrying the state at the free
/// when `state`.
fn dnat_then_no_route(state: bool) -> (Vec<Event>, Headers, Headers) {
    let orig = tcp("10.0.0.1", "10.0.9.9", 80, 64);
    let dnat = tcp("10.0.0.1", "10.0.8.8", 8080, 64);
    let nat_ct = ct(ct_status::DST_NAT | ct_status::DST_NAT_DONE);
    let freed = DropState {
        mark: 0,
        ct: nat_ct,
        headers: Some(dnat.clone()),
    };
    let drop = match state {
        true => drop_event_with_state(3000, 1, 1, 5, Some("IP_NOROUTE"), freed),
        false => drop_event(3000, 1, 1, 5, Some("IP_NOROUTE")),
    };
    let events = vec![
        at(1000, V4, Hook::Prerouting, -301, &orig, None),
        at(2000, V4, Hook::Prerouting, -99, &dnat, nat_ct),
        drop,
    ];
    (events, orig, dnat)
}

fn dropped_outside_after_prerouting(t: &PacketTrace) -> bool {
    matches!(
        &t.fate,
        Fate::DroppedOutside {
            after: Hook::Prerouting,
            reason: 5,
            reason_name: Some(n),
        } if n == "IP_NOROUTE"
    )
}

#[test]
fn freed_with_no_route_after_prerouting_nat_from_the_drop_state() {
    let (events, orig, dnat) = dnat_then_no_route(true);
    // Exactly what nat's probe would have shown.
    same_with_fewer_probes(V4, (lab(false), lab(true)), events.clone());
    let t = &feed(lab(true), linked(&lab(true), V4, events))[0];
    assert_eq!(t.hooks[0].probes, [-301]);
    assert!(dropped_outside_after_prerouting(t), "{:?}", t.fate);
    assert!(!t.incomplete);
    let nat = stage(t, Hook::Prerouting, "nat");
    assert_eq!(nat.verdict, ObservedVerdict::Accept);
    assert!(!nat.shared, "conntrack and nat told apart");
    assert_eq!(*nat.before.headers, orig);
    assert_eq!(
        nat.before.ct,
        ct(0),
        "the new entry conntrack made: nat consulted"
    );
    let after = nat.after.as_ref().expect("what nat left");
    assert_eq!(*after.headers, dnat);
    assert_eq!(after.ct, ct(ct_status::DST_NAT | ct_status::DST_NAT_DONE));
    let conntrack = stage(t, Hook::Prerouting, "conntrack");
    assert_eq!(conntrack.before.ct, None);
    assert_eq!(conntrack.after.as_ref().unwrap().ct, ct(0));
    assert!(!conntrack.shared);
}

#[test]
fn freed_with_a_drop_state_without_headers_keeps_the_last_seen_ones() {
    let orig = tcp("10.0.0.1", "10.0.9.9", 80, 64);
    let freed = DropState {
        mark: 7,
        ct: ct(0),
        headers: None,
    };
    let t = &feed(
        lab(true),
        vec![
            at(1000, V4, Hook::Prerouting, -301, &orig, None),
            drop_event_with_state(2000, 1, 1, 5, Some("IP_NOROUTE"), freed),
        ],
    )[0];
    let after = stage(t, Hook::Prerouting, "nat").after.clone().unwrap();
    assert_eq!((&*after.headers, after.mark, after.ct), (&orig, 7, ct(0)));
}

#[test]
fn freed_with_a_drop_state_that_does_not_fit_leaves_nat_unknown() {
    // Two hops shorter at the free: not this pass's packet as the kernel leaves it.
    let orig = tcp("10.0.0.1", "10.0.9.9", 80, 64);
    let freed = DropState {
        mark: 0,
        ct: ct(0),
        headers: Some(tcp("10.0.0.1", "10.0.8.8", 80, 62)),
    };
    let t = &feed(
        lab(true),
        vec![
            at(1000, V4, Hook::Prerouting, -301, &orig, None),
            drop_event_with_state(2000, 1, 1, 5, Some("IP_NOROUTE"), freed),
        ],
    )[0];
    let nat = stage(t, Hook::Prerouting, "nat");
    assert_eq!(
        (&nat.verdict, &nat.after),
        (&ObservedVerdict::Accept, &None)
    );
}

#[test]
fn a_drop_state_after_another_hook_s_probe_is_not_prerouting_s_exit() {
    // FORWARD's events were lost; the packet was freed after FORWARD's last probe (the
    // drop report says so): its state there may hold FORWARD's changes.
    let (mut events, _, _) = dnat_then_no_route(true);
    events.remove(1);
    if let Some(Event::Drop(d)) = events.last_mut() {
        d.prev = Some((Hook::Forward, 1));
    }
    let t = &feed(lab(true), events)[0];
    assert!(t.incomplete);
    let nat = stage(t, Hook::Prerouting, "nat");
    assert_eq!(
        (&nat.verdict, &nat.after),
        (&ObservedVerdict::Accept, &None)
    );
}

#[test]
fn freed_with_no_route_without_a_drop_state_nat_unknown() {
    let (events, _, _) = dnat_then_no_route(false);
    let t = &feed(lab(true), linked(&lab(true), V4, events))[0];
    assert!(dropped_outside_after_prerouting(t), "{:?}", t.fate);
    let nat = stage(t, Hook::Prerouting, "nat");
    assert_eq!(nat.verdict, ObservedVerdict::Accept);
    assert_eq!(nat.after, None, "what nat left is not known");
    assert!(nat.shared, "conntrack and nat between the same probes");
    // With nat's probe it would have been seen: this is what the drop state adds.
    let (events, _, _) = dnat_then_no_route(false);
    let full = &feed(lab(false), events)[0];
    assert!(stage(full, Hook::Prerouting, "nat").after.is_some());
}

/// A drop in netfilter after the last probe is the stages' there, with or without the
/// state at the free.
#[test]
fn netfilter_drop_after_prerouting_first_probe_is_conntrack_or_nat() {
    let h = tcp("10.0.0.1", "10.0.9.9", 80, 64);
    let freed = DropState {
        mark: 0,
        ct: ct(0),
        headers: Some(h.clone()),
    };
    let nf_drop = Some("NETFILTER_DROP");
    for drop in [
        drop_event(2000, 1, 1, 12, nf_drop),
        drop_event_with_state(2000, 1, 1, 12, nf_drop, freed),
    ] {
        let events = vec![at(1000, V4, Hook::Prerouting, -301, &h, None), drop];
        let t = &feed(lab(true), events)[0];
        let group = Stage::Group {
            stages: vec![Stage::Conntrack, Stage::Table { table: Table::Nat }],
        };
        let fate = Fate::Dropped {
            hook: Hook::Prerouting,
            stage: group,
        };
        assert_eq!(t.fate, fate);
        let nat = stage(t, Hook::Prerouting, "nat");
        let dropped = matches!(nat.verdict, ObservedVerdict::Drop { reason: 12, .. });
        assert!(dropped && nat.shared && nat.after.is_none(), "{nat:?}");
    }
}

#[test]
fn a_packet_not_seen_after_prerouting_leaves_nat_unknown() {
    let h = tcp("10.0.0.1", "10.0.9.9", 80, 64);
    let t = &feed(
        lab(true),
        vec![at(1000, V4, Hook::Prerouting, -301, &h, None)],
    )[0];
    assert!(t.incomplete);
    assert_eq!(t.fate, Fate::Unknown);
    assert_eq!(
        stage(t, Hook::Prerouting, "nat").verdict,
        ObservedVerdict::Unknown
    );
    assert_eq!(
        stage(t, Hook::Prerouting, "raw").verdict,
        ObservedVerdict::Accept
    );
}

#[test]
fn states_that_do_not_fit_are_not_derived() {
    // FORWARD received a packet two hops shorter: not the kernel's transform.
    let orig = tcp("192.168.64.2", "192.168.64.4", 10000, 64);
    let fwd = tcp("192.168.64.2", "172.19.0.9", 80, 62);
    let plan = lab(true);
    let t = &feed(
        plan,
        vec![
            at(1000, V4, Hook::Prerouting, -301, &orig, None),
            at(3000, V4, Hook::Forward, -151, &fwd, ct(0)),
            at(4000, V4, Hook::Forward, 1, &fwd, ct(0)),
            at(6000, V4, Hook::Postrouting, 101, &fwd, ct(0)),
        ],
    )[0];
    assert!(t.incomplete);
    let nat = stage(t, Hook::Prerouting, "nat");
    assert_eq!(
        (&nat.verdict, &nat.after),
        (&ObservedVerdict::Unknown, &None)
    );
    // POSTROUTING's nat got FORWARD's exit: that is derived.
    let post_nat = &t.hooks[2].tables[1];
    assert_eq!(*post_nat.before.headers, fwd);
    assert_eq!(post_nat.verdict, ObservedVerdict::Accept);
}

#[test]
fn postrouting_without_a_known_previous_exit_is_incomplete() {
    // The FORWARD pass's record was lost: POSTROUTING's nat input is unknown, not guessed.
    let h = tcp("192.168.64.2", "172.19.0.9", 80, 63);
    let t = &feed(
        lab(true),
        vec![
            at(1000, V4, Hook::Prerouting, -301, &h, None),
            at(6000, V4, Hook::Postrouting, 101, &h, ct(0)),
        ],
    )[0];
    assert!(t.incomplete);
    let post = t
        .hooks
        .iter()
        .find(|p| p.hook == Hook::Postrouting)
        .unwrap();
    assert!(post.tables.is_empty(), "{:?}", post.tables);
}

/// A sparse event (nfhook): `prev` the last probe passed, headers only when they changed.
fn sparse(ts: u64, hook: Hook, prio: i32, prev: Option<(Hook, i32)>, h: Option<&Headers>) -> Event {
    let dummy = tcp("0.0.0.0", "0.0.0.0", 0, 0);
    let Event::Probe(mut p) = at(ts, V4, hook, prio, h.unwrap_or(&dummy), None) else {
        unreachable!()
    };
    p.headers = h.cloned();
    p.prev = prev;
    p.sparse = true;
    Event::Probe(p)
}

#[test]
fn sparse_records_as_the_probes_send_them() {
    let orig = tcp("192.168.64.2", "192.168.64.4", 10000, 64);
    let dnat = tcp("192.168.64.2", "172.19.0.9", 80, 64);
    let fwd = tcp("192.168.64.2", "172.19.0.9", 80, 63);
    let (pre, fw, post) = (Hook::Prerouting, Hook::Forward, Hook::Postrouting);
    // Every probe of the full plan: the DNAT at -99, FORWARD's and POSTROUTING's entries
    // (devices), POSTROUTING's last; FORWARD after filter passed silently.
    let full = vec![
        sparse(1000, pre, -301, None, Some(&orig)),
        sparse(2000, pre, -99, Some((pre, -301)), Some(&dnat)),
        sparse(3000, fw, -151, Some((pre, -99)), Some(&fwd)),
        sparse(5000, post, -151, Some((fw, 1)), None),
        sparse(6000, post, 101, Some((post, -151)), None),
    ];
    let fewer = vec![
        sparse(1000, pre, -301, None, Some(&orig)),
        sparse(3000, fw, -151, Some((pre, -301)), Some(&fwd)),
        sparse(6000, post, 101, Some((fw, 1)), None),
    ];
    let want = feed(lab(false), full);
    let got = feed(lab(true), fewer);
    assert_eq!(observations(&got[0]), observations(&want[0]));
    assert_eq!((&got[0].fate, got[0].incomplete), (&Fate::Delivered, false));
    assert_eq!(
        got[0].hooks[1].probes,
        [-151, 1],
        "filled in from POSTROUTING's prev"
    );
}

#[test]
fn dropped_in_postrouting_nat_before_its_first_probe() {
    // MASQUERADE without an address, port exhaustion: nf_nat drops in POSTROUTING; the
    // packet never reaches POSTROUTING's only probe (after nat).
    let mut events = v4_forwarded();
    events.truncate(5);
    events.push(drop_event(7000, 1, 1, 12, Some("NETFILTER_DROP")));
    same_with_fewer_probes(V4, (lab(false), lab(true)), events.clone());
    let t = &feed(lab(true), linked(&lab(true), V4, events))[0];
    assert_eq!(
        t.fate,
        Fate::Dropped {
            hook: Hook::Postrouting,
            stage: Stage::Table { table: Table::Nat }
        }
    );
    assert!(t.hooks[2].probes.is_empty(), "no probe saw it there");
    // Freed outside netfilter after FORWARD: nothing is said of POSTROUTING.
    let mut events = v4_forwarded();
    events.truncate(4);
    events.push(drop_event(7000, 1, 1, 5, Some("IP_OUTNOROUTES")));
    let t = &feed(lab(true), linked(&lab(true), V4, events))[0];
    assert!(
        matches!(
            t.fate,
            Fate::DroppedOutside {
                after: Hook::Forward,
                ..
            }
        ),
        "{:?}",
        t.fate
    );
}

/// The lab's rules for [`dnat_then_no_route`]: raw and mangle empty (inert in [`lab`]), a
/// DNAT for the service address in nat PREROUTING.
const NO_ROUTE_RULES: &str = "*raw
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
COMMIT
*mangle
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
-A PREROUTING -d 10.0.9.9/32 -p tcp -m tcp --dport 80 -j DNAT --to-destination 10.0.8.8:8080
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
COMMIT
";

/// The rule-level path the capture and `iptrace replay` take: a recording (plan of `lab`,
/// rules, the events as captured) written, read back and replayed; the TRACE lines of the
/// whole path of each packet.
fn replayed_trace_lines(events: Vec<Event>) -> Vec<(trace_core::reconstruct::Status, Vec<String>)> {
    use trace_core::output::trace::{trace_lines, TraceFrom};
    use trace_core::record::{replay::Replayer, Record, RecordingReader, RecordingWriter};
    let plan = lab(true);
    let mut w = RecordingWriter::new(Vec::new()).unwrap();
    for hook in Hook::ALL {
        let hp = plan.get(NETNS, V4, hook).unwrap();
        w.write_record(&Record::plan(NETNS, V4, hook, hp)).unwrap();
    }
    w.write_record(&Record::Ruleset {
        netns: NETNS,
        family: V4,
        generation: 1,
        text: NO_ROUTE_RULES.into(),
    })
    .unwrap();
    for e in linked(&plan, V4, events) {
        w.write_event(&e).unwrap();
    }
    let bytes = w.into_inner();
    let mut replayer = Replayer::new(None);
    let mut packets = Vec::new();
    for item in RecordingReader::new(&bytes[..]).unwrap() {
        packets.extend(replayer.push(item.unwrap().1));
    }
    packets.extend(replayer.finish());
    packets
        .iter()
        .map(|p| (p.status, trace_lines(p, TraceFrom::Start)))
        .collect()
}

#[test]
fn no_route_after_prerouting_prints_nat_s_trace_lines_from_the_drop_state() {
    let with = replayed_trace_lines(dnat_then_no_route(true).0);
    assert_eq!(with.len(), 1);
    let (status, lines) = &with[0];
    assert_eq!(
        *status,
        trace_core::reconstruct::Status::Confirmed,
        "{lines:#?}"
    );
    let chains: Vec<&str> = lines
        .iter()
        .map(|l| l.split_whitespace().nth(1).unwrap())
        .collect();
    assert_eq!(
        chains,
        [
            "raw:PREROUTING:policy:1",
            "mangle:PREROUTING:policy:1",
            "nat:PREROUTING:rule:1"
        ],
        "{lines:#?}"
    );
    assert!(
        lines[2].contains("DST=10.0.9.9 "),
        "nat logs what it received"
    );
    // Without the state at the free, nat's input has no conntrack entry: not consulted,
    // its line lost (what 1bcf0ce withdrew rule 2 for).
    let without = replayed_trace_lines(dnat_then_no_route(false).0);
    let without_chains: Vec<&str> = without[0]
        .1
        .iter()
        .map(|l| l.split_whitespace().nth(1).unwrap())
        .collect();
    assert_eq!(
        without_chains,
        ["raw:PREROUTING:policy:1", "mangle:PREROUTING:policy:1"]
    );
}

/// The lab's needed plans per hook (raw and mangle inert), with `edit` applied to each
/// hook's stages first.
fn lab_hooks(edit: impl Fn(Hook, &mut Vec<StageSlot>)) -> Vec<(Hook, HookPlan)> {
    let inert = |s: &StageSlot| matches!(s.stage.table(), Some(Table::Raw | Table::Mangle));
    Hook::ALL
        .into_iter()
        .map(|h| {
            let mut s = stages(h, &LAB);
            edit(h, &mut s);
            (h, HookPlan::needed(s, inert))
        })
        .collect()
}

fn plan_of_hook(hooks: &[(Hook, HookPlan)], hook: Hook) -> &HookPlan {
    &hooks.iter().find(|(h, _)| *h == hook).unwrap().1
}

/// The lab's needed plans with the cross-hook rules, `verdict` tables verdict-only (rule 3).
fn lab_with_verdicts(verdict: &[Table]) -> ProbePlan {
    let mut hooks = lab_hooks(|_, _| {});
    ProbePlan::derive_across_hooks_with(&mut hooks, |_, s| {
        s.stage.table().is_some_and(|t| verdict.contains(&t))
    });
    let mut p = ProbePlan::new();
    for (h, hp) in hooks {
        p.insert(NETNS, V4, h, hp);
    }
    p
}

#[test]
fn verdict_only_filter_needs_no_probe_after_forward_and_output() {
    let p = lab_with_verdicts(&[Table::Filter]);
    assert_eq!(probes(&p, V4, Hook::Prerouting), [-301]);
    assert_eq!(probes(&p, V4, Hook::Forward), [-151]);
    assert_eq!(probes(&p, V4, Hook::Output), [-301, -99]);
    assert_eq!(
        probes(&p, V4, Hook::Postrouting),
        [101],
        "rule 1 still holds"
    );
    assert_eq!(probes(&p, V4, Hook::Input), [-151, 1, 101], "a final hook");
    let fwd = p.get(NETNS, V4, Hook::Forward).unwrap();
    assert!(fwd.exit_after_verdict(Hook::Forward) && fwd.exit_known(Hook::Forward));
    assert!(!fwd.exit_observed());
    // Not verdict-only (e.g. a MARK or TCPMSS rule): the probe stays.
    assert_eq!(
        probes(&lab_with_verdicts(&[]), V4, Hook::Forward),
        [-151, 1]
    );
    // No probe in POSTROUTING: acceptance would not be seen.
    let mut hooks = lab_hooks(|h, s| {
        if h == Hook::Postrouting {
            s.clear();
        }
    });
    ProbePlan::derive_across_hooks_with(&mut hooks, |_, _| true);
    assert_eq!(plan_of_hook(&hooks, Hook::Forward).probes(), [-151, 1]);
}

#[test]
fn verdict_only_needs_one_culprit_after_the_last_other_probe() {
    // security after filter, verdict-only too: FORWARD's needed plan has a probe after each
    // ([-151, 1, 11]); after its last other probe (1) only security can drop: that last
    // probe goes, filter keeps its own.
    let mut hooks = lab_hooks(|h, s| {
        if h == Hook::Forward {
            s.push(StageSlot {
                priority: 10,
                stage: Stage::Table {
                    table: Table::Security,
                },
            });
        }
    });
    ProbePlan::derive_across_hooks_with(&mut hooks, |_, _| true);
    assert_eq!(plan_of_hook(&hooks, Hook::Forward).probes(), [-151, 1]);
    // A nat table never is (OUTPUT keeps its probe after nat; filter's goes).
    assert_eq!(plan_of_hook(&hooks, Hook::Output).probes(), [-301, -99]);
}

#[test]
fn forwarded_packet_accepted_by_a_verdict_only_filter() {
    let fewer = lab_with_verdicts(&[Table::Filter]);
    same_with_fewer_probes(V4, (lab(false), fewer.clone()), v4_forwarded());
    let t = &feed(fewer.clone(), linked(&fewer, V4, v4_forwarded()))[0];
    assert_eq!((&t.fate, t.incomplete), (&Fate::Delivered, false));
    assert_eq!(t.hooks[1].probes, [-151]);
    let filter = stage(t, Hook::Forward, "filter");
    assert_eq!(filter.verdict, ObservedVerdict::Accept);
    assert_eq!(filter.after.as_ref(), Some(&filter.before));
    // POSTROUTING's nat received FORWARD's derived exit.
    let nat = stage(t, Hook::Postrouting, "nat");
    assert_eq!(nat.before, filter.before);
    // Sent locally: OUTPUT's filter likewise.
    same_with_fewer_probes(V4, (lab(false), fewer), locally_sent());
}

/// The lab's forwarded SYN up to FORWARD's entry probe, then `end`.
fn forwarded_until_forward(end: Option<Event>) -> PacketTrace {
    let plan = lab_with_verdicts(&[Table::Filter]);
    let mut events: Vec<Event> = linked(&plan, V4, v4_forwarded())
        .into_iter()
        .filter(|e| matches!(e, Event::Probe(p) if p.hook != Hook::Postrouting))
        .collect();
    events.extend(end);
    let mut out = feed(plan, events);
    assert_eq!(out.len(), 1);
    out.remove(0)
}

#[test]
fn netfilter_drop_after_forwards_last_probe_is_the_verdict_only_filters() {
    let Event::Drop(mut d) = drop_event(5000, 1, 1, 12, Some("NETFILTER_DROP")) else {
        unreachable!()
    };
    d.prev = Some((Hook::Forward, -151));
    let t = forwarded_until_forward(Some(Event::Drop(d)));
    let filter = Stage::Table {
        table: Table::Filter,
    };
    assert_eq!(
        t.fate,
        Fate::Dropped {
            hook: Hook::Forward,
            stage: filter
        }
    );
    assert!(!t.incomplete);
    let obs = stage(&t, Hook::Forward, "filter");
    assert!(matches!(obs.verdict, ObservedVerdict::Drop { .. }));
    assert!(obs.after.is_none() && !obs.shared);
    assert_eq!(obs.before.headers.dst.to_string(), "172.19.0.9");
    assert_eq!(
        stage(&t, Hook::Forward, "mangle").verdict,
        ObservedVerdict::Accept
    );
    assert_eq!(
        t.hooks.len(),
        2,
        "no POSTROUTING pass: nat there is assumed not to drop"
    );
}

#[test]
fn forwarded_packet_never_seen_again_after_a_verdict_only_filter_is_unknown() {
    let t = forwarded_until_forward(None);
    assert_eq!(t.fate, Fate::Unknown);
    assert!(t.incomplete);
    let obs = stage(&t, Hook::Forward, "filter");
    assert_eq!(obs.verdict, ObservedVerdict::Unknown);
    assert!(obs.after.is_none());
    // Timed out rather than the capture ending: the same.
    let plan = lab_with_verdicts(&[Table::Filter]);
    let events: Vec<Event> = linked(&plan, V4, v4_forwarded())
        .into_iter()
        .filter(|e| matches!(e, Event::Probe(p) if p.hook != Hook::Postrouting))
        .collect();
    let mut a = Assembler::new(plan, AssemblerConfig::default());
    let mut out: Vec<PacketTrace> = events.into_iter().flat_map(|e| a.push(e)).collect();
    out.extend(a.advance(10_000_000_000));
    assert_eq!(out.len(), 1);
    assert_eq!((&out[0].fate, out[0].incomplete), (&Fate::Unknown, true));
}

#[test]
fn forwarded_packet_freed_outside_netfilter_after_a_verdict_only_filter() {
    let Event::Drop(mut d) = drop_event(5000, 1, 1, 2, Some("NEIGH_FAILED")) else {
        unreachable!()
    };
    d.prev = Some((Hook::Forward, -151));
    let t = forwarded_until_forward(Some(Event::Drop(d)));
    let Fate::DroppedOutside { after, .. } = &t.fate else {
        panic!("not freed outside netfilter: {:?}", t.fate)
    };
    assert_eq!(*after, Hook::Forward);
    let obs = stage(&t, Hook::Forward, "filter");
    assert_eq!(obs.verdict, ObservedVerdict::Accept);
    assert_eq!(obs.after.as_ref(), Some(&obs.before));
}

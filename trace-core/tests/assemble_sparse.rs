//! Assembly of sparse probe events (nfhook record version 2): the probes send an event only on
//! a change, on a hook's first probe and on the last probe of a final hook, and each event
//! names the last probe passed before it. The assembler fills in the probes passed silently
//! and must never claim more than the events say.

mod assemble_support;

use assemble_support::*;
use trace_core::assemble::{Assembler, AssemblerConfig, ProbePlan};
use trace_core::event::{CtSnapshot, Event, Headers};
use trace_core::netfilter::{Family, Hook, Table};
use trace_core::packet::{Fate, ObservedVerdict, PacketTrace, Stage};

const V4: Family = Family::Ipv4;

fn tcp(src: &str, dst: &str) -> Headers {
    headers((src.parse().unwrap(), 40000), (dst.parse().unwrap(), 80), 6)
}

fn plan() -> ProbePlan {
    let mut p = ProbePlan::new();
    p.insert_iptables(
        NETNS,
        V4,
        &[Table::Raw, Table::Mangle, Table::Nat, Table::Filter],
        true,
    );
    p
}

fn probes(plan: &ProbePlan, hook: Hook) -> Vec<i32> {
    plan.get(NETNS, V4, hook).unwrap().probes().to_vec()
}

/// A sparse event at (hook, prio) that passed `prev` last; headers only when `h` is given.
fn sparse(
    ts: u64,
    hook: Hook,
    prio: i32,
    prev: Option<(Hook, i32)>,
    h: Option<&Headers>,
    ct: Option<CtSnapshot>,
) -> Event {
    let dummy = tcp("0.0.0.0", "0.0.0.0");
    let Event::Probe(mut p) = probe(ts, 1, 1, V4, hook, prio, h.unwrap_or(&dummy)) else {
        unreachable!()
    };
    p.headers = h.cloned();
    p.prev = prev;
    p.sparse = true;
    p.ct = ct;
    Event::Probe(p)
}

fn drop_after(ts: u64, prev: Option<(Hook, i32)>) -> Event {
    let Event::Drop(mut d) = drop_event(ts, 1, 1, 12, Some("NETFILTER_DROP")) else {
        unreachable!()
    };
    d.prev = prev;
    Event::Drop(d)
}

fn ct(ctinfo: u8) -> Option<CtSnapshot> {
    Some(CtSnapshot {
        ctinfo,
        status: 0,
        mark: 0,
        id: 7,
    })
}

fn feed(a: &mut Assembler, events: Vec<Event>) -> Vec<PacketTrace> {
    events.into_iter().flat_map(|e| a.push(e)).collect()
}

fn verdicts(t: &PacketTrace, i: usize) -> Vec<(String, ObservedVerdict)> {
    t.hooks[i]
        .stages
        .iter()
        .map(|s| (s.stage.to_string(), s.verdict.clone()))
        .collect()
}

/// The same forwarded packet as full events and as sparse ones gives the same trace.
#[test]
fn sparse_forwarded_packet_equals_the_full_walk() {
    let plan = plan();
    let (pre, fwd, post) = (
        probes(&plan, Hook::Prerouting),
        probes(&plan, Hook::Forward),
        probes(&plan, Hook::Postrouting),
    );
    let h = tcp("10.0.0.1", "10.0.1.1");
    let mut full = walk(1, 1, 1000, V4, &[Hook::Prerouting], &pre, &h);
    full.extend(walk(1, 1, 5000, V4, &[Hook::Forward], &fwd, &h));
    full.extend(walk(1, 1, 9000, V4, &[Hook::Postrouting], &post, &h));
    let mut a = Assembler::new(plan.clone(), AssemblerConfig::default());
    let want = feed(&mut a, full);
    assert_eq!(want.len(), 1);

    let ev = vec![
        sparse(1000, Hook::Prerouting, pre[0], None, Some(&h), None),
        sparse(
            5000,
            Hook::Forward,
            fwd[0],
            Some((Hook::Prerouting, *pre.last().unwrap())),
            None,
            None,
        ),
        sparse(
            9000,
            Hook::Postrouting,
            post[0],
            Some((Hook::Forward, *fwd.last().unwrap())),
            None,
            None,
        ),
        sparse(
            9100,
            Hook::Postrouting,
            *post.last().unwrap(),
            Some((Hook::Postrouting, post[post.len() - 2])),
            None,
            None,
        ),
    ];
    let mut a = Assembler::new(plan, AssemblerConfig::default());
    let got = feed(&mut a, ev);
    assert_eq!(got.len(), 1, "delivered at POSTROUTING's last probe");
    assert_eq!(got[0].fate, Fate::Delivered);
    assert!(!got[0].incomplete);
    for i in 0..3 {
        assert_eq!(verdicts(&got[0], i), verdicts(&want[0], i), "hook {i}");
        assert_eq!(got[0].hooks[i].probes, want[0].hooks[i].probes);
    }
    assert_eq!(
        a.stats().synthesized_probes,
        (pre.len() - 1 + fwd.len() - 1 + post.len() - 2) as u64
    );
}

/// A change mid-hook: the probes before it carry the old state, the stage before the change
/// shows before != after.
#[test]
fn change_mid_hook_keeps_states_apart() {
    let plan = plan();
    let pre = probes(&plan, Hook::Prerouting);
    let h = tcp("10.0.0.1", "192.168.1.1");
    let dnat = tcp("10.0.0.1", "10.0.1.1");
    // Conntrack attaches at -199 (after conntrack), nat rewrites before -99.
    let ev = vec![
        sparse(1000, Hook::Prerouting, pre[0], None, Some(&h), None),
        sparse(
            1100,
            Hook::Prerouting,
            -199,
            Some((Hook::Prerouting, -299)),
            None,
            ct(2),
        ),
        sparse(
            1200,
            Hook::Prerouting,
            -99,
            Some((Hook::Prerouting, -149)),
            Some(&dnat),
            ct(2),
        ),
    ];
    let mut a = Assembler::new(plan, AssemblerConfig::default());
    let mut out = feed(&mut a, ev);
    out.extend(a.flush());
    let t = &out[0];
    assert_eq!(t.hooks[0].probes, pre);
    let nat = t.hooks[0]
        .tables
        .iter()
        .find(|o| o.table == Table::Nat)
        .unwrap();
    assert_eq!(*nat.before.headers, h);
    assert_eq!(*nat.after.as_ref().unwrap().headers, dnat);
    let mangle = t.hooks[0]
        .tables
        .iter()
        .find(|o| o.table == Table::Mangle)
        .unwrap();
    assert_eq!(mangle.before.ct, ct(2), "state carried from -199");
    assert_eq!(*mangle.after.as_ref().unwrap().headers, h);
}

/// Dropped in FORWARD filter after mangle was passed without an event.
#[test]
fn drop_after_skipped_probes_is_placed_by_its_last_probe() {
    let plan = plan();
    let (pre, fwd) = (
        probes(&plan, Hook::Prerouting),
        probes(&plan, Hook::Forward),
    );
    let h = tcp("10.0.0.1", "10.0.1.1");
    let ev = vec![
        sparse(1000, Hook::Prerouting, pre[0], None, Some(&h), None),
        sparse(
            5000,
            Hook::Forward,
            fwd[0],
            Some((Hook::Prerouting, *pre.last().unwrap())),
            None,
            None,
        ),
        // fwd = [-151, -149, 1]: passed -149 (after mangle), dropped in filter.
        drop_after(6000, Some((Hook::Forward, fwd[1]))),
    ];
    let mut a = Assembler::new(plan, AssemblerConfig::default());
    let out = feed(&mut a, ev);
    assert_eq!(out.len(), 1);
    assert_eq!(
        out[0].fate,
        Fate::Dropped {
            hook: Hook::Forward,
            stage: Stage::Table {
                table: Table::Filter
            }
        }
    );
    assert!(!out[0].incomplete);
    let v = verdicts(&out[0], 1);
    assert_eq!(v[0], ("mangle".to_string(), ObservedVerdict::Accept));
    assert!(matches!(v[1].1, ObservedVerdict::Drop { reason: 12, .. }));
    // The whole PREROUTING pass was accepted.
    assert!(verdicts(&out[0], 0)
        .iter()
        .all(|(_, v)| *v == ObservedVerdict::Accept));
}

/// Vanished without a drop report after a sparse event: where is unknown (the packet may
/// have passed later probes silently), so no stage is blamed.
#[test]
fn sparse_packet_vanished_without_report_claims_no_stage() {
    let plan = plan();
    let pre = probes(&plan, Hook::Prerouting);
    let h = tcp("10.0.0.1", "10.0.1.1");
    let config = AssemblerConfig {
        idle_timeout_ns: 1_000_000,
        ..Default::default()
    };
    let mut a = Assembler::new(plan, config);
    let mut out = feed(
        &mut a,
        vec![
            sparse(0, Hook::Prerouting, pre[0], None, Some(&h), None),
            sparse(
                100,
                Hook::Prerouting,
                -199,
                Some((Hook::Prerouting, -299)),
                None,
                ct(2),
            ),
        ],
    );
    out.extend(a.advance(10_000_000));
    assert_eq!(out.len(), 1);
    let t = &out[0];
    assert_eq!(t.fate, Fate::Unknown);
    assert!(t.incomplete);
    let v = verdicts(t, 0);
    // Up to conntrack: accepted (seen after); mangle and nat: unknown, one range.
    assert_eq!(v[2], ("conntrack".to_string(), ObservedVerdict::Accept));
    assert_eq!(
        &v[3..],
        &[
            ("mangle".to_string(), ObservedVerdict::Unknown),
            ("nat".to_string(), ObservedVerdict::Unknown)
        ]
    );
    assert!(t.hooks[0].stages[3..].iter().all(|s| s.shared));
}

/// A sparse event that says nothing of what came before, mid-traversal, follows a lost
/// record: the trace is incomplete; an event whose last probe is in another hook than the
/// current pass too.
#[test]
fn sparse_event_without_prev_mid_traversal_is_incomplete() {
    let plan = plan();
    let (pre, fwd, post) = (
        probes(&plan, Hook::Prerouting),
        probes(&plan, Hook::Forward),
        probes(&plan, Hook::Postrouting),
    );
    let h = tcp("10.0.0.1", "10.0.1.1");
    let mut a = Assembler::new(plan.clone(), AssemblerConfig::default());
    let out = feed(
        &mut a,
        vec![
            sparse(0, Hook::Prerouting, pre[0], None, Some(&h), None),
            sparse(100, Hook::Forward, fwd[0], None, None, None),
            sparse(
                200,
                Hook::Postrouting,
                *post.last().unwrap(),
                Some((Hook::Postrouting, post[1])),
                None,
                None,
            ),
        ],
    );
    assert_eq!(out.len(), 1);
    assert!(out[0].incomplete);

    let mut a = Assembler::new(plan, AssemblerConfig::default());
    let out = feed(
        &mut a,
        vec![
            sparse(0, Hook::Prerouting, pre[0], None, Some(&h), None),
            // The FORWARD pass's first event was lost: POSTROUTING names a FORWARD probe.
            sparse(
                200,
                Hook::Postrouting,
                post[0],
                Some((Hook::Forward, *fwd.last().unwrap())),
                None,
                None,
            ),
            sparse(
                300,
                Hook::Postrouting,
                *post.last().unwrap(),
                Some((Hook::Postrouting, post[1])),
                None,
                None,
            ),
        ],
    );
    assert_eq!(out.len(), 1);
    assert!(out[0].incomplete);
}

/// Stopped without a report, but the probes' state (read at the idle timeout) says the last
/// probe it passed: the stage after that one took it.
#[test]
fn stopped_sparse_packet_located_by_the_probes_state_is_stolen_there() {
    let plan = plan();
    let pre = probes(&plan, Hook::Prerouting);
    let h = tcp("10.0.0.1", "10.0.1.1");
    let config = AssemblerConfig {
        idle_timeout_ns: 1_000_000,
        ..Default::default()
    };
    let events = || {
        vec![
            sparse(0, Hook::Prerouting, pre[0], None, Some(&h), None),
            sparse(
                100,
                Hook::Prerouting,
                -199,
                Some((Hook::Prerouting, -299)),
                None,
                ct(2),
            ),
        ]
    };
    // Passed -149 (after mangle) silently, then nat took it (NF_QUEUE, stolen).
    let mut a = Assembler::new(plan.clone(), config.clone());
    let mut out = feed(&mut a, events());
    let mut asked = Vec::new();
    out.extend(a.advance_with(10_000_000, &mut |skb, gen| {
        asked.push((skb, gen));
        Some((Hook::Prerouting, -149))
    }));
    assert_eq!(asked, [(1, 1)]);
    assert_eq!(out.len(), 1);
    assert_eq!(
        out[0].fate,
        Fate::Stolen {
            hook: Hook::Prerouting,
            stage: Stage::Table { table: Table::Nat }
        }
    );
    assert!(!out[0].incomplete);
    assert_eq!(
        verdicts(&out[0], 0)[3],
        ("mangle".to_string(), ObservedVerdict::Accept)
    );
    assert_eq!(a.stats().located, 1);

    // The state no longer knows it (or names another hook): no stage is blamed.
    for answer in [None, Some((Hook::Forward, -151))] {
        let mut a = Assembler::new(plan.clone(), config.clone());
        let mut out = feed(&mut a, events());
        out.extend(a.advance_with(10_000_000, &mut |_, _| answer));
        assert_eq!(out[0].fate, Fate::Unknown, "{answer:?}");
        assert!(out[0].incomplete);
    }
}

/// Position lookups are bounded per sweep (each may be a system call in the collector).
#[test]
fn position_lookups_are_bounded_per_sweep() {
    let plan = plan();
    let pre = probes(&plan, Hook::Prerouting);
    let h = tcp("10.0.0.1", "10.0.1.1");
    let config = AssemblerConfig {
        idle_timeout_ns: 1_000_000,
        ..Default::default()
    };
    let mut a = Assembler::new(plan, config);
    for skb in 1..=300u64 {
        let Event::Probe(mut p) = sparse(skb, Hook::Prerouting, pre[0], None, Some(&h), None)
        else {
            unreachable!()
        };
        p.skb = skb;
        a.push(Event::Probe(p));
    }
    let mut asked = 0;
    let out = a.advance_with(10_000_000, &mut |_, _| {
        asked += 1;
        None
    });
    assert_eq!(out.len(), 300, "all resolved");
    assert_eq!(asked, 256);
    assert!(out.iter().all(|t| t.fate == Fate::Unknown && t.incomplete));
}

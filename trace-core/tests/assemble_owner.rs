//! The socket owner per table: the kernel's TRACE line prints the owner of skb->sk each
//! time a table logs, and a server's accept() can attach the socket's file between two INPUT
//! tables (no UID at mangle:INPUT, `UID=0 GID=0` at filter:INPUT). The netfilter probes read
//! the owner at every probe and send an event when it changes; assembly keeps it per table.

mod assemble_support;

use assemble_support::*;
use trace_core::assemble::{Assembler, AssemblerConfig, ProbePlan};
use trace_core::event::{Event, Headers};
use trace_core::netfilter::{Family, Hook, Table};
use trace_core::output::trace::trace_line;
use trace_core::packet::{HookPass, PacketTrace};
use trace_core::reconstruct::Step;

const V4: Family = Family::Ipv4;
const TABLES: [Table; 4] = [Table::Raw, Table::Mangle, Table::Nat, Table::Filter];

fn tcp() -> Headers {
    headers(
        ("10.0.0.1".parse().unwrap(), 40000),
        ("10.0.0.2".parse().unwrap(), 80),
        6,
    )
}

fn plan() -> ProbePlan {
    let mut p = ProbePlan::new();
    p.insert_iptables(NETNS, V4, &TABLES, true);
    p
}

fn probes(plan: &ProbePlan, hook: Hook) -> Vec<i32> {
    plan.get(NETNS, V4, hook).unwrap().probes().to_vec()
}

/// A sparse event of the nfhook probes, which read the owner at every probe.
fn sparse(ts: u64, hook: Hook, prio: i32, prev: Option<(Hook, i32)>, owner: Option<u32>) -> Event {
    let Event::Probe(mut p) = probe(ts, 1, 1, V4, hook, prio, &tcp()) else {
        unreachable!()
    };
    if prev.is_some() {
        p.headers = None;
    }
    p.prev = prev;
    p.sparse = true;
    p.owner_read = true;
    p.uid = owner;
    p.gid = owner;
    Event::Probe(p)
}

/// PREROUTING (no owner), then INPUT: no owner at its first probe, the server's socket
/// owner (0) from the probe after mangle on.
fn accept_between_mangle_and_filter(plan: &ProbePlan) -> PacketTrace {
    let pre = probes(plan, Hook::Prerouting);
    let inp = probes(plan, Hook::Input);
    let mangle = Table::Mangle.priority(Hook::Input).unwrap();
    let after_mangle = *inp.iter().find(|p| **p > mangle).unwrap();
    let before_after = *inp.iter().rev().find(|p| **p < after_mangle).unwrap();
    let last_pre = (Hook::Prerouting, *pre.last().unwrap());
    let mut events = vec![
        sparse(1000, Hook::Prerouting, pre[0], None, None),
        sparse(2000, Hook::Input, inp[0], Some(last_pre), None),
        sparse(
            3000,
            Hook::Input,
            after_mangle,
            Some((Hook::Input, before_after)),
            Some(0),
        ),
    ];
    let last = *inp.last().unwrap();
    if last != after_mangle {
        let before_last = *inp.iter().rev().find(|p| **p < last).unwrap();
        events.push(sparse(
            4000,
            Hook::Input,
            last,
            Some((Hook::Input, before_last)),
            Some(0),
        ));
    }
    let mut a = Assembler::new(plan.clone(), AssemblerConfig::default());
    let mut done: Vec<PacketTrace> = events.into_iter().flat_map(|e| a.push(e)).collect();
    done.extend(a.flush());
    assert_eq!(done.len(), 1, "{done:#?}");
    done.remove(0)
}

fn input(t: &PacketTrace) -> &HookPass {
    t.hooks.iter().find(|h| h.hook == Hook::Input).unwrap()
}

fn policy_line(hp: &HookPass, table: Table) -> String {
    let obs = hp.tables.iter().find(|o| o.table == table).unwrap();
    let step = Step {
        id: format!("{}:INPUT:policy:1", table.name()).parse().unwrap(),
        rule_text: None,
        mark: 0,
        tos: 0,
        ttl: 64,
        traced: true,
        implicit_return: false,
    };
    trace_line(hp, obs, &step)
}

#[test]
fn owner_appearing_between_input_tables_is_printed_on_the_later_tables_only() {
    let plan = plan();
    let t = accept_between_mangle_and_filter(&plan);
    let hp = input(&t);
    assert_eq!(
        (hp.uid, hp.gid),
        (None, None),
        "none at INPUT's first probe"
    );
    let mangle = Table::Mangle.priority(Hook::Input).unwrap();
    let filter = Table::Filter.priority(Hook::Input).unwrap();
    assert_eq!(hp.owner_before(mangle), None);
    assert_eq!(hp.owner_before(filter), Some((0, 0)));
    let m = policy_line(hp, Table::Mangle);
    let f = policy_line(hp, Table::Filter);
    assert!(m.starts_with("TRACE: mangle:INPUT:policy:1 "), "{m}");
    assert!(!m.contains("UID="), "mangle saw no owner: {m}");
    assert!(f.contains(" UID=0 GID=0"), "filter saw the owner: {f}");
    // PREROUTING had no owner either.
    let pre = t.hooks.iter().find(|h| h.hook == Hook::Prerouting).unwrap();
    assert_eq!(pre.owner_before(i32::MAX), None);
}

#[test]
fn owner_going_away_is_kept_per_table_too() {
    let plan = plan();
    let inp = probes(&plan, Hook::Input);
    let filter = Table::Filter.priority(Hook::Input).unwrap();
    let after_filter = *inp.iter().find(|p| **p > filter).unwrap();
    let events = vec![
        sparse(1000, Hook::Input, inp[0], None, Some(1000)),
        sparse(
            2000,
            Hook::Input,
            after_filter,
            Some((Hook::Input, inp[0])),
            None,
        ),
    ];
    let mut a = Assembler::new(plan.clone(), AssemblerConfig::default());
    let mut done: Vec<PacketTrace> = events.into_iter().flat_map(|e| a.push(e)).collect();
    done.extend(a.flush());
    let hp = input(&done[0]);
    assert_eq!(hp.owner_before(filter), Some((1000, 1000)));
    assert_eq!(hp.owner_before(i32::MAX), None);
}

#[test]
fn events_that_do_not_read_the_owner_keep_the_hooks_first_owner() {
    // Other backends (and older recordings): the owner comes with a hook's first event only;
    // later events without it say nothing about it.
    let plan = plan();
    let inp = probes(&plan, Hook::Input);
    let mut events = walk(1, 1, 1000, V4, &[Hook::Input], &inp, &tcp());
    for (i, e) in events.iter_mut().enumerate() {
        let Event::Probe(p) = e else { unreachable!() };
        if i == 0 {
            p.uid = Some(7);
            p.gid = Some(8);
        }
    }
    let mut a = Assembler::new(plan.clone(), AssemblerConfig::default());
    let mut done: Vec<PacketTrace> = events.into_iter().flat_map(|e| a.push(e)).collect();
    done.extend(a.flush());
    let hp = input(&done[0]);
    assert!(hp.owners.is_empty());
    let filter = Table::Filter.priority(Hook::Input).unwrap();
    assert_eq!(hp.owner_before(filter), Some((7, 8)));
}

//! Fewer probes (`HookPlan::needed`): no probe after inert stages (no rules, policy ACCEPT),
//! conntrack's probe folded into nat's. The plans it makes, and how assembly attributes what
//! happened between two probes that now span several stages.

mod assemble_support;

use assemble_support::*;
use trace_core::assemble::{Assembler, AssemblerConfig, HookPlan, ProbePlan, StageSlot};
use trace_core::event::{ct_status, CtSnapshot, Event, Headers};
use trace_core::netfilter::{Family, Hook, Table};
use trace_core::packet::{Fate, ObservedVerdict, PacketTrace, Stage, StageObservation};

const V4: Family = Family::Ipv4;

/// The lab's tables (docker-shaped): raw and mangle empty, nat and filter with rules.
const LAB: [Table; 4] = [Table::Raw, Table::Mangle, Table::Nat, Table::Filter];

fn stages(hook: Hook) -> Vec<StageSlot> {
    let mut v = HookPlan::iptables_stages(hook, &LAB, true);
    // The capture does not bracket defragmentation (trace-user capture::plan::stages).
    v.retain(|s| s.stage != Stage::Defrag);
    v
}

fn inert_tables(tables: &'static [Table]) -> impl Fn(&StageSlot) -> bool {
    move |s| s.stage.table().is_some_and(|t| tables.contains(&t))
}

fn lab_plan(inert: &'static [Table]) -> ProbePlan {
    let mut p = ProbePlan::new();
    for hook in Hook::ALL {
        p.insert(
            NETNS,
            V4,
            hook,
            HookPlan::needed(stages(hook), inert_tables(inert)),
        );
    }
    p
}

fn probes(plan: &ProbePlan, hook: Hook) -> Vec<i32> {
    plan.get(NETNS, V4, hook).unwrap().probes().to_vec()
}

fn tcp(src: &str, dst: &str, dport: u16) -> Headers {
    headers(
        (src.parse().unwrap(), 40000),
        (dst.parse().unwrap(), dport),
        6,
    )
}

fn ct(status: u32) -> Option<CtSnapshot> {
    Some(CtSnapshot {
        ctinfo: 2,
        status,
        mark: 0,
        id: 7,
    })
}

fn at(ts: u64, hook: Hook, prio: i32, h: &Headers, mark: u32, c: Option<CtSnapshot>) -> Event {
    let Event::Probe(mut p) = probe(ts, 1, 1, V4, hook, prio, h) else {
        unreachable!()
    };
    p.mark = mark;
    p.ct = c;
    Event::Probe(p)
}

fn feed(plan: ProbePlan, events: Vec<Event>) -> Vec<PacketTrace> {
    let mut a = Assembler::new(plan, AssemblerConfig::default());
    let mut out: Vec<PacketTrace> = events.into_iter().flat_map(|e| a.push(e)).collect();
    out.extend(a.flush());
    out
}

fn stage<'a>(t: &'a PacketTrace, hook: Hook, name: &str) -> &'a StageObservation {
    let pass = t.hooks.iter().find(|h| h.hook == hook).unwrap();
    pass.stages
        .iter()
        .find(|s| s.stage.to_string() == name)
        .unwrap_or_else(|| panic!("no {name} at {hook}: {:?}", pass.stages))
}

#[test]
fn lab_needs_six_probe_runs_per_forwarded_packet_instead_of_eleven() {
    let needed = lab_plan(&[Table::Raw, Table::Mangle]);
    assert_eq!(probes(&needed, Hook::Prerouting), [-301, -99]);
    assert_eq!(probes(&needed, Hook::Forward), [-151, 1]);
    assert_eq!(probes(&needed, Hook::Postrouting), [-151, 101]);
    let mut all = ProbePlan::new();
    for hook in Hook::ALL {
        all.insert(NETNS, V4, hook, HookPlan::bracketing(stages(hook)));
    }
    let runs = |p: &ProbePlan| {
        [Hook::Prerouting, Hook::Forward, Hook::Postrouting]
            .iter()
            .map(|h| probes(p, *h).len())
            .sum::<usize>()
    };
    assert_eq!((runs(&all), runs(&needed)), (11, 6));
    // The inert stages stay in the plan (they are reported), flagged.
    let pre = needed.get(NETNS, V4, Hook::Prerouting).unwrap();
    let flags: Vec<(String, bool)> = (0..pre.stages().len())
        .map(|i| (pre.stages()[i].stage.to_string(), pre.is_inert(i)))
        .collect();
    let want = [
        ("raw", true),
        ("conntrack", false),
        ("mangle", true),
        ("nat", false),
    ];
    assert_eq!(
        flags,
        want.map(|(s, i)| (s.to_string(), i)).to_vec(),
        "conntrack and nat are never inert"
    );
}

#[test]
fn conntrack_keeps_its_probe_unless_nat_is_next_to_act() {
    // mangle has rules: it acts between conntrack and nat, so conntrack is bracketed.
    let p = lab_plan(&[Table::Raw]);
    assert_eq!(probes(&p, Hook::Prerouting), [-301, -199, -149, -99]);
    // No nat table: conntrack is the last stage that can act.
    let s = HookPlan::iptables_stages(Hook::Prerouting, &[Table::Raw, Table::Mangle], true);
    let s: Vec<StageSlot> = s.into_iter().filter(|s| s.stage != Stage::Defrag).collect();
    let hp = HookPlan::needed(s, inert_tables(&[Table::Raw, Table::Mangle]));
    assert_eq!(hp.probes(), [-301, -199]);
    // Nothing inert: mangle acts between conntrack and nat, full bracketing.
    let hp = HookPlan::needed(stages(Hook::Prerouting), |_| false);
    assert_eq!(hp.probes(), [-301, -299, -199, -149, -99]);
}

/// The lab's remote SYN: DNAT in PREROUTING, filter in FORWARD, nat in POSTROUTING.
fn syn_events() -> Vec<Event> {
    let orig = tcp("192.168.64.2", "192.168.64.4", 10000);
    let dnat = tcp("192.168.64.2", "172.19.0.9", 80);
    let nat = ct(ct_status::DST_NAT | ct_status::DST_NAT_DONE);
    let done = ct(ct_status::DST_NAT | ct_status::DST_NAT_DONE | ct_status::SRC_NAT_DONE);
    vec![
        at(1000, Hook::Prerouting, -301, &orig, 0, None),
        at(2000, Hook::Prerouting, -99, &dnat, 0, nat),
        at(3000, Hook::Forward, -151, &dnat, 0, nat),
        at(4000, Hook::Forward, 1, &dnat, 0, nat),
        at(5000, Hook::Postrouting, -151, &dnat, 0, nat),
        at(6000, Hook::Postrouting, 101, &dnat, 0, done),
    ]
}

#[test]
fn folded_conntrack_and_inert_tables_are_reported_as_with_full_bracketing() {
    let out = feed(lab_plan(&[Table::Raw, Table::Mangle]), syn_events());
    assert_eq!(out.len(), 1);
    let t = &out[0];
    assert_eq!(t.fate, Fate::Delivered);
    assert!(!t.incomplete);
    let names: Vec<String> = t.hooks[0]
        .stages
        .iter()
        .map(|s| s.stage.to_string())
        .collect();
    assert_eq!(names, ["raw", "conntrack", "mangle", "nat"]);
    for s in &t.hooks[0].stages {
        assert_eq!(s.verdict, ObservedVerdict::Accept);
        assert!(!s.shared, "{}: each stage is told apart", s.stage);
    }
    let raw = stage(t, Hook::Prerouting, "raw");
    assert_eq!(raw.after.as_ref(), Some(&raw.before));
    assert_eq!(raw.before.ct, None);
    // What conntrack left: the new entry without nat's bits; mangle passed it unchanged.
    let conntrack = stage(t, Hook::Prerouting, "conntrack");
    assert_eq!(conntrack.after.as_ref().unwrap().ct, ct(0));
    let mangle = stage(t, Hook::Prerouting, "mangle");
    assert_eq!(mangle.before.ct, ct(0));
    let nat = stage(t, Hook::Prerouting, "nat");
    assert_eq!(
        nat.before.ct,
        ct(0),
        "the nat table saw a new entry (it is consulted)"
    );
    assert_eq!(nat.before.headers.dst.to_string(), "192.168.64.4");
    assert_eq!(
        nat.after.as_ref().unwrap().headers.dst.to_string(),
        "172.19.0.9"
    );
    assert_eq!(t.hooks[0].tables.len(), 3, "raw, mangle, nat");
    let fwd: Vec<String> = t.hooks[1]
        .tables
        .iter()
        .map(|s| s.table.to_string())
        .collect();
    assert_eq!(fwd, ["mangle", "filter"]);
    let post: Vec<String> = t.hooks[2]
        .tables
        .iter()
        .map(|s| s.table.to_string())
        .collect();
    assert_eq!(post, ["mangle", "nat"]);
}

#[test]
fn a_change_between_two_probes_belongs_to_the_one_stage_that_can_act() {
    let h = tcp("10.0.0.1", "10.0.1.1", 80);
    let events = |p: &ProbePlan| {
        let mut v = vec![at(1000, Hook::Forward, -151, &h, 0, ct(0))];
        let hp = p.get(NETNS, V4, Hook::Forward).unwrap();
        v.extend(
            hp.probes()[1..]
                .iter()
                .enumerate()
                .map(|(i, &pr)| at(2000 + i as u64, Hook::Forward, pr, &h, 7, ct(0))),
        );
        v
    };
    // mangle inert: the mark set between -151 and 1 is filter's doing.
    let inert = lab_plan(&[Table::Raw, Table::Mangle]);
    let t = &feed(inert.clone(), events(&inert))[0];
    let mangle = stage(t, Hook::Forward, "mangle");
    assert_eq!(
        (mangle.before.mark, mangle.after.as_ref().unwrap().mark),
        (0, 0)
    );
    let filter = stage(t, Hook::Forward, "filter");
    assert_eq!(
        (filter.before.mark, filter.after.as_ref().unwrap().mark),
        (0, 7)
    );
    assert!(!mangle.shared && !filter.shared);
    // A mangle rule appeared: the re-plan adds the probe after mangle, and the change is
    // then attributed to mangle.
    let mut replanned = ProbePlan::new();
    for hook in Hook::ALL {
        let old = inert.get(NETNS, V4, hook).unwrap();
        let new = HookPlan::needed(stages(hook), inert_tables(&[Table::Raw]));
        replanned.insert(NETNS, V4, hook, old.merged_with(&new));
    }
    assert_eq!(probes(&replanned, Hook::Forward), [-151, -149, 1]);
    let t = &feed(replanned.clone(), events(&replanned))[0];
    let mangle = stage(t, Hook::Forward, "mangle");
    assert_eq!(
        (mangle.before.mark, mangle.after.as_ref().unwrap().mark),
        (0, 7)
    );
    let filter = stage(t, Hook::Forward, "filter");
    assert_eq!(
        (filter.before.mark, filter.after.as_ref().unwrap().mark),
        (7, 7)
    );
}

#[test]
fn two_acting_stages_between_two_probes_are_reported_as_a_group() {
    // A plan without the probe after mangle although mangle can act (e.g. recorded so).
    let s = stages(Hook::Forward);
    let hp = HookPlan::with_inert(vec![-151, 1], s.into_iter().map(|s| (s, false)).collect());
    let mut plan = ProbePlan::new();
    plan.insert(NETNS, V4, Hook::Forward, hp);
    let h = tcp("10.0.0.1", "10.0.1.1", 80);
    let t = &feed(
        plan,
        vec![
            at(1000, Hook::Forward, -151, &h, 0, None),
            at(2000, Hook::Forward, 1, &h, 7, None),
        ],
    )[0];
    for name in ["mangle", "filter"] {
        let s = stage(t, Hook::Forward, name);
        assert!(s.shared, "{name}: the group's change, not this stage's");
        assert_eq!(s.after.as_ref().unwrap().mark, 7);
    }
}

#[test]
fn a_drop_is_attributed_to_the_one_acting_stage_or_to_the_group() {
    let plan = lab_plan(&[Table::Raw, Table::Mangle]);
    let h = tcp("10.0.0.1", "10.0.1.1", 80);
    // Dropped in FORWARD after the first probe: mangle is inert, so filter dropped it.
    let t = &feed(
        plan.clone(),
        vec![
            at(1000, Hook::Forward, -151, &h, 0, ct(0)),
            drop_event(2000, 1, 1, 12, Some("NETFILTER_DROP")),
        ],
    )[0];
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
    let mangle = stage(t, Hook::Forward, "mangle");
    assert_eq!(
        (&mangle.verdict, mangle.shared),
        (&ObservedVerdict::Accept, false)
    );
    let f = stage(t, Hook::Forward, "filter");
    assert!(matches!(f.verdict, ObservedVerdict::Drop { .. }) && !f.shared);
    // Dropped in PREROUTING between the first probe and nat's: conntrack or nat (folded).
    let t = &feed(
        plan,
        vec![
            at(1000, Hook::Prerouting, -301, &h, 0, None),
            drop_event(2000, 1, 1, 12, Some("NETFILTER_DROP")),
        ],
    )[0];
    let group = Stage::Group {
        stages: vec![Stage::Conntrack, Stage::Table { table: Table::Nat }],
    };
    assert_eq!(
        t.fate,
        Fate::Dropped {
            hook: Hook::Prerouting,
            stage: group.clone()
        }
    );
    assert_eq!(group.to_string(), "conntrack or nat");
    let raw = stage(t, Hook::Prerouting, "raw");
    assert_eq!(
        (&raw.verdict, raw.shared),
        (&ObservedVerdict::Accept, false)
    );
    for name in ["conntrack", "mangle", "nat"] {
        let s = stage(t, Hook::Prerouting, name);
        assert!(
            matches!(s.verdict, ObservedVerdict::Drop { .. }) && s.shared,
            "{name}"
        );
    }
    let json = serde_json::to_string(&t.fate).unwrap();
    assert!(json.contains(r#""kind":"group""#), "{json}");
}

#[test]
fn inert_stages_after_the_last_probe_are_reported_accepted() {
    // INPUT with only inert tables but nat: mangle, filter inert; nat acts; confirm.
    let plan = lab_plan(&[Table::Raw, Table::Mangle, Table::Filter]);
    assert_eq!(probes(&plan, Hook::Forward), [-151], "only the first probe");
    let h = tcp("10.0.0.1", "10.0.1.1", 80);
    let t = &feed(
        plan,
        vec![
            at(1000, Hook::Forward, -151, &h, 0, ct(0)),
            at(2000, Hook::Postrouting, -151, &h, 0, ct(0)),
            at(3000, Hook::Postrouting, 101, &h, 0, ct(0)),
        ],
    )[0];
    let names: Vec<String> = t.hooks[0]
        .stages
        .iter()
        .map(|s| s.stage.to_string())
        .collect();
    assert_eq!(names, ["mangle", "filter"]);
    assert!(t.hooks[0]
        .stages
        .iter()
        .all(|s| s.verdict == ObservedVerdict::Accept && !s.shared));
    assert_eq!(t.fate, Fate::Delivered);
}

#[test]
fn inert_stages_are_never_blamed_for_a_drop() {
    let h = tcp("10.0.0.1", "10.0.1.1", 80);
    let dropped = |plan: ProbePlan, seen: &[i32]| {
        let mut ev: Vec<Event> = seen
            .iter()
            .enumerate()
            .map(|(i, p)| at(1000 + i as u64, Hook::Forward, *p, &h, 0, ct(0)))
            .collect();
        ev.push(drop_event(5000, 1, 1, 12, Some("NETFILTER_DROP")));
        feed(plan, ev).remove(0)
    };
    // After the hook's last probe only inert filter: the drop is outside the planned stages.
    let plan = lab_plan(&[Table::Raw, Table::Filter]);
    assert_eq!(probes(&plan, Hook::Forward), [-151, -149]);
    let t = dropped(plan, &[-151, -149]);
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
    assert_eq!(
        stage(&t, Hook::Forward, "filter").verdict,
        ObservedVerdict::Accept
    );
    // Between two probes with only inert stages: something unplanned, named as such.
    let s = stages(Hook::Forward);
    let hp = HookPlan::with_inert(vec![-151, 1], s.into_iter().map(|s| (s, true)).collect());
    let mut plan = ProbePlan::new();
    plan.insert(NETNS, V4, Hook::Forward, hp);
    let t = dropped(plan, &[-151]);
    let Fate::Dropped {
        stage: Stage::Other { name },
        ..
    } = &t.fate
    else {
        panic!("{:?}", t.fate)
    };
    assert_eq!(name, "unplanned hook between probes -151 and 1");
    for table in ["mangle", "filter"] {
        assert_eq!(
            stage(&t, Hook::Forward, table).verdict,
            ObservedVerdict::Accept
        );
    }
}

//! Test support for the assembler: a parser for the nfhook prototype's observation format
//! (shared/fixtures/docker/nfhook-prototype-observations.txt) into owned events, the plan the
//! prototype used, and small event builders.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::IpAddr;
use trace_core::assemble::{HookPlan, ProbePlan};
use trace_core::event::{CtSnapshot, DropEvent, DropState, Event, Headers, ProbeEvent, L4};
use trace_core::netfilter::{Family, Hook, Table};

pub const NETNS: u32 = 4026532177;
/// The prototype's probe priorities on every hook: first, after raw/ct/mangle/natdst/filter/natsrc, last.
pub const PROTO_PROBES: [i32; 8] = [-450, -299, -199, -149, -99, 1, 101, i32::MAX - 1];

/// The observation fixture (IPTRACE_FIXTURES or ../shared/fixtures), None (printed) if absent.
pub fn fixture_path() -> Option<std::path::PathBuf> {
    let path = std::env::var_os("IPTRACE_FIXTURES")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures")
        })
        .join("docker/nfhook-prototype-observations.txt");
    if path.is_file() {
        Some(path)
    } else {
        eprintln!(
            "SKIPPED: fixture not found at {} (set IPTRACE_FIXTURES)",
            path.display()
        );
        None
    }
}

/// The plan matching the prototype: its 8 probes, the docker host's tables (raw, mangle, nat,
/// filter) and conntrack.
pub fn prototype_plan(family: Family) -> ProbePlan {
    let mut plan = ProbePlan::new();
    for hook in Hook::ALL {
        let stages = HookPlan::iptables_stages(
            hook,
            &[Table::Raw, Table::Mangle, Table::Nat, Table::Filter],
            true,
        );
        plan.insert(
            NETNS,
            family,
            hook,
            HookPlan::new(PROTO_PROBES.to_vec(), stages),
        );
    }
    plan
}

/// One parsed observation line.
#[derive(Debug, Clone)]
pub struct Obs {
    pub ts_ns: u64,
    pub skb: u64,
    pub hook: Hook,
    pub priority: i32,
    pub in_dev: Option<String>,
    pub out_dev: Option<String>,
    pub src: (IpAddr, u16),
    pub dst: (IpAddr, u16),
    pub proto: u8,
    pub ct: u64,
    pub ctinfo: u8,
    pub ct_status: u32,
}

fn field<'a>(tokens: &[&'a str], key: &str) -> &'a str {
    tokens
        .iter()
        .find_map(|t| t.strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key} in {tokens:?}"))
}

fn endpoint(s: &str) -> (IpAddr, u16) {
    let (a, p) = s.rsplit_once(':').unwrap();
    (a.parse().unwrap(), p.parse().unwrap())
}

fn dev(s: &str) -> Option<String> {
    (s != "-").then(|| s.to_string())
}

pub fn parse_line(line: &str) -> Option<Obs> {
    let t: Vec<&str> = line.split_whitespace().collect();
    if t.first()
        .is_none_or(|f| !f.starts_with(|c: char| c.is_ascii_digit()))
    {
        return None;
    }
    let (secs, frac) = t[0].split_once('.').unwrap();
    let ts_ns = secs.parse::<u64>().unwrap() * 1_000_000_000 + frac.parse::<u64>().unwrap() * 1000;
    let arrow = t.iter().position(|x| *x == ">").unwrap();
    Some(Obs {
        ts_ns,
        skb: u64::from_str_radix(field(&t, "skb="), 16).unwrap(),
        hook: Hook::from_chain_name(t[2]).unwrap(),
        priority: field(&t, "prio=").parse().unwrap(),
        in_dev: dev(field(&t, "in=")),
        out_dev: dev(field(&t, "out=")),
        src: endpoint(t[arrow - 1]),
        dst: endpoint(t[arrow + 1]),
        proto: field(&t, "proto=").parse().unwrap(),
        ct: u64::from_str_radix(field(&t, "ct=").trim_start_matches("0x"), 16).unwrap(),
        ctinfo: field(&t, "ctinfo=").parse().unwrap(),
        ct_status: u32::from_str_radix(field(&t, "ct_status=").trim_start_matches("0x"), 16)
            .unwrap(),
    })
}

pub fn headers(src: (IpAddr, u16), dst: (IpAddr, u16), proto: u8) -> Headers {
    Headers {
        src: src.0,
        dst: dst.0,
        proto,
        len: 60,
        tos: 0,
        ttl: 64,
        id: 0,
        frag: 0x4000,
        flowlabel: 0,
        l4: L4::Tcp {
            sport: src.1,
            dport: dst.1,
            seq: 1,
            ack: 0,
            window: 64240,
            flags: 0x02,
            res: 0,
            urgp: 0,
            options: vec![],
        },
    }
}

/// Observations → events, as the capture would send them: gen = first-seen time of a traversal
/// (a new one starts when an skb enters PREROUTING/OUTPUT again), headers only when changed.
pub fn to_events(obs: &[Obs]) -> Vec<Event> {
    let mut last: HashMap<u64, (Hook, i32, u64, Headers)> = HashMap::new();
    let mut out = Vec::new();
    for o in obs {
        let h = headers(o.src, o.dst, o.proto);
        let prev = last.get(&o.skb).cloned();
        let new_traversal = match &prev {
            None => true,
            Some((ph, pp, _, _)) => {
                matches!(o.hook, Hook::Prerouting | Hook::Output)
                    && (*ph != o.hook || o.priority <= *pp)
            }
        };
        let gen = if new_traversal {
            o.ts_ns
        } else {
            prev.as_ref().unwrap().2
        };
        let changed = new_traversal || prev.as_ref().is_none_or(|p| p.3 != h);
        let ct = (o.ct != 0).then_some(CtSnapshot {
            ctinfo: o.ctinfo,
            status: o.ct_status,
            mark: 0,
            id: o.ct,
        });
        out.push(Event::Probe(ProbeEvent {
            ts_ns: o.ts_ns,
            skb: o.skb,
            gen,
            netns: NETNS,
            family: Family::Ipv4,
            hook: o.hook,
            priority: o.priority,
            in_ifindex: 0,
            out_ifindex: 0,
            in_dev: o.in_dev.clone(),
            out_dev: o.out_dev.clone(),
            mark: 0,
            ct,
            headers: changed.then(|| h.clone()),
            mac: None,
            uid: None,
            gid: None,
            owner_read: false,
            prev: None,
            sparse: false,
            bridge: None,
        }));
        last.insert(o.skb, (o.hook, o.priority, gen, h));
    }
    out
}

/// The fixture's events, None (printed) when the fixture is absent.
pub fn fixture_events() -> Option<Vec<Event>> {
    let text = std::fs::read_to_string(fixture_path()?)
        .expect("fixture nfhook-prototype-observations.txt");
    let obs: Vec<Obs> = text.lines().filter_map(parse_line).collect();
    assert!(obs.len() > 200, "fixture parsed {} lines", obs.len());
    Some(to_events(&obs))
}

pub fn drop_event(ts_ns: u64, skb: u64, gen: u64, reason: u32, name: Option<&str>) -> Event {
    Event::Drop(DropEvent {
        ts_ns,
        skb,
        gen,
        netns: NETNS,
        reason,
        reason_name: name.map(str::to_string),
        location: 0,
        location_sym: Some("nf_hook_slow".into()),
        prev: None,
        state: None,
    })
}

/// [`drop_event`] whose report carries the packet's state at the free (nfhook drop records
/// from version 4).
pub fn drop_event_with_state(
    ts_ns: u64,
    skb: u64,
    gen: u64,
    reason: u32,
    name: Option<&str>,
    state: DropState,
) -> Event {
    let Event::Drop(mut d) = drop_event(ts_ns, skb, gen, reason, name) else {
        unreachable!()
    };
    d.location_sym = None;
    d.state = Some(Box::new(state));
    Event::Drop(d)
}

pub fn key(e: &Event) -> (u64, u64) {
    e.packet_key()
}

/// A synthetic probe event (headers always sent).
pub fn probe(
    ts_ns: u64,
    skb: u64,
    gen: u64,
    family: Family,
    hook: Hook,
    priority: i32,
    h: &Headers,
) -> Event {
    Event::Probe(ProbeEvent {
        ts_ns,
        skb,
        gen,
        netns: NETNS,
        family,
        hook,
        priority,
        in_ifindex: 1,
        out_ifindex: 2,
        in_dev: Some("eth0".into()),
        out_dev: Some("eth1".into()),
        mark: 0,
        ct: None,
        headers: Some(h.clone()),
        mac: None,
        uid: None,
        gid: None,
        owner_read: false,
        prev: None,
        sparse: false,
        bridge: None,
    })
}

/// Events of one skb through the given hooks at every probe of `probes`.
pub fn walk(
    skb: u64,
    gen: u64,
    t0: u64,
    family: Family,
    hooks: &[Hook],
    probes: &[i32],
    h: &Headers,
) -> Vec<Event> {
    let mut v = Vec::new();
    let mut t = t0;
    for hook in hooks {
        for p in probes {
            v.push(probe(t, skb, gen, family, *hook, *p, h));
            t += 1000;
        }
    }
    v
}

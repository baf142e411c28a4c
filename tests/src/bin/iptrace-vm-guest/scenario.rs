//! The docker scenario captured with the fentry or kprobe backend: build the lab, load and
//! attach the programs, run the remote connection (peer → 192.168.64.4:10000, DNAT to
//! 172.19.0.9:80), read the ring buffer, decode and assemble with the shared collector code,
//! and check the remote SYN's path in the node namespace hook by hook and table by table.

use std::time::{Duration, Instant};

use trace_common::filter::FilterProgram;
use trace_core::assemble::{Assembler, AssemblerConfig};
use trace_core::decode::{Decoder, Symbols};
use trace_core::event::{tcp_flags, L4};
use trace_core::netfilter::{Family, Hook, Table};
use trace_core::packet::{ObservedVerdict, PacketTrace};
use trace_user::capture::classic::{self, Classic, Flavour};
use trace_user::capture::loader::LoadOptions;
use trace_user::capture::plan;
use trace_user::lab::{IptablesBackend, Lab, LabNs, LabOptions};

use crate::report::Outcome;

/// The remote SYN's path in the node namespace (tables with chains on each hook, in kernel
/// order, each accepting), as the kernel's TRACE shows it for the fixtures' ruleset.
const EXPECTED: &[(Hook, &[Table])] = &[
    (Hook::Prerouting, &[Table::Raw, Table::Mangle, Table::Nat]),
    (Hook::Forward, &[Table::Mangle, Table::Filter]),
    (Hook::Postrouting, &[Table::Mangle, Table::Nat]),
];

pub fn remote_syn(flavour: Flavour, backend: IptablesBackend) -> Outcome {
    match run(flavour, backend) {
        Ok(o) => o,
        Err(e) => Outcome::Fail(format!("{e:#}")),
    }
}

fn run(flavour: Flavour, backend: IptablesBackend) -> anyhow::Result<Outcome> {
    let lab = Lab::up(LabOptions {
        backend,
        trace_rules: true,
        name_prefix: format!("vm-{flavour}"),
        ..LabOptions::default()
    })?;
    let opts = LoadOptions { ringbuf_size: 1 << 22, sample_n: 0, rate_limit: 0, filter: FilterProgram::match_all() };
    let mut cap = Classic::load(flavour, &opts)?;
    let mut regs = Vec::new();
    for ns in [LabNs::Peer, LabNs::Node, LabNs::Ctr] {
        regs.push((lab.ns_inode(ns) as u32, plan::discover(&lab.ns_path(ns))?));
    }
    let mut asm = Assembler::new(classic::probe_plan(&regs), AssemblerConfig::default());
    if let Some((&n, _)) = cap.drop_reasons.iter().find(|(_, name)| *name == "NETFILTER_DROP") {
        asm.set_netfilter_drop_reason(n);
    }
    let decoder = Decoder::new(cap.drop_reasons.clone(), Symbols::default());
    let mut rb = cap.take_events()?;
    let ex = lab.run_remote()?;
    let mut traces: Vec<PacketTrace> = Vec::new();
    let (mut records, mut bad) = (0u64, 0u64);
    let until = Instant::now() + Duration::from_millis(800);
    while Instant::now() < until {
        while let Some(item) = rb.next() {
            records += 1;
            match decoder.decode(&item) {
                Ok(ev) => traces.extend(asm.push(ev)),
                Err(_) => bad += 1,
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    traces.extend(asm.flush());
    let counters = cap.counters()?;
    let node = lab.ns_inode(LabNs::Node) as u32;
    let client_port = ex.local.port();
    let syn = traces.iter().find(|t| t.netns == node && t.family == Family::Ipv4 && is_syn_from(t, client_port));
    let summary = format!(
        "{} attached ({} skipped: {:?}); records {records}, undecodable {bad}, lost {}, packets {}",
        cap.attached.join(","),
        cap.skipped.len(),
        cap.skipped,
        counters.lost,
        traces.len()
    );
    let Some(syn) = syn else {
        return Ok(Outcome::Fail(format!("no remote SYN (client port {client_port}) in node netns; {summary}")));
    };
    let path = describe(syn);
    let problems = check(syn);
    drop(cap);
    lab.down()?;
    if bad > 0 || counters.lost > 0 {
        return Ok(Outcome::Fail(format!("{path}; {summary}")));
    }
    Ok(match problems {
        None => Outcome::Pass(format!("{path}; {summary}")),
        Some(p) => Outcome::Fail(format!("{p}: {path}; {summary}")),
    })
}

fn is_syn_from(t: &PacketTrace, port: u16) -> bool {
    let first = t.hooks.first().and_then(|h| h.tables.first().map(|o| &o.before.headers).or(h.stages.first().map(|s| &s.before.headers)));
    matches!(first.map(|h| &h.l4), Some(L4::Tcp { sport, flags, .. }) if *sport == port && flags & tcp_flags::SYN != 0 && flags & tcp_flags::ACK == 0)
}

/// `PREROUTING raw:accept mangle:accept nat:accept(->172.19.0.9:80) | FORWARD ...`
fn describe(t: &PacketTrace) -> String {
    let hooks: Vec<String> = t
        .hooks
        .iter()
        .map(|h| {
            let tables: Vec<String> = h
                .tables
                .iter()
                .map(|o| {
                    let v = match &o.verdict {
                        ObservedVerdict::Accept => "accept".to_string(),
                        ObservedVerdict::Drop { reason_name, reason } => format!("drop({})", reason_name.clone().unwrap_or(reason.to_string())),
                        ObservedVerdict::Stolen => "stolen".into(),
                        ObservedVerdict::Unknown => "unknown".into(),
                    };
                    let nat = match (o.translated(), &o.after) {
                        (true, Some(a)) => format!("(->{}:{})", a.headers.dst, a.headers.l4.ports().map_or(0, |p| p.1)),
                        _ => String::new(),
                    };
                    format!("{}:{v}{nat}", o.table)
                })
                .collect();
            format!("{:?} {}", h.hook, tables.join(" "))
        })
        .collect();
    format!("{} fate {:?}", hooks.join(" | "), t.fate)
}

/// None when the path is the expected one; else what differs.
fn check(t: &PacketTrace) -> Option<String> {
    let got: Vec<Hook> = t.hooks.iter().map(|h| h.hook).collect();
    let want: Vec<Hook> = EXPECTED.iter().map(|(h, _)| *h).collect();
    if got != want {
        return Some(format!("hooks {got:?}, expected {want:?}"));
    }
    for (pass, (hook, tables)) in t.hooks.iter().zip(EXPECTED) {
        let got: Vec<Table> = pass.tables.iter().map(|o| o.table).collect();
        if got != *tables {
            return Some(format!("{hook:?}: tables {got:?}, expected {tables:?}"));
        }
        if let Some(o) = pass.tables.iter().find(|o| o.verdict != ObservedVerdict::Accept) {
            return Some(format!("{hook:?} {}: verdict {:?}", o.table, o.verdict));
        }
    }
    let nat = &t.hooks[0].tables[2];
    let after = nat.after.as_ref()?;
    let dnat_ok = after.headers.dst.to_string() == "172.19.0.9" && after.headers.l4.ports().map(|p| p.1) == Some(80);
    if !dnat_ok {
        return Some(format!("PREROUTING nat: after {}:{:?}, expected DNAT to 172.19.0.9:80", after.headers.dst, after.headers.l4.ports()));
    }
    if t.fate != trace_core::packet::Fate::Delivered {
        return Some(format!("fate {:?}, expected delivered", t.fate));
    }
    None
}
